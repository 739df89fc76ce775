//! Secret hygiene: through a whole scenario (create with an Authorization header, emit,
//! a failing attempt, its retry, a secret rotation, a BEFORE handler failing to
//! connect), the real `provisiond` with debug logging writes no signing secret and no
//! header value to its log output, and no execution-log row holds one.

use std::time::Duration;

use provisioning_client::proto;
use provisioning_tests::receiver::{Receiver, Reply};
use provisioning_tests::{
    free_addr, prepare_scripts_dir, provisiond, ServerProcess, TempDir, TestDatabase,
};

use super::http_with_headers;
use crate::dispatch::{create, emit_after, emit_before, log_rows, secret_of, wait_for_logs};

const AUTHORIZATION: &str = "Bearer header-value-7f3a9c0e";
const API_KEY: &str = "api-key-value-51d2b8";

/// Neither the server's debug log nor the execution log ever holds a secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_or_header_value_reaches_the_server_log_or_the_execution_log() {
    let db = TestDatabase::new().await;
    let root = TempDir::new("provisioning-secrets");
    let scripts = root.path().join("scripts");
    prepare_scripts_dir(&scripts);
    let addr = free_addr();
    let mut command = provisiond(addr, &scripts);
    command
        .env("DATABASE_URL", &db.url)
        .env("RUST_LOG", "debug");
    let mut server = ServerProcess::start(command, addr).await;

    let receiver = Receiver::start().await;
    receiver.route(
        "/hook",
        vec![Reply::text(500, "try again"), Reply::ok(), Reply::ok()],
    );
    let headers = [("authorization", AUTHORIZATION), ("x-api-key", API_KEY)];
    let handler = create(
        &server.client,
        http_with_headers("crm", &receiver.url("/hook"), &headers),
    )
    .await;
    let first_secret = secret_of(&handler);
    create(
        &server.client,
        proto::CreateHandlerRequest {
            phase: proto::Phase::Before.into(),
            failure_policy: proto::FailurePolicy::FailOpen.into(),
            ..http_with_headers("unreachable", "http://127.0.0.1:9/check", &headers)
        },
    )
    .await;

    // A failing attempt, then its retry.
    emit_after(&server.client, "clients.create", r#"{"id": 1}"#).await;
    wait_for_logs(&db, "the failure and its retry", |rows| {
        rows.iter().filter(|r| r.handler_name == "crm").count() >= 2
    })
    .await;
    // Rotation, then a delivery signed with the new secret.
    let rotated = server
        .client
        .rotate_secret(proto::RotateSecretRequest { id: handler.id })
        .await
        .expect("rotating the secret");
    let second_secret = secret_of(&rotated);
    assert_ne!(first_secret, second_secret);
    emit_after(&server.client, "clients.create", r#"{"id": 2}"#).await;
    // A BEFORE handler failing to connect (fail open).
    emit_before(&server.client, "clients.create", r#"{"id": 3}"#).await;
    let rows = wait_for_logs(&db, "every run", |rows| {
        rows.iter().filter(|r| r.handler_name == "crm").count() >= 3
    })
    .await;
    assert!(rows.iter().any(|r| r.status == "fail"), "{rows:#?}");
    let requests = receiver.requests("/hook");
    assert!(
        requests
            .iter()
            .all(|r| r.header("authorization") == Some(AUTHORIZATION)),
        "the header is sent"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.stop().await;
    let log = server.log();
    assert!(
        log.contains("DEBUG"),
        "debug logging was not on; log:\n{log}"
    );

    let secrets = [
        first_secret.as_str(),
        first_secret.trim_start_matches("whsec_"),
        second_secret.as_str(),
        second_secret.trim_start_matches("whsec_"),
        AUTHORIZATION,
        "header-value-7f3a9c0e",
        API_KEY,
    ];
    for secret in secrets {
        assert!(
            !log.contains(secret),
            "{secret:?} appears in the server log:\n{log}"
        );
        for row in log_rows(&db) {
            let text = format!("{row:?}");
            assert!(
                !text.contains(secret),
                "{secret:?} appears in a log row: {text}"
            );
        }
    }
}
