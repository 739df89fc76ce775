//! Text from outside, made storable. PostgreSQL's `text` holds any UTF-8 except NUL.
//!
//! - What callers send (names, keys, descriptions, search strings) is refused when it
//!   holds NUL: [`require_storable`] gives INVALID_ARGUMENT naming the field.
//! - What handlers answer (response bodies, script output, forbid reasons) is taken
//!   whatever its bytes: [`from_bytes`] keeps the first bytes up to a cap, replaces
//!   invalid UTF-8 with U+FFFD and writes NUL as the six characters `\u0000`, so the
//!   log row is always written and reads back readably.

use std::borrow::Cow;

use super::DomainError;

/// How a NUL is shown once stored.
pub const NUL_ESCAPE: &str = "\\u0000";
/// Appended to text cut at its cap.
pub const TRUNCATED_MARK: &str = "…[truncated]";

/// Refuses text PostgreSQL cannot store; `field` names it in the message.
pub fn require_storable(field: &str, text: &str) -> Result<(), DomainError> {
    match text.find('\0') {
        None => Ok(()),
        Some(at) => Err(DomainError::invalid(
            field,
            format!("NUL character at byte {at} is not supported"),
        )),
    }
}

/// `text` with every NUL written as `\u0000`; borrowed when there is none.
pub fn storable(text: &str) -> Cow<'_, str> {
    if text.contains('\0') {
        Cow::Owned(text.replace('\0', NUL_ESCAPE))
    } else {
        Cow::Borrowed(text)
    }
}

/// The first `cap` bytes of `bytes` (cut back to a character boundary) as storable text,
/// with [`TRUNCATED_MARK`] when something was cut.
pub fn from_bytes(bytes: &[u8], cap: usize) -> String {
    let mut end = bytes.len().min(cap);
    if end < bytes.len() {
        // Do not split a UTF-8 sequence: step back over at most three continuation bytes.
        let mut back = 0;
        while back < 3 && end > 0 && bytes[end] & 0xC0 == 0x80 {
            end -= 1;
            back += 1;
        }
    }
    let mut text = match storable(&String::from_utf8_lossy(&bytes[..end])) {
        Cow::Borrowed(text) => text.to_owned(),
        Cow::Owned(text) => text,
    };
    if end < bytes.len() {
        text.push_str(TRUNCATED_MARK);
    }
    text
}

/// `text` as storable text of at most about `cap` bytes (see [`from_bytes`]).
pub fn capped(text: &str, cap: usize) -> Cow<'_, str> {
    if text.len() <= cap && !text.contains('\0') {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(from_bytes(text.as_bytes(), cap))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_bytes_become_storable_text() {
        assert_eq!(from_bytes(b"ok", 10), "ok");
        assert_eq!(from_bytes(b"a\0b", 10), "a\\u0000b");
        assert_eq!(from_bytes(b"a\xffb", 10), "a\u{fffd}b");
        assert_eq!(from_bytes(b"abcdef", 3), format!("abc{TRUNCATED_MARK}"));
        // "é" is two bytes: a cap in its middle keeps it out whole.
        assert_eq!(from_bytes("aé".as_bytes(), 2), format!("a{TRUNCATED_MARK}"));
        assert!(!from_bytes(&[0, 0xc3, 0, 0xff, 0xfe], 100).contains('\0'));
        assert_eq!(capped("plain", 100), Cow::Borrowed("plain"));
        assert_eq!(capped("a\0", 100), "a\\u0000");
    }

    #[test]
    fn nul_in_caller_text_is_refused_with_the_field_name() {
        assert!(require_storable("name", "fine").is_ok());
        let error = require_storable("name", "a\0b").unwrap_err().to_string();
        assert!(
            error.starts_with("name: NUL character at byte 1"),
            "{error}"
        );
    }
}
