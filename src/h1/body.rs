//! Message bodies as the engine relays them: where a request body ends (by
//! Content-Length or chunks), and the response body copied from the backend
//! to the client as it comes, decoded from its chunks for an HTTP/1.0 client.

use std::io as stdio;

use super::chunked;
use super::head::{Framing, RequestBody, ResponseHead};
use super::io::{give_buffer, grow_if_full, read_some, write_all, Client, Stream, Wait, Waits};

/// Where a request body ends, and how much of it has passed.
pub(super) struct BodyReader {
    framing: RequestBody,
    left: u64,
    chunks: chunked::Scanner,
    /// Bytes of the body taken so far (chunk framing included).
    taken: u64,
}

impl BodyReader {
    pub(super) fn new(framing: RequestBody) -> Self {
        BodyReader {
            framing,
            left: match framing {
                RequestBody::Length(n) => n,
                _ => 0,
            },
            chunks: chunked::Scanner::new(),
            taken: 0,
        }
    }

    /// Bytes of the body received so far, as they came (chunk framing included).
    pub(super) fn taken(&self) -> u64 {
        self.taken
    }

    pub(super) fn done(&self) -> bool {
        match self.framing {
            RequestBody::None => true,
            RequestBody::Length(_) => self.left == 0,
            RequestBody::Chunked => self.chunks.is_done(),
        }
    }

    /// How many of `bytes` belong to the body.
    pub(super) fn take(&mut self, bytes: &[u8]) -> Result<usize, &'static str> {
        let take = match self.framing {
            RequestBody::None => 0,
            RequestBody::Length(_) => {
                let take = self.left.min(bytes.len() as u64);
                self.left -= take;
                take as usize
            }
            RequestBody::Chunked => self
                .chunks
                .feed(bytes)
                .map_err(|_| "malformed chunked request body")?,
        };
        self.taken += take as u64;
        Ok(take)
    }

    /// How much a read may take without reading past the body: all of a
    /// Content-Length body's rest; for a chunked one, bytes past its end are
    /// kept for the next request.
    pub(super) fn read_limit(&self, room: usize) -> usize {
        match self.framing {
            RequestBody::Length(_) => self.left.min(room as u64) as usize,
            _ => room,
        }
    }
}

/// Writes the response head (in `out`) and relays the body; `Ok(true)` when the
/// backend connection ended cleanly at the end of the body and can be reused.
/// `sent` counts the body bytes written to the client (as written: chunk
/// framing included, unless decoded for an HTTP/1.0 client).
#[allow(clippy::too_many_arguments)]
pub(super) async fn relay_body<S: Stream>(
    client: &mut Client<S>,
    socket: &mut crate::pool::Conn,
    mut buf: Vec<u8>,
    head: &ResponseHead,
    mut out: Vec<u8>,
    timeouts: Waits,
    dechunk: bool,
    sent: &mut u64,
) -> stdio::Result<bool> {
    let client_wait = Wait::Idle(timeouts.client_idle);
    let backend_wait = Wait::Idle(timeouts.backend.response);
    let mut body = Body::new(head.framing);
    let head_len = out.len();
    let mut clean = body.relay(&buf[head.len..], &mut out, dechunk)?;
    write_all(&mut client.stream, &out, &mut client.clock, client_wait).await?;
    *sent += (out.len() - head_len) as u64;
    while !body.done() {
        grow_if_full(&mut buf);
        buf.clear();
        if read_some(socket, &mut buf, &mut client.clock, backend_wait).await? == 0 {
            if body.framing == Framing::UntilClose {
                break;
            }
            return Err(stdio::Error::new(
                stdio::ErrorKind::UnexpectedEof,
                "backend closed mid-body",
            ));
        }
        let relayed = match dechunk {
            // Straight from the read buffer, without a copy.
            false => {
                let (take, whole) = body.take(&buf)?;
                clean &= whole;
                &buf[..take]
            }
            true => {
                out.clear();
                clean &= body.relay(&buf, &mut out, true)?;
                &out[..]
            }
        };
        write_all(&mut client.stream, relayed, &mut client.clock, client_wait).await?;
        *sent += relayed.len() as u64;
    }
    give_buffer(buf);
    Ok(clean && body.framing != Framing::UntilClose)
}

/// Where a response body ends.
pub(crate) struct Body {
    framing: Framing,
    left: u64,
    chunks: chunked::Scanner,
}

impl Body {
    pub(crate) fn new(framing: Framing) -> Self {
        Body {
            framing,
            left: match framing {
                Framing::Length(n) => n,
                _ => 0,
            },
            chunks: chunked::Scanner::new(),
        }
    }

    /// Delimited by the close of the connection.
    pub(crate) fn until_close(&self) -> bool {
        self.framing == Framing::UntilClose
    }

    pub(crate) fn done(&self) -> bool {
        match self.framing {
            Framing::Empty => true,
            Framing::Length(_) => self.left == 0,
            Framing::Chunked => self.chunks.is_done(),
            Framing::UntilClose => false,
        }
    }

    /// How many of `bytes` belong to the body, and whether none were left over
    /// (a backend that sends more than its body cannot be trusted with another).
    pub(crate) fn take(&mut self, bytes: &[u8]) -> stdio::Result<(usize, bool)> {
        let take = match self.framing {
            Framing::Empty => 0,
            Framing::Length(_) => {
                let take = self.left.min(bytes.len() as u64);
                self.left -= take;
                take as usize
            }
            Framing::Chunked => self.chunks.feed(bytes).map_err(|_| malformed_chunks())?,
            Framing::UntilClose => bytes.len(),
        };
        Ok((take, take == bytes.len()))
    }

    /// Appends the data of a chunked body's part of `bytes` to `data` and its
    /// trailer field lines to `trailers`; whether none were left over.
    pub(crate) fn decode(
        &mut self,
        bytes: &[u8],
        data: &mut Vec<u8>,
        trailers: &mut Vec<u8>,
    ) -> stdio::Result<bool> {
        let take = self
            .chunks
            .feed_decoded_with_trailers(bytes, data, trailers)
            .map_err(|_| malformed_chunks())?;
        Ok(take == bytes.len())
    }

    /// Appends the body's part of `bytes` to `out`, decoded from its chunks
    /// when `dechunk`; whether none were left over.
    pub(crate) fn relay(
        &mut self,
        bytes: &[u8],
        out: &mut Vec<u8>,
        dechunk: bool,
    ) -> stdio::Result<bool> {
        if dechunk && self.framing == Framing::Chunked {
            let take = self
                .chunks
                .feed_decoded(bytes, out)
                .map_err(|_| malformed_chunks())?;
            return Ok(take == bytes.len());
        }
        let (take, whole) = self.take(bytes)?;
        out.extend_from_slice(&bytes[..take]);
        Ok(whole)
    }
}

pub(crate) fn malformed_chunks() -> stdio::Error {
    stdio::Error::new(stdio::ErrorKind::InvalidData, "malformed chunked body")
}
