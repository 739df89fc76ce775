//! The real binaries as child processes: `provisiond-under-test` (the server's
//! `main.rs`, configured through its environment variables as an operator would) and
//! `provctl-under-test` (the CLI).
//!
//! Cargo gives binary paths (`CARGO_BIN_EXE_*`) only to integration-test crates, not to
//! this library, so the binaries are found next to the running test executable
//! (`target/<profile>/`), where Cargo builds them before running integration tests.
//!
//! A server process writes its stdout and stderr to a log file, shown when it fails to
//! start; it is killed (SIGKILL) when its guard is dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use provisioning_client::{Client, ConnectOptions};

use crate::database::TestDatabase;
use crate::temp::TempDir;
use crate::wait::is_serving_at;

/// How long a server process may take to become healthy (an embedded cluster's first
/// `initdb` included).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a server process may take to exit after a signal.
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);

/// Path of a binary of this package (`provisiond-under-test`, `provctl-under-test`).
pub fn bin_path(name: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(format!("CARGO_BIN_EXE_{name}")) {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("path of the test executable");
    let mut dir = exe
        .parent()
        .expect("test executable directory")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} not found: run the tests with `cargo test -p provisioning-tests`, which builds it",
        path.display()
    );
    path
}

/// `provctl` with `--server server_url` and none of the caller's `PROVISIONING_*` server
/// or TLS variables; add the subcommand's arguments.
pub fn provctl(server_url: &str) -> std::process::Command {
    let mut command = std::process::Command::new(bin_path("provctl-under-test"));
    command
        .env_remove("PROVISIONING_SERVER")
        .env_remove("PROVISIONING_CA_CERT")
        .env_remove("PROVISIONING_CLIENT_CERT")
        .env_remove("PROVISIONING_CLIENT_KEY")
        .env_remove("PROVISIONING_TOKEN")
        .arg("--server")
        .arg(server_url);
    command
}

/// Runs `command` to completion without blocking a runtime thread; stdin is empty.
pub async fn run_command(command: std::process::Command) -> Output {
    let program = format!("{command:?}");
    let mut command = tokio::process::Command::from(command);
    command.stdin(Stdio::null()).kill_on_drop(true);
    match tokio::time::timeout(EXIT_TIMEOUT, command.output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => panic!("running {program}: {e}"),
        Err(_) => panic!("{program} did not finish within {EXIT_TIMEOUT:?}"),
    }
}

/// A free loopback address: bound to port 0 and released at once, so another process
/// may in principle take it first (harmless in tests).
pub fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
    listener.local_addr().expect("listener address")
}

/// `provisiond-under-test` listening on `listen` with scripts from `scripts_dir` and the
/// test timings (50 ms polling, retries after 100/200 ms, 2 s lease), configured through
/// the environment. `DATABASE_URL` and every inherited `PROVISIOND_*` variable are
/// removed: add `DATABASE_URL` (or `--data-dir`) yourself.
pub fn provisiond(listen: SocketAddr, scripts_dir: &Path) -> std::process::Command {
    let mut command = std::process::Command::new(bin_path("provisiond-under-test"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PROVISIOND_") {
            command.env_remove(&key);
        }
    }
    command
        .env_remove("DATABASE_URL")
        .env("PROVISIOND_LISTEN", listen.to_string())
        .env("PROVISIOND_SCRIPTS_DIR", scripts_dir)
        .env("PROVISIOND_POLL_INTERVAL", "50ms")
        .env("PROVISIOND_RETRY_SCHEDULE", "100ms,200ms")
        .env("PROVISIOND_LEASE", "2s");
    command
}

/// A `provisiond-under-test` child process; killed (SIGKILL) when dropped.
pub struct ServerProcess {
    /// `http://127.0.0.1:PORT` (`https://` when started with TLS options).
    pub url: String,
    /// The address it listens on.
    pub addr: SocketAddr,
    /// A client connected to it.
    pub client: Client,
    child: tokio::process::Child,
    log_path: PathBuf,
    _log_dir: TempDir,
}

impl ServerProcess {
    /// Starts `command` (built with [`provisiond`] for `addr`) and waits until it is
    /// healthy; panics with its log if it exits or stays unhealthy for 90 s.
    pub async fn start(command: std::process::Command, addr: SocketAddr) -> ServerProcess {
        ServerProcess::start_connecting(command, addr, ConnectOptions::new()).await
    }

    /// [`ServerProcess::start`] for a server that clients reach with `options`: with
    /// TLS options the URL is `https://127.0.0.1:PORT` and health is checked over TLS.
    pub async fn start_connecting(
        mut command: std::process::Command,
        addr: SocketAddr,
        options: ConnectOptions,
    ) -> ServerProcess {
        let log_dir = TempDir::new("provisiond-log");
        let log_path = log_dir.path().join("provisiond.log");
        let log = std::fs::File::create(&log_path).expect("creating the server log");
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("duplicating the log file"))
            .stderr(log);
        let mut command = tokio::process::Command::from(command);
        command.kill_on_drop(true);
        let mut child = command.spawn().expect("spawning provisiond-under-test");
        let scheme = if options.has_tls() { "https" } else { "http" };
        let url = format!("{scheme}://{addr}");
        let health = options.endpoint(url.clone()).expect("a health endpoint");
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("polling the server process") {
                panic!(
                    "provisiond exited during start-up ({status}); log:\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            if is_serving_at(health.clone()).await {
                break;
            }
            if Instant::now() > deadline {
                // Kill it here: the guard that would do it on drop does not exist yet.
                child.start_kill().ok();
                panic!(
                    "provisiond at {url} not healthy within {STARTUP_TIMEOUT:?}; log:\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let client = Client::connect_with(url.clone(), &options)
            .await
            .unwrap_or_else(|e| panic!("connecting the client to {url}: {e}"));
        ServerProcess {
            url,
            addr,
            client,
            child,
            log_path,
            _log_dir: log_dir,
        }
    }

    /// The process id, until the process has been waited for.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Everything the process wrote so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Sends SIGKILL and waits for the process to exit.
    pub async fn kill(&mut self) -> ExitStatus {
        self.child.start_kill().ok();
        self.wait().await
    }

    /// Sends SIGTERM (graceful shutdown) and waits for the process to exit.
    pub async fn stop(&mut self) -> ExitStatus {
        if let Some(pid) = self.child.id() {
            // SAFETY: signalling our own child, which has not been reaped (id() is Some).
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        }
        self.wait().await
    }

    async fn wait(&mut self) -> ExitStatus {
        match tokio::time::timeout(EXIT_TIMEOUT, self.child.wait()).await {
            Ok(Ok(status)) => status,
            Ok(Err(e)) => panic!("waiting for provisiond: {e}"),
            Err(_) => panic!(
                "provisiond did not exit within {EXIT_TIMEOUT:?}; log:\n{}",
                self.log()
            ),
        }
    }
}

/// Starts `provisiond-under-test` on `db` with scripts from `scripts_dir` and the test
/// timings, plus `extra_args` on its command line; waits until it is healthy.
pub async fn spawn_server_process(
    db: &TestDatabase,
    scripts_dir: &Path,
    extra_args: &[&str],
) -> ServerProcess {
    let addr = free_addr();
    let mut command = provisiond(addr, scripts_dir);
    command.env("DATABASE_URL", &db.url).args(extra_args);
    ServerProcess::start(command, addr).await
}
