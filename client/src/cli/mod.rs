//! The `provctl` command-line tool over [`provisioning_client::Client`].
//!
//! `args` defines the command line and `parse` validates local input while it is parsed;
//! one module per resource (`handlers` with `handler_test`, `event_types`, `events` with
//! `emit_file`, `logs`) builds the request, makes the call and prints the reply through
//! `output` (tables, for people) or `json` (JSON lines, for scripts). The connection is
//! made only after the input is known to be valid, so a typo never costs a round trip.
//!
//! Errors are [`CliError`]; `main` prints them as one line and maps them to exit codes.

pub mod args;
mod audit;
mod emit_file;
mod event_types;
mod events;
mod handler_test;
mod handler_view;
mod handlers;
mod json;
mod logs;
mod output;
mod parse;

use chrono::{DateTime, Utc};
use provisioning_client::{Client, ClientError, ConnectOptions};

use args::{Cli, Command, Output, TlsArgs};
use output::Stdout;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad local input, found before or without the server's help (exit code 2).
    #[error("{0}")]
    Input(String),
    /// The server could not be reached.
    #[error("cannot connect to {url}")]
    Connect {
        /// The address tried.
        url: String,
        /// What the transport said (boxed, as statuses are large).
        #[source]
        source: Box<ClientError>,
    },
    /// The server answered with an error (boxed: a `tonic::Status` is large, and this
    /// error travels through every command's `Result`).
    #[error(transparent)]
    Client(Box<ClientError>),
    /// Reading a file or writing the output failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The command ran but its outcome is a failure (e.g. rejected events).
    #[error("{0}")]
    Failed(String),
    /// Standard output was closed by the reader (`| head`): stop quietly.
    #[error("standard output closed")]
    BrokenPipe,
}

impl From<ClientError> for CliError {
    fn from(err: ClientError) -> Self {
        Self::Client(Box::new(err))
    }
}

impl CliError {
    /// The process exit code: 2 for bad input (as clap does for usage errors), else 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Input(_) => 2,
            Self::BrokenPipe => 0,
            Self::Connect { .. } | Self::Client(_) | Self::Io { .. } | Self::Failed(_) => 1,
        }
    }
}

/// What every command needs: where the server is, how to print, and standard output.
pub struct Context {
    server: String,
    tls: TlsArgs,
    token: Option<String>,
    /// Output format chosen with `--output`.
    pub output: Output,
    /// Standard output.
    pub stdout: Stdout,
}

impl Context {
    /// Connects to the server. Called by commands only once their input is valid.
    pub async fn client(&self) -> Result<Client, CliError> {
        let options = ConnectOptions::from_files(
            self.tls.ca_cert.as_deref(),
            self.tls.client_cert.as_deref(),
            self.tls.client_key.as_deref(),
        )
        .map_err(|err| CliError::Input(one_line(&err)))?;
        let connected = match Client::connect_with(self.server.clone(), &options).await {
            Ok(client) => client.with_token(self.token.as_deref()),
            Err(err) => Err(err),
        };
        connected.map_err(|err| match err {
            ClientError::InvalidUrl(_)
            | ClientError::TlsOptions(_)
            | ClientError::Tls(_)
            | ClientError::InvalidToken => CliError::Input(one_line(&err)),
            source => CliError::Connect {
                url: self.server.clone(),
                source: Box::new(source),
            },
        })
    }

    /// Prints one line on standard output.
    pub fn line(&mut self, text: &str) -> Result<(), CliError> {
        self.stdout.line(text)
    }
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    let mut ctx = Context {
        server: cli.server,
        tls: cli.tls,
        token: cli.token,
        output: cli.output,
        stdout: Stdout::new(),
    };
    let result = match cli.command {
        Command::Handlers(command) => handlers::run(&mut ctx, command).await,
        Command::EventTypes(command) => event_types::run(&mut ctx, command).await,
        Command::Events(command) => events::run(&mut ctx, command).await,
        Command::Logs(command) => logs::run(&mut ctx, command).await,
        Command::Audit(args) => audit::run(&mut ctx, args).await,
    };
    match result {
        Err(CliError::Client(err))
            if ctx.token.is_none() && err.code() == Some(tonic::Code::Unauthenticated) =>
        {
            Err(CliError::Failed(format!(
                "{err} (no token given: use --token or PROVISIONING_TOKEN)"
            )))
        }
        other => other,
    }
}

/// An error and its causes on one line, `: `-separated (for errors that become
/// [`CliError::Input`], which carries text only).
fn one_line(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// chrono → protobuf timestamp.
fn to_timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// Protobuf timestamp → chrono; `None` when absent or out of range.
fn from_timestamp(at: Option<&prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    let at = at?;
    DateTime::from_timestamp(at.seconds, u32::try_from(at.nanos).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_with_nanoseconds() {
        let at = DateTime::parse_from_rfc3339("2026-11-26T10:00:00.123456789Z")
            .unwrap()
            .with_timezone(&Utc);
        let ts = to_timestamp(at);
        assert_eq!((ts.seconds, ts.nanos), (at.timestamp(), 123_456_789));
        assert_eq!(from_timestamp(Some(&ts)), Some(at));
        assert_eq!(from_timestamp(None), None);
    }

    #[test]
    fn usage_errors_exit_2_and_failures_exit_1() {
        assert_eq!(CliError::Input("x".into()).exit_code(), 2);
        assert_eq!(CliError::Failed("x".into()).exit_code(), 1);
        let rpc = CliError::from(ClientError::from(tonic::Status::not_found("no handler 9")));
        assert_eq!(
            (rpc.exit_code(), rpc.to_string()),
            (1, "NotFound: no handler 9".to_owned())
        );
    }
}
