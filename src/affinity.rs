//! Reading and writing pins: the signed affinity cookie, the ip-hash key, the
//! application's own session cookie; and stripping limpet's cookie before forwarding.
//!
//! # The cookie value
//!
//! Version 2 (what limpet issues), 50 bytes, 67 characters of unpadded base64url:
//! `version (2) | flags | primary id (8) | replica id (8) | session (8) |
//! created (4) | touched (4) | tag (16)`. A backend id is `HMAC(secret, upstream,
//! backend name)` truncated: opaque (it reveals neither name nor address), stable
//! across instances sharing the secret and config, and different for every
//! upstream, so another upstream's cookie never pins. The replica id is the
//! session's learned replica (flag bit 0 says it is there; the backend named it in
//! `x-session-replica`). The session is a random id kept for the session's life
//! (re-issues keep it): what the per-backend session estimate counts. `created`
//! and `touched` are unix seconds: when the session was first pinned, and when the
//! cookie was last issued (`max_lifetime` and `max_idle`). The tag is an
//! HMAC-SHA256 over everything before it.
//!
//! Version 1 (limpet before learned replicas), 34 bytes, 46 characters:
//! `version (1) | flags | backend id (8) | issued at (8) | tag (16)`, still read
//! (and re-issued as version 2). Any other version reads as no cookie.

use std::cell::{Cell, RefCell};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{SystemTime, UNIX_EPOCH};

use ahash::AHashMap;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::header::{HeaderMap, HeaderValue, COOKIE};
use ipnet::IpNet;
use ring::hmac;

const ID_LEN: usize = 8;
const TAG_LEN: usize = 16;

/// Version 2, the one limpet writes.
const VERSION: u8 = 2;
const PAYLOAD_LEN: usize = 2 + ID_LEN + ID_LEN + 8 + 4 + 4;
const VALUE_LEN: usize = PAYLOAD_LEN + TAG_LEN;
/// The value's length in unpadded base64.
const TEXT_LEN: usize = (VALUE_LEN * 4).div_ceil(3);
/// Flag: the replica id is a learned replica.
const HAS_REPLICA: u8 = 1;

/// Version 1, still read.
const V1: u8 = 1;
const V1_PAYLOAD_LEN: usize = 2 + ID_LEN + 8;
const V1_VALUE_LEN: usize = V1_PAYLOAD_LEN + TAG_LEN;
const V1_TEXT_LEN: usize = (V1_VALUE_LEN * 4).div_ceil(3);

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
/// (decoding depends on nothing else). Only version-2 values that verified are
/// kept; a forged or foreign value is verified, and rejected, every time. The
/// checks that depend on the time (`max_lifetime`, `max_idle`) are made by the
/// caller on every request, outside this cache.
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

/// What a session carries from request to request, beside the backend it is
/// pinned to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Session {
    /// The session's identity: random for a cookie session, a hash of the
    /// client address (ip-hash) or of the application's session id (app-cookie).
    pub id: u64,
    /// Unix seconds when the session was first pinned (0: unknown).
    pub created: u32,
    /// The backend that holds the session's copy, as the primary said
    /// (`x-session-replica`) or the application cookie's secondary route.
    pub replica: Option<usize>,
}

impl Session {
    /// A new session starting now, with a random identity.
    pub fn new() -> Session {
        Session {
            id: random_id(),
            created: unix_now(),
            replica: None,
        }
    }
}

/// A cookie that verified: the backend it names, the session it carries, and
/// whether it must be re-issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CookiePin {
    pub backend: usize,
    pub session: Session,
    /// Unix seconds when the cookie was issued.
    pub touched: u32,
    /// Signed with one of `previous_secrets`, or version 1: re-issue under the
    /// current secret as version 2.
    pub reissue: bool,
}

/// The time as the cookie stores it: unix seconds, in 32 bits (until 2106).
pub fn unix_now() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs().min(u64::from(u32::MAX)) as u32)
        .unwrap_or(0)
}

/// A random 64-bit id, cheap: a per-thread counter through a keyed mix (the
/// cookie's HMAC, not this, is what makes it unforgeable).
fn random_id() -> u64 {
    thread_local! {
        static NEXT: Cell<u64> = Cell::new(ahash::RandomState::new().hash_one(std::thread::current().id()));
    }
    NEXT.with(|n| {
        let v = n.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        n.set(v);
        crate::balancer::mix64(v)
    })
}

impl CookieCodec {
    /// `secrets`: the current one first, then the previous ones. `backend_names`:
    /// every name a cookie may pin to, by index (the upstream's backends, then
    /// those a reload removed whose pins are still honoured).
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

    /// The cookie value pinning `session` to backend `index`, issued now, under
    /// the current secret.
    pub fn encode(&self, index: usize, session: &Session) -> String {
        let current = &self.keys[0];
        let mut value = [0u8; VALUE_LEN];
        value[0] = VERSION;
        let mut at = 2;
        let mut put = |bytes: &[u8]| {
            value[at..at + bytes.len()].copy_from_slice(bytes);
            at += bytes.len();
        };
        put(&current.by_index[index]);
        match session.replica.and_then(|r| current.by_index.get(r)) {
            Some(replica) => put(replica),
            None => put(&[0; ID_LEN]),
        }
        put(&session.id.to_be_bytes());
        put(&session.created.to_be_bytes());
        put(&unix_now().to_be_bytes());
        if session.replica.is_some() {
            value[1] = HAS_REPLICA;
        }
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
        if text.len() == V1_TEXT_LEN {
            return self.verify_v1(text);
        }
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

    /// Checks the signature of a version-2 value and reads what it carries.
    fn verify(&self, text: &[u8; TEXT_LEN]) -> Option<CookiePin> {
        let mut value = [0u8; VALUE_LEN];
        let n = URL_SAFE_NO_PAD.decode_slice(text, &mut value).ok()?;
        if n != VALUE_LEN || value[0] != VERSION {
            return None;
        }
        let (payload, tag) = value.split_at(PAYLOAD_LEN);
        let (keyids, stale) = self.signed_by(payload, tag)?;
        let field = |at: usize, len: usize| &payload[at..at + len];
        let primary: BackendId = field(2, ID_LEN).try_into().ok()?;
        let replica: BackendId = field(2 + ID_LEN, ID_LEN).try_into().ok()?;
        let rest = 2 + 2 * ID_LEN;
        let session = u64::from_be_bytes(field(rest, 8).try_into().ok()?);
        let created = u32::from_be_bytes(field(rest + 8, 4).try_into().ok()?);
        let touched = u32::from_be_bytes(field(rest + 12, 4).try_into().ok()?);
        Some(CookiePin {
            backend: *keyids.ids.get(&primary)?,
            session: Session {
                id: session,
                created,
                // A replica this config no longer has is no replica.
                replica: (payload[1] & HAS_REPLICA != 0)
                    .then(|| keyids.ids.get(&replica).copied())
                    .flatten(),
            },
            touched,
            reissue: stale,
        })
    }

    /// Checks the signature of a version-1 value: its backend, a session id
    /// taken from its tag, and always re-issued (as version 2).
    fn verify_v1(&self, text: &[u8]) -> Option<CookiePin> {
        let mut value = [0u8; V1_VALUE_LEN];
        let n = URL_SAFE_NO_PAD.decode_slice(text, &mut value).ok()?;
        if n != V1_VALUE_LEN || value[0] != V1 {
            return None;
        }
        let (payload, tag) = value.split_at(V1_PAYLOAD_LEN);
        let (keyids, _) = self.signed_by(payload, tag)?;
        let id: BackendId = payload[2..2 + ID_LEN].try_into().ok()?;
        let issued = u64::from_be_bytes(payload[2 + ID_LEN..].try_into().ok()?);
        let issued = issued.min(u64::from(u32::MAX)) as u32;
        Some(CookiePin {
            backend: *keyids.ids.get(&id)?,
            session: Session {
                id: u64::from_be_bytes(tag[..8].try_into().ok()?),
                created: issued,
                replica: None,
            },
            touched: issued,
            reissue: true,
        })
    }

    /// The key whose tag `tag` is over `payload`, and whether it is a previous one.
    fn signed_by(&self, payload: &[u8], tag: &[u8]) -> Option<(&KeyIds, bool)> {
        self.keys.iter().enumerate().find_map(|(k, keyids)| {
            let expected = self.tag(&keyids.key, payload);
            // Constant-time comparison of the truncated tag.
            ring_constant_time_eq(&expected.as_ref()[..TAG_LEN], tag).then_some((keyids, k > 0))
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

/// What the application's session id says about where the session lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppSession<'a> {
    /// The session id without its routes.
    pub id: &'a str,
    /// The route of the backend that holds the session.
    pub route: &'a str,
    /// The route of the backend that holds its copy (WebLogic's
    /// `id!primary!secondary`), when `secondary_separator` is set.
    pub secondary: Option<&'a str>,
}

/// The routes in the application's session ids: from the cookie `name`, else
/// from a `;name=` path parameter (`;jsessionid=abc.app1`). Without
/// `secondary`, the route is the text after the last `separator` (Tomcat's
/// `id.jvmRoute`); with it, the text after the first `separator` is
/// `primary[<secondary>secondary]` (WebLogic's `id!primary!secondary`).
pub fn app_sessions<'a>(
    headers: &'a impl HeaderLookup,
    path: &'a str,
    name: &str,
    separator: &str,
    secondary: Option<&str>,
) -> Vec<AppSession<'a>> {
    let parse = |v: &'a str| -> Option<AppSession<'a>> {
        let (id, routes) = match secondary {
            Some(_) => v.split_once(separator)?,
            None => v.rsplit_once(separator)?,
        };
        let (route, secondary) = match secondary.and_then(|sep| routes.split_once(sep)) {
            Some((route, second)) => (route, Some(second).filter(|s| !s.is_empty())),
            None => (routes, None),
        };
        (!route.is_empty()).then_some(AppSession {
            id,
            route,
            secondary,
        })
    };
    let mut sessions: Vec<AppSession<'a>> = cookies(headers)
        .filter(|(n, _)| *n == name)
        .filter_map(|(_, v)| parse(v))
        .collect();
    for param in path.split('?').next().unwrap_or("").split(';').skip(1) {
        if let Some((k, v)) = param.split_once('=') {
            if k.eq_ignore_ascii_case(name) {
                let v = v.split('/').next().unwrap_or(v);
                sessions.extend(parse(v));
            }
        }
    }
    sessions
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

    fn session(replica: Option<usize>) -> Session {
        Session {
            id: 0x0123_4567_89ab_cdef,
            created: 1_700_000_000,
            replica,
        }
    }

    /// What `c` decodes `v` to, without the issue time.
    fn pin_of(c: &CookieCodec, v: &str) -> Option<(usize, Session, bool)> {
        c.decode(v).map(|p| (p.backend, p.session, p.reissue))
    }

    #[test]
    fn round_trips_and_hides_the_name() {
        let c = codec(&[b"s1"]);
        for i in 0..3 {
            for replica in [None, Some((i + 1) % 3)] {
                let v = c.encode(i, &session(replica));
                assert!(!v.contains("app"), "{v}");
                assert_eq!(pin_of(&c, &v), Some((i, session(replica), false)));
                let touched = c.decode(&v).unwrap().touched;
                assert!(touched.abs_diff(unix_now()) <= 1);
            }
        }
    }

    #[test]
    fn text_len_is_the_encoded_length() {
        assert_eq!(URL_SAFE_NO_PAD.encode([0u8; VALUE_LEN]).len(), TEXT_LEN);
        assert_eq!(
            URL_SAFE_NO_PAD.encode([0u8; V1_VALUE_LEN]).len(),
            V1_TEXT_LEN
        );
        assert_eq!(codec(&[b"s1"]).encode(0, &Session::new()).len(), TEXT_LEN);
    }

    /// A version-1 value as limpet 0.1 wrote it.
    fn encode_v1(c: &CookieCodec, index: usize, issued: u64) -> String {
        let key = &c.keys[0];
        let mut value = [0u8; V1_VALUE_LEN];
        value[0] = V1;
        value[2..2 + ID_LEN].copy_from_slice(&key.by_index[index]);
        value[2 + ID_LEN..V1_PAYLOAD_LEN].copy_from_slice(&issued.to_be_bytes());
        let tag = c.tag(&key.key, &value[..V1_PAYLOAD_LEN]);
        value[V1_PAYLOAD_LEN..].copy_from_slice(&tag.as_ref()[..TAG_LEN]);
        URL_SAFE_NO_PAD.encode(value)
    }

    #[test]
    fn version_1_values_are_read_and_reissued() {
        let c = codec(&[b"s1"]);
        let v1 = encode_v1(&c, 2, 1_700_000_000);
        assert_eq!(v1.len(), V1_TEXT_LEN);
        let pin = c.decode(&v1).expect("a version-1 cookie pins");
        assert_eq!((pin.backend, pin.reissue), (2, true));
        assert_eq!(pin.session.created, 1_700_000_000);
        assert_eq!(pin.session.replica, None);
        // Its session id is stable: the same value, the same session.
        assert_eq!(c.decode(&v1).unwrap().session.id, pin.session.id);
        // Signed with another secret: nothing.
        assert_eq!(codec(&[b"other"]).decode(&v1), None);
    }

    #[test]
    fn unknown_versions_are_no_cookie() {
        let c = codec(&[b"s1"]);
        let v = c.encode(1, &session(None));
        let mut value = URL_SAFE_NO_PAD.decode(&v).unwrap();
        for version in [0u8, 3, 255] {
            value[0] = version;
            // Signed properly, so only the version refuses it.
            let tag = c.tag(&c.keys[0].key, &value[..PAYLOAD_LEN]);
            value[PAYLOAD_LEN..].copy_from_slice(&tag.as_ref()[..TAG_LEN]);
            assert_eq!(c.decode(&URL_SAFE_NO_PAD.encode(&value)), None, "{version}");
        }
    }

    #[test]
    fn rejects_forgeries() {
        let c = codec(&[b"s1"]);
        let v = c.encode(1, &session(Some(2)));
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
        let v = c.encode(2, &session(None));
        let pin = Some((2, session(None), false));
        assert_eq!(pin_of(&c, &v), pin);
        assert_eq!(pin_of(&c, &v), pin, "cached answer");
        // Same secret and names but another codec (a reload): verified afresh.
        assert_eq!(pin_of(&codec(&[b"s1"]), &v), pin);
        assert_eq!(codec(&[b"other"]).decode(&v), None);
        let rotated = codec(&[b"new", b"s1"]);
        assert_eq!(pin_of(&rotated, &v), Some((2, session(None), true)));
        let other_upstream = CookieCodec::new("blog", [&b"s1"[..]], &["app1", "app2", "app3"]);
        assert_eq!(other_upstream.decode(&v), None);
    }

    #[test]
    fn previous_secrets_pin_and_are_stale() {
        let old = codec(&[b"old"]).encode(2, &session(Some(0)));
        let rotated = codec(&[b"new", b"old"]);
        assert_eq!(pin_of(&rotated, &old), Some((2, session(Some(0)), true)));
    }

    #[test]
    fn a_replica_the_config_lost_is_no_replica() {
        let four = CookieCodec::new("shop", [&b"s1"[..]], &["app1", "app2", "app3", "app4"]);
        let v = four.encode(0, &session(Some(3)));
        assert_eq!(
            pin_of(&codec(&[b"s1"]), &v),
            Some((0, session(None), false))
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

    fn routes<'a>(sessions: Vec<AppSession<'a>>) -> Vec<(&'a str, Option<&'a str>)> {
        sessions.iter().map(|s| (s.route, s.secondary)).collect()
    }

    #[test]
    fn app_route_from_cookie_and_path() {
        let mut h = HeaderMap::new();
        h.insert(COOKIE, HeaderValue::from_static("JSESSIONID=8F3A.x.app2"));
        let found = app_sessions(&h, "/", "JSESSIONID", ".", None);
        assert_eq!(routes(found.clone()), vec![("app2", None)]);
        assert_eq!(found[0].id, "8F3A.x");
        let empty = HeaderMap::new();
        assert_eq!(
            routes(app_sessions(
                &empty,
                "/cart;jsessionid=abc.app3?x=1",
                "JSESSIONID",
                ".",
                None
            )),
            vec![("app3", None)]
        );
    }

    #[test]
    fn weblogic_session_ids_carry_a_secondary() {
        let mut h = HeaderMap::new();
        h.insert(
            COOKIE,
            HeaderValue::from_static("JSESSIONID=Zx9q!-1234!5678"),
        );
        let found = app_sessions(&h, "/", "JSESSIONID", "!", Some("!"));
        assert_eq!(routes(found.clone()), vec![("-1234", Some("5678"))]);
        assert_eq!(found[0].id, "Zx9q");
        // No secondary (a session not yet replicated), or an empty one.
        for (cookie, expected) in [
            ("JSESSIONID=Zx9q!-1234", ("-1234", None)),
            ("JSESSIONID=Zx9q!-1234!", ("-1234", None)),
        ] {
            let mut h = HeaderMap::new();
            h.insert(COOKIE, HeaderValue::from_str(cookie).unwrap());
            assert_eq!(
                routes(app_sessions(&h, "/", "JSESSIONID", "!", Some("!"))),
                vec![expected]
            );
        }
        let mut none = HeaderMap::new();
        none.insert(COOKIE, HeaderValue::from_static("JSESSIONID=Zx9q"));
        assert!(app_sessions(&none, "/", "JSESSIONID", "!", Some("!")).is_empty());
    }
}
