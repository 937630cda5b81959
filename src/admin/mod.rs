//! The admin listener: `/health`, `/ready`, `/info`, Prometheus `/metrics`, the routes,
//! upstreams and plugins as they run, and the API that changes them ([`changes`]), with the
//! effective config and what the admin API changed in it ([`config_view`]).
//!
//! It runs as its own Pingora service so that it answers (and `/ready` can say "not yet")
//! while the proxy listeners wait for the first health-check round. With `admin.auth` or
//! `admin.tokens` set, every path but the probes asks for credentials first, and changes
//! need the `write` role ([`auth`]).

use std::sync::Arc;

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

pub mod auth;
pub mod cache_view;
pub mod canary;
pub mod changes;
pub mod config_view;
pub mod explain;
pub mod plugins;
pub mod redact;
pub mod reply;
pub mod routes;
pub mod upstreams;

use crate::config::ResourceKind;
use crate::config::schema::AdminRole;
use crate::control::Reloader;
use crate::gateway::snapshot::GatewayState;
use crate::observe::metrics;
use auth::Principal;
use reply::Reply;

/// Larger admin request bodies get 413: a whole route or upstream is a few kilobytes.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

pub struct AdminApp {
    reloader: Arc<Reloader>,
}

impl AdminApp {
    pub fn new(reloader: Arc<Reloader>) -> AdminApp {
        AdminApp { reloader }
    }

    fn state(&self) -> &GatewayState {
        self.reloader.state()
    }

    fn info(&self) -> serde_json::Value {
        let snapshot = self.state().current();
        let loaded_at = snapshot
            .loaded_at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs());
        serde_json::json!({
            "name": "loom",
            "version": env!("CARGO_PKG_VERSION"),
            "config_file": snapshot.config_path.display().to_string(),
            "config_hash": snapshot.config_hash,
            "config_revision": snapshot.effective.revision,
            "overlay_file": snapshot.effective.overlay_path.display().to_string(),
            "overlay_changes": snapshot.effective.changes.len(),
            "config_generation": snapshot.generation,
            "config_loaded_at_unix": loaded_at,
            "uptime_seconds": self.state().started_at.elapsed().as_secs(),
            "routes": snapshot.routes.len(),
            "upstreams": snapshot.upstreams.len(),
            "plugins": snapshot.plugins.iter().count(),
        })
    }

    fn ready(&self) -> (StatusCode, serde_json::Value) {
        let snapshot = self.state().current();
        let waiting: Vec<&str> = snapshot
            .upstreams
            .iter()
            .filter(|pool| !pool.first_health_round_done())
            .map(|pool| &*pool.name)
            .collect();
        if !self.state().listeners_open() {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"status": "not_ready", "reason": "proxy listeners are not accepting connections (starting or shutting down)"}),
            )
        } else if waiting.is_empty() {
            (StatusCode::OK, serde_json::json!({"status": "ready"}))
        } else {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"status": "starting", "waiting_for_health_checks": waiting}),
            )
        }
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let reply = self.serve(session).await;
        if !session.is_body_done() {
            // An unread body would be taken for the next request on this connection.
            session.set_keepalive(None);
        }
        reply.into_response()
    }
}

impl AdminApp {
    async fn serve(&self, session: &mut ServerSession) -> Reply {
        let snapshot = self.state().current();
        let path = session.req_header().uri.path().to_string();
        let method = session.req_header().method.clone();
        // No CORS on the admin API: a browser's preflight is refused, and no answer carries
        // Access-Control-* headers, so no web page can call it from another origin.
        if method == Method::OPTIONS {
            return Reply::error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "the admin API answers no OPTIONS (and no CORS)",
            );
        }
        // Browsers put `Origin` on every cross-origin request and on every POST, PUT and
        // DELETE, even the "simple" ones that need no preflight; admin clients (curl,
        // scripts, automation) send none. Refusing it keeps web pages from changing the
        // gateway through an operator's browser.
        if let Some(origin) = session.req_header().headers.get(http::header::ORIGIN) {
            return Reply::error(
                StatusCode::FORBIDDEN,
                "cross_origin",
                format!(
                    "the admin API does not answer browsers' cross-origin requests (Origin: {})",
                    origin.to_str().unwrap_or("?")
                ),
            );
        }
        // Without credentials, a DNS-rebinding page could reach a loopback listener under its
        // own host name: only IP literals and localhost are answered then.
        if snapshot.admin_auth.is_none() && !is_local_host(session.req_header()) {
            return Reply::error(
                StatusCode::FORBIDDEN,
                "host_not_allowed",
                "without admin.auth or admin.tokens the admin API answers only requests for \
                 localhost or an IP address (Host header)",
            );
        }
        // Liveness and readiness stay open, as in Go Loom: load balancers and orchestrators
        // probe them without credentials, and they reveal nothing but up or down.
        let probe = matches!(path.as_str(), "/health" | "/ready" | "/healthz" | "/readyz");
        let principal = match &snapshot.admin_auth {
            Some(auth) if !probe => {
                let authorization = session
                    .req_header()
                    .headers
                    .get(http::header::AUTHORIZATION);
                match auth.identify(authorization) {
                    Some(principal) => principal,
                    None => return unauthorized(auth),
                }
            }
            _ => anonymous(snapshot.admin_address),
        };
        let segments = decoded_segments(&path);
        let reset = upstreams::is_reset(&method, &segments);
        let cache_purge = method == Method::DELETE && path == "/cache";
        let writes = changes::is_write(&method, &segments) || reset || cache_purge;
        if writes && principal.role < AdminRole::Write {
            changes::audit_refusal(&principal, &method, &path, StatusCode::FORBIDDEN);
            return Reply::error(
                StatusCode::FORBIDDEN,
                "forbidden",
                if snapshot.admin_auth.is_some() {
                    format!("\"{}\" may read but not change (role read)", principal.name)
                } else {
                    "the admin listener is not on a loopback address: configure admin.auth or \
                     admin.tokens with the write role to change the config through it"
                        .to_string()
                },
            );
        }
        if cache_purge {
            return cache_view::purge(&principal, session.req_header().uri.query());
        }
        if method == Method::GET && path == "/cache" {
            return cache_view::show();
        }
        if path == "/explain" {
            let query = session.req_header().uri.query();
            let (status, document) = explain::handle(self.state(), &method, query);
            return Reply::from((status, redact::redacted(&document)));
        }
        if changes::is_write(&method, &segments) {
            let json_body = session
                .req_header()
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|value| value.to_str().ok())
                .is_some_and(|value| value.trim_start().starts_with("application/json"));
            let declared_empty = session
                .req_header()
                .headers
                .get(http::header::CONTENT_LENGTH)
                .is_none_or(|length| length.as_bytes() == b"0");
            let body_optional = changes::body_optional(&method, &segments) && declared_empty;
            if method != Method::DELETE && !json_body && !body_optional {
                changes::audit_refusal(
                    &principal,
                    &method,
                    &path,
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                );
                return Reply::error(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    "admin changes take a JSON body: send Content-Type: application/json",
                );
            }
            let body = match read_body(session).await {
                Ok(body) => body,
                Err(reply) => return reply,
            };
            let request = changes::WriteRequest {
                method: &method,
                path: &path,
                segments,
                headers: &session.req_header().headers,
                body: &body,
                principal: &principal,
            };
            return changes::handle(&self.reloader, request).await;
        }
        let effective = &snapshot.effective;
        if method == Method::GET && segments.first().is_some_and(|first| first == "config") {
            return match segments.get(1).map(String::as_str) {
                None => config_view::config(effective),
                Some("diff") if segments.len() == 2 => config_view::diff(effective),
                Some(_) => not_found(),
            };
        }
        if let Some(kind) = segments
            .first()
            .and_then(|section| ResourceKind::from_section(section))
        {
            let rest = path
                .strip_prefix('/')
                .and_then(|path| path.strip_prefix(kind.section()))
                .unwrap_or_default();
            let (status, document) = match kind {
                ResourceKind::Route => routes::handle(self.state(), &method, rest),
                ResourceKind::Upstream => upstreams::handle(self.state(), &method, &segments[1..]),
                ResourceKind::Plugin => plugins::handle(self.state(), &method, rest),
            };
            if reset {
                changes::audit_reset(&principal, &path, status);
            }
            // The runtime views (a route's chain, a plugin's config) show configured values:
            // the same secrets `GET /config` hides are hidden here.
            let reply = Reply::from((status, redact::redacted(&document)));
            return match (&method, &segments[1..]) {
                (&Method::GET, [id]) => config_view::annotate_resource(reply, effective, kind, id),
                // A list's revision is the whole config's.
                (&Method::GET, []) => reply.with_etag(&effective.revision),
                _ => reply,
            };
        }
        if snapshot.prometheus.enabled && path == snapshot.prometheus.path {
            return Reply::raw(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                metrics::render(),
            );
        }
        Reply::from(match path.as_str() {
            "/health" => (StatusCode::OK, serde_json::json!({"status": "ok"})),
            "/ready" => self.ready(),
            "/info" => (StatusCode::OK, self.info()),
            // The streaming service's probes, named as the reference server names them.
            "/healthz" => (StatusCode::OK, serde_json::json!({"status": "ok"})),
            "/readyz" => match crate::stream::metrics::installed_readiness() {
                Some(false) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    serde_json::json!({"status": "not_ready", "reason": "the stream endpoint is not accepting yet"}),
                ),
                _ => self.ready(),
            },
            _ => return not_found(),
        })
    }
}

/// Who a request is when no admin auth is configured: anyone who can reach a loopback
/// listener may change the config (as on the machine itself); on another address only read.
fn anonymous(admin_address: Option<std::net::SocketAddr>) -> Principal {
    let loopback = admin_address.is_none_or(|address| address.ip().is_loopback());
    Principal {
        name: "anonymous".to_string(),
        role: if loopback {
            AdminRole::Write
        } else {
            AdminRole::Read
        },
    }
}

/// The request body, up to [`MAX_BODY_BYTES`] (413 beyond it).
async fn read_body(session: &mut ServerSession) -> Result<Vec<u8>, Reply> {
    let too_large = || {
        Reply::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("admin request bodies are limited to {MAX_BODY_BYTES} bytes"),
        )
    };
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok());
    if declared.is_some_and(|length| length > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_BODY_BYTES {
                    return Err(too_large());
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(error) => {
                return Err(Reply::error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("cannot read the request body: {error}"),
                ));
            }
        }
    }
}

/// The path's segments, percent-decoded (`/upstreams/api/endpoints/%5B%3A%3A1%5D%3A80`).
fn decoded_segments(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|segment| !segment.is_empty())
        .map(|segment| {
            percent_encoding::percent_decode_str(segment)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect()
}

/// Whether the request's `Host` (or `:authority`) is localhost or an IP literal, or absent.
fn is_local_host(request: &pingora::http::RequestHeader) -> bool {
    let host = request
        .headers
        .get(http::header::HOST)
        .and_then(|value| value.to_str().ok())
        .or_else(|| request.uri.host());
    let Some(host) = host else {
        return true;
    };
    let name = match host.strip_prefix('[') {
        // [v6]:port
        Some(rest) => {
            return rest
                .split(']')
                .next()
                .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok());
        }
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

fn not_found() -> Reply {
    Reply::error(StatusCode::NOT_FOUND, "not_found", "unknown admin endpoint")
}

/// 401 with the challenges of the configured schemes.
fn unauthorized(auth: &auth::AdminAuthPlan) -> Reply {
    let mut reply = Reply::error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "the admin API needs credentials: a user name and password (HTTP Basic) or a bearer \
         token, as configured",
    );
    for challenge in auth.challenges() {
        reply = reply.with_header_value(http::header::WWW_AUTHENTICATE, challenge.clone());
    }
    reply
}
