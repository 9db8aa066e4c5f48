//! limpet: a sticky-session aware HTTP load balancer that knows where each
//! backend's sessions are replicated.
//!
//! # Layout
//!
//! Modules form layers; each imports only those below it (no import circles:
//! `python3 ../shared/tools/modcycles.py src`):
//!
//! ```text
//! app        composition root: listeners, health, admin and reload tasks
//! listener   accept, connection limit, TLS; picks the engine at a
//!            connection's first bytes
//! h1  h2     the engines: limpet's HTTP/1 engine for every HTTP/1.x
//!            connection (plain and TLS), hyper's HTTP/2; they move bytes
//! flow       the one request flow (SPEC sections 3-4) both engines call:
//!            decide (route, pin, choose), Attempts (retry rules), policy
//!            (header rules, two writers), record (metrics, access log)
//! admin  reload  health  resolve  metrics  access_log   beside the flow
//! state      Snapshot: router, upstreams, backends; Upstream::choose
//! router  balancer  hash_ring  affinity  backend  sessions  series  pool
//! error  shutdown  limit
//! park       long-idle plain connections, parked out of the runtime
//! config     the TOML file's shape and validation (tls: certificates)
//! upgrade    sockets handed over at a binary upgrade (or by systemd)
//! proxy_protocol  the PROXY header read by the listener, written to backends
//! ```
//!
//! A request: `listener` -> `h1` or `h2` -> `flow::Proxy::decide` (`router`,
//! `affinity` pin (ip-hash: `hash_ring`), `state::Upstream::choose`, `balancer`)
//! -> `flow::Attempts` over a `pool` socket -> the response written under `flow::policy` ->
//! `flow::Proxy::record`. limpet's own answers are `error::ProxyError`s.
//!
//! State: one `ArcSwap<state::Snapshot>` holds the whole running configuration; a
//! request loads it once. Each backend's runtime state ([`backend::BackendState`]:
//! health, operator state, in-flight and tunnel counts, active-session sketch, pool) is an `Arc` of atomics shared
//! with the health checker and the admin API and carried across reloads.
//! [`app::Limpet`] wires it all together.

#![forbid(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod affinity;
pub mod app;
pub mod backend;
pub mod balancer;
pub mod config;
pub mod error;
pub mod flow;
mod h1;
mod h2;
pub mod hash_ring;
pub mod health;
pub mod limit;
pub mod listener;
pub mod metrics;
mod park;
pub mod pool;
pub mod proxy_protocol;
pub mod reload;
pub mod resolve;
pub mod router;
pub mod series;
pub mod sessions;
mod shutdown;
pub mod state;
pub mod tls;
pub mod upgrade;
pub mod uri;

pub use app::Limpet;
pub use config::Config;
