//! Micro-benchmarks of the per-request hot path: cookie verification, the ip-hash
//! lookup, route matching, and the whole pick (read the pin, choose the backend)
//! from a snapshot built the way `limpet run` builds it.
//!
//! `cargo bench --bench hot_path` measures; `cargo test --all-targets` runs each
//! benchmark once (criterion's test mode), so CI checks that they still compile
//! and run. Figures are in bench/RESULTS.md.

use std::hint::black_box;
use std::net::IpAddr;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::header::{HeaderMap, HeaderValue, COOKIE, HOST};
use limpet::affinity::CookieCodec;
use limpet::backend::{Backend, BackendState};
use limpet::balancer;
use limpet::state::Snapshot;
use limpet::Config;

const SECRET: &[u8] = b"bench-secret-bench-secret-bench-secret";

fn backends(n: usize) -> Vec<Backend> {
    (0..n)
        .map(|i| {
            let addr: std::net::SocketAddr = format!("127.0.0.1:{}", 19000 + i).parse().unwrap();
            Backend {
                name: format!("app{}", i + 1).into(),
                addr: limpet::config::BackendAddr::Ip(addr),
                addr_text: addr.to_string(),
                weight: 1 + (i % 3) as u32,
                replica: None,
                route: format!("app{}", i + 1),
                send_proxy: false,
                tls: None,
                state: Arc::new(BackendState::new(Some(addr))),
            }
        })
        .collect()
}

fn cookie_decode(c: &mut Criterion) {
    let names = ["app1", "app2", "app3"];
    let codec = CookieCodec::new("shop", [SECRET], &names);
    let valid = codec.encode(1, &limpet::affinity::Session::new());
    let rotated = CookieCodec::new("shop", [&b"new-secret"[..], SECRET], &names);
    let mut forged = valid.clone().into_bytes();
    forged[20] = if forged[20] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();

    // `valid` and `previous_secret` decode a value the codec verified before (a
    // session's every request after its first: the thread's cache of verified
    // values answers); `forged` pays the full check, base64 and HMAC-SHA256, as a
    // value seen for the first time does.
    let mut g = c.benchmark_group("cookie_decode");
    g.bench_function("valid", |b| b.iter(|| codec.decode(black_box(&valid))));
    g.bench_function("forged", |b| b.iter(|| codec.decode(black_box(&forged))));
    g.bench_function("previous_secret", |b| {
        b.iter(|| rotated.decode(black_box(&valid)))
    });
    g.bench_function("encode", |b| {
        b.iter(|| codec.encode(black_box(2), &limpet::affinity::Session::new()))
    });
    g.finish();
}

fn rendezvous(c: &mut Criterion) {
    let mut g = c.benchmark_group("rendezvous");
    for n in [3usize, 20] {
        let pool = backends(n);
        let ip: IpAddr = "203.0.113.77".parse().unwrap();
        g.bench_with_input(BenchmarkId::from_parameter(n), &pool, |b, pool| {
            b.iter(|| balancer::rendezvous(pool, balancer::ip_key(black_box(ip))))
        });
    }
    g.finish();
}

/// A route table like a small company's: exact hosts, wildcard tenants, API
/// prefixes, and a catch-all.
const CONFIG: &str = r#"
[listen]
http = ["127.0.0.1:18080"]

[[route]]
host = "admin.example.com"
upstream = "admin"

[[route]]
host = "shop.example.com"
path_prefix = "/api/v2"
upstream = "api"

[[route]]
host = "shop.example.com"
path_prefix = "/static"
upstream = "api"

[[route]]
host = "*.tenants.example.com"
upstream = "admin"

[[route]]
path_prefix = "/api"
upstream = "api"

[[route]]
host = "shop.example.com"
upstream = "shop"

[[route]]
path_prefix = "/"
upstream = "shop"

[upstream.shop]
affinity = "cookie"
balance = "least-requests"

[upstream.shop.cookie]
name = "limpet"
secret = "bench-secret-bench-secret-bench-secret"

[[upstream.shop.backend]]
name = "app1"
addr = "127.0.0.1:19001"
replica = "app2"

[[upstream.shop.backend]]
name = "app2"
addr = "127.0.0.1:19002"
replica = "app3"

[[upstream.shop.backend]]
name = "app3"
addr = "127.0.0.1:19003"
replica = "app1"

[upstream.api]
affinity = "ip-hash"

[[upstream.api.backend]]
name = "api1"
addr = "127.0.0.1:19101"

[[upstream.api.backend]]
name = "api2"
addr = "127.0.0.1:19102"

[[upstream.api.backend]]
name = "api3"
addr = "127.0.0.1:19103"

[upstream.admin]
affinity = "none"
balance = "round-robin"

[[upstream.admin.backend]]
name = "admin1"
addr = "127.0.0.1:19201"
"#;

fn snapshot() -> Snapshot {
    let config = Config::parse(CONFIG, "bench.toml").expect("the bench config is valid");
    Snapshot::build(config, None)
}

fn route(c: &mut Criterion) {
    let snap = snapshot();
    let mut g = c.benchmark_group("route");
    let cases = [
        ("first_rule", "admin.example.com", "/users/42"),
        ("wildcard", "acme.tenants.example.com:8080", "/"),
        ("prefix", "shop.example.com", "/api/v2/cart/items?id=7"),
        ("exact_host_late", "SHOP.example.com", "/checkout"),
        ("catch_all", "www.other.org", "/index.html"),
    ];
    for (name, host, path) in cases {
        g.bench_function(name, |b| {
            b.iter(|| snap.router.route(black_box(Some(host)), black_box(path)))
        });
    }
    g.finish();
}

fn pick(c: &mut Criterion) {
    let snap = snapshot();
    let shop = snap.upstream("shop").unwrap();
    let api = snap.upstream("api").unwrap();
    let peer: IpAddr = "198.51.100.23".parse().unwrap();
    let cookie = shop
        .cookie
        .as_ref()
        .unwrap()
        .encode(1, &limpet::affinity::Session::new());

    let mut pinned = HeaderMap::new();
    pinned.insert(HOST, HeaderValue::from_static("shop.example.com"));
    pinned.insert(
        COOKIE,
        HeaderValue::from_str(&format!(
            "_ga=GA1.2.1234567890.1700000000; limpet={cookie}; theme=dark"
        ))
        .unwrap(),
    );
    let mut fresh = HeaderMap::new();
    fresh.insert(HOST, HeaderValue::from_static("shop.example.com"));
    fresh.insert(COOKIE, HeaderValue::from_static("theme=dark"));

    let mut g = c.benchmark_group("pick");
    g.bench_function("cookie_pinned", |b| {
        b.iter(|| {
            let pin = shop
                .read_pin(black_box(&pinned), "/cart", peer)
                .ok()
                .flatten();
            shop.choose(pin)
        })
    });
    g.bench_function("cookie_new_session", |b| {
        b.iter(|| {
            let pin = shop
                .read_pin(black_box(&fresh), "/cart", peer)
                .ok()
                .flatten();
            shop.choose(pin)
        })
    });
    g.bench_function("ip_hash", |b| {
        b.iter(|| {
            let pin = api
                .read_pin(black_box(&fresh), "/api/x", black_box(peer))
                .ok()
                .flatten();
            api.choose(pin)
        })
    });
    g.bench_function("route_and_cookie_pinned", |b| {
        b.iter(|| {
            let host = black_box(&pinned).get(HOST).and_then(|h| h.to_str().ok());
            let u = &snap.upstreams[snap.router.route(host, "/cart").unwrap()];
            let pin = u.read_pin(&pinned, "/cart", peer).ok().flatten();
            u.choose(pin)
        })
    });
    g.finish();
}

criterion_group!(benches, cookie_decode, rendezvous, route, pick);
criterion_main!(benches);
