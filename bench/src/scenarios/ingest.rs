//! Ingest: how many AFTER events/s the server accepts (stored durably with their
//! deliveries before the reply), through each of the three emission RPCs, with one
//! enabled HTTP handler on the sink so every event also creates a delivery, which the
//! server starts delivering while ingest goes on (as in production).
//!
//! Compared with the storage baseline: the same rows inserted straight into PostgreSQL.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use provisioning_client::proto;
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;

use super::{clients_with_after_handler, emit_batches, emit_request, Ctx};
use crate::report::{per_second, percentile_ms, Metric};

const STORAGE: &str = "storage limit: same rows via r2d2 + multi-row INSERT";

/// `ingest-unary`: one Emit per event from `--concurrency` tasks.
pub async fn unary(ctx: &Ctx<'_>) -> anyhow::Result<Vec<Metric>> {
    let clients = clients_with_after_handler(ctx).await?;
    let total = ctx.settings.events;
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..ctx.settings.concurrency {
        let client = clients[task % clients.len()].clone();
        let next = next.clone();
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return anyhow::Ok(latencies);
                }
                let t0 = Instant::now();
                let reply = client.emit(emit_request(i, proto::Phase::After)).await?;
                latencies.push(t0.elapsed());
                anyhow::ensure!(
                    reply.event_id > 0 && reply.deliveries == 1,
                    "unexpected reply {reply:?}"
                );
            }
        });
    }
    let mut latencies: Vec<Duration> = Vec::with_capacity(total as usize);
    while let Some(done) = tasks.join_next().await {
        latencies.extend(done??);
    }
    let elapsed = start.elapsed();
    latencies.sort_unstable();
    let name = "ingest-unary";
    Ok(vec![
        Metric::new(name, "accepted", per_second(total, elapsed), "events/s")
            .baseline(ctx.baselines.storage, STORAGE)
            .note(format!(
                "{total} AFTER Emit calls from {} tasks",
                ctx.settings.concurrency
            )),
        Metric::new(
            name,
            "Emit latency p50",
            percentile_ms(&latencies, 50.0),
            "ms",
        ),
        Metric::new(
            name,
            "Emit latency p99",
            percentile_ms(&latencies, 99.0),
            "ms",
        ),
    ])
}

/// `ingest-batch`: EmitBatch calls of 500 events from a few callers.
pub async fn batch(ctx: &Ctx<'_>) -> anyhow::Result<Vec<Metric>> {
    let clients = clients_with_after_handler(ctx).await?;
    let s = ctx.settings;
    let start = Instant::now();
    let ids = emit_batches(&clients, s.events, s.batch_size, s.batch_callers).await?;
    let elapsed = start.elapsed();
    anyhow::ensure!(
        ids.iter().all(|&id| id > 0),
        "EmitBatch returned an event id 0"
    );
    Ok(vec![Metric::new(
        "ingest-batch",
        "accepted",
        per_second(s.events, elapsed),
        "events/s",
    )
    .baseline(ctx.baselines.storage, STORAGE)
    .note(format!(
        "{} events, EmitBatch of {} from {} callers",
        s.events, s.batch_size, s.batch_callers
    ))])
}

/// `ingest-stream`: a few EmitStream calls, each keeping a window of events in flight.
pub async fn stream(ctx: &Ctx<'_>) -> anyhow::Result<Vec<Metric>> {
    let clients = clients_with_after_handler(ctx).await?;
    let s = ctx.settings;
    let streams = s.streams.max(1) as u64;
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for stream in 0..streams {
        // Stream k sends the events i with i % streams == k.
        let count = s.events / streams + u64::from(stream < s.events % streams);
        let client = clients[stream as usize % clients.len()].clone();
        let window = s.stream_window;
        tasks.spawn(async move {
            let (sender, receiver) = mpsc::channel(window);
            let credit = Arc::new(Semaphore::new(window));
            let producer_credit = credit.clone();
            let producer = tokio::spawn(async move {
                for n in 0..count {
                    let permit = producer_credit.acquire().await?;
                    permit.forget(); // given back when the ack arrives
                    let request = proto::EmitStreamRequest {
                        sequence: n,
                        event: Some(emit_request(n * streams + stream, proto::Phase::After)),
                    };
                    if sender.send(request).await.is_err() {
                        anyhow::bail!("the stream closed early");
                    }
                }
                anyhow::Ok(())
            });
            let mut acks = client.emit_stream(ReceiverStream::new(receiver)).await?;
            let mut acked = 0u64;
            while let Some(ack) = acks.message().await? {
                anyhow::ensure!(
                    ack.error_code == 0 && ack.sequence == acked,
                    "bad ack {ack:?} (expected sequence {acked})"
                );
                acked += 1;
                credit.add_permits(1);
            }
            producer.await??;
            anyhow::ensure!(acked == count, "{acked} of {count} events acknowledged");
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let elapsed = start.elapsed();
    Ok(vec![Metric::new(
        "ingest-stream",
        "accepted",
        per_second(s.events, elapsed),
        "events/s",
    )
    .baseline(ctx.baselines.storage, STORAGE)
    .note(format!(
        "{} events over {streams} EmitStream calls, window {} each",
        s.events, s.stream_window
    ))])
}
