//! Storing AFTER events with their deliveries.

use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bool, Nullable, Text};

use crate::db::prepared::prepared;

/// Outcome of storing one event of a batch, in input order.
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
}

/// Inserts a batch of events and, in the same statement, one delivery per matching
/// enabled AFTER handler (read now: no cache, so handler changes apply at once). The
/// first delivery of each event in priority order is pending, the others wait for it.
/// Events whose idempotency key is taken are skipped (`inserted = false`).
pub fn insert_batch(
    conn: &mut PgConnection,
    names: &[&str],
    data: &[&str],
    keys: &[Option<&str>],
) -> QueryResult<Vec<StoredEvent>> {
    prepared(
        r#"
WITH input AS MATERIALIZED (
    SELECT nextval('events_id_seq') AS id, t.event, t.data, t.key, t.ord
    FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS t(event, data, key, ord)
), ins AS (
    INSERT INTO events (id, event, data, idempotency_key)
    SELECT id, event, data, key FROM input ORDER BY ord
    ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id, event, data
), dl AS (
    INSERT INTO deliveries (event_id, handler_id, priority, state)
    SELECT ins.id, h.id, h.priority,
           CASE WHEN row_number() OVER (PARTITION BY ins.id ORDER BY h.priority, h.id) = 1
                THEN 1 ELSE 0 END
    FROM ins
    JOIN handlers h ON h.event = ins.event AND h.phase = 'after' AND h.status = 'enabled'
                   AND (h.filter IS NULL OR ins.data::jsonb @> h.filter)
    RETURNING event_id
), counts AS (
    SELECT event_id, count(*) AS n FROM dl GROUP BY event_id
)
SELECT input.ord, input.id, (ins.id IS NOT NULL) AS inserted, coalesce(counts.n, 0) AS deliveries
FROM input
LEFT JOIN ins ON ins.id = input.id
LEFT JOIN counts ON counts.event_id = input.id
ORDER BY input.ord
"#,
    )
    .bind::<Array<Text>, _>(names)
    .bind::<Array<Text>, _>(data)
    .bind::<Array<Nullable<Text>>, _>(keys)
    .load(conn)
}

#[derive(QueryableByName)]
struct KeyedId {
    #[diesel(sql_type = Text)]
    idempotency_key: String,
    #[diesel(sql_type = BigInt)]
    id: i64,
}

/// Ids of the stored events holding these idempotency keys.
pub fn ids_by_keys(conn: &mut PgConnection, keys: &[&str]) -> QueryResult<Vec<(String, i64)>> {
    let rows: Vec<KeyedId> =
        prepared("SELECT idempotency_key, id FROM events WHERE idempotency_key = ANY($1::text[])")
            .bind::<Array<Text>, _>(keys)
            .load(conn)?;
    Ok(rows
        .into_iter()
        .map(|r| (r.idempotency_key, r.id))
        .collect())
}

/// A fresh event id for a BEFORE event (which is logged, not stored).
pub fn next_id(conn: &mut PgConnection) -> QueryResult<i64> {
    #[derive(QueryableByName)]
    struct NextId {
        #[diesel(sql_type = BigInt)]
        id: i64,
    }
    let next: NextId = prepared("SELECT nextval('events_id_seq') AS id").get_result(conn)?;
    Ok(next.id)
}
