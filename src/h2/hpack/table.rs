//! The tables HPACK fields refer to by index (RFC 7541 section 2.3): the
//! static table every connection shares (Appendix A) and the decoder's
//! dynamic table, which the peer's encoder fills and we must keep in step.

use std::collections::VecDeque;

use super::DecodeError;

/// RFC 7541 Appendix A: index 1 is `STATIC[0]`.
pub(super) const STATIC: [(&[u8], &[u8]); 61] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
];

/// The first static-table index whose name is `name` (the encoder's name
/// reference); `None` when the static table lacks the name.
pub(super) fn static_name_index(name: &[u8]) -> Option<usize> {
    let index = match name {
        b":authority" => 1,
        b":method" => 2,
        b":path" => 4,
        b":scheme" => 6,
        b":status" => 8,
        b"accept-charset" => 15,
        b"accept-encoding" => 16,
        b"accept-language" => 17,
        b"accept-ranges" => 18,
        b"accept" => 19,
        b"access-control-allow-origin" => 20,
        b"age" => 21,
        b"allow" => 22,
        b"authorization" => 23,
        b"cache-control" => 24,
        b"content-disposition" => 25,
        b"content-encoding" => 26,
        b"content-language" => 27,
        b"content-length" => 28,
        b"content-location" => 29,
        b"content-range" => 30,
        b"content-type" => 31,
        b"cookie" => 32,
        b"date" => 33,
        b"etag" => 34,
        b"expect" => 35,
        b"expires" => 36,
        b"from" => 37,
        b"host" => 38,
        b"if-match" => 39,
        b"if-modified-since" => 40,
        b"if-none-match" => 41,
        b"if-range" => 42,
        b"if-unmodified-since" => 43,
        b"last-modified" => 44,
        b"link" => 45,
        b"location" => 46,
        b"max-forwards" => 47,
        b"proxy-authenticate" => 48,
        b"proxy-authorization" => 49,
        b"range" => 50,
        b"referer" => 51,
        b"refresh" => 52,
        b"retry-after" => 53,
        b"server" => 54,
        b"set-cookie" => 55,
        b"strict-transport-security" => 56,
        b"transfer-encoding" => 57,
        b"user-agent" => 58,
        b"vary" => 59,
        b"via" => 60,
        b"www-authenticate" => 61,
        _ => return None,
    };
    Some(index)
}

/// What an entry counts for beyond its name and value (RFC 7541 section 4.1).
const ENTRY_OVERHEAD: usize = 32;

/// One dynamic-table field: name and value in one allocation.
pub(super) struct Entry {
    name_and_value: Box<[u8]>,
    name_len: usize,
}

impl Entry {
    pub(super) fn new(name: &[u8], value: &[u8]) -> Self {
        let mut name_and_value = Vec::with_capacity(name.len() + value.len());
        name_and_value.extend_from_slice(name);
        name_and_value.extend_from_slice(value);
        Entry {
            name_and_value: name_and_value.into_boxed_slice(),
            name_len: name.len(),
        }
    }

    pub(super) fn name(&self) -> &[u8] {
        &self.name_and_value[..self.name_len]
    }

    pub(super) fn value(&self) -> &[u8] {
        &self.name_and_value[self.name_len..]
    }

    /// The size the table's limit counts (RFC 7541 section 4.1).
    fn size(&self) -> usize {
        self.name_and_value.len() + ENTRY_OVERHEAD
    }
}

/// The decoder's dynamic table: the fields the peer asked us to remember,
/// newest first, within its size limit (RFC 7541 section 4).
pub(super) struct DynamicTable {
    /// Newest first: index 62 is `entries[0]`.
    entries: VecDeque<Entry>,
    /// The sum of the entries' sizes.
    size: usize,
    /// The limit the peer last set (a size update), at most what we advertise.
    max_size: usize,
}

impl DynamicTable {
    pub(super) fn new(max_size: usize) -> Self {
        DynamicTable {
            entries: VecDeque::new(),
            size: 0,
            max_size,
        }
    }

    /// The field at `index` of the combined index space (1-61 static, then
    /// dynamic, newest first).
    pub(super) fn field(&self, index: usize) -> Result<(&[u8], &[u8]), DecodeError> {
        if let Some(&(name, value)) = index.checked_sub(1).and_then(|i| STATIC.get(i)) {
            return Ok((name, value));
        }
        index
            .checked_sub(STATIC.len() + 1)
            .and_then(|i| self.entries.get(i))
            .map(|entry| (entry.name(), entry.value()))
            .ok_or(DecodeError::InvalidIndex {
                index,
                dynamic_len: self.entries.len(),
            })
    }

    /// Adds `entry` as the newest, evicting the oldest until it fits; an
    /// entry larger than the whole table empties it and is not added
    /// (RFC 7541 section 4.4).
    pub(super) fn insert(&mut self, entry: Entry) {
        let entry_size = entry.size();
        if entry_size > self.max_size {
            self.entries.clear();
            self.size = 0;
            return;
        }
        self.evict_to(self.max_size - entry_size);
        self.size += entry_size;
        self.entries.push_front(entry);
    }

    /// A dynamic table size update (the caller checked it against our limit).
    pub(super) fn set_max_size(&mut self, max_size: usize) {
        self.max_size = max_size;
        self.evict_to(max_size);
    }

    /// Drops the oldest entries until the table's size is at most `size`.
    fn evict_to(&mut self, size: usize) {
        while self.size > size {
            let Some(oldest) = self.entries.pop_back() else {
                break;
            };
            self.size -= oldest.size();
        }
    }

    /// The fields, newest first.
    #[cfg(test)]
    pub(super) fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.entries.iter().map(|e| (e.name(), e.value()))
    }

    #[cfg(test)]
    pub(super) fn size(&self) -> usize {
        self.size
    }

    #[cfg(test)]
    pub(super) fn max_size(&self) -> usize {
        self.max_size
    }
}
