//! Proxying (SPEC section 4): limpet's own answers (400, 404, 431, 502, 503, 504),
//! the slow-client cut-off, hop-by-hop headers and X-Forwarded-*.

mod common;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::scripted::raw_backend;
use common::wire::{raw, raw_exchange, raw_status};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One upstream `shop` over `backends` (cookie affinity), with `top` TOML before it.
fn config(top: &str, backends: &[&TestBackend], upstream: &str) -> String {
    let mut s = format!(
        "[listen]\nhttp = [\"127.0.0.1:0\"]\n{top}\n\n[upstream.shop]\n{upstream}\n\n\
         [upstream.shop.cookie]\nsecret = \"test-secret\"\n"
    );
    for b in backends {
        s.push_str(&format!(
            "\n[[upstream.shop.backend]]\nname = \"{}\"\naddr = \"{}\"\n",
            b.name, b.addr
        ));
    }
    s
}

/// A backend that reads a request (head and `body_len` bytes of body) and closes
/// the connection without answering.
async fn bad_backend(body_len: usize) -> std::net::SocketAddr {
    raw_backend(move |mut stream| async move {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let read_all = async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
                if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
                    let wants = if head.starts_with("post") {
                        body_len
                    } else {
                        0
                    };
                    if got.len() >= end + 4 + wants {
                        break;
                    }
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), read_all).await;
        drop(stream);
    })
    .await
}

/// The response of `request`, sent raw; panics unless the server answered.
async fn raw_status_of(lb: &TestLb, request: &[u8]) -> (u16, String) {
    let (text, _) = raw_exchange(lb.addr, request, Duration::from_secs(5)).await;
    let status = raw_status(&text).unwrap_or_else(|| panic!("no HTTP response: {text:?}"));
    (status, text)
}

#[tokio::test]
async fn a_request_no_route_matches_gets_404() {
    let a = TestBackend::spawn("app1").await;
    let top = "\n[[route]]\npath_prefix = \"/api\"\nupstream = \"shop\"\n\n\
               [[route]]\nhost = \"shop.example.com\"\nupstream = \"shop\"\n";
    let lb = TestLb::start(&config(top, &[&a], "")).await;
    let mut client = lb.client();
    for path in ["/", "/apix", "/other/api"] {
        let r = client.get(path).await;
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.body, "404 no route\n");
        assert_eq!(r.backend(), "");
    }
    assert_eq!(client.get("/api/v1").await.backend(), "app1");
    client
        .headers
        .insert("host", "SHOP.example.com:8080".parse().unwrap());
    assert_eq!(client.get("/anything").await.backend(), "app1");
    assert_eq!(a.hits(), 2);
}

#[tokio::test]
async fn a_head_larger_than_max_header_bytes_gets_431() {
    let a = TestBackend::spawn("app1").await;
    let lb = TestLb::start(&config("\n[limits]\nmax_header_bytes = 8192", &[&a], "")).await;
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let (status, _) = raw_status_of(&lb, big.as_bytes()).await;
    assert_eq!(status, 431);
    // Many headers that add up to too much, too.
    let many: String = (0..400)
        .map(|i| format!("X-H{i}: {}\r\n", "b".repeat(40)))
        .collect();
    let req = format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n");
    assert_eq!(raw_status_of(&lb, req.as_bytes()).await.0, 431);
    // Under the limit passes.
    let fine = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Ok: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(4_000)
    );
    let (status, text) = raw_status_of(&lb, fine.as_bytes()).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(a.hits(), 1);
}

#[tokio::test]
async fn malformed_requests_get_400() {
    let a = TestBackend::spawn("app1").await;
    let lb = TestLb::start(&config("", &[&a], "")).await;
    for req in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET / HTTP/1.1 extra\r\nHost: x\r\n\r\n",
        b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        // HTTP/1.1 requires Host.
        b"GET / HTTP/1.1\r\n\r\n",
    ] {
        let (status, text) = raw_status_of(&lb, req).await;
        assert_eq!(
            status,
            400,
            "{:?} -> {text:?}",
            String::from_utf8_lossy(req)
        );
    }
    assert_eq!(a.hits(), 0);
    // HTTP/1.0 may omit Host; the backend gets an empty one (it speaks HTTP/1.1)
    // and no X-Forwarded-Host from the client.
    let (status, text) = raw_status_of(
        &lb,
        b"GET /headers HTTP/1.0\r\nX-Forwarded-Host: evil.example\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    assert!(body.lines().any(|l| l == "host: "), "{body}");
    assert!(!body.contains("x-forwarded-host"), "{body}");
    assert!(body.contains("x-forwarded-for: 127.0.0.1"), "{body}");
}

#[tokio::test]
async fn a_malformed_request_body_gets_400_and_does_not_mark_the_backend_down() {
    let a = TestBackend::spawn("app1").await;
    let lb = TestLb::start(&config("", &[&a], "")).await;
    for _ in 0..3 {
        let (status, text) = raw_status_of(
            &lb,
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nxx\r\n0\r\n\r\n",
        )
        .await;
        assert_eq!(status, 400, "{text}");
    }
    // The client's broken body is not a connection failure of the backend.
    assert_eq!(lb.client().get("/").await.status, 200);
    assert_eq!(lb.backend_state("shop", "app1"), "up");
}

#[tokio::test]
async fn a_backend_that_closes_without_answering_a_post_gets_502() {
    let body = "name=limpet&qty=3";
    let bad = bad_backend(body.len()).await;
    let good = TestBackend::spawn("app2").await;
    let toml = format!(
        "[listen]\nhttp = [\"127.0.0.1:0\"]\n\n\
         [[route]]\npath_prefix = \"/bad\"\nupstream = \"bad\"\n\n\
         [[route]]\npath_prefix = \"/\"\nupstream = \"mixed\"\n\n\
         [upstream.bad]\naffinity = \"none\"\n\n\
         [[upstream.bad.backend]]\nname = \"app1\"\naddr = \"{bad}\"\n\n\
         [upstream.mixed]\naffinity = \"none\"\nbalance = \"round-robin\"\n\n\
         [[upstream.mixed.backend]]\nname = \"app1\"\naddr = \"{bad}\"\n\n\
         [[upstream.mixed.backend]]\nname = \"app2\"\naddr = \"{}\"\n",
        good.addr
    );
    let lb = TestLb::start(&toml).await;
    let mut client = lb.client();
    let r = client
        .request("POST", "/bad/order", Bytes::from(body))
        .await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(r.body, "502 bad gateway\n");

    // Sent but unanswered: a bodiless GET is retried on another backend, a POST
    // with a body is not (it may have had an effect).
    for _ in 0..4 {
        let r = client.get("/items").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.backend(), "app2");
    }
}

#[tokio::test]
async fn all_backends_down_gets_503() {
    let (a, b) = (
        TestBackend::spawn("app1").await,
        TestBackend::spawn("app2").await,
    );
    let lb = TestLb::start(&config("", &[&a, &b], "")).await;
    assert_eq!(lb.client().get("/").await.status, 200);
    a.stop().await;
    b.stop().await;
    let mut pinned = lb.client();
    pinned.cookie = lb.client().get("/").await.set_cookie("limpet");
    // From the first request on, whether limpet has noticed yet or not.
    for i in 0..5 {
        let r = lb.client().get("/").await;
        assert_eq!(r.status, 503, "request {i}: {}", r.body);
        assert!(r.body.starts_with("503 no backend available"), "{}", r.body);
        let r = pinned.get("/").await;
        assert_eq!(r.status, 503, "pinned request {i}: {}", r.body);
    }
    assert_eq!(lb.backend_state("shop", "app1"), "down");
    assert_eq!(lb.backend_state("shop", "app2"), "down");
    // Once every backend is marked down, the answer says so (a backend
    // without the health path goes down this way, and its operator should
    // learn why from the first client).
    let r = lb.client().get("/").await;
    assert_eq!(
        r.body,
        "503 no backend available: every backend is down (health checks failing)\n"
    );

    // Three dead backends and one retry: still 503, not 502.
    let c = TestBackend::spawn("app3").await;
    let lb = TestLb::start(&config("", &[&a, &b, &c], "")).await;
    c.stop().await;
    for i in 0..3 {
        let r = lb.client().get("/").await;
        assert_eq!(r.status, 503, "request {i}: {}", r.body);
    }
}

#[tokio::test]
async fn a_backend_slower_than_upstream_response_gets_504() {
    let a = TestBackend::spawn("app1").await;
    let lb = TestLb::start(&config(
        "\n[timeouts]\nupstream_response = \"300ms\"",
        &[&a],
        "[upstream.shop.health]\npassive_fall = 2",
    ))
    .await;
    let mut client = lb.client();
    let started = Instant::now();
    let r = client.get("/slow?ms=5000").await;
    assert_eq!(r.status, 504);
    assert_eq!(r.body, "504 gateway timeout\n");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "{took:?}"
    );
    // The timeout counted against the backend: 1 of passive_fall 2.
    assert_eq!(lb.backend_state("shop", "app1"), "up");
    // Fast enough is fine, and resets the count: another timeout is 1 of 2 again.
    let r = client.get("/slow?ms=10").await;
    assert_eq!(r.status, 200);
    let r = client.get("/slow?ms=5000").await;
    assert_eq!(r.status, 504);
    assert_eq!(lb.backend_state("shop", "app1"), "up");
    // Two in a row mark it down (no other backend: the answer stays 504).
    let r = client.get("/slow?ms=5000").await;
    assert_eq!(r.status, 504);
    assert_eq!(lb.backend_state("shop", "app1"), "down");
}

/// `[upstream.NAME.timeouts] response` overrides `[timeouts] upstream_response`
/// for that upstream only, on HTTP/1 and HTTP/2.
#[tokio::test]
async fn an_upstreams_own_response_timeout_overrides_the_global_one() {
    let a = TestBackend::spawn("app1").await;
    let b = TestBackend::spawn("app2").await;
    let toml = format!(
        "[listen]\nhttp = [\"127.0.0.1:0\"]\n\n[timeouts]\nupstream_response = \"5s\"\n\n\
         [[route]]\nhost = \"quick.test\"\nupstream = \"quick\"\n\n\
         [[route]]\nupstream = \"patient\"\n\n\
         [upstream.quick]\naffinity = \"none\"\n\
         [upstream.quick.timeouts]\nresponse = \"300ms\"\n\
         [upstream.quick.health]\npassive_fall = 10\n\
         [[upstream.quick.backend]]\nname = \"app1\"\naddr = \"{}\"\n\n\
         [upstream.patient]\naffinity = \"none\"\n\
         [[upstream.patient.backend]]\nname = \"app2\"\naddr = \"{}\"\n",
        a.addr, b.addr
    );
    let lb = TestLb::start(&toml).await;

    let mut quick = lb.client();
    quick.headers.insert("host", "quick.test".parse().unwrap());
    let started = Instant::now();
    let r = quick.get("/slow?ms=2000").await;
    assert_eq!(r.status, 504, "{}", r.body);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(1800),
        "{took:?}"
    );
    // The other upstream keeps the global 5s.
    let r = lb.client().get("/slow?ms=2000").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.backend(), "app2");

    // HTTP/2 (h2c prior knowledge) asks the upstream too.
    let mut sender = common::wire::h2_client(raw(lb.addr).await).await;
    let req = http::Request::get("http://quick.test/slow?ms=2000")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let started = Instant::now();
    let resp = sender.send_request(req).await.expect("h2 request");
    assert_eq!(resp.status(), 504);
    let took = started.elapsed();
    assert!(took < Duration::from_millis(1800), "{took:?}");
}

#[tokio::test]
async fn a_client_that_stops_mid_head_is_cut_off_after_client_header() {
    let a = TestBackend::spawn("app1").await;
    let lb = TestLb::start(&config(
        "\n[timeouts]\nclient_header = \"300ms\"",
        &[&a],
        "",
    ))
    .await;
    for partial in [
        &b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: "[..],
        b"GET /sl",
        // Nothing at all, or the start of the HTTP/2 preface.
        b"",
        b"PRI * HT",
    ] {
        let started = Instant::now();
        let (text, closed) = raw_exchange(lb.addr, partial, Duration::from_secs(2)).await;
        let took = started.elapsed();
        assert!(
            closed,
            "{:?}: still open after {took:?}",
            String::from_utf8_lossy(partial)
        );
        assert!(took >= Duration::from_millis(250), "{took:?}");
        // A head begun and not finished is answered 408 (as HAProxy does); a
        // connection that never sent a byte is closed without a word.
        match partial.is_empty() {
            true => assert_eq!(text, "", "nothing sent, nothing answered"),
            false => assert_eq!(raw_status(&text), Some(408), "{text}"),
        }
    }
    // A client that sends its head in pieces within the limit is served.
    let mut s = raw(lb.addr).await;
    s.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.write_all(b"Host: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut text))
        .await
        .expect("answered")
        .unwrap();
    assert_eq!(raw_status(&text), Some(200), "{text}");
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_and_x_forwarded_set() {
    let a = TestBackend::spawn("app1").await;
    let lb = TestLb::start(&config("", &[&a], "")).await;
    let mut client = lb.client();
    for (name, value) in [
        ("host", "shop.example.com:8080"),
        ("connection", "x-foo, X-Bar"),
        ("x-foo", "1"),
        ("x-bar", "2"),
        ("x-kept", "3"),
        ("te", "trailers"),
        ("keep-alive", "timeout=5"),
        ("proxy-connection", "keep-alive"),
        ("proxy-authorization", "Basic Zm9vOmJhcg=="),
        ("trailer", "x-checksum"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "evil.example"),
        ("x-limpet-failover-from", "app9"),
    ] {
        client.headers.append(name, value.parse().unwrap());
    }
    client
        .headers
        .append("x-forwarded-for", "203.0.113.7".parse().unwrap());
    client
        .headers
        .append("x-forwarded-for", "198.51.100.1, 10.0.0.1".parse().unwrap());
    let r = client.get("/headers").await;
    assert_eq!(r.status, 200);
    let seen: Vec<(String, String)> = r
        .body
        .lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let get = |name: &str| -> Vec<&str> {
        seen.iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    for gone in [
        "connection",
        "x-foo",
        "x-bar",
        "te",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "trailer",
        "x-limpet-failover-from",
    ] {
        assert!(get(gone).is_empty(), "{gone} reached the backend: {seen:?}");
    }
    assert_eq!(get("x-kept"), ["3"]);
    assert_eq!(get("host"), ["shop.example.com:8080"]);
    assert_eq!(
        get("x-forwarded-for"),
        ["203.0.113.7, 198.51.100.1, 10.0.0.1, 127.0.0.1"]
    );
    assert_eq!(get("x-forwarded-proto"), ["http"]);
    assert_eq!(get("x-forwarded-host"), ["shop.example.com:8080"]);

    // Without incoming X-Forwarded-For: just the peer.
    let r = lb.client().get("/").await;
    assert_eq!(r.header("x-seen-xff"), Some("127.0.0.1"));
    assert_eq!(r.header("x-seen-xfp"), Some("http"));
    assert_eq!(r.header("x-seen-xfh"), Some(&*lb.addr.to_string()));
    assert_eq!(r.header("x-seen-connection"), None);
}

#[tokio::test]
async fn bodies_stream_both_ways() {
    let a = TestBackend::spawn("app1").await;
    let lb = TestLb::start(&config("", &[&a], "")).await;
    let mut client = lb.client();
    let body: String = (0..200_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let r = client
        .request("PUT", "/echo", Bytes::from(body.clone()))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), body.len());
    assert_eq!(r.body, body);
    // Backend status codes pass through.
    assert_eq!(client.get("/status/418").await.status, 418);
    assert_eq!(client.get("/status/500").await.backend(), "app1");
}
