//! The header policy of SPEC section 4, in one place for both engines: which
//! fields of a request or response pass, which are hop-by-hop or limpet's own,
//! and what limpet adds (X-Forwarded-*, `x-limpet-failover-from`, its cookie
//! stripped). Both engines send HTTP/1.1 to backends: `crate::h1::head` writes
//! a request from the client's HTTP/1 bytes, [`write_request_fields`] from an
//! HTTP/2 request's `HeaderMap`; `crate::h1::head::ResponseHead::passes`
//! says which response fields reach the client, whatever its protocol.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName};

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
fn write_cookie<'v>(
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

/// Writes the fields of an HTTP/2 request's `HeaderMap` for the backend as
/// HTTP/1.1 field lines, under the same policy as `crate::h1::head::write_request`:
/// Host first (the host the request was routed by), the fields that pass,
/// one Content-Length, one Cookie without limpet's cookie (split `cookie`
/// fields joined, RFC 9113 section 8.2.3), and the fields limpet adds. How the
/// body is framed (Transfer-Encoding) and the empty line that ends the head
/// are the caller's.
pub fn write_request_fields(out: &mut Vec<u8>, headers: &HeaderMap, fwd: &Forwarding<'_>) {
    write_line(out, b"host", fwd.host.unwrap_or_default());
    // HTTP/2 has no Connection field (h2 refuses a request with one), but
    // what one would name is dropped all the same.
    let named = connection_named(headers);
    let mut length_written = false;
    let mut cookie_written = false;
    for (name, value) in headers {
        let name = name.as_str().as_bytes();
        match request_field(name) {
            Field::Pass if !named.iter().any(|n| n == name) => {
                write_line(out, name, value.as_bytes())
            }
            Field::RequestId if fwd.request_id.is_none() => write_line(out, name, value.as_bytes()),
            Field::ContentLength if !length_written => {
                length_written = true;
                write_line(out, name, value.as_bytes());
            }
            Field::Cookie if !cookie_written => {
                cookie_written = true;
                let values = || headers.get_all(header::COOKIE).iter().map(|v| v.as_bytes());
                write_cookie_field(out, b"cookie", values, fwd.strip_cookie);
            }
            _ => {}
        }
    }
    if let Some(host) = fwd.host {
        write_line(out, b"x-forwarded-host", host);
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    let xff = headers.get_all(X_FORWARDED_FOR).into_iter();
    write_forwarded_for(out, xff.map(|v| v.as_bytes()), fwd.client);
    out.extend_from_slice(b"\r\nx-forwarded-proto: ");
    out.extend_from_slice(forwarded_proto(fwd.tls).as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(from) = fwd.failover_from {
        write_line(out, FAILOVER_FROM.as_bytes(), from.as_bytes());
    }
    if let Some(id) = fwd.request_id {
        write_line(out, REQUEST_ID.as_bytes(), id.as_bytes());
    }
}

/// The field names a Connection field names (lower case, as a `HeaderMap`
/// holds them); none, without an allocation, when there is no Connection.
fn connection_named(headers: &HeaderMap) -> Vec<Vec<u8>> {
    let mut named = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        for token in tokens(value.as_bytes()).filter(|t| names_a_field(t)) {
            named.push(token.to_ascii_lowercase());
        }
    }
    named
}

/// One Cookie field line, named `name`, for every Cookie field of a request
/// (`values` gives their values): limpet's cookie removed, the application's
/// pairs byte for byte, several fields joined. A lone field without limpet's
/// cookie passes exactly as it came, separators and all.
pub fn write_cookie_field<'v, I>(
    out: &mut Vec<u8>,
    name: &[u8],
    values: impl Fn() -> I,
    strip: Option<&str>,
) where
    I: Iterator<Item = &'v [u8]>,
{
    let start = out.len();
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    let (wrote, stripped) = write_cookie(out, values(), strip);
    let mut all = values();
    let first = all.next().unwrap_or_default();
    if all.next().is_none() && !stripped {
        out.truncate(start);
        write_line(out, name, first);
    } else if wrote {
        out.extend_from_slice(b"\r\n");
    } else {
        out.truncate(start);
    }
}

/// One HTTP/1.1 field line.
pub fn write_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::HeaderValue;

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

    /// The field lines [`write_request_fields`] writes, as (name, value).
    fn written(headers: &HeaderMap, fwd: &Forwarding<'_>) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        write_request_fields(&mut out, headers, fwd);
        assert!(out.ends_with(b"\r\n"));
        out[..out.len() - 1]
            .split(|&b| b == b'\n')
            .map(|line| {
                let line = line.strip_suffix(b"\r").expect("CRLF");
                let colon = line.iter().position(|&b| b == b':').expect("a colon");
                let name = String::from_utf8(line[..colon].to_vec()).unwrap();
                (name, line[colon + 2..].to_vec())
            })
            .collect()
    }

    #[test]
    fn split_cookie_fields_are_joined_without_limpets() {
        let mut headers = HeaderMap::new();
        headers.append("cookie", HeaderValue::from_static("a=1"));
        headers.append("cookie", HeaderValue::from_static("limpet=x"));
        headers.append("cookie", HeaderValue::from_static("b=2"));
        let mut fwd = Forwarding {
            host: None,
            strip_cookie: Some("limpet"),
            client: "10.0.0.9".parse().unwrap(),
            tls: false,
            failover_from: Some("app1"),
            request_id: None,
        };
        let cookies = |fwd: &Forwarding<'_>, headers: &HeaderMap| -> Vec<Vec<u8>> {
            let lines = written(headers, fwd).into_iter();
            lines
                .filter(|(n, _)| n == "cookie")
                .map(|(_, v)| v)
                .collect()
        };
        assert_eq!(cookies(&fwd, &headers), [b"a=1; b=2"]);
        let lines = written(&headers, &fwd);
        assert!(lines.contains(&(FAILOVER_FROM.to_string(), b"app1".to_vec())));
        assert!(lines.contains(&("host".to_string(), Vec::new())));
        // A lone field without limpet's cookie passes as it came.
        let mut lone = HeaderMap::new();
        lone.append("cookie", HeaderValue::from_static("a=1;b=2 ;"));
        fwd.strip_cookie = None;
        assert_eq!(cookies(&fwd, &lone), [b"a=1;b=2 ;"]);
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
            let lines = written(&client(), fwd);
            let ids = lines.into_iter().filter(|(name, _)| name == REQUEST_ID);
            ids.map(|(_, value)| value).collect()
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
        let mut seen = written(&headers, &fwd);
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
