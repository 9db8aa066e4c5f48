//! The demo (issue 5): its app servers replicate and promote sessions, and limpet
//! in front of them keeps a logged-in user's cart whichever server dies.
//!
//! The demo is an example (`examples/demo/`), not part of the library, and a test
//! cannot import an example's modules: this test compiles the example's own files
//! with `#[path]`, so it drives the very code `cargo run --example demo` runs and
//! asserts on its report and limpet's metrics in-process. Each crate uses a
//! different part of those files, hence `allow(dead_code)`.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use limpet::Config;

mod browser;

#[allow(dead_code, reason = "the example uses what this test does not")]
#[path = "../examples/demo/app.rs"]
mod app;
#[allow(dead_code, reason = "the example uses what this test does not")]
#[path = "../examples/demo/client.rs"]
mod client;
#[allow(dead_code, reason = "the example uses what this test does not")]
#[path = "../examples/demo/control.rs"]
mod control;
#[allow(dead_code, reason = "the example uses what this test does not")]
#[path = "../examples/demo/walkthrough.rs"]
mod walkthrough;

use app::{CartView, Cluster, ServerInfo, SESSION_COOKIE};
use client::{fetch, Browser};
use walkthrough::{Demo, Ports, CONFIG, CONFIG_NAME};

const BOUND: Duration = Duration::from_secs(60);

async fn demo() -> Demo {
    let config = Config::parse(CONFIG, CONFIG_NAME).expect("config/demo.toml parses");
    Demo::start(config, Ports::Ephemeral)
        .await
        .expect("start the demo")
}

/// The walkthrough with `victim` killed under alice: everything it checks holds.
async fn survives_the_death_of(victim: &str, replica: &str) {
    let demo = demo().await;
    let mut out = Vec::new();
    let report = tokio::time::timeout(
        BOUND,
        walkthrough::walkthrough(&demo, Some(victim), &mut out),
    )
    .await
    .expect("bounded")
    .expect("walkthrough ran");
    let text = String::from_utf8_lossy(&out);
    assert_eq!(report.victim, victim, "{text}");
    assert_eq!(report.replica, replica, "{text}");
    assert!(report.survived, "{text}");
    assert!(!text.contains("FAIL"), "{text}");
    assert_eq!(demo.affinity("failover"), 1, "{text}");
    demo.shutdown().await;
}

#[tokio::test]
async fn the_session_survives_the_death_of_app1() {
    survives_the_death_of("app1", "app2").await;
}

#[tokio::test]
async fn the_session_survives_the_death_of_app2() {
    survives_the_death_of("app2", "app3").await;
}

#[tokio::test]
async fn the_session_survives_the_death_of_app3() {
    survives_the_death_of("app3", "app1").await;
}

/// What `cargo run --example demo -- --walkthrough-only` does, in-process.
#[tokio::test]
async fn the_walkthrough_only_run_succeeds() {
    let mut out = Vec::new();
    let (demo, ok) = tokio::time::timeout(BOUND, walkthrough::run(Ports::Ephemeral, 20, &mut out))
        .await
        .expect("bounded")
        .expect("walkthrough ran");
    let text = String::from_utf8_lossy(&out);
    assert!(ok, "{text}");
    assert!(
        text.contains("Result: the cart survived its server's death."),
        "{text}"
    );
    assert!(text.contains("failover = \"replica\""), "{text}");
    assert!(text.contains("failover = \"rebalance\""), "{text}");
    assert!(
        text.contains("limpet_affinity_total{outcome=\"failover\",upstream=\"shop\"} 1"),
        "{text}"
    );
    demo.shutdown().await;
}

#[tokio::test]
async fn the_contrast_counts_users_and_replica_routing_loses_none() {
    let config = Config::parse(CONFIG, CONFIG_NAME).unwrap();
    let with = walkthrough::contrast(&config, limpet::config::Failover::Replica, 12, "app2")
        .await
        .unwrap();
    assert_eq!(with.users, 12);
    assert!(with.affected > 0, "{with:?}");
    assert_eq!(with.lost(), 0, "{with:?}");
    let without = walkthrough::contrast(&config, limpet::config::Failover::Rebalance, 12, "app2")
        .await
        .unwrap();
    assert!(without.affected > 0, "{without:?}");
    assert!(without.kept <= without.affected, "{without:?}");
}

#[tokio::test]
async fn sessions_whose_server_chose_their_replica_survive_on_it_when_limpet_is_told() {
    let config = Config::parse(CONFIG, CONFIG_NAME).unwrap();
    let told = walkthrough::per_session(&config, true, 12, "app2")
        .await
        .unwrap();
    assert!(told.affected >= 2 && told.elsewhere >= 1, "{told:?}");
    assert_eq!(told.kept, told.affected, "{told:?}");
    // Told nothing, limpet follows the static chain: exactly the sessions
    // whose copy is elsewhere are lost.
    let untold = walkthrough::per_session(&config, false, 12, "app2")
        .await
        .unwrap();
    assert!(untold.elsewhere >= 1, "{untold:?}");
    assert_eq!(
        untold.affected - untold.kept,
        untold.elsewhere,
        "{untold:?}"
    );
}

/// A request straight to one app server, carrying a session cookie and headers.
async fn get_cart(addr: std::net::SocketAddr, session: &str, headers: &[(&str, &str)]) -> CartView {
    let mut req = Request::get("/cart")
        .header("host", addr.to_string())
        .header("cookie", format!("{SESSION_COOKIE}={session}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let reply = fetch(addr, req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    reply.json().unwrap()
}

#[tokio::test]
async fn app_servers_replicate_promote_die_and_revive() {
    let cluster = Cluster::ring(&["app1", "app2", "app3"]).await.unwrap();
    let (app1, app2, app3) = (
        cluster.addr("app1").unwrap(),
        cluster.addr("app2").unwrap(),
        cluster.addr("app3").unwrap(),
    );
    assert_eq!(cluster.replica_of("app1"), Some("app2"));
    assert_eq!(cluster.replica_of("app3"), Some("app1"));

    let mut alice = Browser::new(app1);
    let (v, reply) = alice.login("alice").await.unwrap();
    assert_eq!(v.served_by, "app1");
    let session = reply.set_cookie(SESSION_COOKIE).unwrap().to_owned();
    alice.add("tea").await.unwrap();
    let servers = cluster.servers();
    assert_eq!((servers[0].sessions, servers[1].backups), (1, 1));

    // Not logged in without a session; a forged session id is unknown.
    assert_eq!(Browser::new(app1).cart().await.unwrap().0.user, None);
    assert_eq!(get_cart(app1, "forged", &[]).await.user, None);

    // The replica answers from its copy, and promotes it when limpet says so.
    let v = get_cart(app2, &session, &[]).await;
    assert_eq!((v.user.as_deref(), v.promoted), (Some("alice"), false));
    assert_eq!(v.items, ["tea"]);
    let v = get_cart(app2, &session, &[("x-limpet-failover-from", "app1")]).await;
    assert_eq!(v.served_by, "app2");
    assert!(v.promoted);
    assert_eq!(v.failover_from.as_deref(), Some("app1"));
    let servers = cluster.servers();
    assert_eq!((servers[1].sessions, servers[1].backups), (1, 0));
    assert_eq!(
        servers[2].backups, 1,
        "app2 replicates what it promoted to app3"
    );
    assert_eq!(get_cart(app3, &session, &[]).await.items, ["tea"]);

    // Killed: the port refuses, the memory is gone; revived: same port, empty.
    assert!(cluster.kill("app1").await);
    assert!(!cluster.kill("app1").await, "already dead");
    assert!(tokio::net::TcpStream::connect(app1).await.is_err());
    assert!(!cluster.servers()[0].running);
    assert!(cluster.revive("app1").await.unwrap());
    assert!(!cluster.revive("app1").await.unwrap(), "already running");
    let v = get_cart(app1, &session, &[]).await;
    assert_eq!((v.served_by.as_str(), v.user), ("app1", None));
    assert_eq!(cluster.servers()[0].sessions, 0);

    // Writes need a login; bad bodies are 4xx, not panics.
    let mut bob = Browser::new(app3);
    let reply = bob
        .send(
            Method::POST,
            "/cart",
            Some(serde_json::json!({ "item": "x" })),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 401);
    let raw = Request::post("/login")
        .header("host", app3.to_string())
        .body(Full::new(Bytes::from_static(b"{not json")))
        .unwrap();
    assert_eq!(fetch(app3, raw).await.unwrap().status, 400);
}

#[tokio::test]
async fn the_page_and_its_controls_work_through_limpet() {
    let demo = demo().await;
    let mut browser = demo.browser();
    let page = browser.send(Method::GET, "/", None).await.unwrap();
    assert_eq!(page.status, 200);
    assert!(String::from_utf8_lossy(&page.body).contains("limpet demo shop"));

    let servers = browser
        .send(Method::GET, "/_demo/servers", None)
        .await
        .unwrap();
    let servers: Vec<ServerInfo> = servers.json().unwrap();
    assert_eq!(servers.len(), 3);
    assert!(servers.iter().all(|s| s.running));

    let kill = browser
        .send(Method::POST, "/_demo/kill/app3", None)
        .await
        .unwrap();
    assert_eq!(kill.status, 200);
    assert!(!demo.cluster.servers()[2].running, "app3 is dead");
    let again = browser
        .send(Method::POST, "/_demo/kill/app3", None)
        .await
        .unwrap();
    assert_eq!(again.status, 409);
    let revive = browser
        .send(Method::POST, "/_demo/revive/app3", None)
        .await
        .unwrap();
    assert_eq!(revive.status, 200);
    assert!(demo.cluster.servers()[2].running);
    let unknown = browser
        .send(Method::POST, "/_demo/kill/app9", None)
        .await
        .unwrap();
    assert_eq!(unknown.status, 404);
    demo.shutdown().await;
}

#[tokio::test]
async fn the_failover_shows_in_the_admin_metrics() {
    let demo = demo().await;
    let mut out = Vec::new();
    walkthrough::walkthrough(&demo, None, &mut out)
        .await
        .unwrap();
    let admin = demo
        .limpet
        .admin_addr
        .expect("config/demo.toml has an admin listener");
    let req = Request::get("/metrics")
        .header("host", admin.to_string())
        .body(Full::new(Bytes::new()))
        .unwrap();
    let metrics = fetch(admin, req).await.unwrap();
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.lines().any(|l| l.starts_with("limpet_affinity_total{")
            && l.contains("outcome=\"failover\"")
            && l.ends_with(" 1")),
        "{text}"
    );
    demo.shutdown().await;
}

#[test]
fn the_demo_config_is_a_valid_limpet_config() {
    let config = Config::parse(CONFIG, CONFIG_NAME).unwrap_or_else(|e| panic!("{e}"));
    let from_file = Config::from_file(std::path::Path::new(CONFIG_NAME)).unwrap();
    assert_eq!(
        config.checksum, from_file.checksum,
        "the embedded copy is the file"
    );
    let shop = config.upstream("shop").unwrap();
    assert_eq!(shop.affinity, limpet::config::Affinity::Cookie);
    assert_eq!(shop.failover, limpet::config::Failover::Replica);
    assert!(shop.health.interval <= Duration::from_millis(500));
    assert!(config.admin.is_some());
    let ring: Vec<(&str, Option<&str>)> = shop
        .backends
        .iter()
        .map(|b| (b.name.as_str(), b.replica.as_deref()))
        .collect();
    assert_eq!(
        ring,
        [
            ("app1", Some("app2")),
            ("app2", Some("app3")),
            ("app3", Some("app1"))
        ]
    );
}

/// The page's controls go to the demo's control endpoint (limpet routes
/// `/_demo/` there), so they work when every app server is dead: reviving one
/// brings the shop back.
#[tokio::test]
async fn the_controls_revive_a_server_when_all_three_are_dead() {
    let demo = demo().await;
    let mut browser = demo.browser();
    for name in ["app1", "app2", "app3"] {
        let kill = browser
            .send(Method::POST, &format!("/_demo/kill/{name}"), None)
            .await
            .unwrap();
        assert_eq!(kill.status, 200, "kill {name}");
    }
    let shop = browser.send(Method::GET, "/cart", None).await.unwrap();
    assert_eq!(shop.status, 503, "no app server is left");
    let servers: Vec<ServerInfo> = browser
        .send(Method::GET, "/_demo/servers", None)
        .await
        .unwrap()
        .json()
        .unwrap();
    assert!(servers.iter().all(|s| !s.running), "{servers:?}");

    let revive = browser
        .send(Method::POST, "/_demo/revive/app2", None)
        .await
        .unwrap();
    assert_eq!(revive.status, 200, "{:?}", revive.body);
    assert!(demo.cluster.servers()[1].running);
    demo.await_health("app2", limpet::backend::Health::Up)
        .await
        .unwrap();
    let (cart, _) = browser.cart().await.unwrap();
    assert_eq!(cart.served_by, "app2");
    demo.shutdown().await;
}

/// The shop page in a real browser (chromium, skipped when absent): the failover
/// notice stays on through the page's later polls, and its revive button works
/// when all three app servers are dead.
#[tokio::test]
async fn in_a_browser_the_notice_stays_and_revive_works_when_all_are_dead() {
    let Some(chromium) = browser::Chromium::start() else {
        return;
    };
    let demo = demo().await;
    let mut page = chromium.page().await;
    page.open(&format!("{}/", demo.url())).await;
    page.wait_until(
        "document.querySelectorAll('tr[data-server]').length === 3",
        "three app servers listed",
    )
    .await;
    page.click("#login button").await;
    page.wait_until(
        "document.getElementById('who').textContent === 'Logged in as alice.'",
        "logged in",
    )
    .await;
    page.click("#add button").await;
    page.wait_until(
        "document.querySelectorAll('#items li').length === 1",
        "one item in the cart",
    )
    .await;
    let home = page.text("#served").await;
    let button = |name: &str| format!("tr[data-server=\"{name}\"] button");
    let state = |name: &str, state: &str| {
        format!("document.querySelector('tr[data-server=\"{name}\"] td:nth-child(3)')?.textContent === '{state}'")
    };

    page.click(&button(&home)).await;
    let notice = format!("(failed over from {home}, backup copy promoted)");
    page.wait_until(
        &format!("document.getElementById('failover').textContent === {notice:?}"),
        "the failover notice",
    )
    .await;
    // Two more polls of /cart later (which do not fail over), it is still there.
    let polls =
        "performance.getEntriesByType('resource').filter((e) => e.name.endsWith('/cart')).length";
    let seen = page.eval(polls).await.and_then(|v| v.as_u64()).unwrap();
    page.wait_until(&format!("{polls} >= {}", seen + 2), "two more polls")
        .await;
    assert_eq!(page.text("#failover").await, notice);
    assert_eq!(page.text("#who").await, "Logged in as alice.");

    // Every app server dead: the shop answers 503, the controls still work.
    for name in ["app1", "app2", "app3"].into_iter().filter(|n| *n != home) {
        page.wait_until(&state(name, "running"), "a running server")
            .await;
        page.click(&button(name)).await;
        page.wait_until(&state(name, "dead"), "the page showing it dead")
            .await;
    }
    assert!(demo.cluster.servers().iter().all(|s| !s.running));
    page.wait_until(
        "document.getElementById('error').textContent.startsWith('GET /cart: 503')",
        "the shop's 503 shown",
    )
    .await;
    page.click(&button(&home)).await;
    page.wait_until(&state(&home, "running"), "the page showing it revived")
        .await;
    let revived = demo.cluster.servers();
    assert!(
        revived.iter().any(|s| s.name == home && s.running),
        "{revived:?}"
    );
    page.close().await;
    drop(chromium);
    demo.shutdown().await;
}
