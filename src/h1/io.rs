//! The engine's IO: reads and writes with deadlines on any stream (TCP, or
//! TLS over TCP), one timer per connection for every deadline, and the
//! per-thread spare buffers that let an idle connection hold none.

use std::future::{poll_fn, Future};
use std::io;
use std::io as stdio;
use std::pin::{pin, Pin};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BufMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;

use crate::state::{BackendTimeouts, Snapshot, Upstream};
use tokio::time::{Instant, Sleep};

/// The size of the buffers request and response heads are read into: most heads
/// and many whole responses fit, and the buffers of the requests in progress
/// are what limpet's memory grows with.
pub const BUFFER: usize = 4 * 1024;
/// What a buffer grows to once a body fills it (a large body moves in larger
/// reads and writes).
pub const BODY_BUFFER: usize = 32 * 1024;
/// Each direction's buffer in a tunnel.
const TUNNEL_BUFFER: usize = 16 * 1024;
/// Buffers kept per thread for the next request.
const SPARE_BUFFERS: usize = 16;

/// A client connection the engine can serve: TCP, or TLS over TCP.
pub(crate) trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Whether the stream says goodbye before it closes (TLS: close_notify);
    /// TCP's close sends its FIN without a shutdown(2) first, one system
    /// call per connection fewer (nginx closes the same way).
    const SAYS_GOODBYE: bool = true;

    /// Pending (with a wake-up registered) while a read would surely find
    /// nothing: an idle connection then waits without taking a buffer.
    fn poll_read_hint(&self, _cx: &mut Context<'_>) -> Poll<stdio::Result<()>> {
        // TLS may hold decrypted bytes already: only a read can tell.
        Poll::Ready(Ok(()))
    }

    /// Whether bytes wait in the kernel's receive buffer, asked of the kernel
    /// itself (the runtime learns of them only on its next turn): at shutdown,
    /// a request that has arrived is served rather than dropped.
    fn bytes_waiting(&self) -> bool;

    /// The socket's local address: the address the client connected to.
    fn local_addr(&self) -> stdio::Result<std::net::SocketAddr>;
}

impl Stream for TcpStream {
    const SAYS_GOODBYE: bool = false;

    fn poll_read_hint(&self, cx: &mut Context<'_>) -> Poll<stdio::Result<()>> {
        self.poll_read_ready(cx)
    }

    fn bytes_waiting(&self) -> bool {
        let mut byte = [std::mem::MaybeUninit::uninit(); 1];
        // Non-blocking: WouldBlock when nothing is there, 0 at the end.
        matches!(socket2::SockRef::from(self).peek(&mut byte), Ok(n) if n > 0)
    }

    fn local_addr(&self) -> stdio::Result<std::net::SocketAddr> {
        TcpStream::local_addr(self)
    }
}

impl Stream for tokio_rustls::server::TlsStream<TcpStream> {
    fn bytes_waiting(&self) -> bool {
        self.get_ref().0.bytes_waiting()
    }

    fn local_addr(&self) -> stdio::Result<std::net::SocketAddr> {
        self.get_ref().0.local_addr()
    }
}

/// A client connection: its stream, its one timer, and what was read past
/// the last request.
pub(super) struct Client<S> {
    pub(super) stream: S,
    pub(super) clock: Clock,
    /// Bytes read past the last request (pipelined requests).
    pub(super) pending: Vec<u8>,
}

/// The timeouts of one exchange: the client's (from the global `[timeouts]`) and
/// the backend's (its upstream's own, else the global ones).
#[derive(Clone, Copy)]
pub(crate) struct Waits {
    pub(crate) client_idle: Duration,
    pub(crate) backend: BackendTimeouts,
}

impl Waits {
    pub(crate) fn of(snap: &Snapshot, upstream: &Upstream) -> Self {
        Waits {
            client_idle: snap.config.timeouts.client_idle,
            backend: upstream.timeouts(),
        }
    }
}

/// How long an IO operation may wait.
#[derive(Clone, Copy)]
pub enum Wait {
    /// Until this instant, however much traffic there was before.
    Until(Instant),
    /// This long from the start of the wait (inactivity).
    Idle(Duration),
}

impl Wait {
    pub fn deadline(self) -> Instant {
        match self {
            Wait::Until(at) => at,
            Wait::Idle(limit) => Instant::now() + limit,
        }
    }
}

pub fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "timed out")
}

/// One timer per connection for all its deadlines.
///
/// Arming a timer for every wait would cost a timer-wheel registration per
/// request; instead the timer is moved earlier only when a wait's deadline comes
/// before it, and when it fires before the wait's deadline it is re-armed. With
/// steady traffic it fires about once per `upstream_response`.
pub struct Clock {
    sleep: Pin<Box<Sleep>>,
}

impl Clock {
    pub fn new(first: Instant) -> Self {
        Clock {
            sleep: Box::pin(tokio::time::sleep_until(first)),
        }
    }

    /// `fut`'s output, or `None` if `deadline` passes first.
    pub async fn within<F: Future>(&mut self, deadline: Instant, fut: F) -> Option<F::Output> {
        let mut fut = pin!(fut);
        poll_fn(|cx| match fut.as_mut().poll(cx) {
            Poll::Ready(out) => Poll::Ready(Some(out)),
            Poll::Pending => self.poll_passed(cx, deadline).map(|()| None),
        })
        .await
    }

    /// Ready once `deadline` has passed.
    pub fn poll_passed(&mut self, cx: &mut Context<'_>, deadline: Instant) -> Poll<()> {
        if self.sleep.deadline() > deadline {
            self.sleep.as_mut().reset(deadline);
        }
        while self.sleep.as_mut().poll(cx).is_ready() {
            if Instant::now() >= deadline {
                return Poll::Ready(());
            }
            self.sleep.as_mut().reset(deadline);
        }
        Poll::Pending
    }
}

/// One read into `buf`'s spare capacity, registering for wake-up when nothing
/// is there; `Ok(0)` at the end of the stream.
pub fn poll_read_buf<S: AsyncRead + Unpin, B: BufMut>(
    stream: &mut S,
    cx: &mut Context<'_>,
    buf: &mut B,
) -> Poll<io::Result<usize>> {
    pin!(stream.read_buf(buf)).poll(cx)
}

/// Reads what is there into `buf` (growing it if full); `Ok(0)` at the end of
/// the stream.
pub async fn read_some<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    clock: &mut Clock,
    wait: Wait,
) -> io::Result<usize> {
    if buf.capacity() == buf.len() {
        buf.reserve(BUFFER);
    }
    read_into(stream, buf, clock, wait).await
}

/// Reads what is there into `buf`, which has room.
pub async fn read_into<S: AsyncRead + Unpin, B: BufMut>(
    stream: &mut S,
    buf: &mut B,
    clock: &mut Clock,
    wait: Wait,
) -> io::Result<usize> {
    let mut deadline = None;
    poll_fn(|cx| match poll_read_buf(stream, cx, buf) {
        Poll::Ready(read) => Poll::Ready(read),
        Poll::Pending => {
            let until = *deadline.get_or_insert_with(|| wait.deadline());
            clock.poll_passed(cx, until).map(|()| Err(timed_out()))
        }
    })
    .await
}

/// Writes all of `bytes` and flushes them (a TLS stream holds records until
/// flushed).
pub async fn write_all<S: AsyncWrite + Unpin>(
    stream: &mut S,
    mut bytes: &[u8],
    clock: &mut Clock,
    wait: Wait,
) -> io::Result<()> {
    let mut deadline = None;
    poll_fn(|cx| loop {
        let polled = match bytes.is_empty() {
            false => Pin::new(&mut *stream).poll_write(cx, bytes),
            true => match Pin::new(&mut *stream).poll_flush(cx) {
                Poll::Ready(done) => return Poll::Ready(done),
                Poll::Pending => Poll::Pending,
            },
        };
        match polled {
            Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            Poll::Ready(Ok(n)) => bytes = &bytes[n..],
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {
                let until = *deadline.get_or_insert_with(|| wait.deadline());
                return clock.poll_passed(cx, until).map(|()| Err(timed_out()));
            }
        }
    })
    .await
}

thread_local! {
    static BUFFERS: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// An empty buffer of [`BUFFER`] bytes' capacity, from this thread's spares.
pub fn take_buffer() -> Vec<u8> {
    BUFFERS
        .with(|b| b.borrow_mut().pop())
        .unwrap_or_else(|| Vec::with_capacity(BUFFER))
}

pub fn give_buffer(mut buf: Vec<u8>) {
    if buf.capacity() != BUFFER {
        return;
    }
    buf.clear();
    BUFFERS.with(|b| {
        let mut spares = b.borrow_mut();
        if spares.len() < SPARE_BUFFERS {
            spares.push(buf);
        }
    });
}

/// A body that filled its buffer is large: the buffer grows to [`BODY_BUFFER`].
pub fn grow_if_full(buf: &mut Vec<u8>) {
    if buf.len() == buf.capacity() && buf.capacity() < BODY_BUFFER {
        buf.clear();
        buf.reserve_exact(BODY_BUFFER);
    }
}

/// What every HTTP/2 connection starts with (RFC 9113, section 3.4). Here,
/// below both engines: the HTTP/1 engine tells an h2c connection by it, and
/// `crate::h2` checks it again as it takes the connection over.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether a connection's first `bytes` are the HTTP/2 preface: `None` while
/// too few of them have come to tell.
pub fn is_preface(bytes: &[u8]) -> Option<bool> {
    let n = bytes.len().min(PREFACE.len());
    match bytes[..n] == PREFACE[..n] {
        false => Some(false),
        true => (n == PREFACE.len()).then_some(true),
    }
}

/// A stream whose first bytes were already read: they are read again first.
/// (An h2c connection is recognised by its first bytes, read by the HTTP/1
/// engine, and then served by `crate::h2` from its start.)
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Prefixed {
            prefix,
            pos: 0,
            inner,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pos < this.prefix.len() {
            let n = (this.prefix.len() - this.pos).min(buf.remaining());
            buf.put_slice(&this.prefix[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.prefix.len() {
                this.prefix = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
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

/// One direction of a tunnel: bytes read from one side wait here until the
/// other side has taken them.
struct Pipe {
    buf: Vec<u8>,
    /// Written out of `buf` so far.
    sent: usize,
    /// The reading side closed; the writing side was (or is to be) shut down.
    eof: bool,
    shut: bool,
}

impl Pipe {
    fn new() -> Self {
        Pipe {
            buf: Vec::with_capacity(TUNNEL_BUFFER),
            sent: 0,
            eof: false,
            shut: false,
        }
    }

    /// Moves what it can from `from` to `to`; Ready(true) on progress,
    /// Ready(false) once this direction is done.
    fn poll_move<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut R,
        to: &mut W,
    ) -> Poll<io::Result<bool>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut moved = false;
        loop {
            if self.sent < self.buf.len() {
                match Pin::new(&mut *to).poll_write(cx, &self.buf[self.sent..]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => {
                        self.sent += n;
                        moved = true;
                        continue;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => break,
                }
            }
            if self.eof {
                if !self.shut {
                    match Pin::new(&mut *to).poll_shutdown(cx) {
                        Poll::Ready(_) => self.shut = true,
                        Poll::Pending => break,
                    }
                }
                return Poll::Ready(Ok(moved));
            }
            if let Poll::Ready(Err(e)) = Pin::new(&mut *to).poll_flush(cx) {
                return Poll::Ready(Err(e));
            }
            self.buf.clear();
            self.sent = 0;
            match poll_read_buf(from, cx, &mut self.buf) {
                Poll::Ready(Ok(0)) => self.eof = true,
                Poll::Ready(Ok(_)) => moved = true,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => break,
            }
        }
        match moved {
            true => Poll::Ready(Ok(true)),
            false => Poll::Pending,
        }
    }

    fn done(&self) -> bool {
        self.eof && self.shut && self.sent == self.buf.len()
    }
}

/// Copies bytes both ways between `a` and `b` until both directions have
/// ended, either side fails, or nothing moves for `idle` (HAProxy's `timeout
/// tunnel`).
pub async fn tunnel<A, B>(a: &mut A, b: &mut B, clock: &mut Clock, idle: Duration) -> io::Result<()>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut up, mut down) = (Pipe::new(), Pipe::new());
    let mut deadline = Instant::now() + idle;
    poll_fn(|cx| loop {
        let mut moved = false;
        for polled in [up.poll_move(cx, a, b), down.poll_move(cx, b, a)] {
            match polled {
                Poll::Ready(Ok(progress)) => moved |= progress,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
        }
        if up.done() && down.done() {
            return Poll::Ready(Ok(()));
        }
        if moved {
            deadline = Instant::now() + idle;
            continue;
        }
        return clock.poll_passed(cx, deadline).map(|()| Err(timed_out()));
    })
    .await
}
