//! Authentication policies end to end (key_auth, basic_auth, jwt_auth): the real gateway, a
//! real echo backend that shows what reached it, real clients, keys made by the test.

use std::io::ErrorKind;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

fn header(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(str::to_string)
}

/// A header the echo backend received: `None` when absent (or repeated, which shows as an
/// array).
fn echoed(body: &serde_json::Value, name: &str) -> Option<String> {
    body["headers"][name].as_str().map(str::to_string)
}

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    use std::fmt::Write;
    let mut hex = String::with_capacity(64);
    for byte in sha2::Sha256::digest(text.as_bytes()) {
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

/// Base64url without padding (RFC 7515's encoding of JWT parts and JWK coordinates).
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut text = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let first = u32::from(chunk[0]);
        let second = u32::from(chunk.get(1).copied().unwrap_or(0));
        let third = u32::from(chunk.get(2).copied().unwrap_or(0));
        let group = (first << 16) | (second << 8) | third;
        // 1 byte gives 2 characters, 2 give 3, 3 give 4.
        for index in 0..=chunk.len() {
            let sextet = (group >> (18 - 6 * index)) & 63;
            text.push(char::from(ALPHABET[sextet as usize]));
        }
    }
    text
}

/// A string as a YAML double-quoted scalar (JSON's escapes are YAML's).
fn yaml_string(text: &str) -> String {
    serde_json::to_string(text).unwrap()
}

/// Runs a tool the tests need from Debian, panicking with how to get it when it is missing.
fn run_tool(program: &str, args: &[&str], package: &str) -> Vec<u8> {
    let output = match Command::new(program).args(args).output() {
        Ok(output) => output,
        Err(error) if error.kind() == ErrorKind::NotFound => panic!(
            "{program} is not installed: these tests need it (Debian package {package}; \
             .ci/install-deps installs it)"
        ),
        Err(error) => panic!("cannot run {program}: {error}"),
    };
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// `loom_auth_failures_total` for one route, policy and reason (0 before the first).
async fn auth_failures(gateway: &GatewayProcess, route: &str, policy: &str, reason: &str) -> f64 {
    gateway
        .metric_with(
            "loom_auth_failures_total",
            &[("route", route), ("policy", policy), ("reason", reason)],
        )
        .await
        .unwrap_or(0.0)
}

/// What a refused client sees.
struct Refusal {
    www_authenticate: Option<String>,
    code: String,
}

/// Asserts a 401 in the gateway's JSON error shape that never reached the backend.
async fn refusal(response: reqwest::Response, context: &str) -> Refusal {
    assert_eq!(response.status(), 401, "{context}");
    assert!(
        response.headers().get("x-echo-instance").is_none(),
        "{context}: the backend answered"
    );
    assert_eq!(
        header(&response, "content-type").as_deref(),
        Some("application/json"),
        "{context}"
    );
    let www_authenticate = header(&response, "www-authenticate");
    let body: serde_json::Value = response
        .json()
        .await
        .unwrap_or_else(|error| panic!("{context}: the 401 body is JSON: {error}"));
    assert_eq!(body["error"]["status"], 401, "{context}: {body}");
    let code = body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("{context}: no error code in {body}"))
        .to_string();
    Refusal {
        www_authenticate,
        code,
    }
}

/// Asserts a 200 from the backend and returns what the backend saw.
async fn passed(response: reqwest::Response, context: &str) -> serde_json::Value {
    let status = response.status();
    let instance = response.headers().get("x-echo-instance").is_some();
    let text = response.text().await.unwrap_or_default();
    assert_eq!(status, 200, "{context}: {text}");
    assert!(instance, "{context}: not answered by the backend");
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("{context}: {error}: {text}"))
}

// ---------------------------------------------------------------------------------------------
// key_auth

const ALICE_KEY: &str = "alice-key-7c1f0e2a9b";
const BOB_KEY: &str = "bob-plain-key-5d3e";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_auth_checks_keys_names_the_consumer_and_hides_the_key() {
    let backend = echo("e").await;
    let template = format!(
        r#"listeners:
  - name: http
    address: "127.0.0.1:@HTTP@"
plugins:
  - name: keys
    type: key_auth
    config:
      query: api_key
      keys:
        - consumer: alice
          key_sha256: "{alice_digest}"
        - consumer: bob
          key: "{BOB_KEY}"
routes:
  - id: keyed
    path: /*
    upstream: echo
    plugins: [keys]
upstreams:
{upstream}"#,
        alice_digest = sha256_hex(ALICE_KEY),
        upstream = echo_upstream(backend.addresses()[0].port())
    );
    let gateway = GatewayProcess::start(&template).await;
    let client = client();

    // No key: 401 invalid_credentials, counted as missing.
    let missing_before = auth_failures(&gateway, "keyed", "keys", "missing").await;
    let refused = refusal(
        client.get(gateway.url("/things")).send().await.unwrap(),
        "no key",
    )
    .await;
    assert_eq!(refused.code, "invalid_credentials");
    assert_eq!(
        auth_failures(&gateway, "keyed", "keys", "missing").await,
        missing_before + 1.0
    );

    // A wrong key, and alice's digest itself (the digest is not the key): invalid.
    let invalid_before = auth_failures(&gateway, "keyed", "keys", "invalid").await;
    let sha_of_alice = sha256_hex(ALICE_KEY);
    for wrong in ["not-a-key", sha_of_alice.as_str()] {
        let refused = refusal(
            client
                .get(gateway.url("/things"))
                .header("x-api-key", wrong)
                .send()
                .await
                .unwrap(),
            &format!("key {wrong}"),
        )
        .await;
        assert_eq!(refused.code, "invalid_credentials");
    }
    assert_eq!(
        auth_failures(&gateway, "keyed", "keys", "invalid").await,
        invalid_before + 2.0
    );

    // alice's key in the header: the backend learns the consumer, never the key.
    let seen = passed(
        client
            .get(gateway.url("/things"))
            .header("x-api-key", ALICE_KEY)
            .send()
            .await
            .unwrap(),
        "alice's key",
    )
    .await;
    assert_eq!(echoed(&seen, "x-consumer").as_deref(), Some("alice"));
    assert!(
        seen["headers"].get("x-api-key").is_none(),
        "the key reached the backend: {seen}"
    );

    // bob's plain key, with a consumer header the client made up: bob it is, once.
    let seen = passed(
        client
            .get(gateway.url("/things"))
            .header("x-api-key", BOB_KEY)
            .header("x-consumer", "admin")
            .send()
            .await
            .unwrap(),
        "bob's key with a forged consumer",
    )
    .await;
    assert_eq!(
        seen["headers"]["x-consumer"], "bob",
        "the client's X-Consumer survived: {seen}"
    );

    // The key as a query parameter: accepted, and removed from what goes upstream while the
    // other parameters stay.
    let seen = passed(
        client
            .get(gateway.url(&format!("/search?a=1&api_key={ALICE_KEY}&b=2")))
            .send()
            .await
            .unwrap(),
        "alice's key in the query",
    )
    .await;
    assert_eq!(echoed(&seen, "x-consumer").as_deref(), Some("alice"));
    assert_eq!(seen["path"], "/search");
    let query = seen["query"].as_str().unwrap_or_default();
    assert!(!query.contains("api_key"), "the key went upstream: {query}");
    assert!(!query.contains(ALICE_KEY), "the key went upstream: {query}");
    let parameters: Vec<&str> = query.split('&').collect();
    assert_eq!(parameters, ["a=1", "b=2"], "{query}");

    // A wrong key in the query is refused like one in the header.
    let refused = refusal(
        client
            .get(gateway.url("/search?api_key=nope"))
            .send()
            .await
            .unwrap(),
        "wrong key in the query",
    )
    .await;
    assert_eq!(refused.code, "invalid_credentials");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_restriction_opens_each_route_to_its_consumers() {
    let backend = echo("e").await;
    let template = format!(
        r#"listeners:
  - name: http
    address: "127.0.0.1:@HTTP@"
plugins:
  - name: keys
    type: key_auth
    config:
      keys:
        - consumer: alice
          key_sha256: "{alice_digest}"
        - consumer: bob
          key: "{BOB_KEY}"
  - name: only-alice
    type: consumer_restriction
    config: {{allow: [alice]}}
  - name: not-bob
    type: consumer_restriction
    config: {{deny: [bob]}}
routes:
  - id: for-alice
    path: /alice/*
    upstream: echo
    plugins: [keys, only-alice]
  - id: all-but-bob
    path: /others/*
    upstream: echo
    plugins: [keys, not-bob]
upstreams:
{upstream}"#,
        alice_digest = sha256_hex(ALICE_KEY),
        upstream = echo_upstream(backend.addresses()[0].port())
    );
    let gateway = GatewayProcess::start(&template).await;
    let client = client();
    let get = |path: &str, key: Option<&str>| {
        let mut request = client.get(gateway.url(path));
        if let Some(key) = key {
            request = request.header("x-api-key", key);
        }
        request.send()
    };

    let seen = passed(
        get("/alice/a", Some(ALICE_KEY)).await.unwrap(),
        "alice on hers",
    )
    .await;
    assert_eq!(echoed(&seen, "x-consumer").as_deref(), Some("alice"));
    passed(
        get("/others/a", Some(ALICE_KEY)).await.unwrap(),
        "alice elsewhere",
    )
    .await;

    // bob's key is valid, but neither route lets him in: 403, counted per route.
    for (path, route, policy) in [
        ("/alice/a", "for-alice", "only-alice"),
        ("/others/a", "all-but-bob", "not-bob"),
    ] {
        let before = auth_failures(&gateway, route, policy, "consumer_forbidden").await;
        let response = get(path, Some(BOB_KEY)).await.unwrap();
        assert_eq!(response.status(), 403, "bob on {path}");
        assert!(response.headers().get("x-echo-instance").is_none());
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "forbidden", "bob on {path}: {body}");
        assert_eq!(
            auth_failures(&gateway, route, policy, "consumer_forbidden").await,
            before + 1.0
        );
    }

    // Without a key, key_auth answers first, as before.
    let response = get("/alice/a", None).await.unwrap();
    assert_eq!(response.status(), 401);
}

#[test]
fn a_consumer_restriction_without_an_auth_policy_before_it_fails_the_config_check() {
    let config = |plugins: &str| {
        format!(
            r#"listeners:
  - name: http
    address: "127.0.0.1:8080"
plugins:
  - name: keys
    type: key_auth
    config:
      keys: [{{consumer: alice, key: "{BOB_KEY}"}}]
  - name: only-alice
    type: consumer_restriction
    config: {{allow: [alice]}}
  - name: late-keys
    type: key_auth
    priority: -1
    config:
      keys: [{{consumer: alice, key: "{BOB_KEY}"}}]
routes:
  - id: all
    path: /*
    upstream: pool
    plugins: {plugins}
upstreams:
  - name: pool
    endpoints: ["127.0.0.1:9"]
"#
        )
    };
    let directory = tempfile::tempdir().unwrap();
    let (code, _, stderr) = check_config(directory.path(), &config("[keys, only-alice]"));
    assert_eq!(code, 0, "{stderr}");
    for plugins in [
        "[only-alice]",
        "[only-alice, keys]",
        "[late-keys, only-alice]",
    ] {
        let (code, _, stderr) = check_config(directory.path(), &config(plugins));
        assert_eq!(code, 1, "{plugins}: {stderr}");
        assert!(
            stderr.contains("routes[0].plugins[")
                && stderr.contains(
                    "needs an auth policy (key_auth, basic_auth, jwt_auth or mtls_auth) before it"
                ),
            "{plugins}: {stderr}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// basic_auth

/// One line of `htpasswd -n` output (`user:hash`) made with the given flags (`-nbB`: bcrypt,
/// `-nbm`: apr1 MD5, `-nbs`: {SHA}).
fn htpasswd_line(flags: &str, user: &str, password: &str) -> String {
    let output = run_tool("htpasswd", &[flags, user, password], "apache2-utils");
    String::from_utf8(output).unwrap().trim().to_string()
}

const CAROL_PASSWORD: &str = "carol-password-31";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_checks_bcrypt_and_sha256_users() {
    let files = tempfile::tempdir().unwrap();
    let htpasswd = files.path().join("users.htpasswd");
    let alice = htpasswd_line("-nbB", "alice", "secret");
    assert!(alice.starts_with("alice:$2y$"), "{alice}");
    std::fs::write(&htpasswd, format!("{alice}\n")).unwrap();

    let backend = echo("e").await;
    let template = format!(
        r#"listeners:
  - name: http
    address: "127.0.0.1:@HTTP@"
plugins:
  - name: users
    type: basic_auth
    config:
      realm: loom-test
      htpasswd: {htpasswd}
      users:
        - username: carol
          password: "{carol_digest}"
routes:
  - id: basic
    path: /*
    upstream: echo
    plugins: [users]
upstreams:
{upstream}"#,
        htpasswd = yaml_string(&htpasswd.display().to_string()),
        carol_digest = sha256_hex(CAROL_PASSWORD),
        upstream = echo_upstream(backend.addresses()[0].port())
    );
    let gateway = GatewayProcess::start(&template).await;
    let client = client();
    let challenge = |refused: &Refusal, context: &str| {
        let value = refused
            .www_authenticate
            .as_deref()
            .unwrap_or_else(|| panic!("{context}: a 401 carries WWW-Authenticate"));
        assert!(
            value.starts_with("Basic realm=\"loom-test\""),
            "{context}: {value}"
        );
    };

    let missing_before = auth_failures(&gateway, "basic", "users", "missing").await;
    let refused = refusal(
        client.get(gateway.url("/private")).send().await.unwrap(),
        "no credentials",
    )
    .await;
    challenge(&refused, "no credentials");
    assert_eq!(
        auth_failures(&gateway, "basic", "users", "missing").await,
        missing_before + 1.0
    );

    let invalid_before = auth_failures(&gateway, "basic", "users", "invalid").await;
    for (user, password) in [
        ("alice", "wrong"),
        ("mallory", "secret"),
        ("carol", "secret"),
    ] {
        let context = format!("{user}:{password}");
        let refused = refusal(
            client
                .get(gateway.url("/private"))
                .basic_auth(user, Some(password))
                .send()
                .await
                .unwrap(),
            &context,
        )
        .await;
        challenge(&refused, context.as_str());
    }
    assert_eq!(
        auth_failures(&gateway, "basic", "users", "invalid").await,
        invalid_before + 3.0
    );
    // Not base64 at all: a 401, not a failure of the gateway.
    let refused = refusal(
        client
            .get(gateway.url("/private"))
            .header("authorization", "Basic !!not-base64!!")
            .send()
            .await
            .unwrap(),
        "malformed credentials",
    )
    .await;
    challenge(&refused, "malformed credentials");

    // The bcrypt user from the htpasswd file, twice (the second from the cache), with a
    // consumer header the client made up.
    for attempt in ["first", "cached"] {
        let seen = passed(
            client
                .get(gateway.url("/private"))
                .basic_auth("alice", Some("secret"))
                .header("x-consumer", "admin")
                .send()
                .await
                .unwrap(),
            &format!("alice, {attempt}"),
        )
        .await;
        assert_eq!(seen["headers"]["x-consumer"], "alice", "{attempt}: {seen}");
        // hide_credentials is off by default: Authorization goes upstream.
        assert!(
            echoed(&seen, "authorization").is_some_and(|value| value.starts_with("Basic ")),
            "{attempt}: {seen}"
        );
    }
    // A cached success does not let a wrong password through.
    let refused = refusal(
        client
            .get(gateway.url("/private"))
            .basic_auth("alice", Some("secret2"))
            .send()
            .await
            .unwrap(),
        "alice with a wrong password after a cached success",
    )
    .await;
    challenge(&refused, "alice after the cache");

    // The SHA-256 user from `users:`.
    let seen = passed(
        client
            .get(gateway.url("/private"))
            .basic_auth("carol", Some(CAROL_PASSWORD))
            .send()
            .await
            .unwrap(),
        "carol",
    )
    .await;
    assert_eq!(echoed(&seen, "x-consumer").as_deref(), Some("carol"));
}

/// `loom -t -c <directory>/loom.yaml`: the exit code, stdout and stderr.
fn check_config(directory: &std::path::Path, config: &str) -> (i32, String, String) {
    check_config_file(&directory.join("loom.yaml"), config)
}

#[test]
fn htpasswd_lines_in_unsupported_formats_fail_the_config_check() {
    // The htpasswd path is relative to the config's directory.
    let config = r#"listeners:
  - name: http
    address: "127.0.0.1:8080"
plugins:
  - name: users
    type: basic_auth
    config:
      htpasswd: users.htpasswd
routes:
  - id: all
    path: /*
    upstream: pool
    plugins: [users]
upstreams:
  - name: pool
    endpoints: ["127.0.0.1:9"]
"#;
    let bcrypt = htpasswd_line("-nbB", "alice", "secret");

    // The same config with only the bcrypt line is valid: what fails below is the line.
    let directory = tempfile::tempdir().unwrap();
    std::fs::write(
        directory.path().join("users.htpasswd"),
        format!("{bcrypt}\n"),
    )
    .unwrap();
    let (code, stdout, stderr) = check_config(directory.path(), config);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("config is valid"), "{stdout}");

    for (flags, scheme) in [("-nbm", "$apr1$"), ("-nbs", "{SHA}")] {
        let unsupported = htpasswd_line(flags, "bob", "secret");
        assert!(
            unsupported.starts_with(&format!("bob:{scheme}")),
            "{unsupported}"
        );
        let directory = tempfile::tempdir().unwrap();
        std::fs::write(
            directory.path().join("users.htpasswd"),
            format!("{bcrypt}\n{unsupported}\n"),
        )
        .unwrap();
        let (code, _, stderr) = check_config(directory.path(), config);
        assert_eq!(code, 1, "{scheme}: {stderr}");
        assert!(
            stderr.contains("plugins[0].config.htpasswd"),
            "{scheme}: the error names the config key: {stderr}"
        );
        assert!(
            stderr.contains("users.htpasswd:2") || stderr.contains("line 2"),
            "{scheme}: the error names the file and its line 2: {stderr}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// jwt_auth

const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "api";
const HS_SECRET: &str = "an-hmac-secret-long-enough-for-hs256-0123456789";

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Valid claims for `sub`, expiring in 10 minutes.
fn claims(sub: &str) -> serde_json::Value {
    let now = unix_now();
    json!({
        "sub": sub,
        "email": format!("{sub}@example.test"),
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 600,
    })
}

fn sign(
    algorithm: Algorithm,
    kid: Option<&str>,
    claims: &serde_json::Value,
    key: &EncodingKey,
) -> String {
    let mut header = Header::new(algorithm);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, claims, key).expect("the token signs")
}

/// An RSA 2048 key pair from openssl: (PKCS#8 private PEM, SPKI public PEM).
fn rsa_key_pair() -> (Vec<u8>, String) {
    let directory = tempfile::tempdir().unwrap();
    let private = directory.path().join("rsa.pem");
    let private_path = private.to_str().unwrap();
    run_tool(
        "openssl",
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            private_path,
        ],
        "openssl",
    );
    let public = run_tool(
        "openssl",
        &["pkey", "-in", private_path, "-pubout"],
        "openssl",
    );
    (
        std::fs::read(&private).unwrap(),
        String::from_utf8(public).unwrap(),
    )
}

/// Sends `token` as a bearer token and asserts a 401 that says the token is invalid; when
/// `reason` is given, that exactly one failure with that reason was counted.
async fn refused_token(
    gateway: &GatewayProcess,
    client: &reqwest::Client,
    token: &str,
    reason: Option<&str>,
    context: &str,
) {
    let before = match reason {
        Some(reason) => auth_failures(gateway, "jwt", "tokens", reason).await,
        None => 0.0,
    };
    let response = client
        .get(gateway.url("/api/me"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let refused = refusal(response, context).await;
    let challenge = refused
        .www_authenticate
        .unwrap_or_else(|| panic!("{context}: a 401 carries WWW-Authenticate"));
    assert!(challenge.starts_with("Bearer "), "{context}: {challenge}");
    assert!(
        challenge.contains("error=\"invalid_token\""),
        "{context}: {challenge}"
    );
    if let Some(reason) = reason {
        assert_eq!(
            auth_failures(gateway, "jwt", "tokens", reason).await,
            before + 1.0,
            "{context}: counted as {reason}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_auth_verifies_every_algorithm_and_refuses_bad_tokens() {
    let (rsa_private, rsa_public) = rsa_key_pair();
    let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let rsa_key = EncodingKey::from_rsa_pem(&rsa_private).expect("openssl's RSA key");
    let ec_key = EncodingKey::from_ec_pem(ec.serialize_pem().as_bytes()).expect("P-256 key");
    let ed_key = EncodingKey::from_ed_pem(ed.serialize_pem().as_bytes()).expect("Ed25519 key");
    let hs_key = EncodingKey::from_secret(HS_SECRET.as_bytes());

    let backend = echo("e").await;
    let template = format!(
        r#"listeners:
  - name: http
    address: "127.0.0.1:@HTTP@"
plugins:
  - name: tokens
    type: jwt_auth
    config:
      issuer: "{ISSUER}"
      audience: {AUDIENCE}
      from_cookie: session
      from_query: access_token
      claims_to_headers:
        sub: X-User
        email: X-Email
      keys:
        - kid: rsa-1
          algorithm: RS256
          public_key: {rsa_public}
        - kid: ec-1
          algorithm: ES256
          public_key: {ec_public}
        - kid: ed-1
          algorithm: EdDSA
          public_key: {ed_public}
        - kid: hs-1
          algorithm: HS256
          secret: {secret}
routes:
  - id: jwt
    path: /*
    upstream: echo
    plugins: [tokens]
upstreams:
{upstream}"#,
        rsa_public = yaml_string(&rsa_public),
        ec_public = yaml_string(&ec.public_key_pem()),
        ed_public = yaml_string(&ed.public_key_pem()),
        secret = yaml_string(HS_SECRET),
        upstream = echo_upstream(backend.addresses()[0].port())
    );
    let gateway = GatewayProcess::start(&template).await;
    let client = client();

    // Each algorithm, with a consumer header the client made up.
    let valid = [
        ("RS256", "user-rs", Algorithm::RS256, "rsa-1", &rsa_key),
        ("ES256", "user-es", Algorithm::ES256, "ec-1", &ec_key),
        ("EdDSA", "user-ed", Algorithm::EdDSA, "ed-1", &ed_key),
        ("HS256", "user-hs", Algorithm::HS256, "hs-1", &hs_key),
    ];
    for (name, sub, algorithm, kid, key) in valid {
        let token = sign(algorithm, Some(kid), &claims(sub), key);
        let seen = passed(
            client
                .get(gateway.url("/api/me"))
                .bearer_auth(&token)
                .header("x-consumer", "admin")
                .send()
                .await
                .unwrap(),
            name,
        )
        .await;
        assert_eq!(echoed(&seen, "x-user").as_deref(), Some(sub), "{name}");
        assert_eq!(seen["headers"]["x-consumer"], sub, "{name}: {seen}");
        assert_eq!(
            echoed(&seen, "x-email"),
            Some(format!("{sub}@example.test")),
            "{name}"
        );
        // hide_credentials is on by default: the token stays at the gateway.
        assert!(
            seen["headers"].get("authorization").is_none(),
            "{name}: the token went upstream: {seen}"
        );
    }

    // Expired a few seconds ago: within the default 30 s clock skew, still accepted.
    let mut within_skew = claims("user-skew");
    within_skew["exp"] = json!(unix_now() - 5);
    passed(
        client
            .get(gateway.url("/api/me"))
            .bearer_auth(sign(
                Algorithm::RS256,
                Some("rsa-1"),
                &within_skew,
                &rsa_key,
            ))
            .send()
            .await
            .unwrap(),
        "expired within the clock skew",
    )
    .await;

    // No token at all: a challenge without an error.
    let missing_before = auth_failures(&gateway, "jwt", "tokens", "missing").await;
    let refused = refusal(
        client.get(gateway.url("/api/me")).send().await.unwrap(),
        "no token",
    )
    .await;
    let challenge = refused
        .www_authenticate
        .expect("a 401 carries WWW-Authenticate");
    assert!(
        challenge.starts_with("Bearer realm=\"loom\""),
        "{challenge}"
    );
    assert!(!challenge.contains("invalid_token"), "{challenge}");
    assert_eq!(
        auth_failures(&gateway, "jwt", "tokens", "missing").await,
        missing_before + 1.0
    );

    let mut expired = claims("user-rs");
    expired["exp"] = json!(unix_now() - 300);
    refused_token(
        &gateway,
        &client,
        &sign(Algorithm::RS256, Some("rsa-1"), &expired, &rsa_key),
        Some("expired"),
        "expired",
    )
    .await;

    let mut early = claims("user-rs");
    early["nbf"] = json!(unix_now() + 300);
    refused_token(
        &gateway,
        &client,
        &sign(Algorithm::ES256, Some("ec-1"), &early, &ec_key),
        Some("not_yet_valid"),
        "not valid before a future time",
    )
    .await;

    let mut foreign_issuer = claims("user-rs");
    foreign_issuer["iss"] = json!("https://evil.test");
    refused_token(
        &gateway,
        &client,
        &sign(Algorithm::RS256, Some("rsa-1"), &foreign_issuer, &rsa_key),
        Some("wrong_issuer"),
        "wrong issuer",
    )
    .await;

    let mut foreign_audience = claims("user-rs");
    foreign_audience["aud"] = json!("another-api");
    refused_token(
        &gateway,
        &client,
        &sign(Algorithm::EdDSA, Some("ed-1"), &foreign_audience, &ed_key),
        Some("wrong_audience"),
        "wrong audience",
    )
    .await;

    // exp is required.
    let mut endless = claims("user-hs");
    endless.as_object_mut().unwrap().remove("exp");
    refused_token(
        &gateway,
        &client,
        &sign(Algorithm::HS256, Some("hs-1"), &endless, &hs_key),
        None,
        "no exp",
    )
    .await;

    // alg none, hand-made: no signature at all.
    let unsigned = format!(
        "{}.{}.",
        base64url(br#"{"alg":"none","typ":"JWT"}"#),
        base64url(&serde_json::to_vec(&claims("mallory")).unwrap())
    );
    refused_token(&gateway, &client, &unsigned, None, "alg none").await;
    let unsigned_with_kid = format!(
        "{}.{}.",
        base64url(br#"{"alg":"none","typ":"JWT","kid":"rsa-1"}"#),
        base64url(&serde_json::to_vec(&claims("mallory")).unwrap())
    );
    refused_token(
        &gateway,
        &client,
        &unsigned_with_kid,
        None,
        "alg none, kid rsa-1",
    )
    .await;

    // Key confusion: HS256 keyed with the RSA public key's PEM, naming the RSA key.
    let confused = sign(
        Algorithm::HS256,
        Some("rsa-1"),
        &claims("mallory"),
        &EncodingKey::from_secret(rsa_public.as_bytes()),
    );
    refused_token(
        &gateway,
        &client,
        &confused,
        None,
        "HS256 with the RSA public key",
    )
    .await;

    // An algorithm other than the named key's own, validly signed by another key.
    let mismatched = sign(Algorithm::ES256, Some("rsa-1"), &claims("mallory"), &ec_key);
    refused_token(
        &gateway,
        &client,
        &mismatched,
        None,
        "ES256 naming the RSA key",
    )
    .await;

    // Tampered payload: another subject under the original signature.
    let genuine = sign(
        Algorithm::RS256,
        Some("rsa-1"),
        &claims("user-rs"),
        &rsa_key,
    );
    let parts: Vec<&str> = genuine.split('.').collect();
    assert_eq!(parts.len(), 3);
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        base64url(&serde_json::to_vec(&claims("mallory")).unwrap()),
        parts[2]
    );
    refused_token(
        &gateway,
        &client,
        &tampered,
        Some("invalid"),
        "tampered payload",
    )
    .await;

    // A kid no key has, and no kid where every key has one.
    let unknown = sign(Algorithm::RS256, Some("nope"), &claims("user-rs"), &rsa_key);
    refused_token(
        &gateway,
        &client,
        &unknown,
        Some("unknown_key"),
        "unknown kid",
    )
    .await;
    let kidless = sign(Algorithm::RS256, None, &claims("user-rs"), &rsa_key);
    refused_token(&gateway, &client, &kidless, None, "no kid").await;

    refused_token(&gateway, &client, "not.a.jwt", None, "garbage").await;

    // From a cookie.
    let token = sign(
        Algorithm::ES256,
        Some("ec-1"),
        &claims("user-cookie"),
        &ec_key,
    );
    let seen = passed(
        client
            .get(gateway.url("/api/me"))
            .header("cookie", format!("theme=dark; session={token}"))
            .send()
            .await
            .unwrap(),
        "token in a cookie",
    )
    .await;
    assert_eq!(echoed(&seen, "x-user").as_deref(), Some("user-cookie"));
    let refused = refusal(
        client
            .get(gateway.url("/api/me"))
            .header(
                "cookie",
                format!(
                    "session={}",
                    sign(Algorithm::RS256, Some("rsa-1"), &expired, &rsa_key)
                ),
            )
            .send()
            .await
            .unwrap(),
        "expired token in a cookie",
    )
    .await;
    assert!(
        refused
            .www_authenticate
            .is_some_and(|value| value.starts_with("Bearer ") && value.contains("invalid_token"))
    );

    // From the query: accepted, and not sent upstream.
    let token = sign(
        Algorithm::EdDSA,
        Some("ed-1"),
        &claims("user-query"),
        &ed_key,
    );
    let seen = passed(
        client
            .get(gateway.url(&format!("/api/search?access_token={token}&page=2")))
            .send()
            .await
            .unwrap(),
        "token in the query",
    )
    .await;
    assert_eq!(echoed(&seen, "x-user").as_deref(), Some("user-query"));
    assert_eq!(seen["path"], "/api/search");
    assert_eq!(seen["query"], "page=2", "{seen}");
}

// ---------------------------------------------------------------------------------------------
// jwt_auth with a JWKS endpoint

/// An HTTP server answering every request with the current JWKS document, counting them.
struct JwksServer {
    port: u16,
    document: Arc<Mutex<String>>,
    served: Arc<AtomicUsize>,
}

impl JwksServer {
    async fn start(document: String) -> JwksServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let document = Arc::new(Mutex::new(document));
        let served = Arc::new(AtomicUsize::new(0));
        let (shared_document, counter) = (Arc::clone(&document), Arc::clone(&served));
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let document = Arc::clone(&shared_document);
                let counter = Arc::clone(&counter);
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buffer = [0u8; 4096];
                    while !head.windows(4).any(|window| window == b"\r\n\r\n") {
                        match stream.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(read) => head.extend_from_slice(&buffer[..read]),
                        }
                    }
                    let body = document.lock().unwrap().clone();
                    let response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    counter.fetch_add(1, Ordering::SeqCst);
                    let _ = stream.write_all(response.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        JwksServer {
            port,
            document,
            served,
        }
    }

    fn serve(&self, document: String) {
        *self.document.lock().unwrap() = document;
    }

    fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }
}

/// A JWKS with one P-256 key: x and y from the uncompressed point 0x04 || x || y.
fn ec_jwks(key: &rcgen::KeyPair, kid: &str) -> String {
    let point = key.public_key_raw();
    assert_eq!(point.len(), 65, "an uncompressed P-256 point");
    assert_eq!(point[0], 4, "an uncompressed P-256 point");
    json!({
        "keys": [{
            "kty": "EC",
            "crv": "P-256",
            "x": base64url(&point[1..33]),
            "y": base64url(&point[33..65]),
            "kid": kid,
            "alg": "ES256",
            "use": "sig",
        }]
    })
    .to_string()
}

/// Sends `token` until the status is `expected` (5 s at most); the last answer's status.
async fn status_becomes(
    gateway: &GatewayProcess,
    client: &reqwest::Client,
    token: &str,
    expected: u16,
) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = client
            .get(gateway.url("/api/me"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        if status == expected || Instant::now() >= deadline {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_auth_follows_a_rotated_jwks() {
    let first = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let second = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let first_key = EncodingKey::from_ec_pem(first.serialize_pem().as_bytes()).unwrap();
    let second_key = EncodingKey::from_ec_pem(second.serialize_pem().as_bytes()).unwrap();
    let jwks = JwksServer::start(ec_jwks(&first, "k1")).await;

    let backend = echo("e").await;
    let template = format!(
        r#"listeners:
  - name: http
    address: "127.0.0.1:@HTTP@"
plugins:
  - name: tokens
    type: jwt_auth
    config:
      jwks_url: "http://127.0.0.1:{jwks_port}/jwks.json"
      jwks_refresh_interval: 5m
      jwks_min_refresh_interval: 1s
      jwks_timeout: 2s
routes:
  - id: jwt
    path: /*
    upstream: echo
    plugins: [tokens]
upstreams:
{upstream}"#,
        jwks_port = jwks.port,
        upstream = echo_upstream(backend.addresses()[0].port())
    );
    let gateway = GatewayProcess::start(&template).await;
    let client = client();

    let token_one = sign(
        Algorithm::ES256,
        Some("k1"),
        &claims("user-one"),
        &first_key,
    );
    let token_two = sign(
        Algorithm::ES256,
        Some("k2"),
        &claims("user-two"),
        &second_key,
    );

    // The keys may be fetched at start or on the first request: either way k1 works soon.
    assert_eq!(
        status_becomes(&gateway, &client, &token_one, 200).await,
        200
    );
    let seen = passed(
        client
            .get(gateway.url("/api/me"))
            .bearer_auth(&token_one)
            .send()
            .await
            .unwrap(),
        "k1",
    )
    .await;
    assert_eq!(echoed(&seen, "x-consumer").as_deref(), Some("user-one"));
    assert!(jwks.served() >= 1);
    // Not yet published: refused.
    refused_token(
        &gateway,
        &client,
        &token_two,
        None,
        "k2 before the rotation",
    )
    .await;

    // Rotate: the unknown kid makes the gateway fetch again, at most once a second.
    let served_before_rotation = jwks.served();
    jwks.serve(ec_jwks(&second, "k2"));
    assert_eq!(
        status_becomes(&gateway, &client, &token_two, 200).await,
        200,
        "k2 was not picked up within 5 s of the rotation"
    );
    assert!(jwks.served() > served_before_rotation);
    let seen = passed(
        client
            .get(gateway.url("/api/me"))
            .bearer_auth(&token_two)
            .send()
            .await
            .unwrap(),
        "k2",
    )
    .await;
    assert_eq!(echoed(&seen, "x-consumer").as_deref(), Some("user-two"));

    // k1 is gone from the published set: its tokens are refused now.
    assert_eq!(
        status_becomes(&gateway, &client, &token_one, 401).await,
        401,
        "k1 still accepted 5 s after the rotation"
    );
    refused_token(&gateway, &client, &token_one, None, "k1 after the rotation").await;

    // A flood of unknown kids does not become a flood of fetches.
    let unknown = sign(
        Algorithm::ES256,
        Some("k-unknown"),
        &claims("user-x"),
        &second_key,
    );
    let served_before_flood = jwks.served();
    let started = Instant::now();
    for _ in 0..20 {
        let status = client
            .get(gateway.url("/api/me"))
            .bearer_auth(&unknown)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 401);
    }
    let elapsed = started.elapsed();
    let fetches = jwks.served() - served_before_flood;
    assert!(
        (fetches as u64) <= elapsed.as_secs() + 2,
        "{fetches} JWKS fetches for 20 unknown kids in {elapsed:?}"
    );
}
