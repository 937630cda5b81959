//! A Rust client for Loom streaming, over raw QUIC or HTTP/3: a producer that sends
//! messages and can wait until all were answered, and a consumer that reads messages
//! (whole or chunk by chunk) and ACKs them.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::io::{StreamReader, StreamWriter, TransportError};
use super::reader::{FrameReader, ReadError};
use super::tls::{self, ClientTlsOptions};
use super::wire::{self, Frame, Hello, MessageHeader, Role, WireLimits};

/// The chunk size producers use unless told otherwise (the clients' and server's default).
pub const DEFAULT_CHUNK_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ClientTransport {
    #[default]
    Quic,
    H3,
}

#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// `host:port` of the server.
    pub server: String,
    pub transport: ClientTransport,
    pub name: String,
    pub room: String,
    pub token: String,
    pub tls: ClientTlsOptions,
    /// TLS server name; default: the host part of `server`.
    pub server_name: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot resolve {0}")]
    Resolve(String),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("connection failed: {0}")]
    Connect(String),
    #[error("the server refused the stream{}", status.map(|status| format!(" (HTTP {status})")).unwrap_or_default())]
    Rejected { status: Option<u16> },
    #[error("the server reset the stream with code 0x{0:x}")]
    Reset(u64),
    #[error("protocol error: {0}")]
    Protocol(#[from] wire::WireError),
    #[error("transport error: {0}")]
    Transport(String),
}

impl From<TransportError> for ClientError {
    fn from(error: TransportError) -> ClientError {
        match error.code {
            Some(super::codes::REJECTED) => ClientError::Rejected { status: None },
            Some(code) => ClientError::Reset(code),
            None => ClientError::Transport(error.message),
        }
    }
}

impl From<ReadError> for ClientError {
    fn from(error: ReadError) -> ClientError {
        match error {
            ReadError::Wire(error) => ClientError::Protocol(error),
            ReadError::Transport(error) => error.into(),
        }
    }
}

/// Limits a client applies to what the server sends: generous, it trusts its server.
fn client_limits() -> WireLimits {
    WireLimits {
        max_key_bytes: 1 << 20,
        max_chunk_bytes: 64 << 20,
        max_varint: u64::MAX,
        ..WireLimits::default()
    }
}

/// An open Loom stream: its connection, and the two directions.
struct Session {
    /// Held for the session's life: the endpoint owns the UDP socket the connection uses.
    endpoint: quinn::Endpoint,
    connection: quinn::Connection,
    reader: FrameReader,
    writer: StreamWriter,
    /// HTTP/3: the response head, for producers read only at `finish`.
    h3_response_pending: bool,
    h3_driver: Option<tokio::task::JoinHandle<()>>,
    _h3_requests: Option<h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>>,
}

async fn resolve(server: &str) -> Result<SocketAddr, ClientError> {
    tokio::net::lookup_host(server)
        .await
        .ok()
        .and_then(|mut addresses| addresses.next())
        .ok_or_else(|| ClientError::Resolve(server.to_string()))
}

fn host_part(server: &str) -> String {
    let host = match server.rfind(':') {
        Some(cut) => &server[..cut],
        None => server,
    };
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_string()
}

async fn open(options: &ClientOptions, role: Role) -> Result<Session, ClientError> {
    let address = resolve(&options.server).await?;
    let alpn = match options.transport {
        ClientTransport::Quic => tls::ALPN_LOOM,
        ClientTransport::H3 => tls::ALPN_H3,
    };
    let crypto = tls::client_config(&options.tls, alpn)?;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(crypto)
        .map_err(|error| ClientError::Connect(error.to_string()))?;
    let mut client_config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.stream_receive_window(quinn::VarInt::from_u32(8 << 20));
    transport.receive_window(quinn::VarInt::from_u32(32 << 20));
    transport.send_window(32 << 20);
    transport.keep_alive_interval(Some(std::time::Duration::from_secs(2)));
    client_config.transport_config(Arc::new(transport));
    let bind: SocketAddr = if address.is_ipv6() {
        "[::]:0".parse().expect("literal address")
    } else {
        "0.0.0.0:0".parse().expect("literal address")
    };
    let mut endpoint =
        quinn::Endpoint::client(bind).map_err(|error| ClientError::Connect(error.to_string()))?;
    endpoint.set_default_client_config(client_config);
    let server_name = options
        .server_name
        .clone()
        .unwrap_or_else(|| host_part(&options.server));
    let connection = endpoint
        .connect(address, &server_name)
        .map_err(|error| ClientError::Connect(error.to_string()))?
        .await
        .map_err(|error| ClientError::Connect(error.to_string()))?;

    let hello = Hello {
        role,
        name: Bytes::copy_from_slice(options.name.as_bytes()),
        room: Bytes::copy_from_slice(options.room.as_bytes()),
        token: Bytes::copy_from_slice(options.token.as_bytes()),
    };
    let mut encoded = BytesMut::new();
    hello.encode(&mut encoded);
    let encoded = encoded.freeze();

    match options.transport {
        ClientTransport::Quic => {
            let (send, receive) = connection
                .open_bi()
                .await
                .map_err(|error| ClientError::Connect(error.to_string()))?;
            let mut writer = StreamWriter::Quic(send);
            writer.write(encoded).await?;
            Ok(Session {
                endpoint,
                connection,
                reader: FrameReader::new(StreamReader::Quic(receive), client_limits()),
                writer,
                h3_response_pending: false,
                h3_driver: None,
                _h3_requests: None,
            })
        }
        ClientTransport::H3 => {
            let (mut driver, mut requests) =
                h3::client::new(h3_quinn::Connection::new(connection.clone()))
                    .await
                    .map_err(|error| ClientError::Connect(error.to_string()))?;
            let h3_driver = tokio::spawn(async move {
                let _ = std::future::poll_fn(|context| driver.poll_close(context)).await;
            });
            let request = http::Request::post(format!("https://{}/stream", options.server))
                .body(())
                .map_err(|error| ClientError::Connect(error.to_string()))?;
            let mut stream = requests
                .send_request(request)
                .await
                .map_err(|error| ClientError::Connect(error.to_string()))?;
            // The server answers only after reading the hello: send it before waiting.
            stream
                .send_data(encoded)
                .await
                .map_err(|error| ClientError::Transport(error.to_string()))?;
            let (send, mut receive) = stream.split();
            let mut h3_response_pending = true;
            if role == Role::Consumer {
                let response = receive
                    .recv_response()
                    .await
                    .map_err(|error| ClientError::Transport(error.to_string()))?;
                if response.status() != http::StatusCode::OK {
                    return Err(ClientError::Rejected {
                        status: Some(response.status().as_u16()),
                    });
                }
                h3_response_pending = false;
            }
            Ok(Session {
                endpoint,
                connection,
                reader: FrameReader::new(StreamReader::H3Client(receive), client_limits()),
                writer: StreamWriter::H3Client(send),
                h3_response_pending,
                h3_driver: Some(h3_driver),
                _h3_requests: Some(requests),
            })
        }
    }
}

impl Session {
    fn close(&self) {
        self.connection.close(quinn::VarInt::from_u32(0), b"bye");
        if let Some(driver) = &self.h3_driver {
            driver.abort();
        }
    }
}

impl Session {
    /// Closes the connection and waits (a second at most) until the close has gone out, so
    /// that a process exiting right after leaves the server a clean close rather than an
    /// idle timeout to discover.
    async fn close_and_flush(&self) {
        self.close();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), self.endpoint.wait_idle())
            .await;
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.close();
    }
}

pub struct Producer {
    session: Session,
    chunk_bytes: usize,
}

impl Producer {
    pub async fn connect(options: &ClientOptions) -> Result<Producer, ClientError> {
        Ok(Producer {
            session: open(options, Role::Producer).await?,
            chunk_bytes: DEFAULT_CHUNK_BYTES,
        })
    }

    pub fn set_chunk_bytes(&mut self, chunk_bytes: usize) {
        self.chunk_bytes = chunk_bytes.max(1);
    }

    /// Sends one message. It returns once the bytes are handed to the transport; the
    /// server reads the next message only after this one is ACKed, so a producer that
    /// runs ahead is held back by flow control.
    pub async fn send(&mut self, key: &[u8], body: &[u8]) -> Result<(), ClientError> {
        let mut out = BytesMut::with_capacity(key.len() + body.len() + 32);
        wire::encode_header_parts(&mut out, key, body.len() as u64, 0);
        for chunk in body.chunks(self.chunk_bytes) {
            wire::put_varint(&mut out, chunk.len() as u64);
            if chunk.len() >= DEFAULT_CHUNK_BYTES / 4 {
                // Large chunks go out as their own buffers rather than being copied again.
                self.session.writer.write(out.split().freeze()).await?;
                self.session
                    .writer
                    .write(Bytes::copy_from_slice(chunk))
                    .await?;
            } else {
                out.extend_from_slice(chunk);
            }
        }
        wire::encode_end_of_message(&mut out);
        self.session.writer.write(out.freeze()).await?;
        Ok(())
    }

    /// Sends a message whose body is already in `Bytes` (no copy for large chunks).
    pub async fn send_bytes(&mut self, key: &[u8], body: Bytes) -> Result<(), ClientError> {
        let mut out = BytesMut::with_capacity(key.len() + 32);
        wire::encode_header_parts(&mut out, key, body.len() as u64, 0);
        let mut offset = 0;
        let mut pieces = Vec::with_capacity(2 * body.len() / self.chunk_bytes + 2);
        while offset < body.len() {
            let end = (offset + self.chunk_bytes).min(body.len());
            wire::put_varint(&mut out, (end - offset) as u64);
            pieces.push(out.split().freeze());
            pieces.push(body.slice(offset..end));
            offset = end;
        }
        wire::encode_end_of_message(&mut out);
        pieces.push(out.freeze());
        self.session.writer.write_many(&mut pieces).await?;
        Ok(())
    }

    /// Sends one message read from `source` in chunks (for files and stdin).
    pub async fn send_reader(
        &mut self,
        key: &[u8],
        declared_size: u64,
        source: &mut (impl tokio::io::AsyncRead + Unpin),
    ) -> Result<u64, ClientError> {
        use tokio::io::AsyncReadExt;
        let mut out = BytesMut::new();
        wire::encode_header_parts(&mut out, key, declared_size, 0);
        self.session.writer.write(out.split().freeze()).await?;
        let mut total = 0u64;
        let mut buffer = vec![0u8; self.chunk_bytes];
        loop {
            let read = source
                .read(&mut buffer)
                .await
                .map_err(|error| ClientError::Transport(error.to_string()))?;
            if read == 0 {
                break;
            }
            total += read as u64;
            wire::encode_chunk(&mut out, &buffer[..read]);
            self.session.writer.write(out.split().freeze()).await?;
        }
        wire::encode_end_of_message(&mut out);
        self.session.writer.write(out.freeze()).await?;
        Ok(total)
    }

    /// Ends the stream and waits until the server has answered every message (the
    /// server closes its side only then). Fails if the server refused the stream; over raw
    /// QUIC a refusal that races with this call's end of stream can go unseen, because the
    /// protocol gives producers no answer (see [`Producer::wait_for_refusal`]).
    pub async fn finish(mut self) -> Result<(), ClientError> {
        if !self.session.h3_response_pending {
            // The server ending its side before we end ours means it refused us.
            use futures_util::FutureExt;
            if let Some(Ok(None)) = self.session.reader.message_header().now_or_never() {
                return Err(ClientError::Rejected { status: None });
            }
        }
        self.session.writer.finish().await?;
        if self.session.h3_response_pending {
            let StreamReader::H3Client(receive) = self.session.reader.inner_mut() else {
                return Ok(());
            };
            let response = receive
                .recv_response()
                .await
                .map_err(|error| ClientError::Transport(error.to_string()))?;
            return match response.status() {
                http::StatusCode::OK => Ok(()),
                status => Err(ClientError::Rejected {
                    status: Some(status.as_u16()),
                }),
            };
        }
        // Raw QUIC: a refusal shows as STOP_SENDING; otherwise the server writes nothing to
        // producers and ends its side once every message was answered.
        self.session.writer.stopped().await?;
        match self.session.reader.message_header().await {
            Ok(None) => {
                self.session.close_and_flush().await;
                Ok(())
            }
            Ok(Some(_)) => Err(ClientError::Transport(
                "unexpected bytes on a producer stream".into(),
            )),
            Err(error) => Err(error.into()),
        }
    }

    /// Waits until the server ends this stream without being asked to: the sign that it
    /// refused the hello or the data. Raw QUIC gives no other signal (the server writes
    /// nothing to producers), so this is how a caller confirms a refusal; an accepted stream
    /// makes this wait until `finish`.
    pub async fn wait_for_refusal(&mut self) -> ClientError {
        if self.session.h3_response_pending
            && let StreamReader::H3Client(receive) = self.session.reader.inner_mut()
        {
            return match receive.recv_response().await {
                Ok(response) => ClientError::Rejected {
                    status: Some(response.status().as_u16()),
                },
                Err(error) => ClientError::Transport(error.to_string()),
            };
        }
        match self.session.reader.message_header().await {
            Ok(None) => ClientError::Rejected { status: None },
            Ok(Some(_)) => ClientError::Transport("unexpected bytes on a producer stream".into()),
            Err(error) => error.into(),
        }
    }

    /// Closes the connection without waiting.
    pub fn close(self) {
        self.session.close();
    }
}

/// A message read whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: u64,
    pub key: Bytes,
    pub declared_size: u64,
    pub body: Vec<u8>,
}

pub struct Consumer {
    session: Session,
    /// Payload bytes left in the current chunk.
    chunk_remaining: usize,
    in_message: bool,
}

impl Consumer {
    pub async fn connect(options: &ClientOptions) -> Result<Consumer, ClientError> {
        let session = open(options, Role::Consumer).await?;
        Ok(Consumer {
            session,
            chunk_remaining: 0,
            in_message: false,
        })
    }

    /// The next message's header; `None` when the server ended the stream.
    pub async fn next_header(&mut self) -> Result<Option<MessageHeader>, ClientError> {
        while self.in_message {
            self.next_chunk().await?;
        }
        let header = self.session.reader.message_header().await?;
        self.in_message = header.is_some();
        Ok(header)
    }

    /// The next part of the current message's body; `None` at its end.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, ClientError> {
        if !self.in_message {
            return Ok(None);
        }
        if self.chunk_remaining == 0 {
            let length = self.session.reader.chunk_length().await?;
            if length == 0 {
                self.in_message = false;
                return Ok(None);
            }
            self.chunk_remaining = length as usize;
        }
        let piece = self.session.reader.payload(self.chunk_remaining).await?;
        self.chunk_remaining -= piece.len();
        Ok(Some(piece))
    }

    /// The next message, whole; `None` when the server ended the stream.
    pub async fn receive(&mut self) -> Result<Option<Message>, ClientError> {
        let Some(header) = self.next_header().await? else {
            return Ok(None);
        };
        let mut body = Vec::with_capacity(header.declared_size.min(64 << 20) as usize);
        while let Some(piece) = self.next_chunk().await? {
            body.extend_from_slice(&piece);
        }
        Ok(Some(Message {
            id: header.message_id,
            key: header.key,
            declared_size: header.declared_size,
            body,
        }))
    }

    pub async fn ack(&mut self, message_id: u64) -> Result<(), ClientError> {
        let mut out = BytesMut::with_capacity(4);
        Frame::ack(message_id).encode(&mut out);
        self.session.writer.write(out.freeze()).await?;
        Ok(())
    }

    /// Closes the connection at once (mid-message too).
    pub fn close(self) {
        self.session.close();
    }

    /// Closes the connection and waits until the close has been sent (a second at most).
    pub async fn shutdown(self) {
        self.session.close_and_flush().await;
    }
}
