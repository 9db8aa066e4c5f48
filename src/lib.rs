//! limpet: a sticky-session aware HTTP load balancer that knows where each
//! backend's sessions are replicated.
//!
//! # Layout
//!
//! A request flows through the modules in this order:
//!
//! ```text
//! listener  accept, connection limit; TLS -> hyper-util conn::auto (HTTP/1.1, h2)
//! h1        plain connections: limpet's own HTTP/1.1 engine, which walks a
//!           request through the same steps as `proxy` with the same functions
//!           and hands what it does not take on (h2c, upgrades, ...) to hyper
//!   proxy   the one function that walks a hyper request through the flow:
//!     router     (host, path) -> upstream                       404
//!     affinity   cookie / client IP / app cookie -> a pin
//!     state      Upstream::choose: pinned, replica chain, or
//!     balancer   a new pick (least-requests, round-robin, random) 503
//!     upstream   pooled HTTP/1.1 send, retries, timeouts        502 / 504
//!     affinity   Set-Cookie when the pin is new or changed
//!   error   ProxyError -> status, in one place
//! access_log  beside the flow: one line per request, written with the metrics
//! ```
//!
//! State: one `ArcSwap<state::Snapshot>` holds the whole running configuration; a
//! request loads it once. Each backend's runtime state ([`backend::BackendState`]:
//! health, operator state, in-flight count, pool) is an `Arc` of atomics shared
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
mod h1;
pub mod health;
pub mod listener;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod router;
pub mod state;
pub mod tls;
pub mod upstream;

pub use app::Limpet;
pub use config::Config;
