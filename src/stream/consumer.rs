//! A consumer stream: write one message at a time, then wait for its ACK (the reference's
//! per-consumer stop-and-wait). A consumer that does not ACK, or stops accepting bytes, within
//! `ack_timeout` is evicted: its stream is reset and its message redelivered or counted lost.
//!
//! ACK frames are read in the same task that writes messages, so an ACK releases the next
//! message without a hop between tasks: at 100-byte messages that hop is a measurable part
//! of each round trip.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::timeout;

use super::codes;
use super::io::StreamWriter;
use super::reader::{FrameReader, ReadError};
use super::room::{ConsumerHandle, Delivery, Outcome, Piece, Room};
use super::session::SessionContext;
use super::wire::FRAME_TYPE_ACK;

/// Why a consumer session ended.
enum Exit {
    /// The consumer closed its side, its connection went away, or it broke the format.
    Left,
    Evicted(&'static str),
    /// A message could not be completed; the stream was reset rather than truncated.
    MessageAborted,
}

pub async fn run(
    context: &SessionContext,
    room: &Arc<Room>,
    mut reader: FrameReader,
    writer: &mut StreamWriter,
) {
    let handle = room.add_consumer();
    let mut in_flight: Option<Delivery> = None;
    let mut session = Session {
        context,
        room,
        reader: &mut reader,
        acked_early: false,
    };
    let exit = session.serve(&handle, writer, &mut in_flight).await;
    // An ACK that came before the end of its message still counts if the stream then died.
    if session.acked_early
        && let Some(delivery) = in_flight.take()
    {
        let _ = delivery.outcome.send(Outcome::Acked);
    }
    // Leave routing before the unanswered deliveries are dropped, so their producers
    // redeliver to someone else.
    let queued = room.remove_consumer(&handle);
    match exit {
        Exit::Left => {}
        Exit::Evicted(reason) => {
            context
                .metrics
                .evictions
                .with_label_values(&[room.name.as_str(), reason])
                .inc();
            writer.reset(if reason == "ack_timeout" {
                codes::ACK_TIMEOUT
            } else {
                codes::WRITE_STALLED
            });
        }
        Exit::MessageAborted => writer.reset(codes::MESSAGE_ABORTED),
    }
    reader.stop(codes::SHUTDOWN);
    drop(in_flight);
    drop(queued);
}

struct Session<'a> {
    context: &'a SessionContext,
    room: &'a Room,
    reader: &'a mut FrameReader,
    /// The message being written was already ACKed.
    acked_early: bool,
}

impl Session<'_> {
    /// The next ACK's message id; `None` once the consumer's side has ended (or broke the
    /// frame format, which is counted). Other frame types are read and ignored, as the
    /// reference does. Cancel-safe: partial frames stay in the reader's buffer.
    async fn next_ack(&mut self) -> Option<u64> {
        loop {
            match self.reader.frame().await {
                Ok(Some(frame)) if frame.frame_type == FRAME_TYPE_ACK => {
                    return Some(frame.message_id);
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(ReadError::Transport(_)) => return None,
                Err(ReadError::Wire(error)) => {
                    self.context
                        .metrics
                        .protocol_errors
                        .with_label_values(&[self.room.name.as_str(), error.kind()])
                        .inc();
                    log::info!("stream: consumer in room \"{}\": {error}", self.room.name);
                    return None;
                }
            }
        }
    }

    async fn serve(
        &mut self,
        handle: &ConsumerHandle,
        writer: &mut StreamWriter,
        in_flight: &mut Option<Delivery>,
    ) -> Exit {
        let ack_timeout = self.context.settings.router.ack_timeout;
        let mut batch: Vec<Bytes> = Vec::with_capacity(8);
        loop {
            let delivery = tokio::select! {
                delivery = handle.queue.pop() => delivery,
                ack = self.next_ack() => match ack {
                    Some(_) => continue, // an ACK for nothing pending is ignored
                    None => return Exit::Left,
                },
            };
            let delivery = in_flight.insert(delivery);
            let message_id = delivery.message_id;
            self.acked_early = false;
            let mut body_bytes = 0u64;
            let mut written_any = false;
            batch.clear();
            batch.push(delivery.header.clone());
            // Forward pieces as they come, batching whatever is already waiting.
            loop {
                let piece = tokio::select! {
                    piece = delivery.body.recv() => piece,
                    ack = self.next_ack(), if !self.acked_early => match ack {
                        Some(id) => { self.acked_early = id == message_id; continue; }
                        None => return Exit::Left,
                    },
                };
                let mut finished = false;
                let mut abandoned = false;
                let mut next = piece;
                loop {
                    match next {
                        Some(Piece::Data(bytes)) => batch.push(bytes),
                        Some(Piece::Last(bytes, body_total)) => {
                            body_bytes = body_total;
                            batch.push(bytes);
                            finished = true;
                            break;
                        }
                        // The producer side gave up on this message. Not begun: skip it.
                        // Begun: write nothing more and reset, so the consumer never takes
                        // a short message for a whole one.
                        None if written_any => return Exit::MessageAborted,
                        None => {
                            abandoned = true;
                            break;
                        }
                    }
                    match delivery.body.try_recv() {
                        Ok(piece) => next = Some(piece),
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => next = None,
                    }
                }
                if abandoned {
                    break;
                }
                match timeout(ack_timeout, writer.write_many(&mut batch)).await {
                    Ok(Ok(())) => written_any = true,
                    Ok(Err(_)) => return Exit::Left,
                    Err(_) => return Exit::Evicted("write_stalled"),
                }
                if finished {
                    break;
                }
            }
            if !written_any {
                // Abandoned before a byte went out: skipped, the stream stays usable. The
                // producer already knows (it abandoned it).
                batch.clear();
                in_flight.take();
                continue;
            }
            let counters = &self.room.counters;
            counters.messages_out.inc();
            counters.bytes_out.inc_by(body_bytes);
            let written = Instant::now();
            if !self.acked_early {
                let deadline = tokio::time::Instant::now() + ack_timeout;
                loop {
                    match tokio::time::timeout_at(deadline, self.next_ack()).await {
                        Ok(Some(id)) if id == message_id => break,
                        Ok(Some(_)) => {}
                        Ok(None) => return Exit::Left,
                        Err(_) => return Exit::Evicted("ack_timeout"),
                    }
                }
            }
            counters
                .ack_latency
                .observe(written.elapsed().as_secs_f64());
            if let Some(delivery) = in_flight.take() {
                let _ = delivery.outcome.send(Outcome::Acked);
            }
        }
    }
}
