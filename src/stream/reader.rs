//! Buffered, incremental reading of wire frames from a [`StreamReader`]; shared by the
//! server's sessions and the client.

use bytes::{Buf, Bytes, BytesMut};

use super::io::{StreamReader, TransportError};
use super::wire::{self, Frame, Hello, MessageHeader, WireError, WireLimits};

/// Read buffer growth step: a few default-sized chunks, so one read can take what a burst
/// of packets delivered.
const READ_RESERVE: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("protocol error: {0}")]
    Wire(#[from] WireError),
    #[error("transport error: {0}")]
    Transport(#[from] TransportError),
}

pub struct FrameReader {
    reader: StreamReader,
    buffer: BytesMut,
    limits: WireLimits,
}

impl FrameReader {
    pub fn new(reader: StreamReader, limits: WireLimits) -> FrameReader {
        FrameReader {
            reader,
            buffer: BytesMut::with_capacity(READ_RESERVE),
            limits,
        }
    }

    pub fn limits(&self) -> &WireLimits {
        &self.limits
    }

    /// Bytes received but not yet consumed.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    pub fn inner_mut(&mut self) -> &mut StreamReader {
        &mut self.reader
    }

    pub fn stop(&mut self, code: u64) {
        self.reader.stop(code);
    }

    /// Reads more; `Ok(false)` at the end of the stream.
    async fn fill(&mut self) -> Result<bool, TransportError> {
        if self.buffer.capacity() - self.buffer.len() < 16 * 1024 {
            self.buffer.reserve(READ_RESERVE);
        }
        self.reader.fill(&mut self.buffer).await
    }

    /// Decodes one item, reading as needed. At a clean end of stream with nothing buffered
    /// the answer is `None` when `end_allowed`, otherwise a `Truncated` error naming `what`.
    async fn decode<T>(
        &mut self,
        what: &'static str,
        end_allowed: bool,
        decode: impl Fn(&[u8], &WireLimits) -> Result<Option<(T, usize)>, WireError>,
    ) -> Result<Option<T>, ReadError> {
        loop {
            if let Some((value, used)) = decode(&self.buffer, &self.limits)? {
                self.buffer.advance(used);
                return Ok(Some(value));
            }
            if !self.fill().await? {
                if end_allowed && self.buffer.is_empty() {
                    return Ok(None);
                }
                return Err(WireError::Truncated(what).into());
            }
        }
    }

    pub async fn hello(&mut self) -> Result<Hello, ReadError> {
        self.decode("the hello", false, Hello::decode)
            .await?
            .ok_or(ReadError::Wire(WireError::Truncated("the hello")))
    }

    /// The next message's header, or `None` at a clean end of stream.
    pub async fn message_header(&mut self) -> Result<Option<MessageHeader>, ReadError> {
        self.decode("a message header", true, MessageHeader::decode)
            .await
    }

    /// The next chunk length; 0 is the end of the message.
    pub async fn chunk_length(&mut self) -> Result<u64, ReadError> {
        self.decode("a message", false, wire::decode_chunk_length)
            .await?
            .ok_or(ReadError::Wire(WireError::Truncated("a message")))
    }

    /// Up to `wanted` bytes of payload, at least one; reads only when nothing is buffered.
    pub async fn payload(&mut self, wanted: usize) -> Result<Bytes, ReadError> {
        while self.buffer.is_empty() {
            if !self.fill().await? {
                return Err(WireError::Truncated("a chunk").into());
            }
        }
        let length = wanted.min(self.buffer.len());
        Ok(self.buffer.split_to(length).freeze())
    }

    /// `length` bytes that are already buffered (check [`FrameReader::buffered`] first).
    pub fn take_buffered(&mut self, length: usize) -> bytes::buf::Take<&mut BytesMut> {
        (&mut self.buffer).take(length)
    }

    /// The next consumer frame, or `None` at a clean end of stream.
    pub async fn frame(&mut self) -> Result<Option<Frame>, ReadError> {
        self.decode("a frame", true, |input, limits| {
            Frame::decode(input, limits.max_varint)
        })
        .await
    }
}
