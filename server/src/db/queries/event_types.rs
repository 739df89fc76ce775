//! Queries on the event catalogue.

use diesel::prelude::*;

use crate::db::models::EventTypeRow;
use crate::db::schema::event_types;

/// All event types by name.
pub fn list(conn: &mut PgConnection) -> QueryResult<Vec<EventTypeRow>> {
    event_types::table
        .select(EventTypeRow::as_select())
        .order(event_types::name)
        .load(conn)
}

/// Whether `name` is in the catalogue.
pub fn exists(conn: &mut PgConnection, name: &str) -> QueryResult<bool> {
    diesel::select(diesel::dsl::exists(
        event_types::table.filter(event_types::name.eq(name)),
    ))
    .get_result(conn)
}

/// Inserts a new event type (unique violation if the name is taken).
pub fn insert(conn: &mut PgConnection, row: &EventTypeRow) -> QueryResult<EventTypeRow> {
    diesel::insert_into(event_types::table)
        .values(row)
        .returning(EventTypeRow::as_returning())
        .get_result(conn)
}
