//! Finds where a chunked message body ends (RFC 9112, section 7.1): the engine
//! relays chunked bodies byte for byte, extensions and trailers included, and
//! only needs to know when the last one has passed. For an HTTP/1.0 client,
//! which cannot read chunks, [`Scanner::feed_decoded`] also copies out the data.

/// Where the scanner is in the chunked framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Hex digits of a chunk size (`any`: at least one seen).
    Size {
        size: u64,
        any: bool,
    },
    /// After the size: an extension, or whitespace, up to the line's end.
    Extension {
        size: u64,
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
    /// Inside a trailer field line.
    Trailer,
    /// The LF of a trailer line, and of the final empty line.
    TrailerLf,
    EndLf,
    Done,
}

/// The framing is broken: the connection cannot carry another message.
#[derive(Debug, PartialEq, Eq)]
pub struct Malformed;

#[derive(Debug)]
pub struct Scanner {
    state: State,
}

impl Scanner {
    pub fn new() -> Self {
        Scanner {
            state: State::Size {
                size: 0,
                any: false,
            },
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
            if let Some(trailers) = trailers.as_deref_mut() {
                // A trailer field line's bytes, CRLF included (not the CR
                // of the empty line that ends the section).
                let in_line = match self.state {
                    State::TrailerStart => b != b'\r',
                    State::Trailer | State::TrailerLf => true,
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
                        b';' | b' ' | b'\t' => State::Extension { size },
                        _ => return Err(Malformed),
                    },
                },
                State::Extension { size } => match b {
                    b'\r' => State::SizeLf { size },
                    b'\n' => return Err(Malformed),
                    _ => State::Extension { size },
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
                    b'\n' => return Err(Malformed),
                    _ => State::Trailer,
                },
                State::Trailer => match b {
                    b'\r' => State::TrailerLf,
                    b'\n' => return Err(Malformed),
                    _ => State::Trailer,
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
}
