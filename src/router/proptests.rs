//! The router, scanning and indexed, against the rule it implements, written
//! as the scan of earlier versions: the first route in file order whose host
//! and path prefix match. Routes and
//! requests come from small alphabets so that hosts, wildcards and prefixes
//! overlap and shadow each other often; large tables check precedence at scale.

use proptest::prelude::*;

use super::tests::route;
use super::*;

/// The old router: every rule in order.
fn scan(routes: &[Route], names: &[&str], host: Option<&str>, path: &str) -> Option<usize> {
    let host = host.map(crate::uri::bare_host);
    routes
        .iter()
        .filter(|r| names.contains(&r.upstream.as_str()))
        .find(|r| host_matches(r.host.as_deref(), host) && scan_path(r, path))
        .map(|r| names.iter().position(|n| *n == r.upstream).unwrap())
}

fn host_matches(rule: Option<&str>, host: Option<&str>) -> bool {
    match (rule, host) {
        (None, _) => true,
        (_, None) => false,
        (Some(rule), Some(h)) => match rule.strip_prefix('*') {
            None => h.eq_ignore_ascii_case(rule),
            Some(suffix) => {
                h.len() > suffix.len()
                    && h.is_char_boundary(h.len() - suffix.len())
                    && h[h.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }
        },
    }
}

fn scan_path(r: &Route, path: &str) -> bool {
    let prefix = r.path_prefix.as_deref().unwrap_or("").trim_end_matches('/');
    match path.strip_prefix(prefix) {
        Some(rest) => {
            rest.is_empty()
                || rest.starts_with('/')
                || rest.starts_with('?')
                || rest.starts_with(';')
        }
        None => false,
    }
}

const NAMES: [&str; 3] = ["u0", "u1", "u2"];

fn index(name: &str) -> Option<usize> {
    NAMES.iter().position(|n| *n == name)
}

fn arb_route() -> impl Strategy<Value = Route> {
    let hosts = prop::sample::select(vec![
        None,
        Some("a.com"),
        Some("b.a.com"),
        Some("*.a.com"),
        Some("*.b.a.com"),
        Some("*.com"),
        Some("A.Com"),
        Some("*a.com"),
        Some("*"),
        Some("é.a.com"),
    ]);
    let prefixes = prop::sample::select(vec![
        None,
        Some("/"),
        Some("/x"),
        Some("/x/"),
        Some("/x/y"),
        Some("/xy"),
        Some("/x;a"),
        Some("/x?q"),
        Some("/é"),
    ]);
    let upstreams = prop::sample::select(vec!["u0", "u1", "u2", "unknown"]);
    (hosts, prefixes, upstreams).prop_map(|(h, p, u)| route(h, p, u))
}

const HOSTS: [Option<&str>; 14] = [
    None,
    Some("a.com"),
    Some("A.COM:80"),
    Some("b.a.com"),
    Some("c.b.a.com"),
    Some("C.B.A.Com."),
    Some("x.com."),
    Some("com"),
    Some(""),
    Some("[::1]:8080"),
    Some("ba.com"),
    Some(".a.com"),
    Some("é.a.com"),
    Some("É.a.com"),
];

const PATHS: [&str; 14] = [
    "",
    "/",
    "/x",
    "/x/",
    "/x/y/z",
    "/xy",
    "/x?q=1",
    "/x;jsessionid=1",
    "x",
    "/x/y?z",
    "/x;a/b",
    "/x?q",
    "/é/",
    "/éa",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_index_finds_the_first_matching_route(
        routes in proptest::collection::vec(arb_route(), 0..24),
    ) {
        let scanned = Router::with_scan_max(&routes, index, usize::MAX);
        let indexed = Router::with_scan_max(&routes, index, 0);
        for host in HOSTS {
            for path in PATHS {
                // No routes is one route to the only upstream.
                let reference = if routes.is_empty() { vec![route(None, None, "u0")] } else { routes.clone() };
                let want = scan(&reference, &NAMES, host, path);
                prop_assert_eq!(scanned.route(host, path), want, "scan: {:?} {:?} in {:?}", host, path, routes);
                prop_assert_eq!(indexed.route(host, path), want, "index: {:?} {:?} in {:?}", host, path, routes);
            }
        }
    }
}

/// 10,000 routes: exact hosts, wildcards and prefixes, each shadowed or not by
/// rules before it; the answer is always the first match in file order.
#[test]
fn precedence_holds_in_a_large_table() {
    let mut routes = Vec::new();
    // 0: a wildcard before the exact hosts it covers: it wins for them.
    routes.push(route(Some("*.early.com"), None, "u0"));
    for i in 0..2_500 {
        routes.push(route(Some(&format!("h{i}.early.com")), None, "u1"));
        routes.push(route(Some(&format!("h{i}.late.com")), Some("/api"), "u1"));
        routes.push(route(None, Some(&format!("/p{i}")), "u2"));
        routes.push(route(Some(&format!("*.t{i}.net")), Some("/"), "u2"));
    }
    // After the exact hosts: a wildcard they shadow, and a prefix that the
    // any-host prefix rules shadow only where they are the same path.
    routes.push(route(Some("*.late.com"), None, "u0"));
    routes.push(route(Some("h7.late.com"), Some("/p7"), "u0"));
    routes.push(route(None, Some("/"), "u0"));
    let router = Router::new(&routes, index);
    assert!(router.index.is_some());
    let cases: &[(Option<&str>, &str)] = &[
        (Some("h5.early.com"), "/"),
        (Some("h5.late.com"), "/api/x"),
        (Some("h5.late.com"), "/other"),
        (Some("H7.LATE.com:8080"), "/p7/x"),
        (Some("h7.late.com"), "/p70"),
        (Some("h2499.late.com"), "/api"),
        (Some("www.t1234.net"), "/p1234"),
        (Some("www.t1234.net"), "/p99999"),
        (Some("a.b.t0.net"), "/"),
        (Some("t0.net"), "/"),
        (None, "/p2499?x"),
        (None, "/p2500"),
        (Some("x.org"), "/p0;jsessionid=1"),
    ];
    for &(host, path) in cases {
        assert_eq!(
            router.route(host, path),
            scan(&routes, &NAMES, host, path),
            "{host:?} {path}"
        );
    }
    // Spot checks of what the scan says, so the test states the precedence too.
    assert_eq!(router.route(Some("h5.early.com"), "/"), Some(0));
    assert_eq!(router.route(Some("h5.late.com"), "/api/x"), Some(1));
    assert_eq!(router.route(Some("h5.late.com"), "/other"), Some(0));
    assert_eq!(router.route(Some("h7.late.com"), "/p7/x"), Some(2));
    assert_eq!(router.route(Some("www.t1234.net"), "/p99999"), Some(2));
    assert_eq!(router.route(Some("t0.net"), "/"), Some(0));
}
