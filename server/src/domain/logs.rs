//! Execution logs: search, live tail, details, statistics, retry and retention.
//! (Being implemented: see issue 4.)

use chrono::{DateTime, Utc};

use super::DomainError;
use crate::db::Db;
use crate::listener::Signals;

/// Reads and maintains the execution log.
#[derive(Clone)]
pub struct LogStore {
    #[allow(dead_code)]
    db: Db,
    #[allow(dead_code)]
    signals: Signals,
}

impl LogStore {
    /// A store over `db`; `signals` feeds live tails.
    pub fn new(db: Db, signals: Signals) -> LogStore {
        LogStore { db, signals }
    }

    /// Deletes runs that started before `cutoff`; returns how many.
    pub async fn purge_older_than(&self, _cutoff: DateTime<Utc>) -> Result<u64, DomainError> {
        Ok(0)
    }
}
