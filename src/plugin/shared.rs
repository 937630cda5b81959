//! Shared data (a key-value store with compare-and-swap) and shared queues, process-wide as
//! in Envoy: every instance of a plugin sees the same values, and they outlive instance
//! replacement and reloads. Keys and queue names are scoped by VM id, which is the plugin's
//! name.

use std::collections::{HashMap, VecDeque};
use std::sync::{LazyLock, Mutex, Weak};

use bytes::Bytes;
use dashmap::DashMap;

use super::abi::status;
use super::runtime::PluginShared;

/// Most bytes one queue holds before enqueue fails, so a plugin nobody dequeues from cannot
/// grow the gateway without bound.
const QUEUE_LIMIT_BYTES: usize = 16 * 1024 * 1024;

struct Entry {
    value: Bytes,
    cas: u32,
}

struct Queue {
    items: VecDeque<Bytes>,
    bytes: usize,
    /// The instance that registered the queue gets `on_queue_ready`.
    owner: Weak<PluginShared>,
    owner_shard: usize,
}

#[derive(Default)]
struct Queues {
    by_name: HashMap<(String, String), u32>,
    by_id: HashMap<u32, Queue>,
    next_id: u32,
}

pub struct SharedStore {
    data: DashMap<(String, Vec<u8>), Entry>,
    queues: Mutex<Queues>,
}

static STORE: LazyLock<SharedStore> = LazyLock::new(|| SharedStore {
    data: DashMap::new(),
    queues: Mutex::new(Queues::default()),
});

pub fn store() -> &'static SharedStore {
    &STORE
}

impl SharedStore {
    pub fn get(&self, vm: &str, key: &[u8]) -> Option<(Bytes, u32)> {
        self.data
            .get(&(vm.to_string(), key.to_vec()))
            .map(|entry| (entry.value.clone(), entry.cas))
    }

    /// Stores `value`; a non-zero `cas` must match the current one (Envoy's rule: a key that
    /// does not exist yet accepts any `cas`).
    pub fn set(&self, vm: &str, key: &[u8], value: Bytes, cas: u32) -> i32 {
        let mut entry = self
            .data
            .entry((vm.to_string(), key.to_vec()))
            .or_insert(Entry {
                value: Bytes::new(),
                cas: 0,
            });
        if cas != 0 && entry.cas != 0 && entry.cas != cas {
            return status::CAS_MISMATCH;
        }
        entry.value = value;
        // Zero means "unconditional" on the way in, so it is never handed out.
        entry.cas = entry.cas.wrapping_add(1).max(1);
        status::OK
    }

    fn lock_queues(&self) -> std::sync::MutexGuard<'_, Queues> {
        self.queues
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn register_queue(
        &self,
        vm: &str,
        name: &str,
        owner: Weak<PluginShared>,
        owner_shard: usize,
    ) -> u32 {
        let mut queues = self.lock_queues();
        let key = (vm.to_string(), name.to_string());
        if let Some(id) = queues.by_name.get(&key).copied() {
            if let Some(queue) = queues.by_id.get_mut(&id)
                && queue.owner.strong_count() == 0
            {
                // The registering plugin is gone (reloaded): the new one takes it over.
                queue.owner = owner;
                queue.owner_shard = owner_shard;
            }
            return id;
        }
        queues.next_id += 1;
        let id = queues.next_id;
        queues.by_name.insert(key, id);
        queues.by_id.insert(
            id,
            Queue {
                items: VecDeque::new(),
                bytes: 0,
                owner,
                owner_shard,
            },
        );
        id
    }

    pub fn resolve_queue(&self, vm: &str, name: &str) -> Option<u32> {
        self.lock_queues()
            .by_name
            .get(&(vm.to_string(), name.to_string()))
            .copied()
    }

    pub fn enqueue(&self, id: u32, value: Bytes) -> i32 {
        let (owner, shard) = {
            let mut queues = self.lock_queues();
            let Some(queue) = queues.by_id.get_mut(&id) else {
                return status::NOT_FOUND;
            };
            if queue.bytes + value.len() > QUEUE_LIMIT_BYTES {
                return status::INTERNAL_FAILURE;
            }
            queue.bytes += value.len();
            queue.items.push_back(value);
            (queue.owner.clone(), queue.owner_shard)
        };
        // Notified outside the queue lock: the owner's task takes it to call on_queue_ready.
        if let Some(owner) = owner.upgrade() {
            owner.notify_queue_ready(shard, id);
        }
        status::OK
    }

    /// `Ok(None)` when the queue is empty.
    pub fn dequeue(&self, id: u32) -> Result<Option<Bytes>, i32> {
        let mut queues = self.lock_queues();
        let queue = queues.by_id.get_mut(&id).ok_or(status::NOT_FOUND)?;
        let item = queue.items.pop_front();
        if let Some(item) = &item {
            queue.bytes -= item.len();
        }
        Ok(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_and_swap_follows_envoy() {
        let store = store();
        assert!(store.get("cas-test", b"k").is_none());
        assert_eq!(
            store.set("cas-test", b"k", Bytes::from_static(b"1"), 0),
            status::OK
        );
        let (value, cas) = store.get("cas-test", b"k").unwrap();
        assert_eq!(&value[..], b"1");
        assert_eq!(
            store.set("cas-test", b"k", Bytes::from_static(b"2"), cas),
            status::OK
        );
        // The old cas is stale now.
        assert_eq!(
            store.set("cas-test", b"k", Bytes::from_static(b"3"), cas),
            status::CAS_MISMATCH
        );
        assert_eq!(&store.get("cas-test", b"k").unwrap().0[..], b"2");
        // Other VMs do not see it.
        assert!(store.get("cas-test-other", b"k").is_none());
    }

    #[test]
    fn queues_are_fifo_and_scoped() {
        let store = store();
        let id = store.register_queue("queue-test", "q", Weak::new(), 0);
        assert_eq!(store.register_queue("queue-test", "q", Weak::new(), 0), id);
        assert_eq!(store.resolve_queue("queue-test", "q"), Some(id));
        assert_eq!(store.resolve_queue("queue-test-other", "q"), None);
        assert_eq!(store.enqueue(id, Bytes::from_static(b"a")), status::OK);
        assert_eq!(store.enqueue(id, Bytes::from_static(b"b")), status::OK);
        assert_eq!(store.dequeue(id), Ok(Some(Bytes::from_static(b"a"))));
        assert_eq!(store.dequeue(id), Ok(Some(Bytes::from_static(b"b"))));
        assert_eq!(store.dequeue(id), Ok(None));
        assert_eq!(store.dequeue(9_999_999), Err(status::NOT_FOUND));
    }
}
