//! `provctl logs ...`: search, show, tail, retry and purge execution logs.
//!
//! Rows look like the seeds' Execution Logs tab (`12/20/2016 13:45:15 +0000`, `After`,
//! `Accounts Create`, `1 ms`). Search and tail print JSON lines as rows arrive; a search
//! table is printed once complete (its widths depend on every row), while tail prints
//! fixed-width rows under one header. Tail survives falling behind: on RESOURCE_EXHAUSTED
//! ("lagged") it resumes from the last row it printed.

use provisioning_client::proto;

use super::args::{LogFilterArgs, LogsCommand, Output, SearchArgs, TailArgs};
use super::json::JsonObject;
use super::output::{
    capitalize, enum_name, event_title, log_date, millis, rfc3339, truncate, Table,
};
use super::{from_timestamp, to_timestamp, CliError, Context};

/// The server's row limit when none is given.
const DEFAULT_LIMIT: u32 = 100;

/// Longest error shown in a table cell; `logs show` has the whole text.
const ERROR_WIDTH: usize = 60;

/// Column widths of `logs tail`, which cannot measure rows that have not come yet.
/// Fixed column widths of the live tail (ID, Date, Event type, Event, Status, Name,
/// Error, Duration): the header is printed once, so every cell is cut to its width with
/// an ellipsis and the columns never drift.
const TAIL_WIDTHS: [usize; 8] = [10, 25, 10, 24, 7, 20, 40, 8];

/// Runs one `logs` subcommand.
pub async fn run(ctx: &mut Context, command: LogsCommand) -> Result<(), CliError> {
    match command {
        LogsCommand::Search(args) => search(ctx, args).await,
        LogsCommand::Show { id } => {
            let log = ctx
                .client()
                .await?
                .get_log(proto::GetLogRequest { id })
                .await?;
            match ctx.output {
                Output::Table => ctx.line(&log_json(&log).to_pretty()),
                Output::Json => ctx.line(&log_json(&log).to_line()),
            }
        }
        LogsCommand::Tail(args) => tail(ctx, args).await,
        LogsCommand::Retry {
            log_id: None,
            handler: Some(handler_id),
            since,
            ..
        } => {
            let request = proto::RetryFailedRequest {
                handler_id,
                since: since.map(to_timestamp),
            };
            let reply = ctx.client().await?.retry_failed(request).await?;
            match ctx.output {
                Output::Table => ctx.line(&format!(
                    "retry scheduled: {} deliveries of handler {handler_id}",
                    reply.scheduled
                )),
                Output::Json => ctx.line(
                    &JsonObject::new()
                        .uint("scheduled", reply.scheduled)
                        .to_line(),
                ),
            }
        }
        LogsCommand::Retry { log_id, resend, .. } => {
            let log_id = log_id.unwrap_or_default();
            let reply = ctx
                .client()
                .await?
                .retry(proto::RetryRequest { log_id, resend })
                .await?;
            match ctx.output {
                Output::Table => {
                    ctx.line(&format!("retry scheduled: delivery {}", reply.delivery_id))
                }
                Output::Json => ctx.line(
                    &JsonObject::new()
                        .int("delivery_id", reply.delivery_id)
                        .to_line(),
                ),
            }
        }
        LogsCommand::Skip { log_id } => {
            let reply = ctx
                .client()
                .await?
                .skip(proto::SkipRequest { log_id })
                .await?;
            match ctx.output {
                Output::Table => ctx.line(&format!(
                    "skipped: delivery {} (logged as run {})",
                    reply.delivery_id, reply.log_id
                )),
                Output::Json => ctx.line(
                    &JsonObject::new()
                        .int("delivery_id", reply.delivery_id)
                        .int("log_id", reply.log_id)
                        .to_line(),
                ),
            }
        }
        LogsCommand::Purge { older_than } => {
            let request = proto::PurgeRequest {
                older_than: Some(to_timestamp(older_than)),
            };
            let reply = ctx.client().await?.purge(request).await?;
            match ctx.output {
                Output::Table => ctx.line(&format!(
                    "deleted {} runs older than {}",
                    reply.deleted,
                    rfc3339(older_than)
                )),
                Output::Json => {
                    ctx.line(&JsonObject::new().uint("deleted", reply.deleted).to_line())
                }
            }
        }
    }
}

async fn search(ctx: &mut Context, args: SearchArgs) -> Result<(), CliError> {
    let SearchArgs {
        filter,
        limit,
        cursor,
    } = args;
    let request = proto::SearchLogsRequest {
        filter: Some(log_filter(filter)),
        limit: limit.unwrap_or(0),
        cursor: cursor.unwrap_or_default(),
    };
    let limit = match request.limit {
        0 => DEFAULT_LIMIT,
        n => n,
    };
    let mut rows = ctx.client().await?.search_logs(request).await?;
    let mut table = log_table();
    let mut count = 0u32;
    let mut last_cursor = String::new();
    while let Some(entry) = rows
        .message()
        .await
        .map_err(provisioning_client::ClientError::from)?
    {
        count += 1;
        let log = entry.log.unwrap_or_default();
        match ctx.output {
            Output::Table => table.row(log_row(&log)),
            Output::Json => ctx.line(&log_json(&log).str("cursor", &entry.cursor).to_line())?,
        }
        last_cursor = entry.cursor;
    }
    if ctx.output == Output::Table {
        ctx.line(&table.render())?;
        if count >= limit && !last_cursor.is_empty() {
            eprintln!("next cursor: {last_cursor}");
        }
    }
    Ok(())
}

async fn tail(ctx: &mut Context, args: TailArgs) -> Result<(), CliError> {
    let TailArgs {
        filter,
        backlog,
        cursor,
    } = args;
    let mut request = proto::TailLogsRequest {
        filter: Some(log_filter(filter)),
        backlog: backlog.unwrap_or(0),
        cursor: cursor.unwrap_or_default(),
    };
    let client = ctx.client().await?;
    let table = log_table();
    if ctx.output == Output::Table {
        ctx.line(&table.header_line(&TAIL_WIDTHS))?;
    }
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let mut rows = client.tail_logs(request.clone()).await?;
        let ended = loop {
            let message = tokio::select! {
                _ = &mut ctrl_c => return Ok(()),
                message = rows.message() => message,
            };
            match message {
                Ok(Some(entry)) => {
                    let log = entry.log.unwrap_or_default();
                    match ctx.output {
                        Output::Table => ctx.line(&tail_line(&table, &log))?,
                        Output::Json => {
                            ctx.line(&log_json(&log).str("cursor", &entry.cursor).to_line())?
                        }
                    }
                    request.cursor = entry.cursor;
                }
                Ok(None) => break None,
                Err(status) => break Some(status),
            }
        };
        match ended {
            None => return Ok(()),
            Some(status) if status.code() == tonic::Code::ResourceExhausted => {
                eprintln!(
                    "provctl: fell behind ({}); resuming from the last row printed",
                    status.message()
                );
            }
            Some(status) => return Err(provisioning_client::ClientError::from(status).into()),
        }
    }
}

/// The proto filter from the flags; absent flags mean "any".
fn log_filter(args: LogFilterArgs) -> proto::LogFilter {
    let LogFilterArgs {
        status,
        phase,
        events,
        handler,
        data,
        contains,
        error,
        from,
        to,
        attempt,
        event_id,
    } = args;
    proto::LogFilter {
        status: status.map_or(0, |s| proto::RunStatus::from(s).into()),
        phase: phase.map_or(0, |p| proto::Phase::from(p).into()),
        events,
        handler_id: handler.unwrap_or(0),
        data_contains: data.unwrap_or_default(),
        data_json_contains: contains.unwrap_or_default(),
        error_contains: error.unwrap_or_default(),
        from: from.map(to_timestamp),
        to: to.map(to_timestamp),
        attempt: attempt.unwrap_or(0),
        event_id: event_id.unwrap_or(0),
    }
}

/// One live-tail line: every cell cut to its [`TAIL_WIDTHS`] width.
fn tail_line(table: &Table, log: &proto::ExecutionLog) -> String {
    let row: Vec<String> = log_row(log)
        .iter()
        .zip(TAIL_WIDTHS)
        .map(|(cell, width)| truncate(cell, width))
        .collect();
    table.row_line(&row, &TAIL_WIDTHS)
}

fn log_table() -> Table {
    Table::new(&[
        "ID",
        "Date",
        "Event type",
        "Event",
        "Status",
        "Name",
        "Error",
        "Duration",
    ])
    .right_align(&[0])
}

/// A row of the seeds' Execution Logs tab; a test run (HandlerService.Test) has
/// ` (test)` after the handler's name.
fn log_row(log: &proto::ExecutionLog) -> Vec<String> {
    let name = if log.test {
        format!("{} (test)", log.handler_name)
    } else {
        log.handler_name.clone()
    };
    vec![
        log.id.to_string(),
        log_date(from_timestamp(log.created_at.as_ref())),
        capitalize(&enum_name(log.phase, "PHASE_", proto::Phase::as_str_name)),
        event_title(&log.event),
        capitalize(&enum_name(
            log.status,
            "RUN_STATUS_",
            proto::RunStatus::as_str_name,
        )),
        name,
        truncate(&log.error, ERROR_WIDTH),
        millis(log.duration_ms),
    ]
}

/// A run as JSON, fields named and ordered as in the proto, data embedded as JSON.
fn log_json(log: &proto::ExecutionLog) -> JsonObject {
    JsonObject::new()
        .int("id", log.id)
        .time("created_at", from_timestamp(log.created_at.as_ref()))
        .str(
            "phase",
            &enum_name(log.phase, "PHASE_", proto::Phase::as_str_name),
        )
        .str("event", &log.event)
        .str(
            "status",
            &enum_name(log.status, "RUN_STATUS_", proto::RunStatus::as_str_name),
        )
        .int("handler_id", log.handler_id)
        .str("handler_name", &log.handler_name)
        .str("error", &log.error)
        .int("duration_ms", log.duration_ms)
        .int("attempt", log.attempt)
        .raw("data_sent_json", &log.data_sent_json)
        .raw("data_returned_json", &log.data_returned_json)
        .str("response", &log.response)
        .int("http_status", log.http_status)
        .opt_int("exit_code", log.exit_code.map(i64::from))
        .int("event_id", log.event_id)
        .int("delivery_id", log.delivery_id)
        .str(
            "kind",
            &enum_name(log.kind, "HANDLER_KIND_", proto::HandlerKind::as_str_name),
        )
        .str("emitted_by", &log.emitted_by)
        .bool("test", log.test)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::args::{PhaseArg, RunStatusArg};
    use chrono::{DateTime, Utc};

    fn seed_log() -> proto::ExecutionLog {
        let at = DateTime::parse_from_rfc3339("2017-01-10T15:40:07Z")
            .unwrap()
            .with_timezone(&Utc);
        proto::ExecutionLog {
            id: 179,
            created_at: Some(to_timestamp(at)),
            phase: proto::Phase::After.into(),
            event: "accounts.create".into(),
            status: proto::RunStatus::Fail.into(),
            handler_id: 6,
            handler_name: "acc 6".into(),
            error: "Script execution error No such file or directory".into(),
            duration_ms: 27,
            attempt: 1,
            data_sent_json:
                r#"{"id": 178, "big": 9007199254740993, "amount": 12.345678901234567890}"#.into(),
            exit_code: Some(127),
            event_id: 55,
            kind: proto::HandlerKind::Script.into(),
            ..proto::ExecutionLog::default()
        }
    }

    #[test]
    fn tail_lines_keep_the_header_columns_with_long_names() {
        let table = log_table();
        let header = table.header_line(&TAIL_WIDTHS);
        let mut log = seed_log();
        log.handler_name = "Create the client in the CRM and the switch".into();
        log.event = "clients.custom_fields_update".into();
        log.error = "e".repeat(300);
        let line = tail_line(&table, &log);
        let chars: Vec<char> = line.chars().collect();
        let mut column_end = 0;
        for (i, width) in TAIL_WIDTHS.iter().enumerate().take(TAIL_WIDTHS.len() - 1) {
            column_end += width;
            // The gap after each column is blank in the header and in the row: no cell
            // runs into the next column.
            for text in [&header.chars().collect::<Vec<_>>(), &chars] {
                let gap: String = text.iter().skip(column_end).take(2).collect();
                assert_eq!(gap, "  ", "column {i} overflows: {line}");
            }
            column_end += 2;
        }
        let name_start: usize = TAIL_WIDTHS[..5].iter().map(|w| w + 2).sum();
        let name: String = line.chars().skip(name_start).take(TAIL_WIDTHS[5]).collect();
        assert_eq!(name, "Create the client i…", "{line}");
        let error_start: usize = TAIL_WIDTHS[..6].iter().map(|w| w + 2).sum();
        assert_eq!(
            line.chars()
                .skip(error_start + TAIL_WIDTHS[6])
                .take(2)
                .collect::<String>(),
            "  ",
            "the error stays in its column: {line}"
        );
        assert!(line.chars().count() <= TAIL_WIDTHS.iter().sum::<usize>() + 2 * 7);
    }

    #[test]
    fn rows_look_like_the_seeds_execution_logs() {
        assert_eq!(
            log_row(&seed_log()),
            [
                "179",
                "01/10/2017 15:40:07 +0000",
                "After",
                "Accounts Create",
                "Fail",
                "acc 6",
                "Script execution error No such file or directory",
                "27 ms"
            ]
        );
        let test_run = proto::ExecutionLog {
            test: true,
            ..seed_log()
        };
        assert_eq!(log_row(&test_run)[5], "acc 6 (test)");
    }

    #[test]
    fn log_json_embeds_the_data_exactly() {
        let line = log_json(&seed_log()).str("cursor", "c1").to_line();
        assert!(line.starts_with(r#"{"id":179,"created_at":"2017-01-10T15:40:07Z","phase":"after","event":"accounts.create","status":"fail""#), "{line}");
        assert!(line.contains(r#""data_sent_json":{"id":178,"big":9007199254740993,"amount":12.345678901234567890},"data_returned_json":null"#), "{line}");
        assert!(
            line.ends_with(
                r#""exit_code":127,"event_id":55,"delivery_id":0,"kind":"script","emitted_by":"","test":false,"cursor":"c1"}"#
            ),
            "{line}"
        );
    }

    #[test]
    fn filters_map_to_the_proto() {
        let filter = log_filter(LogFilterArgs {
            status: Some(RunStatusArg::Fail),
            phase: Some(PhaseArg::Before),
            events: vec!["a.b".into(), "c.d".into()],
            contains: Some(r#"{"accname": "1"}"#.into()),
            ..LogFilterArgs::default()
        });
        assert_eq!(filter.status, i32::from(proto::RunStatus::Fail));
        assert_eq!(filter.phase, i32::from(proto::Phase::Before));
        assert_eq!(filter.events, ["a.b", "c.d"]);
        assert_eq!(filter.data_json_contains, r#"{"accname": "1"}"#);
        assert_eq!(
            (filter.handler_id, filter.attempt, filter.from),
            (0, 0, None)
        );
    }
}
