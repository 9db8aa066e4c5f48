//! A scripted raw-TCP backend, for answers a real HTTP server would not give
//! (chunk extensions and trailers, close-delimited bodies, garbage, a body cut
//! short) and for recording the exact request a backend received.
//!
//! [`ScriptedBackend::spawn`] takes a script: called with each request read
//! (head, and its body from Content-Length or de-chunked), it returns the
//! [`Step`]s to take: bytes to write, pauses, a close. After the steps the
//! connection waits for the next request unless the script closed it.
//! Requests for [`HEALTH_PATH`] are answered `200 ok` and not recorded, so
//! limpet's health checks neither see the script nor show in the record.
//!
//! [`raw_backend`] is the bare accept loop under it, for a backend that must act
//! below the level of requests (answer before reading, read by the byte).
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The path limpet's health checks ask for (the `health.path` default).
pub const HEALTH_PATH: &str = "/health";

/// One request as the backend received it.
#[derive(Clone)]
pub struct Recorded {
    /// The connection it came on: 1 for the first connection accepted, and so on
    /// (health-check connections take numbers too).
    pub conn: usize,
    pub method: String,
    pub target: String,
    pub version: String,
    /// Every header line in order, names as sent, values without surrounding
    /// whitespace.
    pub headers: Vec<(String, String)>,
    /// The body: Content-Length bytes, or the payload of a chunked body.
    pub body: Vec<u8>,
    /// Whether the body came with `Transfer-Encoding: chunked`.
    pub chunked: bool,
}

impl std::fmt::Debug for Recorded {
    /// The body as text, or only its length when long: a failing assertion
    /// stays readable.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let body = if self.body.len() > 300 {
            format!("<{} bytes>", self.body.len())
        } else {
            String::from_utf8_lossy(&self.body).into_owned()
        };
        f.debug_struct("Recorded")
            .field("conn", &self.conn)
            .field("method", &self.method)
            .field("target", &self.target)
            .field("version", &self.version)
            .field("headers", &self.headers)
            .field("body", &body)
            .field("chunked", &self.chunked)
            .finish()
    }
}

impl Recorded {
    /// The values of every `name` header (case-insensitive), in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        header_values(&self.headers, name)
    }

    /// The first `name` header's value (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.all(name).into_iter().next()
    }
}

/// The values of every `name` field of `headers` (case-insensitive), in order.
pub fn header_values<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

/// What the backend does in answer to a request.
#[derive(Debug, Clone)]
pub enum Step {
    /// Writes these bytes (and flushes).
    Write(Vec<u8>),
    /// Waits.
    Pause(Duration),
    /// Closes the connection; later steps are not taken.
    Close,
}

/// `Step::Write` of text.
pub fn write(text: impl AsRef<[u8]>) -> Step {
    Step::Write(text.as_ref().to_vec())
}

/// A `200 OK` with `body` and its Content-Length; the connection stays open.
pub fn ok(body: impl AsRef<[u8]>) -> Vec<Step> {
    let body = body.as_ref();
    let mut bytes =
        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    bytes.extend_from_slice(body);
    vec![Step::Write(bytes)]
}

/// A backend on 127.0.0.1 that hands every connection it accepts to `serve`,
/// each in a task of its own, for as long as the test runs.
pub async fn raw_backend<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind raw backend");
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(serve(stream));
        }
    });
    addr
}

type Script = dyn Fn(&Recorded) -> Vec<Step> + Send + Sync;

/// A backend on 127.0.0.1 that answers by script and records what it received.
pub struct ScriptedBackend {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Recorded>>>,
    accept: JoinHandle<()>,
}

impl ScriptedBackend {
    pub async fn spawn<F>(script: F) -> ScriptedBackend
    where
        F: Fn(&Recorded) -> Vec<Step> + Send + Sync + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind scripted backend");
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let script: Arc<Script> = Arc::new(script);
        let conns = Arc::new(AtomicUsize::new(0));
        let record = received.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let conn = conns.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::spawn(serve(stream, conn, script.clone(), record.clone()));
            }
        });
        ScriptedBackend {
            addr,
            received,
            accept,
        }
    }

    /// The requests received so far (health checks excluded), in order.
    pub fn received(&self) -> Vec<Recorded> {
        self.received.lock().unwrap().clone()
    }

    /// How many distinct connections carried the requests received.
    pub fn connections_used(&self) -> usize {
        let mut conns: Vec<usize> = self.received().iter().map(|r| r.conn).collect();
        conns.sort_unstable();
        conns.dedup();
        conns.len()
    }
}

impl Drop for ScriptedBackend {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// One backend connection: read a request, answer by script, until either side
/// closes.
async fn serve(
    mut stream: TcpStream,
    conn: usize,
    script: Arc<Script>,
    received: Arc<Mutex<Vec<Recorded>>>,
) {
    let mut buf = Vec::new();
    while let Some(req) = read_request(&mut stream, &mut buf, conn).await {
        let steps = if req.target == HEALTH_PATH {
            ok("ok")
        } else {
            received.lock().unwrap().push(req.clone());
            script(&req)
        };
        for step in steps {
            match step {
                Step::Write(bytes) => {
                    if stream.write_all(&bytes).await.is_err() || stream.flush().await.is_err() {
                        return;
                    }
                }
                Step::Pause(d) => tokio::time::sleep(d).await,
                Step::Close => return,
            }
        }
    }
}

/// Reads more bytes into `buf`; false at end of stream or on an error.
async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    buf.reserve(16 * 1024);
    matches!(stream.read_buf(buf).await, Ok(n) if n > 0)
}

/// The next CRLF-terminated line at `buf[*pos..]` (reading more as needed),
/// without its CRLF; advances `pos` past it.
async fn line(stream: &mut TcpStream, buf: &mut Vec<u8>, pos: &mut usize) -> Option<String> {
    loop {
        if let Some(i) = buf[*pos..].windows(2).position(|w| w == b"\r\n") {
            let text = String::from_utf8_lossy(&buf[*pos..*pos + i]).into_owned();
            *pos += i + 2;
            return Some(text);
        }
        if !fill(stream, buf).await {
            return None;
        }
    }
}

/// Reads one request (head and body) from `buf` and the stream, removing it from
/// `buf`; `None` when the connection ends first.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>, conn: usize) -> Option<Recorded> {
    let mut pos = 0;
    let request_line = line(stream, buf, &mut pos).await?;
    let mut parts = request_line.splitn(3, ' ');
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let version = parts.next().unwrap_or("").to_string();
    let mut headers = Vec::new();
    loop {
        let l = line(stream, buf, &mut pos).await?;
        if l.is_empty() {
            break;
        }
        let (name, value) = l.split_once(':').unwrap_or((&l, ""));
        headers.push((
            name.to_string(),
            value.trim_matches([' ', '\t']).to_string(),
        ));
    }
    let mut req = Recorded {
        conn,
        method,
        target,
        version,
        headers,
        body: Vec::new(),
        chunked: false,
    };
    req.chunked = req
        .all("transfer-encoding")
        .iter()
        .any(|v| v.to_ascii_lowercase().contains("chunked"));
    if req.chunked {
        loop {
            let size_line = line(stream, buf, &mut pos).await?;
            let size = size_line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size, 16).ok()?;
            if size == 0 {
                // Trailer fields, up to the empty line.
                while !line(stream, buf, &mut pos).await?.is_empty() {}
                break;
            }
            while buf.len() < pos + size + 2 {
                if !fill(stream, buf).await {
                    return None;
                }
            }
            req.body.extend_from_slice(&buf[pos..pos + size]);
            pos += size + 2;
        }
    } else if let Some(len) = req.header("content-length") {
        let len: usize = len.parse().ok()?;
        while buf.len() < pos + len {
            if !fill(stream, buf).await {
                return None;
            }
        }
        req.body.extend_from_slice(&buf[pos..pos + len]);
        pos += len;
    }
    buf.drain(..pos);
    Some(req)
}
