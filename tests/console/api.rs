//! The console's JSON API over plain HTTP: statuses and `{code, message, field}` for
//! bad input, roles enforced as on gRPC, and the gRPC services' own validation.

use provisioning_client::proto;
use provisioning_server::config::Config;
use provisioning_server::shutdown::Shutdown;
use provisioning_server::ServerError;
use provisioning_tests::requests::http_handler;
use provisioning_tests::{free_addr, TestDatabase};

use super::{call, send, ConsoleServer};
use crate::auth::{with_token, ADMIN, EMITTER, READER};

const BAD_URL: &str = r#"{"name": "CRM", "event": "accounts.create", "phase": "after",
    "http": {"url": "ftp://crm.example/add"}}"#;

/// Why: the console is a second door to the same services; each kind of bad request
/// must get a precise HTTP status and a message the page can show, never a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_api_answers_bad_requests_with_a_status_a_message_and_the_field() {
    let db = TestDatabase::new().await;
    let console = ConsoleServer::start(&db, true).await;
    let addr = console.console;

    let missing = call(addr, "GET", "/api/handlers", None, None).await;
    assert_eq!(missing.status, 401, "{}", missing.text);
    assert_eq!(missing.json()["code"], "unauthenticated");
    let invalid = call(addr, "GET", "/api/handlers", Some("not-a-token"), None).await;
    assert_eq!(invalid.status, 401, "{}", invalid.text);
    assert!(!invalid.text.contains("not-a-token"), "{}", invalid.text);
    let whoami = call(addr, "GET", "/api/whoami", Some("not-a-token"), None).await;
    assert_eq!(whoami.status, 401);
    // Credentials are checked before the request is read.
    let unread = call(addr, "GET", "/api/logs?status=maybe", None, None).await;
    assert_eq!(unread.status, 401, "{}", unread.text);

    let unknown = call(addr, "GET", "/api/nothing-here", Some(ADMIN), None).await;
    assert_eq!(unknown.status, 404, "{}", unknown.text);
    assert_eq!(unknown.json()["code"], "not_found");
    let unknown_page = call(addr, "GET", "/nothing.html", None, None).await;
    assert_eq!(unknown_page.status, 404);

    let malformed = call(
        addr,
        "POST",
        "/api/handlers",
        Some(ADMIN),
        Some(r#"{"name": "#),
    )
    .await;
    assert_eq!(malformed.status, 400, "{}", malformed.text);
    let body = malformed.json();
    assert!(
        body["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("malformed JSON body"),
        "{body}"
    );
    assert!(body["field"].is_null(), "{body}");
    let not_json = send(
        addr,
        "POST",
        "/api/handlers",
        Some(ADMIN),
        Some(("text/plain", BAD_URL)),
    )
    .await;
    assert_eq!(not_json.status, 415, "{}", not_json.text);
    let wrong_type = call(
        addr,
        "POST",
        "/api/handlers",
        Some(ADMIN),
        Some(r#"{"priority": "first"}"#),
    )
    .await;
    assert_eq!(wrong_type.status, 400);
    assert_eq!(wrong_type.json()["field"], "priority");

    // The service's own validation, with the field the form shows it next to, and the
    // very message a gRPC caller gets.
    let refused = call(addr, "POST", "/api/handlers", Some(ADMIN), Some(BAD_URL)).await;
    assert_eq!(refused.status, 400, "{}", refused.text);
    let refused = refused.json();
    assert_eq!(refused["code"], "invalid_argument");
    assert_eq!(refused["field"], "http.url");
    let grpc = with_token(&console.server, ADMIN)
        .create_handler(http_handler(
            "CRM",
            "accounts.create",
            proto::Phase::After,
            "ftp://crm.example/add",
        ))
        .await
        .expect_err("refused over gRPC too");
    assert!(
        grpc.to_string()
            .contains(refused["message"].as_str().unwrap_or("?")),
        "gRPC: {grpc}; console: {refused}"
    );

    let bad_filter = call(addr, "GET", "/api/logs?status=maybe", Some(READER), None).await;
    assert_eq!(bad_filter.status, 400);
    assert_eq!(bad_filter.json()["field"], "status");
    let bad_date = call(addr, "GET", "/api/logs?from=yesterday", Some(READER), None).await;
    assert_eq!(bad_date.json()["field"], "from");
    let no_run = call(addr, "GET", "/api/logs/987654", Some(READER), None).await;
    assert_eq!(no_run.status, 404, "{}", no_run.text);
}

/// Why: the console must grant exactly what the gRPC role table grants; a reader
/// reads, an emitter does not read handlers, only an admin edits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_decide_the_json_routes_as_they_decide_the_grpc_methods() {
    let db = TestDatabase::new().await;
    let console = ConsoleServer::start(&db, true).await;
    let addr = console.console;
    let valid = r#"{"name": "CRM", "event": "accounts.create", "phase": "after",
        "http": {"url": "http://127.0.0.1:9/add"}}"#;

    let reader = call(addr, "GET", "/api/whoami", Some(READER), None)
        .await
        .json();
    assert_eq!(reader["name"], "dashboard");
    assert_eq!(reader["roles"], serde_json::json!(["reader"]));
    assert_eq!(reader["admin"], false);
    assert_eq!(reader["development"], false);

    let denied = call(addr, "POST", "/api/handlers", Some(READER), Some(valid)).await;
    assert_eq!(denied.status, 403, "{}", denied.text);
    assert_eq!(denied.json()["code"], "permission_denied");
    let emitter = call(addr, "GET", "/api/handlers", Some(EMITTER), None).await;
    assert_eq!(emitter.status, 403, "{}", emitter.text);

    let created = call(addr, "POST", "/api/handlers", Some(ADMIN), Some(valid)).await;
    assert_eq!(created.status, 200, "{}", created.text);
    let created = created.json();
    let secret = created["http"]["secret"].as_str().unwrap_or_default();
    assert!(
        secret.starts_with("whsec_") && !secret.contains('…'),
        "{created}"
    );
    let id = created["id"].as_i64().expect("an id");

    let listed = call(addr, "GET", "/api/handlers", Some(READER), None)
        .await
        .json();
    assert_eq!(listed["handlers"][0]["id"], id);
    assert!(
        listed["handlers"][0]["http"]["secret"]
            .as_str()
            .unwrap_or_default()
            .contains('…'),
        "readers see the secret masked: {listed}"
    );
    let toggle = format!("/api/handlers/{id}/status");
    let denied = call(
        addr,
        "POST",
        &toggle,
        Some(READER),
        Some(r#"{"status": "disabled"}"#),
    )
    .await;
    assert_eq!(denied.status, 403, "{}", denied.text);
    let disabled = call(
        addr,
        "POST",
        &toggle,
        Some(ADMIN),
        Some(r#"{"status": "disabled"}"#),
    )
    .await;
    assert_eq!(disabled.json()["status"], "disabled", "{}", disabled.text);
    let patched = call(
        addr,
        "PATCH",
        &format!("/api/handlers/{id}"),
        Some(ADMIN),
        Some(r#"{"priority": 7}"#),
    )
    .await
    .json();
    assert_eq!(patched["priority"], 7, "{patched}");
    assert_eq!(
        patched["status"], "disabled",
        "only the named fields change"
    );
    let retry = call(addr, "POST", "/api/logs/1/retry", Some(READER), Some("{}")).await;
    assert_eq!(retry.status, 403, "{}", retry.text);
}

/// Why: without a tokens file no sign-in is needed, and the page itself is served with
/// the headers that keep it from being framed or sniffed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn development_mode_serves_the_page_and_needs_no_token() {
    let db = TestDatabase::new().await;
    let console = ConsoleServer::start(&db, false).await;
    let whoami = super::call(console.console, "GET", "/api/whoami", None, None)
        .await
        .json();
    assert_eq!(whoami["development"], true);
    assert_eq!(whoami["admin"], true);
    let page = super::call(console.console, "GET", "/", None, None).await;
    assert_eq!(page.status, 200);
    assert!(page.text.contains("Provisioning API"));
    let csp = page.headers["content-security-policy"]
        .to_str()
        .unwrap_or("");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    let script = super::call(console.console, "GET", "/js/main.js", None, None).await;
    assert!(script.headers["content-type"]
        .to_str()
        .unwrap_or("")
        .starts_with("text/javascript"));
}

/// Why: development mode trusts every caller, so the console, like the gRPC listener,
/// must not be reachable from the network without a tokens file.
#[tokio::test]
async fn development_mode_refuses_a_console_on_a_network_address() {
    let db = TestDatabase::new().await;
    let scripts = provisioning_tests::TempDir::new("console-scripts");
    let mut config: Config = provisioning_tests::test_config(&db, scripts.path());
    config.console_listen = Some(
        format!("0.0.0.0:{}", free_addr().port())
            .parse()
            .expect("an address"),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let result = provisioning_server::run(config, listener, Shutdown::default()).await;
    match result {
        Err(ServerError::Auth(message)) => assert!(message.contains("0.0.0.0"), "{message}"),
        other => panic!("expected the start to be refused, got {other:?}"),
    }
}

/// Why: the Execution Logs screen pages by cursor, and the form's Rotate secret and
/// Delete buttons call their own routes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_page_by_cursor_and_secrets_rotate_and_handlers_delete() {
    let db = TestDatabase::new().await;
    let console = ConsoleServer::start(&db, false).await;
    let addr = console.console;
    // A refusing port: every attempt fails (3 attempts with the test configuration).
    let body = r#"{"name": "Nobody home", "event": "accounts.create", "phase": "after",
        "http": {"url": "http://127.0.0.1:9/add"}}"#;
    let created = call(addr, "POST", "/api/handlers", None, Some(body))
        .await
        .json();
    let id = created["id"].as_i64().expect("an id");
    let secret = created["http"]["secret"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    crate::dispatch::emit_after(&console.server.client, "accounts.create", r#"{"id": 1}"#).await;
    provisioning_tests::eventually(crate::dispatch::WAIT, "3 failed runs", || async {
        let page = call(addr, "GET", "/api/logs?status=fail", None, None)
            .await
            .json();
        (page["entries"].as_array().map_or(0, Vec::len) == 3).then_some(())
    })
    .await;

    let first = call(addr, "GET", "/api/logs?limit=2", None, None)
        .await
        .json();
    let ids = |page: &serde_json::Value| -> Vec<i64> {
        page["entries"]
            .as_array()
            .map(|entries| {
                entries
                    .iter()
                    .filter_map(|e| e["log"]["id"].as_i64())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(ids(&first).len(), 2, "{first}");
    let cursor = first["next_cursor"].as_str().expect("a next page");
    let second = call(
        addr,
        "GET",
        &format!("/api/logs?limit=2&cursor={cursor}"),
        None,
        None,
    )
    .await
    .json();
    assert_eq!(ids(&second).len(), 1, "{second}");
    assert!(second["next_cursor"].is_null(), "{second}");
    let mut all = ids(&first);
    all.extend(ids(&second));
    let mut newest_first = all.clone();
    newest_first.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(all, newest_first, "newest first, no run twice");

    let rotated = call(
        addr,
        "POST",
        &format!("/api/handlers/{id}/rotate-secret"),
        None,
        Some("{}"),
    )
    .await
    .json();
    let new_secret = rotated["http"]["secret"].as_str().unwrap_or_default();
    assert!(
        new_secret.starts_with("whsec_") && new_secret != secret,
        "{rotated}"
    );
    let deleted = call(addr, "DELETE", &format!("/api/handlers/{id}"), None, None).await;
    assert_eq!(deleted.json()["deleted"], id, "{}", deleted.text);
    let gone = call(addr, "GET", &format!("/api/handlers/{id}"), None, None).await;
    assert_eq!(gone.status, 404, "{}", gone.text);
    stops_with_a_live_log_open(console).await;
}

/// Opens the Live log's event stream, then stops the server gracefully: the stop must
/// not wait for the browser (within `TestServer::stop`'s limit) and the stream ends.
async fn stops_with_a_live_log_open(console: ConsoleServer) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(console.console)
        .await
        .expect("connect");
    stream
        .write_all(b"GET /api/logs/tail HTTP/1.1\r\nHost: console\r\n\r\n")
        .await
        .expect("send");
    let mut head = vec![0; 4096];
    let read = stream.read(&mut head).await.expect("the answer");
    let head = String::from_utf8_lossy(&head[..read]).to_lowercase();
    assert!(
        head.starts_with("http/1.1 200") && head.contains("text/event-stream"),
        "{head}"
    );
    console.server.stop().await;
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        stream.read_to_end(&mut rest),
    )
    .await;
    assert!(ended.is_ok(), "the event stream outlived the server");
}
