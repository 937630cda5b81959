//! A fast hash for the router's lookup tables (host names and path segments).
//!
//! std's default `SipHash` exists to protect tables that attackers can fill. These tables are
//! filled only from the configuration and never change afterwards; a request can only look a
//! key up, which cannot lengthen any probe sequence, so a cheaper hash is safe. Profiling the
//! 10,000-route bench showed `SipHash` and sorted-vector binary search as the largest costs.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A string-keyed map using [`TableHasher`].
pub(crate) type FastMap<V> = HashMap<Box<str>, V, BuildHasherDefault<TableHasher>>;

/// Mixes eight bytes at a time with a multiply, then scrambles the result once in
/// [`Hasher::finish`] so that keys differing only in their last bytes (`svc1000`, `svc2000`)
/// still land in different buckets: the table uses the low bits, which a multiply alone
/// never fills from the high input bits.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct TableHasher {
    state: u64,
}

/// An odd constant with well-spread bits (2^64 divided by the golden ratio).
const WORD_MULTIPLIER: u64 = 0x9E37_79B9_7F4A_7C15;

impl TableHasher {
    fn mix(&mut self, word: u64) {
        self.state = (self.state.rotate_left(23) ^ word).wrapping_mul(WORD_MULTIPLIER);
    }
}

impl Hasher for TableHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0; 8];
            word.copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(word));
        }
        let remainder = chunks.remainder();
        if !remainder.is_empty() {
            let mut word = [0; 8];
            word[..remainder.len()].copy_from_slice(remainder);
            self.mix(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, byte: u8) {
        self.mix(u64::from(byte));
    }

    fn finish(&self) -> u64 {
        // The 64-bit finaliser of MurmurHash3: every input bit affects every output bit.
        let mut hash = self.state;
        hash ^= hash >> 33;
        hash = hash.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
        hash ^= hash >> 33;
        hash = hash.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
        hash ^= hash >> 33;
        hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::hash::BuildHasher;

    #[test]
    fn similar_keys_spread_over_low_bits() {
        let build = BuildHasherDefault::<TableHasher>::default();
        let buckets: HashSet<u64> = (0..4096)
            .map(|index| build.hash_one(format!("svc{index}")) & 0xFFF)
            .collect();
        // 4,096 random keys fill about 2,590 of 4,096 buckets; far fewer means clustering.
        assert!(buckets.len() > 2400, "only {} buckets used", buckets.len());
    }

    #[test]
    fn finds_what_was_inserted() {
        let mut map: FastMap<usize> = FastMap::default();
        for index in 0..1000 {
            map.insert(format!("host{index}.example.com").into(), index);
        }
        assert_eq!(map.get("host999.example.com"), Some(&999));
        assert_eq!(map.get("host1000.example.com"), None);
    }
}
