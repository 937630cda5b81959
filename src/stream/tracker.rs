//! loomd's producer error tracker, keyed better: a client that keeps breaking the wire format
//! in a room (`max_protocol_errors` within `protocol_error_window`) has its new producer
//! streams there refused until the window passes. loomd keys this on `room:name:ip:port`, so
//! reconnecting from a new port escapes it (its bug B7), applies it to raw QUIC only, and
//! never cleans the map; here the key is room and client IP, both protocols count, and expired
//! entries are swept.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

struct Window {
    started: Instant,
    errors: u32,
}

#[derive(Default)]
pub struct ErrorTracker {
    windows: Mutex<HashMap<(String, IpAddr), Window>>,
}

impl ErrorTracker {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, IpAddr), Window>> {
        self.windows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts one protocol error by `client` in `room`.
    pub fn record(&self, room: &str, client: IpAddr, window: Duration) {
        let now = Instant::now();
        let mut windows = self.lock();
        let entry = windows.entry((room.to_string(), client)).or_insert(Window {
            started: now,
            errors: 0,
        });
        if now.duration_since(entry.started) >= window {
            *entry = Window {
                started: now,
                errors: 0,
            };
        }
        entry.errors += 1;
    }

    /// True when `client` has had more than `limit` errors in `room` within the window.
    pub fn is_blocked(&self, room: &str, client: IpAddr, limit: u32, window: Duration) -> bool {
        if limit == 0 {
            return false;
        }
        let windows = self.lock();
        windows
            .get(&(room.to_string(), client))
            .is_some_and(|entry| entry.errors > limit && entry.started.elapsed() < window)
    }

    /// Forgets windows that have passed.
    pub fn sweep(&self, window: Duration) {
        self.lock()
            .retain(|_, entry| entry.started.elapsed() < window);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_the_limit_within_the_window_only() {
        let tracker = ErrorTracker::default();
        let client: IpAddr = "10.0.0.1".parse().unwrap();
        let window = Duration::from_secs(300);
        for _ in 0..3 {
            tracker.record("room", client, window);
        }
        assert!(!tracker.is_blocked("room", client, 3, window));
        tracker.record("room", client, window);
        assert!(tracker.is_blocked("room", client, 3, window));
        assert!(!tracker.is_blocked("other", client, 3, window));
        assert!(!tracker.is_blocked("room", "10.0.0.2".parse().unwrap(), 3, window));
        assert!(
            !tracker.is_blocked("room", client, 0, window),
            "0 turns it off"
        );
        tracker.sweep(Duration::ZERO);
        assert!(!tracker.is_blocked("room", client, 3, window));
    }
}
