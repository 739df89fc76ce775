//! `provisiond-under-test` on its own embedded cluster, as an operator runs it with no
//! database URL: the command for a data directory, a started server, the cluster's
//! postmaster PID, and a guard so that no cluster outlives its test.
//!
//! Data directories go under `/tmp` ([`TempDir::new_in`]): the cluster's socket lives
//! inside them, and its path must stay short. As root the cluster runs as `postgres`,
//! which can traverse them (mode 0755).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::process::{free_addr, provisiond, ServerProcess};
use crate::temp::TempDir;

/// A fresh data directory under `/tmp`, removed on drop.
pub fn data_dir(prefix: &str) -> TempDir {
    TempDir::new_in(Path::new("/tmp"), prefix)
}

/// `provisiond-under-test` on a free address with `--data-dir data_dir` and no database
/// URL (see [`provisiond`] for the rest); returns the command and its address.
pub fn embedded_command(
    data_dir: &Path,
    scripts_dir: &Path,
) -> (std::process::Command, SocketAddr) {
    let addr = free_addr();
    let mut command = provisiond(addr, scripts_dir);
    command.arg("--data-dir").arg(data_dir);
    (command, addr)
}

/// Starts `provisiond-under-test` on its embedded cluster under `data_dir` and waits
/// until it is healthy.
pub async fn start_embedded(data_dir: &Path, scripts_dir: &Path) -> ServerProcess {
    let (command, addr) = embedded_command(data_dir, scripts_dir);
    ServerProcess::start(command, addr).await
}

/// The PID `<pgdata>/postmaster.pid` names, if the file exists.
pub fn postmaster_pid(pgdata: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(pgdata.join("postmaster.pid")).ok()?;
    text.lines().next()?.trim().parse().ok()
}

/// Stops the cluster under a data directory when dropped, if it still runs (SIGQUIT to
/// its postmaster: immediate shutdown), so a failed test never leaves a postmaster
/// behind (servers are SIGKILLed on drop, which leaves their cluster running). Declare
/// it after the data directory and before the servers: it then runs after the servers
/// are killed and before the directory is removed.
pub struct PostmasterGuard {
    pgdata: PathBuf,
}

impl PostmasterGuard {
    /// Guards the cluster under `data_dir` (`<data_dir>/pgdata`).
    pub fn new(data_dir: &Path) -> PostmasterGuard {
        PostmasterGuard {
            pgdata: data_dir.join("pgdata"),
        }
    }
}

impl Drop for PostmasterGuard {
    fn drop(&mut self) {
        if let Some(pid) = postmaster_pid(&self.pgdata) {
            // SAFETY: signalling the postmaster the pid file names (a stale file names a
            // dead process: the signal then fails harmlessly).
            unsafe { libc::kill(pid, libc::SIGQUIT) };
        }
    }
}
