//! The command line of `provctl` (clap derive): global options, one subcommand tree per
//! resource, and the small enums that map flag values to proto enums.
//!
//! Every piece of local input (dates, durations, JSON, headers) is parsed here through
//! the value parsers of [`super::parse`], so a command only starts, and only connects,
//! with valid input.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand, ValueEnum};
use provisioning_client::proto;

use super::parse;

/// Manage Provisioning API handlers, emit events and read execution logs.
#[derive(Debug, Parser)]
#[command(name = "provctl", version, propagate_version = true)]
pub struct Cli {
    /// Server address: `http://host:port`, `https://host:port` (TLS), or `host:port`
    /// (TLS when a TLS option is given, else plaintext).
    #[arg(
        long,
        global = true,
        env = "PROVISIONING_SERVER",
        default_value = "http://127.0.0.1:50051",
        value_name = "URL"
    )]
    pub server: String,
    /// Bearer token sent with every call (see the server's tokens file).
    #[arg(
        long,
        global = true,
        env = "PROVISIONING_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    /// Output format: tables for people, JSON lines (one object per item) for scripts.
    #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// TLS: how to trust the server and how to prove who we are.
    #[command(flatten)]
    pub tls: TlsArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// TLS options (global). Any of them makes a bare `host:port` server use `https://`.
#[derive(Debug, Args)]
pub struct TlsArgs {
    /// PEM CA certificate to trust for the server's certificate (instead of the public
    /// web roots).
    #[arg(long, global = true, env = "PROVISIONING_CA_CERT", value_name = "PEM")]
    pub ca_cert: Option<PathBuf>,
    /// PEM client certificate for mutual TLS; needs --client-key.
    #[arg(
        long,
        global = true,
        env = "PROVISIONING_CLIENT_CERT",
        requires = "client_key",
        value_name = "PEM"
    )]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of --client-cert.
    #[arg(
        long,
        global = true,
        env = "PROVISIONING_CLIENT_KEY",
        requires = "client_cert",
        value_name = "PEM"
    )]
    pub client_key: Option<PathBuf>,
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned tables and `key: value` views.
    Table,
    /// One JSON object per line.
    Json,
}

/// Top-level resources.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Handlers: what runs when an event is emitted.
    #[command(subcommand)]
    Handlers(HandlersCommand),
    /// The event catalogue.
    #[command(subcommand)]
    EventTypes(EventTypesCommand),
    /// Emit events.
    #[command(subcommand)]
    Events(EventsCommand),
    /// Execution logs: one row per handler run.
    #[command(subcommand)]
    Logs(LogsCommand),
    /// Who changed handlers and event types (newest first).
    Audit(AuditArgs),
}

/// `provctl audit`
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only changes of this handler.
    #[arg(long = "handler", value_name = "ID")]
    pub handler_id: Option<i64>,
    /// At most this many changes (all pages are followed up to it).
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
}

/// `provctl handlers ...`
#[derive(Debug, Subcommand)]
pub enum HandlersCommand {
    /// List handlers (enabled and disabled unless --status says otherwise).
    List(ListHandlersArgs),
    /// Show one handler.
    Get(IdArg),
    /// Register a handler; prints it with its full signing secret.
    Create(CreateHandlerArgs),
    /// Change some fields of a handler.
    Update(UpdateHandlerArgs),
    /// Enable a handler.
    Enable(IdArg),
    /// Disable a handler (kept, not run).
    Disable(IdArg),
    /// Archive a handler (kept for the record, hidden from list).
    Archive(IdArg),
    /// Delete a handler (its execution logs stay).
    Delete(IdArg),
    /// Replace an HTTP handler's signing secret; prints the new one.
    RotateSecret(IdArg),
    /// Run a handler once, now, on given data (enabled or disabled; logged as a test,
    /// nothing is delivered for real); prints what happened.
    Test(TestHandlerArgs),
    /// Run counts, success rate and duration percentiles per handler.
    Stats(StatsArgs),
}

/// A handler id.
#[derive(Debug, Args)]
pub struct IdArg {
    /// Handler id.
    pub id: i64,
}

/// `handlers test`: the handler and the data to run it on (one of --data, --log-id).
#[derive(Debug, Args)]
pub struct TestHandlerArgs {
    /// Handler id.
    pub id: i64,
    /// The data to send, a JSON object (sent exactly as given).
    #[arg(long, value_name = "JSON", value_parser = parse::json_object, required_unless_present = "log_id")]
    pub data: Option<String>,
    /// Send the data of this execution-log row instead.
    #[arg(long, value_name = "N", conflicts_with = "data")]
    pub log_id: Option<i64>,
}

/// Filters of `handlers list`.
#[derive(Debug, Args)]
pub struct ListHandlersArgs {
    /// Only this event (e.g. accounts.create).
    #[arg(long)]
    pub event: Option<String>,
    /// Only this phase.
    #[arg(long, value_enum)]
    pub phase: Option<PhaseArg>,
    /// Only this kind.
    #[arg(long, value_enum)]
    pub kind: Option<KindArg>,
    /// Only this status (default: enabled and disabled).
    #[arg(long, value_enum)]
    pub status: Option<StatusArg>,
}

/// Fields of `handlers create`.
#[derive(Debug, Args)]
pub struct CreateHandlerArgs {
    /// Title shown in logs.
    #[arg(long)]
    pub name: String,
    /// Event to handle (e.g. accounts.create).
    #[arg(long)]
    pub event: String,
    /// Phase to handle.
    #[arg(long, value_enum)]
    pub phase: PhaseArg,
    /// POST events to this URL.
    #[arg(
        long,
        value_name = "URL",
        required_unless_present = "script",
        conflicts_with = "script"
    )]
    pub http: Option<String>,
    /// Run this program from the server's scripts directory.
    #[arg(long, value_name = "PATH")]
    pub script: Option<String>,
    /// Run order: lower runs first.
    #[arg(long, default_value_t = 0)]
    pub priority: i32,
    /// Initial status (default: enabled).
    #[arg(long, value_enum)]
    pub status: Option<StatusArg>,
    /// Time limit of one run in milliseconds (default: the server's, 10000).
    #[arg(long, value_name = "MS")]
    pub timeout_ms: Option<u32>,
    /// Extra HTTP header, `Name: value` (repeatable).
    #[arg(long = "header", value_name = "HEADER", value_parser = parse::header, conflicts_with = "script")]
    pub headers: Vec<(String, String)>,
    /// What a failure of this handler means for a BEFORE event.
    #[arg(long, value_enum)]
    pub failure_policy: Option<PolicyArg>,
    /// Run only for events whose data contains this JSON object.
    #[arg(long, value_name = "JSON", value_parser = parse::json_object_or_empty)]
    pub filter: Option<String>,
    /// What a delivery that gave up does to the later ones of its ordering key
    /// (default: skip).
    #[arg(long, value_enum)]
    pub ordering_policy: Option<OrderingPolicyArg>,
    /// Share per-key ordering with the other handlers of this group.
    #[arg(long, value_name = "GROUP")]
    pub ordering_group: Option<String>,
    /// Most deliveries to this handler running at once, across all replicas.
    #[arg(long, value_name = "N")]
    pub max_in_flight: Option<u32>,
    /// Most deliveries to this handler started per second, across all replicas.
    #[arg(long, value_name = "N")]
    pub rate_per_second: Option<u32>,
}

/// `handlers update`: the handler id and the fields to change.
#[derive(Debug, Args)]
pub struct UpdateHandlerArgs {
    /// Handler id.
    pub id: i64,
    /// The fields to change; at least one.
    #[command(flatten)]
    pub fields: UpdateFields,
}

/// The fields `handlers update` can change; each flag given lands in the field mask.
#[derive(Debug, Default, Args)]
#[group(required = true, multiple = true)]
pub struct UpdateFields {
    /// New title.
    #[arg(long)]
    pub name: Option<String>,
    /// New event.
    #[arg(long)]
    pub event: Option<String>,
    /// New phase.
    #[arg(long, value_enum)]
    pub phase: Option<PhaseArg>,
    /// Make it an HTTP handler posting to this URL (headers are kept unless --header is given).
    #[arg(long, value_name = "URL", conflicts_with = "script")]
    pub http: Option<String>,
    /// Make it a script handler running this program.
    #[arg(long, value_name = "PATH")]
    pub script: Option<String>,
    /// New run order.
    #[arg(long)]
    pub priority: Option<i32>,
    /// New time limit in milliseconds.
    #[arg(long, value_name = "MS")]
    pub timeout_ms: Option<u32>,
    /// New failure policy.
    #[arg(long, value_enum)]
    pub failure_policy: Option<PolicyArg>,
    /// New payload filter (a JSON object; '' removes it).
    #[arg(long, value_name = "JSON", value_parser = parse::json_object_or_empty)]
    pub filter: Option<String>,
    /// Replace all HTTP headers with these, `Name: value` (repeatable).
    #[arg(long = "header", value_name = "HEADER", value_parser = parse::header, conflicts_with = "script")]
    pub headers: Vec<(String, String)>,
    /// New ordering policy.
    #[arg(long, value_enum)]
    pub ordering_policy: Option<OrderingPolicyArg>,
    /// New ordering group ('' removes it).
    #[arg(long, value_name = "GROUP")]
    pub ordering_group: Option<String>,
    /// New concurrency limit (0 removes it).
    #[arg(long, value_name = "N")]
    pub max_in_flight: Option<u32>,
    /// New rate limit per second (0 removes it).
    #[arg(long, value_name = "N")]
    pub rate_per_second: Option<u32>,
}

/// `handlers stats`.
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Only this handler.
    pub id: Option<i64>,
    /// Window start (default: 24 hours before --to).
    #[arg(long, value_name = "TIME", value_parser = parse::time)]
    pub from: Option<DateTime<Utc>>,
    /// Window end (default: now).
    #[arg(long, value_name = "TIME", value_parser = parse::time)]
    pub to: Option<DateTime<Utc>>,
}

/// `provctl event-types ...`
#[derive(Debug, Subcommand)]
pub enum EventTypesCommand {
    /// List the event catalogue.
    List,
    /// Show one event type with its data schema.
    Show {
        /// Name, `group.action`.
        name: String,
    },
    /// Add an event type (`group.action`).
    Create {
        /// Name, `group.action`.
        name: String,
        /// What the event means.
        #[arg(long, default_value = "")]
        description: String,
        /// Data schema: a file holding a JSON Schema (draft 2020-12); `-` reads standard
        /// input.
        #[arg(long, value_name = "FILE")]
        schema: Option<PathBuf>,
    },
    /// Change an event type's description or data schema.
    Update(UpdateEventTypeArgs),
}

/// `event-types update`: the event type and what to change.
#[derive(Debug, Args)]
pub struct UpdateEventTypeArgs {
    /// Name, `group.action`.
    pub name: String,
    /// What to change; at least one.
    #[command(flatten)]
    pub changes: EventTypeChanges,
}

/// What `event-types update` can change; each flag given lands in the field mask.
#[derive(Debug, Default, Args)]
#[group(required = true, multiple = true)]
pub struct EventTypeChanges {
    /// New description.
    #[arg(long)]
    pub description: Option<String>,
    /// New data schema: a file holding a JSON Schema (draft 2020-12); `-` reads
    /// standard input.
    #[arg(long, value_name = "FILE", conflicts_with = "no_schema")]
    pub schema: Option<PathBuf>,
    /// Remove the data schema: any JSON object is accepted again.
    #[arg(long)]
    pub no_schema: bool,
}

/// `provctl events ...`
#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Emit one event, or stream many AFTER events from a JSON-lines file.
    Emit(EmitArgs),
}

/// `events emit`.
#[derive(Debug, Args)]
pub struct EmitArgs {
    /// Event name (e.g. accounts.create).
    #[arg(required_unless_present = "file")]
    pub event: Option<String>,
    /// Event data, a JSON object (sent exactly as given).
    #[arg(long, value_name = "JSON", value_parser = parse::json_object, required_unless_present = "file")]
    pub data: Option<String>,
    /// Phase.
    #[arg(long, value_enum, default_value_t = PhaseArg::After)]
    pub phase: PhaseArg,
    /// Idempotency key: a repeat returns the first event's id.
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
    /// Ordering key (e.g. client:15): each handler gets the events with the same key
    /// one at a time, in emit order.
    #[arg(long, value_name = "KEY")]
    pub ordering_key: Option<String>,
    /// Stream AFTER events from a file ('-' for stdin), one JSON object per line:
    /// {"event": "...", "data": {...}, "idempotency_key": "...", "ordering_key": "..."}.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["event", "data", "phase", "idempotency_key", "ordering_key"])]
    pub file: Option<PathBuf>,
    /// Make each call once: no generated idempotency key, no retry of UNAVAILABLE
    /// (by default an AFTER event gets a key and is retried for up to 30 s).
    #[arg(long)]
    pub no_retry: bool,
}

/// `provctl logs ...`
#[derive(Debug, Subcommand)]
pub enum LogsCommand {
    /// Search runs, newest first.
    Search(SearchArgs),
    /// Show one run with its data.
    Show {
        /// Log id.
        id: i64,
    },
    /// Print matching runs as they happen, until Ctrl-C. Columns have fixed widths
    /// (longer names, events and errors are cut with …); `--output json` prints whole rows.
    Tail(TailArgs),
    /// Run a failed AFTER delivery again now (`logs retry LOG_ID`), or every failed
    /// delivery of a handler (`logs retry --handler ID [--since 1h]`).
    Retry {
        /// Log id of the failed run.
        #[arg(required_unless_present = "handler", conflicts_with = "handler")]
        log_id: Option<i64>,
        /// Send the event again even though it was delivered (same `webhook-id`).
        #[arg(long, requires = "log_id")]
        resend: bool,
        /// Retry every failed, undelivered delivery of this handler.
        #[arg(long, value_name = "ID")]
        handler: Option<i64>,
        /// With --handler: only events since this age (30d, 12h, 15m) or date.
        #[arg(long, value_name = "AGE", value_parser = parse::time, requires = "handler")]
        since: Option<DateTime<Utc>>,
    },
    /// Give up a failed AFTER delivery for good (`logs skip LOG_ID`): the later
    /// deliveries of its ordering key that it holds back proceed.
    Skip {
        /// Log id of the failed run.
        log_id: i64,
    },
    /// Delete old runs.
    Purge {
        /// Age (30d, 12h, 15m) or date (RFC 3339 or 2026-11-26) before which runs are deleted.
        #[arg(long, value_name = "AGE", value_parser = parse::time)]
        older_than: DateTime<Utc>,
    },
}

/// Filters shared by `logs search` and `logs tail`.
#[derive(Debug, Default, Args)]
pub struct LogFilterArgs {
    /// Only this outcome.
    #[arg(long, value_enum)]
    pub status: Option<RunStatusArg>,
    /// Only this phase.
    #[arg(long, value_enum)]
    pub phase: Option<PhaseArg>,
    /// Only this event (repeatable: any of them).
    #[arg(long = "event", value_name = "EVENT")]
    pub events: Vec<String>,
    /// Only this handler id.
    #[arg(long, value_name = "ID")]
    pub handler: Option<i64>,
    /// Case-insensitive substring of the data sent, as JSON text.
    #[arg(long, value_name = "TEXT")]
    pub data: Option<String>,
    /// JSON object the data sent must contain.
    #[arg(long, value_name = "JSON", value_parser = parse::json_object)]
    pub contains: Option<String>,
    /// Case-insensitive substring of the error.
    #[arg(long, value_name = "TEXT")]
    pub error: Option<String>,
    /// Runs at or after this time.
    #[arg(long, value_name = "TIME", value_parser = parse::time)]
    pub from: Option<DateTime<Utc>>,
    /// Runs before this time.
    #[arg(long, value_name = "TIME", value_parser = parse::time)]
    pub to: Option<DateTime<Utc>>,
    /// Only this attempt number.
    #[arg(long, value_name = "N")]
    pub attempt: Option<u32>,
    /// Only runs of this event id.
    #[arg(long, value_name = "N")]
    pub event_id: Option<i64>,
}

/// `logs search`.
#[derive(Debug, Args)]
pub struct SearchArgs {
    /// Filters.
    #[command(flatten)]
    pub filter: LogFilterArgs,
    /// Maximum rows (server default 100).
    #[arg(long, value_name = "N")]
    pub limit: Option<u32>,
    /// Resume after the row with this cursor.
    #[arg(long, value_name = "CURSOR")]
    pub cursor: Option<String>,
}

/// `logs tail`.
#[derive(Debug, Args)]
pub struct TailArgs {
    /// Filters.
    #[command(flatten)]
    pub filter: LogFilterArgs,
    /// First print the last N matching runs.
    #[arg(long, value_name = "N")]
    pub backlog: Option<u32>,
    /// Resume after the row with this cursor (takes precedence over --backlog).
    #[arg(long, value_name = "CURSOR")]
    pub cursor: Option<String>,
}

/// `--phase` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PhaseArg {
    /// Before the action.
    Before,
    /// After the action.
    After,
}

impl From<PhaseArg> for proto::Phase {
    fn from(value: PhaseArg) -> Self {
        match value {
            PhaseArg::Before => Self::Before,
            PhaseArg::After => Self::After,
        }
    }
}

/// `--kind` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KindArg {
    /// HTTP POST.
    Http,
    /// Local script.
    Script,
}

impl From<KindArg> for proto::HandlerKind {
    fn from(value: KindArg) -> Self {
        match value {
            KindArg::Http => Self::Http,
            KindArg::Script => Self::Script,
        }
    }
}

/// Handler `--status` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatusArg {
    /// Runs.
    Enabled,
    /// Kept, does not run.
    Disabled,
    /// Kept for the record, hidden.
    Archived,
}

impl From<StatusArg> for proto::HandlerStatus {
    fn from(value: StatusArg) -> Self {
        match value {
            StatusArg::Enabled => Self::Enabled,
            StatusArg::Disabled => Self::Disabled,
            StatusArg::Archived => Self::Archived,
        }
    }
}

/// `--failure-policy` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PolicyArg {
    /// A failing BEFORE handler forbids the action.
    FailClosed,
    /// A failing BEFORE handler is skipped.
    FailOpen,
}

impl From<PolicyArg> for proto::FailurePolicy {
    fn from(value: PolicyArg) -> Self {
        match value {
            PolicyArg::FailClosed => Self::FailClosed,
            PolicyArg::FailOpen => Self::FailOpen,
        }
    }
}

/// `--ordering-policy` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OrderingPolicyArg {
    /// Later deliveries of the key proceed.
    Skip,
    /// Later deliveries of the key wait for a retry or a skip.
    Block,
}

impl From<OrderingPolicyArg> for proto::OrderingPolicy {
    fn from(value: OrderingPolicyArg) -> Self {
        match value {
            OrderingPolicyArg::Skip => Self::Skip,
            OrderingPolicyArg::Block => Self::Block,
        }
    }
}

/// Log `--status` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RunStatusArg {
    /// Succeeded runs.
    Success,
    /// Failed runs.
    Fail,
}

impl From<RunStatusArg> for proto::RunStatus {
    fn from(value: RunStatusArg) -> Self {
        match value {
            RunStatusArg::Success => Self::Success,
            RunStatusArg::Fail => Self::Fail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn update_without_any_field_is_a_usage_error() {
        let err = Cli::try_parse_from(["provctl", "handlers", "update", "7"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn create_needs_exactly_one_target() {
        let base = [
            "provctl", "handlers", "create", "--name", "n", "--event", "e", "--phase", "after",
        ];
        assert!(Cli::try_parse_from(base).is_err());
        let both = [&base[..], &["--http", "http://x", "--script", "s"]].concat();
        assert!(Cli::try_parse_from(both).is_err());
        let http = [&base[..], &["--http", "http://x"]].concat();
        assert!(Cli::try_parse_from(http).is_ok());
    }

    #[test]
    fn emit_takes_either_an_event_or_a_file() {
        assert!(Cli::try_parse_from(["provctl", "events", "emit", "a.b", "--data", "{}"]).is_ok());
        assert!(Cli::try_parse_from(["provctl", "events", "emit", "--file", "x.jsonl"]).is_ok());
        assert!(Cli::try_parse_from(["provctl", "events", "emit", "a.b"]).is_err());
        assert!(Cli::try_parse_from([
            "provctl", "events", "emit", "a.b", "--data", "{}", "--file", "x"
        ])
        .is_err());
    }

    #[test]
    fn bad_local_json_fails_while_parsing() {
        let err =
            Cli::try_parse_from(["provctl", "events", "emit", "a.b", "--data", "{"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
    }

    #[test]
    fn global_options_go_anywhere() {
        let cli = Cli::try_parse_from([
            "provctl", "logs", "search", "--output", "json", "--server", "h:1",
        ])
        .unwrap();
        assert_eq!(cli.output, Output::Json);
        assert_eq!(cli.server, "h:1");
    }
}
