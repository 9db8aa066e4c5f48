//! Issue 12 item 1: the PROXY protocol. A listener's `proxy_protocol.from`
//! sources must open with a v1 or v2 header, whose source address is then the
//! client for X-Forwarded-For and ip-hash; anything else from them is closed
//! and counted; other sources are served as before. `send_proxy = "v2"`
//! puts the client's address in front of each backend connection (never
//! pooled), and health checks send LOCAL.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::scripted::raw_backend;
use common::tls::{make_cert, temp_dir, tls_handshake, with_https};
use common::wire::{bounded, get, h2_client, raw, raw_exchange, Wire};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

fn config(from: &str, backends: &[&TestBackend], upstream: &str, top: &str) -> String {
    let mut s = format!(
        "[listen]\nhttp = [\"127.0.0.1:0\"]\n{top}\n[listen.proxy_protocol]\nfrom = [{from}]\n\n\
         [upstream.shop]\n{upstream}\n[upstream.shop.cookie]\nsecret = \"s\"\n"
    );
    for b in backends {
        s.push_str(&format!(
            "\n[[upstream.shop.backend]]\nname = \"{}\"\naddr = \"{}\"\n",
            b.name, b.addr
        ));
    }
    s
}

/// A v2 PROXY header written by hand (not by limpet's own writer).
fn v2(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut h = V2_SIGNATURE.to_vec();
    match (source, destination) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            h.extend_from_slice(&[0x21, 0x11, 0, 12]);
            h.extend_from_slice(&s.ip().octets());
            h.extend_from_slice(&d.ip().octets());
        }
        (SocketAddr::V6(s), SocketAddr::V6(d)) => {
            h.extend_from_slice(&[0x21, 0x21, 0, 36]);
            h.extend_from_slice(&s.ip().octets());
            h.extend_from_slice(&d.ip().octets());
        }
        _ => panic!("mixed families"),
    }
    h.extend_from_slice(&source.port().to_be_bytes());
    h.extend_from_slice(&destination.port().to_be_bytes());
    h
}

fn v2_local() -> Vec<u8> {
    let mut h = V2_SIGNATURE.to_vec();
    h.extend_from_slice(&[0x20, 0x00, 0, 0]);
    h
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// One request on a new connection that starts with `header`; the backend's
/// answer.
async fn via(lb: SocketAddr, header: &[u8], path: &str) -> common::wire::Resp {
    let mut wire = Wire::connect(lb).await;
    let mut bytes = header.to_vec();
    bytes.extend_from_slice(get(path).as_bytes());
    wire.send(bytes).await;
    wire.read().await
}

fn rejected(lb: &TestLb, reason: &str) -> u64 {
    let listener = lb.addr.to_string();
    lb.limpet
        .metrics
        .proxy_protocol_rejected
        .with_label_values(&[&listener, reason])
        .get()
}

#[tokio::test]
async fn v1_and_v2_headers_make_their_source_the_client() {
    bounded(async {
        let app1 = TestBackend::spawn("app1").await;
        let lb = TestLb::start(&config("\"127.0.0.1/32\"", &[&app1], "", "")).await;
        let to = lb.addr;
        let cases: [(&str, Vec<u8>, &str); 5] = [
            (
                "v1 TCP4",
                b"PROXY TCP4 203.0.113.7 10.0.0.1 40000 80\r\n".to_vec(),
                "203.0.113.7",
            ),
            (
                "v1 TCP6",
                b"PROXY TCP6 2001:db8::9 2001:db8::1 40000 80\r\n".to_vec(),
                "2001:db8::9",
            ),
            (
                "v2 TCP4",
                v2(addr("198.51.100.4:5000"), addr("10.0.0.1:80")),
                "198.51.100.4",
            ),
            (
                "v2 TCP6",
                v2(addr("[2001:db8::4]:5000"), addr("[::1]:80")),
                "2001:db8::4",
            ),
            // The balancer's own connection: the socket's peer stays the client.
            ("v2 LOCAL", v2_local(), "127.0.0.1"),
        ];
        for (label, header, client) in cases {
            let resp = via(to, &header, "/").await;
            assert_eq!(resp.status, 200, "{label}: {resp:?}");
            assert_eq!(resp.header("x-seen-xff"), Some(client), "{label}");
        }
        let resp = via(to, b"PROXY UNKNOWN\r\n", "/").await;
        assert_eq!(resp.header("x-seen-xff"), Some("127.0.0.1"), "v1 UNKNOWN");

        // Keep-alive: every request of the connection has the header's client.
        let mut wire = Wire::connect(to).await;
        wire.send(b"PROXY TCP4 192.0.2.55 10.0.0.1 1 80\r\n").await;
        for _ in 0..3 {
            let resp = wire.exchange(get("/")).await;
            assert_eq!(resp.header("x-seen-xff"), Some("192.0.2.55"));
        }

        // HTTP/2 with prior knowledge after the header.
        let mut tcp = raw(to).await;
        tcp.write_all(&v2(addr("192.0.2.66:1"), addr("10.0.0.1:80")))
            .await
            .unwrap();
        let mut h2 = h2_client(tcp).await;
        let req = http::Request::get(format!("http://{to}/"))
            .body(http_body_util::Empty::new())
            .unwrap();
        let resp = h2.send_request(req).await.expect("h2 response");
        assert_eq!(resp.headers()["x-seen-xff"], "192.0.2.66");
        assert_eq!(rejected(&lb, "missing") + rejected(&lb, "malformed"), 0);
    })
    .await;
}

#[tokio::test]
async fn the_header_comes_before_tls() {
    bounded(async {
        let app1 = TestBackend::spawn("app1").await;
        let dir = temp_dir("proxy-tls");
        let cert = make_cert(&dir, "localhost", &["localhost"]);
        let toml = with_https(&config("\"127.0.0.1/32\"", &[&app1], "", ""), &[&cert]);
        let lb = TestLb::start(&toml).await;
        let mut tcp = raw(lb.limpet.https_addrs[0]).await;
        tcp.write_all(b"PROXY TCP4 203.0.113.80 10.0.0.1 40000 443\r\n")
            .await
            .unwrap();
        let tls = tls_handshake(tcp, &[&cert], "localhost", &[b"http/1.1"])
            .await
            .expect("TLS after the PROXY header");
        let mut wire = Wire::new(tls);
        let resp = wire.exchange(get("/")).await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("x-seen-xff"), Some("203.0.113.80"));
        assert_eq!(resp.header("x-seen-xfp"), Some("https"));
        let _ = std::fs::remove_dir_all(dir);
    })
    .await;
}

#[tokio::test]
async fn ip_hash_follows_the_carried_address() {
    bounded(async {
        let backends = three_backends().await;
        let [a, b, c] = &backends;
        let lb = TestLb::start(&config(
            "\"127.0.0.0/8\"",
            &[a, b, c],
            "affinity = \"ip-hash\"",
            "",
        ))
        .await;
        let mut seen = std::collections::BTreeMap::new();
        for i in 1..=24u8 {
            let header = format!("PROXY TCP4 198.51.100.{i} 10.0.0.1 40000 80\r\n");
            let first = via(lb.addr, header.as_bytes(), "/").await;
            let again = via(lb.addr, header.as_bytes(), "/").await;
            assert_eq!(
                first.header("x-backend").unwrap_or(""),
                again.header("x-backend").unwrap_or(""),
                "198.51.100.{i} keeps its backend"
            );
            seen.insert(first.header("x-backend").unwrap_or("").to_string(), i);
        }
        // All from one socket peer (127.0.0.1), yet spread by the carried address.
        assert!(seen.len() > 1, "{seen:?}");
    })
    .await;
}

#[tokio::test]
async fn a_from_source_without_a_valid_header_is_closed_and_counted() {
    bounded(async {
        let app1 = TestBackend::spawn("app1").await;
        let toml = config(
            "\"127.0.0.1/32\"",
            &[&app1],
            "",
            "[timeouts]\nclient_header = \"500ms\"\n",
        );
        let lb = TestLb::start(&toml).await;
        let wait = Duration::from_secs(10);
        let (text, closed) = raw_exchange(lb.addr, get("/").as_bytes(), wait).await;
        assert!(closed && text.is_empty(), "no header: {text:?}");
        assert_eq!(rejected(&lb, "missing"), 1);

        let garbage = b"PROXY TCP4 not-an-address 10.0.0.1 1 2\r\nGET / HTTP/1.1\r\n\r\n";
        let (text, closed) = raw_exchange(lb.addr, garbage, wait).await;
        assert!(closed && text.is_empty(), "garbage: {text:?}");
        let bad_v2 = [&V2_SIGNATURE[..], &[0x21, 0x11, 0, 4, 1, 2, 3, 4]].concat();
        let (text, closed) = raw_exchange(lb.addr, &bad_v2, wait).await;
        assert!(
            closed && text.is_empty(),
            "short v2 address block: {text:?}"
        );
        assert_eq!(rejected(&lb, "malformed"), 2);

        // Half a header, then silence: closed after client_header.
        let (text, closed) = raw_exchange(lb.addr, b"PROXY TCP4 1.2.", wait).await;
        assert!(closed && text.is_empty(), "late: {text:?}");
        assert_eq!(rejected(&lb, "timeout"), 1);

        // A connection closed without a byte (an L4 health check) is no rejection.
        drop(raw(lb.addr).await);
        let resp = via(lb.addr, b"PROXY TCP4 192.0.2.1 10.0.0.1 1 80\r\n", "/").await;
        assert_eq!(resp.status, 200);
        assert_eq!(
            rejected(&lb, "missing") + rejected(&lb, "malformed") + rejected(&lb, "timeout"),
            4
        );
    })
    .await;
}

/// Half a header and then the client's close is seen at once and counted
/// as `closed`; a header that trickles in a few bytes at a time is taken
/// whole. The half header was peeked again every 5 ms until
/// `client_header` passed (a peek sees the bytes, never the close behind
/// them), holding the socket and counting a `timeout`.
#[tokio::test]
async fn a_half_header_then_a_close_is_seen_at_once() {
    use tokio::io::AsyncWriteExt;
    bounded(async {
        let app1 = TestBackend::spawn("app1").await;
        let toml = config(
            "\"127.0.0.1/32\"",
            &[&app1],
            "",
            "[timeouts]\nclient_header = \"10s\"\n",
        );
        let lb = TestLb::start(&toml).await;
        let mut conn = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
        conn.write_all(b"PROXY TCP4 1.2").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(conn);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while rejected(&lb, "closed") == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "not seen closed in 2 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(rejected(&lb, "timeout"), 0);

        // Trickled in three pieces, then the request: served.
        let mut wire = Wire::connect(lb.addr).await;
        for piece in [&b"PROXY TCP4 192"[..], b".0.2.7 10.0.0.1 ", b"1234 80\r\n"] {
            wire.send(piece).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        wire.send(get("/")).await;
        assert_eq!(wire.read().await.status, 200);
    })
    .await;
}

#[tokio::test]
async fn sources_outside_from_are_served_without_a_header() {
    bounded(async {
        let app1 = TestBackend::spawn("app1").await;
        let lb = TestLb::start(&config("\"10.0.0.0/8\", \"::1/128\"", &[&app1], "", "")).await;
        let mut client = lb.client();
        let reply = client.get("/").await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("x-seen-xff"), Some("127.0.0.1"));
        // A header from such a source is not read as one: it is a bad request.
        let (text, _) = raw_exchange(
            lb.addr,
            b"PROXY TCP4 192.0.2.1 10.0.0.1 1 80\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
            Duration::from_secs(5),
        )
        .await;
        assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    })
    .await;
}

/// What a `send_proxy` backend received on one connection: the PROXY header's
/// bytes and the request line after it.
#[derive(Debug, Clone)]
struct Seen {
    header: Vec<u8>,
    request_line: String,
}

/// A raw backend that reads a v2 header (signature, fixed part, address
/// block), then one request head, records both and answers 200.
async fn proxy_reading_backend(seen: Arc<Mutex<Vec<Seen>>>) -> SocketAddr {
    raw_backend(move |mut stream: TcpStream| {
        let seen = seen.clone();
        async move {
            let mut fixed = [0u8; 16];
            if stream.read_exact(&mut fixed).await.is_err() {
                return;
            }
            let len = u16::from_be_bytes([fixed[14], fixed[15]]) as usize;
            let mut block = vec![0u8; len];
            if stream.read_exact(&mut block).await.is_err() {
                return;
            }
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if stream.read_exact(&mut byte).await.is_err() {
                    return;
                }
                head.push(byte[0]);
            }
            let text = String::from_utf8_lossy(&head).into_owned();
            seen.lock().unwrap().push(Seen {
                header: [&fixed[..], &block].concat(),
                request_line: text.lines().next().unwrap_or("").to_string(),
            });
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await;
            // Keep-alive on the backend's side: limpet must still not reuse it.
            let _ = stream.read(&mut byte).await;
        }
    })
    .await
}

#[tokio::test]
async fn send_proxy_prefixes_each_backend_connection_with_the_client() {
    bounded(async {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let backend = proxy_reading_backend(seen.clone()).await;
        let toml = format!(
            "[listen]\nhttp = [\"127.0.0.1:0\"]\nproxy_protocol = {{ from = [\"127.0.0.1/32\"] }}\n\n\
             [upstream.shop]\naffinity = \"none\"\nsend_proxy = \"v2\"\n\
             [upstream.shop.health]\ninterval = \"100ms\"\n\
             [[upstream.shop.backend]]\nname = \"raw\"\naddr = \"{backend}\"\n"
        );
        let lb = TestLb::start(&toml).await;
        let client_header = b"PROXY TCP4 203.0.113.9 192.0.2.80 41000 8080\r\n";
        let mut wire = Wire::connect(lb.addr).await;
        wire.send(client_header).await;
        for _ in 0..2 {
            let resp = wire.exchange(get("/x")).await;
            assert_eq!(resp.status, 200, "{resp:?}");
        }
        // HTTP/2 (another engine) from a client without a PROXY header of its own.
        let lb2 = {
            let mut tcp = raw(lb.addr).await;
            tcp.write_all(b"PROXY TCP4 203.0.113.10 192.0.2.80 41001 8080\r\n")
                .await
                .unwrap();
            tcp
        };
        let mut h2 = h2_client(lb2).await;
        for _ in 0..2 {
            let req = http::Request::get(format!("http://{}/h2", lb.addr))
                .body(http_body_util::Empty::new())
                .unwrap();
            assert_eq!(h2.send_request(req).await.expect("h2").status(), 200);
        }

        let expected = |src: [u8; 4], sport: u16| {
            let mut h = V2_SIGNATURE.to_vec();
            h.extend_from_slice(&[0x21, 0x11, 0, 12]);
            h.extend_from_slice(&src);
            h.extend_from_slice(&[192, 0, 2, 80]);
            h.extend_from_slice(&sport.to_be_bytes());
            h.extend_from_slice(&8080u16.to_be_bytes());
            h
        };
        let requests: Vec<Seen> = seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| !s.request_line.contains("/health"))
            .cloned()
            .collect();
        assert_eq!(requests.len(), 4, "one connection per request: {requests:?}");
        for s in &requests[..2] {
            assert_eq!(s.request_line, "GET /x HTTP/1.1");
            assert_eq!(s.header, expected([203, 0, 113, 9], 41000));
        }
        for s in &requests[2..] {
            assert_eq!(s.request_line, "GET /h2 HTTP/1.1");
            assert_eq!(s.header, expected([203, 0, 113, 10], 41001));
        }

        // Health checks: limpet's own connections say LOCAL.
        let checked = eventually(Duration::from_secs(10), || async {
            seen.lock()
                .unwrap()
                .iter()
                .any(|s| s.request_line.contains("/health"))
        })
        .await;
        assert!(checked, "a health check reached the backend");
        for s in seen.lock().unwrap().iter() {
            if s.request_line.contains("/health") {
                assert_eq!(s.header, v2_local());
            }
        }
        assert_eq!(lb.backend_state("shop", "raw"), "up");
    })
    .await;
}

#[tokio::test]
async fn a_backend_can_turn_send_proxy_off() {
    bounded(async {
        let app1 = TestBackend::spawn("app1").await;
        let toml = format!(
            "[listen]\nhttp = [\"127.0.0.1:0\"]\n\n[upstream.shop]\nsend_proxy = \"v2\"\n\
             [[upstream.shop.backend]]\nname = \"app1\"\naddr = \"{}\"\nsend_proxy = \"off\"\n",
            app1.addr
        );
        let lb = TestLb::start(&toml).await;
        // A plain HTTP backend answers: it got no PROXY header.
        assert_eq!(lb.client().get("/").await.backend(), "app1");
    })
    .await;
}

#[tokio::test]
async fn send_proxy_goes_before_tls_to_a_tls_backend() {
    use rustls_pki_types::pem::PemObject;
    bounded(async {
        let dir = temp_dir("proxy-backend-tls");
        let ca = common::tls::TestCa::new(&dir, "ca");
        let cert = ca.server_cert(&dir, "backend", &["127.0.0.1"]);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = rustls_pki_types::PrivateKeyDer::from_pem_file(&cert.key_path).unwrap();
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der.clone()], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        // The PROXY header of each connection, read in the clear before TLS.
        let seen: Arc<Mutex<Vec<Vec<u8>>>> = Arc::new(Mutex::new(Vec::new()));
        let headers = seen.clone();
        let backend = raw_backend(move |mut stream: TcpStream| {
            let (seen, acceptor) = (headers.clone(), acceptor.clone());
            async move {
                let mut fixed = [0u8; 16];
                if stream.read_exact(&mut fixed).await.is_err() {
                    return;
                }
                let mut block = vec![0u8; u16::from_be_bytes([fixed[14], fixed[15]]) as usize];
                if stream.read_exact(&mut block).await.is_err() {
                    return;
                }
                seen.lock().unwrap().push([&fixed[..], &block].concat());
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if tls.read_exact(&mut byte).await.is_err() {
                        return;
                    }
                    head.push(byte[0]);
                }
                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\ntls";
                let _ = tls.write_all(answer).await;
                let _ = tls.shutdown().await;
            }
        })
        .await;
        let toml = format!(
            "[listen]\nhttp = [\"127.0.0.1:0\"]\nproxy_protocol = {{ from = [\"127.0.0.1/32\"] }}\n\n\
             [upstream.shop]\naffinity = \"none\"\nsend_proxy = \"v2\"\n\
             [upstream.shop.health]\ninterval = \"100ms\"\n\
             [upstream.shop.tls]\nca = {:?}\n\
             [[upstream.shop.backend]]\nname = \"tls\"\naddr = \"{backend}\"\n",
            ca.cert_path.display().to_string()
        );
        let lb = TestLb::start(&toml).await;
        let resp = via(lb.addr, b"PROXY TCP4 203.0.113.9 192.0.2.80 41000 8080\r\n", "/").await;
        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(resp.text(), "tls");
        let client = [203, 0, 113, 9];
        let has_client = |h: &Vec<u8>| h.len() == 28 && h[16..20] == client;
        assert!(seen.lock().unwrap().iter().any(has_client), "{seen:?}");
        let local = eventually(Duration::from_secs(10), || async {
            seen.lock().unwrap().iter().any(|h| *h == v2_local())
        })
        .await;
        assert!(local, "a health check's LOCAL header before its TLS handshake");
        assert_eq!(lb.backend_state("shop", "tls"), "up");
        let _ = std::fs::remove_dir_all(dir);
    })
    .await;
}
