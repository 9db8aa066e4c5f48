//! The upstream side: a small keep-alive pool of `hyper::client::conn::http1`
//! senders per backend, sending one request with the connect and response timeouts,
//! and the response body that returns its connection to the pool and ends the
//! backend's in-flight count when it finishes streaming.
//!
//! The pool is ours rather than hyper-util's so that a request whose connection
//! failed before anything was sent comes back to the caller intact
//! ([`SendError::NotSent`]) and can be retried on another backend, whatever its
//! method and body.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Empty, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::backend::BackendState;

/// The body of a request sent to a backend: the client's, streamed, or none when a
/// bodiless request is replayed.
pub type UpstreamBody = Either<Incoming, Empty<Bytes>>;

/// An idle connection older than this is not reused: backends close idle keep-alive
/// connections on their own schedule (Tomcat after 20 s by default, nginx 75 s,
/// Apache 5 s), and a request sent as the close crosses it fails. 15 s stays under
/// Tomcat's default, the app server limpet most often fronts.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(15);
/// Idle connections kept per backend; more are closed.
const POOL_MAX_IDLE: usize = 512;

/// Idle keep-alive connections to one backend: hyper's senders (used by HTTP/2,
/// TLS and upgrade requests) and bare sockets (used by limpet's own HTTP/1 engine,
/// `crate::h1`).
#[derive(Debug)]
pub struct Pool {
    addr: SocketAddr,
    idle: Mutex<Vec<(SendRequest<UpstreamBody>, Instant)>>,
    sockets: Mutex<Vec<(TcpStream, Instant)>>,
}

impl Pool {
    pub fn new(addr: SocketAddr) -> Self {
        Pool {
            addr,
            idle: Mutex::new(Vec::new()),
            sockets: Mutex::new(Vec::new()),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// An idle socket that is still open, most recently used first.
    ///
    /// A socket the backend closed (or that has unexpected bytes waiting) reads
    /// as ready, and is dropped here. The check costs no system call unless the
    /// runtime saw the socket turn readable since its last read.
    pub fn take_socket(&self) -> Option<TcpStream> {
        let mut sockets = self.sockets.lock().unwrap_or_else(|e| e.into_inner());
        while let Some((socket, since)) = sockets.pop() {
            if since.elapsed() >= POOL_IDLE_TIMEOUT {
                continue;
            }
            match socket.try_read(&mut [0u8; 1]) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Some(socket),
                _ => continue,
            }
        }
        None
    }

    pub fn put_socket(&self, socket: TcpStream) {
        let mut sockets = self.sockets.lock().unwrap_or_else(|e| e.into_inner());
        // Oldest first: take_socket (newest first) may never reach the bottom
        // sockets again after a burst, so the expired ones are closed here.
        if sockets
            .first()
            .is_some_and(|(_, since)| since.elapsed() >= POOL_IDLE_TIMEOUT)
        {
            sockets.retain(|(_, since)| since.elapsed() < POOL_IDLE_TIMEOUT);
        }
        if sockets.len() < POOL_MAX_IDLE {
            sockets.push((socket, Instant::now()));
        }
    }

    fn take(&self) -> Option<SendRequest<UpstreamBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some((sender, since)) = idle.pop() {
            if !sender.is_closed() && since.elapsed() < POOL_IDLE_TIMEOUT {
                return Some(sender);
            }
        }
        None
    }

    fn put(&self, sender: SendRequest<UpstreamBody>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < POOL_MAX_IDLE {
            idle.push((sender, Instant::now()));
        }
    }

    /// Closes every idle connection (the backend went down).
    pub fn clear(&self) {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.sockets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    pub fn idle_count(&self) -> usize {
        self.idle.lock().map(|i| i.len()).unwrap_or(0)
            + self.sockets.lock().map(|i| i.len()).unwrap_or(0)
    }
}

/// Why a request got no response from a backend.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Nothing of the request reached the backend; here it is back.
    #[error("could not reach the backend: {cause}")]
    NotSent {
        request: Box<Request<UpstreamBody>>,
        #[source]
        cause: ConnectError,
    },
    /// The request was (maybe partly) sent and the connection failed before a response.
    #[error("the backend failed before answering: {cause}")]
    NoResponse {
        #[source]
        cause: hyper::Error,
        /// The connection came from the pool: a stale keep-alive connection, not
        /// necessarily a sick backend.
        reused: bool,
    },
    /// No response head within `upstream_response`.
    #[error("no response within {0:?}")]
    Timeout(Duration),
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect: {0}")]
    Io(#[from] std::io::Error),
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    #[error("handshake: {0}")]
    Handshake(#[source] hyper::Error),
}

/// Sends `req` to the backend of `state`, on a pooled connection if one is idle.
///
/// An async block rather than an async fn, which would keep `req` twice in its
/// future (see `Proxy::call`).
// An async block on purpose: see `Proxy::call`.
#[allow(clippy::manual_async_fn)]
pub fn send(
    state: &Arc<BackendState>,
    mut req: Request<UpstreamBody>,
    connect_timeout: Duration,
    response_timeout: Duration,
) -> impl Future<Output = Result<(Response<Incoming>, SendRequest<UpstreamBody>), SendError>> + Send + '_
{
    async move {
        while let Some(mut sender) = state.pool.take() {
            // A pooled sender turns ready as soon as its connection task has seen the
            // previous response end; one that fails here is closing. Usually it is
            // ready already, and no timer is needed to find out.
            if !sender.is_ready() {
                match Box::pin(tokio::time::timeout(connect_timeout, sender.ready())).await {
                    Ok(Ok(())) => {}
                    _ => continue,
                }
            }
            match tokio::time::timeout(response_timeout, sender.try_send_request(req)).await {
                Err(_) => return Err(SendError::Timeout(response_timeout)),
                Ok(Ok(resp)) => return Ok((resp, sender)),
                Ok(Err(mut e)) => match e.take_message() {
                    Some(back) => req = back,
                    None => {
                        return Err(SendError::NoResponse {
                            cause: e.into_error(),
                            reused: true,
                        })
                    }
                },
            }
        }
        // Boxed: connecting (TCP connect and the HTTP/1.1 handshake) is the rare path,
        // and its state would otherwise take room in every request's future (which
        // hyper keeps allocated for the whole life of a client connection).
        let mut sender = match Box::pin(connect(state.pool.addr, connect_timeout)).await {
            Ok(s) => s,
            Err(cause) => {
                return Err(SendError::NotSent {
                    request: Box::new(req),
                    cause,
                })
            }
        };
        match tokio::time::timeout(response_timeout, sender.try_send_request(req)).await {
            Err(_) => Err(SendError::Timeout(response_timeout)),
            Ok(Ok(resp)) => Ok((resp, sender)),
            Ok(Err(mut e)) => match e.take_message() {
                Some(back) => Err(SendError::NotSent {
                    request: Box::new(back),
                    cause: ConnectError::Handshake(e.into_error()),
                }),
                None => Err(SendError::NoResponse {
                    cause: e.into_error(),
                    reused: false,
                }),
            },
        }
    }
}

/// A new HTTP/1.1 connection to `addr`, its connection task spawned.
pub async fn connect(
    addr: SocketAddr,
    timeout: Duration,
) -> Result<SendRequest<UpstreamBody>, ConnectError> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| ConnectError::Timeout(timeout))??;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(ConnectError::Handshake)?;
    tokio::spawn(async move {
        // Errors here surface to the request that was using the connection.
        let _ = conn.with_upgrades().await;
    });
    Ok(sender)
}

/// Counts a request in a backend's `in_flight` until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<BackendState>);

impl InFlight {
    pub fn start(state: &Arc<BackendState>) -> Self {
        state.in_flight.fetch_add(1, Relaxed);
        InFlight(state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

/// A backend's response body on its way to the client. When it ends, the connection
/// goes back to the pool; when it ends or is dropped, the in-flight count falls.
#[derive(Debug)]
pub struct StreamedBody {
    inner: Incoming,
    /// The connection, returned to the pool at the end of the body.
    lease: Option<SendRequest<UpstreamBody>>,
    in_flight: Option<InFlight>,
}

impl StreamedBody {
    /// `lease`: the connection to give back to the pool at the end of the body;
    /// `None` when it must not be reused (it was upgraded to a tunnel).
    pub fn new(
        inner: Incoming,
        lease: Option<SendRequest<UpstreamBody>>,
        in_flight: InFlight,
    ) -> Self {
        let mut body = StreamedBody {
            inner,
            lease,
            in_flight: Some(in_flight),
        };
        if body.inner.is_end_stream() {
            body.finish();
        }
        body
    }

    fn finish(&mut self) {
        if let (Some(lease), Some(flight)) = (self.lease.take(), self.in_flight.as_ref()) {
            flight.0.pool.put(lease);
        }
        self.in_flight = None;
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

/// The body of every response limpet sends downstream.
#[derive(Debug)]
pub enum ProxyBody {
    Streamed(StreamedBody),
    Local(Full<Bytes>),
}

impl ProxyBody {
    pub fn text(text: &'static str) -> Self {
        ProxyBody::Local(Full::new(Bytes::from_static(text.as_bytes())))
    }

    pub fn owned(bytes: impl Into<Bytes>) -> Self {
        ProxyBody::Local(Full::new(bytes.into()))
    }
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
