//! Queries on the execution log.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Int4, Nullable, Text, Timestamptz};

use crate::db::prepared::{prepared, PlannedPerCall};

use crate::db::models::LogRow;

/// Columns of a batch of new log rows, one vector per column, same length; the text is
/// borrowed from the records being written.
#[derive(Debug, Default)]
pub struct NewLogColumns<'a> {
    pub created_at: Vec<DateTime<Utc>>,
    pub phase: Vec<&'static str>,
    pub event: Vec<&'a str>,
    pub status: Vec<&'static str>,
    pub handler_id: Vec<i64>,
    pub handler_name: Vec<&'a str>,
    pub kind: Vec<&'static str>,
    pub error: Vec<&'a str>,
    pub duration_ms: Vec<i32>,
    pub attempt: Vec<i32>,
    pub data_sent: Vec<&'a str>,
    pub data_returned: Vec<Option<&'a str>>,
    pub response: Vec<&'a str>,
    pub http_status: Vec<Option<i32>>,
    pub exit_code: Vec<Option<i32>>,
    pub event_id: Vec<i64>,
    pub delivery_id: Vec<Option<i64>>,
    /// Who emitted each row's event.
    pub emitted_by: Vec<Option<&'a str>>,
    /// Runs of HandlerService.Test.
    pub test: Vec<bool>,
}

#[derive(QueryableByName)]
struct MaxId {
    #[diesel(sql_type = Nullable<BigInt>)]
    max: Option<i64>,
}

/// Inserts a batch of log rows (data as JSON text, cast to jsonb) and, in the same
/// statement, settles the successes they record: deletes the `delivered` deliveries and
/// clears the failing clock of the `succeeded` handlers. Returns the highest log id
/// written.
pub fn insert_batch(
    conn: &mut PgConnection,
    rows: &NewLogColumns<'_>,
    delivered: &[i64],
    succeeded: &[i64],
) -> QueryResult<Option<i64>> {
    let max: MaxId = prepared(
        r#"
WITH ins AS (
    INSERT INTO execution_logs (created_at, phase, event, status, handler_id, handler_name, kind, error,
        duration_ms, attempt, data_sent, data_returned, response, http_status, exit_code, event_id, delivery_id,
        emitted_by, test)
    SELECT created_at, phase, event, status, handler_id, handler_name, kind, error,
        duration_ms, attempt, data_sent::jsonb, data_returned::jsonb, response, http_status, exit_code, event_id, delivery_id,
        emitted_by, test
    FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::text[], $7::text[], $8::text[],
        $9::int[], $10::int[], $11::text[], $12::text[], $13::text[], $14::int[], $15::int[], $16::bigint[], $17::bigint[],
        $20::text[], $21::bool[])
        AS t(created_at, phase, event, status, handler_id, handler_name, kind, error,
        duration_ms, attempt, data_sent, data_returned, response, http_status, exit_code, event_id, delivery_id,
        emitted_by, test)
    RETURNING id
), delivered AS (
    DELETE FROM deliveries WHERE id = ANY($18::bigint[])
), healthy AS (
    UPDATE handlers SET failing_since = NULL
    WHERE id = ANY($19::bigint[]) AND failing_since IS NOT NULL
)
SELECT max(id) AS max FROM ins
"#,
    )
    .bind::<Array<Timestamptz>, _>(&rows.created_at)
    .bind::<Array<Text>, _>(&rows.phase)
    .bind::<Array<Text>, _>(&rows.event)
    .bind::<Array<Text>, _>(&rows.status)
    .bind::<Array<BigInt>, _>(&rows.handler_id)
    .bind::<Array<Text>, _>(&rows.handler_name)
    .bind::<Array<Text>, _>(&rows.kind)
    .bind::<Array<Text>, _>(&rows.error)
    .bind::<Array<Int4>, _>(&rows.duration_ms)
    .bind::<Array<Int4>, _>(&rows.attempt)
    .bind::<Array<Text>, _>(&rows.data_sent)
    .bind::<Array<Nullable<Text>>, _>(&rows.data_returned)
    .bind::<Array<Text>, _>(&rows.response)
    .bind::<Array<Nullable<Int4>>, _>(&rows.http_status)
    .bind::<Array<Nullable<Int4>>, _>(&rows.exit_code)
    .bind::<Array<BigInt>, _>(&rows.event_id)
    .bind::<Array<Nullable<BigInt>>, _>(&rows.delivery_id)
    .bind::<Array<BigInt>, _>(delivered)
    .bind::<Array<BigInt>, _>(succeeded)
    .bind::<Array<Nullable<Text>>, _>(&rows.emitted_by)
    .bind::<Array<diesel::sql_types::Bool>, _>(&rows.test)
    .get_result(conn)?;
    Ok(max.max)
}

// ---------------------------------------------------------------------------------------
// Reading the log: search, tail, details, statistics; retry look-ups; retention.
// ---------------------------------------------------------------------------------------

/// Filters of a log query in stored form; `None` (or an empty list) means any. Every
/// value is bound as a parameter, never interpolated into the SQL text.
#[derive(Debug, Clone, Default)]
pub struct LogFilter {
    /// `success` / `fail`.
    pub status: Option<&'static str>,
    /// `before` / `after`.
    pub phase: Option<&'static str>,
    /// Any of these event names.
    pub events: Vec<String>,
    /// Handler id.
    pub handler_id: Option<i64>,
    /// Case-insensitive substring of `data_sent::text`, as typed (escaped here); folded
    /// the same way whatever the database's locale.
    pub data_contains: Option<String>,
    /// JSON object `data_sent` must contain (`@>`).
    pub data_json_contains: Option<serde_json::Value>,
    /// Case-insensitive substring of `error`, as typed (escaped here).
    pub error_contains: Option<String>,
    /// Inclusive lower bound of `created_at`.
    pub from: Option<DateTime<Utc>>,
    /// Exclusive upper bound of `created_at`.
    pub to: Option<DateTime<Utc>>,
    /// Attempt number.
    pub attempt: Option<i32>,
    /// Event id.
    pub event_id: Option<i64>,
}

impl LogFilter {
    /// Whether the filter holds a condition only a GIN index serves (data substring,
    /// data containment, error substring). Such an index yields matches in no order, so
    /// PostgreSQL fetches and sorts every match of every partition it reads before the
    /// first row comes out; Search therefore reads these filters a few days at a time.
    pub fn is_gin_served(&self) -> bool {
        self.data_contains.is_some()
            || self.data_json_contains.is_some()
            || self.error_contains.is_some()
    }
}

/// A keyset position in the log's newest-first order: `(created_at, id)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    /// Run start.
    pub created_at: DateTime<Utc>,
    /// Log id (breaks ties between rows of one timestamp).
    pub id: i64,
}

type LogQuery = crate::db::schema::execution_logs::BoxedQuery<'static, diesel::pg::Pg>;
type BoxedCondition = Box<
    dyn BoxableExpression<
        crate::db::schema::execution_logs::table,
        diesel::pg::Pg,
        SqlType = diesel::sql_types::Bool,
    >,
>;

/// A `LIKE` pattern matching `text` anywhere, with `%`, `_` and `\` taken literally
/// (backslash is PostgreSQL's default `LIKE` escape character).
pub fn contains_pattern(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// `<column> contains <text>`, case-insensitively with the same folding whatever the
/// database's locale: both sides lower-cased in the `provisioning_fold` collation (see
/// the migration `search_case_folding`), as the trigram indexes are.
fn folded_like(column: &'static str, text: &str) -> BoxedCondition {
    Box::new(
        diesel::dsl::sql::<diesel::sql_types::Bool>(&format!(
            "lower({column} COLLATE provisioning_fold) LIKE lower("
        ))
        .bind::<Text, _>(contains_pattern(text))
        .sql(" COLLATE provisioning_fold)"),
    )
}

/// `execution_logs` with every filter applied; no order, no limit.
fn filtered(filter: &LogFilter) -> LogQuery {
    use crate::db::schema::execution_logs::dsl as l;

    let mut query = l::execution_logs.into_boxed();
    if let Some(status) = filter.status {
        query = query.filter(l::status.eq(status));
    }
    if let Some(phase) = filter.phase {
        query = query.filter(l::phase.eq(phase));
    }
    match filter.events.as_slice() {
        [] => {}
        [one] => query = query.filter(l::event.eq(one.clone())),
        many => query = query.filter(l::event.eq_any(many.to_vec())),
    }
    if let Some(handler_id) = filter.handler_id {
        query = query.filter(l::handler_id.eq(handler_id));
    }
    if let Some(text) = &filter.data_contains {
        // The exact expression of the trigram index `execution_logs_data_trgm_idx`.
        query = query.filter(folded_like("data_sent::text", text));
    }
    if let Some(object) = &filter.data_json_contains {
        query = query.filter(l::data_sent.contains(object.clone()));
    }
    if let Some(text) = &filter.error_contains {
        // `error <> ''` is the predicate of the partial index `execution_logs_error_trgm_idx`.
        query = query
            .filter(l::error.ne(""))
            .filter(folded_like("error", text));
    }
    if let Some(from) = filter.from {
        query = query.filter(l::created_at.ge(from));
    }
    if let Some(to) = filter.to {
        query = query.filter(l::created_at.lt(to));
    }
    if let Some(attempt) = filter.attempt {
        query = query.filter(l::attempt.eq(attempt));
    }
    if let Some(event_id) = filter.event_id {
        query = query.filter(l::event_id.eq(event_id));
    }
    query
}

/// `(created_at, id) <op> (position)`: a row comparison, which PostgreSQL matches to the
/// `(…, created_at DESC, id DESC)` indexes.
fn row_compare(op: &str, position: Position) -> BoxedCondition {
    Box::new(
        diesel::dsl::sql::<diesel::sql_types::Bool>(&format!("(created_at, id) {op} ("))
            .bind::<Timestamptz, _>(position.created_at)
            .sql(", ")
            .bind::<BigInt, _>(position.id)
            .sql(")"),
    )
}

/// The newest-first page query of Search: matching rows strictly older than `before`
/// in `(created_at DESC, id DESC)` order, at most `limit`.
fn search_query(filter: &LogFilter, before: Option<Position>, limit: i64) -> LogQuery {
    use crate::db::schema::execution_logs::dsl as l;
    let mut query = filtered(filter);
    if let Some(position) = before {
        // The plain bound lets the planner prune newer partitions; the row comparison
        // is the exact keyset condition.
        query = query
            .filter(l::created_at.le(position.created_at))
            .filter(row_compare("<", position));
    }
    query
        .order((l::created_at.desc(), l::id.desc()))
        .limit(limit)
}

/// One page of Search, newest first.
pub fn search_page(
    conn: &mut PgConnection,
    filter: &LogFilter,
    before: Option<Position>,
    limit: i64,
) -> QueryResult<Vec<LogRow>> {
    PlannedPerCall(search_query(filter, before, limit).select(LogRow::as_select())).load(conn)
}

/// Positions of the newest `limit` matching rows, newest first (Tail's backlog: keys
/// first, rows streamed afterwards, so the backlog is never held in memory).
pub fn newest_positions(
    conn: &mut PgConnection,
    filter: &LogFilter,
    limit: i64,
) -> QueryResult<Vec<Position>> {
    use crate::db::schema::execution_logs::dsl as l;
    let keys: Vec<(DateTime<Utc>, i64)> =
        PlannedPerCall(search_query(filter, None, limit).select((l::created_at, l::id)))
            .load(conn)?;
    Ok(keys
        .into_iter()
        .map(|(created_at, id)| Position { created_at, id })
        .collect())
}

/// One page of matching rows in ascending `(created_at, id)` order, strictly after
/// `after`, up to `last` inclusive, with ids up to `max_id`.
pub fn ascending_page(
    conn: &mut PgConnection,
    filter: &LogFilter,
    after: Position,
    last: Position,
    max_id: i64,
    limit: i64,
) -> QueryResult<Vec<LogRow>> {
    use crate::db::schema::execution_logs::dsl as l;
    PlannedPerCall(
        filtered(filter)
            .filter(l::created_at.ge(after.created_at))
            .filter(l::created_at.le(last.created_at))
            .filter(row_compare(">", after))
            .filter(row_compare("<=", last))
            .filter(l::id.le(max_id))
            .order((l::created_at.asc(), l::id.asc()))
            .limit(limit)
            .select(LogRow::as_select()),
    )
    .load(conn)
}

/// The query of [`rows_after_id`].
fn after_id_query(filter: &LogFilter, after_id: i64, limit: i64) -> LogQuery {
    use crate::db::schema::execution_logs::dsl as l;
    filtered(filter)
        .filter(l::id.gt(after_id))
        .order(l::id.asc())
        .limit(limit)
}

/// Matching rows with an id above `after_id`, in id order (Tail's live phase: ids come
/// from one sequence, so new rows have higher ids).
pub fn rows_after_id(
    conn: &mut PgConnection,
    filter: &LogFilter,
    after_id: i64,
    limit: i64,
) -> QueryResult<Vec<LogRow>> {
    PlannedPerCall(after_id_query(filter, after_id, limit).select(LogRow::as_select())).load(conn)
}

/// Ids of the matching rows in `(low, high]` (Tail's look-back for rows that committed
/// after rows with higher ids).
pub fn ids_between(
    conn: &mut PgConnection,
    filter: &LogFilter,
    low: i64,
    high: i64,
) -> QueryResult<Vec<i64>> {
    use crate::db::schema::execution_logs::dsl as l;
    PlannedPerCall(
        filtered(filter)
            .filter(l::id.gt(low))
            .filter(l::id.le(high))
            .order(l::id.asc())
            .select(l::id),
    )
    .load(conn)
}

/// The rows with these ids, in id order.
pub fn rows_by_ids(conn: &mut PgConnection, ids: &[i64]) -> QueryResult<Vec<LogRow>> {
    use crate::db::schema::execution_logs::dsl as l;
    l::execution_logs
        .filter(l::id.eq_any(ids))
        .order(l::id.asc())
        .select(LogRow::as_select())
        .load(conn)
}

/// The highest log id visible now (0 for an empty log).
pub fn max_id(conn: &mut PgConnection) -> QueryResult<i64> {
    use crate::db::schema::execution_logs::dsl as l;
    let max: Option<i64> = l::execution_logs
        .select(diesel::dsl::max(l::id))
        .first(conn)?;
    Ok(max.unwrap_or(0))
}

/// The start time of the oldest row (`None` for an empty log); one probe of the time
/// index per partition.
pub fn oldest(conn: &mut PgConnection) -> QueryResult<Option<DateTime<Utc>>> {
    use crate::db::schema::execution_logs::dsl as l;
    l::execution_logs
        .select(diesel::dsl::min(l::created_at))
        .first(conn)
}

/// One row by id.
pub fn find(conn: &mut PgConnection, id: i64) -> QueryResult<LogRow> {
    use crate::db::schema::execution_logs::dsl as l;
    l::execution_logs
        .filter(l::id.eq(id))
        .select(LogRow::as_select())
        .first(conn)
}

/// `EXPLAIN (FORMAT JSON)` of a query, keeping its bound parameters, so the plan shown
/// is the plan of the statement the service really runs.
struct Explain<Q>(Q);

impl<Q: diesel::query_builder::QueryFragment<diesel::pg::Pg>>
    diesel::query_builder::QueryFragment<diesel::pg::Pg> for Explain<Q>
{
    fn walk_ast<'b>(
        &'b self,
        mut out: diesel::query_builder::AstPass<'_, 'b, diesel::pg::Pg>,
    ) -> QueryResult<()> {
        out.push_sql("EXPLAIN (FORMAT JSON) ");
        self.0.walk_ast(out.reborrow())
    }
}

impl<Q> diesel::query_builder::QueryId for Explain<Q> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q> diesel::query_builder::Query for Explain<Q> {
    type SqlType = diesel::sql_types::Json;
}

impl<Q> RunQueryDsl<PgConnection> for Explain<Q> {}

/// The plan (`EXPLAIN (FORMAT JSON)`) of one Search page, exactly as [`search_page`]
/// issues it; used by the index tests.
pub fn explain_search(
    conn: &mut PgConnection,
    filter: &LogFilter,
    before: Option<Position>,
    limit: i64,
) -> QueryResult<serde_json::Value> {
    Explain(search_query(filter, before, limit).select(LogRow::as_select())).get_result(conn)
}

/// The plan of one Tail query ([`rows_after_id`]).
pub fn explain_tail(
    conn: &mut PgConnection,
    filter: &LogFilter,
    after_id: i64,
    limit: i64,
) -> QueryResult<serde_json::Value> {
    Explain(after_id_query(filter, after_id, limit).select(LogRow::as_select())).get_result(conn)
}

/// The SQL text of one Search page, with `$n` placeholders and the bound values.
pub fn search_sql(filter: &LogFilter, before: Option<Position>, limit: i64) -> String {
    let query = search_query(filter, before, limit).select(LogRow::as_select());
    diesel::debug_query::<diesel::pg::Pg, _>(&query).to_string()
}

/// Per-handler statistics over a window.
#[derive(Debug, Clone, QueryableByName)]
pub struct StatsRow {
    /// Handler id.
    #[diesel(sql_type = BigInt)]
    pub handler_id: i64,
    /// Name of the handler's latest run in the window.
    #[diesel(sql_type = Text)]
    pub handler_name: String,
    /// Runs.
    #[diesel(sql_type = BigInt)]
    pub total: i64,
    /// Successful runs.
    #[diesel(sql_type = BigInt)]
    pub success: i64,
    /// Failed runs.
    #[diesel(sql_type = BigInt)]
    pub fail: i64,
    /// Median duration, ms.
    #[diesel(sql_type = diesel::sql_types::Double)]
    pub p50: f64,
    /// 95th percentile, ms.
    #[diesel(sql_type = diesel::sql_types::Double)]
    pub p95: f64,
    /// 99th percentile, ms.
    #[diesel(sql_type = diesel::sql_types::Double)]
    pub p99: f64,
}

/// Counts and duration percentiles per handler over `[from, to)`, by handler id; one
/// handler only when `handler_id` is given. Test runs (HandlerService.Test) are left out:
/// they say nothing about how deliveries fare.
pub fn stats(
    conn: &mut PgConnection,
    handler_id: Option<i64>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> QueryResult<Vec<StatsRow>> {
    const SELECT: &str = r#"
SELECT handler_id,
       (array_agg(handler_name ORDER BY created_at DESC, id DESC))[1] AS handler_name,
       count(*) AS total,
       count(*) FILTER (WHERE status = 'success') AS success,
       count(*) FILTER (WHERE status = 'fail') AS fail,
       percentile_cont(0.50) WITHIN GROUP (ORDER BY duration_ms) AS p50,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms) AS p95,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY duration_ms) AS p99
FROM execution_logs
WHERE created_at >= $1 AND created_at < $2 AND NOT test"#;
    const GROUP: &str = " GROUP BY handler_id ORDER BY handler_id";
    match handler_id {
        Some(id) => diesel::sql_query(format!("{SELECT} AND handler_id = $3{GROUP}"))
            .bind::<Timestamptz, _>(from)
            .bind::<Timestamptz, _>(to)
            .bind::<BigInt, _>(id)
            .load(conn),
        None => diesel::sql_query(format!("{SELECT}{GROUP}"))
            .bind::<Timestamptz, _>(from)
            .bind::<Timestamptz, _>(to)
            .load(conn),
    }
}

/// Whether the event still exists (retention may have deleted it).
pub fn event_exists(conn: &mut PgConnection, event_id: i64) -> QueryResult<bool> {
    use crate::db::schema::events::dsl as e;
    diesel::select(diesel::dsl::exists(e::events.filter(e::id.eq(event_id)))).get_result(conn)
}

/// When the event was last delivered to the handler (its latest successful AFTER run
/// still in the log), if it was.
pub fn delivered_at(
    conn: &mut PgConnection,
    event_id: i64,
    handler_id: i64,
) -> QueryResult<Option<DateTime<Utc>>> {
    use crate::db::schema::execution_logs::dsl as l;
    l::execution_logs
        .filter(l::event_id.eq(event_id))
        .filter(l::handler_id.eq(handler_id))
        .filter(l::phase.eq("after"))
        .filter(l::status.eq("success"))
        .select(diesel::dsl::max(l::created_at))
        .first(conn)
}

/// A handler's priority and status, if it still exists.
pub fn handler_priority_and_status(
    conn: &mut PgConnection,
    handler_id: i64,
) -> QueryResult<Option<(i32, String)>> {
    use crate::db::schema::handlers::dsl as h;
    h::handlers
        .find(handler_id)
        .select((h::priority, h::status))
        .first(conn)
        .optional()
}

/// A partition of `execution_logs`: its name and `[lower, upper)` bounds (`None` for the
/// default partition).
#[derive(Debug, Clone, QueryableByName)]
pub struct Partition {
    /// Table name.
    #[diesel(sql_type = Text)]
    pub name: String,
    /// Inclusive lower bound.
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub lower: Option<DateTime<Utc>>,
    /// Exclusive upper bound.
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub upper: Option<DateTime<Utc>>,
}

/// The partitions of `execution_logs` with their bounds, read from the catalogue
/// (`FOR VALUES FROM ('…') TO ('…')`, printed with the time-zone offset, so the cast
/// back is exact whatever the session time zone).
pub fn partitions(conn: &mut PgConnection) -> QueryResult<Vec<Partition>> {
    diesel::sql_query(
        r#"
SELECT c.relname::text AS name,
       (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \(''([^'']+)''\)'))[1]::timestamptz AS lower,
       (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \(''([^'']+)''\)'))[1]::timestamptz AS upper
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'execution_logs'::regclass
ORDER BY lower NULLS LAST
"#,
    )
    .load(conn)
}

/// Advisory lock key serialising partition drops across replicas.
const PURGE_LOCK: i64 = 7_262_025;

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    count: i64,
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Counts and drops one partition; run inside a transaction. Purges of several replicas
/// take turns (transaction-level advisory lock), and writes to the partition are blocked
/// before counting, so the count is exactly what the drop removes. `lock_timeout_ms` bounds the
/// wait for the locks (dropping a partition briefly locks the parent table), so a long
/// query elsewhere makes this fail instead of queueing every writer behind it.
/// Returns `None` if another replica dropped it meanwhile.
pub fn drop_partition(
    conn: &mut PgConnection,
    name: &str,
    lock_timeout_ms: u32,
) -> QueryResult<Option<i64>> {
    diesel::sql_query(format!("SET LOCAL lock_timeout = {lock_timeout_ms}")).execute(conn)?;
    diesel::sql_query("SELECT pg_advisory_xact_lock($1)")
        .bind::<BigInt, _>(PURGE_LOCK)
        .execute(conn)?;
    #[derive(QueryableByName)]
    struct Exists {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        exists: bool,
    }
    let exists: Exists = diesel::sql_query("SELECT to_regclass($1) IS NOT NULL AS exists")
        .bind::<Text, _>(quote_ident(name))
        .get_result(conn)?;
    if !exists.exists {
        return Ok(None);
    }
    let table = quote_ident(name);
    diesel::sql_query(format!("LOCK TABLE {table} IN SHARE MODE")).execute(conn)?;
    let count: Count =
        diesel::sql_query(format!("SELECT count(*) AS count FROM {table}")).get_result(conn)?;
    diesel::sql_query(format!("DROP TABLE {table}")).execute(conn)?;
    Ok(Some(count.count))
}

/// Deletes up to `batch` rows that started before `cutoff` (from whichever partitions
/// hold them: the one straddling the cutoff and the default one); returns how many.
pub fn delete_older_batch(
    conn: &mut PgConnection,
    cutoff: DateTime<Utc>,
    batch: i64,
) -> QueryResult<usize> {
    diesel::sql_query(
        r#"
DELETE FROM execution_logs
WHERE (id, created_at) IN (
    SELECT id, created_at FROM execution_logs WHERE created_at < $1 LIMIT $2
)
"#,
    )
    .bind::<Timestamptz, _>(cutoff)
    .bind::<BigInt, _>(batch)
    .execute(conn)
}

/// Deletes up to `batch` events created before `cutoff` that have no delivery left;
/// returns how many.
pub fn delete_old_events_batch(
    conn: &mut PgConnection,
    cutoff: DateTime<Utc>,
    batch: i64,
) -> QueryResult<usize> {
    diesel::sql_query(
        r#"
DELETE FROM events
WHERE id IN (
    SELECT e.id FROM events e
    WHERE e.created_at < $1
      AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id)
    LIMIT $2
)
"#,
    )
    .bind::<Timestamptz, _>(cutoff)
    .bind::<BigInt, _>(batch)
    .execute(conn)
}
