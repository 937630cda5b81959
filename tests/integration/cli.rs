//! `loom -t`: validation of good and bad configs, with every error reported at once.

use std::process::Command;

fn check(config: &str) -> (i32, String, String) {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("check.yaml");
    let (code, stdout, stderr) = crate::support::check_config_file(&path, config);
    (
        code,
        stdout,
        stderr.replace(&path.display().to_string(), "FILE"),
    )
}

#[test]
fn shipped_configs_are_valid() {
    // conf/plugins.yaml also loads (compiles) every shipped plugin; the Go Loom fixture is a
    // config in the Go gateway's schema, loaded unchanged.
    for config in [
        "conf/loom.yaml",
        "conf/resilience.yaml",
        "conf/plugins.yaml",
        "tests/fixtures/go-loom.yaml",
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_loom"))
            .args(["-t", "-c", config])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{config}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(String::from_utf8_lossy(&output.stdout).contains("config is valid"));
    }
    // The standalone streaming config, in the reference loomd schema, given as loomd takes it.
    let output = Command::new(env!("CARGO_BIN_EXE_loom"))
        .args(["stream", "-t", "conf/stream.yaml"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "conf/stream.yaml: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn every_error_is_reported_with_file_line_column_and_key() {
    let config = r#"listeners:
  - name: http
    address: ":8080"
    protocl: http
server:
  read_buffer_size: 512
routes:
  - id: a
    path: /a
    upstream: backend
    timeout: 30 seconds
  - id: a
    path: /b/*rest/more
    upstream: nowhere
    plugins: [missing-plugin]
upstreams:
  - name: backend
    endpoints:
      - "127.0.0.1:notaport"
      - {address: "127.0.0.1:3000", weight: 2}
    load_balancer: fastest
    health_check:
      interval: 0s
"#;
    let (code, _, stderr) = check(config);
    assert_eq!(code, 1, "{stderr}");
    for expected in [
        "FILE:4:5: listeners[0].protocl: unknown key",
        "FILE:6:21: server.read_buffer_size: must be between 1KiB and 1MiB, not 512 bytes",
        "FILE:11:14: routes[0].timeout:",
        "FILE:12:9: routes[1].id: duplicate route id \"a\"",
        "FILE:14:15: routes[1].upstream: unknown upstream \"nowhere\"",
        "FILE:15:15: routes[1].plugins[0]: unknown plugin \"missing-plugin\"",
        "FILE:19:9: upstreams[0].endpoints[0]: endpoint \"127.0.0.1:notaport\" has an invalid port",
        "FILE:21:20: upstreams[0].load_balancer:",
        "FILE:13:11: routes[1].path:",
        "upstreams[0].health_check.interval: must be greater than zero",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
}

#[test]
fn a_syntax_error_names_its_position() {
    let (code, _, stderr) = check("listeners:\n  - name: [unclosed\n");
    assert_eq!(code, 1);
    assert!(stderr.contains("FILE:"), "{stderr}");
}

#[test]
fn a_missing_file_is_an_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_loom"))
        .args(["-t", "-c", "/nonexistent/loom.yaml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot read config file"));
}

#[test]
fn a_config_named_without_a_directory_resolves_paths_next_to_it() {
    let directory = tempfile::tempdir().unwrap();
    let plugins = directory.path().join("wasm");
    std::fs::create_dir(&plugins).unwrap();
    std::fs::copy(
        crate::support::plugin_dist().join("loom_headers.wasm"),
        plugins.join("headers.wasm"),
    )
    .unwrap();
    std::fs::write(
        directory.path().join("my.yaml"),
        r#"listeners:
  - name: http
    address: "127.0.0.1:8080"
plugin_dir: wasm
plugins:
  - name: headers
    path: headers.wasm
routes:
  - id: all
    path: /*
    upstream: pool
    plugins: [headers]
upstreams:
  - name: pool
    endpoints: ["127.0.0.1:9"]
"#,
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_loom"))
        .args(["-t", "-c", "my.yaml"])
        .current_dir(directory.path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn policy_entries_are_validated_with_positions() {
    let config = r#"listeners:
  - name: http
    address: ":8080"
cors:
  allow_origins: ["*"]
  allow_credentials: true
plugins:
  - name: bad-cors
    type: cors
    config:
      allow_origins: ["app.example.com"]
      alow_methods: [GET]
  - name: mystery
    type: firewall
  - name: wasm-keys
    type: security_headers
    max_fuel: 10
  - name: limits
    type: request_size_limit
    config:
      max_body_size: lots
routes:
  - id: all
    path: /*
    upstream: pool
    plugins: [bad-cors, limits]
    disable: [compression]
upstreams:
  - name: pool
    endpoints: ["127.0.0.1:9"]
rate_limit:
  enabled: true
  rate: -1
tracing:
  enabled: false
  service_name: loom
"#;
    let (code, _, stderr) = check(config);
    assert_eq!(code, 1, "{stderr}");
    for expected in [
        "FILE:6:22: cors.allow_credentials: credentials cannot be allowed for every origin",
        "FILE:11:23: plugins[0].config.allow_origins[0]: \"app.example.com\" needs a scheme",
        "FILE:12:7: plugins[0].config.alow_methods: unknown key",
        "FILE:14:11: plugins[1].type: unknown plugin type \"firewall\"",
        "FILE:17:15: plugins[2].max_fuel: only Proxy-Wasm plugins take max_fuel",
        "FILE:21:22: plugins[3].config.max_body_size:",
        "FILE:27:15: routes[0].disable[0]: \"compression\" is not a global policy",
        "FILE:33:9: rate_limit.rate: must be a number above 0",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    assert!(!stderr.contains("tracing"), "{stderr}");
}
