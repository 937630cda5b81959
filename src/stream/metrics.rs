//! Streaming metrics, in their own registry so the gateway's `/metrics` and the standalone
//! admin listener can both render them. Names follow the reference server's; unlike it,
//! every one of them is counted (its bug B6). Room-labelled series are removed when their
//! room is freed, so label cardinality follows live rooms, not every room ever seen.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every `reason` label `loom_drops_total` uses.
pub const DROP_REASONS: [&str; 6] = [
    "no_consumer",
    "queue_full",
    "oldest_dropped",
    "too_large",
    "consumer_lost",
    "aborted",
];
/// Every `error_type` label `loom_protocol_errors_total` uses (see `WireError::kind`).
pub const PROTOCOL_ERROR_KINDS: [&str; 10] = [
    "bad_magic",
    "bad_version",
    "bad_role",
    "field_too_long",
    "empty_key",
    "key_too_large",
    "chunk_too_large",
    "varint_too_large",
    "varint_overflow",
    "truncated",
];
/// Every `reason` label `loom_consumer_evictions_total` uses.
pub const EVICTION_REASONS: [&str; 2] = ["ack_timeout", "write_stalled"];

pub struct StreamMetrics {
    registry: Registry,
    /// True while the endpoint is bound and accepting (`/readyz`).
    pub ready: std::sync::atomic::AtomicBool,
    pub connections: IntGaugeVec,
    pub streams: IntGaugeVec,
    pub messages_in: IntCounterVec,
    pub messages_out: IntCounterVec,
    pub bytes_in: IntCounterVec,
    pub bytes_out: IntCounterVec,
    pub drops: IntCounterVec,
    pub protocol_errors: IntCounterVec,
    pub rejections: IntCounterVec,
    pub redeliveries: IntCounterVec,
    pub blocked_producers: IntCounterVec,
    pub evictions: IntCounterVec,
    pub connection_errors: IntCounterVec,
    pub ack_latency: HistogramVec,
    pub rooms: prometheus::IntGauge,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: T) -> T {
    // Names are fixed and unique within this private registry, so registration cannot clash.
    if let Err(error) = registry.register(Box::new(metric.clone())) {
        log::error!("stream metric registration failed: {error}");
    }
    metric
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        registry,
        IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition"),
    )
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(
        registry,
        IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition"),
    )
}

impl StreamMetrics {
    pub fn new() -> StreamMetrics {
        let registry = Registry::new();
        let ack_latency = register(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "loom_ack_latency_seconds",
                    "Time from a message's end being written to its consumer's ACK.",
                )
                .buckets(vec![
                    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
                    0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ]),
                &["room"],
            )
            .expect("valid metric definition"),
        );
        let rooms = register(
            &registry,
            prometheus::IntGauge::new("loom_rooms", "Rooms in memory.")
                .expect("valid metric definition"),
        );
        StreamMetrics {
            connections: gauge(
                &registry,
                "loom_connections",
                "Open client connections.",
                &["transport"],
            ),
            streams: gauge(
                &registry,
                "loom_streams",
                "Open producer and consumer streams.",
                &["transport", "role", "room"],
            ),
            messages_in: counter(
                &registry,
                "loom_messages_in_total",
                "Messages read whole from producers.",
                &["room"],
            ),
            messages_out: counter(
                &registry,
                "loom_messages_out_total",
                "Messages written whole to consumers.",
                &["room"],
            ),
            bytes_in: counter(
                &registry,
                "loom_bytes_in_total",
                "Message body bytes read from producers.",
                &["room"],
            ),
            bytes_out: counter(
                &registry,
                "loom_bytes_out_total",
                "Message body bytes written to consumers.",
                &["room"],
            ),
            drops: counter(
                &registry,
                "loom_drops_total",
                "Messages not delivered, by reason.",
                &["room", "reason"],
            ),
            protocol_errors: counter(
                &registry,
                "loom_protocol_errors_total",
                "Streams ended for breaking the wire format, by rule broken.",
                &["room", "error_type"],
            ),
            rejections: counter(
                &registry,
                "loom_rejected_streams_total",
                "Streams refused at the hello, by reason.",
                &["transport", "reason"],
            ),
            redeliveries: counter(
                &registry,
                "loom_redeliveries_total",
                "Messages sent again after their consumer was lost.",
                &["room"],
            ),
            blocked_producers: counter(
                &registry,
                "loom_blocked_producers_total",
                "Producer streams refused because their client kept breaking the format.",
                &["room"],
            ),
            evictions: counter(
                &registry,
                "loom_consumer_evictions_total",
                "Consumers removed by the server, by reason.",
                &["room", "reason"],
            ),
            connection_errors: counter(
                &registry,
                "loom_connection_errors_total",
                "Connections that ended in an error rather than a close, by reason (transport_error: this server closed it for a QUIC transport error; peer_transport_error: the client did; timed_out; reset).",
                &["transport", "reason"],
            ),
            ack_latency,
            rooms,
            registry,
            ready: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Drops the series of a freed room.
    pub fn forget_room(&self, room: &str) {
        for counter in [
            &self.messages_in,
            &self.messages_out,
            &self.bytes_in,
            &self.bytes_out,
            &self.redeliveries,
            &self.blocked_producers,
        ] {
            let _ = counter.remove_label_values(&[room]);
        }
        let _ = self.ack_latency.remove_label_values(&[room]);
        for reason in DROP_REASONS {
            let _ = self.drops.remove_label_values(&[room, reason]);
        }
        for kind in PROTOCOL_ERROR_KINDS {
            let _ = self.protocol_errors.remove_label_values(&[room, kind]);
        }
        for reason in EVICTION_REASONS {
            let _ = self.evictions.remove_label_values(&[room, reason]);
        }
        for transport in ["quic", "h3"] {
            for role in ["producer", "consumer"] {
                let _ = self.streams.remove_label_values(&[transport, role, room]);
            }
        }
    }

    pub fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.registry.gather()
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The Prometheus text format of every streaming metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            log::error!("stream metrics encoding failed: {error}");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for StreamMetrics {
    fn default() -> StreamMetrics {
        StreamMetrics::new()
    }
}

static INSTALLED: std::sync::OnceLock<std::sync::Arc<StreamMetrics>> = std::sync::OnceLock::new();

/// The process's streaming metrics, created on first use; the gateway's `/metrics` shows
/// them once streaming has started.
pub fn installed() -> std::sync::Arc<StreamMetrics> {
    std::sync::Arc::clone(INSTALLED.get_or_init(|| std::sync::Arc::new(StreamMetrics::new())))
}

/// The streaming metric families if streaming runs in this process, else nothing.
pub fn gather_installed() -> Vec<prometheus::proto::MetricFamily> {
    INSTALLED
        .get()
        .map(|metrics| metrics.gather())
        .unwrap_or_default()
}

/// `None` when streaming does not run in this process.
pub fn installed_readiness() -> Option<bool> {
    INSTALLED.get().map(|metrics| metrics.is_ready())
}
