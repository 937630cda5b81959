//! A backend whose behaviour tests switch at run time (answer, fail with 503, hang, reset
//! mid-response, answer slowly) and that counts every request it receives, so tests can tell
//! whether the gateway contacted it at all.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    Healthy = 0,
    Fail503 = 1,
    Hang = 2,
    ResetMidResponse = 3,
    Slow = 4,
}

pub struct FaultServer {
    pub port: u16,
    hits: Arc<AtomicU64>,
    /// Every request head received, lower-cased.
    heads: Arc<std::sync::Mutex<Vec<String>>>,
    mode: Arc<AtomicU8>,
    task: tokio::task::JoinHandle<()>,
}

/// How long `Mode::Slow` waits before answering.
pub const SLOW: Duration = Duration::from_millis(150);

impl FaultServer {
    pub async fn start(name: &'static str, mode: Mode) -> FaultServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = Arc::new(AtomicU64::new(0));
        let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mode_cell = Arc::new(AtomicU8::new(mode as u8));
        let (task_hits, task_mode, task_heads) = (hits.clone(), mode_cell.clone(), heads.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (hits, mode, heads) =
                    (task_hits.clone(), task_mode.clone(), task_heads.clone());
                tokio::spawn(serve(stream, name, hits, mode, heads));
            }
        });
        FaultServer {
            port,
            hits,
            heads,
            mode: mode_cell,
            task,
        }
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }

    /// The request heads received so far, lower-cased.
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    pub fn set_mode(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    mut stream: TcpStream,
    name: &str,
    hits: Arc<AtomicU64>,
    mode: Arc<AtomicU8>,
    heads: Arc<std::sync::Mutex<Vec<String>>>,
) {
    let mut buffer = Vec::new();
    loop {
        // Read one request head, then skip its body by Content-Length.
        let head_end = loop {
            if let Some(position) = find(&buffer, b"\r\n\r\n") {
                break position + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(read) => buffer.extend_from_slice(&chunk[..read]),
            }
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).to_ascii_lowercase();
        let body_length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0);
        while buffer.len() < head_end + body_length {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(read) => buffer.extend_from_slice(&chunk[..read]),
            }
        }
        buffer.drain(..head_end + body_length);
        heads.lock().unwrap().push(head.clone());
        hits.fetch_add(1, Ordering::SeqCst);
        let body = format!("{{\"instance\":\"{name}\"}}");
        let answer = |status: &str| {
            format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
        };
        match mode.load(Ordering::SeqCst) {
            1 => {
                if stream
                    .write_all(answer("503 Service Unavailable").as_bytes())
                    .await
                    .is_err()
                {
                    return;
                }
            }
            2 => {
                // Hold the request until the gateway gives up and closes.
                let mut sink = [0u8; 64];
                let _ = stream.read(&mut sink).await;
                return;
            }
            3 => {
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\npartial")
                    .await;
                // A zero linger makes close send RST instead of FIN: the reset we want. (The
                // deprecation is about lingering closes blocking; a zero linger never blocks.)
                #[allow(deprecated)]
                let _ = stream.set_linger(Some(Duration::ZERO));
                return;
            }
            4 => {
                tokio::time::sleep(SLOW).await;
                if stream.write_all(answer("200 OK").as_bytes()).await.is_err() {
                    return;
                }
            }
            _ => {
                if stream.write_all(answer("200 OK").as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}
