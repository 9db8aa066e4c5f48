//! An HTTP/2 stream as limpet's connection (`super::conn`) and the stream's
//! own future share it: its state and flow-control windows ([`StreamState`],
//! in [`Shared`] with the connection's output buffer and HPACK encoder), the
//! request body the future reads ([`RequestBody`]), and the future's side:
//! [`run_stream`], which ends when the stream is reset, and
//! [`send_response`], which writes the response's frames as the windows and
//! the output's room allow.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes};
use http::{HeaderMap, Response};
use http_body::{Body, Frame};

use super::frame::{self, Reason};
use super::hpack::Encoder;
use super::request::Fields;

/// What a client may send on one stream before limpet has passed it on
/// (SETTINGS_INITIAL_WINDOW_SIZE).
pub(super) const STREAM_WINDOW: i64 = 256 * 1024;
/// What a client may send on the connection before limpet has passed it on:
/// the most request body one connection holds in memory.
pub(super) const CONNECTION_WINDOW: i64 = 2 * 1024 * 1024;
/// Streams stop adding DATA to the output while it holds this much.
pub(super) const OUT_LIMIT: usize = 64 * 1024;
/// The output buffer's room kept between bursts.
pub(super) const OUT_KEPT: usize = 4096;
/// Client resets of unfinished streams, beyond completed ones, that end the
/// connection.
pub(super) const RESET_BUDGET: i64 = 200;

/// One stream, as the driver and its future see it.
#[derive(Default)]
pub(super) struct StreamState {
    /// The stream future's waker, woken by anything that concerns it.
    pub(super) waker: Option<Waker>,
    /// What limpet may send (the client's window for this stream).
    pub(super) send_window: i64,
    /// What the client may still send.
    pub(super) recv_window: i64,
    /// DATA bytes passed on and not yet given back with WINDOW_UPDATE.
    pub(super) recv_unacked: u32,
    /// DATA received and not yet passed on.
    pub(super) recv: VecDeque<Bytes>,
    pub(super) recv_queued: usize,
    pub(super) trailers: Option<HeaderMap>,
    /// The client ended its side (END_STREAM).
    pub(super) remote_closed: bool,
    /// limpet ended its side (END_STREAM or RST_STREAM sent).
    pub(super) local_closed: bool,
    /// The stream was reset (by the client or by limpet): its future ends.
    pub(super) reset: bool,
    pub(super) content_length: Option<u64>,
    pub(super) received: u64,
    /// Waits for window or output room.
    pub(super) waiting_to_send: bool,
}

/// What the driver and the stream futures share.
pub(super) struct Shared {
    /// Frames to write.
    pub(super) out: Vec<u8>,
    pub(super) encoder: Encoder,
    pub(super) streams: ahash::AHashMap<u32, StreamState>,
    /// The client's window for the whole connection.
    pub(super) send_window: i64,
    /// The client's SETTINGS_INITIAL_WINDOW_SIZE.
    pub(super) initial_send_window: i64,
    /// The client's SETTINGS_MAX_FRAME_SIZE.
    pub(super) max_frame: usize,
    /// What the client may still send on the connection.
    pub(super) recv_window: i64,
    /// Connection-level DATA bytes passed on (or dropped) and not yet given
    /// back.
    pub(super) recv_unacked: u32,
    /// Streams completed, minus unfinished streams reset (by the client, or
    /// by limpet for the client's fault).
    pub(super) reset_budget: i64,
    /// Streams in the map that are not reset: what MAX_CONCURRENT_STREAMS
    /// counts.
    pub(super) open: usize,
}

pub(super) type SharedRef = Arc<Mutex<Shared>>;

pub(super) fn lock(shared: &SharedRef) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub(super) fn new() -> Self {
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

    /// Resets a stream (a stream error, or limpet gives up on it). A stream
    /// reset for the client's fault counts against the reset budget as the
    /// client's own resets do ("MadeYouReset").
    pub(super) fn reset(&mut self, id: u32, reason: Reason) {
        if self.end(id) {
            frame::write_rst_stream(&mut self.out, id, reason);
        }
    }

    /// Ends a stream early (reset by either side): its future ends at its
    /// next poll. False if it had ended already; a stream not in the map is
    /// one limpet did not take (refused, or past a GOAWAY) and is ended.
    pub(super) fn end(&mut self, id: u32) -> bool {
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
    pub(super) fn give_back(&mut self, bytes: usize) {
        self.recv_unacked += bytes as u32;
        if i64::from(self.recv_unacked) >= CONNECTION_WINDOW / 2 {
            frame::write_window_update(&mut self.out, 0, self.recv_unacked);
            self.recv_window += i64::from(self.recv_unacked);
            self.recv_unacked = 0;
        }
    }

    /// Wakes the streams that wait for window or output room.
    pub(super) fn wake_senders(&mut self) {
        for stream in self.streams.values_mut() {
            if stream.waiting_to_send {
                stream.waiting_to_send = false;
                wake(stream);
            }
        }
    }

    /// Forgets a stream whose future has ended.
    pub(super) fn remove(&mut self, id: u32) {
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

pub(super) fn wake(stream: &mut StreamState) {
    if let Some(waker) = &stream.waker {
        waker.wake_by_ref();
    }
}

impl StreamState {
    /// Queues a DATA frame's data for the request body; the stream error
    /// when the frame breaks the stream's rules.
    pub(super) fn take_data(
        &mut self,
        data: Bytes,
        padding: usize,
        end: bool,
    ) -> Result<(), Reason> {
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
    pub(super) fn credit(&mut self, out: &mut Vec<u8>, id: u32) {
        if !self.remote_closed && i64::from(self.recv_unacked) >= STREAM_WINDOW / 2 {
            frame::write_window_update(out, id, self.recv_unacked);
            self.recv_window += i64::from(self.recv_unacked);
            self.recv_unacked = 0;
        }
    }

    /// Takes a request's trailers, which must end the stream.
    pub(super) fn take_trailers(&mut self, end_stream: bool, fields: Fields) -> Result<(), Reason> {
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

impl RequestBody {
    /// Stream `id`'s body; `empty` when the client ended the stream with its
    /// HEADERS, `size` its Content-Length.
    pub(super) fn new(shared: SharedRef, id: u32, empty: bool, size: Option<u64>) -> Self {
        RequestBody {
            shared,
            id,
            empty,
            size,
        }
    }
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
pub(super) async fn run_stream<W: Future<Output = ()>>(shared: SharedRef, id: u32, work: W) {
    let forget = Forget(shared, id);
    Resettable {
        stream: &forget,
        work: std::pin::pin!(work),
    }
    .await
}

/// Forgets its stream when dropped: after the work, also when the stream's
/// future is dropped midway (the connection ends).
pub(super) struct Forget(SharedRef, u32);

impl Drop for Forget {
    fn drop(&mut self) {
        lock(&self.0).remove(self.1);
    }
}

/// A stream's work, which ends early when the stream is reset.
pub(super) struct Resettable<'a, W> {
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

/// A response body that carries fields of its response's head beside the
/// response's `HeaderMap`: a relayed backend response, whose fields are
/// encoded straight from the backend's head rather than copied into a map.
pub(crate) trait HeadFields {
    /// Calls `field` with each such field's name and value (the name in any
    /// case: it is lowercased on the way).
    fn each_field(&self, field: &mut dyn FnMut(&[u8], &[u8]));
}

/// Sends a response on its stream: HEADERS, then DATA as the windows allow,
/// then trailers; a body that fails resets the stream.
pub(super) async fn send_response<B>(shared: SharedRef, id: u32, response: Response<B>)
where
    B: Body<Data = Bytes> + HeadFields + Unpin,
{
    let (parts, mut body) = response.into_parts();
    let ended = body.is_end_stream();
    let head = Head {
        status: Some(parts.status.as_u16()),
        fields: &parts.headers,
        more: Some(&body),
    };
    write_headers(&mut lock(&shared), id, head, ended);
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
                    let head = Head {
                        status: None,
                        fields: &trailers,
                        more: None,
                    };
                    write_headers(&mut lock(&shared), id, head, true);
                    return;
                }
            },
        }
    }
}

/// What a HEADERS frame carries: a response's head (with its status), or
/// trailers.
pub(super) struct Head<'a> {
    status: Option<u16>,
    fields: &'a HeaderMap,
    more: Option<&'a dyn HeadFields>,
}

/// Writes a HEADERS frame (and CONTINUATIONs if the block is larger than the
/// client's frame size).
pub(super) fn write_headers(shared: &mut Shared, id: u32, head: Head<'_>, end: bool) {
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
    let encoder = &mut shared.encoder;
    if let Some(status) = head.status {
        encoder.encode_status(out, status);
    }
    for (name, value) in head.fields {
        encoder.encode_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if let Some(more) = head.more {
        let mut lower = [0u8; 64];
        more.each_field(&mut |name, value| match name.len() <= lower.len() {
            true => {
                let lower = &mut lower[..name.len()];
                lower.copy_from_slice(name);
                lower.make_ascii_lowercase();
                encoder.encode_field(out, lower, value);
            }
            false => encoder.encode_field(out, &name.to_ascii_lowercase(), value),
        });
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
pub(super) async fn send_data(
    shared: &SharedRef,
    id: u32,
    mut data: Bytes,
    end: bool,
) -> Result<(), ()> {
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
