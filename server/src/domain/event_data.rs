//! The one definition of acceptable event data, applied wherever JSON enters the
//! service: Emit (all three RPCs), the data a BEFORE handler returns (HTTP body or
//! script stdout), handler payload filters and the log's JSON-containment filter.
//!
//! Acceptable data is a JSON object (RFC 8259) that every later reader can hold:
//! PostgreSQL's `jsonb` (the execution log) refuses `\u0000`, lone UTF-16 surrogates
//! and numbers outside its `numeric` range, and serde_json stops reading at 128 levels
//! of nesting. One scan checks it all, without building a value, so the hot path pays
//! about what a plain syntax check costs and the emitter's bytes are kept as they are.

/// Deepest nesting of objects and arrays, the top-level object counting as 1. Well
/// within both serde_json's limit (128) and PostgreSQL's stack.
pub const MAX_DEPTH: usize = 64;
/// Largest payload filter or containment filter, in bytes.
pub const MAX_FILTER_BYTES: usize = 64 * 1024;
/// Largest exponent PostgreSQL's `numeric` input takes (`NUMERIC_MAX_PRECISION`).
const MAX_EXPONENT: i64 = 1000;
/// Most digits after the decimal point a `numeric` holds (`NUMERIC_DSCALE_MAX`).
const MAX_SCALE: i64 = 16_383;
/// Most digits before the decimal point a `numeric` holds.
const MAX_INTEGER_DIGITS: i64 = 131_072;

/// Why data is not acceptable; the text is shown to whoever sent it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataError {
    /// Over the size limit.
    #[error("{size} bytes exceed the limit of {limit} bytes")]
    TooLarge {
        /// Size of the data.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Not UTF-8 text (only raw bytes from handlers can be).
    #[error("not UTF-8 text (invalid byte at {at})")]
    NotUtf8 {
        /// Byte offset.
        at: usize,
    },
    /// Not JSON.
    #[error("not valid JSON: {what} at byte {at}")]
    Syntax {
        /// What was wrong.
        what: &'static str,
        /// Byte offset.
        at: usize,
    },
    /// Valid JSON, but not an object.
    #[error("must be a JSON object")]
    NotAnObject,
    /// Nested too deeply.
    #[error("nested deeper than {MAX_DEPTH} levels (at byte {at})")]
    TooDeep {
        /// Byte offset of the first container too deep.
        at: usize,
    },
    /// A `\u0000` escape.
    #[error("\\u0000 (NUL) at byte {at} is not supported in event data")]
    Nul {
        /// Byte offset of the escape.
        at: usize,
    },
    /// A `\uD800`–`\uDFFF` escape that is not half of a surrogate pair.
    #[error("lone UTF-16 surrogate \\u{code:04x} at byte {at} is not a character")]
    LoneSurrogate {
        /// The escaped code unit.
        code: u16,
        /// Byte offset of the escape.
        at: usize,
    },
    /// A key the JSON reader reserves for itself.
    #[error("keys starting with $serde_json::private:: are reserved")]
    ReservedKey,
    /// A number PostgreSQL's `numeric` cannot hold.
    #[error("number at byte {at} is out of range (exponent at most ±{MAX_EXPONENT}, at most {MAX_INTEGER_DIGITS} digits before the decimal point and {MAX_SCALE} after)")]
    NumberOutOfRange {
        /// Byte offset of the number.
        at: usize,
    },
}

/// Checks that `text` is acceptable event data of at most `max_bytes` bytes.
pub fn check_object(text: &str, max_bytes: usize) -> Result<(), DataError> {
    if text.len() > max_bytes {
        return Err(DataError::TooLarge {
            size: text.len(),
            limit: max_bytes,
        });
    }
    let mut scanner = Scanner {
        bytes: text.as_bytes(),
        pos: 0,
    };
    scanner.skip_whitespace();
    let is_object = scanner.peek() == Some(b'{');
    scanner.value(0)?;
    scanner.skip_whitespace();
    if scanner.pos != scanner.bytes.len() {
        return Err(scanner.syntax("trailing characters"));
    }
    if !is_object {
        return Err(DataError::NotAnObject);
    }
    Ok(())
}

/// Checks raw bytes (a handler's reply): UTF-8, then [`check_object`]. Returns the text.
pub fn check_object_bytes(bytes: &[u8], max_bytes: usize) -> Result<&str, DataError> {
    if bytes.len() > max_bytes {
        return Err(DataError::TooLarge {
            size: bytes.len(),
            limit: max_bytes,
        });
    }
    let text = std::str::from_utf8(bytes).map_err(|e| DataError::NotUtf8 {
        at: e.valid_up_to(),
    })?;
    check_object(text, max_bytes)?;
    Ok(text)
}

/// Checks `text` (a filter, at most [`MAX_FILTER_BYTES`]) and parses it into a value.
pub fn parse_object(text: &str) -> Result<serde_json::Value, DataError> {
    check_object(text, MAX_FILTER_BYTES)?;
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(value) if value.is_object() => Ok(value),
        // serde_json reads an object whose only key is one of its private markers
        // (`$serde_json::private::Number`, `...::RawValue`) as something else.
        _ => Err(DataError::ReservedKey),
    }
}

/// A single forward pass over JSON text.
struct Scanner<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn syntax(&self, what: &'static str) -> DataError {
        DataError::Syntax { what, at: self.pos }
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn expect(&mut self, byte: u8, what: &'static str) -> Result<(), DataError> {
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.syntax(what))
        }
    }

    /// A value whose enclosing containers number `depth`.
    fn value(&mut self, depth: usize) -> Result<(), DataError> {
        match self.peek() {
            Some(b'{') => self.object(depth + 1),
            Some(b'[') => self.array(depth + 1),
            Some(b'"') => self.string(),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.syntax("expected a value")),
            None => Err(self.syntax("unexpected end of input")),
        }
    }

    fn object(&mut self, depth: usize) -> Result<(), DataError> {
        if depth > MAX_DEPTH {
            return Err(DataError::TooDeep { at: self.pos });
        }
        self.pos += 1; // '{'
        self.skip_whitespace();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            if self.peek() != Some(b'"') {
                return Err(self.syntax("expected a string key"));
            }
            self.string()?;
            self.skip_whitespace();
            self.expect(b':', "expected ':'")?;
            self.skip_whitespace();
            self.value(depth)?;
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => {
                    self.pos += 1;
                    self.skip_whitespace();
                }
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(self.syntax("expected ',' or '}'")),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<(), DataError> {
        if depth > MAX_DEPTH {
            return Err(DataError::TooDeep { at: self.pos });
        }
        self.pos += 1; // '['
        self.skip_whitespace();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            self.value(depth)?;
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => {
                    self.pos += 1;
                    self.skip_whitespace();
                }
                Some(b']') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(self.syntax("expected ',' or ']'")),
            }
        }
    }

    fn literal(&mut self, word: &'static [u8]) -> Result<(), DataError> {
        if self.bytes[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(self.syntax("expected a value"))
        }
    }

    /// A string, from its opening quote. The text is UTF-8 already (`&str`), so only
    /// control characters and escapes need checking.
    fn string(&mut self) -> Result<(), DataError> {
        self.pos += 1; // '"'
        loop {
            let Some(byte) = self.peek() else {
                return Err(self.syntax("unterminated string"));
            };
            match byte {
                b'"' => {
                    self.pos += 1;
                    return Ok(());
                }
                b'\\' => self.escape()?,
                0x00..=0x1f => return Err(self.syntax("control character in a string")),
                _ => self.pos += 1,
            }
        }
    }

    fn escape(&mut self) -> Result<(), DataError> {
        let start = self.pos;
        self.pos += 1; // '\'
        match self.peek() {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                self.pos += 1;
                Ok(())
            }
            Some(b'u') => {
                self.pos += 1;
                let code = self.hex4()?;
                match code {
                    0 => Err(DataError::Nul { at: start }),
                    0xD800..=0xDBFF => {
                        // Must be followed by the low half of the pair.
                        if !self.bytes[self.pos..].starts_with(b"\\u") {
                            return Err(DataError::LoneSurrogate { code, at: start });
                        }
                        self.pos += 2;
                        match self.hex4()? {
                            0xDC00..=0xDFFF => Ok(()),
                            _ => Err(DataError::LoneSurrogate { code, at: start }),
                        }
                    }
                    0xDC00..=0xDFFF => Err(DataError::LoneSurrogate { code, at: start }),
                    _ => Ok(()),
                }
            }
            _ => Err(self.syntax("invalid escape")),
        }
    }

    fn hex4(&mut self) -> Result<u16, DataError> {
        let mut code = 0u16;
        for _ in 0..4 {
            let digit = match self.peek() {
                Some(b @ b'0'..=b'9') => b - b'0',
                Some(b @ b'a'..=b'f') => b - b'a' + 10,
                Some(b @ b'A'..=b'F') => b - b'A' + 10,
                _ => return Err(self.syntax("invalid \\u escape")),
            };
            code = code * 16 + u16::from(digit);
            self.pos += 1;
        }
        Ok(code)
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`, within `numeric`'s range.
    fn number(&mut self) -> Result<(), DataError> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        let integer_digits = match self.peek() {
            Some(b'0') => {
                self.pos += 1;
                1
            }
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.syntax("invalid number")),
        };
        let mut fraction_digits = 0;
        if self.peek() == Some(b'.') {
            self.pos += 1;
            fraction_digits = self.digits();
            if fraction_digits == 0 {
                return Err(self.syntax("invalid number"));
            }
        }
        let mut exponent: i64 = 0;
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            let negative = match self.peek() {
                Some(b'-') => {
                    self.pos += 1;
                    true
                }
                Some(b'+') => {
                    self.pos += 1;
                    false
                }
                _ => false,
            };
            let digits_start = self.pos;
            if self.digits() == 0 {
                return Err(self.syntax("invalid number"));
            }
            // Saturates: anything past MAX_EXPONENT is refused anyway.
            exponent = self.bytes[digits_start..self.pos]
                .iter()
                .fold(0i64, |e, d| {
                    (e * 10 + i64::from(d - b'0')).min(i64::MAX / 20)
                });
            if negative {
                exponent = -exponent;
            }
        }
        let in_range = exponent.abs() <= MAX_EXPONENT
            && fraction_digits - exponent <= MAX_SCALE
            && integer_digits + exponent <= MAX_INTEGER_DIGITS;
        if in_range {
            Ok(())
        } else {
            Err(DataError::NumberOutOfRange { at: start })
        }
    }

    /// Skips decimal digits; returns how many.
    fn digits(&mut self) -> i64 {
        let start = self.pos;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
        (self.pos - start) as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<(), DataError> {
        check_object(text, 1 << 20)
    }

    fn nested(depth: usize) -> String {
        let mut text = String::new();
        for _ in 0..depth {
            text.push_str("{\"a\":");
        }
        text.push('1');
        text.push_str(&"}".repeat(depth));
        text
    }

    #[test]
    fn objects_within_the_rules_are_accepted() {
        for good in [
            r#"{}"#,
            r#" {"id": 9007199254740993, "amount": 12.50} "#,
            r#"{"a": [1, -0.5e-3, true, false, null, "x", {"b": []}]}"#,
            r#"{"emoji": "\ud83d\ude00", "esc": "\"\\\/\b\f\n\r\t\u00e9"}"#,
            r#"{"literal backslash u0000": "\\u0000"}"#,
            r#"{"big": 1e1000, "small": 1e-1000, "name": "Jörg Москва"}"#,
        ] {
            assert_eq!(check(good), Ok(()), "{good}");
            serde_json::from_str::<serde_json::Value>(good).expect(good);
        }
        assert_eq!(check(&nested(MAX_DEPTH)), Ok(()));
    }

    #[test]
    fn what_the_database_or_readers_cannot_hold_is_refused() {
        assert_eq!(check(r#"{"a": "\u0000"}"#), Err(DataError::Nul { at: 7 }));
        assert_eq!(check(r#"{"a\u0000": 1}"#), Err(DataError::Nul { at: 3 }));
        assert_eq!(
            check(r#"{"a": "\ud800"}"#),
            Err(DataError::LoneSurrogate {
                code: 0xd800,
                at: 7
            })
        );
        assert!(matches!(
            check(r#"{"a": "\udc00\ud800x"}"#),
            Err(DataError::LoneSurrogate { code: 0xdc00, .. })
        ));
        assert!(matches!(
            check(r#"{"a": "\ud800\u0041"}"#),
            Err(DataError::LoneSurrogate { .. })
        ));
        assert!(matches!(
            check(&nested(MAX_DEPTH + 1)),
            Err(DataError::TooDeep { .. })
        ));
        assert!(matches!(
            check(&format!(
                "{{\"a\": {}1{}}}",
                "[".repeat(5000),
                "]".repeat(5000)
            )),
            Err(DataError::TooDeep { .. })
        ));
        for number in ["1e1001", "1e-1001", "1e99999999999999999999999"] {
            assert!(
                matches!(
                    check(&format!("{{\"n\": {number}}}")),
                    Err(DataError::NumberOutOfRange { at: 6 })
                ),
                "{number}"
            );
        }
        let long_fraction = format!("{{\"n\": 0.{}}}", "1".repeat(16_384));
        assert!(matches!(
            check(&long_fraction),
            Err(DataError::NumberOutOfRange { .. })
        ));
    }

    #[test]
    fn syntax_errors_and_non_objects_are_named() {
        for bad in [
            "",
            "{",
            "{\"a\"}",
            "{\"a\":}",
            "{\"a\":1,}",
            "{a:1}",
            "{\"a\":01}",
            "{\"a\":1.}",
            "{\"a\":.5}",
            "{\"a\":1e}",
            "{\"a\":tru}",
            "{\"a\":\"\\x\"}",
            "{\"a\":\"\\u12\"}",
            "{\"a\":\"\t\"}",
            "{} {}",
            "{\"a\":[1 2]}",
            "\u{feff}{}",
        ] {
            assert!(
                matches!(check(bad), Err(DataError::Syntax { .. })),
                "{bad:?}: {:?}",
                check(bad)
            );
            assert!(
                serde_json::from_str::<serde_json::Value>(bad).is_err(),
                "{bad:?}"
            );
        }
        for not_object in ["[1,2]", "\"x\"", "12", "null"] {
            assert_eq!(check(not_object), Err(DataError::NotAnObject));
        }
        assert_eq!(
            check_object(r#"{"a": "xxxxxxxxxx"}"#, 5),
            Err(DataError::TooLarge { size: 19, limit: 5 })
        );
        assert_eq!(
            parse_object(r#"{"$serde_json::private::Number": "1"}"#),
            Err(DataError::ReservedKey)
        );
        assert!(parse_object(r#"{"a": {"b": 1}}"#).is_ok_and(|v| v["a"]["b"] == 1));
        assert_eq!(
            check_object_bytes(b"{\"a\": \"\xff\"}", 100),
            Err(DataError::NotUtf8 { at: 7 })
        );
    }
}
