//! limpet's HTTP/2 server connection (RFC 9113): one task per connection that
//! reads frames, runs each stream's future in the same task, and writes what
//! the streams produce into one output buffer, flushed once per turn.
//!
//! The connection's driver ([`Connection`]) owns the socket, the read buffer
//! and the HPACK decoder; it checks every frame, keeps the flow-control
//! accounts and starts a stream future per request (the service: limpet's
//! `call`). A stream future ([`run_stream`]) and the driver share
//! [`Shared`] (streams' states, the output buffer, the HPACK encoder) behind a
//! mutex that is never contended: both run in the connection's task. A stream
//! writes its response HEADERS and DATA frames straight into the output
//! buffer, as far as the flow-control windows and the buffer's limit allow.
//!
//! Errors follow RFC 9113, section 5.4: a frame that breaks the connection's
//! rules ends it with GOAWAY and the error code; one that breaks a stream's
//! rules resets that stream (RST_STREAM) and the connection goes on. Floods
//! are bounded: reading pauses while the output holds more than
//! [`READ_PAUSE`] bytes (PING and SETTINGS acks the client does not read),
//! a header block may not grow past [`HEADER_BLOCK_CAP`] times the header
//! limit, and streams the client opens and resets faster than they complete
//! (the "rapid reset" attack) end the connection with ENHANCE_YOUR_CALM.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::stream::{FuturesUnordered, StreamExt};
use http::{HeaderMap, Response};
use http_body::{Body, Frame};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::frame::{self, Head, Reason};
use super::hpack::{Decoder, Encoder};
use super::request::{Fields, Refused, RequestHead};
use crate::error::{BoxError, ProxyError};
use crate::h1::io::poll_read_buf;
use crate::shutdown::Watch;

/// The most streams a client may have open at once (nginx: 128, HAProxy: 100).
pub const MAX_CONCURRENT_STREAMS: u32 = 128;
/// What a client may send on one stream before limpet has passed it on
/// (SETTINGS_INITIAL_WINDOW_SIZE).
pub const STREAM_WINDOW: i64 = 256 * 1024;
/// What a client may send on the connection before limpet has passed it on:
/// the most request body one connection holds in memory.
pub const CONNECTION_WINDOW: i64 = 2 * 1024 * 1024;
/// Streams stop adding DATA to the output while it holds this much.
const OUT_LIMIT: usize = 64 * 1024;
/// The output buffer's room kept between bursts.
const OUT_KEPT: usize = 4096;
/// The driver stops reading while the output holds this much.
const READ_PAUSE: usize = 256 * 1024;
/// A header block (HEADERS and its CONTINUATIONs) may be this many times
/// `max_header_bytes` before the connection ends (CONTINUATION floods).
const HEADER_BLOCK_CAP: usize = 4;
/// Client resets of unfinished streams, beyond completed ones, that end the
/// connection.
const RESET_BUDGET: i64 = 200;
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

/// One stream, as the driver and its future see it.
#[derive(Default)]
struct StreamState {
    /// The stream future's waker, woken by anything that concerns it.
    waker: Option<Waker>,
    /// What limpet may send (the client's window for this stream).
    send_window: i64,
    /// What the client may still send.
    recv_window: i64,
    /// DATA bytes passed on and not yet given back with WINDOW_UPDATE.
    recv_unacked: u32,
    /// DATA received and not yet passed on.
    recv: VecDeque<Bytes>,
    recv_queued: usize,
    trailers: Option<HeaderMap>,
    /// The client ended its side (END_STREAM).
    remote_closed: bool,
    /// limpet ended its side (END_STREAM or RST_STREAM sent).
    local_closed: bool,
    /// The stream was reset (by the client or by limpet): its future ends.
    reset: bool,
    content_length: Option<u64>,
    received: u64,
    /// Waits for window or output room.
    waiting_to_send: bool,
}

/// What the driver and the stream futures share.
pub(crate) struct Shared {
    /// Frames to write.
    out: Vec<u8>,
    encoder: Encoder,
    streams: ahash::AHashMap<u32, StreamState>,
    /// The client's window for the whole connection.
    send_window: i64,
    /// The client's SETTINGS_INITIAL_WINDOW_SIZE.
    initial_send_window: i64,
    /// The client's SETTINGS_MAX_FRAME_SIZE.
    max_frame: usize,
    /// What the client may still send on the connection.
    recv_window: i64,
    /// Connection-level DATA bytes passed on (or dropped) and not yet given
    /// back.
    recv_unacked: u32,
    /// Streams completed, minus unfinished streams reset (by the client, or
    /// by limpet for the client's fault).
    reset_budget: i64,
    /// Streams in the map that are not reset: what MAX_CONCURRENT_STREAMS
    /// counts.
    open: usize,
}

type SharedRef = Arc<Mutex<Shared>>;

fn lock(shared: &SharedRef) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn new() -> Self {
        Shared {
            out: Vec::with_capacity(OUT_KEPT),
            encoder: Encoder::new(),
            streams: ahash::AHashMap::default(),
            send_window: frame::DEFAULT_WINDOW,
            initial_send_window: frame::DEFAULT_WINDOW,
            max_frame: frame::DEFAULT_MAX_FRAME,
            recv_window: CONNECTION_WINDOW,
            recv_unacked: 0,
            reset_budget: RESET_BUDGET,
            open: 0,
        }
    }

    /// Resets a stream (a stream error, or limpet gives up on it).
    /// A stream reset for the client's fault counts against the reset
    /// budget as the client's own resets do ("MadeYouReset").
    fn reset(&mut self, id: u32, reason: Reason) {
        if self.end(id) {
            frame::write_rst_stream(&mut self.out, id, reason);
        }
    }

    /// Ends a stream early (reset by either side): its future ends at its
    /// next poll. False if it had ended already; a stream not in the map is
    /// one limpet did not take (refused, or past a GOAWAY) and is ended.
    fn end(&mut self, id: u32) -> bool {
        let Some(stream) = self.streams.get_mut(&id) else {
            return true;
        };
        if stream.reset {
            return false;
        }
        if !stream.local_closed {
            self.reset_budget -= 1;
        }
        stream.reset = true;
        stream.local_closed = true;
        stream.remote_closed = true;
        wake(stream);
        self.open -= 1;
        true
    }

    /// Gives DATA bytes back to the connection's window, with a
    /// WINDOW_UPDATE once half of it is owed.
    fn give_back(&mut self, bytes: usize) {
        self.recv_unacked += bytes as u32;
        if i64::from(self.recv_unacked) >= CONNECTION_WINDOW / 2 {
            frame::write_window_update(&mut self.out, 0, self.recv_unacked);
            self.recv_window += i64::from(self.recv_unacked);
            self.recv_unacked = 0;
        }
    }

    /// Wakes the streams that wait for window or output room.
    fn wake_senders(&mut self) {
        for stream in self.streams.values_mut() {
            if stream.waiting_to_send {
                stream.waiting_to_send = false;
                wake(stream);
            }
        }
    }

    /// Forgets a stream whose future has ended.
    fn remove(&mut self, id: u32) {
        let Some(stream) = self.streams.remove(&id) else {
            return;
        };
        if !stream.reset {
            self.open -= 1;
        }
        if !stream.local_closed {
            // The future ended without finishing its response.
            frame::write_rst_stream(&mut self.out, id, Reason::Internal);
        } else if !stream.remote_closed {
            // Answered before the client sent all of its request (RFC 9113,
            // section 8.1): it may stop.
            frame::write_rst_stream(&mut self.out, id, Reason::NoError);
        }
        // Request bytes never passed on go back to the connection's window.
        self.give_back(stream.recv_queued);
    }
}

fn wake(stream: &mut StreamState) {
    if let Some(waker) = &stream.waker {
        waker.wake_by_ref();
    }
}

impl StreamState {
    /// Queues a DATA frame's data for the request body; the stream error
    /// when the frame breaks the stream's rules.
    fn take_data(&mut self, data: Bytes, padding: usize, end: bool) -> Result<(), Reason> {
        if self.remote_closed {
            return Err(Reason::StreamClosed);
        }
        let len = (data.len() + padding) as i64;
        self.recv_window -= len;
        if self.recv_window < 0 {
            return Err(Reason::FlowControl);
        }
        self.received += data.len() as u64;
        let declared = self.content_length;
        if declared.is_some_and(|n| self.received > n || (end && self.received != n)) {
            return Err(Reason::Protocol);
        }
        self.recv_unacked += padding as u32;
        if !data.is_empty() {
            self.recv_queued += data.len();
            self.recv.push_back(data);
        }
        self.remote_closed = end;
        wake(self);
        Ok(())
    }

    /// Gives the stream's window back with a WINDOW_UPDATE once half of it
    /// is owed (and the client still sends).
    fn credit(&mut self, out: &mut Vec<u8>, id: u32) {
        if !self.remote_closed && i64::from(self.recv_unacked) >= STREAM_WINDOW / 2 {
            frame::write_window_update(out, id, self.recv_unacked);
            self.recv_window += i64::from(self.recv_unacked);
            self.recv_unacked = 0;
        }
    }

    /// Takes a request's trailers, which must end the stream.
    fn take_trailers(&mut self, end_stream: bool, fields: Fields) -> Result<(), Reason> {
        if self.remote_closed {
            return Err(Reason::StreamClosed);
        }
        let trailers = match (end_stream, fields.into_trailers()) {
            (true, Ok(trailers)) => trailers,
            _ => return Err(Reason::Protocol),
        };
        if self.content_length.is_some_and(|n| n != self.received) {
            return Err(Reason::Protocol);
        }
        self.trailers = Some(trailers);
        self.remote_closed = true;
        wake(self);
        Ok(())
    }
}

/// A request's body: the DATA frames of its stream, as the driver queued
/// them, and its trailers.
pub(crate) struct RequestBody {
    shared: SharedRef,
    id: u32,
    /// The client ended the stream with its HEADERS.
    empty: bool,
    size: Option<u64>,
}

impl std::fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestBody")
            .field("stream", &self.id)
            .finish()
    }
}

/// Why a request body broke off.
#[derive(Debug, thiserror::Error)]
#[error("the client reset the stream")]
pub(crate) struct StreamReset;

impl Body for RequestBody {
    type Data = Bytes;
    type Error = StreamReset;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StreamReset>>> {
        if self.empty {
            return Poll::Ready(None);
        }
        let mut shared = lock(&self.shared);
        let shared = &mut *shared;
        let Some(stream) = shared.streams.get_mut(&self.id) else {
            return Poll::Ready(Some(Err(StreamReset)));
        };
        if let Some(data) = stream.recv.pop_front() {
            stream.recv_queued -= data.len();
            stream.recv_unacked += data.len() as u32;
            stream.credit(&mut shared.out, self.id);
            shared.give_back(data.len());
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if stream.reset {
            return Poll::Ready(Some(Err(StreamReset)));
        }
        if let Some(trailers) = stream.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        if stream.remote_closed {
            return Poll::Ready(None);
        }
        stream.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.empty
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match (self.empty, self.size) {
            (true, _) => http_body::SizeHint::with_exact(0),
            (false, Some(n)) => http_body::SizeHint::with_exact(n),
            (false, None) => http_body::SizeHint::default(),
        }
    }
}

/// Runs a stream's work (the service's answer, then its response frames)
/// until it is done or the stream is reset, and forgets the stream when it
/// ends either way. One allocation per stream: the work is pinned inside the
/// stream's own future.
async fn run_stream<W: Future<Output = ()>>(shared: SharedRef, id: u32, work: W) {
    let forget = Forget(shared, id);
    Resettable {
        stream: &forget,
        work: std::pin::pin!(work),
    }
    .await
}

/// Forgets its stream when dropped: after the work, also when the stream's
/// future is dropped midway (the connection ends).
struct Forget(SharedRef, u32);

impl Drop for Forget {
    fn drop(&mut self) {
        lock(&self.0).remove(self.1);
    }
}

/// A stream's work, which ends early when the stream is reset.
struct Resettable<'a, W> {
    stream: &'a Forget,
    work: Pin<&'a mut W>,
}

impl<W: Future<Output = ()>> Future for Resettable<'_, W> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        {
            let Forget(shared, id) = self.stream;
            let mut shared = lock(shared);
            let Some(stream) = shared.streams.get_mut(id) else {
                return Poll::Ready(());
            };
            if stream.reset {
                return Poll::Ready(());
            }
            match &stream.waker {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                _ => stream.waker = Some(cx.waker().clone()),
            }
        }
        self.work.as_mut().poll(cx)
    }
}

/// Sends a response on its stream: HEADERS, then DATA as the windows allow,
/// then trailers; a body that fails resets the stream.
async fn send_response<B>(shared: SharedRef, id: u32, response: Response<B>)
where
    B: Body<Data = Bytes> + Unpin,
{
    let (parts, mut body) = response.into_parts();
    let ended = body.is_end_stream();
    write_headers(
        &mut lock(&shared),
        id,
        Some(parts.status.as_u16()),
        &parts.headers,
        ended,
    );
    if ended {
        return;
    }
    loop {
        match poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            None => {
                let _ = send_data(&shared, id, Bytes::new(), true).await;
                return;
            }
            Some(Err(_)) => {
                lock(&shared).reset(id, Reason::Internal);
                return;
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    let end = body.is_end_stream();
                    if send_data(&shared, id, data, end).await.is_err() || end {
                        return;
                    }
                }
                Err(frame) => {
                    let trailers = frame.into_trailers().unwrap_or_default();
                    write_headers(&mut lock(&shared), id, None, &trailers, true);
                    return;
                }
            },
        }
    }
}

/// Writes a HEADERS frame (and CONTINUATIONs if the block is larger than the
/// client's frame size): the response head (`status`) or trailers.
fn write_headers(shared: &mut Shared, id: u32, status: Option<u16>, fields: &HeaderMap, end: bool) {
    let Some(stream) = shared.streams.get_mut(&id) else {
        return;
    };
    if stream.local_closed {
        return;
    }
    stream.local_closed = end;
    if end {
        shared.reset_budget = (shared.reset_budget + 1).min(RESET_BUDGET);
    }
    let out = &mut shared.out;
    let at = out.len();
    frame::write_head(out, 0, frame::HEADERS, 0, id);
    shared.encoder.begin_block(out);
    if let Some(status) = status {
        shared.encoder.encode_status(out, status);
    }
    for (name, value) in fields {
        shared
            .encoder
            .encode_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    let block_len = out.len() - at - frame::HEADER_LEN;
    let end_flag = if end { frame::END_STREAM } else { 0 };
    if block_len <= shared.max_frame {
        frame::patch_len(out, at, block_len);
        out[at + 4] = frame::END_HEADERS | end_flag;
        return;
    }
    // Rare: a block larger than a frame goes out in pieces.
    let block = out.split_off(at + frame::HEADER_LEN);
    out.truncate(at);
    let mut pieces = block.chunks(shared.max_frame).peekable();
    let mut kind = frame::HEADERS;
    let mut flags = end_flag;
    while let Some(piece) = pieces.next() {
        if pieces.peek().is_none() {
            flags |= frame::END_HEADERS;
        }
        frame::write_head(out, piece.len(), kind, flags, id);
        out.extend_from_slice(piece);
        (kind, flags) = (frame::CONTINUATION, 0);
    }
}

/// Sends `data` on a stream in DATA frames as the windows and the output's
/// room allow; `Err` when the stream was reset meanwhile.
async fn send_data(shared: &SharedRef, id: u32, mut data: Bytes, end: bool) -> Result<(), ()> {
    poll_fn(|cx| {
        let mut guard = lock(shared);
        let shared = &mut *guard;
        loop {
            let Some(stream) = shared.streams.get_mut(&id) else {
                return Poll::Ready(Err(()));
            };
            if stream.reset || stream.local_closed {
                return Poll::Ready(Err(()));
            }
            let room = stream.send_window.min(shared.send_window).max(0) as usize;
            let n = data.len().min(room).min(shared.max_frame);
            let blocked = (n == 0 && !data.is_empty()) || shared.out.len() >= OUT_LIMIT;
            if blocked {
                stream.waiting_to_send = true;
                stream.waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            let last = n == data.len();
            stream.send_window -= n as i64;
            shared.send_window -= n as i64;
            if last && end {
                stream.local_closed = true;
                shared.reset_budget = (shared.reset_budget + 1).min(RESET_BUDGET);
            }
            frame::write_data(&mut shared.out, id, &data[..n], last && end);
            data.advance(n);
            if last {
                return Poll::Ready(Ok(()));
            }
        }
    })
    .await
}

/// A header block arriving in pieces (HEADERS without END_HEADERS).
struct Partial {
    stream: u32,
    end_stream: bool,
    depends_on_itself: bool,
    block: Vec<u8>,
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
    B: Body<Data = Bytes> + Unpin + Send + 'static,
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
            read: BytesMut::with_capacity(frame::DEFAULT_MAX_FRAME + frame::HEADER_LEN),
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
        if self.read.capacity() - self.read.len() < 4096 {
            self.read
                .reserve(frame::DEFAULT_MAX_FRAME + frame::HEADER_LEN);
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
            let n = read.len().min(frame::PREFACE.len());
            if read[..n] != frame::PREFACE[..n] {
                return Err(conn_error(Reason::Protocol, "not the HTTP/2 preface"));
            }
            if n < frame::PREFACE.len() {
                return Ok(());
            }
            read.advance(n);
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
            match head.kind {
                // Copied out: a slice would keep the whole read buffer alive
                // while it waits for its backend.
                frame::DATA => self.data(head, Bytes::copy_from_slice(payload))?,
                _ => self.control(head, payload)?,
            }
            read.advance(whole);
        }
        Ok(())
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
        } = partial;
        self.header_block(stream, end_stream, &block, depends_on_itself)
    }

    fn check_block_size(&self, len: usize) -> Result<(), ConnError> {
        let cap = HEADER_BLOCK_CAP * self.max_header_bytes.max(frame::DEFAULT_MAX_FRAME);
        match len > cap {
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
        if self.goaway_sent || self.winding_down {
            return Ok(());
        }
        let mut shared = lock(&self.shared);
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
        let body = RequestBody {
            shared: Arc::clone(&self.shared),
            id,
            empty: end_stream,
            size: content_length,
        };
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

    fn data(&mut self, head: Head, payload: Bytes) -> Result<(), ConnError> {
        if head.stream == 0 {
            return Err(conn_error(Reason::Protocol, "DATA on stream 0"));
        }
        if head.stream > self.last_seen {
            return Err(conn_error(Reason::Protocol, "DATA on an idle stream"));
        }
        let data = match frame::unpadded(&head, &payload) {
            Some(data) => {
                let start = data.as_ptr() as usize - payload.as_ptr() as usize;
                payload.slice(start..start + data.len())
            }
            None => return Err(conn_error(Reason::Protocol, "bad padding")),
        };
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
            Some(stream) => match stream.take_data(data, padding, end) {
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

    fn priority(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnError> {
        if head.stream == 0 {
            return Err(conn_error(Reason::Protocol, "PRIORITY on stream 0"));
        }
        // A stream error; on a stream not opened yet there is nothing to
        // reset, and PRIORITY means nothing to limpet anyway.
        if payload.len() != 5 && head.stream <= self.last_seen {
            lock(&self.shared).reset(head.stream, Reason::FrameSize);
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
        if head.stream == 0 || head.stream > self.last_seen {
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
        if head.stream > self.last_seen {
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
