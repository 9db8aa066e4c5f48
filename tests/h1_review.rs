//! Review of limpet's own HTTP/1.1 engine (`src/h1.rs`): inputs where it
//! misbehaved, each pinned by a black-box test against a real limpet and a
//! scripted raw-TCP backend.

mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use common::scripted::{ok, write, ScriptedBackend, Step};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const READ_TIMEOUT: Duration = Duration::from_secs(10);

async fn bounded<F: Future<Output = ()>>(test: F) {
    tokio::time::timeout(Duration::from_secs(30), test)
        .await
        .expect("test timed out");
}

/// limpet in front of one backend `b1` at `backend` (upstream `wire`, no
/// affinity), with `extra` in the upstream's table.
fn config(backend: SocketAddr, extra: &str) -> String {
    format!(
        "[listen]\nhttp = [\"127.0.0.1:0\"]\n\n\
         [upstream.wire]\naffinity = \"none\"\n{extra}\n\n\
         [upstream.wire.health]\ninterval = \"1h\"\n\n\
         [[upstream.wire.backend]]\nname = \"b1\"\naddr = \"{backend}\"\n"
    )
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: wire.test\r\n\r\n")
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn tokens(&self, name: &str) -> Vec<String> {
        self.all(name)
            .iter()
            .flat_map(|v| v.split(','))
            .map(|t| t.trim().to_ascii_lowercase())
            .filter(|t| !t.is_empty())
            .collect()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A raw client connection that reads one response at a time.
struct Wire {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Wire {
    async fn connect(addr: SocketAddr) -> Wire {
        Wire {
            stream: raw(addr).await,
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.stream.write_all(bytes.as_ref()).await.expect("write");
    }

    async fn fill(&mut self, deadline: tokio::time::Instant) -> Result<bool, String> {
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

    async fn take(&mut self, n: usize, deadline: tokio::time::Instant) -> Result<Vec<u8>, String> {
        while self.buf.len() < n {
            if !self.fill(deadline).await? {
                return Err(format!("closed after {} of {n} bytes", self.buf.len()));
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// One final response to a non-HEAD request; errors on framing a
    /// compliant client could not follow unambiguously.
    async fn try_read(&mut self) -> Result<Resp, String> {
        let deadline = tokio::time::Instant::now() + READ_TIMEOUT;
        if self.buf.is_empty() && !self.fill(deadline).await? {
            return Err("connection closed before a response".into());
        }
        let status_line = self.line(deadline).await?;
        let mut parts = status_line.splitn(3, ' ');
        if !parts.next().unwrap_or("").starts_with("HTTP/1.") {
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
            status,
            headers,
            body: Vec::new(),
        };
        if status == 204 || status == 304 {
            return Ok(resp);
        }
        let te = resp.tokens("transfer-encoding");
        let lengths: Vec<String> = resp
            .all("content-length")
            .iter()
            .map(|s| s.to_string())
            .collect();
        if !resp.all("transfer-encoding").is_empty() && !lengths.is_empty() {
            return Err(format!(
                "both Transfer-Encoding and Content-Length: {:?}",
                resp.headers
            ));
        }
        if te.last().map(String::as_str) == Some("chunked") {
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
                chunk.truncate(size);
                resp.body.extend_from_slice(&chunk);
            }
        } else if let Some(len) = lengths.first() {
            let len: usize = len.parse().map_err(|_| format!("bad length {len:?}"))?;
            resp.body = self.take(len, deadline).await?;
        } else {
            while self.fill(deadline).await? {}
            resp.body = std::mem::take(&mut self.buf);
        }
        Ok(resp)
    }

    async fn read(&mut self) -> Resp {
        self.try_read()
            .await
            .unwrap_or_else(|e| panic!("reading a response: {e}"))
    }

    async fn exchange(&mut self, request: impl AsRef<[u8]>) -> Resp {
        self.send(request).await;
        self.read().await
    }

    /// Whether the server closes within 5 s with nothing more to say.
    async fn closed(&mut self) -> bool {
        assert!(self.buf.is_empty(), "unexpected bytes: {:?}", self.buf);
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

/// A status line without a reason phrase (`HTTP/1.1 200` CRLF: httparse and
/// hyper accept it, and backends send it) is relayed like any other. The engine
/// took the position of httparse's static "" as an offset into its buffer and
/// panicked (subtract overflow, or a slice out of range), killing the
/// connection without an answer.
#[tokio::test]
async fn a_status_line_without_reason_phrase_is_relayed() {
    bounded(async {
        let backend = ScriptedBackend::spawn(|r| {
            if r.target == "/bare" {
                vec![write("HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok")]
            } else {
                ok("next")
            }
        })
        .await;
        let lb = TestLb::start(&config(backend.addr, "")).await;
        let mut wire = Wire::connect(lb.addr).await;
        let resp = wire.exchange(get("/bare")).await;
        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(resp.text(), "ok", "{resp:?}");
        let next = wire.exchange(get("/next")).await;
        assert_eq!(next.text(), "next", "{next:?}");
    })
    .await;
}

/// A status code below 100 (`099`: three digits, so httparse reads 99) is not
/// an HTTP status: hyper's client refuses the response, so limpet answers 502
/// (with `retries = 0`). The engine relayed `HTTP/1.1 99 ...`, a status line no
/// client can parse.
#[tokio::test]
async fn a_status_code_below_100_is_a_bad_gateway() {
    bounded(async {
        let backend = ScriptedBackend::spawn(|_| {
            vec![write("HTTP/1.1 099 Odd\r\nContent-Length: 0\r\n\r\n")]
        })
        .await;
        let lb = TestLb::start(&config(backend.addr, "retries = 0")).await;
        let mut wire = Wire::connect(lb.addr).await;
        let resp = wire.exchange(get("/")).await;
        assert_eq!(resp.status, 502, "{resp:?}");
    })
    .await;
}

/// A response with `Transfer-Encoding: chunked` and a second, empty
/// Transfer-Encoding field (an empty list element, which RFC 9110 section 5.6.1
/// says to ignore: the codings are still "chunked") plus a Content-Length. The
/// engine read the codings of the last field only, found none, framed the body
/// by Content-Length, and passed on both Transfer-Encoding fields and the
/// Content-Length: a client that frames by the chunks (as it must when both are
/// present) and limpet disagree on where the response ends, and with a longer
/// Content-Length the backend's extra bytes become the response to the
/// client's next request.
#[tokio::test]
async fn an_empty_transfer_encoding_field_does_not_hide_the_chunking() {
    bounded(async {
        let backend = ScriptedBackend::spawn(|r| {
            if r.target != "/te" {
                return ok("next");
            }
            vec![write(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: \r\n\
                 Content-Length: 3\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            )]
        })
        .await;
        let lb = TestLb::start(&config(backend.addr, "")).await;
        let mut wire = Wire::connect(lb.addr).await;
        wire.send(get("/te")).await;
        let resp = wire.try_read().await.unwrap_or_else(|e| panic!("{e}"));
        if resp.status != 502 {
            assert_eq!(resp.status, 200, "{resp:?}");
            // Framed by the chunks (RFC), or passed on close-delimited as raw
            // bytes (what hyper's path does): never cut at 3 bytes.
            assert!(
                resp.text() == "hello" || resp.text() == "5\r\nhello\r\n0\r\n\r\n",
                "{resp:?}"
            );
        }
        if !resp.tokens("connection").contains(&"close".to_string()) {
            let next = wire.exchange(get("/next")).await;
            assert_eq!(next.text(), "next", "{next:?}");
        }
    })
    .await;
}

/// At graceful shutdown, a request in flight is answered and the connection
/// then closed; the answer must say `Connection: close` (as hyper's path does:
/// its graceful shutdown disables keep-alive before the response head is
/// written), or a keep-alive client sends its next request into a closing
/// connection. The engine decided Connection: close before forwarding the
/// request and never looked again.
#[tokio::test]
async fn a_response_in_flight_at_shutdown_says_connection_close() {
    bounded(async {
        let backend = ScriptedBackend::spawn(|_| {
            let mut steps = vec![Step::Pause(Duration::from_millis(800))];
            steps.extend(ok("slow"));
            steps
        })
        .await;
        let lb = TestLb::start(&config(backend.addr, "")).await;
        let mut wire = Wire::connect(lb.addr).await;
        wire.send(get("/slow")).await;
        assert!(
            eventually(Duration::from_secs(5), || async {
                !backend.received().is_empty()
            })
            .await,
            "the request reached the backend"
        );
        let stopping = tokio::spawn(lb.limpet.shutdown());
        let resp = wire.read().await;
        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(resp.text(), "slow", "{resp:?}");
        assert!(
            resp.tokens("connection").contains(&"close".to_string()),
            "the connection closes after this response but it does not say so: {resp:?}"
        );
        assert!(wire.closed().await);
        tokio::time::timeout(Duration::from_secs(10), stopping)
            .await
            .expect("shutdown finished")
            .unwrap();
    })
    .await;
}

/// The idle backend sockets of limpet's engine are a LIFO stack whose top
/// is checked for age only when taken: after a burst, the sockets under the
/// one in steady use are never looked at again, and stay open (in CLOSE_WAIT
/// once the backend's keep-alive timeout closes them) for good, up to 512
/// per backend. (hyper's pooled senders close with their connection task.)
/// Past the pool's 15 s idle limit they must go.
#[tokio::test]
async fn expired_pooled_backend_sockets_are_not_kept_forever() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let backend = ScriptedBackend::spawn(|_| {
            let mut steps = vec![Step::Pause(Duration::from_millis(300))];
            steps.extend(ok("x"));
            steps
        })
        .await;
        let lb = TestLb::start(&config(backend.addr, "")).await;
        let idle = || {
            let snap = lb.limpet.state.load();
            snap.upstream("wire").unwrap().backends[0]
                .state
                .pool
                .idle_count()
        };
        // A burst: ten requests at once leave ten backend sockets idle.
        let mut burst = tokio::task::JoinSet::new();
        for _ in 0..10 {
            let addr = lb.addr;
            burst.spawn(async move {
                let mut wire = Wire::connect(addr).await;
                assert_eq!(wire.exchange(get("/")).await.text(), "x");
            });
        }
        while let Some(done) = burst.join_next().await {
            done.unwrap();
        }
        assert_eq!(idle(), 10);
        // Then one request at a time for longer than the idle limit.
        let mut wire = Wire::connect(lb.addr).await;
        let until = tokio::time::Instant::now() + Duration::from_secs(17);
        while tokio::time::Instant::now() < until {
            assert_eq!(wire.exchange(get("/")).await.text(), "x");
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
        assert!(
            idle() <= 2,
            "{} idle backend sockets kept past the 15 s idle limit",
            idle()
        );
    })
    .await
    .expect("test timed out");
}

/// A backend that refuses an upload as soon as it has the head (413, 401:
/// what servers with a body limit do) answers before it reads the body, and
/// stops reading. The client must get that answer, not a 502: while its
/// writes stall, the engine reads what the backend sends (as hyper's client
/// does), stops streaming at a final response head, and closes the client
/// connection after it (the rest of the body is still on its way).
#[tokio::test]
async fn an_early_answer_to_an_upload_is_passed_on() {
    bounded(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        match conn.read(&mut byte).await {
                            Ok(1) => head.push(byte[0]),
                            _ => return,
                        }
                    }
                    if head.starts_with(b"GET /health") {
                        let _ = conn
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                            .await;
                        return;
                    }
                    let _ = conn
                        .write_all(
                            b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 8\r\n\
                              Connection: close\r\n\r\ntoo big\n",
                        )
                        .await;
                    // Not a byte of the body is read; then the connection goes.
                    tokio::time::sleep(Duration::from_secs(2)).await;
                });
            }
        });
        let lb = TestLb::start(&config(backend, "retries = 0")).await;
        let stream = raw(lb.addr).await;
        let (mut read, mut write) = stream.into_split();
        let body_len = 64 * 1024 * 1024;
        tokio::spawn(async move {
            let head = format!(
                "POST /upload HTTP/1.1\r\nHost: wire.test\r\nContent-Length: {body_len}\r\n\r\n"
            );
            if write.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let chunk = vec![b'x'; 64 * 1024];
            for _ in 0..body_len / chunk.len() {
                if write.write_all(&chunk).await.is_err() {
                    return;
                }
            }
        });
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match tokio::time::timeout(READ_TIMEOUT, read.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
                _ => break,
            }
        }
        let text = String::from_utf8_lossy(&got);
        assert_eq!(raw_status(&text), Some(413), "{text:?}");
    })
    .await;
}
