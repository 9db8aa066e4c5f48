//! Issue 11 item 4: the per-backend estimate of active sessions (distinct
//! pins within `session_window`) in `/status` and
//! `limpet_backend_active_sessions`, and `balance = "least-sessions"`.

mod common;
mod ops;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use ops::*;

/// ip-hash clients behind a trusted proxy: the client is the X-Forwarded-For
/// address.
fn ip_hash_config(backends: &[&TestBackend]) -> String {
    let extra =
        "affinity = \"ip-hash\"\n\n[upstream.shop.ip_hash]\ntrusted_proxies = [\"127.0.0.1/32\"]\n";
    let mut s = ring_config(backends, extra);
    s.push_str(ADMIN);
    s
}

fn client_ip(n: u32) -> String {
    format!("10.{}.{}.{}", (n >> 16) & 255, (n >> 8) & 255, n & 255)
}

/// Sends one request per client address `ips`, on one keep-alive connection;
/// which backend answered each.
async fn send_from(lb: std::net::SocketAddr, ips: Vec<u32>) -> Vec<(u32, String)> {
    let mut client = Client::new(lb);
    let mut answered = Vec::with_capacity(ips.len());
    for n in ips {
        client
            .headers
            .insert("x-forwarded-for", client_ip(n).parse().unwrap());
        let r = client.get("/").await;
        assert_eq!(r.status, 200, "{}", r.body);
        answered.push((n, r.backend().to_string()));
    }
    answered
}

fn within(estimate: f64, truth: f64, tolerance: f64) -> bool {
    (estimate - truth).abs() <= truth * tolerance
}

#[tokio::test]
async fn ten_thousand_distinct_clients_are_estimated_within_five_percent() {
    let [a, b, c] = three_backends().await;
    let lb = TestLb::start(&ip_hash_config(&[&a, &b, &c])).await;
    let admin = AdminClient::new(lb.limpet.admin_addr.unwrap());
    const CLIENTS: u32 = 10_000;
    const CONNECTIONS: u32 = 8;
    let mut tasks = Vec::new();
    for k in 0..CONNECTIONS {
        // The first 1,000 clients come twice: a session counts once.
        let ips: Vec<u32> = (0..CLIENTS)
            .chain(0..1_000)
            .filter(|n| n % CONNECTIONS == k)
            .collect();
        tasks.push(tokio::spawn(send_from(lb.addr, ips)));
    }
    let mut truth: HashMap<String, std::collections::HashSet<u32>> = HashMap::new();
    for t in tasks {
        for (n, backend) in t.await.unwrap() {
            truth.entry(backend).or_default().insert(n);
        }
    }
    assert_eq!(truth.values().map(|s| s.len()).sum::<usize>(), 10_000);
    assert_eq!(truth.len(), 3, "every backend has clients");

    // The estimate is recomputed at most once a second.
    let estimates = || async {
        let status = admin.status().await;
        ["app1", "app2", "app3"].map(|b| {
            backend_entry(&status, "shop", b)["active_sessions"]
                .as_f64()
                .unwrap()
        })
    };
    let close = eventually(Duration::from_secs(5), || async {
        let e = estimates().await;
        within(e.iter().sum(), 10_000.0, 0.05)
            && ["app1", "app2", "app3"]
                .iter()
                .zip(e)
                .all(|(b, e)| within(e, truth[*b].len() as f64, 0.05))
    })
    .await;
    let e = estimates().await;
    let actual: Vec<usize> = ["app1", "app2", "app3"]
        .iter()
        .map(|b| truth[*b].len())
        .collect();
    assert!(close, "estimated {e:?}, actual {actual:?}");
    let metrics = admin.metrics().await;
    let gauge: f64 = ["app1", "app2", "app3"]
        .iter()
        .map(|b| {
            metrics.value(
                "limpet_backend_active_sessions",
                &[("upstream", "shop"), ("backend", b)],
            )
        })
        .sum();
    assert!(within(gauge, 10_000.0, 0.05), "gauge sum {gauge}");
    // The answer to a drain says it too.
    let summary = admin.set("app2", "drain").await["summary"]
        .as_str()
        .unwrap()
        .to_string();
    let said: f64 = summary
        .split_once('~')
        .and_then(|(_, n)| n.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{summary}"));
    assert!(
        summary.starts_with("app2: draining, ~") && within(said, truth["app2"].len() as f64, 0.05),
        "{summary} (actual {})",
        truth["app2"].len()
    );
}

/// `n` new clients, each sending two requests; where they went. Under
/// `app-cookie` the app keeps its sessions in `JSESSIONID=<id>.<jvmRoute>`
/// (Tomcat style: limpet reads the route, the id names the session), set here
/// after the first answer as the app would; under `cookie` the client keeps
/// limpet's cookie.
async fn new_clients(
    lb: &TestLb,
    n: usize,
    first_id: usize,
    app_cookie: bool,
) -> (Vec<Client>, HashMap<String, usize>) {
    let mut clients = Vec::new();
    let mut went = HashMap::new();
    for id in first_id..first_id + n {
        let mut client = lb.client();
        if app_cookie {
            client.cookie_name = "JSESSIONID".to_string();
        }
        let r = client.get("/").await;
        assert_eq!(r.status, 200);
        let backend = r.backend().to_string();
        if app_cookie {
            client.cookie = Some(format!("{id:08X}.{backend}"));
        }
        assert_eq!(client.get("/").await.backend(), backend);
        *went.entry(backend).or_insert(0) += 1;
        clients.push(client);
    }
    (clients, went)
}

#[tokio::test]
async fn least_sessions_keeps_new_cookie_clients_off_the_replica_that_absorbed_a_failover() {
    steers_new_clients_away_from_the_replica("cookie").await;
}

#[tokio::test]
async fn least_sessions_keeps_new_app_cookie_clients_off_the_replica_that_absorbed_a_failover() {
    steers_new_clients_away_from_the_replica("app-cookie").await;
}

/// Three backends in a replica ring, 10 sessions each; app1 dies and app2
/// takes its 10 sessions; new clients then go to app3 until it catches up.
/// (Under least-requests they would split between app2 and app3.)
async fn steers_new_clients_away_from_the_replica(affinity: &str) {
    let app_cookie = affinity == "app-cookie";
    let [a, b, c] = three_backends().await;
    let extra = format!(
        "affinity = \"{affinity}\"\nbalance = \"least-sessions\"\n\n\
         [upstream.shop.health]\ninterval = \"200ms\"\n"
    );
    let mut toml = ring_config(&[&a, &b, &c], &extra);
    toml.push_str(ADMIN);
    let lb = TestLb::start(&toml).await;
    let admin = AdminClient::new(lb.limpet.admin_addr.unwrap());

    let (mut clients, went) = new_clients(&lb, 30, 0, app_cookie).await;
    for backend in ["app1", "app2", "app3"] {
        let n = went.get(backend).copied().unwrap_or(0);
        assert!((9..=11).contains(&n), "{went:?}");
    }

    // app1 dies: its clients move to app2, its replica (whose app, under
    // app-cookie, then rewrites their route).
    a.stop().await;
    let mut moved = 0;
    for client in &mut clients {
        let r = client.get("/").await;
        assert_eq!(r.status, 200);
        if r.header("x-seen-failover-from") == Some("app1") {
            assert_eq!(r.backend(), "app2");
            if app_cookie {
                let id = client.cookie.as_deref().unwrap().replace(".app1", ".app2");
                client.cookie = Some(id);
            }
            moved += 1;
        }
    }
    assert_eq!(moved, went["app1"]);
    for client in &mut clients {
        assert_ne!(client.get("/").await.backend(), "app1");
    }
    let sessions = |status: &serde_json::Value, b: &str| {
        backend_entry(status, "shop", b)["active_sessions"]
            .as_u64()
            .unwrap()
    };
    // The estimate is exact at so few sessions, but for two that share a
    // register (about one chance in 20 among 20 random cookie session ids).
    let (on_app2, on_app3) = (went["app2"] + moved, went["app3"]);
    let seen = eventually(Duration::from_secs(5), || async {
        let status = admin.status().await;
        (on_app2 - 2..=on_app2).contains(&(sessions(&status, "app2") as usize))
            && (on_app3 - 1..=on_app3).contains(&(sessions(&status, "app3") as usize))
    })
    .await;
    let status = admin.status().await;
    assert!(seen, "{status}");
    let gap = (sessions(&status, "app2") - sessions(&status, "app3")) as usize;
    assert!(gap >= 6, "{status}");

    // New clients go to app3 until it has as many sessions as app2...
    let (_, went) = new_clients(&lb, gap - 1, 100, app_cookie).await;
    assert_eq!(went.get("app3"), Some(&(gap - 1)), "{went:?}");
    // ... and then to both.
    let (_, went) = new_clients(&lb, 30, 200, app_cookie).await;
    assert!(went.get("app2").is_some_and(|n| *n >= 10), "{went:?}");
    assert_eq!(went.get("app1"), None, "{went:?}");
}

#[test]
fn session_window_is_checked() {
    let toml = "[listen]\nhttp = [\"127.0.0.1:0\"]\n\n[upstream.shop]\n\
                balance = \"least-sessions\"\nsession_window = \"2s\"\n\
                [[upstream.shop.backend]]\nname = \"a\"\naddr = \"127.0.0.1:1\"\n";
    let e = limpet::Config::parse(toml, "test.toml")
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "test.toml:6:1: upstream.shop.session_window: must be at least 8s"
    );
    let ok = toml.replace("\"2s\"", "\"30m\"");
    let config = limpet::Config::parse(&ok, "test.toml").unwrap();
    assert_eq!(
        config.upstreams[0].session_window,
        Duration::from_secs(1800)
    );
}
