//! prost → JSON: the replies the console shows, written by hand. Enums are their proto
//! names without the prefix, lowercased; times RFC 3339 text (UTC, microseconds);
//! event data stays the JSON text the API keeps it as. Messages are destructured
//! fully, so a new proto field fails to compile here until the console shows or skips
//! it on purpose.

use chrono::{DateTime, SecondsFormat, Utc};
use provisioning_api::v1 as pb;
use serde_json::{json, Value};

/// The short lowercase name of a proto enum's `as_str_name()`.
fn enum_name(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('_'))
        .unwrap_or(name)
        .to_ascii_lowercase()
}

fn phase_name(value: i32) -> String {
    enum_name(
        pb::Phase::try_from(value).unwrap_or_default().as_str_name(),
        "PHASE",
    )
}

fn time(timestamp: Option<prost_types::Timestamp>) -> Value {
    timestamp
        .and_then(|t| DateTime::<Utc>::from_timestamp(t.seconds, t.nanos.max(0) as u32))
        .map(|t| Value::String(t.to_rfc3339_opts(SecondsFormat::Micros, true)))
        .unwrap_or(Value::Null)
}

/// Handler → JSON.
pub(super) fn handler(handler: pb::Handler) -> Value {
    let pb::Handler {
        id,
        name,
        event,
        phase,
        kind,
        status,
        priority,
        timeout_ms,
        target,
        failure_policy,
        filter_json,
        disabled_reason,
        created_at,
        updated_at,
        ordering_policy,
        ordering_group,
        max_in_flight,
        rate_per_second,
    } = handler;
    let (http, script) = match target {
        Some(pb::handler::Target::Http(pb::HttpTarget {
            url,
            headers,
            secret,
        })) => (
            json!({"url": url, "headers": headers, "secret": secret}),
            Value::Null,
        ),
        Some(pb::handler::Target::Script(pb::ScriptTarget { path })) => {
            (Value::Null, json!({ "path": path }))
        }
        None => (Value::Null, Value::Null),
    };
    json!({
        "id": id,
        "name": name,
        "event": event,
        "phase": phase_name(phase),
        "kind": enum_name(pb::HandlerKind::try_from(kind).unwrap_or_default().as_str_name(), "HANDLER_KIND"),
        "status": enum_name(pb::HandlerStatus::try_from(status).unwrap_or_default().as_str_name(), "HANDLER_STATUS"),
        "priority": priority,
        "timeout_ms": timeout_ms,
        "http": http,
        "script": script,
        "failure_policy": enum_name(pb::FailurePolicy::try_from(failure_policy).unwrap_or_default().as_str_name(), "FAILURE_POLICY"),
        "filter_json": filter_json,
        "disabled_reason": disabled_reason,
        "created_at": time(created_at),
        "updated_at": time(updated_at),
        "ordering_policy": enum_name(pb::OrderingPolicy::try_from(ordering_policy).unwrap_or_default().as_str_name(), "ORDERING_POLICY"),
        "ordering_group": ordering_group,
        "max_in_flight": max_in_flight,
        "rate_per_second": rate_per_second,
    })
}

/// EventType → JSON.
pub(super) fn event_type(event_type: pb::EventType) -> Value {
    let pb::EventType {
        name,
        description,
        builtin,
        schema_json,
    } = event_type;
    json!({"name": name, "description": description, "builtin": builtin, "schema_json": schema_json})
}

/// ExecutionLog → JSON.
pub(super) fn execution_log(log: pb::ExecutionLog) -> Value {
    let pb::ExecutionLog {
        id,
        created_at,
        phase,
        event,
        status,
        handler_id,
        handler_name,
        error,
        duration_ms,
        attempt,
        data_sent_json,
        data_returned_json,
        response,
        http_status,
        exit_code,
        event_id,
        delivery_id,
        kind,
        emitted_by,
        test,
    } = log;
    json!({
        "id": id,
        "created_at": time(created_at),
        "phase": phase_name(phase),
        "event": event,
        "status": enum_name(pb::RunStatus::try_from(status).unwrap_or_default().as_str_name(), "RUN_STATUS"),
        "handler_id": handler_id,
        "handler_name": handler_name,
        "error": error,
        "duration_ms": duration_ms,
        "attempt": attempt,
        "data_sent_json": data_sent_json,
        "data_returned_json": data_returned_json,
        "response": response,
        "http_status": http_status,
        "exit_code": exit_code,
        "event_id": event_id,
        "delivery_id": delivery_id,
        "kind": enum_name(pb::HandlerKind::try_from(kind).unwrap_or_default().as_str_name(), "HANDLER_KIND"),
        "emitted_by": emitted_by,
        "test": test,
    })
}

/// LogEntry → JSON: the run and its cursor.
pub(super) fn log_entry(entry: pb::LogEntry) -> Value {
    let pb::LogEntry { log, cursor } = entry;
    json!({"log": log.map(execution_log), "cursor": cursor})
}

/// HandlerStats → JSON.
pub(super) fn handler_stats(stats: pb::HandlerStats) -> Value {
    let pb::HandlerStats {
        handler_id,
        handler_name,
        total,
        success,
        fail,
        success_rate,
        p50_ms,
        p95_ms,
        p99_ms,
        paused,
        queued,
        blocked_keys,
        throttled,
    } = stats;
    json!({
        "handler_id": handler_id,
        "handler_name": handler_name,
        "total": total,
        "success": success,
        "fail": fail,
        "success_rate": success_rate,
        "p50_ms": p50_ms,
        "p95_ms": p95_ms,
        "p99_ms": p99_ms,
        "paused": paused,
        "queued": queued,
        "blocked_keys": blocked_keys,
        "throttled": throttled,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enum_names_are_short_and_lowercase() {
        assert_eq!(phase_name(pb::Phase::Before as i32), "before");
        assert_eq!(
            enum_name(pb::FailurePolicy::FailOpen.as_str_name(), "FAILURE_POLICY"),
            "fail_open"
        );
        let log = execution_log(pb::ExecutionLog {
            status: pb::RunStatus::Fail as i32,
            created_at: Some(prost_types::Timestamp {
                seconds: 1_482_241_515,
                nanos: 0,
            }),
            ..Default::default()
        });
        assert_eq!(log["status"], "fail");
        assert_eq!(log["created_at"], "2016-12-20T13:45:15.000000Z");
    }
}
