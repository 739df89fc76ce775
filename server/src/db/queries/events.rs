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
/// rest wait for it. Events whose idempotency key is taken are skipped
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
    SELECT nextval('events_id_seq') AS id, t.event, t.data, t.key, t.emitted_by, t.traceparent, t.ord
    FROM unnest($1::text[], $2::text[], $3::text[], $7::text[], $9::text[])
        WITH ORDINALITY AS t(event, data, key, emitted_by, traceparent, ord)
), stale AS MATERIALIZED (
    SELECT DISTINCT v.event
    FROM unnest($1::text[], $8::bigint[]) AS v(event, schema_version)
    JOIN event_types et ON et.name = v.event AND et.schema_version <> v.schema_version
), ins AS (
    INSERT INTO events (id, event, data, idempotency_key, emitted_by, traceparent)
    SELECT id, event, data, key, emitted_by, traceparent FROM input
    WHERE NOT EXISTS (SELECT 1 FROM stale)
    ORDER BY ord
    ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id, event, data
), dl AS (
    INSERT INTO deliveries (event_id, handler_id, priority, state, next_attempt_at, leased_by)
    SELECT c.id, c.handler_id, c.priority,
           CASE WHEN c.leased OR c.rank = 1 THEN 1 ELSE 0 END,
           CASE WHEN c.leased THEN now() + (($6 + c.chain_ms) * interval '1 millisecond') ELSE now() END,
           CASE WHEN c.leased THEN $5 END
    FROM (
        SELECT ins.id, h.id AS handler_id, h.priority,
               dense_rank() OVER (ORDER BY ins.id) <= $4 AS leased,
               row_number() OVER (PARTITION BY ins.id ORDER BY h.priority, h.id) AS rank,
               sum(h.timeout_ms) OVER (PARTITION BY ins.id) AS chain_ms
        FROM ins
        JOIN handlers h ON h.event = ins.event AND h.phase = 'after' AND h.status = 'enabled'
                       AND (h.filter IS NULL OR ins.data::jsonb @> h.filter)
    ) c
    RETURNING id, event_id, handler_id, priority, leased_by
), counts AS (
    SELECT event_id, count(*) AS n FROM dl GROUP BY event_id
)
SELECT input.ord, input.id, (ins.id IS NOT NULL) AS inserted, coalesce(counts.n, 0) AS deliveries,
       l.id AS delivery_id, h.id AS handler_id, h.name, h.kind, h.url, h.headers, h.secret,
       h.script_path, h.timeout_ms,
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
    .load(conn)
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
