//! Backends named by DNS (`addr = "app-0.app.shop.svc.cluster.local:8080"`):
//! the task that resolves each name at start and every `resolve_interval`, and
//! moves the backend when its address changes. Beside the flow, like the
//! health checker: the request path never resolves, it reads the address last
//! stored in the backend's pool (`crate::pool::Pool::addr`).
//!
//! A changed address keeps the backend (its name, pins, health, metrics): only
//! its pool moves, so connections to the old address are not reused. A name
//! that resolves to nothing marks the backend down with the reason, which
//! `/status` shows (`dns: no address for NAME: WHY`); it comes back through
//! `rise` passing health checks once the name resolves again.
//!
//! Names go to the system resolver (getaddrinfo: /etc/hosts, resolv.conf and
//! its search list, as every other program on the host) unless `[dns] server`
//! names a DNS server, which is then asked directly (the `domain` crate's stub
//! resolver, UDP and TCP for truncated answers; the name is taken as written).

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use domain::base::Name;
use domain::resolv::stub::conf::{ResolvConf, ServerConf, Transport};
use domain::resolv::StubResolver;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::backend::{Backend, LastCheck};
use crate::config::{BackendAddr, Config, DnsConfig};
use crate::state::{SharedState, Snapshot, Upstream};

/// How long one resolution may take before it counts as a failure.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Where names are looked up.
#[derive(Clone)]
pub enum Resolver {
    /// getaddrinfo, on tokio's blocking threads.
    System,
    /// `[dns] server`, asked directly.
    Server(Arc<StubResolver>),
}

impl Resolver {
    pub fn new(dns: &DnsConfig) -> Resolver {
        match dns.server {
            None => Resolver::System,
            Some(addr) => {
                let mut conf = ResolvConf::new();
                conf.servers.push(ServerConf::new(addr, Transport::UdpTcp));
                conf.options.timeout = Duration::from_secs(2);
                conf.finalize();
                Resolver::Server(Arc::new(StubResolver::from_conf(conf)))
            }
        }
    }

    /// The addresses `host` has now, each with `port`, in the resolver's order;
    /// an error (or no address) says why in words.
    pub async fn lookup(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        let found = tokio::time::timeout(LOOKUP_TIMEOUT, self.ask(host, port))
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "no answer within {}",
                    humantime::format_duration(LOOKUP_TIMEOUT)
                ))
            })?;
        match found.is_empty() {
            true => Err("the name has no A or AAAA record".to_string()),
            false => Ok(found),
        }
    }

    async fn ask(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        match self {
            Resolver::System => tokio::net::lookup_host((host, port))
                .await
                .map(|addrs| addrs.collect())
                .map_err(|e| e.to_string()),
            Resolver::Server(stub) => {
                let name = Name::<Vec<u8>>::from_str(host).map_err(|e| e.to_string())?;
                let found = stub.lookup_host(name).await.map_err(|e| e.to_string())?;
                Ok(found.port_iter(port).collect())
            }
        }
    }
}

/// Resolves every named backend of the current snapshot once, together (at
/// start, before the listeners serve).
pub async fn resolve_all(state: &SharedState) {
    let snap = state.load_full();
    let mut tasks = JoinSet::new();
    spawn_each(&snap, &mut tasks, false);
    while tasks.join_next().await.is_some() {}
}

/// Resolves the named backends of the current snapshot every
/// `resolve_interval` until `shutdown`, starting over (at once) whenever
/// `generation` changes (a reload).
pub async fn run(
    state: SharedState,
    mut generation: watch::Receiver<u64>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let snap = state.load_full();
        let mut tasks = JoinSet::new();
        spawn_each(&snap, &mut tasks, true);
        tokio::select! {
            changed = generation.changed() => if changed.is_err() { return },
            _ = crate::shutdown::stopped(&mut shutdown) => return,
        }
        tasks.abort_all();
    }
}

/// One task per backend of `snap` named by DNS: resolve once, or (`repeat`)
/// every `resolve_interval`.
fn spawn_each(snap: &Arc<Snapshot>, tasks: &mut JoinSet<()>, repeat: bool) {
    let resolver = Resolver::new(&snap.config.dns);
    for upstream in &snap.upstreams {
        for (i, backend) in upstream.backends.iter().enumerate() {
            if backend.addr.ip().is_some() {
                continue;
            }
            let (snap, resolver) = (snap.clone(), resolver.clone());
            let name = upstream.name.clone();
            tasks.spawn(async move {
                let Some(up) = snap.upstream(&name) else {
                    return;
                };
                loop {
                    refresh(up, &up.backends[i], &resolver).await;
                    if !repeat {
                        return;
                    }
                    tokio::time::sleep(up.config.resolve_interval).await;
                }
            });
        }
    }
}

/// Resolves `backend`'s name once and applies the answer; an IP backend is
/// left alone.
async fn refresh(upstream: &Upstream, backend: &Backend, resolver: &Resolver) {
    let BackendAddr::Name { host, port } = &backend.addr else {
        return;
    };
    let answer = resolver.lookup(host, *port).await;
    apply(upstream, backend, host, answer);
}

/// Moves `backend` to the address its name resolved to (the one it has, if
/// still among the answers, else the first), or marks it down without one.
fn apply(
    upstream: &Upstream,
    backend: &Backend,
    host: &str,
    answer: Result<Vec<SocketAddr>, String>,
) {
    let state = &backend.state;
    match answer {
        Ok(addrs) => {
            let current = state.pool.addr();
            let Some(&next) = current
                .filter(|c| addrs.contains(c))
                .as_ref()
                .or(addrs.first())
            else {
                return;
            };
            match state.resolved(next) {
                Some(Some(old)) => tracing::warn!(
                    upstream = %upstream.name,
                    backend = %backend.name,
                    "backend moved: {host} resolves to {next} (was {old}); new connections go there, those to {old} are closed"
                ),
                Some(None) => tracing::info!(
                    upstream = %upstream.name,
                    backend = %backend.name,
                    "backend address: {host} resolves to {next}"
                ),
                None => {}
            }
        }
        Err(why) => {
            let reason = format!("dns: no address for {host}: {why}");
            let new_reason = state.unresolved().as_deref() != Some(reason.as_str());
            let went_down = state.unresolvable(reason.clone());
            state.set_last_check(LastCheck {
                ok: false,
                latency: Duration::ZERO,
                at: SystemTime::now(),
                reason: Some(reason.clone()),
            });
            if new_reason {
                tracing::warn!(
                    upstream = %upstream.name,
                    backend = %backend.name,
                    reason = %reason,
                    "backend down: {reason}"
                );
            }
            if went_down {
                crate::health::warn_if_all_down(upstream);
            }
        }
    }
}

/// What `limpet check` says about the backends whose names do not resolve
/// now (neither the start nor a reload fails on them: they are down until
/// they resolve). The names are looked up together.
pub async fn check_names(config: &Config) -> Vec<String> {
    let resolver = Resolver::new(&config.dns);
    let mut lookups = JoinSet::new();
    for upstream in &config.upstreams {
        for b in &upstream.backends {
            let BackendAddr::Name { host, port } = b.addr.clone() else {
                continue;
            };
            let resolver = resolver.clone();
            let what = format!(
                "upstream.{}: backend {} ({})",
                upstream.name, b.name, b.addr_text
            );
            lookups.spawn(async move {
                let why = resolver.lookup(&host, port).await.err()?;
                Some(format!(
                    "{what} does not resolve now ({why}): it stays down until it does"
                ))
            });
        }
    }
    let mut warnings: Vec<String> = lookups.join_all().await.into_iter().flatten().collect();
    warnings.sort();
    warnings
}
