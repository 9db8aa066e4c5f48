//! Test fixtures: real HTTP backends and real limpet listeners on 127.0.0.1:0.
//!
//! - [`TestBackend::spawn`]: an HTTP/1.1 server answering every request with its name
//!   (body and `x-backend`), echoing what it saw in `x-seen-*` headers (and
//!   `/replica/NAME` answers `x-session-replica: NAME`); `stop()` closes
//!   the listener and every open connection, `restart()` binds the same port again.
//! - [`TestLb::start`]: limpet started in-process from TOML text.
//! - [`Client`]: an HTTP/1.1 client with a one-cookie jar for limpet's cookie.
//! - [`eventually`]: polls a condition instead of sleeping.
//!
//! Beside them: [`scripted`] (a raw-TCP backend that answers by script),
//! [`wire`] (a raw HTTP/1 client, plain or TLS), [`h2raw`] (a raw HTTP/2
//! client that writes and reads frames), [`tls`] (test certificates)
//! and [`dns`] (a DNS server whose answers a test changes).
#![allow(dead_code)]

pub mod dns;
pub mod h2raw;
pub mod scripted;
pub mod tls;
pub mod wire;
pub mod ws;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// A backend answering with its name.
pub struct TestBackend {
    pub name: String,
    pub addr: SocketAddr,
    /// Requests answered (health checks excluded).
    pub hits: Arc<AtomicUsize>,
    /// The status `/health` answers with (200 by default).
    pub health_status: Arc<AtomicU16>,
    /// Milliseconds `/health` waits before answering.
    pub health_delay_ms: Arc<AtomicU16>,
    tasks: Mutex<Option<JoinSet<()>>>,
    /// Open connections, so that `stop()` can close them all before it returns.
    conns: Arc<Mutex<JoinSet<()>>>,
}

impl TestBackend {
    pub async fn spawn(name: &str) -> TestBackend {
        Self::spawn_at(name, "127.0.0.1:0".parse().unwrap()).await
    }

    /// A backend listening on `addr` (port 0: any free port).
    pub async fn spawn_at(name: &str, addr: SocketAddr) -> TestBackend {
        let listener = TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("bind test backend on {addr}: {e}"));
        let addr = listener.local_addr().unwrap();
        let b = TestBackend {
            name: name.to_string(),
            addr,
            hits: Arc::new(AtomicUsize::new(0)),
            health_status: Arc::new(AtomicU16::new(200)),
            health_delay_ms: Arc::new(AtomicU16::new(0)),
            tasks: Mutex::new(None),
            conns: Arc::new(Mutex::new(JoinSet::new())),
        };
        b.serve(listener);
        b
    }

    fn serve(&self, listener: TcpListener) {
        let mut tasks = JoinSet::new();
        let name: Arc<str> = self.name.clone().into();
        let hits = self.hits.clone();
        let health = self.health_status.clone();
        let delay = self.health_delay_ms.clone();
        let conns = self.conns.clone();
        tasks.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (name, hits, health, delay) =
                    (name.clone(), hits.clone(), health.clone(), delay.clone());
                let mut open = conns.lock().unwrap();
                while open.try_join_next().is_some() {}
                open.spawn(async move {
                    let svc = service_fn(move |req| {
                        let (name, hits, health, delay) =
                            (name.clone(), hits.clone(), health.clone(), delay.clone());
                        async move {
                            Ok::<_, Infallible>(answer(req, &name, &hits, &health, &delay).await)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        *self.tasks.lock().unwrap() = Some(tasks);
    }

    /// Closes the listener and every open connection: the port refuses connections.
    /// When it returns, every socket of this backend is closed.
    pub async fn stop(&self) {
        let tasks = self.tasks.lock().unwrap().take();
        if let Some(mut t) = tasks {
            t.shutdown().await;
        }
        let mut conns = std::mem::take(&mut *self.conns.lock().unwrap());
        conns.shutdown().await;
    }

    /// Listens on the same port again.
    pub async fn restart(&self) {
        let mut last = None;
        for _ in 0..50 {
            match TcpListener::bind(self.addr).await {
                Ok(l) => return self.serve(l),
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("cannot rebind {}: {last:?}", self.addr);
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn answer(
    req: Request<Incoming>,
    name: &str,
    hits: &AtomicUsize,
    health: &AtomicU16,
    delay: &AtomicU16,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    if path == "/health" {
        let d = delay.load(Ordering::SeqCst);
        if d > 0 {
            tokio::time::sleep(Duration::from_millis(d as u64)).await;
        }
        let mut resp = Response::new(Full::new(Bytes::from("ok")));
        *resp.status_mut() = StatusCode::from_u16(health.load(Ordering::SeqCst)).unwrap();
        return resp;
    }
    hits.fetch_add(1, Ordering::SeqCst);
    let mut builder = Response::builder().header("x-backend", name);
    for (seen, header) in [
        ("x-seen-cookie", "cookie"),
        ("x-seen-failover-from", "x-limpet-failover-from"),
        ("x-seen-xff", "x-forwarded-for"),
        ("x-seen-xfp", "x-forwarded-proto"),
        ("x-seen-xfh", "x-forwarded-host"),
        ("x-seen-host", "host"),
        ("x-seen-connection", "connection"),
        ("x-seen-te", "te"),
        ("x-seen-request-id", "x-request-id"),
    ] {
        let values: Vec<&str> = req
            .headers()
            .get_all(header)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if !values.is_empty() {
            builder = builder.header(seen, values.join(" | "));
        }
    }
    if path.starts_with("/slow") {
        let ms: u64 = query
            .strip_prefix("ms=")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    // The session's replica, as Tomcat's BackupManager would name it.
    if let Some(replica) = path.strip_prefix("/replica/") {
        builder = builder.header("x-session-replica", replica);
    }
    if let Some(code) = path.strip_prefix("/status/") {
        let code = code.parse().unwrap_or(500);
        builder = builder.status(code);
    }
    if path == "/headers" {
        let mut text = String::new();
        for (k, v) in req.headers() {
            text.push_str(k.as_str());
            text.push_str(": ");
            text.push_str(&String::from_utf8_lossy(v.as_bytes()));
            text.push('\n');
        }
        return builder.body(Full::new(Bytes::from(text))).unwrap();
    }
    if path == "/echo" {
        let body = req
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        return builder.body(Full::new(body)).unwrap();
    }
    builder
        .body(Full::new(Bytes::from(name.to_string())))
        .unwrap()
}

/// Three backends, `app1`, `app2` and `app3`.
pub async fn three_backends() -> [TestBackend; 3] {
    [
        TestBackend::spawn("app1").await,
        TestBackend::spawn("app2").await,
        TestBackend::spawn("app3").await,
    ]
}

/// limpet running in-process.
pub struct TestLb {
    pub limpet: limpet::Limpet,
    pub addr: SocketAddr,
}

impl TestLb {
    /// Starts limpet from TOML text; listeners given as port 0 are bound here.
    pub async fn start(toml: &str) -> TestLb {
        let config =
            limpet::Config::parse(toml, "test.toml").unwrap_or_else(|e| panic!("config: {e}"));
        let limpet = limpet::Limpet::start(config).await.expect("start limpet");
        let addr = limpet.http_addrs[0];
        TestLb { limpet, addr }
    }

    pub fn client(&self) -> Client {
        Client::new(self.addr)
    }

    /// A client pinned to `backend` (see [`client_pinned_to`]).
    pub async fn client_pinned_to(&self, backend: &str) -> Client {
        client_pinned_to(self.addr, backend).await
    }

    /// The state of `backend` in `upstream` as `/status` would show it
    /// (`up`, `down`, `draining`, `maintenance`); panics on unknown names.
    pub fn backend_state(&self, upstream: &str, backend: &str) -> &'static str {
        let snap = self.limpet.state.load();
        let up = snap
            .upstream(upstream)
            .unwrap_or_else(|| panic!("no upstream {upstream}"));
        let b = up
            .backends
            .iter()
            .find(|b| &*b.name == backend)
            .unwrap_or_else(|| panic!("no backend {backend} in {upstream}"));
        b.state.state().as_str()
    }

    /// Waits (up to `timeout`) until `backend` of `upstream` is in `state`.
    pub async fn wait_backend_state(
        &self,
        upstream: &str,
        backend: &str,
        state: &str,
        timeout: Duration,
    ) {
        let reached = eventually(timeout, || async {
            self.backend_state(upstream, backend) == state
        })
        .await;
        assert!(
            reached,
            "{upstream}/{backend} is {} after {timeout:?}, expected {state}",
            self.backend_state(upstream, backend)
        );
    }

    /// The admin listener's base URL, if the config has one.
    pub fn admin_url(&self) -> Option<String> {
        self.limpet.admin_addr.map(|a| format!("http://{a}"))
    }
}

/// A config with one upstream `shop` over `backends`, each the replica of the
/// previous one in a ring (app1 -> app2 -> ... -> app1), plus `extra` TOML appended to
/// the `[upstream.shop]` table.
pub fn ring_config(backends: &[&TestBackend], upstream_extra: &str) -> String {
    let mut s = String::from("[listen]\nhttp = [\"127.0.0.1:0\"]\n\n[upstream.shop]\n");
    s.push_str(upstream_extra);
    s.push_str("\n[upstream.shop.cookie]\nsecret = \"test-secret\"\n");
    for (i, b) in backends.iter().enumerate() {
        let replica = &backends[(i + 1) % backends.len()].name;
        s.push_str(&format!(
            "\n[[upstream.shop.backend]]\nname = \"{}\"\naddr = \"{}\"\nreplica = \"{}\"\n",
            b.name, b.addr, replica
        ));
    }
    s
}

/// What came back.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    /// The backend that answered (`x-backend`), or "" for limpet's own answers.
    pub fn backend(&self) -> &str {
        self.headers
            .get("x-backend")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The value limpet set for cookie `name`, if it sent a Set-Cookie for it.
    pub fn set_cookie(&self, name: &str) -> Option<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| {
                let first = v.split(';').next()?;
                let (n, val) = first.split_once('=')?;
                (n.trim() == name).then(|| val.trim().to_string())
            })
    }
}

/// An HTTP/1.1 client (keep-alive pooled) with a jar for limpet's cookie.
pub struct Client {
    pub base: String,
    inner: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
    /// The affinity cookie value, kept like a browser would.
    pub cookie: Option<String>,
    pub cookie_name: String,
    /// Extra request headers.
    pub headers: HeaderMap,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Client {
        Client {
            base: format!("http://{addr}"),
            inner: hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http(),
            cookie: None,
            cookie_name: "limpet".to_string(),
            headers: HeaderMap::new(),
        }
    }

    pub async fn get(&mut self, path: &str) -> Reply {
        self.request("GET", path, Bytes::new()).await
    }

    pub async fn request(&mut self, method: &str, path: &str, body: Bytes) -> Reply {
        self.try_request(method, path, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    pub async fn try_request(
        &mut self,
        method: &str,
        path: &str,
        body: Bytes,
    ) -> Result<Reply, String> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path));
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        if let Some(c) = &self.cookie {
            req = req.header("cookie", format!("{}={}", self.cookie_name, c));
        }
        let req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
        let resp = tokio::time::timeout(Duration::from_secs(10), self.inner.request(req))
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|e| e.to_string())?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        let reply = Reply {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        };
        if let Some(v) = reply.set_cookie(&self.cookie_name) {
            self.cookie = Some(v);
        }
        Ok(reply)
    }
}

/// A client of limpet at `addr` pinned to `backend`: new clients are tried
/// until one lands there.
pub async fn client_pinned_to(addr: SocketAddr, backend: &str) -> Client {
    for _ in 0..100 {
        let mut client = Client::new(addr);
        if client.get("/").await.backend() == backend {
            return client;
        }
    }
    panic!("no new client landed on {backend}");
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if condition().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
