//! HTTP/1.1 on the wire: what clients and backends see of limpet's HTTP/1
//! listeners, byte for byte. Every test writes exact request bytes on a raw
//! connection to a real limpet in front of a real backend (a scripted raw-TCP one,
//! see `common/scripted.rs`, where the answer must be unusual or the request the
//! backend got must be checked), and parses what comes back by hand
//! (`common/wire.rs`).
//!
//! These pin behaviour any HTTP/1.1 engine behind a listener must keep: framing
//! (Content-Length, chunked, close-delimited, bodiless statuses), keep-alive and
//! pipelining, 1xx interim responses, hop-by-hop headers, errors, and the
//! affinity cookie.
//!
//! Each test runs twice, against the plain `http` listener (`plain::…`) and
//! against the `https` listener over TLS with ALPN `http/1.1` (`tls::…`): one
//! HTTP/1 behaviour whatever carries the bytes.

mod common;

use std::time::Duration;

use common::scripted::{ok, write, ScriptedBackend, Step};
use common::wire::*;
use common::*;

both_sides!(
    keep_alive_serves_sequential_requests_on_one_connection,
    pipelined_requests_are_answered_in_order,
    a_chunked_response_with_extension_and_trailer_arrives_whole,
    a_close_delimited_response_arrives_whole,
    large_response_bodies_arrive_exactly,
    head_gets_headers_and_no_body,
    no_content_and_not_modified_have_no_body,
    interim_responses_from_the_backend_are_followed_by_the_final_one,
    a_client_expecting_100_continue_gets_it,
    content_length_request_bodies_reach_the_backend_exactly,
    a_chunked_request_body_reaches_the_backend_exactly,
    a_request_with_both_chunked_and_content_length_is_not_smuggled,
    client_connection_close_closes_after_the_response,
    backend_connection_close_does_not_close_the_client_connection,
    a_backend_closing_a_pooled_connection_is_invisible_to_a_get,
    hop_by_hop_headers_stop_at_limpet_in_both_directions,
    header_names_values_and_targets_pass_unchanged,
    a_malformed_request_on_a_kept_alive_connection_gets_400,
    an_oversized_head_on_a_kept_alive_connection_gets_431,
    http10_without_host_is_answered_and_closed,
    http10_keep_alive_keeps_the_connection,
    http10_never_gets_chunked,
    a_backend_sending_garbage_gets_502,
    a_backend_closing_before_answering_gets_502_or_503,
    a_truncated_response_body_is_not_passed_off_as_complete,
    a_response_with_both_chunked_and_content_length_is_framed_by_the_chunks,
    the_affinity_cookie_pins_and_is_stripped_on_the_wire,
    an_upgraded_connection_carries_bytes_both_ways_until_idle,
);

// ---------------------------------------------------------------------------
// Keep-alive and pipelining

/// (1) Twenty sequential requests on one client connection are all answered,
/// each with its own exact body; limpet keeps its backend connection too.
async fn keep_alive_serves_sequential_requests_on_one_connection(side: Side) {
    let backend = ScriptedBackend::spawn(|r| ok(format!("answer to {}", r.target))).await;
    let lb = lb_for(side, &backend).await;
    let mut wire = lb.connect().await;
    for i in 0..20 {
        let path = format!("/item/{}", "x".repeat(i));
        let resp = wire.exchange(get(&path)).await;
        assert_ok(&resp, &format!("answer to {path}"));
        assert_eq!(resp.version, "HTTP/1.1");
    }
    assert_eq!(backend.received().len(), 20);
    // Sequential requests reuse a pooled backend connection (allowing one
    // reconnect) rather than opening one per request.
    assert!(
        backend.connections_used() <= 2,
        "{} backend connections for 20 sequential requests",
        backend.connections_used()
    );
}

/// (2) Three requests written at once come back as three responses in request
/// order, even when the first is the slowest to answer.
async fn pipelined_requests_are_answered_in_order(side: Side) {
    let backend = ScriptedBackend::spawn(|r| {
        let mut steps = Vec::new();
        if r.target == "/p/1" {
            steps.push(Step::Pause(Duration::from_millis(300)));
        }
        steps.extend(ok(format!("body of {}", r.target)));
        steps
    })
    .await;
    let lb = lb_for(side, &backend).await;
    let mut wire = lb.connect().await;
    wire.send(format!("{}{}{}", get("/p/1"), get("/p/2"), get("/p/3")))
        .await;
    for i in 1..=3 {
        assert_ok(&wire.read().await, &format!("body of /p/{i}"));
    }
    // Then the connection still serves.
    assert_ok(&wire.exchange(get("/p/4")).await, "body of /p/4");
}

// ---------------------------------------------------------------------------
// Response framing

/// (3) A chunked response with a chunk extension and a trailer, streamed in
/// pieces, reaches the client as the exact payload, and the connection serves a
/// second request.
async fn a_chunked_response_with_extension_and_trailer_arrives_whole(side: Side) {
    let backend = ScriptedBackend::spawn(|r| {
        if r.target != "/chunked" {
            return ok("second");
        }
        let pause = Step::Pause(Duration::from_millis(30));
        vec![
            write(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\
                     Transfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n",
            ),
            write("5;name=value\r\nhello\r\n"),
            pause.clone(),
            write("1\r\n,\r\n"),
            pause.clone(),
            write("7\r\n world!\r\n"),
            pause,
            write("0\r\nX-Checksum: abc123\r\n\r\n"),
        ]
    })
    .await;
    let lb = lb_for(side, &backend).await;
    let mut wire = lb.connect().await;
    let resp = wire.exchange(get("/chunked")).await;
    assert_ok(&resp, "hello, world!");
    assert_eq!(resp.header("content-type"), Some("text/plain"));
    assert_ok(&wire.exchange(get("/next")).await, "second");
}

/// (4) A response with neither Content-Length nor chunking ends when the backend
/// closes. The client gets the whole body; limpet then either closes the client
/// connection too or re-frames the body, and then the connection serves again.
async fn a_close_delimited_response_arrives_whole(side: Side) {
    let backend = ScriptedBackend::spawn(|r| {
        if r.target != "/until-close" {
            return ok("second");
        }
        let pause = Step::Pause(Duration::from_millis(30));
        vec![
            write("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n"),
            pause.clone(),
            write("part one, "),
            pause,
            write("part two"),
            Step::Close,
        ]
    })
    .await;
    let lb = lb_for(side, &backend).await;
    let mut wire = lb.connect().await;
    let resp = wire.exchange(get("/until-close")).await;
    assert_ok(&resp, "part one, part two");
    if resp.framing != Framing::Close {
        assert_ok(&wire.exchange(get("/next")).await, "second");
    }
}

/// Large bodies (1 MiB) cross intact whichever way the backend frames them, by
/// length or in many chunks, with the client starting to read late so that
/// limpet's writes back up (backpressure, partial writes).
async fn large_response_bodies_arrive_exactly(side: Side) {
    let body: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 13 % 253) as u8).collect();
    let chunk_body = body.clone();
    let backend = ScriptedBackend::spawn(move |r| {
        if r.target == "/length" {
            return ok(&chunk_body);
        }
        let mut wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for chunk in chunk_body.chunks(10_000) {
            wire.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            wire.extend_from_slice(chunk);
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b"0\r\n\r\n");
        vec![Step::Write(wire)]
    })
    .await;
    let lb = lb_for(side, &backend).await;
    let mut wire = lb.connect().await;
    for path in ["/length", "/chunked", "/length"] {
        wire.send(get(path)).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let resp = wire.read().await;
        assert_eq!(resp.status, 200, "{path}: {resp:?}");
        assert!(resp.body == body, "{path}: the body differs: {resp:?}");
    }
}

/// (5) The answer to HEAD has the headers (Content-Length may be kept) and no body
/// bytes, though it announces 1234; the next request on the connection works.
async fn head_gets_headers_and_no_body(side: Side) {
    let backend = ScriptedBackend::spawn(|r| {
        if r.method == "HEAD" {
            vec![write(
                "HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nContent-Type: text/html\r\n\r\n",
            )]
        } else {
            ok("after head")
        }
    })
    .await;
    let lb = lb_for(side, &backend).await;
    let mut wire = lb.connect().await;
    for _ in 0..2 {
        wire.send("HEAD /page HTTP/1.1\r\nHost: wire.test\r\n\r\n")
            .await;
        let resp = wire.read_head().await;
        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(resp.header("content-type"), Some("text/html"));
        if let Some(len) = resp.header("content-length") {
            assert_eq!(len, "1234");
        }
        // Any body bytes would be taken for the next response's status line.
        assert_ok(&wire.exchange(get("/after")).await, "after head");
    }
    assert_eq!(backend.received()[0].method, "HEAD");
}

/// (6) 204 and 304 have no body, even a 304 carrying the Content-Length of the
/// representation; the next request on the connection works.
async fn no_content_and_not_modified_have_no_body(side: Side) {
    let backend = ScriptedBackend::spawn(|r| match r.target.as_str() {
        "/204" => vec![write("HTTP/1.1 204 No Content\r\nX-Done: yes\r\n\r\n")],
        "/304" => vec![write("HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\n\r\n")],
        "/304-with-length" => vec![write(
            "HTTP/1.1 304 Not Modified\r\nETag: \"v2\"\r\nContent-Length: 42\r\n\r\n",
        )],
        _ => ok("next"),
    })
    .await;
    let lb = lb_for(side, &backend).await;
    let mut wire = lb.connect().await;
    for (path, status, header) in [
        ("/204", 204, ("x-done", "yes")),
        ("/304", 304, ("etag", "\"v1\"")),
        ("/304-with-length", 304, ("etag", "\"v2\"")),
    ] {
        let req =
            format!("GET {path} HTTP/1.1\r\nHost: wire.test\r\nIf-None-Match: \"v0\"\r\n\r\n");
        let resp = wire.exchange(req).await;
        assert_eq!(resp.status, status, "{path}: {resp:?}");
        assert_eq!(resp.header(header.0), Some(header.1), "{path}: {resp:?}");
        assert!(resp.all("transfer-encoding").is_empty(), "{resp:?}");
        assert_ok(&wire.exchange(get("/next")).await, "next");
    }
}

/// (7) Interim responses from the backend (100 Continue, 103 Early Hints) do not
/// confuse the exchange: the client ends up with the final 200 and its body, and
/// the connection serves again. (Whether limpet relays them is its choice.)
async fn interim_responses_from_the_backend_are_followed_by_the_final_one(side: Side) {
    let backend = ScriptedBackend::spawn(|r| {
        let interim = match r.target.as_str() {
            "/continue" => "HTTP/1.1 100 Continue\r\n\r\n",
            "/hints" => "HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload; as=style\r\n\r\n",
            "/both" => {
                "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n"
            }
            _ => return ok("next"),
        };
        let mut steps = vec![write(interim), Step::Pause(Duration::from_millis(30))];
        steps.extend(ok(format!("final {}", r.target)));
        steps
    })
    .await;
    let lb = lb_for(side, &backend).await;
    let mut wire = lb.connect().await;
    for path in ["/continue", "/hints", "/both"] {
        let resp = wire.exchange(get(path)).await;
        assert_ok(&resp, &format!("final {path}"));
        // Relayed or not, only what the backend sent.
        assert!(
            resp.interim.iter().all(|s| [100, 103].contains(s)),
            "{resp:?}"
        );
        assert_ok(&wire.exchange(get("/next")).await, "next");
    }
}

/// A client that sends `Expect: 100-continue` and waits for the go-ahead gets
/// `100 Continue` (curl waits a second for it before each large upload), then
/// the final response; the backend gets the body.
async fn a_client_expecting_100_continue_gets_it(side: Side) {
    let backend = ScriptedBackend::spawn(|r| ok(format!("got {} bytes", r.body.len()))).await;
    let lb = lb_for(side, &backend).await;
    let mut wire = lb.connect().await;
    wire.send(
        "POST /upload HTTP/1.1\r\nHost: wire.test\r\nExpect: 100-continue\r\n\
             Content-Length: 11\r\n\r\n",
    )
    .await;
    let interim = wire.read_one(false).await.expect("an interim response");
    assert_eq!(interim.status, 100, "{interim:?}");
    wire.send("hello world").await;
    assert_ok(&wire.read().await, "got 11 bytes");
    assert_eq!(backend.received()[0].body, b"hello world");
}

// ---------------------------------------------------------------------------
// Request bodies

/// (8) POST bodies with Content-Length reach the backend byte for byte: small,
/// empty, 1 MiB, and one written slowly in three pieces; all on one connection.
async fn content_length_request_bodies_reach_the_backend_exactly(side: Side) {
    let backend = ScriptedBackend::spawn(|r| ok(format!("got {} bytes", r.body.len()))).await;
    let lb = lb_for(side, &backend).await;
    let mut wire = lb.connect().await;

    let small = b"0123456789".to_vec();
    assert_ok(&wire.exchange(post("/small", &small)).await, "got 10 bytes");

    assert_ok(&wire.exchange(post("/empty", b"")).await, "got 0 bytes");

    let big: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 7 % 251) as u8).collect();
    assert_ok(
        &wire.exchange(post("/big", &big)).await,
        "got 1048576 bytes",
    );

    let pieces = [&b"first ten|"[..], b"second ten", b"|third ten"];
    wire.send("POST /slow HTTP/1.1\r\nHost: wire.test\r\nContent-Length: 30\r\n\r\n")
        .await;
    for piece in pieces {
        tokio::time::sleep(Duration::from_millis(150)).await;
        wire.send(piece).await;
    }
    assert_ok(&wire.read().await, "got 30 bytes");

    let received = backend.received();
    assert_eq!(request_for(&received, "/small").body, small);
    assert_eq!(request_for(&received, "/empty").body, b"");
    assert!(
        request_for(&received, "/big").body == big,
        "1 MiB body differs"
    );
    assert_eq!(request_for(&received, "/slow").body, pieces.concat());
}

/// (9) A chunked request body (with a chunk extension and a trailer, sent in
/// pieces) reaches the backend as the same payload; the connection serves again.
async fn a_chunked_request_body_reaches_the_backend_exactly(side: Side) {
    let backend = ScriptedBackend::spawn(|r| ok(format!("got {} bytes", r.body.len()))).await;
    let lb = lb_for(side, &backend).await;
    let mut wire = lb.connect().await;
    wire.send("POST /upload HTTP/1.1\r\nHost: wire.test\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await;
    for piece in [
        "4;ext=1\r\nWiki\r\n",
        "5\r\npedia\r\n",
        "E\r\n in\r\n\r\nchunks.\r\n",
        "0\r\nX-Trailer: t\r\n\r\n",
    ] {
        tokio::time::sleep(Duration::from_millis(50)).await;
        wire.send(piece).await;
    }
    assert_ok(&wire.read().await, "got 23 bytes");
    let received = backend.received();
    assert_eq!(
        String::from_utf8_lossy(&received[0].body),
        "Wikipedia in\r\n\r\nchunks."
    );
    assert_ok(&wire.exchange(post("/after", b"x")).await, "got 1 bytes");
}

/// A request with both Transfer-Encoding: chunked and Content-Length (the
/// request smuggling pattern) is either refused with 400 or forwarded framed by
/// its chunks alone, and either way the connection is closed after the response
/// (RFC 9112, section 6.3): nothing after it can be read as another request.
async fn a_request_with_both_chunked_and_content_length_is_not_smuggled(side: Side) {
    let backend = ScriptedBackend::spawn(|r| ok(format!("got {} bytes", r.body.len()))).await;
    let lb = lb_for(side, &backend).await;
    let mut wire = lb.connect().await;
    wire.send(
        "POST /upload HTTP/1.1\r\nHost: wire.test\r\nContent-Length: 4\r\n\
             Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    let resp = wire.read().await;
    if resp.status != 400 {
        assert_ok(&resp, "got 5 bytes");
        let got = &backend.received()[0];
        assert_eq!(got.body, b"hello");
        assert!(
            !got.chunked || got.all("content-length").is_empty(),
            "forwarded with both framings: {got:?}"
        );
    }
    // A request written behind it goes unanswered.
    wire.send_lossy(get("/next")).await;
    assert!(wire.closed().await, "still open after an ambiguous request");
    assert_eq!(backend.received().len(), usize::from(resp.status != 400));
}

// ---------------------------------------------------------------------------
// Connection management

/// (10) `Connection: close` from the client: the response comes, then limpet
/// closes the connection.
async fn client_connection_close_closes_after_the_response(side: Side) {
    let backend = ScriptedBackend::spawn(|_| ok("bye")).await;
    let lb = lb_for(side, &backend).await;
    let mut wire = lb.connect().await;
    assert_ok(&wire.exchange(get("/first")).await, "bye");
    let resp = wire
        .exchange("GET /last HTTP/1.1\r\nHost: wire.test\r\nConnection: close\r\n\r\n")
        .await;
    assert_ok(&resp, "bye");
    assert!(wire.closed().await, "connection still open");
}

/// (11) A backend that answers `Connection: close` and closes does not end the
/// client's connection: the next request is answered on it, over a new backend
/// connection.
async fn backend_connection_close_does_not_close_the_client_connection(side: Side) {
    let backend = ScriptedBackend::spawn(|r| {
        if r.target == "/first" {
            vec![
                write("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nfirst"),
                Step::Close,
            ]
        } else {
            ok("second")
        }
    })
    .await;
    let lb = lb_for(side, &backend).await;
    let mut wire = lb.connect().await;
    let resp = wire.exchange(get("/first")).await;
    assert_ok(&resp, "first");
    assert!(
        !resp.connection_tokens().contains(&"close".to_string()),
        "the backend's close reached the client: {resp:?}"
    );
    assert_ok(&wire.exchange(get("/second")).await, "second");
    let received = backend.received();
    assert_ne!(received[0].conn, received[1].conn);
}

/// A backend that silently closes an idle keep-alive connection (its keep-alive
/// timeout ran out) costs a bodiless GET nothing: it is answered over a new
/// connection.
async fn a_backend_closing_a_pooled_connection_is_invisible_to_a_get(side: Side) {
    let backend = ScriptedBackend::spawn(|r| {
        let mut steps = ok(format!("answer to {}", r.target));
        steps.push(Step::Close);
        steps
    })
    .await;
    let lb = lb_for(side, &backend).await;
    let mut wire = lb.connect().await;
    for i in 0..5 {
        let path = format!("/n/{i}");
        assert_ok(
            &wire.exchange(get(&path)).await,
            &format!("answer to {path}"),
        );
    }
}

// ---------------------------------------------------------------------------
// Headers

/// (12) Hop-by-hop headers stop at limpet both ways, X-Forwarded-* are set.
async fn hop_by_hop_headers_stop_at_limpet_in_both_directions(side: Side) {
    let backend = ScriptedBackend::spawn(|_| {
        vec![write(
            "HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5\r\nConnection: keep-alive, X-Internal\r\n\
                 X-Internal: 1\r\nX-Public: 2\r\nContent-Length: 2\r\n\r\nok",
        )]
    })
    .await;
    let lb = lb_for(side, &backend).await;
    let mut wire = lb.connect().await;
    let resp = wire
        .exchange(
            "GET /hop HTTP/1.1\r\nHost: shop.example:8080\r\n\
                 Connection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\n\
                 Proxy-Connection: keep-alive\r\nX-Forwarded-For: 203.0.113.7\r\n\
                 X-Forwarded-Proto: https\r\nX-Kept: yes\r\n\r\n",
        )
        .await;
    assert_ok(&resp, "ok");

    // What the backend got.
    let got = &backend.received()[0];
    for gone in ["x-secret", "keep-alive", "proxy-connection"] {
        assert!(
            got.all(gone).is_empty(),
            "{gone} reached the backend: {got:?}"
        );
    }
    let named = tokens(&got.all("connection"));
    assert!(!named.contains(&"x-secret".to_string()), "{got:?}");
    assert_eq!(got.all("x-kept"), ["yes"]);
    assert_eq!(got.all("host"), ["shop.example:8080"]);
    assert_eq!(got.all("x-forwarded-for"), ["203.0.113.7, 127.0.0.1"]);
    assert_eq!(got.all("x-forwarded-proto"), [side.scheme()]);
    assert_eq!(got.all("x-forwarded-host"), ["shop.example:8080"]);

    // What the client got.
    for gone in ["keep-alive", "x-internal"] {
        assert!(
            resp.all(gone).is_empty(),
            "{gone} reached the client: {resp:?}"
        );
    }
    assert!(
        !resp.connection_tokens().contains(&"x-internal".to_string()),
        "{resp:?}"
    );
    assert_eq!(resp.all("x-public"), ["2"]);
    assert_ok(&wire.exchange(get("/again")).await, "ok");
}

/// (13) Header names reach the backend case-insensitively equal and values byte
/// for byte (repeated headers in order), the request target unnormalised; back
/// to the client, a custom reason phrase still means 200, headers keep their
/// values, and each Set-Cookie stays its own line.
async fn header_names_values_and_targets_pass_unchanged(side: Side) {
    let backend = ScriptedBackend::spawn(|_| {
        vec![write(
            "HTTP/1.1 200 Fine\r\nX-Resp-Camel: Some  Value, with \"quotes\"\r\n\
                 Set-Cookie: a=1; Path=/\r\nSet-Cookie: b=2; Path=/; HttpOnly\r\n\
                 Content-Length: 4\r\n\r\nfine",
        )]
    })
    .await;
    let lb = lb_for(side, &backend).await;
    let mut wire = lb.connect().await;
    let target = "/a/%7Euser/./b/../c?q=a%20b&empty=&x=%2F";
    let sent = [
        ("X-CamelCase", "Mixed Value  With  Spaces"),
        ("x-lower", "lower"),
        ("X-UPPER", "UPPER"),
        ("X-Quoted", "\"quoted, with comma\""),
        ("X-Multi", "a"),
        ("X-Multi", "b"),
    ];
    let mut req = format!("GET {target} HTTP/1.1\r\nHost: wire.test\r\n");
    for (name, value) in sent {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("\r\n");
    let resp = wire.exchange(req).await;

    assert_ok(&resp, "fine");
    assert_eq!(resp.all("x-resp-camel"), ["Some  Value, with \"quotes\""]);
    assert_eq!(
        resp.all("set-cookie"),
        ["a=1; Path=/", "b=2; Path=/; HttpOnly"]
    );

    let got = &backend.received()[0];
    assert_eq!(got.method, "GET");
    assert_eq!(got.target, target);
    // `all` compares names case-insensitively, values exactly.
    for (name, value) in &sent[..4] {
        assert_eq!(got.all(name), [*value], "{name}: {got:?}");
    }
    // Repeated fields may be joined into one (RFC 9110, section 5.3), in order.
    assert_eq!(got.all("x-multi").join(", "), "a, b");
}

// ---------------------------------------------------------------------------
// Malformed and oversized requests, HTTP/1.0

/// (14a) A malformed request after a good one on a keep-alive connection, sent
/// separately or pipelined behind it: the good one is answered, the bad one gets
/// 400, and the connection is closed (its framing is unknown).
async fn a_malformed_request_on_a_kept_alive_connection_gets_400(side: Side) {
    let backend = ScriptedBackend::spawn(|_| ok("fine")).await;
    let lb = lb_for(side, &backend).await;

    let mut wire = lb.connect().await;
    assert_ok(&wire.exchange(get("/good")).await, "fine");
    let resp = wire.exchange("GARBAGE\r\n\r\n").await;
    assert_eq!(resp.status, 400, "{resp:?}");
    assert!(wire.closed().await, "still open after a 400");

    let mut wire = lb.connect().await;
    wire.send(format!("{}GARBAGE\r\n\r\n", get("/good"))).await;
    assert_ok(&wire.read().await, "fine");
    assert_eq!(wire.read().await.status, 400);
    assert!(wire.closed().await, "still open after a 400");
    assert_eq!(backend.received().len(), 2);
}

/// (14b) A request head over `max_header_bytes` after a good request on the same
/// connection, sent separately or pipelined behind it: 200, then 431 and close.
async fn an_oversized_head_on_a_kept_alive_connection_gets_431(side: Side) {
    let backend = ScriptedBackend::spawn(|_| ok("fine")).await;
    let lb = WireLb::start(
        side,
        &config(backend.addr, "\n[limits]\nmax_header_bytes = 8192", ""),
    )
    .await;
    let big = format!(
        "GET /big HTTP/1.1\r\nHost: wire.test\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );

    let mut wire = lb.connect().await;
    assert_ok(&wire.exchange(get("/good")).await, "fine");
    wire.send_lossy(&big).await;
    let resp = wire.read().await;
    assert_eq!(resp.status, 431, "{resp:?}");
    assert!(wire.closed().await, "still open after a 431");

    let mut wire = lb.connect().await;
    wire.send_lossy(format!("{}{big}", get("/good"))).await;
    assert_ok(&wire.read().await, "fine");
    assert_eq!(wire.read().await.status, 431);
    assert!(wire.closed().await, "still open after a 431");

    let received = backend.received();
    assert!(received.iter().all(|r| r.target == "/good"), "{received:?}");
}

/// (15a) An HTTP/1.0 request without Host is answered, and the connection closed
/// after it: HTTP/1.0 is not persistent by default.
async fn http10_without_host_is_answered_and_closed(side: Side) {
    let backend = ScriptedBackend::spawn(|_| ok("old")).await;
    let lb = lb_for(side, &backend).await;
    let mut wire = lb.connect().await;
    let resp = wire.exchange("GET /ten HTTP/1.0\r\n\r\n").await;
    assert_ok(&resp, "old");
    assert!(wire.closed().await, "HTTP/1.0 connection still open");
}

/// (15b) An HTTP/1.0 client that asks `Connection: keep-alive` keeps its
/// connection: the response says keep-alive (an HTTP/1.0 client closes
/// otherwise) and is framed by length; without it, the connection closes.
async fn http10_keep_alive_keeps_the_connection(side: Side) {
    let backend = ScriptedBackend::spawn(|r| ok(format!("old {}", r.target))).await;
    let lb = lb_for(side, &backend).await;
    let mut wire = lb.connect().await;
    for path in ["/one", "/two"] {
        let resp = wire
            .exchange(format!(
                "GET {path} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
            ))
            .await;
        assert_ok(&resp, &format!("old {path}"));
        assert_eq!(resp.framing, Framing::Length, "{resp:?}");
        assert!(
            resp.connection_tokens().contains(&"keep-alive".to_string()),
            "{resp:?}"
        );
    }
    assert_ok(
        &wire.exchange("GET /three HTTP/1.0\r\n\r\n").await,
        "old /three",
    );
    assert!(wire.closed().await, "HTTP/1.0 connection still open");
}

/// An HTTP/1.0 client never gets a chunked response (it cannot read one): a
/// chunked answer from the backend is re-framed, by length or by closing.
async fn http10_never_gets_chunked(side: Side) {
    let backend = ScriptedBackend::spawn(|_| {
        vec![write(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                 3\r\nold\r\n7\r\n school\r\n0\r\n\r\n",
        )]
    })
    .await;
    let lb = lb_for(side, &backend).await;
    for keep_alive in ["", "Connection: keep-alive\r\n"] {
        let mut wire = lb.connect().await;
        let resp = wire
            .exchange(format!("GET / HTTP/1.0\r\n{keep_alive}\r\n"))
            .await;
        assert_ok(&resp, "old school");
        assert!(resp.all("transfer-encoding").is_empty(), "{resp:?}");
        assert_ne!(resp.framing, Framing::Chunked);
    }
}

// ---------------------------------------------------------------------------
// Backend failures

/// (16a) A backend answering with garbage instead of a status line: 502 (with
/// `retries = 0`: with a retry and no other backend the README's answer is 503).
async fn a_backend_sending_garbage_gets_502(side: Side) {
    let backend =
        ScriptedBackend::spawn(|_| vec![write("THIS IS NOT HTTP\r\n\r\n"), Step::Close]).await;
    let lb = WireLb::start(side, &config(backend.addr, "", "retries = 0")).await;
    let mut wire = lb.connect().await;
    let resp = wire.exchange(get("/")).await;
    assert_eq!(resp.status, 502, "{resp:?}");
}

/// (16b) A backend that closes a fresh connection before any byte of response:
/// 502 (the exchange broke) or 503 (no backend left to retry on), per README.
async fn a_backend_closing_before_answering_gets_502_or_503(side: Side) {
    let backend = ScriptedBackend::spawn(|_| vec![Step::Close]).await;
    let lb = lb_for(side, &backend).await;
    let mut wire = lb.connect().await;
    let resp = wire.exchange(get("/")).await;
    assert!(matches!(resp.status, 502 | 503), "{resp:?}");
}

/// (16c) A backend that sends half its announced body and closes: the client's
/// connection is closed without a complete body, so the client cannot take the
/// truncated body for the whole one. Likewise for a chunked body cut off in the
/// middle of a chunk. (A 502 instead, had limpet buffered the body, is also right.)
async fn a_truncated_response_body_is_not_passed_off_as_complete(side: Side) {
    let backend = ScriptedBackend::spawn(|r| {
        let head = if r.target == "/length" {
            "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"
        } else {
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n64\r\n"
        };
        vec![
            write(head),
            write("x".repeat(50)),
            Step::Pause(Duration::from_millis(50)),
            Step::Close,
        ]
    })
    .await;
    let lb = lb_for(side, &backend).await;
    for path in ["/length", "/chunked"] {
        let mut wire = lb.connect().await;
        wire.send(get(path)).await;
        match wire.try_read(false).await {
            Err(e) => assert!(e.contains("closed"), "{path}: {e}"),
            Ok(resp) => assert_eq!(resp.status, 502, "{path}: {resp:?}"),
        }
    }
}

/// (17) A response with both Transfer-Encoding: chunked and Content-Length: the
/// chunks frame it and the Content-Length (which here would cut it short) must
/// go (RFC 9112, section 6.3: an intermediary MUST remove it before forwarding),
/// or the response is refused as 502. Never a complete-looking truncated body.
async fn a_response_with_both_chunked_and_content_length_is_framed_by_the_chunks(side: Side) {
    let backend = ScriptedBackend::spawn(|r| {
        if r.target != "/both" {
            return ok("next");
        }
        vec![write(
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n\
                 5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        )]
    })
    .await;
    let lb = lb_for(side, &backend).await;
    let mut wire = lb.connect().await;
    let resp = wire.exchange(get("/both")).await;
    if resp.status != 502 {
        assert_ok(&resp, "hello world");
    }
    if resp.framing != Framing::Close {
        assert_ok(&wire.exchange(get("/next")).await, "next");
    }
}

// ---------------------------------------------------------------------------
// The affinity cookie

/// (18) The first response sets limpet's cookie; sent back, it pins every request
/// on the connection to one of three backends (round-robin would spread them),
/// also amid other cookies, which reach the backend without limpet's.
async fn the_affinity_cookie_pins_and_is_stripped_on_the_wire(side: Side) {
    let backends = three_backends().await;
    let refs: Vec<&TestBackend> = backends.iter().collect();
    let lb = WireLb::start(side, &ring_config(&refs, "balance = \"round-robin\"")).await;
    let mut wire = lb.connect().await;

    let first = wire.exchange(get("/")).await;
    assert_eq!(first.status, 200, "{first:?}");
    let pinned_to = first.header("x-backend").expect("x-backend").to_string();
    let cookie = first
        .all("set-cookie")
        .into_iter()
        .find_map(|c| c.split(';').next()?.strip_prefix("limpet="))
        .unwrap_or_else(|| panic!("no limpet cookie: {first:?}"))
        .to_string();

    for i in 0..10 {
        let cookies = if i % 2 == 0 {
            format!("limpet={cookie}")
        } else {
            format!("a=1; limpet={cookie}; b=2")
        };
        let resp = wire
            .exchange(format!(
                "GET /page/{i} HTTP/1.1\r\nHost: wire.test\r\nCookie: {cookies}\r\n\r\n"
            ))
            .await;
        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(resp.header("x-backend"), Some(&*pinned_to), "request {i}");
        // The pin did not change: no new cookie.
        assert!(resp.all("set-cookie").is_empty(), "{resp:?}");
        let seen = resp.header("x-seen-cookie");
        if i % 2 == 0 {
            assert_eq!(seen, None, "limpet's cookie reached the backend");
        } else {
            assert_eq!(seen, Some("a=1; b=2"));
        }
    }
    for b in &backends {
        let expected = if b.name == pinned_to { 11 } else { 0 };
        assert_eq!(b.hits(), expected, "{}", b.name);
    }
}

// ---------------------------------------------------------------------------
// Upgrades

/// A 101 turns the connection into a tunnel: bytes pass both ways as they
/// are, and a tunnel silent for `client_idle` is closed (HAProxy's `timeout
/// tunnel`).
async fn an_upgraded_connection_carries_bytes_both_ways_until_idle(side: Side) {
    // A raw backend: answers the upgrade, then echoes what it reads, upper-cased.
    let backend = common::scripted::raw_backend(|mut stream| async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                return;
            }
            head.push(byte[0]);
        }
        let switching =
            "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n";
        if stream.write_all(switching.as_bytes()).await.is_err() {
            return;
        }
        let mut buf = [0u8; 1024];
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0
                || stream
                    .write_all(&buf[..n].to_ascii_uppercase())
                    .await
                    .is_err()
            {
                return;
            }
        }
    })
    .await;
    let top = "[timeouts]\nclient_idle = \"500ms\"";
    let lb = WireLb::start(side, &config(backend, top, "")).await;
    let mut conn = lb.connect().await;
    conn.send(
        "GET /chat HTTP/1.1\r\nHost: wire.test\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .await;
    let switched = conn.read_one(false).await.expect("the 101");
    assert_eq!(switched.status, 101, "{switched:?}");
    assert_eq!(switched.tokens("upgrade"), ["echo"]);
    for word in ["hello", "tunnel"] {
        conn.send(word).await;
        assert_eq!(
            conn.take_exact(word.len()).await,
            word.to_uppercase().as_bytes()
        );
    }
    let started = std::time::Instant::now();
    assert!(conn.closed().await, "an idle tunnel is closed");
    let took = started.elapsed();
    assert!(
        took >= std::time::Duration::from_millis(400),
        "closed after {took:?}, before client_idle"
    );
}
