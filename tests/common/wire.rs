//! A raw HTTP/1 client for tests that must see the bytes: it writes exact
//! request bytes and reads responses by hand, with their framing
//! (Content-Length, chunked, close-delimited, bodiless for HEAD, 1xx, 204 and
//! 304), over plain TCP or TLS.
//!
//! - [`Wire`]: one client connection over any `AsyncRead + AsyncWrite + Unpin`
//!   stream, reading one response at a time (so pipelined ones come apart).
//! - [`Side`] and [`WireLb`]: limpet with its plain or its TLS listener in front,
//!   and [`both_sides!`] to run one test body against both.
//! - [`config`], [`get`], [`post`]: limpet in front of one scripted backend, and
//!   request bytes.
//! - [`raw_exchange`], [`raw_status`]: send once and read until the server closes.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::scripted::{header_values, Recorded, ScriptedBackend};
use super::tls::{make_cert, temp_dir, tls_connect, with_https, TestCert};
use super::TestLb;

/// How long one response may take to arrive.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs a test's body, failing it rather than hanging past 30 s.
pub async fn bounded<F: Future<Output = ()>>(test: F) {
    tokio::time::timeout(Duration::from_secs(30), test)
        .await
        .expect("test timed out");
}

/// limpet in front of one backend `b1` at `backend` (upstream `wire`, no
/// affinity), with `top` TOML before the upstream and `extra` in its table.
/// Health checks run hourly: only the first one reaches the backend (scripted
/// backends answer it with 200 and leave it out of their record).
pub fn config(backend: SocketAddr, top: &str, extra: &str) -> String {
    format!(
        "[listen]\nhttp = [\"127.0.0.1:0\"]\n{top}\n\n\
         [upstream.wire]\naffinity = \"none\"\n{extra}\n\n\
         [upstream.wire.health]\ninterval = \"1h\"\n\n\
         [[upstream.wire.backend]]\nname = \"b1\"\naddr = \"{backend}\"\n"
    )
}

/// limpet in front of `backend` with the defaults, reached on `side`.
pub async fn lb_for(side: Side, backend: &ScriptedBackend) -> WireLb {
    WireLb::start(side, &config(backend.addr, "", "")).await
}

/// A bodiless HTTP/1.1 GET of `path`.
pub fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: wire.test\r\n\r\n")
}

/// A POST of `body` with its Content-Length.
pub fn post(path: &str, body: &[u8]) -> Vec<u8> {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: wire.test\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    req
}

// ---------------------------------------------------------------------------
// Plain or TLS

/// For each test body `async fn name(side: Side)` in the calling file, a test
/// `plain::name` against the plain listener and a test `tls::name` against the
/// TLS one, each [`bounded`] in time. Filter with `plain::` or `tls::`.
#[allow(unused_macros)] // not every test file runs on both sides
macro_rules! both_sides {
    ($($name:ident),* $(,)?) => {
        mod plain {
            use $crate::common::wire::{bounded, Side};
            $(
                #[tokio::test]
                async fn $name() {
                    bounded(super::$name(Side::Plain)).await;
                }
            )*
        }
        mod tls {
            use $crate::common::wire::{bounded, Side};
            $(
                #[tokio::test]
                async fn $name() {
                    bounded(super::$name(Side::Tls)).await;
                }
            )*
        }
    };
}
#[allow(unused_imports)]
pub(crate) use both_sides;

/// Which of limpet's listeners a test talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The `http` listener, over plain TCP.
    Plain,
    /// The `https` listener, over TLS (ALPN `http/1.1`, a self-signed
    /// certificate for `localhost`).
    Tls,
}

impl Side {
    /// What limpet tells the backend in `X-Forwarded-Proto`.
    pub fn scheme(self) -> &'static str {
        match self {
            Side::Plain => "http",
            Side::Tls => "https",
        }
    }
}

/// Any client stream: plain TCP or TLS.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A client connection of either side.
pub type Conn = Box<dyn Stream>;

/// limpet running in-process, reached on one side.
pub struct WireLb {
    pub lb: TestLb,
    pub side: Side,
    /// The TLS listener's certificate, and the directory its files are in.
    tls: Option<(TestCert, CertDir)>,
}

impl WireLb {
    /// Starts limpet from `toml`, whose `[listen]` table must start with the one
    /// plain listener `http = ["127.0.0.1:0"]`; for [`Side::Tls`] an `https`
    /// listener is added beside it.
    pub async fn start(side: Side, toml: &str) -> WireLb {
        let (toml, tls) = match side {
            Side::Plain => (toml.to_string(), None),
            Side::Tls => {
                let dir = temp_dir("wire");
                let cert = make_cert(&dir, "localhost", &["localhost"]);
                (with_https(toml, &[&cert]), Some((cert, CertDir(dir))))
            }
        };
        WireLb {
            lb: TestLb::start(&toml).await,
            side,
            tls,
        }
    }

    /// The address of the listener on this side.
    pub fn addr(&self) -> SocketAddr {
        match self.side {
            Side::Plain => self.lb.addr,
            Side::Tls => self.lb.limpet.https_addrs[0],
        }
    }

    /// A new client connection on this side.
    pub async fn connect(&self) -> Wire<Conn> {
        Wire::new(self.stream().await)
    }

    /// A new client stream on this side, TLS handshake done.
    pub async fn stream(&self) -> Conn {
        match &self.tls {
            None => Box::new(raw(self.addr()).await),
            Some((cert, _)) => {
                let stream = tls_connect(self.addr(), &[cert], "localhost", &[b"http/1.1"])
                    .await
                    .expect("TLS handshake");
                assert_eq!(
                    stream.get_ref().1.alpn_protocol(),
                    Some(&b"http/1.1"[..]),
                    "ALPN"
                );
                Box::new(stream)
            }
        }
    }
}

/// A directory of certificate files, removed when the test is done with it.
/// (On this field rather than on [`WireLb`], so that `lb.lb.limpet` can be
/// moved out to shut it down.)
struct CertDir(PathBuf);

impl Drop for CertDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------
// Responses

/// How a response's body was delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Framing {
    /// No body by definition (HEAD, 1xx, 204, 304).
    Bodiless,
    Length,
    Chunked,
    /// Read until the server closed the connection.
    Close,
}

/// A response as read off the wire.
pub struct Resp {
    pub version: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub framing: Framing,
    /// Statuses of the 1xx interim responses that came before this one.
    pub interim: Vec<u16>,
}

impl std::fmt::Debug for Resp {
    /// The body as text, cut short: a failing assertion stays readable.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resp")
            .field("version", &self.version)
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("body", &abbreviated(&self.body))
            .field("framing", &self.framing)
            .field("interim", &self.interim)
            .finish()
    }
}

impl Resp {
    /// The values of every `name` header (case-insensitive), in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        header_values(&self.headers, name)
    }

    /// The first `name` header's value (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.all(name).into_iter().next()
    }

    /// The comma-separated tokens of every `name` header, lower-cased.
    pub fn tokens(&self, name: &str) -> Vec<String> {
        tokens(&self.all(name))
    }

    /// The tokens of every Connection header, lower-cased.
    pub fn connection_tokens(&self) -> Vec<String> {
        self.tokens("connection")
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// The comma-separated tokens of header values, trimmed and lower-cased.
pub fn tokens(values: &[&str]) -> Vec<String> {
    values
        .iter()
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// `bytes` as text, its length alone past 300 bytes.
pub fn abbreviated(bytes: &[u8]) -> String {
    if bytes.len() > 300 {
        format!("<{} bytes>", bytes.len())
    } else {
        String::from_utf8_lossy(bytes).into_owned()
    }
}

/// Asserts `resp` is a 200 with body `body`.
#[track_caller]
pub fn assert_ok(resp: &Resp, body: &str) {
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.text(), body, "{resp:?}");
}

/// The one request of `backend`'s record whose target is `target`.
pub fn request_for<'a>(received: &'a [Recorded], target: &str) -> &'a Recorded {
    let mut found = received.iter().filter(|r| r.target == target);
    let one = found
        .next()
        .unwrap_or_else(|| panic!("no request for {target} in {received:?}"));
    assert!(found.next().is_none(), "{target} received twice");
    one
}

// ---------------------------------------------------------------------------
// The client

/// A raw client connection with a read buffer, so that pipelined responses can
/// be read one at a time.
pub struct Wire<S = TcpStream> {
    stream: S,
    buf: Vec<u8>,
}

impl Wire<TcpStream> {
    /// A plain TCP connection to `addr`.
    pub async fn connect(addr: SocketAddr) -> Wire<TcpStream> {
        Wire::new(raw(addr).await)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Wire<S> {
    pub fn new(stream: S) -> Wire<S> {
        Wire {
            stream,
            buf: Vec::new(),
        }
    }

    /// Writes `bytes` (and flushes: TLS may hold them back otherwise); panics if
    /// that fails or takes too long.
    pub async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        tokio::time::timeout(READ_TIMEOUT, self.write_flush(bytes.as_ref()))
            .await
            .expect("write timed out")
            .expect("write failed");
    }

    /// Writes `bytes`, ignoring a failure: for requests the server may reject and
    /// close on before reading them whole.
    pub async fn send_lossy(&mut self, bytes: impl AsRef<[u8]>) {
        let _ = tokio::time::timeout(READ_TIMEOUT, self.write_flush(bytes.as_ref())).await;
    }

    async fn write_flush(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// Reads more into the buffer: false when the server closed (or reset) the
    /// connection.
    async fn fill(&mut self, deadline: tokio::time::Instant) -> Result<bool, String> {
        // Read into the heap buffer: a buffer on the stack would sit in every
        // test's future.
        self.buf.reserve(64 * 1024);
        match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
            Err(_) => Err(format!(
                "timed out; unparsed: {:?}",
                String::from_utf8_lossy(&self.buf)
            )),
            Ok(Ok(0)) | Ok(Err(_)) => Ok(false),
            Ok(Ok(_)) => Ok(true),
        }
    }

    /// The next CRLF-terminated line (without its CRLF), taken from the buffer.
    async fn line(&mut self, deadline: tokio::time::Instant) -> Result<String, String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return Ok(line);
            }
            if !self.fill(deadline).await? {
                return Err(format!(
                    "connection closed mid-line: {:?}",
                    String::from_utf8_lossy(&self.buf)
                ));
            }
        }
    }

    /// Exactly `n` bytes, taken from the buffer.
    async fn take(&mut self, n: usize, deadline: tokio::time::Instant) -> Result<Vec<u8>, String> {
        while self.buf.len() < n {
            if !self.fill(deadline).await? {
                return Err(format!(
                    "connection closed after {} of {n} body bytes",
                    self.buf.len()
                ));
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// Reads exactly `n` bytes that are not a response (a tunnel's, after a
    /// 101); panics on a close or after [`READ_TIMEOUT`].
    pub async fn take_exact(&mut self, n: usize) -> Vec<u8> {
        let deadline = tokio::time::Instant::now() + READ_TIMEOUT;
        self.take(n, deadline)
            .await
            .unwrap_or_else(|e| panic!("reading {n} bytes: {e}"))
    }

    /// Reads one response, interim (1xx) ones included; `head` says whether it
    /// answers a HEAD request. Errors say what was wrong with the framing, or
    /// with the status line: a client could not follow it unambiguously.
    pub async fn read_one(&mut self, head: bool) -> Result<Resp, String> {
        let deadline = tokio::time::Instant::now() + READ_TIMEOUT;
        if self.buf.is_empty() && !self.fill(deadline).await? {
            return Err("connection closed before a response".into());
        }
        let status_line = self.line(deadline).await?;
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or("").to_string();
        if !version.starts_with("HTTP/1.") {
            return Err(format!("not a status line: {status_line:?}"));
        }
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line: {status_line:?}"))?;
        if !(100..=999).contains(&status) {
            return Err(format!("invalid status code: {status_line:?}"));
        }
        let mut headers = Vec::new();
        loop {
            let line = self.line(deadline).await?;
            if line.is_empty() {
                break;
            }
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| format!("bad header line: {line:?}"))?;
            headers.push((name.to_string(), value.trim().to_string()));
        }
        let mut resp = Resp {
            version,
            status,
            headers,
            body: Vec::new(),
            framing: Framing::Bodiless,
            interim: Vec::new(),
        };
        let te = resp.tokens("transfer-encoding");
        let lengths = resp.all("content-length");
        if head || (100..200).contains(&status) || status == 204 || status == 304 {
            return Ok(resp);
        }
        // Any Transfer-Encoding field, even an empty one, beside a Content-Length.
        if !resp.all("transfer-encoding").is_empty() && !lengths.is_empty() {
            return Err(format!(
                "both Transfer-Encoding and Content-Length: {:?}",
                resp.headers
            ));
        }
        if te.last().map(String::as_str) == Some("chunked") {
            resp.framing = Framing::Chunked;
            loop {
                let size_line = self.line(deadline).await?;
                let size = size_line.split(';').next().unwrap_or("").trim();
                let size = usize::from_str_radix(size, 16)
                    .map_err(|_| format!("bad chunk size line: {size_line:?}"))?;
                if size == 0 {
                    while !self.line(deadline).await?.is_empty() {}
                    break;
                }
                let mut chunk = self.take(size + 2, deadline).await?;
                if !chunk.ends_with(b"\r\n") {
                    return Err("chunk data not followed by CRLF".into());
                }
                chunk.truncate(size);
                resp.body.extend_from_slice(&chunk);
            }
        } else if let Some(len) = lengths.first() {
            if lengths.iter().any(|l| l != len) {
                return Err(format!("conflicting Content-Length: {lengths:?}"));
            }
            let len: usize = len
                .parse()
                .map_err(|_| format!("bad Content-Length: {len:?}"))?;
            resp.framing = Framing::Length;
            resp.body = self.take(len, deadline).await?;
        } else {
            resp.framing = Framing::Close;
            while self.fill(deadline).await? {}
            resp.body = std::mem::take(&mut self.buf);
        }
        Ok(resp)
    }

    /// Reads a final response, collecting the interim ones before it.
    pub async fn try_read(&mut self, head: bool) -> Result<Resp, String> {
        let mut interim = Vec::new();
        loop {
            let resp = self.read_one(head).await?;
            // 101 is final: the connection is someone else's after it.
            if (100..200).contains(&resp.status) && resp.status != 101 {
                interim.push(resp.status);
                continue;
            }
            return Ok(Resp { interim, ..resp });
        }
    }

    /// The final response to a request other than HEAD; panics on bad framing.
    pub async fn read(&mut self) -> Resp {
        self.try_read(false)
            .await
            .unwrap_or_else(|e| panic!("reading a response: {e}"))
    }

    /// The final response to a HEAD request.
    pub async fn read_head(&mut self) -> Resp {
        self.try_read(true)
            .await
            .unwrap_or_else(|e| panic!("reading a response to HEAD: {e}"))
    }

    /// Sends `request` and reads the final response.
    pub async fn exchange(&mut self, request: impl AsRef<[u8]>) -> Resp {
        self.send(request).await;
        self.read().await
    }

    /// Whether the server closes the connection within 5 s with nothing more
    /// to say; panics if more bytes arrive.
    pub async fn closed(&mut self) -> bool {
        assert!(
            self.buf.is_empty(),
            "unexpected bytes: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        let mut chunk = [0u8; 1024];
        match tokio::time::timeout(Duration::from_secs(5), self.stream.read(&mut chunk)).await {
            Err(_) => false,
            Ok(Ok(0)) | Ok(Err(_)) => true,
            Ok(Ok(n)) => panic!(
                "unexpected bytes instead of a close: {:?}",
                String::from_utf8_lossy(&chunk[..n])
            ),
        }
    }
}

// ---------------------------------------------------------------------------
// One-shot exchanges

/// A raw TCP connection to `addr`, for malformed and slow clients.
pub async fn raw(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.expect("connect")
}

/// Sends `request` on a new raw TCP connection and reads until the server closes it
/// or `timeout` passes; returns what was read and whether the server closed.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8], timeout: Duration) -> (String, bool) {
    let mut stream = raw(addr).await;
    // The server may answer and close before it read everything (431): ignore.
    let _ = stream.write_all(request).await;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + timeout;
    let closed = loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => break false,
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    };
    (String::from_utf8_lossy(&got).into_owned(), closed)
}

/// The status code of the first response in raw HTTP/1.1 text, if any.
pub fn raw_status(text: &str) -> Option<u16> {
    let line = text.lines().next()?;
    let mut parts = line.split(' ');
    parts.next().filter(|v| v.starts_with("HTTP/1."))?;
    parts.next()?.parse().ok()
}

/// An HTTP/2 client over `io` (h2c prior knowledge on a plain stream, or TLS
/// with ALPN h2), its connection driven by a spawned task.
pub async fn h2_client<T>(
    io: T,
) -> hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    h2_client_for(io).await
}

/// [`h2_client`] for requests with bodies of type `B`.
pub async fn h2_client_for<T, B>(io: T) -> hyper::client::conn::http2::SendRequest<B>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: http_body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(io),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    sender
}
