//! Property tests of the affinity cookie codec (issue 13 item 7).
//!
//! The value is base64url (no padding) of 50 bytes: version, flags, backend
//! id, replica id, session id, created and touched times, then a tag over all
//! of those. Every bit counts: the version is checked, the tag covers the
//! rest, the tag itself is compared, and the 2 spare low bits of the last of
//! the 67 characters must be zero
//! (the decoder refuses a non-canonical ending). So no byte of a value is
//! ignored: any single byte changed gives no pin at all.

use proptest::collection::{btree_set, vec};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::string::{string_regex, RegexGeneratorStrategy};

use super::*;

/// A strategy for strings matching `pattern`, parsed once (a `&str` strategy
/// parses its pattern again for every value).
fn re(pattern: &str) -> RegexGeneratorStrategy<String> {
    string_regex(pattern).expect("a valid pattern")
}

const BASE64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// An upstream, 1-4 distinct secrets (the current one first) and 1-8 distinct
/// backend names.
fn setup() -> impl Strategy<Value = (String, Vec<Vec<u8>>, Vec<String>)> {
    (
        re("[a-z0-9-]{0,12}"),
        btree_set(vec(any::<u8>(), 0..40), 1..5),
        btree_set(re("[a-z0-9._-]{1,12}"), 1..9),
    )
        .prop_flat_map(|(upstream, secrets, names)| {
            let secrets: Vec<Vec<u8>> = secrets.into_iter().collect();
            (
                Just(upstream),
                Just(secrets).prop_shuffle(),
                Just(names.into_iter().collect()),
            )
        })
}

fn codec(upstream: &str, secrets: &[Vec<u8>], names: &[String]) -> CookieCodec {
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    CookieCodec::new(upstream, secrets.iter().map(Vec::as_slice), &names)
}

/// Texts a client could send: any bytes, base64url of the right length, and
/// such text that starts like a value of this version.
fn any_text() -> impl Strategy<Value = Vec<u8>> {
    let b64 = prop::sample::select(BASE64URL);
    prop_oneof![
        vec(any::<u8>(), 0..64),
        vec(any::<u8>(), TEXT_LEN..=TEXT_LEN),
        vec(b64.clone(), TEXT_LEN - 2..=TEXT_LEN + 2),
        vec(b64, TEXT_LEN - 2..=TEXT_LEN - 2).prop_map(|rest| [&b"AQ"[..], &rest].concat()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    /// Any bytes of any length: no panic and no pin (a forgery would have to
    /// guess a 128-bit tag).
    #[test]
    fn any_text_gives_no_pin((upstream, secrets, names) in setup(), text in any_text()) {
        let c = codec(&upstream, &secrets, &names);
        prop_assert_eq!(c.decode_bytes(&text), None);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// A value encoded for any backend under any of the codec's secrets
    /// decodes to that backend (stale unless the secret is the current one),
    /// from a fresh codec and again from the cache; and gives no pin to a
    /// codec without that secret or for another upstream.
    #[test]
    fn encoded_values_decode_to_their_backend(
        (upstream, secrets, names) in setup(),
        backend in any::<Index>(),
        secret in any::<Index>(),
        id in any::<u64>(),
        created in any::<u32>(),
        replica in any::<Option<Index>>(),
    ) {
        let c = codec(&upstream, &secrets, &names);
        let backend = backend.index(names.len());
        let k = secret.index(secrets.len());
        let replica = replica.map(|r| r.index(names.len()));
        let session = Session { id, created, replica };
        let value = codec(&upstream, &secrets[k..=k], &names).encode(backend, &session);
        prop_assert_eq!(value.len(), TEXT_LEN);
        let pin = Some((backend, session, k > 0));
        let read = |p: CookiePin| (p.backend, p.session, p.reissue);
        prop_assert_eq!(c.decode(&value).map(read), pin);
        prop_assert_eq!(c.decode_bytes(value.as_bytes()).map(read), pin, "cached");
        let without: Vec<Vec<u8>> =
            secrets.iter().enumerate().filter(|&(i, _)| i != k).map(|(_, s)| s.clone()).collect();
        if !without.is_empty() {
            prop_assert_eq!(codec(&upstream, &without, &names).decode(&value), None);
        }
        let other = format!("{upstream}x");
        prop_assert_eq!(codec(&other, &secrets, &names).decode(&value), None);
    }

    /// A value with any one byte changed, to anything, gives no pin, even
    /// right after the value itself was verified and cached.
    #[test]
    fn a_changed_byte_gives_no_pin(
        (upstream, secrets, names) in setup(),
        backend in any::<Index>(),
        at in 0..TEXT_LEN,
        to in any::<u8>(),
    ) {
        let c = codec(&upstream, &secrets, &names);
        let backend = backend.index(names.len());
        let value = c.encode(backend, &Session::new());
        prop_assert!(c.decode(&value).is_some());
        let mut changed = value.into_bytes();
        prop_assume!(changed[at] != to);
        changed[at] = to;
        prop_assert_eq!(c.decode_bytes(&changed), None);
    }
}
