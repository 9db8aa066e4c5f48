//! Finds where a chunked message body ends (RFC 9112, section 7.1): the engine
//! relays chunked bodies byte for byte, extensions and trailers included, and
//! only needs to know when the last one has passed. For an HTTP/1.0 client,
//! which cannot read chunks, [`Scanner::feed_decoded`] also copies out the data.
//!
//! What is relayed verbatim is checked as strictly as a head is: a chunk
//! extension must be `;name` or `;name=value` (a token or a quoted string,
//! section 7.1.1), and a trailer field line `name: value` (a token, no
//! whitespace before the colon, no obs-fold, no control characters), at most
//! [`TRAILERS_MAX`] bytes in all, and neither Content-Length,
//! Transfer-Encoding nor Host (framing and routing fields, which RFC 9110
//! section 6.5.1 keeps out of trailers, and which a recipient merging
//! trailers into the head would act on). Anything else is malformed: the
//! message is refused, never forwarded.

/// The most bytes a trailer section may hold (as a head's default limit).
pub const TRAILERS_MAX: u32 = 64 * 1024;

/// Trailer field names refused, lowercase; the longest sets the name buffer.
const REFUSED_TRAILERS: [&[u8]; 3] = [b"content-length", b"transfer-encoding", b"host"];
const NAME_KEPT: usize = 17;

/// Where the scanner is in the chunked framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Hex digits of a chunk size (`any`: at least one seen).
    Size {
        size: u64,
        any: bool,
    },
    /// After the size: its extensions, up to the line's end.
    Extension {
        size: u64,
        at: Ext,
    },
    /// The LF ending a size line.
    SizeLf {
        size: u64,
    },
    /// Bytes of chunk data still to come.
    Data(u64),
    /// The CR, then the LF, after a chunk's data.
    DataCr,
    DataLf,
    /// The start of a trailer line (or of the empty line ending the message).
    TrailerStart,
    /// A trailer field's name: its first bytes, lowercase, and its length.
    TrailerName {
        kept: [u8; NAME_KEPT],
        len: usize,
    },
    /// A trailer field's value.
    TrailerValue,
    /// The LF of a trailer line, and of the final empty line.
    TrailerLf,
    EndLf,
    Done,
}

/// Where a size line's extensions are: `*( BWS ";" BWS name [ BWS "=" BWS
/// value ] )`, then CRLF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ext {
    /// Whitespace before the next `;` or the line's end.
    Before,
    /// After `;`: whitespace, then a name.
    NameStart,
    Name,
    /// Whitespace after a name: `=`, `;` or the end next.
    AfterName,
    /// After `=`: whitespace, then a token or a quoted string.
    ValueStart,
    Token,
    Quoted,
    /// After a backslash in a quoted string.
    QuotedPair,
}

/// The framing is broken: the connection cannot carry another message.
#[derive(Debug, PartialEq, Eq)]
pub struct Malformed;

#[derive(Debug)]
pub struct Scanner {
    state: State,
    /// Bytes of the trailer section so far.
    trailer_bytes: u32,
}

impl Scanner {
    pub fn new() -> Self {
        Scanner {
            state: State::Size {
                size: 0,
                any: false,
            },
            trailer_bytes: 0,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Scans the next bytes of the body; returns how many of them belong to it
    /// (fewer than `bytes.len()` only when the body ended inside `bytes`).
    pub fn feed(&mut self, bytes: &[u8]) -> Result<usize, Malformed> {
        self.scan(bytes, None, None)
    }

    /// As [`Scanner::feed`], and appends the chunks' data to `data`.
    pub fn feed_decoded(&mut self, bytes: &[u8], data: &mut Vec<u8>) -> Result<usize, Malformed> {
        self.scan(bytes, Some(data), None)
    }

    /// As [`Scanner::feed_decoded`], and appends the trailer section's field
    /// lines (each with its CRLF) to `trailers` (for an HTTP/2 client, which
    /// gets them as a HEADERS frame).
    pub fn feed_decoded_with_trailers(
        &mut self,
        bytes: &[u8],
        data: &mut Vec<u8>,
        trailers: &mut Vec<u8>,
    ) -> Result<usize, Malformed> {
        self.scan(bytes, Some(data), Some(trailers))
    }

    fn scan(
        &mut self,
        bytes: &[u8],
        mut data: Option<&mut Vec<u8>>,
        mut trailers: Option<&mut Vec<u8>>,
    ) -> Result<usize, Malformed> {
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            let in_trailers = matches!(
                self.state,
                State::TrailerStart
                    | State::TrailerName { .. }
                    | State::TrailerValue
                    | State::TrailerLf
                    | State::EndLf
            );
            if in_trailers {
                self.trailer_bytes += 1;
                if self.trailer_bytes > TRAILERS_MAX {
                    return Err(Malformed);
                }
            }
            if let Some(trailers) = trailers.as_deref_mut() {
                // A trailer field line's bytes, CRLF included (not the CR
                // of the empty line that ends the section).
                let in_line = match self.state {
                    State::TrailerStart => b != b'\r',
                    State::TrailerName { .. } | State::TrailerValue | State::TrailerLf => true,
                    _ => false,
                };
                if in_line {
                    trailers.push(b);
                }
            }
            self.state = match self.state {
                State::Size { size, any } => match hex(b) {
                    Some(d) => {
                        if size >> 60 != 0 {
                            return Err(Malformed);
                        }
                        State::Size {
                            size: size << 4 | d,
                            any: true,
                        }
                    }
                    None if !any => return Err(Malformed),
                    None => match b {
                        b'\r' => State::SizeLf { size },
                        b';' => State::Extension {
                            size,
                            at: Ext::NameStart,
                        },
                        b' ' | b'\t' => State::Extension {
                            size,
                            at: Ext::Before,
                        },
                        _ => return Err(Malformed),
                    },
                },
                State::Extension { size, at } => match extension(at, b).ok_or(Malformed)? {
                    Some(at) => State::Extension { size, at },
                    None => State::SizeLf { size },
                },
                State::SizeLf { size } => match (b, size) {
                    (b'\n', 0) => State::TrailerStart,
                    (b'\n', n) => State::Data(n),
                    _ => return Err(Malformed),
                },
                State::Data(left) => {
                    let take = left.min((bytes.len() - i) as u64);
                    if let Some(data) = data.as_deref_mut() {
                        data.extend_from_slice(&bytes[i..i + take as usize]);
                    }
                    i += take as usize;
                    self.state = match left - take {
                        0 => State::DataCr,
                        rest => State::Data(rest),
                    };
                    continue;
                }
                State::DataCr if b == b'\r' => State::DataLf,
                State::DataLf if b == b'\n' => State::Size {
                    size: 0,
                    any: false,
                },
                State::DataCr | State::DataLf => return Err(Malformed),
                State::TrailerStart => match b {
                    b'\r' => State::EndLf,
                    // Not a token: obs-fold, an empty name, anything else.
                    _ if !is_tchar(b) => return Err(Malformed),
                    _ => State::TrailerName {
                        kept: keep(&[0; NAME_KEPT], 0, b),
                        len: 1,
                    },
                },
                State::TrailerName { kept, len } => match b {
                    b':' if refused_trailer(&kept, len) => return Err(Malformed),
                    b':' => State::TrailerValue,
                    _ if !is_tchar(b) => return Err(Malformed),
                    _ => State::TrailerName {
                        kept: keep(&kept, len, b),
                        len: len + 1,
                    },
                },
                State::TrailerValue => match b {
                    b'\r' => State::TrailerLf,
                    b'\t' | b' '..=b'~' | 0x80..=0xff => State::TrailerValue,
                    _ => return Err(Malformed),
                },
                State::TrailerLf if b == b'\n' => State::TrailerStart,
                State::EndLf if b == b'\n' => {
                    self.state = State::Done;
                    return Ok(i + 1);
                }
                State::TrailerLf | State::EndLf => return Err(Malformed),
                State::Done => return Ok(i),
            };
            i += 1;
        }
        Ok(i)
    }
}

/// The next place in a size line's extensions after `b`: `Some(None)` at the
/// line's CR, `None` when `b` breaks the grammar.
fn extension(at: Ext, b: u8) -> Option<Option<Ext>> {
    let whitespace = b == b' ' || b == b'\t';
    let next = match at {
        Ext::Before | Ext::AfterName if whitespace => at,
        Ext::Before => match b {
            b';' => Ext::NameStart,
            b'\r' => return Some(None),
            _ => return None,
        },
        Ext::NameStart if whitespace => at,
        Ext::NameStart if is_tchar(b) => Ext::Name,
        Ext::NameStart => return None,
        Ext::Name if is_tchar(b) => Ext::Name,
        Ext::Name | Ext::AfterName => match b {
            _ if whitespace => Ext::AfterName,
            b'=' => Ext::ValueStart,
            b';' => Ext::NameStart,
            b'\r' => return Some(None),
            _ => return None,
        },
        Ext::ValueStart if whitespace => at,
        Ext::ValueStart if b == b'"' => Ext::Quoted,
        Ext::ValueStart if is_tchar(b) => Ext::Token,
        Ext::ValueStart => return None,
        Ext::Token if is_tchar(b) => Ext::Token,
        Ext::Token => match b {
            _ if whitespace => Ext::Before,
            b';' => Ext::NameStart,
            b'\r' => return Some(None),
            _ => return None,
        },
        Ext::Quoted => match b {
            b'"' => Ext::Before,
            b'\\' => Ext::QuotedPair,
            b'\t' | b' ' | 0x21 | 0x23..=0x5b | 0x5d..=0x7e | 0x80..=0xff => Ext::Quoted,
            _ => return None,
        },
        Ext::QuotedPair => match b {
            b'\t' | b' '..=b'~' | 0x80..=0xff => Ext::Quoted,
            _ => return None,
        },
    };
    Some(Some(next))
}

/// A token character (RFC 9110, section 5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// `kept` with the name's byte at `len` added, lowercase (past the buffer's
/// end, the name is longer than any refused one: nothing is kept).
fn keep(kept: &[u8; NAME_KEPT], len: usize, b: u8) -> [u8; NAME_KEPT] {
    let mut kept = *kept;
    if let Some(slot) = kept.get_mut(len) {
        *slot = b.to_ascii_lowercase();
    }
    kept
}

fn refused_trailer(kept: &[u8; NAME_KEPT], len: usize) -> bool {
    len <= NAME_KEPT && REFUSED_TRAILERS.contains(&&kept[..len])
}

fn hex(b: u8) -> Option<u64> {
    match b {
        b'0'..=b'9' => Some(u64::from(b - b'0')),
        b'a'..=b'f' => Some(u64::from(b - b'a' + 10)),
        b'A'..=b'F' => Some(u64::from(b - b'A' + 10)),
        _ => None,
    }
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `body` in pieces of `step` bytes; the bytes consumed and whether done.
    fn scan(body: &[u8], step: usize) -> Result<(usize, bool), Malformed> {
        let mut s = Scanner::new();
        let mut used = 0;
        for piece in body.chunks(step) {
            let n = s.feed(piece)?;
            used += n;
            if s.is_done() {
                break;
            }
        }
        Ok((used, s.is_done()))
    }

    #[test]
    fn finds_the_end_in_any_split() {
        let body =
            b"5\r\nhello\r\n1A;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Trailer: 1\r\n\r\n";
        for step in 1..=body.len() {
            assert_eq!(scan(body, step), Ok((body.len(), true)), "step {step}");
        }
    }

    #[test]
    fn stops_at_the_end_of_the_body() {
        let mut bytes = b"3\r\nabc\r\n0\r\n\r\n".to_vec();
        let end = bytes.len();
        bytes.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        assert_eq!(scan(&bytes, bytes.len()), Ok((end, true)));
    }

    #[test]
    fn decodes_the_data_in_any_split() {
        let body = b"5\r\nhello\r\n3;x=y\r\n, w\r\n0\r\nT: 1\r\n\r\n";
        for step in 1..=body.len() {
            let mut s = Scanner::new();
            let mut data = Vec::new();
            for piece in body.chunks(step) {
                s.feed_decoded(piece, &mut data).unwrap();
            }
            assert!(s.is_done());
            assert_eq!(data, b"hello, w", "step {step}");
        }
    }

    #[test]
    fn collects_the_trailer_lines_in_any_split() {
        let body = b"2\r\nhi\r\n0\r\nT: 1\r\nU:  x y\r\n\r\n";
        for step in 1..=body.len() {
            let mut s = Scanner::new();
            let (mut data, mut trailers) = (Vec::new(), Vec::new());
            for piece in body.chunks(step) {
                s.feed_decoded_with_trailers(piece, &mut data, &mut trailers)
                    .unwrap();
            }
            assert!(s.is_done());
            assert_eq!(data, b"hi", "step {step}");
            assert_eq!(trailers, b"T: 1\r\nU:  x y\r\n", "step {step}");
        }
        let mut s = Scanner::new();
        let (mut data, mut trailers) = (Vec::new(), Vec::new());
        s.feed_decoded_with_trailers(b"0\r\n\r\n", &mut data, &mut trailers)
            .unwrap();
        assert!(s.is_done() && trailers.is_empty());
    }

    #[test]
    fn an_unfinished_body_is_not_done() {
        assert_eq!(scan(b"5\r\nhel", 3), Ok((6, false)));
        assert_eq!(scan(b"0\r\n", 3), Ok((3, false)));
    }

    #[test]
    fn rejects_broken_framing() {
        for bad in [
            &b"\r\n"[..],
            b"g\r\n",
            b"5\nhello",
            b"2\r\nabc\r\n",
            b"1\r\na\n",
            b"fffffffffffffffff\r\n",
            b"0\r\n\n",
        ] {
            assert_eq!(scan(bad, 64), Err(Malformed), "{bad:?}");
        }
    }

    #[test]
    fn takes_extensions_as_the_grammar_has_them() {
        for good in [
            &b"3;a\r\nabc\r\n0\r\n\r\n"[..],
            b"3 \r\nabc\r\n0\r\n\r\n",
            b"3 ; a = b ;c\r\nabc\r\n0\r\n\r\n",
            b"3;a=\"x \\\" ;y\"\t\r\nabc\r\n0;last\r\n\r\n",
        ] {
            assert_eq!(scan(good, 64), Ok((good.len(), true)), "{good:?}");
        }
    }

    #[test]
    fn rejects_extensions_outside_the_grammar() {
        for ext in [
            &b";a\x00b"[..],
            b";a\x01",
            b";f\x80o",
            b";a b c",
            b";",
            b"; ",
            b";=b",
            b";a=",
            b";a=\"open",
            b";a=\"x\x00\"",
            b";a=b c",
            b" x",
        ] {
            let body = [&b"3"[..], ext, b"\r\nabc\r\n0\r\n\r\n"].concat();
            assert_eq!(scan(&body, 64), Err(Malformed), "{ext:?}");
        }
    }

    #[test]
    fn rejects_trailers_a_head_would_not_pass() {
        for line in [
            &b"X-T: 1\r\n 2"[..],
            b"X-T : 1",
            b"GARBAGE",
            b": empty name",
            b"X-T: a\x00b",
            b"X-T: a\x7fb",
            b"Transfer-Encoding: chunked",
            b"content-length: 5",
            b"HOST: evil",
            b"GET /smuggle HTTP/1.1",
        ] {
            let body = [&b"0\r\n"[..], line, b"\r\n\r\n"].concat();
            assert_eq!(scan(&body, 64), Err(Malformed), "{line:?}");
        }
        // Names that only start like a refused one pass.
        let fine = b"0\r\nHosts: a\r\nContent-Lengthy: 1\r\nX: \tv\x80\r\n\r\n";
        assert_eq!(scan(fine, 64), Ok((fine.len(), true)));
    }

    #[test]
    fn a_trailer_section_has_a_limit() {
        let line = format!("X-Pad: {}\r\n", "a".repeat(1000));
        let fits = (TRAILERS_MAX as usize - 2) / line.len();
        let body = |lines: usize| format!("0\r\n{}\r\n", line.repeat(lines)).into_bytes();
        let ok = body(fits);
        assert_eq!(scan(&ok, 4096), Ok((ok.len(), true)));
        assert_eq!(scan(&body(fits + 1), 4096), Err(Malformed));
    }
}
