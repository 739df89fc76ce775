//! Authentication and roles (issue #9): the role × RPC matrix over real sockets, open
//! health and reflection, tokens-file reload, `provisiond token new`, development mode's
//! loopback rule, and `provctl --token`.

use std::path::PathBuf;
use std::time::Duration;

use futures_util::StreamExt;
use provisioning_client::{proto, Client, ClientError};
use provisioning_server::auth::identities::sha256_hex;
use provisioning_tests::{
    bin_path, eventually, health_status, provctl, run_command, spawn_server_with, TempDir,
    TestDatabase, TestServer,
};
use tonic::Code;

pub(crate) const ADMIN: &str = "pvt_test_admin_token";
pub(crate) const EMITTER: &str = "pvt_test_emitter_token";
pub(crate) const READER: &str = "pvt_test_reader_token";
/// An emitter limited to `clients.*`.
pub(crate) const LIMITED: &str = "pvt_test_limited_emitter_token";

/// A tokens file with one admin, one emitter, one reader and one `clients.*` emitter.
pub(crate) struct TokensFile {
    pub(crate) path: PathBuf,
    _dir: TempDir,
}

impl TokensFile {
    pub(crate) fn new() -> TokensFile {
        let dir = TempDir::new("provisiond-tokens");
        let path = dir.path().join("tokens.toml");
        std::fs::write(&path, tokens_text()).expect("writing the tokens file");
        TokensFile { path, _dir: dir }
    }
}

fn entry(name: &str, roles: &str, events: &str, token: &str) -> String {
    format!(
        "[[token]]\nname = \"{name}\"\nroles = {roles}\nevents = {events}\nsha256 = \"{}\"\n\n",
        sha256_hex(token)
    )
}

fn tokens_text() -> String {
    [
        entry("ops", r#"["admin"]"#, "[]", ADMIN),
        entry("billing", r#"["emitter"]"#, "[]", EMITTER),
        entry("dashboard", r#"["reader"]"#, "[]", READER),
        entry("crm", r#"["emitter"]"#, r#"["clients.*"]"#, LIMITED),
    ]
    .concat()
}

/// A server using a fresh [`TokensFile`] (kept alive with it).
pub(crate) async fn secured_server(db: &TestDatabase) -> (TestServer, TokensFile) {
    let tokens = TokensFile::new();
    let path = tokens.path.clone();
    let server = spawn_server_with(db, |config| config.tokens_file = Some(path)).await;
    (server, tokens)
}

pub(crate) fn with_token(server: &TestServer, token: &str) -> Client {
    server
        .client
        .clone()
        .with_token(Some(token))
        .expect("a valid token")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rpc {
    CreateHandler,
    GetHandler,
    ListHandlers,
    UpdateHandler,
    SetStatus,
    DeleteHandler,
    RotateSecret,
    ListEventTypes,
    CreateEventType,
    UpdateEventType,
    TestHandler,
    Emit,
    EmitBatch,
    EmitStream,
    GetLog,
    SearchLogs,
    TailLogs,
    LogStats,
    Retry,
    RetryFailed,
    Purge,
}

const ALL: [Rpc; 21] = [
    Rpc::CreateHandler,
    Rpc::GetHandler,
    Rpc::ListHandlers,
    Rpc::UpdateHandler,
    Rpc::SetStatus,
    Rpc::DeleteHandler,
    Rpc::RotateSecret,
    Rpc::ListEventTypes,
    Rpc::CreateEventType,
    Rpc::UpdateEventType,
    Rpc::TestHandler,
    Rpc::Emit,
    Rpc::EmitBatch,
    Rpc::EmitStream,
    Rpc::GetLog,
    Rpc::SearchLogs,
    Rpc::TailLogs,
    Rpc::LogStats,
    Rpc::Retry,
    Rpc::RetryFailed,
    Rpc::Purge,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Needs {
    Admin,
    Emitter,
    Reader,
}

impl Rpc {
    fn needs(self) -> Needs {
        use Rpc::*;
        match self {
            CreateHandler | UpdateHandler | SetStatus | DeleteHandler | RotateSecret
            | CreateEventType | UpdateEventType | TestHandler | Retry | RetryFailed | Purge => {
                Needs::Admin
            }
            Emit | EmitBatch | EmitStream => Needs::Emitter,
            GetHandler | ListHandlers | ListEventTypes | GetLog | SearchLogs | TailLogs
            | LogStats => Needs::Reader,
        }
    }

    /// What an authorized caller gets for the request [`call`] makes: requests name
    /// missing ids or invalid input where a success would change state.
    fn authorized_code(self) -> Code {
        use Rpc::*;
        match self {
            CreateHandler | CreateEventType => Code::InvalidArgument,
            GetHandler | UpdateHandler | SetStatus | DeleteHandler | RotateSecret | GetLog
            | Retry | RetryFailed | UpdateEventType | TestHandler => Code::NotFound,
            _ => Code::Ok,
        }
    }
}

const MISSING: i64 = 987_654_321;

fn emit_request(event: &str) -> proto::EmitRequest {
    proto::EmitRequest {
        event: event.into(),
        phase: proto::Phase::After.into(),
        data_json: r#"{"id": 1}"#.into(),
        ..Default::default()
    }
}

fn code(result: Result<(), ClientError>) -> Code {
    match result {
        Ok(()) => Code::Ok,
        Err(error) => error
            .code()
            .unwrap_or_else(|| panic!("not an RPC error: {error}")),
    }
}

/// Makes one call of `rpc` (emits name `event`) and returns its status code; for
/// EmitStream, the first ack's code when the stream opened.
async fn call(client: &Client, rpc: Rpc, event: &str) -> Code {
    use Rpc::*;
    let result = match rpc {
        CreateHandler => client
            .create_handler(proto::CreateHandlerRequest::default())
            .await
            .map(drop),
        GetHandler => client
            .get_handler(proto::GetHandlerRequest { id: MISSING })
            .await
            .map(drop),
        ListHandlers => client
            .list_handlers(proto::ListHandlersRequest::default())
            .await
            .map(drop),
        UpdateHandler => client
            .update_handler(proto::UpdateHandlerRequest {
                handler: Some(proto::Handler {
                    id: MISSING,
                    name: "x".into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["name".into()],
                }),
            })
            .await
            .map(drop),
        SetStatus => client
            .set_handler_status(proto::SetHandlerStatusRequest {
                id: MISSING,
                status: proto::HandlerStatus::Enabled.into(),
            })
            .await
            .map(drop),
        DeleteHandler => {
            client
                .delete_handler(proto::DeleteHandlerRequest { id: MISSING })
                .await
        }
        RotateSecret => client
            .rotate_secret(proto::RotateSecretRequest { id: MISSING })
            .await
            .map(drop),
        ListEventTypes => client
            .list_event_types(proto::ListEventTypesRequest {})
            .await
            .map(drop),
        CreateEventType => client
            .create_event_type(proto::CreateEventTypeRequest {
                name: "NOT VALID".into(),
                description: String::new(),
                schema_json: String::new(),
            })
            .await
            .map(drop),
        UpdateEventType => client
            .update_event_type(proto::UpdateEventTypeRequest {
                event_type: Some(proto::EventType {
                    name: "nothing.here".into(),
                    schema_json: r#"{"type": "object"}"#.into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["schema_json".into()],
                }),
            })
            .await
            .map(drop),
        TestHandler => client
            .test_handler(proto::TestHandlerRequest {
                id: MISSING,
                input: Some(proto::test_handler_request::Input::DataJson("{}".into())),
            })
            .await
            .map(drop),
        Emit => client.emit(emit_request(event)).await.map(drop),
        EmitBatch => client
            .emit_batch(proto::EmitBatchRequest {
                events: vec![emit_request(event)],
            })
            .await
            .map(drop),
        EmitStream => {
            let request = proto::EmitStreamRequest {
                sequence: 1,
                event: Some(emit_request(event)),
            };
            match client.emit_stream(tokio_stream::iter([request])).await {
                // The resuming client opens the stream in the background: a refusal of
                // the call itself arrives as the stream's first item.
                Ok(mut acks) => match acks.next().await.expect("an ack or an error") {
                    Ok(ack) => return Code::from_i32(ack.error_code),
                    Err(error) => Err(error),
                },
                Err(error) => Err(error),
            }
        }
        GetLog => client
            .get_log(proto::GetLogRequest { id: MISSING })
            .await
            .map(drop),
        SearchLogs => match client
            .search_logs(proto::SearchLogsRequest::default())
            .await
        {
            Ok(mut stream) => {
                while let Some(item) = stream.next().await {
                    item.expect("search item");
                }
                Ok(())
            }
            Err(error) => Err(error),
        },
        TailLogs => client
            .tail_logs(proto::TailLogsRequest::default())
            .await
            .map(drop),
        LogStats => client
            .log_stats(proto::LogStatsRequest::default())
            .await
            .map(drop),
        Retry => client
            .retry(proto::RetryRequest {
                log_id: MISSING,
                resend: false,
            })
            .await
            .map(drop),
        RetryFailed => client
            .retry_failed(proto::RetryFailedRequest {
                handler_id: MISSING,
                since: None,
            })
            .await
            .map(drop),
        Purge => client
            .purge(proto::PurgeRequest {
                older_than: Some(prost_types::Timestamp {
                    seconds: 86_400,
                    nanos: 0,
                }),
            })
            .await
            .map(drop),
    };
    code(result)
}

/// Every RPC of the three services, called with no token, a wrong token, each role and
/// an emitter outside its patterns, answers exactly the expected code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_answers_the_role_matrix() {
    let db = TestDatabase::new().await;
    let (server, _tokens) = secured_server(&db).await;
    let anonymous = server.client.clone();
    let wrong = with_token(&server, "pvt_not_a_configured_token");
    let admin = with_token(&server, ADMIN);
    let emitter = with_token(&server, EMITTER);
    let reader = with_token(&server, READER);
    let limited = with_token(&server, LIMITED);

    let mut failures = Vec::new();
    for rpc in ALL {
        let allowed = rpc.authorized_code();
        let denied = Code::PermissionDenied;
        let needs = rpc.needs();
        let cases = [
            ("no token", &anonymous, Code::Unauthenticated),
            ("wrong token", &wrong, Code::Unauthenticated),
            (
                "admin",
                &admin,
                if needs == Needs::Emitter {
                    denied
                } else {
                    allowed
                },
            ),
            (
                "emitter",
                &emitter,
                if needs == Needs::Emitter {
                    allowed
                } else {
                    denied
                },
            ),
            (
                "reader",
                &reader,
                if needs == Needs::Reader {
                    allowed
                } else {
                    denied
                },
            ),
            // Emits name accounts.create, outside the limited emitter's clients.*.
            ("limited emitter", &limited, denied),
        ];
        for (who, client, expected) in cases {
            let got = call(client, rpc, "accounts.create").await;
            if got != expected {
                failures.push(format!(
                    "{rpc:?} as {who}: expected {expected:?}, got {got:?}"
                ));
            }
        }
        if needs == Needs::Emitter {
            let got = call(&limited, rpc, "clients.create").await;
            if got != Code::Ok {
                failures.push(format!(
                    "{rpc:?} of clients.create as limited emitter: got {got:?}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A refusal says what is wrong without repeating the token, and a batch is checked
/// event by event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_clear_and_never_echo_the_token() {
    let db = TestDatabase::new().await;
    let (server, _tokens) = secured_server(&db).await;
    let wrong = "pvt_wrong_secret_value";
    let error = with_token(&server, wrong)
        .list_handlers(proto::ListHandlersRequest::default())
        .await
        .unwrap_err();
    let status = error.status().expect("a status");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(
        status.message().contains("invalid bearer token"),
        "{status:?}"
    );
    assert!(!format!("{status:?}").contains(wrong), "{status:?}");

    let error = server
        .client
        .list_handlers(proto::ListHandlersRequest::default())
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("authorization: Bearer"),
        "{error}"
    );

    let error = with_token(&server, READER)
        .purge(proto::PurgeRequest::default())
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(Code::PermissionDenied));
    assert!(
        error.to_string().contains("needs the admin role") && !error.to_string().contains(READER),
        "{error}"
    );

    let error = with_token(&server, LIMITED)
        .emit_batch(proto::EmitBatchRequest {
            events: vec![
                emit_request("clients.create"),
                emit_request("accounts.delete"),
            ],
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(Code::PermissionDenied));
    assert!(
        error.to_string().contains("events[1].event") && error.to_string().contains("clients.*"),
        "{error}"
    );
}

/// Health and reflection stay open: load balancers and grpcurl carry no token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_need_no_token() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let db = TestDatabase::new().await;
    let (server, _tokens) = secured_server(&db).await;
    assert_eq!(
        health_status(&server.url, "provisioning.v1.EventService").await,
        Some(tonic_health::pb::health_check_response::ServingStatus::Serving)
    );
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
        .expect("reflection without a token")
        .into_inner();
    assert!(replies.message().await.expect("a reply").is_some());
}

/// Non-admin readers see neither secrets nor header values; admins see header values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_see_handlers_with_header_values_masked() {
    let db = TestDatabase::new().await;
    let (server, _tokens) = secured_server(&db).await;
    let admin = with_token(&server, ADMIN);
    let created = admin
        .create_handler(proto::CreateHandlerRequest {
            name: "crm".into(),
            event: "clients.create".into(),
            phase: proto::Phase::After.into(),
            target: Some(proto::create_handler_request::Target::Http(
                proto::HttpTarget {
                    url: "http://127.0.0.1:9/hook".into(),
                    headers: [("authorization".to_owned(), "Bearer crm-secret".to_owned())].into(),
                    secret: String::new(),
                },
            )),
            ..Default::default()
        })
        .await
        .expect("create as admin");
    let http = |handler: proto::Handler| match handler.target {
        Some(proto::handler::Target::Http(http)) => http,
        other => panic!("not HTTP: {other:?}"),
    };
    let full_secret = http(created.clone()).secret;
    let request = proto::GetHandlerRequest { id: created.id };
    let as_reader = http(
        with_token(&server, READER)
            .get_handler(request)
            .await
            .unwrap(),
    );
    assert_eq!(as_reader.headers["authorization"], "…");
    assert_ne!(as_reader.secret, full_secret);
    let listed = with_token(&server, READER)
        .list_handlers(proto::ListHandlersRequest::default())
        .await
        .unwrap();
    let text = format!("{listed:?}");
    assert!(
        !text.contains("crm-secret") && !text.contains(&full_secret),
        "{text}"
    );
    let as_admin = http(admin.get_handler(request).await.unwrap());
    assert_eq!(as_admin.headers["authorization"], "Bearer crm-secret");
    assert_ne!(as_admin.secret, full_secret);
}

/// Rewriting the tokens file takes effect without a restart, within a few seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewritten_tokens_file_is_reloaded() {
    let db = TestDatabase::new().await;
    let (server, tokens) = secured_server(&db).await;
    let fresh = "pvt_added_after_start";
    let client = with_token(&server, fresh);
    let error = client
        .list_event_types(proto::ListEventTypesRequest {})
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(Code::Unauthenticated));

    // A broken file keeps the previous identities.
    std::fs::write(&tokens.path, "[[token]]\nname = ").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    with_token(&server, READER)
        .list_event_types(proto::ListEventTypesRequest {})
        .await
        .expect("the previous identities stay after a failed reload");

    // The new file: the fresh token in, the old reader out.
    std::fs::write(&tokens.path, entry("late", r#"["reader"]"#, "[]", fresh)).unwrap();
    eventually(Duration::from_secs(10), "the fresh token to work", || {
        let client = client.clone();
        async move {
            client
                .list_event_types(proto::ListEventTypesRequest {})
                .await
                .ok()
        }
    })
    .await;
    let error = with_token(&server, READER)
        .list_event_types(proto::ListEventTypesRequest {})
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(Code::Unauthenticated));
}

/// `provisiond token new | tail -n +2` is a tokens file whose entry accepts the token
/// printed on the first line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_new_prints_a_token_and_its_entry() {
    let mut command = std::process::Command::new(bin_path("provisiond-under-test"));
    command.args([
        "token",
        "new",
        "--name",
        "billing",
        "--role",
        "emitter",
        "--role",
        "reader",
        "--events",
        "clients.*,accounts.create",
    ]);
    let output = run_command(command).await;
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let (token, entry) = stdout.split_once('\n').expect("two parts");
    assert!(
        token.starts_with("pvt_") && !entry.contains(token),
        "{stdout}"
    );

    let db = TestDatabase::new().await;
    let dir = TempDir::new("provisiond-tokens");
    let path = dir.path().join("tokens.toml");
    std::fs::write(&path, entry).unwrap();
    let server = spawn_server_with(&db, |config| config.tokens_file = Some(path)).await;
    let client = with_token(&server, token);
    client
        .emit(emit_request("accounts.create"))
        .await
        .expect("emitter role and pattern");
    client
        .list_event_types(proto::ListEventTypesRequest {})
        .await
        .expect("reader role");
    let error = client
        .emit(emit_request("accounts.delete"))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(Code::PermissionDenied));

    let mut command = std::process::Command::new(bin_path("provisiond-under-test"));
    command.args(["token", "new", "--name", "x", "--role", "root"]);
    let output = run_command(command).await;
    assert!(!output.status.success());
}

/// Without a tokens file the server refuses a non-loopback address unless told to
/// accept the risk, and says which flag that is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn development_mode_refuses_a_non_loopback_address() {
    let db = TestDatabase::new().await;
    let scripts = TempDir::new("provisiond-scripts");
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let mut config = provisioning_tests::test_config(&db, scripts.path());
    config.tokens_file = None;
    let shutdown = provisioning_server::shutdown::Shutdown::default();
    let error = provisioning_server::run(config.clone(), listener, shutdown)
        .await
        .expect_err("development mode on 0.0.0.0");
    let message = error.to_string();
    assert!(
        message.contains("--insecure-no-auth") && message.contains("0.0.0.0"),
        "{message}"
    );

    // An unreadable or invalid tokens file is a start-up error too.
    config.tokens_file = Some(scripts.path().join("missing.toml"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let error = provisioning_server::run(config, listener, Default::default())
        .await
        .expect_err("a missing tokens file");
    assert!(error.to_string().contains("missing.toml"), "{error}");

    // The real binary: exit code 1 and the message on stderr.
    let mut command = std::process::Command::new(bin_path("provisiond-under-test"));
    command
        .env_remove("PROVISIOND_TOKENS_FILE")
        .env("DATABASE_URL", &db.url)
        .args(["--listen", "0.0.0.0:0"]);
    let output = run_command(command).await;
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("--insecure-no-auth"));
}

/// provctl sends --token (or PROVISIONING_TOKEN); without one it fails saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provctl_uses_its_token() {
    let db = TestDatabase::new().await;
    let (server, _tokens) = secured_server(&db).await;
    let mut command = provctl(&server.url);
    command.args(["event-types", "list"]);
    let output = run_command(command).await;
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("Unauthenticated") && stderr.contains("--token"),
        "{stderr}"
    );

    let mut command = provctl(&server.url);
    command.args(["--token", READER, "event-types", "list"]);
    let output = run_command(command).await;
    assert!(output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("clients.create"));

    let mut command = provctl(&server.url);
    command
        .env("PROVISIONING_TOKEN", READER)
        .args(["handlers", "delete", "1"]);
    let output = run_command(command).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("PermissionDenied"));
}

/// Every handler change is recorded with the caller's name, and the snapshots hold
/// neither the signing secret nor header values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_changes_are_audited_with_the_callers_name() {
    let db = TestDatabase::new().await;
    let (server, _tokens) = secured_server(&db).await;
    let admin = with_token(&server, ADMIN);
    let created = admin
        .create_handler(proto::CreateHandlerRequest {
            name: "crm".into(),
            event: "clients.create".into(),
            phase: proto::Phase::After.into(),
            target: Some(proto::create_handler_request::Target::Http(
                proto::HttpTarget {
                    url: "http://127.0.0.1:9/hook".into(),
                    headers: [("authorization".to_owned(), "Bearer crm-secret".to_owned())].into(),
                    secret: String::new(),
                },
            )),
            ..Default::default()
        })
        .await
        .unwrap();
    let id = created.id;
    let mut secrets = vec!["crm-secret".to_owned()];
    if let Some(proto::handler::Target::Http(http)) = &created.target {
        secrets.push(http.secret.clone());
    }
    admin
        .update_handler(proto::UpdateHandlerRequest {
            handler: Some(proto::Handler {
                id,
                name: "crm v2".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["name".into()],
            }),
        })
        .await
        .unwrap();
    admin
        .set_handler_status(proto::SetHandlerStatusRequest {
            id,
            status: proto::HandlerStatus::Disabled.into(),
        })
        .await
        .unwrap();
    let rotated = admin
        .rotate_secret(proto::RotateSecretRequest { id })
        .await
        .unwrap();
    if let Some(proto::handler::Target::Http(http)) = &rotated.target {
        secrets.push(http.secret.clone());
    }
    admin
        .delete_handler(proto::DeleteHandlerRequest { id })
        .await
        .unwrap();
    admin
        .create_event_type(proto::CreateEventTypeRequest {
            name: "crm.sync".into(),
            description: "synced".into(),
            schema_json: String::new(),
        })
        .await
        .unwrap();

    let reader = with_token(&server, READER);
    let trail = reader
        .list_audit(proto::ListAuditRequest {
            handler_id: id,
            ..Default::default()
        })
        .await
        .unwrap();
    let actions: Vec<&str> = trail.entries.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        ["Delete", "RotateSecret", "SetStatus", "Update", "Create"]
    );
    for entry in &trail.entries {
        assert_eq!((entry.actor.as_str(), entry.handler_id), ("ops", id));
        for secret in &secrets {
            assert!(
                !entry.before_json.contains(secret.as_str())
                    && !entry.after_json.contains(secret.as_str()),
                "{entry:?}"
            );
        }
    }
    let update = &trail.entries[3];
    assert!(update.before_json.contains("\"crm\"") && update.after_json.contains("crm v2"));
    assert!(
        update.after_json.contains("authorization"),
        "header names stay"
    );
    assert!(trail.entries[0].after_json.is_empty());
    assert!(trail.entries[4].before_json.is_empty());

    let all = reader
        .list_audit(proto::ListAuditRequest {
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.entries[0].action, "CreateEventType");
    assert_eq!(all.entries[0].handler_id, 0);
    assert!(!all.next_page_token.is_empty());

    // provctl audit, with its token.
    let mut command = provctl(&server.url);
    command.args(["--token", READER, "audit", "--handler", &id.to_string()]);
    let output = run_command(command).await;
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("ops") && stdout.contains("RotateSecret") && stdout.contains("name"),
        "{stdout}"
    );
}

/// The execution log says who emitted each event, for AFTER and BEFORE runs, and
/// development mode records `anonymous`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_rows_show_who_emitted_the_event() {
    let db = TestDatabase::new().await;
    let (server, _tokens) = secured_server(&db).await;
    let admin = with_token(&server, ADMIN);
    for phase in [proto::Phase::After, proto::Phase::Before] {
        admin
            .create_handler(proto::CreateHandlerRequest {
                name: format!("{phase:?}"),
                event: "clients.create".into(),
                phase: phase.into(),
                target: Some(proto::create_handler_request::Target::Script(
                    proto::ScriptTarget {
                        path: "echo.sh".into(),
                    },
                )),
                ..Default::default()
            })
            .await
            .expect("a script handler");
    }
    let emitter = with_token(&server, LIMITED);
    emitter
        .emit(emit_request("clients.create"))
        .await
        .expect("AFTER");
    let mut before = emit_request("clients.create");
    before.phase = proto::Phase::Before.into();
    emitter.emit(before).await.expect("BEFORE");

    let reader = with_token(&server, READER);
    let rows = eventually(Duration::from_secs(20), "both runs logged", || {
        let reader = reader.clone();
        async move {
            let mut stream = reader
                .search_logs(proto::SearchLogsRequest::default())
                .await
                .ok()?;
            let mut rows = Vec::new();
            while let Some(Ok(entry)) = stream.next().await {
                rows.extend(entry.log);
            }
            (rows.len() >= 2).then_some(rows)
        }
    })
    .await;
    for row in rows {
        let log = reader
            .get_log(proto::GetLogRequest { id: row.id })
            .await
            .unwrap();
        assert_eq!(log.emitted_by, "crm", "{log:?}");
    }
}

/// `--insecure-no-auth` lets development mode listen on every interface.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_no_auth_allows_a_non_loopback_address() {
    let db = TestDatabase::new().await;
    let scripts = TempDir::new("provisiond-scripts");
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut config = provisioning_tests::test_config(&db, scripts.path());
    config.insecure_no_auth = true;
    let shutdown = provisioning_server::shutdown::Shutdown::default();
    let token = shutdown.token.clone();
    let task = tokio::spawn(provisioning_server::run(config, listener, shutdown));
    let url = format!("http://127.0.0.1:{port}");
    eventually(Duration::from_secs(30), "the server to serve", || {
        let url = url.clone();
        async move { provisioning_tests::is_serving(&url).await.then_some(()) }
    })
    .await;
    token.cancel();
    task.await.expect("join").expect("a clean stop");
}

/// SIGHUP reloads the tokens file even when its metadata looks unchanged (the real
/// binary; the file is rewritten in place with the same size and modification time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_tokens_file() {
    use std::os::unix::ffi::OsStrExt;

    let db = TestDatabase::new().await;
    let scripts = TempDir::new("provisiond-scripts");
    let dir = TempDir::new("provisiond-tokens");
    let path = dir.path().join("tokens.toml");
    // Two tokens of the same length, so the file keeps its size.
    let (first, second) = ("pvt_sighup_token_aaaa", "pvt_sighup_token_bbbb");
    std::fs::write(&path, entry("first", r#"["reader"]"#, "[]", first)).unwrap();
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    let path_arg = path.to_str().unwrap().to_owned();
    let mut server = provisioning_tests::spawn_server_process(
        &db,
        scripts.path(),
        &["--tokens-file", &path_arg],
    )
    .await;
    let list = |token: &'static str| {
        let client = server.client.clone().with_token(Some(token)).unwrap();
        async move {
            client
                .list_event_types(proto::ListEventTypesRequest {})
                .await
                .map(drop)
                .map_err(|e| e.code())
        }
    };
    list(first).await.expect("the first token");

    std::fs::write(&path, entry("first", r#"["reader"]"#, "[]", second)).unwrap();
    // Put the modification time back: only SIGHUP can reveal the change now.
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let since = mtime.duration_since(std::time::UNIX_EPOCH).unwrap();
    let times = [libc::timespec {
        tv_sec: since.as_secs() as libc::time_t,
        tv_nsec: since.subsec_nanos() as _,
    }; 2];
    // SAFETY: a valid NUL-terminated path and two timespecs.
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c_path.as_ptr(), times.as_ptr(), 0) };
    assert_eq!(rc, 0, "utimensat");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(list(second).await, Err(Some(Code::Unauthenticated)));

    let pid = server.pid().expect("running");
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGHUP) };
    eventually(Duration::from_secs(10), "the reload on SIGHUP", || async {
        list(second).await.ok()
    })
    .await;
    assert_eq!(list(first).await, Err(Some(Code::Unauthenticated)));
    assert!(
        server.log().contains("tokens file reloaded"),
        "{}",
        server.log()
    );
    server.stop().await;
}
