//! Where execution-log reads go. With a streaming standby (`--read-database-url`),
//! Search, Get and Stats read from it while it is at most `--max-read-lag` behind the
//! primary, and from the primary otherwise; everything else (writes, claims, Retry,
//! Purge, Tail) stays on the primary.
//!
//! The lag is measured every [`LAG_PROBE_INTERVAL`]: the primary's current WAL position
//! against the standby's replayed one; a standby that has replayed all of it is not
//! behind, one that has not is behind by the time since its last replayed transaction.
//! A standby that cannot be reached counts as infinitely behind, so reads fall back to
//! the primary at once and return when it answers again. Tail follows the primary: its
//! wake-ups come from the primary's NOTIFY, and a standby may not have replayed the
//! rows they announce yet.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use diesel::sql_types::{Double, Text};
use diesel::{QueryableByName, RunQueryDsl};

use super::{Db, DbError};
use crate::shutdown::Shutdown;

/// How often the standby's lag is measured.
pub const LAG_PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// Lag recorded while it is unknown (not measured yet, standby unreachable).
const UNKNOWN_LAG: i64 = i64::MAX;

/// The databases log reads may use.
#[derive(Clone)]
pub struct Reads {
    primary: Db,
    standby: Option<Standby>,
}

#[derive(Clone)]
struct Standby {
    db: Db,
    max_lag_ms: i64,
    lag_ms: Arc<AtomicI64>,
}

impl Reads {
    /// Every read on the primary.
    pub fn primary_only(primary: Db) -> Reads {
        Reads {
            primary,
            standby: None,
        }
    }

    /// Reads on `standby` while it lags at most `max_lag`; starts measuring its lag.
    pub fn with_standby(primary: Db, standby: Db, max_lag: Duration, shutdown: &Shutdown) -> Reads {
        let standby = Standby {
            db: standby,
            max_lag_ms: max_lag.as_millis().min(i64::MAX as u128) as i64,
            lag_ms: Arc::new(AtomicI64::new(UNKNOWN_LAG)),
        };
        shutdown.spawn(measure_lag(
            primary.clone(),
            standby.clone(),
            shutdown.clone(),
        ));
        Reads {
            primary,
            standby: Some(standby),
        }
    }

    /// The database a log read goes to now.
    pub fn pick(&self) -> &Db {
        match &self.standby {
            Some(standby) if standby.lag_ms.load(Ordering::Relaxed) <= standby.max_lag_ms => {
                &standby.db
            }
            _ => &self.primary,
        }
    }

    /// The primary: for reads that must see the caller's own writes.
    pub fn primary(&self) -> &Db {
        &self.primary
    }

    /// Whether `db` (as returned by [`Reads::pick`]) is the standby.
    pub fn is_standby(&self, db: &Db) -> bool {
        !std::ptr::eq(db, &self.primary)
    }
}

async fn measure_lag(primary: Db, standby: Standby, shutdown: Shutdown) {
    let mut ticks = tokio::time::interval(LAG_PROBE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reachable = true;
    loop {
        tokio::select! {
            _ = shutdown.requested() => return,
            _ = ticks.tick() => {}
        }
        let lag = match lag_ms(&primary, &standby.db).await {
            Ok(lag) => {
                if !reachable {
                    tracing::info!(lag_ms = lag, "the read standby answers again");
                    reachable = true;
                }
                lag
            }
            Err(error) => {
                if reachable {
                    tracing::warn!(%error, "the read standby does not answer; log reads go to the primary");
                    reachable = false;
                }
                UNKNOWN_LAG
            }
        };
        standby.lag_ms.store(lag, Ordering::Relaxed);
    }
}

/// How far (in milliseconds) the standby is behind the primary now.
async fn lag_ms(primary: &Db, standby: &Db) -> Result<i64, DbError> {
    #[derive(QueryableByName)]
    struct Position {
        #[diesel(sql_type = Text)]
        lsn: String,
    }
    #[derive(QueryableByName)]
    struct Behind {
        #[diesel(sql_type = Double)]
        lag_ms: f64,
    }
    let position: Position = primary
        .run(|conn| {
            diesel::sql_query("SELECT pg_current_wal_lsn()::text AS lsn")
                .get_result(conn)
                .map_err(DbError::from)
        })
        .await?;
    let behind: Behind = standby
        .run(move |conn| {
            diesel::sql_query(
                "SELECT CASE WHEN coalesce(pg_wal_lsn_diff($1::pg_lsn, pg_last_wal_replay_lsn()), 0) <= 0 \
                 THEN 0 \
                 ELSE coalesce(extract(epoch FROM now() - pg_last_xact_replay_timestamp()) * 1000, 0) \
                 END::float8 AS lag_ms",
            )
            .bind::<Text, _>(position.lsn)
            .get_result(conn)
            .map_err(DbError::from)
        })
        .await?;
    Ok(behind.lag_ms.max(0.0).min(i64::MAX as f64 / 2.0) as i64)
}
