//! The YAML schema as users write it.
//!
//! These types mirror the Go Loom gateway's format (listeners, routes, upstreams, plugins, admin,
//! metrics) plus a `server:` section for Pingora's own settings. They only describe shape and
//! types; cross-references and value checks live in [`super::validate`]. Every struct rejects
//! unknown keys through the span-aware deserializer in [`super::yaml`].

use std::collections::BTreeMap;

use serde::Deserialize;

use super::units::{DurationValue, SizeValue};

/// Pingora's process-level settings, kept in the same file under `server:`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct ServerSection {
    /// Worker threads per listener service; default: the number of CPUs.
    pub threads: Option<usize>,
    pub daemon: bool,
    pub pid_file: Option<String>,
    pub upgrade_sock: Option<String>,
    pub error_log: Option<String>,
    pub user: Option<String>,
    pub group: Option<String>,
    pub grace_period_seconds: Option<u64>,
    pub graceful_shutdown_timeout_seconds: Option<u64>,
    pub upstream_keepalive_pool_size: Option<usize>,
    pub work_stealing: Option<bool>,
    pub daemon_wait_for_ready: Option<bool>,
    /// CA bundle (PEM) trusted for HTTPS upstreams in addition to the system roots.
    pub ca_file: Option<String>,
    /// Largest request header block accepted; beyond it the request gets 431.
    pub max_request_header_size: Option<SizeValue>,
    /// Proxies (CIDRs) whose `X-Forwarded-For` is believed when finding the client address
    /// (`ip_restriction`, `${client_ip}`, the access log).
    pub trusted_proxies: Vec<String>,
    /// How long an HTTP/1 client has to send a whole request head (request line and headers),
    /// counted from the accepted connection for its first request and from the first byte of
    /// each later one; the connection is closed when it runs out. Default: 30s. Read when a
    /// connection is accepted, so a reload applies to new connections.
    pub request_header_timeout: Option<DurationValue>,
    /// How long an HTTP/1 keep-alive connection may wait for the next request with no byte
    /// arriving before it is closed. Default: 60s. Read when a connection is accepted and at
    /// each request, so a reload applies to new connections.
    pub keepalive_timeout: Option<DurationValue>,
    /// Read buffer of each client connection (Pingora's L4 buffer), held for the
    /// connection's whole life, idle keep-alive time included. Default: 16KiB (Pingora's
    /// own default is 64KiB). Read at start, like the listeners.
    pub read_buffer_size: Option<SizeValue>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerProtocol {
    /// HTTP/1.1 over plain TCP (HTTP/1.1 and HTTP/2 over TLS when `tls` is set).
    #[default]
    Http,
    /// HTTP/1.1 and HTTP/2 over TLS (ALPN h2, http/1.1).
    Https,
    /// HTTP/2 cleartext (h2c prior knowledge) alongside HTTP/1.1; TLS with ALPN when `tls` is set.
    Http2,
    /// Go Loom's name for `http2`.
    H2c,
    /// Go Loom's gRPC listener. gRPC is HTTP/2, so this is `http2`: h2c prior knowledge
    /// alongside HTTP/1.1 (gRPC clients in cleartext use prior knowledge).
    Grpc,
    /// Go Loom's gRPC over TLS: HTTP/2 over TLS, which is what `https` serves (ALPN h2 and
    /// http/1.1); like `https` it needs `tls`.
    Grpcs,
}

impl ListenerProtocol {
    /// Whether cleartext connections may open with the HTTP/2 preface (h2c prior knowledge).
    pub fn accepts_h2c(self) -> bool {
        matches!(
            self,
            ListenerProtocol::Http2 | ListenerProtocol::H2c | ListenerProtocol::Grpc
        )
    }

    /// Whether the listener cannot run without `tls`.
    pub fn requires_tls(self) -> bool {
        matches!(self, ListenerProtocol::Https | ListenerProtocol::Grpcs)
    }

    /// The config spelling, for error messages.
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerProtocol::Http => "http",
            ListenerProtocol::Https => "https",
            ListenerProtocol::Http2 => "http2",
            ListenerProtocol::H2c => "h2c",
            ListenerProtocol::Grpc => "grpc",
            ListenerProtocol::Grpcs => "grpcs",
        }
    }
}

/// A listener's certificate and key. Loom spells the keys `cert` and `key`, Go Loom
/// `cert_file` and `key_file`; each file is given under exactly one of its two names
/// (validation resolves them, see `validate::check_listeners`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct ListenerTls {
    /// PEM certificate chain file.
    pub cert: Option<String>,
    /// Go Loom's spelling of `cert`.
    pub cert_file: Option<String>,
    /// PEM private key file.
    pub key: Option<String>,
    /// Go Loom's spelling of `key`.
    pub key_file: Option<String>,
    /// PEM CA certificates that client certificates must chain to (mTLS).
    pub client_ca: Option<String>,
    /// `required` (the default with `client_ca`: no certificate, no connection) or
    /// `optional` (clients without one get in; `mtls_auth` decides per route).
    pub client_auth: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ListenerConfig {
    pub name: String,
    /// `host:port`; a Go-style `:8080` means every interface.
    pub address: String,
    #[serde(default)]
    pub protocol: ListenerProtocol,
    #[serde(default)]
    pub tls: Option<ListenerTls>,
}

/// `host:` takes one pattern or a list of them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(single) => vec![single],
            OneOrMany::Many(list) => list,
        }
    }
}

impl LoadBalancerAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            LoadBalancerAlgorithm::RoundRobin => "round_robin",
            LoadBalancerAlgorithm::Weighted => "weighted",
            LoadBalancerAlgorithm::Random => "random",
            LoadBalancerAlgorithm::ConsistentHash => "consistent_hash",
            LoadBalancerAlgorithm::IpHash => "ip_hash",
            LoadBalancerAlgorithm::LeastConn => "least_conn",
            LoadBalancerAlgorithm::P2c => "p2c",
        }
    }
}

/// Per-route upstream timeouts; `timeout:` on the route is the total.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct RouteTimeouts {
    pub connect: Option<DurationValue>,
    pub read: Option<DurationValue>,
    pub write: Option<DurationValue>,
    pub total: Option<DurationValue>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RouteConfig {
    pub id: String,
    #[serde(default)]
    pub host: Option<OneOrMany>,
    pub path: String,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub query_params: BTreeMap<String, String>,
    /// Loom: what the connection's client certificate must be for this route to match.
    #[serde(default)]
    pub client_certificate: Option<ClientCertificateCondition>,
    pub upstream: String,
    #[serde(default)]
    pub plugins: Vec<String>,
    #[serde(default)]
    pub strip_prefix: bool,
    /// Total time budget for the upstream exchange (seed format).
    #[serde(default)]
    pub timeout: Option<DurationValue>,
    /// Finer-grained timeouts; `timeouts.total` wins over `timeout`.
    #[serde(default)]
    pub timeouts: Option<RouteTimeouts>,
    #[serde(default)]
    pub priority: i32,
    /// Send the client's Host header upstream (default) or the endpoint address.
    #[serde(default = "default_true")]
    pub preserve_host: bool,
    /// Replaces the upstream's retry policy for this route.
    #[serde(default)]
    pub retry: Option<RetryConfig>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Global policies (top-level `cors:`, `access_log:`) switched off on this route, by type.
    #[serde(default)]
    pub disable: Vec<String>,
    /// A weighted split to other upstreams (new versions), see `crate::traffic::canary`.
    #[serde(default)]
    pub canary: Option<super::traffic::CanaryConfig>,
    /// Requests mirrored to another upstream, see `crate::traffic::shadow`.
    #[serde(default)]
    pub shadow: Option<super::traffic::ShadowConfig>,
    /// The response cache's settings for this route, over the top-level `cache:`.
    #[serde(default)]
    pub cache: Option<CacheSection>,
    /// Identical requests in flight at once share one upstream request, see
    /// `crate::cache::coalesce`.
    #[serde(default)]
    pub coalesce: Option<CoalesceConfig>,
}

/// `client_certificate:` on a route (see `crate::router::CertificateRequirement`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientCertificateCondition {
    /// A verified certificate is needed (default); `false` matches only clients without one.
    pub presented: bool,
    /// The certificate's CN or one of its SANs must be one of these; empty accepts any.
    pub subjects: Vec<String>,
}

impl Default for ClientCertificateCondition {
    fn default() -> Self {
        ClientCertificateCondition {
            presented: true,
            subjects: Vec::new(),
        }
    }
}

/// `coalesce:` on a route.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct CoalesceConfig {
    pub enabled: bool,
    /// Request headers that make requests different (besides method and URL).
    pub headers: Vec<String>,
    /// Longest a request waits for the one it joined (default 10s); then it goes alone.
    pub timeout: Option<DurationValue>,
    /// Largest answer shared (default 1MB); a larger one is answered to its own request
    /// only, and the others go alone.
    pub max_body: Option<SizeValue>,
}

/// An endpoint is `"host:port"` or `{address, weight, drain}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum EndpointConfig {
    Address(String),
    Weighted {
        address: String,
        #[serde(default = "default_weight")]
        weight: u32,
        /// Draining before maintenance: no new request is sent to the endpoint, requests in
        /// flight finish. It stays listed, health-checked and shown by the admin API.
        #[serde(default)]
        drain: bool,
    },
}

impl EndpointConfig {
    pub fn address(&self) -> &str {
        match self {
            EndpointConfig::Address(address) => address,
            EndpointConfig::Weighted { address, .. } => address,
        }
    }

    pub fn weight(&self) -> u32 {
        match self {
            EndpointConfig::Address(_) => 1,
            EndpointConfig::Weighted { weight, .. } => *weight,
        }
    }

    pub fn drain(&self) -> bool {
        matches!(self, EndpointConfig::Weighted { drain: true, .. })
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalancerAlgorithm {
    #[default]
    RoundRobin,
    Weighted,
    Random,
    ConsistentHash,
    /// Consistent hashing on the client IP.
    IpHash,
    LeastConn,
    P2c,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct HealthCheckConfig {
    /// HTTP path to probe; without it the check is a TCP connect.
    pub path: Option<String>,
    pub interval: Option<DurationValue>,
    pub timeout: Option<DurationValue>,
    pub healthy_threshold: Option<usize>,
    pub unhealthy_threshold: Option<usize>,
    /// Statuses counted as healthy; default any 2xx.
    pub expected_status: Vec<u16>,
    /// Host header sent with HTTP probes; default the endpoint address.
    pub host: Option<String>,
}

/// Per-endpoint circuit breaker (keys of the Go Loom seed: failure_threshold,
/// success_threshold, timeout; the rest extend it).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct CircuitBreakerConfig {
    /// Consecutive failures that open the breaker (default 5; 0 disables this trigger).
    pub failure_threshold: Option<u32>,
    /// Consecutive half-open successes that close it (default 3).
    pub success_threshold: Option<u32>,
    /// How long it stays open before admitting probes (default 30s).
    pub timeout: Option<DurationValue>,
    /// Open when failures / requests in `window` exceed this (0..1), given `min_requests`.
    pub failure_ratio: Option<f64>,
    pub min_requests: Option<u32>,
    pub window: Option<DurationValue>,
    /// Probe requests admitted at a time while half-open (default 1).
    pub half_open_max_requests: Option<u32>,
    /// What counts as a failure: connect_error, timeout, reset and status codes
    /// (default: all three and 502, 503, 504).
    pub failure_on: Option<Vec<String>>,
}

/// Exponential backoff between retries.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct BackoffConfig {
    pub base: Option<DurationValue>,
    pub max: Option<DurationValue>,
    /// `full`, `equal` or `none`.
    pub jitter: Option<String>,
}

/// Retry policy, per upstream and overridable per route. Go Loom's flat keys
/// (`backoff_base`, `backoff_max`, `retryable_codes`) are other spellings of `backoff.base`,
/// `backoff.max` and the statuses in `retry_on`; a setting may be given under one of its
/// names only.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct RetryConfig {
    /// Retries after the first attempt. (Go Loom counts attempts with this key: its
    /// `max_retries: 3` makes three attempts in all, Loom's makes four.)
    pub max_retries: Option<u32>,
    /// connect_error, timeout, reset and status codes.
    pub retry_on: Option<Vec<String>>,
    pub backoff: Option<BackoffConfig>,
    /// Go Loom's spelling of `backoff.base`. When `backoff_base` or `backoff_max` is given,
    /// the bound left out takes Go Loom's default (100ms base, 10s max) instead of Loom's
    /// (25ms, 250ms).
    pub backoff_base: Option<DurationValue>,
    /// Go Loom's spelling of `backoff.max`.
    pub backoff_max: Option<DurationValue>,
    /// Go Loom's statuses worth a retry. Go Loom also retries every attempt whose round trip
    /// failed, so `[500, 503]` means `retry_on: [connect_error, timeout, reset, "500", "503"]`;
    /// an empty list is Go Loom's default (502, 503, 504), which is Loom's default too.
    pub retryable_codes: Option<Vec<u16>>,
    pub per_try_timeout: Option<DurationValue>,
    /// Retry POST/PATCH and other non-idempotent methods too.
    pub retry_non_idempotent: Option<bool>,
    /// Largest request body replayed on a retry (at most 64KB, Pingora's retry buffer).
    pub max_replay_body: Option<SizeValue>,
}

/// Envoy-style retry budget: retries in flight at most `budget_percent` of requests in flight.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct RetryBudgetConfig {
    pub budget_percent: Option<f64>,
    pub min_retry_concurrency: Option<u32>,
}

/// Passive health: eject endpoints that keep failing on real traffic.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct OutlierDetectionConfig {
    pub consecutive_failures: Option<u32>,
    pub base_ejection_time: Option<DurationValue>,
    pub max_ejection_time: Option<DurationValue>,
    pub max_ejection_percent: Option<u8>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    /// HTTP/1.1, or ALPN h2 then http/1.1 over TLS.
    #[default]
    Auto,
    Http1,
    /// HTTP/2 only: h2c with prior knowledge in cleartext, ALPN h2 over TLS (gRPC).
    Http2,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct UpstreamTlsConfig {
    pub enabled: bool,
    /// Server name for SNI and certificate checks; default the endpoint host.
    pub sni: Option<String>,
    pub verify: bool,
}

impl Default for UpstreamTlsConfig {
    fn default() -> Self {
        UpstreamTlsConfig {
            enabled: true,
            sni: None,
            verify: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct UpstreamConfig {
    pub name: String,
    pub endpoints: Vec<EndpointConfig>,
    #[serde(default)]
    pub load_balancer: LoadBalancerAlgorithm,
    /// Key source for `consistent_hash`: `client_ip`, `path`, `header:<name>` or `cookie:<name>`.
    #[serde(default)]
    pub hash_on: Option<String>,
    /// Go Loom's consistent-hash settings (`hash_key` is another spelling of `hash_on`).
    #[serde(default)]
    pub consistent_hash: Option<ConsistentHashConfig>,
    #[serde(default)]
    pub health_check: Option<HealthCheckConfig>,
    #[serde(default)]
    pub circuit_breaker: Option<CircuitBreakerConfig>,
    #[serde(default)]
    pub tls: Option<UpstreamTlsConfig>,
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    #[serde(default)]
    pub connect_timeout: Option<DurationValue>,
    #[serde(default)]
    pub read_timeout: Option<DurationValue>,
    #[serde(default)]
    pub write_timeout: Option<DurationValue>,
    #[serde(default)]
    pub retry: Option<RetryConfig>,
    #[serde(default)]
    pub retry_budget: Option<RetryBudgetConfig>,
    #[serde(default)]
    pub outlier_detection: Option<OutlierDetectionConfig>,
    /// Bulkhead: requests in flight to this upstream; beyond it requests queue for
    /// `queue_timeout`, then get 503 `upstream_saturated`. Go Loom spells the two keys as the
    /// `bulkhead:` section; a config gives one spelling or the other.
    #[serde(default)]
    pub max_concurrent_requests: Option<u32>,
    #[serde(default)]
    pub max_concurrent_requests_per_endpoint: Option<u32>,
    #[serde(default)]
    pub queue_timeout: Option<DurationValue>,
    /// Go Loom's bulkhead.
    #[serde(default)]
    pub bulkhead: Option<BulkheadConfig>,
    /// Go Loom's service discovery (DNS only).
    #[serde(default)]
    pub service_discovery: Option<ServiceDiscoveryConfig>,
}

/// Go Loom's `service_discovery:`. With the `dns` provider, the names behind the upstream's
/// endpoints are resolved again every `refresh_interval`, and a changed answer reloads the
/// config (as SIGHUP does), which moves the upstream to the new addresses.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct ServiceDiscoveryConfig {
    /// `false` (Go Loom's default): the section loads and nothing runs.
    pub enabled: bool,
    /// `dns`. Go Loom's `consul` and `kubernetes` are not built yet and are refused.
    pub provider: Option<String>,
    /// A DNS name whose addresses are the upstream's endpoints, each on the port of the first
    /// listed endpoint (the listed endpoints give only that port then). Absent: each listed
    /// endpoint's own host name is what is resolved again.
    pub service_name: Option<String>,
    /// How often the names are resolved again; default 30s.
    pub refresh_interval: Option<DurationValue>,
}

/// Go Loom's `bulkhead:`: another spelling of `max_concurrent_requests` and `queue_timeout`,
/// with a bound on how many requests may queue.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct BulkheadConfig {
    /// `false` (Go Loom's default): no bulkhead; the other keys are then not used.
    pub enabled: bool,
    /// Requests in flight to the upstream (`max_concurrent_requests`); absent or 0: Go Loom's
    /// default, 100.
    pub max_concurrent: Option<u32>,
    /// Requests that may wait for a slot at once; one more is refused at once with the same
    /// 503 `upstream_saturated`. Absent or 0: nothing waits, a full bulkhead refuses at once.
    pub queue_size: Option<u32>,
    /// How long a queued request waits for a slot (`queue_timeout`); absent or 0: until a slot
    /// frees, as in Go Loom. (A waiting request is not dropped when its client goes away:
    /// Pingora does not watch the client connection before the request goes upstream.)
    pub timeout: Option<DurationValue>,
}

/// Go Loom's `consistent_hash:`; it applies to `load_balancer: consistent_hash` only. Go
/// Loom's zero values (`""`, `0`) mean "not set".
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct ConsistentHashConfig {
    /// The request header whose value is hashed (`X-User-ID`), or `Cookie:<name>` for a
    /// cookie; empty or absent: the client IP. The same as `hash_on: header:<name>` or
    /// `hash_on: cookie:<name>`, so the two may not both be given.
    pub hash_key: Option<String>,
    /// Points per endpoint on the hash ring (Go Loom's default: 150). Pingora's ring places 160
    /// points per unit of weight, so each endpoint's weight is multiplied by `replicas / 160`
    /// rounded to the nearest whole number, at least 1: up to 239 replicas give 160 points per
    /// unit of weight, 240 to 399 give 320, 400 to 559 give 480, and so on (at most 16000).
    pub replicas: Option<u32>,
}

/// One entry of the `plugins:` section: a Proxy-Wasm module (`path:`, see `crate::plugin`) or
/// a built-in policy (`type: cors`, ..., see `crate::policy`). Routes list entries by name.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PluginConfig {
    pub name: String,
    /// `wasm` (the default when `path` is given) or a built-in policy type.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// The `.wasm` file, relative to `plugin_dir` (and never outside it).
    #[serde(default)]
    pub path: Option<String>,
    /// Accepted for the seed's format. A Proxy-Wasm module receives every callback it
    /// exports, so this only documents the plugin's main phase; it is checked, not used.
    #[serde(default)]
    pub phase: Option<String>,
    /// Request phases run higher priorities first; ties keep the route's order.
    #[serde(default)]
    pub priority: i32,
    /// Handed to `on_configure`: a string as is, anything else as JSON. For a built-in
    /// policy, its settings (validated by the policy's own schema).
    #[serde(default)]
    pub config: Option<serde_json::Value>,
    /// Handed to `on_vm_start`, in the same way as `config`.
    #[serde(default)]
    pub vm_config: Option<serde_json::Value>,
    /// Envoy's `root_id`: which root context of the module serves this entry (the SDKs read it
    /// as the `plugin_root_id` property to pick their root context). Default "" as in Envoy.
    #[serde(default)]
    pub root_id: Option<String>,
    /// Envoy's `vm_id`: entries with the same `vm_id` share shared data and queues. Default
    /// "" as in Envoy (so entries that set none share them).
    #[serde(default)]
    pub vm_id: Option<String>,
    #[serde(default)]
    pub on_error: PluginFailureMode,
    /// Metering points (about one per wasm instruction) each callback may use.
    #[serde(default)]
    pub max_fuel: Option<u64>,
    /// Linear-memory cap per instance.
    #[serde(default)]
    pub memory_limit: Option<SizeValue>,
    /// Wall-clock limit for one callback (Go Loom's `timeout`), on top of `max_fuel`. It is
    /// checked when the callback returns: fuel is what stops a runaway loop, this catches a
    /// callback that stays within its fuel and is still too slow. A callback over the limit
    /// fails with kind `timeout`, handled as running out of fuel is (`on_error`, a fresh
    /// instance, quarantine counting). Absent: no limit but fuel.
    #[serde(default)]
    pub timeout: Option<DurationValue>,
    /// Instances in the plugin's pool; default: one per worker thread.
    #[serde(default)]
    pub instances: Option<usize>,
    /// Largest request or response body a plugin may hold back while it pauses a body phase.
    #[serde(default)]
    pub max_buffered_body: Option<SizeValue>,
    /// How long a request may stay paused in a header phase with no call of its own
    /// outstanding, waiting for another context to resume it (`proxy_continue_stream` after
    /// `proxy_set_effective_context`). Past it the request fails with 504. Default: 30s.
    #[serde(default)]
    pub pause_timeout: Option<DurationValue>,
    #[serde(default)]
    pub quarantine: PluginQuarantineConfig,
}

/// What a request gets when its plugin traps, runs out of fuel or hits its memory cap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PluginFailureMode {
    /// JSON 503 `plugin_error`.
    #[default]
    FailClosed,
    /// The plugin is skipped for the rest of that request.
    FailOpen,
}

/// A plugin that fails this many times in a row is not called for `duration`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct PluginQuarantineConfig {
    pub after_failures: u32,
    pub duration: DurationValue,
}

impl Default for PluginQuarantineConfig {
    fn default() -> Self {
        PluginQuarantineConfig {
            after_failures: 5,
            duration: DurationValue(std::time::Duration::from_secs(10)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct AdminConfig {
    pub address: String,
    pub enabled: bool,
    /// Go Loom's HTTP Basic authentication of the admin API.
    pub auth: Option<AdminAuthConfig>,
    /// Bearer tokens for the admin API (`Authorization: Bearer <token>`), each with a role.
    pub tokens: Vec<AdminTokenConfig>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            address: "127.0.0.1:9091".to_string(),
            enabled: true,
            auth: None,
            tokens: Vec::new(),
        }
    }
}

/// What an admin API client may do: `read` (every GET) or `write` (also every change).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminRole {
    Read,
    #[default]
    Write,
}

impl AdminRole {
    pub fn as_str(self) -> &'static str {
        match self {
            AdminRole::Read => "read",
            AdminRole::Write => "write",
        }
    }
}

/// One entry of `admin.tokens`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AdminTokenConfig {
    /// Who the token belongs to, as the audit log names them.
    pub name: String,
    /// SHA-256 of the token as 64 hexadecimal characters (`printf %s TOKEN | sha256sum`).
    pub token_sha256: String,
    /// `read` or `write`; none given is `read`, the least a token can do.
    #[serde(default = "read_role")]
    pub role: AdminRole,
}

fn read_role() -> AdminRole {
    AdminRole::Read
}

/// Go Loom's `admin.auth:`. When enabled, every admin path but the probes (`/health`,
/// `/ready`, `/healthz`, `/readyz`) answers 401 with a Basic challenge unless the request
/// carries a user's credentials (see `crate::admin::auth`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct AdminAuthConfig {
    /// `false` (Go Loom's default): the admin API is open.
    pub enabled: bool,
    /// User name -> SHA-256 digest of the password as 64 hexadecimal characters
    /// (`printf %s PASSWORD | sha256sum`).
    pub users: BTreeMap<String, String>,
    /// The realm of the `WWW-Authenticate: Basic` challenge; default `loom admin`.
    pub realm: Option<String>,
    /// A Loom addition: user name -> `read` or `write`. A user not listed has `write`.
    pub roles: BTreeMap<String, AdminRole>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct PrometheusConfig {
    pub enabled: bool,
    pub path: String,
}

impl Default for PrometheusConfig {
    fn default() -> Self {
        PrometheusConfig {
            enabled: true,
            path: "/metrics".to_string(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct MetricsConfig {
    pub prometheus: PrometheusConfig,
    /// Go Loom's OTLP metrics push (`crate::observe::metrics_push`).
    pub opentelemetry: Option<OpenTelemetryMetricsSection>,
}

/// How the gateway notices config changes.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct ReloadConfig {
    /// Poll the config file for changes (rename, symlink swap and in-place edits alike).
    pub watch: bool,
    pub interval: DurationValue,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        ReloadConfig {
            watch: true,
            interval: DurationValue(std::time::Duration::from_secs(1)),
        }
    }
}

/// The whole file. Sections are deserialized one by one (see [`super::load`]) so that every
/// section and every list entry reports its own errors.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FileConfig {
    pub server: ServerSection,
    pub listeners: Vec<ListenerConfig>,
    pub routes: Vec<RouteConfig>,
    pub upstreams: Vec<UpstreamConfig>,
    pub plugins: Vec<PluginConfig>,
    /// Where plugin paths are resolved, and the only directory they may come from;
    /// default: the config file's directory.
    pub plugin_dir: Option<String>,
    /// Compiled plugins are kept here between runs; default: `loom-plugin-cache` in the
    /// system temporary directory.
    pub plugin_cache_dir: Option<String>,
    pub admin: AdminConfig,
    pub metrics: MetricsConfig,
    pub reload: ReloadConfig,
    /// Loom message streaming over QUIC and HTTP/3 (the reference server's schema).
    pub stream: Option<super::stream::StreamSection>,
    /// Go Loom's global `rate_limit:`, `tracing:` and `cache:` sections.
    pub rate_limit: Option<RateLimitSection>,
    pub tracing: Option<TracingSection>,
    pub cache: Option<CacheSection>,
}

/// Go Loom's `rate_limit:` (its keys, so that a typo is still an error).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct RateLimitSection {
    pub enabled: bool,
    pub rate: Option<f64>,
    pub burst: Option<u64>,
    pub cleanup_interval: Option<DurationValue>,
}

/// Go Loom's `tracing:` plus what an OTLP user needs beyond it (see
/// `crate::observe::tracing`). Validated by `crate::config::tracing`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct TracingSection {
    pub enabled: bool,
    /// The collector's OTLP/HTTP traces URL; `host:port` or a URL without a path gets
    /// `/v1/traces` appended.
    pub endpoint: Option<String>,
    pub service_name: Option<String>,
    /// The share of requests without a sampled parent that are traced, 0 to 1.
    pub sample_rate: Option<f64>,
    /// Follow the incoming `traceparent`'s sampled flag (default true).
    pub parent_based: Option<bool>,
    /// The longest a partial batch waits before it is sent.
    pub batch_timeout: Option<DurationValue>,
    pub max_batch_size: Option<usize>,
    /// Spans waiting for export; more are dropped and counted.
    pub queue_size: Option<usize>,
    pub export_timeout: Option<DurationValue>,
    /// Sent with every export (collector auth tokens, tenant ids).
    pub headers: BTreeMap<String, String>,
    pub resource_attributes: BTreeMap<String, String>,
    /// A policy or plugin step slower than this gets its own span; failed steps always do.
    pub step_threshold: Option<DurationValue>,
}

/// Go Loom's `cache:` (its keys first), plus Loom's. At the top level it sets up the store and
/// caches every route (its `included_paths`/`excluded_paths` permitting, `disable: [cache]`
/// opting a route out); on a route it overrides the top level's settings for that route.
/// Validated by `crate::config::cache`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct CacheSection {
    pub enabled: bool,
    pub max_size: Option<SizeValue>,
    pub default_ttl: Option<DurationValue>,
    pub cleanup_interval: Option<DurationValue>,
    pub stale_while_revalidate: Option<DurationValue>,
    pub excluded_paths: Vec<String>,
    pub included_paths: Vec<String>,
    pub bypass_header: Option<String>,
    /// Serve a stale answer this long past its freshness when the upstream fails.
    pub stale_if_error: Option<DurationValue>,
    /// Largest answer stored (default 8MB, at most 64MB).
    pub max_entry_size: Option<SizeValue>,
    /// How long requests for a key being fetched wait for that fetch (default 10s).
    pub lock_timeout: Option<DurationValue>,
    /// Cache answers to requests with `Authorization` (default: only when the answer says
    /// `public`, `s-maxage` or `must-revalidate`).
    pub cache_authorized: Option<bool>,
    /// Cache answers that set cookies (default false).
    pub cache_set_cookie: Option<bool>,
    /// Client CIDRs allowed to send `PURGE` (default none: PURGE is refused).
    pub purge_allowed: Vec<String>,
    /// Keep answers in files in this directory (created if needed) instead of memory, up to
    /// `max_size`; they survive restarts.
    pub disk_path: Option<String>,
}

/// Go Loom's `metrics.opentelemetry:`, plus the push interval, timeout and headers.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct OpenTelemetryMetricsSection {
    pub enabled: bool,
    /// The receiver's OTLP/HTTP metrics URL; `host:port` or a URL without a path gets
    /// `/v1/metrics` appended.
    pub endpoint: Option<String>,
    pub interval: Option<DurationValue>,
    pub timeout: Option<DurationValue>,
    pub headers: BTreeMap<String, String>,
}

fn default_true() -> bool {
    true
}

fn default_weight() -> u32 {
    1
}
