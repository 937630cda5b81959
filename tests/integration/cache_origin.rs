//! An origin for cache tests: each answer is shaped by the request's query
//! (`cc=` Cache-Control, `vary=` Vary, `cookie=1` a Set-Cookie, `delay=` milliseconds before
//! answering), its body names how many requests for that path it has served and the
//! request's `Accept-Language`, and a switch makes every answer a 503.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct CacheOrigin {
    pub port: u16,
    state: Arc<OriginState>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct OriginState {
    /// Requests served, by path (without the query).
    hits: Mutex<HashMap<String, u64>>,
    failing: AtomicBool,
}

impl CacheOrigin {
    pub async fn start() -> CacheOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(OriginState::default());
        let accept_state = Arc::clone(&state);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, Arc::clone(&accept_state)));
            }
        });
        CacheOrigin { port, state, task }
    }

    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Requests served for `path` so far.
    pub fn hits(&self, path: &str) -> u64 {
        self.state
            .hits
            .lock()
            .unwrap()
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    /// Every answer a 503 from now on (or not).
    pub fn set_failing(&self, failing: bool) {
        self.state.failing.store(failing, Ordering::SeqCst);
    }
}

impl Drop for CacheOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut stream: TcpStream, state: Arc<OriginState>) {
    let mut buffer = Vec::new();
    loop {
        let head_end = loop {
            if let Some(position) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
                break position + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(read) => buffer.extend_from_slice(&chunk[..read]),
            }
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
        buffer.drain(..head_end);
        let target = head.split_whitespace().nth(1).unwrap_or("/").to_string();
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let parameter = |name: &str| {
            query.split('&').find_map(|pair| {
                let (key, value) = pair.split_once('=')?;
                (key == name).then(|| {
                    percent_encoding::percent_decode_str(value)
                        .decode_utf8_lossy()
                        .into_owned()
                })
            })
        };
        let language = head
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("accept-language")
                    .then(|| value.trim().to_string())
            })
            .unwrap_or_default();
        let served = {
            let mut hits = state.hits.lock().unwrap();
            let count = hits.entry(path.to_string()).or_insert(0);
            *count += 1;
            *count
        };
        if let Some(delay) = parameter("delay").and_then(|value| value.parse().ok()) {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let failing = state.failing.load(Ordering::SeqCst);
        let body = format!("{{\"served\":{served},\"language\":\"{language}\"}}");
        let mut answer = format!(
            "HTTP/1.1 {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
            if failing {
                "503 Service Unavailable"
            } else {
                "200 OK"
            },
            body.len()
        );
        if !failing {
            if let Some(cache_control) = parameter("cc") {
                answer.push_str(&format!("cache-control: {cache_control}\r\n"));
            }
            if let Some(vary) = parameter("vary") {
                answer.push_str(&format!("vary: {vary}\r\n"));
            }
            if parameter("cookie").is_some() {
                answer.push_str("set-cookie: session=abc\r\n");
            }
        }
        answer.push_str("\r\n");
        answer.push_str(&body);
        if stream.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}
