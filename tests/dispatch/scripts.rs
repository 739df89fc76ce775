//! Script handlers of AFTER events: stdin and a clean environment, exit codes, timeouts
//! that kill the whole process group, and paths confined to the scripts directory.

use std::path::Path;
use std::time::Duration;

use provisioning_client::proto;
use provisioning_tests::{
    eventually, give_to_script_user, spawn_server, spawn_server_with, TempDir, TestDatabase,
};

use super::{
    count, create, emit_after, invalid_argument, process_gone, script_handler, wait_for_logs,
};

/// A script gets the data on stdin and the event in its environment, and nothing of
/// the server's own environment (no HOME, no CARGO_* of the test process).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_script_gets_data_on_stdin_and_the_event_in_a_clean_environment() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    create(
        &server.client,
        script_handler("env", "clients.create", proto::Phase::After, "env.sh"),
    )
    .await;
    let data = r#"{"id": 9007199254740993, "name": "Zoë"}"#;
    let reply = emit_after(&server.client, "clients.create", data).await;

    let rows = wait_for_logs(&db, "the script's row", |rows| !rows.is_empty()).await;
    let row = &rows[0];
    assert_eq!(
        (row.status.as_str(), row.exit_code, row.kind.as_str()),
        ("success", Some(0), "script"),
        "{row:#?}"
    );
    let output = row
        .response
        .strip_prefix("[stderr] ")
        .unwrap_or(&row.response);
    let lines: Vec<&str> = output.lines().collect();
    for expected in [
        "PROVISIONING_EVENT=clients.create".to_owned(),
        "PROVISIONING_PHASE=after".to_owned(),
        format!("PROVISIONING_EVENT_ID={}", reply.event_id),
        "PROVISIONING_ATTEMPT=1".to_owned(),
        format!("stdin={data}"),
    ] {
        assert!(
            lines.contains(&expected.as_str()),
            "{expected:?} missing from:\n{output}"
        );
    }
    assert!(
        !lines.iter().any(|l| l.starts_with("HOME=")),
        "HOME leaked:\n{output}"
    );
    assert!(
        !lines.iter().any(|l| l.starts_with("CARGO")),
        "the server's environment leaked:\n{output}"
    );
}

/// Exit codes decide: 0 is success, any other code or a signal is a failure that is
/// retried like an HTTP failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_script_exit_codes_decide_success_and_failure() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    for (event, path) in [
        ("clients.create", "ok.sh"),
        ("clients.update", "crash.sh"),
        ("clients.delete", "killed.sh"),
    ] {
        create(
            &server.client,
            script_handler(path, event, proto::Phase::After, path),
        )
        .await;
        emit_after(&server.client, event, r#"{"id": 1}"#).await;
    }
    let rows = wait_for_logs(&db, "every attempt", |rows| rows.len() >= 7).await;
    let of = |name: &str| {
        rows.iter()
            .filter(|r| r.handler_name == name)
            .collect::<Vec<_>>()
    };

    let ok = of("ok.sh");
    assert_eq!(ok.len(), 1);
    assert_eq!(
        (ok[0].status.as_str(), ok[0].exit_code),
        ("success", Some(0))
    );

    let crash = of("crash.sh");
    assert_eq!(
        crash.iter().map(|r| r.attempt).collect::<Vec<_>>(),
        [1, 2, 3],
        "retried up to max attempts"
    );
    assert!(
        crash
            .iter()
            .all(|r| r.status == "fail" && r.exit_code == Some(1)),
        "{crash:#?}"
    );
    assert!(crash[0].error.contains("code 1"), "{}", crash[0].error);
    assert!(
        crash[0].response.contains("something broke"),
        "stderr is kept: {}",
        crash[0].response
    );

    let killed = of("killed.sh");
    assert_eq!(killed.len(), 3);
    assert!(
        killed
            .iter()
            .all(|r| r.status == "fail" && r.exit_code.is_none()),
        "{killed:#?}"
    );
    assert!(killed[0].error.contains("signal 9"), "{}", killed[0].error);
}

/// A hanging script is killed at its timeout together with everything it started
/// (its process group), so it cannot leak processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_after_script_is_killed_with_its_process_group() {
    let db = TestDatabase::new().await;
    // One attempt: a retry would start the script again and overwrite the pid file.
    let server = spawn_server_with(&db, |config| config.max_attempts = 1).await;
    let pids = TempDir::new_in(Path::new("/tmp"), "provisioning-hang");
    // The script runs as the script user when the tests run as root.
    give_to_script_user(pids.path());
    let pidfile = pids.path().join("pids");
    create(
        &server.client,
        proto::CreateHandlerRequest {
            timeout_ms: 500,
            ..script_handler("hang", "clients.create", proto::Phase::After, "hang.sh")
        },
    )
    .await;
    let data = format!(r#"{{"id": 1, "pidfile": "{}"}}"#, pidfile.display());
    emit_after(&server.client, "clients.create", &data).await;

    let rows = wait_for_logs(&db, "the timeout row", |rows| !rows.is_empty()).await;
    assert_eq!(rows[0].status, "fail");
    assert!(rows[0].error.contains("timed out"), "{}", rows[0].error);
    assert!(
        rows[0].duration_ms < 5_000,
        "killed at its timeout, not when sleep ended"
    );

    let text = std::fs::read_to_string(&pidfile).expect("the script wrote its pids");
    let pids: Vec<i32> = text
        .split_whitespace()
        .map(|p| p.parse().expect("a pid"))
        .collect();
    assert_eq!(pids.len(), 2, "{text}");
    eventually(
        Duration::from_secs(5),
        "the script and its child to be gone",
        || std::future::ready(pids.iter().all(|pid| process_gone(*pid)).then_some(())),
    )
    .await;
}

/// Only programs inside the scripts directory may run: any path leading out of it is
/// refused when the handler is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_path_leaving_the_scripts_directory_is_refused_at_create() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    std::os::unix::fs::symlink("/bin/sh", server.scripts_dir.join("outside.sh")).expect("symlink");
    std::fs::write(server.scripts_dir.join("plain.txt"), "not a program").expect("write");
    std::fs::set_permissions(
        server.scripts_dir.join("plain.txt"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .expect("chmod");
    for path in [
        "../ok.sh",
        "/bin/true",
        "sub/../ok.sh",
        "outside.sh",
        "missing.sh",
        "plain.txt",
        "",
    ] {
        let request = script_handler("escape", "clients.create", proto::Phase::After, path);
        let message = invalid_argument(server.client.create_handler(request).await);
        assert!(message.contains("script.path"), "{path:?}: {message}");
    }
    create(
        &server.client,
        script_handler("fine", "clients.create", proto::Phase::After, "ok.sh"),
    )
    .await;
    assert_eq!(count(&db, "SELECT count(*) AS n FROM handlers"), 1);
}
