//! The connections to one backend: a keep-alive pool of idle sockets and the
//! one function that opens a new one. Both engines send their requests on
//! these sockets (`crate::h1` writes HTTP/1.1 itself, `crate::h2` through
//! hyper's HTTP/1.1 client, and gives the socket back when the exchange ends),
//! and the health checker opens its connections with [`connect`].

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

/// An idle connection older than this is not reused: backends close idle keep-alive
/// connections on their own schedule (Tomcat after 20 s by default, nginx 75 s,
/// Apache 5 s), and a request sent as the close crosses it fails. 15 s stays under
/// Tomcat's default, the app server limpet most often fronts.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(15);
/// Idle connections kept per backend; more are closed.
const POOL_MAX_IDLE: usize = 512;

/// Idle keep-alive connections to one backend.
#[derive(Debug)]
pub struct Pool {
    addr: SocketAddr,
    sockets: Mutex<Vec<(TcpStream, Instant)>>,
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

    /// An idle socket that is still open, most recently used first.
    ///
    /// A socket the backend closed (or that has unexpected bytes waiting) reads
    /// as ready, and is dropped here. The check costs no system call unless the
    /// runtime saw the socket turn readable since its last read.
    pub fn take(&self) -> Option<TcpStream> {
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

    /// Keeps `socket` for the next request (its last response ended cleanly).
    pub fn put(&self, socket: TcpStream) {
        let mut sockets = self.sockets.lock().unwrap_or_else(|e| e.into_inner());
        // Oldest first: take (newest first) may never reach the bottom sockets
        // again after a burst, so the expired ones are closed here.
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
