//! Claiming and settling AFTER deliveries.
//!
//! A claim is a lease: claimed rows get `next_attempt_at` pushed to the lease expiry, so
//! if this replica dies they simply become due again and any replica takes them over.
//! Only pending rows are claimed: a keyed event waiting for an earlier delivery of its
//! ordering slot is queued (promoted when that one finishes, [`promote_queued`]), and an
//! event with a limited handler is throttled (admitted by [`admit_throttled`]).

use chrono::{DateTime, Utc};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Int4, Jsonb, Nullable, Text, Timestamptz};

use crate::db::prepared::prepared;
use crate::db::queries::events::LeaseAtInsert;

/// A claimed delivery with what is needed to run it.
#[derive(Debug, Clone, QueryableByName)]
pub struct ClaimedDelivery {
    /// Delivery id.
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    /// Event id.
    #[diesel(sql_type = BigInt)]
    pub event_id: i64,
    /// Attempts made so far.
    #[diesel(sql_type = Int4)]
    pub attempts: i32,
    /// Event name.
    #[diesel(sql_type = Text)]
    pub event: String,
    /// Event data as emitted.
    #[diesel(sql_type = Text)]
    pub data: String,
    /// Handler id.
    #[diesel(sql_type = BigInt)]
    pub handler_id: i64,
    /// Handler name.
    #[diesel(sql_type = Text)]
    pub name: String,
    /// `http` / `script`.
    #[diesel(sql_type = Text)]
    pub kind: String,
    /// Handler status now.
    #[diesel(sql_type = Text)]
    pub status: String,
    /// HTTP URL.
    #[diesel(sql_type = Nullable<Text>)]
    pub url: Option<String>,
    /// HTTP headers.
    #[diesel(sql_type = Jsonb)]
    pub headers: serde_json::Value,
    /// HTTP secret.
    #[diesel(sql_type = Nullable<Text>)]
    pub secret: Option<String>,
    /// Script path.
    #[diesel(sql_type = Nullable<Text>)]
    pub script_path: Option<String>,
    /// Timeout of one run.
    #[diesel(sql_type = Int4)]
    pub timeout_ms: i32,
    /// Who emitted the event (NULL for events stored before this was recorded).
    #[diesel(sql_type = Nullable<Text>)]
    pub emitted_by: Option<String>,
    /// The emitter's W3C `traceparent`, if it sent one.
    #[diesel(sql_type = Nullable<Text>)]
    pub traceparent: Option<String>,
    /// Ordering slot (`g:<group>|<key>` or `h:<handler id>|<key>`) of a keyed event.
    #[diesel(sql_type = Nullable<Text>)]
    pub ordering_slot: Option<String>,
}

/// The [`ClaimedDelivery`] rows of the deliveries a statement leased, read from its CTE
/// `$leased` (which returns at least `id, event_id, handler_id, attempts, priority,
/// ordering_slot`, and whatever `$filter` reads) as `c`, kept by `$filter`, with their events and handlers, ordered
/// by event then run order (consecutive rows of one event form its chain).
macro_rules! select_claimed {
    ($leased:literal, $filter:literal) => {
        concat!(
            r#"
SELECT c.id, c.event_id, c.attempts, e.event, e.data,
       h.id AS handler_id, h.name, h.kind, h.status, h.url, h.headers, h.secret, h.script_path, h.timeout_ms,
       e.emitted_by, e.traceparent, c.ordering_slot
FROM "#,
            $leased,
            r#" c
JOIN events e ON e.id = c.event_id
JOIN handlers h ON h.id = c.handler_id
"#,
            $filter,
            r#"
ORDER BY c.event_id, c.priority, c.handler_id
"#
        )
    };
}

/// The ordering key in a slot: what follows the first `|` (groups and `h:<id>` hold
/// none).
pub fn ordering_key_of(slot: &str) -> Option<&str> {
    slot.split_once('|').map(|(_, key)| key)
}

/// Claims up to `limit` due deliveries, plus the waiting (lower-priority) siblings of
/// each claimed first attempt, so one replica runs an event's chain in order. Rows come
/// ordered by event, then run order.
pub fn claim_due(
    conn: &mut PgConnection,
    limit: i64,
    lease_ms: i64,
    owner: &str,
) -> QueryResult<Vec<ClaimedDelivery>> {
    // The table's statistics lag behind a burst (autovacuum analyzes it a minute later
    // at best), and a plan made for the few rows they promise sorts every due row and
    // scans the whole table for siblings: seconds per claim at a backlog of 100,000. The
    // claim must walk the indexes whatever the statistics say. (Not `prepared` either: a
    // generic plan does not know the LIMIT.)
    conn.transaction(|conn| {
        conn.batch_execute("SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off")?;
        diesel::sql_query(concat!(
            r#"
WITH heads AS (
    SELECT id, event_id, handler_id FROM deliveries
    WHERE state = 1 AND next_attempt_at <= now()
    ORDER BY next_attempt_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
), sibs AS (
    SELECT d.id, d.event_id, d.handler_id FROM deliveries d
    WHERE d.state = 0 AND d.event_id = ANY(ARRAY(SELECT event_id FROM heads))
    FOR UPDATE SKIP LOCKED
), picked AS (
    SELECT x.id, sum(h.timeout_ms) OVER (PARTITION BY x.event_id) AS chain_ms
    FROM (SELECT * FROM heads UNION ALL SELECT * FROM sibs) x
    JOIN handlers h ON h.id = x.handler_id
), claimed AS (
    UPDATE deliveries d
    SET state = 1,
        next_attempt_at = now() + (($2 + p.chain_ms) * interval '1 millisecond'),
        leased_by = $3
    FROM picked p
    WHERE d.id = p.id
    RETURNING d.id, d.event_id, d.handler_id, d.attempts, d.priority, d.ordering_slot
)
"#,
            select_claimed!("claimed", "")
        ))
        .bind::<BigInt, _>(limit)
        .bind::<BigInt, _>(lease_ms)
        .bind::<Text, _>(owner)
        .load(conn)
    })
}

/// Gives back `owner`'s leases on one event's deliveries that did not start, listed in
/// run order: the first becomes due now, the others wait behind it as they did before
/// the claim, so whichever replica claims it runs them in order. Wakes every replica.
/// Returns how many were released.
pub fn release(conn: &mut PgConnection, ids: &[i64], owner: &str) -> QueryResult<usize> {
    let Some(&head) = ids.first() else {
        return Ok(0);
    };
    let released = prepared(
        r#"
UPDATE deliveries
SET state = CASE WHEN id = $1 THEN 1 ELSE 0 END, next_attempt_at = now(), leased_by = NULL
WHERE id = ANY($2) AND leased_by = $3 AND state = 1
"#,
    )
    .bind::<BigInt, _>(head)
    .bind::<Array<BigInt>, _>(ids)
    .bind::<Text, _>(owner)
    .execute(conn)?;
    diesel::sql_query("SELECT pg_notify($1, '')")
        .bind::<Text, _>(crate::listener::WORK_CHANNEL)
        .execute(conn)?;
    Ok(released)
}

/// The queued events that head the slots in `$1` (one index probe per slot for its
/// earliest queued event: not every queued event of every slot, sorted, as a slot may
/// hold thousands) and that nothing earlier holds any more in any of their slots.
macro_rules! ready_in_slots {
    () => {
        r#"heads AS (
    SELECT x.event_id FROM (SELECT DISTINCT unnest($1::text[]) AS slot) s
    CROSS JOIN LATERAL (
        SELECT q.event_id FROM deliveries q
        WHERE q.state = 4 AND q.ordering_slot = s.slot
        ORDER BY q.event_id
        LIMIT 1
    ) x
), ready AS (
    SELECT DISTINCT n.event_id FROM heads n
    WHERE NOT EXISTS (
        SELECT 1 FROM deliveries q
        JOIN deliveries p ON p.ordering_slot = q.ordering_slot AND p.event_id < q.event_id
        JOIN handlers ph ON ph.id = p.handler_id
        WHERE q.event_id = n.event_id
          AND (p.state IN (0, 1, 4, 5) OR ph.ordering_policy = 'block'))
)"#
    };
}

/// The statement promoting queued events: `ready` defines the CTE `ready` of queued
/// events (`event_id`) that nothing earlier holds any more in any of their slots (what
/// holds a slot is what holds it at insert, `events::insert_batch`). Of those with no
/// limited handler, the first `lease_events` (in event order) have every delivery
/// leased to `owner` for `lease_ms` beyond the chain's timeouts, exactly as a claim
/// leaves them; the others have their first delivery in run order made pending now and
/// the rest waiting behind it. Those with a limited handler are throttled. `then` reads
/// the `promoted` rows. A queued event's deliveries are all queued, so they are found
/// by event id alone: with a state condition the planner, on statistics that lag behind
/// a burst, walks the queued index for each event instead (hundreds of milliseconds at
/// 50,000 queued). For the same reason the rows to update are passed as arrays: joined
/// to `ranked`, the update hashed every queued row of the table (30 ms at 20,000
/// queued) to change a few hundred; from an array of ids it looks each one up by
/// primary key.
macro_rules! promote_sql {
    (ready: $ready:expr, lease_events: $events:literal, owner: $owner:literal,
     lease_ms: $lease_ms:literal, then: $then:expr) => {
        concat!(
            "WITH ",
            $ready,
            r#", ranked AS (
    SELECT d.id, d.event_id,
           row_number() OVER (PARTITION BY d.event_id ORDER BY d.priority, d.handler_id) AS rank,
           bool_or(h.max_in_flight IS NOT NULL OR h.rate_per_second IS NOT NULL)
               OVER (PARTITION BY d.event_id) AS throttled,
           sum(h.timeout_ms) OVER (PARTITION BY d.event_id) AS chain_ms
    FROM deliveries d JOIN handlers h ON h.id = d.handler_id
    WHERE d.event_id IN (SELECT event_id FROM ready)
), leasing AS (
    SELECT r.*, NOT r.throttled
               AND dense_rank() OVER (PARTITION BY r.throttled ORDER BY r.event_id) <= "#,
            $events,
            r#" AS leased
    FROM ranked r
), targets AS (
    SELECT array_agg(id) AS ids,
           array_agg(CASE WHEN throttled THEN 5 WHEN leased OR rank = 1 THEN 1 ELSE 0 END) AS states,
           array_agg(CASE WHEN leased
                     THEN now() + (("#,
            $lease_ms,
            r#" + chain_ms) * interval '1 millisecond')
                     ELSE now() END) AS due,
           array_agg(CASE WHEN leased THEN "#,
            $owner,
            r#" END) AS owners
    FROM leasing
), promoted AS (
    UPDATE deliveries d
    SET state = t.state, next_attempt_at = t.due, leased_by = t.owner
    FROM unnest((SELECT ids FROM targets), (SELECT states FROM targets),
                (SELECT due FROM targets), (SELECT owners FROM targets)) AS t(id, state, due, owner)
    WHERE d.id = t.id AND d.state = 4
    RETURNING d.id, d.event_id, d.handler_id, d.attempts, d.priority, d.ordering_slot, d.leased_by
)"#,
            $then
        )
    };
}

/// After deliveries holding these ordering slots finished (delivered, gave up, were
/// skipped or ended), promotes the next queued event of each slot if nothing else holds
/// it back. The caller holds the slots' key locks (`events::lock_ordering_keys`) in the
/// transaction that finished them. Returns how many deliveries became runnable.
pub fn promote_queued(conn: &mut PgConnection, slots: &[&str]) -> QueryResult<usize> {
    if slots.is_empty() {
        return Ok(0);
    }
    with_generic_plan(conn, |conn| {
        let promoted: Count = prepared(promote_sql!(
            ready: ready_in_slots!(),
            lease_events: "0",
            owner: "NULL::text",
            lease_ms: "0",
            then: "SELECT count(*) AS n FROM promoted"
        ))
        .bind::<Array<Text>, _>(slots)
        .get_result(conn)?;
        Ok(promoted.n as usize)
    })
}

/// [`promote_queued`], leasing the deliveries of up to `lease.events` of the promoted
/// events to `lease.owner` as a claim would (the caller holds that many free run slots)
/// and returning them, ordered by event then run order, to be run without claiming
/// them back. The other promoted deliveries are left to the claim loop (pending) or to
/// the admission (throttled).
pub fn promote_and_lease(
    conn: &mut PgConnection,
    slots: &[&str],
    lease: LeaseAtInsert<'_>,
) -> QueryResult<Vec<ClaimedDelivery>> {
    if slots.is_empty() {
        return Ok(Vec::new());
    }
    with_generic_plan(conn, |conn| {
        prepared(promote_sql!(
            ready: ready_in_slots!(),
            lease_events: "$2::int4",
            owner: "$3::text",
            lease_ms: "$4::bigint",
            then: select_claimed!("promoted", "WHERE c.leased_by IS NOT NULL")
        ))
        .bind::<Array<Text>, _>(slots)
        .bind::<Int4, _>(lease.events)
        .bind::<Text, _>(lease.owner)
        .bind::<BigInt, _>(lease.lease_ms)
        .load(conn)
    })
}

/// Runs a promotion with its generic plan. The generic plan, made for an array of
/// unknown length, walks the indexes head by head; a plan made for the actual 500
/// slots on lagging statistics hashed every earlier delivery of every slot (600 ms and
/// more at 50,000 queued).
fn with_generic_plan<T>(
    conn: &mut PgConnection,
    promote: impl FnOnce(&mut PgConnection) -> QueryResult<T>,
) -> QueryResult<T> {
    conn.batch_execute("SET LOCAL plan_cache_mode = force_generic_plan")?;
    let promoted = promote(conn)?;
    conn.batch_execute("RESET plan_cache_mode")?;
    Ok(promoted)
}

/// The safety net of [`promote_queued`]: promotes every queued event that nothing holds
/// back any more, whatever freed it (a handler deleted with its deliveries, two slots of
/// one event freed at once by different transactions). Run periodically.
///
/// It finds them from the front of every slot (its earliest delivery that holds it, in
/// one walk of the ordering index): a queued event is ready when it is the front of
/// each of its slots. Checking each queued head against the earlier deliveries of its
/// slots instead, as [`promote_queued`] does for a few slots, was planned as a join of
/// every delivery with every later one of its slot (300,000 pairs, 0.4 s at 25,000
/// keyed deliveries).
pub fn promote_all_ready(conn: &mut PgConnection) -> QueryResult<usize> {
    let promoted: Count = diesel::sql_query(promote_sql!(
        ready: r#"fronts AS MATERIALIZED (
    SELECT DISTINCT ON (d.ordering_slot) d.ordering_slot AS slot, d.event_id, d.state
    FROM deliveries d JOIN handlers h ON h.id = d.handler_id
    WHERE d.ordering_slot IS NOT NULL AND (d.state IN (0, 1, 4, 5) OR h.ordering_policy = 'block')
    ORDER BY d.ordering_slot, d.event_id
), ready AS (
    SELECT DISTINCT c.event_id FROM fronts c
    WHERE c.state = 4 AND NOT EXISTS (
        SELECT 1 FROM deliveries q JOIN fronts f ON f.slot = q.ordering_slot
        WHERE q.event_id = c.event_id AND f.event_id <> c.event_id)
)"#,
        lease_events: "0",
        owner: "NULL::text",
        lease_ms: "0",
        then: "SELECT count(*) AS n FROM promoted"
    ))
    .get_result(conn)?;
    Ok(promoted.n as usize)
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Admits throttled events (state 5) that are due, as far as their limited handlers'
/// budgets allow: a handler's budget is its `max_in_flight` less the deliveries running
/// or about to run (waiting or pending: a limited handler's retries wait throttled, so
/// every pending one was admitted), and the whole tokens in its bucket (refilled at
/// `rate_per_second`, holding one second's worth). Not a time comparison: an admission
/// that waited for the lock started before the rows the previous one admitted were
/// made due.
/// Admitted events get their first delivery in run order pending now and the rest
/// waiting behind it; the tokens they take are spent. Runs under a transaction-scoped
/// advisory lock, so replicas admitting at once never share a slot or a token. Returns
/// how many limited handlers had due throttled events, and how many deliveries were
/// admitted.
pub fn admit_throttled(conn: &mut PgConnection) -> QueryResult<(usize, usize)> {
    #[derive(QueryableByName)]
    struct Limited {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    conn.transaction(|conn| {
        conn.batch_execute(ADMISSION_LOCK)?;
        let limited: Limited = prepared(
            r#"
SELECT count(*) AS n FROM handlers h
WHERE (h.max_in_flight IS NOT NULL OR h.rate_per_second IS NOT NULL)
  AND EXISTS (SELECT 1 FROM deliveries t WHERE t.state = 5 AND t.handler_id = h.id AND t.next_attempt_at <= now())
"#,
        )
        .get_result(conn)?;
        if limited.n == 0 {
            return Ok((0, 0));
        }
        let admitted = prepared(
            r#"
WITH budget AS MATERIALIZED (
    SELECT l.id, l.tokens, greatest(0, least(
        coalesce(l.max_in_flight - (
            SELECT count(*) FROM deliveries r WHERE r.handler_id = l.id AND r.state IN (0, 1)
        ), 1000000),
        coalesce(floor(l.tokens)::bigint, 1000000))) AS n
    FROM (
        SELECT h.id, h.max_in_flight,
               least(h.rate_per_second::float8, h.rate_tokens
                     + h.rate_per_second * extract(epoch FROM clock_timestamp() - h.rate_refilled_at)) AS tokens
        FROM handlers h
        WHERE (h.max_in_flight IS NOT NULL OR h.rate_per_second IS NOT NULL)
          AND EXISTS (SELECT 1 FROM deliveries t WHERE t.state = 5 AND t.handler_id = h.id AND t.next_attempt_at <= now())
    ) l
), admit AS MATERIALIZED (
    SELECT x.event_id, b.id AS handler_id FROM budget b
    CROSS JOIN LATERAL (
        SELECT t.event_id FROM deliveries t
        WHERE t.state = 5 AND t.handler_id = b.id AND t.next_attempt_at <= now()
        ORDER BY t.next_attempt_at, t.event_id
        LIMIT b.n
    ) x
), spent AS (
    UPDATE handlers h
    SET rate_tokens = b.tokens - (SELECT count(*) FROM admit a WHERE a.handler_id = b.id),
        rate_refilled_at = clock_timestamp()
    FROM budget b
    WHERE h.id = b.id AND b.tokens IS NOT NULL
), ranked AS (
    SELECT d.id, row_number() OVER (PARTITION BY d.event_id ORDER BY d.priority, d.handler_id) AS rank
    FROM deliveries d WHERE d.state = 5 AND d.event_id IN (SELECT event_id FROM admit)
)
UPDATE deliveries d SET state = CASE WHEN r.rank = 1 THEN 1 ELSE 0 END, next_attempt_at = now()
FROM ranked r WHERE d.id = r.id
"#,
        )
        .execute(conn)?;
        Ok((limited.n as usize, admitted))
    })
}

/// Serializes admissions across replicas (a constant key: `provisioning admission`).
const ADMISSION_LOCK: &str = "SELECT pg_advisory_xact_lock(7250153930911101185)";

/// Records failed attempts: attempts + 1, the error, and either the next attempt time
/// or, where it is `NULL`, death. The retry of a limited handler is throttled: it runs
/// when due and admitted by the handler's budget.
pub fn record_failures(
    conn: &mut PgConnection,
    ids: &[i64],
    next_attempt_at: &[Option<DateTime<Utc>>],
    errors: &[&str],
) -> QueryResult<usize> {
    prepared(
        r#"
UPDATE deliveries d
SET attempts = d.attempts + 1,
    last_error = f.error,
    state = CASE WHEN f.next_at IS NULL THEN 3
                 WHEN h.max_in_flight IS NOT NULL OR h.rate_per_second IS NOT NULL THEN 5
                 ELSE 1 END,
    next_attempt_at = coalesce(f.next_at, d.next_attempt_at),
    leased_by = NULL
FROM unnest($1::bigint[], $2::timestamptz[], $3::text[]) AS f(id, next_at, error), handlers h
WHERE d.id = f.id AND h.id = d.handler_id
"#,
    )
    .bind::<Array<BigInt>, _>(ids)
    .bind::<Array<Nullable<Timestamptz>>, _>(next_attempt_at)
    .bind::<Array<Text>, _>(errors)
    .execute(conn)
}

/// For each of these events left with waiting deliveries but no pending one (its head
/// was deleted with its handler), makes the first waiting delivery the new head; the
/// others are claimed with it, as before.
pub fn promote_orphaned_waiting(conn: &mut PgConnection, event_ids: &[i64]) -> QueryResult<usize> {
    prepared(
        r#"
UPDATE deliveries SET state = 1, next_attempt_at = now()
WHERE id IN (
    SELECT DISTINCT ON (w.event_id) w.id FROM deliveries w
    WHERE w.state = 0 AND w.event_id = ANY($1)
      AND NOT EXISTS (SELECT 1 FROM deliveries p WHERE p.event_id = w.event_id AND p.state = 1)
    ORDER BY w.event_id, w.priority, w.handler_id
)
"#,
    )
    .bind::<Array<BigInt>, _>(event_ids)
    .execute(conn)
}

/// Event ids with deliveries for this handler.
pub fn event_ids_of_handler(conn: &mut PgConnection, handler_id: i64) -> QueryResult<Vec<i64>> {
    use crate::db::schema::deliveries;
    deliveries::table
        .filter(deliveries::handler_id.eq(handler_id))
        .select(deliveries::event_id)
        .load(conn)
}

/// Schedules a delivery of (event, handler) to run now: revives the existing row (dead
/// or waiting for a retry) or creates one. Returns the delivery id.
pub fn schedule_now(
    conn: &mut PgConnection,
    event_id: i64,
    handler_id: i64,
    priority: i32,
) -> QueryResult<i64> {
    use crate::db::schema::deliveries;
    let existing: Option<i64> = deliveries::table
        .filter(deliveries::event_id.eq(event_id))
        .filter(deliveries::handler_id.eq(handler_id))
        .select(deliveries::id)
        .for_update()
        .first(conn)
        .optional()?;
    match existing {
        Some(id) => diesel::update(deliveries::table.find(id))
            .set((
                deliveries::state.eq(1i16),
                deliveries::next_attempt_at.eq(diesel::dsl::now),
                deliveries::leased_by.eq(None::<String>),
            ))
            .returning(deliveries::id)
            .get_result(conn),
        None => diesel::insert_into(deliveries::table)
            .values((
                deliveries::event_id.eq(event_id),
                deliveries::handler_id.eq(handler_id),
                deliveries::priority.eq(priority),
                deliveries::state.eq(1i16),
                deliveries::attempts.eq(0),
            ))
            .returning(deliveries::id)
            .get_result(conn),
    }
}

/// Handler health after failed attempts: failures start the failing clock; handlers
/// failing for longer than `disable_after_ms` are disabled with a reason. (Successes
/// stop the clock as their log rows are written.) Returns the ids disabled now.
pub fn record_handler_failures(
    conn: &mut PgConnection,
    failed: &[i64],
    disable_after_ms: i64,
) -> QueryResult<Vec<i64>> {
    prepared(
        "UPDATE handlers SET failing_since = now() WHERE id = ANY($1) AND failing_since IS NULL",
    )
    .bind::<Array<BigInt>, _>(failed)
    .execute(conn)?;
    #[derive(QueryableByName)]
    struct Id {
        #[diesel(sql_type = BigInt)]
        id: i64,
    }
    let disabled: Vec<Id> = prepared(
        r#"
UPDATE handlers
SET status = 'disabled', updated_at = now(),
    disabled_reason = 'disabled automatically: failing without a success since '
        || to_char(failing_since AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || ' UTC'
WHERE id = ANY($1) AND status = 'enabled'
  AND failing_since < now() - ($2 * interval '1 millisecond')
RETURNING id
"#,
    )
    .bind::<Array<BigInt>, _>(failed)
    .bind::<BigInt, _>(disable_after_ms)
    .load(conn)?;
    Ok(disabled.into_iter().map(|r| r.id).collect())
}

/// Disables a handler with a reason (e.g. its endpoint answered 410 Gone).
pub fn disable_handler(
    conn: &mut PgConnection,
    handler_id: i64,
    reason: &str,
) -> QueryResult<usize> {
    prepared(
        "UPDATE handlers SET status = 'disabled', disabled_reason = $2, updated_at = now() WHERE id = $1 AND status = 'enabled'",
    )
    .bind::<BigInt, _>(handler_id)
    .bind::<Text, _>(reason)
    .execute(conn)
}

/// Pauses these deliveries (their handler is not enabled): no longer claimed, attempts
/// and due time kept. Only rows still pending are touched.
pub fn pause(conn: &mut PgConnection, ids: &[i64]) -> QueryResult<usize> {
    diesel::sql_query(
        "UPDATE deliveries SET state = 2, leased_by = NULL WHERE id = ANY($1) AND state = 1",
    )
    .bind::<Array<BigInt>, _>(ids)
    .execute(conn)
}

/// Makes a handler's paused deliveries pending again (throttled, for a limited
/// handler); they keep their due times, so the oldest run first. Returns how many.
pub fn resume_handler(conn: &mut PgConnection, handler_id: i64) -> QueryResult<usize> {
    diesel::sql_query(
        r#"
UPDATE deliveries d
SET state = CASE WHEN h.max_in_flight IS NOT NULL OR h.rate_per_second IS NOT NULL THEN 5 ELSE 1 END,
    leased_by = NULL
FROM handlers h
WHERE d.handler_id = $1 AND d.state = 2 AND h.id = d.handler_id
"#,
    )
    .bind::<BigInt, _>(handler_id)
    .execute(conn)
}

/// What ending a handler's deliveries did.
#[derive(Debug, Default)]
pub struct Ended {
    /// Events whose delivery to the handler was ended.
    pub event_ids: Vec<i64>,
    /// Highest execution-log id written (one row per ended delivery).
    pub max_log_id: Option<i64>,
    /// The ordering slots of the ended deliveries of keyed events.
    pub ordering_slots: Vec<String>,
}

/// Ends every unfinished delivery (waiting, pending, paused, queued, throttled) of a
/// handler: each gets a failed execution-log row carrying `reason` (attempt = the
/// attempts made so far) and is deleted. Dead deliveries are left as they are, and so
/// are deliveries running now under a live lease: their attempt logs its own row (the
/// worker ends them afterwards if the handler is archived; a delete removes them with
/// the handler).
pub fn end_for_handler(
    conn: &mut PgConnection,
    handler_id: i64,
    reason: &str,
) -> QueryResult<Ended> {
    let rows = end_with_log(conn, handler_id, None, reason)?;
    let mut ended = Ended {
        max_log_id: rows.iter().map(|r| r.log_id).max(),
        ..Ended::default()
    };
    for row in rows {
        ended.event_ids.push(row.event_id);
        ended.ordering_slots.extend(row.ordering_slot);
    }
    Ok(ended)
}

/// A delivery ended by [`end_for_handler`] or [`skip`], with the log row saying so.
#[derive(Debug, QueryableByName)]
pub struct EndedDelivery {
    /// Its event.
    #[diesel(sql_type = BigInt)]
    pub event_id: i64,
    /// The delivery.
    #[diesel(sql_type = BigInt)]
    pub delivery_id: i64,
    /// The log row recording its end.
    #[diesel(sql_type = BigInt)]
    pub log_id: i64,
    /// Its ordering slot, for a keyed event.
    #[diesel(sql_type = Nullable<Text>)]
    pub ordering_slot: Option<String>,
}

/// Gives up the delivery of (event, handler) for good, whatever its state (dead
/// included), unless it is running now under a live lease: deletes it and logs a
/// failed run carrying `reason`. `None` when there is no such delivery or it is running.
pub fn skip(
    conn: &mut PgConnection,
    event_id: i64,
    handler_id: i64,
    reason: &str,
) -> QueryResult<Option<EndedDelivery>> {
    Ok(end_with_log(conn, handler_id, Some(event_id), reason)?.pop())
}

/// Deletes a handler's deliveries that are not running now under a live lease (of one
/// event, any state; or of every event, every state but dead) and logs a failed run for
/// each, carrying `reason`.
fn end_with_log(
    conn: &mut PgConnection,
    handler_id: i64,
    event_id: Option<i64>,
    reason: &str,
) -> QueryResult<Vec<EndedDelivery>> {
    diesel::sql_query(
        r#"
WITH ended AS (
    DELETE FROM deliveries
    WHERE handler_id = $1
      AND ($2::bigint IS NULL AND state <> 3 OR event_id = $2)
      AND NOT (state = 1 AND leased_by IS NOT NULL AND next_attempt_at > now())
    RETURNING id, event_id, attempts, ordering_slot
)
INSERT INTO execution_logs (created_at, phase, event, status, handler_id, handler_name, kind, error,
    duration_ms, attempt, data_sent, event_id, delivery_id, emitted_by)
SELECT now(), 'after', e.event, 'fail', h.id, h.name, h.kind, $3, 0, x.attempts, e.data::jsonb, x.event_id, x.id,
       e.emitted_by
FROM ended x
JOIN events e ON e.id = x.event_id
JOIN handlers h ON h.id = $1
RETURNING event_id, delivery_id, id AS log_id,
    (SELECT x2.ordering_slot FROM ended x2 WHERE x2.id = delivery_id) AS ordering_slot
"#,
    )
    .bind::<BigInt, _>(handler_id)
    .bind::<Nullable<BigInt>, _>(event_id)
    .bind::<Text, _>(reason)
    .load(conn)
}

/// Whether (event, handler) has a delivery running now under a live lease.
pub fn is_running(conn: &mut PgConnection, event_id: i64, handler_id: i64) -> QueryResult<bool> {
    use crate::db::schema::deliveries::dsl as d;
    diesel::select(diesel::dsl::exists(
        d::deliveries
            .filter(d::event_id.eq(event_id))
            .filter(d::handler_id.eq(handler_id))
            .filter(d::state.eq(1i16))
            .filter(d::leased_by.is_not_null())
            .filter(d::next_attempt_at.gt(diesel::dsl::now)),
    ))
    .get_result(conn)
}

/// Makes every failed, undelivered delivery of a handler (dead, or waiting for its next
/// retry, throttled or not) for events created at or after `since` due now: an
/// operator's retry is not throttled. Deliveries leased to a replica right now are left
/// to it. Returns how many.
pub fn retry_failed(
    conn: &mut PgConnection,
    handler_id: i64,
    since: DateTime<Utc>,
) -> QueryResult<usize> {
    diesel::sql_query(
        r#"
UPDATE deliveries SET state = 1, next_attempt_at = now(), leased_by = NULL
WHERE handler_id = $1 AND attempts > 0 AND state IN (1, 3, 5) AND leased_by IS NULL
  AND created_at >= $2
"#,
    )
    .bind::<BigInt, _>(handler_id)
    .bind::<Timestamptz, _>(since)
    .execute(conn)
}

/// Deliveries held back, per handler, counted now.
#[derive(Debug, QueryableByName)]
pub struct HeldCounts {
    /// Handler id.
    #[diesel(sql_type = BigInt)]
    pub handler_id: i64,
    /// Handler name.
    #[diesel(sql_type = Text)]
    pub name: String,
    /// Unfinished deliveries of a handler that is not enabled.
    #[diesel(sql_type = BigInt)]
    pub paused: i64,
    /// Deliveries queued behind an earlier delivery of their ordering key.
    #[diesel(sql_type = BigInt)]
    pub queued: i64,
    /// Ordering slots held by a given-up delivery of a handler with the BLOCK policy.
    #[diesel(sql_type = BigInt)]
    pub blocked_keys: i64,
    /// Deliveries waiting for the handler's limits to admit them.
    #[diesel(sql_type = BigInt)]
    pub throttled: i64,
}

/// The [`HeldCounts`] of every handler holding anything back; one handler only when
/// `handler_id` is given.
pub fn held_counts(
    conn: &mut PgConnection,
    handler_id: Option<i64>,
) -> QueryResult<Vec<HeldCounts>> {
    diesel::sql_query(
        r#"
SELECT h.id AS handler_id, h.name,
       count(*) FILTER (WHERE h.status <> 'enabled' AND d.state IN (0, 1, 2)) AS paused,
       count(*) FILTER (WHERE d.state = 4) AS queued,
       count(DISTINCT d.ordering_slot) FILTER (
           WHERE h.ordering_policy = 'block' AND d.state IN (2, 3)) AS blocked_keys,
       count(*) FILTER (WHERE d.state = 5) AS throttled
FROM deliveries d JOIN handlers h ON h.id = d.handler_id
WHERE (h.status <> 'enabled' OR d.state IN (4, 5) OR (d.ordering_slot IS NOT NULL AND d.state IN (2, 3)))
  AND ($1::bigint IS NULL OR h.id = $1)
GROUP BY h.id, h.name
"#,
    )
    .bind::<Nullable<BigInt>, _>(handler_id)
    .load(conn)
}

/// Deliveries due now and not leased (on every replica), and how long the oldest of
/// them has been due.
#[derive(Debug, QueryableByName)]
pub struct DueSummary {
    /// How many.
    #[diesel(sql_type = BigInt)]
    pub count: i64,
    /// Seconds since the oldest became due; 0 when none is.
    #[diesel(sql_type = diesel::sql_types::Double)]
    pub oldest_age_seconds: f64,
}

/// The [`DueSummary`] now. A claimed delivery's due time is its lease expiry, so
/// deliveries running now are not counted as due.
pub fn due_summary(conn: &mut PgConnection) -> QueryResult<DueSummary> {
    prepared(
        r#"
SELECT count(*) AS count,
       coalesce(extract(epoch FROM now() - min(next_attempt_at)), 0)::float8 AS oldest_age_seconds
FROM deliveries WHERE state = 1 AND next_attempt_at <= now()
"#,
    )
    .get_result(conn)
}
