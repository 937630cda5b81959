//! Writing the body that plugins held back when an answer ends with trailers (gRPC).
//!
//! A plugin that pauses the response body holds it until the body ends, but an answer with
//! trailers ends with the trailers, after the last body chunk. The plugins then let go of
//! what they held (see `RequestPlugins::response_trailers`), and it must reach the client
//! before the trailers. Pingora's trailer hook can only replace the trailers with a body, not
//! write both, so the body goes out one of two ways:
//!
//! - Pingora filters the tasks it read from the upstream in a batch, then writes the batch.
//!   When every body task filtered so far has been written, the trailers are alone in their
//!   batch: the body is written at once, from the trailer hook.
//! - Otherwise the last body task filtered is still waiting in the batch, before the
//!   trailers: the body is handed to the downstream module (which sees every task as it is
//!   written) to be appended to that task.
//!
//! Pingora only logs an error returned by the trailer hook and sends the trailers anyway, so
//! a plugin failure there (or a local answer, which can no longer be written) is handed to
//! the module as well: it fails the trailers' write, and the stream is reset rather than
//! ended as a success without the body.

use bytes::{Bytes, BytesMut};
use pingora::prelude::*;

use crate::policy::compression::LoomCompression;

/// The downstream module's half: counts the body tasks written, and appends held body to
/// the one it was promised to.
#[derive(Default)]
pub struct BodyBeforeTrailers {
    written: u32,
    pending: Option<(u32, Bytes)>,
    failure: Option<Box<Error>>,
}

impl BodyBeforeTrailers {
    /// For every body task, as Pingora is about to write it.
    pub fn on_body_task(&mut self, body: &mut Option<Bytes>) {
        self.written = self.written.wrapping_add(1);
        if self
            .pending
            .as_ref()
            .is_some_and(|(task, _)| *task == self.written)
            && let Some((_, held)) = self.pending.take()
        {
            *body = Some(match body.take() {
                Some(chunk) if !chunk.is_empty() => {
                    let mut joined = BytesMut::with_capacity(chunk.len() + held.len());
                    joined.extend_from_slice(&chunk);
                    joined.extend_from_slice(&held);
                    joined.freeze()
                }
                _ => held,
            });
        }
    }

    /// For the trailers, as Pingora is about to write them.
    pub fn on_trailers(&mut self) -> Result<()> {
        match self.failure.take() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

/// Gets `released` to the client ahead of the trailers now being filtered. `filtered` is
/// how many body tasks the gateway's body filter has seen for this answer.
pub async fn write_before_trailers(
    session: &mut Session,
    filtered: u32,
    released: Bytes,
) -> Result<()> {
    if let Some(module) = session.downstream_modules_ctx.get_mut::<LoomCompression>()
        && module.body_before_trailers.written < filtered
    {
        module.body_before_trailers.pending = Some((filtered, released));
        return Ok(());
    }
    session.write_response_body(Some(released), false).await
}

/// Makes the write of the trailers now being filtered fail with `error`.
pub fn fail_trailers(session: &mut Session, error: Box<Error>) {
    match session.downstream_modules_ctx.get_mut::<LoomCompression>() {
        Some(module) => module.body_before_trailers.failure = Some(error),
        None => log::warn!("a plugin failed on the answer's trailers: {error}"),
    }
}
