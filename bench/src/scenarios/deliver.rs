//! Delivery, end to end: emit → stored → handed to the worker (or claimed) → POSTed to
//! the sink.
//!
//! (a) Latency at a fixed offered rate: unary Emits paced by a tokio interval
//! (`--rate`/s for `--latency-secs`); each latency is the sink's first arrival of the
//! event id minus the `Instant` taken just before its Emit, so it includes the
//! durable commit and the POST.
//! (b) Saturation: `--events` AFTER events emitted as fast as EmitBatch takes them; the
//! rate is events / (last arrival − first emit), compared with the HTTP baseline.

use std::time::{Duration, Instant};

use provisioning_client::proto;

use super::{clients_with_after_handler, delivered_since, emit_batches_keyed, emit_request, Ctx};
use crate::load::paced;
use crate::report::{per_second, percentile_ms, Metric};

const NAME: &str = "deliver";

/// Runs both parts.
pub async fn run(ctx: &Ctx<'_>) -> anyhow::Result<Vec<Metric>> {
    let clients = clients_with_after_handler(ctx).await?;
    // Latency first, on the fresh server: after the saturation run the database is
    // busy for a while (autovacuum, checkpoint) with what that run left behind.
    let mut metrics = latency(ctx, &clients).await?;
    metrics.extend(saturation(ctx, &clients).await?);
    Ok(metrics)
}

async fn saturation(
    ctx: &Ctx<'_>,
    clients: &[provisioning_client::Client],
) -> anyhow::Result<Vec<Metric>> {
    let (rate, note) = drain_rate(ctx, clients, 0).await?;
    Ok(vec![Metric::new(
        NAME,
        "saturation: delivered",
        rate,
        "events/s",
    )
    .baseline(
        ctx.baselines.http,
        "HTTP limit: plain hyper client → sink, requests/s",
    )
    .note(note)])
}

/// `--events` AFTER events emitted as fast as EmitBatch takes them (spread over `keys`
/// ordering keys, none when 0) and delivered to the sink: events / (last arrival −
/// first emit), with a note on how it went.
pub async fn drain_rate(
    ctx: &Ctx<'_>,
    clients: &[provisioning_client::Client],
    keys: u64,
) -> anyhow::Result<(f64, String)> {
    let s = ctx.settings;
    ctx.sink.reset();
    let posts_before = ctx.sink.requests();
    let start = Instant::now();
    let ids = emit_batches_keyed(clients, s.events, s.batch_size, s.batch_callers, keys).await?;
    let emitted = start.elapsed();
    let elapsed = delivered_since(ctx.sink, &ids, start).await?;
    let posts = ctx.sink.requests() - posts_before;
    let note = format!(
        "{} events via EmitBatch (emitted in {:.2} s), first emit → last arrival {:.2} s, \
         {posts} POSTs received",
        ids.len(),
        emitted.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    Ok((per_second(ids.len() as u64, elapsed), note))
}

async fn latency(
    ctx: &Ctx<'_>,
    clients: &[provisioning_client::Client],
) -> anyhow::Result<Vec<Metric>> {
    let s = ctx.settings;
    ctx.sink.reset();
    let count = (u64::from(s.rate) * s.latency_run.as_secs()).max(1);
    let (sent, offered) = paced(s.rate, count, |i| {
        let client = clients[i as usize % clients.len()].clone();
        async move {
            let reply = client
                .emit(emit_request(1_000_000_000 + i, proto::Phase::After))
                .await?;
            anyhow::Ok(reply.event_id)
        }
    })
    .await?;
    let ids: Vec<i64> = sent.iter().map(|call| call.output).collect();
    let missing = ctx.sink.wait_for(&ids, Duration::from_secs(60)).await;
    anyhow::ensure!(
        missing == 0,
        "{missing} of {} events not delivered within 60 s",
        ids.len()
    );
    let arrivals = ctx.sink.arrivals_of(&ids);
    let mut latencies: Vec<Duration> = sent
        .iter()
        .zip(arrivals)
        .filter_map(|(call, arrived)| Some(arrived?.saturating_duration_since(call.started)))
        .collect();
    latencies.sort_unstable();
    let note = format!(
        "{count} unary Emits offered at {offered:.0}/s for {} s",
        s.latency_run.as_secs()
    );
    Ok(vec![
        Metric::new(
            NAME,
            format!("emit→arrival p50 @{}/s", s.rate),
            percentile_ms(&latencies, 50.0),
            "ms",
        )
        .note(note),
        Metric::new(
            NAME,
            format!("emit→arrival p95 @{}/s", s.rate),
            percentile_ms(&latencies, 95.0),
            "ms",
        ),
        Metric::new(
            NAME,
            format!("emit→arrival p99 @{}/s", s.rate),
            percentile_ms(&latencies, 99.0),
            "ms",
        ),
        Metric::new(
            NAME,
            format!("emit→arrival max @{}/s", s.rate),
            percentile_ms(&latencies, 100.0),
            "ms",
        ),
    ])
}
