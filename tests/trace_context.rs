//! W3C trace context across the hop: a `traceparent` sent with Emit reaches every
//! handler run as a child of the emitter's span (same trace id, a new parent id per
//! run): BEFORE and AFTER HTTP handlers as the `traceparent` header, scripts as
//! `TRACEPARENT`, an AFTER retry claimed later from the table too. A missing or invalid
//! header sends nothing and fails nothing.

use provisioning_client::proto;
use provisioning_client::proto::event_service_client::EventServiceClient;
use provisioning_tests::receiver::{Receiver, Recorded, Reply};
use provisioning_tests::{spawn_server, TestDatabase};
use tonic::transport::Channel;

use crate::dispatch::{create, event_request, http_handler, script_handler, wait_for_logs, WAIT};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const EMITTER_SPAN: &str = "00f067aa0ba902b7";

/// Emits through a raw stub with `traceparent` metadata, as any instrumented client does.
pub(crate) async fn emit_traced(
    stub: &mut EventServiceClient<Channel>,
    request: proto::EmitRequest,
    traceparent: &str,
) -> proto::EmitResponse {
    let mut request = tonic::Request::new(request);
    request
        .metadata_mut()
        .insert("traceparent", traceparent.parse().expect("ASCII"));
    stub.emit(request).await.expect("emit").into_inner()
}

/// `(trace id, parent id)` of a request's `traceparent`, checked for shape.
fn trace_of(request: &Recorded) -> (String, String) {
    let header = request.header("traceparent").expect("a traceparent header");
    let fields: Vec<&str> = header.split('-').collect();
    assert_eq!(fields.len(), 4, "{header}");
    assert_eq!((fields[0], fields[3]), ("00", "01"), "{header}");
    assert_eq!((fields[1].len(), fields[2].len()), (32, 16), "{header}");
    (fields[1].to_owned(), fields[2].to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_emitters_trace_reaches_before_after_and_script_handlers() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let receiver = Receiver::start().await;
    receiver.route("/before", vec![Reply::ok()]);
    // Fails once: the retry is claimed from the table, its trace read from the event.
    receiver.route("/after", vec![Reply::status(500), Reply::ok()]);
    create(
        &server.client,
        http_handler(
            "before",
            "clients.update",
            proto::Phase::Before,
            &receiver.url("/before"),
        ),
    )
    .await;
    create(
        &server.client,
        http_handler(
            "after",
            "clients.create",
            proto::Phase::After,
            &receiver.url("/after"),
        ),
    )
    .await;
    create(
        &server.client,
        script_handler("env", "clients.create", proto::Phase::After, "env.sh"),
    )
    .await;
    let mut stub = EventServiceClient::new(
        Channel::from_shared(server.url.clone())
            .expect("url")
            .connect_lazy(),
    );
    let traceparent = format!("00-{TRACE_ID}-{EMITTER_SPAN}-01");

    emit_traced(
        &mut stub,
        event_request("clients.update", proto::Phase::Before, r#"{"n": 1}"#),
        &traceparent,
    )
    .await;
    emit_traced(
        &mut stub,
        event_request("clients.create", proto::Phase::After, r#"{"n": 2}"#),
        &traceparent,
    )
    .await;

    let before = receiver.wait_for("/before", 1, WAIT).await;
    let after = receiver.wait_for("/after", 2, WAIT).await;
    let mut parents = std::collections::HashSet::new();
    for request in before.iter().chain(&after) {
        let (trace_id, parent) = trace_of(request);
        assert_eq!(trace_id, TRACE_ID, "the emitter's trace");
        assert_ne!(parent, EMITTER_SPAN, "a child span, not the emitter's own");
        parents.insert(parent);
    }
    assert_eq!(
        parents.len(),
        3,
        "a new parent id per run, the retry included"
    );

    let logs = wait_for_logs(&db, "the script run", |rows| {
        rows.iter().any(|r| r.handler_name == "env")
    })
    .await;
    let script = logs
        .iter()
        .find(|r| r.handler_name == "env")
        .expect("the script's run");
    assert!(
        script
            .response
            .contains(&format!("TRACEPARENT=00-{TRACE_ID}-")),
        "{}",
        script.response
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_valid_traceparent_nothing_is_sent_and_nothing_fails() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let receiver = Receiver::start().await;
    create(
        &server.client,
        http_handler(
            "after",
            "clients.create",
            proto::Phase::After,
            &receiver.url("/after"),
        ),
    )
    .await;
    let mut stub = EventServiceClient::new(
        Channel::from_shared(server.url.clone())
            .expect("url")
            .connect_lazy(),
    );
    let upper_case = format!("00-{}-{EMITTER_SPAN}-01", TRACE_ID.to_uppercase());
    emit_traced(
        &mut stub,
        event_request("clients.create", proto::Phase::After, r#"{"n": 1}"#),
        &upper_case,
    )
    .await;
    server
        .client
        .emit_batch(proto::EmitBatchRequest {
            events: vec![event_request(
                "clients.create",
                proto::Phase::After,
                r#"{"n": 2}"#,
            )],
        })
        .await
        .expect("batch without metadata");
    for request in receiver.wait_for("/after", 2, WAIT).await {
        assert_eq!(request.header("traceparent"), None);
    }
}
