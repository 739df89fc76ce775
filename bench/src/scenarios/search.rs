//! Log search: fills `execution_logs` with `--search-rows` generated rows straight in
//! PostgreSQL, then times the first page of each advanced-search filter through the
//! Search RPC.
//!
//! The fill is what a bulk load does: daily partitions for the last 30 days, the
//! table's secondary indexes saved (`pg_indexes`), dropped, rows inserted with
//! `INSERT … SELECT … FROM generate_series` from several connections, the indexes
//! rebuilt from the saved definitions (partition by partition, several at once, then
//! attached to the parent), partitions vacuumed and the table analyzed. Index definitions are read from the database, so the fill follows
//! the migrations as they change. Rows vary in status, phase, event, handler, data,
//! error and time (spread over 30 days), so every filter has work to do.
//!
//! If Search answers UNIMPLEMENTED the timing rows are reported "unavailable"; the
//! fill rate is still measured.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use diesel::sql_types::{BigInt, Text};
use diesel::{Connection, PgConnection, QueryableByName, RunQueryDsl};
use provisioning_client::{proto, Client};

use super::Ctx;
use crate::report::{per_second, percentile_ms, Metric};

const NAME: &str = "search";
/// Rows per INSERT statement (one transaction each).
const CHUNK: u64 = 250_000;

/// Fills, then times.
pub async fn run(ctx: &Ctx<'_>) -> anyhow::Result<Vec<Metric>> {
    let s = ctx.settings;
    let url = ctx.db.url.clone();
    let rows = s.search_rows;
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(2, 4);
    let fill = tokio::task::spawn_blocking(move || fill(&url, rows, threads)).await??;
    let mut metrics = vec![Metric::new(
        NAME,
        "fill execution_logs",
        per_second(rows, fill.total()),
        "rows/s",
    )
    .note(format!(
        "{rows} rows in {:.1} s: insert {:.1} s, {} indexes {:.1} s, vacuum+analyze {:.1} s",
        fill.total().as_secs_f64(),
        fill.insert.as_secs_f64(),
        fill.indexes,
        fill.index.as_secs_f64(),
        fill.vacuum.as_secs_f64()
    ))];
    let client = ctx.server.client().await?;
    let mut unimplemented = None;
    for (name, filter) in filters(SystemTime::now()) {
        let p50 = format!("first page: {name} p50");
        let p95 = format!("first page: {name} p95");
        if let Some(why) = &unimplemented {
            metrics.push(Metric::unavailable(NAME, p50, "ms", why));
            metrics.push(Metric::unavailable(NAME, p95, "ms", why));
            continue;
        }
        match time_filter(&client, &filter, s.search_limit, s.search_repeats).await {
            Ok((mut samples, returned)) => {
                samples.sort_unstable();
                metrics.push(
                    Metric::new(NAME, p50, percentile_ms(&samples, 50.0), "ms").note(format!(
                        "{returned} rows on the page, {} runs",
                        samples.len()
                    )),
                );
                metrics.push(Metric::new(NAME, p95, percentile_ms(&samples, 95.0), "ms"));
            }
            Err(error) => {
                let why = match error.code() {
                    Some(tonic::Code::Unimplemented) => {
                        let why = "Search answers UNIMPLEMENTED".to_owned();
                        unimplemented = Some(why.clone());
                        why
                    }
                    _ => format!("Search failed: {error}"),
                };
                metrics.push(Metric::unavailable(NAME, p50, "ms", &why));
                metrics.push(Metric::unavailable(NAME, p95, "ms", why));
            }
        }
    }
    Ok(metrics)
}

/// The timed filters: each field alone, a date range, and a combination.
fn filters(now: SystemTime) -> Vec<(&'static str, proto::LogFilter)> {
    let day = 86_400;
    let now = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let at = |seconds: i64| Some(prost_types::Timestamp { seconds, nanos: 0 });
    let base = proto::LogFilter::default();
    vec![
        ("none", base.clone()),
        (
            "status",
            proto::LogFilter {
                status: proto::RunStatus::Fail.into(),
                ..base.clone()
            },
        ),
        (
            "phase",
            proto::LogFilter {
                phase: proto::Phase::Before.into(),
                ..base.clone()
            },
        ),
        (
            "event",
            proto::LogFilter {
                events: vec!["accounts.create".into()],
                ..base.clone()
            },
        ),
        (
            "handler_id",
            proto::LogFilter {
                handler_id: 7,
                ..base.clone()
            },
        ),
        (
            "data_contains",
            proto::LogFilter {
                data_contains: r#""accname": "42""#.into(),
                ..base.clone()
            },
        ),
        (
            "data_json_contains",
            proto::LogFilter {
                data_json_contains: r#"{"id_clients": 15}"#.into(),
                ..base.clone()
            },
        ),
        (
            "error_contains",
            proto::LogFilter {
                error_contains: "timeout".into(),
                ..base.clone()
            },
        ),
        (
            "date range",
            proto::LogFilter {
                from: at(now - 10 * day),
                to: at(now - 9 * day),
                ..base.clone()
            },
        ),
        (
            "combined",
            proto::LogFilter {
                status: proto::RunStatus::Fail.into(),
                phase: proto::Phase::After.into(),
                events: vec!["accounts.create".into()],
                data_json_contains: r#"{"id_clients": 15}"#.into(),
                from: at(now - 20 * day),
                to: at(now - 5 * day),
                ..base
            },
        ),
    ]
}

/// Durations of `repeats` first-page searches (until the stream ends) and the row count
/// of the last one.
async fn time_filter(
    client: &Client,
    filter: &proto::LogFilter,
    limit: u32,
    repeats: usize,
) -> Result<(Vec<Duration>, usize), SearchError> {
    let mut samples = Vec::with_capacity(repeats);
    let mut returned = 0;
    for _ in 0..repeats {
        let t0 = Instant::now();
        let mut stream = client
            .search_logs(proto::SearchLogsRequest {
                filter: Some(filter.clone()),
                limit,
                cursor: String::new(),
            })
            .await
            .map_err(SearchError::Client)?;
        returned = 0;
        while stream
            .message()
            .await
            .map_err(SearchError::Status)?
            .is_some()
        {
            returned += 1;
        }
        samples.push(t0.elapsed());
    }
    Ok((samples, returned))
}

/// A failed search, from the call or from the stream.
#[derive(Debug)]
enum SearchError {
    Client(provisioning_client::ClientError),
    Status(tonic::Status),
}

impl SearchError {
    fn code(&self) -> Option<tonic::Code> {
        match self {
            SearchError::Client(error) => error.code(),
            SearchError::Status(status) => Some(status.code()),
        }
    }
}

impl std::fmt::Display for SearchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SearchError::Client(error) => write!(f, "{error}"),
            SearchError::Status(status) => write!(f, "{:?}: {}", status.code(), status.message()),
        }
    }
}

/// Time spent in each step of the fill.
struct FillTimes {
    insert: Duration,
    index: Duration,
    vacuum: Duration,
    indexes: usize,
}

impl FillTimes {
    fn total(&self) -> Duration {
        self.insert + self.index + self.vacuum
    }
}

#[derive(QueryableByName)]
struct IndexRow {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Text)]
    def: String,
    #[diesel(sql_type = Text)]
    qualified: String,
}

#[derive(QueryableByName)]
struct NameRow {
    #[diesel(sql_type = Text)]
    name: String,
}

/// One generated row per `n`; `$1`..`$2` is the chunk, `$3` the total row count.
const INSERT_ROWS: &str = r#"
INSERT INTO execution_logs (created_at, phase, event, status, handler_id, handler_name, kind,
    error, duration_ms, attempt, data_sent, data_returned, response, http_status, exit_code,
    event_id, delivery_id)
SELECT
    now() - ((n * 2654435761) % $3)::float8 / $3 * interval '30 days',
    CASE WHEN n % 4 = 0 THEN 'before' ELSE 'after' END,
    (ARRAY['clients.create', 'clients.update', 'clients.delete', 'clients.archive',
           'clients.custom_fields_update', 'clients.balance_non_negative',
           'clients.balance_non_positive', 'accounts.create', 'accounts.update',
           'accounts.delete', 'subscriptions.assign', 'subscriptions.activate',
           'subscriptions.deactivate', 'subscriptions.renew', 'subscriptions.close',
           'email_rates_manager.import', 'import.process_failed',
           'import.process_success'])[(1 + (n / 10) % 18)::int],
    CASE WHEN n % 10 = 0 THEN 'fail' ELSE 'success' END,
    1 + (n / 3) % 50,
    'handler-' || (1 + (n / 3) % 50),
    'http',
    CASE WHEN n % 10 <> 0 THEN ''
         WHEN n % 30 = 0 THEN 'timeout after 10000 ms'
         WHEN n % 20 = 0 THEN 'connection refused'
         ELSE 'HTTP 503: upstream unavailable' END,
    (n % 500)::int,
    CASE WHEN n % 10 = 0 THEN 1 + ((n / 10) % 3)::int ELSE 1 END,
    jsonb_build_object('accname', (n % 1000)::text, 'id_clients', n % 97, 'name', 'acc-' || n),
    CASE WHEN n % 4 = 0
         THEN jsonb_build_object('accname', (n % 1000)::text, 'id_clients', n % 97, 'name', 'acc-' || n)
    END,
    '',
    CASE WHEN n % 10 = 0 THEN 503 ELSE 200 END,
    NULL::int,
    n,
    CASE WHEN n % 4 = 0 THEN NULL ELSE n END
FROM generate_series($1::bigint, $2::bigint) AS n
"#;

fn fill(url: &str, rows: u64, threads: usize) -> anyhow::Result<FillTimes> {
    let mut conn = PgConnection::establish(url)?;
    diesel::sql_query("SELECT ensure_log_partitions(current_date - 30, current_date)")
        .execute(&mut conn)
        .context("creating log partitions")?;
    // Secondary indexes of the partitioned table (the primary key stays); dropping a
    // parent index drops its partitions' indexes.
    let indexes: Vec<IndexRow> = diesel::sql_query(
        "SELECT indexname::text AS name, indexdef AS def, \
                quote_ident(schemaname) || '.' || quote_ident(indexname) AS qualified \
         FROM pg_indexes \
         WHERE schemaname = current_schema() AND tablename = 'execution_logs' \
         AND indexname NOT IN (SELECT conname FROM pg_constraint \
                               WHERE conrelid = 'execution_logs'::regclass)",
    )
    .load(&mut conn)?;
    for index in &indexes {
        diesel::sql_query(format!("DROP INDEX \"{}\"", index.name)).execute(&mut conn)?;
    }

    let start = Instant::now();
    let chunks: Vec<(u64, u64)> = (0..rows.div_ceil(CHUNK))
        .map(|c| (c * CHUNK + 1, ((c + 1) * CHUNK).min(rows)))
        .collect();
    parallel(url, threads, &chunks, |conn, &(first, last)| {
        diesel::sql_query(INSERT_ROWS)
            .bind::<BigInt, _>(first as i64)
            .bind::<BigInt, _>(last as i64)
            .bind::<BigInt, _>(rows as i64)
            .execute(conn)
            .context("inserting execution-log rows")?;
        Ok(())
    })?;
    let insert = start.elapsed();

    let partitions: Vec<NameRow> = diesel::sql_query(
        "SELECT inhrelid::regclass::text AS name FROM pg_inherits \
         WHERE inhparent = 'execution_logs'::regclass",
    )
    .load(&mut conn)?;
    let partitions: Vec<String> = partitions.into_iter().map(|p| p.name).collect();

    // PostgreSQL's own pattern for indexing a partitioned table piecewise: the parent
    // index `ON ONLY` (invalid until complete), one index per partition, built in
    // parallel under names of our own (concurrent builds would race for generated
    // names), each attached to the parent, which becomes valid with the last one.
    let start = Instant::now();
    let mut builds = Vec::new();
    for (i, index) in indexes.iter().enumerate() {
        let unique = if index.def.starts_with("CREATE UNIQUE INDEX") {
            "UNIQUE "
        } else {
            ""
        };
        let tail = index
            .def
            .find(" USING ")
            .map(|at| &index.def[at..])
            .ok_or_else(|| anyhow::anyhow!("unexpected index definition {:?}", index.def))?;
        for (p, partition) in partitions.iter().enumerate() {
            let child = format!("bench_ix_{i}_{p}");
            builds.push((
                format!("CREATE {unique}INDEX {child} ON {partition}{tail}"),
                format!("ALTER INDEX {} ATTACH PARTITION {child}", index.qualified),
            ));
        }
    }
    for index in &indexes {
        diesel::sql_query(index.def.as_str())
            .execute(&mut conn)
            .with_context(|| format!("creating {}", index.def))?;
    }
    parallel(url, threads, &builds, |conn, (create, _)| {
        diesel::sql_query("SET maintenance_work_mem = '256MB'").execute(conn)?;
        diesel::sql_query(create.as_str())
            .execute(conn)
            .with_context(|| format!("rebuilding: {create}"))?;
        Ok(())
    })?;
    for (_, attach) in &builds {
        diesel::sql_query(attach.as_str())
            .execute(&mut conn)
            .with_context(|| attach.clone())?;
    }
    let index = start.elapsed();

    let start = Instant::now();
    parallel(url, threads, &partitions, |conn, partition| {
        diesel::sql_query(format!("VACUUM {partition}")).execute(conn)?;
        Ok(())
    })?;
    diesel::sql_query("ANALYZE execution_logs").execute(&mut conn)?;
    let vacuum = start.elapsed();
    Ok(FillTimes {
        insert,
        index,
        vacuum,
        indexes: indexes.len(),
    })
}

/// Runs `work` on every item from `threads` threads, each with its own connection.
fn parallel<T: Sync>(
    url: &str,
    threads: usize,
    items: &[T],
    work: impl Fn(&mut PgConnection, &T) -> anyhow::Result<()> + Sync,
) -> anyhow::Result<()> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads.min(items.len()))
            .map(|_| {
                scope.spawn(|| -> anyhow::Result<()> {
                    let mut conn = PgConnection::establish(url)?;
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(item) = items.get(i) else {
                            return Ok(());
                        };
                        work(&mut conn, item)?;
                    }
                })
            })
            .collect();
        workers.into_iter().try_for_each(|w| {
            w.join()
                .map_err(|_| anyhow::anyhow!("a fill thread panicked"))?
        })
    })
}
