//! The console's JSON API: each route is one gRPC method, called in process on the
//! service object the gRPC server registers.
//!
//! A route resolves the caller with the auth [`Gate`](crate::auth::layer::Gate) for the
//! gRPC method it maps to (the same decision, from the same role table, as the tower
//! layer makes), builds the prost request from the query or the JSON body
//! ([`super::request`], [`super::query`]), calls the method with the caller in the request's extensions
//! and writes the reply as JSON ([`super::reply`]). A refusal, the service's or the gate's, becomes an
//! [`ApiError`]: the HTTP status of its gRPC code and `{code, message, field}`.
//!
//! | route | gRPC method |
//! |---|---|
//! | `GET /api/whoami` | none: who the token names, and their roles |
//! | `GET /api/event-types` | `HandlerService/ListEventTypes` |
//! | `GET /api/handlers?event=&phase=&kind=&status=` | `HandlerService/List` (every page) |
//! | `POST /api/handlers` | `HandlerService/Create` |
//! | `GET, PATCH, DELETE /api/handlers/{id}` | `HandlerService/Get`, `Update`, `Delete` |
//! | `POST /api/handlers/{id}/status` | `HandlerService/SetStatus` |
//! | `POST /api/handlers/{id}/rotate-secret` | `HandlerService/RotateSecret` |
//! | `GET /api/logs?status=&phase=&event=&handler_id=&data=&error=&from=&to=&limit=&cursor=` | `ExecutionLogService/Search` (one page) |
//! | `GET /api/logs/tail?...&backlog=` | `ExecutionLogService/Tail`, as Server-Sent Events |
//! | `GET /api/logs/{id}` | `ExecutionLogService/Get` |
//! | `POST /api/logs/{id}/retry` | `ExecutionLogService/Retry` |
//! | `GET /api/stats?handler_id=&from=&to=` | `ExecutionLogService/Stats` |

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use futures_util::StreamExt;
use http_body_util::{BodyExt, Limited, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use provisioning_api::v1 as pb;
use provisioning_api::v1::execution_log_service_server::ExecutionLogService;
use provisioning_api::v1::handler_service_server::HandlerService;
use serde_json::{json, Value};

use super::error::ApiError;
use super::query::parse_query;
use super::request::{self, Fields};
use super::{no_store, reply, whole, Body, Services};

/// Rows of a search page when the page asks for no size, and the most it may ask for.
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 1000;
/// Handlers fetched per List call while collecting every page.
const HANDLER_PAGE: u32 = 1000;
/// A comment line sent on an idle event stream, so a closed browser tab is noticed
/// (the write fails) and its tail subscription ends.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// Answers one `/api/...` request.
pub(super) async fn answer(request: Request<Incoming>, services: &Services) -> Response<Body> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    match route(request, services).await {
        Ok(response) => response,
        Err(error) => {
            if error.status.is_server_error() {
                tracing::warn!(%method, %path, code = error.code, "web console request failed");
            }
            error.into_response()
        }
    }
}

/// The gRPC method paths the routes map to (what the role table is keyed by).
fn handler_method(name: &str) -> String {
    format!(
        "/{}/{name}",
        provisioning_api::v1::handler_service_server::SERVICE_NAME
    )
}

fn log_method(name: &str) -> String {
    format!(
        "/{}/{name}",
        provisioning_api::v1::execution_log_service_server::SERVICE_NAME
    )
}

/// The gate's decision for one method: the caller (development mode's anonymous one
/// included), or `None` for an open method.
struct Authorized(Option<crate::auth::Caller>);

impl Authorized {
    /// `message` with the caller in its extensions, as the auth layer leaves it.
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(caller) = &self.0 {
            request.extensions_mut().insert(caller.clone());
        }
        request
    }
}

/// One request's pieces the routes read.
struct Call<'a> {
    services: &'a Services,
    authorization: Option<hyper::header::HeaderValue>,
    query: HashMap<String, String>,
}

impl Call<'_> {
    /// The caller the gate resolves for the gRPC method at `path` (401/403 as the gRPC
    /// server would answer).
    fn authorize(&self, path: &str) -> Result<Authorized, ApiError> {
        let decision = self.services.gate.decide(
            path,
            self.authorization.as_ref().map(|v| v.as_bytes()),
            None,
        );
        decision.map(Authorized).map_err(|refusal| {
            tracing::info!(method = %path, reason = %refusal, "web console request refused");
            ApiError::from(tonic::Status::from(refusal))
        })
    }

    /// `message` as an authorized tonic request of the method at `path`.
    fn grpc<T>(&self, path: &str, message: T) -> Result<tonic::Request<T>, ApiError> {
        Ok(self.authorize(path)?.request(message))
    }

    fn text(&self, key: &str) -> String {
        self.query.get(key).cloned().unwrap_or_default()
    }

    fn number<T: std::str::FromStr + Default>(&self, key: &str) -> Result<T, ApiError> {
        match self.query.get(key).filter(|v| !v.is_empty()) {
            None => Ok(T::default()),
            Some(text) => text
                .parse()
                .map_err(|_| ApiError::bad_request(Some(key), format!("{text:?} is not a number"))),
        }
    }
}

async fn route(
    request: Request<Incoming>,
    services: &Services,
) -> Result<Response<Body>, ApiError> {
    let (parts, body) = request.into_parts();
    let call = Call {
        services,
        authorization: parts.headers.get(hyper::header::AUTHORIZATION).cloned(),
        query: parse_query(parts.uri.query().unwrap_or("")),
    };
    let segments: Vec<&str> = parts
        .uri
        .path()
        .trim_start_matches("/api")
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let body = || read_body(&parts, body, services.max_body_bytes);
    let handlers = &services.handlers;
    let logs = &services.logs;
    let answer = match (&parts.method, segments.as_slice()) {
        (&Method::GET, ["whoami"]) => whoami(&call)?,
        (&Method::GET, ["event-types"]) => {
            let request = call.grpc(
                &handler_method("ListEventTypes"),
                pb::ListEventTypesRequest {},
            )?;
            let listed = handlers.list_event_types(request).await?.into_inner();
            let types: Vec<Value> = listed
                .event_types
                .into_iter()
                .map(reply::event_type)
                .collect();
            json!({ "event_types": types })
        }
        (&Method::GET, ["handlers"]) => list_handlers(&call).await?,
        (&Method::POST, ["handlers"]) => {
            let authorized = call.authorize(&handler_method("Create"))?;
            let message = request::create_handler(body().await?)?;
            let created = handlers.create(authorized.request(message)).await?;
            reply::handler(created.into_inner())
        }
        (method, ["handlers", id]) => {
            let id = id_of(id)?;
            match *method {
                Method::GET => {
                    let request =
                        call.grpc(&handler_method("Get"), pb::GetHandlerRequest { id })?;
                    reply::handler(handlers.get(request).await?.into_inner())
                }
                Method::PATCH => {
                    let authorized = call.authorize(&handler_method("Update"))?;
                    let message = request::update_handler(id, body().await?)?;
                    reply::handler(
                        handlers
                            .update(authorized.request(message))
                            .await?
                            .into_inner(),
                    )
                }
                Method::DELETE => {
                    let request =
                        call.grpc(&handler_method("Delete"), pb::DeleteHandlerRequest { id })?;
                    handlers.delete(request).await?;
                    json!({ "deleted": id })
                }
                _ => return Err(no_route(&parts)),
            }
        }
        (&Method::POST, ["handlers", id, "status"]) => {
            let id = id_of(id)?;
            let authorized = call.authorize(&handler_method("SetStatus"))?;
            let mut fields = body().await?;
            let status = fields.string("status")?;
            fields.finish("")?;
            let status = request::handler_status("status", &status)?;
            let request = authorized.request(pb::SetHandlerStatusRequest { id, status });
            reply::handler(handlers.set_status(request).await?.into_inner())
        }
        (&Method::POST, ["handlers", id, "rotate-secret"]) => {
            let request = call.grpc(
                &handler_method("RotateSecret"),
                pb::RotateSecretRequest { id: id_of(id)? },
            )?;
            reply::handler(handlers.rotate_secret(request).await?.into_inner())
        }
        (&Method::GET, ["logs"]) => search(&call).await?,
        (&Method::GET, ["logs", "tail"]) => return tail(&call).await,
        (&Method::GET, ["logs", id]) => {
            let request = call.grpc(&log_method("Get"), pb::GetLogRequest { id: id_of(id)? })?;
            reply::execution_log(logs.get(request).await?.into_inner())
        }
        (&Method::POST, ["logs", id, "retry"]) => {
            let log_id = id_of(id)?;
            let authorized = call.authorize(&log_method("Retry"))?;
            let mut fields = body().await?;
            let resend = fields.boolean("resend")?;
            fields.finish("")?;
            let request = authorized.request(pb::RetryRequest { log_id, resend });
            let pb::RetryResponse { delivery_id } = logs.retry(request).await?.into_inner();
            json!({ "delivery_id": delivery_id })
        }
        (&Method::GET, ["stats"]) => {
            let authorized = call.authorize(&log_method("Stats"))?;
            let request = pb::LogStatsRequest {
                handler_id: call.number("handler_id")?,
                from: request::timestamp_from("from", &call.text("from"))?,
                to: request::timestamp_from("to", &call.text("to"))?,
            };
            let stats = logs.stats(authorized.request(request)).await?.into_inner();
            let handlers: Vec<Value> = stats
                .handlers
                .into_iter()
                .map(reply::handler_stats)
                .collect();
            json!({ "handlers": handlers })
        }
        _ => return Err(no_route(&parts)),
    };
    let mut response = whole(StatusCode::OK, "application/json", answer.to_string());
    no_store(&mut response);
    Ok(response)
}

fn no_route(parts: &hyper::http::request::Parts) -> ApiError {
    ApiError::not_found(format!(
        "no API route {} {}",
        parts.method,
        parts.uri.path()
    ))
}

fn id_of(text: &str) -> Result<i64, ApiError> {
    text.parse()
        .map_err(|_| ApiError::not_found(format!("{text:?} is not an id")))
}

/// The JSON object body of a POST or PATCH: `application/json` only (a cross-site form
/// cannot send it), at most `max` bytes.
async fn read_body(
    parts: &hyper::http::request::Parts,
    body: Incoming,
    max: usize,
) -> Result<Fields, ApiError> {
    let is_json = parts
        .headers
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(ApiError {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            code: "invalid_argument",
            message: "send the body as Content-Type: application/json".to_owned(),
            field: None,
        });
    }
    let bytes = Limited::new(body, max)
        .collect()
        .await
        .map_err(|e| ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "invalid_argument",
            message: format!("request body not read: {e} (at most {max} bytes)"),
            field: None,
        })?
        .to_bytes();
    Fields::parse(&bytes)
}

/// Who the token names (any role), and whether the server checks tokens at all.
fn whoami(call: &Call<'_>) -> Result<Value, ApiError> {
    let gate = &call.services.gate;
    let caller = gate
        .identify(call.authorization.as_ref().map(|v| v.as_bytes()))
        .map_err(|refusal| ApiError::from(tonic::Status::from(refusal)))?;
    let roles: Vec<&str> = caller.roles.iter().map(|r| r.as_str()).collect();
    Ok(json!({
        "name": caller.name,
        "roles": roles,
        "admin": caller.is_admin(),
        "development": gate.is_development(),
    }))
}

/// Every handler matching the filters, in List's order (event, phase, priority, id).
async fn list_handlers(call: &Call<'_>) -> Result<Value, ApiError> {
    let authorized = call.authorize(&handler_method("List"))?;
    let mut request = pb::ListHandlersRequest {
        event: call.text("event"),
        phase: request::phase_value("phase", &call.text("phase"))?,
        kind: request::handler_kind("kind", &call.text("kind"))?,
        status: request::handler_status("status", &call.text("status"))?,
        page_size: HANDLER_PAGE,
        page_token: String::new(),
    };
    let mut handlers = Vec::new();
    loop {
        let page = call
            .services
            .handlers
            .list(authorized.request(request.clone()))
            .await?
            .into_inner();
        handlers.extend(page.handlers.into_iter().map(reply::handler));
        if page.next_page_token.is_empty() {
            break;
        }
        request.page_token = page.next_page_token;
    }
    Ok(json!({ "handlers": handlers }))
}

/// The Advanced Search filter from the query: `status`, `phase`, `event`, `handler_id`,
/// `data` (substring), `error` (substring), `from`, `to` (RFC 3339).
fn log_filter(call: &Call<'_>) -> Result<pb::LogFilter, ApiError> {
    let event = call.text("event");
    Ok(pb::LogFilter {
        status: request::run_status("status", &call.text("status"))?,
        phase: request::phase_value("phase", &call.text("phase"))?,
        events: if event.is_empty() {
            Vec::new()
        } else {
            vec![event]
        },
        handler_id: call.number("handler_id")?,
        data_contains: call.text("data"),
        error_contains: call.text("error"),
        from: request::timestamp_from("from", &call.text("from"))?,
        to: request::timestamp_from("to", &call.text("to"))?,
        ..Default::default()
    })
}

/// One page of Search: up to `limit` rows, newest first, and the cursor of the next
/// page when there is one (one row more is asked for to know).
async fn search(call: &Call<'_>) -> Result<Value, ApiError> {
    let authorized = call.authorize(&log_method("Search"))?;
    let limit = match call.number::<usize>("limit")? {
        0 => DEFAULT_PAGE,
        n => n.min(MAX_PAGE),
    };
    let request = pb::SearchLogsRequest {
        filter: Some(log_filter(call)?),
        limit: (limit + 1) as u32,
        cursor: call.text("cursor"),
    };
    let mut stream = call
        .services
        .logs
        .search(authorized.request(request))
        .await?
        .into_inner();
    let mut entries = Vec::new();
    let mut next_cursor = Value::Null;
    while let Some(entry) = stream.next().await {
        let entry = entry?;
        if entries.len() == limit {
            next_cursor = entries
                .last()
                .and_then(|last: &Value| last.get("cursor").cloned())
                .unwrap_or(Value::Null);
            break;
        }
        entries.push(reply::log_entry(entry));
    }
    Ok(json!({ "entries": entries, "next_cursor": next_cursor }))
}

/// The Live log: Tail as Server-Sent Events (`event: log`, the entry as data, its
/// cursor as the event id). A status ending the tail (lagged, shutting down) is sent
/// as `event: error` with `{code, message}` before the stream ends. The response
/// starts once the tail is subscribed, so a run logged after it is never missed.
async fn tail(call: &Call<'_>) -> Result<Response<Body>, ApiError> {
    let authorized = call.authorize(&log_method("Tail"))?;
    let request = pb::TailLogsRequest {
        filter: Some(log_filter(call)?),
        backlog: call.number("backlog")?,
        cursor: call.text("cursor"),
    };
    let entries = call
        .services
        .logs
        .tail(authorized.request(request))
        .await?
        .into_inner();
    let events = futures_util::stream::unfold(Some(entries), |entries| async move {
        let mut entries = entries?;
        tokio::select! {
            item = entries.next() => match item {
                Some(Ok(entry)) => {
                    let cursor = entry.cursor.clone();
                    let data = reply::log_entry(entry);
                    Some((format!("id: {cursor}\nevent: log\ndata: {data}\n\n"), Some(entries)))
                }
                Some(Err(status)) => {
                    let data = ApiError::from(status).json();
                    Some((format!("event: error\ndata: {data}\n\n"), None))
                }
                None => None,
            },
            _ = tokio::time::sleep(KEEPALIVE) => Some((": keepalive\n\n".to_owned(), Some(entries))),
        }
    });
    let opening = futures_util::stream::once(async { ": tailing\n\n".to_owned() });
    let frames = opening
        .chain(events)
        .map(|text| Ok::<_, Infallible>(Frame::data(Bytes::from(text))));
    let mut response = Response::new(StreamBody::new(frames).boxed_unsync());
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/event-stream"),
    );
    no_store(&mut response);
    Ok(response)
}
