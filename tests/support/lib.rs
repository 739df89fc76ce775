//! Test harness of the Provisioning API: real PostgreSQL, real servers, real sockets.
//!
//! - [`TestDatabase`]: a fresh migrated database per test, cloned from a template.
//! - [`spawn_server`] / [`TestServer`]: the server in process, with a connected client.
//! - [`spawn_server_process`] / [`ServerProcess`]: the real `provisiond` binary;
//!   [`start_embedded`]: the same on its own embedded cluster, [`PostmasterGuard`]
//!   making sure that cluster stops.
//! - [`provctl`]: the real CLI as a `Command`; [`run_command`] runs it asynchronously.
//! - [`eventually`]: polling with a deadline instead of sleeps.
//! - [`TempDir`]: temporary directories (mode 0755) removed on drop.
//! - [`TestPki`]: a CA, server and client certificates made at run time (rcgen).
//! - [`pgbouncer::PgBouncer`]: a real PgBouncer in transaction pooling mode.
//! - [`browser::Browser`]: headless Chromium under chromedriver (WebDriver), for the
//!   web console.
//!
//! The tests themselves live in `tests/main.rs` and its modules (one binary).

pub mod browser;
pub mod database;
pub mod embedded;
pub mod pgbouncer;
pub mod process;
pub mod receiver;
pub mod requests;
pub mod server;
pub mod standby;
pub mod temp;
pub mod tls;
pub mod wait;

pub use database::TestDatabase;
pub use embedded::{data_dir, embedded_command, postmaster_pid, start_embedded, PostmasterGuard};
pub use process::{
    bin_path, free_addr, provctl, provisiond, run_command, spawn_server_process, ServerProcess,
};
pub use server::{
    give_to_script_user, prepare_scripts_dir, script_user_ids, spawn_server,
    spawn_server_connecting, spawn_server_with, test_config, TestServer, SCRIPT_USER,
};
pub use temp::TempDir;
pub use tls::{TestPki, CLIENT_CN};
pub use wait::{eventually, health_status, health_status_at, is_serving, is_serving_at};
