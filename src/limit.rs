//! `max_connections`: the permits the public listeners take for each client
//! connection, resized when a reload changes the limit.

use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The connection limit shared by every public listener.
#[derive(Debug)]
pub struct ConnectionLimit {
    permits: Arc<Semaphore>,
    sizes: Mutex<Sizes>,
}

#[derive(Debug)]
struct Sizes {
    /// What the permits add up to.
    limit: usize,
    /// Permits still to take out of circulation after the limit was lowered
    /// while they were held: each is dropped as it comes back.
    owed: usize,
}

impl ConnectionLimit {
    pub fn new(limit: usize) -> Self {
        ConnectionLimit {
            permits: Arc::new(Semaphore::new(limit)),
            sizes: Mutex::new(Sizes { limit, owed: 0 }),
        }
    }

    /// Makes the limit `limit`: raised at once; lowered at once as far as
    /// permits are free, the rest as connections close.
    pub fn resize(&self, limit: usize) {
        let mut sizes = self.sizes.lock().unwrap_or_else(|e| e.into_inner());
        if limit > sizes.limit {
            let mut more = limit - sizes.limit;
            let repaid = more.min(sizes.owed);
            sizes.owed -= repaid;
            more -= repaid;
            self.permits.add_permits(more);
        } else {
            let fewer = sizes.limit - limit;
            let taken = self.permits.forget_permits(fewer);
            sizes.owed += fewer - taken;
        }
        sizes.limit = limit;
    }

    /// A permit for one more connection, once there is room; `None` if the
    /// limit was closed.
    pub async fn acquire(&self) -> Option<OwnedSemaphorePermit> {
        loop {
            let permit = self.permits.clone().acquire_owned().await.ok()?;
            let mut sizes = self.sizes.lock().unwrap_or_else(|e| e.into_inner());
            if sizes.owed == 0 {
                return Some(permit);
            }
            sizes.owed -= 1;
            permit.forget();
        }
    }

    /// A permit if there is room now.
    pub fn try_acquire(&self) -> Option<OwnedSemaphorePermit> {
        loop {
            let permit = self.permits.clone().try_acquire_owned().ok()?;
            let mut sizes = self.sizes.lock().unwrap_or_else(|e| e.into_inner());
            if sizes.owed == 0 {
                return Some(permit);
            }
            sizes.owed -= 1;
            permit.forget();
        }
    }

    /// Connections that may open now.
    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn resizes_up_and_down_with_permits_held() {
        let limit = ConnectionLimit::new(3);
        let held: Vec<_> = [
            limit.acquire().await,
            limit.acquire().await,
            limit.acquire().await,
        ]
        .into_iter()
        .flatten()
        .collect();
        assert_eq!(limit.available(), 0);
        limit.resize(1);
        drop(held);
        // Two of the three returning permits are taken out as they are
        // acquired again: one connection may open.
        let first = limit.acquire().await;
        assert!(first.is_some());
        let second =
            tokio::time::timeout(std::time::Duration::from_millis(50), limit.acquire()).await;
        assert!(second.is_err(), "the lowered limit holds");
        limit.resize(4);
        assert_eq!(limit.available(), 3);
    }
}
