//! Stopping every task an echo server spawned, and knowing when they have all finished.
//!
//! `EchoServer::stop` must not return while any socket is still open, otherwise a test that
//! re-binds the same port, or expects its connection to be cut, races the old server. Every task
//! that owns a socket holds a [`TaskGuard`]: the guard tells it when to stop, and the server
//! waits until the last guard has been dropped.

use tokio::sync::{mpsc, watch};

/// The server's side: asks tasks to stop and waits for them.
#[derive(Debug)]
pub(super) struct Lifecycle {
    /// Never sent on; dropping it is the stop request, which every receiver sees even if it
    /// starts listening afterwards.
    stop_sender: watch::Sender<()>,
    /// Never receives a value; `recv` returns `None` once every guard is gone.
    tasks_finished: mpsc::Receiver<()>,
}

/// Held by a task that owns a socket, for as long as it owns it.
#[derive(Clone, Debug)]
pub(super) struct TaskGuard {
    stop_receiver: watch::Receiver<()>,
    alive: mpsc::Sender<()>,
}

/// Lets a long-lived value make guards for new tasks without itself keeping `stop` waiting.
///
/// HTTP/2 request handlers run in tasks of their own, apart from the connection, and own no
/// socket. hyper cancels them when their connection is dropped, but `stop` should not depend
/// on when that happens, so they keep only a weak guard.
#[derive(Clone, Debug)]
pub(super) struct WeakTaskGuard {
    stop_receiver: watch::Receiver<()>,
    alive: mpsc::WeakSender<()>,
}

impl Lifecycle {
    /// A new lifecycle and the first guard, to be cloned into the tasks the server starts.
    pub(super) fn new() -> (Lifecycle, TaskGuard) {
        let (stop_sender, stop_receiver) = watch::channel(());
        let (alive, tasks_finished) = mpsc::channel(1);
        let lifecycle = Lifecycle {
            stop_sender,
            tasks_finished,
        };
        (
            lifecycle,
            TaskGuard {
                stop_receiver,
                alive,
            },
        )
    }

    /// Asks every task to stop and returns once all of them have dropped their guards.
    pub(super) async fn stop_and_wait(self) {
        let Lifecycle {
            stop_sender,
            mut tasks_finished,
        } = self;
        drop(stop_sender);
        while tasks_finished.recv().await.is_some() {}
    }
}

impl TaskGuard {
    /// Resolves once the server has been asked to stop (at once if it already has been).
    pub(super) async fn stop_requested(&mut self) {
        // Nothing is ever sent, so `changed` only returns, with an error, when the sender is
        // dropped.
        while self.stop_receiver.changed().await.is_ok() {}
    }

    pub(super) fn downgrade(&self) -> WeakTaskGuard {
        WeakTaskGuard {
            stop_receiver: self.stop_receiver.clone(),
            alive: self.alive.downgrade(),
        }
    }
}

impl WeakTaskGuard {
    /// A guard for a new task, or `None` once every task has finished stopping.
    pub(super) fn upgrade(&self) -> Option<TaskGuard> {
        Some(TaskGuard {
            stop_receiver: self.stop_receiver.clone(),
            alive: self.alive.upgrade()?,
        })
    }
}
