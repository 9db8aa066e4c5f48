//! Issue 11 item 4: WebSocket (upgraded) tunnels count while open, in
//! `limpet_backend_tunnels` and `/status` `tunnels`, and as requests in flight,
//! so that least-requests sends new clients away from a backend holding open
//! WebSockets.

mod common;
mod ops;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use ops::*;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// A backend answering plain requests with its name and echoing WebSocket
/// messages prefixed with its name; its tasks end with the test's runtime.
async fn ws_backend(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc =
                    service_fn(move |req| async move { Ok::<_, Infallible>(ws_answer(req, name)) });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

fn ws_answer(mut req: Request<Incoming>, name: &'static str) -> Response<Full<Bytes>> {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return Response::builder()
            .header("x-backend", name)
            .body(Full::new(Bytes::from(name)))
            .unwrap();
    };
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            if let Message::Text(t) = msg {
                if ws
                    .send(Message::text(format!("{name}: {t}")))
                    .await
                    .is_err()
                {
                    break;
                }
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
        .body(Full::new(Bytes::new()))
        .unwrap()
}

async fn ws_open(addr: SocketAddr, cookie: &str) -> WebSocketStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://{addr}/chat"),
    )
    .unwrap();
    req.headers_mut().insert("cookie", cookie.parse().unwrap());
    let (ws, resp) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async(req, tcp),
    )
    .await
    .expect("WebSocket handshake timed out")
    .expect("WebSocket handshake");
    assert_eq!(resp.status(), 101);
    ws
}

async fn echo(ws: &mut WebSocketStream<TcpStream>, text: &str) -> String {
    ws.send(Message::text(text.to_string())).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => t.to_string(),
        other => panic!("no echo: {other:?}"),
    }
}

#[tokio::test]
async fn open_websockets_count_as_tunnels_and_in_flight_for_least_requests() {
    let (a1, a2) = (ws_backend("app1").await, ws_backend("app2").await);
    let toml = format!(
        "[listen]\nhttp = [\"127.0.0.1:0\"]\n\n[upstream.shop]\nbalance = \"least-requests\"\n\
         [upstream.shop.cookie]\nsecret = \"test-secret\"\n\
         [[upstream.shop.backend]]\nname = \"app1\"\naddr = \"{a1}\"\nreplica = \"app2\"\n\
         [[upstream.shop.backend]]\nname = \"app2\"\naddr = \"{a2}\"\nreplica = \"app1\"\n{ADMIN}"
    );
    let lb = TestLb::start(&toml).await;
    let admin = AdminClient::new(lb.limpet.admin_addr.unwrap());
    let mut pinned = None;
    for _ in 0..20 {
        let mut client = lb.client();
        if client.get("/").await.backend() == "app1" {
            pinned = client.cookie;
            break;
        }
    }
    let cookie = format!("limpet={}", pinned.expect("a client pinned to app1"));

    let mut sockets = Vec::new();
    for i in 0..3 {
        let mut ws = ws_open(lb.addr, &cookie).await;
        assert_eq!(
            echo(&mut ws, &format!("hi {i}")).await,
            format!("app1: hi {i}")
        );
        sockets.push(ws);
    }
    let entry = admin.backend("shop", "app1").await;
    assert_eq!(entry["tunnels"], 3, "{entry}");
    assert_eq!(entry["in_flight"], 3, "{entry}");
    let metrics = admin.metrics().await;
    let labels = |b: &'static str| [("upstream", "shop"), ("backend", b)];
    assert_eq!(
        metrics.value("limpet_backend_tunnels", &labels("app1")),
        3.0
    );
    assert_eq!(
        metrics.value("limpet_backend_tunnels", &labels("app2")),
        0.0
    );
    assert_eq!(
        metrics.value("limpet_backend_in_flight", &labels("app1")),
        3.0
    );

    // Open WebSockets are load: every new client goes to app2.
    for _ in 0..20 {
        assert_eq!(lb.client().get("/").await.backend(), "app2");
    }

    for mut ws in sockets {
        ws.close(None).await.unwrap();
        while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {}
    }
    let closed = eventually(Duration::from_secs(10), || async {
        let entry = admin.backend("shop", "app1").await;
        entry["tunnels"] == 0 && entry["in_flight"] == 0
    })
    .await;
    assert!(closed, "{}", admin.backend("shop", "app1").await);
    let mut on_app1 = 0;
    for _ in 0..20 {
        on_app1 += (lb.client().get("/").await.backend() == "app1") as usize;
    }
    assert!(
        on_app1 >= 5,
        "closed tunnels weigh nothing: {on_app1} of 20"
    );
}
