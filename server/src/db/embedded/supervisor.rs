//! Keeps an owned embedded cluster running under its server.
//!
//! Every [`CHECK_INTERVAL`] the supervisor asks whether the postmaster is alive. When it
//! is gone (killed, crashed) the supervisor logs it, reports the cluster
//! [`ClusterStatus::Down`] (the server sets health NOT_SERVING) and waits for that
//! report to complete, starts the cluster again with the routine used at start-up,
//! retrying with a backoff while that fails, drops the pool's idle connections to the
//! dead server so that no request meets one, and reports [`ClusterStatus::Up`].
//!
//! Nothing accepted is lost: what a request saw committed was fsynced, and PostgreSQL's
//! crash recovery replays it. Meanwhile requests fail with UNAVAILABLE, the recorder
//! retries its rows, deliveries in flight keep their lease until it expires and are then
//! claimed again, and the LISTEN connection reconnects by itself (`listener`).
//!
//! The supervisor ends on shutdown, before the server stops the cluster: it never
//! restarts a cluster that is being stopped.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::EmbeddedPostgres;
use crate::db::{ClusterStatus, Db};
use crate::shutdown::Shutdown;
use crate::telemetry::error_chain;

/// How often the postmaster is checked; also how long a dead cluster can go unnoticed.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// First wait after a failed restart; doubled up to [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(250);
/// Longest wait between two restart attempts.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(10);

/// Starts supervising `pg` (whose pool is `db`) until shutdown. `report` is awaited at
/// every change of the cluster's status, before the supervisor goes on: the server says
/// it is not serving before the restart begins, and serving again only once it is over.
pub fn spawn<R, Fut>(pg: Arc<EmbeddedPostgres>, db: Db, shutdown: &Shutdown, report: R)
where
    R: FnMut(ClusterStatus) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    shutdown.spawn(supervise(pg, db, report, shutdown.token.clone()));
}

async fn supervise<R, Fut>(
    pg: Arc<EmbeddedPostgres>,
    db: Db,
    mut report: R,
    token: CancellationToken,
) where
    R: FnMut(ClusterStatus) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut ticks = tokio::time::interval(CHECK_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let checked = pg.clone();
        // Reads a file and signals a process: quick, but blocking.
        match tokio::task::spawn_blocking(move || checked.is_running()).await {
            Ok(true) => continue,
            Ok(false) => {}
            Err(error) => {
                tracing::error!(%error, "checking the embedded PostgreSQL failed");
                continue;
            }
        }
        tracing::error!(
            cluster_dir = %pg.cluster_dir().display(),
            "the embedded PostgreSQL is not running (its postmaster died); not serving until it is restarted"
        );
        report(ClusterStatus::Down).await;
        if !restart(&pg, &token).await {
            return;
        }
        // Not fatal: a connection left behind fails one statement and is replaced.
        let discarded = match db.discard_broken().await {
            Ok(discarded) => discarded,
            Err(error) => {
                tracing::warn!(error = %error_chain(&error), "checking the pool's idle connections failed");
                0
            }
        };
        tracing::info!(
            cluster_dir = %pg.cluster_dir().display(),
            pool.discarded = discarded,
            "the embedded PostgreSQL was restarted; serving again"
        );
        report(ClusterStatus::Up).await;
    }
}

/// Starts the cluster again, retrying until it runs; `false` if shutdown came first.
async fn restart(pg: &Arc<EmbeddedPostgres>, token: &CancellationToken) -> bool {
    let mut delay = FIRST_RETRY_DELAY;
    loop {
        let starting = pg.clone();
        // pg_ctl start waits for crash recovery: never on a runtime worker thread.
        match tokio::task::spawn_blocking(move || starting.ensure_running()).await {
            Ok(Ok(())) => return true,
            Ok(Err(error)) => {
                tracing::warn!(error = %error_chain(&error), retry_in = ?delay,
                    "restarting the embedded PostgreSQL failed; retrying")
            }
            Err(error) => {
                tracing::error!(%error, retry_in = ?delay, "restarting the embedded PostgreSQL failed; retrying")
            }
        }
        tokio::select! {
            _ = token.cancelled() => return false,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(MAX_RETRY_DELAY);
    }
}
