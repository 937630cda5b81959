//! The wall-clock time of a recent moment without reading the wall clock each time: the access
//! log stamps every line with when its request started, and plugins read that start as
//! `request.time`. Each thread takes a pair of clock readings (monotonic and wall) at most once
//! a second and measures from it; a clock step (NTP, an operator) shows within a second.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a thread's pair of readings is used before it takes a new one.
const ANCHOR_LIFETIME: Duration = Duration::from_secs(1);

thread_local! {
    /// When the anchor was taken, and the wall clock then in nanoseconds since the epoch
    /// (a u64 lasts until 2554; u128 arithmetic would cost a library call per use).
    static ANCHOR: std::cell::Cell<Option<(Instant, u64)>> = const { std::cell::Cell::new(None) };
}

/// `instant` (a moment within the last few seconds, such as when a request started) in
/// nanoseconds since the Unix epoch.
pub fn unix_nanos_at(instant: Instant) -> u64 {
    let from_anchor = |(anchor_instant, anchor_nanos): (Instant, u64)| {
        // One subtraction of two instants: `checked_duration_since` is `None` before the
        // anchor, which is then the other way round.
        match instant.checked_duration_since(anchor_instant) {
            Some(after) if after < ANCHOR_LIFETIME => {
                Some(anchor_nanos.saturating_add(after.as_nanos() as u64))
            }
            Some(_) => None,
            None => {
                let before = anchor_instant.duration_since(instant);
                (before < ANCHOR_LIFETIME)
                    .then(|| anchor_nanos.saturating_sub(before.as_nanos() as u64))
            }
        }
    };
    if let Some(nanos) = ANCHOR.get().and_then(from_anchor) {
        return nanos;
    }
    let now = Instant::now();
    // A clock set before 1970 is a broken host; the epoch keeps the answer meaningful.
    let wall_nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
        });
    ANCHOR.set(Some((now, wall_nanos)));
    from_anchor((now, wall_nanos)).unwrap_or_else(|| {
        // Older than the anchor's lifetime: measured from the new anchor.
        let before =
            u64::try_from(now.saturating_duration_since(instant).as_nanos()).unwrap_or(u64::MAX);
        wall_nanos.saturating_sub(before)
    })
}

/// [`unix_nanos_at`] in milliseconds.
pub fn unix_millis_at(instant: Instant) -> u64 {
    unix_nanos_at(instant) / 1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wall_time_follows_the_clock_within_its_precision() {
        let started = Instant::now();
        let wall = SystemTime::now();
        for instant in [
            started,
            started + Duration::from_millis(250),
            started - Duration::from_millis(400),
            started - Duration::from_secs(5),
        ] {
            let expected = if instant >= started {
                wall + (instant - started)
            } else {
                wall - (started - instant)
            };
            let expected = expected
                .duration_since(UNIX_EPOCH)
                .expect("after 1970")
                .as_nanos() as u64;
            let got = unix_nanos_at(instant);
            assert!(
                got.abs_diff(expected) < 50_000_000,
                "{instant:?}: {got} ns, expected {expected} ns"
            );
            assert_eq!(unix_millis_at(instant), unix_nanos_at(instant) / 1_000_000);
        }
    }
}
