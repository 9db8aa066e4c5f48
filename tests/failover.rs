//! Failover (SPEC sections 3 and 4): a dead backend's pinned clients land on its
//! replica without a failed request, are re-pinned there and stay after it returns;
//! the replica chain; `failover = "reject"` and `"rebalance"`; a POST with a body to
//! a dead pinned backend is retried; a hung backend (accepts, never answers): its
//! idempotent bodiless requests fail over after the response timeout, others get
//! 504 and are never resent, and every timeout counts toward `passive_fall`.

mod common;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::scripted::{raw_backend, ScriptedBackend, Step};
use common::*;

const WAIT: Duration = Duration::from_secs(10);

/// Health checks fast enough for a stopped backend to be marked down (and a
/// restarted one up) within a fraction of a second.
const FAST_HEALTH: &str =
    "\n[upstream.shop.health]\ninterval = \"100ms\"\ntimeout = \"500ms\"\nrise = 1\nfall = 1\n";

/// `n` clients, each pinned by a first request; grouped by backend.
async fn pinned_clients(lb: &TestLb, n: usize) -> HashMap<String, Vec<Client>> {
    let mut by_backend: HashMap<String, Vec<Client>> = HashMap::new();
    for _ in 0..n {
        let mut client = lb.client();
        let r = client.get("/").await;
        assert_eq!(r.status, 200);
        assert!(client.cookie.is_some());
        by_backend
            .entry(r.backend().to_string())
            .or_default()
            .push(client);
    }
    by_backend
}

#[tokio::test]
async fn a_dead_backends_clients_move_to_its_replica_and_stay_there() {
    let [a, b, c] = three_backends().await;
    let extra = format!("balance = \"round-robin\"\n{FAST_HEALTH}");
    let lb = TestLb::start(&ring_config(&[&a, &b, &c], &extra)).await;
    let mut clients = pinned_clients(&lb, 30).await;
    let mut moved = clients.remove("app1").expect("clients pinned to app1");
    assert!(moved.len() >= 5, "{} clients on app1", moved.len());

    a.stop().await;
    // Straight away, before any health check noticed: not one failed request.
    for client in &mut moved {
        let r = client.get("/").await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.backend(), "app2", "app1's replica takes over");
        assert_eq!(r.header("x-seen-failover-from"), Some("app1"));
        assert!(r.set_cookie("limpet").is_some(), "re-pinned to the replica");
    }
    // The others are not disturbed.
    for (backend, group) in &mut clients {
        for client in group {
            let r = client.get("/").await;
            assert_eq!(r.status, 200);
            assert_eq!(r.backend(), backend);
            assert!(r.set_cookie("limpet").is_none());
            assert_eq!(r.header("x-seen-failover-from"), None);
        }
    }
    lb.wait_backend_state("shop", "app1", "down", WAIT).await;
    // Re-pinned: plain pinned requests to app2 now.
    for client in &mut moved {
        let r = client.get("/").await;
        assert_eq!(r.backend(), "app2");
        assert!(r.set_cookie("limpet").is_none());
        assert_eq!(r.header("x-seen-failover-from"), None);
    }

    a.restart().await;
    lb.wait_backend_state("shop", "app1", "up", WAIT).await;
    let hits = a.hits();
    for client in &mut moved {
        for _ in 0..5 {
            let r = client.get("/").await;
            assert_eq!(r.status, 200);
            assert_eq!(r.backend(), "app2", "the replica holds the newest session");
            assert!(r.set_cookie("limpet").is_none());
        }
    }
    assert_eq!(a.hits(), hits, "nobody went back to app1");
    // app1 takes new sessions again (slow start makes it take its turns rarely at
    // first).
    let mut fresh = lb.client();
    let mut back = false;
    for _ in 0..2000 {
        fresh.cookie = None;
        if fresh.get("/").await.backend() == "app1" {
            back = true;
            break;
        }
    }
    assert!(back, "app1 gets new sessions once up");
}

#[tokio::test]
async fn the_replica_chain_skips_a_dead_replica() {
    let [a, b, c] = three_backends().await;
    // app1 -> app2 -> app3 -> app1. Two retries: app1 and app2 refuse, app3 answers.
    let lb = TestLb::start(&ring_config(&[&a, &b, &c], "retries = 2")).await;
    let mut first = lb.client_pinned_to("app1").await;
    let mut second = lb.client_pinned_to("app1").await;
    let mut on_app2 = lb.client_pinned_to("app2").await;
    a.stop().await;
    b.stop().await;

    // Found out by retrying (nothing is marked down yet)...
    let r = first.get("/").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.backend(), "app3");
    assert_eq!(r.header("x-seen-failover-from"), Some("app1"));
    assert!(r.set_cookie("limpet").is_some());
    let r = first.get("/").await;
    assert_eq!(r.backend(), "app3");
    assert!(r.set_cookie("limpet").is_none());

    // ... or known from the health state: the chain is walked past app2 either way.
    let r = second.get("/").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.backend(), "app3");
    assert_eq!(r.header("x-seen-failover-from"), Some("app1"));
    assert!(r.set_cookie("limpet").is_some());

    // app2's clients fail over to app2's replica, app3.
    let r = on_app2.get("/").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.backend(), "app3");
    assert_eq!(r.header("x-seen-failover-from"), Some("app2"));
}

#[tokio::test]
async fn the_replica_chain_ends_in_a_rebalance() {
    // app1 -> app2 and app2 -> app1: with both dead the chain is exhausted and the
    // client is balanced onto app3 and re-pinned there.
    let [a, b, c] = three_backends().await;
    let mut toml = String::from(
        "[listen]\nhttp = [\"127.0.0.1:0\"]\n\n[upstream.shop]\nretries = 2\n\n\
         [upstream.shop.cookie]\nsecret = \"test-secret\"\n",
    );
    for (backend, replica) in [(&a, Some("app2")), (&b, Some("app1")), (&c, None)] {
        toml.push_str(&format!(
            "\n[[upstream.shop.backend]]\nname = \"{}\"\naddr = \"{}\"\n",
            backend.name, backend.addr
        ));
        if let Some(r) = replica {
            toml.push_str(&format!("replica = \"{r}\"\n"));
        }
    }
    let lb = TestLb::start(&toml).await;
    let mut client = lb.client_pinned_to("app1").await;
    a.stop().await;
    b.stop().await;
    let r = client.get("/").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.backend(), "app3");
    assert_eq!(r.header("x-seen-failover-from"), Some("app1"));
    assert!(r.set_cookie("limpet").is_some());
    let r = client.get("/").await;
    assert_eq!(r.backend(), "app3");
    assert!(r.set_cookie("limpet").is_none());
}

#[tokio::test]
async fn failover_reject_answers_503() {
    let [a, b, c] = three_backends().await;
    let extra = format!("failover = \"reject\"\n{FAST_HEALTH}");
    let lb = TestLb::start(&ring_config(&[&a, &b, &c], &extra)).await;
    let mut pinned = lb.client_pinned_to("app1").await;
    let mut other = lb.client_pinned_to("app2").await;
    a.stop().await;
    // Before and after app1 is marked down, the same answer: the policy's
    // (before, it was "503 no backend available", as if nothing were up).
    let r = pinned.get("/").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.body, "503 backend unavailable\n");
    assert_eq!(r.backend(), "");
    lb.wait_backend_state("shop", "app1", "down", WAIT).await;
    let r = pinned.get("/").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.body, "503 backend unavailable\n");
    assert!(r.set_cookie("limpet").is_none(), "the pin is kept");
    // Others are served; new clients go to the live backends.
    assert_eq!(other.get("/").await.backend(), "app2");
    for _ in 0..10 {
        let r = lb.client().get("/").await;
        assert_eq!(r.status, 200);
        assert_ne!(r.backend(), "app1");
    }
    // When app1 is back, its clients are served by it again.
    a.restart().await;
    lb.wait_backend_state("shop", "app1", "up", WAIT).await;
    let r = pinned.get("/").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.backend(), "app1");
}

#[tokio::test]
async fn failover_rebalance_repins_by_balance() {
    let [a, b, c] = three_backends().await;
    let lb = TestLb::start(&ring_config(&[&a, &b, &c], "failover = \"rebalance\"")).await;
    let mut pinned = lb.client_pinned_to("app1").await;
    a.stop().await;
    let r = pinned.get("/").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let now = r.backend().to_string();
    assert!(now == "app2" || now == "app3", "{now}");
    assert_eq!(r.header("x-seen-failover-from"), Some("app1"));
    assert!(r.set_cookie("limpet").is_some());
    for _ in 0..10 {
        let r = pinned.get("/").await;
        assert_eq!(r.backend(), now);
        assert!(r.set_cookie("limpet").is_none());
    }
}

#[tokio::test]
async fn a_post_with_a_body_to_a_dead_pinned_backend_is_retried() {
    let [a, b, c] = three_backends().await;
    let toml = ring_config(&[&a, &b, &c], "");
    let lb = TestLb::start(&toml).await;
    // Clients pinned through this instance (it has pooled connections to app1)...
    let mut clients = vec![
        lb.client_pinned_to("app1").await,
        lb.client_pinned_to("app1").await,
    ];
    for c in &mut clients {
        // Keep-alive connections to app1 in limpet's pool.
        assert_eq!(c.get("/").await.backend(), "app1");
    }
    // ... and one pinned through another instance, so that this one has never
    // connected for it: the connection is refused before anything is sent.
    let other = TestLb::start(&toml).await;
    let mut stranger = other.client_pinned_to("app1").await;
    stranger.base = lb.client().base;
    clients.insert(0, stranger);

    a.stop().await;
    for (i, client) in clients.iter_mut().enumerate() {
        let body = format!("order #{i}: 2 x cart item, {}", "x".repeat(10_000));
        let r = client
            .request("POST", "/echo", Bytes::from(body.clone()))
            .await;
        assert_eq!(
            r.status,
            200,
            "client {i}: {}",
            &r.body[..r.body.len().min(200)]
        );
        assert_eq!(r.backend(), "app2", "client {i}");
        assert_eq!(r.body, body, "client {i}: the body arrived whole");
        assert_eq!(r.header("x-seen-failover-from"), Some("app1"));
        assert!(r.set_cookie("limpet").is_some(), "client {i}");
    }
}

/// A backend named `app1` that answers the first request of each connection with
/// keep-alive and closes the connection, unanswered, when a second request arrives
/// on it: the race of a backend closing an idle keep-alive connection just as a
/// request is sent on it.
async fn closes_reused_connections() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    raw_backend(|mut stream| async move {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let mut answered = 0;
        loop {
            while let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                got.drain(..end + 4);
                if answered == 1 {
                    return; // closes, unanswered
                }
                answered += 1;
                let reply = "HTTP/1.1 200 OK\r\ncontent-length: 4\r\nx-backend: app1\r\n\r\napp1";
                if stream.write_all(reply.as_bytes()).await.is_err() {
                    return;
                }
            }
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
}

#[tokio::test]
async fn a_keep_alive_connection_the_backend_closed_is_not_a_failover() {
    let app1 = closes_reused_connections().await;
    let app2 = TestBackend::spawn("app2").await;
    let toml = format!(
        "[listen]\nhttp = [\"127.0.0.1:0\"]\n\n[upstream.shop]\n\n\
         [upstream.shop.cookie]\nsecret = \"test-secret\"\n\n\
         [[upstream.shop.backend]]\nname = \"app1\"\naddr = \"{app1}\"\nreplica = \"app2\"\n\n\
         [[upstream.shop.backend]]\nname = \"app2\"\naddr = \"{}\"\nreplica = \"app1\"\n",
        app2.addr
    );
    let lb = TestLb::start(&toml).await;
    let mut client = lb.client_pinned_to("app1").await;
    for i in 0..10 {
        let r = client.get("/").await;
        assert_eq!(r.status, 200, "request {i}");
        assert_eq!(
            r.backend(),
            "app1",
            "request {i}: the session stays on app1"
        );
        assert!(
            r.set_cookie("limpet").is_none(),
            "request {i}: not re-pinned"
        );
    }
    assert_eq!(lb.backend_state("shop", "app1"), "up");
}

fn set_operator(lb: &TestLb, backend: &str, op: limpet::backend::Operator) {
    let snap = lb.limpet.state.load();
    let up = snap.upstream("shop").unwrap();
    let b = up.backends.iter().find(|b| &*b.name == backend).unwrap();
    b.state.set_operator(op);
}

#[tokio::test]
async fn draining_keeps_pinned_clients_and_maintenance_fails_them_over() {
    use limpet::backend::Operator;
    let [a, b, c] = three_backends().await;
    let lb = TestLb::start(&ring_config(&[&a, &b, &c], "balance = \"round-robin\"")).await;
    let mut on_app1 = lb.client_pinned_to("app1").await;

    set_operator(&lb, "app1", Operator::Draining);
    assert_eq!(lb.backend_state("shop", "app1"), "draining");
    for _ in 0..5 {
        let r = on_app1.get("/").await;
        assert_eq!(r.backend(), "app1", "a draining backend keeps its clients");
        assert!(r.set_cookie("limpet").is_none());
    }
    for _ in 0..30 {
        let r = lb.client().get("/").await;
        assert_eq!(r.status, 200);
        assert_ne!(
            r.backend(),
            "app1",
            "a draining backend takes no new session"
        );
    }

    set_operator(&lb, "app1", Operator::Maintenance);
    assert_eq!(lb.backend_state("shop", "app1"), "maintenance");
    let r = on_app1.get("/").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.backend(), "app2", "maintenance: its clients fail over");
    assert_eq!(r.header("x-seen-failover-from"), Some("app1"));
    assert!(r.set_cookie("limpet").is_some());
    for _ in 0..30 {
        assert_ne!(lb.client().get("/").await.backend(), "app1");
    }

    set_operator(&lb, "app1", Operator::Ready);
    let mut seen_app1 = false;
    for _ in 0..30 {
        seen_app1 |= lb.client().get("/").await.backend() == "app1";
    }
    assert!(seen_app1, "ready again: app1 takes new sessions");
    // The moved client stays on app2.
    assert_eq!(on_app1.get("/").await.backend(), "app2");
}

#[tokio::test]
async fn ip_hash_clients_fail_over_to_the_replica_without_a_cookie() {
    let [a, b, c] = three_backends().await;
    let mut toml = ring_config(&[&a, &b, &c], "affinity = \"ip-hash\"");
    toml.push_str(FAST_HEALTH);
    let lb = TestLb::start(&toml).await;
    let mut client = lb.client();
    let home = client.get("/").await.backend().to_string();
    let replica = match home.as_str() {
        "app1" => "app2",
        "app2" => "app3",
        _ => "app1",
    };
    let home_backend = [&a, &b, &c].into_iter().find(|x| x.name == home).unwrap();
    home_backend.stop().await;
    for _ in 0..5 {
        let r = client.get("/").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.backend(), replica);
        assert_eq!(r.header("x-seen-failover-from"), Some(home.as_str()));
        assert!(r.headers.get("set-cookie").is_none());
    }
    // Nothing remembers the move: back home once the backend is up.
    home_backend.restart().await;
    lb.wait_backend_state("shop", &home, "up", WAIT).await;
    assert_eq!(client.get("/").await.backend(), home);
}

/// `app1` as a raw backend that answers with its name until `hung` is set, then
/// reads every request and never answers (a stopped process whose socket the
/// kernel still serves), and `app2` a real backend; each the other's replica.
/// The upstream's own response timeout is 300ms; health checks are too rare to
/// change anything while a test runs. `extra` goes into `[upstream.shop]`, and
/// `passive_fall` into its health table.
async fn hung_app1(
    extra: &str,
    passive_fall: u32,
) -> (TestLb, ScriptedBackend, TestBackend, Arc<AtomicBool>) {
    let hung = Arc::new(AtomicBool::new(false));
    let stop = hung.clone();
    let app1 = ScriptedBackend::spawn(move |_| match stop.load(Ordering::SeqCst) {
        true => vec![Step::Pause(Duration::from_secs(60))],
        false => vec![Step::Write(
            b"HTTP/1.1 200 OK\r\nx-backend: app1\r\ncontent-length: 4\r\n\r\napp1".to_vec(),
        )],
    })
    .await;
    let app2 = TestBackend::spawn("app2").await;
    let toml = format!(
        "[listen]\nhttp = [\"127.0.0.1:0\"]\n\n[upstream.shop]\n{extra}\n\n\
         [upstream.shop.cookie]\nsecret = \"test-secret\"\n\n\
         [upstream.shop.timeouts]\nresponse = \"300ms\"\n\n\
         [upstream.shop.health]\ninterval = \"30s\"\npassive_fall = {passive_fall}\n\n\
         [[upstream.shop.backend]]\nname = \"app1\"\naddr = \"{}\"\nreplica = \"app2\"\n\n\
         [[upstream.shop.backend]]\nname = \"app2\"\naddr = \"{}\"\nreplica = \"app1\"\n",
        app1.addr, app2.addr
    );
    let lb = TestLb::start(&toml).await;
    (lb, app1, app2, hung)
}

/// The requests `app1` received with `method`.
fn received(app1: &ScriptedBackend, method: &str) -> usize {
    app1.received()
        .iter()
        .filter(|r| r.method == method)
        .count()
}

#[tokio::test]
async fn a_hung_backends_pinned_get_fails_over_to_the_replica_and_repins() {
    // passive_fall high enough that app1 stays up: every request below times out.
    let (lb, app1, app2, hung) = hung_app1("", 10).await;
    let mut client = lb.client_pinned_to("app1").await;
    let mut over_h2 = lb.client_pinned_to("app1").await;
    hung.store(true, Ordering::SeqCst);
    let gets_before = received(&app1, "GET");

    let started = Instant::now();
    let r = client.get("/").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.backend(), "app2", "the replica answers");
    assert_eq!(r.header("x-seen-failover-from"), Some("app1"));
    assert!(r.set_cookie("limpet").is_some(), "re-pinned to the replica");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(received(&app1, "GET"), gets_before + 1, "sent to app1 once");
    // Re-pinned: straight to app2 from now on.
    let r = client.get("/").await;
    assert_eq!(r.backend(), "app2");
    assert!(r.set_cookie("limpet").is_none());
    assert_eq!(r.header("x-seen-failover-from"), None);
    assert_eq!(lb.backend_state("shop", "app1"), "up");

    // The same over HTTP/2 (h2c prior knowledge).
    let cookie = format!("limpet={}", over_h2.cookie.take().unwrap());
    let mut sender = common::wire::h2_client(common::wire::raw(lb.addr).await).await;
    let req = http::Request::get("http://localhost/")
        .header("cookie", cookie)
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.expect("h2 request");
    assert_eq!(resp.status(), 200);
    let h = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok());
    assert_eq!(h("x-backend"), Some("app2"));
    assert_eq!(h("x-seen-failover-from"), Some("app1"));
    assert!(h("set-cookie").is_some_and(|c| c.starts_with("limpet=")));
    assert_eq!(received(&app1, "GET"), gets_before + 2);
    assert!(app2.hits() >= 3, "app2 answered them all");
}

#[tokio::test]
async fn a_request_with_a_body_to_a_hung_backend_gets_504_once_and_counts_as_a_failure() {
    let (lb, app1, app2, hung) = hung_app1("retries = 2", 2).await;
    let mut client = lb.client_pinned_to("app1").await;
    hung.store(true, Ordering::SeqCst);
    let hits = app2.hits();

    let r = client
        .request("POST", "/order", Bytes::from("2 x cart item"))
        .await;
    assert_eq!(r.status, 504, "{}", r.body);
    assert!(r.set_cookie("limpet").is_none(), "still pinned to app1");
    assert_eq!(received(&app1, "POST"), 1, "app1 saw the POST once");
    assert_eq!(
        lb.backend_state("shop", "app1"),
        "up",
        "1 of passive_fall 2"
    );

    // Idempotent but with a body: not replayable either.
    let r = client
        .request("PUT", "/cart", Bytes::from("3 x cart item"))
        .await;
    assert_eq!(r.status, 504, "{}", r.body);
    assert_eq!(received(&app1, "PUT"), 1, "app1 saw the PUT once");
    assert_eq!(app2.hits(), hits, "neither was sent to the replica");
    assert_eq!(
        lb.backend_state("shop", "app1"),
        "down",
        "two timeouts in a row with passive_fall = 2"
    );
    assert_eq!(received(&app1, "POST"), 1, "never resent");
}

#[tokio::test]
async fn two_timed_out_gets_mark_a_hung_backend_down_with_passive_fall_2() {
    let (lb, app1, _app2, hung) = hung_app1("", 2).await;
    let mut first = lb.client_pinned_to("app1").await;
    let mut second = lb.client_pinned_to("app1").await;
    let mut third = lb.client_pinned_to("app1").await;
    hung.store(true, Ordering::SeqCst);

    for (i, client) in [&mut first, &mut second].into_iter().enumerate() {
        let r = client.get("/").await;
        assert_eq!(r.status, 200, "client {i}: {}", r.body);
        assert_eq!(r.backend(), "app2", "client {i}");
        assert_eq!(r.header("x-seen-failover-from"), Some("app1"));
        let expected = ["up", "down"][i];
        assert_eq!(
            lb.backend_state("shop", "app1"),
            expected,
            "after {}",
            i + 1
        );
    }
    // Down: app1's clients go to the replica without waiting for it.
    let gets = received(&app1, "GET");
    let started = Instant::now();
    let r = third.get("/").await;
    assert_eq!(r.backend(), "app2");
    assert_eq!(r.header("x-seen-failover-from"), Some("app1"));
    assert!(started.elapsed() < Duration::from_millis(250));
    assert_eq!(received(&app1, "GET"), gets);
}

#[tokio::test]
async fn with_no_retry_left_a_timed_out_get_gets_504_and_counts_as_a_failure() {
    let (lb, app1, app2, hung) = hung_app1("retries = 0", 1).await;
    let mut client = lb.client_pinned_to("app1").await;
    hung.store(true, Ordering::SeqCst);
    let (hits, gets) = (app2.hits(), received(&app1, "GET"));
    let r = client.get("/").await;
    assert_eq!(r.status, 504, "{}", r.body);
    assert_eq!(r.body, "504 gateway timeout\n");
    assert_eq!(app2.hits(), hits, "no retry: not sent to the replica");
    assert_eq!(received(&app1, "GET"), gets + 1);
    assert_eq!(lb.backend_state("shop", "app1"), "down", "passive_fall = 1");
}
