//! Accept loops of the public listeners: the connection limit, hyper-util's
//! `conn::auto` (HTTP/1.1 and h2c prior knowledge on one port), the head-size and
//! head-time limits, and graceful shutdown.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::metrics::ConnectionGauge;

mod timeouts;
use crate::proxy::{ConnInfo, Proxy};
use timeouts::{Activity, TimedIo};

/// Serves `listener` until `shutdown` turns true, then waits up to `grace` for
/// the open connections to finish their requests.
pub async fn serve(
    listener: TcpListener,
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
        let conn_info = ConnInfo { peer, tls: false };
        let gauge = ConnectionGauge::open(&proxy.metrics, &name);
        let (builder, timeouts) = connection_builder(&proxy);
        let activity = Activity::new();
        let io = TimedIo::new(
            stream,
            activity.clone(),
            timeouts.client_header,
            timeouts.client_idle,
        );
        let service_proxy = proxy.clone();
        let service = service_fn(move |req| {
            let proxy = service_proxy.clone();
            let conn_info = conn_info.clone();
            let activity = activity.clone();
            async move {
                let _busy = activity.request_started();
                Ok::<_, Infallible>(proxy.call(req, &conn_info).await)
            }
        });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(io), service)
            .into_owned();
        let watched = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = watched.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(gauge);
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(listener = %name, "shutdown grace of {grace:?} over: closing the remaining connections");
    }
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
