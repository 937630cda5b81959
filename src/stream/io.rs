//! One reader and one writer type over the three byte pipes a Loom stream can ride on: a raw
//! QUIC stream half, an HTTP/3 request body / response body on the server, and the same on
//! the client. Sessions and the client are written once against these.

use bytes::{Buf, Bytes, BytesMut};
use h3::error::Code;

type H3ServerSend = h3::server::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;
type H3ServerRecv = h3::server::RequestStream<h3_quinn::RecvStream, Bytes>;
type H3ClientSend = h3::client::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;
type H3ClientRecv = h3::client::RequestStream<h3_quinn::RecvStream, Bytes>;

/// Reading or writing the underlying stream failed (reset, connection lost, stopped).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct TransportError {
    pub message: String,
    /// The peer's application error code, when it reset or stopped the stream with one.
    pub code: Option<u64>,
}

fn transport_error(error: impl std::fmt::Display) -> TransportError {
    TransportError {
        message: error.to_string(),
        code: None,
    }
}

fn quic_write_error(error: quinn::WriteError) -> TransportError {
    let code = match &error {
        quinn::WriteError::Stopped(code) => Some(code.into_inner()),
        _ => None,
    };
    TransportError {
        message: error.to_string(),
        code,
    }
}

fn quic_io_error(error: std::io::Error) -> TransportError {
    match error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<quinn::ReadError>())
    {
        Some(read_error) => quic_read_error(read_error.clone()),
        None => transport_error(error),
    }
}

fn quic_read_error(error: quinn::ReadError) -> TransportError {
    let code = match &error {
        quinn::ReadError::Reset(code) => Some(code.into_inner()),
        _ => None,
    };
    TransportError {
        message: error.to_string(),
        code,
    }
}

pub enum StreamReader {
    Quic(quinn::RecvStream),
    H3Server(H3ServerRecv),
    H3Client(H3ClientRecv),
    /// An HTTP/3 request body we stopped reading (see [`StreamReader::stop`]).
    Dropped,
}

impl StreamReader {
    /// Appends the next bytes that arrive to `buffer`; `Ok(false)` at the end of the stream.
    pub async fn fill(&mut self, buffer: &mut BytesMut) -> Result<bool, TransportError> {
        match self {
            // `read` takes everything that has arrived (many packets) in one call, where
            // `read_chunk` would hand over one packet's worth: fewer, larger pieces downstream
            // are worth the copy.
            StreamReader::Quic(stream) => {
                use tokio::io::AsyncReadExt;
                match stream.read_buf(buffer).await {
                    Ok(0) => Ok(false),
                    Ok(_) => Ok(true),
                    Err(error) => Err(quic_io_error(error)),
                }
            }
            StreamReader::H3Server(stream) => match stream.recv_data().await {
                Ok(Some(data)) => {
                    append(buffer, data);
                    Ok(true)
                }
                Ok(None) => Ok(false),
                Err(error) => Err(transport_error(error)),
            },
            StreamReader::H3Client(stream) => match stream.recv_data().await {
                Ok(Some(data)) => {
                    append(buffer, data);
                    Ok(true)
                }
                Ok(None) => Ok(false),
                Err(error) => Err(transport_error(error)),
            },
            StreamReader::Dropped => Ok(false),
        }
    }

    /// Asks the peer to stop sending (QUIC STOP_SENDING), so its writes fail instead of
    /// blocking on flow control.
    pub fn stop(&mut self, code: u64) {
        match self {
            StreamReader::Quic(stream) => {
                let _ = stream.stop(quinn::VarInt::from_u64(code).unwrap_or_default());
            }
            // h3-quinn's `stop_sending` panics while a read is pending on the stream (the
            // stream then lives inside the read's future), which the h3 layer can leave
            // behind at any time. Dropping the body instead makes quinn send STOP_SENDING
            // itself, with code 0, for whatever was not read.
            StreamReader::H3Server(_) | StreamReader::H3Client(_) => *self = StreamReader::Dropped,
            StreamReader::Dropped => {}
        }
    }
}

fn append(buffer: &mut BytesMut, mut data: impl Buf) {
    while data.has_remaining() {
        let piece = data.chunk();
        let length = piece.len();
        buffer.extend_from_slice(piece);
        data.advance(length);
    }
}

pub enum StreamWriter {
    Quic(quinn::SendStream),
    H3Server(H3ServerSend),
    H3Client(H3ClientSend),
}

impl StreamWriter {
    pub async fn write(&mut self, data: Bytes) -> Result<(), TransportError> {
        if data.is_empty() {
            return Ok(());
        }
        match self {
            StreamWriter::Quic(stream) => stream.write_chunk(data).await.map_err(quic_write_error),
            StreamWriter::H3Server(stream) => stream.send_data(data).await.map_err(transport_error),
            StreamWriter::H3Client(stream) => stream.send_data(data).await.map_err(transport_error),
        }
    }

    /// Writes several pieces; raw QUIC takes them in one call (one lock, fewer packets).
    pub async fn write_many(&mut self, pieces: &mut Vec<Bytes>) -> Result<(), TransportError> {
        match self {
            StreamWriter::Quic(stream) => {
                stream
                    .write_all_chunks(pieces)
                    .await
                    .map_err(quic_write_error)?;
            }
            _ => {
                for piece in pieces.drain(..) {
                    self.write(piece).await?;
                }
            }
        }
        pieces.clear();
        Ok(())
    }

    /// Ends the stream normally (FIN, or the end of the HTTP/3 body).
    pub async fn finish(&mut self) -> Result<(), TransportError> {
        match self {
            StreamWriter::Quic(stream) => stream.finish().map_err(transport_error),
            StreamWriter::H3Server(stream) => stream.finish().await.map_err(transport_error),
            StreamWriter::H3Client(stream) => stream.finish().await.map_err(transport_error),
        }
    }

    /// Raw QUIC: waits until the peer has every byte, or has asked us to stop sending (an
    /// error carrying its code). A no-op on HTTP/3, whose answer is the response status.
    pub async fn stopped(&mut self) -> Result<(), TransportError> {
        let StreamWriter::Quic(stream) = self else {
            return Ok(());
        };
        match stream.stopped().await {
            Ok(None) => Ok(()),
            Ok(Some(code)) => Err(TransportError {
                message: format!(
                    "the peer stopped the stream with code 0x{:x}",
                    code.into_inner()
                ),
                code: Some(code.into_inner()),
            }),
            Err(error) => Err(transport_error(error)),
        }
    }

    /// Abandons the stream with an application error code (QUIC RESET_STREAM).
    pub fn reset(&mut self, code: u64) {
        match self {
            StreamWriter::Quic(stream) => {
                let _ = stream.reset(quinn::VarInt::from_u64(code).unwrap_or_default());
            }
            StreamWriter::H3Server(stream) => stream.stop_stream(Code::from(code)),
            StreamWriter::H3Client(stream) => stream.stop_stream(Code::from(code)),
        }
    }

    /// Sends the HTTP/3 response head; a no-op on raw QUIC, which has none.
    pub async fn send_status(
        &mut self,
        status: http::StatusCode,
        octet_stream: bool,
    ) -> Result<(), TransportError> {
        let StreamWriter::H3Server(stream) = self else {
            return Ok(());
        };
        let mut builder = http::Response::builder().status(status);
        if octet_stream {
            builder = builder.header(http::header::CONTENT_TYPE, "application/octet-stream");
        }
        let response = builder.body(()).map_err(transport_error)?;
        stream
            .send_response(response)
            .await
            .map_err(transport_error)
    }
}
