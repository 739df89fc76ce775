//! The recorder: the one writer of execution-log rows and delivery outcomes.
//!
//! Runs are sent over a bounded channel (a full channel slows producers down; nothing is
//! dropped) and written in batches, all or nothing per batch: log rows, delivery
//! updates, handler health (a batch of successes is a single statement). After the
//! commit the new rows are announced to the tails of every replica. A failed batch is
//! retried; if the database rejects the batch itself, rows are written one by one so a
//! single bad row cannot hold the others back, and a row refused on its own is repaired
//! and written again: no run's row is ever dropped. The task ends when every sender is gone,
//! after writing what was queued, so runs in flight at shutdown are kept.
//!
//! Keyed deliveries that finished free their ordering slots: once the batch that
//! finished them is committed, the slots are sent to the promoter (`promoter`), which
//! promotes the next queued event of each while the recorder writes the next batch.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::Connection;
use tokio::sync::mpsc;

use super::LOGGED_RESPONSE_BYTES;
use crate::config::Config;
use crate::db::queries::{deliveries, logs};
use crate::db::{Db, DbError};
use crate::domain::{event_data, text, HandlerKind, Phase, RunStatus};
use crate::listener::Signals;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

const CHANNEL_CAPACITY: usize = 32 * 1024;
const MAX_BATCH: usize = 2000;
/// Longest text field kept when a refused row is repaired (bytes).
const MAX_STORED_TEXT: usize = 64 * 1024;
/// How long a small batch waits for more runs before it is written.
const LINGER: Duration = Duration::from_millis(3);

/// One execution-log row to write.
#[derive(Debug, Clone)]
pub struct LogRecord {
    /// Run start.
    pub created_at: DateTime<Utc>,
    /// Phase.
    pub phase: Phase,
    /// Event name.
    pub event: String,
    /// Outcome.
    pub status: RunStatus,
    /// Handler id.
    pub handler_id: i64,
    /// Handler name.
    pub handler_name: String,
    /// Handler kind.
    pub kind: HandlerKind,
    /// Error text, empty on success.
    pub error: String,
    /// Duration in ms.
    pub duration_ms: i32,
    /// Attempt number.
    pub attempt: i32,
    /// Data sent (JSON text).
    pub data_sent: String,
    /// Data returned (BEFORE), JSON text.
    pub data_returned: Option<String>,
    /// Response or output, truncated.
    pub response: String,
    /// HTTP status.
    pub http_status: Option<i32>,
    /// Exit code.
    pub exit_code: Option<i32>,
    /// Event id.
    pub event_id: i64,
    /// Delivery id (AFTER).
    pub delivery_id: Option<i64>,
    /// Who emitted the event, if known.
    pub emitted_by: Option<String>,
    /// A run of HandlerService.Test (no event stored, no delivery).
    pub test: bool,
}

/// What became of an AFTER delivery after this attempt.
#[derive(Debug, Clone)]
pub enum DeliveryOutcome {
    /// Delivered: the row is deleted.
    Delivered,
    /// Failed; retry at the given time, or never (dead) when `None`.
    Failed {
        /// Next attempt time.
        retry_at: Option<DateTime<Utc>>,
    },
    /// Failed and the handler must be disabled (410 Gone).
    Gone,
}

/// A run to record.
#[derive(Debug, Clone)]
pub struct Record {
    /// The log row.
    pub log: LogRecord,
    /// The delivery settlement (AFTER only).
    pub delivery: Option<DeliveryOutcome>,
    /// The delivery's ordering slot, for a keyed event: once it finishes, the next
    /// event queued in the slot may start.
    pub ordering_slot: Option<String>,
}

/// Sending side of the recorder.
#[derive(Clone)]
pub struct Recorder {
    sender: mpsc::Sender<Record>,
}

impl Recorder {
    /// Queues a record; waits while the queue is full. Fails only after shutdown.
    pub async fn record(&self, record: Record) {
        if self.sender.send(record).await.is_err() {
            tracing::error!("recorder stopped; a run could not be recorded");
        }
    }
}

/// The ordering slots freed by each committed batch, for the promoter. Closed once the
/// recorder has written everything.
pub type FreedSlots = mpsc::UnboundedReceiver<Vec<String>>;

/// Starts the recorder task. It ends once every `Recorder` handle is gone and the
/// queue is drained, so runs still in flight at shutdown are recorded.
pub fn spawn(
    db: Db,
    config: Arc<Config>,
    signals: Signals,
    metrics: Arc<Metrics>,
    shutdown: &Shutdown,
) -> (Recorder, FreedSlots) {
    let (sender, receiver) = mpsc::channel(CHANNEL_CAPACITY);
    let (freed, freed_receiver) = mpsc::unbounded_channel();
    shutdown.spawn(write_loop(db, config, signals, metrics, receiver, freed));
    (Recorder { sender }, freed_receiver)
}

async fn write_loop(
    db: Db,
    config: Arc<Config>,
    signals: Signals,
    metrics: Arc<Metrics>,
    mut receiver: mpsc::Receiver<Record>,
    freed: mpsc::UnboundedSender<Vec<String>>,
) {
    let disable_after_ms = config.disable_after.as_millis() as i64;
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while receiver.recv_many(&mut batch, MAX_BATCH).await > 0 {
        if batch.len() < MAX_BATCH / 4 {
            // Runs arrive one by one: a moment's wait gathers those that follow into
            // the same statement, far cheaper per row for the database than many small
            // ones (each opens the log partition and its indexes, and commits).
            tokio::time::sleep(LINGER).await;
            while batch.len() < MAX_BATCH {
                match receiver.try_recv() {
                    Ok(record) => batch.push(record),
                    Err(_) => break,
                }
            }
        }
        let records = std::mem::take(&mut batch);
        for record in &records {
            count_run(&metrics, record);
        }
        let slots = freed_slots(&records);
        if let Some(max_id) = write_with_retry(&db, &metrics, records, disable_after_ms).await {
            signals.announce_logs(max_id);
        }
        // Written (or, for a row refused even stripped, given up): either way its
        // delivery no longer holds the slot.
        if !slots.is_empty() && freed.send(slots).is_err() {
            tracing::error!("promoter stopped; the sweep will promote queued keyed deliveries");
        }
    }
}

/// The ordering slots of the keyed deliveries these records finish (delivered, dead or
/// gone: not those with a retry scheduled, which keep their slot).
fn freed_slots(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .filter(|record| {
            matches!(
                record.delivery,
                Some(DeliveryOutcome::Delivered)
                    | Some(DeliveryOutcome::Gone)
                    | Some(DeliveryOutcome::Failed { retry_at: None })
            )
        })
        .filter_map(|record| record.ordering_slot.clone())
        .collect()
}

/// Counts a run in the metrics, by its outcome.
fn count_run(metrics: &Metrics, record: &Record) {
    let log = &record.log;
    let outcome = match (&record.delivery, log.status) {
        (_, RunStatus::Success) => "success",
        (Some(DeliveryOutcome::Failed { retry_at: Some(_) }), _) => "retry",
        (Some(DeliveryOutcome::Failed { retry_at: None }), _) => "dead",
        (Some(DeliveryOutcome::Gone), _) => "gone",
        _ => "fail",
    };
    let duration = Duration::from_millis(log.duration_ms.max(0) as u64);
    metrics.handler_run(log.handler_id, log.phase.as_str(), outcome, duration);
}

/// Writes the records; returns the highest log id written.
async fn write_with_retry(
    db: &Db,
    metrics: &Metrics,
    records: Vec<Record>,
    disable_after_ms: i64,
) -> Option<i64> {
    let records = Arc::new(records);
    let mut delay = Duration::from_millis(50);
    for _ in 0..5 {
        let batch = records.clone();
        match db
            .run(move |conn| write_batch(conn, &batch, disable_after_ms))
            .await
        {
            Ok(written) => return written.counted(metrics),
            Err(error) if error.is_rejection() => {
                tracing::warn!(%error, rows = records.len(), "log batch rejected; writing rows one by one");
                break;
            }
            Err(error) => {
                tracing::warn!(%error, "log batch not written; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
    let mut written = None;
    for record in records.iter().cloned() {
        written = written.max(write_one(db, metrics, record, disable_after_ms).await);
    }
    written
}

/// Writes one record, retrying while the database is unreachable. A row the database
/// refuses is repaired ([`repair`]) and written again; if it is still refused, every
/// field that came from outside is replaced ([`strip`]): the run's row is never lost.
async fn write_one(
    db: &Db,
    metrics: &Metrics,
    mut record: Record,
    disable_after_ms: i64,
) -> Option<i64> {
    let mut delay = Duration::from_millis(100);
    let mut refusals = 0;
    loop {
        let row = Arc::new(vec![record.clone()]);
        match db
            .run(move |conn| write_batch(conn, &row, disable_after_ms))
            .await
        {
            Ok(written) => return written.counted(metrics),
            Err(error) if error.is_rejection() => {
                refusals += 1;
                let repaired = match refusals {
                    1 => repair(&mut record.log),
                    2 => strip(&mut record.log, &crate::telemetry::error_chain(&error)),
                    _ => {
                        tracing::error!(%error, event.id = record.log.event_id, handler.id = record.log.handler_id,
                            "execution-log row refused even with every outside field replaced");
                        return None;
                    }
                };
                tracing::warn!(%error, event.id = record.log.event_id, handler.id = record.log.handler_id,
                    repaired = ?repaired, "execution-log row refused by the database; writing it repaired");
            }
            Err(error) => {
                tracing::warn!(%error, "database unavailable; retrying the log row");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Writes one run (no delivery) now, outside the batches, and returns its log id: for
/// callers that answer with it (HandlerService.Test). A row the database refuses is
/// repaired as [`write_one`] does; when the database cannot be reached, the row is
/// queued on `recorder` instead (written as soon as it can be) and `None` is returned.
pub async fn write_now(
    db: &Db,
    recorder: &Recorder,
    signals: &Signals,
    log: LogRecord,
) -> Option<i64> {
    let mut record = Record {
        log,
        delivery: None,
        ordering_slot: None,
    };
    let mut refusals = 0;
    loop {
        let row = Arc::new(vec![record.clone()]);
        // No delivery outcome: the handler-health settings are not used.
        match db.run(move |conn| write_batch(conn, &row, 0)).await {
            Ok(Written { max_id: id, .. }) => {
                // No delivery: nothing was disabled or promoted.
                if let Some(id) = id {
                    signals.announce_logs(id);
                }
                return id;
            }
            Err(error) if error.is_rejection() => {
                let repaired = match refusals {
                    0 => repair(&mut record.log),
                    1 => strip(&mut record.log, &crate::telemetry::error_chain(&error)),
                    _ => {
                        tracing::error!(%error, handler.id = record.log.handler_id,
                            "test-run log row refused even with every outside field replaced");
                        return None;
                    }
                };
                tracing::warn!(%error, handler.id = record.log.handler_id, repaired = ?repaired,
                    "test-run log row refused by the database; writing it repaired");
                refusals += 1;
            }
            Err(error) => {
                tracing::warn!(%error, "database unavailable; the test-run log row is queued");
                recorder.record(record).await;
                return None;
            }
        }
    }
}

/// Makes a log row storable whatever it holds: text fields get NUL written as `\u0000`
/// and are capped; data that is not acceptable event data (`event_data`) is replaced
/// by a marker object saying why, with the original text as a string. Returns the
/// fields changed.
pub fn repair(log: &mut LogRecord) -> Vec<&'static str> {
    let mut repaired = Vec::new();
    for (field, value) in [
        ("event", &mut log.event),
        ("handler_name", &mut log.handler_name),
        ("error", &mut log.error),
        ("response", &mut log.response),
    ] {
        if let Cow::Owned(fixed) = text::capped(value, MAX_STORED_TEXT) {
            *value = fixed;
            repaired.push(field);
        }
    }
    if let Some(name) = &mut log.emitted_by {
        if let Cow::Owned(fixed) = text::capped(name, MAX_STORED_TEXT) {
            *name = fixed;
            repaired.push("emitted_by");
        }
    }
    if let Err(error) = event_data::check_object(&log.data_sent, usize::MAX) {
        log.data_sent = marker("data_sent", &error.to_string(), &log.data_sent);
        repaired.push("data_sent");
    }
    if let Some(data) = &mut log.data_returned {
        if let Err(error) = event_data::check_object(data, usize::MAX) {
            *data = marker("data_returned", &error.to_string(), data);
            repaired.push("data_returned");
        }
    }
    repaired
}

/// Replaces every field of a log row that came from outside (data, response, error
/// text, names) with plain markers, keeping the run's identity, outcome and timing.
pub fn strip(log: &mut LogRecord, why: &str) -> Vec<&'static str> {
    let why = text::capped(why, LOGGED_RESPONSE_BYTES).into_owned();
    log.data_sent = marker("data_sent", &why, "");
    log.data_returned = log
        .data_returned
        .as_ref()
        .map(|_| marker("data_returned", &why, ""));
    log.response = String::new();
    log.error = format!(
        "[log row repaired: {why}] {}",
        text::capped(&log.error, 1000)
    );
    log.handler_name = text::capped(&log.handler_name, 200).into_owned();
    log.event = text::capped(&log.event, 200).into_owned();
    log.emitted_by = log
        .emitted_by
        .as_deref()
        .map(|name| text::capped(name, 200).into_owned());
    vec![
        "data_sent",
        "data_returned",
        "response",
        "error",
        "handler_name",
        "event",
        "emitted_by",
    ]
}

/// The object stored in place of data the database cannot hold.
fn marker(field: &str, reason: &str, original: &str) -> String {
    serde_json::json!({
        "provisiond_repaired": {
            "field": field,
            "reason": text::storable(reason),
            "original": text::capped(original, LOGGED_RESPONSE_BYTES),
        }
    })
    .to_string()
}

/// What one written batch did.
struct Written {
    /// Highest log id written.
    max_id: Option<i64>,
    /// Handlers disabled automatically by these runs.
    disabled: u64,
}

impl Written {
    /// Once the batch is committed: counts the handlers disabled and returns the highest
    /// log id.
    fn counted(self, metrics: &Metrics) -> Option<i64> {
        metrics.handlers_auto_disabled.inc_by(self.disabled);
        self.max_id
    }
}

fn write_batch(
    conn: &mut diesel::PgConnection,
    records: &[Record],
    disable_after_ms: i64,
) -> Result<Written, DbError> {
    let mut columns = logs::NewLogColumns::default();
    let mut delivered = Vec::new();
    let (mut failed_ids, mut failed_at, mut failed_errors) = (Vec::new(), Vec::new(), Vec::new());
    let mut succeeded_handlers = Vec::new();
    let mut failed_handlers = Vec::new();
    let mut gone = Vec::new();
    for Record { log, delivery, .. } in records {
        if let (Some(outcome), Some(id)) = (delivery, log.delivery_id) {
            match outcome {
                DeliveryOutcome::Delivered => {
                    delivered.push(id);
                    succeeded_handlers.push(log.handler_id);
                }
                DeliveryOutcome::Failed { retry_at } => {
                    failed_ids.push(id);
                    failed_at.push(*retry_at);
                    failed_errors.push(log.error.as_str());
                    failed_handlers.push(log.handler_id);
                }
                DeliveryOutcome::Gone => {
                    failed_ids.push(id);
                    failed_at.push(None);
                    failed_errors.push(log.error.as_str());
                    gone.push(log.handler_id);
                }
            }
        }
        columns.created_at.push(log.created_at);
        columns.phase.push(log.phase.as_str());
        columns.event.push(&log.event);
        columns.status.push(log.status.as_str());
        columns.handler_id.push(log.handler_id);
        columns.handler_name.push(&log.handler_name);
        columns.kind.push(log.kind.as_str());
        columns.error.push(&log.error);
        columns.duration_ms.push(log.duration_ms);
        columns.attempt.push(log.attempt);
        columns.data_sent.push(&log.data_sent);
        columns.data_returned.push(log.data_returned.as_deref());
        columns.response.push(&log.response);
        columns.http_status.push(log.http_status);
        columns.exit_code.push(log.exit_code);
        columns.event_id.push(log.event_id);
        columns.delivery_id.push(log.delivery_id);
        columns.emitted_by.push(log.emitted_by.as_deref());
        columns.test.push(log.test);
    }
    succeeded_handlers.sort_unstable();
    succeeded_handlers.dedup();
    if failed_ids.is_empty() {
        // Only successes (the common case): one statement, committed on its own.
        let max_id = logs::insert_batch(conn, &columns, &delivered, &succeeded_handlers)?;
        return Ok(Written {
            max_id,
            disabled: 0,
        });
    }
    conn.transaction::<_, DbError, _>(|conn| {
        let max_id = logs::insert_batch(conn, &columns, &delivered, &succeeded_handlers)?;
        deliveries::record_failures(conn, &failed_ids, &failed_at, &failed_errors)?;
        let mut disabled = 0;
        if !failed_handlers.is_empty() {
            for id in deliveries::record_handler_failures(conn, &failed_handlers, disable_after_ms)?
            {
                tracing::warn!(handler.id = id, "handler disabled: failing for too long");
                disabled += 1;
            }
        }
        for id in gone {
            disabled += deliveries::disable_handler(
                conn,
                id,
                "disabled automatically: the endpoint answered 410 Gone",
            )? as u64;
            tracing::warn!(
                handler.id = id,
                "handler disabled: its endpoint answered 410 Gone"
            );
        }
        Ok(Written { max_id, disabled })
    })
}
