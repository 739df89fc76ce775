//! Retention of the execution log (Purge, and the hourly automatic retention).
//!
//! The log is partitioned by day, so most of the work is dropping whole partitions: a
//! catalogue change instead of millions of row deletions. Each drop counts the rows
//! first (writes to the partition blocked, so the count is exact) and waits at most
//! `LOCK_TIMEOUT_MS` for its locks: dropping a partition briefly locks the parent table,
//! and queueing behind a long query would stall every writer. A partition that cannot be
//! dropped now is emptied by the batched delete below instead, and dropped next time.
//! Rows older than the cutoff in the partition that straddles it, or in the default
//! partition, are deleted in small batches (short transactions, row locks only).
//!
//! Events (and their idempotency keys) have a retention of their own: old events that
//! no delivery needs any more are deleted in batches too, but never by Purge. Every step
//! is idempotent and safe to run on several replicas at once.

use chrono::{DateTime, Utc};
use diesel::{Connection, PgConnection};

use crate::db::queries::logs;
use crate::db::DbError;

/// Longest wait for the locks of one partition drop.
const LOCK_TIMEOUT_MS: u32 = 1_000;
/// Rows per DELETE statement.
const DELETE_BATCH: i64 = 10_000;

/// Deletes log rows that started before `cutoff`; returns how many. Events are not
/// touched: they follow their own retention ([`events_older_than`]).
pub(super) fn older_than(conn: &mut PgConnection, cutoff: DateTime<Utc>) -> Result<u64, DbError> {
    let mut deleted: u64 = 0;
    for partition in logs::partitions(conn)? {
        let Some(upper) = partition.upper else {
            continue;
        };
        if upper > cutoff {
            continue;
        }
        let name = partition.name.as_str();
        match conn.transaction(|conn| logs::drop_partition(conn, name, LOCK_TIMEOUT_MS)) {
            Ok(Some(rows)) => {
                tracing::info!(
                    partition = name,
                    rows,
                    "dropped an old execution-log partition"
                );
                deleted += u64::try_from(rows).unwrap_or(0);
            }
            Ok(None) => {} // another replica dropped it
            Err(error) => {
                tracing::warn!(partition = name, %error,
                    "cannot drop the partition now; deleting its rows in batches instead");
            }
        }
    }
    loop {
        let rows = logs::delete_older_batch(conn, cutoff, DELETE_BATCH)?;
        deleted += rows as u64;
        if (rows as i64) < DELETE_BATCH {
            break;
        }
    }
    Ok(deleted)
}

/// Deletes events created before `cutoff` that no delivery needs any more (and with them
/// the memory of their idempotency keys); returns how many.
pub(super) fn events_older_than(
    conn: &mut PgConnection,
    cutoff: DateTime<Utc>,
) -> Result<u64, DbError> {
    let mut deleted: u64 = 0;
    loop {
        let events = logs::delete_old_events_batch(conn, cutoff, DELETE_BATCH)?;
        deleted += events as u64;
        if (events as i64) < DELETE_BATCH {
            break;
        }
    }
    Ok(deleted)
}
