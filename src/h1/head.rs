//! Request and response heads as the engine sees them: parsed in place with
//! httparse (fields are offsets into the read buffer, nothing is copied), sorted
//! into what the proxy needs to look at, and written back out rewritten per
//! SPEC section 4.
//!
//! A request the engine does not take on (see [`Parsed::Other`]) goes to hyper
//! untouched, with the bytes read so far.

use std::mem::MaybeUninit;
use std::ops::Range;

use crate::affinity::{self, HeaderLookup};

/// As many header fields as hyper accepts.
pub const MAX_FIELDS: usize = 100;

/// What a header field is to the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Passed on as it is.
    Other,
    Host,
    Cookie,
    XForwardedFor,
    ContentLength,
    TransferEncoding,
    Connection,
    /// Removed: hop-by-hop, named by Connection, or set by limpet itself.
    Drop,
}

#[derive(Debug, Clone)]
pub struct Field {
    pub name: Range<usize>,
    pub value: Range<usize>,
    pub kind: Kind,
}

/// A request head in the buffer `buf[..len]`.
#[derive(Debug)]
pub struct RequestHead {
    /// Bytes of the head, final empty line included.
    pub len: usize,
    pub method: Range<usize>,
    pub target: Range<usize>,
    pub fields: Vec<Field>,
    /// The index in `fields` of the Host field.
    pub host: usize,
    pub content_length: u64,
    /// The client asked to close the connection after this request.
    pub close: bool,
}

/// The outcome of parsing what has arrived of a request head.
#[derive(Debug)]
pub enum Parsed {
    Complete(RequestHead),
    /// More bytes are needed.
    Partial,
    /// Not for this engine: hyper answers it (HTTP/1.0, upgrades, `Expect`, a
    /// chunked body, absolute-form targets, malformed heads, ...).
    Other,
}

impl RequestHead {
    pub fn method<'b>(&self, buf: &'b [u8]) -> &'b str {
        text(&buf[self.method.clone()])
    }

    /// The request target, path and query (origin-form).
    pub fn target<'b>(&self, buf: &'b [u8]) -> &'b str {
        text(&buf[self.target.clone()])
    }

    /// The path without the query, as routing sees it.
    pub fn path<'b>(&self, buf: &'b [u8]) -> &'b str {
        let target = self.target(buf);
        target.split_once('?').map_or(target, |(path, _)| path)
    }

    pub fn host<'b>(&self, buf: &'b [u8]) -> &'b str {
        text(&buf[self.fields[self.host].value.clone()])
    }

    pub fn is_idempotent(&self, buf: &[u8]) -> bool {
        matches!(
            self.method(buf),
            "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE"
        )
    }

    pub fn is_head(&self, buf: &[u8]) -> bool {
        self.method(buf) == "HEAD"
    }
}

/// Bytes checked to be visible ASCII as text (an empty string otherwise, which
/// never happens for what the parser let through).
fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap_or("")
}

/// Parses the request head at the start of `buf`.
pub fn parse_request(buf: &[u8]) -> Parsed {
    // Uninitialised: zeroing 100 slots would cost more than parsing.
    let mut slots = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_FIELDS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    };
    let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
        return Parsed::Other;
    };
    if !target.starts_with('/') || !target.bytes().all(is_target_byte) {
        return Parsed::Other;
    }
    let at = |s: &[u8]| {
        let start = s.as_ptr() as usize - buf.as_ptr() as usize;
        start..start + s.len()
    };
    let mut head = RequestHead {
        len,
        method: at(method.as_bytes()),
        target: at(target.as_bytes()),
        fields: Vec::with_capacity(req.headers.len()),
        host: usize::MAX,
        content_length: 0,
        close: false,
    };
    let mut content_length = None;
    for h in req.headers.iter() {
        let kind = request_kind(h.name);
        match kind {
            Kind::Host => {
                if head.host != usize::MAX || affinity::header_text(h.value).is_none() {
                    return Parsed::Other;
                }
                head.host = head.fields.len();
            }
            Kind::ContentLength => match (content_length, parse_length(h.value)) {
                (_, None) => return Parsed::Other,
                (Some(seen), Some(n)) if seen != n => return Parsed::Other,
                (_, Some(n)) => content_length = Some(n),
            },
            Kind::TransferEncoding => return Parsed::Other,
            Kind::Connection => {
                for token in tokens(h.value) {
                    if token.eq_ignore_ascii_case(b"close") {
                        head.close = true;
                    } else if token.eq_ignore_ascii_case(b"upgrade") {
                        return Parsed::Other;
                    }
                }
            }
            _ => {}
        }
        if kind == Kind::Other
            && (h.name.eq_ignore_ascii_case("expect") || h.name.eq_ignore_ascii_case("upgrade"))
        {
            return Parsed::Other;
        }
        head.fields.push(Field {
            name: at(h.name.as_bytes()),
            value: at(h.value),
            kind,
        });
    }
    if head.host == usize::MAX {
        return Parsed::Other;
    }
    head.content_length = content_length.unwrap_or(0);
    drop_connection_named(buf, &mut head.fields);
    Parsed::Complete(head)
}

/// The request-target bytes the engine passes on as they are; anything else (a
/// byte hyper's URI parser may refuse) goes to hyper.
fn is_target_byte(b: u8) -> bool {
    (0x21..0x7f).contains(&b) && !b"\"<>\\^`{|}".contains(&b)
}

fn request_kind(name: &str) -> Kind {
    let is = |known: &str| name.eq_ignore_ascii_case(known);
    match name.len() {
        4 if is("host") => Kind::Host,
        6 if is("cookie") => Kind::Cookie,
        15 if is("x-forwarded-for") => Kind::XForwardedFor,
        16 if is("x-forwarded-host") => Kind::Drop,
        17 if is("x-forwarded-proto") => Kind::Drop,
        22 if is(crate::proxy::FAILOVER_FROM.as_str()) => Kind::Drop,
        _ => common_kind(name),
    }
}

/// Kinds that requests and responses share: framing, and the fixed hop-by-hop
/// set of SPEC section 4. One comparison per field at most (by length first).
fn common_kind(name: &str) -> Kind {
    let is = |known: &str| name.eq_ignore_ascii_case(known);
    match name.len() {
        14 if is("content-length") => Kind::ContentLength,
        17 if is("transfer-encoding") => Kind::TransferEncoding,
        10 if is("connection") => Kind::Connection,
        10 if is("keep-alive") => Kind::Drop,
        16 if is("proxy-connection") => Kind::Drop,
        18 if is("proxy-authenticate") => Kind::Drop,
        19 if is("proxy-authorization") => Kind::Drop,
        2 if is("te") => Kind::Drop,
        7 if is("trailer") || is("upgrade") => Kind::Drop,
        _ => Kind::Other,
    }
}

/// The comma-separated tokens of a field value, trimmed.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
}

/// Marks the fields that a Connection field names as dropped.
fn drop_connection_named(buf: &[u8], fields: &mut [Field]) {
    for i in 0..fields.len() {
        if fields[i].kind != Kind::Connection {
            continue;
        }
        let value = fields[i].value.clone();
        for token in tokens(&buf[value]) {
            if token.eq_ignore_ascii_case(b"keep-alive") || token.eq_ignore_ascii_case(b"close") {
                continue;
            }
            for f in fields.iter_mut() {
                if f.kind == Kind::Other && buf[f.name.clone()].eq_ignore_ascii_case(token) {
                    f.kind = Kind::Drop;
                }
            }
        }
    }
}

fn parse_length(value: &[u8]) -> Option<u64> {
    let value = value.trim_ascii();
    if value.is_empty() || value.len() > 18 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(value.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

/// A parsed request head read through [`HeaderLookup`], for reading pins.
pub struct Lookup<'a> {
    pub buf: &'a [u8],
    pub fields: &'a [Field],
}

impl HeaderLookup for Lookup<'_> {
    fn values<'a>(&'a self, name: &'static str) -> impl Iterator<Item = &'a [u8]> + 'a {
        let kind = request_kind(name);
        self.fields
            .iter()
            .filter(move |f| {
                f.kind == kind
                    && (kind != Kind::Other
                        || self.buf[f.name.clone()].eq_ignore_ascii_case(name.as_bytes()))
            })
            .map(|f| &self.buf[f.value.clone()])
    }
}

/// What the proxy adds to the request it forwards.
pub struct Forwarding<'a> {
    /// Strip this cookie from Cookie (`affinity = "cookie"`).
    pub strip_cookie: Option<&'a str>,
    /// The client's address, appended to X-Forwarded-For.
    pub client: std::net::IpAddr,
    pub tls: bool,
    /// The `x-limpet-failover-from` value.
    pub failover_from: Option<&'a str>,
}

/// Writes the request for the backend: the request line in HTTP/1.1, every field
/// but the hop-by-hop ones and limpet's cookie, and the X-Forwarded-* fields.
pub fn write_request(out: &mut Vec<u8>, buf: &[u8], head: &RequestHead, fwd: &Forwarding<'_>) {
    out.extend_from_slice(&buf[head.method.clone()]);
    out.push(b' ');
    out.extend_from_slice(&buf[head.target.clone()]);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut cookie_written = false;
    for f in &head.fields {
        match f.kind {
            Kind::Drop | Kind::Connection | Kind::XForwardedFor | Kind::TransferEncoding => {}
            Kind::Cookie if cookie_written => {}
            Kind::Cookie => {
                cookie_written = true;
                write_cookie(out, buf, &head.fields, fwd.strip_cookie);
            }
            Kind::Other | Kind::Host | Kind::ContentLength => {
                write_field(out, &buf[f.name.clone()], &buf[f.value.clone()]);
            }
        }
    }
    write_field(
        out,
        b"X-Forwarded-Host",
        &buf[head.fields[head.host].value.clone()],
    );
    out.extend_from_slice(b"X-Forwarded-For: ");
    for f in head.fields.iter().filter(|f| f.kind == Kind::XForwardedFor) {
        if affinity::header_text(&buf[f.value.clone()]).is_some() {
            out.extend_from_slice(&buf[f.value.clone()]);
            out.extend_from_slice(b", ");
        }
    }
    let mut ip = String::with_capacity(16);
    crate::proxy::push_ip(&mut ip, fwd.client);
    out.extend_from_slice(ip.as_bytes());
    out.extend_from_slice(if fwd.tls {
        b"\r\nX-Forwarded-Proto: https\r\n"
    } else {
        b"\r\nX-Forwarded-Proto: http\r\n"
    });
    if let Some(from) = fwd.failover_from {
        write_field(
            out,
            crate::proxy::FAILOVER_FROM.as_str().as_bytes(),
            from.as_bytes(),
        );
    }
    out.extend_from_slice(b"\r\n");
}

fn write_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// One Cookie field for every Cookie field of the request: limpet's cookie
/// removed, the application's pairs byte for byte, several fields joined (as
/// `affinity::strip_cookie` does on a `HeaderMap`).
fn write_cookie(out: &mut Vec<u8>, buf: &[u8], fields: &[Field], strip: Option<&str>) {
    let strip = strip.map(str::as_bytes);
    let ours = |pair: &[u8]| strip.is_some_and(|name| affinity::is_named_bytes(pair, name));
    let mut values = fields
        .iter()
        .filter(|f| f.kind == Kind::Cookie)
        .map(|f| &buf[f.value.clone()]);
    let first = values.next().unwrap_or_default();
    let mut rest = values.peekable();
    if rest.peek().is_none() && !first.split(|&b| b == b';').any(ours) {
        write_field(out, b"Cookie", first);
        return;
    }
    let start = out.len();
    out.extend_from_slice(b"Cookie: ");
    let empty = out.len();
    for value in std::iter::once(first).chain(rest) {
        for pair in value.split(|&b| b == b';') {
            let pair = pair.trim_ascii_start();
            if pair.is_empty() || ours(pair) {
                continue;
            }
            if out.len() > empty {
                out.extend_from_slice(b"; ");
            }
            out.extend_from_slice(pair);
        }
    }
    if out.len() == empty {
        out.truncate(start);
    } else {
        out.extend_from_slice(b"\r\n");
    }
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
    pub fields: Vec<Field>,
    pub framing: Framing,
    /// The backend keeps the connection open after this response.
    pub keep_alive: bool,
}

/// Why a backend's response head is unusable.
#[derive(Debug, thiserror::Error)]
pub enum BadResponse {
    #[error("malformed response head: {0}")]
    Parse(#[from] httparse::Error),
    #[error("conflicting Content-Length")]
    Length,
    #[error("unexpected 101 Switching Protocols")]
    Switching,
}

/// Parses the response head at the start of `buf`; `Ok(None)` until it is all
/// there. `head_request`: the request was HEAD (the response has no body).
pub fn parse_response(buf: &[u8], head_request: bool) -> Result<Option<ResponseHead>, BadResponse> {
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
        return Err(BadResponse::Parse(httparse::Error::Status));
    }
    if status == 101 {
        return Err(BadResponse::Switching);
    }
    let mut keep_alive = resp.version == Some(1);
    let mut length = None;
    let mut chunked = None;
    let mut fields = Vec::with_capacity(resp.headers.len());
    for h in resp.headers.iter() {
        let kind = common_kind(h.name);
        match kind {
            Kind::ContentLength => match (length, parse_length(h.value)) {
                (Some(seen), Some(n)) if seen != n => return Err(BadResponse::Length),
                (_, None) => return Err(BadResponse::Length),
                (_, n) => length = n,
            },
            // The last coding of all the fields decides (RFC 9112, section
            // 6.3); a field with none (empty) adds nothing to the list, but
            // Transfer-Encoding is there (RFC 9110, section 5.6.1).
            Kind::TransferEncoding => match tokens(h.value).last() {
                Some(t) => chunked = Some(t.eq_ignore_ascii_case(b"chunked")),
                None => chunked = Some(chunked.unwrap_or(false)),
            },
            Kind::Connection if tokens(h.value).any(|t| t.eq_ignore_ascii_case(b"close")) => {
                keep_alive = false;
            }
            _ => {}
        }
        fields.push(Field {
            name: at(h.name.as_bytes()),
            value: at(h.value),
            kind,
        });
    }
    drop_connection_named(buf, &mut fields);
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
    if framing == Framing::UntilClose {
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
    }))
}

/// Writes the response for the client: HTTP/1.1, the backend's fields but the
/// hop-by-hop ones (Transfer-Encoding stays when the chunked body is relayed as it
/// is), then `extra` (a Set-Cookie, and `Connection: close` when the client
/// connection ends after this response).
pub fn write_response(
    out: &mut Vec<u8>,
    buf: &[u8],
    head: &ResponseHead,
    set_cookie: Option<&str>,
    close: bool,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa::Buffer::new().format(head.status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(&buf[head.reason.clone()]);
    out.extend_from_slice(b"\r\n");
    for f in &head.fields {
        let keep = match f.kind {
            Kind::Drop | Kind::Connection => false,
            // An empty Transfer-Encoding field says nothing, and a client
            // that reads only the last field would miss the chunking.
            Kind::TransferEncoding => {
                head.framing != Framing::Empty && tokens(&buf[f.value.clone()]).next().is_some()
            }
            // Transfer-Encoding frames the body when there is one: a
            // Content-Length beside it goes (RFC 9112, section 6.3).
            Kind::ContentLength => matches!(head.framing, Framing::Empty | Framing::Length(_)),
            _ => true,
        };
        if keep {
            write_field(out, &buf[f.name.clone()], &buf[f.value.clone()]);
        }
    }
    if let Some(cookie) = set_cookie {
        write_field(out, b"Set-Cookie", cookie.as_bytes());
    }
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

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
            strip_cookie: strip,
            client: "10.0.0.9".parse().unwrap(),
            tls: false,
            failover_from: None,
        };
        write_request(&mut out, raw.as_bytes(), &head, &fwd);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn takes_plain_requests_and_leaves_the_rest_to_hyper() {
        let head = complete(b"POST /a?b=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello");
        assert_eq!(head.len, 52);
        assert_eq!(head.content_length, 5);
        assert_eq!(head.path(b"POST /a?b=1 HTTP/1.1"), "/a");
        assert!(matches!(
            parse_request(b"GET / HTTP/1.1\r\nHost: x\r\n"),
            Parsed::Partial
        ));
        for other in [
            &b"GET / HTTP/1.0\r\nHost: x\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            b"PUT / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n",
            b"GET /{x} HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GARBAGE\r\n\r\n",
        ] {
            assert!(
                matches!(parse_request(other), Parsed::Other),
                "{}",
                String::from_utf8_lossy(other)
            );
        }
    }

    #[test]
    fn rewrites_the_request_for_the_backend() {
        let out = forwarded(
            "GET /x HTTP/1.1\r\nhost: shop\r\nConnection: close, X-Secret\r\nX-Secret: 1\r\n\
             Keep-Alive: 5\r\nX-Forwarded-For: 1.1.1.1\r\nX-Forwarded-Proto: https\r\n\
             x-limpet-failover-from: forged\r\nAccept: */*\r\n\r\n",
            None,
        );
        assert_eq!(
            out,
            "GET /x HTTP/1.1\r\nhost: shop\r\nAccept: */*\r\nX-Forwarded-Host: shop\r\n\
             X-Forwarded-For: 1.1.1.1, 10.0.0.9\r\nX-Forwarded-Proto: http\r\n\r\n"
        );
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
            parse_response(raw.as_bytes(), head_req)
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
        assert_eq!(
            framing(
                "HTTP/1.1 304 Not Modified\r\nConnection: close\r\n\r\n",
                false
            ),
            Some((Framing::Empty, false))
        );
        assert_eq!(framing("HTTP/1.1 200 OK\r\n", false), None);
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", false).is_err());
        assert!(parse_response(b"garbage\r\n\r\n", false).is_err());
    }

    #[test]
    fn rewrites_the_response_for_the_client() {
        let raw = "HTTP/1.1 200 Fine\r\nConnection: keep-alive, X-Internal\r\nX-Internal: 1\r\n\
                   Keep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\
                   Content-Type: text/plain\r\n\r\n";
        let head = parse_response(raw.as_bytes(), false).unwrap().unwrap();
        let mut out = Vec::new();
        write_response(
            &mut out,
            raw.as_bytes(),
            &head,
            Some("limpet=v; Path=/"),
            true,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 Fine\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\
             Set-Cookie: limpet=v; Path=/\r\nConnection: close\r\n\r\n"
        );
    }
}
