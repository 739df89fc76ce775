//! HandlerService through the client crate against the real server: every RPC, every
//! validation error (code and field), persistence across restarts, health and
//! reflection.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;

use base64::Engine;
use diesel::sql_types::{BigInt, Nullable, Text};
use diesel::RunQueryDsl;
use provisioning_client::{proto, ClientError};
use provisioning_tests::requests::{http_handler, script_handler};
use provisioning_tests::{health_status, spawn_server, TestDatabase, TestServer};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use proto::{HandlerKind, HandlerStatus, Phase};

/// The 18 events seeded by the first migration (DESIGN.md, "Event catalogue").
const SEEDED_EVENTS: [&str; 18] = [
    "accounts.create",
    "accounts.delete",
    "accounts.update",
    "clients.archive",
    "clients.balance_non_negative",
    "clients.balance_non_positive",
    "clients.create",
    "clients.custom_fields_update",
    "clients.delete",
    "clients.update",
    "email_rates_manager.import",
    "import.process_failed",
    "import.process_success",
    "subscriptions.activate",
    "subscriptions.assign",
    "subscriptions.close",
    "subscriptions.deactivate",
    "subscriptions.renew",
];

const HOOK: &str = "http://127.0.0.1:9/hook";

/// Asserts that `result` failed with `code` and a message containing `mention`.
#[track_caller]
fn assert_error<T: std::fmt::Debug>(result: Result<T, ClientError>, code: Code, mention: &str) {
    let error = match result {
        Ok(value) => panic!("expected {code:?} mentioning {mention:?}, got Ok({value:?})"),
        Err(error) => error,
    };
    assert_eq!(error.code(), Some(code), "{error}");
    let message = error
        .status()
        .map(|s| s.message().to_owned())
        .unwrap_or_default();
    assert!(
        message.contains(mention),
        "message {message:?} does not mention {mention:?}"
    );
}

fn http_target(handler: &proto::Handler) -> &proto::HttpTarget {
    match &handler.target {
        Some(proto::handler::Target::Http(http)) => http,
        other => panic!("handler {} is not an HTTP handler: {other:?}", handler.id),
    }
}

fn script_path(handler: &proto::Handler) -> &str {
    match &handler.target {
        Some(proto::handler::Target::Script(script)) => &script.path,
        other => panic!("handler {} is not a script handler: {other:?}", handler.id),
    }
}

/// A full Standard Webhooks secret: `whsec_` and base64 of 24 to 64 random bytes.
#[track_caller]
fn assert_full_secret(secret: &str) {
    let encoded = secret
        .strip_prefix("whsec_")
        .unwrap_or_else(|| panic!("secret {secret:?} lacks the whsec_ prefix"));
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap_or_else(|e| panic!("secret {secret:?} is not base64: {e}"));
    assert!(
        (24..=64).contains(&bytes.len()),
        "secret of {} bytes",
        bytes.len()
    );
}

/// How a full secret is shown everywhere but Create and RotateSecret.
fn masked(secret: &str) -> String {
    format!("whsec_…{}", &secret[secret.len() - 4..])
}

/// The secret column as stored, read straight from the database.
fn stored_secret(db: &TestDatabase, id: i64) -> Option<String> {
    tokio::task::block_in_place(|| {
        let mut conn = db.conn();
        diesel::select(
            diesel::dsl::sql::<Nullable<Text>>("(SELECT secret FROM handlers WHERE id = ")
                .bind::<BigInt, _>(id)
                .sql(")"),
        )
        .get_result(&mut conn)
        .expect("reading the stored secret")
    })
}

async fn create(server: &TestServer, request: proto::CreateHandlerRequest) -> proto::Handler {
    server
        .client
        .create_handler(request)
        .await
        .expect("create handler")
}

async fn get(server: &TestServer, id: i64) -> Result<proto::Handler, ClientError> {
    server
        .client
        .get_handler(proto::GetHandlerRequest { id })
        .await
}

/// Ids listed by one List call with `request` (one page, up to 1000).
async fn listed_ids(server: &TestServer, request: proto::ListHandlersRequest) -> BTreeSet<i64> {
    let page = server
        .client
        .list_handlers(proto::ListHandlersRequest {
            page_size: 1000,
            ..request
        })
        .await
        .expect("list handlers");
    assert!(page.next_page_token.is_empty(), "unexpected second page");
    page.handlers.iter().map(|h| h.id).collect()
}

fn ids(list: &[i64]) -> BTreeSet<i64> {
    list.iter().copied().collect()
}

fn update_request(handler: proto::Handler, paths: &[&str]) -> proto::UpdateHandlerRequest {
    proto::UpdateHandlerRequest {
        handler: Some(handler),
        update_mask: Some(prost_types::FieldMask {
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
        }),
    }
}

// Create, Get

/// Create must fill every default and return the signing secret in full, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_http_handler_returns_defaults_and_the_full_secret() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let mut request = http_handler("  CRM sync  ", "accounts.create", Phase::After, HOOK);
    request.priority = 7;
    if let Some(proto::create_handler_request::Target::Http(http)) = &mut request.target {
        http.headers
            .insert("Authorization".into(), "Bearer t0k3n".into());
    }

    let handler = create(&server, request).await;

    assert!(handler.id > 0);
    assert_eq!(handler.name, "CRM sync", "the name is trimmed");
    assert_eq!(handler.event, "accounts.create");
    assert_eq!(handler.phase(), Phase::After);
    assert_eq!(handler.kind(), HandlerKind::Http);
    assert_eq!(handler.status(), HandlerStatus::Enabled);
    assert_eq!(handler.priority, 7);
    assert_eq!(handler.timeout_ms, 10_000);
    assert_eq!(handler.failure_policy(), proto::FailurePolicy::FailClosed);
    assert_eq!(handler.filter_json, "");
    assert!(handler.created_at.is_some() && handler.updated_at.is_some());
    let http = http_target(&handler);
    assert_eq!(http.url, HOOK);
    assert_eq!(
        http.headers.get("Authorization").map(String::as_str),
        Some("Bearer t0k3n")
    );
    assert_full_secret(&http.secret);
    assert_eq!(
        stored_secret(&db, handler.id).as_deref(),
        Some(http.secret.as_str())
    );
}

/// Script handlers name a file of the scripts directory and have no secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_script_handler_stores_the_relative_path() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let mut request = script_handler("echo", "clients.update", Phase::Before, "echo.sh");
    request.timeout_ms = 2500;
    request.failure_policy = proto::FailurePolicy::FailOpen.into();
    request.filter_json = r#"{"id_clients": 15}"#.into();

    let handler = create(&server, request).await;

    assert_eq!(handler.kind(), HandlerKind::Script);
    assert_eq!(handler.phase(), Phase::Before);
    assert_eq!(script_path(&handler), "echo.sh");
    assert_eq!(handler.timeout_ms, 2500);
    assert_eq!(handler.failure_policy(), proto::FailurePolicy::FailOpen);
    let filter: serde_json::Value =
        serde_json::from_str(&handler.filter_json).expect("filter is JSON");
    assert_eq!(filter, serde_json::json!({"id_clients": 15}));
    assert_eq!(stored_secret(&db, handler.id), None);
}

/// The secret is shown in full only on Create; Get masks it to its last 4 characters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_returns_the_handler_with_its_secret_masked() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let created = create(
        &server,
        http_handler("CRM", "clients.create", Phase::After, HOOK),
    )
    .await;
    let secret = http_target(&created).secret.clone();

    let got = get(&server, created.id).await.expect("get");

    assert_eq!(http_target(&got).secret, masked(&secret));
    assert_eq!(
        (got.id, &got.name, &got.event),
        (created.id, &created.name, &created.event)
    );
    assert_eq!(got.created_at, created.created_at);
    let script = create(
        &server,
        script_handler("s", "clients.create", Phase::After, "echo.sh"),
    )
    .await;
    assert_eq!(
        script_path(&get(&server, script.id).await.expect("get script")),
        "echo.sh"
    );
}

// List

/// Each List filter must narrow the result to exactly the matching handlers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filters_by_event_phase_kind_and_status() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let a = create(
        &server,
        http_handler("a", "clients.create", Phase::After, HOOK),
    )
    .await
    .id;
    let b = create(
        &server,
        script_handler("b", "clients.create", Phase::Before, "echo.sh"),
    )
    .await
    .id;
    let mut disabled = http_handler("c", "accounts.create", Phase::After, HOOK);
    disabled.status = HandlerStatus::Disabled.into();
    let c = create(&server, disabled).await.id;
    let mut archived = http_handler("d", "clients.create", Phase::After, HOOK);
    archived.status = HandlerStatus::Archived.into();
    let d = create(&server, archived).await.id;

    let list = |request: proto::ListHandlersRequest| listed_ids(&server, request);
    let event = |e: &str| proto::ListHandlersRequest {
        event: e.into(),
        ..Default::default()
    };
    assert_eq!(list(Default::default()).await, ids(&[a, b, c]));
    assert_eq!(list(event("clients.create")).await, ids(&[a, b]));
    assert_eq!(list(event("accounts.create")).await, ids(&[c]));
    assert_eq!(list(event("subscriptions.close")).await, ids(&[]));
    let phase = |p: Phase| proto::ListHandlersRequest {
        phase: p.into(),
        ..Default::default()
    };
    assert_eq!(list(phase(Phase::Before)).await, ids(&[b]));
    assert_eq!(list(phase(Phase::After)).await, ids(&[a, c]));
    let kind = |k: HandlerKind| proto::ListHandlersRequest {
        kind: k.into(),
        ..Default::default()
    };
    assert_eq!(list(kind(HandlerKind::Script)).await, ids(&[b]));
    assert_eq!(list(kind(HandlerKind::Http)).await, ids(&[a, c]));
    let status = |s: HandlerStatus| proto::ListHandlersRequest {
        status: s.into(),
        ..Default::default()
    };
    assert_eq!(list(status(HandlerStatus::Enabled)).await, ids(&[a, b]));
    assert_eq!(list(status(HandlerStatus::Disabled)).await, ids(&[c]));
    assert_eq!(list(status(HandlerStatus::Archived)).await, ids(&[d]));
    let combined = proto::ListHandlersRequest {
        event: "clients.create".into(),
        kind: HandlerKind::Http.into(),
        status: HandlerStatus::Archived.into(),
        ..Default::default()
    };
    assert_eq!(list(combined).await, ids(&[d]));
}

/// Archived handlers are kept for the record but hidden unless asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_hides_archived_handlers_by_default() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let kept = create(
        &server,
        http_handler("kept", "clients.create", Phase::After, HOOK),
    )
    .await
    .id;
    let old = create(
        &server,
        http_handler("old", "clients.create", Phase::After, HOOK),
    )
    .await
    .id;
    server
        .client
        .set_handler_status(proto::SetHandlerStatusRequest {
            id: old,
            status: HandlerStatus::Archived.into(),
        })
        .await
        .expect("archive");

    assert_eq!(listed_ids(&server, Default::default()).await, ids(&[kept]));
    let archived = proto::ListHandlersRequest {
        status: HandlerStatus::Archived.into(),
        ..Default::default()
    };
    assert_eq!(listed_ids(&server, archived).await, ids(&[old]));
    assert_eq!(
        get(&server, old).await.expect("get archived").status(),
        HandlerStatus::Archived
    );
}

/// Paging must return every handler exactly once and end with an empty token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_through_all_handlers_with_page_tokens() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let mut created = Vec::new();
    for i in 0..5 {
        created.push(
            create(
                &server,
                http_handler(&format!("h{i}"), "clients.create", Phase::After, HOOK),
            )
            .await
            .id,
        );
    }

    let mut seen = Vec::new();
    let mut page_sizes = Vec::new();
    let mut token = String::new();
    loop {
        let page = server
            .client
            .list_handlers(proto::ListHandlersRequest {
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .expect("list page");
        page_sizes.push(page.handlers.len());
        seen.extend(page.handlers.iter().map(|h| h.id));
        for handler in &page.handlers {
            assert!(
                http_target(handler).secret.starts_with("whsec_…"),
                "List masks secrets"
            );
        }
        if page.next_page_token.is_empty() {
            break;
        }
        assert!(page_sizes.len() < 10, "paging does not end");
        token = page.next_page_token;
    }

    assert_eq!(page_sizes, [2, 2, 1]);
    assert_eq!(seen.len(), 5, "no handler twice: {seen:?}");
    assert_eq!(ids(&seen), ids(&created));
}

/// List is documented as ordered by event, phase, priority, id (the run order).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn list_orders_by_event_then_priority_then_id() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let mut request = http_handler("w", "clients.create", Phase::After, HOOK);
    let w = create(&server, request.clone()).await.id;
    request.event = "accounts.create".into();
    request.priority = 5;
    let x = create(&server, request.clone()).await.id;
    request.priority = 1;
    let y = create(&server, request.clone()).await.id;

    let page = server
        .client
        .list_handlers(Default::default())
        .await
        .expect("list");
    let order: Vec<i64> = page.handlers.iter().map(|h| h.id).collect();
    assert_eq!(order, [y, x, w]);
}

// Update

/// Only the fields named in the mask change; the others keep their stored values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_changes_only_the_fields_in_the_mask() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let created = create(
        &server,
        http_handler("before", "clients.create", Phase::After, HOOK),
    )
    .await;
    let mut edit = created.clone();
    edit.name = "after".into();
    edit.priority = 42;
    edit.timeout_ms = 1234;

    let renamed = server
        .client
        .update_handler(update_request(edit.clone(), &["name"]))
        .await
        .expect("update name");
    assert_eq!(renamed.name, "after");
    assert_eq!(renamed.priority, 0, "priority is not in the mask");
    assert_eq!(renamed.timeout_ms, 10_000, "timeout_ms is not in the mask");

    let reprioritised = server
        .client
        .update_handler(update_request(edit, &["priority"]))
        .await
        .expect("update priority");
    assert_eq!(
        (reprioritised.name.as_str(), reprioritised.priority),
        ("after", 42)
    );
    let stored = get(&server, created.id).await.expect("get");
    assert_eq!(
        (stored.name.as_str(), stored.priority, stored.timeout_ms),
        ("after", 42, 10_000)
    );
    assert_eq!(http_target(&stored).url, HOOK);
}

/// Changing the URL must not silently invalidate the receiver's signature checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_of_the_http_url_keeps_the_secret() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let created = create(
        &server,
        http_handler("crm", "clients.create", Phase::After, HOOK),
    )
    .await;
    let secret = http_target(&created).secret.clone();
    let mut edit = created.clone();
    edit.target = Some(proto::handler::Target::Http(proto::HttpTarget {
        url: "https://crm.example/new-hook".into(),
        ..Default::default()
    }));

    let updated = server
        .client
        .update_handler(update_request(edit, &["http"]))
        .await
        .expect("update url");

    assert_eq!(http_target(&updated).url, "https://crm.example/new-hook");
    assert_eq!(http_target(&updated).secret, masked(&secret));
    assert_eq!(stored_secret(&db, created.id), Some(secret));
}

/// `http.url` changes the URL and keeps the headers; `http.headers` changes the headers
/// and keeps the URL; neither applies to a script handler. No configuration is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_masks_http_url_and_http_headers_change_only_what_they_name() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let mut request = http_handler("crm", "clients.create", Phase::After, HOOK);
    if let Some(proto::create_handler_request::Target::Http(http)) = &mut request.target {
        http.headers
            .insert("Authorization".into(), "Bearer abc".into());
    }
    let created = create(&server, request).await;
    let with_target = |url: &str, headers: &[(&str, &str)]| {
        let mut edit = created.clone();
        edit.target = Some(proto::handler::Target::Http(proto::HttpTarget {
            url: url.into(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }));
        edit
    };

    let updated = server
        .client
        .update_handler(update_request(
            with_target("https://crm.example/v2", &[]),
            &["http.url"],
        ))
        .await
        .expect("update http.url");
    assert_eq!(http_target(&updated).url, "https://crm.example/v2");
    assert_eq!(
        http_target(&updated)
            .headers
            .get("Authorization")
            .map(String::as_str),
        Some("Bearer abc"),
        "http.url keeps the headers"
    );

    let updated = server
        .client
        .update_handler(update_request(
            with_target("", &[("X-Tenant", "7")]),
            &["http.headers"],
        ))
        .await
        .expect("update http.headers");
    let stored = get(&server, created.id).await.expect("get");
    for handler in [&updated, &stored] {
        assert_eq!(http_target(handler).url, "https://crm.example/v2");
        assert_eq!(
            http_target(handler).headers.keys().collect::<Vec<_>>(),
            ["X-Tenant"],
            "http.headers replaces the headers and keeps the URL"
        );
    }

    let script = create(
        &server,
        script_handler("local", "clients.create", Phase::After, "ok.sh"),
    )
    .await;
    let mut edit = with_target("https://crm.example/x", &[]);
    edit.id = script.id;
    assert_error(
        server
            .client
            .update_handler(update_request(edit, &["http.url"]))
            .await,
        Code::InvalidArgument,
        "script handler",
    );
    assert_eq!(
        script_path(&get(&server, script.id).await.expect("get")),
        "ok.sh"
    );
}

/// A handler can change kind: HTTP → script drops the URL and the secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_switches_an_http_handler_to_a_script() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let created = create(
        &server,
        http_handler("crm", "clients.create", Phase::After, HOOK),
    )
    .await;
    let mut edit = created.clone();
    edit.target = Some(proto::handler::Target::Script(proto::ScriptTarget {
        path: "echo.sh".into(),
    }));

    let updated = server
        .client
        .update_handler(update_request(edit, &["script"]))
        .await
        .expect("switch to script");

    assert_eq!(updated.kind(), HandlerKind::Script);
    assert_eq!(script_path(&updated), "echo.sh");
    let stored = get(&server, created.id).await.expect("get");
    assert_eq!(stored.kind(), HandlerKind::Script);
    assert_eq!(stored_secret(&db, created.id), None);
    let scripts = proto::ListHandlersRequest {
        kind: HandlerKind::Script.into(),
        ..Default::default()
    };
    assert_eq!(listed_ids(&server, scripts).await, ids(&[created.id]));
}

/// A script turned HTTP gets its first secret from Update, the only time the caller
/// can see it in full; afterwards it is masked like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_switching_a_script_handler_to_http_returns_the_new_secret_in_full_once() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let created = create(
        &server,
        script_handler("sync", "clients.create", Phase::After, "echo.sh"),
    )
    .await;
    let mut edit = created.clone();
    edit.target = Some(proto::handler::Target::Http(proto::HttpTarget {
        url: HOOK.into(),
        ..Default::default()
    }));

    let updated = server
        .client
        .update_handler(update_request(edit, &["http"]))
        .await
        .expect("switch to HTTP");

    assert_eq!(updated.kind(), HandlerKind::Http);
    assert_eq!(http_target(&updated).url, HOOK);
    let secret = http_target(&updated).secret.clone();
    assert!(!secret.contains('…'), "masked: {secret:?}");
    assert_full_secret(&secret);
    assert_eq!(stored_secret(&db, created.id), Some(secret.clone()));
    let got = get(&server, created.id).await.expect("get");
    assert_eq!(http_target(&got).secret, masked(&secret));
}

/// An Update without a field mask would be ambiguous: it is refused, nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_without_a_mask_is_invalid_argument() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let created = create(
        &server,
        http_handler("crm", "clients.create", Phase::After, HOOK),
    )
    .await;
    let mut edit = created.clone();
    edit.name = "changed".into();

    let no_mask = proto::UpdateHandlerRequest {
        handler: Some(edit.clone()),
        update_mask: None,
    };
    assert_error(
        server.client.update_handler(no_mask).await,
        Code::InvalidArgument,
        "update_mask",
    );
    assert_error(
        server
            .client
            .update_handler(update_request(edit.clone(), &[]))
            .await,
        Code::InvalidArgument,
        "update_mask",
    );
    assert_error(
        server
            .client
            .update_handler(update_request(edit, &["secret"]))
            .await,
        Code::InvalidArgument,
        "update_mask",
    );
    assert_eq!(get(&server, created.id).await.expect("get").name, "crm");
}

/// Update validates the patched handler whole and writes nothing when it is invalid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_with_invalid_values_is_rejected_without_partial_writes() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let created = create(
        &server,
        http_handler("crm", "clients.create", Phase::After, HOOK),
    )
    .await;
    let mut edit = created.clone();
    edit.name = "renamed".into();
    edit.priority = -1;

    assert_error(
        server
            .client
            .update_handler(update_request(edit.clone(), &["name", "priority"]))
            .await,
        Code::InvalidArgument,
        "priority",
    );
    edit.priority = 1;
    edit.event = "nope.nope".into();
    assert_error(
        server
            .client
            .update_handler(update_request(edit, &["name", "event"]))
            .await,
        Code::InvalidArgument,
        "event",
    );
    let stored = get(&server, created.id).await.expect("get");
    assert_eq!(
        (stored.name.as_str(), stored.priority, stored.event.as_str()),
        ("crm", 0, "clients.create")
    );
}

// SetStatus, Delete

/// Status changes are visible at once to Get and List.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_status_disables_archives_and_enables_again() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let id = create(
        &server,
        http_handler("crm", "clients.create", Phase::After, HOOK),
    )
    .await
    .id;
    let set = |status: HandlerStatus| {
        server
            .client
            .set_handler_status(proto::SetHandlerStatusRequest {
                id,
                status: status.into(),
            })
    };

    assert_eq!(
        set(HandlerStatus::Disabled)
            .await
            .expect("disable")
            .status(),
        HandlerStatus::Disabled
    );
    assert_eq!(
        get(&server, id).await.expect("get").status(),
        HandlerStatus::Disabled
    );
    assert_eq!(
        listed_ids(&server, Default::default()).await,
        ids(&[id]),
        "disabled is listed"
    );

    assert_eq!(
        set(HandlerStatus::Archived)
            .await
            .expect("archive")
            .status(),
        HandlerStatus::Archived
    );
    assert_eq!(
        listed_ids(&server, Default::default()).await,
        ids(&[]),
        "archived is hidden"
    );

    assert_eq!(
        set(HandlerStatus::Enabled).await.expect("enable").status(),
        HandlerStatus::Enabled
    );
    assert_eq!(
        get(&server, id).await.expect("get").status(),
        HandlerStatus::Enabled
    );

    assert_error(
        set(HandlerStatus::Unspecified).await,
        Code::InvalidArgument,
        "status",
    );
}

/// A deleted handler is gone: Get and a second Delete say NOT_FOUND.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_removes_the_handler() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let gone = create(
        &server,
        http_handler("gone", "clients.create", Phase::After, HOOK),
    )
    .await
    .id;
    let kept = create(
        &server,
        http_handler("kept", "clients.create", Phase::After, HOOK),
    )
    .await
    .id;

    server
        .client
        .delete_handler(proto::DeleteHandlerRequest { id: gone })
        .await
        .expect("delete");

    assert_error(get(&server, gone).await, Code::NotFound, &gone.to_string());
    assert_error(
        server
            .client
            .delete_handler(proto::DeleteHandlerRequest { id: gone })
            .await,
        Code::NotFound,
        &gone.to_string(),
    );
    assert_eq!(listed_ids(&server, Default::default()).await, ids(&[kept]));
}

// RotateSecret

/// Rotation returns a new full secret once; afterwards only its mask is shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_secret_returns_a_new_full_secret_once() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let created = create(
        &server,
        http_handler("crm", "clients.create", Phase::After, HOOK),
    )
    .await;
    let old = http_target(&created).secret.clone();

    let rotated = server
        .client
        .rotate_secret(proto::RotateSecretRequest { id: created.id })
        .await
        .expect("rotate");

    let new = http_target(&rotated).secret.clone();
    assert_full_secret(&new);
    assert_ne!(new, old);
    assert_eq!(
        http_target(&get(&server, created.id).await.expect("get")).secret,
        masked(&new)
    );
    assert_eq!(stored_secret(&db, created.id), Some(new));
}

/// Script handlers have no secret to rotate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_secret_of_a_script_handler_is_failed_precondition() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let script = create(
        &server,
        script_handler("s", "clients.create", Phase::After, "echo.sh"),
    )
    .await;

    assert_error(
        server
            .client
            .rotate_secret(proto::RotateSecretRequest { id: script.id })
            .await,
        Code::FailedPrecondition,
        "script",
    );
}

// Event types

/// The catalogue starts with exactly the 18 events of the billing system.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_event_types_returns_the_18_seeded_events_by_name() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;

    let reply = server
        .client
        .list_event_types(proto::ListEventTypesRequest {})
        .await
        .expect("list event types");

    let names: Vec<&str> = reply.event_types.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, SEEDED_EVENTS);
    for event_type in &reply.event_types {
        assert!(event_type.builtin, "{} is builtin", event_type.name);
        assert!(
            !event_type.description.is_empty(),
            "{} has a description",
            event_type.name
        );
    }
}

/// The catalogue is extensible, and a new event can be handled at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_event_type_adds_a_usable_event() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;

    let created = server
        .client
        .create_event_type(proto::CreateEventTypeRequest {
            name: "invoices.paid".into(),
            description: "An invoice was paid".into(),
            schema_json: String::new(),
        })
        .await
        .expect("create event type");

    assert_eq!(
        (
            created.name.as_str(),
            created.description.as_str(),
            created.builtin
        ),
        ("invoices.paid", "An invoice was paid", false)
    );
    let listed = server
        .client
        .list_event_types(proto::ListEventTypesRequest {})
        .await
        .expect("list");
    assert_eq!(listed.event_types.len(), 19);
    assert!(listed
        .event_types
        .iter()
        .any(|e| e.name == "invoices.paid" && !e.builtin));
    let handler = create(
        &server,
        http_handler("billing", "invoices.paid", Phase::After, HOOK),
    )
    .await;
    assert_eq!(handler.event, "invoices.paid");
}

/// Event names are unique, seeded ones included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_event_type_with_a_taken_name_is_already_exists() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let request = |name: &str| proto::CreateEventTypeRequest {
        name: name.into(),
        description: String::new(),
        schema_json: String::new(),
    };
    server
        .client
        .create_event_type(request("invoices.paid"))
        .await
        .expect("first");

    assert_error(
        server
            .client
            .create_event_type(request("invoices.paid"))
            .await,
        Code::AlreadyExists,
        "invoices.paid",
    );
    assert_error(
        server
            .client
            .create_event_type(request("clients.create"))
            .await,
        Code::AlreadyExists,
        "clients.create",
    );
}

/// Event names must be `group.action` in lowercase, so they stay usable as wire names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_event_type_with_a_bad_name_is_invalid_argument() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;

    let too_long = format!("a.{}", "b".repeat(99));
    for bad in [
        "",
        "invoices",
        "Invoices.Paid",
        "a.b.c",
        "invoices.",
        "in voices.paid",
        too_long.as_str(),
    ] {
        let result = server
            .client
            .create_event_type(proto::CreateEventTypeRequest {
                name: bad.to_owned(),
                description: String::new(),
                schema_json: String::new(),
            })
            .await;
        assert_error(result, Code::InvalidArgument, "name");
    }
    let listed = server
        .client
        .list_event_types(proto::ListEventTypesRequest {})
        .await
        .expect("list");
    assert_eq!(listed.event_types.len(), 18, "nothing was added");
    let longest = format!("a.{}", "b".repeat(98));
    let created = server
        .client
        .create_event_type(proto::CreateEventTypeRequest {
            name: longest.clone(),
            description: String::new(),
            schema_json: String::new(),
        })
        .await
        .expect("a 100-character name is valid");
    assert_eq!(created.name, longest);
}

// Validation of Create

/// Names must be 1 to 200 characters after trimming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_rejects_empty_and_over_long_names() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    for bad in [
        String::new(),
        "   ".to_owned(),
        "n".repeat(201),
        "é".repeat(201),
    ] {
        let result = server
            .client
            .create_handler(http_handler(&bad, "clients.create", Phase::After, HOOK))
            .await;
        assert_error(result, Code::InvalidArgument, "name");
    }
    assert_eq!(
        listed_ids(&server, Default::default()).await,
        ids(&[]),
        "no partial write"
    );

    let longest = create(
        &server,
        http_handler(&"é".repeat(200), "clients.create", Phase::After, HOOK),
    )
    .await;
    assert_eq!(longest.name.chars().count(), 200);
}

/// Handlers can only be registered for events of the catalogue, with a phase and a target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_rejects_unknown_events_and_missing_phase_or_target() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;

    for event in ["", "clients.explode", "nope"] {
        let result = server
            .client
            .create_handler(http_handler("n", event, Phase::After, HOOK))
            .await;
        assert_error(result, Code::InvalidArgument, "event");
    }
    let mut no_phase = http_handler("n", "clients.create", Phase::After, HOOK);
    no_phase.phase = Phase::Unspecified.into();
    assert_error(
        server.client.create_handler(no_phase).await,
        Code::InvalidArgument,
        "phase",
    );
    let mut no_target = http_handler("n", "clients.create", Phase::After, HOOK);
    no_target.target = None;
    assert_error(
        server.client.create_handler(no_target).await,
        Code::InvalidArgument,
        "target",
    );
    assert_eq!(listed_ids(&server, Default::default()).await, ids(&[]));
}

/// Only absolute http(s) URLs with a host can be called.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_rejects_invalid_urls_and_other_schemes() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;

    for url in [
        "",
        "not a url",
        "crm.net/client-add",
        "/relative/path",
        "http://",
        "ftp://files.example/x",
        "file:///etc/passwd",
    ] {
        let result = server
            .client
            .create_handler(http_handler("n", "clients.create", Phase::After, url))
            .await;
        assert_error(result, Code::InvalidArgument, "http.url");
    }
    let ftp = server
        .client
        .create_handler(http_handler(
            "n",
            "clients.create",
            Phase::After,
            "ftp://files.example/x",
        ))
        .await;
    assert_error(ftp, Code::InvalidArgument, "ftp");
    assert_eq!(listed_ids(&server, Default::default()).await, ids(&[]));
    let https = create(
        &server,
        http_handler("n", "clients.create", Phase::After, "https://crm.example/h"),
    )
    .await;
    assert_eq!(http_target(&https).url, "https://crm.example/h");
}

/// Headers the service sets itself (signatures, event metadata) cannot be overridden.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_rejects_reserved_and_malformed_headers() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;

    for (name, value) in [
        ("webhook-signature", "v1,x"),
        ("X-Provisioning-Event", "x"),
        ("bad header", "x"),
        ("X-Ok", "line\nbreak"),
    ] {
        let mut request = http_handler("n", "clients.create", Phase::After, HOOK);
        if let Some(proto::create_handler_request::Target::Http(http)) = &mut request.target {
            http.headers.insert(name.into(), value.into());
        }
        assert_error(
            server.client.create_handler(request).await,
            Code::InvalidArgument,
            "http.headers",
        );
    }
    assert_eq!(listed_ids(&server, Default::default()).await, ids(&[]));
}

/// Scripts must stay inside the scripts directory and be executable files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_rejects_script_paths_outside_the_directory_or_not_runnable() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let dir = &server.scripts_dir;
    std::os::unix::fs::symlink("/bin/sh", dir.join("escape.sh")).expect("symlink");
    std::fs::write(dir.join("plain.sh"), "#!/bin/sh\n").expect("write");
    std::fs::set_permissions(dir.join("plain.sh"), std::fs::Permissions::from_mode(0o644))
        .expect("chmod");
    std::fs::create_dir(dir.join("subdir")).expect("mkdir");

    let cases = [
        ("", "empty"),
        ("/bin/sh", "absolute"),
        ("../echo.sh", "'..'"),
        ("subdir/../echo.sh", "'..'"),
        ("escape.sh", "outside"),
        ("plain.sh", "not executable"),
        ("missing.sh", "not found"),
        ("subdir", "not a regular file"),
    ];
    for (path, why) in cases {
        let result = server
            .client
            .create_handler(script_handler("n", "clients.create", Phase::After, path))
            .await;
        let error = result.expect_err(path);
        assert_eq!(error.code(), Some(Code::InvalidArgument), "{path}: {error}");
        let message = error
            .status()
            .map(|s| s.message().to_owned())
            .unwrap_or_default();
        assert!(message.contains("script.path"), "{path}: {message}");
        assert!(message.contains(why), "{path}: {message} (expected {why})");
    }
    assert_eq!(listed_ids(&server, Default::default()).await, ids(&[]));
}

/// Priority is 0 to 1000000 and timeout 1 to 300000 ms; the bounds themselves are valid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_rejects_out_of_range_priority_and_timeout() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let with = |priority: i32, timeout_ms: u32| {
        let mut request = http_handler("n", "clients.create", Phase::After, HOOK);
        request.priority = priority;
        request.timeout_ms = timeout_ms;
        request
    };

    assert_error(
        server.client.create_handler(with(-1, 0)).await,
        Code::InvalidArgument,
        "priority",
    );
    assert_error(
        server.client.create_handler(with(1_000_001, 0)).await,
        Code::InvalidArgument,
        "priority",
    );
    assert_error(
        server.client.create_handler(with(0, 300_001)).await,
        Code::InvalidArgument,
        "timeout_ms",
    );
    assert_eq!(listed_ids(&server, Default::default()).await, ids(&[]));

    let max = create(&server, with(1_000_000, 300_000)).await;
    assert_eq!((max.priority, max.timeout_ms), (1_000_000, 300_000));
    let min = create(&server, with(0, 1)).await;
    assert_eq!((min.priority, min.timeout_ms), (0, 1));
}

/// A payload filter must be a JSON object, or it could never match.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_rejects_a_filter_that_is_not_a_json_object() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    for filter in ["{", "not json", "[1, 2]", "15", "\"text\""] {
        let mut request = http_handler("n", "clients.create", Phase::After, HOOK);
        request.filter_json = filter.into();
        assert_error(
            server.client.create_handler(request).await,
            Code::InvalidArgument,
            "filter_json",
        );
    }
    assert_eq!(listed_ids(&server, Default::default()).await, ids(&[]));
}

/// List rejects malformed paging input instead of guessing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_rejects_bad_page_size_and_page_token() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;

    let too_big = proto::ListHandlersRequest {
        page_size: 1001,
        ..Default::default()
    };
    assert_error(
        server.client.list_handlers(too_big).await,
        Code::InvalidArgument,
        "page_size",
    );
    let bad_token = proto::ListHandlersRequest {
        page_token: "not-a-token".into(),
        ..Default::default()
    };
    assert_error(
        server.client.list_handlers(bad_token).await,
        Code::InvalidArgument,
        "page_token",
    );
}

/// Every RPC taking a handler id answers NOT_FOUND for an unknown one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_handler_ids_are_not_found() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let id = 987_654;
    let client = &server.client;
    let handler = proto::Handler {
        id,
        name: "x".into(),
        ..Default::default()
    };

    assert_error(get(&server, id).await, Code::NotFound, "987654");
    assert_error(
        client
            .update_handler(update_request(handler, &["name"]))
            .await,
        Code::NotFound,
        "987654",
    );
    let status = proto::SetHandlerStatusRequest {
        id,
        status: HandlerStatus::Disabled.into(),
    };
    assert_error(
        client.set_handler_status(status).await,
        Code::NotFound,
        "987654",
    );
    assert_error(
        client
            .delete_handler(proto::DeleteHandlerRequest { id })
            .await,
        Code::NotFound,
        "987654",
    );
    assert_error(
        client
            .rotate_secret(proto::RotateSecretRequest { id })
            .await,
        Code::NotFound,
        "987654",
    );
}

// Persistence, health, reflection

/// Handlers live in PostgreSQL, not in the server: a new server sees them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_survive_a_server_restart() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let created = create(
        &server,
        http_handler("durable", "subscriptions.renew", Phase::After, HOOK),
    )
    .await;
    let secret = http_target(&created).secret.clone();
    server.stop().await;

    let restarted = spawn_server(&db).await;
    let got = get(&restarted, created.id)
        .await
        .expect("get after restart");

    assert_eq!(
        (got.name.as_str(), got.event.as_str()),
        ("durable", "subscriptions.renew")
    );
    assert_eq!(http_target(&got).secret, masked(&secret));
    assert_eq!(
        listed_ids(&restarted, Default::default()).await,
        ids(&[created.id])
    );
}

/// Load balancers and orchestrators probe the standard health service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_service_reports_serving() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;

    for service in [
        "",
        "provisioning.v1.HandlerService",
        "provisioning.v1.EventService",
        "provisioning.v1.ExecutionLogService",
    ] {
        assert_eq!(
            health_status(&server.url, service).await,
            Some(ServingStatus::Serving),
            "{service:?}"
        );
    }
    assert_eq!(health_status(&server.url, "no.such.Service").await, None);
}

/// An open health Watch (a load balancer's) must not hold the graceful shutdown: the
/// stream ends when the server stops, and the server stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_health_watch_ends_with_the_server() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let channel = tonic::transport::Endpoint::from_shared(server.url.clone())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut watch = HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("watch")
        .into_inner();
    let first = watch
        .message()
        .await
        .expect("first status")
        .expect("a status");
    assert_eq!(first.status, ServingStatus::Serving as i32);
    // Panics if the server does not stop within its timeout.
    server.stop().await;
    let end = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            match watch.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the watch ended");
    assert!(matches!(end, Ok(None) | Err(_)), "{end:?}");
}

/// grpcurl must work with no proto files (reflection v1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_v1_lists_and_describes_the_services() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let channel = tonic::transport::Endpoint::from_shared(server.url.clone())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut client = ServerReflectionClient::new(channel);
    let requests = [
        MessageRequest::ListServices(String::new()),
        MessageRequest::FileContainingSymbol("provisioning.v1.HandlerService".into()),
    ]
    .map(|request| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    });
    let mut replies = client
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .expect("reflection call")
        .into_inner();

    let Some(MessageResponse::ListServicesResponse(list)) = replies
        .message()
        .await
        .expect("first reply")
        .and_then(|r| r.message_response)
    else {
        panic!("expected a service list");
    };
    let services: BTreeSet<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "provisioning.v1.HandlerService",
        "provisioning.v1.EventService",
        "provisioning.v1.ExecutionLogService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            services.contains(expected),
            "{expected} missing from {services:?}"
        );
    }

    let Some(MessageResponse::FileDescriptorResponse(files)) = replies
        .message()
        .await
        .expect("second reply")
        .and_then(|r| r.message_response)
    else {
        panic!("expected file descriptors");
    };
    let descriptors: Vec<prost_types::FileDescriptorProto> = files
        .file_descriptor_proto
        .iter()
        .map(|bytes| {
            <prost_types::FileDescriptorProto as prost::Message>::decode(bytes.as_slice())
                .expect("a FileDescriptorProto")
        })
        .collect();
    let handlers_file = descriptors
        .iter()
        .find(|file| file.name() == "provisioning/v1/handlers.proto")
        .expect("handlers.proto among the returned files");
    let service = handlers_file
        .service
        .iter()
        .find(|service| service.name() == "HandlerService")
        .expect("HandlerService described");
    let methods: BTreeSet<&str> = service.method.iter().map(|m| m.name()).collect();
    for method in [
        "Create",
        "Get",
        "List",
        "Update",
        "SetStatus",
        "Delete",
        "RotateSecret",
        "ListEventTypes",
        "CreateEventType",
    ] {
        assert!(
            methods.contains(method),
            "{method} missing from {methods:?}"
        );
    }
}

/// Older grpcurl and tools still speak reflection v1alpha.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_v1alpha_lists_the_services() {
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;

    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let channel = tonic::transport::Endpoint::from_shared(server.url.clone())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection call")
        .into_inner();

    let Some(MessageResponse::ListServicesResponse(list)) = replies
        .message()
        .await
        .expect("reply")
        .and_then(|r| r.message_response)
    else {
        panic!("expected a service list");
    };
    let services: BTreeSet<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "provisioning.v1.HandlerService",
        "provisioning.v1.EventService",
        "provisioning.v1.ExecutionLogService",
    ] {
        assert!(
            services.contains(expected),
            "{expected} missing from {services:?}"
        );
    }
}
