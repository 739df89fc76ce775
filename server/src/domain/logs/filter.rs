//! The filter of Search and Tail, checked and turned into its query form, and the
//! opaque cursors that resume them: base64url of a row's start time (microseconds,
//! PostgreSQL's precision) and id, which together order every row uniquely.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, TimeDelta, Utc};

use crate::db::queries::logs::{self, Position};
use crate::domain::event_data::{self, DataError};
use crate::domain::{text, DomainError, Phase, RunStatus};

/// What a search or tail matches; every field is optional and they combine with AND.
#[derive(Debug, Clone, Default)]
pub struct LogFilter {
    /// Only this outcome.
    pub status: Option<RunStatus>,
    /// Only this phase.
    pub phase: Option<Phase>,
    /// Only these events (any of them); unknown names simply match nothing.
    pub events: Vec<String>,
    /// Only this handler.
    pub handler_id: Option<i64>,
    /// Case-insensitive substring of the data sent, as JSON text.
    pub data_contains: Option<String>,
    /// JSON object text the data sent must contain (must parse as an object).
    pub data_json_contains: Option<String>,
    /// Case-insensitive substring of the error.
    pub error_contains: Option<String>,
    /// Runs at or after this time.
    pub from: Option<DateTime<Utc>>,
    /// Runs before this time.
    pub to: Option<DateTime<Utc>>,
    /// Only this attempt number.
    pub attempt: Option<u32>,
    /// Only runs of this event.
    pub event_id: Option<i64>,
}

impl LogFilter {
    /// Checks the filter and turns it into its query form. Messages name the field as
    /// the API spells it (`filter.from`, …). Pure: the fuzz target `log_filter` drives it.
    pub fn validate(self) -> Result<logs::LogFilter, DomainError> {
        let LogFilter {
            status,
            phase,
            events,
            handler_id,
            data_contains,
            data_json_contains,
            error_contains,
            from,
            to,
            attempt,
            event_id,
        } = self;
        // Rows are stored to the microsecond: a bound between two microseconds means
        // the next one (`from` is inclusive, `to` exclusive), so nanoseconds are never
        // silently dropped in the caller's disfavour.
        let from = from.map(|t| ceil_micros(t, "filter.from")).transpose()?;
        let to = to.map(|t| ceil_micros(t, "filter.to")).transpose()?;
        if let (Some(from), Some(to)) = (from, to) {
            if from > to {
                return Err(DomainError::invalid(
                    "filter.from",
                    format!(
                        "{} is after filter.to ({})",
                        from.to_rfc3339(),
                        to.to_rfc3339()
                    ),
                ));
            }
        }
        // Compared as given, then raised to a time PostgreSQL can hold.
        let (from, to) = (from.map(storable), to.map(storable));
        let data_json_contains = match data_json_contains.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(text) => match event_data::parse_object(text) {
                Ok(value) => Some(value),
                Err(DataError::NotAnObject) => {
                    return Err(DomainError::invalid(
                        "filter.data_json_contains",
                        "must be a JSON object such as {\"accname\": \"1\"}",
                    ))
                }
                Err(error) => return Err(DomainError::invalid("filter.data_json_contains", error)),
            },
        };
        for event in &events {
            text::require_storable("filter.events", event)?;
        }
        for (field, value) in [
            ("filter.data_contains", &data_contains),
            ("filter.error_contains", &error_contains),
        ] {
            text::require_storable(field, value.as_deref().unwrap_or_default())?;
        }
        let attempt = attempt
            .map(|a| {
                i32::try_from(a).map_err(|_| DomainError::invalid("filter.attempt", "out of range"))
            })
            .transpose()?;
        Ok(logs::LogFilter {
            status: status.map(RunStatus::as_str),
            phase: phase.map(Phase::as_str),
            events: events.into_iter().filter(|e| !e.is_empty()).collect(),
            handler_id,
            data_contains: data_contains.filter(|t| !t.is_empty()),
            data_json_contains,
            error_contains: error_contains.filter(|t| !t.is_empty()),
            from,
            to,
            attempt,
            event_id,
        })
    }
}

/// The earliest time PostgreSQL's `timestamptz` holds, 4714-11-24 BC 00:00 UTC, in
/// microseconds since 1970. chrono reaches further back, but PostgreSQL refuses an
/// earlier value with an error, and no row is older.
const EARLIEST_STORABLE_MICROS: i64 = -210_866_803_200_000_000;

/// [`EARLIEST_STORABLE_MICROS`] as a time.
pub(super) fn earliest_storable() -> DateTime<Utc> {
    // The constant is in chrono's range (a unit test checks it), so the fallback,
    // chrono's own earliest time, is never used.
    DateTime::from_timestamp_micros(EARLIEST_STORABLE_MICROS).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// `time`, or PostgreSQL's earliest time when it is before it: no row is older, so as a
/// bound it means the same, and the query can bind it.
pub(super) fn storable(time: DateTime<Utc>) -> DateTime<Utc> {
    time.max(earliest_storable())
}

/// `time` rounded up to the next whole microsecond (PostgreSQL's precision); `field`
/// names it in the error when that microsecond is past the end of chrono's range.
fn ceil_micros(time: DateTime<Utc>, field: &str) -> Result<DateTime<Utc>, DomainError> {
    let sub_micro = time.timestamp_subsec_nanos() % 1000;
    if sub_micro == 0 {
        return Ok(time);
    }
    time.checked_add_signed(TimeDelta::nanoseconds(i64::from(1000 - sub_micro)))
        .ok_or_else(|| {
            DomainError::invalid(field, format!("{} is out of range", time.to_rfc3339()))
        })
}

/// The `[from, to)` window of Stats in query form: `to` defaults to now and `from` to
/// 24 hours before `to`; both rounded up to the microsecond like the filter's bounds,
/// compared, then raised to a time PostgreSQL can hold.
pub(super) fn stats_window(
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
) -> Result<(DateTime<Utc>, DateTime<Utc>), DomainError> {
    let to = ceil_micros(to.unwrap_or_else(Utc::now), "to")?;
    let from = match from {
        Some(from) => ceil_micros(from, "from")?,
        None => to
            .checked_sub_signed(TimeDelta::hours(24))
            .unwrap_or(DateTime::<Utc>::MIN_UTC),
    };
    if from > to {
        return Err(DomainError::invalid(
            "from",
            format!("{} is after to ({})", from.to_rfc3339(), to.to_rfc3339()),
        ));
    }
    Ok((storable(from), storable(to)))
}

/// Encodes a position as an opaque cursor.
pub fn encode_cursor(position: Position) -> String {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&position.created_at.timestamp_micros().to_be_bytes());
    bytes[8..].copy_from_slice(&position.id.to_be_bytes());
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes a cursor made by [`encode_cursor`]; `field` names it in the error.
pub fn decode_cursor(text: &str, field: &str) -> Result<Position, DomainError> {
    let invalid = || DomainError::invalid(field, "not a cursor returned by this service");
    let bytes = URL_SAFE_NO_PAD.decode(text.trim()).map_err(|_| invalid())?;
    let bytes: [u8; 16] = bytes.try_into().map_err(|_| invalid())?;
    let micros = i64::from_be_bytes(bytes[..8].try_into().map_err(|_| invalid())?);
    let id = i64::from_be_bytes(bytes[8..].try_into().map_err(|_| invalid())?);
    // No row, so no cursor of this service, starts before PostgreSQL's earliest time.
    if micros < EARLIEST_STORABLE_MICROS {
        return Err(invalid());
    }
    let created_at = DateTime::from_timestamp_micros(micros).ok_or_else(invalid)?;
    Ok(Position { created_at, id })
}

/// An empty cursor is no cursor.
pub(super) fn optional_cursor(text: &str, field: &str) -> Result<Option<Position>, DomainError> {
    if text.trim().is_empty() {
        Ok(None)
    } else {
        decode_cursor(text, field).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_rejected() {
        let position = Position {
            created_at: DateTime::from_timestamp_micros(1_764_115_200_123_456).unwrap(),
            id: 42,
        };
        let cursor = encode_cursor(position);
        assert_eq!(decode_cursor(&cursor, "cursor").unwrap(), position);
        for bad in ["x", "!!!!", "AAAA", &cursor[1..]] {
            let error = decode_cursor(bad, "cursor").unwrap_err();
            assert!(
                matches!(error, DomainError::InvalidArgument(ref m) if m.starts_with("cursor:")),
                "{bad}: {error:?}"
            );
        }
        assert_eq!(optional_cursor("", "cursor").unwrap(), None);
    }

    #[test]
    fn filters_are_validated_with_the_field_name() {
        let now = Utc::now();
        let later = LogFilter {
            from: Some(now),
            to: Some(now - chrono::Duration::seconds(1)),
            ..Default::default()
        };
        assert!(
            matches!(later.validate(), Err(DomainError::InvalidArgument(m)) if m.starts_with("filter.from:"))
        );
        for bad in ["{", "[1]", "\"x\"", "12"] {
            let filter = LogFilter {
                data_json_contains: Some(bad.into()),
                ..Default::default()
            };
            assert!(
                matches!(filter.validate(), Err(DomainError::InvalidArgument(m)) if m.starts_with("filter.data_json_contains:")),
                "{bad}"
            );
        }
        let good = LogFilter {
            data_json_contains: Some(r#"{"accname": "1"}"#.into()),
            events: vec![String::new(), "clients.create".into()],
            data_contains: Some(String::new()),
            from: Some(now),
            to: Some(now),
            ..Default::default()
        }
        .validate()
        .unwrap();
        assert_eq!(good.events, ["clients.create"]);
        assert_eq!(good.data_contains, None);
        assert_eq!(
            good.data_json_contains,
            Some(serde_json::json!({"accname": "1"}))
        );
    }

    #[test]
    fn bounds_between_microseconds_round_up() {
        let at = |nanos: u32| DateTime::from_timestamp(1_764_115_200, nanos).unwrap();
        let ceil = |time| ceil_micros(time, "from").unwrap();
        assert_eq!(ceil(at(670_717_000)), at(670_717_000));
        assert_eq!(ceil(at(670_717_001)), at(670_718_000));
        assert_eq!(ceil(at(670_717_999)), at(670_718_000));
        assert_eq!(ceil(at(999_999_999)), at(0) + chrono::Duration::seconds(1));
    }

    #[test]
    fn like_patterns_take_wildcards_literally() {
        assert_eq!(logs::contains_pattern(r"50%_a\b"), r"%50\%\_a\\b%");
    }

    /// PostgreSQL's earliest `timestamptz`, 4714-11-24 BC (year -4713), from its value.
    fn pg_earliest() -> DateTime<Utc> {
        use chrono::Datelike;
        let earliest = DateTime::from_timestamp_micros(-210_866_803_200_000_000).unwrap();
        assert_eq!(
            (earliest.year(), earliest.month(), earliest.day()),
            (-4713, 11, 24)
        );
        assert_eq!(earliest_storable(), earliest);
        earliest
    }

    /// Stats' window: defaults, rounding, order, and no panic at either end of time
    /// (`to - 24h` at chrono's earliest time overflowed).
    #[test]
    fn the_stats_window_defaults_and_stays_in_range() {
        let to = DateTime::from_timestamp(1_764_115_200, 1).unwrap();
        let (from, rounded) = stats_window(None, Some(to)).unwrap();
        assert_eq!(
            rounded,
            DateTime::from_timestamp(1_764_115_200, 1000).unwrap()
        );
        assert_eq!(rounded - from, chrono::Duration::hours(24));
        let earliest = pg_earliest();
        let (from, to) = stats_window(None, Some(DateTime::<Utc>::MIN_UTC)).unwrap();
        assert_eq!((from, to), (earliest, earliest));
        assert!(stats_window(None, Some(DateTime::<Utc>::MAX_UTC)).is_err());
        let error = stats_window(Some(to + chrono::Duration::days(1)), Some(to)).unwrap_err();
        assert!(matches!(error, DomainError::InvalidArgument(m) if m.starts_with("from:")));
    }

    /// A bound in chrono's very last microsecond cannot be rounded up, and rounding it
    /// panicked (`DateTime + TimeDelta` overflowed). Found while writing the fuzz
    /// target `log_filter`.
    #[test]
    fn a_bound_past_the_last_microsecond_is_refused_not_a_panic() {
        for (from, to, field) in [
            (Some(DateTime::<Utc>::MAX_UTC), None, "filter.from:"),
            (None, Some(DateTime::<Utc>::MAX_UTC), "filter.to:"),
        ] {
            let filter = LogFilter {
                from,
                to,
                ..Default::default()
            };
            let error = filter.validate().unwrap_err();
            assert!(
                matches!(&error, DomainError::InvalidArgument(m) if m.starts_with(field)),
                "{error:?}"
            );
        }
    }

    /// PostgreSQL refuses a `timestamptz` before 4714-11-24 BC with an error (which
    /// reached the caller as INTERNAL); no row is older, so such a bound means the same
    /// at that time. Found while writing the fuzz target `log_filter`.
    #[test]
    fn bounds_before_postgresql_s_earliest_time_are_raised_to_it() {
        let earliest = pg_earliest();
        let filter = LogFilter {
            from: Some(DateTime::<Utc>::MIN_UTC),
            to: Some(earliest - chrono::Duration::days(1)),
            ..Default::default()
        }
        .validate()
        .unwrap();
        assert_eq!((filter.from, filter.to), (Some(earliest), Some(earliest)));
        let reversed = LogFilter {
            from: Some(earliest - chrono::Duration::days(1)),
            to: Some(earliest - chrono::Duration::days(2)),
            ..Default::default()
        };
        assert!(reversed.validate().is_err());
        let kept = earliest + chrono::Duration::microseconds(1);
        let filter = LogFilter {
            from: Some(kept),
            ..Default::default()
        };
        assert_eq!(filter.validate().unwrap().from, Some(kept));
    }

    /// No row starts before PostgreSQL's earliest time, so no cursor of this service
    /// does: such a cursor would fail the query instead of being refused.
    #[test]
    fn cursors_before_postgresql_s_earliest_time_are_refused() {
        let earliest = pg_earliest();
        let at = |created_at| encode_cursor(Position { created_at, id: 7 });
        assert!(decode_cursor(&at(earliest), "cursor").is_ok());
        let before = at(earliest - chrono::Duration::microseconds(1));
        assert!(decode_cursor(&before, "cursor").is_err());
    }

    /// Round trips of the cursor codec over generated positions and texts.
    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Positions a row can have: any microsecond PostgreSQL and chrono both hold
        /// (4714-11-24 BC to chrono's end in 262142), any id.
        fn position() -> impl Strategy<Value = Position> {
            let earliest = -210_866_803_200_000_000_i64;
            let latest = DateTime::<Utc>::MAX_UTC.timestamp_micros();
            let micros = prop_oneof![
                earliest..=latest,
                1_600_000_000_000_000_i64..1_900_000_000_000_000,
                Just(earliest),
                Just(latest),
            ];
            (micros, any::<i64>()).prop_map(|(micros, id)| Position {
                created_at: DateTime::from_timestamp_micros(micros).expect("in chrono's range"),
                id,
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            /// Every position decodes back to itself, surrounding blanks ignored.
            #[test]
            fn positions_survive_encoding(position in position()) {
                let cursor = encode_cursor(position);
                prop_assert_eq!(decode_cursor(&cursor, "cursor").ok(), Some(position));
                let padded = format!(" {cursor}\n");
                prop_assert_eq!(decode_cursor(&padded, "cursor").ok(), Some(position));
            }

            /// A text that decodes is the canonical encoding of its position; any other
            /// text is refused naming the field.
            #[test]
            fn decodable_texts_are_canonical(
                text in prop_oneof!["[A-Za-z0-9_-]{22}", "[A-Za-z0-9_=+/-]{0,30}", ".{0,30}"],
            ) {
                match decode_cursor(&text, "cursor") {
                    Ok(position) => prop_assert_eq!(encode_cursor(position), text.trim()),
                    Err(DomainError::InvalidArgument(message)) => {
                        prop_assert!(message.starts_with("cursor: "), "{}", message)
                    }
                    Err(other) => panic!("{other:?}"),
                }
            }
        }
    }
}
