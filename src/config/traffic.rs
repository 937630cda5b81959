//! A route's traffic settings beyond its one upstream: `canary:` (a weighted split to other
//! versions, forced by header or cookie, sticky, rolled back automatically) and `shadow:`
//! (a mirrored share sent to another upstream, its answers compared with the primary's).
//! The schema is what users write; the plans are what [`crate::traffic`] runs.

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;

use super::schema::RouteConfig;
use super::units::{DurationValue, SizeValue};
use super::validate::{Checker, EffectiveTimeouts, UpstreamPlan};

/// The cookie that keeps a client on its version when `sticky` is on and none is named.
pub const DEFAULT_STICKY_COOKIE: &str = "loom_canary";
const DEFAULT_STICKY_TTL: Duration = Duration::from_secs(24 * 3600);
const DEFAULT_ROLLBACK_WINDOW: Duration = Duration::from_secs(30);
const DEFAULT_ROLLBACK_MIN_REQUESTS: u64 = 20;
const DEFAULT_SHADOW_HEADER: &str = "x-shadow";
const DEFAULT_SHADOW_MAX_BODY: u64 = 64 * 1024;
const DEFAULT_SHADOW_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_SHADOW_MAX_IN_FLIGHT: u32 = 64;
const DEFAULT_COMPARE_MAX_BODY: u64 = 1024 * 1024;
const DEFAULT_KEEP_DIFFS: usize = 20;
/// Weights are percentages of the route's traffic.
pub const TOTAL_WEIGHT: u32 = 100;

/// `canary:` on a route (Go Loom's canary deployment: targets, sticky, header match).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct CanaryConfig {
    /// The new versions, each with its percentage of the route's requests; the route's
    /// `upstream` (the stable version) gets what they leave.
    pub targets: Vec<CanaryTargetConfig>,
    /// Requests that match one of these go to its upstream whatever the weights say.
    #[serde(default)]
    pub force: Vec<ForceRuleConfig>,
    /// Keep a client on the version it first got, with a cookie (Go Loom's `sticky`).
    #[serde(default)]
    pub sticky: bool,
    #[serde(default)]
    pub sticky_cookie: Option<String>,
    #[serde(default)]
    pub sticky_ttl: Option<DurationValue>,
    /// Keep a client on its version by a hash of `client_ip`, `header:<name>` or
    /// `cookie:<name>` instead of a cookie of ours.
    #[serde(default)]
    pub sticky_hash: Option<String>,
    /// Take the canary out of rotation when it does worse than the stable version.
    #[serde(default)]
    pub rollback: Option<RollbackConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct CanaryTargetConfig {
    pub upstream: String,
    pub weight: u32,
}

/// `X-Canary: true` or `Cookie: canary=always` forcing a version.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ForceRuleConfig {
    #[serde(default)]
    pub header: Option<String>,
    #[serde(default)]
    pub cookie: Option<String>,
    /// The value that forces; any value when left out.
    #[serde(default)]
    pub value: Option<String>,
    /// Where the request goes: a target's upstream or the route's own; default the first
    /// target.
    #[serde(default)]
    pub upstream: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RollbackConfig {
    /// Each window is judged on its own requests (default 30s).
    #[serde(default)]
    pub window: Option<DurationValue>,
    /// Requests each side needs in a window before it is judged (default 20).
    #[serde(default)]
    pub min_requests: Option<u64>,
    /// Roll back when the canary's share of 5xx answers exceeds the stable version's by more
    /// than this (0.05: five percentage points).
    #[serde(default)]
    pub max_error_rate_increase: Option<f64>,
    /// Roll back when the canary's p99 latency exceeds the stable version's by more than this.
    #[serde(default)]
    pub max_p99_increase: Option<DurationValue>,
}

/// `shadow:` on a route.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ShadowConfig {
    pub upstream: String,
    /// Share of the route's requests mirrored, 0 to 100 (default 100).
    #[serde(default)]
    pub percentage: Option<f64>,
    /// Requests with a larger body are not mirrored (default 64KB).
    #[serde(default)]
    pub max_body: Option<SizeValue>,
    /// Added to mirrored requests with the value `true` (default `X-Shadow`).
    #[serde(default)]
    pub header: Option<String>,
    /// Longest wait for the shadow's answer (default 5s).
    #[serde(default)]
    pub timeout: Option<DurationValue>,
    /// Mirrored requests in flight at once; more are dropped and counted (default 64).
    #[serde(default)]
    pub max_in_flight: Option<u32>,
    #[serde(default)]
    pub compare: Option<CompareConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct CompareConfig {
    /// Compare the statuses (default true).
    #[serde(default)]
    pub status: Option<bool>,
    /// Response headers compared by value.
    #[serde(default)]
    pub headers: Vec<String>,
    /// `exact`, `json` (parsed, object key order ignored) or `none` (default `exact`).
    #[serde(default)]
    pub body: Option<String>,
    /// JSON fields left out of the comparison, as dotted paths (`meta.timestamp`); a `*`
    /// segment matches every key or array element.
    #[serde(default)]
    pub ignore_fields: Vec<String>,
    /// Bodies longer than this are compared by status and headers only (default 1MB).
    #[serde(default)]
    pub max_body: Option<SizeValue>,
    /// Mismatches kept for `GET /routes/{id}/shadow/diffs` (default 20).
    #[serde(default)]
    pub keep_diffs: Option<usize>,
}

/// Where a route's requests may go besides its own upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct CanaryPlan {
    pub targets: Vec<CanaryTargetPlan>,
    pub force: Vec<ForceRule>,
    pub stickiness: Stickiness,
    pub rollback: Option<RollbackPlan>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CanaryTargetPlan {
    pub upstream_index: usize,
    pub weight: u32,
    /// The route's timeouts over this upstream's own.
    pub timeouts: EffectiveTimeouts,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ForceSource {
    /// Lowercase header name.
    Header(String),
    Cookie(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ForceRule {
    pub source: ForceSource,
    pub value: Option<String>,
    /// 0 is the route's own upstream, `n` the n-th target.
    pub target: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Stickiness {
    None,
    Cookie { name: String, ttl: Duration },
    Hash(ForceSourceOrIp),
}

/// What a sticky hash is taken of.
#[derive(Debug, Clone, PartialEq)]
pub enum ForceSourceOrIp {
    ClientIp,
    Request(ForceSource),
}

#[derive(Debug, Clone, PartialEq)]
pub struct RollbackPlan {
    pub window: Duration,
    pub min_requests: u64,
    pub max_error_rate_increase: Option<f64>,
    pub max_p99_increase: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ShadowPlan {
    pub upstream_index: usize,
    /// Out of 1,000,000, so the sampling is an integer comparison.
    pub per_million: u32,
    pub max_body: u64,
    pub header: http::HeaderName,
    pub timeout: Duration,
    pub max_in_flight: u32,
    pub compare: Option<ComparePlan>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyComparison {
    None,
    Exact,
    Json,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ComparePlan {
    pub status: bool,
    pub headers: Vec<http::HeaderName>,
    pub body: BodyComparison,
    /// Dotted paths, split.
    pub ignore_fields: Vec<Vec<String>>,
    pub max_body: u64,
    pub keep_diffs: usize,
}

/// Validates a route's `canary:` against the upstreams; `timeouts` computes a target's
/// timeouts from its upstream.
pub(crate) fn canary_plan(
    checker: &mut Checker,
    key: &str,
    route: &RouteConfig,
    config: &CanaryConfig,
    upstream_by_name: &HashMap<&str, usize>,
    timeouts: impl Fn(&UpstreamPlan) -> EffectiveTimeouts,
    upstreams: &[UpstreamPlan],
) -> CanaryPlan {
    let key = format!("{key}.canary");
    let mut targets = Vec::new();
    let mut total = 0u32;
    if config.targets.is_empty() {
        checker.error(
            format!("{key}.targets"),
            "name at least one target (an upstream and its weight in percent)",
        );
    }
    for (index, target) in config.targets.iter().enumerate() {
        let target_key = format!("{key}.targets[{index}]");
        if target.upstream == route.upstream {
            checker.error(
                format!("{target_key}.upstream"),
                format!(
                    "\"{}\" is the route's own upstream (the stable version, which gets the \
                     weight the targets leave); name another upstream",
                    target.upstream
                ),
            );
        }
        if config.targets[..index]
            .iter()
            .any(|earlier| earlier.upstream == target.upstream)
        {
            checker.error(
                format!("{target_key}.upstream"),
                format!("\"{}\" is listed twice", target.upstream),
            );
        }
        if target.weight > TOTAL_WEIGHT {
            checker.error(
                format!("{target_key}.weight"),
                format!("weights are percentages: {} is over 100", target.weight),
            );
        }
        total = total.saturating_add(target.weight);
        match upstream_by_name.get(target.upstream.as_str()) {
            Some(&upstream_index) => targets.push(CanaryTargetPlan {
                upstream_index,
                weight: target.weight.min(TOTAL_WEIGHT),
                timeouts: timeouts(&upstreams[upstream_index]),
            }),
            None => checker.error(
                format!("{target_key}.upstream"),
                format!("unknown upstream \"{}\"", target.upstream),
            ),
        }
    }
    if total > TOTAL_WEIGHT {
        checker.error(
            format!("{key}.targets"),
            format!("the weights add up to {total}: at most 100 (percent) can go to the targets"),
        );
    }
    let target_index = |name: &str| -> Option<usize> {
        if name == route.upstream {
            return Some(0);
        }
        config
            .targets
            .iter()
            .position(|target| target.upstream == name)
            .map(|position| position + 1)
    };
    let mut force = Vec::new();
    for (index, rule) in config.force.iter().enumerate() {
        let rule_key = format!("{key}.force[{index}]");
        let source = match (&rule.header, &rule.cookie) {
            (Some(header), None) => match http::HeaderName::from_bytes(header.as_bytes()) {
                Ok(name) => ForceSource::Header(name.as_str().to_string()),
                Err(_) => {
                    checker.error(
                        format!("{rule_key}.header"),
                        format!("\"{header}\" is not a header name"),
                    );
                    continue;
                }
            },
            (None, Some(cookie)) if !cookie.is_empty() => ForceSource::Cookie(cookie.clone()),
            _ => {
                checker.error(rule_key, "name exactly one of header and cookie");
                continue;
            }
        };
        let target = match &rule.upstream {
            None => 1,
            Some(name) => match target_index(name) {
                Some(target) => target,
                None => {
                    checker.error(
                        format!("{rule_key}.upstream"),
                        format!(
                            "\"{name}\" is neither the route's upstream nor one of its canary \
                             targets"
                        ),
                    );
                    continue;
                }
            },
        };
        force.push(ForceRule {
            source,
            value: rule.value.clone(),
            target,
        });
    }
    let stickiness = stickiness(checker, &key, config);
    let rollback = config.rollback.as_ref().and_then(|rollback| {
        let rollback_key = format!("{key}.rollback");
        if rollback.max_error_rate_increase.is_none() && rollback.max_p99_increase.is_none() {
            checker.error(
                rollback_key.clone(),
                "set max_error_rate_increase, max_p99_increase or both: without either \
                 nothing can trigger a rollback",
            );
            return None;
        }
        if let Some(increase) = rollback.max_error_rate_increase
            && !(0.0..1.0).contains(&increase)
        {
            checker.error(
                format!("{rollback_key}.max_error_rate_increase"),
                "a share of requests: at least 0 and below 1 (0.05 is five percentage points)",
            );
        }
        let window = rollback
            .window
            .map_or(DEFAULT_ROLLBACK_WINDOW, |value| value.0);
        if window < Duration::from_secs(1) {
            checker.error(format!("{rollback_key}.window"), "at least 1s");
        }
        let min_requests = rollback
            .min_requests
            .unwrap_or(DEFAULT_ROLLBACK_MIN_REQUESTS);
        if min_requests == 0 {
            checker.error(
                format!("{rollback_key}.min_requests"),
                "at least 1: a window without requests says nothing",
            );
        }
        Some(RollbackPlan {
            window,
            min_requests,
            max_error_rate_increase: rollback.max_error_rate_increase,
            max_p99_increase: rollback.max_p99_increase.map(|value| value.0),
        })
    });
    CanaryPlan {
        targets,
        force,
        stickiness,
        rollback,
    }
}

fn stickiness(checker: &mut Checker, key: &str, config: &CanaryConfig) -> Stickiness {
    if let Some(hash) = &config.sticky_hash {
        if config.sticky_cookie.is_some() || config.sticky_ttl.is_some() {
            checker.error(
                format!("{key}.sticky_hash"),
                "a client is kept on its version either by our cookie (sticky_cookie, \
                 sticky_ttl) or by a hash (sticky_hash), not both",
            );
        }
        let source = match hash.split_once(':') {
            None if hash == "client_ip" => Some(ForceSourceOrIp::ClientIp),
            Some(("header", name)) => {
                http::HeaderName::from_bytes(name.as_bytes())
                    .ok()
                    .map(|name| {
                        ForceSourceOrIp::Request(ForceSource::Header(name.as_str().to_string()))
                    })
            }
            Some(("cookie", name)) if !name.is_empty() => Some(ForceSourceOrIp::Request(
                ForceSource::Cookie(name.to_string()),
            )),
            _ => None,
        };
        return match source {
            Some(source) => Stickiness::Hash(source),
            None => {
                checker.error(
                    format!("{key}.sticky_hash"),
                    format!("\"{hash}\" is not one of client_ip, header:<name> or cookie:<name>"),
                );
                Stickiness::None
            }
        };
    }
    let named = config.sticky_cookie.is_some() || config.sticky_ttl.is_some();
    if !config.sticky && !named {
        return Stickiness::None;
    }
    if named && !config.sticky {
        checker.error(
            format!("{key}.sticky"),
            "sticky_cookie and sticky_ttl need sticky: true",
        );
    }
    let name = config
        .sticky_cookie
        .clone()
        .unwrap_or_else(|| DEFAULT_STICKY_COOKIE.to_string());
    let valid_name = !name.is_empty()
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte));
    if !valid_name {
        checker.error(
            format!("{key}.sticky_cookie"),
            format!("\"{name}\" is not a cookie name"),
        );
    }
    let ttl = config
        .sticky_ttl
        .map_or(DEFAULT_STICKY_TTL, |value| value.0);
    if ttl.as_secs() == 0 {
        checker.error(format!("{key}.sticky_ttl"), "at least 1s");
    }
    Stickiness::Cookie { name, ttl }
}

/// Validates a route's `shadow:`. `canary` lists the route's other upstreams, which the
/// shadow must not be either.
pub(crate) fn shadow_plan(
    checker: &mut Checker,
    key: &str,
    route: &RouteConfig,
    config: &ShadowConfig,
    upstream_by_name: &HashMap<&str, usize>,
) -> Option<ShadowPlan> {
    let key = format!("{key}.shadow");
    let serving = std::iter::once(route.upstream.as_str()).chain(
        route
            .canary
            .iter()
            .flat_map(|canary| canary.targets.iter().map(|target| target.upstream.as_str())),
    );
    let mut valid = true;
    if serving.clone().any(|name| name == config.upstream) {
        checker.error(
            format!("{key}.upstream"),
            format!(
                "\"{}\" already serves this route's requests: a shadow must be another \
                 upstream, or every mirrored request would hit it twice",
                config.upstream
            ),
        );
        valid = false;
    }
    let upstream_index = upstream_by_name.get(config.upstream.as_str()).copied();
    if upstream_index.is_none() {
        checker.error(
            format!("{key}.upstream"),
            format!("unknown upstream \"{}\"", config.upstream),
        );
    }
    let percentage = config.percentage.unwrap_or(100.0);
    if !(0.0..=100.0).contains(&percentage) {
        checker.error(format!("{key}.percentage"), "from 0 to 100");
        valid = false;
    }
    let header_text = config.header.as_deref().unwrap_or(DEFAULT_SHADOW_HEADER);
    let header = match http::HeaderName::from_bytes(header_text.as_bytes()) {
        Ok(header) => Some(header),
        Err(_) => {
            checker.error(
                format!("{key}.header"),
                format!("\"{header_text}\" is not a header name"),
            );
            None
        }
    };
    let max_in_flight = config.max_in_flight.unwrap_or(DEFAULT_SHADOW_MAX_IN_FLIGHT);
    if max_in_flight == 0 {
        checker.error(
            format!("{key}.max_in_flight"),
            "at least 1 (set percentage: 0 to mirror nothing)",
        );
    }
    let timeout = config
        .timeout
        .map_or(DEFAULT_SHADOW_TIMEOUT, |value| value.0);
    if timeout.is_zero() {
        checker.error(format!("{key}.timeout"), "must be greater than zero");
    }
    let compare = config
        .compare
        .as_ref()
        .and_then(|compare| compare_plan(checker, &key, compare));
    Some(ShadowPlan {
        upstream_index: upstream_index?,
        per_million: (percentage * 10_000.0).round() as u32,
        max_body: config
            .max_body
            .map_or(DEFAULT_SHADOW_MAX_BODY, |value| value.0),
        header: header?,
        timeout,
        max_in_flight,
        compare,
    })
    .filter(|_| valid)
}

fn compare_plan(checker: &mut Checker, key: &str, config: &CompareConfig) -> Option<ComparePlan> {
    let key = format!("{key}.compare");
    let body = match config.body.as_deref().unwrap_or("exact") {
        "exact" => BodyComparison::Exact,
        "json" => BodyComparison::Json,
        "none" => BodyComparison::None,
        other => {
            checker.error(
                format!("{key}.body"),
                format!("\"{other}\" is not one of exact, json, none"),
            );
            return None;
        }
    };
    if !config.ignore_fields.is_empty() && body != BodyComparison::Json {
        checker.error(
            format!("{key}.ignore_fields"),
            "fields are ignored in JSON bodies only: set body: json",
        );
    }
    let mut headers = Vec::new();
    for (index, name) in config.headers.iter().enumerate() {
        match http::HeaderName::from_bytes(name.as_bytes()) {
            Ok(header) => headers.push(header),
            Err(_) => checker.error(
                format!("{key}.headers[{index}]"),
                format!("\"{name}\" is not a header name"),
            ),
        }
    }
    let mut ignore_fields = Vec::new();
    for (index, field) in config.ignore_fields.iter().enumerate() {
        let path: Vec<String> = field.split('.').map(str::to_string).collect();
        if path.iter().any(String::is_empty) {
            checker.error(
                format!("{key}.ignore_fields[{index}]"),
                format!("\"{field}\" is not a dotted path (meta.timestamp, items.*.id)"),
            );
        }
        ignore_fields.push(path);
    }
    let keep_diffs = config.keep_diffs.unwrap_or(DEFAULT_KEEP_DIFFS);
    if keep_diffs > 1000 {
        checker.error(
            format!("{key}.keep_diffs"),
            "at most 1000: each keeps a request's bodies",
        );
    }
    Some(ComparePlan {
        status: config.status.unwrap_or(true),
        headers,
        body,
        ignore_fields,
        max_body: config
            .max_body
            .map_or(DEFAULT_COMPARE_MAX_BODY, |value| value.0),
        keep_diffs,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Three upstreams (v1, v2, v3) and one route on v1 with `route_keys` (indented as its
    /// keys); the errors as `file:line:column: key: message`, or `Ok`.
    fn load(route_keys: &str) -> Result<super::super::validate::ValidatedConfig, Vec<String>> {
        let text = format!(
            "listeners:\n  - name: http\n    address: \"127.0.0.1:18080\"\nupstreams:\n\
             \x20 - name: v1\n    endpoints: [\"127.0.0.1:9001\"]\n\
             \x20 - name: v2\n    endpoints: [\"127.0.0.1:9002\"]\n\
             \x20 - name: v3\n    endpoints: [\"127.0.0.1:9003\"]\n\
             routes:\n  - id: api\n    path: /api\n    upstream: v1\n{route_keys}"
        );
        super::super::load_text(Path::new("traffic-test.yaml"), &text)
            .map_err(|errors| errors.iter().map(ToString::to_string).collect())
    }

    fn errors(route_keys: &str) -> String {
        match load(route_keys) {
            Ok(_) => panic!("accepted:\n{route_keys}"),
            Err(errors) => errors.join("\n"),
        }
    }

    #[test]
    fn a_full_canary_and_shadow_load() {
        let validated = load(
            "    canary:\n      targets:\n        - upstream: v2\n          weight: 10\n\
             \x20     force:\n        - header: X-Canary\n          value: \"true\"\n\
             \x20       - cookie: canary\n          upstream: v1\n\
             \x20     sticky: true\n      sticky_ttl: 1h\n\
             \x20     rollback:\n        window: 10s\n        max_error_rate_increase: 0.05\n        max_p99_increase: 200ms\n\
             \x20   shadow:\n      upstream: v3\n      percentage: 12.5\n      compare:\n        body: json\n        headers: [content-type]\n        ignore_fields: [meta.at]\n",
        )
        .unwrap_or_else(|errors| panic!("{}", errors.join("\n")));
        let route = &validated.routes[0];
        let canary = route.canary.as_ref().unwrap();
        assert_eq!(canary.targets[0].weight, 10);
        assert_eq!(
            canary.force[0].source,
            super::ForceSource::Header("x-canary".into())
        );
        assert_eq!(canary.force[1].target, 0);
        assert_eq!(
            canary.stickiness,
            super::Stickiness::Cookie {
                name: "loom_canary".into(),
                ttl: std::time::Duration::from_secs(3600)
            }
        );
        let shadow = route.shadow.as_ref().unwrap();
        assert_eq!(shadow.per_million, 125_000);
        assert_eq!(shadow.header.as_str(), "x-shadow");
        assert_eq!(
            shadow.compare.as_ref().unwrap().ignore_fields,
            vec![vec!["meta", "at"]]
        );
    }

    #[test]
    fn canary_mistakes_name_their_key_and_line() {
        let found = errors(
            "    canary:\n      targets:\n        - upstream: v1\n          weight: 10\n\
             \x20       - upstream: v2\n          weight: 195\n\
             \x20       - upstream: nowhere\n          weight: 1\n\
             \x20     force:\n        - header: X-Canary\n          cookie: c\n\
             \x20     sticky_hash: ip\n\
             \x20     rollback:\n        window: 10s\n",
        );
        for expected in [
            "traffic-test.yaml:17:21: routes[0].canary.targets[0].upstream: \"v1\" is the route's own upstream",
            "routes[0].canary.targets[1].weight: weights are percentages: 195 is over 100",
            "routes[0].canary.targets[2].upstream: unknown upstream \"nowhere\"",
            "routes[0].canary.targets: the weights add up to 206",
            "routes[0].canary.force[0]: name exactly one of header and cookie",
            "routes[0].canary.sticky_hash: \"ip\" is not one of client_ip",
            "routes[0].canary.rollback: set max_error_rate_increase, max_p99_increase or both",
        ] {
            assert!(
                found.contains(expected),
                "missing {expected:?} in:\n{found}"
            );
        }
    }

    #[test]
    fn a_shadow_must_be_another_upstream() {
        let found = errors(
            "    canary:\n      targets:\n        - upstream: v2\n          weight: 10\n\
             \x20   shadow:\n      upstream: v2\n      percentage: 120\n      compare:\n        body: text\n",
        );
        for expected in [
            "routes[0].shadow.upstream: \"v2\" already serves this route's requests",
            "routes[0].shadow.percentage: from 0 to 100",
            "routes[0].shadow.compare.body: \"text\" is not one of exact, json, none",
        ] {
            assert!(
                found.contains(expected),
                "missing {expected:?} in:\n{found}"
            );
        }
        let unknown_key = errors("    shadow:\n      upstream: v3\n      mirror_percent: 5\n");
        assert!(unknown_key.contains("mirror_percent"), "{unknown_key}");
    }
}
