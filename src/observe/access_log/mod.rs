//! The JSON access log: one line per request, written off the request path.
//!
//! `logging` borrows what a line says into an [`AccessLogRecord`], and
//! [`AccessLogRecord::write_json_line`] writes it straight into a buffer of the destination's
//! [`AccessLogSink`]; a writer thread takes the buffers and writes them out (see [`sink`]).

mod sink;

pub use sink::{AccessLogDestination, AccessLogSink, reopen_all, sink};

/// One request's access log entry, borrowed from the request context so that building it
/// copies nothing until the line itself is written.
#[derive(Debug, Clone)]
pub struct AccessLogRecord<'a> {
    /// When the request started, in milliseconds since the Unix epoch (see [`crate::observe::wall_clock`]).
    pub unix_millis: u64,
    /// The `X-Request-ID` value (bytes as in the header; not UTF-8 is written as `null`).
    pub request_id: &'a [u8],
    /// Whether the gateway made `request_id` (hex digits: written without a check).
    pub request_id_generated: bool,
    /// The route id, or `"none"` for a request no route matched.
    pub route: &'a JsonText,
    /// A parsed method, so that it needs no escaping.
    pub method: &'a http::Method,
    /// Path and query as received.
    pub path: &'a str,
    pub status: u16,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// The endpoint address of the last attempt.
    pub upstream: Option<&'a JsonText>,
    pub attempts: u32,
    pub duration_micros: u64,
    pub upstream_duration_micros: Option<u64>,
    pub client_ip: Option<std::net::IpAddr>,
    /// As received: a header value may hold any bytes (not UTF-8 is written as `null`).
    pub user_agent: Option<&'a [u8]>,
    /// HTTP/2's `:authority` or the `Host` header, as received (not UTF-8: `null`).
    pub host: Option<&'a [u8]>,
    /// Written as `HTTP/1.0`, `HTTP/1.1`, `HTTP/2` or `HTTP/3`.
    pub protocol: http::Version,
    /// The trace id in hex, as [`crate::observe::tracing`] makes it: needs no escaping.
    pub trace_id: Option<[u8; 32]>,
}

/// The keys and fixed punctuation of a line, the time, the method and every number at their
/// longest: what a line holds besides the strings that come from the request and the config.
const FIXED_LINE_BYTES: usize = 420;

impl AccessLogRecord<'_> {
    /// Appends the record to `line` as one JSON object followed by `'\n'`. Written by hand:
    /// this runs once per request, and a `serde_json::Value` would allocate per field.
    pub fn write_json_line(&self, line: &mut Vec<u8>) {
        // The client's strings are clipped: a queue of 16,384 lines must stay a few MiB even
        // when every request carries a 64 KiB path.
        let path = clip_bytes(self.path.as_bytes(), MAX_PATH_BYTES);
        let user_agent = self
            .user_agent
            .map(|text| clip_bytes(text, MAX_HEADER_BYTES));
        let host = self.host.map(|text| clip_bytes(text, MAX_HEADER_BYTES));
        // Room for everything unless a string needs escaping, so that the buffer is
        // allocated once.
        let strings = self.request_id.len()
            + self.route.len()
            + self.method.as_str().len()
            + path.len()
            + self.upstream.map_or(0, JsonText::len)
            + user_agent.map_or(0, <[u8]>::len)
            + host.map_or(0, <[u8]>::len);
        line.reserve(FIXED_LINE_BYTES + strings);
        line.extend_from_slice(b"{\"time\":\"");
        push_rfc3339_millis(line, self.unix_millis);
        line.extend_from_slice(b"\",\"request_id\":");
        if self.request_id_generated {
            line.push(b'"');
            line.extend_from_slice(self.request_id);
            line.push(b'"');
        } else {
            push_json_text(line, self.request_id);
        }
        line.extend_from_slice(b",\"route\":");
        line.extend_from_slice(self.route.as_bytes());
        line.extend_from_slice(b",\"method\":\"");
        // A parsed method is an HTTP token: nothing in it needs escaping.
        line.extend_from_slice(self.method.as_str().as_bytes());
        line.extend_from_slice(b"\",\"path\":");
        push_json_text(line, path);
        line.extend_from_slice(b",\"status\":");
        push_status(line, self.status);
        line.extend_from_slice(b",\"bytes_in\":");
        push_decimal(line, self.bytes_received);
        line.extend_from_slice(b",\"bytes_out\":");
        push_decimal(line, self.bytes_sent);
        line.extend_from_slice(b",\"upstream\":");
        match self.upstream {
            Some(upstream) => line.extend_from_slice(upstream.as_bytes()),
            None => line.extend_from_slice(b"null"),
        }
        line.extend_from_slice(b",\"attempts\":");
        push_decimal(line, u64::from(self.attempts));
        line.extend_from_slice(b",\"duration_ms\":");
        push_milliseconds(line, self.duration_micros);
        line.extend_from_slice(b",\"upstream_ms\":");
        match self.upstream_duration_micros {
            Some(micros) => push_milliseconds(line, micros),
            None => line.extend_from_slice(b"null"),
        }
        line.extend_from_slice(b",\"client_ip\":");
        match self.client_ip {
            Some(address) => {
                // An address's text needs no escaping.
                line.push(b'"');
                crate::ip_text::push_ip(line, address);
                line.push(b'"');
            }
            None => line.extend_from_slice(b"null"),
        }
        line.extend_from_slice(b",\"user_agent\":");
        push_optional_json_text(line, user_agent);
        line.extend_from_slice(b",\"host\":");
        push_optional_json_text(line, host);
        line.extend_from_slice(match self.protocol {
            http::Version::HTTP_10 => b",\"protocol\":\"HTTP/1.0\"",
            http::Version::HTTP_2 => b",\"protocol\":\"HTTP/2\"",
            http::Version::HTTP_3 => b",\"protocol\":\"HTTP/3\"",
            _ => b",\"protocol\":\"HTTP/1.1\"",
        });
        if let Some(trace_id) = &self.trace_id {
            line.extend_from_slice(b",\"trace_id\":\"");
            line.extend_from_slice(trace_id);
            line.push(b'"');
        }
        line.extend_from_slice(b"}\n");
    }

    /// The record as a line of its own (see [`AccessLogRecord::write_json_line`]).
    #[cfg(test)]
    pub fn to_json_line(&self) -> Vec<u8> {
        let mut line = Vec::new();
        self.write_json_line(&mut line);
        line
    }
}

/// A short text from the config (a route id, an endpoint address) as a quoted JSON string,
/// escaped once when the snapshot is built rather than checked on every line.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JsonText(Box<[u8]>);

impl JsonText {
    pub fn new(text: &str) -> JsonText {
        let mut quoted = Vec::with_capacity(text.len() + 2);
        push_json_text(&mut quoted, text.as_bytes());
        JsonText(quoted.into_boxed_slice())
    }

    /// The quoted string, quotes included.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Longest path, and longest user agent or host, written to a line.
const MAX_PATH_BYTES: usize = 4096;
const MAX_HEADER_BYTES: usize = 512;

/// `bytes` cut to at most `max`, not inside a UTF-8 character (a continuation byte is
/// `10xxxxxx`, and a character has at most three), so that UTF-8 text stays UTF-8. Bytes
/// that are not UTF-8 are cut at `max` and stay not UTF-8 (the line says `null`).
fn clip_bytes(bytes: &[u8], max: usize) -> &[u8] {
    if bytes.len() <= max {
        return bytes;
    }
    let is_continuation = |index: usize| bytes[index] & 0xc0 == 0x80;
    let end = (max.saturating_sub(3)..=max)
        .rev()
        .find(|&end| !is_continuation(end))
        .unwrap_or(max);
    &bytes[..end]
}

/// `text` as a quoted JSON string; `null` when absent or not UTF-8 (a header value may hold
/// any bytes).
fn push_optional_json_text(out: &mut Vec<u8>, text: Option<&[u8]>) {
    match text {
        Some(text) => push_json_text(out, text),
        None => out.extend_from_slice(b"null"),
    }
}

/// `text` as a quoted JSON string, or `null` when it is not UTF-8.
fn push_json_text(out: &mut Vec<u8>, text: &[u8]) {
    out.push(b'"');
    if is_plain_json_text(text) {
        out.extend_from_slice(text);
    } else if let Ok(text) = std::str::from_utf8(text) {
        push_escaped(out, text);
    } else {
        out.pop();
        out.extend_from_slice(b"null");
        return;
    }
    out.push(b'"');
}

/// Whether every byte is printable ASCII other than `"` and `\\`: text a JSON string holds as
/// it is, and valid UTF-8. Almost every path, id and header is. Three ways, by length, so
/// that short strings (most of a line) do not go byte by byte: long ones through a fold
/// without an early exit (which the compiler turns into sixteen-byte vector compares),
/// 8 to 31 bytes eight at a time ([`word_is_plain`], the last word overlapping the one
/// before), shorter ones through the table.
fn is_plain_json_text(bytes: &[u8]) -> bool {
    let length = bytes.len();
    if length >= 32 {
        bytes.iter().fold(true, |plain, &byte| {
            plain & (0x20..0x7f).contains(&byte) & (byte != b'"') & (byte != b'\\')
        })
    } else if length >= 8 {
        let word_at = |start: usize| {
            bytes
                .get(start..start + 8)
                .and_then(|word| word.try_into().ok())
                .map_or(u64::MAX, u64::from_le_bytes)
        };
        let mut plain = word_is_plain(word_at(length - 8));
        let mut start = 0;
        while start + 8 < length {
            plain &= word_is_plain(word_at(start));
            start += 8;
        }
        plain
    } else {
        bytes
            .iter()
            .all(|&byte| byte < 0x80 && !NEEDS_ESCAPE[usize::from(byte)])
    }
}

/// Whether all eight bytes of `word` are plain (see [`is_plain_json_text`]), with the
/// classic word-at-a-time tests: a byte of 0x80 or more has its high bit set, and adding one
/// to each byte sets it for 0x7f too; `(x - 0x01..) & !x` has the high bit of the lowest
/// zero byte of `x` set (a byte equal to `c` is a zero byte of `word ^ (c * 0x01..)`), and
/// with `0x20..` that of the lowest byte below 0x20. Carries and borrows only run upwards
/// from a byte that is already caught, so the answer is exact.
fn word_is_plain(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH_BITS: u64 = 0x8080_8080_8080_8080;
    let zero_byte_bits = |x: u64| x.wrapping_sub(ONES) & !x;
    let not_plain = word
        | word.wrapping_add(ONES)
        | (word.wrapping_sub(ONES * 0x20) & !word)
        | zero_byte_bits(word ^ (ONES * u64::from(b'"')))
        | zero_byte_bits(word ^ (ONES * u64::from(b'\\')));
    not_plain & HIGH_BITS == 0
}

/// A status code in three digits: what Pingora's `StatusCode` always holds (100 to 999).
fn push_status(out: &mut Vec<u8>, status: u16) {
    if (100..1000).contains(&status) {
        out.extend_from_slice(&[
            b'0' + (status / 100) as u8,
            b'0' + (status / 10 % 10) as u8,
            b'0' + (status % 10) as u8,
        ]);
    } else {
        push_padded_decimal(out, u64::from(status), 1);
    }
}

/// `text` escaped for a JSON string, without the quotes around it: the slow path, for text
/// that holds a byte [`NEEDS_ESCAPE`] names or any non-ASCII character (which are copied as
/// they are: every byte of a multi-byte UTF-8 character is 0x80 or above).
fn push_escaped(out: &mut Vec<u8>, text: &str) {
    const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";
    let bytes = text.as_bytes();
    let mut plain_from = 0;
    for (index, &byte) in bytes.iter().enumerate() {
        if !NEEDS_ESCAPE[usize::from(byte)] {
            continue;
        }
        out.extend_from_slice(&bytes[plain_from..index]);
        match byte {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            _ => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX_DIGITS[usize::from(byte >> 4)]);
                out.push(HEX_DIGITS[usize::from(byte & 0x0f)]);
            }
        }
        plain_from = index + 1;
    }
    out.extend_from_slice(&bytes[plain_from..]);
}

/// Bytes a JSON string cannot hold as they are: quote, backslash, control characters, and DEL
/// (legal in JSON, but escaped so that a client cannot put terminal control bytes into a log
/// someone reads with `tail`). A table: one load per byte on a line built per request.
static NEEDS_ESCAPE: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 0x20 {
        table[byte] = true;
        byte += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table[0x7f] = true;
    table
};

/// `micros` as milliseconds with exactly three decimals, in integer arithmetic so that
/// 1500 µs is always `1.500` and never `1.4999999`.
fn push_milliseconds(out: &mut Vec<u8>, micros: u64) {
    if micros < 1_000_000 {
        // Under a second, as most requests are: one fixed-size copy of five to seven bytes.
        let (whole, fraction) = ((micros / 1000) as u16, (micros % 1000) as u16);
        let digit = |value: u16| b'0' + (value % 10) as u8;
        let (hundreds, tens, ones) = (digit(whole / 100), digit(whole / 10), digit(whole));
        let decimals = [
            b'.',
            digit(fraction / 100),
            digit(fraction / 10),
            digit(fraction),
        ];
        let [point, first, second, third] = decimals;
        if whole >= 100 {
            out.extend_from_slice(&[hundreds, tens, ones, point, first, second, third]);
        } else if whole >= 10 {
            out.extend_from_slice(&[tens, ones, point, first, second, third]);
        } else {
            out.extend_from_slice(&[ones, point, first, second, third]);
        }
        return;
    }
    push_padded_decimal(out, micros / 1000, 1);
    out.push(b'.');
    push_padded_decimal(out, micros % 1000, 3);
}

/// `value` in decimal. Inlined for one digit (attempts, an empty body's zero bytes), which then
/// costs no call.
#[inline]
fn push_decimal(out: &mut Vec<u8>, value: u64) {
    if value < 10 {
        out.push(b'0' + value as u8);
    } else {
        push_padded_decimal(out, value, 1);
    }
}

/// `value` in decimal, left-padded with zeros to at least `width` digits (at most 20).
fn push_padded_decimal(out: &mut Vec<u8>, value: u64, width: usize) {
    // Most numbers on a line are below 1000 (status, attempts, milliseconds and their
    // fractions): three digits computed directly.
    if value < 1000 && width <= 3 {
        // Each branch copies a fixed number of bytes, which compiles to one store: a copy
        // of a length known only at run time would call `memcpy`.
        let value = value as u16;
        let hundreds = b'0' + (value / 100) as u8;
        let tens = b'0' + (value / 10 % 10) as u8;
        let ones = b'0' + (value % 10) as u8;
        if value >= 100 || width == 3 {
            out.extend_from_slice(&[hundreds, tens, ones]);
        } else if value >= 10 || width == 2 {
            out.extend_from_slice(&[tens, ones]);
        } else {
            out.push(ones);
        }
        return;
    }
    // Two digits per step from a table: half the divisions of digit-by-digit.
    const PAIRS: &[u8; 200] = b"00010203040506070809101112131415161718192021222324252627282930313233343536373839404142434445464748495051525354555657585960616263646566676869707172737475767778798081828384858687888990919293949596979899";
    // u64::MAX has 20 digits; the array starts as zeros so that padding is only a wider slice.
    let mut digits = [b'0'; 20];
    let mut start = digits.len();
    let mut rest = value;
    while rest >= 100 {
        let pair = (rest % 100) as usize * 2;
        rest /= 100;
        start -= 2;
        digits[start..start + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    }
    if rest >= 10 {
        let pair = rest as usize * 2;
        start -= 2;
        digits[start..start + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    } else {
        start -= 1;
        digits[start] = b'0' + rest as u8;
    }
    let start = start.min(digits.len().saturating_sub(width));
    out.extend_from_slice(&digits[start..]);
}

/// `unix_millis` as RFC 3339 in UTC with milliseconds, e.g. `2025-12-01T15:04:05.123Z`.
fn push_rfc3339_millis(out: &mut Vec<u8>, unix_millis: u64) {
    let seconds = unix_millis / 1000;
    // Every request in one second shares its date and time of day: each thread keeps the
    // last second it formatted.
    thread_local! {
        static LAST_SECOND: std::cell::Cell<(u64, [u8; 19])> = const {
            std::cell::Cell::new((u64::MAX, [0; 19]))
        };
    }
    let (cached_second, mut text) = LAST_SECOND.get();
    if cached_second != seconds {
        let mut formatted = Vec::with_capacity(19);
        format_date_time(&mut formatted, seconds);
        if formatted.len() == text.len() {
            text.copy_from_slice(&formatted);
            LAST_SECOND.set((seconds, text));
        } else {
            // A year past 9999: not worth a cache.
            out.extend_from_slice(&formatted);
            text = [0; 19];
        }
    }
    if text[0] != 0 {
        out.extend_from_slice(&text);
    }
    out.push(b'.');
    push_padded_decimal(out, unix_millis % 1000, 3);
    out.push(b'Z');
}

/// `YYYY-MM-DDTHH:MM:SS` of `seconds` since the epoch.
fn format_date_time(out: &mut Vec<u8>, seconds: u64) {
    let (year, month, day) = civil_from_days(seconds / 86_400);
    let second_of_day = seconds % 86_400;
    push_padded_decimal(out, year, 4);
    out.push(b'-');
    push_padded_decimal(out, month, 2);
    out.push(b'-');
    push_padded_decimal(out, day, 2);
    out.push(b'T');
    push_padded_decimal(out, second_of_day / 3_600, 2);
    out.push(b':');
    push_padded_decimal(out, second_of_day % 3_600 / 60, 2);
    out.push(b':');
    push_padded_decimal(out, second_of_day % 60, 2);
}

/// The proleptic Gregorian (year, month, day) of a day counted from 1970-01-01: Howard
/// Hinnant's `civil_from_days`, for non-negative days only.
fn civil_from_days(days_since_epoch: u64) -> (u64, u64, u64) {
    // Counted from 0000-03-01 instead, the leap day is the last day of its year, and the
    // calendar repeats every 400-year era of 146,097 days.
    let days = days_since_epoch + 719_468;
    let era = days / 146_097;
    let day_of_era = days % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    // Months from March: 0 is March, 11 is February.
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    // January and February belong to the next calendar year.
    let year = era * 400 + year_of_era + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv6Addr};

    use super::*;

    fn format_time(unix_millis: u64) -> String {
        let mut out = Vec::new();
        push_rfc3339_millis(&mut out, unix_millis);
        String::from_utf8(out).expect("the timestamp is ASCII")
    }

    fn sample_record() -> AccessLogRecord<'static> {
        static ROUTE: std::sync::LazyLock<JsonText> =
            std::sync::LazyLock::new(|| JsonText::new("users"));
        static UPSTREAM: std::sync::LazyLock<JsonText> =
            std::sync::LazyLock::new(|| JsonText::new("10.0.0.7:8080"));
        AccessLogRecord {
            unix_millis: 1_764_601_445_123,
            request_id: b"req-1",
            request_id_generated: false,
            route: &ROUTE,
            method: &http::Method::GET,
            path: "/a\"b\\c\nd\u{1}e/ü/日本?q=\"x\"&tab=\t&del=\u{7f}",
            status: 502,
            bytes_received: 17,
            bytes_sent: 1234,
            upstream: Some(&UPSTREAM),
            attempts: 2,
            duration_micros: 12_345,
            upstream_duration_micros: Some(7),
            client_ip: Some(IpAddr::V6(Ipv6Addr::LOCALHOST)),
            user_agent: Some("Mozilla \"quoted\" \\ back\r\n\u{0}".as_bytes()),
            host: Some("exämple.com".as_bytes()),
            protocol: http::Version::HTTP_11,
            trace_id: Some(*b"0af7651916cd43dd8448eb211c80319c"),
        }
    }

    #[test]
    fn hostile_strings_round_trip_through_a_json_parser() {
        let record = sample_record();
        let line = record.to_json_line();
        assert_eq!(line.last(), Some(&b'\n'));
        let body = &line[..line.len() - 1];
        assert!(
            body.iter().all(|&byte| byte >= 0x20 && byte != 0x7f),
            "raw control bytes in {:?}",
            String::from_utf8_lossy(&line)
        );
        let parsed: serde_json::Value = serde_json::from_slice(&line).expect("the line is JSON");
        assert_eq!(parsed["time"], "2025-12-01T15:04:05.123Z");
        assert_eq!(parsed["request_id"], "req-1");
        assert_eq!(parsed["route"], "users");
        assert_eq!(parsed["method"], record.method.as_str());
        assert_eq!(parsed["path"], record.path);
        assert_eq!(parsed["status"], 502);
        assert_eq!(parsed["bytes_in"], 17);
        assert_eq!(parsed["bytes_out"], 1234);
        assert_eq!(parsed["upstream"], "10.0.0.7:8080");
        assert_eq!(parsed["attempts"], 2);
        assert_eq!(parsed["duration_ms"].as_f64(), Some(12.345));
        assert_eq!(parsed["upstream_ms"].as_f64(), Some(0.007));
        assert_eq!(parsed["client_ip"], "::1");
        assert_eq!(parsed["user_agent"], "Mozilla \"quoted\" \\ back\r\n\u{0}");
        assert_eq!(parsed["host"], "exämple.com");
        assert_eq!(parsed["protocol"], "HTTP/1.1");
        assert_eq!(parsed["trace_id"], "0af7651916cd43dd8448eb211c80319c");
        let text = String::from_utf8(line).expect("the line is UTF-8");
        assert!(text.contains("\"duration_ms\":12.345,"), "{text}");
        assert!(text.contains("\"upstream_ms\":0.007,"), "{text}");
    }

    #[test]
    fn config_texts_are_escaped_once_and_a_generated_request_id_is_written_as_it_is() {
        let route = JsonText::new("a \"quoted\" \\ route");
        let record = AccessLogRecord {
            route: &route,
            request_id: b"0123456789abcdef0123456789abcdef",
            request_id_generated: true,
            ..sample_record()
        };
        let parsed: serde_json::Value =
            serde_json::from_slice(&record.to_json_line()).expect("the line is JSON");
        assert_eq!(parsed["route"], "a \"quoted\" \\ route");
        assert_eq!(parsed["request_id"], "0123456789abcdef0123456789abcdef");
        assert_eq!(JsonText::new("10.0.0.7:80").as_bytes(), b"\"10.0.0.7:80\"");
    }

    #[test]
    fn plain_text_detection_matches_the_table_at_every_length() {
        let by_table = |bytes: &[u8]| {
            bytes
                .iter()
                .all(|&byte| byte < 0x80 && !NEEDS_ESCAPE[usize::from(byte)])
        };
        for length in 0..70 {
            for position in 0..length {
                for byte in 0..=255u8 {
                    let mut text = vec![b'a'; length];
                    text[position] = byte;
                    assert_eq!(
                        is_plain_json_text(&text),
                        by_table(&text),
                        "{length} {position} {byte}"
                    );
                }
            }
        }
    }

    /// Two bytes that may each need escaping, side by side at every position of the word
    /// lengths: a carry or borrow out of one byte of a word must not hide the other.
    #[test]
    fn plain_text_detection_sees_every_byte_of_a_pair() {
        let edges = [
            0x00u8, 0x1f, 0x20, 0x21, b'"', 0x23, 0x5b, b'\\', 0x5d, 0x7e, 0x7f, 0x80, 0xfe, 0xff,
            b'a',
        ];
        let by_table = |bytes: &[u8]| {
            bytes
                .iter()
                .all(|&byte| byte < 0x80 && !NEEDS_ESCAPE[usize::from(byte)])
        };
        for length in 8..=33 {
            for position in 0..length - 1 {
                for first in edges {
                    for second in edges {
                        let mut text = vec![b'a'; length];
                        text[position] = first;
                        text[position + 1] = second;
                        assert_eq!(
                            is_plain_json_text(&text),
                            by_table(&text),
                            "{length} {position} {first:#x} {second:#x}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn text_that_is_not_utf8_is_null_and_clipping_keeps_characters_whole() {
        let mut out = Vec::new();
        push_optional_json_text(&mut out, Some(b"curl \xff\xfe"));
        assert_eq!(out, b"null");
        assert_eq!(clip_bytes("aé".as_bytes(), 2), b"a");
        assert_eq!(clip_bytes("aé".as_bytes(), 3), "aé".as_bytes());
        assert_eq!(clip_bytes(b"abcdef", 4), b"abcd");
        // Continuation bytes all the way down are not text: cut at the limit, written as null.
        let garbage = [0x80u8; MAX_HEADER_BYTES + 10];
        assert_eq!(
            clip_bytes(&garbage, MAX_HEADER_BYTES).len(),
            MAX_HEADER_BYTES
        );
        let mut out = Vec::new();
        push_optional_json_text(&mut out, Some(clip_bytes(&garbage, MAX_HEADER_BYTES)));
        assert_eq!(out, b"null");
        let long_agent = "é".repeat(MAX_HEADER_BYTES);
        let record = AccessLogRecord {
            user_agent: Some(long_agent.as_bytes()),
            ..sample_record()
        };
        let parsed: serde_json::Value =
            serde_json::from_slice(&record.to_json_line()).expect("the line is JSON");
        assert_eq!(
            parsed["user_agent"].as_str().map(str::len),
            Some(MAX_HEADER_BYTES)
        );
    }

    #[test]
    fn missing_values_are_null_and_a_missing_trace_id_is_omitted() {
        let record = AccessLogRecord {
            upstream: None,
            upstream_duration_micros: None,
            client_ip: None,
            user_agent: None,
            host: None,
            trace_id: None,
            duration_micros: 1_500,
            ..sample_record()
        };
        let line = record.to_json_line();
        let parsed: serde_json::Value = serde_json::from_slice(&line).expect("the line is JSON");
        let object = parsed.as_object().expect("the line is an object");
        for key in ["upstream", "upstream_ms", "client_ip", "user_agent", "host"] {
            assert_eq!(object.get(key), Some(&serde_json::Value::Null), "{key}");
        }
        assert!(!object.contains_key("trace_id"));
        let text = String::from_utf8(line).expect("the line is UTF-8");
        assert!(text.contains("\"duration_ms\":1.500,"), "{text}");
    }

    /// Every byte value at every position of strings long enough to take the eight-byte
    /// path, against serde_json's escaping (plus DEL, which Loom escapes too).
    #[test]
    fn json_strings_escape_every_byte_that_needs_it_at_any_position() {
        let reference = |text: &str| {
            serde_json::to_string(text)
                .unwrap()
                .replace('\u{7f}', "\\u007f")
        };
        for length in [0, 1, 7, 8, 9, 15, 16, 17, 23, 24, 25, 31, 32, 33] {
            for position in 0..length {
                for byte in 0u8..=0x7f {
                    let mut text = vec![b'a'; length];
                    text[position] = byte;
                    let text = String::from_utf8(text).unwrap();
                    let mut out = Vec::new();
                    push_optional_json_text(&mut out, Some(text.as_bytes()));
                    assert_eq!(
                        String::from_utf8(out).unwrap(),
                        reference(&text),
                        "byte {byte:#x} at {position} of {length}"
                    );
                }
            }
        }
        let mixed = "caf\u{e9} \u{1F600} \"quoted\" back\\slash\ttab\u{7f}end of a long line";
        let mut out = Vec::new();
        push_optional_json_text(&mut out, Some(mixed.as_bytes()));
        assert_eq!(String::from_utf8(out).unwrap(), reference(mixed));
    }

    #[test]
    fn milliseconds_have_three_decimals_on_both_sides_of_a_second() {
        let values = (0..=1_100_000u64)
            .step_by(7)
            .chain([
                0, 9, 999, 1_000, 9_999, 10_000, 99_999, 100_000, 999_999, 1_000_000,
            ])
            .chain([12_345_678, u64::MAX]);
        for micros in values {
            let mut out = Vec::new();
            push_milliseconds(&mut out, micros);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                format!("{}.{:03}", micros / 1000, micros % 1000),
                "{micros}"
            );
        }
    }

    #[test]
    fn decimals_match_formatting_with_zero_padding() {
        let values = (0..=2_000u64).chain([
            9_999,
            10_000,
            65_535,
            1_000_000,
            u64::from(u32::MAX),
            u64::MAX,
        ]);
        for value in values {
            for width in 1..=5 {
                let mut out = Vec::new();
                push_padded_decimal(&mut out, value, width);
                assert_eq!(
                    String::from_utf8(out).unwrap(),
                    format!("{value:0width$}"),
                    "{value} at width {width}"
                );
            }
        }
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_milliseconds() {
        // In this order: the thread's cache of the last second is part of what is tested.
        let cases: [(u64, u64, &str); 9] = [
            (0, 0, "1970-01-01T00:00:00.000Z"),
            (1_764_601_445, 123, "2025-12-01T15:04:05.123Z"),
            // The same second again comes from the cache, with its own milliseconds.
            (1_764_601_445, 7, "2025-12-01T15:04:05.007Z"),
            // Past year 9999 the text is longer than the cache holds, and the cache stays right.
            (253_402_300_800, 0, "10000-01-01T00:00:00.000Z"),
            (1_764_601_445, 1, "2025-12-01T15:04:05.001Z"),
            // Leap days of a year divisible by 4, and of one divisible by 400.
            (1_709_164_800, 0, "2024-02-29T00:00:00.000Z"),
            (951_868_800 - 1, 999, "2000-02-29T23:59:59.999Z"),
            (951_868_800, 0, "2000-03-01T00:00:00.000Z"),
            (253_402_300_799, 5, "9999-12-31T23:59:59.005Z"),
        ];
        for (seconds, millis, expected) in cases {
            assert_eq!(format_time(seconds * 1000 + millis), expected);
        }
    }
}
