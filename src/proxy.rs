//! The request path, top to bottom: route, read the pin, choose the backend, rewrite
//! the request, forward it (retrying per SPEC section 4), re-pin in the response.
//!
//! [`Proxy::call`] wraps [`Proxy::handle`]: it is the only place where an error
//! becomes a response, and where metrics and the access log are written.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::config::{Affinity, SameSite, Secure};
use crate::error::ProxyError;
use crate::metrics::{code_class, Metrics};
use crate::state::{Decision, Outcome, SharedState, Snapshot, Upstream};
use crate::upstream::{self, InFlight, ProxyBody, SendError, StreamedBody, UpstreamBody};

pub const FAILOVER_FROM: HeaderName = HeaderName::from_static("x-limpet-failover-from");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// What the listener knows about the connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
}

/// The proxy service shared by every listener.
#[derive(Debug, Clone)]
pub struct Proxy {
    pub state: SharedState,
    pub metrics: Metrics,
}

/// What the access log and the metrics say about a request: indices into the
/// request's snapshot.
#[derive(Default)]
pub(crate) struct Trace {
    pub(crate) upstream: Option<usize>,
    pub(crate) backend: Option<usize>,
    pub(crate) outcome: Option<Outcome>,
}

impl Proxy {
    pub fn new(state: SharedState, metrics: Metrics) -> Self {
        Proxy { state, metrics }
    }

    /// Answers one client request; never fails.
    ///
    /// `call`, `handle`, `forward` and `upstream::send` return async blocks rather
    /// than being async fns: an async fn keeps each argument twice in its future
    /// (as captured and as a local), and the request is 264 bytes at every level.
    // An async block on purpose: see `Proxy::call`.
    #[allow(clippy::manual_async_fn)]
    pub fn call<'a>(
        &'a self,
        req: Request<Incoming>,
        conn: &'a ConnInfo,
    ) -> impl Future<Output = Response<ProxyBody>> + Send + 'a {
        async move {
            let started = Instant::now();
            // Copied for the access log only when it is on.
            let access = crate::access_log::enabled().then(|| {
                let path = req
                    .uri()
                    .path_and_query()
                    .map(|p| p.as_str().to_owned())
                    .unwrap_or_default();
                (req.method().clone(), path)
            });
            let snap = self.state.load_full();
            let mut trace = Trace::default();
            let response = match self.handle(&snap, req, conn, &mut trace).await {
                Ok(resp) => resp,
                Err(err) => {
                    if err.status().is_server_error() {
                        tracing::debug!(error = %err, "request failed");
                    }
                    err.into_response()
                }
            };
            let status = response.status().as_u16();
            let access = access.as_ref().map(|(m, p)| (m.as_str(), p.as_str()));
            self.record(&snap, &trace, status, started.elapsed(), access);
            response
        }
    }

    /// Writes a finished request's metrics and, when `access` carries its method and
    /// path, its access-log line.
    pub(crate) fn record(
        &self,
        snap: &Snapshot,
        trace: &Trace,
        status: u16,
        elapsed: std::time::Duration,
        access: Option<(&str, &str)>,
    ) {
        let up = trace.upstream.map(|u| &snap.upstreams[u]);
        let upstream = up.map(|u| &*u.name).unwrap_or("");
        let backend = match (up, trace.backend) {
            (Some(u), Some(b)) => Some((b, &*u.backends[b].name)),
            _ => None,
        };
        match (up, backend) {
            (Some(u), Some(b)) => {
                u.series.requests(&self.metrics, upstream, b, status).inc();
                u.series
                    .duration(&self.metrics, upstream, b)
                    .observe(elapsed.as_secs_f64());
            }
            _ => self
                .metrics
                .requests
                .with_label_values(&[upstream, "", code_class(status)])
                .inc(),
        }
        if let (Some(u), Some(outcome)) = (up, trace.outcome) {
            u.series.affinity(&self.metrics, upstream, outcome).inc();
        }
        if let Some((method, path)) = access {
            crate::access_log::write(&crate::access_log::AccessRecord {
                method,
                path,
                status,
                upstream,
                backend: backend.map(|b| b.1).unwrap_or(""),
                affinity: trace.outcome.map(Outcome::as_str).unwrap_or("-"),
                duration_us: elapsed.as_micros() as u64,
            });
        }
    }

    // An async block on purpose: see `Proxy::call`.
    #[allow(clippy::manual_async_fn)]
    fn handle<'a>(
        &'a self,
        snap: &'a Snapshot,
        mut req: Request<Incoming>,
        conn: &'a ConnInfo,
        trace: &'a mut Trace,
    ) -> impl Future<Output = Result<Response<ProxyBody>, ProxyError>> + Send + 'a {
        async move {
            let host = request_host(&req)?;
            let path = req.uri().path();
            let upstream_index = snap
                .router
                .route(host.as_ref().and_then(|h| h.to_str().ok()), path)
                .ok_or(ProxyError::NoRoute)?;
            let upstream = &snap.upstreams[upstream_index];
            trace.upstream = Some(upstream_index);

            let pin = upstream.read_pin(req.headers(), path, conn.peer.ip());
            let decision = upstream.choose(pin);
            trace.outcome = Some(decision.outcome);
            if decision.outcome == Outcome::Rejected {
                return Err(
                    if upstream.config.failover == crate::config::Failover::Reject && pin.is_some()
                    {
                        ProxyError::Rejected
                    } else {
                        ProxyError::NoBackend
                    },
                );
            }

            let upgrade = take_upgrade(&mut req);
            rewrite_request(&mut req, upstream, host, conn)?;
            if let Some((protocol, _)) = &upgrade {
                let headers = req.headers_mut();
                headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                headers.insert(header::UPGRADE, protocol.clone());
            }
            let (mut resp, decision) = self
                .forward(
                    upstream,
                    decision,
                    req.map(Either::Left),
                    snap.config.timeouts,
                    trace,
                )
                .await?;
            trace.outcome = Some(decision.outcome);
            let switched = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
            let backend_protocol = resp.headers().get(header::UPGRADE).cloned();
            if let (true, Some((_, client))) = (switched, upgrade) {
                tunnel(client, hyper::upgrade::on(&mut resp));
            }
            let mut resp = rewrite_response(resp, upstream, &decision, conn);
            if let (true, Some(protocol)) = (switched, backend_protocol) {
                let headers = resp.headers_mut();
                headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                headers.insert(header::UPGRADE, protocol);
            }
            Ok(resp)
        }
    }

    /// Sends the request to the decided backend; on failure retries per SPEC section 4.
    // An async block on purpose: see `Proxy::call`.
    #[allow(clippy::manual_async_fn)]
    fn forward<'a>(
        &'a self,
        upstream: &'a Upstream,
        mut decision: Decision,
        mut req: Request<UpstreamBody>,
        timeouts: crate::config::Timeouts,
        trace: &'a mut Trace,
    ) -> impl Future<Output = Result<(Response<StreamedBody>, Decision), ProxyError>> + Send + 'a
    {
        async move {
            // A bodiless idempotent request can be replayed after it was sent.
            let replay = (is_idempotent(req.method()) && req.body().is_end_stream())
                .then(|| clone_head(&req));
            let mut attempts = Attempts::new(upstream, &self.metrics, replay.is_some());
            loop {
                let backend = &upstream.backends[decision.backend];
                trace.backend = Some(decision.backend);
                set_failover_header(req.headers_mut(), upstream, &decision);
                let in_flight = InFlight::start(&backend.state);
                let failure = match upstream::send(
                    &backend.state,
                    req,
                    timeouts.upstream_connect,
                    timeouts.upstream_response,
                )
                .await
                {
                    Ok((resp, lease)) => {
                        backend.state.passive_failures.store(0, Relaxed);
                        backend.state.requests.fetch_add(1, Relaxed);
                        // An upgraded connection becomes a tunnel: never back to the pool.
                        let reusable = resp.status() != StatusCode::SWITCHING_PROTOCOLS;
                        let lease = reusable.then_some(lease);
                        let resp = resp.map(|body| StreamedBody::new(body, lease, in_flight));
                        return Ok((resp, decision));
                    }
                    Err(e) => e,
                };
                drop(in_flight);
                req = match failure {
                    SendError::Timeout(after) => return Err(ProxyError::Timeout(after)),
                    SendError::NotSent { request, cause } => {
                        decision = attempts.not_sent(decision, cause)?;
                        *request
                    }
                    // The client's own body broke (a malformed chunk, a reset
                    // mid-upload): its fault, not the backend's.
                    SendError::NoResponse { cause, .. } if cause.is_user() => {
                        return Err(ProxyError::BadBody(cause.into()));
                    }
                    SendError::NoResponse { cause, reused } => {
                        match attempts.no_response(decision, cause.into(), reused)? {
                            Retry::SameBackend => {}
                            Retry::Next(next) => decision = next,
                        }
                        // Only a replayable request gets here.
                        match &replay {
                            Some(head) => rebuild(head),
                            None => return Err(ProxyError::NoBackend),
                        }
                    }
                };
            }
        }
    }
}

/// What to do after a request got no response from a backend.
pub(crate) enum Retry {
    /// Send it again to the same backend, on a new connection.
    SameBackend,
    /// Send it to this target.
    Next(Decision),
}

/// The retry rules of SPEC section 4 for one request, shared by both engines
/// (hyper's here, limpet's own in `crate::h1`).
pub(crate) struct Attempts<'a> {
    upstream: &'a Upstream,
    metrics: &'a Metrics,
    /// Backends that failed this request (no allocation until one does).
    tried: Vec<usize>,
    retries_left: u32,
    stale_retried: bool,
    /// The request can be sent again after it was sent (idempotent, bodiless).
    replayable: bool,
}

impl<'a> Attempts<'a> {
    pub(crate) fn new(upstream: &'a Upstream, metrics: &'a Metrics, replayable: bool) -> Self {
        Attempts {
            upstream,
            metrics,
            tried: Vec::new(),
            retries_left: upstream.config.retries,
            stale_retried: false,
            replayable,
        }
    }

    /// Nothing of the request reached `failed`'s backend: the next target, if a
    /// retry is left.
    pub(crate) fn not_sent(
        &mut self,
        failed: Decision,
        cause: upstream::ConnectError,
    ) -> Result<Decision, ProxyError> {
        crate::health::passive_failure(self.upstream, failed.backend, &cause);
        if self.retries_left == 0 {
            return Err(ProxyError::Unreachable(cause));
        }
        self.next(failed)
    }

    /// The request was (maybe partly) sent and the connection failed before a
    /// response head. `reused`: the connection came from the pool.
    pub(crate) fn no_response(
        &mut self,
        failed: Decision,
        cause: crate::error::BoxError,
        reused: bool,
    ) -> Result<Retry, ProxyError> {
        if !reused {
            crate::health::passive_failure(self.upstream, failed.backend, &cause);
        }
        if !self.replayable {
            return Err(ProxyError::BadGateway(cause));
        }
        // A pooled keep-alive connection the backend closed as we sent on it says
        // nothing about the backend: once per request, send again to the same
        // backend on a new connection rather than fail over (which would move the
        // session to the replica).
        if reused && !self.stale_retried {
            self.stale_retried = true;
            let backend = &self.upstream.backends[failed.backend];
            backend.state.pool.clear();
            self.count_retry(failed.backend);
            return Ok(Retry::SameBackend);
        }
        if self.retries_left > 0 {
            return self.next(failed).map(Retry::Next);
        }
        Err(ProxyError::BadGateway(cause))
    }

    fn next(&mut self, failed: Decision) -> Result<Decision, ProxyError> {
        self.retries_left -= 1;
        self.count_retry(failed.backend);
        self.tried.push(failed.backend);
        let next = self.upstream.after_failure(failed, &self.tried);
        if next.outcome == Outcome::Rejected {
            return Err(ProxyError::NoBackend);
        }
        Ok(next)
    }

    fn count_retry(&self, backend: usize) {
        self.metrics
            .retries
            .with_label_values(&[&self.upstream.name, &self.upstream.backends[backend].name])
            .inc();
    }
}

/// For an HTTP/1.1 `Upgrade` request (WebSocket and others): the protocol asked for,
/// and the client side of the connection once hyper hands it over.
fn take_upgrade(req: &mut Request<Incoming>) -> Option<(HeaderValue, OnUpgrade)> {
    let asks = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    let protocol = req.headers().get(header::UPGRADE)?.clone();
    asks.then(|| (protocol, hyper::upgrade::on(req)))
}

/// Copies bytes both ways between the client and the backend once both sides have
/// switched protocols; when either side closes, both are closed.
fn tunnel(client: OnUpgrade, backend: OnUpgrade) {
    tokio::spawn(async move {
        let (Ok(client), Ok(backend)) = tokio::join!(client, backend) else {
            return;
        };
        let mut client = TokioIo::new(client);
        let mut backend = TokioIo::new(backend);
        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut backend).await {
            tracing::debug!(error = %e, "tunnel closed");
        }
    });
}

/// The request's host: the `Host` header, or the authority of an HTTP/2 request.
/// HTTP/1.1 requires a Host header. Kept as a header value (the Host header's is
/// shared, not copied); it is text.
fn request_host(req: &Request<Incoming>) -> Result<Option<HeaderValue>, ProxyError> {
    if let Some(h) = req.headers().get(header::HOST) {
        h.to_str()
            .map_err(|_| ProxyError::BadRequest("Host is not text"))?;
        return Ok(Some(h.clone()));
    }
    if let Some(a) = req.uri().authority() {
        // An authority is a valid header value (visible ASCII).
        return Ok(HeaderValue::from_str(a.as_str()).ok());
    }
    if req.version() == Version::HTTP_11 {
        return Err(ProxyError::BadRequest("HTTP/1.1 request without Host"));
    }
    Ok(None)
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    )
}

/// What it takes to send a bodiless request again.
struct Head {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

fn clone_head<B>(req: &Request<B>) -> Head {
    Head {
        method: req.method().clone(),
        uri: req.uri().clone(),
        headers: req.headers().clone(),
    }
}

fn rebuild(head: &Head) -> Request<UpstreamBody> {
    let mut req = Request::new(Either::Right(Empty::new()));
    *req.method_mut() = head.method.clone();
    *req.uri_mut() = head.uri.clone();
    *req.headers_mut() = head.headers.clone();
    req
}

/// Turns the client's request into the backend's: origin-form URI, HTTP/1.1, no
/// hop-by-hop headers, limpet's cookie stripped, X-Forwarded-* set.
fn rewrite_request(
    req: &mut Request<Incoming>,
    upstream: &Upstream,
    host: Option<HeaderValue>,
    conn: &ConnInfo,
) -> Result<(), ProxyError> {
    // An origin-form target (what HTTP/1.1 clients send) is already what the
    // backend gets; an absolute-form or HTTP/2 one is cut to its path and query.
    if req.uri().scheme().is_some() || req.uri().authority().is_some() {
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let origin: Uri = path
            .parse()
            .map_err(|_| ProxyError::BadRequest("bad request target"))?;
        *req.uri_mut() = origin;
    }
    *req.version_mut() = Version::HTTP_11;
    let headers = req.headers_mut();
    remove_hop_by_hop(headers);
    headers.remove(FAILOVER_FROM);
    if upstream.config.affinity == Affinity::Cookie {
        crate::affinity::strip_cookie(headers, &upstream.config.cookie.name);
    } else if headers.get_all(header::COOKIE).iter().nth(1).is_some() {
        crate::affinity::strip_cookie(headers, "");
    }
    match host {
        Some(v) => {
            if !headers.contains_key(header::HOST) {
                headers.insert(header::HOST, v.clone());
            }
            headers.insert(X_FORWARDED_HOST, v);
        }
        None => {
            // An HTTP/1.0 request without Host: the client's X-Forwarded-Host must
            // not pass, and HTTP/1.1 to the backend needs a Host, empty when the
            // target has no authority (RFC 9112, section 3.2).
            headers.remove(X_FORWARDED_HOST);
            headers.insert(header::HOST, HeaderValue::from_static(""));
        }
    }
    append_forwarded_for(headers, conn.peer.ip());
    headers.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if conn.tls { "https" } else { "http" }),
    );
    Ok(())
}

fn append_forwarded_for(headers: &mut HeaderMap, ip: std::net::IpAddr) {
    // Room for an IPv4 address (or a short chain) without growing.
    let mut value = String::with_capacity(24);
    for v in headers.get_all(X_FORWARDED_FOR) {
        if let Ok(s) = v.to_str() {
            if !value.is_empty() {
                value.push_str(", ");
            }
            value.push_str(s);
        }
    }
    if !value.is_empty() {
        value.push_str(", ");
    }
    push_ip(&mut value, ip);
    // The String's buffer becomes the header value's: one allocation, no copy.
    if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(value)) {
        headers.insert(X_FORWARDED_FOR, v);
    }
}

/// Appends `ip` as its `Display` would, IPv4 without the formatting machinery.
pub(crate) fn push_ip(out: &mut String, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                if octet >= 100 {
                    out.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    out.push(char::from(b'0' + octet / 10 % 10));
                }
                out.push(char::from(b'0' + octet % 10));
            }
        }
        std::net::IpAddr::V6(_) => {
            use std::fmt::Write as _;
            let _ = write!(out, "{ip}");
        }
    }
}

/// The fixed hop-by-hop set (Upgrade is put back on upgrade requests).
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// The position of `name` in [`HOP_BY_HOP`]: one match on the (lower-case) text
/// instead of nine comparisons of header names.
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    let i = match name.as_str() {
        "connection" => 0,
        "keep-alive" => 1,
        "proxy-connection" => 2,
        "proxy-authenticate" => 3,
        "proxy-authorization" => 4,
        "te" => 5,
        "trailer" => 6,
        "transfer-encoding" => 7,
        "upgrade" => 8,
        _ => return None,
    };
    debug_assert_eq!(HOP_BY_HOP[i], *name);
    Some(i)
}

/// Connection and every header it names, and the fixed hop-by-hop set.
fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names finds which of the fixed set are there (most
    // messages carry none, or only Connection); only those are removed.
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = hop_by_hop_index(name) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    // Headers named by Connection (HOP_BY_HOP[0]); removed by their text, which
    // is looked up case-insensitively without allocating a HeaderName.
    if present & 1 != 0 {
        let mut values = headers.get_all(header::CONNECTION).iter();
        let first = values.next().cloned();
        let more: Vec<HeaderValue> = values.cloned().collect();
        for value in first.iter().chain(&more) {
            if let Ok(text) = value.to_str() {
                for name in text.split(',') {
                    headers.remove(name.trim());
                }
            }
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

fn set_failover_header(headers: &mut HeaderMap, upstream: &Upstream, decision: &Decision) {
    match decision.failover_from {
        Some(from) => {
            if let Ok(v) = HeaderValue::from_str(&upstream.backends[from].name) {
                headers.insert(FAILOVER_FROM, v);
            }
        }
        None => {
            headers.remove(FAILOVER_FROM);
        }
    }
}

/// The backend's response for the client: hop-by-hop headers removed and the
/// affinity cookie set when the pin is new or changed.
fn rewrite_response(
    resp: Response<StreamedBody>,
    upstream: &Upstream,
    decision: &Decision,
    conn: &ConnInfo,
) -> Response<ProxyBody> {
    let mut resp = resp.map(ProxyBody::Streamed);
    // A body framed by Transfer-Encoding (which hyper has decoded) is not framed
    // by a Content-Length sent along with it (RFC 9112, section 6.3).
    if resp.headers().contains_key(header::TRANSFER_ENCODING) {
        resp.headers_mut().remove(header::CONTENT_LENGTH);
    }
    remove_hop_by_hop(resp.headers_mut());
    if decision.set_cookie {
        if let Some(codec) = &upstream.cookie {
            let value = codec.encode(decision.backend);
            if let Ok(v) = HeaderValue::from_str(&set_cookie(upstream, &value, conn.tls)) {
                resp.headers_mut().append(header::SET_COOKIE, v);
            }
        }
    }
    resp
}

/// The Set-Cookie value for a pin, with the attributes of `[upstream.NAME.cookie]`.
pub(crate) fn set_cookie(upstream: &Upstream, value: &str, tls: bool) -> String {
    let c = &upstream.config.cookie;
    let mut cookie = cookie::Cookie::build((c.name.as_str(), value))
        .path(c.path.as_str())
        .http_only(c.http_only)
        .secure(match c.secure {
            Secure::Always => true,
            Secure::Never => false,
            Secure::Auto => tls,
        })
        .same_site(match c.same_site {
            SameSite::Lax => cookie::SameSite::Lax,
            SameSite::Strict => cookie::SameSite::Strict,
            SameSite::None => cookie::SameSite::None,
        });
    if !c.max_age.is_zero() {
        cookie = cookie.max_age(cookie::time::Duration::seconds(c.max_age.as_secs() as i64));
    }
    cookie.build().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_index_matches_the_set() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name), Some(i));
        }
        for other in [
            header::HOST,
            header::COOKIE,
            header::CONTENT_LENGTH,
            FAILOVER_FROM,
        ] {
            assert_eq!(hop_by_hop_index(&other), None);
        }
    }

    #[test]
    fn push_ip_writes_what_display_writes() {
        let ips = [
            "0.0.0.0",
            "1.2.3.4",
            "9.10.99.100",
            "127.0.0.1",
            "255.255.255.255",
            "::1",
            "2001:db8::7",
            "::ffff:10.0.0.1",
        ];
        for text in ips {
            let ip: std::net::IpAddr = text.parse().unwrap();
            let mut out = String::from("x, ");
            push_ip(&mut out, ip);
            assert_eq!(out, format!("x, {ip}"));
        }
    }
}
