//! BEFORE chain: Emit phase BEFORE with three enabled HTTP handlers (priorities 1, 2, 3)
//! on the sink, from a fixed number of closed-loop tasks for `--duration-secs`.
//!
//! Next to it, the same tasks call the sink directly with a plain hyper client, three
//! sequential POSTs per sample: what the chain costs with no server in between. The
//! difference of the percentiles is the server's overhead (gRPC, validation, handler
//! lookup, signing, logging).

use std::time::{Duration, Instant};

use provisioning_client::proto;

use super::{clients, emit_request, event_data, http_handler, Ctx};
use crate::report::{per_second, percentile_ms, Metric};
use crate::sink;

const NAME: &str = "before";
const CHAIN: usize = 3;
const DIRECT: &str = "sink direct: plain hyper client, 3 sequential POSTs per sample";

/// Runs the chain, then the direct calls.
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
    // Warm-up: connections to the sink and the server's caches.
    run_chain(&clients, s.before_tasks, Duration::from_millis(300)).await?;
    let (chain, chain_elapsed) = run_chain(&clients, s.before_tasks, s.timed_run).await?;
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
    Ok(vec![
        Metric::new(NAME, "chain of 3: calls", chain_rate, "calls/s")
            .baseline(Some(direct_rate), DIRECT)
            .note(format!("{} tasks, {} calls", s.before_tasks, chain.len())),
        Metric::new(NAME, "chain of 3: latency p50", c50, "ms").baseline(Some(d50), DIRECT),
        Metric::new(NAME, "chain of 3: latency p99", c99, "ms").baseline(Some(d99), DIRECT),
        Metric::new(NAME, "overhead p50 (chain − direct)", c50 - d50, "ms"),
        Metric::new(NAME, "overhead p99 (chain − direct)", c99 - d99, "ms"),
    ])
}

/// BEFORE Emits from `tasks` closed-loop tasks for `duration`; sorted latencies and the
/// elapsed time. Every call must be allowed with three handler results.
async fn run_chain(
    clients: &[provisioning_client::Client],
    tasks: usize,
    duration: Duration,
) -> anyhow::Result<(Vec<Duration>, Duration)> {
    let start = Instant::now();
    let deadline = start + duration;
    let mut set = tokio::task::JoinSet::new();
    for task in 0..tasks {
        let client = clients[task % clients.len()].clone();
        set.spawn(async move {
            let mut samples = Vec::new();
            let mut i = task as u64;
            while Instant::now() < deadline {
                let t0 = Instant::now();
                let reply = client.emit(emit_request(i, proto::Phase::Before)).await?;
                samples.push(t0.elapsed());
                anyhow::ensure!(
                    reply.decision == proto::Decision::Allowed as i32
                        && reply.results.len() == CHAIN,
                    "unexpected BEFORE reply: decision {}, reason {:?}, {} results",
                    reply.decision,
                    reply.reason,
                    reply.results.len()
                );
                i += tasks as u64;
            }
            anyhow::Ok(samples)
        });
    }
    let mut all = Vec::new();
    while let Some(samples) = set.join_next().await {
        all.extend(samples??);
    }
    let elapsed = start.elapsed();
    all.sort_unstable();
    Ok((all, elapsed))
}
