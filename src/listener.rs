//! Accept loops of the public listeners: the connection limit, TLS termination
//! on https listeners, graceful shutdown, and the choice of engine by a
//! connection's first bytes: limpet's HTTP/1 engine (`crate::h1`) for every
//! HTTP/1.x connection, plain or TLS, and hyper's HTTP/2 (`crate::h2`) for ALPN
//! `h2` or a plain connection that opens with the HTTP/2 preface (h2c). A
//! connection from a `[listen] proxy_protocol.from` source first gives its
//! PROXY header (`crate::proxy_protocol`), before TLS and the engine.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::flow::{ConnInfo, Proxy};
use crate::h1::{Idle, Prefixed};
use crate::limit::ConnectionLimit;
use crate::metrics::ConnectionGauge;
use crate::park::{Lot, Parked};
use crate::proxy_protocol::Header;
use crate::shutdown::{stopped, Closing, Watch};

/// Serves `listener` until `shutdown` turns true, then waits up to `grace` for
/// the open connections to finish their requests.
pub async fn serve(
    listener: TcpListener,
    tls: bool,
    proxy: Proxy,
    connections: Arc<ConnectionLimit>,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    let name: Arc<str> = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default()
        .into();
    let graceful = GracefulShutdown::new();
    // Shared by every connection and request of this listener: a request clones a
    // pointer, not the Proxy (whose Metrics alone hold a dozen reference counts).
    let proxy = Arc::new(proxy);
    let closing = Arc::new(Closing::new());
    let gauge = ConnectionGauge::of(&proxy.metrics, &name);
    let lot = (!tls).then(|| open_lot(&proxy, &closing)).flatten();
    // Accepted sockets inherit it on Linux: no setsockopt per connection.
    #[cfg(target_os = "linux")]
    let _ = socket2::SockRef::from(&listener).set_tcp_nodelay(true);
    // One wait on the shutdown channel for the listener's life, not a new
    // waiter per accepted connection.
    let mut stop = pin!(stopped(&mut shutdown));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(listener = %name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        // Beyond max_connections this client waits, and the ones after it in
        // the kernel's accept queue, until a connection closes.
        let permit = match connections.try_acquire() {
            Some(p) => p,
            None => tokio::select! {
                permit = room(&connections, &closing, lot.as_deref()) => match permit {
                    Some(p) => p,
                    None => break,
                },
                _ = &mut stop => break,
            },
        };
        // Linux gives an accepted socket the listener's TCP_NODELAY (set below).
        #[cfg(not(target_os = "linux"))]
        let _ = stream.set_nodelay(true);
        let guard = Guard {
            _gauge: gauge.open(),
            _permit: permit,
            _watcher: graceful.watcher(),
            lot: lot.clone(),
        };
        let proxy = Arc::clone(&proxy);
        let info = ConnInfo {
            peer,
            local: None,
            tls,
        };
        let closing = Watch::new(closing.clone());
        let header_timeout = owes_proxy_header(&proxy, peer);
        match (header_timeout, tls) {
            (Some(timeout), _) => {
                let conn = Conn {
                    proxy,
                    stream,
                    info,
                    closing,
                    guard,
                };
                tokio::spawn(Box::pin(serve_proxied(conn, name.clone(), timeout)))
            }
            (None, false) => tokio::spawn(crate::h1::serve(
                proxy,
                stream,
                info,
                closing,
                guard,
                Some(serve_h2c),
                Some(park),
            )),
            // Boxed: a TLS connection's state is larger, and unboxed it would
            // set the size of every connection's task, plain ones included.
            (None, true) => tokio::spawn(Box::pin(serve_tls(proxy, stream, info, closing, guard))),
        };
    }
    drop(listener);
    closing.close();
    if let Some(lot) = &lot {
        lot.close();
    }
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(listener = %name, "shutdown grace of {grace:?} over: closing the remaining connections");
    }
}

/// A permit for a new connection. At the limit, the idlest kept-alive
/// connection is closed to make room (nginx reuses idle connections the same
/// way), one at a time until a permit comes; with none idle, the client waits
/// for a connection to end.
/// How often a client waiting at `max_connections` looks again for an idle
/// connection to close.
const IDLE_RECHECK: Duration = Duration::from_millis(100);

async fn room(
    connections: &ConnectionLimit,
    closing: &Closing,
    lot: Option<&Lot<Kept>>,
) -> Option<OwnedSemaphorePermit> {
    loop {
        if let Some(permit) = connections.try_acquire() {
            return Some(permit);
        }
        // Parked connections first: they have been idle longest.
        let parked = lot.is_some_and(|lot| lot.evict_idlest());
        if !parked && !closing.evict_idlest() {
            // Nothing idle yet: wait for a connection to end, and look again
            // now and then for one gone idle meanwhile (only waiting for an
            // end kept a client out while every busy connection finished
            // its request and sat idle, up to client_idle).
            if let Ok(permit) = tokio::time::timeout(IDLE_RECHECK, connections.acquire()).await {
                return permit;
            }
            continue;
        }
        // The evicted connection's permit comes back as its task ends.
        let wait = Duration::from_millis(50);
        if let Ok(permit) = tokio::time::timeout(wait, connections.acquire()).await {
            return permit;
        }
    }
}

/// The head timeout (`client_header`) within which a connection from `peer`
/// owes a PROXY header, if `[listen] proxy_protocol.from` holds `peer`.
fn owes_proxy_header(proxy: &Proxy, peer: SocketAddr) -> Option<Duration> {
    let snap = proxy.state.load();
    let from = &snap.config.listen.proxy_protocol_from;
    if from.is_empty() {
        return None;
    }
    let ip = peer.ip().to_canonical();
    from.iter()
        .any(|net| net.contains(&ip))
        .then_some(snap.config.timeouts.client_header)
}

/// An accepted connection, before its engine is chosen.
struct Conn {
    proxy: Arc<Proxy>,
    stream: TcpStream,
    info: ConnInfo,
    closing: Watch,
    guard: Guard,
}

/// A connection from a `proxy_protocol.from` source: its PROXY header first
/// (before TLS), whose addresses become the connection's, then the
/// connection as any other. One without a valid header within `timeout` is
/// closed and counted.
async fn serve_proxied(conn: Conn, listener: Arc<str>, timeout: Duration) {
    let Conn {
        proxy,
        mut stream,
        mut info,
        closing,
        guard,
    } = conn;
    match crate::proxy_protocol::read(&mut stream, timeout).await {
        Ok(Some(Header::Proxied {
            source,
            destination,
        })) => {
            info.peer = source;
            info.local = Some(Box::new(destination));
        }
        Ok(Some(Header::Local)) => {}
        // Closed without a byte: an L4 balancer's TCP health check.
        Ok(None) => return,
        Err(rejection) => {
            tracing::debug!(peer = %info.peer, reason = rejection.reason(), ?rejection, "PROXY header refused: connection closed");
            proxy
                .metrics
                .proxy_protocol_rejected
                .with_label_values(&[&listener, rejection.reason()])
                .inc();
            return;
        }
    }
    match info.tls {
        false => {
            let (h2c, park) = (Some(serve_h2c as _), Some(park as _));
            crate::h1::serve(proxy, stream, info, closing, guard, h2c, park).await
        }
        true => serve_tls(proxy, stream, info, closing, guard).await,
    }
}

/// What a connection holds until it ends: its place in the connection
/// count and the limit, and the watcher the listener's shutdown waits for.
struct Guard {
    _gauge: ConnectionGauge,
    _permit: OwnedSemaphorePermit,
    _watcher: Watcher,
    /// Where a plain connection parks while idle long; `None` on https
    /// listeners, and while parked (the lot does not hold itself).
    lot: Option<Arc<Lot<Kept>>>,
}

/// What a parked connection keeps besides its socket.
type Kept = (ConnInfo, Guard);

/// The lot of a plain listener's long-idle connections, and the task that
/// watches it; `None` (connections then wait in their tasks) if it cannot be
/// made.
fn open_lot(proxy: &Arc<Proxy>, closing: &Arc<Closing>) -> Option<Arc<Lot<Kept>>> {
    let lot = match Lot::new() {
        Ok(lot) => Arc::new(lot),
        Err(e) => {
            tracing::warn!(error = %e, "idle connections will not be parked");
            return None;
        }
    };
    let (watched, proxy, closing) = (lot.clone(), proxy.clone(), closing.clone());
    tokio::spawn(async move {
        let resume = |parked| unpark(parked, &watched, &proxy, &closing);
        watched.run(resume).await
    });
    Some(lot)
}

/// Parks a plain connection that has been idle long in its listener's lot;
/// gives it back when it cannot (shutdown has started).
fn park(conn: Idle<TcpStream, Guard>) -> Option<Idle<TcpStream, Guard>> {
    let Idle {
        stream,
        proxy,
        info,
        mut guard,
        until,
    } = conn;
    let lot = match guard.lot.take() {
        Some(lot) if !lot.is_closed() => lot,
        lot => {
            guard.lot = lot;
            let conn = Idle {
                stream,
                proxy,
                info,
                guard,
                until,
            };
            return Some(conn);
        }
    };
    // Out of the runtime's epoll (closed if that fails).
    let stream = stream.into_std().ok()?;
    let parked = Parked {
        stream,
        until,
        rest: (info, guard),
    };
    let back = lot.park(parked).err()?;
    // Closed meanwhile: back to the runtime.
    let (info, mut guard) = back.rest;
    guard.lot = Some(lot);
    let stream = TcpStream::from_std(back.stream).ok()?;
    Some(Idle {
        stream,
        proxy,
        info,
        guard,
        until,
    })
}

/// Gives a parked connection back to the engine, in a new task.
fn unpark(parked: Parked<Kept>, lot: &Arc<Lot<Kept>>, proxy: &Arc<Proxy>, closing: &Arc<Closing>) {
    let (info, mut guard) = parked.rest;
    // Back in the runtime's epoll (closed if that fails).
    let Ok(stream) = TcpStream::from_std(parked.stream) else {
        return;
    };
    guard.lot = Some(lot.clone());
    let conn = Idle {
        stream,
        proxy: proxy.clone(),
        info,
        guard,
        until: parked.until,
    };
    let closing = Watch::new(closing.clone());
    tokio::spawn(crate::h1::resume(conn, closing, Some(park)));
}

/// A TLS connection: the handshake, then HTTP/2 for ALPN `h2`, the HTTP/1
/// engine for anything else.
async fn serve_tls(
    proxy: Arc<Proxy>,
    stream: TcpStream,
    info: ConnInfo,
    closing: Watch,
    guard: Guard,
) {
    // The handshake's state and the engine's each in a box of its own, the
    // stream handed over in a block: inline, both would take room in this
    // future at once (with the stream a third time: rustc does not overlap
    // what is in scope together), 2.9 KB per TLS connection, idle or not,
    // where the engine's box alone is 1.5 KB.
    let engine: Pin<Box<dyn Future<Output = ()> + Send>> = {
        let Some(tls) = Box::pin(handshake(&proxy, stream)).await else {
            return;
        };
        match tls.get_ref().1.alpn_protocol() == Some(b"h2") {
            true => {
                let info = with_local(info, tls.get_ref().0);
                serve_h2(proxy, tls, info, closing, guard)
            }
            false => Box::pin(crate::h1::serve(
                proxy, tls, info, closing, guard, None, None,
            )),
        }
    };
    engine.await
}

/// Serves a plain connection that opened with the HTTP/2 preface (found by
/// the HTTP/1 engine, which reads a connection's first bytes).
fn serve_h2c(
    io: Prefixed<TcpStream>,
    proxy: Arc<Proxy>,
    info: ConnInfo,
    closing: Watch,
    guard: Guard,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    let info = with_local(info, io.get_ref());
    serve_h2(proxy, io, info, closing, guard)
}

/// `info` with the address the client connected to, for HTTP/2, whose
/// requests do not see the socket (`send_proxy` passes it on).
fn with_local(mut info: ConnInfo, socket: &TcpStream) -> ConnInfo {
    if info.local.is_none() {
        info.local = Some(Box::new(socket.local_addr().unwrap_or(info.peer)));
    }
    info
}

/// Serves HTTP/2 on `io` until the connection closes. Boxed: HTTP/2's state
/// would otherwise take room in every connection's task.
fn serve_h2<I>(
    proxy: Arc<Proxy>,
    io: I,
    info: ConnInfo,
    closing: Watch,
    guard: Guard,
) -> Pin<Box<dyn Future<Output = ()> + Send>>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    Box::pin(async move {
        let peer = info.peer;
        // Held until the connection ends: shutdown waits for it.
        let _guard = guard;
        if let Err(e) = crate::h2::serve(&proxy, io, info, closing).await {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
    })
}

/// The TLS handshake of an https connection, bounded by `client_header`; `None`
/// when it fails (a plain-HTTP request or garbage on the TLS port fails alone).
async fn handshake(proxy: &Proxy, stream: TcpStream) -> Option<TlsStream<TcpStream>> {
    let snap = proxy.state.load_full();
    let Some(config) = snap.tls.clone() else {
        tracing::warn!("https connection but no usable TLS configuration");
        return None;
    };
    let accept = TlsAcceptor::from(config).accept(stream);
    match tokio::time::timeout(snap.config.timeouts.client_header, accept).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!("TLS handshake timed out");
            None
        }
    }
}
