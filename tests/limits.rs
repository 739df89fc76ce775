//! Per-handler limits end to end, judged by a real HTTP receiver's arrival times:
//! `max_in_flight` holds across two replicas, `rate_per_second` spaces the starts, a
//! limited handler's backlog does not hold up another handler, and bad limits are
//! refused with the field named.

use std::time::Duration;

use provisioning_client::{proto, Client};
use provisioning_tests::receiver::{Receiver, Recorded, Reply};
use provisioning_tests::{
    prepare_scripts_dir, spawn_server, spawn_server_process, TempDir, TestDatabase,
};

use crate::dispatch::{
    create, event_request, http_handler, invalid_argument, numbers, wait_for_count,
};

/// A limited AFTER handler of `event` posting to `url`.
fn limited_handler(
    event: &str,
    url: &str,
    max_in_flight: u32,
    rate_per_second: u32,
) -> proto::CreateHandlerRequest {
    proto::CreateHandlerRequest {
        max_in_flight,
        rate_per_second,
        ..http_handler(event, event, proto::Phase::After, url)
    }
}

/// `n` AFTER events of `event` through one EmitBatch.
async fn emit_many(client: &Client, event: &str, n: usize) {
    let events = (0..n)
        .map(|i| event_request(event, proto::Phase::After, &format!(r#"{{"n": {i}}}"#)))
        .collect();
    client
        .emit_batch(proto::EmitBatchRequest { events })
        .await
        .expect("emit batch");
}

/// The most requests that arrived within any `window` (a request and those after it).
fn most_within(requests: &[Recorded], window: Duration) -> usize {
    requests
        .iter()
        .map(|first| {
            requests
                .iter()
                .filter(|r| r.arrived >= first.arrived && r.arrived < first.arrived + window)
                .count()
        })
        .max()
        .unwrap_or(0)
}

/// Two replicas, 40 events, a handler taking 150 ms per request limited to 3 at once:
/// no 150 ms window ever sees more than 3 requests start (a slot frees only once the
/// run's outcome is recorded), and all are delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_in_flight_holds_across_two_replicas() {
    const SLOW: Duration = Duration::from_millis(150);
    let db = TestDatabase::new().await;
    let root = TempDir::new("provisioning-limits");
    let scripts = root.path().join("scripts");
    prepare_scripts_dir(&scripts);
    let a = spawn_server_process(&db, &scripts, &[]).await;
    let b = spawn_server_process(&db, &scripts, &[]).await;
    let receiver = Receiver::start().await;
    receiver.route("/slow", vec![Reply::ok().delay(SLOW)]);
    let handler = create(
        &a.client,
        limited_handler("accounts.update", &receiver.url("/slow"), 3, 0),
    )
    .await;
    assert_eq!((handler.max_in_flight, handler.rate_per_second), (3, 0));

    tokio::join!(
        emit_many(&a.client, "accounts.update", 20),
        emit_many(&b.client, "accounts.update", 20),
    );
    let requests = receiver
        .wait_for("/slow", 40, Duration::from_secs(60))
        .await;
    let most = most_within(&requests, SLOW);
    assert!(most <= 3, "{most} requests started within {SLOW:?}");
    assert!(most >= 2, "the limit is 3, not 1: at most {most} at once");
    wait_for_count(
        &db,
        "every delivery recorded",
        "SELECT count(*) AS n FROM deliveries",
        0,
    )
    .await;
}

/// A handler limited to 20 requests/s and an unlimited one, fed the same burst: the
/// limited one gets at most 20 × (t + 1) requests in any t seconds and its backlog is
/// visible as throttled, while the unlimited one is served at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_handler_is_spaced_out_and_does_not_hold_up_another() {
    const RATE: u32 = 20;
    const EVENTS: usize = 100;
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let receiver = Receiver::start().await;
    let limited = create(
        &server.client,
        limited_handler("accounts.update", &receiver.url("/limited"), 0, RATE),
    )
    .await;
    create(
        &server.client,
        http_handler(
            "free",
            "accounts.delete",
            proto::Phase::After,
            &receiver.url("/free"),
        ),
    )
    .await;
    // The limited handler's backlog first, then the other handler's burst.
    emit_many(&server.client, "accounts.update", EVENTS).await;
    emit_many(&server.client, "accounts.delete", EVENTS).await;

    let stats = server
        .client
        .log_stats(proto::LogStatsRequest {
            handler_id: limited.id,
            ..Default::default()
        })
        .await
        .expect("stats");
    let throttled = stats.handlers.first().map_or(0, |s| s.throttled);
    assert!(throttled > 0, "the backlog shows as throttled: {stats:?}");

    let free = receiver
        .wait_for("/free", EVENTS, Duration::from_secs(30))
        .await;
    let limited_before = receiver
        .requests("/limited")
        .iter()
        .filter(|r| r.arrived <= free[EVENTS - 1].arrived)
        .count();
    assert!(
        limited_before < EVENTS / 2,
        "the other handler waited for the limited one: {limited_before} limited requests first"
    );

    let requests = receiver
        .wait_for("/limited", EVENTS, Duration::from_secs(60))
        .await;
    let most = most_within(&requests, Duration::from_secs(1));
    assert!(
        most <= 2 * RATE as usize,
        "{most} requests within one second at {RATE}/s"
    );
    let span = requests[EVENTS - 1].arrived - requests[0].arrived;
    let least = Duration::from_secs_f64((EVENTS as f64 - 2.0 * RATE as f64) / RATE as f64);
    assert!(span >= least, "{EVENTS} requests in {span:?} at {RATE}/s");
}

/// Limits out of range are refused naming the field; 0 removes a limit on Update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_limits_are_refused_and_zero_removes_a_limit() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let client = &server.client;
    let url = "http://127.0.0.1:9/hook";

    let message = invalid_argument(
        client
            .create_handler(limited_handler("clients.create", url, 10_001, 0))
            .await,
    );
    assert_eq!(
        message,
        "max_in_flight: must be at most 10000 (0 = unlimited), got 10001"
    );
    let message = invalid_argument(
        client
            .create_handler(limited_handler("clients.create", url, 0, 100_001))
            .await,
    );
    assert_eq!(
        message,
        "rate_per_second: must be at most 100000 (0 = unlimited), got 100001"
    );

    let handler = create(client, limited_handler("clients.create", url, 5, 50)).await;
    assert_eq!((handler.max_in_flight, handler.rate_per_second), (5, 50));
    let updated = client
        .update_handler(proto::UpdateHandlerRequest {
            handler: Some(proto::Handler {
                id: handler.id,
                max_in_flight: 0,
                rate_per_second: 7,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["max_in_flight".into(), "rate_per_second".into()],
            }),
        })
        .await
        .expect("update");
    assert_eq!((updated.max_in_flight, updated.rate_per_second), (0, 7));
}

/// A limited handler with ordering keys: a failed first delivery waits throttled for its
/// retry, and the later events of its key wait for it, then arrive in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_events_to_a_limited_handler_keep_their_order_across_a_retry() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let receiver = Receiver::start().await;
    receiver.route("/keyed", vec![Reply::status(500), Reply::ok()]);
    create(
        &server.client,
        limited_handler("accounts.update", &receiver.url("/keyed"), 5, 0),
    )
    .await;
    for n in 0..6 {
        let request = proto::EmitRequest {
            ordering_key: "account:1".into(),
            ..event_request(
                "accounts.update",
                proto::Phase::After,
                &format!(r#"{{"n": {n}}}"#),
            )
        };
        server.client.emit(request).await.expect("emit");
    }
    let requests = receiver
        .wait_for("/keyed", 7, Duration::from_secs(30))
        .await;
    assert_eq!(numbers(&requests), [0, 0, 1, 2, 3, 4, 5]);
}
