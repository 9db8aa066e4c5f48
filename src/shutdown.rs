//! Shutdown, as the tasks see it: [`stopped`] for the tasks that await the
//! shutdown channel, and [`Closing`], which tells idle connections of limpet's
//! HTTP/1 engine that shutdown has started for 16 bytes per connection: each
//! idle connection leaves its waker here instead of holding a waiter on the
//! shutdown channel (160 bytes in every connection's task, idle or not).

use std::sync::atomic::{AtomicBool, Ordering};
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
    slots: Vec<Option<Waker>>,
    free: Vec<u32>,
}

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
            wakers.slots.iter_mut().filter_map(Option::take).collect()
        };
        woken.into_iter().for_each(Waker::wake);
    }

    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
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
}

impl Watch {
    pub(crate) fn new(closing: Arc<Closing>) -> Self {
        Watch {
            closing,
            slot: u32::MAX,
        }
    }

    pub(crate) fn is_closing(&self) -> bool {
        self.closing.is_closing()
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
            wakers.slots[slot as usize] = Some(cx.waker().clone());
            self.slot = slot;
        }
        // Checked after registering: a close() that ran before it is seen here.
        match self.closing.is_closing() {
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
