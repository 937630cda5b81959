//! The response cache and request coalescing (issue 17): the real gateway in front of an
//! origin that counts what reaches it.

use std::time::{Duration, Instant};

use crate::cache_origin::CacheOrigin;
use crate::support::{GatewayProcess, client};

/// Route `cached` (`/c/*`) caches per the top-level `cache:` (`cache_keys`, indented as its
/// keys); route `plain` (`/p/*`) has `disable: [cache]`; route `joined` (`/j/*`) coalesces.
fn config(origin: &str, cache_keys: &str) -> String {
    format!(
        "listeners:\n  - name: http\n    address: \"127.0.0.1:@HTTP@\"\n\
         upstreams:\n  - name: origin\n    endpoints: [\"{origin}\"]\n\
         cache:\n  enabled: true\n{cache_keys}\
         routes:\n  - id: cached\n    path: /c/*\n    upstream: origin\n\
         \x20 - id: plain\n    path: /p/*\n    upstream: origin\n    disable: [cache]\n\
         \x20 - id: joined\n    path: /j/*\n    upstream: origin\n    disable: [cache]\n\
         \x20   coalesce:\n      enabled: true\n      headers: [X-Tenant]\n"
    )
}

/// Sends a GET with `headers`; the status, `X-Cache` and body.
async fn get(
    client: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
) -> (u16, Option<String>, String) {
    let mut request = client.get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("the gateway answers");
    let status = response.status().as_u16();
    let cache = response
        .headers()
        .get("x-cache")
        .and_then(|value| value.to_str().ok())
        .map(str::to_string);
    (status, cache, response.text().await.unwrap())
}

fn cache_of(answer: &(u16, Option<String>, String)) -> &str {
    answer.1.as_deref().unwrap_or("none")
}

#[tokio::test]
async fn hits_misses_bypass_vary_and_what_is_never_stored() {
    let origin = CacheOrigin::start().await;
    let gateway = GatewayProcess::start(&config(
        &origin.endpoint(),
        "  default_ttl: 60s\n  bypass_header: X-Cache-Bypass\n  excluded_paths: [\"/c/live/*\"]\n",
    ))
    .await;
    let client = client();
    let url = gateway.url("/c/item");

    let first = get(&client, &url, &[]).await;
    assert_eq!((first.0, cache_of(&first)), (200, "MISS"));
    let second = get(&client, &url, &[]).await;
    assert_eq!((second.0, cache_of(&second)), (200, "HIT"));
    assert_eq!(second.2, first.2, "the stored answer");
    assert_eq!(origin.hits("/c/item"), 1);

    // The bypass header, a POST and credentials skip the cache.
    let bypassed = get(&client, &url, &[("x-cache-bypass", "1")]).await;
    assert_eq!(cache_of(&bypassed), "BYPASS");
    let posted = client.post(&url).send().await.unwrap();
    assert_eq!(posted.headers()["x-cache"], "BYPASS");
    let authorized = get(&client, &url, &[("authorization", "Bearer t")]).await;
    assert_eq!(cache_of(&authorized), "BYPASS");
    assert_eq!(origin.hits("/c/item"), 4);

    // Excluded paths and routes that switch the cache off say nothing and always go through.
    for path in ["/c/live/feed", "/p/item"] {
        for _ in 0..2 {
            let answer = get(&client, &gateway.url(path), &[]).await;
            assert_eq!(cache_of(&answer), "none");
        }
        assert_eq!(origin.hits(path), 2);
    }

    // The origin's own directives win over default_ttl; Set-Cookie is never stored.
    for (query, stored) in [
        ("cc=no-store", false),
        ("cc=private", false),
        ("cookie=1", false),
        ("cc=max-age%3D30", true),
    ] {
        let path = format!("/c/directive-{}", query.len());
        let url = gateway.url(&format!("{path}?{query}"));
        get(&client, &url, &[]).await;
        let again = get(&client, &url, &[]).await;
        assert_eq!(cache_of(&again) == "HIT", stored, "{query}");
        assert_eq!(origin.hits(&path), if stored { 1 } else { 2 }, "{query}");
    }

    // Vary: one stored answer per Accept-Language.
    let url = gateway.url("/c/greeting?vary=Accept-Language");
    for language in ["en", "fr", "en", "fr"] {
        let answer = get(&client, &url, &[("accept-language", language)]).await;
        assert!(
            answer.2.contains(&format!("\"language\":\"{language}\"")),
            "{answer:?}"
        );
    }
    assert_eq!(origin.hits("/c/greeting"), 2);

    let hits = gateway
        .metric_with(
            "loom_cache_requests_total",
            &[("route", "cached"), ("result", "hit")],
        )
        .await
        .unwrap_or(0.0);
    assert!(hits >= 4.0, "{hits}");
    assert!(gateway.metric("loom_cache_size_bytes").await.unwrap_or(0.0) > 0.0);
    let stats = gateway.admin_json("/cache").await;
    assert!(stats["entries"].as_u64().unwrap() >= 3, "{stats}");
}

#[tokio::test]
async fn fifty_concurrent_misses_on_a_slow_origin_fetch_once() {
    let origin = CacheOrigin::start().await;
    let gateway = GatewayProcess::start(&config(&origin.endpoint(), "  default_ttl: 60s\n")).await;
    let client = client();
    let url = gateway.url("/c/slow?delay=400");
    let requests = (0..50).map(|_| {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move { get(&client, &url, &[]).await })
    });
    let answers = futures_util::future::join_all(requests).await;
    let bodies: std::collections::HashSet<String> = answers
        .into_iter()
        .map(|answer| {
            let answer = answer.unwrap();
            assert_eq!(answer.0, 200);
            answer.2
        })
        .collect();
    assert_eq!(origin.hits("/c/slow"), 1);
    assert_eq!(bodies.len(), 1, "{bodies:?}");
}

#[tokio::test]
async fn stale_answers_while_revalidating_and_when_the_origin_fails() {
    let origin = CacheOrigin::start().await;
    let gateway = GatewayProcess::start(&config(&origin.endpoint(), "")).await;
    let client = client();

    // stale-while-revalidate: the expired answer at once, refreshed behind it.
    let url = gateway.url("/c/swr?cc=max-age%3D1%2C%20stale-while-revalidate%3D60");
    assert_eq!(cache_of(&get(&client, &url, &[]).await), "MISS");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let stale = get(&client, &url, &[]).await;
    assert_eq!(cache_of(&stale), "STALE");
    assert!(stale.2.contains("\"served\":1"), "{stale:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while origin.hits("/c/swr") < 2 {
        assert!(Instant::now() < deadline, "no background refresh");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The origin has answered the refresh; storing its answer follows a moment later.
    let refreshed = loop {
        let answer = get(&client, &url, &[]).await;
        if cache_of(&answer) == "HIT" || Instant::now() >= deadline {
            break answer;
        }
        assert_eq!(cache_of(&answer), "STALE", "{answer:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(cache_of(&refreshed), "HIT");
    assert!(refreshed.2.contains("\"served\":2"), "{refreshed:?}");

    // stale-if-error: the origin fails, the expired answer is served instead of the 503.
    let url = gateway.url("/c/sie?cc=max-age%3D1%2C%20stale-if-error%3D60");
    assert_eq!(get(&client, &url, &[]).await.0, 200);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    origin.set_failing(true);
    let answer = get(&client, &url, &[]).await;
    assert_eq!((answer.0, cache_of(&answer)), (200, "STALE"), "{answer:?}");
    assert_eq!(origin.hits("/c/sie"), 2, "the origin was asked first");
    // Without a stale-if-error window the failure goes through.
    let url = gateway.url("/c/strict?cc=max-age%3D1");
    origin.set_failing(false);
    get(&client, &url, &[]).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    origin.set_failing(true);
    assert_eq!(get(&client, &url, &[]).await.0, 503);
}

#[tokio::test]
async fn purge_by_method_and_by_admin_prefix() {
    let origin = CacheOrigin::start().await;
    let gateway = GatewayProcess::start(&config(
        &origin.endpoint(),
        "  default_ttl: 60s\n  purge_allowed: [\"127.0.0.1/32\"]\n",
    ))
    .await;
    let client = client();
    for path in ["/c/a/1", "/c/a/2", "/c/b/1"] {
        get(&client, &gateway.url(path), &[]).await;
        assert_eq!(
            cache_of(&get(&client, &gateway.url(path), &[]).await),
            "HIT"
        );
    }
    let purge = reqwest::Method::from_bytes(b"PURGE").unwrap();
    let purged = client
        .request(purge.clone(), gateway.url("/c/b/1"))
        .send()
        .await
        .unwrap();
    assert_eq!(purged.status(), 200);
    let again = client
        .request(purge, gateway.url("/c/b/1"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 404, "nothing left to purge");
    assert_eq!(
        cache_of(&get(&client, &gateway.url("/c/b/1"), &[]).await),
        "MISS"
    );

    let response = client
        .delete(gateway.admin_url("/cache?prefix=/c/a/"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["purged"], 2);
    for path in ["/c/a/1", "/c/a/2"] {
        assert_eq!(
            cache_of(&get(&client, &gateway.url(path), &[]).await),
            "MISS"
        );
    }
    assert_eq!(
        cache_of(&get(&client, &gateway.url("/c/b/1"), &[]).await),
        "HIT"
    );
}

#[tokio::test]
async fn purge_is_refused_from_addresses_not_allowed() {
    let origin = CacheOrigin::start().await;
    let gateway = GatewayProcess::start(&config(&origin.endpoint(), "  default_ttl: 60s\n")).await;
    let client = client();
    get(&client, &gateway.url("/c/x"), &[]).await;
    let purge = reqwest::Method::from_bytes(b"PURGE").unwrap();
    let refused = client
        .request(purge, gateway.url("/c/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    assert_eq!(
        cache_of(&get(&client, &gateway.url("/c/x"), &[]).await),
        "HIT"
    );
    assert_eq!(
        origin.hits("/c/x"),
        1,
        "a refused PURGE never reaches the origin"
    );
}

#[tokio::test]
async fn identical_requests_in_flight_share_one_upstream_request() {
    let origin = CacheOrigin::start().await;
    let gateway = GatewayProcess::start(&config(&origin.endpoint(), "")).await;
    let client = client();
    // Uncacheable answers: coalescing shares them with the requests in flight only.
    let url = gateway.url("/j/report?delay=400&cc=no-store");
    let requests = (0..50).map(|index| {
        let (client, url) = (client.clone(), url.clone());
        // Two tenants: each is its own group.
        let tenant = if index % 2 == 0 { "a" } else { "b" };
        tokio::spawn(async move { get(&client, &url, &[("x-tenant", tenant)]).await })
    });
    for answer in futures_util::future::join_all(requests).await {
        let answer = answer.unwrap();
        assert_eq!(answer.0, 200, "{answer:?}");
        assert_eq!(cache_of(&answer), "none", "coalescing is not a cache");
    }
    assert_eq!(origin.hits("/j/report"), 2, "one request per tenant");
    // A later request is not answered from the earlier one.
    let later = get(&client, &url, &[("x-tenant", "a")]).await;
    assert!(later.2.contains("\"served\":3"), "{later:?}");
    let coalesced = gateway
        .metric_with("loom_coalesced_requests_total", &[("route", "joined")])
        .await
        .unwrap_or(0.0);
    assert_eq!(coalesced, 48.0);

    // A shared request that fails fails for each request as it would have alone.
    origin.set_failing(true);
    let url = gateway.url("/j/failing?delay=300");
    let requests = (0..10).map(|_| {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move { get(&client, &url, &[]).await })
    });
    for answer in futures_util::future::join_all(requests).await {
        assert_eq!(answer.unwrap().0, 503);
    }
}

#[tokio::test]
async fn the_disk_store_keeps_answers_across_a_restart() {
    let origin = CacheOrigin::start().await;
    let mut gateway = GatewayProcess::start(&config(
        &origin.endpoint(),
        "  default_ttl: 60s\n  max_size: 10MB\n  disk_path: @DIR@/cache\n",
    ))
    .await;
    let client = client();
    let url = gateway.url("/c/kept?vary=Accept-Language");
    let first = get(&client, &url, &[("accept-language", "de")]).await;
    assert_eq!(cache_of(&first), "MISS");
    assert_eq!(
        cache_of(&get(&client, &url, &[("accept-language", "de")]).await),
        "HIT"
    );
    let files = std::fs::read_dir(gateway.directory.path().join("cache"))
        .unwrap()
        .filter(|entry| {
            entry
                .as_ref()
                .is_ok_and(|entry| entry.path().extension().is_some_and(|ext| ext == "entry"))
        })
        .count();
    assert!(files >= 1, "answers are files");
    gateway.restart().await;
    let after = get(&client, &url, &[("accept-language", "de")]).await;
    assert_eq!(cache_of(&after), "HIT");
    assert_eq!(after.2, first.2);
    assert_eq!(origin.hits("/c/kept"), 1);
    let stats = gateway.admin_json("/cache").await;
    assert!(stats["entries"].as_u64().unwrap() >= 1, "{stats}");
}

#[tokio::test]
async fn without_a_cache_purge_is_proxied_like_any_method() {
    let backend = crate::fault::FaultServer::start("purger", crate::fault::Mode::Healthy).await;
    let gateway = GatewayProcess::start(&format!(
        "listeners:\n  - name: http\n    address: \"127.0.0.1:@HTTP@\"\n\
         upstreams:\n  - name: varnish\n    endpoints: [\"{}\"]\n\
         routes:\n  - id: all\n    path: /*\n    upstream: varnish\n",
        backend.endpoint()
    ))
    .await;
    let purge = reqwest::Method::from_bytes(b"PURGE").unwrap();
    let response = client()
        .request(purge, gateway.url("/page"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        backend.heads()[0].starts_with("purge /page "),
        "{:?}",
        backend.heads()
    );
}

/// One URL, two routes told apart by a header, and a route with key_auth: an answer stored
/// for one route or one consumer is never served to another.
#[tokio::test]
async fn answers_are_kept_apart_by_route_and_by_consumer() {
    let origin = CacheOrigin::start().await;
    let endpoint = origin.endpoint();
    let gateway = GatewayProcess::start(&format!(
        "listeners:\n  - name: http\n    address: \"127.0.0.1:@HTTP@\"\n\
         upstreams:\n  - name: origin\n    endpoints: [\"{endpoint}\"]\n\
         cache:\n  enabled: true\n  default_ttl: 60s\n\
         plugins:\n  - name: keys\n    type: key_auth\n    config:\n      keys:\n\
         \x20       - {{consumer: alice, key: alice-key-0123}}\n\
         \x20       - {{consumer: bob, key: bob-key-4567}}\n\
         routes:\n  - id: tenant-a\n    path: /s/*\n    headers: {{x-tenant: a}}\n    upstream: origin\n\
         \x20 - id: everyone\n    path: /s/*\n    upstream: origin\n\
         \x20 - id: keyed\n    path: /k/*\n    upstream: origin\n    plugins: [keys]\n"
    ))
    .await;
    let client = client();
    let url = gateway.url("/s/item");

    let tenant = [("x-tenant", "a")];
    assert_eq!(cache_of(&get(&client, &url, &tenant).await), "MISS");
    assert_eq!(cache_of(&get(&client, &url, &tenant).await), "HIT");
    // The same URL through the other route: its own answer, not tenant a's.
    assert_eq!(cache_of(&get(&client, &url, &[]).await), "MISS");
    assert_eq!(cache_of(&get(&client, &url, &[]).await), "HIT");
    assert_eq!(origin.hits("/s/item"), 2);

    let url = gateway.url("/k/item");
    let alice = [("x-api-key", "alice-key-0123")];
    let bob = [("x-api-key", "bob-key-4567")];
    assert_eq!(cache_of(&get(&client, &url, &alice).await), "MISS");
    assert_eq!(cache_of(&get(&client, &url, &alice).await), "HIT");
    assert_eq!(cache_of(&get(&client, &url, &bob).await), "MISS");
    assert_eq!(cache_of(&get(&client, &url, &bob).await), "HIT");
    assert_eq!(origin.hits("/k/item"), 2);
    // Without a key the request never reaches the cache.
    assert_eq!(get(&client, &url, &[]).await.0, 401);
}
