//! An HTTP/2 request's fields, checked as they come out of the HPACK decoder
//! (RFC 9113, section 8): pseudo-header fields first and once each, names in
//! lowercase, no connection-specific fields, values without NUL, CR, LF or
//! surrounding whitespace, one Content-Length. A request that breaks a rule
//! is malformed: its stream is reset with PROTOCOL_ERROR and no backend sees
//! it. The field section's size is counted as SETTINGS_MAX_HEADER_LIST_SIZE
//! counts it (name, value and 32 bytes per field); a request over
//! `[limits] max_header_bytes` is answered 431.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Method;

use crate::uri::{self, MAX_FIELDS};

/// A request's head, as limpet's HTTP/2 path forwards it.
#[derive(Debug)]
pub(crate) struct RequestHead {
    pub method: Method,
    /// `:authority`, when the client sent one.
    pub authority: Option<String>,
    /// `:path`: the origin-form target (path and query), or `*`.
    pub path: String,
    pub headers: HeaderMap,
    /// The Content-Length field's value, which the DATA frames must add up to.
    pub content_length: Option<u64>,
}

/// Why a field section is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Breaks RFC 9113's rules: the stream is reset.
    Malformed(&'static str),
    /// Larger than `max_header_bytes`, or more than [`MAX_FIELDS`] fields:
    /// answered 431.
    TooLarge,
}

/// Collects the fields of a request's (or trailers') header block.
pub(crate) struct Fields {
    trailers: bool,
    max_bytes: usize,
    bytes: usize,
    /// Regular fields so far: more than an HTTP/1 head may have is a 431 too.
    count: usize,
    regular_seen: bool,
    pseudo_seen: bool,
    method: Option<Method>,
    scheme: bool,
    authority: Option<String>,
    path: Option<String>,
    headers: HeaderMap,
    content_length: Option<u64>,
    refused: Option<Refused>,
}

impl Fields {
    /// For a request's head.
    pub fn request(max_bytes: usize) -> Self {
        Fields::new(false, max_bytes)
    }

    /// For a trailer section: regular fields only.
    pub fn trailers(max_bytes: usize) -> Self {
        Fields::new(true, max_bytes)
    }

    fn new(trailers: bool, max_bytes: usize) -> Self {
        Fields {
            trailers,
            max_bytes,
            bytes: 0,
            count: 0,
            regular_seen: false,
            pseudo_seen: false,
            method: None,
            scheme: false,
            authority: None,
            path: None,
            headers: HeaderMap::new(),
            content_length: None,
            refused: None,
        }
    }

    /// Takes one decoded field; after the first refusal the rest are only
    /// counted.
    pub fn field(&mut self, name: &[u8], value: &[u8]) {
        self.bytes += name.len() + value.len() + 32;
        if name.first() != Some(&b':') {
            self.count += 1;
        }
        // (A HeaderMap also panics past 24,576 distinct names, which a
        // max_header_bytes of ~860 KB would let through.)
        if self.bytes > self.max_bytes || self.count > MAX_FIELDS {
            self.refused.get_or_insert(Refused::TooLarge);
        }
        if self.refused.is_some() {
            return;
        }
        let taken = match name.first() {
            Some(b':') => self.pseudo(name, value),
            _ => self.regular(name, value),
        };
        if let Err(why) = taken {
            self.refused = Some(Refused::Malformed(why));
        }
    }

    /// Whether the block had pseudo-header fields: a request's head rather
    /// than trailers.
    pub fn is_request(&self) -> bool {
        self.pseudo_seen
    }

    fn pseudo(&mut self, name: &[u8], value: &[u8]) -> Result<(), &'static str> {
        self.pseudo_seen = true;
        if self.trailers {
            return Err("pseudo-header field in trailers");
        }
        if self.regular_seen {
            return Err("pseudo-header field after a regular one");
        }
        match name {
            b":method" if self.method.is_none() => {
                let method = Method::from_bytes(value).map_err(|_| "invalid :method")?;
                self.method = Some(method);
            }
            b":scheme" if !self.scheme => {
                let valid = !value.is_empty()
                    && value
                        .iter()
                        .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(b));
                if !valid {
                    return Err("invalid :scheme");
                }
                self.scheme = true;
            }
            b":authority" if self.authority.is_none() => {
                self.authority = Some(authority(value)?);
            }
            b":path" if self.path.is_none() => {
                self.path = Some(path(value)?);
            }
            b":method" | b":scheme" | b":authority" | b":path" => {
                return Err("repeated pseudo-header field")
            }
            _ => return Err("unknown pseudo-header field"),
        }
        Ok(())
    }

    fn regular(&mut self, name: &[u8], value: &[u8]) -> Result<(), &'static str> {
        self.regular_seen = true;
        if name.iter().any(u8::is_ascii_uppercase) {
            return Err("uppercase field name");
        }
        let name = HeaderName::from_bytes(name).map_err(|_| "invalid field name")?;
        if matches!(value.first(), Some(b' ' | b'\t')) || matches!(value.last(), Some(b' ' | b'\t'))
        {
            return Err("whitespace around a field value");
        }
        let value = HeaderValue::from_bytes(value).map_err(|_| "invalid field value")?;
        if is_connection_specific(&name) {
            return Err("connection-specific field");
        }
        // Routed by when there is no :authority: checked as HTTP/1's Host is.
        if name == header::HOST && !value.is_empty() && !uri::is_authority(value.as_bytes()) {
            return Err("invalid host");
        }
        if name == header::TE && value.as_bytes() != b"trailers" {
            return Err("te other than trailers");
        }
        if name == header::CONTENT_LENGTH {
            let length = content_length(value.as_bytes()).ok_or("invalid content-length")?;
            match self.content_length {
                Some(seen) if seen != length => return Err("conflicting content-length"),
                _ => self.content_length = Some(length),
            }
        }
        self.headers.append(name, value);
        Ok(())
    }

    /// The request's head, once the block is decoded.
    pub fn into_head(self) -> Result<RequestHead, Refused> {
        if let Some(refused) = self.refused {
            return Err(refused);
        }
        let method = self.method.ok_or(Refused::Malformed("no :method"))?;
        let path = match (&method, self.path) {
            // CONNECT names an authority only (RFC 9113, section 8.5).
            (&Method::CONNECT, None) if !self.scheme && self.authority.is_some() => String::new(),
            (&Method::CONNECT, _) => {
                return Err(Refused::Malformed("CONNECT with :path or :scheme"))
            }
            (_, None) => return Err(Refused::Malformed("no :path")),
            (_, Some(_)) if !self.scheme => return Err(Refused::Malformed("no :scheme")),
            (m, Some(p)) if p == "*" && m != Method::OPTIONS => {
                return Err(Refused::Malformed(":path * on a method other than OPTIONS"))
            }
            (_, Some(p)) => p,
        };
        Ok(RequestHead {
            method,
            authority: self.authority,
            path,
            headers: self.headers,
            content_length: self.content_length,
        })
    }

    /// A trailer section's fields.
    pub fn into_trailers(self) -> Result<HeaderMap, Refused> {
        match self.refused {
            Some(refused) => Err(refused),
            None => Ok(self.headers),
        }
    }
}

/// Fields that mean something only to one HTTP/1 connection (RFC 9113,
/// section 8.2.2).
fn is_connection_specific(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

/// `:authority`: host and optional port, without userinfo (RFC 9113,
/// section 8.3.1), as the HTTP/1 engine takes a Host.
fn authority(value: &[u8]) -> Result<String, &'static str> {
    match uri::is_authority(value) {
        true => Ok(String::from_utf8_lossy(value).into_owned()),
        false => Err("invalid :authority"),
    }
}

/// `:path`: an origin-form target (starting with `/`) or `*`: visible ASCII,
/// or UTF-8 sent unescaped (as the HTTP/1 engine lets through), never
/// whitespace or control characters.
fn path(value: &[u8]) -> Result<String, &'static str> {
    let valid = (value.first() == Some(&b'/') || value == b"*") && uri::is_target_text(value);
    match std::str::from_utf8(value) {
        Ok(text) if valid => Ok(text.to_owned()),
        _ => Err("invalid :path"),
    }
}

fn content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(fields: &[(&str, &str)]) -> Result<RequestHead, Refused> {
        let mut collected = Fields::request(8192);
        for (name, value) in fields {
            collected.field(name.as_bytes(), value.as_bytes());
        }
        collected.into_head()
    }

    const GET: [(&str, &str); 4] = [
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", "shop.example:8443"),
        (":path", "/cart?item=1"),
    ];

    #[test]
    fn a_well_formed_request_gives_its_head() {
        let mut fields = GET.to_vec();
        fields.extend([
            ("cookie", "a=1"),
            ("cookie", "b=2"),
            ("content-length", "0"),
        ]);
        let head = head(&fields).expect("well formed");
        assert_eq!(head.method, Method::GET);
        assert_eq!(head.authority.as_deref(), Some("shop.example:8443"));
        assert_eq!(head.path, "/cart?item=1");
        assert_eq!(head.headers.get_all("cookie").iter().count(), 2);
        assert_eq!(head.content_length, Some(0));
    }

    #[test]
    fn malformed_requests_are_refused() {
        let cases: &[&[(&str, &str)]] = &[
            &[(":method", "GET"), (":scheme", "https")],
            &[(":method", "GET"), (":path", "/")],
            &[(":scheme", "https"), (":path", "/")],
            &[
                (":method", "GET"),
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
            ],
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":status", "200"),
            ],
            &[
                (":method", "GET"),
                (":scheme", "http"),
                ("a", "b"),
                (":path", "/"),
            ],
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "no-slash"),
            ],
            &[(":method", "GET"), (":scheme", "http"), (":path", "/a b")],
            &[(":method", "GET"), (":scheme", "http"), (":path", "/a\x7f")],
            &[(":method", "GET"), (":scheme", "http"), (":path", "*")],
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                ("Host", "x"),
            ],
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                ("connection", "close"),
            ],
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                ("transfer-encoding", "chunked"),
            ],
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                ("te", "gzip"),
            ],
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                ("x", " padded"),
            ],
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                ("x", "a\nb"),
            ],
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                ("content-length", "1"),
                ("content-length", "2"),
            ],
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                ("content-length", "-1"),
            ],
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":authority", "user@host"),
                (":path", "/"),
            ],
            &[
                (":method", "CONNECT"),
                (":scheme", "http"),
                (":authority", "h:1"),
                (":path", "/"),
            ],
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":authority", "a:xx"),
                (":path", "/"),
            ],
            // Without :authority, the host field is what routes: checked
            // as HTTP/1's Host.
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                ("host", "a:1:2"),
            ],
        ];
        for fields in cases {
            assert!(
                matches!(head(fields), Err(Refused::Malformed(_))),
                "{fields:?} must be refused"
            );
        }
    }

    #[test]
    fn te_trailers_options_star_and_connect_pass() {
        let mut fields = GET.to_vec();
        fields.push(("te", "trailers"));
        assert!(head(&fields).is_ok());
        let options = [(":method", "OPTIONS"), (":scheme", "http"), (":path", "*")];
        assert_eq!(head(&options).expect("OPTIONS *").path, "*");
        let connect = [(":method", "CONNECT"), (":authority", "db:5432")];
        assert!(head(&connect).is_ok());
        let utf8 = [
            (":method", "GET"),
            (":scheme", "https"),
            (":path", "/caf\u{e9}"),
        ];
        assert_eq!(head(&utf8).expect("unescaped UTF-8").path, "/caf\u{e9}");
        let ipv6 = [
            (":method", "GET"),
            (":scheme", "https"),
            (":authority", "[::1]:8443"),
            (":path", "/%20"),
        ];
        assert!(head(&ipv6).is_ok());
    }

    #[test]
    fn a_field_section_over_the_limit_is_too_large() {
        let mut fields = Fields::request(100);
        for (name, value) in GET {
            fields.field(name.as_bytes(), value.as_bytes());
        }
        fields.field(b"cookie", &[b'a'; 64]);
        assert_eq!(fields.into_head().unwrap_err(), Refused::TooLarge);
    }

    /// As many fields as an HTTP/1 head may have, and no more: a HeaderMap
    /// panics past 24,576 distinct names, which a large `max_header_bytes`
    /// let a client send (the connection's task died, no answer).
    #[test]
    fn more_fields_than_an_http1_head_may_have_are_too_large() {
        let with = |n: usize| {
            let mut fields = Fields::request(1 << 30);
            for (name, value) in GET {
                fields.field(name.as_bytes(), value.as_bytes());
            }
            for i in 0..n {
                fields.field(format!("x-{i}").as_bytes(), b"");
            }
            fields.into_head()
        };
        assert_eq!(with(MAX_FIELDS).expect("fits").headers.len(), MAX_FIELDS);
        assert_eq!(with(MAX_FIELDS + 1).unwrap_err(), Refused::TooLarge);
        assert_eq!(with(30_000).unwrap_err(), Refused::TooLarge);
    }

    #[test]
    fn trailers_take_regular_fields_only() {
        let mut trailers = Fields::trailers(8192);
        trailers.field(b"x-checksum", b"abc");
        assert_eq!(trailers.into_trailers().expect("fine").len(), 1);
        let mut trailers = Fields::trailers(8192);
        trailers.field(b":path", b"/");
        assert!(trailers.into_trailers().is_err());
    }
}
