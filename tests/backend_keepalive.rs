//! Backends close idle keep-alive connections on their own schedule (Node.js
//! and Apache after 5 s): a request sent on a pooled connection just as the
//! backend closes it fails, and one that cannot be sent twice (a POST) would
//! be a 502. limpet sends such requests only on a connection used moments ago
//! (or a new one), believes a backend's `Keep-Alive: timeout=N`, and keeps
//! idle connections for `[upstream.NAME.timeouts] keepalive` at most.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::wire::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A keep-alive backend that closes a connection after `idle` without a
/// request, and says so in `Keep-Alive: timeout=N` when `advertise`. Counts
/// the connections it accepted. It decides to close at `idle` and closes
/// 100 ms later without reading, as a busy server does: a request that
/// arrives in between is lost (the kernel answers it with a reset).
async fn closing_backend(idle: Duration, advertise: Option<u64>) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    // A head within `idle`, or the connection closes.
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match tokio::time::timeout(idle, stream.read(&mut chunk)).await {
                            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                            Ok(_) => return,
                            Err(_) => {
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                return;
                            }
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() < head_end + length {
                        let mut chunk = [0u8; 4096];
                        match stream.read(&mut chunk).await {
                            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                            _ => return,
                        }
                    }
                    buf.drain(..head_end + length);
                    let keep_alive = advertise
                        .map(|n| format!("Keep-Alive: timeout={n}\r\n"))
                        .unwrap_or_default();
                    let resp =
                        format!("HTTP/1.1 200 OK\r\n{keep_alive}Content-Length: 2\r\n\r\nok");
                    if stream.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

/// limpet in front of `backend`, with `timeouts` in its
/// `[upstream.wire.timeouts]`; health checks off the path (hourly).
fn config(backend: SocketAddr, timeouts: &str) -> String {
    format!(
        "[listen]\nhttp = [\"127.0.0.1:0\"]\n\n\
         [upstream.wire]\naffinity = \"none\"\nretries = 0\n\n\
         [upstream.wire.timeouts]\n{timeouts}\n\n\
         [upstream.wire.health]\ninterval = \"1h\"\npassive_fall = 1000\n\n\
         [[upstream.wire.backend]]\nname = \"b1\"\naddr = \"{backend}\"\n"
    )
}

#[tokio::test]
async fn posts_arriving_as_the_backend_closes_idle_connections_do_not_fail() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let (backend, _) = closing_backend(Duration::from_secs(1), None).await;
        let lb = WireLb::start(Side::Plain, &config(backend, "")).await;
        let mut conn = lb.connect().await;
        let mut rng = fastrand::Rng::with_seed(7);
        for i in 0..14 {
            // Just past the backend's one second: the pooled connection is
            // closing as the POST goes out on it.
            let wait = 1000 + rng.u64(..80);
            tokio::time::sleep(Duration::from_millis(wait)).await;
            let resp = conn.exchange(post("/order", b"item=1")).await;
            assert_eq!(resp.status, 200, "POST {i} after {wait} ms idle: {resp:?}");
            // A GET between keeps a fresh connection in the pool for the next.
            assert_eq!(conn.exchange(get("/cart")).await.status, 200);
        }
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn a_backends_keep_alive_timeout_is_believed() {
    bounded(async {
        // "timeout=1": limpet keeps such connections for 0 s, so never.
        let (backend, accepted) = closing_backend(Duration::from_secs(1), Some(1)).await;
        let lb = WireLb::start(Side::Plain, &config(backend, "")).await;
        let mut conn = lb.connect().await;
        let before = accepted.load(Ordering::SeqCst);
        for _ in 0..3 {
            assert_eq!(conn.exchange(get("/")).await.status, 200);
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst) - before,
            3,
            "a connection the backend keeps for 1 s is not reused"
        );
    })
    .await;
}

#[tokio::test]
async fn idle_connections_are_kept_for_the_upstreams_keepalive() {
    bounded(async {
        let (backend, accepted) = closing_backend(Duration::from_secs(30), None).await;
        let lb = WireLb::start(Side::Plain, &config(backend, "keepalive = \"300ms\"")).await;
        let mut conn = lb.connect().await;
        let before = accepted.load(Ordering::SeqCst);
        assert_eq!(conn.exchange(get("/")).await.status, 200);
        assert_eq!(conn.exchange(get("/")).await.status, 200);
        assert_eq!(
            accepted.load(Ordering::SeqCst) - before,
            1,
            "reused at once"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(conn.exchange(get("/")).await.status, 200);
        assert_eq!(
            accepted.load(Ordering::SeqCst) - before,
            2,
            "not reused after keepalive"
        );
    })
    .await;
}

/// A backend that answers GETs and resets the connection after reading a
/// POST's head. Under steady traffic every POST goes on a connection a GET
/// used moments ago; its failure counts against the backend (`passive_fall
/// = 1`: down at once) as it would on a new connection. It did not: a
/// failure on a pooled connection was taken for the backend closing an idle
/// one, and a POST is not sent again to find out, so the backend stayed up
/// through any number of 502s.
#[tokio::test]
async fn a_backend_resetting_posts_on_pooled_connections_goes_down() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            match conn.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        if buf.starts_with(b"POST") {
                            // Closed with the body unread: the kernel resets.
                            return;
                        }
                        buf.clear();
                        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                        if conn.write_all(ok).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let config = config(backend, "").replace("passive_fall = 1000", "passive_fall = 1");
        let lb = WireLb::start(Side::Plain, &config).await;
        let mut conn = lb.connect().await;
        assert_eq!(conn.exchange(get("/cart")).await.status, 200);
        let resp = conn.exchange(post("/order", b"item=1")).await;
        assert_eq!(resp.status, 502, "{resp:?}");
        let mut conn = lb.connect().await;
        let after = conn.exchange(get("/cart")).await;
        assert_eq!(after.status, 503, "the backend is down: {after:?}");
    })
    .await
    .expect("bounded");
}
