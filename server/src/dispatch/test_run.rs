//! Test runs (HandlerService.Test): one handler, once, now, on given data or on the data
//! of a logged run, with the verdict a delivery or a BEFORE chain would reach.
//!
//! Nothing here is a second executor: the run goes through [`Runner`] and is judged by
//! the BEFORE chain's [`judge_before`] or the worker's [`judge_after`]. What differs from
//! a delivery is what happens around it: no event is stored (the run gets a fresh event
//! id from the sequence, as BEFORE events do), no delivery is created, retried or
//! settled, the handler's health is not touched (a 410 Gone does not disable it), and
//! the handler is told (`x-provisioning-test: true`, `PROVISIONING_TEST=1`). The run is
//! logged with `test` set, written at once so the reply can name its log row.
//!
//! Disabled handlers can be tested (trying a handler before enabling it is the point);
//! archived ones cannot. The data must be what Emit would accept for the handler's
//! event, its schema included: a handler never sees data an emitter could not send.

use std::time::Duration;

use diesel::OptionalExtension;

use super::before::{judge_before, Decision, Outcome, Verdict};
use super::recorder::{self, LogRecord};
use super::worker::{judge_after, reply_fields, Judgement};
use super::{AttemptError, Invocation, Reply, Runner};
use crate::auth::Caller;
use crate::db::queries::{events, handlers, logs};
use crate::db::Db;
use crate::domain::handlers::{handler_from_row, Handler};
use crate::domain::schemas::{Checked, EventSchemas};
use crate::domain::{event_data, DomainError, FailurePolicy, HandlerStatus, Phase, RunStatus};
use crate::listener::Signals;

/// The data of a test run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TestInput {
    /// JSON object text, as an emitter would send it.
    Data(String),
    /// The data sent in this logged run.
    LogId(i64),
}

/// What a BEFORE handler did in a test run.
#[derive(Debug, Clone)]
pub struct BeforeVerdict {
    /// Passed, modified, forbade or failed.
    pub outcome: Outcome,
    /// The decision of a chain of this handler alone.
    pub decision: Decision,
    /// The data it returned (the data sent when unchanged).
    pub data_returned: String,
}

/// What a test run did.
#[derive(Debug, Clone)]
pub struct TestResult {
    /// Its execution-log row; `None` when it could not be written at once (queued).
    pub log_id: Option<i64>,
    /// The fresh event id it was given.
    pub event_id: i64,
    /// Success or failure, as a delivery or a BEFORE chain would see it.
    pub status: RunStatus,
    /// Why it failed or forbade; empty otherwise.
    pub error: String,
    /// Run time.
    pub duration: Duration,
    /// Response body or script output, as the log keeps it.
    pub response: String,
    /// HTTP status, if any.
    pub http_status: Option<i32>,
    /// Script exit code, if any.
    pub exit_code: Option<i32>,
    /// The data sent.
    pub data_sent: String,
    /// BEFORE handlers only.
    pub before: Option<BeforeVerdict>,
}

/// Runs test runs; cheap to clone.
#[derive(Clone)]
pub struct TestRuns {
    db: Db,
    runner: Runner,
    schemas: EventSchemas,
    signals: Signals,
    /// The emit payload limit: the largest data sent, and returned by a BEFORE handler.
    max_data: usize,
}

impl TestRuns {
    /// Test runs over `db`, run by `runner`, with data checked as Emit checks it.
    pub fn new(
        db: Db,
        runner: Runner,
        schemas: EventSchemas,
        signals: Signals,
        max_data: usize,
    ) -> TestRuns {
        TestRuns {
            db,
            runner,
            schemas,
            signals,
            max_data,
        }
    }

    /// Runs handler `id` once on `input`, for `caller` (recorded in the log row as the
    /// emitter). NOT_FOUND for an unknown handler or log row, FAILED_PRECONDITION for
    /// an archived handler, INVALID_ARGUMENT for data Emit would refuse.
    pub async fn run(
        &self,
        caller: &Caller,
        id: i64,
        input: TestInput,
    ) -> Result<TestResult, DomainError> {
        let log_id = match &input {
            TestInput::LogId(log_id) => Some(*log_id),
            TestInput::Data(_) => None,
        };
        let (row, logged_data, event_id) = self
            .db
            .run(move |conn| {
                let row = handlers::find(conn, id).optional()?;
                let logged = match (&row, log_id) {
                    (Some(_), Some(log_id)) => Some(
                        logs::find(conn, log_id)
                            .optional()?
                            .map(|log| log.data_sent.0)
                            .ok_or_else(|| {
                                DomainError::NotFound(format!("execution log {log_id} not found"))
                            })?,
                    ),
                    _ => None,
                };
                let event_id = match row {
                    Some(_) => events::next_ids(conn, 1)?.first().copied(),
                    None => None,
                };
                Ok::<_, DomainError>((row, logged, event_id))
            })
            .await?;
        let handler = handler_from_row(
            row.ok_or_else(|| DomainError::NotFound(format!("handler {id} not found")))?,
        )?;
        let event_id = event_id.ok_or_else(|| {
            DomainError::Internal("the event id sequence returned nothing".into())
        })?;
        if handler.status == HandlerStatus::Archived {
            return Err(DomainError::FailedPrecondition(format!(
                "handler {id} is archived: archived handlers do not run; bring it back \
                 (SetStatus) to test it"
            )));
        }
        let (data, field) = match (input, logged_data) {
            (TestInput::Data(data), _) => (data, "data_json".to_owned()),
            (TestInput::LogId(log_id), Some(data)) => (
                data,
                format!("log_id: the data of execution log {log_id}: data_json"),
            ),
            (TestInput::LogId(log_id), None) => {
                return Err(DomainError::NotFound(format!(
                    "execution log {log_id} not found"
                )))
            }
        };
        self.check_data(&handler.event, &data, &field).await?;

        let invocation = Invocation {
            handler_id: handler.id,
            event: &handler.event,
            phase: handler.phase,
            event_id,
            attempt: 1,
            message_id: format!("evt_{event_id}_{}", handler.id),
            data: &data,
            // A test belongs to no emitter's trace.
            traceparent: None,
            test: true,
        };
        let timeout = Duration::from_millis(u64::from(handler.timeout_ms.max(1)));
        let execution = self
            .runner
            .run_handler(&handler, &invocation, timeout)
            .await;
        let (status, error, before) = judge(&handler, &execution.result, &data, self.max_data);
        let (response, http_status, exit_code) = reply_fields(&execution.result);
        let log = LogRecord {
            created_at: execution.started_at,
            phase: handler.phase,
            event: handler.event.clone(),
            status,
            handler_id: handler.id,
            handler_name: handler.name.clone(),
            kind: handler.target.kind(),
            error: error.clone(),
            duration_ms: execution.duration.as_millis().min(i32::MAX as u128) as i32,
            attempt: 1,
            data_sent: data.clone(),
            data_returned: before.as_ref().map(|b| b.data_returned.clone()),
            response: response.clone(),
            http_status,
            exit_code,
            event_id,
            delivery_id: None,
            emitted_by: Some(caller.name.clone()),
            test: true,
        };
        let log_id = recorder::write_now(&self.db, &self.runner.recorder, &self.signals, log).await;
        Ok(TestResult {
            log_id,
            event_id,
            status,
            error,
            duration: execution.duration,
            response,
            http_status,
            exit_code,
            data_sent: data,
            before,
        })
    }

    /// The checks of Emit: acceptable event data within the payload limit, satisfying
    /// the schema of `event`; `field` names the data in messages.
    async fn check_data(&self, event: &str, data: &str, field: &str) -> Result<(), DomainError> {
        event_data::check_object(data, self.max_data)
            .map_err(|e| DomainError::invalid(field, e))?;
        match self.schemas.check(event, data).await? {
            Checked::Fits { .. } => Ok(()),
            Checked::Violates(problems) => Err(DomainError::invalid(field, problems)),
            Checked::UnknownEvent => Err(DomainError::Internal(
                format!("handler event {event:?} is not in the catalogue").into(),
            )),
        }
    }
}

/// The verdict a delivery (AFTER) or a BEFORE chain would reach on this run: status,
/// error, and for BEFORE what the handler did. A 410 Gone is reported, not acted on.
fn judge(
    handler: &Handler,
    result: &Result<Reply, AttemptError>,
    data: &str,
    max_data: usize,
) -> (RunStatus, String, Option<BeforeVerdict>) {
    match handler.phase {
        Phase::After => match judge_after(result) {
            Judgement::Success => (RunStatus::Success, String::new(), None),
            Judgement::Failure { gone: true, .. } => (
                RunStatus::Fail,
                "HTTP 410 Gone: a delivery would disable the handler (this test did not)"
                    .to_owned(),
                None,
            ),
            Judgement::Failure { error, .. } => (RunStatus::Fail, error, None),
        },
        Phase::Before => {
            let (outcome, error, returned) = match judge_before(result, data, max_data) {
                Verdict::Pass => (Outcome::Passed, String::new(), None),
                Verdict::Modify(new) => (Outcome::Modified, String::new(), Some(new)),
                Verdict::Forbid(why) => (Outcome::Forbade, why, None),
                Verdict::Fail(why) => (Outcome::Failed, why, None),
            };
            let decision = match (outcome, handler.failure_policy) {
                (Outcome::Forbade, _) | (Outcome::Failed, FailurePolicy::FailClosed) => {
                    Decision::Forbidden
                }
                _ => Decision::Allowed,
            };
            let status = if outcome == Outcome::Failed {
                RunStatus::Fail
            } else {
                RunStatus::Success
            };
            let verdict = BeforeVerdict {
                outcome,
                decision,
                data_returned: returned.unwrap_or_else(|| data.to_owned()),
            };
            (status, error, Some(verdict))
        }
    }
}
