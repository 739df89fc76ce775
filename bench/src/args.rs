//! Command-line flags and the sizes they resolve to.
//!
//! Flags are parsed once into [`Args`] and turned into [`Settings`], the only thing the
//! scenarios read: `--smoke` replaces every size with a tiny one there, so no scenario
//! needs to know about smoke runs.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// `provisioning-bench` flags.
#[derive(Debug, Parser)]
#[command(
    name = "provisioning-bench",
    about = "Measures the Provisioning API: starts PostgreSQL, the release server and an HTTP \
             sink, runs the chosen scenarios, prints a table and appends JSON lines to a file."
)]
pub struct Args {
    /// `all`, or a comma-separated list of: ingest-unary, ingest-batch, ingest-stream,
    /// deliver, before, search, backlog, ordered, replicas.
    #[arg(long, default_value = "all")]
    pub scenarios: String,

    /// Events emitted by each ingest scenario, by the delivery saturation run and by
    /// each round of the replicas scenario (the storage baseline inserts as many).
    #[arg(long, default_value_t = 100_000)]
    pub events: u64,

    /// AFTER events that pile up while the sink is down in the backlog scenario
    /// (default: twice --events).
    #[arg(long)]
    pub backlog_events: Option<u64>,

    /// Execution-log rows generated for the search scenario.
    #[arg(long, default_value_t = 10_000_000)]
    pub search_rows: u64,

    /// Concurrent emitters of ingest-unary and connections of the HTTP baseline.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,

    /// Use this PostgreSQL server (a `postgres://` URL whose role may create databases)
    /// instead of an embedded cluster in a temporary directory. A fresh database is
    /// created for every scenario and dropped after it.
    #[arg(long)]
    pub database_url: Option<String>,

    /// File the results are appended to, one JSON object per metric.
    #[arg(long, default_value = "bench-results.jsonl")]
    pub results: PathBuf,

    /// Tiny sizes so every scenario runs in seconds; only checks that each scenario
    /// completes and produces numbers.
    #[arg(long)]
    pub smoke: bool,

    /// Offered rate of the paced latency runs (delivery, BEFORE chain), calls/s.
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,

    /// Length of each paced latency run, seconds.
    #[arg(long, default_value_t = 5)]
    pub latency_secs: u64,

    /// Closed-loop callers of the BEFORE chain.
    #[arg(long, default_value_t = 16)]
    pub before_tasks: usize,

    /// Length of the timed runs (BEFORE chain, sink baselines), seconds.
    #[arg(long, default_value_t = 5)]
    pub duration_secs: u64,
}

/// A measured scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// AFTER Emit from many concurrent tasks.
    IngestUnary,
    /// EmitBatch of 500 events from a few callers.
    IngestBatch,
    /// EmitStream with a window of in-flight events.
    IngestStream,
    /// Emit → sink arrival: saturation rate and latency at a fixed rate.
    Deliver,
    /// BEFORE Emit through a chain of three HTTP handlers.
    Before,
    /// First page of each advanced-search filter over a large log.
    Search,
    /// A backlog of failed AFTER deliveries drained once the sink comes back.
    Backlog,
    /// Delivery over 1,000 ordering keys next to unkeyed delivery.
    Ordered,
    /// 1, 2 and 3 servers on one database sharing the AFTER load.
    Replicas,
}

impl Scenario {
    /// Every scenario, in run order.
    pub const ALL: [Scenario; 9] = [
        Scenario::IngestUnary,
        Scenario::IngestBatch,
        Scenario::IngestStream,
        Scenario::Deliver,
        Scenario::Before,
        Scenario::Search,
        Scenario::Backlog,
        Scenario::Ordered,
        Scenario::Replicas,
    ];

    /// The name used on the command line and in the results.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::IngestUnary => "ingest-unary",
            Scenario::IngestBatch => "ingest-batch",
            Scenario::IngestStream => "ingest-stream",
            Scenario::Deliver => "deliver",
            Scenario::Before => "before",
            Scenario::Search => "search",
            Scenario::Backlog => "backlog",
            Scenario::Ordered => "ordered",
            Scenario::Replicas => "replicas",
        }
    }

    /// Compared with the storage baseline (rows PostgreSQL can take through a pool).
    pub fn needs_storage_baseline(self) -> bool {
        matches!(
            self,
            Scenario::IngestUnary | Scenario::IngestBatch | Scenario::IngestStream
        )
    }

    /// Compared with the HTTP baseline (requests/s a plain client gets from the sink).
    pub fn needs_http_baseline(self) -> bool {
        matches!(
            self,
            Scenario::Deliver | Scenario::Backlog | Scenario::Replicas
        )
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Parses `all` or a comma-separated list; keeps the canonical order, drops repeats.
pub fn parse_scenarios(text: &str) -> Result<Vec<Scenario>, String> {
    let mut wanted = Vec::new();
    for name in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if name == "all" {
            wanted.extend(Scenario::ALL);
            continue;
        }
        let scenario = Scenario::ALL
            .into_iter()
            .find(|s| s.name() == name)
            .ok_or_else(|| {
                let known: Vec<&str> = Scenario::ALL.iter().map(|s| s.name()).collect();
                format!("unknown scenario {name:?} (all, {})", known.join(", "))
            })?;
        wanted.push(scenario);
    }
    if wanted.is_empty() {
        return Err("no scenario given".into());
    }
    Ok(Scenario::ALL
        .into_iter()
        .filter(|s| wanted.contains(s))
        .collect())
}

/// Everything a run needs, with `--smoke` applied.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Scenarios to run, in order.
    pub scenarios: Vec<Scenario>,
    /// Events per ingest scenario and per saturation run.
    pub events: u64,
    /// Events of the backlog scenario.
    pub backlog_events: u64,
    /// Generated execution-log rows.
    pub search_rows: u64,
    /// Concurrent unary emitters; connections of the HTTP baseline.
    pub concurrency: usize,
    /// External PostgreSQL, if any.
    pub database_url: Option<String>,
    /// JSON-lines results file.
    pub results: PathBuf,
    /// Smoke run (tiny sizes).
    pub smoke: bool,
    /// Offered rate of the paced latency runs, calls/s.
    pub rate: u32,
    /// Length of each paced latency run.
    pub latency_run: Duration,
    /// Length of the timed runs.
    pub timed_run: Duration,
    /// Events per EmitBatch call.
    pub batch_size: usize,
    /// Concurrent EmitBatch callers.
    pub batch_callers: usize,
    /// Concurrent EmitStream streams.
    pub streams: usize,
    /// Events in flight (sent, not yet acknowledged) per stream.
    pub stream_window: usize,
    /// Concurrent BEFORE emitters (and direct sink callers compared with them).
    pub before_tasks: usize,
    /// Timings per search filter.
    pub search_repeats: usize,
    /// Page size of the timed searches.
    pub search_limit: u32,
    /// Threads of the storage baseline.
    pub storage_threads: usize,
}

impl Settings {
    /// Resolves the flags.
    pub fn from_args(args: Args) -> Result<Settings, String> {
        let scenarios = parse_scenarios(&args.scenarios)?;
        if args.concurrency == 0 || args.rate == 0 {
            return Err("--concurrency and --rate must be positive".into());
        }
        if args.events == 0 || args.search_rows == 0 || args.backlog_events == Some(0) {
            return Err("--events, --search-rows and --backlog-events must be positive".into());
        }
        let mut settings = Settings {
            scenarios,
            events: args.events,
            backlog_events: args
                .backlog_events
                .unwrap_or_else(|| args.events.saturating_mul(2)),
            search_rows: args.search_rows,
            concurrency: args.concurrency,
            database_url: args.database_url,
            results: args.results,
            smoke: args.smoke,
            rate: args.rate,
            latency_run: Duration::from_secs(args.latency_secs.max(1)),
            timed_run: Duration::from_secs(args.duration_secs.max(1)),
            batch_size: 500,
            batch_callers: 4,
            streams: 4,
            stream_window: 1024,
            before_tasks: args.before_tasks.max(1),
            search_repeats: 20,
            search_limit: 50,
            storage_threads: 4,
        };
        if settings.smoke {
            settings.events = 200;
            settings.backlog_events = 400;
            settings.search_rows = 20_000;
            settings.latency_run = Duration::from_secs(2);
            settings.timed_run = Duration::from_secs(1);
        }
        Ok(settings)
    }

    /// The sizes, for the results file.
    pub fn params(&self) -> serde_json::Value {
        serde_json::json!({
            "events": self.events,
            "backlog_events": self.backlog_events,
            "search_rows": self.search_rows,
            "concurrency": self.concurrency,
            "rate": self.rate,
            "latency_run_s": self.latency_run.as_secs_f64(),
            "timed_run_s": self.timed_run.as_secs_f64(),
            "batch_size": self.batch_size,
            "batch_callers": self.batch_callers,
            "streams": self.streams,
            "stream_window": self.stream_window,
            "before_tasks": self.before_tasks,
            "smoke": self.smoke,
            "database": if self.database_url.is_some() { "external" } else { "embedded" },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenario_lists_keep_canonical_order_and_reject_unknown_names() {
        assert_eq!(parse_scenarios("all").unwrap(), Scenario::ALL.to_vec());
        assert_eq!(
            parse_scenarios("search, ingest-unary,search").unwrap(),
            vec![Scenario::IngestUnary, Scenario::Search]
        );
        assert!(parse_scenarios("ingest").unwrap_err().contains("unknown"));
        assert!(parse_scenarios(",").is_err());
    }

    #[test]
    fn smoke_shrinks_every_size() {
        let args = Args::parse_from(["provisioning-bench", "--smoke", "--events", "1000000"]);
        let settings = Settings::from_args(args).unwrap();
        assert_eq!(settings.events, 200);
        assert_eq!(settings.backlog_events, 400);
        assert_eq!(settings.search_rows, 20_000);
        assert_eq!(settings.latency_run, Duration::from_secs(2));
    }
}
