//! The demo's app servers (issue 5): a few in-process servers that keep sessions in
//! memory and replicate them to a designated peer, like Tomcat's BackupManager.
//! They stand where an embedder's own servers would, behind limpet.
//!
//! Each server of a [`Cluster`] is a hyper HTTP/1.1 server on `127.0.0.1:0`:
//!
//! | endpoint | does |
//! | --- | --- |
//! | `GET /` | a small shop page: log in, add to cart, kill and revive servers |
//! | `POST /login` `{"name":"alice"}` | starts (or reuses) a session: cookie `DEMOSESSION` |
//! | `POST /cart` `{"item":"jam"}` | adds to the logged-in session's cart |
//! | `GET /cart` | [`CartView`] as JSON: user, items, served_by |
//! | `GET /health` | `ok` |
//! | `PUT /_replicate/{id}` | stores a peer's session as a backup copy |
//!
//! The page's controls (`/_demo/...`) are not served here but by the demo's
//! [control endpoint](crate::control), which limpet routes to, so that they work
//! when every app server is dead.
//!
//! Every session write is replicated, before the answer, to the server's replica
//! (`PUT /_replicate/{id}` with the session as JSON). A server answers for a session
//! it holds a copy of; when the request says `x-limpet-failover-from` (or writes to
//! the session) it promotes the copy to primary and replicates it to its own
//! replica, so the chain goes on. A server set to [`Placement::PerSession`] instead
//! picks each new session's replica itself (its peers in turn, as a replication
//! layer spreading its backups would), replicates there, and with
//! `tell` names it to limpet in `x-session-replica`. [`Cluster::kill`] closes a server's listener and
//! connections and forgets its memory; [`Cluster::revive`] listens on the same port
//! again, empty. [`crate::walkthrough`] narrates limpet in front of a cluster;
//! [`crate::client::Browser`] is the small HTTP client both use.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use limpet::flow::policy::{FAILOVER_FROM, SESSION_REPLICA};

use crate::client::{self, fetch};

/// The demo application's own session cookie (limpet passes it through untouched).
pub const SESSION_COOKIE: &str = "DEMOSESSION";
/// Request bodies larger than this are refused.
const MAX_BODY: usize = 64 * 1024;
const PAGE: &str = include_str!("page.html");

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    #[error("bad request: {0}")]
    Request(#[from] http::Error),
    #[error("request timed out after {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Config(#[from] limpet::config::ConfigError),
    #[error("cannot start limpet: {0}")]
    Start(#[from] limpet::app::StartError),
    #[error("unexpected answer: {0}")]
    Unexpected(String),
}

/// A session as it lives in memory and travels to the replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub id: String,
    pub user: Option<String>,
    pub items: Vec<String>,
    /// The server holding this session's copy, when its primary chose one for
    /// it ([`Placement::PerSession`]); else the primary's own replica.
    #[serde(default)]
    pub replica: Option<String>,
}

/// Where a server puts the copies of its sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// On its configured replica (the `replica` of config/demo.toml).
    Static,
    /// On each of its peers in turn, chosen per session when the session
    /// starts; with `tell`, named to limpet in `x-session-replica`.
    PerSession { tell: bool },
}

/// What `GET /cart`, `POST /login` and `POST /cart` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CartView {
    /// `None`: no session here (not logged in, or the session was lost).
    pub user: Option<String>,
    pub items: Vec<String>,
    pub served_by: String,
    /// The `x-limpet-failover-from` header this request carried, if any.
    pub failover_from: Option<String>,
    /// This request turned a backup copy into the primary session.
    pub promoted: bool,
}

/// One server as `GET /_demo/servers` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    pub name: String,
    pub addr: SocketAddr,
    pub replica: Option<String>,
    pub running: bool,
    /// Sessions this server is primary for.
    pub sessions: usize,
    /// Copies of its peer's sessions.
    pub backups: usize,
}

/// A set of demo app servers replicating sessions to each other.
#[derive(Clone)]
pub struct Cluster(Arc<Inner>);

struct Inner {
    nodes: Vec<Node>,
}

struct Node {
    name: String,
    addr: SocketAddr,
    /// Index of the node this one replicates its sessions to.
    replica: Option<usize>,
    placement: Mutex<Placement>,
    /// Sessions placed by [`Placement::PerSession`] so far.
    placed: AtomicUsize,
    store: Mutex<Store>,
    /// The accept loop and every connection; `None` while killed. Dropping the set
    /// closes the listener and every connection at once.
    tasks: Mutex<Option<JoinSet<()>>>,
}

#[derive(Default)]
struct Store {
    primary: HashMap<String, Session>,
    backup: HashMap<String, Session>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Cluster {
    /// Starts one server per `(name, replica)` on `127.0.0.1:0`.
    pub async fn start(servers: &[(&str, Option<&str>)]) -> std::io::Result<Cluster> {
        let mut listeners = Vec::new();
        for _ in servers {
            listeners.push(TcpListener::bind("127.0.0.1:0").await?);
        }
        let mut nodes = Vec::new();
        for ((name, replica), listener) in servers.iter().zip(&listeners) {
            let replica = match replica {
                Some(r) => Some(servers.iter().position(|(n, _)| n == r).ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("{name}: unknown replica {r}"),
                    )
                })?),
                None => None,
            };
            nodes.push(Node {
                name: name.to_string(),
                addr: listener.local_addr()?,
                replica,
                placement: Mutex::new(Placement::Static),
                placed: AtomicUsize::new(0),
                store: Mutex::default(),
                tasks: Mutex::new(None),
            });
        }
        let cluster = Cluster(Arc::new(Inner { nodes }));
        for (index, listener) in listeners.into_iter().enumerate() {
            cluster.serve(index, listener);
        }
        Ok(cluster)
    }

    /// `names[0]` replicates to `names[1]`, ..., the last to the first.
    #[allow(
        dead_code,
        reason = "a fixture for tests/demo.rs; the example starts from the config"
    )]
    pub async fn ring(names: &[&str]) -> std::io::Result<Cluster> {
        let servers: Vec<(&str, Option<&str>)> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (*n, Some(names[(i + 1) % names.len()]).filter(|r| r != n)))
            .collect();
        Cluster::start(&servers).await
    }

    /// Sets where `name` puts the copies of the sessions it starts from now on.
    pub fn set_placement(&self, name: &str, placement: Placement) -> bool {
        let Some((_, node)) = self.node(name) else {
            return false;
        };
        *lock(&node.placement) = placement;
        true
    }

    /// The server holding the copy of session `id`, if any does.
    pub fn holder_of_copy(&self, id: &str) -> Option<&str> {
        self.0
            .nodes
            .iter()
            .find(|n| lock(&n.store).backup.contains_key(id))
            .map(|n| n.name.as_str())
    }

    /// The next of `index`'s running peers in turn: where its next session's
    /// copy goes.
    fn next_peer(&self, index: usize) -> Option<String> {
        let peers: Vec<&Node> = self
            .0
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, n)| *i != index && lock(&n.tasks).is_some())
            .map(|(_, n)| n)
            .collect();
        let turn = self.0.nodes[index].placed.fetch_add(1, Ordering::Relaxed);
        peers.get(turn % peers.len().max(1)).map(|n| n.name.clone())
    }

    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.node(name).map(|(_, n)| n.addr)
    }

    /// The name of the server holding copies of `name`'s sessions.
    pub fn replica_of(&self, name: &str) -> Option<&str> {
        let (_, node) = self.node(name)?;
        node.replica.map(|r| self.0.nodes[r].name.as_str())
    }

    pub fn servers(&self) -> Vec<ServerInfo> {
        self.0
            .nodes
            .iter()
            .map(|n| {
                let store = lock(&n.store);
                ServerInfo {
                    name: n.name.clone(),
                    addr: n.addr,
                    replica: n.replica.map(|r| self.0.nodes[r].name.clone()),
                    running: lock(&n.tasks).is_some(),
                    sessions: store.primary.len(),
                    backups: store.backup.len(),
                }
            })
            .collect()
    }

    /// Closes `name`'s listener and every connection, and forgets its sessions.
    /// Returns false if there is no such server or it was not running.
    pub async fn kill(&self, name: &str) -> bool {
        let Some((_, node)) = self.node(name) else {
            return false;
        };
        let tasks = lock(&node.tasks).take();
        let Some(mut tasks) = tasks else {
            return false;
        };
        tasks.shutdown().await;
        *lock(&node.store) = Store::default();
        true
    }

    /// Listens on `name`'s port again, with empty memory. Returns false if there is
    /// no such server or it was running.
    pub async fn revive(&self, name: &str) -> std::io::Result<bool> {
        let Some((index, node)) = self.node(name) else {
            return Ok(false);
        };
        if lock(&node.tasks).is_some() {
            return Ok(false);
        }
        *lock(&node.store) = Store::default();
        // The port was ours a moment ago; the kernel may take a moment to free it.
        let mut attempts = 0;
        let listener = loop {
            match TcpListener::bind(node.addr).await {
                Ok(l) => break l,
                Err(e) if attempts >= 50 => return Err(e),
                Err(_) => attempts += 1,
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        self.serve(index, listener);
        Ok(true)
    }

    fn node(&self, name: &str) -> Option<(usize, &Node)> {
        self.0
            .nodes
            .iter()
            .enumerate()
            .find(|(_, n)| n.name == name)
    }

    fn serve(&self, index: usize, listener: TcpListener) {
        let mut tasks = JoinSet::new();
        tasks.spawn(accept(Arc::downgrade(&self.0), index, listener));
        *lock(&self.0.nodes[index].tasks) = Some(tasks);
    }
}

/// Accepts connections until the node is killed (which aborts this task).
async fn accept(cluster: Weak<Inner>, index: usize, listener: TcpListener) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of file descriptors or similar: do not spin.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Some(inner) = cluster.upgrade() else {
            return;
        };
        let weak = cluster.clone();
        let service = service_fn(move |req| {
            let weak = weak.clone();
            async move {
                Ok::<_, Infallible>(match weak.upgrade() {
                    Some(inner) => handle(Cluster(inner), index, req).await,
                    None => text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"),
                })
            }
        });
        let connection = async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        };
        if let Some(tasks) = lock(&inner.nodes[index].tasks).as_mut() {
            while tasks.try_join_next().is_some() {}
            tasks.spawn(connection);
        };
    }
}

async fn handle(cluster: Cluster, index: usize, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    match (&method, path.as_str()) {
        (&Method::GET, "/") => {
            let mut resp = Response::new(Full::new(Bytes::from_static(PAGE.as_bytes())));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            resp
        }
        (&Method::GET, "/health") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/cart") => {
            session_request(&cluster, index, req.headers(), Action::View).await
        }
        (&Method::POST, "/login") => match read_json::<Login>(req).await {
            Ok((headers, body)) => {
                session_request(&cluster, index, &headers, Action::Login(body.name)).await
            }
            Err(resp) => resp,
        },
        (&Method::POST, "/cart") => match read_json::<AddItem>(req).await {
            Ok((headers, body)) => {
                session_request(&cluster, index, &headers, Action::Add(body.item)).await
            }
            Err(resp) => resp,
        },
        (&Method::PUT, p) if p.starts_with("/_replicate/") => {
            let id = p.trim_start_matches("/_replicate/").to_owned();
            match read_json::<Session>(req).await {
                Ok((_, session)) if session.id == id => {
                    lock(&cluster.0.nodes[index].store)
                        .backup
                        .insert(id, session);
                    text(StatusCode::NO_CONTENT, "")
                }
                Ok(_) => text(
                    StatusCode::BAD_REQUEST,
                    "session id does not match the path\n",
                ),
                Err(resp) => resp,
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

#[derive(Deserialize)]
struct Login {
    name: String,
}

#[derive(Deserialize)]
struct AddItem {
    item: String,
}

enum Action {
    View,
    Login(String),
    Add(String),
}

/// Finds the request's session (primary, or a backup copy), applies `action`, and
/// replicates the session if it changed.
async fn session_request(
    cluster: &Cluster,
    index: usize,
    headers: &HeaderMap,
    action: Action,
) -> Response<Full<Bytes>> {
    let node = &cluster.0.nodes[index];
    let failover_from = headers
        .get(FAILOVER_FROM)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let id = cookie(headers, SESSION_COOKIE);
    let (session, promoted, changed, placement) = {
        let mut store = lock(&node.store);
        let mut promoted = false;
        let mut session = match id {
            Some(id) if store.primary.contains_key(id) => store.primary.get(id).cloned(),
            Some(id) => {
                let copy = store.backup.get(id).cloned();
                // Take ownership when limpet says the primary is gone, or on a write.
                if copy.is_some() && (failover_from.is_some() || !matches!(action, Action::View)) {
                    store.backup.remove(id);
                    promoted = true;
                }
                // The new primary places its copy by its own rule.
                copy.map(|s| Session { replica: None, ..s })
            }
            None => None,
        };
        let changed = match action {
            Action::View => promoted,
            Action::Login(name) => {
                let name = name.trim();
                if name.is_empty() || name.len() > 64 {
                    return text(StatusCode::BAD_REQUEST, "name: 1 to 64 characters\n");
                }
                let s = session.get_or_insert_with(|| Session {
                    id: new_session_id(),
                    user: None,
                    items: Vec::new(),
                    replica: None,
                });
                s.user = Some(name.to_owned());
                true
            }
            Action::Add(item) => {
                let item = item.trim();
                let Some(s) = session.as_mut().filter(|s| s.user.is_some()) else {
                    return text(StatusCode::UNAUTHORIZED, "log in first\n");
                };
                if item.is_empty() || item.len() > 64 || s.items.len() >= 100 {
                    return text(
                        StatusCode::BAD_REQUEST,
                        "item: 1 to 64 characters, at most 100\n",
                    );
                }
                s.items.push(item.to_owned());
                true
            }
        };
        let placement = *lock(&node.placement);
        if let (Some(s), Placement::PerSession { .. }, true) = (&mut session, placement, changed) {
            if s.replica.is_none() {
                drop(store);
                s.replica = cluster.next_peer(index);
                store = lock(&node.store);
            }
        }
        if let (Some(s), true) = (&session, changed) {
            store.primary.insert(s.id.clone(), s.clone());
        }
        (session, promoted, changed, placement)
    };
    if let (Some(s), true) = (&session, changed) {
        replicate(cluster, index, s).await;
    }
    let view = CartView {
        user: session.as_ref().and_then(|s| s.user.clone()),
        items: session
            .as_ref()
            .map(|s| s.items.clone())
            .unwrap_or_default(),
        served_by: node.name.clone(),
        failover_from,
        promoted,
    };
    let mut resp = json(StatusCode::OK, &view);
    let told = match placement {
        Placement::PerSession { tell: true } => session.as_ref().and_then(|s| s.replica.as_deref()),
        _ => None,
    };
    if let Some(v) = told.and_then(|r| HeaderValue::from_str(r).ok()) {
        resp.headers_mut().insert(SESSION_REPLICA, v);
    }
    if let Some(s) = session.filter(|s| Some(s.id.as_str()) != id) {
        let cookie = format!("{SESSION_COOKIE}={}; Path=/; HttpOnly; SameSite=Lax", s.id);
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            resp.headers_mut().insert(header::SET_COOKIE, v);
        }
    }
    resp
}

/// Sends `session` to the node's replica; a failure is logged, not fatal (the
/// session then lives only here, as with any primary/backup scheme).
async fn replicate(cluster: &Cluster, index: usize, session: &Session) {
    let chosen = session.replica.as_deref().and_then(|r| cluster.node(r));
    let Some(r) = chosen.map(|(i, _)| i).or(cluster.0.nodes[index].replica) else {
        return;
    };
    let target = &cluster.0.nodes[r];
    let result = async {
        let body = serde_json::to_vec(session).map_err(|e| DemoError::Unexpected(e.to_string()))?;
        let req = client::request(
            target.addr,
            Method::PUT,
            &format!("/_replicate/{}", session.id),
        )
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))?;
        let reply = fetch(target.addr, req).await?;
        if reply.status.is_success() {
            Ok(())
        } else {
            Err(DemoError::Unexpected(format!("status {}", reply.status)))
        }
    }
    .await;
    if let Err(e) = result {
        tracing::debug!(from = %cluster.0.nodes[index].name, to = %target.name, error = %e, "replication failed");
    }
}

fn new_session_id() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

/// The value of cookie `name` in the request's `cookie` headers.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find_map(|(n, v)| (n == name).then_some(v))
}

/// The request's headers and its JSON body, or the error response to send.
async fn read_json<T: serde::de::DeserializeOwned>(
    req: Request<Incoming>,
) -> Result<(HeaderMap, T), Response<Full<Bytes>>> {
    let (parts, body) = req.into_parts();
    let bytes = Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|_| text(StatusCode::PAYLOAD_TOO_LARGE, "body too large or broken\n"))?
        .to_bytes();
    let value = serde_json::from_slice(&bytes)
        .map_err(|e| text(StatusCode::BAD_REQUEST, &format!("bad JSON body: {e}\n")))?;
    Ok((parts.headers, value))
}

pub fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_owned())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Full<Bytes>> {
    match serde_json::to_vec(value) {
        Ok(body) => {
            let mut resp = Response::new(Full::new(Bytes::from(body)));
            *resp.status_mut() = status;
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n")),
    }
}
