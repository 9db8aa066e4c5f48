//! Accept loops of the public listeners: the connection limit, TLS termination on
//! https listeners, graceful shutdown. A plain connection goes to limpet's own
//! HTTP/1.1 engine (`crate::h1`), which hands what it does not take on (h2c prior
//! knowledge, HTTP/1.0, upgrades, ...) back to hyper here; a TLS connection goes
//! to hyper-util's `conn::auto` (HTTP/1.1, and HTTP/2 by ALPN), with the head-size
//! and head-time limits of `listener/timeouts.rs`.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::metrics::ConnectionGauge;

mod closing;
mod timeouts;
use crate::proxy::{ConnInfo, Proxy};
use crate::upstream::ProxyBody;
pub(crate) use closing::{Closing, Watch};
use timeouts::{Activity, TimedIo};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

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
    let closing = Arc::new(Closing::new(shutdown.clone()));
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
        let gauge = ConnectionGauge::open(&proxy.metrics, &name);
        let watcher = graceful.watcher();
        let proxy = Arc::clone(&proxy);
        let conn_info = ConnInfo { peer, tls };
        if !tls {
            let guard = (gauge, permit);
            let closing = Watch::new(closing.clone());
            tokio::spawn(crate::h1::serve(
                proxy, stream, conn_info, watcher, closing, guard,
            ));
            continue;
        }
        tokio::spawn(async move {
            // Boxed: a TLS connection's state is larger, and unboxed it would
            // set the size of every connection's task, plain ones included.
            let result = Box::pin(async {
                match handshake(&proxy, stream).await {
                    Some(tls_stream) => {
                        let (builder, timeouts) = connection_builder(&proxy);
                        let activity = Activity::new();
                        serve_connection(
                            &proxy, tls_stream, conn_info, watcher, activity, builder, timeouts,
                        )
                        .await
                    }
                    None => Ok(()),
                }
            })
            .await;
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(gauge);
            drop(permit);
        });
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

/// Serves HTTP/1.1 or h2c with hyper-util's `conn::auto` on a plain connection
/// that limpet's own engine handed over because its first bytes may be the
/// HTTP/2 preface (see `crate::h1`).
pub(crate) async fn serve_auto<I>(
    proxy: &Arc<Proxy>,
    io: I,
    conn_info: ConnInfo,
    watcher: Watcher,
) -> Result<(), BoxError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (builder, timeouts) = connection_builder(proxy);
    let activity = Activity::new();
    serve_connection(proxy, io, conn_info, watcher, activity, builder, timeouts).await
}

/// Serves HTTP/1 with hyper on a plain connection that limpet's own engine
/// handed over (see `crate::h1`): the request it did not take on, and every
/// request after it.
pub(crate) async fn serve_http1<I>(
    proxy: &Arc<Proxy>,
    io: I,
    conn_info: ConnInfo,
    watcher: Watcher,
    mut shutdown: watch::Receiver<bool>,
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
    let mut http1 = hyper::server::conn::http1::Builder::new();
    // The same HTTP/1 settings as connection_builder gives conn::auto.
    http1
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(None)
        .max_buf_size(max_header_bytes);
    let conn = http1
        .serve_connection(TokioIo::new(io), service(proxy, conn_info, activity))
        .with_upgrades();
    // Graceful shutdown as `Watcher::watch` does it (hyper-util's watcher does not
    // take an upgradeable HTTP/1 connection): at shutdown, finish the request in
    // progress and close; the watcher is held until then so that the listener's
    // shutdown waits for this connection.
    let mut conn = std::pin::pin!(conn);
    let mut stop = std::pin::pin!(stopped(&mut shutdown));
    let mut stopping = false;
    let result = std::future::poll_fn(|cx| {
        if !stopping && stop.as_mut().poll(cx).is_ready() {
            stopping = true;
            conn.as_mut().graceful_shutdown();
        }
        conn.as_mut().poll(cx)
    })
    .await;
    drop(watcher);
    result.map_err(Into::into)
}

/// The service of one client connection: every request through [`Proxy::call`].
fn service(
    proxy: &Arc<Proxy>,
    conn_info: ConnInfo,
    activity: Arc<Activity>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<ProxyBody>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<ProxyBody>, Infallible>> + Send + 'static,
> + Clone
       + Send
       + 'static {
    let proxy = Arc::clone(proxy);
    service_fn(move |req| {
        let proxy = Arc::clone(&proxy);
        let conn_info = conn_info.clone();
        let activity = activity.clone();
        async move {
            let _busy = activity.request_started();
            Ok::<_, Infallible>(proxy.call(req, &conn_info).await)
        }
    })
}

/// Serves HTTP/1.1 or HTTP/2 (by ALPN or prior knowledge) on one client connection.
async fn serve_connection<I>(
    proxy: &Arc<Proxy>,
    stream: I,
    conn_info: ConnInfo,
    watcher: Watcher,
    activity: Arc<Activity>,
    builder: auto::Builder<TokioExecutor>,
    timeouts: crate::config::Timeouts,
) -> Result<(), BoxError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TimedIo::new(
        stream,
        activity.clone(),
        timeouts.client_header,
        timeouts.client_idle,
    );
    let conn = builder
        .serve_connection_with_upgrades(TokioIo::new(io), service(proxy, conn_info, activity))
        .into_owned();
    watcher.watch(conn).await
}

/// A connection builder with the current configuration's limits, and its timeouts.
fn connection_builder(proxy: &Proxy) -> (auto::Builder<TokioExecutor>, crate::config::Timeouts) {
    let snap = proxy.state.load();
    let timeouts = snap.config.timeouts;
    let limits = snap.config.limits;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        // TimedIo enforces client_header and client_idle (see listener/timeouts.rs).
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes.min(u32::MAX as usize) as u32);
    (builder, timeouts)
}

/// Resolves when shutdown starts (or the sender is gone).
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}
