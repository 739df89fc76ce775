//! Background upkeep of the database: daily execution-log partitions created ahead of
//! time, and retention (old log partitions dropped, old delivered events deleted).
//! Every replica runs it; each step is idempotent and safe to run concurrently.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use diesel::RunQueryDsl;

use crate::config::Config;
use crate::db::{Db, DbError};
use crate::domain::logs::LogStore;
use crate::shutdown::Shutdown;

const PERIOD: Duration = Duration::from_secs(3600);

/// Creates the log partitions from yesterday to three days ahead.
pub async fn prepare(db: &Db) -> Result<(), DbError> {
    db.run(|conn| {
        diesel::sql_query("SELECT ensure_log_partitions(current_date - 1, current_date + 3)")
            .execute(conn)?;
        Ok::<_, DbError>(())
    })
    .await
}

/// Starts the hourly upkeep task.
pub fn spawn(db: Db, config: Arc<Config>, shutdown: &Shutdown) {
    let token = shutdown.token.clone();
    let logs = LogStore::new(db.clone(), crate::listener::Signals::detached());
    shutdown.spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(PERIOD) => {}
                _ = token.cancelled() => break,
            }
            if let Err(error) = prepare(&db).await {
                tracing::warn!(%error, "creating log partitions failed");
            }
            let retention = chrono::Duration::from_std(config.log_retention)
                .unwrap_or(chrono::Duration::days(30));
            match logs.purge_older_than(Utc::now() - retention).await {
                Ok(deleted) if deleted > 0 => {
                    tracing::info!(deleted, "retention removed old execution-log rows")
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "log retention failed"),
            }
            let retention = chrono::Duration::from_std(config.event_retention)
                .unwrap_or(chrono::Duration::days(30));
            match logs.expire_events(Utc::now() - retention).await {
                Ok(deleted) if deleted > 0 => {
                    tracing::info!(deleted, "retention removed old delivered events")
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "event retention failed"),
            }
        }
    });
}
