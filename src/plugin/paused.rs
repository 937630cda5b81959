//! Requests a plugin has paused in a header phase, waiting for another context to act on
//! them, as Envoy lets plugins do: a root context (on tick, on a queue, on a call's answer)
//! or another request's context calls `proxy_set_effective_context(id)` and then
//! `proxy_continue_stream`, `proxy_send_local_response` or `proxy_close_stream`.
//!
//! A context is registered here while its shard is still locked after the callback that
//! answered Pause, and every callback that could act on it needs that same lock: an event
//! for it cannot arrive before it is registered. Events for contexts that are not paused are
//! dropped, as Envoy ignores a continue on a running stream. Only paused requests touch this
//! table.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use super::abi::MapType;
use super::host::LocalResponse;
use super::host::maps::Write;

/// What another context asked of a paused request.
#[derive(Debug)]
pub enum StreamEvent {
    ResumeRequest,
    ResumeResponse,
    Respond(LocalResponse),
    Close,
    /// A header write (`proxy_add/replace/remove_header_map_value`) made while this context
    /// was the effective one; applied in order when the request runs again.
    EditHeader {
        map: MapType,
        name: String,
        value: Vec<u8>,
        how: Write,
    },
    /// `proxy_set_header_map_pairs` under this context: the whole map replaced.
    ReplaceHeaders {
        map: MapType,
        pairs: Vec<(Vec<u8>, Vec<u8>)>,
    },
    /// The instance holding the context was replaced after a failure.
    Lost,
}

/// Events kept per paused context.
const MAX_EVENTS: usize = 16;

struct Waiter {
    wake: Arc<Notify>,
    events: Vec<StreamEvent>,
}

/// One plugin's paused contexts, by (shard, context id).
#[derive(Default)]
pub struct PausedStreams {
    waiters: Mutex<HashMap<(usize, u32), Waiter>>,
}

impl PausedStreams {
    fn lock(&self) -> MutexGuard<'_, HashMap<(usize, u32), Waiter>> {
        self.waiters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Marks a context paused, with a fresh waiter: nothing meant for an earlier holder of
    /// the same id (a replaced instance numbers its contexts again) can reach it.
    pub fn register(&self, shard: usize, context_id: u32) {
        self.lock().insert(
            (shard, context_id),
            Waiter {
                wake: Arc::new(Notify::new()),
                events: Vec::new(),
            },
        );
    }

    /// Hands `event` to the paused context; false when it is not paused.
    pub fn deliver(&self, shard: usize, context_id: u32, event: StreamEvent) -> bool {
        let mut waiters = self.lock();
        let Some(waiter) = waiters.get_mut(&(shard, context_id)) else {
            return false;
        };
        // The first decisive event ends the wait; a plugin that keeps sending more cannot
        // grow the queue.
        if waiter.events.len() >= MAX_EVENTS {
            return true;
        }
        waiter.events.push(event);
        // `notify_one` stores a permit when nobody waits yet, so no wake-up is lost.
        waiter.wake.notify_one();
        true
    }

    /// What wakes the paused context, if it is registered.
    pub fn wake_signal(&self, shard: usize, context_id: u32) -> Option<Arc<Notify>> {
        self.lock()
            .get(&(shard, context_id))
            .map(|waiter| Arc::clone(&waiter.wake))
    }

    pub fn take_events(&self, shard: usize, context_id: u32) -> Vec<StreamEvent> {
        self.lock()
            .get_mut(&(shard, context_id))
            .map(|waiter| std::mem::take(&mut waiter.events))
            .unwrap_or_default()
    }

    /// The context runs again (or is gone): later events for it are dropped.
    pub fn unregister(&self, shard: usize, context_id: u32) {
        self.lock().remove(&(shard, context_id));
    }

    /// Every paused context of `shard` is lost with its instance.
    pub fn abandon_shard(&self, shard: usize) {
        for ((waiter_shard, _), waiter) in self.lock().iter_mut() {
            if *waiter_shard == shard {
                waiter.events.insert(0, StreamEvent::Lost);
                waiter.wake.notify_one();
            }
        }
    }

    /// No context is registered (tests check that waits leave nothing behind).
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_reach_only_registered_contexts_and_wake_them_even_if_sent_first() {
        let paused = PausedStreams::default();
        assert!(!paused.deliver(0, 7, StreamEvent::ResumeRequest));
        paused.register(0, 7);
        assert!(paused.deliver(0, 7, StreamEvent::ResumeRequest));
        let wake = paused.wake_signal(0, 7);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build();
        let (Some(wake), Ok(runtime)) = (wake, runtime) else {
            panic!("no waiter or no runtime");
        };
        // The permit stored by `deliver` wakes a wait that starts afterwards.
        runtime.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(5), wake.notified())
                .await
                .expect("woken");
        });
        assert!(matches!(
            paused.take_events(0, 7).as_slice(),
            [StreamEvent::ResumeRequest]
        ));
        paused.unregister(0, 7);
        assert!(paused.is_empty());
        assert!(!paused.deliver(0, 7, StreamEvent::Close));
    }
}
