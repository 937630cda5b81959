//! Credentials as clients send them and configs store them: SHA-256 digests in hex (Go
//! Loom's format), `Authorization: Basic` headers, and comparisons that take the same time
//! whatever the first differing byte. Shared by the admin listener's auth and the
//! `basic_auth` / `key_auth` policies.

use sha2::{Digest, Sha256};

pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut digest = [0; 32];
    digest.copy_from_slice(&Sha256::digest(bytes));
    digest
}

/// 64 hexadecimal characters (either case) as 32 bytes.
pub(crate) fn parse_digest(text: &str) -> Option<[u8; 32]> {
    let text = text.trim().as_bytes();
    if text.len() != 64 {
        return None;
    }
    let mut digest = [0; 32];
    for (byte, pair) in digest.iter_mut().zip(text.chunks_exact(2)) {
        *byte = (hex_value(pair[0])? << 4) | hex_value(pair[1])?;
    }
    Some(digest)
}

pub(crate) fn hex_value(character: u8) -> Option<u8> {
    match character {
        b'0'..=b'9' => Some(character - b'0'),
        b'a'..=b'f' => Some(character - b'a' + 10),
        b'A'..=b'F' => Some(character - b'A' + 10),
        _ => None,
    }
}

/// Equal length and equal bytes, looking at every byte whatever the first difference. (The
/// length itself is not secret: every digest is 32 bytes, and a name's length is public.)
pub(crate) fn constant_time_equal(left: &[u8], right: &[u8]) -> bool {
    // `subtle` keeps the comparison branch-free through the optimiser.
    bool::from(subtle::ConstantTimeEq::ct_eq(left, right))
}

/// The name and password of an `Authorization: Basic <base64 of name:password>` header
/// (RFC 7617); the scheme name in any case.
pub(crate) fn basic_credentials(header: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let text = std::str::from_utf8(header).ok()?.trim();
    let (scheme, encoded) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let mut name = decode_base64(encoded.trim())?;
    let colon = name.iter().position(|byte| *byte == b':')?;
    let password = name.split_off(colon + 1);
    name.truncate(colon);
    Some((name, password))
}

/// Standard base64 (RFC 4648 section 4, the alphabet with `+` and `/`), padding optional;
/// `None` for anything else. Written here because no base64 crate is a direct dependency and
/// a credentials header is all it decodes.
pub(crate) fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let unpadded = match bytes {
        [rest @ .., b'=', b'='] => rest,
        [rest @ .., b'='] => rest,
        all => all,
    };
    // Padding, when present, completes the last group of four; one character alone in a
    // group cannot encode a byte.
    if (unpadded.len() != bytes.len() && !bytes.len().is_multiple_of(4)) || unpadded.len() % 4 == 1
    {
        return None;
    }
    let mut decoded = Vec::with_capacity(unpadded.len() / 4 * 3 + 2);
    let mut buffer: u32 = 0;
    let mut buffered_bits: u32 = 0;
    for &character in unpadded {
        let value = match character {
            b'A'..=b'Z' => character - b'A',
            b'a'..=b'z' => character - b'a' + 26,
            b'0'..=b'9' => character - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        buffer = (buffer << 6) | u32::from(value);
        buffered_bits += 6;
        if buffered_bits >= 8 {
            buffered_bits -= 8;
            decoded.push((buffer >> buffered_bits) as u8);
            buffer &= (1 << buffered_bits) - 1;
        }
    }
    Some(decoded)
}
