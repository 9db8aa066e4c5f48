//! Accept loops of the public listeners: the connection limit, TLS termination
//! on https listeners, graceful shutdown, and the choice of engine by a
//! connection's first bytes: limpet's HTTP/1 engine (`crate::h1`) for every
//! HTTP/1.x connection, plain or TLS, and hyper's HTTP/2 (`crate::h2`) for ALPN
//! `h2` or a plain connection that opens with the HTTP/2 preface (h2c).

use std::sync::Arc;
use std::time::Duration;

use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::flow::{ConnInfo, Proxy};
use crate::h1::Ended;
use crate::metrics::ConnectionGauge;
use crate::shutdown::{stopped, Closing, Watch};

/// Serves `listener` until `shutdown` turns true, then waits up to `grace` for
/// the open connections to finish their requests.
pub async fn serve(
    listener: TcpListener,
    tls: bool,
    proxy: Proxy,
    connections: Arc<Semaphore>,
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
    loop {
        // Beyond max_connections, new connections wait in the kernel's backlog.
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = stopped(&mut shutdown) => break,
        };
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
            _ = stopped(&mut shutdown) => break,
        };
        let _ = stream.set_nodelay(true);
        let guard = (ConnectionGauge::open(&proxy.metrics, &name), permit);
        let conn = Connection {
            proxy: Arc::clone(&proxy),
            info: ConnInfo { peer, tls },
            watcher: graceful.watcher(),
            closing: Watch::new(closing.clone()),
        };
        match tls {
            false => tokio::spawn(conn.serve_plain(stream, guard)),
            // Boxed: a TLS connection's state is larger, and unboxed it would
            // set the size of every connection's task, plain ones included.
            true => tokio::spawn(Box::pin(conn.serve_tls(stream, guard))),
        };
    }
    drop(listener);
    closing.close();
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(listener = %name, "shutdown grace of {grace:?} over: closing the remaining connections");
    }
}

/// One accepted client connection.
struct Connection {
    proxy: Arc<Proxy>,
    info: ConnInfo,
    /// Held until the connection ends: the listener's shutdown waits for it.
    watcher: Watcher,
    closing: Watch,
}

impl Connection {
    /// A plain connection: HTTP/1 from its first byte, or h2c.
    async fn serve_plain<G: Send + 'static>(self, stream: TcpStream, guard: G) {
        let Connection {
            proxy,
            info,
            watcher,
            closing,
        } = self;
        let ended = crate::h1::serve(Arc::clone(&proxy), stream, info.clone(), closing, true).await;
        if let Ended::H2c(io) = ended {
            // Boxed: HTTP/2's state would otherwise take room in every
            // connection's task.
            serve_h2(&proxy, io, info, watcher).await;
        }
        drop(guard);
    }

    /// A TLS connection: the handshake, then HTTP/2 for ALPN `h2`, the HTTP/1
    /// engine for anything else.
    async fn serve_tls<G: Send + 'static>(self, stream: TcpStream, guard: G) {
        let Connection {
            proxy,
            info,
            watcher,
            closing,
        } = self;
        if let Some(tls) = handshake(&proxy, stream).await {
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            match h2 {
                true => serve_h2(&proxy, tls, info, watcher).await,
                false => {
                    let _ = crate::h1::serve(Arc::clone(&proxy), tls, info, closing, false).await;
                }
            }
        }
        drop(guard);
    }
}

/// Serves HTTP/2 on `io` until the connection closes.
async fn serve_h2<I>(proxy: &Arc<Proxy>, io: I, info: ConnInfo, watcher: Watcher)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = info.peer;
    if let Err(e) = Box::pin(crate::h2::serve(proxy, io, info, watcher)).await {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
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
