//! HTTP/2 on the wire (RFC 9113), frame by frame: what limpet's HTTP/2 server
//! answers to well-formed traffic (streams, flow control, big bodies both
//! ways, trailers, HEAD) and to hostile traffic (each connection error with
//! its GOAWAY code, each malformed request refused on its own stream while
//! the connection stays usable, resets and floods). Real backends and a real
//! limpet on 127.0.0.1:0; the raw client is `common::h2raw`, whole responses
//! come through hyper's client where only they matter.
//!
//! Where RFC 9113 allows several answers the tests accept each (a comment
//! says which); where SPEC.md chooses one (431 for a field section over
//! `max_header_bytes`), that one. Malformed requests must not reach the
//! backend (its hit count stays put).

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::h2raw::*;
use common::scripted::{ok, raw_backend, write, ScriptedBackend, Step};
use common::tls::{make_cert, temp_dir, tls_connect, with_https};
use common::wire::{bounded, h2_client_for, raw};
use common::*;
use http::{HeaderMap, Request, Response as HttpResponse};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame as BodyFrame, Incoming};

/// A request body for hyper's client: whole, streamed, or with trailers.
type Body = BoxBody<Bytes, Infallible>;

/// limpet (no affinity, one health check) in front of one backend `app1`,
/// with `top` TOML before the upstream (a `[limits]` table, say).
async fn one_backend(top: &str) -> (TestBackend, TestLb) {
    let app1 = TestBackend::spawn("app1").await;
    let lb = TestLb::start(&common::wire::config(app1.addr, top, "")).await;
    (app1, lb)
}

/// limpet (no affinity, one health check) in front of a scripted backend.
async fn scripted_lb(backend: &ScriptedBackend) -> TestLb {
    TestLb::start(&common::wire::config(backend.addr, "", "")).await
}

/// `n` bytes of a pattern that shows a byte lost, doubled or moved.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// Asserts a raw GET of `/` on `stream` gets a 200 from `app1`.
async fn assert_served(h2: &mut H2, stream: u32) {
    let resp = h2.get(stream, "/").await;
    assert_eq!(resp.status, 200, "stream {stream}: {resp:?}");
    assert_eq!(resp.body, b"app1", "stream {stream}");
}

/// Asserts limpet at `addr` serves a new h2c connection.
async fn assert_serves_new_connections(addr: SocketAddr) {
    let mut h2 = H2::connect(addr).await;
    assert_served(&mut h2, 1).await;
}

/// Sends `req` with hyper's client; the response with its body collected
/// (and trailers, if any).
async fn send(
    sender: &mut hyper::client::conn::http2::SendRequest<Body>,
    req: Request<Body>,
) -> (HttpResponse<()>, Bytes, Option<HeaderMap>) {
    let resp = sender.send_request(req).await.expect("h2 response");
    collect(resp).await
}

async fn collect(resp: HttpResponse<Incoming>) -> (HttpResponse<()>, Bytes, Option<HeaderMap>) {
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await.expect("response body");
    let trailers = collected.trailers().cloned();
    (
        HttpResponse::from_parts(parts, ()),
        collected.to_bytes(),
        trailers,
    )
}

// ---------------------------------------------------------------------------
// 1. The normal exchange

/// The server's first frame is SETTINGS, it acknowledges ours (the first and
/// a later one), and a GET gets HEADERS 200 then DATA up to END_STREAM, all
/// on stream 1.
#[tokio::test]
async fn get_over_h2c_gets_headers_then_data_on_stream_1() {
    bounded(async {
        let (app1, lb) = one_backend("").await;
        // `connect` asserts the server's SETTINGS come first and waits for its ACK of ours.
        let mut h2 = H2::connect(lb.addr).await;
        // limpet keeps the default frame size (the frame-size test relies on it).
        let max_frame = h2.server_setting(SETTINGS_MAX_FRAME_SIZE);
        assert_eq!(max_frame.unwrap_or(16_384), 16_384);
        let resp = h2.get(1, "/").await;
        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(resp.frames[0].kind, HEADERS, "{:?}", resp.frames);
        for f in &resp.frames[1..] {
            assert_eq!(f.kind, DATA, "after the response head: {:?}", resp.frames);
        }
        assert!(resp.frames.last().unwrap().has(END_STREAM));
        assert_eq!(resp.body, b"app1");
        assert_eq!(app1.hits(), 1);

        // A later SETTINGS is acknowledged too.
        h2.send(&settings(&[(SETTINGS_INITIAL_WINDOW_SIZE, 1 << 20)]))
            .await;
        loop {
            let f = h2.next().await.expect("closed before the SETTINGS ACK");
            if f.kind == SETTINGS && f.has(ACK) {
                assert!(f.payload.is_empty(), "{f:?}");
                break;
            }
        }
        assert_served(&mut h2, 3).await;
    })
    .await;
}

/// PING is answered with a PING ACK carrying the same 8 bytes.
#[tokio::test]
async fn ping_gets_an_ack_with_the_same_payload() {
    bounded(async {
        let (_app1, lb) = one_backend("").await;
        let mut h2 = H2::connect(lb.addr).await;
        let payload = *b"limpet!\x01";
        h2.send_frame(PING, 0, 0, &payload).await;
        loop {
            let f = h2.next().await.expect("closed before the PING ACK");
            if f.kind == PING {
                assert!(f.has(ACK), "{f:?}");
                assert_eq!(f.stream, 0);
                assert_eq!(f.payload, payload);
                break;
            }
        }
    })
    .await;
}

/// The same exchange over TLS with ALPN h2.
#[tokio::test]
async fn get_over_tls_alpn_h2_gets_a_200() {
    bounded(async {
        let app1 = TestBackend::spawn("app1").await;
        let dir = temp_dir("h2wire");
        let cert = make_cert(&dir, "localhost", &["localhost"]);
        let toml = common::wire::config(app1.addr, "", "");
        let lb = TestLb::start(&with_https(&toml, &[&cert])).await;
        let tls = tls_connect(lb.limpet.https_addrs[0], &[&cert], "localhost", &[b"h2"])
            .await
            .expect("TLS handshake");
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let mut h2 = H2::over(Box::new(tls));
        h2.handshake().await;
        assert_served(&mut h2, 1).await;
        assert_served(&mut h2, 3).await;
        let _ = std::fs::remove_dir_all(dir);
    })
    .await;
}

// ---------------------------------------------------------------------------
// 2. Many streams on one connection

/// 50 sequential and 20 concurrent requests on one connection all reach the
/// backend the first response pinned, by the cookie it set.
#[tokio::test]
async fn many_streams_on_one_connection_keep_the_pin() {
    bounded(async {
        let backends = three_backends().await;
        let [a, b, c] = &backends;
        let lb = TestLb::start(&ring_config(&[a, b, c], "")).await;
        let mut sender = h2_client_for::<_, Body>(raw(lb.addr).await).await;
        let get = |cookie: Option<&str>| {
            let mut req = Request::get("http://localhost/");
            if let Some(c) = cookie {
                req = req.header("cookie", c);
            }
            req.body(Empty::new().boxed()).unwrap()
        };
        let (first, body, _) = send(&mut sender, get(None)).await;
        let pinned = first.headers()["x-backend"].to_str().unwrap().to_string();
        assert_eq!(body, pinned.as_bytes());
        let set_cookie = first.headers()["set-cookie"].to_str().unwrap();
        let cookie = set_cookie.split(';').next().unwrap().to_string();
        assert!(cookie.starts_with("limpet="), "{set_cookie}");

        for i in 0..50 {
            let (resp, body, _) = send(&mut sender, get(Some(&cookie))).await;
            assert_eq!(resp.status(), 200, "request {i}");
            assert_eq!(resp.headers()["x-backend"], pinned.as_str(), "request {i}");
            assert_eq!(body, pinned.as_bytes(), "request {i}");
            assert!(resp.headers().get("set-cookie").is_none(), "request {i}");
        }

        let mut concurrent = tokio::task::JoinSet::new();
        for _ in 0..20 {
            let mut sender = sender.clone();
            let req = get(Some(&cookie));
            concurrent.spawn(async move { send(&mut sender, req).await });
        }
        while let Some(done) = concurrent.join_next().await {
            let (resp, body, _) = done.unwrap();
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.headers()["x-backend"], pinned.as_str());
            assert_eq!(body, pinned.as_bytes());
        }

        for backend in &backends {
            let want = if backend.name == pinned { 71 } else { 0 };
            assert_eq!(backend.hits(), want, "{}", backend.name);
        }
    })
    .await;
}

/// The raw client's stream ids climb from 1 to 99 one at a time, then 20
/// more are opened at once and answered each on its own stream.
#[tokio::test]
async fn raw_streams_sequential_and_concurrent_are_each_answered() {
    bounded(async {
        let (app1, lb) = one_backend("").await;
        let mut h2 = H2::connect(lb.addr).await;
        for stream in (1..100).step_by(2) {
            assert_served(&mut h2, stream).await;
        }
        let streams: Vec<u32> = (101..141).step_by(2).collect();
        let mut burst = Vec::new();
        for &stream in &streams {
            burst.extend(headers(stream, &get_block("/"), true));
        }
        h2.send(&burst).await;
        for &stream in &streams {
            let resp = h2.response(stream).await;
            assert_eq!(resp.status, 200, "stream {stream}");
            assert_eq!(resp.body, b"app1", "stream {stream}");
        }
        assert_eq!(app1.hits(), 70);
    })
    .await;
}

// ---------------------------------------------------------------------------
// 3. Big bodies both ways, under flow control

const UPLOAD: usize = 5 * 1024 * 1024;
const DOWNLOAD: usize = 8 * 1024 * 1024;

/// A scripted backend that answers every request with its body's length,
/// and `/big` and `/big-chunked` with [`DOWNLOAD`] bytes of [`pattern`].
async fn sizing_backend() -> ScriptedBackend {
    ScriptedBackend::spawn(|r| match r.target.as_str() {
        "/big" => ok(pattern(DOWNLOAD)),
        "/big-chunked" => {
            let mut bytes = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            for chunk in pattern(DOWNLOAD).chunks(1 << 20) {
                bytes.extend(format!("{:x}\r\n", chunk.len()).as_bytes());
                bytes.extend(chunk);
                bytes.extend(b"\r\n");
            }
            bytes.extend(b"0\r\n\r\n");
            vec![Step::Write(bytes)]
        }
        _ => ok(r.body.len().to_string()),
    })
    .await
}

/// 5 MB uploaded with a Content-Length: the backend gets every byte, in order,
/// with the length.
#[tokio::test]
async fn a_5mb_upload_with_content_length_arrives_whole() {
    bounded(async {
        let backend = sizing_backend().await;
        let lb = scripted_lb(&backend).await;
        let mut sender = h2_client_for::<_, Body>(raw(lb.addr).await).await;
        let body = pattern(UPLOAD);
        let req = Request::post("http://localhost/up")
            .header("content-length", UPLOAD)
            .body(Full::new(Bytes::from(body.clone())).boxed())
            .unwrap();
        let (resp, text, _) = send(&mut sender, req).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(text, UPLOAD.to_string());
        let got = &backend.received()[0];
        assert_eq!(got.header("content-length"), Some(&*UPLOAD.to_string()));
        assert!(!got.chunked);
        assert!(got.body == body, "the backend got other bytes");
    })
    .await;
}

/// 5 MB uploaded without a Content-Length (DATA frames up to END_STREAM):
/// the backend gets it chunked, every byte in order.
#[tokio::test]
async fn a_5mb_upload_without_content_length_arrives_whole() {
    bounded(async {
        let backend = sizing_backend().await;
        let lb = scripted_lb(&backend).await;
        let mut sender = h2_client_for::<_, Body>(raw(lb.addr).await).await;
        let body = pattern(UPLOAD);
        let frames: Vec<Result<BodyFrame<Bytes>, Infallible>> = body
            .chunks(100_000)
            .map(|c| Ok(BodyFrame::data(Bytes::copy_from_slice(c))))
            .collect();
        let streamed = StreamBody::new(futures_util::stream::iter(frames)).boxed();
        let req = Request::post("http://localhost/up").body(streamed).unwrap();
        let (resp, text, _) = send(&mut sender, req).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(text, UPLOAD.to_string());
        let got = &backend.received()[0];
        assert!(got.chunked, "{got:?}");
        assert!(got.body == body, "the backend got other bytes");
    })
    .await;
}

/// 8 MB downloaded, with a Content-Length and chunked, by hyper's client and
/// by the raw one (whose 65,535-byte windows the server must wait on).
#[tokio::test]
async fn an_8mb_download_arrives_whole_under_flow_control() {
    bounded(async {
        let backend = sizing_backend().await;
        let lb = scripted_lb(&backend).await;
        let want = pattern(DOWNLOAD);
        let mut sender = h2_client_for::<_, Body>(raw(lb.addr).await).await;
        for path in ["/big", "/big-chunked"] {
            let req = Request::get(format!("http://localhost{path}"))
                .body(Empty::new().boxed())
                .unwrap();
            let (resp, body, _) = send(&mut sender, req).await;
            assert_eq!(resp.status(), 200, "{path}");
            assert_eq!(body.len(), DOWNLOAD, "{path}");
            assert!(body == want, "{path}: other bytes");
        }
        let mut h2 = H2::connect(lb.addr).await;
        for (stream, path) in [(1, "/big"), (3, "/big-chunked")] {
            let resp = h2.get(stream, path).await;
            assert_eq!(resp.status, 200, "{path}");
            assert_eq!(resp.body.len(), DOWNLOAD, "{path}");
            assert!(resp.body == want, "{path}: other bytes");
        }
    })
    .await;
}

// ---------------------------------------------------------------------------
// 4. Trailers

/// A chunked response's trailer section reaches the client as the stream's
/// trailers, after the whole body.
#[tokio::test]
async fn response_trailers_from_a_chunked_backend_reach_the_client() {
    bounded(async {
        let backend = ScriptedBackend::spawn(|_| {
            vec![write(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-checksum\r\n\r\n\
                 5\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: abc123\r\n\r\n",
            )]
        })
        .await;
        let lb = scripted_lb(&backend).await;
        let mut sender = h2_client_for::<_, Body>(raw(lb.addr).await).await;
        let req = Request::get("http://localhost/t")
            .body(Empty::new().boxed())
            .unwrap();
        let (resp, body, trailers) = send(&mut sender, req).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(body, "hello world");
        let trailers = trailers.expect("response trailers");
        assert_eq!(trailers["x-checksum"], "abc123");
    })
    .await;
}

/// A request body followed by trailers is forwarded whole and answered.
/// (limpet does not forward request trailers to HTTP/1.1 backends,
/// src/h2/upstream.rs; the scripted backend could not record them anyway.)
#[tokio::test]
async fn a_request_with_trailers_is_forwarded_with_its_body() {
    bounded(async {
        let backend = sizing_backend().await;
        let lb = scripted_lb(&backend).await;
        let mut sender = h2_client_for::<_, Body>(raw(lb.addr).await).await;
        let mut trailers = HeaderMap::new();
        trailers.insert("x-checksum", "abc123".parse().unwrap());
        let frames: Vec<Result<BodyFrame<Bytes>, Infallible>> = vec![
            Ok(BodyFrame::data(Bytes::from_static(b"hello "))),
            Ok(BodyFrame::data(Bytes::from_static(b"world"))),
            Ok(BodyFrame::trailers(trailers)),
        ];
        let streamed = StreamBody::new(futures_util::stream::iter(frames)).boxed();
        let req = Request::post("http://localhost/t").body(streamed).unwrap();
        let (resp, text, _) = send(&mut sender, req).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(text, "11");
        assert_eq!(backend.received()[0].body, b"hello world");
    })
    .await;
}

// ---------------------------------------------------------------------------
// 5. Hostile, connection-level

/// A connection that has shaken hands sends `bytes`: the server answers with
/// GOAWAY `code` and closes, or (where `may_close`) closes without one. The
/// backend saw nothing, and a new connection is served.
async fn connection_refuses(name: &str, bytes: &[u8], codes: &[u32], may_close: bool) {
    let (app1, lb) = one_backend("").await;
    let mut h2 = H2::connect(lb.addr).await;
    h2.send_lossy(bytes).await;
    let got = h2.connection_error().await;
    eprintln!("{name}: {:?}", got.map(code_name));
    match got {
        Some(code) => assert!(
            codes.contains(&code),
            "{name}: GOAWAY {}, expected one of {:?}",
            code_name(code),
            codes.iter().map(|c| code_name(*c)).collect::<Vec<_>>()
        ),
        None => assert!(may_close, "{name}: closed without a GOAWAY"),
    }
    assert_eq!(app1.hits(), 0, "{name}: reached the backend");
    assert_serves_new_connections(lb.addr).await;
}

/// What came back for a bad preface: nothing, an HTTP/1 error (the plain
/// listener cannot tell a broken preface from a bad HTTP/1 request), or
/// frames with no response among them and a GOAWAY PROTOCOL_ERROR if any
/// (RFC 9113, section 3.4: the GOAWAY may be omitted). Then the close.
async fn assert_bad_preface_refused(mut h2: H2, http1_allowed: bool) {
    h2.send_lossy(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n").await;
    h2.send_lossy(&settings(&[])).await;
    h2.send_lossy(&headers(1, &get_block("/"), true)).await;
    let bytes = h2.read_to_close().await;
    eprintln!("bad preface: {:?}", String::from_utf8_lossy(&bytes));
    if bytes.starts_with(b"HTTP/1.1 ") {
        assert!(http1_allowed, "an HTTP/1 answer on an h2 connection");
        let status: u16 = String::from_utf8_lossy(&bytes[9..12]).parse().unwrap();
        assert!(status >= 400, "HTTP/1 status {status}");
        return;
    }
    for f in parse_frames(&bytes) {
        assert!(f.kind != HEADERS && f.kind != DATA, "{f:?}");
        if f.kind == GOAWAY {
            assert_eq!(f.error_code(), Some(PROTOCOL_ERROR), "{f:?}");
        }
    }
}

#[tokio::test]
async fn a_bad_preface_on_h2c_closes_the_connection() {
    bounded(async {
        let (app1, lb) = one_backend("").await;
        assert_bad_preface_refused(H2::open(lb.addr).await, true).await;
        assert_eq!(app1.hits(), 0);
        assert_serves_new_connections(lb.addr).await;
    })
    .await;
}

#[tokio::test]
async fn a_bad_preface_over_tls_alpn_h2_closes_the_connection() {
    bounded(async {
        let app1 = TestBackend::spawn("app1").await;
        let dir = temp_dir("h2wire");
        let cert = make_cert(&dir, "localhost", &["localhost"]);
        let toml = common::wire::config(app1.addr, "", "");
        let lb = TestLb::start(&with_https(&toml, &[&cert])).await;
        let tls = tls_connect(lb.limpet.https_addrs[0], &[&cert], "localhost", &[b"h2"])
            .await
            .expect("TLS handshake");
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        assert_bad_preface_refused(H2::over(Box::new(tls)), false).await;
        assert_eq!(app1.hits(), 0);
        let _ = std::fs::remove_dir_all(dir);
    })
    .await;
}

/// The client's preface must be followed by SETTINGS (RFC 9113, section 3.4).
#[tokio::test]
async fn a_first_frame_other_than_settings_is_a_protocol_error() {
    bounded(async {
        let (app1, lb) = one_backend("").await;
        let mut h2 = H2::open(lb.addr).await;
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(PING, 0, 0, &[0; 8]));
        hello.extend(headers(1, &get_block("/"), true));
        h2.send_lossy(&hello).await;
        let got = h2.connection_error().await;
        eprintln!("first frame PING: {:?}", got.map(code_name));
        // The GOAWAY may be omitted for a bad preface (section 3.4).
        assert!(matches!(got, None | Some(PROTOCOL_ERROR)), "{got:?}");
        assert_eq!(app1.hits(), 0);
    })
    .await;
}

#[tokio::test]
async fn a_frame_over_max_frame_size_is_a_frame_size_error() {
    bounded(async {
        let mut bytes = get_block("/");
        bytes.resize(16_385, 0);
        // A frame carrying a field block must be a connection error
        // (RFC 9113, section 4.2); after the GOAWAY the server may close with
        // the frame unread, which can reset the connection before the GOAWAY
        // is read: a close without it is accepted.
        let big = frame(HEADERS, END_HEADERS | END_STREAM, 1, &bytes);
        connection_refuses("frame over 16384", &big, &[FRAME_SIZE_ERROR], true).await;
    })
    .await;
}

#[tokio::test]
async fn headers_on_an_even_stream_id_is_a_protocol_error() {
    bounded(async {
        let bytes = headers(2, &get_block("/"), true);
        connection_refuses("even stream id", &bytes, &[PROTOCOL_ERROR], false).await;
    })
    .await;
}

#[tokio::test]
async fn a_stream_id_lower_than_a_previous_one_is_a_protocol_error() {
    bounded(async {
        let (app1, lb) = one_backend("").await;
        let mut h2 = H2::connect(lb.addr).await;
        assert_served(&mut h2, 5).await;
        h2.send_lossy(&headers(3, &get_block("/"), true)).await;
        let got = h2.connection_error().await;
        eprintln!("lower stream id: {:?}", got.map(code_name));
        // Stream 3 was closed implicitly when 5 opened: PROTOCOL_ERROR for
        // the unexpected identifier (section 5.1.1) or STREAM_CLOSED for a
        // frame on a closed stream (section 5.1) are both connection errors.
        assert!(
            matches!(got, Some(PROTOCOL_ERROR) | Some(STREAM_CLOSED)),
            "{:?}",
            got.map(code_name)
        );
        assert_eq!(app1.hits(), 1);
    })
    .await;
}

#[tokio::test]
async fn continuation_without_headers_is_a_protocol_error() {
    bounded(async {
        let bytes = frame(CONTINUATION, END_HEADERS, 1, &get_block("/"));
        connection_refuses("CONTINUATION alone", &bytes, &[PROTOCOL_ERROR], false).await;
    })
    .await;
}

#[tokio::test]
async fn headers_without_end_headers_then_another_frame_is_a_protocol_error() {
    bounded(async {
        let block = get_block("/");
        let mut bytes = frame(HEADERS, END_STREAM, 1, &block[..2]);
        bytes.extend(frame(PING, 0, 0, &[0; 8]));
        bytes.extend(frame(CONTINUATION, END_HEADERS, 1, &block[2..]));
        connection_refuses("PING in a field block", &bytes, &[PROTOCOL_ERROR], false).await;
    })
    .await;
}

#[tokio::test]
async fn continuation_on_another_stream_is_a_protocol_error() {
    bounded(async {
        let block = get_block("/");
        let mut bytes = frame(HEADERS, END_STREAM, 1, &block[..2]);
        bytes.extend(frame(CONTINUATION, END_HEADERS, 3, &block[2..]));
        connection_refuses("CONTINUATION on stream 3", &bytes, &[PROTOCOL_ERROR], false).await;
    })
    .await;
}

#[tokio::test]
async fn garbage_hpack_is_a_compression_error() {
    bounded(async {
        // An indexed field whose index is far past both tables.
        let bytes = headers(1, &[0xff, 0xff, 0xff, 0xff, 0x0f], true);
        connection_refuses("garbage HPACK", &bytes, &[COMPRESSION_ERROR], false).await;
    })
    .await;
}

#[tokio::test]
async fn a_zero_window_update_on_the_connection_is_a_protocol_error() {
    bounded(async {
        let bytes = window_update(0, 0);
        connection_refuses("WINDOW_UPDATE 0", &bytes, &[PROTOCOL_ERROR], false).await;
    })
    .await;
}

#[tokio::test]
async fn a_window_update_past_2_31_is_a_flow_control_error() {
    bounded(async {
        let bytes = window_update(0, 0x7fff_ffff);
        connection_refuses("window overflow", &bytes, &[FLOW_CONTROL_ERROR], false).await;
    })
    .await;
}

#[tokio::test]
async fn settings_with_a_bad_length_is_a_frame_size_error() {
    bounded(async {
        let bytes = frame(SETTINGS, 0, 0, &[0, 1, 0, 0, 0]);
        connection_refuses("SETTINGS of 5 bytes", &bytes, &[FRAME_SIZE_ERROR], false).await;
    })
    .await;
}

#[tokio::test]
async fn a_settings_ack_with_a_payload_is_a_frame_size_error() {
    bounded(async {
        let bytes = frame(SETTINGS, ACK, 0, &[0, 1, 0, 0, 0, 0]);
        connection_refuses(
            "SETTINGS ACK with payload",
            &bytes,
            &[FRAME_SIZE_ERROR],
            false,
        )
        .await;
    })
    .await;
}

#[tokio::test]
async fn push_promise_from_the_client_is_a_protocol_error() {
    bounded(async {
        let mut bytes = headers(1, &request_block("POST", "/"), false);
        let mut promise = 2u32.to_be_bytes().to_vec();
        promise.extend(get_block("/"));
        bytes.extend(frame(PUSH_PROMISE, END_HEADERS, 1, &promise));
        // The POST's head may be on its way to the backend before the
        // PUSH_PROMISE is read: the hit count is not the point here.
        let (_app1, lb) = one_backend("").await;
        let mut h2 = H2::connect(lb.addr).await;
        h2.send_lossy(&bytes).await;
        let got = h2.connection_error().await;
        eprintln!("PUSH_PROMISE: {:?}", got.map(code_name));
        assert_eq!(got, Some(PROTOCOL_ERROR), "{:?}", got.map(code_name));
        assert_serves_new_connections(lb.addr).await;
    })
    .await;
}

/// A backend that accepts connections and never reads them, through a small
/// receive buffer: what limpet forwards to it soon stops moving, and with it
/// limpet's reading of the request body.
async fn stalled_backend() -> SocketAddr {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(64).unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    addr
}

/// DATA past the window the server advertised (its SETTINGS and every
/// WINDOW_UPDATE since): FLOW_CONTROL_ERROR, on the stream or the connection
/// (RFC 9113, section 6.9.1 allows either).
#[tokio::test]
async fn data_beyond_the_window_is_a_flow_control_error() {
    bounded(async {
        let lb = TestLb::start(&common::wire::config(stalled_backend().await, "", "")).await;
        let mut h2 = H2::connect(lb.addr).await;
        let mut stream_window = h2
            .server_setting(SETTINGS_INITIAL_WINDOW_SIZE)
            .unwrap_or(65_535) as i64;
        let mut conn_window: i64 = 65_535;
        for f in &h2.seen {
            if let (Some(n), 0) = (f.increment(), f.stream) {
                conn_window += n as i64;
            }
        }
        h2.request(1, &request_block("POST", "/up"), false).await;
        // Fill the windows until the server stops opening them (limpet no
        // longer reads the body: the backend does not take it).
        let mut sent = 0usize;
        loop {
            let n = conn_window.min(stream_window).max(0) as usize;
            if n > 0 {
                h2.send(&data(1, &vec![b'x'; n], false)).await;
                sent += n;
                conn_window -= n as i64;
                stream_window -= n as i64;
            }
            let mut opened = false;
            while let Some(got) = h2.next_within(Duration::from_millis(300)).await {
                let f = got.expect("closed while the client kept to the window");
                assert!(f.kind != GOAWAY && f.kind != RST_STREAM, "{f:?}");
                match (f.increment(), f.stream) {
                    (Some(inc), 0) => conn_window += inc as i64,
                    (Some(inc), 1) => stream_window += inc as i64,
                    _ => continue,
                }
                opened = true;
            }
            if !opened {
                break;
            }
            assert!(sent < 64 << 20, "the server kept opening its windows");
        }
        let over = conn_window.min(stream_window).max(0) as usize + 1;
        eprintln!("window: {sent} bytes sent, then {over} over");
        h2.send_lossy(&data(1, &vec![b'x'; over], false)).await;
        let got = h2.outcome(1).await;
        eprintln!("DATA beyond the window: {got:?}");
        assert!(
            matches!(
                got,
                Outcome::Reset(FLOW_CONTROL_ERROR) | Outcome::GoAway(FLOW_CONTROL_ERROR)
            ),
            "{got:?}"
        );
    })
    .await;
}

// ---------------------------------------------------------------------------
// 6. Hostile, stream-level: the connection stays usable

/// Sends HEADERS `block` on stream 1 (END_STREAM if `end_stream`) and then
/// `after`: a malformed request, refused on its stream with RST_STREAM
/// PROTOCOL_ERROR or a 400 (RFC 9113, section 8.1.1 lets a server answer
/// before resetting). When `untouched`, the backend saw nothing. Stream 3 on
/// the same connection is served afterwards.
async fn refused_on_its_stream(
    name: &str,
    block: Vec<u8>,
    end_stream: bool,
    after: &[u8],
    untouched: bool,
) {
    let (app1, lb) = one_backend("").await;
    let mut h2 = H2::connect(lb.addr).await;
    let mut bytes = headers(1, &block, end_stream);
    bytes.extend_from_slice(after);
    h2.send(&bytes).await;
    let got = h2.outcome(1).await;
    eprintln!("{name}: {got:?}");
    assert!(
        matches!(got, Outcome::Reset(PROTOCOL_ERROR) | Outcome::Status(400)),
        "{name}: {got:?}"
    );
    if untouched {
        assert_eq!(app1.hits(), 0, "{name}: reached the backend");
    }
    let hits = app1.hits();
    assert_served(&mut h2, 3).await;
    assert_eq!(app1.hits(), hits + 1);
}

/// `get_block("/")` with `fields` (name, value) after its pseudo-fields.
fn get_with(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut block = get_block("/");
    for (name, value) in fields {
        block.extend(literal(name, value));
    }
    block
}

#[tokio::test]
async fn an_uppercase_field_name_is_refused_on_its_stream() {
    bounded(async {
        let block = get_with(&[("X-Upper", "1")]);
        refused_on_its_stream("uppercase name", block, true, &[], true).await;
    })
    .await;
}

#[tokio::test]
async fn a_connection_field_is_refused_on_its_stream() {
    bounded(async {
        let block = get_with(&[("connection", "keep-alive")]);
        refused_on_its_stream("connection: keep-alive", block, true, &[], true).await;
    })
    .await;
}

#[tokio::test]
async fn transfer_encoding_is_refused_on_its_stream() {
    bounded(async {
        let block = get_with(&[("transfer-encoding", "chunked")]);
        refused_on_its_stream("transfer-encoding", block, true, &[], true).await;
    })
    .await;
}

/// `te` may only say `trailers` (RFC 9113, section 8.2.2).
#[tokio::test]
async fn te_other_than_trailers_is_refused_on_its_stream() {
    bounded(async {
        let block = get_with(&[("te", "gzip")]);
        refused_on_its_stream("te: gzip", block, true, &[], true).await;
        let (_app1, lb) = one_backend("").await;
        let mut h2 = H2::connect(lb.addr).await;
        h2.request(1, &get_with(&[("te", "trailers")]), true).await;
        assert_eq!(h2.response(1).await.status, 200, "te: trailers");
    })
    .await;
}

#[tokio::test]
async fn a_missing_path_is_refused_on_its_stream() {
    bounded(async {
        let mut block = vec![METHOD_GET, SCHEME_HTTP];
        block.extend(literal(":authority", "localhost"));
        refused_on_its_stream("no :path", block, true, &[], true).await;
    })
    .await;
}

#[tokio::test]
async fn a_missing_method_is_refused_on_its_stream() {
    bounded(async {
        let mut block = vec![SCHEME_HTTP, PATH_ROOT];
        block.extend(literal(":authority", "localhost"));
        refused_on_its_stream("no :method", block, true, &[], true).await;
    })
    .await;
}

#[tokio::test]
async fn a_missing_scheme_is_refused_on_its_stream() {
    bounded(async {
        let mut block = vec![METHOD_GET, PATH_ROOT];
        block.extend(literal(":authority", "localhost"));
        refused_on_its_stream("no :scheme", block, true, &[], true).await;
    })
    .await;
}

#[tokio::test]
async fn a_pseudo_field_after_a_regular_one_is_refused_on_its_stream() {
    bounded(async {
        let mut block = vec![METHOD_GET, SCHEME_HTTP];
        block.extend(literal("x-early", "1"));
        block.push(PATH_ROOT);
        refused_on_its_stream("pseudo after regular", block, true, &[], true).await;
    })
    .await;
}

#[tokio::test]
async fn an_unknown_pseudo_field_is_refused_on_its_stream() {
    bounded(async {
        let mut block = get_block("/");
        block.extend(literal(":foo", "bar"));
        refused_on_its_stream(":foo", block, true, &[], true).await;
    })
    .await;
}

/// DATA longer than the Content-Length (RFC 9113, section 8.1.1). The head
/// may have gone to the backend before the DATA was read: hits not checked.
#[tokio::test]
async fn data_longer_than_content_length_is_refused_on_its_stream() {
    bounded(async {
        let mut block = request_block("POST", "/echo");
        block.extend(literal("content-length", "5"));
        let after = data(1, b"hello world", true);
        refused_on_its_stream("DATA over content-length", block, false, &after, false).await;
    })
    .await;
}

/// END_STREAM before the Content-Length's bytes have come.
#[tokio::test]
async fn data_shorter_than_content_length_is_refused_on_its_stream() {
    bounded(async {
        let mut block = request_block("POST", "/echo");
        block.extend(literal("content-length", "20"));
        let after = data(1, b"hello", true);
        refused_on_its_stream("DATA under content-length", block, false, &after, false).await;
    })
    .await;
}

/// DATA on a stream the client ended (half-closed remote): STREAM_CLOSED,
/// as a stream error or a connection error (RFC 9113, section 5.1).
#[tokio::test]
async fn data_after_end_stream_is_stream_closed() {
    bounded(async {
        let (_app1, lb) = one_backend("").await;
        let mut h2 = H2::connect(lb.addr).await;
        let mut bytes = headers(1, &get_block("/slow?ms=500"), true);
        bytes.extend(data(1, b"x", false));
        h2.send(&bytes).await;
        // A response may come first, if the backend was quicker.
        let got = loop {
            match h2.outcome(1).await {
                Outcome::Status(_) => continue,
                other => break other,
            }
        };
        eprintln!("DATA after END_STREAM: {got:?}");
        match got {
            Outcome::Reset(STREAM_CLOSED) => assert_served(&mut h2, 3).await,
            Outcome::GoAway(STREAM_CLOSED) => assert_serves_new_connections(lb.addr).await,
            other => panic!("{other:?}"),
        }
    })
    .await;
}

/// A `:path` with a character RFC 3986 keeps out of URIs is malformed, as
/// such a target is over HTTP/1.1: reset on its stream, never forwarded.
#[tokio::test]
async fn a_path_with_characters_uris_may_not_have_is_refused() {
    bounded(async {
        for path in ["/t#frag", "/t{x}", "/t|"] {
            refused_on_its_stream(path, request_block("GET", path), true, &[], true).await;
        }
    })
    .await;
}

/// A request body that stops coming for `client_idle` is answered 408 on
/// its stream, as over HTTP/1.1 (it was a 400).
#[tokio::test]
async fn a_request_body_that_stalls_gets_408() {
    bounded(async {
        let (_app1, lb) = one_backend("[timeouts]\nclient_idle = \"500ms\"\n").await;
        let mut h2 = H2::connect(lb.addr).await;
        let mut block = request_block("POST", "/echo");
        block.extend(literal("content-length", "10"));
        h2.request(1, &block, false).await;
        h2.send(&data(1, b"abc", false)).await;
        assert_eq!(h2.outcome(1).await, Outcome::Status(408));
    })
    .await;
}

/// A field section over `[limits] max_header_bytes` gets SPEC.md's 431, on
/// its stream; the backend sees nothing.
#[tokio::test]
async fn a_field_section_over_max_header_bytes_gets_431() {
    bounded(async {
        let (app1, lb) = one_backend("[limits]\nmax_header_bytes = 8192\n").await;
        let mut h2 = H2::connect(lb.addr).await;
        let big = "a".repeat(10_000);
        h2.request(1, &get_with(&[("x-big", &big)]), true).await;
        let got = h2.outcome(1).await;
        eprintln!("header list over max_header_bytes: {got:?}");
        assert_eq!(got, Outcome::Status(431));
        assert_eq!(app1.hits(), 0);
        assert_served(&mut h2, 3).await;
    })
    .await;
}

/// More fields than an HTTP/1 head may have (100) get 431 too, however
/// large `max_header_bytes` is: 24,577 distinct names within a 900 KB limit
/// panicked the connection's task (a HeaderMap holds at most 24,576), which
/// answered nothing and dropped the connection.
#[tokio::test]
async fn more_fields_than_an_http1_head_gets_431() {
    bounded(async {
        let (app1, lb) = one_backend("[limits]\nmax_header_bytes = 900000\n").await;
        let mut h2 = H2::connect(lb.addr).await;
        let names: Vec<String> = (0..101).map(|i| format!("x-{i}")).collect();
        let fields: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "")).collect();
        h2.request(1, &get_with(&fields), true).await;
        assert_eq!(h2.outcome(1).await, Outcome::Status(431));
        let names: Vec<String> = (0..24_577).map(|i| format!("{i:x}")).collect();
        let fields: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "")).collect();
        let block = get_with(&fields);
        let mut bytes = frame(HEADERS, END_STREAM, 3, &block[..16_384]);
        for (i, piece) in block[16_384..].chunks(16_384).enumerate() {
            let last = 16_384 * (i + 2) >= block.len();
            bytes.extend(frame(
                CONTINUATION,
                if last { END_HEADERS } else { 0 },
                3,
                piece,
            ));
        }
        h2.send(&bytes).await;
        assert_eq!(h2.outcome(3).await, Outcome::Status(431));
        assert_eq!(app1.hits(), 0);
        assert_served(&mut h2, 5).await;
    })
    .await;
}

// ---------------------------------------------------------------------------
// 7. Resets and floods

/// A client's RST_STREAM in the middle of a response body ends that stream
/// alone: a stream in flight beside it and a new one are answered.
#[tokio::test]
async fn a_reset_mid_response_leaves_the_other_streams_alone() {
    bounded(async {
        let backend = ScriptedBackend::spawn(|r| match r.target.as_str() {
            "/drip" => vec![
                write("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"),
                Step::Pause(Duration::from_secs(5)),
                write("0\r\n\r\n"),
            ],
            "/slow" => {
                let mut steps = vec![Step::Pause(Duration::from_millis(300))];
                steps.extend(ok("slow"));
                steps
            }
            _ => ok("ok"),
        })
        .await;
        let lb = scripted_lb(&backend).await;
        let mut h2 = H2::connect(lb.addr).await;
        h2.request(1, &get_block("/drip"), true).await;
        h2.request(3, &get_block("/slow"), true).await;
        loop {
            let f = h2.next_for(1).await.expect("closed before the first DATA");
            assert!(f.kind != RST_STREAM && f.kind != GOAWAY, "{f:?}");
            if f.kind == DATA && f.stream == 1 {
                assert_eq!(f.content(), b"hello");
                break;
            }
        }
        h2.send(&rst_stream(1, CANCEL)).await;
        let slow = h2.response(3).await;
        assert_eq!((slow.status, &slow.body[..]), (200, &b"slow"[..]));
        let after = h2.get(5, "/after").await;
        assert_eq!((after.status, &after.body[..]), (200, &b"ok"[..]));
    })
    .await;
}

/// 2,000 HEADERS each followed at once by its RST_STREAM ("rapid reset",
/// CVE-2023-44487): the server ends the connection with GOAWAY
/// ENHANCE_YOUR_CALM or PROTOCOL_ERROR, or survives it and still answers;
/// either way a new connection is served.
#[tokio::test]
async fn a_rapid_reset_flood_is_refused_or_survived() {
    bounded(async {
        let (app1, lb) = one_backend("").await;
        let mut h2 = H2::connect(lb.addr).await;
        let mut burst = Vec::new();
        for i in 0..2000u32 {
            let stream = 1 + 2 * i;
            burst.extend(headers(stream, &get_block("/"), true));
            burst.extend(rst_stream(stream, CANCEL));
        }
        let all_sent = h2.send_lossy(&burst).await;
        let end = loop {
            match h2.next_within(Duration::from_secs(1)).await {
                None => break None,
                Some(None) => break Some(Outcome::Closed),
                Some(Some(f)) if f.kind == GOAWAY => {
                    break Some(Outcome::GoAway(f.error_code().unwrap_or(u32::MAX)))
                }
                Some(Some(_)) => {}
            }
        };
        eprintln!(
            "rapid reset: {end:?}, all sent {all_sent}, backend hits {}",
            app1.hits()
        );
        match end {
            Some(Outcome::GoAway(code)) => assert!(
                code == ENHANCE_YOUR_CALM || code == PROTOCOL_ERROR,
                "GOAWAY {}",
                code_name(code)
            ),
            None => {
                assert!(all_sent);
                assert_served(&mut h2, 4001).await;
            }
            Some(other) => panic!("{other:?} without a GOAWAY"),
        }
        assert_serves_new_connections(lb.addr).await;
    })
    .await;
}

/// 10,000 PINGs written without reading a single ACK: the server answers
/// them (each with its own payload, in order), stops reading while its ACKs
/// are not taken, or closes with a GOAWAY; it does not queue without bound,
/// and still serves, in bounded time.
#[tokio::test]
async fn a_ping_flood_is_answered_or_refused_in_bounded_time() {
    bounded(async {
        let (_app1, lb) = one_backend("").await;
        let mut h2 = H2::connect(lb.addr).await;
        let mut flood = Vec::with_capacity(10_000 * 17);
        for i in 0..10_000u64 {
            flood.extend(frame(PING, 0, 0, &i.to_be_bytes()));
        }
        let all_sent = h2.send_lossy(&flood).await;
        let mut acks = 0u64;
        let end = loop {
            match h2.next_within(Duration::from_secs(1)).await {
                None => break None,
                Some(None) => break Some(Outcome::Closed),
                Some(Some(f)) if f.kind == GOAWAY => {
                    break Some(Outcome::GoAway(f.error_code().unwrap_or(u32::MAX)))
                }
                Some(Some(f)) if f.kind == PING => {
                    assert!(f.has(ACK), "{f:?}");
                    let n = u64::from_be_bytes(f.payload[..8].try_into().unwrap());
                    assert!(n >= acks && n < 10_000, "ACK {n} after {acks}");
                    acks = n + 1;
                    if acks == 10_000 {
                        break None;
                    }
                }
                Some(Some(_)) => {}
            }
        };
        eprintln!("PING flood: all sent {all_sent}, last ACK {acks}, end {end:?}");
        match end {
            None if all_sent => assert_served(&mut h2, 1).await,
            // Stopped reading mid-frame: this connection is spent.
            None => {}
            Some(Outcome::GoAway(code)) => {
                assert!(
                    code == ENHANCE_YOUR_CALM || code == PROTOCOL_ERROR,
                    "{code}"
                )
            }
            Some(other) => panic!("{other:?} without a GOAWAY"),
        }
        assert_serves_new_connections(lb.addr).await;
    })
    .await;
}

// ---------------------------------------------------------------------------
// 8. What must be ignored, and a graceful end

/// Frames of unknown types (on the connection, on an idle stream, between
/// requests) and PRIORITY frames and fields change nothing (RFC 9113,
/// sections 4.1, 5.5 and 5.3.2).
#[tokio::test]
async fn unknown_frames_and_priority_are_ignored() {
    bounded(async {
        let (_app1, lb) = one_backend("").await;
        let mut h2 = H2::connect(lb.addr).await;
        let mut bytes = frame(0xfa, 0xff, 0, b"whatever");
        bytes.extend(frame(0x20, 0, 1, b"x"));
        // Stream 1, idle, made to depend on stream 0 with weight 16.
        bytes.extend(frame(PRIORITY, 0, 1, &[0, 0, 0, 0, 15]));
        h2.send(&bytes).await;
        assert_served(&mut h2, 1).await;

        // HEADERS with the PRIORITY flag and its five bytes.
        let mut payload = vec![0x80, 0, 0, 1, 255];
        payload.extend(get_block("/"));
        h2.send_frame(
            HEADERS,
            END_HEADERS | END_STREAM | PRIORITY_FLAG,
            3,
            &payload,
        )
        .await;
        let resp = h2.response(3).await;
        assert_eq!((resp.status, &resp.body[..]), (200, &b"app1"[..]));

        // PRIORITY on a closed stream, an unknown frame on another.
        let mut bytes = frame(PRIORITY, 0, 1, &[0, 0, 0, 3, 0]);
        bytes.extend(frame(0xbb, 0, 3, &[]));
        h2.send(&bytes).await;
        assert_served(&mut h2, 5).await;
    })
    .await;
}

/// After a GOAWAY from the client (it accepts no pushed streams: last stream
/// 0), the request it has in flight is still answered whole.
#[tokio::test]
async fn a_goaway_from_the_client_lets_its_stream_finish() {
    bounded(async {
        let (_app1, lb) = one_backend("").await;
        let mut h2 = H2::connect(lb.addr).await;
        h2.request(1, &get_block("/slow?ms=300"), true).await;
        let mut goaway = 0u32.to_be_bytes().to_vec();
        goaway.extend(NO_ERROR.to_be_bytes());
        h2.send_frame(GOAWAY, 0, 0, &goaway).await;
        let resp = h2.response(1).await;
        assert_eq!((resp.status, &resp.body[..]), (200, &b"app1"[..]));
    })
    .await;
}

/// A stream the client opens after its own GOAWAY is refused
/// (REFUSED_STREAM: not processed, the client may send it elsewhere), the
/// one in flight finishes, and limpet says GOAWAY before it closes (RFC
/// 9113, section 6.8). The new stream was dropped without a word and the
/// connection closed without a GOAWAY.
#[tokio::test]
async fn a_stream_after_the_clients_goaway_is_refused_and_limpet_says_goaway() {
    bounded(async {
        let (app1, lb) = one_backend("").await;
        let mut h2 = H2::connect(lb.addr).await;
        h2.request(1, &get_block("/slow?ms=300"), true).await;
        let mut goaway = 0u32.to_be_bytes().to_vec();
        goaway.extend(NO_ERROR.to_be_bytes());
        h2.send_frame(GOAWAY, 0, 0, &goaway).await;
        h2.request(3, &get_block("/after"), true).await;
        assert_eq!(h2.outcome(3).await, Outcome::Reset(REFUSED_STREAM));
        let resp = h2.response(1).await;
        assert_eq!((resp.status, &resp.body[..]), (200, &b"app1"[..]));
        assert_eq!(h2.connection_error().await, Some(NO_ERROR));
        assert_eq!(app1.hits(), 1, "only stream 1 reached the backend");
    })
    .await;
}

/// limpet pushes nothing, so an even stream is idle for ever: RST_STREAM,
/// WINDOW_UPDATE or DATA on one is a connection error (RFC 9113, sections
/// 5.1, 6.9, 6.4), as on an odd stream not opened yet. They were ignored
/// once a higher odd stream had been opened.
#[tokio::test]
async fn frames_on_even_streams_are_protocol_errors() {
    bounded(async {
        let (_app1, lb) = one_backend("").await;
        for (name, bytes) in [
            ("RST_STREAM", rst_stream(2, 0x8)),
            ("WINDOW_UPDATE", window_update(2, 1)),
            ("DATA", data(2, b"x", false)),
        ] {
            let mut h2 = H2::connect(lb.addr).await;
            assert_served(&mut h2, 3).await;
            h2.send_lossy(&bytes).await;
            assert_eq!(h2.connection_error().await, Some(PROTOCOL_ERROR), "{name}");
        }
    })
    .await;
}

/// Empty CONTINUATION frames do not grow a header block, so its byte cap
/// never stopped them: with another stream in flight (which keeps the
/// connection's header timer off) a client could keep one block open for
/// ever, at a core's worth of CPU. A block may take 16 CONTINUATIONs with the
/// default `max_header_bytes`.
#[tokio::test]
async fn an_endless_header_block_of_empty_continuations_is_refused() {
    bounded(async {
        let (_app1, lb) = one_backend("").await;
        let mut h2 = H2::connect(lb.addr).await;
        h2.request(1, &get_block("/slow?ms=3000"), true).await;
        let mut bytes = headers(3, &get_block("/")[..2], true);
        bytes[4] &= !END_HEADERS;
        for _ in 0..1000 {
            bytes.extend(frame(CONTINUATION, 0, 3, &[]));
        }
        h2.send_lossy(&bytes).await;
        assert_eq!(h2.connection_error().await, Some(ENHANCE_YOUR_CALM));
        assert_serves_new_connections(lb.addr).await;
        // Split finely but within the limit (16 CONTINUATIONs), a block is
        // taken.
        let mut h2 = H2::connect(lb.addr).await;
        let block = get_block("/");
        assert!(block.len() > 17, "a {}-byte block", block.len());
        let mut bytes = headers(1, &block[..1], true);
        bytes[4] &= !END_HEADERS;
        for i in 1..16 {
            bytes.extend(frame(CONTINUATION, 0, 1, &block[i..i + 1]));
        }
        bytes.extend(frame(CONTINUATION, END_HEADERS, 1, &block[16..]));
        h2.send(&bytes).await;
        let resp = h2.response(1).await;
        assert_eq!(resp.status, 200);
    })
    .await;
}

/// Empty DATA frames without END_STREAM carry nothing: a flood of them
/// costs CPU alone (CVE-2019-9518). More than 16 in a row end the
/// connection with ENHANCE_YOUR_CALM; a few, and one that ends a stream,
/// are fine. They were taken without limit.
#[tokio::test]
async fn a_flood_of_empty_data_frames_is_refused() {
    bounded(async {
        let (_app1, lb) = one_backend("").await;
        let mut h2 = H2::connect(lb.addr).await;
        let mut block = request_block("POST", "/echo");
        block.extend(literal("content-length", "2"));
        h2.request(1, &block, false).await;
        let mut bytes = Vec::new();
        for _ in 0..4 {
            bytes.extend(frame(DATA, 0, 1, &[]));
        }
        bytes.extend(data(1, b"ok", false));
        bytes.extend(frame(DATA, END_STREAM, 1, &[]));
        h2.send(&bytes).await;
        assert_eq!(h2.response(1).await.status, 200);

        let mut h2 = H2::connect(lb.addr).await;
        h2.request(1, &request_block("POST", "/echo"), false).await;
        let mut bytes = Vec::new();
        for _ in 0..1000 {
            bytes.extend(frame(DATA, 0, 1, &[]));
        }
        h2.send_lossy(&bytes).await;
        assert_eq!(h2.connection_error().await, Some(ENHANCE_YOUR_CALM));
        assert_serves_new_connections(lb.addr).await;
    })
    .await;
}

/// A PRIORITY frame making a stream depend on itself is a PROTOCOL_ERROR
/// (RFC 7540, section 5.3.1), as the same in HEADERS is: on an idle stream,
/// which cannot be reset, for the connection. It was ignored.
#[tokio::test]
async fn a_stream_depending_on_itself_in_priority_is_a_protocol_error() {
    bounded(async {
        let (_app1, lb) = one_backend("").await;
        let mut h2 = H2::connect(lb.addr).await;
        assert_served(&mut h2, 1).await;
        h2.send_frame(PRIORITY, 0, 5, &[0, 0, 0, 5, 16]).await;
        assert_eq!(h2.connection_error().await, Some(PROTOCOL_ERROR));
        assert_serves_new_connections(lb.addr).await;
    })
    .await;
}

/// `OPTIONS *` is routed as `/`, as over HTTP/1.1, and reaches the backend;
/// HTTP/2 routed it by the path `*` and answered 404 (no route) where the
/// config has only routes under `/`.
#[tokio::test]
async fn options_star_is_routed_like_over_http1() {
    bounded(async {
        let (app1, lb) = one_backend("").await;
        let mut h2 = H2::connect(lb.addr).await;
        h2.request(1, &request_block("OPTIONS", "*"), true).await;
        let resp = h2.response(1).await;
        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(app1.hits(), 1);
    })
    .await;
}

// ---------------------------------------------------------------------------
// 9. HEAD

/// HEAD gets HEADERS with END_STREAM and no DATA, with the backend's
/// Content-Length.
#[tokio::test]
async fn head_gets_headers_with_end_stream_and_the_backends_length() {
    bounded(async {
        let backend = ScriptedBackend::spawn(|_| {
            vec![write(
                "HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nContent-Type: text/plain\r\n\r\n",
            )]
        })
        .await;
        let lb = scripted_lb(&backend).await;
        let mut h2 = H2::connect(lb.addr).await;
        for stream in [1, 3] {
            h2.request(stream, &request_block("HEAD", "/h"), true).await;
            let resp = h2.response(stream).await;
            assert_eq!(resp.status, 200, "{resp:?}");
            assert_eq!(resp.frames.len(), 1, "{:?}", resp.frames);
            assert_eq!(resp.frames[0].kind, HEADERS);
            assert!(resp.frames[0].has(END_STREAM));
            assert_eq!(resp.field("content-length"), Some("1234"), "{resp:?}");
        }
        assert_eq!(backend.received()[0].method, "HEAD");
    })
    .await;
}

// ---------------------------------------------------------------------------
// 10. Regressions: what a review of the server found (each test failed
// before the fix)

/// A backend whose answer to anything but the health check is a 100 MB body,
/// written as fast as limpet takes it; the receiver hears when limpet lets go
/// of that backend socket (its read side ends, or a write fails).
async fn endless_backend() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let addr = raw_backend(move |mut conn| {
        let tx = tx.clone();
        async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let end = loop {
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                let health = buf.starts_with(b"GET /health ");
                buf.drain(..end);
                if !health {
                    break;
                }
                let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                if conn.write_all(ok).await.is_err() {
                    return;
                }
            }
            let head = b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n";
            if conn.write_all(head).await.is_err() {
                let _ = tx.send(());
                return;
            }
            let (mut rd, mut wr) = conn.into_split();
            let slice = vec![b'x'; 16 * 1024];
            let writing = async { while wr.write_all(&slice).await.is_ok() {} };
            let reading = async {
                let mut sink = [0u8; 1024];
                while matches!(rd.read(&mut sink).await, Ok(n) if n > 0) {}
            };
            tokio::select! {
                _ = writing => {}
                _ = reading => {}
            }
            let _ = tx.send(());
        }
    })
    .await;
    (addr, rx)
}

/// A client that reads the first 64 KiB of a long download (its default
/// window), never opens its window and closes the connection: limpet ends
/// the connection at once, so the backend socket is closed and the
/// connection leaves `limpet_downstream_connections` within a couple of
/// seconds, long before `client_idle` (60 s here). Before the fix the
/// stream waiting for window held both until `client_idle`.
#[tokio::test]
async fn a_client_gone_mid_download_releases_the_backend_at_once() {
    bounded(async {
        let (backend, mut closed) = endless_backend().await;
        let top = "[timeouts]\nclient_idle = \"60s\"\n";
        let lb = TestLb::start(&common::wire::config(backend, top, "")).await;
        let listener = lb.addr.to_string();
        let gauge = lb
            .limpet
            .metrics
            .downstream_connections
            .with_label_values(&[&listener]);
        let mut h2 = H2::connect(lb.addr).await;
        h2.request(1, &get_block("/endless"), true).await;
        let mut got = 0;
        while got < 65_535 {
            let f = h2.next().await.expect("closed mid-download");
            assert!(f.kind != RST_STREAM && f.kind != GOAWAY, "{f:?}");
            if f.kind == DATA && f.stream == 1 {
                got += f.payload.len();
            }
        }
        assert_eq!(got, 65_535, "DATA beyond the client's window");
        // Nothing more may come; what does is read, so the close is a FIN.
        while let Some(Some(f)) = h2.next_within(Duration::from_millis(200)).await {
            assert!(f.kind != DATA, "DATA beyond the client's window: {f:?}");
        }
        assert_eq!(gauge.get(), 1, "the client's connection");
        assert!(
            closed.try_recv().is_err(),
            "the backend socket closed early"
        );
        drop(h2);
        let started = std::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(3), closed.recv())
            .await
            .expect("limpet still holds the backend socket 3 s after the client left");
        eprintln!(
            "backend socket closed {:?} after the client",
            started.elapsed()
        );
        let released = eventually(Duration::from_secs(2), || async { gauge.get() == 0 }).await;
        assert!(
            released,
            "limpet_downstream_connections still {}",
            gauge.get()
        );
    })
    .await;
}

/// Frames the client sent on streams limpet had reset, before it heard, are
/// dropped: 40 malformed POSTs (an uppercase field name, each reset with
/// PROTOCOL_ERROR) followed by DATA on each leave the slow GET on stream 1
/// and the connection alone (no GOAWAY). Before the fix limpet remembered
/// its last 32 resets only, and DATA on an older one ended the connection
/// with STREAM_CLOSED.
#[tokio::test]
async fn data_on_streams_limpet_reset_is_ignored() {
    bounded(async {
        let (app1, lb) = one_backend("").await;
        let mut h2 = H2::connect(lb.addr).await;
        h2.request(1, &get_block("/slow?ms=800"), true).await;
        let mut bad = request_block("POST", "/echo");
        bad.extend(literal("X-Upper", "1"));
        let refused: Vec<u32> = (0..40).map(|i| 3 + 2 * i).collect();
        let mut burst = Vec::new();
        for &stream in &refused {
            burst.extend(headers(stream, &bad, false));
        }
        for &stream in &refused {
            burst.extend(data(stream, b"hello", true));
        }
        h2.send(&burst).await;
        for &stream in &refused {
            let got = h2.outcome(stream).await;
            assert_eq!(got, Outcome::Reset(PROTOCOL_ERROR), "stream {stream}");
        }
        let resp = h2.response(1).await;
        assert_eq!((resp.status, &resp.body[..]), (200, &b"app1"[..]));
        assert_served(&mut h2, 83).await;
        let goaways: Vec<&Frame> = h2.seen.iter().filter(|f| f.kind == GOAWAY).collect();
        assert!(goaways.is_empty(), "{goaways:?}");
        assert_eq!(app1.hits(), 2, "a malformed request reached the backend");
    })
    .await;
}

/// At graceful shutdown (GOAWAY NO_ERROR, last stream 1), a client that had
/// not heard yet opens stream 3 and sends its DATA: both are dropped, and
/// the slow response on stream 1 still arrives whole, with no error GOAWAY
/// and no RST_STREAM. Before the fix the DATA on stream 3 (a stream limpet
/// never took) ended the connection with STREAM_CLOSED, losing stream 1.
#[tokio::test]
async fn frames_after_a_graceful_goaway_leave_the_stream_in_flight_whole() {
    bounded(async {
        let (app1, lb) = one_backend("").await;
        let mut h2 = H2::connect(lb.addr).await;
        let mut bytes = headers(1, &get_block("/slow?ms=800"), true);
        // Its ACK says limpet has taken stream 1.
        bytes.extend(frame(PING, 0, 0, b"taken!!!"));
        h2.send(&bytes).await;
        h2.until_ping_ack().await;
        let stopping = tokio::spawn(lb.limpet.shutdown());
        let goaway = loop {
            let f = h2.next_for(1).await.expect("closed before the GOAWAY");
            assert!(f.stream == 0, "{f:?} before the GOAWAY");
            if f.kind == GOAWAY {
                break f;
            }
        };
        assert_eq!(goaway.error_code(), Some(NO_ERROR), "{goaway:?}");
        assert_eq!(&goaway.payload[..4], &1u32.to_be_bytes(), "last stream");
        let mut late = headers(3, &request_block("POST", "/echo"), false);
        late.extend(data(3, b"too late", true));
        h2.send(&late).await;
        let resp = h2.response(1).await;
        assert_eq!((resp.status, &resp.body[..]), (200, &b"app1"[..]));
        // The rest, up to the close: no error, nothing on stream 3.
        while let Some(Some(f)) = h2.next_within(Duration::from_secs(2)).await {
            assert!(f.kind != RST_STREAM || f.stream == 3, "{f:?}");
            assert!(f.kind != HEADERS && f.kind != DATA, "{f:?}");
            if f.kind == GOAWAY {
                assert_eq!(f.error_code(), Some(NO_ERROR), "{f:?}");
            }
        }
        // Closed: limpet's lingering close need not wait for it.
        drop(h2);
        tokio::time::timeout(Duration::from_secs(5), stopping)
            .await
            .expect("shutdown finished")
            .unwrap();
        assert_eq!(app1.hits(), 1, "stream 3 reached the backend");
    })
    .await;
}

/// "MadeYouReset" (CVE-2025-8671): the client makes limpet reset its streams
/// (here with a WINDOW_UPDATE of 0 on each, a stream error) instead of
/// resetting them itself. 300 rounds, in flights of 50 (each closed by a
/// PING whose ACK says limpet has handled it, so that no more than 50 reset
/// streams are ever in flight), end the connection with GOAWAY
/// ENHANCE_YOUR_CALM, as 300 resets of its own would; a new connection is
/// served. Before the fix limpet's own resets did not count.
#[tokio::test]
async fn streams_limpet_resets_for_the_client_count_against_the_reset_budget() {
    bounded(async {
        let (_app1, lb) = one_backend("").await;
        let mut h2 = H2::connect(lb.addr).await;
        let mut resets = 0;
        let mut end = None;
        'flights: for flight in 0..6u32 {
            let mut burst = Vec::new();
            for i in 0..50 {
                let stream = 1 + 2 * (50 * flight + i);
                burst.extend(headers(stream, &get_block("/slow?ms=5000"), true));
                burst.extend(window_update(stream, 0));
            }
            burst.extend(frame(PING, 0, 0, &u64::from(flight).to_be_bytes()));
            // After the GOAWAY limpet may be gone: what it sent is read below.
            h2.send_lossy(&burst).await;
            loop {
                match h2.next().await {
                    None => break 'flights,
                    Some(f) if f.kind == GOAWAY => {
                        end = f.error_code();
                        break 'flights;
                    }
                    Some(f) if f.kind == RST_STREAM => {
                        assert_eq!(f.error_code(), Some(PROTOCOL_ERROR), "{f:?}");
                        resets += 1;
                    }
                    Some(f) if f.kind == PING && f.has(ACK) => break,
                    Some(f) => assert!(f.kind != HEADERS && f.kind != DATA, "{f:?}"),
                }
            }
        }
        eprintln!(
            "MadeYouReset: {resets} resets, then {:?}",
            end.map(code_name)
        );
        assert_eq!(
            end,
            Some(ENHANCE_YOUR_CALM),
            "after {resets} resets made by limpet: {:?}",
            end.map(code_name)
        );
        assert!(resets > 200, "GOAWAY after {resets} resets");
        assert_serves_new_connections(lb.addr).await;
    })
    .await;
}

/// One DATA frame of `body` on `stream` with `pad` bytes of padding.
fn padded_data(stream: u32, body: &[u8], pad: u8, end_stream: bool) -> Vec<u8> {
    let mut payload = vec![pad];
    payload.extend_from_slice(body);
    payload.resize(payload.len() + pad as usize, 0);
    let flags = PADDED | if end_stream { END_STREAM } else { 0 };
    frame(DATA, flags, stream, &payload)
}

/// A padded POST: 1,100 DATA frames of 250 bytes of padding alone (275 KB,
/// more than the stream's 256 KiB window), then 2,000 frames of 1 byte of
/// data and 250 of padding each. limpet must give the window back as the
/// frames arrive; the client keeps to the windows, and the backend gets
/// exactly the 2,000 data bytes. Before the fix the stream's window came
/// back only as data was passed on, so padding alone stalled the upload.
#[tokio::test]
async fn a_heavily_padded_upload_completes() {
    bounded(async {
        const N: usize = 2000;
        const PADDING_ALONE: usize = 1100;
        let backend = sizing_backend().await;
        let lb = scripted_lb(&backend).await;
        let mut h2 = H2::connect(lb.addr).await;
        let mut stream_window = h2
            .server_setting(SETTINGS_INITIAL_WINDOW_SIZE)
            .unwrap_or(65_535) as i64;
        let mut conn_window: i64 = 65_535;
        for f in &h2.seen {
            if let (Some(n), 0) = (f.increment(), f.stream) {
                conn_window += n as i64;
            }
        }
        assert!(
            stream_window < 250 * PADDING_ALONE as i64,
            "the window outgrows the padding"
        );
        let mut block = request_block("POST", "/up");
        block.extend(literal("content-length", &N.to_string()));
        h2.request(1, &block, false).await;
        let body = pattern(N);
        let padding_alone = (0..PADDING_ALONE).map(|_| padded_data(1, &[], 250, false));
        let with_data = body
            .iter()
            .enumerate()
            .map(|(i, byte)| padded_data(1, &[*byte], 250, i == N - 1));
        let mut pending = Vec::new();
        for (i, f) in padding_alone.chain(with_data).enumerate() {
            let len = (f.len() - 9) as i64;
            while conn_window.min(stream_window) < len {
                h2.send(&std::mem::take(&mut pending)).await;
                let got = h2.next_within(Duration::from_secs(3)).await;
                let f = got
                    .unwrap_or_else(|| panic!("stalled after {i} frames: no WINDOW_UPDATE"))
                    .expect("closed mid-upload");
                match (f.kind, f.increment(), f.stream) {
                    (WINDOW_UPDATE, Some(n), 0) => conn_window += n as i64,
                    (WINDOW_UPDATE, Some(n), 1) => stream_window += n as i64,
                    (SETTINGS | PING, _, _) => {}
                    _ => panic!("{f:?} mid-upload after {i} frames"),
                }
            }
            conn_window -= len;
            stream_window -= len;
            pending.extend(f);
        }
        h2.send(&pending).await;
        let resp = h2.response(1).await;
        assert_eq!(
            (resp.status, &resp.body[..]),
            (200, N.to_string().as_bytes())
        );
        let got = &backend.received()[0];
        assert_eq!(got.header("content-length"), Some(&*N.to_string()));
        assert!(got.body == body, "the backend got other bytes: {got:?}");
    })
    .await;
}

/// A download that takes 3 s (slow chunks from the backend) is not cut by
/// `client_header = "1s"`, though the client's WINDOW_UPDATEs keep coming
/// while it runs. Before the fix the stream stopped counting as busy once
/// its response head had gone, and those WINDOW_UPDATEs started the
/// `client_header` clock of a new head.
#[tokio::test]
async fn a_long_download_is_not_cut_by_client_header() {
    bounded(async {
        const CHUNKS: usize = 30;
        const CHUNK: usize = 8 * 1024;
        let backend = ScriptedBackend::spawn(|_| {
            let body = pattern(CHUNKS * CHUNK);
            let mut steps = vec![write(format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                body.len()
            ))];
            for chunk in body.chunks(CHUNK) {
                steps.push(Step::Pause(Duration::from_millis(100)));
                steps.push(Step::Write(chunk.to_vec()));
            }
            steps
        })
        .await;
        let top = "[timeouts]\nclient_header = \"1s\"\n";
        let lb = TestLb::start(&common::wire::config(backend.addr, top, "")).await;
        let mut h2 = H2::connect(lb.addr).await;
        let started = std::time::Instant::now();
        // `response` answers each DATA frame with WINDOW_UPDATEs.
        let resp = h2.get(1, "/drip").await;
        let took = started.elapsed();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body.len(), CHUNKS * CHUNK);
        assert!(resp.body == pattern(CHUNKS * CHUNK), "other bytes");
        let data_frames = resp.frames.iter().filter(|f| f.kind == DATA).count();
        assert!(data_frames >= CHUNKS, "{data_frames} DATA frames");
        assert!(took > Duration::from_secs(2), "the download took {took:?}");
    })
    .await;
}

/// DATA on another stream between a HEADERS without END_HEADERS and its
/// CONTINUATION is a connection error (RFC 9113, section 6.2). Before the
/// fix DATA was let through the open header block.
#[tokio::test]
async fn data_inside_a_header_block_is_a_protocol_error() {
    bounded(async {
        let (_app1, lb) = one_backend("").await;
        let mut h2 = H2::connect(lb.addr).await;
        h2.request(1, &request_block("POST", "/echo"), false).await;
        let block = get_block("/");
        let mut bytes = frame(HEADERS, END_STREAM, 3, &block[..2]);
        bytes.extend(data(1, b"x", false));
        bytes.extend(frame(CONTINUATION, END_HEADERS, 3, &block[2..]));
        h2.send_lossy(&bytes).await;
        let got = h2.connection_error().await;
        assert_eq!(got, Some(PROTOCOL_ERROR), "{:?}", got.map(code_name));
        assert_serves_new_connections(lb.addr).await;
    })
    .await;
}

/// Unescaped UTF-8 in `:path` is forwarded as sent (as on HTTP/1), while a
/// space is a malformed request, reset with PROTOCOL_ERROR before it reaches
/// the backend. Before the fix any byte past ASCII was refused.
#[tokio::test]
async fn unescaped_utf8_in_path_is_forwarded_and_a_space_is_refused() {
    bounded(async {
        let backend = ScriptedBackend::spawn(|_| ok("ok")).await;
        let lb = scripted_lb(&backend).await;
        let mut h2 = H2::connect(lb.addr).await;
        let resp = h2.get(1, "/caf\u{e9}").await;
        assert_eq!((resp.status, &resp.body[..]), (200, &b"ok"[..]));
        h2.request(3, &get_block("/a b"), true).await;
        assert_eq!(h2.outcome(3).await, Outcome::Reset(PROTOCOL_ERROR));
        let after = h2.get(5, "/after").await;
        assert_eq!(after.status, 200);
        let targets: Vec<String> = backend.received().into_iter().map(|r| r.target).collect();
        assert_eq!(targets, ["/caf\u{e9}", "/after"]);
    })
    .await;
}

/// With MAX_CONCURRENT_STREAMS (128) streams open on a slow backend, the
/// client resets 10 and opens 10 new ones in the same flight: the new ones
/// are served, not refused. Before the fix the reset streams counted until
/// their futures had been dropped, after the frames of the flight.
#[tokio::test]
async fn streams_the_client_reset_free_their_slots_at_once() {
    bounded(async {
        let (app1, lb) = one_backend("").await;
        let mut h2 = H2::connect(lb.addr).await;
        let max = h2
            .server_setting(0x3)
            .expect("SETTINGS_MAX_CONCURRENT_STREAMS");
        assert_eq!(max, 128);
        let slow: Vec<u32> = (0..max).map(|i| 1 + 2 * i).collect();
        let mut burst = Vec::new();
        for &stream in &slow {
            burst.extend(headers(stream, &get_block("/slow?ms=1500"), true));
        }
        // Its ACK says every HEADERS before it was handled.
        burst.extend(frame(PING, 0, 0, b"opened!!"));
        h2.send(&burst).await;
        h2.until_ping_ack().await;
        let fresh: Vec<u32> = (0..10).map(|i| 1 + 2 * (max + i)).collect();
        let mut flight = Vec::new();
        for &stream in &slow[..10] {
            flight.extend(rst_stream(stream, CANCEL));
        }
        for &stream in &fresh {
            flight.extend(headers(stream, &get_block("/"), true));
        }
        h2.send(&flight).await;
        for &stream in &fresh {
            let resp = h2.response(stream).await;
            assert_eq!(
                (resp.status, &resp.body[..]),
                (200, &b"app1"[..]),
                "{stream}"
            );
        }
        for &stream in &slow[10..] {
            let resp = h2.response(stream).await;
            assert_eq!(resp.status, 200, "stream {stream}");
        }
        assert!(app1.hits() >= 10 + 118);
    })
    .await;
}

/// CONNECT over HTTP/2 (limpet offers no extended CONNECT) is limpet's own
/// 400: the backend sees nothing and the connection goes on.
#[tokio::test]
async fn connect_over_h2_is_answered_400() {
    bounded(async {
        let (app1, lb) = one_backend("").await;
        let mut h2 = H2::connect(lb.addr).await;
        let mut block = literal(":method", "CONNECT");
        block.extend(literal(":authority", "db.internal:5432"));
        h2.request(1, &block, false).await;
        let resp = h2.response(1).await;
        assert_eq!(resp.status, 400, "{resp:?}");
        assert_served(&mut h2, 3).await;
        assert_eq!(app1.hits(), 1, "only stream 3 reached the backend");
    })
    .await;
}
