//! Client certificates on HTTPS listeners (`tls.client_ca`, `client_auth`) and the
//! `mtls_auth` policy, with certificates made in the test and a real rustls client.

use crate::support::*;

/// A CA with the client certificates the tests need, as PEM files.
struct Pki {
    directory: tempfile::TempDir,
}

fn ca(name: &str) -> (rcgen::Certificate, rcgen::Issuer<'static, rcgen::KeyPair>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let certificate = params.self_signed(&key).unwrap();
    (certificate, rcgen::Issuer::new(params, key))
}

impl Pki {
    fn new() -> Pki {
        let directory = tempfile::tempdir().unwrap();
        let (ca_certificate, issuer) = ca("loom test ca");
        let (_, foreign_issuer) = ca("someone else's ca");
        std::fs::write(directory.path().join("ca.pem"), ca_certificate.pem()).unwrap();
        let write_client =
            |file: &str, name: &str, issuer: &rcgen::Issuer<'_, rcgen::KeyPair>, expired: bool| {
                let key = rcgen::KeyPair::generate().unwrap();
                let mut params =
                    rcgen::CertificateParams::new(vec![format!("{name}.example.com")]).unwrap();
                params
                    .distinguished_name
                    .push(rcgen::DnType::CommonName, name);
                params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
                if expired {
                    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
                    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
                }
                let certificate = params.signed_by(&key, issuer).unwrap();
                std::fs::write(
                    directory.path().join(format!("{file}.pem")),
                    format!("{}{}", certificate.pem(), key.serialize_pem()),
                )
                .unwrap();
            };
        write_client("good", "client", &issuer, false);
        write_client("unlisted", "intruder", &issuer, false);
        write_client("expired", "client", &issuer, true);
        write_client("foreign", "client", &foreign_issuer, false);
        Pki { directory }
    }

    fn path(&self, file: &str) -> String {
        self.directory.path().join(file).display().to_string()
    }

    /// A client presenting `identity` (none: no certificate).
    fn client(&self, identity: Option<&str>) -> reqwest::Client {
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            // The listener's certificate is the self-signed localhost fixture.
            .danger_accept_invalid_certs(true)
            .timeout(std::time::Duration::from_secs(10));
        if let Some(file) = identity {
            let pem = std::fs::read(self.path(&format!("{file}.pem"))).unwrap();
            builder = builder.identity(reqwest::Identity::from_pem(&pem).unwrap());
        }
        builder.build().unwrap()
    }
}

/// The echo servers behind the routes that choose by certificate, by instance name.
const TEAMS: [&str; 3] = ["ops", "partner", "public"];

fn config(pki: &Pki, echo_port: u16, team_ports: &[u16]) -> String {
    format!(
        r#"listeners:
  - name: http
    address: "127.0.0.1:@HTTP@"
  - name: optional
    address: "127.0.0.1:@PORT0@"
    protocol: https
    tls:
      cert: "@FIXTURES@/localhost.crt"
      key: "@FIXTURES@/localhost.key"
      client_ca: "{ca}"
      client_auth: optional
  - name: required
    address: "127.0.0.1:@PORT1@"
    protocol: https
    tls:
      cert: "@FIXTURES@/localhost.crt"
      key: "@FIXTURES@/localhost.key"
      client_ca: "{ca}"
plugin_dir: "@PLUGINS@"
plugin_cache_dir: "@PLUGIN_CACHE@"
routes:
  - id: probe
    path: /probe/*
    upstream: echo
    plugins: [probe]
  - id: partners
    path: /partners/*
    upstream: echo
    plugins: [partners-only]
  - id: open
    path: /open/*
    upstream: echo
  - id: teams-ops
    path: /teams/*
    upstream: ops
    client_certificate: {{subjects: [other.example.com, client.example.com]}}
  - id: teams-partner
    path: /teams/*
    upstream: partner
    client_certificate: {{}}
  - id: teams-public
    path: /teams/*
    upstream: public
    client_certificate: {{presented: false}}
upstreams:
  - name: echo
    endpoints: ["127.0.0.1:{echo_port}"]
  - name: ops
    endpoints: ["127.0.0.1:{ops}"]
  - name: partner
    endpoints: ["127.0.0.1:{partner}"]
  - name: public
    endpoints: ["127.0.0.1:{public}"]
plugins:
  - name: probe
    path: loom_test_abi_probe.wasm
  - name: partners-only
    type: mtls_auth
    config:
      allowed_subjects: [client.example.com]
"#,
        ca = pki.path("ca.pem"),
        ops = team_ports[0],
        partner = team_ports[1],
        public = team_ports[2],
    )
}

async fn status_and_body(
    client: &reqwest::Client,
    url: &str,
) -> Result<(u16, serde_json::Value), reqwest::Error> {
    let response = client
        .get(url)
        .header("x-client-cert-subject", "forged")
        .send()
        .await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await.unwrap_or_default()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_verified_in_the_handshake_and_by_route() {
    let pki = Pki::new();
    let backend = echo("e").await;
    let mut teams = Vec::new();
    for name in TEAMS {
        teams.push(echo(name).await);
    }
    let team_ports: Vec<u16> = teams
        .iter()
        .map(|server| server.addresses()[0].port())
        .collect();
    let gateway =
        GatewayProcess::start(&config(&pki, backend.addresses()[0].port(), &team_ports)).await;
    let optional = |path: &str| format!("https://localhost:{}{path}", gateway.extra_ports[0]);
    let required = |path: &str| format!("https://localhost:{}{path}", gateway.extra_ports[1]);

    // A listed certificate: through, and the upstream learns who it is (never from the client).
    let (status, body) = status_and_body(&pki.client(Some("good")), &optional("/partners/a"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["headers"]["x-client-cert-subject"], "client");
    assert_eq!(body["headers"]["x-client-cert-san"], "client.example.com");
    assert_eq!(body["headers"]["x-consumer"], "client");

    // No certificate on the optional listener: the route's policy answers 401; routes
    // without it stay open.
    let (status, body) = status_and_body(&pki.client(None), &optional("/partners/a"))
        .await
        .unwrap();
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "invalid_credentials");
    let (status, _) = status_and_body(&pki.client(None), &optional("/open/a"))
        .await
        .unwrap();
    assert_eq!(status, 200);

    // Signed by the CA but not listed: 403.
    let (status, body) = status_and_body(&pki.client(Some("unlisted")), &optional("/partners/a"))
        .await
        .unwrap();
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");

    // Another CA's certificate, or an expired one: refused in the handshake on both listeners.
    for file in ["foreign", "expired"] {
        for url in [optional("/open/a"), required("/open/a")] {
            let result = status_and_body(&pki.client(Some(file)), &url).await;
            assert!(
                result.is_err(),
                "{file} certificate was let in at {url}: {result:?}"
            );
        }
    }

    // The required listener refuses a client without a certificate, and serves a good one.
    assert!(
        status_and_body(&pki.client(None), &required("/open/a"))
            .await
            .is_err()
    );
    let (status, _) = status_and_body(&pki.client(Some("good")), &required("/partners/a"))
        .await
        .unwrap();
    assert_eq!(status, 200);

    // Proxy-Wasm plugins read the certificate through Envoy's connection properties.
    let response = pki
        .client(Some("good"))
        .get(optional("/probe/a"))
        .header("x-probe", "properties")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let header = |name: &str| {
        response.headers()[name]
            .to_str()
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(header("x-prop-connection-mtls"), "hex:01");
    assert_eq!(
        header("x-prop-connection-subject_peer_certificate"),
        "CN=client"
    );
    assert_eq!(
        header("x-prop-connection-dns_san_peer_certificate"),
        "client.example.com"
    );
    assert_eq!(
        header("x-prop-connection-uri_san_peer_certificate"),
        "missing"
    );
    assert!(header("x-prop-connection-tls_version").starts_with("TLSv1"));
    let without = pki
        .client(None)
        .get(optional("/probe/a"))
        .header("x-probe", "properties")
        .send()
        .await
        .unwrap();
    assert_eq!(without.headers()["x-prop-connection-mtls"], "hex:00");

    let failures = gateway
        .metric_with(
            "loom_auth_failures_total",
            &[("policy", "partners-only"), ("reason", "forbidden")],
        )
        .await;
    assert_eq!(failures, Some(1.0));

    // Routes choose by certificate: a listed SAN, any verified certificate, or none at all.
    // The forged subject header the helper sends changes nothing.
    for (identity, url, instance) in [
        (Some("good"), optional("/teams/a"), "ops"),
        (Some("good"), required("/teams/a"), "ops"),
        (Some("unlisted"), optional("/teams/a"), "partner"),
        (None, optional("/teams/a"), "public"),
    ] {
        let (status, body) = status_and_body(&pki.client(identity), &url).await.unwrap();
        assert_eq!(status, 200, "{identity:?} {url}: {body}");
        assert_eq!(body["instance"], instance, "{identity:?} {url}: {body}");
    }

    // The admin API explains the same choices for a described certificate.
    for (certificate, chosen, loser) in [
        (Some("intruder"), "teams-partner", "teams-ops"),
        (None, "teams-public", "teams-partner"),
    ] {
        let mut query = vec![("path", "/teams/a")];
        query.extend(certificate.map(|name| ("certificate", name)));
        let explained: serde_json::Value = client()
            .get(gateway.admin_url("/explain"))
            .query(&query)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(explained["matched"], chosen, "{explained:#}");
        let candidates = explained["candidates"].as_array().cloned().unwrap();
        let reasons = &candidates
            .iter()
            .find(|candidate| candidate["id"] == loser)
            .unwrap_or_else(|| panic!("{loser} missing: {explained:#}"))["reasons"];
        assert_eq!(
            reasons[0]["condition"], "client_certificate",
            "{explained:#}"
        );
    }
}

#[test]
fn a_certificate_condition_without_a_listener_that_asks_for_one_fails_the_config_check() {
    let config = |condition: &str| {
        format!(
            r#"listeners:
  - name: http
    address: "127.0.0.1:8080"
routes:
  - id: ops
    path: /*
    upstream: pool
    client_certificate: {condition}
upstreams:
  - name: pool
    endpoints: ["127.0.0.1:9"]
"#
        )
    };
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("loom.yaml");
    // Matching only clients without a certificate is possible on any listener.
    let (code, _, stderr) = check_config_file(&path, &config("{presented: false}"));
    assert_eq!(code, 0, "{stderr}");
    for (condition, message) in [
        (
            "{subjects: [ops]}",
            "no listener asks for client certificates",
        ),
        (
            "{presented: false, subjects: [ops]}",
            "subjects cannot be required",
        ),
        ("{subject: ops}", "unknown key \"subject\""),
    ] {
        let (code, _, stderr) = check_config_file(&path, &config(condition));
        assert_eq!(code, 1, "{condition}: {stderr}");
        assert!(
            stderr.contains("loom.yaml:") && stderr.contains("routes[0].client_certificate"),
            "{condition}: the error names the file and the key: {stderr}"
        );
        assert!(stderr.contains(message), "{condition}: {stderr}");
    }
}
