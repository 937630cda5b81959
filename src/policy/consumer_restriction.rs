//! `consumer_restriction`: lets through only the consumers an earlier auth policy of the
//! route identified and this step allows, as Kong's `acl` and APISIX's
//! `consumer-restriction` do. One set of credentials (a `key_auth` with every partner's key)
//! can then guard several routes, each open to a different subset of consumers.
//!
//! A request without a consumer (no auth step ran before this one, or it let an anonymous
//! request through) is 401; an identified consumer that is not allowed is 403. Both are
//! counted in `loom_auth_failures_total` like the auth policies' refusals.

use std::collections::HashSet;

use serde::Deserialize;

use super::auth::refuse;
use super::{RequestInput, Verdict};

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsumerRestrictionConfig {
    /// When not empty, only these consumers are let through.
    pub allow: Vec<String>,
    /// Refused even when `allow` lists them.
    pub deny: Vec<String>,
}

#[derive(Debug)]
pub struct ConsumerRestriction {
    allow: HashSet<String>,
    deny: HashSet<String>,
}

impl ConsumerRestriction {
    pub fn compile(
        config: ConsumerRestrictionConfig,
        report: &mut dyn FnMut(&str, String),
    ) -> Option<ConsumerRestriction> {
        if config.allow.is_empty() && config.deny.is_empty() {
            report("allow", "give allow, deny or both".to_string());
        }
        for (field, names) in [("allow", &config.allow), ("deny", &config.deny)] {
            for (index, name) in names.iter().enumerate() {
                if name.is_empty() {
                    report(
                        &format!("{field}[{index}]"),
                        "a consumer name must not be empty".to_string(),
                    );
                }
            }
        }
        Some(ConsumerRestriction {
            allow: config.allow.into_iter().collect(),
            deny: config.deny.into_iter().collect(),
        })
    }

    /// Whether `consumer` may pass.
    pub fn permits(&self, consumer: &str) -> bool {
        !self.deny.contains(consumer) && (self.allow.is_empty() || self.allow.contains(consumer))
    }

    pub fn on_request(&self, input: &mut RequestInput<'_>) -> Verdict {
        let verdict = match input.state.consumer.as_deref() {
            None => Some((401, "missing", "this route needs an identified consumer")),
            Some(consumer) if !self.permits(consumer) => Some((
                403,
                "consumer_forbidden",
                "this consumer is not allowed on this route",
            )),
            Some(_) => None,
        };
        match verdict {
            None => Verdict::Continue,
            Some((status, reason, message)) => {
                Verdict::Fail(refuse(input, input.step_name, status, reason, message))
            }
        }
    }

    pub fn describe(&self) -> serde_json::Value {
        let sorted = |names: &HashSet<String>| {
            let mut names: Vec<&String> = names.iter().collect();
            names.sort_unstable();
            serde_json::json!(names)
        };
        serde_json::json!({"allow": sorted(&self.allow), "deny": sorted(&self.deny)})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn restriction(allow: &[&str], deny: &[&str]) -> ConsumerRestriction {
        let names = |list: &[&str]| list.iter().map(|name| name.to_string()).collect();
        let config = ConsumerRestrictionConfig {
            allow: names(allow),
            deny: names(deny),
        };
        ConsumerRestriction::compile(config, &mut |field, message| panic!("{field}: {message}"))
            .unwrap()
    }

    #[test]
    fn allow_and_deny_lists() {
        let allow_only = restriction(&["alice", "bob"], &[]);
        assert!(allow_only.permits("alice"));
        assert!(!allow_only.permits("carol"));
        assert!(!allow_only.permits("Alice"));
        let deny_only = restriction(&[], &["mallory"]);
        assert!(deny_only.permits("alice"));
        assert!(!deny_only.permits("mallory"));
        let both = restriction(&["alice", "mallory"], &["mallory"]);
        assert!(both.permits("alice"));
        assert!(!both.permits("mallory"));
    }

    #[test]
    fn refuses_empty_settings() {
        let mut problems = Vec::new();
        let config = ConsumerRestrictionConfig {
            allow: vec![String::new()],
            deny: Vec::new(),
        };
        ConsumerRestriction::compile(ConsumerRestrictionConfig::default(), &mut |field, _| {
            problems.push(field.to_string())
        });
        ConsumerRestriction::compile(config, &mut |field, _| problems.push(field.to_string()));
        assert_eq!(problems, ["allow", "allow[0]"]);
    }
}
