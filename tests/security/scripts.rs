//! Script privileges: the account scripts run as (the script user when the server is
//! root), their environment (only the documented variables, no secret), and scripts
//! or directories others could change, refused at Create and again at run time.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use provisioning_client::proto;
use provisioning_server::shutdown::Shutdown;
use provisioning_tests::{
    prepare_scripts_dir, script_user_ids, spawn_server, test_config, TempDir, TestDatabase,
};

use super::http_with_headers;
use crate::dispatch::{
    create, emit_after, invalid_argument, log_rows, script_handler, wait_for_logs,
};

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

/// A root server never runs a script as root: it runs as the script user, with that
/// account's group and no supplementary group (CI runs as root).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_of_a_root_server_run_as_the_script_user_without_extra_groups() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    create(
        &server.client,
        script_handler("id", "clients.create", proto::Phase::After, "id.sh"),
    )
    .await;
    emit_after(&server.client, "clients.create", r#"{"id": 1}"#).await;
    let rows = wait_for_logs(&db, "the id row", |rows| !rows.is_empty()).await;
    assert_eq!(rows[0].status, "success", "{:?}", rows[0]);
    let (uid, gid) = if is_root() {
        script_user_ids().expect("the script user")
    } else {
        // SAFETY: plain getters.
        unsafe { (libc::geteuid(), libc::getegid()) }
    };
    if is_root() {
        assert_eq!(
            rows[0].response.trim(),
            format!("uid={uid} gid={gid} groups={gid}"),
            "not the script user alone"
        );
    } else {
        assert!(
            rows[0].response.starts_with(&format!("uid={uid} ")),
            "{}",
            rows[0].response
        );
    }
}

/// A script's environment holds exactly the documented variables (plus `PWD`, which
/// the shell itself sets): nothing of the server and no secret of any handler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_environment_holds_only_the_documented_variables() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    // An HTTP handler of the same event with a secret and a header: neither may reach
    // the script.
    let http = create(
        &server.client,
        http_with_headers(
            "crm",
            "http://127.0.0.1:9/hook",
            &[("authorization", "Bearer header-secret-for-env-test")],
        ),
    )
    .await;
    let secret = crate::dispatch::secret_of(&http);
    create(
        &server.client,
        script_handler("env", "clients.create", proto::Phase::After, "env.sh"),
    )
    .await;
    emit_after(&server.client, "clients.create", r#"{"id": 1}"#).await;
    let rows = wait_for_logs(&db, "the env row", |rows| {
        rows.iter().any(|r| r.handler_name == "env")
    })
    .await;
    let row = rows
        .iter()
        .find(|r| r.handler_name == "env")
        .expect("env row");
    let output = row
        .response
        .strip_prefix("[stderr] ")
        .unwrap_or(&row.response);
    let names: Vec<&str> = output
        .lines()
        .take_while(|line| !line.starts_with("stdin="))
        .filter_map(|line| line.split_once('=').map(|(name, _)| name))
        .collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        [
            "LANG",
            "PATH",
            "PROVISIONING_ATTEMPT",
            "PROVISIONING_DELIVERY_ID",
            "PROVISIONING_EVENT",
            "PROVISIONING_EVENT_ID",
            "PROVISIONING_HANDLER_ID",
            "PROVISIONING_PHASE",
            "PWD",
        ],
        "environment:\n{output}"
    );
    assert!(
        !output.contains(&secret),
        "the signing secret reached a script"
    );
    assert!(
        !output.contains("header-secret-for-env-test"),
        "a header reached a script"
    );
}

/// As ssh and sudo do, a script (or a directory leading to it) writable by group or
/// others, or owned by another account, is refused at Create naming script.path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_others_could_change_are_refused_at_create() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let dir = &server.scripts_dir;
    std::fs::copy(dir.join("ok.sh"), dir.join("loose.sh")).expect("copy");
    chmod(&dir.join("loose.sh"), 0o777);
    std::fs::copy(dir.join("ok.sh"), dir.join("group.sh")).expect("copy");
    chmod(&dir.join("group.sh"), 0o775);
    std::fs::create_dir(dir.join("shared")).expect("mkdir");
    chmod(&dir.join("shared"), 0o777);
    std::fs::copy(dir.join("ok.sh"), dir.join("shared/ok.sh")).expect("copy");
    chmod(&dir.join("shared/ok.sh"), 0o755);
    let mut cases = vec![
        ("loose.sh", "writable by group and others"),
        ("group.sh", "writable by its group"),
        ("shared/ok.sh", "shared is writable by group and others"),
    ];
    if is_root() {
        std::fs::copy(dir.join("ok.sh"), dir.join("foreign.sh")).expect("copy");
        chmod(&dir.join("foreign.sh"), 0o755);
        std::os::unix::fs::chown(dir.join("foreign.sh"), Some(12345), Some(12345)).expect("chown");
        cases.push(("foreign.sh", "owned by uid 12345"));
    }
    for (path, why) in cases {
        let request = script_handler("refused", "clients.create", proto::Phase::After, path);
        let message = invalid_argument(server.client.create_handler(request).await);
        assert!(message.starts_with("script.path: "), "{path}: {message}");
        assert!(message.contains(why), "{path}: {message}");
    }
}

/// A script that became writable by others after Create is refused at run time: the
/// attempt fails with the reason and is not retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_made_writable_after_create_is_refused_at_run_time_without_retry() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let script = server.scripts_dir.join("later.sh");
    std::fs::copy(server.scripts_dir.join("ok.sh"), &script).expect("copy");
    chmod(&script, 0o755);
    create(
        &server.client,
        script_handler("later", "clients.create", proto::Phase::After, "later.sh"),
    )
    .await;
    chmod(&script, 0o757);
    emit_after(&server.client, "clients.create", r#"{"id": 1}"#).await;
    let rows = wait_for_logs(&db, "the refused run", |rows| !rows.is_empty()).await;
    assert_eq!(rows[0].status, "fail");
    assert!(
        rows[0].error.starts_with("script refused: ")
            && rows[0].error.contains("writable by others"),
        "{}",
        rows[0].error
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(log_rows(&db).len(), 1, "a refusal is not retried");
}

/// A root server whose script user does not exist refuses to start, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_server_without_its_script_user_refuses_to_start() {
    if !is_root() {
        eprintln!("skipped: only a root server switches accounts");
        return;
    }
    let db = TestDatabase::new().await;
    let root = TempDir::new("provisioning-script-user");
    let scripts = root.path().join("scripts");
    prepare_scripts_dir(&scripts);
    let mut config = test_config(&db, &scripts);
    config.script_user = "no-such-account-provisiond".into();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let result = provisioning_server::run(config, listener, Shutdown::default()).await;
    let message = result
        .expect_err("started without its script user")
        .to_string();
    assert!(
        message.contains("--script-user \"no-such-account-provisiond\": no such account"),
        "{message}"
    );
}
