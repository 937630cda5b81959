//! A producer stream: read messages, number them, hand each to its consumer(s) chunk by
//! chunk, and read the next header only once the message is ACKed, dropped or lost (the
//! reference's per-stream stop-and-wait, which Loom clients rely on for backpressure).
//!
//! Unlike the reference, a message is never cut short: if it cannot be forwarded whole
//! (its producer vanished mid-message, it grew past `max_message_bytes`, or `chunk_full_behavior:
//! drop` gave up on a slow consumer), the consumer's channel is closed without its last piece
//! and the consumer session resets its stream. Messages up to `redelivery_buffer_bytes` are
//! kept until ACKed and sent to another consumer if theirs is lost.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot};

use super::reader::{FrameReader, ReadError};
use super::room::{ConsumerHandle, Delivery, Offer, Outcome, Piece, Room};
use super::session::SessionContext;
use super::wire::{self, MessageHeader, WireError};
use crate::config::stream::{ChunkFullBehavior, QueueFullBehavior};

/// Payloads up to this size are copied into the piece being built, so a small message
/// travels as one piece; larger ones are forwarded as the buffers they arrived in.
const COPY_LIMIT: usize = 16 * 1024;
/// Small chunks are gathered into pieces of at most about this size.
const PIECE_LIMIT: usize = 64 * 1024;

/// How a producer stream ended.
pub enum ProducerEnd {
    /// End of stream at a message boundary, everything answered.
    Clean,
    Failed(ReadError),
}

pub async fn run(
    context: &SessionContext,
    room: &Arc<Room>,
    reader: &mut FrameReader,
) -> ProducerEnd {
    loop {
        let header = match reader.message_header().await {
            Ok(Some(header)) => header,
            Ok(None) => return ProducerEnd::Clean,
            Err(error) => return ProducerEnd::Failed(error),
        };
        if let Err(error) = forward_message(context, room, reader, header).await {
            return ProducerEnd::Failed(error);
        }
    }
}

struct Target {
    body: Option<mpsc::Sender<Piece>>,
    outcome: oneshot::Receiver<Outcome>,
}

/// One message on its way through the room.
struct Forward<'a> {
    context: &'a SessionContext,
    room: &'a Room,
    message_id: u64,
    key: Bytes,
    header: Bytes,
    targets: Vec<Target>,
    /// Everything after the header so far, while it fits the redelivery buffer.
    retained: Option<Vec<Bytes>>,
    retained_bytes: u64,
    /// The body's size, known once the end of the message has been read.
    body_total: u64,
    /// Abandoned (and counted as such) for at least one consumer.
    aborted: bool,
}

impl Forward<'_> {
    fn drop_count(&self, reason: &str) {
        self.context
            .metrics
            .drops
            .with_label_values(&[self.room.name.as_str(), reason])
            .inc();
    }

    /// Queues a delivery for each consumer, following the room's queue policy.
    async fn attach(&mut self, consumers: Vec<Arc<ConsumerHandle>>) {
        let router = &self.context.settings.router;
        // A large chunk travels as two pieces (its length, then its bytes), so the channel
        // holds two per chunk of `message_buffer_bytes`.
        let depth = (2 * router.message_buffer_bytes / router.limits.max_chunk_bytes.max(1))
            .clamp(2, 8192) as usize;
        // In a fan-out room every producer must queue to every consumer in the same order:
        // P before Q at A but Q before P at B, with full buffers, would wait on each other
        // forever. The room's lock is held across the queueing awaits on purpose; only
        // producers of this fan-out room contend for it.
        let _order = match self.room.policy.fanout {
            true => Some(self.room.fanout_order.lock().await),
            false => None,
        };
        for consumer in consumers {
            let (body_sender, body) = mpsc::channel(depth);
            let (outcome_sender, outcome) = oneshot::channel();
            let delivery =
                Delivery::new(self.message_id, self.header.clone(), body, outcome_sender);
            let offer = match self.room.policy.queue_full {
                QueueFullBehavior::Block => consumer.queue.push_waiting(delivery).await,
                QueueFullBehavior::DropNewest => consumer.queue.push_now(delivery, false).0,
                QueueFullBehavior::DropOldest => {
                    let (offer, oldest) = consumer.queue.push_now(delivery, true);
                    if let Some(oldest) = oldest {
                        // Release the victim's producer (the reference leaves it waiting
                        // forever, its bug B2).
                        let _ = oldest.outcome.send(Outcome::Dropped);
                        self.drop_count("oldest_dropped");
                    }
                    offer
                }
            };
            match offer {
                Offer::Queued => self.targets.push(Target {
                    body: Some(body_sender),
                    outcome,
                }),
                Offer::Full => self.drop_count("queue_full"),
                // Left while we were queueing: like a lost consumer, settled after the body.
                Offer::Closed => self.targets.push(Target {
                    body: None,
                    outcome,
                }),
            }
        }
    }

    /// Sends one piece to every consumer still taking this message.
    async fn send(&mut self, piece: Bytes, last: bool) {
        let give_up_when_full = self.context.settings.router.chunk_full == ChunkFullBehavior::Drop;
        self.send_piece(piece, last, give_up_when_full).await;
    }

    async fn send_piece(&mut self, piece: Bytes, last: bool, give_up_when_full: bool) {
        if let Some(retained) = &mut self.retained {
            self.retained_bytes += piece.len() as u64;
            if self.retained_bytes > self.context.settings.router.redelivery_buffer_bytes {
                self.retained = None;
            } else {
                retained.push(piece.clone());
            }
        }
        for index in 0..self.targets.len() {
            let Some(sender) = &self.targets[index].body else {
                continue;
            };
            let item = if last {
                Piece::Last(piece.clone(), self.body_total)
            } else {
                Piece::Data(piece.clone())
            };
            let sent = if give_up_when_full {
                match sender.try_send(item) {
                    Ok(()) => true,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        // Closing the channel without its last piece makes the consumer
                        // session skip the message, or reset the stream if it had begun
                        // writing it: the consumer never sees a short message.
                        self.drop_count("aborted");
                        self.aborted = true;
                        false
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => false,
                }
            } else {
                sender.send(item).await.is_ok()
            };
            if !sent {
                self.targets[index].body = None;
            }
        }
    }

    /// Abandons the message for every consumer (skipped if not yet begun, else reset).
    fn abort(&mut self, reason: &str) {
        for target in &mut self.targets {
            target.body = None;
        }
        self.drop_count(reason);
        self.aborted = true;
    }

    /// Waits for every consumer's answer; redelivers a lost message that was kept whole.
    async fn settle(mut self) {
        let router = &self.context.settings.router;
        let mut attempts = 0;
        loop {
            let mut lost = 0usize;
            let mut delivered = 0usize;
            for target in self.targets.drain(..) {
                match target.outcome.await {
                    Ok(Outcome::Acked) => delivered += 1,
                    Ok(Outcome::Dropped) => {}
                    Err(_) => lost += 1,
                }
            }
            let redeliverable = lost > 0
                && delivered == 0
                && !self.room.policy.fanout
                && attempts < router.max_redeliveries
                && self.retained.is_some();
            if !redeliverable {
                // An aborted message was counted when it was abandoned.
                if lost > 0 && !self.aborted {
                    self.drop_count("consumer_lost");
                }
                return;
            }
            attempts += 1;
            // The lost consumer has already left the room, so routing picks another.
            let consumers = self.room.route(&self.key, router.partition_count);
            self.attach(consumers).await;
            if self.targets.is_empty() {
                self.drop_count("consumer_lost");
                return;
            }
            self.room.counters.redeliveries.inc();
            // Taken out while resending so the pieces are not retained twice; sent with
            // backpressure whatever `chunk_full_behavior` says, since they are all here.
            let pieces = self.retained.take().unwrap_or_default();
            for (index, piece) in pieces.iter().enumerate() {
                self.send_piece(piece.clone(), index + 1 == pieces.len(), false)
                    .await;
            }
            self.retained = Some(pieces);
        }
    }
}

async fn forward_message(
    context: &SessionContext,
    room: &Arc<Room>,
    reader: &mut FrameReader,
    header: MessageHeader,
) -> Result<(), ReadError> {
    let router = &context.settings.router;
    if header.declared_size > router.max_message_bytes {
        context
            .metrics
            .drops
            .with_label_values(&[room.name.as_str(), "too_large"])
            .inc();
        return discard_body(reader).await;
    }
    let message_id = room.next_message_id();
    let mut encoded = BytesMut::with_capacity(header.key.len() + 24);
    wire::encode_header_parts(&mut encoded, &header.key, header.declared_size, message_id);
    let mut forward = Forward {
        context,
        room,
        message_id,
        key: header.key.clone(),
        header: encoded.freeze(),
        targets: Vec::new(),
        retained: (router.redelivery_buffer_bytes > 0).then(Vec::new),
        retained_bytes: 0,
        body_total: 0,
        aborted: false,
    };
    let consumers = room.route(&header.key, router.partition_count);
    if consumers.is_empty() {
        forward.drop_count("no_consumer");
        return discard_body(reader).await;
    }
    // Every wait on consumers below keeps reading the producer's stream meanwhile (see
    // `FrameReader::read_ahead_while`).
    let read_ahead = router.producer_read_ahead_bytes as usize;
    reader
        .read_ahead_while(read_ahead, forward.attach(consumers))
        .await;
    if forward.targets.is_empty() {
        return discard_body(reader).await;
    }

    // A producer that stops in the middle of a message holds its consumers; past this it is
    // treated as a broken stream and the message abandoned.
    let stall_limit = router.message_stall_timeout;
    let mut pending = BytesMut::new();
    let mut total: u64 = 0;
    loop {
        if reader.buffered() == 0 && !pending.is_empty() {
            // About to wait for the producer: pass on what we have (cut-through).
            reader
                .read_ahead_while(read_ahead, forward.send(pending.split().freeze(), false))
                .await;
        }
        let length = match within(stall_limit, reader.chunk_length()).await {
            Ok(length) => length,
            Err(error) => {
                forward.abort("aborted");
                return Err(error);
            }
        };
        if length == 0 {
            forward.body_total = total;
            wire::encode_end_of_message(&mut pending);
            reader
                .read_ahead_while(read_ahead, forward.send(pending.split().freeze(), true))
                .await;
            break;
        }
        total += length;
        if total > router.max_message_bytes {
            forward.abort("too_large");
            skip_bytes(reader, length).await?;
            return discard_body(reader).await;
        }
        wire::put_varint(&mut pending, length);
        let mut remaining = length as usize;
        if remaining <= COPY_LIMIT && reader.buffered() >= remaining {
            pending.put(reader.take_buffered(remaining));
            if pending.len() >= PIECE_LIMIT {
                // Keeps pieces, and so the memory a message's channel can hold, bounded.
                reader
                    .read_ahead_while(read_ahead, forward.send(pending.split().freeze(), false))
                    .await;
            }
            continue;
        }
        while remaining > 0 {
            if !pending.is_empty() {
                reader
                    .read_ahead_while(read_ahead, forward.send(pending.split().freeze(), false))
                    .await;
            }
            let piece = match within(stall_limit, reader.payload(remaining)).await {
                Ok(piece) => piece,
                Err(error) => {
                    forward.abort("aborted");
                    return Err(error);
                }
            };
            remaining -= piece.len();
            reader
                .read_ahead_while(read_ahead, forward.send(piece, false))
                .await;
        }
    }
    room.counters.messages_in.inc();
    room.counters.bytes_in.inc_by(total);
    reader.read_ahead_while(read_ahead, forward.settle()).await;
    Ok(())
}

/// Reads with a time limit; running out counts as the message being cut off.
async fn within<T>(
    limit: std::time::Duration,
    read: impl std::future::Future<Output = Result<T, ReadError>>,
) -> Result<T, ReadError> {
    match tokio::time::timeout(limit, read).await {
        Ok(result) => result,
        Err(_) => Err(ReadError::Wire(WireError::Truncated(
            "a message (the producer stalled)",
        ))),
    }
}

/// Reads and throws away the rest of a message, still enforcing the chunk limit.
async fn discard_body(reader: &mut FrameReader) -> Result<(), ReadError> {
    loop {
        let length = reader.chunk_length().await?;
        if length == 0 {
            return Ok(());
        }
        skip_bytes(reader, length).await?;
    }
}

async fn skip_bytes(reader: &mut FrameReader, length: u64) -> Result<(), ReadError> {
    let mut remaining = length as usize;
    while remaining > 0 {
        remaining -= reader.payload(remaining).await?.len();
    }
    Ok(())
}
