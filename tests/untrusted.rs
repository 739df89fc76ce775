//! Untrusted data end to end: nothing an emitter sends, a handler answers or a script
//! prints may drop an execution-log row or break a read. Emit (all three RPCs) refuses
//! what the log cannot hold; BEFORE handlers returning such data fail by their policy;
//! handler output of any bytes is stored readably; a row the database refuses is written
//! repaired; a stored row no JSON reader can parse still reads back.

use std::collections::BTreeSet;
use std::time::Duration;

use diesel::sql_types::{BigInt, Text};
use diesel::{QueryableByName, RunQueryDsl};
use provisioning_client::{proto, Client};
use provisioning_tests::receiver::{Receiver, Reply};
use provisioning_tests::{spawn_server, TestDatabase};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::dispatch::{
    create, emit_before, event_request, http_handler, invalid_argument, script_handler,
    wait_for_logs, with_conn, WAIT,
};

/// `{"a": {"a": ... 1 ...}}`, `depth` objects deep.
fn nested(depth: usize) -> String {
    format!("{}1{}", r#"{"a": "#.repeat(depth), "}".repeat(depth))
}

/// Every entry Search returns for `filter` (one page of up to 1000).
async fn search_all(client: &Client, filter: proto::LogFilter) -> Vec<proto::ExecutionLog> {
    let mut stream = client
        .search_logs(proto::SearchLogsRequest {
            filter: Some(filter),
            limit: 1000,
            cursor: String::new(),
        })
        .await
        .expect("search");
    let mut logs = Vec::new();
    while let Some(entry) = stream.message().await.expect("search page") {
        logs.push(entry.log.expect("a log"));
    }
    logs
}

/// The last `n` rows matching `filter`, read through Tail's backlog.
async fn tail_backlog(
    client: &Client,
    filter: proto::LogFilter,
    n: usize,
) -> Vec<proto::ExecutionLog> {
    let mut stream = client
        .tail_logs(proto::TailLogsRequest {
            filter: Some(filter),
            backlog: n as u32,
            cursor: String::new(),
        })
        .await
        .expect("tail");
    let mut logs = Vec::new();
    while logs.len() < n {
        let entry = tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("tail backlog in time")
            .expect("tail item")
            .expect("tail open");
        logs.push(entry.log.expect("a log"));
    }
    logs
}

async fn get_log(client: &Client, id: i64) -> proto::ExecutionLog {
    client
        .get_log(proto::GetLogRequest { id })
        .await
        .unwrap_or_else(|e| panic!("Get {id}: {e}"))
}

/// Data the execution log cannot hold is refused by Emit, EmitBatch and EmitStream
/// with INVALID_ARGUMENT naming the problem, and nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emitted_data_the_log_cannot_hold_is_refused_by_every_emit_rpc() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let cases = [
        (r#"{"a": "\ud800"}"#.to_owned(), "lone UTF-16 surrogate"),
        (r#"{"a": "\udfff x"}"#.to_owned(), "lone UTF-16 surrogate"),
        (nested(65), "nested deeper than 64"),
        (nested(300), "nested deeper than 64"),
        (nested(5000), "nested deeper than 64"),
        (r#"{"a": "x\u0000y"}"#.to_owned(), "\\u0000"),
        (r#"{"n": 1e5000}"#.to_owned(), "out of range"),
    ];
    for (data, expected) in &cases {
        for phase in [proto::Phase::After, proto::Phase::Before] {
            let message = invalid_argument(
                server
                    .client
                    .emit(event_request("clients.create", phase, data))
                    .await,
            );
            assert!(
                message.starts_with("data_json:") && message.contains(expected),
                "{phase:?} {}: {message}",
                &data[..data.len().min(40)]
            );
        }
        let good = event_request("clients.create", proto::Phase::After, "{}");
        let bad = event_request("clients.create", proto::Phase::After, data);
        let message = invalid_argument(
            server
                .client
                .emit_batch(proto::EmitBatchRequest {
                    events: vec![good, bad.clone()],
                })
                .await,
        );
        assert!(
            message.starts_with("events[1].data_json:") && message.contains(expected),
            "{message}"
        );
        let request = proto::EmitStreamRequest {
            sequence: 7,
            event: Some(bad),
        };
        let mut acks = server
            .client
            .emit_stream(tokio_stream::iter(vec![request]))
            .await
            .expect("stream");
        let ack = acks.message().await.expect("ack").expect("one ack");
        assert_eq!(ack.sequence, 7);
        assert_eq!(
            ack.error_code,
            tonic::Code::InvalidArgument as i32,
            "{ack:?}"
        );
        assert!(ack.error_message.contains(expected), "{ack:?}");
    }
    assert_eq!(
        crate::dispatch::count(&db, "SELECT count(*) AS n FROM events"),
        0
    );
}

/// A handler reply of any bytes (NUL, invalid UTF-8), from HTTP or a script, success or
/// failure, is logged with NUL written as `\u0000` and bad bytes as U+FFFD, and reads
/// back through Get and Search; the 2xx delivery counts as delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_replies_of_any_bytes_are_logged_readably() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let receiver = Receiver::start().await;
    receiver.route("/ok", vec![Reply::bytes(200, b"ok\0\xff\xfe end")]);
    receiver.route(
        "/fail",
        vec![Reply::bytes(500, b"\0bad\xc3"), Reply::bytes(200, b"")],
    );
    let ok = create(
        &server.client,
        http_handler(
            "ok",
            "clients.create",
            proto::Phase::After,
            &receiver.url("/ok"),
        ),
    )
    .await;
    let fail = create(
        &server.client,
        http_handler(
            "fail",
            "clients.create",
            proto::Phase::After,
            &receiver.url("/fail"),
        ),
    )
    .await;
    let script = create(
        &server.client,
        script_handler(
            "garbage",
            "clients.create",
            proto::Phase::After,
            "garbage.sh",
        ),
    )
    .await;
    crate::dispatch::emit_after(&server.client, "clients.create", r#"{"id": 1}"#).await;
    wait_for_logs(&db, "four runs", |rows| rows.len() == 4).await;

    let logs = search_all(&server.client, proto::LogFilter::default()).await;
    assert_eq!(logs.len(), 4, "{logs:#?}");
    let of = |id: i64| -> Vec<&proto::ExecutionLog> {
        logs.iter().filter(|l| l.handler_id == id).collect()
    };
    let ok_run = of(ok.id)[0];
    assert_eq!(ok_run.response, "ok\\u0000\u{fffd}\u{fffd} end");
    assert_eq!(ok_run.status, proto::RunStatus::Success as i32);
    let fail_runs = of(fail.id);
    assert_eq!(fail_runs.len(), 2);
    let failed = fail_runs
        .iter()
        .find(|l| l.attempt == 1)
        .expect("attempt 1");
    assert_eq!(failed.response, "\\u0000bad\u{fffd}");
    assert_eq!(failed.http_status, 500);
    let script_run = of(script.id)[0];
    assert_eq!(
        script_run.response,
        "out\\u0000put \u{fffd}\u{fffd} end\n[stderr] err\\u0000or \u{fffd}"
    );
    assert_eq!(
        get_log(&server.client, failed.id).await.response,
        failed.response
    );
    let found = search_all(
        &server.client,
        proto::LogFilter {
            handler_id: fail.id,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(found.len(), 2);
    assert_eq!(
        crate::dispatch::count(&db, "SELECT count(*) AS n FROM deliveries"),
        0,
        "every delivery done"
    );
}

/// A BEFORE handler (HTTP or script) returning data the log cannot hold fails: its
/// failure policy decides, the data is never passed on, and its run is logged saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_handler_returning_unacceptable_data_fails_by_its_policy() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let receiver = Receiver::start().await;
    receiver.route("/nul", vec![Reply::text(200, r#"{"a": "x\u0000y"}"#)]);
    receiver.route("/bytes", vec![Reply::bytes(200, b"{\"a\": \"\xff\"}")]);
    create(
        &server.client,
        http_handler(
            "nul",
            "clients.create",
            proto::Phase::Before,
            &receiver.url("/nul"),
        ),
    )
    .await;
    create(
        &server.client,
        proto::CreateHandlerRequest {
            failure_policy: proto::FailurePolicy::FailOpen.into(),
            ..script_handler(
                "surrogate",
                "clients.update",
                proto::Phase::Before,
                "bad_data.sh",
            )
        },
    )
    .await;
    create(
        &server.client,
        proto::CreateHandlerRequest {
            failure_policy: proto::FailurePolicy::FailOpen.into(),
            ..http_handler(
                "bytes",
                "clients.update",
                proto::Phase::Before,
                &receiver.url("/bytes"),
            )
        },
    )
    .await;

    let data = r#"{"id": 15}"#;
    let closed = emit_before(&server.client, "clients.create", data).await;
    assert_eq!(
        closed.decision,
        proto::Decision::Forbidden as i32,
        "{closed:?}"
    );
    assert_eq!(
        closed.results[0].outcome,
        proto::HandlerOutcome::Failed as i32
    );
    assert!(
        closed.results[0].error.contains("\\u0000"),
        "{:?}",
        closed.results[0]
    );

    let open = emit_before(&server.client, "clients.update", data).await;
    assert_eq!(open.decision, proto::Decision::Allowed as i32, "{open:?}");
    assert_eq!(open.data_json, data, "bad data is never passed on");
    let outcomes: Vec<i32> = open.results.iter().map(|r| r.outcome).collect();
    assert_eq!(outcomes, [proto::HandlerOutcome::Failed as i32; 2]);
    assert!(
        open.results[0].error.contains("lone UTF-16 surrogate"),
        "{open:?}"
    );
    assert!(open.results[1].error.contains("not UTF-8"), "{open:?}");

    let rows = wait_for_logs(&db, "three BEFORE runs", |rows| rows.len() == 3).await;
    for row in &rows {
        assert_eq!(row.status, "fail", "{row:?}");
        assert!(
            row.error.contains("not acceptable"),
            "the row says why: {row:?}"
        );
    }
    let logs = search_all(&server.client, proto::LogFilter::default()).await;
    assert_eq!(logs.len(), 3);
}

#[derive(QueryableByName)]
struct Id {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

/// A row stored before these rules (nested deeper than any JSON reader goes) does not
/// break Search, Get, Tail or Stats: it comes back with its stored text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_row_no_json_reader_can_parse_does_not_break_reads() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let deep = nested(300);
    let ids: Vec<i64> = with_conn(&db, |conn| {
        [r#"{"plain": true}"#, deep.as_str()]
            .iter()
            .map(|data| {
                diesel::sql_query(
                    "INSERT INTO execution_logs (created_at, phase, event, status, handler_id, handler_name, \
                         kind, duration_ms, attempt, data_sent, data_returned, event_id) \
                     VALUES (now(), 'before', 'clients.create', 'success', 1, 'old', 'http', 1, 1, \
                         $1::jsonb, $1::jsonb, 1) RETURNING id",
                )
                .bind::<Text, _>(*data)
                .get_result::<Id>(conn)
                .expect("inserting a row")
                .id
            })
            .collect()
    });
    let logs = search_all(&server.client, proto::LogFilter::default()).await;
    assert_eq!(
        logs.iter().map(|l| l.id).collect::<Vec<_>>(),
        [ids[1], ids[0]]
    );
    let read = get_log(&server.client, ids[1]).await;
    assert_eq!(read.data_sent_json.matches('{').count(), 300);
    assert_eq!(read.data_sent_json.replace(' ', ""), deep.replace(' ', ""));
    assert_eq!(read.data_returned_json, read.data_sent_json);
    let tailed = tail_backlog(&server.client, proto::LogFilter::default(), 2).await;
    assert_eq!(tailed.len(), 2);
    let stats = server
        .client
        .log_stats(proto::LogStatsRequest::default())
        .await
        .expect("stats");
    assert_eq!(stats.handlers.iter().map(|h| h.total).sum::<u64>(), 2);
}

/// An event stored before these rules with data PostgreSQL's jsonb refuses is still
/// delivered, and its log row is written with the data replaced by a marker saying why
/// (the original text kept as a string), not dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_row_the_database_refuses_is_written_repaired() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let receiver = Receiver::start().await;
    receiver.route("/h", vec![Reply::ok()]);
    let handler = create(
        &server.client,
        http_handler(
            "h",
            "clients.create",
            proto::Phase::After,
            &receiver.url("/h"),
        ),
    )
    .await;
    let poisoned = r#"{"a": "x\u0000y"}"#;
    with_conn(&db, |conn| {
        let event: Id = diesel::sql_query(
            "INSERT INTO events (event, data) VALUES ('clients.create', $1) RETURNING id",
        )
        .bind::<Text, _>(poisoned)
        .get_result(conn)
        .expect("inserting an old event");
        diesel::sql_query(
            "INSERT INTO deliveries (event_id, handler_id, priority, state) VALUES ($1, $2, 0, 1)",
        )
        .bind::<BigInt, _>(event.id)
        .bind::<BigInt, _>(handler.id)
        .execute(conn)
        .expect("inserting its delivery");
    });
    let delivered = receiver.wait_for("/h", 1, WAIT).await;
    assert_eq!(delivered[0].body_text(), poisoned, "delivered as stored");
    let rows = wait_for_logs(&db, "the repaired row", |rows| rows.len() == 1).await;
    assert_eq!(rows[0].status, "success");
    let marker: serde_json::Value = serde_json::from_str(&rows[0].data_sent).expect("JSON");
    let repaired = &marker["provisiond_repaired"];
    assert_eq!(repaired["field"], "data_sent", "{marker}");
    assert!(
        repaired["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("\\u0000"),
        "{marker}"
    );
    assert_eq!(repaired["original"], poisoned);
    let deadline = std::time::Instant::now() + WAIT;
    while crate::dispatch::count(&db, "SELECT count(*) AS n FROM deliveries") > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the delivery never settled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let found = search_all(
        &server.client,
        proto::LogFilter {
            data_contains: "x\\\\u0000y".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(found.len(), 1, "the original text is searchable");
}

/// A random JSON object, built as text, and whether the rules accept it.
struct Generated {
    text: String,
    acceptable: bool,
}

/// Builds random objects with the awkward parts of JSON: escapes of every kind, UTF-8
/// text in several scripts, surrogate pairs, big and precise numbers, deep nesting and,
/// now and then, something the rules refuse (NUL, a lone surrogate, too deep, a number
/// out of range).
struct JsonGenerator {
    rng: StdRng,
    acceptable: bool,
}

impl JsonGenerator {
    fn object(&mut self, token: &str) -> Generated {
        self.acceptable = true;
        let mut members = vec![format!(r#""tok": "{token}""#)];
        for key in 0..self.rng.random_range(0..6) {
            let value = self.value(1);
            members.push(format!(r#""k{key}{}": {value}"#, self.string_body()));
        }
        if self.rng.random_bool(0.15) {
            let depth = self.rng.random_range(60..=68);
            // The object is level 1; the arrays add `depth - 1` levels.
            self.acceptable &= depth <= 64;
            members.push(format!(
                r#""deep": {}0{}"#,
                "[".repeat(depth - 1),
                "]".repeat(depth - 1)
            ));
        }
        Generated {
            text: format!("{{{}}}", members.join(", ")),
            acceptable: self.acceptable,
        }
    }

    fn value(&mut self, depth: usize) -> String {
        match self.rng.random_range(0..10) {
            0..=2 => format!("\"{}\"", self.string_body()),
            3..=4 => self.number(),
            5 => ["true", "false", "null"][self.rng.random_range(0..3)].to_owned(),
            6..=7 if depth < 4 => {
                let items: Vec<String> = (0..self.rng.random_range(0..4))
                    .map(|_| self.value(depth + 1))
                    .collect();
                format!("[{}]", items.join(","))
            }
            _ if depth < 4 => {
                let members: Vec<String> = (0..self.rng.random_range(0..4))
                    .map(|i| format!("\"m{i}\": {}", self.value(depth + 1)))
                    .collect();
                format!("{{{}}}", members.join(", "))
            }
            _ => "1".to_owned(),
        }
    }

    fn string_body(&mut self) -> String {
        const PIECES: &[&str] = &[
            "plain",
            "Jörg MÜLLER",
            "Москва",
            "Ωμέγα",
            "東京",
            "😀",
            "\\ud83d\\ude00",
            "\\u00e9",
            "\\n",
            "\\t",
            "\\\"",
            "\\\\",
            "\\/",
            "\\\\u0000",
            "%_",
            " ",
            "'",
        ];
        let mut text = String::new();
        for _ in 0..self.rng.random_range(0..4) {
            match self.rng.random_range(0..40) {
                0 => {
                    text.push_str("\\u0000");
                    self.acceptable = false;
                }
                1 => {
                    // A lone surrogate: the `x` after the high one keeps a low one in
                    // the next piece from completing a (valid) pair.
                    text.push_str(["\\ud800x", "\\udc00x"][self.rng.random_range(0..2)]);
                    self.acceptable = false;
                }
                _ => text.push_str(PIECES[self.rng.random_range(0..PIECES.len())]),
            }
        }
        text
    }

    fn number(&mut self) -> String {
        const NUMBERS: &[&str] = &[
            "0",
            "-0",
            "12.50",
            "9007199254740993",
            "-1.5e3",
            "1E+2",
            "1e1000",
            "1e-1000",
            "0.1000000000000000055511151231257827",
            "123456789012345678901234567890",
        ];
        if self.rng.random_range(0..40) == 0 {
            self.acceptable = false;
            return "1e1001".to_owned();
        }
        NUMBERS[self.rng.random_range(0..NUMBERS.len())].to_owned()
    }
}

/// A number's value as (negative, significant digits, exponent), so that `1E+2`, `100`
/// and `100.0` compare equal, as PostgreSQL's `numeric` prints them differently.
fn number_key(text: &str) -> (bool, String, i64) {
    let (negative, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = match text.split_once(['e', 'E']) {
        Some((m, e)) => (
            m,
            e.trim_start_matches('+').parse::<i64>().expect("exponent"),
        ),
        None => (text, 0),
    };
    let (integer, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = format!("{integer}{fraction}");
    let exponent = exponent + integer.len() as i64;
    let leading = digits.len() - digits.trim_start_matches('0').len();
    let digits = digits.trim_matches('0').to_owned();
    if digits.is_empty() {
        return (false, String::new(), 0);
    }
    (negative, digits, exponent - leading as i64)
}

/// JSON equality with numbers compared by value.
fn same_data(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            number_key(&x.to_string()) == number_key(&y.to_string())
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_data(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_data(v, w)))
        }
        _ => a == b,
    }
}

/// Property: every random object Emit accepts is delivered byte for byte, logged, found
/// by a data search, shown by Get and streamed by Tail, and Emit accepts exactly the
/// objects the rules allow; every random byte string a handler answers is logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_accepted_object_is_delivered_logged_searched_shown_and_tailed() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let receiver = Receiver::start().await;
    let seed: u64 = rand::rng().random();
    println!("seed {seed}");
    let mut generator = JsonGenerator {
        rng: StdRng::seed_from_u64(seed),
        acceptable: true,
    };
    let replies: Vec<Vec<u8>> = (0..60)
        .map(|_| {
            let len = generator.rng.random_range(0..200);
            (0..len).map(|_| generator.rng.random()).collect()
        })
        .collect();
    receiver.route(
        "/h",
        replies.iter().map(|body| Reply::bytes(200, body)).collect(),
    );
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

    let mut accepted = Vec::new();
    for i in 0..120 {
        let token = format!("tok{i}x{seed}");
        let generated = generator.object(&token);
        let result = server
            .client
            .emit(event_request(
                "clients.create",
                proto::Phase::After,
                &generated.text,
            ))
            .await;
        match (generated.acceptable, result) {
            (true, Ok(reply)) => accepted.push((token, generated.text, reply.event_id)),
            (false, result) => {
                let message = invalid_argument(result);
                assert!(message.starts_with("data_json:"), "{message}");
            }
            (true, Err(error)) => panic!("seed {seed}: refused {}: {error}", generated.text),
        }
        if accepted.len() == replies.len() {
            break;
        }
    }
    let n = accepted.len();
    assert!(n > 20, "seed {seed}: only {n} accepted");
    let delivered = receiver.wait_for("/h", n, WAIT).await;
    let bodies: BTreeSet<String> = delivered.iter().map(|r| r.body_text()).collect();
    for (_, text, _) in &accepted {
        assert!(
            bodies.contains(text),
            "seed {seed}: not delivered as sent: {text}"
        );
    }
    wait_for_logs(&db, "every run logged", |rows| rows.len() == n).await;

    for (token, text, event_id) in &accepted {
        let found = search_all(
            &server.client,
            proto::LogFilter {
                data_contains: token.clone(),
                ..Default::default()
            },
        )
        .await;
        assert_eq!(found.len(), 1, "seed {seed}: searching {token}");
        assert_eq!(found[0].event_id, *event_id);
        let shown = get_log(&server.client, found[0].id).await;
        let sent: serde_json::Value = serde_json::from_str(text).expect("generated JSON");
        let logged: serde_json::Value =
            serde_json::from_str(&shown.data_sent_json).expect("logged JSON");
        assert!(
            same_data(&sent, &logged),
            "seed {seed}: sent {text}, logged {}",
            shown.data_sent_json
        );
        let tailed = tail_backlog(
            &server.client,
            proto::LogFilter {
                data_contains: token.clone(),
                ..Default::default()
            },
            1,
        )
        .await;
        assert_eq!(tailed[0].id, shown.id);
    }

    let expected: BTreeSet<String> = replies[..n]
        .iter()
        .map(|body| String::from_utf8_lossy(&body[..body.len().min(4096)]).replace('\0', "\\u0000"))
        .collect();
    let logged: BTreeSet<String> = search_all(&server.client, proto::LogFilter::default())
        .await
        .into_iter()
        .map(|l| l.response)
        .collect();
    assert_eq!(logged, expected, "seed {seed}");
}
