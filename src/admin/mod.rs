//! The admin listener: `/health`, `/ready`, `/info` and Prometheus `/metrics`.
//!
//! It runs as its own Pingora service so that it answers (and `/ready` can say "not yet")
//! while the proxy listeners wait for the first health-check round. With Go Loom's
//! `admin.auth` on, every path asks for HTTP Basic credentials first ([`auth`]).

use std::sync::Arc;

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

pub mod auth;
pub mod explain;
pub mod plugins;
pub mod routes;
pub mod upstreams;

use crate::gateway::snapshot::GatewayState;
use crate::observe::metrics;

pub struct AdminApp {
    state: Arc<GatewayState>,
}

impl AdminApp {
    pub fn new(state: Arc<GatewayState>) -> AdminApp {
        AdminApp { state }
    }

    fn info(&self) -> serde_json::Value {
        let snapshot = self.state.current();
        let loaded_at = snapshot
            .loaded_at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs());
        serde_json::json!({
            "name": "loom",
            "version": env!("CARGO_PKG_VERSION"),
            "config_file": snapshot.config_path.display().to_string(),
            "config_hash": snapshot.config_hash,
            "config_generation": snapshot.generation,
            "config_loaded_at_unix": loaded_at,
            "uptime_seconds": self.state.started_at.elapsed().as_secs(),
            "routes": snapshot.routes.len(),
            "upstreams": snapshot.upstreams.len(),
            "plugins": snapshot.plugins.iter().count(),
        })
    }

    fn ready(&self) -> (StatusCode, serde_json::Value) {
        let snapshot = self.state.current();
        let waiting: Vec<&str> = snapshot
            .upstreams
            .iter()
            .filter(|pool| !pool.first_health_round_done())
            .map(|pool| &*pool.name)
            .collect();
        if !self.state.listeners_open() {
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
        let snapshot = self.state.current();
        // Liveness and readiness stay open, as in Go Loom: load balancers and orchestrators
        // probe them without credentials, and they reveal nothing but up or down.
        let probe = matches!(
            session.req_header().uri.path(),
            "/health" | "/ready" | "/healthz" | "/readyz"
        );
        if let Some(auth) = &snapshot.admin_auth
            && !probe
        {
            let authorization = session
                .req_header()
                .headers
                .get(http::header::AUTHORIZATION);
            if !auth.admits(authorization) {
                return unauthorized(auth);
            }
        }
        let path = session.req_header().uri.path().to_string();
        let method = session.req_header().method.clone();
        if let Some(rest) = path.strip_prefix("/upstreams") {
            let (status, document) = upstreams::handle(&self.state, &method, rest);
            return build(
                status,
                "application/json",
                serde_json::to_vec(&document).unwrap_or_default(),
            );
        }
        if let Some(rest) = path.strip_prefix("/routes") {
            let (status, document) = routes::handle(&self.state, &method, rest);
            return build(
                status,
                "application/json",
                serde_json::to_vec(&document).unwrap_or_default(),
            );
        }
        if path == "/explain" {
            let query = session.req_header().uri.query();
            let (status, document) = explain::handle(&self.state, &method, query);
            return build(
                status,
                "application/json",
                serde_json::to_vec(&document).unwrap_or_default(),
            );
        }
        if let Some(rest) = path.strip_prefix("/plugins") {
            let (status, document) = plugins::handle(&self.state, &method, rest);
            return build(
                status,
                "application/json",
                serde_json::to_vec(&document).unwrap_or_default(),
            );
        }
        if snapshot.prometheus.enabled && path == snapshot.prometheus.path {
            return build(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                metrics::render(),
            );
        }
        let (status, document) = match path.as_str() {
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
            _ => (
                StatusCode::NOT_FOUND,
                serde_json::json!({"error": {"status": 404, "code": "not_found", "message": "unknown admin endpoint"}}),
            ),
        };
        build(
            status,
            "application/json",
            serde_json::to_vec(&document).unwrap_or_default(),
        )
    }
}

/// 401 with the Basic challenge, for a request without a configured user's credentials.
fn unauthorized(auth: &auth::AdminAuthPlan) -> Response<Vec<u8>> {
    let document = serde_json::json!({"error": {
        "status": 401,
        "code": "unauthorized",
        "message": "the admin API needs a user name and password (HTTP Basic)"
    }});
    let mut response = build(
        StatusCode::UNAUTHORIZED,
        "application/json",
        serde_json::to_vec(&document).unwrap_or_default(),
    );
    response
        .headers_mut()
        .insert(http::header::WWW_AUTHENTICATE, auth.challenge().clone());
    response
}

fn build(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let length = body.len();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    if let Ok(value) = http::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(http::header::CONTENT_TYPE, value);
    }
    response.headers_mut().insert(
        http::header::CONTENT_LENGTH,
        http::HeaderValue::from(length),
    );
    response
}
