//! W3C Trace Context (`traceparent`) read from requests and written to upstream requests.
//!
//! Hand-written rather than the SDK's propagator: the request path reads and writes these
//! bytes on every request when tracing is on, and this takes no allocation and no
//! `Context` object.

/// The length of a version-00 `traceparent`: `00-<32 hex>-<16 hex>-<2 hex>`.
pub const TRACEPARENT_LENGTH: usize = 55;

/// What an incoming `traceparent` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: u128,
    /// The caller's span, the parent of the gateway's server span.
    pub parent_id: u64,
    pub sampled: bool,
}

/// Parses a `traceparent` header as the W3C recommendation says a receiver must: lowercase
/// hex only, no all-zero ids, version `ff` invalid, and a future version may carry more
/// fields after a `-`. Anything else is `None` (the request then starts a new trace).
pub fn parse_traceparent(value: &[u8]) -> Option<TraceParent> {
    if value.len() < TRACEPARENT_LENGTH {
        return None;
    }
    let version = hex_u8(&value[0..2])?;
    if version == 0xff {
        return None;
    }
    if version == 0 && value.len() != TRACEPARENT_LENGTH {
        return None;
    }
    if value.len() > TRACEPARENT_LENGTH && value[TRACEPARENT_LENGTH] != b'-' {
        return None;
    }
    if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let trace_id = hex_u128(&value[3..35])?;
    let parent_id = hex_u64(&value[36..52])?;
    let flags = hex_u8(&value[53..55])?;
    if trace_id == 0 || parent_id == 0 {
        return None;
    }
    Some(TraceParent {
        trace_id,
        parent_id,
        sampled: flags & 1 == 1,
    })
}

/// `00-<trace id>-<span id>-<flags>` for the upstream request.
pub fn format_traceparent(trace_id: u128, span_id: u64, sampled: bool) -> [u8; TRACEPARENT_LENGTH] {
    let mut out = [b'-'; TRACEPARENT_LENGTH];
    out[0] = b'0';
    out[1] = b'0';
    write_hex(&mut out[3..35], &trace_id.to_be_bytes());
    write_hex(&mut out[36..52], &span_id.to_be_bytes());
    out[53] = b'0';
    out[54] = if sampled { b'1' } else { b'0' };
    out
}

/// The trace id as 32 lowercase hex digits (access log, plugins).
pub fn trace_id_hex(trace_id: u128) -> [u8; 32] {
    let mut out = [0u8; 32];
    write_hex(&mut out, &trace_id.to_be_bytes());
    out
}

/// The span id as 16 lowercase hex digits.
pub fn span_id_hex(span_id: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    write_hex(&mut out, &span_id.to_be_bytes());
    out
}

fn write_hex(out: &mut [u8], bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0x0f)];
    }
}

fn hex_digit(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        _ => None,
    }
}

fn hex_u128(digits: &[u8]) -> Option<u128> {
    digits.iter().try_fold(0u128, |value, &digit| {
        Some(value << 4 | u128::from(hex_digit(digit)?))
    })
}

fn hex_u64(digits: &[u8]) -> Option<u64> {
    digits.iter().try_fold(0u64, |value, &digit| {
        Some(value << 4 | u64::from(hex_digit(digit)?))
    })
}

fn hex_u8(digits: &[u8]) -> Option<u8> {
    digits
        .iter()
        .try_fold(0u8, |value, &digit| Some(value << 4 | hex_digit(digit)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_w3c_example_parses() {
        let parent = parse_traceparent(EXAMPLE).unwrap();
        assert_eq!(parent.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(parent.parent_id, 0x00f067aa0ba902b7);
        assert!(parent.sampled);
        let unsampled =
            parse_traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
        assert!(!unsampled.unwrap().sampled);
    }

    #[test]
    fn formatting_round_trips() {
        let parent = parse_traceparent(EXAMPLE).unwrap();
        let written = format_traceparent(parent.trace_id, parent.parent_id, true);
        assert_eq!(&written[..], EXAMPLE);
        assert_eq!(
            &trace_id_hex(parent.trace_id)[..],
            b"4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(&span_id_hex(parent.parent_id)[..], b"00f067aa0ba902b7");
    }

    #[test]
    fn invalid_headers_are_refused() {
        for bad in [
            &b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"[..],
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            b"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"",
        ] {
            assert_eq!(
                parse_traceparent(bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_future_version_with_more_fields_is_read() {
        let parent =
            parse_traceparent(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what");
        assert!(parent.is_some());
        assert!(
            parse_traceparent(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x")
                .is_none()
        );
    }
}
