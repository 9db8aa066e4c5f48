//! The backend side of an HTTP/2 request: HTTP/1.1 on a socket of
//! `crate::pool`, written and read with the HTTP/1 engine's own pieces (no
//! hyper client, no task): the request head from the HTTP/2 fields
//! ([`policy::write_request_fields`]), the body streamed from the client's
//! DATA frames (`crate::h1::exchange::Upload`, which also hears an early
//! answer), the strict response-head parser (`crate::h1::head`), and a
//! response [`Relay`] that the HTTP/2 connection polls for DATA frames, read
//! straight from the socket and framed by `crate::h1::body` (a chunked body's
//! trailer section becomes the stream's trailers), and that puts the socket
//! back in the pool where the body ends.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Method;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tokio::time::Instant;

use super::Counted;
use crate::backend::InFlight;
use crate::error::BoxError;
use crate::flow::policy::Field;
use crate::flow::policy::{self, Forwarding};
use crate::flow::Failure;
use crate::h1::body::Body as Framed;
use crate::h1::exchange::{read_response_head, sending, Upload, RESPONSE_HEAD_MAX};
use crate::h1::head::{Framing, ResponseHead};
use crate::h1::io::{self, give_buffer, take_buffer, write_all, Clock, Wait, Waits};
use crate::pool::Conn;

/// How the request's body goes to the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RequestFraming {
    /// None (the client ended the stream with its HEADERS).
    None,
    /// As it comes: the client said its Content-Length (which h2 holds the
    /// DATA frames to).
    Length,
    /// In chunks, one per DATA frame.
    Chunked,
}

impl RequestFraming {
    pub(super) fn of(headers: &HeaderMap, body: &Counted) -> Self {
        if body.is_end_stream() {
            RequestFraming::None
        } else if headers.contains_key(header::CONTENT_LENGTH) {
            RequestFraming::Length
        } else {
            RequestFraming::Chunked
        }
    }
}

/// Writes the HTTP/1.1 request head for the backend into `out`.
pub(super) fn write_head(
    out: &mut Vec<u8>,
    method: &Method,
    origin: &str,
    headers: &HeaderMap,
    fwd: &Forwarding<'_>,
    body: RequestFraming,
) {
    out.clear();
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(origin.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    policy::write_request_fields(out, headers, fwd);
    if body == RequestFraming::Chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// A response head from a backend, with what follows it.
pub(super) struct Answer {
    /// The head, and the first bytes of the body after it.
    pub(super) buf: Vec<u8>,
    pub(super) head: ResponseHead,
    /// All of the request's body went to the backend (it may have answered
    /// before taking it all).
    pub(super) body_sent: bool,
}

/// Streams the request's body (when there is one) on `socket`, whose head has
/// been written, and reads the backend's final response head.
pub(super) async fn exchange(
    socket: &mut Conn,
    body: &mut Counted,
    framing: RequestFraming,
    head_request: bool,
    clock: &mut Clock,
    timeouts: Waits,
) -> Result<Answer, Failure> {
    let mut buf = take_buffer();
    let mut body_sent = true;
    if framing != RequestFraming::None {
        let request = (head_request, false);
        let mut upload = Upload::new(socket, &mut buf, request, timeouts);
        body_sent = upload_body(&mut upload, body, framing, clock, timeouts).await?;
        // TLS may hold the body's last records until flushed (a failure
        // shows when the response is read).
        let wait = Wait::Idle(timeouts.backend.response);
        let _ = write_all(socket, &[], clock, wait).await;
    }
    let request = (head_request, false);
    match read_response_head(socket, &mut buf, clock, timeouts, request).await {
        Ok(head) => Ok(Answer {
            buf,
            head,
            body_sent,
        }),
        Err(failure) => {
            give_buffer(buf);
            Err(failure)
        }
    }
}

/// Writes the client's DATA frames to the backend (as chunks for
/// `RequestFraming::Chunked`); false when the backend answered before taking
/// all of them. Request trailers are not forwarded. A client silent for
/// `client_idle` breaks its request, as on HTTP/1.
async fn upload_body(
    upload: &mut Upload<'_>,
    body: &mut Counted,
    framing: RequestFraming,
    clock: &mut Clock,
    timeouts: Waits,
) -> Result<bool, Failure> {
    let chunked = framing == RequestFraming::Chunked;
    loop {
        let deadline = Instant::now() + timeouts.client_idle;
        let frame = match clock.within(deadline, body.frame()).await {
            None => return Err(Failure::ClientStalled),
            Some(None) => break,
            Some(Some(Err(e))) => return Err(Failure::ClientBody(e.into())),
            Some(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        if chunked {
            let mut size = Vec::with_capacity(18);
            size.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
            if !upload.send(&size, clock).await? {
                return Ok(false);
            }
        }
        if !upload.send(&data, clock).await? {
            return Ok(false);
        }
        if chunked && !upload.send(b"\r\n", clock).await? {
            return Ok(false);
        }
    }
    if chunked && !upload.send(b"0\r\n\r\n", clock).await? {
        return Ok(false);
    }
    Ok(true)
}

/// Writes the request head on `socket`: a failure here, before a byte of the
/// body, leaves the request whole for another socket.
pub(super) async fn write_request_head(
    socket: &mut Conn,
    head: &[u8],
    clock: &mut Clock,
    timeouts: Waits,
) -> Result<(), Failure> {
    let wait = Wait::Idle(timeouts.backend.response);
    write_all(socket, head, clock, wait)
        .await
        .map_err(|e| sending(e, timeouts))
}

/// The response's fields for the HTTP/2 client, encoded by the connection
/// straight from the backend's head (`bytes`; no map is built): the fields
/// `ResponseHead::passes` lets through, then the route's
/// Strict-Transport-Security and the pin's Set-Cookie. None of the HTTP/1
/// connection's fields: HTTP/2 has none.
#[derive(Debug)]
pub(super) struct ResponseFields {
    bytes: Bytes,
    head: ResponseHead,
    hsts: Option<Box<str>>,
    set_cookie: Option<String>,
}

impl ResponseFields {
    pub(super) fn new(
        bytes: Bytes,
        head: ResponseHead,
        (set_cookie, hsts): (Option<String>, Option<&str>),
    ) -> Self {
        ResponseFields {
            bytes,
            head,
            hsts: hsts.map(Box::from),
            set_cookie,
        }
    }

    /// Each field's name (as the backend wrote it) and value.
    pub(super) fn each(&self, field: &mut dyn FnMut(&[u8], &[u8])) {
        let (bytes, head) = (&self.bytes, &self.head);
        for f in &head.fields {
            // Checked by the parser already: names are tokens, values have
            // no CR, LF or NUL.
            if head.passes(f, bytes, self.hsts.is_some(), true) {
                field(&bytes[f.name.clone()], &bytes[f.value.clone()]);
            }
        }
        if let Some(hsts) = &self.hsts {
            field(b"strict-transport-security", hsts.as_bytes());
        }
        if let Some(cookie) = &self.set_cookie {
            field(b"set-cookie", cookie.as_bytes());
        }
    }
}

/// A backend's response body on its way to the HTTP/2 client, read from the
/// backend's socket as the stream's window allows DATA frames: a Content-Length
/// body (or one delimited by the close) in slices of what was read, without a
/// copy; a chunked one decoded. Where the body ends the socket goes back to
/// the pool (when the backend keeps it: `keep_for`, nothing past the body),
/// and the request's in-flight count falls; dropped before, the socket is
/// closed. The backend is given `upstream_response` of silence within the body.
pub(super) struct Relay {
    /// The backend connection, until the body ends.
    socket: Option<Conn>,
    /// Read from the socket and not yet relayed.
    pending: Bytes,
    buf: BytesMut,
    framing: Framed,
    chunked: bool,
    /// A chunked body's trailer field lines, sent as the last frame.
    trailers: Vec<u8>,
    /// Nothing came past the body so far.
    clean: bool,
    /// How long the pool may keep the socket once the body has ended (zero:
    /// not at all).
    keep_for: Duration,
    clock: Clock,
    silence: Duration,
    /// When the current wait for the backend times out.
    deadline: Option<Instant>,
    in_flight: Option<InFlight>,
}

impl Relay {
    /// The body of the response whose head is `head`; `after_head`: the bytes
    /// read past the head.
    pub(super) fn new(
        socket: Conn,
        after_head: Bytes,
        head: &ResponseHead,
        keep_for: Duration,
        clock: Clock,
        silence: Duration,
        in_flight: InFlight,
    ) -> Self {
        let mut relay = Relay {
            socket: Some(socket),
            pending: after_head,
            buf: BytesMut::new(),
            framing: Framed::new(head.framing),
            chunked: head.framing == Framing::Chunked,
            trailers: Vec::new(),
            clean: true,
            keep_for,
            clock,
            silence,
            deadline: None,
            in_flight: Some(in_flight),
        };
        if relay.framing.done() {
            relay.clean = relay.pending.is_empty();
            relay.finish();
        }
        relay
    }

    /// Whether the body has ended (the socket pooled or closed).
    pub(super) fn ended(&self) -> bool {
        self.socket.is_none()
    }

    /// The body's part of what was read and not yet relayed, as one DATA
    /// frame's bytes (none when it holds no data: chunk framing only).
    fn next_data(&mut self) -> Result<Option<Bytes>, BoxError> {
        if self.pending.is_empty() {
            return Ok(None);
        }
        let pending = std::mem::take(&mut self.pending);
        if self.chunked {
            let mut data = Vec::new();
            self.clean &= self
                .framing
                .decode(&pending, &mut data, &mut self.trailers)?;
            if self.trailers.len() > RESPONSE_HEAD_MAX {
                return Err("trailer section too large".into());
            }
            return Ok((!data.is_empty()).then(|| Bytes::from(data)));
        }
        let (take, whole) = self.framing.take(&pending)?;
        self.clean &= whole;
        Ok((take > 0).then(|| pending.slice(..take)))
    }

    /// Reads what the backend sent next into `pending`; `Ok(false)` when it
    /// closed the connection.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Result<bool, BoxError>> {
        let Some(socket) = self.socket.as_mut() else {
            return Poll::Ready(Ok(false));
        };
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(io::BODY_BUFFER);
        }
        match io::poll_read_buf(socket, cx, &mut self.buf) {
            Poll::Ready(Ok(0)) => Poll::Ready(Ok(false)),
            Poll::Ready(Ok(_)) => {
                self.deadline = None;
                self.pending = self.buf.split().freeze();
                Poll::Ready(Ok(true))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e.into())),
            Poll::Pending => {
                let silence = self.silence;
                let deadline = *self
                    .deadline
                    .get_or_insert_with(|| Instant::now() + silence);
                match self.clock.poll_passed(cx, deadline) {
                    Poll::Ready(()) => Poll::Ready(Err(io::timed_out().into())),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    /// The body has ended: the socket goes back to the pool when the backend
    /// keeps it and nothing came past the body, the in-flight count falls.
    fn finish(&mut self) {
        if let (Some(socket), Some(in_flight)) = (self.socket.take(), &self.in_flight) {
            let reusable = self.clean && self.framing.done() && !self.keep_for.is_zero();
            if reusable {
                in_flight.state().pool.put(socket, self.keep_for);
            }
        }
        self.in_flight = None;
    }

    /// The trailer section, once the body has ended, as the fields an HTTP/2
    /// client may get (none of the hop-by-hop ones or the framing).
    fn take_trailers(&mut self) -> Option<HeaderMap> {
        if self.trailers.is_empty() {
            return None;
        }
        let mut lines = std::mem::take(&mut self.trailers);
        lines.extend_from_slice(b"\r\n");
        let mut slots = [httparse::EMPTY_HEADER; 32];
        let Ok(httparse::Status::Complete((_, fields))) =
            httparse::parse_headers(&lines, &mut slots)
        else {
            tracing::debug!("unparsable trailer section dropped");
            return None;
        };
        let mut trailers = HeaderMap::with_capacity(fields.len());
        for f in fields {
            if policy::response_field(f.name.as_bytes()) != Field::Pass {
                continue;
            }
            let name = HeaderName::from_bytes(f.name.as_bytes());
            let value = HeaderValue::from_bytes(f.value);
            if let (Ok(name), Ok(value)) = (name, value) {
                trailers.append(name, value);
            }
        }
        (!trailers.is_empty()).then_some(trailers)
    }

    /// The body broke off: the socket is closed.
    fn abandon(&mut self) {
        self.socket = None;
        self.in_flight = None;
    }
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("ended", &self.ended())
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl Body for Relay {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            match this.next_data() {
                Ok(Some(data)) => {
                    if this.framing.done() {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(None) => {}
                Err(e) => {
                    this.abandon();
                    return Poll::Ready(Some(Err(e)));
                }
            }
            if this.ended() || this.framing.done() {
                this.finish();
                return Poll::Ready(this.take_trailers().map(|t| Ok(Frame::trailers(t))));
            }
            match this.poll_read(cx) {
                Poll::Ready(Ok(true)) => {}
                // Closed: the end of a body delimited by the close (the
                // socket not kept), else a body cut short.
                Poll::Ready(Ok(false)) if this.framing.until_close() => {
                    this.abandon();
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(false)) => {
                    this.abandon();
                    return Poll::Ready(Some(Err("backend closed mid-body".into())));
                }
                Poll::Ready(Err(e)) => {
                    this.abandon();
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended() && self.trailers.is_empty()
    }
}
