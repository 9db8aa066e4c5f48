//! The PROXY protocol (HAProxy's, versions 1 and 2): the header an L4
//! balancer in front of limpet puts at the start of a connection to say whose
//! connection it is, and the version 2 header limpet puts in front of its own
//! connections to backends with `send_proxy = "v2"`.
//!
//! Beside the flow: the listener reads a header ([`read`]) before TLS and
//! before choosing an engine; the engines and the health checker write one
//! ([`write_v2`], [`write_v2_local`]) on a new backend connection.
//!
//! The parser is strict and bounded: a version 1 line is at most 107 bytes
//! (with its CRLF) and names TCP4, TCP6 or UNKNOWN with addresses of that
//! family; a version 2 header has the 12-byte signature, version 2, the LOCAL
//! or PROXY command, and an address block at least as long as its family
//! needs, of at most [`V2_MAX_LEN`] bytes (type-length-values after the
//! addresses are skipped). The header is read with `peek` and then consumed
//! exactly, so the bytes after it (an HTTP request, a TLS ClientHello) stay in
//! the socket for whoever reads next.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// What a version 2 header starts with.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest version 1 header, its CRLF included (the specification's bound).
pub const V1_MAX_LEN: usize = 107;
/// The longest version 2 address block limpet accepts (after the 16 fixed
/// bytes): the largest address (two Unix paths, 216 bytes) and room for the
/// type-length-values cloud balancers add (a VPC endpoint id, a link id).
pub const V2_MAX_LEN: usize = 1024;

/// What a header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// A proxied connection: the client's address and the address it connected to.
    Proxied {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// The balancer's own connection (v2 LOCAL, v1 UNKNOWN, or an address
    /// family other than TCP over IPv4 or IPv6): the socket's peer is the client.
    Local,
}

/// What [`parse`] made of the bytes so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A whole header, `len` bytes long.
    Complete { header: Header, len: usize },
    /// A header may follow, but not all of it is there.
    Partial,
    /// The bytes do not start with a PROXY signature.
    Missing,
    /// A PROXY signature followed by something the protocol does not allow.
    Malformed(&'static str),
}

/// Why a connection that owed a header was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Its first bytes were not a PROXY header.
    Missing,
    Malformed(&'static str),
    /// The header did not arrive within the head timeout.
    Timeout,
    /// The client closed before a whole header arrived (after sending part of it).
    Closed,
}

impl Rejection {
    /// The `reason` label of `limpet_proxy_protocol_rejected_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Rejection::Missing => "missing",
            Rejection::Malformed(_) => "malformed",
            Rejection::Timeout => "timeout",
            Rejection::Closed => "closed",
        }
    }
}

/// Reads the PROXY header that `stream` must start with, within `timeout`,
/// leaving every byte after it unread. `Ok(None)`: the client closed without
/// sending a byte (an L4 balancer's TCP health check), which is no rejection.
pub async fn read(stream: &mut TcpStream, timeout: Duration) -> Result<Option<Header>, Rejection> {
    match tokio::time::timeout(timeout, read_unbounded(stream)).await {
        Ok(read) => read,
        Err(_) => Err(Rejection::Timeout),
    }
}

async fn read_unbounded(stream: &mut TcpStream) -> Result<Option<Header>, Rejection> {
    let mut buf = [0u8; 16 + V2_MAX_LEN];
    // The header's first bytes, taken off the socket once known to be part
    // of it: a peek then waits for what comes next, and sees the close.
    let mut taken = 0;
    loop {
        let n = stream
            .peek(&mut buf[taken..])
            .await
            .map_err(|_| Rejection::Closed)?;
        if n == 0 {
            return match taken {
                0 => Ok(None),
                _ => Err(Rejection::Closed),
            };
        }
        let seen = taken + n;
        match parse(&buf[..seen]) {
            Parsed::Complete { header, len } => {
                stream
                    .read_exact(&mut buf[taken..len])
                    .await
                    .map_err(|_| Rejection::Closed)?;
                return Ok(Some(header));
            }
            Parsed::Missing => return Err(Rejection::Missing),
            Parsed::Malformed(why) => return Err(Rejection::Malformed(why)),
            // Balancers send the header in one segment. One that trickles
            // in: every byte so far is the header's (it has not ended), so
            // they are taken, and the next peek waits for more.
            Parsed::Partial => {
                if seen == buf.len() {
                    return Err(Rejection::Malformed("header too long"));
                }
                stream
                    .read_exact(&mut buf[taken..seen])
                    .await
                    .map_err(|_| Rejection::Closed)?;
                taken = seen;
            }
        }
    }
}

/// Parses the header at the start of `buf`.
pub fn parse(buf: &[u8]) -> Parsed {
    const V1: &[u8] = b"PROXY ";
    let n = buf.len();
    if n == 0 {
        return Parsed::Partial;
    }
    if buf[..n.min(V1.len())] == V1[..n.min(V1.len())] {
        return match n < V1.len() {
            true => Parsed::Partial,
            false => parse_v1(buf),
        };
    }
    if buf[..n.min(12)] == V2_SIGNATURE[..n.min(12)] {
        return match n < 16 {
            true => Parsed::Partial,
            false => parse_v2(buf),
        };
    }
    Parsed::Missing
}

/// `PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n` and the like.
fn parse_v1(buf: &[u8]) -> Parsed {
    let window = &buf[..buf.len().min(V1_MAX_LEN)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return match buf.len() >= V1_MAX_LEN || window.contains(&b'\n') {
            true => Parsed::Malformed("v1 line without CRLF within 107 bytes"),
            false => Parsed::Partial,
        };
    };
    let Ok(line) = std::str::from_utf8(&window[..end]) else {
        return Parsed::Malformed("v1 line is not text");
    };
    let len = end + 2;
    let mut words = line.split(' ');
    let _proxy = words.next();
    let header = match words.next() {
        Some("UNKNOWN") => Ok(Header::Local),
        Some(family @ ("TCP4" | "TCP6")) => v1_addresses(family == "TCP4", &mut words),
        _ => Err("v1 protocol is not TCP4, TCP6 or UNKNOWN"),
    };
    match header {
        Ok(header) => Parsed::Complete { header, len },
        Err(why) => Parsed::Malformed(why),
    }
}

fn v1_addresses<'a>(
    v4: bool,
    words: &mut impl Iterator<Item = &'a str>,
) -> Result<Header, &'static str> {
    let mut next = || words.next().ok_or("v1 line is missing a field");
    let (src, dst) = (next()?, next()?);
    let (sport, dport) = (next()?, next()?);
    if words.next().is_some() {
        return Err("v1 line has too many fields");
    }
    let ip = |text: &str| -> Result<IpAddr, &'static str> {
        match v4 {
            true => text.parse::<Ipv4Addr>().map(IpAddr::V4),
            false => text.parse::<Ipv6Addr>().map(IpAddr::V6),
        }
        .map_err(|_| "v1 address is not of the family named")
    };
    let port = |text: &str| -> Result<u16, &'static str> {
        let digits =
            !text.is_empty() && text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit());
        let canonical = text == "0" || !text.starts_with('0');
        match digits && canonical {
            true => text.parse().map_err(|_| "v1 port out of range"),
            false => Err("v1 port is not a decimal number"),
        }
    };
    Ok(Header::Proxied {
        source: SocketAddr::new(ip(src)?, port(sport)?),
        destination: SocketAddr::new(ip(dst)?, port(dport)?),
    })
}

/// The binary header: signature, version and command, family and protocol,
/// the address block's length, the addresses.
fn parse_v2(buf: &[u8]) -> Parsed {
    let (ver_cmd, family) = (buf[12], buf[13]);
    let block = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if ver_cmd >> 4 != 2 {
        return Parsed::Malformed("v2 version is not 2");
    }
    let local = match ver_cmd & 0x0f {
        0 => true,
        1 => false,
        _ => return Parsed::Malformed("v2 command is not LOCAL or PROXY"),
    };
    if block > V2_MAX_LEN {
        return Parsed::Malformed("v2 address block too long");
    }
    let needed = match family >> 4 {
        0 => 0,
        1 => 12,
        2 => 36,
        3 => 216,
        _ => return Parsed::Malformed("v2 address family unknown"),
    };
    if family & 0x0f > 2 {
        return Parsed::Malformed("v2 transport protocol unknown");
    }
    if block < needed {
        return Parsed::Malformed("v2 address block shorter than its family's addresses");
    }
    let len = 16 + block;
    if buf.len() < len {
        return Parsed::Partial;
    }
    let a = &buf[16..len];
    // TCP over IPv4 or IPv6 carries the client; the rest (LOCAL, UNSPEC,
    // UDP, Unix sockets) leaves the socket's peer as the client.
    let header = match (local, family) {
        (false, 0x11) => Header::Proxied {
            source: SocketAddr::new(ipv4(&a[0..4]), port(&a[8..10])),
            destination: SocketAddr::new(ipv4(&a[4..8]), port(&a[10..12])),
        },
        (false, 0x21) => Header::Proxied {
            source: SocketAddr::new(ipv6(&a[0..16]), port(&a[32..34])),
            destination: SocketAddr::new(ipv6(&a[16..32]), port(&a[34..36])),
        },
        _ => Header::Local,
    };
    Parsed::Complete { header, len }
}

fn ipv4(b: &[u8]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
}

fn ipv6(b: &[u8]) -> IpAddr {
    let mut octets = [0u8; 16];
    octets.copy_from_slice(b);
    IpAddr::V6(Ipv6Addr::from(octets))
}

fn port(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

/// Appends a version 2 PROXY header for a TCP connection from `source` to
/// `destination` (an IPv4 address beside an IPv6 one is written IPv4-mapped).
pub fn write_v2(out: &mut Vec<u8>, source: SocketAddr, destination: SocketAddr) {
    out.extend_from_slice(&V2_SIGNATURE);
    out.push(0x21);
    match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.extend_from_slice(&[0x11, 0, 12]);
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (s, d) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            out.extend_from_slice(&[0x21, 0, 36]);
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&v6(d).octets());
        }
    }
    out.extend_from_slice(&source.port().to_be_bytes());
    out.extend_from_slice(&destination.port().to_be_bytes());
}

/// Appends a version 2 LOCAL header: limpet's own connection (a health check).
pub fn write_v2_local(out: &mut Vec<u8>) {
    out.extend_from_slice(&V2_SIGNATURE);
    out.extend_from_slice(&[0x20, 0x00, 0, 0]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_lines() {
        let line = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nGET /";
        assert_eq!(
            parse(line),
            Parsed::Complete {
                header: Header::Proxied {
                    source: addr("192.0.2.1:56324"),
                    destination: addr("198.51.100.2:443"),
                },
                len: line.len() - 5,
            }
        );
        let line = b"PROXY TCP6 2001:db8::1 ::1 1 65535\r\n";
        assert!(matches!(
            parse(line),
            Parsed::Complete { header: Header::Proxied { source, .. }, len: 36 } if source == addr("[2001:db8::1]:1")
        ));
        assert_eq!(
            parse(b"PROXY UNKNOWN ffff:f...f:ffff 1.2.3.4 1 2\r\n"),
            Parsed::Complete {
                header: Header::Local,
                len: 43
            }
        );
        for partial in [
            &b""[..],
            b"PRO",
            b"PROXY TCP4 1.2.3.4",
            b"\r\n\r\n\0\r\nQUIT\n\x21",
        ] {
            assert_eq!(parse(partial), Parsed::Partial, "{partial:?}");
        }
        for bad in [
            &b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n"[..],
            b"PROXY TCP4 ::1 ::1 1 2\r\n",
            b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
            b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
        ] {
            assert!(matches!(parse(bad), Parsed::Malformed(_)), "{bad:?}");
        }
        let long = [b"PROXY ".as_slice(), &[b'x'; 120]].concat();
        assert!(matches!(parse(&long), Parsed::Malformed(_)));
        for missing in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"\x16\x03\x01",
            b"P",
            b"PROXY\r\n",
        ] {
            let parsed = parse(missing);
            assert!(
                parsed == Parsed::Missing || missing == b"P" && parsed == Parsed::Partial,
                "{missing:?}: {parsed:?}"
            );
        }
    }

    #[test]
    fn v2_headers_round_trip() {
        for (src, dst) in [
            ("10.1.2.3:4567", "127.0.0.1:80"),
            ("[2001:db8::7]:1", "[::1]:443"),
        ] {
            let mut out = Vec::new();
            write_v2(&mut out, addr(src), addr(dst));
            out.extend_from_slice(b"GET / HTTP/1.1\r\n");
            assert_eq!(
                parse(&out),
                Parsed::Complete {
                    header: Header::Proxied {
                        source: addr(src),
                        destination: addr(dst)
                    },
                    len: out.len() - 16,
                }
            );
            // Every prefix is partial, never complete or malformed.
            for cut in 0..out.len() - 16 {
                assert_eq!(parse(&out[..cut]), Parsed::Partial, "{cut}");
            }
        }
        let mut mixed = Vec::new();
        write_v2(&mut mixed, addr("10.0.0.1:1"), addr("[::1]:2"));
        assert!(matches!(
            parse(&mixed),
            Parsed::Complete { header: Header::Proxied { source, .. }, .. }
                if source == addr("[::ffff:10.0.0.1]:1")
        ));
        let mut local = Vec::new();
        write_v2_local(&mut local);
        assert_eq!(
            parse(&local),
            Parsed::Complete {
                header: Header::Local,
                len: 16
            }
        );
    }

    #[test]
    fn v2_with_tlvs_and_bad_fields() {
        let mut h = Vec::new();
        write_v2(&mut h, addr("1.2.3.4:5"), addr("6.7.8.9:10"));
        // Three bytes of TLV after the addresses: skipped.
        h[15] = 15;
        h.extend_from_slice(&[0x04, 0, 0]);
        assert!(matches!(parse(&h), Parsed::Complete { len: 31, .. }));
        let bad = |at: usize, value: u8| {
            let mut b = h.clone();
            b[at] = value;
            parse(&b)
        };
        assert!(matches!(bad(12, 0x11), Parsed::Malformed(_)), "version 1");
        assert!(matches!(bad(12, 0x22), Parsed::Malformed(_)), "command 2");
        assert!(matches!(bad(13, 0x41), Parsed::Malformed(_)), "family 4");
        assert!(matches!(bad(13, 0x13), Parsed::Malformed(_)), "protocol 3");
        assert!(matches!(bad(15, 11), Parsed::Malformed(_)), "short block");
        assert!(matches!(bad(14, 0xff), Parsed::Malformed(_)), "too long");
        // Addresses of UDP and Unix sockets leave the socket's peer in place.
        assert!(matches!(
            bad(13, 0x12),
            Parsed::Complete {
                header: Header::Local,
                ..
            }
        ));
    }
}
