//! Configs in the Go Loom gateway's schema: each Go Loom key loads and means what it means
//! there, and a setting given under both its Loom and its Go Loom name is an error naming both.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::validate::{
    ChainEntry, DiscoveredService, DiscoveryPlan, HashKeySource, ValidatedConfig,
};
use crate::upstream::retry::{RetryCondition, RetryPolicy};

const CERT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/localhost.crt");
const KEY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/localhost.key");

/// A config file name in the crate root (the file itself is never read).
fn config_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("go-loom-test.yaml")
}

/// The validated config, or its errors as `key_path: message`.
fn load(text: &str) -> Result<ValidatedConfig, Vec<String>> {
    load_at(&config_path(), text)
}

/// [`load`] for a config file at `path` (relative files resolve from its directory).
fn load_at(path: &Path, text: &str) -> Result<ValidatedConfig, Vec<String>> {
    super::load_text(path, text).map_err(|errors| {
        errors
            .iter()
            .map(|error| format!("{}: {}", error.key_path, error.message))
            .collect()
    })
}

fn load_ok(text: &str) -> ValidatedConfig {
    match load(text) {
        Ok(validated) => validated,
        Err(errors) => panic!("config refused:\n{}", errors.join("\n")),
    }
}

fn errors_of(text: &str) -> Vec<String> {
    match load(text) {
        Ok(_) => panic!("config accepted where errors were expected:\n{text}"),
        Err(errors) => errors,
    }
}

/// A listener and one upstream, `backend`, with `keys` added (indented as its keys).
fn with_upstream(keys: &str) -> String {
    format!(
        "listeners:\n  - name: http\n    address: \"127.0.0.1:18080\"\nupstreams:\n  \
         - name: backend\n    endpoints: [\"127.0.0.1:3001\"]\n{keys}"
    )
}

#[test]
fn go_loom_listener_protocols_and_tls_file_names_load() {
    let config = load_ok(&format!(
        r#"
listeners:
  - {{name: plain, address: ":18080", protocol: http}}
  - {{name: cleartext-h2, address: ":18081", protocol: h2c}}
  - {{name: grpc, address: ":18082", protocol: grpc}}
  - name: grpc-tls
    address: ":18443"
    protocol: grpcs
    tls: {{cert_file: "{CERT}", key_file: "{KEY}"}}
"#
    ));
    let protocols: Vec<(&str, bool, bool)> = config
        .listeners
        .iter()
        .map(|listener| {
            (
                listener.protocol.as_str(),
                listener.protocol.accepts_h2c(),
                listener.tls.is_some(),
            )
        })
        .collect();
    assert_eq!(
        protocols,
        [
            ("http", false, false),
            ("h2c", true, false),
            ("grpc", true, false),
            ("grpcs", false, true),
        ]
    );
    assert_eq!(
        config.listeners[3].tls,
        Some((CERT.to_string(), KEY.to_string()))
    );
}

#[test]
fn a_tls_file_under_both_names_or_under_neither_is_an_error() {
    let errors = errors_of(&format!(
        r#"
listeners:
  - name: both
    address: ":18443"
    protocol: https
    tls: {{cert: "{CERT}", cert_file: "{CERT}", key_file: "{KEY}"}}
  - name: no-key
    address: ":18444"
    protocol: grpcs
    tls: {{cert_file: "{CERT}"}}
  - name: no-tls
    address: ":18445"
    protocol: grpcs
"#
    ));
    assert_eq!(
        errors,
        [
            "listeners[0].tls.cert_file: give either cert or cert_file (Go Loom's spelling), not both",
            "listeners[1].tls.key: tls needs key (or key_file, Go Loom's spelling)",
            "listeners[2].tls: protocol grpcs needs tls with cert and key (cert_file and key_file \
             in Go Loom's spelling)",
        ]
    );
}

#[test]
fn go_loom_retry_keys_set_the_backoff_and_the_statuses_retried_on_top_of_connection_failures() {
    let config = load_ok(&with_upstream(
        "    retry:\n      max_retries: 2\n      backoff_base: 200ms\n      backoff_max: 2s\n      \
         retryable_codes: [500, 503]\n",
    ));
    let retry = &config.upstreams[0].resilience.retry;
    assert_eq!(retry.max_retries, 2);
    assert_eq!(retry.backoff_base, Duration::from_millis(200));
    assert_eq!(retry.backoff_max, Duration::from_secs(2));
    assert_eq!(
        retry.retry_on,
        [
            RetryCondition::ConnectError,
            RetryCondition::Timeout,
            RetryCondition::Reset,
            RetryCondition::Status(500),
            RetryCondition::Status(503),
        ]
    );
}

#[test]
fn a_go_loom_backoff_bound_left_out_takes_go_looms_default() {
    let config = load_ok(&with_upstream(
        "    retry:\n      backoff_base: 1s\n      retryable_codes: []\n",
    ));
    let retry = &config.upstreams[0].resilience.retry;
    assert_eq!(retry.backoff_base, Duration::from_secs(1));
    assert_eq!(retry.backoff_max, Duration::from_secs(10));
    // An empty list is Go Loom's default: 502, 503, 504 and the connection failures.
    assert_eq!(retry.retry_on, RetryPolicy::default().retry_on);
}

#[test]
fn retry_settings_under_both_spellings_or_bad_statuses_are_errors() {
    let errors = errors_of(&with_upstream(
        "    retry:\n      retry_on: [\"502\"]\n      retryable_codes: [502]\n      \
         backoff: {base: 10ms}\n      backoff_base: 20ms\n",
    ));
    assert_eq!(
        errors,
        [
            "upstreams[0].retry.retryable_codes: give either retry_on or retryable_codes \
             (Go Loom's spelling), not both",
            "upstreams[0].retry.backoff_base: give either backoff.base or backoff_base \
             (Go Loom's spelling), not both",
        ]
    );
    let errors = errors_of(&with_upstream(
        "    retry:\n      retryable_codes: [503, 700]\n      backoff_base: 2s\n      \
         backoff_max: 1s\n",
    ));
    assert_eq!(
        errors,
        [
            "upstreams[0].retry.retryable_codes[1]: 700 is not an HTTP status (100 to 599)",
            "upstreams[0].retry.backoff_max: must not be smaller than backoff_base",
        ]
    );
}

#[test]
fn go_loom_consistent_hash_sets_the_key_source_and_the_points_per_endpoint() {
    let config = load_ok(
        r#"
listeners:
  - {name: http, address: "127.0.0.1:18080"}
upstreams:
  - name: by-header
    endpoints: ["127.0.0.1:3001", "127.0.0.1:3002"]
    load_balancer: consistent_hash
    consistent_hash: {hash_key: X-User-ID, replicas: 500}
  - name: by-cookie
    endpoints: ["127.0.0.1:3001"]
    load_balancer: consistent_hash
    consistent_hash: {hash_key: "Cookie:session"}
  - name: by-client
    endpoints: ["127.0.0.1:3001"]
    load_balancer: consistent_hash
    consistent_hash: {hash_key: "", replicas: 150}
"#,
    );
    let settings: Vec<(Option<HashKeySource>, u32)> = config
        .upstreams
        .iter()
        .map(|upstream| (upstream.hash_key.clone(), upstream.ring_weight_multiplier))
        .collect();
    // 500 replicas: 3 x 160 = 480 points per endpoint; 150: one unit of weight, 160 points.
    assert_eq!(
        settings,
        [
            (Some(HashKeySource::Header("x-user-id".to_string())), 3),
            (Some(HashKeySource::Cookie("session".to_string())), 1),
            (Some(HashKeySource::ClientIp), 1),
        ]
    );
}

#[test]
fn go_loom_consistent_hash_with_another_algorithm_or_hash_on_is_an_error() {
    let errors = errors_of(
        r#"
listeners:
  - {name: http, address: "127.0.0.1:18080"}
upstreams:
  - name: round-robin
    endpoints: ["127.0.0.1:3001"]
    consistent_hash: {hash_key: X-User-ID}
  - name: both
    endpoints: ["127.0.0.1:3001"]
    load_balancer: consistent_hash
    hash_on: header:x-user-id
    consistent_hash: {hash_key: X-User-ID}
  - name: too-many
    endpoints: ["127.0.0.1:3001"]
    load_balancer: consistent_hash
    consistent_hash: {replicas: 20000}
  - name: no-cookie-name
    endpoints: ["127.0.0.1:3001"]
    load_balancer: consistent_hash
    consistent_hash: {hash_key: "Cookie:"}
"#,
    );
    assert_eq!(
        errors,
        [
            "upstreams[0].consistent_hash: consistent_hash only applies to load_balancer: \
             consistent_hash",
            "upstreams[1].consistent_hash.hash_key: give either hash_on or \
             consistent_hash.hash_key (Go Loom's spelling), not both",
            "upstreams[2].consistent_hash.replicas: must be at most 16000",
            "upstreams[3].consistent_hash.hash_key: \"Cookie:\" names no cookie; use Cookie:<name>",
        ]
    );
}

#[test]
fn go_loom_bulkhead_sets_the_limit_the_queue_bound_and_the_wait() {
    let config = load_ok(
        r#"
listeners:
  - {name: http, address: "127.0.0.1:18080"}
upstreams:
  - name: full
    endpoints: ["127.0.0.1:3001"]
    bulkhead: {enabled: true, max_concurrent: 10, queue_size: 5, timeout: 2s}
  - name: defaults
    endpoints: ["127.0.0.1:3001"]
    bulkhead: {enabled: true}
  - name: waits-until-free
    endpoints: ["127.0.0.1:3001"]
    bulkhead: {enabled: true, queue_size: 3}
  - name: switched-off
    endpoints: ["127.0.0.1:3001"]
    bulkhead: {enabled: false, max_concurrent: 10}
"#,
    );
    let plans: Vec<(Option<u32>, Duration, Option<u32>)> = config
        .upstreams
        .iter()
        .map(|upstream| {
            let bulkhead = &upstream.resilience.bulkhead;
            (
                bulkhead.max_concurrent_requests,
                bulkhead.queue_timeout,
                bulkhead.max_waiting,
            )
        })
        .collect();
    assert_eq!(
        plans,
        [
            (Some(10), Duration::from_secs(2), Some(5)),
            (Some(100), Duration::ZERO, Some(0)),
            (Some(100), Duration::MAX, Some(3)),
            (None, Duration::ZERO, None),
        ]
    );
}

#[test]
fn a_bulkhead_under_both_spellings_is_an_error() {
    let errors = errors_of(&with_upstream(
        "    max_concurrent_requests: 5\n    bulkhead: {enabled: true, max_concurrent: 5}\n",
    ));
    assert_eq!(
        errors,
        [
            "upstreams[0].bulkhead: give either max_concurrent_requests or bulkhead \
             (Go Loom's spelling), not both"
        ]
    );
}

#[test]
fn go_loom_dns_discovery_records_its_interval_and_takes_service_name_addresses_as_endpoints() {
    let config = load_ok(
        r#"
listeners:
  - {name: http, address: "127.0.0.1:18080"}
upstreams:
  - name: by-endpoint
    endpoints: ["localhost:3001"]
    service_discovery: {enabled: true, provider: dns, refresh_interval: 5s}
  - name: by-service
    # Only the port of the listed endpoint is used: the name is never resolved.
    endpoints: ["placeholder.invalid:3002"]
    service_discovery: {enabled: true, provider: dns, service_name: localhost}
  - name: switched-off
    endpoints: ["127.0.0.1:3003"]
    service_discovery: {enabled: false, provider: consul}
"#,
    );
    let upstreams = &config.upstreams;
    assert_eq!(
        upstreams[0].discovery,
        Some(DiscoveryPlan {
            refresh_interval: Duration::from_secs(5),
            service: None,
        })
    );
    assert_eq!(
        upstreams[1].discovery,
        Some(DiscoveryPlan {
            refresh_interval: Duration::from_secs(30),
            service: Some(DiscoveredService {
                name: "localhost".to_string(),
                port: 3002,
            }),
        })
    );
    let endpoints: Vec<(&str, String, u32, &str)> = upstreams[1]
        .endpoints
        .iter()
        .map(|endpoint| {
            (
                endpoint.address.as_str(),
                endpoint.socket.to_string(),
                endpoint.weight,
                endpoint.host.as_str(),
            )
        })
        .collect();
    assert_eq!(
        endpoints,
        [(
            "127.0.0.1:3002",
            "127.0.0.1:3002".to_string(),
            1,
            "localhost"
        )]
    );
    assert_eq!(upstreams[2].discovery, None);
}

#[test]
fn discovery_providers_other_than_dns_are_refused() {
    let errors = errors_of(
        r#"
listeners:
  - {name: http, address: "127.0.0.1:18080"}
upstreams:
  - name: consul
    endpoints: ["127.0.0.1:3001"]
    service_discovery: {enabled: true, provider: consul}
  - name: kubernetes
    endpoints: ["127.0.0.1:3001"]
    service_discovery: {enabled: true, provider: kubernetes}
  - name: never
    endpoints: ["127.0.0.1:3001"]
    service_discovery: {enabled: true, provider: dns, refresh_interval: 0s}
"#,
    );
    assert_eq!(
        errors,
        [
            "upstreams[0].service_discovery.provider: service discovery provider \"consul\" is \
             not supported yet (dns is)",
            "upstreams[1].service_discovery.provider: service discovery provider \"kubernetes\" \
             is not supported yet (dns is)",
            "upstreams[2].service_discovery.refresh_interval: must be greater than zero",
        ]
    );
}

#[test]
fn resolved_addresses_keep_ipv4_when_there_is_any_sorted_and_once_each() {
    let parse = |text: &str| -> std::net::SocketAddr {
        match text.parse() {
            Ok(address) => address,
            Err(error) => panic!("{text}: {error}"),
        }
    };
    let answer = [
        parse("10.0.0.2:80"),
        parse("[::1]:80"),
        parse("10.0.0.1:80"),
        parse("10.0.0.2:80"),
    ];
    assert_eq!(
        super::validate::preferred_addresses(answer),
        [parse("10.0.0.1:80"), parse("10.0.0.2:80")]
    );
    assert_eq!(
        super::validate::preferred_addresses([parse("[::2]:80"), parse("[::1]:80")]),
        [parse("[::1]:80"), parse("[::2]:80")]
    );
}

#[test]
fn go_loom_plugin_timeout_and_memory_limit_become_plan_limits() {
    let directory = match tempfile::tempdir() {
        Ok(directory) => directory,
        Err(error) => panic!("no temporary directory: {error}"),
    };
    // Validation only checks that the module file is there; compiling it is the registry's job.
    if let Err(error) = std::fs::write(directory.path().join("plugin.wasm"), b"\0asm") {
        panic!("cannot write the module: {error}");
    }
    let config_file = directory.path().join("loom.yaml");
    let text = r#"
listeners:
  - {name: http, address: "127.0.0.1:18080"}
plugins:
  - name: slow
    path: plugin.wasm
    phase: on_request_headers
    priority: 10
    config: {header: x-api-key}
    memory_limit: 16MB
    timeout: 50ms
"#;
    let config = match load_at(&config_file, text) {
        Ok(config) => config,
        Err(errors) => panic!("config refused:\n{}", errors.join("\n")),
    };
    let plan = &config.plugins.plugins[0];
    assert_eq!(plan.timeout, Some(Duration::from_millis(50)));
    assert_eq!(plan.memory_limit_pages, 256);
    let errors = match load_at(&config_file, &text.replace("50ms", "0s")) {
        Ok(_) => panic!("a zero timeout was accepted"),
        Err(errors) => errors,
    };
    assert_eq!(errors, ["plugins[0].timeout: must be greater than zero"]);
}

/// SHA-256 of "secret" in hex, as Go Loom's `admin.auth.users` holds passwords.
const SECRET_DIGEST: &str = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b";

#[test]
fn go_loom_admin_auth_loads_its_users_and_refuses_other_hashes() {
    let config = load_ok(&format!(
        r#"
listeners:
  - {{name: http, address: "127.0.0.1:18080"}}
admin:
  address: "127.0.0.1:19091"
  enabled: true
  auth:
    enabled: true
    realm: Loom
    users:
      admin: {SECRET_DIGEST}
"#
    ));
    let auth = match &config.admin_auth {
        Some(auth) => auth,
        None => panic!("admin.auth did not make a plan"),
    };
    assert_eq!(auth.challenge(), "Basic realm=\"Loom\"");
    // admin:secret
    let credentials = http::HeaderValue::from_static("Basic YWRtaW46c2VjcmV0");
    assert!(auth.admits(Some(&credentials)));

    let errors = errors_of(
        r#"
listeners:
  - {name: http, address: "127.0.0.1:18080"}
admin:
  auth:
    enabled: true
    users:
      admin: "$2a$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy"
"#,
    );
    assert_eq!(
        errors,
        [
            "admin.auth.users.admin: must be the SHA-256 digest of the password as 64 \
             hexadecimal characters (printf %s PASSWORD | sha256sum); bcrypt and other hashes \
             are not supported"
        ]
    );
    let errors = errors_of(
        "listeners:\n  - {name: http, address: \"127.0.0.1:18080\"}\nadmin:\n  auth: \
         {enabled: true}\n",
    );
    assert_eq!(
        errors,
        ["admin.auth.users: at least one user is needed when auth is enabled"]
    );
    // Switched off, the section loads and the admin API stays open.
    let config = load_ok(
        "listeners:\n  - {name: http, address: \"127.0.0.1:18080\"}\nadmin:\n  auth: \
         {enabled: false, users: {admin: not-a-digest}}\n",
    );
    assert!(config.admin_auth.is_none());
}

/// `tests/fixtures/go-loom.yaml` uses every Go Loom key Loom gives a meaning to. Its plugin
/// comes from plugins/dist, which only exists after plugins/build.sh, so `plugin_dir` is
/// pointed at a stand-in module here (validation does not compile it; `loom -t` on the
/// fixture, in the CLI tests, does).
#[test]
fn the_go_loom_fixture_loads_with_each_key_meaning_what_it_means_in_go_loom() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/go-loom.yaml");
    let plugin_dir = match tempfile::tempdir() {
        Ok(directory) => directory,
        Err(error) => panic!("no temporary directory: {error}"),
    };
    if let Err(error) = std::fs::write(plugin_dir.path().join("loom_headers.wasm"), b"\0asm") {
        panic!("cannot write the stand-in module: {error}");
    }
    let original = include_str!("../../tests/fixtures/go-loom.yaml");
    let text = original.replace(
        "plugin_dir: ../../plugins/dist",
        &format!("plugin_dir: \"{}\"", plugin_dir.path().display()),
    );
    assert_ne!(
        text, original,
        "the fixture no longer takes its plugin from plugins/dist"
    );
    let config = match load_at(&fixture, &text) {
        Ok(config) => config,
        Err(errors) => panic!("the fixture was refused:\n{}", errors.join("\n")),
    };

    let listeners: Vec<(&str, &str, bool)> = config
        .listeners
        .iter()
        .map(|listener| {
            (
                listener.name.as_str(),
                listener.protocol.as_str(),
                listener.protocol.accepts_h2c(),
            )
        })
        .collect();
    assert_eq!(
        listeners,
        [
            ("http", "http", false),
            ("h2c", "h2c", true),
            ("grpc", "grpc", true),
            ("grpcs", "grpcs", false),
        ]
    );
    let (cert, key) = config.listeners[3].tls.clone().unwrap_or_default();
    assert!(
        cert.ends_with("tests/fixtures/localhost.crt")
            && key.ends_with("tests/fixtures/localhost.key"),
        "{cert} {key}"
    );

    let users = &config.upstreams[0];
    assert_eq!(
        users.hash_key,
        Some(HashKeySource::Header("x-user-id".to_string()))
    );
    // 150 replicas: one unit of weight, 160 points per endpoint.
    assert_eq!(users.ring_weight_multiplier, 1);
    let retry = &users.resilience.retry;
    assert_eq!(
        (retry.max_retries, retry.backoff_base, retry.backoff_max),
        (3, Duration::from_millis(100), Duration::from_secs(2))
    );
    // 502, 503 and 504 on top of the connection failures: Loom's default list.
    assert_eq!(retry.retry_on, RetryPolicy::default().retry_on);
    let bulkhead = &users.resilience.bulkhead;
    assert_eq!(
        (
            bulkhead.max_concurrent_requests,
            bulkhead.queue_timeout,
            bulkhead.max_waiting
        ),
        (Some(100), Duration::from_secs(5), Some(10))
    );
    assert_eq!(
        users.discovery,
        Some(DiscoveryPlan {
            refresh_interval: Duration::from_secs(30),
            service: None,
        })
    );
    let breaker = users.resilience.breaker.as_ref().map(|(settings, _)| {
        (
            settings.failure_threshold,
            settings.success_threshold,
            settings.open_timeout,
        )
    });
    assert_eq!(breaker, Some((5, 2, Duration::from_secs(30))));
    assert!(users.health.is_some());
    let sessions = &config.upstreams[1];
    assert_eq!(
        sessions.hash_key,
        Some(HashKeySource::Cookie("session".to_string()))
    );
    assert_eq!(sessions.ring_weight_multiplier, 3);
    assert_eq!(sessions.discovery, None);

    let plugin = &config.plugins.plugins[0];
    assert_eq!(
        (plugin.timeout, plugin.memory_limit_pages),
        (Some(Duration::from_millis(50)), 256)
    );
    // The top-level cors section applies to every route, before the route's own plugins.
    let chain: Vec<String> = config.routes[0]
        .chain
        .iter()
        .map(|entry| match entry {
            ChainEntry::Policy(step) => step.policy.kind().to_string(),
            ChainEntry::Wasm(name) => format!("wasm {name}"),
        })
        .collect();
    assert_eq!(chain, ["cors", "wasm headers"]);

    let auth = match &config.admin_auth {
        Some(auth) => auth,
        None => panic!("admin.auth did not make a plan"),
    };
    assert_eq!(auth.challenge(), "Basic realm=\"Loom Admin\"");
    // admin:secret
    let credentials = http::HeaderValue::from_static("Basic YWRtaW46c2VjcmV0");
    assert!(auth.admits(Some(&credentials)));

    // Go Loom features Loom has not built load switched off.
    let file = &config.file;
    assert!(
        file.rate_limit
            .as_ref()
            .is_some_and(|section| !section.enabled)
    );
    assert!(
        file.tracing
            .as_ref()
            .is_some_and(|section| !section.enabled)
    );
    assert!(file.cache.as_ref().is_some_and(|section| !section.enabled));
    assert!(
        file.metrics
            .opentelemetry
            .as_ref()
            .is_some_and(|section| !section.enabled)
    );
}

#[test]
fn settings_that_would_be_ignored_are_errors() {
    // A wait bound without a queue bounds nothing.
    let errors = errors_of(&with_upstream(
        "    bulkhead: {enabled: true, max_concurrent: 2, timeout: 5s}\n",
    ));
    assert!(
        errors
            .iter()
            .any(|error| error.starts_with("upstreams[0].bulkhead.timeout:")),
        "{errors:?}"
    );
    // With service_name the name's addresses replace the endpoints: a second one, or a
    // weight, would be ignored.
    let text = "listeners:\n  - name: http\n    address: \"127.0.0.1:18080\"\nupstreams:\n  \
                - name: backend\n    endpoints: [\"127.0.0.1:3001\", \"127.0.0.1:3002\"]\n    \
                service_discovery: {enabled: true, provider: dns, service_name: localhost}\n";
    let errors = errors_of(text);
    assert!(
        errors
            .iter()
            .any(|error| error.starts_with("upstreams[0].service_discovery.service_name:")),
        "{errors:?}"
    );
}
