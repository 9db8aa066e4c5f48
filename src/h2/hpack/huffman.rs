//! HPACK's Huffman code (RFC 7541 section 5.2, Appendix B): decoding the
//! string literals a peer chose to compress (browsers compress nearly every
//! string, so each request's cookie comes through here).
//!
//! The code is canonical (codes ordered by length, then by symbol), so the
//! whole table is held as the code length of each of the 257 symbols (bytes,
//! then EOS) and the codes are derived from those. Decoding reads the string
//! through a 64-bit window and looks its next 12 bits up in a table
//! ([`Tables::pairs`], 16 KiB) that gives the one or two symbols whose codes
//! those bits begin with: two 5- or 6-bit codes (digits, lowercase letters,
//! common punctuation) decode in one lookup, about 1.7 symbols a lookup on a
//! cookie. The string's last bits go through the 256-entry single-symbol
//! table ([`Tables::short`]), and codes longer than the tables' bits (rare
//! punctuation, control and non-ASCII bytes) through the canonical walk of
//! [`Tables::long_symbol`].

use std::sync::OnceLock;

use super::DecodeError;

/// The code length in bits of each symbol: bytes 0-255, then EOS (256).
/// Transcribed from RFC 7541 Appendix B; the codes are derived from them
/// ([`Tables::build`]) and checked against the RFC's in the tests.
const CODE_LENGTHS: [u8; SYMBOLS] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, // 0x00
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28, // 0x10
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, // 0x20 ' '
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, // 0x30 '0'
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, // 0x40 '@'
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, // 0x50 'P'
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, // 0x60 '`'
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, // 0x70 'p'
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, // 0x80
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, // 0x90
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, // 0xa0
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, // 0xb0
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, // 0xc0
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, // 0xd0
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, // 0xe0
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, // 0xf0
    30, // EOS
];

/// Bytes, then EOS.
const SYMBOLS: usize = 257;
/// The symbol that may only appear as padding (its first bits), never whole.
pub(super) const EOS: u16 = 256;
/// The longest code, in bits (EOS and a few control bytes).
const LONGEST: u32 = 30;
/// The bits the single-symbol table is indexed by: every code up to this
/// long decodes in one lookup (no code is 9 bits long: 9 would gain nothing).
const SHORT_BITS: u32 = 8;
/// The bits the pair table is indexed by: two codes of up to 12 bits
/// together decode in one lookup (as do codes of 9 to 12 bits alone).
const PAIR_BITS: u32 = 12;
/// Padding is at most this many bits (the start of EOS, so all ones).
const MAX_PADDING: u32 = 7;

/// An entry of a single-symbol table: the symbol whose code the index bits
/// begin with and its length, or length 0 when they begin a longer code.
#[derive(Clone, Copy, Default)]
struct ShortCode {
    symbol: u8,
    len: u8,
}

/// What the next [`PAIR_BITS`] bits begin with: `count` symbols (0 when a
/// code longer than that), whose codes take `len` bits together. The second
/// symbol is 0 when there is one.
#[derive(Clone, Copy, Default)]
struct Pair {
    symbols: [u8; 2],
    count: u8,
    len: u8,
}

/// The decoding tables, derived from [`CODE_LENGTHS`] once per process.
pub(super) struct Tables {
    /// Indexed by the next [`PAIR_BITS`] bits of the string.
    pairs: [Pair; 1 << PAIR_BITS],
    /// Indexed by the next [`SHORT_BITS`] bits of the string.
    short: [ShortCode; 1 << SHORT_BITS],
    /// For each code length: the first code of that length (canonical codes
    /// of one length are consecutive)...
    first_code: [u32; LONGEST as usize + 1],
    /// ...and one past its last code...
    end_code: [u32; LONGEST as usize + 1],
    /// ...and where its symbols start in `by_code`.
    first_rank: [u16; LONGEST as usize + 1],
    /// The symbols in code order (by length, then symbol).
    by_code: [u16; SYMBOLS],
}

/// The tables, built on first use.
pub(super) fn tables() -> &'static Tables {
    static TABLES: OnceLock<Tables> = OnceLock::new();
    TABLES.get_or_init(Tables::build)
}

impl Tables {
    /// Derives the canonical code (as DEFLATE does: RFC 1951 section 3.2.2)
    /// and the decoding tables from the code lengths.
    fn build() -> Tables {
        let mut count = [0u32; LONGEST as usize + 1];
        for &len in &CODE_LENGTHS {
            count[usize::from(len)] += 1;
        }
        let mut first_code = [0u32; LONGEST as usize + 1];
        let mut end_code = [0u32; LONGEST as usize + 1];
        let mut first_rank = [0u16; LONGEST as usize + 1];
        let (mut code, mut rank) = (0u32, 0u16);
        for len in 1..=LONGEST as usize {
            code = (code + count[len - 1]) << 1;
            first_code[len] = code;
            end_code[len] = code + count[len];
            first_rank[len] = rank;
            rank += count[len] as u16;
        }

        let mut codes = [0u32; SYMBOLS];
        let mut by_code = [0u16; SYMBOLS];
        let mut next_code = first_code;
        for (symbol, &len) in CODE_LENGTHS.iter().enumerate() {
            let len = usize::from(len);
            codes[symbol] = next_code[len];
            let rank = first_rank[len] as u32 + (next_code[len] - first_code[len]);
            by_code[rank as usize] = symbol as u16;
            next_code[len] += 1;
        }

        let short = single_symbol_table::<{ 1 << SHORT_BITS }>(&codes);
        let single = single_symbol_table::<{ 1 << PAIR_BITS }>(&codes);
        let mut pairs = [Pair::default(); 1 << PAIR_BITS];
        for (bits, pair) in pairs.iter_mut().enumerate() {
            let first = single[bits];
            if first.len == 0 {
                continue;
            }
            // The code the bits after the first begin with, if they hold one
            // whole (zeros shifted in begin no code they do not hold).
            let second = single[(bits << first.len) & ((1 << PAIR_BITS) - 1)];
            *pair = if second.len != 0 && first.len + second.len <= PAIR_BITS as u8 {
                Pair {
                    symbols: [first.symbol, second.symbol],
                    count: 2,
                    len: first.len + second.len,
                }
            } else {
                Pair {
                    symbols: [first.symbol, 0],
                    count: 1,
                    len: first.len,
                }
            };
        }

        Tables {
            pairs,
            short,
            first_code,
            end_code,
            first_rank,
            by_code,
        }
    }

    /// The symbol whose code begins `window` (most significant bit first) and
    /// its length, for a code longer than [`SHORT_BITS`]: the canonical walk,
    /// trying each length in turn (a code of length `len` is the first `len`
    /// bits when they fall below the end of that length's codes).
    #[cold]
    fn long_symbol(&self, window: u64) -> Option<(u16, u32)> {
        let bits = (window >> (64 - LONGEST)) as u32;
        (SHORT_BITS + 1..=LONGEST).find_map(|len| {
            let code = bits >> (LONGEST - len);
            let len_index = len as usize;
            (code < self.end_code[len_index]).then(|| {
                let rank =
                    u32::from(self.first_rank[len_index]) + code - self.first_code[len_index];
                (self.by_code[rank as usize], len)
            })
        })
    }

    /// A symbol's code, right-aligned (as the RFC prints them), and its
    /// length, read back from the decoding tables.
    #[cfg(test)]
    pub(super) fn code(&self, symbol: u16) -> (u32, u32) {
        let len = CODE_LENGTHS[usize::from(symbol)];
        let len_index = usize::from(len);
        let rank = self.by_code.iter().position(|&s| s == symbol).unwrap_or(0);
        let offset = rank as u32 - u32::from(self.first_rank[len_index]);
        (self.first_code[len_index] + offset, u32::from(len))
    }
}

/// A table indexed by the next `log2(N)` bits giving the symbol whose code
/// they begin with and its length (0: a longer code).
fn single_symbol_table<const N: usize>(codes: &[u32; SYMBOLS]) -> [ShortCode; N] {
    let index_bits = N.trailing_zeros();
    let mut table = [ShortCode::default(); N];
    for (symbol, &len) in CODE_LENGTHS.iter().enumerate() {
        let len = u32::from(len);
        // EOS never decodes.
        if len > index_bits || symbol == usize::from(EOS) {
            continue;
        }
        // Every index that begins with this code.
        let free_bits = index_bits - len;
        let first = (codes[symbol] << free_bits) as usize;
        for entry in &mut table[first..first + (1 << free_bits)] {
            *entry = ShortCode {
                symbol: symbol as u8,
                len: len as u8,
            };
        }
    }
    table
}

/// The code lengths, for the completeness test.
#[cfg(test)]
pub(super) fn code_lengths() -> &'static [u8; SYMBOLS] {
    &CODE_LENGTHS
}

/// The encoded string's bits, most significant first, through a 64-bit window.
struct BitReader<'a> {
    input: &'a [u8],
    /// The next byte of `input` not yet in the window.
    pos: usize,
    /// The next bits, most significant first: `avail` of them are valid, and
    /// the bits after those are either the input's following bits (a
    /// refill loads whole words and counts only the whole bytes that fit)
    /// or zeros past the end of the input.
    window: u64,
    avail: u32,
}

impl<'a> BitReader<'a> {
    fn new(input: &'a [u8]) -> Self {
        BitReader {
            input,
            pos: 0,
            window: 0,
            avail: 0,
        }
    }

    /// Tops the window up to at least 57 bits, or to the end of the input.
    #[inline]
    fn refill(&mut self) {
        if let Some(word) = self
            .input
            .get(self.pos..)
            .and_then(|rest| rest.first_chunk::<8>())
        {
            // ORing is harmless: the bits past `avail` already are these.
            self.window |= u64::from_be_bytes(*word) >> self.avail;
            let whole_bytes = (64 - self.avail) / 8;
            self.pos += whole_bytes as usize;
            self.avail += whole_bytes * 8;
        } else {
            while self.avail <= 56 {
                let Some(&byte) = self.input.get(self.pos) else {
                    break;
                };
                self.window |= u64::from(byte) << (56 - self.avail);
                self.pos += 1;
                self.avail += 8;
            }
        }
    }

    #[inline]
    fn consume(&mut self, len: u32) {
        self.window <<= len;
        self.avail -= len;
    }
}

/// Decodes a Huffman-coded string into `out` (cleared first).
pub(super) fn decode(encoded: &[u8], out: &mut Vec<u8>) -> Result<(), DecodeError> {
    out.clear();
    // Every code is at least 5 bits: room for every symbol, and one more
    // for the pair table's second byte.
    out.resize(encoded.len() * 8 / 5 + 1, 0);
    match decode_into(encoded, out) {
        Ok(len) => {
            out.truncate(len);
            Ok(())
        }
        Err(error) => {
            out.clear();
            Err(error)
        }
    }
}

/// Decodes into `out`, which has room for every symbol and one more;
/// returns how many.
fn decode_into(encoded: &[u8], out: &mut [u8]) -> Result<usize, DecodeError> {
    let tables = tables();
    let mut reader = BitReader::new(encoded);
    let mut written = 0;
    loop {
        reader.refill();
        if reader.avail < LONGEST {
            // The whole rest of the input is in the window.
            return decode_tail(tables, &mut reader, out, written);
        }
        // Lookups while the window holds the pair table's bits: 4 or 5 from
        // a full window.
        while reader.avail >= PAIR_BITS {
            let pair = tables.pairs[(reader.window >> (64 - PAIR_BITS)) as usize];
            if pair.count != 0 {
                // Both bytes, whatever the count: `out` has room for it.
                out[written..written + 2].copy_from_slice(&pair.symbols);
                written += usize::from(pair.count);
                reader.consume(u32::from(pair.len));
            } else if reader.avail >= LONGEST {
                let (symbol, len) = decode_long(tables, reader.window)?;
                out[written] = symbol;
                written += 1;
                reader.consume(len);
            } else {
                // A long code may need more bits than are left: refill.
                break;
            }
        }
    }
}

/// A long code's byte and length; EOS is an error.
fn decode_long(tables: &Tables, window: u64) -> Result<(u8, u32), DecodeError> {
    // The code is complete: every 30 bits begin with some code.
    let (symbol, len) = tables
        .long_symbol(window)
        .ok_or(DecodeError::HuffmanPadding)?;
    let byte = u8::try_from(symbol).map_err(|_| DecodeError::HuffmanEos)?;
    Ok((byte, len))
}

/// Decodes the last bits of the string (fewer than 30, all in the window, zeros
/// after them), which must end in at most 7 bits of padding, all ones.
fn decode_tail(
    tables: &Tables,
    reader: &mut BitReader<'_>,
    out: &mut [u8],
    mut written: usize,
) -> Result<usize, DecodeError> {
    while reader.avail > 0 {
        if reader.avail <= MAX_PADDING
            && reader.window >> (64 - reader.avail) == (1 << reader.avail) - 1
        {
            // No code is all ones but EOS, so these bits begin no symbol.
            return Ok(written);
        }
        let short = tables.short[(reader.window >> (64 - SHORT_BITS)) as usize];
        let (symbol, len) = if short.len != 0 {
            (short.symbol, u32::from(short.len))
        } else {
            decode_long(tables, reader.window)?
        };
        if len > reader.avail {
            // The string ends inside a code: the padding was not all ones
            // or longer than 7 bits.
            return Err(DecodeError::HuffmanPadding);
        }
        out[written] = symbol;
        written += 1;
        reader.consume(len);
    }
    Ok(written)
}

/// Huffman-codes `input` onto `out`: the tests' encoder (ours never
/// compresses).
#[cfg(test)]
pub(super) fn encode(input: &[u8], out: &mut Vec<u8>) {
    let tables = tables();
    let (mut bits, mut pending) = (0u64, 0u32);
    for &byte in input {
        let (code, len) = tables.code(u16::from(byte));
        bits = (bits << len) | u64::from(code);
        pending += len;
        while pending >= 8 {
            pending -= 8;
            out.push((bits >> pending) as u8);
        }
    }
    if pending > 0 {
        // Pad with the first bits of EOS: ones.
        let pad = 8 - pending;
        out.push(((bits << pad) as u8) | ((1u8 << pad) - 1));
    }
}
