//! SPEC section 7: `/metrics` parsed by a Prometheus text-format parser; every
//! family with its type and labels, and counters that move by exactly what a
//! scripted sequence of requests did.

mod common;
mod ops;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use common::*;
use ops::*;

fn config(backends: &[&TestBackend], upstream: &str) -> String {
    // Checks a day apart: no health check runs during these tests.
    let extra = format!("{upstream}\n\n[upstream.shop.health]\ninterval = \"24h\"\n");
    let mut s = ring_config(backends, &extra);
    s.push_str(ADMIN);
    s
}

/// The label names of every sample of `name`.
fn label_names(m: &Metrics, name: &str) -> BTreeSet<Vec<String>> {
    m.samples(name, &[])
        .map(|s| {
            let mut keys: Vec<String> = s.labels.keys().cloned().collect();
            keys.sort();
            keys
        })
        .collect()
}

fn keys(names: &[&str]) -> BTreeSet<Vec<String>> {
    let mut v: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    v.sort();
    BTreeSet::from([v])
}

#[tokio::test]
async fn every_family_is_exposed_with_its_type_and_labels() {
    let [a, b, c] = three_backends().await;
    let lb = TestLb::start(&config(&[&a, &b, &c], "")).await;
    let admin = AdminClient::new(lb.limpet.admin_addr.unwrap());
    let mut client = lb.client();
    assert_eq!(client.get("/").await.status, 200);

    let r = admin.get("/metrics").await;
    assert!(r
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/plain; version=0.0.4")));
    let m = admin.metrics().await;
    for (family, ty, labels) in [
        (
            "limpet_requests_total",
            "counter",
            &["upstream", "backend", "code"][..],
        ),
        ("limpet_backend_up", "gauge", &["upstream", "backend"]),
        (
            "limpet_backend_state",
            "gauge",
            &["upstream", "backend", "state"],
        ),
        (
            "limpet_backend_in_flight",
            "gauge",
            &["upstream", "backend"],
        ),
        ("limpet_affinity_total", "counter", &["upstream", "outcome"]),
        ("limpet_retries_total", "counter", &["upstream", "backend"]),
        (
            "limpet_health_checks_total",
            "counter",
            &["upstream", "backend", "result"],
        ),
        ("limpet_downstream_connections", "gauge", &["listener"]),
        ("limpet_config_reloads_total", "counter", &["result"]),
        ("limpet_build_info", "gauge", &["version"]),
    ] {
        assert_eq!(m.type_of(family).as_deref(), Some(ty), "{family}");
        assert_eq!(label_names(&m, family), keys(labels), "{family}");
    }
    assert_eq!(
        m.type_of("limpet_request_duration_seconds").as_deref(),
        Some("histogram")
    );
    let histogram: Vec<_> = m.samples("limpet_request_duration_seconds", &[]).collect();
    assert_eq!(histogram.len(), 1, "one series: the backend that answered");
    assert_eq!(
        histogram[0].labels.keys().collect::<BTreeSet<_>>(),
        BTreeSet::from([&"upstream".to_string(), &"backend".to_string()])
    );

    // Series that exist from the start, at zero, so rates and alerts work at once.
    for outcome in ["pinned", "new", "failover", "rebalanced", "rejected"] {
        m.value(
            "limpet_affinity_total",
            &[("upstream", "shop"), ("outcome", outcome)],
        );
    }
    for result in ["ok", "error"] {
        assert_eq!(
            m.value("limpet_config_reloads_total", &[("result", result)]),
            0.0
        );
    }
    assert_eq!(
        m.value(
            "limpet_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    for backend in ["app1", "app2", "app3"] {
        assert_eq!(m.up(backend), 1.0);
        for state in ["up", "down", "draining", "maintenance"] {
            let want = if state == "up" { 1.0 } else { 0.0 };
            assert_eq!(
                m.value(
                    "limpet_backend_state",
                    &[("upstream", "shop"), ("backend", backend), ("state", state)]
                ),
                want
            );
        }
        assert_eq!(
            m.value(
                "limpet_retries_total",
                &[("upstream", "shop"), ("backend", backend)]
            ),
            0.0
        );
        for result in ["ok", "fail"] {
            assert_eq!(m.checks(backend, result), 0.0);
        }
    }
    let listener = lb.addr.to_string();
    assert!(m.value("limpet_downstream_connections", &[("listener", &listener)]) >= 1.0);
}

/// Counter values of a scrape, by metric name and sorted label pairs.
fn counters(m: &Metrics) -> HashMap<String, f64> {
    m.scrape
        .samples
        .iter()
        .filter_map(|s| {
            let v = match s.value {
                prometheus_parse::Value::Counter(v) => v,
                // The histogram's _count and _sum lines.
                prometheus_parse::Value::Untyped(v) if s.metric.starts_with("limpet_") => v,
                _ => return None,
            };
            let mut labels: Vec<_> = s.labels.iter().collect();
            labels.sort();
            Some((format!("{}{:?}", s.metric, labels), v))
        })
        .collect()
}

/// Before the first request, each backend's request counter is there at
/// zero for every status class: `rate()` and alerts work from the first
/// scrape, as docs/admin.md says. It appeared only with the first request.
/// (The duration histogram stays lazy: 17 series per backend.)
#[tokio::test]
async fn request_series_are_there_at_zero_before_any_request() {
    let [a, b, c] = three_backends().await;
    let lb = TestLb::start(&config(&[&a, &b, &c], "")).await;
    let admin = AdminClient::new(lb.limpet.admin_addr.unwrap());
    let m = admin.metrics().await;
    for backend in ["app1", "app2", "app3"] {
        for code in ["1xx", "2xx", "3xx", "4xx", "5xx"] {
            let labels = [("upstream", "shop"), ("backend", backend), ("code", code)];
            assert_eq!(m.value("limpet_requests_total", &labels), 0.0);
        }
    }
}

#[tokio::test]
async fn counters_move_by_exactly_what_happened() {
    let [a, b, c] = three_backends().await;
    let ring = [&a, &b, &c];
    let lb = TestLb::start(&config(&ring, "balance = \"round-robin\"\nretries = 1")).await;
    let admin = AdminClient::new(lb.limpet.admin_addr.unwrap());
    let replica_of = |name: &str| {
        let i = ring.iter().position(|t| t.name == name).unwrap();
        ring[(i + 1) % 3].name.clone()
    };
    let before = admin.metrics().await;

    // 3 new sessions (round-robin: three different backends).
    let mut clients = [lb.client(), lb.client(), lb.client()];
    let mut pins = Vec::new();
    for client in clients.iter_mut() {
        let r = client.get("/").await;
        assert_eq!(r.status, 200);
        pins.push(r.backend().to_string());
    }
    let [mut first, second, third] = clients;
    assert_eq!(pins.iter().collect::<BTreeSet<_>>().len(), 3, "{pins:?}");
    // 10 pinned requests.
    for _ in 0..10 {
        assert_eq!(first.get("/").await.backend(), pins[0]);
    }
    // Failover 1, with 1 retry: the first client's backend dies under it.
    let dead = ring.iter().find(|t| t.name == pins[0]).unwrap();
    dead.stop().await;
    let r = first.get("/").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.backend(), replica_of(&pins[0]));
    // Failover 2, no retry: a backend goes into maintenance (one whose replica is
    // not the dead backend).
    let (mut other, other_pin) = if replica_of(&pins[1]) != pins[0] {
        (second, pins[1].clone())
    } else {
        (third, pins[2].clone())
    };
    admin.set(&other_pin, "maintenance").await;
    let r = other.get("/").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.backend(), replica_of(&other_pin));

    let after = admin.metrics().await;
    let (c0, c1) = (counters(&before), counters(&after));
    let delta = |name: &str, labels: &[(&str, &str)]| -> f64 {
        let total = |m: &HashMap<String, f64>| -> f64 {
            m.iter()
                .filter(|(k, _)| {
                    k.starts_with(&format!("{name}["))
                        && labels
                            .iter()
                            .all(|(l, v)| k.contains(&format!("(\"{l}\", \"{v}\")")))
                })
                .map(|(_, v)| v)
                .sum()
        };
        total(&c1) - total(&c0)
    };
    let shop = ("upstream", "shop");
    let outcome = |o| delta("limpet_affinity_total", &[shop, ("outcome", o)]);
    assert_eq!(outcome("pinned"), 10.0);
    assert_eq!(outcome("new"), 3.0);
    assert_eq!(outcome("failover"), 2.0);
    assert_eq!(outcome("rebalanced"), 0.0);
    assert_eq!(outcome("rejected"), 0.0);
    assert_eq!(delta("limpet_retries_total", &[shop]), 1.0);
    assert_eq!(
        delta("limpet_retries_total", &[shop, ("backend", &pins[0])]),
        1.0,
        "labelled with the backend that failed"
    );
    assert_eq!(delta("limpet_requests_total", &[shop]), 15.0);
    assert_eq!(
        delta("limpet_requests_total", &[shop, ("code", "2xx")]),
        15.0
    );
    let mut answered: HashMap<String, f64> = HashMap::new();
    *answered.entry(pins[0].clone()).or_default() += 11.0;
    *answered.entry(pins[1].clone()).or_default() += 1.0;
    *answered.entry(pins[2].clone()).or_default() += 1.0;
    *answered.entry(replica_of(&pins[0])).or_default() += 1.0;
    *answered.entry(replica_of(&other_pin)).or_default() += 1.0;
    for (backend, n) in &answered {
        assert_eq!(
            delta("limpet_requests_total", &[shop, ("backend", backend)]),
            *n,
            "requests answered by {backend}"
        );
        assert_eq!(
            delta(
                "limpet_request_duration_seconds_count",
                &[shop, ("backend", backend)]
            ),
            *n,
            "durations observed for {backend}"
        );
    }
    assert_eq!(
        delta("limpet_request_duration_seconds_count", &[shop]),
        15.0
    );
    assert_eq!(delta("limpet_health_checks_total", &[]), 0.0);
    assert_eq!(delta("limpet_config_reloads_total", &[]), 0.0);

    // The histogram's buckets agree with its count.
    for s in after.samples("limpet_request_duration_seconds", &[shop]) {
        let prometheus_parse::Value::Histogram(buckets) = &s.value else {
            panic!("not a histogram: {s:?}");
        };
        let inf = buckets
            .iter()
            .find(|b| b.less_than.is_infinite())
            .expect("+Inf bucket");
        let backend = s.labels.get("backend").unwrap();
        assert_eq!(inf.count, answered[backend], "{backend}");
        assert!(buckets.windows(2).all(|w| w[0].count <= w[1].count));
    }

    // Gauges mirror the state of the backend in maintenance.
    assert_eq!(
        after.up(&other_pin),
        1.0,
        "healthy, whatever the operator says"
    );
    for (state, want) in [
        ("up", 0.0),
        ("down", 0.0),
        ("draining", 0.0),
        ("maintenance", 1.0),
    ] {
        assert_eq!(
            after.value(
                "limpet_backend_state",
                &[shop, ("backend", &other_pin), ("state", state)]
            ),
            want,
            "{state}"
        );
    }
    drop(first);
    drop(other);
}

#[tokio::test]
async fn the_in_flight_gauge_follows_a_slow_request() {
    let [a, b, c] = three_backends().await;
    let lb = TestLb::start(&config(&[&a, &b, &c], "")).await;
    let admin = AdminClient::new(lb.limpet.admin_addr.unwrap());
    let mut client = lb.client();
    let pinned = client.get("/").await.backend().to_string();
    let in_flight = |m: &Metrics| {
        m.value(
            "limpet_backend_in_flight",
            &[("upstream", "shop"), ("backend", &pinned)],
        )
    };
    let slow = tokio::spawn(async move { client.get("/slow?ms=800").await });
    assert!(
        eventually(Duration::from_secs(5), || async {
            in_flight(&admin.metrics().await) == 1.0
        })
        .await
    );
    assert_eq!(slow.await.unwrap().status, 200);
    assert!(
        eventually(Duration::from_secs(5), || async {
            in_flight(&admin.metrics().await) == 0.0
        })
        .await
    );
}

#[tokio::test]
async fn health_checks_are_counted_by_result() {
    let (a, b) = (
        TestBackend::spawn("app1").await,
        TestBackend::spawn("app2").await,
    );
    let mut toml = ring_config(
        &[&a, &b],
        "\n[upstream.shop.health]\ninterval = \"50ms\"\ntimeout = \"100ms\"\nfall = 2\n",
    );
    toml.push_str(ADMIN);
    let lb = TestLb::start(&toml).await;
    let admin = AdminClient::new(lb.limpet.admin_addr.unwrap());
    b.health_status
        .store(503, std::sync::atomic::Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(5), || async {
            let m = admin.metrics().await;
            m.checks("app1", "ok") >= 3.0 && m.checks("app2", "fail") >= 3.0
        })
        .await
    );
    let m = admin.metrics().await;
    assert_eq!(m.checks("app1", "fail"), 0.0);
    assert_eq!(m.up("app1"), 1.0);
    assert_eq!(m.up("app2"), 0.0);
    assert_eq!(
        m.value(
            "limpet_backend_state",
            &[("upstream", "shop"), ("backend", "app2"), ("state", "down")]
        ),
        1.0
    );
}

#[tokio::test]
async fn a_reload_drops_the_series_of_removed_backends() {
    let [a, b, c] = three_backends().await;
    let lb = start_from_file(&config(&[&a, &b, &c], "")).await;
    let mut client = lb.client();
    for _ in 0..3 {
        client.cookie = None;
        client.get("/").await;
    }
    lb.rewrite(&config(&[&a, &b], ""));
    let r = lb.admin.post("/reload").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let m = lb.admin.metrics().await;
    assert_eq!(
        m.samples("limpet_backend_up", &[("backend", "app3")])
            .count(),
        0
    );
    assert_eq!(
        m.samples("limpet_retries_total", &[("backend", "app3")])
            .count(),
        0
    );
    assert_eq!(
        m.samples("limpet_requests_total", &[("backend", "app3")])
            .count(),
        0
    );
    assert_eq!(m.up("app1"), 1.0);
    assert_eq!(
        m.value("limpet_config_reloads_total", &[("result", "ok")]),
        1.0
    );
}

/// `limpet_downstream_connections` has a series for each public listener from
/// the start, at 0, so a dashboard and an alert see the listener before its
/// first client.
#[tokio::test]
async fn each_listener_has_a_connection_series_from_the_start() {
    let [a, b, c] = three_backends().await;
    let lb = TestLb::start(&config(&[&a, &b, &c], "")).await;
    let admin = AdminClient::new(lb.limpet.admin_addr.unwrap());
    let listener = lb.addr.to_string();
    let m = admin.metrics().await;
    assert_eq!(
        m.value("limpet_downstream_connections", &[("listener", &listener)]),
        0.0
    );
    let mut client = lb.client();
    assert_eq!(client.get("/").await.status, 200);
    let m = admin.metrics().await;
    assert_eq!(
        m.value("limpet_downstream_connections", &[("listener", &listener)]),
        1.0,
        "the kept-alive client's connection"
    );
}
