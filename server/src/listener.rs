//! Cross-replica signals over PostgreSQL LISTEN/NOTIFY.
//!
//! One dedicated connection (outside the pool, on `--listen-database-url` when the pool
//! goes through a transaction pooler: LISTEN belongs to a session) listens on two
//! channels:
//! `provisioning_work` (new or due deliveries: wakes this replica's dispatcher) and
//! `provisioning_logs` (new execution-log rows, payload = highest new id: feeds Tail).
//! Diesel's notification API does not block, so a blocking thread polls it every few
//! milliseconds; that is the wake-up latency across replicas. Within one replica the
//! ingest path wakes the dispatcher directly, without the round trip.
//!
//! Announcing is done after commit by one announcer task, never inside the writing
//! transaction: PostgreSQL serialises committing transactions that sent a NOTIFY (a
//! queue lock held through the commit's WAL flush), which would cap the commit rate.
//! The announcer coalesces bursts into one small NOTIFY statement at a time, on a pooled
//! connection: `pg_notify` is delivered at its transaction's commit, so it works
//! through a transaction pooler too.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
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
/// First wait before reconnecting a lost LISTEN connection.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between reconnection attempts: how late, at worst, cross-replica
/// signals resume after the database is back (local work is woken directly).
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Signals shared by the tasks of one replica.
#[derive(Clone)]
pub struct Signals {
    /// Notified when deliveries may be due (locally or on another replica).
    pub work: Arc<Notify>,
    /// Highest execution-log id written by any replica, as notified.
    pub logs: broadcast::Sender<i64>,
    outbox: Arc<Outbox>,
}

/// What this replica still has to announce to the others.
#[derive(Default)]
struct Outbox {
    work: AtomicBool,
    /// Highest log id written and not announced yet (0 = none).
    logs: AtomicI64,
    ready: Notify,
}

impl Signals {
    /// Signals not connected to any database (tests of single components).
    pub fn detached() -> Signals {
        Signals {
            work: Arc::new(Notify::new()),
            logs: broadcast::channel(1024).0,
            outbox: Arc::new(Outbox::default()),
        }
    }

    /// New deliveries were committed: wake this replica's dispatcher now and the
    /// others' shortly.
    pub fn announce_work(&self) {
        self.work.notify_one();
        self.outbox.work.store(true, Ordering::Release);
        self.outbox.ready.notify_one();
    }

    /// Execution-log rows up to `max_id` were committed: tell every replica's tails.
    pub fn announce_logs(&self, max_id: i64) {
        self.outbox.logs.fetch_max(max_id, Ordering::AcqRel);
        self.outbox.ready.notify_one();
    }
}

/// Starts the listener thread and the announcer, and returns the signals they serve.
pub fn spawn(db: Db, shutdown: &Shutdown) -> Signals {
    let signals = Signals::detached();
    shutdown.spawn(announce_loop(
        db.clone(),
        signals.outbox.clone(),
        shutdown.token.clone(),
    ));
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

/// Listens until shutdown, reconnecting (with a backoff up to `MAX_BACKOFF`) whenever
/// the connection is lost, as when the database restarts.
fn listen_until_cancelled(db: Db, signals: Signals, token: tokio_util::sync::CancellationToken) {
    let mut backoff = FIRST_BACKOFF;
    let mut lost = false;
    while !token.is_cancelled() {
        match db.listen_connection() {
            Ok(mut conn) => {
                let listened = diesel::sql_query(format!("LISTEN {WORK_CHANNEL}"))
                    .execute(&mut conn)
                    .and_then(|_| {
                        diesel::sql_query(format!("LISTEN {LOGS_CHANNEL}")).execute(&mut conn)
                    });
                if let Err(error) = listened {
                    tracing::warn!(%error, "LISTEN failed; retrying");
                } else {
                    backoff = FIRST_BACKOFF;
                    if lost {
                        tracing::info!("LISTEN connection re-established");
                    }
                    // Anything may have happened while we were not listening.
                    signals.work.notify_one();
                    if let Err(error) = poll(&mut conn, &signals, &token) {
                        tracing::warn!(%error, "LISTEN connection lost; reconnecting");
                        lost = true;
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "cannot open the LISTEN connection; retrying"),
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(MAX_BACKOFF);
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

/// Sends what the outbox holds, one statement at a time; what arrives meanwhile is
/// coalesced into the next one.
async fn announce_loop(db: Db, outbox: Arc<Outbox>, token: tokio_util::sync::CancellationToken) {
    loop {
        tokio::select! {
            _ = outbox.ready.notified() => {}
            _ = token.cancelled() => break,
        }
        let work = outbox.work.swap(false, Ordering::AcqRel);
        let logs = outbox.logs.swap(0, Ordering::AcqRel);
        if !work && logs == 0 {
            continue;
        }
        let sent = db
            .run(move |conn| {
                diesel::sql_query(
                    "SELECT pg_notify($1, '') WHERE $2 UNION ALL SELECT pg_notify($3, $4) WHERE $5",
                )
                .bind::<diesel::sql_types::Text, _>(WORK_CHANNEL)
                .bind::<diesel::sql_types::Bool, _>(work)
                .bind::<diesel::sql_types::Text, _>(LOGS_CHANNEL)
                .bind::<diesel::sql_types::Text, _>(logs.to_string())
                .bind::<diesel::sql_types::Bool, _>(logs > 0)
                .execute(conn)
                .map_err(crate::db::DbError::from)
            })
            .await;
        if let Err(error) = sent {
            // Other replicas still find the work by polling, and tails catch up.
            tracing::warn!(%error, "announcing to other replicas failed");
        }
    }
}
