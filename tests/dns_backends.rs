//! Backends named by DNS (issue 12 item 4): a name is resolved at start and
//! every `resolve_interval`; when its address changes the backend keeps its
//! name, pins, health and metrics and new requests reach the new address
//! (connections to the old one are not reused); a name that does not resolve
//! marks its backend down with the reason in `/status`, without failing the
//! start, a reload or `limpet check`.
//!
//! The names are answered by [`TestDns`], a DNS server in the test that limpet
//! asks through `[dns] server`; one test goes through the system resolver
//! (`localhost`, from /etc/hosts). A DNS answer carries no port, so the second
//! address of a backend is another loopback address (127.0.0.2) on the same port.

mod common;
mod ops;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use common::dns::TestDns;
use common::*;
use ops::*;

/// A StatefulSet pod's name behind a headless Service.
const NAME: &str = "app-0.app.shop.svc.cluster.local";
/// Long enough for a busy machine; a pass takes a few resolve intervals.
const PATIENCE: Duration = Duration::from_secs(20);

/// Upstream `shop`: `app-0` at `NAME:port` (asked of `dns`), `app-1` at an IP
/// address; round-robin, cookie affinity, quick health checks, no slow start
/// (a recovered backend takes its share of new sessions at once).
fn config(dns: &TestDns, port: u16, app1: &TestBackend, interval: &str) -> String {
    format!(
        r#"[listen]
http = ["127.0.0.1:0"]

[dns]
server = "{dns}"

[upstream.shop]
balance = "round-robin"
resolve_interval = "{interval}"

[upstream.shop.cookie]
secret = "test-secret"

[upstream.shop.health]
interval = "200ms"
rise = 1
slow_start = "0s"

[[upstream.shop.backend]]
name = "app-0"
addr = "{NAME}:{port}"

[[upstream.shop.backend]]
name = "app-1"
addr = "{app1}"
{ADMIN}"#,
        dns = dns.addr,
        app1 = app1.addr,
    )
}

/// The backend label values of `limpet_requests_total`.
fn request_series(m: &Metrics) -> BTreeSet<String> {
    m.samples("limpet_requests_total", &[("upstream", "shop")])
        .filter_map(|s| s.labels.get("backend").map(str::to_string))
        .collect()
}

/// A client pinned to the backend whose server is `server` (round-robin
/// hands new sessions out in turn).
async fn client_pinned_to(lb: &FileLb, server: &str) -> Client {
    for _ in 0..4 {
        let mut client = lb.client();
        let r = client.get("/").await;
        assert_eq!(r.status, 200, "{}", r.body);
        if r.backend() == server {
            assert!(client.cookie.is_some(), "a new session gets a cookie");
            return client;
        }
    }
    panic!("no new session landed on {server}");
}

#[tokio::test]
async fn a_name_whose_address_changes_keeps_its_pins_health_and_metrics() {
    let dns = TestDns::start().await;
    let pod_a = TestBackend::spawn("pod-a").await;
    let port = pod_a.addr.port();
    // The same pod after a reschedule: another address, the same port. pod-a
    // keeps serving, so only the move can send the pin's requests to pod-b.
    let pod_b = TestBackend::spawn_at("pod-b", SocketAddr::from(([127, 0, 0, 2], port))).await;
    let app1 = TestBackend::spawn("app-1").await;
    dns.set(NAME, Ipv4Addr::LOCALHOST);
    let lb = start_from_file(&config(&dns, port, &app1, "100ms")).await;

    // Resolved before the first request.
    let entry = lb.admin.backend("shop", "app-0").await;
    assert_eq!(entry["state"], "up", "{entry}");
    assert_eq!(entry["addr"], format!("{NAME}:{port}"), "{entry}");
    assert_eq!(entry["resolved"], format!("127.0.0.1:{port}"), "{entry}");

    let mut client = client_pinned_to(&lb, "pod-a").await;
    let cookie = client.cookie.clone();
    for _ in 0..3 {
        let r = client.get("/").await;
        assert_eq!(r.backend(), "pod-a");
        assert_eq!(r.set_cookie("limpet"), None, "the pin holds");
    }
    let requests_before = lb.admin.backend("shop", "app-0").await["requests"]
        .as_u64()
        .expect("requests");
    let metrics_before = lb.admin.metrics().await;
    let counted_before = metrics_before.sum(
        "limpet_requests_total",
        &[("upstream", "shop"), ("backend", "app-0")],
    );
    let checks_before = metrics_before.checks("app-0", "ok");
    assert!(request_series(&metrics_before).contains("app-0"));

    // Several connections to pod-a wait idle in limpet's pool (requests at
    // once need one each).
    let parallel: Vec<_> = (0..3)
        .map(|_| {
            let mut c = lb.client();
            c.cookie = cookie.clone();
            tokio::spawn(async move { c.get("/slow?ms=300").await })
        })
        .collect();
    for p in parallel {
        assert_eq!(p.await.expect("a parallel request").backend(), "pod-a");
    }

    // A request is in flight to pod-a when the pod moves: its connection is
    // not kept for later requests.
    let mut slow = lb.client();
    slow.cookie = cookie.clone();
    let in_flight = tokio::spawn(async move { slow.get("/slow?ms=5000").await });
    let started = eventually(PATIENCE, || async {
        lb.admin.backend("shop", "app-0").await["in_flight"] == 1
    })
    .await;
    assert!(started, "the slow request reached app-0");

    // The pod moves.
    dns.set(NAME, Ipv4Addr::new(127, 0, 0, 2));
    let new_addr = format!("127.0.0.2:{port}");
    let moved = eventually(PATIENCE, || async {
        lb.admin.backend("shop", "app-0").await["resolved"] == new_addr.as_str()
    })
    .await;
    assert!(moved, "{}", lb.admin.backend("shop", "app-0").await);
    assert!(
        !in_flight.is_finished(),
        "the slow request must outlast the move for this test to see the pool"
    );
    let r = in_flight.await.expect("the slow request");
    assert_eq!(
        r.backend(),
        "pod-a",
        "a request in flight finishes where it was"
    );

    // From the move on, every request of the pin reaches the new address: no
    // connection to the old one is reused (pod-a still serves, so one would be).
    let pod_a_hits = pod_a.hits();
    for _ in 0..6 {
        let r = client.get("/").await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.backend(), "pod-b", "no request goes to the old address");
        assert_eq!(r.header("x-seen-failover-from"), None, "not a failover");
        assert_eq!(r.set_cookie("limpet"), None, "the pin is unchanged");
    }
    assert_eq!(pod_a.hits(), pod_a_hits, "connections to pod-a unused");
    assert!(pod_b.hits() >= 6, "pod-b served the pin: {}", pod_b.hits());
    assert_eq!(client.cookie, cookie);

    // The same backend, at its new address, with its history.
    let entry = lb.admin.backend("shop", "app-0").await;
    assert_eq!(entry["state"], "up", "{entry}");
    assert_eq!(entry["resolved"], format!("127.0.0.2:{port}"), "{entry}");
    let requests_after = entry["requests"].as_u64().expect("requests");
    assert!(
        requests_after >= requests_before + 7,
        "the request count carried on: {requests_before} -> {requests_after}"
    );
    let metrics_after = lb.admin.metrics().await;
    assert_eq!(
        request_series(&metrics_after),
        request_series(&metrics_before)
    );
    let counted_after = metrics_after.sum(
        "limpet_requests_total",
        &[("upstream", "shop"), ("backend", "app-0")],
    );
    assert!(counted_after >= counted_before + 7.0);
    assert!(metrics_after.checks("app-0", "ok") >= checks_before);
    // New sessions reach both backends: app-0 at its new address.
    let mut servers = BTreeSet::new();
    for _ in 0..4 {
        servers.insert(lb.client().get("/").await.backend().to_string());
    }
    assert_eq!(
        servers,
        BTreeSet::from(["app-1".to_string(), "pod-b".to_string()])
    );
    assert!(dns.queries() > 2, "resolved again and again");
}

#[tokio::test]
async fn an_unresolvable_name_is_down_with_the_reason_and_fails_neither_start_nor_reload() {
    let dns = TestDns::start().await;
    let pod = TestBackend::spawn("pod-a").await;
    let app1 = TestBackend::spawn("app-1").await;
    let port = pod.addr.port();
    // No record for NAME yet: the start does not fail.
    let lb = start_from_file(&config(&dns, port, &app1, "100ms")).await;

    let entry = lb.admin.backend("shop", "app-0").await;
    assert_eq!(entry["state"], "down", "{entry}");
    assert_eq!(entry["resolved"], serde_json::Value::Null, "{entry}");
    let reason = entry["last_check"]["error"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with(&format!("dns: no address for {NAME}: ")),
        "{entry}"
    );
    // The other backend serves every new session.
    for _ in 0..4 {
        let r = lb.client().get("/").await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.backend(), "app-1");
    }

    // A reload with the name still unresolvable succeeds.
    lb.rewrite(&config(&dns, port, &app1, "150ms"));
    let r = lb.admin.post("/reload").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let entry = lb.admin.backend("shop", "app-0").await;
    assert_eq!(entry["state"], "down", "{entry}");
    assert_eq!(lb.client().get("/").await.backend(), "app-1");

    // The name appears: the backend, which never had an address, comes up at
    // its first one.
    dns.set(NAME, Ipv4Addr::LOCALHOST);
    let up = eventually(PATIENCE, || async { lb.admin.state("app-0").await == "up" }).await;
    assert!(up, "{}", lb.admin.backend("shop", "app-0").await);
    let entry = lb.admin.backend("shop", "app-0").await;
    assert_eq!(entry["resolved"], format!("127.0.0.1:{port}"), "{entry}");
    client_pinned_to(&lb, "pod-a").await;

    // And goes down again, with the reason, when its name disappears.
    dns.remove(NAME);
    let down = eventually(PATIENCE, || async {
        lb.admin.state("app-0").await == "down"
    })
    .await;
    assert!(down, "{}", lb.admin.backend("shop", "app-0").await);
    let entry = lb.admin.backend("shop", "app-0").await;
    let reason = entry["last_check"]["error"].as_str().unwrap_or_default();
    assert!(reason.starts_with("dns: no address for"), "{entry}");
    for _ in 0..3 {
        assert_eq!(lb.client().get("/").await.backend(), "app-1");
    }
    let passes = lb.admin.metrics().await.checks("app-0", "ok");

    // Back again: this time through a passing health check (rise = 1).
    dns.set(NAME, Ipv4Addr::LOCALHOST);
    let up = eventually(PATIENCE, || async { lb.admin.state("app-0").await == "up" }).await;
    assert!(up, "{}", lb.admin.backend("shop", "app-0").await);
    assert!(lb.admin.metrics().await.checks("app-0", "ok") > passes);
    client_pinned_to(&lb, "pod-a").await;
}

#[tokio::test]
async fn limpet_check_warns_about_an_unresolvable_name_and_passes() {
    let dns = TestDns::start().await;
    let app1 = TestBackend::spawn("app-1").await;
    let dir = TempDir::new("dns-check");
    let path = dir.write("limpet.toml", &config(&dns, 8080, &app1, "5s"));
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_limpet"))
        .args(["check", "--config"])
        .arg(&path)
        .env_remove("LIMPET_CONFIG")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("limpet check finished")
        .expect("limpet check ran");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains(&format!("backend app-0 ({NAME}:8080) does not resolve now")),
        "{stderr}"
    );
    assert!(stdout.contains("(DNS, resolved every 5s)"), "{stdout}");
    assert!(dns.queries() > 0, "check asked the configured server");
}

#[tokio::test]
async fn a_name_from_the_system_resolver_is_served() {
    // /etc/hosts names localhost: getaddrinfo's first answer is where limpet
    // connects, so the backend listens there.
    let first = tokio::net::lookup_host("localhost:0")
        .await
        .expect("localhost resolves")
        .next()
        .expect("an address for localhost");
    let pod = TestBackend::spawn_at("pod-a", first).await;
    let toml = format!(
        "[listen]\nhttp = [\"127.0.0.1:0\"]\n\n[upstream.shop]\n\
         [upstream.shop.cookie]\nsecret = \"test-secret\"\n\
         [[upstream.shop.backend]]\nname = \"app-0\"\naddr = \"localhost:{}\"\n{ADMIN}",
        pod.addr.port()
    );
    let lb = start_from_file(&toml).await;
    let r = lb.client().get("/").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.backend(), "pod-a");
    let entry = lb.admin.backend("shop", "app-0").await;
    assert_eq!(entry["resolved"], pod.addr.to_string(), "{entry}");
}
