//! The Prometheus endpoint (`--metrics-listen`), scraped over a real socket before and
//! after a scenario: the counters move by exactly what the scenario did, and the
//! gauges read the database, the pool and the open tails.

use std::collections::HashMap;
use std::time::Duration;

use provisioning_client::proto;
use provisioning_tests::receiver::{Receiver, Reply};
use provisioning_tests::{eventually, free_addr, spawn_server_with, TestDatabase};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::dispatch::{create, emit_after, emit_before, event_request, http_handler, WAIT};

/// One scrape: every sample, keyed by its series (`name{labels}`) as exposed.
struct Scrape(HashMap<String, f64>);

impl Scrape {
    async fn of(addr: std::net::SocketAddr) -> Scrape {
        let (status, content_type, body) = get(addr, "/metrics").await;
        assert_eq!(status, 200, "{body}");
        assert!(
            content_type.starts_with("application/openmetrics-text"),
            "{content_type}"
        );
        assert!(
            body.ends_with("# EOF\n"),
            "an OpenMetrics exposition ends with # EOF"
        );
        Scrape(
            body.lines()
                .filter(|line| !line.starts_with('#') && !line.is_empty())
                .map(|line| {
                    let (series, value) = line.rsplit_once(' ').expect("`series value`");
                    (series.to_owned(), value.parse().expect("a number"))
                })
                .collect(),
        )
    }

    /// A sample's value; 0 when the series does not exist (yet).
    fn value(&self, series: &str) -> f64 {
        self.0.get(series).copied().unwrap_or(0.0)
    }
}

/// A raw HTTP/1.1 GET: status, content type and body.
async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: metrics\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
    let status = head[9..12].parse().expect("status code");
    let content_type = head
        .lines()
        .find_map(|l| l.strip_prefix("content-type: "))
        .unwrap_or_default()
        .to_owned();
    (status, content_type, body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_by_what_a_scenario_did_and_gauges_read_the_service() {
    let db = TestDatabase::new().await;
    let metrics_addr = free_addr();
    let server = spawn_server_with(&db, |config| {
        config.metrics_listen = Some(metrics_addr);
        config.concurrency = 1;
    })
    .await;
    let receiver = Receiver::start().await;
    receiver.route("/ok", vec![Reply::ok()]);
    receiver.route("/failing", vec![Reply::status(500)]);
    receiver.route("/gone", vec![Reply::status(410)]);
    receiver.route("/allow", vec![Reply::ok()]);
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
    let failing = create(
        &server.client,
        http_handler(
            "failing",
            "accounts.create",
            proto::Phase::After,
            &receiver.url("/failing"),
        ),
    )
    .await;
    let gone = create(
        &server.client,
        http_handler(
            "gone",
            "accounts.delete",
            proto::Phase::After,
            &receiver.url("/gone"),
        ),
    )
    .await;
    let allow = create(
        &server.client,
        http_handler(
            "allow",
            "clients.update",
            proto::Phase::Before,
            &receiver.url("/allow"),
        ),
    )
    .await;

    let before = Scrape::of(metrics_addr).await;
    assert_eq!(before.value("provisioning_database_up"), 1.0);

    for n in 0..5 {
        emit_after(
            &server.client,
            "clients.create",
            &format!(r#"{{"n": {n}}}"#),
        )
        .await;
    }
    let keyed = proto::EmitRequest {
        idempotency_key: "metrics-key".into(),
        ..event_request("clients.create", proto::Phase::After, r#"{"n": 5}"#)
    };
    server.client.emit(keyed.clone()).await.expect("first");
    server.client.emit(keyed).await.expect("the duplicate");
    let refused = server
        .client
        .emit(event_request("clients.create", proto::Phase::After, "[1]"))
        .await;
    assert!(refused.is_err());
    emit_after(&server.client, "accounts.create", r#"{"n": 1}"#).await;
    emit_after(&server.client, "accounts.delete", r#"{"n": 1}"#).await;
    emit_before(&server.client, "clients.update", r#"{"n": 1}"#).await;
    server
        .client
        .emit_batch(proto::EmitBatchRequest {
            events: (0..3)
                .map(|n| {
                    event_request(
                        "clients.create",
                        proto::Phase::After,
                        &format!(r#"{{"b": {n}}}"#),
                    )
                })
                .collect(),
        })
        .await
        .expect("batch");

    // 9 runs of `ok`, 3 of `failing` (test config: 3 attempts), 1 of `gone`, 1 BEFORE.
    let runs = |after: &Scrape, handler: i64, phase: &str, outcome: &str| {
        after.value(&format!(
            r#"provisioning_handler_runs_total{{handler_id="{handler}",phase="{phase}",outcome="{outcome}"}}"#
        )) - before.value(&format!(
            r#"provisioning_handler_runs_total{{handler_id="{handler}",phase="{phase}",outcome="{outcome}"}}"#
        ))
    };
    let after = eventually(WAIT, "every run counted", || async {
        let after = Scrape::of(metrics_addr).await;
        (runs(&after, ok.id, "after", "success") == 9.0
            && runs(&after, failing.id, "after", "dead") == 1.0
            && runs(&after, gone.id, "after", "gone") == 1.0)
            .then_some(after)
    })
    .await;
    let delta = |series: &str| after.value(series) - before.value(series);
    assert_eq!(
        delta(
            r#"provisioning_events_emitted_total{event="clients.create",phase="after",result="accepted"}"#
        ),
        9.0
    );
    assert_eq!(
        delta(
            r#"provisioning_events_emitted_total{event="clients.create",phase="after",result="duplicate"}"#
        ),
        1.0
    );
    assert_eq!(
        delta(
            r#"provisioning_events_emitted_total{event="",phase="after",result="invalid_argument"}"#
        ),
        1.0
    );
    assert_eq!(
        delta(
            r#"provisioning_events_emitted_total{event="clients.update",phase="before",result="allowed"}"#
        ),
        1.0
    );
    assert_eq!(runs(&after, failing.id, "after", "retry"), 2.0);
    assert_eq!(runs(&after, allow.id, "before", "success"), 1.0);
    assert_eq!(delta("provisioning_handlers_auto_disabled_total"), 1.0);
    assert_eq!(
        delta(r#"provisioning_handler_run_duration_seconds_count{phase="after"}"#),
        9.0 + 3.0 + 1.0
    );
    // Every accepted AFTER event went through a commit: 9 + the duplicate's answer
    // (also a commit) + 2, in groups of at least one.
    assert!(delta("provisioning_ingest_group_commit_events_sum") >= 12.0);
    assert!(after.value("provisioning_db_pool_connections_idle") >= 1.0);
    assert!(after.0.contains_key("provisioning_db_pool_waiting"));

    // Gauges read now. One run slot and a slow endpoint: while the first delivery
    // runs, the next ones wait due in the table.
    receiver.route("/slow", vec![Reply::ok().delay(Duration::from_secs(2))]);
    create(
        &server.client,
        http_handler(
            "slow",
            "subscriptions.renew",
            proto::Phase::After,
            &receiver.url("/slow"),
        ),
    )
    .await;
    for n in 0..3 {
        emit_after(
            &server.client,
            "subscriptions.renew",
            &format!(r#"{{"n": {n}}}"#),
        )
        .await;
    }
    eventually(WAIT, "deliveries due and waiting", || async {
        let now = Scrape::of(metrics_addr).await;
        (now.value("provisioning_deliveries_due") >= 1.0
            && now.value("provisioning_oldest_due_delivery_age_seconds") > 0.0)
            .then_some(())
    })
    .await;
    let tail = server
        .client
        .tail_logs(proto::TailLogsRequest::default())
        .await
        .expect("tail");
    let with_tail = Scrape::of(metrics_addr).await;
    assert_eq!(with_tail.value("provisioning_tail_subscribers"), 1.0);
    drop(tail);
    eventually(Duration::from_secs(10), "the tail closed", || async {
        (Scrape::of(metrics_addr)
            .await
            .value("provisioning_tail_subscribers")
            == 0.0)
            .then_some(())
    })
    .await;

    let (status, _, _) = get(metrics_addr, "/elsewhere").await;
    assert_eq!(status, 404);
}

/// A taken metrics address fails the start with a message naming the flag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_metrics_address_fails_the_start() {
    let db = TestDatabase::new().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("address");
    let mut config = provisioning_tests::test_config(&db, std::path::Path::new("/tmp"));
    config.metrics_listen = Some(addr);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let result = provisioning_server::run(config, listener, Default::default()).await;
    let error = result.expect_err("the start fails").to_string();
    assert!(error.contains("--metrics-listen"), "{error}");
}
