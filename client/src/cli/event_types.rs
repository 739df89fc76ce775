//! `provctl event-types ...`: the event catalogue (list, show, create, update), with
//! each type's data schema.
//!
//! A schema is read from a file (`--schema FILE`, `-` for standard input), checked
//! locally to be a JSON object and sent as written; the server checks that it is a
//! valid draft 2020-12 schema. `show` prints the schema indented (`--output json`: the
//! event type as one JSON line, the schema embedded as JSON).

use std::io::Read;
use std::path::Path;

use provisioning_client::proto;

use super::args::{EventTypeChanges, EventTypesCommand, Output, UpdateEventTypeArgs};
use super::json::{reformat, JsonObject};
use super::output::{details, Table};
use super::{CliError, Context};

/// Runs one `event-types` subcommand.
pub async fn run(ctx: &mut Context, command: EventTypesCommand) -> Result<(), CliError> {
    match command {
        EventTypesCommand::List => {
            let reply = ctx
                .client()
                .await?
                .list_event_types(proto::ListEventTypesRequest {})
                .await?;
            let mut table = Table::new(&["Name", "Builtin", "Schema", "Description"]);
            for event_type in &reply.event_types {
                match ctx.output {
                    Output::Table => table.row(list_row(event_type)),
                    Output::Json => ctx.line(&event_type_json(event_type).to_line())?,
                }
            }
            match ctx.output {
                Output::Table => ctx.line(&table.render()),
                Output::Json => Ok(()),
            }
        }
        EventTypesCommand::Show { name } => {
            let reply = ctx
                .client()
                .await?
                .list_event_types(proto::ListEventTypesRequest {})
                .await?;
            let event_type = reply
                .event_types
                .into_iter()
                .find(|t| t.name == name)
                .ok_or_else(|| {
                    CliError::Failed(format!(
                        "no event type {name:?} (see provctl event-types list)"
                    ))
                })?;
            print(ctx, &event_type)
        }
        EventTypesCommand::Create {
            name,
            description,
            schema,
        } => {
            let schema_json = match schema {
                Some(path) => read_schema(&path)?,
                None => String::new(),
            };
            let request = proto::CreateEventTypeRequest {
                name,
                description,
                schema_json,
            };
            let event_type = ctx.client().await?.create_event_type(request).await?;
            print(ctx, &event_type)
        }
        EventTypesCommand::Update(args) => {
            let request = update_request(args)?;
            let event_type = ctx.client().await?.update_event_type(request).await?;
            print(ctx, &event_type)
        }
    }
}

/// The UpdateEventType request: the mask names exactly the flags given.
fn update_request(args: UpdateEventTypeArgs) -> Result<proto::UpdateEventTypeRequest, CliError> {
    let UpdateEventTypeArgs {
        name,
        changes:
            EventTypeChanges {
                description,
                schema,
                no_schema,
            },
    } = args;
    let mut paths = Vec::new();
    if description.is_some() {
        paths.push("description".to_owned());
    }
    let schema_json = match schema {
        Some(path) => Some(read_schema(&path)?),
        None if no_schema => Some(String::new()),
        None => None,
    };
    if schema_json.is_some() {
        paths.push("schema_json".to_owned());
    }
    Ok(proto::UpdateEventTypeRequest {
        event_type: Some(proto::EventType {
            name,
            description: description.unwrap_or_default(),
            builtin: false,
            schema_json: schema_json.unwrap_or_default(),
        }),
        update_mask: Some(prost_types::FieldMask { paths }),
    })
}

/// Reads a schema file (`-` = standard input) and checks that it holds a JSON object;
/// the text is sent as it is.
fn read_schema(path: &Path) -> Result<String, CliError> {
    let text = if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|source| CliError::Io {
                what: "cannot read the schema from standard input".to_owned(),
                source,
            })?;
        text
    } else {
        std::fs::read_to_string(path).map_err(|source| CliError::Io {
            what: format!("cannot read the schema file {}", path.display()),
            source,
        })?
    };
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(serde_json::Value::Object(_)) => Ok(text),
        Ok(_) => Err(CliError::Input(format!(
            "{}: a schema is a JSON object ({{\"type\": \"object\", ...}})",
            path.display()
        ))),
        Err(err) => Err(CliError::Input(format!(
            "{}: invalid JSON: {err}",
            path.display()
        ))),
    }
}

fn print(ctx: &mut Context, event_type: &proto::EventType) -> Result<(), CliError> {
    match ctx.output {
        Output::Table => ctx.line(&event_type_text(event_type)),
        Output::Json => ctx.line(&event_type_json(event_type).to_line()),
    }
}

fn list_row(event_type: &proto::EventType) -> Vec<String> {
    vec![
        event_type.name.clone(),
        yes_no(event_type.builtin),
        yes_no(!event_type.schema_json.is_empty()),
        event_type.description.clone(),
    ]
}

fn yes_no(value: bool) -> String {
    if value { "yes" } else { "no" }.to_owned()
}

/// One event type for people: its fields, then the schema indented.
fn event_type_text(event_type: &proto::EventType) -> String {
    let fields = details(&[
        ("name", event_type.name.clone()),
        ("builtin", yes_no(event_type.builtin)),
        ("description", event_type.description.clone()),
    ]);
    if event_type.schema_json.is_empty() {
        return format!("{fields}\nschema: none (any JSON object is accepted)");
    }
    format!(
        "{fields}\nschema:\n{}",
        reformat(&event_type.schema_json, true)
    )
}

/// One event type as JSON; the schema embedded as JSON (`null` when there is none).
fn event_type_json(event_type: &proto::EventType) -> JsonObject {
    JsonObject::new()
        .str("name", &event_type.name)
        .str("description", &event_type.description)
        .bool("builtin", event_type.builtin)
        .raw("schema", &event_type.schema_json)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_schema() -> proto::EventType {
        proto::EventType {
            name: "clients.create".into(),
            description: "A client was created".into(),
            builtin: true,
            schema_json: r#"{"type":"object","required":["email"]}"#.into(),
        }
    }

    #[test]
    fn show_prints_the_schema_indented() {
        let text = event_type_text(&with_schema());
        assert!(text.starts_with("name:        clients.create\n"), "{text}");
        assert!(
            text.ends_with(
                "schema:\n{\n  \"type\": \"object\",\n  \"required\": [\n    \"email\"\n  ]\n}"
            ),
            "{text}"
        );
        let none = proto::EventType {
            schema_json: String::new(),
            ..with_schema()
        };
        assert!(event_type_text(&none).ends_with("schema: none (any JSON object is accepted)"));
    }

    #[test]
    fn json_embeds_the_schema() {
        assert_eq!(
            event_type_json(&with_schema()).to_line(),
            r#"{"name":"clients.create","description":"A client was created","builtin":true,"schema":{"type":"object","required":["email"]}}"#
        );
    }

    #[test]
    fn update_masks_name_only_the_flags_given() {
        let request = update_request(UpdateEventTypeArgs {
            name: "clients.create".into(),
            changes: EventTypeChanges {
                no_schema: true,
                ..EventTypeChanges::default()
            },
        })
        .unwrap();
        assert_eq!(request.update_mask.unwrap().paths, ["schema_json"]);
        assert_eq!(request.event_type.unwrap().schema_json, "");
    }
}
