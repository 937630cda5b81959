//! Host patterns from the configuration and the request's host in comparable form.
//!
//! Both sides are reduced to lowercase names without port or trailing dot, so that host
//! matching is a plain byte comparison on the hot path.

/// Longest DNS name (RFC 1035); a longer request host cannot equal any configured host.
pub(crate) const MAX_HOST_LEN: usize = 253;

/// A validated entry of [`RouteSpec::hosts`](super::RouteSpec::hosts).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum HostPattern {
    /// A lowercase host name.
    Exact(Box<str>),
    /// `*.example.com`, stored as the suffix `example.com`.
    Wildcard(Box<str>),
}

impl HostPattern {
    pub(crate) fn parse(raw: &str) -> Result<HostPattern, String> {
        let host = raw.strip_suffix('.').unwrap_or(raw).to_ascii_lowercase();
        if host.is_empty() {
            return Err("host must not be empty".to_string());
        }
        if host.len() > MAX_HOST_LEN {
            return Err(format!("host {raw:?} is longer than {MAX_HOST_LEN} bytes"));
        }
        if !host.is_ascii() {
            return Err(format!(
                "host {raw:?} is not ASCII; write internationalised names in their xn-- form"
            ));
        }
        let (name, is_wildcard) = match host.strip_prefix("*.") {
            Some(suffix) => (suffix, true),
            None => (host.as_str(), false),
        };
        if name.contains('*') {
            return Err(format!(
                "host {raw:?} has a misplaced '*'; a wildcard is only allowed as the whole \
                 first label, as in \"*.example.com\""
            ));
        }
        let is_bracketed_address = name.starts_with('[') && name.ends_with(']');
        if name.contains(':') && !is_bracketed_address {
            return Err(format!(
                "host {raw:?} includes a port; hosts are matched without their port"
            ));
        }
        let has_invalid_byte = name.bytes().any(|byte| {
            !(byte.is_ascii_alphanumeric()
                || matches!(byte, b'-' | b'.' | b'_' | b':' | b'[' | b']'))
        });
        if name.is_empty() || has_invalid_byte || name.split('.').any(str::is_empty) {
            return Err(format!("host {raw:?} is not a valid host name"));
        }
        let name = Box::from(name);
        Ok(if is_wildcard {
            HostPattern::Wildcard(name)
        } else {
            HostPattern::Exact(name)
        })
    }
}

/// The request host without `:port` and without a trailing dot.
pub(crate) fn host_name(raw: &str) -> &str {
    let without_port = if raw.starts_with('[') {
        // An IPv6 literal: its colons are not a port separator.
        match raw.find(']') {
            Some(end) => &raw[..=end],
            None => raw,
        }
    } else {
        match raw.bytes().rposition(|byte| byte == b':') {
            Some(colon) if raw[colon + 1..].bytes().all(|byte| byte.is_ascii_digit()) => {
                &raw[..colon]
            }
            _ => raw,
        }
    };
    without_port.strip_suffix('.').unwrap_or(without_port)
}

/// Stack space for lower-casing a request host without allocating.
pub(crate) type HostBuffer = [u8; MAX_HOST_LEN];

/// `name` in lowercase, borrowing it when it already is (the usual case) and writing into
/// `buffer` otherwise. `None` when it is too long to equal any configured host.
pub(crate) fn lowercase_host<'a>(name: &'a str, buffer: &'a mut HostBuffer) -> Option<&'a str> {
    if !name.bytes().any(|byte| byte.is_ascii_uppercase()) {
        return Some(name);
    }
    let target = buffer.get_mut(..name.len())?;
    target.copy_from_slice(name.as_bytes());
    target.make_ascii_lowercase();
    std::str::from_utf8(target).ok()
}

/// The suffixes under which a wildcard pattern could match `host`: for `a.b.example.com`,
/// `b.example.com`, `example.com` and `com`. A suffix always follows a non-empty label, which
/// is why `*.example.com` does not match `example.com` itself.
pub(crate) fn wildcard_suffixes(host: &str) -> impl Iterator<Item = &str> {
    host.match_indices('.')
        .filter(|&(dot, _)| dot > 0)
        .filter_map(|(dot, _)| host.get(dot + 1..))
        .filter(|suffix| !suffix.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exact_and_wildcard_hosts() {
        assert_eq!(
            HostPattern::parse("API.Example.com"),
            Ok(HostPattern::Exact("api.example.com".into()))
        );
        assert_eq!(
            HostPattern::parse("example.com."),
            Ok(HostPattern::Exact("example.com".into()))
        );
        assert_eq!(
            HostPattern::parse("*.example.com"),
            Ok(HostPattern::Wildcard("example.com".into()))
        );
        assert_eq!(
            HostPattern::parse("[::1]"),
            Ok(HostPattern::Exact("[::1]".into()))
        );
    }

    #[test]
    fn rejects_malformed_hosts() {
        for raw in [
            "",
            "*",
            "*.",
            "a.*.com",
            "*example.com",
            "example.com:8080",
            "exa mple.com",
            "a..com",
            "café.example",
        ] {
            assert!(
                HostPattern::parse(raw).is_err(),
                "{raw:?} should be rejected"
            );
        }
    }

    #[test]
    fn strips_port_and_trailing_dot() {
        assert_eq!(host_name("example.com:8080"), "example.com");
        assert_eq!(host_name("example.com."), "example.com");
        assert_eq!(host_name("example.com.:443"), "example.com");
        assert_eq!(host_name("[::1]:8080"), "[::1]");
        assert_eq!(host_name("[::1]"), "[::1]");
        assert_eq!(host_name("example.com"), "example.com");
    }

    #[test]
    fn lowercases_only_when_needed() {
        let mut buffer = [0; MAX_HOST_LEN];
        let name = "api.example.com";
        let lowered = lowercase_host(name, &mut buffer);
        assert!(lowered.is_some_and(|lowered| std::ptr::eq(lowered, name)));
        let mut buffer = [0; MAX_HOST_LEN];
        assert_eq!(
            lowercase_host("API.Example.COM", &mut buffer),
            Some("api.example.com")
        );
        let mut buffer = [0; MAX_HOST_LEN];
        let long = "A".repeat(MAX_HOST_LEN + 1);
        assert_eq!(lowercase_host(&long, &mut buffer), None);
    }

    #[test]
    fn lists_wildcard_suffixes() {
        let suffixes: Vec<_> = wildcard_suffixes("a.b.example.com").collect();
        assert_eq!(suffixes, ["b.example.com", "example.com", "com"]);
        assert_eq!(wildcard_suffixes("example").count(), 0);
        let suffixes: Vec<_> = wildcard_suffixes(".example.com").collect();
        assert_eq!(suffixes, ["com"]);
    }
}
