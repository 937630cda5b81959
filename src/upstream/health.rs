//! Active health checks: Pingora's HTTP check when a path is configured, its TCP (or TLS)
//! connect check otherwise, with our thresholds, timeouts and expected statuses.
//!
//! Pingora's checks take one connection template for every backend, but each endpoint has its
//! own Host, SNI and (for IP endpoints) name to verify against, so [`EndpointHealthCheck`]
//! keeps one probe per endpoint and dispatches to it. Transitions are logged and exported as
//! `loom_upstream_endpoint_healthy`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::connectors::ConnectorOptions;
use pingora::connectors::http::Connector as HttpConnector;
use pingora::lb::Backend;
use pingora::lb::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};
use pingora::prelude::RequestHeader;
use pingora::protocols::ALPN;
use pingora_error::{Error, ErrorType};

use crate::config::schema::UpstreamProtocol;
use crate::config::validate::{HealthPlan, ResolvedEndpoint, UpstreamPlan};
use crate::observe::metrics;

/// Builds the health check for `plan`, or `None` when the upstream has no `health_check`.
pub fn build_check(plan: &UpstreamPlan) -> Option<Box<dyn HealthCheck + Send + Sync>> {
    let health = plan.health.as_ref()?;
    let probes = plan
        .endpoints
        .iter()
        .map(|endpoint| {
            let probe: Box<dyn HealthCheck + Send + Sync> = match &health.http_path {
                Some(path) => Box::new(http_probe(plan, health, endpoint, path)),
                None => tcp_probe(plan, health, endpoint),
            };
            (endpoint.socket, (endpoint.address.clone(), probe))
        })
        .collect();
    Some(Box::new(EndpointHealthCheck {
        upstream: Arc::from(plan.config.name.as_str()),
        probes,
        healthy_threshold: health.healthy_threshold,
        unhealthy_threshold: health.unhealthy_threshold,
    }))
}

/// One probe per endpoint, with the thresholds and transition reporting shared.
struct EndpointHealthCheck {
    upstream: Arc<str>,
    /// Endpoint address → (label as configured, probe).
    probes: HashMap<SocketAddr, (String, Box<dyn HealthCheck + Send + Sync>)>,
    healthy_threshold: usize,
    unhealthy_threshold: usize,
}

#[async_trait]
impl HealthCheck for EndpointHealthCheck {
    async fn check(&self, target: &Backend) -> pingora::Result<()> {
        let probe = target
            .addr
            .as_inet()
            .and_then(|address| self.probes.get(address));
        match probe {
            Some((_, probe)) => probe.check(target).await,
            None => Error::e_explain(ErrorType::InternalError, "no probe for this endpoint"),
        }
    }

    async fn health_status_change(&self, target: &Backend, healthy: bool) {
        let label = target
            .addr
            .as_inet()
            .and_then(|address| self.probes.get(address))
            .map_or_else(|| target.addr.to_string(), |(label, _)| label.clone());
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

    fn health_threshold(&self, success: bool) -> usize {
        if success {
            self.healthy_threshold
        } else {
            self.unhealthy_threshold
        }
    }
}

/// The SNI and certificate name for `endpoint`: the upstream's `tls.sni`, else its host.
fn server_name(plan: &UpstreamPlan, endpoint: &ResolvedEndpoint) -> Option<String> {
    let tls = plan.config.tls.as_ref().filter(|tls| tls.enabled)?;
    Some(tls.sni.clone().unwrap_or_else(|| endpoint.host.clone()))
}

fn connector(plan: &UpstreamPlan) -> HttpConnector {
    let mut options = ConnectorOptions::new(1);
    options.ca_file = plan.ca_file.clone();
    HttpConnector::new(Some(options))
}

fn http_probe(
    plan: &UpstreamPlan,
    health: &HealthPlan,
    endpoint: &ResolvedEndpoint,
    path: &str,
) -> HttpHealthCheck {
    let sni = server_name(plan, endpoint);
    let host = health
        .host
        .clone()
        .unwrap_or_else(|| endpoint.address.clone());
    let mut check = HttpHealthCheck::new_custom(&host, sni.is_some(), connector(plan));
    // Thresholds are applied by EndpointHealthCheck; the probe only says pass or fail.
    let options = &mut check.peer_template.options;
    options.connection_timeout = Some(health.timeout);
    options.total_connection_timeout = Some(health.timeout);
    options.read_timeout = Some(health.timeout);
    if let Some(tls) = plan.config.tls.as_ref() {
        options.verify_cert = tls.verify;
        options.verify_hostname = tls.verify;
    }
    options.alpn = match (plan.config.protocol, sni.is_some()) {
        (UpstreamProtocol::Http2, _) => ALPN::H2,
        _ => ALPN::H1,
    };
    if let Some(sni) = sni {
        check.peer_template.sni = sni;
    }
    match RequestHeader::build("GET", path.as_bytes(), None) {
        Ok(mut request) => {
            // Values were validated as text when the config loaded.
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
    check
}

fn tcp_probe(
    plan: &UpstreamPlan,
    health: &HealthPlan,
    endpoint: &ResolvedEndpoint,
) -> Box<dyn HealthCheck + Send + Sync> {
    let mut check = match server_name(plan, endpoint) {
        Some(sni) => TcpHealthCheck::new_tls(&sni),
        None => TcpHealthCheck::new(),
    };
    check.peer_template.options.connection_timeout = Some(health.timeout);
    check.peer_template.options.total_connection_timeout = Some(health.timeout);
    if let Some(tls) = plan.config.tls.as_ref() {
        check.peer_template.options.verify_cert = tls.verify;
        check.peer_template.options.verify_hostname = tls.verify;
    }
    check
}
