//! Who may use the admin listener: Go Loom's HTTP Basic users (`admin.auth`) and bearer
//! tokens (`admin.tokens`), each with a role, `read` or `write`.
//!
//! The config holds each password and token as its SHA-256 digest in hex, Go Loom's format.
//! A request passes when its `Authorization: Basic` credentials name a configured user and
//! the digest of the password sent equals that user's, or when the digest of its
//! `Authorization: Bearer` token equals a configured token's. Every user (or token) is
//! compared, each comparison in constant time, so the time an answer takes tells neither
//! which names exist nor how much of a digest matched.

use http::HeaderValue;

use crate::config::schema::{AdminConfig, AdminRole};
use crate::policy::credentials::{basic_credentials, constant_time_equal, parse_digest, sha256};

const DEFAULT_REALM: &str = "loom admin";

/// Who made an admin request, as the audit log names them, and what they may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The Basic user's name, the token's name, or `anonymous` when no auth is configured.
    pub name: String,
    pub role: AdminRole,
}

/// `admin.auth` and `admin.tokens` checked: who may use the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminAuthPlan {
    /// Each user's name, the SHA-256 digest of their password, and their role.
    users: Vec<(Vec<u8>, [u8; 32], AdminRole)>,
    /// Each token's name, the SHA-256 digest of the token, and its role.
    tokens: Vec<(String, [u8; 32], AdminRole)>,
    /// `WWW-Authenticate` of every refusal: Basic when users are configured, Bearer when
    /// tokens are.
    challenges: Vec<HeaderValue>,
}

impl AdminAuthPlan {
    /// The plan for `config`: `Ok(None)` when neither Basic auth nor tokens are configured.
    /// Errors are (key path under `admin`, message).
    pub fn from_config(
        config: &AdminConfig,
    ) -> Result<Option<AdminAuthPlan>, Vec<(String, String)>> {
        let mut problems = Vec::new();
        let basic = config.auth.as_ref().filter(|auth| auth.enabled);
        if basic.is_none() && config.tokens.is_empty() {
            return Ok(None);
        }
        let mut users = Vec::new();
        let mut challenges = Vec::new();
        if let Some(auth) = basic {
            if auth.users.is_empty() {
                problems.push((
                    "auth.users".to_string(),
                    "at least one user is needed when auth is enabled".to_string(),
                ));
            }
            for (name, digest) in &auth.users {
                if name.is_empty() || name.contains(':') {
                    problems.push((
                        format!("auth.users.{name}"),
                        "a user name must not be empty nor contain ':' (HTTP Basic puts a ':' \
                         between name and password)"
                            .to_string(),
                    ));
                    continue;
                }
                let role = auth.roles.get(name).copied().unwrap_or(AdminRole::Write);
                match parse_digest(digest) {
                    Some(digest) => users.push((name.as_bytes().to_vec(), digest, role)),
                    None => problems.push((
                        format!("auth.users.{name}"),
                        "must be the SHA-256 digest of the password as 64 hexadecimal \
                         characters (printf %s PASSWORD | sha256sum); bcrypt and other hashes \
                         are not supported"
                            .to_string(),
                    )),
                }
            }
            for name in auth.roles.keys() {
                if !auth.users.contains_key(name) {
                    problems.push((
                        format!("auth.roles.{name}"),
                        format!("\"{name}\" is not one of auth.users"),
                    ));
                }
            }
            let realm = auth
                .realm
                .as_deref()
                .filter(|realm| !realm.is_empty())
                .unwrap_or(DEFAULT_REALM);
            match challenge("Basic", realm) {
                Some(value) => challenges.push(value),
                None => problems.push((
                    "auth.realm".to_string(),
                    "must be printable ASCII without quotes or backslashes".to_string(),
                )),
            }
        }
        let mut tokens: Vec<(String, [u8; 32], AdminRole)> = Vec::new();
        for (index, token) in config.tokens.iter().enumerate() {
            if token.name.is_empty() {
                problems.push((
                    format!("tokens[{index}].name"),
                    "must not be empty".to_string(),
                ));
            } else if tokens.iter().any(|(name, ..)| *name == token.name) {
                problems.push((
                    format!("tokens[{index}].name"),
                    format!("another token is named \"{}\"", token.name),
                ));
            }
            match parse_digest(&token.token_sha256) {
                Some(digest) => tokens.push((token.name.clone(), digest, token.role)),
                None => problems.push((
                    format!("tokens[{index}].token_sha256"),
                    "must be the SHA-256 digest of the token as 64 hexadecimal characters \
                     (printf %s TOKEN | sha256sum)"
                        .to_string(),
                )),
            }
        }
        if !config.tokens.is_empty()
            && let Some(value) = challenge("Bearer", DEFAULT_REALM)
        {
            challenges.push(value);
        }
        if problems.is_empty() {
            Ok(Some(AdminAuthPlan {
                users,
                tokens,
                challenges,
            }))
        } else {
            Err(problems)
        }
    }

    /// Who `authorization` (the request's header, if any) belongs to; `None` when it carries
    /// no configured user's or token's credentials.
    pub fn identify(&self, authorization: Option<&HeaderValue>) -> Option<Principal> {
        let header = authorization?.as_bytes();
        if let Some(token) = bearer_token(header) {
            let offered = sha256(token);
            let mut found = None;
            for (name, digest, role) in &self.tokens {
                // Every token is compared, whichever matches.
                if constant_time_equal(digest, &offered) {
                    found = Some(Principal {
                        name: name.clone(),
                        role: *role,
                    });
                }
            }
            return found;
        }
        let (name, password) = basic_credentials(header)?;
        let offered = sha256(&password);
        let mut found = None;
        for (user, digest, role) in &self.users {
            // `&` rather than `&&`: both comparisons run for every user.
            if constant_time_equal(user, &name) & constant_time_equal(digest, &offered) {
                found = Some(Principal {
                    name: String::from_utf8_lossy(user).into_owned(),
                    role: *role,
                });
            }
        }
        found
    }

    /// Whether `authorization` carries the credentials of a configured user or token.
    pub fn admits(&self, authorization: Option<&HeaderValue>) -> bool {
        self.identify(authorization).is_some()
    }

    /// The first `WWW-Authenticate` challenge of a refused request (`Basic realm="<realm>"`
    /// when Basic users are configured).
    pub fn challenge(&self) -> &HeaderValue {
        &self.challenges[0]
    }

    /// Every `WWW-Authenticate` challenge of a refused request.
    pub fn challenges(&self) -> &[HeaderValue] {
        &self.challenges
    }
}

/// A quote or backslash would need escaping inside the quoted realm; refusing them keeps the
/// challenge exactly what the config says.
fn challenge(scheme: &str, realm: &str) -> Option<HeaderValue> {
    if realm.contains(['"', '\\']) {
        return None;
    }
    HeaderValue::from_str(&format!("{scheme} realm=\"{realm}\"")).ok()
}

/// The token of an `Authorization: Bearer <token>` header (RFC 6750); the scheme in any case.
fn bearer_token(header: &[u8]) -> Option<&[u8]> {
    let text = std::str::from_utf8(header).ok()?.trim();
    let (scheme, token) = text.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().as_bytes())
        .filter(|token| !token.is_empty())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::fmt::Write;

    use super::*;
    use crate::config::schema::{AdminAuthConfig, AdminTokenConfig};
    use crate::policy::credentials::decode_base64;

    fn hex(bytes: &[u8]) -> String {
        let mut text = String::new();
        for byte in bytes {
            let _ = write!(text, "{byte:02x}");
        }
        text
    }

    fn config(users: &[(&str, &str)], realm: Option<&str>) -> AdminConfig {
        AdminConfig {
            auth: Some(AdminAuthConfig {
                enabled: true,
                users: users
                    .iter()
                    .map(|(name, digest)| (name.to_string(), digest.to_string()))
                    .collect::<BTreeMap<_, _>>(),
                realm: realm.map(str::to_string),
                roles: BTreeMap::new(),
            }),
            ..AdminConfig::default()
        }
    }

    fn plan(users: &[(&str, &str)]) -> AdminAuthPlan {
        match AdminAuthPlan::from_config(&config(users, None)) {
            Ok(Some(plan)) => plan,
            other => panic!("no plan: {other:?}"),
        }
    }

    fn token(name: &str, token: &str, role: AdminRole) -> AdminTokenConfig {
        AdminTokenConfig {
            name: name.to_string(),
            token_sha256: hex(&sha256(token.as_bytes())),
            role,
        }
    }

    fn basic(credentials: &str) -> HeaderValue {
        // "Aladdin:open sesame" is RFC 7617's example; the others are encoded by hand below.
        let encoded = match credentials {
            "Aladdin:open sesame" => "QWxhZGRpbjpvcGVuIHNlc2FtZQ==",
            "Aladdin:wrong" => "QWxhZGRpbjp3cm9uZw==",
            "Mallory:open sesame" => "TWFsbG9yeTpvcGVuIHNlc2FtZQ==",
            other => panic!("no encoding for {other}"),
        };
        match HeaderValue::from_str(&format!("Basic {encoded}")) {
            Ok(value) => value,
            Err(error) => panic!("{error}"),
        }
    }

    #[test]
    fn base64_decodes_with_and_without_padding_and_refuses_other_text() {
        assert_eq!(
            decode_base64("QWxhZGRpbjpvcGVuIHNlc2FtZQ==").as_deref(),
            Some(&b"Aladdin:open sesame"[..])
        );
        assert_eq!(
            decode_base64("QWxhZGRpbjpvcGVuIHNlc2FtZQ").as_deref(),
            Some(&b"Aladdin:open sesame"[..])
        );
        assert_eq!(decode_base64("").as_deref(), Some(&b""[..]));
        assert_eq!(decode_base64("YQ==").as_deref(), Some(&b"a"[..]));
        assert_eq!(decode_base64("YWI=").as_deref(), Some(&b"ab"[..]));
        assert_eq!(decode_base64("YWJj").as_deref(), Some(&b"abc"[..]));
        for bad in ["Y", "YQ=", "YW*j", "YWJj=", "Y===", "YQ==YQ=="] {
            assert_eq!(decode_base64(bad), None, "{bad}");
        }
    }

    #[test]
    fn only_a_configured_user_with_the_right_password_is_admitted() {
        let digest = hex(&sha256(b"open sesame"));
        let plan = plan(&[("Aladdin", digest.as_str())]);
        assert!(plan.admits(Some(&basic("Aladdin:open sesame"))));
        assert!(!plan.admits(Some(&basic("Aladdin:wrong"))));
        assert!(!plan.admits(Some(&basic("Mallory:open sesame"))));
        assert!(!plan.admits(None));
        for header in ["Bearer QWxhZGRpbjpvcGVuIHNlc2FtZQ==", "Basic", "Basic !!!!"] {
            let value = HeaderValue::from_static(header);
            assert!(!plan.admits(Some(&value)), "{header}");
        }
        // The scheme name is case-insensitive, and the digest may be written in capitals.
        let lowercase_scheme = HeaderValue::from_static("basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
        assert!(plan.admits(Some(&lowercase_scheme)));
        let uppercase = digest.to_ascii_uppercase();
        let plan = self::plan(&[("Aladdin", uppercase.as_str())]);
        assert!(plan.admits(Some(&basic("Aladdin:open sesame"))));
        assert_eq!(plan.challenge(), "Basic realm=\"loom admin\"");
    }

    #[test]
    fn bad_digests_names_realms_and_empty_user_lists_are_refused() {
        let problems = |users: &[(&str, &str)], realm: Option<&str>| -> Vec<String> {
            match AdminAuthPlan::from_config(&config(users, realm)) {
                Err(problems) => problems.into_iter().map(|(path, _)| path).collect(),
                Ok(_) => Vec::new(),
            }
        };
        let bcrypt = "$2a$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy";
        assert_eq!(problems(&[("admin", bcrypt)], None), ["auth.users.admin"]);
        assert_eq!(problems(&[("admin", "abc")], None), ["auth.users.admin"]);
        let digest = hex(&sha256(b"secret"));
        assert_eq!(
            problems(&[("a:b", digest.as_str())], None),
            ["auth.users.a:b"]
        );
        assert_eq!(problems(&[], None), ["auth.users"]);
        assert_eq!(
            problems(&[("admin", digest.as_str())], Some("say \"hi\"")),
            ["auth.realm"]
        );
        let switched_off = AdminConfig {
            auth: Some(AdminAuthConfig {
                enabled: false,
                ..AdminAuthConfig::default()
            }),
            ..AdminConfig::default()
        };
        assert_eq!(AdminAuthPlan::from_config(&switched_off), Ok(None));
    }

    #[test]
    fn bearer_tokens_and_basic_users_carry_their_roles() {
        let digest = hex(&sha256(b"open sesame"));
        let mut admin = config(
            &[("Aladdin", digest.as_str()), ("Mallory", digest.as_str())],
            None,
        );
        if let Some(auth) = admin.auth.as_mut() {
            auth.roles.insert("Mallory".to_string(), AdminRole::Read);
        }
        admin.tokens = vec![
            token("ci", "write-token", AdminRole::Write),
            token("dashboard", "read-token", AdminRole::Read),
        ];
        let plan = match AdminAuthPlan::from_config(&admin) {
            Ok(Some(plan)) => plan,
            other => panic!("no plan: {other:?}"),
        };
        let principal = |header: &str| plan.identify(Some(&HeaderValue::from_str(header).unwrap()));
        assert_eq!(
            principal("Bearer write-token"),
            Some(Principal {
                name: "ci".to_string(),
                role: AdminRole::Write
            })
        );
        assert_eq!(
            principal("bearer  read-token ").map(|who| (who.name, who.role)),
            Some(("dashboard".to_string(), AdminRole::Read))
        );
        assert_eq!(principal("Bearer nope"), None);
        assert_eq!(principal("Bearer"), None);
        assert_eq!(
            plan.identify(Some(&basic("Aladdin:open sesame")))
                .map(|who| who.role),
            Some(AdminRole::Write)
        );
        assert_eq!(
            plan.identify(Some(&basic("Mallory:open sesame")))
                .map(|who| who.role),
            Some(AdminRole::Read)
        );
        let challenges: Vec<&str> = plan
            .challenges()
            .iter()
            .map(|value| value.to_str().unwrap())
            .collect();
        assert_eq!(
            challenges,
            ["Basic realm=\"loom admin\"", "Bearer realm=\"loom admin\""]
        );

        // Tokens alone switch authentication on.
        let tokens_only = AdminConfig {
            tokens: vec![token("ci", "t", AdminRole::Write)],
            ..AdminConfig::default()
        };
        let plan = AdminAuthPlan::from_config(&tokens_only).unwrap().unwrap();
        assert!(plan.admits(Some(&HeaderValue::from_static("Bearer t"))));
        assert!(!plan.admits(Some(&basic("Aladdin:open sesame"))));
        assert!(!plan.admits(None));
    }

    #[test]
    fn bad_tokens_and_roles_are_refused_with_their_key() {
        let digest = hex(&sha256(b"x"));
        let mut admin = config(&[("admin", digest.as_str())], None);
        if let Some(auth) = admin.auth.as_mut() {
            auth.roles.insert("ghost".to_string(), AdminRole::Read);
        }
        admin.tokens = vec![
            token("ci", "a", AdminRole::Write),
            token("ci", "b", AdminRole::Read),
            AdminTokenConfig {
                name: String::new(),
                token_sha256: "plain-token".to_string(),
                role: AdminRole::Read,
            },
        ];
        let problems: Vec<String> = match AdminAuthPlan::from_config(&admin) {
            Err(problems) => problems.into_iter().map(|(path, _)| path).collect(),
            Ok(plan) => panic!("accepted: {plan:?}"),
        };
        assert_eq!(
            problems,
            [
                "auth.roles.ghost",
                "tokens[1].name",
                "tokens[2].name",
                "tokens[2].token_sha256"
            ]
        );
    }
}
