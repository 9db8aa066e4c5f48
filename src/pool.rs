//! The connections to one backend: a keep-alive pool of idle sockets and the
//! one function that opens a new one. Both engines send their requests on
//! these sockets (`crate::h1` writes HTTP/1.1 itself, `crate::h2` through
//! hyper's HTTP/1.1 client, and gives the socket back when the exchange ends),
//! and the health checker opens its connections with [`connect`].

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

/// An idle connection.
#[derive(Debug)]
struct Idle {
    socket: TcpStream,
    /// When its last exchange ended.
    since: Instant,
    /// When it is no longer reused.
    until: Instant,
}

/// Idle keep-alive connections to one backend.
#[derive(Debug)]
pub struct Pool {
    addr: SocketAddr,
    sockets: Mutex<Vec<Idle>>,
}

impl Pool {
    pub fn new(addr: SocketAddr) -> Self {
        Pool {
            addr,
            sockets: Mutex::new(Vec::new()),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// An idle socket that is still open, most recently used first; with
    /// `used_within`, only one whose last exchange ended that recently.
    ///
    /// A socket the backend closed (or that has unexpected bytes waiting) reads
    /// as ready, and is dropped here. The check costs no system call unless the
    /// runtime saw the socket turn readable since its last read.
    pub fn take(&self, used_within: Option<Duration>) -> Option<TcpStream> {
        let mut sockets = self.sockets.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        while let Some(idle) = sockets.last() {
            // The newest is too old: so are the others (left for later requests).
            if used_within.is_some_and(|within| now.duration_since(idle.since) > within) {
                return None;
            }
            let idle = sockets.pop()?;
            if now >= idle.until {
                continue;
            }
            match idle.socket.try_read(&mut [0u8; 1]) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Some(idle.socket),
                _ => continue,
            }
        }
        None
    }

    /// Keeps `socket` for the next request (its last response ended cleanly)
    /// for `keep_for`.
    pub fn put(&self, socket: TcpStream, keep_for: Duration) {
        if keep_for.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut sockets = self.sockets.lock().unwrap_or_else(|e| e.into_inner());
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
}

/// A new connection to `addr` within `timeout`, Nagle off.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ConnectError> {
    let socket = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| ConnectError::Timeout(timeout))??;
    let _ = socket.set_nodelay(true);
    Ok(socket)
}
