//! The gRPC layer: one file per proto service (and `health`, the standard health
//! service ended with the server), conversions in `convert.rs`, the error mapping in
//! `status.rs`. Methods stay short: convert the request, call one domain
//! function, convert the reply. Nothing here touches Diesel or hyper.

#![expect(
    clippy::result_large_err,
    reason = "tonic::Status is the error type of every tonic method; boxing it here would only be unboxed again"
)]

pub mod convert;
pub mod event_service;
pub mod handler_service;
pub mod health;
pub mod log_service;
pub mod status;

use tonic::{Request, Status};

use crate::auth::{AuthError, Caller};
use crate::domain::trace_context::TraceContext;

/// The caller's W3C trace context (`traceparent` metadata), if it sent a valid one.
pub fn trace_context<T>(request: &Request<T>) -> Option<TraceContext> {
    request
        .metadata()
        .get("traceparent")
        .and_then(|value| value.to_str().ok())
        .and_then(TraceContext::parse)
}

/// The caller the auth layer put in the request's extensions. Every method of our
/// services passes through that layer; a request without a caller is refused rather
/// than trusted.
pub fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| {
            Status::from(AuthError::Unauthenticated(
                "no authenticated caller for this request".to_owned(),
            ))
        })
}
