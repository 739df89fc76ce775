//! Event ingestion: validation of emitted events and durable storage of AFTER events
//! with their deliveries.
//!
//! Concurrent `emit` calls are group-committed: they queue for the committers
//! (`committer`), which store everything queued so far in one transaction and answer
//! each caller only after the commit. Throughput grows with concurrency without giving
//! up durability.
//!
//! Deliveries of fresh events are leased to this replica's worker in the statement that
//! stores them, as far as it has free run slots and nothing older waits in the table,
//! and handed to it in memory after the commit: no claim round trip, no second row
//! version. The rest are announced and claimed from the table, oldest first.
//!
//! Data is checked against its event type's schema (`schemas`) when the event is
//! validated; the statement that stores it checks that the schema has not changed since
//! (see `schemas` for why that is the cache's invalidation), and a stale event is
//! validated again before it is stored.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};

use super::schemas::{Checked, EventSchemas};
use super::trace_context::TraceContext;
use super::{event_data, text, DomainError};
use crate::auth::Caller;
use crate::config::Config;
use crate::db::queries::deliveries::ClaimedDelivery;
use crate::db::queries::events;
use crate::db::queries::events::LeaseAtInsert;
use crate::db::{Db, DbError};
use crate::dispatch::worker::Worker;
use crate::listener::Signals;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

mod committer;

/// Longest idempotency key, and longest ordering key.
pub const MAX_KEY_CHARS: usize = 200;
/// Largest EmitBatch.
pub const MAX_BATCH_EVENTS: usize = 10_000;
/// Most events stored in one group commit.
const MAX_GROUP_COMMIT: usize = 2_000;
/// Times a batch is validated again because schemas changed under it before giving up.
const MAX_SCHEMA_ROUNDS: usize = 3;

/// A validated event.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// Event name, known to the catalogue.
    pub event: String,
    /// JSON object text, as emitted.
    pub data: String,
    /// Idempotency key, if any.
    pub idempotency_key: Option<String>,
    /// Ordering key, if any.
    pub ordering_key: Option<String>,
    /// The name of the caller who emitted it.
    pub emitted_by: Option<String>,
    /// The emitter's trace, continued by the handler runs.
    pub trace: Option<TraceContext>,
    /// The event type's schema version the data was validated against.
    pub schema_version: i64,
    /// Where the event was in the request, prefixing messages about it (`events[3].`).
    pub field: String,
}

/// An accepted AFTER event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// Event id (the earlier event's for a duplicate).
    pub event_id: i64,
    /// The idempotency key was already used.
    pub duplicate: bool,
    /// Deliveries created.
    pub deliveries: u32,
}

struct Pending {
    event: NewEvent,
    reply: oneshot::Sender<Result<Accepted, DomainError>>,
}

/// Validates and stores events.
#[derive(Clone)]
pub struct Ingest {
    max_payload: usize,
    queue: mpsc::Sender<Pending>,
    storage: Storage,
}

/// Stores batches and hands their leased deliveries to the worker.
#[derive(Clone)]
struct Storage {
    db: Db,
    worker: Worker,
    signals: Signals,
    /// The event types known to this replica with their compiled schemas.
    schemas: EventSchemas,
    metrics: Arc<Metrics>,
}

impl Ingest {
    /// Starts the committers and returns the ingest front.
    pub fn new(
        db: Db,
        config: Arc<Config>,
        worker: Worker,
        signals: Signals,
        schemas: EventSchemas,
        metrics: Arc<Metrics>,
        shutdown: &Shutdown,
    ) -> Ingest {
        let (queue, receiver) = mpsc::channel(64 * 1024);
        let storage = Storage {
            db,
            worker,
            signals,
            schemas,
            metrics,
        };
        committer::spawn(storage.clone(), receiver, shutdown);
        Ingest {
            max_payload: config.max_payload_bytes,
            queue,
            storage,
        }
    }

    /// Checks an event emitted by `caller`; `field` prefixes messages (e.g. `events[3].`).
    pub async fn validate(
        &self,
        caller: &Caller,
        field: &str,
        event: String,
        data: String,
        key: String,
        ordering_key: String,
    ) -> Result<NewEvent, DomainError> {
        if event.is_empty() {
            return Err(DomainError::invalid(&format!("{field}event"), "required"));
        }
        text::require_storable(&format!("{field}event"), &event)?;
        event_data::check_object(&data, self.max_payload)
            .map_err(|e| DomainError::invalid(&format!("{field}data_json"), e))?;
        for (name, value) in [("idempotency_key", &key), ("ordering_key", &ordering_key)] {
            text::require_storable(&format!("{field}{name}"), value)?;
            if value.chars().count() > MAX_KEY_CHARS {
                return Err(DomainError::invalid(
                    &format!("{field}{name}"),
                    format!("must be at most {MAX_KEY_CHARS} characters"),
                ));
            }
        }
        // Event types are never deleted, so the cache of known ones (with their
        // schemas) only grows; an unknown name is looked up (another replica may have
        // added it).
        let schema_version = match self.storage.schemas.check(&event, &data).await? {
            Checked::Fits { version } => version,
            Checked::UnknownEvent => {
                return Err(DomainError::invalid(
                    &format!("{field}event"),
                    format!("unknown event {event:?} (see ListEventTypes)"),
                ))
            }
            Checked::Violates(problems) => {
                return Err(DomainError::invalid(&format!("{field}data_json"), problems))
            }
        };
        Ok(NewEvent {
            event,
            data,
            idempotency_key: (!key.is_empty()).then_some(key),
            ordering_key: (!ordering_key.is_empty()).then_some(ordering_key),
            emitted_by: Some(caller.name.clone()),
            trace: None,
            schema_version,
            field: field.to_owned(),
        })
    }

    /// Stores one AFTER event (group-committed); returns after the commit.
    pub async fn emit(&self, event: NewEvent) -> Result<Accepted, DomainError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Pending { event, reply })
            .await
            .map_err(|_| DomainError::Unavailable("the server is shutting down".into()))?;
        answer
            .await
            .map_err(|_| DomainError::Unavailable("the server is shutting down".into()))?
    }

    /// Stores a batch in one transaction: all or nothing (an idempotency key reused
    /// with different content rejects the whole batch).
    pub async fn emit_batch(&self, batch: Vec<NewEvent>) -> Result<Vec<Accepted>, DomainError> {
        self.storage
            .store(batch, Atomicity::AllOrNothing)
            .await?
            .into_iter()
            .collect()
    }
}

impl Storage {
    /// Stores a batch, starts the deliveries leased to this replica and announces the
    /// others. One answer per event, in input order.
    ///
    /// When schemas changed after some events were validated, the statement stores
    /// nothing; those events are validated again against the new schemas and the
    /// statement runs again. An event the new schema refuses is refused alone (each
    /// event standing alone) or refuses the whole batch (all or nothing).
    async fn store(
        &self,
        batch: Vec<NewEvent>,
        atomicity: Atomicity,
    ) -> Result<Vec<Result<Accepted, DomainError>>, DomainError> {
        let events = batch.len();
        let slots = self.worker.reserve(events);
        let leased_events = slots.as_ref().map_or(0, |s| s.num_permits());
        let owner = self.worker.owner();
        let lease_ms = self.worker.lease_ms();
        let mut answers: Vec<Option<Result<Accepted, DomainError>>> =
            std::iter::repeat_with(|| None).take(batch.len()).collect();
        // The events still to store, with their positions in `batch`.
        let mut positions: Vec<usize> = (0..batch.len()).collect();
        let mut batch = batch;
        for _round in 0..MAX_SCHEMA_ROUNDS {
            let owner = owner.clone();
            let (events, stored) = self
                .db
                .run(move |conn| {
                    let lease = LeaseAtInsert {
                        events: leased_events as i32,
                        owner: &owner,
                        lease_ms,
                    };
                    let stored = store(conn, &batch, lease, atomicity)?;
                    Ok::<_, DomainError>((batch, stored))
                })
                .await?;
            batch = events;
            if !stored.stale.is_empty() {
                let refused = self.revalidate(&mut batch, &stored.stale).await?;
                if atomicity == Atomicity::AllOrNothing {
                    if let Some((_, error)) = refused.into_iter().next() {
                        return Err(error);
                    }
                    continue;
                }
                // Refused events are answered now and leave the batch.
                let mut refused = refused.into_iter().peekable();
                let mut kept = Vec::with_capacity(batch.len());
                for (index, event) in batch.into_iter().enumerate() {
                    match refused.next_if(|(i, _)| *i == index) {
                        Some((_, error)) => answers[positions[index]] = Some(Err(error)),
                        None => kept.push((positions[index], event)),
                    }
                }
                (positions, batch) = kept.into_iter().unzip();
                if batch.is_empty() {
                    break;
                }
                continue;
            }
            let accepted = self.start(stored, batch.len(), slots);
            for (position, answer) in positions.iter().zip(accepted) {
                answers[*position] = Some(answer);
            }
            return Ok(answers
                .into_iter()
                .map(|answer| answer.unwrap_or_else(|| Err(unanswered())))
                .collect());
        }
        if batch.is_empty() {
            return Ok(answers
                .into_iter()
                .map(|answer| answer.unwrap_or_else(|| Err(unanswered())))
                .collect());
        }
        Err(DomainError::Unavailable(
            "event type schemas kept changing while the events were being stored".into(),
        ))
    }

    /// After a commit: starts the deliveries leased to this replica (one run slot of
    /// `slots` each) and announces the others. Returns the events' answers.
    fn start(
        &self,
        stored: Stored,
        events: usize,
        mut slots: Option<OwnedSemaphorePermit>,
    ) -> Vec<Result<Accepted, DomainError>> {
        self.metrics.group_commit_events.observe(events as f64);
        for chain in stored.leased {
            // One slot was reserved per leased event; `leased` never has more chains.
            if let Some(slot) = slots.as_mut().and_then(|s| s.split(1)) {
                self.worker.start(chain, slot);
            }
        }
        if stored.unleased_deliveries {
            self.worker.note_backlog();
            self.signals.announce_work();
        }
        stored.accepted
    }

    /// Stores a group of independent callers' events on this thread, which may block
    /// (a committer's), and answers them. Events validated against a schema that has
    /// changed since go through [`Storage::store`], which validates them again.
    fn commit_group(&self, group: Vec<Pending>) {
        let (events, replies): (Vec<NewEvent>, Vec<_>) =
            group.into_iter().map(|p| (p.event, p.reply)).unzip();
        let slots = self.worker.reserve(events.len());
        let owner = self.worker.owner();
        let lease = LeaseAtInsert {
            events: slots.as_ref().map_or(0, |s| s.num_permits()) as i32,
            owner: &owner,
            lease_ms: self.worker.lease_ms(),
        };
        match self
            .db
            .run_blocking(|conn| store(conn, &events, lease, Atomicity::EachEvent))
        {
            Ok(stored) if stored.stale.is_empty() => {
                let answers = self.start(stored, events.len(), slots);
                answer(replies, Ok(answers));
            }
            Ok(_) => {
                drop(slots);
                let storage = self.clone();
                tokio::spawn(async move {
                    let answers = storage.store(events, Atomicity::EachEvent).await;
                    answer(replies, answers);
                });
            }
            Err(error) => answer(replies, Err(error)),
        }
    }

    /// Validates the events at `stale` (positions in `batch`) again against their event
    /// types' current schemas, read from the database, and records the versions. Returns
    /// the refused ones, by position, with their errors.
    async fn revalidate(
        &self,
        batch: &mut [NewEvent],
        stale: &[usize],
    ) -> Result<Vec<(usize, DomainError)>, DomainError> {
        let mut reloaded: HashMap<String, Arc<super::schemas::EventSchema>> = HashMap::new();
        let mut refused = Vec::new();
        for &index in stale {
            let Some(event) = batch.get_mut(index) else {
                continue;
            };
            let schema = match reloaded.get(&event.event) {
                Some(schema) => schema.clone(),
                None => {
                    let schema = self.schemas.reload(&event.event).await?.ok_or_else(|| {
                        DomainError::Internal(
                            format!("event type {:?} vanished", event.event).into(),
                        )
                    })?;
                    reloaded.insert(event.event.clone(), schema.clone());
                    schema
                }
            };
            event.schema_version = schema.version;
            if let Err(problems) = schema.check(&event.data) {
                let field = format!("{}data_json", event.field);
                refused.push((index, DomainError::invalid(&field, problems)));
            }
        }
        Ok(refused)
    }
}

/// The answer of an event the store loop lost track of (a bug of ours).
fn unanswered() -> DomainError {
    DomainError::Internal("an event was left without an answer".into())
}

/// Whether one event's refusal refuses the others stored with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Atomicity {
    /// EmitBatch: every event is stored, or none.
    AllOrNothing,
    /// A group commit of independent callers: each event stands alone.
    EachEvent,
}

/// What storing a batch produced.
struct Stored {
    /// One per event, in input order: accepted, or refused (a reused idempotency key
    /// with different content). Empty when `stale` is not.
    accepted: Vec<Result<Accepted, DomainError>>,
    /// The deliveries leased to this replica, one chain per event in run order.
    leased: Vec<Vec<ClaimedDelivery>>,
    /// Some deliveries were stored for any replica to claim.
    unleased_deliveries: bool,
    /// Positions of the events validated against a schema that has changed since, in
    /// order; when there are any, nothing was stored.
    stale: Vec<usize>,
}

/// Stores events and their deliveries: one statement, so it commits on its own (no
/// BEGIN/COMMIT round trips). Duplicates are then answered with the id of the event
/// that holds their key, or refused when their content differs from it. An all-or-nothing
/// batch holding keys runs in a transaction, so such a refusal leaves nothing stored; so
/// does a batch with ordering keys, which takes their locks first.
fn store(
    conn: &mut diesel::PgConnection,
    batch: &[NewEvent],
    lease: LeaseAtInsert<'_>,
    atomicity: Atomicity,
) -> Result<Stored, DomainError> {
    let all_or_nothing =
        atomicity == Atomicity::AllOrNothing && batch.iter().any(|e| e.idempotency_key.is_some());
    let ordering_keys: Vec<&str> = batch
        .iter()
        .filter_map(|e| e.ordering_key.as_deref())
        .collect();
    if all_or_nothing || !ordering_keys.is_empty() {
        use diesel::Connection;
        let in_transaction = conn.transaction(|conn| {
            events::lock_ordering_keys(conn, &ordering_keys)?;
            let stored = store_statement(conn, batch, lease)?;
            if !all_or_nothing {
                return Ok(stored);
            }
            match stored.accepted.iter().position(Result::is_err) {
                Some(index) => Err(match stored.accepted.into_iter().nth(index) {
                    Some(Err(DomainError::FailedPrecondition(message))) => {
                        DomainError::FailedPrecondition(format!("events[{index}]: {message}"))
                    }
                    Some(Err(error)) => error,
                    _ => DomainError::Internal("a refused event vanished".into()),
                }),
                None => Ok(stored),
            }
        });
        // Past BEGIN, a lost connection may have lost it before or after COMMIT.
        in_transaction.map_err(|error| match error {
            DomainError::Unavailable(source) => DomainError::OutcomeUnknown(source),
            other => other,
        })
    } else {
        store_statement(conn, batch, lease)
    }
}

/// The statement of [`store`] and the answers it gives each event.
fn store_statement(
    conn: &mut diesel::PgConnection,
    batch: &[NewEvent],
    lease: LeaseAtInsert<'_>,
) -> Result<Stored, DomainError> {
    let columns = events::NewEventColumns {
        names: batch.iter().map(|e| e.event.as_str()).collect(),
        data: batch.iter().map(|e| e.data.as_str()).collect(),
        keys: batch.iter().map(|e| e.idempotency_key.as_deref()).collect(),
        ordering_keys: batch.iter().map(|e| e.ordering_key.as_deref()).collect(),
        emitted_by: batch.iter().map(|e| e.emitted_by.as_deref()).collect(),
        traceparents: batch
            .iter()
            .map(|e| e.trace.map(|t| t.to_string()))
            .collect(),
        schema_versions: batch.iter().map(|e| e.schema_version).collect(),
    };
    let rows = events::insert_batch(conn, &columns, lease).map_err(|error| {
        // Sent, then the connection broke: the statement may have committed.
        let error = DbError::Query(error);
        if error.is_unavailable() {
            DomainError::OutcomeUnknown(Box::new(error))
        } else {
            DomainError::from(error)
        }
    })?;
    if rows.iter().any(|r| r.stale) {
        let mut stale: Vec<usize> = rows
            .iter()
            .filter(|r| r.stale)
            .map(|r| (r.ord as usize).wrapping_sub(1))
            .collect();
        stale.dedup();
        return Ok(Stored {
            accepted: Vec::new(),
            leased: Vec::new(),
            unleased_deliveries: false,
            stale,
        });
    }
    let duplicate_keys: Vec<&str> = rows
        .iter()
        .filter(|r| !r.inserted)
        .filter_map(|r| {
            columns
                .keys
                .get((r.ord as usize).wrapping_sub(1))
                .copied()
                .flatten()
        })
        .collect();
    let earlier: HashMap<String, events::KeyedEvent> = if duplicate_keys.is_empty() {
        HashMap::new()
    } else {
        events::by_keys(conn, &duplicate_keys)?
            .into_iter()
            .map(|e| (e.idempotency_key.clone(), e))
            .collect()
    };
    let mut stored = Stored {
        accepted: Vec::with_capacity(batch.len()),
        leased: Vec::new(),
        unleased_deliveries: false,
        stale: Vec::new(),
    };
    let mut leased_deliveries = 0;
    for row in rows {
        let index = (row.ord as usize).wrapping_sub(1);
        let (Some(event), Some(key)) = (batch.get(index), columns.keys.get(index)) else {
            return Err(DomainError::Internal(
                format!("stored event at position {} of {}", row.ord, batch.len()).into(),
            ));
        };
        if index == stored.accepted.len() {
            stored.accepted.push(accepted(&row, event, *key, &earlier)?);
            if row.delivery_id.is_some() {
                stored.leased.push(Vec::new());
            }
        }
        if let (Some(id), Some(chain)) = (row.delivery_id, stored.leased.last_mut()) {
            leased_deliveries += 1;
            chain.push(ClaimedDelivery {
                id,
                event_id: row.id,
                attempts: 0,
                event: event.event.clone(),
                data: event.data.clone(),
                handler_id: row.handler_id.unwrap_or_default(),
                name: row.name.unwrap_or_default(),
                kind: row.kind.unwrap_or_default(),
                status: "enabled".into(),
                url: row.url,
                headers: row.headers.unwrap_or_default(),
                secret: row.secret,
                script_path: row.script_path,
                timeout_ms: row.timeout_ms.unwrap_or_default(),
                emitted_by: event.emitted_by.clone(),
                traceparent: event.trace.map(|t| t.to_string()),
                ordering_slot: row.ordering_slot,
            });
        }
    }
    let deliveries: u32 = stored.accepted.iter().flatten().map(|a| a.deliveries).sum();
    stored.unleased_deliveries = deliveries > leased_deliveries;
    Ok(stored)
}

/// The answer for one stored (or duplicate) event: the outer error is a bug of ours,
/// the inner one a refusal of this event alone.
fn accepted(
    row: &events::StoredEvent,
    event: &NewEvent,
    key: Option<&str>,
    earlier: &HashMap<String, events::KeyedEvent>,
) -> Result<Result<Accepted, DomainError>, DomainError> {
    if row.inserted {
        return Ok(Ok(Accepted {
            event_id: row.id,
            duplicate: false,
            deliveries: row.deliveries as u32,
        }));
    }
    let key = key.unwrap_or_default();
    let first = earlier.get(key).ok_or_else(|| {
        DomainError::Internal(format!("event with idempotency key {key:?} vanished").into())
    })?;
    if first.event != event.event || first.data != event.data {
        return Ok(Err(DomainError::FailedPrecondition(format!(
            "idempotency_key {key:?} was already used by event {} ({}) with different \
             content; a key names one event: use a new key for a new event",
            first.id, first.event
        ))));
    }
    Ok(Ok(Accepted {
        event_id: first.id,
        duplicate: true,
        deliveries: 0,
    }))
}

/// Answers each caller of a group: its event's answer, or the group's error.
fn answer(
    replies: Vec<oneshot::Sender<Result<Accepted, DomainError>>>,
    answers: Result<Vec<Result<Accepted, DomainError>>, DomainError>,
) {
    match answers {
        Ok(answers) => {
            for (reply, answer) in replies.into_iter().zip(answers) {
                // The caller may have gone (cancelled RPC): the event is stored anyway.
                let _caller_gone = reply.send(answer);
            }
        }
        Err(error) => {
            let message = crate::telemetry::error_chain(&error);
            if matches!(
                error,
                DomainError::Unavailable(_) | DomainError::OutcomeUnknown(_)
            ) {
                tracing::warn!(error = %message, events = replies.len(), "storing events failed: database unavailable");
            } else {
                tracing::error!(error = %message, events = replies.len(), "storing events failed");
            }
            for reply in replies {
                let source = message.clone().into();
                let error = match error {
                    DomainError::Unavailable(_) => DomainError::Unavailable(source),
                    DomainError::OutcomeUnknown(_) => DomainError::OutcomeUnknown(source),
                    _ => DomainError::Internal(source),
                };
                let _caller_gone = reply.send(Err(error));
            }
        }
    }
}
