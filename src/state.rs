//! The running configuration as one immutable [`Snapshot`] (routes, upstreams,
//! backends, cookie codecs) behind an `ArcSwap`, and the routing decision of SPEC
//! section 3 for one upstream: pinned, failover along the replica chain, or balance.
//!
//! A request loads the snapshot once and keeps that `Arc` until it finishes, so a
//! reload never changes the rules under a request in flight. Backend runtime state
//! (health, operator state, pool) is carried from the previous snapshot when the
//! upstream, the backend's name and its configured address (an IP address, or a
//! DNS name and port: what the name resolves to may change) are unchanged.

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use ahash::AHashMap;
use arc_swap::ArcSwap;
use rustls_pki_types::ServerName;

use crate::affinity::{self, CookieCodec};
pub use crate::affinity::{Outcome, Session};
use crate::backend::{Backend, BackendState};
use crate::balancer::{self, Balancer};
use crate::config::{Affinity, BackendTls, Config, Failover, Timeouts, TlsConfig, UpstreamConfig};
use crate::hash_ring::Ring;
use crate::pool::TlsTarget;
use crate::router::Router;
use crate::series::UpstreamSeries;
use crate::tls::Resumption;

/// The live configuration, swapped atomically on reload.
pub type SharedState = Arc<ArcSwap<Snapshot>>;

#[derive(Debug)]
pub struct Snapshot {
    pub config: Arc<Config>,
    pub router: Router,
    pub upstreams: Vec<Upstream>,
    pub loaded_at: SystemTime,
    /// The TLS server configuration of the https listeners (certificates of this config).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The ticket key and session cache in `tls`, handed to the next snapshot.
    pub resumption: Option<Resumption>,
}

impl Snapshot {
    /// Builds a snapshot, reusing the backend state of `previous` where it applies.
    pub fn build(config: Config, previous: Option<&Snapshot>) -> Snapshot {
        let upstreams: Vec<Upstream> = config
            .upstreams
            .iter()
            .map(|u| {
                let previous = previous.and_then(|p| p.upstream(&u.name));
                Upstream::build(u, &config.timeouts, previous)
            })
            .collect();
        let router = Router::new(&config.routes, |name| {
            upstreams.iter().position(|u| &*u.name == name)
        });
        let previous_resumption = previous.and_then(|p| p.resumption.as_ref());
        let (tls, resumption) = match config.tls.as_ref().map(|t| tls(t, previous_resumption)) {
            Some(Ok((tls, resumption))) => (Some(tls), Some(resumption)),
            Some(Err(e)) => {
                tracing::error!("TLS configuration unusable: {e}");
                (None, None)
            }
            None => (None, None),
        };
        Snapshot {
            config: Arc::new(config),
            router,
            upstreams,
            loaded_at: SystemTime::now(),
            tls,
            resumption,
        }
    }

    pub fn upstream(&self, name: &str) -> Option<&Upstream> {
        self.upstreams.iter().find(|u| &*u.name == name)
    }
}

/// The https listeners' TLS configuration, resuming the sessions `previous`
/// resumed where the resumption settings are unchanged.
fn tls(
    t: &TlsConfig,
    previous: Option<&Resumption>,
) -> Result<(Arc<rustls::ServerConfig>, Resumption), rustls::Error> {
    let resumption = Resumption::carried(t.session_tickets, t.session_cache, previous)?;
    Ok((crate::tls::server_config(&t.keys, &resumption)?, resumption))
}

/// How to speak TLS to the backend at `addr` (as written in the file).
fn tls_target(tls: &BackendTls, addr: &str) -> TlsTarget {
    TlsTarget {
        config: tls.client.clone(),
        // Validation checked the name; an unusable one would fail every
        // handshake rather than fall back to plain text.
        name: crate::tls::backend_name(tls.sni.as_deref(), addr)
            .unwrap_or_else(|_| ServerName::IpAddress(IpAddr::from([0, 0, 0, 0]).into())),
    }
}

/// What a request carried that names a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pin {
    /// A backend index; from `backends.len()` on, a backend a reload removed
    /// ([`Upstream::removed`]).
    pub backend: usize,
    /// The affinity cookie must be re-issued even if the backend stays the same.
    pub reissue: bool,
    pub session: Session,
}

/// Why a pin the request carried was not used (the `reason` label of
/// `limpet_pins_ignored_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    /// Created longer than `cookie.max_lifetime` ago.
    Expired,
    /// Not re-issued for longer than `cookie.max_idle`.
    Idle,
}

impl Ignored {
    pub const ALL: [Ignored; 2] = [Ignored::Expired, Ignored::Idle];

    pub fn as_str(self) -> &'static str {
        match self {
            Ignored::Expired => "expired",
            Ignored::Idle => "idle",
        }
    }
}

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub backend: usize,
    pub outcome: Outcome,
    /// The pinned backend this request fails over from (`x-limpet-failover-from`;
    /// its name is [`Upstream::name_of`]: it may be a removed backend).
    pub failover_from: Option<usize>,
    /// Send a Set-Cookie pinning the client to `backend`.
    pub set_cookie: bool,
    /// The client's session: its identity, age and learned replica.
    pub session: Session,
}

/// A backend a reload removed, remembered so that its pinned clients fail over
/// to its replica rather than to a random pick.
#[derive(Debug, Clone)]
pub struct Removed {
    pub name: Arc<str>,
    /// Its `replica` as configured when it was removed.
    pub replica_name: Option<Arc<str>>,
    /// That replica's index in this snapshot, when it still is a backend.
    pub replica: Option<usize>,
    /// Its `route` (app-cookie pins name it by route).
    pub route: String,
    pub removed_at: std::time::Instant,
}

/// The timeouts of a request to one upstream's backends: the upstream's own
/// `[upstream.NAME.timeouts]`, else the global `upstream_connect` and
/// `upstream_response`. Health checks keep `health.timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendTimeouts {
    /// To connect to a backend.
    pub connect: Duration,
    /// For the response head after the request was sent, for a backend to take
    /// more of the request body, and (HTTP/1) each silence within the response body.
    pub response: Duration,
    /// How long an idle connection to a backend is kept for reuse.
    pub keepalive: Duration,
}

#[derive(Debug)]
pub struct Upstream {
    pub name: Arc<str>,
    pub config: UpstreamConfig,
    /// Resolved when the snapshot is built; see [`Upstream::timeouts`].
    timeouts: BackendTimeouts,
    pub backends: Vec<Backend>,
    /// Backends earlier configs had and this one does not, whose pins are
    /// still honoured: a pin to `removed[k]` is backend `backends.len() + k`.
    pub removed: Vec<Removed>,
    /// Routes (app-cookie) of the backends and of the removed ones.
    by_route: AHashMap<String, usize>,
    /// Present when `affinity = "cookie"`.
    pub cookie: Option<CookieCodec>,
    balancer: Balancer,
    /// The ip-hash table over all backends, when `affinity = "ip-hash"`.
    ip_hash: Option<Ring>,
    /// The metric series this upstream's requests write (see [`UpstreamSeries`]).
    pub series: UpstreamSeries,
}

impl Upstream {
    fn build(config: &UpstreamConfig, global: &Timeouts, previous: Option<&Upstream>) -> Upstream {
        let index: AHashMap<&str, usize> = config
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| (b.name.as_str(), i))
            .collect();
        let backends: Vec<Backend> = config
            .backends
            .iter()
            .map(|b| {
                let carried = previous
                    .and_then(|p| {
                        p.backends
                            .iter()
                            .find(|old| *old.name == *b.name && old.addr == b.addr)
                    })
                    .map(|old| old.state.clone());
                let state = carried.unwrap_or_else(|| Arc::new(BackendState::new(b.addr.ip())));
                state.sessions.set_window(config.session_window);
                Backend {
                    name: b.name.as_str().into(),
                    addr: b.addr.clone(),
                    addr_text: b.addr_text.clone(),
                    weight: b.weight,
                    replica: b.replica.as_deref().and_then(|r| index.get(r).copied()),
                    route: b.route.clone(),
                    send_proxy: b.send_proxy,
                    tls: config.tls.as_ref().map(|t| tls_target(t, &b.addr_text)),
                    state,
                }
            })
            .collect();
        let removed = removed_backends(previous, &index, config.cookie.max_lifetime);
        let cookie = (config.affinity == Affinity::Cookie).then(|| {
            let current = config
                .cookie
                .secret
                .as_deref()
                .unwrap_or_else(|| process_secret());
            let secrets = std::iter::once(current)
                .chain(config.cookie.previous_secrets.iter().map(Vec::as_slice));
            let names: Vec<&str> = backends
                .iter()
                .map(|b| &*b.name)
                .chain(removed.iter().map(|r| &*r.name))
                .collect();
            CookieCodec::new(&config.name, secrets, &names)
        });
        let timeouts = BackendTimeouts {
            connect: config.timeouts.connect.unwrap_or(global.upstream_connect),
            response: config.timeouts.response.unwrap_or(global.upstream_response),
            keepalive: config
                .timeouts
                .keepalive
                .unwrap_or(crate::pool::DEFAULT_KEEPALIVE),
        };
        let mut by_route: AHashMap<String, usize> = AHashMap::new();
        let routes = backends.iter().map(|b| &b.route);
        for (i, route) in routes.chain(removed.iter().map(|r| &r.route)).enumerate() {
            by_route.entry(route.clone()).or_insert(i);
        }
        Upstream {
            name: config.name.as_str().into(),
            timeouts,
            by_route,
            series: UpstreamSeries::new(backends.len()),
            balancer: Balancer::new(config.balance, &backends, config.health.slow_start),
            ip_hash: (config.affinity == Affinity::IpHash)
                .then(|| Ring::new(backends.iter().map(|b| (&*b.name, b.weight))))
                .flatten(),
            cookie,
            backends,
            removed,
            config: config.clone(),
        }
    }

    /// The timeouts of a request to this upstream's backends.
    pub fn timeouts(&self) -> BackendTimeouts {
        self.timeouts
    }

    /// The backend a request is pinned to by this upstream's affinity, if any;
    /// or why the pin it carried is not used.
    pub fn read_pin(
        &self,
        headers: &impl affinity::HeaderLookup,
        path: &str,
        peer: IpAddr,
    ) -> Result<Option<Pin>, Ignored> {
        match self.config.affinity {
            Affinity::Cookie => {
                let Some(codec) = self.cookie.as_ref() else {
                    return Ok(None);
                };
                affinity::find_cookie(headers, &self.config.cookie.name, |v| codec.decode_bytes(v))
                    .map(|p| self.cookie_pin(p))
                    .transpose()
            }
            Affinity::IpHash => {
                let ip = affinity::client_ip(peer, headers, &self.config.ip_hash.trusted_proxies);
                let key = balancer::ip_key(ip);
                // Every backend, available or not: `choose` applies the failover rules.
                let Some(ring) = self.ip_hash.as_ref() else {
                    return Ok(None);
                };
                Ok(Some(Pin {
                    backend: ring.get(key),
                    reissue: false,
                    session: Session {
                        id: key,
                        ..Session::default()
                    },
                }))
            }
            Affinity::AppCookie => {
                let c = &self.config.app_cookie;
                let sessions = affinity::app_sessions(
                    headers,
                    path,
                    &c.name,
                    &c.separator,
                    c.secondary_separator.as_deref(),
                );
                Ok(sessions.into_iter().find_map(|s| {
                    let backend = *self.by_route.get(s.route)?;
                    let replica = s.secondary.and_then(|r| self.by_route.get(r).copied());
                    Some(Pin {
                        backend,
                        reissue: false,
                        session: Session {
                            id: app_session_id(s.id),
                            created: 0,
                            replica: replica.filter(|&r| r < self.backends.len()),
                        },
                    })
                }))
            }
            Affinity::None => Ok(None),
        }
    }

    /// A verified cookie as a pin, unless `max_lifetime` or `max_idle` say it
    /// has lapsed; re-issued when it is older than half of `max_idle`.
    fn cookie_pin(&self, cookie: affinity::CookiePin) -> Result<Pin, Ignored> {
        let c = &self.config.cookie;
        let mut reissue = cookie.reissue;
        if !c.max_lifetime.is_zero() || !c.max_idle.is_zero() {
            let now = affinity::unix_now();
            let age = |t: u32| Duration::from_secs(u64::from(now.saturating_sub(t)));
            if !c.max_lifetime.is_zero() && age(cookie.session.created) > c.max_lifetime {
                return Err(Ignored::Expired);
            }
            if !c.max_idle.is_zero() {
                let idle = age(cookie.touched);
                if idle > c.max_idle {
                    return Err(Ignored::Idle);
                }
                reissue |= idle >= c.max_idle / 2;
            }
        }
        Ok(Pin {
            backend: cookie.backend,
            reissue,
            session: cookie.session,
        })
    }

    /// SPEC section 3: the backend for a request with (or without) a pin.
    pub fn choose(&self, pin: Option<Pin>) -> Decision {
        let sets_cookie = self.cookie.is_some();
        match pin {
            Some(pin) if self.is_available(pin.backend) => Decision {
                backend: pin.backend,
                outcome: Outcome::Pinned,
                failover_from: None,
                set_cookie: sets_cookie && pin.reissue,
                session: pin.session,
            },
            Some(pin) => self.fail_over(pin.backend, &[pin.backend], pin.session),
            None => match self.balancer.pick(&self.backends, &[]) {
                Some(backend) => self.balanced(Decision {
                    backend,
                    outcome: Outcome::New,
                    failover_from: None,
                    set_cookie: sets_cookie,
                    session: Session::new(),
                }),
                None => self.rejected(None),
            },
        }
    }

    /// The identity to count in the active sessions of the backend that
    /// answers `decision` (0: none): every request's session under `cookie`
    /// (a new client's is the one its cookie is about to carry) and `ip-hash`;
    /// under `app-cookie` only a request that carried the application's
    /// session (a new client has none until the application sets it); none
    /// under `affinity = "none"`.
    pub fn counted_session(&self, decision: &Decision) -> u64 {
        match self.config.affinity {
            Affinity::Cookie | Affinity::IpHash => decision.session.id.max(1),
            Affinity::AppCookie if decision.outcome != Outcome::New => decision.session.id.max(1),
            Affinity::AppCookie | Affinity::None => 0,
        }
    }

    /// Whether backend `index` takes requests (a removed backend does not).
    fn is_available(&self, index: usize) -> bool {
        self.backends
            .get(index)
            .is_some_and(|b| b.state.is_available())
    }

    /// The next target after `failed` could not be reached, trying none of `tried`.
    /// A request that was pinned (or failing over) fails over from its pin; a new
    /// session is balanced again.
    pub fn after_failure(&self, previous: Decision, tried: &[usize]) -> Decision {
        match previous.outcome {
            Outcome::New | Outcome::Rebalanced if previous.failover_from.is_none() => {
                match self.balancer.pick(&self.backends, tried) {
                    Some(backend) => self.balanced(Decision {
                        backend,
                        ..previous
                    }),
                    None => self.rejected(None),
                }
            }
            _ => {
                let from = previous.failover_from.unwrap_or(previous.backend);
                let mut next = self.fail_over(previous.backend, tried, previous.session);
                if next.outcome != Outcome::Rejected {
                    next.failover_from = Some(from);
                }
                next
            }
        }
    }

    /// The pinned backend `from` is unavailable: apply the `failover` policy.
    /// With `replica`, the session's learned replica is tried first, then
    /// `from`'s replica chain. The new pin's replica is not known yet (the new
    /// backend may say it).
    fn fail_over(&self, from: usize, tried: &[usize], session: Session) -> Decision {
        let sets_cookie = self.cookie.is_some();
        if self.config.failover == Failover::Reject {
            return self.rejected(Some(from));
        }
        let learned = session.replica;
        let session = Session {
            replica: None,
            ..session
        };
        if self.config.failover == Failover::Replica {
            let target = learned
                .into_iter()
                .chain(self.replica_chain(from))
                .find(|&r| r != from && !tried.contains(&r) && self.is_available(r));
            if let Some(r) = target {
                return Decision {
                    backend: r,
                    outcome: Outcome::Failover,
                    failover_from: Some(from),
                    set_cookie: sets_cookie,
                    session,
                };
            }
        }
        match self.balancer.pick(&self.backends, tried) {
            Some(backend) => self.balanced(Decision {
                backend,
                outcome: Outcome::Rebalanced,
                failover_from: Some(from),
                set_cookie: sets_cookie,
                session,
            }),
            None => self.rejected(Some(from)),
        }
    }

    /// A decision the balancer made. least-sessions counts the session on
    /// its backend from now on, not from its first answer: a slow backend's
    /// new sessions would drop out of its count (the pick's own count lasts
    /// only until the next estimate) while their requests wait, and it would
    /// look the emptiest, drawing ever more of them.
    fn balanced(&self, decision: Decision) -> Decision {
        if self.config.balance == crate::config::Balance::LeastSessions {
            let state = &self.backends[decision.backend].state;
            state.session_started(self.counted_session(&decision));
        }
        decision
    }

    fn rejected(&self, from: Option<usize>) -> Decision {
        Decision {
            backend: usize::MAX,
            outcome: Outcome::Rejected,
            failover_from: from,
            set_cookie: false,
            session: Session::default(),
        }
    }

    /// `from`'s replica, its replica, ... without cycles and without `from` itself.
    /// `from` may be a removed backend: the chain starts at its replica.
    pub fn replica_chain(&self, from: usize) -> impl Iterator<Item = usize> + '_ {
        let mut seen = vec![false; self.backends.len()];
        if let Some(s) = seen.get_mut(from) {
            *s = true;
        }
        let mut next = self.replica_of(from);
        std::iter::from_fn(move || {
            let r = next?;
            if seen[r] {
                return None;
            }
            seen[r] = true;
            next = self.backends[r].replica;
            Some(r)
        })
    }

    /// The configured replica of backend (or removed backend) `index`.
    fn replica_of(&self, index: usize) -> Option<usize> {
        match self.backends.get(index) {
            Some(b) => b.replica,
            None => self
                .removed
                .get(index - self.backends.len())
                .and_then(|r| r.replica),
        }
    }

    /// The name of backend (or removed backend) `index`.
    pub fn name_of(&self, index: usize) -> &str {
        match self.backends.get(index) {
            Some(b) => &b.name,
            None => self
                .removed
                .get(index.wrapping_sub(self.backends.len()))
                .map_or("", |r| &r.name),
        }
    }

    /// The backend named `name` in `x-session-replica`, when it is another
    /// backend of this upstream.
    pub fn learned_replica(&self, name: &[u8], primary: usize) -> Option<usize> {
        let name = std::str::from_utf8(name).ok()?.trim();
        self.backend_index(name).filter(|&r| r != primary)
    }

    pub fn backend_index(&self, name: &str) -> Option<usize> {
        self.backends.iter().position(|b| &*b.name == name)
    }
}

/// The backends `previous` had and `index` (the new config's backends) has
/// not: those removed now and those removed before (for `max_lifetime`, when
/// set, or until restart), with their replicas looked up in the new config.
fn removed_backends(
    previous: Option<&Upstream>,
    index: &AHashMap<&str, usize>,
    max_lifetime: Duration,
) -> Vec<Removed> {
    let Some(previous) = previous else {
        return Vec::new();
    };
    let now = std::time::Instant::now();
    let earlier = previous
        .removed
        .iter()
        .filter(|r| max_lifetime.is_zero() || now.duration_since(r.removed_at) < max_lifetime)
        .cloned();
    let just_now = previous.backends.iter().map(|b| Removed {
        name: b.name.clone(),
        replica_name: b.replica.map(|r| previous.backends[r].name.clone()),
        replica: None,
        route: b.route.clone(),
        removed_at: now,
    });
    earlier
        .chain(just_now)
        .filter(|r| !index.contains_key(&*r.name))
        .map(|r| Removed {
            replica: r
                .replica_name
                .as_deref()
                .and_then(|n| index.get(n).copied()),
            ..r
        })
        .collect()
}

/// A session identity from the application's session id (stable across
/// instances: fixed keys).
fn app_session_id(id: &str) -> u64 {
    ahash::RandomState::with_seeds(0x6c69, 0x6d70, 0x6574, 0x0a).hash_one(id)
}

/// The cookie secret used when none is configured: random, once per process, so
/// that a reload does not break every pin.
fn process_secret() -> &'static [u8] {
    static SECRET: OnceLock<[u8; 32]> = OnceLock::new();
    SECRET.get_or_init(|| {
        let mut s = [0u8; 32];
        if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut s).is_err() {
            s.iter_mut().for_each(|b| *b = fastrand::u8(..));
        }
        s
    })
}

/// Wraps a first snapshot for sharing.
pub fn shared(snapshot: Snapshot) -> SharedState {
    Arc::new(ArcSwap::from_pointee(snapshot))
}

#[cfg(test)]
mod tests {
    //! The sticky decision of SPEC section 3 as a table: each row sets the
    //! backends' states, gives a pin (or none) and says what `choose` decides.

    use super::*;
    use crate::backend::{Health, Operator};

    /// app1 -> app2 -> app3 -> app1 replicate each other; app4 stands alone.
    fn upstream(failover: &str) -> Snapshot {
        let toml = format!(
            "[listen]\nhttp = [\"127.0.0.1:0\"]\n\n\
             [upstream.shop]\naffinity = \"cookie\"\nfailover = \"{failover}\"\n\
             [upstream.shop.cookie]\nsecret = \"0123456789abcdef0123456789abcdef\"\n\
             [[upstream.shop.backend]]\nname = \"app1\"\naddr = \"127.0.0.1:1\"\nreplica = \"app2\"\n\
             [[upstream.shop.backend]]\nname = \"app2\"\naddr = \"127.0.0.1:2\"\nreplica = \"app3\"\n\
             [[upstream.shop.backend]]\nname = \"app3\"\naddr = \"127.0.0.1:3\"\nreplica = \"app1\"\n\
             [[upstream.shop.backend]]\nname = \"app4\"\naddr = \"127.0.0.1:4\"\n"
        );
        Snapshot::build(Config::parse(&toml, "test.toml").unwrap(), None)
    }

    #[derive(Clone, Copy)]
    enum Is {
        Up,
        Down,
        Draining,
        Maintenance,
        /// Draining with a deadline an hour away.
        DrainingUntil,
        /// Draining, its deadline passed.
        Drained,
    }

    fn set(up: &Upstream, name: &str, is: Is) {
        let state = &up.backends[up.backend_index(name).unwrap()].state;
        match is {
            Is::DrainingUntil => return state.drain_until(Duration::from_secs(3600)),
            Is::Drained => return state.drain_until(Duration::ZERO),
            _ => {}
        }
        let (health, operator) = match is {
            Is::Up => (Health::Up, Operator::Ready),
            Is::Down => (Health::Down, Operator::Ready),
            Is::Draining => (Health::Up, Operator::Draining),
            Is::Maintenance => (Health::Up, Operator::Maintenance),
            Is::DrainingUntil | Is::Drained => unreachable!(),
        };
        state.set_health(health);
        state.set_operator(operator);
    }

    struct Row {
        case: &'static str,
        failover: &'static str,
        states: [Is; 4],
        pin: Option<(&'static str, bool)>,
        /// Outcome, backend (None when rejected or any of several), the
        /// backend failed over from, Set-Cookie.
        expect: (Outcome, Option<&'static str>, Option<&'static str>, bool),
    }

    #[test]
    fn choose_follows_the_table() {
        use Is::*;
        use Outcome::*;
        let rows = [
            Row {
                case: "pinned, up",
                failover: "replica",
                states: [Up, Up, Up, Up],
                pin: Some(("app1", false)),
                expect: (Pinned, Some("app1"), None, false),
            },
            Row {
                case: "pinned, up, cookie signed with a previous key",
                failover: "replica",
                states: [Up, Up, Up, Up],
                pin: Some(("app1", true)),
                expect: (Pinned, Some("app1"), None, true),
            },
            Row {
                case: "pinned, draining: keeps its sessions",
                failover: "replica",
                states: [Draining, Up, Up, Up],
                pin: Some(("app1", false)),
                expect: (Pinned, Some("app1"), None, false),
            },
            Row {
                case: "pinned, draining before its deadline: keeps its sessions",
                failover: "replica",
                states: [DrainingUntil, Up, Up, Up],
                pin: Some(("app1", false)),
                expect: (Pinned, Some("app1"), None, false),
            },
            Row {
                case: "pinned, drain deadline passed: fails over as if down",
                failover: "replica",
                states: [Drained, Up, Up, Up],
                pin: Some(("app1", false)),
                expect: (Failover, Some("app2"), Some("app1"), true),
            },
            Row {
                case: "pinned, down, replica's drain deadline passed: the next in the chain",
                failover: "replica",
                states: [Down, Drained, Up, Up],
                pin: Some(("app1", false)),
                expect: (Failover, Some("app3"), Some("app1"), true),
            },
            Row {
                case: "no pin: neither drain takes new sessions",
                failover: "replica",
                states: [DrainingUntil, Drained, Down, Up],
                pin: None,
                expect: (New, Some("app4"), None, true),
            },
            Row {
                case: "pinned, down, replica up",
                failover: "replica",
                states: [Down, Up, Up, Up],
                pin: Some(("app1", false)),
                expect: (Failover, Some("app2"), Some("app1"), true),
            },
            Row {
                case: "pinned, in maintenance, replica up",
                failover: "replica",
                states: [Maintenance, Up, Up, Up],
                pin: Some(("app1", false)),
                expect: (Failover, Some("app2"), Some("app1"), true),
            },
            Row {
                case: "pinned, down, replica draining: it still holds the sessions",
                failover: "replica",
                states: [Down, Draining, Up, Up],
                pin: Some(("app1", false)),
                expect: (Failover, Some("app2"), Some("app1"), true),
            },
            Row {
                case: "pinned, down, replica down: the replica's replica",
                failover: "replica",
                states: [Down, Down, Up, Up],
                pin: Some(("app1", false)),
                expect: (Failover, Some("app3"), Some("app1"), true),
            },
            Row {
                case: "pinned, down, chain exhausted: rebalanced",
                failover: "replica",
                states: [Down, Down, Down, Up],
                pin: Some(("app1", false)),
                expect: (Rebalanced, Some("app4"), Some("app1"), true),
            },
            Row {
                case: "pinned, down, nothing left",
                failover: "replica",
                states: [Down, Down, Down, Down],
                pin: Some(("app1", false)),
                expect: (Rejected, None, Some("app1"), false),
            },
            Row {
                case: "failover = rebalance skips the replica chain",
                failover: "rebalance",
                states: [Down, Down, Down, Up],
                pin: Some(("app1", false)),
                expect: (Rebalanced, Some("app4"), Some("app1"), true),
            },
            Row {
                case: "failover = reject",
                failover: "reject",
                states: [Down, Up, Up, Up],
                pin: Some(("app1", false)),
                expect: (Rejected, None, Some("app1"), false),
            },
            Row {
                case: "no pin: a new session on a ready backend",
                failover: "replica",
                states: [Draining, Maintenance, Down, Up],
                pin: None,
                expect: (New, Some("app4"), None, true),
            },
            Row {
                case: "no pin, nothing ready",
                failover: "replica",
                states: [Draining, Down, Down, Maintenance],
                pin: None,
                expect: (Rejected, None, None, false),
            },
        ];
        for row in rows {
            let snap = upstream(row.failover);
            let up = &snap.upstreams[0];
            for (i, is) in row.states.into_iter().enumerate() {
                set(up, &format!("app{}", i + 1), is);
            }
            let pin = row.pin.map(|(name, reissue)| Pin {
                backend: up.backend_index(name).unwrap(),
                reissue,
                session: Session::new(),
            });
            let decision = up.choose(pin);
            let name = |i: usize| &*up.backends[i].name;
            let (outcome, backend, from, cookie) = row.expect;
            assert_eq!(decision.outcome, outcome, "{}", row.case);
            if let Some(backend) = backend {
                assert_eq!(name(decision.backend), backend, "{}", row.case);
            }
            assert_eq!(decision.failover_from.map(name), from, "{}", row.case);
            assert_eq!(decision.set_cookie, cookie, "{}", row.case);
        }
    }

    #[test]
    fn an_upstreams_own_timeouts_override_the_global_ones() {
        let toml = "[listen]\nhttp = [\"127.0.0.1:0\"]\n\n\
             [timeouts]\nupstream_connect = \"3s\"\nupstream_response = \"40s\"\n\n\
             [[route]]\nhost = \"a\"\nupstream = \"both\"\n\
             [[route]]\nhost = \"b\"\nupstream = \"response\"\n\
             [[route]]\nupstream = \"neither\"\n\n\
             [upstream.both.timeouts]\nconnect = \"100ms\"\nresponse = \"7s\"\nkeepalive = \"2s\"\n\
             [[upstream.both.backend]]\nname = \"x\"\naddr = \"127.0.0.1:1\"\n\
             [upstream.response.timeouts]\nresponse = \"500ms\"\n\
             [[upstream.response.backend]]\nname = \"x\"\naddr = \"127.0.0.1:1\"\n\
             [[upstream.neither.backend]]\nname = \"x\"\naddr = \"127.0.0.1:1\"\n";
        let snap = Snapshot::build(Config::parse(toml, "test.toml").unwrap(), None);
        let timeouts = |name: &str| snap.upstream(name).unwrap().timeouts();
        let ms = Duration::from_millis;
        assert_eq!(
            timeouts("both"),
            BackendTimeouts {
                connect: ms(100),
                response: ms(7000),
                keepalive: ms(2000),
            }
        );
        assert_eq!(
            timeouts("response"),
            BackendTimeouts {
                connect: ms(3000),
                response: ms(500),
                keepalive: crate::pool::DEFAULT_KEEPALIVE,
            }
        );
        assert_eq!(
            timeouts("neither"),
            BackendTimeouts {
                connect: ms(3000),
                response: ms(40_000),
                keepalive: crate::pool::DEFAULT_KEEPALIVE,
            }
        );
    }

    /// Under least-sessions a new session counts from its pick, not from
    /// its first answer: picks the backends have not answered yet (a slow
    /// backend's) stay in the estimate after it is recomputed (each second),
    /// where they dropped out and the slow backend looked the emptiest.
    #[test]
    fn least_sessions_counts_a_new_session_before_its_answer() {
        let toml = "[listen]\nhttp = [\"127.0.0.1:0\"]\n\n\
             [upstream.shop]\naffinity = \"cookie\"\nbalance = \"least-sessions\"\n\
             [upstream.shop.cookie]\nsecret = \"0123456789abcdef0123456789abcdef\"\n\
             [[upstream.shop.backend]]\nname = \"app1\"\naddr = \"127.0.0.1:1\"\n\
             [[upstream.shop.backend]]\nname = \"app2\"\naddr = \"127.0.0.1:2\"\n";
        let snap = Snapshot::build(Config::parse(toml, "test.toml").unwrap(), None);
        let up = &snap.upstreams[0];
        for _ in 0..20 {
            up.choose(None);
        }
        // Past the next recompute: no answer came, the picks still count.
        std::thread::sleep(crate::sessions::REFRESH + Duration::from_millis(50));
        for b in up.backends.iter() {
            let n = b.state.active_sessions();
            assert!((9..=11).contains(&n), "{}: {n}", b.name);
        }
        // Re-picked after its first backend failed: counted on the new one.
        let first = up.choose(None);
        let other = &up.backends[1 - first.backend].state;
        let before = other.active_sessions();
        let again = up.after_failure(first, &[first.backend]);
        assert_ne!(again.backend, first.backend);
        std::thread::sleep(crate::sessions::REFRESH + Duration::from_millis(50));
        assert!(
            other.active_sessions() > before,
            "the re-pick was not counted"
        );
    }

    #[test]
    fn a_forged_or_foreign_pin_is_no_pin() {
        let snap = upstream("replica");
        let up = &snap.upstreams[0];
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let genuine = up.cookie.as_ref().unwrap().encode(2, &Session::new());
        let mut forged = genuine.clone().into_bytes();
        let mid = forged.len() / 2;
        forged[mid] = if forged[mid] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(forged).unwrap();
        for (cookie, pinned) in [
            (format!("limpet={genuine}"), Some(2)),
            (format!("limpet={forged}"), None),
            ("limpet=garbage".to_string(), None),
            ("other=1".to_string(), None),
        ] {
            let mut headers = http::HeaderMap::new();
            headers.insert("cookie", cookie.parse().unwrap());
            let pin = up.read_pin(&headers, "/", peer).unwrap();
            assert_eq!(pin.map(|p| p.backend), pinned, "{cookie}");
            if pinned.is_none() {
                assert_eq!(up.choose(pin).outcome, Outcome::New, "{cookie}");
            }
        }
    }

    fn pin_to(up: &Upstream, name: &str, replica: Option<&str>) -> Pin {
        Pin {
            backend: up.backend_index(name).unwrap(),
            reissue: false,
            session: Session {
                replica: replica.map(|r| up.backend_index(r).unwrap()),
                ..Session::new()
            },
        }
    }

    #[test]
    fn a_learned_replica_is_tried_before_the_chain() {
        use Is::*;
        let snap = upstream("replica");
        let up = &snap.upstreams[0];
        let name = |i: usize| up.name_of(i).to_string();
        for (states, expect) in [
            // app1's chain is app2, app3; its session's copy is on app3.
            ([Down, Up, Up, Up], "app3"),
            // The learned replica is down too: the chain.
            ([Down, Up, Down, Up], "app2"),
        ] {
            for (i, is) in states.into_iter().enumerate() {
                set(up, &format!("app{}", i + 1), is);
            }
            let pin = pin_to(up, "app1", Some("app3"));
            let d = up.choose(Some(pin));
            assert_eq!(d.outcome, Outcome::Failover);
            assert_eq!(name(d.backend), expect);
            assert_eq!(d.failover_from.map(name).as_deref(), Some("app1"));
            assert!(d.set_cookie);
            assert_eq!(d.session.id, pin.session.id, "the session keeps its id");
            assert_eq!(
                d.session.replica, None,
                "the new primary's replica is unknown"
            );
        }
        // Pinned and up: the learned replica stays in the session.
        for i in 1..=4 {
            set(up, &format!("app{i}"), Up);
        }
        let pin = pin_to(up, "app1", Some("app3"));
        let d = up.choose(Some(pin));
        assert_eq!((d.outcome, d.set_cookie), (Outcome::Pinned, false));
        assert_eq!(d.session, pin.session);
        // After the pinned backend failed the request: the learned replica.
        let next = up.after_failure(d, &[d.backend]);
        assert_eq!(name(next.backend), "app3");
        assert_eq!(next.failover_from.map(name).as_deref(), Some("app1"));
    }

    const FOUR: &str = "[listen]\nhttp = [\"127.0.0.1:0\"]\n\n\
         [upstream.shop]\naffinity = \"cookie\"\n\
         [upstream.shop.cookie]\nsecret = \"0123456789abcdef0123456789abcdef\"\n\
         [[upstream.shop.backend]]\nname = \"app1\"\naddr = \"127.0.0.1:1\"\nreplica = \"app2\"\n\
         [[upstream.shop.backend]]\nname = \"app2\"\naddr = \"127.0.0.1:2\"\nreplica = \"app3\"\n\
         [[upstream.shop.backend]]\nname = \"app3\"\naddr = \"127.0.0.1:3\"\nreplica = \"app1\"\n";
    const APP4: &str =
        "[[upstream.shop.backend]]\nname = \"app4\"\naddr = \"127.0.0.1:4\"\nreplica = \"app2\"\n";

    fn cookie_headers(value: &str) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        headers.insert("cookie", format!("limpet={value}").parse().unwrap());
        headers
    }

    #[test]
    fn pins_to_a_removed_backend_fail_over_to_its_replica() {
        let with = Snapshot::build(
            Config::parse(&format!("{FOUR}{APP4}"), "t.toml").unwrap(),
            None,
        );
        let old = &with.upstreams[0];
        let value = old.cookie.as_ref().unwrap().encode(3, &Session::new());
        let without = Snapshot::build(Config::parse(FOUR, "t.toml").unwrap(), Some(&with));
        let up = &without.upstreams[0];
        assert_eq!(up.removed.len(), 1);
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let pin = up.read_pin(&cookie_headers(&value), "/", peer).unwrap();
        let d = up.choose(pin);
        assert_eq!(d.outcome, Outcome::Failover);
        assert_eq!(up.name_of(d.backend), "app2");
        assert_eq!(d.failover_from.map(|f| up.name_of(f)), Some("app4"));
        assert!(d.set_cookie);
        // Remembered through a later reload; forgotten when it comes back.
        let again = Snapshot::build(Config::parse(FOUR, "t.toml").unwrap(), Some(&without));
        assert_eq!(again.upstreams[0].removed[0].replica, Some(1));
        let back = Snapshot::build(
            Config::parse(&format!("{FOUR}{APP4}"), "t.toml").unwrap(),
            Some(&again),
        );
        assert!(back.upstreams[0].removed.is_empty());
        let pin = back.upstreams[0]
            .read_pin(&cookie_headers(&value), "/", peer)
            .unwrap();
        assert_eq!(back.upstreams[0].choose(pin).outcome, Outcome::Pinned);
    }

    #[test]
    fn lapsed_pins_are_ignored_and_ageing_ones_reissued() {
        let toml = FOUR.replace(
            "[upstream.shop.cookie]\n",
            "[upstream.shop.cookie]\nmax_lifetime = \"1h\"\nmax_idle = \"10m\"\n",
        );
        let snap = Snapshot::build(Config::parse(&toml, "t.toml").unwrap(), None);
        let up = &snap.upstreams[0];
        let now = affinity::unix_now();
        let cookie = |created: u32, touched: u32| affinity::CookiePin {
            backend: 0,
            session: Session {
                id: 7,
                created,
                replica: None,
            },
            touched,
            reissue: false,
        };
        let read = |c| up.cookie_pin(c).map(|p| p.reissue);
        assert_eq!(read(cookie(now - 60, now - 60)), Ok(false));
        assert_eq!(read(cookie(now - 3601, now)), Err(Ignored::Expired));
        assert_eq!(read(cookie(now - 700, now - 601)), Err(Ignored::Idle));
        assert_eq!(read(cookie(now - 400, now - 300)), Ok(true), "half idle");
    }
}
