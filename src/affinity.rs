//! Reading and writing pins: the signed affinity cookie, the ip-hash key, the
//! application's own session cookie; and stripping limpet's cookie before forwarding.
//!
//! # The cookie value
//!
//! `base64url(version | flags | backend id (8) | issued at (8, unix seconds) | tag (16))`,
//! 34 bytes, 46 characters. The backend id is `HMAC(secret, upstream, backend name)`
//! truncated: opaque (it reveals neither name nor address), stable across instances
//! sharing the secret and config, and different for every upstream, so another
//! upstream's cookie never pins. The tag is an HMAC-SHA256 over everything before it.
//! The version byte and the flags leave room for a learned replica (SPEC section 10).

use std::cell::RefCell;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{SystemTime, UNIX_EPOCH};

use ahash::AHashMap;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::header::{HeaderMap, HeaderValue, COOKIE};
use ipnet::IpNet;
use ring::hmac;

const VERSION: u8 = 1;
const ID_LEN: usize = 8;
const TAG_LEN: usize = 16;
const PAYLOAD_LEN: usize = 2 + ID_LEN + 8;
const VALUE_LEN: usize = PAYLOAD_LEN + TAG_LEN;
/// The value's length in unpadded base64.
const TEXT_LEN: usize = (VALUE_LEN * 4).div_ceil(3);

type BackendId = [u8; ID_LEN];

/// One signing key and the backend ids derived from it.
#[derive(Debug)]
struct KeyIds {
    key: hmac::Key,
    ids: AHashMap<BackendId, usize>,
    /// Id of backend `i`, by index.
    by_index: Vec<BackendId>,
}

/// Signs and verifies the affinity cookie of one upstream.
#[derive(Debug)]
pub struct CookieCodec {
    upstream: String,
    /// The current secret first, then the previous ones.
    keys: Vec<KeyIds>,
    /// Unique per codec (never reused): names this codec in [`VERIFIED`].
    id: u64,
}

/// Cookie values this thread verified lately, with what they decoded to.
///
/// A client sends the same cookie with every request of its session, and
/// verifying it (an HMAC-SHA256 over the value) costs more than the rest of
/// choosing the backend. An entry answers only for the codec that verified it
/// and for byte-identical text, so a hit returns what verifying again would
/// (decoding depends on nothing else). Only values that verified are kept; a
/// forged or foreign value is verified, and rejected, every time. A future
/// check that depends on the time (SPEC section 10, `max_lifetime`) must be
/// made on every request, outside this cache.
struct Verified {
    codec: u64,
    text: [u8; TEXT_LEN],
    pin: CookiePin,
}

const VERIFIED_SLOTS: usize = 64;

thread_local! {
    static VERIFIED: RefCell<Vec<Option<Verified>>> = const { RefCell::new(Vec::new()) };
}

/// The slot of a cookie text: its last 8 characters are base64 of the tag, as
/// good as random.
fn verified_slot(text: &[u8; TEXT_LEN]) -> usize {
    let mut tail = [0u8; 8];
    tail.copy_from_slice(&text[TEXT_LEN - 8..]);
    (crate::balancer::mix64(u64::from_le_bytes(tail)) as usize) % VERIFIED_SLOTS
}

/// A cookie that verified: the backend it names and whether it must be re-issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CookiePin {
    pub backend: usize,
    /// Signed with one of `previous_secrets`: re-issue under the current secret.
    pub stale_key: bool,
}

impl CookieCodec {
    /// `secrets`: the current one first, then the previous ones.
    pub fn new<'a>(
        upstream: &str,
        secrets: impl IntoIterator<Item = &'a [u8]>,
        backend_names: &[&str],
    ) -> Self {
        let keys = secrets
            .into_iter()
            .map(|secret| {
                let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
                let by_index: Vec<BackendId> = backend_names
                    .iter()
                    .map(|n| backend_id(&key, upstream, n))
                    .collect();
                let ids = by_index
                    .iter()
                    .enumerate()
                    .map(|(i, id)| (*id, i))
                    .collect();
                KeyIds { key, ids, by_index }
            })
            .collect();
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        CookieCodec {
            upstream: upstream.to_string(),
            keys,
            id: NEXT_ID.fetch_add(1, Relaxed),
        }
    }

    /// The cookie value pinning to backend `index`, under the current secret.
    pub fn encode(&self, index: usize) -> String {
        let current = &self.keys[0];
        let issued = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut value = [0u8; VALUE_LEN];
        value[0] = VERSION;
        value[1] = 0; // flags: no learned replica yet
        value[2..2 + ID_LEN].copy_from_slice(&current.by_index[index]);
        value[2 + ID_LEN..PAYLOAD_LEN].copy_from_slice(&issued.to_be_bytes());
        let tag = self.tag(&current.key, &value[..PAYLOAD_LEN]);
        value[PAYLOAD_LEN..].copy_from_slice(&tag.as_ref()[..TAG_LEN]);
        URL_SAFE_NO_PAD.encode(value)
    }

    /// The backend a cookie value names, if limpet issued it for this upstream.
    pub fn decode(&self, text: &str) -> Option<CookiePin> {
        self.decode_bytes(text.as_bytes())
    }

    /// [`CookieCodec::decode`] on the value's bytes as they came.
    pub fn decode_bytes(&self, text: &[u8]) -> Option<CookiePin> {
        let text: &[u8; TEXT_LEN] = text.try_into().ok()?;
        let slot = verified_slot(text);
        let cached = VERIFIED.with(|v| {
            v.borrow()
                .get(slot)
                .and_then(Option::as_ref)
                .filter(|e| e.codec == self.id && e.text == *text)
                .map(|e| e.pin)
        });
        if cached.is_some() {
            return cached;
        }
        let pin = self.verify(text)?;
        VERIFIED.with(|v| {
            let mut v = v.borrow_mut();
            if v.is_empty() {
                v.resize_with(VERIFIED_SLOTS, || None);
            }
            v[slot] = Some(Verified {
                codec: self.id,
                text: *text,
                pin,
            });
        });
        Some(pin)
    }

    /// Checks the signature of a cookie value and finds the backend it names.
    fn verify(&self, text: &[u8; TEXT_LEN]) -> Option<CookiePin> {
        let mut value = [0u8; VALUE_LEN];
        let n = URL_SAFE_NO_PAD.decode_slice(text, &mut value).ok()?;
        if n != VALUE_LEN || value[0] != VERSION {
            return None;
        }
        let (payload, tag) = value.split_at(PAYLOAD_LEN);
        let id: BackendId = payload[2..2 + ID_LEN].try_into().ok()?;
        self.keys.iter().enumerate().find_map(|(k, keyids)| {
            let expected = self.tag(&keyids.key, payload);
            // Constant-time comparison of the truncated tag.
            let ok = ring_constant_time_eq(&expected.as_ref()[..TAG_LEN], tag);
            let backend = *keyids.ids.get(&id)?;
            ok.then_some(CookiePin {
                backend,
                stale_key: k > 0,
            })
        })
    }

    fn tag(&self, key: &hmac::Key, payload: &[u8]) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(key);
        ctx.update(b"limpet-pin\0");
        ctx.update(self.upstream.as_bytes());
        ctx.update(b"\0");
        ctx.update(payload);
        ctx.sign()
    }
}

fn ring_constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn backend_id(key: &hmac::Key, upstream: &str, name: &str) -> BackendId {
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(b"limpet-backend\0");
    ctx.update(upstream.as_bytes());
    ctx.update(b"\0");
    ctx.update(name.as_bytes());
    let tag = ctx.sign();
    let mut id = [0u8; ID_LEN];
    id.copy_from_slice(&tag.as_ref()[..ID_LEN]);
    id
}

/// Read access to a request's header fields by (lower-case) name: hyper's
/// `HeaderMap`, or the raw head of limpet's own HTTP/1 engine (`crate::h1`).
pub trait HeaderLookup {
    /// The values of every field called `name`, in order.
    fn values<'a>(&'a self, name: &'static str) -> impl Iterator<Item = &'a [u8]> + 'a;

    /// The values that are text (visible ASCII, as `HeaderValue::to_str` accepts).
    fn texts<'a>(&'a self, name: &'static str) -> impl Iterator<Item = &'a str> + 'a {
        self.values(name).filter_map(header_text)
    }
}

impl HeaderLookup for HeaderMap {
    fn values<'a>(&'a self, name: &'static str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.get_all(name).iter().map(HeaderValue::as_bytes)
    }
}

/// A header value as text, when it is visible ASCII (and tabs).
pub fn header_text(value: &[u8]) -> Option<&str> {
    value
        .iter()
        .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
        .then(|| std::str::from_utf8(value).ok())
        .flatten()
}

/// Every `name=value` pair of the request's `cookie` headers (HTTP/2 may split them
/// over several header fields), in order.
pub fn cookies<'a>(
    headers: &'a impl HeaderLookup,
) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
    headers
        .texts("cookie")
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            Some((name.trim(), value.trim().trim_matches('"')))
        })
}

/// The `name=value` pairs of one `cookie` field value, as bytes, trimmed (values
/// keep their quotes). Bytes rather than text: this runs on every request.
pub fn cookie_pairs(value: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    value.split(|&b| b == b';').filter_map(|pair| {
        let eq = pair.iter().position(|&b| b == b'=')?;
        Some((pair[..eq].trim_ascii(), pair[eq + 1..].trim_ascii()))
    })
}

/// The first value of the cookie `name` that `accept` maps to something.
pub fn find_cookie<T>(
    headers: &impl HeaderLookup,
    name: &str,
    mut accept: impl FnMut(&[u8]) -> Option<T>,
) -> Option<T> {
    headers
        .values("cookie")
        .flat_map(cookie_pairs)
        .filter(|(n, _)| *n == name.as_bytes())
        .find_map(|(_, v)| accept(unquoted(v)))
}

fn unquoted(value: &[u8]) -> &[u8] {
    match value {
        [b'"', inner @ .., b'"'] => inner,
        _ => value,
    }
}

/// Whether the `name=value` pair `pair` is the cookie `name`.
pub fn is_named_bytes(pair: &[u8], name: &[u8]) -> bool {
    pair.iter()
        .position(|&b| b == b'=')
        .is_some_and(|eq| pair[..eq].trim_ascii() == name)
}

/// Removes the cookie `name` from the `cookie` headers, leaving the application's
/// cookies byte for byte, and joins several `cookie` fields into one (the upstream
/// speaks HTTP/1.1, where there must be one).
pub fn strip_cookie(headers: &mut HeaderMap, name: &str) {
    let fields = headers.get_all(COOKIE).iter().count();
    if fields == 0 {
        return;
    }
    let mentions = |v: &HeaderValue| {
        v.to_str()
            .is_ok_and(|s| s.split(';').any(|p| is_named(p, name)))
    };
    if fields == 1 && !headers.get(COOKIE).is_some_and(mentions) {
        return;
    }
    // The kept pairs joined with "; ", built in one buffer that becomes the value.
    let mut kept = String::new();
    let mut keep = |pair: &str| {
        if !kept.is_empty() {
            kept.push_str("; ");
        }
        kept.push_str(pair);
    };
    for value in headers.get_all(COOKIE) {
        let Ok(text) = value.to_str() else {
            // Not text: pass it on untouched rather than lose it.
            keep(&String::from_utf8_lossy(value.as_bytes()));
            continue;
        };
        for pair in text.split(';') {
            let pair = pair.trim_start();
            if !pair.is_empty() && !is_named(pair, name) {
                keep(pair);
            }
        }
    }
    headers.remove(COOKIE);
    if !kept.is_empty() {
        if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(kept)) {
            headers.insert(COOKIE, v);
        }
    }
}

pub(crate) fn is_named(pair: &str, name: &str) -> bool {
    pair.trim_start()
        .split_once('=')
        .is_some_and(|(n, _)| n.trim() == name)
}

/// The client address for ip-hash: the peer, or when the peer is a trusted proxy, the
/// right-most X-Forwarded-For entry that is not itself a trusted proxy.
pub fn client_ip(peer: IpAddr, headers: &impl HeaderLookup, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    let entries = headers
        .texts("x-forwarded-for")
        .flat_map(|v| v.split(','))
        .collect::<Vec<_>>();
    for entry in entries.iter().rev() {
        match parse_forwarded_ip(entry) {
            Some(ip) => {
                client = ip;
                if !is_trusted(&ip) {
                    break;
                }
            }
            None => break,
        }
    }
    client
}

fn parse_forwarded_ip(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    entry
        .parse()
        .ok()
        .or_else(|| entry.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
}

/// The route suffix of the application's session id: from the cookie `name`, else
/// from a `;name=` path parameter (`;jsessionid=abc.app1`), the text after the last
/// `separator`.
pub fn app_route<'a>(
    headers: &'a impl HeaderLookup,
    path: &'a str,
    name: &str,
    separator: &str,
) -> Vec<&'a str> {
    let suffix = |v: &'a str| {
        v.rsplit_once(separator)
            .map(|(_, r)| r)
            .filter(|r| !r.is_empty())
    };
    let mut routes: Vec<&'a str> = cookies(headers)
        .filter(|(n, _)| *n == name)
        .filter_map(|(_, v)| suffix(v))
        .collect();
    for param in path.split('?').next().unwrap_or("").split(';').skip(1) {
        if let Some((k, v)) = param.split_once('=') {
            if k.eq_ignore_ascii_case(name) {
                let v = v.split('/').next().unwrap_or(v);
                routes.extend(suffix(v));
            }
        }
    }
    routes
}

/// How the backend for a request was chosen (the `outcome` label of
/// `limpet_affinity_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A valid pin to an available backend.
    Pinned,
    /// No pin: a new session.
    New,
    /// The pinned backend was unavailable; a backend of its replica chain took over.
    Failover,
    /// The pinned backend and its replica chain were unavailable; balanced anew.
    Rebalanced,
    /// The pinned backend was unavailable and `failover = "reject"`.
    Rejected,
}

impl Outcome {
    pub const ALL: [Outcome; 5] = [
        Outcome::Pinned,
        Outcome::New,
        Outcome::Failover,
        Outcome::Rebalanced,
        Outcome::Rejected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pinned => "pinned",
            Outcome::New => "new",
            Outcome::Failover => "failover",
            Outcome::Rebalanced => "rebalanced",
            Outcome::Rejected => "rejected",
        }
    }
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    use super::*;

    fn codec(secrets: &[&[u8]]) -> CookieCodec {
        CookieCodec::new("shop", secrets.iter().copied(), &["app1", "app2", "app3"])
    }

    #[test]
    fn round_trips_and_hides_the_name() {
        let c = codec(&[b"s1"]);
        for i in 0..3 {
            let v = c.encode(i);
            assert!(!v.contains("app"), "{v}");
            assert_eq!(
                c.decode(&v),
                Some(CookiePin {
                    backend: i,
                    stale_key: false
                })
            );
        }
    }

    #[test]
    fn text_len_is_the_encoded_length() {
        assert_eq!(URL_SAFE_NO_PAD.encode([0u8; VALUE_LEN]).len(), TEXT_LEN);
        assert_eq!(codec(&[b"s1"]).encode(0).len(), TEXT_LEN);
    }

    #[test]
    fn rejects_forgeries() {
        let c = codec(&[b"s1"]);
        let v = c.encode(1);
        assert_eq!(c.decode(&v[..v.len() - 1]), None);
        assert_eq!(c.decode(""), None);
        let mut bytes = v.clone().into_bytes();
        bytes[5] = if bytes[5] == b'A' { b'B' } else { b'A' };
        assert_eq!(c.decode(std::str::from_utf8(&bytes).unwrap()), None);
        assert_eq!(codec(&[b"other"]).decode(&v), None);
        let other_upstream = CookieCodec::new("blog", [&b"s1"[..]], &["app1", "app2", "app3"]);
        assert_eq!(other_upstream.decode(&v), None);
    }

    #[test]
    fn a_value_verified_by_one_codec_is_not_taken_by_another() {
        let c = codec(&[b"s1"]);
        let v = c.encode(2);
        let pin = Some(CookiePin {
            backend: 2,
            stale_key: false,
        });
        assert_eq!(c.decode(&v), pin);
        assert_eq!(c.decode(&v), pin, "cached answer");
        // Same secret and names but another codec (a reload): verified afresh.
        assert_eq!(codec(&[b"s1"]).decode(&v), pin);
        assert_eq!(codec(&[b"other"]).decode(&v), None);
        let rotated = codec(&[b"new", b"s1"]);
        assert_eq!(
            rotated.decode(&v),
            Some(CookiePin {
                backend: 2,
                stale_key: true
            })
        );
        let other_upstream = CookieCodec::new("blog", [&b"s1"[..]], &["app1", "app2", "app3"]);
        assert_eq!(other_upstream.decode(&v), None);
    }

    #[test]
    fn previous_secrets_pin_and_are_stale() {
        let old = codec(&[b"old"]).encode(2);
        let rotated = codec(&[b"new", b"old"]);
        assert_eq!(
            rotated.decode(&old),
            Some(CookiePin {
                backend: 2,
                stale_key: true
            })
        );
    }

    #[test]
    fn strips_only_our_cookie() {
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_static("a=1; limpet=xyz;b=\"2\""));
        h.append(COOKIE, HeaderValue::from_static("c=3"));
        strip_cookie(&mut h, "limpet");
        assert_eq!(h.get_all(COOKIE).iter().count(), 1);
        assert_eq!(h.get(COOKIE).unwrap(), "a=1; b=\"2\"; c=3");

        let mut untouched = HeaderMap::new();
        untouched.insert(COOKIE, HeaderValue::from_static("a=1;b=2"));
        strip_cookie(&mut untouched, "limpet");
        assert_eq!(untouched.get(COOKIE).unwrap(), "a=1;b=2");
    }

    #[test]
    fn xff_is_read_from_the_right_through_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("1.1.1.1, 2.2.2.2, 10.0.0.9"),
        );
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(
            client_ip(peer, &h, &trusted),
            "2.2.2.2".parse::<IpAddr>().unwrap()
        );
        let outsider: IpAddr = "9.9.9.9".parse().unwrap();
        assert_eq!(client_ip(outsider, &h, &trusted), outsider);
    }

    #[test]
    fn app_route_from_cookie_and_path() {
        let mut h = HeaderMap::new();
        h.insert(COOKIE, HeaderValue::from_static("JSESSIONID=8F3A.app2"));
        assert_eq!(app_route(&h, "/", "JSESSIONID", "."), vec!["app2"]);
        let empty = HeaderMap::new();
        assert_eq!(
            app_route(&empty, "/cart;jsessionid=abc.app3?x=1", "JSESSIONID", "."),
            vec!["app3"]
        );
    }
}
