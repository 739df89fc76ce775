//! Health of an external database. The embedded cluster has its supervisor; a database
//! the server does not own can only be asked. Every [`PROBE_INTERVAL`] the probe runs
//! `SELECT 1` on a connection of its own (outside the pool, so a busy pool never looks
//! like an outage) and reports [`ClusterStatus::Down`] when the database does not
//! answer within [`PROBE_TIMEOUT`], and [`ClusterStatus::Up`] once it answers again,
//! after dropping the pool's idle connections to the server that went away. One lost
//! connection is not an outage: a failed probe is tried once more on a new connection
//! before the status changes.

use std::future::Future;
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::PgConnection;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{ClusterStatus, Db, DbError};
use crate::shutdown::Shutdown;
use crate::telemetry::error_chain;

/// How often the database is asked; also how long an outage can go unnoticed.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How long one probe may take before the database counts as unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Starts probing `db` until shutdown; `report` is awaited at every status change.
pub fn spawn<R, Fut>(db: Db, shutdown: &Shutdown, report: R)
where
    R: FnMut(ClusterStatus) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    shutdown.spawn(probe_loop(db, report, shutdown.token.clone()));
}

async fn probe_loop<R, Fut>(db: Db, mut report: R, token: CancellationToken)
where
    R: FnMut(ClusterStatus) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut ticks = tokio::time::interval(PROBE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut conn: Option<PgConnection> = None;
    // A probe that timed out, still waiting on the database: never start a second.
    let mut hung: Option<JoinHandle<Result<PgConnection, DbError>>> = None;
    let mut status = ClusterStatus::Up;
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let mut answered = false;
        if hung.as_ref().is_none_or(JoinHandle::is_finished) {
            hung = None;
            // A kept connection that fails may just have been closed: one more try on a
            // fresh one decides.
            for _ in 0..2 {
                match probe(db.clone(), conn.take()).await {
                    Probe::Answered(kept) => {
                        conn = Some(kept);
                        answered = true;
                        break;
                    }
                    Probe::Failed(error) => {
                        tracing::debug!(error = %error_chain(&error), "database probe failed")
                    }
                    Probe::Hung(task) => {
                        hung = Some(task);
                        break;
                    }
                }
            }
        }
        let now = if answered {
            ClusterStatus::Up
        } else {
            ClusterStatus::Down
        };
        if now == status {
            continue;
        }
        status = now;
        match status {
            ClusterStatus::Down => {
                tracing::error!("the database does not answer; not serving until it does")
            }
            ClusterStatus::Up => {
                let discarded = db.discard_broken().await.unwrap_or(0);
                tracing::info!(
                    pool.discarded = discarded,
                    "the database answers again; serving"
                );
            }
        }
        report(status).await;
    }
}

/// How one probe went.
enum Probe {
    /// The database answered on this connection (kept for the next probe).
    Answered(PgConnection),
    /// Connecting or the statement failed.
    Failed(DbError),
    /// No answer within [`PROBE_TIMEOUT`]; the task still waits on the database.
    Hung(JoinHandle<Result<PgConnection, DbError>>),
}

/// One `SELECT 1` on `conn`, or on a new connection when there is none.
async fn probe(db: Db, conn: Option<PgConnection>) -> Probe {
    let mut task = tokio::task::spawn_blocking(move || {
        let mut conn = match conn {
            Some(conn) => conn,
            None => db.dedicated()?,
        };
        conn.batch_execute("SELECT 1")?;
        Ok(conn)
    });
    match tokio::time::timeout(PROBE_TIMEOUT, &mut task).await {
        Ok(Ok(Ok(conn))) => Probe::Answered(conn),
        Ok(Ok(Err(error))) => Probe::Failed(error),
        Ok(Err(join)) => Probe::Failed(DbError::Join(join)),
        Err(_) => Probe::Hung(task),
    }
}
