//! The server under measurement: the release `provisiond` built by this package as
//! `provisiond-for-bench`, run as a child process so that its memory can be read from
//! /proc and its CPU time is not mixed with the harness's.
//!
//! One server is started per scenario (on that scenario's fresh database) and stopped
//! after it, so its `VmHWM` is the peak RSS of that scenario alone. Its JSON logs go to
//! a file in the run's temporary directory, shown when it fails to start.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use provisioning_client::Client;
use tokio::process::{Child, Command};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// File name of the server binary next to the harness.
const SERVER_BIN: &str = "provisiond-for-bench";
/// Longest wait for SERVING (migrations of a fresh database included).
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// Grace period after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// The release server next to this executable.
pub fn locate_binary() -> anyhow::Result<PathBuf> {
    let path = std::env::current_exe()?.with_file_name(SERVER_BIN);
    anyhow::ensure!(
        path.is_file(),
        "{} not found: build it with `cargo build --release -p provisioning-bench` \
         (`cargo run` builds only the harness itself)",
        path.display()
    );
    Ok(path)
}

/// A running server; killed if dropped without [`Server::stop`].
pub struct Server {
    child: Child,
    pid: u32,
    addr: SocketAddr,
    log: PathBuf,
}

impl Server {
    /// Starts the server on a free loopback port with `flags` added to its command line
    /// (a scenario's own settings, e.g. a short retry schedule) and waits until its
    /// health service reports SERVING.
    pub async fn start(
        binary: &Path,
        database_url: &str,
        scripts_dir: &Path,
        log: &Path,
        flags: &[String],
    ) -> anyhow::Result<Server> {
        let addr = free_port()?;
        let log_file =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(binary)
            .args(flags)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("DATABASE_URL", database_url)
            .env("PROVISIOND_LISTEN", addr.to_string())
            .env("PROVISIOND_LOG_FORMAT", "json")
            .env("RUST_LOG", "warn")
            .env("PROVISIOND_SCRIPTS_DIR", scripts_dir)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let pid = child.id().context("the server exited at once")?;
        let mut server = Server {
            child,
            pid,
            addr,
            log: log.to_owned(),
        };
        server.wait_serving().await?;
        Ok(server)
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A client on its own HTTP/2 connection.
    pub async fn client(&self) -> anyhow::Result<Client> {
        // Each call made once and keyless: the scenarios measure the service, and keep
        // measuring what earlier figures measured (a key adds a unique-index entry).
        Ok(Client::connect(self.url())
            .await?
            .with_retry_policy(provisioning_client::RetryPolicy::NONE))
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Peak resident set size so far (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        self.status_kib("VmHWM")
    }

    /// Resident set size now (`VmRSS`), in KiB: sampled to find the peak of one phase
    /// of a scenario.
    pub fn rss_kib(&self) -> Option<u64> {
        self.status_kib("VmRSS")
    }

    /// A `kB` field of `/proc/<pid>/status`.
    fn status_kib(&self, field: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        crate::report::proc_field(&status, field)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    /// SIGTERM, then SIGKILL if it has not exited within the grace period.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        // SAFETY: kill(2) on our own child's pid, which it still is: we have not reaped it.
        if unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGTERM) } != 0 {
            return Err(std::io::Error::last_os_error()).context("sending SIGTERM to the server");
        }
        match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(status) => {
                status?;
            }
            Err(_) => {
                eprintln!("server did not stop within {STOP_TIMEOUT:?}; killing it");
                self.child.kill().await?;
            }
        }
        Ok(())
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    async fn wait_serving(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!(
                    "the server exited ({status}) while starting:\n{}",
                    self.log_tail()
                );
            }
            let last_error = match health(&self.url()).await {
                Ok(true) => return Ok(()),
                Ok(false) => "health reports NOT_SERVING".to_owned(),
                Err(error) => format!("{error:#}"),
            };
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "the server did not become SERVING within {START_TIMEOUT:?} ({last_error}):\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Whether `grpc.health.v1.Health/Check` of the whole server says SERVING.
async fn health(url: &str) -> anyhow::Result<bool> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())?
        .connect_timeout(Duration::from_secs(1))
        .connect()
        .await?;
    let reply = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?
        .into_inner();
    Ok(reply.status == ServingStatus::Serving as i32)
}

/// A loopback port free right now (the server binds it a moment later).
fn free_port() -> std::io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}
