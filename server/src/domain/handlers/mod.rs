//! Handlers and the event catalogue: validation of handler definitions, their
//! lifecycle (create, patch, status, delete, secret rotation) and the catalogue
//! (`catalogue`: event types and their data schemas).
//!
//! Nothing is cached: dispatch reads the handlers table on every event, so a change
//! made here takes effect for the next event on every replica.

use std::sync::Arc;

use base64::Engine;
use chrono::Utc;
use diesel::{Connection, OptionalExtension};
use rand::RngCore;

mod audit;
mod catalogue;
mod types;
mod validation;

use audit::record;
pub use audit::{snapshot, AuditAction, AuditEntry, AuditQuery};

pub(crate) use types::handler_from_row;
pub use types::{
    EventType, EventTypePatch, Handler, HandlerPatch, HandlerQuery, HandlerSpec, Target, TargetSpec,
};

pub use validation::{
    resolve_script, validate_event_type_name, validate_spec, validate_url, HandlerRules,
    DEFAULT_TIMEOUT_MS, MAX_NAME_CHARS, MAX_PRIORITY, MAX_TIMEOUT_MS,
};

use super::{parse_stored, text, DomainError, HandlerKind, HandlerStatus, Phase};
use crate::auth::Caller;
use crate::db::models::{HandlerChangeset, NewHandlerRow};
use crate::db::queries::{deliveries, event_types, handlers};
use crate::db::Db;
use crate::domain::schemas::EventSchemas;
use crate::listener::Signals;

/// Default and largest page of List.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
const MAX_PAGE_SIZE: u32 = 1000;

/// Handler management over the database.
#[derive(Clone)]
pub struct HandlerRegistry {
    db: Db,
    /// What definitions are checked against (scripts directory, outbound policy, limits).
    rules: Arc<HandlerRules>,
    /// Wakes the workers when deliveries resume and the tails when rows are logged.
    signals: Signals,
    /// This replica's compiled event schemas, refreshed at once by schema changes made
    /// here (other replicas notice the version; see `domain::schemas`).
    schemas: EventSchemas,
}

impl HandlerRegistry {
    /// A registry storing in `db`, checking definitions against `rules`.
    pub fn new(
        db: Db,
        rules: HandlerRules,
        signals: Signals,
        schemas: EventSchemas,
    ) -> HandlerRegistry {
        HandlerRegistry {
            db,
            rules: Arc::new(rules),
            signals,
            schemas,
        }
    }

    /// Tells workers and tails what a status change did to the deliveries.
    fn announce(&self, settled: Settled) {
        if settled.resumed {
            self.signals.announce_work();
        }
        if let Some(max_id) = settled.max_log_id {
            self.signals.announce_logs(max_id);
            self.signals.announce_work();
        }
    }

    /// Validates and stores a new handler; HTTP handlers get a fresh secret.
    pub async fn create(&self, caller: &Caller, spec: HandlerSpec) -> Result<Handler, DomainError> {
        let caller = caller.clone();
        let mut spec = spec;
        validate_spec(&mut spec, &self.rules)?;
        let max_handlers = self.rules.max_handlers_per_event;
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
            ordering_policy: spec.ordering_policy.as_str().into(),
            ordering_group: spec.ordering_group,
            max_in_flight: spec.max_in_flight.map(|n| n as i32),
            rate_per_second: spec.rate_per_second.map(|n| n as i32),
        };
        self.db
            .run(move |conn| {
                conn.transaction(|conn| {
                    ensure_event_exists(conn, &row.event)?;
                    ensure_room(conn, &row.event, None, max_handlers)?;
                    let handler = handler_from_row(handlers::insert(conn, &row)?)?;
                    let after = Some(snapshot(&handler));
                    record(
                        conn,
                        &caller,
                        AuditAction::Create,
                        Some(handler.id),
                        None,
                        after,
                    )?;
                    Ok(handler)
                })
            })
            .await
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
        if let Some(event) = &query.event {
            text::require_storable("event", event)?;
        }
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
        caller: &Caller,
        id: i64,
        patch: HandlerPatch,
    ) -> Result<(Handler, bool), DomainError> {
        let rules = self.rules.clone();
        let caller = caller.clone();
        self.db
            .run(move |conn| {
                conn.transaction(|conn| {
                    let row = handlers::find_for_update(conn, id)
                        .optional()?
                        .ok_or_else(|| not_found(id))?;
                    let current = handler_from_row(row)?;
                    let (mut spec, old_secret) = spec_of(&current);
                    let reenabled = patch.status == Some(HandlerStatus::Enabled);
                    apply_patch(&mut spec, patch)?;
                    validate_spec(&mut spec, &rules)?;
                    ensure_event_exists(conn, &spec.event)?;
                    if spec.status != HandlerStatus::Archived {
                        ensure_room(conn, &spec.event, Some(id), rules.max_handlers_per_event)?;
                    }
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
                        disabled_reason: current.disabled_reason.clone(),
                        updated_at: Utc::now(),
                        ordering_policy: spec.ordering_policy.as_str().into(),
                        ordering_group: spec.ordering_group,
                        max_in_flight: spec.max_in_flight.map(|n| n as i32),
                        rate_per_second: spec.rate_per_second.map(|n| n as i32),
                    };
                    let mut row = handlers::update(conn, id, &changes)?;
                    if reenabled {
                        // A fresh start: the failing clock restarts, like SetStatus does.
                        row = handlers::set_status(conn, id, HandlerStatus::Enabled.as_str())?;
                    }
                    let new_status =
                        parse_stored(HandlerStatus::parse, &row.status, "handlers.status")?;
                    let settled = settle_deliveries(conn, id, current.status, new_status)?;
                    let handler = handler_from_row(row)?;
                    let (before, after) = (snapshot(&current), snapshot(&handler));
                    record(
                        conn,
                        &caller,
                        AuditAction::Update,
                        Some(id),
                        Some(before),
                        Some(after),
                    )?;
                    Ok((handler, secret_created, settled))
                })
            })
            .await
            .map(|(handler, secret_created, settled)| {
                self.announce(settled);
                (handler, secret_created)
            })
    }

    /// Sets the status chosen by an operator: any automatic-disable reason is cleared
    /// and the failing clock restarts.
    ///
    /// Disabling pauses the handler: its unfinished deliveries wait (not attempted, not
    /// counted as failures) and resume in order when it is enabled again. Archiving ends
    /// them, each with a failed log row saying why.
    pub async fn set_status(
        &self,
        caller: &Caller,
        id: i64,
        status: HandlerStatus,
    ) -> Result<Handler, DomainError> {
        let caller = caller.clone();
        let max_handlers = self.rules.max_handlers_per_event;
        let (handler, settled) = self
            .db
            .run(move |conn| {
                conn.transaction(|conn| {
                    let current = handlers::find_for_update(conn, id)
                        .optional()?
                        .ok_or_else(|| not_found(id))?;
                    let old = handler_from_row(current)?;
                    if old.status == HandlerStatus::Archived && status != HandlerStatus::Archived {
                        // Back from the archive: it counts against the event's limit again.
                        ensure_event_exists(conn, &old.event)?;
                        ensure_room(conn, &old.event, Some(id), max_handlers)?;
                    }
                    let handler =
                        handler_from_row(handlers::set_status(conn, id, status.as_str())?)?;
                    let settled = settle_deliveries(conn, id, old.status, status)?;
                    let (before, after) = (snapshot(&old), snapshot(&handler));
                    record(
                        conn,
                        &caller,
                        AuditAction::SetStatus,
                        Some(id),
                        Some(before),
                        Some(after),
                    )?;
                    Ok::<_, DomainError>((handler, settled))
                })
            })
            .await?;
        self.announce(settled);
        Ok(handler)
    }

    /// Deletes a handler. Its unfinished deliveries end, each with a failed log row saying
    /// why; its log rows stay. Events whose next delivery in priority order was this
    /// handler's move on to the next one.
    pub async fn delete(&self, caller: &Caller, id: i64) -> Result<(), DomainError> {
        let caller = caller.clone();
        let deleted = self
            .db
            .run(move |conn| {
                conn.transaction(|conn| {
                    let Some(old) = handlers::find_for_update(conn, id).optional()? else {
                        return Ok((0, Settled::default()));
                    };
                    let before = snapshot(&handler_from_row(old)?);
                    let ended = end_deliveries(conn, id, "handler deleted")?;
                    let deleted = handlers::delete(conn, id)?;
                    record(
                        conn,
                        &caller,
                        AuditAction::Delete,
                        Some(id),
                        Some(before),
                        None,
                    )?;
                    Ok::<_, DomainError>((deleted, ended))
                })
            })
            .await?;
        let (deleted, settled) = deleted;
        if deleted == 0 {
            return Err(not_found(id));
        }
        self.announce(settled);
        Ok(())
    }

    /// Gives an HTTP handler a new secret.
    pub async fn rotate_secret(&self, caller: &Caller, id: i64) -> Result<Handler, DomainError> {
        let caller = caller.clone();
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
                    let before = snapshot(&handler_from_row(row)?);
                    let handler = handler_from_row(handlers::set_secret(conn, id, &new_secret())?)?;
                    let after = Some(snapshot(&handler));
                    record(
                        conn,
                        &caller,
                        AuditAction::RotateSecret,
                        Some(id),
                        Some(before),
                        after,
                    )?;
                    Ok(handler)
                })
            })
            .await
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
    let text = String::from_utf8(bytes)
        .ok()
        .filter(|t| !t.contains('\0'))?;
    let mut parts = text.split('\n');
    let position = handlers::ListPosition {
        event: parts.next()?.to_owned(),
        phase: parts.next()?.to_owned(),
        priority: parts.next()?.parse().ok()?,
        id: parts.next()?.parse().ok()?,
    };
    parts.next().is_none().then_some(position)
}

/// What a status change did to a handler's deliveries, to announce after the commit.
#[derive(Debug, Default)]
struct Settled {
    /// Paused deliveries became pending.
    resumed: bool,
    /// Log rows were written for ended deliveries, up to this id.
    max_log_id: Option<i64>,
}

/// Applies a status change to the handler's unfinished deliveries: enabling resumes the
/// paused ones, archiving ends them all (disabling needs nothing now: the workers pause
/// each delivery as it comes due).
fn settle_deliveries(
    conn: &mut diesel::PgConnection,
    id: i64,
    old: HandlerStatus,
    new: HandlerStatus,
) -> Result<Settled, DomainError> {
    match new {
        HandlerStatus::Enabled => Ok(Settled {
            resumed: deliveries::resume_handler(conn, id)? > 0,
            max_log_id: None,
        }),
        HandlerStatus::Archived if old != HandlerStatus::Archived => {
            end_deliveries(conn, id, "handler archived")
        }
        HandlerStatus::Archived | HandlerStatus::Disabled => Ok(Settled::default()),
    }
}

/// Ends a handler's unfinished deliveries with a log row each; the events they were
/// holding up move on to their next handler, and the events queued behind them in
/// their ordering slots may start.
fn end_deliveries(
    conn: &mut diesel::PgConnection,
    id: i64,
    why: &str,
) -> Result<Settled, DomainError> {
    let reason = format!("{why}: delivery ended before it succeeded");
    let ended = deliveries::end_for_handler(conn, id, &reason)?;
    let mut resumed = false;
    if !ended.event_ids.is_empty() {
        resumed |= deliveries::promote_orphaned_waiting(conn, &ended.event_ids)? > 0;
    }
    let slots: Vec<&str> = ended.ordering_slots.iter().map(String::as_str).collect();
    resumed |= deliveries::promote_queued(conn, &slots)? > 0;
    Ok(Settled {
        resumed,
        max_log_id: ended.max_log_id,
    })
}

fn not_found(id: i64) -> DomainError {
    DomainError::NotFound(format!("handler {id} not found"))
}

/// Refuses a handler that would give `event` more than `max` handlers (archived ones
/// not counted; `except` is the handler being updated). Call after
/// [`ensure_event_exists`], which locks the event's catalogue row.
fn ensure_room(
    conn: &mut diesel::PgConnection,
    event: &str,
    except: Option<i64>,
    max: u32,
) -> Result<(), DomainError> {
    let others = handlers::count_for_event(conn, event, except)?;
    if others >= i64::from(max) {
        return Err(DomainError::FailedPrecondition(format!(
            "event {event:?} has {others} handlers, the most allowed \
             (--max-handlers-per-event {max}): archive or delete one first"
        )));
    }
    Ok(())
}

/// Checks that `event` is in the catalogue and locks its row until the transaction ends.
fn ensure_event_exists(conn: &mut diesel::PgConnection, event: &str) -> Result<(), DomainError> {
    if event_types::lock(conn, event)? {
        Ok(())
    } else {
        Err(DomainError::invalid(
            "event",
            format!("unknown event {event:?} (see ListEventTypes)"),
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
        ordering_policy: handler.ordering_policy,
        ordering_group: handler.ordering_group.clone(),
        max_in_flight: handler.max_in_flight,
        rate_per_second: handler.rate_per_second,
    };
    (spec, secret)
}

/// Applies the fields a patch names; `http.url` and `http.headers` change only what
/// they name and need an HTTP handler (after a whole-target change, if any).
fn apply_patch(spec: &mut HandlerSpec, patch: HandlerPatch) -> Result<(), DomainError> {
    let HandlerPatch {
        name,
        event,
        phase,
        status,
        priority,
        timeout_ms,
        target,
        http_url,
        http_headers,
        failure_policy,
        filter,
        ordering_policy,
        ordering_group,
        max_in_flight,
        rate_per_second,
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
    if http_url.is_some() || http_headers.is_some() {
        let TargetSpec::Http { url, headers } = &mut spec.target else {
            return Err(DomainError::invalid(
                "update_mask",
                "http.url and http.headers change an HTTP handler; this is a script \
                 handler: name `http` to turn it into one",
            ));
        };
        if let Some(v) = http_url {
            *url = v;
        }
        if let Some(v) = http_headers {
            *headers = v;
        }
    }
    if let Some(v) = failure_policy {
        spec.failure_policy = v;
    }
    if let Some(v) = filter {
        spec.filter = v;
    }
    if let Some(v) = ordering_policy {
        spec.ordering_policy = v;
    }
    if let Some(v) = ordering_group {
        spec.ordering_group = v;
    }
    if let Some(v) = max_in_flight {
        spec.max_in_flight = v;
    }
    if let Some(v) = rate_per_second {
        spec.rate_per_second = v;
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

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
