//! Live tail of the execution log, across replicas.
//!
//! Every replica's recorder commits log rows, then announces them on `provisioning_logs`; the
//! listener turns that into `Signals.logs`. A tail never receives rows from the write
//! path: it subscribes to the signal and, when woken, queries the database for matching
//! rows with an id above the highest it has seen (or heard announced, so a rare filter
//! does not rescan the rows it skipped). So a tail costs the writers nothing, a slow
//! tail slows only itself, and a lagged broadcast receiver loses nothing (it just
//! queries again).
//!
//! Ids come from one sequence but transactions may commit out of id order (two replicas'
//! batches overlap), so a row can become visible after rows with higher ids. The tail
//! therefore remembers the ids it has seen over the last `LOOKBACK` and rechecks that
//! window every `RECHECK`, sending each row once.
//!
//! Each tail has a bounded channel to its reader. Catching up (backlog, or resuming
//! from a cursor) waits for the reader, like Search; once live, a reader that lets the
//! channel fill up gets a final "lagged" item carrying the cursor of the last row it was
//! sent, and the tail ends: resuming from that cursor (rows with higher ids) loses
//! nothing, short of a row that committed out of order in the very moment of the lag.

use std::collections::{BTreeSet, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use diesel::{PgConnection, QueryResult};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{broadcast, mpsc, OwnedSemaphorePermit};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use super::{encode_cursor, LogEntry, PAGE};
use crate::db::queries::logs::{self, LogFilter, Position};
use crate::db::{Db, DbError};
use crate::domain::DomainError;
use crate::listener::Signals;

/// Items buffered between a tail and its reader; a live reader this far behind lags.
const BUFFER: usize = 1024;
/// How long a row may stay invisible after rows with higher ids became visible.
const LOOKBACK: Duration = Duration::from_secs(5);
/// How often that window is rechecked.
const RECHECK: Duration = Duration::from_secs(1);
/// Shortest time between two queries of one tail: a burst of signals is one query.
const MIN_GAP: Duration = Duration::from_millis(20);

/// What a tail stream carries.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "nearly every item is an entry: boxing would allocate per row"
)]
pub enum TailItem {
    /// A matching run.
    Entry(LogEntry),
    /// The reader fell too far behind; the stream ends. Resuming from `cursor` (the
    /// last row sent) continues without loss.
    Lagged {
        /// Cursor of the last row sent.
        cursor: String,
    },
    /// The server is stopping; the stream ends. Resume from `cursor` (the last row
    /// sent, `None` if none was) on any replica.
    ShuttingDown {
        /// Cursor of the last row sent.
        cursor: Option<String>,
    },
    /// A database failure ended the stream.
    Failed(DomainError),
}

/// Where a validated tail starts.
pub(super) enum Start {
    /// With rows logged from now on.
    Now,
    /// With the last `n` matching rows, oldest first.
    Backlog(i64),
    /// With rows logged after this row.
    After(Position),
}

/// The start position, fixed before the stream is handed out: every row logged after
/// Tail returned is sent.
enum Resolved {
    /// Live above this id.
    Live(i64),
    /// First the rows at these positions (newest first, all ids up to `high`), then
    /// live above `high`.
    Backlog { high: i64, keys: Vec<Position> },
    /// Every matching row above this id, then live.
    CatchUp(i64),
}

/// Why a tail ended.
enum Stop {
    /// The reader went away.
    Gone,
    /// The reader fell behind.
    Lagged,
    /// Shutdown.
    ShuttingDown,
    /// A query or a row failed.
    Failed(DomainError),
}

/// Fixes the start position, then starts a tail task and returns its stream. The task
/// holds `slot` (one of the live-tail slots) until it ends.
pub(super) async fn open(
    db: Db,
    signals: &Signals,
    shutdown: CancellationToken,
    filter: LogFilter,
    start: Start,
    slot: OwnedSemaphorePermit,
) -> Result<ReceiverStream<TailItem>, DomainError> {
    // Subscribed before the start position is read: no signal in between is missed.
    let wake = signals.logs.subscribe();
    let filter = Arc::new(filter);
    let query_filter = filter.clone();
    let resolved = db
        .run(move |conn| {
            Ok::<_, DbError>(match start {
                Start::Now => Resolved::Live(logs::max_id(conn)?),
                Start::After(position) => Resolved::CatchUp(position.id),
                // One snapshot: the backlog is exactly what was visible below `high`.
                Start::Backlog(n) => {
                    conn.build_transaction()
                        .read_only()
                        .repeatable_read()
                        .run(|conn| {
                            Ok::<_, DbError>(Resolved::Backlog {
                                high: logs::max_id(conn)?,
                                keys: logs::newest_positions(conn, &query_filter, n)?,
                            })
                        })?
                }
            })
        })
        .await?;
    let (sender, receiver) = mpsc::channel(BUFFER);
    let tail = Tail {
        db,
        filter,
        sender,
        wake,
        shutdown,
        last_sent: None,
        _slot: slot,
    };
    tokio::spawn(tail.run(resolved));
    Ok(ReceiverStream::new(receiver))
}

struct Tail {
    db: Db,
    filter: Arc<LogFilter>,
    sender: mpsc::Sender<TailItem>,
    wake: broadcast::Receiver<i64>,
    shutdown: CancellationToken,
    last_sent: Option<Position>,
    /// Released when the tail ends (`--max-tail-subscribers`).
    _slot: OwnedSemaphorePermit,
}

impl Tail {
    async fn run(mut self, start: Resolved) {
        let Err(stop) = self.follow(start).await;
        let cursor = self.last_sent.map(encode_cursor);
        let last = match stop {
            Stop::Gone => return,
            Stop::Lagged => TailItem::Lagged {
                cursor: cursor.unwrap_or_default(),
            },
            Stop::ShuttingDown => TailItem::ShuttingDown { cursor },
            Stop::Failed(error) => TailItem::Failed(error),
        };
        // Live sends keep one slot free for this; otherwise the reader may be gone.
        if self.sender.try_send(last).is_err() {
            tracing::debug!("tail ended without its final notice: the reader is gone or full");
        }
    }

    async fn follow(&mut self, start: Resolved) -> Result<Infallible, Stop> {
        let high = match start {
            Resolved::Live(high) => high,
            Resolved::Backlog { high, keys } => self.backlog(high, keys).await?,
            Resolved::CatchUp(after_id) => self.catch_up(after_id).await?,
        };
        self.live(high).await
    }

    /// Sends the backlog rows at `keys` (newest first), oldest first, and returns
    /// `high`, the highest id visible when they were chosen: the live phase continues
    /// above it. Only positions are held in memory; rows are streamed page by page.
    async fn backlog(&mut self, high: i64, keys: Vec<Position>) -> Result<i64, Stop> {
        let (Some(&newest), Some(&oldest)) = (keys.first(), keys.last()) else {
            return Ok(high);
        };
        drop(keys);
        // Just before the oldest: ids are integers, so this includes it.
        let mut after = Position {
            created_at: oldest.created_at,
            id: oldest.id.saturating_sub(1),
        };
        loop {
            let from = after;
            let rows = self
                .query(move |conn, filter| {
                    logs::ascending_page(conn, filter, from, newest, high, PAGE)
                })
                .await?;
            let fetched = rows.len() as i64;
            for row in rows {
                let entry = LogEntry::from_row(row).map_err(Stop::Failed)?;
                after = entry.position();
                self.deliver(entry).await?;
            }
            if fetched < PAGE {
                return Ok(high);
            }
        }
    }

    /// Sends every matching row with an id above `high`, in id order, waiting for the
    /// reader; returns the highest id seen.
    async fn catch_up(&mut self, mut high: i64) -> Result<i64, Stop> {
        loop {
            let after = high;
            let rows = self
                .query(move |conn, filter| logs::rows_after_id(conn, filter, after, PAGE))
                .await?;
            let fetched = rows.len() as i64;
            for row in rows {
                high = high.max(row.id);
                self.deliver(LogEntry::from_row(row).map_err(Stop::Failed)?)
                    .await?;
            }
            if fetched < PAGE {
                return Ok(high);
            }
        }
    }

    /// Follows new rows above `start` until the reader goes, lags or the server stops.
    async fn live(&mut self, start: i64) -> Result<Infallible, Stop> {
        // `high`: every row up to it was visible to a query (or is in flight and covered
        // by the look-back); `floor`: every matching row up to it has been seen;
        // `recent`: the ids seen above `floor`; `history`: when `high` had which value.
        let mut high = start;
        let mut floor = start;
        let mut recent = BTreeSet::new();
        let mut history: VecDeque<(Instant, i64)> = VecDeque::new();
        let mut next_recheck = Instant::now() + RECHECK;
        let mut last_query: Option<Instant> = None;
        loop {
            // The highest id a recorder announced: its rows were committed before the
            // notification, so the query below sees them.
            let mut announced = high;
            tokio::select! {
                _ = self.shutdown.cancelled() => return Err(Stop::ShuttingDown),
                _ = self.sender.closed() => return Err(Stop::Gone),
                signal = self.wake.recv() => match signal {
                    Ok(id) => announced = announced.max(id),
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return Err(Stop::ShuttingDown),
                },
                _ = tokio::time::sleep_until(next_recheck) => {}
            }
            if let Some(wait) = last_query.and_then(|at| MIN_GAP.checked_sub(at.elapsed())) {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = self.shutdown.cancelled() => return Err(Stop::ShuttingDown),
                }
            }
            announced = announced.max(self.drain_wakeups());
            last_query = Some(Instant::now());

            loop {
                let after = high;
                let rows = self
                    .query(move |conn, filter| logs::rows_after_id(conn, filter, after, PAGE))
                    .await?;
                let fetched = rows.len() as i64;
                for row in rows {
                    high = high.max(row.id);
                    if recent.insert(row.id) {
                        self.offer(LogEntry::from_row(row).map_err(Stop::Failed)?)?;
                    }
                }
                if fetched < PAGE {
                    break;
                }
            }
            // Move past non-matching rows too, so a rare filter does not rescan them on
            // every wake-up; rows of that range still in flight are the look-back's.
            high = high.max(announced);
            history.push_back((Instant::now(), high));

            if Instant::now() >= next_recheck {
                next_recheck = Instant::now() + RECHECK;
                if floor < high {
                    self.recheck(floor, high, &mut recent).await?;
                }
                // What was the highest id LOOKBACK ago is now settled.
                let now = Instant::now();
                while let Some(&(at, seen)) = history.front() {
                    if now.duration_since(at) < LOOKBACK {
                        break;
                    }
                    floor = floor.max(seen);
                    history.pop_front();
                }
                recent = recent.split_off(&floor.saturating_add(1));
            }
        }
    }

    /// Sends the matching rows in `(low, high]` not sent yet: rows that became visible
    /// after rows with higher ids.
    async fn recheck(
        &mut self,
        low: i64,
        high: i64,
        recent: &mut BTreeSet<i64>,
    ) -> Result<(), Stop> {
        let ids = self
            .query(move |conn, filter| logs::ids_between(conn, filter, low, high))
            .await?;
        let missing: Vec<i64> = ids.into_iter().filter(|id| !recent.contains(id)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        tracing::debug!(
            rows = missing.len(),
            "tail found rows committed out of id order"
        );
        let rows = self
            .query(move |conn, _| logs::rows_by_ids(conn, &missing))
            .await?;
        for row in rows {
            if recent.insert(row.id) {
                self.offer(LogEntry::from_row(row).map_err(Stop::Failed)?)?;
            }
        }
        Ok(())
    }

    /// Sends a row, waiting for the reader (catch-up phases).
    async fn deliver(&mut self, entry: LogEntry) -> Result<(), Stop> {
        let position = entry.position();
        tokio::select! {
            sent = self.sender.send(TailItem::Entry(entry)) => sent.map_err(|_| Stop::Gone)?,
            _ = self.shutdown.cancelled() => return Err(Stop::ShuttingDown),
        }
        self.last_sent = Some(position);
        Ok(())
    }

    /// Sends a row without waiting (live phase). The last slot of the channel is kept
    /// for the lag notice, so a reader that lets the buffer fill up always learns where
    /// to resume.
    fn offer(&mut self, entry: LogEntry) -> Result<(), Stop> {
        if self.sender.capacity() <= 1 {
            return Err(if self.sender.is_closed() {
                Stop::Gone
            } else {
                Stop::Lagged
            });
        }
        let position = entry.position();
        match self.sender.try_send(TailItem::Entry(entry)) {
            Ok(()) => {
                self.last_sent = Some(position);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => Err(Stop::Lagged),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Stop::Gone),
        }
    }

    /// Consumes pending wake-ups (the query about to run covers them all) and returns
    /// the highest id they announced.
    fn drain_wakeups(&mut self) -> i64 {
        let mut announced = 0;
        loop {
            match self.wake.try_recv() {
                Ok(id) => announced = announced.max(id),
                Err(TryRecvError::Lagged(_)) => {}
                Err(TryRecvError::Empty | TryRecvError::Closed) => return announced,
            }
        }
    }

    /// Runs a query on the pool with this tail's filter; shutdown interrupts the wait.
    async fn query<T, F>(&self, work: F) -> Result<T, Stop>
    where
        F: FnOnce(&mut PgConnection, &LogFilter) -> QueryResult<T> + Send + 'static,
        T: Send + 'static,
    {
        let filter = self.filter.clone();
        let result = self
            .db
            .run(move |conn| work(conn, &filter).map_err(DbError::from));
        tokio::select! {
            result = result => result.map_err(|error| Stop::Failed(error.into())),
            _ = self.shutdown.cancelled() => Err(Stop::ShuttingDown),
        }
    }
}
