//! Handlers and the event catalogue: validation of handler definitions, their
//! lifecycle (create, patch, status, delete, secret rotation) and the catalogue.
//!
//! Nothing is cached: dispatch reads the handlers table on every event, so a change
//! made here takes effect for the next event on every replica.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use base64::Engine;
use chrono::{DateTime, Utc};
use diesel::{Connection, OptionalExtension};
use rand::RngCore;

use super::{parse_stored, DomainError, FailurePolicy, HandlerKind, HandlerStatus, Phase};
use crate::db::models::{EventTypeRow, HandlerChangeset, HandlerRow, NewHandlerRow};
use crate::db::queries::{deliveries, event_types, handlers};
use crate::db::Db;

/// Longest handler name, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// Largest priority (lower runs first).
pub const MAX_PRIORITY: i32 = 1_000_000;
/// Longest handler timeout.
pub const MAX_TIMEOUT_MS: u32 = 300_000;
/// Timeout used when none is given.
pub const DEFAULT_TIMEOUT_MS: u32 = 10_000;
/// Default and largest page of List.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
const MAX_PAGE_SIZE: u32 = 1000;

/// A registered handler.
#[derive(Debug, Clone)]
pub struct Handler {
    /// Id.
    pub id: i64,
    /// Title.
    pub name: String,
    /// Event name.
    pub event: String,
    /// Phase.
    pub phase: Phase,
    /// Status.
    pub status: HandlerStatus,
    /// Run order, lower first.
    pub priority: i32,
    /// Time limit of one run.
    pub timeout_ms: u32,
    /// What runs.
    pub target: Target,
    /// BEFORE failure policy.
    pub failure_policy: FailurePolicy,
    /// Payload filter (JSON containment), if any.
    pub filter: Option<serde_json::Value>,
    /// Why the service disabled it, if it did.
    pub disabled_reason: Option<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// What a handler runs.
#[derive(Debug, Clone)]
pub enum Target {
    /// POST to `url`.
    Http {
        /// http(s) URL.
        url: String,
        /// Extra request headers.
        headers: BTreeMap<String, String>,
        /// `whsec_` signing secret.
        secret: String,
    },
    /// A program in the scripts directory, by relative path.
    Script {
        /// Path relative to the scripts directory.
        path: String,
    },
}

impl Target {
    /// The kind of this target.
    pub fn kind(&self) -> HandlerKind {
        match self {
            Target::Http { .. } => HandlerKind::Http,
            Target::Script { .. } => HandlerKind::Script,
        }
    }
}

/// A target as given by a caller (no secret: the server makes it).
#[derive(Debug, Clone)]
pub enum TargetSpec {
    /// POST to `url` with `headers`.
    Http {
        /// URL.
        url: String,
        /// Extra headers.
        headers: BTreeMap<String, String>,
    },
    /// A script by relative path.
    Script {
        /// Relative path.
        path: String,
    },
}

/// A complete handler definition as given on Create.
#[derive(Debug, Clone)]
pub struct HandlerSpec {
    /// Title.
    pub name: String,
    /// Event name.
    pub event: String,
    /// Phase.
    pub phase: Phase,
    /// Initial status.
    pub status: HandlerStatus,
    /// Run order.
    pub priority: i32,
    /// Timeout; 0 = default.
    pub timeout_ms: u32,
    /// What runs.
    pub target: TargetSpec,
    /// BEFORE failure policy.
    pub failure_policy: FailurePolicy,
    /// Payload filter.
    pub filter: Option<serde_json::Value>,
}

/// The fields an Update changes; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct HandlerPatch {
    /// New title.
    pub name: Option<String>,
    /// New event.
    pub event: Option<String>,
    /// New phase.
    pub phase: Option<Phase>,
    /// New status.
    pub status: Option<HandlerStatus>,
    /// New priority.
    pub priority: Option<i32>,
    /// New timeout.
    pub timeout_ms: Option<u32>,
    /// New target (the secret is kept when both are HTTP).
    pub target: Option<TargetSpec>,
    /// New failure policy.
    pub failure_policy: Option<FailurePolicy>,
    /// New filter (`Some(None)` removes it).
    pub filter: Option<Option<serde_json::Value>>,
}

/// List filters.
#[derive(Debug, Clone, Default)]
pub struct HandlerQuery {
    /// Event name.
    pub event: Option<String>,
    /// Phase.
    pub phase: Option<Phase>,
    /// Kind.
    pub kind: Option<HandlerKind>,
    /// Status; `None` = enabled and disabled.
    pub status: Option<HandlerStatus>,
    /// Page size; 0 = default.
    pub page_size: u32,
    /// Token of the page to read.
    pub page_token: String,
}

/// An event of the catalogue.
#[derive(Debug, Clone)]
pub struct EventType {
    /// `group.action`.
    pub name: String,
    /// Meaning.
    pub description: String,
    /// Seeded with the service.
    pub builtin: bool,
}

/// Handler management over the database.
#[derive(Clone)]
pub struct HandlerRegistry {
    db: Db,
    scripts_dir: PathBuf,
}

impl HandlerRegistry {
    /// A registry storing in `db`, with script paths resolved under `scripts_dir`.
    pub fn new(db: Db, scripts_dir: PathBuf) -> HandlerRegistry {
        HandlerRegistry { db, scripts_dir }
    }

    /// Validates and stores a new handler; HTTP handlers get a fresh secret.
    pub async fn create(&self, spec: HandlerSpec) -> Result<Handler, DomainError> {
        let mut spec = spec;
        validate_spec(&mut spec, &self.scripts_dir)?;
        let (kind, url, headers, script_path) = target_columns(&spec.target);
        let row = NewHandlerRow {
            name: spec.name,
            event: spec.event,
            phase: spec.phase.as_str().into(),
            kind: kind.as_str().into(),
            status: spec.status.as_str().into(),
            priority: spec.priority,
            timeout_ms: spec.timeout_ms as i32,
            secret: url.as_ref().map(|_| new_secret()),
            url,
            headers,
            script_path,
            failure_policy: spec.failure_policy.as_str().into(),
            filter: spec.filter,
        };
        self.db
            .run(move |conn| {
                conn.transaction(|conn| {
                    ensure_event_exists(conn, &row.event)?;
                    Ok(handlers::insert(conn, &row)?)
                })
            })
            .await
            .and_then(handler_from_row)
    }

    /// One handler.
    pub async fn get(&self, id: i64) -> Result<Handler, DomainError> {
        self.db
            .run(move |conn| {
                handlers::find(conn, id)
                    .optional()
                    .map_err(DomainError::from)
            })
            .await?
            .ok_or_else(|| not_found(id))
            .and_then(handler_from_row)
    }

    /// A page of handlers and the token of the next page (empty on the last).
    pub async fn list(&self, query: HandlerQuery) -> Result<(Vec<Handler>, String), DomainError> {
        let page_size = match query.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if n > MAX_PAGE_SIZE => {
                return Err(DomainError::invalid(
                    "page_size",
                    format!("must be at most {MAX_PAGE_SIZE}"),
                ))
            }
            n => n,
        };
        let after = if query.page_token.is_empty() {
            None
        } else {
            Some(
                decode_page_token(&query.page_token)
                    .ok_or_else(|| DomainError::invalid("page_token", "malformed page token"))?,
            )
        };
        let rows = self
            .db
            .run(move |conn| {
                let statuses: Vec<&str> = match query.status {
                    Some(s) => vec![s.as_str()],
                    None => vec![
                        HandlerStatus::Enabled.as_str(),
                        HandlerStatus::Disabled.as_str(),
                    ],
                };
                let filter = handlers::ListFilter {
                    event: query.event.as_deref(),
                    phase: query.phase.map(Phase::as_str),
                    kind: query.kind.map(HandlerKind::as_str),
                    statuses: &statuses,
                };
                handlers::list_page(conn, &filter, after.as_ref(), i64::from(page_size) + 1)
                    .map_err(DomainError::from)
            })
            .await?;
        let mut handlers = rows
            .into_iter()
            .map(handler_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let next = if handlers.len() > page_size as usize {
            handlers.truncate(page_size as usize);
            handlers.last().map(encode_page_token).unwrap_or_default()
        } else {
            String::new()
        };
        Ok((handlers, next))
    }

    /// Applies a patch: the current definition is read under a row lock, patched,
    /// validated whole and written back in one transaction. The flag is true when the
    /// update gave the handler its first secret (script turned HTTP), which the caller
    /// must then show in full once.
    pub async fn update(
        &self,
        id: i64,
        patch: HandlerPatch,
    ) -> Result<(Handler, bool), DomainError> {
        let scripts_dir = self.scripts_dir.clone();
        self.db
            .run(move |conn| {
                conn.transaction(|conn| {
                    let row = handlers::find_for_update(conn, id)
                        .optional()?
                        .ok_or_else(|| not_found(id))?;
                    let current = handler_from_row(row)?;
                    let (mut spec, old_secret) = spec_of(&current);
                    let reenabled = patch.status == Some(HandlerStatus::Enabled);
                    apply_patch(&mut spec, patch);
                    validate_spec(&mut spec, &scripts_dir)?;
                    ensure_event_exists(conn, &spec.event)?;
                    let (kind, url, headers, script_path) = target_columns(&spec.target);
                    let secret_created = url.is_some() && old_secret.is_none();
                    let secret = url.as_ref().map(|_| old_secret.unwrap_or_else(new_secret));
                    let changes = HandlerChangeset {
                        name: spec.name,
                        event: spec.event,
                        phase: spec.phase.as_str().into(),
                        kind: kind.as_str().into(),
                        status: spec.status.as_str().into(),
                        priority: spec.priority,
                        timeout_ms: spec.timeout_ms as i32,
                        url,
                        headers,
                        secret,
                        script_path,
                        failure_policy: spec.failure_policy.as_str().into(),
                        filter: spec.filter,
                        disabled_reason: if reenabled {
                            None
                        } else {
                            current.disabled_reason
                        },
                        updated_at: Utc::now(),
                    };
                    Ok((handlers::update(conn, id, &changes)?, secret_created))
                })
            })
            .await
            .and_then(|(row, secret_created)| Ok((handler_from_row(row)?, secret_created)))
    }

    /// Sets the status; enabling clears an automatic-disable reason.
    pub async fn set_status(&self, id: i64, status: HandlerStatus) -> Result<Handler, DomainError> {
        self.set_status_with_reason(id, status, None).await
    }

    /// Sets the status and records why (used when the service disables a handler).
    pub async fn set_status_with_reason(
        &self,
        id: i64,
        status: HandlerStatus,
        reason: Option<String>,
    ) -> Result<Handler, DomainError> {
        self.db
            .run(move |conn| {
                handlers::set_status(conn, id, status.as_str(), reason.as_deref())
                    .optional()
                    .map_err(DomainError::from)
            })
            .await?
            .ok_or_else(|| not_found(id))
            .and_then(handler_from_row)
    }

    /// Deletes a handler (its pending deliveries go with it; its log rows stay). Events
    /// whose next delivery in priority order was this handler's move on to the next one.
    pub async fn delete(&self, id: i64) -> Result<(), DomainError> {
        let deleted = self
            .db
            .run(move |conn| {
                conn.transaction(|conn| {
                    let events = deliveries::event_ids_of_handler(conn, id)?;
                    let deleted = handlers::delete(conn, id)?;
                    if !events.is_empty() {
                        deliveries::promote_orphaned_waiting(conn, &events)?;
                    }
                    Ok::<_, DomainError>(deleted)
                })
            })
            .await?;
        if deleted == 0 {
            return Err(not_found(id));
        }
        Ok(())
    }

    /// Gives an HTTP handler a new secret.
    pub async fn rotate_secret(&self, id: i64) -> Result<Handler, DomainError> {
        self.db
            .run(move |conn| {
                conn.transaction(|conn| {
                    let row = handlers::find_for_update(conn, id)
                        .optional()?
                        .ok_or_else(|| not_found(id))?;
                    if row.kind != HandlerKind::Http.as_str() {
                        return Err(DomainError::FailedPrecondition(format!(
                            "handler {id} is a script handler: only HTTP handlers have a secret"
                        )));
                    }
                    Ok(handlers::set_secret(conn, id, &new_secret())?)
                })
            })
            .await
            .and_then(handler_from_row)
    }

    /// The event catalogue.
    pub async fn list_event_types(&self) -> Result<Vec<EventType>, DomainError> {
        let rows = self
            .db
            .run(|conn| event_types::list(conn).map_err(DomainError::from))
            .await?;
        Ok(rows.into_iter().map(event_type_from_row).collect())
    }

    /// Adds an event type.
    pub async fn create_event_type(
        &self,
        name: String,
        description: String,
    ) -> Result<EventType, DomainError> {
        validate_event_type_name(&name)?;
        if description.chars().count() > 1000 {
            return Err(DomainError::invalid(
                "description",
                "must be at most 1000 characters",
            ));
        }
        let row = EventTypeRow {
            name,
            description,
            builtin: false,
        };
        self.db
            .run(move |conn| match event_types::insert(conn, &row) {
                Ok(row) => Ok(row),
                Err(diesel::result::Error::DatabaseError(
                    diesel::result::DatabaseErrorKind::UniqueViolation,
                    _,
                )) => Err(DomainError::AlreadyExists(format!(
                    "event type {:?} already exists",
                    row.name
                ))),
                Err(e) => Err(e.into()),
            })
            .await
            .map(event_type_from_row)
    }
}

/// Page tokens are the List position of the last handler returned, base64 so that
/// clients treat them as opaque.
fn encode_page_token(last: &Handler) -> String {
    let text = format!(
        "{}\n{}\n{}\n{}",
        last.event, last.phase, last.priority, last.id
    );
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

fn decode_page_token(token: &str) -> Option<handlers::ListPosition> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let mut parts = text.split('\n');
    let position = handlers::ListPosition {
        event: parts.next()?.to_owned(),
        phase: parts.next()?.to_owned(),
        priority: parts.next()?.parse().ok()?,
        id: parts.next()?.parse().ok()?,
    };
    parts.next().is_none().then_some(position)
}

fn not_found(id: i64) -> DomainError {
    DomainError::NotFound(format!("handler {id} not found"))
}

fn ensure_event_exists(conn: &mut diesel::PgConnection, event: &str) -> Result<(), DomainError> {
    if event_types::exists(conn, event)? {
        Ok(())
    } else {
        Err(DomainError::invalid(
            "event",
            format!("unknown event {event:?} (see ListEventTypes)"),
        ))
    }
}

fn event_type_from_row(row: EventTypeRow) -> EventType {
    EventType {
        name: row.name,
        description: row.description,
        builtin: row.builtin,
    }
}

/// `group.action`: lowercase letters, digits, `_`; one dot; at most 100 characters.
pub fn validate_event_type_name(name: &str) -> Result<(), DomainError> {
    let valid_part = |p: &str| {
        !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    };
    let ok = name.len() <= 100
        && matches!(name.split_once('.'), Some((g, a)) if valid_part(g) && valid_part(a));
    if ok {
        Ok(())
    } else {
        Err(DomainError::invalid(
            "name",
            format!("{name:?} is not a valid event name: expected group.action (lowercase letters, digits, _), at most 100 characters"),
        ))
    }
}

fn target_columns(
    target: &TargetSpec,
) -> (
    HandlerKind,
    Option<String>,
    serde_json::Value,
    Option<String>,
) {
    match target {
        TargetSpec::Http { url, headers } => (
            HandlerKind::Http,
            Some(url.clone()),
            serde_json::to_value(headers).unwrap_or_default(),
            None,
        ),
        TargetSpec::Script { path } => (
            HandlerKind::Script,
            None,
            serde_json::json!({}),
            Some(path.clone()),
        ),
    }
}

fn spec_of(handler: &Handler) -> (HandlerSpec, Option<String>) {
    let (target, secret) = match &handler.target {
        Target::Http {
            url,
            headers,
            secret,
        } => (
            TargetSpec::Http {
                url: url.clone(),
                headers: headers.clone(),
            },
            Some(secret.clone()),
        ),
        Target::Script { path } => (TargetSpec::Script { path: path.clone() }, None),
    };
    let spec = HandlerSpec {
        name: handler.name.clone(),
        event: handler.event.clone(),
        phase: handler.phase,
        status: handler.status,
        priority: handler.priority,
        timeout_ms: handler.timeout_ms,
        target,
        failure_policy: handler.failure_policy,
        filter: handler.filter.clone(),
    };
    (spec, secret)
}

fn apply_patch(spec: &mut HandlerSpec, patch: HandlerPatch) {
    let HandlerPatch {
        name,
        event,
        phase,
        status,
        priority,
        timeout_ms,
        target,
        failure_policy,
        filter,
    } = patch;
    if let Some(v) = name {
        spec.name = v;
    }
    if let Some(v) = event {
        spec.event = v;
    }
    if let Some(v) = phase {
        spec.phase = v;
    }
    if let Some(v) = status {
        spec.status = v;
    }
    if let Some(v) = priority {
        spec.priority = v;
    }
    if let Some(v) = timeout_ms {
        spec.timeout_ms = v;
    }
    if let Some(v) = target {
        spec.target = v;
    }
    if let Some(v) = failure_policy {
        spec.failure_policy = v;
    }
    if let Some(v) = filter {
        spec.filter = v;
    }
}

/// Checks every field of a definition, normalising the name (trimmed) and the default
/// timeout. Messages start with the offending field's name.
fn validate_spec(spec: &mut HandlerSpec, scripts_dir: &Path) -> Result<(), DomainError> {
    spec.name = spec.name.trim().to_owned();
    if spec.name.is_empty() {
        return Err(DomainError::invalid("name", "must not be empty"));
    }
    if spec.name.chars().count() > MAX_NAME_CHARS {
        return Err(DomainError::invalid(
            "name",
            format!("must be at most {MAX_NAME_CHARS} characters"),
        ));
    }
    if spec.event.is_empty() {
        return Err(DomainError::invalid("event", "must not be empty"));
    }
    if !(0..=MAX_PRIORITY).contains(&spec.priority) {
        return Err(DomainError::invalid(
            "priority",
            format!(
                "must be between 0 and {MAX_PRIORITY}, got {}",
                spec.priority
            ),
        ));
    }
    if spec.timeout_ms == 0 {
        spec.timeout_ms = DEFAULT_TIMEOUT_MS;
    }
    if spec.timeout_ms > MAX_TIMEOUT_MS {
        return Err(DomainError::invalid(
            "timeout_ms",
            format!(
                "must be between 1 and {MAX_TIMEOUT_MS}, got {}",
                spec.timeout_ms
            ),
        ));
    }
    match &spec.target {
        TargetSpec::Http { url, headers } => {
            validate_url(url)?;
            validate_headers(headers)?;
        }
        TargetSpec::Script { path } => {
            resolve_script(scripts_dir, path)
                .map_err(|e| DomainError::invalid("script.path", e))?;
        }
    }
    if let Some(filter) = &spec.filter {
        if !filter.is_object() {
            return Err(DomainError::invalid("filter_json", "must be a JSON object"));
        }
    }
    Ok(())
}

/// Accepts absolute http and https URLs with a host.
pub fn validate_url(url: &str) -> Result<(), DomainError> {
    let uri: http::Uri = url.parse().map_err(|e| {
        DomainError::invalid("http.url", format!("{url:?} is not a valid URL: {e}"))
    })?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        Some(other) => {
            return Err(DomainError::invalid(
                "http.url",
                format!("scheme {other:?} is not allowed: use http or https"),
            ))
        }
        None => {
            return Err(DomainError::invalid(
                "http.url",
                format!("{url:?} is not an absolute http(s) URL"),
            ))
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(DomainError::invalid(
            "http.url",
            format!("{url:?} has no host"),
        ));
    }
    Ok(())
}

fn validate_headers(headers: &BTreeMap<String, String>) -> Result<(), DomainError> {
    for (name, value) in headers {
        let lower = name.to_ascii_lowercase();
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(DomainError::invalid(
                "http.headers",
                format!("{name:?} is not a valid header name"),
            ));
        }
        if lower.starts_with("webhook-")
            || lower.starts_with("x-provisioning-")
            || lower == "content-type"
            || lower == "host"
            || lower == "content-length"
        {
            return Err(DomainError::invalid(
                "http.headers",
                format!("{name:?} is set by the service and cannot be overridden"),
            ));
        }
        if http::HeaderValue::from_str(value).is_err() {
            return Err(DomainError::invalid(
                "http.headers",
                format!("value of {name:?} is not a valid header value"),
            ));
        }
    }
    Ok(())
}

/// Resolves a script path relative to `scripts_dir` and checks that it names an
/// executable regular file inside it. Symlinks are followed and must stay inside.
/// Called on Create/Update and again before every run (the file may have changed).
pub fn resolve_script(scripts_dir: &Path, path: &str) -> Result<PathBuf, String> {
    if path.is_empty() {
        return Err("must not be empty".into());
    }
    let relative = Path::new(path);
    if relative.is_absolute() {
        return Err(format!(
            "{path:?} is absolute: give a path relative to the scripts directory"
        ));
    }
    if relative
        .components()
        .any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(format!("{path:?} must not contain '..' or '.' components"));
    }
    let root = scripts_dir.canonicalize().map_err(|e| {
        format!(
            "scripts directory {} is not usable: {e}",
            scripts_dir.display()
        )
    })?;
    let full = root
        .join(relative)
        .canonicalize()
        .map_err(|e| format!("{path:?} not found in the scripts directory: {e}"))?;
    if !full.starts_with(&root) {
        return Err(format!("{path:?} leads outside the scripts directory"));
    }
    let meta = std::fs::metadata(&full).map_err(|e| format!("{path:?}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{path:?} is not a regular file"));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(format!("{path:?} is not executable"));
    }
    Ok(full)
}

/// A new Standard Webhooks secret: `whsec_` and 32 random bytes in base64.
fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// Converts a stored row; fails only on a corrupt row.
pub(crate) fn handler_from_row(row: HandlerRow) -> Result<Handler, DomainError> {
    let target = match (row.kind.as_str(), row.url, row.script_path) {
        ("http", Some(url), _) => Target::Http {
            url,
            headers: serde_json::from_value(row.headers).unwrap_or_default(),
            secret: row.secret.unwrap_or_default(),
        },
        ("script", _, Some(path)) => Target::Script { path },
        (kind, _, _) => {
            return Err(DomainError::Internal(
                format!("handler {} has an inconsistent target ({kind})", row.id).into(),
            ))
        }
    };
    Ok(Handler {
        id: row.id,
        name: row.name,
        event: row.event,
        phase: parse_stored(Phase::parse, &row.phase, "handlers.phase")?,
        status: parse_stored(HandlerStatus::parse, &row.status, "handlers.status")?,
        priority: row.priority,
        timeout_ms: u32::try_from(row.timeout_ms).unwrap_or(DEFAULT_TIMEOUT_MS),
        target,
        failure_policy: parse_stored(
            FailurePolicy::parse,
            &row.failure_policy,
            "handlers.failure_policy",
        )?,
        filter: row.filter,
        disabled_reason: row.disabled_reason,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_need_http_or_https_and_a_host() {
        assert!(validate_url("http://127.0.0.1:5000/api").is_ok());
        assert!(validate_url("https://crm.example/hook").is_ok());
        for bad in [
            "ftp://x/y",
            "crm.net/client-add",
            "http://",
            "not a url",
            "/relative",
        ] {
            let err = validate_url(bad).unwrap_err().to_string();
            assert!(err.starts_with("http.url:"), "{bad}: {err}");
        }
    }

    #[test]
    fn event_type_names_are_group_dot_action() {
        assert!(validate_event_type_name("clients.create").is_ok());
        assert!(validate_event_type_name("email_rates_manager.import").is_ok());
        for bad in ["clients", "Clients.create", "a.b.c", ".x", "x.", "a-b.c"] {
            assert!(validate_event_type_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn script_paths_stay_inside_the_directory() {
        let dir = std::env::temp_dir().join(format!("scripts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("ok.sh");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let plain = dir.join("plain.txt");
        std::fs::write(&plain, "x").unwrap();
        let link = dir.join("escape");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("/bin/sh", &link).unwrap();

        assert!(resolve_script(&dir, "ok.sh").is_ok());
        assert!(resolve_script(&dir, "/bin/sh")
            .unwrap_err()
            .contains("absolute"));
        assert!(resolve_script(&dir, "../x").unwrap_err().contains(".."));
        assert!(resolve_script(&dir, "plain.txt")
            .unwrap_err()
            .contains("not executable"));
        assert!(resolve_script(&dir, "escape")
            .unwrap_err()
            .contains("outside"));
        assert!(resolve_script(&dir, "missing.sh")
            .unwrap_err()
            .contains("not found"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn page_tokens_round_trip_and_reject_garbage() {
        let position = handlers::ListPosition {
            event: "clients.create".into(),
            phase: "after".into(),
            priority: 7,
            id: 42,
        };
        let token =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("clients.create\nafter\n7\n42");
        assert_eq!(decode_page_token(&token), Some(position));
        assert_eq!(decode_page_token("42"), None);
        assert_eq!(decode_page_token("!!"), None);
    }
}
