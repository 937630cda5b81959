//! The admin API that changes the running gateway: every write verb, revisions and
//! preconditions, refused changes with their JSON path while traffic flows, the overlay file
//! across a restart, draining an endpoint under load, and who may read and write.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::support::*;

/// One admin API answer.
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Answer {
    fn etag(&self) -> String {
        self.header("etag")
    }

    fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_string()
    }

    /// The `errors` of a 400 `invalid_config`, as (in, path) pairs.
    fn error_paths(&self) -> Vec<(String, String)> {
        self.body["error"]["errors"]
            .as_array()
            .map(|errors| {
                errors
                    .iter()
                    .map(|error| {
                        (
                            error["in"].as_str().unwrap_or_default().to_string(),
                            error["path"].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

async fn admin(
    gateway: &GatewayProcess,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> Answer {
    let mut request = client().request(method, gateway.admin_url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("the admin API answers");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Answer {
        status,
        headers,
        body,
    }
}

/// The backend that answered a request through the gateway (`x-echo-instance`), or why
/// there is none.
async fn instance(client: &reqwest::Client, url: &str) -> Result<String, String> {
    match client.get(url).send().await {
        Ok(response) if response.status() == 200 => Ok(response
            .headers()
            .get("x-echo-instance")
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_string()),
        Ok(response) => Err(format!("status {}", response.status())),
        Err(error) => Err(error.to_string()),
    }
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// One route, `web` on `/web/*`, to the upstream `pool` with the given endpoint ports.
fn web_config(ports: &[u16]) -> String {
    let endpoints: Vec<String> = ports
        .iter()
        .map(|port| format!("\"127.0.0.1:{port}\""))
        .collect();
    format!(
        r#"# Comments and layout of this file must survive every admin change.
listeners:
  - name: http
    address: "127.0.0.1:@HTTP@"
routes:
  - id: web          # the route the tests change
    path: /web/*
    upstream: pool
upstreams:
  - name: pool
    endpoints: [{}]
"#,
        endpoints.join(", ")
    )
}

fn overlay_path(gateway: &GatewayProcess) -> std::path::PathBuf {
    gateway.directory.path().join("loom.overlay.json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_verb_changes_the_running_gateway() {
    let (a, b) = (echo("a").await, echo("b").await);
    let (a_port, b_port) = (a.addresses()[0].port(), b.addresses()[0].port());
    let gateway = GatewayProcess::start(&web_config(&[a_port])).await;
    let yaml_before = std::fs::read(&gateway.config_path).unwrap();
    let client = client();
    let a_address = format!("127.0.0.1:{a_port}");

    // GET one route: its revision as ETag and its config as written.
    let web = admin(&gateway, Method::GET, "/routes/web", &[], None).await;
    assert_eq!(web.status, 200);
    assert_eq!(
        web.etag(),
        format!("\"{}\"", web.body["revision"].as_str().unwrap())
    );
    assert_eq!(
        web.body["config"],
        json!({"id": "web", "path": "/web/*", "upstream": "pool"})
    );

    // POST creates.
    let api = json!({"id": "api", "path": "/api/*", "upstream": "pool"});
    let created = admin(
        &gateway,
        Method::POST,
        "/routes",
        &[("if-none-match", "*")],
        Some(api.clone()),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(created.header("location"), "/routes/api");
    assert_eq!(
        instance(&client, &gateway.url("/api/x")).await,
        Ok("a".into())
    );
    // ... and never replaces.
    let again = admin(
        &gateway,
        Method::POST,
        "/routes",
        &[("if-none-match", "*")],
        Some(api.clone()),
    )
    .await;
    assert_eq!(
        (again.status, again.body["error"]["code"].clone()),
        (412, json!("precondition_failed"))
    );
    let again = admin(&gateway, Method::POST, "/routes", &[], Some(api)).await;
    assert_eq!(
        (again.status, again.body["error"]["code"].clone()),
        (409, json!("conflict"))
    );

    // PUT replaces, given the revision.
    let moved = admin(
        &gateway,
        Method::PUT,
        "/routes/api",
        &[("if-match", &created.etag())],
        Some(json!({"path": "/v2/*", "upstream": "pool"})),
    )
    .await;
    assert_eq!(moved.status, 200, "{}", moved.body);
    assert_ne!(moved.etag(), created.etag());
    assert_eq!(moved.body["config"]["id"], "api");
    assert_eq!(
        instance(&client, &gateway.url("/v2/x")).await,
        Ok("a".into())
    );
    assert_eq!(
        instance(&client, &gateway.url("/api/x")).await,
        Err("status 404 Not Found".into())
    );
    // PUT with If-None-Match: * creates at a name, once.
    let extra = json!({"id": "extra", "path": "/extra/*", "upstream": "pool"});
    let put_created = admin(
        &gateway,
        Method::PUT,
        "/routes/extra",
        &[("if-none-match", "*")],
        Some(extra.clone()),
    )
    .await;
    assert_eq!(put_created.status, 201, "{}", put_created.body);
    let put_again = admin(
        &gateway,
        Method::PUT,
        "/routes/extra",
        &[("if-none-match", "*")],
        Some(extra),
    )
    .await;
    assert_eq!(put_again.status, 412);
    let missing = admin(
        &gateway,
        Method::PUT,
        "/routes/nowhere",
        &[("if-match", "*")],
        Some(json!({"path": "/n", "upstream": "pool"})),
    )
    .await;
    assert_eq!(missing.status, 404);

    // Upstreams: create one and move a route to it.
    let other = admin(
        &gateway,
        Method::POST,
        "/upstreams",
        &[],
        Some(json!({"name": "other", "endpoints": [format!("127.0.0.1:{b_port}")]})),
    )
    .await;
    assert_eq!(other.status, 201, "{}", other.body);
    let web_moved = admin(
        &gateway,
        Method::PUT,
        "/routes/web",
        &[("if-match", &web.etag())],
        Some(json!({"id": "web", "path": "/web/*", "upstream": "other"})),
    )
    .await;
    assert_eq!(web_moved.status, 200, "{}", web_moved.body);
    assert_eq!(
        instance(&client, &gateway.url("/web/x")).await,
        Ok("b".into())
    );

    // Endpoints: add one, change its weight, remove it; each matches the upstream's revision.
    let listed = admin(&gateway, Method::GET, "/upstreams/other", &[], None).await;
    assert_eq!(listed.etag(), other.etag());
    let added = admin(
        &gateway,
        Method::POST,
        "/upstreams/other/endpoints",
        &[("if-match", &listed.etag())],
        Some(json!({"address": a_address, "weight": 2})),
    )
    .await;
    assert_eq!(added.status, 200, "{}", added.body);
    let running = admin(&gateway, Method::GET, "/upstreams/other", &[], None).await;
    assert_eq!(running.body["endpoints"].as_array().unwrap().len(), 2);
    assert_eq!(running.body["endpoints"][1]["weight"], 2);
    let reweighted = admin(
        &gateway,
        Method::PUT,
        &format!("/upstreams/other/endpoints/{a_address}"),
        &[("if-match", &added.etag())],
        Some(json!({"weight": 3})),
    )
    .await;
    assert_eq!(reweighted.status, 200, "{}", reweighted.body);
    assert_eq!(
        reweighted.body["config"]["endpoints"][1],
        json!({"address": a_address, "weight": 3})
    );
    let removed = admin(
        &gateway,
        Method::DELETE,
        &format!("/upstreams/other/endpoints/{a_address}"),
        &[("if-match", &reweighted.etag())],
        None,
    )
    .await;
    assert_eq!(removed.status, 200, "{}", removed.body);
    let running = admin(&gateway, Method::GET, "/upstreams/other", &[], None).await;
    assert_eq!(running.body["endpoints"].as_array().unwrap().len(), 1);

    // Plugins: a built-in policy added and put on a route.
    let stamp = admin(
        &gateway,
        Method::POST,
        "/plugins",
        &[("if-none-match", "*")],
        Some(json!({"name": "stamp", "type": "transform",
                    "config": {"response": {"set_headers": {"x-stamp": "admin"}}}})),
    )
    .await;
    assert_eq!(stamp.status, 201, "{}", stamp.body);
    let plugin = admin(&gateway, Method::GET, "/plugins/stamp", &[], None).await;
    assert_eq!((plugin.status, plugin.etag()), (200, stamp.etag()));
    let stamped = admin(
        &gateway,
        Method::PUT,
        "/routes/extra",
        &[("if-match", &put_created.etag())],
        Some(json!({"id": "extra", "path": "/extra/*", "upstream": "pool", "plugins": ["stamp"]})),
    )
    .await;
    assert_eq!(stamped.status, 200, "{}", stamped.body);
    let response = client.get(gateway.url("/extra/x")).send().await.unwrap();
    assert_eq!(response.headers()["x-stamp"], "admin");
    // A plugin a route uses cannot go; the refusal names the route's reference.
    let refused = admin(
        &gateway,
        Method::DELETE,
        "/plugins/stamp",
        &[("if-match", &stamp.etag())],
        None,
    )
    .await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(
        refused
            .error_paths()
            .iter()
            .any(|(place, path)| place == "config" && path.starts_with("routes.extra.plugins")),
        "{}",
        refused.body
    );
    let route_deleted = admin(
        &gateway,
        Method::DELETE,
        "/routes/extra",
        &[("if-match", &stamped.etag())],
        None,
    )
    .await;
    assert_eq!(route_deleted.status, 200, "{}", route_deleted.body);
    assert_eq!(route_deleted.body["deleted"], true);
    let plugin_deleted = admin(
        &gateway,
        Method::DELETE,
        "/plugins/stamp",
        &[("if-match", &stamp.etag())],
        None,
    )
    .await;
    assert_eq!(plugin_deleted.status, 200, "{}", plugin_deleted.body);
    assert_eq!(
        admin(&gateway, Method::GET, "/plugins/stamp", &[], None)
            .await
            .status,
        404
    );

    // DELETE a route.
    let deleted = admin(
        &gateway,
        Method::DELETE,
        "/routes/api",
        &[("if-match", &moved.etag())],
        None,
    )
    .await;
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    assert_eq!(
        instance(&client, &gateway.url("/v2/x")).await,
        Err("status 404 Not Found".into())
    );
    assert_eq!(
        admin(&gateway, Method::GET, "/routes/api", &[], None)
            .await
            .status,
        404
    );
    // No verb outside the API.
    assert_eq!(
        admin(&gateway, Method::PATCH, "/routes/web", &[], None)
            .await
            .status,
        405
    );

    // What the overlay changes, and the effective config with the same revision.
    let diff = admin(&gateway, Method::GET, "/config/diff", &[], None).await;
    assert_eq!(diff.status, 200);
    let changes: Vec<(String, String, String)> = diff.body["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|change| {
            (
                change["kind"].as_str().unwrap().to_string(),
                change["id"].as_str().unwrap().to_string(),
                change["change"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        changes,
        [
            (
                "route".to_string(),
                "web".to_string(),
                "replaced".to_string()
            ),
            (
                "upstream".to_string(),
                "other".to_string(),
                "added".to_string()
            ),
        ]
    );
    assert_eq!(diff.body["changes"][0]["old"]["upstream"], "pool");
    assert_eq!(diff.body["changes"][0]["new"]["upstream"], "other");
    let config = admin(&gateway, Method::GET, "/config", &[], None).await;
    assert_eq!(config.etag(), diff.etag());
    assert_eq!(config.body["routes"][0]["upstream"], "other");
    assert_eq!(config.body["upstreams"][1]["name"], "other");

    // The YAML is untouched; the changes live in the overlay, with one backup.
    assert_eq!(std::fs::read(&gateway.config_path).unwrap(), yaml_before);
    let overlay: Value =
        serde_json::from_str(&std::fs::read_to_string(overlay_path(&gateway)).unwrap()).unwrap();
    assert_eq!(overlay["routes"]["web"]["upstream"], "other");
    assert!(
        gateway
            .directory
            .path()
            .join("loom.overlay.json.bak")
            .is_file()
    );
    assert!(gateway.log().contains("loom::audit"), "{}", gateway.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_writers_with_one_revision_exactly_one_wins() {
    let backend = echo("a").await;
    let gateway = GatewayProcess::start(&web_config(&[backend.addresses()[0].port()])).await;
    let revision = admin(&gateway, Method::GET, "/routes/web", &[], None)
        .await
        .etag();

    // Without a revision: 428, whatever the verb.
    let body = json!({"id": "web", "path": "/one/*", "upstream": "pool"});
    let missing = admin(
        &gateway,
        Method::PUT,
        "/routes/web",
        &[],
        Some(body.clone()),
    )
    .await;
    assert_eq!(
        (missing.status, missing.body["error"]["code"].clone()),
        (428, json!("precondition_required"))
    );
    assert_eq!(
        admin(&gateway, Method::DELETE, "/routes/web", &[], None)
            .await
            .status,
        428
    );

    // Two writers race with the revision both read.
    for round in 0..3 {
        let revision = admin(&gateway, Method::GET, "/routes/web", &[], None)
            .await
            .etag();
        let put = |path: String| {
            let revision = revision.clone();
            let gateway = &gateway;
            async move {
                admin(
                    gateway,
                    Method::PUT,
                    "/routes/web",
                    &[("if-match", &revision)],
                    Some(json!({"id": "web", "path": path, "upstream": "pool"})),
                )
                .await
            }
        };
        let (first, second) = tokio::join!(
            put(format!("/first{round}/*")),
            put(format!("/second{round}/*"))
        );
        let mut statuses = [first.status, second.status];
        statuses.sort_unstable();
        assert_eq!(statuses, [200, 412], "{} / {}", first.body, second.body);
        let loser = if first.status == 412 { &first } else { &second };
        assert_eq!(loser.body["error"]["code"], "precondition_failed");
    }
    // A stale revision stays stale.
    let stale = admin(
        &gateway,
        Method::PUT,
        "/routes/web",
        &[("if-match", &revision)],
        Some(body.clone()),
    )
    .await;
    assert_eq!(stale.status, 412);
    // The whole config's revision (GET /config) is accepted too.
    let whole = admin(&gateway, Method::GET, "/config", &[], None)
        .await
        .etag();
    let accepted = admin(
        &gateway,
        Method::PUT,
        "/routes/web",
        &[("if-match", &whole)],
        Some(body),
    )
    .await;
    assert_eq!(accepted.status, 200, "{}", accepted.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_change_is_refused_with_its_json_path_while_traffic_flows() {
    let backend = echo("a").await;
    let port = backend.addresses()[0].port();
    let gateway = GatewayProcess::start(&web_config(&[port])).await;
    let traffic = Traffic::start(gateway.url("/web/x"), false);
    traffic.wait_for(20).await;
    let route = admin(&gateway, Method::GET, "/routes/web", &[], None)
        .await
        .etag();
    let pool = admin(&gateway, Method::GET, "/upstreams/pool", &[], None)
        .await
        .etag();

    // Each refused change: the request, and the error (where, which path) it must name.
    let cases = [
        (
            Method::PUT,
            "/routes/web",
            &route,
            json!({"id": "web", "path": "/web/*", "upstream": "missing"}),
            ["body", "upstream"],
        ),
        (
            Method::PUT,
            "/routes/web",
            &route,
            json!({"id": "web", "path": "/web/*", "upstream": "pool", "colour": "red"}),
            ["body", "colour"],
        ),
        (
            Method::PUT,
            "/upstreams/pool",
            &pool,
            json!({"name": "pool", "endpoints": [{"address": format!("127.0.0.1:{port}"), "weight": 0}]}),
            ["body", "endpoints[0].weight"],
        ),
        (
            Method::POST,
            "/upstreams/pool/endpoints",
            &pool,
            json!({"address": "127.0.0.1:1", "weight": 0}),
            ["body", "weight"],
        ),
        // Deleting an upstream a YAML route uses: the error is the route's, in the YAML.
        (
            Method::DELETE,
            "/upstreams/pool",
            &pool,
            Value::Null,
            ["config", "routes[0].upstream"],
        ),
    ];
    for (method, path, revision, body, [place, key]) in cases {
        let body = (!body.is_null()).then_some(body);
        let refused = admin(
            &gateway,
            method.clone(),
            path,
            &[("if-match", revision)],
            body,
        )
        .await;
        assert_eq!(refused.status, 400, "{method} {path}: {}", refused.body);
        assert_eq!(refused.body["error"]["code"], "invalid_config");
        assert!(
            refused
                .error_paths()
                .contains(&(place.to_string(), key.to_string())),
            "{method} {path}: expected {place} {key} in {}",
            refused.body
        );
        traffic.wait_for(5).await;
    }
    // A body that says it is JSON and is not.
    let garbage = client()
        .put(gateway.admin_url("/routes/web"))
        .header("if-match", &route)
        .header("content-type", "application/json")
        .body("path: /yaml")
        .send()
        .await
        .unwrap();
    assert_eq!(garbage.status(), 400);

    // Nothing changed: same revisions, no overlay written.
    assert_eq!(
        admin(&gateway, Method::GET, "/routes/web", &[], None)
            .await
            .etag(),
        route
    );
    assert_eq!(
        admin(&gateway, Method::GET, "/upstreams/pool", &[], None)
            .await
            .etag(),
        pool
    );
    assert!(!overlay_path(&gateway).exists());
    // A valid change in the middle of the traffic fails no request either.
    let applied = admin(
        &gateway,
        Method::PUT,
        "/upstreams/pool",
        &[("if-match", &pool)],
        Some(json!({"name": "pool", "endpoints": [{"address": format!("127.0.0.1:{port}"), "weight": 2}]})),
    )
    .await;
    assert_eq!(applied.status, 200, "{}", applied.body);
    traffic.wait_for(20).await;
    let (completed, failures) = traffic.finish().await;
    assert!(
        failures.is_empty(),
        "{} failed of {completed}: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_survives_a_restart_and_loom_t_checks_it() {
    let (a, b) = (echo("a").await, echo("b").await);
    let (a_port, b_port) = (a.addresses()[0].port(), b.addresses()[0].port());
    let mut gateway = GatewayProcess::start(&web_config(&[a_port])).await;
    let created = admin(
        &gateway,
        Method::POST,
        "/upstreams",
        &[],
        Some(json!({"name": "blue", "endpoints": [format!("127.0.0.1:{b_port}")]})),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let route = admin(
        &gateway,
        Method::POST,
        "/routes",
        &[],
        Some(json!({"id": "blue", "path": "/blue/*", "upstream": "blue"})),
    )
    .await;
    assert_eq!(route.status, 201, "{}", route.body);
    let config_revision = admin(&gateway, Method::GET, "/config", &[], None)
        .await
        .etag();

    gateway.restart().await;
    let client = client();
    assert_eq!(
        instance(&client, &gateway.url("/blue/x")).await,
        Ok("b".into())
    );
    assert_eq!(
        instance(&client, &gateway.url("/web/x")).await,
        Ok("a".into())
    );
    // The same config has the same revisions after the restart.
    assert_eq!(
        admin(&gateway, Method::GET, "/config", &[], None)
            .await
            .etag(),
        config_revision
    );
    assert_eq!(
        admin(&gateway, Method::GET, "/routes/blue", &[], None)
            .await
            .etag(),
        route.etag()
    );

    // `loom -t` applies the overlay too, and reports an error in it by file and JSON path.
    let check = |path: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_loom"))
            .arg("-t")
            .arg("-c")
            .arg(path)
            .output()
            .unwrap()
    };
    let output = check(&gateway.config_path);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains("loom.overlay.json"), "{stdout}");
    let overlay = overlay_path(&gateway);
    let text = std::fs::read_to_string(&overlay).unwrap();
    std::fs::write(
        &overlay,
        text.replace("\"upstream\": \"blue\"", "\"upstream\": \"gone\""),
    )
    .unwrap();
    let output = check(&gateway.config_path);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("loom.overlay.json:")
            && stderr.contains("routes.blue.upstream: unknown upstream \"gone\""),
        "{stderr}"
    );
    std::fs::write(&overlay, text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_an_endpoint_moves_traffic_without_failing_a_request() {
    let (a, b) = (echo("a").await, echo("b").await);
    let (a_port, b_port) = (a.addresses()[0].port(), b.addresses()[0].port());
    let gateway = Arc::new(GatewayProcess::start(&web_config(&[a_port, b_port])).await);
    let drained = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    // Each answer, with whether its request started after the drain was applied.
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let (gateway, drained, stop, served) = (
                gateway.clone(),
                drained.clone(),
                stop.clone(),
                served.clone(),
            );
            tokio::spawn(async move {
                let client = client();
                let mut answers = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let after_drain = drained.load(Ordering::Acquire);
                    answers.push((after_drain, instance(&client, &gateway.url("/web/x")).await));
                    served.fetch_add(1, Ordering::Relaxed);
                }
                answers
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let wait_for = |target: usize| {
        let served = served.clone();
        async move {
            while served.load(Ordering::Relaxed) < target {
                assert!(Instant::now() < deadline, "traffic made no progress");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    wait_for(40).await;
    let revision = admin(&gateway, Method::GET, "/upstreams/pool", &[], None)
        .await
        .etag();
    let drain = admin(
        &gateway,
        Method::PUT,
        &format!("/upstreams/pool/endpoints/127.0.0.1:{a_port}"),
        &[("if-match", &revision)],
        Some(json!({"drain": true})),
    )
    .await;
    assert_eq!(drain.status, 200, "{}", drain.body);
    drained.store(true, Ordering::Release);
    wait_for(served.load(Ordering::Relaxed) + 100).await;
    stop.store(true, Ordering::Relaxed);
    let mut answers = Vec::new();
    for worker in workers {
        answers.extend(worker.await.unwrap());
    }
    let failures: Vec<&String> = answers
        .iter()
        .filter_map(|(_, answer)| answer.as_ref().err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let before: Vec<&str> = answers
        .iter()
        .filter(|(after, _)| !after)
        .filter_map(|(_, answer)| answer.as_deref().ok())
        .collect();
    let after: Vec<&str> = answers
        .iter()
        .filter(|(after, _)| *after)
        .filter_map(|(_, answer)| answer.as_deref().ok())
        .collect();
    assert!(
        before.contains(&"a") && before.contains(&"b"),
        "both served before the drain"
    );
    assert!(
        after.len() >= 50,
        "only {} answers after the drain",
        after.len()
    );
    assert!(
        after.iter().all(|name| *name == "b"),
        "a drained endpoint still answered: {after:?}"
    );
    let upstream = admin(&gateway, Method::GET, "/upstreams/pool", &[], None).await;
    assert_eq!(upstream.body["endpoints"][0]["drain"], true);
    assert_eq!(upstream.body["endpoints"][1]["drain"], false);
    assert_eq!(
        upstream.body["config"]["endpoints"][0],
        json!({"address": format!("127.0.0.1:{a_port}"), "drain": true})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_and_roles_guard_the_admin_api_and_config_hides_secrets() {
    let backend = echo("a").await;
    let key_digest = sha256_hex("customer-key");
    let template = format!(
        "{}plugins:\n  - name: keys\n    type: key_auth\n    config:\n      keys:\n        - {{consumer: alice, key_sha256: \"{key_digest}\"}}\n",
        web_config(&[backend.addresses()[0].port()])
    );
    let ops_digest = sha256_hex("ops-password");
    let write_digest = sha256_hex("write-token");
    let read_digest = sha256_hex("read-token");
    let admin_keys = format!(
        "  auth:\n    enabled: true\n    users:\n      ops: {ops_digest}\n  tokens:\n    \
         - {{name: deployer, token_sha256: \"{write_digest}\", role: write}}\n    \
         - {{name: dashboard, token_sha256: \"{read_digest}\"}}\n"
    );
    let gateway = GatewayProcess::start_with(&template, "", &admin_keys).await;
    let write = ("authorization", "Bearer write-token");
    let read = ("authorization", "Bearer read-token");

    // No credentials, or wrong ones: 401 with both challenges. Probes stay open.
    let anonymous = admin(&gateway, Method::GET, "/routes", &[], None).await;
    assert_eq!(anonymous.status, 401);
    let challenges: Vec<&str> = anonymous
        .headers
        .get_all("www-authenticate")
        .iter()
        .map(|value| value.to_str().unwrap())
        .collect();
    assert_eq!(
        challenges,
        ["Basic realm=\"loom admin\"", "Bearer realm=\"loom admin\""]
    );
    assert_eq!(
        admin(
            &gateway,
            Method::GET,
            "/routes",
            &[("authorization", "Bearer nope")],
            None
        )
        .await
        .status,
        401
    );
    assert_eq!(
        admin(&gateway, Method::GET, "/health", &[], None)
            .await
            .status,
        200
    );

    // A read token reads and cannot change anything.
    let route = admin(&gateway, Method::GET, "/routes/web", &[read], None).await;
    assert_eq!(route.status, 200);
    let body = json!({"id": "web", "path": "/web/*", "upstream": "pool", "priority": 1});
    let forbidden = admin(
        &gateway,
        Method::PUT,
        "/routes/web",
        &[read, ("if-match", &route.etag())],
        Some(body.clone()),
    )
    .await;
    assert_eq!(
        (forbidden.status, forbidden.body["error"]["code"].clone()),
        (403, json!("forbidden"))
    );
    for reset in [
        "/upstreams/pool/endpoints/x/reset",
        // The same target with a trailing slash or encoded: still a change.
        "/upstreams/pool/endpoints/x/reset/",
        "/upstreams/pool/endpoints/x/%72eset",
    ] {
        assert_eq!(
            admin(&gateway, Method::POST, reset, &[read], None)
                .await
                .status,
            403,
            "{reset}"
        );
    }
    // A write token and a Basic user (write unless configured otherwise) can.
    let changed = admin(
        &gateway,
        Method::PUT,
        "/routes/web",
        &[write, ("if-match", &route.etag())],
        Some(body),
    )
    .await;
    assert_eq!(changed.status, 200, "{}", changed.body);
    let basic = client()
        .put(gateway.admin_url("/routes/web"))
        .basic_auth("ops", Some("ops-password"))
        .header("if-match", changed.etag())
        .json(&json!({"id": "web", "path": "/web/*", "upstream": "pool", "priority": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), 200);
    let log = gateway.log();
    assert!(
        log.contains("deployer (write) PUT /routes/web: applied"),
        "{log}"
    );
    assert!(
        log.contains("ops (write) PUT /routes/web: applied"),
        "{log}"
    );
    assert!(
        log.contains("dashboard (read) PUT /routes/web: refused with 403"),
        "{log}"
    );

    // No CORS: a preflight is refused and no answer carries Access-Control-* headers.
    let preflight = client()
        .request(Method::OPTIONS, gateway.admin_url("/routes"))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "PUT")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 405);
    let with_origin = client()
        .get(gateway.admin_url("/config"))
        .header("origin", "https://evil.example")
        .header(read.0, read.1)
        .send()
        .await
        .unwrap();
    assert_eq!(with_origin.status(), 403, "a browser's cross-origin read");
    // A "simple" cross-origin POST needs no preflight; browsers still send Origin with it.
    let simple_post = client()
        .post(gateway.admin_url("/upstreams"))
        .header("origin", "https://evil.example")
        .header("content-type", "text/plain")
        .header(write.0, write.1)
        .body(r#"{"name": "evil", "endpoints": ["127.0.0.1:9"]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(simple_post.status(), 403);
    // Changes take JSON only.
    let not_json = client()
        .post(gateway.admin_url("/upstreams"))
        .header("content-type", "text/plain")
        .header(write.0, write.1)
        .body(r#"{"name": "evil", "endpoints": ["127.0.0.1:9"]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), 415);
    assert_eq!(
        admin(&gateway, Method::GET, "/upstreams/evil", &[read], None)
            .await
            .status,
        404,
        "no refused request created anything"
    );
    for response in [&preflight, &with_origin] {
        assert!(
            !response
                .headers()
                .keys()
                .any(|name| name.as_str().starts_with("access-control-")),
            "{:?}",
            response.headers()
        );
    }
    // Bodies are capped: a declared length over the cap is refused before the body is read
    // (a client still sending it may then see its connection closed, so none is sent here).
    let huge = raw_request(
        gateway.admin_port,
        format!(
            "PUT /routes/web HTTP/1.1\r\nHost: 127.0.0.1\r\n{}: {}\r\nIf-Match: *\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            write.0,
            write.1,
            2 * 1024 * 1024
        )
        .as_bytes(),
    )
    .await;
    assert!(huge.starts_with("HTTP/1.1 413"), "{huge}");

    // GET /config: the effective config with every secret redacted.
    let text = client()
        .get(gateway.admin_url("/config"))
        .header(read.0, read.1)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for secret in [&key_digest, &ops_digest, &write_digest, &read_digest] {
        assert!(!text.contains(secret.as_str()), "a secret is shown: {text}");
    }
    let config: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        config["plugins"][0]["config"]["keys"][0]["key_sha256"],
        "<redacted>"
    );
    assert_eq!(config["admin"]["auth"]["users"]["ops"], "<redacted>");
    assert_eq!(config["admin"]["tokens"][1]["name"], "dashboard");
    assert_eq!(config["routes"][0]["priority"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_changes_the_live_pool_and_keeps_its_open_breakers() {
    let (a, b) = (echo("a").await, echo("b").await);
    let (a_port, b_port) = (a.addresses()[0].port(), b.addresses()[0].port());
    let template = format!(
        r#"listeners:
  - name: http
    address: "127.0.0.1:@HTTP@"
routes:
  - id: web
    path: /web/*
    upstream: pool
upstreams:
  - name: pool
    load_balancer: round_robin
    endpoints: ["127.0.0.1:@DEAD0@", "127.0.0.1:{a_port}", "127.0.0.1:{b_port}"]
    retry:
      max_retries: 2
    circuit_breaker:
      failure_threshold: 1
      timeout: 1h
"#
    );
    let gateway = GatewayProcess::start(&template).await;
    let client = client();
    let dead = |document: &Value| -> Value {
        document["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|endpoint| {
                endpoint["selectable"] == false || endpoint["circuit_breaker"]["state"] == "open"
            })
            .cloned()
            .unwrap_or(Value::Null)
    };
    // Round robin reaches the dead endpoint within three requests; the retry hides it and
    // its breaker opens for an hour.
    for _ in 0..3 {
        assert_eq!(
            client
                .get(gateway.url("/web/x"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    let before = admin(&gateway, Method::GET, "/upstreams/pool", &[], None).await;
    assert_eq!(
        dead(&before.body)["circuit_breaker"]["state"],
        "open",
        "{}",
        before.body
    );
    let drain = admin(
        &gateway,
        Method::PUT,
        &format!("/upstreams/pool/endpoints/127.0.0.1:{b_port}"),
        &[("if-match", &before.etag())],
        Some(json!({"drain": true})),
    )
    .await;
    assert_eq!(drain.status, 200, "{}", drain.body);
    let after = admin(&gateway, Method::GET, "/upstreams/pool", &[], None).await;
    assert_eq!(
        dead(&after.body)["circuit_breaker"]["state"],
        "open",
        "the drain replaced the pool and forgot the open breaker: {}",
        after.body
    );
    let drained = after.body["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|endpoint| endpoint["address"] == format!("127.0.0.1:{b_port}"))
        .cloned()
        .unwrap();
    assert_eq!(drained["drain"], true);
    assert_eq!(drained["unselectable_because"], "draining");
    // Every request now goes to the one endpoint left.
    for _ in 0..6 {
        assert_eq!(
            instance(&client, &gateway.url("/web/y")).await.as_deref(),
            Ok("a")
        );
    }
}
