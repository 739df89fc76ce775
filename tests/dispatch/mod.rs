//! AFTER events end to end: ingestion (Emit, EmitBatch, EmitStream, validation,
//! idempotency, payload filters) and dispatch to real HTTP receivers and real scripts,
//! checked against what the receiver got and what the execution log holds (read with SQL,
//! independently of the log RPCs). Also the multi-process guarantees: handler changes
//! seen at once by another replica, no accepted event lost to a SIGKILL, two replicas
//! sharing work without delivering an attempt twice; and `provctl events emit`.
//!
//! This file holds the helpers, shared with `before.rs` and `logs.rs` at
//! `crate::dispatch::<name>`; the tests live in one submodule per concern:
//!
//! - `delivery`: HTTP delivery, signatures, timeouts, retries, dead deliveries, priority
//!   order, 410/429/503 and connection errors;
//! - `lifecycle`: deliveries of handlers disabled (automatically or by hand) or deleted
//!   after the event was accepted;
//! - `ingest`: validation, idempotency, EmitBatch, EmitStream, payload filters;
//! - `scripts`: script handlers;
//! - `replicas`: several `provisiond` processes on one database;
//! - `cli`: `provctl events emit`.

mod cli;
mod delivery;
mod ingest;
mod lifecycle;
mod replicas;
mod scripts;

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use diesel::sql_types::{BigInt, Integer, Nullable, SmallInt, Text, Timestamptz};
use diesel::{PgConnection, QueryableByName, RunQueryDsl};
use provisioning_client::{proto, Client, ClientError};
use provisioning_tests::receiver::Recorded;
pub(crate) use provisioning_tests::requests::{http_handler, script_handler};
use provisioning_tests::TestDatabase;

/// How long a test waits for something that normally takes milliseconds.
pub(crate) const WAIT: Duration = Duration::from_secs(20);
/// How long the multi-process tests wait for their whole workload.
const LONG_WAIT: Duration = Duration::from_secs(180);

/// Creates a handler, panicking with the status on failure.
pub(crate) async fn create(
    client: &Client,
    request: proto::CreateHandlerRequest,
) -> proto::Handler {
    let name = request.name.clone();
    client
        .create_handler(request)
        .await
        .unwrap_or_else(|e| panic!("creating handler {name:?}: {e}"))
}

/// The full signing secret of a handler returned by Create.
pub(crate) fn secret_of(handler: &proto::Handler) -> String {
    match &handler.target {
        Some(proto::handler::Target::Http(http)) => http.secret.clone(),
        other => panic!("not an HTTP handler: {other:?}"),
    }
}

/// An EmitRequest without idempotency key.
pub(crate) fn event_request(event: &str, phase: proto::Phase, data: &str) -> proto::EmitRequest {
    proto::EmitRequest {
        event: event.to_owned(),
        phase: phase.into(),
        data_json: data.to_owned(),
        ..Default::default()
    }
}

/// Emits an AFTER event that must be accepted.
pub(crate) async fn emit_after(client: &Client, event: &str, data: &str) -> proto::EmitResponse {
    client
        .emit(event_request(event, proto::Phase::After, data))
        .await
        .unwrap_or_else(|e| panic!("emitting {event} {data}: {e}"))
}

/// Emits a BEFORE event that must be accepted (whatever the decision).
pub(crate) async fn emit_before(client: &Client, event: &str, data: &str) -> proto::EmitResponse {
    client
        .emit(event_request(event, proto::Phase::Before, data))
        .await
        .unwrap_or_else(|e| panic!("emitting BEFORE {event} {data}: {e}"))
}

/// The message of an INVALID_ARGUMENT error; panics on success or any other error.
/// The message of an INVALID_ARGUMENT, checking on the way that a message naming its
/// field (`field: what is wrong`) carries the same as a `google.rpc.BadRequest` field
/// violation, as clients in other languages read it.
pub(crate) fn invalid_argument<T: std::fmt::Debug>(result: Result<T, ClientError>) -> String {
    use tonic_types::StatusExt;
    let status = match result {
        Err(ClientError::Rpc(status)) if status.code() == tonic::Code::InvalidArgument => status,
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    };
    let message = status.message().to_owned();
    if let Some((field, description)) = message.split_once(": ") {
        let is_path = field
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '[' | ']'));
        if is_path {
            let violations = status
                .get_details_bad_request()
                .unwrap_or_else(|| panic!("no BadRequest details in {status:?}"))
                .field_violations;
            assert_eq!(violations.len(), 1, "{violations:?}");
            assert_eq!(violations[0].field, field);
            assert_eq!(violations[0].description, description);
        }
    }
    message
}

/// Whether two JSON texts hold the same data (numbers compared digit for digit).
pub(crate) fn same_json(a: &str, b: &str) -> bool {
    let parse = |text: &str| -> serde_json::Value {
        serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    };
    parse(a) == parse(b)
}

/// Runs blocking Diesel work on a fresh connection to the test database, off the async
/// worker (the tests run on the multi-thread runtime).
pub(crate) fn with_conn<T>(db: &TestDatabase, work: impl FnOnce(&mut PgConnection) -> T) -> T {
    tokio::task::block_in_place(|| work(&mut db.conn()))
}

/// One execution-log row, as stored.
#[derive(Debug, Clone, QueryableByName)]
pub(crate) struct LogRow {
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
    #[diesel(sql_type = Text)]
    pub phase: String,
    #[diesel(sql_type = Text)]
    pub event: String,
    #[diesel(sql_type = Text)]
    pub status: String,
    #[diesel(sql_type = BigInt)]
    pub handler_id: i64,
    #[diesel(sql_type = Text)]
    pub handler_name: String,
    #[diesel(sql_type = Text)]
    pub kind: String,
    #[diesel(sql_type = Text)]
    pub error: String,
    #[diesel(sql_type = Integer)]
    pub duration_ms: i32,
    #[diesel(sql_type = Integer)]
    pub attempt: i32,
    /// jsonb as text (normalised by PostgreSQL; compare with [`same_json`]).
    #[diesel(sql_type = Text)]
    pub data_sent: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub data_returned: Option<String>,
    #[diesel(sql_type = Text)]
    pub response: String,
    #[diesel(sql_type = Nullable<Integer>)]
    pub http_status: Option<i32>,
    #[diesel(sql_type = Nullable<Integer>)]
    pub exit_code: Option<i32>,
    #[diesel(sql_type = BigInt)]
    pub event_id: i64,
    #[diesel(sql_type = Nullable<BigInt>)]
    pub delivery_id: Option<i64>,
}

/// Every execution-log row, in run order (start time, then id).
pub(crate) fn log_rows(db: &TestDatabase) -> Vec<LogRow> {
    with_conn(db, |conn| {
        diesel::sql_query(
            "SELECT created_at, phase, event, status, handler_id, handler_name, kind, error, duration_ms, \
                    attempt, data_sent::text AS data_sent, data_returned::text AS data_returned, response, \
                    http_status, exit_code, event_id, delivery_id \
             FROM execution_logs ORDER BY created_at, id",
        )
        .load(conn)
        .expect("reading execution_logs")
    })
}

/// Polls the execution log until `done` holds and returns the rows; panics with the
/// rows after [`WAIT`].
pub(crate) async fn wait_for_logs(
    db: &TestDatabase,
    what: &str,
    done: impl Fn(&[LogRow]) -> bool,
) -> Vec<LogRow> {
    let deadline = Instant::now() + WAIT;
    loop {
        let rows = log_rows(db);
        if done(&rows) {
            return rows;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for {what}; log rows: {rows:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One delivery row.
#[derive(Debug, Clone, QueryableByName)]
pub(crate) struct DeliveryRow {
    #[diesel(sql_type = BigInt)]
    pub event_id: i64,
    #[diesel(sql_type = SmallInt)]
    pub state: i16,
    #[diesel(sql_type = Integer)]
    pub attempts: i32,
    #[diesel(sql_type = Nullable<Text>)]
    pub last_error: Option<String>,
}

/// Every delivery row, by id.
pub(crate) fn delivery_rows(db: &TestDatabase) -> Vec<DeliveryRow> {
    with_conn(db, |conn| {
        diesel::sql_query(
            "SELECT event_id, state, attempts, last_error FROM deliveries ORDER BY id",
        )
        .load(conn)
        .expect("reading deliveries")
    })
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// The value of a `SELECT count(*) AS n ...` query.
pub(crate) fn count(db: &TestDatabase, sql: &str) -> i64 {
    with_conn(db, |conn| {
        diesel::sql_query(sql)
            .get_result::<Count>(conn)
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .n
    })
}

/// Waits until `count(sql)` is `expected`; panics after [`WAIT`], naming `what`.
pub(crate) async fn wait_for_count(db: &TestDatabase, what: &str, sql: &str, expected: i64) {
    provisioning_tests::eventually(WAIT, what, || {
        std::future::ready((count(db, sql) == expected).then_some(()))
    })
    .await;
}

/// The `n` member of each request body, as the multi-event tests number their events.
pub(crate) fn numbers(requests: &[Recorded]) -> Vec<u64> {
    requests
        .iter()
        .filter_map(|r| r.json().get("n").and_then(serde_json::Value::as_u64))
        .collect()
}

/// Whether the process `pid` is gone: no such process, or a zombie (killed, waiting to
/// be reaped by its parent, which may be an init that never reaps).
pub(crate) fn process_gone(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists; nothing is sent.
    if unsafe { libc::kill(pid, 0) } != 0 {
        return true;
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    // "<pid> (<comm>) <state> ...": the command may contain spaces and parentheses.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next())
        .is_some_and(|state| state == 'Z' || state == 'X')
}
