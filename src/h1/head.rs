//! Request and response heads as the HTTP/1 engine sees them: parsed in place
//! with httparse (fields are offsets into the read buffer, nothing is copied),
//! checked strictly (RFC 9112: an ambiguous message is a 400, never
//! forwarded), and written back out under the header policy of
//! `crate::flow::policy`.

use std::mem::MaybeUninit;
use std::ops::Range;

use crate::affinity::HeaderLookup;
use crate::error::ProxyError;
use crate::flow::policy::{self, tokens, write_line, Field, Forwarding};
use crate::uri::{self, MAX_FIELDS};

#[derive(Debug, Clone)]
pub struct FieldAt {
    pub name: Range<usize>,
    pub value: Range<usize>,
    pub kind: Field,
}

/// How a request's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestBody {
    None,
    Length(u64),
    Chunked,
}

/// A request head in the buffer `buf[..len]`.
#[derive(Debug)]
pub struct RequestHead {
    /// Bytes of the head, final empty line included.
    pub len: usize,
    pub method: Range<usize>,
    /// The request target as sent (for the access log).
    pub target: Range<usize>,
    /// What the backend gets as its target: the origin-form path and query
    /// (an absolute-form target's after its authority; empty for `/`).
    pub origin: Range<usize>,
    /// The authority of an absolute-form target, which wins over Host
    /// (RFC 9112, section 3.2.2).
    pub authority: Option<Range<usize>>,
    pub fields: Vec<FieldAt>,
    /// The index in `fields` of the one Host field.
    pub host_field: Option<usize>,
    pub http10: bool,
    pub body: RequestBody,
    /// The client keeps the connection open after this request.
    pub keep_alive: bool,
    /// `Expect: 100-continue`: limpet says 100 Continue before reading the body.
    pub expect_continue: bool,
    /// The Upgrade field's value, when the request asks to switch protocols.
    pub upgrade: Option<Range<usize>>,
}

/// The outcome of parsing what has arrived of a request head.
#[derive(Debug)]
pub enum Parsed {
    Complete(RequestHead),
    /// More bytes are needed.
    Partial,
    /// Answered by limpet (400, or 417 for an unknown expectation) and the
    /// connection closed.
    Invalid(ProxyError),
}

impl RequestHead {
    pub fn method<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        &buf[self.method.clone()]
    }

    /// The request target as sent.
    pub fn target<'b>(&self, buf: &'b [u8]) -> &'b str {
        text(&buf[self.target.clone()])
    }

    /// The path without the query, as routing sees it.
    pub fn path<'b>(&self, buf: &'b [u8]) -> &'b str {
        crate::flow::routed_path(text(&buf[self.origin.clone()]))
    }

    /// The host the request is routed and forwarded by (none for an empty
    /// Host).
    pub fn host<'b>(&self, buf: &'b [u8]) -> Option<&'b [u8]> {
        match (&self.authority, self.host_field) {
            (Some(a), _) => Some(&buf[a.clone()]),
            (None, Some(i)) => Some(&buf[self.fields[i].value.clone()]).filter(|h| !h.is_empty()),
            (None, None) => None,
        }
    }

    /// The origin-form target the backend gets (`/` for an empty one).
    pub fn origin<'b>(&self, buf: &'b [u8]) -> &'b str {
        match text(&buf[self.origin.clone()]) {
            "" => "/",
            origin => origin,
        }
    }

    pub fn is_head(&self, buf: &[u8]) -> bool {
        self.method(buf) == b"HEAD"
    }
}

/// Bytes checked to be visible ASCII as text (an empty string otherwise, which
/// never happens for what the parser let through).
fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap_or("")
}

fn bad(why: &'static str) -> Parsed {
    Parsed::Invalid(ProxyError::BadRequest(why))
}

/// Parses the request head at the start of `buf`.
pub fn parse_request(buf: &[u8]) -> Parsed {
    // Uninitialised: zeroing 100 slots would cost more than parsing.
    let mut slots = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_FIELDS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => return Parsed::Invalid(ProxyError::HeadTooLarge),
        Err(_) => return bad("malformed request head"),
    };
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return bad("malformed request line");
    };
    let at = |s: &[u8]| {
        let start = s.as_ptr() as usize - buf.as_ptr() as usize;
        start..start + s.len()
    };
    let target_at = at(target.as_bytes());
    let (origin, authority) = match split_target(method, target) {
        Ok((origin, authority)) => (at(origin.as_bytes()), authority.map(|a| at(a.as_bytes()))),
        Err(why) => return bad(why),
    };
    let http10 = version == 0;
    let mut head = RequestHead {
        len,
        method: at(method.as_bytes()),
        target: target_at,
        origin,
        authority,
        fields: Vec::with_capacity(req.headers.len()),
        host_field: None,
        http10,
        body: RequestBody::None,
        keep_alive: !http10,
        expect_continue: false,
        upgrade: None,
    };
    let mut content_length = None;
    let mut chunked = None;
    let mut asks_upgrade = false;
    for h in req.headers.iter() {
        let kind = policy::request_field(h.name.as_bytes());
        match kind {
            Field::Host => {
                if head.host_field.is_some() {
                    return bad("more than one Host field");
                }
                // Empty is what a client sends for a target without an
                // authority (RFC 9110, section 7.2).
                if !h.value.is_empty() && !uri::is_authority(h.value) {
                    return bad("invalid Host");
                }
                head.host_field = Some(head.fields.len());
            }
            Field::ContentLength => match (content_length, parse_length(h.value)) {
                (_, None) => return bad("invalid Content-Length"),
                (Some(seen), Some(n)) if seen != n => return bad("conflicting Content-Length"),
                (_, Some(n)) => content_length = Some(n),
            },
            Field::TransferEncoding => {
                // Only `chunked`, once: anything else is a coding limpet cannot
                // frame by, or an attempt to make two parsers disagree.
                for token in tokens(h.value) {
                    match (chunked, token.eq_ignore_ascii_case(b"chunked")) {
                        (None, true) => chunked = Some(true),
                        _ => return bad("unsupported Transfer-Encoding"),
                    }
                }
                if chunked.is_none() {
                    return bad("empty Transfer-Encoding");
                }
            }
            Field::Connection => {
                for token in tokens(h.value) {
                    if token.eq_ignore_ascii_case(b"close") {
                        head.keep_alive = false;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") && http10 {
                        head.keep_alive = true;
                    } else if token.eq_ignore_ascii_case(b"upgrade") {
                        asks_upgrade = true;
                    }
                }
            }
            Field::Expect if !http10 => {
                if !h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue") {
                    return Parsed::Invalid(ProxyError::Expectation);
                }
                head.expect_continue = true;
            }
            Field::Upgrade if !http10 => head.upgrade = Some(at(h.value)),
            _ => {}
        }
        head.fields.push(FieldAt {
            name: at(h.name.as_bytes()),
            value: at(h.value),
            kind,
        });
    }
    if head.host_field.is_none() && !http10 {
        return bad("HTTP/1.1 request without Host");
    }
    if !asks_upgrade {
        head.upgrade = None;
    } else if head.upgrade.is_some() && !head.keep_alive {
        // Connection: close, upgrade: the client wants neither.
        head.upgrade = None;
    } else if let Some(protocol) = &head.upgrade {
        // An upgrade to h2c is never passed on: a backend that took it
        // would speak HTTP/2 through a tunnel past limpet's routing and
        // checks (the "h2c smuggling" of proxies that forward it). limpet
        // itself serves h2c only by prior knowledge.
        if tokens(&buf[protocol.clone()]).any(|t| t.eq_ignore_ascii_case(b"h2c")) {
            head.upgrade = None;
        }
    }
    head.body = match (chunked, content_length) {
        (Some(_), Some(_)) => return bad("both Transfer-Encoding and Content-Length"),
        (Some(_), None) if http10 => return bad("Transfer-Encoding in HTTP/1.0"),
        (Some(_), None) => RequestBody::Chunked,
        (None, Some(0)) | (None, None) => RequestBody::None,
        (None, Some(n)) => RequestBody::Length(n),
    };
    if head.body == RequestBody::None {
        head.expect_continue = false;
    }
    mark_connection_named(buf, &mut head.fields);
    Parsed::Complete(head)
}

/// The origin-form part of a request target and, for an absolute-form one,
/// its authority.
fn split_target<'t>(
    method: &str,
    target: &'t str,
) -> Result<(&'t str, Option<&'t str>), &'static str> {
    if !uri::is_target_text(target.as_bytes()) {
        return Err("invalid character in the request target");
    }
    if target.starts_with('/') {
        return Ok((target, None));
    }
    if target == "*" {
        return match method {
            "OPTIONS" => Ok((target, None)),
            _ => Err("asterisk-form target"),
        };
    }
    let lower = |n: usize| target.get(..n).map(str::to_ascii_lowercase);
    let rest = if lower(7).as_deref() == Some("http://") {
        &target[7..]
    } else if lower(8).as_deref() == Some("https://") {
        &target[8..]
    } else {
        // authority-form (CONNECT) and anything else: limpet is no forward proxy.
        return Err("unsupported request target");
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..end];
    if authority.is_empty() || !uri::is_authority(authority.as_bytes()) {
        return Err("invalid authority");
    }
    Ok((&rest[end..], Some(authority)))
}

/// Marks the fields that a Connection field names as dropped.
fn mark_connection_named(buf: &[u8], fields: &mut [FieldAt]) {
    for i in 0..fields.len() {
        if fields[i].kind != Field::Connection {
            continue;
        }
        let value = fields[i].value.clone();
        for token in tokens(&buf[value]).filter(|t| policy::names_a_field(t)) {
            for f in fields.iter_mut() {
                if f.kind == Field::Pass && buf[f.name.clone()].eq_ignore_ascii_case(token) {
                    f.kind = Field::Drop;
                }
            }
        }
    }
}

fn parse_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 18 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(value.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

/// A parsed request head read through [`HeaderLookup`], for reading pins.
pub struct Lookup<'a> {
    pub buf: &'a [u8],
    pub fields: &'a [FieldAt],
}

impl HeaderLookup for Lookup<'_> {
    fn values<'a>(&'a self, name: &'static str) -> impl Iterator<Item = &'a [u8]> + 'a {
        let kind = policy::request_field(name.as_bytes());
        self.fields
            .iter()
            .filter(move |f| {
                f.kind == kind
                    && (kind != Field::Pass
                        || self.buf[f.name.clone()].eq_ignore_ascii_case(name.as_bytes()))
            })
            .map(|f| &self.buf[f.value.clone()])
    }
}

/// Writes the request for the backend: the request line in HTTP/1.1 with an
/// origin-form target, the fields the policy passes, the Host the request was
/// routed by, one Content-Length, and the fields limpet adds.
pub fn write_request(out: &mut Vec<u8>, buf: &[u8], head: &RequestHead, fwd: &Forwarding<'_>) {
    out.extend_from_slice(&buf[head.method.clone()]);
    out.push(b' ');
    if head.origin.is_empty() || buf[head.origin.start] == b'?' {
        out.push(b'/');
    }
    out.extend_from_slice(&buf[head.origin.clone()]);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let host = fwd.host.unwrap_or_default();
    let mut cookie_written = false;
    let mut length_written = false;
    for f in &head.fields {
        let name = &buf[f.name.clone()];
        match f.kind {
            Field::Pass => write_line(out, name, &buf[f.value.clone()]),
            Field::RequestId if fwd.request_id.is_none() => {
                write_line(out, name, &buf[f.value.clone()])
            }
            Field::Host => write_line(out, name, host),
            Field::ContentLength if !length_written => {
                length_written = true;
                write_line(out, name, &buf[f.value.clone()]);
            }
            Field::Cookie if !cookie_written => {
                cookie_written = true;
                let values = || {
                    (head.fields.iter())
                        .filter(|f| f.kind == Field::Cookie)
                        .map(|f| &buf[f.value.clone()])
                };
                policy::write_cookie_field(out, b"Cookie", values, fwd.strip_cookie);
            }
            _ => {}
        }
    }
    if head.host_field.is_none() {
        write_line(out, b"Host", host);
    }
    if head.body == RequestBody::Chunked {
        out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
    }
    if let Some(protocol) = &head.upgrade {
        out.extend_from_slice(b"Connection: upgrade\r\n");
        write_line(out, b"Upgrade", &buf[protocol.clone()]);
    }
    if let Some(host) = fwd.host {
        write_line(out, b"X-Forwarded-Host", host);
    }
    out.extend_from_slice(b"X-Forwarded-For: ");
    let xff = head
        .fields
        .iter()
        .filter(|f| f.kind == Field::XForwardedFor)
        .map(|f| &buf[f.value.clone()]);
    policy::write_forwarded_for(out, xff, fwd.client);
    out.extend_from_slice(b"\r\nX-Forwarded-Proto: ");
    out.extend_from_slice(policy::forwarded_proto(fwd.tls).as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(from) = fwd.failover_from {
        write_line(out, policy::FAILOVER_FROM.as_bytes(), from.as_bytes());
    }
    if let Some(id) = fwd.request_id {
        write_line(out, b"X-Request-Id", id.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// How a response's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 1xx, 204, 304).
    Empty,
    Length(u64),
    Chunked,
    /// Until the backend closes the connection.
    UntilClose,
}

/// A backend's response head.
#[derive(Debug)]
pub struct ResponseHead {
    pub len: usize,
    pub status: u16,
    pub reason: Range<usize>,
    pub fields: Vec<FieldAt>,
    pub framing: Framing,
    /// The backend keeps the connection open after this response.
    pub keep_alive: bool,
    /// For how long, in seconds, when it said (`Keep-Alive: timeout=N`).
    pub keep_alive_timeout: Option<u64>,
}

impl ResponseHead {
    /// Whether field `f` reaches the client: not the hop-by-hop ones nor
    /// limpet's `x-session-replica`; Upgrade only with a 101; Transfer-Encoding
    /// only when the chunked body is relayed as it is (not `dechunk`ed: for
    /// an HTTP/1.0 client, or as HTTP/2 DATA frames); Content-Length only when
    /// it frames the body; the backend's Strict-Transport-Security only when
    /// the route sets none (`hsts`).
    pub fn passes(&self, f: &FieldAt, buf: &[u8], hsts: bool, dechunk: bool) -> bool {
        match f.kind {
            Field::Drop | Field::Connection | Field::SessionReplica => false,
            Field::Upgrade => self.status == 101,
            // An empty Transfer-Encoding field says nothing, and a client
            // that reads only the last field would miss the chunking.
            Field::TransferEncoding => {
                self.framing == Framing::Chunked
                    && !dechunk
                    && tokens(&buf[f.value.clone()]).next().is_some()
            }
            // Transfer-Encoding frames the body when there is one: a
            // Content-Length beside it goes (RFC 9112, section 6.3).
            Field::ContentLength => matches!(self.framing, Framing::Empty | Framing::Length(_)),
            _ => !hsts || !buf[f.name.clone()].eq_ignore_ascii_case(b"strict-transport-security"),
        }
    }

    /// The value of the response's `x-session-replica`, if it has one.
    pub fn session_replica<'b>(&self, buf: &'b [u8]) -> Option<&'b [u8]> {
        self.fields
            .iter()
            .find(|f| f.kind == Field::SessionReplica)
            .map(|f| &buf[f.value.clone()])
    }
}

/// Why a backend's response head is unusable.
#[derive(Debug, thiserror::Error)]
pub enum BadResponse {
    #[error("malformed response head: {0}")]
    Parse(#[from] httparse::Error),
    #[error("status below 100")]
    Status,
    #[error("invalid or conflicting Content-Length")]
    Length,
    #[error("unexpected 101 Switching Protocols")]
    Switching,
}

/// Parses the response head at the start of `buf`; `Ok(None)` until it is all
/// there. `head_request`: the request was HEAD (the response has no body);
/// `upgrade`: the request asked to switch protocols (a 101 may come).
pub fn parse_response(
    buf: &[u8],
    head_request: bool,
    upgrade: bool,
) -> Result<Option<ResponseHead>, BadResponse> {
    let mut slots = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_FIELDS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut slots);
    let len = match parsed? {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => return Ok(None),
    };
    let at = |s: &[u8]| {
        let start = s.as_ptr() as usize - buf.as_ptr() as usize;
        start..start + s.len()
    };
    let status = resp.code.unwrap_or(0);
    // Three digits, but not a status (hyper's client refuses it too).
    if status < 100 {
        return Err(BadResponse::Status);
    }
    if status == 101 && !upgrade {
        return Err(BadResponse::Switching);
    }
    let mut keep_alive = resp.version == Some(1);
    let mut keep_alive_timeout = None;
    let mut length = None;
    let mut chunked = None;
    let mut fields = Vec::with_capacity(resp.headers.len());
    for h in resp.headers.iter() {
        let kind = policy::response_field(h.name.as_bytes());
        match kind {
            Field::ContentLength => match (length, parse_length(h.value)) {
                (Some(seen), Some(n)) if seen != n => return Err(BadResponse::Length),
                (_, None) => return Err(BadResponse::Length),
                (_, n) => length = n,
            },
            // The last coding of all the fields decides (RFC 9112, section
            // 6.3); a field with none (empty) adds nothing to the list, but
            // Transfer-Encoding is there (RFC 9110, section 5.6.1).
            Field::TransferEncoding => match tokens(h.value).last() {
                Some(t) => chunked = Some(t.eq_ignore_ascii_case(b"chunked")),
                None => chunked = Some(chunked.unwrap_or(false)),
            },
            Field::Connection if tokens(h.value).any(|t| t.eq_ignore_ascii_case(b"close")) => {
                keep_alive = false;
            }
            Field::Drop if h.name.eq_ignore_ascii_case("keep-alive") => {
                keep_alive_timeout = policy::keep_alive_timeout(h.value);
            }
            _ => {}
        }
        fields.push(FieldAt {
            name: at(h.name.as_bytes()),
            value: at(h.value),
            kind,
        });
    }
    mark_connection_named(buf, &mut fields);
    let framing = if head_request || (100..200).contains(&status) || status == 204 || status == 304
    {
        Framing::Empty
    } else {
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) | (None, None) => Framing::UntilClose,
            (None, Some(n)) => Framing::Length(n),
        }
    };
    if framing == Framing::UntilClose || status == 101 {
        keep_alive = false;
    }
    Ok(Some(ResponseHead {
        len,
        status,
        // An absent reason phrase is httparse's static "", not a slice of
        // `buf`: its position is no offset into `buf`.
        reason: match resp.reason {
            Some(reason) if !reason.is_empty() => at(reason.as_bytes()),
            _ => 0..0,
        },
        fields,
        framing,
        keep_alive,
        keep_alive_timeout,
    }))
}

/// How the response reaches the client.
#[derive(Debug, Clone, Copy)]
pub struct Delivery {
    /// The client connection closes after this response.
    pub close: bool,
    /// The client speaks HTTP/1.0: keep-alive is said explicitly, and a
    /// chunked body is sent decoded, delimited by the close.
    pub http10: bool,
    /// The body is decoded from chunks (for an HTTP/1.0 client).
    pub dechunk: bool,
}

/// Writes the response for the client: the backend's fields but the hop-by-hop
/// ones (Transfer-Encoding stays when the chunked body is relayed as it is),
/// the pin's Set-Cookie, the route's Strict-Transport-Security (in place of
/// the backend's), and what the connection does next.
pub fn write_response(
    out: &mut Vec<u8>,
    buf: &[u8],
    head: &ResponseHead,
    set_cookie: Option<&str>,
    hsts: Option<&str>,
    delivery: Delivery,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa::Buffer::new().format(head.status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(&buf[head.reason.clone()]);
    out.extend_from_slice(b"\r\n");
    for f in &head.fields {
        if head.passes(f, buf, hsts.is_some(), delivery.dechunk) {
            write_line(out, &buf[f.name.clone()], &buf[f.value.clone()]);
        }
    }
    if let Some(cookie) = set_cookie {
        write_line(out, b"Set-Cookie", cookie.as_bytes());
    }
    if let Some(hsts) = hsts {
        write_line(out, b"Strict-Transport-Security", hsts.as_bytes());
    }
    if head.status == 101 {
        out.extend_from_slice(b"Connection: upgrade\r\n");
    } else if delivery.close {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if delivery.http10 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes limpet's own answer: status, a short plain-text body (none for
/// HEAD, whose answer says only how long the body would be), and what the
/// connection does next.
pub fn write_answer(out: &mut Vec<u8>, err: &ProxyError, head_request: bool, delivery: Delivery) {
    let status = err.status();
    let body = err.body();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: ");
    out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
    if let Some(location) = err.location() {
        out.extend_from_slice(b"\r\nlocation: ");
        out.extend_from_slice(location.as_bytes());
    }
    if delivery.close {
        out.extend_from_slice(b"\r\nconnection: close");
    } else if delivery.http10 {
        out.extend_from_slice(b"\r\nconnection: keep-alive");
    }
    out.extend_from_slice(b"\r\n\r\n");
    if !head_request {
        out.extend_from_slice(body.as_bytes());
    }
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(buf: &[u8]) -> RequestHead {
        match parse_request(buf) {
            Parsed::Complete(h) => h,
            other => panic!("{other:?}"),
        }
    }

    fn forwarded(raw: &str, strip: Option<&str>) -> String {
        let head = complete(raw.as_bytes());
        let mut out = Vec::new();
        let fwd = Forwarding {
            host: head.host(raw.as_bytes()),
            strip_cookie: strip,
            client: "10.0.0.9".parse().unwrap(),
            tls: false,
            failover_from: None,
            request_id: None,
        };
        write_request(&mut out, raw.as_bytes(), &head, &fwd);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn limpets_request_id_replaces_the_clients_and_none_passes_it() {
        let raw = "GET / HTTP/1.1\r\nHost: x\r\nX-Request-Id: a b\r\nx-request-id: c\r\n\r\n";
        let head = complete(raw.as_bytes());
        let mut fwd = Forwarding {
            host: head.host(raw.as_bytes()),
            strip_cookie: None,
            client: "10.0.0.9".parse().unwrap(),
            tls: false,
            failover_from: None,
            request_id: Some("0123abcd"),
        };
        let mut out = Vec::new();
        write_request(&mut out, raw.as_bytes(), &head, &fwd);
        let text = String::from_utf8(out).unwrap();
        let ids: Vec<&str> = text
            .lines()
            .filter(|l| l.to_ascii_lowercase().starts_with("x-request-id:"))
            .collect();
        assert_eq!(ids, ["X-Request-Id: 0123abcd"], "{text}");
        fwd.request_id = None;
        let mut out = Vec::new();
        write_request(&mut out, raw.as_bytes(), &head, &fwd);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("X-Request-Id: a b\r\nx-request-id: c\r\n"),
            "{text}"
        );
    }

    #[test]
    fn parses_what_http1_allows() {
        let head = complete(b"POST /a?b=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello");
        assert_eq!(head.len, 52);
        assert_eq!(head.body, RequestBody::Length(5));
        assert_eq!(head.path(b"POST /a?b=1 HTTP/1.1"), "/a");
        assert!(matches!(
            parse_request(b"GET / HTTP/1.1\r\nHost: x\r\n"),
            Parsed::Partial
        ));
        let empty = complete(b"GET / HTTP/1.1\r\nHost: \r\n\r\n");
        assert_eq!(empty.host(b"GET / HTTP/1.1\r\nHost: \r\n\r\n"), None);
        let ten = complete(b"GET / HTTP/1.0\r\n\r\n");
        assert!(ten.http10 && !ten.keep_alive && ten.host_field.is_none());
        let chunked = complete(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(chunked.body, RequestBody::Chunked);
        let raw = b"GET http://shop.example:8080/p?q HTTP/1.1\r\nHost: other\r\n\r\n";
        let absolute = complete(raw);
        assert_eq!(absolute.host(raw), Some(&b"shop.example:8080"[..]));
        assert_eq!(absolute.path(raw), "/p");
        let raw = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
        assert!(complete(raw).upgrade.is_some());
        let h2c = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n\
                    Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n";
        assert!(complete(h2c).upgrade.is_none());
        assert!(
            complete(
                b"PUT / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n"
            )
            .expect_continue
        );
    }

    #[test]
    fn refuses_ambiguous_requests() {
        for bad in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nHost: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: \r\n\r\n",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"CONNECT x:443 HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET * HTTP/1.1\r\nHost: x\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GARBAGE\r\n\r\n",
        ] {
            assert!(
                matches!(parse_request(bad), Parsed::Invalid(ProxyError::BadRequest(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(matches!(
            parse_request(b"PUT / HTTP/1.1\r\nHost: x\r\nExpect: tea\r\n\r\n"),
            Parsed::Invalid(ProxyError::Expectation)
        ));
    }

    #[test]
    fn rewrites_the_request_for_the_backend() {
        let out = forwarded(
            "GET /x HTTP/1.1\r\nhost: shop\r\nConnection: close, X-Secret\r\nX-Secret: 1\r\n\
             Keep-Alive: 5\r\nX-Forwarded-For: 1.1.1.1\r\nX-Forwarded-Proto: https\r\n\
             x-limpet-failover-from: forged\r\nTransfer_Encoding: chunked\r\n\
             Content-Length: 0\r\ncontent-length: 0\r\nAccept: */*\r\n\r\n",
            None,
        );
        assert_eq!(
            out,
            "GET /x HTTP/1.1\r\nhost: shop\r\nContent-Length: 0\r\nAccept: */*\r\n\
             X-Forwarded-Host: shop\r\nX-Forwarded-For: 1.1.1.1, 10.0.0.9\r\n\
             X-Forwarded-Proto: http\r\n\r\n"
        );
    }

    #[test]
    fn forwards_an_absolute_form_target_by_its_authority() {
        let out = forwarded(
            "GET http://shop.example?q=1 HTTP/1.1\r\nHost: evil.example\r\n\r\n",
            None,
        );
        assert!(
            out.starts_with("GET /?q=1 HTTP/1.1\r\nHost: shop.example\r\n"),
            "{out}"
        );
        assert!(out.contains("X-Forwarded-Host: shop.example\r\n"), "{out}");
    }

    #[test]
    fn strips_limpet_cookie_and_joins_cookie_fields() {
        let raw = "GET / HTTP/1.1\r\nHost: x\r\nCookie: a=1; limpet=v; b=2\r\nCookie: c=3\r\n\r\n";
        assert!(forwarded(raw, Some("limpet")).contains("\r\nCookie: a=1; b=2; c=3\r\n"));
        let only = "GET / HTTP/1.1\r\nHost: x\r\nCookie: limpet=v\r\n\r\n";
        assert!(!forwarded(only, Some("limpet")).contains("Cookie"));
        let untouched = "GET / HTTP/1.1\r\nHost: x\r\nCookie: a=1;b=2\r\n\r\n";
        assert!(forwarded(untouched, Some("limpet")).contains("\r\nCookie: a=1;b=2\r\n"));
    }

    #[test]
    fn reads_pins_through_the_lookup() {
        let raw = b"GET / HTTP/1.1\r\nHost: x\r\nCOOKIE: a=1\r\nx-forwarded-for: 1.2.3.4\r\n\r\n";
        let head = complete(raw);
        let lookup = Lookup {
            buf: raw,
            fields: &head.fields,
        };
        assert_eq!(lookup.texts("cookie").collect::<Vec<_>>(), ["a=1"]);
        assert_eq!(
            lookup.texts("x-forwarded-for").collect::<Vec<_>>(),
            ["1.2.3.4"]
        );
    }

    #[test]
    fn frames_responses() {
        let framing = |raw: &str, head_req: bool| {
            parse_response(raw.as_bytes(), head_req, false)
                .unwrap()
                .map(|h| (h.framing, h.keep_alive))
        };
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", false),
            Some((Framing::Length(3), true))
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", true),
            Some((Framing::Empty, true))
        );
        assert_eq!(
            framing(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 3\r\n\r\n",
                false
            ),
            Some((Framing::Chunked, true))
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\n\r\n", false),
            Some((Framing::UntilClose, false))
        );
        assert_eq!(
            framing("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false),
            Some((Framing::Length(0), false))
        );
        assert_eq!(framing("HTTP/1.1 200 OK\r\n", false), None);
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX: a\0b\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            b"garbage\r\n\r\n",
        ] {
            assert!(
                parse_response(bad, false, false).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(parse_response(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", false, true).is_ok());
    }

    #[test]
    fn rewrites_the_response_for_the_client() {
        let raw = "HTTP/1.1 200 Fine\r\nConnection: keep-alive, X-Internal\r\nX-Internal: 1\r\n\
                   Keep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\
                   Content-Type: text/plain\r\n\r\n";
        let head = parse_response(raw.as_bytes(), false, false)
            .unwrap()
            .unwrap();
        let mut out = Vec::new();
        let delivery = Delivery {
            close: true,
            http10: false,
            dechunk: false,
        };
        write_response(
            &mut out,
            raw.as_bytes(),
            &head,
            Some("limpet=v; Path=/"),
            None,
            delivery,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 Fine\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\
             Set-Cookie: limpet=v; Path=/\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn answers_head_without_a_body() {
        let mut out = Vec::new();
        let delivery = Delivery {
            close: false,
            http10: false,
            dechunk: false,
        };
        write_answer(&mut out, &ProxyError::NoRoute, true, delivery);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"), "{text}");
        assert!(text.ends_with("content-length: 13\r\n\r\n"), "{text}");
    }
}
