//! Property tests of the config loader (issue 13 item 7): no text makes
//! [`Config::parse`] panic, and an invalid file is an error that names the
//! file and, where the text has a place for it, a line and column inside it.
//!
//! The documents are made from the real schema (`config/limpet.toml`): its
//! tables and keys with values of the right type and of the wrong one, next
//! to unknown tables and keys and lines of noise. No value names a host but
//! `localhost`, so nothing is looked up in DNS, and no secret or certificate
//! path exists.

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::string::{string_regex, RegexGeneratorStrategy};

use super::*;

/// A strategy for strings matching `pattern`, parsed once (a `&str` strategy
/// parses its pattern again for every value).
fn re(pattern: &str) -> RegexGeneratorStrategy<String> {
    string_regex(pattern).expect("a valid pattern")
}

const FILE: &str = "gen.toml";

/// A TOML basic string holding `text`.
fn quoted(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn strings(options: &'static [&'static str]) -> BoxedStrategy<String> {
    prop::sample::select(options).prop_map(quoted).boxed()
}

/// One of `good`; unless `clean`, sometimes one of `bad`.
fn mostly(
    clean: bool,
    good: &'static [&'static str],
    bad: &'static [&'static str],
) -> BoxedStrategy<String> {
    match clean {
        true => strings(good),
        false => prop_oneof![4 => strings(good), 1 => strings(bad)].boxed(),
    }
}

/// Any TOML value, mostly of a type the key does not take. Its strings hold
/// no `:`, so none is a `host:port` that would be resolved.
fn any_value() -> BoxedStrategy<String> {
    let leaf = prop_oneof![
        re("[ -9;-~é]{0,12}").prop_map(|s| quoted(&s)),
        any::<i64>().prop_map(|n| n.to_string()),
        prop::sample::select(&["1.5", "-0.0", "inf", "nan", "1e400", "0x7f", "1_000"][..])
            .prop_map(String::from),
        any::<bool>().prop_map(|b| b.to_string()),
        Just("1979-05-27T07:32:00Z".to_string()),
        Just("'literal'".to_string()),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
            vec((re("[a-z_]{1,6}"), inner), 0..3).prop_map(|kv| {
                let pairs: Vec<String> = kv.iter().map(|(k, v)| format!("{k} = {v}")).collect();
                format!("{{ {} }}", pairs.join(", "))
            }),
        ]
    })
    .boxed()
}

fn address(clean: bool) -> BoxedStrategy<String> {
    mostly(
        clean,
        &[
            "127.0.0.1:8080",
            "[::1]:0",
            "0.0.0.0:9001",
            "localhost:9002",
        ],
        &[
            "127.0.0.1",
            "127.0.0.1:99999",
            ":80",
            "",
            "no-port",
            "[::1]:x",
        ],
    )
}

fn duration(clean: bool) -> BoxedStrategy<String> {
    mostly(
        clean,
        &["2s", "500ms", "1m", " 3s "],
        &[
            "0s",
            "10",
            "-1s",
            "abc",
            "1y",
            "",
            "18446744073709551616s",
            "99999999999999999999999d",
            "584942418y",
        ],
    )
}

fn secret(clean: bool) -> BoxedStrategy<String> {
    mostly(
        clean,
        &["s3cret-0123456789"],
        &[
            "",
            "env:LIMPET_PROPTEST_UNSET",
            "env:",
            "env:A=B",
            "env:A\u{0}B",
            "file:/nonexistent/limpet-secret",
            "file:",
            "file:/nonexistent/\u{0}",
        ],
    )
}

/// A count: in range for the key (`lo..=hi`); unless `clean`, sometimes 0
/// or any integer.
fn integer(clean: bool, lo: u64, hi: u64) -> BoxedStrategy<String> {
    let good = (lo..=hi).prop_map(|n| n.to_string());
    match clean {
        true => good.boxed(),
        false => prop_oneof![
            4 => good,
            1 => any::<i64>().prop_map(|n| n.to_string()),
            1 => Just("0".to_string()),
        ]
        .boxed(),
    }
}

fn boolean() -> BoxedStrategy<String> {
    any::<bool>().prop_map(|b| b.to_string()).boxed()
}

/// `Some` of `value` with probability `p` (which may be 0 or 1).
fn maybe<T: std::fmt::Debug + Clone + 'static>(
    p: f64,
    value: impl Strategy<Value = T> + 'static,
) -> BoxedStrategy<Option<T>> {
    match p {
        0.0 => Just(None).boxed(),
        1.0 => value.prop_map(Some).boxed(),
        p => prop::option::weighted(p, value).boxed(),
    }
}

/// An array of 1-2 values, or of none.
fn array(of: BoxedStrategy<String>) -> BoxedStrategy<String> {
    prop_oneof![4 => vec(of.clone(), 1..3), 1 => vec(of, 0..1)]
        .prop_map(|v| format!("[{}]", v.join(", ")))
        .boxed()
}

fn upstream_name(clean: bool) -> BoxedStrategy<String> {
    mostly(clean, &["shop", "blog"], &["app1", ""])
}

fn backend_name(clean: bool) -> BoxedStrategy<String> {
    mostly(clean, &["app1", "app2", "app3"], &["app9", ""])
}

/// The keys of the schema's table `table`, each with values of its type
/// (most of them valid).
fn keys(table: &str, clean: bool) -> Vec<(&'static str, BoxedStrategy<String>)> {
    let m = |good, bad| mostly(clean, good, bad);
    match table {
        "listen" => vec![
            ("http", array(address(clean))),
            ("https", array(address(clean))),
        ],
        "tls" => vec![(
            "certs",
            array(
                strings(&["/nonexistent/site.pem", ""])
                    .prop_map(|p| format!("{{ cert = {p}, key = {p} }}"))
                    .boxed(),
            ),
        )],
        "admin" => vec![("listen", address(clean)), ("token", secret(clean))],
        "timeouts" => [
            "client_header",
            "client_idle",
            "upstream_connect",
            "upstream_response",
            "shutdown_grace",
        ]
        .into_iter()
        .map(|k| (k, duration(clean)))
        .collect(),
        "limits" => vec![
            ("max_connections", integer(clean, 1, 100_000)),
            ("max_header_bytes", integer(clean, 8192, 100_000)),
        ],
        "runtime" => vec![("worker_threads", integer(clean, 0, 4))],
        "route" => vec![
            (
                "host",
                m(&["shop.example", "*.example"], &["*.", "a b", "*", "x/y"]),
            ),
            ("path_prefix", m(&["/", "/api"], &["api", ""])),
            ("upstream", upstream_name(clean)),
        ],
        "upstream" => vec![
            (
                "affinity",
                m(&["cookie", "ip-hash", "app-cookie", "none"], &["sticky"]),
            ),
            (
                "balance",
                m(
                    &["least-requests", "round-robin", "random", "least-sessions"],
                    &["best"],
                ),
            ),
            ("failover", m(&["replica", "rebalance", "reject"], &["no"])),
            ("retries", integer(clean, 0, 3)),
            (
                "session_window",
                m(&["10m", "8s", "1h"], &["7s", "0s", "abc"]),
            ),
        ],
        "cookie" => vec![
            ("name", m(&["limpet"], &["", "a b", "sid;"])),
            ("secret", secret(clean)),
            ("previous_secrets", array(secret(clean))),
            ("path", m(&["/"], &[""])),
            ("max_age", duration(clean)),
            ("max_lifetime", duration(clean)),
            ("max_idle", m(&["0s", "2s", "30m"], &["1s", "500ms", "abc"])),
            (
                "secure",
                prop_oneof![boolean(), m(&["auto"], &["yes"])].boxed(),
            ),
            ("http_only", boolean()),
            ("same_site", m(&["lax", "strict", "none"], &["always"])),
        ],
        "ip_hash" => vec![(
            "trusted_proxies",
            array(m(&["10.0.0.0/8", "::1/128"], &["10.0.0.0/33", "bad", ""])),
        )],
        "app_cookie" => vec![
            ("name", m(&["JSESSIONID"], &[""])),
            ("separator", m(&["."], &[""])),
            ("secondary_separator", m(&["!"], &[""])),
        ],
        "health" => vec![
            ("path", m(&["/health"], &["health", ""])),
            ("interval", duration(clean)),
            ("timeout", duration(clean)),
            ("rise", integer(clean, 1, 5)),
            ("fall", integer(clean, 1, 5)),
            (
                "expect",
                m(
                    &["200-399", "200", "200,204,300-399"],
                    &["99", "600-100", "-", ","],
                ),
            ),
            ("passive_fall", integer(clean, 1, 5)),
            ("slow_start", duration(clean)),
        ],
        "backend" => vec![
            ("name", backend_name(clean)),
            ("addr", address(clean)),
            ("replica", backend_name(clean)),
            ("weight", integer(clean, 1, 10_000)),
            ("route", backend_name(clean)),
        ],
        _ => vec![],
    }
}

/// The lines of one table: each key of the schema at most once (the ones a
/// table needs mostly there), with a value of its type or now and then any
/// value, and now and then an unknown key.
fn lines(table: &'static str, clean: bool) -> BoxedStrategy<String> {
    let required = ["name", "addr", "upstream", "listen", "certs", "http"];
    let unknown = if clean { 0.0 } else { 0.05 };
    let known: Vec<BoxedStrategy<Option<String>>> = keys(table, clean)
        .into_iter()
        .map(|(key, good)| {
            let present = match key {
                _ if required.contains(&key) && clean => 1.0,
                _ if required.contains(&key) => 0.9,
                "https" | "replica" | "route" => 0.1,
                _ => 0.4,
            };
            let value = match clean {
                true => good,
                false => prop_oneof![12 => good, 1 => any_value()].boxed(),
            };
            maybe(present, value.prop_map(move |v| format!("{key} = {v}"))).boxed()
        })
        .collect();
    let unknown = maybe(
        unknown,
        (re("[a-z_]{1,10}"), any_value()).prop_map(|(k, v)| format!("{k}_x = {v}")),
    );
    (known, unknown)
        .prop_map(|(known, unknown)| {
            let lines: Vec<String> = known.into_iter().chain([unknown]).flatten().collect();
            lines.join("\n")
        })
        .boxed()
}

/// A document: the schema's tables (each at most once, arrays of tables up
/// to four times) in any order; unless `clean`, an unknown table now and then
/// and rarely a line of noise.
fn document(clean: bool) -> impl Strategy<Value = String> {
    let rare = if clean { 0.0 } else { 0.03 };
    let tables: &[(&'static str, &'static str, f64)] = &[
        ("[listen]", "listen", 0.95),
        ("[tls]", "tls", 0.1),
        ("[admin]", "admin", 0.3),
        ("[timeouts]", "timeouts", 0.3),
        ("[limits]", "limits", 0.3),
        ("[runtime]", "runtime", 0.2),
        ("[upstream.shop]", "upstream", 0.5),
        ("[upstream.blog]", "upstream", 0.1),
        ("[upstream.shop.cookie]", "cookie", 0.4),
        ("[upstream.shop.ip_hash]", "ip_hash", 0.2),
        ("[upstream.shop.app_cookie]", "app_cookie", 0.2),
        ("[upstream.shop.health]", "health", 0.4),
        ("[bogus]", "bogus", rare),
        ("[upstream.shop.bogus]", "bogus", rare),
    ];
    let arrays: &[(&str, &'static str, usize)] = &[
        ("[[route]]", "route", 2),
        ("[[upstream.shop.backend]]", "backend", 3),
        ("[[upstream.blog.backend]]", "backend", 1),
    ];
    let mut sections: Vec<BoxedStrategy<Vec<String>>> = Vec::new();
    for &(header, table, p) in tables {
        let section = lines(table, clean).prop_map(move |l| format!("{header}\n{l}\n"));
        sections.push(
            maybe(p, section)
                .prop_map(|s| s.into_iter().collect())
                .boxed(),
        );
    }
    for &(header, table, most) in arrays {
        let section = lines(table, clean).prop_map(move |l| format!("{header}\n{l}\n"));
        sections.push(vec(section, 0..=most).boxed());
    }
    let noise = maybe(rare, re("[ -9;-~]{0,20}\n"));
    (sections, noise)
        .prop_flat_map(|(sections, noise)| {
            let parts: Vec<String> = sections.into_iter().flatten().chain(noise).collect();
            Just(parts).prop_shuffle()
        })
        .prop_map(|parts| parts.concat())
}

/// The checks every outcome of [`Config::parse`] passes: an error names the
/// file, and its line and column (when it has them) are inside the text.
fn check(text: &str, result: Result<Config, ConfigError>) -> Result<(), TestCaseError> {
    let Err(e) = result else {
        return Ok(());
    };
    prop_assert_eq!(&e.file, FILE);
    let shown = e.to_string();
    let named = format!("{FILE}:");
    prop_assert!(shown.starts_with(&named), "{}", shown);
    prop_assert!(
        !e.message.is_empty() && !e.message.contains('\n'),
        "{}",
        shown
    );
    if let Some((line, col)) = e.position {
        let lines: Vec<&str> = text.split('\n').collect();
        prop_assert!(line >= 1 && line <= lines.len(), "{}", shown);
        prop_assert!(
            col >= 1 && col <= lines[line - 1].chars().count() + 1,
            "{}",
            shown
        );
        let place = format!("{FILE}:{line}:{col}: ");
        prop_assert!(shown.starts_with(&place), "{}", shown);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Any text, and text made of TOML's punctuation: no panic, and an error
    /// that names the file (and a place inside the text, when it has one).
    #[test]
    fn any_text_is_refused_without_panic(
        text in prop_oneof![re("(?s).{0,200}"), re("[\\[\\]={},.\"'#a-z0-9 \n\\\\-]{0,200}")],
    ) {
        let result = Config::parse(&text, FILE);
        check(&text, result)?;
    }

    /// Documents of the schema's tables and keys, valid and invalid values,
    /// unknown tables and keys: no panic, and an error names the file and,
    /// for a document that has a place for it, a line and column.
    #[test]
    fn schema_documents_load_or_name_the_place(
        text in prop_oneof![document(true), document(false)],
    ) {
        let result = Config::parse(&text, FILE);
        if let Err(e) = &result {
            // What is missing altogether has no place in the text.
            let whole_file = e.message.starts_with("listen: no listener")
                || e.message.starts_with("upstream: no upstream");
            prop_assert!(e.position.is_some() || whole_file, "{}\n{}", e, text);
        }
        check(&text, result)?;
    }
}
