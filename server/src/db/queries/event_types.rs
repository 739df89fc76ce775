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

/// Whether `name` is in the catalogue; its row stays locked (`FOR UPDATE`) until the
/// end of the transaction, so handler changes of one event are serialised (the
/// handlers-per-event limit cannot be overshot by concurrent calls).
pub fn lock(conn: &mut PgConnection, name: &str) -> QueryResult<bool> {
    event_types::table
        .filter(event_types::name.eq(name))
        .select(event_types::name)
        .for_update()
        .first::<String>(conn)
        .optional()
        .map(|row| row.is_some())
}

/// Inserts a new event type (unique violation if the name is taken).
pub fn insert(conn: &mut PgConnection, row: &EventTypeRow) -> QueryResult<EventTypeRow> {
    diesel::insert_into(event_types::table)
        .values(row)
        .returning(EventTypeRow::as_returning())
        .get_result(conn)
}
