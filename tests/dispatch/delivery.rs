//! HTTP delivery of AFTER events: the exact bytes, signed; timeouts, retries on the
//! schedule, dead deliveries, priority order between the handlers of one event, and
//! what the endpoint's answer (410, 429, 503) or its absence does to the delivery.

use std::collections::HashSet;
use std::time::Duration;

use provisioning_client::proto;
use provisioning_tests::receiver::{verify_signature, Receiver, Reply};
use provisioning_tests::{eventually, free_addr, spawn_server, spawn_server_with, TestDatabase};

use super::{
    count, create, delivery_rows, emit_after, http_handler, log_rows, numbers, same_json,
    secret_of, wait_for_logs, WAIT,
};

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

/// The replica that stores an event leases its deliveries to itself in the same
/// statement and runs them without claiming them back: when Emit returns, every
/// delivery of the event is already leased (past the lease length), and all of them are
/// then delivered in priority order and settled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_deliveries_are_leased_to_the_storing_replica_when_stored() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let receiver = Receiver::start().await;
    for (name, priority) in [("second", 2), ("first", 1)] {
        let path = format!("/{name}");
        receiver.route(&path, vec![Reply::ok().delay(Duration::from_millis(300))]);
        create(
            &server.client,
            proto::CreateHandlerRequest {
                priority,
                ..http_handler(
                    name,
                    "accounts.update",
                    proto::Phase::After,
                    &receiver.url(&path),
                )
            },
        )
        .await;
    }
    let reply = emit_after(&server.client, "accounts.update", r#"{"n": 1}"#).await;
    assert_eq!(reply.deliveries, 2);
    // The test configuration's lease is 2 s; the chain's timeouts come on top.
    let leased = count(
        &db,
        &format!(
            "SELECT count(*) AS n FROM deliveries WHERE event_id = {} AND state = 1
               AND leased_by IS NOT NULL AND next_attempt_at > now() + interval '2 seconds'",
            reply.event_id
        ),
    );
    assert_eq!(leased, 2, "both deliveries leased by the storing statement");

    let rows = wait_for_logs(&db, "two rows", |rows| rows.len() >= 2).await;
    let names: Vec<&str> = rows.iter().map(|r| r.handler_name.as_str()).collect();
    assert_eq!(names, ["first", "second"]);
    assert!(rows.iter().all(|r| r.status == "success" && r.attempt == 1));
    let paths: Vec<String> = receiver
        .all_requests()
        .into_iter()
        .map(|r| r.path)
        .collect();
    assert_eq!(
        paths,
        ["/first", "/second"],
        "each delivered once, in order"
    );
    eventually(WAIT, "both deliveries settled", || {
        std::future::ready((count(&db, "SELECT count(*) AS n FROM deliveries") == 0).then_some(()))
    })
    .await;
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
    let rows = retried_after_retry_after(Reply::status(429).retry_after(1), 429).await;
    assert_eq!(rows[0].error, "HTTP 429");
}

/// 503 is the other status whose Retry-After the worker honours (RFC 9110): an endpoint
/// in maintenance saying when to come back must not be hammered on the schedule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_unavailable_with_retry_after_is_retried_after_the_given_delay() {
    let first = Reply::text(503, "back in a second").retry_after(1);
    let rows = retried_after_retry_after(first, 503).await;
    assert_eq!(rows[0].error, "HTTP 503");
    assert_eq!(rows[0].response, "back in a second");
}

/// Delivers one event to a handler that answers `first` (HTTP `status` with
/// `Retry-After: 1`), then 200: the retry must come after the second asked for, not on
/// the schedule. Returns the two log rows.
async fn retried_after_retry_after(first: Reply, status: i32) -> Vec<super::LogRow> {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let receiver = Receiver::start().await;
    receiver.route("/slow-down", vec![first, Reply::ok()]);
    create(
        &server.client,
        http_handler(
            "asks to slow down",
            "clients.update",
            proto::Phase::After,
            &receiver.url("/slow-down"),
        ),
    )
    .await;
    emit_after(&server.client, "clients.update", r#"{"id": 9}"#).await;

    let requests = receiver.wait_for("/slow-down", 2, WAIT).await;
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
        rows.iter()
            .map(|r| (r.attempt, r.status.as_str(), r.http_status))
            .collect::<Vec<_>>(),
        [(1, "fail", Some(status)), (2, "success", Some(200))]
    );
    rows
}

/// An `https://` URL goes through the TLS connector: with nothing listening, the attempt
/// fails as a connection error (not as an unsupported scheme) and is logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_handler_on_a_closed_port_fails_with_a_connection_error() {
    let db = TestDatabase::new().await;
    let server = spawn_server_with(&db, |config| config.max_attempts = 1).await;
    let closed = free_addr();
    let handler = create(
        &server.client,
        http_handler(
            "tls endpoint",
            "clients.create",
            proto::Phase::After,
            &format!("https://{closed}/hook"),
        ),
    )
    .await;
    emit_after(&server.client, "clients.create", r#"{"id": 11}"#).await;

    let rows = wait_for_logs(&db, "the FAIL row", |rows| !rows.is_empty()).await;
    assert_eq!(rows.len(), 1, "{rows:#?}");
    let row = &rows[0];
    assert_eq!(row.handler_id, handler.id);
    assert_eq!((row.status.as_str(), row.http_status), ("fail", None));
    assert!(
        row.error.starts_with("connection error") && row.error.contains("refused"),
        "{}",
        row.error
    );
    assert!(!row.error.contains("scheme"), "{}", row.error);
    let deliveries = delivery_rows(&db);
    assert_eq!(
        deliveries.iter().map(|d| d.state).collect::<Vec<_>>(),
        [3],
        "{deliveries:#?}"
    );
}

/// The TLS connector really speaks TLS to an `https://` URL: an endpoint that only
/// speaks plain HTTP never gets the event data in clear, and the attempt fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_handler_never_sends_the_data_in_clear_to_a_plain_http_endpoint() {
    let db = TestDatabase::new().await;
    let server = spawn_server_with(&db, |config| config.max_attempts = 1).await;
    let receiver = Receiver::start().await;
    create(
        &server.client,
        http_handler(
            "tls endpoint",
            "clients.create",
            proto::Phase::After,
            &format!("https://{}/hook", receiver.addr()),
        ),
    )
    .await;
    emit_after(&server.client, "clients.create", r#"{"id": 12}"#).await;

    let rows = wait_for_logs(&db, "the FAIL row", |rows| !rows.is_empty()).await;
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(
        (rows[0].status.as_str(), rows[0].http_status),
        ("fail", None),
        "{rows:#?}"
    );
    assert!(
        rows[0].error.starts_with("connection error"),
        "{}",
        rows[0].error
    );
    assert!(
        receiver.all_requests().is_empty(),
        "a plain HTTP request reached the endpoint"
    );
}
