//! SPEC section 8, reload: `POST /reload` and SIGHUP swap the configuration
//! atomically under load, carry health and operator state over for backends whose
//! name and address are unchanged, and a broken file changes nothing.

mod common;
mod ops;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use ops::*;

/// A ring over `backends` with the given health settings and an admin listener.
fn config(backends: &[&TestBackend], upstream: &str, health: &str) -> String {
    let extra = format!("{upstream}\n\n[upstream.shop.health]\n{health}\n");
    let mut s = ring_config(backends, &extra);
    s.push_str(ADMIN);
    s
}

const QUIET: &str = "interval = \"24h\"";

#[tokio::test]
async fn a_reload_under_load_fails_no_request_keeps_pins_and_moves_a_removed_backends_sessions_to_its_replica(
) {
    const CLIENTS: usize = 8;
    const REQUESTS: usize = 2000;
    let (a, b, c, d) = (
        TestBackend::spawn("app1").await,
        TestBackend::spawn("app2").await,
        TestBackend::spawn("app3").await,
        TestBackend::spawn("app4").await,
    );
    let rr = "balance = \"round-robin\"";
    let lb = start_from_file(&config(&[&a, &b, &c], rr, QUIET)).await;

    // Every client takes its pin before the load starts.
    let mut clients = Vec::new();
    let mut first_pin = Vec::new();
    for _ in 0..CLIENTS {
        let mut client = lb.client();
        let r = client.get("/").await;
        assert_eq!(r.status, 200);
        first_pin.push(r.backend().to_string());
        clients.push(client);
    }
    assert!(
        first_pin.iter().any(|p| p == "app3"),
        "some client is on the backend the reload removes: {first_pin:?}"
    );

    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for mut client in clients {
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..REQUESTS / CLIENTS {
                match client.try_request("GET", "/", Default::default()).await {
                    Ok(r) => seen.push((
                        r.status.as_u16(),
                        r.backend().to_string(),
                        r.header("x-seen-failover-from").map(str::to_string),
                    )),
                    Err(e) => seen.push((0, e, None)),
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
            seen
        }));
    }

    // Halfway through: add app4, remove app3.
    assert!(
        eventually(Duration::from_secs(30), || async {
            done.load(Ordering::SeqCst) >= REQUESTS / 2
        })
        .await
    );
    lb.rewrite(&config(&[&a, &b, &d], rr, QUIET));
    let started = Instant::now();
    let r = lb.admin.post("/reload").await;
    let reload_took = started.elapsed();
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("3 backend(s)"), "{}", r.body);
    let at_reload = done.load(Ordering::SeqCst);
    assert!(
        at_reload < REQUESTS,
        "the reload happened while requests were flowing"
    );

    let mut total = 0;
    for (task, pin) in tasks.into_iter().zip(&first_pin) {
        let seen = task.await.unwrap();
        total += seen.len();
        let failed: Vec<_> = seen.iter().filter(|(s, _, _)| *s != 200).collect();
        assert!(failed.is_empty(), "failed requests: {failed:?}");
        if pin == "app3" {
            // Its backend is gone: its sessions move to its replica app1 (where
            // their copies are), told so once, and stay there. None is lost.
            let moved = seen
                .iter()
                .position(|(_, b, _)| b != "app3")
                .expect("moved off the removed backend");
            assert_eq!(seen[moved].2.as_deref(), Some("app3"), "{:?}", seen[moved]);
            let after: BTreeSet<_> = seen[moved..].iter().map(|(_, b, _)| b.as_str()).collect();
            assert_eq!(after, BTreeSet::from(["app1"]), "app3's replica");
            assert!(seen[moved + 1..].iter().all(|(_, _, from)| from.is_none()));
        } else {
            assert!(
                seen.iter().all(|(_, b, _)| b == pin),
                "a client of {pin} kept its pin"
            );
        }
    }
    assert_eq!(total, REQUESTS);
    let status = lb.admin.status().await;
    let names: Vec<&str> = status["upstreams"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["app1", "app2", "app4"]);
    eprintln!(
        "reload under load: {REQUESTS} requests from {CLIENTS} clients, reload at {at_reload} took {reload_took:?}"
    );
}

#[tokio::test]
async fn a_broken_file_is_refused_with_its_position_and_the_old_config_keeps_serving() {
    let (a, b) = (
        TestBackend::spawn("app1").await,
        TestBackend::spawn("app2").await,
    );
    let good = config(&[&a, &b], "", QUIET);
    let lb = start_from_file(&good).await;
    let mut client = lb.client();
    let pinned = client.get("/").await.backend().to_string();
    let before = lb.admin.status().await["config"].clone();

    // A typo on line 2 of an otherwise good file.
    let broken = format!(
        "# comment\n[listen]\nhttp = [\"127.0.0.1:0\"]\nbogus_key = 1\n{}",
        {
            let i = good.find("[upstream.shop]").unwrap();
            &good[i..]
        }
    );
    lb.rewrite(&broken);
    let r = lb.admin.post("/reload").await;
    assert_eq!(r.status, 400);
    let want = format!("{}:4:1: ", display(&lb.path));
    assert!(
        r.body.starts_with(&want) && r.body.contains("bogus_key"),
        "wanted `{want}... bogus_key ...`, got {:?}",
        r.body
    );

    // Nothing changed.
    assert_eq!(lb.admin.status().await["config"], before);
    for _ in 0..10 {
        let r = client.get("/").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.backend(), pinned);
    }
    let m = lb.admin.metrics().await;
    assert_eq!(
        m.value("limpet_config_reloads_total", &[("result", "error")]),
        1.0
    );
    assert_eq!(
        m.value("limpet_config_reloads_total", &[("result", "ok")]),
        0.0
    );

    // A validation error (not a syntax error) is refused the same way.
    lb.rewrite(&good.replace("replica = \"app2\"", "replica = \"app9\""));
    let r = lb.admin.post("/reload").await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("app9"), "{}", r.body);

    // Fixed: it loads.
    lb.rewrite(&good.replace("[upstream.shop]\n", "[upstream.shop]\nretries = 2\n"));
    let r = lb.admin.post("/reload").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let after = lb.admin.status().await["config"].clone();
    assert_ne!(after["checksum"], before["checksum"]);
    let m = lb.admin.metrics().await;
    assert_eq!(
        m.value("limpet_config_reloads_total", &[("result", "error")]),
        2.0
    );
    assert_eq!(
        m.value("limpet_config_reloads_total", &[("result", "ok")]),
        1.0
    );
    assert_eq!(client.get("/").await.backend(), pinned);
}

/// `[upstream.NAME.timeouts]` reloads; a request in flight keeps the values of
/// the configuration it started under.
#[tokio::test]
async fn an_upstreams_own_timeouts_reload_and_a_request_keeps_its_own() {
    let (a, b) = (
        TestBackend::spawn("app1").await,
        TestBackend::spawn("app2").await,
    );
    let health = "interval = \"24h\"\npassive_fall = 100";
    let patient = config(&[&a, &b], "", health);
    let quick = format!("{patient}\n[upstream.shop.timeouts]\nresponse = \"300ms\"\n");
    let lb = start_from_file(&patient).await;

    // Started under the global 30s, still waiting when the reload lands.
    let mut early = lb.client();
    let in_flight = tokio::spawn(async move { early.get("/slow?ms=1500").await });
    assert!(
        eventually(Duration::from_secs(5), || async {
            a.hits() + b.hits() == 1
        })
        .await,
        "the slow request reached a backend"
    );
    lb.rewrite(&quick);
    assert_eq!(lb.admin.post("/reload").await.status, 200);
    let r = lb.client().get("/slow?ms=1500").await;
    assert_eq!(r.status, 504, "the new request has the new 300ms");
    let r = in_flight.await.unwrap();
    assert_eq!(r.status, 200, "the one in flight kept 30s: {}", r.body);

    lb.rewrite(&patient);
    assert_eq!(lb.admin.post("/reload").await.status, 200);
    let r = lb.client().get("/slow?ms=1000").await;
    assert_eq!(r.status, 200, "back to the global 30s: {}", r.body);
}

#[tokio::test]
async fn health_and_operator_state_carry_over_when_name_and_address_are_unchanged() {
    let [a, b, c] = three_backends().await;
    let health = "interval = \"50ms\"\ntimeout = \"100ms\"\nfall = 1\nrise = 100";
    let lb = start_from_file(&config(&[&a, &b], "", health)).await;
    lb.admin.set("app1", "drain").await;
    b.health_status.store(500, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(5), || async {
            lb.admin.state("app2").await == "down"
        })
        .await
    );
    let mut client = lb.client();
    // A new session finds no ready backend: app1 drains, app2 is down.
    assert_eq!(client.get("/").await.status, 503);
    b.health_status.store(200, Ordering::SeqCst);

    // Add app3: app1 and app2 are unchanged.
    lb.rewrite(&config(&[&a, &b, &c], "", health));
    assert_eq!(lb.admin.post("/reload").await.status, 200);
    let status = lb.admin.status().await;
    assert_eq!(backend_entry(&status, "shop", "app1")["state"], "draining");
    assert_eq!(
        backend_entry(&status, "shop", "app2")["state"],
        "down",
        "rise = 100: still down, the checker's verdict was kept"
    );
    assert_eq!(backend_entry(&status, "shop", "app3")["state"], "up");

    // app1 moves to another address: a new backend as far as state goes.
    let moved = TestBackend::spawn("app1").await;
    lb.rewrite(&config(&[&moved, &b, &c], "", health));
    assert_eq!(lb.admin.post("/reload").await.status, 200);
    let entry = lb.admin.backend("shop", "app1").await;
    assert_eq!(entry["state"], "up", "{entry}");
    assert_eq!(entry["addr"], moved.addr.to_string());
    assert_eq!(entry["requests"], 0);
}

#[tokio::test]
async fn sighup_reloads_the_file_and_a_broken_file_changes_nothing() {
    let [a, b, c] = three_backends().await;
    let mut process = Process::start(&config(&[&a, &b], "", QUIET)).await;
    let admin = process.admin_client();
    let mut client = Client::new(process.http);
    let pinned = client.get("/").await.backend().to_string();
    let checksum = admin.status().await["config"]["checksum"].clone();

    process.rewrite(&config(&[&a, &b, &c], "", QUIET));
    process.signal("HUP");
    assert!(
        eventually(Duration::from_secs(5), || async {
            admin.status().await["upstreams"][0]["backends"]
                .as_array()
                .unwrap()
                .len()
                == 3
        })
        .await,
        "SIGHUP reloaded the file"
    );
    assert_ne!(admin.status().await["config"]["checksum"], checksum);
    assert_eq!(client.get("/").await.backend(), pinned);
    let checksum = admin.status().await["config"]["checksum"].clone();

    process.rewrite("[listen]\nhttp = [\"127.0.0.1:0\"\n");
    process.signal("HUP");
    assert!(
        eventually(Duration::from_secs(5), || async {
            admin
                .metrics()
                .await
                .value("limpet_config_reloads_total", &[("result", "error")])
                == 1.0
        })
        .await
    );
    assert_eq!(admin.status().await["config"]["checksum"], checksum);
    for _ in 0..5 {
        assert_eq!(client.get("/").await.backend(), pinned);
    }
    let m = admin.metrics().await;
    assert_eq!(
        m.value("limpet_config_reloads_total", &[("result", "ok")]),
        1.0
    );
    let logged: BTreeMap<String, String> = process
        .log_lines()
        .iter()
        .filter(|l| l["level"] == "ERROR")
        .filter_map(|l| {
            Some((
                l["fields"]["message"].as_str()?.to_string(),
                l["level"].to_string(),
            ))
        })
        .collect();
    assert!(
        logged
            .keys()
            .any(|m| m.contains("reload failed") && m.contains(&display(&process.config))),
        "{logged:#?}"
    );

    process.signal("TERM");
    let status = process.wait_exit(Duration::from_secs(10)).await;
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}

/// `max_connections` reloads (it once kept its start-up value): raised, a
/// client waiting for room is served at once; lowered below the connections
/// open, new ones wait until enough have closed (a kept-alive idle one is
/// closed to make room, one that has not sent its first request is not).
#[tokio::test]
async fn max_connections_reloads_up_and_down() {
    use common::wire::{get, Wire};
    let a = TestBackend::spawn("app1").await;
    let toml = |max: usize| {
        format!(
            "[listen]\nhttp = [\"127.0.0.1:0\"]\n\n[limits]\nmax_connections = {max}\n\n\
             [upstream.shop]\n[[upstream.shop.backend]]\nname = \"app1\"\naddr = \"{}\"\n",
            a.addr
        )
    };
    let apply = |lb: &TestLb, max: usize| {
        lb.limpet
            .apply(limpet::Config::parse(&toml(max), "reload.toml"))
            .expect("reload");
    };
    let waits = Duration::from_millis(300);
    let lb = TestLb::start(&toml(1)).await;
    // A connection that has sent nothing yet holds the one place.
    let silent = Wire::connect(lb.addr).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut second = Wire::connect(lb.addr).await;
    second.send(get("/")).await;
    assert!(tokio::time::timeout(waits, second.read()).await.is_err());
    apply(&lb, 2);
    assert_eq!(
        second.read().await.status,
        200,
        "served once the limit rose"
    );
    // Lowered to 1 with two open: a third client closes the kept-alive idle
    // one, and still waits for the silent one to go.
    apply(&lb, 1);
    let mut third = Wire::connect(lb.addr).await;
    third.send(get("/")).await;
    assert!(tokio::time::timeout(waits, third.read()).await.is_err());
    assert!(
        second.closed().await,
        "the idle kept-alive connection was closed"
    );
    drop(silent);
    assert_eq!(
        third.read().await.status,
        200,
        "served once one connection is left"
    );
}

/// At `max_connections`, a new client is served by closing the connection
/// idle longest (nginx's reuse of idle connections), not left waiting behind
/// kept-alive clients that send nothing.
#[tokio::test]
async fn at_the_limit_the_idlest_kept_alive_connection_makes_room() {
    use common::wire::{get, Wire};
    let a = TestBackend::spawn("app1").await;
    let toml = format!(
        "[listen]\nhttp = [\"127.0.0.1:0\"]\n\n[limits]\nmax_connections = 2\n\n\
         [upstream.shop]\n[[upstream.shop.backend]]\nname = \"app1\"\naddr = \"{}\"\n",
        a.addr
    );
    let lb = TestLb::start(&toml).await;
    let mut oldest = Wire::connect(lb.addr).await;
    assert_eq!(oldest.exchange(get("/")).await.status, 200);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut newer = Wire::connect(lb.addr).await;
    assert_eq!(newer.exchange(get("/")).await.status, 200);
    let mut arriving = Wire::connect(lb.addr).await;
    let resp = tokio::time::timeout(Duration::from_secs(5), arriving.exchange(get("/")))
        .await
        .expect("served without waiting for a connection to end");
    assert_eq!(resp.status, 200);
    assert!(oldest.closed().await, "the idlest connection was closed");
    assert_eq!(
        newer.exchange(get("/")).await.status,
        200,
        "the newer one stays"
    );
}
