//! Retrying by hand: Retry of an attempt whose delivery has since succeeded is refused
//! unless it is a deliberate re-send, which keeps the `webhook-id`; RetryFailed (and
//! `provctl logs retry --handler`) brings back every failed delivery of a handler.

use provisioning_client::{proto, Client, ClientError};
use provisioning_tests::receiver::{Receiver, Reply};
use provisioning_tests::{spawn_server_with, TestDatabase};
use tonic::Code;

use crate::cli::{json_lines, provctl_ok};
use crate::dispatch::{create, emit_after, http_handler, wait_for_logs, LogRow, WAIT};

fn status_of<T: std::fmt::Debug>(result: Result<T, ClientError>) -> tonic::Status {
    match result {
        Err(ClientError::Rpc(status)) => status,
        other => panic!("expected an error status, got {other:?}"),
    }
}

/// The log id of the run of `handler_id` with this attempt number.
async fn log_id(client: &Client, handler_id: i64, attempt: u32) -> i64 {
    let mut stream = client
        .search_logs(proto::SearchLogsRequest {
            filter: Some(proto::LogFilter {
                handler_id,
                attempt,
                ..Default::default()
            }),
            limit: 10,
            cursor: String::new(),
        })
        .await
        .expect("search");
    let entry = stream
        .message()
        .await
        .expect("search page")
        .expect("one run");
    entry.log.expect("a log").id
}

/// A handler failed attempt 1 then received attempt 2: Retry of attempt 1 answers
/// FAILED_PRECONDITION ("delivered at ..."), sends nothing, and a deliberate re-send
/// (`resend`) delivers once more under the same `webhook-id`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_of_a_delivered_event_needs_resend_and_keeps_the_webhook_id() {
    let db = TestDatabase::new().await;
    let server = spawn_server_with(&db, |_| {}).await;
    let receiver = Receiver::start().await;
    receiver.route("/h", vec![Reply::status(500), Reply::ok()]);
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
    emit_after(&server.client, "clients.create", r#"{"id": 1}"#).await;
    wait_for_logs(&db, "the failure and the success", |rows: &[LogRow]| {
        rows.iter().any(|r| r.status == "success")
    })
    .await;
    let first = log_id(&server.client, handler.id, 1).await;

    for _ in 0..2 {
        let status = status_of(
            server
                .client
                .retry(proto::RetryRequest {
                    log_id: first,
                    resend: false,
                })
                .await,
        );
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert!(status.message().contains("delivered at"), "{status:?}");
    }
    assert_eq!(receiver.count("/h"), 2, "a refused retry sends nothing");

    server
        .client
        .retry(proto::RetryRequest {
            log_id: first,
            resend: true,
        })
        .await
        .expect("a deliberate re-send");
    let requests = receiver.wait_for("/h", 3, WAIT).await;
    let ids: Vec<Option<&str>> = requests.iter().map(|r| r.header("webhook-id")).collect();
    assert!(ids[0].is_some());
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "one webhook-id for every send of the event to the handler: {ids:?}"
    );
    wait_for_logs(&db, "the re-send's row", |rows| {
        rows.iter().filter(|r| r.status == "success").count() == 2
    })
    .await;
}

/// RetryFailed makes every dead delivery of one handler due again (events since a time),
/// leaves other handlers alone, and refuses what it cannot do; provctl drives it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_failed_brings_back_every_failed_delivery_of_a_handler() {
    let db = TestDatabase::new().await;
    let server = spawn_server_with(&db, |config| config.max_attempts = 1).await;
    let receiver = Receiver::start().await;
    receiver.route(
        "/h",
        vec![
            Reply::status(500),
            Reply::status(500),
            Reply::status(500),
            Reply::ok(),
        ],
    );
    receiver.route("/other", vec![Reply::status(500), Reply::ok()]);
    let handler = create(
        &server.client,
        http_handler(
            "h",
            "clients.update",
            proto::Phase::After,
            &receiver.url("/h"),
        ),
    )
    .await;
    let other = create(
        &server.client,
        http_handler(
            "other",
            "clients.delete",
            proto::Phase::After,
            &receiver.url("/other"),
        ),
    )
    .await;
    for n in 0..3 {
        emit_after(
            &server.client,
            "clients.update",
            &format!(r#"{{"n": {n}}}"#),
        )
        .await;
    }
    emit_after(&server.client, "clients.delete", "{}").await;
    wait_for_logs(&db, "four failures", |rows| rows.len() == 4).await;
    let dead =
        || crate::dispatch::count(&db, "SELECT count(*) AS n FROM deliveries WHERE state = 3");
    assert_eq!(dead(), 4, "every delivery is dead after its one attempt");

    let none = server
        .client
        .retry_failed(proto::RetryFailedRequest {
            handler_id: handler.id,
            since: Some(prost_types::Timestamp {
                seconds: chrono::Utc::now().timestamp() + 60,
                nanos: 0,
            }),
        })
        .await
        .expect("retry failed since the future");
    assert_eq!(none.scheduled, 0);

    let stdout = provctl_ok(
        &server.url,
        &[
            "--output",
            "json",
            "logs",
            "retry",
            "--handler",
            &handler.id.to_string(),
            "--since",
            "1h",
        ],
    )
    .await;
    assert_eq!(json_lines(&stdout)[0]["scheduled"], 3, "{stdout}");
    receiver.wait_for("/h", 6, WAIT).await;
    wait_for_logs(&db, "three successes", |rows| {
        rows.iter().filter(|r| r.status == "success").count() == 3
    })
    .await;
    assert_eq!(receiver.count("/other"), 1, "another handler is left alone");
    assert_eq!(dead(), 1);
    // Without `since`, every event counts: the default bound must be a time PostgreSQL
    // holds (chrono's earliest time failed the query with INTERNAL).
    let all = server
        .client
        .retry_failed(proto::RetryFailedRequest {
            handler_id: other.id,
            since: None,
        })
        .await
        .expect("retry failed without since");
    assert_eq!(all.scheduled, 1);
    receiver.wait_for("/other", 2, WAIT).await;

    for (request, code) in [
        (
            proto::RetryFailedRequest {
                handler_id: 0,
                since: None,
            },
            Code::InvalidArgument,
        ),
        (
            proto::RetryFailedRequest {
                handler_id: other.id + 100,
                since: None,
            },
            Code::NotFound,
        ),
    ] {
        assert_eq!(
            status_of(server.client.retry_failed(request).await).code(),
            code
        );
    }
    server
        .client
        .set_handler_status(proto::SetHandlerStatusRequest {
            id: other.id,
            status: proto::HandlerStatus::Disabled.into(),
        })
        .await
        .expect("disable");
    let status = status_of(
        server
            .client
            .retry_failed(proto::RetryFailedRequest {
                handler_id: other.id,
                since: None,
            })
            .await,
    );
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
}
