//! Whole-config checks that the schema cannot express: unique names, references between
//! routes, upstreams and plugins, addresses that parse, files that exist, sane numbers.
//!
//! Validation also resolves what the runtime needs (socket addresses, the compiled router,
//! effective timeouts) so that building a snapshot cannot fail afterwards.

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::SourceIndexes;
use super::resilience::{self, ResiliencePlan};
use super::schema::{
    FileConfig, HealthCheckConfig, ListenerProtocol, ListenerTls, LoadBalancerAlgorithm,
    RouteConfig, UpstreamConfig,
};
use super::yaml::{ConfigError, Node};
use crate::admin::auth::AdminAuthPlan;
use crate::policy::client_ip::Cidr;
use crate::policy::{Policy, PolicyStep};
use crate::router::{RouteSpec, Router};
use crate::upstream::retry::RetryPolicy;

const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(10);
const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
const DEFAULT_HEALTHY_THRESHOLD: usize = 2;
const DEFAULT_UNHEALTHY_THRESHOLD: usize = 3;
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_MAX_REQUEST_HEADER_SIZE: usize = 64 * 1024;
/// One TLS record: a TLS read never needs more, and an idle keep-alive connection holds a
/// quarter of what Pingora's 64 KiB default costs (see README, "Memory").
pub const DEFAULT_READ_BUFFER_SIZE: usize = 16 * 1024;
/// Bounds for `server.read_buffer_size`: below a request line it only adds system calls,
/// above it every idle connection holds memory no read fills.
const READ_BUFFER_SIZE_RANGE: std::ops::RangeInclusive<u64> = 1024..=1024 * 1024;
/// Retries track tried endpoints in a 64-bit set.
const MAX_ENDPOINTS: usize = 64;
/// Points Pingora's ketama ring (version 1, the one built into Loom) places per unit of weight.
const KETAMA_POINTS_PER_WEIGHT: u32 = 160;
/// Go Loom's `consistent_hash.replicas` above this would build needlessly large rings.
const MAX_HASH_REPLICAS: u32 = 16_000;
/// Points on one upstream's hash ring (8 bytes each) that `replicas` may ask for.
const MAX_HASH_RING_POINTS: u64 = 1 << 22;
const MAX_THRESHOLD: usize = 100;
const MAX_HEALTH_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_DISCOVERY_REFRESH: Duration = Duration::from_secs(30);

/// Everything the runtime needs, checked and resolved.
pub struct ValidatedConfig {
    pub file: FileConfig,
    pub listeners: Vec<ListenerPlan>,
    pub upstreams: Vec<UpstreamPlan>,
    pub routes: Vec<RoutePlan>,
    /// Routes compiled once; the value is the index into `routes`.
    pub router: Router<usize>,
    pub admin_address: Option<SocketAddr>,
    pub max_request_header_size: usize,
    /// `server.read_buffer_size`, defaulted.
    pub read_buffer_size: usize,
    /// `server.ca_file` resolved against the config's directory.
    pub ca_file: Option<String>,
    pub plugins: super::plugins::PluginsPlan,
    /// The `stream:` section: Loom message streaming runs when it is present.
    pub stream: Option<super::stream::StreamPlan>,
    /// `server.trusted_proxies`, parsed.
    pub trusted_proxies: Vec<Cidr>,
    /// Go Loom's `admin.auth` when it is switched on, and `admin.tokens`.
    pub admin_auth: Option<AdminAuthPlan>,
    /// The top-level policies (`cors:`, `access_log:`), also used for requests no route
    /// matched (the access log still records them).
    pub global_policies: Vec<Arc<PolicyStep>>,
    /// `tracing:` when it is switched on.
    pub tracing: Option<crate::observe::tracing::TracingPlan>,
    /// `metrics.opentelemetry:` when it is switched on.
    pub metrics_push: Option<crate::observe::metrics_push::MetricsPushPlan>,
    /// The response cache's store, when some route caches.
    pub cache_store: Option<super::cache::CacheStorePlan>,
}

/// One step of a route's chain, in the order it runs.
#[derive(Debug, Clone)]
pub enum ChainEntry {
    Policy(Arc<PolicyStep>),
    /// A Proxy-Wasm plugin, by name; the snapshot resolves it to its runtime.
    Wasm(String),
}

pub struct ListenerPlan {
    pub name: String,
    /// The bind address string handed to Pingora; kept byte-identical across reloads and
    /// upgrades because Pingora matches inherited sockets by this string.
    pub address: String,
    pub protocol: ListenerProtocol,
    /// Certificate and key paths, resolved against the config's directory.
    pub tls: Option<(String, String)>,
    /// Client certificates checked in the handshake (mTLS).
    pub client_auth: Option<ClientAuthPlan>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAuthPlan {
    /// The CA file, resolved against the config's directory.
    pub ca_file: String,
    /// Refuse handshakes without a certificate.
    pub required: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResolvedEndpoint {
    /// As written in the config: used in metrics labels and the admin API.
    pub address: String,
    pub socket: SocketAddr,
    pub weight: u32,
    /// Host part, used as default SNI and health-check Host.
    pub host: String,
    /// Draining: selection skips the endpoint (see [`crate::upstream::UpstreamPool`]).
    pub drain: bool,
    /// `address` as the Host header sent upstream on routes that do not keep the client's,
    /// built once: a clone shares its bytes.
    pub host_header: http::HeaderValue,
    /// `address` as the access log writes it.
    pub address_json: crate::observe::access_log::JsonText,
}

/// The Host header for an endpoint written as `address`; the socket address's text when the
/// address is not header text (it always is for a valid `host:port`).
fn host_header(address: &str, socket: SocketAddr) -> http::HeaderValue {
    http::HeaderValue::from_str(address).unwrap_or_else(|_| {
        http::HeaderValue::from_str(&socket.to_string())
            .unwrap_or(http::HeaderValue::from_static("localhost"))
    })
}

/// Where `consistent_hash` takes its key from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HashKeySource {
    ClientIp,
    Path,
    /// Lowercase header name.
    Header(String),
    Cookie(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HealthPlan {
    pub http_path: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: usize,
    pub unhealthy_threshold: usize,
    pub expected_status: Vec<u16>,
    pub host: Option<String>,
}

/// Go Loom's DNS service discovery for one upstream (run by `crate::control::discovery`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DiscoveryPlan {
    pub refresh_interval: Duration,
    /// Go Loom's `service_name`; `None`: each endpoint's own host name is resolved again.
    pub service: Option<DiscoveredService>,
}

/// A DNS name whose addresses are an upstream's endpoints, all on one port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DiscoveredService {
    pub name: String,
    /// The port of the first listed endpoint.
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamPlan {
    pub config: UpstreamConfig,
    pub endpoints: Vec<ResolvedEndpoint>,
    pub hash_key: Option<HashKeySource>,
    /// Each endpoint's weight on Pingora's ketama ring is multiplied by this: 1, unless Go
    /// Loom's `consistent_hash.replicas` asks for more points per endpoint (see
    /// [`super::schema::ConsistentHashConfig::replicas`]).
    pub ring_weight_multiplier: u32,
    pub health: Option<HealthPlan>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub resilience: ResiliencePlan,
    /// `server.ca_file`, resolved: the CA bundle HTTPS upstreams and their probes trust.
    pub ca_file: Option<String>,
    /// Go Loom's `service_discovery` when it is switched on.
    pub discovery: Option<DiscoveryPlan>,
}

impl UpstreamPlan {
    /// Whether `other` differs from this plan at most in which endpoints drain. A drain then
    /// changes the live pool instead of replacing it, so its breakers, ejections, in-flight
    /// counts and health state stay as they are.
    pub fn same_but_drain(&self, other: &UpstreamPlan) -> bool {
        self.without_drain() == other.without_drain()
    }

    fn without_drain(&self) -> UpstreamPlan {
        let mut plan = self.clone();
        for endpoint in &mut plan.endpoints {
            endpoint.drain = false;
        }
        for endpoint in &mut plan.config.endpoints {
            // `"host:port"` and `{address, weight: 1}` mean the same endpoint.
            *endpoint = super::schema::EndpointConfig::Weighted {
                address: endpoint.address().to_string(),
                weight: endpoint.weight(),
                drain: false,
            };
        }
        plan
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EffectiveTimeouts {
    pub connect: Duration,
    pub read: Duration,
    pub write: Duration,
    /// Deadline for the whole upstream exchange, if any.
    pub total: Option<Duration>,
}

pub struct RoutePlan {
    pub config: RouteConfig,
    pub upstream_index: usize,
    pub timeouts: EffectiveTimeouts,
    /// The route's own retry policy, replacing the upstream's.
    pub retry: Option<RetryPolicy>,
    /// Global policies first, then the route's plugins by priority (ties keep its order).
    pub chain: Vec<ChainEntry>,
    pub canary: Option<super::traffic::CanaryPlan>,
    pub shadow: Option<super::traffic::ShadowPlan>,
    pub cache: Option<Arc<super::cache::CachePolicy>>,
    pub coalesce: Option<super::cache::CoalescePlan>,
}

pub(crate) struct Checker<'a> {
    pub(crate) file: &'a Path,
    root: &'a Node,
    errors: &'a mut Vec<ConfigError>,
    /// The config file's directory, where relative paths in it are resolved.
    base_dir: PathBuf,
}

impl<'a> Checker<'a> {
    pub(crate) fn new(
        file: &'a Path,
        root: &'a Node,
        errors: &'a mut Vec<ConfigError>,
    ) -> Checker<'a> {
        Checker {
            file,
            root,
            errors,
            base_dir: config_directory(file),
        }
    }

    pub(crate) fn base_dir(&self) -> &Path {
        &self.base_dir
    }

    /// Whether `key_path` is missing from the file or written without a value.
    pub(crate) fn is_absent_or_null(&self, key_path: &str) -> bool {
        self.root
            .find(key_path)
            .is_none_or(|node| matches!(node.value, super::yaml::NodeValue::Null))
    }

    /// Deserializes the node at `key_path` into `T`, recording errors with their positions.
    pub(crate) fn deserialize<T: serde::de::DeserializeOwned>(
        &mut self,
        key_path: &str,
    ) -> Option<T> {
        let node = self.root.find(key_path)?;
        super::yaml::deserialize_node(self.file, node, key_path, self.errors)
    }

    /// Position of `key_path`, or of its nearest enclosing key that exists.
    pub(crate) fn mark_of(&self, key_path: &str) -> Option<super::yaml::Mark> {
        let mut probe = key_path;
        loop {
            if let Some(node) = self.root.find(probe) {
                return Some(node.mark);
            }
            match probe.rfind(['.', '[']) {
                Some(cut) => probe = &probe[..cut],
                None => return None,
            }
        }
    }

    /// Records an error at `key_path`; when the key itself is absent (a default was at
    /// fault), the nearest enclosing key that exists gives the position.
    pub(crate) fn error_count(&self) -> usize {
        self.errors.len()
    }

    pub(crate) fn error(&mut self, key_path: String, message: impl Into<String>) {
        let mark = self.mark_of(&key_path);
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            mark,
            key_path,
            message: message.into(),
        });
    }
}

/// Checks `file_config` as a whole and resolves it. Errors are appended to `errors`; the
/// returned value is only meaningful when no error was added.
pub fn validate(
    path: &Path,
    root: &Node,
    file_config: FileConfig,
    indexes: &SourceIndexes,
    errors: &mut Vec<ConfigError>,
) -> ValidatedConfig {
    let mut checker = Checker::new(path, root, errors);
    let base_dir = checker.base_dir().to_path_buf();
    let listeners = check_listeners(&mut checker, &file_config, indexes, &base_dir);
    let ca_file = check_ca_file(&mut checker, &file_config, &base_dir);
    let upstreams = check_upstreams(&mut checker, &file_config, indexes, &ca_file);
    let plugins = super::plugins::check_plugins(&mut checker, &file_config, indexes, &base_dir);
    let global_policies = check_global_policies(&mut checker, &file_config);
    let cache_store = super::cache::store_plan(&mut checker, &file_config);
    let tracing = super::tracing::check_tracing(&mut checker, &file_config);
    let metrics_push = super::tracing::check_metrics_push(&mut checker, &file_config);
    let trusted_proxies = crate::policy::client_ip::parse_list(
        &file_config.server.trusted_proxies,
        &mut |index, message| checker.error(format!("server.trusted_proxies[{index}]"), message),
    );
    let (routes, router) = check_routes(
        &mut checker,
        &file_config,
        indexes,
        &upstreams,
        &plugins,
        &global_policies,
    );
    let admin_address = if file_config.admin.enabled {
        match parse_listen_address(&file_config.admin.address) {
            Ok(address) => address.parse().ok(),
            Err(message) => {
                checker.error("admin.address".into(), message);
                None
            }
        }
    } else {
        None
    };
    let admin_auth = AdminAuthPlan::from_config(&file_config.admin).unwrap_or_else(|problems| {
        for (path, message) in problems {
            checker.error(format!("admin.{path}"), message);
        }
        None
    });
    if !file_config.metrics.prometheus.path.starts_with('/') {
        checker.error(
            "metrics.prometheus.path".into(),
            "must start with '/'".to_string(),
        );
    }
    if file_config.reload.interval.0.is_zero() {
        checker.error("reload.interval".into(), "must be greater than zero");
    }
    if file_config.server.threads == Some(0) {
        checker.error("server.threads".into(), "must be at least 1");
    }
    if let Some(size) = file_config.server.read_buffer_size
        && !READ_BUFFER_SIZE_RANGE.contains(&size.0)
    {
        checker.error(
            "server.read_buffer_size".into(),
            format!("must be between 1KiB and 1MiB, not {} bytes", size.0),
        );
    }
    // Zero would close every connection before its first byte could be read.
    for (key_path, timeout) in [
        (
            "server.request_header_timeout",
            file_config.server.request_header_timeout,
        ),
        (
            "server.keepalive_timeout",
            file_config.server.keepalive_timeout,
        ),
    ] {
        if timeout.is_some_and(|timeout| timeout.0.is_zero()) {
            checker.error(key_path.into(), "must be greater than zero");
        }
    }
    let stream = file_config
        .stream
        .as_ref()
        .and_then(|section| super::stream::validate_gateway_section(&mut checker, section));
    let max_request_header_size = file_config
        .server
        .max_request_header_size
        .map(|size| size.0 as usize)
        .unwrap_or(DEFAULT_MAX_REQUEST_HEADER_SIZE);
    let read_buffer_size = file_config
        .server
        .read_buffer_size
        .map_or(DEFAULT_READ_BUFFER_SIZE, |size| size.0 as usize);
    ValidatedConfig {
        file: file_config,
        listeners,
        upstreams,
        routes,
        router,
        admin_address,
        max_request_header_size,
        read_buffer_size,
        ca_file,
        plugins,
        stream,
        trusted_proxies,
        admin_auth,
        global_policies,
        tracing,
        metrics_push,
        cache_store,
    }
}

/// The top-level policy sections (`cors:`, `access_log:`), applied to every route.
fn check_global_policies(checker: &mut Checker, config: &FileConfig) -> Vec<Arc<PolicyStep>> {
    let mut policies = Vec::new();
    if let Some(policy) = go_loom_rate_limit(checker, config) {
        policies.push(Arc::new(PolicyStep {
            name: "rate_limit".to_string(),
            priority: 0,
            global: true,
            policy,
        }));
    }
    for kind in ["cors", "access_log"] {
        if checker.is_absent_or_null(kind) {
            continue;
        }
        if let Some(policy) = crate::policy::compile(checker, kind, kind, kind) {
            policies.push(Arc::new(PolicyStep {
                name: kind.to_string(),
                priority: 0,
                global: true,
                policy,
            }));
        }
    }
    policies
}

/// Go Loom's top-level `rate_limit: {enabled, rate, burst, cleanup_interval}`: requests per
/// second per client IP on every route, as its `x/time/rate` limiter counts them.
fn go_loom_rate_limit(checker: &mut Checker, config: &FileConfig) -> Option<Policy> {
    let section = config
        .rate_limit
        .as_ref()
        .filter(|section| section.enabled)?;
    let Some(rate) = section.rate else {
        checker.error(
            "rate_limit.rate".into(),
            "requests per second are required when rate limiting is enabled",
        );
        return None;
    };
    let limit_config = crate::policy::rate_limit::RateLimitConfig {
        rate,
        burst: section.burst,
        cleanup_interval: section.cleanup_interval,
        ..Default::default()
    };
    crate::policy::rate_limit::RateLimit::compile(
        "rate_limit",
        limit_config,
        &mut |field, message| checker.error(format!("rate_limit.{field}"), message),
    )
    .map(Policy::RateLimit)
}

/// Builds a route's chain: the global policies it does not switch off (nor replace with its
/// own policy of the same type), then its `plugins:` by priority, higher first; equal
/// priorities keep the order the route lists them in.
fn route_chain(
    checker: &mut Checker,
    key: &str,
    route: &RouteConfig,
    config: &FileConfig,
    plugins: &super::plugins::PluginsPlan,
    global_policies: &[Arc<PolicyStep>],
) -> Vec<ChainEntry> {
    let global_cache = config.cache.as_ref().is_some_and(|cache| cache.enabled);
    for (index, disabled) in route.disable.iter().enumerate() {
        let global_policy = global_policies
            .iter()
            .any(|step| step.policy.kind() == disabled);
        if !global_policy && (!global_cache || disabled != "cache") {
            checker.error(
                format!("{key}.disable[{index}]"),
                format!(
                    "\"{disabled}\" is not a global policy of this config (global policies: {})",
                    if global_policies.is_empty() {
                        "none".to_string()
                    } else {
                        global_policies
                            .iter()
                            .map(|step| step.policy.kind())
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                ),
            );
        }
    }
    let mut own: Vec<(i32, ChainEntry)> = Vec::new();
    for name in &route.plugins {
        if let Some(step) = plugins.policies.iter().find(|step| &step.name == name) {
            own.push((step.priority, ChainEntry::Policy(Arc::clone(step))));
        } else if let Some(entry) = config
            .plugins
            .iter()
            .find(|entry| &entry.name == name && super::plugins::is_wasm(entry))
        {
            own.push((entry.priority, ChainEntry::Wasm(name.clone())));
        }
    }
    // A transform that names a path parameter the route does not capture would send an
    // empty segment upstream: refuse it here.
    let captured: Vec<&str> = route
        .path
        .split('/')
        .filter_map(|segment| {
            segment
                .strip_prefix(':')
                .or_else(|| segment.strip_prefix('*'))
        })
        .filter(|name| !name.is_empty())
        .collect();
    for (index, name) in route.plugins.iter().enumerate() {
        let Some(step) = plugins.policies.iter().find(|step| &step.name == name) else {
            continue;
        };
        if let crate::policy::Policy::Transform(transform) = &step.policy {
            for parameter in transform.parameters() {
                if !captured.contains(&parameter.as_str()) {
                    checker.error(
                        format!("{key}.plugins[{index}]"),
                        format!(
                            "transform \"{name}\" uses the path parameter \"{parameter}\", \
                             which path \"{}\" does not capture",
                            route.path
                        ),
                    );
                }
            }
        }
    }
    own.sort_by_key(|(priority, _)| std::cmp::Reverse(*priority));
    check_consumer_restrictions(checker, key, route, &own);
    let own_kinds: Vec<&str> = own
        .iter()
        .filter_map(|(_, entry)| match entry {
            ChainEntry::Policy(step) => Some(step.policy.kind()),
            ChainEntry::Wasm(_) => None,
        })
        .collect();
    let mut chain: Vec<ChainEntry> = global_policies
        .iter()
        .filter(|step| {
            let kind = step.policy.kind();
            !route.disable.iter().any(|disabled| disabled == kind) && !own_kinds.contains(&kind)
        })
        .map(|step| ChainEntry::Policy(Arc::clone(step)))
        .collect();
    chain.extend(own.into_iter().map(|(_, entry)| entry));
    chain
}

/// A `consumer_restriction` reads the consumer an auth policy named: one with no auth policy
/// before it in the route's sorted chain would refuse every request.
fn check_consumer_restrictions(
    checker: &mut Checker,
    key: &str,
    route: &RouteConfig,
    sorted_chain: &[(i32, ChainEntry)],
) {
    let mut authenticated = false;
    for (_, entry) in sorted_chain {
        let ChainEntry::Policy(step) = entry else {
            continue;
        };
        match step.policy.kind() {
            "key_auth" | "basic_auth" | "jwt_auth" | "mtls_auth" => authenticated = true,
            "consumer_restriction" if !authenticated => {
                let index = route
                    .plugins
                    .iter()
                    .position(|name| name == &step.name)
                    .unwrap_or_default();
                checker.error(
                    format!("{key}.plugins[{index}]"),
                    format!(
                        "consumer_restriction \"{}\" needs an auth policy (key_auth, basic_auth, \
                         jwt_auth or mtls_auth) before it in the route's chain (by priority, \
                         then list order)",
                        step.name
                    ),
                );
            }
            _ => {}
        }
    }
}

/// The directory relative paths in the config are resolved against: the file's directory,
/// made absolute, so that `loom -c my.yaml` in the current folder works as `-c ./my.yaml` does.
/// (The directory is resolved, not the file: a symlinked config file, as Kubernetes mounts
/// them, keeps its paths relative to where it is mounted.)
pub fn config_directory(file: &Path) -> PathBuf {
    let directory = file
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    directory
        .canonicalize()
        .unwrap_or_else(|_| directory.to_path_buf())
}

/// Accepts `host:port` and Go's `:port` (every interface).
pub fn parse_listen_address(text: &str) -> Result<String, String> {
    let normalized = if let Some(port) = text.strip_prefix(':') {
        format!("0.0.0.0:{port}")
    } else {
        text.to_string()
    };
    normalized
        .parse::<SocketAddr>()
        .map(|_| normalized.clone())
        .map_err(|_| format!("\"{text}\" is not an address like 127.0.0.1:8080 or :8080"))
}

fn check_listeners(
    checker: &mut Checker,
    config: &FileConfig,
    indexes: &SourceIndexes,
    base_dir: &Path,
) -> Vec<ListenerPlan> {
    if config.listeners.is_empty() && indexes.listeners.is_empty() {
        checker.error("listeners".into(), "at least one listener is required");
    }
    let mut names = HashSet::new();
    let mut addresses = HashSet::new();
    let mut plans = Vec::new();
    for (position, listener) in config.listeners.iter().enumerate() {
        let key = format!("listeners[{}]", indexes.listeners[position]);
        if !names.insert(listener.name.as_str()) {
            checker.error(
                format!("{key}.name"),
                format!("duplicate listener name \"{}\"", listener.name),
            );
        }
        let address = match parse_listen_address(&listener.address) {
            Ok(address) => address,
            Err(message) => {
                checker.error(format!("{key}.address"), message);
                continue;
            }
        };
        if !addresses.insert(address.clone()) {
            checker.error(
                format!("{key}.address"),
                format!("address {address} is used by another listener"),
            );
        }
        let tls = match &listener.tls {
            None => {
                if listener.protocol.requires_tls() {
                    checker.error(
                        format!("{key}.tls"),
                        format!(
                            "protocol {} needs tls with cert and key (cert_file and key_file in \
                             Go Loom's spelling)",
                            listener.protocol.as_str()
                        ),
                    );
                }
                None
            }
            Some(tls) => listener_tls_files(checker, &key, tls, base_dir),
        };
        let client_auth = listener
            .tls
            .as_ref()
            .and_then(|tls| listener_client_auth(checker, &key, tls, base_dir));
        plans.push(ListenerPlan {
            name: listener.name.clone(),
            address,
            protocol: listener.protocol,
            tls,
            client_auth,
        });
    }
    plans
}

/// Resolves a listener's certificate and key, each given under Loom's name (`cert`, `key`) or
/// Go Loom's (`cert_file`, `key_file`), and checks that they load. `None` after an error.
fn listener_tls_files(
    checker: &mut Checker,
    key: &str,
    tls: &ListenerTls,
    base_dir: &Path,
) -> Option<(String, String)> {
    let mut resolve_spelling =
        |loom_name: &str, loom_value: &Option<String>, go_name: &str, go_value: &Option<String>| {
            match either_spelling(loom_name, loom_value.as_ref(), go_name, go_value.as_ref()) {
                Ok(Some(file)) => Some(resolve_file(base_dir, file)),
                Ok(None) => {
                    checker.error(
                        format!("{key}.tls.{loom_name}"),
                        format!("tls needs {loom_name} (or {go_name}, Go Loom's spelling)"),
                    );
                    None
                }
                Err(message) => {
                    checker.error(format!("{key}.tls.{go_name}"), message);
                    None
                }
            }
        };
    let cert = resolve_spelling("cert", &tls.cert, "cert_file", &tls.cert_file);
    let key_file = resolve_spelling("key", &tls.key, "key_file", &tls.key_file);
    let (cert, key_file) = (cert?, key_file?);
    match pingora::tls::load_certs_and_key_files(&cert, &key_file) {
        Ok(Some(_)) => {}
        Ok(None) | Err(_) => checker.error(
            format!("{key}.tls"),
            format!(
                "cannot load certificate \"{cert}\" and key \"{key_file}\" (PEM files expected)"
            ),
        ),
    }
    Some((cert, key_file))
}

/// `tls.client_ca` and `tls.client_auth` of a listener; the CA file is loaded now so that a
/// bad one is a config error, not a listener that fails every handshake.
fn listener_client_auth(
    checker: &mut Checker,
    key: &str,
    tls: &ListenerTls,
    base_dir: &Path,
) -> Option<ClientAuthPlan> {
    let required = match tls.client_auth.as_deref() {
        None | Some("required") => true,
        Some("optional") => false,
        Some(other) => {
            checker.error(
                format!("{key}.tls.client_auth"),
                format!("\"{other}\" is not required or optional"),
            );
            true
        }
    };
    let Some(ca_file) = &tls.client_ca else {
        if tls.client_auth.is_some() {
            checker.error(
                format!("{key}.tls.client_auth"),
                "client_auth needs client_ca (the CA that signs client certificates)",
            );
        }
        return None;
    };
    let ca_file = resolve_file(base_dir, ca_file);
    if let Err(message) =
        crate::gateway::client_cert::RecordingVerifier::from_ca_file(&ca_file, required)
    {
        checker.error(format!("{key}.tls.client_ca"), message);
        return None;
    }
    Some(ClientAuthPlan { ca_file, required })
}

/// The value of a setting that Loom and Go Loom spell differently: whichever of the two keys
/// was given. Both given is an error naming both, since nothing says which one was meant.
pub(crate) fn either_spelling<T>(
    loom_key: &str,
    loom_value: Option<T>,
    go_key: &str,
    go_value: Option<T>,
) -> Result<Option<T>, String> {
    match (loom_value, go_value) {
        (Some(_), Some(_)) => Err(format!(
            "give either {loom_key} or {go_key} (Go Loom's spelling), not both"
        )),
        (loom_value, go_value) => Ok(loom_value.or(go_value)),
    }
}

fn resolve_file(base_dir: &Path, file: &str) -> String {
    let path = Path::new(file);
    if path.is_absolute() || path.exists() {
        file.to_string()
    } else {
        base_dir.join(path).to_string_lossy().into_owned()
    }
}

/// Resolves `server.ca_file` against the config's directory and checks it loads. With rustls,
/// Pingora trusts only this bundle when it is set (not the system roots as well).
fn check_ca_file(checker: &mut Checker, config: &FileConfig, base_dir: &Path) -> Option<String> {
    let file = config.server.ca_file.as_ref()?;
    let resolved = resolve_file(base_dir, file);
    let mut store = pingora::tls::RootCertStore::empty();
    match pingora::tls::load_ca_file_into_store(&resolved, &mut store) {
        Ok(()) if !store.is_empty() => Some(resolved),
        _ => {
            checker.error(
                "server.ca_file".into(),
                format!("cannot load CA certificates from \"{resolved}\" (PEM expected)"),
            );
            None
        }
    }
}

fn check_upstreams(
    checker: &mut Checker,
    config: &FileConfig,
    indexes: &SourceIndexes,
    ca_file: &Option<String>,
) -> Vec<UpstreamPlan> {
    let mut names = HashSet::new();
    let mut plans = Vec::new();
    for (position, upstream) in config.upstreams.iter().enumerate() {
        let key = format!("upstreams[{}]", indexes.upstreams[position]);
        if !names.insert(upstream.name.as_str()) {
            checker.error(
                format!("{key}.name"),
                format!("duplicate upstream name \"{}\"", upstream.name),
            );
        }
        if upstream.endpoints.is_empty() {
            checker.error(
                format!("{key}.endpoints"),
                "at least one endpoint is required",
            );
        }
        let mut problems = Vec::new();
        let resilience = resilience::upstream_plan(upstream, &mut problems);
        for (path, message) in problems {
            checker.error(format!("{key}.{path}"), message);
        }
        if matches!(
            upstream.load_balancer,
            LoadBalancerAlgorithm::LeastConn | LoadBalancerAlgorithm::P2c
        ) && upstream
            .endpoints
            .iter()
            .any(|endpoint| endpoint.weight() > 1000)
        {
            checker.error(
                format!("{key}.endpoints"),
                "weights above 1000 are not supported",
            );
        }
        if upstream.endpoints.len() > MAX_ENDPOINTS {
            checker.error(
                format!("{key}.endpoints"),
                format!("at most {MAX_ENDPOINTS} endpoints per upstream are supported"),
            );
        }
        let discovery = check_discovery(checker, &key, upstream);
        let endpoints = match discovery.as_ref().and_then(|plan| plan.service.as_ref()) {
            Some(service) => resolve_service(
                checker,
                &format!("{key}.service_discovery.service_name"),
                service,
            ),
            None => resolve_listed_endpoints(checker, &key, upstream),
        };
        if upstream.hash_on.is_some()
            && upstream.load_balancer != LoadBalancerAlgorithm::ConsistentHash
        {
            checker.error(
                format!("{key}.hash_on"),
                "hash_on only applies to load_balancer: consistent_hash",
            );
        }
        for (field, value) in [
            ("connect_timeout", upstream.connect_timeout),
            ("read_timeout", upstream.read_timeout),
            ("write_timeout", upstream.write_timeout),
        ] {
            if value.is_some_and(|duration| duration.0.is_zero()) {
                checker.error(format!("{key}.{field}"), "must be greater than zero");
            }
        }
        let (go_hash_key, ring_weight_multiplier) =
            check_go_consistent_hash(checker, &key, upstream);
        let hash_key = match (&upstream.hash_on, go_hash_key, upstream.load_balancer) {
            (_, _, LoadBalancerAlgorithm::IpHash) => Some(HashKeySource::ClientIp),
            (Some(text), _, _) => match parse_hash_key(text) {
                Ok(source) => Some(source),
                Err(message) => {
                    checker.error(format!("{key}.hash_on"), message);
                    None
                }
            },
            (None, Some(text), LoadBalancerAlgorithm::ConsistentHash) => {
                match parse_go_hash_key(text) {
                    Ok(source) => Some(source),
                    Err(message) => {
                        checker.error(format!("{key}.consistent_hash.hash_key"), message);
                        None
                    }
                }
            }
            (None, _, LoadBalancerAlgorithm::ConsistentHash) => Some(HashKeySource::ClientIp),
            (None, _, _) => None,
        };
        let health = upstream
            .health_check
            .as_ref()
            .map(|health| check_health(checker, &format!("{key}.health_check"), health));
        plans.push(UpstreamPlan {
            config: upstream.clone(),
            endpoints,
            hash_key,
            ring_weight_multiplier,
            health,
            connect_timeout: upstream
                .connect_timeout
                .map_or(DEFAULT_CONNECT_TIMEOUT, |value| value.0),
            read_timeout: upstream
                .read_timeout
                .map_or(DEFAULT_READ_TIMEOUT, |value| value.0),
            write_timeout: upstream
                .write_timeout
                .map_or(DEFAULT_WRITE_TIMEOUT, |value| value.0),
            resilience,
            ca_file: ca_file.clone(),
            discovery,
        });
    }
    plans
}

fn resolve_listed_endpoints(
    checker: &mut Checker,
    key: &str,
    upstream: &UpstreamConfig,
) -> Vec<ResolvedEndpoint> {
    let mut endpoints: Vec<ResolvedEndpoint> = Vec::new();
    for (index, endpoint) in upstream.endpoints.iter().enumerate() {
        let endpoint_key = format!("{key}.endpoints[{index}]");
        if endpoint.weight() == 0 {
            checker.error(
                format!("{endpoint_key}.weight"),
                "weight must be at least 1",
            );
        }
        match resolve_endpoint(endpoint.address()) {
            Ok((socket, _)) if endpoints.iter().any(|seen| seen.socket == socket) => {
                checker.error(
                    endpoint_key,
                    format!("endpoint {socket} is listed twice in this upstream"),
                );
            }
            Ok((socket, host)) => endpoints.push(ResolvedEndpoint {
                address_json: crate::observe::access_log::JsonText::new(endpoint.address()),
                address: endpoint.address().to_string(),
                socket,
                weight: endpoint.weight().max(1),
                host,
                drain: endpoint.drain(),
                host_header: host_header(endpoint.address(), socket),
            }),
            Err(message) => checker.error(endpoint_key, message),
        }
    }
    endpoints
}

/// Go Loom's `service_discovery` when switched on: only the `dns` provider is built.
fn check_discovery(
    checker: &mut Checker,
    key: &str,
    upstream: &UpstreamConfig,
) -> Option<DiscoveryPlan> {
    let section = upstream
        .service_discovery
        .as_ref()
        .filter(|section| section.enabled)?;
    let section_key = format!("{key}.service_discovery");
    let mut usable = true;
    match section.provider.as_deref() {
        Some("dns") => {}
        Some(other) => {
            checker.error(
                format!("{section_key}.provider"),
                format!("service discovery provider \"{other}\" is not supported yet (dns is)"),
            );
            usable = false;
        }
        None => {
            checker.error(
                format!("{section_key}.provider"),
                "service discovery needs a provider: dns (the one supported yet)",
            );
            usable = false;
        }
    }
    let refresh_interval = section
        .refresh_interval
        .map_or(DEFAULT_DISCOVERY_REFRESH, |value| value.0);
    if refresh_interval.is_zero() {
        checker.error(
            format!("{section_key}.refresh_interval"),
            "must be greater than zero",
        );
        usable = false;
    }
    let service_name = section
        .service_name
        .as_deref()
        .filter(|name| !name.is_empty());
    if service_name.is_some()
        && (upstream.endpoints.len() != 1
            || matches!(
                upstream.endpoints.first(),
                Some(crate::config::schema::EndpointConfig::Weighted { .. })
            ))
    {
        // The service's addresses replace the endpoints: more endpoints, a weight or the
        // first endpoint's host would be ignored.
        checker.error(
            format!("{section_key}.service_name"),
            "with service_name, list exactly one endpoint (\"host:port\", no weight): its port \
             is the service's port and the name's addresses become the endpoints",
        );
        usable = false;
    }
    let service = match service_name {
        None => None,
        Some(name) => {
            // A first endpoint without a valid port is reported when the listed endpoints are
            // resolved, which is what happens without a usable plan.
            let port = upstream
                .endpoints
                .first()
                .and_then(|endpoint| endpoint.address().rsplit_once(':'))
                .and_then(|(_, port)| port.parse::<u16>().ok());
            match port {
                Some(port) => Some(DiscoveredService {
                    name: name.to_string(),
                    port,
                }),
                None => {
                    usable = false;
                    None
                }
            }
        }
    };
    usable.then_some(DiscoveryPlan {
        refresh_interval,
        service,
    })
}

/// Go Loom's `service_name`: every address the name resolves to, each an endpoint of weight 1
/// (as in Go Loom) on the service's port, named by its address in metrics and the admin API.
fn resolve_service(
    checker: &mut Checker,
    key: &str,
    service: &DiscoveredService,
) -> Vec<ResolvedEndpoint> {
    let target = format!("{}:{}", service.name, service.port);
    let addresses = match target.to_socket_addrs() {
        Ok(addresses) => preferred_addresses(addresses),
        Err(error) => {
            checker.error(
                key.to_string(),
                format!("cannot resolve \"{}\": {error}", service.name),
            );
            return Vec::new();
        }
    };
    if addresses.is_empty() {
        checker.error(
            key.to_string(),
            format!("\"{}\" resolved to no address", service.name),
        );
    }
    if addresses.len() > MAX_ENDPOINTS {
        checker.error(
            key.to_string(),
            format!(
                "\"{}\" resolves to {} addresses; at most {MAX_ENDPOINTS} endpoints per \
                 upstream are supported",
                service.name,
                addresses.len()
            ),
        );
    }
    addresses
        .into_iter()
        .map(|socket| ResolvedEndpoint {
            address_json: crate::observe::access_log::JsonText::new(&socket.to_string()),
            address: socket.to_string(),
            socket,
            weight: 1,
            host: service.name.clone(),
            drain: false,
            host_header: host_header(&socket.to_string(), socket),
        })
        .collect()
}

/// The addresses of a resolved name that Loom uses: the IPv4 ones when there are any (so that
/// `localhost` reaches servers bound to 127.0.0.1), all of them otherwise; sorted and without
/// repeats, so that one answer in another order gives the same endpoints.
pub fn preferred_addresses(addresses: impl IntoIterator<Item = SocketAddr>) -> Vec<SocketAddr> {
    let mut addresses: Vec<SocketAddr> = addresses.into_iter().collect();
    if addresses.iter().any(SocketAddr::is_ipv4) {
        addresses.retain(SocketAddr::is_ipv4);
    }
    addresses.sort();
    addresses.dedup();
    addresses
}

/// Resolves `host:port`, preferring IPv4 so that `localhost` reaches servers bound to
/// 127.0.0.1. Names are resolved when the config loads (and again on every reload).
fn resolve_endpoint(address: &str) -> Result<(SocketAddr, String), String> {
    let Some((host, port)) = address.rsplit_once(':') else {
        return Err(format!("endpoint \"{address}\" must be host:port"));
    };
    if port.parse::<u16>().is_err() {
        return Err(format!("endpoint \"{address}\" has an invalid port"));
    }
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    if let Ok(socket) = address.parse::<SocketAddr>() {
        return Ok((socket, host));
    }
    let resolved = address
        .to_socket_addrs()
        .map_err(|error| format!("cannot resolve endpoint \"{address}\": {error}"))?;
    // The lowest address, not the first: round-robin DNS changes the order of its answers,
    // and a reload should not move an endpoint (and rebuild its pool) for that alone.
    preferred_addresses(resolved)
        .first()
        .map(|socket| (*socket, host))
        .ok_or_else(|| format!("endpoint \"{address}\" resolved to no address"))
}

fn parse_hash_key(text: &str) -> Result<HashKeySource, String> {
    match text {
        "client_ip" | "ip" => Ok(HashKeySource::ClientIp),
        "path" => Ok(HashKeySource::Path),
        _ => match text.split_once(':') {
            Some(("header", name)) if !name.is_empty() => {
                Ok(HashKeySource::Header(name.to_ascii_lowercase()))
            }
            Some(("cookie", name)) if !name.is_empty() => {
                Ok(HashKeySource::Cookie(name.to_string()))
            }
            _ => Err(format!(
                "\"{text}\" is not a hash key; use client_ip, path, header:<name> or cookie:<name>"
            )),
        },
    }
}

/// Go Loom's `consistent_hash:` section: its `hash_key` (turned into a key source with the
/// rest of the hash settings) and the ring weight multiplier that stands for `replicas`.
fn check_go_consistent_hash<'config>(
    checker: &mut Checker,
    key: &str,
    upstream: &'config UpstreamConfig,
) -> (Option<&'config str>, u32) {
    let section = upstream.consistent_hash.as_ref();
    let hash_key = section
        .and_then(|section| section.hash_key.as_deref())
        .filter(|text| !text.is_empty());
    let replicas = section
        .and_then(|section| section.replicas)
        .filter(|replicas| *replicas > 0);
    if (hash_key.is_some() || replicas.is_some())
        && upstream.load_balancer != LoadBalancerAlgorithm::ConsistentHash
    {
        checker.error(
            format!("{key}.consistent_hash"),
            "consistent_hash only applies to load_balancer: consistent_hash",
        );
    }
    if hash_key.is_some() && upstream.hash_on.is_some() {
        checker.error(
            format!("{key}.consistent_hash.hash_key"),
            "give either hash_on or consistent_hash.hash_key (Go Loom's spelling), not both",
        );
    }
    let Some(replicas) = replicas else {
        return (hash_key, 1);
    };
    if replicas > MAX_HASH_REPLICAS {
        checker.error(
            format!("{key}.consistent_hash.replicas"),
            format!("must be at most {MAX_HASH_REPLICAS}"),
        );
        return (hash_key, 1);
    }
    let multiplier = ((replicas + KETAMA_POINTS_PER_WEIGHT / 2) / KETAMA_POINTS_PER_WEIGHT).max(1);
    let total_weight: u64 = upstream
        .endpoints
        .iter()
        .map(|endpoint| u64::from(endpoint.weight()))
        .sum();
    let points = total_weight
        .saturating_mul(u64::from(multiplier))
        .saturating_mul(u64::from(KETAMA_POINTS_PER_WEIGHT));
    if points > MAX_HASH_RING_POINTS {
        checker.error(
            format!("{key}.consistent_hash.replicas"),
            format!(
                "with these endpoint weights the hash ring would hold {points} points \
                 (at most {MAX_HASH_RING_POINTS}); lower replicas or the weights"
            ),
        );
    }
    (hash_key, multiplier)
}

/// Go Loom's `consistent_hash.hash_key`: `Cookie:<name>` hashes that cookie (the prefix in any
/// case), anything else is a header name.
fn parse_go_hash_key(text: &str) -> Result<HashKeySource, String> {
    if let Some((prefix, name)) = text.split_once(':')
        && prefix.eq_ignore_ascii_case("cookie")
    {
        return if name.is_empty() {
            Err(format!("\"{text}\" names no cookie; use Cookie:<name>"))
        } else {
            Ok(HashKeySource::Cookie(name.to_string()))
        };
    }
    http::HeaderName::from_bytes(text.as_bytes())
        .map(|name| HashKeySource::Header(name.as_str().to_string()))
        .map_err(|_| format!("\"{text}\" is neither a header name nor Cookie:<name>"))
}

fn check_health(checker: &mut Checker, key: &str, health: &HealthCheckConfig) -> HealthPlan {
    let plan = HealthPlan {
        http_path: health.path.clone(),
        interval: health
            .interval
            .map_or(DEFAULT_HEALTH_INTERVAL, |value| value.0),
        timeout: health
            .timeout
            .map_or(DEFAULT_HEALTH_TIMEOUT, |value| value.0),
        healthy_threshold: health
            .healthy_threshold
            .unwrap_or(DEFAULT_HEALTHY_THRESHOLD),
        unhealthy_threshold: health
            .unhealthy_threshold
            .unwrap_or(DEFAULT_UNHEALTHY_THRESHOLD),
        expected_status: health.expected_status.clone(),
        host: health.host.clone(),
    };
    if let Some(path) = &plan.http_path
        && !path.starts_with('/')
    {
        checker.error(format!("{key}.path"), "must start with '/'");
    }
    if plan.interval.is_zero() {
        checker.error(format!("{key}.interval"), "must be greater than zero");
    }
    if plan.timeout.is_zero() {
        checker.error(format!("{key}.timeout"), "must be greater than zero");
    }
    if !(1..=MAX_THRESHOLD).contains(&plan.healthy_threshold) {
        checker.error(
            format!("{key}.healthy_threshold"),
            format!("must be between 1 and {MAX_THRESHOLD}"),
        );
    }
    if !(1..=MAX_THRESHOLD).contains(&plan.unhealthy_threshold) {
        checker.error(
            format!("{key}.unhealthy_threshold"),
            format!("must be between 1 and {MAX_THRESHOLD}"),
        );
    }
    if plan.timeout > MAX_HEALTH_TIMEOUT {
        checker.error(format!("{key}.timeout"), "must be at most 1m");
    }
    for (index, status) in plan.expected_status.iter().enumerate() {
        if !(100..=599).contains(status) {
            checker.error(
                format!("{key}.expected_status[{index}]"),
                format!("{status} is not an HTTP status"),
            );
        }
    }
    plan
}

/// The route's timeouts, each falling back to `upstream`'s (the defaults without one).
fn route_timeouts(route: &RouteConfig, upstream: Option<&UpstreamPlan>) -> EffectiveTimeouts {
    let detailed = route.timeouts.clone().unwrap_or_default();
    EffectiveTimeouts {
        connect: detailed.connect.map_or(
            upstream.map_or(DEFAULT_CONNECT_TIMEOUT, |u| u.connect_timeout),
            |v| v.0,
        ),
        read: detailed.read.map_or(
            upstream.map_or(DEFAULT_READ_TIMEOUT, |u| u.read_timeout),
            |v| v.0,
        ),
        write: detailed.write.map_or(
            upstream.map_or(DEFAULT_WRITE_TIMEOUT, |u| u.write_timeout),
            |v| v.0,
        ),
        total: detailed.total.or(route.timeout).map(|v| v.0),
    }
}

fn check_routes(
    checker: &mut Checker,
    config: &FileConfig,
    indexes: &SourceIndexes,
    upstreams: &[UpstreamPlan],
    plugins: &super::plugins::PluginsPlan,
    global_policies: &[Arc<PolicyStep>],
) -> (Vec<RoutePlan>, Router<usize>) {
    let upstream_by_name: HashMap<&str, usize> = upstreams
        .iter()
        .enumerate()
        .map(|(index, plan)| (plan.config.name.as_str(), index))
        .collect();
    let plugin_names: HashSet<&str> = config.plugins.iter().map(|p| p.name.as_str()).collect();
    let mut ids = HashSet::new();
    let mut plans = Vec::new();
    let mut specs = Vec::new();
    for (position, route) in config.routes.iter().enumerate() {
        let key = format!("routes[{}]", indexes.routes[position]);
        if route.id == crate::observe::route_metrics::UNMATCHED {
            checker.error(
                format!("{key}.id"),
                format!(
                    "the route id \"{}\" is reserved: metrics and logs name requests no route \
                     matched with it",
                    route.id
                ),
            );
        }
        if !ids.insert(route.id.as_str()) {
            checker.error(
                format!("{key}.id"),
                format!("duplicate route id \"{}\"", route.id),
            );
        }
        let asks_for_certificates = config.listeners.iter().any(|listener| {
            listener
                .tls
                .as_ref()
                .is_some_and(|tls| tls.client_ca.is_some())
        });
        if route
            .client_certificate
            .as_ref()
            .is_some_and(|condition| condition.presented)
            && !asks_for_certificates
        {
            checker.error(
                format!("{key}.client_certificate"),
                "no listener asks for client certificates (tls.client_ca), so this route \
                 could never match",
            );
        }
        let upstream_index = upstream_by_name.get(route.upstream.as_str()).copied();
        if upstream_index.is_none() {
            checker.error(
                format!("{key}.upstream"),
                format!("unknown upstream \"{}\"", route.upstream),
            );
        }
        for (index, plugin) in route.plugins.iter().enumerate() {
            if !plugin_names.contains(plugin.as_str()) {
                checker.error(
                    format!("{key}.plugins[{index}]"),
                    format!("unknown plugin \"{plugin}\""),
                );
            }
        }
        for (index, method) in route.methods.iter().enumerate() {
            if method.is_empty() || !method.bytes().all(|byte| byte.is_ascii_uppercase()) {
                checker.error(
                    format!("{key}.methods[{index}]"),
                    format!("\"{method}\" is not an uppercase HTTP method"),
                );
            }
        }
        // With an unknown upstream the config is rejected anyway; defaults keep checking going.
        let upstream = upstream_index.and_then(|index| upstreams.get(index));
        let detailed = route.timeouts.clone().unwrap_or_default();
        let timeouts = route_timeouts(route, upstream);
        if timeouts.total.is_some_and(|total| total.is_zero()) {
            checker.error(format!("{key}.timeout"), "must be greater than zero");
        }
        for (field, value) in [
            ("connect", detailed.connect),
            ("read", detailed.read),
            ("write", detailed.write),
        ] {
            if value.is_some_and(|duration| duration.0.is_zero()) {
                checker.error(
                    format!("{key}.timeouts.{field}"),
                    "must be greater than zero",
                );
            }
        }
        let chain = route_chain(checker, &key, route, config, plugins, global_policies);
        let canary = route.canary.as_ref().map(|canary| {
            super::traffic::canary_plan(
                checker,
                &key,
                route,
                canary,
                &upstream_by_name,
                |upstream| route_timeouts(route, Some(upstream)),
                upstreams,
            )
        });
        let shadow = route.shadow.as_ref().and_then(|shadow| {
            super::traffic::shadow_plan(checker, &key, route, shadow, &upstream_by_name)
        });
        let cache = super::cache::route_policy(checker, &key, route, config);
        let coalesce = route
            .coalesce
            .as_ref()
            .and_then(|coalesce| super::cache::coalesce_plan(checker, &key, coalesce));
        if cache.is_some() && coalesce.is_some() {
            checker.error(
                format!("{key}.coalesce"),
                "this route caches, and the cache already makes identical misses share one                  upstream request (its lock); switch one off",
            );
        }
        let retry = route.retry.as_ref().map(|config| {
            let mut problems = Vec::new();
            let policy = resilience::retry_policy(config, "retry", &mut problems);
            for (path, message) in problems {
                checker.error(format!("{key}.{path}"), message);
            }
            policy
        });
        specs.push((
            RouteSpec {
                id: route.id.clone(),
                hosts: route.host.clone().map(|h| h.into_vec()).unwrap_or_default(),
                path: route.path.clone(),
                methods: route.methods.clone(),
                headers: route
                    .headers
                    .iter()
                    .map(|(name, value)| (name.to_ascii_lowercase(), value.clone()))
                    .collect(),
                query_params: route
                    .query_params
                    .iter()
                    .map(|(name, value)| (name.clone(), value.clone()))
                    .collect(),
                client_certificate: route.client_certificate.as_ref().map(|condition| {
                    crate::router::CertificateRequirement {
                        presented: condition.presented,
                        subjects: condition.subjects.clone(),
                    }
                }),
                priority: route.priority,
                index: plans.len(),
            },
            plans.len(),
        ));
        plans.push((
            indexes.routes[position],
            RoutePlan {
                config: route.clone(),
                upstream_index: upstream_index.unwrap_or(0),
                timeouts,
                retry,
                chain,
                canary,
                shadow,
                cache,
                coalesce,
            },
        ));
    }
    let router = match Router::build(specs) {
        Ok(router) => router,
        Err(route_errors) => {
            for route_error in route_errors {
                let source_index = plans
                    .get(route_error.route_index)
                    .map_or(route_error.route_index, |(source, _)| *source);
                let field = match route_error.field {
                    "hosts" => "host",
                    other => other,
                };
                checker.error(
                    format!("routes[{source_index}].{field}"),
                    route_error.message,
                );
            }
            Router::empty()
        }
    };
    (plans.into_iter().map(|(_, plan)| plan).collect(), router)
}
