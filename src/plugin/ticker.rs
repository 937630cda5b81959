//! The background task each plugin gets: `on_tick` at the period each instance asked for,
//! `on_queue_ready` when something is enqueued, and the calls root contexts dispatch.
//! It holds only a weak reference, so it ends when the plugin is unloaded.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::callout;
use super::host::{Frame, RequestFacts, StreamState};
use super::instance::ROOT_CONTEXT_ID;
use super::runtime::PluginRuntime;
use crate::upstream::UpstreamPool;

/// Longest sleep between looks, so a newly set tick period is noticed soon.
const MAX_IDLE: Duration = Duration::from_millis(250);

/// Runs until the plugin is dropped. `upstreams` gives the current config's upstreams for
/// http_calls made outside a request.
pub async fn run(
    plugin: Weak<PluginRuntime>,
    upstreams: Arc<dyn Fn() -> Vec<Arc<UpstreamPool>> + Send + Sync>,
) {
    loop {
        let Some(runtime) = plugin.upgrade() else {
            return;
        };
        let now = Instant::now();
        let next_tick = runtime.run_due_ticks(now);
        for (shard, queue_id) in runtime.shared.take_queue_ready() {
            runtime.queue_ready(shard, queue_id);
        }
        for (origin, call) in runtime.take_root_calls() {
            let weak = Arc::downgrade(&runtime);
            let pools = upstreams();
            tokio::spawn(async move {
                let answer = callout::execute(&call, &pools).await;
                let Some(runtime) = weak.upgrade() else {
                    return;
                };
                let mut stream = StreamState::default();
                let facts = RequestFacts::default();
                let mut frame = Frame {
                    request: None,
                    response: None,
                    response_trailers: None,
                    body: None,
                    callout: Some(&answer),
                    context_id: ROOT_CONTEXT_ID,
                    stream: &mut stream,
                    facts: &facts,
                };
                let token = call.token();
                let _ = runtime.answer_root_call(
                    origin,
                    token,
                    answer.phase(),
                    &mut frame,
                    |store, callbacks| answer.deliver(token, store, callbacks),
                );
                runtime.shared.wakeup.notify_one();
            });
        }
        let wake_at = next_tick.map_or(now + MAX_IDLE, |next| next.min(now + MAX_IDLE));
        let shared = Arc::clone(&runtime.shared);
        drop(runtime);
        tokio::select! {
            () = tokio::time::sleep_until(wake_at.into()) => {}
            () = shared.wakeup.notified() => {}
        }
    }
}
