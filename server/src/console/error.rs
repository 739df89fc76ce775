//! The console's one error type: a refusal as the page shows it, an HTTP status and
//! `{code, message, field}`. Built from the gRPC service's `tonic::Status` (the one
//! mapping of gRPC codes to HTTP statuses) or, for requests that cannot even be read,
//! by the JSON layer itself.

use hyper::{Response, StatusCode};
use serde_json::{json, Value};
use tonic::Code;
use tonic_types::StatusExt;

use super::{no_store, whole, Body};

/// A refusal as the console shows it: an HTTP status and `{code, message, field}`.
#[derive(Debug)]
pub(super) struct ApiError {
    pub(super) status: StatusCode,
    pub(super) code: &'static str,
    pub(super) message: String,
    /// The request field the error is about (from the `google.rpc.BadRequest` field
    /// violation of an INVALID_ARGUMENT status), so the form shows it by that field.
    pub(super) field: Option<String>,
}

impl ApiError {
    /// 400 `invalid_argument`: the request could not even be read.
    pub(super) fn bad_request(field: Option<&str>, message: String) -> ApiError {
        let message = match field {
            Some(field) => format!("{field}: {message}"),
            None => message,
        };
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_argument",
            message,
            field: field.map(str::to_owned),
        }
    }

    /// The same error about `prefix.field`.
    pub(super) fn with_field_prefix(mut self, prefix: &str) -> ApiError {
        if let Some(field) = &self.field {
            let full = format!("{prefix}.{field}");
            self.message = match self.message.strip_prefix(&format!("{field}: ")) {
                Some(rest) => format!("{full}: {rest}"),
                None => self.message,
            };
            self.field = Some(full);
        }
        self
    }

    pub(super) fn not_found(message: String) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            message,
            field: None,
        }
    }

    pub(super) fn json(&self) -> Value {
        json!({"code": self.code, "message": self.message, "field": self.field})
    }

    pub(super) fn into_response(self) -> Response<Body> {
        let mut response = whole(self.status, "application/json", self.json().to_string());
        no_store(&mut response);
        response
    }
}

/// The gRPC code's HTTP status (the mapping of `google.rpc.Code`), its name, the
/// message, and the field of a BadRequest violation.
impl From<tonic::Status> for ApiError {
    fn from(status: tonic::Status) -> ApiError {
        let (http, code) = match status.code() {
            Code::Ok => (StatusCode::OK, "ok"),
            Code::Cancelled => (
                StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
                "cancelled",
            ),
            Code::Unknown => (StatusCode::INTERNAL_SERVER_ERROR, "unknown"),
            Code::InvalidArgument => (StatusCode::BAD_REQUEST, "invalid_argument"),
            Code::DeadlineExceeded => (StatusCode::GATEWAY_TIMEOUT, "deadline_exceeded"),
            Code::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            Code::AlreadyExists => (StatusCode::CONFLICT, "already_exists"),
            Code::PermissionDenied => (StatusCode::FORBIDDEN, "permission_denied"),
            Code::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, "resource_exhausted"),
            Code::FailedPrecondition => (StatusCode::BAD_REQUEST, "failed_precondition"),
            Code::Aborted => (StatusCode::CONFLICT, "aborted"),
            Code::OutOfRange => (StatusCode::BAD_REQUEST, "out_of_range"),
            Code::Unimplemented => (StatusCode::NOT_IMPLEMENTED, "unimplemented"),
            Code::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            Code::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Code::DataLoss => (StatusCode::INTERNAL_SERVER_ERROR, "data_loss"),
            Code::Unauthenticated => (StatusCode::UNAUTHORIZED, "unauthenticated"),
        };
        let field = status
            .get_details_bad_request()
            .and_then(|details| details.field_violations.into_iter().next())
            .map(|violation| violation.field);
        ApiError {
            status: http,
            code,
            message: status.message().to_owned(),
            field,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_http_and_keep_the_field() {
        let error = ApiError::from(crate::grpc::status::invalid_argument(
            "http.url: \"x\" is not an absolute http(s) URL",
        ));
        assert_eq!(error.status, StatusCode::BAD_REQUEST);
        assert_eq!(error.field.as_deref(), Some("http.url"));
        let denied = ApiError::from(tonic::Status::permission_denied("no"));
        assert_eq!(denied.status, StatusCode::FORBIDDEN);
        assert_eq!(denied.json()["code"], "permission_denied");
        let nested =
            ApiError::bad_request(Some("url"), "must be a string".into()).with_field_prefix("http");
        assert_eq!(nested.field.as_deref(), Some("http.url"));
        assert_eq!(nested.message, "http.url: must be a string");
    }
}
