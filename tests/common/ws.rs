//! A WebSocket backend and client for the tunnel tests (tests/protocols.rs,
//! tests/tunnels.rs).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// A backend that answers plain requests with its name and echoes WebSocket
/// messages prefixed with its name.
pub struct WsBackend {
    pub name: String,
    pub addr: SocketAddr,
    tasks: std::sync::Mutex<Option<JoinSet<()>>>,
    /// Turns true on stop: open WebSockets end too.
    killed: tokio::sync::watch::Sender<bool>,
}

impl WsBackend {
    pub async fn spawn(name: &str) -> WsBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let b = WsBackend {
            name: name.to_string(),
            addr: listener.local_addr().unwrap(),
            tasks: std::sync::Mutex::new(None),
            killed: tokio::sync::watch::channel(false).0,
        };
        b.serve(listener);
        b
    }

    fn serve(&self, listener: TcpListener) {
        let name: Arc<str> = self.name.clone().into();
        let killed = self.killed.subscribe();
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let name = name.clone();
                let killed = killed.clone();
                conns.spawn(async move {
                    let svc = service_fn(move |req| {
                        let name = name.clone();
                        let killed = killed.clone();
                        async move { Ok::<_, Infallible>(ws_answer(req, name, killed)) }
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

    pub async fn stop(&self) {
        let _ = self.killed.send(true);
        let tasks = self.tasks.lock().unwrap().take();
        if let Some(mut t) = tasks {
            t.shutdown().await;
        }
    }
}

fn ws_answer(
    mut req: Request<Incoming>,
    name: Arc<str>,
    mut killed: tokio::sync::watch::Receiver<bool>,
) -> Response<Full<Bytes>> {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return Response::builder()
            .header("x-backend", &*name)
            .body(Full::new(Bytes::from(name.to_string())))
            .unwrap();
    };
    let upgrade = hyper::upgrade::on(&mut req);
    let echo_name = name.clone();
    tokio::spawn(async move {
        let name = echo_name;
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        loop {
            let msg = tokio::select! {
                m = ws.next() => m,
                _ = killed.wait_for(|k| *k) => break, // the server dies: the socket drops
            };
            match msg {
                Some(Ok(Message::Text(t))) => {
                    if ws
                        .send(Message::text(format!("{name}: {t}")))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                Some(Ok(_)) => {}
                _ => break,
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header(
            "sec-websocket-accept",
            tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()),
        )
        .header("x-backend", &*name)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// A WebSocket through limpet at `addr` (path `/chat`) carrying `cookie`.
pub async fn ws_connect(
    addr: SocketAddr,
    cookie: &str,
) -> Result<WebSocketStream<TcpStream>, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://{addr}/chat"),
    )
    .map_err(|e| e.to_string())?;
    req.headers_mut().insert("cookie", cookie.parse().unwrap());
    let handshake = tokio_tungstenite::client_async(req, tcp);
    let (ws, resp) = tokio::time::timeout(Duration::from_secs(10), handshake)
        .await
        .map_err(|_| "WebSocket handshake timed out".to_string())?
        .map_err(|e| e.to_string())?;
    assert_eq!(resp.status(), 101);
    Ok(ws)
}

/// Sends `text` and waits (5 s at most) for the text that comes back.
pub async fn ws_roundtrip<S>(ws: &mut WebSocketStream<S>, text: &str) -> Option<String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws.send(Message::text(text.to_string())).await.ok()?;
    match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => Some(t.to_string()),
        _ => None,
    }
}
