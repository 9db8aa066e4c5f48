//! Sessions limpet understands (issue 11): the replica a backend names for a
//! session (`x-session-replica`) carried in the version-2 cookie and tried first
//! on failover; version-1 cookies still pinning; WebLogic-style application
//! cookies naming a secondary; `cookie.max_lifetime` and `cookie.max_idle`.
//! Pins to a backend a reload removes: tests/reload.rs.

mod common;
mod ops;

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::*;
use ops::*;
use ring::hmac;

const SECRET: &str = "test-secret";

/// Three backends in a ring (app1 -> app2 -> app3 -> app1), round-robin,
/// with an admin listener.
async fn ring() -> ([TestBackend; 3], TestLb) {
    let backends = three_backends().await;
    let [a, b, c] = &backends;
    let extra = "balance = \"round-robin\"\n\
        [upstream.shop.health]\ninterval = \"100ms\"\ntimeout = \"500ms\"\nrise = 1\nfall = 1\n";
    let mut toml = ring_config(&[a, b, c], extra);
    toml.push_str(ADMIN);
    (backends, TestLb::start(&toml).await)
}

fn admin(lb: &TestLb) -> AdminClient {
    AdminClient::new(lb.limpet.admin_addr.expect("an admin listener"))
}

#[tokio::test]
async fn a_learned_replica_rides_in_the_cookie_and_takes_over_first() {
    let ([app1, _app2, _app3], lb) = ring().await;
    let admin = admin(&lb);
    let mut client = lb.client_pinned_to("app1").await;
    let v1 = client.cookie.clone().unwrap();

    // app1 says the session's copy is on app3 (its static replica is app2).
    let r = client.get("/replica/app3").await;
    assert_eq!(r.backend(), "app1");
    assert_eq!(
        r.header("x-session-replica"),
        None,
        "stripped for the client"
    );
    let v2 = r.set_cookie("limpet").expect("re-issued with the replica");
    assert_ne!(v1, v2);
    assert_eq!(v2.len(), 67, "a version-2 value");
    // The same replica again, or nothing said: the cookie stands.
    for path in ["/replica/app3", "/"] {
        let r = client.get(path).await;
        assert_eq!(r.backend(), "app1");
        assert_eq!(r.set_cookie("limpet"), None, "{path}");
    }
    // Names that are not another backend of the upstream: ignored, counted.
    for path in ["/replica/nosuch", "/replica/app1"] {
        let r = client.get(path).await;
        assert_eq!(r.header("x-session-replica"), None);
        assert_eq!(r.set_cookie("limpet"), None, "{path}");
    }
    let metrics = admin.metrics().await;
    let invalid = ("upstream", "shop");
    assert_eq!(
        metrics.value("limpet_session_replica_invalid_total", &[invalid]),
        2.0
    );

    // app1 dies: the session goes to app3, where its copy is, not to app2.
    app1.stop().await;
    let r = client.get("/").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.backend(), "app3");
    assert_eq!(r.header("x-seen-failover-from"), Some("app1"));
    assert!(r.set_cookie("limpet").is_some(), "re-pinned to app3");
    let r = client.get("/").await;
    assert_eq!((r.backend(), r.set_cookie("limpet")), ("app3", None));
    assert_eq!(r.header("x-seen-failover-from"), None);
}

#[tokio::test]
async fn a_learned_replica_that_is_down_gives_way_to_the_chain() {
    let ([app1, _app2, app3], lb) = ring().await;
    let mut client = lb.client_pinned_to("app1").await;
    assert!(client
        .get("/replica/app3")
        .await
        .set_cookie("limpet")
        .is_some());
    app3.stop().await;
    app1.stop().await;
    let wait = Duration::from_secs(10);
    lb.wait_backend_state("shop", "app1", "down", wait).await;
    lb.wait_backend_state("shop", "app3", "down", wait).await;
    let r = client.get("/").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.backend(), "app2", "app1's static replica");
    assert_eq!(r.header("x-seen-failover-from"), Some("app1"));
}

/// A version-1 cookie value, as limpet wrote before learned replicas (the
/// format of `src/affinity.rs`, written here independently).
fn v1_cookie(upstream: &str, backend: &str, issued: u64) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, SECRET.as_bytes());
    let id = hmac::sign(
        &key,
        &[
            b"limpet-backend\0",
            upstream.as_bytes(),
            b"\0",
            backend.as_bytes(),
        ]
        .concat(),
    );
    let mut value = vec![1u8, 0];
    value.extend_from_slice(&id.as_ref()[..8]);
    value.extend_from_slice(&issued.to_be_bytes());
    let tag = hmac::sign(
        &key,
        &[b"limpet-pin\0", upstream.as_bytes(), b"\0", &value].concat(),
    );
    value.extend_from_slice(&tag.as_ref()[..16]);
    URL_SAFE_NO_PAD.encode(value)
}

#[tokio::test]
async fn version_1_cookies_still_pin_and_are_reissued_as_version_2() {
    let (_backends, lb) = ring().await;
    for backend in ["app1", "app2", "app3"] {
        let mut client = lb.client();
        client.cookie = Some(v1_cookie("shop", backend, 1_700_000_000));
        let r = client.get("/").await;
        assert_eq!(r.backend(), backend);
        let v2 = r.set_cookie("limpet").expect("re-issued");
        assert_eq!(v2.len(), 67);
        let r = client.get("/").await;
        assert_eq!((r.backend(), r.set_cookie("limpet")), (backend, None));
    }
    // Signed with another secret: no pin, a new session.
    let mut client = lb.client();
    let mut forged = v1_cookie("shop", "app2", 1_700_000_000);
    forged.replace_range(10..11, if &forged[10..11] == "A" { "B" } else { "A" });
    client.cookie = Some(forged);
    let r = client.get("/").await;
    assert_eq!(r.status, 200);
    assert!(r.set_cookie("limpet").is_some(), "a new session's cookie");
}

#[tokio::test]
async fn a_weblogic_secondary_is_where_the_session_fails_over_to() {
    let [app1, app2, app3] = three_backends().await;
    let mut toml = String::from(
        "[listen]\nhttp = [\"127.0.0.1:0\"]\n\n[upstream.shop]\naffinity = \"app-cookie\"\n\
         [upstream.shop.app_cookie]\nseparator = \"!\"\nsecondary_separator = \"!\"\n",
    );
    for (b, route, replica) in [
        (&app1, "-101", "app2"),
        (&app2, "-202", "app3"),
        (&app3, "-303", "app1"),
    ] {
        toml.push_str(&format!(
            "\n[[upstream.shop.backend]]\nname = \"{}\"\naddr = \"{}\"\nroute = \"{route}\"\nreplica = \"{replica}\"\n",
            b.name, b.addr
        ));
    }
    let lb = TestLb::start(&toml).await;
    let mut client = lb.client();
    client.cookie_name = "JSESSIONID".into();
    client.cookie = Some("Zq8pLm!-101!-303".into());
    for _ in 0..3 {
        assert_eq!(client.get("/").await.backend(), "app1");
    }
    app1.stop().await;
    let r = client.get("/").await;
    assert_eq!(
        r.backend(),
        "app3",
        "the secondary, not app1's static replica"
    );
    assert_eq!(r.header("x-seen-failover-from"), Some("app1"));
    assert_eq!(
        r.set_cookie("limpet"),
        None,
        "app-cookie sets no cookie of limpet's"
    );
    // A session not replicated yet (no secondary): the static replica.
    client.cookie = Some("Yy7!-101".into());
    assert_eq!(client.get("/").await.backend(), "app2");
}

/// The Max-Age of limpet's Set-Cookie in `r`.
fn max_age(r: &Reply) -> Option<u64> {
    let v = r.headers.get("set-cookie")?.to_str().ok()?;
    v.split(';')
        .find_map(|a| a.trim().strip_prefix("Max-Age="))
        .and_then(|n| n.parse().ok())
}

#[tokio::test]
async fn an_active_session_is_refreshed_until_its_lifetime_ends() {
    let [a, b, c] = three_backends().await;
    let mut toml = ring_config(&[&a, &b, &c], "");
    toml = toml.replace(
        "[upstream.shop.cookie]\n",
        "[upstream.shop.cookie]\nmax_lifetime = \"5s\"\nmax_idle = \"2s\"\n",
    );
    toml.push_str(ADMIN);
    let lb = TestLb::start(&toml).await;
    let admin = admin(&lb);
    let mut client = lb.client();
    let first = client.get("/").await;
    let pinned = first.backend().to_string();
    assert!(
        max_age(&first).is_some_and(|s| (4..=5).contains(&s)),
        "{:?}",
        first.headers
    );

    // Within half of max_idle: the cookie stands. Past it: re-issued with a
    // fresh time (and a Max-Age of what is left of the lifetime), same backend.
    let r = client.get("/").await;
    assert_eq!(
        (r.backend(), r.set_cookie("limpet")),
        (pinned.as_str(), None)
    );
    let mut refreshed = 0;
    let mut expired_at = None;
    for step in 1..=8 {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let r = client.get("/").await;
        if r.set_cookie("limpet").is_some() {
            let ignored = admin.metrics().await.value(
                "limpet_pins_ignored_total",
                &[("upstream", "shop"), ("reason", "expired")],
            );
            if ignored == 1.0 {
                expired_at = Some(step);
                break;
            }
            assert_eq!(r.backend(), pinned, "a refresh keeps the backend");
            assert!(max_age(&r).is_some_and(|s| s < 5), "{:?}", r.headers);
            refreshed += 1;
        }
    }
    assert!(refreshed >= 2, "refreshed {refreshed} times");
    let step = expired_at.expect("the session expired");
    assert!((4..=6).contains(&step), "expired at step {step}");

    // Idle longer than max_idle: the pin is gone, a new session starts.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let r = client.get("/").await;
    assert!(r.set_cookie("limpet").is_some());
    let metrics = admin.metrics().await;
    let idle = [("upstream", "shop"), ("reason", "idle")];
    assert_eq!(metrics.value("limpet_pins_ignored_total", &idle), 1.0);
}
