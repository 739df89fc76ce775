//! `provctl events emit --file events.jsonl`: streams AFTER events from a JSON-lines file
//! through `EmitStream`.
//!
//! Each line is `{"event": "...", "data": {...}, "idempotency_key": "...",
//! "ordering_key": "..."}` (the keys are optional). The `data` value is taken as raw text, never re-serialised, so the handlers
//! receive it exactly as written. A line's number is its stream sequence, so every ack
//! (and every error) maps back to its line without bookkeeping. Malformed lines are
//! rejected locally and the rest still go out; the command fails (exit 1) if any line
//! was rejected, locally or by the server.

use std::io::{IsTerminal, Read};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use provisioning_client::proto;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::args::Output;
use super::json::JsonObject;
use super::{CliError, Context};

/// How many rejected lines the summary lists.
const ERRORS_SHOWN: usize = 10;

/// gRPC INVALID_ARGUMENT, the code given to lines rejected locally.
const INVALID_ARGUMENT: i32 = 3;

/// One line of the file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line<'a> {
    event: String,
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(default)]
    idempotency_key: Option<String>,
    #[serde(default)]
    ordering_key: Option<String>,
}

/// Parses one line into an AFTER EmitRequest whose `data_json` is the raw `data` text.
pub fn parse_line(line: &str) -> Result<proto::EmitRequest, String> {
    let parsed: Line<'_> =
        serde_json::from_str(line).map_err(|err| format!("invalid line: {err}"))?;
    if parsed.event.trim().is_empty() {
        return Err("`event` is empty".to_owned());
    }
    let data = parsed.data.get();
    if !data.starts_with('{') {
        return Err("`data` must be a JSON object".to_owned());
    }
    Ok(proto::EmitRequest {
        event: parsed.event,
        phase: proto::Phase::After.into(),
        data_json: data.to_owned(),
        idempotency_key: parsed.idempotency_key.unwrap_or_default(),
        ordering_key: parsed.ordering_key.unwrap_or_default(),
    })
}

/// A line that did not make it: its number and why.
struct Rejection {
    line: u64,
    message: String,
}

/// Running totals.
#[derive(Default)]
struct Tally {
    accepted: u64,
    duplicates: u64,
    acked: u64,
    rejections: Vec<Rejection>,
}

/// Streams the file's events and prints the outcome.
pub async fn run(ctx: &mut Context, path: &Path) -> Result<(), CliError> {
    let text = read_input(path)?;
    let mut events = Vec::new();
    let mut tally = Tally::default();
    let mut lines = 0u64;
    for (index, line) in text.lines().enumerate() {
        let number = index as u64 + 1;
        if line.trim().is_empty() {
            continue;
        }
        lines += 1;
        match parse_line(line) {
            Ok(event) => events.push(proto::EmitStreamRequest {
                sequence: number,
                event: Some(event),
            }),
            Err(message) => {
                if ctx.output == Output::Json {
                    ctx.line(&ack_json(number, 0, false, 0, INVALID_ARGUMENT, &message).to_line())?;
                }
                tally.rejections.push(Rejection {
                    line: number,
                    message,
                });
            }
        }
    }
    drop(text);
    let result = if events.is_empty() {
        Ok(())
    } else {
        stream(ctx, events, &mut tally).await
    };
    print_summary(ctx, &tally)?;
    result?;
    if tally.rejections.is_empty() {
        Ok(())
    } else {
        Err(CliError::Failed(format!(
            "{} of {lines} events rejected",
            tally.rejections.len()
        )))
    }
}

/// The whole input: the file, or standard input for `-`.
fn read_input(path: &Path) -> Result<String, CliError> {
    let unreadable =
        |err: std::io::Error| CliError::Input(format!("cannot read {}: {err}", path.display()));
    if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(unreadable)?;
        Ok(text)
    } else {
        std::fs::read_to_string(path).map_err(unreadable)
    }
}

/// Sends `events` on one EmitStream and counts the acks as they come.
async fn stream(
    ctx: &mut Context,
    events: Vec<proto::EmitStreamRequest>,
    tally: &mut Tally,
) -> Result<(), CliError> {
    let total = events.len() as u64;
    let client = ctx.client().await?;
    let sent = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&sent);
    let outgoing = futures_util::stream::iter(events).inspect(move |_| {
        counter.fetch_add(1, Ordering::Relaxed);
    });
    let mut acks = client.emit_stream(outgoing).await?;
    let mut progress = Progress::new(total);
    let mut ticker = tokio::time::interval(Duration::from_millis(100));
    let outcome = loop {
        tokio::select! {
            message = acks.message() => match message {
                Ok(Some(ack)) => {
                    record_ack(ctx, tally, &ack)?;
                    progress.show(sent.load(Ordering::Relaxed), tally, false);
                }
                Ok(None) => break Ok(()),
                Err(error) => break Err(CliError::from(error)),
            },
            _ = ticker.tick() => progress.show(sent.load(Ordering::Relaxed), tally, false),
        }
    };
    progress.show(sent.load(Ordering::Relaxed), tally, true);
    outcome?;
    if tally.acked < total {
        return Err(CliError::Failed(format!(
            "the server closed the stream after {} of {total} acknowledgements",
            tally.acked
        )));
    }
    Ok(())
}

fn record_ack(ctx: &mut Context, tally: &mut Tally, ack: &proto::EmitAck) -> Result<(), CliError> {
    tally.acked += 1;
    if ack.error_code != 0 {
        let code = tonic::Code::from_i32(ack.error_code);
        tally.rejections.push(Rejection {
            line: ack.sequence,
            message: format!("{code:?}: {}", ack.error_message),
        });
    } else if ack.duplicate {
        tally.duplicates += 1;
    } else {
        tally.accepted += 1;
    }
    if ctx.output == Output::Json {
        let line = ack_json(
            ack.sequence,
            ack.event_id,
            ack.duplicate,
            ack.deliveries,
            ack.error_code,
            &ack.error_message,
        );
        ctx.line(&line.to_line())?;
    }
    Ok(())
}

/// One JSON line per input line, shaped like EmitAck with `line` for `sequence`.
fn ack_json(
    line: u64,
    event_id: i64,
    duplicate: bool,
    deliveries: u32,
    error_code: i32,
    error_message: &str,
) -> JsonObject {
    JsonObject::new()
        .uint("line", line)
        .int("event_id", event_id)
        .bool("duplicate", duplicate)
        .int("deliveries", deliveries)
        .int("error_code", error_code)
        .str("error_message", error_message)
}

/// The summary: on standard output for people, on standard error beside JSON lines.
fn print_summary(ctx: &mut Context, tally: &Tally) -> Result<(), CliError> {
    let text = summary(tally);
    match ctx.output {
        Output::Table => ctx.line(&text),
        Output::Json => {
            eprintln!("{text}");
            Ok(())
        }
    }
}

fn summary(tally: &Tally) -> String {
    let mut lines = vec![format!(
        "accepted {}, duplicates {}, rejected {}",
        tally.accepted,
        tally.duplicates,
        tally.rejections.len()
    )];
    let mut rejections: Vec<&Rejection> = tally.rejections.iter().collect();
    rejections.sort_by_key(|rejection| rejection.line);
    for rejection in rejections.iter().take(ERRORS_SHOWN) {
        lines.push(format!(
            "  line {}: {}",
            rejection.line,
            super::output::one_line(&rejection.message)
        ));
    }
    if rejections.len() > ERRORS_SHOWN {
        lines.push(format!(
            "  ... and {} more",
            rejections.len() - ERRORS_SHOWN
        ));
    }
    lines.join("\n")
}

/// The progress line on standard error: rewritten in place on a terminal, otherwise a
/// line every few seconds so logs show the run is alive.
struct Progress {
    total: u64,
    terminal: bool,
    last: Option<Instant>,
}

impl Progress {
    fn new(total: u64) -> Self {
        let terminal = std::io::stderr().is_terminal();
        // A log file gets its first line after one interval, not a `sent 0/N` at once.
        let last = if terminal { None } else { Some(Instant::now()) };
        Self {
            total,
            terminal,
            last,
        }
    }

    fn show(&mut self, sent: u64, tally: &Tally, last: bool) {
        let every = if self.terminal {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(5)
        };
        let due = self.last.is_none_or(|at| at.elapsed() >= every);
        if !(due || last && self.terminal) {
            return;
        }
        self.last = Some(Instant::now());
        let text = format!(
            "sent {sent}/{} acked {} rejected {}",
            self.total,
            tally.acked,
            tally.rejections.len()
        );
        if self.terminal {
            eprint!("\r{text}");
            if last {
                eprintln!();
            }
        } else if !last {
            eprintln!("{text}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_is_kept_as_raw_text_with_exact_numbers() {
        let line = r#"{"event": "accounts.create", "data": {"id": 9007199254740993, "amount": 12.345678901234567890, "b": "é\u00e9"}, "idempotency_key": "k-1"}"#;
        let request = parse_line(line).unwrap();
        assert_eq!(request.event, "accounts.create");
        assert_eq!(request.phase, i32::from(proto::Phase::After));
        assert_eq!(
            request.data_json,
            r#"{"id": 9007199254740993, "amount": 12.345678901234567890, "b": "é\u00e9"}"#
        );
        assert_eq!(request.idempotency_key, "k-1");
    }

    #[test]
    fn idempotency_key_is_optional() {
        let request = parse_line(r#"{"data":{},"event":"clients.update"}"#).unwrap();
        assert_eq!(
            (request.data_json.as_str(), request.idempotency_key.as_str()),
            ("{}", "")
        );
        assert!(parse_line(r#"{"event":"a.b","data":{},"idempotency_key":null}"#).is_ok());
    }

    #[test]
    fn malformed_lines_are_explained() {
        assert!(parse_line("{").unwrap_err().starts_with("invalid line: "));
        assert!(parse_line(r#"{"event":"a.b"}"#)
            .unwrap_err()
            .contains("missing field `data`"));
        assert!(parse_line(r#"{"data":{}}"#)
            .unwrap_err()
            .contains("missing field `event`"));
        assert!(parse_line(r#"{"event":"a.b","data":{},"phase":"after"}"#)
            .unwrap_err()
            .contains("unknown field"));
        assert_eq!(
            parse_line(r#"{"event":"a.b","data":[1]}"#).unwrap_err(),
            "`data` must be a JSON object"
        );
        assert_eq!(
            parse_line(r#"{"event":" ","data":{}}"#).unwrap_err(),
            "`event` is empty"
        );
        assert!(parse_line(r#"{"event":"a.b","data":{}} trailing"#).is_err());
        assert!(parse_line("[]").is_err());
    }

    #[test]
    fn summary_lists_the_first_errors_by_line() {
        let mut tally = Tally {
            accepted: 5,
            duplicates: 1,
            acked: 8,
            ..Tally::default()
        };
        for line in (1..=12).rev() {
            tally.rejections.push(Rejection {
                line,
                message: format!("bad\n{line}"),
            });
        }
        let text = summary(&tally);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "accepted 5, duplicates 1, rejected 12");
        assert_eq!(lines[1], "  line 1: bad 1");
        assert_eq!(lines[10], "  line 10: bad 10");
        assert_eq!(lines[11], "  ... and 2 more");
        assert_eq!(lines.len(), 12);
    }
}
