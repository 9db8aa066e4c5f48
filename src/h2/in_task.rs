//! Runs an HTTP/2 connection's streams inside the connection's own task.
//!
//! hyper hands each stream's future to an executor; with tokio's, every
//! request is a task of its own: spawned, scheduled, woken across tasks when
//! its response is queued for the connection, and freed. [`Streams`] is the
//! executor instead: it queues the futures, and [`InTask`] polls them beside
//! the connection, in one task, as nginx and HAProxy keep a connection's
//! streams on the thread that owns the connection.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use futures_util::stream::{FuturesUnordered, StreamExt};

type StreamFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// hyper's executor for one connection: it keeps the streams hyper starts
/// for [`InTask`] to poll. hyper starts streams only while the connection is
/// being polled, and [`InTask`] takes them right after each poll of the
/// connection, so nothing needs waking.
#[derive(Clone, Default)]
pub(super) struct Streams(Arc<Mutex<Vec<StreamFuture>>>);

impl Streams {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<StreamFuture>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<F> hyper::rt::Executor<F> for Streams
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, stream: F) {
        self.lock().push(Box::pin(stream));
    }
}

/// How many times one poll goes round the connection and its streams before
/// it lets other tasks run.
const ROUNDS_PER_POLL: usize = 4;

/// A connection future and the streams it started: ready once both are done,
/// with the connection's output.
pub(super) struct InTask<C: Future> {
    connection: Pin<Box<C>>,
    ended: Option<C::Output>,
    streams: Streams,
    running: FuturesUnordered<StreamFuture>,
}

impl<C: Future> InTask<C> {
    pub(super) fn new(connection: C, streams: Streams) -> Self {
        InTask {
            connection: Box::pin(connection),
            ended: None,
            streams,
            running: FuturesUnordered::new(),
        }
    }

    /// Moves the streams hyper started since the last call into `running`;
    /// false when there were none.
    fn take_started(&mut self) -> bool {
        let mut started = self.streams.lock();
        if started.is_empty() {
            return false;
        }
        self.running.extend(started.drain(..));
        true
    }
}

impl<C: Future> Future for InTask<C>
where
    C::Output: Unpin,
{
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let this = self.get_mut();
        for _ in 0..ROUNDS_PER_POLL {
            if this.ended.is_none() {
                if let Poll::Ready(output) = this.connection.as_mut().poll(cx) {
                    this.ended = Some(output);
                }
            }
            let started = this.take_started();
            // A stream that finishes has queued its response's last frames:
            // the connection goes round again to write them now rather than
            // after a wake-up through the scheduler.
            let mut finished = false;
            while let Poll::Ready(Some(())) = this.running.poll_next_unpin(cx) {
                finished = true;
            }
            if this.running.is_empty() {
                if let Some(output) = this.ended.take() {
                    return Poll::Ready(output);
                }
            }
            if !started && !finished {
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
