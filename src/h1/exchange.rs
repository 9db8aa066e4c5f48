//! One request on its way to a backend and its response on the way back:
//! routing through `crate::flow`, the attempts on pooled or new backend
//! sockets, the request body streamed (while watching for an early answer),
//! the response head read, and the relay or tunnel that follows.

use std::future::poll_fn;
use std::io as stdio;
use std::pin::Pin;
use std::task::Poll;

use bytes::BufMut;
use tokio::io::AsyncWrite;
use tokio::time::Instant;

use super::body::{relay_body, BodyReader};
use super::head::{self, Delivery, Framing, RequestBody, RequestHead, ResponseHead};
use super::io::{
    self, give_buffer, grow_if_full, read_into, read_some, take_buffer, write_all, Client, Clock,
    Stream, Wait, Waits,
};
use crate::backend::{InFlight, Tunnel};
use crate::error::ProxyError;
use crate::flow::policy::Forwarding;
use crate::flow::{self, Access, Attempts, Chosen, ConnInfo, Failure, Proxy, RequestView, Trace};
use crate::pool::Conn;
use crate::shutdown::Watch;
use crate::state::{Decision, Snapshot, Upstream};

/// A longer response head from a backend is a bad gateway.
pub(crate) const RESPONSE_HEAD_MAX: usize = 64 * 1024;

/// How a request ended.
pub(super) enum Answered {
    /// The backend's response was relayed; whether the client connection can
    /// carry another request.
    Relayed { keep_alive: bool },
    /// limpet answers itself.
    Local(ProxyError),
    /// The client or the backend broke the connection mid-response, or a
    /// tunnel ended.
    Gone,
}

impl Delivery {
    /// An answer after which the connection closes.
    pub(super) fn closing() -> Self {
        Delivery {
            close: true,
            http10: false,
            dechunk: false,
        }
    }
}

/// One request on its way to a backend and its response on the way back.
pub(super) struct Exchange<'a> {
    pub(super) proxy: &'a Proxy,
    pub(super) snap: &'a Snapshot,
    pub(super) info: &'a ConnInfo,
    pub(super) buf: &'a [u8],
    pub(super) head: &'a RequestHead,
    pub(super) body: BodyReader,
    /// Bytes of the request body that arrived with the head.
    pub(super) body_in_buf: usize,
    /// Bytes read from the client past the end of a streamed body.
    pub(super) past_body: Vec<u8>,
    /// Shutdown: once it has started, the response says Connection: close.
    pub(super) closing: &'a Watch,
}

impl<'a> Exchange<'a> {
    pub(super) async fn run<S: Stream>(
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
        trace.decided(&decision);
        let Response {
            mut socket,
            buf: resp_buf,
            head: resp_head,
            in_flight,
        } = response;
        let status = resp_head.status;
        let said = resp_head.session_replica(&resp_buf);
        let set_cookie = flow::pin_cookie(upstream, &decision, said, self.info.tls, trace);
        let elapsed = started.elapsed();
        self.proxy.record_metrics(self.snap, trace, status, elapsed);
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
            // Logged as the tunnel opens: it may stay open for hours.
            self.log(trace, status, elapsed, 0);
            // Open, it counts in the backend's tunnels and (by its in-flight
            // guard) in the requests least-requests compares.
            let tunnel = Tunnel::open(in_flight.state());
            self.tunnel(client, socket, &resp_buf[resp_head.len..], out)
                .await;
            drop(tunnel);
            drop(in_flight);
            return Answered::Gone;
        }
        let timeouts = Waits::of(self.snap, upstream);
        let mut sent = 0;
        let relayed = relay_body(
            client,
            &mut socket,
            resp_buf,
            &resp_head,
            out,
            timeouts,
            dechunk,
            &mut sent,
        )
        .await;
        drop(in_flight);
        self.log(trace, status, elapsed, sent);
        match relayed {
            Ok(clean) => {
                let backend = &upstream.backends[decision.backend];
                if clean && resp_head.keep_alive && self.body.done() && !backend.send_proxy {
                    let keep_for = crate::pool::keep_for(
                        timeouts.backend.keepalive,
                        resp_head.keep_alive_timeout,
                    );
                    backend.state.pool.put(socket, keep_for);
                }
                Answered::Relayed { keep_alive: !close }
            }
            Err(e) => {
                tracing::debug!(error = %e, "response relay broke off");
                Answered::Gone
            }
        }
    }

    /// The access-log line of a relayed response, `bytes_out` body bytes long.
    fn log(&self, trace: &Trace, status: u16, elapsed: std::time::Duration, bytes_out: u64) {
        let bytes = (self.body.taken(), bytes_out);
        if let Some(access) = access(self.buf, self.head, self.info, bytes) {
            flow::log_access(self.snap, trace, status, elapsed, &access);
        }
    }

    /// Routes the request, reads its pin and chooses its backend.
    pub(super) fn decide(&self, trace: &mut Trace) -> Result<Chosen<'a>, ProxyError> {
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
    pub(super) async fn forward<S: Stream>(
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
        // What cannot be sent twice goes only on a connection surely alive.
        let reuse_within = (!replayable).then_some(crate::pool::SAFE_REUSE);
        let mut fresh = false;
        let mut out = Vec::with_capacity(self.head.len + 256 + self.body_in_buf);
        loop {
            let backend = &upstream.backends[decision.backend];
            trace.attempt(&decision);
            let in_flight = InFlight::start(&backend.state);
            // A connection that began with one client's PROXY header is
            // that client's alone: never pooled.
            let pooled = match fresh || backend.send_proxy {
                true => None,
                false => backend.state.pool.take(reuse_within, backend.tls.as_ref()),
            };
            let reused = pooled.is_some();
            let result = match pooled {
                Some(socket) => Ok(socket),
                None => {
                    // The client's PROXY header goes before anything else
                    // (TLS included) on a new connection.
                    out.clear();
                    if backend.send_proxy {
                        let local = self.info.local_addr(|| client.stream.local_addr());
                        crate::proxy_protocol::write_v2(&mut out, self.info.peer, local);
                    }
                    let header = backend.send_proxy.then_some(&out[..]);
                    let tls = backend.tls.as_ref();
                    let pool = &backend.state.pool;
                    pool.connect(tls, timeouts.backend.connect, header)
                        .await
                        .map_err(Failure::NotSent)
                }
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
                        failover_from: decision.failover_from.map(|f| upstream.name_of(f)),
                        request_id: trace.forwarded_id(),
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
                    backend.state.answered(upstream.counted_session(&decision));
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
    pub(super) async fn exchange<S: Stream>(
        &mut self,
        client: &mut Client<S>,
        mut socket: Conn,
        request: &[u8],
        timeouts: Waits,
    ) -> Result<(Conn, Vec<u8>, ResponseHead), Failure> {
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
            // TLS may hold the body's last records until flushed (a
            // failure shows when the response is read).
            let _ = write_all(&mut socket, &[], &mut client.clock, backend_wait).await;
        }
        let head = read_response_head(
            &mut socket,
            &mut buf,
            &mut client.clock,
            timeouts,
            (head_request, upgrade),
        )
        .await?;
        Ok((socket, buf, head))
    }

    /// After a 101: writes the response head and what followed it to the
    /// client, what the client sent past its request to the backend, then
    /// copies bytes both ways until either side closes.
    pub(super) async fn tunnel<S: Stream>(
        &mut self,
        client: &mut Client<S>,
        mut socket: Conn,
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

/// A response head from a backend, with what it takes to relay the body.
pub(super) struct Response {
    socket: Conn,
    /// The head, and the first bytes of the body after it.
    buf: Vec<u8>,
    head: ResponseHead,
    in_flight: InFlight,
}

/// Reads the backend's final response head into `buf` (which may hold the
/// start of it already), dropping interim 1xx heads (limpet answered the
/// client's Expect itself), within the backend's response timeout.
/// `request`: whether it was HEAD (no body follows) and asked to upgrade (a
/// 101 may come).
pub(crate) async fn read_response_head(
    socket: &mut Conn,
    buf: &mut Vec<u8>,
    clock: &mut Clock,
    timeouts: Waits,
    (head_request, upgrade): (bool, bool),
) -> Result<ResponseHead, Failure> {
    let deadline = Wait::Until(Instant::now() + timeouts.backend.response);
    // Bytes of a response arrived (an interim one included): a failure
    // now is the backend's answer going wrong, not a closed connection.
    let mut answered = !buf.is_empty();
    loop {
        match head::parse_response(buf, head_request, upgrade) {
            Ok(Some(head)) if head.status < 200 && head.status != 101 => {
                buf.drain(..head.len);
                continue;
            }
            Ok(Some(head)) => {
                let body = &buf[head.len..];
                return checked_chunks(head, body);
            }
            Ok(None) if buf.len() < RESPONSE_HEAD_MAX => {}
            Ok(None) => return Err(bad_response("response head too large")),
            Err(e) => return Err(Failure::BadResponse(e.into())),
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(io::BUFFER);
        }
        match read_some(socket, buf, clock, deadline).await {
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
            Err(e) if refused_tls(&e) => return Err(tls_refusal(e)),
            Err(e) if !answered => return Err(Failure::Closed(e.into())),
            Err(e) => return Err(Failure::BadResponse(e.into())),
        }
    }
}

/// The backend ended the TLS session with an alert: under TLS 1.3 a backend
/// that wants a client certificate (or refuses the one it got) says so only
/// after the client has finished its handshake, as the request goes out.
fn refused_tls(e: &stdio::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|tls| matches!(tls, rustls::Error::AlertReceived(_)))
}

/// A TLS refusal is the handshake's failure, whenever it is told: nothing of
/// the request was taken, and with no target left the answer is the 502
/// that says the TLS handshake failed, not a 503 as if no backend were up.
fn tls_refusal(e: stdio::Error) -> Failure {
    Failure::NotSent(crate::pool::ConnectError::Tls(e))
}

/// A chunked body whose first bytes, come with the head, are malformed is a
/// bad response (a 502, nothing sent to the client yet) rather than a head
/// relayed and then a connection cut. (Chunks that go wrong later cut the
/// response short: its head has gone.)
fn checked_chunks(head: ResponseHead, body: &[u8]) -> Result<ResponseHead, Failure> {
    if head.framing == Framing::Chunked && !body.is_empty() {
        if let Err(_malformed) = super::chunked::Scanner::new().feed(body) {
            return Err(bad_response("malformed chunked body"));
        }
    }
    Ok(head)
}

pub(crate) fn bad_response(why: &'static str) -> Failure {
    Failure::BadResponse(why.into())
}

/// Writing to the backend failed: it closed before answering; one that stops
/// reading for its response timeout is a timeout (see `Attempts` for what follows).
pub(crate) fn sending(cause: stdio::Error, timeouts: Waits) -> Failure {
    if refused_tls(&cause) {
        return tls_refusal(cause);
    }
    match cause.kind() {
        stdio::ErrorKind::TimedOut => Failure::Timeout(timeouts.backend.response),
        _ => Failure::Closed(cause.into()),
    }
}

/// A request body on its way from the client to the backend.
pub(crate) struct Upload<'s> {
    socket: &'s mut Conn,
    /// What the backend answers while the body is on its way.
    answer: &'s mut Vec<u8>,
    head_request: bool,
    upgrade: bool,
    timeouts: Waits,
}

impl<'s> Upload<'s> {
    /// An upload on `socket`; what the backend answers meanwhile goes to
    /// `answer`. `request`: whether it was HEAD and asked to upgrade.
    pub(crate) fn new(
        socket: &'s mut Conn,
        answer: &'s mut Vec<u8>,
        (head_request, upgrade): (bool, bool),
        timeouts: Waits,
    ) -> Self {
        Upload {
            socket,
            answer,
            head_request,
            upgrade,
            timeouts,
        }
    }

    /// Streams the rest of the body from the client to the backend; stops
    /// early when the backend answers before taking all of it (a 413 to a
    /// large upload): the answer's head is then in `answer`. Bytes read past
    /// the body go to `past`.
    pub(super) async fn stream<S: Stream>(
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
                    return Err(match e.kind() {
                        stdio::ErrorKind::TimedOut => Failure::ClientStalled,
                        _ => Failure::ClientBody(e.into()),
                    });
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
    pub(crate) async fn send(
        &mut self,
        mut bytes: &[u8],
        clock: &mut Clock,
    ) -> Result<bool, Failure> {
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
    pub(super) fn answered(&mut self) -> Result<bool, Failure> {
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

/// The metrics and access-log line of a request limpet answered itself
/// (`access`: see [`access`]).
pub(super) fn record(
    proxy: &Proxy,
    snap: &Snapshot,
    trace: &Trace,
    status: u16,
    started: std::time::Instant,
    access: Option<Access<'_>>,
) {
    proxy.record(snap, trace, status, started.elapsed(), access);
}

/// What the access log says of the request beyond its trace, when it is on;
/// `bytes`: the body bytes received and sent.
pub(super) fn access<'b>(
    buf: &'b [u8],
    head: &RequestHead,
    info: &ConnInfo,
    bytes: (u64, u64),
) -> Option<Access<'b>> {
    crate::access_log::enabled().then(|| Access {
        method: std::str::from_utf8(head.method(buf)).unwrap_or(""),
        path: head.target(buf),
        client: info.peer.ip(),
        bytes_in: bytes.0,
        bytes_out: bytes.1,
    })
}
