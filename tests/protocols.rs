//! Issue 4: TLS termination (SNI, ALPN), HTTP/2 (over TLS and h2c), WebSocket
//! upgrades with failover, and app-cookie affinity. Real rustls and hyper clients,
//! certificates generated at test time.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::tls::{make_cert, temp_dir, tls_connect, with_https, TestCert};
use common::ws::*;
use common::*;
use futures_util::StreamExt;
use http::{Request, Response};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

fn https_config(backends: &[&TestBackend], certs: &[&TestCert], extra: &str) -> String {
    with_https(&ring_config(backends, extra), certs)
}

#[tokio::test]
async fn https_with_sni_alpn_and_secure_cookie() {
    let dir = temp_dir("sni");
    let shop = make_cert(&dir, "shop", &["shop.example.com"]);
    let blog = make_cert(&dir, "blog", &["blog.example.com"]);
    let [a, b, c] = three_backends().await;
    let lb = TestLb::start(&https_config(&[&a, &b, &c], &[&shop, &blog], "")).await;
    let addr = lb.limpet.https_addrs[0];

    // SNI picks the certificate whose names match; an unknown name gets the first.
    for (name, want) in [
        ("blog.example.com", &blog),
        ("shop.example.com", &shop),
        ("other.example.com", &shop),
    ] {
        let roots = [&shop, &blog];
        let stream = tls_connect(addr, &roots, name, &[b"http/1.1"]).await;
        if name == "other.example.com" {
            // The default certificate does not cover this name: the client refuses it,
            // which shows which certificate was sent.
            assert!(stream.is_err());
            continue;
        }
        let stream = stream.expect("TLS handshake");
        let presented = stream.get_ref().1.peer_certificates().unwrap()[0].clone();
        assert_eq!(presented, want.der, "certificate for {name}");
    }

    // HTTP/1.1 over TLS: x-forwarded-proto https and a Secure cookie (secure = "auto").
    let stream = tls_connect(addr, &[&shop], "shop.example.com", &[b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/")
        .header("host", "shop.example.com")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-seen-xfp"], "https");
    let set_cookie = resp.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(set_cookie.contains("; Secure"), "{set_cookie}");

    // The plain listener does not mark the cookie Secure.
    let plain = lb.client().get("/").await;
    assert!(!plain.headers["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Secure"));
    lb.limpet.shutdown().await;
}

#[tokio::test]
async fn garbage_and_plain_http_on_the_tls_port_fail_alone() {
    let dir = temp_dir("garbage");
    let cert = make_cert(&dir, "site", &["localhost"]);
    let [a, b, c] = three_backends().await;
    let lb = TestLb::start(&https_config(&[&a, &b, &c], &[&cert], "")).await;
    let addr = lb.limpet.https_addrs[0];

    // A healthy TLS connection, opened before the bad ones and used after them.
    let stream = tls_connect(addr, &[&cert], "localhost", &[b"http/1.1"])
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);

    let mut plain = TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut garbage = TcpStream::connect(addr).await.unwrap();
    garbage
        .write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 1, 2, 3, 4, 5, 6, 7, 8])
        .await
        .unwrap();
    for s in [&mut plain, &mut garbage] {
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
        assert!(
            read.is_ok(),
            "a bad client must be closed, not left hanging"
        );
        assert!(!String::from_utf8_lossy(&buf).contains("200 OK"));
    }

    let req = Request::get("/")
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    lb.limpet.shutdown().await;
}

/// Sends GET / over HTTP/2 with the given `cookie` header fields; returns the response.
async fn h2_get<T>(io: T, cookies: &[&str]) -> Response<Incoming>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut sender = common::wire::h2_client(io).await;
    let mut req = Request::get("http://localhost/")
        .body(Empty::<Bytes>::new())
        .unwrap();
    for c in cookies {
        req.headers_mut().append("cookie", c.parse().unwrap());
    }
    sender.send_request(req).await.expect("h2 request")
}

#[tokio::test]
async fn h2_over_tls_and_h2c_keep_affinity_with_split_cookie_headers() {
    let dir = temp_dir("h2");
    let cert = make_cert(&dir, "site", &["localhost"]);
    let [a, b, c] = three_backends().await;
    let lb = TestLb::start(&https_config(&[&a, &b, &c], &[&cert], "")).await;

    // Pin over HTTP/1.1.
    let mut client = lb.client();
    let first = client.get("/").await;
    let pinned = first.backend().to_string();
    let cookie = format!("limpet={}", client.cookie.clone().unwrap());

    for round in 0..5 {
        // h2 over TLS, ALPN h2, the pin in the middle of three cookie fields.
        let stream = tls_connect(lb.limpet.https_addrs[0], &[&cert], "localhost", &[b"h2"])
            .await
            .unwrap();
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let resp = h2_get(stream, &["app=1", &cookie, "other=2"]).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers()["x-backend"],
            pinned.as_str(),
            "round {round} over h2/TLS"
        );
        assert!(
            resp.headers().get("set-cookie").is_none(),
            "the pin did not change"
        );
        // The app's cookies reach the backend, limpet's does not.
        let seen = resp.headers()["x-seen-cookie"].to_str().unwrap();
        assert_eq!(seen, "app=1; other=2");

        // h2c prior knowledge on the plain listener.
        let tcp = TcpStream::connect(lb.addr).await.unwrap();
        let resp = h2_get(tcp, &[&cookie, "x=y"]).await;
        assert_eq!(
            resp.headers()["x-backend"],
            pinned.as_str(),
            "round {round} over h2c"
        );
    }
    lb.limpet.shutdown().await;
}

#[tokio::test]
async fn websocket_is_pinned_and_fails_over_on_reconnect() {
    let (w1, w2, w3) = (
        WsBackend::spawn("app1").await,
        WsBackend::spawn("app2").await,
        WsBackend::spawn("app3").await,
    );
    let mut toml = String::from("[listen]\nhttp = [\"127.0.0.1:0\"]\n\n[upstream.shop]\nretries = 2\n[upstream.shop.cookie]\nsecret = \"s\"\n");
    for (i, w) in [&w1, &w2, &w3].iter().enumerate() {
        let replica = ["app2", "app3", "app1"][i];
        toml.push_str(&format!(
            "[[upstream.shop.backend]]\nname = \"{}\"\naddr = \"{}\"\nreplica = \"{replica}\"\n",
            w.name, w.addr
        ));
    }
    let lb = TestLb::start(&toml).await;
    let mut client = lb.client();
    let first = client.get("/").await;
    let pinned = first.backend().to_string();
    let cookie = format!("limpet={}", client.cookie.clone().unwrap());

    let mut ws = ws_connect(lb.addr, &cookie).await.unwrap();
    for i in 0..3 {
        assert_eq!(
            ws_roundtrip(&mut ws, &format!("hello {i}")).await.unwrap(),
            format!("{pinned}: hello {i}")
        );
    }

    // Kill the pinned backend: the socket closes ...
    let backends = [&w1, &w2, &w3];
    let dead = backends.iter().position(|w| w.name == pinned).unwrap();
    backends[dead].stop().await;
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the client's socket must close when the backend dies"
    );

    // ... and the reconnect lands on the replica.
    let replica = backends[(dead + 1) % 3].name.clone();
    let mut ws = ws_connect(lb.addr, &cookie).await.unwrap();
    assert_eq!(
        ws_roundtrip(&mut ws, "again").await.unwrap(),
        format!("{replica}: again")
    );
    lb.limpet.shutdown().await;
}

/// The HTTP/1 engine tunnels an upgrade on a TLS listener as on a plain one.
#[tokio::test]
async fn websocket_over_tls_is_tunnelled() {
    let w1 = WsBackend::spawn("app1").await;
    let dir = temp_dir("ws-tls");
    let cert = make_cert(&dir, "localhost", &["localhost"]);
    let toml = format!(
        "[listen]\nhttp = [\"127.0.0.1:0\"]\n\n[upstream.shop]\naffinity = \"none\"\n\
         [[upstream.shop.backend]]\nname = \"app1\"\naddr = \"{}\"\n",
        w1.addr
    );
    let lb = TestLb::start(&with_https(&toml, &[&cert])).await;
    let addr = lb.limpet.https_addrs[0];
    let tls = tls_connect(addr, &[&cert], "localhost", &[b"http/1.1"])
        .await
        .expect("TLS handshake");
    let req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        "wss://localhost/chat",
    )
    .unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async(req, tls)
        .await
        .expect("upgrade over TLS");
    assert_eq!(resp.status(), 101);
    for i in 0..3 {
        assert_eq!(
            ws_roundtrip(&mut ws, &format!("tls {i}")).await.unwrap(),
            format!("app1: tls {i}")
        );
    }
    // Closed by the client, the tunnel ends and shutdown need not wait for it.
    drop(ws);
    lb.limpet.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

fn app_cookie_config(backends: &[&TestBackend]) -> String {
    let mut toml = String::from(
        "[listen]\nhttp = [\"127.0.0.1:0\"]\n\n[upstream.tomcat]\naffinity = \"app-cookie\"\nbalance = \"round-robin\"\nretries = 2\n\n[upstream.tomcat.app_cookie]\nname = \"JSESSIONID\"\nseparator = \".\"\n",
    );
    for (i, b) in backends.iter().enumerate() {
        let replica = &backends[(i + 1) % backends.len()].name;
        toml.push_str(&format!(
            "\n[[upstream.tomcat.backend]]\nname = \"{}\"\naddr = \"{}\"\nreplica = \"{}\"\nroute = \"jvm{}\"\n",
            b.name,
            b.addr,
            replica,
            i + 1
        ));
    }
    toml
}

#[tokio::test]
async fn app_cookie_routes_by_the_session_suffix() {
    let [a, b, c] = three_backends().await;
    let lb = TestLb::start(&app_cookie_config(&[&a, &b, &c])).await;
    let mut client = lb.client();

    // The route suffix picks the backend, every time, and limpet sets no cookie.
    client
        .headers
        .insert("cookie", "JSESSIONID=8F3AC2.jvm2".parse().unwrap());
    for _ in 0..20 {
        let r = client.get("/cart").await;
        assert_eq!(r.backend(), "app2");
        assert!(r.headers.get("set-cookie").is_none());
        assert_eq!(
            r.header("x-seen-cookie"),
            Some("JSESSIONID=8F3AC2.jvm2"),
            "the app's cookie passes untouched"
        );
    }

    // ;jsessionid= in the path works too.
    let mut plain = lb.client();
    for _ in 0..5 {
        assert_eq!(
            plain.get("/cart;jsessionid=abc.jvm3?x=1").await.backend(),
            "app3"
        );
    }

    // Unknown route or no cookie: balanced (round-robin visits every backend).
    let mut seen = std::collections::HashSet::new();
    let mut unknown = lb.client();
    unknown
        .headers
        .insert("cookie", "JSESSIONID=abc.nosuch".parse().unwrap());
    for _ in 0..6 {
        seen.insert(unknown.get("/").await.backend().to_string());
        seen.insert(plain.get("/").await.backend().to_string());
    }
    assert_eq!(seen.len(), 3, "{seen:?}");

    // The route's backend is down: its replica takes over, told by the failover header.
    b.stop().await;
    for _ in 0..5 {
        let r = client.get("/cart").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.backend(), "app3");
        assert_eq!(r.header("x-seen-failover-from"), Some("app2"));
        assert!(r.headers.get("set-cookie").is_none());
    }
    lb.limpet.shutdown().await;
}

#[tokio::test]
async fn certificates_are_re_read_on_reload() {
    let dir = temp_dir("reload");
    let old = make_cert(&dir, "site", &["localhost"]);
    let [a, b, c] = three_backends().await;
    let toml = https_config(&[&a, &b, &c], &[&old], "");
    let lb = TestLb::start(&toml).await;
    let addr = lb.limpet.https_addrs[0];
    let presented = |s: &tokio_rustls::client::TlsStream<TcpStream>| {
        s.get_ref().1.peer_certificates().unwrap()[0].clone()
    };
    let s = tls_connect(addr, &[&old], "localhost", &[b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(presented(&s), old.der);

    // A renewed certificate written over the same files is served after a reload.
    let new = make_cert(&dir, "site", &["localhost"]);
    lb.limpet
        .apply(limpet::Config::parse(&toml, "test.toml"))
        .expect("reload");
    let s = tls_connect(addr, &[&new], "localhost", &[b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(presented(&s), new.der);

    // A broken key file fails the reload and the renewed certificate keeps serving.
    std::fs::write(&new.key_path, "not a key").unwrap();
    let err = lb
        .limpet
        .apply(limpet::Config::parse(&toml, "test.toml"))
        .unwrap_err();
    assert!(err.to_string().contains("tls.certs[0]"), "{err}");
    let s = tls_connect(addr, &[&new], "localhost", &[b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(presented(&s), new.der);
    lb.limpet.shutdown().await;
}
