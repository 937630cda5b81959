//! HTTP Basic authentication for the admin listener (Go Loom's `admin.auth`).
//!
//! The config holds each user's password as its SHA-256 digest in hex, Go Loom's format. A
//! request passes when its `Authorization: Basic` credentials name a configured user and the
//! digest of the password sent equals that user's. Every user is compared, each comparison
//! in constant time, so the time an answer takes tells neither which user names exist nor
//! how much of a digest matched.

use http::HeaderValue;

use crate::config::schema::AdminAuthConfig;
use crate::policy::credentials::{basic_credentials, constant_time_equal, parse_digest, sha256};

const DEFAULT_REALM: &str = "loom admin";

/// `admin.auth` checked: who may use the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminAuthPlan {
    /// Each user's name and the SHA-256 digest of their password.
    users: Vec<(Vec<u8>, [u8; 32])>,
    /// `WWW-Authenticate` of every refusal.
    challenge: HeaderValue,
}

impl AdminAuthPlan {
    /// The plan for `config`: `Ok(None)` when authentication is switched off. Errors are
    /// (key path under `admin.auth`, message).
    pub fn from_config(
        config: &AdminAuthConfig,
    ) -> Result<Option<AdminAuthPlan>, Vec<(String, String)>> {
        if !config.enabled {
            return Ok(None);
        }
        let mut problems = Vec::new();
        if config.users.is_empty() {
            problems.push((
                "users".to_string(),
                "at least one user is needed when auth is enabled".to_string(),
            ));
        }
        let mut users = Vec::with_capacity(config.users.len());
        for (name, digest) in &config.users {
            if name.is_empty() || name.contains(':') {
                problems.push((
                    format!("users.{name}"),
                    "a user name must not be empty nor contain ':' (HTTP Basic puts a ':' \
                     between name and password)"
                        .to_string(),
                ));
                continue;
            }
            match parse_digest(digest) {
                Some(digest) => users.push((name.as_bytes().to_vec(), digest)),
                None => problems.push((
                    format!("users.{name}"),
                    "must be the SHA-256 digest of the password as 64 hexadecimal characters \
                     (printf %s PASSWORD | sha256sum); bcrypt and other hashes are not supported"
                        .to_string(),
                )),
            }
        }
        let realm = config
            .realm
            .as_deref()
            .filter(|realm| !realm.is_empty())
            .unwrap_or(DEFAULT_REALM);
        // A quote or backslash would need escaping inside the quoted realm; refusing them keeps
        // the challenge exactly what the config says.
        let challenge = if realm.contains(['"', '\\']) {
            None
        } else {
            HeaderValue::from_str(&format!("Basic realm=\"{realm}\"")).ok()
        };
        if challenge.is_none() {
            problems.push((
                "realm".to_string(),
                "must be printable ASCII without quotes or backslashes".to_string(),
            ));
        }
        match challenge {
            Some(challenge) if problems.is_empty() => Ok(Some(AdminAuthPlan { users, challenge })),
            _ => Err(problems),
        }
    }

    /// Whether `authorization` (the request's header, if any) carries the credentials of a
    /// configured user.
    pub fn admits(&self, authorization: Option<&HeaderValue>) -> bool {
        let Some((name, password)) =
            authorization.and_then(|value| basic_credentials(value.as_bytes()))
        else {
            return false;
        };
        let offered = sha256(&password);
        let mut admitted = false;
        for (user, digest) in &self.users {
            // `&` rather than `&&`: both comparisons run for every user.
            admitted |= constant_time_equal(user, &name) & constant_time_equal(digest, &offered);
        }
        admitted
    }

    /// `WWW-Authenticate` for a refused request: `Basic realm="<realm>"`.
    pub fn challenge(&self) -> &HeaderValue {
        &self.challenge
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::fmt::Write;

    use super::*;
    use crate::policy::credentials::decode_base64;

    fn hex(bytes: &[u8]) -> String {
        let mut text = String::new();
        for byte in bytes {
            let _ = write!(text, "{byte:02x}");
        }
        text
    }

    fn config(users: &[(&str, &str)], realm: Option<&str>) -> AdminAuthConfig {
        AdminAuthConfig {
            enabled: true,
            users: users
                .iter()
                .map(|(name, digest)| (name.to_string(), digest.to_string()))
                .collect::<BTreeMap<_, _>>(),
            realm: realm.map(str::to_string),
        }
    }

    fn plan(users: &[(&str, &str)]) -> AdminAuthPlan {
        match AdminAuthPlan::from_config(&config(users, None)) {
            Ok(Some(plan)) => plan,
            other => panic!("no plan: {other:?}"),
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
        assert_eq!(problems(&[("admin", bcrypt)], None), ["users.admin"]);
        assert_eq!(problems(&[("admin", "abc")], None), ["users.admin"]);
        let digest = hex(&sha256(b"secret"));
        assert_eq!(problems(&[("a:b", digest.as_str())], None), ["users.a:b"]);
        assert_eq!(problems(&[], None), ["users"]);
        assert_eq!(
            problems(&[("admin", digest.as_str())], Some("say \"hi\"")),
            ["realm"]
        );
        let switched_off = AdminAuthConfig {
            enabled: false,
            ..AdminAuthConfig::default()
        };
        assert_eq!(AdminAuthPlan::from_config(&switched_off), Ok(None));
    }
}
