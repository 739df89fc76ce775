//! OTLP trace export (`--otlp-endpoint`): a real OTLP/gRPC collector (the generated
//! `TraceService` server of `opentelemetry-proto`) in the test process receives the
//! spans of a real `provisiond` process; the span of an Emit sent with a `traceparent`
//! continues the emitter's trace, and the spans still queued at SIGTERM are exported
//! before the process exits.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use provisioning_client::proto;
use provisioning_client::proto::event_service_client::EventServiceClient;
use provisioning_tests::TestDatabase;
use provisioning_tests::{free_addr, prepare_scripts_dir, provisiond, ServerProcess, TempDir};
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Server};
use tonic::{Request, Response, Status};

use crate::dispatch::event_request;
use crate::trace_context::emit_traced;

const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const EMITTER_SPAN: &str = "b7ad6b7169203331";

/// One exported span, flattened: what the assertions need.
#[derive(Debug, Clone)]
struct Exported {
    service: Option<String>,
    name: String,
    method: Option<String>,
    trace_id: String,
    parent_span_id: String,
}

/// The collector: records every span it is sent.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Exported>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.spans.lock().expect("collector lock");
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .as_ref()
                .and_then(|resource| string_attribute(&resource.attributes, "service.name"));
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push(Exported {
                        service: service.clone(),
                        method: string_attribute(&span.attributes, "method"),
                        name: span.name,
                        trace_id: hex(&span.trace_id),
                        parent_span_id: hex(&span.parent_span_id),
                    });
                }
            }
        }
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn string_attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes
        .iter()
        .find(|attribute| attribute.key == key)
        .and_then(
            |attribute| match attribute.value.as_ref()?.value.as_ref()? {
                Value::StringValue(text) => Some(text.clone()),
                _ => None,
            },
        )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Serves the collector on a loopback port until `stop` is cancelled.
async fn start_collector(collector: Collector, stop: CancellationToken) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding the collector");
    let addr = listener.local_addr().expect("collector address");
    tokio::spawn(
        Server::builder()
            .add_service(TraceServiceServer::new(collector))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop.cancelled_owned()),
    );
    addr
}

/// Spans queued when SIGTERM arrives are flushed at exit, so the test needs no sleep:
/// the batch delay stays at its 5 s default and only the shutdown can have sent them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_span_of_an_emit_is_exported_over_otlp_in_the_emitters_trace() {
    let db = TestDatabase::new().await;
    let collector = Collector::default();
    let stop = CancellationToken::new();
    let collector_addr = start_collector(collector.clone(), stop.clone()).await;
    let scripts = TempDir::new("provisiond-scripts");
    prepare_scripts_dir(scripts.path());
    let addr = free_addr();
    let mut command = provisiond(addr, scripts.path());
    command
        .env("DATABASE_URL", &db.url)
        .arg("--otlp-endpoint")
        .arg(format!("http://{collector_addr}"));
    let mut server = ServerProcess::start(command, addr).await;

    let mut stub = EventServiceClient::new(
        Channel::from_shared(server.url.clone())
            .expect("url")
            .connect_lazy(),
    );
    emit_traced(
        &mut stub,
        event_request("clients.create", proto::Phase::After, r#"{"id": 1}"#),
        &format!("00-{TRACE_ID}-{EMITTER_SPAN}-01"),
    )
    .await;
    let status = server.stop().await;
    assert!(status.success(), "exit {status}; log:\n{}", server.log());
    stop.cancel();

    let spans = collector.spans.lock().expect("collector lock").clone();
    let emit = spans
        .iter()
        .find(|span| span.method.as_deref() == Some("/provisioning.v1.EventService/Emit"))
        .unwrap_or_else(|| panic!("no Emit span among {spans:#?}; log:\n{}", server.log()));
    assert_eq!(emit.name, "grpc");
    assert_eq!(emit.service.as_deref(), Some("provisiond"));
    assert_eq!(emit.trace_id, TRACE_ID, "the emitter's trace continues");
    assert_eq!(
        emit.parent_span_id, EMITTER_SPAN,
        "the emitter's span is the parent"
    );
    // Calls without a traceparent (the start-up health checks) start traces of their own.
    assert!(
        spans
            .iter()
            .any(|span| span.trace_id != TRACE_ID && span.parent_span_id.is_empty()),
        "{spans:#?}"
    );
}
