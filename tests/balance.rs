//! Balancing new sessions (SPEC section 2, `balance` and `weight`): 1,000 new clients
//! over three backends get even shares, and weights give proportional shares.

mod common;
use std::collections::HashMap;
use std::time::Duration;

use common::*;

/// `[upstream.shop]` with `balance` over backends with `weights`.
fn config(backends: &[&TestBackend], weights: &[u32], balance: &str) -> String {
    let mut s = format!(
        "[listen]\nhttp = [\"127.0.0.1:0\"]\n\n[upstream.shop]\nbalance = \"{balance}\"\n\n\
         [upstream.shop.cookie]\nsecret = \"test-secret\"\n"
    );
    for (b, w) in backends.iter().zip(weights) {
        s.push_str(&format!(
            "\n[[upstream.shop.backend]]\nname = \"{}\"\naddr = \"{}\"\nweight = {w}\n",
            b.name, b.addr
        ));
    }
    s
}

/// Sends `n` requests, each as a new client (no cookie), and counts who answered.
async fn new_clients(lb: &TestLb, n: usize) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    let mut client = lb.client();
    for _ in 0..n {
        client.cookie = None;
        let r = client.get("/").await;
        assert_eq!(r.status, 200);
        assert!(r.set_cookie("limpet").is_some(), "a new client is pinned");
        *counts.entry(r.backend().to_string()).or_default() += 1;
    }
    counts
}

/// Each backend's share is within ±15% of `n * weight / total`.
fn assert_shares(counts: &HashMap<String, usize>, names: &[&str], weights: &[u32], n: usize) {
    let total: u32 = weights.iter().sum();
    for (name, w) in names.iter().zip(weights) {
        let expected = n as f64 * *w as f64 / total as f64;
        let got = counts.get(*name).copied().unwrap_or(0) as f64;
        assert!(
            (got - expected).abs() <= expected * 0.15,
            "{name}: {got} of {n}, expected {expected:.0} ±15%: {counts:?}"
        );
    }
    assert_eq!(counts.values().sum::<usize>(), n, "{counts:?}");
}

const NAMES: [&str; 3] = ["app1", "app2", "app3"];

#[tokio::test]
async fn round_robin_shares_new_clients_evenly() {
    let [a, b, c] = three_backends().await;
    let lb = TestLb::start(&config(&[&a, &b, &c], &[1, 1, 1], "round-robin")).await;
    let counts = new_clients(&lb, 1000).await;
    assert_shares(&counts, &NAMES, &[1, 1, 1], 1000);
    // Round-robin is exact.
    for n in counts.values() {
        assert!((333..=334).contains(n), "{counts:?}");
    }
}

#[tokio::test]
async fn least_requests_shares_new_clients_evenly() {
    let [a, b, c] = three_backends().await;
    let lb = TestLb::start(&config(&[&a, &b, &c], &[1, 1, 1], "least-requests")).await;
    let counts = new_clients(&lb, 1000).await;
    assert_shares(&counts, &NAMES, &[1, 1, 1], 1000);
}

#[tokio::test]
async fn weights_give_proportional_shares_under_every_policy() {
    let [a, b, c] = three_backends().await;
    for (balance, n) in [
        ("round-robin", 1200),
        ("least-requests", 1200),
        // Random needs more draws for ±15% to be many standard deviations wide.
        ("random", 3000),
    ] {
        let lb = TestLb::start(&config(&[&a, &b, &c], &[1, 2, 3], balance)).await;
        let counts = new_clients(&lb, n).await;
        assert_shares(&counts, &NAMES, &[1, 2, 3], n);
    }
}

#[tokio::test]
async fn pinned_traffic_does_not_starve_a_backend_of_new_sessions() {
    // A busy pinned client on one backend must not keep every new session away
    // from it: the policy balances requests in flight, not a lifetime count.
    let [a, b, c] = three_backends().await;
    let lb = TestLb::start(&config(&[&a, &b, &c], &[1, 1, 1], "least-requests")).await;
    let mut pinned = lb.client();
    let first = pinned.get("/").await.backend().to_string();
    for _ in 0..300 {
        assert_eq!(pinned.get("/").await.backend(), first);
    }
    let counts = new_clients(&lb, 300).await;
    assert_shares(&counts, &NAMES, &[1, 1, 1], 300);
}

#[tokio::test]
async fn a_backend_added_by_reload_gets_its_share_not_every_new_session() {
    let [a, b, c] = three_backends().await;
    let lb = TestLb::start(&config(&[&a, &b], &[1, 1], "least-requests")).await;
    let counts = new_clients(&lb, 300).await;
    assert_shares(&counts, &NAMES[..2], &[1, 1], 300);
    lb.limpet
        .apply(limpet::Config::parse(
            &config(&[&a, &b, &c], &[1, 1, 1], "least-requests"),
            "three.toml",
        ))
        .expect("reload");
    let counts = new_clients(&lb, 300).await;
    assert_shares(&counts, &NAMES, &[1, 1, 1], 300);
}

fn in_flight(lb: &TestLb, backend: &str) -> usize {
    let snap = lb.limpet.state.load();
    let up = snap.upstream("shop").unwrap();
    let b = up.backends.iter().find(|b| &*b.name == backend).unwrap();
    b.state.in_flight.load(std::sync::atomic::Ordering::SeqCst)
}

#[tokio::test]
async fn least_requests_avoids_a_backend_with_requests_in_flight() {
    let [a, b, c] = three_backends().await;
    let lb = TestLb::start(&config(&[&a, &b, &c], &[1, 1, 1], "least-requests")).await;
    // Five clients pinned to app1 (while nothing is in flight)...
    let mut pinned = Vec::new();
    while pinned.len() < 5 {
        let mut client = lb.client();
        if client.get("/").await.backend() == "app1" {
            pinned.push(client);
        }
    }
    // ... each with a slow request in flight.
    let slow: Vec<_> = pinned
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move { client.get("/slow?ms=3000").await.backend().to_string() })
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(5), || async {
            in_flight(&lb, "app1") == 5
        })
        .await,
        "in flight: {}",
        in_flight(&lb, "app1")
    );
    let counts = new_clients(&lb, 60).await;
    assert_eq!(counts.get("app1"), None, "{counts:?}");
    for task in slow {
        assert_eq!(task.await.unwrap(), "app1");
    }
    // Once the responses have streamed, the count falls and app1 is chosen again.
    assert_eq!(in_flight(&lb, "app1"), 0);
    let counts = new_clients(&lb, 60).await;
    assert_eq!(counts.get("app1"), Some(&20), "{counts:?}");
}
