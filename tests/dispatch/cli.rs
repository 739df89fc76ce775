//! `provctl events emit`: one event (AFTER or BEFORE) from the command line, or a
//! JSON-lines file streamed through EmitStream.

use diesel::sql_types::Text;
use diesel::{QueryableByName, RunQueryDsl};
use provisioning_client::proto;
use provisioning_tests::receiver::{Receiver, Reply};
use provisioning_tests::{provctl, run_command, spawn_server, TempDir, TestDatabase};

use super::{count, create, http_handler, with_conn, WAIT};

/// `provctl events emit` is how operators emit by hand: it prints the new event's id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provctl_emit_prints_the_event_id() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let receiver = Receiver::start().await;
    create(
        &server.client,
        http_handler(
            "h",
            "clients.create",
            proto::Phase::After,
            &receiver.url("/h"),
        ),
    )
    .await;
    let data = r#"{"id": 9007199254740993, "amount": 12.345678901234567890}"#;
    let mut command = provctl(&server.url);
    command.args(["events", "emit", "clients.create", "--data", data]);
    let output = run_command(command).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    let id: i64 = stdout
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("event "))
        .and_then(|id| id.trim().parse().ok())
        .unwrap_or_else(|| panic!("no event id in:\n{stdout}"));
    assert!(stdout.contains("deliveries: 1"), "{stdout}");
    let requests = receiver.wait_for("/h", 1, WAIT).await;
    assert_eq!(requests[0].body_text(), data);
    assert_eq!(
        count(
            &db,
            &format!(
                "SELECT count(*) AS n FROM events WHERE id = {id} AND idempotency_key IS NOT NULL"
            )
        ),
        1,
        "provctl gives the event a key, so its retries are safe"
    );

    let mut command = provctl(&server.url);
    command.args([
        "events",
        "emit",
        "clients.create",
        "--data",
        "{}",
        "--no-retry",
    ]);
    let output = run_command(command).await;
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        count(
            &db,
            "SELECT count(*) AS n FROM events WHERE idempotency_key IS NULL"
        ),
        1,
        "--no-retry sends the event as given, without a key"
    );
}

/// `--phase before` runs the chain and prints its decision and reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provctl_emit_before_prints_the_decision() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let receiver = Receiver::start().await;
    receiver.route("/guard", vec![Reply::text(403, "credit limit reached")]);
    create(
        &server.client,
        http_handler(
            "guard",
            "clients.create",
            proto::Phase::Before,
            &receiver.url("/guard"),
        ),
    )
    .await;
    let mut command = provctl(&server.url);
    command.args([
        "events",
        "emit",
        "clients.create",
        "--phase",
        "before",
        "--data",
        r#"{"id": 1}"#,
    ]);
    let output = run_command(command).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(stdout.contains("decision: forbidden"), "{stdout}");
    assert!(stdout.contains("reason: credit limit reached"), "{stdout}");

    let mut command = provctl(&server.url);
    command.args([
        "events",
        "emit",
        "clients.update",
        "--phase",
        "before",
        "--data",
        r#"{"id": 1}"#,
    ]);
    let output = run_command(command).await;
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("decision: allowed"),
        "{output:?}"
    );
}

/// `events emit --file` streams a JSON-lines file: a bad line is reported and makes
/// the command fail, while the good lines are stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provctl_emit_file_reports_the_bad_line_and_stores_the_others() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let dir = TempDir::new("provisioning-emit-file");
    let path = dir.path().join("events.jsonl");
    let lines = [
        r#"{"event": "clients.create", "data": {"n": 1, "id": 9007199254740993}}"#,
        r#"{"event": "clients.update", "data": {"n": 2}, "idempotency_key": "k-2"}"#,
        r#"{"event": "clients.explode", "data": {"n": 3}}"#,
        r#"{"event": "clients.delete", "data": {"n": 4}}"#,
    ];
    std::fs::write(&path, lines.join("\n") + "\n").expect("write the file");
    let mut command = provctl(&server.url);
    command.args(["events", "emit", "--file"]).arg(&path);
    let output = run_command(command).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("accepted 3"), "{stdout}");
    assert!(stdout.contains("rejected 1"), "{stdout}");
    assert!(
        stdout.contains("line 3:"),
        "the bad line is named: {stdout}"
    );
    assert!(stdout.contains("clients.explode"), "{stdout}");

    #[derive(QueryableByName)]
    struct Stored {
        #[diesel(sql_type = Text)]
        event: String,
        #[diesel(sql_type = Text)]
        data: String,
    }
    let stored: Vec<Stored> = with_conn(&db, |conn| {
        // Concurrent group commits may number a stream's events out of order.
        diesel::sql_query("SELECT event, data FROM events ORDER BY (data::jsonb ->> 'n')::int")
            .load(conn)
            .expect("events")
    });
    let stored: Vec<(&str, &str)> = stored
        .iter()
        .map(|s| (s.event.as_str(), s.data.as_str()))
        .collect();
    assert_eq!(
        stored,
        [
            ("clients.create", r#"{"n": 1, "id": 9007199254740993}"#),
            ("clients.update", r#"{"n": 2}"#),
            ("clients.delete", r#"{"n": 4}"#),
        ]
    );
}
