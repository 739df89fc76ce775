//! Queries on the event catalogue.

use diesel::prelude::*;

use crate::db::models::{EventSchemaRow, EventTypeRow};
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

/// One event type, locked until the end of the transaction against other changes of it
/// (`FOR NO KEY UPDATE`: handlers referring to it are not held up); `None` for an
/// unknown name.
pub fn find_for_update(conn: &mut PgConnection, name: &str) -> QueryResult<Option<EventTypeRow>> {
    event_types::table
        .filter(event_types::name.eq(name))
        .select(EventTypeRow::as_select())
        .for_no_key_update()
        .first(conn)
        .optional()
}

/// The schema and schema version of an event type; `None` for an unknown name.
pub fn schema_of(conn: &mut PgConnection, name: &str) -> QueryResult<Option<EventSchemaRow>> {
    event_types::table
        .filter(event_types::name.eq(name))
        .select(EventSchemaRow::as_select())
        .first(conn)
        .optional()
}

/// The schema version of an event type; `None` for an unknown name.
pub fn schema_version(conn: &mut PgConnection, name: &str) -> QueryResult<Option<i64>> {
    event_types::table
        .filter(event_types::name.eq(name))
        .select(event_types::schema_version)
        .first(conn)
        .optional()
}

/// Inserts a new event type (unique violation if the name is taken).
pub fn insert(conn: &mut PgConnection, row: &EventTypeRow) -> QueryResult<EventTypeRow> {
    diesel::insert_into(event_types::table)
        .values(row)
        .returning(EventTypeRow::as_returning())
        .get_result(conn)
}

/// Writes an event type's description, schema and schema version.
pub fn update(conn: &mut PgConnection, row: &EventTypeRow) -> QueryResult<EventTypeRow> {
    diesel::update(event_types::table.find(&row.name))
        .set((
            event_types::description.eq(&row.description),
            event_types::data_schema.eq(&row.data_schema),
            event_types::schema_version.eq(row.schema_version),
        ))
        .returning(EventTypeRow::as_returning())
        .get_result(conn)
}
