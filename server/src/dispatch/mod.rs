//! Running handlers: the AFTER worker (`worker`: hand-over or claim → run → record),
//! the BEFORE chain (`before`), test runs of one handler (`test_run`), the executors
//! (`http`, `script`), the pure retry policy (`retry`), the batched writer of
//! execution-log rows and delivery outcomes (`recorder`) and the promoter of the keyed
//! events it lets go (`promoter`).
//!
//! Attempt errors are recorded in the execution log; they are never returned to RPC
//! callers.

pub mod before;
pub mod guard;
pub mod http;
pub mod promoter;
pub mod recorder;
pub mod retry;
pub mod script;
pub mod test_run;
pub mod worker;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::config::Config;
use crate::domain::handlers::{Handler, Target};
use crate::domain::Phase;
use crate::policy::script_file::ScriptAccess;

/// Bytes of a response or script output kept in the execution log.
pub const LOGGED_RESPONSE_BYTES: usize = 4096;

/// One handler run to perform.
#[derive(Debug)]
pub struct Invocation<'a> {
    /// Handler id.
    pub handler_id: i64,
    /// Event name.
    pub event: &'a str,
    /// Phase.
    pub phase: Phase,
    /// Event id.
    pub event_id: i64,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// Stable id of this message across retries (`webhook-id`).
    pub message_id: String,
    /// Data sent: a JSON object as text.
    pub data: &'a str,
    /// The W3C `traceparent` of this run (a child of the emitter's), if it sent one:
    /// the `traceparent` header of an HTTP POST, `TRACEPARENT` for a script.
    pub traceparent: Option<String>,
    /// A run of HandlerService.Test (told to the handler: `x-provisioning-test`,
    /// `PROVISIONING_TEST`), not a delivery.
    pub test: bool,
}

/// Where a handler runs.
#[derive(Debug, Clone, Copy)]
pub enum RunTarget<'a> {
    /// POST to a URL.
    Http {
        /// URL.
        url: &'a str,
        /// Extra headers (JSON object of strings).
        headers: &'a serde_json::Value,
        /// Signing secret.
        secret: &'a str,
    },
    /// A script by relative path.
    Script {
        /// Relative path.
        path: &'a str,
    },
}

/// What a handler answered.
#[derive(Debug)]
pub enum Reply {
    /// An HTTP response.
    Http {
        /// Status code.
        status: u16,
        /// Body: for AFTER the first `LOGGED_RESPONSE_BYTES`, for BEFORE all of it
        /// (at most the payload limit).
        body: Bytes,
        /// The body was longer than what was read.
        truncated: bool,
        /// `Retry-After` in seconds, when given.
        retry_after: Option<Duration>,
    },
    /// A finished script.
    Script {
        /// Exit code; `None` when killed by a signal.
        exit_code: Option<i32>,
        /// The signal that killed it.
        signal: Option<i32>,
        /// Standard output (capped).
        stdout: Vec<u8>,
        /// Standard error (capped).
        stderr: Vec<u8>,
    },
}

/// Why an attempt produced no reply.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    /// No reply within the handler's timeout.
    #[error("timed out after {} ms", .0.as_millis())]
    Timeout(Duration),
    /// The connection could not be established.
    #[error("connection error: {0}")]
    Connect(String),
    /// The outbound policy denies the address (the message names it and the entry).
    #[error("{0}")]
    OutboundDenied(String),
    /// The request failed after connecting.
    #[error("request error: {0}")]
    Request(String),
    /// The script could not be started.
    #[error("script execution error: {0}")]
    ScriptSpawn(String),
    /// The script path is no longer acceptable.
    #[error("script refused: {0}")]
    ScriptRefused(String),
    /// The handler was archived after the event was accepted.
    #[error("handler archived: delivery ended before it succeeded")]
    HandlerArchived,
}

impl AttemptError {
    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            AttemptError::ScriptRefused(_)
                | AttemptError::HandlerArchived
                | AttemptError::OutboundDenied(_)
        )
    }
}

/// The result of one run, timed.
#[derive(Debug)]
pub struct Execution {
    /// When the run started.
    pub started_at: DateTime<Utc>,
    /// How long it took.
    pub duration: Duration,
    /// The reply or the error.
    pub result: Result<Reply, AttemptError>,
}

/// Runs handlers of either kind; cheap to clone.
#[derive(Clone)]
pub struct Runner {
    http: http::HttpExecutor,
    scripts: script::ScriptExecutor,
    /// Where execution-log rows and delivery outcomes go.
    pub recorder: recorder::Recorder,
}

impl Runner {
    /// A runner for `config`, with scripts under `scripts_dir` run with `access`.
    pub fn new(
        config: &Config,
        scripts_dir: PathBuf,
        access: ScriptAccess,
        recorder: recorder::Recorder,
    ) -> Runner {
        let max_body = config.max_payload_bytes;
        Runner {
            http: http::HttpExecutor::new(max_body, Arc::new(config.outbound_policy())),
            scripts: script::ScriptExecutor::new(scripts_dir, max_body, access),
            recorder,
        }
    }

    /// Runs one handler, bounded by `timeout`.
    pub async fn execute(
        &self,
        target: RunTarget<'_>,
        invocation: &Invocation<'_>,
        timeout: Duration,
    ) -> Execution {
        let started_at = Utc::now();
        let clock = Instant::now();
        let result = match target {
            RunTarget::Http {
                url,
                headers,
                secret,
            } => {
                match tokio::time::timeout(
                    timeout,
                    self.http.post(invocation, url, headers, secret),
                )
                .await
                {
                    Ok(result) => result,
                    Err(_) => Err(AttemptError::Timeout(timeout)),
                }
            }
            RunTarget::Script { path } => self.scripts.run(invocation, path, timeout).await,
        };
        Execution {
            started_at,
            duration: clock.elapsed(),
            result,
        }
    }

    /// Runs a handler as the domain describes it (BEFORE chains, test runs), bounded by
    /// `timeout`.
    pub async fn run_handler(
        &self,
        handler: &Handler,
        invocation: &Invocation<'_>,
        timeout: Duration,
    ) -> Execution {
        let headers = match &handler.target {
            Target::Http { headers, .. } => serde_json::to_value(headers).unwrap_or_default(),
            Target::Script { .. } => serde_json::Value::Null,
        };
        let target = match &handler.target {
            Target::Http { url, secret, .. } => RunTarget::Http {
                url,
                headers: &headers,
                secret,
            },
            Target::Script { path } => RunTarget::Script { path },
        };
        self.execute(target, invocation, timeout).await
    }
}
