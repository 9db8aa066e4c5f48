//! The file as serde sees it: every key optional where the spec has a default,
//! unknown keys rejected. [`super::validate`] turns it into a [`super::Config`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::Deserialize;

use super::{Affinity, Balance, Failover, LogFormat, SameSite, SendProxy};

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
    pub dns: Dns,
    #[serde(default)]
    pub log: Log,
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
    pub backlog: Option<u32>,
    pub proxy_protocol: Option<ProxyProtocol>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyProtocol {
    pub from: Vec<Network>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    pub certs: Vec<CertPair>,
    pub session_tickets: Option<bool>,
    pub session_cache: Option<usize>,
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

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Dns {
    pub server: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Log {
    pub access: Option<String>,
    pub format: Option<LogFormat>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub host: Option<String>,
    pub path_prefix: Option<String>,
    pub upstream: String,
    pub redirect_https: Option<bool>,
    pub hsts: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    pub affinity: Option<Affinity>,
    pub balance: Option<Balance>,
    pub failover: Option<Failover>,
    pub retries: Option<u32>,
    pub session_window: Option<String>,
    pub cookie: Option<Cookie>,
    pub ip_hash: Option<IpHash>,
    pub app_cookie: Option<AppCookie>,
    pub health: Option<Health>,
    pub timeouts: Option<UpstreamTimeouts>,
    pub send_proxy: Option<SendProxy>,
    pub tls: Option<UpstreamTls>,
    pub resolve_interval: Option<String>,
    #[serde(default)]
    pub backend: Vec<Backend>,
}

/// `[upstream.NAME.tls]`: TLS to the upstream's backends.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    pub enabled: Option<bool>,
    pub sni: Option<String>,
    pub ca: Option<PathBuf>,
    pub verify: Option<bool>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTimeouts {
    pub connect: Option<String>,
    pub response: Option<String>,
    pub keepalive: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged, expecting = "true, false or \"auto\"")]
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
    pub max_lifetime: Option<String>,
    pub max_idle: Option<String>,
    pub secure: Option<BoolOrAuto>,
    pub http_only: Option<bool>,
    pub same_site: Option<SameSite>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct IpHash {
    #[serde(default)]
    pub trusted_proxies: Vec<Network>,
}

/// A network (`10.0.0.0/8`) or a single address (`10.0.0.1`, taken as /32
/// or /128, as nginx's `set_real_ip_from` takes it); a wrong one is named
/// at its place in the list.
pub struct Network(pub IpNet);

impl<'de> Deserialize<'de> for Network {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A visitor, so that the error is placed at the list's element.
        struct Text;
        impl serde::de::Visitor<'_> for Text {
            type Value = Network;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an address or a network like \"10.0.0.0/8\"")
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Network, E> {
                let trimmed = text.trim();
                trimmed
                    .parse::<IpNet>()
                    .or_else(|_| trimmed.parse::<std::net::IpAddr>().map(IpNet::from))
                    .map(Network)
                    .map_err(|_| {
                        E::custom(format!(
                            "\"{text}\" is not an address or a network like \"10.0.0.0/8\""
                        ))
                    })
            }
        }
        d.deserialize_str(Text)
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AppCookie {
    pub name: Option<String>,
    pub separator: Option<String>,
    pub secondary_separator: Option<String>,
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
    pub send_proxy: Option<SendProxy>,
}
