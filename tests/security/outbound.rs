//! The outbound policy: URLs with a denied literal address are refused at Create and
//! Update; a host name resolving to a denied address fails at connect time, once, with
//! the address and the deny entry in the log row; redirects are not followed.

use std::time::Duration;

use provisioning_client::proto;
use provisioning_tests::receiver::{Receiver, Reply};
use provisioning_tests::{spawn_server, spawn_server_with, TestDatabase};

use crate::dispatch::{
    create, delivery_rows, emit_after, http_handler, invalid_argument, wait_for_logs,
};

/// The cloud metadata address, as the issue tried it, is refused at Create in every
/// spelling, and an Update cannot point a handler there either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn urls_with_a_denied_literal_address_are_refused_at_create_and_update() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    for url in [
        "http://169.254.169.254/latest/meta-data",
        "http://[::ffff:169.254.169.254]/latest/meta-data",
        "http://[fd00:ec2::254]/latest/meta-data",
        "http://224.0.0.1/",
    ] {
        let request = http_handler("metadata", "clients.create", proto::Phase::After, url);
        let message = invalid_argument(server.client.create_handler(request).await);
        assert!(
            message.starts_with("http.url: outbound policy denies"),
            "{url}: {message}"
        );
    }
    let request = http_handler(
        "metadata",
        "clients.create",
        proto::Phase::After,
        "http://169.254.169.254/latest/meta-data",
    );
    let message = invalid_argument(server.client.create_handler(request).await);
    assert_eq!(
        message,
        "http.url: outbound policy denies 169.254.169.254 (169.254.0.0/16)"
    );

    let handler = create(
        &server.client,
        http_handler(
            "crm",
            "clients.create",
            proto::Phase::After,
            "http://127.0.0.1:9/",
        ),
    )
    .await;
    let mut changed = handler.clone();
    if let Some(proto::handler::Target::Http(http)) = &mut changed.target {
        http.url = "http://169.254.169.254/".into();
    }
    let update = proto::UpdateHandlerRequest {
        handler: Some(changed),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["http.url".into()],
        }),
    };
    let message = invalid_argument(server.client.update_handler(update).await);
    assert!(
        message.contains("http.url: outbound policy denies 169.254.169.254"),
        "{message}"
    );
}

/// A name is judged by what it resolves to, when connecting: `localhost` with loopback
/// denied fails without a request, with the addresses and entries in the row, and the
/// delivery is dead at once (a refusal is not retried).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_resolving_to_a_denied_address_fails_at_connect_time_and_is_not_retried() {
    let db = TestDatabase::new().await;
    let server = spawn_server_with(&db, |config| {
        config.outbound_deny = vec!["127.0.0.0/8".parse().unwrap(), "::1".parse().unwrap()];
    })
    .await;
    let receiver = Receiver::start().await;
    receiver.route("/hook", vec![Reply::ok()]);
    let port = receiver.addr().port();

    // The literal address is refused at once; the name passes Create.
    let literal = http_handler(
        "literal",
        "clients.create",
        proto::Phase::After,
        &receiver.url("/hook"),
    );
    let message = invalid_argument(server.client.create_handler(literal).await);
    assert!(message.contains("(127.0.0.0/8)"), "{message}");
    create(
        &server.client,
        http_handler(
            "by name",
            "clients.create",
            proto::Phase::After,
            &format!("http://localhost:{port}/hook"),
        ),
    )
    .await;
    // 2130706433 is 127.0.0.1 to the system resolver, not a literal address to a URL
    // parser: it passes Create and is caught when connecting.
    create(
        &server.client,
        http_handler(
            "decimal",
            "clients.update",
            proto::Phase::After,
            &format!("http://2130706433:{port}/hook"),
        ),
    )
    .await;
    emit_after(&server.client, "clients.create", r#"{"id": 1}"#).await;
    emit_after(&server.client, "clients.update", r#"{"id": 1}"#).await;

    let rows = wait_for_logs(&db, "the refused attempts", |rows| rows.len() >= 2).await;
    let row = |name: &str| {
        rows.iter()
            .find(|r| r.handler_name == name)
            .unwrap_or_else(|| panic!("no row of {name}: {rows:#?}"))
    };
    let by_name = row("by name");
    assert_eq!(by_name.status, "fail");
    assert!(
        by_name
            .error
            .starts_with("outbound policy denies every address of localhost: "),
        "{}",
        by_name.error
    );
    assert!(
        by_name.error.contains("127.0.0.1 (127.0.0.0/8)"),
        "{}",
        by_name.error
    );
    assert_eq!(
        row("decimal").error,
        "outbound policy denies every address of 2130706433: 127.0.0.1 (127.0.0.0/8)"
    );
    // Retries would come after 100 and 200 ms: none comes.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        crate::dispatch::log_rows(&db).len(),
        2,
        "a refusal is not retried"
    );
    let deliveries = delivery_rows(&db);
    assert!(
        deliveries.iter().all(|d| d.attempts == 1),
        "dead after one attempt: {deliveries:?}"
    );
    assert_eq!(
        receiver.count("/hook"),
        0,
        "no request reached the receiver"
    );
}

/// Redirects are never followed: a 302 is a failure like any other non-2xx, and the
/// target it names is never requested.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_is_a_non_2xx_reply_and_is_not_followed() {
    let db = TestDatabase::new().await;
    let server = spawn_server_with(&db, |config| config.max_attempts = 1).await;
    let receiver = Receiver::start().await;
    receiver.route(
        "/hook",
        vec![Reply::status(302).location(&receiver.url("/elsewhere"))],
    );
    receiver.route("/elsewhere", vec![Reply::ok()]);
    create(
        &server.client,
        http_handler(
            "redirect",
            "clients.create",
            proto::Phase::After,
            &receiver.url("/hook"),
        ),
    )
    .await;
    emit_after(&server.client, "clients.create", r#"{"id": 1}"#).await;
    let rows = wait_for_logs(&db, "the redirected attempt", |rows| !rows.is_empty()).await;
    assert_eq!(
        (
            rows[0].status.as_str(),
            rows[0].http_status,
            rows[0].error.as_str()
        ),
        ("fail", Some(302), "HTTP 302")
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.count("/elsewhere"), 0, "the redirect was followed");
}
