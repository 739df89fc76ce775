//! The one place where our errors become `tonic::Status`. Internal and unavailable
//! errors are logged here, once, with their source chain; callers get a clear message
//! and never SQL or driver text.
//!
//! Besides the readable message, statuses carry the standard `google.rpc` error details
//! other languages' libraries read (grpcio-status, Go's `status.Details()`, ...):
//! INVALID_ARGUMENT a `BadRequest` naming the field, UNAVAILABLE a `RetryInfo` with the
//! delay after which a retry is worth it.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::auth::AuthError;
use crate::domain::DomainError;
use crate::telemetry::error_chain;

impl From<DomainError> for Status {
    fn from(error: DomainError) -> Status {
        match error {
            DomainError::NotFound(message) => Status::not_found(message),
            DomainError::AlreadyExists(message) => Status::already_exists(message),
            DomainError::InvalidArgument(message) => invalid_argument(message),
            DomainError::FailedPrecondition(message) => Status::failed_precondition(message),
            DomainError::ResourceExhausted(message) => Status::resource_exhausted(message),
            DomainError::Unavailable(source) => {
                tracing::warn!(error = %error_chain(source.as_ref()), "database unavailable");
                unavailable("database temporarily unavailable, retry later")
            }
            DomainError::OutcomeUnknown(source) => {
                tracing::warn!(error = %error_chain(source.as_ref()), "database lost during a write");
                unavailable(
                    "database connection lost while the event was being stored: it may have \
                     been stored; retrying with the same idempotency key is safe",
                )
            }
            DomainError::Internal(source) => {
                tracing::error!(error = %error_chain(source.as_ref()), "internal error");
                Status::internal("internal error (logged by the server)")
            }
        }
    }
}

impl From<AuthError> for Status {
    fn from(error: AuthError) -> Status {
        match error {
            AuthError::Unauthenticated(message) => Status::unauthenticated(message),
            AuthError::PermissionDenied(message) => Status::permission_denied(message),
        }
    }
}

/// How long a caller should wait before retrying after UNAVAILABLE: about the time the
/// server takes to notice the database is back (its probe runs every second).
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// INVALID_ARGUMENT with the message and, when the message starts with the field it is
/// about (`field: what is wrong`, as every message of ours does), a `BadRequest` with
/// that field violation.
pub fn invalid_argument(message: impl Into<String>) -> Status {
    let message = message.into();
    match field_of(&message) {
        Some((field, description)) => {
            let details = ErrorDetails::with_bad_request_violation(field, description);
            Status::with_error_details(Code::InvalidArgument, message.clone(), details)
        }
        None => Status::invalid_argument(message),
    }
}

/// UNAVAILABLE with the message and a `RetryInfo` saying when to retry.
pub fn unavailable(message: impl Into<String>) -> Status {
    let details = ErrorDetails::with_retry_info(Some(RETRY_DELAY));
    Status::with_error_details(Code::Unavailable, message, details)
}

/// The field path a message starts with (`events[3].data_json: ...`), and the rest.
fn field_of(message: &str) -> Option<(&str, &str)> {
    let (field, description) = message.split_once(": ")?;
    let is_path = !field.is_empty()
        && field
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '[' | ']'));
    is_path.then_some((field, description))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_field_message_carries_a_bad_request_violation() {
        let status = invalid_argument("events[2].data_json: must be a JSON object");
        assert_eq!(
            status.message(),
            "events[2].data_json: must be a JSON object"
        );
        let violations = status
            .get_details_bad_request()
            .expect("details")
            .field_violations;
        assert_eq!(violations.len(), 1);
        assert_eq!(violations[0].field, "events[2].data_json");
        assert_eq!(violations[0].description, "must be a JSON object");
        let plain = invalid_argument("a message about no field in particular");
        assert!(plain.get_details_bad_request().is_none());
    }

    #[test]
    fn unavailable_says_when_to_retry() {
        let status = unavailable("away");
        let retry = status.get_details_retry_info().expect("retry info");
        assert_eq!(retry.retry_delay, Some(RETRY_DELAY));
    }
}
