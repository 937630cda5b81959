//! `basic_auth`: HTTP Basic users from the config or an htpasswd file.
//!
//! Passwords are stored as bcrypt hashes (`$2y$`, as `htpasswd -B` writes them, `$2b$`,
//! `$2a$`) or as SHA-256 hex digests (Go Loom's admin format). bcrypt is slow on purpose, so
//! a verified `Authorization` value is remembered for `cache_ttl` (by a keyed digest of the
//! header, never the password itself), and checks run on the blocking pool, a few at a time,
//! so a flood of wrong passwords cannot stall the threads that serve requests.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use http::{HeaderName, HeaderValue};
use pingora::proxy::Session;
use serde::Deserialize;

use super::auth::{consumer_header, refuse, remove_client_header, set_consumer};
use super::credentials::{basic_credentials, constant_time_equal, parse_digest, sha256};
use super::keyed_hash::{DigestMap, digest};
use super::{RequestInput, Verdict};
use crate::config::units::DurationValue;
use crate::gateway::errors::GatewayError;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BasicAuthConfig {
    pub realm: String,
    pub users: Vec<UserEntry>,
    /// An htpasswd file, relative to the config's directory.
    pub htpasswd: Option<String>,
    pub cache_ttl: Option<DurationValue>,
    pub consumer_header: Option<String>,
    /// Remove `Authorization` before the request goes upstream.
    pub hide_credentials: bool,
}

impl Default for BasicAuthConfig {
    fn default() -> Self {
        BasicAuthConfig {
            realm: "loom".to_string(),
            users: Vec::new(),
            htpasswd: None,
            cache_ttl: None,
            consumer_header: None,
            hide_credentials: false,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UserEntry {
    pub username: String,
    /// A bcrypt hash or a SHA-256 hex digest; never the password itself.
    pub password: String,
}

#[derive(Debug)]
enum PasswordHash {
    Bcrypt(String),
    Sha256([u8; 32]),
}

const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(60);
/// Longest `cache_ttl`: a day (a credential changed in the config is picked up by a reload,
/// which starts a new cache, but a revoked htpasswd line should not live on for longer).
const MAX_CACHE_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long a refused `Authorization` value is answered 401 without a new bcrypt check.
const FAILURE_TTL: Duration = Duration::from_secs(5);
/// How long a request waits for a free bcrypt slot before it gets 503.
const BCRYPT_QUEUE_WAIT: Duration = Duration::from_secs(1);

enum Check {
    Valid(Arc<str>),
    Invalid,
    /// Every bcrypt slot stayed busy.
    Busy,
}

/// Remembers `value` under `key` unless `ttl` is zero; the table starts over when full.
fn remember<V>(table: &DigestMap<V>, key: u128, value: V, ttl: Duration) {
    if ttl.is_zero() {
        return;
    }
    if table.len() >= CACHE_CAPACITY {
        table.clear();
    }
    table.insert(key, value);
}
/// Most remembered credentials; the cache is emptied when it fills (a flood of distinct
/// valid credentials is not a case worth an eviction order).
const CACHE_CAPACITY: usize = 10_000;

#[derive(Debug)]
pub struct BasicAuth {
    realm: String,
    challenge: HeaderValue,
    users: HashMap<Vec<u8>, (Arc<str>, PasswordHash)>,
    cache_ttl: Duration,
    /// Digest of a verified `Authorization` value → (consumer, good until).
    verified: DigestMap<(Arc<str>, Instant)>,
    /// Digest of a refused `Authorization` value → refused until.
    refused: DigestMap<Instant>,
    /// A bcrypt hash checked for unknown users, so they take as long as known ones.
    decoy: Option<PasswordHash>,
    consumer_header: Option<HeaderName>,
    hide_credentials: bool,
    source: Option<String>,
}

/// Parses one stored hash; the message says what is wrong.
fn parse_hash(text: &str) -> Result<PasswordHash, String> {
    let text = text.trim();
    if text.starts_with("$2y$") || text.starts_with("$2b$") || text.starts_with("$2a$") {
        // Checked now so that a truncated hash is a config error, not a 401 later.
        text.parse::<bcrypt::HashParts>()
            .map_err(|error| format!("invalid bcrypt hash: {error}"))?;
        return Ok(PasswordHash::Bcrypt(text.to_string()));
    }
    if let Some(digest) = parse_digest(text) {
        return Ok(PasswordHash::Sha256(digest));
    }
    let kind = if text.starts_with("$apr1$") {
        "an Apache MD5 ($apr1$) hash"
    } else if text.starts_with("{SHA}") {
        "a SHA-1 ({SHA}) hash"
    } else {
        "not a bcrypt hash nor a SHA-256 hex digest"
    };
    Err(format!(
        "{kind}: only bcrypt (htpasswd -B) and SHA-256 hex are accepted"
    ))
}

impl BasicAuth {
    pub fn compile(
        config: BasicAuthConfig,
        base_dir: &Path,
        report: &mut dyn FnMut(&str, String),
    ) -> Option<BasicAuth> {
        let mut users = HashMap::new();
        for (index, user) in config.users.iter().enumerate() {
            if user.username.is_empty() || user.username.contains(':') {
                report(
                    &format!("users[{index}].username"),
                    "must be non-empty and without ':'".to_string(),
                );
                continue;
            }
            match parse_hash(&user.password) {
                Ok(hash) => {
                    users.insert(
                        user.username.as_bytes().to_vec(),
                        (Arc::from(user.username.as_str()), hash),
                    );
                }
                Err(message) => report(&format!("users[{index}].password"), message),
            }
        }
        let mut source = None;
        if let Some(file) = &config.htpasswd {
            let path = base_dir.join(file);
            source = Some(path.display().to_string());
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    for (number, line) in text.lines().enumerate() {
                        let line = line.trim();
                        if line.is_empty() || line.starts_with('#') {
                            continue;
                        }
                        let Some((name, hash)) = line.split_once(':') else {
                            report(
                                "htpasswd",
                                format!("{}:{}: not a user:hash line", path.display(), number + 1),
                            );
                            continue;
                        };
                        match parse_hash(hash) {
                            Ok(hash) => {
                                users.insert(name.as_bytes().to_vec(), (Arc::from(name), hash));
                            }
                            Err(message) => report(
                                "htpasswd",
                                format!(
                                    "{}:{}: user \"{name}\": {message}",
                                    path.display(),
                                    number + 1
                                ),
                            ),
                        }
                    }
                }
                Err(error) => report(
                    "htpasswd",
                    format!("cannot read {}: {error}", path.display()),
                ),
            }
        }
        if users.is_empty() && config.htpasswd.is_none() {
            report("users", "give users, htpasswd or both".to_string());
        }
        let realm = config.realm.replace(['"', '\\'], "");
        let challenge = match HeaderValue::from_str(&format!("Basic realm=\"{realm}\"")) {
            Ok(value) => value,
            Err(_) => {
                report("realm", "must be printable text".to_string());
                return None;
            }
        };
        let consumer_header = consumer_header(config.consumer_header.as_deref(), report);
        let cache_ttl = config.cache_ttl.map_or(DEFAULT_CACHE_TTL, |ttl| ttl.0);
        if cache_ttl > MAX_CACHE_TTL {
            report("cache_ttl", "must be at most 24h".to_string());
        }
        let decoy = users.values().find_map(|(_, hash)| match hash {
            PasswordHash::Bcrypt(stored) => Some(PasswordHash::Bcrypt(stored.clone())),
            PasswordHash::Sha256(_) => None,
        });
        Some(BasicAuth {
            realm,
            challenge,
            users,
            cache_ttl: cache_ttl.min(MAX_CACHE_TTL),
            verified: DigestMap::default(),
            refused: DigestMap::default(),
            decoy,
            consumer_header,
            hide_credentials: config.hide_credentials,
            source,
        })
    }

    fn refuse(&self, input: &RequestInput<'_>, reason: &'static str) -> Verdict {
        let message = if reason == "missing" {
            "credentials are required"
        } else {
            "the user name or password is not valid"
        };
        Verdict::Fail(
            refuse(input, input.step_name, 401, reason, message)
                .with_header(http::header::WWW_AUTHENTICATE, self.challenge.clone()),
        )
    }

    /// Whether `password` is `name`'s. bcrypt runs on the blocking pool, at most one check
    /// per core at a time; a check that cannot start within [`BCRYPT_QUEUE_WAIT`] is
    /// [`Check::Busy`]. An unknown user costs one bcrypt check too, so answer times do not
    /// tell which user names exist.
    async fn verify(&self, name: &[u8], password: Vec<u8>) -> Check {
        let (consumer, hash) = match self.users.get(name) {
            Some((consumer, hash)) => (Some(consumer), hash),
            None => match &self.decoy {
                Some(decoy) => (None, decoy),
                None => return Check::Invalid,
            },
        };
        let valid = match hash {
            PasswordHash::Sha256(stored) => constant_time_equal(stored, &sha256(&password)),
            PasswordHash::Bcrypt(stored) => {
                static CHECKS: LazyLock<Arc<tokio::sync::Semaphore>> = LazyLock::new(|| {
                    let cores = std::thread::available_parallelism().map_or(2, usize::from);
                    Arc::new(tokio::sync::Semaphore::new(cores))
                });
                let permit = match tokio::time::timeout(
                    BCRYPT_QUEUE_WAIT,
                    Arc::clone(&CHECKS).acquire_owned(),
                )
                .await
                {
                    Ok(Ok(permit)) => permit,
                    _ => return Check::Busy,
                };
                let stored = stored.clone();
                // The permit moves into the check: a client that goes away does not free the
                // slot while bcrypt still runs.
                tokio::task::spawn_blocking(move || {
                    let _permit = permit;
                    bcrypt::verify(&password, &stored).unwrap_or(false)
                })
                .await
                .unwrap_or(false)
            }
        };
        match consumer {
            Some(consumer) if valid => Check::Valid(Arc::clone(consumer)),
            _ => Check::Invalid,
        }
    }

    pub async fn on_request(&self, session: &mut Session, input: &mut RequestInput<'_>) -> Verdict {
        if let Some(header) = &self.consumer_header {
            remove_client_header(session, header);
        }
        let Some(authorization) = session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .cloned()
        else {
            return self.refuse(input, "missing");
        };
        let cache_key = digest(&[(0, authorization.as_bytes())]);
        if let Some(until) = self.refused.get(&cache_key).map(|entry| *entry)
            && until > input.now
        {
            return self.refuse(input, "invalid");
        }
        let cached = self
            .verified
            .get(&cache_key)
            .filter(|entry| entry.1 > input.now)
            .map(|entry| Arc::clone(&entry.0));
        let consumer = match cached {
            Some(consumer) => consumer,
            None => {
                let Some((name, password)) = basic_credentials(authorization.as_bytes()) else {
                    return self.refuse(input, "missing");
                };
                // Boxed: the bcrypt path's state stays out of every request's future (Pingora
                // boxes the request filter's future, so its size is paid by all requests).
                match Box::pin(self.verify(&name, password)).await {
                    Check::Valid(consumer) => {
                        remember(
                            &self.verified,
                            cache_key,
                            (Arc::clone(&consumer), input.now + self.cache_ttl),
                            self.cache_ttl,
                        );
                        consumer
                    }
                    Check::Invalid => {
                        remember(
                            &self.refused,
                            cache_key,
                            input.now + FAILURE_TTL,
                            FAILURE_TTL,
                        );
                        return self.refuse(input, "invalid");
                    }
                    Check::Busy => {
                        return Verdict::Fail(
                            GatewayError::new(
                                503,
                                "auth_busy",
                                "too many password checks are waiting; try again",
                            )
                            .with_header(http::header::RETRY_AFTER, HeaderValue::from_static("1")),
                        );
                    }
                }
            }
        };
        if self.hide_credentials {
            let _ = session
                .req_header_mut()
                .remove_header(&http::header::AUTHORIZATION);
        }
        set_consumer(session, input, self.consumer_header.as_ref(), &consumer);
        Verdict::Continue
    }

    pub fn describe(&self) -> serde_json::Value {
        let mut users: Vec<&str> = self.users.values().map(|(name, _)| &**name).collect();
        users.sort_unstable();
        serde_json::json!({
            "realm": self.realm,
            "users": users,
            "htpasswd": self.source,
            "cache_ttl_seconds": self.cache_ttl.as_secs_f64(),
            "consumer_header": self.consumer_header.as_ref().map(HeaderName::as_str),
            "hide_credentials": self.hide_credentials,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(config: BasicAuthConfig, base_dir: &Path) -> Result<BasicAuth, Vec<String>> {
        let mut errors = Vec::new();
        let policy = BasicAuth::compile(config, base_dir, &mut |field, message| {
            errors.push(format!("{field}: {message}"))
        });
        match policy {
            Some(policy) if errors.is_empty() => Ok(policy),
            _ => Err(errors),
        }
    }

    #[tokio::test]
    async fn bcrypt_and_sha256_users_verify() {
        let bcrypt_hash = bcrypt::hash("open sesame", 4).unwrap();
        let directory = tempfile::tempdir().unwrap();
        std::fs::write(
            directory.path().join("users"),
            format!("# users\ncarol:{bcrypt_hash}\n"),
        )
        .unwrap();
        let policy = compile(
            BasicAuthConfig {
                users: vec![UserEntry {
                    username: "alice".into(),
                    // SHA-256 of "secret".
                    password: "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"
                        .into(),
                }],
                htpasswd: Some("users".into()),
                ..BasicAuthConfig::default()
            },
            directory.path(),
        )
        .unwrap();
        let consumer = |check: Check| match check {
            Check::Valid(consumer) => Some(consumer.to_string()),
            Check::Invalid => None,
            Check::Busy => panic!("no bcrypt slot"),
        };
        assert_eq!(
            consumer(policy.verify(b"alice", b"secret".to_vec()).await).as_deref(),
            Some("alice")
        );
        assert_eq!(
            consumer(policy.verify(b"alice", b"Secret".to_vec()).await),
            None
        );
        assert_eq!(
            consumer(policy.verify(b"carol", b"open sesame".to_vec()).await).as_deref(),
            Some("carol")
        );
        assert_eq!(
            consumer(policy.verify(b"carol", b"open".to_vec()).await),
            None
        );
        // An unknown user is checked against the decoy hash, and refused.
        assert_eq!(
            consumer(policy.verify(b"mallory", b"open sesame".to_vec()).await),
            None
        );
    }

    #[test]
    fn unsupported_hashes_name_the_file_line() {
        let directory = tempfile::tempdir().unwrap();
        std::fs::write(directory.path().join("users"), "dave:$apr1$abc$def\n").unwrap();
        let errors = compile(
            BasicAuthConfig {
                htpasswd: Some("users".into()),
                ..BasicAuthConfig::default()
            },
            directory.path(),
        )
        .unwrap_err();
        assert!(errors[0].contains("users:1"), "{errors:?}");
        assert!(errors[0].contains("$apr1$"), "{errors:?}");
        let errors = compile(
            BasicAuthConfig {
                users: vec![UserEntry {
                    username: "x".into(),
                    password: "plain".into(),
                }],
                ..BasicAuthConfig::default()
            },
            directory.path(),
        )
        .unwrap_err();
        assert!(errors[0].starts_with("users[0].password"), "{errors:?}");
    }
}
