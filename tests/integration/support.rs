//! Test harness: starts the real `loom` binary on ephemeral ports with a config written to
//! a temporary directory, and in-process echo backends, then waits on readiness.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use loom::echo::EchoServer;

pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// A port that was free a moment ago. Pingora cannot report the port it bound for `:0`, so
/// the gateway's ports are picked here and passed in.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("the OS hands out an ephemeral port")
}

/// A port where connections are refused for as long as the returned socket lives: it is bound
/// but never listens, so no other test's server can take the port meanwhile.
pub fn refused_port() -> (u16, tokio::net::TcpSocket) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().unwrap())
        .expect("bind an ephemeral port");
    let port = socket.local_addr().expect("bound address").port();
    (port, socket)
}

pub async fn echo(name: &str) -> EchoServer {
    EchoServer::start(&["127.0.0.1:0".parse().unwrap()], name)
        .await
        .expect("echo server starts")
}

pub async fn echo_on(address: SocketAddr, name: &str) -> EchoServer {
    // The previous server on this port has just closed; the kernel may need a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match EchoServer::start(&[address], name).await {
            Ok(server) => return server,
            Err(error) if Instant::now() < deadline => {
                let _ = error;
                tokio::task::yield_now().await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(error) => panic!("cannot re-bind {address}: {error}"),
        }
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

pub struct GatewayProcess {
    child: Child,
    pub http_port: u16,
    pub admin_port: u16,
    pub extra_ports: Vec<u16>,
    /// Ports reserved as dead endpoints (`@DEAD0@`, `@DEAD1@`): held only so that the
    /// sockets keep them refused until the gateway is dropped.
    _dead_ports: Vec<(u16, tokio::net::TcpSocket)>,
    pub directory: tempfile::TempDir,
    pub config_path: PathBuf,
    log_path: PathBuf,
}

/// The shipped and test plugins, built by `plugins/build.sh`.
pub fn plugin_dist() -> std::path::PathBuf {
    let dist = Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/dist");
    assert!(
        dist.join("loom_headers.wasm").is_file(),
        "{} has no plugins: run plugins/build.sh first",
        dist.display()
    );
    dist
}

/// Fills the placeholders of a config template: `@PLUGINS@` (plugins/dist),
/// `@PLUGIN_CACHE@` (a compiled-module cache shared by the tests), `@HTTP@` (main listener port), `@ADMIN@`,
/// `@PORT0@`..`@PORT3@` (more free ports), `@DEAD0@`/`@DEAD1@` (ports that refuse
/// connections), `@FIXTURES@`, `@DIR@`.
pub fn render(template: &str, http: u16, admin: u16, extra: &[u16], directory: &Path) -> String {
    let mut text = template
        .replace("@HTTP@", &http.to_string())
        .replace("@ADMIN@", &admin.to_string())
        .replace("@FIXTURES@", FIXTURES)
        .replace("@DIR@", &directory.display().to_string())
        .replace("@PLUGINS@", &plugin_dist().display().to_string())
        .replace(
            "@PLUGIN_CACHE@",
            concat!(env!("CARGO_TARGET_TMPDIR"), "/plugin-cache"),
        );
    for (index, port) in extra.iter().enumerate() {
        text = text.replace(&format!("@PORT{index}@"), &port.to_string());
    }
    text
}

/// The `server:` and `admin:` sections every test gateway gets.
pub fn preamble(directory: &Path, admin: u16) -> String {
    preamble_with(directory, admin, "", "")
}

/// [`preamble`] with more `server:` and `admin:` keys (lines indented by two spaces).
pub fn preamble_with(directory: &Path, admin: u16, server_keys: &str, admin_keys: &str) -> String {
    format!(
        "server:\n  threads: 2\n  pid_file: {dir}/loom.pid\n  upgrade_sock: {dir}/upgrade.sock\n{grace}{server_keys}admin:\n  address: \"127.0.0.1:{admin}\"\n{admin_keys}",
        dir = directory.display(),
        // Tests shut down at once unless they set their own grace period.
        grace = if server_keys.contains("grace_period_seconds") {
            ""
        } else {
            "  grace_period_seconds: 0\n  graceful_shutdown_timeout_seconds: 1\n"
        }
    )
}

impl GatewayProcess {
    /// Starts loom with `template` (without `server:`/`admin:`, which are added) and waits
    /// until `/ready` answers 200. Ports picked by `free_port` can be taken by a parallel
    /// test before loom binds them; loom then refuses to start with "cannot bind", and the
    /// start is repeated with new ports.
    pub async fn start(template: &str) -> GatewayProcess {
        Self::start_with_server(template, "").await
    }

    /// [`GatewayProcess::start`] with more `server:` keys (lines indented by two spaces).
    pub async fn start_with_server(template: &str, server_keys: &str) -> GatewayProcess {
        Self::start_with(template, server_keys, "").await
    }

    /// [`GatewayProcess::start`] with more `server:` and `admin:` keys (lines indented by two
    /// spaces).
    pub async fn start_with(template: &str, server_keys: &str, admin_keys: &str) -> GatewayProcess {
        for _ in 0..4 {
            let mut gateway = Self::spawn(template, server_keys, admin_keys);
            match gateway.wait_ready().await {
                Ok(()) => return gateway,
                Err(log) if log.contains("cannot bind") => continue,
                Err(log) => panic!("loom exited early:\n{log}"),
            }
        }
        panic!("loom could not bind its ports in 4 tries");
    }

    fn spawn(template: &str, server_keys: &str, admin_keys: &str) -> GatewayProcess {
        let directory = tempfile::tempdir().unwrap();
        let http_port = free_port();
        let admin_port = free_port();
        let extra_ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
        let dead_ports: Vec<(u16, tokio::net::TcpSocket)> =
            (0..2).map(|_| refused_port()).collect();
        let mut body = render(
            template,
            http_port,
            admin_port,
            &extra_ports,
            directory.path(),
        );
        for (index, (port, _)) in dead_ports.iter().enumerate() {
            body = body.replace(&format!("@DEAD{index}@"), &port.to_string());
        }
        let config_path = directory.path().join("loom.yaml");
        std::fs::write(
            &config_path,
            format!(
                "{}{}",
                preamble_with(directory.path(), admin_port, server_keys, admin_keys),
                body
            ),
        )
        .unwrap();
        let log_path = directory.path().join("loom.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_loom"))
            .arg("-c")
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("loom starts");
        GatewayProcess {
            child,
            http_port,
            admin_port,
            extra_ports,
            _dead_ports: dead_ports,
            directory,
            config_path,
            log_path,
        }
    }

    /// Stops loom (SIGKILL, as a crash would) and starts it again on the same config file,
    /// directory and ports, then waits for `/ready`. Whatever loom wrote next to its config
    /// (the admin API's overlay) stays.
    pub async fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.log_path)
            .unwrap();
        self.child = Command::new(env!("CARGO_BIN_EXE_loom"))
            .arg("-c")
            .arg(&self.config_path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("loom starts");
        if let Err(log) = self.wait_ready().await {
            panic!("loom did not come back after a restart:\n{log}");
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.http_port, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.admin_port, path)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits for `/ready`; `Err` carries the log when loom exited instead.
    async fn wait_ready(&mut self) -> Result<(), String> {
        let client = client();
        // Generous: the first test to load a plugin compiles it (the rest hit the cache).
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("({status})\n{}", self.log()));
            }
            let ready = client.get(self.admin_url("/ready")).send().await;
            // /ready means every listener accepts and health checks ran: nothing else to wait for.
            if let Ok(response) = ready
                && response.status() == 200
            {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "loom not ready in time:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Replaces the config body (placeholders as in `start`) without signalling.
    pub fn write_config(&self, template: &str) -> String {
        let body = render(
            template,
            self.http_port,
            self.admin_port,
            &self.extra_ports,
            self.directory.path(),
        );
        let text = format!(
            "{}{}",
            preamble(self.directory.path(), self.admin_port),
            body
        );
        // Write-and-rename, as editors do, so the gateway never reads a half-written file.
        let temporary = self.directory.path().join("loom.yaml.tmp");
        std::fs::write(&temporary, &text).unwrap();
        std::fs::rename(&temporary, &self.config_path).unwrap();
        text
    }

    /// Waits up to `limit` for the process to exit on its own; true if it did.
    pub async fn wait_exit(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    pub fn send_sighup(&self) {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.pid(), libc::SIGHUP);
        }
    }

    /// GET an admin endpoint and parse its JSON.
    pub async fn admin_json(&self, path: &str) -> serde_json::Value {
        client()
            .get(self.admin_url(path))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn config_hash(&self) -> String {
        let info = self.admin_json("/info").await;
        info["config_hash"]
            .as_str()
            .unwrap_or_else(|| panic!("/info without config_hash: {info}\n{}", self.log()))
            .to_string()
    }

    /// Waits until the gateway serves the config whose text is `text`.
    pub async fn wait_for_config(&self, text: &str) {
        let expected = loom::config::content_hash(text.as_bytes());
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.config_hash().await != expected {
            assert!(
                Instant::now() < deadline,
                "reload not applied:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn metrics(&self) -> String {
        client()
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Value of one sample line of `/metrics`, e.g. `loom_config_reloads_total{result="failure"}`;
    /// `None` when the line is absent.
    pub async fn metric(&self, sample: &str) -> Option<f64> {
        self.metrics()
            .await
            .lines()
            .find_map(|line| line.strip_prefix(sample).map(str::trim))
            .and_then(|value| value.parse().ok())
    }

    /// Sum of the samples of the metric `name` whose labels include every pair of `labels`,
    /// whatever order `/metrics` prints them in (the Prometheus encoder sorts them by name);
    /// `None` when no sample matches.
    pub async fn metric_with(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        sum_samples(&self.metrics().await, name, labels)
    }

    /// Waits (up to `limit`) until [`Self::metric_with`] reaches `at_least`; panics with
    /// `what` otherwise.
    pub async fn wait_for_metric(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        at_least: f64,
        limit: Duration,
        what: &str,
    ) {
        let deadline = Instant::now() + limit;
        while self.metric_with(name, labels).await.unwrap_or(0.0) < at_least {
            assert!(Instant::now() < deadline, "{what}\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl GatewayProcess {
    /// Waits (up to 15 s) until [`Self::metric_with`] reaches `value`, then checks it is
    /// exactly `value`: a count that overshoots fails.
    pub async fn wait_for_metric_exactly(&self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.wait_for_metric(name, labels, value, Duration::from_secs(15), name)
            .await;
        assert_eq!(
            self.metric_with(name, labels).await,
            Some(value),
            "{name} {labels:?}"
        );
    }
}

/// See [`GatewayProcess::metric_with`].
pub fn sum_samples(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut total: Option<f64> = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (sample_name, label_text) = match series.split_once('{') {
            Some((sample_name, rest)) => (sample_name, rest.strip_suffix('}').unwrap_or(rest)),
            None => (series, ""),
        };
        if sample_name != name {
            continue;
        }
        let pairs = parse_labels(label_text);
        let matches = labels.iter().all(|(key, value)| {
            pairs
                .iter()
                .any(|(sample_key, sample_value)| sample_key == key && sample_value == value)
        });
        if matches && let Ok(value) = value.parse::<f64>() {
            *total.get_or_insert(0.0) += value;
        }
    }
    total
}

/// `a="1",b="x\"y"` into pairs, undoing the exposition format's escapes.
fn parse_labels(text: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut end = after.len();
        let mut characters = after.char_indices();
        while let Some((index, character)) = characters.next() {
            match character {
                '\\' => {
                    if let Some((_, escaped)) = characters.next() {
                        value.push(if escaped == 'n' { '\n' } else { escaped });
                    }
                }
                '"' => {
                    end = index + 1;
                    break;
                }
                other => value.push(other),
            }
        }
        pairs.push((key.trim_start_matches(',').trim().to_string(), value));
        rest = &after[end..];
    }
    pairs
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET `url` and parse the echo's JSON answer.
pub async fn get_json(client: &reqwest::Client, url: &str) -> (u16, serde_json::Value) {
    let response = client.get(url).send().await.expect("request is answered");
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(serde_json::Value::Null);
    (status, body)
}

/// Sends raw bytes and returns the raw response (until the server closes or 5 s pass).
pub async fn raw_request(port: u16, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    // The server may close before reading everything (oversized headers); what it answered
    // before closing is still read below.
    let _ = stream.write_all(request).await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response)).await;
    String::from_utf8_lossy(&response).into_owned()
}

/// A gateway config with one HTTP listener and one catch-all route to the upstream `pool`,
/// whose definition (`  - name: pool` ...) is `upstream_yaml`.
pub fn single_route(upstream_yaml: &str) -> String {
    format!(
        r#"listeners:
  - name: http
    address: "127.0.0.1:@HTTP@"
routes:
  - id: all
    path: /*
    upstream: pool
upstreams:
{upstream_yaml}"#
    )
}

/// An `upstreams:` entry named `echo` with one endpoint, indented for a config template.
pub fn echo_upstream(port: u16) -> String {
    format!("  - name: echo\n    endpoints: [\"127.0.0.1:{port}\"]\n")
}

/// `loom -t -c PATH` with `config` written to PATH: the exit code, stdout and stderr.
pub fn check_config_file(path: &Path, config: &str) -> (i32, String, String) {
    std::fs::write(path, config).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_loom"))
        .arg("-t")
        .arg("-c")
        .arg(path)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Requests through the gateway in a loop until stopped (two workers): how many got a 200 and
/// what went wrong for the others. `fresh_connections` opens a new connection per request.
pub struct Traffic {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    completed: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    workers: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Traffic {
    pub fn start(url: String, fresh_connections: bool) -> Traffic {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let completed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let workers = (0..2)
            .map(|_| {
                let (url, stop, completed) = (url.clone(), stop.clone(), completed.clone());
                tokio::spawn(async move {
                    let mut builder = reqwest::Client::builder()
                        .no_proxy()
                        .timeout(Duration::from_secs(20));
                    if fresh_connections {
                        builder = builder.pool_max_idle_per_host(0);
                    }
                    let client = builder.build().unwrap();
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
                })
            })
            .collect();
        Traffic {
            stop,
            completed,
            workers,
        }
    }

    /// Waits until `count` more requests have succeeded.
    pub async fn wait_for(&self, count: usize) {
        use std::sync::atomic::Ordering;
        let target = self.completed.load(Ordering::Relaxed) + count;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.completed.load(Ordering::Relaxed) < target {
            assert!(Instant::now() < deadline, "traffic made no progress");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops the loop: how many succeeded, and the failures.
    pub async fn finish(self) -> (usize, Vec<String>) {
        use std::sync::atomic::Ordering;
        self.stop.store(true, Ordering::Relaxed);
        let mut failures = Vec::new();
        for worker in self.workers {
            failures.extend(worker.await.unwrap());
        }
        (self.completed.load(Ordering::Relaxed), failures)
    }
}
