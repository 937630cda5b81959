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

/// Shared data limits per VM id. A plugin that keys shared data by something a client sends
/// (a header, a path) would otherwise let any client grow the gateway's memory. A write past
/// them is refused with `INTERNAL_FAILURE` and counted in
/// `loom_plugin_errors_total{kind="shared_data_limit"}`; what is stored stays.
pub const MAX_SHARED_KEYS_PER_VM: usize = 65_536;
pub const MAX_SHARED_BYTES_PER_VM: usize = 64 * 1024 * 1024;
pub const MAX_SHARED_KEY_BYTES: usize = 4 * 1024;
pub const MAX_SHARED_VALUE_BYTES: usize = 1024 * 1024;

/// Keys and bytes (keys plus values) a VM holds in shared data.
#[derive(Default)]
struct Usage {
    keys: usize,
    bytes: usize,
}

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
    /// Taken inside a `data` entry's lock, never the other way round.
    usage: Mutex<HashMap<String, Usage>>,
    queues: Mutex<Queues>,
}

static STORE: LazyLock<SharedStore> = LazyLock::new(SharedStore::new);

pub fn store() -> &'static SharedStore {
    &STORE
}

impl SharedStore {
    fn new() -> SharedStore {
        SharedStore {
            data: DashMap::new(),
            usage: Mutex::new(HashMap::new()),
            queues: Mutex::new(Queues::default()),
        }
    }

    pub fn get(&self, vm: &str, key: &[u8]) -> Option<(Bytes, u32)> {
        self.data
            .get(&(vm.to_string(), key.to_vec()))
            .map(|entry| (entry.value.clone(), entry.cas))
    }

    /// Stores `value`; a non-zero `cas` must match the current one (Envoy's rule: a key that
    /// does not exist yet accepts any `cas`).
    pub fn set(&self, vm: &str, key: &[u8], value: Bytes, cas: u32) -> i32 {
        if key.len() > MAX_SHARED_KEY_BYTES || value.len() > MAX_SHARED_VALUE_BYTES {
            return refuse(vm);
        }
        let entry = self.data.entry((vm.to_string(), key.to_vec()));
        if value.is_empty() {
            // The ABI has no delete: SDKs delete by setting no value (`set_shared_data(key,
            // None)`). The key goes, and its memory with it.
            return self.remove(vm, key.len(), entry, cas);
        }
        let existing = match &entry {
            dashmap::Entry::Occupied(occupied) => Some(occupied.get().value.len()),
            dashmap::Entry::Vacant(_) => None,
        };
        if let dashmap::Entry::Occupied(occupied) = &entry {
            let current = occupied.get().cas;
            if cas != 0 && current != 0 && current != cas {
                return status::CAS_MISMATCH;
            }
        }
        {
            let mut usage = self
                .usage
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let usage = usage.entry(vm.to_string()).or_default();
            let keys = usage.keys + usize::from(existing.is_none());
            let bytes = usage.bytes.saturating_sub(existing.unwrap_or(0))
                + value.len()
                + if existing.is_none() { key.len() } else { 0 };
            if keys > MAX_SHARED_KEYS_PER_VM || bytes > MAX_SHARED_BYTES_PER_VM {
                return refuse(vm);
            }
            usage.keys = keys;
            usage.bytes = bytes;
        }
        let mut entry = entry.or_insert(Entry {
            value: Bytes::new(),
            cas: 0,
        });
        entry.value = value;
        // Zero means "unconditional" on the way in, so it is never handed out.
        entry.cas = entry.cas.wrapping_add(1).max(1);
        status::OK
    }

    fn remove(
        &self,
        vm: &str,
        key_length: usize,
        entry: dashmap::Entry<'_, (String, Vec<u8>), Entry>,
        cas: u32,
    ) -> i32 {
        let dashmap::Entry::Occupied(occupied) = entry else {
            return status::OK;
        };
        let current = occupied.get().cas;
        if cas != 0 && current != 0 && current != cas {
            return status::CAS_MISMATCH;
        }
        let (_, removed) = occupied.remove_entry();
        let mut usage = self
            .usage
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(usage) = usage.get_mut(vm) {
            usage.keys = usage.keys.saturating_sub(1);
            usage.bytes = usage.bytes.saturating_sub(key_length + removed.value.len());
        }
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

/// Counts a refused shared-data write.
fn refuse(vm: &str) -> i32 {
    super::metrics::RUNTIME_METRICS
        .errors_total
        .with_label_values(&[vm, "shared_data_limit"])
        .inc();
    status::INTERNAL_FAILURE
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
    fn shared_data_is_capped_per_vm_in_keys_and_bytes() {
        let store = SharedStore::new();
        let value = Bytes::from(vec![b'v'; 1000]);
        for index in 0..MAX_SHARED_KEYS_PER_VM {
            let key = format!("k{index}");
            assert_eq!(
                store.set("caps", key.as_bytes(), value.slice(..1), 0),
                status::OK
            );
        }
        // One key too many is refused; an existing key can still change.
        assert_eq!(
            store.set("caps", b"one-more", Bytes::from_static(b"x"), 0),
            status::INTERNAL_FAILURE
        );
        assert!(store.get("caps", b"one-more").is_none());
        assert_eq!(store.set("caps", b"k0", value.clone(), 0), status::OK);
        // Deleting (an empty value) frees a key for another.
        assert_eq!(store.set("caps", b"k1", Bytes::new(), 0), status::OK);
        assert!(store.get("caps", b"k1").is_none());
        assert_eq!(
            store.set("caps", b"one-more", Bytes::from_static(b"x"), 0),
            status::OK
        );
        // Other VMs have their own budget.
        assert_eq!(store.set("caps-other", b"k", value.clone(), 0), status::OK);
        // Oversized keys and values are refused outright.
        let huge_key = vec![b'k'; MAX_SHARED_KEY_BYTES + 1];
        assert_eq!(
            store.set("caps-other", &huge_key, value.clone(), 0),
            status::INTERNAL_FAILURE
        );
        let huge_value = Bytes::from(vec![b'v'; MAX_SHARED_VALUE_BYTES + 1]);
        assert_eq!(
            store.set("caps-other", b"k", huge_value, 0),
            status::INTERNAL_FAILURE
        );
        // Bytes: 64 values of 1 MiB fill the budget; the next one is refused.
        let mebibyte = Bytes::from(vec![b'v'; MAX_SHARED_VALUE_BYTES - 16]);
        let mut refused = false;
        for index in 0..(MAX_SHARED_BYTES_PER_VM / mebibyte.len() + 2) {
            let key = format!("big{index}");
            if store.set("caps-bytes", key.as_bytes(), mebibyte.clone(), 0) != status::OK {
                refused = true;
                break;
            }
        }
        assert!(refused, "the byte budget was never reached");
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
