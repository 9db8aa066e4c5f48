//! HTTP/2 connections (ALPN `h2` on TLS listeners, prior knowledge h2c on plain
//! ones): limpet's own server (`conn`: frames, flow control and stream states;
//! `hpack`; `request`: the checks on a request's fields) serves the protocol,
//! and each request walks `crate::flow` as the HTTP/1 engine's do:
//! [`Proxy::decide`], [`Attempts`], the header policy
//! (`policy::write_request_fields`, `ResponseHead::passes`), [`Proxy::record`].
//!
//! Backends get HTTP/1.1 on the sockets of `crate::pool`, written and read by
//! the HTTP/1 engine's own pieces rather than hyper's client (`upstream`): a
//! request takes a pooled (or new) socket, writes its head and streams its
//! body, reads the response head with the strict parser, and hands the
//! connection a body ([`Relay`]) that reads the backend's body from the socket
//! and puts the socket back in the pool where it ends. No task is spawned and
//! no client connection is set up per request (hyper's client cost two
//! spawns, a dispatcher and a channel per request: bench/RESULTS.md, "HTTP/2
//! path").

mod conn;
mod frame;
mod hpack;
mod request;
mod stream;
mod timeouts;
mod upstream;

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::backend::{Backend, InFlight};
use crate::error::{BoxError, ProxyError};
use crate::flow::policy::Forwarding;
use crate::flow::{self, Access, Attempts, Chosen, ConnInfo, Failure, Proxy, RequestView, Trace};
use crate::h1::head::ResponseHead;
use crate::h1::io::{Clock, Waits};
use crate::pool::Conn;
use crate::shutdown::Watch;
use crate::state::Snapshot;
use conn::Connection;
use request::RequestHead;
use stream::{HeadFields, RequestBody, StreamReset};
use timeouts::{Activity, TimedIo};

use upstream::Relay;

/// Serves an HTTP/2 connection until it closes, or until shutdown (the
/// listener's [`Watch`]: in-flight streams finish after a GOAWAY).
pub(crate) async fn serve<I>(
    proxy: &Arc<Proxy>,
    io: I,
    info: ConnInfo,
    closing: Watch,
) -> Result<(), BoxError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (timeouts, max_header_bytes) = {
        let snap = proxy.state.load();
        (snap.config.timeouts, snap.config.limits.max_header_bytes)
    };
    let activity = Activity::new();
    let io = TimedIo::new(
        io,
        activity.clone(),
        timeouts.client_header,
        timeouts.client_idle,
    );
    let proxy = Arc::clone(proxy);
    // Shared by the streams: cloning a ConnInfo copies its boxed address.
    let info = Arc::new(info);
    let service = move |(head, body): conn::Request| {
        let proxy = Arc::clone(&proxy);
        let info = Arc::clone(&info);
        let activity = activity.clone();
        async move {
            // Held by the connection until the response has gone: a client
            // reading a long response is not idle.
            let busy = activity.request_started();
            (call(&proxy, head, body, &info).await, busy)
        }
    };
    Connection::new(io, service, closing, max_header_bytes)
        .run()
        .await
}

/// Answers one request; never fails.
async fn call(
    proxy: &Proxy,
    head: Result<RequestHead, ProxyError>,
    body: RequestBody,
    info: &ConnInfo,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let head_request = head.as_ref().is_ok_and(|h| h.method == Method::HEAD);
    // Copied for the access log only when it is on.
    let access = crate::access_log::enabled().then(|| match &head {
        Ok(head) => (head.method.clone(), head.path.clone()),
        Err(_) => (Method::GET, String::new()),
    });
    let bytes_in = access.as_ref().map(|_| Arc::new(AtomicU64::new(0)));
    let snap = proxy.state.load_full();
    let mut trace = Trace::default();
    let handled = match head {
        Ok(head) => handle(proxy, &snap, head, body, info, &mut trace, bytes_in.clone()).await,
        Err(err) => Err(err),
    };
    let response = match handled {
        Ok(resp) => resp,
        Err(err) => {
            if err.status().is_server_error() {
                tracing::debug!(error = %err, "request failed");
            }
            answer(&err, head_request)
        }
    };
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    proxy.record_metrics(&snap, &trace, status, elapsed);
    let Some((method, path)) = access else {
        return response;
    };
    let line = Box::new(Pending {
        snap,
        trace,
        status,
        elapsed,
        method,
        path,
        client: info.peer.ip(),
        bytes_in: bytes_in.unwrap_or_default(),
        bytes_out: 0,
    });
    let (parts, body) = response.into_parts();
    let body = match body {
        ProxyBody::Streamed(mut streamed) if !streamed.relay.ended() => {
            streamed.line = Some(line);
            ProxyBody::Streamed(streamed)
        }
        ProxyBody::Streamed(streamed) => {
            line.write();
            ProxyBody::Streamed(streamed)
        }
        ProxyBody::Local(full) => {
            let mut line = line;
            line.bytes_out = full.size_hint().exact().unwrap_or(0);
            line.write();
            ProxyBody::Local(full)
        }
    };
    Response::from_parts(parts, body)
}

/// A request's access-log line, written when its response body has ended
/// (or was dropped: the client went away), with the body bytes counted.
struct Pending {
    snap: Arc<Snapshot>,
    trace: Trace,
    status: u16,
    /// To the response head.
    elapsed: Duration,
    method: Method,
    path: String,
    client: std::net::IpAddr,
    /// The request body's DATA bytes, counted as they go to the backend.
    bytes_in: Arc<AtomicU64>,
    bytes_out: u64,
}

impl Pending {
    fn write(&self) {
        let access = Access {
            method: self.method.as_str(),
            path: &self.path,
            client: self.client,
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out,
        };
        flow::log_access(&self.snap, &self.trace, self.status, self.elapsed, &access);
    }
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("status", &self.status)
            .finish()
    }
}

/// The client's request body on its way to a backend, its DATA bytes counted
/// for the access log when it is on.
#[derive(Debug)]
struct Counted {
    inner: RequestBody,
    count: Option<Arc<AtomicU64>>,
}

impl Body for Counted {
    type Data = Bytes;
    type Error = StreamReset;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StreamReset>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let (Poll::Ready(Some(Ok(frame))), Some(count)) = (&polled, &this.count) {
            if let Some(data) = frame.data_ref() {
                count.fetch_add(data.len() as u64, Relaxed);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// limpet's own answer: status and a short plain-text body (none for HEAD).
fn answer(err: &ProxyError, head_request: bool) -> Response<ProxyBody> {
    let body = match head_request {
        true => "",
        false => err.body(),
    };
    let mut resp = Response::new(ProxyBody::Local(Full::new(Bytes::from_static(
        body.as_bytes(),
    ))));
    *resp.status_mut() = err.status();
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(err.body().len()));
    if let Some(location) = err.location().and_then(|l| HeaderValue::from_str(l).ok()) {
        headers.insert(header::LOCATION, location);
    }
    resp
}

async fn handle(
    proxy: &Proxy,
    snap: &Snapshot,
    mut parts: RequestHead,
    body: RequestBody,
    info: &ConnInfo,
    trace: &mut Trace,
    bytes_in: Option<Arc<AtomicU64>>,
) -> Result<Response<ProxyBody>, ProxyError> {
    if parts.method == Method::CONNECT {
        return Err(ProxyError::BadRequest("CONNECT over HTTP/2"));
    }
    let authority = parts.authority.take();
    // `:authority` wins over a `host` field (RFC 9113, section 8.3.1).
    let host: Option<&[u8]> = match (&authority, parts.headers.get(header::HOST)) {
        (Some(a), _) => Some(a.as_bytes()),
        (None, Some(h)) => Some(h.as_bytes()),
        (None, None) => None,
    };
    let host_text = host.and_then(|h| std::str::from_utf8(h).ok());
    // The origin-form target the backend gets (checked by `request`).
    let path = std::mem::take(&mut parts.path);
    let origin = path.as_str();
    let view = RequestView {
        host: host_text,
        path: crate::flow::routed_path(origin),
        target: origin,
        headers: &parts.headers,
        peer: info.peer.ip(),
        tls: info.tls,
    };
    let Chosen {
        upstream,
        mut decision,
        hsts,
    } = Proxy::decide(snap, &view, trace)?;
    let mut body = Counted {
        inner: body,
        count: bytes_in,
    };
    let framing = upstream::RequestFraming::of(&parts.headers, &body);
    let replayable = flow::is_idempotent(parts.method.as_str().as_bytes())
        && framing == upstream::RequestFraming::None;
    let head_request = parts.method == Method::HEAD;
    let mut attempts = Attempts::new(upstream, &proxy.metrics, replayable);
    let waits = Waits::of(snap, upstream);
    // One timer for the whole exchange: the request's writes, the response
    // head, then silences within the response body.
    let mut clock = Clock::new(tokio::time::Instant::now() + waits.backend.response);
    let mut out = Vec::with_capacity(512);
    let mut fresh = false;
    loop {
        let backend = &upstream.backends[decision.backend];
        trace.attempt(&decision);
        let fwd = Forwarding {
            host,
            strip_cookie: upstream
                .cookie
                .as_ref()
                .map(|_| &*upstream.config.cookie.name),
            client: info.peer.ip(),
            tls: info.tls,
            failover_from: decision.failover_from.map(|f| upstream.name_of(f)),
            request_id: trace.forwarded_id(),
        };
        upstream::write_head(
            &mut out,
            &parts.method,
            origin,
            &parts.headers,
            &fwd,
            framing,
        );
        let in_flight = InFlight::start(&backend.state);
        let attempt = Attempt {
            backend,
            fresh,
            replayable,
            head: &out,
            proxy_header: backend.send_proxy.then_some(info),
        };
        let sent = attempt.send(&mut body, framing, head_request, &mut clock, waits);
        let (failure, reused) = match sent.await {
            Ok((socket, answer)) => {
                backend.state.answered(upstream.counted_session(&decision));
                trace.decided(&decision);
                let said = answer.head.session_replica(&answer.buf);
                let set_cookie = flow::pin_cookie(upstream, &decision, said, info.tls, trace);
                let keep_for = match backend.send_proxy || !answer.body_sent {
                    true => Duration::ZERO,
                    false => reuse_for(&answer.head, waits),
                };
                let fields = (set_cookie, hsts);
                let silence = waits.backend.response;
                let resp = relayed(socket, answer, fields, keep_for, clock, silence, in_flight);
                return Ok(resp);
            }
            Err(failed) => failed,
        };
        drop(in_flight);
        attempts.retry(&mut decision, &mut fresh, failure, reused)?;
    }
}

/// The response for the client: the backend's status, its head's fields
/// (with `fields`: the pin's Set-Cookie and the route's HSTS) written by the
/// connection straight from the head's bytes ([`upstream::ResponseFields`]),
/// and its body relayed from `socket` (see [`Relay`]).
fn relayed(
    socket: Conn,
    answer: upstream::Answer,
    fields: (Option<String>, Option<&str>),
    keep_for: Duration,
    clock: Clock,
    silence: Duration,
    in_flight: InFlight,
) -> Response<ProxyBody> {
    let head_len = answer.head.len;
    let status = StatusCode::from_u16(answer.head.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let bytes = Bytes::from(answer.buf);
    let after_head = bytes.slice(head_len..);
    let relay = Relay::new(
        socket,
        after_head,
        &answer.head,
        keep_for,
        clock,
        silence,
        in_flight,
    );
    let fields = upstream::ResponseFields::new(bytes, answer.head, fields);
    let body = StreamedBody {
        relay,
        fields,
        line: None,
    };
    let mut resp = Response::new(ProxyBody::Streamed(body));
    *resp.status_mut() = status;
    resp
}

/// One attempt at sending the request to a backend.
struct Attempt<'a> {
    backend: &'a Backend,
    /// On a new connection, not a pooled one.
    fresh: bool,
    /// The request may be sent twice: any pooled socket will do.
    replayable: bool,
    /// The request head, as the backend gets it.
    head: &'a [u8],
    /// The backend has `send_proxy`: this client's connection goes first on
    /// a new socket that is never pooled.
    proxy_header: Option<&'a ConnInfo>,
}

impl Attempt<'_> {
    /// Sends the request on a pooled socket (unless `fresh`) or a new one,
    /// and reads the response head; a pooled socket the backend closed
    /// before the head could be written is replaced by a new one. The error
    /// says how the attempt failed and whether its socket came from the pool.
    async fn send(
        &self,
        body: &mut Counted,
        framing: upstream::RequestFraming,
        head_request: bool,
        clock: &mut Clock,
        waits: Waits,
    ) -> Result<(Conn, upstream::Answer), (Failure, bool)> {
        // What cannot be sent twice goes only on a connection surely alive.
        let reuse_within = (!self.replayable).then_some(crate::pool::SAFE_REUSE);
        let (state, tls) = (&self.backend.state, self.backend.tls.as_ref());
        let mut pooled = match self.fresh || self.proxy_header.is_some() {
            true => None,
            false => state.pool.take(reuse_within, tls),
        };
        loop {
            let reused = pooled.is_some();
            let mut socket = match pooled.take() {
                Some(socket) => socket,
                None => self.connect(waits).await.map_err(|e| (e, false))?,
            };
            match upstream::write_request_head(&mut socket, self.head, clock, waits).await {
                // Never written: a stale pooled socket; a new one.
                Err(_) if reused => continue,
                Err(failure) => return Err((failure, reused)),
                Ok(()) => {}
            }
            return match upstream::exchange(&mut socket, body, framing, head_request, clock, waits)
                .await
            {
                Ok(answer) => Ok((socket, answer)),
                Err(failure) => Err((failure, reused)),
            };
        }
    }

    /// A new socket to the backend, starting with the PROXY header when the
    /// backend has `send_proxy`.
    async fn connect(&self, waits: Waits) -> Result<Conn, Failure> {
        let header = self.proxy_header.map(|info| {
            let mut header = Vec::with_capacity(52);
            // The listener filled in `local` for HTTP/2.
            let local = info.local_addr(|| Err(std::io::ErrorKind::NotFound.into()));
            crate::proxy_protocol::write_v2(&mut header, info.peer, local);
            header
        });
        let tls = self.backend.tls.as_ref();
        self.backend
            .state
            .pool
            .connect(tls, waits.backend.connect, header.as_deref())
            .await
            .map_err(Failure::NotSent)
    }
}

/// How long the connection may be reused after a response with `head`: not
/// at all when the backend closes it, else as long as it says (`Keep-Alive:
/// timeout=N`) and the upstream's `keepalive` allow.
fn reuse_for(head: &ResponseHead, waits: Waits) -> Duration {
    match head.keep_alive {
        true => crate::pool::keep_for(waits.backend.keepalive, head.keep_alive_timeout),
        false => Duration::ZERO,
    }
}

/// A backend's response body on its way to the client ([`Relay`]), with the
/// request's access-log line, written when the body ends or is dropped.
#[derive(Debug)]
pub struct StreamedBody {
    relay: Relay,
    /// The response's fields, written with its HEADERS.
    fields: upstream::ResponseFields,
    line: Option<Box<Pending>>,
}

impl StreamedBody {
    fn write_line(&mut self) {
        if let Some(line) = self.line.take() {
            line.write();
        }
    }
}

impl Drop for StreamedBody {
    fn drop(&mut self) {
        self.write_line();
    }
}

impl Body for StreamedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.relay).poll_frame(cx);
        if let (Poll::Ready(Some(Ok(frame))), Some(line)) = (&polled, &mut this.line) {
            if let Some(data) = frame.data_ref() {
                line.bytes_out += data.len() as u64;
            }
        }
        if this.relay.ended() {
            this.write_line();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.relay.is_end_stream()
    }
}

/// The body of every response limpet sends on HTTP/2.
///
/// Not boxed, though `Local` is much the smaller: a box would be an
/// allocation per relayed response, to save moving ~250 bytes a few times.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum ProxyBody {
    Streamed(StreamedBody),
    Local(Full<Bytes>),
}

impl HeadFields for ProxyBody {
    fn each_field(&self, field: &mut dyn FnMut(&[u8], &[u8])) {
        if let ProxyBody::Streamed(body) = self {
            body.fields.each(field);
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Streamed(b) => Pin::new(b).poll_frame(cx),
            ProxyBody::Local(b) => Pin::new(b).poll_frame(cx).map_err(|never| match never {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Streamed(b) => b.is_end_stream(),
            ProxyBody::Local(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Streamed(b) => b.size_hint(),
            ProxyBody::Local(b) => b.size_hint(),
        }
    }
}
