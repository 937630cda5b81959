//! Route matching and path normalisation cost at realistic table sizes.
//!
//! Each table mixes exact paths, parameters, catch-alls, method limits and exact and wildcard
//! hosts the way a multi-tenant gateway config does; the probe hits a route near the end of
//! the table so that nothing benefits from being listed first.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use loom::router::{MatchOutcome, RequestView, RouteSpec, Router, normalize_path};
use std::hint::black_box;

/// Builds `count` routes: one service per four routes, each with a health check, a
/// parameterised resource, a catch-all for static files and a host-bound route.
fn routes(count: usize) -> Vec<(RouteSpec, usize)> {
    (0..count)
        .map(|index| {
            let service = index / 4;
            let mut spec = RouteSpec {
                id: format!("route-{index}"),
                index,
                ..RouteSpec::default()
            };
            match index % 4 {
                0 => spec.path = format!("/svc{service}/health"),
                1 => {
                    spec.path = format!("/svc{service}/users/:user_id/orders/:order_id");
                    spec.methods = vec!["GET".to_string(), "PUT".to_string()];
                }
                2 => spec.path = format!("/svc{service}/static/*path"),
                _ => {
                    spec.path = "/v1/items/:item_id".to_string();
                    spec.hosts = if service % 2 == 0 {
                        vec![format!("tenant{service}.example.com")]
                    } else {
                        vec![format!("*.region{service}.example.com")]
                    };
                }
            }
            (spec, index)
        })
        .collect()
}

fn no_headers<'a>(_name: &str) -> Option<&'a str> {
    None
}

fn bench_match(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("match_request");
    for count in [10, 1_000, 10_000] {
        let router = match Router::build(routes(count)) {
            Ok(router) => router,
            Err(errors) => panic!("bench routes must build: {errors:?}"),
        };
        let last_service = (count - 1) / 4;
        let param_path = format!("/svc{last_service}/users/12345/orders/67890");
        // The last service that has a wildcard-host route (odd services, index 4s+3).
        let last_complete_service = (count - 4) / 4;
        let wildcard_service = last_complete_service - (1 - last_complete_service % 2);
        let host = format!("api.region{wildcard_service}.example.com");
        let cases = [
            ("param_deep", param_path.as_str(), "api.example.com"),
            ("wildcard_host", "/v1/items/abc", host.as_str()),
            ("not_found", "/nowhere/at/all", "api.example.com"),
        ];
        for (name, path, host) in cases {
            let request = RequestView {
                method: "GET",
                host: Some(host),
                path,
                query: Some("page=2&sort=desc"),
                headers: &no_headers,
                client_certificate: &loom::router::no_client_certificate,
            };
            if name != "not_found" {
                assert!(
                    matches!(router.match_request(&request), MatchOutcome::Matched(_)),
                    "{name} must match at {count} routes"
                );
            }
            group.bench_with_input(
                BenchmarkId::new(name, count),
                &request,
                |bencher, request| {
                    bencher.iter(|| match router.match_request(black_box(request)) {
                        MatchOutcome::Matched(found) => found.params.len(),
                        MatchOutcome::MethodNotAllowed { allow } => allow.len(),
                        MatchOutcome::NotFound => 0,
                    });
                },
            );
        }
    }
    group.finish();
}

fn bench_normalize(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("normalize_path");
    let cases = [
        ("already_normal", "/api/v1/users/12345/orders/67890"),
        (
            "needs_rewrite",
            "/api/v1//users/./%7Ealice/../12345/orders%2dlist",
        ),
    ];
    for (name, path) in cases {
        group.bench_function(name, |bencher| {
            bencher.iter(|| normalize_path(black_box(path)).map(|normal| normal.len()));
        });
    }
    group.finish();
}

criterion_group!(benches, bench_match, bench_normalize);
criterion_main!(benches);
