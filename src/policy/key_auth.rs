//! `key_auth`: API keys from a header or a query parameter.
//!
//! The config stores each key as its SHA-256 digest (a plain key is accepted with a warning),
//! so a leaked config does not leak keys. A request's key is hashed once, the digest found in
//! a map, and the stored digest compared again in constant time. The key never goes upstream
//! (unless `hide_credentials: false`); the consumer it maps to does, in `consumer_header`.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::Arc;

use http::HeaderName;
use pingora::proxy::Session;
use serde::Deserialize;

use super::auth::{self, Consumer, consumer_header, refuse};
use super::credentials::{constant_time_equal, parse_digest, sha256};
use super::keyed_hash::{DigestHasher, DigestMap, digest as keyed_digest};
use super::query::query_parameter;
use super::{RequestInput, Verdict};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeyAuthConfig {
    /// The header that carries the key; `""` reads no header.
    pub header: String,
    /// The query parameter that carries the key; none by default.
    pub query: Option<String>,
    pub consumer_header: Option<String>,
    /// Remove the key before the request goes upstream.
    pub hide_credentials: bool,
    pub keys: Vec<KeyEntry>,
}

impl Default for KeyAuthConfig {
    fn default() -> Self {
        KeyAuthConfig {
            header: "X-API-Key".to_string(),
            query: None,
            consumer_header: None,
            hide_credentials: true,
            keys: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeyEntry {
    pub consumer: String,
    /// The key's SHA-256 digest as 64 hexadecimal characters (`printf %s KEY | sha256sum`).
    pub key_sha256: Option<String>,
    /// The key itself; accepted, with a warning, for configs that are not shared.
    pub key: Option<String>,
}

#[derive(Debug)]
pub struct KeyAuth {
    header: Option<HeaderName>,
    query: Option<String>,
    consumer_header: Option<HeaderName>,
    hide_credentials: bool,
    /// Key digest → consumer. The digests are uniformly random already, so the map uses
    /// their first bytes as the hash instead of hashing them again.
    consumers: HashMap<[u8; 32], Arc<Consumer>, BuildHasherDefault<DigestHasher>>,
    /// Keys already verified, by keyed digest of the key as sent: SHA-256 costs thousands of
    /// instructions per request, the digest a few hundred. Only valid keys are remembered
    /// (an invalid one is hashed again every time), at most [`VERIFIED_CAPACITY`].
    verified: DigestMap<Arc<Consumer>>,
}

/// Most remembered keys; the table starts over when full.
const VERIFIED_CAPACITY: usize = 100_000;

impl KeyAuth {
    pub fn compile(config: KeyAuthConfig, report: &mut dyn FnMut(&str, String)) -> Option<KeyAuth> {
        let header = if config.header.is_empty() {
            None
        } else {
            super::header_name(&config.header)
                .map_err(|message| report("header", message))
                .ok()
        };
        let query = config.query.clone().filter(|name| !name.is_empty());
        if header.is_none() && query.is_none() && config.header.is_empty() {
            report("header", "give header, query or both".to_string());
        }
        let consumer_header = consumer_header(config.consumer_header.as_deref(), report);
        if config.keys.is_empty() {
            report("keys", "at least one key is needed".to_string());
        }
        let mut consumers = HashMap::default();
        for (index, entry) in config.keys.iter().enumerate() {
            if entry.consumer.is_empty() {
                report(
                    &format!("keys[{index}].consumer"),
                    "is required".to_string(),
                );
            }
            let digest = match (&entry.key_sha256, &entry.key) {
                (Some(hex), None) => match parse_digest(hex) {
                    Some(digest) => digest,
                    None => {
                        report(
                            &format!("keys[{index}].key_sha256"),
                            "must be the SHA-256 digest of the key as 64 hexadecimal characters \
                             (printf %s KEY | sha256sum)"
                                .to_string(),
                        );
                        continue;
                    }
                },
                (None, Some(key)) if !key.is_empty() => {
                    log::warn!(
                        "key_auth: the key of consumer \"{}\" is written in plain text; store \
                         key_sha256 instead",
                        entry.consumer
                    );
                    sha256(key.as_bytes())
                }
                _ => {
                    report(
                        &format!("keys[{index}]"),
                        "give exactly one of key_sha256 or key".to_string(),
                    );
                    continue;
                }
            };
            if consumers
                .insert(digest, Arc::new(Consumer::new(&entry.consumer)))
                .is_some()
            {
                report(
                    &format!("keys[{index}]"),
                    "the same key is listed twice".to_string(),
                );
            }
        }
        Some(KeyAuth {
            header,
            query,
            consumer_header,
            hide_credentials: config.hide_credentials,
            consumers,
            verified: DigestMap::default(),
        })
    }

    /// The consumer whose key this is.
    fn consumer_of(&self, key: &[u8]) -> Option<Arc<Consumer>> {
        let remembered = keyed_digest(&[(0, key)]);
        if let Some(consumer) = self.verified.get(&remembered) {
            return Some(Arc::clone(&consumer));
        }
        let consumer = self.verify(key)?;
        if self.verified.len() >= VERIFIED_CAPACITY {
            self.verified.clear();
        }
        self.verified.insert(remembered, Arc::clone(&consumer));
        Some(consumer)
    }

    /// The consumer whose key's SHA-256 digest is in the config.
    fn verify(&self, key: &[u8]) -> Option<Arc<Consumer>> {
        let digest = sha256(key);
        // The map finds the candidate by digest; the digest is then compared again in
        // constant time, so no early-exit comparison of secret bytes decides the answer.
        self.consumers
            .get_key_value(&digest)
            .filter(|(stored, _)| constant_time_equal(&stored[..], &digest))
            .map(|(_, consumer)| Arc::clone(consumer))
    }

    pub fn on_request(&self, session: &mut Session, input: &mut RequestInput<'_>) -> Verdict {
        let request = session.req_header();
        let offered = match self
            .header
            .as_ref()
            .and_then(|header| request.headers.get(header))
        {
            Some(value) => Some(self.consumer_of(value.as_bytes())),
            None => self
                .query
                .as_deref()
                .and_then(|name| query_parameter(&request.uri, name))
                .map(|key| self.consumer_of(key.as_bytes())),
        };
        let consumer = match offered {
            None => {
                return Verdict::Fail(refuse(
                    input,
                    input.step_name,
                    401,
                    "missing",
                    "an API key is required",
                ));
            }
            Some(None) => {
                return Verdict::Fail(refuse(
                    input,
                    input.step_name,
                    401,
                    "invalid",
                    "the API key is not valid",
                ));
            }
            Some(Some(consumer)) => consumer,
        };
        // Every place a key may be is cleared, not only the one that was used: a second key
        // sent next to the first must not reach the upstream either. The client's own
        // consumer header is replaced (or removed): it must come from the gateway. Both in one
        // edit of the header map: Pingora's own remove and insert each update its case map too.
        let key_header = self.header.as_ref().filter(|_| self.hide_credentials);
        if key_header.is_some() || self.consumer_header.is_some() {
            crate::gateway::headers::edit_request_headers(session.req_header_mut(), 1, |headers| {
                if let Some(name) = key_header {
                    headers.remove(name);
                }
                if let Some(name) = &self.consumer_header {
                    match consumer.header_value() {
                        Some(value) => {
                            headers.insert(name.clone(), value.clone());
                        }
                        None => {
                            headers.remove(name);
                        }
                    }
                }
            });
        }
        if self.hide_credentials
            && let Some(name) = &self.query
        {
            auth::strip_query_credential(session, input, name);
        }
        input.state.consumer = Some(consumer.shared_name());
        Verdict::Continue
    }

    pub fn describe(&self) -> serde_json::Value {
        let mut consumers: Vec<&str> = self
            .consumers
            .values()
            .map(|consumer| consumer.name())
            .collect();
        consumers.sort_unstable();
        serde_json::json!({
            "header": self.header.as_ref().map(HeaderName::as_str),
            "query": self.query,
            "consumer_header": self.consumer_header.as_ref().map(HeaderName::as_str),
            "hide_credentials": self.hide_credentials,
            "consumers": consumers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(config: KeyAuthConfig) -> Result<KeyAuth, Vec<String>> {
        let mut errors = Vec::new();
        let policy = KeyAuth::compile(config, &mut |field, message| {
            errors.push(format!("{field}: {message}"))
        });
        match policy {
            Some(policy) if errors.is_empty() => Ok(policy),
            _ => Err(errors),
        }
    }

    #[test]
    fn digests_and_plain_keys_find_their_consumer() {
        let digest = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"; // "secret"
        let policy = compile(KeyAuthConfig {
            keys: vec![
                KeyEntry {
                    consumer: "alice".into(),
                    key_sha256: Some(digest.into()),
                    key: None,
                },
                KeyEntry {
                    consumer: "bob".into(),
                    key_sha256: None,
                    key: Some("bobs-key".into()),
                },
            ],
            ..KeyAuthConfig::default()
        })
        .unwrap();
        assert_eq!(
            policy.consumer_of(b"secret").as_deref().map(Consumer::name),
            Some("alice")
        );
        assert_eq!(
            policy
                .consumer_of(b"bobs-key")
                .as_deref()
                .map(Consumer::name),
            Some("bob")
        );
        assert!(policy.consumer_of(b"Secret").is_none());
        assert!(policy.consumer_of(b"").is_none());
    }

    #[test]
    fn bad_digests_duplicates_and_missing_keys_are_config_errors() {
        let errors = compile(KeyAuthConfig {
            keys: vec![
                KeyEntry {
                    consumer: "a".into(),
                    key_sha256: Some("abc".into()),
                    key: None,
                },
                KeyEntry {
                    consumer: "b".into(),
                    key_sha256: None,
                    key: None,
                },
                KeyEntry {
                    consumer: "c".into(),
                    key_sha256: None,
                    key: Some("x".into()),
                },
                KeyEntry {
                    consumer: "d".into(),
                    key_sha256: None,
                    key: Some("x".into()),
                },
            ],
            ..KeyAuthConfig::default()
        })
        .unwrap_err();
        let text = errors.join("\n");
        assert!(text.contains("keys[0].key_sha256"), "{text}");
        assert!(text.contains("keys[1]: give exactly one"), "{text}");
        assert!(text.contains("keys[3]: the same key"), "{text}");
        assert!(compile(KeyAuthConfig::default()).is_err());
    }
}
