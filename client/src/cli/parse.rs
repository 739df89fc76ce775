//! Parsers of local input given on the command line: dates, durations, JSON objects and
//! headers.
//!
//! They run as clap value parsers, so bad input is rejected while the arguments are
//! parsed, before any connection is made, and reported as a usage error (exit code 2).
//! JSON is only *validated* here: the text itself is passed on unchanged, so the server
//! receives exactly what the user typed (numbers, key order, escapes).

use chrono::{DateTime, NaiveDate, SubsecRound, TimeDelta, Utc};

/// A point in time: RFC 3339 (`2026-11-26T10:00:00Z`), a plain date (`2026-11-26`,
/// midnight UTC) or a duration before now (`30d`, `12h`, `15m`, `10s`).
pub fn time(s: &str) -> Result<DateTime<Utc>, String> {
    // Whole seconds: `30d` means a moment people can read back, not one with nanoseconds.
    let now = Utc::now().trunc_subsecs(0);
    time_at(s, now)
}

/// [`time`] with an explicit "now", for tests.
fn time_at(s: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    let s = s.trim();
    if let Ok(at) = DateTime::parse_from_rfc3339(s) {
        return Ok(at.with_timezone(&Utc));
    }
    if let Ok(day) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        if let Some(midnight) = day.and_hms_opt(0, 0, 0) {
            return Ok(midnight.and_utc());
        }
    }
    if let Ok(ago) = duration(s) {
        return now
            .checked_sub_signed(ago)
            .ok_or_else(|| format!("duration `{s}` reaches too far back"));
    }
    Err(format!(
        "expected an RFC 3339 time (2026-11-26T10:00:00Z), a date (2026-11-26) \
         or a duration before now (30d, 12h, 15m), got `{s}`"
    ))
}

/// A duration: a whole number followed by `d` (days), `h` (hours), `m` (minutes) or `s`
/// (seconds), e.g. `30d`.
pub fn duration(s: &str) -> Result<TimeDelta, String> {
    let bad = || format!("expected a duration such as 30d, 12h or 15m, got `{s}`");
    let s = s.trim();
    let unit = s.chars().last().ok_or_else(bad)?;
    let digits = &s[..s.len() - unit.len_utf8()];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: i64 = digits.parse().map_err(|_| bad())?;
    let delta = match unit {
        'd' => TimeDelta::try_days(n),
        'h' => TimeDelta::try_hours(n),
        'm' => TimeDelta::try_minutes(n),
        's' => TimeDelta::try_seconds(n),
        _ => return Err(bad()),
    };
    delta.ok_or_else(|| format!("duration `{s}` is too long"))
}

/// A JSON object, returned as the text given (validated, not re-serialised).
pub fn json_object(s: &str) -> Result<String, String> {
    match serde_json::from_str::<serde_json::Value>(s) {
        Ok(serde_json::Value::Object(_)) => Ok(s.to_owned()),
        Ok(_) => Err("expected a JSON object ({...})".to_owned()),
        Err(err) => Err(format!("invalid JSON: {err}")),
    }
}

/// Like [`json_object`], but the empty string is accepted too (it clears a filter).
pub fn json_object_or_empty(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        Ok(String::new())
    } else {
        json_object(s)
    }
}

/// An HTTP header given as `Name: value`.
pub fn header(s: &str) -> Result<(String, String), String> {
    let (name, value) = s
        .split_once(':')
        .ok_or_else(|| format!("expected `Name: value`, got `{s}`"))?;
    let name = name.trim();
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("invalid header name `{name}`"));
    }
    Ok((name.to_owned(), value.trim().to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn rfc3339_times_are_converted_to_utc() {
        assert_eq!(
            time("2026-11-26T10:00:00Z").unwrap(),
            at("2026-11-26T10:00:00Z")
        );
        assert_eq!(
            time("2026-11-26T12:00:00+02:00").unwrap(),
            at("2026-11-26T10:00:00Z")
        );
        assert_eq!(
            time("2026-11-26T10:00:00.250Z")
                .unwrap()
                .timestamp_subsec_millis(),
            250
        );
    }

    #[test]
    fn plain_dates_mean_midnight_utc() {
        assert_eq!(time("2026-11-26").unwrap(), at("2026-11-26T00:00:00Z"));
    }

    #[test]
    fn durations_mean_that_long_before_now() {
        let now = at("2026-11-26T10:00:00Z");
        assert_eq!(time_at("30d", now).unwrap(), at("2026-10-27T10:00:00Z"));
        assert_eq!(time_at("2h", now).unwrap(), at("2026-11-26T08:00:00Z"));
        assert_eq!(time_at("15m", now).unwrap(), at("2026-11-26T09:45:00Z"));
    }

    #[test]
    fn bad_times_are_rejected_with_the_accepted_forms() {
        for bad in [
            "",
            "yesterday",
            "2026-13-01",
            "26/11/2026",
            "2026-11-26 10:00",
        ] {
            let err = time(bad).unwrap_err();
            assert!(err.contains("RFC 3339"), "{bad}: {err}");
        }
    }

    #[test]
    fn durations_accept_days_hours_minutes_seconds() {
        assert_eq!(duration("30d").unwrap(), TimeDelta::days(30));
        assert_eq!(duration("12h").unwrap(), TimeDelta::hours(12));
        assert_eq!(duration("15m").unwrap(), TimeDelta::minutes(15));
        assert_eq!(duration("90s").unwrap(), TimeDelta::seconds(90));
        assert_eq!(duration("0d").unwrap(), TimeDelta::zero());
    }

    #[test]
    fn bad_durations_are_rejected() {
        for bad in [
            "",
            "d",
            "30",
            "30x",
            "-3d",
            "3.5h",
            "1 d",
            "30é",
            "99999999999999999999d",
        ] {
            assert!(duration(bad).is_err(), "{bad}");
        }
        assert!(duration("9999999999999d").unwrap_err().contains("too long"));
    }

    #[test]
    fn json_objects_are_kept_verbatim() {
        let text = r#"{ "id": 9007199254740993, "amount": 12.345678901234567890 }"#;
        assert_eq!(json_object(text).unwrap(), text);
    }

    #[test]
    fn non_objects_and_bad_json_are_rejected() {
        assert_eq!(
            json_object("[1]").unwrap_err(),
            "expected a JSON object ({...})"
        );
        assert!(json_object("{\"a\":}")
            .unwrap_err()
            .starts_with("invalid JSON: "));
        assert!(json_object("{} {}").is_err());
        assert!(json_object("").is_err());
        assert_eq!(json_object_or_empty("").unwrap(), "");
        assert!(json_object_or_empty("1").is_err());
    }

    #[test]
    fn headers_split_at_the_first_colon() {
        assert_eq!(
            header("Authorization: Bearer a:b").unwrap(),
            ("Authorization".to_owned(), "Bearer a:b".to_owned())
        );
        assert_eq!(
            header("X-Empty:").unwrap(),
            ("X-Empty".to_owned(), String::new())
        );
        assert!(header("no colon").is_err());
        assert!(header(": value").is_err());
        assert!(header("Bad Name: v").is_err());
    }
}
