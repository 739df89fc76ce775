//! The one place where our errors become `tonic::Status`. Internal and unavailable
//! errors are logged here, once, with their source chain; callers get a clear message
//! and never SQL or driver text.

use tonic::Status;

use crate::auth::AuthError;
use crate::domain::DomainError;
use crate::telemetry::error_chain;

impl From<DomainError> for Status {
    fn from(error: DomainError) -> Status {
        match error {
            DomainError::NotFound(message) => Status::not_found(message),
            DomainError::AlreadyExists(message) => Status::already_exists(message),
            DomainError::InvalidArgument(message) => Status::invalid_argument(message),
            DomainError::FailedPrecondition(message) => Status::failed_precondition(message),
            DomainError::ResourceExhausted(message) => Status::resource_exhausted(message),
            DomainError::Unavailable(source) => {
                tracing::warn!(error = %error_chain(source.as_ref()), "database unavailable");
                Status::unavailable("database temporarily unavailable, retry later")
            }
            DomainError::OutcomeUnknown(source) => {
                tracing::warn!(error = %error_chain(source.as_ref()), "database lost during a write");
                Status::unavailable(
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
