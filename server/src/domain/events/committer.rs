//! The group committers: the threads that store unary Emits, many per transaction.
//!
//! The gRPC handlers queue each validated event with a reply channel; a committer takes
//! everything queued, stores it in one statement on its connection, answers the callers
//! and takes what queued meanwhile. Each committer is a thread of its own for its
//! lifetime, so while commits follow each other nothing sits between them: measured at
//! 8 callers, a fifth of every group's time went to hand-offs when each group was a
//! task and a `spawn_blocking` (waking a blocking thread, then the task after it, then
//! the loop that started the next group), all on the path of every caller waiting.
//!
//! Small groups commit one at a time, so the next one grows while a commit runs (larger
//! groups cost the database less per event: a fifth less CPU per unary Emit than two
//! small commits side by side). The second committer starts beside a commit that has
//! run for [`SLOW_COMMIT`] (waiting for a key's lock, a slow disk), so one slow commit
//! does not hold every caller, or at once for a group of [`BIG_GROUP`] events, big
//! enough to keep a database backend busy on its own (streams, many callers): two then
//! use both cores.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::{Pending, Storage, MAX_GROUP_COMMIT};
use crate::shutdown::Shutdown;

/// Committers, hence commits in flight at most.
const COMMITTERS: usize = 2;
/// How long a commit runs before the next small group may start beside it.
const SLOW_COMMIT: Duration = Duration::from_millis(10);
/// Events in a group that may start beside a commit in flight at once (measured at 64
/// callers: 6-10% more events/s than with 256, the same at 8 callers, whose groups are
/// smaller).
const BIG_GROUP: usize = 32;

/// Starts the committers. They end once every sender of `receiver` is gone (the gRPC
/// server stopped) and what was queued is stored; shutdown waits for them.
pub(super) fn spawn(storage: Storage, receiver: mpsc::Receiver<Pending>, shutdown: &Shutdown) {
    let queue = Arc::new(Queue {
        receiver: Mutex::new(receiver),
        started: Mutex::new([None; COMMITTERS]),
        finished: Condvar::new(),
    });
    for committer in 0..COMMITTERS {
        let (queue, storage) = (queue.clone(), storage.clone());
        shutdown.spawn_blocking(move || {
            while let Some(group) = queue.next_group(committer) {
                storage.commit_group(group);
                queue.finished(committer);
            }
        });
    }
}

/// The events waiting to be stored, shared by the committers, and when each one's
/// commit in flight started.
struct Queue {
    /// Held by the committer gathering the next group.
    receiver: Mutex<mpsc::Receiver<Pending>>,
    /// Per committer: when its commit in flight started.
    started: Mutex<[Option<Instant>; COMMITTERS]>,
    /// Signalled when a commit ends.
    finished: Condvar,
}

impl Queue {
    /// Waits for events, then for the moment `committer` may store them (see the module
    /// doc), and returns everything queued by then; `None` once the queue is closed and
    /// empty.
    fn next_group(&self, committer: usize) -> Option<Vec<Pending>> {
        let mut receiver = lock(&self.receiver);
        let mut group = vec![receiver.blocking_recv()?];
        let mut started = lock(&self.started);
        loop {
            gather(&mut receiver, &mut group);
            let other = started
                .iter()
                .enumerate()
                .filter(|(index, _)| *index != committer)
                .filter_map(|(_, started)| *started)
                .min();
            let Some(other) = other else {
                break;
            };
            let running = other.elapsed();
            if group.len() >= BIG_GROUP || running >= SLOW_COMMIT {
                break;
            }
            started = self
                .finished
                .wait_timeout(started, SLOW_COMMIT - running)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        started[committer] = Some(Instant::now());
        Some(group)
    }

    /// `committer`'s commit ended.
    fn finished(&self, committer: usize) {
        lock(&self.started)[committer] = None;
        self.finished.notify_all();
    }
}

/// Adds what is queued now to `group`, up to [`MAX_GROUP_COMMIT`] events.
fn gather(receiver: &mut mpsc::Receiver<Pending>, group: &mut Vec<Pending>) {
    while group.len() < MAX_GROUP_COMMIT {
        match receiver.try_recv() {
            Ok(pending) => group.push(pending),
            Err(_) => break,
        }
    }
}

/// Locks a mutex whose holder may have panicked: the queue and the start times stay
/// consistent whatever a committer was doing.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
