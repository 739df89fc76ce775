//! The execution log end to end (issue 4): Search with every filter alone and combined
//! against an independent evaluation of seeded rows, keyset paging over equal
//! timestamps and over many days (data filters read day windows), Tail across server processes and with a reader that never reads, Get,
//! Stats, Retry, Purge and retention, bad filters, and the query plans of every filter
//! on a table large enough for the planner to care.
//!
//! Rows are mostly inserted with SQL, which is clearer than driving handlers to produce
//! thousands of varied rows; the tests about Tail's lag, Retry and cross-replica tails
//! use the real dispatcher and a second `provisiond` process.

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, Utc};
use diesel::sql_types::{Array, BigInt, Date, Integer, Text, Timestamptz};
use diesel::{PgConnection, QueryableByName, RunQueryDsl};
use provisioning_client::{proto, Client, ClientError};
use provisioning_server::db::queries::logs as log_queries;
use provisioning_tests::receiver::{Receiver, Reply};
use provisioning_tests::requests::{http_handler, script_handler};
use provisioning_tests::{
    eventually, spawn_server, spawn_server_process, spawn_server_with, TestDatabase,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

/// How long a test waits for something that normally takes milliseconds.
const WAIT: Duration = Duration::from_secs(30);
/// How long the dispatcher may take for the slow-reader workload.
const LONG_WAIT: Duration = Duration::from_secs(180);

// ---------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------

/// Runs blocking Diesel work on a fresh connection, off the async workers.
fn with_conn<T>(db: &TestDatabase, work: impl FnOnce(&mut PgConnection) -> T) -> T {
    tokio::task::block_in_place(|| work(&mut db.conn()))
}

#[derive(QueryableByName)]
struct Id {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

#[derive(QueryableByName)]
struct IdText {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    text: String,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

fn count(conn: &mut PgConnection, sql: &str) -> i64 {
    diesel::sql_query(sql)
        .get_result::<Count>(conn)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .n
}

/// A seeded execution-log row, as the test knows it.
#[derive(Debug, Clone)]
struct Seeded {
    id: i64,
    created_at: DateTime<Utc>,
    phase: &'static str,
    event: &'static str,
    status: &'static str,
    handler_id: i64,
    error: String,
    duration_ms: i32,
    attempt: i32,
    data: Value,
    /// PostgreSQL's text of the stored jsonb: what `data_contains` searches.
    data_text: String,
    event_id: i64,
}

const EVENTS: [&str; 5] = [
    "clients.create",
    "clients.update",
    "accounts.create",
    "subscriptions.renew",
    "import.process_failed",
];
const ERRORS: [&str; 6] = [
    "HTTP 500",
    "HTTP 503 Service Unavailable",
    "timeout after 5000 ms",
    "50% done_x",
    "connection refused (os error 111)",
    "script exited with code 1",
];
const ACCNAMES: [&str; 7] = ["1", "10", "acc_1", "accX1", "ACC%x", "Bob", "back\\slash"];

/// `n` varied rows (ids unset), a `shared` fraction of them at one timestamp, the rest
/// spread over the three days before it; reproducible from `seed`.
fn generate(n: usize, seed: u64, shared: f64) -> (Vec<Seeded>, DateTime<Utc>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let now_micros = Utc::now().timestamp_micros();
    let shared_at = DateTime::from_timestamp_micros(now_micros - 3_600_000_000).expect("a time");
    let rows = (0..n)
        .map(|_| {
            let created_at = if rng.random_bool(shared) {
                shared_at
            } else {
                DateTime::from_timestamp_micros(
                    now_micros - rng.random_range(0..3 * 86_400_000_000i64),
                )
                .expect("a time")
            };
            let fail = rng.random_bool(0.35);
            let mut data = json!({
                "id": rng.random_range(1..500),
                "accname": ACCNAMES[rng.random_range(0..ACCNAMES.len())],
                "id_clients": rng.random_range(1..20),
            });
            if rng.random_bool(0.3) {
                data["nested"] = json!({"k": if rng.random_bool(0.5) { "v1" } else { "v2" }});
            }
            if rng.random_bool(0.3) {
                let tags: Vec<&str> = ["a", "b", "c"]
                    .into_iter()
                    .filter(|_| rng.random_bool(0.5))
                    .collect();
                data["tags"] = json!(tags);
            }
            Seeded {
                id: 0,
                created_at,
                phase: if rng.random_bool(0.3) {
                    "before"
                } else {
                    "after"
                },
                event: EVENTS[rng.random_range(0..EVENTS.len())],
                status: if fail { "fail" } else { "success" },
                handler_id: rng.random_range(1..=6),
                error: if fail {
                    ERRORS[rng.random_range(0..ERRORS.len())].to_owned()
                } else {
                    String::new()
                },
                duration_ms: rng.random_range(0..2000),
                attempt: [1, 1, 1, 2, 2, 3, 4][rng.random_range(0..7)],
                data,
                data_text: String::new(),
                event_id: rng.random_range(1..200),
            }
        })
        .collect();
    (rows, shared_at)
}

/// Inserts `rows` with ids from the log's sequence (so later rows the server writes
/// never collide) and records each row's id and stored data text.
fn insert_rows(conn: &mut PgConnection, rows: &mut [Seeded]) {
    let ids: Vec<Id> = diesel::sql_query(
        "SELECT nextval('execution_logs_id_seq') AS id FROM generate_series(1, $1)",
    )
    .bind::<BigInt, _>(rows.len() as i64)
    .load(conn)
    .expect("reserving ids");
    for (row, id) in rows.iter_mut().zip(&ids) {
        row.id = id.id;
    }
    diesel::sql_query(
        r#"
INSERT INTO execution_logs (id, created_at, phase, event, status, handler_id, handler_name, kind, error,
    duration_ms, attempt, data_sent, event_id)
SELECT id, created_at, phase, event, status, handler_id, 'handler ' || handler_id, 'http', error,
    duration_ms, attempt, data::jsonb, event_id
FROM unnest($1::bigint[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::text[],
    $8::int[], $9::int[], $10::text[], $11::bigint[])
    AS t(id, created_at, phase, event, status, handler_id, error, duration_ms, attempt, data, event_id)
"#,
    )
    .bind::<Array<BigInt>, _>(rows.iter().map(|r| r.id).collect::<Vec<_>>())
    .bind::<Array<Timestamptz>, _>(rows.iter().map(|r| r.created_at).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(rows.iter().map(|r| r.phase).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(rows.iter().map(|r| r.event).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(rows.iter().map(|r| r.status).collect::<Vec<_>>())
    .bind::<Array<BigInt>, _>(rows.iter().map(|r| r.handler_id).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(rows.iter().map(|r| r.error.clone()).collect::<Vec<_>>())
    .bind::<Array<Integer>, _>(rows.iter().map(|r| r.duration_ms).collect::<Vec<_>>())
    .bind::<Array<Integer>, _>(rows.iter().map(|r| r.attempt).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(rows.iter().map(|r| r.data.to_string()).collect::<Vec<_>>())
    .bind::<Array<BigInt>, _>(rows.iter().map(|r| r.event_id).collect::<Vec<_>>())
    .execute(conn)
    .expect("inserting seeded rows");
    let texts: Vec<IdText> = diesel::sql_query(
        "SELECT id, data_sent::text AS text FROM execution_logs WHERE id = ANY($1)",
    )
    .bind::<Array<BigInt>, _>(rows.iter().map(|r| r.id).collect::<Vec<_>>())
    .load(conn)
    .expect("reading data texts");
    let texts: std::collections::HashMap<i64, String> =
        texts.into_iter().map(|t| (t.id, t.text)).collect();
    for row in rows.iter_mut() {
        row.data_text = texts[&row.id].clone();
    }
}

/// Generates and inserts `n` rows.
fn seed(db: &TestDatabase, n: usize, seed: u64, shared: f64) -> (Vec<Seeded>, DateTime<Utc>) {
    let (mut rows, shared_at) = generate(n, seed, shared);
    with_conn(db, |conn| insert_rows(conn, &mut rows));
    (rows, shared_at)
}

/// Inserts one row now for `handler_id` and tells every replica, as a recorder does.
fn insert_live_row(conn: &mut PgConnection, handler_id: i64, marker: &str) -> i64 {
    let id: Id = diesel::sql_query(
        r#"
INSERT INTO execution_logs (created_at, phase, event, status, handler_id, handler_name, kind, duration_ms,
    attempt, data_sent, event_id)
VALUES (now(), 'after', 'clients.update', 'success', $1, 'direct', 'http', 1, 1, jsonb_build_object('marker', $2::text), 1)
RETURNING id
"#,
    )
    .bind::<BigInt, _>(handler_id)
    .bind::<Text, _>(marker)
    .get_result(conn)
    .expect("inserting a live row");
    diesel::sql_query("SELECT pg_notify('provisioning_logs', $1)")
        .bind::<Text, _>(id.id.to_string())
        .execute(conn)
        .expect("notifying");
    id.id
}

/// PostgreSQL's `@>` on JSON values, written independently of the server.
fn json_contains(data: &Value, pattern: &Value) -> bool {
    match (data, pattern) {
        (Value::Object(data), Value::Object(pattern)) => pattern
            .iter()
            .all(|(key, want)| data.get(key).is_some_and(|have| json_contains(have, want))),
        (Value::Array(data), Value::Array(pattern)) => pattern
            .iter()
            .all(|want| data.iter().any(|have| json_contains(have, want))),
        (data, pattern) => data == pattern,
    }
}

/// Whether `row` matches `filter`, by the API's documented semantics.
fn matches(row: &Seeded, filter: &proto::LogFilter) -> bool {
    let ci =
        |haystack: &str, needle: &str| haystack.to_lowercase().contains(&needle.to_lowercase());
    let status = match proto::RunStatus::try_from(filter.status).expect("a valid status") {
        proto::RunStatus::Unspecified => None,
        proto::RunStatus::Success => Some("success"),
        proto::RunStatus::Fail => Some("fail"),
    };
    let phase = match proto::Phase::try_from(filter.phase).expect("a valid phase") {
        proto::Phase::Unspecified => None,
        proto::Phase::Before => Some("before"),
        proto::Phase::After => Some("after"),
    };
    let time = |t: &Option<prost_types::Timestamp>| {
        t.as_ref()
            .map(|t| DateTime::from_timestamp(t.seconds, t.nanos as u32).expect("a time"))
    };
    status.is_none_or(|s| row.status == s)
        && phase.is_none_or(|p| row.phase == p)
        && (filter.events.is_empty() || filter.events.iter().any(|e| e == row.event))
        && (filter.handler_id == 0 || row.handler_id == filter.handler_id)
        && (filter.data_contains.is_empty() || ci(&row.data_text, &filter.data_contains))
        && (filter.data_json_contains.is_empty()
            || json_contains(
                &row.data,
                &serde_json::from_str(&filter.data_json_contains).expect("JSON"),
            ))
        && (filter.error_contains.is_empty() || ci(&row.error, &filter.error_contains))
        && time(&filter.from).is_none_or(|from| row.created_at >= from)
        && time(&filter.to).is_none_or(|to| row.created_at < to)
        && (filter.attempt == 0 || row.attempt as u32 == filter.attempt)
        && (filter.event_id == 0 || row.event_id == filter.event_id)
}

/// Ids of the matching rows, newest first (start time, then id).
fn expected(rows: &[Seeded], filter: &proto::LogFilter) -> Vec<i64> {
    let mut hits: Vec<&Seeded> = rows.iter().filter(|r| matches(r, filter)).collect();
    hits.sort_by_key(|r| std::cmp::Reverse((r.created_at, r.id)));
    hits.into_iter().map(|r| r.id).collect()
}

fn ts(time: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.timestamp(),
        nanos: time.timestamp_subsec_nanos() as i32,
    }
}

/// Every entry of one Search call.
async fn search(
    client: &Client,
    filter: proto::LogFilter,
    limit: u32,
    cursor: &str,
) -> Result<Vec<proto::LogEntry>, ClientError> {
    let mut stream = client
        .search_logs(proto::SearchLogsRequest {
            filter: Some(filter),
            limit,
            cursor: cursor.to_owned(),
        })
        .await?;
    let mut entries = Vec::new();
    while let Some(entry) = stream.message().await? {
        entries.push(entry);
    }
    Ok(entries)
}

fn ids(entries: &[proto::LogEntry]) -> Vec<i64> {
    entries
        .iter()
        .map(|e| e.log.as_ref().expect("a log").id)
        .collect()
}

/// Every matching id, paging with `limit` and the last entry's cursor until a short
/// page, after which the last cursor must yield nothing; checks no id comes twice.
async fn page_through(client: &Client, filter: &proto::LogFilter, limit: u32) -> Vec<i64> {
    let mut got = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = search(client, filter.clone(), limit, &cursor)
            .await
            .unwrap();
        assert!(page.len() <= limit as usize);
        got.extend(ids(&page));
        match page.last() {
            Some(last) if page.len() == limit as usize => cursor = last.cursor.clone(),
            Some(last) => {
                let after = search(client, filter.clone(), limit, &last.cursor)
                    .await
                    .unwrap();
                assert!(
                    after.is_empty(),
                    "rows after the last page: {:?}",
                    ids(&after)
                );
                break;
            }
            None => break,
        }
    }
    assert_eq!(
        got.iter().collect::<HashSet<_>>().len(),
        got.len(),
        "a row came twice with {filter:?}"
    );
    got
}

/// The next entry of a tail, or its final status; panics if nothing comes for `WAIT`.
#[expect(
    clippy::result_large_err,
    reason = "the item of tonic's own Streaming::message"
)]
async fn next_item(
    stream: &mut tonic::Streaming<proto::LogEntry>,
) -> Result<Option<proto::LogEntry>, tonic::Status> {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .unwrap_or_else(|_| panic!("nothing arrived on the tail within {WAIT:?}"))
}

/// The status of a failed call; panics on success.
fn status_of<T: std::fmt::Debug>(result: Result<T, ClientError>) -> tonic::Status {
    match result {
        Err(ClientError::Rpc(status)) => status,
        other => panic!("expected an error status, got {other:?}"),
    }
}

async fn create(client: &Client, request: proto::CreateHandlerRequest) -> proto::Handler {
    let name = request.name.clone();
    client
        .create_handler(request)
        .await
        .unwrap_or_else(|e| panic!("creating handler {name:?}: {e}"))
}

fn emit_request(event: &str, phase: proto::Phase, data: &str) -> proto::EmitRequest {
    proto::EmitRequest {
        event: event.to_owned(),
        phase: phase.into(),
        data_json: data.to_owned(),
        ..Default::default()
    }
}

/// The filters Search is checked with: each field alone, edge cases, combinations.
fn filter_cases(shared_at: DateTime<Utc>) -> Vec<(&'static str, proto::LogFilter)> {
    let f = proto::LogFilter::default;
    let day = chrono::Duration::days(1);
    vec![
        ("none", f()),
        (
            "status fail",
            proto::LogFilter {
                status: proto::RunStatus::Fail.into(),
                ..f()
            },
        ),
        (
            "status success",
            proto::LogFilter {
                status: proto::RunStatus::Success.into(),
                ..f()
            },
        ),
        (
            "phase before",
            proto::LogFilter {
                phase: proto::Phase::Before.into(),
                ..f()
            },
        ),
        (
            "phase after",
            proto::LogFilter {
                phase: proto::Phase::After.into(),
                ..f()
            },
        ),
        (
            "one event",
            proto::LogFilter {
                events: vec!["clients.update".into()],
                ..f()
            },
        ),
        (
            "two events",
            proto::LogFilter {
                events: vec!["accounts.create".into(), "import.process_failed".into()],
                ..f()
            },
        ),
        (
            "unknown event",
            proto::LogFilter {
                events: vec!["no.such_event".into()],
                ..f()
            },
        ),
        (
            "handler",
            proto::LogFilter {
                handler_id: 3,
                ..f()
            },
        ),
        (
            "data substring, literal underscore",
            proto::LogFilter {
                data_contains: "acc_1".into(),
                ..f()
            },
        ),
        (
            "data substring, case and literal %",
            proto::LogFilter {
                data_contains: "acc%X".into(),
                ..f()
            },
        ),
        (
            "data substring, key and value",
            proto::LogFilter {
                data_contains: r#""accname": "1""#.into(),
                ..f()
            },
        ),
        (
            "data substring, escaped backslash",
            proto::LogFilter {
                data_contains: r"k\\s".into(),
                ..f()
            },
        ),
        (
            "data substring, lone backslash",
            proto::LogFilter {
                data_contains: r"k\s".into(),
                ..f()
            },
        ),
        (
            "data containment",
            proto::LogFilter {
                data_json_contains: r#"{"accname": "1"}"#.into(),
                ..f()
            },
        ),
        (
            "data containment, nested",
            proto::LogFilter {
                data_json_contains: r#"{"nested": {"k": "v1"}}"#.into(),
                ..f()
            },
        ),
        (
            "data containment, array",
            proto::LogFilter {
                data_json_contains: r#"{"tags": ["b"]}"#.into(),
                ..f()
            },
        ),
        (
            "data containment, number",
            proto::LogFilter {
                data_json_contains: r#"{"id_clients": 7}"#.into(),
                ..f()
            },
        ),
        (
            "error substring, literal %",
            proto::LogFilter {
                error_contains: "50%".into(),
                ..f()
            },
        ),
        (
            "error substring, case",
            proto::LogFilter {
                error_contains: "http 5".into(),
                ..f()
            },
        ),
        (
            "error substring, literal _",
            proto::LogFilter {
                error_contains: "_x".into(),
                ..f()
            },
        ),
        (
            "from only",
            proto::LogFilter {
                from: Some(ts(shared_at - day)),
                ..f()
            },
        ),
        (
            "from is inclusive",
            proto::LogFilter {
                from: Some(ts(shared_at)),
                ..f()
            },
        ),
        (
            "to is exclusive",
            proto::LogFilter {
                to: Some(ts(shared_at)),
                ..f()
            },
        ),
        (
            "from and to",
            proto::LogFilter {
                from: Some(ts(shared_at - day * 2)),
                to: Some(ts(shared_at - day)),
                ..f()
            },
        ),
        (
            "from equals to",
            proto::LogFilter {
                from: Some(ts(shared_at)),
                to: Some(ts(shared_at)),
                ..f()
            },
        ),
        ("attempt", proto::LogFilter { attempt: 2, ..f() }),
        (
            "event id",
            proto::LogFilter {
                event_id: 17,
                ..f()
            },
        ),
        (
            "status, handler and from",
            proto::LogFilter {
                status: proto::RunStatus::Fail.into(),
                handler_id: 2,
                from: Some(ts(shared_at - day)),
                ..f()
            },
        ),
        (
            "phase, events and data substring",
            proto::LogFilter {
                phase: proto::Phase::After.into(),
                events: vec!["clients.create".into(), "clients.update".into()],
                data_contains: "ACC".into(),
                ..f()
            },
        ),
        (
            "error, attempt and to",
            proto::LogFilter {
                error_contains: "http".into(),
                attempt: 1,
                to: Some(ts(shared_at)),
                ..f()
            },
        ),
        (
            "containment, status and phase",
            proto::LogFilter {
                data_json_contains: r#"{"accname": "Bob"}"#.into(),
                status: proto::RunStatus::Success.into(),
                phase: proto::Phase::Before.into(),
                ..f()
            },
        ),
        (
            "everything at once",
            proto::LogFilter {
                status: proto::RunStatus::Fail.into(),
                phase: proto::Phase::After.into(),
                events: EVENTS.iter().map(|e| e.to_string()).collect(),
                handler_id: 4,
                data_contains: "id".into(),
                data_json_contains: "{}".into(),
                error_contains: " ".into(),
                from: Some(ts(shared_at - day * 3)),
                to: Some(ts(shared_at + day)),
                attempt: 1,
                event_id: 0,
            },
        ),
    ]
}

// ---------------------------------------------------------------------------------
// Search
// ---------------------------------------------------------------------------------

/// Every filter, alone and combined, must return exactly the rows an independent
/// evaluation of the seeded rows picks, newest first, ties broken by id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_filters_alone_and_combined_match_an_independent_evaluation() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let (rows, shared_at) = seed(&db, 3000, 7, 0.1);
    let mut non_trivial = 0;
    for (name, filter) in filter_cases(shared_at) {
        let want = expected(&rows, &filter);
        let got = search(&server.client, filter.clone(), 100_000, "")
            .await
            .unwrap_or_else(|e| panic!("search {name}: {e}"));
        assert_eq!(ids(&got), want, "filter {name:?}: {filter:?}");
        if !want.is_empty() && want.len() < rows.len() {
            non_trivial += 1;
        }
    }
    // Guard against a vacuous check: nearly every case selects some rows, not all.
    assert!(
        non_trivial >= 28,
        "only {non_trivial} cases selected a proper subset"
    );

    // Every field of an entry is the row's.
    let newest = &search(&server.client, proto::LogFilter::default(), 1, "")
        .await
        .unwrap()[0];
    let log = newest.log.as_ref().unwrap();
    let row = rows.iter().find(|r| r.id == log.id).unwrap();
    assert_eq!(log.handler_name, format!("handler {}", row.handler_id));
    assert_eq!(log.error, row.error);
    assert_eq!(log.attempt as i32, row.attempt);
    assert_eq!(log.duration_ms as i32, row.duration_ms);
    assert_eq!(
        serde_json::from_str::<Value>(&log.data_sent_json).unwrap(),
        row.data
    );
}

/// The limit caps the stream: 0 means 100, and a small limit returns the newest rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_limit_defaults_to_100_and_caps_the_stream() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let (rows, _) = seed(&db, 1200, 11, 0.2);
    let all = expected(&rows, &proto::LogFilter::default());
    let default = search(&server.client, proto::LogFilter::default(), 0, "")
        .await
        .unwrap();
    assert_eq!(ids(&default), all[..100]);
    let five = search(&server.client, proto::LogFilter::default(), 5, "")
        .await
        .unwrap();
    assert_eq!(ids(&five), all[..5]);
    // Larger than one database page (500): the stream spans several queries.
    let many = search(&server.client, proto::LogFilter::default(), 1100, "")
        .await
        .unwrap();
    assert_eq!(ids(&many), all[..1100]);
}

/// Paging with limit 7 and the last entry's cursor visits every row exactly once, in
/// order, even when most rows share one timestamp.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursor_paging_over_equal_timestamps_returns_each_row_once_in_order() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let (rows, shared_at) = seed(&db, 400, 3, 0.6);
    assert!(rows.iter().filter(|r| r.created_at == shared_at).count() > 200);
    for filter in [
        proto::LogFilter::default(),
        proto::LogFilter {
            status: proto::RunStatus::Fail.into(),
            ..Default::default()
        },
        proto::LogFilter {
            from: Some(ts(shared_at)),
            to: Some(ts(shared_at + chrono::Duration::microseconds(1))),
            ..Default::default()
        },
    ] {
        let want = expected(&rows, &filter);
        let got = page_through(&server.client, &filter, 7).await;
        assert_eq!(got, want, "paging with {filter:?}");
    }
}

/// Data and error filters are read a few days at a time (a GIN index yields matches
/// unordered): over rows spread across six weeks, with quiet stretches, rows on
/// partition boundaries and rows stamped after now, whole searches and paging with a
/// small limit must still return every match once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windowed_search_over_many_days_matches_an_independent_evaluation() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let (mut rows, _) = generate(700, 23, 0.0);
    let midnight = Utc::now()
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc();
    let day = chrono::Duration::days(1);
    let mut rng = StdRng::seed_from_u64(23);
    // Days before today holding rows: recent ones with gaps, then a quiet month.
    let days = [0, 1, 2, 5, 9, 10, 11, 44, 47];
    for (i, row) in rows.iter_mut().enumerate() {
        let start = midnight - day * days[rng.random_range(0..days.len())];
        row.created_at = match i % 10 {
            0 => start,              // on a partition boundary, many rows per instant
            1 => midnight + day * 2, // after now
            _ => start + chrono::Duration::microseconds(rng.random_range(0..86_400_000_000)),
        };
    }
    with_conn(&db, |conn| insert_rows(conn, &mut rows));
    let f = proto::LogFilter::default;
    let cases = [
        proto::LogFilter {
            data_contains: "acc".into(),
            ..f()
        },
        proto::LogFilter {
            data_contains: r#""accname": "1""#.into(),
            ..f()
        },
        proto::LogFilter {
            data_json_contains: r#"{"accname": "Bob"}"#.into(),
            ..f()
        },
        proto::LogFilter {
            error_contains: "http".into(),
            status: proto::RunStatus::Fail.into(),
            ..f()
        },
        proto::LogFilter {
            data_json_contains: "{}".into(),
            from: Some(ts(midnight - day * 10 + chrono::Duration::hours(3))),
            to: Some(ts(midnight - day)),
            ..f()
        },
        proto::LogFilter {
            data_contains: "id".into(),
            to: Some(ts(midnight - day * 9)),
            ..f()
        },
        proto::LogFilter {
            data_json_contains: r#"{"nested": {"k": "v2"}}"#.into(),
            from: Some(ts(midnight - day * 45)),
            ..f()
        },
    ];
    for filter in cases {
        let want = expected(&rows, &filter);
        assert!(want.len() > 7, "too few matches to page: {filter:?}");
        let all = search(&server.client, filter.clone(), 100_000, "")
            .await
            .unwrap();
        assert_eq!(ids(&all), want, "one search with {filter:?}");
        let got = page_through(&server.client, &filter, 7).await;
        assert_eq!(got, want, "paging with {filter:?}");
    }
}

/// Bad filters and arguments get INVALID_ARGUMENT with a message naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_filters_are_invalid_arguments_naming_the_field() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let client = &server.client;
    let now = Utc::now();
    let f = proto::LogFilter::default;
    let cases: Vec<(proto::LogFilter, u32, &str, &str)> = vec![
        (
            proto::LogFilter {
                from: Some(ts(now)),
                to: Some(ts(now - chrono::Duration::seconds(1))),
                ..f()
            },
            0,
            "",
            "filter.from:",
        ),
        (
            proto::LogFilter { status: 7, ..f() },
            0,
            "",
            "filter.status:",
        ),
        (proto::LogFilter { phase: 7, ..f() }, 0, "", "filter.phase:"),
        (
            proto::LogFilter {
                data_json_contains: "{\"a\":".into(),
                ..f()
            },
            0,
            "",
            "filter.data_json_contains:",
        ),
        (
            proto::LogFilter {
                data_json_contains: "[1, 2]".into(),
                ..f()
            },
            0,
            "",
            "filter.data_json_contains:",
        ),
        (
            proto::LogFilter {
                from: Some(prost_types::Timestamp {
                    seconds: 0,
                    nanos: -5,
                }),
                ..f()
            },
            0,
            "",
            "filter.from:",
        ),
        (f(), 100_001, "", "limit:"),
        (f(), 0, "not-a-cursor!", "cursor:"),
        (f(), 0, "AAAA", "cursor:"),
    ];
    for (filter, limit, cursor, prefix) in cases {
        let status = status_of(search(client, filter.clone(), limit, cursor).await);
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{filter:?}: {status:?}"
        );
        assert!(
            status.message().starts_with(prefix),
            "{prefix} expected, got {:?}",
            status.message()
        );
    }
    let tail = |filter: proto::LogFilter, backlog: u32, cursor: &str| {
        client.tail_logs(proto::TailLogsRequest {
            filter: Some(filter),
            backlog,
            cursor: cursor.to_owned(),
        })
    };
    for (result, prefix) in [
        (
            tail(proto::LogFilter { status: 9, ..f() }, 0, "").await,
            "filter.status:",
        ),
        (tail(f(), 10_001, "").await, "backlog:"),
        (tail(f(), 0, "%%%").await, "cursor:"),
        (
            tail(
                proto::LogFilter {
                    data_json_contains: "1".into(),
                    ..f()
                },
                0,
                "",
            )
            .await,
            "filter.data_json_contains:",
        ),
    ] {
        let status = status_of(result);
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().starts_with(prefix),
            "{prefix} expected, got {:?}",
            status.message()
        );
    }
    let stats = status_of(
        client
            .log_stats(proto::LogStatsRequest {
                handler_id: 0,
                from: Some(ts(now)),
                to: Some(ts(now - chrono::Duration::hours(1))),
            })
            .await,
    );
    assert_eq!(stats.code(), tonic::Code::InvalidArgument);
    assert!(
        stats.message().starts_with("from:"),
        "{:?}",
        stats.message()
    );
    let purge = status_of(client.purge(proto::PurgeRequest { older_than: None }).await);
    assert_eq!(purge.code(), tonic::Code::InvalidArgument);
    assert!(
        purge.message().starts_with("older_than:"),
        "{:?}",
        purge.message()
    );
}

/// Times at the ends of what a timestamp can say get an answer, never INTERNAL: bounds
/// before PostgreSQL's earliest time (4714-11-24 BC) mean the same as that time, a
/// bound in chrono's last microsecond and a cursor before PostgreSQL's earliest time
/// are INVALID_ARGUMENT. Found while writing the fuzz target `log_filter`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn times_at_the_ends_of_the_range_are_answered_not_internal() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let client = &server.client;
    let (min, max) = (DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MAX_UTC);
    let earliest = DateTime::from_timestamp_micros(-210_866_803_200_000_000).unwrap();
    let search = |filter: proto::LogFilter, cursor: String| {
        client.search_logs(proto::SearchLogsRequest {
            filter: Some(filter),
            limit: 10,
            cursor,
        })
    };
    for filter in [
        proto::LogFilter {
            from: Some(ts(min)),
            to: Some(ts(earliest - chrono::Duration::days(400))),
            data_contains: "x".into(),
            ..Default::default()
        },
        proto::LogFilter {
            to: Some(ts(earliest)),
            error_contains: "x".into(),
            ..Default::default()
        },
        proto::LogFilter {
            from: Some(ts(min)),
            ..Default::default()
        },
    ] {
        let mut rows = search(filter.clone(), String::new()).await.expect("search");
        let first = rows.message().await;
        assert!(
            matches!(first, Ok(None)),
            "{filter:?} in an empty log: {first:?}"
        );
    }
    let stats = client
        .log_stats(proto::LogStatsRequest {
            handler_id: 0,
            from: None,
            to: Some(ts(min)),
        })
        .await
        .expect("stats ending at chrono's earliest time");
    assert!(stats.handlers.is_empty());
    let purge = client
        .purge(proto::PurgeRequest {
            older_than: Some(ts(min)),
        })
        .await
        .expect("purge before chrono's earliest time");
    assert_eq!(purge.deleted, 0);

    let too_early = log_queries::Position {
        created_at: earliest - chrono::Duration::microseconds(1),
        id: 1,
    };
    let too_early = provisioning_server::domain::logs::encode_cursor(too_early);
    let last = proto::LogFilter {
        from: Some(ts(max)),
        ..Default::default()
    };
    for (result, prefix) in [
        (search(last, String::new()).await, "filter.from:"),
        (
            search(Default::default(), too_early.clone()).await,
            "cursor:",
        ),
        (
            client
                .tail_logs(proto::TailLogsRequest {
                    filter: None,
                    backlog: 0,
                    cursor: too_early,
                })
                .await,
            "cursor:",
        ),
    ] {
        let status = status_of(result);
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().starts_with(prefix), "{status:?}");
    }
    let stats = status_of(
        client
            .log_stats(proto::LogStatsRequest {
                handler_id: 0,
                from: None,
                to: Some(ts(max)),
            })
            .await,
    );
    assert_eq!(stats.code(), tonic::Code::InvalidArgument, "{stats:?}");
}

// ---------------------------------------------------------------------------------
// Get and Stats
// ---------------------------------------------------------------------------------

/// Get returns every column of the run, with NULLs as the proto's empty values, and
/// NOT_FOUND for an unknown id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_returns_the_whole_run_and_not_found_for_unknown_ids() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let created_at =
        DateTime::from_timestamp_micros(Utc::now().timestamp_micros() - 5_000_000).unwrap();
    let (before_id, after_id) = with_conn(&db, |conn| {
        let before: Id = diesel::sql_query(
            r#"
INSERT INTO execution_logs (created_at, phase, event, status, handler_id, handler_name, kind, error, duration_ms,
    attempt, data_sent, data_returned, response, http_status, exit_code, event_id, delivery_id)
VALUES ($1, 'before', 'clients.create', 'success', 42, 'credit check', 'script', '', 12, 1,
    '{"id": 178, "accname": "1"}', '{"id": 178, "accname": "1", "checked": true}', 'ok', NULL, 0, 9, NULL)
RETURNING id
"#,
        )
        .bind::<Timestamptz, _>(created_at)
        .get_result(conn)
        .unwrap();
        let after: Id = diesel::sql_query(
            r#"
INSERT INTO execution_logs (created_at, phase, event, status, handler_id, handler_name, kind, error, duration_ms,
    attempt, data_sent, data_returned, response, http_status, exit_code, event_id, delivery_id)
VALUES ($1, 'after', 'accounts.update', 'fail', 43, 'crm sync', 'http', 'HTTP 500', 250, 3,
    '{"id": 7}', NULL, 'upstream broke', 500, NULL, 10, 77)
RETURNING id
"#,
        )
        .bind::<Timestamptz, _>(created_at)
        .get_result(conn)
        .unwrap();
        (before.id, after.id)
    });
    let before = server
        .client
        .get_log(proto::GetLogRequest { id: before_id })
        .await
        .unwrap();
    assert_eq!(before.id, before_id);
    assert_eq!(before.created_at, Some(ts(created_at)));
    assert_eq!(before.phase(), proto::Phase::Before);
    assert_eq!(before.event, "clients.create");
    assert_eq!(before.status(), proto::RunStatus::Success);
    assert_eq!(
        (before.handler_id, before.handler_name.as_str()),
        (42, "credit check")
    );
    assert_eq!(before.kind(), proto::HandlerKind::Script);
    assert_eq!(
        (before.error.as_str(), before.duration_ms, before.attempt),
        ("", 12, 1)
    );
    assert_eq!(
        serde_json::from_str::<Value>(&before.data_sent_json).unwrap(),
        json!({"id": 178, "accname": "1"})
    );
    assert_eq!(
        serde_json::from_str::<Value>(&before.data_returned_json).unwrap(),
        json!({"id": 178, "accname": "1", "checked": true})
    );
    assert_eq!(
        (
            before.response.as_str(),
            before.http_status,
            before.exit_code
        ),
        ("ok", 0, Some(0))
    );
    assert_eq!((before.event_id, before.delivery_id), (9, 0));

    let after = server
        .client
        .get_log(proto::GetLogRequest { id: after_id })
        .await
        .unwrap();
    assert_eq!(
        (after.phase(), after.status(), after.kind()),
        (
            proto::Phase::After,
            proto::RunStatus::Fail,
            proto::HandlerKind::Http
        )
    );
    assert_eq!(
        (after.error.as_str(), after.duration_ms, after.attempt),
        ("HTTP 500", 250, 3)
    );
    assert_eq!(after.data_returned_json, "");
    assert_eq!(
        (after.response.as_str(), after.http_status, after.exit_code),
        ("upstream broke", 500, None)
    );
    assert_eq!((after.event_id, after.delivery_id), (10, 77));

    let missing = status_of(
        server
            .client
            .get_log(proto::GetLogRequest {
                id: after_id + 1000,
            })
            .await,
    );
    assert_eq!(missing.code(), tonic::Code::NotFound);
}

/// PostgreSQL's `percentile_cont`, computed independently.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let position = p * (sorted.len() - 1) as f64;
    let (low, high) = (position.floor() as usize, position.ceil() as usize);
    sorted[low] + (sorted[high] - sorted[low]) * (position - low as f64)
}

/// Stats counts runs per handler in the window, with the success rate, the duration
/// percentiles and the handler's latest name; one handler when asked; 24 h by default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_runs_and_duration_percentiles_per_handler() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let now = Utc::now();
    let minutes = |m: i64| now - chrono::Duration::minutes(m);
    // (handler, name, status, duration, minutes ago)
    let mut runs: Vec<(i64, &str, &str, i32, i64)> = Vec::new();
    for (i, duration) in (10..=100).step_by(10).enumerate() {
        let status = if i % 4 == 3 { "fail" } else { "success" };
        runs.push((
            11,
            if i == 9 { "new name" } else { "old name" },
            status,
            duration,
            100 - i as i64,
        ));
    }
    runs.push((12, "other", "fail", 5, 30));
    runs.push((12, "other", "success", 7, 20));
    runs.push((11, "ancient", "success", 99_999, 26 * 60)); // outside the default window
    with_conn(&db, |conn| {
        for (handler, name, status, duration, ago) in &runs {
            diesel::sql_query(
                r#"
INSERT INTO execution_logs (created_at, phase, event, status, handler_id, handler_name, kind, duration_ms, attempt,
    data_sent, event_id)
VALUES ($1, 'after', 'clients.create', $2, $3, $4, 'http', $5, 1, '{}', 1)
"#,
            )
            .bind::<Timestamptz, _>(minutes(*ago))
            .bind::<Text, _>(*status)
            .bind::<BigInt, _>(*handler)
            .bind::<Text, _>(*name)
            .bind::<Integer, _>(*duration)
            .execute(conn)
            .unwrap();
        }
    });
    let stats = server
        .client
        .log_stats(proto::LogStatsRequest::default())
        .await
        .unwrap()
        .handlers;
    assert_eq!(
        stats.iter().map(|s| s.handler_id).collect::<Vec<_>>(),
        [11, 12]
    );
    let h11 = &stats[0];
    assert_eq!((h11.total, h11.success, h11.fail), (10, 8, 2));
    assert_eq!(h11.handler_name, "new name");
    assert!((h11.success_rate - 0.8).abs() < 1e-9);
    let durations: Vec<f64> = (10..=100).step_by(10).map(f64::from).collect();
    for (got, p) in [(h11.p50_ms, 0.5), (h11.p95_ms, 0.95), (h11.p99_ms, 0.99)] {
        assert!(
            (got - percentile(&durations, p)).abs() < 1e-9,
            "p{p}: {got}"
        );
    }
    let h12 = &stats[1];
    assert_eq!(
        (h12.total, h12.success, h12.fail, h12.handler_name.as_str()),
        (2, 1, 1, "other")
    );
    assert!((h12.p50_ms - 6.0).abs() < 1e-9);

    // One handler, and an explicit window that reaches the old run.
    let one = server
        .client
        .log_stats(proto::LogStatsRequest {
            handler_id: 11,
            from: Some(ts(now - chrono::Duration::hours(30))),
            to: Some(ts(now)),
        })
        .await
        .unwrap()
        .handlers;
    assert_eq!(one.len(), 1);
    assert_eq!((one[0].handler_id, one[0].total), (11, 11));
}

// ---------------------------------------------------------------------------------
// Tail
// ---------------------------------------------------------------------------------

/// A tail on one server receives a run logged by another server process on the same
/// database (the BEFORE chain runs, and logs, on the replica that got the Emit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_delivers_a_run_logged_by_another_server_process() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let other = spawn_server_process(&db, &server.scripts_dir, &[]).await;
    let handler = create(
        &other.client,
        script_handler("tail me", "clients.update", proto::Phase::Before, "ok.sh"),
    )
    .await;
    let filter = proto::LogFilter {
        handler_id: handler.id,
        ..Default::default()
    };
    let mut tail = server
        .client
        .tail_logs(proto::TailLogsRequest {
            filter: Some(filter),
            backlog: 0,
            cursor: String::new(),
        })
        .await
        .unwrap();
    let reply = other
        .client
        .emit(emit_request(
            "clients.update",
            proto::Phase::Before,
            r#"{"marker": "cross-replica"}"#,
        ))
        .await
        .unwrap();
    assert_eq!(reply.decision(), proto::Decision::Allowed);
    let entry = next_item(&mut tail).await.unwrap().expect("an entry");
    let log = entry.log.expect("a log");
    assert_eq!(
        (log.handler_id, log.phase()),
        (handler.id, proto::Phase::Before)
    );
    assert!(
        log.data_sent_json.contains("cross-replica"),
        "{}",
        log.data_sent_json
    );

    // A row written by anything that notifies like a recorder arrives too.
    let id = with_conn(&db, |conn| insert_live_row(conn, handler.id, "direct"));
    let entry = next_item(&mut tail).await.unwrap().expect("an entry");
    assert_eq!(entry.log.unwrap().id, id);
    drop(tail);
}

/// A backlog comes first, oldest first (the newest N matching rows), then live rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_backlog_sends_the_newest_rows_oldest_first_then_live_rows() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let (rows, _) = seed(&db, 300, 5, 0.3);
    let filter = proto::LogFilter {
        handler_id: 2,
        ..Default::default()
    };
    let mut want: Vec<i64> = expected(&rows, &filter).into_iter().take(10).collect();
    want.reverse();
    let mut tail = server
        .client
        .tail_logs(proto::TailLogsRequest {
            filter: Some(filter),
            backlog: 10,
            cursor: String::new(),
        })
        .await
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..10 {
        got.push(
            next_item(&mut tail)
                .await
                .unwrap()
                .expect("an entry")
                .log
                .unwrap()
                .id,
        );
    }
    assert_eq!(got, want);
    let other_handler = with_conn(&db, |conn| insert_live_row(conn, 3, "not for this tail"));
    let live = with_conn(&db, |conn| insert_live_row(conn, 2, "live"));
    let entry = next_item(&mut tail).await.unwrap().expect("an entry");
    assert_eq!(
        entry.log.unwrap().id,
        live,
        "row {other_handler} of another handler must not arrive"
    );
}

/// A row that becomes visible after rows with higher ids (its transaction committed
/// later, as when two replicas' batches overlap) still reaches the tail, once, even
/// without a notification of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_delivers_rows_committed_out_of_id_order_exactly_once() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let mut tail = server
        .client
        .tail_logs(proto::TailLogsRequest {
            filter: Some(proto::LogFilter {
                handler_id: 9,
                ..Default::default()
            }),
            backlog: 0,
            cursor: String::new(),
        })
        .await
        .unwrap();
    // A transaction that takes an id now and commits later.
    let (id_sender, id_receiver) = std::sync::mpsc::channel();
    let (commit_sender, commit_receiver) = std::sync::mpsc::channel::<()>();
    let url = db.url.clone();
    let slow = std::thread::spawn(move || {
        use diesel::Connection;
        let mut conn = PgConnection::establish(&url).unwrap();
        conn.transaction::<_, diesel::result::Error, _>(|conn| {
            let id: Id = diesel::sql_query(
                r#"
INSERT INTO execution_logs (created_at, phase, event, status, handler_id, handler_name, kind, duration_ms,
    attempt, data_sent, event_id)
VALUES (now(), 'after', 'clients.update', 'success', 9, 'slow', 'http', 1, 1, '{}', 1)
RETURNING id
"#,
            )
            .get_result(conn)?;
            id_sender.send(id.id).unwrap();
            commit_receiver.recv().unwrap();
            Ok(())
        })
        .unwrap();
    });
    let late = tokio::task::block_in_place(|| id_receiver.recv().unwrap());
    let early = with_conn(&db, |conn| insert_live_row(conn, 9, "committed first"));
    assert!(early > late);
    assert_eq!(
        next_item(&mut tail).await.unwrap().unwrap().log.unwrap().id,
        early
    );
    commit_sender.send(()).unwrap();
    tokio::task::block_in_place(|| slow.join().unwrap());
    assert_eq!(
        next_item(&mut tail).await.unwrap().unwrap().log.unwrap().id,
        late
    );
    let after = with_conn(&db, |conn| insert_live_row(conn, 9, "after"));
    assert_eq!(
        next_item(&mut tail).await.unwrap().unwrap().log.unwrap().id,
        after
    );
    // Nothing is sent twice while the look-back window passes.
    let again = tokio::time::timeout(Duration::from_secs(7), tail.message()).await;
    assert!(again.is_err(), "unexpected item: {again:?}");
}

/// A stopping server ends its live tails (they never end by themselves and would hold
/// the graceful shutdown open) with UNAVAILABLE and the cursor to resume from elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn server_shutdown_ends_live_tails_with_a_resumable_status() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let mut tail = server
        .client
        .tail_logs(proto::TailLogsRequest {
            filter: None,
            backlog: 0,
            cursor: String::new(),
        })
        .await
        .unwrap();
    let id = with_conn(&db, |conn| insert_live_row(conn, 1, "before the stop"));
    let entry = next_item(&mut tail).await.unwrap().unwrap();
    assert_eq!(entry.log.as_ref().unwrap().id, id);
    let stopping = tokio::spawn(server.stop());
    let status = next_item(&mut tail).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status
            .message()
            .ends_with(&format!("resume with cursor {}", entry.cursor)),
        "{:?}",
        status.message()
    );
    stopping.await.unwrap();
}

/// The domain side of the above: cancelling the store's shutdown token ends a tail
/// with a "shutting down" item carrying the last cursor sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_the_log_store_shutdown_token_ends_its_tails() {
    use provisioning_server::domain::logs::{LogFilter, LogStore, TailItem, TailStart};
    use tokio_stream::StreamExt;
    let db = TestDatabase::new().await;
    let token = tokio_util::sync::CancellationToken::new();
    let pool =
        tokio::task::block_in_place(|| provisioning_server::db::Db::connect(&db.url, 2)).unwrap();
    let signals = provisioning_server::listener::Signals::detached();
    let store = LogStore::new(pool, signals.clone()).with_shutdown(token.clone());
    let mut tail = store
        .tail(LogFilter::default(), TailStart::Now)
        .await
        .unwrap();
    let id = with_conn(&db, |conn| insert_live_row(conn, 1, "seen"));
    signals.logs.send(id).unwrap();
    let first = tokio::time::timeout(WAIT, tail.next())
        .await
        .unwrap()
        .unwrap();
    let cursor = match first {
        TailItem::Entry(entry) => {
            assert_eq!(entry.log.id, id);
            entry.cursor
        }
        other => panic!("expected an entry, got {other:?}"),
    };
    token.cancel();
    match tokio::time::timeout(WAIT, tail.next()).await.unwrap() {
        Some(TailItem::ShuttingDown { cursor: Some(last) }) => assert_eq!(last, cursor),
        other => panic!("expected the shutdown notice, got {other:?}"),
    }
    assert!(tokio::time::timeout(WAIT, tail.next())
        .await
        .unwrap()
        .is_none());
}

/// A reader that never reads does not slow the dispatcher: every delivery runs and is
/// logged while it sleeps. It then gets RESOURCE_EXHAUSTED with the cursor of the last
/// row it was sent, and resuming from that cursor yields exactly the remaining rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_tail_reader_lags_without_slowing_the_dispatcher_and_resumes_without_loss() {
    const N: usize = 4000;
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let receiver = Receiver::start().await;
    let handler = create(
        &server.client,
        http_handler(
            "fast",
            "clients.update",
            proto::Phase::After,
            &receiver.url("/fast"),
        ),
    )
    .await;
    let filter = proto::LogFilter {
        handler_id: handler.id,
        ..Default::default()
    };
    // The tail gets a connection of its own with HTTP/2 windows of 64 KiB (hyper's
    // default stream window is 2 MiB): what a stalled reader's client buffers stays
    // small, so the server-side buffer fills after a predictable number of rows.
    let channel = tonic::transport::Endpoint::from_shared(server.url.clone())
        .unwrap()
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .unwrap();
    let tail_client = Client::from_channel(channel);
    let mut tail = tail_client
        .tail_logs(proto::TailLogsRequest {
            filter: Some(filter.clone()),
            backlog: 0,
            cursor: String::new(),
        })
        .await
        .unwrap();

    let pad = "x".repeat(300);
    let events = (0..N)
        .map(|i| {
            emit_request(
                "clients.update",
                proto::Phase::After,
                &format!(r#"{{"n": {i}, "pad": "{pad}"}}"#),
            )
        })
        .collect();
    let started = Instant::now();
    server
        .client
        .emit_batch(proto::EmitBatchRequest { events })
        .await
        .unwrap();
    let handler_id = handler.id;
    let logged = eventually(LONG_WAIT, "every delivery logged", || {
        let db = &db;
        async move {
            let n = with_conn(db, |conn| {
                count(
                    conn,
                    &format!(
                        "SELECT count(*) AS n FROM execution_logs WHERE handler_id = {handler_id}"
                    ),
                )
            });
            (n as usize >= N).then_some(n as usize)
        }
    })
    .await;
    println!(
        "{logged} runs delivered and logged in {:?} with a stalled tail",
        started.elapsed()
    );
    // At least once: a delivery may in principle run twice; the tail must carry every row.
    assert!(receiver.count("/fast") >= N);

    let mut seen: Vec<proto::LogEntry> = Vec::new();
    let status = loop {
        match next_item(&mut tail).await {
            Ok(Some(entry)) => seen.push(entry),
            Ok(None) => panic!("the tail ended without a status after {} rows", seen.len()),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status
            .message()
            .starts_with("tail lagged behind: resume with cursor "),
        "{:?}",
        status.message()
    );
    let cursor = status.message().rsplit(' ').next().unwrap().to_owned();
    assert!(
        !seen.is_empty() && seen.len() < logged,
        "{} rows before the lag",
        seen.len()
    );
    assert_eq!(cursor, seen.last().unwrap().cursor);
    println!("lagged after {} rows", seen.len());

    let mut resumed = tail_client
        .tail_logs(proto::TailLogsRequest {
            filter: Some(filter),
            backlog: 0,
            cursor,
        })
        .await
        .unwrap();
    let mut all = ids(&seen);
    while all.len() < logged {
        let entry = next_item(&mut resumed).await.unwrap().expect("an entry");
        all.push(entry.log.unwrap().id);
    }
    let unique: BTreeSet<i64> = all.iter().copied().collect();
    assert_eq!(unique.len(), all.len(), "a row came twice");
    let stored: BTreeSet<i64> = with_conn(&db, |conn| {
        diesel::sql_query(format!(
            "SELECT id FROM execution_logs WHERE handler_id = {handler_id}"
        ))
        .load::<Id>(conn)
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect()
    });
    assert_eq!(unique, stored);
    drop((tail, resumed));
}

// ---------------------------------------------------------------------------------
// Retry
// ---------------------------------------------------------------------------------

/// Retry runs a failed AFTER delivery again: a new row, the old one unchanged. BEFORE
/// and successful runs cannot be retried; a run whose event or handler is gone, or an
/// unknown run, is NOT_FOUND; a disabled handler must be enabled first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_runs_a_failed_delivery_again_and_refuses_what_cannot_be_retried() {
    let db = TestDatabase::new().await;
    // One attempt only: the failure makes the delivery dead, so only Retry runs it again.
    let server = spawn_server_with(&db, |config| config.max_attempts = 1).await;
    let client = &server.client;
    let receiver = Receiver::start().await;
    receiver.route("/flaky", vec![Reply::status(500), Reply::ok()]);
    let handler = create(
        client,
        http_handler(
            "flaky",
            "accounts.create",
            proto::Phase::After,
            &receiver.url("/flaky"),
        ),
    )
    .await;
    let emitted = client
        .emit(emit_request(
            "accounts.create",
            proto::Phase::After,
            r#"{"id": 5}"#,
        ))
        .await
        .unwrap();
    let by_handler = proto::LogFilter {
        handler_id: handler.id,
        ..Default::default()
    };
    let failed = eventually(WAIT, "the failed run", || {
        let filter = by_handler.clone();
        async move {
            search(client, filter, 10, "")
                .await
                .ok()
                .and_then(|e| e.into_iter().next())
        }
    })
    .await
    .log
    .unwrap();
    assert_eq!(
        (failed.status(), failed.attempt, failed.event_id),
        (proto::RunStatus::Fail, 1, emitted.event_id)
    );
    let before_retry = client
        .get_log(proto::GetLogRequest { id: failed.id })
        .await
        .unwrap();

    let retried = client
        .retry(proto::RetryRequest {
            log_id: failed.id,
            resend: false,
        })
        .await
        .unwrap();
    assert_eq!(
        retried.delivery_id, failed.delivery_id,
        "the dead delivery is revived"
    );
    let entries = eventually(WAIT, "the retried run", || {
        let filter = by_handler.clone();
        async move {
            search(client, filter, 10, "")
                .await
                .ok()
                .filter(|e| e.len() == 2)
        }
    })
    .await;
    let new = entries[0].log.clone().unwrap();
    assert_eq!(
        (new.status(), new.attempt, new.event_id),
        (proto::RunStatus::Success, 2, emitted.event_id)
    );
    assert_eq!(
        client
            .get_log(proto::GetLogRequest { id: failed.id })
            .await
            .unwrap(),
        before_retry
    );
    assert_eq!(receiver.count("/flaky"), 2);

    // A successful run.
    let status = status_of(
        client
            .retry(proto::RetryRequest {
                log_id: new.id,
                resend: false,
            })
            .await,
    );
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    // A BEFORE run.
    let before_handler = create(
        client,
        script_handler("check", "clients.create", proto::Phase::Before, "crash.sh"),
    )
    .await;
    client
        .emit(emit_request("clients.create", proto::Phase::Before, "{}"))
        .await
        .unwrap();
    let before_filter = proto::LogFilter {
        handler_id: before_handler.id,
        ..Default::default()
    };
    let before_run = eventually(WAIT, "the BEFORE run", || {
        let filter = before_filter.clone();
        async move {
            search(client, filter, 1, "")
                .await
                .ok()
                .and_then(|e| e.into_iter().next())
        }
    })
    .await
    .log
    .unwrap();
    assert_eq!(before_run.status(), proto::RunStatus::Fail);
    let status = status_of(
        client
            .retry(proto::RetryRequest {
                log_id: before_run.id,
                resend: false,
            })
            .await,
    );
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("BEFORE"),
        "{:?}",
        status.message()
    );
    // Unknown run, vanished event, vanished handler.
    let status = status_of(
        client
            .retry(proto::RetryRequest {
                log_id: new.id + 10_000,
                resend: false,
            })
            .await,
    );
    assert_eq!(status.code(), tonic::Code::NotFound);
    let (no_event, no_handler) = with_conn(&db, |conn| {
        let insert = |conn: &mut PgConnection, event_id: i64, handler_id: i64| -> i64 {
            diesel::sql_query(
                r#"
INSERT INTO execution_logs (created_at, phase, event, status, handler_id, handler_name, kind, error, duration_ms,
    attempt, data_sent, event_id, delivery_id)
VALUES (now(), 'after', 'accounts.create', 'fail', $2, 'x', 'http', 'HTTP 500', 1, 1, '{}', $1, 1)
RETURNING id
"#,
            )
            .bind::<BigInt, _>(event_id)
            .bind::<BigInt, _>(handler_id)
            .get_result::<Id>(conn)
            .unwrap()
            .id
        };
        (
            insert(conn, 987_654_321, handler.id),
            insert(conn, emitted.event_id, 987_654_321),
        )
    });
    let status = status_of(
        client
            .retry(proto::RetryRequest {
                log_id: no_event,
                resend: false,
            })
            .await,
    );
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert!(status.message().contains("event"), "{:?}", status.message());
    let status = status_of(
        client
            .retry(proto::RetryRequest {
                log_id: no_handler,
                resend: false,
            })
            .await,
    );
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert!(
        status.message().contains("handler"),
        "{:?}",
        status.message()
    );
    // A disabled handler.
    client
        .set_handler_status(proto::SetHandlerStatusRequest {
            id: handler.id,
            status: proto::HandlerStatus::Disabled.into(),
        })
        .await
        .unwrap();
    let status = status_of(
        client
            .retry(proto::RetryRequest {
                log_id: failed.id,
                resend: false,
            })
            .await,
    );
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
}

// ---------------------------------------------------------------------------------
// Purge and retention
// ---------------------------------------------------------------------------------

#[derive(QueryableByName)]
struct Name {
    #[diesel(sql_type = Text)]
    name: String,
}

fn partition_names(conn: &mut PgConnection) -> BTreeSet<String> {
    diesel::sql_query(
        "SELECT c.relname::text AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         WHERE i.inhparent = 'execution_logs'::regclass",
    )
    .load::<Name>(conn)
    .unwrap()
    .into_iter()
    .map(|n| n.name)
    .collect()
}

/// Run times are stored to the microsecond; `from` and `to` with a sub-microsecond part
/// are rounded up to the next microsecond, for Search and for Stats alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_bounds_between_microseconds_round_up() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let at = DateTime::from_timestamp(1_764_115_200, 670_717_000).unwrap();
    let id = with_conn(&db, |conn| {
        diesel::sql_query(
            "INSERT INTO execution_logs (created_at, phase, event, status, handler_id, handler_name, \
                 kind, duration_ms, attempt, data_sent, event_id) \
             VALUES ($1, 'after', 'clients.create', 'success', 1, 'h', 'http', 1, 1, '{}', 1) RETURNING id",
        )
        .bind::<Timestamptz, _>(at)
        .get_result::<Id>(conn)
        .expect("inserting a row")
        .id
    });
    let nanos = |n: i64| at + chrono::Duration::nanoseconds(n);
    for (from, to, found) in [
        (Some(nanos(0)), None, true),
        (Some(nanos(1)), None, false),
        (None, Some(nanos(999)), true),
        (None, Some(nanos(0)), false),
        (Some(nanos(-999)), Some(nanos(1)), true),
    ] {
        let filter = proto::LogFilter {
            from: from.map(ts),
            to: to.map(ts),
            ..Default::default()
        };
        let page = search(&server.client, filter, 10, "").await.unwrap();
        let expected = if found { vec![id] } else { vec![] };
        assert_eq!(ids(&page), expected, "from {from:?} to {to:?}");
        let stats = server
            .client
            .log_stats(proto::LogStatsRequest {
                handler_id: 0,
                from: Some(ts(from.unwrap_or(nanos(-1_000_000)))),
                to: Some(ts(to.unwrap_or(nanos(1_000_000)))),
            })
            .await
            .unwrap();
        let total: u64 = stats.handlers.iter().map(|h| h.total).sum();
        assert_eq!(total, u64::from(found), "stats from {from:?} to {to:?}");
    }
}

/// Purge deletes exactly the runs older than the cutoff, across daily partitions (whole
/// old ones dropped), the partition straddling the cutoff and the default partition,
/// reports how many, and leaves events alone; event retention then removes the old
/// events no delivery needs. A second purge finds nothing. The same functions are what
/// the hourly retention calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_deletes_exactly_the_older_runs_across_partitions_but_no_event() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let today: NaiveDate = Utc::now().date_naive();
    let day_start = |days_ago: i64| {
        (today - chrono::Duration::days(days_ago))
            .and_hms_opt(0, 0, 0)
            .unwrap()
            .and_utc()
    };
    let handler = create(
        &server.client,
        http_handler(
            "kept",
            "clients.create",
            proto::Phase::After,
            "http://127.0.0.1:9/unused",
        ),
    )
    .await;
    let times: Vec<DateTime<Utc>> = (0..=45)
        .flat_map(|d| [1, 12, 23].map(|h| day_start(d) + chrono::Duration::hours(h)))
        .collect();
    let cutoff = day_start(10) + chrono::Duration::hours(6);
    let (old_event, needed_event, new_event) = with_conn(&db, |conn| {
        // Daily partitions for the last 40 days; older rows land in the default one.
        diesel::sql_query("SELECT ensure_log_partitions($1 - 40, $1)")
            .bind::<Date, _>(today)
            .execute(conn)
            .unwrap();
        diesel::sql_query(
            r#"
INSERT INTO execution_logs (created_at, phase, event, status, handler_id, handler_name, kind, duration_ms, attempt,
    data_sent, event_id)
SELECT t, 'after', 'clients.create', 'success', 1, 'h', 'http', 1, 1, '{}', 1 FROM unnest($1::timestamptz[]) AS t
"#,
        )
        .bind::<Array<Timestamptz>, _>(&times)
        .execute(conn)
        .unwrap();
        let event = |conn: &mut PgConnection, at: DateTime<Utc>| -> i64 {
            diesel::sql_query("INSERT INTO events (event, data, created_at) VALUES ('clients.create', '{}', $1) RETURNING id")
                .bind::<Timestamptz, _>(at)
                .get_result::<Id>(conn)
                .unwrap()
                .id
        };
        let old = event(conn, cutoff - chrono::Duration::days(5));
        let needed = event(conn, cutoff - chrono::Duration::days(5));
        let new = event(conn, cutoff + chrono::Duration::hours(1));
        diesel::sql_query(
            "INSERT INTO deliveries (event_id, handler_id, priority, state) VALUES ($1, $2, 0, 3)",
        )
        .bind::<BigInt, _>(needed)
        .bind::<BigInt, _>(handler.id)
        .execute(conn)
        .unwrap();
        (old, needed, new)
    });
    let partitions_before = with_conn(&db, partition_names);
    let old_day = format!(
        "execution_logs_{}",
        (today - chrono::Duration::days(20)).format("%Y%m%d")
    );
    let straddling = format!(
        "execution_logs_{}",
        (today - chrono::Duration::days(10)).format("%Y%m%d")
    );
    assert!(partitions_before.contains(&old_day) && partitions_before.contains(&straddling));

    let want = times.iter().filter(|t| **t < cutoff).count() as u64;
    let reply = server
        .client
        .purge(proto::PurgeRequest {
            older_than: Some(ts(cutoff)),
        })
        .await
        .unwrap();
    assert_eq!(reply.deleted, want);

    with_conn(&db, |conn| {
        let remaining: Vec<DateTime<Utc>> = {
            #[derive(QueryableByName)]
            struct At {
                #[diesel(sql_type = Timestamptz)]
                at: DateTime<Utc>,
            }
            diesel::sql_query("SELECT created_at AS at FROM execution_logs ORDER BY created_at")
                .load::<At>(conn)
                .unwrap()
                .into_iter()
                .map(|r| r.at)
                .collect()
        };
        let mut kept: Vec<DateTime<Utc>> = times.iter().copied().filter(|t| *t >= cutoff).collect();
        kept.sort();
        assert_eq!(remaining, kept);
        let partitions = partition_names(conn);
        assert!(
            !partitions.contains(&old_day),
            "{old_day} should be dropped"
        );
        assert!(
            partitions.contains(&straddling),
            "{straddling} straddles the cutoff and stays"
        );
        assert!(partitions.contains("execution_logs_default"));
        let events: BTreeSet<i64> = diesel::sql_query("SELECT id FROM events")
            .load::<Id>(conn)
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert!(
            events.contains(&old_event)
                && events.contains(&needed_event)
                && events.contains(&new_event),
            "Purge deletes runs only: events (and their idempotency keys) stay"
        );
    });

    // Event retention, as the hourly upkeep runs it: old events no delivery needs go.
    let store = provisioning_server::domain::logs::LogStore::new(
        provisioning_server::db::Db::connect(&db.url, 2).expect("a pool"),
        provisioning_server::listener::Signals::detached(),
    );
    assert_eq!(store.expire_events(cutoff).await.expect("expire"), 1);
    with_conn(&db, |conn| {
        let events: BTreeSet<i64> = diesel::sql_query("SELECT id FROM events")
            .load::<Id>(conn)
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert!(
            !events.contains(&old_event),
            "an old event without deliveries is removed"
        );
        assert!(events.contains(&needed_event) && events.contains(&new_event));
    });

    let again = server
        .client
        .purge(proto::PurgeRequest {
            older_than: Some(ts(cutoff)),
        })
        .await
        .unwrap();
    assert_eq!(again.deleted, 0);
}

// ---------------------------------------------------------------------------------
// Indexes and plans
// ---------------------------------------------------------------------------------

/// Collects the execution-log relations read by a sequential scan anywhere in a plan.
fn seq_scans(plan: &Value, found: &mut Vec<String>) {
    match plan {
        Value::Object(node) => {
            if node.get("Node Type") == Some(&json!("Seq Scan")) {
                let relation = node
                    .get("Relation Name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if relation.starts_with("execution_logs") {
                    found.push(relation.to_owned());
                }
            }
            node.values().for_each(|v| seq_scans(v, found));
        }
        Value::Array(items) => items.iter().for_each(|v| seq_scans(v, found)),
        _ => {}
    }
}

/// On 200,000 rows spread over every partition, the exact statements Search and Tail
/// issue for each filter (alone, combined, after a cursor) read no execution-log
/// partition sequentially: every filter is served by an index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_filter_is_served_by_an_index_on_a_large_log() {
    use log_queries::{LogFilter, Position};
    let db = TestDatabase::new().await;
    // No server starts here, and a server is what applies pending migrations: apply
    // them, in case the shared template predates the newest one.
    tokio::task::block_in_place(|| provisioning_server::db::Db::connect(&db.url, 1))
        .unwrap()
        .migrate()
        .await
        .unwrap();
    let report = with_conn(&db, |conn| {
        diesel::sql_query("SELECT ensure_log_partitions(current_date - 2, current_date + 3)")
            .execute(conn)
            .unwrap();
        let partitions = log_queries::partitions(conn).unwrap();
        let first =
            partitions.iter().filter_map(|p| p.lower).min().unwrap() - chrono::Duration::days(1);
        let last =
            partitions.iter().filter_map(|p| p.upper).max().unwrap() + chrono::Duration::days(1);
        // Every partition, the default one included, gets tens of thousands of rows.
        diesel::sql_query(
            r#"
INSERT INTO execution_logs (created_at, phase, event, status, handler_id, handler_name, kind, error, duration_ms,
    attempt, data_sent, event_id, delivery_id)
SELECT $1::timestamptz + (i::float8 / $3) * ($2::timestamptz - $1::timestamptz),
       CASE WHEN i % 10 = 0 THEN 'before' ELSE 'after' END,
       (ARRAY['clients.create', 'clients.update', 'accounts.create', 'accounts.delete', 'subscriptions.renew',
              'import.process_failed'])[1 + i % 6],
       CASE WHEN i % 7 = 0 THEN 'fail' ELSE 'success' END,
       1 + i % 50, 'handler ' || (1 + i % 50), 'http',
       CASE WHEN i % 7 = 0 THEN 'HTTP 5' || (i % 10) || ' error number ' || i ELSE '' END,
       i % 1000, 1 + (i % 13 = 0)::int + (i % 29 = 0)::int,
       jsonb_build_object('id', i, 'accname', 'acc' || (i % 1000), 'id_clients', i % 5000, 'name', md5(i::text)),
       i / 3, i
FROM generate_series(1, $3) AS i
"#,
        )
        .bind::<Timestamptz, _>(first)
        .bind::<Timestamptz, _>(last)
        .bind::<Integer, _>(200_000)
        .execute(conn)
        .unwrap();
        // What autovacuum would have done by now on a real log (statistics, and the
        // GIN pending lists merged).
        diesel::sql_query("VACUUM ANALYZE execution_logs")
            .execute(conn)
            .unwrap();
        let max_id = log_queries::max_id(conn).unwrap();
        let middle = first + (last - first) / 2;
        let f = LogFilter::default;
        let cases: Vec<(&str, LogFilter)> = vec![
            ("no filter", f()),
            (
                "status",
                LogFilter {
                    status: Some("fail"),
                    ..f()
                },
            ),
            (
                "phase, rare",
                LogFilter {
                    phase: Some("before"),
                    ..f()
                },
            ),
            (
                "phase, common",
                LogFilter {
                    phase: Some("after"),
                    ..f()
                },
            ),
            (
                "one event",
                LogFilter {
                    events: vec!["clients.create".into()],
                    ..f()
                },
            ),
            (
                "two events",
                LogFilter {
                    events: vec!["clients.create".into(), "accounts.delete".into()],
                    ..f()
                },
            ),
            (
                "handler",
                LogFilter {
                    handler_id: Some(7),
                    ..f()
                },
            ),
            (
                "data substring",
                LogFilter {
                    data_contains: Some("acc17\"".into()),
                    ..f()
                },
            ),
            (
                "data substring, short",
                LogFilter {
                    data_contains: Some("ab".into()),
                    ..f()
                },
            ),
            (
                "data containment",
                LogFilter {
                    data_json_contains: Some(json!({"accname": "acc17"})),
                    ..f()
                },
            ),
            (
                "error substring",
                LogFilter {
                    error_contains: Some("number 1234".into()),
                    ..f()
                },
            ),
            (
                "error substring, common",
                LogFilter {
                    error_contains: Some("http 5".into()),
                    ..f()
                },
            ),
            (
                "time window",
                LogFilter {
                    from: Some(middle),
                    to: Some(middle + chrono::Duration::hours(1)),
                    ..f()
                },
            ),
            (
                "from",
                LogFilter {
                    from: Some(middle),
                    ..f()
                },
            ),
            (
                "to",
                LogFilter {
                    to: Some(middle),
                    ..f()
                },
            ),
            (
                "attempt, rare",
                LogFilter {
                    attempt: Some(3),
                    ..f()
                },
            ),
            (
                "attempt, common",
                LogFilter {
                    attempt: Some(1),
                    ..f()
                },
            ),
            (
                "event id",
                LogFilter {
                    event_id: Some(555),
                    ..f()
                },
            ),
            (
                "handler and status",
                LogFilter {
                    handler_id: Some(7),
                    status: Some("fail"),
                    ..f()
                },
            ),
            (
                "event, phase and data",
                LogFilter {
                    events: vec!["clients.update".into()],
                    phase: Some("after"),
                    data_contains: Some("acc1".into()),
                    ..f()
                },
            ),
        ];
        let cursor = Position {
            created_at: middle,
            id: 100_000,
        };
        let mut report = Vec::new();
        for (name, filter) in &cases {
            for (what, plan) in [
                (
                    "search",
                    log_queries::explain_search(conn, filter, None, 500).unwrap(),
                ),
                (
                    "search, small limit",
                    log_queries::explain_search(conn, filter, None, 7).unwrap(),
                ),
                (
                    "search after a cursor",
                    log_queries::explain_search(conn, filter, Some(cursor), 500).unwrap(),
                ),
                (
                    "tail",
                    log_queries::explain_tail(conn, filter, max_id - 1000, 500).unwrap(),
                ),
            ] {
                let mut found = Vec::new();
                seq_scans(&plan, &mut found);
                if !found.is_empty() {
                    report.push(format!(
                        "{name} ({what}): sequential scan of {found:?}\n{}\n{:#}",
                        log_queries::search_sql(filter, None, 500),
                        plan
                    ));
                }
            }
        }
        report
    });
    assert!(report.is_empty(), "{}", report.join("\n\n"));
}
