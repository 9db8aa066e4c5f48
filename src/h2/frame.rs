//! HTTP/2 frames on the wire (RFC 9113, section 4 and 6): the 9-byte frame
//! header, the frame types, flags, settings and error codes limpet's HTTP/2
//! server reads and writes, and writers that append frames to a connection's
//! output buffer.

pub use crate::h1::io::{is_preface, PREFACE};

/// The frame header's length.
pub const HEADER_LEN: usize = 9;
/// SETTINGS_MAX_FRAME_SIZE's initial value: the largest payload limpet accepts
/// (it never advertises more) and sends until the client allows more.
pub const DEFAULT_MAX_FRAME: usize = 16_384;
/// The largest flow-control window (RFC 9113, section 6.9.1).
pub const MAX_WINDOW: i64 = (1 << 31) - 1;
/// Every stream's and the connection's window before SETTINGS change it.
pub const DEFAULT_WINDOW: i64 = 65_535;

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

pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const PADDED: u8 = 0x8;
pub const PRIORITY_FLAG: u8 = 0x20;

pub const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;
pub const SETTINGS_ENABLE_PUSH: u16 = 0x2;
pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
pub const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;
pub const SETTINGS_MAX_HEADER_LIST_SIZE: u16 = 0x6;

/// Error codes (RFC 9113, section 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Reason {
    NoError = 0x0,
    Protocol = 0x1,
    Internal = 0x2,
    FlowControl = 0x3,
    StreamClosed = 0x5,
    FrameSize = 0x6,
    RefusedStream = 0x7,
    Compression = 0x9,
    EnhanceYourCalm = 0xb,
}

/// A frame's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub len: usize,
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
}

impl Head {
    /// The header at the start of `bytes` (at least [`HEADER_LEN`] long).
    pub fn parse(bytes: &[u8]) -> Head {
        Head {
            len: usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]),
            kind: bytes[3],
            flags: bytes[4],
            // The reserved bit is ignored (RFC 9113, section 4.1).
            stream: u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) & 0x7fff_ffff,
        }
    }

    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

/// Appends a frame header.
pub fn write_head(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream: u32) {
    let len = len as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
}

/// Sets the length of the frame whose header starts at `at`.
pub fn patch_len(out: &mut [u8], at: usize, len: usize) {
    out[at..at + 3].copy_from_slice(&(len as u32).to_be_bytes()[1..]);
}

pub fn write_settings(out: &mut Vec<u8>, settings: &[(u16, u32)]) {
    write_head(out, settings.len() * 6, SETTINGS, 0, 0);
    for (id, value) in settings {
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&value.to_be_bytes());
    }
}

pub fn write_settings_ack(out: &mut Vec<u8>) {
    write_head(out, 0, SETTINGS, ACK, 0);
}

pub fn write_ping_ack(out: &mut Vec<u8>, payload: &[u8]) {
    write_head(out, 8, PING, ACK, 0);
    out.extend_from_slice(payload);
}

pub fn write_window_update(out: &mut Vec<u8>, stream: u32, increment: u32) {
    write_head(out, 4, WINDOW_UPDATE, 0, stream);
    out.extend_from_slice(&increment.to_be_bytes());
}

pub fn write_rst_stream(out: &mut Vec<u8>, stream: u32, reason: Reason) {
    write_head(out, 4, RST_STREAM, 0, stream);
    out.extend_from_slice(&(reason as u32).to_be_bytes());
}

pub fn write_goaway(out: &mut Vec<u8>, last_stream: u32, reason: Reason) {
    write_head(out, 8, GOAWAY, 0, 0);
    out.extend_from_slice(&last_stream.to_be_bytes());
    out.extend_from_slice(&(reason as u32).to_be_bytes());
}

pub fn write_data(out: &mut Vec<u8>, stream: u32, data: &[u8], end_stream: bool) {
    let flags = if end_stream { END_STREAM } else { 0 };
    write_head(out, data.len(), DATA, flags, stream);
    out.extend_from_slice(data);
}

/// The frame's payload without its padding (PADDED flag): `None` when the
/// pad length is more than the payload holds (a PROTOCOL_ERROR).
pub fn unpadded<'a>(head: &Head, payload: &'a [u8]) -> Option<&'a [u8]> {
    if !head.has(PADDED) {
        return Some(payload);
    }
    let (&pad, rest) = payload.split_first()?;
    rest.len()
        .checked_sub(usize::from(pad))
        .map(|end| &rest[..end])
}

/// A 31-bit value (a window increment, a stream id) at the start of `bytes`.
pub fn u31(bytes: &[u8]) -> u32 {
    u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) & 0x7fff_ffff
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_head_parses_back() {
        let mut out = Vec::new();
        write_head(&mut out, 70_000, HEADERS, END_HEADERS | END_STREAM, 7);
        let head = Head::parse(&out);
        assert_eq!(
            head,
            Head {
                len: 70_000,
                kind: HEADERS,
                flags: END_HEADERS | END_STREAM,
                stream: 7
            }
        );
        patch_len(&mut out, 0, 12);
        assert_eq!(Head::parse(&out).len, 12);
    }

    #[test]
    fn the_preface_is_told_as_soon_as_the_bytes_allow() {
        assert_eq!(is_preface(b""), None);
        assert_eq!(is_preface(b"PRI * HTTP/2"), None);
        assert_eq!(is_preface(b"GET / HTTP/1.1\r\n"), Some(false));
        assert_eq!(is_preface(b"PRI * HTTP/1.1"), Some(false));
        let mut whole = PREFACE.to_vec();
        whole.extend_from_slice(&[0, 0, 0, SETTINGS]);
        assert_eq!(is_preface(&whole), Some(true));
    }

    #[test]
    fn the_reserved_bit_of_a_stream_id_is_ignored() {
        let head = Head::parse(&[0, 0, 0, DATA, 0, 0x80, 0, 0, 3]);
        assert_eq!(head.stream, 3);
    }

    #[test]
    fn padding_is_removed_and_too_much_of_it_is_refused() {
        let padded = Head {
            len: 6,
            kind: DATA,
            flags: PADDED,
            stream: 1,
        };
        assert_eq!(
            unpadded(&padded, &[2, b'a', b'b', b'c', 0, 0]),
            Some(&b"abc"[..])
        );
        assert_eq!(unpadded(&padded, &[6, b'a', 0, 0]), None);
        assert_eq!(unpadded(&padded, &[]), None);
    }
}
