//! The client's error type: what can go wrong between a caller and the service.
//!
//! Only four things can: the URL is unusable, the TLS settings are (a file cannot be
//! read, does not parse, or does not fit the URL), the transport cannot reach the server
//! (or the TLS handshake fails), or the server answered with a gRPC status. The status
//! is kept whole (code, message, details, metadata) so callers can branch on
//! [`tonic::Code`] without string matching.

/// An error of [`crate::Client`].
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server could not be reached (refused, unresolvable, timed out).
    #[error("connection failed")]
    Connect(#[source] tonic::transport::Error),
    /// The server address is not a valid URI.
    #[error("invalid server URL `{0}`")]
    InvalidUrl(String),
    /// A TLS file (CA certificate, client certificate or key) could not be read.
    #[error("cannot read the {what} {}", path.display())]
    ReadFile {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: std::path::PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The TLS options do not fit together or with the URL.
    #[error("{0}")]
    TlsOptions(String),
    /// The TLS settings are unusable (e.g. a CA or client certificate that is not PEM).
    #[error("invalid TLS settings")]
    Tls(#[source] tonic::transport::Error),
    /// The bearer token cannot be sent (not printable ASCII); it is not repeated here.
    #[error("invalid token: it must be printable ASCII")]
    InvalidToken,
    /// The server (or the transport on its behalf) answered with a non-OK status.
    #[error("{}", display_status(.0))]
    Rpc(tonic::Status),
}

impl ClientError {
    /// The gRPC status, when the server answered with one.
    pub fn status(&self) -> Option<&tonic::Status> {
        match self {
            Self::Rpc(status) => Some(status),
            Self::Connect(_)
            | Self::InvalidUrl(_)
            | Self::ReadFile { .. }
            | Self::TlsOptions(_)
            | Self::Tls(_)
            | Self::InvalidToken => None,
        }
    }

    /// The gRPC status code, when the server answered with one.
    pub fn code(&self) -> Option<tonic::Code> {
        self.status().map(tonic::Status::code)
    }
}

impl From<tonic::Status> for ClientError {
    fn from(status: tonic::Status) -> Self {
        Self::Rpc(status)
    }
}

/// `Code: message` on one line (a multi-line message is joined with spaces), because
/// `tonic::Status`'s own `Display` dumps details and metadata.
fn display_status(status: &tonic::Status) -> String {
    let message = status
        .message()
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    if message.is_empty() {
        format!("{:?}", status.code())
    } else {
        format!("{:?}: {message}", status.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_error_displays_code_and_message_on_one_line() {
        let err = ClientError::from(tonic::Status::invalid_argument("unknown event\n`x.y`"));
        assert_eq!(err.to_string(), "InvalidArgument: unknown event `x.y`");
        assert_eq!(err.code(), Some(tonic::Code::InvalidArgument));
    }

    #[test]
    fn rpc_error_without_message_displays_the_code() {
        let err = ClientError::from(tonic::Status::new(tonic::Code::NotFound, ""));
        assert_eq!(err.to_string(), "NotFound");
    }

    #[test]
    fn non_rpc_errors_have_no_status() {
        let err = ClientError::InvalidUrl("::".into());
        assert!(err.status().is_none());
        assert!(err.code().is_none());
    }
}
