//! How a handler is shown: a row of the handler list (like the seeds' Provisioning
//! section), a `key: value` view, and a JSON object named after the proto's fields with
//! `filter_json` embedded as JSON.

use provisioning_client::proto::{self, handler};

use super::from_timestamp;
use super::json::JsonObject;
use super::output::{capitalize, details, enum_name, event_title, millis, rfc3339};

fn phase_name(value: i32) -> String {
    enum_name(value, "PHASE_", proto::Phase::as_str_name)
}

fn kind_name(value: i32) -> String {
    enum_name(value, "HANDLER_KIND_", proto::HandlerKind::as_str_name)
}

fn status_name(value: i32) -> String {
    enum_name(value, "HANDLER_STATUS_", proto::HandlerStatus::as_str_name)
}

fn policy_name(value: i32) -> String {
    enum_name(value, "FAILURE_POLICY_", proto::FailurePolicy::as_str_name)
}

/// A limit for the view: empty (left out) when there is none.
fn limit_text(limit: u32) -> String {
    if limit == 0 {
        String::new()
    } else {
        limit.to_string()
    }
}

fn ordering_policy_name(value: i32) -> String {
    enum_name(
        value,
        "ORDERING_POLICY_",
        proto::OrderingPolicy::as_str_name,
    )
}

/// The seeds' Handler column: kind and location.
fn target_label(handler: &proto::Handler) -> String {
    match &handler.target {
        Some(handler::Target::Http(http)) => format!("HTTP {}", http.url),
        Some(handler::Target::Script(script)) => format!("Script {}", script.path),
        None => String::new(),
    }
}

/// A row of the handler list, as the seeds' Provisioning section shows it.
pub fn list_row(handler: &proto::Handler) -> Vec<String> {
    vec![
        handler.id.to_string(),
        handler.priority.to_string(),
        handler.name.clone(),
        event_title(&handler.event),
        capitalize(&phase_name(handler.phase)),
        capitalize(&status_name(handler.status)),
        target_label(handler),
    ]
}

/// A `key: value` view of every field that is set; the secret is shown as received
/// (in full only in Create and RotateSecret replies).
pub fn handler_details(handler: &proto::Handler) -> String {
    handler_details_with(handler, &[])
}

/// [`handler_details`] followed by `more` pairs, aligned with the rest.
pub fn handler_details_with(handler: &proto::Handler, more: &[(&str, String)]) -> String {
    let (url, headers, secret, script) = match &handler.target {
        Some(handler::Target::Http(http)) => {
            let mut headers: Vec<String> = http
                .headers
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            headers.sort();
            (
                http.url.clone(),
                headers.join(", "),
                http.secret.clone(),
                String::new(),
            )
        }
        Some(handler::Target::Script(script)) => (
            String::new(),
            String::new(),
            String::new(),
            script.path.clone(),
        ),
        None => Default::default(),
    };
    let mut pairs = vec![
        ("ID", handler.id.to_string()),
        ("Name", handler.name.clone()),
        ("Event", handler.event.clone()),
        ("Phase", phase_name(handler.phase)),
        ("Status", status_name(handler.status)),
        ("Disabled reason", handler.disabled_reason.clone()),
        ("Priority", handler.priority.to_string()),
        ("Kind", kind_name(handler.kind)),
        ("URL", url),
        ("Headers", headers),
        ("Secret", secret),
        ("Script", script),
        ("Timeout", millis(handler.timeout_ms)),
        (
            "Failure policy",
            policy_name(handler.failure_policy).replace('_', "-"),
        ),
        ("Filter", handler.filter_json.clone()),
        (
            "Ordering policy",
            ordering_policy_name(handler.ordering_policy),
        ),
        ("Ordering group", handler.ordering_group.clone()),
        ("Max in flight", limit_text(handler.max_in_flight)),
        ("Rate per second", limit_text(handler.rate_per_second)),
        (
            "Created",
            from_timestamp(handler.created_at.as_ref())
                .map(rfc3339)
                .unwrap_or_default(),
        ),
        (
            "Updated",
            from_timestamp(handler.updated_at.as_ref())
                .map(rfc3339)
                .unwrap_or_default(),
        ),
    ];
    pairs.extend(more.iter().cloned());
    details(&pairs)
}

/// A handler as JSON, fields named as in the proto.
pub fn handler_json(handler: &proto::Handler) -> JsonObject {
    let object = JsonObject::new()
        .int("id", handler.id)
        .str("name", &handler.name)
        .str("event", &handler.event)
        .str("phase", &phase_name(handler.phase))
        .str("kind", &kind_name(handler.kind))
        .str("status", &status_name(handler.status))
        .int("priority", handler.priority)
        .int("timeout_ms", handler.timeout_ms);
    let object = match &handler.target {
        Some(handler::Target::Http(http)) => object.obj(
            "http",
            JsonObject::new()
                .str("url", &http.url)
                .map("headers", &http.headers)
                .str("secret", &http.secret),
        ),
        Some(handler::Target::Script(script)) => {
            object.obj("script", JsonObject::new().str("path", &script.path))
        }
        None => object,
    };
    object
        .str("failure_policy", &policy_name(handler.failure_policy))
        .raw("filter_json", &handler.filter_json)
        .str("disabled_reason", &handler.disabled_reason)
        .time("created_at", from_timestamp(handler.created_at.as_ref()))
        .time("updated_at", from_timestamp(handler.updated_at.as_ref()))
        .str(
            "ordering_policy",
            &ordering_policy_name(handler.ordering_policy),
        )
        .str("ordering_group", &handler.ordering_group)
        .uint("max_in_flight", u64::from(handler.max_in_flight))
        .uint("rate_per_second", u64::from(handler.rate_per_second))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http_handler() -> proto::Handler {
        proto::Handler {
            id: 2,
            name: "Create client in the CRM".into(),
            event: "accounts.create".into(),
            phase: proto::Phase::After.into(),
            kind: proto::HandlerKind::Http.into(),
            status: proto::HandlerStatus::Enabled.into(),
            target: Some(handler::Target::Http(proto::HttpTarget {
                url: "http://crm.net/client-add".into(),
                headers: [("Authorization".to_owned(), "Bearer t".to_owned())].into(),
                secret: "whsec_…abcd".into(),
            })),
            filter_json: r#"{"id_clients": 15}"#.into(),
            ..proto::Handler::default()
        }
    }

    #[test]
    fn list_rows_look_like_the_seeds() {
        assert_eq!(
            list_row(&http_handler()),
            [
                "2",
                "0",
                "Create client in the CRM",
                "Accounts Create",
                "After",
                "Enabled",
                "HTTP http://crm.net/client-add"
            ]
        );
    }

    #[test]
    fn handler_json_uses_proto_names_and_embeds_the_filter() {
        let line = handler_json(&http_handler()).to_line();
        assert_eq!(
            line,
            r#"{"id":2,"name":"Create client in the CRM","event":"accounts.create","phase":"after","kind":"http","status":"enabled","priority":0,"timeout_ms":0,"http":{"url":"http://crm.net/client-add","headers":{"Authorization":"Bearer t"},"secret":"whsec_…abcd"},"failure_policy":"unspecified","filter_json":{"id_clients":15},"disabled_reason":"","created_at":null,"updated_at":null,"ordering_policy":"unspecified","ordering_group":"","max_in_flight":0,"rate_per_second":0}"#
        );
    }
}
