//! SPEC section 6: the admin API (`/healthz`, `/status`, operator actions, the
//! token, 404 and 405), and what draining and maintenance do to traffic.

mod common;
mod ops;

use std::time::Duration;

use common::*;
use ops::*;

fn config(backends: &[&TestBackend], upstream: &str, health_interval: &str) -> String {
    let extra = format!(
        "{upstream}\n\n[upstream.shop.health]\ninterval = \"{health_interval}\"\ntimeout = \"100ms\"\n"
    );
    let mut s = ring_config(backends, &extra);
    s.push_str(ADMIN);
    s
}

fn is_rfc3339_utc_seconds(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 20
        && s.chars().enumerate().all(|(i, c)| match i {
            4 | 7 => c == '-',
            10 => c == 'T',
            13 | 16 => c == ':',
            19 => c == 'Z',
            _ => c.is_ascii_digit(),
        })
}

#[tokio::test]
async fn healthz_answers_ok() {
    let [a, b, c] = three_backends().await;
    let lb = TestLb::start(&config(&[&a, &b, &c], "", "1s")).await;
    let admin = AdminClient::new(lb.limpet.admin_addr.unwrap());
    let r = admin.get("/healthz").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "ok\n");
}

#[tokio::test]
async fn status_shows_the_config_and_every_backend() {
    let [a, b, c] = three_backends().await;
    // Checks a day apart: no check has run yet.
    let lb = start_from_file(&config(&[&a, &b, &c], "", "24h")).await;
    let mut client = lb.client();
    let pinned = client.get("/").await.backend().to_string();
    client.get("/").await;
    client.get("/").await;

    let status = lb.admin.status().await;
    let cfg = &status["config"];
    assert_eq!(cfg["path"], display(&lb.path));
    let loaded_at = cfg["loaded_at"].as_str().unwrap();
    assert!(is_rfc3339_utc_seconds(loaded_at), "{loaded_at}");
    let checksum = cfg["checksum"].as_str().unwrap();
    assert!(
        checksum.starts_with("sha256:") && checksum.len() == 7 + 64,
        "{checksum}"
    );

    let upstreams = status["upstreams"].as_array().unwrap();
    assert_eq!(upstreams.len(), 1);
    assert_eq!(upstreams[0]["name"], "shop");
    assert_eq!(upstreams[0]["affinity"], "cookie");
    let backends = upstreams[0]["backends"].as_array().unwrap();
    let names: Vec<&str> = backends
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["app1", "app2", "app3"]);
    for (entry, (backend, replica)) in
        backends
            .iter()
            .zip([(&a, "app2"), (&b, "app3"), (&c, "app1")])
    {
        assert_eq!(entry["addr"], backend.addr.to_string());
        assert_eq!(entry["state"], "up");
        assert_eq!(entry["replica"], replica);
        assert_eq!(entry["weight"], 1);
        assert_eq!(entry["in_flight"], 0);
        let requests = if entry["name"] == pinned.as_str() {
            3
        } else {
            0
        };
        assert_eq!(entry["requests"], requests, "{entry}");
        assert!(entry["last_check"].is_null(), "{entry}");
    }
}

#[tokio::test]
async fn status_shows_the_last_check_and_requests_in_flight() {
    let [a, b, c] = three_backends().await;
    let lb = TestLb::start(&config(&[&a, &b, &c], "", "50ms")).await;
    let admin = AdminClient::new(lb.limpet.admin_addr.unwrap());
    assert!(
        eventually(Duration::from_secs(5), || async {
            !admin.backend("shop", "app1").await["last_check"].is_null()
        })
        .await
    );
    let check = admin.backend("shop", "app1").await["last_check"].clone();
    assert_eq!(check["ok"], true);
    assert!(check["latency_ms"].as_f64().unwrap() >= 0.0);
    assert!(check.get("error").is_none(), "{check}");
    assert!(is_rfc3339_utc_seconds(check["at"].as_str().unwrap()));

    let mut client = lb.client();
    let pinned = client.get("/").await.backend().to_string();
    let slow = tokio::spawn(async move { client.get("/slow?ms=1000").await });
    assert!(
        eventually(Duration::from_secs(5), || async {
            admin.backend("shop", &pinned).await["in_flight"] == 1
        })
        .await
    );
    assert_eq!(slow.await.unwrap().status, 200);
    assert!(
        eventually(Duration::from_secs(5), || async {
            admin.backend("shop", &pinned).await["in_flight"] == 0
        })
        .await
    );
}

#[tokio::test]
async fn a_draining_backend_keeps_its_clients_and_takes_no_new_ones() {
    let [a, b, c] = three_backends().await;
    let lb = TestLb::start(&config(&[&a, &b, &c], "", "1s")).await;
    let admin = AdminClient::new(lb.limpet.admin_addr.unwrap());
    let mut pinned_client = lb.client();
    let drained = pinned_client.get("/").await.backend().to_string();

    let entry = admin.set(&drained, "drain").await;
    assert_eq!(entry["name"], drained.as_str());
    assert_eq!(entry["state"], "draining");
    assert_eq!(admin.state(&drained).await, "draining");

    for _ in 0..20 {
        let r = pinned_client.get("/").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.backend(), drained, "a draining backend keeps its clients");
        assert!(r.set_cookie("limpet").is_none());
    }
    let mut newcomer = lb.client();
    for _ in 0..30 {
        newcomer.cookie = None;
        let r = newcomer.get("/").await;
        assert_eq!(r.status, 200);
        assert_ne!(
            r.backend(),
            drained,
            "a draining backend takes no new client"
        );
    }

    let entry = admin.set(&drained, "ready").await;
    assert_eq!(entry["state"], "up");
    let mut took_new = false;
    for _ in 0..30 {
        newcomer.cookie = None;
        took_new |= newcomer.get("/").await.backend() == drained;
    }
    assert!(took_new, "ready again: it takes new clients");
}

#[tokio::test]
async fn a_backend_in_maintenance_hands_its_clients_to_its_replica() {
    let [a, b, c] = three_backends().await;
    let ring = [&a, &b, &c];
    let lb = TestLb::start(&config(&ring, "", "1s")).await;
    let admin = AdminClient::new(lb.limpet.admin_addr.unwrap());
    let mut client = lb.client();
    let pinned = client.get("/").await.backend().to_string();
    let i = ring.iter().position(|t| t.name == pinned).unwrap();
    let replica = ring[(i + 1) % 3].name.clone();

    let entry = admin.set(&pinned, "maintenance").await;
    assert_eq!(entry["state"], "maintenance");

    let r = client.get("/").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.backend(), replica);
    assert_eq!(r.header("x-seen-failover-from"), Some(pinned.as_str()));
    assert!(r.set_cookie("limpet").is_some(), "re-pinned to the replica");
    for _ in 0..10 {
        assert_eq!(client.get("/").await.backend(), replica);
    }
    let mut newcomer = lb.client();
    for _ in 0..30 {
        newcomer.cookie = None;
        assert_ne!(newcomer.get("/").await.backend(), pinned);
    }
    // The operator state outlives health: a healthy backend stays in maintenance.
    assert_eq!(admin.state(&pinned).await, "maintenance");
    assert_eq!(admin.set(&pinned, "ready").await["state"], "up");
}

#[tokio::test]
async fn unknown_names_and_paths_are_404_and_wrong_methods_405() {
    let [a, b, c] = three_backends().await;
    let lb = TestLb::start(&config(&[&a, &b, &c], "", "1s")).await;
    let admin = AdminClient::new(lb.limpet.admin_addr.unwrap());
    for path in [
        "/upstreams/nope/backends/app1/drain",
        "/upstreams/shop/backends/nope/drain",
        "/upstreams/shop/backends/nope/maintenance",
        "/upstreams/shop/backends/nope/ready",
        "/upstreams/shop/backends/app1/explode",
        "/nothing-here",
    ] {
        let r = admin.post(path).await;
        assert_eq!(r.status, 404, "POST {path}: {}", r.body);
    }
    assert_eq!(admin.get("/nothing-here").await.status, 404);
    for (method, path, allow) in [
        ("GET", "/reload", "POST"),
        ("GET", "/upstreams/shop/backends/app1/drain", "POST"),
        ("DELETE", "/upstreams/shop/backends/app1/drain", "POST"),
        ("POST", "/status", "GET, HEAD"),
        ("POST", "/metrics", "GET, HEAD"),
        ("PUT", "/healthz", "GET, HEAD"),
    ] {
        let r = admin.request(method, path).await;
        assert_eq!(r.status, 405, "{method} {path}");
        assert_eq!(
            r.headers.get("allow").and_then(|v| v.to_str().ok()),
            Some(allow)
        );
    }
    // None of that changed anything.
    for name in ["app1", "app2", "app3"] {
        assert_eq!(admin.state(name).await, "up");
    }
}

#[tokio::test]
async fn with_a_token_every_post_needs_it() {
    let [a, b, c] = three_backends().await;
    let mut toml = config(&[&a, &b, &c], "", "1s");
    toml.push_str("token = \"s3cret-token\"\n");
    let lb = start_from_file(&toml).await;
    let anonymous = lb.admin.clone();
    let wrong = lb.admin.clone().with_token("guess");
    let operator = lb.admin.clone().with_token("s3cret-token");

    for client in [&anonymous, &wrong] {
        for path in ["/upstreams/shop/backends/app1/drain", "/reload"] {
            let r = client.post(path).await;
            assert_eq!(r.status, 401, "POST {path} with {:?}", client.token);
            assert!(r.headers.contains_key("www-authenticate"));
        }
        // Unknown names do not leak without the token either.
        let r = client.post("/upstreams/shop/backends/nope/drain").await;
        assert_eq!(r.status, 401);
    }
    assert_eq!(
        anonymous.state("app1").await,
        "up",
        "a refused POST changes nothing"
    );
    let reloads = anonymous.metrics().await;
    assert_eq!(
        reloads.value("limpet_config_reloads_total", &[("result", "ok")]),
        0.0
    );

    // Reads need no token.
    assert_eq!(anonymous.get("/healthz").await.status, 200);
    assert_eq!(anonymous.get("/status").await.status, 200);
    assert_eq!(anonymous.get("/metrics").await.status, 200);

    assert_eq!(operator.set("app1", "drain").await["state"], "draining");
    let r = operator.post("/upstreams/shop/backends/nope/drain").await;
    assert_eq!(r.status, 404);
    let r = operator.post("/reload").await;
    assert_eq!(r.status, 200, "{}", r.body);
}

#[tokio::test]
async fn a_post_from_another_sites_page_is_refused() {
    let [a, b, c] = three_backends().await;
    let lb = TestLb::start(&config(&[&a, &b, &c], "", "1s")).await;
    let addr = lb.limpet.admin_addr.unwrap();
    let admin = AdminClient::new(addr);
    // A page of another site (or a sandboxed one, "null") in the operator's
    // browser: refused, nothing changes, even without a token configured.
    for origin in [
        "http://evil.example",
        "null",
        &format!("http://{addr}.evil.example"),
    ] {
        let mut browser = admin.clone();
        browser.origin = Some(origin.to_string());
        for path in ["/upstreams/shop/backends/app1/drain", "/reload"] {
            let r = browser.post(path).await;
            assert_eq!(r.status, 403, "POST {path} from {origin}");
            assert_eq!(r.body, "403 cross-origin request refused\n");
        }
        // Reads stay open.
        assert_eq!(browser.get("/status").await.status, 200);
    }
    assert_eq!(admin.state("app1").await, "up");
    // The dashboard's own page (same origin), and curl (no Origin), may act.
    let mut dashboard = admin.clone();
    dashboard.origin = Some(format!("http://{addr}"));
    assert_eq!(dashboard.set("app1", "drain").await["state"], "draining");
    assert_eq!(admin.set("app1", "ready").await["state"], "up");
}

#[tokio::test]
async fn the_dashboard_is_one_self_contained_page() {
    let [a, b, c] = three_backends().await;
    let lb = TestLb::start(&config(&[&a, &b, &c], "", "1s")).await;
    let admin = AdminClient::new(lb.limpet.admin_addr.unwrap());
    let r = admin.get("/").await;
    assert_eq!(r.status, 200);
    let header = |name: &str| r.headers.get(name).and_then(|v| v.to_str().ok());
    assert_eq!(header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(header("x-frame-options"), Some("DENY"));
    let csp = header("content-security-policy").unwrap_or_default();
    assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"));
    assert!(r.body.starts_with("<!doctype html>"), "{}", r.body);
    // Nothing is loaded from elsewhere: it works offline.
    for external in [
        "http://",
        "https://",
        "<script src",
        "<link",
        "@import",
        "url(",
    ] {
        assert!(!r.body.contains(external), "the page refers to {external}");
    }
    assert!(r.body.contains("fetch(\"status\""));
    assert_eq!(admin.request("HEAD", "/").await.status, 200);
    let post = admin.post("/").await;
    assert_eq!(post.status, 405);
    assert_eq!(
        post.headers.get("allow").and_then(|v| v.to_str().ok()),
        Some("GET, HEAD")
    );
}

#[tokio::test]
async fn status_counts_the_failovers_away_from_each_backend() {
    let [a, b, c] = three_backends().await;
    let lb = TestLb::start(&config(&[&a, &b, &c], "", "24h")).await;
    let admin = AdminClient::new(lb.limpet.admin_addr.unwrap());
    let mut client = lb.client();
    let home = client.get("/").await.backend().to_string();
    for name in ["app1", "app2", "app3"] {
        assert_eq!(admin.backend("shop", name).await["failovers"], 0);
    }
    admin.set(&home, "maintenance").await;
    let moved = client.get("/").await;
    assert_ne!(moved.backend(), home);
    // Re-pinned: later requests are not failovers.
    client.get("/").await;
    client.get("/").await;
    let status = admin.status().await;
    for name in ["app1", "app2", "app3"] {
        let expected = u64::from(name == home);
        assert_eq!(
            backend_entry(&status, "shop", name)["failovers"],
            expected,
            "{name} (home {home})"
        );
    }
    let entry = backend_entry(&status, "shop", moved.backend());
    assert_eq!(entry["requests"], 3, "{entry}");
}
