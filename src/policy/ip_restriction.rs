//! `ip_restriction`: allow and deny lists of CIDR blocks, checked against the client address
//! (see [`super::client_ip`] for when `X-Forwarded-For` is believed). A denied or unlisted
//! client gets 403 before anything reaches the upstream.

use std::net::IpAddr;

use serde::Deserialize;

use super::Verdict;
use super::client_ip::{self, Cidr};
use crate::gateway::errors::GatewayError;

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct IpRestrictionConfig {
    /// When not empty, only these clients are let through.
    pub allow: Vec<String>,
    /// Refused even when `allow` lists them.
    pub deny: Vec<String>,
}

#[derive(Debug)]
pub struct IpRestriction {
    allow: Vec<Cidr>,
    deny: Vec<Cidr>,
}

impl IpRestriction {
    pub fn compile(
        config: IpRestrictionConfig,
        report: &mut dyn FnMut(&str, String),
    ) -> Option<IpRestriction> {
        let allow = client_ip::parse_list(&config.allow, &mut |index, message| {
            report(&format!("allow[{index}]"), message)
        });
        let deny = client_ip::parse_list(&config.deny, &mut |index, message| {
            report(&format!("deny[{index}]"), message)
        });
        if config.allow.is_empty() && config.deny.is_empty() {
            report("allow", "give allow, deny or both".to_string());
        }
        Some(IpRestriction { allow, deny })
    }

    pub fn permits(&self, client: Option<IpAddr>) -> bool {
        let Some(client) = client else {
            // No IP (a Unix socket peer): only an allow-nothing-in-particular policy lets it in.
            return self.allow.is_empty();
        };
        if self.deny.iter().any(|cidr| cidr.contains(client)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|cidr| cidr.contains(client))
    }

    pub fn on_request(&self, client: Option<IpAddr>) -> Verdict {
        if self.permits(client) {
            Verdict::Continue
        } else {
            Verdict::Fail(GatewayError::new(
                403,
                "ip_forbidden",
                "requests from this address are not allowed on this route",
            ))
        }
    }

    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "allow": self.allow.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "deny": self.deny.iter().map(ToString::to_string).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deny_wins_over_allow_and_unlisted_clients_are_refused() {
        let policy = IpRestriction::compile(
            IpRestrictionConfig {
                allow: vec!["10.0.0.0/8".into()],
                deny: vec!["10.6.6.0/24".into()],
            },
            &mut |field, message| panic!("{field}: {message}"),
        )
        .unwrap();
        let ip = |text: &str| Some(text.parse::<IpAddr>().unwrap());
        assert!(policy.permits(ip("10.1.2.3")));
        assert!(!policy.permits(ip("10.6.6.7")));
        assert!(!policy.permits(ip("192.168.0.1")));
        assert!(!policy.permits(None));
    }
}
