//! The integration tests: one binary, one module per area, helpers in `support/`
//! (the `provisioning_tests` library).

mod auth;
mod before;
mod cli;
mod cli_logs;
mod console;
mod dispatch;
mod edges;
mod embedded_ownership;
mod faults;
mod handler_guide;
mod handlers;
mod limits;
mod logs;
mod metrics;
mod ordering;
mod otlp_export;
mod outages;
mod pgbouncer;
mod properties;
mod read_standby;
mod retry;
mod schemas;
mod search_folding;
mod security;
mod test_runs;
mod tls;
mod trace_context;
mod untrusted;
