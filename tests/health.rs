//! SPEC section 5: active checks (fall, rise, timeout, refused connections), passive
//! marking by live traffic, slow start, and the warn log of every state change.

mod common;
mod ops;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use ops::*;

/// A ring of `backends` (app1 -> app2 -> ... -> app1) with an admin listener.
fn config(backends: &[&TestBackend], upstream: &str, health: &str) -> String {
    let extra = format!("{upstream}\n\n[upstream.shop.health]\n{health}\n");
    let mut s = ring_config(backends, &extra);
    s.push_str(ADMIN);
    s
}

/// Log lines written while the guard lives, on this thread (the tests run on a
/// current-thread runtime, so limpet's tasks log here too).
struct Logs {
    buf: Arc<Mutex<Vec<u8>>>,
    _guard: tracing::subscriber::DefaultGuard,
}

impl Logs {
    fn capture() -> Logs {
        let buf: Arc<Mutex<Vec<u8>>> = Arc::default();
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || Sink(sink.clone()))
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        Logs { buf, _guard }
    }

    /// WARN lines mentioning `backend`.
    /// The backend's warnings say it went down for `reason`, and came back up.
    fn assert_down_then_up(&self, backend: &str, reason: &str) {
        let warnings = self.warnings(backend);
        assert!(
            warnings
                .iter()
                .any(|l| l.contains("backend down") && l.contains(reason)),
            "{warnings:#?}"
        );
        assert!(
            warnings.iter().any(|l| l.contains("backend up")),
            "{warnings:#?}"
        );
    }

    fn warnings(&self, backend: &str) -> Vec<String> {
        let text = String::from_utf8_lossy(&self.buf.lock().unwrap()).into_owned();
        text.lines()
            .filter(|l| l.contains(" WARN ") && l.contains(&format!("backend={backend}")))
            .map(str::to_string)
            .collect()
    }
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn replica_of(name: &str, ring: &[&TestBackend]) -> String {
    let i = ring.iter().position(|b| b.name == name).expect("in ring");
    ring[(i + 1) % ring.len()].name.clone()
}

/// Scrapes until `backend`'s `limpet_backend_up` is `want`, asserting on the way
/// that it never flipped before `needed` checks with `result` were counted since
/// `base`; returns how many had been counted when it flipped.
async fn checks_until_flip(
    admin: &AdminClient,
    backend: &str,
    result: &str,
    base: f64,
    want: f64,
    needed: f64,
) -> f64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = admin.metrics().await;
        // The scrape reads health before the counters, and the checker counts a
        // check before it changes health: a flip seen here is never ahead of its count.
        let up = m.up(backend);
        let counted = m.checks(backend, result) - base;
        if up == want {
            return counted;
        }
        assert!(
            counted <= needed,
            "{backend}: {counted} {result} checks and still not flipped"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "{backend} never flipped"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_failing_backend_goes_down_after_fall_checks_its_clients_move_to_its_replica_and_it_returns_after_rise(
) {
    let logs = Logs::capture();
    let [a, b, c] = three_backends().await;
    let ring = [&a, &b, &c];
    let lb = TestLb::start(&config(
        &ring,
        "balance = \"round-robin\"",
        "interval = \"150ms\"\ntimeout = \"100ms\"\nfall = 3\nrise = 2",
    ))
    .await;
    let admin = AdminClient::new(lb.limpet.admin_addr.unwrap());

    let mut client = lb.client();
    let pinned = client.get("/").await.backend().to_string();
    let replica = replica_of(&pinned, &ring);
    let sick = ring.iter().find(|t| t.name == pinned).unwrap();

    // A pinned client keeps browsing throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut seen: Vec<(u16, String, Option<String>)> = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let r = client.get("/").await;
                seen.push((
                    r.status.as_u16(),
                    r.backend().to_string(),
                    r.header("x-seen-failover-from").map(str::to_string),
                ));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            seen
        }
    });

    let base_fail = admin.metrics().await.checks(&pinned, "fail");
    assert_eq!(base_fail, 0.0);
    sick.health_status.store(500, Ordering::SeqCst);
    let fails = checks_until_flip(&admin, &pinned, "fail", base_fail, 0.0, 3.0).await;
    assert_eq!(fails, 3.0, "down after exactly `fall` failed checks");
    let entry = admin.backend("shop", &pinned).await;
    assert_eq!(entry["state"], "down");
    assert_eq!(entry["last_check"]["ok"], false);
    assert_eq!(entry["last_check"]["error"], "status 500");

    // Its client is now served by the replica.
    let moved = eventually(Duration::from_secs(5), || async {
        admin.backend("shop", &replica).await["requests"]
            .as_u64()
            .unwrap()
            >= 3
    })
    .await;
    assert!(moved, "the pinned client never reached the replica");

    let base_ok = admin.metrics().await.checks(&pinned, "ok");
    sick.health_status.store(200, Ordering::SeqCst);
    let passes = checks_until_flip(&admin, &pinned, "ok", base_ok, 1.0, 2.0).await;
    assert_eq!(passes, 2.0, "up after exactly `rise` passed checks");
    assert_eq!(admin.state(&pinned).await, "up");

    // A few more requests after the backend returned.
    let returned_at = admin.backend("shop", &replica).await["requests"]
        .as_u64()
        .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            admin.backend("shop", &replica).await["requests"]
                .as_u64()
                .unwrap()
                >= returned_at + 5
        })
        .await
    );
    stop.store(true, Ordering::SeqCst);
    let seen = traffic.await.unwrap();

    let failed: Vec<_> = seen.iter().filter(|(s, _, _)| *s != 200).collect();
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    let first_on_replica = seen
        .iter()
        .position(|(_, backend, _)| *backend == replica)
        .expect("reached the replica");
    assert!(seen[..first_on_replica]
        .iter()
        .all(|(_, b, _)| *b == pinned));
    assert!(
        seen[first_on_replica..]
            .iter()
            .all(|(_, b, _)| *b == replica),
        "re-pinned to the replica, and stays there after the backend returns"
    );
    assert_eq!(
        seen[first_on_replica].2.as_deref(),
        Some(pinned.as_str()),
        "the first request on the replica says where it failed over from"
    );

    logs.assert_down_then_up(&pinned, "status 500");
}

#[tokio::test]
async fn a_hanging_health_endpoint_fails_after_the_timeout() {
    let logs = Logs::capture();
    let (a, b) = (
        TestBackend::spawn("app1").await,
        TestBackend::spawn("app2").await,
    );
    let lb = TestLb::start(&config(
        &[&a, &b],
        "",
        "interval = \"100ms\"\ntimeout = \"150ms\"\nfall = 2\nrise = 1",
    ))
    .await;
    let admin = AdminClient::new(lb.limpet.admin_addr.unwrap());
    // Wait for a first good check so the hang below is what fails.
    assert!(
        eventually(Duration::from_secs(5), || async {
            admin.backend("shop", "app1").await["last_check"]["ok"] == true
        })
        .await
    );
    a.health_delay_ms.store(3000, Ordering::SeqCst);
    let fails = checks_until_flip(&admin, "app1", "fail", 0.0, 0.0, 2.0).await;
    assert_eq!(fails, 2.0);
    let check = admin.backend("shop", "app1").await["last_check"].clone();
    assert_eq!(check["ok"], false);
    assert_eq!(check["error"], "timeout after 150ms");
    let latency = check["latency_ms"].as_f64().unwrap();
    assert!(
        (150.0..1000.0).contains(&latency),
        "a hanging check fails after `timeout`, not when the backend answers: {latency} ms"
    );
    assert!(
        logs.warnings("app1")
            .iter()
            .any(|l| l.contains("backend down") && l.contains("timeout after 150ms")),
        "{:#?}",
        logs.warnings("app1")
    );

    a.health_delay_ms.store(0, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(5), || async {
            admin.state("app1").await == "up"
        })
        .await
    );
}

#[tokio::test]
async fn a_refused_connection_fails_the_check_and_the_backend_returns_when_it_listens_again() {
    let logs = Logs::capture();
    let (a, b) = (
        TestBackend::spawn("app1").await,
        TestBackend::spawn("app2").await,
    );
    let lb = TestLb::start(&config(
        &[&a, &b],
        "",
        "interval = \"100ms\"\ntimeout = \"100ms\"\nfall = 2\nrise = 2",
    ))
    .await;
    let admin = AdminClient::new(lb.limpet.admin_addr.unwrap());
    b.stop().await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            admin.state("app2").await == "down"
        })
        .await
    );
    assert_eq!(
        admin.backend("shop", "app2").await["last_check"]["error"],
        "connection refused"
    );
    assert_eq!(admin.state("app1").await, "up");
    b.restart().await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            admin.state("app2").await == "up"
        })
        .await
    );
    logs.assert_down_then_up("app2", "connection refused");
}

#[tokio::test]
async fn live_traffic_marks_a_dead_backend_down_at_once_and_it_needs_rise_passes_to_return() {
    let logs = Logs::capture();
    let (a, b) = (
        TestBackend::spawn("app1").await,
        TestBackend::spawn("app2").await,
    );
    // Active checks alone would take 100 failures: only passive marking is quick.
    let lb = TestLb::start(&config(
        &[&a, &b],
        "balance = \"round-robin\"",
        "interval = \"100ms\"\ntimeout = \"100ms\"\nfall = 100\nrise = 3\npassive_fall = 1",
    ))
    .await;
    let admin = AdminClient::new(lb.limpet.admin_addr.unwrap());
    let mut client = lb.client();
    let pinned = client.get("/").await.backend().to_string();
    let (dead, other) = if pinned == "app1" {
        (&a, "app2")
    } else {
        (&b, "app1")
    };
    dead.stop().await;
    let r = client.get("/").await;
    assert_eq!(r.status, 200, "the dead backend is invisible to the client");
    assert_eq!(r.backend(), other);
    assert_eq!(admin.state(&pinned).await, "down", "marked down at once");
    assert!(
        logs.warnings(&pinned)
            .iter()
            .any(|l| l.contains("backend down") && l.contains("live traffic")),
        "{:#?}",
        logs.warnings(&pinned)
    );

    let base_ok = admin.metrics().await.checks(&pinned, "ok");
    dead.restart().await;
    let passes = checks_until_flip(&admin, &pinned, "ok", base_ok, 1.0, 3.0).await;
    assert_eq!(passes, 3.0, "up after exactly `rise` passes");
}

#[tokio::test]
async fn a_returning_backend_gets_new_sessions_slowly_during_slow_start() {
    let (a, b) = (
        TestBackend::spawn("app1").await,
        TestBackend::spawn("app2").await,
    );
    let lb = TestLb::start(&config(
        &[&a, &b],
        "balance = \"random\"",
        "interval = \"50ms\"\ntimeout = \"100ms\"\nfall = 1\nrise = 1\nslow_start = \"2s\"",
    ))
    .await;
    let admin = AdminClient::new(lb.limpet.admin_addr.unwrap());
    a.health_status.store(500, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(5), || async {
            admin.state("app1").await == "down"
        })
        .await
    );
    a.health_status.store(200, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(5), || async {
            admin.state("app1").await == "up"
        })
        .await
    );

    let mut client = lb.client();
    // Right after it returned, app1 weighs about 5% of app2: ~2 of 40 new sessions
    // (an even split would give 20).
    let early = new_sessions_on(&mut client, 40).await;
    assert!(
        early <= 14,
        "{early} of 40 new sessions right after recovery"
    );
    // Once slow start is over, it takes its full share again.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let late = new_sessions_on(&mut client, 60).await;
    assert!(late >= 15, "{late} of 60 new sessions after slow start");
}

/// Sends `n` requests as new clients; returns how many app1 took.
async fn new_sessions_on(client: &mut Client, n: usize) -> usize {
    let mut on_app1 = 0;
    for _ in 0..n {
        client.cookie = None;
        if client.get("/").await.backend() == "app1" {
            on_app1 += 1;
        }
    }
    on_app1
}
