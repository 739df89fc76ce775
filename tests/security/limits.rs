//! Every configured limit hit once, with its documented status: message size
//! (OUT_OF_RANGE from tonic), handlers per event (FAILED_PRECONDITION), headers per
//! handler (INVALID_ARGUMENT), concurrent calls (RESOURCE_EXHAUSTED at once), HTTP/2
//! streams per connection (a further call on that connection waits), live tails
//! (RESOURCE_EXHAUSTED) and the default deadline.

use std::time::{Duration, Instant};

use provisioning_client::{proto, Client};
use provisioning_tests::receiver::{Receiver, Reply};
use provisioning_tests::{eventually, is_serving, spawn_server_with, TestDatabase};

use super::{failure, http_with_headers};
use crate::dispatch::{create, emit_before, event_request, http_handler};

fn tail_request() -> proto::TailLogsRequest {
    proto::TailLogsRequest::default()
}

/// A message over `--max-message-bytes` is refused by the transport (OUT_OF_RANGE)
/// before any handler code runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_size_limit_is_out_of_range() {
    let db = TestDatabase::new().await;
    let server = spawn_server_with(&db, |config| {
        config.max_payload_bytes = 1000;
        config.max_message_bytes = 1000 + 64 * 1024;
    })
    .await;
    let data = format!(r#"{{"blob": "{}"}}"#, "x".repeat(100_000));
    let (code, message) = failure(
        server
            .client
            .emit(event_request("clients.create", proto::Phase::After, &data))
            .await,
    );
    assert_eq!(code, tonic::Code::OutOfRange, "{message}");
}

/// `--max-handlers-per-event`: one more is FAILED_PRECONDITION naming the flag;
/// archived handlers do not count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_beyond_the_per_event_limit_are_a_failed_precondition() {
    let db = TestDatabase::new().await;
    let server = spawn_server_with(&db, |config| config.max_handlers_per_event = 2).await;
    let url = "http://127.0.0.1:9/hook";
    let first = create(
        &server.client,
        http_handler("a", "clients.create", proto::Phase::After, url),
    )
    .await;
    create(
        &server.client,
        http_handler("b", "clients.create", proto::Phase::Before, url),
    )
    .await;
    let third = http_handler("c", "clients.create", proto::Phase::After, url);
    let (code, message) = failure(server.client.create_handler(third.clone()).await);
    assert_eq!(code, tonic::Code::FailedPrecondition, "{message}");
    assert!(message.contains("--max-handlers-per-event 2"), "{message}");
    // Another event has room.
    create(
        &server.client,
        http_handler("d", "clients.update", proto::Phase::After, url),
    )
    .await;
    server
        .client
        .set_handler_status(proto::SetHandlerStatusRequest {
            id: first.id,
            status: proto::HandlerStatus::Archived.into(),
        })
        .await
        .expect("archiving");
    let third = create(&server.client, third).await;
    // Back from the archive it would count again: refused while the event is full.
    let (code, message) = failure(
        server
            .client
            .set_handler_status(proto::SetHandlerStatusRequest {
                id: first.id,
                status: proto::HandlerStatus::Enabled.into(),
            })
            .await,
    );
    assert_eq!(code, tonic::Code::FailedPrecondition, "{message}");
    assert!(third.id > first.id);
}

/// `--max-headers-per-handler`: more headers are INVALID_ARGUMENT naming http.headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_beyond_the_per_handler_limit_are_invalid() {
    let db = TestDatabase::new().await;
    let server = spawn_server_with(&db, |config| config.max_headers_per_handler = 2).await;
    let url = "http://127.0.0.1:9/hook";
    create(
        &server.client,
        http_with_headers("two", url, &[("x-a", "1"), ("x-b", "2")]),
    )
    .await;
    let (code, message) = failure(
        server
            .client
            .create_handler(http_with_headers(
                "three",
                url,
                &[("x-a", "1"), ("x-b", "2"), ("x-c", "3")],
            ))
            .await,
    );
    assert_eq!(code, tonic::Code::InvalidArgument, "{message}");
    assert!(
        message.starts_with("http.headers: 3 headers given, at most 2"),
        "{message}"
    );
}

/// `--max-concurrent-requests`: with the only slot held by an open stream, a call is
/// refused at once with RESOURCE_EXHAUSTED; health checks still answer; once the
/// stream ends, calls go through again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_beyond_the_concurrency_limit_are_refused_at_once() {
    let db = TestDatabase::new().await;
    let server = spawn_server_with(&db, |config| config.max_concurrent_requests = 1).await;
    let tail = server.client.tail_logs(tail_request()).await.expect("tail");
    let started = Instant::now();
    let (code, message) = failure(
        server
            .client
            .list_handlers(proto::ListHandlersRequest::default())
            .await,
    );
    assert_eq!(code, tonic::Code::ResourceExhausted, "{message}");
    assert!(message.contains("--max-concurrent-requests"), "{message}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused at once"
    );
    assert!(is_serving(&server.url).await, "health checks are exempt");
    drop(tail);
    eventually(
        Duration::from_secs(10),
        "the slot to be free again",
        || async {
            server
                .client
                .list_handlers(proto::ListHandlersRequest::default())
                .await
                .ok()
        },
    )
    .await;
}

/// `--max-concurrent-streams`: with one stream per connection open, a further call on
/// that connection waits, while another connection is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_beyond_the_per_connection_limit_wait() {
    let db = TestDatabase::new().await;
    let server = spawn_server_with(&db, |config| config.max_concurrent_streams = 1).await;
    let _tail = server.client.tail_logs(tail_request()).await.expect("tail");
    let waited = tokio::time::timeout(
        Duration::from_millis(700),
        server
            .client
            .list_handlers(proto::ListHandlersRequest::default()),
    )
    .await;
    assert!(waited.is_err(), "a second stream opened: {waited:?}");
    let other = Client::connect(server.url.clone()).await.expect("connect");
    other
        .list_handlers(proto::ListHandlersRequest::default())
        .await
        .expect("another connection is served");
}

/// `--max-tail-subscribers`: one live tail more is RESOURCE_EXHAUSTED naming the flag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tails_beyond_the_subscriber_limit_are_resource_exhausted() {
    let db = TestDatabase::new().await;
    let server = spawn_server_with(&db, |config| config.max_tail_subscribers = 1).await;
    let _tail = server.client.tail_logs(tail_request()).await.expect("tail");
    let (code, message) = failure(server.client.tail_logs(tail_request()).await);
    assert_eq!(code, tonic::Code::ResourceExhausted, "{message}");
    assert!(message.contains("--max-tail-subscribers"), "{message}");
}

/// `--default-deadline`: a caller that sets no deadline gets the default, so a BEFORE
/// chain with a slow handler ends (fail closed) at it instead of the handler's 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_without_a_deadline_get_the_default_one() {
    let db = TestDatabase::new().await;
    let server = spawn_server_with(&db, |config| {
        config.default_deadline = Duration::from_millis(500)
    })
    .await;
    let receiver = Receiver::start().await;
    receiver.route("/slow", vec![Reply::ok().delay(Duration::from_secs(5))]);
    create(
        &server.client,
        proto::CreateHandlerRequest {
            timeout_ms: 10_000,
            ..http_handler(
                "slow",
                "clients.create",
                proto::Phase::Before,
                &receiver.url("/slow"),
            )
        },
    )
    .await;
    let started = Instant::now();
    let reply = emit_before(&server.client, "clients.create", r#"{"id": 1}"#).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(
        reply.decision,
        proto::Decision::Forbidden as i32,
        "{reply:?}"
    );
    assert!(reply.results[0].error.contains("timed out"), "{reply:?}");
}
