//! Search request checking and the filter → SQL translation: whatever filter, limit and
//! cursor a caller sends, `check_search` either refuses it with INVALID_ARGUMENT naming
//! a field or accepts it, and an accepted request keeps the promises of the stored
//! filter (whole microseconds, `from <= to`, no NUL, no empty strings, an object for
//! containment, times PostgreSQL can hold) and renders to one query whose SQL text
//! does not depend on the values: they are all bound parameters.
#![no_main]

use chrono::{DateTime, TimeZone, Utc};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use provisioning_server::db::queries::logs::{self as queries, Position};
use provisioning_server::domain::logs::{
    check_search, encode_cursor, LogFilter, DEFAULT_SEARCH_LIMIT, MAX_SEARCH_LIMIT,
};
use provisioning_server::domain::{DomainError, Phase, RunStatus};

/// The earliest time PostgreSQL's `timestamptz` holds (4714-11-24 BC, 00:00 UTC), in
/// microseconds since 1970; a bound before it fails the query.
const PG_EARLIEST_MICROS: i64 = -210_866_803_200_000_000;

/// Strings that mean something to SQL, `LIKE`, JSON or PostgreSQL's text.
const TRICKY: &[&str] = &[
    "",
    " ",
    "%",
    "_",
    "\\",
    "\0",
    "a\0b",
    "'",
    "'; DROP TABLE execution_logs; --",
    "$1",
    "?",
    " -- binds: ",
    "ß",
    "İ",
    "{}",
    "{\"a\": 1}",
    "[1]",
    "null",
];

fn text(u: &mut Unstructured) -> Result<String> {
    if u.ratio(1, 3)? {
        Ok((*u.choose(TRICKY)?).to_owned())
    } else {
        u.arbitrary()
    }
}

fn optional_text(u: &mut Unstructured) -> Result<Option<String>> {
    if u.arbitrary()? {
        text(u).map(Some)
    } else {
        Ok(None)
    }
}

/// Valid JSON of a random shape (objects most often), or anything at all.
fn json(u: &mut Unstructured, depth: u32) -> Result<String> {
    Ok(match u.int_in_range(0..=7)? {
        0 => "null".into(),
        1 => u.arbitrary::<bool>()?.to_string(),
        2 => u.arbitrary::<i64>()?.to_string(),
        3 => serde_json::Value::String(u.arbitrary()?).to_string(),
        4 if depth > 0 => {
            let n = u.int_in_range(0..=3)?;
            let items = (0..n)
                .map(|_| json(u, depth - 1))
                .collect::<Result<Vec<_>>>()?;
            format!("[{}]", items.join(","))
        }
        5 => text(u)?,
        _ if depth > 0 => {
            let n = u.int_in_range(0..=3)?;
            let mut members = Vec::new();
            for _ in 0..n {
                let key = serde_json::Value::String(text(u)?).to_string();
                members.push(format!("{key}: {}", json(u, depth - 1)?));
            }
            format!("{{{}}}", members.join(", "))
        }
        _ => "{}".into(),
    })
}

/// A time as a proto timestamp converts to one: any second chrono holds, nanoseconds
/// up to 1_999_999_999 (a leap second), with the ends of the range often.
fn time(u: &mut Unstructured) -> Result<Option<DateTime<Utc>>> {
    let min = DateTime::<Utc>::MIN_UTC.timestamp();
    let max = DateTime::<Utc>::MAX_UTC.timestamp();
    let pg_earliest = PG_EARLIEST_MICROS / 1_000_000;
    let seconds = match u.int_in_range(0..=6)? {
        0 => return Ok(None),
        1 => return Ok(Some(DateTime::<Utc>::MIN_UTC)),
        2 => return Ok(Some(DateTime::<Utc>::MAX_UTC)),
        3 => pg_earliest + u.int_in_range(-100_000..=100_000)?,
        4 => 1_764_115_200 + u.int_in_range(-100_000_000..=100_000_000)?,
        _ => u.int_in_range(min..=max)?,
    };
    let nanos = u.int_in_range(0..=1_999_999_999)?;
    Ok(Utc.timestamp_opt(seconds, nanos).single())
}

fn filter(u: &mut Unstructured) -> Result<LogFilter> {
    let events = (0..u.int_in_range(0..=4)?)
        .map(|_| text(u))
        .collect::<Result<Vec<_>>>()?;
    Ok(LogFilter {
        status: *u.choose(&[None, Some(RunStatus::Success), Some(RunStatus::Fail)])?,
        phase: *u.choose(&[None, Some(Phase::Before), Some(Phase::After)])?,
        events,
        handler_id: u.arbitrary()?,
        data_contains: optional_text(u)?,
        data_json_contains: if u.arbitrary()? {
            Some(json(u, 3)?)
        } else {
            None
        },
        error_contains: optional_text(u)?,
        from: time(u)?,
        to: time(u)?,
        attempt: u.arbitrary()?,
        event_id: u.arbitrary()?,
    })
}

fn limit(u: &mut Unstructured) -> Result<u32> {
    let edges = [0, 1, MAX_SEARCH_LIMIT, MAX_SEARCH_LIMIT + 1, u32::MAX];
    if u.arbitrary()? {
        Ok(*u.choose(&edges)?)
    } else {
        u.arbitrary()
    }
}

/// A cursor as the service makes them (of any position), blank, or any text.
fn cursor(u: &mut Unstructured) -> Result<String> {
    Ok(match u.int_in_range(0..=3)? {
        0 => String::new(),
        1 => {
            let micros = u.arbitrary::<i64>()?;
            match DateTime::from_timestamp_micros(micros) {
                Some(created_at) => encode_cursor(Position {
                    created_at,
                    id: u.arbitrary()?,
                }),
                None => String::new(),
            }
        }
        _ => text(u)?,
    })
}

/// `filter` with every value replaced by a fixed one of the same shape: it must render
/// to the same SQL text, or a value went into the text instead of a parameter.
fn same_shape(filter: &queries::LogFilter) -> queries::LogFilter {
    let epoch = DateTime::<Utc>::UNIX_EPOCH;
    queries::LogFilter {
        status: filter.status.map(|_| "success"),
        phase: filter.phase.map(|_| "after"),
        events: filter.events.iter().map(|_| "e".to_owned()).collect(),
        handler_id: filter.handler_id.map(|_| 0),
        data_contains: filter.data_contains.as_ref().map(|_| "x".to_owned()),
        data_json_contains: filter
            .data_json_contains
            .as_ref()
            .map(|_| serde_json::json!({})),
        error_contains: filter.error_contains.as_ref().map(|_| "x".to_owned()),
        from: filter.from.map(|_| epoch),
        to: filter.to.map(|_| epoch),
        attempt: filter.attempt.map(|_| 0),
        event_id: filter.event_id.map(|_| 0),
    }
}

fn sql_text(rendered: &str) -> &str {
    rendered.split(" -- binds: ").next().unwrap_or(rendered)
}

fn check_time(time: Option<DateTime<Utc>>, asked: Option<DateTime<Utc>>) {
    let (Some(time), Some(asked)) = (time, asked) else {
        assert_eq!(time.is_some(), asked.is_some());
        return;
    };
    assert_eq!(time.timestamp_subsec_nanos() % 1000, 0, "{time:?}");
    assert!(time.timestamp_micros() >= PG_EARLIEST_MICROS, "{time:?}");
    // Rounded up to the microsecond, or raised to PostgreSQL's earliest time.
    assert!(time >= asked || time.timestamp_micros() == PG_EARLIEST_MICROS);
    assert!(
        time - asked < chrono::TimeDelta::microseconds(1)
            || asked.timestamp_micros() < PG_EARLIEST_MICROS
    );
}

fn run(u: &mut Unstructured) -> Result<()> {
    let asked = filter(u)?;
    let limit = limit(u)?;
    let cursor = cursor(u)?;
    let checked = match check_search(asked.clone(), limit, &cursor) {
        Ok(checked) => checked,
        Err(DomainError::InvalidArgument(message)) => {
            assert!(
                ["filter.", "limit: ", "cursor: "]
                    .iter()
                    .any(|field| message.starts_with(field)),
                "{message}"
            );
            return Ok(());
        }
        Err(other) => panic!("refused with {other:?}, not INVALID_ARGUMENT"),
    };
    let stored = &checked.filter;
    check_time(stored.from, asked.from);
    check_time(stored.to, asked.to);
    if let (Some(from), Some(to)) = (stored.from, stored.to) {
        assert!(from <= to, "{from:?} > {to:?}");
    }
    let wanted: Vec<&String> = asked.events.iter().filter(|e| !e.is_empty()).collect();
    assert_eq!(stored.events.iter().collect::<Vec<_>>(), wanted);
    for text in stored
        .events
        .iter()
        .chain(&stored.data_contains)
        .chain(&stored.error_contains)
    {
        assert!(!text.is_empty() && !text.contains('\0'), "{text:?}");
    }
    if let Some(object) = &stored.data_json_contains {
        assert!(object.is_object(), "{object}");
    }
    assert_eq!(stored.attempt.is_some(), asked.attempt.is_some());
    assert_eq!(stored.status, asked.status.map(RunStatus::as_str));
    assert_eq!(stored.phase, asked.phase.map(Phase::as_str));
    match limit {
        0 => assert_eq!(checked.limit, DEFAULT_SEARCH_LIMIT),
        _ => assert_eq!(checked.limit, limit),
    }
    assert!((1..=MAX_SEARCH_LIMIT).contains(&checked.limit));
    match checked.before {
        None => assert!(cursor.trim().is_empty()),
        Some(position) => {
            assert!(position.created_at.timestamp_micros() >= PG_EARLIEST_MICROS);
            assert_eq!(encode_cursor(position), cursor.trim());
        }
    }
    let rendered = queries::search_sql(stored, checked.before, i64::from(checked.limit));
    let reference = queries::search_sql(
        &same_shape(stored),
        checked.before.map(|_| Position {
            created_at: DateTime::<Utc>::UNIX_EPOCH,
            id: 0,
        }),
        1,
    );
    assert_eq!(sql_text(&rendered), sql_text(&reference));
    Ok(())
}

fuzz_target!(|bytes: &[u8]| {
    // Running out of bytes ends the input early; nothing is left to check then.
    run(&mut Unstructured::new(bytes)).unwrap_or(());
});
