//! Shutdown, as the tasks see it: [`stopped`] for the tasks that await the
//! shutdown channel, and [`Closing`], which tells idle connections of limpet's
//! HTTP/1 engine that shutdown has started for 16 bytes per connection: each
//! idle connection leaves its waker here instead of holding a waiter on the
//! shutdown channel (160 bytes in every connection's task, idle or not).
//!
//! The same registry closes the idlest kept-alive connection when
//! `max_connections` is reached and a new client waits
//! ([`Closing::evict_idlest`], nginx's reuse of idle connections): each
//! connection says when it went idle with one atomic swap.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use tokio::sync::watch;

/// One per listener.
#[derive(Debug)]
pub(crate) struct Closing {
    closing: AtomicBool,
    wakers: Mutex<Wakers>,
}

#[derive(Debug, Default)]
struct Wakers {
    /// Each connection's waker, and when it went idle (see [`Watch::set_idle`]).
    slots: Vec<Option<(Waker, Arc<AtomicU64>)>>,
    free: Vec<u32>,
}

/// [`Watch::idle`]: the connection is serving a request (or has not sent its
/// first one).
const BUSY: u64 = 0;
/// [`Watch::idle`]: the connection was chosen to close to make room.
const EVICTED: u64 = u64::MAX;

/// The order in which connections went idle: the lowest is the idlest. A
/// counter rather than a clock: one atomic add per request.
static IDLE_ORDER: AtomicU64 = AtomicU64::new(1);

impl Closing {
    pub(crate) fn new() -> Self {
        Closing {
            closing: AtomicBool::new(false),
            wakers: Mutex::default(),
        }
    }

    /// Shutdown has started: every registered connection is woken.
    pub(crate) fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        let woken: Vec<Waker> = {
            let mut wakers = self.wakers.lock().unwrap_or_else(|e| e.into_inner());
            let slots = wakers.slots.iter_mut();
            slots
                .filter_map(|s| s.take().map(|(waker, _)| waker))
                .collect()
        };
        woken.into_iter().for_each(Waker::wake);
    }

    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    /// Closes the connection of this listener that has been idle longest, to
    /// make room for a new one; false when none is idle.
    pub(crate) fn evict_idlest(&self) -> bool {
        let wakers = self.wakers.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let idlest = wakers
                .slots
                .iter()
                .flatten()
                .filter_map(|(waker, idle)| {
                    let since = idle.load(Ordering::Relaxed);
                    (since != BUSY && since != EVICTED).then_some((since, waker, idle))
                })
                .min_by_key(|(since, _, _)| *since);
            let Some((since, waker, idle)) = idlest else {
                return false;
            };
            // Unless it turned busy in the meantime.
            let evicted =
                idle.compare_exchange(since, EVICTED, Ordering::Relaxed, Ordering::Relaxed);
            if evicted.is_ok() {
                waker.wake_by_ref();
                return true;
            }
        }
    }
}

/// A connection's registration with its listener's [`Closing`].
///
/// The waker is left once, at the first wait: a tokio task's waker is the same
/// for the life of the task, and the connection is one task.
#[derive(Debug)]
pub(crate) struct Watch {
    closing: Arc<Closing>,
    /// The slot of this connection's waker; `u32::MAX` before the first wait.
    slot: u32,
    /// When the connection went idle, in [`IDLE_ORDER`] ([`BUSY`] while it
    /// serves a request, [`EVICTED`] once chosen to close), shared with its slot.
    idle: Arc<AtomicU64>,
}

impl Watch {
    pub(crate) fn new(closing: Arc<Closing>) -> Self {
        Watch {
            closing,
            slot: u32::MAX,
            idle: Arc::new(AtomicU64::new(BUSY)),
        }
    }

    /// Shutdown has started, or the connection was chosen to close: the
    /// response in progress says `Connection: close`.
    pub(crate) fn is_closing(&self) -> bool {
        self.closing.is_closing() || self.idle.load(Ordering::Relaxed) == EVICTED
    }

    /// The connection was chosen to close to make room for a new one.
    pub(crate) fn is_evicted(&self) -> bool {
        self.idle.load(Ordering::Relaxed) == EVICTED
    }

    /// The connection waits for a request (true) or serves one (false); an
    /// evicted one stays evicted.
    pub(crate) fn set_idle(&self, idle: bool) {
        let value = match idle {
            true => IDLE_ORDER.fetch_add(1, Ordering::Relaxed),
            false => BUSY,
        };
        if self.idle.swap(value, Ordering::Relaxed) == EVICTED {
            self.idle.store(EVICTED, Ordering::Relaxed);
        }
    }

    /// Ready once shutdown has started; until then, the task is woken when it does.
    pub(crate) fn poll_closing(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.slot == u32::MAX {
            let mut wakers = self
                .closing
                .wakers
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let slot = match wakers.free.pop() {
                Some(slot) => slot,
                None => {
                    wakers.slots.push(None);
                    (wakers.slots.len() - 1) as u32
                }
            };
            wakers.slots[slot as usize] = Some((cx.waker().clone(), self.idle.clone()));
            self.slot = slot;
        }
        // Checked after registering: a close() that ran before it is seen here.
        match self.is_closing() {
            true => Poll::Ready(()),
            false => Poll::Pending,
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if self.slot != u32::MAX {
            let mut wakers = self
                .closing
                .wakers
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            wakers.slots[self.slot as usize] = None;
            wakers.free.push(self.slot);
        }
    }
}

/// Resolves when shutdown starts (or the sender is gone).
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    #[tokio::test]
    async fn wakes_every_waiting_connection_and_recycles_slots() {
        let closing = Arc::new(Closing::new());
        let mut waiting = Vec::new();
        for _ in 0..3 {
            let mut watch = Watch::new(closing.clone());
            waiting.push(tokio::spawn(async move {
                poll_fn(|cx| watch.poll_closing(cx)).await;
            }));
        }
        tokio::task::yield_now().await;
        // A connection that ended gives its slot back.
        let mut gone = Watch::new(closing.clone());
        poll_fn(|cx| {
            assert!(gone.poll_closing(cx).is_pending());
            Poll::Ready(())
        })
        .await;
        drop(gone);
        assert_eq!(closing.wakers.lock().unwrap().free.len(), 1);

        closing.close();
        for task in waiting {
            tokio::time::timeout(std::time::Duration::from_secs(5), task)
                .await
                .expect("woken")
                .unwrap();
        }
        let mut late = Watch::new(closing);
        assert!(poll_fn(|cx| Poll::Ready(late.poll_closing(cx)))
            .await
            .is_ready());
    }
}
