//! Business rules, one module per aggregate: handlers (and the event catalogue), events
//! (ingestion), execution logs; plus what acceptable data and storable text are
//! (`event_data`, `text`) and the event types' data schemas with their per-replica
//! cache (`schemas`), shared by every entry point. Transactions open here. Nothing
//! in this module knows about tonic or prost; the gRPC layer converts to and from these
//! types.

pub mod event_data;
pub mod events;
pub mod handlers;
pub mod logs;
pub mod schemas;
pub mod text;
pub mod trace_context;

use std::fmt;

use crate::db::DbError;

/// Errors the domain reports to its callers; `grpc/status.rs` maps each to a status.
#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    /// The named thing does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The thing to create exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// The input is invalid; the message names the field.
    #[error("{0}")]
    InvalidArgument(String),
    /// The request is valid but not in the current state of the thing.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A server limit is reached (the message names it); retrying later may work.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The database cannot be reached right now; retrying later may work.
    #[error("service temporarily unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The database went away while a write was in flight: it may or may not have been
    /// committed. Retrying with the same idempotency key is safe.
    #[error("outcome of the write unknown")]
    OutcomeUnknown(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A bug or an unexpected database failure.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl DomainError {
    /// Shorthand for `InvalidArgument` with a `field: message` text.
    pub fn invalid(field: &str, message: impl fmt::Display) -> DomainError {
        DomainError::InvalidArgument(format!("{field}: {message}"))
    }
}

impl From<DbError> for DomainError {
    fn from(error: DbError) -> DomainError {
        use diesel::result::{DatabaseErrorKind, Error};
        match error {
            error if error.is_unavailable() => DomainError::Unavailable(Box::new(error)),
            DbError::Query(Error::DatabaseError(DatabaseErrorKind::UniqueViolation, ref info)) => {
                DomainError::AlreadyExists(format!(
                    "already exists ({})",
                    info.constraint_name().unwrap_or("unique key")
                ))
            }
            other => DomainError::Internal(Box::new(other)),
        }
    }
}

impl From<diesel::result::Error> for DomainError {
    fn from(error: diesel::result::Error) -> DomainError {
        DomainError::from(DbError::Query(error))
    }
}

/// Declares a closed set of values stored as lowercase text.
macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            /// The stored text form.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            /// Parses the stored text form.
            pub fn parse(text: &str) -> Option<$name> {
                match text { $($text => Some($name::$variant),)+ _ => None }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

text_enum!(
    /// When an event is emitted relative to its action.
    Phase { /// Synchronous, may modify or forbid.
    Before = "before", /// Durable, asynchronous, retried.
    After = "after" }
);
text_enum!(
    /// How a handler runs.
    HandlerKind { /// POST to a URL.
    Http = "http", /// Local program.
    Script = "script" }
);
text_enum!(
    /// Handler lifecycle status.
    HandlerStatus { /// Runs.
    Enabled = "enabled", /// Kept, does not run.
    Disabled = "disabled", /// Hidden by default, does not run.
    Archived = "archived" }
);
text_enum!(
    /// What a failing BEFORE handler means.
    FailurePolicy { /// Forbid the action.
    FailClosed = "fail_closed", /// Continue the chain.
    FailOpen = "fail_open" }
);
text_enum!(
    /// What a given-up AFTER delivery (dead, or paused with its handler) does to the
    /// later deliveries of its ordering key.
    OrderingPolicy { /// They proceed.
    Skip = "skip", /// They wait until it is retried or skipped.
    Block = "block" }
);
text_enum!(
    /// Outcome of one run.
    RunStatus { /// Succeeded.
    Success = "success", /// Failed.
    Fail = "fail" }
);

/// Reads a stored enum column; a value outside the set means the row is corrupt.
pub(crate) fn parse_stored<T>(
    parse: fn(&str) -> Option<T>,
    text: &str,
    column: &str,
) -> Result<T, DomainError> {
    parse(text).ok_or_else(|| {
        DomainError::Internal(format!("unexpected value {text:?} in column {column}").into())
    })
}
