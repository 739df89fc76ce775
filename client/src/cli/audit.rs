//! `provctl audit [--handler ID]`: who changed handlers and event types, newest first.
//! The table shows time, actor, action, handler and which fields changed; `--output
//! json` prints each entry whole, with its before/after snapshots.

use provisioning_client::proto;

use super::args::{AuditArgs, Output};
use super::json::JsonObject;
use super::output::{rfc3339, Table};
use super::{from_timestamp, CliError, Context};

/// Runs `provctl audit`.
pub async fn run(ctx: &mut Context, args: AuditArgs) -> Result<(), CliError> {
    let AuditArgs { handler_id, limit } = args;
    let client = ctx.client().await?;
    let mut entries = Vec::new();
    let mut page_token = String::new();
    while entries.len() < limit {
        let reply = client
            .list_audit(proto::ListAuditRequest {
                handler_id: handler_id.unwrap_or_default(),
                page_size: (limit - entries.len()).min(1000) as u32,
                page_token,
            })
            .await?;
        entries.extend(reply.entries);
        page_token = reply.next_page_token;
        if page_token.is_empty() {
            break;
        }
    }
    entries.truncate(limit);
    let mut table = Table::new(&["Time", "Actor", "Action", "Handler", "Changed"]);
    for entry in &entries {
        let at = from_timestamp(entry.created_at.as_ref());
        match ctx.output {
            Output::Table => table.row(vec![
                at.map(rfc3339).unwrap_or_default(),
                entry.actor.clone(),
                entry.action.clone(),
                if entry.handler_id == 0 {
                    "-".to_owned()
                } else {
                    entry.handler_id.to_string()
                },
                changed_fields(&entry.before_json, &entry.after_json),
            ]),
            Output::Json => ctx.line(
                &JsonObject::new()
                    .int("id", entry.id)
                    .time("created_at", at)
                    .str("actor", &entry.actor)
                    .str("action", &entry.action)
                    .int("handler_id", entry.handler_id)
                    .raw("before", &entry.before_json)
                    .raw("after", &entry.after_json)
                    .to_line(),
            )?,
        }
    }
    match ctx.output {
        Output::Table => ctx.line(&table.render()),
        Output::Json => Ok(()),
    }
}

/// The top-level fields whose values differ between two snapshots, comma-separated.
fn changed_fields(before: &str, after: &str) -> String {
    let parse = |text: &str| {
        serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text).unwrap_or_default()
    };
    let (before, after) = (parse(before), parse(after));
    let mut keys: Vec<&String> = before.keys().chain(after.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|key| before.get(*key) != after.get(*key))
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_fields_lists_the_differing_keys() {
        assert_eq!(
            changed_fields(r#"{"a": 1, "b": 2}"#, r#"{"a": 1, "b": 3, "c": 4}"#),
            "b, c"
        );
        assert_eq!(changed_fields("", r#"{"x": 1}"#), "x");
    }
}
