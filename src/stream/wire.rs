//! The Loom v4 wire format: varints, the stream hello, message headers, chunks and ACK frames.
//!
//! Decoding is incremental and never panics: every `decode_*` function looks at a byte slice
//! and answers `Ok(Some((value, bytes_used)))`, `Ok(None)` when more bytes are needed, or an
//! error that says which rule was broken. Encoding always writes minimal varints, as the Go
//! reference does; decoding accepts non-minimal ones, as the Go reader does.

use bytes::{BufMut, Bytes, BytesMut};

pub const MAGIC: &[u8; 4] = b"LOOM";
pub const VERSION: u8 = 4;
/// ACK is the only frame type a consumer sends; other types are read and ignored.
pub const FRAME_TYPE_ACK: u64 = 1;
/// The reference server rejects any varint above 2^50 as stream corruption.
pub const DEFAULT_MAX_VARINT: u64 = 1 << 50;
/// The longest varint Go's `binary.ReadUvarint` accepts.
const MAX_VARINT_BYTES: usize = 10;

/// Which side of a room a stream joins, from the hello's role byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Producer,
    Consumer,
}

impl Role {
    pub fn byte(self) -> u8 {
        match self {
            Role::Producer => b'P',
            Role::Consumer => b'C',
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Role::Producer => "producer",
            Role::Consumer => "consumer",
        }
    }
}

/// The limits the decoder enforces; all come from the `router:` config section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireLimits {
    pub max_name_bytes: u64,
    pub max_room_bytes: u64,
    pub max_token_bytes: u64,
    pub max_key_bytes: u64,
    pub max_chunk_bytes: u64,
    pub max_varint: u64,
}

impl Default for WireLimits {
    fn default() -> WireLimits {
        WireLimits {
            max_name_bytes: 128,
            max_room_bytes: 128,
            max_token_bytes: 1024,
            max_key_bytes: 256,
            max_chunk_bytes: 65_536,
            max_varint: DEFAULT_MAX_VARINT,
        }
    }
}

/// A broken rule of the wire format. [`WireError::kind`] is the metrics label.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("bad magic (expected \"LOOM\")")]
    BadMagic,
    #[error("unsupported protocol version {0} (expected 4)")]
    BadVersion(u8),
    #[error("unknown role byte 0x{0:02x} (expected 'P' or 'C')")]
    BadRole(u8),
    #[error("{field} is {length} bytes, over the limit of {limit}")]
    FieldTooLong {
        field: &'static str,
        length: u64,
        limit: u64,
    },
    #[error("empty key")]
    EmptyKey,
    #[error("key is {length} bytes, over the limit of {limit}")]
    KeyTooLarge { length: u64, limit: u64 },
    #[error("chunk is {length} bytes, over the limit of {limit}")]
    ChunkTooLarge { length: u64, limit: u64 },
    #[error("varint value {value} is over the limit of {limit}")]
    VarintTooLarge { value: u64, limit: u64 },
    #[error("varint overflows 64 bits")]
    VarintOverflow,
    #[error("stream ended inside {0}")]
    Truncated(&'static str),
}

impl WireError {
    pub fn kind(&self) -> &'static str {
        match self {
            WireError::BadMagic => "bad_magic",
            WireError::BadVersion(_) => "bad_version",
            WireError::BadRole(_) => "bad_role",
            WireError::FieldTooLong { .. } => "field_too_long",
            WireError::EmptyKey => "empty_key",
            WireError::KeyTooLarge { .. } => "key_too_large",
            WireError::ChunkTooLarge { .. } => "chunk_too_large",
            WireError::VarintTooLarge { .. } => "varint_too_large",
            WireError::VarintOverflow => "varint_overflow",
            WireError::Truncated(_) => "truncated",
        }
    }
}

type Decoded<T> = Result<Option<(T, usize)>, WireError>;

/// Appends `value` as a minimal unsigned LEB128 varint.
pub fn put_varint(out: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        out.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    out.put_u8(value as u8);
}

/// How many bytes `put_varint` writes for `value`.
pub fn varint_len(value: u64) -> usize {
    let bits = 64 - (value | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Decodes one varint, rejecting values above `max_value`.
pub fn decode_varint(input: &[u8], max_value: u64) -> Decoded<u64> {
    let mut value: u64 = 0;
    for (index, &byte) in input.iter().enumerate().take(MAX_VARINT_BYTES) {
        if index == MAX_VARINT_BYTES - 1 && byte > 1 {
            return Err(WireError::VarintOverflow);
        }
        value |= u64::from(byte & 0x7f) << (7 * index);
        if byte & 0x80 == 0 {
            if value > max_value {
                return Err(WireError::VarintTooLarge {
                    value,
                    limit: max_value,
                });
            }
            return Ok(Some((value, index + 1)));
        }
    }
    if input.len() >= MAX_VARINT_BYTES {
        return Err(WireError::VarintOverflow);
    }
    Ok(None)
}

/// The stream preface every producer and consumer sends first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    pub role: Role,
    pub name: Bytes,
    pub room: Bytes,
    pub token: Bytes,
}

impl Hello {
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_slice(MAGIC);
        out.put_u8(VERSION);
        out.put_u8(self.role.byte());
        for field in [&self.name, &self.room, &self.token] {
            put_varint(out, field.len() as u64);
            out.put_slice(field);
        }
    }

    /// Checks in the reference order: magic and version, the three fields with their
    /// limits, then the role byte.
    pub fn decode(input: &[u8], limits: &WireLimits) -> Decoded<Hello> {
        if input.len() < 6 {
            // A wrong magic is reported as soon as its bytes are in, not after 6 bytes.
            if !MAGIC.starts_with(&input[..input.len().min(4)]) {
                return Err(WireError::BadMagic);
            }
            return Ok(None);
        }
        if &input[..4] != MAGIC {
            return Err(WireError::BadMagic);
        }
        if input[4] != VERSION {
            return Err(WireError::BadVersion(input[4]));
        }
        let role_byte = input[5];
        let mut position = 6;
        let mut fields: [Bytes; 3] = Default::default();
        let specs = [
            ("name", limits.max_name_bytes),
            ("room", limits.max_room_bytes),
            ("token", limits.max_token_bytes),
        ];
        for (slot, (field, limit)) in fields.iter_mut().zip(specs) {
            let Some((length, used)) = decode_varint(&input[position..], limits.max_varint)? else {
                return Ok(None);
            };
            if length > limit {
                return Err(WireError::FieldTooLong {
                    field,
                    length,
                    limit,
                });
            }
            position += used;
            let length = length as usize;
            if input.len() - position < length {
                return Ok(None);
            }
            *slot = Bytes::copy_from_slice(&input[position..position + length]);
            position += length;
        }
        let role = match role_byte {
            b'P' => Role::Producer,
            b'C' => Role::Consumer,
            other => return Err(WireError::BadRole(other)),
        };
        let [name, room, token] = fields;
        Ok(Some((
            Hello {
                role,
                name,
                room,
                token,
            },
            position,
        )))
    }
}

/// The fields before a message's chunks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageHeader {
    pub key: Bytes,
    /// Total body bytes as the producer announced them; 0 means unknown. Advisory only.
    pub declared_size: u64,
    pub message_id: u64,
}

impl MessageHeader {
    pub fn encode(&self, out: &mut BytesMut) {
        encode_header_parts(out, &self.key, self.declared_size, self.message_id);
    }

    pub fn decode(input: &[u8], limits: &WireLimits) -> Decoded<MessageHeader> {
        let Some((key_length, mut position)) = decode_varint(input, limits.max_varint)? else {
            return Ok(None);
        };
        if key_length == 0 {
            return Err(WireError::EmptyKey);
        }
        if key_length > limits.max_key_bytes {
            return Err(WireError::KeyTooLarge {
                length: key_length,
                limit: limits.max_key_bytes,
            });
        }
        let key_length = key_length as usize;
        if input.len() - position < key_length {
            return Ok(None);
        }
        let key = Bytes::copy_from_slice(&input[position..position + key_length]);
        position += key_length;
        let Some((declared_size, used)) = decode_varint(&input[position..], limits.max_varint)?
        else {
            return Ok(None);
        };
        position += used;
        let Some((message_id, used)) = decode_varint(&input[position..], limits.max_varint)? else {
            return Ok(None);
        };
        position += used;
        Ok(Some((
            MessageHeader {
                key,
                declared_size,
                message_id,
            },
            position,
        )))
    }
}

/// Writes a message header without building a [`MessageHeader`] (the server rewrites the id).
pub fn encode_header_parts(out: &mut BytesMut, key: &[u8], declared_size: u64, message_id: u64) {
    put_varint(out, key.len() as u64);
    out.put_slice(key);
    put_varint(out, declared_size);
    put_varint(out, message_id);
}

/// Decodes a chunk length: 0 is the end of the message.
pub fn decode_chunk_length(input: &[u8], limits: &WireLimits) -> Decoded<u64> {
    let Some((length, used)) = decode_varint(input, limits.max_varint)? else {
        return Ok(None);
    };
    if length > limits.max_chunk_bytes {
        return Err(WireError::ChunkTooLarge {
            length,
            limit: limits.max_chunk_bytes,
        });
    }
    Ok(Some((length, used)))
}

/// Writes one chunk (length and bytes). `payload` must not be empty: 0 means end of message.
pub fn encode_chunk(out: &mut BytesMut, payload: &[u8]) {
    debug_assert!(!payload.is_empty());
    put_varint(out, payload.len() as u64);
    out.put_slice(payload);
}

/// Writes the end-of-message marker.
pub fn encode_end_of_message(out: &mut BytesMut) {
    out.put_u8(0);
}

/// A consumer → server frame: two varints, type and message id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    pub frame_type: u64,
    pub message_id: u64,
}

impl Frame {
    pub fn ack(message_id: u64) -> Frame {
        Frame {
            frame_type: FRAME_TYPE_ACK,
            message_id,
        }
    }

    pub fn encode(&self, out: &mut BytesMut) {
        put_varint(out, self.frame_type);
        put_varint(out, self.message_id);
    }

    pub fn decode(input: &[u8], max_varint: u64) -> Decoded<Frame> {
        let Some((frame_type, first)) = decode_varint(input, max_varint)? else {
            return Ok(None);
        };
        let Some((message_id, second)) = decode_varint(&input[first..], max_varint)? else {
            return Ok(None);
        };
        Ok(Some((
            Frame {
                frame_type,
                message_id,
            },
            first + second,
        )))
    }
}

#[cfg(test)]
#[path = "wire_tests.rs"]
mod tests;
