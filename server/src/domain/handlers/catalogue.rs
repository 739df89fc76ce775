//! The event catalogue: listing, adding and changing event types, each with an optional
//! data schema (see `domain::schemas` for what a schema may be and how replicas learn
//! of a change).
//!
//! Every change is recorded in the audit trail in its own transaction. A schema change
//! bumps the type's `schema_version` in the same transaction: that is what makes every
//! replica validate the next event against the new schema.

use diesel::Connection;
use serde_json::{json, Value};

use super::audit::{record, AuditAction};
use super::{validate_event_type_name, EventType, EventTypePatch, HandlerRegistry};
use crate::auth::Caller;
use crate::db::models::EventTypeRow;
use crate::db::queries::event_types;
use crate::domain::schemas::CompiledSchema;
use crate::domain::{text, DomainError};

/// Longest description, in characters.
const MAX_DESCRIPTION_CHARS: usize = 1000;

impl HandlerRegistry {
    /// The event catalogue, with schemas.
    pub async fn list_event_types(&self) -> Result<Vec<EventType>, DomainError> {
        let rows = self
            .db
            .run(|conn| event_types::list(conn).map_err(DomainError::from))
            .await?;
        Ok(rows.into_iter().map(event_type_from_row).collect())
    }

    /// Adds an event type, with a data schema when `schema` is not empty.
    pub async fn create_event_type(
        &self,
        caller: &Caller,
        name: String,
        description: String,
        schema: String,
    ) -> Result<EventType, DomainError> {
        let caller = caller.clone();
        validate_event_type_name(&name)?;
        validate_description(&description)?;
        let schema = checked_schema(schema)?;
        let row = EventTypeRow {
            name,
            description,
            builtin: false,
            data_schema: schema.as_ref().map(|s| s.text.clone()),
            schema_version: 0,
        };
        let row = self
            .db
            .run(move |conn| {
                conn.transaction(|conn| match event_types::insert(conn, &row) {
                    Ok(row) => {
                        let after = Some(audit_snapshot(&row));
                        record(
                            conn,
                            &caller,
                            AuditAction::CreateEventType,
                            None,
                            None,
                            after,
                        )?;
                        Ok(row)
                    }
                    Err(diesel::result::Error::DatabaseError(
                        diesel::result::DatabaseErrorKind::UniqueViolation,
                        _,
                    )) => Err(DomainError::AlreadyExists(format!(
                        "event type {:?} already exists",
                        row.name
                    ))),
                    Err(e) => Err(e.into()),
                })
            })
            .await?;
        self.schemas
            .remember(&row.name, row.schema_version, schema.map(|s| s.compiled));
        Ok(event_type_from_row(row))
    }

    /// Changes an event type's description or schema (read under a row lock, changed and
    /// written back in one transaction). A new schema bumps the schema version.
    pub async fn update_event_type(
        &self,
        caller: &Caller,
        name: String,
        patch: EventTypePatch,
    ) -> Result<EventType, DomainError> {
        let caller = caller.clone();
        let EventTypePatch {
            description,
            schema,
        } = patch;
        if let Some(description) = &description {
            validate_description(description)?;
        }
        text::require_storable("event_type.name", &name)?;
        let schema = schema
            .map(|s| checked_schema(s.unwrap_or_default()))
            .transpose()?;
        let new_text = schema.as_ref().map(|s| s.as_ref().map(|s| s.text.clone()));
        let row = self
            .db
            .run(move |conn| {
                conn.transaction(|conn| {
                    let current = event_types::find_for_update(conn, &name)?.ok_or_else(|| {
                        DomainError::NotFound(format!("event type {name:?} not found"))
                    })?;
                    let mut changed = current.clone();
                    if let Some(description) = description {
                        changed.description = description;
                    }
                    if let Some(text) = new_text {
                        if text != current.data_schema {
                            changed.data_schema = text;
                            changed.schema_version = current.schema_version + 1;
                        }
                    }
                    let row = event_types::update(conn, &changed)?;
                    record(
                        conn,
                        &caller,
                        AuditAction::UpdateEventType,
                        None,
                        Some(audit_snapshot(&current)),
                        Some(audit_snapshot(&row)),
                    )?;
                    Ok::<_, DomainError>(row)
                })
            })
            .await?;
        if let Some(schema) = schema {
            // This replica learns the new schema now; the others at their next event.
            self.schemas
                .remember(&row.name, row.schema_version, schema.map(|s| s.compiled));
        }
        Ok(event_type_from_row(row))
    }
}

/// A schema as an admin set it, checked and compiled.
struct CheckedSchema {
    text: String,
    compiled: CompiledSchema,
}

/// Checks a schema text; blank means none.
fn checked_schema(text: String) -> Result<Option<CheckedSchema>, DomainError> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    let (_, compiled) = CompiledSchema::compile(&text)?;
    Ok(Some(CheckedSchema { text, compiled }))
}

fn validate_description(description: &str) -> Result<(), DomainError> {
    text::require_storable("description", description)?;
    if description.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(DomainError::invalid(
            "description",
            format!("must be at most {MAX_DESCRIPTION_CHARS} characters"),
        ));
    }
    Ok(())
}

/// An event type as the audit trail shows it: the schema as a JSON value (`null` for
/// none).
fn audit_snapshot(row: &EventTypeRow) -> Value {
    let schema = row
        .data_schema
        .as_deref()
        .and_then(|text| serde_json::from_str::<Value>(text).ok())
        .unwrap_or(Value::Null);
    json!({
        "event_type": { "name": row.name, "description": row.description, "schema": schema }
    })
}

fn event_type_from_row(row: EventTypeRow) -> EventType {
    EventType {
        name: row.name,
        description: row.description,
        builtin: row.builtin,
        schema: row.data_schema,
    }
}
