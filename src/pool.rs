//! The connections to one backend: a keep-alive pool of idle sockets and the
//! one function that opens a new one, plain or TLS ([`Conn`]). Both engines
//! send their requests on these sockets (both write HTTP/1.1 with the HTTP/1
//! engine's pieces, and give the socket back when the response body ends),
//! and the health checker opens its connections with
//! [`connect`].
//!
//! A backend named by DNS may move ([`Pool::move_to`]): its idle connections
//! are closed, and a connection to the old address that comes back from an
//! exchange is not kept.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// How long an idle connection is kept by default (`[upstream.NAME.timeouts]
/// keepalive` sets it): backends close idle keep-alive connections on their own
/// schedule (Tomcat after 20 s by default, nginx 75 s, Apache and Node.js 5 s),
/// and a request sent as the close crosses it fails. 15 s stays under Tomcat's
/// default, the app server limpet most often fronts; a backend that says
/// `Keep-Alive: timeout=N` is believed (see [`keep_for`]).
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(15);
/// A request that cannot be sent twice (a body, or not idempotent) goes only on
/// a connection that finished an exchange this recently, or on a new one: a
/// backend is not closing a connection it used a moment ago (HAProxy's
/// `http-reuse safe` has the same aim). Half a second leaves room for a
/// backend that closes idle connections after one.
pub const SAFE_REUSE: Duration = Duration::from_millis(500);
/// Idle connections kept per backend; more are closed.
const POOL_MAX_IDLE: usize = 512;

/// How long to keep a connection whose last response said `Keep-Alive:
/// timeout=N` (`backend_says`, in seconds): a second less than the backend
/// will, and never longer than `keepalive`.
pub fn keep_for(keepalive: Duration, backend_says: Option<u64>) -> Duration {
    match backend_says {
        Some(secs) => keepalive.min(Duration::from_secs(secs.saturating_sub(1))),
        None => keepalive,
    }
}

/// How to speak TLS to one backend (`[upstream.NAME.tls]`).
#[derive(Debug, Clone)]
pub struct TlsTarget {
    pub config: Arc<rustls::ClientConfig>,
    /// Sent as SNI (a DNS name) and verified in the backend's certificate.
    pub name: ServerName<'static>,
}

/// A connection to a backend.
///
/// An enum rather than a boxed trait object: the plain keep-alive path stays
/// a `TcpStream` with a branch per call (the TLS state, a kilobyte and more,
/// is boxed so that the plain case stays small).
#[derive(Debug)]
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsConn>),
}

/// A TLS connection and the configuration it was made with.
#[derive(Debug)]
pub struct TlsConn {
    stream: tokio_rustls::client::TlsStream<TcpStream>,
    /// After a reload made a new configuration (a new CA, another client
    /// certificate), idle connections made with the old one are not reused.
    config: Arc<rustls::ClientConfig>,
}

impl Conn {
    fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(tcp) => tcp,
            Conn::Tls(tls) => tls.stream.get_ref().0,
        }
    }

    /// Whether this connection speaks what `tls` asks for.
    fn fits(&self, tls: Option<&TlsTarget>) -> bool {
        match (self, tls) {
            (Conn::Plain(_), None) => true,
            (Conn::Tls(conn), Some(target)) => Arc::ptr_eq(&conn.config, &target.config),
            _ => false,
        }
    }
}

impl AsyncRead for Conn {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Conn::Tls(tls) => Pin::new(&mut tls.stream).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(tcp) => Pin::new(tcp).poll_write(cx, data),
            Conn::Tls(tls) => Pin::new(&mut tls.stream).poll_write(cx, data),
        }
    }

    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Conn::Tls(tls) => Pin::new(&mut tls.stream).poll_write_vectored(cx, bufs),
        }
    }

    #[inline]
    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(tcp) => tcp.is_write_vectored(),
            Conn::Tls(tls) => tls.stream.is_write_vectored(),
        }
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Conn::Tls(tls) => Pin::new(&mut tls.stream).poll_flush(cx),
        }
    }

    #[inline]
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Conn::Tls(tls) => Pin::new(&mut tls.stream).poll_shutdown(cx),
        }
    }
}

/// An idle connection.
#[derive(Debug)]
struct Idle {
    socket: Conn,
    /// When its last exchange ended.
    since: Instant,
    /// When it is no longer reused.
    until: Instant,
}

/// Idle keep-alive connections to one backend.
#[derive(Debug)]
pub struct Pool {
    /// Where new connections go: an IP backend's address, or what its DNS
    /// name resolved to last (`None` while it resolves to nothing).
    addr: ArcSwapOption<SocketAddr>,
    /// The address changed once: sockets given back are checked against it.
    moved: AtomicBool,
    sockets: Mutex<Vec<Idle>>,
}

impl Pool {
    pub fn new(addr: Option<SocketAddr>) -> Self {
        Pool {
            addr: ArcSwapOption::new(addr.map(Arc::new)),
            moved: AtomicBool::new(false),
            sockets: Mutex::new(Vec::new()),
        }
    }

    /// The backend's current address (a load, no resolver work).
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr.load().as_deref().copied()
    }

    /// The backend now lives at `addr` (its DNS name resolved elsewhere, or to
    /// nothing): idle connections to the old address are closed, and those
    /// still lent out are not taken back ([`Pool::put`]).
    pub fn move_to(&self, addr: Option<SocketAddr>) {
        let mut sockets = self.sockets.lock().unwrap_or_else(|e| e.into_inner());
        self.addr.store(addr.map(Arc::new));
        self.moved.store(true, Relaxed);
        sockets.clear();
    }

    /// A new connection to the backend's current address within `timeout`,
    /// TLS when `tls` says so, starting with `proxy_header` when given (see
    /// [`connect`]).
    pub async fn connect(
        &self,
        tls: Option<&TlsTarget>,
        timeout: Duration,
        proxy_header: Option<&[u8]>,
    ) -> Result<Conn, ConnectError> {
        let addr = self.addr().ok_or(ConnectError::NoAddress)?;
        connect(addr, tls, timeout, proxy_header).await
    }

    /// An idle socket that is still open and speaks what `tls` asks for, most
    /// recently used first; with `used_within`, only one whose last exchange
    /// ended that recently.
    ///
    /// A socket the backend closed (or that has unexpected bytes waiting) reads
    /// as ready, and is dropped here. The check costs no system call unless the
    /// runtime saw the socket turn readable since its last read. (For TLS the
    /// check reads the TCP socket under the TLS layer: bytes there, a
    /// close_notify say, mean the connection is not reused.)
    pub fn take(&self, used_within: Option<Duration>, tls: Option<&TlsTarget>) -> Option<Conn> {
        let mut sockets = self.sockets.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        while let Some(idle) = sockets.last() {
            // The newest is too old: so are the others (left for later requests).
            if used_within.is_some_and(|within| now.duration_since(idle.since) > within) {
                return None;
            }
            let idle = sockets.pop()?;
            if now >= idle.until || !idle.socket.fits(tls) {
                continue;
            }
            match idle.socket.tcp().try_read(&mut [0u8; 1]) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Some(idle.socket),
                _ => continue,
            }
        }
        None
    }

    /// Keeps `socket` for the next request (its last response ended cleanly)
    /// for `keep_for`.
    pub fn put(&self, socket: Conn, keep_for: Duration) {
        if keep_for.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut sockets = self.sockets.lock().unwrap_or_else(|e| e.into_inner());
        // Under the lock that `move_to` takes: a socket to an address the
        // backend left is never kept. Costs a system call, only once moved.
        if self.moved.load(Relaxed) && socket.tcp().peer_addr().ok() != self.addr() {
            return;
        }
        // Oldest first: take (newest first) may never reach the bottom sockets
        // again after a burst, so the expired ones are closed here.
        if sockets.first().is_some_and(|idle| now >= idle.until) {
            sockets.retain(|idle| now < idle.until);
        }
        if sockets.len() < POOL_MAX_IDLE {
            sockets.push(Idle {
                socket,
                since: now,
                until: now + keep_for,
            });
        }
    }

    /// Closes every idle connection (the backend went down).
    pub fn clear(&self) {
        self.sockets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    pub fn idle_count(&self) -> usize {
        self.sockets.lock().map(|i| i.len()).unwrap_or(0)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect: {0}")]
    Io(#[from] std::io::Error),
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    /// The TLS handshake failed (an untrusted certificate, a name that does
    /// not match, a backend that wants a client certificate...).
    #[error("TLS handshake: {0}")]
    Tls(#[source] std::io::Error),
    #[error("connect: the backend's DNS name has no address")]
    NoAddress,
}

impl ConnectError {
    /// The backend answered but its TLS handshake failed: a misconfiguration
    /// on one side, not an outage.
    pub fn is_tls(&self) -> bool {
        matches!(self, ConnectError::Tls(_))
    }

    /// limpet itself is out of a resource (file descriptors, socket
    /// buffers, memory): no fault of the backend's, which must not be
    /// marked down for it.
    pub fn is_local(&self) -> bool {
        const EMFILE: i32 = 24;
        const ENFILE: i32 = 23;
        const ENOBUFS: i32 = 105;
        const ENOMEM: i32 = 12;
        matches!(
            self,
            ConnectError::Io(e) if matches!(e.raw_os_error(), Some(EMFILE | ENFILE | ENOBUFS | ENOMEM))
        )
    }
}

/// A new connection to `addr` within `timeout` (TCP connect and TLS handshake
/// together), Nagle off, TLS when `tls` says so. `proxy_header` (a PROXY
/// protocol header, `send_proxy`) is written first, before any TLS.
pub async fn connect(
    addr: SocketAddr,
    tls: Option<&TlsTarget>,
    timeout: Duration,
    proxy_header: Option<&[u8]>,
) -> Result<Conn, ConnectError> {
    let connecting = async {
        let mut socket = TcpStream::connect(addr).await?;
        let _ = socket.set_nodelay(true);
        if let Some(header) = proxy_header {
            tokio::io::AsyncWriteExt::write_all(&mut socket, header).await?;
        }
        let Some(target) = tls else {
            return Ok(Conn::Plain(socket));
        };
        let connector = tokio_rustls::TlsConnector::from(target.config.clone());
        let stream = connector
            .connect(target.name.clone(), socket)
            .await
            .map_err(ConnectError::Tls)?;
        Ok(Conn::Tls(Box::new(TlsConn {
            stream,
            config: target.config.clone(),
        })))
    };
    tokio::time::timeout(timeout, connecting)
        .await
        .map_err(|_| ConnectError::Timeout(timeout))?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Out of file descriptors (or buffers, or memory) is limpet's own
    /// trouble: such a connect failure marks no backend down.
    #[test]
    fn running_out_of_descriptors_is_no_fault_of_the_backend() {
        let io = |code| ConnectError::Io(std::io::Error::from_raw_os_error(code));
        for code in [23, 24, 105, 12] {
            assert!(io(code).is_local(), "{code}");
        }
        let refused = ConnectError::Io(std::io::ErrorKind::ConnectionRefused.into());
        assert!(!refused.is_local());
        assert!(!io(111).is_local(), "ECONNREFUSED");
        assert!(!ConnectError::Timeout(Duration::from_secs(1)).is_local());
    }
    use tokio::net::TcpListener;

    /// A listener on a free loopback port and a connection to it.
    async fn connected(ip: [u8; 4]) -> (TcpListener, Conn) {
        let listener = TcpListener::bind(SocketAddr::from((ip, 0))).await.unwrap();
        let socket = connect(
            listener.local_addr().unwrap(),
            None,
            Duration::from_secs(5),
            None,
        )
        .await
        .unwrap();
        (listener, socket)
    }

    #[tokio::test]
    async fn a_moved_pool_keeps_no_connection_to_the_old_address() {
        let (old, to_old) = connected([127, 0, 0, 1]).await;
        let (new, to_new) = connected([127, 0, 0, 1]).await;
        let (_, idle_old) = connected([127, 0, 0, 1]).await;
        let pool = Pool::new(Some(old.local_addr().unwrap()));
        pool.put(idle_old, Duration::from_secs(60));
        assert_eq!(pool.idle_count(), 1);

        pool.move_to(Some(new.local_addr().unwrap()));
        assert_eq!(pool.idle_count(), 0, "idle connections closed");
        assert_eq!(pool.addr(), Some(new.local_addr().unwrap()));
        // A connection lent out before the move comes back: not kept.
        pool.put(to_old, Duration::from_secs(60));
        assert_eq!(pool.idle_count(), 0);
        // One to the new address is.
        pool.put(to_new, Duration::from_secs(60));
        assert_eq!(pool.idle_count(), 1);

        pool.move_to(None);
        assert_eq!(pool.addr(), None);
        assert!(matches!(
            pool.connect(None, Duration::from_secs(1), None).await,
            Err(ConnectError::NoAddress)
        ));
    }
}
