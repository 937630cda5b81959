//! `jwt_auth`: bearer tokens (JSON Web Tokens) verified at the gateway, so upstreams receive
//! only requests whose token is signed by a trusted key and still valid, plus the caller's
//! identity in headers they can trust.
//!
//! Keys come from the config (PEM public keys, or shared secrets for HS*) and/or from the
//! issuer's JWKS URL ([`super::jwks`]). Each key has one algorithm and a token is checked only
//! with it: a token whose header names another algorithm is refused before any signature
//! check, which is what stops `alg: none` and the HS/RS confusion (an HS256 token "signed"
//! with an RSA key's public PEM as the secret). `exp` is required, `nbf` is checked when
//! present, `iss` and `aud` when configured, all with a small clock-skew allowance.
//!
//! The token is read from `Authorization: Bearer`, then a cookie, then a query parameter.
//! With `hide_credentials`, every configured source is cleared before the request goes
//! upstream, not only the one the token was read from, since an upstream that never needs a
//! token should not be able to leak or replay it (nor one sent alongside it). Forwarded claim
//! headers are always removed from the client's request first, so a client cannot forge them.
//!
//! A token whose key is not loaded yet (the first requests after a start, or a `kid` the
//! issuer just rotated in) waits for the key set fetch under way, or starts one, and is
//! checked again when it ends; see [`super::jwks`].
//!
//! Verification is [`jsonwebtoken`] on ring, the crypto Pingora's rustls already links. A
//! request costs one header parse into a stack buffer (to pick the key by `kid`) and what
//! `jsonwebtoken::decode` itself allocates.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{AUTHORIZATION, COOKIE, WWW_AUTHENTICATE};
use http::{HeaderName, HeaderValue};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey};
use pingora::http::RequestHeader;
use pingora::proxy::Session;
use serde::Deserialize;

use super::jwks::{
    ALGORITHM_NAMES, ClaimRules, JwksCache, JwksSettings, KeySet, VerifyingKey,
    algorithm_from_name, algorithm_name, is_shared_secret,
};
use super::{RequestInput, Verdict};
use crate::config::schema::OneOrMany;
use crate::config::units::DurationValue;

/// The claims of a verified token.
pub(crate) type Claims = serde_json::Map<String, serde_json::Value>;

/// Why a token was refused: the metric's reason label and the message of the 401.
pub(crate) type Refusal = (&'static str, &'static str);

const MISSING: Refusal = ("missing", "the request carries no bearer token");
const MALFORMED: Refusal = ("invalid", "the token is not a well-formed JWT");
const UNSIGNED: Refusal = ("invalid", "unsigned tokens (alg none) are not accepted");
const UNSUPPORTED_ALGORITHM: Refusal = ("invalid", "the token's algorithm is not supported");
const WRONG_ALGORITHM: Refusal = (
    "invalid",
    "the token's algorithm is not its key's algorithm",
);
const BAD_SIGNATURE: Refusal = ("invalid", "the token's signature does not verify");
const NO_EXPIRY: Refusal = ("invalid", "the token has no valid expiry (exp)");
const EXPIRED: Refusal = ("expired", "the token has expired");
const NOT_YET_VALID: Refusal = ("not_yet_valid", "the token is not valid yet (nbf)");
const WRONG_ISSUER: Refusal = ("wrong_issuer", "the token is not from an accepted issuer");
const NO_ISSUER: Refusal = ("wrong_issuer", "the token names no issuer (iss)");
const WRONG_AUDIENCE: Refusal = ("wrong_audience", "the token is not meant for this audience");
const NO_AUDIENCE: Refusal = ("wrong_audience", "the token names no audience (aud)");
const UNKNOWN_KID: Refusal = ("unknown_key", "the token's key (kid) is not known");
const NO_KID: Refusal = (
    "unknown_key",
    "the token names no key (kid) and no key without a kid is configured",
);

/// Room for a decoded JOSE header; longer headers (certificate chains in `x5c`) take the
/// slower, allocating parse.
const HEADER_BUFFER_BYTES: usize = 1024;
/// Largest `clock_skew`: more would accept tokens long expired.
const MAX_CLOCK_SKEW: Duration = Duration::from_secs(60 * 60);

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtAuthConfig {
    /// Static keys; a token with a `kid` uses only the key with that kid, a token without one
    /// tries the keys without one.
    pub keys: Vec<JwtKeyConfig>,
    /// The issuer's JSON Web Key Set (`http` or `https`).
    pub jwks_url: Option<String>,
    /// Between refreshes when the JWKS answer has no `Cache-Control: max-age`.
    pub jwks_refresh_interval: DurationValue,
    /// Least time between two fetches, however many unknown kids arrive.
    pub jwks_min_refresh_interval: DurationValue,
    pub jwks_timeout: DurationValue,
    /// Accepted `iss` values (one or a list); a token must name one of them when given.
    pub issuer: Option<OneOrMany>,
    /// Accepted `aud` values (one or a list); a token must name one of them when given.
    pub audience: Option<OneOrMany>,
    /// Allowed clock difference with the issuer, for `exp` and `nbf`.
    pub clock_skew: DurationValue,
    /// Header with `Bearer <token>` (any other header may also carry the bare token);
    /// `""` = not read.
    pub from_header: String,
    /// Cookie holding the token.
    pub from_cookie: Option<String>,
    /// Query parameter holding the token.
    pub from_query: Option<String>,
    /// Claim whose value becomes the consumer; `""` = none.
    pub consumer_claim: String,
    /// Upstream header naming the consumer; `""` = not sent.
    pub consumer_header: String,
    /// Claim name → upstream header; string, number and boolean claims are forwarded.
    pub claims_to_headers: BTreeMap<String, String>,
    /// Whether the token is removed before the request goes upstream.
    pub hide_credentials: bool,
    /// The realm of the `WWW-Authenticate: Bearer` challenge.
    pub realm: String,
}

impl Default for JwtAuthConfig {
    fn default() -> Self {
        JwtAuthConfig {
            keys: Vec::new(),
            jwks_url: None,
            jwks_refresh_interval: DurationValue(Duration::from_secs(5 * 60)),
            jwks_min_refresh_interval: DurationValue(Duration::from_secs(10)),
            jwks_timeout: DurationValue(Duration::from_secs(5)),
            issuer: None,
            audience: None,
            clock_skew: DurationValue(Duration::from_secs(30)),
            from_header: AUTHORIZATION.as_str().to_string(),
            from_cookie: None,
            from_query: None,
            consumer_claim: "sub".to_string(),
            consumer_header: "X-Consumer".to_string(),
            claims_to_headers: BTreeMap::new(),
            hide_credentials: true,
            realm: "loom".to_string(),
        }
    }
}

/// One static key: an algorithm and its key material.
#[derive(Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtKeyConfig {
    pub kid: Option<String>,
    /// RS256 RS384 RS512 PS256 PS384 PS512 ES256 ES384 EdDSA HS256 HS384 HS512.
    pub algorithm: String,
    /// PEM public key (RS*, PS*, ES*, EdDSA).
    pub public_key: Option<String>,
    /// File with the PEM public key, relative to the config's directory.
    pub public_key_file: Option<String>,
    /// Shared secret as text (HS*).
    pub secret: Option<String>,
    /// Shared secret in base64 (HS*).
    pub secret_base64: Option<String>,
}

/// Secrets never reach a log line.
impl fmt::Debug for JwtKeyConfig {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hidden = |given: bool| given.then_some("<hidden>");
        formatter
            .debug_struct("JwtKeyConfig")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .field("public_key", &self.public_key)
            .field("public_key_file", &self.public_key_file)
            .field("secret", &hidden(self.secret.is_some()))
            .field("secret_base64", &hidden(self.secret_base64.is_some()))
            .finish()
    }
}

/// Where the token of a request was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenSource {
    Header,
    Cookie,
    Query,
}

/// The outcome of the first verification of a request.
enum Attempt {
    Done(Result<Claims, Refusal>),
    /// The key may come with the next key set: the token, owned so that no borrow of the
    /// request is held while waiting for the fetch.
    AwaitKeys(String),
}

/// The compiled policy.
pub struct JwtAuth {
    static_keys: KeySet,
    /// The static keys as the admin API shows them (no secrets).
    key_descriptions: Vec<serde_json::Value>,
    jwks: Option<Arc<JwksCache>>,
    rules: ClaimRules,
    from_header: Option<HeaderName>,
    /// Whether `from_header` may carry the token without `Bearer ` (any header but
    /// `Authorization`, whose value always has a scheme).
    bare_header_token: bool,
    from_cookie: Option<String>,
    from_query: Option<String>,
    consumer_claim: Option<String>,
    consumer_header: Option<HeaderName>,
    claims_to_headers: Vec<(String, HeaderName)>,
    hide_credentials: bool,
    realm: String,
    /// `Bearer realm="..."`, for a request without a token.
    challenge: HeaderValue,
    /// `Bearer realm="...", error="invalid_token"`, for a refused token.
    challenge_invalid_token: HeaderValue,
}

impl fmt::Debug for JwtAuth {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("JwtAuth")
            .field("keys", &self.key_descriptions)
            .field("jwks", &self.jwks)
            .field("rules", &self.rules)
            .finish_non_exhaustive()
    }
}

impl JwtAuth {
    /// Compiles `config`; problems go to `report(field, message)`. Keys are parsed here, so a
    /// bad PEM is a config error rather than a 401 on every request.
    pub fn compile(
        config: JwtAuthConfig,
        base_dir: &Path,
        report: &mut dyn FnMut(&str, String),
    ) -> Option<JwtAuth> {
        let mut errors = 0usize;
        let mut report = |field: &str, message: String| {
            errors += 1;
            report(field, message);
        };

        if config.clock_skew.0 > MAX_CLOCK_SKEW {
            report(
                "clock_skew",
                "must be at most 1h: a larger allowance accepts tokens long expired".to_string(),
            );
        }
        let rules = ClaimRules {
            issuer: accepted_values(config.issuer.clone(), "issuer", &mut report),
            audience: accepted_values(config.audience.clone(), "audience", &mut report),
            leeway_seconds: config.clock_skew.0.as_secs(),
        };

        let mut static_keys = KeySet::default();
        let mut key_descriptions = Vec::with_capacity(config.keys.len());
        for (index, key) in config.keys.iter().enumerate() {
            let kid = match key.kid.as_deref().map(str::trim) {
                Some("") => {
                    report(
                        &format!("keys[{index}].kid"),
                        "must not be empty; leave kid out for a key without one".to_string(),
                    );
                    continue;
                }
                other => other.map(str::to_string),
            };
            let Some((algorithm, decoding_key, (material_field, material))) =
                compile_key(key, index, base_dir, &mut report)
            else {
                continue;
            };
            let mut description = serde_json::Map::new();
            description.insert("kid".to_string(), serde_json::json!(kid));
            description.insert(
                "algorithm".to_string(),
                serde_json::json!(algorithm_name(algorithm)),
            );
            description.insert(material_field.to_string(), material);
            key_descriptions.push(serde_json::Value::Object(description));
            if !static_keys.insert(
                kid.clone(),
                VerifyingKey::new(algorithm, decoding_key, &rules),
            ) {
                report(
                    &format!("keys[{index}].kid"),
                    format!(
                        "\"{}\" is the kid of an earlier key too; kids pick one key",
                        kid.unwrap_or_default()
                    ),
                );
            }
        }

        let jwks_text = config
            .jwks_url
            .as_deref()
            .map(str::trim)
            .filter(|url| !url.is_empty());
        let jwks_url = match jwks_text {
            None => None,
            Some(text) => match parse_jwks_url(text) {
                Ok(url) => Some(url),
                Err(message) => {
                    report("jwks_url", message);
                    None
                }
            },
        };
        let settings = JwksSettings {
            refresh_interval: config.jwks_refresh_interval.0,
            min_refresh_interval: config.jwks_min_refresh_interval.0,
            timeout: config.jwks_timeout.0,
        };
        if jwks_text.is_some() {
            if settings.timeout.is_zero() {
                report("jwks_timeout", "must be longer than 0".to_string());
            }
            if settings.min_refresh_interval < Duration::from_secs(1) {
                report(
                    "jwks_min_refresh_interval",
                    "must be at least 1s: tokens with made-up kids would otherwise have the key \
                     set fetched request after request"
                        .to_string(),
                );
            }
            if settings.refresh_interval < settings.min_refresh_interval {
                report(
                    "jwks_refresh_interval",
                    format!(
                        "must not be shorter than jwks_min_refresh_interval ({:?})",
                        settings.min_refresh_interval
                    ),
                );
            }
        }
        if config.keys.is_empty() && jwks_text.is_none() {
            report(
                "keys",
                "give keys, jwks_url or both: without a key no token can be verified".to_string(),
            );
        }

        let from_header = optional_header_name(&config.from_header, "from_header", &mut report);
        let from_cookie = config
            .from_cookie
            .as_deref()
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .map(str::to_string);
        if let Some(name) = &from_cookie
            && !is_cookie_name(name)
        {
            report("from_cookie", format!("\"{name}\" is not a cookie name"));
        }
        let from_query = config
            .from_query
            .as_deref()
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .map(str::to_string);
        if config.from_header.trim().is_empty() && from_cookie.is_none() && from_query.is_none() {
            report(
                "from_header",
                "every token source is off: give from_header, from_cookie or from_query"
                    .to_string(),
            );
        }

        let consumer_claim = Some(config.consumer_claim.trim())
            .filter(|claim| !claim.is_empty())
            .map(str::to_string);
        let consumer_header =
            optional_header_name(&config.consumer_header, "consumer_header", &mut report);
        let mut claims_to_headers = Vec::with_capacity(config.claims_to_headers.len());
        for (claim, header) in &config.claims_to_headers {
            let field = format!("claims_to_headers.{claim}");
            if claim.is_empty() {
                report(&field, "a claim name must not be empty".to_string());
                continue;
            }
            match super::header_name(header.trim()) {
                Ok(name) => claims_to_headers.push((claim.clone(), name)),
                Err(message) => report(&field, message),
            }
        }

        let realm = config.realm.trim().to_string();
        if realm.contains(['"', '\\']) {
            report(
                "realm",
                "must not contain quotes or backslashes".to_string(),
            );
        }
        let challenge = HeaderValue::from_str(&format!("Bearer realm=\"{realm}\""));
        let challenge_invalid_token = HeaderValue::from_str(&format!(
            "Bearer realm=\"{realm}\", error=\"invalid_token\""
        ));
        let (Ok(challenge), Ok(challenge_invalid_token)) = (challenge, challenge_invalid_token)
        else {
            report("realm", format!("\"{realm}\" cannot be sent in a header"));
            return None;
        };

        if errors > 0 {
            return None;
        }
        // Shared with the previous snapshot when it has the same key set: a reload keeps the
        // keys already fetched.
        let jwks = jwks_url.map(|url| JwksCache::shared(url, settings, rules.clone()));
        Some(JwtAuth {
            static_keys,
            key_descriptions,
            jwks,
            rules,
            bare_header_token: from_header
                .as_ref()
                .is_some_and(|name| *name != AUTHORIZATION),
            from_header,
            from_cookie,
            from_query,
            consumer_claim,
            consumer_header,
            claims_to_headers,
            hide_credentials: config.hide_credentials,
            realm,
            challenge,
            challenge_invalid_token,
        })
    }

    pub async fn on_request(&self, session: &mut Session, input: &mut RequestInput<'_>) -> Verdict {
        if let Some(cache) = &self.jwks {
            cache.start_refreshing();
        }
        let attempt = match self.find_token(session.req_header()) {
            None => return self.refuse(input, MISSING, false),
            Some((token, _)) => match self.check(&token) {
                Err((_, true)) if self.jwks.is_some() => Attempt::AwaitKeys(token.into_owned()),
                result => Attempt::Done(result.map_err(|(refusal, _)| refusal)),
            },
        };
        let result = match attempt {
            Attempt::Done(result) => result,
            // No set yet, or the issuer rotated its keys.
            // Boxed: waiting for a key set is rare; its state stays out of every request's
            // future.
            Attempt::AwaitKeys(token) => Box::pin(self.verify_after_fetch(&token)).await,
        };
        let claims = match result {
            Ok(claims) => claims,
            Err(refusal) => return self.refuse(input, refusal, true),
        };
        if self.hide_credentials {
            self.hide_tokens(session, input);
        }
        self.forward_identity(session, input, &claims);
        Verdict::Continue
    }

    /// For a token whose key may come with the next key set: joins the fetch under way or
    /// starts one (at most one per `jwks_min_refresh_interval`), waits for it up to
    /// `jwks_timeout`, and verifies again. The token is refused only when its key is still
    /// missing then, or when no fetch could be waited for.
    async fn verify_after_fetch(&self, token: &str) -> Result<Claims, Refusal> {
        let Some(cache) = &self.jwks else {
            return self.verify(token);
        };
        let deadline = cache.wait_deadline(Instant::now());
        loop {
            let waited = cache.wait_for_fetch(deadline).await;
            match self.check(token) {
                // A fetch ended without the key: another may be under way already (one that
                // started before this request's claim), or allowed now.
                Err((_, true)) if waited => continue,
                result => return result.map_err(|(refusal, _)| refusal),
            }
        }
    }

    /// Verifies `token`: picks its key by `kid`, insists on that key's algorithm, checks the
    /// signature and the claims (jsonwebtoken reads the clock itself).
    pub(crate) fn verify(&self, token: &str) -> Result<Claims, Refusal> {
        self.check(token).map_err(|(refusal, _)| refusal)
    }

    /// [`Self::verify`], and with a refusal whether a fresher key set might turn it into a
    /// pass: the token's `kid` is in no set, or it names none, no key without a kid took it,
    /// and the key set has not loaded yet.
    fn check(&self, token: &str) -> Result<Claims, (Refusal, bool)> {
        let final_refusal = |refusal: Refusal| (refusal, false);
        let mut buffer = [0u8; HEADER_BUFFER_BYTES];
        let fallback_header;
        let (algorithm, kid) = match read_header(token, &mut buffer) {
            Some(header) => {
                let Some(name) = header.alg else {
                    return Err(final_refusal(MALFORMED));
                };
                match algorithm_from_name(name) {
                    Some(algorithm) => (algorithm, header.kid),
                    None if name.eq_ignore_ascii_case("none") => {
                        return Err(final_refusal(UNSIGNED));
                    }
                    None => return Err(final_refusal(UNSUPPORTED_ALGORITHM)),
                }
            }
            // An escaped string or a long header: jsonwebtoken's own, allocating parse.
            None => {
                fallback_header =
                    jsonwebtoken::decode_header(token).map_err(|_| final_refusal(MALFORMED))?;
                (fallback_header.alg, fallback_header.kid.as_deref())
            }
        };
        match kid {
            Some(kid) => {
                if let Some(key) = self.static_keys.by_kid.get(kid) {
                    return verify_with_key(key, algorithm, token).map_err(final_refusal);
                }
                if let Some(cache) = &self.jwks {
                    let keys = cache.keys();
                    if let Some(key) = keys.by_kid.get(kid) {
                        return verify_with_key(key, algorithm, token).map_err(final_refusal);
                    }
                }
                Err((UNKNOWN_KID, self.jwks.is_some()))
            }
            None => self.verify_without_kid(algorithm, token),
        }
    }

    /// A token without `kid` is tried with every key without one that has its algorithm. When
    /// none takes it and the key set has not loaded yet, a key of that set still may.
    fn verify_without_kid(
        &self,
        algorithm: Algorithm,
        token: &str,
    ) -> Result<Claims, (Refusal, bool)> {
        // Read before the keys: a set loaded by then is among them.
        let awaiting_keys = self.jwks.as_ref().is_some_and(|cache| !cache.is_loaded());
        let fetched = self.jwks.as_ref().map(|cache| cache.keys());
        let candidates = self
            .static_keys
            .without_kid
            .iter()
            .chain(fetched.iter().flat_map(|keys| keys.without_kid.iter()));
        let mut outcome = None;
        for key in candidates {
            if key.algorithm != algorithm {
                if outcome.is_none() {
                    outcome = Some(WRONG_ALGORITHM);
                }
                continue;
            }
            match jsonwebtoken::decode::<Claims>(token, &key.decoding_key, &key.validation) {
                Ok(data) => return Ok(data.claims),
                // Another key of the same algorithm may have signed it.
                Err(error) if is_key_mismatch(&error) => outcome = Some(BAD_SIGNATURE),
                // The signature held; the claims did not.
                Err(error) => return Err((refusal_for(&error), false)),
            }
        }
        Err((outcome.unwrap_or(NO_KID), awaiting_keys))
    }

    /// The token and where it was found: the header, then the cookie, then the query.
    fn find_token<'r>(&self, request: &'r RequestHeader) -> Option<(Cow<'r, str>, TokenSource)> {
        if let Some(name) = &self.from_header
            && let Some(token) = request
                .headers
                .get(name)
                .and_then(|value| header_token(value, self.bare_header_token))
        {
            return Some((Cow::Borrowed(token), TokenSource::Header));
        }
        if let Some(name) = &self.from_cookie
            && let Some(token) = cookie_value(request, name)
        {
            return Some((Cow::Borrowed(token), TokenSource::Cookie));
        }
        if let Some(name) = &self.from_query
            && let Some(token) = super::query::query_parameter(&request.uri, name)
            && !token.is_empty()
        {
            return Some((token, TokenSource::Query));
        }
        None
    }

    fn refuse(
        &self,
        input: &mut RequestInput<'_>,
        (reason, message): Refusal,
        token_sent: bool,
    ) -> Verdict {
        let step_name = input.step_name;
        let challenge = if token_sent {
            &self.challenge_invalid_token
        } else {
            &self.challenge
        };
        Verdict::Fail(
            super::auth::refuse(input, step_name, 401, reason, message)
                .with_header(WWW_AUTHENTICATE, challenge.clone()),
        )
    }

    /// Clears every configured token source, not only the one the token was read from, so
    /// the upstream sees no token at all: not the one used, nor one sent alongside it (a
    /// `?access_token=` next to the `Authorization` header).
    fn hide_tokens(&self, session: &mut Session, input: &mut RequestInput<'_>) {
        if let Some(name) = &self.from_header {
            session.req_header_mut().remove_header(name);
        }
        if let Some(name) = &self.from_cookie {
            remove_cookie(session.req_header_mut(), name);
        }
        if let Some(name) = &self.from_query {
            super::auth::strip_query_credential(session, input, name);
        }
    }

    /// The consumer and the forwarded claims, replacing whatever the client sent under those
    /// header names.
    fn forward_identity(
        &self,
        session: &mut Session,
        input: &mut RequestInput<'_>,
        claims: &Claims,
    ) {
        let consumer = self
            .consumer_claim
            .as_deref()
            .and_then(|claim| claims.get(claim))
            .and_then(claim_text);
        match consumer {
            Some(consumer) => {
                super::auth::set_consumer(session, input, self.consumer_header.as_ref(), &consumer);
            }
            None => {
                // No consumer to name, and a client-sent one must not pass for ours.
                if let Some(name) = &self.consumer_header {
                    session.req_header_mut().remove_header(name);
                }
            }
        }
        let request = session.req_header_mut();
        for (claim, header) in &self.claims_to_headers {
            request.remove_header(header);
            if let Some(value) = claims.get(claim.as_str()).and_then(claim_header_value)
                && let Err(error) = request.insert_header(header, value)
            {
                log::debug!("jwt_auth: claim {claim} not forwarded as {header}: {error}");
            }
        }
    }

    /// The settings as the admin API shows them: algorithms and kids, never secrets.
    pub fn describe(&self) -> serde_json::Value {
        let claims_to_headers: serde_json::Map<String, serde_json::Value> = self
            .claims_to_headers
            .iter()
            .map(|(claim, header)| (claim.clone(), serde_json::Value::from(header.as_str())))
            .collect();
        serde_json::json!({
            "keys": self.key_descriptions,
            "jwks": self.jwks.as_ref().map(|cache| cache.describe()),
            "issuer": self.rules.issuer,
            "audience": self.rules.audience,
            "clock_skew_seconds": self.rules.leeway_seconds,
            "sources": {
                "header": self.from_header.as_ref().map(HeaderName::as_str),
                "cookie": self.from_cookie,
                "query": self.from_query,
            },
            "consumer_claim": self.consumer_claim,
            "consumer_header": self.consumer_header.as_ref().map(HeaderName::as_str),
            "claims_to_headers": claims_to_headers,
            "hide_credentials": self.hide_credentials,
            "realm": self.realm,
        })
    }
}

/// `issuer:` or `audience:` as a list; an empty list or value is a config error, since it
/// would refuse every token.
fn accepted_values(
    values: Option<OneOrMany>,
    field: &str,
    report: &mut dyn FnMut(&str, String),
) -> Option<Vec<String>> {
    let values = values?.into_vec();
    if values.is_empty() {
        report(
            field,
            "give at least one value, or leave the key out".to_string(),
        );
    }
    for (index, value) in values.iter().enumerate() {
        if value.trim().is_empty() {
            report(
                &format!("{field}[{index}]"),
                "must not be empty".to_string(),
            );
        }
    }
    Some(values)
}

/// The algorithm and decoding key of `keys[index]`, and how the admin API shows its material.
fn compile_key(
    key: &JwtKeyConfig,
    index: usize,
    base_dir: &Path,
    report: &mut dyn FnMut(&str, String),
) -> Option<(Algorithm, DecodingKey, (&'static str, serde_json::Value))> {
    let field = |name: &str| format!("keys[{index}].{name}");
    let written = key.algorithm.trim();
    let Some(algorithm) = algorithm_from_name(written) else {
        let message = if written.is_empty() {
            format!("give the key's algorithm, one of {ALGORITHM_NAMES}")
        } else if written.eq_ignore_ascii_case("none") {
            "\"none\" is no algorithm a key can have: unsigned tokens are never accepted"
                .to_string()
        } else {
            format!("unknown algorithm \"{written}\"; expected one of {ALGORITHM_NAMES}")
        };
        report(&field("algorithm"), message);
        return None;
    };
    let name = algorithm_name(algorithm);
    if is_shared_secret(algorithm) {
        for (given, option) in [
            (key.public_key.is_some(), "public_key"),
            (key.public_key_file.is_some(), "public_key_file"),
        ] {
            if given {
                report(
                    &field(option),
                    format!("{name} verifies with a shared secret: give secret or secret_base64"),
                );
            }
        }
        let secret = match (&key.secret, &key.secret_base64) {
            (Some(_), Some(_)) => {
                report(
                    &field("secret_base64"),
                    "give secret or secret_base64, not both".to_string(),
                );
                return None;
            }
            (None, None) => {
                report(
                    &field("secret"),
                    format!("{name} needs secret or secret_base64"),
                );
                return None;
            }
            (Some(text), None) => text.as_bytes().to_vec(),
            (None, Some(encoded)) => {
                let encoded = encoded.trim().trim_end_matches('=');
                let mut decoded = vec![0u8; encoded.len()];
                match decode_base64(encoded.as_bytes(), &mut decoded) {
                    Some(length) => {
                        decoded.truncate(length);
                        decoded
                    }
                    None => {
                        report(&field("secret_base64"), "is not base64".to_string());
                        return None;
                    }
                }
            }
        };
        if secret.is_empty() {
            report(&field("secret"), "must not be empty".to_string());
            return None;
        }
        let recommended = match algorithm {
            Algorithm::HS256 => 32,
            Algorithm::HS384 => 48,
            _ => 64,
        };
        if secret.len() < recommended {
            log::warn!(
                "jwt_auth keys[{index}]: a {name} secret of {} bytes is shorter than the \
                 {recommended} RFC 7518 asks for; short secrets can be guessed offline from \
                 any token",
                secret.len()
            );
        }
        let material = ("secret", serde_json::json!("<hidden>"));
        return Some((algorithm, DecodingKey::from_secret(&secret), material));
    }

    for (given, option) in [
        (key.secret.is_some(), "secret"),
        (key.secret_base64.is_some(), "secret_base64"),
    ] {
        if given {
            report(
                &field(option),
                format!(
                    "{name} verifies with a public key: give public_key or public_key_file, \
                     never a shared secret"
                ),
            );
        }
    }
    let (pem, source_field, shown): (Cow<'_, str>, &'static str, serde_json::Value) =
        match (&key.public_key, &key.public_key_file) {
            (Some(_), Some(_)) => {
                report(
                    &field("public_key_file"),
                    "give public_key or public_key_file, not both".to_string(),
                );
                return None;
            }
            (None, None) => {
                report(
                    &field("public_key"),
                    format!("{name} needs public_key (PEM) or public_key_file"),
                );
                return None;
            }
            (Some(text), None) => (
                Cow::Borrowed(text.as_str()),
                "public_key",
                serde_json::json!("PEM"),
            ),
            (None, Some(path)) => {
                let full = base_dir.join(path);
                match std::fs::read_to_string(&full) {
                    Ok(text) => (
                        Cow::Owned(text),
                        "public_key_file",
                        serde_json::json!(full.display().to_string()),
                    ),
                    Err(error) => {
                        report(
                            &field("public_key_file"),
                            format!("cannot read {}: {error}", full.display()),
                        );
                        return None;
                    }
                }
            }
        };
    match public_key_from_pem(algorithm, &pem) {
        Ok(decoding_key) => Some((algorithm, decoding_key, (source_field, shown))),
        Err(message) => {
            report(&field(source_field), message);
            None
        }
    }
}

/// The public key in `pem` for `algorithm`; the message says what is wrong with it.
fn public_key_from_pem(algorithm: Algorithm, pem: &str) -> Result<DecodingKey, String> {
    if pem.contains("PRIVATE KEY") {
        return Err(
            "this is a private key; give its public half (openssl pkey -pubout), which is all \
             verification needs"
                .to_string(),
        );
    }
    let (parsed, kind) = match algorithm {
        Algorithm::ES256 | Algorithm::ES384 => (DecodingKey::from_ec_pem(pem.as_bytes()), "EC"),
        Algorithm::EdDSA => (DecodingKey::from_ed_pem(pem.as_bytes()), "Ed25519"),
        _ => (DecodingKey::from_rsa_pem(pem.as_bytes()), "RSA"),
    };
    parsed.map_err(|error| {
        format!(
            "not an {kind} public key in PEM ({error}), which {} needs",
            algorithm_name(algorithm)
        )
    })
}

/// `jwks_url` as a URI: `http` or `https`, with a host.
fn parse_jwks_url(text: &str) -> Result<http::Uri, String> {
    let url: http::Uri = text
        .parse()
        .map_err(|error| format!("\"{text}\" is not a URL: {error}"))?;
    if !matches!(url.scheme_str(), Some("http" | "https")) {
        return Err(format!("\"{text}\" must start with http:// or https://"));
    }
    if url.host().is_none_or(str::is_empty) {
        return Err(format!("\"{text}\" names no host"));
    }
    Ok(url)
}

/// A header name from the config, `""` meaning none.
fn optional_header_name(
    text: &str,
    field: &str,
    report: &mut dyn FnMut(&str, String),
) -> Option<HeaderName> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    match super::header_name(text) {
        Ok(name) => Some(name),
        Err(message) => {
            report(field, message);
            None
        }
    }
}

/// Whether `name` is a cookie name (an HTTP token).
fn is_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|byte| byte.is_ascii_graphic() && !b"\"(),/:;<=>?@[\\]{}".contains(&byte))
}

/// What `kid` and `alg` a token's header names, borrowed from the decoded header.
#[derive(Deserialize)]
struct TokenHeader<'a> {
    alg: Option<&'a str>,
    kid: Option<&'a str>,
}

/// Decodes the token's header into `buffer` and reads `alg` and `kid` without allocating;
/// `None` when that is not possible (the caller falls back to jsonwebtoken's parse).
fn read_header<'b>(token: &str, buffer: &'b mut [u8]) -> Option<TokenHeader<'b>> {
    let (encoded, _) = token.split_once('.')?;
    let length = decode_base64(encoded.as_bytes(), buffer)?;
    let decoded: &'b [u8] = buffer;
    serde_json::from_slice(decoded.get(..length)?).ok()
}

/// Decodes unpadded base64 (either alphabet) into `output`: the number of bytes written, or
/// `None` when `text` is not base64 or does not fit.
fn decode_base64(text: &[u8], output: &mut [u8]) -> Option<usize> {
    if text.len() % 4 == 1 {
        return None;
    }
    let decoded_length = text.len() / 4 * 3 + (text.len() % 4) * 3 / 4;
    if decoded_length > output.len() {
        return None;
    }
    let mut accumulator: u32 = 0;
    let mut bits: u32 = 0;
    let mut written = 0;
    for &byte in text {
        let value = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => return None,
        };
        accumulator = ((accumulator << 6) | u32::from(value)) & 0xFFFF;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            *output.get_mut(written)? = (accumulator >> bits) as u8;
            written += 1;
        }
    }
    Some(written)
}

fn verify_with_key(
    key: &VerifyingKey,
    algorithm: Algorithm,
    token: &str,
) -> Result<Claims, Refusal> {
    if key.algorithm != algorithm {
        return Err(WRONG_ALGORITHM);
    }
    jsonwebtoken::decode::<Claims>(token, &key.decoding_key, &key.validation)
        .map(|data| data.claims)
        .map_err(|error| refusal_for(&error))
}

/// Whether `error` says the key did not fit the token (so another key might).
fn is_key_mismatch(error: &jsonwebtoken::errors::Error) -> bool {
    matches!(
        error.kind(),
        ErrorKind::InvalidSignature
            | ErrorKind::InvalidAlgorithm
            | ErrorKind::InvalidRsaKey(_)
            | ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidKeyFormat
            | ErrorKind::Crypto(_)
    )
}

fn refusal_for(error: &jsonwebtoken::errors::Error) -> Refusal {
    match error.kind() {
        ErrorKind::ExpiredSignature => EXPIRED,
        ErrorKind::ImmatureSignature => NOT_YET_VALID,
        ErrorKind::InvalidIssuer => WRONG_ISSUER,
        ErrorKind::InvalidAudience => WRONG_AUDIENCE,
        ErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
            "iss" => NO_ISSUER,
            "aud" => NO_AUDIENCE,
            _ => NO_EXPIRY,
        },
        ErrorKind::InvalidSignature => BAD_SIGNATURE,
        ErrorKind::InvalidAlgorithm => WRONG_ALGORITHM,
        _ => MALFORMED,
    }
}

/// The token in an `Authorization`-style header value: `Bearer <token>` (scheme in any case),
/// or the bare value when `bare_allowed`.
fn header_token(value: &HeaderValue, bare_allowed: bool) -> Option<&str> {
    let text = value.to_str().ok()?.trim();
    if let Some((scheme, rest)) = text.split_once(' ')
        && scheme.eq_ignore_ascii_case("bearer")
    {
        let token = rest.trim();
        return (!token.is_empty()).then_some(token);
    }
    (bare_allowed && !text.is_empty() && !text.contains(' ')).then_some(text)
}

/// The value of cookie `name` in the request's `Cookie` headers, without surrounding quotes.
fn cookie_value<'r>(request: &'r RequestHeader, name: &str) -> Option<&'r str> {
    for header in request.headers.get_all(COOKIE) {
        for pair in header.as_bytes().split(|&byte| byte == b';') {
            let pair = pair.trim_ascii();
            let Some(equals) = pair.iter().position(|&byte| byte == b'=') else {
                continue;
            };
            if pair[..equals].trim_ascii() != name.as_bytes() {
                continue;
            }
            let value = pair[equals + 1..].trim_ascii();
            let value = value
                .strip_prefix(b"\"")
                .and_then(|inner| inner.strip_suffix(b"\""))
                .unwrap_or(value);
            if value.is_empty() {
                continue;
            }
            return std::str::from_utf8(value).ok();
        }
    }
    None
}

/// Removes cookie `name` from the request, keeping the others in one `Cookie` header (none
/// when no other is left).
fn remove_cookie(request: &mut RequestHeader, name: &str) {
    let mut kept: Vec<u8> = Vec::new();
    let mut removed = false;
    for header in request.headers.get_all(COOKIE) {
        for pair in header.as_bytes().split(|&byte| byte == b';') {
            let pair = pair.trim_ascii();
            if pair.is_empty() {
                continue;
            }
            let pair_name = pair
                .iter()
                .position(|&byte| byte == b'=')
                .map_or(pair, |equals| pair[..equals].trim_ascii());
            if pair_name == name.as_bytes() {
                removed = true;
                continue;
            }
            if !kept.is_empty() {
                kept.extend_from_slice(b"; ");
            }
            kept.extend_from_slice(pair);
        }
    }
    if !removed {
        return;
    }
    request.remove_header(&COOKIE);
    if kept.is_empty() {
        return;
    }
    if let Ok(value) = HeaderValue::from_bytes(&kept)
        && let Err(error) = request.insert_header(COOKIE, value)
    {
        log::debug!("jwt_auth: the remaining cookies could not be set again: {error}");
    }
}

/// A claim as the consumer: a non-empty string, or a number as its text.
fn claim_text(value: &serde_json::Value) -> Option<Arc<str>> {
    match value {
        serde_json::Value::String(text) if !text.is_empty() => Some(Arc::from(text.as_str())),
        serde_json::Value::Number(number) => Some(Arc::from(number.to_string())),
        _ => None,
    }
}

/// A claim as a header value: strings, numbers and booleans; objects and lists are not sent.
fn claim_header_value(value: &serde_json::Value) -> Option<HeaderValue> {
    match value {
        serde_json::Value::String(text) => HeaderValue::from_str(text).ok(),
        serde_json::Value::Number(number) => HeaderValue::from_str(&number.to_string()).ok(),
        serde_json::Value::Bool(flag) => Some(HeaderValue::from_static(if *flag {
            "true"
        } else {
            "false"
        })),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::jwks::testing::*;
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    const SECRET: &str = "a-test-secret-that-is-32-bytes-long!";

    fn compile(config: JwtAuthConfig) -> Result<JwtAuth, Vec<(String, String)>> {
        let mut errors = Vec::new();
        let policy = JwtAuth::compile(config, Path::new("."), &mut |field, message| {
            errors.push((field.to_string(), message))
        });
        match policy {
            Some(policy) if errors.is_empty() => Ok(policy),
            _ => Err(errors),
        }
    }

    fn key(kid: Option<&str>, algorithm: &str) -> JwtKeyConfig {
        JwtKeyConfig {
            kid: kid.map(str::to_string),
            algorithm: algorithm.to_string(),
            ..JwtKeyConfig::default()
        }
    }

    fn secret_key(kid: Option<&str>, algorithm: &str) -> JwtKeyConfig {
        JwtKeyConfig {
            secret: Some(SECRET.to_string()),
            ..key(kid, algorithm)
        }
    }

    fn pem_key(kid: Option<&str>, algorithm: &str, pem: &str) -> JwtKeyConfig {
        JwtKeyConfig {
            public_key: Some(pem.to_string()),
            ..key(kid, algorithm)
        }
    }

    fn with_keys(keys: Vec<JwtKeyConfig>) -> JwtAuthConfig {
        JwtAuthConfig {
            keys,
            ..JwtAuthConfig::default()
        }
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn sign(
        algorithm: Algorithm,
        kid: Option<&str>,
        claims: &serde_json::Value,
        key: &EncodingKey,
    ) -> String {
        let mut header = Header::new(algorithm);
        header.kid = kid.map(str::to_string);
        jsonwebtoken::encode(&header, claims, key).unwrap()
    }

    fn hs(algorithm: Algorithm, kid: Option<&str>, claims: serde_json::Value) -> String {
        sign(
            algorithm,
            kid,
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
    }

    fn reason(policy: &JwtAuth, token: &str) -> &'static str {
        match policy.verify(token) {
            Ok(claims) => panic!("accepted: {claims:?}"),
            Err((reason, _)) => reason,
        }
    }

    #[test]
    fn a_valid_token_passes_and_its_claims_come_back() {
        let policy = compile(with_keys(vec![secret_key(Some("shared"), "HS256")])).unwrap();
        let token = hs(
            Algorithm::HS256,
            Some("shared"),
            json!({"sub": "alice", "exp": now() + 600, "role": "admin"}),
        );
        let claims = policy.verify(&token).unwrap();
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["role"], "admin");
    }

    #[test]
    fn the_algorithm_is_pinned_per_key() {
        let policy = compile(with_keys(vec![
            secret_key(Some("shared"), "HS256"),
            secret_key(None, "HS256"),
        ]))
        .unwrap();
        let claims = json!({"sub": "alice", "exp": now() + 600});
        // Same secret, another HMAC algorithm: refused before any signature check.
        let token = hs(Algorithm::HS384, Some("shared"), claims.clone());
        assert_eq!(policy.verify(&token).unwrap_err(), WRONG_ALGORITHM);
        let token = hs(Algorithm::HS512, None, claims.clone());
        assert_eq!(policy.verify(&token).unwrap_err(), WRONG_ALGORITHM);
        assert!(policy.verify(&hs(Algorithm::HS256, None, claims)).is_ok());
    }

    #[test]
    fn unsigned_tokens_are_refused() {
        let policy = compile(with_keys(vec![
            secret_key(Some("shared"), "HS256"),
            secret_key(None, "HS256"),
        ]))
        .unwrap();
        let valid = hs(
            Algorithm::HS256,
            Some("shared"),
            json!({"sub": "alice", "exp": now() + 600}),
        );
        let payload = valid.split('.').nth(1).unwrap();
        // base64url of {"alg":"none","typ":"JWT"} and of {"alg":"none","kid":"shared"}.
        for header in [
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0",
            "eyJhbGciOiJub25lIiwia2lkIjoic2hhcmVkIn0",
        ] {
            let token = format!("{header}.{payload}.");
            assert_eq!(policy.verify(&token).unwrap_err(), UNSIGNED, "{token}");
        }
    }

    #[test]
    fn an_hs256_token_signed_with_the_rsa_public_key_is_refused() {
        let policy = compile(with_keys(vec![
            pem_key(Some("rsa-1"), "RS256", RSA_PUBLIC_PEM),
            pem_key(None, "RS256", RSA_PUBLIC_PEM),
        ]))
        .unwrap();
        let claims = json!({"sub": "mallory", "exp": now() + 600});
        let forged_with = EncodingKey::from_secret(RSA_PUBLIC_PEM.as_bytes());
        for kid in [Some("rsa-1"), None] {
            let forged = sign(Algorithm::HS256, kid, &claims, &forged_with);
            assert_eq!(policy.verify(&forged).unwrap_err(), WRONG_ALGORITHM);
        }
        let genuine = EncodingKey::from_rsa_pem(RSA_PRIVATE_PEM.as_bytes()).unwrap();
        for kid in [Some("rsa-1"), None] {
            let token = sign(Algorithm::RS256, kid, &claims, &genuine);
            assert_eq!(policy.verify(&token).unwrap()["sub"], "mallory");
        }
    }

    #[test]
    fn ec_and_ed25519_keys_verify_their_tokens() {
        let policy = compile(with_keys(vec![
            pem_key(Some("ec-1"), "ES256", EC_PUBLIC_PEM),
            pem_key(Some("ed-1"), "EdDSA", ED_PUBLIC_PEM),
        ]))
        .unwrap();
        let claims = json!({"sub": "bob", "exp": now() + 600});
        let ec = EncodingKey::from_ec_pem(EC_PRIVATE_PEM.as_bytes()).unwrap();
        let ed = EncodingKey::from_ed_pem(ED_PRIVATE_PEM.as_bytes()).unwrap();
        assert!(
            policy
                .verify(&sign(Algorithm::ES256, Some("ec-1"), &claims, &ec))
                .is_ok()
        );
        assert!(
            policy
                .verify(&sign(Algorithm::EdDSA, Some("ed-1"), &claims, &ed))
                .is_ok()
        );
        let crossed = sign(Algorithm::ES256, Some("ed-1"), &claims, &ec);
        assert_eq!(policy.verify(&crossed).unwrap_err(), WRONG_ALGORITHM);
    }

    #[test]
    fn expiry_and_not_before_allow_the_clock_skew() {
        let policy = compile(with_keys(vec![secret_key(None, "HS256")])).unwrap();
        let check = |claims: serde_json::Value| policy.verify(&hs(Algorithm::HS256, None, claims));
        assert_eq!(check(json!({"exp": now() - 600})).unwrap_err(), EXPIRED);
        assert!(
            check(json!({"exp": now() - 10})).is_ok(),
            "within 30s of skew"
        );
        assert_eq!(
            check(json!({"exp": now() + 600, "nbf": now() + 600})).unwrap_err(),
            NOT_YET_VALID
        );
        assert!(check(json!({"exp": now() + 600, "nbf": now() + 10})).is_ok());
        assert_eq!(check(json!({"sub": "alice"})).unwrap_err(), NO_EXPIRY);
        assert_eq!(check(json!({"exp": "tomorrow"})).unwrap_err(), NO_EXPIRY);
    }

    #[test]
    fn issuer_and_audience_are_required_when_configured() {
        let policy = compile(JwtAuthConfig {
            issuer: Some(OneOrMany::One("https://issuer.example".into())),
            audience: Some(OneOrMany::Many(vec!["api".into(), "admin".into()])),
            ..with_keys(vec![secret_key(None, "HS256")])
        })
        .unwrap();
        let exp = now() + 600;
        let check =
            |claims: serde_json::Value| reason_or_ok(&policy, hs(Algorithm::HS256, None, claims));
        assert_eq!(
            check(json!({"exp": exp, "iss": "https://issuer.example", "aud": "api"})),
            "ok"
        );
        assert_eq!(
            check(json!({"exp": exp, "iss": "https://issuer.example", "aud": ["x", "admin"]})),
            "ok"
        );
        assert_eq!(
            check(json!({"exp": exp, "iss": "https://evil.example", "aud": "api"})),
            "wrong_issuer"
        );
        assert_eq!(check(json!({"exp": exp, "aud": "api"})), "wrong_issuer");
        assert_eq!(
            check(json!({"exp": exp, "iss": "https://issuer.example", "aud": "other"})),
            "wrong_audience"
        );
        assert_eq!(
            check(json!({"exp": exp, "iss": "https://issuer.example"})),
            "wrong_audience"
        );

        // Without a configured audience, a token's `aud` is not held against it.
        let open = compile(with_keys(vec![secret_key(None, "HS256")])).unwrap();
        let token = hs(
            Algorithm::HS256,
            None,
            json!({"exp": exp, "aud": "anything"}),
        );
        assert!(open.verify(&token).is_ok());
    }

    fn reason_or_ok(policy: &JwtAuth, token: String) -> &'static str {
        match policy.verify(&token) {
            Ok(_) => "ok",
            Err((reason, _)) => reason,
        }
    }

    #[test]
    fn unknown_kids_tampered_and_malformed_tokens_are_refused() {
        let policy = compile(with_keys(vec![secret_key(Some("shared"), "HS256")])).unwrap();
        let claims = json!({"sub": "alice", "exp": now() + 600});
        assert_eq!(
            reason(
                &policy,
                &hs(Algorithm::HS256, Some("other"), claims.clone())
            ),
            "unknown_key"
        );
        assert_eq!(
            policy
                .verify(&hs(Algorithm::HS256, None, claims.clone()))
                .unwrap_err(),
            NO_KID
        );
        // Without a key set, no fetch can bring the key: no request waits for one.
        assert_eq!(
            policy
                .check(&hs(Algorithm::HS256, Some("other"), claims.clone()))
                .unwrap_err(),
            (UNKNOWN_KID, false)
        );

        let token = hs(Algorithm::HS256, Some("shared"), claims);
        let other = hs(
            Algorithm::HS256,
            Some("shared"),
            json!({"sub": "root", "exp": now() + 600}),
        );
        let parts: Vec<&str> = token.split('.').collect();
        let other_payload = other.split('.').nth(1).unwrap();
        let swapped = format!("{}.{other_payload}.{}", parts[0], parts[2]);
        assert_eq!(policy.verify(&swapped).unwrap_err(), BAD_SIGNATURE);
        for garbage in ["", "abc", "a.b.c", "....", "eyJhbGciOiJIUzI1NiJ9"] {
            assert_eq!(reason(&policy, garbage), "invalid", "{garbage:?}");
        }
    }

    #[test]
    fn token_headers_are_read_without_jsonwebtoken() {
        let token = hs(Algorithm::HS384, Some("key-7"), json!({"exp": 1}));
        let mut buffer = [0u8; HEADER_BUFFER_BYTES];
        let header = read_header(&token, &mut buffer).unwrap();
        assert_eq!(header.alg, Some("HS384"));
        assert_eq!(header.kid, Some("key-7"));
        let mut small = [0u8; 4];
        assert!(read_header(&token, &mut small).is_none());
        let mut decoded = [0u8; 16];
        let length = decode_base64(b"aGVsbG8_Pz8", &mut decoded).unwrap();
        assert_eq!(&decoded[..length], b"hello???");
        assert_eq!(decode_base64(b"a", &mut decoded), None);
        assert_eq!(decode_base64(b"a*bc", &mut decoded), None);
    }

    #[test]
    fn base64_secrets_decode_to_the_same_key() {
        use std::fmt::Write as _;
        // base64 of SECRET, computed here so the test needs no base64 crate.
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut encoded = String::new();
        for chunk in SECRET.as_bytes().chunks(3) {
            let mut block = [0u8; 3];
            block[..chunk.len()].copy_from_slice(chunk);
            let number =
                (u32::from(block[0]) << 16) | (u32::from(block[1]) << 8) | u32::from(block[2]);
            for position in 0..=chunk.len() {
                let index = (number >> (18 - 6 * position)) & 63;
                encoded
                    .write_char(char::from(ALPHABET[index as usize]))
                    .unwrap();
            }
        }
        while !encoded.len().is_multiple_of(4) {
            encoded.push('=');
        }
        let policy = compile(with_keys(vec![JwtKeyConfig {
            secret_base64: Some(encoded),
            ..key(None, "HS256")
        }]))
        .unwrap();
        let token = hs(Algorithm::HS256, None, json!({"exp": now() + 600}));
        assert!(policy.verify(&token).is_ok());
    }

    #[test]
    fn config_errors_name_their_fields() {
        let errors = compile(JwtAuthConfig {
            keys: vec![
                pem_key(None, "HS256", RSA_PUBLIC_PEM),
                JwtKeyConfig {
                    secret: Some("x".into()),
                    ..pem_key(None, "RS256", RSA_PUBLIC_PEM)
                },
                key(None, "none"),
                pem_key(None, "RS256", "not a pem"),
                pem_key(None, "ES256", RSA_PUBLIC_PEM),
                pem_key(None, "RS256", RSA_PRIVATE_PEM),
                secret_key(Some("a"), "HS256"),
                secret_key(Some("a"), "HS256"),
                JwtKeyConfig {
                    public_key_file: Some("/nonexistent/jwt-test-key.pem".into()),
                    ..key(None, "RS256")
                },
                JwtKeyConfig {
                    secret_base64: Some("***".into()),
                    ..key(None, "HS256")
                },
                key(None, "HS1024"),
            ],
            jwks_url: Some("ftp://issuer.example/jwks.json".into()),
            claims_to_headers: BTreeMap::from([("email".to_string(), "bad header".to_string())]),
            realm: "a\"b".into(),
            from_cookie: Some("a;b".into()),
            ..JwtAuthConfig::default()
        })
        .unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|(field, _)| field.as_str()).collect();
        for expected in [
            "keys[0].public_key",
            "keys[0].secret",
            "keys[1].secret",
            "keys[2].algorithm",
            "keys[3].public_key",
            "keys[4].public_key",
            "keys[5].public_key",
            "keys[7].kid",
            "keys[8].public_key_file",
            "keys[9].secret_base64",
            "keys[10].algorithm",
            "jwks_url",
            "claims_to_headers.email",
            "realm",
            "from_cookie",
        ] {
            assert!(
                fields.contains(&expected),
                "{expected} missing from {errors:#?}"
            );
        }
        assert!(!fields.contains(&"keys[6].kid"), "{errors:#?}");
        let private = errors
            .iter()
            .find(|(field, _)| field == "keys[5].public_key")
            .unwrap();
        assert!(private.1.contains("private key"), "{}", private.1);
    }

    #[test]
    fn a_policy_needs_a_key_a_source_and_sane_jwks_timings() {
        let errors = compile(JwtAuthConfig::default()).unwrap_err();
        assert_eq!(errors[0].0, "keys", "{errors:?}");

        let errors = compile(JwtAuthConfig {
            from_header: String::new(),
            ..with_keys(vec![secret_key(None, "HS256")])
        })
        .unwrap_err();
        assert_eq!(errors[0].0, "from_header", "{errors:?}");

        let errors = compile(JwtAuthConfig {
            jwks_url: Some("https://issuer.example/jwks.json".into()),
            jwks_min_refresh_interval: DurationValue(Duration::ZERO),
            jwks_timeout: DurationValue(Duration::ZERO),
            clock_skew: DurationValue(Duration::from_secs(2 * 60 * 60)),
            issuer: Some(OneOrMany::Many(Vec::new())),
            ..JwtAuthConfig::default()
        })
        .unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|(field, _)| field.as_str()).collect();
        for expected in [
            "jwks_min_refresh_interval",
            "jwks_timeout",
            "clock_skew",
            "issuer",
        ] {
            assert!(
                fields.contains(&expected),
                "{expected} missing from {errors:?}"
            );
        }

        let errors = compile(JwtAuthConfig {
            jwks_url: Some("https://issuer.example/jwks.json".into()),
            jwks_refresh_interval: DurationValue(Duration::from_secs(5)),
            ..JwtAuthConfig::default()
        })
        .unwrap_err();
        assert_eq!(errors[0].0, "jwks_refresh_interval", "{errors:?}");

        assert!(
            compile(JwtAuthConfig {
                jwks_url: Some("https://issuer.example/jwks.json".into()),
                ..JwtAuthConfig::default()
            })
            .is_ok()
        );
    }

    #[test]
    fn describe_shows_kids_and_algorithms_but_no_secret() {
        let policy = compile(JwtAuthConfig {
            claims_to_headers: BTreeMap::from([("email".to_string(), "X-Email".to_string())]),
            ..with_keys(vec![
                secret_key(Some("shared"), "HS256"),
                pem_key(Some("rsa-1"), "RS256", RSA_PUBLIC_PEM),
            ])
        })
        .unwrap();
        let described = policy.describe();
        let text = described.to_string();
        assert!(!text.contains(SECRET), "{text}");
        assert_eq!(described["keys"][0]["kid"], "shared");
        assert_eq!(described["keys"][0]["algorithm"], "HS256");
        assert_eq!(described["keys"][0]["secret"], "<hidden>");
        assert_eq!(described["keys"][1]["algorithm"], "RS256");
        assert_eq!(described["sources"]["header"], "authorization");
        assert_eq!(described["claims_to_headers"]["email"], "x-email");
        assert!(!format!("{:?}", secret_key(None, "HS256")).contains(SECRET));
    }

    #[test]
    fn tokens_are_found_in_the_header_then_the_cookie_then_the_query() {
        let policy = compile(JwtAuthConfig {
            from_cookie: Some("session".into()),
            from_query: Some("access_token".into()),
            ..with_keys(vec![secret_key(None, "HS256")])
        })
        .unwrap();
        let found = |request: &RequestHeader| {
            policy
                .find_token(request)
                .map(|(token, source)| (token.into_owned(), source))
        };
        let request = crate::policy::test_request(
            "GET",
            "/api?access_token=q-token",
            &[
                ("authorization", "bearer h-token"),
                ("cookie", "a=1; session=c-token; b=2"),
            ],
        );
        assert_eq!(
            found(&request),
            Some(("h-token".to_string(), TokenSource::Header))
        );
        let request = crate::policy::test_request(
            "GET",
            "/api?access_token=q-token",
            &[
                ("authorization", "Basic YWxpY2U6c2VjcmV0"),
                ("cookie", "a=1"),
                ("cookie", "session=\"c-token\""),
            ],
        );
        assert_eq!(
            found(&request),
            Some(("c-token".to_string(), TokenSource::Cookie))
        );
        let request = crate::policy::test_request("GET", "/api?access_token=q-token", &[]);
        assert_eq!(
            found(&request),
            Some(("q-token".to_string(), TokenSource::Query))
        );
        let request = crate::policy::test_request("GET", "/api", &[("authorization", "Bearer ")]);
        assert_eq!(found(&request), None);
    }

    #[test]
    fn a_custom_header_may_carry_the_bare_token() {
        let value = HeaderValue::from_static("tok.en.value");
        assert_eq!(header_token(&value, true), Some("tok.en.value"));
        assert_eq!(header_token(&value, false), None);
        let bearer = HeaderValue::from_static("BEARER  tok.en.value ");
        assert_eq!(header_token(&bearer, false), Some("tok.en.value"));
    }

    #[test]
    fn the_token_cookie_is_removed_and_the_others_kept() {
        let mut request = crate::policy::test_request(
            "GET",
            "/",
            &[("cookie", "a=1; session=tok"), ("cookie", "b=2")],
        );
        remove_cookie(&mut request, "session");
        let cookies: Vec<&HeaderValue> = request.headers.get_all(COOKIE).iter().collect();
        assert_eq!(cookies, vec![&HeaderValue::from_static("a=1; b=2")]);

        let mut request = crate::policy::test_request("GET", "/", &[("cookie", "session=tok")]);
        remove_cookie(&mut request, "session");
        assert!(request.headers.get(COOKIE).is_none());

        let mut request = crate::policy::test_request("GET", "/", &[("cookie", "other=1")]);
        remove_cookie(&mut request, "session");
        assert_eq!(request.headers.get(COOKIE).unwrap(), "other=1");
    }

    #[test]
    fn claims_become_consumers_and_header_values() {
        assert_eq!(claim_text(&json!("alice")).as_deref(), Some("alice"));
        assert_eq!(claim_text(&json!(42)).as_deref(), Some("42"));
        assert_eq!(claim_text(&json!("")), None);
        assert_eq!(claim_text(&json!(["a"])), None);
        assert_eq!(claim_header_value(&json!(true)).unwrap(), "true");
        assert_eq!(claim_header_value(&json!(7.5)).unwrap(), "7.5");
        assert_eq!(
            claim_header_value(&json!("a@b.example")).unwrap(),
            "a@b.example"
        );
        assert!(claim_header_value(&json!({"nested": 1})).is_none());
        assert!(claim_header_value(&json!("line\nbreak")).is_none());
    }

    #[tokio::test]
    async fn keys_from_a_jwks_url_verify_tokens_once_fetched() {
        let document = jwks_document();
        let address = serve(vec![http_answer("200 OK", "", &document)]).await;
        let policy = compile(JwtAuthConfig {
            jwks_url: Some(format!("http://{address}/jwks.json")),
            ..JwtAuthConfig::default()
        })
        .unwrap();
        let claims = json!({"sub": "carol", "exp": now() + 600});
        let rsa = EncodingKey::from_rsa_pem(RSA_PRIVATE_PEM.as_bytes()).unwrap();
        let token = sign(Algorithm::RS256, Some("rsa-1"), &claims, &rsa);
        assert_eq!(
            reason(&policy, &token),
            "unknown_key",
            "nothing fetched yet"
        );

        let cache = policy.jwks.as_ref().unwrap();
        assert!(cache.claim_fetch(std::time::Instant::now()));
        assert!(cache.refresh().await);
        assert_eq!(policy.verify(&token).unwrap()["sub"], "carol");
        let ec = EncodingKey::from_ec_pem(EC_PRIVATE_PEM.as_bytes()).unwrap();
        let token = sign(Algorithm::ES256, Some("ec-1"), &claims, &ec);
        assert!(policy.verify(&token).is_ok());
        let forged = sign(
            Algorithm::HS256,
            Some("rsa-1"),
            &claims,
            &EncodingKey::from_secret(RSA_PUBLIC_PEM.as_bytes()),
        );
        assert_eq!(policy.verify(&forged).unwrap_err(), WRONG_ALGORITHM);
        assert_eq!(
            policy.describe()["jwks"]["keys"].as_array().unwrap().len(),
            3
        );
    }

    /// What `on_request` does with a token it found.
    async fn authenticate(policy: &JwtAuth, token: &str) -> Result<Claims, Refusal> {
        if let Some(cache) = &policy.jwks {
            cache.start_refreshing();
        }
        match policy.check(token) {
            Err((_, true)) if policy.jwks.is_some() => policy.verify_after_fetch(token).await,
            result => result.map_err(|(refusal, _)| refusal),
        }
    }

    #[test]
    fn compiles_of_the_same_config_share_one_key_set_cache() {
        let config = JwtAuthConfig {
            jwks_url: Some("https://issuer.example/shared-cache-test/jwks.json".into()),
            ..JwtAuthConfig::default()
        };
        let first = compile(config.clone()).unwrap();
        // A reload: the new snapshot is compiled while the old one still serves.
        let second = compile(config.clone()).unwrap();
        let first_cache = first.jwks.as_ref().unwrap();
        assert!(Arc::ptr_eq(first_cache, second.jwks.as_ref().unwrap()));
        // Another setting that changes fetching or parsing: another cache.
        let other_timeout = compile(JwtAuthConfig {
            jwks_timeout: DurationValue(Duration::from_secs(3)),
            ..config.clone()
        })
        .unwrap();
        assert!(!Arc::ptr_eq(
            first_cache,
            other_timeout.jwks.as_ref().unwrap()
        ));
        let other_audience = compile(JwtAuthConfig {
            audience: Some(OneOrMany::One("api".into())),
            ..config.clone()
        })
        .unwrap();
        assert!(!Arc::ptr_eq(
            first_cache,
            other_audience.jwks.as_ref().unwrap()
        ));
    }

    #[tokio::test]
    async fn concurrent_first_requests_all_pass_once_the_one_fetch_ends() {
        // One answer only: a second fetch would find no server and mark the set as failing.
        let address = serve(vec![http_answer("200 OK", "", &jwks_document())]).await;
        let policy = Arc::new(
            compile(JwtAuthConfig {
                jwks_url: Some(format!("http://{address}/jwks.json")),
                ..JwtAuthConfig::default()
            })
            .unwrap(),
        );
        let claims = json!({"sub": "dave", "exp": now() + 600});
        let rsa = EncodingKey::from_rsa_pem(RSA_PRIVATE_PEM.as_bytes()).unwrap();
        let token = sign(Algorithm::RS256, Some("rsa-1"), &claims, &rsa);
        let mut requests = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let policy = Arc::clone(&policy);
            let token = token.clone();
            requests.spawn(async move { authenticate(&policy, &token).await });
        }
        let mut passed = 0;
        while let Some(outcome) = requests.join_next().await {
            assert_eq!(outcome.unwrap().unwrap()["sub"], "dave");
            passed += 1;
        }
        assert_eq!(passed, 8);
        let described = policy.describe();
        assert_eq!(described["jwks"]["loaded"], true);
        assert_eq!(
            described["jwks"]["last_fetch_failed"], false,
            "one fetch only"
        );
        // A made-up kid waits for no fetch within the minimum interval.
        let made_up = sign(Algorithm::RS256, Some("made-up"), &claims, &rsa);
        assert_eq!(
            authenticate(&policy, &made_up).await.unwrap_err(),
            UNKNOWN_KID
        );
    }

    #[tokio::test]
    async fn a_token_without_kid_waits_for_the_first_key_set() {
        let document = json!({
            "keys": [{"kty": "RSA", "use": "sig", "n": RSA_MODULUS, "e": "AQAB"}]
        })
        .to_string();
        let address = serve(vec![http_answer("200 OK", "", &document)]).await;
        let policy = compile(JwtAuthConfig {
            jwks_url: Some(format!("http://{address}/jwks.json")),
            ..JwtAuthConfig::default()
        })
        .unwrap();
        let claims = json!({"sub": "erin", "exp": now() + 600});
        let rsa = EncodingKey::from_rsa_pem(RSA_PRIVATE_PEM.as_bytes()).unwrap();
        let token = sign(Algorithm::RS256, None, &claims, &rsa);
        assert_eq!(policy.check(&token).unwrap_err(), (NO_KID, true));
        assert_eq!(authenticate(&policy, &token).await.unwrap()["sub"], "erin");
        // Once the set is loaded, a token no key takes waits for nothing.
        let forged = hs(Algorithm::HS256, None, claims);
        assert_eq!(policy.check(&forged).unwrap_err(), (WRONG_ALGORITHM, false));
    }
}
