//! `GET /explain` and the endpoints of `GET /routes/{id}` through the real gateway. Every
//! route has its own echo upstream named after it, so the instance that answers a request
//! tells which route the gateway really chose, and `/explain` must name the same one.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;

const ROUTES: &[&str] = &[
    "exact-host",
    "wildcard-host",
    "api-prefix",
    "api-exact",
    "user",
    "writes",
    "tenant-blue",
    "tenant-v2",
    "low",
    "high",
    "tie-first",
    "tie-second",
    "fallback",
];

fn template(ports: &[(String, u16)]) -> String {
    let mut yaml = String::from(
        r#"listeners:
  - name: http
    address: "127.0.0.1:@HTTP@"
routes:
  - id: exact-host
    host: api.example.com
    path: /api/*
    upstream: exact-host
  - id: wildcard-host
    host: "*.example.com"
    path: /api/*
    upstream: wildcard-host
  - id: api-prefix
    path: /api/*
    strip_prefix: true
    upstream: api-prefix
  - id: api-exact
    path: /api/users
    upstream: api-exact
  - id: user
    path: /api/users/:id
    upstream: user
  - id: writes
    path: /items
    methods: [POST, PUT]
    upstream: writes
  - id: tenant-blue
    path: /tenant
    headers:
      X-Tenant: blue
    upstream: tenant-blue
  - id: tenant-v2
    path: /tenant
    query_params:
      v: "2"
    upstream: tenant-v2
  - id: low
    path: /contest/*
    upstream: low
  - id: high
    path: /contest/*
    priority: 5
    upstream: high
  - id: tie-first
    path: /tie
    upstream: tie-first
  - id: tie-second
    path: /tie
    upstream: tie-second
  - id: fallback
    path: /*
    upstream: fallback
upstreams:
"#,
    );
    for (name, port) in ports {
        yaml.push_str(&format!(
            "  - name: {name}\n    endpoints: [\"127.0.0.1:{port}\"]\n"
        ));
    }
    yaml
}

/// One request of the matrix and what `/explain` must say about it.
struct Case {
    method: &'static str,
    host: &'static str,
    /// Path with an optional query.
    target: &'static str,
    headers: &'static [(&'static str, &'static str)],
    chosen: &'static str,
    /// `(route, reasons)`: the conditions it fails (`host`, `path`, `method`, `header`,
    /// `query_param`) or, for a route that matched but lost, `precedence:<rule>`.
    losers: &'static [(&'static str, &'static [&'static str])],
}

const fn get(host: &'static str, target: &'static str) -> Case {
    Case {
        method: "GET",
        host,
        target,
        headers: &[],
        chosen: "",
        losers: &[],
    }
}

const CASES: &[Case] = &[
    Case {
        chosen: "exact-host",
        losers: &[
            ("wildcard-host", &["precedence:host"]),
            ("api-prefix", &["precedence:host"]),
            ("fallback", &["precedence:static_prefix"]),
            ("api-exact", &["path"]),
            ("writes", &["path", "method"]),
        ],
        ..get("api.example.com", "/api/x")
    },
    Case {
        chosen: "wildcard-host",
        losers: &[
            ("exact-host", &["host"]),
            ("api-prefix", &["precedence:host"]),
        ],
        ..get("a.b.example.com:8080", "/api/x/y")
    },
    Case {
        chosen: "api-exact",
        losers: &[
            ("exact-host", &["host"]),
            ("wildcard-host", &["host"]),
            ("api-prefix", &["precedence:path_kind"]),
            ("user", &["path"]),
        ],
        ..get("example.com", "/api/users")
    },
    Case {
        chosen: "user",
        losers: &[
            ("api-exact", &["path"]),
            ("api-prefix", &["precedence:path_kind"]),
        ],
        ..get("other.org", "/api/users/7")
    },
    Case {
        chosen: "api-prefix",
        losers: &[
            ("wildcard-host", &["host"]),
            ("fallback", &["precedence:static_prefix"]),
        ],
        ..get("other.org", "/api/v1/x?debug=1")
    },
    Case {
        method: "POST",
        chosen: "writes",
        losers: &[("fallback", &["precedence:path_kind"])],
        ..get("other.org", "/items")
    },
    Case {
        chosen: "fallback",
        losers: &[("writes", &["method"])],
        ..get("other.org", "/items")
    },
    Case {
        headers: &[("X-Tenant", "blue")],
        chosen: "tenant-blue",
        losers: &[("tenant-v2", &["query_param"])],
        ..get("other.org", "/tenant")
    },
    Case {
        headers: &[("X-Tenant", "red")],
        chosen: "tenant-v2",
        losers: &[("tenant-blue", &["header"])],
        ..get("other.org", "/tenant?v=2")
    },
    Case {
        chosen: "fallback",
        losers: &[
            ("tenant-blue", &["header"]),
            ("tenant-v2", &["query_param"]),
        ],
        ..get("other.org", "/tenant?v=3")
    },
    Case {
        chosen: "high",
        losers: &[("low", &["precedence:priority"])],
        ..get("other.org", "/contest/a")
    },
    Case {
        chosen: "tie-first",
        losers: &[("tie-second", &["precedence:file_order"])],
        ..get("other.org", "/tie")
    },
];

/// The reason codes `/explain` gives for one losing route.
fn reason_codes(explained: &Value, route: &str) -> Vec<String> {
    let candidates = explained["candidates"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let candidate = candidates
        .iter()
        .find(|candidate| candidate["id"] == route)
        .unwrap_or_else(|| panic!("{route} is not among the candidates: {explained:#}"));
    candidate["reasons"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|reason| match reason["condition"].as_str() {
            Some("precedence") => format!("precedence:{}", reason["rule"].as_str().unwrap_or("")),
            Some(condition) => condition.to_string(),
            None => String::new(),
        })
        .collect()
}

/// Asks `/explain` about the request the case sends.
async fn explain(gateway: &GatewayProcess, case: &Case) -> Value {
    let mut query: Vec<(&str, String)> = vec![
        ("method", case.method.to_string()),
        ("host", case.host.to_string()),
        ("path", case.target.to_string()),
    ];
    for (name, value) in case.headers {
        query.push(("header", format!("{name}: {value}")));
    }
    let response = client()
        .get(gateway.admin_url("/explain"))
        .query(&query)
        .send()
        .await
        .expect("the admin API answers");
    assert_eq!(response.status(), 200);
    response.json().await.expect("explain answers JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_names_the_route_that_serves_each_request_and_why_others_lost() {
    let mut backends = Vec::new();
    let mut ports = Vec::new();
    for name in ROUTES {
        let server = echo(name).await;
        ports.push((name.to_string(), server.addresses()[0].port()));
        backends.push(server);
    }
    let gateway = GatewayProcess::start(&template(&ports)).await;
    let client = client();

    for case in CASES {
        let method = http::Method::from_bytes(case.method.as_bytes()).unwrap();
        let mut request = client
            .request(method, gateway.url(case.target))
            .header("host", case.host);
        for (name, value) in case.headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("the gateway answers");
        assert_eq!(response.status(), 200, "{} {}", case.method, case.target);
        let served: Value = response.json().await.unwrap();

        let explained = explain(&gateway, case).await;
        let context = format!(
            "{} {} {}: {explained:#}",
            case.method, case.host, case.target
        );
        assert_eq!(served["instance"], case.chosen, "{context}");
        assert_eq!(explained["outcome"], "matched", "{context}");
        assert_eq!(explained["matched"], served["instance"], "{context}");
        assert_eq!(explained["upstream"], case.chosen, "{context}");

        // The path the echo received is the one /explain predicted.
        let mut received = served["path"].as_str().unwrap_or_default().to_string();
        if let Some(query) = served["query"].as_str() {
            received.push('?');
            received.push_str(query);
        }
        assert_eq!(explained["upstream_path"], received.as_str(), "{context}");

        // Every route but the chosen one is a candidate with at least one reason.
        let candidates = explained["candidates"].as_array().unwrap();
        assert_eq!(candidates.len(), ROUTES.len() - 1, "{context}");
        assert!(
            candidates
                .iter()
                .all(|candidate| candidate["id"] != case.chosen
                    && !candidate["reasons"].as_array().unwrap().is_empty()),
            "{context}"
        );
        for (route, reasons) in case.losers {
            assert_eq!(
                reason_codes(&explained, route),
                *reasons,
                "{route} in {context}"
            );
        }

        let endpoints = explained["endpoints"].as_array().unwrap();
        assert_eq!(endpoints.len(), 1, "{context}");
        assert_eq!(endpoints[0]["healthy"], true, "{context}");
        assert_eq!(endpoints[0]["selectable"], true, "{context}");
        assert!(explained["chain"].is_array(), "{context}");
    }

    // The details of a few answers.
    let user = explain(&gateway, &CASES[3]).await;
    assert_eq!(user["path_params"], serde_json::json!({"id": "7"}));
    let low = &user["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|candidate| candidate["id"] == "api-prefix")
        .unwrap()["reasons"][0];
    assert_eq!(low["outranked_by"], "user");
    let contest = explain(&gateway, &CASES[10]).await;
    let low = &contest["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|candidate| candidate["id"] == "low")
        .unwrap()["reasons"][0];
    assert_eq!(
        low["message"],
        "matches every condition but ranks below \"high\": priority 5 over 0"
    );
    let read = explain(&gateway, &CASES[6]).await;
    let writes = &read["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|candidate| candidate["id"] == "writes")
        .unwrap()["reasons"][0];
    assert_eq!(
        writes["message"],
        "method GET is not allowed (allowed: POST, PUT)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_refuses_requests_it_cannot_describe() {
    let backend = echo("only").await;
    let gateway = GatewayProcess::start(&format!(
        "listeners:\n  - name: http\n    address: \"127.0.0.1:@HTTP@\"\nroutes:\n  - id: items\n    path: /items\n    methods: [POST]\n    upstream: echo\nupstreams:\n{}",
        echo_upstream(backend.addresses()[0].port())
    ))
    .await;
    let client = client();
    for (query, status, code) in [
        ("", 400, "bad_request"),
        ("?method=GET&host=example.com", 400, "bad_request"),
        ("?path=/a/../../b", 400, "invalid_path"),
        ("?path=/x&verb=GET", 400, "bad_request"),
    ] {
        let response = client
            .get(gateway.admin_url(&format!("/explain{query}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status, "{query}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{query}: {body}");
        assert!(body["error"]["message"].is_string(), "{query}: {body}");
    }
    let response = client
        .post(gateway.admin_url("/explain?path=/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);

    // Nothing matches, or only the method fails: no route, as the gateway's 404 and 405.
    let missing = gateway.admin_json("/explain?path=/other").await;
    assert_eq!(missing["outcome"], "not_found");
    assert_eq!(missing["matched"], Value::Null);
    assert_eq!(reason_codes(&missing, "items"), ["path", "method"]);
    let wrong_method = gateway.admin_json("/explain?path=/items").await;
    assert_eq!(wrong_method["outcome"], "method_not_allowed");
    assert_eq!(wrong_method["allow"], "POST");
    assert_eq!(reason_codes(&wrong_method, "items"), ["method"]);
    let status = client
        .get(gateway.url("/items"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 405);
}

/// Polls `/explain` until the endpoint at `address` reports `healthy == expected`.
async fn wait_for_health(gateway: &GatewayProcess, path: &str, address: &str, expected: bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let explained = gateway.admin_json(path).await;
        let endpoint = explained["endpoints"]
            .as_array()
            .and_then(|endpoints| {
                endpoints
                    .iter()
                    .find(|endpoint| endpoint["address"] == address)
                    .cloned()
            })
            .unwrap_or(Value::Null);
        if endpoint["healthy"] == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{address} never became healthy={expected}: {explained:#}\n{}",
            gateway.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_and_route_show_live_endpoint_state() {
    let a = echo("a").await;
    let b = echo("b").await;
    let a_address = format!("127.0.0.1:{}", a.addresses()[0].port());
    let b_socket = b.addresses()[0];
    let b_address = b_socket.to_string();
    let gateway = GatewayProcess::start(&single_route(&format!(
        "  - name: pool\n    endpoints: [\"{a_address}\", \"{b_address}\"]\n    health_check:\n      path: /health\n      interval: 100ms\n      timeout: 1s\n      healthy_threshold: 1\n      unhealthy_threshold: 1\n    circuit_breaker:\n      failure_threshold: 5\n      timeout: 10s\n    outlier_detection:\n      consecutive_failures: 5\n"
    )))
    .await;
    let explain_path = "/explain?path=/anything";

    let explained = gateway.admin_json(explain_path).await;
    assert_eq!(explained["matched"], "all");
    assert_eq!(explained["upstream"], "pool");
    let endpoints = explained["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 2);
    for (endpoint, address) in endpoints.iter().zip([&a_address, &b_address]) {
        assert_eq!(endpoint["address"], address.as_str());
        assert_eq!(endpoint["weight"], 1);
        assert_eq!(endpoint["healthy"], true);
        assert_eq!(endpoint["circuit_breaker"]["state"], "closed");
        assert_eq!(endpoint["ejected"], false);
        assert_eq!(endpoint["selectable"], true);
        assert_eq!(endpoint["unselectable_because"], Value::Null);
    }

    b.stop().await;
    wait_for_health(&gateway, explain_path, &b_address, false).await;
    let explained = gateway.admin_json(explain_path).await;
    let endpoints = explained["endpoints"].as_array().unwrap();
    assert_eq!(endpoints[0]["selectable"], true, "{explained:#}");
    assert_eq!(endpoints[1]["selectable"], false, "{explained:#}");
    assert_eq!(endpoints[1]["unselectable_because"], "unhealthy");

    // GET /routes/{id} reports the same live state.
    let route = gateway.admin_json("/routes/all").await;
    assert_eq!(route["endpoints"], explained["endpoints"], "{route:#}");

    // The backend comes back and the health check notices.
    let _b_again = echo_on(b_socket, "b").await;
    wait_for_health(&gateway, explain_path, &b_address, true).await;
}
