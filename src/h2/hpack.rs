//! HPACK (RFC 7541): the header compression of HTTP/2, for limpet's own
//! HTTP/2 server. The [`Decoder`] turns a request's header block (HEADERS
//! and CONTINUATION fragments joined) into fields, keeping the dynamic table
//! in step with the client's encoder; the [`Encoder`] writes a response's
//! header block.
//!
//! The decoder is complete: static and dynamic tables, every field
//! representation, size updates, Huffman strings (`huffman`, with a lookup
//! table for the common short codes). It hands each field to a callback as
//! slices of the block, of the tables, or of its own scratch buffers, so a
//! field costs no allocation unless the client asks us to remember it.
//!
//! The encoder is as lean as HAProxy's: no dynamic table and no Huffman, so
//! it has nothing to keep in step and writes each field straight into the
//! caller's buffer. A field is a "literal without indexing" whose name is a
//! static-table index when the static table has the name; the common
//! statuses are the static table's indexed fields.

mod huffman;
mod table;
#[cfg(test)]
mod tests;

use table::{static_name_index, DynamicTable, Entry};

/// A header block was malformed: the connection ends with COMPRESSION_ERROR.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("the header block ends inside a field")]
    Truncated,
    #[error(
        "an integer has more than {MAX_CONTINUATION_BYTES} continuation bytes or exceeds 2^32-1"
    )]
    IntegerOverflow,
    #[error("index {index} is neither in the static table nor among the dynamic table's {dynamic_len} entries")]
    InvalidIndex { index: usize, dynamic_len: usize },
    #[error("a dynamic table size update follows a field (it must open the block)")]
    SizeUpdateAfterField,
    #[error("a dynamic table size update to {size} exceeds the {max} we advertise")]
    SizeUpdateTooLarge { size: usize, max: usize },
    #[error("a Huffman-coded string contains EOS")]
    HuffmanEos,
    #[error("a Huffman-coded string ends in padding longer than 7 bits or not all ones")]
    HuffmanPadding,
}

/// An integer's continuation bytes beyond which it is an error: 4 carry 28
/// bits; 5 allow some zero padding.
const MAX_CONTINUATION_BYTES: usize = 5;

/// The decoder of a connection's request header blocks.
pub struct Decoder {
    /// What the peer's encoder has told us to remember.
    table: DynamicTable,
    /// The SETTINGS_HEADER_TABLE_SIZE we advertise: the most a size update
    /// may ask for.
    max_table_size: usize,
    /// A Huffman-coded name's decoding, kept to reuse its allocation.
    name_scratch: Vec<u8>,
    /// A Huffman-coded value's decoding, likewise.
    value_scratch: Vec<u8>,
}

impl Decoder {
    /// `max_table_size`: the SETTINGS_HEADER_TABLE_SIZE we advertise (4096): a size update above it is an error.
    pub fn new(max_table_size: usize) -> Self {
        Decoder {
            table: DynamicTable::new(max_table_size),
            max_table_size,
            name_scratch: Vec::new(),
            value_scratch: Vec::new(),
        }
    }

    /// Decodes one complete header block (HEADERS + CONTINUATION fragments already joined, padding/priority removed),
    /// calling `field(name, value)` for every field in order. The whole block is always decoded (the dynamic table
    /// must stay in step with the peer) unless it is malformed.
    pub fn decode(
        &mut self,
        block: &[u8],
        mut field: impl FnMut(&[u8], &[u8]),
    ) -> Result<(), DecodeError> {
        let mut input = Input { rest: block };
        let mut before_first_field = true;
        while let Some(&first) = input.rest.first() {
            match first {
                // 1xxxxxxx: indexed field.
                0x80..=0xff => {
                    let (name, value) = self.table.field(input.integer(7)?)?;
                    field(name, value);
                }
                // 01xxxxxx: literal with incremental indexing.
                0x40..=0x7f => self.decode_literal(&mut input, 6, true, &mut field)?,
                // 001xxxxx: dynamic table size update.
                0x20..=0x3f => {
                    if !before_first_field {
                        return Err(DecodeError::SizeUpdateAfterField);
                    }
                    self.update_table_size(input.integer(5)?)?;
                    continue;
                }
                // 0000xxxx without indexing, 0001xxxx never indexed: the same
                // to us (we forward over HTTP/1, which has no such notion).
                0x00..=0x1f => self.decode_literal(&mut input, 4, false, &mut field)?,
            }
            before_first_field = false;
        }
        Ok(())
    }

    /// A literal field (RFC 7541 section 6.2) whose first byte has
    /// `prefix_bits` of name index; `indexed`: the peer added it to its table.
    fn decode_literal(
        &mut self,
        input: &mut Input<'_>,
        prefix_bits: u32,
        indexed: bool,
        field: &mut impl FnMut(&[u8], &[u8]),
    ) -> Result<(), DecodeError> {
        let Decoder {
            table,
            name_scratch,
            value_scratch,
            ..
        } = self;
        let name = match input.integer(prefix_bits)? {
            0 => input.string(name_scratch)?,
            index => table.field(index)?.0,
        };
        let value = input.string(value_scratch)?;
        if indexed {
            // Copied before inserting: the insertion may evict the entry
            // the name came from.
            let entry = Entry::new(name, value);
            field(entry.name(), entry.value());
            table.insert(entry);
        } else {
            field(name, value);
        }
        Ok(())
    }

    fn update_table_size(&mut self, size: usize) -> Result<(), DecodeError> {
        if size > self.max_table_size {
            return Err(DecodeError::SizeUpdateTooLarge {
                size,
                max: self.max_table_size,
            });
        }
        self.table.set_max_size(size);
        Ok(())
    }
}

/// The rest of a header block being decoded.
struct Input<'a> {
    rest: &'a [u8],
}

impl<'a> Input<'a> {
    /// An integer whose first byte holds `prefix_bits` of it (RFC 7541
    /// section 5.1); the bits above the prefix are the caller's.
    fn integer(&mut self, prefix_bits: u32) -> Result<usize, DecodeError> {
        let prefix_max = (1u8 << prefix_bits) - 1;
        let value = self.byte()? & prefix_max;
        if value < prefix_max {
            return Ok(usize::from(value));
        }
        let mut value = u64::from(value);
        for continuation in 0..MAX_CONTINUATION_BYTES {
            let byte = self.byte()?;
            value += u64::from(byte & 0x7f) << (7 * continuation);
            if byte & 0x80 == 0 {
                return u32::try_from(value)
                    .ok()
                    .and_then(|value| usize::try_from(value).ok())
                    .ok_or(DecodeError::IntegerOverflow);
            }
        }
        Err(DecodeError::IntegerOverflow)
    }

    /// A string literal (RFC 7541 section 5.2): a slice of the block, or of
    /// `scratch` when Huffman-coded.
    fn string<'s>(&mut self, scratch: &'s mut Vec<u8>) -> Result<&'s [u8], DecodeError>
    where
        'a: 's,
    {
        let huffman = self.rest.first().is_some_and(|&first| first & 0x80 != 0);
        let len = self.integer(7)?;
        if len > self.rest.len() {
            return Err(DecodeError::Truncated);
        }
        let (string, rest) = self.rest.split_at(len);
        self.rest = rest;
        if !huffman {
            return Ok(string);
        }
        huffman::decode(string, scratch)?;
        let scratch: &'s Vec<u8> = scratch;
        Ok(scratch)
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        let (&byte, rest) = self.rest.split_first().ok_or(DecodeError::Truncated)?;
        self.rest = rest;
        Ok(byte)
    }
}

/// The encoder: no dynamic table, no Huffman (as HAProxy's encoder): fields as "literal without indexing",
/// name by static-table index when the static table has the name, else a literal name; `:status` 200/204/206/304/400/404/500
/// as the static table's indexed fields, other statuses as literal with name index 8.
pub struct Encoder {
    /// A dynamic table size update to 0 opens the next block: at the
    /// connection's first, and after the peer's setting changed.
    size_update_owed: bool,
}

impl Default for Encoder {
    fn default() -> Self {
        Self::new()
    }
}

/// The static table's index of `:status`, the name of a status not in it.
const STATUS_NAME_INDEX: usize = 8;

impl Encoder {
    pub fn new() -> Self {
        Encoder {
            size_update_owed: true,
        }
    }

    /// The peer's SETTINGS_HEADER_TABLE_SIZE changed (or was first received).
    pub fn set_max_table_size(&mut self, size: usize) {
        // Whatever the size, our table stays empty: announcing 0 is right.
        let _ = size;
        self.size_update_owed = true;
    }

    /// Starts a header block in `out` (appends, never clears): writes a dynamic table size update to 0 when one is
    /// owed: at the start of the first block of the connection, and after `set_max_table_size`.
    /// (Our table is always empty; a size update to 0 is always legal at a block's start.)
    pub fn begin_block(&mut self, out: &mut Vec<u8>) {
        if std::mem::take(&mut self.size_update_owed) {
            write_integer(out, 0x20, 5, 0);
        }
    }

    pub fn encode_status(&mut self, out: &mut Vec<u8>, status: u16) {
        let index = match status {
            200 => 8,
            204 => 9,
            206 => 10,
            304 => 11,
            400 => 12,
            404 => 13,
            500 => 14,
            _ => {
                write_integer(out, 0x00, 4, STATUS_NAME_INDEX);
                write_string(out, itoa::Buffer::new().format(status).as_bytes());
                return;
            }
        };
        write_integer(out, 0x80, 7, index);
    }

    /// `name` is lowercase already (the caller ensures it).
    pub fn encode_field(&mut self, out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
        // 0000xxxx: literal without indexing, name by index or (0) literal.
        match static_name_index(name) {
            Some(index) => write_integer(out, 0x00, 4, index),
            None => {
                write_integer(out, 0x00, 4, 0);
                write_string(out, name);
            }
        }
        write_string(out, value);
    }
}

/// Writes `value` as an integer with a `prefix_bits` prefix (RFC 7541
/// section 5.1) after `flags`, the first byte's bits above the prefix.
fn write_integer(out: &mut Vec<u8>, flags: u8, prefix_bits: u32, value: usize) {
    let prefix_max = (1usize << prefix_bits) - 1;
    if value < prefix_max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | prefix_max as u8);
    let mut rest = value - prefix_max;
    while rest >= 0x80 {
        out.push(0x80 | (rest & 0x7f) as u8);
        rest >>= 7;
    }
    out.push(rest as u8);
}

/// Writes a string literal, not Huffman-coded.
fn write_string(out: &mut Vec<u8>, string: &[u8]) {
    write_integer(out, 0x00, 7, string.len());
    out.extend_from_slice(string);
}
