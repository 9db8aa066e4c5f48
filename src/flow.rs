//! The one request flow of SPEC sections 3 and 4, for every protocol: route,
//! read the pin, choose the backend, the attempts and their retry rules, the
//! header policy ([`policy`]), the Set-Cookie that re-pins, and recording
//! (metrics and the access log).
//!
//! The engines (`crate::h1` for every HTTP/1.x connection, `crate::h2` for
//! HTTP/2) only move bytes: each reads a request head, asks `Proxy::decide`
//! where it goes, sends it through `Attempts`, writes the response with the
//! header policy, and calls `Proxy::record`. limpet's own answers are
//! `ProxyError`s, whose status and body are decided in `crate::error`.

pub mod policy;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::access_log::{AccessRecord, RequestId};
use crate::affinity::HeaderLookup;
use crate::backend::Health;
use crate::config::{Failover, SameSite, Secure};
use crate::error::{BoxError, ProxyError};
use crate::metrics::{code_class, Metrics};
use crate::state::{Decision, Ignored, Outcome, SharedState, Snapshot, Upstream};

/// What the listener knows about the connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client: the socket's peer, or the source a PROXY header carried.
    pub peer: SocketAddr,
    /// The address the client connected to, when known without asking the
    /// socket: the destination a PROXY header carried (or, for HTTP/2, the
    /// socket's, asked once). Only `send_proxy` needs it: a plain connection
    /// asks its socket then ([`ConnInfo::local_addr`]) rather than at every
    /// accept, and keeps a pointer rather than 32 bytes while idle.
    pub local: Option<Box<SocketAddr>>,
    pub tls: bool,
}

impl ConnInfo {
    /// The address the client connected to (what `send_proxy` passes on):
    /// [`ConnInfo::local`], else `socket()` (the client socket's local
    /// address), else the peer's.
    pub fn local_addr(&self, socket: impl FnOnce() -> std::io::Result<SocketAddr>) -> SocketAddr {
        match &self.local {
            Some(local) => **local,
            None => socket().unwrap_or(self.peer),
        }
    }
}

/// The proxy shared by every listener and connection: the live configuration
/// and the metrics.
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
    /// The pinned backend the request failed over from, if it did (of its
    /// last attempt: the access log's `failover_from`).
    pub(crate) failover_from: Option<usize>,
    /// The pin the request carried was not used (`limpet_pins_ignored_total`).
    pub(crate) ignored: Option<Ignored>,
    /// The backend named a replica that is not another backend of its
    /// upstream (`limpet_session_replica_invalid_total`).
    pub(crate) replica_invalid: bool,
    /// Set by [`Proxy::decide`] while the access log is on: logged, and
    /// forwarded as `x-request-id`.
    pub(crate) request_id: RequestId,
}

impl Trace {
    /// Notes where the request went (its first choice, then where it was answered).
    pub(crate) fn decided(&mut self, decision: &Decision) {
        self.outcome = Some(decision.outcome);
        self.failover_from = decision.failover_from;
    }

    /// Notes an attempt on `decision`'s backend.
    pub(crate) fn attempt(&mut self, decision: &Decision) {
        self.backend = Some(decision.backend);
        self.failover_from = decision.failover_from;
    }

    /// The `x-request-id` to forward in place of the client's, if any.
    pub(crate) fn forwarded_id(&self) -> Option<&str> {
        self.request_id.is_set().then(|| self.request_id.as_str())
    }
}

/// What the access log says of a request beyond the trace and its status.
pub(crate) struct Access<'a> {
    pub(crate) method: &'a str,
    pub(crate) path: &'a str,
    pub(crate) client: IpAddr,
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
}

/// What routing needs of a request head, whatever its protocol.
pub(crate) struct RequestView<'a, H: HeaderLookup> {
    /// The authority of an absolute-form target or HTTP/2 `:authority`, else
    /// the Host field: what the request is routed and forwarded by.
    pub host: Option<&'a str>,
    /// The path without the query.
    pub path: &'a str,
    /// The origin-form target (path and query) the backend gets.
    pub target: &'a str,
    pub headers: &'a H,
    pub peer: IpAddr,
    /// The request came over TLS.
    pub tls: bool,
}

/// The path routes match against: the target without its query; `/` for
/// `*` (`OPTIONS *`) and an empty one. One rule for both engines.
pub(crate) fn routed_path(target: &str) -> &str {
    match target.split_once('?').map_or(target, |(path, _)| path) {
        "" | "*" => "/",
        path => path,
    }
}

/// Where a request goes, as [`Proxy::decide`] found it.
pub(crate) struct Chosen<'s> {
    pub(crate) upstream: &'s Upstream,
    pub(crate) decision: Decision,
    /// The `Strict-Transport-Security` value for the response: a TLS request
    /// on a route with `hsts`.
    pub(crate) hsts: Option<&'s str>,
}

impl Proxy {
    pub fn new(state: SharedState, metrics: Metrics) -> Self {
        Proxy { state, metrics }
    }

    /// SPEC section 3: the upstream of the request and the backend it goes to
    /// first (pinned, its replica chain, or a new pick); 404 and 503 here, and
    /// the 308 of a route with `redirect_https` for a plain request.
    pub(crate) fn decide<'s, H: HeaderLookup>(
        snap: &'s Snapshot,
        request: &RequestView<'_, H>,
        trace: &mut Trace,
    ) -> Result<Chosen<'s>, ProxyError> {
        if crate::access_log::enabled() {
            let client_id = request.headers.values(policy::REQUEST_ID).next();
            trace.request_id = RequestId::from_client(client_id);
        }
        let routed = snap
            .router
            .find(request.host, request.path)
            .ok_or(ProxyError::NoRoute)?;
        if routed.redirect_https && !request.tls {
            return Err(redirect_https(request));
        }
        let upstream = &snap.upstreams[routed.upstream];
        trace.upstream = Some(routed.upstream);
        let pin = upstream
            .read_pin(request.headers, request.path, request.peer)
            .unwrap_or_else(|ignored| {
                trace.ignored = Some(ignored);
                None
            });
        let decision = upstream.choose(pin);
        trace.decided(&decision);
        if decision.outcome == Outcome::Rejected {
            let reject = upstream.config.failover == Failover::Reject;
            let all_down = upstream
                .backends
                .iter()
                .all(|b| b.state.health() == Health::Down);
            return Err(match (reject && pin.is_some(), all_down) {
                (true, _) => ProxyError::Rejected,
                (false, true) => ProxyError::AllDown,
                (false, false) => ProxyError::NoBackend,
            });
        }
        Ok(Chosen {
            upstream,
            decision,
            hsts: routed.hsts.filter(|_| request.tls),
        })
    }

    /// Writes a finished request's metrics and, when `access` is given, its
    /// access-log line.
    pub(crate) fn record(
        &self,
        snap: &Snapshot,
        trace: &Trace,
        status: u16,
        elapsed: Duration,
        access: Option<Access<'_>>,
    ) {
        self.record_metrics(snap, trace, status, elapsed);
        if let Some(access) = access {
            log_access(snap, trace, status, elapsed, &access);
        }
    }

    /// A request's metrics, written once its response head is known.
    pub(crate) fn record_metrics(
        &self,
        snap: &Snapshot,
        trace: &Trace,
        status: u16,
        elapsed: Duration,
    ) {
        let up = trace.upstream.map(|u| &snap.upstreams[u]);
        let upstream = up.map(|u| &*u.name).unwrap_or("");
        match (up, trace.backend) {
            (Some(u), Some(b)) => {
                let b = (b, &*u.backends[b].name);
                u.series
                    .requests(&self.metrics.requests, upstream, b, status)
                    .inc();
                u.series
                    .duration(&self.metrics.duration, upstream, b)
                    .observe(elapsed.as_secs_f64());
            }
            _ => self
                .metrics
                .requests
                .with_label_values(&[upstream, "", code_class(status)])
                .inc(),
        }
        if let (Some(u), Some(outcome)) = (up, trace.outcome) {
            u.series
                .affinity(&self.metrics.affinity, upstream, outcome)
                .inc();
            // A backend a reload removed has no counter left to count on.
            if let (Outcome::Failover | Outcome::Rebalanced, Some(from)) =
                (outcome, trace.failover_from.and_then(|f| u.backends.get(f)))
            {
                let failovers = &from.state.failovers;
                failovers.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        if let Some(ignored) = trace.ignored {
            self.metrics
                .pins_ignored
                .with_label_values(&[upstream, ignored.as_str()])
                .inc();
        }
        if trace.replica_invalid {
            self.metrics
                .session_replica_invalid
                .with_label_values(&[upstream])
                .inc();
        }
    }
}

/// A request's access-log line, written once its response has ended (its
/// body bytes counted); `elapsed` is to the response head.
pub(crate) fn log_access(
    snap: &Snapshot,
    trace: &Trace,
    status: u16,
    elapsed: Duration,
    access: &Access<'_>,
) {
    let up = trace.upstream.map(|u| &snap.upstreams[u]);
    // A failover may be from a backend a reload removed: `name_of` knows it.
    let name = |index: Option<usize>| match (up, index) {
        (Some(u), Some(b)) => u.name_of(b),
        _ => "",
    };
    crate::access_log::write(&AccessRecord {
        method: access.method,
        path: access.path,
        status,
        upstream: up.map(|u| &*u.name).unwrap_or(""),
        backend: name(trace.backend),
        affinity: trace.outcome.map(Outcome::as_str).unwrap_or("-"),
        duration_us: elapsed.as_micros() as u64,
        request_id: trace.request_id.as_str(),
        client: access.client,
        bytes_in: access.bytes_in,
        bytes_out: access.bytes_out,
        failover_from: name(trace.failover_from),
    });
}

/// The 308 to the request's URL over https: the same host as nginx's
/// `$host` has it (without a port: the https listener's port is the default
/// one; lowercase, without a trailing dot; an IPv6 address in its brackets),
/// path and query.
fn redirect_https<H: HeaderLookup>(request: &RequestView<'_, H>) -> ProxyError {
    let Some(host) = request.host.map(crate::uri::bare_host) else {
        return ProxyError::BadRequest("no host to redirect to");
    };
    let host = host.to_ascii_lowercase();
    let target = match request.target {
        t if t.starts_with('/') => t,
        _ => "/",
    };
    match host.contains(':') {
        true => ProxyError::RedirectHttps(format!("https://[{host}]{target}")),
        false => ProxyError::RedirectHttps(format!("https://{host}{target}")),
    }
}

/// The methods whose request may be sent twice (RFC 9110, section 9.2.2).
pub(crate) fn is_idempotent(method: &[u8]) -> bool {
    matches!(method, b"GET" | b"HEAD" | b"OPTIONS" | b"PUT" | b"DELETE")
}

/// The Set-Cookie value to send with the response (`affinity = "cookie"`):
/// when the decision re-pins the client, or when the backend names a replica
/// for the session (`x-session-replica`, the value `said`) other than the one
/// the cookie carries. A name that is not another backend of the upstream is
/// ignored and counted in `trace`.
pub(crate) fn pin_cookie(
    upstream: &Upstream,
    decision: &Decision,
    said: Option<&[u8]>,
    tls: bool,
    trace: &mut Trace,
) -> Option<String> {
    let codec = upstream.cookie.as_ref()?;
    let mut session = decision.session;
    let mut changed = decision.set_cookie;
    if let Some(name) = said {
        match upstream.learned_replica(name, decision.backend) {
            Some(replica) if session.replica != Some(replica) => {
                session.replica = Some(replica);
                changed = true;
            }
            Some(_) => {}
            None => trace.replica_invalid = true,
        }
    }
    let value = changed.then(|| codec.encode(decision.backend, &session))?;
    Some(set_cookie(upstream, &value, session.created, tls))
}

/// The Set-Cookie value for a pin, with the attributes of `[upstream.NAME.cookie]`.
/// With `max_lifetime`, its Max-Age is the time left to the session created at
/// `created` (unix seconds).
pub(crate) fn set_cookie(upstream: &Upstream, value: &str, created: u32, tls: bool) -> String {
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
    let max_age = if c.max_lifetime.is_zero() {
        c.max_age
    } else {
        let age = crate::affinity::unix_now().saturating_sub(created);
        c.max_lifetime
            .saturating_sub(Duration::from_secs(u64::from(age)))
            .max(Duration::from_secs(1))
    };
    if !max_age.is_zero() {
        cookie = cookie.max_age(cookie::time::Duration::seconds(max_age.as_secs() as i64));
    }
    cookie.build().to_string()
}

/// Why an attempt got no usable response from a backend.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Nothing of the request reached the backend (connect failed).
    NotSent(crate::pool::ConnectError),
    /// The connection closed (or was reset) before a single byte of a response:
    /// a pooled connection the backend had closed, or a backend that died.
    Closed(BoxError),
    /// The backend answered something that is not a usable response head.
    BadResponse(BoxError),
    /// The backend took the request (or the start of it) and then neither
    /// answered nor took more of it within its upstream's response timeout
    /// (`upstream_response`, or `[upstream.NAME.timeouts] response`).
    Timeout(Duration),
    /// The client's own request body broke (malformed, cut short): its fault,
    /// not the backend's.
    ClientBody(BoxError),
    /// The client's request body stopped coming for `client_idle`: its
    /// fault too, answered 408 as a head too slow is (nginx's
    /// `client_body_timeout`).
    ClientStalled,
}

/// What to do after an attempt failed.
enum Retry {
    /// Send it again to the same backend, on a new connection.
    SameBackend,
    /// Send it to this target.
    Next(Decision),
}

/// The retry rules of SPEC section 4 for one request.
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

    /// The attempt on `target`'s backend failed: moves `target` to where the
    /// request goes next (`fresh`: on a new connection, not a pooled one), or
    /// says what to answer. `reused`: the failed connection came from the pool.
    pub(crate) fn retry(
        &mut self,
        target: &mut Decision,
        fresh: &mut bool,
        failure: Failure,
        reused: bool,
    ) -> Result<(), ProxyError> {
        match self.after(*target, failure, reused)? {
            Retry::SameBackend => *fresh = true,
            Retry::Next(next) => {
                *target = next;
                *fresh = false;
            }
        }
        Ok(())
    }

    fn after(
        &mut self,
        failed: Decision,
        failure: Failure,
        reused: bool,
    ) -> Result<Retry, ProxyError> {
        match failure {
            Failure::NotSent(cause) => {
                // Out of file descriptors, say: limpet's trouble, not the
                // backend's (all backends went down under an fd shortage,
                // and every request got 503 until health checks passed).
                if !cause.is_local() {
                    crate::health::passive_failure(self.upstream, failed.backend, &cause);
                }
                if self.retries_left == 0 {
                    return Err(ProxyError::Unreachable(cause));
                }
                // No target left after a failed TLS handshake: say so (502)
                // rather than that no backend was available.
                match self.next(failed) {
                    Err(ProxyError::NoBackend) if cause.is_tls() => {
                        Err(ProxyError::Unreachable(cause))
                    }
                    next => next.map(Retry::Next),
                }
            }
            Failure::Closed(cause) => self.closed(failed, cause, reused),
            // The backend took the request and answered garbage: it is sick,
            // and the request is not sent again (it may have had effects).
            Failure::BadResponse(cause) => {
                crate::health::passive_failure(self.upstream, failed.backend, &cause);
                Err(ProxyError::BadGateway(cause))
            }
            Failure::Timeout(after) => self.timed_out(failed, after),
            Failure::ClientBody(cause) => Err(ProxyError::BadBody(cause)),
            Failure::ClientStalled => Err(ProxyError::BodyTimeout),
        }
    }

    /// The request was (maybe partly) sent and the connection closed before a
    /// byte of a response.
    fn closed(
        &mut self,
        failed: Decision,
        cause: BoxError,
        reused: bool,
    ) -> Result<Retry, ProxyError> {
        // On a pooled connection the failure may be the backend closing an
        // idle connection as the request went: no fault of its own. Not so
        // for a request that is not replayable: it goes only on a connection
        // used within SAFE_REUSE, and is not sent again to find out (a
        // backend resetting every POST stayed up under steady traffic).
        if !reused || !self.replayable {
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

    /// The backend went silent with the request (stopped, hung, overloaded). It
    /// counts against the backend whatever the request; a replayable request is
    /// sent to the next target within `retries` (HAProxy's `retry-on
    /// response-timeout` with `redispatch`), others get 504: the backend may
    /// still act on them.
    fn timed_out(&mut self, failed: Decision, after: Duration) -> Result<Retry, ProxyError> {
        let timeout = ProxyError::Timeout(after);
        crate::health::passive_failure(self.upstream, failed.backend, &timeout);
        if !self.replayable || self.retries_left == 0 {
            return Err(timeout);
        }
        // No target left: the answer is still about the timeout.
        self.next(failed).map(Retry::Next).map_err(|_| timeout)
    }

    fn next(&mut self, failed: Decision) -> Result<Decision, ProxyError> {
        self.retries_left -= 1;
        self.count_retry(failed.backend);
        self.tried.push(failed.backend);
        let next = self.upstream.after_failure(failed, &self.tried);
        if next.outcome == Outcome::Rejected {
            // A pinned request its backend failed, under `failover =
            // "reject"`: the policy's answer, as when the backend is known
            // down before the request (not "no backend available").
            let rejected =
                self.upstream.config.failover == Failover::Reject && next.failover_from.is_some();
            return Err(match rejected {
                true => ProxyError::Rejected,
                false => ProxyError::NoBackend,
            });
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
