//! Typed configuration from flags and environment variables, validated once at start.
//! Nothing else in the server reads the environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::db::Statements;
use crate::policy::outbound::{Cidr, OutboundPolicy};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// `provisiond` settings. Every flag has an environment variable.
#[derive(Debug, Clone, Parser)]
#[command(name = "provisiond", version, about = "Provisioning API gRPC service")]
pub struct Config {
    /// Address the gRPC server listens on.
    #[arg(long, env = "PROVISIOND_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// PostgreSQL URL. Without it the server runs its own cluster under --data-dir.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,

    /// PostgreSQL URL the LISTEN connection uses instead of --database-url: the same
    /// database reached directly, when --database-url goes through a transaction pooler
    /// such as PgBouncer (LISTEN cannot). Needs --database-url.
    #[arg(
        long,
        env = "PROVISIOND_LISTEN_DATABASE_URL",
        requires = "database_url"
    )]
    pub listen_database_url: Option<String>,

    /// How pooled connections run statements: `named` keeps them prepared per
    /// connection; `unnamed` sends each in one round trip, for transaction poolers that
    /// cannot carry named prepared statements (PgBouncer before 1.21, or without
    /// max_prepared_statements).
    #[arg(
        long,
        env = "PROVISIOND_PREPARED_STATEMENTS",
        value_enum,
        default_value = "named"
    )]
    pub prepared_statements: Statements,

    /// PostgreSQL URL of a streaming standby of the database: Search, Get and Stats read
    /// from it while it keeps up (see --max-read-lag). Off when not set.
    #[arg(long, env = "PROVISIOND_READ_DATABASE_URL")]
    pub read_database_url: Option<String>,

    /// How far the read standby may be behind the primary before log reads go to the
    /// primary instead.
    #[arg(long, env = "PROVISIOND_MAX_READ_LAG", default_value = "5s", value_parser = parse_duration)]
    pub max_read_lag: Duration,

    /// Directory of the embedded PostgreSQL cluster (and the default scripts directory).
    /// Default: /var/lib/provisiond as root, else ~/.local/share/provisiond.
    #[arg(long, env = "PROVISIOND_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Directory script handlers must live in. Default: <data-dir>/scripts.
    #[arg(long, env = "PROVISIOND_SCRIPTS_DIR")]
    pub scripts_dir: Option<PathBuf>,

    /// Log format.
    #[arg(
        long,
        env = "PROVISIOND_LOG_FORMAT",
        value_enum,
        default_value = "human"
    )]
    pub log_format: LogFormat,

    /// Largest accepted event data, in bytes.
    #[arg(long, env = "PROVISIOND_MAX_PAYLOAD_BYTES", default_value_t = 1024 * 1024)]
    pub max_payload_bytes: usize,

    /// Delays between AFTER attempts (the last repeats until max attempts), each with
    /// up to 20% jitter.
    #[arg(long, env = "PROVISIOND_RETRY_SCHEDULE", default_value = "5s,30s,2m,10m,30m,1h,3h", value_parser = parse_schedule)]
    pub retry_schedule: Schedule,

    /// Attempts of an AFTER delivery before it is dead.
    #[arg(long, env = "PROVISIOND_MAX_ATTEMPTS", default_value_t = 8)]
    pub max_attempts: u32,

    /// A handler failing without a single success for this long is disabled.
    #[arg(long, env = "PROVISIOND_DISABLE_AFTER", default_value = "5d", value_parser = parse_duration)]
    pub disable_after: Duration,

    /// How long a replica holds claimed deliveries before others may take them over
    /// (added to the handlers' timeouts).
    #[arg(long, env = "PROVISIOND_LEASE", default_value = "30s", value_parser = parse_duration)]
    pub lease: Duration,

    /// Execution-log rows older than this are removed.
    #[arg(long, env = "PROVISIOND_LOG_RETENTION", default_value = "30d", value_parser = parse_duration)]
    pub log_retention: Duration,

    /// Events older than this, once no delivery needs them, are removed, and with them
    /// the memory of their idempotency keys. Independent of the log and of Purge.
    #[arg(long, env = "PROVISIOND_EVENT_RETENTION", default_value = "30d", value_parser = parse_duration)]
    pub event_retention: Duration,

    /// Address of the Prometheus metrics endpoint (`GET /metrics`); off when not set.
    #[arg(long, env = "PROVISIOND_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Address of the web console (the Handlers, Execution Logs and Stats pages and their
    /// JSON API under `/api/`); off when not set. Without --tokens-file it serves
    /// loopback addresses only, as the gRPC listener does.
    #[arg(long, env = "PROVISIOND_CONSOLE_LISTEN")]
    pub console_listen: Option<SocketAddr>,

    /// OTLP/gRPC collector the server's spans are exported to (`http://HOST:4317`,
    /// plaintext); off when not set: without it no exporter, no batch thread.
    #[arg(long, env = "PROVISIOND_OTLP_ENDPOINT", value_parser = parse_otlp_endpoint)]
    pub otlp_endpoint: Option<String>,

    /// Deliveries run at once by this replica.
    #[arg(long, env = "PROVISIOND_CONCURRENCY", default_value_t = 512)]
    pub concurrency: usize,

    /// Largest database connection pool.
    #[arg(long, env = "PROVISIOND_DB_POOL_SIZE", default_value_t = 24)]
    pub db_pool_size: u32,

    /// How often the dispatcher looks for due work when nothing wakes it.
    #[arg(long, env = "PROVISIOND_POLL_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub poll_interval: Duration,

    /// CIDR ranges handlers may reach although a less specific deny entry (built-in or
    /// --outbound-deny) covers them; comma-separated. See the README's Security section.
    #[arg(long, env = "PROVISIOND_OUTBOUND_ALLOW", value_delimiter = ',')]
    pub outbound_allow: Vec<Cidr>,

    /// CIDR ranges handlers must not reach, added to the built-in ones (link-local and
    /// cloud metadata, unspecified, multicast, broadcast); comma-separated.
    #[arg(long, env = "PROVISIOND_OUTBOUND_DENY", value_delimiter = ',')]
    pub outbound_deny: Vec<Cidr>,

    /// Account scripts run as when provisiond runs as root (must exist).
    #[arg(long, env = "PROVISIOND_SCRIPT_USER", default_value = "nobody")]
    pub script_user: String,

    /// Largest gRPC message accepted or sent, in bytes (at least the payload limit plus
    /// 64 KiB).
    #[arg(long, env = "PROVISIOND_MAX_MESSAGE_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_message_bytes: usize,

    /// Handlers (not archived) one event may have; more is FAILED_PRECONDITION.
    #[arg(long, env = "PROVISIOND_MAX_HANDLERS_PER_EVENT", default_value_t = 50)]
    pub max_handlers_per_event: u32,

    /// Extra headers one HTTP handler may carry; more is INVALID_ARGUMENT.
    #[arg(long, env = "PROVISIOND_MAX_HEADERS_PER_HANDLER", default_value_t = 20)]
    pub max_headers_per_handler: usize,

    /// gRPC calls in progress at once, over all connections (open streams count);
    /// more is RESOURCE_EXHAUSTED at once. Health checks are exempt.
    #[arg(
        long,
        env = "PROVISIOND_MAX_CONCURRENT_REQUESTS",
        default_value_t = 1024
    )]
    pub max_concurrent_requests: usize,

    /// HTTP/2 streams one connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
    #[arg(long, env = "PROVISIOND_MAX_CONCURRENT_STREAMS", default_value_t = 256)]
    pub max_concurrent_streams: u32,

    /// Live Tail subscribers at once; more is RESOURCE_EXHAUSTED.
    #[arg(long, env = "PROVISIOND_MAX_TAIL_SUBSCRIBERS", default_value_t = 256)]
    pub max_tail_subscribers: usize,

    /// Interval of HTTP/2 keepalive pings to clients.
    #[arg(long, env = "PROVISIOND_HTTP2_KEEPALIVE_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub http2_keepalive_interval: Duration,

    /// A client not acknowledging a keepalive ping within this time is disconnected.
    #[arg(long, env = "PROVISIOND_HTTP2_KEEPALIVE_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub http2_keepalive_timeout: Duration,

    /// Deadline of a call whose caller sets none (no `grpc-timeout`); a caller's own
    /// deadline, shorter or longer, is kept.
    #[arg(long, env = "PROVISIOND_DEFAULT_DEADLINE", default_value = "60s", value_parser = parse_duration)]
    pub default_deadline: Duration,

    /// PEM certificate chain (leaf first) to serve TLS with; needs --tls-key. Without
    /// it the server speaks plaintext HTTP/2. Re-read on SIGHUP.
    #[arg(
        long,
        env = "PROVISIOND_TLS_CERT",
        requires = "tls_key",
        value_name = "PEM"
    )]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert. Re-read on SIGHUP.
    #[arg(
        long,
        env = "PROVISIOND_TLS_KEY",
        requires = "tls_cert",
        value_name = "PEM"
    )]
    pub tls_key: Option<PathBuf>,

    /// PEM CA bundle: clients must present a certificate signed by one of these CAs
    /// (mutual TLS). Needs --tls-cert. Re-read on SIGHUP.
    #[arg(
        long,
        env = "PROVISIOND_TLS_CLIENT_CA",
        requires = "tls_cert",
        value_name = "PEM"
    )]
    pub tls_client_ca: Option<PathBuf>,

    /// Tokens file (TOML: `[[token]]` and `[[certificate]]` entries with names, roles,
    /// event patterns and token SHA-256 digests), reloaded on SIGHUP and on change.
    /// Without it the server runs in development mode: no authentication, loopback only.
    #[arg(long, env = "PROVISIOND_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,

    /// Allow development mode (no tokens file, every caller is admin) on a non-loopback
    /// address. Never use it on a network others can reach.
    #[arg(long, env = "PROVISIOND_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
}

/// Bytes a gRPC message may hold beyond the event data it carries (other fields,
/// framing): `max_message_bytes` must be at least `max_payload_bytes` plus this.
pub const MESSAGE_HEADROOM_BYTES: usize = 64 * 1024;

/// A retry schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule(pub Vec<Duration>);

impl Config {
    /// The data directory, defaulted.
    pub fn data_dir(&self) -> PathBuf {
        if let Some(dir) = &self.data_dir {
            return dir.clone();
        }
        if unsafe { libc::geteuid() } == 0 {
            return PathBuf::from("/var/lib/provisiond");
        }
        match std::env::var_os("HOME") {
            Some(home) => PathBuf::from(home).join(".local/share/provisiond"),
            None => PathBuf::from(".provisiond"),
        }
    }

    /// The scripts directory, defaulted.
    pub fn scripts_dir(&self) -> PathBuf {
        self.scripts_dir
            .clone()
            .unwrap_or_else(|| self.data_dir().join("scripts"))
    }

    /// The outbound policy: built-in deny entries plus the configured ones.
    pub fn outbound_policy(&self) -> OutboundPolicy {
        OutboundPolicy::new(&self.outbound_allow, &self.outbound_deny)
    }

    /// Checks what flags cannot check one by one.
    pub fn validate(&self) -> Result<(), String> {
        let needed = self
            .max_payload_bytes
            .saturating_add(MESSAGE_HEADROOM_BYTES);
        if self.max_message_bytes < needed {
            return Err(format!(
                "--max-message-bytes {} is below --max-payload-bytes {} plus {} bytes of \
                 headroom: set it to at least {needed}",
                self.max_message_bytes, self.max_payload_bytes, MESSAGE_HEADROOM_BYTES
            ));
        }
        let positive = [
            (
                "--max-handlers-per-event",
                self.max_handlers_per_event as usize,
            ),
            ("--max-concurrent-requests", self.max_concurrent_requests),
            (
                "--max-concurrent-streams",
                self.max_concurrent_streams as usize,
            ),
            ("--max-tail-subscribers", self.max_tail_subscribers),
        ];
        for (flag, value) in positive {
            if value == 0 {
                return Err(format!("{flag} must be at least 1"));
            }
        }
        if self.default_deadline.is_zero() {
            return Err("--default-deadline must be positive".into());
        }
        Ok(())
    }

    /// A configuration with every default, for tests and embedding.
    pub fn defaults() -> Config {
        Config::parse_from(["provisiond"])
    }
}

/// Accepts an `http://host:port` URL (OTLP over plaintext gRPC, as a local collector
/// or agent listens); anything else is refused at start with the reason.
pub fn parse_otlp_endpoint(text: &str) -> Result<String, String> {
    let text = text.trim();
    let uri: http::Uri = text
        .parse()
        .map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        return Err(format!(
            "{text:?}: expected http://HOST:PORT (OTLP over plaintext gRPC, e.g. http://127.0.0.1:4317)"
        ));
    }
    Ok(text.to_owned())
}

/// Parses `500ms`, `5s`, `2m`, `1h`, `5d` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 500ms, 5s, 2m, 1h or 5d"))?;
    let ms = match unit {
        "ms" => n,
        "" | "s" => n * 1000,
        "m" => n * 60_000,
        "h" => n * 3_600_000,
        "d" => n * 86_400_000,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (ms, s, m, h, d)")),
    };
    Ok(Duration::from_millis(ms))
}

fn parse_schedule(text: &str) -> Result<Schedule, String> {
    let delays = text
        .split(',')
        .map(parse_duration)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Schedule(delays))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn otlp_endpoints_must_be_plaintext_grpc_urls() {
        assert_eq!(
            parse_otlp_endpoint(" http://127.0.0.1:4317 "),
            Ok("http://127.0.0.1:4317".to_owned())
        );
        assert!(parse_otlp_endpoint("https://collector:4317").is_err());
        assert!(parse_otlp_endpoint("collector:4317").is_err());
        assert!(parse_otlp_endpoint("not a url").is_err());
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("5d"), Ok(Duration::from_secs(5 * 86_400)));
        assert!(parse_duration("5w").is_err());
        assert!(parse_duration("x").is_err());
    }

    #[test]
    fn the_default_schedule_is_the_documented_one() {
        let config = Config::defaults();
        let secs: Vec<u64> = config
            .retry_schedule
            .0
            .iter()
            .map(Duration::as_secs)
            .collect();
        assert_eq!(secs, [5, 30, 120, 600, 1800, 3600, 10800]);
        assert_eq!(config.listen.to_string(), "127.0.0.1:50051");
        assert_eq!(config.prepared_statements, Statements::Named);
    }

    #[test]
    fn cidr_lists_parse_comma_separated_and_defaults_validate() {
        let config = Config::parse_from([
            "provisiond",
            "--outbound-deny",
            "10.0.0.0/8,fd00::/8",
            "--outbound-allow",
            "169.254.10.0/24",
        ]);
        assert_eq!(config.outbound_deny.len(), 2);
        let policy = config.outbound_policy();
        assert!(policy.check("10.1.1.1".parse().unwrap()).is_err());
        assert!(policy.check("169.254.10.1".parse().unwrap()).is_ok());
        assert!(Config::try_parse_from(["provisiond", "--outbound-deny", "10.0.0.1/8"]).is_err());
        assert_eq!(Config::defaults().validate(), Ok(()));
        assert_eq!(Config::defaults().script_user, "nobody");
    }

    #[test]
    fn a_listen_url_needs_a_database_url_and_unnamed_statements_parse() {
        assert!(
            Config::try_parse_from(["provisiond", "--listen-database-url", "postgres://x/y"])
                .is_err()
        );
        let config = Config::parse_from([
            "provisiond",
            "--database-url",
            "postgres://pooler/db",
            "--listen-database-url",
            "postgres://direct/db",
            "--prepared-statements",
            "unnamed",
        ]);
        assert_eq!(
            config.listen_database_url.as_deref(),
            Some("postgres://direct/db")
        );
        assert_eq!(config.prepared_statements, Statements::Unnamed);
    }

    #[test]
    fn the_message_limit_must_hold_a_payload() {
        let mut config = Config::defaults();
        config.max_message_bytes = config.max_payload_bytes;
        assert!(config
            .validate()
            .unwrap_err()
            .contains("--max-message-bytes"));
        config.max_message_bytes = config.max_payload_bytes + MESSAGE_HEADROOM_BYTES;
        assert_eq!(config.validate(), Ok(()));
        config.max_tail_subscribers = 0;
        assert!(config
            .validate()
            .unwrap_err()
            .contains("--max-tail-subscribers"));
    }
}
