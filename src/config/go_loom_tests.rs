//! Configs in the Go Loom gateway's schema: each Go Loom key loads and means what it means
//! there, and a setting given under both its Loom and its Go Loom name is an error naming both.

use std::path::{Path, PathBuf};

use super::validate::ValidatedConfig;

const CERT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/localhost.crt");
const KEY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/localhost.key");

/// A config file name in the crate root (the file itself is never read).
fn config_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("go-loom-test.yaml")
}

/// The validated config, or its errors as `key_path: message`.
fn load(text: &str) -> Result<ValidatedConfig, Vec<String>> {
    super::load_text(&config_path(), text).map_err(|errors| {
        errors
            .iter()
            .map(|error| format!("{}: {}", error.key_path, error.message))
            .collect()
    })
}

fn load_ok(text: &str) -> ValidatedConfig {
    match load(text) {
        Ok(validated) => validated,
        Err(errors) => panic!("config refused:\n{}", errors.join("\n")),
    }
}

fn errors_of(text: &str) -> Vec<String> {
    match load(text) {
        Ok(_) => panic!("config accepted where errors were expected:\n{text}"),
        Err(errors) => errors,
    }
}

#[test]
fn go_loom_listener_protocols_and_tls_file_names_load() {
    let config = load_ok(&format!(
        r#"
listeners:
  - {{name: plain, address: ":18080", protocol: http}}
  - {{name: cleartext-h2, address: ":18081", protocol: h2c}}
  - {{name: grpc, address: ":18082", protocol: grpc}}
  - name: grpc-tls
    address: ":18443"
    protocol: grpcs
    tls: {{cert_file: "{CERT}", key_file: "{KEY}"}}
"#
    ));
    let protocols: Vec<(&str, bool, bool)> = config
        .listeners
        .iter()
        .map(|listener| {
            (
                listener.protocol.as_str(),
                listener.protocol.accepts_h2c(),
                listener.tls.is_some(),
            )
        })
        .collect();
    assert_eq!(
        protocols,
        [
            ("http", false, false),
            ("h2c", true, false),
            ("grpc", true, false),
            ("grpcs", false, true),
        ]
    );
    assert_eq!(
        config.listeners[3].tls,
        Some((CERT.to_string(), KEY.to_string()))
    );
}

#[test]
fn a_tls_file_under_both_names_or_under_neither_is_an_error() {
    let errors = errors_of(&format!(
        r#"
listeners:
  - name: both
    address: ":18443"
    protocol: https
    tls: {{cert: "{CERT}", cert_file: "{CERT}", key_file: "{KEY}"}}
  - name: no-key
    address: ":18444"
    protocol: grpcs
    tls: {{cert_file: "{CERT}"}}
  - name: no-tls
    address: ":18445"
    protocol: grpcs
"#
    ));
    assert_eq!(
        errors,
        [
            "listeners[0].tls.cert_file: give either cert or cert_file (Go Loom's spelling), not both",
            "listeners[1].tls.key: tls needs key (or key_file, Go Loom's spelling)",
            "listeners[2].tls: protocol grpcs needs tls with cert and key (cert_file and key_file \
             in Go Loom's spelling)",
        ]
    );
}
