//! The message-streaming config: the reference server's `loom.yaml` schema (transport,
//! server, admin, auth, router, rooms), plus Loom's own keys, validated into a [`StreamPlan`].
//!
//! The same schema is the gateway file's `stream:` section and, for `loom stream -c FILE`,
//! a whole file, so a reference-server user can point Loom at their existing config. Unlike
//! the reference (yaml.v3, not strict), unknown keys are errors that name the key.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::units::{DurationValue, SizeValue};
use super::validate::{Checker, parse_listen_address};
use super::yaml::{self, ConfigError};
use crate::stream::wire::{DEFAULT_MAX_VARINT, WireLimits};

/// `transport:` in the reference picks one mode per process. Loom serves both ALPNs on one
/// port whatever it says; the key is accepted so existing files load unchanged.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TransportChoice {
    #[default]
    Both,
    Quic,
    H3,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct StreamSection {
    pub transport: TransportChoice,
    pub server: StreamServerSection,
    pub admin: Option<StreamAdminSection>,
    pub auth: AuthSection,
    pub router: RouterSection,
    pub rooms: Vec<RoomSection>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct StreamServerSection {
    pub addr: Option<String>,
    pub tls: StreamTlsSection,
    /// QUIC keep-alive PING interval (reference: 15 s). Short, so dead peers are noticed.
    pub keep_alive: Option<DurationValue>,
    /// Idle timeout after which a silent connection is dropped (reference: 30 s).
    pub idle_timeout: Option<DurationValue>,
    /// Concurrent bidirectional streams one connection may open (reference: 100).
    pub max_streams_per_connection: Option<u64>,
    /// Loom: QUIC flow-control window of one stream (reference: quic-go's 512 KiB, growing
    /// to 6 MiB).
    pub stream_receive_window: Option<SizeValue>,
    /// Loom: QUIC flow-control window of a whole connection, over all its streams.
    pub connection_receive_window: Option<SizeValue>,
    /// Loom: worker threads of the streaming runtime (in the gateway too, where streaming
    /// runs as its own background service).
    pub worker_threads: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct StreamTlsSection {
    pub cert_file: String,
    pub key_file: String,
    /// Client-side settings in the reference schema; accepted, not used by the server.
    pub ca_file: String,
    pub client_ca_file: String,
    pub require_client_cert: bool,
    pub server_name: String,
    pub insecure_skip_verify: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct StreamAdminSection {
    pub addr: String,
    /// Accepted for compatibility; Loom has no pprof endpoint.
    pub enable_pprof: bool,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    #[default]
    Disabled,
    Token,
    Mtls,
    Both,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct AuthSection {
    pub mode: AuthMode,
    pub tokens: Vec<TokenEntry>,
    pub certs: Vec<CertEntry>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct TokenEntry {
    pub token: String,
    pub principal: String,
    pub rooms: Vec<String>,
    pub roles: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct CertEntry {
    pub principal: String,
    pub rooms: Vec<String>,
    pub roles: Vec<String>,
}

/// What a producer meets when a consumer's backlog is full.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum QueueFullBehavior {
    /// Wait for room (Loom's default: backpressure, nothing lost).
    #[default]
    Block,
    /// Discard the new message (the reference default; `drop` is its old name).
    #[serde(alias = "drop")]
    DropNewest,
    /// Discard the oldest queued message and release its producer.
    DropOldest,
}

/// What happens when a message's in-flight buffer is full because its consumer is slow.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ChunkFullBehavior {
    /// Stop reading the producer until the consumer catches up (Loom's default).
    #[default]
    Block,
    /// Abandon the message: the consumer's stream is reset, never handed a truncated message.
    Drop,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct RouterSection {
    pub partition_count: Option<u64>,
    pub max_message_bytes: Option<u64>,
    pub max_chunk_bytes: Option<u64>,
    pub max_name_bytes: Option<u64>,
    pub max_room_bytes: Option<u64>,
    pub max_token_bytes: Option<u64>,
    pub max_key_bytes: Option<u64>,
    pub max_varint: Option<u64>,
    pub max_backlog_depth: Option<u64>,
    pub partition_full_behavior: QueueFullBehavior,
    pub chunk_full_behavior: ChunkFullBehavior,
    /// Loom: how long a consumer may take to ACK (or to accept bytes) before it is evicted.
    pub ack_timeout: Option<DurationValue>,
    /// Loom: messages up to this size are kept until ACKed and redelivered if their consumer
    /// is lost. 0 turns redelivery off.
    pub redelivery_buffer_bytes: Option<SizeValue>,
    /// Loom: how many times one message may be redelivered.
    pub max_redeliveries: Option<u32>,
    /// Loom: bytes buffered per message between producer and consumer (reference: 1 MiB).
    pub message_buffer_bytes: Option<SizeValue>,
    /// Loom: how much of a producer's stream the server reads ahead of the message being
    /// delivered, so that QUIC's reassembly buffer is drained while the producer waits.
    pub producer_read_ahead_bytes: Option<SizeValue>,
    /// Loom: a room with nobody in it is freed after this long.
    pub room_idle_timeout: Option<DurationValue>,
    /// Loom: producers plus consumers one room admits.
    pub max_streams_per_room: Option<u64>,
    /// Loom: a producer silent this long in the middle of a message loses the message (its
    /// consumers would otherwise wait on it forever).
    pub message_stall_timeout: Option<DurationValue>,
    /// Protocol errors one client may make in a room within `protocol_error_window` before
    /// its new producer streams there are refused (loomd: 10 in 5 minutes). 0 turns it off.
    pub max_protocol_errors: Option<u32>,
    pub protocol_error_window: Option<DurationValue>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct RoomSection {
    pub name: String,
    pub maxdepth: u64,
    #[serde(alias = "parition_full_behavior")]
    pub partition_full_behavior: Option<QueueFullBehavior>,
    pub queue_type: QueueType,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    #[default]
    Partitioned,
    Fanout,
}

/// Queues bigger than this are a config mistake (and past tokio's semaphore limit).
const MAX_BACKLOG_DEPTH: u64 = 1_000_000;
/// Timeouts are added to `Instant`s; a day is far past any useful value.
const MAX_TIMEOUT: Duration = Duration::from_secs(86_400);

/// Who may do what, from one `tokens` or `certs` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub principal: String,
    /// `None` means `*`: any room.
    pub rooms: Option<Vec<String>>,
    pub produce: bool,
    pub consume: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthPlan {
    pub mode: AuthMode,
    pub tokens: HashMap<String, Grant>,
    /// Keyed by certificate subject CN.
    pub certs: HashMap<String, Grant>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPlan {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub client_ca_file: Option<PathBuf>,
    pub require_client_cert: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomPolicy {
    pub backlog_depth: usize,
    pub queue_full: QueueFullBehavior,
    pub fanout: bool,
}

/// Limits and behaviours that apply to each new stream; a reload replaces them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterPlan {
    pub limits: WireLimits,
    pub partition_count: u64,
    pub max_message_bytes: u64,
    pub default_room: RoomPolicy,
    pub rooms: HashMap<String, RoomPolicy>,
    pub chunk_full: ChunkFullBehavior,
    pub ack_timeout: Duration,
    pub redelivery_buffer_bytes: u64,
    pub max_redeliveries: u32,
    pub message_buffer_bytes: u64,
    pub producer_read_ahead_bytes: u64,
    pub room_idle_timeout: Duration,
    pub max_streams_per_room: u64,
    pub message_stall_timeout: Duration,
    pub max_protocol_errors: u32,
    pub protocol_error_window: Duration,
}

impl RouterPlan {
    pub fn room_policy(&self, room: &str) -> RoomPolicy {
        self.rooms.get(room).copied().unwrap_or(self.default_room)
    }
}

/// The validated streaming config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPlan {
    pub address: SocketAddr,
    pub tls: TlsPlan,
    pub transport: TransportChoice,
    /// Only for `loom stream`; in the gateway the gateway's admin listener serves the metrics.
    pub admin_address: Option<SocketAddr>,
    pub keep_alive: Duration,
    pub idle_timeout: Duration,
    pub max_streams_per_connection: u64,
    pub stream_receive_window: u64,
    pub connection_receive_window: u64,
    pub worker_threads: usize,
    pub auth: AuthPlan,
    pub router: RouterPlan,
}

impl StreamPlan {
    /// Settings a reload cannot change on a running endpoint.
    pub fn restart_required_differences(&self, next: &StreamPlan) -> Vec<&'static str> {
        let mut changed = Vec::new();
        if self.address != next.address {
            changed.push("server.addr");
        }
        if self.tls != next.tls {
            changed.push("server.tls");
        }
        if self.admin_address != next.admin_address {
            changed.push("admin.addr");
        }
        if (
            self.keep_alive,
            self.idle_timeout,
            self.max_streams_per_connection,
            self.stream_receive_window,
            self.connection_receive_window,
        ) != (
            next.keep_alive,
            next.idle_timeout,
            next.max_streams_per_connection,
            next.stream_receive_window,
            next.connection_receive_window,
        ) {
            changed.push(
                "server keep_alive/idle_timeout/max_streams_per_connection/stream_receive_window/connection_receive_window",
            );
        }
        changed
    }
}

/// Loads a whole file in the reference schema, for `loom stream -c FILE`.
pub fn load_standalone(path: &Path) -> Result<StreamPlan, Vec<ConfigError>> {
    let text = std::fs::read_to_string(path).map_err(|error| {
        vec![ConfigError::new(
            path,
            None,
            "",
            format!("cannot read config file: {error}"),
        )]
    })?;
    load_standalone_text(path, &text)
}

pub fn load_standalone_text(path: &Path, text: &str) -> Result<StreamPlan, Vec<ConfigError>> {
    // An empty file means every default, as it does for the reference server.
    let empty = text
        .lines()
        .all(|line| line.trim().is_empty() || line.trim_start().starts_with('#'));
    let text = if empty { "{}" } else { text };
    let root = yaml::parse_document(path, text).map_err(|error| vec![error])?;
    let mut errors = Vec::new();
    let section: Option<StreamSection> = if matches!(root.value, yaml::NodeValue::Null) {
        Some(StreamSection::default())
    } else {
        yaml::deserialize_node(path, &root, "", &mut errors)
    };
    let plan = section.and_then(|section| {
        let mut checker = Checker::new(path, &root, &mut errors);
        validate(&mut checker, "", &section, true)
    });
    match plan {
        Some(plan) if errors.is_empty() => Ok(plan),
        _ => Err(errors),
    }
}

/// Validates the gateway's `stream:` section.
pub(super) fn validate_gateway_section(
    checker: &mut Checker<'_>,
    section: &StreamSection,
) -> Option<StreamPlan> {
    if section.admin.is_some() {
        checker.error(
            "stream.admin".to_string(),
            "the gateway's admin listener serves the stream metrics, /healthz and /readyz; remove stream.admin",
        );
    }
    validate(checker, "stream.", section, false)
}

fn key(prefix: &str, path: &str) -> String {
    format!("{prefix}{path}")
}

fn validate(
    checker: &mut Checker<'_>,
    prefix: &str,
    section: &StreamSection,
    standalone: bool,
) -> Option<StreamPlan> {
    let before = checker_error_count(checker);
    let address = parse_address(
        checker,
        &key(prefix, "server.addr"),
        section.server.addr.as_deref().unwrap_or(":4242"),
    );
    let admin_address = match (&section.admin, standalone) {
        (None, true) => parse_address(checker, &key(prefix, "admin.addr"), ":9090"),
        (Some(admin), true) if admin.addr.is_empty() => None,
        (Some(admin), true) => parse_address(checker, &key(prefix, "admin.addr"), &admin.addr),
        _ => None,
    };
    let tls = tls_plan(checker, prefix, section);
    let auth = auth_plan(checker, prefix, &section.auth, &tls);
    let router = router_plan(checker, prefix, section);
    let server = &section.server;
    let keep_alive = server
        .keep_alive
        .map_or(Duration::from_secs(2), |value| value.0);
    let idle_timeout = server
        .idle_timeout
        .map_or(Duration::from_secs(6), |value| value.0);
    if idle_timeout.is_zero() || keep_alive >= idle_timeout || idle_timeout > MAX_TIMEOUT {
        checker.error(
            key(prefix, "server.idle_timeout"),
            format!(
                "idle_timeout ({idle_timeout:?}) must be above zero and longer than keep_alive ({keep_alive:?})"
            ),
        );
    }
    let max_streams_per_connection = server.max_streams_per_connection.unwrap_or(100);
    if max_streams_per_connection == 0 {
        checker.error(
            key(prefix, "server.max_streams_per_connection"),
            "must be greater than 0",
        );
    }
    let (stream_receive_window, connection_receive_window) =
        receive_windows(checker, prefix, server);
    // One worker by default: measured against loomd with the Go client on 2 shared cores, one
    // worker beat the multi-threaded default in every workload (cross-thread wake-ups cost more
    // than a second core gives a stop-and-wait protocol). Raise it for many busy connections.
    let worker_threads = server.worker_threads.unwrap_or(1);
    if !(1..=256).contains(&worker_threads) {
        checker.error(
            key(prefix, "server.worker_threads"),
            "must be between 1 and 256",
        );
    }
    if checker_error_count(checker) > before {
        return None;
    }
    Some(StreamPlan {
        address: address?,
        tls,
        transport: section.transport,
        admin_address,
        keep_alive,
        idle_timeout,
        max_streams_per_connection,
        stream_receive_window,
        connection_receive_window,
        worker_threads: worker_threads as usize,
        auth,
        router: router?,
    })
}

/// The QUIC receive windows. quinn aborts a connection whose stream reassembly buffer holds
/// more than 1,024 separate pieces after compaction, and while the server does not read a
/// producer's stream that buffer can fill up to the stream window with small frames, split
/// wherever a packet was lost and retransmitted. A small stream window keeps that far from
/// the limit; the producer read-ahead (`router.producer_read_ahead_bytes`), which the server
/// holds in its own buffer, keeps the pipe full instead.
fn receive_windows(
    checker: &mut Checker<'_>,
    prefix: &str,
    server: &StreamServerSection,
) -> (u64, u64) {
    const MIN_WINDOW: u64 = 16 << 10;
    const MAX_STREAM_WINDOW: u64 = 16 << 20;
    const MAX_CONNECTION_WINDOW: u64 = 1 << 30;
    let stream_window = server
        .stream_receive_window
        .map_or(DEFAULT_STREAM_RECEIVE_WINDOW, |value| value.0);
    if !(MIN_WINDOW..=MAX_STREAM_WINDOW).contains(&stream_window) {
        checker.error(
            key(prefix, "server.stream_receive_window"),
            "must be between 16KiB and 16MiB",
        );
    }
    let connection_window = server
        .connection_receive_window
        .map_or(16 << 20, |value| value.0);
    if !(stream_window..=MAX_CONNECTION_WINDOW).contains(&connection_window) {
        checker.error(
            key(prefix, "server.connection_receive_window"),
            "must be at least stream_receive_window and at most 1GiB",
        );
    }
    (stream_window, connection_window)
}

/// 512 KiB, quic-go's (and so loomd's) starting window: at most about 10,000 frames of
/// Loom-go's smallest messages in quinn's buffer; with the read-ahead, enough to keep a
/// loopback or LAN path full.
pub const DEFAULT_STREAM_RECEIVE_WINDOW: u64 = 512 << 10;

/// 1 MiB: with the stream window, a producer of 100-byte messages runs at most about 15,000
/// messages ahead of delivery (loomd, on quic-go's windows: 4,400 to 11,500).
pub const DEFAULT_PRODUCER_READ_AHEAD: u64 = 1 << 20;
const MAX_PRODUCER_READ_AHEAD: u64 = 64 << 20;

fn checker_error_count(checker: &Checker<'_>) -> usize {
    checker.error_count()
}

/// Accepts Go's `:4242` form (all interfaces) as well as `host:port`.
fn parse_address(checker: &mut Checker<'_>, key_path: &str, text: &str) -> Option<SocketAddr> {
    match parse_listen_address(text).map(|normalized| normalized.parse::<SocketAddr>()) {
        Ok(Ok(address)) => Some(address),
        Ok(Err(_)) => None,
        Err(message) => {
            checker.error(key_path.to_string(), message);
            None
        }
    }
}

fn resolve_file(checker: &Checker<'_>, text: &str) -> Option<PathBuf> {
    if text.is_empty() {
        return None;
    }
    let path = Path::new(text);
    if path.is_absolute() {
        return Some(path.to_path_buf());
    }
    let directory = checker.file.parent().unwrap_or(Path::new("."));
    Some(directory.join(path))
}

fn tls_plan(checker: &mut Checker<'_>, prefix: &str, section: &StreamSection) -> TlsPlan {
    let tls = &section.server.tls;
    let cert_file = resolve_file(checker, &tls.cert_file);
    let key_file = resolve_file(checker, &tls.key_file);
    if cert_file.is_some() != key_file.is_some() {
        checker.error(
            key(prefix, "server.tls.cert_file"),
            "cert_file and key_file must be set together",
        );
    }
    for (name, file) in [
        ("cert_file", &cert_file),
        ("key_file", &key_file),
        (
            "client_ca_file",
            &resolve_file(checker, &tls.client_ca_file),
        ),
    ] {
        if let Some(file) = file
            && !file.is_file()
        {
            checker.error(
                key(prefix, &format!("server.tls.{name}")),
                format!("{} does not exist or is not a file", file.display()),
            );
        }
    }
    let client_ca_file = resolve_file(checker, &tls.client_ca_file);
    // The reference rejects everyone in `mtls` mode unless require_client_cert is also set
    // (its bug B8); here choosing a certificate-based mode is enough to ask for certificates.
    let certificate_mode = matches!(section.auth.mode, AuthMode::Mtls | AuthMode::Both);
    let require_client_cert = tls.require_client_cert || certificate_mode;
    if require_client_cert && client_ca_file.is_none() {
        checker.error(
            key(prefix, "server.tls.client_ca_file"),
            "client certificates (require_client_cert, or auth mode mtls/both) need client_ca_file",
        );
    }
    TlsPlan {
        cert_file,
        key_file,
        client_ca_file,
        require_client_cert,
    }
}

fn grant(
    checker: &mut Checker<'_>,
    key_path: &str,
    principal: &str,
    rooms: &[String],
    roles: &[String],
) -> Grant {
    let mut produce = false;
    let mut consume = false;
    for (index, role) in roles.iter().enumerate() {
        match role.to_ascii_lowercase().as_str() {
            "produce" => produce = true,
            "consume" => consume = true,
            other => checker.error(
                format!("{key_path}.roles[{index}]"),
                format!("unknown role \"{other}\" (expected produce or consume)"),
            ),
        }
    }
    Grant {
        principal: principal.to_string(),
        rooms: if rooms.iter().any(|room| room == "*") {
            None
        } else {
            Some(rooms.to_vec())
        },
        produce,
        consume,
    }
}

fn auth_plan(
    checker: &mut Checker<'_>,
    prefix: &str,
    section: &AuthSection,
    tls: &TlsPlan,
) -> AuthPlan {
    let mut tokens = HashMap::new();
    for (index, entry) in section.tokens.iter().enumerate() {
        let key_path = key(prefix, &format!("auth.tokens[{index}]"));
        if entry.token.is_empty() {
            checker.error(format!("{key_path}.token"), "token must not be empty");
            continue;
        }
        let value = grant(
            checker,
            &key_path,
            &entry.principal,
            &entry.rooms,
            &entry.roles,
        );
        if tokens.insert(entry.token.clone(), value).is_some() {
            checker.error(format!("{key_path}.token"), "this token is listed twice");
        }
    }
    let mut certs = HashMap::new();
    for (index, entry) in section.certs.iter().enumerate() {
        let key_path = key(prefix, &format!("auth.certs[{index}]"));
        let value = grant(
            checker,
            &key_path,
            &entry.principal,
            &entry.rooms,
            &entry.roles,
        );
        if certs.insert(entry.principal.clone(), value).is_some() {
            checker.error(
                format!("{key_path}.principal"),
                "this principal is listed twice",
            );
        }
    }
    let mode = section.mode;
    if matches!(mode, AuthMode::Token | AuthMode::Both) && tokens.is_empty() {
        log::warn!("stream auth mode {mode:?} with no tokens: every stream will be refused");
    }
    if matches!(mode, AuthMode::Mtls | AuthMode::Both) && tls.client_ca_file.is_none() {
        checker.error(
            key(prefix, "auth.mode"),
            "mtls and both need server.tls.client_ca_file",
        );
    }
    AuthPlan {
        mode,
        tokens,
        certs,
    }
}

fn positive(checker: &mut Checker<'_>, key_path: String, value: Option<u64>, default: u64) -> u64 {
    let value = value.unwrap_or(default);
    if value == 0 {
        checker.error(key_path, "must be greater than 0");
    }
    value
}

fn router_plan(
    checker: &mut Checker<'_>,
    prefix: &str,
    section: &StreamSection,
) -> Option<RouterPlan> {
    let router = &section.router;
    let at = |name: &str| key(prefix, &format!("router.{name}"));
    let limits = WireLimits {
        max_name_bytes: positive(checker, at("max_name_bytes"), router.max_name_bytes, 128),
        max_room_bytes: positive(checker, at("max_room_bytes"), router.max_room_bytes, 128),
        max_token_bytes: positive(checker, at("max_token_bytes"), router.max_token_bytes, 1024),
        max_key_bytes: positive(checker, at("max_key_bytes"), router.max_key_bytes, 256),
        max_chunk_bytes: positive(
            checker,
            at("max_chunk_bytes"),
            router.max_chunk_bytes,
            65_536,
        ),
        max_varint: positive(
            checker,
            at("max_varint"),
            router.max_varint,
            DEFAULT_MAX_VARINT,
        ),
    };
    let partition_count = positive(checker, at("partition_count"), router.partition_count, 64);
    let max_message_bytes = positive(
        checker,
        at("max_message_bytes"),
        router.max_message_bytes,
        256 << 20,
    );
    let backlog = positive(
        checker,
        at("max_backlog_depth"),
        router.max_backlog_depth,
        128,
    );
    if backlog > MAX_BACKLOG_DEPTH {
        checker.error(
            at("max_backlog_depth"),
            format!("must be at most {MAX_BACKLOG_DEPTH}"),
        );
    }
    let message_buffer_bytes = router
        .message_buffer_bytes
        .map_or(1 << 20, |value| value.0)
        .max(1);
    let producer_read_ahead_bytes = router
        .producer_read_ahead_bytes
        .map_or(DEFAULT_PRODUCER_READ_AHEAD, |value| value.0);
    if producer_read_ahead_bytes > MAX_PRODUCER_READ_AHEAD {
        checker.error(at("producer_read_ahead_bytes"), "must be at most 64MiB");
    }
    let ack_timeout = router
        .ack_timeout
        .map_or(Duration::from_secs(30), |value| value.0);
    let message_stall_timeout = router
        .message_stall_timeout
        .map_or(Duration::from_secs(30), |value| value.0);
    for (name, value) in [
        ("ack_timeout", ack_timeout),
        ("message_stall_timeout", message_stall_timeout),
    ] {
        if value.is_zero() || value > MAX_TIMEOUT {
            checker.error(at(name), "must be greater than 0 and at most 24h");
        }
    }
    let default_room = RoomPolicy {
        backlog_depth: backlog as usize,
        queue_full: router.partition_full_behavior,
        fanout: false,
    };
    let mut rooms = HashMap::new();
    for (index, room) in section.rooms.iter().enumerate() {
        let key_path = key(prefix, &format!("rooms[{index}]"));
        if room.name.is_empty() {
            checker.error(format!("{key_path}.name"), "name is required");
            continue;
        }
        let policy = RoomPolicy {
            backlog_depth: if room.maxdepth > 0 {
                room.maxdepth as usize
            } else {
                default_room.backlog_depth
            },
            queue_full: room
                .partition_full_behavior
                .unwrap_or(default_room.queue_full),
            fanout: room.queue_type == QueueType::Fanout,
        };
        if rooms.insert(room.name.clone(), policy).is_some() {
            checker.error(
                format!("{key_path}.name"),
                format!("room \"{}\" is listed twice", room.name),
            );
        }
    }
    Some(RouterPlan {
        limits,
        partition_count,
        max_message_bytes,
        default_room,
        rooms,
        chunk_full: router.chunk_full_behavior,
        ack_timeout,
        redelivery_buffer_bytes: router
            .redelivery_buffer_bytes
            .map_or(1 << 20, |value| value.0),
        max_redeliveries: router.max_redeliveries.unwrap_or(3),
        message_buffer_bytes,
        producer_read_ahead_bytes,
        room_idle_timeout: router
            .room_idle_timeout
            .map_or(Duration::from_secs(60), |value| value.0),
        max_streams_per_room: positive(
            checker,
            at("max_streams_per_room"),
            router.max_streams_per_room,
            4096,
        ),
        message_stall_timeout,
        max_protocol_errors: router.max_protocol_errors.unwrap_or(10),
        protocol_error_window: router
            .protocol_error_window
            .map_or(Duration::from_secs(300), |value| value.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<StreamPlan, Vec<String>> {
        load_standalone_text(Path::new("loom.yaml"), text)
            .map_err(|errors| errors.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn the_reference_sample_loads() {
        let plan = load(
            r#"
transport: quic
server:
  addr: ":4242"
  tls:
    cert_file: ""
    key_file: ""
    ca_file: ""
    server_name: ""
    insecure_skip_verify: true
admin:
  addr: ":9090"
  enable_pprof: true
auth:
  mode: token
  tokens:
    - {token: "s3cret", principal: "alice", rooms: ["*"], roles: ["produce", "Consume"]}
router:
  partition_count: 64
  max_message_bytes: 268435456
  max_chunk_bytes: 65536
  max_backlog_depth: 128
  partition_full_behavior: drop_oldest
  chunk_full_behavior: drop
rooms:
  - {name: events, maxdepth: 4, parition_full_behavior: drop, queue_type: fanout}
"#,
        )
        .unwrap();
        assert_eq!(plan.address.port(), 4242);
        assert_eq!(plan.admin_address.map(|address| address.port()), Some(9090));
        assert_eq!(plan.auth.mode, AuthMode::Token);
        let alice = &plan.auth.tokens["s3cret"];
        assert!(alice.produce && alice.consume && alice.rooms.is_none());
        assert_eq!(
            plan.router.default_room.queue_full,
            QueueFullBehavior::DropOldest
        );
        let events = plan.router.room_policy("events");
        assert_eq!(events.backlog_depth, 4);
        assert_eq!(events.queue_full, QueueFullBehavior::DropNewest);
        assert!(events.fanout);
        assert_eq!(plan.router.chunk_full, ChunkFullBehavior::Drop);
    }

    #[test]
    fn defaults_prefer_backpressure_and_fast_failure_detection() {
        let plan = load("").unwrap();
        assert_eq!(
            plan.router.default_room.queue_full,
            QueueFullBehavior::Block
        );
        assert_eq!(plan.router.chunk_full, ChunkFullBehavior::Block);
        assert_eq!(plan.keep_alive, Duration::from_secs(2));
        assert_eq!(plan.idle_timeout, Duration::from_secs(6));
        assert_eq!(plan.router.limits, WireLimits::default());
        assert_eq!(plan.stream_receive_window, 512 << 10);
        assert_eq!(plan.connection_receive_window, 16 << 20);
        assert_eq!(plan.router.producer_read_ahead_bytes, 1 << 20);
        assert_eq!(plan.worker_threads, 1);
        let errors = load("server:\n  worker_threads: 0\n").unwrap_err();
        assert!(
            errors.join("\n").contains("server.worker_threads"),
            "{errors:?}"
        );
    }

    #[test]
    fn flow_control_windows_are_bounded() {
        let plan = load(
            "server:\n  stream_receive_window: 2MiB\n  connection_receive_window: 64MiB\nrouter:\n  producer_read_ahead_bytes: 0\n",
        )
        .unwrap();
        assert_eq!(
            (
                plan.stream_receive_window,
                plan.connection_receive_window,
                plan.router.producer_read_ahead_bytes
            ),
            (2 << 20, 64 << 20, 0)
        );
        let errors = load(
            "server:\n  stream_receive_window: 32MiB\n  connection_receive_window: 1MiB\nrouter:\n  producer_read_ahead_bytes: 1GiB\n",
        )
        .unwrap_err()
        .join("\n");
        for key in [
            "server.stream_receive_window",
            "server.connection_receive_window",
            "router.producer_read_ahead_bytes",
        ] {
            assert!(errors.contains(key), "{key}: {errors}");
        }
        let errors = load("server:\n  stream_receive_window: 1KiB\n").unwrap_err();
        assert!(
            errors.join("\n").contains("server.stream_receive_window"),
            "{errors:?}"
        );
    }

    #[test]
    fn errors_name_the_line_and_key() {
        let errors =
            load("router:\n  partition_count: 0\n  max_chunk_bytes: 10\n  bogus: 1\n").unwrap_err();
        let text = errors.join("\n");
        assert!(text.contains("loom.yaml:2:"), "{text}");
        assert!(text.contains("router.partition_count"), "{text}");
        assert!(text.contains("router.bogus"), "{text}");
        let errors = load("auth:\n  mode: mtls\n").unwrap_err();
        assert!(errors.join("\n").contains("client_ca_file"), "{errors:?}");
        let errors = load("auth:\n  tokens:\n    - {token: a, roles: [publish]}\n").unwrap_err();
        assert!(
            errors.join("\n").contains("auth.tokens[0].roles[0]"),
            "{errors:?}"
        );
    }
}
