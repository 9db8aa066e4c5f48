//! `bare-proxy LISTEN BACKEND...`: round-robin HTTP/1.1 keep-alive proxy, the
//! least that limpet's stack does per request (see Cargo.toml).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

struct Backend {
    addr: SocketAddr,
    idle: Mutex<Vec<SendRequest<Incoming>>>,
}

struct Proxy {
    backends: Vec<Arc<Backend>>,
    next: AtomicUsize,
}

/// The backend's body; gives the connection back to the pool when it ends.
struct Streamed {
    inner: Incoming,
    lease: Option<(SendRequest<Incoming>, Arc<Backend>)>,
}

impl Streamed {
    fn finish(&mut self) {
        if let Some((sender, backend)) = self.lease.take() {
            backend.idle.lock().unwrap().push(sender);
        }
    }
}

impl Body for Streamed {
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
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.finish(),
            Poll::Ready(Some(Err(_))) => this.lease = None,
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

async fn forward(
    proxy: Arc<Proxy>,
    req: Request<Incoming>,
) -> Result<Response<Streamed>, hyper::Error> {
    let backend = proxy.backends[proxy.next.fetch_add(1, Relaxed) % proxy.backends.len()].clone();
    let pooled = backend.idle.lock().unwrap().pop();
    let mut sender = match pooled {
        Some(s) => s,
        None => {
            let stream = TcpStream::connect(backend.addr)
                .await
                .expect("backend reachable");
            let _ = stream.set_nodelay(true);
            let (sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            sender
        }
    };
    sender.ready().await?;
    let resp = sender.send_request(req).await?;
    Ok(resp.map(|inner| {
        let mut body = Streamed {
            inner,
            lease: Some((sender, backend)),
        };
        if body.inner.is_end_stream() {
            body.finish();
        }
        body
    }))
}

fn main() {
    let mut args = std::env::args().skip(1);
    let listen: SocketAddr = args
        .next()
        .expect("LISTEN")
        .parse()
        .expect("LISTEN address");
    let backends = args
        .map(|a| {
            Arc::new(Backend {
                addr: a.parse().expect("BACKEND address"),
                idle: Mutex::new(Vec::new()),
            })
        })
        .collect();
    let proxy = Arc::new(Proxy {
        backends,
        next: AtomicUsize::new(0),
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let listener = TcpListener::bind(listen).await.expect("bind");
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let proxy = proxy.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| forward(proxy.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}
