//! (host, path) -> upstream: the first `[[route]]` whose host and path prefix match.
//! Pure and table-tested.
//!
//! "First" is the rule's position in the file. Up to [`SCAN_MAX`] rules are
//! scanned in order (the fastest for the few routes most configs have); beyond
//! that they are indexed by host (exact hosts in a hash map, `*.domain`
//! wildcards in a second map keyed by the suffix, and the rules for any host),
//! and within a host by path prefix (a map per host, probed only at the request
//! path's segment boundaries whose length some prefix has). A request then
//! looks up its host, each of its parent domains, and the any-host rules, and
//! takes the lowest position among the matches, so its cost depends on the
//! request's host and path, not on the number of routes (criterion:
//! bench/RESULTS.md). Both ways give the same answer (`router/proptests.rs`).

use ahash::AHashMap;

use crate::config::Route;

/// The most rules scanned in order; more are indexed.
pub const SCAN_MAX: usize = 16;

#[derive(Debug)]
enum HostMatch {
    Any,
    Exact(String),
    /// `*.example.com`, stored as `.example.com`: any subdomain depth, not the apex.
    Suffix(String),
}

#[derive(Debug)]
struct Rule {
    host: HostMatch,
    /// Without a trailing slash; empty matches everything.
    prefix: String,
    upstream: usize,
    redirect_https: bool,
    hsts: Option<String>,
}

/// What a request matched.
#[derive(Debug, Clone, Copy)]
pub struct Routed<'r> {
    pub upstream: usize,
    /// Plain-HTTP requests are redirected to https.
    pub redirect_https: bool,
    /// The `Strict-Transport-Security` value for responses over TLS.
    pub hsts: Option<&'r str>,
}

/// The route table of one snapshot.
#[derive(Debug)]
pub struct Router {
    /// In file order: a rule's index is its precedence (lower wins).
    rules: Vec<Rule>,
    /// Present beyond [`SCAN_MAX`] rules.
    index: Option<Index>,
}

/// The rules by host, then by path prefix; values are positions in `rules`.
#[derive(Debug)]
struct Index {
    /// Exact host (lower-cased) -> its rules by prefix.
    exact: AHashMap<Box<str>, Prefixes>,
    /// `*.example.com`, keyed `.example.com`: any subdomain depth, not the apex.
    wildcard: AHashMap<Box<str>, Prefixes>,
    /// Wildcards whose suffix does not start with a dot (`*example.com`, `*`):
    /// validation refuses them, but a `Route` built in code may have one. Matched
    /// by scanning, like the old router did.
    other_wildcards: Vec<(Box<str>, Prefixes)>,
    /// Rules without a host.
    any_host: Option<Prefixes>,
}

impl Router {
    /// `upstream_index` maps an upstream name to its index in the snapshot; a route
    /// to an unknown upstream never matches.
    pub fn new(routes: &[Route], upstream_index: impl Fn(&str) -> Option<usize>) -> Router {
        Router::with_scan_max(routes, upstream_index, SCAN_MAX)
    }

    /// As [`Router::new`], indexing beyond `scan_max` rules (tests use both ways).
    fn with_scan_max(
        routes: &[Route],
        upstream_index: impl Fn(&str) -> Option<usize>,
        scan_max: usize,
    ) -> Router {
        let mut rules: Vec<Rule> = routes
            .iter()
            .filter_map(|r| {
                let host = match r.host.as_deref().map(str::to_ascii_lowercase) {
                    None => HostMatch::Any,
                    Some(h) => match h.strip_prefix('*') {
                        Some(suffix) => HostMatch::Suffix(suffix.to_string()),
                        None => HostMatch::Exact(h),
                    },
                };
                let prefix = r
                    .path_prefix
                    .as_deref()
                    .unwrap_or("")
                    .trim_end_matches('/')
                    .to_string();
                Some(Rule {
                    host,
                    prefix,
                    upstream: upstream_index(&r.upstream)?,
                    redirect_https: r.redirect_https,
                    hsts: r.hsts.clone(),
                })
            })
            .collect();
        if routes.is_empty() {
            // No routes and one upstream: everything goes there.
            rules.push(Rule {
                host: HostMatch::Any,
                prefix: String::new(),
                upstream: 0,
                redirect_https: false,
                hsts: None,
            });
        }
        let index = (rules.len() > scan_max).then(|| Index::new(&rules));
        Router { rules, index }
    }

    /// The upstream for a request, or `None` (404). `host` may carry a port.
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<usize> {
        self.find(host, path).map(|r| r.upstream)
    }

    /// The route a request matches, or `None` (404). `host` may carry a port.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<Routed<'_>> {
        let host = host.map(crate::uri::bare_host);
        let rule = match &self.index {
            Some(index) => &self.rules[index.find(host, path)?],
            None => self
                .rules
                .iter()
                .find(|r| host_matches(&r.host, host) && path_matches(&r.prefix, path))?,
        };
        Some(Routed {
            upstream: rule.upstream,
            redirect_https: rule.redirect_https,
            hsts: rule.hsts.as_deref(),
        })
    }
}

impl Index {
    fn new(rules: &[Rule]) -> Index {
        let mut exact: AHashMap<Box<str>, Entries> = AHashMap::new();
        let mut wildcard: AHashMap<Box<str>, Entries> = AHashMap::new();
        let mut other_wildcards: Vec<(Box<str>, Entries)> = Vec::new();
        let mut any_host = Vec::new();
        for (position, rule) in rules.iter().enumerate() {
            let entry = (rule.prefix.as_str(), position);
            match &rule.host {
                HostMatch::Any => any_host.push(entry),
                HostMatch::Exact(h) => exact.entry(h.as_str().into()).or_default().push(entry),
                HostMatch::Suffix(s) if s.starts_with('.') => {
                    wildcard.entry(s.as_str().into()).or_default().push(entry)
                }
                HostMatch::Suffix(s) => match other_wildcards.iter_mut().find(|w| *w.0 == **s) {
                    Some(w) => w.1.push(entry),
                    None => other_wildcards.push((s.as_str().into(), vec![entry])),
                },
            }
        }
        let index = |m: AHashMap<Box<str>, Entries>| {
            m.into_iter()
                .map(|(host, rules)| (host, Prefixes::new(&rules)))
                .collect()
        };
        Index {
            exact: index(exact),
            wildcard: index(wildcard),
            other_wildcards: other_wildcards
                .into_iter()
                .map(|(suffix, rules)| (suffix, Prefixes::new(&rules)))
                .collect(),
            any_host: (!any_host.is_empty()).then(|| Prefixes::new(&any_host)),
        }
    }

    /// The position of the first rule matching; `host` without port or trailing dot.
    fn find(&self, host: Option<&str>, path: &str) -> Option<usize> {
        let mut best = Best(None);
        if let Some(host) = host {
            if host.bytes().any(|b| b.is_ascii_uppercase()) {
                self.find_by_host(&host.to_ascii_lowercase(), path, &mut best);
            } else {
                self.find_by_host(host, path, &mut best);
            }
        }
        if let Some(any) = &self.any_host {
            best.offer(any, path);
        }
        best.0
    }

    /// The rules for `host` (lower-case, without port or trailing dot): exact,
    /// then the wildcard of each parent domain.
    fn find_by_host(&self, host: &str, path: &str, best: &mut Best) {
        if let Some(p) = self.exact.get(host) {
            best.offer(p, path);
        }
        if !self.wildcard.is_empty() {
            // ".b.example.com", ".example.com", ".com" for a.b.example.com.
            for (i, _) in host.match_indices('.').filter(|&(i, _)| i > 0) {
                if let Some(p) = self.wildcard.get(&host[i..]) {
                    best.offer(p, path);
                }
            }
        }
        for (suffix, p) in &self.other_wildcards {
            if host.len() > suffix.len() && host.ends_with(&**suffix) {
                best.offer(p, path);
            }
        }
    }
}

/// A host's (path prefix, rule position) pairs in file order, while building.
type Entries<'r> = Vec<(&'r str, usize)>;

/// The lowest rule position matched so far.
struct Best(Option<usize>);

impl Best {
    fn offer(&mut self, prefixes: &Prefixes, path: &str) {
        if self.0.is_some_and(|b| b <= prefixes.first()) {
            return; // nothing here can come earlier
        }
        if let Some(found) = prefixes.find(path) {
            self.0 = Some(self.0.map_or(found, |b| b.min(found)));
        }
    }
}

/// The rules of one host, by path prefix (without a trailing slash; empty
/// matches every path).
#[derive(Debug)]
enum Prefixes {
    /// The common case: one prefix (often the empty one).
    One { prefix: Box<str>, rule: usize },
    Many {
        /// The rule of the empty prefix, kept out of the map (see [`path_matches`]).
        empty: Option<usize>,
        /// The first rule of each non-empty prefix.
        by_prefix: AHashMap<Box<str>, usize>,
        /// `lengths[n]`: some prefix is `n` bytes long.
        lengths: Vec<bool>,
        first: usize,
    },
}

impl Prefixes {
    /// From (prefix, position) pairs in file order: a repeated prefix keeps its first rule.
    fn new(rules: &[(&str, usize)]) -> Prefixes {
        if let [(prefix, rule)] = rules {
            return Prefixes::One {
                prefix: (*prefix).into(),
                rule: *rule,
            };
        }
        let mut empty = None;
        let mut by_prefix = AHashMap::new();
        let mut lengths = Vec::new();
        for &(prefix, rule) in rules {
            if prefix.is_empty() {
                empty = empty.or(Some(rule));
                continue;
            }
            by_prefix.entry(prefix.into()).or_insert(rule);
            if lengths.len() <= prefix.len() {
                lengths.resize(prefix.len() + 1, false);
            }
            lengths[prefix.len()] = true;
        }
        Prefixes::Many {
            empty,
            by_prefix,
            lengths,
            first: rules.iter().map(|r| r.1).min().unwrap_or(usize::MAX),
        }
    }

    fn first(&self) -> usize {
        match self {
            Prefixes::One { rule, .. } => *rule,
            Prefixes::Many { first, .. } => *first,
        }
    }

    /// The first rule whose prefix matches `path`.
    fn find(&self, path: &str) -> Option<usize> {
        match self {
            Prefixes::One { prefix, rule } => path_matches(prefix, path).then_some(*rule),
            Prefixes::Many {
                empty,
                by_prefix,
                lengths,
                ..
            } => {
                let mut best = empty.filter(|_| path_matches("", path));
                let bytes = path.as_bytes();
                for len in (1..lengths.len().min(bytes.len() + 1)).filter(|&n| lengths[n]) {
                    if len == bytes.len() || is_boundary(bytes[len]) {
                        // `len` is a char boundary: the byte there is ASCII, or the end.
                        if let Some(&rule) = by_prefix.get(&path[..len]) {
                            best = Some(best.map_or(rule, |b: usize| b.min(rule)));
                        }
                    }
                }
                best
            }
        }
    }
}

/// `host` without port or trailing dot.
fn host_matches(rule: &HostMatch, host: Option<&str>) -> bool {
    match (rule, host) {
        (HostMatch::Any, _) => true,
        (_, None) => false,
        (HostMatch::Exact(want), Some(h)) => h.eq_ignore_ascii_case(want),
        (HostMatch::Suffix(suffix), Some(h)) => {
            h.len() > suffix.len()
                && h.is_char_boundary(h.len() - suffix.len())
                && h[h.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
        }
    }
}

/// Whole segments: "/api" matches /api, /api/, /api/x, not /apix.
fn path_matches(prefix: &str, path: &str) -> bool {
    // An empty prefix (the catch-all "/") skips strip_prefix: comparing with an
    // empty string costs ~90 ns on this machine, as glibc's AVX-512 memcmp does a
    // masked load from the empty string's dangling pointer (a microcode assist).
    let rest = if prefix.is_empty() {
        path
    } else {
        match path.strip_prefix(prefix) {
            Some(rest) => rest,
            None => return false,
        }
    };
    rest.bytes().next().is_none_or(is_boundary)
}

/// A byte that may follow a matching prefix.
fn is_boundary(b: u8) -> bool {
    matches!(b, b'/' | b'?' | b';')
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn route(host: Option<&str>, prefix: Option<&str>, upstream: &str) -> Route {
        Route {
            host: host.map(str::to_string),
            path_prefix: prefix.map(str::to_string),
            upstream: upstream.to_string(),
            redirect_https: false,
            hsts: None,
        }
    }

    #[test]
    fn table() {
        let names = ["shop", "api", "wild", "fallback"];
        let router = Router::new(
            &[
                route(Some("shop.example.com"), None, "shop"),
                route(None, Some("/api"), "api"),
                route(Some("*.example.com"), Some("/"), "wild"),
                route(Some("other.org"), Some("/"), "fallback"),
            ],
            |n| names.iter().position(|x| *x == n),
        );
        let cases: &[(Option<&str>, &str, Option<usize>)] = &[
            (Some("shop.example.com"), "/", Some(0)),
            (Some("SHOP.Example.COM:8080"), "/cart", Some(0)),
            (Some("x.org"), "/api", Some(1)),
            (Some("x.org"), "/api/", Some(1)),
            (Some("x.org"), "/api/v1?q", Some(1)),
            (Some("x.org"), "/apix", None),
            (Some("a.example.com"), "/", Some(2)),
            (Some("a.b.example.com"), "/z", Some(2)),
            (Some("example.com"), "/", None),
            (Some("other.org"), "/anything", Some(3)),
            (None, "/", None),
            (Some("[::1]:80"), "/api", Some(1)),
        ];
        for (host, path, want) in cases {
            assert_eq!(router.route(*host, path), *want, "{host:?} {path}");
        }
    }

    #[test]
    fn no_routes_means_the_single_upstream() {
        let router = Router::new(&[], |_| Some(0));
        assert_eq!(router.route(None, "/x"), Some(0));
    }
}

#[cfg(test)]
mod proptests;
