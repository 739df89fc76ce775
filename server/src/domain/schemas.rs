//! Data schemas of event types: a JSON Schema (draft 2020-12) an admin may set on an
//! event type, checked when it is set, compiled once per replica, and applied to the
//! data of every event of that type (Emit, EmitBatch, EmitStream, handler tests).
//!
//! Validation is done by the `jsonschema` crate, never by hand. Schemas are
//! self-contained: every `$ref` must resolve inside the schema, and the retriever
//! refuses anything else, so nothing is ever fetched over the network or read from
//! disk. `pattern` uses the linear-time `regex` engine (a schema cannot make the hot
//! path backtrack), and `format` is asserted.
//!
//! # Cache and invalidation
//! Compiling a schema costs far more than validating with it, and Emit is the hot path,
//! so each replica keeps one compiled validator per event type in memory, keyed by the
//! event name and tagged with the type's `schema_version` (a counter in `event_types`
//! bumped by every schema change). The cache is filled on first use and never expires
//! by time. It is invalidated by the version, checked where Emit already goes to the
//! database, at no extra round trip for AFTER events:
//! - every stored event carries the version it was validated against, and the
//!   statement that stores AFTER events (`queries::events::insert_batch`) compares it
//!   with the table's; when any differs, nothing is stored and the statement says
//!   which events are stale. Ingest then reloads those schemas ([`EventSchemas::reload`]),
//!   validates those events again and runs the statement again;
//! - the BEFORE chain reads the version in the transaction that loads its handlers and
//!   does the same when it differs;
//! - data the cached schema refuses is refused only after the schema is read again
//!   ([`EventSchemas::check`]): the cache may hold an older, stricter schema. Refusals
//!   are not the hot path, and this keeps a relaxed schema from being enforced late.
//!
//! So a schema changed through any replica applies to the next event emitted on every
//! replica, exactly like a handler change, without LISTEN/NOTIFY timing: the check runs
//! in the same snapshot as the insert. The replica that made the change also puts the
//! new validator in its cache at once ([`EventSchemas::remember`]). Event types are
//! never deleted, so entries never need removing; the cache holds one entry per event
//! type in use.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, RwLock};

use serde_json::Value;

use super::{event_data, DomainError};
use crate::db::queries::event_types;
use crate::db::Db;

/// Largest schema text, in bytes.
pub const MAX_SCHEMA_BYTES: usize = 256 * 1024;
/// Most problems listed in a violation message (the rest are counted).
pub const MAX_LISTED_PROBLEMS: usize = 10;
/// Longest text of one listed problem (the crate's messages quote the offending value).
const MAX_PROBLEM_CHARS: usize = 300;
/// The meta-schema URI of draft 2020-12, the only draft accepted in `$schema`.
const DRAFT_2020_12: &str = "https://json-schema.org/draft/2020-12/schema";

/// A compiled schema, ready to validate data.
#[derive(Clone)]
pub struct CompiledSchema {
    validator: Arc<jsonschema::Validator>,
}

impl std::fmt::Debug for CompiledSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledSchema").finish_non_exhaustive()
    }
}

impl CompiledSchema {
    /// Checks a schema text as an admin sets it and compiles it. The error names what
    /// is wrong (`schema_json: ...`): not a JSON object, over [`MAX_SCHEMA_BYTES`], a
    /// `$schema` of another draft, a violation of the 2020-12 meta-schema (with its
    /// location in the schema), a `$ref` that does not resolve inside the schema, a
    /// `pattern` the regex engine refuses.
    pub fn compile(text: &str) -> Result<(Value, CompiledSchema), DomainError> {
        let invalid = |message: String| DomainError::invalid("schema_json", message);
        // The rules of event data: the schema is stored and audited as JSON too.
        event_data::check_object(text, MAX_SCHEMA_BYTES).map_err(|e| {
            invalid(match e {
                event_data::DataError::NotAnObject => {
                    "must be a JSON object (a JSON Schema such as {\"type\": \"object\"})"
                        .to_owned()
                }
                other => other.to_string(),
            })
        })?;
        let schema: Value = serde_json::from_str(text)
            .ok()
            .filter(Value::is_object)
            .ok_or_else(|| invalid("must be a JSON object".to_owned()))?;
        if let Some(declared) = schema.get("$schema") {
            let declared = declared.as_str().unwrap_or_default();
            if declared.trim_end_matches('#') != DRAFT_2020_12 {
                return Err(invalid(format!(
                    "$schema: only draft 2020-12 ({DRAFT_2020_12}) is supported, not {declared:?}"
                )));
            }
        }
        if let Err(error) = jsonschema::draft202012::meta::validate(&schema) {
            return Err(invalid(format!(
                "not a valid draft 2020-12 schema: {}: {}",
                pointer(&error.instance_path().to_string()),
                capped(&error.to_string())
            )));
        }
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .should_validate_formats(true)
            .with_retriever(NoRemoteRefs)
            .with_pattern_options(jsonschema::PatternOptions::regex())
            .build(&schema)
            .map_err(|error| invalid(capped(&error.to_string())))?;
        Ok((
            schema,
            CompiledSchema {
                validator: Arc::new(validator),
            },
        ))
    }

    /// Checks event data (acceptable event data, see `event_data`) against the schema.
    /// The error lists the problems, each as `<JSON pointer in the data>: <what>`,
    /// `(root)` for the object itself, at most [`MAX_LISTED_PROBLEMS`] of them.
    pub fn check(&self, data: &str) -> Result<(), String> {
        let value: Value = serde_json::from_str(data)
            .map_err(|e| format!("not readable as JSON for schema validation: {e}"))?;
        if self.validator.is_valid(&value) {
            return Ok(());
        }
        let problems: Vec<_> = self.validator.iter_errors(&value).collect();
        let mut message = String::new();
        for (n, problem) in problems.iter().take(MAX_LISTED_PROBLEMS).enumerate() {
            if n > 0 {
                message.push_str("; ");
            }
            let _infallible = write!(
                message,
                "{}: {}",
                pointer(&problem.instance_path().to_string()),
                capped(&problem.to_string())
            );
        }
        if problems.len() > MAX_LISTED_PROBLEMS {
            let _infallible = write!(
                message,
                "; and {} more",
                problems.len() - MAX_LISTED_PROBLEMS
            );
        }
        if message.is_empty() {
            // The fast check and the detailed one disagree: report it rather than pass.
            message = "(root): does not satisfy the event type's schema".to_owned();
        }
        Err(message)
    }
}

/// A JSON pointer as shown in messages: the empty pointer (the whole document) reads
/// `(root)`.
fn pointer(path: &str) -> &str {
    if path.is_empty() {
        "(root)"
    } else {
        path
    }
}

/// At most [`MAX_PROBLEM_CHARS`] characters of a message.
fn capped(text: &str) -> String {
    if text.chars().count() <= MAX_PROBLEM_CHARS {
        return text.to_owned();
    }
    let mut short: String = text.chars().take(MAX_PROBLEM_CHARS).collect();
    short.push('…');
    short
}

/// The retriever of every schema: a `$ref` that does not resolve inside the schema is
/// refused, so compiling never reads a file or the network.
struct NoRemoteRefs;

impl jsonschema::Retrieve for NoRemoteRefs {
    fn retrieve(
        &self,
        uri: &jsonschema::Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        Err(format!(
            "remote $ref {:?} is not allowed: a schema must be self-contained \
             (put shared definitions under $defs and use \"$ref\": \"#/$defs/...\")",
            uri.as_str()
        )
        .into())
    }
}

/// An event type's schema as this replica knows it.
#[derive(Debug, Clone)]
pub struct EventSchema {
    /// `event_types.schema_version` of what is compiled here.
    pub version: i64,
    /// The compiled schema; `None` when the event type has none.
    pub compiled: Option<CompiledSchema>,
}

impl EventSchema {
    /// Checks event data: always `Ok` without a schema.
    pub fn check(&self, data: &str) -> Result<(), String> {
        match &self.compiled {
            Some(schema) => schema.check(data),
            None => Ok(()),
        }
    }
}

/// What [`EventSchemas::check`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    /// The catalogue has no such event type.
    UnknownEvent,
    /// The data satisfies the schema of this version (or the type has none).
    Fits {
        /// The `schema_version` checked against.
        version: i64,
    },
    /// The data does not satisfy the event type's current schema: the problems.
    Violates(String),
}

/// The per-replica cache of compiled schemas (see the module documentation); cheap to
/// clone, clones share the cache.
#[derive(Clone)]
pub struct EventSchemas {
    db: Db,
    cache: Arc<RwLock<HashMap<String, Arc<EventSchema>>>>,
}

impl EventSchemas {
    /// An empty cache over `db`.
    pub fn new(db: Db) -> EventSchemas {
        EventSchemas {
            db,
            cache: Arc::default(),
        }
    }

    /// Checks `data` (acceptable event data) against the schema of `event`. Data that
    /// fits the cached schema is accepted with that version (the statement storing it
    /// checks the version); data it refuses is checked again against the schema read
    /// from the database, so a refusal is never the work of an outdated cache.
    pub async fn check(&self, event: &str, data: &str) -> Result<Checked, DomainError> {
        let Some(cached) = self.get(event).await? else {
            return Ok(Checked::UnknownEvent);
        };
        if cached.check(data).is_ok() {
            return Ok(Checked::Fits {
                version: cached.version,
            });
        }
        let Some(current) = self.reload(event).await? else {
            return Ok(Checked::UnknownEvent);
        };
        Ok(match current.check(data) {
            Ok(()) => Checked::Fits {
                version: current.version,
            },
            Err(problems) => Checked::Violates(problems),
        })
    }

    /// The schema of `event` (loaded and compiled on first use); `None` when the
    /// catalogue has no such event type.
    pub async fn get(&self, event: &str) -> Result<Option<Arc<EventSchema>>, DomainError> {
        if let Some(known) = self.cached(event) {
            return Ok(Some(known));
        }
        self.reload(event).await
    }

    /// Reads the schema of `event` from the database again: its version changed.
    /// `None` when the catalogue has no such event type.
    pub async fn reload(&self, event: &str) -> Result<Option<Arc<EventSchema>>, DomainError> {
        let name = event.to_owned();
        let Some(row) = self
            .db
            .run(move |conn| event_types::schema_of(conn, &name).map_err(DomainError::from))
            .await?
        else {
            return Ok(None);
        };
        if let Some(known) = self
            .cached(event)
            .filter(|k| k.version == row.schema_version)
        {
            return Ok(Some(known));
        }
        let compiled = match row.data_schema.as_deref() {
            None => None,
            Some(text) => Some(
                CompiledSchema::compile(text)
                    .map(|(_, compiled)| compiled)
                    .map_err(|error| {
                        // Checked when set: only a change of the validator's rules gets here.
                        tracing::error!(event, %error, "a stored event schema no longer compiles");
                        DomainError::FailedPrecondition(format!(
                            "the schema of event type {event:?} no longer compiles ({error}); \
                             set a valid one with UpdateEventType"
                        ))
                    })?,
            ),
        };
        Ok(Some(self.remember(event, row.schema_version, compiled)))
    }

    /// Puts a schema compiled elsewhere (by the change that set it) in the cache,
    /// unless a newer version is there already; returns the entry now cached.
    pub fn remember(
        &self,
        event: &str,
        version: i64,
        compiled: Option<CompiledSchema>,
    ) -> Arc<EventSchema> {
        let fresh = Arc::new(EventSchema { version, compiled });
        let Ok(mut cache) = self.cache.write() else {
            // A poisoned lock only loses the cache; the entry is still valid to use.
            return fresh;
        };
        match cache.get(event) {
            Some(current) if current.version > version => current.clone(),
            _ => {
                cache.insert(event.to_owned(), fresh.clone());
                fresh
            }
        }
    }

    fn cached(&self, event: &str) -> Option<Arc<EventSchema>> {
        self.cache.read().ok()?.get(event).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compiled(schema: &str) -> CompiledSchema {
        CompiledSchema::compile(schema).unwrap().1
    }

    fn refusal(schema: &str) -> String {
        CompiledSchema::compile(schema).unwrap_err().to_string()
    }

    #[test]
    fn violations_name_the_json_pointer_of_each_problem() {
        let schema = compiled(
            r#"{"type": "object", "required": ["email"],
                "properties": {"email": {"type": "string", "format": "email"},
                               "age": {"type": "integer", "minimum": 0}}}"#,
        );
        assert_eq!(
            schema.check(r#"{"email": "a@example.com", "age": 3}"#),
            Ok(())
        );
        assert_eq!(
            schema.check(r#"{"email": "x"}"#).unwrap_err(),
            r#"/email: "x" is not a "email""#
        );
        let both = schema.check(r#"{"age": -1}"#).unwrap_err();
        assert!(
            both.contains("(root): \"email\" is a required property"),
            "{both}"
        );
        assert!(
            both.contains("/age: -1 is less than the minimum of 0"),
            "{both}"
        );
    }

    #[test]
    fn long_lists_of_problems_are_capped() {
        let schema = compiled(r#"{"additionalProperties": {"type": "string"}}"#);
        let data = format!(
            "{{{}}}",
            (0..15)
                .map(|i| format!("\"k{i:02}\": {i}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let message = schema.check(&data).unwrap_err();
        assert_eq!(
            message.matches("is not of type").count(),
            MAX_LISTED_PROBLEMS
        );
        assert!(message.ends_with("; and 5 more"), "{message}");
    }

    #[test]
    fn numbers_are_compared_exactly() {
        let schema = compiled(r#"{"properties": {"id": {"maximum": 9007199254740992}}}"#);
        assert_eq!(schema.check(r#"{"id": 9007199254740992}"#), Ok(()));
        assert!(schema.check(r#"{"id": 9007199254740993}"#).is_err());
    }

    #[test]
    fn invalid_schemas_are_refused_with_what_is_wrong() {
        assert!(refusal(r#"{"type": "strnig"}"#)
            .starts_with("schema_json: not a valid draft 2020-12 schema: /type:"));
        assert!(refusal("[1]").contains("must be a JSON object"));
        assert!(refusal("{").starts_with("schema_json: not valid JSON"));
        assert!(
            refusal(r#"{"$schema": "http://json-schema.org/draft-07/schema#"}"#)
                .contains("only draft 2020-12")
        );
        assert!(CompiledSchema::compile(
            r#"{"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object"}"#
        )
        .is_ok());
        assert!(
            refusal(r#"{"properties": {"a": {"pattern": "(?<=a)b"}}}"#).starts_with("schema_json:")
        );
    }

    #[test]
    fn remote_refs_are_refused_and_local_ones_resolve() {
        for remote in [
            r#"{"$ref": "https://example.com/schemas/client.json"}"#,
            r#"{"$ref": "file:///etc/passwd"}"#,
            r#"{"$id": "https://example.com/root.json", "properties": {"a": {"$ref": "other.json"}}}"#,
        ] {
            let message = refusal(remote);
            assert!(message.contains("is not allowed"), "{remote}: {message}");
        }
        let local = compiled(
            r##"{"$defs": {"id": {"type": "integer"}}, "properties": {"id": {"$ref": "#/$defs/id"}}}"##,
        );
        assert_eq!(
            local.check(r#"{"id": "x"}"#).unwrap_err(),
            r#"/id: "x" is not of type "integer""#
        );
    }
}
