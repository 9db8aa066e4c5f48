//! HTTP/2 connections (ALPN `h2` on TLS listeners, prior knowledge h2c on plain
//! ones): hyper serves the protocol, and each request walks `crate::flow` as
//! the HTTP/1 engine's do: [`Proxy::decide`], [`Attempts`], the header policy
//! on a `HeaderMap` ([`policy::rewrite_request`]), [`Proxy::record`].
//!
//! Backends get HTTP/1.1 on the sockets of `crate::pool`: hyper's HTTP/1
//! client writes the request on a pooled (or new) socket, and when the
//! response body has been read to its end the socket goes back to the pool.

mod timeouts;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Empty, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::Watcher;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinHandle;

use crate::backend::{Backend, BackendState, InFlight};
use crate::error::{BoxError, ProxyError};
use crate::flow::policy::{self, Forwarding};
use crate::flow::{self, Access, Attempts, Chosen, ConnInfo, Failure, Proxy, RequestView, Trace};
use crate::pool::Conn;
use crate::state::{BackendTimeouts, Snapshot};
use timeouts::{Activity, TimedIo};

/// The body of a request sent to a backend: the client's, streamed, or none
/// when a bodiless request is sent again.
type UpstreamBody = Either<Counted, Empty<Bytes>>;

/// Serves an HTTP/2 connection until it closes, or until shutdown (the
/// listener's graceful shutdown, through `watcher`).
pub(crate) async fn serve<I>(
    proxy: &Arc<Proxy>,
    io: I,
    info: ConnInfo,
    watcher: Watcher,
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
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_header_list_size(max_header_bytes.min(u32::MAX as usize) as u32);
    let proxy = Arc::clone(proxy);
    let service = service_fn(move |req| {
        let proxy = Arc::clone(&proxy);
        let info = info.clone();
        let activity = activity.clone();
        async move {
            let _busy = activity.request_started();
            Ok::<_, Infallible>(call(&proxy, req, &info).await)
        }
    });
    let conn = builder.serve_connection(TokioIo::new(io), service);
    watcher.watch(conn).await.map_err(Into::into)
}

/// Answers one request; never fails.
async fn call(proxy: &Proxy, req: Request<Incoming>, info: &ConnInfo) -> Response<ProxyBody> {
    let started = Instant::now();
    let head_request = req.method() == Method::HEAD;
    // Copied for the access log only when it is on.
    let access = crate::access_log::enabled().then(|| {
        let path = req.uri().path_and_query().map(|p| p.as_str().to_owned());
        (req.method().clone(), path.unwrap_or_default())
    });
    let bytes_in = access.as_ref().map(|_| Arc::new(AtomicU64::new(0)));
    let snap = proxy.state.load_full();
    let mut trace = Trace::default();
    let response = match handle(proxy, &snap, req, info, &mut trace, bytes_in.clone()).await {
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
        ProxyBody::Streamed(mut streamed) => {
            streamed.line = Some(line);
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
    inner: Incoming,
    count: Option<Arc<AtomicU64>>,
}

impl Body for Counted {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
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
    req: Request<Incoming>,
    info: &ConnInfo,
    trace: &mut Trace,
    bytes_in: Option<Arc<AtomicU64>>,
) -> Result<Response<ProxyBody>, ProxyError> {
    // `:authority` wins over a `host` field (RFC 9113, section 8.3.1).
    let host: Option<Bytes> = match (req.uri().authority(), req.headers().get(header::HOST)) {
        (Some(a), _) => Some(Bytes::copy_from_slice(a.as_str().as_bytes())),
        (None, Some(h)) => Some(Bytes::copy_from_slice(h.as_bytes())),
        (None, None) => None,
    };
    let host_text = host.as_deref().and_then(|h| std::str::from_utf8(h).ok());
    let view = RequestView {
        host: host_text,
        path: req.uri().path(),
        target: req.uri().path_and_query().map_or("/", |p| p.as_str()),
        headers: req.headers(),
        peer: info.peer.ip(),
        tls: info.tls,
    };
    let Chosen {
        upstream,
        mut decision,
        hsts,
    } = Proxy::decide(snap, &view, trace)?;
    let (parts, body) = req.into_parts();
    let origin: Uri = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .parse()
        .map_err(|_| ProxyError::BadRequest("bad request target"))?;
    let replayable = flow::is_idempotent(parts.method.as_str().as_bytes()) && body.is_end_stream();
    let mut attempts = Attempts::new(upstream, &proxy.metrics, replayable);
    // The request's fields for a backend, made once; each attempt adds its
    // own `x-limpet-failover-from`.
    let mut forwarded = parts.headers;
    let fwd = Forwarding {
        host: host.as_deref(),
        strip_cookie: upstream
            .cookie
            .as_ref()
            .map(|_| &*upstream.config.cookie.name),
        client: info.peer.ip(),
        tls: info.tls,
        failover_from: None,
        request_id: trace.forwarded_id(),
    };
    policy::rewrite_request(&mut forwarded, &fwd);
    let mut body = Some(Counted {
        inner: body,
        count: bytes_in,
    });
    let mut fresh = false;
    let timeouts = upstream.timeouts();
    loop {
        let backend = &upstream.backends[decision.backend];
        trace.attempt(&decision);
        let mut headers = forwarded.clone();
        let from = decision.failover_from.map(|f| upstream.name_of(f));
        policy::set_failover_from(&mut headers, from);
        let body = match body.take() {
            Some(b) => Either::Left(b),
            None => Either::Right(Empty::new()),
        };
        let mut request = Request::new(body);
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = origin.clone();
        *request.version_mut() = Version::HTTP_11;
        *request.headers_mut() = headers;
        let in_flight = InFlight::start(&backend.state);
        let proxy_header = backend.send_proxy.then_some(info);
        let sent = send(backend, fresh, replayable, request, timeouts, proxy_header);
        let (failure, reused) = match sent.await {
            Ok((resp, lease)) => {
                backend.state.answered(upstream.counted_session(&decision));
                trace.decided(&decision);
                let (mut parts, incoming) = resp.into_parts();
                let said = parts.headers.get(policy::SESSION_REPLICA);
                let said = said.map(|v| v.as_bytes());
                let set_cookie = flow::pin_cookie(upstream, &decision, said, info.tls, trace);
                policy::rewrite_response(&mut parts.headers, set_cookie, hsts);
                parts.version = Version::HTTP_2;
                let body = StreamedBody::new(incoming, lease, in_flight);
                return Ok(Response::from_parts(parts, ProxyBody::Streamed(body)));
            }
            Err(failed) => failed,
        };
        drop(in_flight);
        attempts.retry(&mut decision, &mut fresh, failure, reused)?;
    }
}

/// Sends `req` to a backend on a pooled socket (unless `fresh`) or a new one;
/// a pooled socket the backend closed before the request was written is
/// replaced by a new one. The error says how the attempt failed and whether
/// its connection came from the pool. `proxy_header`: the backend has
/// `send_proxy`, and this client's connection goes first on a new socket
/// that is never pooled.
async fn send(
    backend: &Backend,
    fresh: bool,
    replayable: bool,
    mut req: Request<UpstreamBody>,
    timeouts: BackendTimeouts,
    proxy_header: Option<&ConnInfo>,
) -> Result<(Response<Incoming>, Lease), (Failure, bool)> {
    // What cannot be sent twice goes only on a connection surely alive.
    let reuse_within = (!replayable).then_some(crate::pool::SAFE_REUSE);
    let (state, tls) = (&backend.state, backend.tls.as_ref());
    let mut pooled = match fresh || proxy_header.is_some() {
        true => None,
        false => state.pool.take(reuse_within, tls),
    };
    loop {
        let reused = pooled.is_some();
        let socket = match pooled.take() {
            Some(socket) => socket,
            None => {
                let header = proxy_header.map(|info| {
                    let mut header = Vec::with_capacity(52);
                    // The listener filled in `local` for HTTP/2.
                    let local = info.local_addr(|| Err(std::io::ErrorKind::NotFound.into()));
                    crate::proxy_protocol::write_v2(&mut header, info.peer, local);
                    header
                });
                state
                    .pool
                    .connect(tls, timeouts.connect, header.as_deref())
                    .await
                    .map_err(|e| (Failure::NotSent(e), false))?
            }
        };
        let (mut sender, conn) = http1::handshake(TokioIo::new(socket))
            .await
            .map_err(|e| (Failure::Closed(e.into()), reused))?;
        let connection = tokio::spawn(conn.without_shutdown());
        let sent = tokio::time::timeout(timeouts.response, sender.try_send_request(req));
        match sent.await {
            Err(_) => return Err((Failure::Timeout(timeouts.response), reused)),
            Ok(Ok(resp)) => {
                let lease = Lease {
                    sender,
                    connection,
                    keep_for: match proxy_header {
                        Some(_) => Duration::ZERO,
                        None => keep_for(&resp, timeouts),
                    },
                };
                return Ok((resp, lease));
            }
            Ok(Err(mut e)) => match e.take_message() {
                // Never written: a stale pooled socket; a new one.
                Some(back) if reused => req = back,
                _ => return Err((failure_of(e.into_error()), reused)),
            },
        }
    }
}

/// How hyper's client failed, in the terms of the retry rules.
fn failure_of(e: hyper::Error) -> Failure {
    if e.is_user() {
        // The client's own body broke (a reset mid-upload).
        Failure::ClientBody(e.into())
    } else if e.is_parse() || e.is_parse_status() {
        Failure::BadResponse(e.into())
    } else {
        Failure::Closed(e.into())
    }
}

/// How long the connection may be reused after `resp`: not at all when the
/// backend closes it, else as long as it says (`Keep-Alive: timeout=N`) and
/// the upstream's `keepalive` allow.
fn keep_for(resp: &Response<Incoming>, timeouts: BackendTimeouts) -> Duration {
    let headers = resp.headers();
    let closes = headers
        .get_all(header::CONNECTION)
        .iter()
        .any(|v| policy::tokens(v.as_bytes()).any(|t| t.eq_ignore_ascii_case(b"close")));
    if resp.version() != Version::HTTP_11 || closes {
        return Duration::ZERO;
    }
    let says = headers
        .get("keep-alive")
        .and_then(|v| policy::keep_alive_timeout(v.as_bytes()));
    crate::pool::keep_for(timeouts.keepalive, says)
}

/// A backend connection lent to one exchange.
#[derive(Debug)]
struct Lease {
    sender: http1::SendRequest<UpstreamBody>,
    /// hyper's connection task; it ends, handing the socket back, once the
    /// sender is dropped and the exchange is over.
    connection: JoinHandle<hyper::Result<http1::Parts<TokioIo<Conn>>>>,
    /// How long the pool may keep the connection (zero: not at all).
    keep_for: Duration,
}

impl Lease {
    /// The response body was read to its end: the socket goes back to the
    /// pool when nothing is left over on it.
    fn release(self, state: Arc<BackendState>) {
        let Lease {
            sender,
            connection,
            keep_for,
        } = self;
        drop(sender);
        if keep_for.is_zero() {
            return;
        }
        tokio::spawn(async move {
            if let Ok(Ok(parts)) = connection.await {
                if parts.read_buf.is_empty() {
                    state.pool.put(parts.io.into_inner(), keep_for);
                }
            }
        });
    }
}

/// A backend's response body on its way to the client. When it ends, the
/// connection goes back to the pool; when it ends or is dropped, the in-flight
/// count falls.
#[derive(Debug)]
pub struct StreamedBody {
    inner: Incoming,
    lease: Option<Lease>,
    in_flight: Option<InFlight>,
    state: Arc<BackendState>,
    /// The access-log line, written when the body ends or is dropped.
    line: Option<Box<Pending>>,
}

impl StreamedBody {
    fn new(inner: Incoming, lease: Lease, in_flight: InFlight) -> Self {
        let state = in_flight.state().clone();
        let mut body = StreamedBody {
            inner,
            lease: Some(lease),
            in_flight: Some(in_flight),
            state,
            line: None,
        };
        if body.inner.is_end_stream() {
            body.finish();
        }
        body
    }

    fn finish(&mut self) {
        if let Some(lease) = self.lease.take() {
            lease.release(self.state.clone());
        }
        self.in_flight = None;
        if let Some(line) = self.line.take() {
            line.write();
        }
    }
}

impl Drop for StreamedBody {
    fn drop(&mut self) {
        if let Some(line) = self.line.take() {
            line.write();
        }
    }
}

impl Body for StreamedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let (Poll::Ready(Some(Ok(frame))), Some(line)) = (&polled, &mut this.line) {
            if let Some(data) = frame.data_ref() {
                line.bytes_out += data.len() as u64;
            }
        }
        match &polled {
            Poll::Ready(None) => this.finish(),
            Poll::Ready(Some(Err(_))) => {
                this.lease = None;
                this.in_flight = None;
            }
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.finish(),
            _ => {}
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

/// The body of every response limpet sends on HTTP/2.
#[derive(Debug)]
pub enum ProxyBody {
    Streamed(StreamedBody),
    Local(Full<Bytes>),
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
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
