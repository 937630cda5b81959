//! Secrets taken out of config shown by the admin API (`GET /config`, `GET /config/diff`,
//! the `config` of a route, upstream or plugin).
//!
//! The config has no marker for what is secret, so this goes by where values stand and what
//! they look like, erring towards hiding:
//! - values of keys that name a secret (`password`, `secret`, `token`, `key_sha256`, ...)
//!   and of credential headers (`authorization`, `cookie`, `x-api-key`);
//! - the values of a `users` map (Go Loom's `admin.auth.users`: name → password digest) and
//!   `key` inside a `keys` list (`key_auth`'s plain keys);
//! - PEM private keys, `Bearer` credentials, and the password of a URL (`redis://:pw@host`).
//!
//! A secret inside a Proxy-Wasm plugin's free-form `config` string is not recognised.

use serde_json::Value;

pub const REDACTED: &str = "<redacted>";

/// Keys whose values are secret wherever they appear (compared without case).
const SECRET_KEYS: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "secret_base64",
    "client_secret",
    "token",
    "token_sha256",
    "access_token",
    "refresh_token",
    "api_key",
    "apikey",
    "key_sha256",
    "private_key",
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-api-key",
];

/// A copy of `value` with its secrets replaced by `"<redacted>"`.
pub fn redacted(value: &Value) -> Value {
    redact_under(value, &[])
}

/// Stands for "an element of a list" among the keys above a value.
const ELEMENT: &str = "[]";

/// `parents` are the keys above `value`, innermost last.
fn redact_under(value: &Value, parents: &[&str]) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(key, child)| {
                    let hidden = is_secret_key(key)
                        || (parents.ends_with(&["users"]) && child.is_string())
                        || (is_collector_headers(parents) && child.is_string())
                        || (is_header_map(parents) && names_a_credential(key))
                        || (key == "key" && parents.ends_with(&["keys", ELEMENT]));
                    let shown = if hidden {
                        hide_all(child)
                    } else {
                        let mut path = parents.to_vec();
                        path.push(key);
                        redact_under(child, &path)
                    };
                    (key.clone(), shown)
                })
                .collect(),
        ),
        Value::Array(elements) => {
            let mut path = parents.to_vec();
            path.push(ELEMENT);
            Value::Array(
                elements
                    .iter()
                    .map(|element| redact_under(element, &path))
                    .collect(),
            )
        }
        Value::String(text) => Value::String(redact_text(text)),
        other => other.clone(),
    }
}

/// `tracing.headers` and `metrics.opentelemetry.headers` exist for collector credentials:
/// every value is hidden, whatever the header is called.
fn is_collector_headers(parents: &[&str]) -> bool {
    parents.ends_with(&["tracing", "headers"]) || parents.ends_with(&["opentelemetry", "headers"])
}

/// Header maps a route or policy sets or matches on.
fn is_header_map(parents: &[&str]) -> bool {
    parents
        .last()
        .is_some_and(|last| matches!(*last, "set_headers" | "add_headers" | "headers"))
}

/// A header name that usually carries a credential (`X-Internal-Token`, `X-Auth-Key`).
fn names_a_credential(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "token",
        "secret",
        "password",
        "auth",
        "key",
        "cookie",
        "session",
        "signature",
    ]
    .iter()
    .any(|word| name.contains(word))
}

fn is_secret_key(key: &str) -> bool {
    SECRET_KEYS
        .iter()
        .any(|secret| key.eq_ignore_ascii_case(secret))
}

/// Every scalar below `value` hidden; the shape stays (so a list of secrets is still a list).
fn hide_all(value: &Value) -> Value {
    match value {
        Value::Null => Value::Null,
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(key, child)| (key.clone(), hide_all(child)))
                .collect(),
        ),
        Value::Array(elements) => Value::Array(elements.iter().map(hide_all).collect()),
        _ => Value::String(REDACTED.to_owned()),
    }
}

/// A string that is a secret by its look, or holds one.
fn redact_text(text: &str) -> String {
    if text.contains("PRIVATE KEY-----") {
        return REDACTED.to_owned();
    }
    if text.len() > 7 && text[..7].eq_ignore_ascii_case("bearer ") {
        return format!("{} {REDACTED}", &text[..6]);
    }
    redact_url_password(text).unwrap_or_else(|| text.to_owned())
}

/// `scheme://user:password@host...` with the password hidden; `None` when there is none.
fn redact_url_password(text: &str) -> Option<String> {
    let scheme_end = text.find("://")? + 3;
    let authority_end = text[scheme_end..]
        .find(['/', '?', '#'])
        .map_or(text.len(), |end| scheme_end + end);
    let at = text[scheme_end..authority_end].rfind('@')? + scheme_end;
    let colon = text[scheme_end..at].find(':')? + scheme_end;
    Some(format!("{}{REDACTED}{}", &text[..=colon], &text[at..]))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn secrets_are_hidden_by_key_place_and_look() {
        let config = json!({
            "admin": {
                "address": "127.0.0.1:9091",
                "auth": {"enabled": true, "users": {"admin": "2bb80d53"}, "roles": {"admin": "write"}},
                "tokens": [{"name": "ci", "token_sha256": "abcd", "role": "write"}]
            },
            "plugins": [
                {"name": "keys", "type": "key_auth", "config": {
                    "header": "X-API-Key",
                    "keys": [{"consumer": "a", "key": "plain"}, {"consumer": "b", "key_sha256": "ff"}]
                }},
                {"name": "basic", "type": "basic_auth", "config": {"users": [{"username": "u", "password": "$2y$05$x"}]}},
                {"name": "jwt", "type": "jwt_auth", "config": {"keys": [
                    {"algorithm": "HS256", "secret": "s3"},
                    {"algorithm": "RS256", "public_key": "-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----"}
                ]}},
                {"name": "limit", "type": "rate_limit", "config": {
                    "key": "client_ip",
                    "redis": {"url": "redis://:hunter2@redis:6379/0"}
                }},
                {"name": "transform", "type": "transform", "config": {
                    "request": {"set_headers": {"Authorization": "Basic YWJj", "X-Trace": "Bearer abc.def"}}
                }}
            ],
            "stream": {"auth": {"tokens": [{"token": "t0k", "principal": "p"}]}},
            "listeners": [{"name": "tls", "tls": {"key": "certs/server.key"}}],
            "extra": "-----BEGIN RSA PRIVATE KEY-----\nMII\n-----END RSA PRIVATE KEY-----"
        });
        let shown = redacted(&config);
        let at = |pointer: &str| shown.pointer(pointer).cloned().unwrap_or(Value::Null);
        for pointer in [
            "/admin/auth/users/admin",
            "/admin/tokens/0/token_sha256",
            "/plugins/0/config/keys/0/key",
            "/plugins/0/config/keys/1/key_sha256",
            "/plugins/1/config/users/0/password",
            "/plugins/2/config/keys/0/secret",
            "/plugins/4/config/request/set_headers/Authorization",
            "/stream/auth/tokens/0/token",
            "/extra",
        ] {
            assert_eq!(at(pointer), json!(REDACTED), "{pointer}");
        }
        // What is not secret stays: names, roles, public keys, key selectors, file names.
        assert_eq!(at("/admin/auth/roles/admin"), json!("write"));
        assert_eq!(at("/admin/tokens/0/name"), json!("ci"));
        assert_eq!(at("/plugins/0/config/keys/0/consumer"), json!("a"));
        assert_eq!(at("/plugins/1/config/users/0/username"), json!("u"));
        assert_eq!(at("/plugins/3/config/key"), json!("client_ip"));
        assert!(
            at("/plugins/2/config/keys/1/public_key")
                .as_str()
                .unwrap()
                .contains("PUBLIC KEY")
        );
        assert_eq!(at("/listeners/0/tls/key"), json!("certs/server.key"));
        assert_eq!(
            at("/plugins/3/config/redis/url"),
            json!("redis://:<redacted>@redis:6379/0")
        );
        assert_eq!(
            at("/plugins/4/config/request/set_headers/X-Trace"),
            json!("Bearer <redacted>")
        );
    }

    #[test]
    fn url_passwords_only_where_a_url_has_one() {
        assert_eq!(
            redact_url_password("redis://user:pw@host:1/2?x=@"),
            Some("redis://user:<redacted>@host:1/2?x=@".to_owned())
        );
        assert_eq!(redact_url_password("redis://host:6379"), None);
        assert_eq!(redact_url_password("redis://user@host"), None);
        assert_eq!(redact_url_password("http://host/a:b@c"), None);
        assert_eq!(redact_url_password("plain text"), None);
    }
}

#[cfg(test)]
mod position_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn collector_headers_and_credential_headers_are_hidden_by_where_they_stand() {
        let shown = redacted(&json!({
            "tracing": {"headers": {"x-honeycomb-team": "abc", "dd-api-key": "def"}},
            "metrics": {"opentelemetry": {"headers": {"lightstep-access-token": "ghi"}}},
            "chain": [{"config": {"request": {"set_headers": {
                "X-Internal-Token": "jkl", "x-route": "${route_id}"
            }}}}],
        }));
        let text = shown.to_string();
        for secret in ["abc", "def", "ghi", "jkl"] {
            assert!(!text.contains(secret), "{secret} shown in {text}");
        }
        assert!(
            text.contains("${route_id}"),
            "a plain header value stays: {text}"
        );
    }
}
