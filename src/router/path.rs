//! Request path normalisation and static-prefix stripping.
//!
//! Routes are matched byte for byte, so every spelling of one resource has to be reduced to a
//! single form first; otherwise a route guarding `/admin` could be bypassed with `/%61dmin` or
//! `/public/../admin`, while the upstream would still serve `/admin`. Anything that could be
//! read differently by the gateway and the upstream (encoded separators, control characters,
//! broken escapes, `..` above the root) is refused instead of guessed at.

use std::borrow::Cow;
use std::fmt;

/// Why a request path was refused; the gateway answers 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// The path does not start with `/`.
    NotAbsolute,
    /// A `..` segment would climb above `/`.
    EscapesRoot,
    /// `%2F`, `%5C` or a raw `\`: an upstream (Windows servers in particular) might treat it
    /// as a separator that routing did not see.
    EncodedSeparator,
    /// A byte below 0x20 or 0x7F, raw or percent-encoded.
    ControlCharacter,
    /// A `%` not followed by two hexadecimal digits.
    InvalidPercentEncoding,
}

impl fmt::Display for PathError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let message = match self {
            PathError::NotAbsolute => "path must start with '/'",
            PathError::EscapesRoot => "path climbs above the root with '..'",
            PathError::EncodedSeparator => "path contains '\\' or an encoded '/' or '\\'",
            PathError::ControlCharacter => "path contains a control character",
            PathError::InvalidPercentEncoding => "path contains an invalid percent-encoding",
        };
        formatter.write_str(message)
    }
}

impl std::error::Error for PathError {}

/// Normalises a raw request path (without the query) before matching.
///
/// Decodes percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`), upper-cases the hex
/// digits of every other escape (which stays encoded), resolves `.` and `..` segments and
/// merges repeated slashes. A trailing slash is kept. Returns [`Cow::Borrowed`] when the path
/// is already normal, which is the common case and does not allocate.
///
/// # Errors
///
/// A [`PathError`] for a path the gateway must refuse rather than reinterpret; each variant
/// says which rule it broke.
pub fn normalize_path(raw: &str) -> Result<Cow<'_, str>, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if raw.contains('\\') {
        return Err(PathError::EncodedSeparator);
    }
    if scan_needs_rewrite(raw)? {
        rewrite(raw).map(Cow::Owned)
    } else {
        Ok(Cow::Borrowed(raw))
    }
}

/// Removes the first `static_prefix_len` bytes (the matched static prefix, from
/// [`RouteMatch::static_prefix_len`](super::RouteMatch::static_prefix_len)) from `path`.
///
/// The result always starts with `/`: pattern `/api/*` and path `/api/users` give `/users`,
/// path `/api` gives `/`. Anything from a `?` on is dropped, so a caller that passes the path
/// with its query gets the bare path back and re-appends the query itself. A prefix length
/// that does not fit the path (not produced by a match of this path) leaves it unchanged.
pub fn strip_static_prefix(path: &str, static_prefix_len: usize) -> Cow<'_, str> {
    let path = path.split_once('?').map_or(path, |(bare, _query)| bare);
    let Some(rest) = path.get(static_prefix_len..) else {
        return Cow::Borrowed(path);
    };
    if rest.starts_with('/') {
        Cow::Borrowed(rest)
    } else if rest.is_empty() {
        Cow::Borrowed("/")
    } else {
        Cow::Owned(format!("/{rest}"))
    }
}

/// Validates every byte and reports whether the path differs from its normal form.
///
/// Kept separate from [`rewrite`] so that the common, already-normal path costs one read-only
/// pass and no allocation.
fn scan_needs_rewrite(raw: &str) -> Result<bool, PathError> {
    let bytes = raw.as_bytes();
    let mut needs_rewrite = false;
    // Byte 0 is the leading '/', checked by the caller.
    let mut segment_start = 1;
    let mut position = 1;
    while position < bytes.len() {
        match bytes[position] {
            b'%' => {
                let decoded = decode_escape(bytes, position)?;
                let hex_is_lowercase = bytes[position + 1..position + 3]
                    .iter()
                    .any(u8::is_ascii_lowercase);
                if is_unreserved(decoded) || hex_is_lowercase {
                    needs_rewrite = true;
                }
                position += 3;
                continue;
            }
            b'/' => {
                let segment = &bytes[segment_start..position];
                if segment.is_empty() || is_dot_segment(segment) {
                    needs_rewrite = true;
                }
                segment_start = position + 1;
            }
            byte if is_control(byte) => return Err(PathError::ControlCharacter),
            _ => {}
        }
        position += 1;
    }
    // An empty last segment is a trailing slash, which is kept; only dots need resolving.
    if is_dot_segment(&bytes[segment_start..]) {
        needs_rewrite = true;
    }
    Ok(needs_rewrite)
}

/// Builds the normal form. Only called after [`scan_needs_rewrite`] accepted every byte, but
/// still never panics on malformed input.
fn rewrite(raw: &str) -> Result<String, PathError> {
    let body = raw.get(1..).unwrap_or_default();
    // Holds only kept segments, each as "/text", so the last '/' in it always starts the
    // segment a `..` removes.
    let mut output = String::with_capacity(raw.len());
    let mut segments = body.split('/').peekable();
    while let Some(segment) = segments.next() {
        let is_last = segments.peek().is_none();
        let start = output.len();
        output.push('/');
        push_decoded(&mut output, segment);
        let decoded = output.get(start + 1..).unwrap_or_default().as_bytes();
        match decoded {
            b"." => output.truncate(start),
            b".." => {
                output.truncate(start);
                let parent_start = output.rfind('/').ok_or(PathError::EscapesRoot)?;
                output.truncate(parent_start);
            }
            // A repeated slash; a final empty segment is the trailing slash and stays.
            b"" if !is_last => {
                output.truncate(start);
                continue;
            }
            _ => continue,
        }
        // A final `.` or `..` names a directory, so the result ends with a slash (RFC 3986).
        if is_last {
            output.push('/');
        }
    }
    if output.is_empty() {
        output.push('/');
    }
    Ok(output)
}

/// Appends `segment` with unreserved escapes decoded and other escapes upper-cased.
fn push_decoded(output: &mut String, segment: &str) {
    let mut rest = segment;
    while let Some(percent) = rest.find('%') {
        output.push_str(&rest[..percent]);
        let escape = &rest[percent..];
        match decode_escape(escape.as_bytes(), 0) {
            Ok(decoded) if is_unreserved(decoded) => output.push(char::from(decoded)),
            Ok(_) => output.extend(escape[..3].chars().map(|digit| digit.to_ascii_uppercase())),
            // Unreachable after the scan; copying the '%' keeps the function total.
            Err(_) => {
                output.push('%');
                rest = &escape[1..];
                continue;
            }
        }
        rest = &escape[3..];
    }
    output.push_str(rest);
}

/// Decodes the escape starting with the `%` at `position`, refusing what must never pass.
fn decode_escape(bytes: &[u8], position: usize) -> Result<u8, PathError> {
    let high = bytes.get(position + 1).and_then(|&byte| hex_value(byte));
    let low = bytes.get(position + 2).and_then(|&byte| hex_value(byte));
    let (Some(high), Some(low)) = (high, low) else {
        return Err(PathError::InvalidPercentEncoding);
    };
    let decoded = (high << 4) | low;
    if decoded == b'/' || decoded == b'\\' {
        return Err(PathError::EncodedSeparator);
    }
    if is_control(decoded) {
        return Err(PathError::ControlCharacter);
    }
    Ok(decoded)
}

fn hex_value(byte: u8) -> Option<u8> {
    char::from(byte)
        .to_digit(16)
        .and_then(|value| u8::try_from(value).ok())
}

fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

fn is_control(byte: u8) -> bool {
    byte < 0x20 || byte == 0x7F
}

fn is_dot_segment(segment: &[u8]) -> bool {
    segment == b"." || segment == b".."
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normal(raw: &str) -> String {
        match normalize_path(raw) {
            Ok(path) => path.into_owned(),
            Err(error) => format!("error: {error:?}"),
        }
    }

    #[test]
    fn already_normal_paths_are_borrowed() {
        for raw in [
            "/",
            "/health",
            "/users/42/",
            "/caf%C3%A9",
            "/a:b/c*d",
            "/...",
            "/.hidden",
        ] {
            assert!(
                matches!(normalize_path(raw), Ok(Cow::Borrowed(path)) if path == raw),
                "{raw} should be borrowed unchanged"
            );
        }
    }

    #[test]
    fn merges_duplicate_slashes() {
        assert_eq!(normal("//"), "/");
        assert_eq!(normal("//a///b"), "/a/b");
        assert_eq!(normal("/a//"), "/a/");
    }

    #[test]
    fn resolves_dot_segments() {
        assert_eq!(normal("/a/./b"), "/a/b");
        assert_eq!(normal("/a/b/../c"), "/a/c");
        assert_eq!(normal("/a/."), "/a/");
        assert_eq!(normal("/a/.."), "/");
        assert_eq!(normal("/a/b/.."), "/a/");
        assert_eq!(normal("/a/b/../"), "/a/");
        assert_eq!(normal("/."), "/");
        assert_eq!(normal("/./"), "/");
    }

    #[test]
    fn decodes_unreserved_and_uppercases_other_escapes() {
        assert_eq!(normal("/%61dmin"), "/admin");
        assert_eq!(normal("/%7Euser/%2d%5F"), "/~user/-_");
        assert_eq!(normal("/caf%c3%a9"), "/caf%C3%A9");
        assert_eq!(normal("/a%20b"), "/a%20b");
        assert_eq!(normal("/a%3fb"), "/a%3Fb");
    }

    #[test]
    fn encoded_dots_count_as_dot_segments() {
        assert_eq!(normal("/a/%2e%2e/b"), "/b");
        assert_eq!(normal("/a/.%2E"), "/");
        assert_eq!(normal("/a/%2e/"), "/a/");
    }

    #[test]
    fn keeps_trailing_slash() {
        assert_eq!(normal("/a/b/"), "/a/b/");
        assert_eq!(normal("/a/./b/"), "/a/b/");
    }

    #[test]
    fn rejects_relative_paths() {
        assert_eq!(normalize_path(""), Err(PathError::NotAbsolute));
        assert_eq!(normalize_path("a/b"), Err(PathError::NotAbsolute));
        assert_eq!(normalize_path("*"), Err(PathError::NotAbsolute));
    }

    #[test]
    fn rejects_escaping_the_root() {
        assert_eq!(normalize_path("/.."), Err(PathError::EscapesRoot));
        assert_eq!(normalize_path("/a/../.."), Err(PathError::EscapesRoot));
        assert_eq!(normalize_path("/a/../../b"), Err(PathError::EscapesRoot));
        assert_eq!(normalize_path("/%2e%2e/etc"), Err(PathError::EscapesRoot));
    }

    #[test]
    fn rejects_encoded_separators() {
        for raw in ["/a%2Fb", "/a%2fb", "/a%5Cb", "/a%5cb"] {
            assert_eq!(
                normalize_path(raw),
                Err(PathError::EncodedSeparator),
                "{raw}"
            );
        }
    }

    #[test]
    fn rejects_control_characters() {
        for raw in [
            "/a\nb", "/a\tb", "/a\u{7f}", "/a%00", "/a%0a", "/a%1F", "/a%7f",
        ] {
            assert_eq!(
                normalize_path(raw),
                Err(PathError::ControlCharacter),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn rejects_invalid_percent_encoding() {
        for raw in ["/a%", "/a%2", "/a%zz", "/a%2g", "/%%41"] {
            assert_eq!(
                normalize_path(raw),
                Err(PathError::InvalidPercentEncoding),
                "{raw}"
            );
        }
    }

    #[test]
    fn errors_have_short_messages() {
        assert_eq!(
            PathError::EscapesRoot.to_string(),
            "path climbs above the root with '..'"
        );
        assert_eq!(
            PathError::NotAbsolute.to_string(),
            "path must start with '/'"
        );
    }

    #[test]
    fn strips_the_static_prefix() {
        assert_eq!(strip_static_prefix("/api/users", 4), "/users");
        assert_eq!(strip_static_prefix("/api/users?x=1", 4), "/users");
        assert_eq!(strip_static_prefix("/api", 4), "/");
        assert_eq!(strip_static_prefix("/api/", 4), "/");
        assert_eq!(strip_static_prefix("/health", 7), "/");
        assert_eq!(strip_static_prefix("/users/42", 0), "/users/42");
        assert!(matches!(
            strip_static_prefix("/api/users", 4),
            Cow::Borrowed("/users")
        ));
        assert!(matches!(strip_static_prefix("/api", 4), Cow::Borrowed("/")));
    }

    #[test]
    fn stripping_never_panics_on_a_foreign_length() {
        assert_eq!(strip_static_prefix("/a", 10), "/a");
        assert_eq!(strip_static_prefix("/é", 2), "/é");
        assert_eq!(strip_static_prefix("/abc", 2), "/bc");
    }
}
