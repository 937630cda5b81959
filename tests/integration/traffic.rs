//! Canary releases and shadow traffic (issue 17): real gateway, real backends that count what
//! they receive, the admin API as an operator would call it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::fault::{FaultServer, Mode};
use crate::support::{GatewayProcess, Traffic, client, echo, get_json};

/// Two upstreams, `stable` and `next`, and route `api` on `stable` with `canary_keys` under
/// `canary:`.
fn canary_config(stable: &str, next: &str, canary_keys: &str) -> String {
    format!(
        "listeners:\n  - name: http\n    address: \"127.0.0.1:@HTTP@\"\n\
         upstreams:\n  - name: stable\n    endpoints: [\"{stable}\"]\n\
         \x20 - name: next\n    endpoints: [\"{next}\"]\n\
         routes:\n  - id: api\n    path: /api/*\n    upstream: stable\n    canary:\n{canary_keys}"
    )
}

/// Which echo instance answered, and the answer's `Set-Cookie`.
async fn instance_of(
    client: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
) -> (String, Option<String>) {
    let mut request = client.get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("the gateway answers");
    assert_eq!(response.status(), 200);
    let instance = response
        .headers()
        .get("x-echo-instance")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let cookie = response
        .headers()
        .get("set-cookie")
        .and_then(|value| value.to_str().ok())
        .map(str::to_string);
    (instance, cookie)
}

#[tokio::test]
async fn canary_split_follows_weights_header_override_and_sticky_cookie() {
    let stable = echo("stable").await;
    let next = echo("next").await;
    let gateway = GatewayProcess::start(&canary_config(
        &stable.addresses()[0].to_string(),
        &next.addresses()[0].to_string(),
        "      targets:\n        - upstream: next\n          weight: 25\n\
         \x20     force:\n        - header: X-Canary\n          value: \"true\"\n\
         \x20     sticky: true\n      sticky_cookie: version\n      sticky_ttl: 10m\n",
    ))
    .await;
    let client = client();
    let url = gateway.url("/api/items");

    // Without a cookie each request is assigned afresh (and told to keep its version).
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..400 {
        let (instance, cookie) = instance_of(&client, &url, &[]).await;
        let cookie = cookie.expect("a new client is given its version");
        assert!(
            cookie.starts_with(&format!("version={instance}; Max-Age=600; Path=/")),
            "{cookie}"
        );
        *counts.entry(instance).or_default() += 1;
    }
    let to_next = counts.get("next").copied().unwrap_or(0);
    // 25% of 400 is 100; 5 standard deviations (~8.7 each) either side.
    assert!((57..=143).contains(&to_next), "{counts:?}");

    // The header forces the canary, with no cookie of ours.
    for _ in 0..20 {
        let (instance, cookie) = instance_of(&client, &url, &[("x-canary", "true")]).await;
        assert_eq!(instance, "next");
        assert_eq!(cookie, None);
    }
    // A client holding a version stays on it, and is not given another cookie.
    for held in ["next", "stable"] {
        let cookie = format!("session=1; version={held}");
        for _ in 0..20 {
            let (instance, set_cookie) = instance_of(&client, &url, &[("cookie", &cookie)]).await;
            assert_eq!(instance, held);
            assert_eq!(set_cookie, None);
        }
    }
    // Per-target series, so the versions compare in Prometheus.
    let served_by_next = gateway
        .metric_with(
            "loom_canary_requests_total",
            &[
                ("route", "api"),
                ("upstream", "next"),
                ("outcome", "success"),
            ],
        )
        .await
        .unwrap_or(0.0);
    assert!(served_by_next >= (to_next + 40) as f64, "{served_by_next}");
    let canary = gateway.admin_json("/routes/api/canary").await;
    assert_eq!(canary["targets"][1]["upstream"], "next");
    assert_eq!(canary["targets"][1]["weight"], 25);
    assert_eq!(canary["targets"][0]["weight"], 75);
}

#[tokio::test]
async fn a_sticky_hash_keeps_each_user_on_one_version() {
    let stable = echo("stable").await;
    let next = echo("next").await;
    let gateway = GatewayProcess::start(&canary_config(
        &stable.addresses()[0].to_string(),
        &next.addresses()[0].to_string(),
        "      targets:\n        - upstream: next\n          weight: 50\n\
         \x20     sticky_hash: header:X-User\n",
    ))
    .await;
    let client = client();
    let url = gateway.url("/api");
    let mut versions = HashMap::new();
    for user in 0..40 {
        let user = format!("user-{user}");
        let (first, cookie) = instance_of(&client, &url, &[("x-user", &user)]).await;
        assert_eq!(cookie, None, "a hash needs no cookie");
        for _ in 0..4 {
            assert_eq!(
                instance_of(&client, &url, &[("x-user", &user)]).await.0,
                first
            );
        }
        *versions.entry(first).or_insert(0) += 1;
    }
    assert!(
        versions.get("next").copied().unwrap_or(0) >= 8
            && versions.get("stable").copied().unwrap_or(0) >= 8,
        "{versions:?}"
    );
}

#[tokio::test]
async fn canary_weights_change_promote_and_roll_back_at_run_time_without_a_failed_request() {
    let stable = echo("stable").await;
    let next = echo("next").await;
    let gateway = GatewayProcess::start(&canary_config(
        &stable.addresses()[0].to_string(),
        &next.addresses()[0].to_string(),
        "      targets:\n        - upstream: next\n          weight: 0\n",
    ))
    .await;
    let client = client();
    let url = gateway.url("/api");
    let traffic = Traffic::start(url.clone(), false);
    traffic.wait_for(50).await;
    for _ in 0..20 {
        assert_eq!(instance_of(&client, &url, &[]).await.0, "stable");
    }

    let put = |body: &'static str| {
        client
            .put(gateway.admin_url("/routes/api/canary"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let response = put(r#"{"weights": {"next": 100}}"#).await.unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    traffic.wait_for(50).await;
    for _ in 0..20 {
        assert_eq!(instance_of(&client, &url, &[]).await.0, "next");
    }
    // A name that is not a target is refused, and nothing changes.
    let refused = put(r#"{"weights": {"stable": 10}}"#).await.unwrap();
    assert_eq!(refused.status(), 400);
    let over = put(r#"{"weights": {"next": 101}}"#).await.unwrap();
    assert_eq!(over.status(), 400);
    let text = over.text().await.unwrap();
    assert!(text.contains("weights are percentages"), "{text}");

    // Rollback in one call: every target to 0.
    let rollback = client
        .post(gateway.admin_url("/routes/api/canary/rollback"))
        .send()
        .await
        .unwrap();
    assert_eq!(rollback.status(), 200, "{}", rollback.text().await.unwrap());
    traffic.wait_for(50).await;
    for _ in 0..20 {
        assert_eq!(instance_of(&client, &url, &[]).await.0, "stable");
    }

    // Promotion: the canary becomes the route's upstream and the split ends.
    let promote = client
        .post(gateway.admin_url("/routes/api/canary/promote"))
        .send()
        .await
        .unwrap();
    assert_eq!(promote.status(), 200, "{}", promote.text().await.unwrap());
    traffic.wait_for(50).await;
    for _ in 0..20 {
        assert_eq!(instance_of(&client, &url, &[]).await.0, "next");
    }
    let (status, route) = get_json(&client, &gateway.admin_url("/routes/api")).await;
    assert_eq!(status, 200);
    assert_eq!(route["upstream"], "next");
    assert!(route["canary"].is_null(), "{route}");
    let (completed, failures) = traffic.finish().await;
    assert!(failures.is_empty(), "{failures:?}");
    assert!(completed >= 200, "{completed}");
}

#[tokio::test]
async fn a_failing_canary_is_rolled_back_automatically_and_the_rollback_is_kept() {
    let stable = FaultServer::start("stable", Mode::Healthy).await;
    let next = FaultServer::start("next", Mode::Healthy).await;
    let mut gateway = GatewayProcess::start(&canary_config(
        &stable.endpoint(),
        &next.endpoint(),
        "      targets:\n        - upstream: next\n          weight: 50\n\
         \x20     rollback:\n        window: 1s\n        min_requests: 5\n        max_error_rate_increase: 0.2\n",
    ))
    .await;
    let client = client();
    let url = gateway.url("/api");
    // Healthy windows pass.
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(2500) {
        assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    }
    let canary = gateway.admin_json("/routes/api/canary").await;
    assert_eq!(canary["targets"][1]["rolled_back"], false, "{canary}");
    assert_eq!(
        canary["analysis"]["last_window"]["canaries"][0]["verdict"], "healthy",
        "{canary}"
    );

    // The canary starts failing: within a window or two it is taken out.
    next.set_mode(Mode::Fail503);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let _ = client.get(&url).send().await.unwrap();
        let canary = gateway.admin_json("/routes/api/canary").await;
        if canary["targets"][1]["rolled_back"] == true {
            let reason = canary["analysis"]["rollbacks"][0]["reason"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            assert!(reason.contains("error rate"), "{canary}");
            break;
        }
        assert!(Instant::now() < deadline, "no rollback: {canary}");
    }
    // From then on the stable version gets everything.
    let next_hits = next.hits();
    for _ in 0..50 {
        assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    }
    assert_eq!(next.hits(), next_hits);
    gateway
        .wait_for_metric_exactly(
            "loom_canary_rollbacks_total",
            &[("route", "api"), ("upstream", "next")],
            1.0,
        )
        .await;
    assert!(gateway.log().contains("canary rollback on route \"api\""));

    // It is written to the config, so a restart keeps the canary out.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let route = gateway.admin_json("/routes/api").await;
        if route["canary"]["targets"][1]["configured_weight"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "not written: {route}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    next.set_mode(Mode::Healthy);
    gateway.restart().await;
    let next_hits = next.hits();
    for _ in 0..50 {
        assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    }
    assert_eq!(next.hits(), next_hits);
}

/// Upstreams `primary` and `mirror`; route `api` on `primary` with `shadow_keys` under
/// `shadow:`, and route `other` with the same shadow but its own keys.
fn shadow_config(primary: &str, mirror: &str, shadow_keys: &str) -> String {
    format!(
        "listeners:\n  - name: http\n    address: \"127.0.0.1:@HTTP@\"\n\
         upstreams:\n  - name: primary\n    endpoints: [\"{primary}\"]\n\
         \x20 - name: mirror\n    endpoints: [\"{mirror}\"]\n\
         routes:\n  - id: api\n    path: /api/*\n    upstream: primary\n    shadow:\n      upstream: mirror\n{shadow_keys}"
    )
}

#[tokio::test]
async fn shadow_gets_its_share_marked_and_a_hanging_shadow_never_slows_the_client() {
    let primary = echo("primary").await;
    let mirror = FaultServer::start("mirror", Mode::Hang).await;
    let gateway = GatewayProcess::start(&shadow_config(
        &primary.addresses()[0].to_string(),
        &mirror.endpoint(),
        "      percentage: 50\n      timeout: 30s\n      max_in_flight: 1000\n",
    ))
    .await;
    let client = client();
    let started = Instant::now();
    for index in 0..200 {
        let response = client
            .post(gateway.url(&format!("/api/{index}")))
            .body(format!("body-{index}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-echo-instance"], "primary");
    }
    // Every mirrored request is still hanging at the shadow (30 s timeout): had the client
    // waited for one, 200 requests would have taken far longer than this.
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while mirror.hits() < 60 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let hits = mirror.hits();
    // 50% of 200: 100, with 6 standard deviations (~7 each) either side.
    assert!((60..=140).contains(&hits), "{hits}");
    let heads = mirror.heads();
    assert!(
        heads
            .iter()
            .all(|head| head.contains("\r\nx-shadow: true\r\n")),
        "{heads:?}"
    );
    assert!(
        heads.iter().all(|head| head.starts_with("post /api/")),
        "{heads:?}"
    );
    assert!(
        heads.iter().all(|head| head.contains("content-length: ")),
        "{heads:?}"
    );
}

#[tokio::test]
async fn shadow_failures_are_counted_and_never_reach_the_client() {
    let primary = echo("primary").await;
    let (dead_port, _dead) = crate::support::refused_port();
    let gateway = GatewayProcess::start(&shadow_config(
        &primary.addresses()[0].to_string(),
        &format!("127.0.0.1:{dead_port}"),
        "",
    ))
    .await;
    let client = client();
    for _ in 0..20 {
        let response = client.get(gateway.url("/api")).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
    gateway
        .wait_for_metric_exactly(
            "loom_shadow_requests_total",
            &[("route", "api"), ("outcome", "failed")],
            20.0,
        )
        .await;
}

#[tokio::test]
async fn shadow_answers_are_compared_and_mismatches_kept_with_a_diff() {
    let primary = FaultServer::start("primary", Mode::Healthy).await;
    let mirror = FaultServer::start("mirror", Mode::Healthy).await;
    let config = format!(
        "{}\
         \x20     compare:\n        body: json\n        headers: [content-type]\n        keep_diffs: 3\n\
         \x20 - id: lenient\n    path: /lenient\n    upstream: primary\n    shadow:\n      upstream: mirror\n\
         \x20     compare:\n        body: json\n        ignore_fields: [instance]\n",
        shadow_config(&primary.endpoint(), &mirror.endpoint(), "")
    );
    let gateway = GatewayProcess::start(&config).await;
    let client = client();
    for _ in 0..5 {
        assert_eq!(
            client
                .get(gateway.url("/api"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
        assert_eq!(
            client
                .get(gateway.url("/lenient"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    gateway
        .wait_for_metric_exactly(
            "loom_shadow_comparisons_total",
            &[("route", "lenient"), ("result", "match")],
            5.0,
        )
        .await;
    gateway
        .wait_for_metric_exactly(
            "loom_shadow_comparisons_total",
            &[("route", "api"), ("result", "mismatch")],
            5.0,
        )
        .await;
    let diffs = gateway.admin_json("/routes/api/shadow/diffs").await;
    assert_eq!(diffs["mismatches"], 5);
    assert_eq!(diffs["matches"], 0);
    assert_eq!(diffs["diffs"].as_array().unwrap().len(), 3, "keep_diffs");
    let diff = diffs["diffs"][0]["diff"].as_str().unwrap();
    assert!(diff.contains("-  \"instance\": \"primary\""), "{diff}");
    assert!(diff.contains("+  \"instance\": \"mirror\""), "{diff}");
    assert_eq!(
        diffs["diffs"][0]["differences"],
        serde_json::json!(["body"])
    );

    // A shadow that fails where the primary succeeds differs in status too.
    mirror.set_mode(Mode::Fail503);
    assert_eq!(
        client
            .get(gateway.url("/api"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    gateway
        .wait_for_metric_exactly(
            "loom_shadow_comparisons_total",
            &[("route", "api"), ("result", "mismatch")],
            6.0,
        )
        .await;
    let diffs = gateway.admin_json("/routes/api/shadow/diffs").await;
    assert_eq!(diffs["diffs"][0]["shadow_status"], 503);
    assert_eq!(
        diffs["diffs"][0]["differences"],
        serde_json::json!(["status", "body"])
    );
    let diff = diffs["diffs"][0]["diff"].as_str().unwrap();
    assert!(diff.contains("-status: 200\n+status: 503"), "{diff}");
}
