//! Property tests of the head parsers and the request writer (issue 13 item
//! 7): no bytes make them panic, every head from a grammar of valid requests
//! parses, and what `write_request` sends a backend parses again as the same
//! request.

use std::net::IpAddr;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::string::{string_regex, RegexGeneratorStrategy};

use super::*;

/// A strategy for strings matching `pattern`, parsed once (a `&str` strategy
/// parses its pattern again for every value).
fn re(pattern: &str) -> RegexGeneratorStrategy<String> {
    string_regex(pattern).expect("a valid pattern")
}

/// A request head the grammar made, and what the parser must find in it.
#[derive(Debug, Clone)]
struct Grammar {
    head: Vec<u8>,
    method: String,
    /// The host it is routed by: the absolute-form authority, else Host.
    host: String,
    body: RequestBody,
}

/// One field line of a generated head.
type Line = (String, Vec<u8>);

fn method() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(&["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"][..])
            .prop_map(String::from),
        re("[A-Za-z0-9!#$%&'*+.^_`|~-]{1,10}"),
    ]
}

/// A Host or authority as `policy::is_authority` takes it: a name (any
/// reg-name characters, percent-escapes) or an IPv6 literal, and a port.
fn authority() -> impl Strategy<Value = String> {
    prop_oneof![
        re("[a-z0-9][a-z0-9.-]{0,15}(:[0-9]{1,4})?"),
        re("[A-Za-z0-9._~!$&'()*+,;=-]{1,20}(%[0-9A-Fa-f]{2})?(:[0-9]{0,4})?"),
        re("\\[(::1|2001:db8::[0-9a-f]{1,4}|fe80::1)\\](:[0-9]{1,4})?"),
    ]
}

/// The characters of a target: visible ASCII but those URIs may not have
/// (`policy::is_target_text`), and raw UTF-8.
const TARGET_CHARS: &str = "[-A-Za-z0-9._~!$&'()*+,;=:@/?%\\[\\]é€]";

/// Origin-form (path and query) or absolute-form, and the authority of the
/// latter.
fn target() -> impl Strategy<Value = (String, Option<String>)> {
    let origin = re(&format!("/{TARGET_CHARS}{{0,24}}"));
    prop_oneof![
        3 => origin.prop_map(|o| (o, None)),
        1 => (
            prop::sample::select(&["http://", "https://", "HTTP://", "hTTpS://"][..]),
            authority(),
            prop_oneof![Just(String::new()), re(&format!("[/?]{TARGET_CHARS}{{0,16}}"))],
        )
            .prop_map(|(scheme, a, rest)| (format!("{scheme}{a}{rest}"), Some(a))),
    ]
}

/// A field value as it arrives: visible ASCII, spaces, tabs and obs-text,
/// without the surrounding whitespace httparse trims.
fn value() -> impl Strategy<Value = Vec<u8>> {
    vec(
        prop_oneof![8 => 0x21u8..=0x7e, 1 => Just(b' '), 1 => Just(b'\t'), 1 => 0x80u8..=0xff],
        0..24,
    )
    .prop_map(|v| v.trim_ascii().to_vec())
}

fn cookie_value() -> impl Strategy<Value = Vec<u8>> {
    let pair = prop_oneof![
        re("[a-zA-Z_]{1,6}=[!-:<-~]{0,8}"),
        re("limpet=[A-Za-z0-9_-]{0,12}"),
        Just(String::new()),
        Just(" ".to_string()),
    ];
    (vec(pair, 1..5), prop::bool::ANY).prop_map(|(pairs, spaced)| {
        let sep = if spaced { "; " } else { ";" };
        pairs.join(sep).trim().as_bytes().to_vec()
    })
}

fn name_case(name: &'static str) -> impl Strategy<Value = String> {
    prop_oneof![
        Just(name.to_string()),
        Just(name.to_ascii_uppercase()),
        Just(name.to_ascii_lowercase()),
    ]
}

/// A field the policy passes, drops or reads, never one that changes how the
/// request is framed (those come from [`grammar`]).
fn field() -> impl Strategy<Value = Line> {
    let hop_by_hop = prop::sample::select(
        &[
            "Keep-Alive",
            "TE",
            "Trailer",
            "Proxy-Connection",
            "Proxy-Authorization",
            "X-Forwarded-Host",
            "X-Forwarded-Proto",
            "x-limpet-failover-from",
            "Content_Length",
            "Transfer_Encoding",
        ][..],
    );
    prop_oneof![
        6 => (re("[xX]-[A-Za-z0-9!#$%&'*+.^_`|~-]{1,12}"), value()),
        2 => (name_case("Cookie"), cookie_value()),
        1 => (hop_by_hop.prop_map(String::from), value()),
        1 => (name_case("X-Forwarded-For"), re("[0-9a-f.:, ]{0,20}").prop_map(String::into_bytes)),
        1 => (name_case("Upgrade"), Just(b"websocket".to_vec())),
        1 => (name_case("Expect"), Just(b"100-continue".to_vec())),
        1 => (
            name_case("Connection"),
            vec(
                prop_oneof![
                    Just("close".to_string()),
                    Just("Keep-Alive".to_string()),
                    Just("upgrade".to_string()),
                    Just("x-a".to_string()),
                    re("[xX]-[a-z]{1,2}"),
                ],
                0..4
            )
            .prop_map(|t| t.join(", ").into_bytes())
        ),
    ]
}

/// Heads of valid requests: a method, an origin-form or absolute-form target,
/// one Host and 0-19 more fields in any order (Cookie, Content-Length,
/// Transfer-Encoding: chunked, Connection tokens, hop-by-hop and plain ones).
fn grammar() -> impl Strategy<Value = Grammar> {
    let body = prop_oneof![
        Just(None),
        (re("0{0,3}[0-9]{1,15}"), 1..3usize).prop_map(|(n, copies)| Some((n, copies))),
        Just(Some((String::new(), 0))),
    ];
    (
        method(),
        target(),
        prop::bool::weighted(0.2),
        (name_case("Host"), authority()),
        vec(field(), 0..17),
        body,
        re("(, ?)?(chunked|Chunked|CHUNKED)( ?,)?"),
    )
        .prop_flat_map(
            |(method, (target, absolute), http10, host, fields, body, te)| {
                let mut lines: Vec<Line> = fields;
                let mut framing = RequestBody::None;
                match body {
                    // Transfer-Encoding is HTTP/1.1's.
                    Some((_, 0)) if !http10 => {
                        lines.push(("Transfer-Encoding".into(), te.into_bytes()));
                        framing = RequestBody::Chunked;
                    }
                    Some((n, copies)) if copies > 0 => {
                        for _ in 0..copies {
                            lines.push(("Content-Length".into(), n.clone().into_bytes()));
                        }
                        framing = match n.parse::<u64>() {
                            Ok(0) | Err(_) => RequestBody::None,
                            Ok(n) => RequestBody::Length(n),
                        };
                    }
                    _ => {}
                }
                let routed = absolute.unwrap_or_else(|| host.1.clone());
                lines.push((host.0, host.1.into_bytes()));
                (
                    Just(lines).prop_shuffle(),
                    Just((method, target, http10, routed, framing)),
                )
            },
        )
        .prop_map(|(lines, (method, target, http10, host, body))| {
            let version = if http10 { "HTTP/1.0" } else { "HTTP/1.1" };
            let mut head = format!("{method} {target} {version}\r\n").into_bytes();
            for (name, value) in &lines {
                head.extend_from_slice(name.as_bytes());
                head.extend_from_slice(b": ");
                head.extend_from_slice(value);
                head.extend_from_slice(b"\r\n");
            }
            head.extend_from_slice(b"\r\n");
            Grammar {
                head,
                method,
                host,
                body,
            }
        })
}

fn forwarding() -> impl Strategy<Value = (Option<&'static str>, IpAddr, bool, Option<&'static str>)>
{
    (
        prop::option::of(Just("limpet")),
        any::<IpAddr>(),
        any::<bool>(),
        prop::option::of(Just("app1")),
    )
}

/// The fields of `kind`, as (name, value) bytes, in order.
fn of_kind<'b>(buf: &'b [u8], head: &RequestHead, kind: Field) -> Vec<(&'b [u8], &'b [u8])> {
    head.fields
        .iter()
        .filter(|f| f.kind == kind)
        .map(|f| (&buf[f.name.clone()], &buf[f.value.clone()]))
        .collect()
}

/// The cookie pairs of every Cookie field, trimmed, but limpet's own.
fn cookie_pairs<'b>(buf: &'b [u8], head: &RequestHead, strip: Option<&str>) -> Vec<&'b [u8]> {
    of_kind(buf, head, Field::Cookie)
        .into_iter()
        .flat_map(|(_, v)| v.split(|&b| b == b';'))
        .map(<[u8]>::trim_ascii)
        .filter(|p| !p.is_empty())
        .filter(|p| !strip.is_some_and(|name| crate::affinity::is_named_bytes(p, name.as_bytes())))
        .collect()
}

/// Touches every range of a parsed head (a range outside `buf` panics) and
/// what the engine reads from it.
fn touch(buf: &[u8], head: &RequestHead) {
    assert!(head.len <= buf.len());
    let _ = (head.method(buf), head.target(buf), head.path(buf));
    let _ = (head.host(buf), head.is_head(buf), &buf[head.origin.clone()]);
    for f in &head.fields {
        let _ = (&buf[f.name.clone()], &buf[f.value.clone()]);
    }
    if let Some(u) = &head.upgrade {
        let _ = &buf[u.clone()];
    }
}

/// A few random edits of a valid head: bytes replaced, inserted or removed.
fn mutated() -> impl Strategy<Value = Vec<u8>> {
    let edit = (any::<Index>(), 0u8..3, any::<u8>());
    (grammar(), vec(edit, 1..4)).prop_map(|(g, edits)| {
        let mut bytes = g.head;
        for (at, op, b) in edits {
            let i = at.index(bytes.len() + 1);
            match op {
                0 if i < bytes.len() => bytes[i] = b,
                1 => bytes.insert(i, b),
                _ if i < bytes.len() => {
                    bytes.remove(i);
                }
                _ => {}
            }
        }
        bytes
    })
}

/// The head `write_request` makes of `head` in `buf`.
fn rewrite(
    buf: &[u8],
    head: &RequestHead,
    (strip, client, tls, failover): (Option<&str>, IpAddr, bool, Option<&str>),
) -> Vec<u8> {
    let fwd = Forwarding {
        host: head.host(buf),
        strip_cookie: strip,
        client,
        tls,
        failover_from: failover,
        request_id: None,
    };
    let mut out = Vec::new();
    write_request(&mut out, buf, head, &fwd);
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    /// Any bytes: the parsers answer (complete, partial or invalid) without
    /// panicking, and a complete head's ranges lie inside the buffer.
    #[test]
    fn any_bytes_parse_without_panic(bytes in vec(any::<u8>(), 0..300)) {
        if let Parsed::Complete(head) = parse_request(&bytes) {
            touch(&bytes, &head);
        }
        for (head_request, upgrade) in [(false, false), (true, false), (false, true)] {
            if let Ok(Some(head)) = parse_response(&bytes, head_request, upgrade) {
                assert!(head.len <= bytes.len());
                let _ = &bytes[head.reason.clone()];
            }
        }
    }

    /// Bytes shaped like a head (a request line, then lines of field-ish
    /// bytes): the same, with far more of them complete.
    #[test]
    fn head_shaped_bytes_parse_without_panic(
        line in re("[A-Z]{1,7} [!-~]{1,20} HTTP/1\\.[01]\r\n"),
        fields in vec(re("[!-~]{0,12}:[ \t]?[\t -~\u{80}-\u{ff}]{0,20}\r?\n"), 0..6),
        end in prop_oneof![Just("\r\n"), Just("\n"), Just("")],
    ) {
        let bytes = [line, fields.concat(), end.to_string()].concat().into_bytes();
        if let Parsed::Complete(head) = parse_request(&bytes) {
            touch(&bytes, &head);
        }
    }

    /// Response heads shaped like a backend's: parsed without panicking, and
    /// what `write_response` makes of a complete one parses again with the
    /// same status and reason.
    #[test]
    fn response_heads_rewrite_to_valid_heads(
        line in re("HTTP/1\\.[01] [0-9]{3}( [\t -~]{0,12})?\r\n"),
        fields in vec(re("[!-~]{1,12}:[ \t]?[!-~]{0,16}\r\n"), 0..6),
        set_cookie in prop::option::of(Just("limpet=v; Path=/")),
        (close, http10, dechunk) in any::<(bool, bool, bool)>(),
    ) {
        let bytes = [line, fields.concat(), "\r\n".to_string()].concat().into_bytes();
        if let Ok(Some(head)) = parse_response(&bytes, false, true) {
            let mut out = Vec::new();
            let delivery = Delivery { close, http10, dechunk };
            write_response(&mut out, &bytes, &head, set_cookie, None, delivery);
            let again = parse_response(&out, false, true);
            let again = match again {
                Ok(Some(h)) => h,
                other => panic!("{other:?}: {}", String::from_utf8_lossy(&out)),
            };
            prop_assert_eq!(again.len, out.len());
            prop_assert_eq!(again.status, head.status);
            prop_assert_eq!(&out[again.reason.clone()], &bytes[head.reason.clone()]);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Every head the grammar makes parses completely, to the length, method,
    /// host and body framing it was made with.
    #[test]
    fn grammar_heads_parse(g in grammar(), after in vec(any::<u8>(), 0..8)) {
        let mut buf = g.head.clone();
        buf.extend_from_slice(&after);
        let head = match parse_request(&buf) {
            Parsed::Complete(head) => head,
            other => panic!("{other:?}: {}", String::from_utf8_lossy(&g.head)),
        };
        touch(&buf, &head);
        prop_assert_eq!(head.len, g.head.len());
        prop_assert_eq!(head.method(&buf), g.method.as_bytes());
        prop_assert_eq!(head.host(&buf), Some(g.host.as_bytes()));
        prop_assert_eq!(head.body, g.body);
        // Every proper prefix is partial.
        let cut = head.len - 1 - (after.first().copied().unwrap_or(0) as usize % head.len);
        prop_assert!(matches!(parse_request(&buf[..cut]), Parsed::Partial), "cut at {}", cut);
    }

    /// What limpet forwards parses again as the same request: its method, the
    /// origin-form of its target (same path), the host it was routed by, the
    /// fields the policy passes (in order, byte for byte), its cookies but
    /// limpet's own, its framing and its upgrade; with X-Forwarded-For ending
    /// in the client.
    #[test]
    fn forwarded_heads_parse_as_the_same_request(g in grammar(), fwd in forwarding()) {
        let buf = &g.head;
        let Parsed::Complete(head) = parse_request(buf) else {
            panic!("{}", String::from_utf8_lossy(buf));
        };
        let out = rewrite(buf, &head, fwd);
        let again = match parse_request(&out) {
            Parsed::Complete(again) => again,
            other => panic!("{other:?}: {}", String::from_utf8_lossy(&out)),
        };
        touch(&out, &again);
        prop_assert_eq!(again.len, out.len());
        prop_assert!(!again.http10 && again.authority.is_none());
        prop_assert_eq!(again.method(&out), head.method(buf));
        let origin = &buf[head.origin.clone()];
        let expected_target = match origin.first() {
            None | Some(b'?') => [b"/", origin].concat(),
            Some(_) => origin.to_vec(),
        };
        prop_assert_eq!(again.target(&out).as_bytes(), &expected_target[..]);
        prop_assert_eq!(again.path(&out), head.path(buf));
        prop_assert_eq!(again.host(&out), head.host(buf));
        prop_assert_eq!(of_kind(&out, &again, Field::Pass), of_kind(buf, &head, Field::Pass));
        prop_assert_eq!(cookie_pairs(&out, &again, None), cookie_pairs(buf, &head, fwd.0));
        prop_assert_eq!(again.body, head.body);
        prop_assert_eq!(
            again.upgrade.clone().map(|u| &out[u]),
            head.upgrade.clone().map(|u| &buf[u])
        );
        let xff = of_kind(&out, &again, Field::XForwardedFor);
        prop_assert_eq!(xff.len(), 1);
        prop_assert!(xff[0].1.ends_with(fwd.1.to_string().as_bytes()));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    /// Valid heads with a few bytes changed: no panic, and a head that still
    /// parses (with a host) is forwarded as a head that parses again.
    #[test]
    fn mutated_heads_parse_or_are_refused(bytes in mutated(), fwd in forwarding()) {
        if let Parsed::Complete(head) = parse_request(&bytes) {
            touch(&bytes, &head);
            if head.host(&bytes).is_some() {
                let out = rewrite(&bytes, &head, fwd);
                prop_assert!(
                    matches!(parse_request(&out), Parsed::Complete(_)),
                    "{}\n->\n{}",
                    String::from_utf8_lossy(&bytes),
                    String::from_utf8_lossy(&out)
                );
            }
        }
    }
}
