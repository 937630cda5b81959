//! Hot reload: SIGHUP and file watching, rejected configs, and no failed request while
//! reloading under load.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::support::*;

/// `watch` turns file polling on; the SIGHUP tests turn it off so that only the signal can
/// have applied a change.
fn two_routes(a: u16, b: u16, second_path: &str, weight_b: u32, watch: bool) -> String {
    format!(
        r#"listeners:
  - name: http
    address: "127.0.0.1:@HTTP@"
reload:
  watch: {watch}
  interval: 50ms
routes:
  - id: first
    path: /first/*
    upstream: pool
  - id: second
    path: {second_path}
    upstream: pool
upstreams:
  - name: pool
    load_balancer: weighted
    endpoints:
      - {{address: "127.0.0.1:{a}", weight: 1}}
      - {{address: "127.0.0.1:{b}", weight: {weight_b}}}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_valid_changes_and_rejects_invalid_ones() {
    let (a, b) = (echo("a").await, echo("b").await);
    let (a_port, b_port) = (a.addresses()[0].port(), b.addresses()[0].port());
    let gateway = GatewayProcess::start(&two_routes(a_port, b_port, "/old", 1, false)).await;
    let client = client();
    assert_eq!(get_json(&client, &gateway.url("/old")).await.0, 200);
    assert_eq!(get_json(&client, &gateway.url("/new")).await.0, 404);

    let text = gateway.write_config(&two_routes(a_port, b_port, "/new", 1, false));
    gateway.send_sighup();
    gateway.wait_for_config(&text).await;
    assert_eq!(get_json(&client, &gateway.url("/new")).await.0, 200);
    assert_eq!(get_json(&client, &gateway.url("/old")).await.0, 404);

    // An invalid file (unknown upstream, unknown key) is rejected; the old routes still serve.
    let failures_before = gateway
        .metric("loom_config_reloads_total{result=\"failure\"}")
        .await;
    let broken = two_routes(a_port, b_port, "/broken", 1, false).replace(
        "upstream: pool\n  - id: second",
        "upstream: missing\n    colour: red\n  - id: second",
    );
    let broken_text = gateway.write_config(&broken);
    gateway.send_sighup();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while gateway
        .metric("loom_config_reloads_total{result=\"failure\"}")
        .await
        <= failures_before
    {
        assert!(
            std::time::Instant::now() < deadline,
            "rejection not counted:\n{}",
            gateway.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_ne!(
        gateway.config_hash().await,
        loom::config::content_hash(broken_text.as_bytes())
    );
    assert_eq!(get_json(&client, &gateway.url("/new")).await.0, 200);
    assert_eq!(get_json(&client, &gateway.url("/first/x")).await.0, 200);
    let log = gateway.log();
    assert!(
        log.contains("routes[0].upstream: unknown upstream \"missing\""),
        "{log}"
    );
    assert!(log.contains("routes[0].colour"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_watch_follows_renames_and_symlink_swaps() {
    let (a, b) = (echo("a").await, echo("b").await);
    let (a_port, b_port) = (a.addresses()[0].port(), b.addresses()[0].port());
    let gateway = GatewayProcess::start(&two_routes(a_port, b_port, "/one", 1, true)).await;
    let client = client();

    // Editor-style write-and-rename, no signal.
    let text = gateway.write_config(&two_routes(a_port, b_port, "/two", 1, true));
    gateway.wait_for_config(&text).await;
    assert_eq!(get_json(&client, &gateway.url("/two")).await.0, 200);

    // Kubernetes-style: the config path is a symlink whose target directory is swapped.
    let directory = gateway.directory.path();
    let version_one = directory.join("v1");
    std::fs::create_dir(&version_one).unwrap();
    let text_three = format!(
        "{}{}",
        preamble(directory, gateway.admin_port),
        render(
            &two_routes(a_port, b_port, "/three", 1, true),
            gateway.http_port,
            gateway.admin_port,
            &gateway.extra_ports,
            directory
        )
    );
    std::fs::write(version_one.join("loom.yaml"), &text_three).unwrap();
    std::os::unix::fs::symlink(&version_one, directory.join("data.tmp")).unwrap();
    std::fs::rename(directory.join("data.tmp"), directory.join("data")).unwrap();
    std::os::unix::fs::symlink(directory.join("data/loom.yaml"), directory.join("link.tmp"))
        .unwrap();
    std::fs::rename(directory.join("link.tmp"), &gateway.config_path).unwrap();
    gateway.wait_for_config(&text_three).await;
    assert_eq!(get_json(&client, &gateway.url("/three")).await.0, 200);

    let version_two = directory.join("v2");
    std::fs::create_dir(&version_two).unwrap();
    let text_four = text_three.replace("/three", "/four");
    std::fs::write(version_two.join("loom.yaml"), &text_four).unwrap();
    std::os::unix::fs::symlink(&version_two, directory.join("data.tmp")).unwrap();
    std::fs::rename(directory.join("data.tmp"), directory.join("data")).unwrap();
    gateway.wait_for_config(&text_four).await;
    assert_eq!(get_json(&client, &gateway.url("/four")).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_failed_request_while_reloading_under_load() {
    let (a, b) = (echo("a").await, echo("b").await);
    let (a_port, b_port) = (a.addresses()[0].port(), b.addresses()[0].port());
    let gateway =
        Arc::new(GatewayProcess::start(&two_routes(a_port, b_port, "/stable", 1, false)).await);
    let stop = Arc::new(AtomicBool::new(false));
    let completed = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for worker in 0..4 {
        let (gateway, stop, completed) = (gateway.clone(), stop.clone(), completed.clone());
        workers.push(tokio::spawn(async move {
            let client = client();
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let url = gateway.url(&format!("/first/worker-{worker}"));
                match client.post(url).body("payload").send().await {
                    Ok(response) if response.status() == 200 => {
                        completed.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(response) => failures.push(format!("status {}", response.status())),
                    Err(error) => failures.push(error.to_string()),
                }
            }
            failures
        }));
    }
    // Alternate weights (a changed upstream means a new pool) and routes: at least ten
    // reloads, and on until enough requests overlapped them.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut round = 0u32;
    while round < 10 || completed.load(Ordering::Relaxed) < 500 {
        let text = gateway.write_config(&two_routes(
            a_port,
            b_port,
            &format!("/stable{round}"),
            round % 3 + 1,
            false,
        ));
        gateway.send_sighup();
        gateway.wait_for_config(&text).await;
        round += 1;
        assert!(
            std::time::Instant::now() < deadline,
            "load made no progress"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for worker in workers {
        failures.extend(worker.await.unwrap());
    }
    let completed = completed.load(Ordering::Relaxed);
    assert!(
        failures.is_empty(),
        "{} failed requests: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        completed >= 500,
        "only {completed} requests completed during {round} reloads"
    );
}
