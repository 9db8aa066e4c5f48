//! Issue 12 item 2, TLS to backends (`[upstream.NAME.tls]`): real TLS
//! backends (tokio-rustls, certificates from a CA made here with rcgen) behind
//! real limpet listeners. Requests over HTTP/1 and h2 are proxied on pooled TLS
//! connections; a backend whose certificate limpet does not trust gets no
//! request (502) and its health check says why; `verify = false` accepts it;
//! mTLS; the name sent as SNI; a reload reads the files again; and `limpet
//! check` names the key of an unreadable or unusable file.

mod common;
mod ops;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::tls::{temp_dir, TestCa, TestCert};
use common::*;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use ops::*;
use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What a TLS backend saw of one connection's handshake.
#[derive(Debug, Clone)]
struct Handshake {
    sni: Option<String>,
    alpn: Option<Vec<u8>>,
    client_cert: bool,
}

/// An HTTP/1.1 backend over TLS answering with its name (`x-backend`) and the
/// number of the connection the request came on (`x-conn`).
struct TlsBackend {
    name: String,
    addr: SocketAddr,
    /// The configuration of the next handshakes (swapped to change certificates).
    config: Arc<Mutex<Arc<ServerConfig>>>,
    handshakes: Arc<Mutex<Vec<Handshake>>>,
    /// The connection number of each request but health checks.
    requests: Arc<Mutex<Vec<usize>>>,
    task: JoinHandle<()>,
}

impl Drop for TlsBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A server configuration presenting `cert`; with `client_ca`, every client
/// must present a certificate that CA signed.
fn server_config(cert: &TestCert, client_ca: Option<&TestCa>) -> Arc<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.der.clone()).unwrap();
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let key = PrivateKeyDer::from_pem_file(&cert.key_path).unwrap();
    let mut config = builder
        .with_single_cert(vec![cert.der.clone()], key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

impl TlsBackend {
    async fn spawn(name: &str, config: Arc<ServerConfig>) -> TlsBackend {
        TlsBackend::spawn_on("127.0.0.1:0".parse().unwrap(), name, config).await
    }

    async fn spawn_on(bind: SocketAddr, name: &str, config: Arc<ServerConfig>) -> TlsBackend {
        let listener = TcpListener::bind(bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = Arc::new(Mutex::new(config));
        let handshakes = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn(serve(
            listener,
            name.to_string(),
            config.clone(),
            handshakes.clone(),
            requests.clone(),
        ));
        TlsBackend {
            name: name.to_string(),
            addr,
            config,
            handshakes,
            requests,
            task,
        }
    }

    fn use_config(&self, config: Arc<ServerConfig>) {
        *self.config.lock().unwrap() = config;
    }

    fn handshakes(&self) -> Vec<Handshake> {
        self.handshakes.lock().unwrap().clone()
    }

    fn requests(&self) -> Vec<usize> {
        self.requests.lock().unwrap().clone()
    }
}

async fn serve(
    listener: TcpListener,
    name: String,
    config: Arc<Mutex<Arc<ServerConfig>>>,
    handshakes: Arc<Mutex<Vec<Handshake>>>,
    requests: Arc<Mutex<Vec<usize>>>,
) {
    let mut conns = 0;
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        conns += 1;
        let conn = conns;
        let acceptor = tokio_rustls::TlsAcceptor::from(config.lock().unwrap().clone());
        let (name, handshakes, requests) = (name.clone(), handshakes.clone(), requests.clone());
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let session = tls.get_ref().1;
            handshakes.lock().unwrap().push(Handshake {
                sni: session.server_name().map(str::to_string),
                alpn: session.alpn_protocol().map(<[u8]>::to_vec),
                client_cert: session.peer_certificates().is_some_and(|c| !c.is_empty()),
            });
            let svc = service_fn(move |mut req: Request<hyper::body::Incoming>| {
                let (name, requests) = (name.clone(), requests.clone());
                async move {
                    if req.uri().path() != "/health" {
                        requests.lock().unwrap().push(conn);
                    }
                    if req.uri().path() == "/upgrade" {
                        return Ok(echo_upgrade(&mut req));
                    }
                    let slow = req.uri().path() == "/slow-read";
                    let body = read_body(req.into_body(), slow).await;
                    let mut text = name.clone();
                    if let Ok(b) = body {
                        text.push_str(&String::from_utf8_lossy(&b));
                    }
                    Ok::<_, std::convert::Infallible>(
                        Response::builder()
                            .header("x-backend", &name)
                            .header("x-conn", conn.to_string())
                            .body(Full::new(Bytes::from(text)))
                            .unwrap(),
                    )
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), svc)
                .with_upgrades()
                .await;
        });
    }
}

/// Answers 101 and echoes every byte of the upgraded connection back.
fn echo_upgrade(req: &mut Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut io = TokioIo::new(upgraded);
        let mut buf = [0u8; 1024];
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok(n) = io.read(&mut buf).await {
            if n == 0 || io.write_all(&buf[..n]).await.is_err() || io.flush().await.is_err() {
                return;
            }
        }
    });
    Response::builder()
        .status(101)
        .header("connection", "upgrade")
        .header("upgrade", "echo")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// A request body; `slow`: a millisecond's pause after each piece, so that
/// the body backs up in the sender's socket.
async fn read_body(mut body: hyper::body::Incoming, slow: bool) -> Result<Bytes, hyper::Error> {
    let mut all = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            all.extend_from_slice(&data);
        }
        if slow {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    Ok(all.into())
}

/// One upstream `shop` over `backend` with `tls` as its `[upstream.shop.tls]`
/// table, health checks every `interval`, and an admin listener.
fn config(backend: &TlsBackend, tls: &str, interval: &str) -> String {
    format!(
        "[listen]\nhttp = [\"127.0.0.1:0\"]\n\n\
         [upstream.shop]\naffinity = \"none\"\n\n\
         [upstream.shop.health]\ninterval = \"{interval}\"\ntimeout = \"1s\"\nfall = 2\npassive_fall = 100\n\n\
         [upstream.shop.tls]\n{tls}\n\n\
         [[upstream.shop.backend]]\nname = \"{}\"\naddr = \"{}\"\n{ADMIN}",
        backend.name, backend.addr
    )
}

fn toml_path(p: &std::path::Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// A CA, a backend certificate it signed for 127.0.0.1 and `app.internal`,
/// and the directory they are in.
fn pki(label: &str) -> (std::path::PathBuf, TestCa, TestCert) {
    let dir = temp_dir(label);
    let ca = TestCa::new(&dir, "ca");
    let cert = ca.server_cert(&dir, "backend", &["127.0.0.1", "app.internal"]);
    (dir, ca, cert)
}

#[tokio::test]
async fn requests_go_over_tls_on_a_pooled_connection_over_http1_and_h2() {
    let (_dir, ca, cert) = pki("btls-pool");
    let backend = TlsBackend::spawn("tls1", server_config(&cert, None)).await;
    let tls = format!("ca = {}", toml_path(&ca.cert_path));
    let lb = start_from_file(&config(&backend, &tls, "24h")).await;

    let mut client = lb.client();
    for i in 0..5 {
        let body = format!("-{i}");
        let r = client.request("POST", "/", Bytes::from(body.clone())).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body, format!("tls1{body}"));
    }
    let seen = backend.handshakes();
    assert_eq!(
        seen.len(),
        1,
        "one TLS connection for five requests: {seen:?}"
    );
    assert_eq!(seen[0].alpn.as_deref(), Some(&b"http/1.1"[..]));
    // An IP address, and no `sni`: none is sent, the certificate's IP name
    // is verified.
    assert_eq!(seen[0].sni, None);

    // h2c from the client; HTTP/1.1 over TLS to the backend, on the pool.
    let mut h2 = wire::h2_client(TcpStream::connect(lb.addr).await.unwrap()).await;
    for _ in 0..3 {
        let req = Request::get(format!("http://{}/h2", lb.addr))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = h2.send_request(req).await.expect("h2 request");
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-backend"], "tls1");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"tls1");
    }
    let requests = backend.requests();
    assert_eq!(requests.len(), 8);
    assert!(
        requests.iter().all(|&c| c == requests[0]),
        "every request on one pooled TLS connection: {requests:?}"
    );
}

#[tokio::test]
async fn a_large_request_body_streams_to_a_tls_backend() {
    let (_dir, ca, cert) = pki("btls-body");
    let backend = TlsBackend::spawn("tls1", server_config(&cert, None)).await;
    let tls = format!("ca = {}", toml_path(&ca.cert_path));
    let lb = start_from_file(&config(&backend, &tls, "24h")).await;
    // Streamed from the client in many reads to a backend that reads
    // slowly: writes into the TLS layer meet a full socket (back-pressure),
    // and every byte arrives.
    let body: String = (0..8 << 20)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let mut client = lb.client();
    for _ in 0..2 {
        let r = client
            .request("POST", "/slow-read", Bytes::from(body.clone()))
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), "tls1".len() + body.len());
        assert!(r.body.ends_with(&body[body.len() - 100..]));
    }
}

#[tokio::test]
async fn an_upgraded_connection_is_tunnelled_over_tls() {
    let (_dir, ca, cert) = pki("btls-upgrade");
    let backend = TlsBackend::spawn("tls1", server_config(&cert, None)).await;
    let tls = format!("ca = {}", toml_path(&ca.cert_path));
    let lb = start_from_file(&config(&backend, &tls, "24h")).await;
    let mut wire = wire::Wire::connect(lb.addr).await;
    wire.send(
        "GET /upgrade HTTP/1.1\r\nhost: shop\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n",
    )
    .await;
    let head = wire.read_head().await;
    assert_eq!(head.status, 101);
    for message in ["ping", "a longer second message"] {
        wire.send(message).await;
        assert_eq!(wire.take_exact(message.len()).await, message.as_bytes());
    }
}

#[tokio::test]
async fn a_backend_signed_by_another_ca_gets_no_request_and_its_health_check_says_why() {
    let (dir, _ca, cert) = pki("btls-wrong-ca");
    let other = TestCa::new(&dir, "other-ca");
    let backend = TlsBackend::spawn("tls1", server_config(&cert, None)).await;
    let tls = format!("ca = {}", toml_path(&other.cert_path));
    let lb = start_from_file(&config(&backend, &tls, "100ms")).await;

    let r = lb.client().get("/").await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert!(r.body.contains("TLS handshake"), "{}", r.body);
    assert!(backend.requests().is_empty());

    let down = eventually(Duration::from_secs(20), || async {
        lb.admin.backend("shop", "tls1").await["state"] == "down"
    })
    .await;
    let entry = lb.admin.backend("shop", "tls1").await;
    assert!(down, "health checks did not mark it down: {entry}");
    let reason = entry["last_check"]["error"].as_str().unwrap_or_default();
    assert!(
        reason.contains("TLS handshake") && reason.contains("certificate"),
        "the reason names the TLS handshake and the certificate: {entry}"
    );
}

#[tokio::test]
async fn verify_false_accepts_a_certificate_from_any_ca() {
    let (dir, _ca, cert) = pki("btls-noverify");
    let other = TestCa::new(&dir, "other-ca");
    let backend = TlsBackend::spawn("tls1", server_config(&cert, None)).await;
    let tls = format!("ca = {}\nverify = false", toml_path(&other.cert_path));
    let text = config(&backend, &tls, "24h");
    let parsed = limpet::Config::parse(&text, "test.toml").unwrap();
    assert!(
        parsed
            .warnings
            .iter()
            .any(|w| w.contains("tls.verify = false")),
        "{:?}",
        parsed.warnings
    );
    let lb = start_from_file(&text).await;
    let r = lb.client().get("/").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.backend(), "tls1");
}

#[tokio::test]
async fn a_backend_that_requires_a_client_certificate_accepts_limpets() {
    let (dir, ca, cert) = pki("btls-mtls");
    let clients = TestCa::new(&dir, "client-ca");
    let client_cert = clients.client_cert(&dir, "limpet-client");
    let backend = TlsBackend::spawn("tls1", server_config(&cert, Some(&clients))).await;

    // Without a client certificate the backend refuses to serve.
    let mut plain_client = rustls::RootCertStore::empty();
    plain_client.add(ca.der.clone()).unwrap();
    let no_cert = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(plain_client)
    .with_no_client_auth();
    let refused = async {
        let tcp = TcpStream::connect(backend.addr).await?;
        let name = rustls_pki_types::ServerName::try_from("app.internal").unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(no_cert))
            .connect(name, tcp)
            .await?;
        let mut wire = wire::Wire::new(tls);
        wire.send("GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
        wire.try_read(false).await.map_err(std::io::Error::other)
    };
    let answer = tokio::time::timeout(Duration::from_secs(10), refused)
        .await
        .expect("bounded");
    assert!(
        answer.is_err(),
        "served without a client certificate: {answer:?}"
    );
    assert!(backend.requests().is_empty());

    let tls = format!(
        "ca = {}\ncert = {}\nkey = {}",
        toml_path(&ca.cert_path),
        toml_path(&client_cert.cert_path),
        toml_path(&client_cert.key_path)
    );
    let lb = start_from_file(&config(&backend, &tls, "24h")).await;
    let r = lb.client().get("/").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.backend(), "tls1");
    assert!(backend.handshakes().iter().any(|h| h.client_cert));
}

/// A TLS 1.3 backend that wants a client certificate limpet has not got
/// says so with an alert only after limpet has finished its handshake, as
/// the request goes out: that is the handshake failing all the same, 502
/// "the TLS handshake with the backend failed" as README says, not 503 "no
/// backend available" (an outage, when the cause is a misconfiguration).
#[tokio::test]
async fn a_backend_wanting_a_client_certificate_limpet_lacks_is_a_tls_502() {
    let (dir, ca, cert) = pki("btls-mtls-missing");
    let clients = TestCa::new(&dir, "client-ca");
    let backend = TlsBackend::spawn("tls1", server_config(&cert, Some(&clients))).await;
    let tls = format!("ca = {}", toml_path(&ca.cert_path));
    let lb = start_from_file(&config(&backend, &tls, "24h")).await;
    let r = lb.client().get("/").await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert!(r.body.contains("TLS handshake"), "{}", r.body);
    assert!(backend.requests().is_empty());
}

#[tokio::test]
async fn sni_is_the_configured_name_and_the_certificate_is_verified_against_it() {
    let dir = temp_dir("btls-sni");
    let ca = TestCa::new(&dir, "ca");
    // Only the name: an address-only check would fail.
    let cert = ca.server_cert(&dir, "backend", &["app.internal"]);
    let backend = TlsBackend::spawn("tls1", server_config(&cert, None)).await;
    let tls = format!("ca = {}\nsni = \"app.internal\"", toml_path(&ca.cert_path));
    let lb = start_from_file(&config(&backend, &tls, "24h")).await;
    let r = lb.client().get("/").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = backend.handshakes();
    assert_eq!(seen[0].sni.as_deref(), Some("app.internal"), "{seen:?}");

    // Without `sni` the address 127.0.0.1 is verified, which this
    // certificate does not name.
    let tls = format!("ca = {}", toml_path(&ca.cert_path));
    lb.rewrite(&config(&backend, &tls, "24h"));
    assert_eq!(lb.admin.post("/reload").await.status, 200);
    let r = lb.client().get("/").await;
    assert_eq!(r.status, 502, "{}", r.body);
}

#[tokio::test]
async fn without_sni_a_backend_named_by_host_gets_its_host_as_sni() {
    let dir = temp_dir("btls-host-sni");
    let ca = TestCa::new(&dir, "ca");
    let cert = ca.server_cert(&dir, "backend", &["localhost"]);
    // Where limpet will connect: the first address the name resolves to.
    let first = std::net::ToSocketAddrs::to_socket_addrs("localhost:0")
        .unwrap()
        .next()
        .expect("localhost resolves");
    let backend = TlsBackend::spawn_on(first, "tls1", server_config(&cert, None)).await;
    let tls = format!("ca = {}", toml_path(&ca.cert_path));
    let text = config(&backend, &tls, "24h").replace(
        &format!("addr = \"{}\"", backend.addr),
        &format!("addr = \"localhost:{}\"", backend.addr.port()),
    );
    let lb = start_from_file(&text).await;
    let r = lb.client().get("/").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = backend.handshakes();
    assert_eq!(seen[0].sni.as_deref(), Some("localhost"), "{seen:?}");
}

#[tokio::test]
async fn a_reload_reads_the_ca_file_again() {
    let (dir, ca, cert) = pki("btls-reload");
    let backend = TlsBackend::spawn("tls1", server_config(&cert, None)).await;
    let ca_file = dir.join("trusted.pem");
    std::fs::copy(&ca.cert_path, &ca_file).unwrap();
    let tls = format!("ca = {}", toml_path(&ca_file));
    let lb = start_from_file(&config(&backend, &tls, "24h")).await;
    let r = lb.client().get("/").await;
    assert_eq!(r.status, 200, "{}", r.body);

    // The backend moves to a certificate from a new CA, and the CA file is
    // replaced: the reload makes limpet trust the new CA (and drop its idle
    // connections verified under the old one).
    let new_ca = TestCa::new(&dir, "new-ca");
    let new_cert = new_ca.server_cert(&dir, "backend-new", &["127.0.0.1"]);
    backend.use_config(server_config(&new_cert, None));
    std::fs::copy(&new_ca.cert_path, &ca_file).unwrap();
    let reloaded = lb.admin.post("/reload").await;
    assert_eq!(reloaded.status, 200, "{}", reloaded.body);
    let r = lb.client().get("/").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let requests = backend.requests();
    assert_eq!(requests.len(), 2);
    assert_ne!(
        requests[0], requests[1],
        "a new connection after the reload"
    );

    // A CA file that is no certificate: the reload is refused with the
    // key's position, and the running configuration keeps serving.
    std::fs::write(&ca_file, "not a certificate\n").unwrap();
    let refused = lb.admin.post("/reload").await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(
        refused.body.contains("upstream.shop.tls.ca")
            && refused.body.contains("no PEM certificate"),
        "{}",
        refused.body
    );
    assert_eq!(lb.client().get("/").await.status, 200);
}

/// A config whose `[upstream.shop.tls]` table holds `tls`.
fn check_text(tls: &str) -> String {
    format!(
        "[listen]\nhttp = [\"127.0.0.1:0\"]\n\n[upstream.shop]\naffinity = \"none\"\n\n\
         [upstream.shop.tls]\n{tls}\n\n[[upstream.shop.backend]]\nname = \"a\"\naddr = \"127.0.0.1:1\"\n"
    )
}

/// `limpet check`'s message for `tls` (checked as `check.toml`).
fn check_error(tls: &str) -> String {
    limpet::Config::parse(&check_text(tls), "check.toml")
        .expect_err("an error")
        .to_string()
}

#[test]
fn check_summarises_an_upstreams_tls_and_enabled_false_turns_it_off() {
    let dir = temp_dir("btls-summary");
    let ca = TestCa::new(&dir, "ca");
    let tls = format!("ca = {}\nsni = \"app.internal\"", toml_path(&ca.cert_path));
    let config = limpet::Config::parse(&check_text(&tls), "check.toml").unwrap();
    let summary = config.summary();
    let expected = format!("tls(ca={} sni=app.internal)", ca.cert_path.display());
    assert!(summary.contains(&expected), "{summary}");
    let roots = limpet::Config::parse(&check_text(""), "check.toml").unwrap();
    assert!(
        roots
            .summary()
            .contains("tls(ca=webpki-roots sni=backend-host)"),
        "{}",
        roots.summary()
    );
    let off = format!("{tls}\nenabled = false");
    let config = limpet::Config::parse(&check_text(&off), "check.toml").unwrap();
    assert!(config.upstreams[0].tls.is_none());
    assert!(!config.summary().contains("tls("), "{}", config.summary());
}

#[test]
fn check_names_the_key_of_an_unreadable_or_unusable_file() {
    let dir = temp_dir("btls-check");
    let ca = TestCa::new(&dir, "ca");
    let client = ca.client_cert(&dir, "client");
    let other = ca.client_cert(&dir, "other");
    let missing = dir.join("missing.pem");
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "hello\n").unwrap();

    let e = check_error(&format!("ca = {}", toml_path(&missing)));
    assert!(
        e.starts_with("check.toml:8:1: upstream.shop.tls.ca: cannot read"),
        "{e}"
    );
    let e = check_error(&format!("ca = {}", toml_path(&garbage)));
    assert!(
        e.starts_with("check.toml:8:1: upstream.shop.tls.ca: "),
        "{e}"
    );
    assert!(e.contains("no PEM certificate"), "{e}");
    let e = check_error(&format!(
        "cert = {}\nkey = {}",
        toml_path(&client.cert_path),
        toml_path(&other.key_path)
    ));
    assert!(
        e.starts_with("check.toml:8:1: upstream.shop.tls.cert: "),
        "{e}"
    );
    assert!(e.contains("usable pair"), "{e}");
    let e = check_error(&format!("cert = {}", toml_path(&client.cert_path)));
    assert!(
        e.contains("upstream.shop.tls.cert: a client cert needs its key"),
        "{e}"
    );
    let e = check_error("sni = \"not a name\"");
    assert!(
        e.starts_with("check.toml:8:1: upstream.shop.tls.sni: "),
        "{e}"
    );
    let e = check_error("verfiy = false");
    assert!(e.contains("unknown field"), "{e}");
}
