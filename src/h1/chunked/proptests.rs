//! Property tests of the chunked-body scanner (issue 13 item 7): any bytes in
//! any split give the same answer without panicking, and a body encoded from
//! random chunks decodes to its data and ends exactly where it ends.

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

/// What feeding some bytes came to: the bytes the body took (or broken
/// framing), whether it ended, and the data decoded.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    used: Result<usize, Malformed>,
    done: bool,
    data: Vec<u8>,
}

/// `bytes` cut at `cuts`.
fn pieces<'b>(bytes: &'b [u8], cuts: &[Index]) -> Vec<&'b [u8]> {
    let mut at: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
    at.sort_unstable();
    let mut out = Vec::new();
    let mut start = 0;
    for end in at.into_iter().chain([bytes.len()]) {
        out.push(&bytes[start..end]);
        start = end;
    }
    out
}

/// Feeds `pieces` one after the other as the engine does: until the framing
/// breaks or the body ends.
fn feed(pieces: &[&[u8]], decode: bool) -> Outcome {
    let mut s = Scanner::new();
    let mut data = Vec::new();
    let mut used = 0;
    for piece in pieces {
        let n = if decode {
            s.feed_decoded(piece, &mut data)
        } else {
            s.feed(piece)
        };
        let n = match n {
            Ok(n) => n,
            Err(e) => {
                return Outcome {
                    used: Err(e),
                    done: s.is_done(),
                    data,
                }
            }
        };
        assert!(n <= piece.len());
        // A piece is taken whole unless the body ends inside it.
        assert!(n == piece.len() || s.is_done(), "{n} of {}", piece.len());
        used += n;
        if s.is_done() {
            break;
        }
    }
    Outcome {
        used: Ok(used),
        done: s.is_done(),
        data,
    }
}

/// A chunk's extensions after its size, as RFC 9112 section 7.1.1 has them:
/// `;name`, `;name=token` or `;name="quoted"`, with whitespace around the
/// separators, or nothing.
fn extension() -> impl Strategy<Value = Vec<u8>> {
    let ws = "[ \t]{0,2}";
    let value = r#"([a-z0-9!#]{1,5}|"([ a-z;=]|\\[ -~]){0,5}")"#;
    let one = format!("{ws};{ws}[a-z!#]{{1,5}}({ws}={ws}{value})?");
    prop_oneof![
        2 => Just(Vec::new()),
        1 => re(&format!("({one}){{0,2}}{ws}")).prop_map(String::into_bytes),
    ]
}

/// A chunk size line: hex in either case, maybe with leading zeros.
fn size_line(size: usize, upper: bool, zeros: usize, ext: &[u8]) -> Vec<u8> {
    let hex = if upper {
        format!("{}{size:X}", "0".repeat(zeros))
    } else {
        format!("{}{size:x}", "0".repeat(zeros))
    };
    [hex.as_bytes(), ext, b"\r\n"].concat()
}

/// A chunked body: its bytes and the data it carries.
fn encoded() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    let chunk = (
        vec(any::<u8>(), 1..80),
        any::<bool>(),
        0..3usize,
        extension(),
    );
    (
        vec(chunk, 0..6),
        (any::<bool>(), 0..3usize, extension()),
        vec(re("[xX]-[a-zA-Z0-9-]{0,10}:[ \t]?[ -~]{0,12}"), 0..3),
    )
        .prop_map(|(chunks, (upper, zeros, ext), trailers)| {
            let mut body = Vec::new();
            let mut data = Vec::new();
            for (bytes, upper, zeros, ext) in chunks {
                body.extend(size_line(bytes.len(), upper, zeros, &ext));
                body.extend_from_slice(&bytes);
                body.extend_from_slice(b"\r\n");
                data.extend(bytes);
            }
            body.extend(size_line(0, upper, zeros, &ext));
            for t in trailers {
                body.extend_from_slice(t.as_bytes());
                body.extend_from_slice(b"\r\n");
            }
            body.extend_from_slice(b"\r\n");
            (body, data)
        })
}

/// Bytes near and far from chunked framing: random ones, ones from its
/// alphabet, and valid bodies with a few bytes changed.
fn any_body() -> impl Strategy<Value = Vec<u8>> {
    let framing_byte = prop_oneof![
        Just(b'\r'),
        Just(b'\n'),
        Just(b';'),
        Just(b' '),
        Just(b'0'),
        prop::sample::select(&b"0123456789abcdefABCDEFg"[..]),
        any::<u8>(),
    ];
    let edit = (any::<Index>(), 0u8..3, any::<u8>());
    prop_oneof![
        vec(any::<u8>(), 0..64),
        vec(framing_byte, 0..64),
        (encoded(), vec(edit, 1..4)).prop_map(|((mut body, _), edits)| {
            for (at, op, b) in edits {
                let i = at.index(body.len() + 1);
                match op {
                    0 if i < body.len() => body[i] = b,
                    1 => body.insert(i, b),
                    _ if i < body.len() => {
                        body.remove(i);
                    }
                    _ => {}
                }
            }
            body
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    /// Any bytes, cut anywhere: no panic, and `feed` and `feed_decoded` come to
    /// the same answer as one call with all the bytes.
    #[test]
    fn any_split_gives_the_same_answer(bytes in any_body(), cuts in vec(any::<Index>(), 0..8)) {
        let whole = feed(&[&bytes], true);
        let split = pieces(&bytes, &cuts);
        prop_assert_eq!(&feed(&split, true), &whole);
        let plain = feed(&split, false);
        prop_assert_eq!((&plain.used, plain.done), (&whole.used, whole.done));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    /// A body of random chunks (sizes, extensions, trailers), followed by the
    /// next message's bytes and cut anywhere: the scanner takes exactly the
    /// body, decodes exactly its data, and is done only at its last byte.
    #[test]
    fn encoded_bodies_decode_in_any_split(
        (body, data) in encoded(),
        next in vec(any::<u8>(), 0..16),
        cuts in vec(any::<Index>(), 0..8),
    ) {
        let bytes = [&body[..], &next].concat();
        let outcome = feed(&pieces(&bytes, &cuts), true);
        prop_assert_eq!(outcome, Outcome { used: Ok(body.len()), done: true, data });
        // One byte short: not done.
        let short = feed(&pieces(&body[..body.len() - 1], &cuts), false);
        prop_assert_eq!((short.used, short.done), (Ok(body.len() - 1), false));
    }
}
