//! Event-type data schemas (issue #14): set with CreateEventType / UpdateEventType,
//! listed by ListEventTypes, enforced on Emit (BEFORE and AFTER), EmitBatch and
//! EmitStream with the JSON pointer of each problem; invalid schemas and remote `$ref`s
//! refused; a change through one replica applies at once on another; only admins set
//! schemas; `provctl event-types show/create/update`.

use futures_util::StreamExt;
use provisioning_client::{proto, Client, ClientError};
use provisioning_tests::{spawn_server, spawn_server_process, TempDir, TestDatabase, TestServer};
use tonic::Code;

use crate::auth::{secured_server, with_token, ADMIN, READER};
use crate::cli::{provctl_fails, provctl_ok};
use crate::dispatch::{count, emit_after, emit_before, event_request, invalid_argument};

/// A schema for `clients.create`: an email (format checked) and an optional age.
const CLIENT_SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "required": ["email"],
  "properties": {
    "email": {"type": "string", "format": "email"},
    "age": {"type": "integer", "minimum": 0}
  }
}"#;

const GOOD: &str = r#"{"email": "ann@example.com", "age": 42}"#;
const BAD_EMAIL: &str = r#"{"email": "x"}"#;

fn schema_update(name: &str, schema: &str) -> proto::UpdateEventTypeRequest {
    proto::UpdateEventTypeRequest {
        event_type: Some(proto::EventType {
            name: name.to_owned(),
            schema_json: schema.to_owned(),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["schema_json".into()],
        }),
    }
}

/// Sets (or, with "", removes) the schema of `name`.
async fn set_schema(client: &Client, name: &str, schema: &str) -> proto::EventType {
    client
        .update_event_type(schema_update(name, schema))
        .await
        .unwrap_or_else(|e| panic!("setting the schema of {name}: {e}"))
}

async fn event_type(client: &Client, name: &str) -> proto::EventType {
    client
        .list_event_types(proto::ListEventTypesRequest {})
        .await
        .expect("list event types")
        .event_types
        .into_iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("{name} not listed"))
}

#[track_caller]
fn assert_code<T: std::fmt::Debug>(result: Result<T, ClientError>, code: Code) -> String {
    match result {
        Err(error) if error.code() == Some(code) => error
            .status()
            .map(|s| s.message().to_owned())
            .unwrap_or_default(),
        other => panic!("expected {code:?}, got {other:?}"),
    }
}

/// A schema set on an event type is listed as written, and every Emit of the type is
/// checked against it: data that fits passes, data that does not gets INVALID_ARGUMENT
/// naming the JSON pointer of each problem, for AFTER and BEFORE alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_is_listed_and_checked_by_emit_with_the_path_of_each_problem() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let created = server
        .client
        .create_event_type(proto::CreateEventTypeRequest {
            name: "invoices.paid".into(),
            description: "An invoice was paid".into(),
            schema_json: CLIENT_SCHEMA.into(),
        })
        .await
        .expect("create with a schema");
    assert_eq!(created.schema_json, CLIENT_SCHEMA, "kept as written");
    assert_eq!(
        event_type(&server.client, "invoices.paid")
            .await
            .schema_json,
        CLIENT_SCHEMA
    );
    assert_eq!(
        event_type(&server.client, "clients.create")
            .await
            .schema_json,
        "",
        "no schema by default"
    );

    assert!(
        emit_after(&server.client, "invoices.paid", GOOD)
            .await
            .event_id
            > 0
    );
    let message = invalid_argument(
        server
            .client
            .emit(event_request(
                "invoices.paid",
                proto::Phase::After,
                BAD_EMAIL,
            ))
            .await,
    );
    assert_eq!(message, r#"data_json: /email: "x" is not a "email""#);
    let message = invalid_argument(
        server
            .client
            .emit(event_request(
                "invoices.paid",
                proto::Phase::After,
                r#"{"age": -1, "extra": [1]}"#,
            ))
            .await,
    );
    assert!(
        message.starts_with("data_json: ")
            && message.contains(r#"(root): "email" is a required property"#)
            && message.contains("/age: -1 is less than the minimum of 0"),
        "{message}"
    );

    // BEFORE: checked before any handler runs.
    let reply = emit_before(&server.client, "invoices.paid", GOOD).await;
    assert_eq!(reply.decision, proto::Decision::Allowed as i32);
    let message = invalid_argument(
        server
            .client
            .emit(event_request(
                "invoices.paid",
                proto::Phase::Before,
                r#"{"email": "ann@example.com", "age": "old"}"#,
            ))
            .await,
    );
    assert_eq!(
        message,
        r#"data_json: /age: "old" is not of type "integer""#
    );

    // Nothing refused was stored; events of other types still take any object.
    assert_eq!(count(&db, "SELECT count(*) AS n FROM events"), 1);
    emit_after(&server.client, "clients.create", r#"{"anything": [1, 2]}"#).await;
}

/// EmitBatch is all or nothing: one event against the schema refuses the batch, naming
/// its index and the path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emit_batch_with_one_violation_is_refused_whole_naming_the_index() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    set_schema(&server.client, "clients.create", CLIENT_SCHEMA).await;
    let events = [GOOD, BAD_EMAIL, GOOD]
        .iter()
        .map(|data| event_request("clients.create", proto::Phase::After, data))
        .collect();
    let message = invalid_argument(
        server
            .client
            .emit_batch(proto::EmitBatchRequest { events })
            .await,
    );
    assert_eq!(
        message,
        r#"events[1].data_json: /email: "x" is not a "email""#
    );
    assert_eq!(count(&db, "SELECT count(*) AS n FROM events"), 0);

    let events = [GOOD, GOOD]
        .iter()
        .map(|data| event_request("clients.create", proto::Phase::After, data))
        .collect();
    let reply = server
        .client
        .emit_batch(proto::EmitBatchRequest { events })
        .await
        .expect("a batch that fits");
    assert_eq!(reply.acks.len(), 2);
}

/// On EmitStream a violation is that event's rejected ack; the stream goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emit_stream_rejects_only_the_event_against_the_schema() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    set_schema(&server.client, "clients.create", CLIENT_SCHEMA).await;
    let requests: Vec<_> = [GOOD, BAD_EMAIL, GOOD]
        .iter()
        .zip(1u64..)
        .map(|(data, sequence)| proto::EmitStreamRequest {
            sequence,
            event: Some(event_request("clients.create", proto::Phase::After, data)),
        })
        .collect();
    let acks: Vec<proto::EmitAck> = server
        .client
        .emit_stream(tokio_stream::iter(requests))
        .await
        .expect("stream")
        .map(|ack| ack.expect("ack"))
        .collect()
        .await;
    let summary: Vec<(u64, i32)> = acks.iter().map(|a| (a.sequence, a.error_code)).collect();
    assert_eq!(
        summary,
        [(1, 0), (2, Code::InvalidArgument as i32), (3, 0)],
        "{acks:?}"
    );
    assert_eq!(
        acks[1].error_message,
        r#"event.data_json: /email: "x" is not a "email""#
    );
    assert_eq!(count(&db, "SELECT count(*) AS n FROM events"), 2);
}

/// A schema that is not a valid draft 2020-12 schema is refused with what is wrong, and
/// the event type keeps the schema it had; so is a remote `$ref` (nothing is fetched).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_schemas_and_remote_refs_are_refused_naming_the_problem() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    set_schema(&server.client, "clients.create", CLIENT_SCHEMA).await;
    for (schema, mention) in [
        ("{", "schema_json: not valid JSON"),
        ("[]", "schema_json: must be a JSON object"),
        (
            r#"{"type": "strnig"}"#,
            "schema_json: not a valid draft 2020-12 schema: /type",
        ),
        (r#"{"required": "email"}"#, "/required"),
        (
            r#"{"$schema": "http://json-schema.org/draft-07/schema#"}"#,
            "only draft 2020-12",
        ),
        (
            r#"{"$ref": "https://schemas.example.com/client.json"}"#,
            "remote $ref",
        ),
        (r#"{"$ref": "file:///etc/passwd"}"#, "remote $ref"),
        (
            r##"{"$id": "https://example.com/root.json", "properties": {"a": {"$ref": "other.json#/x"}}}"##,
            "remote $ref",
        ),
    ] {
        let message = assert_code(
            server
                .client
                .update_event_type(schema_update("clients.create", schema))
                .await,
            Code::InvalidArgument,
        );
        assert!(message.contains(mention), "{schema}: {message}");
        let message = assert_code(
            server
                .client
                .create_event_type(proto::CreateEventTypeRequest {
                    name: "invoices.paid".into(),
                    description: String::new(),
                    schema_json: schema.into(),
                })
                .await,
            Code::InvalidArgument,
        );
        assert!(message.contains(mention), "{schema}: {message}");
    }
    assert_eq!(
        event_type(&server.client, "clients.create")
            .await
            .schema_json,
        CLIENT_SCHEMA,
        "a refused update changes nothing"
    );
    // Local references resolve.
    set_schema(
        &server.client,
        "clients.create",
        r##"{"$defs": {"id": {"type": "integer"}}, "properties": {"id": {"$ref": "#/$defs/id"}}}"##,
    )
    .await;
    let message = invalid_argument(
        server
            .client
            .emit(event_request(
                "clients.create",
                proto::Phase::After,
                r#"{"id": "15"}"#,
            ))
            .await,
    );
    assert_eq!(message, r#"data_json: /id: "15" is not of type "integer""#);

    // The request itself.
    assert_code(
        server
            .client
            .update_event_type(schema_update("nothing.here", CLIENT_SCHEMA))
            .await,
        Code::NotFound,
    );
    let mut no_mask = schema_update("clients.create", CLIENT_SCHEMA);
    no_mask.update_mask = None;
    let message = assert_code(
        server.client.update_event_type(no_mask).await,
        Code::InvalidArgument,
    );
    assert!(message.starts_with("update_mask"), "{message}");
    let mut builtin = schema_update("clients.create", CLIENT_SCHEMA);
    builtin.update_mask = Some(prost_types::FieldMask {
        paths: vec!["builtin".into()],
    });
    assert_code(
        server.client.update_event_type(builtin).await,
        Code::InvalidArgument,
    );
}

/// Removing a schema (an empty `schema_json`) makes any JSON object acceptable again;
/// the description changes on its own path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_schema_accepts_any_object_again() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    set_schema(&server.client, "clients.create", CLIENT_SCHEMA).await;
    invalid_argument(
        server
            .client
            .emit(event_request("clients.create", proto::Phase::After, "{}"))
            .await,
    );
    let updated = server
        .client
        .update_event_type(proto::UpdateEventTypeRequest {
            event_type: Some(proto::EventType {
                name: "clients.create".into(),
                description: "A client was created in billing".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["description".into()],
            }),
        })
        .await
        .expect("description");
    assert_eq!(
        (
            updated.description.as_str(),
            updated.schema_json.as_str(),
            updated.builtin
        ),
        ("A client was created in billing", CLIENT_SCHEMA, true)
    );
    let removed = set_schema(&server.client, "clients.create", "").await;
    assert_eq!(removed.schema_json, "");
    emit_after(&server.client, "clients.create", "{}").await;
}

/// Replicas cache compiled schemas; a change made through one replica applies to the
/// very next event emitted through another (AFTER, BEFORE and EmitBatch), with no wait:
/// the statement that stores events checks the schema version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_changes_through_one_replica_apply_at_once_on_another() {
    let db = TestDatabase::new().await;
    let scripts = TempDir::new("provisioning-scripts");
    let a = spawn_server_process(&db, scripts.path(), &[]).await;
    let b = spawn_server_process(&db, scripts.path(), &[]).await;
    let after = |data: &str| event_request("clients.create", proto::Phase::After, data);
    let before = |data: &str| event_request("clients.create", proto::Phase::Before, data);

    // B knows clients.create without a schema (cached by these emits).
    b.client
        .emit(after(BAD_EMAIL))
        .await
        .expect("no schema yet");
    b.client
        .emit(before(BAD_EMAIL))
        .await
        .expect("no schema yet");

    for round in 0..3 {
        set_schema(&a.client, "clients.create", CLIENT_SCHEMA).await;
        let message = invalid_argument(b.client.emit(after(BAD_EMAIL)).await);
        assert!(message.contains("/email"), "round {round}: {message}");
        let message = invalid_argument(b.client.emit(before(BAD_EMAIL)).await);
        assert!(message.contains("/email"), "round {round}: {message}");
        b.client.emit(after(GOOD)).await.expect("fits");

        set_schema(&a.client, "clients.create", "").await;
        b.client
            .emit(after(BAD_EMAIL))
            .await
            .expect("schema removed");
        b.client
            .emit(before(BAD_EMAIL))
            .await
            .expect("schema removed");
        let reply = b
            .client
            .emit_batch(proto::EmitBatchRequest {
                events: vec![after(BAD_EMAIL), after("{}")],
            })
            .await
            .expect("schema removed");
        assert_eq!(reply.acks.len(), 2);
    }

    // A stricter schema set through A, then a batch through B validated against B's
    // cache as it was a moment before.
    set_schema(&a.client, "clients.create", CLIENT_SCHEMA).await;
    b.client.emit(after(GOOD)).await.expect("fits");
    set_schema(
        &a.client,
        "clients.create",
        r#"{"required": ["email", "phone"]}"#,
    )
    .await;
    let message = invalid_argument(
        b.client
            .emit_batch(proto::EmitBatchRequest {
                events: vec![after(r#"{"email": "a@b.c", "phone": "1"}"#), after(GOOD)],
            })
            .await,
    );
    assert_eq!(
        message,
        r#"events[1].data_json: (root): "phone" is a required property"#
    );
}

/// Only admins set schemas; readers list them. Schema changes are in the audit trail,
/// with the schema before and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admins_set_schemas_and_changes_are_audited() {
    let db = TestDatabase::new().await;
    let (server, _tokens) = secured_server(&db).await;
    let reader = with_token(&server, READER);
    let admin = with_token(&server, ADMIN);

    assert_code(
        reader
            .update_event_type(schema_update("clients.create", CLIENT_SCHEMA))
            .await,
        Code::PermissionDenied,
    );
    assert_code(
        reader
            .create_event_type(proto::CreateEventTypeRequest {
                name: "invoices.paid".into(),
                description: String::new(),
                schema_json: CLIENT_SCHEMA.into(),
            })
            .await,
        Code::PermissionDenied,
    );
    assert_eq!(event_type(&reader, "clients.create").await.schema_json, "");

    set_schema(&admin, "clients.create", CLIENT_SCHEMA).await;
    assert_eq!(
        event_type(&reader, "clients.create").await.schema_json,
        CLIENT_SCHEMA,
        "readers see schemas"
    );
    let trail = reader
        .list_audit(proto::ListAuditRequest::default())
        .await
        .expect("audit");
    let entry = &trail.entries[0];
    assert_eq!(
        (
            entry.action.as_str(),
            entry.actor.as_str(),
            entry.handler_id
        ),
        ("UpdateEventType", "ops", 0)
    );
    let after: serde_json::Value = serde_json::from_str(&entry.after_json).expect("JSON");
    assert_eq!(after["event_type"]["schema"]["required"][0], "email");
    let before: serde_json::Value = serde_json::from_str(&entry.before_json).expect("JSON");
    assert_eq!(before["event_type"]["schema"], serde_json::Value::Null);
}

/// `provctl event-types create --schema FILE`, `show NAME` (the schema indented, or as
/// JSON) and `update --schema FILE / --no-schema`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provctl_sets_and_shows_event_schemas() {
    let db = TestDatabase::new().await;
    let server: TestServer = spawn_server(&db).await;
    let dir = TempDir::new("provctl-schema");
    let file = dir.path().join("client.json");
    std::fs::write(&file, CLIENT_SCHEMA).expect("schema file");
    let file = file.to_str().expect("UTF-8 path");

    provctl_ok(
        &server.url,
        &[
            "event-types",
            "create",
            "invoices.paid",
            "--description",
            "An invoice was paid",
            "--schema",
            file,
        ],
    )
    .await;
    let shown = provctl_ok(&server.url, &["event-types", "show", "invoices.paid"]).await;
    assert!(shown.starts_with("name:        invoices.paid\n"), "{shown}");
    assert!(
        shown.contains("schema:\n{\n  \"$schema\": \"https://json-schema.org/draft/2020-12/schema\",\n  \"type\": \"object\",\n  \"required\": [\n    \"email\"\n  ],"),
        "{shown}"
    );
    let json = provctl_ok(
        &server.url,
        &["--output", "json", "event-types", "show", "invoices.paid"],
    )
    .await;
    let json: serde_json::Value = serde_json::from_str(json.trim()).expect("one JSON line");
    assert_eq!(json["schema"]["properties"]["email"]["format"], "email");

    provctl_ok(
        &server.url,
        &["event-types", "update", "clients.create", "--schema", file],
    )
    .await;
    assert_eq!(
        event_type(&server.client, "clients.create")
            .await
            .schema_json,
        CLIENT_SCHEMA
    );
    let listed = provctl_ok(&server.url, &["event-types", "list"]).await;
    let row: Vec<&str> = listed
        .lines()
        .find(|l| l.starts_with("clients.create "))
        .unwrap_or_else(|| panic!("clients.create not listed: {listed}"))
        .split_whitespace()
        .collect();
    assert_eq!(row[..3], ["clients.create", "yes", "yes"], "{listed}");
    provctl_ok(
        &server.url,
        &["event-types", "update", "clients.create", "--no-schema"],
    )
    .await;
    let shown = provctl_ok(&server.url, &["event-types", "show", "clients.create"]).await;
    assert!(
        shown.ends_with("schema: none (any JSON object is accepted)\n"),
        "{shown}"
    );

    std::fs::write(dir.path().join("bad.json"), r#"{"type": 7}"#).expect("bad file");
    let bad = dir.path().join("bad.json");
    let error = provctl_fails(
        &server.url,
        &[
            "event-types",
            "update",
            "clients.create",
            "--schema",
            bad.to_str().expect("UTF-8 path"),
        ],
    )
    .await;
    assert!(
        error.contains("InvalidArgument") && error.contains("/type"),
        "{error}"
    );
    let missing = provctl_fails(&server.url, &["event-types", "show", "nothing.here"]).await;
    assert!(missing.contains("nothing.here"), "{missing}");
}
