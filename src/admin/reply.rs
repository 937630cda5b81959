//! An admin API answer: a status, a JSON document and the headers that go with it.

use http::header::{HeaderName, HeaderValue};
use http::{Response, StatusCode};
use serde_json::{Value, json};

pub struct Reply {
    pub status: StatusCode,
    pub body: Body,
    headers: Vec<(HeaderName, HeaderValue)>,
}

pub enum Body {
    Json(Value),
    /// Already encoded, with its content type (Prometheus text).
    Raw(&'static str, Vec<u8>),
}

impl Reply {
    pub fn json(status: StatusCode, body: Value) -> Reply {
        Reply {
            status,
            body: Body::Json(body),
            headers: Vec::new(),
        }
    }

    pub fn raw(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Reply {
        Reply {
            status,
            body: Body::Raw(content_type, body),
            headers: Vec::new(),
        }
    }

    /// The admin API's error document: `{"error": {"status", "code", "message"}}`.
    pub fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Reply {
        Reply::json(
            status,
            json!({"error": {"status": status.as_u16(), "code": code, "message": message.into()}}),
        )
    }

    /// Adds a header; a value that is not a valid header value is left out.
    pub fn with_header(mut self, name: HeaderName, value: &str) -> Reply {
        if let Ok(value) = HeaderValue::from_str(value) {
            self.headers.push((name, value));
        }
        self
    }

    pub fn with_header_value(mut self, name: HeaderName, value: HeaderValue) -> Reply {
        self.headers.push((name, value));
        self
    }

    /// `ETag: "<revision>"`.
    pub fn with_etag(self, revision: &str) -> Reply {
        self.with_header(http::header::ETAG, &format!("\"{revision}\""))
    }

    /// The JSON document, when it is an object, to add keys to.
    pub fn object_mut(&mut self) -> Option<&mut serde_json::Map<String, Value>> {
        match &mut self.body {
            Body::Json(Value::Object(map)) => Some(map),
            _ => None,
        }
    }

    pub fn into_response(self) -> Response<Vec<u8>> {
        let (content_type, body) = match self.body {
            Body::Json(document) => (
                "application/json",
                serde_json::to_vec(&document).unwrap_or_default(),
            ),
            Body::Raw(content_type, body) => (content_type, body),
        };
        let length = body.len();
        let mut response = Response::new(body);
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static(content_type),
        );
        headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(length));
        // Admin answers describe live state and may hold config: never cached.
        headers.insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        );
        for (name, value) in self.headers {
            headers.append(name, value);
        }
        response
    }
}

impl From<(StatusCode, Value)> for Reply {
    fn from((status, body): (StatusCode, Value)) -> Reply {
        Reply::json(status, body)
    }
}
