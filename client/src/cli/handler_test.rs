//! `provctl handlers test ID --data JSON | --log-id N`: runs one handler once, now, and
//! prints what happened: status, error, HTTP status or exit code, duration, the response,
//! and for a BEFORE handler its outcome, the decision and the data it returned.
//!
//! A run that failed (or forbade) is still a successful command: the test did what was
//! asked and the output says how the handler fared; `--output json` gives it to scripts.

use provisioning_client::proto;

use super::args::{Output, TestHandlerArgs};
use super::events::{decision_name, outcome_name, pretty_data};
use super::json::JsonObject;
use super::output::{capitalize, details, enum_name, millis};
use super::{CliError, Context};

/// Runs `handlers test`.
pub async fn run(ctx: &mut Context, args: TestHandlerArgs) -> Result<(), CliError> {
    let request = request(args)?;
    let reply = ctx.client().await?.test_handler(request).await?;
    match ctx.output {
        Output::Table => ctx.line(&text(&reply)),
        Output::Json => ctx.line(&json(&reply).to_line()),
    }
}

fn request(args: TestHandlerArgs) -> Result<proto::TestHandlerRequest, CliError> {
    let TestHandlerArgs { id, data, log_id } = args;
    let input = match (data, log_id) {
        (Some(data), _) => proto::test_handler_request::Input::DataJson(data),
        (None, Some(log_id)) => proto::test_handler_request::Input::LogId(log_id),
        // clap requires exactly one of them.
        (None, None) => return Err(CliError::Input("--data or --log-id is required".to_owned())),
    };
    Ok(proto::TestHandlerRequest {
        id,
        input: Some(input),
    })
}

fn status_name(value: i32) -> String {
    enum_name(value, "RUN_STATUS_", proto::RunStatus::as_str_name)
}

/// Whether the reply is about a BEFORE handler (only those have an outcome).
fn is_before(reply: &proto::TestHandlerResponse) -> bool {
    reply.outcome != proto::HandlerOutcome::Unspecified as i32
}

/// The reply for people: `key: value` lines, then the response and, for BEFORE, the
/// data returned, indented.
fn text(reply: &proto::TestHandlerResponse) -> String {
    let mut fields = vec![
        ("status", capitalize(&status_name(reply.status))),
        ("error", reply.error.clone()),
    ];
    if is_before(reply) {
        fields.push(("outcome", capitalize(&outcome_name(reply.outcome))));
        fields.push(("decision", decision_name(reply.decision)));
    }
    if reply.http_status != 0 {
        fields.push(("http status", reply.http_status.to_string()));
    }
    if let Some(code) = reply.exit_code {
        fields.push(("exit code", code.to_string()));
    }
    fields.push(("duration", millis(reply.duration_ms)));
    fields.push((
        "log",
        if reply.log_id == 0 {
            "queued (the database was unreachable)".to_owned()
        } else {
            format!("{} (provctl logs show {})", reply.log_id, reply.log_id)
        },
    ));
    let mut lines = vec![details(&fields)];
    if !reply.response.is_empty() {
        lines.push("response:".to_owned());
        lines.push(reply.response.clone());
    }
    if is_before(reply) {
        lines.push("data returned:".to_owned());
        lines.push(pretty_data(&reply.data_returned_json));
    }
    lines.join("\n")
}

/// The reply as JSON; BEFORE-only fields appear only for BEFORE handlers.
fn json(reply: &proto::TestHandlerResponse) -> JsonObject {
    let object = JsonObject::new()
        .int("log_id", reply.log_id)
        .int("event_id", reply.event_id)
        .str("status", &status_name(reply.status))
        .str("error", &reply.error)
        .int("duration_ms", reply.duration_ms)
        .str("response", &reply.response)
        .int("http_status", reply.http_status)
        .opt_int("exit_code", reply.exit_code.map(i64::from))
        .raw("data_sent_json", &reply.data_sent_json);
    if !is_before(reply) {
        return object;
    }
    object
        .str("outcome", &outcome_name(reply.outcome))
        .str("decision", &decision_name(reply.decision))
        .raw("data_returned_json", &reply.data_returned_json)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn before_reply() -> proto::TestHandlerResponse {
        proto::TestHandlerResponse {
            log_id: 12,
            event_id: 40,
            status: proto::RunStatus::Success.into(),
            duration_ms: 3,
            response: r#"{"id":1,"vip":true}"#.into(),
            http_status: 200,
            data_sent_json: r#"{"id":1}"#.into(),
            outcome: proto::HandlerOutcome::Modified.into(),
            decision: proto::Decision::Allowed.into(),
            data_returned_json: r#"{"id":1,"vip":true}"#.into(),
            ..Default::default()
        }
    }

    #[test]
    fn before_results_show_outcome_decision_and_data() {
        let text = text(&before_reply());
        assert!(text.starts_with("status:      Success\noutcome:     Modified\ndecision:    allowed\nhttp status: 200\n"), "{text}");
        assert!(
            text.contains("log:         12 (provctl logs show 12)"),
            "{text}"
        );
        assert!(
            text.ends_with("data returned:\n{\n  \"id\": 1,\n  \"vip\": true\n}"),
            "{text}"
        );
        let json = json(&before_reply()).to_line();
        assert!(json.ends_with(r#""outcome":"modified","decision":"allowed","data_returned_json":{"id":1,"vip":true}}"#), "{json}");
    }

    #[test]
    fn after_results_have_no_before_fields() {
        let reply = proto::TestHandlerResponse {
            status: proto::RunStatus::Fail.into(),
            error: "script exited with code 3".into(),
            exit_code: Some(3),
            log_id: 7,
            ..Default::default()
        };
        let text = text(&reply);
        assert!(
            text.starts_with(
                "status:    Fail\nerror:     script exited with code 3\nexit code: 3\n"
            ),
            "{text}"
        );
        assert!(!text.contains("decision"), "{text}");
        assert!(!json(&reply).to_line().contains("outcome"));
    }
}
