//! Messages that two HTTP parsers could read differently, and the answers that
//! must not desync a kept-alive connection (RFC 9112): each is refused or
//! rewritten the one way, on the plain and the TLS listener, and over HTTP/2
//! where the rule applies there too. Every case here once went through the
//! seam between limpet's HTTP/1 engine and hyper (issue 10).

mod common;

use std::net::SocketAddr;

use bytes::Bytes;
use common::scripted::{ok, write, Recorded, ScriptedBackend, Step};
use common::wire::*;
use http::Request;
use http_body_util::Empty;

both_sides!(
    limpets_own_answers_to_head_carry_no_body,
    two_host_fields_are_refused,
    a_malformed_response_is_not_sent_again,
    an_http2_preface_after_a_request_is_refused,
    a_non_ascii_cookie_does_not_keep_limpets_cookie,
    identical_content_lengths_are_forwarded_once,
    framing_names_with_underscores_are_not_forwarded,
    an_absolute_form_target_is_routed_by_its_authority,
    chunk_extensions_and_trailers_are_checked_like_a_head,
    an_invalid_host_is_refused,
    a_request_body_that_stalls_gets_408,
    characters_uris_may_not_have_are_refused_in_the_target,
    an_upgrade_to_h2c_is_not_passed_on,
);

/// A backend that answers every request `200 ok`.
async fn ok_backend() -> ScriptedBackend {
    ScriptedBackend::spawn(|_| ok("ok")).await
}

/// The requests `backend` received for `target`.
fn received(backend: &ScriptedBackend, target: &str) -> Vec<Recorded> {
    backend
        .received()
        .into_iter()
        .filter(|r| r.target == target)
        .collect()
}

/// [`config`] with passive health checks that never mark the backend down:
/// the garbage these tests make a backend answer is the point, not a reason
/// to stop sending to it.
fn tolerant_config(backend: SocketAddr, top: &str, extra: &str) -> String {
    config(backend, top, extra).replace(
        "[upstream.wire.health]\n",
        "[upstream.wire.health]\npassive_fall = 1000\n",
    )
}

/// An address nothing listens on.
async fn dead_addr() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// (1) 404, 502 and 503 answered by limpet to HEAD: the head says how long the
/// body would be and no body follows, so the next response on the connection
/// is read as a response.
async fn limpets_own_answers_to_head_carry_no_body(side: Side) {
    let backend = ScriptedBackend::spawn(|r| match r.target.as_str() {
        "/garbage" => vec![write("garbage\r\n\r\n")],
        _ => ok("ok"),
    })
    .await;
    let dead = dead_addr().await;
    let top = format!(
        "[[route]]\npath_prefix = \"/dead\"\nupstream = \"dead\"\n\n\
         [[route]]\npath_prefix = \"/x\"\nupstream = \"wire\"\n\n\
         [[route]]\npath_prefix = \"/garbage\"\nupstream = \"wire\"\n\n\
         [upstream.dead]\naffinity = \"none\"\nretries = 0\n\
         [upstream.dead.health]\ninterval = \"1h\"\n\
         [[upstream.dead.backend]]\nname = \"gone\"\naddr = \"{dead}\"\n"
    );
    let lb = WireLb::start(side, &tolerant_config(backend.addr, &top, "")).await;
    let mut conn = lb.connect().await;
    for (target, status) in [("/nothere", 404), ("/garbage", 502), ("/dead", 503)] {
        conn.send(format!(
            "HEAD {target} HTTP/1.1\r\nHost: wire.test\r\n\r\n{}",
            get("/x")
        ))
        .await;
        let head = conn.read_head().await;
        assert_eq!(head.status, status, "{target}: {head:?}");
        assert!(head.body.is_empty());
        assert_ok(&conn.read().await, "ok");
    }
}

/// (2) Two Host fields, differing or the same, are a 400 and reach no backend
/// (RFC 9112, section 3.2).
async fn two_host_fields_are_refused(side: Side) {
    let backend = ok_backend().await;
    let lb = lb_for(side, &backend).await;
    for hosts in [
        "Host: wire.test\r\nHost: evil.example",
        "Host: wire.test\r\nHost: wire.test",
    ] {
        let mut conn = lb.connect().await;
        let resp = conn
            .exchange(format!("GET /two HTTP/1.1\r\n{hosts}\r\n\r\n"))
            .await;
        assert_eq!(resp.status, 400, "{hosts}");
        assert!(conn.closed().await);
    }
    assert!(received(&backend, "/two").is_empty());
}

/// A Host whose port is not digits, with two colons, or with an unclosed
/// IPv6 literal is a 400 and reaches no backend (RFC 9112 section 3.2), as
/// the same authority in an absolute-form target is; the engine checked the
/// characters only and forwarded them.
async fn an_invalid_host_is_refused(side: Side) {
    let backend = ok_backend().await;
    let lb = lb_for(side, &backend).await;
    for (target, host) in [
        ("/h1", "a:xx"),
        ("/h2", "a:1:2"),
        ("/h3", "[::1"),
        ("/h4", "a:99999"),
    ] {
        let mut conn = lb.connect().await;
        let resp = conn
            .exchange(format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n"))
            .await;
        assert_eq!(resp.status, 400, "Host: {host}");
        let absolute = format!("GET http://{host}{target}x HTTP/1.1\r\nHost: a\r\n\r\n");
        let mut conn = lb.connect().await;
        assert_eq!(
            conn.exchange(absolute).await.status,
            400,
            "authority {host}"
        );
        assert!(received(&backend, target).is_empty());
        assert!(received(&backend, &format!("{target}x")).is_empty());
    }
    let mut conn = lb.connect().await;
    let fine = "GET /v6 HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n";
    assert_ok(&conn.exchange(fine).await, "ok");
}

/// (3) A response that does not parse, on a pooled connection, is a 502; the
/// request is not taken for one sent on a stale connection and sent again.
async fn a_malformed_response_is_not_sent_again(side: Side) {
    let answers: Vec<&'static str> = vec![
        "HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\nhello",
        "HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\nContent-Length: 0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nX-Nul: a\0b\r\nContent-Length: 0\r\n\r\n",
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: nothing\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        "garbage\r\n\r\n",
    ];
    let script_answers = answers.clone();
    let backend = ScriptedBackend::spawn(move |r| {
        match r
            .target
            .strip_prefix("/bad/")
            .and_then(|i| i.parse::<usize>().ok())
        {
            Some(i) => vec![write(script_answers[i]), Step::Close],
            None => ok("ok"),
        }
    })
    .await;
    for retries in ["retries = 0", "retries = 1"] {
        let lb = WireLb::start(side, &tolerant_config(backend.addr, "", retries)).await;
        for (i, answer) in answers.iter().enumerate() {
            let mut conn = lb.connect().await;
            // A pooled connection for the next request.
            assert_ok(&conn.exchange(get("/warm")).await, "ok");
            for method in ["GET", "HEAD", "PUT", "DELETE", "OPTIONS"] {
                let target = format!("/bad/{i}");
                let before = received(&backend, &target).len();
                conn.send(format!(
                    "{method} {target} HTTP/1.1\r\nHost: wire.test\r\n\r\n"
                ))
                .await;
                let resp = conn.try_read(method == "HEAD").await;
                let resp = resp.unwrap_or_else(|e| panic!("{answer:?} {method}: {e}"));
                assert_eq!(resp.status, 502, "{answer:?} {method} ({retries})");
                assert_eq!(
                    received(&backend, &target).len(),
                    before + 1,
                    "{answer:?} {method} ({retries}): sent once"
                );
            }
        }
    }
}

/// (4) The HTTP/2 preface is a connection's first bytes or nothing: after an
/// HTTP/1.1 request it is a malformed request (400), not a switch to HTTP/2.
async fn an_http2_preface_after_a_request_is_refused(side: Side) {
    let backend = ok_backend().await;
    let lb = lb_for(side, &backend).await;
    let mut conn = lb.connect().await;
    conn.send(format!("{}PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", get("/first")))
        .await;
    assert_ok(&conn.read().await, "ok");
    let refused = conn.read().await;
    assert_eq!(refused.status, 400, "{refused:?}");
    assert!(conn.closed().await);
}

/// limpet with cookie affinity in front of `backend`.
fn cookie_config(backend: SocketAddr) -> String {
    format!(
        "[listen]\nhttp = [\"127.0.0.1:0\"]\n\n\
         [upstream.wire]\naffinity = \"cookie\"\n\n\
         [upstream.wire.cookie]\nsecret = \"0123456789abcdef0123456789abcdef\"\n\n\
         [upstream.wire.health]\ninterval = \"1h\"\n\n\
         [[upstream.wire.backend]]\nname = \"b1\"\naddr = \"{backend}\"\n"
    )
}

/// The Cookie field `backend` received for `target`.
fn cookie_seen(backend: &ScriptedBackend, target: &str) -> Vec<String> {
    received(backend, target)
        .iter()
        .flat_map(|r| {
            r.all("cookie")
                .into_iter()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// (5) limpet's own cookie is stripped from a Cookie field that also holds a
/// byte that is not ASCII; the application's cookie passes byte for byte.
async fn a_non_ascii_cookie_does_not_keep_limpets_cookie(side: Side) {
    let backend = ok_backend().await;
    let lb = WireLb::start(side, &cookie_config(backend.addr)).await;
    let mut conn = lb.connect().await;
    let mut req = b"GET /c HTTP/1.1\r\nHost: wire.test\r\nCookie: a=".to_vec();
    req.extend_from_slice(b"\xe9; limpet=zzz\r\n\r\n");
    assert_ok(&conn.exchange(&req).await, "ok");
    let seen = cookie_seen(&backend, "/c");
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(
        seen[0].starts_with("a=") && !seen[0].contains("limpet"),
        "{seen:?}"
    );
}

/// The same over HTTP/2 (h2c prior knowledge), where the cookie is read from a
/// `HeaderMap`.
#[tokio::test]
async fn a_non_ascii_cookie_does_not_keep_limpets_cookie_over_http2() {
    bounded(async {
        let backend = ok_backend().await;
        let lb = WireLb::start(Side::Plain, &cookie_config(backend.addr)).await;
        let cookie = http::HeaderValue::from_bytes(b"a=\xe9; limpet=zzz").unwrap();
        let req = Request::builder()
            .uri("http://wire.test/c2")
            .header("cookie", cookie)
            .body(Empty::<Bytes>::new())
            .unwrap();
        assert_eq!(h2_send(lb.addr(), req).await, 200);
        let seen = cookie_seen(&backend, "/c2");
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert!(
            seen[0].starts_with("a=") && !seen[0].contains("limpet"),
            "{seen:?}"
        );
    })
    .await;
}

/// Sends one request over h2c prior knowledge; its status.
async fn h2_send(addr: SocketAddr, req: Request<Empty<Bytes>>) -> u16 {
    let mut sender = h2_client(raw(addr).await).await;
    let resp = sender.send_request(req).await.expect("h2 response");
    resp.status().as_u16()
}

/// Duplicate Content-Length fields with one value are forwarded as one field;
/// differing values are a 400.
async fn identical_content_lengths_are_forwarded_once(side: Side) {
    let backend = ok_backend().await;
    let lb = lb_for(side, &backend).await;
    let mut conn = lb.connect().await;
    let twice = "POST /cl HTTP/1.1\r\nHost: wire.test\r\nContent-Length: 5\r\n\
                 Content-Length: 5\r\n\r\nhello";
    assert_ok(&conn.exchange(twice).await, "ok");
    let seen = received(&backend, "/cl");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].all("content-length"), ["5"], "{:?}", seen[0]);
    assert_eq!(seen[0].body, b"hello");
    let differing = "POST /cl2 HTTP/1.1\r\nHost: wire.test\r\nContent-Length: 5\r\n\
                     Content-Length: 6\r\n\r\nhello!";
    assert_eq!(conn.exchange(differing).await.status, 400);
    assert!(received(&backend, "/cl2").is_empty());
}

/// `Transfer_Encoding` and `Content_Length` are dropped: CGI and WSGI backends
/// read `_` as `-` and would frame the body by them.
async fn framing_names_with_underscores_are_not_forwarded(side: Side) {
    let backend = ok_backend().await;
    let lb = lb_for(side, &backend).await;
    let mut conn = lb.connect().await;
    let req = "GET /u HTTP/1.1\r\nHost: wire.test\r\nTransfer_Encoding: chunked\r\n\
               Content_Length: 5\r\nX_Other: kept\r\n\r\n";
    assert_ok(&conn.exchange(req).await, "ok");
    let seen = &received(&backend, "/u")[0];
    assert!(seen.all("transfer_encoding").is_empty(), "{seen:?}");
    assert!(seen.all("content_length").is_empty(), "{seen:?}");
    assert_eq!(seen.all("x_other"), ["kept"]);
}

/// Two upstreams by host: `a.example` and `b.example`.
fn by_host_config(a: SocketAddr, b: SocketAddr) -> String {
    let upstream = |name: &str, addr: SocketAddr| {
        format!(
            "[upstream.{name}]\naffinity = \"none\"\n\
             [upstream.{name}.health]\ninterval = \"1h\"\n\
             [[upstream.{name}.backend]]\nname = \"{name}1\"\naddr = \"{addr}\"\n\n"
        )
    };
    format!(
        "[listen]\nhttp = [\"127.0.0.1:0\"]\n\n\
         [[route]]\nhost = \"a.example\"\nupstream = \"a\"\n\n\
         [[route]]\nhost = \"b.example\"\nupstream = \"b\"\n\n{}{}",
        upstream("a", a),
        upstream("b", b)
    )
}

/// An absolute-form target's authority wins over Host (RFC 9112, section
/// 3.2.2): the request is routed by it and forwarded with it as Host.
async fn an_absolute_form_target_is_routed_by_its_authority(side: Side) {
    let (a, b) = (ok_backend().await, ok_backend().await);
    let lb = WireLb::start(side, &by_host_config(a.addr, b.addr)).await;
    let mut conn = lb.connect().await;
    let req = "GET http://a.example/p?q=1 HTTP/1.1\r\nHost: b.example\r\n\r\n";
    assert_ok(&conn.exchange(req).await, "ok");
    assert!(b.received().is_empty(), "{:?}", b.received());
    let seen = &received(&a, "/p?q=1")[0];
    assert_eq!(seen.all("host"), ["a.example"], "{seen:?}");
    assert_eq!(seen.header("x-forwarded-host"), Some("a.example"));
}

/// On HTTP/2, `:authority` wins over a `host` field: routed and forwarded by
/// the same one.
#[tokio::test]
async fn http2_authority_wins_over_host() {
    bounded(async {
        let (a, b) = (ok_backend().await, ok_backend().await);
        let lb = WireLb::start(Side::Plain, &by_host_config(a.addr, b.addr)).await;
        let req = Request::builder()
            .uri("http://a.example/h2")
            .header("host", "b.example")
            .body(Empty::<Bytes>::new())
            .unwrap();
        assert_eq!(h2_send(lb.addr(), req).await, 200);
        assert!(b.received().is_empty(), "{:?}", b.received());
        let seen = &received(&a, "/h2")[0];
        assert_eq!(seen.all("host"), ["a.example"], "{seen:?}");
    })
    .await;
}

/// A chunked request's extensions and trailer fields are relayed byte for
/// byte, so they are checked as strictly as the head: an extension outside
/// RFC 9112 section 7.1.1's grammar (NUL, control bytes, bare words, an
/// empty name) and a trailer line a head would not pass (obs-fold,
/// whitespace before the colon, no colon, NUL) or a framing or routing field
/// as a trailer are a 400, and no byte reaches the backend. The engine
/// checked neither and forwarded them all.
async fn chunk_extensions_and_trailers_are_checked_like_a_head(side: Side) {
    let backend = ok_backend().await;
    let lb = lb_for(side, &backend).await;
    let chunked = |target: &str, ext: &str, trailer: &str| {
        format!(
            "POST {target} HTTP/1.1\r\nHost: wire.test\r\nTransfer-Encoding: chunked\r\n\r\n\
             3{ext}\r\nabc\r\n0\r\n{trailer}\r\n"
        )
    };
    let bad = [
        ("/ext-nul", ";a\x00b", ""),
        ("/ext-ctl", ";a\x01", ""),
        ("/ext-words", ";a b c", ""),
        ("/ext-empty", ";", ""),
        ("/tr-fold", "", "X-T: 1\r\n 2\r\n"),
        ("/tr-space", "", "X-T : 1\r\n"),
        ("/tr-colonless", "", "GARBAGE\r\n"),
        ("/tr-nul", "", "X-T: a\x00b\r\n"),
        ("/tr-te", "", "Transfer-Encoding: chunked\r\n"),
        ("/tr-cl", "", "Content-Length: 5\r\n"),
        ("/tr-host", "", "Host: evil.example\r\n"),
    ];
    for (target, ext, trailer) in bad {
        let mut conn = lb.connect().await;
        let resp = conn.exchange(chunked(target, ext, trailer)).await;
        assert_eq!(resp.status, 400, "{target}: {resp:?}");
        assert!(
            received(&backend, target).is_empty(),
            "{target} was forwarded"
        );
    }
    // Within the grammar, both pass as they came.
    let mut conn = lb.connect().await;
    let good = chunked("/good", " ; a = \"x y\" ;b", "X-Check: 1\r\n");
    assert_ok(&conn.exchange(&good).await, "ok");
    let seen = &received(&backend, "/good")[0];
    assert_eq!(seen.body, b"abc", "{seen:?}");
}

/// A request body that stops coming for `client_idle` is answered 408, as a
/// head too slow is (nginx's `client_body_timeout`, HAProxy's 408), and the
/// connection closes; it was a 400, the answer to a malformed body.
async fn a_request_body_that_stalls_gets_408(side: Side) {
    let backend = ok_backend().await;
    let top = "[timeouts]\nclient_idle = \"500ms\"";
    let lb = WireLb::start(side, &config(backend.addr, top, "")).await;
    let mut conn = lb.connect().await;
    conn.send("POST /stall HTTP/1.1\r\nHost: wire.test\r\nContent-Length: 10\r\n\r\nabc")
        .await;
    let resp = conn.read().await;
    assert_eq!(resp.status, 408, "{resp:?}");
    assert_eq!(resp.text(), "408 request timeout\n");
    assert!(conn.closed().await);
}

/// A target with characters RFC 3986 keeps out of URIs (a fragment's `#`,
/// `"`, `<`, `>`, `\`, `^`, `` ` ``, `{`, `|`, `}`) is a 400 and reaches no
/// backend, as with HAProxy's defaults; they were forwarded. Percent-encoded
/// they pass, and so does raw UTF-8 (as nginx lets it).
async fn characters_uris_may_not_have_are_refused_in_the_target(side: Side) {
    let backend = ok_backend().await;
    let lb = lb_for(side, &backend).await;
    for target in [
        "/t#frag", "/t\"q", "/t<", "/t>", "/t\\", "/t^", "/t`", "/t{", "/t|", "/t}",
    ] {
        let mut conn = lb.connect().await;
        let resp = conn.exchange(get(target)).await;
        assert_eq!(resp.status, 400, "{target}: {resp:?}");
    }
    assert!(backend
        .received()
        .iter()
        .all(|r| !r.target.starts_with("/t")));
    let mut conn = lb.connect().await;
    assert_ok(&conn.exchange(get("/ok%7B%7D?q=caf\u{e9}")).await, "ok");
}

/// `Upgrade: h2c` is not passed on (nor `Connection: upgrade`): a backend
/// taking it would speak HTTP/2 through a tunnel past limpet ("h2c
/// smuggling"). The request itself is served as a plain one.
async fn an_upgrade_to_h2c_is_not_passed_on(side: Side) {
    let backend = ok_backend().await;
    let lb = lb_for(side, &backend).await;
    let mut conn = lb.connect().await;
    let req = "GET /h2c HTTP/1.1\r\nHost: wire.test\r\nConnection: Upgrade, HTTP2-Settings\r\n\
               Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n";
    assert_ok(&conn.exchange(req).await, "ok");
    let seen = &received(&backend, "/h2c")[0];
    assert!(seen.all("upgrade").is_empty(), "{seen:?}");
    assert!(seen.all("http2-settings").is_empty(), "{seen:?}");
    let connection = seen.all("connection").join(",").to_ascii_lowercase();
    assert!(!connection.contains("upgrade"), "{seen:?}");
}
