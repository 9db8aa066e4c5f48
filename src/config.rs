//! The TOML file's shape (SPEC section 2): parsing with serde, defaults as named
//! constants, and validation into a [`Config`] whose every field is ready to use
//! (durations parsed, secrets read, addresses resolved).
//!
//! Every error is a [`ConfigError`] that names the file, the line and column of the
//! offending key, the key's dotted path and why it is wrong.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

mod locate;

pub const DEFAULT_CLIENT_HEADER: Duration = Duration::from_secs(10);
pub const DEFAULT_CLIENT_IDLE: Duration = Duration::from_secs(60);
pub const DEFAULT_UPSTREAM_CONNECT: Duration = Duration::from_secs(2);
pub const DEFAULT_UPSTREAM_RESPONSE: Duration = Duration::from_secs(30);
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
pub const DEFAULT_MAX_HEADER_BYTES: usize = 65_536;
/// hyper refuses a read buffer smaller than this, so it is the smallest head limit.
pub const MIN_MAX_HEADER_BYTES: usize = 8192;
pub const DEFAULT_COOKIE_NAME: &str = "limpet";
pub const DEFAULT_HEALTH_PATH: &str = "/health";
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(2);
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_RISE: u32 = 2;
pub const DEFAULT_FALL: u32 = 3;
pub const DEFAULT_PASSIVE_FALL: u32 = 1;
pub const DEFAULT_SLOW_START: Duration = Duration::from_secs(10);
pub const DEFAULT_RETRIES: u32 = 1;
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
}

#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub certs: Vec<CertPair>,
    /// The certificates and keys, read and checked at load (and at every reload).
    pub keys: Vec<std::sync::Arc<rustls::sign::CertifiedKey>>,
}

#[derive(Debug, Clone)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
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

#[derive(Debug, Clone)]
pub struct Route {
    /// Lower-cased; `*.example.com` for a wildcard.
    pub host: Option<String>,
    pub path_prefix: Option<String>,
    pub upstream: String,
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
    pub cookie: CookieConfig,
    pub ip_hash: IpHashConfig,
    pub app_cookie: AppCookieConfig,
    pub health: HealthConfig,
    pub backends: Vec<BackendConfig>,
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
    pub addr: SocketAddr,
    pub replica: Option<String>,
    pub weight: u32,
    pub route: String,
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
            let key = span.as_ref().and_then(|s| locate::key_at(text, s.start));
            // toml's messages may span lines ("invalid array\nexpected `]`"): keep
            // the error on one line.
            let message = e.message().trim().lines().collect::<Vec<_>>().join(": ");
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
                "upstream {} affinity={} balance={} failover={}",
                up.name,
                up.affinity.as_str(),
                up.balance.as_str(),
                up.failover.as_str()
            );
            for b in &up.backends {
                let _ = writeln!(
                    out,
                    "  backend {} addr={} weight={} replica={}",
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

/// A validation error before it is given a position: the key's dotted path and why.
struct Invalid {
    key: String,
    message: String,
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> Invalid {
    Invalid {
        key: key.into(),
        message: message.into(),
    }
}

fn validate(raw: raw::File, text: &str) -> Result<Config, Invalid> {
    let mut warnings = Vec::new();
    let listen = Listen {
        http: raw
            .listen
            .http
            .iter()
            .enumerate()
            .map(|(i, a)| parse_listen_addr(a, &format!("listen.http[{i}]")))
            .collect::<Result<_, _>>()?,
        https: raw
            .listen
            .https
            .iter()
            .enumerate()
            .map(|(i, a)| parse_listen_addr(a, &format!("listen.https[{i}]")))
            .collect::<Result<_, _>>()?,
    };
    if listen.http.is_empty() && listen.https.is_empty() {
        return Err(invalid(
            "listen",
            "no listener: give at least one address in listen.http or listen.https",
        ));
    }
    if !listen.https.is_empty() && raw.tls.is_none() {
        return Err(invalid(
            "listen.https",
            "https listeners need a [tls] table with certs",
        ));
    }
    let tls = raw.tls.map(validate_tls).transpose()?;
    let admin = raw
        .admin
        .map(|a| -> Result<AdminConfig, Invalid> {
            Ok(AdminConfig {
                listen: parse_listen_addr(&a.listen, "admin.listen")?,
                token: a
                    .token
                    .map(|t| resolve_secret(&t, "admin.token"))
                    .transpose()?
                    .map(|t| String::from_utf8_lossy(&t).into_owned()),
            })
        })
        .transpose()?;
    let t = raw.timeouts;
    let timeouts = Timeouts {
        client_header: duration(
            t.client_header,
            DEFAULT_CLIENT_HEADER,
            "timeouts.client_header",
        )?,
        client_idle: duration(t.client_idle, DEFAULT_CLIENT_IDLE, "timeouts.client_idle")?,
        upstream_connect: duration(
            t.upstream_connect,
            DEFAULT_UPSTREAM_CONNECT,
            "timeouts.upstream_connect",
        )?,
        upstream_response: duration(
            t.upstream_response,
            DEFAULT_UPSTREAM_RESPONSE,
            "timeouts.upstream_response",
        )?,
        shutdown_grace: duration(
            t.shutdown_grace,
            DEFAULT_SHUTDOWN_GRACE,
            "timeouts.shutdown_grace",
        )?,
    };
    for (key, d) in [
        ("timeouts.client_header", timeouts.client_header),
        ("timeouts.client_idle", timeouts.client_idle),
        ("timeouts.upstream_connect", timeouts.upstream_connect),
        ("timeouts.upstream_response", timeouts.upstream_response),
    ] {
        if d.is_zero() {
            return Err(invalid(key, "must be longer than 0s"));
        }
    }
    let limits = Limits {
        max_connections: raw
            .limits
            .max_connections
            .unwrap_or(DEFAULT_MAX_CONNECTIONS),
        max_header_bytes: raw
            .limits
            .max_header_bytes
            .unwrap_or(DEFAULT_MAX_HEADER_BYTES),
    };
    if limits.max_connections == 0 {
        return Err(invalid("limits.max_connections", "must be at least 1"));
    }
    if limits.max_header_bytes < MIN_MAX_HEADER_BYTES {
        return Err(invalid(
            "limits.max_header_bytes",
            format!("must be at least {MIN_MAX_HEADER_BYTES}"),
        ));
    }
    let runtime = Runtime {
        worker_threads: raw.runtime.worker_threads.unwrap_or(0),
    };

    let mut upstreams = Vec::new();
    for (name, up) in raw.upstream {
        upstreams.push(validate_upstream(&name, up, &mut warnings)?);
    }
    let routes = validate_routes(raw.route, &upstreams)?;
    let checksum = format!(
        "sha256:{}",
        hex(ring::digest::digest(&ring::digest::SHA256, text.as_bytes()).as_ref())
    );
    Ok(Config {
        path: None,
        checksum,
        listen,
        tls,
        admin,
        timeouts,
        limits,
        runtime,
        routes,
        upstreams,
        warnings,
    })
}

fn validate_tls(tls: raw::Tls) -> Result<TlsConfig, Invalid> {
    if tls.certs.is_empty() {
        return Err(invalid("tls.certs", "give at least one { cert, key } pair"));
    }
    let mut certs = Vec::new();
    let mut keys = Vec::new();
    for (i, pair) in tls.certs.into_iter().enumerate() {
        for (what, path) in [("cert", &pair.cert), ("key", &pair.key)] {
            std::fs::File::open(path).map_err(|e| {
                invalid(
                    format!("tls.certs[{i}].{what}"),
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
        }
        let key = crate::tls::load_cert_pair(&pair.cert, &pair.key)
            .map_err(|m| invalid(format!("tls.certs[{i}]"), m))?;
        keys.push(key);
        certs.push(CertPair {
            cert: pair.cert,
            key: pair.key,
        });
    }
    Ok(TlsConfig { certs, keys })
}

fn validate_routes(
    routes: Vec<raw::Route>,
    upstreams: &[UpstreamConfig],
) -> Result<Vec<Route>, Invalid> {
    if upstreams.is_empty() {
        return Err(invalid(
            "upstream",
            "no upstream: define at least one [upstream.NAME]",
        ));
    }
    if routes.is_empty() && upstreams.len() > 1 {
        return Err(invalid(
            "upstream",
            "several upstreams but no [[route]]: add routes saying which requests go where",
        ));
    }
    let mut out = Vec::new();
    for (i, r) in routes.into_iter().enumerate() {
        if !upstreams.iter().any(|u| u.name == r.upstream) {
            return Err(invalid(
                format!("route[{i}].upstream"),
                format!("unknown upstream \"{}\"", r.upstream),
            ));
        }
        let host = r.host.map(|h| h.to_ascii_lowercase());
        if let Some(h) = &host {
            let bare = h.strip_prefix("*.").unwrap_or(h);
            if bare.is_empty() || bare.contains('*') || bare.contains('/') || bare.contains(' ') {
                return Err(invalid(
                    format!("route[{i}].host"),
                    format!("\"{h}\" is not a host name or a \"*.domain\" wildcard"),
                ));
            }
        }
        if let Some(p) = &r.path_prefix {
            if !p.starts_with('/') {
                return Err(invalid(
                    format!("route[{i}].path_prefix"),
                    format!("\"{p}\" must start with /"),
                ));
            }
        }
        out.push(Route {
            host,
            path_prefix: r.path_prefix,
            upstream: r.upstream,
        });
    }
    Ok(out)
}

fn validate_upstream(
    name: &str,
    up: raw::Upstream,
    warnings: &mut Vec<String>,
) -> Result<UpstreamConfig, Invalid> {
    let key = |k: &str| format!("upstream.{name}.{k}");
    if up.backend.is_empty() {
        return Err(invalid(
            format!("upstream.{name}"),
            "no backends: add at least one [[upstream.NAME.backend]]",
        ));
    }
    let affinity = up.affinity.unwrap_or(Affinity::Cookie);
    let mut seen = HashSet::new();
    let mut routes = HashSet::new();
    let mut backends = Vec::new();
    for (i, b) in up.backend.iter().enumerate() {
        let bkey = |k: &str| format!("upstream.{name}.backend[{i}].{k}");
        if b.name.is_empty() {
            return Err(invalid(bkey("name"), "must not be empty"));
        }
        if !seen.insert(b.name.as_str()) {
            return Err(invalid(
                bkey("name"),
                format!("duplicate backend name \"{}\"", b.name),
            ));
        }
        let route = b.route.clone().unwrap_or_else(|| b.name.clone());
        if affinity == Affinity::AppCookie && !routes.insert(route.clone()) {
            return Err(invalid(
                bkey("route"),
                format!("route \"{route}\" is used by two backends"),
            ));
        }
        let weight = b.weight.unwrap_or(1);
        if weight == 0 || weight > MAX_WEIGHT {
            return Err(invalid(
                bkey("weight"),
                format!(
                    "must be between 1 and {MAX_WEIGHT} (drain a backend to stop new sessions)"
                ),
            ));
        }
        backends.push(BackendConfig {
            name: b.name.clone(),
            addr_text: b.addr.clone(),
            addr: resolve_addr(&b.addr, &bkey("addr"))?,
            replica: b.replica.clone(),
            weight,
            route,
        });
    }
    for (i, b) in backends.iter().enumerate() {
        if let Some(r) = &b.replica {
            if r == &b.name {
                return Err(invalid(
                    format!("upstream.{name}.backend[{i}].replica"),
                    format!("backend \"{r}\" cannot be its own replica"),
                ));
            }
            if !seen.contains(r.as_str()) {
                return Err(invalid(
                    format!("upstream.{name}.backend[{i}].replica"),
                    format!("unknown backend \"{r}\" in upstream \"{name}\""),
                ));
            }
        }
    }

    let c = up.cookie.unwrap_or_default();
    let cookie_name = c.name.unwrap_or_else(|| DEFAULT_COOKIE_NAME.to_string());
    if cookie_name.is_empty() || !cookie_name.bytes().all(is_token_byte) {
        return Err(invalid(
            key("cookie.name"),
            format!("\"{cookie_name}\" is not a valid cookie name"),
        ));
    }
    let secret = c
        .secret
        .map(|s| resolve_secret(&s, &key("cookie.secret")))
        .transpose()?;
    if affinity == Affinity::Cookie && secret.is_none() {
        warnings.push(format!(
            "upstream.{name}.cookie.secret is not set: using a random secret, so pins differ across instances and restarts"
        ));
    }
    let previous_secrets = c
        .previous_secrets
        .iter()
        .enumerate()
        .map(|(i, s)| resolve_secret(s, &key(&format!("cookie.previous_secrets[{i}]"))))
        .collect::<Result<_, _>>()?;
    let secure = match c.secure {
        None => Secure::Auto,
        Some(raw::BoolOrAuto::Bool(true)) => Secure::Always,
        Some(raw::BoolOrAuto::Bool(false)) => Secure::Never,
        Some(raw::BoolOrAuto::Text(t)) if t == "auto" => Secure::Auto,
        Some(raw::BoolOrAuto::Text(t)) => {
            return Err(invalid(
                key("cookie.secure"),
                format!("\"{t}\" is not true, false or \"auto\""),
            ))
        }
    };
    let cookie = CookieConfig {
        name: cookie_name,
        secret,
        previous_secrets,
        path: c.path.unwrap_or_else(|| "/".to_string()),
        max_age: duration(c.max_age, Duration::ZERO, &key("cookie.max_age"))?,
        secure,
        http_only: c.http_only.unwrap_or(true),
        same_site: c.same_site.unwrap_or(SameSite::Lax),
    };
    if cookie.same_site == SameSite::None && secure == Secure::Never {
        warnings.push(format!(
            "upstream.{name}.cookie: same_site = \"none\" without secure is rejected by browsers"
        ));
    }

    let ip_hash = IpHashConfig {
        trusted_proxies: up.ip_hash.map(|i| i.trusted_proxies).unwrap_or_default(),
    };
    let a = up.app_cookie.unwrap_or_default();
    let app_cookie = AppCookieConfig {
        name: a.name.unwrap_or_else(|| "JSESSIONID".to_string()),
        separator: a.separator.unwrap_or_else(|| ".".to_string()),
    };
    if app_cookie.separator.is_empty() {
        return Err(invalid(key("app_cookie.separator"), "must not be empty"));
    }

    let h = up.health.unwrap_or_default();
    let health = HealthConfig {
        path: h.path.unwrap_or_else(|| DEFAULT_HEALTH_PATH.to_string()),
        interval: duration(h.interval, DEFAULT_HEALTH_INTERVAL, &key("health.interval"))?,
        timeout: duration(h.timeout, DEFAULT_HEALTH_TIMEOUT, &key("health.timeout"))?,
        rise: h.rise.unwrap_or(DEFAULT_RISE),
        fall: h.fall.unwrap_or(DEFAULT_FALL),
        expect: parse_expect(h.expect.as_deref().unwrap_or("200-399"))
            .map_err(|m| invalid(key("health.expect"), m))?,
        passive_fall: h.passive_fall.unwrap_or(DEFAULT_PASSIVE_FALL),
        slow_start: duration(h.slow_start, DEFAULT_SLOW_START, &key("health.slow_start"))?,
    };
    if !health.path.starts_with('/') {
        return Err(invalid(key("health.path"), "must start with /"));
    }
    for (k, v) in [
        ("rise", health.rise),
        ("fall", health.fall),
        ("passive_fall", health.passive_fall),
    ] {
        if v == 0 {
            return Err(invalid(key(&format!("health.{k}")), "must be at least 1"));
        }
    }
    if health.interval.is_zero() || health.timeout.is_zero() {
        return Err(invalid(
            key("health.interval"),
            "interval and timeout must be longer than 0s",
        ));
    }

    Ok(UpstreamConfig {
        name: name.to_string(),
        affinity,
        balance: up.balance.unwrap_or(Balance::LeastRequests),
        failover: up.failover.unwrap_or(Failover::Replica),
        retries: up.retries.unwrap_or(DEFAULT_RETRIES),
        cookie,
        ip_hash,
        app_cookie,
        health,
        backends,
    })
}

/// `"200-399"`, `"200"`, or a comma-separated list of both.
fn parse_expect(text: &str) -> Result<Vec<(u16, u16)>, String> {
    let bad = || format!("\"{text}\" is not a status or range like \"200-399\"");
    let mut out = Vec::new();
    for part in text.split(',') {
        let part = part.trim();
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
        let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
        if !(100..=599).contains(&lo) || !(100..=599).contains(&hi) || lo > hi {
            return Err(bad());
        }
        out.push((lo, hi));
    }
    Ok(out)
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn duration(text: Option<String>, default: Duration, key: &str) -> Result<Duration, Invalid> {
    match text {
        None => Ok(default),
        Some(t) => humantime::parse_duration(t.trim()).map_err(|e| {
            invalid(
                key,
                format!("\"{t}\" is not a duration like \"500ms\", \"2s\" or \"1m\" ({e})"),
            )
        }),
    }
}

fn parse_listen_addr(text: &str, key: &str) -> Result<SocketAddr, Invalid> {
    resolve_addr(text, key)
}

/// `host:port`; a host name is resolved now (at load and at reload).
fn resolve_addr(text: &str, key: &str) -> Result<SocketAddr, Invalid> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let bad = |why: String| {
        invalid(
            key,
            format!("\"{text}\" is not a usable host:port address ({why})"),
        )
    };
    match text.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {}
        Some((host, port))
            if !host.is_empty() && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) =>
        {
            return Err(bad("the port must be 0 to 65535".to_string()))
        }
        _ => return Err(bad("expected host:port".to_string())),
    }
    let mut addrs = text.to_socket_addrs().map_err(|e| bad(e.to_string()))?;
    addrs
        .next()
        .ok_or_else(|| bad("the name resolved to no address".to_string()))
}

/// A literal, `env:VAR` or `file:PATH`.
fn resolve_secret(text: &str, key: &str) -> Result<Vec<u8>, Invalid> {
    let value = if let Some(var) = text.strip_prefix("env:") {
        std::env::var(var)
            .map_err(|_| invalid(key, format!("environment variable {var} is not set")))?
    } else if let Some(path) = text.strip_prefix("file:") {
        let content = std::fs::read_to_string(path)
            .map_err(|e| invalid(key, format!("cannot read secret file {path}: {e}")))?;
        content.trim_end_matches(['\r', '\n']).to_string()
    } else {
        text.to_string()
    };
    if value.is_empty() {
        return Err(invalid(key, "the secret is empty"));
    }
    Ok(value.into_bytes())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The file as serde sees it: every key optional where the spec has a default,
/// unknown keys rejected.
mod raw {
    use super::*;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct File {
        #[serde(default)]
        pub listen: Listen,
        pub tls: Option<Tls>,
        pub admin: Option<Admin>,
        #[serde(default)]
        pub timeouts: Timeouts,
        #[serde(default)]
        pub limits: Limits,
        #[serde(default)]
        pub runtime: Runtime,
        #[serde(default)]
        pub route: Vec<Route>,
        #[serde(default)]
        pub upstream: BTreeMap<String, Upstream>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Listen {
        #[serde(default)]
        pub http: Vec<String>,
        #[serde(default)]
        pub https: Vec<String>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Tls {
        pub certs: Vec<CertPair>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct CertPair {
        pub cert: PathBuf,
        pub key: PathBuf,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Admin {
        pub listen: String,
        pub token: Option<String>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Timeouts {
        pub client_header: Option<String>,
        pub client_idle: Option<String>,
        pub upstream_connect: Option<String>,
        pub upstream_response: Option<String>,
        pub shutdown_grace: Option<String>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Limits {
        pub max_connections: Option<usize>,
        pub max_header_bytes: Option<usize>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Runtime {
        pub worker_threads: Option<usize>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Route {
        pub host: Option<String>,
        pub path_prefix: Option<String>,
        pub upstream: String,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Upstream {
        pub affinity: Option<Affinity>,
        pub balance: Option<Balance>,
        pub failover: Option<Failover>,
        pub retries: Option<u32>,
        pub cookie: Option<Cookie>,
        pub ip_hash: Option<IpHash>,
        pub app_cookie: Option<AppCookie>,
        pub health: Option<Health>,
        #[serde(default)]
        pub backend: Vec<Backend>,
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    pub enum BoolOrAuto {
        Bool(bool),
        Text(String),
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Cookie {
        pub name: Option<String>,
        pub secret: Option<String>,
        #[serde(default)]
        pub previous_secrets: Vec<String>,
        pub path: Option<String>,
        pub max_age: Option<String>,
        pub secure: Option<BoolOrAuto>,
        pub http_only: Option<bool>,
        pub same_site: Option<SameSite>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct IpHash {
        #[serde(default)]
        pub trusted_proxies: Vec<IpNet>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct AppCookie {
        pub name: Option<String>,
        pub separator: Option<String>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Health {
        pub path: Option<String>,
        pub interval: Option<String>,
        pub timeout: Option<String>,
        pub rise: Option<u32>,
        pub fall: Option<u32>,
        pub expect: Option<String>,
        pub passive_fall: Option<u32>,
        pub slow_start: Option<String>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Backend {
        pub name: String,
        pub addr: String,
        pub replica: Option<String>,
        pub weight: Option<u32>,
        pub route: Option<String>,
    }
}
