//! Backlog drain: an endpoint that was down comes back, and the server works off what
//! piled up meanwhile.
//!
//! One AFTER handler points at a loopback port nothing listens on, so every connection
//! is refused ([`sink::closed_address`]). `--backlog-events` AFTER events are emitted
//! through EmitBatch; their first attempts fail and their retries are scheduled. The
//! scenario's server runs with a short retry schedule ([`server_flags`]) and so many
//! attempts that none is given up, so during the outage retries come due and fail
//! again, as they do when an endpoint is down and the backoff is short. Once the
//! database shows that every delivery has failed at least once, a sink is brought up
//! on the same port and the harness measures:
//!
//! - **time to drain**: sink up → the last event's arrival, every event counted by the
//!   sink (none may be missing; repeated POSTs are counted as duplicates), and the
//!   deliveries/s over that time, next to the HTTP limit;
//! - **order**: the deliveries pending at sink-up, read from the database in due order
//!   (`next_attempt_at`), against their order of arrival at the sink: each one's
//!   displacement (|arrival rank − due rank|). A claim takes up to 500 due rows and
//!   runs them at once, so displacements of a few hundred are parallel delivery, not
//!   disorder. Emit order is not the yardstick: during the outage the queue cycles
//!   (retried oldest first, each requeued at failure time + delay), so at sink-up the
//!   due order is a rotation of the emit order;
//! - **stalls**: the longest time without any arrival during the drain, and when 99%
//!   had arrived (a retry that never runs again shows as a missing event or a tail);
//! - the server's **RSS**, sampled every [`SAMPLE_EVERY`] during the drain, and its CPU.

use std::time::{Duration, Instant};

use anyhow::Context;
use diesel::sql_types::{BigInt, Bool};
use diesel::{Connection, PgConnection, QueryableByName, RunQueryDsl};
use provisioning_client::proto;

use super::{clients, emit_batches, http_handler, Ctx};
use crate::args::Settings;
use crate::report::{per_second, Metric};
use crate::sink::{self, Sink};
use crate::usage;

const NAME: &str = "backlog";
/// Attempts per delivery: far more retry cycles than the outage lasts, so none dies.
const MAX_ATTEMPTS: u32 = 10_000;
/// How often the server's RSS is sampled during the drain.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// How often the database is asked whether every first attempt has failed.
const POLL_EVERY: Duration = Duration::from_millis(250);
/// Rows one claim takes at most (the server's `MAX_CLAIM`), which bounds how far
/// parallel delivery can move a delivery from its due rank (for the notes).
const CLAIM_ROWS: usize = 500;

/// The retry delay of the scenario's server: short, so that retries come due during
/// the outage and during the drain.
fn retry_delay(settings: &Settings) -> &'static str {
    if settings.smoke {
        "100ms"
    } else {
        "1s"
    }
}

/// Flags of the scenario's server: the short retry schedule and no giving up.
pub fn server_flags(settings: &Settings) -> Vec<String> {
    vec![
        "--retry-schedule".into(),
        retry_delay(settings).into(),
        "--max-attempts".into(),
        MAX_ATTEMPTS.to_string(),
    ]
}

/// The outage, then the drain.
pub async fn run(ctx: &Ctx<'_>) -> anyhow::Result<Vec<Metric>> {
    let s = ctx.settings;
    let total = s.backlog_events;
    let addr = sink::closed_address().context("finding a closed loopback port")?;
    let clients = clients(ctx.server).await?;
    http_handler(
        &clients[0],
        "bench backlog",
        proto::Phase::After,
        0,
        &format!("http://{addr}/hook"),
    )
    .await?;
    let mut probe = Probe::connect(&ctx.db.url).await?;

    // The outage: events pile up, every first attempt is refused.
    let down = Instant::now();
    let ids = emit_batches(&clients, total, s.batch_size, s.batch_callers).await?;
    let emitted = down.elapsed();
    let generous = |per_event_ms: u64, floor_s: u64| {
        Duration::from_secs(floor_s).max(Duration::from_millis(total * per_event_ms))
    };
    let at_sink_up = wait_all_failed(&mut probe, total, generous(1, 120)).await?;
    let outage = down.elapsed();

    // The endpoint comes back on the same port.
    let sink = Sink::start_on(addr)
        .await
        .with_context(|| format!("bringing the sink up on {addr}"))?;
    let up = Instant::now();
    let cpu_before = usage::Snapshot::take(ctx.server.pid());
    // Right after the sink is up: rows claimed before this read are leased and left
    // out, so every row read is claimed (and delivered) after it.
    let due_order = probe.pending_in_due_order().await?;
    let drained = wait_drained(ctx, &sink, &ids, generous(2, 60)).await;
    let cpu = cpu_before.until(&usage::Snapshot::take(ctx.server.pid()));
    let after = probe.counts().await?;
    anyhow::ensure!(
        drained.missing == 0 && after.dead == 0,
        "{} of {total} events not delivered within {:?} of the sink coming back; \
         {} deliveries dead, {} still in the table, {} arrived",
        drained.missing,
        drained.waited,
        after.dead,
        after.total,
        total - drained.missing as u64,
    );

    let mut arrivals: Vec<Instant> = sink.arrivals_of(&ids).into_iter().flatten().collect();
    arrivals.sort_unstable();
    let last = arrivals.last().copied().unwrap_or(up);
    let drain = last.saturating_duration_since(up);
    let p99 = arrivals[(arrivals.len() * 99).div_ceil(100).max(1) - 1];
    let (gap_at, gap) = longest_gap(up, &arrivals);
    let duplicates = sink.requests().saturating_sub(ids.len() as u64);
    let due_ids: Vec<i64> = due_order.iter().map(|row| row.event_id).collect();
    let due_now = due_order.iter().filter(|row| row.due).count();
    let due_arrivals: Vec<Instant> = sink
        .arrivals_of(&due_ids)
        .into_iter()
        .map(|arrived| arrived.unwrap_or(last))
        .collect();
    let mut shifts = displacements(&due_arrivals);
    shifts.sort_unstable();

    let mut metrics = vec![
        Metric::new(
            NAME,
            "drain: delivered",
            per_second(total, drain),
            "events/s",
        )
        .baseline(
            ctx.baselines.http,
            "HTTP limit: plain hyper client → sink, requests/s",
        )
        .note(format!(
            "{total} events via EmitBatch ({:.1} s) to a refusing endpoint, down {:.1} s \
             until every delivery had failed once ({} failed attempts; retry schedule {} \
             + ≤20% jitter); sink up → last arrival {:.2} s, {} POSTs",
            emitted.as_secs_f64(),
            outage.as_secs_f64(),
            at_sink_up.attempts,
            retry_delay(s),
            drain.as_secs_f64(),
            sink.requests(),
        )),
        Metric::new(NAME, "drain: time to deliver all", drain.as_secs_f64(), "s"),
        Metric::new(
            NAME,
            "drain: time to 99% delivered",
            p99.saturating_duration_since(up).as_secs_f64(),
            "s",
        ),
        Metric::new(
            NAME,
            "drain: longest gap without an arrival",
            gap.as_secs_f64() * 1000.0,
            "ms",
        )
        .note(format!(
            "from the sink coming up to the last arrival; this one began {:.2} s after \
             the sink came up",
            gap_at.as_secs_f64()
        )),
        Metric::new(NAME, "drain: duplicate POSTs", duplicates as f64, "POSTs"),
    ];
    if shifts.is_empty() {
        metrics.push(Metric::unavailable(
            NAME,
            "drain: due-order displacement p99",
            "ranks",
            "no delivery was pending and unclaimed when the sink came up",
        ));
    } else {
        let rank = |p: usize| shifts[(shifts.len() * p).div_ceil(100).max(1) - 1] as f64;
        let beyond_claim = shifts.iter().filter(|&&d| d > CLAIM_ROWS).count();
        metrics.extend([
            Metric::new(NAME, "drain: due-order displacement p50", rank(50), "ranks").note(
                format!(
                    "{} deliveries pending and unclaimed at sink-up ({due_now} of them due), \
                     due rank (next_attempt_at) vs arrival rank; {beyond_claim} moved by more \
                     than one claim ({CLAIM_ROWS} rows)",
                    shifts.len()
                ),
            ),
            Metric::new(NAME, "drain: due-order displacement p99", rank(99), "ranks"),
            Metric::new(
                NAME,
                "drain: due-order displacement max",
                rank(100),
                "ranks",
            ),
        ]);
    }
    metrics.push(match drained.peak_rss_kib {
        Some(kib) => Metric::new(
            NAME,
            "drain: server RSS peak (VmRSS sampled)",
            kib as f64 / 1024.0,
            "MiB",
        )
        .note(format!(
            "sampled every {} ms from sink-up to the last arrival",
            SAMPLE_EVERY.as_millis()
        )),
        None => Metric::unavailable(
            NAME,
            "drain: server RSS peak (VmRSS sampled)",
            "MiB",
            "/proc not readable",
        ),
    });
    for (name, cores) in [
        ("drain: CPU server", cpu.server),
        ("drain: CPU machine busy (all processes)", cpu.machine),
    ] {
        metrics.push(match cores {
            Some(cores) => Metric::new(NAME, name, cores, "cores"),
            None => Metric::unavailable(NAME, name, "cores", "/proc not readable"),
        });
    }
    Ok(metrics)
}

/// Waits until the database holds `total` deliveries and each has failed at least once;
/// returns the counts at that moment. Fails if one is dead (the schedule gave up).
async fn wait_all_failed(
    probe: &mut Probe,
    total: u64,
    timeout: Duration,
) -> anyhow::Result<Counts> {
    let deadline = Instant::now() + timeout;
    loop {
        let counts = probe.counts().await?;
        anyhow::ensure!(
            counts.dead == 0,
            "{} deliveries died while the endpoint was down",
            counts.dead
        );
        if counts.total >= total as i64 && counts.untried == 0 {
            return Ok(counts);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "after {timeout:?}, {} of {} stored deliveries (of {total} events) had not \
             been attempted",
            counts.untried,
            counts.total
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// What [`wait_drained`] saw.
struct Drained {
    /// Events still missing at the sink (0 = all arrived).
    missing: usize,
    /// How long it waited.
    waited: Duration,
    /// Highest VmRSS sampled, KiB.
    peak_rss_kib: Option<u64>,
}

/// Waits until every event has arrived at `sink` (or `timeout` runs out), sampling the
/// server's RSS meanwhile.
async fn wait_drained(ctx: &Ctx<'_>, sink: &Sink, ids: &[i64], timeout: Duration) -> Drained {
    let start = Instant::now();
    let mut peak_rss_kib = ctx.server.rss_kib();
    loop {
        let missing = sink.wait_for(ids, SAMPLE_EVERY).await;
        peak_rss_kib = peak_rss_kib.max(ctx.server.rss_kib());
        if missing == 0 || start.elapsed() >= timeout {
            return Drained {
                missing,
                waited: start.elapsed(),
                peak_rss_kib,
            };
        }
    }
}

/// Longest time without an arrival, from `start` to the last of `sorted` arrivals:
/// `(when it began, counted from start; how long it lasted)`.
fn longest_gap(start: Instant, sorted: &[Instant]) -> (Duration, Duration) {
    let mut previous = start;
    let mut longest = (Duration::ZERO, Duration::ZERO);
    for &arrival in sorted {
        let gap = arrival.saturating_duration_since(previous);
        if gap > longest.1 {
            longest = (previous.saturating_duration_since(start), gap);
        }
        previous = previous.max(arrival);
    }
    longest
}

/// For deliveries listed in due order with their arrival times, how far each arrived
/// from its due rank: |arrival rank − due rank| (ties keep due order).
fn displacements(arrivals_in_due_order: &[Instant]) -> Vec<usize> {
    let mut by_arrival: Vec<usize> = (0..arrivals_in_due_order.len()).collect();
    by_arrival.sort_by_key(|&due_rank| arrivals_in_due_order[due_rank]);
    by_arrival
        .into_iter()
        .enumerate()
        .map(|(arrival_rank, due_rank)| arrival_rank.abs_diff(due_rank))
        .collect()
}

/// Delivery counts of the scenario's database.
#[derive(Debug, QueryableByName)]
struct Counts {
    /// Rows in `deliveries` (delivered rows are deleted).
    #[diesel(sql_type = BigInt)]
    total: i64,
    /// Rows not attempted yet.
    #[diesel(sql_type = BigInt)]
    untried: i64,
    /// Dead rows (out of attempts).
    #[diesel(sql_type = BigInt)]
    dead: i64,
    /// Attempts made by the rows still there.
    #[diesel(sql_type = BigInt)]
    attempts: i64,
}

/// A pending, unclaimed delivery, in due order.
#[derive(Debug, QueryableByName)]
struct PendingRow {
    /// Its event (one delivery per event here: one handler).
    #[diesel(sql_type = BigInt)]
    event_id: i64,
    /// Due already when read.
    #[diesel(sql_type = Bool)]
    due: bool,
}

/// The harness's own connection to the scenario's database, to see what the sink
/// cannot: deliveries not attempted yet, dead ones, the due order. Diesel is blocking:
/// every statement runs in `spawn_blocking`, the connection travelling with it.
struct Probe {
    conn: Option<PgConnection>,
}

impl Probe {
    async fn connect(url: &str) -> anyhow::Result<Probe> {
        let url = url.to_owned();
        let conn = tokio::task::spawn_blocking(move || PgConnection::establish(&url)).await??;
        Ok(Probe { conn: Some(conn) })
    }

    async fn run<T: Send + 'static>(
        &mut self,
        query: impl FnOnce(&mut PgConnection) -> diesel::QueryResult<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let mut conn = self
            .conn
            .take()
            .context("an earlier query of the probe panicked")?;
        let (conn, result) = tokio::task::spawn_blocking(move || {
            let result = query(&mut conn);
            (conn, result)
        })
        .await?;
        self.conn = Some(conn);
        Ok(result?)
    }

    async fn counts(&mut self) -> anyhow::Result<Counts> {
        self.run(|conn| {
            diesel::sql_query(
                "SELECT count(*) AS total, count(*) FILTER (WHERE attempts = 0) AS untried, \
                        count(*) FILTER (WHERE state = 3) AS dead, \
                        coalesce(sum(attempts), 0)::bigint AS attempts \
                 FROM deliveries",
            )
            .get_result(conn)
        })
        .await
    }

    /// Pending deliveries not leased to anyone, oldest due first.
    async fn pending_in_due_order(&mut self) -> anyhow::Result<Vec<PendingRow>> {
        self.run(|conn| {
            diesel::sql_query(
                "SELECT event_id, next_attempt_at <= now() AS due FROM deliveries \
                 WHERE state = 1 AND leased_by IS NULL ORDER BY next_attempt_at, id",
            )
            .load(conn)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_gap_counts_the_wait_for_the_first_arrival() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let ms = Duration::from_millis;
        assert_eq!(
            longest_gap(start, &[at(30), at(40), at(100)]),
            (ms(40), ms(60))
        );
        assert_eq!(longest_gap(start, &[at(500)]), (ms(0), ms(500)));
        assert_eq!(longest_gap(start, &[]), (ms(0), ms(0)));
    }

    #[test]
    fn displacement_is_the_distance_between_due_and_arrival_rank() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        // Due order a b c d; arrival order b a c d, then d before c.
        assert_eq!(
            displacements(&[at(2), at(1), at(3), at(4)]),
            vec![1, 1, 0, 0]
        );
        assert_eq!(
            displacements(&[at(1), at(2), at(9), at(3)]),
            vec![0, 0, 1, 1]
        );
        // The oldest delivered last: it moved by the whole list, the others by one.
        assert_eq!(displacements(&[at(9), at(1), at(2)]), vec![1, 1, 2]);
        assert!(displacements(&[]).is_empty());
    }
}
