//! BEFORE chain: Emit phase BEFORE with three enabled HTTP handlers (priorities 1, 2, 3)
//! on the sink, measured two ways, each next to the same three sequential POSTs sent to
//! the sink directly by a plain hyper client (what the chain costs with no server in
//! between; the difference of the percentiles is the server's overhead: gRPC,
//! validation, handler lookup, signing, logging):
//!
//! - at a fixed offered rate (`--rate`/s for `--latency-secs`, open loop), the latency a
//!   caller sees when the machine is not saturated;
//! - at saturation, from `--before-tasks` closed-loop callers for `--duration-secs`:
//!   calls/s, and latency that is mostly queueing for the two cores.

use std::time::Duration;

use provisioning_client::{proto, Client};

use super::{clients, emit_request, event_data, http_handler, Ctx};
use crate::load::{closed_loop, paced, PacedCall};
use crate::report::{per_second, percentile_ms, Metric};
use crate::sink::{self, PlainClient};

const NAME: &str = "before";
const CHAIN: usize = 3;
const DIRECT: &str = "sink direct: plain hyper client, 3 sequential POSTs per sample";

/// Runs the paced and the saturated measurements.
pub async fn run(ctx: &Ctx<'_>) -> anyhow::Result<Vec<Metric>> {
    let s = ctx.settings;
    let clients = clients(ctx.server).await?;
    for priority in 1..=CHAIN as i32 {
        let name = format!("bench before {priority}");
        http_handler(
            &clients[0],
            &name,
            proto::Phase::Before,
            priority,
            &ctx.sink.url(),
        )
        .await?;
    }
    let direct = PlainClient::new(&ctx.sink.url(), &event_data(1), s.before_tasks)?;
    sink::warm_up(&direct, s.before_tasks).await?;
    // Warm-up: connections to the sink and the server's caches.
    run_chain(&clients, s.before_tasks, Duration::from_millis(300)).await?;

    let mut metrics = at_rate(ctx, &clients, &direct).await?;
    metrics.extend(at_saturation(ctx, &clients).await?);
    Ok(metrics)
}

/// Chain and direct calls offered at `--rate`/s.
async fn at_rate(
    ctx: &Ctx<'_>,
    clients: &[Client],
    direct: &PlainClient,
) -> anyhow::Result<Vec<Metric>> {
    let s = ctx.settings;
    let count = (u64::from(s.rate) * s.latency_run.as_secs()).max(1);
    let (chain, offered) = paced(s.rate, count, |i| {
        let client = clients[i as usize % clients.len()].clone();
        async move { call_chain(&client, i).await }
    })
    .await?;
    let (direct, _) = paced(s.rate, count, |_| {
        let direct = direct.clone();
        async move {
            for _ in 0..CHAIN {
                direct.post().await?;
            }
            anyhow::Ok(())
        }
    })
    .await?;
    let sorted = |calls: Vec<PacedCall<()>>| {
        let mut took: Vec<Duration> = calls.into_iter().map(|c| c.took).collect();
        took.sort_unstable();
        took
    };
    let (chain, direct) = (sorted(chain), sorted(direct));
    let rate = s.rate;
    let (c50, c99) = (percentile_ms(&chain, 50.0), percentile_ms(&chain, 99.0));
    let (d50, d99) = (percentile_ms(&direct, 50.0), percentile_ms(&direct, 99.0));
    Ok(vec![
        Metric::new(
            NAME,
            format!("chain of 3 @{rate}/s: latency p50"),
            c50,
            "ms",
        )
        .baseline(Some(d50), DIRECT)
        .note(format!(
            "{count} calls offered at {offered:.0}/s, and as many direct samples"
        )),
        Metric::new(
            NAME,
            format!("chain of 3 @{rate}/s: latency p99"),
            c99,
            "ms",
        )
        .baseline(Some(d99), DIRECT),
        Metric::new(NAME, format!("overhead p50 @{rate}/s"), c50 - d50, "ms"),
        Metric::new(NAME, format!("overhead p99 @{rate}/s"), c99 - d99, "ms"),
    ])
}

/// Closed-loop callers for `--duration-secs`, chain then direct.
async fn at_saturation(ctx: &Ctx<'_>, clients: &[Client]) -> anyhow::Result<Vec<Metric>> {
    let s = ctx.settings;
    let (chain, chain_elapsed) = run_chain(clients, s.before_tasks, s.timed_run).await?;
    let (direct, direct_elapsed) = sink::sequential_latency(
        &ctx.sink.url(),
        &event_data(1),
        s.before_tasks,
        CHAIN,
        s.timed_run,
    )
    .await?;
    anyhow::ensure!(!chain.is_empty() && !direct.is_empty(), "no samples");

    let chain_rate = per_second(chain.len() as u64, chain_elapsed);
    let direct_rate = per_second(direct.len() as u64, direct_elapsed);
    let (c50, c99) = (percentile_ms(&chain, 50.0), percentile_ms(&chain, 99.0));
    let (d50, d99) = (percentile_ms(&direct, 50.0), percentile_ms(&direct, 99.0));
    let tasks = s.before_tasks;
    Ok(vec![
        Metric::new(NAME, "saturation: calls", chain_rate, "calls/s")
            .baseline(Some(direct_rate), DIRECT)
            .note(format!("{tasks} closed-loop tasks, {} calls", chain.len())),
        Metric::new(NAME, "saturation: latency p50", c50, "ms").baseline(Some(d50), DIRECT),
        Metric::new(NAME, "saturation: latency p99", c99, "ms").baseline(Some(d99), DIRECT),
        Metric::new(NAME, "saturation: overhead p99", c99 - d99, "ms"),
    ])
}

/// One BEFORE Emit, which must be allowed with three handler results.
async fn call_chain(client: &Client, i: u64) -> anyhow::Result<()> {
    let reply = client.emit(emit_request(i, proto::Phase::Before)).await?;
    anyhow::ensure!(
        reply.decision == proto::Decision::Allowed as i32 && reply.results.len() == CHAIN,
        "unexpected BEFORE reply: decision {}, reason {:?}, {} results",
        reply.decision,
        reply.reason,
        reply.results.len()
    );
    Ok(())
}

/// BEFORE Emits from `tasks` closed-loop tasks for `duration`; sorted latencies and the
/// elapsed time.
async fn run_chain(
    clients: &[Client],
    tasks: usize,
    duration: Duration,
) -> anyhow::Result<(Vec<Duration>, Duration)> {
    let clients = clients.to_vec();
    closed_loop(tasks, duration, move |task, n| {
        let client = clients[task % clients.len()].clone();
        // Task t emits events t, t + tasks, t + 2 * tasks, …
        async move { call_chain(&client, task as u64 + n * tasks as u64).await }
    })
    .await
}
