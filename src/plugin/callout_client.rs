//! The connections plugin callouts (`proxy_http_call`, `proxy_grpc_call`) travel on: one
//! pooled client per upstream and protocol, so a plugin that calls an auth service on every
//! request reuses its connections instead of paying a TCP (and TLS) handshake per call.
//!
//! TLS follows the upstream's own settings, as proxied requests do: its `tls.sni` (else each
//! endpoint's host) is the server name, `tls.verify: false` skips certificate checks, and
//! `server.ca_file` is trusted next to the Mozilla roots. gRPC calls always use HTTP/2 (h2c
//! with prior knowledge in cleartext, ALPN h2 over TLS); http_calls use HTTP/2 only on
//! upstreams with `protocol: http2`, HTTP/1.1 otherwise.
//!
//! The clients live in the upstream's pool, so a reload that replaces the upstream drops its
//! connections with it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::{HttpsConnector, ResolveServerName};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::ServerName;

use http_body_util::{BodyExt, Limited};

use crate::config::schema::UpstreamProtocol;
use crate::config::validate::UpstreamPlan;
use crate::upstream::UpstreamPool;
use crate::upstream::endpoint::{EndpointLease, Outcome};
use crate::upstream::retry::RetryCondition;

pub type CalloutClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// How long an idle pooled connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// An upstream's callout clients, built on first use.
#[derive(Default)]
pub struct CalloutClients {
    http1: OnceLock<Result<CalloutClient, String>>,
    http2: OnceLock<Result<CalloutClient, String>>,
}

impl CalloutClients {
    /// The client for an http_call to this upstream.
    pub fn for_http_call(&self, plan: &UpstreamPlan) -> Result<&CalloutClient, String> {
        if plan.config.protocol == UpstreamProtocol::Http2 {
            self.for_grpc(plan)
        } else {
            self.http1
                .get_or_init(|| build(plan, false))
                .as_ref()
                .map_err(Clone::clone)
        }
    }

    /// The HTTP/2 client gRPC calls use.
    pub fn for_grpc(&self, plan: &UpstreamPlan) -> Result<&CalloutClient, String> {
        self.http2
            .get_or_init(|| build(plan, true))
            .as_ref()
            .map_err(Clone::clone)
    }
}

/// Where a callout goes: the endpoint the upstream's balancer chose, with its lease (so the
/// endpoint's breaker and in-flight count see the call) and the URI origin that reaches it.
pub struct CalloutTarget {
    pub lease: EndpointLease,
    pub address: SocketAddr,
    /// Scheme and the endpoint's socket address: the pool keys connections by endpoint, and
    /// the TLS server name comes from [`EndpointServerNames`].
    pub origin: String,
}

/// Chooses the endpoint of a callout to `pool`.
pub fn choose(pool: &Arc<UpstreamPool>) -> Result<CalloutTarget, String> {
    // A random key: a hash-balanced upstream spreads callouts over its endpoints instead of
    // sending every one to the endpoint of the empty key.
    let key = fastrand::u64(..).to_le_bytes();
    let selection = pool
        .select(&key, 0)
        .map_err(|error| format!("no endpoint available: {error:?}"))?;
    let lease = selection.lease;
    let address = pool
        .endpoints()
        .get(lease.endpoint_index())
        .ok_or("endpoint vanished")?
        .socket;
    let scheme = if uses_tls(&pool.plan) {
        "https"
    } else {
        "http"
    };
    Ok(CalloutTarget {
        lease,
        address,
        origin: format!("{scheme}://{address}"),
    })
}

/// An answer read whole: its head, its body (at most the limit given) and its trailers.
pub struct Answer {
    pub parts: http::response::Parts,
    pub body: Bytes,
    pub trailers: Option<http::HeaderMap>,
}

/// Why an exchange gave no answer.
pub enum ExchangeError {
    TimedOut,
    Failed(String),
}

/// Sends `request` to `target` and reads the whole answer within `timeout`; the outcome is
/// recorded on the target's lease.
pub async fn exchange(
    client: &CalloutClient,
    mut target: CalloutTarget,
    request: http::Request<Full<Bytes>>,
    body_limit: usize,
    timeout: Duration,
) -> Result<Answer, ExchangeError> {
    let address = target.address;
    // The error carries the status when the endpoint did answer: a body over the plugin's
    // limit is not the endpoint's failure, and must not count against its breaker.
    let run = async {
        let response = client
            .request(request)
            .await
            .map_err(|error| (None, format!("request to {address}: {error}")))?;
        let (parts, body) = response.into_parts();
        let status = parts.status.as_u16();
        let collected = Limited::new(body, body_limit)
            .collect()
            .await
            .map_err(|error| (Some(status), format!("response body: {error}")))?;
        let trailers = collected.trailers().cloned();
        Ok::<_, (Option<u16>, String)>(Answer {
            parts,
            body: collected.to_bytes(),
            trailers,
        })
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(Ok(answer)) => {
            target
                .lease
                .record(Outcome::Answered(answer.parts.status.as_u16()));
            Ok(answer)
        }
        Ok(Err((answered, error))) => {
            target.lease.record(match answered {
                Some(status) => Outcome::Answered(status),
                None => Outcome::Failed(RetryCondition::ConnectError),
            });
            Err(ExchangeError::Failed(error))
        }
        Err(_) => {
            target
                .lease
                .record(Outcome::Failed(RetryCondition::Timeout));
            Err(ExchangeError::TimedOut)
        }
    }
}

fn uses_tls(plan: &UpstreamPlan) -> bool {
    plan.config.tls.as_ref().is_some_and(|tls| tls.enabled)
}

fn build(plan: &UpstreamPlan, http2: bool) -> Result<CalloutClient, String> {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(plan.connect_timeout));
    http.enforce_http(false);
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_config(plan)?)
        .https_or_http()
        .with_server_name_resolver(EndpointServerNames::new(plan));
    let connector = if http2 {
        builder.enable_http2().wrap_connector(http)
    } else {
        builder.enable_http1().wrap_connector(http)
    };
    let mut client = Client::builder(TokioExecutor::new());
    client
        .pool_idle_timeout(IDLE_TIMEOUT)
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .http2_only(http2);
    Ok(client.build(connector))
}

fn tls_config(plan: &UpstreamPlan) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("TLS setup: {error}"))?;
    let verify = plan.config.tls.as_ref().is_none_or(|tls| tls.verify);
    if !verify {
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(crate::stream::tls::accept_any_server(provider))
            .with_no_client_auth());
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(ca_file) = &plan.ca_file {
        let pem = std::fs::read(ca_file).map_err(|error| format!("reading {ca_file}: {error}"))?;
        for certificate in rustls_pemfile::certs(&mut pem.as_slice()) {
            let certificate = certificate.map_err(|error| format!("reading {ca_file}: {error}"))?;
            roots
                .add(certificate)
                .map_err(|error| format!("{ca_file}: {error}"))?;
        }
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

/// The TLS server name of each endpoint: the upstream's `tls.sni`, else the host the
/// endpoint was written with (the URI only holds its socket address).
struct EndpointServerNames {
    fixed: Option<ServerName<'static>>,
    by_socket: HashMap<String, ServerName<'static>>,
}

impl EndpointServerNames {
    fn new(plan: &UpstreamPlan) -> EndpointServerNames {
        let fixed = plan
            .config
            .tls
            .as_ref()
            .and_then(|tls| tls.sni.clone())
            .and_then(|sni| ServerName::try_from(sni).ok());
        let by_socket = plan
            .endpoints
            .iter()
            .filter_map(|endpoint| {
                let name = ServerName::try_from(endpoint.host.clone()).ok()?;
                Some((endpoint.socket.to_string(), name))
            })
            .collect();
        EndpointServerNames { fixed, by_socket }
    }
}

impl ResolveServerName for EndpointServerNames {
    fn resolve(
        &self,
        uri: &http::Uri,
    ) -> Result<ServerName<'static>, Box<dyn std::error::Error + Sync + Send>> {
        if let Some(name) = &self.fixed {
            return Ok(name.clone());
        }
        let authority = uri.authority().map_or("", |authority| authority.as_str());
        if let Some(name) = self.by_socket.get(authority) {
            return Ok(name.clone());
        }
        let host = uri.host().unwrap_or("").trim_matches(['[', ']']);
        Ok(ServerName::try_from(host.to_string())?)
    }
}
