//! Storing AFTER events with their deliveries.

use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bool, Int4, Jsonb, Nullable, Text};

use crate::db::prepared::prepared;

/// One row of the outcome of storing a batch: one per event in input order, repeated
/// once per delivery leased to the caller (in run order), whose columns are then set.
#[derive(Debug, Clone, QueryableByName)]
pub struct StoredEvent {
    /// 1-based position in the batch.
    #[diesel(sql_type = BigInt)]
    pub ord: i64,
    /// Id given to the event (for a duplicate, the id it would have had).
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    /// False when the idempotency key was already taken.
    #[diesel(sql_type = Bool)]
    pub inserted: bool,
    /// Deliveries created for it.
    #[diesel(sql_type = BigInt)]
    pub deliveries: i64,
    /// A delivery leased to the caller.
    #[diesel(sql_type = Nullable<BigInt>)]
    pub delivery_id: Option<i64>,
    /// Its handler.
    #[diesel(sql_type = Nullable<BigInt>)]
    pub handler_id: Option<i64>,
    /// Handler name.
    #[diesel(sql_type = Nullable<Text>)]
    pub name: Option<String>,
    /// `http` / `script`.
    #[diesel(sql_type = Nullable<Text>)]
    pub kind: Option<String>,
    /// HTTP URL.
    #[diesel(sql_type = Nullable<Text>)]
    pub url: Option<String>,
    /// HTTP headers.
    #[diesel(sql_type = Nullable<Jsonb>)]
    pub headers: Option<serde_json::Value>,
    /// HTTP secret.
    #[diesel(sql_type = Nullable<Text>)]
    pub secret: Option<String>,
    /// Script path.
    #[diesel(sql_type = Nullable<Text>)]
    pub script_path: Option<String>,
    /// Timeout of one run.
    #[diesel(sql_type = Nullable<Int4>)]
    pub timeout_ms: Option<i32>,
    /// The leased delivery's ordering slot, for a keyed event.
    #[diesel(sql_type = Nullable<Text>)]
    pub ordering_slot: Option<String>,
    /// The event was validated against an older schema of its event type than the
    /// table now holds; when any event of the batch is stale, nothing is stored.
    #[diesel(sql_type = Bool)]
    pub stale: bool,
}

/// Deliveries to lease to the storing replica as they are inserted, so it runs them
/// without claiming them back from the table.
#[derive(Debug, Clone, Copy)]
pub struct LeaseAtInsert<'a> {
    /// At most this many events (of those with deliveries) have theirs leased.
    pub events: i32,
    /// Lease owner.
    pub owner: &'a str,
    /// Lease length beyond the handlers' timeouts.
    pub lease_ms: i64,
}

/// The columns of a batch of new events, one vector per column, same length.
#[derive(Debug, Default)]
pub struct NewEventColumns<'a> {
    /// Event names.
    pub names: Vec<&'a str>,
    /// Data (JSON object text).
    pub data: Vec<&'a str>,
    /// Idempotency keys.
    pub keys: Vec<Option<&'a str>>,
    /// Ordering keys.
    pub ordering_keys: Vec<Option<&'a str>>,
    /// Who emitted each event.
    pub emitted_by: Vec<Option<&'a str>>,
    /// The emitters' W3C `traceparent`s.
    pub traceparents: Vec<Option<String>>,
    /// The schema version each event was validated against.
    pub schema_versions: Vec<i64>,
}

/// Inserts a batch of events and, in the same statement, one delivery per matching
/// enabled AFTER handler (read now: no cache, so handler changes apply at once).
/// Deliveries of the events covered by `lease` are leased to its owner, exactly as a
/// claim would leave them; of the others, the first in priority order is pending and the
/// rest wait for it. A keyed event whose ordering slots (see `deliveries`) hold an
/// earlier unfinished delivery, in the table or earlier in the batch, is queued whole
/// (state 4) and never leased; the caller must hold the keys' locks
/// ([`lock_ordering_keys`]) so that inserts of one key see each other. Otherwise an
/// event with a limited handler is throttled whole (state 5), for the admission
/// (`deliveries::admit_throttled`). Events whose idempotency key is taken are skipped
/// (`inserted = false`). `schema_versions` are the event types' schema versions each
/// event was validated against: if any is no longer the table's, nothing is stored and
/// the events of that type come back `stale` (see `domain::schemas`). One statement: it
/// commits on its own, all or nothing.
pub fn insert_batch(
    conn: &mut PgConnection,
    events: &NewEventColumns<'_>,
    lease: LeaseAtInsert<'_>,
) -> QueryResult<Vec<StoredEvent>> {
    prepared(
        r#"
WITH input AS MATERIALIZED (
    SELECT nextval('events_id_seq') AS id, t.event, t.data, t.key, t.emitted_by, t.traceparent,
           t.ordering_key, t.ord
    FROM unnest($1::text[], $2::text[], $3::text[], $7::text[], $9::text[], $10::text[])
        WITH ORDINALITY AS t(event, data, key, emitted_by, traceparent, ordering_key, ord)
), stale AS MATERIALIZED (
    SELECT DISTINCT v.event
    FROM unnest($1::text[], $8::bigint[]) AS v(event, schema_version)
    JOIN event_types et ON et.name = v.event AND et.schema_version <> v.schema_version
), ins AS (
    INSERT INTO events (id, event, data, idempotency_key, emitted_by, traceparent, ordering_key)
    SELECT id, event, data, key, emitted_by, traceparent, ordering_key FROM input
    WHERE NOT EXISTS (SELECT 1 FROM stale)
    ORDER BY ord
    ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id, event, data, ordering_key
), matched AS (
    -- One row per delivery to create, with its ordering slot and whether an earlier
    -- unfinished delivery in the table holds that slot (waiting, pending or running,
    -- queued, or throttled; given-up ones hold it only under the BLOCK policy).
    SELECT ins.id, h.id AS handler_id, h.priority, h.timeout_ms, s.slot,
           h.max_in_flight IS NOT NULL OR h.rate_per_second IS NOT NULL AS limited,
           s.slot IS NOT NULL AND EXISTS (
               SELECT 1 FROM deliveries p JOIN handlers ph ON ph.id = p.handler_id
               WHERE p.ordering_slot = s.slot AND p.event_id < ins.id
                 AND (p.state IN (0, 1, 4, 5) OR ph.ordering_policy = 'block')
           ) AS held
    FROM ins
    JOIN handlers h ON h.event = ins.event AND h.phase = 'after' AND h.status = 'enabled'
                   AND (h.filter IS NULL OR ins.data::jsonb @> h.filter)
    CROSS JOIN LATERAL (
        SELECT coalesce('g:' || h.ordering_group, 'h:' || h.id) || '|' || ins.ordering_key AS slot
    ) s
), queued AS (
    -- Whole events wait: one of their slots is held, or taken by an earlier event of
    -- this batch (queued); or one of their handlers is limited (throttled).
    SELECT m.*, bool_or(m.held OR (m.slot IS NOT NULL AND m.id > m.first_of_slot))
               OVER (PARTITION BY m.id) AS waits,
           bool_or(m.limited) OVER (PARTITION BY m.id) AS throttled
    FROM (SELECT matched.*, min(id) OVER (PARTITION BY slot) AS first_of_slot FROM matched) m
), dl AS (
    INSERT INTO deliveries (event_id, handler_id, priority, state, next_attempt_at, leased_by, ordering_slot)
    SELECT c.id, c.handler_id, c.priority,
           CASE WHEN c.waits THEN 4 WHEN c.throttled THEN 5 WHEN c.leased OR c.rank = 1 THEN 1 ELSE 0 END,
           CASE WHEN c.leased THEN now() + (($6 + c.chain_ms) * interval '1 millisecond') ELSE now() END,
           CASE WHEN c.leased THEN $5 END,
           c.slot
    FROM (
        SELECT q.id, q.handler_id, q.priority, q.slot, q.waits, q.throttled,
               NOT (q.waits OR q.throttled)
                   AND dense_rank() OVER (PARTITION BY q.waits OR q.throttled ORDER BY q.id) <= $4 AS leased,
               row_number() OVER (PARTITION BY q.id ORDER BY q.priority, q.handler_id) AS rank,
               sum(q.timeout_ms) OVER (PARTITION BY q.id) AS chain_ms
        FROM queued q
    ) c
    RETURNING id, event_id, handler_id, priority, leased_by, ordering_slot
), counts AS (
    SELECT event_id, count(*) AS n FROM dl GROUP BY event_id
)
SELECT input.ord, input.id, (ins.id IS NOT NULL) AS inserted, coalesce(counts.n, 0) AS deliveries,
       l.id AS delivery_id, h.id AS handler_id, h.name, h.kind, h.url, h.headers, h.secret,
       h.script_path, h.timeout_ms, l.ordering_slot,
       EXISTS (SELECT 1 FROM stale WHERE stale.event = input.event) AS stale
FROM input
LEFT JOIN ins ON ins.id = input.id
LEFT JOIN counts ON counts.event_id = input.id
LEFT JOIN dl l ON l.event_id = input.id AND l.leased_by IS NOT NULL
LEFT JOIN handlers h ON h.id = l.handler_id
ORDER BY input.ord, l.priority, l.handler_id
"#,
    )
    .bind::<Array<Text>, _>(&events.names)
    .bind::<Array<Text>, _>(&events.data)
    .bind::<Array<Nullable<Text>>, _>(&events.keys)
    .bind::<Int4, _>(lease.events)
    .bind::<Text, _>(lease.owner)
    .bind::<BigInt, _>(lease.lease_ms)
    .bind::<Array<Nullable<Text>>, _>(&events.emitted_by)
    .bind::<Array<BigInt>, _>(&events.schema_versions)
    .bind::<Array<Nullable<Text>>, _>(&events.traceparents)
    .bind::<Array<Nullable<Text>>, _>(&events.ordering_keys)
    .load(conn)
}

/// Takes the transaction-scoped locks of these ordering keys, in one order everywhere
/// (so two holders never deadlock): inserts of one key then see each other, and a
/// delivery finishing sees the later ones queued behind it. Empty: nothing to do.
pub fn lock_ordering_keys(conn: &mut PgConnection, keys: &[&str]) -> QueryResult<()> {
    if keys.is_empty() {
        return Ok(());
    }
    prepared(
        r#"
SELECT count(pg_advisory_xact_lock(k.h)) AS n
FROM (SELECT DISTINCT hashtextextended(key, 0) AS h FROM unnest($1::text[]) AS key ORDER BY 1) k
"#,
    )
    .bind::<Array<Text>, _>(keys)
    .execute(conn)?;
    Ok(())
}

/// The ordering key of a stored event, if it has one (none when it is gone).
pub fn ordering_key_of_event(conn: &mut PgConnection, id: i64) -> QueryResult<Option<String>> {
    use crate::db::schema::events::dsl as e;
    Ok(e::events
        .filter(e::id.eq(id))
        .select(e::ordering_key)
        .first::<Option<String>>(conn)
        .optional()?
        .flatten())
}

/// A stored event found by its idempotency key.
#[derive(Debug, Clone, QueryableByName)]
pub struct KeyedEvent {
    /// The key.
    #[diesel(sql_type = Text)]
    pub idempotency_key: String,
    /// Event id.
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    /// Event name.
    #[diesel(sql_type = Text)]
    pub event: String,
    /// Data as emitted.
    #[diesel(sql_type = Text)]
    pub data: String,
}

/// The stored events holding these idempotency keys.
pub fn by_keys(conn: &mut PgConnection, keys: &[&str]) -> QueryResult<Vec<KeyedEvent>> {
    prepared(
        "SELECT idempotency_key, id, event, data FROM events WHERE idempotency_key = ANY($1::text[])",
    )
    .bind::<Array<Text>, _>(keys)
    .load(conn)
}

/// `n` fresh event ids for BEFORE events (which are logged, not stored).
pub fn next_ids(conn: &mut PgConnection, n: i64) -> QueryResult<Vec<i64>> {
    #[derive(QueryableByName)]
    struct NextId {
        #[diesel(sql_type = BigInt)]
        id: i64,
    }
    let ids: Vec<NextId> =
        prepared("SELECT nextval('events_id_seq') AS id FROM generate_series(1, $1)")
            .bind::<BigInt, _>(n)
            .load(conn)?;
    Ok(ids.into_iter().map(|r| r.id).collect())
}
