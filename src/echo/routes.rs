//! Which behaviour a request asks for, decided from its method, path and headers alone.

use std::time::Duration;

use http::{Method, Request, StatusCode};

use super::websocket;

/// Longest `/delay` honoured: long enough for any timeout test, short enough not to pin a
/// connection for good.
pub(super) const MAX_DELAY: Duration = Duration::from_secs(60);

/// Largest `/bytes` body generated.
pub(super) const MAX_GENERATED_BYTES: u64 = 100 * 1024 * 1024;

/// A request's behaviour; `None` inside a variant means its path parameter was invalid.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Route {
    Health,
    Status(Option<StatusCode>),
    Delay(Option<Duration>),
    Bytes(Option<u64>),
    WebSocket,
    Echo,
}

pub(super) fn route_of<B>(request: &Request<B>) -> Route {
    if websocket::is_upgrade_request(request) {
        return Route::WebSocket;
    }
    let path = request.uri().path();
    if path == "/health" && matches!(*request.method(), Method::GET | Method::HEAD) {
        Route::Health
    } else if let Some(code) = path.strip_prefix("/status/") {
        Route::Status(parse_status(code))
    } else if let Some(milliseconds) = path.strip_prefix("/delay/") {
        Route::Delay(parse_delay(milliseconds))
    } else if let Some(count) = path.strip_prefix("/bytes/") {
        Route::Bytes(parse_byte_count(count))
    } else {
        Route::Echo
    }
}

/// `http` accepts exactly the codes 100 to 999.
fn parse_status(text: &str) -> Option<StatusCode> {
    let code: u16 = text.parse().ok()?;
    StatusCode::from_u16(code).ok()
}

fn parse_delay(text: &str) -> Option<Duration> {
    let milliseconds: u64 = text.parse().ok()?;
    Some(Duration::from_millis(milliseconds).min(MAX_DELAY))
}

fn parse_byte_count(text: &str) -> Option<u64> {
    let count: u64 = text.parse().ok()?;
    Some(count.min(MAX_GENERATED_BYTES))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route_for(method: Method, uri: &str) -> Route {
        let mut request = Request::new(());
        *request.method_mut() = method;
        *request.uri_mut() = uri.parse().expect("test URIs are valid");
        route_of(&request)
    }

    #[test]
    fn health_answers_get_and_head_only() {
        assert_eq!(route_for(Method::GET, "/health"), Route::Health);
        assert_eq!(route_for(Method::HEAD, "/health"), Route::Health);
        assert_eq!(route_for(Method::POST, "/health"), Route::Echo);
        assert_eq!(route_for(Method::GET, "/health/more"), Route::Echo);
    }

    #[test]
    fn status_codes_are_validated() {
        assert_eq!(
            route_for(Method::GET, "/status/418"),
            Route::Status(Some(StatusCode::IM_A_TEAPOT))
        );
        assert_eq!(
            route_for(Method::POST, "/status/999?x=1"),
            Route::Status(StatusCode::from_u16(999).ok())
        );
        for invalid in [
            "/status/99",
            "/status/1000",
            "/status/abc",
            "/status/",
            "/status/2/0",
        ] {
            assert_eq!(
                route_for(Method::GET, invalid),
                Route::Status(None),
                "{invalid}"
            );
        }
        assert_eq!(route_for(Method::GET, "/status"), Route::Echo);
    }

    #[test]
    fn delays_are_capped() {
        assert_eq!(
            route_for(Method::GET, "/delay/250"),
            Route::Delay(Some(Duration::from_millis(250)))
        );
        assert_eq!(
            route_for(Method::GET, "/delay/999999999"),
            Route::Delay(Some(MAX_DELAY))
        );
        assert_eq!(route_for(Method::GET, "/delay/-1"), Route::Delay(None));
        assert_eq!(route_for(Method::GET, "/delay/soon"), Route::Delay(None));
    }

    #[test]
    fn byte_counts_are_capped() {
        assert_eq!(route_for(Method::GET, "/bytes/0"), Route::Bytes(Some(0)));
        assert_eq!(
            route_for(Method::GET, "/bytes/18446744073709551615"),
            Route::Bytes(Some(MAX_GENERATED_BYTES))
        );
        assert_eq!(route_for(Method::GET, "/bytes/1e3"), Route::Bytes(None));
    }
}
