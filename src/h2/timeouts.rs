//! Client-side connection timeouts of an HTTP/2 connection:
//!
//! - `client_header`: from the first byte of a request head (for a new connection,
//!   from the accept) until the whole head has arrived (slowloris protection);
//! - `client_idle`: a keep-alive connection with no request in progress and no
//!   traffic for this long is closed.
//!
//! A read timer that starts as soon as a connection waits for a head would also
//! cut idle connections after `client_header`. Instead, [`TimedIo`] watches
//! the bytes, and the service tells [`Activity`] when a request head has been
//! parsed and when its handler returns.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// What the connection's service and IO share.
#[derive(Debug)]
pub struct Activity {
    origin: Instant,
    /// Requests whose handler is running (several on HTTP/2).
    busy: AtomicUsize,
    /// Bytes of a request head have arrived and the head is not complete yet.
    head_pending: AtomicBool,
    head_started_ms: AtomicU64,
    last_activity_ms: AtomicU64,
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            origin: Instant::now(),
            busy: AtomicUsize::new(0),
            // A new connection owes its first head within client_header from the
            // accept, bytes or not: a client that connects and sends nothing (or
            // a few bytes of the HTTP/2 preface) must not hold it for client_idle.
            head_pending: AtomicBool::new(true),
            head_started_ms: AtomicU64::new(0),
            last_activity_ms: AtomicU64::new(0),
        })
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// A request head was parsed: its stream is busy until the guard is
    /// dropped, once its response has gone.
    pub fn request_started(self: &Arc<Self>) -> RequestGuard {
        self.busy.fetch_add(1, Relaxed);
        self.head_pending.store(false, Relaxed);
        RequestGuard(Arc::clone(self))
    }

    fn touched(&self) {
        self.last_activity_ms.store(self.now_ms(), Relaxed);
    }

    fn bytes_read(&self) {
        let now = self.now_ms();
        if self.busy.load(Relaxed) == 0 && !self.head_pending.swap(true, Relaxed) {
            self.head_started_ms.store(now, Relaxed);
        }
        self.last_activity_ms.store(now, Relaxed);
    }

    /// When a waiting read must give up, if it must.
    fn deadline(&self, header: Duration, idle: Duration) -> Option<Instant> {
        if self.busy.load(Relaxed) > 0 {
            return None;
        }
        let (since, limit) = if self.head_pending.load(Relaxed) {
            (self.head_started_ms.load(Relaxed), header)
        } else {
            (self.last_activity_ms.load(Relaxed), idle)
        };
        Some(self.origin + Duration::from_millis(since) + limit)
    }
}

/// Ends a request's busy period when dropped.
pub struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Relaxed);
        self.0.touched();
    }
}

/// An IO stream whose reads fail with `TimedOut` when [`Activity`] says the client
/// took too long.
pub struct TimedIo<T> {
    inner: T,
    activity: Arc<Activity>,
    header: Duration,
    idle: Duration,
    sleep: Pin<Box<Sleep>>,
}

impl<T> TimedIo<T> {
    pub fn new(inner: T, activity: Arc<Activity>, header: Duration, idle: Duration) -> Self {
        let first = Instant::now() + idle;
        TimedIo {
            inner,
            activity,
            header,
            idle,
            sleep: Box::pin(tokio::time::sleep_until(first)),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for TimedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.activity.bytes_read();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let Some(deadline) = this.activity.deadline(this.header, this.idle) else {
                    return Poll::Pending;
                };
                if this.sleep.deadline() != deadline {
                    this.sleep.as_mut().reset(deadline);
                }
                match this.sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "client timeout",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TimedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = polled {
            if n > 0 {
                self.activity.touched();
            }
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled {
            if n > 0 {
                self.activity.touched();
            }
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
