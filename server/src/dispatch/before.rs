//! The BEFORE chain: the enabled BEFORE handlers of an event run now, in priority
//! order, each seeing the data as the previous one left it; the first forbid stops the
//! chain. Failures follow each handler's failure policy. Every run is logged through
//! the recorder, off the reply's path.
//!
//! HTTP: 2xx with a JSON object body = (possibly modified) data, 2xx with an empty body
//! = unchanged, 4xx = forbid (reason from the body), anything else = failure.
//! Script: see `script` for the exit-code protocol.
//!
//! The event's data was checked against its event type's schema when it was validated;
//! the transaction that loads the handlers also reads the schema's version, and data
//! validated against an older schema is checked again first (see `domain::schemas`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::recorder::{LogRecord, Record};
use super::script::FORBID_EXIT_CODE;
use super::worker::reply_fields;
use super::{AttemptError, Execution, Invocation, Reply, Runner, LOGGED_RESPONSE_BYTES};
use crate::db::queries::{self, events};
use crate::db::Db;
use crate::domain::events::NewEvent;
use crate::domain::handlers::{handler_from_row, Handler};
use crate::domain::schemas::EventSchemas;
use crate::domain::{event_data, text, DomainError, FailurePolicy, Phase, RunStatus};

/// The decision of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The action may go on.
    Allowed,
    /// A handler forbade it (or failed closed).
    Forbidden,
}

/// What one handler did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Data unchanged.
    Passed,
    /// Data modified.
    Modified,
    /// Forbade the action.
    Forbade,
    /// Failed; the policy decided.
    Failed,
    /// Did not run.
    Skipped,
}

/// Result of one handler.
#[derive(Debug, Clone)]
pub struct HandlerResult {
    /// Handler id.
    pub handler_id: i64,
    /// Handler name.
    pub handler_name: String,
    /// What it did.
    pub outcome: Outcome,
    /// Error or forbid reason.
    pub error: String,
    /// Run time.
    pub duration: Duration,
}

/// Result of a whole chain.
#[derive(Debug, Clone)]
pub struct ChainResult {
    /// Id given to the event.
    pub event_id: i64,
    /// Decision.
    pub decision: Decision,
    /// Data after the chain.
    pub data: String,
    /// Why forbidden; empty when allowed.
    pub reason: String,
    /// One entry per handler, in run order.
    pub results: Vec<HandlerResult>,
}

/// Event ids taken from the sequence per round trip for BEFORE events.
const ID_BLOCK: i64 = 64;

/// Runs BEFORE chains.
#[derive(Clone)]
pub struct BeforeChain {
    db: Db,
    runner: Runner,
    /// Event ids taken from the sequence and not used yet: BEFORE events get theirs
    /// without a round trip of their own (ids stay unique; a restart leaves a gap).
    spare_ids: Arc<Mutex<Vec<i64>>>,
    /// Largest data a handler may return (the emit payload limit).
    max_data: usize,
    /// Compiled event schemas, for data validated against a schema changed since.
    schemas: EventSchemas,
}

impl BeforeChain {
    /// A chain runner over `db`; handlers may return at most `max_data` bytes of data.
    pub fn new(db: Db, runner: Runner, max_data: usize, schemas: EventSchemas) -> BeforeChain {
        BeforeChain {
            db,
            runner,
            spare_ids: Arc::default(),
            max_data,
            schemas,
        }
    }

    /// Runs the chain for a validated event (its emitter is recorded in the log rows,
    /// its trace continued by each run); `deadline` bounds the whole chain.
    /// INVALID_ARGUMENT when the event type's schema changed since the event was
    /// validated and the data does not satisfy the new one.
    pub async fn run(
        &self,
        event: NewEvent,
        deadline: Instant,
    ) -> Result<ChainResult, DomainError> {
        let NewEvent {
            event,
            data,
            emitted_by,
            trace,
            schema_version,
            field,
            idempotency_key: _unused_for_before,
            ordering_key: _ordering_is_for_after,
        } = event;
        let (event_id, chain, current_version) = self.load(event.clone(), data.clone()).await?;
        if current_version != Some(schema_version) {
            let schema = self.schemas.reload(&event).await?.ok_or_else(|| {
                DomainError::Internal(format!("event type {event:?} vanished").into())
            })?;
            schema
                .check(&data)
                .map_err(|problems| DomainError::invalid(&format!("{field}data_json"), problems))?;
        }
        let mut data = data;
        let mut results = Vec::with_capacity(chain.len());
        let mut decision = Decision::Allowed;
        let mut reason = String::new();
        for handler in chain {
            if decision == Decision::Forbidden {
                results.push(skipped(&handler, "an earlier handler forbade the action"));
                continue;
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                results.push(skipped(
                    &handler,
                    "deadline exceeded before this handler ran",
                ));
                decision = Decision::Forbidden;
                reason = "deadline exceeded before every BEFORE handler ran".into();
                continue;
            }
            let timeout = Duration::from_millis(u64::from(handler.timeout_ms)).min(remaining);
            let invocation = Invocation {
                handler_id: handler.id,
                event: &event,
                phase: Phase::Before,
                event_id,
                attempt: 1,
                message_id: format!("evt_{event_id}_{}", handler.id),
                data: &data,
                traceparent: trace.map(|trace| trace.child().to_string()),
                test: false,
            };
            let execution = self
                .runner
                .run_handler(&handler, &invocation, timeout)
                .await;
            let verdict = judge_before(&execution.result, &data, self.max_data);
            let (outcome, error, new_data) = match verdict {
                Verdict::Pass => (Outcome::Passed, String::new(), None),
                Verdict::Modify(new) => (Outcome::Modified, String::new(), Some(new)),
                Verdict::Forbid(why) => (Outcome::Forbade, why, None),
                Verdict::Fail(why) => (Outcome::Failed, why, None),
            };
            self.log(
                &handler,
                &event,
                emitted_by.as_deref(),
                event_id,
                &data,
                new_data.as_deref(),
                &execution,
                outcome,
                &error,
            )
            .await;
            match outcome {
                Outcome::Forbade => {
                    decision = Decision::Forbidden;
                    reason = if error.is_empty() {
                        format!("forbidden by handler {:?}", handler.name)
                    } else {
                        error.clone()
                    };
                }
                Outcome::Failed if handler.failure_policy == FailurePolicy::FailClosed => {
                    decision = Decision::Forbidden;
                    reason = format!("handler {:?} failed (fail closed): {error}", handler.name);
                }
                _ => {}
            }
            if let Some(new) = new_data {
                data = new;
            }
            results.push(HandlerResult {
                handler_id: handler.id,
                handler_name: handler.name.clone(),
                outcome,
                error,
                duration: execution.duration,
            });
        }
        Ok(ChainResult {
            event_id,
            decision,
            data,
            reason,
            results,
        })
    }

    /// A fresh event id, the enabled BEFORE handlers whose filter matches, read now (no
    /// cache: a handler change applies to the next call, on every replica), and the
    /// event type's schema version.
    async fn load(
        &self,
        event: String,
        data: String,
    ) -> Result<(i64, Vec<Handler>, Option<i64>), DomainError> {
        let spare = self.take_spare_id();
        let (id, more_ids, rows, version) = self
            .db
            .run(move |conn| {
                let (id, more_ids) = match spare {
                    Some(id) => (id, Vec::new()),
                    None => {
                        let mut ids = events::next_ids(conn, ID_BLOCK)?;
                        // Popped from the end: smallest first.
                        ids.reverse();
                        let id = ids.pop().ok_or_else(|| {
                            DomainError::Internal("the event id sequence returned nothing".into())
                        })?;
                        (id, ids)
                    }
                };
                let rows = queries::handlers::enabled_matching(
                    conn,
                    &event,
                    Phase::Before.as_str(),
                    &data,
                )?;
                let version = queries::event_types::schema_version(conn, &event)?;
                Ok::<_, DomainError>((id, more_ids, rows, version))
            })
            .await?;
        if !more_ids.is_empty() {
            if let Ok(mut spare) = self.spare_ids.lock() {
                spare.extend(more_ids);
            }
        }
        Ok((
            id,
            rows.into_iter()
                .map(handler_from_row)
                .collect::<Result<_, _>>()?,
            version,
        ))
    }

    fn take_spare_id(&self) -> Option<i64> {
        self.spare_ids.lock().ok()?.pop()
    }

    #[allow(clippy::too_many_arguments)]
    async fn log(
        &self,
        handler: &Handler,
        event: &str,
        emitted_by: Option<&str>,
        event_id: i64,
        data_sent: &str,
        data_returned: Option<&str>,
        execution: &Execution,
        outcome: Outcome,
        error: &str,
    ) {
        let (response, http_status, exit_code) = reply_fields(&execution.result);
        let record = Record {
            log: LogRecord {
                created_at: execution.started_at,
                phase: Phase::Before,
                event: event.to_owned(),
                status: if outcome == Outcome::Failed {
                    RunStatus::Fail
                } else {
                    RunStatus::Success
                },
                handler_id: handler.id,
                handler_name: handler.name.clone(),
                kind: handler.target.kind(),
                error: error.to_owned(),
                duration_ms: execution.duration.as_millis().min(i32::MAX as u128) as i32,
                attempt: 1,
                data_sent: data_sent.to_owned(),
                data_returned: Some(data_returned.unwrap_or(data_sent).to_owned()),
                response,
                http_status,
                exit_code,
                event_id,
                delivery_id: None,
                emitted_by: emitted_by.map(str::to_owned),
                test: false,
            },
            delivery: None,
            ordering_slot: None,
        };
        self.runner.recorder.record(record).await;
    }
}

fn skipped(handler: &Handler, why: &str) -> HandlerResult {
    HandlerResult {
        handler_id: handler.id,
        handler_name: handler.name.clone(),
        outcome: Outcome::Skipped,
        error: why.to_owned(),
        duration: Duration::ZERO,
    }
}

/// How a BEFORE handler's reply is read.
#[derive(Debug)]
pub enum Verdict {
    /// Data unchanged.
    Pass,
    /// New data (acceptable event data).
    Modify(String),
    /// Forbids the action, with the reason.
    Forbid(String),
    /// The handler failed, with the reason; its failure policy decides.
    Fail(String),
}

/// Interprets a BEFORE handler's reply against the data it was sent.
pub(crate) fn judge_before(
    result: &Result<Reply, AttemptError>,
    sent: &str,
    max_data: usize,
) -> Verdict {
    match result {
        Ok(Reply::Http { status, body, .. }) if (200..300).contains(status) => {
            data_verdict(body, sent, max_data)
        }
        Ok(Reply::Http { status, body, .. }) if (400..500).contains(status) => {
            Verdict::Forbid(forbid_reason(body, &format!("HTTP {status}")))
        }
        Ok(Reply::Http { status, .. }) => Verdict::Fail(format!("HTTP {status}")),
        Ok(Reply::Script {
            exit_code: Some(0),
            stdout,
            ..
        }) => data_verdict(stdout, sent, max_data),
        Ok(Reply::Script {
            exit_code: Some(FORBID_EXIT_CODE),
            stdout,
            stderr,
            ..
        }) => {
            let text = if stdout.iter().all(u8::is_ascii_whitespace) {
                stderr
            } else {
                stdout
            };
            Verdict::Forbid(forbid_reason(text, "forbidden by script"))
        }
        Ok(Reply::Script {
            exit_code: Some(code),
            ..
        }) => Verdict::Fail(format!("script exited with code {code}")),
        Ok(Reply::Script { signal, .. }) => {
            Verdict::Fail(format!("script killed by signal {}", signal.unwrap_or(0)))
        }
        Err(error) => Verdict::Fail(error.to_string()),
    }
}

/// An empty body leaves the data unchanged; acceptable event data (see `event_data`)
/// replaces it. Anything else is the handler's failure: bad data is never passed on.
pub fn data_verdict(body: &[u8], sent: &str, max_data: usize) -> Verdict {
    let body = body.trim_ascii();
    if body.is_empty() {
        return Verdict::Pass;
    }
    match event_data::check_object_bytes(body, max_data) {
        Ok(text) => {
            // Both are acceptable data, so within the depth serde_json reads.
            let value = |text: &str| serde_json::from_str::<serde_json::Value>(text).ok();
            if value(text).is_some_and(|returned| value(sent) == Some(returned)) {
                Verdict::Pass
            } else {
                Verdict::Modify(text.to_owned())
            }
        }
        Err(error) => Verdict::Fail(format!(
            "handler replied 2xx with data that is not acceptable: {error}"
        )),
    }
}

fn forbid_reason(body: &[u8], fallback: &str) -> String {
    let text = text::from_bytes(body, LOGGED_RESPONSE_BYTES);
    let text = text.trim();
    if text.is_empty() {
        fallback.to_owned()
    } else {
        text.chars().take(1000).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn http(status: u16, body: &str) -> Result<Reply, AttemptError> {
        Ok(Reply::Http {
            status,
            body: Bytes::from(body.to_owned()),
            truncated: false,
            retry_after: None,
        })
    }

    #[test]
    fn an_echo_passes_and_a_different_object_modifies() {
        let sent = r#"{"id": 9007199254740993, "amount": 12.50}"#;
        assert!(matches!(
            judge_before(&http(200, sent), sent, 1 << 20),
            Verdict::Pass
        ));
        assert!(matches!(
            judge_before(
                &http(200, "{\"amount\":12.50,\"id\":9007199254740993}"),
                sent,
                1 << 20
            ),
            Verdict::Pass
        ));
        assert!(matches!(
            judge_before(&http(204, ""), sent, 1 << 20),
            Verdict::Pass
        ));
        assert!(
            matches!(judge_before(&http(200, r#"{"id": 1}"#), sent, 1 << 20), Verdict::Modify(d) if d == r#"{"id": 1}"#)
        );
    }

    #[test]
    fn client_errors_forbid_and_server_errors_fail() {
        assert!(
            matches!(judge_before(&http(403, "no credit"), "{}", 1 << 20), Verdict::Forbid(r) if r == "no credit")
        );
        assert!(matches!(
            judge_before(&http(500, "boom"), "{}", 1 << 20),
            Verdict::Fail(_)
        ));
        assert!(matches!(
            judge_before(&http(200, "[1]"), "{}", 1 << 20),
            Verdict::Fail(_)
        ));
    }
}
