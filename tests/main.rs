//! The integration tests: one binary, one module per area, helpers in `support/`
//! (the `provisioning_tests` library).

mod auth;
mod before;
mod cli;
mod cli_logs;
mod dispatch;
mod edges;
mod embedded_ownership;
mod handlers;
mod logs;
mod outages;
mod properties;
mod retry;
mod search_folding;
mod security;
mod tls;
mod untrusted;
