//! AFTER events end to end: ingestion (Emit, EmitBatch, EmitStream, validation,
//! idempotency, payload filters) and dispatch to real HTTP receivers and real scripts,
//! checked against what the receiver got and what the execution log holds (read with SQL,
//! independently of the log RPCs). Also the multi-process guarantees: handler changes
//! seen at once by another replica, no accepted event lost to a SIGKILL, two replicas
//! sharing work without delivering an attempt twice; and `provctl events emit`.
//!
//! The helpers at the top are shared with `before.rs`.

use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use diesel::sql_types::{BigInt, Integer, Nullable, SmallInt, Text, Timestamptz};
use diesel::{PgConnection, QueryableByName, RunQueryDsl};
use provisioning_client::{proto, Client, ClientError};
use provisioning_tests::receiver::{verify_signature, Receiver, Recorded, Reply};
pub(crate) use provisioning_tests::requests::{http_handler, script_handler};
use provisioning_tests::{
    eventually, prepare_scripts_dir, provctl, run_command, spawn_server, spawn_server_process,
    spawn_server_with, TempDir, TestDatabase,
};

/// How long a test waits for something that normally takes milliseconds.
pub(crate) const WAIT: Duration = Duration::from_secs(20);
/// How long the multi-process tests wait for their whole workload.
const LONG_WAIT: Duration = Duration::from_secs(180);

// ---------------------------------------------------------------------------------
// Helpers shared with before.rs
// ---------------------------------------------------------------------------------

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
        idempotency_key: String::new(),
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
pub(crate) fn invalid_argument<T: std::fmt::Debug>(result: Result<T, ClientError>) -> String {
    match result {
        Err(error) if error.code() == Some(tonic::Code::InvalidArgument) => error
            .status()
            .map(|s| s.message().to_owned())
            .unwrap_or_default(),
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
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

/// The `n` member of each request body, as the multi-event tests number their events.
fn numbers(requests: &[Recorded]) -> Vec<u64> {
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

// ---------------------------------------------------------------------------------
// HTTP delivery
// ---------------------------------------------------------------------------------

/// Handlers must get the emitter's exact bytes (ids beyond 2^53, long decimals, odd
/// spacing) signed so that any Standard Webhooks library accepts them, and the run must
/// be logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_http_delivery_sends_the_exact_bytes_signed_with_the_handler_secret() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let receiver = Receiver::start().await;
    let mut request = http_handler(
        "crm sync",
        "clients.create",
        proto::Phase::After,
        &receiver.url("/hook"),
    );
    if let Some(proto::create_handler_request::Target::Http(http)) = &mut request.target {
        http.headers
            .insert("authorization".into(), "Bearer t0ken".into());
    }
    let handler = create(&server.client, request).await;
    let secret = secret_of(&handler);
    assert!(secret.starts_with("whsec_"), "{secret}");

    let data = r#"{"name":"Zoë \u00e9",  "id": 9007199254740993, "amount":12.345678901234567890, "tags":[ "a" ,"b" ]}"#;
    let reply = emit_after(&server.client, "clients.create", data).await;
    assert!(reply.event_id > 0);
    assert!(!reply.duplicate);
    assert_eq!(reply.deliveries, 1);

    let requests = receiver.wait_for("/hook", 1, WAIT).await;
    let got = &requests[0];
    assert_eq!(got.method, hyper::Method::POST);
    assert_eq!(
        &got.body[..],
        data.as_bytes(),
        "body must be the data exactly as emitted"
    );
    assert!(
        verify_signature(&secret, got),
        "signature does not verify: {:?}",
        got.headers
    );
    assert!(
        !verify_signature("whsec_c2VjcmV0", got),
        "a wrong secret must not verify"
    );
    assert_eq!(got.header("x-provisioning-event"), Some("clients.create"));
    assert_eq!(got.header("x-provisioning-phase"), Some("after"));
    assert_eq!(got.header("x-provisioning-attempt"), Some("1"));
    assert!(got.header("webhook-id").is_some_and(|id| !id.is_empty()));
    assert!(got
        .header("content-type")
        .is_some_and(|t| t.starts_with("application/json")));
    assert_eq!(got.header("authorization"), Some("Bearer t0ken"));

    let rows = wait_for_logs(&db, "the SUCCESS row", |rows| !rows.is_empty()).await;
    assert_eq!(rows.len(), 1, "{rows:#?}");
    let row = &rows[0];
    assert_eq!(row.status, "success");
    assert_eq!(row.http_status, Some(200));
    assert_eq!(row.attempt, 1);
    assert_eq!(row.event_id, reply.event_id);
    assert_eq!(row.handler_id, handler.id);
    assert_eq!(row.handler_name, "crm sync");
    assert_eq!(
        (row.phase.as_str(), row.event.as_str(), row.kind.as_str()),
        ("after", "clients.create", "http")
    );
    assert_eq!(row.error, "");
    assert!(same_json(&row.data_sent, data), "{}", row.data_sent);
    assert!(
        delivery_rows(&db).is_empty(),
        "a delivered delivery row is deleted"
    );
}

/// A handler slower than its timeout must not hang the dispatcher: the attempt fails
/// with a timeout error in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_handler_slower_than_its_timeout_is_logged_as_a_timeout_failure() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let receiver = Receiver::start().await;
    receiver.route("/slow", vec![Reply::ok().delay(Duration::from_secs(5))]);
    let handler = create(
        &server.client,
        proto::CreateHandlerRequest {
            timeout_ms: 300,
            ..http_handler(
                "slow",
                "clients.update",
                proto::Phase::After,
                &receiver.url("/slow"),
            )
        },
    )
    .await;
    emit_after(&server.client, "clients.update", r#"{"id": 1}"#).await;

    let rows = wait_for_logs(&db, "a FAIL row", |rows| !rows.is_empty()).await;
    let row = &rows[0];
    assert_eq!(row.handler_id, handler.id);
    assert_eq!(row.status, "fail");
    assert!(row.error.contains("timed out"), "{}", row.error);
    assert_eq!(row.http_status, None);
    assert!(
        (300..4_000).contains(&row.duration_ms),
        "duration {} ms",
        row.duration_ms
    );
}

/// Retries must follow the schedule and every attempt must be logged, with the delivery
/// removed once it succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_handler_failing_twice_then_succeeding_is_logged_three_times() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let receiver = Receiver::start().await;
    receiver.route(
        "/flaky",
        vec![Reply::text(500, "db down"), Reply::status(500), Reply::ok()],
    );
    let handler = create(
        &server.client,
        http_handler(
            "flaky",
            "accounts.create",
            proto::Phase::After,
            &receiver.url("/flaky"),
        ),
    )
    .await;
    let secret = secret_of(&handler);
    let reply = emit_after(&server.client, "accounts.create", r#"{"id": 178}"#).await;

    let rows = wait_for_logs(&db, "the SUCCESS row", |rows| {
        rows.iter().any(|r| r.status == "success")
    })
    .await;
    let summary: Vec<(i32, &str, Option<i32>)> = rows
        .iter()
        .map(|r| (r.attempt, r.status.as_str(), r.http_status))
        .collect();
    assert_eq!(
        summary,
        [
            (1, "fail", Some(500)),
            (2, "fail", Some(500)),
            (3, "success", Some(200))
        ]
    );
    assert!(rows
        .iter()
        .all(|r| r.event_id == reply.event_id && r.handler_id == handler.id));
    assert!(
        rows[0].delivery_id.is_some() && rows.iter().all(|r| r.delivery_id == rows[0].delivery_id)
    );
    assert_eq!(rows[0].error, "HTTP 500");
    assert_eq!(rows[0].response, "db down");
    assert!(
        delivery_rows(&db).is_empty(),
        "the delivery is gone once delivered"
    );

    let requests = receiver.requests("/flaky");
    assert_eq!(requests.len(), 3);
    let attempts: Vec<_> = requests
        .iter()
        .map(|r| r.header("x-provisioning-attempt"))
        .collect();
    assert_eq!(attempts, [Some("1"), Some("2"), Some("3")]);
    let ids: HashSet<_> = requests.iter().map(|r| r.header("webhook-id")).collect();
    assert_eq!(ids.len(), 1, "webhook-id is stable across retries");
    assert!(requests.iter().all(|r| verify_signature(&secret, r)));
    // Schedule 100 ms, 200 ms (+ up to 20% jitter).
    assert!(requests[1].arrived - requests[0].arrived >= Duration::from_millis(100));
    assert!(requests[2].arrived - requests[1].arrived >= Duration::from_millis(200));
}

/// A delivery out of attempts must become dead (kept, state 3) and not be tried again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_delivery_out_of_attempts_is_dead() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let receiver = Receiver::start().await;
    receiver.route("/down", vec![Reply::text(503, "maintenance")]);
    create(
        &server.client,
        http_handler(
            "down",
            "accounts.delete",
            proto::Phase::After,
            &receiver.url("/down"),
        ),
    )
    .await;
    let reply = emit_after(&server.client, "accounts.delete", r#"{"id": 5}"#).await;

    let rows = wait_for_logs(&db, "three FAIL rows", |rows| rows.len() >= 3).await;
    assert!(
        rows.iter()
            .all(|r| r.status == "fail" && r.http_status == Some(503)),
        "{rows:#?}"
    );
    assert_eq!(
        rows.iter().map(|r| r.attempt).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    let deliveries = delivery_rows(&db);
    assert_eq!(deliveries.len(), 1, "{deliveries:#?}");
    assert_eq!(deliveries[0].event_id, reply.event_id);
    assert_eq!(
        (deliveries[0].state, deliveries[0].attempts),
        (3, 3),
        "{deliveries:#?}"
    );
    assert!(deliveries[0]
        .last_error
        .as_deref()
        .is_some_and(|e| e.contains("503")));

    // Absence can only be observed over time: twice the longest retry delay.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(
        receiver.count("/down"),
        3,
        "a dead delivery is not tried again"
    );
    assert_eq!(log_rows(&db).len(), 3);
}

/// Handlers of one AFTER event run in priority order, and the next starts only when
/// the previous attempt ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_handlers_run_one_after_another_in_priority_order() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let receiver = Receiver::start().await;
    for (name, priority) in [("p30", 30), ("p10", 10), ("p20", 20)] {
        let path = format!("/{name}");
        receiver.route(&path, vec![Reply::ok().delay(Duration::from_millis(150))]);
        create(
            &server.client,
            proto::CreateHandlerRequest {
                priority,
                ..http_handler(
                    name,
                    "subscriptions.activate",
                    proto::Phase::After,
                    &receiver.url(&path),
                )
            },
        )
        .await;
    }
    let reply = emit_after(&server.client, "subscriptions.activate", r#"{"id": 7}"#).await;
    assert_eq!(reply.deliveries, 3);

    let rows = wait_for_logs(&db, "three rows", |rows| rows.len() >= 3).await;
    let names: Vec<&str> = rows.iter().map(|r| r.handler_name.as_str()).collect();
    assert_eq!(names, ["p10", "p20", "p30"]);
    assert!(rows.iter().all(|r| r.status == "success"));
    for pair in rows.windows(2) {
        let ended =
            pair[0].created_at + chrono::Duration::milliseconds(i64::from(pair[0].duration_ms));
        assert!(
            pair[1].created_at >= ended,
            "{} started before {} ended: {rows:#?}",
            pair[1].handler_name,
            pair[0].handler_name
        );
    }

    let requests = receiver.all_requests();
    let paths: Vec<&str> = requests.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["/p10", "/p20", "/p30"]);
    for pair in requests.windows(2) {
        let replied = pair[0].replied.expect("the previous request was answered");
        assert!(
            pair[1].arrived >= replied,
            "{} arrived before {} was answered",
            pair[1].path,
            pair[0].path
        );
    }
}

/// A handler that keeps failing must not hold back the other handlers of the same
/// event: their deliveries go out at once, while its retries are scheduled on their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_after_handler_does_not_block_the_others() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let receiver = Receiver::start().await;
    receiver.route("/broken", vec![Reply::status(500)]);
    for (name, priority) in [("broken", 1), ("a", 2), ("b", 3)] {
        create(
            &server.client,
            proto::CreateHandlerRequest {
                priority,
                ..http_handler(
                    name,
                    "clients.archive",
                    proto::Phase::After,
                    &receiver.url(&format!("/{name}")),
                )
            },
        )
        .await;
    }
    emit_after(&server.client, "clients.archive", r#"{"n": 1}"#).await;
    emit_after(&server.client, "clients.archive", r#"{"n": 2}"#).await;

    let a = receiver.wait_for("/a", 2, Duration::from_secs(5)).await;
    let b = receiver.wait_for("/b", 2, Duration::from_secs(5)).await;
    let broken = receiver.wait_for("/broken", 3, WAIT).await;
    let first_retry = broken
        .iter()
        .filter(|r| r.header("x-provisioning-attempt") == Some("2"))
        .map(|r| r.arrived)
        .min()
        .expect("a second attempt of the broken handler");
    assert!(
        a.iter().chain(&b).all(|r| r.arrived < first_retry),
        "the others waited for the broken handler's retry"
    );
    let mut delivered = numbers(&a);
    delivered.sort_unstable();
    assert_eq!(delivered, [1, 2]);

    let rows = wait_for_logs(&db, "four SUCCESS rows", |rows| {
        rows.iter().filter(|r| r.status == "success").count() >= 4
    })
    .await;
    assert!(rows
        .iter()
        .filter(|r| r.handler_name == "broken")
        .all(|r| r.status == "fail"));
}

/// 410 Gone means the endpoint is gone for good: the handler is disabled with a reason
/// an operator can see in Get, and no new deliveries are made for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_410_disables_the_handler_with_a_visible_reason() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let receiver = Receiver::start().await;
    receiver.route("/gone", vec![Reply::status(410)]);
    let handler = create(
        &server.client,
        http_handler(
            "old endpoint",
            "clients.delete",
            proto::Phase::After,
            &receiver.url("/gone"),
        ),
    )
    .await;
    emit_after(&server.client, "clients.delete", r#"{"id": 3}"#).await;

    let rows = wait_for_logs(&db, "the 410 row", |rows| !rows.is_empty()).await;
    assert_eq!(
        (rows[0].status.as_str(), rows[0].http_status),
        ("fail", Some(410))
    );
    let got = server
        .client
        .get_handler(proto::GetHandlerRequest { id: handler.id })
        .await
        .expect("get handler");
    assert_eq!(
        got.status,
        i32::from(proto::HandlerStatus::Disabled),
        "{got:?}"
    );
    assert!(
        got.disabled_reason.contains("410"),
        "{:?}",
        got.disabled_reason
    );
    let deliveries = delivery_rows(&db);
    assert_eq!(
        deliveries.iter().map(|d| d.state).collect::<Vec<_>>(),
        [3],
        "not retried: {deliveries:#?}"
    );

    let again = emit_after(&server.client, "clients.delete", r#"{"id": 4}"#).await;
    assert_eq!(again.deliveries, 0, "a disabled handler gets no deliveries");
}

/// A handler asking to slow down (429 + Retry-After) is retried when it asked, not on
/// the (much shorter) schedule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_requests_with_retry_after_is_retried_after_the_given_delay() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let receiver = Receiver::start().await;
    receiver.route(
        "/limited",
        vec![Reply::status(429).retry_after(1), Reply::ok()],
    );
    create(
        &server.client,
        http_handler(
            "rate limited",
            "clients.update",
            proto::Phase::After,
            &receiver.url("/limited"),
        ),
    )
    .await;
    emit_after(&server.client, "clients.update", r#"{"id": 9}"#).await;

    let requests = receiver.wait_for("/limited", 2, WAIT).await;
    let gap = requests[1].arrived - requests[0].arrived;
    // The schedule alone would retry after 100-120 ms.
    assert!(
        gap >= Duration::from_millis(950),
        "retried after {gap:?}, before the 1 s Retry-After"
    );
    assert!(gap < Duration::from_secs(5), "retried only after {gap:?}");
    let rows = wait_for_logs(&db, "the SUCCESS row", |rows| {
        rows.iter().any(|r| r.status == "success")
    })
    .await;
    assert_eq!(
        rows.iter().map(|r| r.http_status).collect::<Vec<_>>(),
        [Some(429), Some(200)]
    );
}

// ---------------------------------------------------------------------------------
// Payload filters
// ---------------------------------------------------------------------------------

/// A handler with a payload filter is delivered only the events whose data contains
/// the filter; the others get no delivery row at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_filter_limits_deliveries_to_matching_events() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let receiver = Receiver::start().await;
    let client15 = create(
        &server.client,
        proto::CreateHandlerRequest {
            filter_json: r#"{"id_clients": 15}"#.into(),
            ..http_handler(
                "client 15",
                "accounts.update",
                proto::Phase::After,
                &receiver.url("/c15"),
            )
        },
    )
    .await;
    assert_eq!(
        client15.filter_json.replace(' ', ""),
        r#"{"id_clients":15}"#
    );
    create(
        &server.client,
        proto::CreateHandlerRequest {
            filter_json: r#"{"address": {"country": "NL"}}"#.into(),
            ..http_handler(
                "dutch",
                "accounts.update",
                proto::Phase::After,
                &receiver.url("/nl"),
            )
        },
    )
    .await;

    let cases = [
        (r#"{"n": 1, "id_clients": 15}"#, 1),
        (r#"{"n": 2, "id_clients": 16}"#, 0),
        (r#"{"n": 3, "id_clients": "15"}"#, 0),
        (
            r#"{"n": 4, "id_clients": 15, "address": {"country": "NL", "city": "Delft"}}"#,
            2,
        ),
        (r#"{"n": 5, "address": {"country": "BE"}}"#, 0),
    ];
    let mut matching = BTreeSet::new();
    let mut other = Vec::new();
    for (data, expected) in cases {
        let reply = emit_after(&server.client, "accounts.update", data).await;
        assert_eq!(reply.deliveries, expected, "{data}");
        if expected > 0 {
            matching.insert(reply.event_id);
        } else {
            other.push(reply.event_id);
        }
    }

    let rows = wait_for_logs(&db, "three SUCCESS rows", |rows| rows.len() >= 3).await;
    let logged: BTreeSet<i64> = rows.iter().map(|r| r.event_id).collect();
    assert_eq!(logged, matching);
    let mut c15 = numbers(&receiver.requests("/c15"));
    c15.sort_unstable();
    assert_eq!(c15, [1, 4]);
    assert_eq!(numbers(&receiver.requests("/nl")), [4]);
    let stored_for_others = delivery_rows(&db)
        .iter()
        .filter(|d| other.contains(&d.event_id))
        .count();
    assert_eq!(stored_for_others, 0);
}

/// A filter that is not a JSON object must be refused when the handler is created, not
/// fail later at dispatch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_payload_filter_is_refused_at_create() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    for filter in ["[1, 2]", "{", "15", r#""id_clients""#] {
        let request = proto::CreateHandlerRequest {
            filter_json: filter.into(),
            ..http_handler(
                "filtered",
                "accounts.update",
                proto::Phase::After,
                "http://127.0.0.1:9/x",
            )
        };
        let message = invalid_argument(server.client.create_handler(request).await);
        assert!(message.contains("filter_json"), "{filter}: {message}");
    }
    assert_eq!(count(&db, "SELECT count(*) AS n FROM handlers"), 0);
}

// ---------------------------------------------------------------------------------
// Ingestion: idempotency, validation, batches, streams
// ---------------------------------------------------------------------------------

/// An emitter retrying with the same idempotency key must not cause a second event or
/// a second delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_idempotency_key_returns_the_first_event_and_delivers_once() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let receiver = Receiver::start().await;
    create(
        &server.client,
        http_handler(
            "once",
            "clients.create",
            proto::Phase::After,
            &receiver.url("/once"),
        ),
    )
    .await;
    let keyed = |data: &str| proto::EmitRequest {
        idempotency_key: "order-42".into(),
        ..event_request("clients.create", proto::Phase::After, data)
    };

    let first = server
        .client
        .emit(keyed(r#"{"n": 1}"#))
        .await
        .expect("first emit");
    let second = server
        .client
        .emit(keyed(r#"{"n": 1}"#))
        .await
        .expect("second emit");
    let changed = server
        .client
        .emit(keyed(r#"{"n": 2}"#))
        .await
        .expect("third emit");
    assert!(!first.duplicate);
    assert_eq!(first.deliveries, 1);
    for repeat in [&second, &changed] {
        assert_eq!(repeat.event_id, first.event_id);
        assert!(repeat.duplicate);
        assert_eq!(repeat.deliveries, 0);
    }
    let other = server
        .client
        .emit(proto::EmitRequest {
            idempotency_key: "order-43".into(),
            ..event_request("clients.create", proto::Phase::After, r#"{"n": 3}"#)
        })
        .await
        .expect("emit with another key");
    assert!(!other.duplicate);
    assert_ne!(other.event_id, first.event_id);

    // Concurrent repeats share group-committed transactions: still one event.
    let burst = futures_util::future::join_all((0..10).map(|n| {
        let client = server.client.clone();
        async move {
            let request = proto::EmitRequest {
                idempotency_key: "burst".into(),
                ..event_request(
                    "clients.create",
                    proto::Phase::After,
                    &format!(r#"{{"n": {}}}"#, 100 + n),
                )
            };
            client.emit(request).await.expect("burst emit")
        }
    }))
    .await;
    assert_eq!(
        burst.iter().filter(|r| !r.duplicate).count(),
        1,
        "{burst:?}"
    );
    assert_eq!(
        burst
            .iter()
            .map(|r| r.event_id)
            .collect::<HashSet<_>>()
            .len(),
        1,
        "{burst:?}"
    );

    wait_for_logs(&db, "three SUCCESS rows", |rows| {
        rows.iter().filter(|r| r.status == "success").count() >= 3
    })
    .await;
    let mut delivered = numbers(&receiver.requests("/once"));
    delivered.sort_unstable();
    assert_eq!(delivered.len(), 3, "{delivered:?}");
    assert_eq!(delivered[..2], [1, 3]);
    assert_eq!(count(&db, "SELECT count(*) AS n FROM events"), 3);
    assert_eq!(log_rows(&db).len(), 3);
}

/// Bad input gets INVALID_ARGUMENT naming the field, and nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_events_are_rejected_with_invalid_argument() {
    let db = TestDatabase::new().await;
    let server = spawn_server_with(&db, |config| config.max_payload_bytes = 256).await;
    let oversized = format!(r#"{{"blob": "{}"}}"#, "x".repeat(300));
    let cases: Vec<(&str, &str, &str)> = vec![
        ("clients.explode", r#"{"id": 1}"#, "unknown event"),
        ("", r#"{"id": 1}"#, "event"),
        ("clients.create", "[1, 2]", "JSON object"),
        ("clients.create", r#""text""#, "JSON object"),
        ("clients.create", r#"{"id": "#, "not valid JSON"),
        ("clients.create", "", "not valid JSON"),
        ("clients.create", &oversized, "exceed"),
    ];
    for phase in [proto::Phase::After, proto::Phase::Before] {
        for (event, data, expected) in &cases {
            let message =
                invalid_argument(server.client.emit(event_request(event, phase, data)).await);
            assert!(
                message.contains(expected),
                "{phase:?} {event:?} {data:?}: {message}"
            );
            if *expected != "unknown event" && !event.is_empty() {
                assert!(
                    message.contains("data_json"),
                    "the message names the field: {message}"
                );
            }
        }
    }
    let no_phase = event_request("clients.create", proto::Phase::Unspecified, "{}");
    assert!(invalid_argument(server.client.emit(no_phase).await).contains("phase"));
    let long_key = proto::EmitRequest {
        idempotency_key: "k".repeat(201),
        ..event_request("clients.create", proto::Phase::After, "{}")
    };
    assert!(invalid_argument(server.client.emit(long_key).await).contains("idempotency_key"));
    let nearly_full = format!(r#"{{"blob": "{}"}}"#, "x".repeat(200));
    emit_after(&server.client, "clients.create", &nearly_full).await;
    assert_eq!(
        count(&db, "SELECT count(*) AS n FROM events"),
        1,
        "only the valid event is stored"
    );
}

/// A batch is all or nothing: one bad event rejects it whole, naming the event's index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emit_batch_with_one_bad_event_is_rejected_whole_naming_its_index() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let receiver = Receiver::start().await;
    create(
        &server.client,
        http_handler(
            "h",
            "clients.create",
            proto::Phase::After,
            &receiver.url("/h"),
        ),
    )
    .await;
    let good = |n: u32| {
        event_request(
            "clients.create",
            proto::Phase::After,
            &format!(r#"{{"n": {n}}}"#),
        )
    };

    let unknown = event_request("clients.explode", proto::Phase::After, "{}");
    let message = invalid_argument(
        server
            .client
            .emit_batch(proto::EmitBatchRequest {
                events: vec![good(0), good(1), unknown, good(3)],
            })
            .await,
    );
    assert!(message.contains("events[2]"), "{message}");

    let not_object = event_request("clients.create", proto::Phase::After, "[1]");
    let message = invalid_argument(
        server
            .client
            .emit_batch(proto::EmitBatchRequest {
                events: vec![good(0), good(1), not_object],
            })
            .await,
    );
    assert!(message.contains("events[2].data_json"), "{message}");

    let before = event_request("clients.create", proto::Phase::Before, "{}");
    let message = invalid_argument(
        server
            .client
            .emit_batch(proto::EmitBatchRequest {
                events: vec![good(0), good(1), before],
            })
            .await,
    );
    assert!(message.contains("events[2]"), "{message}");

    invalid_argument(
        server
            .client
            .emit_batch(proto::EmitBatchRequest { events: vec![] })
            .await,
    );
    assert_eq!(
        count(&db, "SELECT count(*) AS n FROM events"),
        0,
        "nothing stored"
    );
    assert_eq!(
        count(&db, "SELECT count(*) AS n FROM deliveries"),
        0,
        "nothing stored"
    );
    assert_eq!(receiver.all_requests().len(), 0);
}

/// EmitBatch stores every event with its deliveries, and each is then delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emit_batch_stores_every_event_with_its_deliveries() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let receiver = Receiver::start().await;
    create(
        &server.client,
        http_handler(
            "h",
            "import.process_success",
            proto::Phase::After,
            &receiver.url("/h"),
        ),
    )
    .await;
    let events: Vec<_> = (0..100)
        .map(|n| {
            event_request(
                "import.process_success",
                proto::Phase::After,
                &format!(r#"{{"n": {n}}}"#),
            )
        })
        .collect();
    let reply = server
        .client
        .emit_batch(proto::EmitBatchRequest { events })
        .await
        .expect("emit batch");
    assert_eq!(reply.acks.len(), 100);
    for (index, ack) in reply.acks.iter().enumerate() {
        assert_eq!(ack.sequence, index as u64);
        assert!(
            ack.event_id > 0 && ack.error_code == 0 && !ack.duplicate,
            "{ack:?}"
        );
        assert_eq!(ack.deliveries, 1);
    }
    let ids: HashSet<i64> = reply.acks.iter().map(|a| a.event_id).collect();
    assert_eq!(ids.len(), 100);
    assert_eq!(count(&db, "SELECT count(*) AS n FROM events"), 100);

    receiver
        .wait_until(WAIT, "every event of the batch", |all| {
            numbers(all).into_iter().collect::<HashSet<_>>().len() == 100
        })
        .await;
    let rows = wait_for_logs(&db, "100 SUCCESS rows", |rows| {
        rows.iter().filter(|r| r.status == "success").count() >= 100
    })
    .await;
    let logged: HashSet<i64> = rows.iter().map(|r| r.event_id).collect();
    assert_eq!(logged, ids);
}

/// EmitStream acknowledges each event in order once stored; a bad event gets an error
/// ack and the stream goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emit_stream_acks_in_order_and_survives_a_bad_event() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let receiver = Receiver::start().await;
    create(
        &server.client,
        http_handler(
            "h",
            "clients.update",
            proto::Phase::After,
            &receiver.url("/h"),
        ),
    )
    .await;
    let requests: Vec<proto::EmitStreamRequest> = (10..16)
        .map(|sequence| {
            let event = match sequence {
                12 => event_request("clients.explode", proto::Phase::After, "{}"),
                14 => event_request("clients.update", proto::Phase::After, "not json"),
                n => event_request(
                    "clients.update",
                    proto::Phase::After,
                    &format!(r#"{{"n": {n}}}"#),
                ),
            };
            proto::EmitStreamRequest {
                sequence,
                event: Some(event),
            }
        })
        .collect();
    let mut acks = server
        .client
        .emit_stream(tokio_stream::iter(requests))
        .await
        .expect("open the stream");
    let mut received = Vec::new();
    while let Some(ack) = tokio::time::timeout(WAIT, acks.message())
        .await
        .expect("acks in time")
        .expect("ack stream")
    {
        received.push(ack);
    }
    let sequences: Vec<u64> = received.iter().map(|a| a.sequence).collect();
    assert_eq!(sequences, [10, 11, 12, 13, 14, 15]);
    for ack in &received {
        if matches!(ack.sequence, 12 | 14) {
            assert_eq!(ack.error_code, 3, "{ack:?}");
            assert_eq!(ack.event_id, 0);
            assert!(!ack.error_message.is_empty());
        } else {
            assert_eq!(ack.error_code, 0, "{ack:?}");
            assert!(ack.event_id > 0);
            assert_eq!(ack.deliveries, 1);
        }
    }
    assert!(
        received[2].error_message.contains("event"),
        "{:?}",
        received[2]
    );
    assert!(
        received[4].error_message.contains("data_json"),
        "{:?}",
        received[4]
    );
    let ids: HashSet<i64> = received
        .iter()
        .filter(|a| a.error_code == 0)
        .map(|a| a.event_id)
        .collect();
    assert_eq!(ids.len(), 4, "each stored event has its own id");
    assert_eq!(count(&db, "SELECT count(*) AS n FROM events"), 4);
    let delivered = receiver.wait_for("/h", 4, WAIT).await;
    let mut ns = numbers(&delivered);
    ns.sort_unstable();
    assert_eq!(ns, [10, 11, 13, 15]);
}

// ---------------------------------------------------------------------------------
// Script handlers (AFTER)
// ---------------------------------------------------------------------------------

/// A script gets the data on stdin and the event in its environment, and nothing of
/// the server's own environment (no HOME, no CARGO_* of the test process).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_script_gets_data_on_stdin_and_the_event_in_a_clean_environment() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    create(
        &server.client,
        script_handler("env", "clients.create", proto::Phase::After, "env.sh"),
    )
    .await;
    let data = r#"{"id": 9007199254740993, "name": "Zoë"}"#;
    let reply = emit_after(&server.client, "clients.create", data).await;

    let rows = wait_for_logs(&db, "the script's row", |rows| !rows.is_empty()).await;
    let row = &rows[0];
    assert_eq!(
        (row.status.as_str(), row.exit_code, row.kind.as_str()),
        ("success", Some(0), "script"),
        "{row:#?}"
    );
    let output = row
        .response
        .strip_prefix("[stderr] ")
        .unwrap_or(&row.response);
    let lines: Vec<&str> = output.lines().collect();
    for expected in [
        "PROVISIONING_EVENT=clients.create".to_owned(),
        "PROVISIONING_PHASE=after".to_owned(),
        format!("PROVISIONING_EVENT_ID={}", reply.event_id),
        "PROVISIONING_ATTEMPT=1".to_owned(),
        format!("stdin={data}"),
    ] {
        assert!(
            lines.contains(&expected.as_str()),
            "{expected:?} missing from:\n{output}"
        );
    }
    assert!(
        !lines.iter().any(|l| l.starts_with("HOME=")),
        "HOME leaked:\n{output}"
    );
    assert!(
        !lines.iter().any(|l| l.starts_with("CARGO")),
        "the server's environment leaked:\n{output}"
    );
}

/// Exit codes decide: 0 is success, any other code or a signal is a failure that is
/// retried like an HTTP failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_script_exit_codes_decide_success_and_failure() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    for (event, path) in [
        ("clients.create", "ok.sh"),
        ("clients.update", "crash.sh"),
        ("clients.delete", "killed.sh"),
    ] {
        create(
            &server.client,
            script_handler(path, event, proto::Phase::After, path),
        )
        .await;
        emit_after(&server.client, event, r#"{"id": 1}"#).await;
    }
    let rows = wait_for_logs(&db, "every attempt", |rows| rows.len() >= 7).await;
    let of = |name: &str| {
        rows.iter()
            .filter(|r| r.handler_name == name)
            .collect::<Vec<_>>()
    };

    let ok = of("ok.sh");
    assert_eq!(ok.len(), 1);
    assert_eq!(
        (ok[0].status.as_str(), ok[0].exit_code),
        ("success", Some(0))
    );

    let crash = of("crash.sh");
    assert_eq!(
        crash.iter().map(|r| r.attempt).collect::<Vec<_>>(),
        [1, 2, 3],
        "retried up to max attempts"
    );
    assert!(
        crash
            .iter()
            .all(|r| r.status == "fail" && r.exit_code == Some(1)),
        "{crash:#?}"
    );
    assert!(crash[0].error.contains("code 1"), "{}", crash[0].error);
    assert!(
        crash[0].response.contains("something broke"),
        "stderr is kept: {}",
        crash[0].response
    );

    let killed = of("killed.sh");
    assert_eq!(killed.len(), 3);
    assert!(
        killed
            .iter()
            .all(|r| r.status == "fail" && r.exit_code.is_none()),
        "{killed:#?}"
    );
    assert!(killed[0].error.contains("signal 9"), "{}", killed[0].error);
}

/// A hanging script is killed at its timeout together with everything it started
/// (its process group), so it cannot leak processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_after_script_is_killed_with_its_process_group() {
    let db = TestDatabase::new().await;
    // One attempt: a retry would start the script again and overwrite the pid file.
    let server = spawn_server_with(&db, |config| config.max_attempts = 1).await;
    let pids = TempDir::new_in(Path::new("/tmp"), "provisioning-hang");
    let pidfile = pids.path().join("pids");
    create(
        &server.client,
        proto::CreateHandlerRequest {
            timeout_ms: 500,
            ..script_handler("hang", "clients.create", proto::Phase::After, "hang.sh")
        },
    )
    .await;
    let data = format!(r#"{{"id": 1, "pidfile": "{}"}}"#, pidfile.display());
    emit_after(&server.client, "clients.create", &data).await;

    let rows = wait_for_logs(&db, "the timeout row", |rows| !rows.is_empty()).await;
    assert_eq!(rows[0].status, "fail");
    assert!(rows[0].error.contains("timed out"), "{}", rows[0].error);
    assert!(
        rows[0].duration_ms < 5_000,
        "killed at its timeout, not when sleep ended"
    );

    let text = std::fs::read_to_string(&pidfile).expect("the script wrote its pids");
    let pids: Vec<i32> = text
        .split_whitespace()
        .map(|p| p.parse().expect("a pid"))
        .collect();
    assert_eq!(pids.len(), 2, "{text}");
    eventually(
        Duration::from_secs(5),
        "the script and its child to be gone",
        || std::future::ready(pids.iter().all(|pid| process_gone(*pid)).then_some(())),
    )
    .await;
}

/// Only programs inside the scripts directory may run: any path leading out of it is
/// refused when the handler is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_path_leaving_the_scripts_directory_is_refused_at_create() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    std::os::unix::fs::symlink("/bin/sh", server.scripts_dir.join("outside.sh")).expect("symlink");
    std::fs::write(server.scripts_dir.join("plain.txt"), "not a program").expect("write");
    std::fs::set_permissions(
        server.scripts_dir.join("plain.txt"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .expect("chmod");
    for path in [
        "../ok.sh",
        "/bin/true",
        "sub/../ok.sh",
        "outside.sh",
        "missing.sh",
        "plain.txt",
        "",
    ] {
        let request = script_handler("escape", "clients.create", proto::Phase::After, path);
        let message = invalid_argument(server.client.create_handler(request).await);
        assert!(message.contains("script.path"), "{path:?}: {message}");
    }
    create(
        &server.client,
        script_handler("fine", "clients.create", proto::Phase::After, "ok.sh"),
    )
    .await;
    assert_eq!(count(&db, "SELECT count(*) AS n FROM handlers"), 1);
}

// ---------------------------------------------------------------------------------
// Several server processes on one database
// ---------------------------------------------------------------------------------

/// Handler changes made through one replica apply to the very next event emitted
/// through another: nothing is cached (the original product waited ~5 minutes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_changes_through_one_replica_apply_at_once_on_another() {
    let db = TestDatabase::new().await;
    let scripts = TempDir::new("provisioning-scripts");
    let a = spawn_server_process(&db, scripts.path(), &[]).await;
    let b = spawn_server_process(&db, scripts.path(), &[]).await;
    let receiver = Receiver::start().await;

    let handler = create(
        &a.client,
        http_handler(
            "h",
            "clients.create",
            proto::Phase::After,
            &receiver.url("/one"),
        ),
    )
    .await;
    assert_eq!(
        emit_after(&b.client, "clients.create", r#"{"n": 1}"#)
            .await
            .deliveries,
        1,
        "created"
    );

    let set_status = |status: proto::HandlerStatus| proto::SetHandlerStatusRequest {
        id: handler.id,
        status: status.into(),
    };
    a.client
        .set_handler_status(set_status(proto::HandlerStatus::Disabled))
        .await
        .expect("disable");
    assert_eq!(
        emit_after(&b.client, "clients.create", r#"{"n": 2}"#)
            .await
            .deliveries,
        0,
        "disabled"
    );
    a.client
        .set_handler_status(set_status(proto::HandlerStatus::Enabled))
        .await
        .expect("enable");
    assert_eq!(
        emit_after(&b.client, "clients.create", r#"{"n": 3}"#)
            .await
            .deliveries,
        1,
        "enabled again"
    );

    // Deliveries use the handler as it is when they run: let event 3 arrive at the old
    // URL before changing it.
    let mut first = numbers(&receiver.wait_for("/one", 2, WAIT).await);
    first.sort_unstable();
    assert_eq!(first, [1, 3]);

    a.client
        .update_handler(proto::UpdateHandlerRequest {
            handler: Some(proto::Handler {
                id: handler.id,
                target: Some(proto::handler::Target::Http(proto::HttpTarget {
                    url: receiver.url("/two"),
                    ..Default::default()
                })),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["http".into()],
            }),
        })
        .await
        .expect("update the URL");
    assert_eq!(
        emit_after(&b.client, "clients.create", r#"{"n": 4}"#)
            .await
            .deliveries,
        1
    );
    assert_eq!(
        numbers(&receiver.wait_for("/two", 1, WAIT).await),
        [4],
        "the new URL is used at once"
    );
    assert_eq!(receiver.requests("/one").len(), 2, "nothing more went to the old URL");

    receiver.route("/guard", vec![Reply::text(403, "blocked")]);
    let guard = create(
        &a.client,
        http_handler(
            "guard",
            "clients.create",
            proto::Phase::Before,
            &receiver.url("/guard"),
        ),
    )
    .await;
    let verdict = emit_before(&b.client, "clients.create", r#"{"n": 5}"#).await;
    assert_eq!(
        verdict.decision,
        i32::from(proto::Decision::Forbidden),
        "{verdict:?}"
    );
    a.client
        .set_handler_status(proto::SetHandlerStatusRequest {
            id: guard.id,
            status: proto::HandlerStatus::Disabled.into(),
        })
        .await
        .expect("disable the guard");
    let verdict = emit_before(&b.client, "clients.create", r#"{"n": 6}"#).await;
    assert_eq!(
        verdict.decision,
        i32::from(proto::Decision::Allowed),
        "{verdict:?}"
    );
    assert!(verdict.results.is_empty());
}

/// An AFTER event accepted by Emit is never lost: a server SIGKILLed in the middle of
/// deliveries leaves its leased work to the next server, which delivers every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_in_flight_when_the_server_is_killed_are_delivered_after_restart() {
    const EVENTS: u64 = 30;
    let db = TestDatabase::new().await;
    let scripts = TempDir::new("provisioning-scripts");
    let receiver = Receiver::start().await;
    receiver.route("/slow", vec![Reply::ok().delay(Duration::from_secs(1))]);
    let mut first = spawn_server_process(&db, scripts.path(), &[]).await;
    create(
        &first.client,
        http_handler(
            "slow",
            "clients.create",
            proto::Phase::After,
            &receiver.url("/slow"),
        ),
    )
    .await;

    let mut accepted = HashSet::new();
    for n in 0..EVENTS {
        let reply = emit_after(&first.client, "clients.create", &format!(r#"{{"n": {n}}}"#)).await;
        assert_eq!(reply.deliveries, 1);
        accepted.insert(reply.event_id);
    }
    receiver.wait_for("/slow", 1, WAIT).await;
    first.kill().await;
    let answered_before_kill = receiver
        .all_requests()
        .iter()
        .filter(|r| r.replied.is_some())
        .count();
    assert!(
        (answered_before_kill as u64) < EVENTS,
        "the kill came too late to interrupt anything"
    );

    let second = spawn_server_process(&db, scripts.path(), &[]).await;
    receiver
        .wait_until(LONG_WAIT, "every accepted event", |all| {
            numbers(all).into_iter().collect::<HashSet<_>>().len() as u64 == EVENTS
        })
        .await;
    eventually(LONG_WAIT, "every delivery settled", || {
        std::future::ready((count(&db, "SELECT count(*) AS n FROM deliveries") == 0).then_some(()))
    })
    .await;
    let delivered: HashSet<i64> = log_rows(&db)
        .iter()
        .filter(|r| r.status == "success")
        .map(|r| r.event_id)
        .collect();
    assert_eq!(
        delivered, accepted,
        "every accepted event has a SUCCESS row"
    );
    drop(second);
}

/// Two replicas on one database share the work through SKIP LOCKED leases: every one of
/// 2,000 events is delivered, both replicas deliver, and no attempt is delivered twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_2000_events_delivering_each_once() {
    const EVENTS: usize = 2_000;
    let db = TestDatabase::new().await;
    let root = TempDir::new("provisioning-replicas");
    let scripts = root.path().join("scripts");
    prepare_scripts_dir(&scripts);
    let a = spawn_server_process(&db, &scripts, &[]).await;
    let b = spawn_server_process(&db, &scripts, &[]).await;
    // A script records each run with its parent, the server process that ran it.
    create(
        &a.client,
        script_handler(
            "record",
            "subscriptions.renew",
            proto::Phase::After,
            "record.sh",
        ),
    )
    .await;
    let event = |n: usize| {
        event_request(
            "subscriptions.renew",
            proto::Phase::After,
            &format!(r#"{{"n": {n}}}"#),
        )
    };

    // Half through EmitBatch on one replica, half through EmitStream on the other, at once.
    let batches = async {
        let mut ids = Vec::new();
        for chunk in (0..EVENTS / 2).collect::<Vec<_>>().chunks(250) {
            let events = chunk.iter().map(|n| event(*n)).collect();
            let reply = a
                .client
                .emit_batch(proto::EmitBatchRequest { events })
                .await
                .expect("emit batch");
            ids.extend(reply.acks.iter().map(|ack| ack.event_id));
        }
        ids
    };
    let stream = async {
        let requests: Vec<_> = (EVENTS / 2..EVENTS)
            .map(|n| proto::EmitStreamRequest {
                sequence: n as u64,
                event: Some(event(n)),
            })
            .collect();
        let mut acks = b
            .client
            .emit_stream(tokio_stream::iter(requests))
            .await
            .expect("open the stream");
        let mut ids = Vec::new();
        while let Some(ack) = acks.message().await.expect("ack stream") {
            assert_eq!(ack.error_code, 0, "{ack:?}");
            ids.push(ack.event_id);
        }
        ids
    };
    let (batched, streamed) = tokio::join!(batches, stream);
    let ids: HashSet<i64> = batched.into_iter().chain(streamed).collect();
    assert_eq!(ids.len(), EVENTS);

    eventually(LONG_WAIT, "2,000 SUCCESS rows", || {
        let done = count(
            &db,
            "SELECT count(*) AS n FROM execution_logs WHERE status = 'success'",
        ) >= EVENTS as i64;
        std::future::ready(done.then_some(()))
    })
    .await;
    assert_eq!(
        count(&db, "SELECT count(*) AS n FROM execution_logs"),
        EVENTS as i64,
        "one row per event, no failure"
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(DISTINCT event_id) AS n FROM execution_logs"
        ),
        EVENTS as i64
    );
    assert_eq!(count(&db, "SELECT count(*) AS n FROM deliveries"), 0);

    let runs =
        std::fs::read_to_string(scripts.join("deliveries.txt")).expect("the script's record");
    let runs: Vec<(i64, u32)> = runs
        .lines()
        .map(|line| {
            let (event_id, parent) = line
                .split_once(' ')
                .unwrap_or_else(|| panic!("bad line {line:?}"));
            (
                event_id.parse().expect("event id"),
                parent.parse().expect("parent pid"),
            )
        })
        .collect();
    assert_eq!(runs.len(), EVENTS, "the handler ran once per event");
    assert_eq!(runs.iter().map(|(id, _)| *id).collect::<HashSet<_>>(), ids);
    let replicas: HashSet<u32> = runs.iter().map(|(_, parent)| *parent).collect();
    assert_eq!(replicas.len(), 2, "both replicas delivered: {replicas:?}");
}

// ---------------------------------------------------------------------------------
// provctl events emit
// ---------------------------------------------------------------------------------

/// `provctl events emit` is how operators emit by hand: it prints the new event's id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provctl_emit_prints_the_event_id() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let receiver = Receiver::start().await;
    create(
        &server.client,
        http_handler(
            "h",
            "clients.create",
            proto::Phase::After,
            &receiver.url("/h"),
        ),
    )
    .await;
    let data = r#"{"id": 9007199254740993, "amount": 12.345678901234567890}"#;
    let mut command = provctl(&server.url);
    command.args(["events", "emit", "clients.create", "--data", data]);
    let output = run_command(command).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    let id: i64 = stdout
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("event "))
        .and_then(|id| id.trim().parse().ok())
        .unwrap_or_else(|| panic!("no event id in:\n{stdout}"));
    assert!(stdout.contains("deliveries: 1"), "{stdout}");
    let requests = receiver.wait_for("/h", 1, WAIT).await;
    assert_eq!(requests[0].body_text(), data);
    assert_eq!(
        count(
            &db,
            &format!("SELECT count(*) AS n FROM events WHERE id = {id}")
        ),
        1
    );
}

/// `--phase before` runs the chain and prints its decision and reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provctl_emit_before_prints_the_decision() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let receiver = Receiver::start().await;
    receiver.route("/guard", vec![Reply::text(403, "credit limit reached")]);
    create(
        &server.client,
        http_handler(
            "guard",
            "clients.create",
            proto::Phase::Before,
            &receiver.url("/guard"),
        ),
    )
    .await;
    let mut command = provctl(&server.url);
    command.args([
        "events",
        "emit",
        "clients.create",
        "--phase",
        "before",
        "--data",
        r#"{"id": 1}"#,
    ]);
    let output = run_command(command).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(stdout.contains("decision: forbidden"), "{stdout}");
    assert!(stdout.contains("reason: credit limit reached"), "{stdout}");

    let mut command = provctl(&server.url);
    command.args([
        "events",
        "emit",
        "clients.update",
        "--phase",
        "before",
        "--data",
        r#"{"id": 1}"#,
    ]);
    let output = run_command(command).await;
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("decision: allowed"),
        "{output:?}"
    );
}

/// `events emit --file` streams a JSON-lines file: a bad line is reported and makes
/// the command fail, while the good lines are stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provctl_emit_file_reports_the_bad_line_and_stores_the_others() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let dir = TempDir::new("provisioning-emit-file");
    let path = dir.path().join("events.jsonl");
    let lines = [
        r#"{"event": "clients.create", "data": {"n": 1, "id": 9007199254740993}}"#,
        r#"{"event": "clients.update", "data": {"n": 2}, "idempotency_key": "k-2"}"#,
        r#"{"event": "clients.explode", "data": {"n": 3}}"#,
        r#"{"event": "clients.delete", "data": {"n": 4}}"#,
    ];
    std::fs::write(&path, lines.join("\n") + "\n").expect("write the file");
    let mut command = provctl(&server.url);
    command.args(["events", "emit", "--file"]).arg(&path);
    let output = run_command(command).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("accepted 3"), "{stdout}");
    assert!(stdout.contains("rejected 1"), "{stdout}");
    assert!(
        stdout.contains("line 3:"),
        "the bad line is named: {stdout}"
    );
    assert!(stdout.contains("clients.explode"), "{stdout}");

    #[derive(QueryableByName)]
    struct Stored {
        #[diesel(sql_type = Text)]
        event: String,
        #[diesel(sql_type = Text)]
        data: String,
    }
    let stored: Vec<Stored> = with_conn(&db, |conn| {
        // Concurrent group commits may number a stream's events out of order.
        diesel::sql_query("SELECT event, data FROM events ORDER BY (data::jsonb ->> 'n')::int")
            .load(conn)
            .expect("events")
    });
    let stored: Vec<(&str, &str)> = stored
        .iter()
        .map(|s| (s.event.as_str(), s.data.as_str()))
        .collect();
    assert_eq!(
        stored,
        [
            ("clients.create", r#"{"n": 1, "id": 9007199254740993}"#),
            ("clients.update", r#"{"n": 2}"#),
            ("clients.delete", r#"{"n": 4}"#),
        ]
    );
}
