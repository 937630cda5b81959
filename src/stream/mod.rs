//! Loom message streaming: the Loom v4 wire protocol over raw QUIC (ALPN `loom/1`) and
//! HTTP/3 (`POST /stream`) on one UDP port, wire-compatible with the reference `loomd` and
//! its clients (see `shared/reference/loom-wire-protocol.md`).
//!
//! A stream reads top to bottom: [`server`] accepts connections and streams, [`session`]
//! checks the hello and authorises ([`auth`]), [`room`] routes, then [`producer`] and
//! [`consumer`] move the bytes. [`wire`] is the codec, [`reader`] and [`io`] the plumbing,
//! [`client`] the Rust client library, [`service`] the ways to run it.

pub mod admin;
pub mod auth;
pub mod cli;
pub mod client;
pub mod consumer;
pub mod io;
pub mod metrics;
pub mod producer;
pub mod reader;
pub mod room;
pub mod server;
pub mod service;
pub mod session;
pub mod tls;
pub mod tracker;
pub mod wire;

/// Application error codes Loom uses to reset or stop streams. Reference clients treat any
/// code as an error or end of stream; these tell a Loom client why.
pub mod codes {
    /// The hello was refused (bad hello, authorisation, room full): sent as STOP_SENDING.
    pub const REJECTED: u64 = 0x4c01;
    /// A message could not be delivered whole; the consumer stream is reset instead of
    /// ending a truncated message normally.
    pub const MESSAGE_ABORTED: u64 = 0x4c02;
    /// The consumer did not ACK within `ack_timeout` and was evicted.
    pub const ACK_TIMEOUT: u64 = 0x4c03;
    /// The consumer stopped accepting bytes for `ack_timeout` and was evicted.
    pub const WRITE_STALLED: u64 = 0x4c04;
    /// The producer broke the wire format.
    pub const PROTOCOL_ERROR: u64 = 0x4c05;
    /// The server is shutting down, or the stream is over.
    pub const SHUTDOWN: u64 = 0x4c06;
}
