//! `provctl handlers ...`: list, show, create, update, change status, delete, rotate the
//! secret and show run statistics; test runs are [`super::handler_test`].
//!
//! `update` sends a field mask naming exactly the fields given as flags. The `http` path
//! carries the URL and the headers together, so when only one of them is given the
//! handler is read first and the other is kept as it is. How a handler looks on screen
//! is [`super::handler_view`].

use provisioning_client::proto::{self, handler};

use super::args::{
    CreateHandlerArgs, HandlersCommand, IdArg, ListHandlersArgs, Output, StatsArgs, UpdateFields,
    UpdateHandlerArgs,
};
use super::handler_view::{handler_details, handler_details_with, handler_json, list_row};
use super::json::JsonObject;
use super::output::{millis_f64, Table};
use super::{to_timestamp, CliError, Context};

/// Handlers fetched per List call.
const PAGE_SIZE: u32 = 1000;

/// Runs one `handlers` subcommand.
pub async fn run(ctx: &mut Context, command: HandlersCommand) -> Result<(), CliError> {
    match command {
        HandlersCommand::List(args) => list(ctx, args).await,
        HandlersCommand::Get(IdArg { id }) => {
            let client = ctx.client().await?;
            let handler = client.get_handler(proto::GetHandlerRequest { id }).await?;
            // What the handler holds back now (queued behind a key, blocked keys).
            let held = client
                .log_stats(proto::LogStatsRequest {
                    handler_id: id,
                    ..Default::default()
                })
                .await?
                .handlers
                .into_iter()
                .find(|s| s.handler_id == id)
                .unwrap_or_default();
            match ctx.output {
                Output::Table => ctx.line(&handler_details_with(
                    &handler,
                    &[
                        ("Paused", held.paused.to_string()),
                        ("Queued", held.queued.to_string()),
                        ("Blocked keys", held.blocked_keys.to_string()),
                        ("Throttled", held.throttled.to_string()),
                    ],
                )),
                Output::Json => ctx.line(
                    &handler_json(&handler)
                        .uint("paused", held.paused)
                        .uint("queued", held.queued)
                        .uint("blocked_keys", held.blocked_keys)
                        .uint("throttled", held.throttled)
                        .to_line(),
                ),
            }
        }
        HandlersCommand::Create(args) => {
            let request = create_request(args);
            let handler = ctx.client().await?.create_handler(request).await?;
            print_handler(ctx, &handler)
        }
        HandlersCommand::Update(args) => update(ctx, args).await,
        HandlersCommand::Enable(IdArg { id }) => {
            set_status(ctx, id, proto::HandlerStatus::Enabled).await
        }
        HandlersCommand::Disable(IdArg { id }) => {
            set_status(ctx, id, proto::HandlerStatus::Disabled).await
        }
        HandlersCommand::Archive(IdArg { id }) => {
            set_status(ctx, id, proto::HandlerStatus::Archived).await
        }
        HandlersCommand::Delete(IdArg { id }) => {
            ctx.client()
                .await?
                .delete_handler(proto::DeleteHandlerRequest { id })
                .await?;
            match ctx.output {
                Output::Table => ctx.line(&format!("deleted handler {id}")),
                Output::Json => ctx.line(
                    &JsonObject::new()
                        .int("id", id)
                        .bool("deleted", true)
                        .to_line(),
                ),
            }
        }
        HandlersCommand::RotateSecret(IdArg { id }) => {
            let handler = ctx
                .client()
                .await?
                .rotate_secret(proto::RotateSecretRequest { id })
                .await?;
            print_handler(ctx, &handler)
        }
        HandlersCommand::Stats(args) => stats(ctx, args).await,
        HandlersCommand::Test(args) => super::handler_test::run(ctx, args).await,
    }
}

/// Lists every page.
async fn list(ctx: &mut Context, args: ListHandlersArgs) -> Result<(), CliError> {
    let ListHandlersArgs {
        event,
        phase,
        kind,
        status,
    } = args;
    let client = ctx.client().await?;
    let mut request = proto::ListHandlersRequest {
        event: event.unwrap_or_default(),
        phase: phase.map_or(0, |p| proto::Phase::from(p).into()),
        kind: kind.map_or(0, |k| proto::HandlerKind::from(k).into()),
        status: status.map_or(0, |s| proto::HandlerStatus::from(s).into()),
        page_size: PAGE_SIZE,
        page_token: String::new(),
    };
    let mut table = Table::new(&[
        "ID", "Priority", "Name", "Event", "Phase", "Status", "Handler",
    ])
    .right_align(&[0, 1]);
    loop {
        let page = client.list_handlers(request.clone()).await?;
        for handler in &page.handlers {
            match ctx.output {
                Output::Table => table.row(list_row(handler)),
                Output::Json => ctx.line(&handler_json(handler).to_line())?,
            }
        }
        if page.next_page_token.is_empty() || page.next_page_token == request.page_token {
            break;
        }
        request.page_token = page.next_page_token;
    }
    match ctx.output {
        Output::Table => ctx.line(&table.render()),
        Output::Json => Ok(()),
    }
}

async fn set_status(
    ctx: &mut Context,
    id: i64,
    status: proto::HandlerStatus,
) -> Result<(), CliError> {
    let request = proto::SetHandlerStatusRequest {
        id,
        status: status.into(),
    };
    let handler = ctx.client().await?.set_handler_status(request).await?;
    print_handler(ctx, &handler)
}

fn create_request(args: CreateHandlerArgs) -> proto::CreateHandlerRequest {
    let CreateHandlerArgs {
        name,
        event,
        phase,
        http,
        script,
        priority,
        status,
        timeout_ms,
        headers,
        failure_policy,
        filter,
        ordering_policy,
        ordering_group,
        max_in_flight,
        rate_per_second,
    } = args;
    let target = match (http, script) {
        (Some(url), _) => Some(proto::create_handler_request::Target::Http(
            proto::HttpTarget {
                url,
                headers: headers.into_iter().collect(),
                secret: String::new(),
            },
        )),
        (None, Some(path)) => Some(proto::create_handler_request::Target::Script(
            proto::ScriptTarget { path },
        )),
        (None, None) => None,
    };
    proto::CreateHandlerRequest {
        name,
        event,
        phase: proto::Phase::from(phase).into(),
        status: status.map_or(0, |s| proto::HandlerStatus::from(s).into()),
        priority,
        timeout_ms: timeout_ms.unwrap_or(0),
        target,
        failure_policy: failure_policy.map_or(0, |p| proto::FailurePolicy::from(p).into()),
        filter_json: filter.unwrap_or_default(),
        ordering_policy: ordering_policy.map_or(0, |p| proto::OrderingPolicy::from(p).into()),
        ordering_group: ordering_group.unwrap_or_default(),
        max_in_flight: max_in_flight.unwrap_or(0),
        rate_per_second: rate_per_second.unwrap_or(0),
    }
}

async fn update(ctx: &mut Context, args: UpdateHandlerArgs) -> Result<(), CliError> {
    let client = ctx.client().await?;
    let current = if needs_current(&args.fields) {
        Some(
            client
                .get_handler(proto::GetHandlerRequest { id: args.id })
                .await?,
        )
    } else {
        None
    };
    let request = update_request(args.id, args.fields, current.as_ref())?;
    let handler = client.update_handler(request).await?;
    print_handler(ctx, &handler)
}

/// Whether only one of URL and headers is given, so the other must be read first.
fn needs_current(fields: &UpdateFields) -> bool {
    fields.http.is_some() == fields.headers.is_empty()
}

/// The field-mask paths for the flags given, in the proto's field order.
fn update_paths(fields: &UpdateFields) -> Vec<String> {
    let given = [
        ("name", fields.name.is_some()),
        ("event", fields.event.is_some()),
        ("phase", fields.phase.is_some()),
        ("priority", fields.priority.is_some()),
        ("timeout_ms", fields.timeout_ms.is_some()),
        ("http", fields.http.is_some() || !fields.headers.is_empty()),
        ("script", fields.script.is_some()),
        ("failure_policy", fields.failure_policy.is_some()),
        ("filter_json", fields.filter.is_some()),
        ("ordering_policy", fields.ordering_policy.is_some()),
        ("ordering_group", fields.ordering_group.is_some()),
        ("max_in_flight", fields.max_in_flight.is_some()),
        ("rate_per_second", fields.rate_per_second.is_some()),
    ];
    given
        .iter()
        .filter(|(_, set)| *set)
        .map(|(path, _)| (*path).to_owned())
        .collect()
}

/// The Update request; `current` is the handler as stored, needed when [`needs_current`].
fn update_request(
    id: i64,
    fields: UpdateFields,
    current: Option<&proto::Handler>,
) -> Result<proto::UpdateHandlerRequest, CliError> {
    let paths = update_paths(&fields);
    let UpdateFields {
        name,
        event,
        phase,
        http,
        script,
        priority,
        timeout_ms,
        failure_policy,
        filter,
        headers,
        ordering_policy,
        ordering_group,
        max_in_flight,
        rate_per_second,
    } = fields;
    let current_http = current.and_then(|handler| match &handler.target {
        Some(handler::Target::Http(http)) => Some(http),
        Some(handler::Target::Script(_)) | None => None,
    });
    let target = if let Some(path) = script {
        Some(handler::Target::Script(proto::ScriptTarget { path }))
    } else if http.is_some() || !headers.is_empty() {
        let url = match (http, current_http) {
            (Some(url), _) => url,
            (None, Some(current)) => current.url.clone(),
            (None, None) => {
                return Err(CliError::Input(format!(
                    "handler {id} is not an HTTP handler: --header needs --http URL"
                )))
            }
        };
        let headers = if headers.is_empty() {
            current_http
                .map(|current| current.headers.clone())
                .unwrap_or_default()
        } else {
            headers.into_iter().collect()
        };
        Some(handler::Target::Http(proto::HttpTarget {
            url,
            headers,
            secret: String::new(),
        }))
    } else {
        None
    };
    let handler = proto::Handler {
        id,
        name: name.unwrap_or_default(),
        event: event.unwrap_or_default(),
        phase: phase.map_or(0, |p| proto::Phase::from(p).into()),
        priority: priority.unwrap_or(0),
        timeout_ms: timeout_ms.unwrap_or(0),
        target,
        failure_policy: failure_policy.map_or(0, |p| proto::FailurePolicy::from(p).into()),
        filter_json: filter.unwrap_or_default(),
        ordering_policy: ordering_policy.map_or(0, |p| proto::OrderingPolicy::from(p).into()),
        ordering_group: ordering_group.unwrap_or_default(),
        max_in_flight: max_in_flight.unwrap_or(0),
        rate_per_second: rate_per_second.unwrap_or(0),
        ..proto::Handler::default()
    };
    Ok(proto::UpdateHandlerRequest {
        handler: Some(handler),
        update_mask: Some(prost_types::FieldMask { paths }),
    })
}

async fn stats(ctx: &mut Context, args: StatsArgs) -> Result<(), CliError> {
    let StatsArgs { id, from, to } = args;
    let request = proto::LogStatsRequest {
        handler_id: id.unwrap_or(0),
        from: from.map(to_timestamp),
        to: to.map(to_timestamp),
    };
    let reply = ctx.client().await?.log_stats(request).await?;
    let mut table = Table::new(&[
        "ID",
        "Name",
        "Total",
        "Success",
        "Fail",
        "Success %",
        "p50",
        "p95",
        "p99",
        "Paused",
        "Queued",
        "Blocked keys",
        "Throttled",
    ])
    .right_align(&[0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
    for s in &reply.handlers {
        match ctx.output {
            Output::Table => table.row(vec![
                s.handler_id.to_string(),
                s.handler_name.clone(),
                s.total.to_string(),
                s.success.to_string(),
                s.fail.to_string(),
                if s.total == 0 {
                    "-".to_owned()
                } else {
                    format!("{:.1}%", s.success_rate * 100.0)
                },
                millis_f64(s.p50_ms),
                millis_f64(s.p95_ms),
                millis_f64(s.p99_ms),
                s.paused.to_string(),
                s.queued.to_string(),
                s.blocked_keys.to_string(),
                s.throttled.to_string(),
            ]),
            Output::Json => ctx.line(
                &JsonObject::new()
                    .int("handler_id", s.handler_id)
                    .str("handler_name", &s.handler_name)
                    .uint("total", s.total)
                    .uint("success", s.success)
                    .uint("fail", s.fail)
                    .float("success_rate", s.success_rate)
                    .float("p50_ms", s.p50_ms)
                    .float("p95_ms", s.p95_ms)
                    .float("p99_ms", s.p99_ms)
                    .uint("paused", s.paused)
                    .uint("queued", s.queued)
                    .uint("blocked_keys", s.blocked_keys)
                    .uint("throttled", s.throttled)
                    .to_line(),
            )?,
        }
    }
    match ctx.output {
        Output::Table => ctx.line(&table.render()),
        Output::Json => Ok(()),
    }
}

/// Prints one handler: a `key: value` view, or one JSON line.
fn print_handler(ctx: &mut Context, handler: &proto::Handler) -> Result<(), CliError> {
    match ctx.output {
        Output::Table => ctx.line(&handler_details(handler)),
        Output::Json => ctx.line(&handler_json(handler).to_line()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::args::{PhaseArg, PolicyArg};

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
    fn field_mask_names_exactly_the_flags_given() {
        let fields = UpdateFields {
            name: Some("n".into()),
            priority: Some(3),
            filter: Some(String::new()),
            failure_policy: Some(PolicyArg::FailOpen),
            ..UpdateFields::default()
        };
        assert_eq!(
            update_paths(&fields),
            ["name", "priority", "failure_policy", "filter_json"]
        );
        let request = update_request(7, fields, None).unwrap();
        let handler = request.handler.unwrap();
        assert_eq!(
            (handler.id, handler.name.as_str(), handler.priority),
            (7, "n", 3)
        );
        assert_eq!(
            handler.failure_policy,
            i32::from(proto::FailurePolicy::FailOpen)
        );
        assert!(handler.target.is_none());
    }

    #[test]
    fn headers_alone_keep_the_current_url() {
        let fields = UpdateFields {
            headers: vec![("X-A".into(), "1".into())],
            ..UpdateFields::default()
        };
        assert!(needs_current(&fields));
        assert_eq!(update_paths(&fields), ["http"]);
        let request = update_request(2, fields, Some(&http_handler())).unwrap();
        let Some(handler::Target::Http(http)) = request.handler.unwrap().target else {
            panic!("not http")
        };
        assert_eq!(http.url, "http://crm.net/client-add");
        assert_eq!(http.headers.len(), 1);
        assert_eq!(http.headers["X-A"], "1");
    }

    #[test]
    fn url_alone_keeps_the_current_headers() {
        let fields = UpdateFields {
            http: Some("http://new/".into()),
            phase: Some(PhaseArg::Before),
            ..UpdateFields::default()
        };
        assert!(needs_current(&fields));
        assert_eq!(update_paths(&fields), ["phase", "http"]);
        let request = update_request(2, fields, Some(&http_handler())).unwrap();
        let Some(handler::Target::Http(http)) = request.handler.unwrap().target else {
            panic!("not http")
        };
        assert_eq!(http.url, "http://new/");
        assert_eq!(http.headers["Authorization"], "Bearer t");
    }

    #[test]
    fn url_and_headers_together_need_no_read() {
        let fields = UpdateFields {
            http: Some("http://new/".into()),
            headers: vec![("X-A".into(), "1".into())],
            ..UpdateFields::default()
        };
        assert!(!needs_current(&fields));
    }

    #[test]
    fn headers_on_a_script_handler_are_refused() {
        let script = proto::Handler {
            target: Some(handler::Target::Script(proto::ScriptTarget {
                path: "a.sh".into(),
            })),
            ..proto::Handler::default()
        };
        let fields = UpdateFields {
            headers: vec![("X-A".into(), "1".into())],
            ..UpdateFields::default()
        };
        let err = update_request(4, fields, Some(&script)).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }
}
