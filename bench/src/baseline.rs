//! The limits the scenarios are compared with, measured in the same run on the same
//! machine:
//! - storage: how fast PostgreSQL takes the rows an accepted AFTER event costs (one
//!   `events` row and one `deliveries` row) through an r2d2 pool of Diesel connections,
//!   with batched multi-row INSERTs from several threads, one transaction per batch;
//! - HTTP: how many requests/s a plain keep-alive hyper client gets from the sink
//!   (see [`crate::sink::hammer`]).
//!
//! The storage baseline runs on its own fresh database, migrated through the server
//! crate, with no server attached, so nothing else competes for the disk.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use diesel::r2d2::{ConnectionManager, Pool};
use diesel::{Connection, ExpressionMethods, PgConnection, RunQueryDsl};
use provisioning_server::db::schema::{deliveries, events, handlers};

use crate::scenarios::event_data;

/// Rows/s (events, each with its delivery) inserted by `threads` threads in batches of
/// `batch` into a freshly migrated database at `url`. Returns the rate and the elapsed time.
pub async fn storage(
    url: &str,
    total: u64,
    threads: usize,
    batch: usize,
) -> anyhow::Result<(f64, Duration)> {
    provisioning_server::db::Db::connect(url, 2)?
        .migrate()
        .await
        .context("migrating the baseline database")?;
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || insert_rows(&url, total, threads, batch)).await?
}

fn insert_rows(
    url: &str,
    total: u64,
    threads: usize,
    batch: usize,
) -> anyhow::Result<(f64, Duration)> {
    let pool = Pool::builder()
        .max_size(threads as u32)
        .build(ConnectionManager::<PgConnection>::new(url))?;
    let handler_id: i64 = diesel::insert_into(handlers::table)
        .values((
            handlers::name.eq("storage baseline"),
            handlers::event.eq("accounts.create"),
            handlers::phase.eq("after"),
            handlers::kind.eq("http"),
            handlers::status.eq("enabled"),
            handlers::priority.eq(0),
            handlers::timeout_ms.eq(10_000),
            handlers::url.eq("http://127.0.0.1:9/"),
            handlers::failure_policy.eq("fail_closed"),
        ))
        .returning(handlers::id)
        .get_result(&mut pool.get()?)?;
    let next = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| -> anyhow::Result<()> {
                    let mut conn = pool.get()?;
                    loop {
                        let first = next.fetch_add(batch as u64, Ordering::Relaxed);
                        if first >= total {
                            return Ok(());
                        }
                        let last = (first + batch as u64).min(total);
                        insert_batch(&mut conn, handler_id, first..last)?;
                    }
                })
            })
            .collect();
        workers.into_iter().try_for_each(|w| {
            w.join()
                .map_err(|_| anyhow::anyhow!("a baseline thread panicked"))?
        })
    })?;
    let elapsed = start.elapsed();
    Ok((crate::report::per_second(total, elapsed), elapsed))
}

/// One transaction: the events, then one delivery per event, as the server stores them.
fn insert_batch(
    conn: &mut PgConnection,
    handler_id: i64,
    range: std::ops::Range<u64>,
) -> anyhow::Result<()> {
    let rows: Vec<_> = range
        .map(|i| {
            (
                events::event.eq("accounts.create"),
                events::data.eq(event_data(i)),
            )
        })
        .collect();
    conn.transaction(|conn| {
        let ids: Vec<i64> = diesel::insert_into(events::table)
            .values(&rows)
            .returning(events::id)
            .get_results(conn)?;
        let pending: Vec<_> = ids
            .into_iter()
            .map(|id| {
                (
                    deliveries::event_id.eq(id),
                    deliveries::handler_id.eq(handler_id),
                    deliveries::priority.eq(0),
                    deliveries::state.eq(1i16),
                )
            })
            .collect();
        diesel::insert_into(deliveries::table)
            .values(&pending)
            .execute(conn)?;
        anyhow::Ok(())
    })
}
