//! One Loom stream from hello to end, the same for raw QUIC and HTTP/3: read and check the
//! hello, authorise, join the room, then run the producer or consumer side. Rejections are
//! what clients expect (raw QUIC: our side ends with no bytes written; HTTP/3: 400/401), plus
//! STOP_SENDING so a rejected producer's writes fail instead of blocking on flow control.

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

use super::auth;
use super::codes;
use super::io::StreamWriter;
use super::metrics::StreamMetrics;
use super::reader::{FrameReader, ReadError};
use super::room::Rooms;
use super::tracker::ErrorTracker;
use super::wire::{Role, WireError};
use super::{consumer, producer};
use crate::config::stream::StreamPlan;

/// A client that opens a stream must send its hello within this time.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Quic,
    H3,
}

impl Transport {
    pub fn label(self) -> &'static str {
        match self {
            Transport::Quic => "quic",
            Transport::H3 => "h3",
        }
    }
}

/// What every stream of the service shares.
pub struct StreamShared {
    pub settings: arc_swap::ArcSwap<StreamPlan>,
    pub rooms: Rooms,
    pub metrics: Arc<StreamMetrics>,
    pub errors: ErrorTracker,
}

/// Who is on the other end of a connection.
pub struct Peer {
    pub address: std::net::IpAddr,
    /// The client certificate's subject CN, for `mtls` grants.
    pub certificate_name: Option<String>,
    /// The rooms this connection's streams joined, to name them when the connection fails.
    /// Written once per stream, read once when the connection ends.
    pub rooms: std::sync::Mutex<Vec<String>>,
}

/// A connection names at most this many rooms in its failure log line.
const ROOMS_NAMED: usize = 8;

impl Peer {
    fn joined(&self, room: &str) {
        let Ok(mut rooms) = self.rooms.lock() else {
            return;
        };
        if rooms.len() < ROOMS_NAMED && !rooms.iter().any(|name| name == room) {
            rooms.push(room.to_string());
        }
    }

    /// The rooms joined, for a log line: `"a", "b"` or `none`.
    pub fn rooms_joined(&self) -> String {
        let rooms = self
            .rooms
            .lock()
            .map(|rooms| rooms.clone())
            .unwrap_or_default();
        if rooms.is_empty() {
            return "none".to_string();
        }
        rooms
            .iter()
            .map(|room| format!("\"{room}\""))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl StreamShared {
    pub fn new(plan: StreamPlan, metrics: Arc<StreamMetrics>) -> StreamShared {
        StreamShared {
            settings: arc_swap::ArcSwap::from_pointee(plan),
            rooms: Rooms::new(Arc::clone(&metrics)),
            metrics,
            errors: ErrorTracker::default(),
        }
    }

    /// Applies a reloaded config to new streams; running streams keep the one they began with.
    pub fn apply(&self, next: StreamPlan) {
        let current = self.settings.load();
        let fixed = current.restart_required_differences(&next);
        if !fixed.is_empty() {
            log::warn!(
                "stream: {} changed; that takes a restart, the rest of the reload applies",
                fixed.join(", ")
            );
        }
        self.settings.store(Arc::new(next));
    }
}

/// The settings one stream runs with (taken when it starts) and where to count.
pub struct SessionContext {
    pub settings: Arc<StreamPlan>,
    pub metrics: Arc<StreamMetrics>,
    pub transport: Transport,
}

enum Rejection {
    Hello(WireError),
    Unauthorized,
    RoomFull,
    /// loomd's error tracker: too many protocol errors from this client in this room.
    Blocked,
}

impl Rejection {
    fn status(&self) -> StatusCode {
        match self {
            Rejection::Hello(_) => StatusCode::BAD_REQUEST,
            Rejection::Unauthorized => StatusCode::UNAUTHORIZED,
            Rejection::RoomFull => StatusCode::SERVICE_UNAVAILABLE,
            Rejection::Blocked => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            Rejection::Hello(error) => error.kind(),
            Rejection::Unauthorized => "unauthorized",
            Rejection::RoomFull => "room_full",
            Rejection::Blocked => "blocked",
        }
    }
}

pub async fn run(
    shared: &StreamShared,
    transport: Transport,
    mut reader: FrameReader,
    mut writer: StreamWriter,
    peer: &Peer,
) {
    let context = SessionContext {
        settings: shared.settings.load_full(),
        metrics: Arc::clone(&shared.metrics),
        transport,
    };
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, reader.hello()).await {
        Ok(Ok(hello)) => hello,
        Ok(Err(ReadError::Wire(error))) => {
            return reject(&context, reader, writer, Rejection::Hello(error)).await;
        }
        Ok(Err(ReadError::Transport(_))) => return,
        Err(_) => {
            let error = WireError::Truncated("the hello");
            return reject(&context, reader, writer, Rejection::Hello(error)).await;
        }
    };
    let raw_room = String::from_utf8_lossy(&hello.room);
    let room_name = if raw_room.is_empty() {
        "default"
    } else {
        raw_room.as_ref()
    };
    let principal = match auth::authorize(
        &context.settings.auth,
        hello.role,
        &raw_room,
        room_name,
        &hello.token,
        peer.certificate_name.as_deref(),
    ) {
        Ok(principal) => principal,
        Err(error) => {
            log::info!(
                "stream: {} {} refused in room \"{room_name}\": {error}",
                transport.label(),
                hello.role.label()
            );
            return reject(&context, reader, writer, Rejection::Unauthorized).await;
        }
    };
    let router = &context.settings.router;
    if hello.role == Role::Producer
        && shared.errors.is_blocked(
            room_name,
            peer.address,
            router.max_protocol_errors,
            router.protocol_error_window,
        )
    {
        context
            .metrics
            .blocked_producers
            .with_label_values(&[room_name])
            .inc();
        return reject(&context, reader, writer, Rejection::Blocked).await;
    }
    let room_key = if hello.room.is_empty() {
        bytes::Bytes::from_static(b"default")
    } else {
        hello.room.clone()
    };
    let Ok(membership) = shared.rooms.join(
        &room_key,
        router.room_policy(room_name),
        router.max_streams_per_room,
    ) else {
        return reject(&context, reader, writer, Rejection::RoomFull).await;
    };
    let room = &membership.room;
    peer.joined(&room.name);
    let gauge = context.metrics.streams.with_label_values(&[
        transport.label(),
        hello.role.label(),
        room.name.as_str(),
    ]);
    gauge.inc();
    log::debug!(
        "stream: {} {} \"{}\" joined room \"{}\"{}",
        transport.label(),
        hello.role.label(),
        String::from_utf8_lossy(&hello.name),
        room.name,
        principal
            .map(|name| format!(" as {name}"))
            .unwrap_or_default()
    );
    match hello.role {
        Role::Producer => match producer::run(&context, room, &mut reader).await {
            producer::ProducerEnd::Clean => {
                // The delivery barrier: this comes only after every message was answered.
                let _ = writer.send_status(StatusCode::OK, false).await;
                let _ = writer.finish().await;
            }
            producer::ProducerEnd::Failed(ReadError::Wire(error)) => {
                context
                    .metrics
                    .protocol_errors
                    .with_label_values(&[room.name.as_str(), error.kind()])
                    .inc();
                log::info!("stream: producer in room \"{}\": {error}", room.name);
                shared
                    .errors
                    .record(&room.name, peer.address, router.protocol_error_window);
                let _ = writer.send_status(StatusCode::BAD_REQUEST, false).await;
                let _ = writer.finish().await;
                reader.stop(codes::PROTOCOL_ERROR);
            }
            producer::ProducerEnd::Failed(ReadError::Transport(_)) => {}
        },
        Role::Consumer => {
            if writer.send_status(StatusCode::OK, true).await.is_ok() {
                consumer::run(&context, room, reader, &mut writer).await;
            }
        }
    }
    gauge.dec();
}

async fn reject(
    context: &SessionContext,
    mut reader: FrameReader,
    mut writer: StreamWriter,
    rejection: Rejection,
) {
    context
        .metrics
        .rejections
        .with_label_values(&[context.transport.label(), rejection.reason()])
        .inc();
    if let Rejection::Hello(error) = &rejection {
        log::debug!(
            "stream: bad hello over {}: {error}",
            context.transport.label()
        );
    }
    let _ = writer.send_status(rejection.status(), false).await;
    let _ = writer.finish().await;
    reader.stop(codes::REJECTED);
}
