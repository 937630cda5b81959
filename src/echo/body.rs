//! The response body type: either one buffer, or a generated pattern that never allocates.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

/// Sixty-four printable bytes; the chunk size is a multiple of this, so the pattern runs on
/// unbroken from one chunk to the next.
pub(super) const PATTERN_ALPHABET: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

const PATTERN_CHUNK_SIZE: usize = 64 * 1024;

/// Built at compile time so that serving `/bytes` costs no allocation or copy per chunk.
static PATTERN_CHUNK: [u8; PATTERN_CHUNK_SIZE] = repeat_alphabet();

const fn repeat_alphabet() -> [u8; PATTERN_CHUNK_SIZE] {
    let mut chunk = [0; PATTERN_CHUNK_SIZE];
    let mut index = 0;
    while index < PATTERN_CHUNK_SIZE {
        chunk[index] = PATTERN_ALPHABET[index % PATTERN_ALPHABET.len()];
        index += 1;
    }
    chunk
}

/// Reports an exact size, so hyper can send `content-length` instead of chunking.
#[derive(Debug)]
pub(super) enum ResponseBody {
    /// `None` once sent, or when there was nothing to send.
    Whole(Option<Bytes>),
    Pattern {
        remaining: u64,
    },
}

impl ResponseBody {
    pub(super) fn whole(content: impl Into<Bytes>) -> ResponseBody {
        let content = content.into();
        ResponseBody::Whole((!content.is_empty()).then_some(content))
    }

    pub(super) fn empty() -> ResponseBody {
        ResponseBody::Whole(None)
    }

    pub(super) fn pattern(length: u64) -> ResponseBody {
        ResponseBody::Pattern { remaining: length }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let frame = match self.get_mut() {
            ResponseBody::Whole(content) => content.take().map(Frame::data),
            ResponseBody::Pattern { remaining } => {
                // Bounded by the chunk size, so the conversion to usize cannot truncate.
                let length = (*remaining).min(PATTERN_CHUNK_SIZE as u64) as usize;
                *remaining -= length as u64;
                (length > 0).then(|| Frame::data(Bytes::from_static(&PATTERN_CHUNK[..length])))
            }
        };
        Poll::Ready(frame.map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Whole(content) => content.is_none(),
            ResponseBody::Pattern { remaining } => *remaining == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Whole(content) => {
                SizeHint::with_exact(content.as_ref().map_or(0, |bytes| bytes.len() as u64))
            }
            ResponseBody::Pattern { remaining } => SizeHint::with_exact(*remaining),
        }
    }
}
