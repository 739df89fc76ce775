//! W3C trace context (`traceparent`, <https://www.w3.org/TR/trace-context/>) carried
//! from an emitter to its handlers: received on Emit, stored with an AFTER event (so a
//! delivery made later, or by another replica, still belongs to the emitter's trace),
//! and sent on every handler run as a child: the same trace id, a new parent id per
//! run, the emitter's flags. A header that does not parse is ignored, as the
//! specification asks; it never fails a request.

use std::fmt;

/// A parsed `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: [u8; 16],
    parent_id: [u8; 8],
    flags: u8,
}

impl TraceContext {
    /// Parses a `traceparent` header. Version `00` must be exactly
    /// `00-<32 hex>-<16 hex>-<2 hex>`; a later version is read by its first four fields
    /// (as the specification asks of version-00 parsers); `ff`, all-zero ids and
    /// upper-case hex are refused.
    pub fn parse(header: &str) -> Option<TraceContext> {
        let header = header.trim();
        let version = header.get(..2)?;
        let version = hex_byte(version)?;
        if version == 0xff || (version == 0 && header.len() != 55) {
            return None;
        }
        if header.len() > 55 && header.as_bytes()[55] != b'-' {
            return None;
        }
        let mut fields = header.get(..55)?.split('-');
        let (_, trace, parent, flags) = (
            fields.next()?,
            fields.next()?,
            fields.next()?,
            fields.next()?,
        );
        let mut trace_id = [0u8; 16];
        let mut parent_id = [0u8; 8];
        decode(trace, &mut trace_id)?;
        decode(parent, &mut parent_id)?;
        let flags = hex_byte(flags)?;
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(TraceContext {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// The context a handler run gets: same trace and flags, a new random parent id.
    pub fn child(&self) -> TraceContext {
        let mut parent_id = [0u8; 8];
        while parent_id == [0; 8] {
            parent_id = rand::random();
        }
        TraceContext { parent_id, ..*self }
    }

    /// The trace id, as 32 lower-case hex digits.
    pub fn trace_id(&self) -> String {
        hex(&self.trace_id)
    }

    /// The raw fields `(trace id, parent id, flags)`, for a tracing library's own
    /// span-context type.
    pub fn parts(&self) -> ([u8; 16], [u8; 8], u8) {
        (self.trace_id, self.parent_id, self.flags)
    }
}

impl fmt::Display for TraceContext {
    /// The `traceparent` header value (version 00).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            hex(&self.trace_id),
            hex(&self.parent_id),
            self.flags
        )
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_byte(text: &str) -> Option<u8> {
    let mut byte = [0u8];
    decode(text, &mut byte)?;
    Some(byte[0])
}

/// Decodes exactly `out.len() * 2` lower-case hex digits.
fn decode(text: &str, out: &mut [u8]) -> Option<()> {
    let digits = text.as_bytes();
    if digits.len() != out.len() * 2 {
        return None;
    }
    let value = |d: u8| match d {
        b'0'..=b'9' => Some(d - b'0'),
        b'a'..=b'f' => Some(d - b'a' + 10),
        _ => None,
    };
    for (byte, pair) in out.iter_mut().zip(digits.chunks(2)) {
        *byte = value(pair[0])? << 4 | value(pair[1])?;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_header_round_trips_and_its_child_keeps_trace_and_flags() {
        let context = TraceContext::parse(SAMPLE).expect("valid");
        assert_eq!(context.to_string(), SAMPLE);
        assert_eq!(context.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let child = context.child();
        assert_eq!(child.trace_id(), context.trace_id());
        assert_ne!(child.to_string(), SAMPLE);
        assert!(child.to_string().ends_with("-01"));
        assert_eq!(TraceContext::parse(&child.to_string()), Some(child));
    }

    #[test]
    fn invalid_headers_are_ignored() {
        for bad in [
            "",
            "00",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0é",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_later_version_is_read_by_its_first_fields() {
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more";
        let context = TraceContext::parse(later).expect("readable");
        assert_eq!(context.to_string(), SAMPLE);
    }
}
