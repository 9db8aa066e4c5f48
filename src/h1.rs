//! limpet's own HTTP/1.1 engine for plain connections: one task per client
//! connection drives both the client socket and a pooled backend socket, heads
//! are parsed in place and rewritten into one buffer, bodies are relayed as they
//! come (chunked ones byte for byte), and an idle keep-alive connection holds no
//! buffer at all.
//!
//! It exists for speed and memory (see bench/RESULTS.md): hyper's server and
//! client cost two tasks, two dispatchers and a channel per request, and 16 KiB of
//! buffers per idle connection. It takes on the requests that make up nearly all
//! traffic: HTTP/1.1, origin-form, a Host, no body or a Content-Length body.
//! Anything else (HTTP/1.0, `Upgrade`, `Expect`, a chunked request body, an
//! absolute-form target, a malformed or oversized head) ends the engine's part:
//! the connection goes to hyper (`crate::listener::serve_http1`) with the bytes
//! already read, and hyper serves it from that request on, as it serves TLS and
//! HTTP/2 connections.
//!
//! The request path reads as `proxy.rs`'s: route, read the pin, choose, forward
//! with the same retry rules ([`crate::proxy::Attempts`]), re-pin in the response;
//! metrics and the access log are written by the same function.
//!
//! Timeouts: the wait for a new connection's first head is bounded by
//! `client_header` from the accept, a later head by `client_header` from its
//! first byte, the wait between requests by `client_idle`; a client that stops
//! reading or sending a body is cut after `client_idle` of silence; a backend
//! after `upstream_connect` to connect, `upstream_response` for the response head
//! and `upstream_response` of silence within a body (HAProxy's `timeout server`).

mod chunked;
mod head;

use std::future::{poll_fn, Future};
use std::io;
use std::pin::{pin, Pin};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BufMut;
use hyper_util::server::graceful::Watcher;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use crate::error::{BoxError, ProxyError};
use crate::listener::Watch;
use crate::proxy::{Attempts, ConnInfo, Proxy, Retry, Trace};
use crate::state::{Decision, Outcome, Snapshot, Upstream};
use crate::upstream::{ConnectError, InFlight};
use head::{Forwarding, Framing, Parsed, RequestHead, ResponseHead};

/// The size of the buffers request and response heads are read into: most heads
/// and many whole responses fit, and the buffers of the requests in progress
/// are what limpet's memory grows with.
const BUFFER: usize = 4 * 1024;
/// What a buffer grows to once a body fills it (a large body moves in larger
/// reads and writes).
const BODY_BUFFER: usize = 32 * 1024;
/// A longer response head from a backend is a bad gateway.
const RESPONSE_HEAD_MAX: usize = 64 * 1024;
/// Buffers kept per thread for the next request.
const SPARE_BUFFERS: usize = 16;

/// Serves a plain HTTP/1 connection until it closes, or until a request the
/// engine does not take on hands it to hyper; `guard` is held until then.
///
/// An async block rather than an async fn, which would keep every argument twice
/// in the future: this one is the task of every plain connection, idle ones
/// included.
#[allow(clippy::manual_async_fn)]
pub(crate) fn serve<G: Send + 'static>(
    proxy: Arc<Proxy>,
    stream: TcpStream,
    info: ConnInfo,
    watcher: Watcher,
    mut closing: Watch,
    guard: G,
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
    async move {
        let ended: io::Result<()> = loop {
            let head_deadline = if client.pending.is_empty() {
                let until = first_head.unwrap_or_else(|| Instant::now() + idle);
                match next_bytes(&mut client, until, &mut closing).await {
                    Ok(true) => {}
                    Ok(false) => break Ok(()),
                    Err(e) => break Err(e),
                }
                first_head.take().unwrap_or_else(|| Instant::now() + header)
            } else {
                // Pipelined: the next head has begun already.
                first_head = None;
                Instant::now() + header
            };
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
                Next::Close => break Ok(()),
                Next::Hyper => {
                    let peer = info.peer;
                    let shutdown = closing.shutdown();
                    drop(closing);
                    let handed = hand_to_hyper(&proxy, client, info, watcher, shutdown).await;
                    if let Err(e) = handed {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                    drop(guard);
                    return;
                }
            }
        };
        if let Err(e) = ended {
            tracing::debug!(peer = %info.peer, error = %e, "connection ended with an error");
        }
        drop(watcher);
        drop(guard);
    }
}

/// Serves the rest of the connection with hyper, starting with the bytes the
/// engine read: conn::auto when they may be the HTTP/2 preface (h2c), else
/// hyper's HTTP/1. Boxed: hyper's connection state would otherwise take room in
/// every connection's task.
fn hand_to_hyper<'a>(
    proxy: &'a Arc<Proxy>,
    mut client: Client,
    info: ConnInfo,
    watcher: Watcher,
    shutdown: watch::Receiver<bool>,
) -> Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send + 'a>> {
    let h2c = may_be_h2_preface(&client.pending);
    let io = Prefixed {
        prefix: std::mem::take(&mut client.pending),
        pos: 0,
        inner: client.stream,
    };
    match h2c {
        true => Box::pin(crate::listener::serve_auto(proxy, io, info, watcher)),
        false => Box::pin(crate::listener::serve_http1(
            proxy, io, info, watcher, shutdown,
        )),
    }
}

fn client_timeouts(t: &crate::config::Timeouts) -> (Duration, Duration) {
    (t.client_header, t.client_idle)
}

/// Waits, holding no buffer, for the first bytes of the next request and reads
/// them into `client.pending`; false when the client closed, `deadline` passed or
/// shutdown started.
fn next_bytes<'a>(
    client: &'a mut Client,
    deadline: Instant,
    closing: &'a mut Watch,
) -> impl Future<Output = io::Result<bool>> + 'a {
    // Polled by hand rather than an async fn: this future is in every idle
    // connection's task.
    poll_fn(move |cx| loop {
        if closing.poll_closing(cx).is_ready() {
            return Poll::Ready(Ok(false));
        }
        match client.stream.poll_read_ready(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return client.clock.poll_passed(cx, deadline).map(|()| Ok(false)),
        }
        // Readiness can be stale (the last read did not drain the socket): only
        // bytes end the wait.
        let mut buf = take_buffer();
        match read_now(&mut client.stream, &mut buf) {
            Ok(0) => return Poll::Ready(Ok(false)),
            Ok(_) => {
                client.pending = buf;
                return Poll::Ready(Ok(true));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => give_buffer(buf),
            Err(e) => return Poll::Ready(Err(e)),
        }
    })
}

/// What an HTTP/2 connection with prior knowledge (h2c) starts with (RFC 9113,
/// section 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether `bytes` are, or begin with, the HTTP/2 preface.
fn may_be_h2_preface(bytes: &[u8]) -> bool {
    let n = bytes.len().min(H2_PREFACE.len());
    n > 0 && bytes[..n] == H2_PREFACE[..n]
}

/// What the connection does after a request.
enum Next {
    /// With the timeouts of the configuration the request was served with.
    KeepAlive(crate::config::Timeouts),
    Close,
    /// hyper takes the connection over, starting with `Client::pending`.
    Hyper,
}

struct Client {
    stream: TcpStream,
    clock: Clock,
    /// Bytes read past the last request (pipelined requests), or the bytes of
    /// the request handed to hyper.
    pending: Vec<u8>,
}

/// Reads a request head and answers it.
async fn serve_request(
    proxy: &Proxy,
    client: &mut Client,
    info: &ConnInfo,
    head_deadline: Instant,
    closing: &Watch,
) -> Next {
    let snap = proxy.state.load_full();
    let max_head = snap.config.limits.max_header_bytes;
    let mut buf = match client.pending.is_empty() {
        true => take_buffer(),
        false => std::mem::take(&mut client.pending),
    };
    // Where the bytes not yet searched for the head's end begin: a head that
    // trickles in is parsed once it may be complete, not once per read.
    let mut searched = 0;
    let head = loop {
        let parsed = match head_may_end(&buf, searched) {
            true => head::parse_request(&buf),
            false => Parsed::Partial,
        };
        searched = buf.len();
        match parsed {
            Parsed::Complete(head) if head.len <= max_head => break head,
            Parsed::Partial if buf.len() < max_head => {}
            // hyper answers it, and answers 400 and 431 as on every listener.
            _ => {
                client.pending = buf;
                return Next::Hyper;
            }
        }
        buf.reserve((max_head + 1 - buf.len()).min(BUFFER));
        let wait = Wait::Until(head_deadline);
        match read_some(&mut client.stream, &mut buf, &mut client.clock, wait).await {
            Ok(0) if !buf.is_empty() => {
                // A partial head and the end of the stream: hyper says 400.
                client.pending = buf;
                return Next::Hyper;
            }
            Ok(0) | Err(_) => {
                give_buffer(buf);
                return Next::Close;
            }
            Ok(_) => {}
        }
    };
    let started = std::time::Instant::now();
    let mut trace = Trace::default();
    let mut exchange = Exchange {
        proxy,
        snap: &snap,
        info,
        buf: &buf,
        head: &head,
        body_in_buf: (buf.len() - head.len).min(head.content_length as usize),
        body_sent: false,
        closing,
    };
    let close_after = head.close || closing.is_closing();
    let answered = exchange.run(client, &mut trace, close_after, started).await;
    let body_done = exchange.body_in_buf as u64 == head.content_length || exchange.body_sent;
    let consumed = head.len + exchange.body_in_buf;
    let keep_alive = match answered {
        Answered::Relayed { keep_alive } => keep_alive,
        Answered::Local(err) => {
            // Shutdown may have started while the request was on its way.
            let close = close_after || !body_done || closing.is_closing();
            let status = err.status().as_u16();
            record(proxy, &snap, &trace, &buf, &head, status, started);
            let wrote = write_local(client, &snap, &err, close).await;
            wrote && !close
        }
        Answered::Gone => false,
    };
    if !keep_alive || closing.is_closing() {
        give_buffer(buf);
        return Next::Close;
    }
    if consumed < buf.len() {
        buf.drain(..consumed);
        client.pending = buf;
    } else {
        give_buffer(buf);
    }
    Next::KeepAlive(snap.config.timeouts)
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
    /// The client or the backend broke the connection mid-response.
    Gone,
}

/// One request on its way to a backend and its response on the way back.
struct Exchange<'a> {
    proxy: &'a Proxy,
    snap: &'a Snapshot,
    info: &'a ConnInfo,
    buf: &'a [u8],
    head: &'a RequestHead,
    /// Bytes of the request body that arrived with the head.
    body_in_buf: usize,
    /// The rest of the body was read from the client (and sent).
    body_sent: bool,
    /// Shutdown: once it has started, the response says Connection: close.
    closing: &'a Watch,
}

impl<'a> Exchange<'a> {
    async fn run(
        &mut self,
        client: &mut Client,
        trace: &mut Trace,
        close_after: bool,
        started: std::time::Instant,
    ) -> Answered {
        let (upstream, decision) = match self.decide(trace) {
            Ok(chosen) => chosen,
            Err(e) => return Answered::Local(e),
        };
        let (backend, response, decision) =
            match self.forward(client, upstream, decision, trace).await {
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
        record(
            self.proxy,
            self.snap,
            trace,
            self.buf,
            self.head,
            resp_head.status,
            started,
        );
        let set_cookie = match (&upstream.cookie, decision.set_cookie) {
            (Some(codec), true) => Some(crate::proxy::set_cookie(
                upstream,
                &codec.encode(decision.backend),
                self.info.tls,
            )),
            _ => None,
        };
        // Shutdown may have started while the request was on its way: the
        // connection closes after this response, which must say so.
        // A request body the backend answered before taking all of it is
        // still arriving: the client connection cannot carry another request.
        let close = close_after
            || self.closing.is_closing()
            || resp_head.framing == Framing::UntilClose
            || !self.body_complete();
        let mut out = Vec::with_capacity(resp_head.len + 256);
        head::write_response(
            &mut out,
            &resp_buf,
            &resp_head,
            set_cookie.as_deref(),
            close,
        );
        let timeouts = self.snap.config.timeouts;
        let relayed = relay_body(client, &mut socket, resp_buf, &resp_head, out, timeouts).await;
        drop(in_flight);
        match relayed {
            Ok(clean) => {
                if clean && resp_head.keep_alive && self.body_complete() {
                    upstream.backends[backend].state.pool.put_socket(socket);
                }
                Answered::Relayed { keep_alive: !close }
            }
            Err(e) => {
                tracing::debug!(error = %e, "response relay broke off");
                Answered::Gone
            }
        }
    }

    /// The whole request body went to the backend.
    fn body_complete(&self) -> bool {
        self.body_in_buf as u64 == self.head.content_length || self.body_sent
    }

    /// Routes the request, reads its pin and chooses its backend.
    fn decide(&self, trace: &mut Trace) -> Result<(&'a Upstream, Decision), ProxyError> {
        let path = self.head.path(self.buf);
        let upstream_index = self
            .snap
            .router
            .route(Some(self.head.host(self.buf)), path)
            .ok_or(ProxyError::NoRoute)?;
        let snap: &'a Snapshot = self.snap;
        let upstream = &snap.upstreams[upstream_index];
        trace.upstream = Some(upstream_index);
        let lookup = head::Lookup {
            buf: self.buf,
            fields: &self.head.fields,
        };
        let pin = upstream.read_pin(&lookup, path, self.info.peer.ip());
        let decision = upstream.choose(pin);
        trace.outcome = Some(decision.outcome);
        if decision.outcome == Outcome::Rejected {
            let reject = upstream.config.failover == crate::config::Failover::Reject;
            return Err(match reject && pin.is_some() {
                true => ProxyError::Rejected,
                false => ProxyError::NoBackend,
            });
        }
        Ok((upstream, decision))
    }

    /// Sends the request to the decided backend and reads the response head,
    /// retrying per SPEC section 4; the backend that answered, its response and the
    /// final decision.
    async fn forward(
        &mut self,
        client: &mut Client,
        upstream: &Upstream,
        mut decision: Decision,
        trace: &mut Trace,
    ) -> Result<(usize, Response, Decision), ProxyError> {
        let timeouts = self.snap.config.timeouts;
        let replayable = self.head.is_idempotent(self.buf) && self.head.content_length == 0;
        let mut attempts = Attempts::new(upstream, &self.proxy.metrics, replayable);
        let mut fresh = false;
        let mut out = Vec::with_capacity(self.head.len + 256 + self.body_in_buf);
        loop {
            let backend = &upstream.backends[decision.backend];
            trace.backend = Some(decision.backend);
            let in_flight = InFlight::start(&backend.state);
            let pooled = match fresh {
                true => None,
                false => backend.state.pool.take_socket(),
            };
            let reused = pooled.is_some();
            let socket = match pooled {
                Some(socket) => socket,
                None => {
                    let addr = backend.state.pool.addr();
                    match connect(addr, timeouts.upstream_connect, &mut client.clock).await {
                        Ok(socket) => socket,
                        Err(cause) => {
                            drop(in_flight);
                            decision = attempts.not_sent(decision, cause)?;
                            fresh = false;
                            continue;
                        }
                    }
                }
            };
            out.clear();
            let fwd = Forwarding {
                strip_cookie: upstream
                    .cookie
                    .as_ref()
                    .map(|_| &*upstream.config.cookie.name),
                client: self.info.peer.ip(),
                tls: self.info.tls,
                failover_from: decision.failover_from.map(|f| &*upstream.backends[f].name),
            };
            head::write_request(&mut out, self.buf, self.head, &fwd);
            out.extend_from_slice(&self.buf[self.head.len..self.head.len + self.body_in_buf]);
            let failure = match self.exchange(client, socket, &out, timeouts).await {
                Ok((socket, buf, head)) => {
                    backend.state.passive_failures.store(0, Relaxed);
                    backend.state.requests.fetch_add(1, Relaxed);
                    let response = Response {
                        socket,
                        buf,
                        head,
                        in_flight,
                    };
                    return Ok((decision.backend, response, decision));
                }
                Err(failure) => failure,
            };
            drop(in_flight);
            match failure {
                Failure::Timeout => return Err(ProxyError::Timeout(timeouts.upstream_response)),
                Failure::ClientBody(cause) => return Err(ProxyError::BadBody(cause.into())),
                Failure::Backend(cause) => match attempts.no_response(decision, cause, reused)? {
                    Retry::SameBackend => fresh = true,
                    Retry::Next(next) => {
                        decision = next;
                        fresh = false;
                    }
                },
            }
        }
    }

    /// Writes the request on `socket` (streaming the rest of the body from the
    /// client) and reads the final response head.
    async fn exchange(
        &mut self,
        client: &mut Client,
        mut socket: TcpStream,
        request: &[u8],
        timeouts: crate::config::Timeouts,
    ) -> Result<(TcpStream, Vec<u8>, ResponseHead), Failure> {
        let backend_wait = Wait::Idle(timeouts.upstream_response);
        write_all(&socket, request, &mut client.clock, backend_wait)
            .await
            .map_err(Failure::sending)?;
        let body_left = self.head.content_length - self.body_in_buf as u64;
        let mut buf = take_buffer();
        if body_left > 0 {
            let head_request = self.head.is_head(self.buf);
            let streamed = stream_body(
                client,
                &mut socket,
                body_left,
                timeouts,
                &mut buf,
                head_request,
            );
            // false: the backend answered before it took the whole body.
            self.body_sent = streamed.await?;
        }
        let deadline = Wait::Until(Instant::now() + timeouts.upstream_response);
        loop {
            match head::parse_response(&buf, self.head.is_head(self.buf)) {
                // 1xx: not for the client (it sent no Expect); the final one follows.
                Ok(Some(head)) if (100..200).contains(&head.status) => {
                    buf.drain(..head.len);
                    continue;
                }
                Ok(Some(head)) => return Ok((socket, buf, head)),
                Ok(None) if buf.len() < RESPONSE_HEAD_MAX => {}
                Ok(None) => return Err(Failure::backend("response head too large")),
                Err(e) => return Err(Failure::backend(e)),
            }
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(BUFFER);
            }
            match read_some(&mut socket, &mut buf, &mut client.clock, deadline).await {
                Ok(0) => return Err(Failure::backend("connection closed before a response")),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::TimedOut => return Err(Failure::Timeout),
                Err(e) => return Err(Failure::backend(e)),
            }
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

/// Why a backend gave no response head.
enum Failure {
    Timeout,
    /// Reading the request body from the client failed.
    ClientBody(io::Error),
    Backend(BoxError),
}

impl Failure {
    fn backend(cause: impl Into<BoxError>) -> Failure {
        Failure::Backend(cause.into())
    }

    /// Writing to the backend failed; a backend that stops reading for
    /// `upstream_response` is a timeout, as on hyper's path (504, no retry).
    fn sending(cause: io::Error) -> Failure {
        match cause.kind() {
            io::ErrorKind::TimedOut => Failure::Timeout,
            _ => Failure::Backend(cause.into()),
        }
    }
}

/// Streams the request body's remaining `left` bytes from the client to the
/// backend; false when the backend answered before taking all of it (a 413 to a
/// large upload): the answer's head is then in `answer`.
async fn stream_body(
    client: &mut Client,
    socket: &mut TcpStream,
    mut left: u64,
    timeouts: crate::config::Timeouts,
    answer: &mut Vec<u8>,
    head_request: bool,
) -> Result<bool, Failure> {
    let mut chunk = take_buffer();
    while left > 0 {
        grow_if_full(&mut chunk);
        chunk.clear();
        let limit = left.min(chunk.capacity() as u64) as usize;
        let read = {
            let mut limited = (&mut chunk).limit(limit);
            read_some_into(
                &mut client.stream,
                &mut limited,
                &mut client.clock,
                Wait::Idle(timeouts.client_idle),
            )
            .await
        };
        match read {
            Ok(0) => {
                let eof = io::Error::new(io::ErrorKind::UnexpectedEof, "request body cut short");
                return Err(Failure::ClientBody(eof));
            }
            Ok(n) => left -= n as u64,
            Err(e) => return Err(Failure::ClientBody(e)),
        }
        let wait = Wait::Idle(timeouts.upstream_response);
        let sent = send_or_answer(
            socket,
            &chunk,
            answer,
            &mut client.clock,
            wait,
            head_request,
        );
        if !sent.await? {
            give_buffer(chunk);
            return Ok(false);
        }
    }
    give_buffer(chunk);
    Ok(true)
}

/// Writes `bytes` to the backend. While the backend takes none, what it sends
/// is read into `answer`: a final response head there ends the write (false),
/// interim 1xx heads are dropped.
async fn send_or_answer(
    socket: &mut TcpStream,
    mut bytes: &[u8],
    answer: &mut Vec<u8>,
    clock: &mut Clock,
    wait: Wait,
    head_request: bool,
) -> Result<bool, Failure> {
    while !bytes.is_empty() {
        match socket.try_write(bytes) {
            Ok(n) => {
                bytes = &bytes[n..];
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(Failure::sending(e)),
        }
        let deadline = wait.deadline();
        let ready = poll_fn(|cx| {
            // An error shows in the next write or read.
            if socket.poll_write_ready(cx).is_ready() {
                return Poll::Ready(Some(Interest::Write));
            }
            if socket.poll_read_ready(cx).is_ready() {
                return Poll::Ready(Some(Interest::Read));
            }
            clock.poll_passed(cx, deadline).map(|()| None)
        });
        match ready.await {
            None => return Err(Failure::Timeout),
            Some(Interest::Write) => continue,
            Some(Interest::Read) => {}
        }
        if answer.capacity() - answer.len() < 1024 {
            answer.reserve(BUFFER);
        }
        match read_now(socket, answer) {
            Ok(0) => {
                return Err(Failure::backend(
                    "connection closed while the request was sent",
                ))
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(Failure::backend(e)),
        }
        loop {
            match head::parse_response(answer, head_request) {
                Ok(Some(head)) if (100..200).contains(&head.status) => {
                    answer.drain(..head.len);
                }
                Ok(Some(_)) => return Ok(false),
                Ok(None) if answer.len() < RESPONSE_HEAD_MAX => break,
                Ok(None) => return Err(Failure::backend("response head too large")),
                Err(e) => return Err(Failure::backend(e)),
            }
        }
    }
    Ok(true)
}

/// Writes the response head (in `out`) and relays the body; `Ok(true)` when the
/// backend connection ended cleanly at the end of the body and can be reused.
async fn relay_body(
    client: &mut Client,
    socket: &mut TcpStream,
    mut buf: Vec<u8>,
    head: &ResponseHead,
    mut out: Vec<u8>,
    timeouts: crate::config::Timeouts,
) -> io::Result<bool> {
    let client_wait = Wait::Idle(timeouts.client_idle);
    let backend_wait = Wait::Idle(timeouts.upstream_response);
    let first = &buf[head.len..];
    let mut body = Body::new(head.framing);
    let (take, mut clean) = body.take(first)?;
    out.extend_from_slice(&first[..take]);
    write_all(&client.stream, &out, &mut client.clock, client_wait).await?;
    while !body.done() {
        grow_if_full(&mut buf);
        buf.clear();
        if read_some(socket, &mut buf, &mut client.clock, backend_wait).await? == 0 {
            if body.framing == Framing::UntilClose {
                break;
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "backend closed mid-body",
            ));
        }
        let (take, more_clean) = body.take(&buf)?;
        clean &= more_clean;
        write_all(&client.stream, &buf[..take], &mut client.clock, client_wait).await?;
    }
    give_buffer(buf);
    Ok(clean && body.framing != Framing::UntilClose)
}

/// A body that filled its buffer is large: the buffer grows to [`BODY_BUFFER`].
fn grow_if_full(buf: &mut Vec<u8>) {
    if buf.len() == buf.capacity() && buf.capacity() < BODY_BUFFER {
        buf.clear();
        buf.reserve_exact(BODY_BUFFER);
    }
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
    fn take(&mut self, bytes: &[u8]) -> io::Result<(usize, bool)> {
        let take = match self.framing {
            Framing::Empty => 0,
            Framing::Length(_) => {
                let take = self.left.min(bytes.len() as u64);
                self.left -= take;
                take as usize
            }
            Framing::Chunked => self.chunks.feed(bytes).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidData, "malformed chunked body")
            })?,
            Framing::UntilClose => bytes.len(),
        };
        Ok((take, take == bytes.len()))
    }
}

/// Writes limpet's own answer; false when the client is gone.
async fn write_local(client: &mut Client, snap: &Snapshot, err: &ProxyError, close: bool) -> bool {
    let status = err.status();
    let body = err.body();
    let mut out = Vec::with_capacity(160);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: ");
    out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
    if close {
        out.extend_from_slice(b"\r\nconnection: close");
    }
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body.as_bytes());
    let wait = Wait::Idle(snap.config.timeouts.client_idle);
    write_all(&client.stream, &out, &mut client.clock, wait)
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
    let access = crate::access_log::enabled().then(|| (head.method(buf), head.target(buf)));
    proxy.record(snap, trace, status, started.elapsed(), access);
}

async fn connect(
    addr: std::net::SocketAddr,
    timeout: Duration,
    clock: &mut Clock,
) -> Result<TcpStream, ConnectError> {
    match clock
        .within(Instant::now() + timeout, TcpStream::connect(addr))
        .await
    {
        None => Err(ConnectError::Timeout(timeout)),
        Some(Err(e)) => Err(ConnectError::Io(e)),
        Some(Ok(socket)) => {
            let _ = socket.set_nodelay(true);
            Ok(socket)
        }
    }
}

/// How long an IO operation may wait.
#[derive(Clone, Copy)]
enum Wait {
    /// Until this instant, however much traffic there was before.
    Until(Instant),
    /// This long from the start of the wait (inactivity).
    Idle(Duration),
}

impl Wait {
    fn deadline(self) -> Instant {
        match self {
            Wait::Until(at) => at,
            Wait::Idle(limit) => Instant::now() + limit,
        }
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "timed out")
}

/// Reads what is there into `buf`'s spare capacity (at least one byte of room);
/// `Ok(0)` at the end of the stream.
async fn read_some(
    socket: &mut TcpStream,
    buf: &mut Vec<u8>,
    clock: &mut Clock,
    wait: Wait,
) -> io::Result<usize> {
    if buf.capacity() == buf.len() {
        buf.reserve(BUFFER);
    }
    read_some_into(socket, buf, clock, wait).await
}

async fn read_some_into<B: BufMut>(
    socket: &mut TcpStream,
    buf: &mut B,
    clock: &mut Clock,
    wait: Wait,
) -> io::Result<usize> {
    let mut deadline = None;
    loop {
        match read_now(socket, buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            done => return done,
        }
        let until = *deadline.get_or_insert_with(|| wait.deadline());
        match ready(socket, Interest::Read, clock, until).await {
            Some(ready) => ready?,
            None => return Err(timed_out()),
        }
    }
}

/// One read of what is there, without waiting: through tokio's `AsyncRead`,
/// which (unlike `try_read`) notes that a short read drained the socket, so
/// that the next read waits for the poller instead of failing with EAGAIN (a
/// system call saved per read).
fn read_now<B: BufMut>(socket: &mut TcpStream, buf: &mut B) -> io::Result<usize> {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match pin!(socket.read_buf(buf)).poll(&mut cx) {
        Poll::Ready(read) => read,
        Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
    }
}

async fn write_all(
    socket: &TcpStream,
    mut bytes: &[u8],
    clock: &mut Clock,
    wait: Wait,
) -> io::Result<()> {
    while !bytes.is_empty() {
        match socket.try_write(bytes) {
            Ok(n) => {
                bytes = &bytes[n..];
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        match ready(socket, Interest::Write, clock, wait.deadline()).await {
            Some(ready) => ready?,
            None => return Err(timed_out()),
        }
    }
    Ok(())
}

/// One timer per connection for all its deadlines.
///
/// Arming a timer for every wait would cost a timer-wheel registration per
/// request; instead the timer is moved earlier only when a wait's deadline comes
/// before it, and when it fires before the wait's deadline it is re-armed. With
/// steady traffic it fires about once per `upstream_response`.
struct Clock {
    sleep: Pin<Box<Sleep>>,
}

impl Clock {
    fn new(first: Instant) -> Self {
        Clock {
            sleep: Box::pin(tokio::time::sleep_until(first)),
        }
    }

    /// `fut`'s output, or `None` if `deadline` passes first.
    async fn within<F: Future>(&mut self, deadline: Instant, fut: F) -> Option<F::Output> {
        let mut fut = pin!(fut);
        poll_fn(|cx| match fut.as_mut().poll(cx) {
            Poll::Ready(out) => Poll::Ready(Some(out)),
            Poll::Pending => self.poll_passed(cx, deadline).map(|()| None),
        })
        .await
    }

    /// Ready once `deadline` has passed.
    fn poll_passed(&mut self, cx: &mut Context<'_>, deadline: Instant) -> Poll<()> {
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

#[derive(Clone, Copy)]
enum Interest {
    Read,
    Write,
}

/// Waits until `socket` is readable or writable; `None` if `deadline` passes
/// first. Polled in place: no waiter is allocated in the connection's future.
async fn ready(
    socket: &TcpStream,
    interest: Interest,
    clock: &mut Clock,
    deadline: Instant,
) -> Option<io::Result<()>> {
    poll_fn(|cx| {
        let polled = match interest {
            Interest::Read => socket.poll_read_ready(cx),
            Interest::Write => socket.poll_write_ready(cx),
        };
        match polled {
            Poll::Ready(r) => Poll::Ready(Some(r)),
            Poll::Pending => clock.poll_passed(cx, deadline).map(|()| None),
        }
    })
    .await
}

thread_local! {
    static BUFFERS: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// An empty buffer of [`BUFFER`] bytes' capacity, from this thread's spares.
fn take_buffer() -> Vec<u8> {
    BUFFERS
        .with(|b| b.borrow_mut().pop())
        .unwrap_or_else(|| Vec::with_capacity(BUFFER))
}

fn give_buffer(mut buf: Vec<u8>) {
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

/// A connection whose first bytes were already read: they are read again first.
pub(crate) struct Prefixed {
    prefix: Vec<u8>,
    pos: usize,
    inner: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
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

impl AsyncWrite for Prefixed {
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
