//! Event ingestion: validation of emitted events and durable storage of AFTER events
//! with their deliveries.
//!
//! Concurrent `emit` calls are group-committed: they queue for a committer task that
//! stores everything queued so far in one transaction (a few transactions may be in
//! flight at once) and answers each caller only after the commit. Throughput grows with
//! concurrency without giving up durability.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use diesel::Connection;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::DomainError;
use crate::config::Config;
use crate::db::queries::{event_types, events};
use crate::db::Db;
use crate::listener::Signals;
use crate::shutdown::Shutdown;

/// Longest idempotency key.
pub const MAX_IDEMPOTENCY_KEY: usize = 200;
/// Largest EmitBatch.
pub const MAX_BATCH_EVENTS: usize = 10_000;
const MAX_GROUP_COMMIT: usize = 2_000;
const COMMITS_IN_FLIGHT: usize = 4;

/// A validated event.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// Event name, known to the catalogue.
    pub event: String,
    /// JSON object text, as emitted.
    pub data: String,
    /// Idempotency key, if any.
    pub idempotency_key: Option<String>,
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
    db: Db,
    max_payload: usize,
    known_events: Arc<RwLock<HashSet<String>>>,
    queue: mpsc::Sender<Pending>,
    signals: Signals,
}

impl Ingest {
    /// Starts the committer and returns the ingest front.
    pub fn new(db: Db, config: Arc<Config>, signals: Signals, shutdown: &Shutdown) -> Ingest {
        let (queue, receiver) = mpsc::channel(64 * 1024);
        shutdown.spawn(commit_loop(db.clone(), receiver, signals.clone()));
        Ingest {
            db,
            max_payload: config.max_payload_bytes,
            known_events: Arc::new(RwLock::new(HashSet::new())),
            queue,
            signals,
        }
    }

    /// Checks an event; `field` prefixes messages (e.g. `events[3].`).
    pub async fn validate(
        &self,
        field: &str,
        event: String,
        data: String,
        key: String,
    ) -> Result<NewEvent, DomainError> {
        if event.is_empty() {
            return Err(DomainError::invalid(&format!("{field}event"), "required"));
        }
        validate_data(&data, self.max_payload)
            .map_err(|e| DomainError::invalid(&format!("{field}data_json"), e))?;
        if key.chars().count() > MAX_IDEMPOTENCY_KEY {
            return Err(DomainError::invalid(
                &format!("{field}idempotency_key"),
                format!("must be at most {MAX_IDEMPOTENCY_KEY} characters"),
            ));
        }
        if !self.is_known(&event).await? {
            return Err(DomainError::invalid(
                &format!("{field}event"),
                format!("unknown event {event:?} (see ListEventTypes)"),
            ));
        }
        Ok(NewEvent {
            event,
            data,
            idempotency_key: (!key.is_empty()).then_some(key),
        })
    }

    /// Whether the catalogue has `event`. Event types are never deleted, so known names
    /// are cached; an unknown name is looked up (another replica may have added it).
    async fn is_known(&self, event: &str) -> Result<bool, DomainError> {
        if self.known_events.read().is_ok_and(|k| k.contains(event)) {
            return Ok(true);
        }
        let name = event.to_owned();
        let known = self
            .db
            .run(move |conn| event_types::exists(conn, &name).map_err(DomainError::from))
            .await?;
        if known {
            if let Ok(mut cache) = self.known_events.write() {
                cache.insert(event.to_owned());
            }
        }
        Ok(known)
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

    /// Stores a batch in one transaction: all or nothing.
    pub async fn emit_batch(&self, batch: Vec<NewEvent>) -> Result<Vec<Accepted>, DomainError> {
        let accepted = self.db.run(move |conn| store(conn, &batch)).await?;
        if accepted.iter().any(|a| a.deliveries > 0) {
            self.signals.announce_work();
        }
        Ok(accepted)
    }
}

/// Data must be a JSON object within the size limit. Escaped NUL characters are
/// refused because PostgreSQL's jsonb (the execution log) cannot hold them.
pub fn validate_data(data: &str, max_payload: usize) -> Result<(), String> {
    if data.len() > max_payload {
        return Err(format!(
            "{} bytes exceed the limit of {max_payload} bytes",
            data.len()
        ));
    }
    let raw: &RawValue = serde_json::from_str(data).map_err(|e| format!("not valid JSON: {e}"))?;
    if !raw.get().starts_with('{') {
        return Err("must be a JSON object".into());
    }
    if data.contains("\\u0000") {
        return Err("\\u0000 is not supported in event data".into());
    }
    Ok(())
}

/// Stores events and their deliveries in one transaction, all or nothing.
fn store(
    conn: &mut diesel::PgConnection,
    batch: &[NewEvent],
) -> Result<Vec<Accepted>, DomainError> {
    conn.transaction::<_, DomainError, _>(|conn| {
        let names: Vec<&str> = batch.iter().map(|e| e.event.as_str()).collect();
        let data: Vec<&str> = batch.iter().map(|e| e.data.as_str()).collect();
        let keys: Vec<Option<&str>> = batch.iter().map(|e| e.idempotency_key.as_deref()).collect();
        let stored = events::insert_batch(conn, &names, &data, &keys)?;
        let duplicate_keys: Vec<&str> = stored
            .iter()
            .filter(|s| !s.inserted)
            .filter_map(|s| keys.get(s.ord as usize - 1).copied().flatten())
            .collect();
        let earlier: HashMap<String, i64> = if duplicate_keys.is_empty() {
            HashMap::new()
        } else {
            events::ids_by_keys(conn, &duplicate_keys)?
                .into_iter()
                .collect()
        };
        stored
            .iter()
            .map(|s| {
                if s.inserted {
                    return Ok(Accepted {
                        event_id: s.id,
                        duplicate: false,
                        deliveries: s.deliveries as u32,
                    });
                }
                let key = keys
                    .get(s.ord as usize - 1)
                    .copied()
                    .flatten()
                    .unwrap_or_default();
                let id = earlier.get(key).copied().ok_or_else(|| {
                    DomainError::Internal(
                        format!("event with idempotency key {key:?} vanished").into(),
                    )
                })?;
                Ok(Accepted {
                    event_id: id,
                    duplicate: true,
                    deliveries: 0,
                })
            })
            .collect()
    })
}

async fn commit_loop(db: Db, mut receiver: mpsc::Receiver<Pending>, signals: Signals) {
    let in_flight = Arc::new(Semaphore::new(COMMITS_IN_FLIGHT));
    let mut group = Vec::with_capacity(MAX_GROUP_COMMIT);
    // Ends when every Ingest handle is gone (the gRPC server stopped).
    while receiver.recv_many(&mut group, MAX_GROUP_COMMIT).await > 0 {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        // More requests may have queued while we waited for a slot.
        while group.len() < MAX_GROUP_COMMIT {
            match receiver.try_recv() {
                Ok(pending) => group.push(pending),
                Err(_) => break,
            }
        }
        let pending = std::mem::take(&mut group);
        let db = db.clone();
        let signals = signals.clone();
        tokio::spawn(async move {
            let (events, replies): (Vec<NewEvent>, Vec<_>) =
                pending.into_iter().map(|p| (p.event, p.reply)).unzip();
            let result = db.run(move |conn| store(conn, &events)).await;
            drop(permit);
            match result {
                Ok(accepted) => {
                    if accepted.iter().any(|a| a.deliveries > 0) {
                        signals.announce_work();
                    }
                    for (reply, accepted) in replies.into_iter().zip(accepted) {
                        // The caller may have gone (cancelled RPC): the event is stored anyway.
                        let _caller_gone = reply.send(Ok(accepted));
                    }
                }
                Err(error) => {
                    let message = crate::telemetry::error_chain(&error);
                    tracing::error!(error = %message, events = replies.len(), "storing events failed");
                    let unavailable = matches!(error, DomainError::Unavailable(_));
                    for reply in replies {
                        let error = if unavailable {
                            DomainError::Unavailable(message.clone().into())
                        } else {
                            DomainError::Internal(message.clone().into())
                        };
                        let _caller_gone = reply.send(Err(error));
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_must_be_a_json_object_within_the_limit() {
        assert!(validate_data(r#"{"id": 9007199254740993}"#, 100).is_ok());
        assert!(validate_data("[1,2]", 100)
            .unwrap_err()
            .contains("JSON object"));
        assert!(validate_data("{", 100)
            .unwrap_err()
            .contains("not valid JSON"));
        assert!(validate_data(r#"{"a": "xxxxxxxxxx"}"#, 5)
            .unwrap_err()
            .contains("exceed"));
        assert!(validate_data(r#"{"a": "\u0000"}"#, 100).is_err());
    }
}
