//! Properties checked against a real PostgreSQL, a few hundred generated cases on one
//! connection each.
//!
//! - Payload filters: the service has no in-process matcher; a handler's filter is
//!   applied in SQL (`data::jsonb @> filter`, in `handlers::enabled_matching` for BEFORE
//!   and in the ingest statement for AFTER). So the property checks PostgreSQL's `@>`,
//!   and the real BEFORE query with a filter stored the way the service stores it,
//!   against an independent reference containment written here from PostgreSQL's
//!   documented rules: objects contain the pairs they hold (recursively), arrays
//!   contain every element some element of theirs contains (order and duplicates do
//!   not matter), a top-level array contains a scalar it holds, scalars contain only
//!   equal scalars, numbers compare by value (`1.50` = `1.5` = `15e-1`).
//! - Log search: every Search request `check_search` accepts runs on PostgreSQL
//!   without a database error, whatever its times and cursor.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use diesel::sql_types::{BigInt, Bool, Jsonb, Text};
use diesel::{PgConnection, QueryableByName, RunQueryDsl};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use provisioning_server::db::models::NewHandlerRow;
use provisioning_server::db::queries::{handlers, logs as queries};
use provisioning_server::domain::event_data::parse_object;
use provisioning_server::domain::logs::{check_search, encode_cursor, LogFilter};
use provisioning_server::domain::{Phase, RunStatus};
use provisioning_tests::TestDatabase;

/// Cases per property: enough to meet every rule several times, a second or two each.
const CASES: u32 = 300;

/// A JSON value as generated: numbers are `mantissa × 10^exponent`, written in one of
/// several spellings, so equal numbers often look different.
#[derive(Debug, Clone)]
enum Json {
    Null,
    Bool(bool),
    Number {
        mantissa: i64,
        exponent: i32,
        spelling: u8,
    },
    String {
        text: String,
        escaped: bool,
    },
    Array(Vec<Json>),
    Object(BTreeMap<String, Json>),
}

impl Json {
    fn is_scalar(&self) -> bool {
        !matches!(self, Json::Array(_) | Json::Object(_))
    }

    /// JSON text of this value.
    fn text(&self) -> String {
        match self {
            Json::Null => "null".into(),
            Json::Bool(b) => b.to_string(),
            Json::Number {
                mantissa,
                exponent,
                spelling,
            } => number_text(*mantissa, *exponent, *spelling),
            Json::String { text, escaped } => string_text(text, *escaped),
            Json::Array(items) => {
                let items: Vec<String> = items.iter().map(Json::text).collect();
                format!("[{}]", items.join(", "))
            }
            Json::Object(members) => {
                let members: Vec<String> = members
                    .iter()
                    .map(|(k, v)| format!("{}: {}", string_text(k, false), v.text()))
                    .collect();
                format!("{{{}}}", members.join(", "))
            }
        }
    }
}

/// `mantissa × 10^exponent` as JSON: with an exponent, as digits with a decimal point,
/// or (for whole numbers) as plain digits.
fn number_text(mantissa: i64, exponent: i32, spelling: u8) -> String {
    if spelling.is_multiple_of(3) || (exponent > 0 && spelling % 3 == 1) {
        return format!("{mantissa}e{exponent}");
    }
    let sign = if mantissa < 0 { "-" } else { "" };
    let digits = mantissa.unsigned_abs().to_string();
    if exponent >= 0 {
        // JSON allows no leading zero: zero is written once, whatever its exponent.
        let zeros = if mantissa == 0 { 0 } else { exponent as usize };
        return format!("{sign}{digits}{}", "0".repeat(zeros));
    }
    let point = exponent.unsigned_abs() as usize;
    let digits = format!("{digits:0>width$}", width = point + 1);
    let (whole, fraction) = digits.split_at(digits.len() - point);
    format!("{sign}{whole}.{fraction}")
}

/// A JSON string literal; `escaped` writes every non-ASCII character as `\uXXXX`.
fn string_text(text: &str, escaped: bool) -> String {
    let plain = serde_json::Value::String(text.to_owned()).to_string();
    if !escaped {
        return plain;
    }
    let mut out = String::new();
    for c in plain.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

/// A number as (sign, digits without leading or trailing zeros, exponent of the last
/// digit): equal values, equal keys.
fn normal(mantissa: i64, exponent: i32) -> (bool, u64, i32) {
    let (mut digits, mut exponent) = (mantissa.unsigned_abs(), exponent);
    if digits == 0 {
        return (false, 0, 0);
    }
    while digits % 10 == 0 {
        digits /= 10;
        exponent += 1;
    }
    (mantissa < 0, digits, exponent)
}

fn scalars_equal(a: &Json, b: &Json) -> bool {
    match (a, b) {
        (Json::Null, Json::Null) => true,
        (Json::Bool(x), Json::Bool(y)) => x == y,
        (
            Json::Number {
                mantissa: m,
                exponent: e,
                ..
            },
            Json::Number {
                mantissa: n,
                exponent: f,
                ..
            },
        ) => normal(*m, *e) == normal(*n, *f),
        (Json::String { text: x, .. }, Json::String { text: y, .. }) => x == y,
        _ => false,
    }
}

/// Whether `a` contains `b` by PostgreSQL's documented rules; `top` allows the one
/// exception of the top level: an array contains a scalar it holds.
fn contains(a: &Json, b: &Json, top: bool) -> bool {
    match (a, b) {
        (Json::Object(x), Json::Object(y)) => y
            .iter()
            .all(|(key, wanted)| x.get(key).is_some_and(|have| contains(have, wanted, false))),
        (Json::Array(x), Json::Array(y)) => y
            .iter()
            .all(|wanted| x.iter().any(|have| contains(have, wanted, false))),
        (Json::Array(x), scalar) if top && scalar.is_scalar() => {
            x.iter().any(|have| scalars_equal(have, scalar))
        }
        (x, y) if x.is_scalar() && y.is_scalar() => scalars_equal(x, y),
        _ => false,
    }
}

fn scalar() -> impl Strategy<Value = Json> {
    prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::Bool),
        // Small mantissas and exponents: equal values in different spellings are common.
        (-3i64..=30, -3i32..=3, any::<u8>()).prop_map(|(m, e, s)| Json::Number {
            mantissa: m * [1, 10, 100][usize::from(s % 3)],
            exponent: e,
            spelling: s / 3,
        }),
        (
            prop_oneof![
                Just(String::new()),
                "[abc]{1,2}",
                Just("Jörg".to_owned()),
                Just("x😀\"\\\n".to_owned())
            ],
            any::<bool>()
        )
            .prop_map(|(text, escaped)| Json::String { text, escaped }),
    ]
}

fn json() -> impl Strategy<Value = Json> {
    scalar().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Json::Array),
            prop::collection::btree_map("[abc]", inner, 0..4).prop_map(Json::Object),
        ]
    })
}

/// A filter taken from `doc` (some of its members and elements, respelled), so that
/// containment holds often; now and then a part is replaced, so it often fails too.
/// `choices` drives every decision (0 when it runs out).
fn derived(doc: &Json, choices: &mut impl Iterator<Item = u8>) -> Json {
    let mut next = || choices.next().unwrap_or(0);
    if next().is_multiple_of(8) {
        return match next() % 3 {
            0 => Json::Null,
            1 => Json::Bool(true),
            _ => Json::Number {
                mantissa: 7,
                exponent: 0,
                spelling: 1,
            },
        };
    }
    match doc {
        Json::Object(members) => {
            let mut kept = BTreeMap::new();
            for (key, value) in members {
                if !choices.next().unwrap_or(0).is_multiple_of(3) {
                    kept.insert(key.clone(), derived(value, choices));
                }
            }
            Json::Object(kept)
        }
        Json::Array(items) => {
            let mut kept = Vec::new();
            for item in items {
                if !choices.next().unwrap_or(0).is_multiple_of(3) {
                    kept.push(derived(item, choices));
                }
            }
            kept.reverse();
            Json::Array(kept)
        }
        Json::Number {
            mantissa, exponent, ..
        } => {
            // The same value, written another way.
            let shift = u32::from(choices.next().unwrap_or(0) % 3);
            Json::Number {
                mantissa: mantissa * 10i64.pow(shift),
                exponent: exponent - shift as i32,
                spelling: choices.next().unwrap_or(0),
            }
        }
        Json::String { text, .. } => Json::String {
            text: text.clone(),
            escaped: choices.next().unwrap_or(0).is_multiple_of(2),
        },
        other => other.clone(),
    }
}

/// A document and a filter: independent, or the filter taken from the document.
fn pair() -> impl Strategy<Value = (Json, Json)> {
    prop_oneof![
        (json(), json()),
        (json(), prop::collection::vec(any::<u8>(), 64)).prop_map(|(doc, choices)| {
            let filter = derived(&doc, &mut choices.into_iter());
            (doc, filter)
        }),
    ]
}

/// Object documents and filters, as handlers and events have them.
fn object_pair() -> impl Strategy<Value = (Json, Json)> {
    let object = || prop::collection::btree_map("[abc]", json(), 0..4).prop_map(Json::Object);
    prop_oneof![
        (object(), object()),
        (object(), prop::collection::vec(any::<u8>(), 64)).prop_map(|(doc, choices)| {
            let filter = derived(&doc, &mut choices.into_iter());
            (doc, filter)
        }),
    ]
    .prop_filter("the filter must be an object", |(_, f)| {
        matches!(f, Json::Object(_))
    })
}

#[derive(QueryableByName)]
struct Contained {
    #[diesel(sql_type = Bool)]
    contained: bool,
}

fn runner() -> TestRunner {
    TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    })
}

/// A database of its own, made on a runtime of its own (the properties run outside one).
fn database() -> TestDatabase {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(TestDatabase::new())
}

fn failed(error: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(error.to_string())
}

/// PostgreSQL's `@>` agrees with the reference containment on any two JSON values.
#[test]
fn jsonb_containment_follows_the_documented_rules() {
    let db = database();
    let conn = RefCell::new(db.conn());
    let held = Cell::new(0u32);
    let result = runner().run(&pair(), |(doc, filter)| {
        let (doc_text, filter_text) = (doc.text(), filter.text());
        let row: Contained = diesel::sql_query("SELECT $1::jsonb @> $2::jsonb AS contained")
            .bind::<Text, _>(&doc_text)
            .bind::<Text, _>(&filter_text)
            .get_result(&mut *conn.borrow_mut())
            .map_err(failed)?;
        prop_assert_eq!(
            row.contained,
            contains(&doc, &filter, true),
            "{} @> {}",
            doc_text,
            filter_text
        );
        held.set(held.get() + u32::from(row.contained));
        Ok(())
    });
    if let Err(error) = result {
        panic!("{error}");
    }
    assert_balanced(held.get());
}

/// Both answers must come up often, or the property says little.
fn assert_balanced(held: u32) {
    assert!(
        (CASES / 5..=CASES * 4 / 5).contains(&held),
        "containment held in {held} of {CASES} cases"
    );
}

/// The BEFORE dispatch query selects a handler exactly when the event data contains
/// its filter, the filter stored the way the service stores it (parsed, as jsonb).
#[test]
fn handler_filters_select_exactly_the_containing_events() {
    let db = database();
    let conn = RefCell::new(db.conn());
    let handler = handlers::insert(
        &mut conn.borrow_mut(),
        &NewHandlerRow {
            name: "filtered".into(),
            event: "clients.create".into(),
            phase: "before".into(),
            kind: "script".into(),
            status: "enabled".into(),
            priority: 0,
            timeout_ms: 1000,
            url: None,
            headers: serde_json::json!({}),
            secret: None,
            script_path: Some("x.sh".into()),
            failure_policy: "fail_closed".into(),
            filter: None,
            ordering_policy: "skip".into(),
            ordering_group: None,
            max_in_flight: None,
            rate_per_second: None,
        },
    )
    .expect("a handler");
    let held = Cell::new(0u32);
    let result = runner().run(&object_pair(), |(doc, filter)| {
        let (doc_text, filter_text) = (doc.text(), filter.text());
        let stored = parse_object(&filter_text).map_err(failed)?;
        let conn = &mut *conn.borrow_mut();
        diesel::sql_query("UPDATE handlers SET filter = $1 WHERE id = $2")
            .bind::<Jsonb, _>(&stored)
            .bind::<BigInt, _>(handler.id)
            .execute(conn)
            .map_err(failed)?;
        let selected = handlers::enabled_matching(conn, "clients.create", "before", &doc_text)
            .map_err(failed)?;
        prop_assert_eq!(
            !selected.is_empty(),
            contains(&doc, &filter, true),
            "data {} filter {}",
            doc_text,
            filter_text
        );
        held.set(held.get() + u32::from(!selected.is_empty()));
        Ok(())
    });
    if let Err(error) = result {
        panic!("{error}");
    }
    assert_balanced(held.get());
}

/// Times as a proto timestamp converts to one, with the ends of chrono's range and of
/// PostgreSQL's often.
fn time() -> impl Strategy<Value = Option<DateTime<Utc>>> {
    let pg_earliest = -210_866_803_200_i64;
    let seconds = prop_oneof![
        Just(DateTime::<Utc>::MIN_UTC.timestamp()),
        Just(DateTime::<Utc>::MAX_UTC.timestamp()),
        (pg_earliest - 200_000)..(pg_earliest + 200_000),
        DateTime::<Utc>::MIN_UTC.timestamp()..=DateTime::<Utc>::MAX_UTC.timestamp(),
        1_600_000_000_i64..1_900_000_000,
    ];
    prop::option::of(
        (seconds, 0u32..1_000_000_000).prop_filter_map("in chrono's range", |(s, n)| {
            Utc.timestamp_opt(s, n).single()
        }),
    )
}

/// A cursor the service could have made for any time chrono holds, or none.
fn cursor() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        (time(), any::<i64>()).prop_map(|(time, id)| {
            time.map_or_else(String::new, |created_at| {
                encode_cursor(queries::Position { created_at, id })
            })
        }),
    ]
}

fn log_filter() -> impl Strategy<Value = LogFilter> {
    (
        prop::option::of(prop_oneof![Just(RunStatus::Success), Just(RunStatus::Fail)]),
        prop::option::of(prop_oneof![Just(Phase::Before), Just(Phase::After)]),
        prop::collection::vec("[a-z._%\\\\']{0,12}", 0..3),
        prop::option::of("[a-zé%_\\\\']{0,8}"),
        prop::option::of(prop_oneof![
            Just("{\"a\": 1}".to_owned()),
            Just("{}".to_owned())
        ]),
        prop::option::of("[a-z%_']{0,8}"),
        time(),
        time(),
        prop::option::of(any::<u32>()),
        prop::option::of(any::<i64>()),
    )
        .prop_map(
            |(status, phase, events, data, json, error, from, to, attempt, event_id)| LogFilter {
                status,
                phase,
                events,
                handler_id: None,
                data_contains: data,
                data_json_contains: json,
                error_contains: error,
                from,
                to,
                attempt,
                event_id,
            },
        )
}

/// The premise of raising early bounds: PostgreSQL refuses a bound before its earliest
/// time (4714-11-24 BC) with an error, and takes that time itself.
#[test]
fn postgresql_refuses_times_before_its_earliest() {
    let db = database();
    let mut conn = db.conn();
    let earliest = DateTime::from_timestamp_micros(-210_866_803_200_000_000).expect("a time");
    let search = |conn: &mut PgConnection, from| {
        let filter = queries::LogFilter {
            from: Some(from),
            ..Default::default()
        };
        queries::search_page(conn, &filter, None, 1)
    };
    assert!(search(&mut conn, earliest).is_ok());
    let error = search(&mut conn, earliest - chrono::TimeDelta::microseconds(1)).unwrap_err();
    assert!(error.to_string().contains("out of range"), "{error}");
}

/// Whatever `check_search` accepts, PostgreSQL runs: a bound or a cursor it cannot
/// hold would fail the query (INTERNAL for the caller) instead of INVALID_ARGUMENT.
#[test]
fn accepted_searches_run_on_postgresql() {
    let db = database();
    let conn = RefCell::new(db.conn());
    let accepted = Cell::new(0u32);
    let result = runner().run(&(log_filter(), cursor()), |(filter, cursor)| {
        let Ok(search) = check_search(filter.clone(), 10, &cursor) else {
            return Ok(());
        };
        accepted.set(accepted.get() + 1);
        queries::search_page(&mut conn.borrow_mut(), &search.filter, search.before, 10)
            .map_err(|e| failed(format!("{filter:?} cursor {cursor:?}: {e}")))?;
        Ok(())
    });
    if let Err(error) = result {
        panic!("{error}");
    }
    let accepted = accepted.get();
    assert!(
        accepted > CASES / 4,
        "only {accepted} of {CASES} searches accepted"
    );
}
