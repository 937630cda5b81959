//! The JSON bodies the echo server sends, each written straight into one buffer.
//!
//! The echo path is exercised by load tests, so the report borrows everything from the request
//! and serde_json escapes each string in place: no intermediate `Value` tree, no copies.

use std::net::SocketAddr;

use http::{HeaderMap, HeaderValue, Version};

/// What the echo route reports about a request.
pub(super) struct EchoReport<'a> {
    pub(super) instance: &'a str,
    pub(super) method: &'a str,
    pub(super) path: &'a str,
    pub(super) query: Option<&'a str>,
    pub(super) headers: &'a HeaderMap,
    pub(super) body_size: u64,
    pub(super) version: Version,
    pub(super) local_address: SocketAddr,
    pub(super) remote_address: SocketAddr,
}

impl EchoReport<'_> {
    /// Errors cannot happen when writing these values to memory; they are passed on rather than
    /// unwrapped only so that a future field cannot turn that assumption into a panic.
    pub(super) fn to_json(&self) -> serde_json::Result<Vec<u8>> {
        // Room for the fixed fields plus a typical header; one or two regrowths at most.
        let mut object = JsonObjectWriter::with_capacity(320 + 64 * self.headers.len());
        object.string("instance", self.instance)?;
        object.string("method", self.method)?;
        object.string("path", self.path)?;
        object.optional_string("query", self.query)?;
        object.headers("headers", self.headers)?;
        object.number("body_size", self.body_size)?;
        object.string("version", version_name(self.version))?;
        object.address("local_address", self.local_address)?;
        object.address("remote_address", self.remote_address)?;
        Ok(object.finish())
    }
}

/// `{"status":"ok","instance":"..."}`
pub(super) fn health(instance: &str) -> serde_json::Result<Vec<u8>> {
    let mut object = JsonObjectWriter::with_capacity(40 + instance.len());
    object.string("status", "ok")?;
    object.string("instance", instance)?;
    Ok(object.finish())
}

/// `{"error":"..."}`
pub(super) fn error(message: &str) -> serde_json::Result<Vec<u8>> {
    let mut object = JsonObjectWriter::with_capacity(16 + message.len());
    object.string("error", message)?;
    Ok(object.finish())
}

fn version_name(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "unknown",
    }
}

/// Writes one JSON object field by field.
struct JsonObjectWriter {
    buffer: Vec<u8>,
    has_fields: bool,
}

impl JsonObjectWriter {
    fn with_capacity(capacity: usize) -> JsonObjectWriter {
        let mut buffer = Vec::with_capacity(capacity);
        buffer.push(b'{');
        JsonObjectWriter {
            buffer,
            has_fields: false,
        }
    }

    /// Field names are fixed literals that need no escaping, hence `&'static str`.
    fn key(&mut self, name: &'static str) {
        if self.has_fields {
            self.buffer.push(b',');
        }
        self.has_fields = true;
        self.buffer.push(b'"');
        self.buffer.extend_from_slice(name.as_bytes());
        self.buffer.extend_from_slice(b"\":");
    }

    fn string(&mut self, name: &'static str, value: &str) -> serde_json::Result<()> {
        self.key(name);
        serde_json::to_writer(&mut self.buffer, value)
    }

    fn optional_string(
        &mut self,
        name: &'static str,
        value: Option<&str>,
    ) -> serde_json::Result<()> {
        match value {
            Some(value) => self.string(name, value),
            None => {
                self.key(name);
                self.buffer.extend_from_slice(b"null");
                Ok(())
            }
        }
    }

    fn number(&mut self, name: &'static str, value: u64) -> serde_json::Result<()> {
        self.key(name);
        serde_json::to_writer(&mut self.buffer, &value)
    }

    /// `ip:port`, with IPv6 addresses in brackets.
    fn address(&mut self, name: &'static str, value: SocketAddr) -> serde_json::Result<()> {
        self.key(name);
        serde_json::to_writer(&mut self.buffer, &value)
    }

    /// One member per header name: a string, or an array of strings when the header repeats.
    fn headers(&mut self, name: &'static str, headers: &HeaderMap) -> serde_json::Result<()> {
        self.key(name);
        self.buffer.push(b'{');
        for (index, header_name) in headers.keys().enumerate() {
            if index > 0 {
                self.buffer.push(b',');
            }
            serde_json::to_writer(&mut self.buffer, header_name.as_str())?;
            self.buffer.push(b':');
            let mut values = headers.get_all(header_name).iter();
            match (values.next(), values.next()) {
                (Some(only), None) => self.header_value(only)?,
                (Some(first), Some(second)) => {
                    self.buffer.push(b'[');
                    self.header_value(first)?;
                    for value in std::iter::once(second).chain(values) {
                        self.buffer.push(b',');
                        self.header_value(value)?;
                    }
                    self.buffer.push(b']');
                }
                // `keys` only yields names that have a value; keep the JSON valid regardless.
                (None, _) => self.buffer.extend_from_slice(b"null"),
            }
        }
        self.buffer.push(b'}');
        Ok(())
    }

    /// Header values may carry any bytes; invalid UTF-8 is replaced rather than rejected, and
    /// valid values are borrowed, not copied.
    fn header_value(&mut self, value: &HeaderValue) -> serde_json::Result<()> {
        let text = String::from_utf8_lossy(value.as_bytes());
        serde_json::to_writer(&mut self.buffer, text.as_ref())
    }

    fn finish(mut self) -> Vec<u8> {
        self.buffer.push(b'}');
        self.buffer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &[u8]) -> serde_json::Value {
        serde_json::from_slice(json).expect("the writer produces valid JSON")
    }

    #[test]
    fn report_escapes_and_groups_headers() {
        let mut headers = HeaderMap::new();
        headers.append("x-single", HeaderValue::from_static("a \"quoted\" value"));
        headers.append("x-repeated", HeaderValue::from_static("one"));
        headers.append("x-repeated", HeaderValue::from_static("two"));
        headers.append("x-repeated", HeaderValue::from_static("three"));
        let raw = HeaderValue::from_bytes(b"caf\xe9").expect("obs-text is a valid header value");
        headers.append("x-latin1", raw);
        let report = EchoReport {
            instance: "back\\end",
            method: "PUT",
            path: "/a/b",
            query: None,
            headers: &headers,
            body_size: 42,
            version: Version::HTTP_2,
            local_address: "[::1]:8080".parse().expect("valid address"),
            remote_address: "127.0.0.1:50000".parse().expect("valid address"),
        };
        let json = parse(&report.to_json().expect("writing to memory succeeds"));
        assert_eq!(
            json,
            serde_json::json!({
                "instance": "back\\end",
                "method": "PUT",
                "path": "/a/b",
                "query": null,
                "headers": {
                    "x-single": "a \"quoted\" value",
                    "x-repeated": ["one", "two", "three"],
                    "x-latin1": "caf\u{fffd}",
                },
                "body_size": 42,
                "version": "HTTP/2.0",
                "local_address": "[::1]:8080",
                "remote_address": "127.0.0.1:50000",
            })
        );
    }

    #[test]
    fn health_and_error_bodies() {
        let health = parse(&health("blue").expect("writing to memory succeeds"));
        assert_eq!(
            health,
            serde_json::json!({"status": "ok", "instance": "blue"})
        );
        let error = parse(&error("bad\nthing").expect("writing to memory succeeds"));
        assert_eq!(error, serde_json::json!({"error": "bad\nthing"}));
    }
}
