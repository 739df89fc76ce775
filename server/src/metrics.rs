//! Prometheus metrics: the counters and histograms the request and delivery paths
//! update, the gauges read when scraped (deliveries due and the oldest one's age, the
//! pool, tails), and the HTTP endpoint (`--metrics-listen`) serving them in the
//! Prometheus text format through `prometheus-client`.
//!
//! One [`Metrics`] per server instance, passed to those who update it (never a
//! global: tests run several servers in one process). Labels stay bounded: event names
//! come from the catalogue (a refused request is counted without its event), handlers
//! by id, never URLs or data.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::db::queries::deliveries;
use crate::db::{Db, DbError};
use crate::domain::logs::LogStore;
use crate::shutdown::Shutdown;

/// How long a scrape waits for the database before serving the last known figures.
const SCRAPE_QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// Labels of an emitted event.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EmitLabels {
    /// Event name (empty when the request was refused before its event was checked).
    pub event: String,
    /// `before` / `after`.
    pub phase: &'static str,
    /// `accepted`, `duplicate`, `allowed`, `forbidden`, or the gRPC code of a refusal
    /// (`invalid_argument`, `unavailable`, ...).
    pub result: &'static str,
}

/// Labels of one handler run.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabels {
    /// Handler id.
    pub handler_id: i64,
    /// `before` / `after`.
    pub phase: &'static str,
    /// `success`, `retry` (failed, tried again later), `dead` (failed, given up), `gone`
    /// (410: handler disabled) or `fail` (a BEFORE run that failed).
    pub outcome: &'static str,
}

/// Labels by phase only.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    /// `before` / `after`.
    pub phase: &'static str,
}

/// Every metric of one server.
pub struct Metrics {
    registry: Registry,
    /// Events emitted, by event, phase and result.
    pub emitted: Family<EmitLabels, Counter>,
    /// Handler runs, by handler, phase and outcome.
    pub attempts: Family<AttemptLabels, Counter>,
    /// Duration of handler runs, by phase.
    pub attempt_seconds: Family<PhaseLabels, Histogram>,
    /// Events stored per ingest commit.
    pub group_commit_events: Histogram,
    /// Handlers disabled automatically (failing too long, or 410 Gone).
    pub handlers_auto_disabled: Counter,
    deliveries_due: Gauge,
    oldest_due_seconds: Gauge<f64, AtomicU64>,
    pool_in_use: Gauge,
    pool_idle: Gauge,
    pool_waiting: Gauge,
    tail_subscribers: Gauge,
    database_up: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Every metric at zero, registered under `provisioning_`.
    pub fn new() -> Metrics {
        let mut root = Registry::default();
        let registry = root.sub_registry_with_prefix("provisioning");
        let emitted = Family::<EmitLabels, Counter>::default();
        registry.register(
            "events_emitted",
            "Events emitted, by event, phase and result",
            emitted.clone(),
        );
        let attempts = Family::<AttemptLabels, Counter>::default();
        registry.register(
            "handler_runs",
            "Handler runs (BEFORE runs and AFTER delivery attempts), by handler, phase and outcome",
            attempts.clone(),
        );
        let attempt_seconds = Family::<PhaseLabels, Histogram>::new_with_constructor(
            run_duration_histogram as fn() -> Histogram,
        );
        registry.register(
            "handler_run_duration_seconds",
            "Duration of handler runs, by phase",
            attempt_seconds.clone(),
        );
        let group_commit_events = Histogram::new(exponential_buckets(1.0, 2.0, 12));
        registry.register(
            "ingest_group_commit_events",
            "AFTER events stored per ingest commit",
            group_commit_events.clone(),
        );
        let handlers_auto_disabled = Counter::default();
        registry.register(
            "handlers_auto_disabled",
            "Handlers disabled automatically (failing for too long, or 410 Gone)",
            handlers_auto_disabled.clone(),
        );
        let deliveries_due = Gauge::default();
        registry.register(
            "deliveries_due",
            "AFTER deliveries due now and not running (all replicas)",
            deliveries_due.clone(),
        );
        let oldest_due_seconds = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "oldest_due_delivery_age_seconds",
            "How long the oldest due delivery has been waiting (0 when none is due)",
            oldest_due_seconds.clone(),
        );
        let pool_in_use = Gauge::default();
        registry.register(
            "db_pool_connections_in_use",
            "Pooled database connections in use",
            pool_in_use.clone(),
        );
        let pool_idle = Gauge::default();
        registry.register(
            "db_pool_connections_idle",
            "Pooled database connections idle",
            pool_idle.clone(),
        );
        let pool_waiting = Gauge::default();
        registry.register(
            "db_pool_waiting",
            "Callers waiting for a pooled database connection",
            pool_waiting.clone(),
        );
        let tail_subscribers = Gauge::default();
        registry.register(
            "tail_subscribers",
            "Open Tail streams",
            tail_subscribers.clone(),
        );
        let database_up = Gauge::default();
        registry.register(
            "database_up",
            "1 when the last scrape could read the database, else 0",
            database_up.clone(),
        );
        Metrics {
            registry: root,
            emitted,
            attempts,
            attempt_seconds,
            group_commit_events,
            handlers_auto_disabled,
            deliveries_due,
            oldest_due_seconds,
            pool_in_use,
            pool_idle,
            pool_waiting,
            tail_subscribers,
            database_up,
        }
    }

    /// Counts one emitted event.
    pub fn emitted(&self, event: &str, phase: &'static str, result: &'static str) {
        self.emitted
            .get_or_create(&EmitLabels {
                event: event.to_owned(),
                phase,
                result,
            })
            .inc();
    }

    /// Counts one handler run and its duration.
    pub fn handler_run(
        &self,
        handler_id: i64,
        phase: &'static str,
        outcome: &'static str,
        duration: Duration,
    ) {
        self.attempts
            .get_or_create(&AttemptLabels {
                handler_id,
                phase,
                outcome,
            })
            .inc();
        self.attempt_seconds
            .get_or_create(&PhaseLabels { phase })
            .observe(duration.as_secs_f64());
    }

    /// The text exposition of every metric, after reading the gauges.
    pub async fn scrape(&self, db: &Db, logs: &LogStore) -> String {
        let pool = db.pool_stats();
        self.pool_in_use
            .set(i64::from(pool.connections - pool.idle));
        self.pool_idle.set(i64::from(pool.idle));
        self.pool_waiting.set(pool.waiting as i64);
        self.tail_subscribers.set(logs.tail_count() as i64);
        let due = tokio::time::timeout(
            SCRAPE_QUERY_TIMEOUT,
            db.run(|conn| deliveries::due_summary(conn).map_err(DbError::from)),
        )
        .await;
        match due {
            Ok(Ok(due)) => {
                self.deliveries_due.set(due.count);
                self.oldest_due_seconds.set(due.oldest_age_seconds);
                self.database_up.set(1);
            }
            Ok(Err(_)) | Err(_) => {
                self.database_up.set(0);
            }
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// Buckets from 1 ms to about 33 s.
fn run_duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Serves `GET /metrics` on `listener` until shutdown.
pub fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    db: Db,
    logs: LogStore,
    shutdown: &Shutdown,
) {
    crate::side_http::serve(listener, "metrics endpoint", shutdown, move |request| {
        let (metrics, db, logs) = (metrics.clone(), db.clone(), logs.clone());
        async move { answer(request, &metrics, &db, &logs).await }
    });
}

async fn answer(
    request: Request<hyper::body::Incoming>,
    metrics: &Metrics,
    db: &Db,
    logs: &LogStore,
) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &'static str, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(content_type),
        );
        response
    };
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.scrape(db, logs).await,
        ),
        (_, "/metrics") => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "use GET\n".into(),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "metrics are at /metrics\n".into(),
        ),
    }
}
