//! Long-idle keep-alive connections, parked out of the runtime: what an idle
//! plain HTTP/1 connection costs is what nginx's does, not a tokio task.
//!
//! A connection's task, its timer and tokio's per-socket state take about
//! 1.2 KB (the task's cell and tokio's `ScheduledIo` are 128-byte aligned);
//! nginx holds ~540 B per idle keep-alive connection. A connection that has
//! waited [`PARK_AFTER`] for its next request leaves its task: its socket
//! leaves tokio's epoll for the listener's [`Lot`] (its own epoll instance,
//! one registration with the runtime for all of them) and what it needs to go
//! on is kept in one slot of a vector (128 bytes, and 24 in a deadline heap).
//! When its client sends (or closes), the lot gives the connection back to
//! the engine in a new task; when its idle time runs out, the lot closes it.
//!
//! The price is paid per park, not per request: about seven system calls
//! (the socket moved between the two epolls and back, the lot's wake-up) and
//! a new task, a few microseconds, for a request that comes after a pause
//! longer than [`PARK_AFTER`]; requests closer together never park. Until
//! then a connection holds its task: a burst of new connections costs the
//! full size for [`PARK_AFTER`], and the heap they leave free is reused,
//! not returned (see bench/RESULTS.md, "Idle memory and new connections").

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::net::TcpStream as StdStream;
use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;
use tokio::time::Instant;

/// How long a kept-alive connection waits in its task before it parks:
/// short enough that a burst of new connections leaves little heap behind
/// (bench/RESULTS.md: 10,000 connections opened in 1.5 s hold 319 B each
/// with 100 ms, 676 B with 500 ms; nginx 573 B), long enough that a busy
/// client (a request every few milliseconds) never parks. A client pausing
/// between 100 ms and `client_idle` pays the park's few system calls per
/// request, small beside the pause.
pub(crate) const PARK_AFTER: Duration = Duration::from_millis(100);

/// A parked connection: its socket, when its idle time ends, and what the
/// listener keeps to give it back to the engine.
pub(crate) struct Parked<T> {
    pub stream: StdStream,
    pub until: Instant,
    pub rest: T,
}

/// One listener's parked connections.
pub(crate) struct Lot<T> {
    registry: Registry,
    /// Taken by [`Lot::run`].
    poll: Mutex<Option<Poll>>,
    inner: Mutex<Inner<T>>,
    /// A connection parked with an earlier deadline than any before, or the
    /// lot closed.
    changed: Notify,
}

struct Inner<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    /// When each parked connection's idle time ends, by token; entries of
    /// connections gone since are skipped as they come up, or swept when
    /// they outnumber the parked ones.
    deadlines: BinaryHeap<Reverse<(Instant, u64)>>,
    parked: usize,
    closed: bool,
}

struct Slot<T> {
    /// Counts the slot's occupants: a token names one of them.
    generation: u32,
    parked: Option<Parked<T>>,
}

impl<T> Inner<T> {
    /// Takes the connection `token` names, if it is still parked.
    fn take(&mut self, registry: &Registry, token: u64) -> Option<Parked<T>> {
        let (index, generation) = ((token & 0xffff_ffff) as u32, (token >> 32) as u32);
        let slot = self.slots.get_mut(index as usize)?;
        if slot.generation != generation {
            return None;
        }
        let parked = slot.parked.take()?;
        let _ = registry.deregister(&mut SourceFd(&parked.stream.as_raw_fd()));
        self.free.push(index);
        self.parked -= 1;
        Some(parked)
    }

    /// The earliest idle deadline of a connection still parked.
    fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(&Reverse((at, token))) = self.deadlines.peek() {
            if self.holds(token) {
                return Some(at);
            }
            self.deadlines.pop();
        }
        None
    }

    fn holds(&self, token: u64) -> bool {
        holds(&self.slots, token)
    }
}

/// Whether `token` names a connection parked in `slots`.
fn holds<T>(slots: &[Slot<T>], token: u64) -> bool {
    let (index, generation) = ((token & 0xffff_ffff) as u32, (token >> 32) as u32);
    matches!(slots.get(index as usize), Some(s) if s.generation == generation && s.parked.is_some())
}

impl<T: Send + 'static> Lot<T> {
    pub(crate) fn new() -> io::Result<Self> {
        let poll = Poll::new()?;
        Ok(Lot {
            registry: poll.registry().try_clone()?,
            poll: Mutex::new(Some(poll)),
            inner: Mutex::new(Inner {
                slots: Vec::new(),
                free: Vec::new(),
                deadlines: BinaryHeap::new(),
                parked: 0,
                closed: false,
            }),
            changed: Notify::new(),
        })
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner<T>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.inner().closed
    }

    /// Parks a connection; gives it back when the lot is closed (shutdown
    /// has started) or its socket cannot be watched.
    pub(crate) fn park(&self, parked: Parked<T>) -> Result<(), Parked<T>> {
        let mut inner = self.inner();
        if inner.closed {
            return Err(parked);
        }
        let index = match inner.free.pop() {
            Some(index) => index,
            None => {
                inner.slots.push(Slot {
                    generation: 0,
                    parked: None,
                });
                (inner.slots.len() - 1) as u32
            }
        };
        let slot = &mut inner.slots[index as usize];
        slot.generation = slot.generation.wrapping_add(1);
        let token = u64::from(slot.generation) << 32 | u64::from(index);
        // Registered with the lot locked: `run` sees the slot filled before
        // it can see the socket's first event.
        let fd = parked.stream.as_raw_fd();
        let registered = self.registry.register(
            &mut SourceFd(&fd),
            Token(token as usize),
            Interest::READABLE,
        );
        if registered.is_err() {
            inner.free.push(index);
            return Err(parked);
        }
        let until = parked.until;
        let earliest = inner.next_deadline().is_none_or(|at| until < at);
        inner.slots[index as usize].parked = Some(parked);
        inner.parked += 1;
        // A connection that parks every few seconds leaves an entry each time
        // until its first deadline comes up.
        if inner.deadlines.len() > 2 * inner.parked + 1024 {
            let Inner {
                deadlines, slots, ..
            } = &mut *inner;
            deadlines.retain(|Reverse((_, token))| holds(slots, *token));
        }
        inner.deadlines.push(Reverse((until, token)));
        drop(inner);
        if earliest {
            self.changed.notify_one();
        }
        Ok(())
    }

    /// Closes the connection parked longest whose client has sent nothing,
    /// to make room for a new one (see `listener::room`); false when none is
    /// parked.
    pub(crate) fn evict_idlest(&self) -> bool {
        let mut inner = self.inner();
        let mut skipped = Vec::new();
        let mut evicted = None;
        while let Some(Reverse((at, token))) = inner.deadlines.pop() {
            let Some(parked) = inner.take(&self.registry, token) else {
                continue;
            };
            // A request waiting: `run` gives it back to the engine.
            let mut byte = [0u8; 1];
            if matches!(parked.stream.peek(&mut byte), Ok(n) if n > 0) {
                skipped.push((at, parked));
                continue;
            }
            evicted = Some(parked);
            break;
        }
        for (at, parked) in skipped {
            // Parked again under a new token; the wake-up pending for it is
            // seen again on registration (epoll reports a ready socket).
            drop(inner);
            let _ = self.park(Parked {
                until: at,
                ..parked
            });
            inner = self.inner();
        }
        drop(inner);
        evicted.is_some()
    }

    /// Shutdown has started: `run` gives every parked connection back to
    /// the engine, where it lingers as any idle connection does, and no more
    /// park.
    pub(crate) fn close(&self) {
        self.inner().closed = true;
        self.changed.notify_one();
    }

    /// Watches the parked connections until the lot is closed: gives one
    /// whose client sent something (or closed) to `resume`, closes one whose
    /// idle time ran out, and at close gives every one to `resume`.
    pub(crate) async fn run(&self, resume: impl Fn(Parked<T>)) {
        let poll = self.poll.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(poll) = poll else { return };
        // Deprecated in favour of an unsafe `register`: the I/O safety it asks
        // for holds here, as the epoll's descriptor is the mio Poll's own,
        // owned by the AsyncFd until it is dropped.
        #[allow(deprecated)]
        let watched = AsyncFd::with_interest(poll, tokio::io::Interest::READABLE);
        let Ok(mut poll) = watched else {
            tracing::warn!("idle connections cannot be parked: their epoll cannot be watched");
            self.close();
            return;
        };
        let mut events = Events::with_capacity(256);
        let mut woken = Vec::new();
        loop {
            let next = self.inner().next_deadline();
            let changed = self.changed.notified();
            tokio::select! {
                ready = poll.readable_mut() => {
                    let Ok(mut ready) = ready else { break };
                    events.clear();
                    let _ = ready.get_inner_mut().poll(&mut events, Some(Duration::ZERO));
                    if events.is_empty() {
                        ready.clear_ready();
                        continue;
                    }
                    let mut inner = self.inner();
                    woken.extend(events.iter().filter_map(|e| inner.take(&self.registry, e.token().0 as u64)));
                    drop(inner);
                    woken.drain(..).for_each(&resume);
                }
                _ = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                    self.expire();
                }
                _ = changed => {
                    if self.is_closed() {
                        break;
                    }
                }
            }
        }
        self.close();
        let mut inner = self.inner();
        let tokens: Vec<u64> = inner.deadlines.drain().map(|Reverse((_, t))| t).collect();
        woken.extend(
            tokens
                .into_iter()
                .filter_map(|t| inner.take(&self.registry, t)),
        );
        drop(inner);
        woken.drain(..).for_each(&resume);
    }

    /// Closes the parked connections whose idle time has run out.
    fn expire(&self) {
        let now = Instant::now();
        let mut inner = self.inner();
        let mut closed = Vec::new();
        while let Some(&Reverse((at, token))) = inner.deadlines.peek() {
            if at > now {
                break;
            }
            inner.deadlines.pop();
            closed.extend(inner.take(&self.registry, token));
        }
        drop(inner);
        // Closed outside the lock.
        drop(closed);
    }
}
