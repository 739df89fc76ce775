//! The promoter: starts the next queued event of each ordering slot that keyed
//! deliveries freed.
//!
//! The recorder sends the slots freed by each batch it committed; the promoter promotes
//! all the slots freed meanwhile in one transaction of its own, while the recorder
//! writes the next batch, so keyed delivery pays for the log write or the promotion,
//! whichever is longer, not for both in a row. As far as this replica has free run
//! slots, the promoted deliveries are leased to it in the same statement and handed to
//! the worker in memory, as fresh ones are at insert: a key's next event starts without
//! a claim round trip. The rest are announced for the claim loop. A promotion lost to a
//! crash is made by the periodic sweep (`deliveries::promote_all_ready`).

use std::sync::Arc;
use std::time::Duration;

use diesel::Connection;

use super::recorder::FreedSlots;
use super::worker::Worker;
use crate::db::queries::events::LeaseAtInsert;
use crate::db::queries::{deliveries, events};
use crate::db::{Db, DbError};
use crate::listener::Signals;
use crate::shutdown::Shutdown;

/// Starts the promoter. It ends once the recorder is gone and what it sent is
/// promoted; from shutdown on it leases nothing (the worker is stopping).
pub fn spawn(db: Db, signals: Signals, worker: Worker, freed: FreedSlots, shutdown: &Shutdown) {
    let stop = shutdown.token.clone();
    shutdown.spawn(promote_loop(db, signals, worker, freed, stop));
}

/// Promotes the slots as the recorder frees them, under the slots' key locks (an insert
/// of one of these keys either committed before, and its queued event is promoted
/// here, or waits and then sees the earlier deliveries finished). Retried while the
/// database is unreachable; after a few failures the slots are left to the sweep.
async fn promote_loop(
    db: Db,
    signals: Signals,
    worker: Worker,
    mut freed: FreedSlots,
    stop: tokio_util::sync::CancellationToken,
) {
    // The worker holds the recorder's sending side (through its runner): it is let go
    // at shutdown so the recorder can drain and close `freed`.
    let mut worker = Some(worker);
    let mut batches = Vec::new();
    loop {
        tokio::select! {
            received = freed.recv_many(&mut batches, usize::MAX) => {
                if received == 0 {
                    break;
                }
            }
            _ = stop.cancelled(), if worker.is_some() => {
                worker = None;
                continue;
            }
        }
        let slots: Arc<Vec<String>> = Arc::new(std::mem::take(&mut batches).concat());
        promote(&db, &signals, worker.as_ref(), slots).await;
    }
}

/// Promotes the next queued event of each slot, leasing as many as `worker` has free
/// run slots for and starting them there.
async fn promote(db: &Db, signals: &Signals, worker: Option<&Worker>, slots: Arc<Vec<String>>) {
    let mut delay = Duration::from_millis(50);
    for attempt in 1..=5 {
        let mut run_slots = worker.and_then(|worker| worker.reserve(slots.len()));
        let lease_events = run_slots.as_ref().map_or(0, |s| s.num_permits());
        let owner = worker.map(Worker::owner).unwrap_or_else(|| "".into());
        let lease_ms = worker.map_or(0, Worker::lease_ms);
        let freed = slots.clone();
        let promoted = db
            .run(move |conn| {
                conn.transaction(|conn| {
                    let slots: Vec<&str> = freed.iter().map(String::as_str).collect();
                    let keys: Vec<&str> = slots
                        .iter()
                        .filter_map(|slot| deliveries::ordering_key_of(slot))
                        .collect();
                    events::lock_ordering_keys(conn, &keys)?;
                    let lease = LeaseAtInsert {
                        events: lease_events as i32,
                        owner: &owner,
                        lease_ms,
                    };
                    deliveries::promote_and_lease(conn, &slots, lease)
                })
                .map_err(DbError::from)
            })
            .await;
        match promoted {
            Ok(leased) => {
                let chains = super::worker::split_by_event(leased);
                // Every leased event had a run slot; fewer leased than reserved means
                // no promoted event is left pending for the claim loop.
                if chains.len() >= lease_events {
                    signals.announce_work();
                }
                if let Some(worker) = worker {
                    for chain in chains {
                        if let Some(slot) = run_slots.as_mut().and_then(|s| s.split(1)) {
                            worker.start(chain, slot);
                        }
                    }
                }
                return;
            }
            Err(error) if attempt == 5 => {
                tracing::warn!(%error, slots = slots.len(), "promoting queued keyed deliveries failed; the sweep will");
            }
            Err(error) => {
                tracing::warn!(%error, "promoting queued keyed deliveries failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
    }
}
