//! Queries on handlers.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::Text;

use crate::db::models::{HandlerChangeset, HandlerRow, NewHandlerRow};
use crate::db::prepared::prepared;
use crate::db::schema::handlers;

/// Inserts a handler.
pub fn insert(conn: &mut PgConnection, row: &NewHandlerRow) -> QueryResult<HandlerRow> {
    diesel::insert_into(handlers::table)
        .values(row)
        .returning(HandlerRow::as_returning())
        .get_result(conn)
}

/// One handler.
pub fn find(conn: &mut PgConnection, id: i64) -> QueryResult<HandlerRow> {
    handlers::table
        .find(id)
        .select(HandlerRow::as_select())
        .first(conn)
}

/// One handler, locked for update until the end of the transaction.
pub fn find_for_update(conn: &mut PgConnection, id: i64) -> QueryResult<HandlerRow> {
    handlers::table
        .find(id)
        .select(HandlerRow::as_select())
        .for_update()
        .first(conn)
}

/// Filters of `list_page`; `None` means any.
#[derive(Debug, Default)]
pub struct ListFilter<'a> {
    /// Event name.
    pub event: Option<&'a str>,
    /// `before` / `after`.
    pub phase: Option<&'a str>,
    /// `http` / `script`.
    pub kind: Option<&'a str>,
    /// Statuses to include.
    pub statuses: &'a [&'a str],
}

/// Position in the List order (event, phase, priority, id) after which a page starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListPosition {
    /// Event of the last row seen.
    pub event: String,
    /// Phase of the last row seen.
    pub phase: String,
    /// Priority of the last row seen.
    pub priority: i32,
    /// Id of the last row seen.
    pub id: i64,
}

/// A page of handlers in (event, phase, priority, id) order, after `after`.
pub fn list_page(
    conn: &mut PgConnection,
    filter: &ListFilter<'_>,
    after: Option<&ListPosition>,
    limit: i64,
) -> QueryResult<Vec<HandlerRow>> {
    let mut query = handlers::table
        .select(HandlerRow::as_select())
        .filter(handlers::status.eq_any(filter.statuses))
        .into_boxed();
    if let Some(after) = after {
        query = query.filter(
            diesel::dsl::sql::<diesel::sql_types::Bool>("(event, phase, priority, id) > (")
                .bind::<diesel::sql_types::Text, _>(after.event.clone())
                .sql(", ")
                .bind::<diesel::sql_types::Text, _>(after.phase.clone())
                .sql(", ")
                .bind::<diesel::sql_types::Integer, _>(after.priority)
                .sql(", ")
                .bind::<diesel::sql_types::BigInt, _>(after.id)
                .sql(")"),
        );
    }
    if let Some(event) = filter.event {
        query = query.filter(handlers::event.eq(event));
    }
    if let Some(phase) = filter.phase {
        query = query.filter(handlers::phase.eq(phase));
    }
    if let Some(kind) = filter.kind {
        query = query.filter(handlers::kind.eq(kind));
    }
    query
        .order((
            handlers::event,
            handlers::phase,
            handlers::priority,
            handlers::id,
        ))
        .limit(limit)
        .load(conn)
}

/// The enabled handlers of (event, phase) whose filter matches `data` (JSON object
/// text), in run order.
pub fn enabled_matching(
    conn: &mut PgConnection,
    event: &str,
    phase: &str,
    data: &str,
) -> QueryResult<Vec<HandlerRow>> {
    prepared(
        "SELECT * FROM handlers
         WHERE event = $1 AND phase = $2 AND status = 'enabled'
           AND (filter IS NULL OR $3::jsonb @> filter)
         ORDER BY priority, id",
    )
    .bind::<Text, _>(event)
    .bind::<Text, _>(phase)
    .bind::<Text, _>(data)
    .load(conn)
}

/// Writes every editable column.
pub fn update(
    conn: &mut PgConnection,
    id: i64,
    changes: &HandlerChangeset,
) -> QueryResult<HandlerRow> {
    diesel::update(handlers::table.find(id))
        .set(changes)
        .returning(HandlerRow::as_returning())
        .get_result(conn)
}

/// Sets a status chosen by an operator: clears the automatic-disable reason and the
/// failing clock.
pub fn set_status(conn: &mut PgConnection, id: i64, status: &str) -> QueryResult<HandlerRow> {
    diesel::update(handlers::table.find(id))
        .set((
            handlers::status.eq(status),
            handlers::disabled_reason.eq(None::<String>),
            handlers::failing_since.eq(None::<DateTime<Utc>>),
            handlers::updated_at.eq(diesel::dsl::now),
        ))
        .returning(HandlerRow::as_returning())
        .get_result(conn)
}

/// Replaces the secret.
pub fn set_secret(conn: &mut PgConnection, id: i64, secret: &str) -> QueryResult<HandlerRow> {
    diesel::update(handlers::table.find(id))
        .set((
            handlers::secret.eq(secret),
            handlers::updated_at.eq(diesel::dsl::now),
        ))
        .returning(HandlerRow::as_returning())
        .get_result(conn)
}

/// Handlers of `event` that are not archived, other than `except`.
pub fn count_for_event(
    conn: &mut PgConnection,
    event: &str,
    except: Option<i64>,
) -> QueryResult<i64> {
    handlers::table
        .filter(handlers::event.eq(event))
        .filter(handlers::status.ne("archived"))
        .filter(handlers::id.ne(except.unwrap_or(0)))
        .count()
        .get_result(conn)
}

/// Deletes a handler; returns the number of rows deleted (0 or 1).
pub fn delete(conn: &mut PgConnection, id: i64) -> QueryResult<usize> {
    diesel::delete(handlers::table.find(id)).execute(conn)
}
