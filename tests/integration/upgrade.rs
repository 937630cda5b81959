//! Zero-downtime upgrade: a new `loom -u` takes the listening sockets over from the running
//! process through Pingora's socket handoff while clients keep connecting.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_hands_the_sockets_over_without_refusing_a_connection() {
    let backend = echo("e").await;
    let mut gateway = GatewayProcess::start(&single_route(&format!(
        "  - name: pool
    endpoints: [\"127.0.0.1:{}\"]
",
        backend.addresses()[0].port()
    )))
    .await;

    // New connection per request: the point is that the listening socket never refuses
    // (keep-alive connections to the old process close as it drains, which is HTTP's concern).
    let stop = Arc::new(AtomicBool::new(false));
    let completed = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..2 {
        let (url, stop, completed) = (
            gateway.url("/during-upgrade"),
            stop.clone(),
            completed.clone(),
        );
        workers.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .no_proxy()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap();
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match client.get(&url).send().await {
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

    let new_log = std::fs::File::create(gateway.directory.path().join("new.log")).unwrap();
    let mut new_process = Command::new(env!("CARGO_BIN_EXE_loom"))
        .arg("-u")
        .arg("-c")
        .arg(&gateway.config_path)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(new_log)
        .spawn()
        .expect("new loom starts");
    // The old process hands its sockets over on SIGQUIT (both sides retry for a few seconds),
    // then drains and exits.
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe {
        libc::kill(gateway.pid(), libc::SIGQUIT);
    }
    let old_exit = gateway.wait_exit(Duration::from_secs(30)).await;
    assert!(
        old_exit,
        "the old process did not exit after the handoff:\n{}",
        gateway.log()
    );
    let served_before = completed.load(Ordering::Relaxed);
    // Only the new process holds the sockets now; it keeps serving.
    let deadline = Instant::now() + Duration::from_secs(10);
    while completed.load(Ordering::Relaxed) < served_before + 50 {
        assert!(
            Instant::now() < deadline,
            "the new process is not serving:\n{}",
            std::fs::read_to_string(gateway.directory.path().join("new.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for worker in workers {
        failures.extend(worker.await.unwrap());
    }
    let _ = new_process.kill();
    let _ = new_process.wait();
    // Known Pingora limitation: when the old process starts its graceful shutdown, a
    // connection it accepted a moment earlier but whose request has not arrived yet is
    // dropped (`handle_new_request` gives up on shutdown). Measured: at most one such failure
    // in a few thousand new connections per handoff; the listening socket itself never
    // refuses. The bound keeps the test able to fail on a real regression (refused
    // connections, a new process that never serves).
    assert!(
        failures.len() <= 2,
        "{} failed requests during the upgrade out of {}: {:?}",
        failures.len(),
        completed.load(Ordering::Relaxed),
        &failures[..failures.len().min(5)]
    );
    assert!(served_before > 0);
}
