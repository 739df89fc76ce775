//! HandlerService.Test (issue #14): one handler run once, now, on given data or on the
//! data of a logged run, against real HTTP receivers and real scripts. The reply says
//! what happened; the run is logged marked as a test; no event, no delivery, no retry,
//! no effect on the handler's health or statistics. Disabled handlers can be tested,
//! archived ones cannot; readers cannot run tests; `provctl handlers test`.

use std::time::Duration;

use provisioning_client::{proto, Client, ClientError};
use provisioning_tests::receiver::{verify_signature, Receiver, Reply};
use provisioning_tests::{spawn_server, TestDatabase};
use tonic::Code;

use crate::auth::{secured_server, with_token, ADMIN, READER};
use crate::cli::provctl_ok;
use crate::dispatch::{
    count, create, emit_after, http_handler, log_rows, same_json, script_handler, secret_of,
    wait_for_logs,
};

const DATA: &str = r#"{"id_clients": 15, "email": "ann@example.com", "amount": 12.50}"#;

fn with_data(id: i64, data: &str) -> proto::TestHandlerRequest {
    proto::TestHandlerRequest {
        id,
        input: Some(proto::test_handler_request::Input::DataJson(
            data.to_owned(),
        )),
    }
}

async fn run_test(client: &Client, id: i64, data: &str) -> proto::TestHandlerResponse {
    client
        .test_handler(with_data(id, data))
        .await
        .unwrap_or_else(|e| panic!("testing handler {id}: {e}"))
}

#[track_caller]
fn assert_code<T: std::fmt::Debug>(result: Result<T, ClientError>, code: Code) -> String {
    match result {
        Err(error) if error.code() == Some(code) => error
            .status()
            .map(|s| s.message().to_owned())
            .unwrap_or_default(),
        other => panic!("expected {code:?}, got {other:?}"),
    }
}

fn test_rows(db: &TestDatabase) -> i64 {
    count(
        db,
        "SELECT count(*) AS n FROM execution_logs WHERE test AND delivery_id IS NULL",
    )
}

/// A disabled AFTER handler is tested before it is enabled: the receiver gets the
/// signed request a delivery would send (marked as a test), the reply says what it
/// answered, and the run is logged as a test with no event and no delivery behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn testing_a_disabled_http_handler_calls_it_once_and_logs_a_test_run() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let receiver = Receiver::start().await;
    receiver.route("/crm", vec![Reply::text(201, "client 15 created")]);
    let handler = create(
        &server.client,
        proto::CreateHandlerRequest {
            status: proto::HandlerStatus::Disabled.into(),
            ..http_handler(
                "crm",
                "clients.create",
                proto::Phase::After,
                &receiver.url("/crm"),
            )
        },
    )
    .await;

    let reply = run_test(&server.client, handler.id, DATA).await;
    assert_eq!(reply.status, proto::RunStatus::Success as i32, "{reply:?}");
    assert_eq!(
        (
            reply.http_status,
            reply.response.as_str(),
            reply.error.as_str()
        ),
        (201, "client 15 created", "")
    );
    assert_eq!(reply.data_sent_json, DATA);
    assert_eq!(reply.outcome, proto::HandlerOutcome::Unspecified as i32);
    assert!(reply.log_id > 0 && reply.event_id > 0, "{reply:?}");

    let requests = receiver.requests("/crm");
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.body_text(), DATA, "the data byte for byte");
    assert_eq!(request.header("x-provisioning-test"), Some("true"));
    assert_eq!(
        request.header("x-provisioning-event"),
        Some("clients.create")
    );
    assert_eq!(
        request.header("webhook-id"),
        Some(format!("evt_{}_{}", reply.event_id, handler.id).as_str())
    );
    assert!(verify_signature(&secret_of(&handler), request));

    // Logged as a test, with nothing stored behind it.
    let log = server
        .client
        .get_log(proto::GetLogRequest { id: reply.log_id })
        .await
        .expect("the test run's log row");
    assert!(log.test, "{log:?}");
    assert_eq!(
        (
            log.handler_id,
            log.delivery_id,
            log.http_status,
            log.event_id
        ),
        (handler.id, 0, 201, reply.event_id)
    );
    assert_eq!(log.status, proto::RunStatus::Success as i32);
    assert!(same_json(&log.data_sent_json, DATA));
    assert_eq!(test_rows(&db), 1);
    assert_eq!(count(&db, "SELECT count(*) AS n FROM deliveries"), 0);
    assert_eq!(count(&db, "SELECT count(*) AS n FROM events"), 0);
    let status = server
        .client
        .get_handler(proto::GetHandlerRequest { id: handler.id })
        .await
        .expect("get")
        .status;
    assert_eq!(
        status,
        proto::HandlerStatus::Disabled as i32,
        "still disabled"
    );

    // Statistics leave test runs out; Retry refuses them.
    let stats = server
        .client
        .log_stats(proto::LogStatsRequest::default())
        .await
        .expect("stats");
    assert!(
        stats.handlers.iter().all(|s| s.handler_id != handler.id),
        "{stats:?}"
    );
    let message = assert_code(
        server
            .client
            .retry(proto::RetryRequest {
                log_id: reply.log_id,
                resend: true,
            })
            .await,
        Code::FailedPrecondition,
    );
    assert!(message.contains("test run"), "{message}");
}

/// A BEFORE handler's test returns its outcome, the decision of a chain of it alone and
/// the data it returned: modified data from an HTTP endpoint and from a script, a
/// forbid with its reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn testing_a_before_handler_returns_its_decision_and_the_data_it_returned() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let receiver = Receiver::start().await;
    let enriched = r#"{"id_clients": 15, "segment": "vip"}"#;
    receiver.route("/enrich", vec![Reply::text(200, enriched)]);
    receiver.route("/credit", vec![Reply::text(403, "credit check failed")]);
    let enrich = create(
        &server.client,
        http_handler(
            "enrich",
            "clients.create",
            proto::Phase::Before,
            &receiver.url("/enrich"),
        ),
    )
    .await;
    let credit = create(
        &server.client,
        http_handler(
            "credit",
            "clients.create",
            proto::Phase::Before,
            &receiver.url("/credit"),
        ),
    )
    .await;
    let script = create(
        &server.client,
        script_handler(
            "modify",
            "clients.create",
            proto::Phase::Before,
            "modify.sh",
        ),
    )
    .await;

    let reply = run_test(&server.client, enrich.id, DATA).await;
    assert_eq!(
        (reply.status, reply.outcome, reply.decision),
        (
            proto::RunStatus::Success as i32,
            proto::HandlerOutcome::Modified as i32,
            proto::Decision::Allowed as i32
        ),
        "{reply:?}"
    );
    assert_eq!(reply.data_returned_json, enriched);
    assert_eq!(
        receiver.requests("/enrich")[0].header("x-provisioning-phase"),
        Some("before")
    );

    let reply = run_test(&server.client, credit.id, DATA).await;
    assert_eq!(
        (
            reply.status,
            reply.outcome,
            reply.decision,
            reply.http_status
        ),
        (
            proto::RunStatus::Success as i32,
            proto::HandlerOutcome::Forbade as i32,
            proto::Decision::Forbidden as i32,
            403
        ),
        "{reply:?}"
    );
    assert_eq!(reply.error, "credit check failed");
    assert_eq!(reply.data_returned_json, DATA, "unchanged");

    let reply = run_test(&server.client, script.id, r#"{"id": 15}"#).await;
    assert_eq!(
        reply.outcome,
        proto::HandlerOutcome::Modified as i32,
        "{reply:?}"
    );
    assert_eq!(reply.exit_code, Some(0));
    assert!(
        same_json(
            &reply.data_returned_json,
            r#"{"checked_by_script": true, "id": 15}"#
        ),
        "{reply:?}"
    );

    // Each run logged as a BEFORE test run with the data returned.
    let rows = wait_for_logs(&db, "three test rows", |rows| rows.len() == 3).await;
    let modified = rows
        .iter()
        .find(|r| r.handler_id == script.id)
        .expect("script row");
    assert_eq!(modified.phase, "before");
    assert!(same_json(
        modified.data_returned.as_deref().unwrap_or_default(),
        r#"{"checked_by_script": true, "id": 15}"#
    ));
    assert_eq!(test_rows(&db), 3);
}

/// A failing endpoint is reported (status, error) and not retried, and a 410 Gone does
/// not disable the handler: a test is not a delivery. A failing script gives its exit
/// code; a script sees `PROVISIONING_TEST=1`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_reported_without_retries_or_effect_on_the_handler() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let receiver = Receiver::start().await;
    receiver.route("/down", vec![Reply::text(503, "maintenance")]);
    receiver.route("/gone", vec![Reply::status(410)]);
    let down = create(
        &server.client,
        http_handler(
            "down",
            "clients.create",
            proto::Phase::After,
            &receiver.url("/down"),
        ),
    )
    .await;
    let gone = create(
        &server.client,
        http_handler(
            "gone",
            "clients.create",
            proto::Phase::After,
            &receiver.url("/gone"),
        ),
    )
    .await;
    let crash = create(
        &server.client,
        script_handler("crash", "clients.create", proto::Phase::After, "crash.sh"),
    )
    .await;
    let env = create(
        &server.client,
        script_handler("env", "clients.create", proto::Phase::After, "env.sh"),
    )
    .await;

    let reply = run_test(&server.client, down.id, DATA).await;
    assert_eq!(
        (
            reply.status,
            reply.http_status,
            reply.error.as_str(),
            reply.response.as_str()
        ),
        (
            proto::RunStatus::Fail as i32,
            503,
            "HTTP 503",
            "maintenance"
        )
    );
    let reply = run_test(&server.client, gone.id, DATA).await;
    assert_eq!(reply.status, proto::RunStatus::Fail as i32);
    assert!(reply.error.contains("410"), "{reply:?}");
    let reply = run_test(&server.client, crash.id, DATA).await;
    assert_eq!(
        (reply.status, reply.exit_code, reply.error.as_str()),
        (
            proto::RunStatus::Fail as i32,
            Some(1),
            "script exited with code 1"
        )
    );
    assert!(reply.response.contains("something broke"), "{reply:?}");
    let reply = run_test(&server.client, env.id, DATA).await;
    assert!(reply.response.contains("PROVISIONING_TEST=1"), "{reply:?}");

    // No retry comes, nothing was disabled, nothing is counted against the handlers.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(receiver.count("/down"), 1);
    assert_eq!(receiver.count("/gone"), 1);
    for id in [down.id, gone.id] {
        let handler = server
            .client
            .get_handler(proto::GetHandlerRequest { id })
            .await
            .expect("get");
        assert_eq!(handler.status, proto::HandlerStatus::Enabled as i32);
        assert_eq!(handler.disabled_reason, "");
    }
    assert_eq!(
        count(
            &db,
            "SELECT count(*) AS n FROM handlers WHERE failing_since IS NOT NULL"
        ),
        0
    );
    assert_eq!(count(&db, "SELECT count(*) AS n FROM deliveries"), 0);
    assert_eq!(test_rows(&db), 4);
}

/// `log_id` resends the data of a logged run; the data of a test is checked as Emit
/// checks it (object, schema); unknown handlers and log rows are NOT_FOUND; archived
/// handlers cannot run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_are_checked_and_logged_data_can_be_replayed() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let receiver = Receiver::start().await;
    let handler = create(
        &server.client,
        http_handler(
            "crm",
            "clients.create",
            proto::Phase::After,
            &receiver.url("/crm"),
        ),
    )
    .await;
    emit_after(&server.client, "clients.create", DATA).await;
    receiver.wait_for("/crm", 1, crate::dispatch::WAIT).await;
    let logged = wait_for_logs(&db, "the delivery's row", |rows| rows.len() == 1).await;
    assert!(logged[0].delivery_id.is_some());
    let log_id = count(&db, "SELECT max(id) AS n FROM execution_logs");

    let reply = server
        .client
        .test_handler(proto::TestHandlerRequest {
            id: handler.id,
            input: Some(proto::test_handler_request::Input::LogId(log_id)),
        })
        .await
        .expect("replay a logged run");
    assert_eq!(reply.status, proto::RunStatus::Success as i32);
    assert!(same_json(&reply.data_sent_json, DATA), "{reply:?}");
    assert_eq!(receiver.count("/crm"), 2);
    assert!(same_json(&receiver.requests("/crm")[1].body_text(), DATA));

    // Bad input.
    let message = assert_code(
        server
            .client
            .test_handler(with_data(handler.id, "[1, 2]"))
            .await,
        Code::InvalidArgument,
    );
    assert!(message.starts_with("data_json:"), "{message}");
    assert_code(
        server.client.test_handler(with_data(handler.id, "{")).await,
        Code::InvalidArgument,
    );
    let message = assert_code(
        server
            .client
            .test_handler(proto::TestHandlerRequest {
                id: handler.id,
                input: None,
            })
            .await,
        Code::InvalidArgument,
    );
    assert!(message.contains("data_json or log_id"), "{message}");
    server
        .client
        .update_event_type(proto::UpdateEventTypeRequest {
            event_type: Some(proto::EventType {
                name: "clients.create".into(),
                schema_json: r#"{"required": ["phone"]}"#.into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["schema_json".into()],
            }),
        })
        .await
        .expect("schema");
    let message = assert_code(
        server
            .client
            .test_handler(with_data(handler.id, DATA))
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(
        message,
        r#"data_json: (root): "phone" is a required property"#
    );
    let message = assert_code(
        server
            .client
            .test_handler(proto::TestHandlerRequest {
                id: handler.id,
                input: Some(proto::test_handler_request::Input::LogId(log_id)),
            })
            .await,
        Code::InvalidArgument,
    );
    assert!(
        message.contains(&format!("execution log {log_id}")),
        "{message}"
    );

    // Unknown ids.
    let message = assert_code(
        server.client.test_handler(with_data(987_654, "{}")).await,
        Code::NotFound,
    );
    assert!(message.contains("handler 987654"), "{message}");
    let message = assert_code(
        server
            .client
            .test_handler(proto::TestHandlerRequest {
                id: handler.id,
                input: Some(proto::test_handler_request::Input::LogId(987_654)),
            })
            .await,
        Code::NotFound,
    );
    assert!(message.contains("execution log 987654"), "{message}");

    // Archived.
    server
        .client
        .set_handler_status(proto::SetHandlerStatusRequest {
            id: handler.id,
            status: proto::HandlerStatus::Archived.into(),
        })
        .await
        .expect("archive");
    let message = assert_code(
        server
            .client
            .test_handler(with_data(handler.id, r#"{"phone": "1"}"#))
            .await,
        Code::FailedPrecondition,
    );
    assert!(message.contains("archived"), "{message}");
    assert_eq!(receiver.count("/crm"), 2, "refused tests call nothing");
    assert_eq!(test_rows(&db), 1);
    assert_eq!(log_rows(&db).len(), 2);
}

/// Tests are an admin's tool: a reader cannot run one (and nothing is called), an admin
/// can; provctl runs them too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_cannot_run_tests_and_provctl_can() {
    let db = TestDatabase::new().await;
    let (server, _tokens) = secured_server(&db).await;
    let admin = with_token(&server, ADMIN);
    let reader = with_token(&server, READER);
    let receiver = Receiver::start().await;
    receiver.route("/crm", vec![Reply::text(200, "ok")]);
    let handler = create(
        &admin,
        http_handler(
            "crm",
            "clients.create",
            proto::Phase::After,
            &receiver.url("/crm"),
        ),
    )
    .await;

    assert_code(
        reader.test_handler(with_data(handler.id, DATA)).await,
        Code::PermissionDenied,
    );
    assert_eq!(receiver.count("/crm"), 0);
    assert_eq!(test_rows(&db), 0);

    let id = handler.id.to_string();
    let text = provctl_ok(
        &server.url,
        &["--token", ADMIN, "handlers", "test", &id, "--data", DATA],
    )
    .await;
    assert!(text.starts_with("status:      Success\n"), "{text}");
    assert!(text.contains("http status: 200"), "{text}");
    let json = provctl_ok(
        &server.url,
        &[
            "--token", ADMIN, "--output", "json", "handlers", "test", &id, "--data", DATA,
        ],
    )
    .await;
    let json: serde_json::Value = serde_json::from_str(json.trim()).expect("one JSON line");
    assert_eq!(json["status"], "success");
    assert_eq!(json["data_sent_json"]["id_clients"], 15);
    assert_eq!(receiver.count("/crm"), 2);

    // The log views mark test runs.
    let log_id = json["log_id"].as_i64().expect("log id").to_string();
    let shown = provctl_ok(
        &server.url,
        &[
            "--token", READER, "--output", "json", "logs", "show", &log_id,
        ],
    )
    .await;
    assert!(shown.contains(r#""test":true"#), "{shown}");
    let search = provctl_ok(&server.url, &["--token", READER, "logs", "search"]).await;
    assert!(search.contains("crm (test)"), "{search}");
}
