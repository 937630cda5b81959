//! `request_size_limit` (alias `body_limit`, the seed's `BodyLimitMiddleware`): a cap on the
//! request body. A `Content-Length` above it is refused with 413 before anything is sent
//! upstream; a chunked body is counted as it streams and the request fails with 413 at the
//! chunk that crosses the cap, before that chunk is forwarded.

use pingora::http::RequestHeader;
use serde::Deserialize;

use super::Verdict;
use crate::config::units::SizeValue;
use crate::gateway::errors::GatewayError;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct RequestSizeLimitConfig {
    pub max_body_size: SizeValue,
}

impl Default for RequestSizeLimitConfig {
    fn default() -> Self {
        RequestSizeLimitConfig {
            max_body_size: SizeValue(1024 * 1024),
        }
    }
}

#[derive(Debug)]
pub struct RequestSizeLimit {
    max_body_size: u64,
}

impl RequestSizeLimit {
    pub fn compile(
        config: RequestSizeLimitConfig,
        _report: &mut dyn FnMut(&str, String),
    ) -> Option<RequestSizeLimit> {
        Some(RequestSizeLimit {
            max_body_size: config.max_body_size.0,
        })
    }

    fn too_large(&self) -> GatewayError {
        GatewayError::new(
            413,
            "request_body_too_large",
            format!(
                "the request body is larger than the {} bytes this route accepts",
                self.max_body_size
            ),
        )
    }

    pub fn on_request(&self, request: &RequestHeader) -> Verdict {
        let declared = request
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<u64>().ok());
        match declared {
            Some(length) if length > self.max_body_size => Verdict::Fail(self.too_large()),
            _ => Verdict::Continue,
        }
    }

    /// Counts one chunk into `received`; fails once the total passes the cap.
    pub fn on_request_body(&self, chunk_length: usize, received: &mut u64) -> Verdict {
        *received = received.saturating_add(chunk_length as u64);
        if *received > self.max_body_size {
            Verdict::Fail(self.too_large())
        } else {
            Verdict::Continue
        }
    }

    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({ "max_body_size": self.max_body_size })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::test_request;

    #[test]
    fn declared_and_streamed_sizes_are_both_capped() {
        let limit = RequestSizeLimit::compile(
            RequestSizeLimitConfig {
                max_body_size: SizeValue(10),
            },
            &mut |_, _| {},
        )
        .unwrap();
        let declared = |length: &str| {
            limit.on_request(&test_request("POST", "/", &[("content-length", length)]))
        };
        assert!(matches!(declared("10"), Verdict::Continue));
        assert!(matches!(declared("11"), Verdict::Fail(error) if error.status == 413));
        let mut received = 0;
        assert!(matches!(
            limit.on_request_body(6, &mut received),
            Verdict::Continue
        ));
        assert!(matches!(
            limit.on_request_body(4, &mut received),
            Verdict::Continue
        ));
        assert!(matches!(
            limit.on_request_body(1, &mut received),
            Verdict::Fail(_)
        ));
    }
}
