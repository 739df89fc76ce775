//! The filter of Search and Tail, checked and turned into its query form, and the
//! opaque cursors that resume them: base64url of a row's start time (microseconds,
//! PostgreSQL's precision) and id, which together order every row uniquely.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, Utc};

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
    /// the API spells it (`filter.from`, …).
    pub(crate) fn validate(self) -> Result<logs::LogFilter, DomainError> {
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
        let (from, to) = (from.map(ceil_micros), to.map(ceil_micros));
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

/// `time` rounded up to the next whole microsecond (PostgreSQL's precision).
pub(crate) fn ceil_micros(time: DateTime<Utc>) -> DateTime<Utc> {
    let sub_micro = time.timestamp_subsec_nanos() % 1000;
    if sub_micro == 0 {
        time
    } else {
        time + chrono::Duration::nanoseconds(i64::from(1000 - sub_micro))
    }
}

/// Encodes a position as an opaque cursor.
pub(super) fn encode_cursor(position: Position) -> String {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&position.created_at.timestamp_micros().to_be_bytes());
    bytes[8..].copy_from_slice(&position.id.to_be_bytes());
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes a cursor made by [`encode_cursor`]; `field` names it in the error.
pub(super) fn decode_cursor(text: &str, field: &str) -> Result<Position, DomainError> {
    let invalid = || DomainError::invalid(field, "not a cursor returned by this service");
    let bytes = URL_SAFE_NO_PAD.decode(text.trim()).map_err(|_| invalid())?;
    let bytes: [u8; 16] = bytes.try_into().map_err(|_| invalid())?;
    let micros = i64::from_be_bytes(bytes[..8].try_into().map_err(|_| invalid())?);
    let id = i64::from_be_bytes(bytes[8..].try_into().map_err(|_| invalid())?);
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
        assert_eq!(ceil_micros(at(670_717_000)), at(670_717_000));
        assert_eq!(ceil_micros(at(670_717_001)), at(670_718_000));
        assert_eq!(ceil_micros(at(670_717_999)), at(670_718_000));
        assert_eq!(
            ceil_micros(at(999_999_999)),
            at(0) + chrono::Duration::seconds(1)
        );
    }

    #[test]
    fn like_patterns_take_wildcards_literally() {
        assert_eq!(logs::contains_pattern(r"50%_a\b"), r"%50\%\_a\\b%");
    }
}
