//! The routing matrix through the real gateway: each route has its own upstream (an echo
//! server named after the route), so the answering instance tells which route matched.

use crate::support::*;

const ROUTES: &[&str] = &[
    "exact-host",
    "wildcard-host",
    "user-param",
    "files-catch-all",
    "methods",
    "header-match",
    "query-match",
    "low-priority",
    "high-priority",
    "strip",
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
    path: /host
    upstream: exact-host
  - id: wildcard-host
    host: "*.example.com"
    path: /host
    upstream: wildcard-host
  - id: user-param
    path: /users/:id/posts/:post
    upstream: user-param
  - id: files-catch-all
    path: /files/*rest
    upstream: files-catch-all
  - id: methods
    path: /things
    methods: [GET, POST]
    upstream: methods
  - id: header-match
    path: /tenant
    headers:
      X-Tenant: blue
    upstream: header-match
  - id: query-match
    path: /tenant
    query_params:
      version: "2"
    upstream: query-match
  - id: low-priority
    path: /contest/*
    upstream: low-priority
  - id: high-priority
    path: /contest/*
    priority: 5
    upstream: high-priority
  - id: strip
    path: /strip/me/*
    strip_prefix: true
    upstream: strip
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_matrix() {
    let mut backends = Vec::new();
    let mut ports = Vec::new();
    for name in ROUTES {
        let server = echo(name).await;
        ports.push((name.to_string(), server.addresses()[0].port()));
        backends.push(server);
    }
    let gateway = GatewayProcess::start(&template(&ports)).await;
    let client = client();

    let answer = |path: &str| gateway.url(path);
    let instance_of =
        |body: &serde_json::Value| body["instance"].as_str().unwrap_or("").to_string();

    // Exact host beats wildcard host; wildcard matches subdomains only.
    let response = client
        .get(answer("/host"))
        .header("host", "api.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(instance_of(&response.json().await.unwrap()), "exact-host");
    let response = client
        .get(answer("/host"))
        .header("host", "a.b.example.com:8080")
        .send()
        .await
        .unwrap();
    assert_eq!(
        instance_of(&response.json().await.unwrap()),
        "wildcard-host"
    );
    let response = client
        .get(answer("/host"))
        .header("host", "example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(instance_of(&response.json().await.unwrap()), "fallback");

    // Parameters and catch-all.
    let (status, body) = get_json(&client, &answer("/users/42/posts/7")).await;
    assert_eq!((status, instance_of(&body).as_str()), (200, "user-param"));
    assert_eq!(body["path"], "/users/42/posts/7");
    let (_, body) = get_json(&client, &answer("/users/42")).await;
    assert_eq!(
        instance_of(&body),
        "fallback",
        "a missing param segment does not match"
    );
    let (_, body) = get_json(&client, &answer("/files/a/b/c.txt")).await;
    assert_eq!(instance_of(&body), "files-catch-all");
    let (_, body) = get_json(&client, &answer("/files")).await;
    assert_eq!(
        instance_of(&body),
        "files-catch-all",
        "catch-all may be empty"
    );

    // Methods; /things is only GET/POST, and no other route has that exact path except the
    // fallback, which allows everything: so DELETE falls back rather than 405.
    let response = client
        .post(answer("/things"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(instance_of(&response.json().await.unwrap()), "methods");
    let response = client.delete(answer("/things")).send().await.unwrap();
    assert_eq!(instance_of(&response.json().await.unwrap()), "fallback");

    // Required header and query parameter.
    let response = client
        .get(answer("/tenant"))
        .header("x-tenant", "blue")
        .send()
        .await
        .unwrap();
    assert_eq!(instance_of(&response.json().await.unwrap()), "header-match");
    let (_, body) = get_json(&client, &answer("/tenant?version=2")).await;
    assert_eq!(instance_of(&body), "query-match");
    let response = client
        .get(answer("/tenant?version=3"))
        .header("x-tenant", "red")
        .send()
        .await
        .unwrap();
    assert_eq!(instance_of(&response.json().await.unwrap()), "fallback");

    // Priority beats file order for equally specific routes.
    let (_, body) = get_json(&client, &answer("/contest/x")).await;
    assert_eq!(instance_of(&body), "high-priority");

    // strip_prefix removes the static prefix, keeping the query.
    let (_, body) = get_json(&client, &answer("/strip/me/deeper/path?q=1")).await;
    assert_eq!(instance_of(&body), "strip");
    assert_eq!(body["path"], "/deeper/path");
    assert_eq!(body["query"], "q=1");
    let (_, body) = get_json(&client, &answer("/strip/me")).await;
    assert_eq!(body["path"], "/");

    drop(backends);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_not_allowed_lists_allowed_methods() {
    let backend = echo("only").await;
    let port = backend.addresses()[0].port();
    let gateway = GatewayProcess::start(&format!(
        r#"listeners:
  - name: http
    address: "127.0.0.1:@HTTP@"
routes:
  - id: read
    path: /items/:id
    methods: [GET]
    upstream: only
  - id: write
    path: /items/:id
    methods: [PUT, DELETE]
    upstream: only
upstreams:
  - name: only
    endpoints: ["127.0.0.1:{port}"]
"#
    ))
    .await;
    let client = client();
    let response = client
        .post(gateway.url("/items/1"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "DELETE, GET, PUT");
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["status"], 405);
    assert_eq!(body["error"]["code"], "method_not_allowed");
    assert_eq!(body["error"]["request_id"], request_id.as_str());

    let response = client
        .get(gateway.url("/nothing/here"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "route_not_found");
    let (status, _) = get_json(&client, &gateway.url("/items/1")).await;
    assert_eq!(status, 200);
}
