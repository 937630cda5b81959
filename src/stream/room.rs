//! Rooms: where producers and consumers meet. A room picks the consumer(s) for each message
//! (rendezvous hashing over partitions, or every consumer in a fan-out room), numbers
//! messages from 1, and holds one bounded queue per consumer.
//!
//! The consumer list is an atomically swapped snapshot: routing a message reads it without a
//! lock; joining and leaving (rare) take a mutex that no `.await` ever holds.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use dashmap::DashMap;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use super::metrics::StreamMetrics;
use crate::config::stream::RoomPolicy;

/// One step of a message body on its way to a consumer, already in wire framing.
pub enum Piece {
    Data(Bytes),
    /// The message's final bytes, ending with the end-of-message marker, and the size of
    /// the whole message body (for metrics).
    Last(Bytes, u64),
}

/// How a delivery ended, as its producer learns it. A delivery dropped without an outcome
/// means its consumer was lost before ACKing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Acked,
    /// Discarded by the queue policy (`drop_oldest`); never redelivered.
    Dropped,
}

/// A message handed to one consumer.
pub struct Delivery {
    pub message_id: u64,
    /// Key, declared size and the server's message id, encoded.
    pub header: Bytes,
    pub body: mpsc::Receiver<Piece>,
    pub outcome: oneshot::Sender<Outcome>,
    /// The queue slot; freed when the consumer takes the delivery.
    slot: Option<OwnedSemaphorePermit>,
}

impl Delivery {
    pub fn new(
        message_id: u64,
        header: Bytes,
        body: mpsc::Receiver<Piece>,
        outcome: oneshot::Sender<Outcome>,
    ) -> Delivery {
        Delivery {
            message_id,
            header,
            body,
            outcome,
            slot: None,
        }
    }
}

/// A consumer's backlog: `capacity` messages waiting behind the one being written.
pub struct ConsumerQueue {
    items: Mutex<VecDeque<Delivery>>,
    slots: Arc<Semaphore>,
    available: Notify,
}

/// What became of a delivery offered to a queue. A refused delivery is dropped, which its
/// producer sees as the outcome channel closing.
pub enum Offer {
    Queued,
    /// The queue was full and the policy drops the new message.
    Full,
    /// The consumer has left.
    Closed,
}

impl ConsumerQueue {
    fn new(capacity: usize) -> ConsumerQueue {
        ConsumerQueue {
            items: Mutex::new(VecDeque::with_capacity(capacity.min(64))),
            slots: Arc::new(Semaphore::new(capacity.max(1))),
            available: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Delivery>> {
        // A panic while holding this lock cannot leave the deque inconsistent.
        self.items
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn enqueue(&self, mut delivery: Delivery, slot: OwnedSemaphorePermit) {
        delivery.slot = Some(slot);
        self.lock().push_back(delivery);
        self.available.notify_one();
    }

    /// Queues, waiting for a free slot (`block`).
    pub async fn push_waiting(&self, delivery: Delivery) -> Offer {
        match Arc::clone(&self.slots).acquire_owned().await {
            Ok(slot) => {
                self.enqueue(delivery, slot);
                Offer::Queued
            }
            Err(_) => Offer::Closed,
        }
    }

    /// Queues if a slot is free; otherwise, with `drop_oldest`, cancels the oldest queued
    /// message (returned so its producer can be released) and takes its slot.
    pub fn push_now(&self, delivery: Delivery, drop_oldest: bool) -> (Offer, Option<Delivery>) {
        match Arc::clone(&self.slots).try_acquire_owned() {
            Ok(slot) => {
                self.enqueue(delivery, slot);
                (Offer::Queued, None)
            }
            Err(tokio::sync::TryAcquireError::Closed) => (Offer::Closed, None),
            Err(tokio::sync::TryAcquireError::NoPermits) if drop_oldest => {
                let mut items = self.lock();
                match items.pop_front() {
                    Some(mut oldest) => {
                        let mut delivery = delivery;
                        delivery.slot = oldest.slot.take();
                        items.push_back(delivery);
                        drop(items);
                        self.available.notify_one();
                        (Offer::Queued, Some(oldest))
                    }
                    None => (Offer::Full, None),
                }
            }
            Err(tokio::sync::TryAcquireError::NoPermits) => (Offer::Full, None),
        }
    }

    /// The next delivery, waiting for one. Only the queue's consumer calls this.
    pub async fn pop(&self) -> Delivery {
        loop {
            if let Some(mut delivery) = self.lock().pop_front() {
                delivery.slot = None;
                return delivery;
            }
            self.available.notified().await;
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Refuses new deliveries and hands back the queued ones.
    fn close(&self) -> Vec<Delivery> {
        self.slots.close();
        self.lock().drain(..).collect()
    }
}

pub struct ConsumerHandle {
    pub id: u64,
    pub queue: ConsumerQueue,
}

/// Producers and consumers currently in a room; the room may be freed only at zero.
pub struct Room {
    pub name: String,
    pub policy: RoomPolicy,
    next_message_id: AtomicU64,
    next_consumer_id: AtomicU64,
    consumers: ArcSwap<Vec<Arc<ConsumerHandle>>>,
    membership: Mutex<()>,
    /// Fan-out rooms: producers queue to all consumers under this, in one global order.
    pub fanout_order: tokio::sync::Mutex<()>,
    members: AtomicUsize,
    /// Milliseconds since `epoch` when the last member left.
    idle_since_ms: AtomicU64,
    epoch: Instant,
    pub counters: RoomCounters,
}

/// The room's metric series, resolved once so the per-message path does no label lookups.
pub struct RoomCounters {
    pub messages_in: prometheus::IntCounter,
    pub messages_out: prometheus::IntCounter,
    pub bytes_in: prometheus::IntCounter,
    pub bytes_out: prometheus::IntCounter,
    pub redeliveries: prometheus::IntCounter,
    pub ack_latency: prometheus::Histogram,
}

impl Room {
    fn new(name: String, policy: RoomPolicy, metrics: &StreamMetrics, first_id: u64) -> Room {
        let label = [name.as_str()];
        let counters = RoomCounters {
            messages_in: metrics.messages_in.with_label_values(&label),
            messages_out: metrics.messages_out.with_label_values(&label),
            bytes_in: metrics.bytes_in.with_label_values(&label),
            bytes_out: metrics.bytes_out.with_label_values(&label),
            redeliveries: metrics.redeliveries.with_label_values(&label),
            ack_latency: metrics.ack_latency.with_label_values(&label),
        };
        Room {
            name,
            policy,
            next_message_id: AtomicU64::new(first_id),
            next_consumer_id: AtomicU64::new(1),
            consumers: ArcSwap::from_pointee(Vec::new()),
            membership: Mutex::new(()),
            fanout_order: tokio::sync::Mutex::new(()),
            members: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            counters,
        }
    }

    /// The next server-assigned message id (1, 2, 3, ... per room).
    pub fn next_message_id(&self) -> u64 {
        self.next_message_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn consumer_count(&self) -> usize {
        self.consumers.load().len()
    }

    pub fn add_consumer(&self) -> Arc<ConsumerHandle> {
        let handle = Arc::new(ConsumerHandle {
            id: self.next_consumer_id.fetch_add(1, Ordering::Relaxed),
            queue: ConsumerQueue::new(self.policy.backlog_depth),
        });
        let _guard = self
            .membership
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut next = Vec::clone(&self.consumers.load());
        next.push(Arc::clone(&handle));
        self.consumers.store(Arc::new(next));
        handle
    }

    /// Takes the consumer out of routing and returns what was queued for it. Dropping those
    /// deliveries tells their producers the consumer was lost.
    pub fn remove_consumer(&self, handle: &ConsumerHandle) -> Vec<Delivery> {
        {
            let _guard = self
                .membership
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let next: Vec<_> = self
                .consumers
                .load()
                .iter()
                .filter(|consumer| consumer.id != handle.id)
                .cloned()
                .collect();
            self.consumers.store(Arc::new(next));
        }
        handle.queue.close()
    }

    /// The consumers a message with `key` goes to: all of them in a fan-out room, otherwise
    /// the one that wins the rendezvous for the key's partition.
    pub fn route(&self, key: &[u8], partition_count: u64) -> Vec<Arc<ConsumerHandle>> {
        let consumers = self.consumers.load();
        if self.policy.fanout {
            return consumers.to_vec();
        }
        let partition = fnv1a(key) % partition_count.max(1);
        consumers
            .iter()
            .max_by_key(|consumer| rendezvous_score(partition, consumer.id))
            .cloned()
            .into_iter()
            .collect()
    }

    fn idle_for(&self) -> Option<Duration> {
        if self.members.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
        Some(self.epoch.elapsed().saturating_sub(since))
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// splitmix64's finaliser: a cheap, well-mixed hash of the (partition, consumer) pair.
fn rendezvous_score(partition: u64, consumer: u64) -> u64 {
    let mut value = partition
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(consumer.wrapping_mul(0xc2b2_ae3d_27d4_eb4f));
    value = (value ^ (value >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    value = (value ^ (value >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    value ^ (value >> 31)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomStatus {
    /// Producer and consumer streams in the room.
    pub members: usize,
    pub consumers: usize,
    /// Messages waiting in consumer queues (not counting those being written).
    pub queued: usize,
    pub next_message_id: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("room \"{0}\" is full")]
pub struct RoomFull(pub String);

/// A stream's place in a room; leaving is dropping it.
pub struct Membership {
    pub room: Arc<Room>,
}

impl Drop for Membership {
    fn drop(&mut self) {
        let room = &self.room;
        room.idle_since_ms
            .store(room.epoch.elapsed().as_millis() as u64, Ordering::Release);
        room.members.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Every room in memory, created on first use and freed when idle.
/// Every room in memory, created on first use and freed when idle. Rooms are keyed by the
/// name's bytes as sent (names are opaque); metric labels show it as (lossy) UTF-8.
pub struct Rooms {
    rooms: DashMap<Bytes, Arc<Room>>,
    metrics: Arc<StreamMetrics>,
    retired: Mutex<RetiredIds>,
}

/// Where freed rooms' message ids stopped, so a room that comes back continues its sequence:
/// ids stay unique per room for the life of the process, as loomd's (never freed) rooms give.
#[derive(Default)]
struct RetiredIds {
    next: std::collections::HashMap<Bytes, u64>,
    /// Past `RETIRED_LIMIT` names the map is cleared and every room created afterwards
    /// starts above the highest id it held.
    floor: u64,
}

const RETIRED_LIMIT: usize = 65_536;

impl RetiredIds {
    fn retire(&mut self, name: Bytes, next_id: u64) {
        if self.next.len() >= RETIRED_LIMIT {
            let highest = self.next.values().copied().max().unwrap_or(0);
            self.floor = self.floor.max(highest.saturating_sub(1));
            self.next.clear();
        }
        self.next.insert(name, next_id);
    }

    fn first_id(&mut self, name: &[u8]) -> u64 {
        self.next.remove(name).unwrap_or(self.floor + 1)
    }
}

impl Rooms {
    pub fn new(metrics: Arc<StreamMetrics>) -> Rooms {
        Rooms {
            rooms: DashMap::new(),
            metrics,
            retired: Mutex::new(RetiredIds::default()),
        }
    }

    fn retired(&self) -> std::sync::MutexGuard<'_, RetiredIds> {
        self.retired
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Joins (creating if needed) room `name`. The member count changes under the map's
    /// entry lock, so the sweeper can never free a room a stream is joining.
    pub fn join(
        &self,
        name: &Bytes,
        policy: RoomPolicy,
        max_members: u64,
    ) -> Result<Membership, RoomFull> {
        let entry = self.rooms.entry(name.clone()).or_insert_with(|| {
            self.metrics.rooms.inc();
            let first_id = self.retired().first_id(name);
            let label = String::from_utf8_lossy(name).into_owned();
            Arc::new(Room::new(label, policy, &self.metrics, first_id))
        });
        let room = Arc::clone(entry.value());
        if room.members.load(Ordering::Acquire) as u64 >= max_members {
            return Err(RoomFull(room.name.clone()));
        }
        room.members.fetch_add(1, Ordering::AcqRel);
        drop(entry);
        Ok(Membership { room })
    }

    pub fn len(&self) -> usize {
        self.rooms.len()
    }

    /// A room's current membership, for the admin API and tests.
    pub fn status(&self, name: &str) -> Option<RoomStatus> {
        let room = Arc::clone(self.rooms.get(name.as_bytes())?.value());
        let consumers = room.consumers.load();
        Some(RoomStatus {
            members: room.members.load(Ordering::Acquire),
            consumers: consumers.len(),
            queued: consumers.iter().map(|consumer| consumer.queue.len()).sum(),
            next_message_id: room.next_message_id.load(Ordering::Relaxed),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.rooms.contains_key(name.as_bytes())
    }

    /// Frees rooms nobody has been in for `idle`, with their metric series. The series are
    /// removed under the map's lock, so a stream joining the same name at that moment waits
    /// and then registers fresh series rather than reusing ones about to be removed.
    pub fn sweep(&self, idle: Duration) {
        self.rooms.retain(|name, room| {
            let keep = room.idle_for().is_none_or(|elapsed| elapsed < idle);
            if !keep {
                log::debug!("stream room \"{}\" freed after {idle:?} idle", room.name);
                self.metrics.rooms.dec();
                self.metrics.forget_room(&room.name);
                self.retired()
                    .retire(name.clone(), room.next_message_id.load(Ordering::Relaxed));
            }
            keep
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(fanout: bool) -> RoomPolicy {
        RoomPolicy {
            backlog_depth: 2,
            queue_full: crate::config::stream::QueueFullBehavior::Block,
            fanout,
        }
    }

    #[test]
    fn keys_stick_to_consumers_and_spread() {
        let room = Room::new("r".into(), policy(false), &StreamMetrics::new(), 1);
        let consumers: Vec<_> = (0..3).map(|_| room.add_consumer()).collect();
        let mut counts = [0usize; 3];
        for key in 0..300 {
            let key = format!("key-{key}");
            let first = room.route(key.as_bytes(), 64);
            let again = room.route(key.as_bytes(), 64);
            assert_eq!(first.len(), 1);
            assert_eq!(first[0].id, again[0].id);
            counts[consumers.iter().position(|c| c.id == first[0].id).unwrap()] += 1;
        }
        assert!(counts.iter().all(|count| *count > 30), "{counts:?}");
        // Removing one consumer only moves the keys it had.
        let before: Vec<u64> = (0..100)
            .map(|key| room.route(format!("k{key}").as_bytes(), 64)[0].id)
            .collect();
        room.remove_consumer(&consumers[0]);
        for (key, old) in before.iter().enumerate() {
            let now = room.route(format!("k{key}").as_bytes(), 64)[0].id;
            if *old != consumers[0].id {
                assert_eq!(now, *old);
            }
        }
    }

    #[test]
    fn fanout_routes_to_everyone_and_ids_start_at_one() {
        let room = Room::new("f".into(), policy(true), &StreamMetrics::new(), 1);
        room.add_consumer();
        room.add_consumer();
        assert_eq!(room.route(b"k", 64).len(), 2);
        assert_eq!(room.next_message_id(), 1);
        assert_eq!(room.next_message_id(), 2);
    }

    #[test]
    fn idle_rooms_are_freed_only_when_empty() {
        let rooms = Rooms::new(Arc::new(StreamMetrics::new()));
        let name = Bytes::from_static(b"a");
        let member = rooms.join(&name, policy(false), 10).unwrap();
        member.room.next_message_id();
        rooms.sweep(Duration::ZERO);
        assert!(rooms.contains("a"));
        drop(member);
        rooms.sweep(Duration::from_secs(60));
        assert!(rooms.contains("a"));
        rooms.sweep(Duration::ZERO);
        assert!(!rooms.contains("a"));
        // A room that comes back continues its message ids.
        let again = rooms.join(&name, policy(false), 10).unwrap();
        assert_eq!(again.room.next_message_id(), 2);
        let other = Bytes::from_static(b"b");
        let _first = rooms.join(&other, policy(false), 1).unwrap();
        assert!(rooms.join(&other, policy(false), 1).is_err());
    }
}
