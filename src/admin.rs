//! The admin listener (SPEC section 6): `/healthz`, `/metrics`, `/status`, operator
//! actions and `POST /reload`. Never served on a public listener.

use std::convert::Infallible;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::reload::Reloader;
use crate::state::SharedState;
use crate::upstream::ProxyBody;

/// What the admin endpoints read and act on.
#[derive(Debug, Clone)]
pub struct Admin {
    pub state: SharedState,
    pub metrics: Metrics,
    pub reloader: Reloader,
}

impl Admin {
    /// Serves the admin API on `listener` until shutdown.
    pub async fn serve(self, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
        loop {
            let (stream, _) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(_) => continue,
                },
                _ = crate::listener::stopped(&mut shutdown) => return,
            };
            let admin = self.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.handle(req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        match req.uri().path() {
            "/healthz" => crate::error::plain(StatusCode::OK, "ok\n"),
            "/metrics" => {
                self.metrics.update_gauges(&self.state.load());
                let mut resp = Response::new(ProxyBody::owned(self.metrics.render()));
                resp.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                resp
            }
            _ => crate::error::plain(StatusCode::NOT_FOUND, "404 not found\n"),
        }
    }
}
