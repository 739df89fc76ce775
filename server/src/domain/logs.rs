//! Execution logs: search, live tail, details, statistics, retry and retention.
//!
//! Reading never holds a result in memory: Search (in `search`) pages through the log
//! with a keyset on `(created_at, id)` (newest first, 500 rows per query, GIN-served
//! filters a few days at a time) and hands rows to the caller through a small bounded
//! channel, so a slow reader slows only its own queries.
//! Tail (in `tail`) reads the database too, woken by the cross-replica `Signals.logs`;
//! it never sits on the write path, so no reader can slow the dispatcher or the
//! recorder. Retention (in `purge`) drops whole daily partitions and deletes the rest in
//! small batches, so it never holds long locks.
//!
//! Filters are checked, and cursors (opaque `(created_at, id)` positions) encoded and
//! decoded, in `filter`; [`check_search`] checks a whole Search request without the
//! database (the fuzz target `log_filter` drives it). Retry reschedules the delivery in one transaction and wakes
//! the dispatchers of every replica; the old log row is never touched.

mod filter;
mod purge;
mod search;
mod tail;

use chrono::{DateTime, Utc};
use diesel::{Connection, OptionalExtension};
use std::sync::Arc;

use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

pub use filter::{decode_cursor, encode_cursor, LogFilter};
pub use tail::TailItem;

use filter::optional_cursor;

use super::{parse_stored, DomainError, HandlerKind, HandlerStatus, Phase, RunStatus};
use crate::db::models::LogRow;
use crate::db::queries::logs::{self, Position};
use crate::db::queries::{deliveries, events};
use crate::db::reads::Reads;
use crate::db::Db;
use crate::listener::Signals;

/// Search limit when the request gives none.
pub const DEFAULT_SEARCH_LIMIT: u32 = 100;
/// Largest Search limit.
pub const MAX_SEARCH_LIMIT: u32 = 100_000;
/// Largest Tail backlog.
pub const MAX_BACKLOG: u32 = 10_000;
/// Rows per database query while streaming.
const PAGE: i64 = 500;
/// Rows buffered between a Search query task and its reader.
const SEARCH_BUFFER: usize = 64;

/// One handler run, as logged.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutionLog {
    /// Log id.
    pub id: i64,
    /// Run start.
    pub created_at: DateTime<Utc>,
    /// Phase of the event.
    pub phase: Phase,
    /// Event name.
    pub event: String,
    /// Outcome.
    pub status: RunStatus,
    /// Handler id (the handler may since have been deleted).
    pub handler_id: i64,
    /// Handler name at the time of the run.
    pub handler_name: String,
    /// Handler kind.
    pub kind: HandlerKind,
    /// Error text; empty on success.
    pub error: String,
    /// Run time.
    pub duration_ms: u32,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// Data sent, JSON object text.
    pub data_sent: String,
    /// Data returned (BEFORE), JSON text.
    pub data_returned: Option<String>,
    /// Response body or script output, truncated.
    pub response: String,
    /// HTTP status.
    pub http_status: Option<i32>,
    /// Script exit code.
    pub exit_code: Option<i32>,
    /// Event id.
    pub event_id: i64,
    /// Delivery id (AFTER).
    pub delivery_id: Option<i64>,
    /// Who emitted the event (the caller's name), when recorded.
    pub emitted_by: Option<String>,
    /// A run of HandlerService.Test: no stored event, no delivery.
    pub test: bool,
}

impl ExecutionLog {
    /// This row's resume position, encoded.
    pub fn cursor(&self) -> String {
        encode_cursor(Position {
            created_at: self.created_at,
            id: self.id,
        })
    }
}

impl TryFrom<LogRow> for ExecutionLog {
    type Error = DomainError;

    fn try_from(row: LogRow) -> Result<ExecutionLog, DomainError> {
        let LogRow {
            id,
            created_at,
            phase,
            event,
            status,
            handler_id,
            handler_name,
            kind,
            error,
            duration_ms,
            attempt,
            data_sent,
            data_returned,
            response,
            http_status,
            exit_code,
            event_id,
            delivery_id,
            emitted_by,
            test,
        } = row;
        Ok(ExecutionLog {
            id,
            created_at,
            phase: parse_stored(Phase::parse, &phase, "execution_logs.phase")?,
            event,
            status: parse_stored(RunStatus::parse, &status, "execution_logs.status")?,
            handler_id,
            handler_name,
            kind: parse_stored(HandlerKind::parse, &kind, "execution_logs.kind")?,
            error,
            duration_ms: u32::try_from(duration_ms).unwrap_or(0),
            attempt: u32::try_from(attempt).unwrap_or(0),
            data_sent: data_sent.0,
            data_returned: data_returned.map(|d| d.0),
            response,
            http_status,
            exit_code,
            event_id,
            delivery_id,
            emitted_by,
            test,
        })
    }
}

/// A streamed row with its resume position.
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    /// The run.
    pub log: ExecutionLog,
    /// Opaque cursor of this row.
    pub cursor: String,
}

impl LogEntry {
    fn from_row(row: LogRow) -> Result<LogEntry, DomainError> {
        let log = ExecutionLog::try_from(row)?;
        Ok(LogEntry {
            cursor: log.cursor(),
            log,
        })
    }

    fn position(&self) -> Position {
        Position {
            created_at: self.log.created_at,
            id: self.log.id,
        }
    }
}

/// Statistics of one handler over a window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HandlerStats {
    /// Handler id.
    pub handler_id: i64,
    /// Name of its latest run in the window.
    pub handler_name: String,
    /// Runs.
    pub total: u64,
    /// Successful runs.
    pub success: u64,
    /// Failed runs.
    pub fail: u64,
    /// `success / total`.
    pub success_rate: f64,
    /// Median duration, ms.
    pub p50_ms: f64,
    /// 95th percentile, ms.
    pub p95_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Deliveries waiting for the handler to be enabled again.
    pub paused: u64,
    /// Deliveries queued behind an earlier delivery of their ordering key.
    pub queued: u64,
    /// Ordering keys held back by a given-up delivery (policy BLOCK).
    pub blocked_keys: u64,
    /// Deliveries waiting for the handler's limits.
    pub throttled: u64,
}

/// Where a tail starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TailStart {
    /// With the runs logged from now on.
    Now,
    /// With the last `n` matching runs (oldest first), then live runs.
    Backlog(u32),
    /// With every matching run logged after this cursor's row, then live runs.
    After(String),
}

/// Live tails open at once when not configured (`--max-tail-subscribers`).
pub const DEFAULT_MAX_TAILS: usize = 256;

/// Reads and maintains the execution log.
#[derive(Clone)]
pub struct LogStore {
    db: Db,
    signals: Signals,
    /// Cancelled when the server stops: ends live tails, which never end by themselves
    /// and would otherwise hold the graceful shutdown open.
    shutdown: CancellationToken,
    /// One permit per live tail that may be open at once (`--max-tail-subscribers`).
    tail_slots: Arc<Semaphore>,
    /// How many permits `tail_slots` started with.
    max_tails: usize,
    /// Where Search, Get and Stats read (a standby when configured).
    reads: Reads,
}

impl LogStore {
    /// A store over `db`; `signals` feeds live tails.
    pub fn new(db: Db, signals: Signals) -> LogStore {
        LogStore {
            reads: Reads::primary_only(db.clone()),
            db,
            signals,
            shutdown: CancellationToken::new(),
            tail_slots: Arc::new(Semaphore::new(DEFAULT_MAX_TAILS)),
            max_tails: DEFAULT_MAX_TAILS,
        }
    }

    /// Reads Search, Get and Stats through `reads` (a standby while it keeps up).
    pub fn with_reads(mut self, reads: Reads) -> LogStore {
        self.reads = reads;
        self
    }

    /// Live tails open now.
    pub fn tail_count(&self) -> usize {
        self.max_tails
            .saturating_sub(self.tail_slots.available_permits())
    }

    /// At most `max` live tails at once; more get `ResourceExhausted`.
    pub fn with_max_tails(mut self, max: usize) -> LogStore {
        self.max_tails = max;
        self.tail_slots = Arc::new(Semaphore::new(max));
        self
    }

    /// Ends live tails (with a resumable "shutting down" notice) when `token` is cancelled.
    pub fn with_shutdown(mut self, token: CancellationToken) -> LogStore {
        self.shutdown = token;
        self
    }

    /// One run. `NotFound` for an unknown id.
    pub async fn get(&self, id: i64) -> Result<ExecutionLog, DomainError> {
        let find = move |conn: &mut diesel::PgConnection| {
            logs::find(conn, id).optional().map_err(DomainError::from)
        };
        let db = self.reads.pick();
        let mut row = db.run(find).await?;
        if row.is_none() && self.reads.is_standby(db) {
            // Written a moment ago (the caller's own Retry, say) and not replayed yet.
            row = self.reads.primary().run(find).await?;
        }
        let row =
            row.ok_or_else(|| DomainError::NotFound(format!("execution log {id} not found")))?;
        ExecutionLog::try_from(row)
    }

    /// Matching runs, newest first, at most `limit` (0 = [`DEFAULT_SEARCH_LIMIT`]),
    /// after `cursor` when given. Bad input fails here, before anything streams; rows
    /// then arrive as the database yields them, and a query failure ends the stream with
    /// the error.
    pub fn search(
        &self,
        filter: LogFilter,
        limit: u32,
        cursor: &str,
    ) -> Result<ReceiverStream<Result<LogEntry, DomainError>>, DomainError> {
        let CheckedSearch {
            filter,
            limit,
            before,
        } = check_search(filter, limit, cursor)?;
        Ok(search::spawn(
            self.reads.pick().clone(),
            filter,
            limit,
            before,
        ))
    }

    /// Live runs matching `filter` from every replica, starting as `start` says. The
    /// start position is fixed when this returns: every matching row logged afterwards,
    /// on any replica, is sent.
    pub async fn tail(
        &self,
        filter: LogFilter,
        start: TailStart,
    ) -> Result<ReceiverStream<TailItem>, DomainError> {
        let filter = filter.validate()?;
        let slot = self.tail_slots.clone().try_acquire_owned().map_err(|_| {
            DomainError::ResourceExhausted(
                "too many live tails: the server's limit (--max-tail-subscribers) is reached; \
                 retry later"
                    .into(),
            )
        })?;
        let start = match start {
            TailStart::Backlog(n) if n > MAX_BACKLOG => {
                return Err(DomainError::invalid(
                    "backlog",
                    format!("{n} is over the maximum of {MAX_BACKLOG}"),
                ))
            }
            TailStart::Now | TailStart::Backlog(0) => tail::Start::Now,
            TailStart::Backlog(n) => tail::Start::Backlog(i64::from(n)),
            TailStart::After(cursor) => tail::Start::After(decode_cursor(&cursor, "cursor")?),
        };
        tail::open(
            self.db.clone(),
            &self.signals,
            self.shutdown.clone(),
            filter,
            start,
            slot,
        )
        .await
    }

    /// Counts, success rate and duration percentiles per handler (or one handler) over
    /// `[from, to)`; `to` defaults to now and `from` to 24 hours before `to`. Test runs
    /// are not counted.
    pub async fn stats(
        &self,
        handler_id: Option<i64>,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
    ) -> Result<Vec<HandlerStats>, DomainError> {
        let (from, to) = filter::stats_window(from, to)?;
        let (rows, held) = self
            .reads
            .pick()
            .run(move |conn| {
                let rows = logs::stats(conn, handler_id, from, to)?;
                let held = deliveries::held_counts(conn, handler_id)?;
                Ok::<_, DomainError>((rows, held))
            })
            .await?;
        let mut held: std::collections::BTreeMap<i64, deliveries::HeldCounts> =
            held.into_iter().map(|h| (h.handler_id, h)).collect();
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        let mut stats: Vec<HandlerStats> = rows
            .into_iter()
            .map(|row| {
                let total = count(row.total);
                let success = count(row.success);
                let held = held.remove(&row.handler_id);
                HandlerStats {
                    handler_id: row.handler_id,
                    handler_name: row.handler_name,
                    total,
                    success,
                    fail: count(row.fail),
                    success_rate: if total == 0 {
                        0.0
                    } else {
                        success as f64 / total as f64
                    },
                    p50_ms: row.p50,
                    p95_ms: row.p95,
                    p99_ms: row.p99,
                    paused: held.as_ref().map_or(0, |h| count(h.paused)),
                    queued: held.as_ref().map_or(0, |h| count(h.queued)),
                    blocked_keys: held.as_ref().map_or(0, |h| count(h.blocked_keys)),
                    throttled: held.as_ref().map_or(0, |h| count(h.throttled)),
                }
            })
            .collect();
        // Handlers holding deliveries back without runs in the window are listed too.
        stats.extend(held.into_values().map(|h| HandlerStats {
            handler_id: h.handler_id,
            handler_name: h.name,
            paused: count(h.paused),
            queued: count(h.queued),
            blocked_keys: count(h.blocked_keys),
            throttled: count(h.throttled),
            ..HandlerStats::default()
        }));
        stats.sort_by_key(|s| s.handler_id);
        Ok(stats)
    }

    /// Runs the delivery of a failed AFTER run again now and returns the delivery id.
    /// The old row stays as it is; the new attempt gets its own row. A delivery that
    /// succeeded (that run or a later one) is sent again only when `resend` is set.
    pub async fn retry(&self, log_id: i64, resend: bool) -> Result<i64, DomainError> {
        let delivery_id = self
            .db
            .run(move |conn| schedule_retry(conn, log_id, resend))
            .await?;
        self.signals.announce_work();
        Ok(delivery_id)
    }

    /// Gives up the delivery of a failed AFTER run for good, on behalf of `who`: the
    /// delivery is removed, a failed run saying so is logged, and the events queued
    /// behind it in its ordering slot may start. Returns (delivery id, log id).
    pub async fn skip(&self, log_id: i64, who: &str) -> Result<(i64, i64), DomainError> {
        let reason = format!(
            "skipped by {who}: the delivery was given up; later deliveries of its ordering \
             key proceed"
        );
        let skipped = self
            .db
            .run(move |conn| skip_delivery(conn, log_id, &reason))
            .await?;
        self.signals.announce_work();
        self.signals.announce_logs(skipped.log_id);
        Ok((skipped.delivery_id, skipped.log_id))
    }

    /// Makes every failed, undelivered delivery of an enabled handler for events since
    /// `since` (all when `None`) due now; returns how many.
    pub async fn retry_failed(
        &self,
        handler_id: i64,
        since: Option<DateTime<Utc>>,
    ) -> Result<u64, DomainError> {
        // No `since`: every event, from the earliest time PostgreSQL holds (an earlier
        // bound fails the query).
        let since = since.map_or_else(filter::earliest_storable, filter::storable);
        let scheduled = self
            .db
            .run(move |conn| {
                conn.transaction::<_, DomainError, _>(|conn| {
                    require_enabled(conn, handler_id)?;
                    Ok(deliveries::retry_failed(conn, handler_id, since)?)
                })
            })
            .await?;
        if scheduled > 0 {
            self.signals.announce_work();
        }
        Ok(scheduled as u64)
    }

    /// Deletes runs that started before `cutoff`; returns how many. Whole daily
    /// partitions older than the cutoff are dropped, the rest is deleted in batches.
    /// Events and their idempotency keys stay (see [`LogStore::expire_events`]).
    pub async fn purge_older_than(&self, cutoff: DateTime<Utc>) -> Result<u64, DomainError> {
        // No row is older than PostgreSQL's earliest time, which an earlier cutoff
        // would fail the query with.
        let cutoff = filter::storable(cutoff);
        let deleted = self
            .db
            .run(move |conn| purge::older_than(conn, cutoff))
            .await?;
        Ok(deleted)
    }

    /// Event retention: deletes events created before `cutoff` that no delivery needs;
    /// their idempotency keys are forgotten with them. Returns how many.
    pub async fn expire_events(&self, cutoff: DateTime<Utc>) -> Result<u64, DomainError> {
        let deleted = self
            .db
            .run(move |conn| purge::events_older_than(conn, cutoff))
            .await?;
        Ok(deleted)
    }
}

/// A Search request checked and in query form: what [`LogStore::search`] runs.
#[derive(Debug, Clone)]
pub struct CheckedSearch {
    /// The filter in stored form.
    pub filter: logs::LogFilter,
    /// Rows to send, 1 to [`MAX_SEARCH_LIMIT`].
    pub limit: u32,
    /// Only rows older than this position (the request's cursor), if given.
    pub before: Option<Position>,
}

/// Checks a Search request (filter, `limit` with 0 meaning [`DEFAULT_SEARCH_LIMIT`],
/// cursor) without touching the database; messages name the offending field. Pure, so
/// the fuzz target `log_filter` drives it.
pub fn check_search(
    filter: LogFilter,
    limit: u32,
    cursor: &str,
) -> Result<CheckedSearch, DomainError> {
    let filter = filter.validate()?;
    let limit = match limit {
        0 => DEFAULT_SEARCH_LIMIT,
        1..=MAX_SEARCH_LIMIT => limit,
        _ => {
            let range = format!("1 to {MAX_SEARCH_LIMIT} (0 = {DEFAULT_SEARCH_LIMIT})");
            let message = format!("{limit} is out of range: {range}");
            return Err(DomainError::invalid("limit", message));
        }
    };
    let before = optional_cursor(cursor, "cursor")?;
    Ok(CheckedSearch {
        filter,
        limit,
        before,
    })
}

/// Checks that run `log_id` can be retried and schedules its delivery now.
fn schedule_retry(
    conn: &mut diesel::PgConnection,
    log_id: i64,
    resend: bool,
) -> Result<i64, DomainError> {
    let row = logs::find(conn, log_id)
        .optional()?
        .ok_or_else(|| DomainError::NotFound(format!("execution log {log_id} not found")))?;
    if row.test {
        return Err(DomainError::FailedPrecondition(format!(
            "execution log {log_id} is a test run (HandlerService.Test): it has no \
             delivery to retry; run the test again instead"
        )));
    }
    if parse_stored(Phase::parse, &row.phase, "execution_logs.phase")? == Phase::Before {
        return Err(DomainError::FailedPrecondition(format!(
            "execution log {log_id} is a BEFORE run: BEFORE handlers run inside Emit \
             and cannot be retried"
        )));
    }
    let succeeded =
        parse_stored(RunStatus::parse, &row.status, "execution_logs.status")? == RunStatus::Success;
    if succeeded && !resend {
        return Err(DomainError::FailedPrecondition(format!(
            "execution log {log_id} succeeded: only failed runs can be retried \
             (set resend to send the event again)"
        )));
    }
    let (event_id, handler_id) = (row.event_id, row.handler_id);
    conn.transaction::<_, DomainError, _>(|conn| {
        if !logs::event_exists(conn, event_id)? {
            return Err(DomainError::NotFound(format!(
                "event {event_id} of execution log {log_id} no longer exists (removed by retention)"
            )));
        }
        let (priority, _) = require_enabled(conn, handler_id)?;
        if !resend {
            if let Some(at) = logs::delivered_at(conn, event_id, handler_id)? {
                return Err(DomainError::FailedPrecondition(format!(
                    "event {event_id} was delivered at {} to handler {handler_id} \
                     (execution log {log_id} is an earlier attempt); set resend to send it again",
                    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                )));
            }
        }
        Ok(deliveries::schedule_now(
            conn, event_id, handler_id, priority,
        )?)
    })
}

fn skip_delivery(
    conn: &mut diesel::PgConnection,
    log_id: i64,
    reason: &str,
) -> Result<deliveries::EndedDelivery, DomainError> {
    let row = logs::find(conn, log_id)
        .optional()?
        .ok_or_else(|| DomainError::NotFound(format!("execution log {log_id} not found")))?;
    let refuse = |why: &str| {
        Err(DomainError::FailedPrecondition(format!(
            "execution log {log_id} {why}"
        )))
    };
    if row.test {
        return refuse("is a test run (HandlerService.Test): it has no delivery to skip");
    }
    if parse_stored(Phase::parse, &row.phase, "execution_logs.phase")? == Phase::Before {
        return refuse("is a BEFORE run: BEFORE handlers run inside Emit, nothing waits");
    }
    if parse_stored(RunStatus::parse, &row.status, "execution_logs.status")? == RunStatus::Success {
        return refuse("succeeded: there is nothing to skip");
    }
    let (event_id, handler_id) = (row.event_id, row.handler_id);
    conn.transaction::<_, DomainError, _>(|conn| {
        let key = events::ordering_key_of_event(conn, event_id)?;
        events::lock_ordering_keys(conn, key.as_deref().as_slice())?;
        let Some(skipped) = deliveries::skip(conn, event_id, handler_id, reason)? else {
            return if deliveries::is_running(conn, event_id, handler_id)? {
                refuse("has a delivery running now: wait for the attempt to end")
            } else {
                refuse(
                    "has no delivery left to skip: it has succeeded since, or was skipped or ended",
                )
            };
        };
        deliveries::promote_queued(conn, skipped.ordering_slot.as_deref().as_slice())?;
        Ok(skipped)
    })
}

/// The priority and status of a handler that must exist and be enabled for a retry.
fn require_enabled(
    conn: &mut diesel::PgConnection,
    handler_id: i64,
) -> Result<(i32, HandlerStatus), DomainError> {
    let (priority, status) = logs::handler_priority_and_status(conn, handler_id)?
        .ok_or_else(|| DomainError::NotFound(format!("handler {handler_id} no longer exists")))?;
    let status = parse_stored(HandlerStatus::parse, &status, "handlers.status")?;
    if status != HandlerStatus::Enabled {
        return Err(DomainError::FailedPrecondition(format!(
            "handler {handler_id} is {status}: enable it before retrying"
        )));
    }
    Ok((priority, status))
}

/// Sends the last item of a stream; the reader may already have gone.
async fn send_final<T>(sender: &mpsc::Sender<T>, item: T) {
    if sender.send(item).await.is_err() {
        tracing::debug!("log stream reader went away before the final item");
    }
}
