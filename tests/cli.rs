//! The real binaries as processes: `provctl` against a server (tables, JSON lines,
//! exit codes, one-line errors), and `provisiond` as an operator runs it, on
//! `DATABASE_URL` and on its own embedded cluster (the path CI takes as root).

use std::path::Path;

use provisioning_client::proto;
use provisioning_tests::{
    data_dir, free_addr, prepare_scripts_dir, provctl, run_command, spawn_server,
    spawn_server_process, start_embedded, PostmasterGuard, TempDir, TestDatabase,
};

const HOOK: &str = "http://127.0.0.1:9/hook";

/// What a finished `provctl` run left behind.
pub(crate) struct Run {
    pub(crate) success: bool,
    pub(crate) code: Option<i32>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

pub(crate) async fn provctl_run(server_url: &str, args: &[&str]) -> Run {
    let mut command = provctl(server_url);
    command.args(args);
    let output = run_command(command).await;
    Run {
        success: output.status.success(),
        code: output.status.code(),
        stdout: String::from_utf8(output.stdout).expect("stdout is UTF-8"),
        stderr: String::from_utf8(output.stderr).expect("stderr is UTF-8"),
    }
}

/// Runs provctl, asserts it succeeded, returns its standard output.
pub(crate) async fn provctl_ok(server_url: &str, args: &[&str]) -> String {
    let run = provctl_run(server_url, args).await;
    assert!(
        run.success,
        "provctl {args:?} failed ({:?}):\nstdout: {}\nstderr: {}",
        run.code, run.stdout, run.stderr
    );
    run.stdout
}

/// Runs provctl, asserts it failed with exit code 1 and exactly one line on stderr
/// (and nothing on stdout); returns that line.
pub(crate) async fn provctl_fails(server_url: &str, args: &[&str]) -> String {
    let run = provctl_run(server_url, args).await;
    assert_eq!(
        run.code,
        Some(1),
        "provctl {args:?}: stdout {:?}, stderr {:?}",
        run.stdout,
        run.stderr
    );
    assert_eq!(
        run.stdout, "",
        "provctl {args:?} printed to stdout on failure"
    );
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "provctl {args:?}: expected one stderr line, got {:?}",
        run.stderr
    );
    lines[0].to_owned()
}

/// Parses JSON-lines output.
pub(crate) fn json_lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?} is not JSON: {e}"))
        })
        .collect()
}

/// `handlers create --output json` for an HTTP handler; returns its id.
async fn create_http(server_url: &str, name: &str, event: &str) -> i64 {
    let stdout = provctl_ok(
        server_url,
        &[
            "handlers", "create", "--name", name, "--event", event, "--phase", "after", "--http",
            HOOK, "--output", "json",
        ],
    )
    .await;
    let created = json_lines(&stdout);
    assert_eq!(created.len(), 1, "{stdout}");
    created[0]["id"].as_i64().expect("id")
}

/// The table row of `handlers list` whose first cell is `id`, if any.
fn row_of(table: &str, id: i64) -> Option<String> {
    table
        .lines()
        .skip(1)
        .find(|line| line.split_whitespace().next() == Some(id.to_string().as_str()))
        .map(str::to_owned)
}

/// Operators create handlers from the shell and must see them in the list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provctl_created_handler_appears_in_the_list_table() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;

    let created = provctl_ok(
        &server.url,
        &[
            "handlers",
            "create",
            "--name",
            "CRM sync",
            "--event",
            "accounts.create",
            "--phase",
            "after",
            "--http",
            HOOK,
            "--priority",
            "3",
        ],
    )
    .await;
    assert!(
        created.contains("whsec_"),
        "create prints the full secret:\n{created}"
    );
    assert!(
        !created.contains("whsec_…"),
        "create does not mask the secret:\n{created}"
    );
    let id = server
        .client
        .list_handlers(Default::default())
        .await
        .expect("list")
        .handlers[0]
        .id;

    let table = provctl_ok(&server.url, &["handlers", "list"]).await;
    let header = table.lines().next().expect("a header line");
    for column in [
        "ID", "Priority", "Name", "Event", "Phase", "Status", "Handler",
    ] {
        assert!(header.contains(column), "header {header:?} lacks {column}");
    }
    let row = row_of(&table, id).unwrap_or_else(|| panic!("no row for handler {id}:\n{table}"));
    for cell in [
        "3",
        "CRM sync",
        "Accounts Create",
        "After",
        "Enabled",
        "HTTP http://127.0.0.1:9/hook",
    ] {
        assert!(row.contains(cell), "row {row:?} lacks {cell:?}");
    }
    assert_eq!(table.lines().count(), 2, "header and one row:\n{table}");
}

/// Scripts consume `--output json`: one parseable object per handler, proto field names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provctl_list_with_json_output_prints_one_object_per_handler() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let first = create_http(&server.url, "first", "clients.create").await;
    let second = create_http(&server.url, "second", "subscriptions.renew").await;

    let handlers =
        json_lines(&provctl_ok(&server.url, &["handlers", "list", "--output", "json"]).await);

    assert_eq!(handlers.len(), 2);
    let by_id = |id: i64| {
        handlers
            .iter()
            .find(|h| h["id"].as_i64() == Some(id))
            .unwrap_or_else(|| panic!("handler {id} not listed: {handlers:?}"))
    };
    let h = by_id(second);
    assert_eq!(h["name"], "second");
    assert_eq!(h["event"], "subscriptions.renew");
    assert_eq!(h["phase"], "after");
    assert_eq!(h["kind"], "http");
    assert_eq!(h["status"], "enabled");
    assert_eq!(h["http"]["url"], HOOK);
    let secret = h["http"]["secret"].as_str().expect("secret");
    assert!(
        secret.starts_with("whsec_…") && secret.chars().count() == 11,
        "masked: {secret}"
    );
    assert_eq!(by_id(first)["name"], "first");

    let filtered = json_lines(
        &provctl_ok(
            &server.url,
            &[
                "handlers",
                "list",
                "--event",
                "clients.create",
                "--output",
                "json",
            ],
        )
        .await,
    );
    assert_eq!(filtered.len(), 1);
    assert_eq!(filtered[0]["id"].as_i64(), Some(first));
}

/// `handlers get` shows every field of one handler, the secret masked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provctl_get_shows_one_handler() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let id = create_http(&server.url, "CRM sync", "accounts.create").await;

    let view = provctl_ok(&server.url, &["handlers", "get", &id.to_string()]).await;
    for line in [
        format!("{id}"),
        "CRM sync".to_owned(),
        "accounts.create".to_owned(),
        HOOK.to_owned(),
        "whsec_…".to_owned(),
        "10000 ms".to_owned(),
    ] {
        assert!(view.contains(&line), "{line:?} missing from:\n{view}");
    }
    let json = json_lines(
        &provctl_ok(
            &server.url,
            &["handlers", "get", &id.to_string(), "--output", "json"],
        )
        .await,
    );
    assert_eq!(json.len(), 1);
    assert_eq!(json[0]["id"].as_i64(), Some(id));
    assert_eq!(json[0]["timeout_ms"].as_i64(), Some(10_000));
    assert_eq!(json[0]["failure_policy"], "fail_closed");
}

/// enable/disable/archive are the operators' switches; list must reflect them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provctl_enable_disable_and_archive_change_the_status() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let id = create_http(&server.url, "switchable", "clients.create").await;
    let id_arg = id.to_string();
    let status_of = |stdout: &str| json_lines(stdout)[0]["status"].as_str().map(str::to_owned);

    let disabled = provctl_ok(
        &server.url,
        &["handlers", "disable", &id_arg, "--output", "json"],
    )
    .await;
    assert_eq!(status_of(&disabled).as_deref(), Some("disabled"));
    let row = row_of(&provctl_ok(&server.url, &["handlers", "list"]).await, id)
        .expect("disabled is listed");
    assert!(row.contains("Disabled"), "{row}");

    let archived = provctl_ok(
        &server.url,
        &["handlers", "archive", &id_arg, "--output", "json"],
    )
    .await;
    assert_eq!(status_of(&archived).as_deref(), Some("archived"));
    assert_eq!(
        row_of(&provctl_ok(&server.url, &["handlers", "list"]).await, id),
        None,
        "archived is hidden"
    );
    let archived_list =
        provctl_ok(&server.url, &["handlers", "list", "--status", "archived"]).await;
    assert!(
        row_of(&archived_list, id).is_some(),
        "--status archived shows it:\n{archived_list}"
    );

    let enabled = provctl_ok(
        &server.url,
        &["handlers", "enable", &id_arg, "--output", "json"],
    )
    .await;
    assert_eq!(status_of(&enabled).as_deref(), Some("enabled"));
    let stored = server
        .client
        .get_handler(proto::GetHandlerRequest { id })
        .await
        .expect("get");
    assert_eq!(stored.status(), proto::HandlerStatus::Enabled);
}

/// `handlers delete` removes the handler for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provctl_delete_removes_the_handler() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let id = create_http(&server.url, "doomed", "clients.delete").await;

    let stdout = provctl_ok(&server.url, &["handlers", "delete", &id.to_string()]).await;

    assert!(stdout.contains(&id.to_string()), "{stdout}");
    let error = server
        .client
        .get_handler(proto::GetHandlerRequest { id })
        .await
        .expect_err("deleted");
    assert_eq!(error.code(), Some(tonic::Code::NotFound));
    assert_eq!(
        provctl_ok(&server.url, &["handlers", "list", "--output", "json"]).await,
        ""
    );
}

/// Operators look up valid event names with `event-types list`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provctl_event_types_list_shows_the_catalogue() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;

    let table = provctl_ok(&server.url, &["event-types", "list"]).await;
    let json =
        json_lines(&provctl_ok(&server.url, &["event-types", "list", "--output", "json"]).await);

    assert_eq!(table.lines().count(), 19, "header and 18 rows:\n{table}");
    for name in [
        "clients.balance_non_negative",
        "email_rates_manager.import",
        "import.process_failed",
    ] {
        assert!(table.contains(name), "{name} missing:\n{table}");
    }
    assert_eq!(json.len(), 18);
    assert!(json.iter().all(|e| e["builtin"] == true));
    assert_eq!(json[0]["name"], "accounts.create");
}

/// Failures must be scriptable: non-zero exit and one readable line on stderr.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provctl_unknown_id_exits_non_zero_with_one_line() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;

    for args in [
        &["handlers", "get", "424242"][..],
        &["handlers", "delete", "424242"],
        &["handlers", "disable", "424242"],
        &["handlers", "rotate-secret", "424242"],
    ] {
        let line = provctl_fails(&server.url, args).await;
        assert!(line.starts_with("provctl: "), "{line}");
        assert!(
            line.contains("NotFound") && line.contains("424242"),
            "{args:?}: {line}"
        );
    }
}

/// A down server is reported as such, not as a panic or a wall of transport text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provctl_unreachable_server_exits_non_zero_with_one_line() {
    let nobody = format!("http://{}", free_addr());

    let line = provctl_fails(&nobody, &["handlers", "list"]).await;

    assert!(line.starts_with("provctl: cannot connect to "), "{line}");
    assert!(line.contains(&nobody), "{line}");
}

/// Server-side validation errors reach the operator with the field named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provctl_rejected_handler_reports_the_server_message() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;

    let line = provctl_fails(
        &server.url,
        &[
            "handlers",
            "create",
            "--name",
            "x",
            "--event",
            "clients.create",
            "--phase",
            "after",
            "--http",
            "ftp://files.example/drop",
        ],
    )
    .await;

    assert!(
        line.contains("InvalidArgument") && line.contains("http.url"),
        "{line}"
    );
    assert_eq!(
        provctl_ok(&server.url, &["handlers", "list", "--output", "json"]).await,
        ""
    );
}

/// The binary configured through its environment serves, and SIGTERM stops it cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_process_serves_on_database_url_and_stops_on_sigterm() {
    let db = TestDatabase::new().await;
    let scripts = TempDir::new("provisiond-scripts");
    prepare_scripts_dir(scripts.path());
    let mut server = spawn_server_process(&db, scripts.path(), &["--log-format", "json"]).await;

    let id = create_http(&server.url, "from the shell", "accounts.update").await;
    let handler = server
        .client
        .get_handler(proto::GetHandlerRequest { id })
        .await
        .expect("get");
    assert_eq!(handler.name, "from the shell");
    let status = server.stop().await;

    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        server.log()
    );
    assert!(
        server.log().lines().any(|l| l.starts_with('{')),
        "--log-format json was applied"
    );
}

fn owner_uid(path: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .uid()
}

/// With no database configured the server must create, run and stop its own
/// PostgreSQL (as the postgres account when root), keeping data across restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_without_database_url_runs_its_own_cluster_across_restarts() {
    let data = data_dir("provisiond-embedded");
    let scripts = TempDir::new("provisiond-scripts");
    prepare_scripts_dir(scripts.path());
    let pgdata = data.path().join("pgdata");
    let _guard = PostmasterGuard::new(data.path());

    let mut first = start_embedded(data.path(), scripts.path()).await;
    assert!(
        pgdata.join("PG_VERSION").is_file(),
        "initdb ran in {}",
        pgdata.display()
    );
    assert!(
        pgdata.join("postmaster.pid").is_file(),
        "the cluster is running"
    );
    if unsafe { libc::geteuid() } == 0 {
        let postgres = postgres_uid();
        assert_eq!(
            owner_uid(&pgdata),
            postgres,
            "as root the cluster belongs to postgres"
        );
    }
    let id = create_http(&first.url, "embedded", "clients.archive").await;
    let status = first.stop().await;
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        first.log()
    );
    assert!(
        !pgdata.join("postmaster.pid").exists(),
        "the cluster stopped with the server"
    );

    let mut second = start_embedded(data.path(), scripts.path()).await;
    let listed =
        json_lines(&provctl_ok(&second.url, &["handlers", "list", "--output", "json"]).await);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["id"].as_i64(), Some(id));
    assert_eq!(listed[0]["name"], "embedded");
    let table = provctl_ok(&second.url, &["handlers", "list"]).await;
    assert!(
        row_of(&table, id).is_some_and(|row| row.contains("embedded")),
        "{table}"
    );
    let status = second.stop().await;
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        second.log()
    );
    assert!(
        !pgdata.join("postmaster.pid").exists(),
        "the cluster stopped with the server"
    );
}

/// Uid of the `postgres` account.
fn postgres_uid() -> u32 {
    let name = std::ffi::CString::new("postgres").expect("a C string");
    // SAFETY: getpwnam returns static storage or null; the uid is copied out at once.
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(
        !entry.is_null(),
        "running as root without a postgres account"
    );
    unsafe { (*entry).pw_uid }
}

/// The operator guide documents every flag `provisiond --help` lists, with its
/// environment variable: the guide cannot fall behind the binary.
#[tokio::test]
async fn the_operator_guide_documents_every_flag() {
    let mut command =
        std::process::Command::new(provisioning_tests::bin_path("provisiond-under-test"));
    command.arg("--help");
    let help = provisioning_tests::run_command(command).await;
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let guide = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/operator-guide.md"
    ))
    .expect("docs/operator-guide.md");
    let flags: Vec<&str> = help
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("--"))
        .filter_map(|rest| rest.split([' ', '<', '=']).next())
        .filter(|flag| *flag != "help" && *flag != "version")
        .collect();
    assert!(flags.len() > 30, "{help}");
    for flag in flags {
        assert!(
            guide.contains(&format!("`--{flag}`")),
            "--{flag} is not in docs/operator-guide.md"
        );
        if let Some(env) = help
            .split(&format!("--{flag} "))
            .nth(1)
            .and_then(|rest| rest.split("[env: ").nth(1))
            .and_then(|rest| rest.split(['=', ']']).next())
        {
            assert!(
                guide.contains(&format!("`{env}`")),
                "{env} (--{flag}) is not in docs/operator-guide.md"
            );
        }
    }
}
