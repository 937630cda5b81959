//! `loom -t`: validation of good and bad configs, with every error reported at once.

use std::process::Command;

fn check(config: &str) -> (i32, String, String) {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("check.yaml");
    std::fs::write(&path, config).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_loom"))
        .arg("-t")
        .arg("-c")
        .arg(&path)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).replace(&path.display().to_string(), "FILE"),
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
        "FILE:9:14: routes[0].timeout:",
        "FILE:10:9: routes[1].id: duplicate route id \"a\"",
        "FILE:12:15: routes[1].upstream: unknown upstream \"nowhere\"",
        "FILE:13:15: routes[1].plugins[0]: unknown plugin \"missing-plugin\"",
        "FILE:17:9: upstreams[0].endpoints[0]: endpoint \"127.0.0.1:notaport\" has an invalid port",
        "FILE:19:20: upstreams[0].load_balancer:",
        "FILE:11:11: routes[1].path:",
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
