//! 128-bit keyed digests of client-chosen bytes (an IP, a header value, a credential), used as
//! the keys of the tables that limits and caches keep per client.
//!
//! Storing a digest instead of the bytes means no allocation per request and a fixed 16 bytes
//! per entry however long the header a client sends. The digest is one run of SipHash-1-3
//! with its 128-bit output, keyed at start-up, so clients cannot aim for collisions; two distinct keys collide
//! with a probability around 2^-128 per pair, far below anything a table of millions of
//! clients could meet. The tables are then indexed by the digest's own low bits
//! ([`DigestMap`]): hashing a random-looking value again would buy nothing.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::LazyLock;

/// One part of a key; the tag keeps `("ab", "c")` and `("a", "bc")` apart.
pub fn digest(parts: &[(u8, &[u8])]) -> u128 {
    // The keys come from the standard library's per-process random hasher keys (drawn from
    // the operating system), passed through it once so that they are not those keys.
    static KEYS: LazyLock<(u64, u64)> = LazyLock::new(|| {
        let (first, second) = (RandomState::new(), RandomState::new());
        (first.hash_one(0u8), second.hash_one(1u8))
    });
    // One SipHash-1-3 run with a 128-bit output (the `siphasher` crate) costs half of the
    // two 64-bit runs it replaces (about 300 instructions for a short key).
    let mut hasher = siphasher::sip128::SipHasher13::new_with_keys(KEYS.0, KEYS.1);
    for (tag, bytes) in parts {
        hasher.write_u8(*tag);
        hasher.write_usize(bytes.len());
        hasher.write(bytes);
    }
    siphasher::sip128::Hasher128::finish128(&hasher).as_u128()
}

/// A cheaper 128-bit keyed digest for keys where a collision only merges two clients'
/// counts (rate and concurrency limits): aHash (already in the tree through Pingora) with
/// keys drawn at start-up, a few dozen instructions for a short key instead of two SipHash
/// runs. Never for credentials: there a collision would let one key pass for another, so
/// [`digest`] is used.
pub fn limit_digest(parts: &[(u8, &[u8])]) -> u128 {
    static KEYS: LazyLock<(ahash::RandomState, ahash::RandomState)> =
        LazyLock::new(|| (ahash::RandomState::new(), ahash::RandomState::new()));
    let mut low = KEYS.0.build_hasher();
    let mut high = KEYS.1.build_hasher();
    for (tag, bytes) in parts {
        for hasher in [&mut low, &mut high] {
            hasher.write_u8(*tag);
            hasher.write_usize(bytes.len());
            hasher.write(bytes);
        }
    }
    (u128::from(high.finish()) << 64) | u128::from(low.finish())
}

/// A `DashMap` keyed by [`digest`]s.
pub type DigestMap<V> = dashmap::DashMap<u128, V, BuildHasherDefault<DigestHasher>>;

/// Passes a digest's low 64 bits through as its hash.
#[derive(Debug, Default, Clone, Copy)]
pub struct DigestHasher(u64);

impl Hasher for DigestHasher {
    /// Digests (and SHA-256 digests, which key_auth's table holds) are random already: their
    /// first eight bytes are the hash. Shorter input is mixed byte by byte.
    fn write(&mut self, bytes: &[u8]) {
        if let Some(word) = bytes.first_chunk::<8>() {
            self.0 ^= u64::from_le_bytes(*word);
            return;
        }
        for byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*byte)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u128(&mut self, value: u128) {
        self.0 = value as u64;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_kept_apart_and_digests_are_stable_within_a_process() {
        let one = digest(&[(1, b"ab"), (2, b"c")]);
        assert_eq!(one, digest(&[(1, b"ab"), (2, b"c")]));
        assert_ne!(one, digest(&[(1, b"a"), (2, b"bc")]));
        assert_ne!(one, digest(&[(2, b"ab"), (1, b"c")]));
    }
}
