//! The admin listener (SPEC section 6): `/healthz`, `/metrics`, `/status`, operator
//! actions, `POST /reload` and the live dashboard at `/` (one self-contained
//! HTML page, `admin/dashboard.html`, that polls `/status` and posts the operator
//! actions). Never served on a public listener.
//!
//! Reads go straight to the shared snapshot and the backends' atomics; operator
//! actions flip an atomic in the backend's shared state (which a reload carries
//! over); a drain may carry a `deadline` (`?deadline=30m` or `{"deadline":
//! "30m"}`). `POST /reload` goes through the same [`Reloader`] as SIGHUP. With
//! `admin.token` set, every POST needs `Authorization: Bearer <token>`.

use std::convert::Infallible;
use std::time::{Duration, SystemTime};

use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::backend::{Backend, Health, Operator};

/// The body of every admin response: a whole text or JSON document.
type Body = http_body_util::Full<bytes::Bytes>;
use crate::metrics::Metrics;
use crate::reload::Reloader;
use crate::state::{SharedState, Snapshot, Upstream};

/// What the admin endpoints read and act on.
#[derive(Debug, Clone)]
pub struct Admin {
    pub state: SharedState,
    pub metrics: Metrics,
    pub reloader: Reloader,
}

/// The endpoints, as parsed from the request path.
#[derive(Debug, PartialEq, Eq)]
enum Endpoint<'a> {
    Dashboard,
    Healthz,
    Metrics,
    Status,
    Reload,
    /// `POST /upstreams/{u}/backends/{b}/{drain|maintenance|ready}`
    Operator {
        upstream: &'a str,
        backend: &'a str,
        set: Operator,
    },
}

impl<'a> Endpoint<'a> {
    fn parse(path: &'a str) -> Option<Endpoint<'a>> {
        match path {
            "/" => return Some(Endpoint::Dashboard),
            "/healthz" => return Some(Endpoint::Healthz),
            "/metrics" => return Some(Endpoint::Metrics),
            "/status" => return Some(Endpoint::Status),
            "/reload" => return Some(Endpoint::Reload),
            _ => {}
        }
        let mut parts = path.strip_prefix("/upstreams/")?.split('/');
        let upstream = parts.next().filter(|s| !s.is_empty())?;
        if parts.next()? != "backends" {
            return None;
        }
        let backend = parts.next().filter(|s| !s.is_empty())?;
        let set = match parts.next()? {
            "drain" => Operator::Draining,
            "maintenance" => Operator::Maintenance,
            "ready" => Operator::Ready,
            _ => return None,
        };
        if parts.next().is_some() {
            return None;
        }
        Some(Endpoint::Operator {
            upstream,
            backend,
            set,
        })
    }

    /// Reads answer GET (and HEAD); actions answer POST.
    fn is_action(&self) -> bool {
        matches!(self, Endpoint::Reload | Endpoint::Operator { .. })
    }
}

impl Admin {
    /// Serves the admin API on `listener` until shutdown.
    pub async fn serve(self, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
        loop {
            let (stream, _) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin: accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = crate::shutdown::stopped(&mut shutdown) => return,
            };
            let admin = self.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.handle(req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let Some(endpoint) = Endpoint::parse(req.uri().path()) else {
            return plain(StatusCode::NOT_FOUND, "404 not found\n");
        };
        let method = req.method();
        if endpoint.is_action() {
            if method != Method::POST {
                return method_not_allowed("POST");
            }
            if !same_origin(&req) {
                return plain(StatusCode::FORBIDDEN, "403 cross-origin request refused\n");
            }
            if !self.authorized(req.headers()) {
                let mut resp = plain(StatusCode::UNAUTHORIZED, "401 unauthorized\n");
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"limpet admin\""),
                );
                return resp;
            }
        } else if method != Method::GET && method != Method::HEAD {
            return method_not_allowed("GET, HEAD");
        }
        match endpoint {
            Endpoint::Dashboard => dashboard(),
            Endpoint::Healthz => plain(StatusCode::OK, "ok\n"),
            Endpoint::Metrics => {
                let text = self.metrics.scrape(&self.state.load_full());
                let mut resp = Response::new(Body::from(text));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                resp
            }
            Endpoint::Status => json(StatusCode::OK, &status(&self.state.load_full())),
            Endpoint::Reload => self.reload().await,
            Endpoint::Operator {
                upstream,
                backend,
                set,
            } => {
                let (upstream, backend) = (upstream.to_string(), backend.to_string());
                let query = req.uri().query().map(str::to_string);
                match deadline(set, query.as_deref(), req.into_body()).await {
                    Ok(deadline) => self.set_operator(&upstream, &backend, set, deadline),
                    Err(why) => text(StatusCode::BAD_REQUEST, format!("400 {why}\n")),
                }
            }
        }
    }

    /// True when no token is configured or the request carries it.
    fn authorized(&self, headers: &HeaderMap) -> bool {
        let snap = self.state.load();
        let Some(token) = snap.config.admin.as_ref().and_then(|a| a.token.as_deref()) else {
            return true;
        };
        headers
            .get_all(header::AUTHORIZATION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| {
                let (scheme, credentials) = v.trim().split_once(' ')?;
                scheme
                    .eq_ignore_ascii_case("bearer")
                    .then(|| credentials.trim())
            })
            .any(|given| constant_time_eq(given.as_bytes(), token.as_bytes()))
    }

    /// `POST /reload`: the same path as SIGHUP.
    async fn reload(&self) -> Response<Body> {
        let reloader = self.reloader.clone();
        // Reading the file and resolving host names block.
        let result = match tokio::task::spawn_blocking(move || reloader.reload()).await {
            Ok(result) => result,
            Err(e) => {
                tracing::error!(error = %e, "admin: reload task failed");
                return plain(StatusCode::INTERNAL_SERVER_ERROR, "500 reload failed\n");
            }
        };
        match result {
            // The Reloader logs the success itself.
            Ok(config) => {
                let path = config
                    .path
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                text(
                    StatusCode::OK,
                    format!(
                        "{path}: reloaded ({})\n{}",
                        config.checksum,
                        config.summary()
                    ),
                )
            }
            Err(e) => {
                tracing::error!(
                    "POST /reload: reload failed, the old configuration keeps serving: {e}"
                );
                text(StatusCode::BAD_REQUEST, format!("{e}\n"))
            }
        }
    }

    /// `POST /upstreams/{u}/backends/{b}/{drain|maintenance|ready}`; a drain
    /// with a deadline fails its pinned clients over once it passes.
    fn set_operator(
        &self,
        upstream: &str,
        backend: &str,
        set: Operator,
        deadline: Option<Duration>,
    ) -> Response<Body> {
        let snap = self.state.load_full();
        let Some(up) = snap.upstream(upstream) else {
            return plain(StatusCode::NOT_FOUND, "404 no such upstream\n");
        };
        let Some(b) = up.backend_index(backend).map(|i| &up.backends[i]) else {
            return plain(StatusCode::NOT_FOUND, "404 no such backend\n");
        };
        let before = b.state.operator();
        match deadline {
            Some(after) => b.state.drain_until(after),
            None => b.state.set_operator(set),
        }
        let answer = ActionAnswer {
            summary: summary(b),
            backend: backend_status(up, b),
        };
        tracing::warn!(
            upstream = %up.name,
            backend = %b.name,
            "backend set to {} by the admin API (was {}; now {}): {}",
            operator_str(set),
            operator_str(before),
            b.state.state().as_str(),
            answer.summary
        );
        json(StatusCode::OK, &answer)
    }
}

/// The longest drain deadline: longer ones are surely typos (and one past
/// the year 9999 could not even be written as a date in `/status`).
const MAX_DRAIN: Duration = Duration::from_secs(365 * 24 * 3600);

/// A drain's deadline from the query (`?deadline=30m`) or the JSON body
/// (`{"deadline": "30m"}`); an error says why the request is bad.
async fn deadline(
    set: Operator,
    query: Option<&str>,
    body: Incoming,
) -> Result<Option<Duration>, String> {
    /// More than any deadline document needs.
    const MAX_BODY: usize = 4096;
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Given {
        deadline: Option<String>,
    }
    let from_query = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter_map(|pair| pair.strip_prefix("deadline="))
        .map(|v| v.replace("%20", " ").replace('+', " "))
        .next();
    let bytes = http_body_util::Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|e| format!("cannot read the request body: {e}"))?
        .to_bytes();
    let from_body = match bytes.iter().all(u8::is_ascii_whitespace) {
        true => None,
        false => {
            serde_json::from_slice::<Given>(&bytes)
                .map_err(|e| format!("the body is not {{\"deadline\": \"30m\"}}: {e}"))?
                .deadline
        }
    };
    let text = match (from_query, from_body) {
        (Some(_), Some(_)) => return Err("give the deadline once, in the query or the body".into()),
        (None, None) => return Ok(None),
        (Some(t), None) | (None, Some(t)) => t,
    };
    if set != Operator::Draining {
        return Err("a deadline applies only to drain".into());
    }
    let after = humantime::parse_duration(text.trim()).map_err(|e| {
        format!("deadline \"{text}\" is not a duration like \"90s\", \"30m\" or \"2h\" ({e})")
    })?;
    if after.is_zero() {
        return Err(
            "the deadline must be longer than 0s (maintenance fails clients over now)".into(),
        );
    }
    if after > MAX_DRAIN {
        return Err(format!("deadline \"{text}\" is longer than a year (365d)"));
    }
    Ok(Some(after))
}

/// The line an operator action answers and logs: `app3: draining until
/// 2026-11-21T20:30:00Z (30m left), ~42 active sessions`.
fn summary(b: &Backend) -> String {
    let state = match b.state.drain_deadline() {
        Some((at, left)) if left.is_zero() => {
            format!("draining, deadline {} passed", rfc3339(at))
        }
        Some((at, left)) => format!(
            "draining until {} ({} left)",
            rfc3339(at),
            humantime::format_duration(Duration::from_secs(left.as_secs()))
        ),
        None => b.state.state().as_str().to_string(),
    };
    format!(
        "{}: {state}, ~{} active sessions",
        b.name,
        b.state.active_sessions()
    )
}

/// The answer to an operator action: the backend's `/status` entry and a
/// one-line summary.
#[derive(Debug, Serialize)]
pub struct ActionAnswer {
    #[serde(flatten)]
    pub backend: BackendStatus,
    pub summary: String,
}

impl Admin {}

/// `GET /status`, shaped as SPEC section 6 shows.
#[derive(Debug, Serialize)]
pub struct Status {
    pub config: ConfigStatus,
    pub upstreams: Vec<UpstreamStatus>,
}

#[derive(Debug, Serialize)]
pub struct ConfigStatus {
    /// The file the running configuration came from (null when it came from text).
    pub path: Option<String>,
    pub loaded_at: String,
    pub checksum: String,
}

#[derive(Debug, Serialize)]
pub struct UpstreamStatus {
    pub name: String,
    pub affinity: &'static str,
    pub balance: &'static str,
    pub failover: &'static str,
    pub backends: Vec<BackendStatus>,
}

#[derive(Debug, Serialize)]
pub struct BackendStatus {
    pub name: String,
    /// As configured (a host name stays a host name).
    pub addr: String,
    /// `up`, `down`, `draining` or `maintenance`.
    pub state: &'static str,
    pub replica: Option<String>,
    pub weight: u32,
    pub in_flight: usize,
    pub requests: u64,
    /// Requests pinned to this backend that another backend answered.
    pub failovers: u64,
    pub last_check: Option<CheckStatus>,
    /// What the health checks say, whatever the operator set: `up` or `down`.
    pub health: &'static str,
    /// What the operator set: `ready`, `draining` or `maintenance`.
    pub operator: &'static str,
    /// The address limpet connects to now (`addr`, or what its DNS name last
    /// resolved to; `None` while the name resolves to nothing).
    pub resolved: Option<String>,
    /// Open upgraded connections (WebSocket); each also counts in `in_flight`.
    pub tunnels: usize,
    /// Estimated distinct sessions seen within the upstream's `session_window`.
    pub active_sessions: u64,
    /// A running drain's deadline, or null.
    pub drain: Option<DrainStatus>,
}

#[derive(Debug, Serialize)]
pub struct DrainStatus {
    /// When the pinned clients fail over (RFC 3339, UTC).
    pub deadline: String,
    /// Whole seconds left; 0 once the deadline has passed.
    pub left_s: u64,
}

#[derive(Debug, Serialize)]
pub struct CheckStatus {
    pub ok: bool,
    pub latency_ms: f64,
    pub at: String,
    /// Why the check failed (`status 500`, `timeout after 1s`, `connection refused`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The `/status` document of a snapshot.
pub fn status(snap: &Snapshot) -> Status {
    let config = &snap.config;
    Status {
        config: ConfigStatus {
            path: config.path.as_ref().map(|p| p.display().to_string()),
            loaded_at: rfc3339(snap.loaded_at),
            checksum: config.checksum.clone(),
        },
        upstreams: snap
            .upstreams
            .iter()
            .map(|up| UpstreamStatus {
                name: up.name.to_string(),
                affinity: up.config.affinity.as_str(),
                balance: up.config.balance.as_str(),
                failover: up.config.failover.as_str(),
                backends: up.backends.iter().map(|b| backend_status(up, b)).collect(),
            })
            .collect(),
    }
}

/// One backend's `/status` entry (also the answer to an operator action).
pub fn backend_status(up: &Upstream, b: &Backend) -> BackendStatus {
    use std::sync::atomic::Ordering::Relaxed;
    BackendStatus {
        name: b.name.to_string(),
        addr: b.addr_text.clone(),
        state: b.state.state().as_str(),
        replica: b.replica.map(|r| up.backends[r].name.to_string()),
        weight: b.weight,
        in_flight: b.state.in_flight.load(Relaxed),
        requests: b.state.requests.load(Relaxed),
        failovers: b.state.failovers.load(Relaxed),
        last_check: b.state.last_check().map(|c| CheckStatus {
            ok: c.ok,
            // Microsecond precision is plenty and keeps the JSON short.
            latency_ms: (c.latency.as_secs_f64() * 1_000_000.0).round() / 1000.0,
            at: rfc3339(c.at),
            error: c.reason,
        }),
        health: match b.state.health() {
            Health::Up => "up",
            Health::Down => "down",
        },
        operator: operator_str(b.state.operator()),
        resolved: b.state.pool.addr().map(|a| a.to_string()),
        tunnels: b.state.tunnels.load(Relaxed),
        active_sessions: b.state.active_sessions(),
        drain: b.state.drain_deadline().map(|(at, left)| DrainStatus {
            deadline: rfc3339(at),
            // Rounded up: "1 s left" until it has passed.
            left_s: left.as_millis().div_ceil(1000) as u64,
        }),
    }
}

fn operator_str(op: Operator) -> &'static str {
    match op {
        Operator::Ready => "ready",
        Operator::Draining => "draining",
        Operator::Maintenance => "maintenance",
    }
}

/// `2026-11-21T20:00:00Z`: RFC 3339, UTC, whole seconds.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The dashboard page: no external assets, so it works offline. Its inline
/// script and styles are allowed, nothing else is loaded, and no other site
/// may frame it (its buttons act).
fn dashboard() -> Response<Body> {
    const PAGE: &str = include_str!("admin/dashboard.html");
    let mut resp = Response::new(Body::from(PAGE));
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn json(status: StatusCode, value: &impl Serialize) -> Response<Body> {
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_else(|_| b"{}".to_vec());
    body.push(b'\n');
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// A short plain-text response.
fn plain(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut resp = plain(StatusCode::METHOD_NOT_ALLOWED, "405 method not allowed\n");
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    resp
}

/// Compares without an early exit, so the time taken does not reveal how much of
/// a guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether an operator action may come from where it comes from: a browser
/// says where the page that sent it was loaded from (`Origin`), and only the
/// admin listener's own pages (the dashboard) may act. A request without
/// `Origin` (curl, scripts) passes; the bearer token, when configured, is
/// checked after. Without this, any web page open in the operator's browser
/// could POST to a loopback admin listener that has no token.
fn same_origin(req: &Request<Incoming>) -> bool {
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return true;
    };
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()));
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, authority)| authority);
    matches!((origin_host, host), (Some(o), Some(h)) if o.eq_ignore_ascii_case(h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_endpoints() {
        assert_eq!(Endpoint::parse("/status"), Some(Endpoint::Status));
        assert_eq!(Endpoint::parse("/"), Some(Endpoint::Dashboard));
        assert_eq!(
            Endpoint::parse("/upstreams/shop/backends/app1/drain"),
            Some(Endpoint::Operator {
                upstream: "shop",
                backend: "app1",
                set: Operator::Draining
            })
        );
        assert_eq!(
            Endpoint::parse("/upstreams/shop/backends/app1/maintenance"),
            Some(Endpoint::Operator {
                upstream: "shop",
                backend: "app1",
                set: Operator::Maintenance
            })
        );
        assert_eq!(
            Endpoint::parse("/upstreams/shop/backends/app1/ready"),
            Some(Endpoint::Operator {
                upstream: "shop",
                backend: "app1",
                set: Operator::Ready
            })
        );
        for bad in [
            "",
            "//",
            "/index.html",
            "/status/",
            "/upstreams/shop/backends/app1",
            "/upstreams/shop/backends/app1/explode",
            "/upstreams/shop/backends/app1/drain/now",
            "/upstreams//backends/app1/drain",
            "/upstreams/shop/servers/app1/drain",
            "/upstreams/shop/backends//drain",
        ] {
            assert_eq!(Endpoint::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn rfc3339_is_utc_whole_seconds() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_795_291_200_250);
        assert_eq!(rfc3339(t), "2026-11-21T20:00:00Z");
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
