//! Routes that send plain-HTTP clients to https (`redirect_https`, a 308 to
//! the same host, path and query) and tell TLS clients to stay there (`hsts`,
//! `Strict-Transport-Security` on every backend's response over TLS).

mod common;

use std::net::SocketAddr;

use bytes::Bytes;
use common::scripted::{write, ScriptedBackend};
use common::tls::{make_cert, temp_dir, tls_connect, with_https};
use common::wire::*;
use common::TestLb;
use http::Request;
use http_body_util::Empty;

/// Two routes to one backend: `/shop` redirects and sets HSTS, `/open` does
/// neither.
fn config(backend: SocketAddr) -> String {
    format!(
        "[listen]\nhttp = [\"127.0.0.1:0\"]\n\n\
         [[route]]\npath_prefix = \"/shop\"\nupstream = \"wire\"\nredirect_https = true\n\
         hsts = \"max-age=31536000; includeSubDomains\"\n\n\
         [[route]]\npath_prefix = \"/open\"\nupstream = \"wire\"\n\n\
         [upstream.wire]\naffinity = \"none\"\n\n[upstream.wire.health]\ninterval = \"1h\"\n\n\
         [[upstream.wire.backend]]\nname = \"b1\"\naddr = \"{backend}\"\n"
    )
}

/// A backend that says where it was asked and sets its own (weaker) HSTS.
async fn backend() -> ScriptedBackend {
    ScriptedBackend::spawn(|r| {
        vec![write(format!(
            "HTTP/1.1 200 OK\r\nStrict-Transport-Security: max-age=1\r\nContent-Length: {}\r\n\r\n{}",
            r.target.len(),
            r.target
        ))]
    })
    .await
}

#[tokio::test]
async fn a_plain_request_is_redirected_to_the_same_url_over_https() {
    bounded(async {
        let backend = backend().await;
        let lb = WireLb::start(Side::Plain, &config(backend.addr)).await;
        let mut conn = lb.connect().await;
        let resp = conn
            .exchange("GET /shop/cart?item=1 HTTP/1.1\r\nHost: Shop.example:8080\r\n\r\n")
            .await;
        assert_eq!(resp.status, 308, "{resp:?}");
        // nginx's $host: lowercase, no port, no trailing dot.
        assert_eq!(
            resp.header("location"),
            Some("https://shop.example/shop/cart?item=1")
        );
        // An IPv6 address keeps its brackets (https://::1/ is no URL).
        for host in ["[::1]:8080", "[::1]"] {
            let resp = conn
                .exchange(format!("GET /shop HTTP/1.1\r\nHost: {host}\r\n\r\n"))
                .await;
            assert_eq!(
                resp.header("location"),
                Some("https://[::1]/shop"),
                "{host}"
            );
        }
        let resp = conn
            .exchange("GET /shop HTTP/1.1\r\nHost: SHOP.example.\r\n\r\n")
            .await;
        assert_eq!(resp.header("location"), Some("https://shop.example/shop"));
        // HEAD: the same head, no body; the connection stays usable.
        conn.send("HEAD /shop HTTP/1.1\r\nHost: shop.example\r\n\r\n")
            .await;
        let head = conn.read_head().await;
        assert_eq!(head.status, 308);
        assert_eq!(head.header("location"), Some("https://shop.example/shop"));
        // A route without redirect_https is served over plain HTTP, without HSTS.
        let open = conn
            .exchange("GET /open HTTP/1.1\r\nHost: shop.example\r\n\r\n")
            .await;
        assert_eq!(open.status, 200);
        assert_eq!(open.text(), "/open");
        assert_eq!(open.all("strict-transport-security"), ["max-age=1"]);
        assert!(
            backend.received().iter().all(|r| r.target == "/open"),
            "redirected requests reach no backend: {:?}",
            backend.received()
        );
    })
    .await;
}

#[tokio::test]
async fn a_tls_request_is_served_with_the_routes_hsts() {
    bounded(async {
        let backend = backend().await;
        let lb = WireLb::start(Side::Tls, &config(backend.addr)).await;
        let mut conn = lb.connect().await;
        let resp = conn
            .exchange("GET /shop/cart HTTP/1.1\r\nHost: shop.example\r\n\r\n")
            .await;
        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(resp.text(), "/shop/cart");
        assert_eq!(
            resp.all("strict-transport-security"),
            ["max-age=31536000; includeSubDomains"],
            "the route's HSTS replaces the backend's"
        );
        let open = conn
            .exchange("GET /open HTTP/1.1\r\nHost: shop.example\r\n\r\n")
            .await;
        assert_eq!(open.all("strict-transport-security"), ["max-age=1"]);
    })
    .await;
}

#[tokio::test]
async fn an_http2_request_is_redirected_too() {
    bounded(async {
        let backend = backend().await;
        let lb = WireLb::start(Side::Plain, &config(backend.addr)).await;
        let mut sender = h2_client(raw(lb.addr()).await).await;
        let req = Request::builder()
            .uri("http://shop.example/shop?x=y")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.expect("h2 response");
        assert_eq!(resp.status(), 308);
        assert_eq!(resp.headers()["location"], "https://shop.example/shop?x=y");
        assert!(backend.received().is_empty());
    })
    .await;
}

/// Over HTTP/2 the response's fields are encoded from the backend's head
/// (names lowercased on the way): the route's HSTS replaces the backend's,
/// the other route keeps the backend's own.
#[tokio::test]
async fn an_http2_request_over_tls_gets_the_routes_hsts() {
    bounded(async {
        let backend = backend().await;
        let dir = temp_dir("hsts-h2");
        let cert = make_cert(&dir, "shop", &["shop.example"]);
        let lb = TestLb::start(&with_https(&config(backend.addr), &[&cert])).await;
        let tls = tls_connect(lb.limpet.https_addrs[0], &[&cert], "shop.example", &[b"h2"])
            .await
            .expect("TLS handshake");
        let mut sender = h2_client(tls).await;
        for (path, hsts) in [
            ("/shop/cart", "max-age=31536000; includeSubDomains"),
            ("/open", "max-age=1"),
        ] {
            let req = Request::builder()
                .uri(format!("https://shop.example{path}"))
                .body(Empty::<Bytes>::new())
                .unwrap();
            let resp = sender.send_request(req).await.expect("h2 response");
            assert_eq!(resp.status(), 200, "{path}");
            let all: Vec<_> = resp
                .headers()
                .get_all("strict-transport-security")
                .iter()
                .collect();
            assert_eq!(all, [hsts], "{path}");
            assert_eq!(resp.headers()["content-length"], path.len().to_string());
        }
        let _ = std::fs::remove_dir_all(dir);
    })
    .await;
}

/// A TLS client that offers only `http/1.0` in ALPN (curl --http1.0) is
/// served HTTP/1.0, as nginx serves it: rustls refused the handshake (no
/// protocol in common) since limpet offered only h2 and http/1.1.
#[tokio::test]
async fn a_client_offering_only_http10_in_alpn_is_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    bounded(async {
        let backend = backend().await;
        let dir = temp_dir("alpn-http10");
        let cert = make_cert(&dir, "shop", &["shop.example"]);
        let lb = TestLb::start(&with_https(&config(backend.addr), &[&cert])).await;
        let mut tls = tls_connect(
            lb.limpet.https_addrs[0],
            &[&cert],
            "shop.example",
            &[b"http/1.0"],
        )
        .await
        .expect("TLS handshake");
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.0"[..]));
        tls.write_all(b"GET /open HTTP/1.0\r\nHost: shop.example\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        tls.read_to_end(&mut answer).await.unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("/open"), "{answer}");
        let _ = std::fs::remove_dir_all(dir);
    })
    .await;
}
