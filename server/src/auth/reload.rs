//! Keeps the [`Gate`] in step with the tokens file: reloaded on SIGHUP and when the
//! file changes (its modification time, size or inode, polled every second). A file
//! that fails to load keeps the previous identities, and the error is logged.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use super::identities::Identities;
use super::layer::Gate;
use crate::shutdown::Shutdown;

/// How often the file's metadata is checked.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// What identifies one version of the file.
type Fingerprint = Option<(SystemTime, u64, u64)>;

async fn fingerprint(path: &PathBuf) -> Fingerprint {
    use std::os::unix::fs::MetadataExt;
    let metadata = tokio::fs::metadata(path).await.ok()?;
    Some((metadata.modified().ok()?, metadata.len(), metadata.ino()))
}

/// Watches `path` until shutdown, replacing `gate`'s identities on every change.
pub fn spawn(path: PathBuf, gate: Gate, shutdown: &Shutdown) {
    let token = shutdown.token.clone();
    shutdown.spawn(async move {
        let mut hangup =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
                Ok(signal) => Some(signal),
                Err(error) => {
                    tracing::warn!(%error, "cannot watch SIGHUP; the tokens file is reloaded on change only");
                    None
                }
            };
        let mut seen = fingerprint(&path).await;
        loop {
            let signalled = tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(POLL_INTERVAL) => false,
                Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
            };
            let now = fingerprint(&path).await;
            if !signalled && now == seen {
                continue;
            }
            seen = now;
            let loaded = {
                let path = path.clone();
                tokio::task::spawn_blocking(move || Identities::load(&path)).await
            };
            match loaded {
                Ok(Ok(identities)) => {
                    let (tokens, certificates) = identities.counts();
                    gate.replace(identities);
                    tracing::info!(path = %path.display(), tokens, certificates, "tokens file reloaded");
                }
                Ok(Err(error)) => {
                    tracing::error!(%error, "tokens file not reloaded; the previous identities stay in force");
                }
                Err(join) => tracing::error!(error = %join, "tokens file reload task failed"),
            }
        }
    });
}
