//! The AFTER worker: runs each event's deliveries in priority order (the next starts
//! when the previous attempt ended) and hands every attempt to the recorder. Different
//! events run concurrently, up to the configured concurrency.
//!
//! Work reaches it two ways. Fresh deliveries stored by this replica are leased to it
//! in the same statement that stores them and handed over in memory ([`Worker::start`]),
//! so they are never claimed back from the table. Everything else (retries, deliveries
//! stored while every slot was busy and the fresh ones that queue behind them, other
//! replicas' expired leases) is claimed with `FOR UPDATE SKIP LOCKED` and a lease by
//! the claim loop, which wakes at once on new work (in-process signal or NOTIFY from
//! another replica) and otherwise polls at the configured interval. Between claims it
//! admits the throttled deliveries of limited handlers as their budgets allow, and now
//! and then sweeps for queued keyed deliveries that nothing holds back any more.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use diesel::Connection;
use rand::Rng;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::recorder::{DeliveryOutcome, LogRecord, Record};
use super::retry::{next_step, NextStep};
use super::{AttemptError, Execution, Invocation, Reply, RunTarget, Runner, LOGGED_RESPONSE_BYTES};
use crate::config::Config;
use crate::db::queries::deliveries::{self, ClaimedDelivery};
use crate::db::queries::events;
use crate::db::{Db, DbError};
use crate::domain::trace_context::TraceContext;
use crate::domain::{text, HandlerKind, Phase, RunStatus};
use crate::listener::Signals;
use crate::shutdown::Shutdown;

const MAX_CLAIM: usize = 500;
/// Pause between a wake-up and the claim it triggers.
const CLAIM_COALESCE: Duration = Duration::from_millis(5);
/// How often queued keyed events that nothing holds back any more are looked for, in
/// case their promotion was missed (`deliveries::promote_all_ready`).
const ORDERING_SWEEP: Duration = Duration::from_secs(5);
/// How often a replica looks for throttled deliveries of limited handlers when it has
/// seen none lately (a handler may have just been limited).
const ADMISSION_DISCOVERY: Duration = Duration::from_secs(1);
/// How often throttled deliveries are admitted while there are some: slots and tokens
/// free up by themselves, with nothing to wake the claim loop.
const ADMISSION_TICK: Duration = Duration::from_millis(50);

/// This replica's AFTER worker: run slots shared by the claim loop and the deliveries
/// handed over by the ingest committer.
#[derive(Clone)]
pub struct Worker {
    db: Db,
    runner: Runner,
    config: Arc<Config>,
    slots: Arc<Semaphore>,
    chains: TaskTracker,
    chain_done: Arc<Notify>,
    owner: Arc<str>,
    /// Deliveries wait in the table for a run slot: fresh ones queue behind them (no
    /// hand-over) until a claim finds less than it asked for, so under overload the
    /// oldest work runs first and the claim loop is never starved of slots.
    backlog: Arc<AtomicBool>,
    /// Cancelled at shutdown: chains end after the run in progress and give the rest of
    /// their leases back.
    stop: CancellationToken,
}

impl Worker {
    /// The name this replica writes into `deliveries.leased_by`.
    pub fn owner(&self) -> Arc<str> {
        self.owner.clone()
    }

    /// How long a lease lasts beyond the handlers' own timeouts.
    pub fn lease_ms(&self) -> i64 {
        self.config.lease.as_millis() as i64
    }

    /// Takes run slots for up to `chains` chains that can start now (fewer when fewer
    /// are free); `None` when every slot is busy or older deliveries wait in the table.
    pub fn reserve(&self, chains: usize) -> Option<OwnedSemaphorePermit> {
        if self.backlog.load(Ordering::Relaxed) {
            return None;
        }
        let free = self.slots.available_permits().min(chains);
        if free == 0 {
            return None;
        }
        self.slots.clone().try_acquire_many_owned(free as u32).ok()
    }

    /// Records that deliveries were stored for the claim loop (no slot was free).
    pub fn note_backlog(&self) {
        self.backlog.store(true, Ordering::Relaxed);
    }

    /// Runs one event's deliveries, leased to this replica, in the given order; `slot`
    /// is the run slot it holds until the chain ends. At shutdown the chain stops after
    /// the run in progress and releases the leases of the rest at once.
    pub fn start(&self, chain: Vec<ClaimedDelivery>, slot: OwnedSemaphorePermit) {
        let worker = self.clone();
        self.chains.spawn(async move {
            let mut chain = chain.into_iter();
            while let Some(delivery) = chain.next() {
                if worker.stop.is_cancelled() {
                    let ids = std::iter::once(delivery)
                        .chain(chain)
                        .map(|d| d.id)
                        .collect();
                    worker.release(ids).await;
                    break;
                }
                run_delivery(&worker.db, &worker.runner, &worker.config, delivery).await;
            }
            drop(slot);
            worker.chain_done.notify_one();
        });
    }

    /// Gives back the leases of one event's deliveries that did not start (in run
    /// order), so another replica takes them now rather than when the leases expire.
    async fn release(&self, ids: Vec<i64>) {
        let owner = self.owner();
        let count = ids.len();
        let released = self
            .db
            .run(move |conn| deliveries::release(conn, &ids, &owner).map_err(DbError::from))
            .await;
        match released {
            Ok(released) => {
                tracing::info!(
                    released,
                    "stopping: deliveries handed back to other replicas"
                )
            }
            // They are taken over when their leases expire.
            Err(error) => tracing::warn!(%error, count, "releasing leases at shutdown failed"),
        }
    }
}

/// Starts the claim loop and returns the worker.
pub fn spawn(
    db: Db,
    config: Arc<Config>,
    runner: Runner,
    signals: Signals,
    shutdown: &Shutdown,
) -> Worker {
    let worker = Worker {
        db: db.clone(),
        runner,
        slots: Arc::new(Semaphore::new(config.concurrency.max(1))),
        config,
        chains: TaskTracker::new(),
        chain_done: Arc::new(Notify::new()),
        owner: format!("{}-{:08x}", std::process::id(), rand::rng().random::<u32>()).into(),
        backlog: Arc::default(),
        stop: shutdown.token.clone(),
    };
    let shutdown_for_task = shutdown.clone();
    let claiming = worker.clone();
    shutdown.spawn(async move { claim_loop(db, claiming, signals, shutdown_for_task).await });
    worker
}

async fn claim_loop(db: Db, worker: Worker, signals: Signals, shutdown: Shutdown) {
    // Under load, wait until a worthwhile batch can start rather than claiming a few
    // rows each time one chain ends: fewer, larger claims.
    let worthwhile = (worker.config.concurrency.max(1) / 4).clamp(1, MAX_CLAIM);
    let lease_ms = worker.lease_ms();
    let mut upkeep = Upkeep::new();
    while !shutdown.is_requested() {
        upkeep.run_due(&db).await;
        // Claim no more than can start now: claimed work waiting here would hold a lease.
        let free = worker.slots.available_permits();
        if free < worthwhile && !worker.chains.is_empty() {
            tokio::select! {
                _ = worker.chain_done.notified() => {}
                _ = shutdown.requested() => break,
            }
            continue;
        }
        let limit = free.min(MAX_CLAIM) as i64;
        let owner = worker.owner();
        let claimed = db
            .run(move |conn| {
                deliveries::claim_due(conn, limit, lease_ms, &owner).map_err(DbError::from)
            })
            .await;
        if let Ok(rows) = &claimed {
            if (rows.len() as i64) < limit {
                worker.backlog.store(false, Ordering::Relaxed);
            }
        }
        match claimed {
            Ok(rows) if !rows.is_empty() => {
                let full = rows.len() as i64 >= limit;
                for chain in split_by_event(rows) {
                    let Ok(slot) = worker.slots.clone().acquire_owned().await else {
                        break;
                    };
                    worker.start(chain, slot);
                }
                if full {
                    continue;
                }
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%error, "claiming deliveries failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        }
        tokio::select! {
            _ = signals.work.notified() => {
                // Let a burst of commits land so one claim takes them all: under a
                // steady stream of small commits, claiming after each costs the
                // database more than the deliveries themselves.
                tokio::time::sleep(CLAIM_COALESCE).await;
            }
            _ = tokio::time::sleep(upkeep.idle_wait(worker.config.poll_interval)) => {}
            _ = shutdown.requested() => break,
        }
    }
    // Runs in flight end within their timeouts; their records reach the recorder,
    // which drains its queue before stopping.
    worker.chains.close();
    worker.chains.wait().await;
}

/// The claim loop's periodic work besides claiming: admitting the throttled deliveries
/// of limited handlers, and the sweep for queued keyed deliveries nothing holds back.
struct Upkeep {
    next_sweep: Instant,
    next_discovery: Instant,
    /// Limited handlers had throttled work at the last admission.
    throttling: bool,
}

impl Upkeep {
    fn new() -> Upkeep {
        Upkeep {
            next_sweep: Instant::now() + ORDERING_SWEEP,
            next_discovery: Instant::now(),
            throttling: false,
        }
    }

    /// Runs what is due now; failures are logged and retried at the next turn.
    async fn run_due(&mut self, db: &Db) {
        if self.throttling || Instant::now() >= self.next_discovery {
            self.next_discovery = Instant::now() + ADMISSION_DISCOVERY;
            match db
                .run(|conn| deliveries::admit_throttled(conn).map_err(DbError::from))
                .await
            {
                Ok((limited, _)) => self.throttling = limited > 0,
                Err(error) => tracing::warn!(%error, "admitting throttled deliveries failed"),
            }
        }
        if Instant::now() >= self.next_sweep {
            self.next_sweep = Instant::now() + ORDERING_SWEEP;
            match db
                .run(|conn| deliveries::promote_all_ready(conn).map_err(DbError::from))
                .await
            {
                Ok(0) => {}
                Ok(promoted) => {
                    tracing::info!(promoted, "queued keyed deliveries released by the sweep")
                }
                Err(error) => {
                    tracing::warn!(%error, "looking for released keyed deliveries failed")
                }
            }
        }
    }

    /// How long the claim loop may sleep when nothing wakes it: while deliveries are
    /// throttled, slots and tokens free up by themselves.
    fn idle_wait(&self, poll_interval: Duration) -> Duration {
        if self.throttling {
            poll_interval.min(ADMISSION_TICK)
        } else {
            poll_interval
        }
    }
}

/// Claimed rows come ordered by event: consecutive rows of one event form a chain.
pub(super) fn split_by_event(rows: Vec<ClaimedDelivery>) -> Vec<Vec<ClaimedDelivery>> {
    let mut chains: Vec<Vec<ClaimedDelivery>> = Vec::new();
    for row in rows {
        match chains.last_mut() {
            Some(chain) if chain[0].event_id == row.event_id => chain.push(row),
            _ => chains.push(vec![row]),
        }
    }
    chains
}

/// Runs one attempt of a delivery and records it.
async fn run_delivery(db: &Db, runner: &Runner, config: &Config, delivery: ClaimedDelivery) {
    let attempt = delivery.attempts.saturating_add(1);
    let kind = HandlerKind::parse(&delivery.kind).unwrap_or(HandlerKind::Http);
    let invocation = Invocation {
        handler_id: delivery.handler_id,
        event: &delivery.event,
        phase: Phase::After,
        event_id: delivery.event_id,
        attempt: attempt as u32,
        // Stable for the event and handler: across retries, Retry and deliberate
        // re-sends, so receivers can deduplicate on `webhook-id`.
        message_id: format!("evt_{}_{}", delivery.event_id, delivery.handler_id),
        data: &delivery.data,
        traceparent: delivery
            .traceparent
            .as_deref()
            .and_then(TraceContext::parse)
            .map(|trace| trace.child().to_string()),
        test: false,
    };
    if delivery.status == "archived" {
        // Archived after the event was accepted (while this delivery was running or
        // leased): the delivery ends, with a log row saying why.
        let refusal = AttemptError::HandlerArchived;
        let error = refusal.to_string();
        let execution = Execution {
            started_at: Utc::now(),
            duration: Duration::ZERO,
            result: Err(refusal),
        };
        let outcome = DeliveryOutcome::Failed { retry_at: None };
        let record = after_record(delivery, kind, attempt - 1, &execution, error, outcome);
        runner.recorder.record(record).await;
        return;
    }
    if delivery.status != "enabled" {
        // Disabled after the event was accepted: no request is made and nothing is
        // logged; the delivery is paused and resumes when the handler is enabled again.
        // Under the SKIP ordering policy the later deliveries of its key go on meanwhile
        // (found by the claim loop's next poll).
        let (id, slot) = (delivery.id, delivery.ordering_slot);
        if let Err(error) = db
            .run(move |conn| {
                conn.transaction(|conn| {
                    let key = slot.as_deref().and_then(deliveries::ordering_key_of);
                    events::lock_ordering_keys(conn, key.as_slice())?;
                    deliveries::pause(conn, &[id])?;
                    deliveries::promote_queued(conn, slot.as_deref().as_slice())
                })
                .map_err(DbError::from)
            })
            .await
        {
            // The lease expires and the delivery is claimed (and paused) again.
            tracing::warn!(%error, delivery.id = id, "pausing a delivery failed");
        }
        return;
    }
    let target = match (&delivery.url, &delivery.script_path) {
        (Some(url), _) if kind == HandlerKind::Http => RunTarget::Http {
            url,
            headers: &delivery.headers,
            secret: delivery.secret.as_deref().unwrap_or_default(),
        },
        (_, path) => RunTarget::Script {
            path: path.as_deref().unwrap_or_default(),
        },
    };
    let timeout = Duration::from_millis(delivery.timeout_ms.max(1) as u64);
    let execution = runner.execute(target, &invocation, timeout).await;
    let (error, outcome) = match judge_after(&execution.result) {
        Judgement::Success => (String::new(), DeliveryOutcome::Delivered),
        Judgement::Failure {
            error, gone: true, ..
        } => (error, DeliveryOutcome::Gone),
        Judgement::Failure {
            error,
            retryable,
            retry_after,
            ..
        } => {
            let step = if retryable {
                next_step(
                    &config.retry_schedule.0,
                    config.max_attempts,
                    attempt as u32,
                    retry_after,
                    rand::rng().random(),
                )
            } else {
                NextStep::Dead
            };
            let retry_at = match step {
                NextStep::RetryIn(delay) => Some(
                    Utc::now()
                        + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::hours(1)),
                ),
                NextStep::Dead => None,
            };
            (error, DeliveryOutcome::Failed { retry_at })
        }
    };
    let record = after_record(delivery, kind, attempt, &execution, error, outcome);
    if record.log.status == RunStatus::Fail {
        tracing::debug!(delivery.id = record.log.delivery_id, handler.id = record.log.handler_id, attempt, error = %record.log.error, "delivery attempt failed");
    }
    runner.recorder.record(record).await;
}

/// The log row and settlement of one AFTER attempt; an empty `error` means success.
fn after_record(
    delivery: ClaimedDelivery,
    kind: HandlerKind,
    attempt: i32,
    execution: &Execution,
    error: String,
    outcome: DeliveryOutcome,
) -> Record {
    let status = if error.is_empty() {
        RunStatus::Success
    } else {
        RunStatus::Fail
    };
    let (response, http_status, exit_code) = reply_fields(&execution.result);
    Record {
        log: LogRecord {
            created_at: execution.started_at,
            phase: Phase::After,
            event: delivery.event,
            status,
            handler_id: delivery.handler_id,
            handler_name: delivery.name,
            kind,
            error,
            duration_ms: execution.duration.as_millis().min(i32::MAX as u128) as i32,
            attempt,
            data_sent: delivery.data,
            data_returned: None,
            response,
            http_status,
            exit_code,
            event_id: delivery.event_id,
            delivery_id: Some(delivery.id),
            emitted_by: delivery.emitted_by,
            test: false,
        },
        delivery: Some(outcome),
        ordering_slot: delivery.ordering_slot,
    }
}

/// How an AFTER attempt went.
pub(crate) enum Judgement {
    Success,
    Failure {
        error: String,
        retryable: bool,
        retry_after: Option<Duration>,
        gone: bool,
    },
}

/// AFTER semantics: any 2xx or exit 0 is success; everything else fails. 410 Gone
/// disables the handler; `Retry-After` counts on 429 and 503.
pub(crate) fn judge_after(result: &Result<Reply, AttemptError>) -> Judgement {
    let failure = |error: String| Judgement::Failure {
        error,
        retryable: true,
        retry_after: None,
        gone: false,
    };
    match result {
        Ok(Reply::Http { status, .. }) if (200..300).contains(status) => Judgement::Success,
        Ok(Reply::Http { status: 410, .. }) => Judgement::Failure {
            error: "HTTP 410 Gone: handler disabled".into(),
            retryable: false,
            retry_after: None,
            gone: true,
        },
        Ok(Reply::Http {
            status,
            retry_after,
            ..
        }) => Judgement::Failure {
            error: format!("HTTP {status}"),
            retryable: true,
            retry_after: if matches!(status, 429 | 503) {
                *retry_after
            } else {
                None
            },
            gone: false,
        },
        Ok(Reply::Script {
            exit_code: Some(0), ..
        }) => Judgement::Success,
        Ok(Reply::Script {
            exit_code: Some(code),
            ..
        }) => failure(format!("script exited with code {code}")),
        Ok(Reply::Script { signal, .. }) => {
            failure(format!("script killed by signal {}", signal.unwrap_or(0)))
        }
        Err(error) => Judgement::Failure {
            error: error.to_string(),
            retryable: error.is_retryable(),
            retry_after: None,
            gone: false,
        },
    }
}

/// Response text, HTTP status and exit code of a reply, for the log.
pub(crate) fn reply_fields(
    result: &Result<Reply, AttemptError>,
) -> (String, Option<i32>, Option<i32>) {
    match result {
        Ok(Reply::Http {
            status,
            body,
            truncated,
            ..
        }) => {
            let mut text = text::from_bytes(body, LOGGED_RESPONSE_BYTES);
            if *truncated {
                // The rest was never read (AFTER reads only what the log keeps).
                text.push_str(text::TRUNCATED_MARK);
            }
            (text, Some(i32::from(*status)), None)
        }
        Ok(Reply::Script {
            exit_code,
            stdout,
            stderr,
            ..
        }) => {
            let mut text = text::from_bytes(stdout, LOGGED_RESPONSE_BYTES);
            if !stderr.is_empty() {
                text.push_str(if text.is_empty() { "" } else { "\n" });
                text.push_str("[stderr] ");
                text.push_str(&text::from_bytes(stderr, LOGGED_RESPONSE_BYTES));
            }
            (text, None, *exit_code)
        }
        Err(_) => (String::new(), None, None),
    }
}
