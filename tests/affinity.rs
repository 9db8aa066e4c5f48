//! Affinity (SPEC section 3): cookie and ip-hash pins hold, invalid cookies start a
//! new session, key rotation, limpet's cookie never reaches the app, instances agree,
//! and the ip-hash consistent hash moves the keys of a removed backend and few others.

mod common;
use std::collections::HashMap;

use bytes::Bytes;
use common::*;

/// One upstream `shop` over `backends` with `upstream` keys and a `[upstream.shop.cookie]`
/// table holding `cookie` keys.
fn config(backends: &[&TestBackend], upstream: &str, cookie: &str) -> String {
    let mut s = format!(
        "[listen]\nhttp = [\"127.0.0.1:0\"]\n\n[upstream.shop]\n{upstream}\n\n[upstream.shop.cookie]\n{cookie}\n"
    );
    for b in backends {
        s.push_str(&format!(
            "\n[[upstream.shop.backend]]\nname = \"{}\"\naddr = \"{}\"\n",
            b.name, b.addr
        ));
    }
    s
}

/// An ip-hash upstream over `backends` trusting X-Forwarded-For from `trusted`.
fn ip_hash_config(backends: &[&TestBackend], trusted: &str) -> String {
    let mut s = format!(
        "[listen]\nhttp = [\"127.0.0.1:0\"]\n\n[upstream.shop]\naffinity = \"ip-hash\"\n\n\
         [upstream.shop.ip_hash]\ntrusted_proxies = [{trusted}]\n"
    );
    for b in backends {
        s.push_str(&format!(
            "\n[[upstream.shop.backend]]\nname = \"{}\"\naddr = \"{}\"\n",
            b.name, b.addr
        ));
    }
    s
}

/// `n` distinct client addresses.
fn client_ips(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("100.{}.{}.{}", 64 + i % 7, (i / 7) % 250, i % 250 + 1))
        .collect()
}

/// The backend each client IP lands on, sent as X-Forwarded-For.
async fn map_ips(lb: &TestLb, ips: &[String]) -> HashMap<String, String> {
    let mut client = lb.client();
    let mut out = HashMap::new();
    for ip in ips {
        client
            .headers
            .insert("x-forwarded-for", ip.parse().unwrap());
        let r = client.get("/").await;
        assert_eq!(r.status, 200);
        assert!(r.set_cookie("limpet").is_none(), "ip-hash sets no cookie");
        out.insert(ip.clone(), r.backend().to_string());
    }
    out
}

/// One cookie pinned to each backend, through a round-robin limpet.
async fn cookie_per_backend(lb: &TestLb) -> HashMap<String, String> {
    let mut pins = HashMap::new();
    let mut client = lb.client();
    for _ in 0..30 {
        client.cookie = None;
        let r = client.get("/").await;
        assert_eq!(r.status, 200);
        let cookie = r.set_cookie("limpet").expect("a new session gets a cookie");
        pins.insert(r.backend().to_string(), cookie);
    }
    assert_eq!(pins.len(), 3, "round-robin reaches every backend: {pins:?}");
    pins
}

#[tokio::test]
async fn a_cookie_client_sticks_to_one_backend() {
    let [a, b, c] = three_backends().await;
    let lb = TestLb::start(&ring_config(&[&a, &b, &c], "affinity = \"cookie\"")).await;
    let mut client = lb.client();
    let first = client.get("/").await;
    assert_eq!(first.status, 200);
    assert!(first.set_cookie("limpet").is_some());
    let pinned = first.backend().to_string();
    for _ in 0..100 {
        let r = client.get("/").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.backend(), pinned);
        assert!(
            r.set_cookie("limpet").is_none(),
            "Set-Cookie only when the pin changes"
        );
    }
}

#[tokio::test]
async fn an_ip_hash_client_sticks_to_one_backend() {
    let [a, b, c] = three_backends().await;
    let lb = TestLb::start(&ip_hash_config(&[&a, &b, &c], "")).await;
    let mut client = lb.client();
    let first = client.get("/").await;
    assert_eq!(first.status, 200);
    let pinned = first.backend().to_string();
    assert!(!pinned.is_empty());
    for _ in 0..100 {
        let r = client.get("/").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.backend(), pinned);
        assert!(
            r.headers.get("set-cookie").is_none(),
            "ip-hash sets no cookie"
        );
    }
}

#[tokio::test]
async fn invalid_cookies_start_a_new_session_never_an_error() {
    let [a, b, c] = three_backends().await;
    let lb = TestLb::start(&ring_config(&[&a, &b, &c], "balance = \"round-robin\"")).await;
    let other = TestLb::start(&config(
        &[&a, &b, &c],
        "balance = \"round-robin\"",
        "secret = \"another-secret\"",
    ))
    .await;
    let mut client = lb.client();
    let valid = client.get("/").await.set_cookie("limpet").unwrap();
    let other_secret = other.client().get("/").await.set_cookie("limpet").unwrap();

    let mut forged = valid.clone().into_bytes();
    let mid = forged.len() / 2;
    forged[mid] = if forged[mid] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    let cases = [
        ("forged", forged),
        ("truncated", valid[..valid.len() - 4].to_string()),
        ("one char short", valid[..valid.len() - 1].to_string()),
        ("empty", String::new()),
        ("another secret", other_secret),
        ("garbage", "not-a-limpet-cookie".to_string()),
        ("not base64", "!".repeat(valid.len())),
        ("quoted empty", "\"\"".to_string()),
    ];
    for (what, value) in cases {
        let mut client = lb.client();
        client.cookie = Some(value.clone());
        let r = client.get("/").await;
        assert_eq!(r.status, 200, "{what} cookie {value:?}");
        let new = r
            .set_cookie("limpet")
            .unwrap_or_else(|| panic!("{what} cookie {value:?}: no new pin"));
        assert_ne!(new, value, "{what}");
        // The new pin holds.
        let again = client.get("/").await;
        assert_eq!(again.backend(), r.backend(), "{what}");
        assert!(again.set_cookie("limpet").is_none(), "{what}");
    }
}

#[tokio::test]
async fn another_upstreams_cookie_is_a_new_pin() {
    let [a, b, c] = three_backends().await;
    // Two upstreams with the same cookie name, secret and backend names.
    let mut toml = String::from(
        "[listen]\nhttp = [\"127.0.0.1:0\"]\n\n\
         [[route]]\npath_prefix = \"/shop\"\nupstream = \"shop\"\n\n\
         [[route]]\npath_prefix = \"/blog\"\nupstream = \"blog\"\n",
    );
    for up in ["shop", "blog"] {
        toml.push_str(&format!(
            "\n[upstream.{up}]\nbalance = \"round-robin\"\n\n[upstream.{up}.cookie]\n\
             name = \"limpet\"\nsecret = \"same-secret\"\n"
        ));
        for backend in [&a, &b, &c] {
            toml.push_str(&format!(
                "\n[[upstream.{up}.backend]]\nname = \"{}\"\naddr = \"{}\"\n",
                backend.name, backend.addr
            ));
        }
    }
    let lb = TestLb::start(&toml).await;
    for _ in 0..6 {
        let mut client = lb.client();
        let shop = client.get("/shop").await;
        assert_eq!(shop.status, 200);
        let shop_cookie = shop.set_cookie("limpet").unwrap();

        let blog = client.get("/blog").await;
        assert_eq!(blog.status, 200);
        let blog_cookie = blog
            .set_cookie("limpet")
            .expect("the shop's cookie does not pin in the blog");
        assert_ne!(blog_cookie, shop_cookie);

        // And the blog's cookie does not pin in the shop.
        let back = client.get("/shop").await;
        assert_eq!(back.status, 200);
        assert!(back.set_cookie("limpet").is_some());
        // The shop's own cookie still pins in the shop.
        client.cookie = Some(shop_cookie);
        let pinned = client.get("/shop").await;
        assert_eq!(pinned.backend(), shop.backend());
        assert!(pinned.set_cookie("limpet").is_none());
    }
}

#[tokio::test]
async fn a_cookie_signed_with_a_previous_secret_pins_and_is_reissued() {
    let [a, b, c] = three_backends().await;
    let backends = [&a, &b, &c];
    let old = TestLb::start(&config(
        &backends,
        "balance = \"round-robin\"",
        "secret = \"old-secret\"",
    ))
    .await;
    let new = TestLb::start(&config(
        &backends,
        "balance = \"round-robin\"",
        "secret = \"new-secret\"\nprevious_secrets = [\"older-secret\", \"old-secret\"]",
    ))
    .await;
    for (backend, old_cookie) in cookie_per_backend(&old).await {
        let mut client = new.client();
        client.cookie = Some(old_cookie.clone());
        let r = client.get("/").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.backend(), backend, "an old-secret cookie keeps its pin");
        let reissued = r
            .set_cookie("limpet")
            .expect("re-issued under the current secret");
        assert_ne!(reissued, old_cookie);

        // Under the current secret: pinned, not re-issued again.
        let r = client.get("/").await;
        assert_eq!(r.backend(), backend);
        assert!(r.set_cookie("limpet").is_none());

        // Signed with "new-secret", which the old instance does not know.
        let mut stranger = old.client();
        stranger.cookie = Some(reissued);
        assert!(stranger.get("/").await.set_cookie("limpet").is_some());
    }
}

#[tokio::test]
async fn limpets_cookie_is_stripped_and_app_cookies_pass_byte_for_byte() {
    let [a, b, c] = three_backends().await;
    let lb = TestLb::start(&ring_config(&[&a, &b, &c], "")).await;
    let mut client = lb.client();
    let first = client.get("/").await;
    let pin = first.set_cookie("limpet").unwrap();
    let backend = first.backend().to_string();

    // (cookie header fields sent, what the backend must see)
    let cases: Vec<(Vec<String>, Option<&str>)> = vec![
        (vec![format!("limpet={pin}")], None),
        (
            vec![format!("theme=dark; limpet={pin}; sid=\"a=b c\"")],
            Some("theme=dark; sid=\"a=b c\""),
        ),
        (
            vec![format!("limpet={pin}; x=%20y; empty=")],
            Some("x=%20y; empty="),
        ),
        (vec!["a=1;b=2;  c = 3".to_string()], Some("a=1;b=2;  c = 3")),
        (
            vec![
                "a=1".to_string(),
                format!("limpet={pin}"),
                "b=2".to_string(),
            ],
            Some("a=1; b=2"),
        ),
        // Another cookie whose name merely contains ours.
        (
            vec![format!("xlimpet=1; limpet={pin}; limpet2=2")],
            Some("xlimpet=1; limpet2=2"),
        ),
    ];
    for (fields, seen) in cases {
        let mut c = lb.client();
        for f in &fields {
            c.headers.append("cookie", f.parse().unwrap());
        }
        let r = c.get("/").await;
        assert_eq!(r.status, 200, "{fields:?}");
        assert_eq!(r.header("x-seen-cookie"), seen, "{fields:?}");
        if fields
            .iter()
            .any(|f| f.contains(&format!(" limpet={pin}")) || f.starts_with("limpet="))
        {
            assert_eq!(r.backend(), backend, "{fields:?}: still pinned");
            assert!(r.set_cookie("limpet").is_none(), "{fields:?}");
        }
    }
}

#[tokio::test]
async fn two_instances_with_the_same_config_pin_alike() {
    let [a, b, c] = three_backends().await;
    let toml = ring_config(&[&a, &b, &c], "balance = \"random\"");
    let (one, two) = (TestLb::start(&toml).await, TestLb::start(&toml).await);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..30 {
        let mut client = one.client();
        let r = client.get("/").await;
        let cookie = r.set_cookie("limpet").unwrap();
        seen.insert(r.backend().to_string());
        let mut other = two.client();
        other.cookie = Some(cookie);
        for _ in 0..3 {
            let s = other.get("/").await;
            assert_eq!(s.backend(), r.backend());
            assert!(
                s.set_cookie("limpet").is_none(),
                "the other instance reads the pin"
            );
        }
    }
    assert!(seen.len() >= 2, "pins spread over backends: {seen:?}");

    let toml = ip_hash_config(&[&a, &b, &c], "\"127.0.0.1/32\"");
    let (one, two) = (TestLb::start(&toml).await, TestLb::start(&toml).await);
    let ips = client_ips(200);
    let (m1, m2) = (map_ips(&one, &ips).await, map_ips(&two, &ips).await);
    assert_eq!(m1, m2, "both instances map every IP to the same backend");
    let used: std::collections::HashSet<_> = m1.values().collect();
    assert_eq!(used.len(), 3, "IPs spread over every backend");
}

#[tokio::test]
async fn removing_one_of_four_ip_hash_backends_moves_its_keys_and_few_others() {
    let (a, b, c, d) = (
        TestBackend::spawn("app1").await,
        TestBackend::spawn("app2").await,
        TestBackend::spawn("app3").await,
        TestBackend::spawn("app4").await,
    );
    let trusted = "\"127.0.0.1/32\"";
    let four = ip_hash_config(&[&a, &b, &c, &d], trusted);
    let three = ip_hash_config(&[&a, &b, &d], trusted);
    let ips = client_ips(1000);

    let lb = TestLb::start(&four).await;
    let before = map_ips(&lb, &ips).await;
    for name in ["app1", "app2", "app3", "app4"] {
        let n = before.values().filter(|b| *b == name).count();
        assert!((150..=350).contains(&n), "{name} has {n} of 1000 keys");
    }

    // By reload...
    lb.limpet
        .apply(limpet::Config::parse(&three, "three.toml"))
        .expect("reload");
    let reloaded = map_ips(&lb, &ips).await;
    // ... and by a second instance started with the smaller config.
    let second = TestLb::start(&three).await;
    let started = map_ips(&second, &ips).await;
    assert_eq!(reloaded, started);

    // Maglev (src/maglev.rs) moves all of app3's keys and a few others: 0.1% of
    // the key space for 4 backends, so 0 to 3 of these 750 or so.
    let (mut moved, mut others_moved) = (0, 0);
    for ip in &ips {
        let (was, is) = (&before[ip], &reloaded[ip]);
        if was == "app3" {
            assert_ne!(is, "app3");
            moved += 1;
        } else if was != is {
            others_moved += 1;
        }
    }
    assert!(
        (175..=325).contains(&moved),
        "about a quarter of the keys move: {moved} of 1000"
    );
    assert!(
        others_moved <= 7,
        "{others_moved} keys not on the removed backend moved (at most 1% may)"
    );
}

#[tokio::test]
async fn x_forwarded_for_counts_only_from_a_trusted_peer() {
    let [a, b, c] = three_backends().await;
    let ips = client_ips(60);

    let untrusted = TestLb::start(&ip_hash_config(&[&a, &b, &c], "\"10.0.0.0/8\"")).await;
    let map = map_ips(&untrusted, &ips).await;
    let used: std::collections::HashSet<_> = map.values().collect();
    assert_eq!(
        used.len(),
        1,
        "the peer, not X-Forwarded-For, is the key: {used:?}"
    );

    let trusted = TestLb::start(&ip_hash_config(&[&a, &b, &c], "\"127.0.0.1/32\"")).await;
    let map = map_ips(&trusted, &ips).await;
    let used: std::collections::HashSet<_> = map.values().collect();
    assert!(used.len() > 1, "X-Forwarded-For is the key: {used:?}");

    // The right-most untrusted entry is the client, whatever the client forged before it.
    let mut client = trusted.client();
    for ip in ips.iter().take(20) {
        client
            .headers
            .insert("x-forwarded-for", format!("6.6.6.6, {ip}").parse().unwrap());
        let r = client.get("/").await;
        assert_eq!(r.backend(), map[ip], "{ip}");
        let r = client
            .request("POST", "/echo", Bytes::from_static(b"x"))
            .await;
        assert_eq!(r.backend(), map[ip], "{ip}");
    }
}

#[tokio::test]
async fn the_affinity_cookie_has_the_configured_attributes() {
    let [a, b, c] = three_backends().await;
    let lb = TestLb::start(&ring_config(&[&a, &b, &c], "")).await;
    let r = lb.client().get("/").await;
    let set = r.header("set-cookie").unwrap().to_string();
    let attrs: Vec<&str> = set.split(';').map(str::trim).collect();
    assert!(attrs[0].starts_with("limpet="), "{set}");
    assert!(
        !attrs[0].contains("app"),
        "the value hides the backend: {set}"
    );
    for want in ["Path=/", "HttpOnly", "SameSite=Lax"] {
        assert!(attrs.contains(&want), "{want} in {set}");
    }
    assert!(
        !set.contains("Secure"),
        "auto: not Secure over plain HTTP: {set}"
    );
    assert!(!set.contains("Max-Age"), "a browser-session cookie: {set}");

    let lb = TestLb::start(&config(
        &[&a, &b, &c],
        "",
        "name = \"route\"\nsecret = \"s\"\npath = \"/shop\"\nmax_age = \"8h\"\nsecure = true\nhttp_only = false\nsame_site = \"strict\"",
    ))
    .await;
    let r = lb.client().get("/").await;
    let set = r.header("set-cookie").unwrap().to_string();
    let attrs: Vec<&str> = set.split(';').map(str::trim).collect();
    assert!(attrs[0].starts_with("route="), "{set}");
    for want in ["Path=/shop", "Secure", "SameSite=Strict", "Max-Age=28800"] {
        assert!(attrs.contains(&want), "{want} in {set}");
    }
    assert!(!attrs.contains(&"HttpOnly"), "{set}");
    // And it pins under its own name.
    let mut client = lb.client();
    client.cookie_name = "route".into();
    let first = client.get("/").await.backend().to_string();
    for _ in 0..10 {
        let r = client.get("/").await;
        assert_eq!(r.backend(), first);
        assert!(r.set_cookie("route").is_none());
    }
}

#[tokio::test]
async fn app_cookie_routes_by_the_apps_session_suffix() {
    let [a, b, c] = three_backends().await;
    let toml = format!(
        "[listen]\nhttp = [\"127.0.0.1:0\"]\n\n[upstream.shop]\naffinity = \"app-cookie\"\n\
         balance = \"round-robin\"\n\n[upstream.shop.health]\ninterval = \"100ms\"\nrise = 1\nfall = 1\n\n\
         [[upstream.shop.backend]]\nname = \"app1\"\naddr = \"{}\"\nroute = \"jvm1\"\nreplica = \"app2\"\n\n\
         [[upstream.shop.backend]]\nname = \"app2\"\naddr = \"{}\"\nreplica = \"app3\"\n\n\
         [[upstream.shop.backend]]\nname = \"app3\"\naddr = \"{}\"\nreplica = \"app1\"\n",
        a.addr, b.addr, c.addr
    );
    let lb = TestLb::start(&toml).await;
    let with_cookie = |value: &str| {
        let mut client = lb.client();
        client.headers.insert(
            "cookie",
            format!("theme=dark; JSESSIONID={value}").parse().unwrap(),
        );
        client
    };
    for (value, backend) in [
        ("8F3AC2.jvm1", "app1"),
        ("8F3AC2.app2", "app2"),
        ("a.b.app3", "app3"),
    ] {
        let mut client = with_cookie(value);
        for _ in 0..5 {
            let r = client.get("/").await;
            assert_eq!(r.backend(), backend, "{value}");
            assert!(
                r.headers.get("set-cookie").is_none(),
                "limpet sets no cookie"
            );
            let seen = format!("theme=dark; JSESSIONID={value}");
            assert_eq!(r.header("x-seen-cookie"), Some(seen.as_str()));
        }
    }
    // The route in a ;jsessionid= path parameter.
    let r = lb.client().get("/cart;jsessionid=77AB.app3?item=1").await;
    assert_eq!(r.backend(), "app3");
    // No cookie, or an unknown route: balanced over every backend.
    let mut seen = std::collections::HashSet::new();
    for i in 0..9 {
        let r = if i % 2 == 0 {
            lb.client().get("/").await
        } else {
            with_cookie("8F3AC2.app9").get("/").await
        };
        assert_eq!(r.status, 200);
        seen.insert(r.backend().to_string());
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    // The route's backend is dead: its replica, told so, and no cookie from limpet.
    a.stop().await;
    let mut client = with_cookie("8F3AC2.jvm1");
    for _ in 0..3 {
        let r = client.get("/").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.backend(), "app2");
        assert_eq!(r.header("x-seen-failover-from"), Some("app1"));
        assert!(r.headers.get("set-cookie").is_none());
    }
}
