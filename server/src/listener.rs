//! Cross-replica signals over PostgreSQL LISTEN/NOTIFY.
//!
//! One dedicated connection (outside the pool) listens on two channels:
//! `provisioning_work` (new or due deliveries: wakes this replica's dispatcher) and
//! `provisioning_logs` (new execution-log rows, payload = highest new id: feeds Tail).
//! Diesel's notification API does not block, so a blocking thread polls it every few
//! milliseconds; that is the wake-up latency across replicas. Within one replica the
//! ingest path wakes the dispatcher directly, without the round trip.

use std::sync::Arc;
use std::time::Duration;

use diesel::RunQueryDsl;
use tokio::sync::{broadcast, Notify};

use crate::db::Db;
use crate::shutdown::Shutdown;

/// Channel name for "there is work to dispatch".
pub const WORK_CHANNEL: &str = "provisioning_work";
/// Channel name for "execution-log rows were written" (payload: highest id).
pub const LOGS_CHANNEL: &str = "provisioning_logs";

const POLL: Duration = Duration::from_millis(3);

/// Signals shared by the tasks of one replica.
#[derive(Clone)]
pub struct Signals {
    /// Notified when deliveries may be due (locally or on another replica).
    pub work: Arc<Notify>,
    /// Highest execution-log id written by any replica, as notified.
    pub logs: broadcast::Sender<i64>,
}

impl Signals {
    /// Signals not connected to any database (tests of single components).
    pub fn detached() -> Signals {
        Signals {
            work: Arc::new(Notify::new()),
            logs: broadcast::channel(1024).0,
        }
    }
}

/// Starts the listener thread and returns the signals it feeds.
pub fn spawn(db: Db, shutdown: &Shutdown) -> Signals {
    let signals = Signals::detached();
    let thread_signals = signals.clone();
    let token = shutdown.token.clone();
    shutdown.spawn(async move {
        let blocking =
            tokio::task::spawn_blocking(move || listen_until_cancelled(db, thread_signals, token));
        if let Err(error) = blocking.await {
            tracing::error!(%error, "LISTEN thread failed");
        }
    });
    signals
}

fn listen_until_cancelled(db: Db, signals: Signals, token: tokio_util::sync::CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    while !token.is_cancelled() {
        match db.dedicated() {
            Ok(mut conn) => {
                let listened = diesel::sql_query(format!("LISTEN {WORK_CHANNEL}"))
                    .execute(&mut conn)
                    .and_then(|_| {
                        diesel::sql_query(format!("LISTEN {LOGS_CHANNEL}")).execute(&mut conn)
                    });
                if let Err(error) = listened {
                    tracing::warn!(%error, "LISTEN failed; retrying");
                } else {
                    backoff = Duration::from_millis(100);
                    // Anything may have happened while we were not listening.
                    signals.work.notify_one();
                    if let Err(error) = poll(&mut conn, &signals, &token) {
                        tracing::warn!(%error, "LISTEN connection lost; reconnecting");
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "cannot open the LISTEN connection; retrying"),
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

fn poll(
    conn: &mut diesel::PgConnection,
    signals: &Signals,
    token: &tokio_util::sync::CancellationToken,
) -> diesel::QueryResult<()> {
    while !token.is_cancelled() {
        let mut work = false;
        let mut max_log: Option<i64> = None;
        for notification in conn.notifications_iter() {
            let notification = notification?;
            if notification.channel == WORK_CHANNEL {
                work = true;
            } else if let Ok(id) = notification.payload.parse::<i64>() {
                max_log = Some(max_log.map_or(id, |m| m.max(id)));
            }
        }
        if work {
            signals.work.notify_one();
        }
        if let Some(id) = max_log {
            // No subscriber is fine: nobody is tailing.
            let _no_tail_subscribers = signals.logs.send(id);
        }
        std::thread::sleep(POLL);
    }
    Ok(())
}
