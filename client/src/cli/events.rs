//! `provctl events emit` for one event (the catalogue is [`super::event_types`]).
//!
//! The `--data` text goes to the server exactly as typed (it was only validated). For a
//! BEFORE event the reply is the chain's verdict: decision, reason, final data and what
//! each handler did. Streaming many events from a file is [`super::emit_file`].

use provisioning_client::proto;

use super::args::{EmitArgs, EventsCommand, Output};
use super::emit_file;
use super::json::{reformat, JsonObject};
use super::output::{capitalize, enum_name, millis, Table};
use super::{CliError, Context};

/// Runs one `events` subcommand.
pub async fn run(ctx: &mut Context, command: EventsCommand) -> Result<(), CliError> {
    match command {
        EventsCommand::Emit(args) => emit(ctx, args).await,
    }
}

async fn emit(ctx: &mut Context, args: EmitArgs) -> Result<(), CliError> {
    let EmitArgs {
        event,
        data,
        phase,
        idempotency_key,
        ordering_key,
        file,
        no_retry,
    } = args;
    if let Some(path) = file {
        return emit_file::run(ctx, &path).await;
    }
    // clap requires both unless --file is given.
    let (Some(event), Some(data)) = (event, data) else {
        return Err(CliError::Input(
            "an EVENT and --data are required without --file".to_owned(),
        ));
    };
    let phase = proto::Phase::from(phase);
    let request = proto::EmitRequest {
        event,
        phase: phase.into(),
        data_json: data,
        idempotency_key: idempotency_key.unwrap_or_default(),
        ordering_key: ordering_key.unwrap_or_default(),
    };
    let mut client = ctx.client().await?.clone();
    if no_retry {
        client = client.with_retry_policy(provisioning_client::RetryPolicy::NONE);
    }
    let reply = client.emit(request).await?;
    let before = phase == proto::Phase::Before;
    match ctx.output {
        Output::Json => ctx.line(&emit_json(&reply, before).to_line()),
        Output::Table => ctx.line(&emit_text(&reply, before)),
    }
}

pub(super) fn decision_name(value: i32) -> String {
    enum_name(value, "DECISION_", proto::Decision::as_str_name)
}

pub(super) fn outcome_name(value: i32) -> String {
    enum_name(
        value,
        "HANDLER_OUTCOME_",
        proto::HandlerOutcome::as_str_name,
    )
}

/// The reply for people: the event id, then for BEFORE the verdict and per-handler table.
fn emit_text(reply: &proto::EmitResponse, before: bool) -> String {
    let mut lines = vec![if reply.duplicate {
        format!("event {} duplicate", reply.event_id)
    } else {
        format!("event {}", reply.event_id)
    }];
    if !before {
        lines.push(format!("deliveries: {}", reply.deliveries));
        return lines.join("\n");
    }
    lines.push(format!("decision: {}", decision_name(reply.decision)));
    if !reply.reason.is_empty() {
        lines.push(format!("reason: {}", reply.reason));
    }
    lines.push("data:".to_owned());
    lines.push(pretty_data(&reply.data_json));
    if !reply.results.is_empty() {
        let mut table =
            Table::new(&["ID", "Name", "Outcome", "Error", "Duration"]).right_align(&[0, 4]);
        for result in &reply.results {
            table.row(vec![
                result.handler_id.to_string(),
                result.handler_name.clone(),
                capitalize(&outcome_name(result.outcome)),
                result.error.clone(),
                millis(result.duration_ms),
            ]);
        }
        lines.push(String::new());
        lines.push(table.render());
    }
    lines.join("\n")
}

/// Indented data when it is valid JSON, else the text as received.
pub(super) fn pretty_data(text: &str) -> String {
    if serde_json::from_str::<&serde_json::value::RawValue>(text).is_ok() {
        reformat(text, true)
    } else {
        text.to_owned()
    }
}

/// The reply as JSON; BEFORE-only fields appear only for BEFORE events.
fn emit_json(reply: &proto::EmitResponse, before: bool) -> JsonObject {
    let object = JsonObject::new()
        .int("event_id", reply.event_id)
        .bool("duplicate", reply.duplicate);
    if !before {
        return object.int("deliveries", reply.deliveries);
    }
    let results = reply.results.iter().map(|result| {
        JsonObject::new()
            .int("handler_id", result.handler_id)
            .str("handler_name", &result.handler_name)
            .str("outcome", &outcome_name(result.outcome))
            .str("error", &result.error)
            .int("duration_ms", result.duration_ms)
    });
    object
        .str("decision", &decision_name(reply.decision))
        .raw("data_json", &reply.data_json)
        .str("reason", &reply.reason)
        .list("results", results)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn before_reply() -> proto::EmitResponse {
        proto::EmitResponse {
            event_id: 41,
            decision: proto::Decision::Forbidden.into(),
            data_json: r#"{"id":9007199254740993,"amount":12.345678901234567890}"#.into(),
            reason: "blocked by CRM".into(),
            results: vec![proto::HandlerResult {
                handler_id: 3,
                handler_name: "crm".into(),
                outcome: proto::HandlerOutcome::Forbade.into(),
                error: "blocked by CRM".into(),
                duration_ms: 12,
            }],
            ..proto::EmitResponse::default()
        }
    }

    #[test]
    fn after_reply_shows_id_and_duplicate() {
        let reply = proto::EmitResponse {
            event_id: 7,
            duplicate: true,
            ..proto::EmitResponse::default()
        };
        assert_eq!(emit_text(&reply, false), "event 7 duplicate\ndeliveries: 0");
        assert_eq!(
            emit_json(&reply, false).to_line(),
            r#"{"event_id":7,"duplicate":true,"deliveries":0}"#
        );
    }

    #[test]
    fn before_reply_shows_the_verdict_with_exact_data() {
        let text = emit_text(&before_reply(), true);
        assert!(
            text.starts_with("event 41\ndecision: forbidden\nreason: blocked by CRM\ndata:\n{\n"),
            "{text}"
        );
        assert!(
            text.contains("\"id\": 9007199254740993,\n  \"amount\": 12.345678901234567890\n}"),
            "{text}"
        );
        assert!(
            text.ends_with("3  crm   Forbade  blocked by CRM     12 ms"),
            "{text}"
        );
        let json = emit_json(&before_reply(), true).to_line();
        assert!(json.contains(r#""decision":"forbidden","data_json":{"id":9007199254740993,"amount":12.345678901234567890}"#));
        assert!(
            json.contains(r#""results":[{"handler_id":3,"handler_name":"crm","outcome":"forbade""#)
        );
    }
}
