//! limpet's HTTP/1 engine, for every HTTP/1.x connection, plain or TLS: one
//! task per client connection drives both the client stream and a pooled
//! backend socket, heads are parsed in place and rewritten into one buffer,
//! bodies are relayed as they come (chunked ones byte for byte), and an idle
//! keep-alive connection holds no buffer at all; a plain one idle for
//! `park::PARK_AFTER` leaves its task for its listener's lot (`crate::park`)
//! and comes back through [`resume`].
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
//! This file holds the connection: its loop, reading heads, limpet's own
//! answers. `exchange` takes one request to a backend and its response back,
//! `body` frames and relays bodies, `head` parses and writes heads, `chunked`
//! scans chunked bodies, `io` has the streams, the one timer per connection
//! and the spare buffers.
//!
//! The request walks `crate::flow`: `Proxy::decide`, `Attempts`, the
//! header policy (written as bytes by `head`), `Proxy::record`.
//!
//! Timeouts: the wait for a new connection's first head is bounded by
//! `client_header` from the accept, a later head by `client_header` from its
//! first byte, the wait between requests by `client_idle`; a client that stops
//! reading or sending a body is cut after `client_idle` of silence; a backend
//! after `upstream_connect` to connect, `upstream_response` for the response head
//! and `upstream_response` of silence within a body (HAProxy's `timeout server`),
//! or the upstream's own `[upstream.NAME.timeouts]` `connect` and `response`.

pub(crate) mod body;
mod chunked;
pub(crate) mod exchange;
pub(crate) mod head;
pub(crate) mod io;

use std::future::{poll_fn, Future};
use std::io as stdio;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use crate::config::Timeouts;
use crate::error::ProxyError;
use crate::flow::{Access, ConnInfo, Proxy, Trace};
use crate::park::PARK_AFTER;
use crate::shutdown::Watch;
use crate::state::Snapshot;
use body::BodyReader;
use exchange::{access, record, Answered, Exchange};
use head::{Delivery, Parsed, RequestHead};
use io::{give_buffer, read_some, take_buffer, write_all, Client, Clock, Wait};
pub(crate) use io::{Prefixed, Stream};

/// How long an idle keep-alive connection stays open once shutdown has
/// started, for the request its client may be sending (served with
/// Connection: close); an idle connection does not hold shutdown up longer.
const LINGER: Duration = Duration::from_secs(1);
/// How long a closing connection may take to say goodbye (TLS close_notify).
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// What serves a plain connection found to open with the HTTP/2 preface (h2c
/// prior knowledge): given the connection, its first bytes to be read again,
/// its registration for shutdown, and the guard held until it ends. The listener says what; the engine only
/// recognises it.
pub(crate) type H2cServer<S, G> =
    fn(Prefixed<S>, Arc<Proxy>, ConnInfo, Watch, G) -> Pin<Box<dyn Future<Output = ()> + Send>>;

/// What parks a plain kept-alive connection that has waited
/// [`PARK_AFTER`] for its next request (`crate::park`): `None` once parked,
/// the connection given back when it cannot be (it then goes on here).
pub(crate) type Parker<S, G> = fn(Idle<S, G>) -> Option<Idle<S, G>>;

/// A kept-alive connection waiting for its next request: what it needs to go
/// on, and when its idle time (`client_idle`) ends.
pub(crate) struct Idle<S, G> {
    pub(crate) stream: S,
    pub(crate) proxy: Arc<Proxy>,
    pub(crate) info: ConnInfo,
    pub(crate) guard: G,
    pub(crate) until: Instant,
}

/// Serves an HTTP/1 connection until it closes; `guard` is held until then.
/// `h2c`: on a plain listener, what serves the connection instead if its
/// first bytes are the HTTP/2 preface. `park`: what takes it out of its task
/// while it is idle long (plain connections).
pub(crate) fn serve<S: Stream, G: Send + 'static>(
    proxy: Arc<Proxy>,
    stream: S,
    info: ConnInfo,
    closing: Watch,
    guard: G,
    h2c: Option<H2cServer<S, G>>,
    park: Option<Parker<S, G>>,
) -> impl Future<Output = ()> + Send + 'static {
    run(proxy, stream, info, closing, guard, h2c, park, None)
}

/// Serves a kept-alive connection given back by the lot it was parked in
/// (its client sent, or shutdown started).
pub(crate) fn resume<S: Stream, G: Send + 'static>(
    conn: Idle<S, G>,
    closing: Watch,
    park: Option<Parker<S, G>>,
) -> impl Future<Output = ()> + Send + 'static {
    let Idle {
        stream,
        proxy,
        info,
        guard,
        until,
    } = conn;
    run(proxy, stream, info, closing, guard, None, park, Some(until))
}

/// The connection's loop. `resumed_until`: a kept-alive connection given
/// back by its lot, waiting for a request until then; `None`: a new one.
///
/// An async block rather than an async fn, which would keep every argument twice
/// in the future: this one is the task of every connection, idle ones included.
#[allow(clippy::manual_async_fn, clippy::too_many_arguments)]
fn run<S: Stream, G: Send + 'static>(
    mut proxy: Arc<Proxy>,
    stream: S,
    mut info: ConnInfo,
    mut closing: Watch,
    mut guard: G,
    h2c: Option<H2cServer<S, G>>,
    park: Option<Parker<S, G>>,
    mut resumed_until: Option<Instant>,
) -> impl Future<Output = ()> + Send + 'static {
    // Set up outside the async block, which then holds each value once.
    let (mut header, mut idle) = client_timeouts(&proxy.state.load().config.timeouts);
    // A new connection owes its first head within client_header from the accept;
    // a later head is due client_header after its first byte.
    let mut first_head = match resumed_until {
        None => Some(Instant::now() + ms(header)),
        Some(_) => None,
    };
    let mut client = Client {
        stream,
        clock: Clock::new(first_head.or(resumed_until).unwrap_or_else(Instant::now)),
        pending: Vec::new(),
    };
    let mut h2c = h2c;
    async move {
        loop {
            let head_deadline = if client.pending.is_empty() {
                let (until, park_at) = match (first_head, resumed_until.take()) {
                    (Some(at), _) => (at, None),
                    (None, Some(at)) => (at, park.map(|_| Instant::now() + PARK_AFTER)),
                    (None, None) => {
                        let now = Instant::now();
                        (now + ms(idle), park.map(|_| now + PARK_AFTER))
                    }
                };
                // Only a kept-alive connection may be closed to make room.
                closing.set_idle(first_head.is_none());
                let waited = next_bytes(&mut client, until, &mut closing, park_at).await;
                closing.set_idle(false);
                match waited {
                    Ok(Waited::Bytes) => {}
                    Ok(Waited::Nothing) => break,
                    Ok(Waited::Long) => {
                        let Some(park) = park else { break };
                        let conn = Idle {
                            stream: client.stream,
                            proxy,
                            info,
                            guard,
                            until,
                        };
                        let Some(back) = park(conn) else { return };
                        // Not parked (shutdown has started): it goes on here.
                        (client.stream, proxy, info, guard) =
                            (back.stream, back.proxy, back.info, back.guard);
                        resumed_until = Some(until);
                        continue;
                    }
                    Err(e) => {
                        tracing::debug!(peer = %info.peer, error = %e, "connection ended with an error");
                        break;
                    }
                }
                first_head
                    .take()
                    .unwrap_or_else(|| Instant::now() + ms(header))
            } else {
                // Pipelined: the next head has begun already.
                first_head = None;
                Instant::now() + ms(header)
            };
            // Boxed, as below: what runs once per connection takes no room
            // in every idle connection's task.
            if let Some(serve_h2c) = h2c.take() {
                if Box::pin(starts_h2(&mut client, head_deadline)).await {
                    let prefix = std::mem::take(&mut client.pending);
                    let io = Prefixed::new(prefix, client.stream);
                    return serve_h2c(io, proxy, info, closing, guard).await;
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
        if S::SAYS_GOODBYE {
            let deadline = Instant::now() + CLOSE_WAIT;
            let goodbye = client.clock.within(deadline, client.stream.shutdown());
            let _ = Box::pin(goodbye).await;
        }
        drop(guard);
    }
}

/// `client_header` and `client_idle` in milliseconds: kept in every
/// connection's task, where two `Duration`s would take 24 bytes more.
fn client_timeouts(t: &Timeouts) -> (u32, u32) {
    let millis = |d: Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
    (millis(t.client_header), millis(t.client_idle))
}

fn ms(millis: u32) -> Duration {
    Duration::from_millis(u64::from(millis))
}

/// What the wait for a request's first bytes ended with.
enum Waited {
    /// Read into `client.pending`.
    Bytes,
    /// The client closed, the deadline passed, or shutdown started with
    /// nothing received.
    Nothing,
    /// Nothing yet, after [`PARK_AFTER`]: time to park.
    Long,
}

/// Waits, holding no buffer, for the first bytes of the next request and reads
/// them into `client.pending`. `park_at`: when it stops waiting in its task
/// ([`Waited::Long`]).
fn next_bytes<'a, S: Stream>(
    client: &'a mut Client<S>,
    deadline: Instant,
    closing: &'a mut Watch,
    park_at: Option<Instant>,
) -> impl Future<Output = stdio::Result<Waited>> + 'a {
    // Polled by hand rather than an async fn: this future is in every idle
    // connection's task.
    let mut linger = None;
    poll_fn(move |cx| {
        match client.stream.poll_read_hint(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return idle(client, cx, deadline, closing, &mut linger, park_at),
        }
        let mut buf = take_buffer();
        match io::poll_read_buf(&mut client.stream, cx, &mut buf) {
            Poll::Ready(Ok(0)) => {
                give_buffer(buf);
                Poll::Ready(Ok(Waited::Nothing))
            }
            Poll::Ready(Ok(_)) => {
                client.pending = buf;
                Poll::Ready(Ok(Waited::Bytes))
            }
            Poll::Ready(Err(e)) => {
                give_buffer(buf);
                Poll::Ready(Err(e))
            }
            Poll::Pending => {
                give_buffer(buf);
                idle(client, cx, deadline, closing, &mut linger, park_at)
            }
        }
    })
}

/// Nothing to read yet: ready (false) once `deadline` passes, or once
/// shutdown has started and the connection stayed quiet for [`LINGER`]
/// after it. A request that arrives meanwhile is served with Connection:
/// close (HAProxy's `idle-close-on-response`): a busy keep-alive client learns
/// that the connection ends from a response rather than by sending into a
/// connection being closed. One chosen to make room closes at once unless a
/// request is waiting (asked of the kernel: the runtime hears of it only on
/// its next turn). Once `park_at` passes, ready with [`Waited::Long`].
fn idle<S: Stream>(
    client: &mut Client<S>,
    cx: &mut Context<'_>,
    deadline: Instant,
    closing: &mut Watch,
    linger: &mut Option<Instant>,
    park_at: Option<Instant>,
) -> Poll<stdio::Result<Waited>> {
    if closing.poll_closing(cx).is_ready() && !client.stream.bytes_waiting() {
        if closing.is_evicted() {
            return Poll::Ready(Ok(Waited::Nothing));
        }
        let until = *linger.get_or_insert_with(|| Instant::now() + LINGER);
        if Instant::now() >= until {
            return Poll::Ready(Ok(Waited::Nothing));
        }
        return client
            .clock
            .poll_passed(cx, until.min(deadline))
            .map(|()| Ok(Waited::Nothing));
    }
    let Some(park_at) = park_at.filter(|at| *at < deadline) else {
        return client
            .clock
            .poll_passed(cx, deadline)
            .map(|()| Ok(Waited::Nothing));
    };
    client
        .clock
        .poll_passed(cx, park_at)
        .map(|()| Ok(Waited::Long))
}

/// Whether the connection's first bytes are the HTTP/2 preface, reading until
/// enough of them are there to tell.
async fn starts_h2<S: Stream>(client: &mut Client<S>, deadline: Instant) -> bool {
    loop {
        if let Some(is) = io::is_preface(&client.pending) {
            return is;
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
                // Counted and logged as any answer is (400, 408, 431, 417
                // were in neither the metrics nor the access log).
                let sent = answer_len(&err, head_request);
                let logged = refused_access(&buf, info, sent);
                let trace = Trace::default();
                let status = err.status().as_u16();
                record(
                    proxy,
                    &snap,
                    &trace,
                    status,
                    std::time::Instant::now(),
                    logged,
                );
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
            let err = ProxyError::BadBody(e.into());
            let bytes = (0, answer_len(&err, head.is_head(&buf)));
            let logged = access(&buf, &head, info, bytes);
            record(proxy, &snap, &trace, 400, started, logged);
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
    let bytes_in = exchange.body.taken();
    let past_body = std::mem::take(&mut exchange.past_body);
    let keep_alive = match answered {
        Answered::Relayed { keep_alive } => keep_alive,
        Answered::Local(err) => {
            // Shutdown may have started while the request was on its way.
            let close = close_after || err.closes() || !body_done || closing.is_closing();
            let bytes = (bytes_in, answer_len(&err, head.is_head(&buf)));
            let logged = access(&buf, &head, info, bytes);
            record(proxy, &snap, &trace, err.status().as_u16(), started, logged);
            let delivery = Delivery {
                close,
                http10: head.http10,
                dechunk: false,
            };
            answer(client, &snap, &err, head.is_head(&buf), delivery).await && !close
        }
        Answered::Gone => false,
    };
    // Shutdown may have started after the response said keep-alive: the
    // client may be sending its next request already. The connection goes
    // on as an idle one at shutdown does: a request within LINGER is served
    // with Connection: close, else it closes (closing at once lost that
    // request, under SIGTERM and SIGUSR2 alike).
    if !keep_alive {
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

/// The access-log fields of a request whose head was refused: its method
/// and target as far as they can be read (visible ASCII only, else `-`: the
/// bytes are the client's, and go into a log line).
fn refused_access<'b>(buf: &'b [u8], info: &ConnInfo, bytes_out: u64) -> Option<Access<'b>> {
    let line = buf
        .split(|&b| b == b'\r' || b == b'\n')
        .next()
        .unwrap_or_default();
    let mut words = line.split(|&b| b == b' ');
    let mut word = || {
        words
            .next()
            .filter(|w| {
                !w.is_empty() && w.len() <= 1024 && w.iter().all(|b| (0x21..0x7f).contains(b))
            })
            .and_then(|w| std::str::from_utf8(w).ok())
            .unwrap_or("-")
    };
    let (method, path) = (word(), word());
    crate::access_log::enabled().then(|| Access {
        method,
        path,
        client: info.peer.ip(),
        bytes_in: 0,
        bytes_out,
    })
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

/// The length of limpet's own answer's body (none for HEAD).
fn answer_len(err: &ProxyError, head_request: bool) -> u64 {
    match head_request {
        true => 0,
        false => err.body().len() as u64,
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
