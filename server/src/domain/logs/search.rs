//! Search's query task: pages through the log newest first with a keyset on
//! `(created_at, id)`, [`PAGE`] rows per query, and hands rows to the reader through a
//! small bounded channel, so a slow reader slows only its own queries.
//!
//! Filters only a GIN index serves (data substring, data containment, error substring)
//! are read in time windows going backwards. A GIN bitmap scan yields matches in no
//! order, so one query over the whole log fetches and sorts every match of every
//! partition before its first row: the first page would cost time in proportion to the
//! whole log. Windows are whole UTC days, like the daily partitions, so PostgreSQL
//! prunes each query to the window's partitions and a page costs only those days'
//! matches. The first window starts at the day holding the upper bound (cursor, `to`,
//! else now) and stays open above, so rows stamped after now still come first; each
//! next window ends where the previous one started and, after a window without a match,
//! is twice as long (up to [`MAX_SPAN_DAYS`]), so a rare match over a quiet month costs
//! a handful of queries, not one per day. The keyset runs inside each window and the
//! task moves back only once a window is exhausted, so rows come out in exactly the
//! order of the unwindowed query, none skipped or repeated. The walk ends at `from`, or
//! at the oldest row in the log, read once per search and only if the first window
//! runs dry.

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::filter::earliest_storable;
use super::{send_final, LogEntry, PAGE, SEARCH_BUFFER};
use crate::db::queries::logs::{self, Position};
use crate::db::Db;
use crate::domain::DomainError;

/// The longest window: enough to cross a quiet month in few queries, short enough
/// that one query never sorts the matches of much more than a month.
const MAX_SPAN_DAYS: i64 = 32;

/// Starts the query task of one search and returns the reader's end of its stream.
pub(super) fn spawn(
    db: Db,
    filter: logs::LogFilter,
    limit: u32,
    before: Option<Position>,
) -> ReceiverStream<Result<LogEntry, DomainError>> {
    let (sender, receiver) = mpsc::channel(SEARCH_BUFFER);
    tokio::spawn(async move {
        if let Err(error) = stream(&db, filter, limit, before, &sender).await {
            send_final(&sender, Err(error)).await;
        }
    });
    ReceiverStream::new(receiver)
}

/// Sends up to `limit` matching rows older than `before`, newest first. Returns early,
/// without error, when the reader goes away or after sending a corrupt row's error.
async fn stream(
    db: &Db,
    filter: logs::LogFilter,
    limit: u32,
    mut before: Option<Position>,
    sender: &mpsc::Sender<Result<LogEntry, DomainError>>,
) -> Result<(), DomainError> {
    let mut window = filter.is_gin_served().then(|| {
        // The newest time a row may have; `to` is exclusive, timestamps microseconds.
        let upper = [
            before.map(|p| p.created_at),
            filter.to.map(|to| to - TimeDelta::microseconds(1)),
        ];
        Window::first(upper.into_iter().flatten().min().unwrap_or_else(Utc::now))
    });
    let mut lower = filter.from;
    let filter = Arc::new(filter);
    let mut query_filter = match &window {
        Some(window) => Arc::new(window.narrow(&filter)),
        None => filter.clone(),
    };
    let mut found_in_window = false;
    let mut remaining = i64::from(limit);
    while remaining > 0 {
        let page = remaining.min(PAGE);
        let page_filter = query_filter.clone();
        let rows = db
            .run(move |conn| {
                logs::search_page(conn, &page_filter, before, page).map_err(DomainError::from)
            })
            .await?;
        let fetched = rows.len() as i64;
        for row in rows {
            let entry = LogEntry::from_row(row);
            if let Ok(entry) = &entry {
                before = Some(entry.position());
            }
            let failed = entry.is_err();
            if sender.send(entry).await.is_err() || failed {
                return Ok(()); // the reader went away, or a corrupt row ended the stream
            }
        }
        remaining -= fetched;
        found_in_window |= fetched > 0;
        if fetched == page {
            continue;
        }
        // The current window (or, unwindowed, the whole log) is exhausted.
        let Some(current) = &mut window else { break };
        let lower = match lower {
            Some(lower) => lower,
            None => match db
                .run(|conn| logs::oldest(conn).map_err(DomainError::from))
                .await?
            {
                Some(oldest) => *lower.insert(oldest),
                None => break, // an empty log
            },
        };
        if current.start <= lower {
            break;
        }
        current.step_back(found_in_window);
        found_in_window = false;
        query_filter = Arc::new(current.narrow(&filter));
    }
    Ok(())
}

/// One time window of a windowed search: whole UTC days, `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Window {
    /// Inclusive start, a UTC midnight (a partition boundary).
    start: DateTime<Utc>,
    /// Exclusive end; `None` for the first window, bounded only by the cursor and `to`.
    end: Option<DateTime<Utc>>,
    /// Length in days, what the next window grows from; the first counts as one.
    days: i64,
}

impl Window {
    /// The window of the day holding `upper`, open above; never starting before
    /// PostgreSQL's earliest time (no row is older, and PostgreSQL refuses such a bound).
    fn first(upper: DateTime<Utc>) -> Window {
        let start = upper
            .max(earliest_storable())
            .date_naive()
            .and_hms_opt(0, 0, 0)
            .expect("midnight exists")
            .and_utc();
        Window {
            start,
            end: None,
            days: 1,
        }
    }

    /// Moves to the window just before this one: as long, or twice as long (up to
    /// [`MAX_SPAN_DAYS`]) if this one held no match.
    fn step_back(&mut self, found: bool) {
        if !found {
            self.days = (self.days * 2).min(MAX_SPAN_DAYS);
        }
        self.end = Some(self.start);
        self.start -= TimeDelta::days(self.days);
    }

    /// `filter` restricted to this window.
    fn narrow(&self, filter: &logs::LogFilter) -> logs::LogFilter {
        logs::LogFilter {
            from: Some(filter.from.map_or(self.start, |from| from.max(self.start))),
            to: match (filter.to, self.end) {
                (Some(to), Some(end)) => Some(to.min(end)),
                (to, end) => to.or(end),
            },
            ..filter.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().expect("an RFC 3339 time")
    }

    /// Windows start at the upper bound's UTC midnight and step back without gap or
    /// overlap, doubling only after an empty window, up to the cap.
    #[test]
    fn windows_tile_whole_days_backwards_and_grow_only_when_empty() {
        let mut window = Window::first(at("2026-03-10T13:45:00.5Z"));
        assert_eq!(window.start, at("2026-03-10T00:00:00Z"));
        assert_eq!(window.end, None);
        window.step_back(true);
        assert_eq!(
            (window.start, window.end),
            (at("2026-03-09T00:00:00Z"), Some(at("2026-03-10T00:00:00Z")))
        );
        window.step_back(false);
        assert_eq!(
            (window.start, window.end),
            (at("2026-03-07T00:00:00Z"), Some(at("2026-03-09T00:00:00Z")))
        );
        window.step_back(true);
        assert_eq!(window.start, at("2026-03-05T00:00:00Z"));
        for _ in 0..10 {
            window.step_back(false);
        }
        assert_eq!(window.days, MAX_SPAN_DAYS);
        assert_eq!(window.end.unwrap() - window.start, TimeDelta::days(32));
    }

    /// A search bounded by `to` at PostgreSQL's earliest time looks at the day before
    /// it otherwise, and that window's start is a time PostgreSQL refuses.
    #[test]
    fn the_first_window_never_starts_before_postgresql_s_earliest_time() {
        let earliest = DateTime::from_timestamp_micros(-210_866_803_200_000_000).unwrap();
        let window = Window::first(earliest - TimeDelta::microseconds(1));
        assert_eq!(window.start, earliest);
    }

    /// The narrowed filter keeps the tighter of each bound and every other condition.
    #[test]
    fn narrowing_keeps_the_tighter_bounds() {
        let filter = logs::LogFilter {
            data_contains: Some("x".into()),
            from: Some(at("2026-03-09T06:00:00Z")),
            to: Some(at("2026-03-10T12:00:00Z")),
            ..Default::default()
        };
        let mut window = Window::first(at("2026-03-10T11:00:00Z"));
        let first = window.narrow(&filter);
        assert_eq!(first.from, Some(at("2026-03-10T00:00:00Z")));
        assert_eq!(first.to, filter.to);
        assert_eq!(first.data_contains.as_deref(), Some("x"));
        window.step_back(true);
        let second = window.narrow(&filter);
        assert_eq!(second.from, filter.from);
        assert_eq!(second.to, Some(at("2026-03-10T00:00:00Z")));
        let open = Window::first(at("2026-03-10T11:00:00Z")).narrow(&logs::LogFilter::default());
        assert_eq!(
            (open.from, open.to),
            (Some(at("2026-03-10T00:00:00Z")), None)
        );
    }
}
