//! Odd answers from a backend, relayed or refused: a status line without a
//! reason phrase, a status code below 100, a Transfer-Encoding field list with
//! an empty field beside a Content-Length, and an answer that comes before the
//! backend has read the request's body, and a chunked body malformed from
//! its first bytes. Each was a bug of limpet's own HTTP/1
//! engine (`src/h1.rs`), pinned against a real limpet and a raw-TCP backend;
//! each test runs against the plain listener and the TLS one.

mod common;

use std::time::Duration;

use common::scripted::{ok, raw_backend, write, ScriptedBackend};
use common::wire::*;

both_sides!(
    a_status_line_without_reason_phrase_is_relayed,
    a_status_code_below_100_is_a_bad_gateway,
    an_empty_transfer_encoding_field_does_not_hide_the_chunking,
    an_early_answer_to_an_upload_is_passed_on,
    malformed_chunks_come_with_the_head_are_a_bad_gateway,
);

/// A status line without a reason phrase (`HTTP/1.1 200` CRLF: httparse and
/// hyper accept it, and backends send it) is relayed like any other. The engine
/// took the position of httparse's static "" as an offset into its buffer and
/// panicked (subtract overflow, or a slice out of range), killing the
/// connection without an answer.
async fn a_status_line_without_reason_phrase_is_relayed(side: Side) {
    let backend = ScriptedBackend::spawn(|r| {
        if r.target == "/bare" {
            vec![write("HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok")]
        } else {
            ok("next")
        }
    })
    .await;
    let lb = lb_for(side, &backend).await;
    let mut wire = lb.connect().await;
    let resp = wire.exchange(get("/bare")).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.text(), "ok", "{resp:?}");
    let next = wire.exchange(get("/next")).await;
    assert_eq!(next.text(), "next", "{next:?}");
}

/// A status code below 100 (`099`: three digits, so httparse reads 99) is not
/// an HTTP status: hyper's client refuses the response, so limpet answers 502
/// (with `retries = 0`). The engine relayed `HTTP/1.1 99 ...`, a status line no
/// client can parse.
async fn a_status_code_below_100_is_a_bad_gateway(side: Side) {
    let backend =
        ScriptedBackend::spawn(|_| vec![write("HTTP/1.1 099 Odd\r\nContent-Length: 0\r\n\r\n")])
            .await;
    let lb = WireLb::start(side, &config(backend.addr, "", "retries = 0")).await;
    let mut wire = lb.connect().await;
    let resp = wire.exchange(get("/")).await;
    assert_eq!(resp.status, 502, "{resp:?}");
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
async fn an_empty_transfer_encoding_field_does_not_hide_the_chunking(side: Side) {
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
    let lb = lb_for(side, &backend).await;
    let mut wire = lb.connect().await;
    wire.send(get("/te")).await;
    let resp = wire.try_read(false).await.unwrap_or_else(|e| panic!("{e}"));
    if resp.status != 502 {
        assert_eq!(resp.status, 200, "{resp:?}");
        // Framed by the chunks (RFC), or passed on close-delimited as raw
        // bytes (what hyper's path does): never cut at 3 bytes.
        assert!(
            resp.text() == "hello" || resp.text() == "5\r\nhello\r\n0\r\n\r\n",
            "{resp:?}"
        );
    }
    if !resp.connection_tokens().contains(&"close".to_string()) {
        let next = wire.exchange(get("/next")).await;
        assert_eq!(next.text(), "next", "{next:?}");
    }
}

/// A backend that refuses an upload as soon as it has the head (413, 401:
/// what servers with a body limit do) answers before it reads the body, and
/// stops reading. The client must get that answer, not a 502: while its
/// writes stall, the engine reads what the backend sends (as hyper's client
/// does), stops streaming at a final response head, and closes the client
/// connection after it (the rest of the body is still on its way).
async fn an_early_answer_to_an_upload_is_passed_on(side: Side) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backend = raw_backend(|mut conn| async move {
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
    })
    .await;
    let lb = WireLb::start(side, &config(backend, "", "retries = 0")).await;
    let (mut read, mut write) = tokio::io::split(lb.stream().await);
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
}

/// A chunked response whose first chunk, arriving with the head, is
/// malformed (a size that is not hex, chunk data without its CRLF) is a bad
/// response: 502, as for a head that does not parse. The engine relayed the
/// head into its output buffer, failed on the chunk before writing it, and
/// closed the connection: the client got no byte at all, and the access log
/// and the metrics said 200.
async fn malformed_chunks_come_with_the_head_are_a_bad_gateway(side: Side) {
    let backend = ScriptedBackend::spawn(|r| match r.target.as_str() {
        "/not-hex" => vec![write(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nHELLO\r\n0\r\n\r\n",
        )],
        "/no-crlf" => vec![write(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nHELLOXX0\r\n\r\n",
        )],
        "/second" => vec![write(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nHELLO\r\nzz\r\n",
        )],
        _ => ok("next"),
    })
    .await;
    for path in ["/not-hex", "/no-crlf", "/second"] {
        let lb = WireLb::start(side, &config(backend.addr, "", "retries = 0")).await;
        let mut wire = lb.connect().await;
        let resp = wire.exchange(get(path)).await;
        assert_eq!(resp.status, 502, "{path}: {resp:?}");
        // A passive failure (passive_fall = 1 by default): the backend is
        // down, and limpet's own answers go on on the same connection.
        let next = wire.exchange(get("/next")).await;
        assert_eq!(next.status, 503, "after {path}: {next:?}");
    }
}
