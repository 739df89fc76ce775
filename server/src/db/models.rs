//! Row types of each table: a read struct, an insert struct and a changeset, checked
//! against the PostgreSQL backend. They are neither proto nor domain types; `domain/`
//! converts explicitly.

use chrono::{DateTime, Utc};
use diesel::deserialize::{self, FromSql, FromSqlRow};
use diesel::pg::{Pg, PgValue};
use diesel::prelude::*;
use diesel::sql_types::Jsonb;

use super::schema::{event_types, execution_logs, handler_audit, handlers};

/// A row of `handlers`.
#[derive(Debug, Clone, Queryable, QueryableByName, Selectable)]
#[diesel(table_name = handlers, check_for_backend(diesel::pg::Pg))]
pub struct HandlerRow {
    pub id: i64,
    pub name: String,
    pub event: String,
    pub phase: String,
    pub kind: String,
    pub status: String,
    pub priority: i32,
    pub timeout_ms: i32,
    pub url: Option<String>,
    pub headers: serde_json::Value,
    pub secret: Option<String>,
    pub script_path: Option<String>,
    pub failure_policy: String,
    pub filter: Option<serde_json::Value>,
    pub disabled_reason: Option<String>,
    pub failing_since: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub ordering_policy: String,
    pub ordering_group: Option<String>,
    pub max_in_flight: Option<i32>,
    pub rate_per_second: Option<i32>,
}

/// Insert form of `handlers`.
#[derive(Debug, Insertable)]
#[diesel(table_name = handlers, check_for_backend(diesel::pg::Pg))]
pub struct NewHandlerRow {
    pub name: String,
    pub event: String,
    pub phase: String,
    pub kind: String,
    pub status: String,
    pub priority: i32,
    pub timeout_ms: i32,
    pub url: Option<String>,
    pub headers: serde_json::Value,
    pub secret: Option<String>,
    pub script_path: Option<String>,
    pub failure_policy: String,
    pub filter: Option<serde_json::Value>,
    pub ordering_policy: String,
    pub ordering_group: Option<String>,
    pub max_in_flight: Option<i32>,
    pub rate_per_second: Option<i32>,
}

/// Full replacement of a handler's editable columns (Update reads, patches, writes).
#[derive(Debug, AsChangeset)]
#[diesel(table_name = handlers, check_for_backend(diesel::pg::Pg), treat_none_as_null = true)]
pub struct HandlerChangeset {
    pub name: String,
    pub event: String,
    pub phase: String,
    pub kind: String,
    pub status: String,
    pub priority: i32,
    pub timeout_ms: i32,
    pub url: Option<String>,
    pub headers: serde_json::Value,
    pub secret: Option<String>,
    pub script_path: Option<String>,
    pub failure_policy: String,
    pub filter: Option<serde_json::Value>,
    pub disabled_reason: Option<String>,
    pub updated_at: DateTime<Utc>,
    pub ordering_policy: String,
    pub ordering_group: Option<String>,
    pub max_in_flight: Option<i32>,
    pub rate_per_second: Option<i32>,
}

/// A row of `event_types` (the columns the service reads and writes).
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = event_types, check_for_backend(diesel::pg::Pg))]
pub struct EventTypeRow {
    pub name: String,
    pub description: String,
    pub builtin: bool,
    /// The data schema as set (JSON text); `None` = none.
    pub data_schema: Option<String>,
    /// Bumped by every schema change: the key of the replicas' compiled-schema caches.
    pub schema_version: i64,
}

/// The schema columns of an `event_types` row.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = event_types, check_for_backend(diesel::pg::Pg))]
pub struct EventSchemaRow {
    pub data_schema: Option<String>,
    pub schema_version: i64,
}

/// A row of `execution_logs`.
#[derive(Debug, Clone, Queryable, Selectable, QueryableByName)]
#[diesel(table_name = execution_logs, check_for_backend(diesel::pg::Pg))]
pub struct LogRow {
    pub id: i64,
    pub created_at: DateTime<Utc>,
    pub phase: String,
    pub event: String,
    pub status: String,
    pub handler_id: i64,
    pub handler_name: String,
    pub kind: String,
    pub error: String,
    pub duration_ms: i32,
    pub attempt: i32,
    pub data_sent: JsonText,
    pub data_returned: Option<JsonText>,
    pub response: String,
    pub http_status: Option<i32>,
    pub exit_code: Option<i32>,
    pub event_id: i64,
    pub delivery_id: Option<i64>,
    pub emitted_by: Option<String>,
    /// A run of HandlerService.Test.
    pub test: bool,
}

/// A `jsonb` value read as PostgreSQL prints it, without parsing: whatever a stored row
/// holds (however deep, however large its numbers), reading it cannot fail, so one
/// unusual row never breaks a page of the log.
#[derive(Debug, Clone, PartialEq, Eq, FromSqlRow)]
#[diesel(sql_type = Jsonb)]
pub struct JsonText(pub String);

impl FromSql<Jsonb, Pg> for JsonText {
    fn from_sql(value: PgValue<'_>) -> deserialize::Result<Self> {
        // The binary form of jsonb is a version byte (1) followed by the JSON text.
        match value.as_bytes().split_first() {
            Some((1, text)) => Ok(JsonText(String::from_utf8_lossy(text).into_owned())),
            _ => Err("unsupported jsonb binary format version".into()),
        }
    }
}

/// A row of `handler_audit`.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = handler_audit, check_for_backend(diesel::pg::Pg))]
pub struct AuditRow {
    pub id: i64,
    pub created_at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub handler_id: Option<i64>,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

/// A new row of `handler_audit` (id and time from the database).
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = handler_audit, check_for_backend(diesel::pg::Pg))]
pub struct NewAuditRow {
    pub actor: String,
    pub action: String,
    pub handler_id: Option<i64>,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}
