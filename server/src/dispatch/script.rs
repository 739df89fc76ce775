//! The script executor: runs a program from the scripts directory without a shell, with
//! a clean environment, the data on stdin, in its own process group so a timeout kills
//! everything it started.
//!
//! A run ends when the script process exits (or at the timeout): its output is what it
//! wrote until then, read for at most [`OUTPUT_GRACE`] more, and whatever it left
//! running in its process group (background children) is killed. A background child
//! holding stdout open therefore never makes the run wait.
//!
//! Privileges: when `provisiond` runs as root, scripts run as the script user
//! (`--script-user`, default `nobody`) with its primary group and no supplementary
//! groups, never as root (`policy::script_file`). Before every run the script and the
//! directories leading to it are checked again (owner, no group/other write): a refusal
//! is a non-retryable failure in the log row.
//!
//! Environment: exactly `PATH`, `LANG` and the `PROVISIONING_*` variables set below
//! (`PROVISIONING_TEST=1` only in runs of HandlerService.Test).
//! Nothing of the server's environment and no secret (signing secret, handler headers)
//! is passed on.
//!
//! Protocol: exit 0 = success (for BEFORE, a JSON object on stdout is the modified data;
//! empty stdout = unchanged); exit [`FORBID_EXIT_CODE`] = forbid (BEFORE; reason on
//! stdout or stderr); any other exit code, a signal or a timeout = failure.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use super::{AttemptError, Invocation, Reply};
use crate::domain::handlers::resolve_script;
use crate::policy::script_file::ScriptAccess;

/// Exit code by which a BEFORE script forbids the action.
pub const FORBID_EXIT_CODE: i32 = 10;
/// How long output still in the pipes is read after the script exited.
const OUTPUT_GRACE: Duration = Duration::from_millis(100);

/// Runs scripts from one directory.
#[derive(Clone)]
pub struct ScriptExecutor {
    scripts_dir: PathBuf,
    max_output: usize,
    /// The account scripts run as and who may own them.
    access: ScriptAccess,
}

impl ScriptExecutor {
    /// Scripts under `scripts_dir`, run with `access`; at most `max_output` bytes kept
    /// of stdout and stderr.
    pub fn new(scripts_dir: PathBuf, max_output: usize, access: ScriptAccess) -> ScriptExecutor {
        ScriptExecutor {
            scripts_dir,
            max_output,
            access,
        }
    }

    /// Runs `path` and waits at most `timeout`, then kills its process group.
    pub async fn run(
        &self,
        invocation: &Invocation<'_>,
        path: &str,
        timeout: Duration,
    ) -> Result<Reply, AttemptError> {
        // Checked again at every run: the file or a symlink may have changed since Create.
        let program = resolve_script(&self.scripts_dir, path, &self.access.trusted_owners)
            .map_err(AttemptError::ScriptRefused)?;
        let mut command = Command::new(&program);
        command
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("LANG", "C.UTF-8")
            .env("PROVISIONING_EVENT", invocation.event)
            .env("PROVISIONING_PHASE", invocation.phase.as_str())
            .env("PROVISIONING_EVENT_ID", invocation.event_id.to_string())
            .env("PROVISIONING_ATTEMPT", invocation.attempt.to_string())
            .env("PROVISIONING_DELIVERY_ID", invocation.message_id.as_str())
            .env("PROVISIONING_HANDLER_ID", invocation.handler_id.to_string())
            .current_dir(&self.scripts_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if let Some(traceparent) = &invocation.traceparent {
            command.env("TRACEPARENT", traceparent);
        }
        if invocation.test {
            // A run of HandlerService.Test; deliveries do not have the variable at all.
            command.env("PROVISIONING_TEST", "1");
        }
        if let Some((uid, gid)) = self.access.run_as {
            // The standard library drops supplementary groups (setgroups(0)) before
            // setuid when the parent is root.
            command.uid(uid).gid(gid);
        }
        let mut child = command.spawn().map_err(|e| {
            AttemptError::ScriptSpawn(format!("cannot start {}: {e}", program.display()))
        })?;
        let pgid = child.id().map(|id| id as i32);
        let stdin = child.stdin.take();
        let data = invocation.data.as_bytes().to_vec();
        tokio::spawn(async move {
            if let Some(mut stdin) = stdin {
                // A script that does not read its input closes the pipe early: fine.
                let _script_may_ignore_stdin = stdin.write_all(&data).await;
            }
        });
        let stop_reading = CancellationToken::new();
        let max = self.max_output;
        let stdout = tokio::spawn(read_capped(child.stdout.take(), max, stop_reading.clone()));
        let stderr = tokio::spawn(read_capped(child.stderr.take(), max, stop_reading.clone()));
        let deadline = tokio::time::Instant::now() + timeout;

        // The run ends when the script process exits, not when its output closes: a child
        // it left in the background may hold the pipes open for much longer.
        let status = match tokio::time::timeout_at(deadline, child.wait()).await {
            Ok(status) => status,
            Err(_) => {
                kill_group(pgid);
                stop_reading.cancel();
                return Err(AttemptError::Timeout(timeout));
            }
        };
        // What it wrote before exiting may still be in the pipes: read it for a moment,
        // then kill what is left of its process group and keep what was read.
        let grace = (tokio::time::Instant::now() + OUTPUT_GRACE).min(deadline);
        let outputs = async { (stdout.await, stderr.await) };
        tokio::pin!(outputs);
        let (stdout, stderr) = tokio::select! {
            outputs = &mut outputs => outputs,
            _ = tokio::time::sleep_until(grace) => {
                stop_reading.cancel();
                outputs.await
            }
        };
        kill_group(pgid);
        let status = status
            .map_err(|e| AttemptError::ScriptSpawn(format!("waiting for the script: {e}")))?;
        Ok(Reply::Script {
            exit_code: status.code(),
            signal: std::os::unix::process::ExitStatusExt::signal(&status),
            stdout: stdout.unwrap_or_default(),
            stderr: stderr.unwrap_or_default(),
        })
    }
}

fn kill_group(pgid: Option<i32>) {
    if let Some(pgid) = pgid.filter(|p| *p > 0) {
        // SAFETY: plain syscall; ESRCH when the group is already gone is fine.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
}

/// Reads a pipe until its end or until `stop`, keeping at most `max` bytes (the rest is
/// drained so the script never blocks on a full pipe).
async fn read_capped<R: AsyncRead + Unpin>(
    pipe: Option<R>,
    max: usize,
    stop: CancellationToken,
) -> Vec<u8> {
    let mut kept = Vec::new();
    let Some(mut pipe) = pipe else { return kept };
    let mut buf = [0u8; 8192];
    loop {
        let read = tokio::select! {
            read = pipe.read(&mut buf) => read,
            _ = stop.cancelled() => break,
        };
        match read {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = max.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    kept
}
