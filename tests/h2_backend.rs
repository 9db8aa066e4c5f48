//! HTTP/2 requests on their way to HTTP/1.1 backends (issue 14 item 4): the
//! h2 engine writes and reads HTTP/1.1 on pooled sockets itself. Framing both
//! ways (chunked responses decoded into DATA frames and trailers, request bodies with and
//! without Content-Length), which sockets go back to the pool, and a pooled
//! socket the backend closed, over h2c against scripted backends.

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::scripted::{ok, write, ScriptedBackend, Step};
use common::wire::{bounded, config, lb_for, Side, WireLb};
use futures_util::stream;
use http::{HeaderMap, Request, StatusCode};
use http_body::Frame;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

type Sender = hyper::client::conn::http2::SendRequest<BoxBody<Bytes, Infallible>>;

/// An h2c (prior knowledge) connection to `addr`.
async fn h2c(addr: std::net::SocketAddr) -> Sender {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    sender
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    trailers: Option<HeaderMap>,
}

async fn send(
    sender: &mut Sender,
    method: &str,
    path: &str,
    body: BoxBody<Bytes, Infallible>,
) -> Answer {
    let req = Request::builder()
        .method(method)
        .uri(format!("http://localhost{path}"))
        .body(body)
        .unwrap();
    let resp = sender.send_request(req).await.expect("h2 response");
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await.expect("response body");
    let trailers = collected.trailers().cloned();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
    }
}

fn empty() -> BoxBody<Bytes, Infallible> {
    Empty::new().boxed()
}

async fn get(sender: &mut Sender, path: &str) -> Answer {
    send(sender, "GET", path, empty()).await
}

#[tokio::test]
async fn a_chunked_response_reaches_an_h2_client_decoded_and_its_socket_is_reused() {
    bounded(async {
        let backend = ScriptedBackend::spawn(|_| {
            vec![write(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-App: 1\r\n\r\n\
                 5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\nConnection: x\r\n\r\n",
            )]
        })
        .await;
        let lb = lb_for(Side::Plain, &backend).await;
        let mut client = h2c(lb.addr()).await;
        for _ in 0..3 {
            let answer = get(&mut client, "/chunked").await;
            assert_eq!(answer.status, 200);
            assert_eq!(answer.body, "hello world");
            assert_eq!(answer.headers["x-app"], "1");
            assert!(answer.headers.get("transfer-encoding").is_none());
            // The trailer section, but what would be hop-by-hop.
            let trailers = answer.trailers.expect("trailers");
            assert_eq!(trailers["x-trailer"], "t");
            assert_eq!(trailers.len(), 1);
        }
        assert_eq!(backend.received().len(), 3);
        assert_eq!(
            backend.connections_used(),
            1,
            "the socket went back to the pool"
        );
    })
    .await;
}

#[tokio::test]
async fn a_backend_that_answers_connection_close_is_not_pooled() {
    bounded(async {
        let backend = ScriptedBackend::spawn(|_| {
            vec![
                write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"),
                Step::Close,
            ]
        })
        .await;
        let lb = lb_for(Side::Plain, &backend).await;
        let mut client = h2c(lb.addr()).await;
        for _ in 0..3 {
            let answer = get(&mut client, "/").await;
            assert_eq!(answer.status, 200);
            assert_eq!(answer.body, "ok");
            assert!(answer.headers.get("connection").is_none());
        }
        assert_eq!(backend.connections_used(), 3);
    })
    .await;
}

#[tokio::test]
async fn a_pooled_socket_the_backend_closed_is_retried_on_a_new_one() {
    bounded(async {
        // The second request finds its pooled socket closed by the backend
        // (without a word) as it arrives: sent again on a new connection.
        let dropped = Arc::new(AtomicBool::new(false));
        let backend = ScriptedBackend::spawn(move |req| match req.target.as_str() {
            "/stale" if !dropped.swap(true, Ordering::SeqCst) => vec![Step::Close],
            "/stale" => ok("again"),
            _ => ok("first"),
        })
        .await;
        let lb = lb_for(Side::Plain, &backend).await;
        let mut client = h2c(lb.addr()).await;
        assert_eq!(get(&mut client, "/").await.body, "first");
        let answer = get(&mut client, "/stale").await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body, "again");
        let received = backend.received();
        let conns: Vec<usize> = received.iter().map(|r| r.conn).collect();
        assert_eq!(received.len(), 3, "{received:?}");
        assert_eq!(
            conns[0], conns[1],
            "the first /stale went on the pooled socket"
        );
        assert_ne!(conns[1], conns[2], "sent again on a new one");
    })
    .await;
}

#[tokio::test]
async fn request_bodies_go_with_their_length_or_in_chunks() {
    bounded(async {
        let backend = ScriptedBackend::spawn(|req| ok(format!("got {}", req.body.len()))).await;
        let lb = lb_for(Side::Plain, &backend).await;
        let mut client = h2c(lb.addr()).await;

        // Content-Length said: the bytes as they come.
        let body = Full::new(Bytes::from(vec![b'x'; 100_000])).boxed();
        let answer = send(&mut client, "POST", "/sized", body).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body, "got 100000");

        // No length: chunked, one chunk per DATA frame.
        let frames = ["abc", "", "defgh"].map(|d| Ok::<_, Infallible>(Frame::data(Bytes::from(d))));
        let body = StreamBody::new(stream::iter(frames)).boxed();
        let answer = send(&mut client, "PUT", "/streamed", body).await;
        assert_eq!(answer.body, "got 8");

        let received = backend.received();
        let sized = &received[0];
        assert_eq!(sized.header("content-length"), Some("100000"));
        assert!(!sized.chunked);
        let streamed = &received[1];
        assert!(streamed.chunked, "{streamed:?}");
        assert_eq!(streamed.body, b"abcdefgh");
        assert_eq!(streamed.header("content-length"), None);
        assert_eq!(backend.connections_used(), 1);
    })
    .await;
}

#[tokio::test]
async fn bodiless_answers_and_a_bad_response_head() {
    bounded(async {
        let backend = ScriptedBackend::spawn(|req| match req.target.as_str() {
            "/no-content" => vec![write("HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n")],
            "/garbage" => vec![write(
                "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx",
            )],
            // A HEAD answer says how long the body would be, and has none.
            _ => vec![write("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")],
        })
        .await;
        let lb = lb_for(Side::Plain, &backend).await;
        let mut client = h2c(lb.addr()).await;
        let head = send(&mut client, "HEAD", "/head", empty()).await;
        assert_eq!(head.status, 200);
        assert_eq!(head.headers["content-length"], "5");
        assert!(head.body.is_empty());
        let none = get(&mut client, "/no-content").await;
        assert_eq!(none.status, 204);
        assert_eq!(none.headers["x-a"], "1");
        assert!(none.body.is_empty());
        assert_eq!(
            backend.connections_used(),
            1,
            "bodiless answers keep the socket"
        );
        assert_eq!(get(&mut client, "/garbage").await.status, 502);
    })
    .await;
}

#[tokio::test]
async fn a_silent_backend_times_out_before_and_within_its_response() {
    bounded(async {
        let backend = ScriptedBackend::spawn(|req| match req.target.as_str() {
            "/silent" => vec![Step::Pause(Duration::from_secs(5))],
            // The head and half the body, then nothing.
            _ => vec![
                write("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf."),
                Step::Pause(Duration::from_secs(5)),
            ],
        })
        .await;
        let timeouts = "[upstream.wire.timeouts]\nresponse = \"300ms\"";
        let lb = WireLb::start(Side::Plain, &config(backend.addr, "", timeouts)).await;
        let mut client = h2c(lb.addr()).await;
        let req = Request::get("http://localhost/stalls")
            .body(empty())
            .unwrap();
        let resp = client.send_request(req).await.expect("response head");
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await;
        assert!(body.is_err(), "the stream is reset, not ended as if whole");
        // The connection serves on; a backend silent before its head: 504.
        assert_eq!(get(&mut client, "/silent").await.status, 504);
    })
    .await;
}

#[tokio::test]
async fn streams_of_one_connection_do_not_wait_for_each_other() {
    bounded(async {
        // /slow answers its head after 1.5 s, /half sends half its body and
        // stalls for 1.5 s; /fast answers at once. limpet runs a connection's
        // streams in the connection's own task (src/h2/conn.rs): a stream
        // waiting on its backend must not hold up the others.
        let backend = ScriptedBackend::spawn(|req| match req.target.as_str() {
            "/slow" => [vec![Step::Pause(Duration::from_millis(1500))], ok("slow")].concat(),
            "/half" => vec![
                write("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf."),
                Step::Pause(Duration::from_millis(1500)),
                write("done."),
            ],
            _ => ok("fast"),
        })
        .await;
        let lb = lb_for(Side::Plain, &backend).await;
        let client = h2c(lb.addr()).await;
        let started = std::time::Instant::now();
        let (mut slow_client, mut half_client) = (client.clone(), client.clone());
        let slow = tokio::spawn(async move { get(&mut slow_client, "/slow").await });
        let half = tokio::spawn(async move { get(&mut half_client, "/half").await });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let fast: Vec<_> = (0..10)
            .map(|_| {
                let mut client = client.clone();
                tokio::spawn(async move { get(&mut client, "/fast").await })
            })
            .collect();
        for answer in fast {
            let answer = answer.await.expect("fast request");
            assert_eq!(
                (answer.status.as_u16(), &answer.body[..]),
                (200, &b"fast"[..])
            );
        }
        let fast_done = started.elapsed();
        assert!(
            fast_done < Duration::from_millis(1200),
            "the fast requests took {fast_done:?}: they waited for the slow streams"
        );
        let slow = slow.await.expect("slow request");
        assert_eq!(&slow.body[..], b"slow");
        let half = half.await.expect("half request");
        assert_eq!(&half.body[..], b"half.done.");
        assert!(started.elapsed() >= Duration::from_millis(1500));
    })
    .await;
}

#[tokio::test]
async fn a_stream_in_flight_at_shutdown_is_answered_before_limpet_stops() {
    bounded(async {
        let backend = ScriptedBackend::spawn(|req| match req.target.as_str() {
            "/slow" => [vec![Step::Pause(Duration::from_millis(800))], ok("slow")].concat(),
            _ => ok("fast"),
        })
        .await;
        let lb = lb_for(Side::Plain, &backend).await;
        let mut client = h2c(lb.addr()).await;
        assert_eq!(get(&mut client, "/fast").await.status, 200);
        let mut slow_client = client.clone();
        let slow = tokio::spawn(async move { get(&mut slow_client, "/slow").await });
        let reached = common::eventually(Duration::from_secs(5), || async {
            backend.received().iter().any(|r| r.target == "/slow")
        });
        assert!(reached.await, "the slow request reached the backend");
        // The connection's streams run in its task: shutdown waits for them.
        let stopped = tokio::spawn(lb.lb.limpet.shutdown());
        let answer = slow.await.expect("slow request");
        assert_eq!(
            (answer.status.as_u16(), &answer.body[..]),
            (200, &b"slow"[..])
        );
        tokio::time::timeout(Duration::from_secs(5), stopped)
            .await
            .expect("limpet stops once the stream is answered")
            .expect("shutdown task");
    })
    .await;
}
