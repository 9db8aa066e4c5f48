//! A raw HTTP/2 client for tests that must see (or break) the frames: it
//! writes the preface and any frame, byte for byte, and reads frames with a
//! timeout, so that a server that hangs fails the test instead of stalling it.
//!
//! - [`H2`]: one connection (plain TCP or TLS); [`H2::connect`] does the
//!   SETTINGS exchange, [`H2::get`] and [`H2::response`] read a response,
//!   [`H2::connection_error`] and [`H2::outcome`] what the server did about a
//!   frame it should refuse.
//! - Request field blocks are HPACK by hand: static-table indexes for the
//!   common pseudo-header fields and "literal without indexing, literal name,
//!   no Huffman" for everything else ([`literal`], [`get_block`]).
//! - Response field blocks are read without a full HPACK decoder: the client
//!   announces SETTINGS_HEADER_TABLE_SIZE 0, so the server may not use its
//!   dynamic table, and every field is a static index or a literal; values
//!   are read as text when sent raw, or when Huffman-coded digits (status
//!   codes, lengths). See [`decode_fields`].
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::wire::Conn;

/// How long one frame may take to arrive.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(5);

pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

// Frame types (RFC 9113, section 6).
pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const PRIORITY: u8 = 0x2;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PUSH_PROMISE: u8 = 0x5;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

// Flags.
pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const PADDED: u8 = 0x8;
pub const PRIORITY_FLAG: u8 = 0x20;

// Settings.
pub const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;
pub const SETTINGS_ENABLE_PUSH: u16 = 0x2;
pub const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
pub const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;

// Error codes (RFC 9113, section 7).
pub const NO_ERROR: u32 = 0x0;
pub const PROTOCOL_ERROR: u32 = 0x1;
pub const INTERNAL_ERROR: u32 = 0x2;
pub const FLOW_CONTROL_ERROR: u32 = 0x3;
pub const STREAM_CLOSED: u32 = 0x5;
pub const FRAME_SIZE_ERROR: u32 = 0x6;
pub const REFUSED_STREAM: u32 = 0x7;
pub const CANCEL: u32 = 0x8;
pub const COMPRESSION_ERROR: u32 = 0x9;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

/// An error code's name, for messages.
pub fn code_name(code: u32) -> &'static str {
    match code {
        0x0 => "NO_ERROR",
        0x1 => "PROTOCOL_ERROR",
        0x2 => "INTERNAL_ERROR",
        0x3 => "FLOW_CONTROL_ERROR",
        0x4 => "SETTINGS_TIMEOUT",
        0x5 => "STREAM_CLOSED",
        0x6 => "FRAME_SIZE_ERROR",
        0x7 => "REFUSED_STREAM",
        0x8 => "CANCEL",
        0x9 => "COMPRESSION_ERROR",
        0xa => "CONNECT_ERROR",
        0xb => "ENHANCE_YOUR_CALM",
        0xc => "INADEQUATE_SECURITY",
        0xd => "HTTP_1_1_REQUIRED",
        _ => "unknown",
    }
}

/// One frame as read off the wire.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    /// The error code of a RST_STREAM or GOAWAY frame.
    pub fn error_code(&self) -> Option<u32> {
        let at = match self.kind {
            RST_STREAM => 0,
            GOAWAY => 4,
            _ => return None,
        };
        let b = self.payload.get(at..at + 4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A WINDOW_UPDATE frame's increment.
    pub fn increment(&self) -> Option<u32> {
        let b = self
            .payload
            .get(..4)
            .filter(|_| self.kind == WINDOW_UPDATE)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff)
    }

    /// A SETTINGS frame's parameters.
    pub fn settings(&self) -> Vec<(u16, u32)> {
        self.payload
            .chunks_exact(6)
            .map(|c| {
                (
                    u16::from_be_bytes([c[0], c[1]]),
                    u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                )
            })
            .collect()
    }

    /// The payload of a DATA or HEADERS frame without its padding (and, for
    /// HEADERS, without its priority fields).
    pub fn content(&self) -> &[u8] {
        let mut p = &self.payload[..];
        let mut pad = 0;
        if self.has(PADDED) && !p.is_empty() {
            pad = p[0] as usize;
            p = &p[1..];
        }
        if self.kind == HEADERS && self.has(PRIORITY_FLAG) {
            p = p.get(5..).unwrap_or_default();
        }
        &p[..p.len().saturating_sub(pad)]
    }
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            DATA => "DATA",
            HEADERS => "HEADERS",
            PRIORITY => "PRIORITY",
            RST_STREAM => "RST_STREAM",
            SETTINGS => "SETTINGS",
            PUSH_PROMISE => "PUSH_PROMISE",
            PING => "PING",
            GOAWAY => "GOAWAY",
            WINDOW_UPDATE => "WINDOW_UPDATE",
            CONTINUATION => "CONTINUATION",
            _ => "unknown",
        };
        write!(
            f,
            "{kind}(type {:#x}, flags {:#x}, stream {}, {} bytes",
            self.kind,
            self.flags,
            self.stream,
            self.payload.len()
        )?;
        if let Some(code) = self.error_code() {
            write!(f, ", {}", code_name(code))?;
        }
        if self.kind == GOAWAY && self.payload.len() > 8 {
            write!(f, ", {:?}", String::from_utf8_lossy(&self.payload[8..]))?;
        }
        write!(f, ")")
    }
}

/// A frame's bytes: the 9-byte header (the length from `payload`) and the payload.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = frame_header(payload.len(), kind, flags, stream);
    out.extend_from_slice(payload);
    out
}

/// A frame header alone, claiming `len` payload bytes.
pub fn frame_header(len: usize, kind: u8, flags: u8, stream: u32) -> Vec<u8> {
    let len = len as u32;
    let mut out = Vec::with_capacity(9 + len as usize);
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out
}

/// A SETTINGS frame with `params`.
pub fn settings(params: &[(u16, u32)]) -> Vec<u8> {
    let mut payload = Vec::new();
    for (id, value) in params {
        payload.extend_from_slice(&id.to_be_bytes());
        payload.extend_from_slice(&value.to_be_bytes());
    }
    frame(SETTINGS, 0, 0, &payload)
}

/// A WINDOW_UPDATE frame.
pub fn window_update(stream: u32, increment: u32) -> Vec<u8> {
    frame(WINDOW_UPDATE, 0, stream, &increment.to_be_bytes())
}

/// A RST_STREAM frame.
pub fn rst_stream(stream: u32, code: u32) -> Vec<u8> {
    frame(RST_STREAM, 0, stream, &code.to_be_bytes())
}

/// A HEADERS frame carrying all of `block` (END_HEADERS set).
pub fn headers(stream: u32, block: &[u8], end_stream: bool) -> Vec<u8> {
    let flags = END_HEADERS | if end_stream { END_STREAM } else { 0 };
    frame(HEADERS, flags, stream, block)
}

/// DATA frames of at most 16,384 bytes carrying `body`, the last one with
/// END_STREAM when `end_stream`.
pub fn data(stream: u32, body: &[u8], end_stream: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut chunks = body.chunks(16_384).peekable();
    if chunks.peek().is_none() {
        let flags = if end_stream { END_STREAM } else { 0 };
        return frame(DATA, flags, stream, &[]);
    }
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none();
        let flags = if end_stream && last { END_STREAM } else { 0 };
        out.extend_from_slice(&frame(DATA, flags, stream, chunk));
    }
    out
}

/// Takes one whole frame off the front of `buf`, if one is there.
pub fn parse_frame(buf: &mut BytesMut) -> Option<Frame> {
    if buf.len() < 9 {
        return None;
    }
    let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
    if buf.len() < 9 + len {
        return None;
    }
    let head = buf.split_to(9);
    let payload = buf.split_to(len).to_vec();
    Some(Frame {
        kind: head[3],
        flags: head[4],
        stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
        payload,
    })
}

/// The whole frames in `bytes` (a cut-off last one left out).
pub fn parse_frames(bytes: &[u8]) -> Vec<Frame> {
    let mut buf = BytesMut::from(bytes);
    std::iter::from_fn(|| parse_frame(&mut buf)).collect()
}

// ---------------------------------------------------------------------------
// HPACK, by hand

/// `:method GET` (static index 2).
pub const METHOD_GET: u8 = 0x82;
/// `:method POST` (static index 3).
pub const METHOD_POST: u8 = 0x83;
/// `:path /` (static index 4).
pub const PATH_ROOT: u8 = 0x84;
/// `:scheme http` (static index 6).
pub const SCHEME_HTTP: u8 = 0x86;
/// `:scheme https` (static index 7).
pub const SCHEME_HTTPS: u8 = 0x87;

/// An HPACK integer with an `n`-bit prefix, `high` in the first byte's other bits.
pub fn integer(out: &mut Vec<u8>, n: u8, high: u8, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(high | value as u8);
        return;
    }
    out.push(high | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// A field as a literal without indexing, literal name, no Huffman coding
/// (`name` is sent as given: upper case stays upper case).
pub fn literal(name: &str, value: &str) -> Vec<u8> {
    let mut out = vec![0x00];
    integer(&mut out, 7, 0, name.len());
    out.extend_from_slice(name.as_bytes());
    integer(&mut out, 7, 0, value.len());
    out.extend_from_slice(value.as_bytes());
    out
}

/// The field block of `GET path` over http with `:authority localhost`.
pub fn get_block(path: &str) -> Vec<u8> {
    request_block("GET", path)
}

/// The field block of `method path` over http with `:authority localhost`.
pub fn request_block(method: &str, path: &str) -> Vec<u8> {
    let mut out = match method {
        "GET" => vec![METHOD_GET],
        "POST" => vec![METHOD_POST],
        other => literal(":method", other),
    };
    out.push(SCHEME_HTTP);
    out.extend(literal(":authority", "localhost"));
    match path {
        "/" => out.push(PATH_ROOT),
        other => out.extend(literal(":path", other)),
    }
    out
}

/// The names of HPACK's static table (RFC 7541, appendix A), index 1 first.
const STATIC_NAMES: [&str; 61] = [
    ":authority",
    ":method",
    ":method",
    ":path",
    ":path",
    ":scheme",
    ":scheme",
    ":status",
    ":status",
    ":status",
    ":status",
    ":status",
    ":status",
    ":status",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "accept",
    "access-control-allow-origin",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "content-disposition",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-range",
    "content-type",
    "cookie",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "link",
    "location",
    "max-forwards",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "refresh",
    "retry-after",
    "server",
    "set-cookie",
    "strict-transport-security",
    "transfer-encoding",
    "user-agent",
    "vary",
    "via",
    "www-authenticate",
];

/// The statuses of static entries 8 to 14.
const STATIC_STATUSES: [&str; 7] = ["200", "204", "206", "304", "400", "404", "500"];

/// Reads an HPACK integer with an `n`-bit prefix at `block[*pos..]`.
fn read_integer(block: &[u8], pos: &mut usize, n: u8) -> usize {
    let max = (1usize << n) - 1;
    let mut value = block[*pos] as usize & max;
    *pos += 1;
    if value < max {
        return value;
    }
    let mut shift = 0;
    loop {
        let b = *block.get(*pos).expect("HPACK integer cut short");
        *pos += 1;
        value += ((b & 0x7f) as usize) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            return value;
        }
    }
}

/// Reads an HPACK string: its text when raw, or Huffman-coded digits; `None`
/// for other Huffman-coded text (this client has no full Huffman decoder).
fn read_string(block: &[u8], pos: &mut usize) -> Option<String> {
    let huffman = block[*pos] & 0x80 != 0;
    let len = read_integer(block, pos, 7);
    let bytes = block.get(*pos..*pos + len).expect("HPACK string cut short");
    *pos += len;
    match huffman {
        false => Some(String::from_utf8_lossy(bytes).into_owned()),
        true => huffman_digits(bytes),
    }
}

/// Decodes a Huffman-coded string of digits (RFC 7541, appendix B: `0`-`2`
/// are 5-bit codes 0-2, `3`-`9` 6-bit codes 0x19-0x1f); `None` for anything else.
pub fn huffman_digits(bytes: &[u8]) -> Option<String> {
    let bits = bytes.len() * 8;
    let bit = |i: usize| (bytes[i / 8] >> (7 - i % 8)) & 1;
    let take = |at: usize, n: usize| (at..at + n).fold(0u8, |v, i| v << 1 | bit(i));
    let mut out = String::new();
    let mut at = 0;
    loop {
        let left = bits - at;
        // Padding: fewer than 8 bits, all ones (a prefix of EOS).
        if left < 8 && (at..bits).all(|i| bit(i) == 1) {
            return Some(out);
        }
        if left >= 5 && take(at, 5) <= 2 {
            out.push((b'0' + take(at, 5)) as char);
            at += 5;
        } else if left >= 6 && (0x19..=0x1f).contains(&take(at, 6)) {
            out.push((b'3' + take(at, 6) - 0x19) as char);
            at += 6;
        } else {
            return None;
        }
    }
}

/// The fields of a response's field block, as (name, value) with `None` for
/// what this client cannot read (Huffman-coded text). Panics on a reference
/// to the dynamic table: this client set its size to 0.
pub fn decode_fields(block: &[u8]) -> Vec<(String, Option<String>)> {
    let mut fields = Vec::new();
    let mut pos = 0;
    while pos < block.len() {
        let b = block[pos];
        if b & 0x80 != 0 {
            let index = read_integer(block, &mut pos, 7);
            assert!(
                (1..=61).contains(&index),
                "indexed field {index}: the dynamic table was used after SETTINGS_HEADER_TABLE_SIZE 0"
            );
            let value = (8..=14)
                .contains(&index)
                .then(|| STATIC_STATUSES[index - 8].to_string());
            fields.push((STATIC_NAMES[index - 1].to_string(), value));
            continue;
        }
        if b & 0xe0 == 0x20 {
            // Dynamic table size update.
            read_integer(block, &mut pos, 5);
            continue;
        }
        let prefix = if b & 0x40 != 0 { 6 } else { 4 };
        let index = read_integer(block, &mut pos, prefix);
        let name = match index {
            0 => read_string(block, &mut pos).unwrap_or_else(|| "<huffman>".into()),
            1..=61 => STATIC_NAMES[index - 1].to_string(),
            _ => panic!("literal with dynamic name {index} after SETTINGS_HEADER_TABLE_SIZE 0"),
        };
        let value = read_string(block, &mut pos);
        fields.push((name, value));
    }
    fields
}

// ---------------------------------------------------------------------------
// The client

/// A response read off the wire.
#[derive(Debug)]
pub struct Response {
    pub stream: u32,
    pub status: u16,
    pub fields: Vec<(String, Option<String>)>,
    pub body: Vec<u8>,
    /// The frames of this stream, in order (HEADERS, DATA, trailers).
    pub frames: Vec<Frame>,
}

impl Response {
    /// The first `name` field's value, when readable.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_deref())
    }
}

/// What the server did about a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A response head with this status.
    Status(u16),
    /// RST_STREAM with this code.
    Reset(u32),
    /// GOAWAY with this code.
    GoAway(u32),
    /// Closed without a GOAWAY.
    Closed,
}

/// A raw HTTP/2 client connection.
pub struct H2 {
    io: Conn,
    buf: BytesMut,
    /// Frames of other streams read while waiting for one stream's.
    stash: std::collections::VecDeque<Frame>,
    /// The server's SETTINGS, as received in the handshake.
    pub server_settings: Vec<(u16, u32)>,
    /// Every frame read so far, for messages.
    pub seen: Vec<Frame>,
}

impl H2 {
    /// A plain TCP connection to `addr`; nothing sent yet.
    pub async fn open(addr: SocketAddr) -> H2 {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.set_nodelay(true).unwrap();
        H2::over(Box::new(tcp))
    }

    /// A client over `io` (TLS, say); nothing sent yet.
    pub fn over(io: Conn) -> H2 {
        H2 {
            io,
            buf: BytesMut::new(),
            stash: Default::default(),
            server_settings: Vec::new(),
            seen: Vec::new(),
        }
    }

    /// [`H2::open`] and [`H2::handshake`].
    pub async fn connect(addr: SocketAddr) -> H2 {
        let mut h2 = H2::open(addr).await;
        h2.handshake().await;
        h2
    }

    /// Sends the preface and SETTINGS (header table size 0, no push), and reads
    /// until the server's SETTINGS (acknowledged) and its ACK of ours have come.
    /// Panics unless the server's first frame is SETTINGS.
    pub async fn handshake(&mut self) {
        let mut hello = PREFACE.to_vec();
        hello.extend(settings(&[
            (SETTINGS_HEADER_TABLE_SIZE, 0),
            (SETTINGS_ENABLE_PUSH, 0),
        ]));
        self.send(&hello).await;
        let first = self.next().await.expect("closed before SETTINGS");
        assert!(
            first.kind == SETTINGS && !first.has(ACK),
            "the server's first frame must be SETTINGS: {first:?}"
        );
        self.server_settings = first.settings();
        let mut acked = false;
        while !acked {
            let f = self.next().await.expect("closed before the SETTINGS ACK");
            acked = f.kind == SETTINGS && f.has(ACK);
        }
    }

    /// The server's value for `setting`, if it sent one.
    pub fn server_setting(&self, setting: u16) -> Option<u32> {
        self.server_settings
            .iter()
            .rev()
            .find(|(id, _)| *id == setting)
            .map(|(_, v)| *v)
    }

    /// Writes `bytes`; panics if that fails or takes more than [`FRAME_TIMEOUT`].
    pub async fn send(&mut self, bytes: &[u8]) {
        tokio::time::timeout(FRAME_TIMEOUT, self.write_flush(bytes))
            .await
            .expect("write timed out")
            .expect("write failed");
    }

    /// Writes `bytes`; false if that failed (the server closed) or timed out
    /// (it stopped reading; the connection is then unusable).
    pub async fn send_lossy(&mut self, bytes: &[u8]) -> bool {
        matches!(
            tokio::time::timeout(FRAME_TIMEOUT, self.write_flush(bytes)).await,
            Ok(Ok(()))
        )
    }

    async fn write_flush(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.io.write_all(bytes).await?;
        self.io.flush().await
    }

    /// Writes one frame.
    pub async fn send_frame(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        self.send(&frame(kind, flags, stream, payload)).await;
    }

    /// The next frame, `None` when the server closed (or reset) the connection;
    /// panics after [`FRAME_TIMEOUT`] without one. SETTINGS from the server
    /// are acknowledged (and returned).
    pub async fn next(&mut self) -> Option<Frame> {
        self.next_within(FRAME_TIMEOUT)
            .await
            .unwrap_or_else(|| panic!("no frame within {FRAME_TIMEOUT:?}; seen {:?}", self.seen))
    }

    /// Reads connection frames up to the ACK of a PING sent earlier (which
    /// says every frame sent before it was handled); panics on a close.
    pub async fn until_ping_ack(&mut self) {
        loop {
            let f = self.next_for(0).await.expect("closed before the PING ACK");
            if f.kind == PING && f.has(ACK) {
                return;
            }
        }
    }

    /// The next frame within `wait`: `None` if none came, `Some(None)` if the
    /// server closed the connection.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Option<Frame>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(f) = parse_frame(&mut self.buf) {
                if f.kind == SETTINGS && !f.has(ACK) {
                    // Best effort: the server may be closing.
                    let _ = self.send_lossy(&frame(SETTINGS, ACK, 0, &[])).await;
                }
                self.seen.push(Frame {
                    payload: f.payload.iter().take(64).copied().collect(),
                    ..f.clone()
                });
                return Some(Some(f));
            }
            self.buf.reserve(64 * 1024);
            match tokio::time::timeout_at(deadline, self.io.read_buf(&mut self.buf)).await {
                Err(_) => return None,
                Ok(Ok(0)) | Ok(Err(_)) => return Some(None),
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Sends a HEADERS frame with `block` (END_HEADERS set).
    pub async fn request(&mut self, stream: u32, block: &[u8], end_stream: bool) {
        self.send(&headers(stream, block, end_stream)).await;
    }

    /// Sends `GET path` on `stream` and reads the response.
    pub async fn get(&mut self, stream: u32, path: &str) -> Response {
        self.request(stream, &get_block(path), true).await;
        self.response(stream).await
    }

    /// The next frame for `stream` or for the connection (stream 0), taken
    /// from the stash first; other streams' frames are stashed for their own
    /// readers. `None` when the server closed the connection.
    pub async fn next_for(&mut self, stream: u32) -> Option<Frame> {
        if let Some(i) = self.stash.iter().position(|f| f.stream == stream) {
            return self.stash.remove(i);
        }
        loop {
            let f = self.next().await?;
            if f.stream == stream || f.stream == 0 {
                return Some(f);
            }
            self.stash.push_back(f);
        }
    }

    /// Reads the response on `stream` up to its END_STREAM (interim responses
    /// skipped, the DATA read acknowledged with WINDOW_UPDATEs); panics on a
    /// RST_STREAM, on a GOAWAY that is not a graceful one covering `stream`,
    /// or on a close first.
    pub async fn response(&mut self, stream: u32) -> Response {
        let mut resp = Response {
            stream,
            status: 0,
            fields: Vec::new(),
            body: Vec::new(),
            frames: Vec::new(),
        };
        loop {
            let f = self.next_for(stream).await.unwrap_or_else(|| {
                panic!(
                    "closed before the response on stream {stream}; seen {:?}",
                    self.seen
                )
            });
            if f.kind == GOAWAY {
                let last = f.payload.get(..4).map_or(0, |b| {
                    u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff
                });
                assert!(
                    f.error_code() == Some(NO_ERROR) && last >= stream,
                    "{f:?} instead of the response on stream {stream}; seen {:?}",
                    self.seen
                );
                continue;
            }
            assert!(
                f.kind != RST_STREAM,
                "{f:?} instead of the response on stream {stream}; seen {:?}",
                self.seen
            );
            if f.stream != stream {
                continue;
            }
            let end = f.has(END_STREAM);
            match f.kind {
                HEADERS if resp.status == 0 || (100..200).contains(&resp.status) => {
                    let block = self.field_block(&f).await;
                    resp.fields = decode_fields(&block);
                    resp.status = status_of(&resp.fields);
                }
                DATA => {
                    let n = f.payload.len() as u32;
                    resp.body.extend_from_slice(f.content());
                    if n > 0 {
                        let mut ack = window_update(0, n);
                        if !end {
                            ack.extend(window_update(stream, n));
                        }
                        // The server may close once the stream is done.
                        self.send_lossy(&ack).await;
                    }
                }
                _ => {}
            }
            resp.frames.push(f);
            if end && !(100..200).contains(&resp.status) {
                return resp;
            }
        }
    }

    /// The field block of HEADERS frame `f`, with its CONTINUATION frames.
    async fn field_block(&mut self, f: &Frame) -> Vec<u8> {
        let mut block = f.content().to_vec();
        let mut end = f.has(END_HEADERS);
        while !end {
            let c = self
                .next_for(f.stream)
                .await
                .expect("closed within a field block");
            assert!(
                c.kind == CONTINUATION && c.stream == f.stream,
                "{c:?} within a field block"
            );
            block.extend_from_slice(&c.payload);
            end = c.has(END_HEADERS);
        }
        block
    }

    /// Every byte until the server closes the connection (what was buffered
    /// first); panics if it stays open for [`FRAME_TIMEOUT`].
    pub async fn read_to_close(&mut self) -> Vec<u8> {
        let deadline = tokio::time::Instant::now() + FRAME_TIMEOUT;
        loop {
            self.buf.reserve(64 * 1024);
            match tokio::time::timeout_at(deadline, self.io.read_buf(&mut self.buf)).await {
                Err(_) => panic!(
                    "still open after {FRAME_TIMEOUT:?}; read {:?}",
                    String::from_utf8_lossy(&self.buf)
                ),
                Ok(Ok(0)) | Ok(Err(_)) => return self.buf.split().to_vec(),
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Reads until a GOAWAY (its code) or the close (`None`), skipping other
    /// frames; panics if the connection stays open and silent for
    /// [`FRAME_TIMEOUT`].
    pub async fn connection_error(&mut self) -> Option<u32> {
        loop {
            match self.next().await {
                None => return None,
                Some(f) if f.kind == GOAWAY => return f.error_code(),
                Some(_) => {}
            }
        }
    }

    /// What the server did about `stream`: the first of a response head, a
    /// RST_STREAM on it, a GOAWAY, or the close.
    pub async fn outcome(&mut self, stream: u32) -> Outcome {
        loop {
            let Some(f) = self.next_for(stream).await else {
                return Outcome::Closed;
            };
            match f.kind {
                GOAWAY => return Outcome::GoAway(f.error_code().unwrap_or(u32::MAX)),
                RST_STREAM if f.stream == stream => {
                    return Outcome::Reset(f.error_code().unwrap_or(u32::MAX))
                }
                HEADERS if f.stream == stream => {
                    let block = self.field_block(&f).await;
                    let status = status_of(&decode_fields(&block));
                    if !(100..200).contains(&status) {
                        return Outcome::Status(status);
                    }
                }
                _ => {}
            }
        }
    }
}

/// The `:status` among response fields; panics without one.
pub fn status_of(fields: &[(String, Option<String>)]) -> u16 {
    fields
        .iter()
        .find(|(n, _)| n == ":status")
        .and_then(|(_, v)| v.as_deref())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no readable :status in {fields:?}"))
}
