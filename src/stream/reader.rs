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
    /// How the stream ended, when [`FrameReader::read_ahead_while`] reached its end before
    /// the frames buffered ahead of it were decoded: reported once those are used up.
    end: Option<Result<(), TransportError>>,
}

impl FrameReader {
    pub fn new(reader: StreamReader, limits: WireLimits) -> FrameReader {
        FrameReader {
            reader,
            buffer: BytesMut::with_capacity(READ_RESERVE),
            limits,
            end: None,
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
        match self.end.take() {
            None => self.read_more().await,
            Some(Ok(())) => {
                self.end = Some(Ok(()));
                Ok(false)
            }
            Some(Err(error)) => Err(error),
        }
    }

    async fn read_more(&mut self) -> Result<bool, TransportError> {
        if self.buffer.capacity() - self.buffer.len() < 16 * 1024 {
            self.buffer.reserve(READ_RESERVE);
        }
        self.reader.fill(&mut self.buffer).await
    }

    /// Runs `work` to its end and meanwhile keeps taking what arrives on the stream, until
    /// `limit` bytes are buffered. A producer that waits on its consumers uses this so that
    /// the QUIC stack's reassembly buffer does not fill up with the producer's small frames
    /// (quinn aborts a connection whose stream buffer has too many separate pieces).
    /// Reading is cancel-safe, so nothing is lost when `work` finishes mid-read.
    pub async fn read_ahead_while<T>(
        &mut self,
        limit: usize,
        work: impl std::future::Future<Output = T>,
    ) -> T {
        let mut work = std::pin::pin!(work);
        loop {
            let reading = self.end.is_none() && self.buffer.len() < limit;
            tokio::select! {
                biased;
                output = &mut work => return output,
                result = self.read_more(), if reading => match result {
                    Ok(true) => {}
                    Ok(false) => self.end = Some(Ok(())),
                    Err(error) => self.end = Some(Err(error)),
                },
            }
        }
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
