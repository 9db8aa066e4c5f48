//! Micro-benchmarks of the per-request hot path: cookie verification, the ip-hash
//! lookup, route matching, and the whole pick (read the pin, choose the backend)
//! from a snapshot built the way `limpet run` builds it; and how these scale with
//! the config (3 to 1,000 backends, 1 to 10,000 routes), with the time to build
//! the snapshot of a 1,000-backend config.
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
use limpet::hash_ring::Ring;
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

/// The ip-hash lookup alone: the key of an address, then its table slot
/// (`rendezvous/3` and `/20` before, which scored every backend).
fn ip_hash_table(c: &mut Criterion) {
    let mut g = c.benchmark_group("ip_hash_table");
    for n in [3usize, 20, 1000] {
        let pool = backends(n);
        let table = Ring::new(pool.iter().map(|b| (&*b.name, b.weight))).unwrap();
        let ip: IpAddr = "203.0.113.77".parse().unwrap();
        g.bench_with_input(BenchmarkId::from_parameter(n), &table, |b, table| {
            b.iter(|| table.get(balancer::ip_key(black_box(ip))))
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

/// A config of one ip-hash upstream over `n` backends (weights 1, 2, 3 in turn),
/// behind `routes` generated routes (see [`route_table`]).
fn scaled_config(n: usize, routes: usize) -> String {
    let mut s = String::from("[listen]\nhttp = [\"127.0.0.1:18080\"]\n\n");
    s.push_str(&route_table(routes));
    s.push_str("[upstream.api]\naffinity = \"ip-hash\"\n\n");
    for i in 0..n {
        s.push_str(&format!(
            "[[upstream.api.backend]]\nname = \"api{}\"\naddr = \"127.0.0.1:{}\"\nweight = {}\n\n",
            i + 1,
            20000 + i,
            1 + i % 3
        ));
    }
    s
}

/// `n` routes to the upstream `api`: exact hosts, `*.domain` wildcards, a host
/// with a path prefix and path prefixes on any host in turn, then a catch-all.
fn route_table(n: usize) -> String {
    let mut s = String::new();
    for i in 0..n.saturating_sub(1) {
        let (host, prefix) = match i % 4 {
            0 => (Some(format!("h{i}.example.com")), None),
            1 => (Some(format!("*.t{i}.example.net")), None),
            2 => (
                Some(format!("h{i}.example.com")),
                Some(format!("/api/v{i}")),
            ),
            _ => (None, Some(format!("/p{i}"))),
        };
        s.push_str("[[route]]\nupstream = \"api\"\n");
        if let Some(h) = host {
            s.push_str(&format!("host = \"{h}\"\n"));
        }
        if let Some(p) = prefix {
            s.push_str(&format!("path_prefix = \"{p}\"\n"));
        }
        s.push('\n');
    }
    s.push_str("[[route]]\nupstream = \"api\"\npath_prefix = \"/\"\n\n");
    s
}

fn scaled_snapshot(backends: usize, routes: usize) -> Snapshot {
    let config = Config::parse(&scaled_config(backends, routes), "scaled.toml")
        .expect("the generated config is valid");
    Snapshot::build(config, None)
}

/// read_pin + choose for an ip-hash upstream of 3 to 1,000 backends.
fn ip_hash_pick(c: &mut Criterion) {
    let mut g = c.benchmark_group("ip_hash_pick");
    let headers = HeaderMap::new();
    for n in [3usize, 20, 100, 1000] {
        let snap = scaled_snapshot(n, 1);
        let api = snap.upstream("api").unwrap();
        let peers: Vec<IpAddr> = (0..256u32)
            .map(|i| IpAddr::from([198, 51, (i >> 8) as u8, i as u8]))
            .collect();
        let mut next = 0usize;
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                next = (next + 1) & 255;
                let pin = api
                    .read_pin(black_box(&headers), "/", black_box(peers[next]))
                    .ok()
                    .flatten();
                api.choose(pin)
            })
        });
    }
    g.finish();
}

/// Route lookup in tables of 1, 100 and 10,000 routes; each case hits a rule
/// from the middle of the table (the catch-all for the one-route table).
fn route_lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("route_lookup");
    for n in [1usize, 100, 10_000] {
        let snap = scaled_snapshot(1, n);
        let mid = (n / 2) & !3;
        let cases = [
            (
                "exact_host",
                format!("h{mid}.example.com"),
                "/index.html".to_string(),
            ),
            (
                "wildcard",
                format!("www.t{}.example.net:8443", mid + 1),
                "/".to_string(),
            ),
            (
                "host_and_prefix",
                format!("h{}.example.com", mid + 2),
                format!("/api/v{}/cart?id=7", mid + 2),
            ),
            (
                "prefix",
                "www.other.org".to_string(),
                format!("/p{}/x", mid + 3),
            ),
            (
                "catch_all",
                "www.other.org".to_string(),
                "/index.html".to_string(),
            ),
        ];
        for (name, host, path) in &cases {
            g.bench_function(BenchmarkId::new(*name, n), |b| {
                b.iter(|| snap.router.route(black_box(Some(host)), black_box(path)))
            });
        }
    }
    g.finish();
}

/// Parsing, validating and building the snapshot of a config with 1,000 ip-hash
/// backends (and 100 routes): what a reload does before the swap.
fn reload_build(c: &mut Criterion) {
    let text = scaled_config(1000, 100);
    let mut g = c.benchmark_group("reload");
    g.sample_size(10);
    g.bench_function("parse_and_build_1000_backends", |b| {
        b.iter(|| {
            let config = Config::parse(black_box(&text), "scaled.toml").unwrap();
            Snapshot::build(config, None)
        })
    });
    let config = Config::parse(&text, "scaled.toml").unwrap();
    g.bench_function("build_1000_backends", |b| {
        b.iter(|| Snapshot::build(black_box(config.clone()), None))
    });
    // A reload carries each backend's state over from the running snapshot.
    let running = Snapshot::build(config.clone(), None);
    g.bench_function("rebuild_1000_backends", |b| {
        b.iter(|| Snapshot::build(black_box(config.clone()), Some(&running)))
    });
    g.finish();
}

criterion_group!(
    benches,
    cookie_decode,
    ip_hash_table,
    route,
    pick,
    ip_hash_pick,
    route_lookup,
    reload_build
);
criterion_main!(benches);
