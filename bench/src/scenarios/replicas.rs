//! Several replicas on one database: 1, 2 and 3 `provisiond` processes, each round on
//! a fresh database, with the same AFTER load (`--events` events through EmitBatch
//! from [`CALLERS`] callers) spread evenly over the replicas of the round.
//!
//! On a machine of a few cores throughput cannot grow with replicas: they share the
//! CPUs with PostgreSQL, the sink and the emitters. What the scenario measures is the
//! coordination cost: how much of one replica's delivery rate 2 and 3 replicas keep
//! (their claims, leases and NOTIFYs compete on the same tables), and whether any
//! delivery reaches the sink twice (duplicates: a delivery id seen again; 0 is
//! required when no attempt failed, since only a failed attempt is retried).
//!
//! Per round: accepted events/s (emit start → last EmitBatch reply), delivered
//! events/s (emit start → last arrival at the sink), duplicates, the servers' and the
//! database's CPU (the embedded postmaster and its children, from /proc) as cores and
//! as a share of the machine's busy time, and the database's CPU per event. The first
//! round also reports what each event cost in storage: bytes of the events and
//! deliveries tables and of the execution-log partitions (`pg_total_relation_size`:
//! heap, indexes and TOAST) and of WAL, from before the load to after its last log row,
//! for docs/scaling.md.
//!
//! The harness's own server for this scenario stays idle on its own database; each
//! round starts its replicas itself.

use std::time::{Duration, Instant};

use anyhow::Context;
use diesel::sql_types::BigInt;
use diesel::{Connection, PgConnection, QueryableByName, RunQueryDsl};
use provisioning_client::{proto, Client};

use super::{delivered_since, delivery_timeout, emit_batches, http_handler, Ctx};
use crate::database::FreshDb;
use crate::report::{per_second, Metric};
use crate::server::Server;
use crate::usage;

const NAME: &str = "replicas";
/// Replica counts measured, in order; the first is the reference.
const ROUNDS: [usize; 3] = [1, 2, 3];
/// Concurrent EmitBatch callers in every round: a multiple of every replica count, so
/// each replica gets the same share of callers.
const CALLERS: usize = 6;
/// Events per EmitBatch call: small enough that the load interleaves over replicas.
const BATCH: usize = 100;

/// What one round measured.
struct Round {
    replicas: usize,
    events: u64,
    accepted: f64,
    delivered: f64,
    elapsed: Duration,
    /// Wall time the CPU counters cover (emit start → last arrival, about).
    window: Duration,
    duplicates: u64,
    failed_attempts: i64,
    /// Storage before and after the load.
    storage: (Sizes, Sizes),
    servers_cores: Option<f64>,
    database_cores: Option<f64>,
    machine_cores: Option<f64>,
}

/// Runs every round and reports them side by side.
pub async fn run(ctx: &Ctx<'_>) -> anyhow::Result<Vec<Metric>> {
    let mut rounds: Vec<Round> = Vec::new();
    for replicas in ROUNDS {
        let db = ctx.databases.create(&format!("{NAME}_{replicas}")).await?;
        let outcome = round(ctx, &db, replicas).await;
        if let Err(error) = ctx.databases.drop_database(&db).await {
            eprintln!("dropping {}: {error:#}", db.name);
        }
        rounds.push(outcome.with_context(|| format!("{replicas} replica(s)"))?);
    }
    let reference = rounds.first().map(|r| r.delivered);
    let mut metrics = Vec::new();
    for round in &rounds {
        metrics.extend(round_metrics(ctx, round, reference));
    }
    Ok(metrics)
}

async fn round(ctx: &Ctx<'_>, db: &FreshDb, replicas: usize) -> anyhow::Result<Round> {
    let mut servers = Vec::with_capacity(replicas);
    for n in 0..replicas {
        let log = ctx
            .workdir
            .join(format!("server-{NAME}-{replicas}-{n}.log"));
        let scripts = ctx.workdir.join("scripts");
        servers.push(Server::start(ctx.binary, &db.url, &scripts, &log, &[]).await?);
    }
    let outcome = measure(ctx, db, &servers).await;
    let log_tail = servers.first().map(Server::log_tail).unwrap_or_default();
    for server in servers {
        if let Err(error) = server.stop().await {
            eprintln!("stopping a server: {error:#}");
        }
    }
    let mut round = match outcome {
        Ok(round) => round,
        Err(error) => return Err(error.context(format!("first server's log tail:\n{log_tail}"))),
    };
    round.failed_attempts = failed_attempts(&db.url).await?;
    anyhow::ensure!(
        round.duplicates == 0 || round.failed_attempts > 0,
        "{} deliveries reached the sink twice although no attempt failed",
        round.duplicates
    );
    Ok(round)
}

/// Emits the load over `servers` and waits for every delivery.
async fn measure(ctx: &Ctx<'_>, db: &FreshDb, servers: &[Server]) -> anyhow::Result<Round> {
    let s = ctx.settings;
    // One client per caller, dealt round-robin over the replicas.
    let mut clients: Vec<Client> = Vec::with_capacity(CALLERS);
    for caller in 0..CALLERS {
        clients.push(servers[caller % servers.len()].client().await?);
    }
    http_handler(
        &clients[0],
        "bench after",
        proto::Phase::After,
        0,
        &ctx.sink.url(),
    )
    .await?;
    ctx.sink.reset();
    let stored_before = sizes(&db.url).await?;
    let pids: Vec<u32> = servers.iter().map(Server::pid).collect();
    let postmaster = ctx.databases.postmaster_pid();
    let before = Counters::take(&pids, postmaster);
    let start = Instant::now();
    let ids = emit_batches(&clients, s.events, BATCH.min(s.batch_size), CALLERS).await?;
    let emitted = start.elapsed();
    let elapsed = delivered_since(ctx.sink, &ids, start).await?;
    let after = Counters::take(&pids, postmaster);
    // A late second POST of a delivery would show up by now (attempts run at once),
    // and the recorder has written the last runs' rows.
    let stored_after = logged(&db.url, ids.len() as i64, delivery_timeout(ids.len())).await?;
    let window = after.at.duration_since(before.at);
    let cores = |a: Option<u64>, b: Option<u64>| Some(usage::cores(b?.checked_sub(a?)?, window));
    Ok(Round {
        replicas: servers.len(),
        events: ids.len() as u64,
        accepted: per_second(ids.len() as u64, emitted),
        delivered: per_second(ids.len() as u64, elapsed),
        elapsed,
        window,
        storage: (stored_before, stored_after),
        duplicates: ctx.sink.duplicates(),
        failed_attempts: 0,
        servers_cores: cores(before.servers, after.servers),
        database_cores: cores(before.database, after.database),
        machine_cores: cores(before.machine, after.machine),
    })
}

/// CPU counters of the round's processes at one moment.
struct Counters {
    at: Instant,
    servers: Option<u64>,
    database: Option<u64>,
    machine: Option<u64>,
}

impl Counters {
    fn take(servers: &[u32], postmaster: Option<u32>) -> Counters {
        Counters {
            at: Instant::now(),
            servers: servers.iter().map(|pid| usage::pid_ticks(*pid)).sum(),
            database: postmaster.and_then(usage::family_ticks),
            machine: usage::machine_ticks(),
        }
    }
}

/// Bytes of the tables an event writes to, WAL position, and rows.
#[derive(Debug, Clone, Copy, QueryableByName)]
struct Sizes {
    #[diesel(sql_type = BigInt)]
    events: i64,
    #[diesel(sql_type = BigInt)]
    deliveries: i64,
    #[diesel(sql_type = BigInt)]
    logs: i64,
    #[diesel(sql_type = BigInt)]
    wal: i64,
    #[diesel(sql_type = BigInt)]
    log_rows: i64,
}

/// The sizes now.
async fn sizes(url: &str) -> anyhow::Result<Sizes> {
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut conn = PgConnection::establish(&url)?;
        let sizes: Sizes = diesel::sql_query(
            "SELECT pg_total_relation_size('events') AS events, \
                    pg_total_relation_size('deliveries') AS deliveries, \
                    (SELECT coalesce(sum(pg_total_relation_size(inhrelid)), 0)::bigint \
                       FROM pg_inherits WHERE inhparent = 'execution_logs'::regclass) AS logs, \
                    (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint AS wal, \
                    (SELECT count(*) FROM execution_logs) AS log_rows",
        )
        .get_result(&mut conn)?;
        anyhow::Ok(sizes)
    })
    .await?
}

/// Waits until `rows` log rows are written (the recorder writes after the POST), then
/// returns the sizes.
async fn logged(url: &str, rows: i64, timeout: Duration) -> anyhow::Result<Sizes> {
    let deadline = Instant::now() + timeout;
    loop {
        let now = sizes(url).await?;
        if now.log_rows >= rows {
            return Ok(now);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} of {rows} execution-log rows written within {timeout:?}",
            now.log_rows
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Failed attempts logged in the round's database: retried attempts are the only
/// legitimate source of a second POST.
async fn failed_attempts(url: &str) -> anyhow::Result<i64> {
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut conn = PgConnection::establish(&url)?;
        let row: Count = diesel::sql_query(
            "SELECT count(*) AS n FROM execution_logs WHERE status <> 'success' AND NOT test",
        )
        .get_result(&mut conn)?;
        anyhow::Ok(row.n)
    })
    .await?
}

fn round_metrics(ctx: &Ctx<'_>, round: &Round, reference: Option<f64>) -> Vec<Metric> {
    let n = round.replicas;
    let mut metrics = vec![Metric::new(
        NAME,
        format!("{n} replica(s): accepted"),
        round.accepted,
        "events/s",
    )
    .note(format!(
        "{} AFTER events via EmitBatch of {BATCH} from {CALLERS} callers spread over {n} \
                 replica(s); delivered in {:.2} s",
        round.events,
        round.elapsed.as_secs_f64()
    ))];
    let delivered = Metric::new(
        NAME,
        format!("{n} replica(s): delivered"),
        round.delivered,
        "events/s",
    );
    metrics.push(if n == 1 {
        delivered.baseline(
            ctx.baselines.http,
            "HTTP limit: plain hyper client → sink, requests/s",
        )
    } else {
        delivered.baseline(reference, "1 replica's delivery rate (target ≥ 85%)")
    });
    metrics.push(
        Metric::new(
            NAME,
            format!("{n} replica(s): duplicates"),
            round.duplicates as f64,
            "POSTs",
        )
        .note(format!(
            "delivery ids POSTed again; {} failed attempt(s) logged",
            round.failed_attempts
        )),
    );
    metrics.push(match round.servers_cores {
        Some(cores) => Metric::new(NAME, format!("{n} replica(s): CPU servers"), cores, "cores"),
        None => Metric::unavailable(
            NAME,
            format!("{n} replica(s): CPU servers"),
            "cores",
            "/proc not readable",
        ),
    });
    let database = format!("{n} replica(s): CPU database");
    metrics.push(match round.database_cores {
        Some(cores) => {
            let share = round
                .machine_cores
                .filter(|m| *m > 0.0)
                .map(|m| format!("{:.0}% of the machine's busy time ({m:.2} cores)", 100.0 * cores / m))
                .unwrap_or_else(|| "machine busy time unknown".into());
            let per_event_us = cores * round.window.as_secs_f64() * 1e6 / round.events.max(1) as f64;
            Metric::new(NAME, database, cores, "cores").note(format!(
                "{share}; {per_event_us:.0} µs of database CPU per event (postmaster + live children)"
            ))
        }
        None => Metric::unavailable(NAME, database, "cores", "external database or /proc not readable"),
    });
    if n == 1 {
        metrics.extend(storage_metrics(round));
    }
    metrics
}

/// Bytes per event of each table and of WAL over the round.
fn storage_metrics(round: &Round) -> Vec<Metric> {
    let (before, after) = round.storage;
    let events = round.events.max(1) as f64;
    let per_event = |a: i64, b: i64| (b - a) as f64 / events;
    vec![
        Metric::new(
            NAME,
            "storage: events table",
            per_event(before.events, after.events),
            "bytes/event",
        )
        .note(format!(
            "pg_total_relation_size (heap + indexes + TOAST) after minus before {} events of \
             ~80 bytes of data, 1 handler; {} log rows",
            round.events,
            after.log_rows - before.log_rows
        )),
        Metric::new(
            NAME,
            "storage: deliveries table",
            per_event(before.deliveries, after.deliveries),
            "bytes/event",
        )
        .note("delivered rows are deleted: this is dead space until vacuum reuses it"),
        Metric::new(
            NAME,
            "storage: execution_logs partitions",
            per_event(before.logs, after.logs),
            "bytes/event",
        ),
        Metric::new(
            NAME,
            "storage: WAL written",
            per_event(before.wal, after.wal),
            "bytes/event",
        ),
    ]
}
