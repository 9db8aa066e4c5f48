//! The syntax of what a request names: its target's characters, a Host or
//! authority (RFC 3986 section 3.2.2, RFC 9110 section 7.2), and the host of
//! a Host without its port. One set of rules for both engines, the router
//! and the config (a health path, a route's host); depends on nothing else
//! in limpet.

/// The most header fields a request head may have (as many as hyper
/// accepts): more is a 431, on HTTP/1 and HTTP/2 alike.
pub const MAX_FIELDS: usize = 100;

/// Whether a request target's bytes are all ones RFC 3986 lets a URI have
/// (or UTF-8 beyond ASCII, which browsers encode but other clients send
/// raw, as nginx lets through): no whitespace or control characters, and
/// none of `"`, `#`, `<`, `>`, `\`, `^`, `` ` ``, `{`, `|`, `}` (HAProxy
/// refuses them too; a fragment is never sent). Both engines refuse a
/// request with anything else in its target: a 400, or a reset stream.
pub fn is_target_text(target: &[u8]) -> bool {
    target.iter().all(|&b| TARGET_BYTE[b as usize])
}

/// Per byte, whether a target may have it (one load per byte on every
/// request, not a search of the excluded ones).
const TARGET_BYTE: [bool; 256] = byte_table(0x21, b"\"#<>\\^`{|}\x7f");

/// Per byte, whether RFC 3986's reg-name may have it as it is (`%` starts
/// an escape, checked apart): unreserved and sub-delims.
const REG_NAME_BYTE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 128 {
        table[b] = (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    let more = b"-._~!$&'()*+,;=";
    let mut i = 0;
    while i < more.len() {
        table[more[i] as usize] = true;
        i += 1;
    }
    table
};

/// Every byte from `first` up, but those in `excluded`.
const fn byte_table(first: u8, excluded: &[u8]) -> [bool; 256] {
    let mut table = [false; 256];
    let mut b = first as usize;
    while b < 256 {
        table[b] = true;
        b += 1;
    }
    let mut i = 0;
    while i < excluded.len() {
        table[excluded[i] as usize] = false;
        i += 1;
    }
    table
}

/// A Host value or an authority (RFC 9110 section 7.2, RFC 3986 section
/// 3.2.2): a registered name or IPv4 address, or an IPv6 literal in
/// brackets, then an optional `:port` of digits (at most 65535); no user
/// info, no whitespace. Both engines refuse a request whose Host or
/// authority is anything else (RFC 9112 section 3.2: a 400).
pub fn is_authority(value: &[u8]) -> bool {
    let (host, port) = match value.first() {
        Some(b'[') => match value.iter().position(|&b| b == b']') {
            Some(end) => (&value[..=end], &value[end + 1..]),
            None => return false,
        },
        Some(_) => match value.iter().position(|&b| b == b':') {
            Some(colon) => (&value[..colon], &value[colon..]),
            None => (value, &b""[..]),
        },
        None => return false,
    };
    let host_ok = match host {
        [b'[', literal @ .., b']'] => {
            std::str::from_utf8(literal).is_ok_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok())
        }
        _ => !host.is_empty() && is_reg_name(host),
    };
    let port_ok = match port {
        [] => true,
        [b':', digits @ ..] => {
            digits.len() <= 5
                && digits.iter().all(u8::is_ascii_digit)
                && digits
                    .iter()
                    .fold(0u32, |n, d| n * 10 + u32::from(d - b'0'))
                    <= 65535
        }
        _ => false,
    };
    host_ok && port_ok
}

/// RFC 3986's reg-name (which IPv4 addresses are too): unreserved and
/// sub-delims characters, and `%` with two hex digits.
fn is_reg_name(name: &[u8]) -> bool {
    let mut i = 0;
    while i < name.len() {
        match name[i] {
            b'%' => match name.get(i + 1..i + 3) {
                Some([a, b]) if a.is_ascii_hexdigit() && b.is_ascii_hexdigit() => i += 2,
                _ => return false,
            },
            b if REG_NAME_BYTE[b as usize] => {}
            _ => return false,
        }
        i += 1;
    }
    true
}

/// The host of a Host value or authority, without its port (`[::1]:8080`
/// is `::1`; an IPv6 address written bare, as a config may, stays whole).
pub fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    if host.matches(':').count() > 1 {
        return host;
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// The host as routes are matched and redirects written: without its port
/// and without a trailing dot (`shop.example.:8080` is `shop.example`).
/// Case is the caller's: the router compares without it.
pub fn bare_host(host: &str) -> &str {
    strip_port(host).trim_end_matches('.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_have_uri_characters() {
        for good in [
            "/",
            "/a/b?c=d&e=f;g",
            "/%7B%7D",
            "/caf\u{e9}",
            "*",
            "/a:b@c!$'()*+,",
        ] {
            assert!(is_target_text(good.as_bytes()), "{good}");
        }
        for bad in [
            "/h#frag", "/h\"", "/<", "/>", "/\\", "/^", "/`", "/{", "/|", "/}", "/a b", "/\x7f",
        ] {
            assert!(!is_target_text(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn bare_hosts_lose_port_brackets_and_trailing_dot() {
        for (host, bare) in [
            ("shop.example", "shop.example"),
            ("shop.example.:8080", "shop.example"),
            ("Shop.Example", "Shop.Example"),
            ("[::1]:8080", "::1"),
            ("[::1]", "::1"),
            ("::1", "::1"),
            ("10.0.0.1:80", "10.0.0.1"),
        ] {
            assert_eq!(bare_host(host), bare, "{host}");
        }
    }

    #[test]
    fn authorities_are_host_and_port() {
        for good in [
            "shop.example",
            "shop.example:8443",
            "shop.example:",
            "10.0.0.1:80",
            "[::1]",
            "[2001:db8::1]:443",
            "a-b_c~d!$&'()*+,;=e",
            "caf%C3%A9.example",
        ] {
            assert!(is_authority(good.as_bytes()), "{good}");
        }
        for bad in [
            "",
            "a:xx",
            "a:1:2",
            "a:65536",
            "a:123456",
            "[::1",
            "[::1]x",
            "[::1]:x",
            "[not-ip]",
            "::1",
            "user@host",
            "a b",
            "a/b",
            "a?b",
            "a\"b",
            "a%2",
            "a%zz",
            "caf\u{e9}.example",
        ] {
            assert!(!is_authority(bad.as_bytes()), "{bad}");
        }
    }
}
