//! Keyset cursors of Search and Tail: any text decodes to a position or to
//! INVALID_ARGUMENT naming the field, never a panic; a cursor that decodes is the
//! canonical encoding of its position (so it re-encodes to itself, surrounding blanks
//! aside) and names a time PostgreSQL can hold; every position the service can encode
//! decodes to itself.
#![no_main]

use chrono::DateTime;
use libfuzzer_sys::fuzz_target;
use provisioning_server::db::queries::logs::Position;
use provisioning_server::domain::logs::{decode_cursor, encode_cursor};
use provisioning_server::domain::DomainError;

/// The earliest time PostgreSQL's `timestamptz` holds (4714-11-24 BC, 00:00 UTC), in
/// microseconds since 1970.
const PG_EARLIEST_MICROS: i64 = -210_866_803_200_000_000;

fn check_text(text: &str) {
    match decode_cursor(text, "cursor") {
        Ok(position) => {
            assert!(position.created_at.timestamp_micros() >= PG_EARLIEST_MICROS);
            assert_eq!(position.created_at.timestamp_subsec_nanos() % 1000, 0);
            let again = encode_cursor(position);
            assert_eq!(again, text.trim(), "not canonical");
            assert_eq!(decode_cursor(&again, "cursor").ok(), Some(position));
        }
        Err(DomainError::InvalidArgument(message)) => {
            assert!(message.starts_with("cursor: "), "{message}");
        }
        Err(other) => panic!("{text:?} refused with {other:?}, not INVALID_ARGUMENT"),
    }
}

fuzz_target!(|bytes: &[u8]| {
    // The bytes as text, and the first 16 as a position.
    check_text(&String::from_utf8_lossy(bytes));
    let mut raw = [0u8; 16];
    let n = bytes.len().min(16);
    raw[..n].copy_from_slice(&bytes[..n]);
    let micros = i64::from_be_bytes(raw[..8].try_into().unwrap_or_default());
    let id = i64::from_be_bytes(raw[8..].try_into().unwrap_or_default());
    if let Some(created_at) = DateTime::from_timestamp_micros(micros) {
        let position = Position { created_at, id };
        let cursor = encode_cursor(position);
        match decode_cursor(&cursor, "cursor") {
            Ok(decoded) => assert_eq!(decoded, position),
            // Only times PostgreSQL cannot hold (no row has one) are refused.
            Err(_) => assert!(micros < PG_EARLIEST_MICROS, "{position:?}"),
        }
        check_text(&format!(" {cursor}\n"));
    }
});
