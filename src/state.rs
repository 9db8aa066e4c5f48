//! The running configuration as one immutable [`Snapshot`] (routes, upstreams,
//! backends, cookie codecs) behind an `ArcSwap`, and the routing decision of SPEC
//! section 3 for one upstream: pinned, failover along the replica chain, or balance.
//!
//! A request loads the snapshot once and keeps that `Arc` until it finishes, so a
//! reload never changes the rules under a request in flight. Backend runtime state
//! (health, operator state, pool) is carried from the previous snapshot when the
//! upstream, the backend's name and its address are unchanged.

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use ahash::AHashMap;
use arc_swap::ArcSwap;

pub use crate::affinity::Outcome;
use crate::affinity::{self, CookieCodec};
use crate::backend::{Backend, BackendState};
use crate::balancer::{self, Balancer};
use crate::config::{Affinity, Config, Failover, Timeouts, UpstreamConfig};
use crate::maglev::Maglev;
use crate::router::Router;
use crate::series::UpstreamSeries;

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
        let tls = config
            .tls
            .as_ref()
            .and_then(|t| match crate::tls::server_config(&t.keys) {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::error!("TLS configuration unusable: {e}");
                    None
                }
            });
        Snapshot {
            config: Arc::new(config),
            router,
            upstreams,
            loaded_at: SystemTime::now(),
            tls,
        }
    }

    pub fn upstream(&self, name: &str) -> Option<&Upstream> {
        self.upstreams.iter().find(|u| &*u.name == name)
    }
}

/// What a request carried that names a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pin {
    pub backend: usize,
    /// The affinity cookie must be re-issued even if the backend stays the same.
    pub reissue: bool,
}

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub backend: usize,
    pub outcome: Outcome,
    /// The pinned backend this request fails over from (`x-limpet-failover-from`).
    pub failover_from: Option<usize>,
    /// Send a Set-Cookie pinning the client to `backend`.
    pub set_cookie: bool,
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
    by_route: AHashMap<String, usize>,
    /// Present when `affinity = "cookie"`.
    pub cookie: Option<CookieCodec>,
    balancer: Balancer,
    /// The ip-hash table over all backends, when `affinity = "ip-hash"`.
    ip_hash: Option<Maglev>,
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
                Backend {
                    name: b.name.as_str().into(),
                    addr: b.addr,
                    addr_text: b.addr_text.clone(),
                    weight: b.weight,
                    replica: b.replica.as_deref().and_then(|r| index.get(r).copied()),
                    route: b.route.clone(),
                    state: carried.unwrap_or_else(|| Arc::new(BackendState::new(b.addr))),
                }
            })
            .collect();
        let cookie = (config.affinity == Affinity::Cookie).then(|| {
            let current = config
                .cookie
                .secret
                .as_deref()
                .unwrap_or_else(|| process_secret());
            let secrets = std::iter::once(current)
                .chain(config.cookie.previous_secrets.iter().map(Vec::as_slice));
            let names: Vec<&str> = backends.iter().map(|b| &*b.name).collect();
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
        Upstream {
            name: config.name.as_str().into(),
            timeouts,
            by_route: backends
                .iter()
                .enumerate()
                .map(|(i, b)| (b.route.clone(), i))
                .collect(),
            series: UpstreamSeries::new(backends.len()),
            balancer: Balancer::new(config.balance, &backends, config.health.slow_start),
            ip_hash: (config.affinity == Affinity::IpHash)
                .then(|| Maglev::new(backends.iter().map(|b| (&*b.name, b.weight))))
                .flatten(),
            cookie,
            backends,
            config: config.clone(),
        }
    }

    /// The timeouts of a request to this upstream's backends.
    pub fn timeouts(&self) -> BackendTimeouts {
        self.timeouts
    }

    /// The backend a request is pinned to by this upstream's affinity, if any.
    pub fn read_pin(
        &self,
        headers: &impl affinity::HeaderLookup,
        path: &str,
        peer: IpAddr,
    ) -> Option<Pin> {
        match self.config.affinity {
            Affinity::Cookie => {
                let codec = self.cookie.as_ref()?;
                affinity::find_cookie(headers, &self.config.cookie.name, |v| codec.decode_bytes(v))
                    .map(|p| Pin {
                        backend: p.backend,
                        reissue: p.stale_key,
                    })
            }
            Affinity::IpHash => {
                let ip = affinity::client_ip(peer, headers, &self.config.ip_hash.trusted_proxies);
                // Every backend, available or not: `choose` applies the failover rules.
                let table = self.ip_hash.as_ref()?;
                Some(Pin {
                    backend: table.get(balancer::ip_key(ip)),
                    reissue: false,
                })
            }
            Affinity::AppCookie => {
                let c = &self.config.app_cookie;
                affinity::app_route(headers, path, &c.name, &c.separator)
                    .into_iter()
                    .find_map(|r| self.by_route.get(r).copied())
                    .map(|backend| Pin {
                        backend,
                        reissue: false,
                    })
            }
            Affinity::None => None,
        }
    }

    /// SPEC section 3: the backend for a request with (or without) a pin.
    pub fn choose(&self, pin: Option<Pin>) -> Decision {
        let sets_cookie = self.cookie.is_some();
        match pin {
            Some(pin) if self.backends[pin.backend].state.is_available() => Decision {
                backend: pin.backend,
                outcome: Outcome::Pinned,
                failover_from: None,
                set_cookie: sets_cookie && pin.reissue,
            },
            Some(pin) => self.fail_over(pin.backend, &[pin.backend]),
            None => match self.balancer.pick(&self.backends, &[]) {
                Some(backend) => Decision {
                    backend,
                    outcome: Outcome::New,
                    failover_from: None,
                    set_cookie: sets_cookie,
                },
                None => self.rejected(None),
            },
        }
    }

    /// The next target after `failed` could not be reached, trying none of `tried`.
    /// A request that was pinned (or failing over) fails over from its pin; a new
    /// session is balanced again.
    pub fn after_failure(&self, previous: Decision, tried: &[usize]) -> Decision {
        match previous.outcome {
            Outcome::New | Outcome::Rebalanced if previous.failover_from.is_none() => {
                match self.balancer.pick(&self.backends, tried) {
                    Some(backend) => Decision {
                        backend,
                        ..previous
                    },
                    None => self.rejected(None),
                }
            }
            _ => {
                let from = previous.failover_from.unwrap_or(previous.backend);
                let mut next = self.fail_over(previous.backend, tried);
                if next.outcome != Outcome::Rejected {
                    next.failover_from = Some(from);
                }
                next
            }
        }
    }

    /// The pinned backend `from` is unavailable: apply the `failover` policy.
    fn fail_over(&self, from: usize, tried: &[usize]) -> Decision {
        let sets_cookie = self.cookie.is_some();
        if self.config.failover == Failover::Reject {
            return self.rejected(Some(from));
        }
        if self.config.failover == Failover::Replica {
            if let Some(r) = self
                .replica_chain(from)
                .find(|&r| !tried.contains(&r) && self.backends[r].state.is_available())
            {
                return Decision {
                    backend: r,
                    outcome: Outcome::Failover,
                    failover_from: Some(from),
                    set_cookie: sets_cookie,
                };
            }
        }
        match self.balancer.pick(&self.backends, tried) {
            Some(backend) => Decision {
                backend,
                outcome: Outcome::Rebalanced,
                failover_from: Some(from),
                set_cookie: sets_cookie,
            },
            None => self.rejected(Some(from)),
        }
    }

    fn rejected(&self, from: Option<usize>) -> Decision {
        Decision {
            backend: usize::MAX,
            outcome: Outcome::Rejected,
            failover_from: from,
            set_cookie: false,
        }
    }

    /// `from`'s replica, its replica, ... without cycles and without `from` itself.
    pub fn replica_chain(&self, from: usize) -> impl Iterator<Item = usize> + '_ {
        let mut seen = vec![false; self.backends.len()];
        seen[from] = true;
        let mut next = self.backends[from].replica;
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

    pub fn backend_index(&self, name: &str) -> Option<usize> {
        self.backends.iter().position(|b| &*b.name == name)
    }
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
    }

    fn set(up: &Upstream, name: &str, is: Is) {
        let state = &up.backends[up.backend_index(name).unwrap()].state;
        let (health, operator) = match is {
            Is::Up => (Health::Up, Operator::Ready),
            Is::Down => (Health::Down, Operator::Ready),
            Is::Draining => (Health::Up, Operator::Draining),
            Is::Maintenance => (Health::Up, Operator::Maintenance),
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

    #[test]
    fn a_forged_or_foreign_pin_is_no_pin() {
        let snap = upstream("replica");
        let up = &snap.upstreams[0];
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let genuine = up.cookie.as_ref().unwrap().encode(2);
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
            let pin = up.read_pin(&headers, "/", peer);
            assert_eq!(pin.map(|p| p.backend), pinned, "{cookie}");
            if pinned.is_none() {
                assert_eq!(up.choose(pin).outcome, Outcome::New, "{cookie}");
            }
        }
    }
}
