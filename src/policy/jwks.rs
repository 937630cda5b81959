//! Keys for `jwt_auth`: the compiled form of one verifying key, key sets looked up by `kid`,
//! and the cache of a JSON Web Key Set fetched from an issuer's `jwks_url`.
//!
//! Every key carries its own algorithm and a `Validation` built for it once, so a request
//! never builds one, and a token is only ever checked with the algorithm its key was given:
//! that is what refuses `alg: none` and an HS256 token "signed" with an RSA key's public PEM.
//!
//! A JWKS cache is shared by every config snapshot that names the same URL with the same
//! settings ([`JwksCache::shared`]), so a reload keeps the keys already fetched and the
//! background task that refreshes them. That task starts with the first request (only a
//! request runs on the gateway's runtime), fetches at once, and then as often as the
//! response's `Cache-Control: max-age` says (else `jwks_refresh_interval`).
//!
//! A token whose `kid` is not in the set (none loaded yet, or the issuer rotated its keys
//! before its old set expired from caches) starts a fetch, at most one per
//! `jwks_min_refresh_interval`, so tokens with made-up `kid`s cannot turn the gateway into a
//! load generator against the issuer. At most one fetch runs at a time: a request that finds
//! one under way waits for it (up to `jwks_timeout`) and looks again, instead of being refused
//! while the keys are on their way. A failed fetch keeps the last good set: an issuer's brief
//! outage must not log everyone out.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use crate::policy::shared_state::Registry;
use arc_swap::{ArcSwap, Guard};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// Largest JWKS document read; real ones are a few kilobytes.
const MAX_JWKS_BODY: usize = 1024 * 1024;
/// Longest wait between two refreshes, whatever `max-age` says.
const MAX_REFRESH_INTERVAL: Duration = Duration::from_secs(24 * 60 * 60);

/// The algorithms a key may be given, as the config error lists them.
pub(crate) const ALGORITHM_NAMES: &str =
    "RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA, HS256, HS384, HS512";

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// The algorithm named `name` as a JOSE header or a config writes it (`RS256`, `EdDSA`).
pub(crate) fn algorithm_from_name(name: &str) -> Option<Algorithm> {
    Some(match name {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        _ => return None,
    })
}

pub(crate) fn algorithm_name(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::EdDSA => "EdDSA",
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
    }
}

/// Whether `algorithm` verifies with a shared secret rather than a public key.
pub(crate) fn is_shared_secret(algorithm: Algorithm) -> bool {
    matches!(
        algorithm,
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
    )
}

/// The claim checks every key applies besides its signature.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub(crate) struct ClaimRules {
    /// Accepted `iss` values; `None` accepts any (and a token without `iss`).
    pub issuer: Option<Vec<String>>,
    /// Accepted `aud` values; `None` ignores `aud`.
    pub audience: Option<Vec<String>>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway_seconds: u64,
}

impl ClaimRules {
    /// The validation for tokens signed with `algorithm`: `exp` required, `nbf` checked when
    /// present, `iss` and `aud` required and checked when configured.
    pub(crate) fn validation(&self, algorithm: Algorithm) -> Validation {
        let mut validation = Validation::new(algorithm);
        validation.leeway = self.leeway_seconds;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        if let Some(issuers) = &self.issuer {
            validation.set_issuer(issuers.as_slice());
            // A token with no `iss` at all would otherwise pass the issuer check.
            required.push("iss");
        }
        match &self.audience {
            Some(audiences) => {
                validation.set_audience(audiences.as_slice());
                required.push("aud");
            }
            // jsonwebtoken refuses any token with an `aud` when no audience is configured.
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(required.as_slice());
        validation
    }
}

/// One key, ready to verify: its pinned algorithm and the validation built for it.
pub(crate) struct VerifyingKey {
    pub algorithm: Algorithm,
    pub decoding_key: DecodingKey,
    pub validation: Validation,
}

impl VerifyingKey {
    pub(crate) fn new(algorithm: Algorithm, decoding_key: DecodingKey, rules: &ClaimRules) -> Self {
        VerifyingKey {
            algorithm,
            decoding_key,
            validation: rules.validation(algorithm),
        }
    }
}

/// Keys by `kid`, and the keys without one (tried for tokens without a `kid`).
#[derive(Default)]
pub(crate) struct KeySet {
    pub by_kid: HashMap<String, VerifyingKey>,
    pub without_kid: Vec<VerifyingKey>,
}

impl KeySet {
    /// Adds `key`; `false` (and the key is not added) when `kid` is already taken.
    pub(crate) fn insert(&mut self, kid: Option<String>, key: VerifyingKey) -> bool {
        match kid {
            None => {
                self.without_kid.push(key);
                true
            }
            Some(kid) => {
                if self.by_kid.contains_key(&kid) {
                    return false;
                }
                self.by_kid.insert(kid, key);
                true
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.by_kid.len() + self.without_kid.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Parses a JWKS document. Keys that cannot verify tokens here (encryption keys, curves
    /// ring lacks, symmetric keys, malformed entries) are skipped with a debug line, so one odd
    /// key does not cost the others; a document with no usable key at all is an error.
    pub(crate) fn from_jwks_document(body: &[u8], rules: &ClaimRules) -> Result<KeySet, String> {
        #[derive(Deserialize)]
        struct JwksDocument {
            keys: Vec<serde_json::Value>,
        }
        let document: JwksDocument = serde_json::from_slice(body)
            .map_err(|error| format!("the answer is not a JWKS document: {error}"))?;
        let mut set = KeySet::default();
        for (index, value) in document.keys.into_iter().enumerate() {
            let jwk: Jwk = match serde_json::from_value(value) {
                Ok(jwk) => jwk,
                Err(error) => {
                    log::debug!(
                        "JWKS key #{index} skipped: not a key jsonwebtoken reads ({error})"
                    );
                    continue;
                }
            };
            let kid = jwk.common.key_id.clone();
            match verifying_key_from_jwk(&jwk, rules) {
                Ok(key) => {
                    if !set.insert(kid.clone(), key) {
                        log::debug!(
                            "JWKS key #{index} skipped: kid {:?} appears earlier in the set",
                            kid.unwrap_or_default()
                        );
                    }
                }
                Err(reason) => log::debug!(
                    "JWKS key #{index} (kid {:?}) skipped: {reason}",
                    kid.unwrap_or_default()
                ),
            }
        }
        if set.is_empty() {
            return Err("the key set has no usable signature key".to_string());
        }
        Ok(set)
    }

    /// Algorithms and kids, for the admin API.
    pub(crate) fn describe(&self) -> serde_json::Value {
        let mut named: Vec<(&String, &VerifyingKey)> = self.by_kid.iter().collect();
        named.sort_by(|left, right| left.0.cmp(right.0));
        let mut keys: Vec<serde_json::Value> = named
            .into_iter()
            .map(|(kid, key)| {
                serde_json::json!({ "kid": kid, "algorithm": algorithm_name(key.algorithm) })
            })
            .collect();
        keys.extend(self.without_kid.iter().map(
            |key| serde_json::json!({ "kid": null, "algorithm": algorithm_name(key.algorithm) }),
        ));
        serde_json::Value::Array(keys)
    }
}

/// The signature algorithm `declared` names, if it is one.
fn algorithm_from_key_algorithm(declared: KeyAlgorithm) -> Option<Algorithm> {
    Some(match declared {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        KeyAlgorithm::HS256 => Algorithm::HS256,
        KeyAlgorithm::HS384 => Algorithm::HS384,
        KeyAlgorithm::HS512 => Algorithm::HS512,
        _ => return None,
    })
}

/// The key `jwk` describes, with its algorithm: the JWK's `alg` when it has one, else the one
/// its type implies (RSA: RS256, EC P-256: ES256, P-384: ES384, OKP Ed25519: EdDSA).
fn verifying_key_from_jwk(jwk: &Jwk, rules: &ClaimRules) -> Result<VerifyingKey, String> {
    if let Some(usage) = &jwk.common.public_key_use
        && !matches!(usage, PublicKeyUse::Signature)
    {
        return Err("its use is not sig".to_string());
    }
    if let Some(operations) = &jwk.common.key_operations
        && !operations
            .iter()
            .any(|operation| matches!(operation, KeyOperations::Verify))
    {
        return Err("its key_ops do not include verify".to_string());
    }
    let algorithm = match (&jwk.algorithm, jwk.common.key_algorithm) {
        // A published key set is public: a shared secret in it would let anyone sign tokens.
        (AlgorithmParameters::OctetKey(_), _) => {
            return Err("symmetric (oct) keys are not taken from a key set".to_string());
        }
        (_, Some(declared)) => algorithm_from_key_algorithm(declared)
            .ok_or_else(|| format!("its alg {declared} is not a signature algorithm"))?,
        (AlgorithmParameters::RSA(_), None) => Algorithm::RS256,
        (AlgorithmParameters::EllipticCurve(parameters), None) => match &parameters.curve {
            EllipticCurve::P256 => Algorithm::ES256,
            EllipticCurve::P384 => Algorithm::ES384,
            other => return Err(format!("curve {other:?} is not supported")),
        },
        (AlgorithmParameters::OctetKeyPair(parameters), None) => match &parameters.curve {
            EllipticCurve::Ed25519 => Algorithm::EdDSA,
            other => return Err(format!("curve {other:?} is not supported")),
        },
    };
    let consistent = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => matches!(
            algorithm,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
        ),
        AlgorithmParameters::EllipticCurve(parameters) => matches!(
            (&parameters.curve, algorithm),
            (EllipticCurve::P256, Algorithm::ES256) | (EllipticCurve::P384, Algorithm::ES384)
        ),
        AlgorithmParameters::OctetKeyPair(parameters) => matches!(
            (&parameters.curve, algorithm),
            (EllipticCurve::Ed25519, Algorithm::EdDSA)
        ),
        AlgorithmParameters::OctetKey(_) => false,
    };
    if !consistent {
        return Err(format!(
            "its alg {} does not fit its key type",
            algorithm_name(algorithm)
        ));
    }
    let decoding_key = DecodingKey::from_jwk(jwk).map_err(|error| error.to_string())?;
    Ok(VerifyingKey::new(algorithm, decoding_key, rules))
}

/// How often a key set is fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct JwksSettings {
    /// Between refreshes when the answer has no `Cache-Control: max-age`.
    pub refresh_interval: Duration,
    /// Least time between two fetches; also the lower bound of `max-age` and the retry delay
    /// after a failed fetch.
    pub min_refresh_interval: Duration,
    /// For one whole fetch: connect, TLS, request and body.
    pub timeout: Duration,
}

impl JwksSettings {
    /// The settings as the cache uses them: every interval at least the minimum one, which is
    /// at least a millisecond (the refresh loop relies on it).
    fn normalized(self) -> JwksSettings {
        let min_refresh_interval = self.min_refresh_interval.max(Duration::from_millis(1));
        JwksSettings {
            min_refresh_interval,
            refresh_interval: self.refresh_interval.max(min_refresh_interval),
            timeout: self.timeout,
        }
    }
}

/// Caches of live config snapshots by identity (the URL, with any credentials in it, and
/// everything that changes how its answer is fetched or turned into keys), so that a reload
/// that keeps a `jwks_url` keeps its keys and its background refresh rather than starting
/// empty.
static CACHES: Registry<JwksCache> = Registry::new();

/// The key set of one `jwks_url`, shared by the config snapshots that name it with the same
/// settings. Dropping the last of them ends its background refresh.
pub(crate) struct JwksCache {
    url: http::Uri,
    settings: JwksSettings,
    rules: ClaimRules,
    keys: ArcSwap<KeySet>,
    /// Whether a fetch has ever succeeded.
    loaded: AtomicBool,
    /// Whether the last fetch failed: the warning is logged once per streak of failures.
    failing: AtomicBool,
    /// The origin of the millisecond counts below.
    created: Instant,
    /// When the last fetch started, in milliseconds since `created` plus one; 0: never.
    last_attempt_millis: AtomicU64,
    /// The last answer's `max-age`, clamped, in milliseconds; 0: it had none.
    refresh_after_millis: AtomicU64,
    /// Whether the background refresh was started.
    started: AtomicBool,
    /// Whether a fetch is under way: at most one at a time, so two answers never race to be
    /// installed (an older one overwriting a newer set).
    fetching: AtomicBool,
    /// Counts finished fetches, successful or not: requests waiting for keys and the
    /// background task watch it. Dropped with the cache, which also tells a sleeping
    /// background task to end now rather than at its next wake-up (up to a day away).
    fetches: tokio::sync::watch::Sender<u64>,
    /// Built on the first fetch, so that checking a config (`loom -t`) sets up no TLS client;
    /// `None` when that failed.
    client: OnceLock<Option<HttpClient>>,
}

impl fmt::Debug for JwksCache {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("JwksCache")
            .field("url", &display_url(&self.url))
            .field("settings", &self.settings)
            .field("keys", &self.keys.load().len())
            .finish_non_exhaustive()
    }
}

impl JwksCache {
    /// The cache for `url` with these settings and claim rules: the live one when a config
    /// snapshot still holds it (a reload keeps its keys and its background refresh), else a
    /// new, empty one. Registered by `Weak` reference only, so a cache no snapshot uses is
    /// dropped.
    pub(crate) fn shared(
        url: http::Uri,
        settings: JwksSettings,
        rules: ClaimRules,
    ) -> Arc<JwksCache> {
        let settings = settings.normalized();
        let identity = format!("{url}\u{0}{settings:?}\u{0}{rules:?}");
        CACHES.shared(identity, || JwksCache::new(url, settings, rules))
    }

    /// A cache of its own, shared with nobody (see [`Self::shared`]).
    pub(crate) fn new(url: http::Uri, settings: JwksSettings, rules: ClaimRules) -> JwksCache {
        let settings = settings.normalized();
        let (fetches, _) = tokio::sync::watch::channel(0u64);
        JwksCache {
            url,
            settings,
            rules,
            keys: ArcSwap::from_pointee(KeySet::default()),
            loaded: AtomicBool::new(false),
            failing: AtomicBool::new(false),
            created: Instant::now(),
            last_attempt_millis: AtomicU64::new(0),
            refresh_after_millis: AtomicU64::new(0),
            started: AtomicBool::new(false),
            fetching: AtomicBool::new(false),
            fetches,
            client: OnceLock::new(),
        }
    }

    /// Whether a fetch has ever succeeded.
    pub(crate) fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// Until when a request that started waiting for keys at `now` may wait: one fetch
    /// timeout.
    pub(crate) fn wait_deadline(&self, now: Instant) -> Instant {
        now.checked_add(self.settings.timeout.min(MAX_REFRESH_INTERVAL))
            .unwrap_or(now)
    }

    /// The current key set (empty until the first fetch succeeds). Lock-free; do not hold the
    /// guard across an await.
    pub(crate) fn keys(&self) -> Guard<Arc<KeySet>> {
        self.keys.load()
    }

    /// Starts the background refresh on the current Tokio runtime, once. Called by every
    /// request (one atomic load after the first), because only a request runs on the
    /// gateway's runtime; a config check never starts one.
    pub(crate) fn start_refreshing(self: &Arc<Self>) {
        if self.started.load(Ordering::Acquire) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        runtime.spawn(refresh_loop(Arc::downgrade(self)));
    }

    /// Claims the right to fetch now: `true` for one caller when no fetch is under way and
    /// the last one started at least `jwks_min_refresh_interval` ago; everyone else gets
    /// `false`. The caller then runs [`Self::refresh`], which ends the claim.
    pub(crate) fn claim_fetch(&self, now: Instant) -> bool {
        let now_millis = self.millis_since_created(now);
        let min_millis = saturating_millis(self.settings.min_refresh_interval);
        let too_soon = |last: u64| last != 0 && now_millis.saturating_sub(last) < min_millis;
        // Looked at before the flag is taken, so a flood of unknown kids does not flip it.
        if too_soon(self.last_attempt_millis.load(Ordering::Acquire))
            || self.fetching.load(Ordering::Acquire)
        {
            return false;
        }
        if self
            .fetching
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        // Another fetch may have started and finished since the first look.
        if too_soon(self.last_attempt_millis.load(Ordering::Acquire)) {
            self.finish_fetch();
            return false;
        }
        self.last_attempt_millis
            .store(now_millis, Ordering::Release);
        true
    }

    /// Ends the fetch under way (or a claim given back) and wakes whoever waits for it. The
    /// flag is cleared first: a waiter that subscribes after the wake-up then sees no fetch
    /// under way rather than waiting for one that has ended.
    fn finish_fetch(&self) {
        self.fetching.store(false, Ordering::Release);
        self.fetches
            .send_modify(|count| *count = count.wrapping_add(1));
    }

    /// For a request whose key is in no set: joins the fetch under way, or starts one when
    /// [`Self::claim_fetch`] allows it, and waits until it ends or `deadline` passes. `true`
    /// when a fetch ended while waiting (look again; calling again may wait for the next
    /// one), `false` when there was nothing to wait for or the deadline passed. Either way
    /// the caller looks the key up again: a fetch may have ended just before the call. No
    /// lock is held while waiting.
    pub(crate) async fn wait_for_fetch(self: &Arc<Self>, deadline: Instant) -> bool {
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        // Subscribed before looking at `fetching`, so a fetch ending in between still wakes
        // this request.
        let mut finished = self.fetches.subscribe();
        if self.claim_fetch(now) {
            self.spawn_fetch();
        } else if !self.fetching.load(Ordering::Acquire) {
            return false;
        }
        matches!(
            tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), finished.changed())
                .await,
            Ok(Ok(()))
        )
    }

    /// Runs a claimed fetch as a task of its own, so that it ends (and wakes its waiters) even
    /// when the request that started it is gone.
    fn spawn_fetch(self: &Arc<Self>) {
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let cache = Arc::clone(self);
                runtime.spawn(async move {
                    cache.refresh().await;
                });
            }
            Err(_) => self.finish_fetch(),
        }
    }

    /// Fetches the key set and installs it; on failure the previous set stays. Callers claim
    /// the fetch first ([`Self::claim_fetch`]); the claim ends when this does, also when it is
    /// cancelled. `true` when a new set was installed.
    pub(crate) async fn refresh(&self) -> bool {
        // Dropped last, after the new set is installed.
        let _in_flight = FetchInFlight(self);
        match self.fetch().await {
            Ok((set, max_age)) => {
                let count = set.len();
                self.keys.store(Arc::new(set));
                self.loaded.store(true, Ordering::Release);
                let refresh_after = max_age.map(|age| {
                    age.max(self.settings.min_refresh_interval)
                        .min(MAX_REFRESH_INTERVAL)
                });
                self.refresh_after_millis.store(
                    refresh_after.map_or(0, saturating_millis),
                    Ordering::Release,
                );
                if self.failing.swap(false, Ordering::AcqRel) {
                    log::info!(
                        "jwt_auth: the key set at {} is fetched again ({count} keys)",
                        display_url(&self.url)
                    );
                } else {
                    log::debug!(
                        "jwt_auth: fetched {count} keys from {}",
                        display_url(&self.url)
                    );
                }
                true
            }
            Err(reason) => {
                let kept = self.keys.load().len();
                if self.failing.swap(true, Ordering::AcqRel) {
                    log::debug!(
                        "jwt_auth: fetching the key set at {} failed again: {reason}",
                        display_url(&self.url)
                    );
                } else {
                    log::warn!(
                        "jwt_auth: fetching the key set at {} failed: {reason}; the {kept} keys \
                         fetched before stay in use",
                        display_url(&self.url)
                    );
                }
                false
            }
        }
    }

    /// How long the background task waits before its next fetch: none before the first
    /// attempt, then the refresh interval (the last `max-age`, else `jwks_refresh_interval`)
    /// after the last attempt, or the minimum interval while no set is loaded or the last
    /// fetch failed.
    fn next_refresh_delay(&self, now: Instant) -> Duration {
        let last = self.last_attempt_millis.load(Ordering::Acquire);
        if last == 0 {
            return Duration::ZERO;
        }
        let healthy = self.loaded.load(Ordering::Acquire) && !self.failing.load(Ordering::Acquire);
        let interval_millis = if healthy {
            match self.refresh_after_millis.load(Ordering::Acquire) {
                0 => saturating_millis(self.settings.refresh_interval),
                from_max_age => from_max_age,
            }
        } else {
            saturating_millis(self.settings.min_refresh_interval)
        };
        let elapsed = self.millis_since_created(now).saturating_sub(last);
        Duration::from_millis(interval_millis.saturating_sub(elapsed))
    }

    fn millis_since_created(&self, now: Instant) -> u64 {
        saturating_millis(now.saturating_duration_since(self.created)).saturating_add(1)
    }

    fn client(&self) -> Option<&HttpClient> {
        self.client
            .get_or_init(|| match build_client() {
                Ok(client) => Some(client),
                Err(reason) => {
                    log::warn!("jwt_auth: no HTTP client for key sets: {reason}");
                    None
                }
            })
            .as_ref()
    }

    /// One GET of the key set within the timeout; the set and the answer's `max-age`.
    async fn fetch(&self) -> Result<(KeySet, Option<Duration>), String> {
        let client = self
            .client()
            .ok_or_else(|| "no HTTP client could be built".to_string())?;
        let request = http::Request::get(self.url.clone())
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|error| format!("bad request: {error}"))?;
        let timeout = self.settings.timeout;
        let exchange = async {
            let response = client
                .request(request)
                .await
                .map_err(|error| error_chain(&error))?;
            let status = response.status();
            if !status.is_success() {
                return Err(format!("the answer was {status}"));
            }
            let max_age = max_age(response.headers());
            let body = Limited::new(response.into_body(), MAX_JWKS_BODY)
                .collect()
                .await
                .map_err(|error| format!("reading the answer: {error}"))?
                .to_bytes();
            Ok::<_, String>((body, max_age))
        };
        let (body, max_age) = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| format!("no answer within {timeout:?}"))??;
        let set = KeySet::from_jwks_document(&body, &self.rules)?;
        Ok((set, max_age))
    }

    /// The settings and the keys currently held, for the admin API.
    pub(crate) fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "url": display_url(&self.url),
            "refresh_interval_seconds": self.settings.refresh_interval.as_secs_f64(),
            "min_refresh_interval_seconds": self.settings.min_refresh_interval.as_secs_f64(),
            "timeout_seconds": self.settings.timeout.as_secs_f64(),
            "loaded": self.loaded.load(Ordering::Acquire),
            "fetching": self.fetching.load(Ordering::Acquire),
            "last_fetch_failed": self.failing.load(Ordering::Acquire),
            "keys": self.keys.load().describe(),
        })
    }
}

/// Ends a fetch's claim when dropped: when the fetch is done, or cancelled.
struct FetchInFlight<'a>(&'a JwksCache);

impl Drop for FetchInFlight<'_> {
    fn drop(&mut self) {
        self.0.finish_fetch();
    }
}

/// The background refresh: fetches at once, then on schedule. Holds only a `Weak` between
/// fetches, so it never keeps a replaced config's cache alive, and ends when the cache is
/// dropped.
async fn refresh_loop(cache: Weak<JwksCache>) {
    loop {
        // Subscribed before the claim, so a fetch ending meanwhile wakes the wait below.
        let (mut delay, mut finished) = match cache.upgrade() {
            Some(live) => (
                live.next_refresh_delay(Instant::now()),
                live.fetches.subscribe(),
            ),
            None => return,
        };
        if delay.is_zero() {
            let Some(live) = cache.upgrade() else {
                return;
            };
            if live.claim_fetch(Instant::now()) {
                live.refresh().await;
                continue;
            }
            // A request's fetch is under way (or has just ended): wait for its end, after
            // which the next delay counts from its attempt.
            delay = live.settings.min_refresh_interval;
        }
        // Wakes when the delay passes or a fetch ends; `changed` fails when the cache, which
        // owns the sender, is dropped.
        if let Ok(Err(_)) = tokio::time::timeout(delay, finished.changed()).await {
            return;
        }
    }
}

/// An HTTP/1.1 client for `http` and `https` key set URLs. Connections are not kept between
/// fetches minutes apart, so no stale pooled connection can fail one.
fn build_client() -> Result<HttpClient, String> {
    let connector = crate::outbound::connector()?;
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(connector);
    Ok(client)
}

/// `max-age` of the `Cache-Control` headers, if any.
fn max_age(headers: &http::HeaderMap) -> Option<Duration> {
    for value in headers.get_all(http::header::CACHE_CONTROL) {
        let Ok(text) = value.to_str() else {
            continue;
        };
        for directive in text.split(',') {
            let Some((name, seconds)) = directive.split_once('=') else {
                continue;
            };
            if name.trim().eq_ignore_ascii_case("max-age")
                && let Ok(seconds) = seconds.trim().trim_matches('"').parse::<u64>()
            {
                return Some(Duration::from_secs(seconds));
            }
        }
    }
    None
}

/// An error and its causes on one line: hyper's own message ("client error (Connect)") says
/// little without them.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The URL without user information or query, which may carry credentials.
pub(crate) fn display_url(url: &http::Uri) -> String {
    let scheme = url.scheme_str().unwrap_or("http");
    let host = url.authority().map_or("", |authority| {
        authority
            .as_str()
            .rsplit_once('@')
            .map_or(authority.as_str(), |(_, host)| host)
    });
    format!("{scheme}://{host}{}", url.path())
}

fn saturating_millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Keys and a one-shot HTTP server for the tests of this module and of `jwt_auth`.
#[cfg(test)]
pub(crate) mod testing {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A 2048-bit RSA key made for these tests only (PKCS#1).
    pub(crate) const RSA_PRIVATE_PEM: &str = "-----BEGIN RSA PRIVATE KEY-----
MIIEowIBAAKCAQEAyWW489x9QNOVz7g1VPn9nK9ejHQxlATJoUu8n85/yjORv2+O
iEq5vcufxhb+DKA8j4h87no2pZHLOAaEsZZV6zgG9Zgm+Fu1RC8ub3F3TlZv9dvH
3h/toN1IIgq3nkR1c9ele4Z+yTKXB+vuFskacOIr1684MHJDWFS8FJtU/k0rePiF
VSK7js2S8RkBFe1wy0UfY0pMnN78ctRaQT3oZVu7NNEyyow5+Ks0b78iLLBS8MKg
o0/mC8USO0eHRLvkw7IIOKBfH1VLS/rltxMG29PeXAz3m2ixDhCnLQKNKLRH9VoV
4VHnV3zaB8LzcaTYqbIEXEgSPnFEB3hIuZ6h6wIDAQABAoIBAFVyF/c2m9mOK2hW
siHccnIwoT+b6JDxOw540I1IkkUafgKndOR0N7vDkYT8qkp3DVqkQMT5CwhSA9NA
SLoDm25Rdfpq1FXYqt5D2kKj9EdDOvsnhPPDvhDa8UioHWFDkEVWv7nZxR7dnOBa
g8gdCF/ORWWbzI4ZXGM0iBuCD5xYJamGLvt5A9NM+LW3PjcVXPlVKlv9C8ydMp1A
foEjm9IBFTmBRio012ASKVPkJqG8nWozyIHrs5/OUx3M+Gb7pnP9VohBn8O5XrWx
3jATZ2Oy/DUEvBPNsvnzx0FnKDNvBwbvUgm6J1a5UggseKa22ghLROmyUtG+ud2t
7zHzAAkCgYEA+z+HwuruSCCQNwYXmKWPLC0Hebugov5mhqAY/AH8DzUvUmuorAMX
laYmRGnT42I2LVuqcYIW6uPibuyQse1a+QKAnMK5kKJqj5FIa/TW7XX7hbmnqLtr
7ny5j9uFBxWmpk/O6XGE0NmUorwDllciw8OMKDxpuEohIS0FsrSo9mcCgYEAzTTU
ReJroCVgpjie6ZBUXF2f/VmX0ke48Z21OrYns3FxT+5EXLn3pIHdpwCJoyXkFLUr
dPxf1FpZZkE+W7L8zzdiixvRr4Mx4X7m2JKcX04yuQgINyl6wBXGjtwr1XhPOhZA
lDLsPmCo386AGE6rlG7G0tNkqs80MlE6iPu93d0CgYEAnqwfpDTUaY7PJUDetBOS
2PZTK0kYiPebblg7jyP9uOkAys+dBY0qXuNAdaJUI91Jk9m5Sdg7evqSbTVPqF7b
PjmbWeUMZlB8ddDt6OgGuI7zWx/Fx6Ud4863LigX2kKNLalnZjzAAVn4KdINfevn
07RylpKYvb9rLtWNLLA1qO8CgYAEG6qkO4QsEJN+wGNuCZWmw7kQOVrwur7ZF28p
Xbwtu3epQfvcX1y1zmPBlCEtQvTt9TKJhQPmHGjtwyCcdVjaTSGL52KrQNUezouQ
il7XCZm6Wo7Pi+UJM2ZmNcIq492yK//e96YDGaxHzrqBwhFtR0pzrge147AH0dh6
JZAHgQKBgC7V/2NvqyoGzZIDqdNFulzuNWvsPV0ZZ6Epn52eJyna0rUkvKpFtZE3
JxJc8YjH5YQUlvx5nGcc3c3MY3wEfl0qWjbjvimG4Zym5FuEy0+FCQwIGd+G1apV
z+t/f8PpXXNoPSpsLGl8airZAMj3ODqVAIr2bG28X4Mtu3KXkHd/
-----END RSA PRIVATE KEY-----
";

    pub(crate) const RSA_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAyWW489x9QNOVz7g1VPn9
nK9ejHQxlATJoUu8n85/yjORv2+OiEq5vcufxhb+DKA8j4h87no2pZHLOAaEsZZV
6zgG9Zgm+Fu1RC8ub3F3TlZv9dvH3h/toN1IIgq3nkR1c9ele4Z+yTKXB+vuFska
cOIr1684MHJDWFS8FJtU/k0rePiFVSK7js2S8RkBFe1wy0UfY0pMnN78ctRaQT3o
ZVu7NNEyyow5+Ks0b78iLLBS8MKgo0/mC8USO0eHRLvkw7IIOKBfH1VLS/rltxMG
29PeXAz3m2ixDhCnLQKNKLRH9VoV4VHnV3zaB8LzcaTYqbIEXEgSPnFEB3hIuZ6h
6wIDAQAB
-----END PUBLIC KEY-----
";

    /// The RSA key's modulus, base64url, as a JWK's `n`.
    pub(crate) const RSA_MODULUS: &str = "yWW489x9QNOVz7g1VPn9nK9ejHQxlATJoUu8n85_yjORv2-OiEq5vcufxhb-DKA8j4h87no2pZHLOAaEsZZV6zgG9Zgm-Fu1RC8ub3F3TlZv9dvH3h_toN1IIgq3nkR1c9ele4Z-yTKXB-vuFskacOIr1684MHJDWFS8FJtU_k0rePiFVSK7js2S8RkBFe1wy0UfY0pMnN78ctRaQT3oZVu7NNEyyow5-Ks0b78iLLBS8MKgo0_mC8USO0eHRLvkw7IIOKBfH1VLS_rltxMG29PeXAz3m2ixDhCnLQKNKLRH9VoV4VHnV3zaB8LzcaTYqbIEXEgSPnFEB3hIuZ6h6w";

    /// A P-256 key made for these tests only (PKCS#8), and its public half.
    pub(crate) const EC_PRIVATE_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg4cecC20Qc/+MSRur
EoMhrxTpvR/78HCFPB7Vym5855mhRANCAASzztAFMT8ZeCY3N8N1wt1eJLaBNx7j
8SdOBJNlqKbt+yNYb3M8rJ66YoKj3H1qIw+GsuJENVyChxAm3LIrLKCs
-----END PRIVATE KEY-----
";

    pub(crate) const EC_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEs87QBTE/GXgmNzfDdcLdXiS2gTce
4/EnTgSTZaim7fsjWG9zPKyeumKCo9x9aiMPhrLiRDVcgocQJtyyKyygrA==
-----END PUBLIC KEY-----
";

    /// The P-256 key's point, base64url, as a JWK's `x` and `y`.
    pub(crate) const EC_X: &str = "s87QBTE_GXgmNzfDdcLdXiS2gTce4_EnTgSTZaim7fs";
    pub(crate) const EC_Y: &str = "I1hvczysnrpigqPcfWojD4ay4kQ1XIKHECbcsissoKw";

    /// An Ed25519 key made for these tests only (PKCS#8), and its public half.
    pub(crate) const ED_PRIVATE_PEM: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIJg3LH5WqZ0g74kuS2luZYDWHXz9nqqz/u/RLnuIZHUM
-----END PRIVATE KEY-----
";

    pub(crate) const ED_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAorH/4Ga65bqK0VAUN+Sya89Adli+A9C1pmnUuunloY4=
-----END PUBLIC KEY-----
";

    /// The Ed25519 public key, base64url, as a JWK's `x`.
    pub(crate) const ED_X: &str = "orH_4Ga65bqK0VAUN-Sya89Adli-A9C1pmnUuunloY4";

    /// A JWKS with the three public keys above, kids `rsa-1`, `ec-1` and `ed-1`.
    pub(crate) fn jwks_document() -> String {
        serde_json::json!({
            "keys": [
                {"kty": "RSA", "kid": "rsa-1", "use": "sig", "n": RSA_MODULUS, "e": "AQAB"},
                {"kty": "EC", "kid": "ec-1", "crv": "P-256", "x": EC_X, "y": EC_Y},
                {"kty": "OKP", "kid": "ed-1", "crv": "Ed25519", "x": ED_X},
            ]
        })
        .to_string()
    }

    /// A whole HTTP/1.1 answer with a JSON body; `extra_headers` end with CRLF each.
    pub(crate) fn http_answer(status: &str, extra_headers: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n{extra_headers}\r\n{body}",
            body.len()
        )
    }

    /// Serves `answers` in order, one per connection, on a local port.
    pub(crate) async fn serve(answers: Vec<String>) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            for answer in answers {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let mut request = Vec::new();
                let mut chunk = [0u8; 1024];
                loop {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(read) => request.extend_from_slice(&chunk[..read]),
                    }
                    if request.windows(4).any(|window| window == b"\r\n\r\n") {
                        break;
                    }
                }
                let _ = stream.write_all(answer.as_bytes()).await;
                let _ = stream.shutdown().await;
            }
        });
        address
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    fn rules() -> ClaimRules {
        ClaimRules {
            leeway_seconds: 30,
            ..ClaimRules::default()
        }
    }

    fn settings() -> JwksSettings {
        JwksSettings {
            refresh_interval: Duration::from_secs(300),
            min_refresh_interval: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
        }
    }

    #[test]
    fn key_sets_take_signature_keys_and_infer_their_algorithms() {
        let document = serde_json::json!({
            "keys": [
                {"kty": "RSA", "kid": "rsa-1", "use": "sig", "n": RSA_MODULUS, "e": "AQAB"},
                {"kty": "RSA", "kid": "pss", "alg": "PS256", "n": RSA_MODULUS, "e": "AQAB"},
                {"kty": "EC", "kid": "ec-1", "crv": "P-256", "x": EC_X, "y": EC_Y},
                {"kty": "OKP", "kid": "ed-1", "crv": "Ed25519", "x": ED_X},
                {"kty": "OKP", "crv": "Ed25519", "x": ED_X},
                // Skipped: an encryption key, a symmetric key, a curve ring lacks, an `alg`
                // that does not fit the key, a key type nobody knows, and a repeated kid.
                {"kty": "RSA", "kid": "enc", "use": "enc", "n": RSA_MODULUS, "e": "AQAB"},
                {"kty": "oct", "kid": "shared", "k": "c2VjcmV0"},
                {"kty": "EC", "kid": "p521", "crv": "P-521", "x": EC_X, "y": EC_Y},
                {"kty": "RSA", "kid": "mismatch", "alg": "ES256", "n": RSA_MODULUS, "e": "AQAB"},
                {"kty": "weird", "kid": "weird"},
                {"kty": "EC", "kid": "rsa-1", "crv": "P-256", "x": EC_X, "y": EC_Y},
            ]
        })
        .to_string();
        let set = KeySet::from_jwks_document(document.as_bytes(), &rules()).unwrap();
        let algorithm_of = |kid: &str| set.by_kid.get(kid).map(|key| key.algorithm);
        assert_eq!(algorithm_of("rsa-1"), Some(Algorithm::RS256));
        assert_eq!(algorithm_of("pss"), Some(Algorithm::PS256));
        assert_eq!(algorithm_of("ec-1"), Some(Algorithm::ES256));
        assert_eq!(algorithm_of("ed-1"), Some(Algorithm::EdDSA));
        assert_eq!(set.by_kid.len(), 4);
        assert_eq!(set.without_kid.len(), 1);
        let key = set.by_kid.get("ec-1").unwrap();
        assert_eq!(key.validation.algorithms, vec![Algorithm::ES256]);
        assert_eq!(key.validation.leeway, 30);
        assert!(!key.validation.validate_aud);
    }

    #[test]
    fn a_document_without_usable_keys_is_an_error() {
        let only_encryption =
            r#"{"keys": [{"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"}]}"#;
        assert!(KeySet::from_jwks_document(only_encryption.as_bytes(), &rules()).is_err());
        assert!(KeySet::from_jwks_document(b"<html>", &rules()).is_err());
        assert!(KeySet::from_jwks_document(b"{}", &rules()).is_err());
    }

    #[test]
    fn issuer_and_audience_become_required_claims_when_configured() {
        let configured = ClaimRules {
            issuer: Some(vec!["https://issuer.example".into()]),
            audience: Some(vec!["api".into()]),
            leeway_seconds: 5,
        };
        let validation = configured.validation(Algorithm::RS256);
        for claim in ["exp", "iss", "aud"] {
            assert!(validation.required_spec_claims.contains(claim), "{claim}");
        }
        assert!(validation.validate_aud && validation.validate_nbf && validation.validate_exp);
        let open = rules().validation(Algorithm::HS256);
        assert_eq!(open.required_spec_claims.len(), 1);
        assert!(!open.validate_aud);
    }

    #[test]
    fn max_age_is_read_from_cache_control() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(max_age(&headers), None);
        headers.insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("public, Max-Age=600, must-revalidate"),
        );
        assert_eq!(max_age(&headers), Some(Duration::from_secs(600)));
        headers.insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("no-cache"),
        );
        assert_eq!(max_age(&headers), None);
    }

    #[test]
    fn one_fetch_per_minimum_interval_is_claimed() {
        let cache = JwksCache::new(
            "http://127.0.0.1:1/jwks.json".parse().unwrap(),
            settings(),
            rules(),
        );
        // Before any attempt the background task fetches at once.
        assert_eq!(cache.next_refresh_delay(Instant::now()), Duration::ZERO);
        let start = Instant::now();
        assert!(cache.claim_fetch(start));
        // One fetch at a time, however long it takes.
        assert!(!cache.claim_fetch(start + Duration::from_secs(11)));
        cache.finish_fetch();
        assert!(!cache.claim_fetch(start));
        assert!(!cache.claim_fetch(start + Duration::from_secs(9)));
        assert!(cache.claim_fetch(start + Duration::from_secs(11)));
        cache.finish_fetch();
        // Nothing loaded yet: the background task retries at the minimum interval.
        let delay = cache.next_refresh_delay(start + Duration::from_secs(11));
        assert!(delay <= Duration::from_secs(10), "{delay:?}");
    }

    #[test]
    fn urls_are_shown_without_credentials_or_query() {
        let url: http::Uri = "https://user:secret@issuer.example/keys?token=x"
            .parse()
            .unwrap();
        assert_eq!(display_url(&url), "https://issuer.example/keys");
    }

    #[tokio::test]
    async fn a_failed_fetch_keeps_the_last_good_set() {
        let document = jwks_document();
        let address = serve(vec![
            http_answer("200 OK", "cache-control: max-age=120\r\n", &document),
            http_answer("500 Internal Server Error", "", "{}"),
            http_answer("200 OK", "", "not json"),
        ])
        .await;
        let cache = JwksCache::new(
            format!("http://{address}/jwks.json").parse().unwrap(),
            settings(),
            rules(),
        );
        assert!(cache.keys().is_empty());
        assert!(cache.refresh().await);
        assert_eq!(cache.keys().len(), 3);
        assert_eq!(
            cache.refresh_after_millis.load(Ordering::Acquire),
            120_000,
            "max-age is the refresh interval"
        );
        assert!(!cache.refresh().await);
        assert!(!cache.refresh().await);
        assert_eq!(cache.keys().len(), 3);
        assert!(cache.failing.load(Ordering::Acquire));
        assert_eq!(cache.describe()["keys"].as_array().unwrap().len(), 3);
    }

    #[tokio::test]
    async fn a_request_waits_for_the_fetch_under_way() {
        let address = serve(vec![http_answer("200 OK", "", &jwks_document())]).await;
        let cache = Arc::new(JwksCache::new(
            format!("http://{address}/jwks.json").parse().unwrap(),
            settings(),
            rules(),
        ));
        assert!(cache.claim_fetch(Instant::now()));
        let waiter = {
            let cache = Arc::clone(&cache);
            tokio::spawn(async move {
                let deadline = cache.wait_deadline(Instant::now());
                let waited = cache.wait_for_fetch(deadline).await;
                (waited, cache.keys().len())
            })
        };
        // The waiter finds the fetch under way and joins it rather than starting another.
        tokio::task::yield_now().await;
        assert!(cache.refresh().await);
        assert_eq!(waiter.await.unwrap(), (true, 3));
        // Nothing under way and the minimum interval not over: nothing to wait for.
        let deadline = cache.wait_deadline(Instant::now());
        assert!(!cache.wait_for_fetch(deadline).await);
        assert!(!cache.fetching.load(Ordering::Acquire));
    }

    #[tokio::test]
    async fn an_unreachable_key_set_fails_within_the_timeout() {
        // Nothing listens on port 1; a refused connection fails fast, and the timeout bounds
        // the rest.
        let cache = JwksCache::new(
            "http://127.0.0.1:1/jwks.json".parse().unwrap(),
            settings(),
            rules(),
        );
        assert!(!cache.refresh().await);
        assert!(cache.keys().is_empty());
    }
}
