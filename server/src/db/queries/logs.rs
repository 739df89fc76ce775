//! Queries on the execution log.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Int4, Nullable, Text, Timestamptz};

/// Columns of a batch of new log rows, one vector per column, same length.
#[derive(Debug, Default)]
pub struct NewLogColumns {
    pub created_at: Vec<DateTime<Utc>>,
    pub phase: Vec<&'static str>,
    pub event: Vec<String>,
    pub status: Vec<&'static str>,
    pub handler_id: Vec<i64>,
    pub handler_name: Vec<String>,
    pub kind: Vec<&'static str>,
    pub error: Vec<String>,
    pub duration_ms: Vec<i32>,
    pub attempt: Vec<i32>,
    pub data_sent: Vec<String>,
    pub data_returned: Vec<Option<String>>,
    pub response: Vec<String>,
    pub http_status: Vec<Option<i32>>,
    pub exit_code: Vec<Option<i32>>,
    pub event_id: Vec<i64>,
    pub delivery_id: Vec<Option<i64>>,
}

#[derive(QueryableByName)]
struct MaxId {
    #[diesel(sql_type = Nullable<BigInt>)]
    max: Option<i64>,
}

/// Inserts a batch of log rows (data as JSON text, cast to jsonb) and returns the
/// highest id written.
pub fn insert_batch(conn: &mut PgConnection, rows: &NewLogColumns) -> QueryResult<Option<i64>> {
    let max: MaxId = diesel::sql_query(
        r#"
WITH ins AS (
    INSERT INTO execution_logs (created_at, phase, event, status, handler_id, handler_name, kind, error,
        duration_ms, attempt, data_sent, data_returned, response, http_status, exit_code, event_id, delivery_id)
    SELECT created_at, phase, event, status, handler_id, handler_name, kind, error,
        duration_ms, attempt, data_sent::jsonb, data_returned::jsonb, response, http_status, exit_code, event_id, delivery_id
    FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::text[], $7::text[], $8::text[],
        $9::int[], $10::int[], $11::text[], $12::text[], $13::text[], $14::int[], $15::int[], $16::bigint[], $17::bigint[])
        AS t(created_at, phase, event, status, handler_id, handler_name, kind, error,
        duration_ms, attempt, data_sent, data_returned, response, http_status, exit_code, event_id, delivery_id)
    RETURNING id
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
    .get_result(conn)?;
    Ok(max.max)
}

/// Tells every replica's tailers that rows up to `max_id` exist.
pub fn notify_logs(conn: &mut PgConnection, max_id: i64) -> QueryResult<()> {
    diesel::sql_query("SELECT pg_notify('provisioning_logs', $1)")
        .bind::<Text, _>(max_id.to_string())
        .execute(conn)?;
    Ok(())
}
