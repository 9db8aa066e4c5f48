//! Validation: turns the raw file into a [`Config`], parsing durations, reading
//! secrets and certificates, resolving listener addresses (a backend's DNS name
//! is only checked here: `crate::resolve` resolves it), and checking every rule of SPEC
//! section 2. Errors carry the dotted key they are about.

use std::collections::HashSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use super::*;

/// A validation error before it is given a position: the key's dotted path and why.
pub(super) struct Invalid {
    pub(super) key: String,
    pub(super) message: String,
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> Invalid {
    Invalid {
        key: key.into(),
        message: message.into(),
    }
}

pub(super) fn validate(raw: raw::File, text: &str) -> Result<Config, Invalid> {
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
        // Set below, once max_connections is known.
        backlog: 0,
        proxy_protocol_from: raw
            .listen
            .proxy_protocol
            .map(|p| p.from.into_iter().map(|n| n.0).collect())
            .unwrap_or_default(),
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
    check_listeners_apart(&listen, admin.as_ref())?;
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
    let mut listen = listen;
    listen.backlog = match raw.listen.backlog {
        Some(0) => return Err(invalid("listen.backlog", "must be at least 1")),
        Some(n) => n,
        None => u32::try_from(limits.max_connections)
            .unwrap_or(u32::MAX)
            .max(super::MIN_DEFAULT_BACKLOG),
    };
    if limits.max_header_bytes < MIN_MAX_HEADER_BYTES {
        return Err(invalid(
            "limits.max_header_bytes",
            format!("must be at least {MIN_MAX_HEADER_BYTES}"),
        ));
    }
    let runtime = Runtime {
        worker_threads: raw.runtime.worker_threads.unwrap_or(0),
    };
    if runtime.worker_threads > MAX_WORKER_THREADS {
        // 99999 passed and then aborted the start, after spawning ~16,000
        // threads.
        return Err(invalid(
            "runtime.worker_threads",
            format!("must be at most {MAX_WORKER_THREADS} (0: one per core)"),
        ));
    }
    let dns = DnsConfig {
        server: raw.dns.server.as_deref().map(dns_server).transpose()?,
    };
    let log = LogConfig {
        access: access_destination(raw.log.access)?,
        format: raw.log.format,
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
        dns,
        log,
        routes,
        upstreams,
        warnings,
    })
}

/// `[log] access`: "off", "stderr", or a file, which must be writable: it is
/// opened (and created if missing) in append mode, as nginx's `-t` does.
fn access_destination(text: Option<String>) -> Result<AccessDestination, Invalid> {
    let Some(text) = text else {
        return Ok(AccessDestination::Default);
    };
    match text.as_str() {
        "off" => Ok(AccessDestination::Off),
        "stderr" => Ok(AccessDestination::Stderr),
        "" => Err(invalid(
            "log.access",
            "must be \"off\", \"stderr\" or a file path",
        )),
        path => std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .map(|_| AccessDestination::File(path.into()))
            .map_err(|e| {
                invalid(
                    "log.access",
                    format!("cannot open {path} for appending: {e}"),
                )
            }),
    }
}

fn validate_tls(tls: raw::Tls) -> Result<TlsConfig, Invalid> {
    if tls.certs.is_empty() {
        return Err(invalid("tls.certs", "give at least one { cert, key } pair"));
    }
    let session_cache = tls.session_cache.unwrap_or(DEFAULT_SESSION_CACHE);
    if session_cache > MAX_SESSION_CACHE {
        return Err(invalid(
            "tls.session_cache",
            format!("at most {MAX_SESSION_CACHE} sessions (0 turns the cache off)"),
        ));
    }
    let mut certs = Vec::new();
    let mut keys = Vec::new();
    for (i, pair) in tls.certs.iter().enumerate() {
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
            cert: pair.cert.clone(),
            key: pair.key.clone(),
        });
    }
    Ok(TlsConfig {
        certs,
        keys,
        session_tickets: tls.session_tickets.unwrap_or(true),
        session_cache,
    })
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
        let host = r.host.map(|h| route_host(&h));
        if let Some(h) = &host {
            let bare = h.strip_prefix("*.").unwrap_or(h);
            let bad_colon = bare.contains(':') && bare.parse::<std::net::Ipv6Addr>().is_err();
            if bare.is_empty() || bad_colon || bare.contains(['*', '/', ' ', '[', ']']) {
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
        if let Some(hsts) = &r.hsts {
            if !is_hsts(hsts) {
                return Err(invalid(
                    format!("route[{i}].hsts"),
                    format!(
                        "\"{hsts}\" is not a Strict-Transport-Security value (\"max-age=SECONDS\", \
                         then optionally \"; includeSubDomains\" and \"; preload\")"
                    ),
                ));
            }
        }
        out.push(Route {
            host,
            path_prefix: r.path_prefix,
            upstream: r.upstream,
            redirect_https: r.redirect_https.unwrap_or(false),
            hsts: r.hsts,
        });
    }
    Ok(out)
}

/// A Strict-Transport-Security value (RFC 6797, section 6.1): `max-age`
/// with its seconds, and the directives browsers know.
/// A route's host as requests are matched (SPEC: "port ignored"):
/// lowercase, `uri::bare_host`. `a.com:80` and `Shop.Example.` were taken as
/// written and matched nothing.
fn route_host(host: &str) -> String {
    crate::uri::bare_host(&host.to_ascii_lowercase()).to_string()
}

fn is_hsts(value: &str) -> bool {
    let mut directives = value.split(';').map(str::trim);
    let max_age = directives.next().and_then(|d| d.strip_prefix("max-age="));
    max_age.is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        && directives.all(|d| {
            d.eq_ignore_ascii_case("includeSubDomains") || d.eq_ignore_ascii_case("preload")
        })
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
            addr: backend_addr(&b.addr, &bkey("addr"))?,
            replica: b.replica.clone(),
            weight,
            route,
            send_proxy: b.send_proxy.or(up.send_proxy) == Some(SendProxy::V2),
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
        max_lifetime: duration(c.max_lifetime, Duration::ZERO, &key("cookie.max_lifetime"))?,
        max_idle: duration(c.max_idle, Duration::ZERO, &key("cookie.max_idle"))?,
        secure,
        http_only: c.http_only.unwrap_or(true),
        same_site: c.same_site.unwrap_or(SameSite::Lax),
    };
    // Written into Set-Cookie as it is: a `;` would add attributes, a CR or
    // LF split the response (RFC 6265: any CHAR but controls and `;`).
    let path_ok = cookie.path.starts_with('/')
        && cookie
            .path
            .bytes()
            .all(|b| (0x20..0x7f).contains(&b) && b != b';');
    if !path_ok {
        return Err(invalid(
            key("cookie.path"),
            "must start with / and have no control characters or ;",
        ));
    }
    if !cookie.max_idle.is_zero() && cookie.max_idle < Duration::from_secs(2) {
        return Err(invalid(
            key("cookie.max_idle"),
            "must be at least 2s (the cookie counts whole seconds)",
        ));
    }
    if !cookie.max_lifetime.is_zero() && !cookie.max_age.is_zero() {
        warnings.push(format!(
            "upstream.{name}.cookie: max_lifetime sets the cookie's Max-Age; max_age is not used"
        ));
    }
    if cookie.same_site == SameSite::None && secure == Secure::Never {
        warnings.push(format!(
            "upstream.{name}.cookie: same_site = \"none\" without secure is rejected by browsers"
        ));
    }

    let ip_hash = IpHashConfig {
        trusted_proxies: up
            .ip_hash
            .map(|i| i.trusted_proxies.into_iter().map(|n| n.0).collect())
            .unwrap_or_default(),
    };
    let a = up.app_cookie.unwrap_or_default();
    let app_cookie = AppCookieConfig {
        name: a.name.unwrap_or_else(|| "JSESSIONID".to_string()),
        separator: a.separator.unwrap_or_else(|| ".".to_string()),
        secondary_separator: a.secondary_separator,
    };
    if app_cookie.name.is_empty() || !app_cookie.name.bytes().all(is_token_byte) {
        return Err(invalid(
            key("app_cookie.name"),
            format!("\"{}\" is not a valid cookie name", app_cookie.name),
        ));
    }
    if app_cookie.separator.is_empty() {
        return Err(invalid(key("app_cookie.separator"), "must not be empty"));
    }
    if app_cookie.secondary_separator.as_deref() == Some("") {
        return Err(invalid(
            key("app_cookie.secondary_separator"),
            "must not be empty",
        ));
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
    if !crate::uri::is_target_text(health.path.as_bytes()) {
        // A space or a CR passed, and then every check failed: the whole
        // upstream down.
        return Err(invalid(
            key("health.path"),
            "must be a request target: no whitespace, control characters or \" # < > \\ ^ ` { | }",
        ));
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
    for (k, value) in [("interval", health.interval), ("timeout", health.timeout)] {
        if value.is_zero() {
            return Err(invalid(
                key(&format!("health.{k}")),
                "must be longer than 0s",
            ));
        }
    }

    let t = up.timeouts.unwrap_or_default();
    let timeouts = TimeoutOverrides {
        connect: optional_duration(t.connect, &key("timeouts.connect"))?,
        response: optional_duration(t.response, &key("timeouts.response"))?,
        keepalive: optional_duration(t.keepalive, &key("timeouts.keepalive"))?,
    };

    let tls = match up.tls {
        Some(t) if t.enabled.unwrap_or(true) => {
            Some(validate_backend_tls(name, t, &backends, warnings)?)
        }
        _ => None,
    };
    let resolve_interval = duration(
        up.resolve_interval,
        DEFAULT_RESOLVE_INTERVAL,
        &key("resolve_interval"),
    )?;
    if resolve_interval < MIN_RESOLVE_INTERVAL {
        return Err(invalid(
            key("resolve_interval"),
            format!(
                "must be at least {}",
                humantime::format_duration(MIN_RESOLVE_INTERVAL)
            ),
        ));
    }

    let session_window = duration(
        up.session_window,
        DEFAULT_SESSION_WINDOW,
        &key("session_window"),
    )?;
    if session_window < MIN_SESSION_WINDOW {
        return Err(invalid(
            key("session_window"),
            format!(
                "must be at least {}",
                humantime::format_duration(MIN_SESSION_WINDOW)
            ),
        ));
    }

    Ok(UpstreamConfig {
        name: name.to_string(),
        affinity,
        balance: up.balance.unwrap_or(Balance::LeastRequests),
        failover: up.failover.unwrap_or(Failover::Replica),
        retries: up.retries.unwrap_or(DEFAULT_RETRIES),
        session_window,
        cookie,
        ip_hash,
        app_cookie,
        health,
        timeouts,
        tls,
        resolve_interval,
        backends,
    })
}

/// `[upstream.NAME.tls]`: reads the CA, the client certificate and its key
/// (at load and at every reload) and checks each backend has a name to verify.
fn validate_backend_tls(
    name: &str,
    t: raw::UpstreamTls,
    backends: &[BackendConfig],
    warnings: &mut Vec<String>,
) -> Result<BackendTls, Invalid> {
    let key = |k: &str| format!("upstream.{name}.tls.{k}");
    let verify = t.verify.unwrap_or(true);
    if !verify {
        warnings.push(format!(
            "upstream.{name}.tls.verify = false: backends' certificates are not checked, \
             so anyone on the path to them can read and change the traffic"
        ));
    }
    if let Some(sni) = &t.sni {
        crate::tls::backend_name(Some(sni), "").map_err(|m| invalid(key("sni"), m))?;
    }
    for (i, b) in backends.iter().enumerate() {
        crate::tls::backend_name(t.sni.as_deref(), &b.addr_text).map_err(|m| {
            invalid(
                format!("upstream.{name}.backend[{i}].addr"),
                format!("{m}: set upstream.{name}.tls.sni"),
            )
        })?;
    }
    for (what, path) in [("ca", &t.ca), ("cert", &t.cert), ("key", &t.key)] {
        if let Some(path) = path {
            std::fs::File::open(path)
                .map_err(|e| invalid(key(what), format!("cannot read {}: {e}", path.display())))?;
        }
    }
    let client_cert = match (t.cert, t.key) {
        (Some(cert), Some(key)) => Some(CertPair { cert, key }),
        (None, None) => None,
        (Some(_), None) => return Err(invalid(key("cert"), "a client cert needs its key")),
        (None, Some(_)) => return Err(invalid(key("key"), "a client key needs its cert")),
    };
    let client_key = client_cert
        .as_ref()
        .map(|pair| crate::tls::load_cert_pair(&pair.cert, &pair.key))
        .transpose()
        .map_err(|m| invalid(key("cert"), m))?;
    if let (Some(ca), false) = (&t.ca, verify) {
        // Unused while verify is off, but checked: turning it on must not
        // find a broken file.
        crate::tls::load_roots(ca).map_err(|m| invalid(key("ca"), m))?;
    }
    let roots = match &t.ca {
        Some(ca) => crate::tls::Roots::File(ca),
        None => crate::tls::Roots::Public,
    };
    let client =
        crate::tls::client_config(roots, verify, client_key).map_err(|m| invalid(key("ca"), m))?;
    Ok(BackendTls {
        sni: t.sni,
        ca: t.ca,
        verify,
        client_cert,
        client,
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

/// A duration that may be absent but, when given, must be longer than 0s.
fn optional_duration(text: Option<String>, key: &str) -> Result<Option<Duration>, Invalid> {
    let Some(text) = text else {
        return Ok(None);
    };
    let d = duration(Some(text), Duration::ZERO, key)?;
    if d.is_zero() {
        return Err(invalid(key, "must be longer than 0s"));
    }
    Ok(Some(d))
}

/// No address twice among the listeners, and the admin API on none of the
/// traffic listeners (SPEC: "never on a public listener"): `check` passed
/// both and `run` failed with "address already in use", naming no key.
/// Port 0 (the kernel's choice) is a new port each time.
fn check_listeners_apart(listen: &Listen, admin: Option<&AdminConfig>) -> Result<(), Invalid> {
    let traffic = listen
        .http
        .iter()
        .enumerate()
        .map(|(i, a)| (format!("listen.http[{i}]"), *a))
        .chain(
            listen
                .https
                .iter()
                .enumerate()
                .map(|(i, a)| (format!("listen.https[{i}]"), *a)),
        );
    let mut seen: Vec<(String, SocketAddr)> = Vec::new();
    for (key, addr) in traffic.chain(admin.map(|a| ("admin.listen".to_string(), a.listen))) {
        if addr.port() != 0 {
            if let Some((first, _)) = seen.iter().find(|(_, a)| *a == addr) {
                return Err(invalid(key, format!("{addr} is already {first}")));
            }
        }
        seen.push((key, addr));
    }
    Ok(())
}

fn parse_listen_addr(text: &str, key: &str) -> Result<SocketAddr, Invalid> {
    resolve_addr(text, key)
}

/// `[dns] server`: an IP address with an optional port (53 when absent).
fn dns_server(text: &str) -> Result<SocketAddr, Invalid> {
    let ip = text
        .parse::<std::net::IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53));
    ip.or_else(|_| text.parse::<SocketAddr>()).map_err(|_| {
        invalid(
            "dns.server",
            format!("\"{text}\" is not an IP address or IP:port (like \"10.96.0.10\" or \"127.0.0.1:5353\")"),
        )
    })
}

/// A name resolved more often than this would load the DNS server for nothing.
const MIN_RESOLVE_INTERVAL: Duration = Duration::from_millis(100);

/// A backend's `host:port`: an IP address is used as is; a DNS name is only
/// checked here (resolved at run time by `crate::resolve`, so a name that does
/// not resolve yet fails neither `limpet check`, nor the start, nor a reload).
fn backend_addr(text: &str, key: &str) -> Result<BackendAddr, Invalid> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(BackendAddr::Ip(addr));
    }
    let bad = |why: &str| {
        invalid(
            key,
            format!("\"{text}\" is not a usable host:port address ({why})"),
        )
    };
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(bad("expected host:port"));
    };
    let port = match port.parse::<u16>() {
        Ok(p) => p,
        Err(_) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            return Err(bad("the port must be 0 to 65535"))
        }
        Err(_) => return Err(bad("expected host:port")),
    };
    if !is_dns_name(host) {
        return Err(bad(
            "the host is neither an IP address nor a DNS name (letters, digits, '-', '_' and '.'; an IPv6 address goes in brackets)",
        ));
    }
    Ok(BackendAddr::Name {
        host: host.to_string(),
        port,
    })
}

/// A host name as DNS carries it: dot-separated labels of 1 to 63 letters,
/// digits, '-' or '_', at most 253 characters; one trailing dot allowed.
fn is_dns_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
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
