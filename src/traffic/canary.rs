//! Canary releases: which of a route's upstreams (its own, the stable version, or one of its
//! `canary.targets`) a request goes to.
//!
//! The choice is made once per request, after the route's chain (so a plugin's header can
//! force it), and holds for every retry. In order:
//! 1. a `force` rule whose header or cookie matches names the target;
//! 2. a sticky cookie naming a target that still has weight keeps the client there;
//! 3. otherwise a bucket from 0 to 99 picks by weight: from a hash of the client (IP, header
//!    or cookie) with `sticky_hash`, else at random. Targets take the low buckets in config
//!    order, so raising a canary's weight only moves clients from stable to canary.
//!
//! A target taken out by an automatic rollback ([`super::canary_analysis`]) counts as weight 0
//! until the config's weights change.

use std::net::IpAddr;
use std::sync::Arc;

use pingora::http::RequestHeader;

use super::canary_analysis::CanaryState;
use crate::config::traffic::{
    CanaryPlan, ForceRule, ForceSource, ForceSourceOrIp, Stickiness, TOTAL_WEIGHT,
};
use crate::gateway::headers::cookie_value;

/// A route's canary split, built with each snapshot; its [`CanaryState`] outlives reloads.
pub struct Canary {
    /// Each target's configured weight, the route's own upstream first (it gets the rest).
    pub weights: Vec<u32>,
    /// Upstream names in target order, the route's own first.
    pub names: Vec<Arc<str>>,
    force: Vec<ForceRule>,
    stickiness: Stickiness,
    /// `Set-Cookie` for each target, when stickiness is by cookie.
    set_cookies: Vec<http::HeaderValue>,
    pub state: Arc<CanaryState>,
}

/// Where one request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CanaryChoice {
    /// 0 is the route's own upstream, `n` its n-th canary target.
    pub target: usize,
    /// The client gets a new sticky cookie with the answer.
    pub set_cookie: bool,
}

impl Canary {
    /// `names` are the upstreams, the route's own first; `previous` is the same route's
    /// canary in the snapshot being replaced, whose state carries over when the targets are
    /// the same.
    pub fn new(
        route: &Arc<str>,
        plan: &CanaryPlan,
        names: Vec<Arc<str>>,
        previous: Option<&Canary>,
    ) -> Canary {
        let canary_total: u32 = plan.targets.iter().map(|target| target.weight).sum();
        let mut weights = vec![TOTAL_WEIGHT.saturating_sub(canary_total)];
        weights.extend(plan.targets.iter().map(|target| target.weight));
        let state = match previous {
            Some(previous) if previous.names == names => {
                // A new non-zero weight is a decision taken after a rollback: the rollback is
                // lifted. A weight set to 0 (how a rollback is written to the overlay) keeps
                // it: lifting it here, while the previous snapshot still serves with the
                // old weight, would send that snapshot's requests to the failed canary until
                // the swap.
                for (target, (&new_weight, &old_weight)) in
                    weights.iter().zip(&previous.weights).enumerate().skip(1)
                {
                    if new_weight != old_weight && new_weight > 0 {
                        previous.state.lift_rollback(target);
                    }
                }
                Arc::clone(&previous.state)
            }
            _ => Arc::new(CanaryState::new(route, &names, plan.rollback.clone())),
        };
        state.set_rollback_plan(plan.rollback.clone());
        let set_cookies = match &plan.stickiness {
            Stickiness::Cookie { name, ttl } => names
                .iter()
                .map(|upstream| {
                    let text = format!(
                        "{name}={upstream}; Max-Age={}; Path=/; HttpOnly; SameSite=Lax",
                        ttl.as_secs()
                    );
                    http::HeaderValue::from_str(&text).unwrap_or(http::HeaderValue::from_static(""))
                })
                .collect(),
            _ => Vec::new(),
        };
        let canary = Canary {
            weights,
            names,
            force: plan.force.clone(),
            stickiness: plan.stickiness.clone(),
            set_cookies,
            state,
        };
        canary.publish_weights();
        canary
    }

    /// The weight each target has now: the configured one, or 0 for a canary rolled back.
    pub fn effective_weight(&self, target: usize) -> u32 {
        if target == 0 {
            let canaries: u32 = (1..self.weights.len())
                .map(|target| self.effective_weight(target))
                .sum();
            return TOTAL_WEIGHT.saturating_sub(canaries);
        }
        if self.state.is_rolled_back(target) {
            0
        } else {
            self.weights.get(target).copied().unwrap_or(0)
        }
    }

    /// Sets `loom_canary_weight` to the effective weights.
    pub fn publish_weights(&self) {
        for target in 0..self.weights.len() {
            self.state
                .metrics(target)
                .weight
                .set(i64::from(self.effective_weight(target)));
        }
    }

    /// Chooses the request's target. `client_ip` is needed only for `sticky_hash: client_ip`.
    pub fn choose(&self, request: &RequestHeader, client_ip: Option<IpAddr>) -> CanaryChoice {
        for rule in &self.force {
            let value = match &rule.source {
                ForceSource::Header(name) => request
                    .headers
                    .get(name.as_str())
                    .and_then(|value| value.to_str().ok()),
                ForceSource::Cookie(name) => cookie_value(request, name),
            };
            let matched = value.is_some_and(|value| {
                rule.value
                    .as_deref()
                    .is_none_or(|expected| expected == value)
            });
            if matched {
                return CanaryChoice {
                    target: rule.target,
                    set_cookie: false,
                };
            }
        }
        let bucket = match &self.stickiness {
            Stickiness::None => random_bucket(),
            Stickiness::Cookie { name, .. } => {
                let held = cookie_value(request, name).and_then(|upstream| {
                    self.names
                        .iter()
                        .position(|name| **name == *upstream)
                        .filter(|&target| self.effective_weight(target) > 0)
                });
                if let Some(target) = held {
                    return CanaryChoice {
                        target,
                        set_cookie: false,
                    };
                }
                return CanaryChoice {
                    target: self.target_of_bucket(random_bucket()),
                    set_cookie: true,
                };
            }
            Stickiness::Hash(source) => {
                let key: Option<HashKey> = match source {
                    ForceSourceOrIp::ClientIp => client_ip.map(HashKey::Ip),
                    ForceSourceOrIp::Request(ForceSource::Header(name)) => request
                        .headers
                        .get(name.as_str())
                        .map(|value| HashKey::Text(value.as_bytes())),
                    ForceSourceOrIp::Request(ForceSource::Cookie(name)) => {
                        cookie_value(request, name).map(|value| HashKey::Text(value.as_bytes()))
                    }
                };
                key.map_or_else(random_bucket, |key| key.bucket())
            }
        };
        CanaryChoice {
            target: self.target_of_bucket(bucket),
            set_cookie: false,
        }
    }

    /// The canary targets take buckets from 0 up, in order; the route's own upstream the rest.
    fn target_of_bucket(&self, bucket: u32) -> usize {
        let mut upper = 0;
        for target in 1..self.weights.len() {
            upper += self.effective_weight(target);
            if bucket < upper {
                return target;
            }
        }
        0
    }

    /// The `Set-Cookie` that keeps a client on `target`, when stickiness is by cookie.
    pub fn sticky_cookie(&self, target: usize) -> Option<&http::HeaderValue> {
        self.set_cookies.get(target)
    }

    /// Counts one answered request of `target` for the metrics and the rollback analysis;
    /// it took `elapsed` and ended at `now`.
    pub fn record(
        &self,
        target: usize,
        status: u16,
        elapsed: std::time::Duration,
        now: std::time::Instant,
    ) {
        if self.state.record(target, status, elapsed, now) {
            self.publish_weights();
        }
    }

    /// How the split stands, for the admin API.
    pub fn describe(&self) -> serde_json::Value {
        let targets: Vec<serde_json::Value> = (0..self.weights.len())
            .map(|target| {
                serde_json::json!({
                    "upstream": &*self.names[target],
                    "role": if target == 0 { "stable" } else { "canary" },
                    "configured_weight": self.weights[target],
                    "weight": self.effective_weight(target),
                    "rolled_back": target > 0 && self.state.is_rolled_back(target),
                })
            })
            .collect();
        serde_json::json!({
            "targets": targets,
            "stickiness": match &self.stickiness {
                Stickiness::None => serde_json::Value::Null,
                Stickiness::Cookie { name, ttl } => serde_json::json!({"cookie": name, "ttl_seconds": ttl.as_secs()}),
                Stickiness::Hash(ForceSourceOrIp::ClientIp) => serde_json::json!({"hash": "client_ip"}),
                Stickiness::Hash(ForceSourceOrIp::Request(ForceSource::Header(name))) => serde_json::json!({"hash": format!("header:{name}")}),
                Stickiness::Hash(ForceSourceOrIp::Request(ForceSource::Cookie(name))) => serde_json::json!({"hash": format!("cookie:{name}")}),
            },
            "analysis": self.state.describe(),
        })
    }
}

fn random_bucket() -> u32 {
    fastrand::u32(0..TOTAL_WEIGHT)
}

/// What a sticky hash is taken of.
enum HashKey<'a> {
    Ip(IpAddr),
    Text(&'a [u8]),
}

impl HashKey<'_> {
    /// FNV-1a: the same key gives the same bucket on every instance of a fleet and across
    /// restarts (std's hasher is seeded per process).
    fn bucket(&self) -> u32 {
        let mut octets = [0u8; 16];
        let bytes: &[u8] = match self {
            HashKey::Ip(IpAddr::V4(ip)) => {
                octets[..4].copy_from_slice(&ip.octets());
                &octets[..4]
            }
            HashKey::Ip(IpAddr::V6(ip)) => {
                octets.copy_from_slice(&ip.octets());
                &octets
            }
            HashKey::Text(text) => text,
        };
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in bytes {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        (hash % u64::from(TOTAL_WEIGHT)) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::traffic::{CanaryTargetPlan, RollbackPlan};
    use crate::config::validate::EffectiveTimeouts;
    use std::time::Duration;

    fn plan(weights: &[u32], stickiness: Stickiness, force: Vec<ForceRule>) -> CanaryPlan {
        let timeouts = EffectiveTimeouts {
            connect: Duration::from_secs(1),
            read: Duration::from_secs(1),
            write: Duration::from_secs(1),
            total: None,
        };
        CanaryPlan {
            targets: weights
                .iter()
                .enumerate()
                .map(|(index, weight)| CanaryTargetPlan {
                    upstream_index: index + 1,
                    weight: *weight,
                    timeouts,
                })
                .collect(),
            force,
            stickiness,
            rollback: Some(RollbackPlan {
                window: Duration::from_secs(1),
                min_requests: 1,
                max_error_rate_increase: Some(0.1),
                max_p99_increase: None,
            }),
        }
    }

    fn canary(weights: &[u32], stickiness: Stickiness, force: Vec<ForceRule>) -> Canary {
        let mut names: Vec<Arc<str>> = vec![Arc::from("stable")];
        names.extend((0..weights.len()).map(|index| Arc::from(format!("canary{}", index + 1))));
        Canary::new(
            &Arc::from("unit-route"),
            &plan(weights, stickiness, force),
            names,
            None,
        )
    }

    fn request(headers: &[(&str, &str)]) -> RequestHeader {
        let mut request = RequestHeader::build("GET", b"/", None).unwrap();
        for (name, value) in headers {
            request.append_header(name.to_string(), *value).unwrap();
        }
        request
    }

    #[test]
    fn random_split_follows_the_weights() {
        let canary = canary(&[20], Stickiness::None, Vec::new());
        let to_canary = (0..10_000)
            .filter(|_| canary.choose(&request(&[]), None).target == 1)
            .count();
        assert!((1_700..2_300).contains(&to_canary), "{to_canary}");
    }

    #[test]
    fn raising_a_weight_only_moves_clients_to_the_canary() {
        for key in 0..500u32 {
            let text = format!("user-{key}");
            let low = HashKey::Text(text.as_bytes()).bucket();
            let canary10 = canary(&[10], Stickiness::None, Vec::new());
            let canary30 = canary(&[30], Stickiness::None, Vec::new());
            if canary10.target_of_bucket(low) == 1 {
                assert_eq!(canary30.target_of_bucket(low), 1);
            }
        }
    }

    #[test]
    fn a_force_rule_wins_over_the_weights() {
        let force = vec![ForceRule {
            source: ForceSource::Header("x-canary".into()),
            value: Some("true".into()),
            target: 1,
        }];
        let canary = canary(&[0], Stickiness::None, force);
        assert_eq!(
            canary
                .choose(&request(&[("x-canary", "true")]), None)
                .target,
            1
        );
        assert_eq!(
            canary.choose(&request(&[("x-canary", "no")]), None).target,
            0
        );
        assert_eq!(canary.choose(&request(&[]), None).target, 0);
    }

    #[test]
    fn a_sticky_cookie_holds_until_its_target_loses_its_weight() {
        let stickiness = Stickiness::Cookie {
            name: "v".into(),
            ttl: Duration::from_secs(60),
        };
        let canary = canary(&[50], stickiness, Vec::new());
        let held = canary.choose(&request(&[("cookie", "a=1; v=canary1")]), None);
        assert_eq!(
            held,
            CanaryChoice {
                target: 1,
                set_cookie: false
            }
        );
        let fresh = canary.choose(&request(&[]), None);
        assert!(fresh.set_cookie);
        let cookie = canary.sticky_cookie(1).unwrap().to_str().unwrap();
        assert!(cookie.starts_with("v=canary1; Max-Age=60;"), "{cookie}");
        canary.state.roll_back_for_test(1);
        let moved = canary.choose(&request(&[("cookie", "v=canary1")]), None);
        assert_eq!(
            moved,
            CanaryChoice {
                target: 0,
                set_cookie: true
            }
        );
    }

    #[test]
    fn a_sticky_hash_keeps_a_client_on_one_target() {
        let stickiness = Stickiness::Hash(ForceSourceOrIp::Request(ForceSource::Header(
            "x-user".into(),
        )));
        let canary = canary(&[50], stickiness, Vec::new());
        let mut seen = [0usize; 2];
        for user in 0..200 {
            let name = format!("user{user}");
            let first = canary.choose(&request(&[("x-user", &name)]), None).target;
            for _ in 0..5 {
                assert_eq!(
                    canary.choose(&request(&[("x-user", &name)]), None).target,
                    first
                );
            }
            seen[first] += 1;
        }
        assert!(seen[0] > 50 && seen[1] > 50, "{seen:?}");
    }

    #[test]
    fn new_weights_lift_a_rollback() {
        let first = canary(&[10], Stickiness::None, Vec::new());
        first.state.roll_back_for_test(1);
        assert_eq!(first.effective_weight(1), 0);
        assert_eq!(first.effective_weight(0), 100);
        let names = first.names.clone();
        let same = Canary::new(
            &Arc::from("unit-route"),
            &plan(&[10], Stickiness::None, Vec::new()),
            names.clone(),
            Some(&first),
        );
        assert_eq!(same.effective_weight(1), 0, "an unrelated reload keeps it");
        // The rollback written to the overlay (weight 0): the snapshot still serving must
        // keep the canary out until the new one is swapped in.
        let persisted = Canary::new(
            &Arc::from("unit-route"),
            &plan(&[0], Stickiness::None, Vec::new()),
            names.clone(),
            Some(&same),
        );
        assert_eq!(
            same.effective_weight(1),
            0,
            "the serving snapshot keeps it out"
        );
        assert_eq!(persisted.effective_weight(1), 0);
        let changed = Canary::new(
            &Arc::from("unit-route"),
            &plan(&[5], Stickiness::None, Vec::new()),
            names,
            Some(&persisted),
        );
        assert_eq!(changed.effective_weight(1), 5);
    }

    #[test]
    fn the_sticky_hash_is_stable_across_processes() {
        // FNV-1a's published value for "a": no per-process seed may change the bucket.
        assert_eq!(
            HashKey::Text(b"a").bucket(),
            (0xaf63_dc4c_8601_ec8cu64 % 100) as u32
        );
        assert_eq!(
            HashKey::Text(b"").bucket(),
            (0xcbf2_9ce4_8422_2325u64 % 100) as u32
        );
    }
}
