//! Conversions between proto messages and domain types. Incoming messages are
//! destructured in full, so a new proto field fails to compile until it is handled;
//! enum values are checked here and bad ones rejected with the field's name.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use provisioning_api::v1 as pb;
use tonic::Status;

use crate::dispatch::before::{Decision, Outcome};
use crate::dispatch::test_run::{TestInput, TestResult};
use crate::domain::event_data::DataError;
use crate::domain::handlers::{
    EventType, EventTypePatch, Handler, HandlerPatch, HandlerSpec, Target, TargetSpec,
};
use crate::domain::{FailurePolicy, HandlerKind, HandlerStatus, OrderingPolicy, Phase, RunStatus};

/// Whether a handler's secret is shown in full (Create, RotateSecret) or masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretView {
    /// The whole secret.
    Full,
    /// `whsec_…` and the last 4 characters.
    Masked,
    /// Masked, and every HTTP header value too (callers who are not admins): header
    /// values often carry credentials (`Authorization`).
    Redacted,
}

impl SecretView {
    /// What a reader sees: [`SecretView::Masked`] for admins, else
    /// [`SecretView::Redacted`].
    pub fn for_reader(caller: &crate::auth::Caller) -> SecretView {
        if caller.is_admin() {
            SecretView::Masked
        } else {
            SecretView::Redacted
        }
    }
}

/// What a redacted header value shows.
pub const REDACTED: &str = "…";

fn invalid(field: &str, message: impl std::fmt::Display) -> Status {
    super::status::invalid_argument(format!("{field}: {message}"))
}

/// A proto phase; UNSPECIFIED is `None`.
pub fn optional_phase(value: i32, field: &str) -> Result<Option<Phase>, Status> {
    match pb::Phase::try_from(value) {
        Ok(pb::Phase::Unspecified) => Ok(None),
        Ok(pb::Phase::Before) => Ok(Some(Phase::Before)),
        Ok(pb::Phase::After) => Ok(Some(Phase::After)),
        Err(_) => Err(invalid(field, format!("unknown phase value {value}"))),
    }
}

/// A required proto phase.
pub fn required_phase(value: i32, field: &str) -> Result<Phase, Status> {
    optional_phase(value, field)?
        .ok_or_else(|| invalid(field, "required (PHASE_BEFORE or PHASE_AFTER)"))
}

/// A proto handler kind; UNSPECIFIED is `None`.
pub fn optional_kind(value: i32, field: &str) -> Result<Option<HandlerKind>, Status> {
    match pb::HandlerKind::try_from(value) {
        Ok(pb::HandlerKind::Unspecified) => Ok(None),
        Ok(pb::HandlerKind::Http) => Ok(Some(HandlerKind::Http)),
        Ok(pb::HandlerKind::Script) => Ok(Some(HandlerKind::Script)),
        Err(_) => Err(invalid(field, format!("unknown kind value {value}"))),
    }
}

/// A proto handler status; UNSPECIFIED is `None`.
pub fn optional_status(value: i32, field: &str) -> Result<Option<HandlerStatus>, Status> {
    match pb::HandlerStatus::try_from(value) {
        Ok(pb::HandlerStatus::Unspecified) => Ok(None),
        Ok(pb::HandlerStatus::Enabled) => Ok(Some(HandlerStatus::Enabled)),
        Ok(pb::HandlerStatus::Disabled) => Ok(Some(HandlerStatus::Disabled)),
        Ok(pb::HandlerStatus::Archived) => Ok(Some(HandlerStatus::Archived)),
        Err(_) => Err(invalid(field, format!("unknown status value {value}"))),
    }
}

/// A proto run status; UNSPECIFIED is `None`.
pub fn optional_run_status(value: i32, field: &str) -> Result<Option<RunStatus>, Status> {
    match pb::RunStatus::try_from(value) {
        Ok(pb::RunStatus::Unspecified) => Ok(None),
        Ok(pb::RunStatus::Success) => Ok(Some(RunStatus::Success)),
        Ok(pb::RunStatus::Fail) => Ok(Some(RunStatus::Fail)),
        Err(_) => Err(invalid(field, format!("unknown run status value {value}"))),
    }
}

fn failure_policy(value: i32) -> Result<FailurePolicy, Status> {
    match pb::FailurePolicy::try_from(value) {
        Ok(pb::FailurePolicy::Unspecified | pb::FailurePolicy::FailClosed) => {
            Ok(FailurePolicy::FailClosed)
        }
        Ok(pb::FailurePolicy::FailOpen) => Ok(FailurePolicy::FailOpen),
        Err(_) => Err(invalid("failure_policy", format!("unknown value {value}"))),
    }
}

fn ordering_policy(value: i32, field: &str) -> Result<OrderingPolicy, Status> {
    match pb::OrderingPolicy::try_from(value) {
        Ok(pb::OrderingPolicy::Unspecified | pb::OrderingPolicy::Skip) => Ok(OrderingPolicy::Skip),
        Ok(pb::OrderingPolicy::Block) => Ok(OrderingPolicy::Block),
        Err(_) => Err(invalid(field, format!("unknown value {value}"))),
    }
}

/// A limit as sent; 0 = none.
fn limit(value: u32) -> Option<u32> {
    (value > 0).then_some(value)
}

/// An ordering group as sent; empty = none.
fn ordering_group(group: &str) -> Option<String> {
    let group = group.trim();
    (!group.is_empty()).then(|| group.to_owned())
}

fn filter(text: &str) -> Result<Option<serde_json::Value>, Status> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    match crate::domain::event_data::parse_object(text) {
        Ok(value) => Ok(Some(value)),
        Err(DataError::NotAnObject) => Err(invalid(
            "filter_json",
            "must be a JSON object such as {\"id_clients\": 15}",
        )),
        Err(error) => Err(invalid("filter_json", error)),
    }
}

fn http_target(target: pb::HttpTarget) -> TargetSpec {
    let pb::HttpTarget {
        url,
        headers,
        secret: _ignored_on_input,
    } = target;
    TargetSpec::Http {
        url: url.trim().to_owned(),
        headers: headers.into_iter().collect::<BTreeMap<_, _>>(),
    }
}

fn target_spec(target: Option<pb::create_handler_request::Target>) -> Result<TargetSpec, Status> {
    match target {
        Some(pb::create_handler_request::Target::Http(http)) => Ok(http_target(http)),
        Some(pb::create_handler_request::Target::Script(pb::ScriptTarget { path })) => {
            Ok(TargetSpec::Script { path })
        }
        None => Err(invalid("target", "required: http or script")),
    }
}

/// CreateHandlerRequest → HandlerSpec.
pub fn handler_spec(request: pb::CreateHandlerRequest) -> Result<HandlerSpec, Status> {
    let pb::CreateHandlerRequest {
        name,
        event,
        phase,
        status,
        priority,
        timeout_ms,
        target,
        failure_policy: policy,
        filter_json,
        ordering_policy: order_policy,
        ordering_group: group,
        max_in_flight,
        rate_per_second,
    } = request;
    Ok(HandlerSpec {
        name,
        event: event.trim().to_owned(),
        phase: required_phase(phase, "phase")?,
        status: optional_status(status, "status")?.unwrap_or(HandlerStatus::Enabled),
        priority,
        timeout_ms,
        target: target_spec(target)?,
        failure_policy: failure_policy(policy)?,
        filter: filter(&filter_json)?,
        ordering_policy: ordering_policy(order_policy, "ordering_policy")?,
        ordering_group: ordering_group(&group),
        max_in_flight: limit(max_in_flight),
        rate_per_second: limit(rate_per_second),
    })
}

/// UpdateHandlerRequest → (id, patch), following the field mask.
pub fn handler_patch(request: pb::UpdateHandlerRequest) -> Result<(i64, HandlerPatch), Status> {
    let pb::UpdateHandlerRequest {
        handler,
        update_mask,
    } = request;
    let handler = handler.ok_or_else(|| invalid("handler", "required"))?;
    let paths = update_mask.map(|m| m.paths).unwrap_or_default();
    if paths.is_empty() {
        return Err(invalid(
            "update_mask",
            "required: name the fields to change",
        ));
    }
    let pb::Handler {
        id,
        name,
        event,
        phase,
        kind: _derived_from_target,
        status,
        priority,
        timeout_ms,
        target,
        failure_policy: policy,
        filter_json,
        disabled_reason: _read_only,
        created_at: _created,
        updated_at: _updated,
        ordering_policy: order_policy,
        ordering_group: group,
        max_in_flight,
        rate_per_second,
    } = handler;
    let mut patch = HandlerPatch::default();
    for path in &paths {
        match path.as_str() {
            "name" => patch.name = Some(name.clone()),
            "event" => patch.event = Some(event.trim().to_owned()),
            "phase" => patch.phase = Some(required_phase(phase, "handler.phase")?),
            "status" => {
                patch.status = Some(
                    optional_status(status, "handler.status")?
                        .ok_or_else(|| invalid("handler.status", "required"))?,
                )
            }
            "priority" => patch.priority = Some(priority),
            "timeout_ms" => patch.timeout_ms = Some(timeout_ms),
            "failure_policy" => patch.failure_policy = Some(failure_policy(policy)?),
            "filter_json" => patch.filter = Some(filter(&filter_json)?),
            "ordering_policy" => {
                patch.ordering_policy =
                    Some(ordering_policy(order_policy, "handler.ordering_policy")?)
            }
            "ordering_group" => patch.ordering_group = Some(ordering_group(&group)),
            "max_in_flight" => patch.max_in_flight = Some(limit(max_in_flight)),
            "rate_per_second" => patch.rate_per_second = Some(limit(rate_per_second)),
            "http" | "http.url" | "http.headers" => {
                let Some(pb::handler::Target::Http(http)) = &target else {
                    return Err(invalid(
                        "handler.http",
                        format!("update_mask names {path} but handler.http is not set"),
                    ));
                };
                match path.as_str() {
                    "http" => patch.target = Some(http_target(http.clone())),
                    "http.url" => patch.http_url = Some(http.url.trim().to_owned()),
                    _ => {
                        patch.http_headers =
                            Some(http.headers.clone().into_iter().collect::<BTreeMap<_, _>>())
                    }
                }
            }
            "script" | "script.path" => match &target {
                Some(pb::handler::Target::Script(script)) => {
                    patch.target = Some(TargetSpec::Script {
                        path: script.path.clone(),
                    })
                }
                _ => {
                    return Err(invalid(
                        "handler.script",
                        "update_mask names script but handler.script is not set",
                    ))
                }
            },
            other => {
                return Err(invalid(
                    "update_mask",
                    format!("unknown or read-only field {other:?}"),
                ))
            }
        }
    }
    Ok((id, patch))
}

/// Timestamp → proto.
pub fn timestamp(time: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.timestamp(),
        nanos: time.timestamp_subsec_nanos() as i32,
    }
}

/// Proto timestamp → time, checked.
pub fn from_timestamp(ts: &prost_types::Timestamp, field: &str) -> Result<DateTime<Utc>, Status> {
    u32::try_from(ts.nanos)
        .ok()
        .and_then(|nanos| Utc.timestamp_opt(ts.seconds, nanos).single())
        .ok_or_else(|| invalid(field, "timestamp out of range"))
}

/// Handler → proto.
pub fn handler(handler: Handler, view: SecretView) -> pb::Handler {
    let kind = match handler.target.kind() {
        HandlerKind::Http => pb::HandlerKind::Http,
        HandlerKind::Script => pb::HandlerKind::Script,
    };
    let target = match handler.target {
        Target::Http {
            url,
            headers,
            secret,
        } => pb::handler::Target::Http(pb::HttpTarget {
            url,
            headers: headers
                .into_iter()
                .map(|(name, value)| match view {
                    SecretView::Full | SecretView::Masked => (name, value),
                    SecretView::Redacted => (name, REDACTED.to_owned()),
                })
                .collect(),
            secret: match view {
                SecretView::Full => secret,
                SecretView::Masked | SecretView::Redacted => mask_secret(&secret),
            },
        }),
        Target::Script { path } => pb::handler::Target::Script(pb::ScriptTarget { path }),
    };
    pb::Handler {
        id: handler.id,
        name: handler.name,
        event: handler.event,
        phase: phase(handler.phase) as i32,
        kind: kind as i32,
        status: match handler.status {
            HandlerStatus::Enabled => pb::HandlerStatus::Enabled,
            HandlerStatus::Disabled => pb::HandlerStatus::Disabled,
            HandlerStatus::Archived => pb::HandlerStatus::Archived,
        } as i32,
        priority: handler.priority,
        timeout_ms: handler.timeout_ms,
        target: Some(target),
        failure_policy: match handler.failure_policy {
            FailurePolicy::FailClosed => pb::FailurePolicy::FailClosed,
            FailurePolicy::FailOpen => pb::FailurePolicy::FailOpen,
        } as i32,
        filter_json: handler.filter.map(|f| f.to_string()).unwrap_or_default(),
        disabled_reason: handler.disabled_reason.unwrap_or_default(),
        created_at: Some(timestamp(handler.created_at)),
        updated_at: Some(timestamp(handler.updated_at)),
        ordering_policy: match handler.ordering_policy {
            OrderingPolicy::Skip => pb::OrderingPolicy::Skip,
            OrderingPolicy::Block => pb::OrderingPolicy::Block,
        } as i32,
        ordering_group: handler.ordering_group.unwrap_or_default(),
        max_in_flight: handler.max_in_flight.unwrap_or(0),
        rate_per_second: handler.rate_per_second.unwrap_or(0),
    }
}

/// Phase → proto.
pub fn phase(phase: Phase) -> pb::Phase {
    match phase {
        Phase::Before => pb::Phase::Before,
        Phase::After => pb::Phase::After,
    }
}

fn mask_secret(secret: &str) -> String {
    let tail: String = secret
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("whsec_…{tail}")
}

/// AuditEntry → proto.
pub fn audit_entry(entry: crate::domain::handlers::AuditEntry) -> pb::AuditEntry {
    let json = |value: Option<serde_json::Value>| value.map(|v| v.to_string()).unwrap_or_default();
    pb::AuditEntry {
        id: entry.id,
        created_at: Some(timestamp(entry.at)),
        actor: entry.actor,
        action: entry.action,
        handler_id: entry.handler_id.unwrap_or_default(),
        before_json: json(entry.before),
        after_json: json(entry.after),
    }
}

/// EventType → proto.
pub fn event_type(event_type: EventType) -> pb::EventType {
    let EventType {
        name,
        description,
        builtin,
        schema,
    } = event_type;
    pb::EventType {
        name,
        description,
        builtin,
        schema_json: schema.unwrap_or_default(),
    }
}

/// UpdateEventTypeRequest → (name, patch), following the field mask.
pub fn event_type_patch(
    request: pb::UpdateEventTypeRequest,
) -> Result<(String, EventTypePatch), Status> {
    let pb::UpdateEventTypeRequest {
        event_type,
        update_mask,
    } = request;
    let event_type = event_type.ok_or_else(|| invalid("event_type", "required"))?;
    let paths = update_mask.map(|m| m.paths).unwrap_or_default();
    if paths.is_empty() {
        return Err(invalid(
            "update_mask",
            "required: name the fields to change (description, schema_json)",
        ));
    }
    let pb::EventType {
        name,
        description,
        builtin: _read_only,
        schema_json,
    } = event_type;
    if name.is_empty() {
        return Err(invalid("event_type.name", "required"));
    }
    let mut patch = EventTypePatch::default();
    for path in &paths {
        match path.as_str() {
            "description" => patch.description = Some(description.clone()),
            "schema_json" => {
                patch.schema = Some((!schema_json.trim().is_empty()).then(|| schema_json.clone()))
            }
            other => {
                return Err(invalid(
                    "update_mask",
                    format!("unknown or read-only field {other:?} (description, schema_json)"),
                ))
            }
        }
    }
    Ok((name, patch))
}

/// TestHandlerRequest → (handler id, input).
pub fn test_input(request: pb::TestHandlerRequest) -> Result<(i64, TestInput), Status> {
    let pb::TestHandlerRequest { id, input } = request;
    let input = match input {
        Some(pb::test_handler_request::Input::DataJson(data)) => TestInput::Data(data),
        Some(pb::test_handler_request::Input::LogId(log_id)) => TestInput::LogId(log_id),
        None => return Err(invalid("input", "required: data_json or log_id")),
    };
    Ok((id, input))
}

/// TestResult → proto.
pub fn test_result(result: TestResult) -> pb::TestHandlerResponse {
    let TestResult {
        log_id,
        event_id,
        status,
        error,
        duration,
        response,
        http_status,
        exit_code,
        data_sent,
        before,
    } = result;
    let (outcome, decision, data_returned) = match before {
        Some(verdict) => (
            match verdict.outcome {
                Outcome::Passed => pb::HandlerOutcome::Passed,
                Outcome::Modified => pb::HandlerOutcome::Modified,
                Outcome::Forbade => pb::HandlerOutcome::Forbade,
                Outcome::Failed => pb::HandlerOutcome::Failed,
                Outcome::Skipped => pb::HandlerOutcome::Skipped,
            },
            match verdict.decision {
                Decision::Allowed => pb::Decision::Allowed,
                Decision::Forbidden => pb::Decision::Forbidden,
            },
            verdict.data_returned,
        ),
        None => (
            pb::HandlerOutcome::Unspecified,
            pb::Decision::Unspecified,
            String::new(),
        ),
    };
    pb::TestHandlerResponse {
        log_id: log_id.unwrap_or(0),
        status: match status {
            RunStatus::Success => pb::RunStatus::Success,
            RunStatus::Fail => pb::RunStatus::Fail,
        } as i32,
        error,
        duration_ms: duration.as_millis().min(u32::MAX as u128) as u32,
        response,
        http_status: http_status.unwrap_or(0),
        exit_code,
        data_sent_json: data_sent,
        outcome: outcome as i32,
        decision: decision as i32,
        data_returned_json: data_returned,
        event_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http_handler() -> Handler {
        Handler {
            id: 1,
            name: "crm".into(),
            event: "clients.create".into(),
            phase: Phase::After,
            status: HandlerStatus::Enabled,
            priority: 0,
            timeout_ms: 1000,
            target: Target::Http {
                url: "http://crm/hook".into(),
                headers: [("authorization".to_owned(), "Bearer crm-key".to_owned())].into(),
                secret: "whsec_abcdefgh".into(),
            },
            failure_policy: FailurePolicy::FailClosed,
            ordering_policy: OrderingPolicy::Skip,
            ordering_group: None,
            max_in_flight: None,
            rate_per_second: None,
            filter: None,
            disabled_reason: None,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    #[test]
    fn readers_who_are_not_admins_see_header_values_masked() {
        let reader = crate::auth::Caller {
            name: "r".into(),
            roles: vec![crate::auth::Role::Reader],
            event_patterns: vec![],
        };
        assert_eq!(SecretView::for_reader(&reader), SecretView::Redacted);
        assert_eq!(
            SecretView::for_reader(&crate::auth::Caller::development()),
            SecretView::Masked
        );
        let shown = |view| match convert_target(handler(http_handler(), view)) {
            pb::handler::Target::Http(http) => (http.headers["authorization"].clone(), http.secret),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            shown(SecretView::Redacted),
            ("…".into(), "whsec_…efgh".into())
        );
        assert_eq!(
            shown(SecretView::Masked),
            ("Bearer crm-key".into(), "whsec_…efgh".into())
        );
        assert_eq!(shown(SecretView::Full).1, "whsec_abcdefgh");
    }

    #[test]
    fn audit_snapshots_hold_no_secret_and_no_header_value() {
        let text = crate::domain::handlers::snapshot(&http_handler()).to_string();
        assert!(
            !text.contains("whsec_") && !text.contains("crm-key"),
            "{text}"
        );
        assert!(
            text.contains("authorization") && text.contains("http://crm/hook"),
            "{text}"
        );
    }

    fn convert_target(handler: pb::Handler) -> pb::handler::Target {
        handler.target.expect("a target")
    }

    #[test]
    fn secrets_are_masked_to_their_last_four_characters() {
        assert_eq!(mask_secret("whsec_abcdefgh"), "whsec_…efgh");
    }

    #[test]
    fn unknown_enum_values_are_rejected_with_the_field_name() {
        let err = optional_phase(42, "phase").unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().starts_with("phase:"));
        assert!(required_phase(0, "phase").is_err());
    }

    #[test]
    fn update_needs_a_mask_and_known_paths() {
        let request = |paths: &[&str]| pb::UpdateHandlerRequest {
            handler: Some(pb::Handler {
                id: 1,
                name: "n".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: paths.iter().map(|p| p.to_string()).collect(),
            }),
        };
        assert!(handler_patch(request(&[])).is_err());
        assert!(handler_patch(request(&["secret"])).is_err());
        assert!(handler_patch(request(&["http"])).is_err());
        let (id, patch) = handler_patch(request(&["name"])).unwrap();
        assert_eq!(id, 1);
        assert_eq!(patch.name.as_deref(), Some("n"));
    }
}
