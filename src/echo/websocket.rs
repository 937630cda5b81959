//! WebSocket upgrades (HTTP/1.1 only) and the echo loop that runs on the upgraded socket.

use futures_util::{SinkExt, StreamExt};
use http::header::{
    CONNECTION, HeaderValue, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION,
    UPGRADE,
};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::body::ResponseBody;
use super::connection::ConnectionContext;
use super::lifecycle::TaskGuard;
use super::responses::{self, EchoResponse};

/// The only WebSocket protocol version (RFC 6455).
const SUPPORTED_VERSION: &str = "13";

/// True for an HTTP/1.1 request whose `Upgrade` header lists `websocket`. Other HTTP versions
/// cannot upgrade a connection, so their requests are echoed like any other.
pub(super) fn is_upgrade_request<B>(request: &Request<B>) -> bool {
    request.version() == Version::HTTP_11
        && request
            .headers()
            .get_all(UPGRADE)
            .iter()
            .any(|value| lists_token(value, "websocket"))
}

/// Whether a comma-separated header value contains `token`, ignoring case.
fn lists_token(value: &HeaderValue, token: &str) -> bool {
    value.to_str().is_ok_and(|text| {
        text.split(',')
            .any(|item| item.trim().eq_ignore_ascii_case(token))
    })
}

/// Checks the handshake, answers 101 and starts echoing on the upgraded socket once hyper
/// hands it over; a bad handshake gets a JSON error instead.
pub(super) fn accept(
    mut request: Request<Incoming>,
    connection: &ConnectionContext,
) -> EchoResponse {
    if request.method() != Method::GET {
        return responses::error(
            StatusCode::BAD_REQUEST,
            "a WebSocket handshake must use GET",
        );
    }
    let version_supported = request
        .headers()
        .get(SEC_WEBSOCKET_VERSION)
        .is_some_and(|version| version.as_bytes() == SUPPORTED_VERSION.as_bytes());
    if !version_supported {
        let mut response = responses::error(
            StatusCode::UPGRADE_REQUIRED,
            "only WebSocket version 13 is supported",
        );
        response.headers_mut().insert(
            SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static(SUPPORTED_VERSION),
        );
        return response;
    }
    let Some(key) = request.headers().get(SEC_WEBSOCKET_KEY) else {
        return responses::error(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key");
    };
    let accept_key = derive_accept_key(key.as_bytes());
    let Ok(accept_value) = HeaderValue::from_str(&accept_key) else {
        // Base64 text is always a valid header value; refuse rather than panic all the same.
        return responses::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode accept key",
        );
    };
    let Some(task_guard) = connection.task_guard.upgrade() else {
        return responses::error(StatusCode::SERVICE_UNAVAILABLE, "echo server is stopping");
    };

    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(echo_until_closed(upgrade, task_guard));

    let mut response = Response::new(ResponseBody::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(SEC_WEBSOCKET_ACCEPT, accept_value);
    response
}

/// Runs the echo loop until the peer closes, the socket fails, or the server stops (which
/// drops the socket without a close frame, as a killed backend would).
async fn echo_until_closed(upgrade: OnUpgrade, mut task_guard: TaskGuard) {
    tokio::select! {
        () = task_guard.stop_requested() => {}
        () = echo_messages(upgrade) => {}
    }
}

async fn echo_messages(upgrade: OnUpgrade) {
    let upgraded = match upgrade.await {
        Ok(upgraded) => upgraded,
        Err(error) => {
            log::debug!("echo WebSocket upgrade failed: {error}");
            return;
        }
    };
    let mut websocket =
        WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
    // tungstenite queues the pong for a ping and the reply to a close itself; after a close the
    // stream ends and dropping the socket finishes the closing handshake.
    while let Some(received) = websocket.next().await {
        let outcome = match received {
            Ok(message @ (Message::Text(_) | Message::Binary(_))) => websocket.send(message).await,
            // Flush now so the queued pong does not wait for the next incoming message.
            Ok(Message::Ping(_)) => websocket.flush().await,
            Ok(Message::Pong(_) | Message::Close(_) | Message::Frame(_)) => Ok(()),
            Err(error) => Err(error),
        };
        if let Err(error) = outcome {
            log::debug!("echo WebSocket ended: {error}");
            return;
        }
    }
}
