//! Zero-downtime upgrade: a new `loom -u` takes the listening sockets over from the running
//! process through Pingora's socket handoff while clients keep connecting.

use std::process::{Command, Stdio};
use std::time::Duration;

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
    let traffic = Traffic::start(gateway.url("/during-upgrade"), true);
    traffic.wait_for(20).await;

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
    // Only the new process holds the sockets now; it keeps serving.
    traffic.wait_for(50).await;
    let (served, failures) = traffic.finish().await;
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
        served,
        &failures[..failures.len().min(5)]
    );
}

/// `loom upgrade` with these arguments: exit success, stdout and stderr. Its stderr goes to a
/// file: a new gateway it starts keeps logging there after the command ends.
fn loom_upgrade(log: &std::path::Path, arguments: &[&std::ffi::OsStr]) -> (bool, String, String) {
    let stderr = std::fs::File::create(log).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_loom"))
        .arg("upgrade")
        .args(arguments)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stderr(stderr)
        .output()
        .expect("loom upgrade runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        std::fs::read_to_string(log).unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loom_upgrade_hands_over_only_to_a_process_that_is_ready() {
    let backend = echo("e").await;
    let upstream = format!(
        "  - name: pool\n    endpoints: [\"127.0.0.1:{}\"]\n",
        backend.addresses()[0].port()
    );
    let mut gateway = GatewayProcess::start(&single_route(&upstream)).await;
    let old_pid = gateway.pid();
    let pid_file = gateway.directory.path().join("loom.pid");
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        old_pid.to_string(),
        "the foreground gateway writes its pid file"
    );
    let load = Traffic::start(gateway.url("/during-upgrade"), true);
    load.wait_for(20).await;
    let config = gateway.config_path.clone();

    // A binary that passes `-t` but dies at start: the old process is never asked to hand over.
    let dying = gateway.directory.path().join("dying-loom");
    std::fs::write(
        &dying,
        "#!/bin/sh\ncase \"$*\" in *-t*) exit 0;; esac\necho 'cannot start: broken build' >&2\nexit 3\n",
    )
    .unwrap();
    std::fs::set_permissions(&dying, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let upgrade_log = gateway.directory.path().join("upgrade.log");
    let (succeeded, _, stderr) = loom_upgrade(
        &upgrade_log,
        &[
            "-c".as_ref(),
            config.as_os_str(),
            "--binary".as_ref(),
            dying.as_os_str(),
        ],
    );
    assert!(!succeeded, "{stderr}");
    assert!(stderr.contains("cannot start: broken build"), "{stderr}");
    assert!(stderr.contains("ended before it was ready"), "{stderr}");
    assert!(stderr.contains("keeps serving"), "{stderr}");

    // A config whose plugin does not compile: refused by the new binary's check.
    let plugins = gateway.directory.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::write(plugins.join("broken.wasm"), b"\0asm\x01\0\0\0garbage").unwrap();
    let broken = gateway.directory.path().join("broken.yaml");
    std::fs::write(
        &broken,
        format!(
            "{}plugin_dir: \"{}\"\nplugins:\n  - name: broken\n    path: broken.wasm\n",
            std::fs::read_to_string(&config).unwrap(),
            plugins.display()
        ),
    )
    .unwrap();
    let (succeeded, _, stderr) = loom_upgrade(&upgrade_log, &["-c".as_ref(), broken.as_os_str()]);
    assert!(!succeeded, "{stderr}");
    assert!(
        stderr.contains("the new binary refuses the config"),
        "{stderr}"
    );
    assert!(stderr.contains("broken.wasm"), "{stderr}");

    // The old process served throughout, untouched.
    load.wait_for(20).await;
    // SAFETY: signal 0 only checks that the process exists.
    assert_eq!(
        unsafe { libc::kill(old_pid, 0) },
        0,
        "the old process stopped:\n{}",
        gateway.log()
    );

    // A good upgrade: ready first, then the handoff.
    let (succeeded, stdout, stderr) =
        loom_upgrade(&upgrade_log, &["-c".as_ref(), config.as_os_str()]);
    assert!(succeeded, "{stdout}\n{stderr}\n{}", gateway.log());
    assert!(
        stdout.contains(&format!("pid {old_pid} handed over")),
        "{stdout}"
    );
    assert!(
        gateway.wait_exit(Duration::from_secs(30)).await,
        "the old process did not exit after the handoff:\n{}",
        gateway.log()
    );
    load.wait_for(50).await;
    let new_pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_ne!(new_pid, old_pid);
    let (served, failures) = load.finish().await;
    // SAFETY: kill(2) on the gateway this test started through `loom upgrade`.
    unsafe {
        libc::kill(new_pid, libc::SIGTERM);
    }
    // The same Pingora limitation as above: at most a connection or two accepted just before
    // the old process began its shutdown.
    assert!(
        failures.len() <= 2,
        "{} failed requests of {served}: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
}
