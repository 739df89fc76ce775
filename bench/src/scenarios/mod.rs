//! The scenarios and what they share: the context one scenario runs in (its own
//! server on its own fresh database, the shared sink, the baselines), the event data,
//! handler set-up through the client, and batched emission.
//!
//! A scenario returns its metrics or an error; it never prints. Server RSS is added by
//! the caller after the scenario, from the same server.

pub mod backlog;
pub mod before;
pub mod deliver;
pub mod ingest;
pub mod ordered;
pub mod replicas;
pub mod search;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use provisioning_client::{proto, Client};

use crate::args::{Scenario, Settings};
use crate::database::{Databases, FreshDb};
use crate::report::Metric;
use crate::server::Server;
use crate::sink::Sink;

/// Event every benchmark handler listens to.
pub const EVENT: &str = "accounts.create";
/// gRPC connections each scenario spreads its calls over.
const CHANNELS: usize = 4;

/// The limits measured before the scenarios.
#[derive(Debug, Clone, Copy, Default)]
pub struct Baselines {
    /// Events (+ one delivery each) per second PostgreSQL takes through a pool.
    pub storage: Option<f64>,
    /// Requests per second a plain hyper client gets from the sink.
    pub http: Option<f64>,
}

/// What a scenario runs against.
pub struct Ctx<'a> {
    /// Sizes.
    pub settings: &'a Settings,
    /// The sink handlers post to; reset before the scenario starts.
    pub sink: &'a Sink,
    /// The server of this scenario.
    pub server: &'a Server,
    /// Its database (for the search scenario's direct fill).
    pub db: &'a FreshDb,
    /// Limits to compare with.
    pub baselines: Baselines,
    /// Where fresh databases come from (for scenarios that need more than one).
    pub databases: &'a Databases,
    /// The server binary (for scenarios that start servers of their own).
    pub binary: &'a Path,
    /// The run's temporary directory (server logs, scripts directory).
    pub workdir: &'a Path,
}

/// Runs one scenario.
pub async fn run(scenario: Scenario, ctx: &Ctx<'_>) -> anyhow::Result<Vec<Metric>> {
    match scenario {
        Scenario::IngestUnary => ingest::unary(ctx).await,
        Scenario::IngestBatch => ingest::batch(ctx).await,
        Scenario::IngestStream => ingest::stream(ctx).await,
        Scenario::Deliver => deliver::run(ctx).await,
        Scenario::Before => before::run(ctx).await,
        Scenario::Search => search::run(ctx).await,
        Scenario::Backlog => backlog::run(ctx).await,
        Scenario::Ordered => ordered::run(ctx).await,
        Scenario::Replicas => replicas::run(ctx).await,
    }
}

/// Flags a scenario adds to its server's command line.
pub fn server_flags(scenario: Scenario, settings: &Settings) -> Vec<String> {
    match scenario {
        Scenario::Backlog => backlog::server_flags(settings),
        Scenario::IngestUnary
        | Scenario::IngestBatch
        | Scenario::IngestStream
        | Scenario::Deliver
        | Scenario::Before
        | Scenario::Search
        | Scenario::Ordered
        | Scenario::Replicas => Vec::new(),
    }
}

/// Data of the `i`-th event: a small account object, like the seeds' examples.
pub fn event_data(i: u64) -> String {
    format!(
        r#"{{"id": {i}, "id_clients": {}, "accname": "acc-{i}", "name": "Account {i}"}}"#,
        i % 97
    )
}

/// The `i`-th event in `phase`.
pub fn emit_request(i: u64, phase: proto::Phase) -> proto::EmitRequest {
    proto::EmitRequest {
        event: EVENT.into(),
        phase: phase.into(),
        data_json: event_data(i),
        idempotency_key: String::new(),
        ordering_key: String::new(),
    }
}

/// [`CHANNELS`] clients, each on its own connection.
pub async fn clients(server: &Server) -> anyhow::Result<Vec<Client>> {
    let mut clients = Vec::with_capacity(CHANNELS);
    for _ in 0..CHANNELS {
        clients.push(server.client().await?);
    }
    Ok(clients)
}

/// [`clients`] of the scenario's server, which gets one enabled AFTER HTTP handler on
/// the sink: every AFTER event emitted creates one delivery.
pub async fn clients_with_after_handler(ctx: &Ctx<'_>) -> anyhow::Result<Vec<Client>> {
    let clients = clients(ctx.server).await?;
    http_handler(
        &clients[0],
        "bench after",
        proto::Phase::After,
        0,
        &ctx.sink.url(),
    )
    .await?;
    Ok(clients)
}

/// Registers an enabled HTTP handler of [`EVENT`] posting to `url`; returns its id.
pub async fn http_handler(
    client: &Client,
    name: &str,
    phase: proto::Phase,
    priority: i32,
    url: &str,
) -> anyhow::Result<i64> {
    let handler = client
        .create_handler(proto::CreateHandlerRequest {
            name: name.into(),
            event: EVENT.into(),
            phase: phase.into(),
            priority,
            target: Some(proto::create_handler_request::Target::Http(
                proto::HttpTarget {
                    url: url.into(),
                    ..Default::default()
                },
            )),
            ..Default::default()
        })
        .await?;
    Ok(handler.id)
}

/// How long `events` deliveries may take. Generous: a slow machine must still finish,
/// a stuck server must not hang CI.
pub fn delivery_timeout(events: usize) -> Duration {
    Duration::from_secs(60).max(Duration::from_millis(events as u64 * 2))
}

/// Waits (at most [`delivery_timeout`]) until the sink has every one of `ids` and
/// returns the time from `start` (the first emit) to the last arrival.
pub async fn delivered_since(sink: &Sink, ids: &[i64], start: Instant) -> anyhow::Result<Duration> {
    let timeout = delivery_timeout(ids.len());
    let missing = sink.wait_for(ids, timeout).await;
    anyhow::ensure!(
        missing == 0,
        "{missing} of {} events not delivered within {timeout:?}",
        ids.len()
    );
    let last = sink
        .arrivals_of(ids)
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(start);
    Ok(last.saturating_duration_since(start))
}

/// Emits events `0..total` (AFTER) through EmitBatch calls of `batch_size` events from
/// `callers` concurrent tasks; returns the event ids (in no particular order).
pub async fn emit_batches(
    clients: &[Client],
    total: u64,
    batch_size: usize,
    callers: usize,
) -> anyhow::Result<Vec<i64>> {
    emit_batches_keyed(clients, total, batch_size, callers, 0).await
}

/// [`emit_batches`], event `i` with the ordering key `key-{i % keys}` (none when `keys`
/// is 0).
pub async fn emit_batches_keyed(
    clients: &[Client],
    total: u64,
    batch_size: usize,
    callers: usize,
    keys: u64,
) -> anyhow::Result<Vec<i64>> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for caller in 0..callers {
        let client = clients[caller % clients.len()].clone();
        let next = next.clone();
        tasks.spawn(async move {
            let mut ids = Vec::new();
            loop {
                let first = next.fetch_add(batch_size as u64, Ordering::Relaxed);
                if first >= total {
                    return anyhow::Ok(ids);
                }
                let last = (first + batch_size as u64).min(total);
                let events = (first..last)
                    .map(|i| {
                        let mut request = emit_request(i, proto::Phase::After);
                        if keys > 0 {
                            request.ordering_key = format!("key-{}", i % keys);
                        }
                        request
                    })
                    .collect();
                let reply = client
                    .emit_batch(proto::EmitBatchRequest { events })
                    .await?;
                anyhow::ensure!(
                    reply.acks.len() as u64 == last - first,
                    "EmitBatch acknowledged {} of {} events",
                    reply.acks.len(),
                    last - first
                );
                ids.extend(reply.acks.iter().map(|a| a.event_id));
            }
        });
    }
    let mut ids = Vec::with_capacity(total as usize);
    while let Some(done) = tasks.join_next().await {
        ids.extend(done??);
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_data_is_a_json_object() {
        let value: serde_json::Value = serde_json::from_str(&event_data(1234)).unwrap();
        assert_eq!(value["id_clients"], 1234 % 97);
        assert_eq!(value["accname"], "acc-1234");
    }
}
