//! limpet's HTTP/2 server connection (RFC 9113): one task per connection that
//! reads frames, runs each stream's future in the same task, and writes what
//! the streams produce into one output buffer, flushed once per turn.
//!
//! The connection's driver ([`Connection`]) owns the socket, the read buffer
//! and the HPACK decoder; it checks every frame, keeps the flow-control
//! accounts and starts a stream future per request (the service: limpet's
//! `call`). A stream's future and the driver share `super::stream`'s
//! `Shared` (streams' states, the output buffer, the HPACK encoder) behind a
//! mutex that is never contended: both run in the connection's task. A stream
//! writes its response HEADERS and DATA frames straight into the output
//! buffer, as far as the flow-control windows and the buffer's limit allow
//! (`super::stream::send_response`).
//!
//! Errors follow RFC 9113, section 5.4: a frame that breaks the connection's
//! rules ends it with GOAWAY and the error code; one that breaks a stream's
//! rules resets that stream (RST_STREAM) and the connection goes on. Floods
//! are bounded: reading pauses while the output holds more than
//! [`READ_PAUSE`] bytes (PING and SETTINGS acks the client does not read),
//! a header block may not grow past [`HEADER_BLOCK_CAP`] times the header
//! limit, and streams the client opens and resets faster than they complete
//! (the "rapid reset" attack) end the connection with ENHANCE_YOUR_CALM.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::stream::{FuturesUnordered, StreamExt};
use http::Response;
use http_body::Body;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::frame::{self, Head, Reason};
use super::hpack::Decoder;
use super::request::{Fields, Refused, RequestHead};
use super::stream::{
    lock, run_stream, send_response, wake, HeadFields, RequestBody, Shared, SharedRef, StreamState,
    CONNECTION_WINDOW, OUT_KEPT, STREAM_WINDOW,
};
use crate::error::{BoxError, ProxyError};
use crate::h1::io::poll_read_buf;
use crate::shutdown::Watch;

/// The most streams a client may have open at once (nginx: 128, HAProxy: 100).
pub const MAX_CONCURRENT_STREAMS: u32 = 128;
/// What the driver reads into at least: most frames but DATA's fit.
const READ_ROOM: usize = 4096;
/// The driver stops reading while the output holds this much.
const READ_PAUSE: usize = 256 * 1024;
/// A header block (HEADERS and its CONTINUATIONs) may be this many times
/// `max_header_bytes` before the connection ends (CONTINUATION floods).
const HEADER_BLOCK_CAP: usize = 4;
/// A header block may come in at most one CONTINUATION per this many bytes
/// of its cap (16 with the default 64 KiB `max_header_bytes`), and at least
/// [`MIN_CONTINUATIONS`]: empty CONTINUATIONs would otherwise keep a block
/// open forever without growing it.
const CONTINUATION_PER: usize = frame::DEFAULT_MAX_FRAME;
const MIN_CONTINUATIONS: usize = 8;
/// Empty DATA frames without END_STREAM in a row a client may send (they
/// carry nothing; a flood of them costs CPU alone, CVE-2019-9518). Envoy
/// allows 1; a few more for clients that flush eagerly.
const EMPTY_DATA_RUN: u32 = 16;
/// How many times one poll goes round reading, the streams and writing before
/// it lets other tasks run.
const ROUNDS_PER_POLL: usize = 4;
/// How long the connection's last frames (a GOAWAY) may take to leave.
const GOODBYE: Duration = Duration::from_secs(1);

/// A stream's future, as the connection runs it.
type StreamFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A request for the service: its head, or why it is answered without one
/// (431), and its body.
pub(crate) type Request = (Result<RequestHead, ProxyError>, RequestBody);

/// A connection error: the GOAWAY's code, and what went wrong for the log.
#[derive(Debug)]
pub struct ConnError {
    reason: Reason,
    what: &'static str,
}

impl std::fmt::Display for ConnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP/2 {:?} error: {}", self.reason, self.what)
    }
}

impl std::error::Error for ConnError {}

fn conn_error(reason: Reason, what: &'static str) -> ConnError {
    ConnError { reason, what }
}

/// A header block arriving in pieces (HEADERS without END_HEADERS).
struct Partial {
    stream: u32,
    end_stream: bool,
    depends_on_itself: bool,
    block: Vec<u8>,
    continuations: usize,
}

/// The connection's driver.
pub(crate) struct Connection<I, S> {
    io: I,
    read: BytesMut,
    /// Of the output, the bytes already written.
    written: usize,
    shared: SharedRef,
    decoder: Decoder,
    streams: FuturesUnordered<StreamFuture>,
    service: S,
    closing: Watch,
    max_header_bytes: usize,
    preface_read: bool,
    settings_read: bool,
    partial: Option<Partial>,
    /// The highest stream id the client has used.
    last_seen: u32,
    /// The highest stream id limpet took on (GOAWAY's last stream).
    last_taken: u32,
    goaway_sent: bool,
    /// Empty DATA frames without END_STREAM since the last frame with a
    /// payload.
    empty_data_run: u32,
    /// The client said GOAWAY, or closed its side.
    winding_down: bool,
    eof: bool,
}

impl<I, S, F, B, G> Connection<I, S>
where
    I: AsyncRead + AsyncWrite + Unpin,
    S: FnMut(Request) -> F,
    F: Future<Output = (Response<B>, G)> + Send + 'static,
    G: Send + 'static,
    B: Body<Data = Bytes> + HeadFields + Unpin + Send + 'static,
    B::Error: Send,
{
    pub(crate) fn new(io: I, service: S, closing: Watch, max_header_bytes: usize) -> Self {
        let mut shared = Shared::new();
        let header_list = max_header_bytes.min(u32::MAX as usize) as u32;
        frame::write_settings(
            &mut shared.out,
            &[
                (
                    frame::SETTINGS_MAX_CONCURRENT_STREAMS,
                    MAX_CONCURRENT_STREAMS,
                ),
                (frame::SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW as u32),
                (frame::SETTINGS_MAX_HEADER_LIST_SIZE, header_list),
            ],
        );
        let more = (CONNECTION_WINDOW - frame::DEFAULT_WINDOW) as u32;
        frame::write_window_update(&mut shared.out, 0, more);
        Connection {
            io,
            // Grown to a whole frame only when one needs it (`frames_in`):
            // an idle connection keeps 4 KiB, not 16.
            read: BytesMut::with_capacity(READ_ROOM),
            written: 0,
            shared: Arc::new(Mutex::new(shared)),
            decoder: Decoder::new(4096),
            streams: FuturesUnordered::new(),
            service,
            closing,
            max_header_bytes,
            preface_read: false,
            settings_read: false,
            partial: None,
            last_seen: 0,
            last_taken: 0,
            goaway_sent: false,
            empty_data_run: 0,
            winding_down: false,
            eof: false,
        }
    }

    /// Serves the connection until it ends: the client closes it or goes
    /// silent for too long (the IO's timeouts), limpet shuts down and the
    /// streams in flight are done, or an error.
    pub(crate) async fn run(mut self) -> Result<(), BoxError> {
        let ended = poll_fn(|cx| self.poll_turns(cx)).await;
        let ended = match ended {
            // Wound down at the client's GOAWAY: limpet says goodbye too
            // before it closes (RFC 9113, section 6.8).
            Ok(()) if !self.goaway_sent && !self.eof => {
                let mut shared = lock(&self.shared);
                frame::write_goaway(&mut shared.out, self.last_taken, Reason::NoError);
                Ok(())
            }
            Ok(()) => Ok(()),
            Err(Ended::Io(e)) => return Err(e.into()),
            Err(Ended::Protocol(e)) => {
                let mut shared = lock(&self.shared);
                frame::write_goaway(&mut shared.out, self.last_taken, e.reason);
                Err(e.into())
            }
        };
        // The streams go first: their last frames join the output.
        self.streams = FuturesUnordered::new();
        let out = std::mem::take(&mut lock(&self.shared).out);
        let pending = out.get(self.written..).unwrap_or_default();
        let eof = self.eof;
        let _ = tokio::time::timeout(GOODBYE, async {
            self.io.write_all(pending).await?;
            self.io.shutdown().await?;
            // What the client still sends is read and dropped until it
            // closes: closing with unread bytes would send a reset, which
            // can discard the GOAWAY and the last answers on their way.
            let mut sink = [0; 1024];
            while !eof && self.io.read(&mut sink).await? > 0 {}
            io::Result::Ok(())
        })
        .await;
        ended
    }

    fn poll_turns(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Ended>> {
        for _ in 0..ROUNDS_PER_POLL {
            let mut progress = false;
            if !self.goaway_sent && self.closing.poll_closing(cx).is_ready() {
                self.goaway_sent = true;
                frame::write_goaway(
                    &mut lock(&self.shared).out,
                    self.last_taken,
                    Reason::NoError,
                );
            }
            if self.poll_read(cx)? {
                progress = true;
            }
            while let Poll::Ready(Some(())) = self.streams.poll_next_unpin(cx) {
                progress = true;
            }
            if self.poll_write(cx)? {
                progress = true;
            }
            if self.eof {
                return Poll::Ready(Ok(()));
            }
            let finished =
                self.streams.is_empty() && self.written == 0 && lock(&self.shared).out.is_empty();
            if finished && (self.goaway_sent || self.winding_down) {
                return Poll::Ready(Ok(()));
            }
            if !progress {
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Reads what the client sent and handles its frames; true when bytes
    /// came.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Result<bool, Ended> {
        if self.eof || lock(&self.shared).out.len() >= READ_PAUSE {
            return Ok(false);
        }
        if self.read.capacity() - self.read.len() < READ_ROOM / 4 {
            self.read.reserve(READ_ROOM);
        }
        match poll_read_buf(&mut self.io, cx, &mut self.read) {
            Poll::Pending => Ok(false),
            Poll::Ready(Err(e)) => Err(Ended::Io(e)),
            // The client is gone (HTTP/2 has no half-close of its own): its
            // streams can neither send nor be answered.
            Poll::Ready(Ok(0)) => {
                self.eof = true;
                Ok(true)
            }
            Poll::Ready(Ok(_)) => {
                self.handle_frames().map_err(Ended::Protocol)?;
                Ok(true)
            }
        }
    }

    /// Writes the output; true when bytes went.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Result<bool, Ended> {
        let mut shared = lock(&self.shared);
        let mut wrote = false;
        while self.written < shared.out.len() {
            match Pin::new(&mut self.io).poll_write(cx, &shared.out[self.written..]) {
                Poll::Ready(Ok(0)) => return Err(Ended::Io(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    self.written += n;
                    wrote = true;
                }
                Poll::Ready(Err(e)) => return Err(Ended::Io(e)),
                Poll::Pending => break,
            }
        }
        if wrote {
            if let Poll::Ready(Err(e)) = Pin::new(&mut self.io).poll_flush(cx) {
                return Err(Ended::Io(e));
            }
        }
        if self.written > 0 && self.written == shared.out.len() {
            shared.out.clear();
            // An idle connection does not keep the room of a burst.
            if shared.out.capacity() > OUT_KEPT && self.streams.is_empty() {
                shared.out = Vec::with_capacity(OUT_KEPT);
            }
            self.written = 0;
            shared.wake_senders();
        }
        Ok(wrote)
    }

    /// Handles every whole frame in the read buffer.
    fn handle_frames(&mut self) -> Result<(), ConnError> {
        // Out of `self` while its frames are handled, which borrow it.
        let mut read = std::mem::take(&mut self.read);
        let handled = self.frames_in(&mut read);
        self.read = read;
        handled?;
        match lock(&self.shared).reset_budget < 0 {
            true => Err(conn_error(
                Reason::EnhanceYourCalm,
                "too many streams reset",
            )),
            false => Ok(()),
        }
    }

    fn frames_in(&mut self, read: &mut BytesMut) -> Result<(), ConnError> {
        if !self.preface_read {
            match frame::is_preface(read) {
                None => return Ok(()),
                Some(false) => return Err(conn_error(Reason::Protocol, "not the HTTP/2 preface")),
                Some(true) => read.advance(frame::PREFACE.len()),
            }
            self.preface_read = true;
        }
        while read.len() >= frame::HEADER_LEN {
            let head = Head::parse(read);
            if head.len > frame::DEFAULT_MAX_FRAME {
                return Err(conn_error(Reason::FrameSize, "frame larger than allowed"));
            }
            let whole = frame::HEADER_LEN + head.len;
            if read.len() < whole {
                read.reserve(whole - read.len());
                return Ok(());
            }
            if !self.settings_read && head.kind != frame::SETTINGS {
                return Err(conn_error(Reason::Protocol, "first frame is not SETTINGS"));
            }
            if self.partial.is_some() && head.kind != frame::CONTINUATION {
                return Err(conn_error(Reason::Protocol, "header block interrupted"));
            }
            let payload = &read[frame::HEADER_LEN..whole];
            self.count_empty_data(&head)?;
            match head.kind {
                frame::DATA => self.data(head, payload)?,
                _ => self.control(head, payload)?,
            }
            read.advance(whole);
        }
        Ok(())
    }

    fn count_empty_data(&mut self, head: &Head) -> Result<(), ConnError> {
        match head.kind == frame::DATA && head.len == 0 && !head.has(frame::END_STREAM) {
            true => self.empty_data_run += 1,
            false if head.len > 0 => self.empty_data_run = 0,
            false => {}
        }
        match self.empty_data_run > EMPTY_DATA_RUN {
            true => Err(conn_error(
                Reason::EnhanceYourCalm,
                "too many empty DATA frames",
            )),
            false => Ok(()),
        }
    }

    fn control(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnError> {
        match head.kind {
            frame::HEADERS => self.headers(head, payload),
            frame::CONTINUATION => self.continuation(head, payload),
            frame::PRIORITY => self.priority(head, payload),
            frame::RST_STREAM => self.rst_stream(head, payload),
            frame::SETTINGS => self.settings(head, payload),
            frame::PUSH_PROMISE => Err(conn_error(Reason::Protocol, "PUSH_PROMISE from a client")),
            frame::PING => self.ping(head, payload),
            frame::GOAWAY => self.goaway(head, payload),
            frame::WINDOW_UPDATE => self.window_update(head, payload),
            // Unknown frame types are ignored (RFC 9113, section 4.1).
            _ => Ok(()),
        }
    }

    fn headers(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnError> {
        if head.stream == 0 {
            return Err(conn_error(Reason::Protocol, "HEADERS on stream 0"));
        }
        let mut block = frame::unpadded(&head, payload)
            .ok_or_else(|| conn_error(Reason::Protocol, "bad padding"))?;
        let mut depends_on_itself = false;
        if head.has(frame::PRIORITY_FLAG) {
            if block.len() < 5 {
                return Err(conn_error(Reason::FrameSize, "short HEADERS priority"));
            }
            depends_on_itself = frame::u31(block) == head.stream;
            block = &block[5..];
        }
        let end_stream = head.has(frame::END_STREAM);
        if !head.has(frame::END_HEADERS) {
            self.check_block_size(block.len())?;
            self.partial = Some(Partial {
                stream: head.stream,
                end_stream,
                depends_on_itself,
                block: block.to_vec(),
                continuations: 0,
            });
            return Ok(());
        }
        self.header_block(head.stream, end_stream, block, depends_on_itself)
    }

    fn continuation(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnError> {
        let Some(mut partial) = self.partial.take() else {
            return Err(conn_error(Reason::Protocol, "CONTINUATION without HEADERS"));
        };
        if partial.stream != head.stream {
            return Err(conn_error(
                Reason::Protocol,
                "CONTINUATION on another stream",
            ));
        }
        self.check_block_size(partial.block.len() + payload.len())?;
        partial.continuations += 1;
        if partial.continuations > self.max_continuations() {
            return Err(conn_error(
                Reason::EnhanceYourCalm,
                "too many CONTINUATION frames",
            ));
        }
        partial.block.extend_from_slice(payload);
        if !head.has(frame::END_HEADERS) {
            self.partial = Some(partial);
            return Ok(());
        }
        let Partial {
            stream,
            end_stream,
            depends_on_itself,
            block,
            ..
        } = partial;
        self.header_block(stream, end_stream, &block, depends_on_itself)
    }

    /// The most bytes a header block may have.
    fn block_cap(&self) -> usize {
        HEADER_BLOCK_CAP * self.max_header_bytes.max(frame::DEFAULT_MAX_FRAME)
    }

    fn max_continuations(&self) -> usize {
        (self.block_cap() / CONTINUATION_PER).max(MIN_CONTINUATIONS)
    }

    fn check_block_size(&self, len: usize) -> Result<(), ConnError> {
        match len > self.block_cap() {
            true => Err(conn_error(
                Reason::EnhanceYourCalm,
                "header block too large",
            )),
            false => Ok(()),
        }
    }

    /// A whole header block: a new request, or a request's trailers.
    fn header_block(
        &mut self,
        id: u32,
        end_stream: bool,
        block: &[u8],
        depends_on_itself: bool,
    ) -> Result<(), ConnError> {
        let existing = lock(&self.shared).streams.contains_key(&id);
        let mut fields = match existing {
            true => Fields::trailers(self.max_header_bytes),
            false => Fields::request(self.max_header_bytes),
        };
        // Decoded whatever becomes of the stream: the table must stay in step.
        self.decoder
            .decode(block, |name, value| fields.field(name, value))
            .map_err(|_| conn_error(Reason::Compression, "bad header block"))?;
        if existing {
            return self.trailers(id, end_stream, fields);
        }
        if id <= self.last_seen {
            // Trailers of a stream that has ended are ignored (RFC 9113,
            // section 5.1: the client may not have heard yet); a new request
            // must take a higher id (section 5.1.1).
            return match fields.is_request() {
                true => Err(conn_error(Reason::Protocol, "stream id not increasing")),
                false => Ok(()),
            };
        }
        if id.is_multiple_of(2) {
            return Err(conn_error(Reason::Protocol, "even stream id from a client"));
        }
        self.last_seen = id;
        // Past limpet's GOAWAY, its last stream tells the client; past the
        // client's own, a new stream is refused (not processed: the client
        // may send it again on another connection).
        if self.goaway_sent {
            return Ok(());
        }
        let mut shared = lock(&self.shared);
        if self.winding_down {
            shared.reset(id, Reason::RefusedStream);
            return Ok(());
        }
        if depends_on_itself {
            shared.reset(id, Reason::Protocol);
            return Ok(());
        }
        if shared.open >= MAX_CONCURRENT_STREAMS as usize {
            shared.reset(id, Reason::RefusedStream);
            return Ok(());
        }
        let head = match fields.into_head() {
            Ok(head) => Ok(head),
            Err(Refused::TooLarge) => Err(ProxyError::HeadTooLarge),
            Err(Refused::Malformed(why)) => {
                tracing::debug!(stream = id, why, "malformed HTTP/2 request");
                shared.reset(id, Reason::Protocol);
                return Ok(());
            }
        };
        let content_length = head.as_ref().ok().and_then(|h| h.content_length);
        if end_stream && content_length.is_some_and(|n| n > 0) {
            shared.reset(id, Reason::Protocol);
            return Ok(());
        }
        let send_window = shared.initial_send_window;
        shared.open += 1;
        shared.streams.insert(
            id,
            StreamState {
                send_window,
                recv_window: STREAM_WINDOW,
                remote_closed: end_stream,
                content_length,
                ..StreamState::default()
            },
        );
        drop(shared);
        self.last_taken = id;
        let body = RequestBody::new(Arc::clone(&self.shared), id, end_stream, content_length);
        // Boxed on its own: the request's whole exchange is large (~4 KB),
        // and the stream's future would otherwise hold it twice (moved into
        // `work`, then awaited there).
        let answer = Box::pin((self.service)((head, body)));
        let shared = Arc::clone(&self.shared);
        let work = async move {
            // `_held` (the service's) lasts until the response has gone.
            let (response, _held) = answer.await;
            send_response(shared, id, response).await;
        };
        let task = run_stream(Arc::clone(&self.shared), id, work);
        self.streams.push(Box::pin(task));
        Ok(())
    }

    fn trailers(&mut self, id: u32, end_stream: bool, fields: Fields) -> Result<(), ConnError> {
        let mut shared = lock(&self.shared);
        let taken = match shared.streams.get_mut(&id) {
            Some(stream) => stream.take_trailers(end_stream, fields),
            None => return Ok(()),
        };
        if let Err(reason) = taken {
            shared.reset(id, reason);
        }
        Ok(())
    }

    fn data(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnError> {
        if head.stream == 0 {
            return Err(conn_error(Reason::Protocol, "DATA on stream 0"));
        }
        if self.is_idle(head.stream) {
            return Err(conn_error(Reason::Protocol, "DATA on an idle stream"));
        }
        let data = frame::unpadded(&head, payload)
            .ok_or_else(|| conn_error(Reason::Protocol, "bad padding"))?;
        let mut guard = lock(&self.shared);
        let shared = &mut *guard;
        shared.recv_window -= head.len as i64;
        if shared.recv_window < 0 {
            return Err(conn_error(
                Reason::FlowControl,
                "DATA beyond the connection window",
            ));
        }
        let padding = head.len - data.len();
        let end = head.has(frame::END_STREAM);
        let refused = match shared.streams.get_mut(&head.stream) {
            // A stream that has ended, or that was reset: what the client
            // sent before it heard is dropped (RFC 9113, section 5.1).
            None => {
                shared.give_back(head.len);
                return Ok(());
            }
            Some(stream) if stream.reset => {
                shared.give_back(head.len);
                return Ok(());
            }
            // Copied out of the read buffer (a slice would keep the whole
            // buffer alive while it waits for its backend).
            Some(stream) => match stream.take_data(Bytes::copy_from_slice(data), padding, end) {
                Ok(()) => {
                    stream.credit(&mut shared.out, head.stream);
                    None
                }
                Err(reason) => Some(reason),
            },
        };
        match refused {
            // Nothing of it will be passed on: the connection's window has
            // it back at once.
            Some(reason) => {
                shared.give_back(head.len);
                shared.reset(head.stream, reason);
            }
            // The padding is not passed on; the data is given back as the
            // stream passes it on (`RequestBody`).
            None => shared.give_back(padding),
        }
        Ok(())
    }

    /// A stream the client has not opened yet, or an even one: limpet
    /// pushes nothing, so those never leave the idle state.
    fn is_idle(&self, id: u32) -> bool {
        id > self.last_seen || id.is_multiple_of(2)
    }

    fn priority(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnError> {
        if head.stream == 0 {
            return Err(conn_error(Reason::Protocol, "PRIORITY on stream 0"));
        }
        // A stream error; on a stream not opened yet there is nothing to
        // reset, and PRIORITY means nothing to limpet anyway.
        if payload.len() != 5 && !self.is_idle(head.stream) {
            lock(&self.shared).reset(head.stream, Reason::FrameSize);
        }
        // A stream may not depend on itself (RFC 7540, section 5.3.1): a
        // stream error, as for HEADERS; an idle stream cannot be reset, so
        // there it ends the connection (a stream error may be raised to one).
        if payload.len() == 5 && frame::u31(payload) == head.stream {
            match self.is_idle(head.stream) {
                true => return Err(conn_error(Reason::Protocol, "stream depends on itself")),
                false => lock(&self.shared).reset(head.stream, Reason::Protocol),
            }
        }
        Ok(())
    }

    fn rst_stream(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnError> {
        if payload.len() != 4 {
            return Err(conn_error(
                Reason::FrameSize,
                "RST_STREAM of the wrong size",
            ));
        }
        if head.stream == 0 || self.is_idle(head.stream) {
            return Err(conn_error(Reason::Protocol, "RST_STREAM on an idle stream"));
        }
        // The reset budget is checked once the frames read are handled.
        lock(&self.shared).end(head.stream);
        Ok(())
    }

    fn settings(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnError> {
        if head.stream != 0 {
            return Err(conn_error(Reason::Protocol, "SETTINGS on a stream"));
        }
        if head.has(frame::ACK) {
            return match payload.is_empty() {
                true => Ok(()),
                false => Err(conn_error(Reason::FrameSize, "SETTINGS ack with a payload")),
            };
        }
        if !payload.len().is_multiple_of(6) {
            return Err(conn_error(Reason::FrameSize, "SETTINGS of the wrong size"));
        }
        self.settings_read = true;
        let mut shared = lock(&self.shared);
        for setting in payload.chunks_exact(6) {
            let id = u16::from_be_bytes([setting[0], setting[1]]);
            let value = u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]);
            match id {
                frame::SETTINGS_HEADER_TABLE_SIZE => {
                    shared.encoder.set_max_table_size(value as usize)
                }
                frame::SETTINGS_ENABLE_PUSH if value > 1 => {
                    return Err(conn_error(Reason::Protocol, "bad SETTINGS_ENABLE_PUSH"))
                }
                frame::SETTINGS_INITIAL_WINDOW_SIZE => {
                    if i64::from(value) > frame::MAX_WINDOW {
                        return Err(conn_error(Reason::FlowControl, "window too large"));
                    }
                    let change = i64::from(value) - shared.initial_send_window;
                    shared.initial_send_window = i64::from(value);
                    for stream in shared.streams.values_mut() {
                        stream.send_window += change;
                        if stream.send_window > frame::MAX_WINDOW {
                            return Err(conn_error(Reason::FlowControl, "window too large"));
                        }
                    }
                    shared.wake_senders();
                }
                frame::SETTINGS_MAX_FRAME_SIZE => {
                    if !(frame::DEFAULT_MAX_FRAME as u32..=0xff_ffff).contains(&value) {
                        return Err(conn_error(Reason::Protocol, "bad SETTINGS_MAX_FRAME_SIZE"));
                    }
                    // Larger frames save little; 16 KiB keeps TLS records whole.
                    shared.max_frame = frame::DEFAULT_MAX_FRAME;
                }
                _ => {}
            }
        }
        frame::write_settings_ack(&mut shared.out);
        Ok(())
    }

    fn ping(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnError> {
        if payload.len() != 8 {
            return Err(conn_error(Reason::FrameSize, "PING of the wrong size"));
        }
        if head.stream != 0 {
            return Err(conn_error(Reason::Protocol, "PING on a stream"));
        }
        if !head.has(frame::ACK) {
            frame::write_ping_ack(&mut lock(&self.shared).out, payload);
        }
        Ok(())
    }

    fn goaway(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnError> {
        if head.stream != 0 {
            return Err(conn_error(Reason::Protocol, "GOAWAY on a stream"));
        }
        if payload.len() < 8 {
            return Err(conn_error(Reason::FrameSize, "short GOAWAY"));
        }
        self.winding_down = true;
        Ok(())
    }

    fn window_update(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnError> {
        if payload.len() != 4 {
            return Err(conn_error(
                Reason::FrameSize,
                "WINDOW_UPDATE of the wrong size",
            ));
        }
        let increment = i64::from(frame::u31(payload));
        let mut shared = lock(&self.shared);
        if head.stream == 0 {
            if increment == 0 {
                return Err(conn_error(Reason::Protocol, "WINDOW_UPDATE of 0"));
            }
            shared.send_window += increment;
            if shared.send_window > frame::MAX_WINDOW {
                return Err(conn_error(Reason::FlowControl, "window too large"));
            }
            shared.wake_senders();
            return Ok(());
        }
        if self.is_idle(head.stream) {
            return Err(conn_error(
                Reason::Protocol,
                "WINDOW_UPDATE on an idle stream",
            ));
        }
        let Some(stream) = shared.streams.get_mut(&head.stream) else {
            return Ok(());
        };
        if increment == 0 {
            shared.reset(head.stream, Reason::Protocol);
            return Ok(());
        }
        stream.send_window += increment;
        if stream.send_window > frame::MAX_WINDOW {
            shared.reset(head.stream, Reason::FlowControl);
            return Ok(());
        }
        if stream.waiting_to_send {
            stream.waiting_to_send = false;
            wake(stream);
        }
        Ok(())
    }
}

/// Why the connection's turns stopped.
enum Ended {
    Io(io::Error),
    Protocol(ConnError),
}
