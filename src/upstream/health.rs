//! Active health checks: Pingora's HTTP check when a path is configured, its TCP connect
//! check otherwise, with our thresholds, timeouts and expected statuses. Transitions are
//! logged and exported as `loom_upstream_endpoint_healthy`.

use std::sync::Arc;

use async_trait::async_trait;
use pingora::lb::Backend;
use pingora::lb::health_check::{HealthCheck, HealthObserve, HttpHealthCheck, TcpHealthCheck};
use pingora::prelude::RequestHeader;
use pingora_error::{Error, ErrorType};

use crate::config::validate::UpstreamPlan;
use crate::observe::metrics;

/// Builds the health check for `plan`, or `None` when the upstream has no `health_check`.
pub fn build_check(plan: &UpstreamPlan) -> Option<Box<dyn HealthCheck + Send + Sync>> {
    let health = plan.health.as_ref()?;
    let tls = plan.config.tls.as_ref().is_some_and(|tls| tls.enabled);
    let observer = Box::new(TransitionLogger {
        upstream: Arc::from(plan.config.name.as_str()),
        endpoints: plan
            .endpoints
            .iter()
            .map(|endpoint| (endpoint.socket, endpoint.address.clone()))
            .collect(),
    });
    match &health.http_path {
        Some(path) => {
            let host = health
                .host
                .clone()
                .or_else(|| plan.endpoints.first().map(|endpoint| endpoint.host.clone()))
                .unwrap_or_default();
            let mut check = HttpHealthCheck::new(&host, tls);
            check.consecutive_success = health.healthy_threshold;
            check.consecutive_failure = health.unhealthy_threshold;
            check.peer_template.options.connection_timeout = Some(health.timeout);
            check.peer_template.options.read_timeout = Some(health.timeout);
            check.peer_template.options.total_connection_timeout = Some(health.timeout);
            if let Some(tls_config) = plan.config.tls.as_ref() {
                check.peer_template.options.verify_cert = tls_config.verify;
                check.peer_template.options.verify_hostname = tls_config.verify;
            }
            match RequestHeader::build("GET", path.as_bytes(), None) {
                Ok(mut request) => {
                    // Host was validated as text; a header error leaves Pingora's default.
                    let _ = request.insert_header("Host", host.as_str());
                    let _ = request.insert_header("User-Agent", "loom-health-check");
                    check.req = request;
                }
                Err(error) => log::error!(
                    "upstream {}: invalid health check path {path}: {error}",
                    plan.config.name
                ),
            }
            let expected = health.expected_status.clone();
            check.validator = Some(Box::new(move |response| {
                let status = response.status.as_u16();
                let healthy = if expected.is_empty() {
                    (200..300).contains(&status)
                } else {
                    expected.contains(&status)
                };
                if healthy {
                    Ok(())
                } else {
                    Error::e_explain(
                        ErrorType::CustomCode("unexpected health check status", status),
                        format!("health check answered {status}"),
                    )
                }
            }));
            check.health_changed_callback = Some(observer);
            Some(Box::new(check))
        }
        None => {
            let mut check = TcpHealthCheck::new();
            check.consecutive_success = health.healthy_threshold;
            check.consecutive_failure = health.unhealthy_threshold;
            check.peer_template.options.connection_timeout = Some(health.timeout);
            check.peer_template.options.total_connection_timeout = Some(health.timeout);
            check.health_changed_callback = Some(observer);
            Some(check)
        }
    }
}

/// Logs each health flip and updates the endpoint's health gauge.
struct TransitionLogger {
    upstream: Arc<str>,
    endpoints: Vec<(std::net::SocketAddr, String)>,
}

#[async_trait]
impl HealthObserve for TransitionLogger {
    async fn observe(&self, target: &Backend, healthy: bool) {
        let socket = target.addr.as_inet().copied();
        let label = self
            .endpoints
            .iter()
            .find(|(address, _)| Some(*address) == socket)
            .map_or_else(|| target.addr.to_string(), |(_, label)| label.clone());
        if healthy {
            log::info!(
                "upstream {}: endpoint {label} is healthy again",
                self.upstream
            );
        } else {
            log::warn!("upstream {}: endpoint {label} is unhealthy", self.upstream);
        }
        metrics::set_endpoint_health(&self.upstream, &label, healthy);
    }
}
