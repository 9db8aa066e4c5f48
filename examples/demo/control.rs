//! The demo's control endpoint: the shop page's kill and revive buttons and its
//! server table, served by the demo process itself rather than by an app server.
//!
//! limpet routes `/_demo/` to it (upstream `demo` of config/demo.toml), so the
//! controls work whichever app servers are dead, reviving the last one included.
//!
//! | endpoint | does |
//! | --- | --- |
//! | `GET /_demo/servers` | every app server as [`ServerInfo`](crate::app::ServerInfo) JSON |
//! | `POST /_demo/kill/{name}` | kills it: `200`, `409` if already dead, `404` if unknown |
//! | `POST /_demo/revive/{name}` | revives it: `200`, `409` if running, `404` if unknown |
//! | `GET /health` | `ok` (limpet's health checks) |

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::app::{json, text, Cluster};

/// The control endpoint, serving until dropped.
pub struct Control {
    pub addr: SocketAddr,
    /// The accept loop; dropping it closes the listener.
    _tasks: JoinSet<()>,
}

impl Control {
    /// Serves `cluster`'s controls on `127.0.0.1:0`.
    pub async fn start(cluster: Cluster) -> std::io::Result<Control> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let mut tasks = JoinSet::new();
        tasks.spawn(accept(listener, cluster));
        Ok(Control {
            addr,
            _tasks: tasks,
        })
    }
}

async fn accept(listener: TcpListener, cluster: Cluster) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors or similar: do not spin.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let cluster = cluster.clone();
        let service = service_fn(move |req| {
            let cluster = cluster.clone();
            async move { Ok::<_, Infallible>(handle(&cluster, req).await) }
        });
        while connections.try_join_next().is_some() {}
        connections.spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(cluster: &Cluster, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let method = req.method();
    if let Some(name) = path.strip_prefix("/_demo/kill/") {
        if method != Method::POST {
            return text(StatusCode::METHOD_NOT_ALLOWED, "POST only\n");
        }
        return match cluster.addr(name) {
            None => text(StatusCode::NOT_FOUND, "no such server\n"),
            Some(_) if cluster.kill(name).await => text(StatusCode::OK, "killed\n"),
            Some(_) => text(StatusCode::CONFLICT, "already dead\n"),
        };
    }
    if let Some(name) = path.strip_prefix("/_demo/revive/") {
        if method != Method::POST {
            return text(StatusCode::METHOD_NOT_ALLOWED, "POST only\n");
        }
        return match cluster.addr(name) {
            None => text(StatusCode::NOT_FOUND, "no such server\n"),
            Some(_) => match cluster.revive(name).await {
                Ok(true) => text(StatusCode::OK, "revived\n"),
                Ok(false) => text(StatusCode::CONFLICT, "already running\n"),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n")),
            },
        };
    }
    match (method, path) {
        (&Method::GET, "/_demo/servers") => json(StatusCode::OK, &cluster.servers()),
        (&Method::GET, "/health") => text(StatusCode::OK, "ok\n"),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}
