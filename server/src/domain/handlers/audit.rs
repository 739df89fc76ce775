//! The audit trail: who changed which handler or event type, when, and how.
//!
//! Every change records one row in the change's own transaction, so a change and its
//! audit row commit or roll back together. Snapshots carry what a handler does (name,
//! event, URL, header *names*, script path, ...) and never its signing secret or header
//! values, which often hold credentials.

use base64::Engine;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::{Handler, HandlerRegistry, Target};
use crate::auth::Caller;
use crate::db::models::{AuditRow, NewAuditRow};
use crate::db::queries::audit;
use crate::domain::DomainError;

/// Default and largest page of the trail.
const DEFAULT_PAGE_SIZE: u32 = 100;
const MAX_PAGE_SIZE: u32 = 1000;

/// What was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditAction {
    /// HandlerService.Create.
    Create,
    /// HandlerService.Update.
    Update,
    /// HandlerService.SetStatus.
    SetStatus,
    /// HandlerService.Delete.
    Delete,
    /// HandlerService.RotateSecret.
    RotateSecret,
    /// HandlerService.CreateEventType.
    CreateEventType,
    /// HandlerService.UpdateEventType.
    UpdateEventType,
}

impl AuditAction {
    /// The stored name, the RPC's.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::Create => "Create",
            AuditAction::Update => "Update",
            AuditAction::SetStatus => "SetStatus",
            AuditAction::Delete => "Delete",
            AuditAction::RotateSecret => "RotateSecret",
            AuditAction::CreateEventType => "CreateEventType",
            AuditAction::UpdateEventType => "UpdateEventType",
        }
    }
}

/// One recorded change.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    /// Row id.
    pub id: i64,
    /// When the change committed (its transaction's time).
    pub at: DateTime<Utc>,
    /// The caller's name.
    pub actor: String,
    /// The RPC, e.g. `Update`.
    pub action: String,
    /// The handler; `None` for event-type changes.
    pub handler_id: Option<i64>,
    /// The state before (`None` for a creation).
    pub before: Option<Value>,
    /// The state after (`None` for a deletion).
    pub after: Option<Value>,
}

/// A page request of the trail.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Only this handler.
    pub handler_id: Option<i64>,
    /// 1 to 1000; 0 = 100.
    pub page_size: u32,
    /// The previous page's `next_page_token`.
    pub page_token: String,
}

/// A handler as the trail shows it: no secret, header names without their values.
pub fn snapshot(handler: &Handler) -> Value {
    let target = match &handler.target {
        Target::Http { url, headers, .. } => json!({
            "http": { "url": url, "header_names": headers.keys().collect::<Vec<_>>() }
        }),
        Target::Script { path } => json!({ "script": { "path": path } }),
    };
    json!({
        "name": handler.name,
        "event": handler.event,
        "phase": handler.phase.as_str(),
        "status": handler.status.as_str(),
        "priority": handler.priority,
        "timeout_ms": handler.timeout_ms,
        "target": target,
        "failure_policy": handler.failure_policy.as_str(),
        "filter": handler.filter,
        "ordering_policy": handler.ordering_policy.as_str(),
        "ordering_group": handler.ordering_group,
        "max_in_flight": handler.max_in_flight,
        "rate_per_second": handler.rate_per_second,
        "disabled_reason": handler.disabled_reason,
    })
}

/// Records a change by `caller` in the current transaction.
pub(super) fn record(
    conn: &mut diesel::PgConnection,
    caller: &Caller,
    action: AuditAction,
    handler_id: Option<i64>,
    before: Option<Value>,
    after: Option<Value>,
) -> Result<(), DomainError> {
    audit::insert(
        conn,
        &NewAuditRow {
            actor: caller.name.clone(),
            action: action.as_str().to_owned(),
            handler_id,
            before,
            after,
        },
    )?;
    Ok(())
}

impl HandlerRegistry {
    /// A page of the trail, newest first, and the next page's token (empty at the end).
    pub async fn list_audit(
        &self,
        query: AuditQuery,
    ) -> Result<(Vec<AuditEntry>, String), DomainError> {
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
        let before = if query.page_token.is_empty() {
            None
        } else {
            Some(
                decode_token(&query.page_token)
                    .ok_or_else(|| DomainError::invalid("page_token", "malformed page token"))?,
            )
        };
        let handler_id = query.handler_id;
        let mut rows = self
            .db
            .run(move |conn| {
                audit::list_page(conn, handler_id, before, i64::from(page_size) + 1)
                    .map_err(DomainError::from)
            })
            .await?;
        let next = if rows.len() > page_size as usize {
            rows.truncate(page_size as usize);
            rows.last().map(encode_token).unwrap_or_default()
        } else {
            String::new()
        };
        Ok((rows.into_iter().map(entry).collect(), next))
    }
}

fn entry(row: AuditRow) -> AuditEntry {
    AuditEntry {
        id: row.id,
        at: row.created_at,
        actor: row.actor,
        action: row.action,
        handler_id: row.handler_id,
        before: row.before,
        after: row.after,
    }
}

fn encode_token(last: &AuditRow) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(
        "{}\n{}",
        last.created_at.timestamp_micros(),
        last.id
    ))
}

fn decode_token(token: &str) -> Option<(DateTime<Utc>, i64)> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (micros, id) = text.split_once('\n')?;
    Some((
        DateTime::from_timestamp_micros(micros.parse().ok()?)?,
        id.parse().ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_page_tokens_round_trip_and_reject_garbage() {
        let at = DateTime::from_timestamp_micros(1_780_000_000_123_456).unwrap();
        let row = AuditRow {
            id: 42,
            created_at: at,
            actor: "ops".into(),
            action: "Create".into(),
            handler_id: Some(1),
            before: None,
            after: None,
        };
        assert_eq!(decode_token(&encode_token(&row)), Some((at, 42)));
        assert_eq!(decode_token("???"), None);
        assert_eq!(decode_token(""), None);
    }
}
