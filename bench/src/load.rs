//! The two shapes of load the scenarios and baselines apply: open loop at a fixed
//! offered rate (latency as a caller sees it when the machine is not saturated) and
//! closed loop from a fixed number of tasks for a while (throughput at saturation).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::time::MissedTickBehavior;

/// One call of a paced run: what it returned, when it started and how long it took.
pub struct PacedCall<T> {
    /// The call's output.
    pub output: T,
    /// Just before the call.
    pub started: Instant,
    /// Its latency.
    pub took: Duration,
}

/// Open loop at a fixed offered rate: starts `call(i)` for `i` in `0..count`, `rate`
/// times a second, each in its own task so a slow call does not delay the next. Returns
/// every call (in completion order) and the rate actually offered.
pub async fn paced<F, Fut, T>(
    rate: u32,
    count: u64,
    call: F,
) -> anyhow::Result<(Vec<PacedCall<T>>, f64)>
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = anyhow::Result<T>> + Send + 'static,
    T: Send + 'static,
{
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
    // Burst: ticks missed by a late timer are caught up, so the offered total is exact.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut calls = tokio::task::JoinSet::new();
    let start = Instant::now();
    for i in 0..count {
        ticker.tick().await;
        let future = call(i);
        calls.spawn(async move {
            let started = Instant::now();
            let output = future.await?;
            anyhow::Ok(PacedCall {
                output,
                started,
                took: started.elapsed(),
            })
        });
    }
    let offered = crate::report::per_second(count, start.elapsed());
    let mut done = Vec::with_capacity(count as usize);
    while let Some(call) = calls.join_next().await {
        done.push(call??);
    }
    Ok((done, offered))
}

/// Closed loop: `tasks` tasks each call `call(task, n)` (`n` counting that task's
/// calls from 0) back to back until `duration` has passed. Returns every call's
/// latency, sorted, and the elapsed time.
pub async fn closed_loop<F, Fut>(
    tasks: usize,
    duration: Duration,
    call: F,
) -> anyhow::Result<(Vec<Duration>, Duration)>
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let call = Arc::new(call);
    let start = Instant::now();
    let deadline = start + duration;
    let mut set = tokio::task::JoinSet::new();
    for task in 0..tasks {
        let call = call.clone();
        set.spawn(async move {
            let mut samples = Vec::new();
            while Instant::now() < deadline {
                let t0 = Instant::now();
                call(task, samples.len() as u64).await?;
                samples.push(t0.elapsed());
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
