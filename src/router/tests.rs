//! Behaviour of the whole router: matching rules, precedence, 405 answers and build errors.

use super::*;

fn route(id: &str, path: &str) -> RouteSpec {
    RouteSpec {
        id: id.to_string(),
        path: path.to_string(),
        ..RouteSpec::default()
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|item| item.to_string()).collect()
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

/// Builds a router whose values are the route ids, numbering `index` by list position.
fn router(specs: Vec<RouteSpec>) -> Router<String> {
    build_as_given(
        specs
            .into_iter()
            .enumerate()
            .map(|(index, spec)| RouteSpec { index, ..spec })
            .collect(),
    )
}

/// Builds a router keeping each spec's own `index`.
fn build_as_given(specs: Vec<RouteSpec>) -> Router<String> {
    let routes = specs
        .into_iter()
        .map(|spec| {
            let value = spec.id.clone();
            (spec, value)
        })
        .collect();
    match Router::build(routes) {
        Ok(router) => router,
        Err(errors) => panic!("routes should build: {errors:?}"),
    }
}

/// A request for [`resolve`].
#[derive(Clone, Copy)]
struct Probe<'a> {
    method: &'a str,
    host: Option<&'a str>,
    /// Path and optional query, as in a request line.
    target: &'a str,
    headers: &'a [(&'a str, &'a str)],
}

impl<'a> Probe<'a> {
    fn get(target: &'a str) -> Probe<'a> {
        Probe {
            method: "GET",
            host: None,
            target,
            headers: &[],
        }
    }

    fn method(self, method: &'a str) -> Probe<'a> {
        Probe { method, ..self }
    }

    fn host(self, host: &'a str) -> Probe<'a> {
        Probe {
            host: Some(host),
            ..self
        }
    }

    fn headers(self, headers: &'a [(&'a str, &'a str)]) -> Probe<'a> {
        Probe { headers, ..self }
    }
}

/// The outcome in short: the winning route id, `405 <allow>` or `404`.
fn resolve(router: &Router<String>, probe: Probe<'_>) -> String {
    let (path, query) = match probe.target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (probe.target, None),
    };
    let lookup = |name: &str| {
        probe
            .headers
            .iter()
            .find(|(candidate, _)| candidate.eq_ignore_ascii_case(name))
            .map(|&(_, value)| value)
    };
    let request = RequestView {
        method: probe.method,
        host: probe.host,
        path,
        query,
        headers: &lookup,
        client_certificate: &crate::router::no_client_certificate,
    };
    match router.match_request(&request) {
        MatchOutcome::Matched(found) => found.value.clone(),
        MatchOutcome::MethodNotAllowed { allow } => format!("405 {allow}"),
        MatchOutcome::NotFound => "404".to_string(),
    }
}

fn no_headers<'a>(_name: &str) -> Option<&'a str> {
    None
}

fn view<'a>(path: &'a str) -> RequestView<'a> {
    RequestView {
        method: "GET",
        host: None,
        path,
        query: None,
        headers: &no_headers,
        client_certificate: &crate::router::no_client_certificate,
    }
}

#[test]
fn matches_exact_paths() {
    let table = router(vec![route("health", "/health"), route("root", "/")]);
    assert_eq!(resolve(&table, Probe::get("/health")), "health");
    assert_eq!(resolve(&table, Probe::get("/")), "root");
    assert_eq!(resolve(&table, Probe::get("/healthz")), "404");
    assert_eq!(resolve(&table, Probe::get("/Health")), "404");
}

#[test]
fn trailing_slash_is_significant() {
    let table = router(vec![route("bare", "/users"), route("slash", "/users/")]);
    assert_eq!(resolve(&table, Probe::get("/users")), "bare");
    assert_eq!(resolve(&table, Probe::get("/users/")), "slash");
}

#[test]
fn params_match_one_non_empty_segment() {
    let table = router(vec![route("post", "/users/:id/posts/:post_id")]);
    assert_eq!(resolve(&table, Probe::get("/users/42/posts/7")), "post");
    assert_eq!(resolve(&table, Probe::get("/users//posts/7")), "404");
    assert_eq!(resolve(&table, Probe::get("/users/42/posts/")), "404");
    assert_eq!(resolve(&table, Probe::get("/users/4/2/posts/7")), "404");

    let request = view("/users/42/posts/7");
    let MatchOutcome::Matched(found) = table.match_request(&request) else {
        panic!("expected a match");
    };
    assert_eq!(found.params.get("id"), Some("42"));
    assert_eq!(found.params.get("post_id"), Some("7"));
    let captured: Vec<_> = found.params.iter().collect();
    assert_eq!(captured, [("id", "42"), ("post_id", "7")]);
}

#[test]
fn unnamed_catch_all_matches_the_rest_without_capturing() {
    let table = router(vec![route("api", "/api/*")]);
    for path in ["/api", "/api/", "/api/a", "/api/a/b/"] {
        assert_eq!(resolve(&table, Probe::get(path)), "api", "{path}");
    }
    assert_eq!(resolve(&table, Probe::get("/apix")), "404");
    assert_eq!(resolve(&table, Probe::get("/")), "404");

    let request = view("/api/a/b");
    let MatchOutcome::Matched(found) = table.match_request(&request) else {
        panic!("expected a match");
    };
    assert!(found.params.is_empty());
}

#[test]
fn named_catch_all_captures_the_rest() {
    let table = router(vec![route("files", "/files/*path"), route("all", "/*")]);
    let cases = [
        ("/files/a/b.txt", "a/b.txt"),
        ("/files/", ""),
        ("/files", ""),
    ];
    for (path, expected) in cases {
        let request = view(path);
        let MatchOutcome::Matched(found) = table.match_request(&request) else {
            panic!("expected a match for {path}");
        };
        assert_eq!(found.spec.id, "files");
        assert_eq!(found.params.get("path"), Some(expected), "{path}");
    }
    assert_eq!(resolve(&table, Probe::get("/")), "all");
}

#[test]
fn priority_wins_over_everything_else() {
    let table = router(vec![
        route("exact", "/api/users"),
        RouteSpec {
            priority: 10,
            ..route("catch_all", "/*")
        },
    ]);
    assert_eq!(resolve(&table, Probe::get("/api/users")), "catch_all");

    let table = router(vec![
        RouteSpec {
            hosts: strings(&["api.example.com"]),
            ..route("exact_host", "/x")
        },
        RouteSpec {
            priority: 1,
            ..route("any_host", "/x")
        },
    ]);
    let probe = Probe::get("/x").host("api.example.com");
    assert_eq!(resolve(&table, probe), "any_host");
}

#[test]
fn negative_priority_loses_to_default() {
    let table = router(vec![
        RouteSpec {
            priority: -1,
            ..route("demoted", "/users/me")
        },
        route("param", "/users/:id"),
    ]);
    assert_eq!(resolve(&table, Probe::get("/users/me")), "param");
}

#[test]
fn exact_beats_param_beats_catch_all() {
    let table = router(vec![
        route("catch_all", "/users/*"),
        route("param", "/users/:id"),
        route("exact", "/users/me"),
    ]);
    assert_eq!(resolve(&table, Probe::get("/users/me")), "exact");
    assert_eq!(resolve(&table, Probe::get("/users/42")), "param");
    assert_eq!(resolve(&table, Probe::get("/users/42/x")), "catch_all");
}

#[test]
fn kind_is_compared_before_prefix_length() {
    let table = router(vec![
        route("long_catch_all", "/a/b/c/*"),
        route("short_param", "/:x/b/c/d"),
    ]);
    assert_eq!(resolve(&table, Probe::get("/a/b/c/d")), "short_param");
}

#[test]
fn longer_static_prefix_wins_within_a_kind() {
    let table = router(vec![route("short", "/api/*"), route("long", "/api/v1/*")]);
    assert_eq!(resolve(&table, Probe::get("/api/v1/users")), "long");
    assert_eq!(resolve(&table, Probe::get("/api/v2/users")), "short");

    let table = router(vec![
        route("anywhere", "/:section/:id"),
        route("users", "/users/:id"),
    ]);
    assert_eq!(resolve(&table, Probe::get("/users/42")), "users");
    assert_eq!(resolve(&table, Probe::get("/teams/42")), "anywhere");
}

#[test]
fn host_specificity_breaks_path_ties() {
    let table = router(vec![
        route("any", "/x"),
        RouteSpec {
            hosts: strings(&["*.example.com"]),
            ..route("wildcard", "/x")
        },
        RouteSpec {
            hosts: strings(&["*.eu.example.com"]),
            ..route("longer_wildcard", "/x")
        },
        RouteSpec {
            hosts: strings(&["api.eu.example.com"]),
            ..route("exact", "/x")
        },
    ]);
    let resolve_host = |host| resolve(&table, Probe::get("/x").host(host));
    assert_eq!(resolve_host("api.eu.example.com"), "exact");
    assert_eq!(resolve_host("web.eu.example.com"), "longer_wildcard");
    assert_eq!(resolve_host("web.example.com"), "wildcard");
    assert_eq!(resolve_host("example.com"), "any");
    assert_eq!(resolve_host("other.org"), "any");
    assert_eq!(resolve(&table, Probe::get("/x")), "any");
}

#[test]
fn path_specificity_comes_before_host_specificity() {
    let table = router(vec![
        RouteSpec {
            hosts: strings(&["api.example.com"]),
            ..route("host_catch_all", "/*")
        },
        route("any_exact", "/x"),
    ]);
    let probe = Probe::get("/x").host("api.example.com");
    assert_eq!(resolve(&table, probe), "any_exact");
}

#[test]
fn file_order_is_the_last_tie_breaker() {
    let table = build_as_given(vec![
        RouteSpec {
            index: 7,
            ..route("later_in_file", "/x")
        },
        RouteSpec {
            index: 3,
            ..route("earlier_in_file", "/x")
        },
    ]);
    assert_eq!(resolve(&table, Probe::get("/x")), "earlier_in_file");

    let table = build_as_given(vec![route("first_listed", "/x"), route("second", "/x")]);
    assert_eq!(resolve(&table, Probe::get("/x")), "first_listed");
}

#[test]
fn wildcard_hosts_match_subdomains_at_any_depth_but_not_the_apex() {
    let table = router(vec![RouteSpec {
        hosts: strings(&["*.example.com"]),
        ..route("wildcard", "/")
    }]);
    let resolve_host = |host| resolve(&table, Probe::get("/").host(host));
    assert_eq!(resolve_host("a.example.com"), "wildcard");
    assert_eq!(resolve_host("a.b.example.com"), "wildcard");
    assert_eq!(resolve_host("example.com"), "404");
    assert_eq!(resolve_host("badexample.com"), "404");
    assert_eq!(resolve_host(".example.com"), "404");
    assert_eq!(resolve(&table, Probe::get("/")), "404");
}

#[test]
fn hosts_compare_without_case_port_or_trailing_dot() {
    let table = router(vec![RouteSpec {
        hosts: strings(&["API.example.com", "*.Example.org"]),
        ..route("api", "/")
    }]);
    for host in [
        "api.example.com",
        "API.EXAMPLE.COM",
        "api.example.com:8443",
        "api.example.com.",
        "Www.EXAMPLE.org:80",
    ] {
        assert_eq!(resolve(&table, Probe::get("/").host(host)), "api", "{host}");
    }
    let overlong = format!("{}.example.com", "a".repeat(300));
    assert_eq!(resolve(&table, Probe::get("/").host(&overlong)), "404");
}

#[test]
fn wrong_method_gives_the_allow_list() {
    let table = router(vec![
        RouteSpec {
            methods: strings(&["POST", "GET"]),
            ..route("write", "/items/:id")
        },
        RouteSpec {
            methods: strings(&["DELETE", "GET"]),
            ..route("delete", "/items/*")
        },
        RouteSpec {
            methods: strings(&["PATCH"]),
            hosts: strings(&["other.example.com"]),
            ..route("other_host", "/items/:id")
        },
        RouteSpec {
            methods: strings(&["PUT"]),
            headers: pairs(&[("x-admin", "1")]),
            ..route("admin", "/items/:id")
        },
    ]);
    assert_eq!(resolve(&table, Probe::get("/items/1")), "write");
    let probe = Probe::get("/items/1").method("OPTIONS");
    assert_eq!(resolve(&table, probe), "405 DELETE, GET, POST");
    let probe = probe.headers(&[("x-admin", "1")]);
    assert_eq!(resolve(&table, probe), "405 DELETE, GET, POST, PUT");
    let probe = Probe::get("/items/1").method("get");
    assert_eq!(resolve(&table, probe), "405 DELETE, GET, POST");
    assert_eq!(
        resolve(&table, Probe::get("/elsewhere").method("PUT")),
        "404"
    );
}

#[test]
fn a_lower_route_accepting_the_method_beats_a_405() {
    let table = router(vec![
        RouteSpec {
            methods: strings(&["POST"]),
            ..route("post_me", "/users/me")
        },
        route("any_method", "/users/:id"),
    ]);
    assert_eq!(resolve(&table, Probe::get("/users/me")), "any_method");
    let probe = Probe::get("/users/me").method("POST");
    assert_eq!(resolve(&table, probe), "post_me");
}

#[test]
fn configured_methods_are_upper_cased() {
    let table = router(vec![RouteSpec {
        methods: strings(&["get"]),
        ..route("lower", "/")
    }]);
    assert_eq!(resolve(&table, Probe::get("/")), "lower");
}

#[test]
fn required_headers() {
    let table = router(vec![
        RouteSpec {
            headers: pairs(&[("X-Env", "canary")]),
            ..route("canary", "/")
        },
        RouteSpec {
            headers: pairs(&[("x-debug", "*")]),
            ..route("debug", "/")
        },
        route("default", "/"),
    ]);
    let headers = [("x-env", "canary")];
    assert_eq!(resolve(&table, Probe::get("/").headers(&headers)), "canary");
    let headers = [("x-env", "Canary")];
    assert_eq!(
        resolve(&table, Probe::get("/").headers(&headers)),
        "default"
    );
    let headers = [("x-debug", "")];
    assert_eq!(resolve(&table, Probe::get("/").headers(&headers)), "debug");
    assert_eq!(resolve(&table, Probe::get("/")), "default");
}

#[test]
fn required_query_parameters() {
    let table = router(vec![
        RouteSpec {
            query_params: pairs(&[("version", "2"), ("q", "a b")]),
            ..route("v2_search", "/search")
        },
        RouteSpec {
            query_params: pairs(&[("debug", "*")]),
            ..route("debug", "/search")
        },
        route("default", "/search"),
    ]);
    let resolve_target = |target| resolve(&table, Probe::get(target));
    assert_eq!(resolve_target("/search?version=2&q=a+b"), "v2_search");
    assert_eq!(resolve_target("/search?q=a%20b&version=2"), "v2_search");
    assert_eq!(resolve_target("/search?version=3&q=a+b"), "default");
    assert_eq!(resolve_target("/search?version=2"), "default");
    assert_eq!(resolve_target("/search?debug"), "debug");
    assert_eq!(resolve_target("/search?debug=yes"), "debug");
    assert_eq!(resolve_target("/search"), "default");
}

#[test]
fn static_prefix_feeds_strip_static_prefix() {
    let table = router(vec![
        route("api", "/api/*"),
        route("user", "/users/:id"),
        route("health", "/health"),
    ]);
    let cases = [
        ("/api/users", "/users"),
        ("/api", "/"),
        ("/api/", "/"),
        ("/users/42", "/42"),
        ("/health", "/"),
    ];
    for (path, stripped) in cases {
        let request = view(path);
        let MatchOutcome::Matched(found) = table.match_request(&request) else {
            panic!("expected a match for {path}");
        };
        assert_eq!(
            strip_static_prefix(path, found.static_prefix_len),
            stripped,
            "{path}"
        );
    }
}

#[test]
fn unnormalised_request_paths_do_not_match() {
    let table = router(vec![route("all", "/*")]);
    assert_eq!(resolve(&table, Probe::get("relative")), "404");
    assert_eq!(resolve(&table, Probe::get("")), "404");
}

#[test]
fn reports_every_build_error_with_its_route_index() {
    let specs = vec![
        route("fine", "/ok"),
        route("relative", "users"),
        route("star_not_last", "/api/*/x"),
        route("empty_param", "/users/:"),
        route("duplicate", "/a/:id/b/:id"),
        RouteSpec {
            hosts: strings(&["a.*.com"]),
            methods: strings(&["BAD METHOD"]),
            ..route("host_and_method", "/ok")
        },
    ];
    let routes: Vec<_> = specs
        .into_iter()
        .enumerate()
        .map(|(index, spec)| (RouteSpec { index, ..spec }, ()))
        .collect();
    let errors = match Router::build(routes) {
        Ok(_) => panic!("invalid routes should not build"),
        Err(errors) => errors,
    };
    let indexes: Vec<_> = errors.iter().map(|error| error.route_index).collect();
    assert_eq!(indexes, [1, 2, 3, 4, 5, 5], "{errors:?}");
    assert!(errors[0].message.contains("must start with '/'"));
    assert!(errors[1].message.contains("must be the last segment"));
    assert!(errors[2].message.contains("empty parameter name"));
    assert!(errors[3].message.contains("duplicate parameter name"));
    assert!(errors[4].message.contains("misplaced '*'"));
    assert!(errors[5].message.contains("not a valid HTTP method"));
    let fields: Vec<_> = errors.iter().map(|error| error.field).collect();
    assert_eq!(fields, ["path", "path", "path", "path", "hosts", "methods"]);
    assert!(errors[0].to_string().starts_with("route 1 path: "));
}

#[test]
fn counts_routes() {
    let table: Router<String> = router(Vec::new());
    assert!(table.is_empty());
    assert_eq!(resolve(&table, Probe::get("/")), "404");
    let table = router(vec![route("a", "/a"), route("b", "/b")]);
    assert_eq!(table.len(), 2);
    assert!(!table.is_empty());
}

#[test]
fn router_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Router<String>>();
}

#[test]
fn one_route_with_several_hosts_uses_its_best_host_match() {
    let table = router(vec![
        RouteSpec {
            hosts: strings(&["*.example.com", "api.example.com"]),
            ..route("both", "/x")
        },
        RouteSpec {
            hosts: strings(&["*.example.com"]),
            ..route("wildcard_only", "/x")
        },
    ]);
    let probe = Probe::get("/x").host("api.example.com");
    assert_eq!(resolve(&table, probe), "both");
}
