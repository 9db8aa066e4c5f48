//! The header policy of SPEC section 4, in one place for both engines: which
//! fields of a request or response pass, which are hop-by-hop or limpet's own,
//! and what limpet adds (X-Forwarded-*, `x-limpet-failover-from`, its cookie
//! stripped). Two writers apply it: raw HTTP/1 bytes (`crate::h1::head`) and
//! an `http::HeaderMap` ([`rewrite_request`], [`rewrite_response`], for HTTP/2).

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub use crate::access_log::push_ip;
use crate::affinity;

/// The header limpet adds to a request that fails over from its pinned backend.
pub const FAILOVER_FROM: &str = "x-limpet-failover-from";
/// The request's id, forwarded to the backend and written in the access log.
pub const REQUEST_ID: &str = "x-request-id";
/// The response header in which a backend names the session's replica.
pub const SESSION_REPLICA: &str = "x-session-replica";
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// What a header field is to the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// Passed on as it is.
    Pass,
    Host,
    Cookie,
    XForwardedFor,
    /// `x-request-id`: passed on, unless limpet sets its own (the access log
    /// is on: [`Forwarding::request_id`]).
    RequestId,
    ContentLength,
    TransferEncoding,
    Connection,
    /// Passed on only with an upgrade (request) or a 101 (response).
    Upgrade,
    /// Answered by limpet itself (`100-continue`), never forwarded.
    Expect,
    /// A response's `x-session-replica`: the backend telling limpet where the
    /// session's copy is; read, never passed to the client.
    SessionReplica,
    /// Removed: hop-by-hop, set by limpet itself, or a name a backend would
    /// read as a framing field.
    Drop,
}

/// What a request field is. One comparison per field at most (by length first).
pub fn request_field(name: &[u8]) -> Field {
    let is = |known: &str| name.eq_ignore_ascii_case(known.as_bytes());
    match name.len() {
        4 if is("host") => Field::Host,
        6 if is("cookie") => Field::Cookie,
        6 if is("expect") => Field::Expect,
        12 if is(REQUEST_ID) => Field::RequestId,
        15 if is("x-forwarded-for") => Field::XForwardedFor,
        16 if is("x-forwarded-host") => Field::Drop,
        17 if is("x-forwarded-proto") => Field::Drop,
        22 if is(FAILOVER_FROM) => Field::Drop,
        // CGI and WSGI servers read `_` as `-`: a backend could take these for
        // the framing fields limpet did not frame the request by.
        14 if is("content_length") => Field::Drop,
        17 if is("transfer_encoding") => Field::Drop,
        _ => common_field(name),
    }
}

/// What a response field is.
pub fn response_field(name: &[u8]) -> Field {
    if name.len() == SESSION_REPLICA.len() && name.eq_ignore_ascii_case(SESSION_REPLICA.as_bytes())
    {
        return Field::SessionReplica;
    }
    common_field(name)
}

/// Kinds that requests and responses share: framing, and the fixed hop-by-hop
/// set.
fn common_field(name: &[u8]) -> Field {
    let is = |known: &str| name.eq_ignore_ascii_case(known.as_bytes());
    match name.len() {
        14 if is("content-length") => Field::ContentLength,
        17 if is("transfer-encoding") => Field::TransferEncoding,
        10 if is("connection") => Field::Connection,
        7 if is("upgrade") => Field::Upgrade,
        10 if is("keep-alive") => Field::Drop,
        16 if is("proxy-connection") => Field::Drop,
        18 if is("proxy-authenticate") => Field::Drop,
        19 if is("proxy-authorization") => Field::Drop,
        2 if is("te") => Field::Drop,
        7 if is("trailer") => Field::Drop,
        _ => Field::Pass,
    }
}

/// The comma-separated tokens of a field value, trimmed.
pub fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
}

/// Whether a Connection token names a field to remove (rather than being an
/// option of the connection itself).
pub fn names_a_field(token: &[u8]) -> bool {
    !(token.eq_ignore_ascii_case(b"close")
        || token.eq_ignore_ascii_case(b"keep-alive")
        || token.eq_ignore_ascii_case(b"upgrade"))
}

/// The `timeout=N` of a response's `Keep-Alive` field (RFC 2068, section
/// 19.7.1.1): how many seconds the backend keeps an idle connection open.
pub fn keep_alive_timeout(value: &[u8]) -> Option<u64> {
    tokens(value).find_map(|param| {
        let (name, secs) = param.split_at(param.iter().position(|&b| b == b'=')?);
        let secs = secs[1..].trim_ascii();
        (name.trim_ascii().eq_ignore_ascii_case(b"timeout")
            && !secs.is_empty()
            && secs.len() < 10
            && secs.iter().all(u8::is_ascii_digit))
        .then(|| secs.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
    })
}

/// What limpet adds to the request it forwards.
pub struct Forwarding<'a> {
    /// The host the request was routed by, sent as Host and X-Forwarded-Host.
    pub host: Option<&'a [u8]>,
    /// Strip this cookie from Cookie (`affinity = "cookie"`).
    pub strip_cookie: Option<&'a str>,
    /// The client's address, appended to X-Forwarded-For.
    pub client: IpAddr,
    pub tls: bool,
    /// The `x-limpet-failover-from` value.
    pub failover_from: Option<&'a str>,
    /// The `x-request-id` to send in place of the client's (set while the
    /// access log is on); `None` passes the client's as it came.
    pub request_id: Option<&'a str>,
}

/// Appends the value of the one Cookie field to forward: every pair of
/// `values` but limpet's cookie, joined with `; `, the application's pairs byte
/// for byte (text or not). Returns whether anything was written, and whether
/// limpet's cookie was there (taken out).
pub fn write_cookie<'v>(
    out: &mut Vec<u8>,
    values: impl Iterator<Item = &'v [u8]>,
    strip: Option<&str>,
) -> (bool, bool) {
    let strip = strip.map(str::as_bytes);
    let start = out.len();
    let mut stripped = false;
    for value in values {
        for pair in value.split(|&b| b == b';') {
            let pair = pair.trim_ascii_start();
            if pair.is_empty() {
                continue;
            }
            if strip.is_some_and(|name| affinity::is_named_bytes(pair, name)) {
                stripped = true;
                continue;
            }
            if out.len() > start {
                out.extend_from_slice(b"; ");
            }
            out.extend_from_slice(pair);
        }
    }
    (out.len() > start, stripped)
}

/// Whether `value` holds limpet's cookie `strip`.
pub fn mentions_cookie(value: &[u8], strip: Option<&str>) -> bool {
    strip.is_some_and(|name| {
        value
            .split(|&b| b == b';')
            .any(|pair| affinity::is_named_bytes(pair.trim_ascii_start(), name.as_bytes()))
    })
}

/// Appends the X-Forwarded-For value: the client's entries that are text,
/// then the peer's address.
pub fn write_forwarded_for<'v>(
    out: &mut Vec<u8>,
    values: impl Iterator<Item = &'v [u8]>,
    client: IpAddr,
) {
    for value in values {
        if affinity::header_text(value).is_some() {
            out.extend_from_slice(value);
            out.extend_from_slice(b", ");
        }
    }
    push_ip(out, client);
}

/// The X-Forwarded-Proto value.
pub fn forwarded_proto(tls: bool) -> &'static str {
    if tls {
        "https"
    } else {
        "http"
    }
}

/// Removes what [`request_field`] or [`response_field`] (`field`) does not
/// pass, and every field a Connection field names.
fn remove_hop_by_hop(headers: &mut HeaderMap, field: fn(&[u8]) -> Field, keep: &[Field]) {
    let mut named: Vec<Vec<u8>> = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        for token in tokens(value.as_bytes()).filter(|t| names_a_field(t)) {
            named.push(token.to_ascii_lowercase());
        }
    }
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            let kind = field(name.as_str().as_bytes());
            let passes = kind == Field::Pass || keep.contains(&kind);
            !passes || named.iter().any(|n| n == name.as_str().as_bytes())
        })
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
}

/// The request's fields for the backend, on a `HeaderMap`: the header policy,
/// the same as `crate::h1::head::write_request` writes.
pub fn rewrite_request(headers: &mut HeaderMap, fwd: &Forwarding<'_>) {
    let xff: Vec<u8> = {
        let mut v = Vec::with_capacity(24);
        write_forwarded_for(
            &mut v,
            headers
                .get_all(X_FORWARDED_FOR)
                .iter()
                .map(|v| v.as_bytes()),
            fwd.client,
        );
        v
    };
    let cookies = headers.get_all(header::COOKIE).iter().count();
    let rewrite_cookie = cookies > 1
        || headers
            .get(header::COOKIE)
            .is_some_and(|v| mentions_cookie(v.as_bytes(), fwd.strip_cookie));
    let cookie = rewrite_cookie.then(|| {
        let mut v = Vec::new();
        let values = headers.get_all(header::COOKIE).iter().map(|v| v.as_bytes());
        write_cookie(&mut v, values, fwd.strip_cookie)
            .0
            .then_some(v)
    });
    remove_hop_by_hop(
        headers,
        request_field,
        &[
            Field::Cookie,
            Field::Host,
            Field::ContentLength,
            Field::XForwardedFor,
            Field::RequestId,
        ],
    );
    if let Some(id) = fwd.request_id.and_then(|id| HeaderValue::from_str(id).ok()) {
        headers.insert(HeaderName::from_static(REQUEST_ID), id);
    }
    if let Some(cookie) = cookie {
        headers.remove(header::COOKIE);
        if let Some(v) = cookie.and_then(|v| HeaderValue::from_maybe_shared(v).ok()) {
            headers.insert(header::COOKIE, v);
        }
    }
    let host = fwd
        .host
        .and_then(|h| HeaderValue::from_bytes(h).ok())
        .unwrap_or(HeaderValue::from_static(""));
    headers.insert(header::HOST, host.clone());
    match fwd.host {
        Some(_) => {
            headers.insert(HeaderName::from_static("x-forwarded-host"), host);
        }
        None => {
            headers.remove("x-forwarded-host");
        }
    }
    if let Ok(v) = HeaderValue::from_maybe_shared(xff) {
        headers.insert(X_FORWARDED_FOR, v);
    }
    headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static(forwarded_proto(fwd.tls)),
    );
    set_failover_from(headers, fwd.failover_from);
}

/// Sets `x-limpet-failover-from` to the backend failed over from, or removes it.
pub fn set_failover_from(headers: &mut HeaderMap, from: Option<&str>) {
    match from.and_then(|from| HeaderValue::from_str(from).ok()) {
        Some(v) => {
            headers.insert(HeaderName::from_static(FAILOVER_FROM), v);
        }
        None => {
            headers.remove(FAILOVER_FROM);
        }
    }
}

/// The response's fields for an HTTP/2 client: no hop-by-hop fields (HTTP/2
/// has no connection-specific fields at all), the pin's Set-Cookie added, and
/// the route's Strict-Transport-Security in place of the backend's.
pub fn rewrite_response(headers: &mut HeaderMap, set_cookie: Option<String>, hsts: Option<&str>) {
    remove_hop_by_hop(headers, response_field, &[Field::ContentLength]);
    if let Some(v) = hsts.and_then(|h| HeaderValue::from_str(h).ok()) {
        headers.insert(header::STRICT_TRANSPORT_SECURITY, v);
    }
    if let Some(v) = set_cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        headers.append(header::SET_COOKIE, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_ip_writes_what_display_writes() {
        let ips = [
            "0.0.0.0",
            "1.2.3.4",
            "9.10.99.100",
            "127.0.0.1",
            "255.255.255.255",
            "::1",
            "2001:db8::7",
            "::ffff:10.0.0.1",
        ];
        for text in ips {
            let ip: IpAddr = text.parse().unwrap();
            let mut out = b"x, ".to_vec();
            push_ip(&mut out, ip);
            assert_eq!(String::from_utf8(out).unwrap(), format!("x, {ip}"));
        }
    }

    #[test]
    fn reads_the_keep_alive_timeout() {
        assert_eq!(keep_alive_timeout(b"timeout=5, max=100"), Some(5));
        assert_eq!(keep_alive_timeout(b"max=100, Timeout = 2"), Some(2));
        for none in [&b"max=100"[..], b"timeout=", b"timeout=x", b"timeout", b""] {
            assert_eq!(keep_alive_timeout(none), None, "{none:?}");
        }
    }

    #[test]
    fn framing_names_with_underscores_are_dropped() {
        for name in ["Transfer_Encoding", "content_length", "CONTENT_LENGTH"] {
            assert_eq!(request_field(name.as_bytes()), Field::Drop, "{name}");
        }
        assert_eq!(request_field(b"Content-Length"), Field::ContentLength);
    }

    #[test]
    fn the_header_map_writer_sets_or_passes_x_request_id() {
        let client = || {
            let mut h = HeaderMap::new();
            h.append(REQUEST_ID, HeaderValue::from_static("a b"));
            h.append(REQUEST_ID, HeaderValue::from_static("c"));
            h
        };
        let mut fwd = Forwarding {
            host: None,
            strip_cookie: None,
            client: "10.0.0.9".parse().unwrap(),
            tls: false,
            failover_from: None,
            request_id: Some("0123abcd"),
        };
        let forwarded_ids = |fwd: &Forwarding<'_>| -> Vec<Vec<u8>> {
            let mut headers = client();
            rewrite_request(&mut headers, fwd);
            let ids = headers.get_all(REQUEST_ID).iter();
            ids.map(|v| v.as_bytes().to_vec()).collect()
        };
        assert_eq!(forwarded_ids(&fwd), [b"0123abcd"]);
        fwd.request_id = None;
        assert_eq!(forwarded_ids(&fwd), [&b"a b"[..], b"c"]);
    }

    #[test]
    fn the_header_map_writer_follows_the_policy() {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("ignored"));
        headers.insert("connection", HeaderValue::from_static("x-secret"));
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("te", HeaderValue::from_static("trailers"));
        headers.insert("x-forwarded-for", HeaderValue::from_static("1.1.1.1"));
        headers.insert(FAILOVER_FROM, HeaderValue::from_static("forged"));
        headers.insert(
            "cookie",
            HeaderValue::from_bytes(b"a=\xe9; limpet=zzz").unwrap(),
        );
        headers.insert("accept", HeaderValue::from_static("*/*"));
        let fwd = Forwarding {
            host: Some(b"shop"),
            strip_cookie: Some("limpet"),
            client: "10.0.0.9".parse().unwrap(),
            tls: true,
            failover_from: None,
            request_id: None,
        };
        rewrite_request(&mut headers, &fwd);
        let mut seen: Vec<(String, Vec<u8>)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect();
        seen.sort();
        let expect: Vec<(String, Vec<u8>)> = [
            ("accept", &b"*/*"[..]),
            ("cookie", b"a=\xe9"),
            ("host", b"shop"),
            ("x-forwarded-for", b"1.1.1.1, 10.0.0.9"),
            ("x-forwarded-host", b"shop"),
            ("x-forwarded-proto", b"https"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_vec()))
        .collect();
        assert_eq!(seen, expect);
    }
}
