//! Edge semantics of handler replies: an AFTER handler accepting an event with a huge
//! body is a success (the log keeps the first 4 KiB, marked), a BEFORE handler's
//! oversized body is its failure; a script that leaves a background child ends when the
//! script exits, and the child is killed with its process group.

use std::time::Duration;

use provisioning_client::proto;
use provisioning_tests::receiver::{Receiver, Reply};
use provisioning_tests::{spawn_server, TestDatabase};

use crate::dispatch::{
    create, emit_after, emit_before, http_handler, log_rows, script_handler, wait_for_logs,
};

/// A body five times the payload limit.
fn huge_body() -> Vec<u8> {
    vec![b'x'; 5 * 1024 * 1024]
}

/// AFTER: a 2xx with a body far over every limit is a success, never retried; the log
/// keeps the first 4096 bytes with a note that it was cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_handler_accepting_with_a_huge_body_succeeds_once() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let receiver = Receiver::start().await;
    receiver.route("/big", vec![Reply::bytes(200, &huge_body())]);
    create(
        &server.client,
        http_handler(
            "big",
            "clients.create",
            proto::Phase::After,
            &receiver.url("/big"),
        ),
    )
    .await;
    emit_after(&server.client, "clients.create", r#"{"id": 1}"#).await;
    let rows = wait_for_logs(&db, "the run", |rows| !rows.is_empty()).await;
    assert_eq!(rows[0].status, "success", "{:?}", rows[0].error);
    assert_eq!(rows[0].response.len(), 4096 + "…[truncated]".len());
    assert!(rows[0].response.ends_with("…[truncated]"));
    // Retries come after 100 ms in the test configuration: none may follow.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        receiver.count("/big"),
        1,
        "a delivered event was sent again"
    );
    assert_eq!(log_rows(&db).len(), 1);
}

/// BEFORE: the body is the new data, so one over the payload limit is the handler's
/// failure, with that reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_handler_with_an_oversized_body_fails() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let receiver = Receiver::start().await;
    receiver.route("/big", vec![Reply::bytes(200, &huge_body())]);
    create(
        &server.client,
        http_handler(
            "big",
            "clients.create",
            proto::Phase::Before,
            &receiver.url("/big"),
        ),
    )
    .await;
    let reply = emit_before(&server.client, "clients.create", r#"{"id": 1}"#).await;
    assert_eq!(
        reply.decision,
        proto::Decision::Forbidden as i32,
        "{reply:?}"
    );
    assert_eq!(
        reply.results[0].outcome,
        proto::HandlerOutcome::Failed as i32
    );
    assert!(
        reply.results[0].error.contains("over the limit"),
        "{:?}",
        reply.results[0]
    );
}

/// A script that starts `(sleep; ...) &` and exits: BEFORE decides as soon as the script
/// exits (its output is its answer), AFTER records the run; the background child is
/// killed with the script's process group and never finishes its work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_with_background_children_end_when_the_script_exits() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    for (event, phase) in [
        ("clients.create", proto::Phase::Before),
        ("clients.update", proto::Phase::After),
    ] {
        create(
            &server.client,
            proto::CreateHandlerRequest {
                timeout_ms: 8_000,
                ..script_handler("background", event, phase, "background.sh")
            },
        )
        .await;
    }
    let reply = emit_before(&server.client, "clients.create", r#"{"id": 1}"#).await;
    assert_eq!(reply.decision, proto::Decision::Allowed as i32, "{reply:?}");
    assert_eq!(
        reply.results[0].outcome,
        proto::HandlerOutcome::Modified as i32
    );
    assert_eq!(reply.data_json, r#"{"ok": true}"#);

    emit_after(&server.client, "clients.update", r#"{"id": 2}"#).await;
    let rows = wait_for_logs(&db, "both runs", |rows| rows.len() == 2).await;
    for row in &rows {
        assert_eq!(row.status, "success", "{row:?}");
        assert_eq!(row.exit_code, Some(0));
        assert!(row.response.contains(r#"{"ok": true}"#), "{row:?}");
        assert!(!row.response.contains("late"), "{row:?}");
    }
    // The children would have touched the file after 2 s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !server.scripts_dir.join("out/background-survived").exists(),
        "a background child outlived its script"
    );
}
