//! Building responses. Built field by field rather than with `Response::builder`, whose
//! `Result` would only ever be an error for header values we never pass.

use http::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Response, StatusCode, Version};

use super::body::ResponseBody;

pub(super) type EchoResponse = Response<ResponseBody>;

/// A JSON response, or an empty 500 when the JSON could not be written.
pub(super) fn json(status: StatusCode, json: serde_json::Result<Vec<u8>>) -> EchoResponse {
    match json {
        Ok(json) => {
            let mut response = Response::new(ResponseBody::whole(json));
            *response.status_mut() = status;
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        Err(error) => {
            log::error!("echo server could not write a JSON body: {error}");
            let mut response = Response::new(ResponseBody::empty());
            *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            response
        }
    }
}

/// `{"error": message}` with the given status.
pub(super) fn error(status: StatusCode, message: &str) -> EchoResponse {
    json(status, super::json::error(message))
}

/// 413 for a body over the limit, closing HTTP/1 connections because the rest of the body is
/// left unread. (HTTP/2 forbids the `connection` header; hyper resets the stream instead.)
pub(super) fn body_too_large(version: Version, limit: u64) -> EchoResponse {
    let mut response = error(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("request body is larger than {limit} bytes"),
    );
    if version < Version::HTTP_2 {
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// `length` bytes of the repeating pattern.
pub(super) fn pattern_bytes(length: u64) -> EchoResponse {
    let mut response = Response::new(ResponseBody::pattern(length));
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
    response
}
