//! TLS session resumption on the https listeners (`[tls] session_tickets`,
//! `session_cache`): a client's second connection resumes its session, over
//! TLS 1.3 and 1.2, by ticket or from the cache, and still does after a
//! reload (which keeps the ticket key and the cache).

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::tls::{make_cert, temp_dir, with_https, TestCert};
use common::*;
use rustls::{HandshakeKind, SupportedProtocolVersion};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const TLS13: &SupportedProtocolVersion = &rustls::version::TLS13;
const TLS12: &SupportedProtocolVersion = &rustls::version::TLS12;

/// A client speaking only `version`, trusting `cert`, that keeps the
/// sessions the server gives it (rustls's in-memory store) and offers them
/// on its next connections.
fn client(cert: &TestCert, version: &'static SupportedProtocolVersion) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[version])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

/// One request on a new connection; how its handshake went. Reading the
/// response also reads the TLS 1.3 tickets sent after the handshake.
async fn handshake(client: &TlsConnector, addr: SocketAddr) -> HandshakeKind {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = client.connect(name, tcp).await.expect("TLS handshake");
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response).await;
    assert!(
        response.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&response)
    );
    tls.get_ref().1.handshake_kind().expect("handshake done")
}

/// limpet with an https listener, `[tls]` holding `resumption` too.
async fn start(
    backends: &[&TestBackend],
    cert: &TestCert,
    resumption: &str,
) -> (TestLb, String, SocketAddr) {
    let toml = with_https(&ring_config(backends, ""), &[cert]).replacen(
        "[tls]\n",
        &format!("[tls]\n{resumption}\n"),
        1,
    );
    let lb = TestLb::start(&toml).await;
    let addr = lb.limpet.https_addrs[0];
    (lb, toml, addr)
}

fn reload(lb: &TestLb, toml: &str) {
    lb.limpet
        .apply(limpet::Config::parse(toml, "test.toml"))
        .expect("reload");
}

/// Each version's client: a full handshake, then resumptions before and
/// after a reload of the same configuration.
async fn resumes_across_a_reload(resumption: &str) {
    let dir = temp_dir("resumption");
    let cert = make_cert(&dir, "site", &["localhost"]);
    let [a, b, c] = three_backends().await;
    let (lb, toml, addr) = start(&[&a, &b, &c], &cert, resumption).await;
    for (version, client) in [("1.3", client(&cert, TLS13)), ("1.2", client(&cert, TLS12))] {
        assert_eq!(
            handshake(&client, addr).await,
            HandshakeKind::Full,
            "TLS {version}, first connection ({resumption})"
        );
        assert_eq!(
            handshake(&client, addr).await,
            HandshakeKind::Resumed,
            "TLS {version}, second connection ({resumption})"
        );
        reload(&lb, &toml);
        assert_eq!(
            handshake(&client, addr).await,
            HandshakeKind::Resumed,
            "TLS {version}, after a reload ({resumption})"
        );
    }
    lb.limpet.shutdown().await;
}

#[tokio::test]
async fn by_ticket_a_client_resumes_and_still_does_after_a_reload() {
    // The defaults: tickets on, and the cache for clients without tickets.
    resumes_across_a_reload("").await;
}

#[tokio::test]
async fn without_tickets_the_session_cache_resumes_across_a_reload() {
    resumes_across_a_reload("session_tickets = false").await;
}

#[tokio::test]
async fn with_neither_every_handshake_is_full() {
    let dir = temp_dir("no-resumption");
    let cert = make_cert(&dir, "site", &["localhost"]);
    let [a, b, c] = three_backends().await;
    let (lb, _, addr) = start(
        &[&a, &b, &c],
        &cert,
        "session_tickets = false\nsession_cache = 0",
    )
    .await;
    for client in [client(&cert, TLS13), client(&cert, TLS12)] {
        for _ in 0..2 {
            assert_eq!(handshake(&client, addr).await, HandshakeKind::Full);
        }
    }
    lb.limpet.shutdown().await;
}

/// Turning tickets off in a reload stops resumption by ticket; the cache,
/// whose setting did not change, keeps what it held.
#[tokio::test]
async fn a_reload_that_turns_tickets_off_ends_ticket_resumption() {
    let dir = temp_dir("tickets-off");
    let cert = make_cert(&dir, "site", &["localhost"]);
    let [a, b, c] = three_backends().await;
    let (lb, toml, addr) = start(&[&a, &b, &c], &cert, "session_cache = 0").await;
    let client = client(&cert, TLS13);
    assert_eq!(handshake(&client, addr).await, HandshakeKind::Full);
    assert_eq!(handshake(&client, addr).await, HandshakeKind::Resumed);
    reload(
        &lb,
        &toml.replacen("[tls]\n", "[tls]\nsession_tickets = false\n", 1),
    );
    assert_eq!(handshake(&client, addr).await, HandshakeKind::Full);
    lb.limpet.shutdown().await;
}
