//! The web console (`--console-listen`): the product's Provisioning API screens
//! (Handlers, New Handler, Execution Logs with Advanced Search and Details, plus Live
//! logs and Stats) served by `provisiond` itself.
//!
//! Two things on one HTTP/1.1 address (hyper):
//! - the static page: one HTML file, one CSS file and a few plain JavaScript modules
//!   (no framework, no build step), embedded in the binary (`assets`);
//! - a thin JSON API under `/api/` (`api`) that the page calls: requests read by
//!   `request` and `query`, replies written by `reply`, refusals as `error`.
//!
//! Why JSON and not gRPC-Web: the browser then needs no protobuf codec, no generated
//! stubs and no build step, and nothing is lost, because the JSON layer owns no rule.
//! Every route builds the prost request of one gRPC method and calls the very service
//! object the gRPC server registers, in process, with a `tonic::Request` carrying the
//! [`Caller`](crate::auth::Caller) the auth layer would have put there (the bearer token
//! resolved by the same [`Gate`]). Validation, roles, secrets masking and error
//! messages therefore stay where they are: a refusal comes back as the service's
//! `tonic::Status`, turned into an HTTP status and `{code, message, field}` once
//! (`error::ApiError`).
//!
//! The page keeps its token in `sessionStorage` and sends it as `Authorization:
//! Bearer`, never in a URL (the Live log reads its Server-Sent Events with `fetch`, not
//! `EventSource`, for that reason); there are no cookies, so cross-site requests carry
//! no credentials, and requests with a body must be `application/json`, which a
//! cross-site form or `no-cors` fetch cannot send.

mod api;
mod assets;
mod error;
mod query;
mod reply;
mod request;

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Bytes;
use hyper::{Request, Response};
use tokio::net::TcpListener;

use crate::auth::layer::Gate;
use crate::grpc::handler_service::HandlerApi;
use crate::grpc::log_service::LogApi;
use crate::shutdown::Shutdown;

/// What the console calls: the gRPC services' own objects, and the auth gate.
pub struct Services {
    /// The `HandlerService` implementation the gRPC server registers.
    pub handlers: Arc<HandlerApi>,
    /// The `ExecutionLogService` implementation the gRPC server registers.
    pub logs: Arc<LogApi>,
    /// The identities the auth layer checks (reloaded with the tokens file).
    pub gate: Gate,
    /// Largest request body accepted (`--max-message-bytes`, as for gRPC messages).
    pub max_body_bytes: usize,
}

/// The body of every console response: whole pages and JSON, or an event stream.
type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Serves the console on `listener` until shutdown; open connections (a Live log
/// among them) are closed then.
pub fn serve(listener: TcpListener, services: Services, shutdown: &Shutdown) {
    let services = Arc::new(services);
    crate::side_http::serve(listener, "web console", shutdown, move |request| {
        let services = services.clone();
        async move { answer(request, &services).await }
    });
}

/// `/api/...` to the JSON API, anything else to the static files; every answer with
/// the headers that keep the page from being framed or its types sniffed.
async fn answer(request: Request<hyper::body::Incoming>, services: &Services) -> Response<Body> {
    let path = request.uri().path();
    let mut response = if path == "/api" || path.starts_with("/api/") {
        api::answer(request, services).await
    } else {
        assets::answer(&request)
    };
    let headers = response.headers_mut();
    for (name, value) in [
        (
            "content-security-policy",
            "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
    ] {
        headers.insert(name, hyper::header::HeaderValue::from_static(value));
    }
    response
}

/// A whole response: status, content type and body.
fn whole(
    status: hyper::StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    use http_body_util::BodyExt;
    let mut response = Response::new(http_body_util::Full::new(body.into()).boxed_unsync());
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

/// API answers are never cached (they hold what the caller may see now).
fn no_store(response: &mut Response<Body>) {
    response.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
}
