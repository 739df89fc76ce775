//! `provctl logs ...` and `provctl handlers stats` as processes against a real server
//! whose execution log holds real runs (script handlers that succeed and fail).

use std::time::Duration;

use provisioning_client::proto;
use provisioning_tests::requests::script_handler;
use provisioning_tests::{provctl, spawn_server_with, TestDatabase, TestServer};
use tokio::io::AsyncBufReadExt;

use crate::cli::{json_lines, provctl_fails, provctl_ok};

/// Creates a succeeding and a failing AFTER script handler, emits one event and waits
/// until both runs are logged; returns (ok handler id, failing handler id, event id).
async fn logged_runs(server: &TestServer) -> (i64, i64, i64) {
    let create = |name: &str, path: &str| {
        let client = server.client.clone();
        let request = script_handler(name, "accounts.create", proto::Phase::After, path);
        async move { client.create_handler(request).await.expect("create").id }
    };
    let ok = create("acc 6", "ok.sh").await;
    let failing = create("crm", "crash.sh").await;
    let event = server
        .client
        .emit(proto::EmitRequest {
            event: "accounts.create".into(),
            phase: proto::Phase::After.into(),
            data_json: r#"{"accname": "1", "id": 9007199254740993, "amount": 12.50}"#.into(),
            ..Default::default()
        })
        .await
        .expect("emit")
        .event_id;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut rows = server
            .client
            .search_logs(proto::SearchLogsRequest {
                filter: Some(proto::LogFilter {
                    event_id: event,
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .expect("search");
        let mut count = 0;
        while rows.message().await.expect("row").is_some() {
            count += 1;
        }
        if count >= 2 {
            return (ok, failing, event);
        }
        assert!(tokio::time::Instant::now() < deadline, "runs never logged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The operator's log commands work end to end on real runs: search (table and JSON
/// lines, with filters), show, stats, retry of a failed run, refused retry of a
/// successful one, and purge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provctl_log_commands_search_show_stats_retry_and_purge() {
    let db = TestDatabase::new().await;
    let server = spawn_server_with(&db, |config| config.max_attempts = 1).await;
    let (ok, failing, event) = logged_runs(&server).await;
    let url = server.url.as_str();

    let table = provctl_ok(url, &["logs", "search", "--event", "accounts.create"]).await;
    assert!(table.contains("Accounts Create"), "{table}");
    assert!(table.contains("acc 6") && table.contains("crm"), "{table}");

    let failed = json_lines(
        &provctl_ok(
            url,
            &["--output", "json", "logs", "search", "--status", "fail"],
        )
        .await,
    );
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["handler_id"], failing);
    assert_eq!(failed[0]["event_id"], event);
    let failed_id = failed[0]["id"].as_i64().expect("id");

    let by_data = json_lines(
        &provctl_ok(
            url,
            &[
                "--output",
                "json",
                "logs",
                "search",
                "--contains",
                r#"{"accname": "1"}"#,
                "--handler",
                &ok.to_string(),
            ],
        )
        .await,
    );
    assert_eq!(by_data.len(), 1, "{by_data:?}");
    assert_eq!(by_data[0]["status"], "success");

    let shown = provctl_ok(url, &["logs", "show", &failed_id.to_string()]).await;
    assert!(shown.contains("9007199254740993"), "{shown}");
    assert!(
        shown.contains("12.50"),
        "the amount keeps its digits: {shown}"
    );
    assert!(shown.contains("exited with code 1"), "{shown}");

    let stats = json_lines(&provctl_ok(url, &["--output", "json", "handlers", "stats"]).await);
    assert_eq!(stats.len(), 2, "{stats:?}");
    let crm = stats
        .iter()
        .find(|s| s["handler_id"] == failing)
        .expect("crm stats");
    assert_eq!(crm["fail"], 1);
    assert_eq!(crm["success"], 0);

    let retried = provctl_ok(url, &["logs", "retry", &failed_id.to_string()]).await;
    assert!(retried.contains("retry scheduled"), "{retried}");
    let ok_id = by_data[0]["id"].as_i64().expect("id");
    let refused = provctl_fails(url, &["logs", "retry", &ok_id.to_string()]).await;
    assert!(refused.contains("succeeded"), "{refused}");

    let purged = provctl_ok(url, &["logs", "purge", "--older-than", "1d"]).await;
    assert!(purged.contains("deleted 0"), "recent runs stay: {purged}");
}

/// `provctl logs tail` prints the backlog and then runs logged while it is running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provctl_logs_tail_prints_new_runs_as_they_are_logged() {
    let db = TestDatabase::new().await;
    let server = spawn_server_with(&db, |config| config.max_attempts = 1).await;
    logged_runs(&server).await;

    let mut command = tokio::process::Command::from(provctl(&server.url));
    command
        .args(["--output", "json", "logs", "tail", "--backlog", "2"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().expect("start provctl logs tail");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    for _ in 0..2 {
        let backlog: serde_json::Value =
            serde_json::from_str(&next_line(&mut lines).await).expect("json");
        assert_eq!(backlog["event"], "accounts.create");
    }
    server
        .client
        .emit(proto::EmitRequest {
            event: "accounts.create".into(),
            phase: proto::Phase::After.into(),
            data_json: r#"{"live": true}"#.into(),
            ..Default::default()
        })
        .await
        .expect("emit");
    for _ in 0..2 {
        let live: serde_json::Value =
            serde_json::from_str(&next_line(&mut lines).await).expect("json");
        assert_eq!(live["data_sent_json"]["live"], true, "{live}");
    }
    child.kill().await.expect("stop tail");
}

async fn next_line(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) -> String {
    tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("a line in time")
        .expect("read")
        .expect("tail still running")
}
