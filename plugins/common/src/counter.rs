//! Counters in the host's shared data, updated with compare-and-swap.
//!
//! Shared data is shared by every VM instance of the plugin (one per worker thread in most
//! hosts), so a read-modify-write must carry the CAS token of the read and retry when another
//! instance got there first.

use log::warn;
use proxy_wasm::hostcalls;
use proxy_wasm::types::Status;

/// How often an update is retried after a CAS mismatch before giving up.
pub const MAX_CAS_ATTEMPTS: usize = 10;

/// What happened to a counter update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CounterUpdate {
    /// The new value was stored.
    Stored(u64),
    /// The update function declined to change the value it was shown.
    Declined(u64),
    /// Other instances kept winning the race (or the host refused the write); nothing stored.
    GaveUp,
}

/// Decodes a counter: a decimal string (what these plugins write) or 8 little-endian bytes
/// (what some Envoy-era plugins write). Anything else, including a deleted (empty) value,
/// reads as 0.
pub fn decode(value: &[u8]) -> u64 {
    if !value.is_empty() && value.iter().all(u8::is_ascii_digit) {
        return std::str::from_utf8(value)
            .ok()
            .and_then(|digits| digits.parse().ok())
            .unwrap_or(0);
    }
    match <[u8; 8]>::try_from(value) {
        Ok(bytes) => u64::from_le_bytes(bytes),
        Err(_) => 0,
    }
}

/// The current value of the counter at `key` (0 when absent).
pub fn read(key: &str) -> u64 {
    match hostcalls::get_shared_data(key) {
        Ok((Some(value), _)) => decode(&value),
        _ => 0,
    }
}

/// Applies `next` to the counter at `key` atomically: `next` sees the current value and returns
/// the value to store, or `None` to leave it alone. `next` may run several times.
///
/// A key that does not exist yet has no CAS token, and the SDK then writes without a check, so
/// two instances creating the same key at the same moment can both write their first value.
pub fn update(key: &str, mut next: impl FnMut(u64) -> Option<u64>) -> CounterUpdate {
    for _ in 0..MAX_CAS_ATTEMPTS {
        let (value, cas) = match hostcalls::get_shared_data(key) {
            Ok(read) => read,
            Err(status) => {
                warn!("shared data read of {key} failed: {status:?}");
                return CounterUpdate::GaveUp;
            }
        };
        let current = value.as_deref().map_or(0, decode);
        let Some(new_value) = next(current) else {
            return CounterUpdate::Declined(current);
        };
        match hostcalls::set_shared_data(key, Some(new_value.to_string().as_bytes()), cas) {
            Ok(()) => return CounterUpdate::Stored(new_value),
            Err(Status::CasMismatch) => continue,
            Err(status) => {
                warn!("shared data write of {key} failed: {status:?}");
                return CounterUpdate::GaveUp;
            }
        }
    }
    warn!("shared data update of {key} lost the CAS race {MAX_CAS_ATTEMPTS} times");
    CounterUpdate::GaveUp
}

/// Adds `amount` to the counter at `key`, saturating at `u64::MAX`.
pub fn add(key: &str, amount: u64) -> CounterUpdate {
    update(key, |current| Some(current.saturating_add(amount)))
}

#[cfg(test)]
mod tests {
    use super::decode;

    #[test]
    fn decodes_decimal_and_little_endian_values() {
        assert_eq!(decode(b"42"), 42);
        assert_eq!(decode(b"12345678"), 12_345_678);
        assert_eq!(decode(&7u64.to_le_bytes()), 7);
        assert_eq!(decode(b""), 0);
        assert_eq!(decode(b"x1"), 0);
    }
}
