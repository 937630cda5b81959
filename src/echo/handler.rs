//! Answering one request: route it, then build the response that route asks for.

use std::sync::Arc;

use http::header::HeaderName;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};

use super::connection::ConnectionContext;
use super::json::{self, EchoReport};
use super::responses::{self, EchoResponse};
use super::routes::{Route, route_of};
use super::websocket;

/// Names the server that answered, so tests of load balancing can count who got what.
const ECHO_INSTANCE_HEADER: HeaderName = HeaderName::from_static("x-echo-instance");

/// Largest request body the echo route will count.
const MAX_REQUEST_BODY: u64 = 100 * 1024 * 1024;

/// The hyper service. An error (only ever a failure reading the request body) makes hyper drop
/// the connection, which is all that can be done once the body is broken.
pub(super) async fn handle(
    request: Request<Incoming>,
    connection: Arc<ConnectionContext>,
) -> Result<EchoResponse, hyper::Error> {
    let mut response = match route_of(&request) {
        Route::Health => responses::json(StatusCode::OK, json::health(&connection.server.instance)),
        Route::Status(Some(status)) => echo(request, &connection, status).await?,
        Route::Status(None) => responses::error(
            StatusCode::BAD_REQUEST,
            "status code must be a number from 100 to 999",
        ),
        Route::Delay(Some(delay)) => {
            let response = echo(request, &connection, StatusCode::OK).await?;
            tokio::time::sleep(delay).await;
            response
        }
        Route::Delay(None) => responses::error(
            StatusCode::BAD_REQUEST,
            "delay must be a whole number of milliseconds",
        ),
        Route::Bytes(Some(length)) => responses::pattern_bytes(length),
        Route::Bytes(None) => {
            responses::error(StatusCode::BAD_REQUEST, "byte count must be a whole number")
        }
        Route::WebSocket => websocket::accept(request, &connection),
        Route::Echo => echo(request, &connection, StatusCode::OK).await?,
    };
    response.headers_mut().insert(
        ECHO_INSTANCE_HEADER,
        connection.server.instance_header.clone(),
    );
    Ok(response)
}

/// Reads the whole request body, counting it, and answers with the JSON echo of the request.
///
/// A 1xx `status` cannot be a final response; hyper replaces it with a 500 rather than fail.
async fn echo(
    request: Request<Incoming>,
    connection: &ConnectionContext,
    status: StatusCode,
) -> Result<EchoResponse, hyper::Error> {
    let (parts, body) = request.into_parts();
    let Some(body_size) = count_body_bytes(body, MAX_REQUEST_BODY).await? else {
        return Ok(responses::body_too_large(parts.version, MAX_REQUEST_BODY));
    };
    let report = EchoReport {
        instance: &connection.server.instance,
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query(),
        headers: &parts.headers,
        body_size,
        version: parts.version,
        local_address: connection.local_address,
        remote_address: connection.remote_address,
    };
    Ok(responses::json(status, report.to_json()))
}

/// The body's length, or `None` as soon as it is known to exceed `limit`. Frames are counted
/// and dropped, never buffered, so a large upload costs no memory.
async fn count_body_bytes(mut body: Incoming, limit: u64) -> Result<Option<u64>, hyper::Error> {
    // A declared `content-length` over the limit is refused before reading anything.
    if body.size_hint().lower() > limit {
        return Ok(None);
    }
    let mut size: u64 = 0;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame?.data_ref() {
            size = size.saturating_add(data.len() as u64);
            if size > limit {
                return Ok(None);
            }
        }
    }
    Ok(Some(size))
}
