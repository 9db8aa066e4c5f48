//! The TOML file's shape (SPEC section 2): parsing with serde, defaults as named
//! constants, and validation into a [`Config`] whose every field is ready to use
//! (durations parsed, secrets read, listener addresses resolved; a backend
//! named by DNS is resolved by `crate::resolve` at run time).
//!
//! Every error is a [`ConfigError`] that names the file, the line and column of the
//! offending key, the key's dotted path and why it is wrong.

use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

mod locate;
#[cfg(test)]
mod proptests;
mod raw;
mod validate;

use validate::validate;

pub const DEFAULT_CLIENT_HEADER: Duration = Duration::from_secs(10);
pub const DEFAULT_CLIENT_IDLE: Duration = Duration::from_secs(60);
pub const DEFAULT_UPSTREAM_CONNECT: Duration = Duration::from_secs(2);
pub const DEFAULT_UPSTREAM_RESPONSE: Duration = Duration::from_secs(30);
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
pub const DEFAULT_MAX_HEADER_BYTES: usize = 65_536;
/// HAProxy's `tune.ssl.cachesize` default (rustls's own is 256).
pub const DEFAULT_SESSION_CACHE: usize = 20_000;
/// A cached session is a few hundred bytes: this bounds the cache near 300 MB.
pub const MAX_SESSION_CACHE: usize = 1_000_000;
/// hyper refuses a read buffer smaller than this, so it is the smallest head limit.
pub const MIN_MAX_HEADER_BYTES: usize = 8192;
/// The most worker threads `[runtime] worker_threads` may ask for.
pub const MAX_WORKER_THREADS: usize = 1024;
pub const DEFAULT_COOKIE_NAME: &str = "limpet";
pub const DEFAULT_HEALTH_PATH: &str = "/health";
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(2);
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_RISE: u32 = 2;
pub const DEFAULT_FALL: u32 = 3;
pub const DEFAULT_PASSIVE_FALL: u32 = 1;
pub const DEFAULT_SLOW_START: Duration = Duration::from_secs(10);
pub const DEFAULT_RETRIES: u32 = 1;
/// How often a backend named by DNS is resolved again.
pub const DEFAULT_RESOLVE_INTERVAL: Duration = Duration::from_secs(5);
/// How long a session counts as active after its last request.
pub const DEFAULT_SESSION_WINDOW: Duration = Duration::from_secs(600);
/// The shortest `session_window`: one second per sub-window of the sketch.
pub const MIN_SESSION_WINDOW: Duration = Duration::from_secs(8);
pub const MAX_WEIGHT: u32 = 10_000;

/// A configuration error, printed as `FILE:LINE:COL: message` (or `FILE: message`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    /// 1-based line and column of the offending key, when the error has a place.
    pub position: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, col)) => write!(f, "{}:{}:{}: {}", self.file, line, col, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// A validated configuration: what the running proxy is built from.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the file was read from (for `/status` and reload).
    pub path: Option<PathBuf>,
    /// `sha256:<hex>` of the file's bytes.
    pub checksum: String,
    pub listen: Listen,
    pub tls: Option<TlsConfig>,
    pub admin: Option<AdminConfig>,
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub runtime: Runtime,
    pub dns: DnsConfig,
    /// `[log]`: where the access log goes and how it is written.
    pub log: LogConfig,
    pub routes: Vec<Route>,
    /// In file order of first appearance is not kept by TOML tables; sorted by name.
    pub upstreams: Vec<UpstreamConfig>,
    /// Warnings found while validating (logged by the caller).
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Listen {
    pub http: Vec<SocketAddr>,
    pub https: Vec<SocketAddr>,
    /// The kernel's accept queue of each public listener: connections beyond
    /// `max_connections` wait there (default: the larger of `max_connections`
    /// and [`MIN_DEFAULT_BACKLOG`], as HAProxy defaults it to maxconn).
    pub backlog: u32,
    /// `[listen] proxy_protocol.from`: connections from these sources must
    /// start with a PROXY header (v1 or v2), whose address is then the
    /// client's. Empty: no connection is expected to send one.
    pub proxy_protocol_from: Vec<IpNet>,
}

/// The smallest default accept queue.
pub const MIN_DEFAULT_BACKLOG: u32 = 1024;

#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub certs: Vec<CertPair>,
    /// The certificates and keys, read and checked at load (and at every reload).
    pub keys: Vec<std::sync::Arc<rustls::sign::CertifiedKey>>,
    /// `session_tickets`: resumption by stateless tickets (TLS 1.3 and 1.2),
    /// sealed with a key of this process.
    pub session_tickets: bool,
    /// `session_cache`: how many sessions the server-side cache holds
    /// (resumption by session id, and TLS 1.3 without tickets); 0: none.
    pub session_cache: usize,
}

#[derive(Debug, Clone)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `[dns]`: how backends named by DNS are resolved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DnsConfig {
    /// `server`: ask this DNS server (UDP, TCP when an answer is truncated)
    /// instead of the system resolver (getaddrinfo: /etc/hosts, resolv.conf).
    pub server: Option<SocketAddr>,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub token: Option<String>,
}

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub client_header: Duration,
    pub client_idle: Duration,
    pub upstream_connect: Duration,
    pub upstream_response: Duration,
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub max_header_bytes: usize,
}

#[derive(Debug, Clone, Copy)]
pub struct Runtime {
    /// 0 = one per CPU.
    pub worker_threads: usize,
}

/// `[log]`: the access log's destination and format (`crate::access_log`
/// applies it at start and at every reload).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogConfig {
    pub access: AccessDestination,
    /// `None`: the format of limpet's other logs (`--log-format`).
    pub format: Option<LogFormat>,
}

/// `[log] access`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AccessDestination {
    /// No `access` key: stderr, on when `RUST_LOG` enables `limpet::access`
    /// at `info` (what limpet did before `[log]` existed).
    #[default]
    Default,
    Off,
    /// stderr, whatever `RUST_LOG` says.
    Stderr,
    /// A file opened in append mode, reopened on SIGUSR1.
    File(PathBuf),
}

/// How an access-log line is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// `TIMESTAMP  INFO limpet::access: key=value ...`
    #[default]
    Text,
    /// One JSON object per line, keyed as tracing-subscriber's JSON format.
    Json,
}

#[derive(Debug, Clone)]
pub struct Route {
    /// Lower-cased; `*.example.com` for a wildcard.
    pub host: Option<String>,
    pub path_prefix: Option<String>,
    pub upstream: String,
    /// Plain-HTTP requests get a 308 to the same URL over https.
    pub redirect_https: bool,
    /// The `Strict-Transport-Security` value for responses over TLS.
    pub hsts: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Affinity {
    Cookie,
    IpHash,
    AppCookie,
    None,
}

impl Affinity {
    pub fn as_str(self) -> &'static str {
        match self {
            Affinity::Cookie => "cookie",
            Affinity::IpHash => "ip-hash",
            Affinity::AppCookie => "app-cookie",
            Affinity::None => "none",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    LeastRequests,
    RoundRobin,
    Random,
    /// The fewest active sessions per unit of weight; ties as least-requests.
    LeastSessions,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Failover {
    Replica,
    Rebalance,
    Reject,
}

impl Balance {
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::LeastRequests => "least-requests",
            Balance::RoundRobin => "round-robin",
            Balance::Random => "random",
            Balance::LeastSessions => "least-sessions",
        }
    }
}

impl Failover {
    pub fn as_str(self) -> &'static str {
        match self {
            Failover::Replica => "replica",
            Failover::Rebalance => "rebalance",
            Failover::Reject => "reject",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SameSite {
    Lax,
    Strict,
    None,
}

/// `send_proxy` of an upstream or a backend: what limpet puts in front of
/// each connection to the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SendProxy {
    /// Nothing (the default; on a backend, overrides its upstream's `v2`).
    Off,
    /// A PROXY protocol version 2 header with the client's address.
    V2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secure {
    Always,
    Never,
    /// Secure when the request came over TLS.
    Auto,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    pub affinity: Affinity,
    pub balance: Balance,
    pub failover: Failover,
    pub retries: u32,
    /// A session counts as active this long after its last request.
    pub session_window: Duration,
    pub cookie: CookieConfig,
    pub ip_hash: IpHashConfig,
    pub app_cookie: AppCookieConfig,
    pub health: HealthConfig,
    /// `[upstream.NAME.timeouts]`: what overrides the global `[timeouts]` for
    /// requests to this upstream's backends.
    pub timeouts: TimeoutOverrides,
    /// `[upstream.NAME.tls]` with `enabled = true`: TLS to the backends.
    pub tls: Option<BackendTls>,
    /// How often backends named by DNS are resolved again.
    pub resolve_interval: Duration,
    pub backends: Vec<BackendConfig>,
}

/// How limpet speaks TLS to an upstream's backends (`[upstream.NAME.tls]`).
#[derive(Debug, Clone)]
pub struct BackendTls {
    /// The name sent as SNI and verified in every backend's certificate;
    /// `None`: each backend's own host (see `crate::tls::backend_name`).
    pub sni: Option<String>,
    /// The CA certificates backends' certificates must chain to; `None`: the
    /// compiled-in webpki roots.
    pub ca: Option<PathBuf>,
    /// `false`: any certificate is accepted (warned about at load).
    pub verify: bool,
    /// The client certificate and key presented to backends that ask (mTLS).
    pub client_cert: Option<CertPair>,
    /// Built from the files above at load and at every reload; pooled
    /// connections made with another configuration are not reused.
    pub client: std::sync::Arc<rustls::ClientConfig>,
}

/// An upstream's own `connect` and `response` timeouts; `None` keeps the global
/// `upstream_connect` / `upstream_response` (resolved into
/// `crate::state::BackendTimeouts` when a snapshot is built).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimeoutOverrides {
    pub connect: Option<Duration>,
    pub response: Option<Duration>,
    /// How long an idle connection to a backend is kept for reuse (default
    /// `crate::pool::DEFAULT_KEEPALIVE`).
    pub keepalive: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct CookieConfig {
    pub name: String,
    /// `None`: no secret configured; the proxy generates one per process.
    pub secret: Option<Vec<u8>>,
    pub previous_secrets: Vec<Vec<u8>>,
    pub path: String,
    /// Zero means a browser-session cookie.
    pub max_age: Duration,
    /// A pin created longer ago is no pin (zero: no limit). The cookie's
    /// Max-Age is then the time the pin has left.
    pub max_lifetime: Duration,
    /// A pin not re-issued for longer is no pin (zero: no limit); a pin older
    /// than half of it is re-issued.
    pub max_idle: Duration,
    pub secure: Secure,
    pub http_only: bool,
    pub same_site: SameSite,
}

#[derive(Debug, Clone, Default)]
pub struct IpHashConfig {
    pub trusted_proxies: Vec<IpNet>,
}

#[derive(Debug, Clone)]
pub struct AppCookieConfig {
    pub name: String,
    pub separator: String,
    /// Set for WebLogic-style ids, `id!primary!secondary`: the text after the
    /// first `separator` is the primary route, then this, then the secondary.
    pub secondary_separator: Option<String>,
}

#[derive(Debug, Clone)]
pub struct HealthConfig {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    /// Inclusive status ranges a passing check may answer with.
    pub expect: Vec<(u16, u16)>,
    pub passive_fall: u32,
    pub slow_start: Duration,
}

#[derive(Debug, Clone)]
pub struct BackendConfig {
    pub name: String,
    /// As written in the file (shown in `/status`).
    pub addr_text: String,
    pub addr: BackendAddr,
    pub replica: Option<String>,
    pub weight: u32,
    pub route: String,
    /// Each connection to this backend starts with a PROXY v2 header (the
    /// backend's `send_proxy`, else its upstream's); such connections are not
    /// pooled.
    pub send_proxy: bool,
}

impl BackendTls {
    /// ` tls=...` for the summary line of its upstream.
    fn summary(&self) -> String {
        let roots = match (&self.ca, self.verify) {
            (_, false) => "verify=off".to_string(),
            (Some(ca), true) => format!("ca={}", ca.display()),
            (None, true) => "ca=webpki-roots".to_string(),
        };
        let sni = self.sni.as_deref().unwrap_or("backend-host");
        let mtls = match self.client_cert {
            Some(_) => " client-cert",
            None => "",
        };
        format!(" tls({roots} sni={sni}{mtls})")
    }
}

/// Where a backend is: an IP address, or a DNS name resolved at run time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendAddr {
    /// Used as is: no resolver work.
    Ip(SocketAddr),
    /// Resolved at start and every `resolve_interval` (see `crate::resolve`).
    Name { host: String, port: u16 },
}

impl BackendAddr {
    /// The fixed address of an IP backend; `None` for a name.
    pub fn ip(&self) -> Option<SocketAddr> {
        match self {
            BackendAddr::Ip(addr) => Some(*addr),
            BackendAddr::Name { .. } => None,
        }
    }
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            position: None,
            message: format!("cannot read the file: {e}"),
        })?;
        let mut config = Config::parse(&text, &file)?;
        config.path = Some(path.to_path_buf());
        Ok(config)
    }

    /// Parses and validates TOML text; `file` names it in error messages.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let located = |span: Option<Range<usize>>, key: Option<String>, message: String| {
            let position = span.map(|s| locate::line_col(text, s.start));
            let message = match key {
                Some(key) => format!("{key}: {message}"),
                None => message,
            };
            ConfigError {
                file: file.to_string(),
                position,
                message,
            }
        };
        let raw: raw::File = toml::from_str(text).map_err(|e| {
            let span = e.span();
            // A document too broken for the key finder (an integer past 64
            // bits) still names the key its line sets.
            let key = span.as_ref().and_then(|s| {
                locate::key_at(text, s.start).or_else(|| locate::key_on_line(text, s.start))
            });
            // toml's messages may span lines ("invalid array\nexpected `]`"): keep
            // the error on one line. Some have no words at all (a lone CR).
            let message = match e.message().trim() {
                "" => "invalid TOML".to_string(),
                m => m.lines().collect::<Vec<_>>().join(": "),
            };
            located(span, key, message)
        })?;
        validate(raw, text).map_err(|e| {
            let span = locate::span_of(text, &e.key);
            located(span, Some(e.key), e.message)
        })
    }

    pub fn upstream(&self, name: &str) -> Option<&UpstreamConfig> {
        self.upstreams.iter().find(|u| u.name == name)
    }

    /// A one-line-per-item summary, printed by `limpet check` and `POST /reload`.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let backends: usize = self.upstreams.iter().map(|u| u.backends.len()).sum();
        let _ = writeln!(
            out,
            "{} route(s), {} upstream(s), {} backend(s)",
            self.routes.len(),
            self.upstreams.len(),
            backends
        );
        for route in &self.routes {
            let _ = writeln!(
                out,
                "route host={} path_prefix={} -> {}",
                route.host.as_deref().unwrap_or("*"),
                route.path_prefix.as_deref().unwrap_or("/"),
                route.upstream
            );
        }
        for up in &self.upstreams {
            let _ = writeln!(
                out,
                "upstream {} affinity={} balance={} failover={} health={} every {}{}",
                up.name,
                up.affinity.as_str(),
                up.balance.as_str(),
                up.failover.as_str(),
                up.health.path,
                humantime::format_duration(up.health.interval),
                up.tls.as_ref().map(BackendTls::summary).unwrap_or_default()
            );
            for b in &up.backends {
                let dns = match &b.addr {
                    BackendAddr::Ip(_) => String::new(),
                    BackendAddr::Name { .. } => format!(
                        " (DNS, resolved every {})",
                        humantime::format_duration(up.resolve_interval)
                    ),
                };
                let _ = writeln!(
                    out,
                    "  backend {} addr={}{dns} weight={} replica={}",
                    b.name,
                    b.addr_text,
                    b.weight,
                    b.replica.as_deref().unwrap_or("-")
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_syntax_error_without_words_from_toml_still_says_why() {
        // Found by the property tests: toml's error for a CR that ends no line
        // has an empty message, which printed as "gen.toml:1:1: ".
        let e = Config::parse("\ra", "gen.toml").unwrap_err();
        assert_eq!(e.to_string(), "gen.toml:1:1: invalid TOML");
    }

    /// A route's host is kept as requests are matched (SPEC: "port
    /// ignored"): `a.com:80`, `[::1]` and a trailing dot matched nothing.
    #[test]
    fn route_hosts_are_kept_without_port_brackets_or_trailing_dot() {
        let route = |host: &str| format!("[[route]]\nhost = \"{host}\"\nupstream = \"shop\"\n");
        let text = format!(
            "[listen]\nhttp = [\"127.0.0.1:8080\"]\n{}{}{}{}\n[upstream.shop]\n\
             [[upstream.shop.backend]]\nname = \"a\"\naddr = \"127.0.0.1:9001\"\n",
            route("A.com:80"),
            route("[::1]:8080"),
            route("Shop.Example.com."),
            route("::1"),
        );
        let config = Config::parse(&text, "routes.toml").expect("valid");
        let hosts: Vec<_> = config.routes.iter().map(|r| r.host.as_deref()).collect();
        assert_eq!(
            hosts,
            [
                Some("a.com"),
                Some("::1"),
                Some("shop.example.com"),
                Some("::1")
            ]
        );
    }
}
