//! What a rate or concurrency limit counts by: `client_ip`, `route`, `consumer` (set by an
//! auth policy earlier in the chain), `header:<Name>`, or a list of these combined.
//!
//! A request is reduced to a [`limit_digest`](super::keyed_hash::limit_digest) for the local tables (no
//! allocation), or to readable text for Redis, whose keys must be the same on every instance
//! of a fleet. A missing header or consumer counts under the client's IP instead, so clients
//! cannot escape a limit by leaving the header out. An IPv6 client counts by its /64, the
//! block one subscriber gets: counting by the whole address would let a client with a /64
//! send every request from a new address.

use std::net::IpAddr;

use http::HeaderName;
use pingora::http::RequestHeader;
use serde::Deserialize;

/// `key:` as written: one part or a list.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum KeyConfig {
    One(String),
    Many(Vec<String>),
}

impl Default for KeyConfig {
    fn default() -> Self {
        KeyConfig::One("client_ip".to_string())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    ClientIp,
    Route,
    Consumer,
    Header(HeaderName),
}

/// The parts of a limit's key, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitKey {
    parts: Vec<KeyPart>,
}

impl LimitKey {
    /// Whether the key holds the client's address.
    pub fn uses_client_ip(&self) -> bool {
        self.parts.contains(&KeyPart::ClientIp)
    }
}

/// What a key is computed from.
pub struct KeyInput<'a> {
    pub client_ip: Option<IpAddr>,
    pub route_id: &'a str,
    pub consumer: Option<&'a str>,
    pub request: &'a RequestHeader,
}

/// Most parts a key may combine: the digest is built from a fixed array.
const MAX_PARTS: usize = 4;

impl LimitKey {
    pub fn compile(config: &KeyConfig, report: &mut dyn FnMut(&str, String)) -> Option<LimitKey> {
        let texts: Vec<&str> = match config {
            KeyConfig::One(text) => vec![text.as_str()],
            KeyConfig::Many(texts) => texts.iter().map(String::as_str).collect(),
        };
        if texts.is_empty() || texts.len() > MAX_PARTS {
            report("key", format!("give between 1 and {MAX_PARTS} key parts"));
            return None;
        }
        let mut parts = Vec::with_capacity(texts.len());
        for text in texts {
            let part = match text {
                "client_ip" | "ip" => KeyPart::ClientIp,
                "route" => KeyPart::Route,
                "consumer" => KeyPart::Consumer,
                other => match other.strip_prefix("header:") {
                    Some(name) => match super::header_name(name.trim()) {
                        Ok(name) => KeyPart::Header(name),
                        Err(message) => {
                            report("key", message);
                            return None;
                        }
                    },
                    None => {
                        report(
                            "key",
                            format!(
                                "\"{other}\" is not a key part (client_ip, route, consumer, \
                                 header:<Name>)"
                            ),
                        );
                        return None;
                    }
                },
            };
            parts.push(part);
        }
        Some(LimitKey { parts })
    }

    /// The part's bytes for this request, with the tag that says what they are.
    fn part_bytes<'a>(part: &KeyPart, input: &'a KeyInput<'a>, ip: &'a [u8]) -> (u8, &'a [u8]) {
        let fallback = (1, ip);
        match part {
            KeyPart::ClientIp => fallback,
            KeyPart::Route => (2, input.route_id.as_bytes()),
            KeyPart::Consumer => input
                .consumer
                .map_or(fallback, |consumer| (3, consumer.as_bytes())),
            KeyPart::Header(name) => input
                .request
                .headers
                .get(name)
                .map_or(fallback, |value| (4, value.as_bytes())),
        }
    }

    /// The request's key for the local tables.
    pub fn digest(&self, input: &KeyInput<'_>) -> u128 {
        let ip = ip_bytes(input.client_ip);
        let ip = &ip.0[..ip.1];
        let mut parts: [(u8, &[u8]); MAX_PARTS] = [(0, &[]); MAX_PARTS];
        for (slot, part) in parts.iter_mut().zip(&self.parts) {
            *slot = Self::part_bytes(part, input, ip);
        }
        super::keyed_hash::limit_digest(&parts[..self.parts.len()])
    }

    /// The request's key as text, the same on every instance (for Redis).
    pub fn text(&self, input: &KeyInput<'_>) -> String {
        let mut text = String::new();
        for (index, part) in self.parts.iter().enumerate() {
            if index > 0 {
                text.push('|');
            }
            let client = || {
                limited_address(input.client_ip)
                    .map_or_else(|| "unknown".to_string(), |ip| ip.to_string())
            };
            match part {
                KeyPart::ClientIp => {
                    text.push_str("ip:");
                    text.push_str(&client());
                }
                KeyPart::Route => {
                    text.push_str("route:");
                    text.push_str(input.route_id);
                }
                KeyPart::Consumer => match input.consumer {
                    Some(consumer) => {
                        text.push_str("consumer:");
                        text.push_str(consumer);
                    }
                    None => {
                        text.push_str("ip:");
                        text.push_str(&client());
                    }
                },
                KeyPart::Header(name) => match input.request.headers.get(name) {
                    Some(value) => {
                        text.push_str("header:");
                        text.push_str(name.as_str());
                        text.push('=');
                        // Header bytes are not always UTF-8; the key only needs to be stable.
                        text.push_str(&String::from_utf8_lossy(value.as_bytes()));
                    }
                    None => {
                        text.push_str("ip:");
                        text.push_str(&client());
                    }
                },
            }
        }
        text
    }

    pub fn describe(&self) -> serde_json::Value {
        let parts: Vec<String> = self
            .parts
            .iter()
            .map(|part| match part {
                KeyPart::ClientIp => "client_ip".to_string(),
                KeyPart::Route => "route".to_string(),
                KeyPart::Consumer => "consumer".to_string(),
                KeyPart::Header(name) => format!("header:{name}"),
            })
            .collect();
        serde_json::json!(parts)
    }
}

/// The address a limit counts by: IPv4 as is (also when written IPv4-mapped), IPv6 with its
/// last 64 bits cleared.
fn limited_address(ip: Option<IpAddr>) -> Option<IpAddr> {
    Some(match ip? {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from_bits(
                v6.to_bits() & !u128::from(u64::MAX),
            )),
        },
    })
}

/// The limited address as bytes on the stack (16 for IPv6, 4 for IPv4, 0 when unknown).
fn ip_bytes(ip: Option<IpAddr>) -> ([u8; 16], usize) {
    let mut bytes = [0; 16];
    match limited_address(ip) {
        Some(IpAddr::V4(v4)) => {
            bytes[..4].copy_from_slice(&v4.octets());
            (bytes, 4)
        }
        Some(IpAddr::V6(v6)) => (v6.octets(), 16),
        None => (bytes, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(config: KeyConfig) -> LimitKey {
        LimitKey::compile(&config, &mut |field, message| panic!("{field}: {message}")).unwrap()
    }

    #[test]
    fn missing_parts_fall_back_to_the_client_ip() {
        let request = crate::policy::test_request("GET", "/", &[("x-tenant", "a")]);
        let bare = crate::policy::test_request("GET", "/", &[]);
        let ip = Some("10.0.0.1".parse().unwrap());
        let input = |request| KeyInput {
            client_ip: ip,
            route_id: "r",
            consumer: None,
            request,
        };
        let by_tenant = key(KeyConfig::One("header:X-Tenant".into()));
        let by_ip = key(KeyConfig::One("client_ip".into()));
        assert_eq!(by_tenant.text(&input(&request)), "header:x-tenant=a");
        assert_eq!(by_tenant.text(&input(&bare)), "ip:10.0.0.1");
        assert_eq!(
            by_tenant.digest(&input(&bare)),
            by_ip.digest(&input(&request))
        );
        assert_ne!(
            by_tenant.digest(&input(&request)),
            by_ip.digest(&input(&request))
        );
        let combined = key(KeyConfig::Many(vec!["route".into(), "consumer".into()]));
        let with_consumer = KeyInput {
            consumer: Some("alice"),
            ..input(&bare)
        };
        assert_eq!(combined.text(&with_consumer), "route:r|consumer:alice");
    }

    #[test]
    fn an_ipv6_client_counts_by_its_64_block() {
        let request = crate::policy::test_request("GET", "/", &[]);
        let by_ip = key(KeyConfig::One("client_ip".into()));
        let input = |ip: &str| KeyInput {
            client_ip: Some(ip.parse().unwrap()),
            route_id: "r",
            consumer: None,
            request: &request,
        };
        assert_eq!(
            by_ip.digest(&input("2001:db8:1:2::1")),
            by_ip.digest(&input("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            by_ip.digest(&input("2001:db8:1:2::1")),
            by_ip.digest(&input("2001:db8:1:3::1"))
        );
        assert_eq!(by_ip.text(&input("2001:db8:1:2::1")), "ip:2001:db8:1:2::");
        assert_eq!(
            by_ip.digest(&input("::ffff:10.0.0.1")),
            by_ip.digest(&input("10.0.0.1"))
        );
    }

    #[test]
    fn unknown_parts_are_config_errors() {
        let mut errors = Vec::new();
        let result = LimitKey::compile(&KeyConfig::One("cookie".into()), &mut |_, message| {
            errors.push(message)
        });
        assert!(result.is_none());
        assert!(errors[0].contains("not a key part"), "{errors:?}");
    }
}
