//! A throwaway `redis-server` on 127.0.0.1 (Debian's binary) for the shared rate-limit tests:
//! no persistence, so a restarted server starts empty.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::free_port;

pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    /// Redis' working directory: nothing is written with persistence off, but it stays out
    /// of the test's current directory regardless.
    directory: tempfile::TempDir,
}

impl RedisServer {
    /// Starts `redis-server` on a free port and waits until it answers `PING`. A port taken
    /// by a parallel test between `free_port` and Redis' bind makes Redis exit: another port
    /// is tried then.
    pub async fn start() -> RedisServer {
        let directory = tempfile::tempdir().expect("a temporary directory for redis");
        let mut server = RedisServer {
            child: None,
            port: 0,
            directory,
        };
        for _ in 0..4 {
            server.port = free_port();
            server.child = Some(spawn(server.port, server.directory.path()));
            if server.wait_ready().await {
                return server;
            }
            server.kill();
        }
        panic!("redis-server could not bind a port in 4 tries");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port())
    }

    /// SIGKILL, and wait for the process to be gone: its port refuses connections afterwards.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // std's Child::kill is SIGKILL on Unix.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts Redis again on the same port (empty: nothing was persisted) and waits until it
    /// answers `PING`.
    pub async fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.child = Some(spawn(self.port, self.directory.path()));
            if self.wait_ready().await {
                return;
            }
            // Exited at once: the port is not free again yet.
            self.kill();
            assert!(
                Instant::now() < deadline,
                "redis-server could not bind port {} again within 10 s",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// True once Redis answers `+PONG`; false when the process exited first (its port was
    /// taken). Panics after 10 s.
    async fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let Some(child) = self.child.as_mut() else {
                return false;
            };
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            if pong(self.port).await {
                return true;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer PING within 10 s",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn(port: u16, directory: &std::path::Path) -> Child {
    let port_text = port.to_string();
    let result = Command::new("redis-server")
        .args([
            "--port",
            port_text.as_str(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .current_dir(directory)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    match result {
        Ok(child) => child,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => panic!(
            "redis-server is not installed: the shared rate-limit tests need it \
             (Debian package redis-server; .ci/install-deps installs it)"
        ),
        Err(error) => panic!("cannot start redis-server: {error}"),
    }
}

/// One `PING` on a fresh connection; true when the answer is `+PONG` within 500 ms.
async fn pong(port: u16) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_millis(500), ping_once(port)).await,
        Ok(Some(true))
    )
}

/// `None` when the connection fails or closes before a whole reply line.
async fn ping_once(port: u16) -> Option<bool> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    stream.write_all(b"*1\r\n$4\r\nPING\r\n").await.ok()?;
    let mut reply = Vec::new();
    let mut buffer = [0u8; 64];
    while !reply.ends_with(b"\r\n") {
        let read = stream.read(&mut buffer).await.ok()?;
        if read == 0 {
            return None;
        }
        reply.extend_from_slice(&buffer[..read]);
    }
    Some(reply.starts_with(b"+PONG"))
}
