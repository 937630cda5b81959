//! HTTP Basic authentication for the admin listener (Go Loom's `admin.auth`).
//!
//! The config holds each user's password as its SHA-256 digest in hex, Go Loom's format. A
//! request passes when its `Authorization: Basic` credentials name a configured user and the
//! digest of the password sent equals that user's. Every user is compared, each comparison
//! in constant time, so the time an answer takes tells neither which user names exist nor
//! how much of a digest matched.

use http::HeaderValue;
use sha2::{Digest, Sha256};

use crate::config::schema::AdminAuthConfig;

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

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut digest = [0; 32];
    digest.copy_from_slice(&Sha256::digest(bytes));
    digest
}

/// 64 hexadecimal characters (either case) as 32 bytes.
fn parse_digest(text: &str) -> Option<[u8; 32]> {
    let text = text.trim().as_bytes();
    if text.len() != 64 {
        return None;
    }
    let mut digest = [0; 32];
    for (byte, pair) in digest.iter_mut().zip(text.chunks_exact(2)) {
        *byte = (hex_value(pair[0])? << 4) | hex_value(pair[1])?;
    }
    Some(digest)
}

fn hex_value(character: u8) -> Option<u8> {
    match character {
        b'0'..=b'9' => Some(character - b'0'),
        b'a'..=b'f' => Some(character - b'a' + 10),
        b'A'..=b'F' => Some(character - b'A' + 10),
        _ => None,
    }
}

/// Equal length and equal bytes, looking at every byte whatever the first difference. (The
/// length itself is not secret: every digest is 32 bytes, and a name's length is public.)
fn constant_time_equal(left: &[u8], right: &[u8]) -> bool {
    if left.len() != right.len() {
        return false;
    }
    let difference = left
        .iter()
        .zip(right)
        .fold(0u8, |difference, (left, right)| difference | (left ^ right));
    // Keeps the optimiser from turning the fold into an early exit.
    std::hint::black_box(difference) == 0
}

/// The name and password of an `Authorization: Basic <base64 of name:password>` header
/// (RFC 7617); the scheme name in any case.
fn basic_credentials(header: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let text = std::str::from_utf8(header).ok()?.trim();
    let (scheme, encoded) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let mut name = decode_base64(encoded.trim())?;
    let colon = name.iter().position(|byte| *byte == b':')?;
    let password = name.split_off(colon + 1);
    name.truncate(colon);
    Some((name, password))
}

/// Standard base64 (RFC 4648 section 4, the alphabet with `+` and `/`), padding optional;
/// `None` for anything else. Written here because no base64 crate is a direct dependency and
/// a credentials header is all it decodes.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let unpadded = match bytes {
        [rest @ .., b'=', b'='] => rest,
        [rest @ .., b'='] => rest,
        all => all,
    };
    // Padding, when present, completes the last group of four; one character alone in a
    // group cannot encode a byte.
    if (unpadded.len() != bytes.len() && !bytes.len().is_multiple_of(4)) || unpadded.len() % 4 == 1
    {
        return None;
    }
    let mut decoded = Vec::with_capacity(unpadded.len() / 4 * 3 + 2);
    let mut buffer: u32 = 0;
    let mut buffered_bits: u32 = 0;
    for &character in unpadded {
        let value = match character {
            b'A'..=b'Z' => character - b'A',
            b'a'..=b'z' => character - b'a' + 26,
            b'0'..=b'9' => character - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        buffer = (buffer << 6) | u32::from(value);
        buffered_bits += 6;
        if buffered_bits >= 8 {
            buffered_bits -= 8;
            decoded.push((buffer >> buffered_bits) as u8);
            buffer &= (1 << buffered_bits) - 1;
        }
    }
    Some(decoded)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::fmt::Write;

    use super::*;

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
