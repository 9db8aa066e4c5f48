//! limpet's HTTP/1 engine, for every HTTP/1.x connection, plain or TLS: one
//! task per client connection drives both the client stream and a pooled
//! backend socket, heads are parsed in place and rewritten into one buffer,
//! bodies are relayed as they come (chunked ones byte for byte), and an idle
//! keep-alive connection holds no buffer at all.
//!
//! It exists for speed and memory (see bench/RESULTS.md): hyper's server and
//! client cost two tasks, two dispatchers and a channel per request, and 16 KiB
//! of buffers per idle connection. It serves all of HTTP/1.x itself: HTTP/1.0
//! (keep-alive only when asked), `Upgrade` (the head forwarded, the 101 read,
//! then bytes copied both ways), `Expect: 100-continue` (answered by limpet),
//! chunked request bodies, absolute-form targets, and its own 400, 408 and 431
//! for bad, slow or oversized heads. Only the HTTP/2 preface as a plain
//! connection's first bytes (h2c) ends its part: [`Ended::H2c`] gives the
//! connection to `crate::h2` from its start.
//!
//! The request walks `crate::flow`: [`Proxy::decide`], [`Attempts`], the
//! header policy (written as bytes by [`head`]), [`Proxy::record`].
//!
//! Timeouts: the wait for a new connection's first head is bounded by
//! `client_header` from the accept, a later head by `client_header` from its
//! first byte, the wait between requests by `client_idle`; a client that stops
//! reading or sending a body is cut after `client_idle` of silence; a backend
//! after `upstream_connect` to connect, `upstream_response` for the response head
//! and `upstream_response` of silence within a body (HAProxy's `timeout server`),
//! or the upstream's own `[upstream.NAME.timeouts]` `connect` and `response`.

mod chunked;
mod head;
mod io;

use std::future::{poll_fn, Future};
use std::io as stdio;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BufMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::backend::InFlight;
use crate::config::Timeouts;
use crate::error::ProxyError;
use crate::flow::policy::Forwarding;
use crate::flow::{self, Attempts, Chosen, ConnInfo, Failure, Proxy, RequestView, Trace};
use crate::shutdown::Watch;
use crate::state::{BackendTimeouts, Decision, Snapshot, Upstream};
use head::{Delivery, Framing, Parsed, RequestBody, RequestHead, ResponseHead};
pub(crate) use io::Prefixed;
use io::{give_buffer, grow_if_full, read_into, read_some, take_buffer, write_all, Clock, Wait};

/// A longer response head from a backend is a bad gateway.
const RESPONSE_HEAD_MAX: usize = 64 * 1024;
/// What an HTTP/2 connection with prior knowledge (h2c) starts with (RFC 9113,
/// section 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// How long a closing connection may take to say goodbye (TLS close_notify).
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// A client connection the engine can serve: TCP, or TLS over TCP.
pub(crate) trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
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
}

impl Stream for TcpStream {
    fn poll_read_hint(&self, cx: &mut Context<'_>) -> Poll<stdio::Result<()>> {
        self.poll_read_ready(cx)
    }

    fn bytes_waiting(&self) -> bool {
        let mut byte = [std::mem::MaybeUninit::uninit(); 1];
        // Non-blocking: WouldBlock when nothing is there, 0 at the end.
        matches!(socket2::SockRef::from(self).peek(&mut byte), Ok(n) if n > 0)
    }
}

impl Stream for tokio_rustls::server::TlsStream<TcpStream> {
    fn bytes_waiting(&self) -> bool {
        self.get_ref().0.bytes_waiting()
    }
}

/// What serves a plain connection found to open with the HTTP/2 preface (h2c
/// prior knowledge): given the connection, its first bytes to be read again,
/// and the guard held until it ends. The listener says what; the engine only
/// recognises it.
pub(crate) type H2cServer<S, G> =
    fn(Prefixed<S>, Arc<Proxy>, ConnInfo, G) -> Pin<Box<dyn Future<Output = ()> + Send>>;

/// Serves an HTTP/1 connection until it closes; `guard` is held until then.
/// `h2c`: on a plain listener, what serves the connection instead if its
/// first bytes are the HTTP/2 preface.
///
/// An async block rather than an async fn, which would keep every argument twice
/// in the future: this one is the task of every connection, idle ones included.
#[allow(clippy::manual_async_fn)]
pub(crate) fn serve<S: Stream, G: Send + 'static>(
    proxy: Arc<Proxy>,
    stream: S,
    info: ConnInfo,
    mut closing: Watch,
    guard: G,
    h2c: Option<H2cServer<S, G>>,
) -> impl Future<Output = ()> + Send + 'static {
    // Set up outside the async block, which then holds each value once.
    let (mut header, mut idle) = client_timeouts(&proxy.state.load().config.timeouts);
    // A new connection owes its first head within client_header from the accept;
    // a later head is due client_header after its first byte.
    let mut first_head = Some(Instant::now() + header);
    let mut client = Client {
        stream,
        clock: Clock::new(Instant::now() + header),
        pending: Vec::new(),
    };
    let mut h2c = h2c;
    async move {
        loop {
            let head_deadline = if client.pending.is_empty() {
                let until = first_head.unwrap_or_else(|| Instant::now() + idle);
                match next_bytes(&mut client, until, &mut closing).await {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => {
                        tracing::debug!(peer = %info.peer, error = %e, "connection ended with an error");
                        break;
                    }
                }
                first_head.take().unwrap_or_else(|| Instant::now() + header)
            } else {
                // Pipelined: the next head has begun already.
                first_head = None;
                Instant::now() + header
            };
            // Boxed, as below: what runs once per connection takes no room
            // in every idle connection's task.
            if let Some(serve_h2c) = h2c.take() {
                if Box::pin(starts_h2(&mut client, head_deadline)).await {
                    let prefix = std::mem::take(&mut client.pending);
                    let io = Prefixed::new(prefix, client.stream);
                    return serve_h2c(io, proxy, info, guard).await;
                }
            }
            // Boxed: the request's state is allocated while a request is in
            // progress, not for the whole life of an idle keep-alive connection.
            let next = Box::pin(serve_request(
                &proxy,
                &mut client,
                &info,
                head_deadline,
                &closing,
            ));
            match next.await {
                Next::KeepAlive(current) => (header, idle) = client_timeouts(&current),
                Next::Close => break,
            }
        }
        let deadline = Instant::now() + CLOSE_WAIT;
        let goodbye = client.clock.within(deadline, client.stream.shutdown());
        let _ = Box::pin(goodbye).await;
        drop(guard);
    }
}

fn client_timeouts(t: &Timeouts) -> (Duration, Duration) {
    (t.client_header, t.client_idle)
}

/// Waits, holding no buffer, for the first bytes of the next request and reads
/// them into `client.pending`; false when the client closed, `deadline` passed
/// or shutdown started with nothing received.
fn next_bytes<'a, S: Stream>(
    client: &'a mut Client<S>,
    deadline: Instant,
    closing: &'a mut Watch,
) -> impl Future<Output = stdio::Result<bool>> + 'a {
    // Polled by hand rather than an async fn: this future is in every idle
    // connection's task.
    poll_fn(move |cx| {
        match client.stream.poll_read_hint(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return idle(client, cx, deadline, closing),
        }
        let mut buf = take_buffer();
        match io::poll_read_buf(&mut client.stream, cx, &mut buf) {
            Poll::Ready(Ok(0)) => {
                give_buffer(buf);
                Poll::Ready(Ok(false))
            }
            Poll::Ready(Ok(_)) => {
                client.pending = buf;
                Poll::Ready(Ok(true))
            }
            Poll::Ready(Err(e)) => {
                give_buffer(buf);
                Poll::Ready(Err(e))
            }
            Poll::Pending => {
                give_buffer(buf);
                idle(client, cx, deadline, closing)
            }
        }
    })
}

/// Nothing to read yet: ready (false) once shutdown starts or `deadline`
/// passes. A request that has arrived is served (with Connection: close)
/// even once shutdown has started, as HAProxy's `idle-close-on-response`
/// does: the connection closes only with nothing waiting on it (the wake-up
/// for the waiting bytes then comes with the runtime's next turn).
fn idle<S: Stream>(
    client: &mut Client<S>,
    cx: &mut Context<'_>,
    deadline: Instant,
    closing: &mut Watch,
) -> Poll<stdio::Result<bool>> {
    if closing.poll_closing(cx).is_ready() && !client.stream.bytes_waiting() {
        return Poll::Ready(Ok(false));
    }
    client.clock.poll_passed(cx, deadline).map(|()| Ok(false))
}

/// Whether the connection's first bytes are the HTTP/2 preface, reading until
/// enough of them are there to tell.
async fn starts_h2<S: Stream>(client: &mut Client<S>, deadline: Instant) -> bool {
    loop {
        let n = client.pending.len().min(H2_PREFACE.len());
        if client.pending[..n] != H2_PREFACE[..n] {
            return false;
        }
        if n == H2_PREFACE.len() {
            return true;
        }
        let wait = Wait::Until(deadline);
        match read_some(
            &mut client.stream,
            &mut client.pending,
            &mut client.clock,
            wait,
        )
        .await
        {
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
    }
}

/// What the connection does after a request.
enum Next {
    /// With the timeouts of the configuration the request was served with.
    KeepAlive(Timeouts),
    Close,
}

struct Client<S> {
    stream: S,
    clock: Clock,
    /// Bytes read past the last request (pipelined requests).
    pending: Vec<u8>,
}

/// Reads a request head and answers it.
async fn serve_request<S: Stream>(
    proxy: &Proxy,
    client: &mut Client<S>,
    info: &ConnInfo,
    head_deadline: Instant,
    closing: &Watch,
) -> Next {
    let snap = proxy.state.load_full();
    let mut buf = match client.pending.is_empty() {
        true => take_buffer(),
        false => std::mem::take(&mut client.pending),
    };
    let max_head = snap.config.limits.max_header_bytes;
    let head = match read_head(client, &mut buf, max_head, head_deadline).await {
        Ok(head) => head,
        Err(refusal) => {
            if let Some(err) = refusal {
                let head_request = buf.starts_with(b"HEAD ");
                answer(client, &snap, &err, head_request, Delivery::closing()).await;
            }
            give_buffer(buf);
            return Next::Close;
        }
    };
    let started = std::time::Instant::now();
    let mut trace = Trace::default();
    let mut body = BodyReader::new(head.body);
    let body_in_buf = match body.take(&buf[head.len..]) {
        Ok(n) => n,
        Err(e) => {
            record(proxy, &snap, &trace, &buf, &head, 400, started);
            let err = ProxyError::BadBody(e.into());
            answer(client, &snap, &err, head.is_head(&buf), Delivery::closing()).await;
            give_buffer(buf);
            return Next::Close;
        }
    };
    let mut exchange = Exchange {
        proxy,
        snap: &snap,
        info,
        buf: &buf,
        head: &head,
        body,
        body_in_buf,
        past_body: Vec::new(),
        closing,
    };
    let close_after = !head.keep_alive || closing.is_closing();
    let answered = exchange.run(client, &mut trace, close_after, started).await;
    let body_done = exchange.body.done();
    let past_body = std::mem::take(&mut exchange.past_body);
    let keep_alive = match answered {
        Answered::Relayed { keep_alive } => keep_alive,
        Answered::Local(err) => {
            // Shutdown may have started while the request was on its way.
            let close = close_after || err.closes() || !body_done || closing.is_closing();
            record(
                proxy,
                &snap,
                &trace,
                &buf,
                &head,
                err.status().as_u16(),
                started,
            );
            let delivery = Delivery {
                close,
                http10: head.http10,
                dechunk: false,
            };
            answer(client, &snap, &err, head.is_head(&buf), delivery).await && !close
        }
        Answered::Gone => false,
    };
    if !keep_alive || closing.is_closing() {
        give_buffer(buf);
        return Next::Close;
    }
    // What came after this request (pipelining): the rest of the buffer, or
    // what was read past a body that streamed.
    let consumed = head.len + body_in_buf;
    if !past_body.is_empty() {
        give_buffer(buf);
        client.pending = past_body;
    } else if consumed < buf.len() {
        buf.drain(..consumed);
        client.pending = buf;
    } else {
        give_buffer(buf);
    }
    Next::KeepAlive(snap.config.timeouts)
}

/// Reads until `buf` holds a whole request head. `Err(None)`: the client left
/// or went quiet before sending anything; `Err(Some(_))`: limpet's answer
/// (400, 408, 431) before the connection closes.
async fn read_head<S: Stream>(
    client: &mut Client<S>,
    buf: &mut Vec<u8>,
    max_head: usize,
    deadline: Instant,
) -> Result<RequestHead, Option<ProxyError>> {
    // Where the bytes not yet searched for the head's end begin: a head that
    // trickles in is parsed once it may be complete, not once per read.
    let mut searched = 0;
    loop {
        let parsed = match head_may_end(buf, searched) {
            true => head::parse_request(buf),
            false => Parsed::Partial,
        };
        searched = buf.len();
        match parsed {
            Parsed::Complete(head) if head.len <= max_head => return Ok(head),
            Parsed::Complete(_) => return Err(Some(ProxyError::HeadTooLarge)),
            Parsed::Invalid(err) => return Err(Some(err)),
            Parsed::Partial if buf.len() >= max_head => return Err(Some(ProxyError::HeadTooLarge)),
            Parsed::Partial => {}
        }
        buf.reserve((max_head + 1 - buf.len()).min(io::BUFFER));
        let wait = Wait::Until(deadline);
        match read_some(&mut client.stream, buf, &mut client.clock, wait).await {
            Ok(0) if buf.is_empty() => return Err(None),
            Ok(0) => return Err(Some(ProxyError::BadRequest("request head cut short"))),
            Ok(_) => {}
            Err(e) if e.kind() == stdio::ErrorKind::TimedOut && !buf.is_empty() => {
                return Err(Some(ProxyError::HeadTimeout))
            }
            Err(_) => return Err(None),
        }
    }
}

/// Whether `buf` is worth parsing again: a line ended in the bytes from
/// `searched` on. A head that trickles in is parsed once per line, not once per
/// read (which would be quadratic in its length), and a malformed line is still
/// answered as soon as it is complete. The first look (`searched` = 0) always
/// parses.
fn head_may_end(buf: &[u8], searched: usize) -> bool {
    searched == 0 || buf[searched..].contains(&b'\n')
}

/// How a request ended.
enum Answered {
    /// The backend's response was relayed; whether the client connection can
    /// carry another request.
    Relayed { keep_alive: bool },
    /// limpet answers itself.
    Local(ProxyError),
    /// The client or the backend broke the connection mid-response, or a
    /// tunnel ended.
    Gone,
}

/// Where a request body ends, and how much of it has passed.
struct BodyReader {
    framing: RequestBody,
    left: u64,
    chunks: chunked::Scanner,
}

impl BodyReader {
    fn new(framing: RequestBody) -> Self {
        BodyReader {
            framing,
            left: match framing {
                RequestBody::Length(n) => n,
                _ => 0,
            },
            chunks: chunked::Scanner::new(),
        }
    }

    fn done(&self) -> bool {
        match self.framing {
            RequestBody::None => true,
            RequestBody::Length(_) => self.left == 0,
            RequestBody::Chunked => self.chunks.is_done(),
        }
    }

    /// How many of `bytes` belong to the body.
    fn take(&mut self, bytes: &[u8]) -> Result<usize, &'static str> {
        match self.framing {
            RequestBody::None => Ok(0),
            RequestBody::Length(_) => {
                let take = self.left.min(bytes.len() as u64);
                self.left -= take;
                Ok(take as usize)
            }
            RequestBody::Chunked => self
                .chunks
                .feed(bytes)
                .map_err(|_| "malformed chunked request body"),
        }
    }

    /// How much a read may take without reading past the body: all of a
    /// Content-Length body's rest; for a chunked one, bytes past its end are
    /// kept for the next request.
    fn read_limit(&self, room: usize) -> usize {
        match self.framing {
            RequestBody::Length(_) => self.left.min(room as u64) as usize,
            _ => room,
        }
    }
}

/// One request on its way to a backend and its response on the way back.
struct Exchange<'a> {
    proxy: &'a Proxy,
    snap: &'a Snapshot,
    info: &'a ConnInfo,
    buf: &'a [u8],
    head: &'a RequestHead,
    body: BodyReader,
    /// Bytes of the request body that arrived with the head.
    body_in_buf: usize,
    /// Bytes read from the client past the end of a streamed body.
    past_body: Vec<u8>,
    /// Shutdown: once it has started, the response says Connection: close.
    closing: &'a Watch,
}

impl<'a> Exchange<'a> {
    async fn run<S: Stream>(
        &mut self,
        client: &mut Client<S>,
        trace: &mut Trace,
        close_after: bool,
        started: std::time::Instant,
    ) -> Answered {
        let Chosen {
            upstream,
            decision,
            hsts,
        } = match self.decide(trace) {
            Ok(chosen) => chosen,
            Err(e) => return Answered::Local(e),
        };
        let (response, decision) = match self.forward(client, upstream, decision, trace).await {
            Ok(answer) => answer,
            Err(e) => return Answered::Local(e),
        };
        trace.outcome = Some(decision.outcome);
        let Response {
            mut socket,
            buf: resp_buf,
            head: resp_head,
            in_flight,
        } = response;
        let status = resp_head.status;
        record(
            self.proxy, self.snap, trace, self.buf, self.head, status, started,
        );
        let set_cookie = flow::pin_cookie(upstream, &decision, self.info.tls);
        let dechunk = self.head.http10 && resp_head.framing == Framing::Chunked;
        // Shutdown may have started while the request was on its way: the
        // connection closes after this response, which must say so. A request
        // body the backend answered before taking all of it is still
        // arriving: the client connection cannot carry another request.
        let close = close_after
            || self.closing.is_closing()
            || resp_head.framing == Framing::UntilClose
            || dechunk
            || !self.body.done();
        let delivery = Delivery {
            close,
            http10: self.head.http10,
            dechunk,
        };
        let mut out = Vec::with_capacity(resp_head.len + 256);
        head::write_response(
            &mut out,
            &resp_buf,
            &resp_head,
            set_cookie.as_deref(),
            hsts,
            delivery,
        );
        if status == 101 {
            self.tunnel(client, socket, &resp_buf[resp_head.len..], out)
                .await;
            drop(in_flight);
            return Answered::Gone;
        }
        let timeouts = Waits::of(self.snap, upstream);
        let relayed = relay_body(
            client,
            &mut socket,
            resp_buf,
            &resp_head,
            out,
            timeouts,
            dechunk,
        )
        .await;
        drop(in_flight);
        match relayed {
            Ok(clean) => {
                if clean && resp_head.keep_alive && self.body.done() {
                    upstream.backends[decision.backend].state.pool.put(socket);
                }
                Answered::Relayed { keep_alive: !close }
            }
            Err(e) => {
                tracing::debug!(error = %e, "response relay broke off");
                Answered::Gone
            }
        }
    }

    /// Routes the request, reads its pin and chooses its backend.
    fn decide(&self, trace: &mut Trace) -> Result<Chosen<'a>, ProxyError> {
        let lookup = head::Lookup {
            buf: self.buf,
            fields: &self.head.fields,
        };
        let host = self
            .head
            .host(self.buf)
            .and_then(|h| std::str::from_utf8(h).ok());
        let view = RequestView {
            host,
            path: self.head.path(self.buf),
            target: self.head.origin(self.buf),
            headers: &lookup,
            peer: self.info.peer.ip(),
            tls: self.info.tls,
        };
        Proxy::decide(self.snap, &view, trace)
    }

    /// Sends the request to the decided backend and reads the response head,
    /// retrying per SPEC section 4; the response and the final decision.
    async fn forward<S: Stream>(
        &mut self,
        client: &mut Client<S>,
        upstream: &Upstream,
        mut decision: Decision,
        trace: &mut Trace,
    ) -> Result<(Response, Decision), ProxyError> {
        let timeouts = Waits::of(self.snap, upstream);
        let replayable =
            flow::is_idempotent(self.head.method(self.buf)) && self.head.body == RequestBody::None;
        let mut attempts = Attempts::new(upstream, &self.proxy.metrics, replayable);
        let mut fresh = false;
        let mut out = Vec::with_capacity(self.head.len + 256 + self.body_in_buf);
        loop {
            let backend = &upstream.backends[decision.backend];
            trace.backend = Some(decision.backend);
            let in_flight = InFlight::start(&backend.state);
            let pooled = match fresh {
                true => None,
                false => backend.state.pool.take(),
            };
            let reused = pooled.is_some();
            let result = match pooled {
                Some(socket) => Ok(socket),
                None => crate::pool::connect(backend.addr, timeouts.backend.connect)
                    .await
                    .map_err(Failure::NotSent),
            };
            let result = match result {
                Ok(socket) => {
                    out.clear();
                    let fwd = Forwarding {
                        host: self.head.host(self.buf),
                        strip_cookie: upstream
                            .cookie
                            .as_ref()
                            .map(|_| &*upstream.config.cookie.name),
                        client: self.info.peer.ip(),
                        tls: self.info.tls,
                        failover_from: decision.failover_from.map(|f| &*upstream.backends[f].name),
                    };
                    head::write_request(&mut out, self.buf, self.head, &fwd);
                    let body = &self.buf[self.head.len..self.head.len + self.body_in_buf];
                    out.extend_from_slice(body);
                    self.exchange(client, socket, &out, timeouts).await
                }
                Err(failure) => Err(failure),
            };
            match result {
                Ok((socket, buf, head)) => {
                    backend.state.passive_failures.store(0, Relaxed);
                    backend.state.requests.fetch_add(1, Relaxed);
                    let response = Response {
                        socket,
                        buf,
                        head,
                        in_flight,
                    };
                    return Ok((response, decision));
                }
                Err(failure) => {
                    drop(in_flight);
                    attempts.retry(&mut decision, &mut fresh, failure, reused)?;
                }
            }
        }
    }

    /// Writes the request on `socket` (streaming the rest of the body from the
    /// client) and reads the final response head.
    async fn exchange<S: Stream>(
        &mut self,
        client: &mut Client<S>,
        mut socket: TcpStream,
        request: &[u8],
        timeouts: Waits,
    ) -> Result<(TcpStream, Vec<u8>, ResponseHead), Failure> {
        let backend_wait = Wait::Idle(timeouts.backend.response);
        write_all(&mut socket, request, &mut client.clock, backend_wait)
            .await
            .map_err(|e| sending(e, timeouts))?;
        let head_request = self.head.is_head(self.buf);
        let upgrade = self.head.upgrade.is_some();
        let mut buf = take_buffer();
        if !self.body.done() {
            if self.head.expect_continue {
                let wait = Wait::Idle(timeouts.client_idle);
                let continued = b"HTTP/1.1 100 Continue\r\n\r\n";
                write_all(&mut client.stream, continued, &mut client.clock, wait)
                    .await
                    .map_err(|e| Failure::ClientBody(e.into()))?;
            }
            let mut upload = Upload {
                socket: &mut socket,
                answer: &mut buf,
                head_request,
                upgrade,
                timeouts,
            };
            upload
                .stream(client, &mut self.body, &mut self.past_body)
                .await?;
        }
        let deadline = Wait::Until(Instant::now() + timeouts.backend.response);
        // Bytes of a response arrived (an interim one included): a failure
        // now is the backend's answer going wrong, not a closed connection.
        let mut answered = !buf.is_empty();
        loop {
            match head::parse_response(&buf, head_request, upgrade) {
                // 1xx: not for the client (limpet answered its Expect itself);
                // the final one follows.
                Ok(Some(head)) if head.status < 200 && head.status != 101 => {
                    buf.drain(..head.len);
                    continue;
                }
                Ok(Some(head)) => return Ok((socket, buf, head)),
                Ok(None) if buf.len() < RESPONSE_HEAD_MAX => {}
                Ok(None) => return Err(bad_response("response head too large")),
                Err(e) => return Err(Failure::BadResponse(e.into())),
            }
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(io::BUFFER);
            }
            match read_some(&mut socket, &mut buf, &mut client.clock, deadline).await {
                Ok(0) if !answered => {
                    return Err(Failure::Closed(
                        "connection closed before a response".into(),
                    ))
                }
                Ok(0) => return Err(bad_response("connection closed within the response head")),
                Ok(_) => answered = true,
                Err(e) if e.kind() == stdio::ErrorKind::TimedOut => {
                    return Err(Failure::Timeout(timeouts.backend.response))
                }
                Err(e) if !answered => return Err(Failure::Closed(e.into())),
                Err(e) => return Err(Failure::BadResponse(e.into())),
            }
        }
    }

    /// After a 101: writes the response head and what followed it to the
    /// client, what the client sent past its request to the backend, then
    /// copies bytes both ways until either side closes.
    async fn tunnel<S: Stream>(
        &mut self,
        client: &mut Client<S>,
        mut socket: TcpStream,
        after_head: &[u8],
        mut out: Vec<u8>,
    ) {
        out.extend_from_slice(after_head);
        let wait = Wait::Idle(self.snap.config.timeouts.client_idle);
        if write_all(&mut client.stream, &out, &mut client.clock, wait)
            .await
            .is_err()
        {
            return;
        }
        let early = match self.past_body.is_empty() {
            true => &self.buf[self.head.len + self.body_in_buf..],
            false => &self.past_body[..],
        };
        if write_all(&mut socket, early, &mut client.clock, wait)
            .await
            .is_err()
        {
            return;
        }
        let idle = self.snap.config.timeouts.client_idle;
        if let Err(e) = io::tunnel(&mut client.stream, &mut socket, &mut client.clock, idle).await {
            tracing::debug!(error = %e, "tunnel closed");
        }
    }
}

/// The timeouts of one exchange: the client's (from the global `[timeouts]`) and
/// the backend's (its upstream's own, else the global ones).
#[derive(Clone, Copy)]
struct Waits {
    client_idle: Duration,
    backend: BackendTimeouts,
}

impl Waits {
    fn of(snap: &Snapshot, upstream: &Upstream) -> Self {
        Waits {
            client_idle: snap.config.timeouts.client_idle,
            backend: upstream.timeouts(),
        }
    }
}

/// A response head from a backend, with what it takes to relay the body.
struct Response {
    socket: TcpStream,
    /// The head, and the first bytes of the body after it.
    buf: Vec<u8>,
    head: ResponseHead,
    in_flight: InFlight,
}

fn bad_response(why: &'static str) -> Failure {
    Failure::BadResponse(why.into())
}

/// Writing to the backend failed: it closed before answering; one that stops
/// reading for its response timeout is a timeout (see `Attempts` for what follows).
fn sending(cause: stdio::Error, timeouts: Waits) -> Failure {
    match cause.kind() {
        stdio::ErrorKind::TimedOut => Failure::Timeout(timeouts.backend.response),
        _ => Failure::Closed(cause.into()),
    }
}

/// A request body on its way from the client to the backend.
struct Upload<'s> {
    socket: &'s mut TcpStream,
    /// What the backend answers while the body is on its way.
    answer: &'s mut Vec<u8>,
    head_request: bool,
    upgrade: bool,
    timeouts: Waits,
}

impl Upload<'_> {
    /// Streams the rest of the body from the client to the backend; stops
    /// early when the backend answers before taking all of it (a 413 to a
    /// large upload): the answer's head is then in `answer`. Bytes read past
    /// the body go to `past`.
    async fn stream<S: Stream>(
        &mut self,
        client: &mut Client<S>,
        body: &mut BodyReader,
        past: &mut Vec<u8>,
    ) -> Result<(), Failure> {
        let mut chunk = take_buffer();
        let client_wait = Wait::Idle(self.timeouts.client_idle);
        while !body.done() {
            grow_if_full(&mut chunk);
            chunk.clear();
            let limit = body.read_limit(chunk.capacity());
            let read = {
                let mut limited = (&mut chunk).limit(limit);
                read_into(
                    &mut client.stream,
                    &mut limited,
                    &mut client.clock,
                    client_wait,
                )
                .await
            };
            match read {
                Ok(0) => {
                    give_buffer(chunk);
                    return Err(Failure::ClientBody("request body cut short".into()));
                }
                Ok(_) => {}
                Err(e) => {
                    give_buffer(chunk);
                    return Err(Failure::ClientBody(e.into()));
                }
            }
            let take = match body.take(&chunk) {
                Ok(n) => n,
                Err(why) => {
                    give_buffer(chunk);
                    return Err(Failure::ClientBody(why.into()));
                }
            };
            past.extend_from_slice(&chunk[take..]);
            if !self.send(&chunk[..take], &mut client.clock).await? {
                break;
            }
        }
        give_buffer(chunk);
        Ok(())
    }

    /// Writes `bytes` to the backend. While the backend takes none, what it
    /// sends is read into `answer`: a final response head there ends the
    /// upload (false), interim 1xx heads are dropped.
    async fn send(&mut self, mut bytes: &[u8], clock: &mut Clock) -> Result<bool, Failure> {
        while !bytes.is_empty() {
            if self.answer.capacity() - self.answer.len() < 1024 {
                self.answer.reserve(io::BUFFER);
            }
            let deadline = Instant::now() + self.timeouts.backend.response;
            let socket = &mut *self.socket;
            let answer = &mut *self.answer;
            let event = poll_fn(|cx| {
                if let Poll::Ready(wrote) = Pin::new(&mut *socket).poll_write(cx, bytes) {
                    return Poll::Ready(Some(Ok(wrote)));
                }
                if let Poll::Ready(read) = io::poll_read_buf(socket, cx, answer) {
                    return Poll::Ready(Some(Err(read)));
                }
                clock.poll_passed(cx, deadline).map(|()| None)
            })
            .await;
            match event {
                None => return Err(Failure::Timeout(self.timeouts.backend.response)),
                Some(Ok(Ok(n))) => bytes = &bytes[n..],
                Some(Ok(Err(e))) => return Err(sending(e, self.timeouts)),
                Some(Err(Ok(0))) => {
                    return Err(Failure::Closed(
                        "connection closed while the request was sent".into(),
                    ))
                }
                Some(Err(Ok(_))) => {
                    if self.answered()? {
                        return Ok(false);
                    }
                }
                Some(Err(Err(e))) => return Err(Failure::Closed(e.into())),
            }
        }
        Ok(true)
    }

    /// Whether `answer` holds a final response head (interim ones dropped).
    fn answered(&mut self) -> Result<bool, Failure> {
        loop {
            match head::parse_response(self.answer, self.head_request, self.upgrade) {
                Ok(Some(head)) if head.status < 200 && head.status != 101 => {
                    self.answer.drain(..head.len);
                }
                Ok(Some(_)) => return Ok(true),
                Ok(None) if self.answer.len() < RESPONSE_HEAD_MAX => return Ok(false),
                Ok(None) => return Err(bad_response("response head too large")),
                Err(e) => return Err(Failure::BadResponse(e.into())),
            }
        }
    }
}

/// Writes the response head (in `out`) and relays the body; `Ok(true)` when the
/// backend connection ended cleanly at the end of the body and can be reused.
async fn relay_body<S: Stream>(
    client: &mut Client<S>,
    socket: &mut TcpStream,
    mut buf: Vec<u8>,
    head: &ResponseHead,
    mut out: Vec<u8>,
    timeouts: Waits,
    dechunk: bool,
) -> stdio::Result<bool> {
    let client_wait = Wait::Idle(timeouts.client_idle);
    let backend_wait = Wait::Idle(timeouts.backend.response);
    let mut body = Body::new(head.framing);
    let mut clean = body.relay(&buf[head.len..], &mut out, dechunk)?;
    write_all(&mut client.stream, &out, &mut client.clock, client_wait).await?;
    while !body.done() {
        grow_if_full(&mut buf);
        buf.clear();
        if read_some(socket, &mut buf, &mut client.clock, backend_wait).await? == 0 {
            if body.framing == Framing::UntilClose {
                break;
            }
            return Err(stdio::Error::new(
                stdio::ErrorKind::UnexpectedEof,
                "backend closed mid-body",
            ));
        }
        let relayed = match dechunk {
            // Straight from the read buffer, without a copy.
            false => {
                let (take, whole) = body.take(&buf)?;
                clean &= whole;
                &buf[..take]
            }
            true => {
                out.clear();
                clean &= body.relay(&buf, &mut out, true)?;
                &out[..]
            }
        };
        write_all(&mut client.stream, relayed, &mut client.clock, client_wait).await?;
    }
    give_buffer(buf);
    Ok(clean && body.framing != Framing::UntilClose)
}

/// Where a response body ends.
struct Body {
    framing: Framing,
    left: u64,
    chunks: chunked::Scanner,
}

impl Body {
    fn new(framing: Framing) -> Self {
        Body {
            framing,
            left: match framing {
                Framing::Length(n) => n,
                _ => 0,
            },
            chunks: chunked::Scanner::new(),
        }
    }

    fn done(&self) -> bool {
        match self.framing {
            Framing::Empty => true,
            Framing::Length(_) => self.left == 0,
            Framing::Chunked => self.chunks.is_done(),
            Framing::UntilClose => false,
        }
    }

    /// How many of `bytes` belong to the body, and whether none were left over
    /// (a backend that sends more than its body cannot be trusted with another).
    fn take(&mut self, bytes: &[u8]) -> stdio::Result<(usize, bool)> {
        let take = match self.framing {
            Framing::Empty => 0,
            Framing::Length(_) => {
                let take = self.left.min(bytes.len() as u64);
                self.left -= take;
                take as usize
            }
            Framing::Chunked => self.chunks.feed(bytes).map_err(|_| malformed_chunks())?,
            Framing::UntilClose => bytes.len(),
        };
        Ok((take, take == bytes.len()))
    }

    /// Appends the body's part of `bytes` to `out`, decoded from its chunks
    /// when `dechunk`; whether none were left over.
    fn relay(&mut self, bytes: &[u8], out: &mut Vec<u8>, dechunk: bool) -> stdio::Result<bool> {
        if dechunk && self.framing == Framing::Chunked {
            let take = self
                .chunks
                .feed_decoded(bytes, out)
                .map_err(|_| malformed_chunks())?;
            return Ok(take == bytes.len());
        }
        let (take, whole) = self.take(bytes)?;
        out.extend_from_slice(&bytes[..take]);
        Ok(whole)
    }
}

fn malformed_chunks() -> stdio::Error {
    stdio::Error::new(stdio::ErrorKind::InvalidData, "malformed chunked body")
}

impl Delivery {
    /// An answer after which the connection closes.
    fn closing() -> Self {
        Delivery {
            close: true,
            http10: false,
            dechunk: false,
        }
    }
}

/// Writes limpet's own answer; false when the client is gone.
async fn answer<S: Stream>(
    client: &mut Client<S>,
    snap: &Snapshot,
    err: &ProxyError,
    head_request: bool,
    delivery: Delivery,
) -> bool {
    let mut out = Vec::with_capacity(160);
    head::write_answer(&mut out, err, head_request, delivery);
    let wait = Wait::Idle(snap.config.timeouts.client_idle);
    write_all(&mut client.stream, &out, &mut client.clock, wait)
        .await
        .is_ok()
}

/// The request's metrics and access-log line.
fn record(
    proxy: &Proxy,
    snap: &Snapshot,
    trace: &Trace,
    buf: &[u8],
    head: &RequestHead,
    status: u16,
    started: std::time::Instant,
) {
    let access = flow::access_log_enabled().then(|| {
        let method = std::str::from_utf8(head.method(buf)).unwrap_or("");
        (method, head.target(buf))
    });
    proxy.record(snap, trace, status, started.elapsed(), access);
}
