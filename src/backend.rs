//! A backend of an upstream: its identity from the config and its shared runtime
//! state (health, operator state, in-flight count, connection pool).
//!
//! [`BackendState`] lives in an `Arc` that a reload carries into the new snapshot when
//! the backend's upstream, name and address are unchanged, so the health checker, the
//! admin API and requests in flight all see one state. Everything on the request path
//! is a relaxed atomic.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::pool::Pool;

/// What health checks (active or passive) last concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Up,
    Down,
}

/// What an operator set through the admin API; kept across reloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    Ready,
    Draining,
    Maintenance,
}

/// The state shown in `/status` and the `limpet_backend_state` metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Up,
    Down,
    Draining,
    Maintenance,
}

impl State {
    pub const ALL: [State; 4] = [State::Up, State::Down, State::Draining, State::Maintenance];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Up => "up",
            State::Down => "down",
            State::Draining => "draining",
            State::Maintenance => "maintenance",
        }
    }
}

/// Runtime state of one backend, shared by requests, the health checker and admin.
#[derive(Debug)]
pub struct BackendState {
    health: AtomicU8,
    operator: AtomicU8,
    /// Requests whose response has not finished streaming (least-requests reads it).
    pub in_flight: AtomicUsize,
    /// Requests answered by this backend since it appeared.
    pub requests: AtomicU64,
    /// Consecutive connection-level failures of live traffic.
    pub passive_failures: AtomicU32,
    /// Milliseconds since [`epoch`] when the backend last came up (for slow start).
    up_since_ms: AtomicU64,
    pub pool: Pool,
    /// The last active health check (cold: written by the checker, read by `/status`).
    pub(crate) last_check: std::sync::Mutex<Option<LastCheck>>,
}

impl BackendState {
    pub fn new(addr: SocketAddr) -> Self {
        BackendState {
            health: AtomicU8::new(0),
            operator: AtomicU8::new(0),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            passive_failures: AtomicU32::new(0),
            // Backends start up, at full weight.
            up_since_ms: AtomicU64::new(0),
            pool: Pool::new(addr),
            last_check: std::sync::Mutex::new(None),
        }
    }

    pub fn health(&self) -> Health {
        if self.health.load(Relaxed) == 0 {
            Health::Up
        } else {
            Health::Down
        }
    }

    /// Sets the health; returns true when it changed.
    pub fn set_health(&self, health: Health) -> bool {
        let value = match health {
            Health::Up => 0,
            Health::Down => 1,
        };
        let changed = self.health.swap(value, Relaxed) != value;
        if changed && health == Health::Up {
            self.up_since_ms.store(millis_since_epoch(), Relaxed);
            self.passive_failures.store(0, Relaxed);
        }
        if changed && health == Health::Down {
            self.pool.clear();
        }
        changed
    }

    pub fn operator(&self) -> Operator {
        match self.operator.load(Relaxed) {
            0 => Operator::Ready,
            1 => Operator::Draining,
            _ => Operator::Maintenance,
        }
    }

    pub fn set_operator(&self, op: Operator) {
        let value = match op {
            Operator::Ready => 0,
            Operator::Draining => 1,
            Operator::Maintenance => 2,
        };
        self.operator.store(value, Relaxed);
    }

    pub fn state(&self) -> State {
        match (self.health(), self.operator()) {
            (_, Operator::Maintenance) => State::Maintenance,
            (Health::Down, _) => State::Down,
            (Health::Up, Operator::Draining) => State::Draining,
            (Health::Up, Operator::Ready) => State::Up,
        }
    }

    /// May serve clients pinned to it: up, or draining.
    pub fn is_available(&self) -> bool {
        matches!(self.state(), State::Up | State::Draining)
    }

    /// May take new sessions: up, not draining, not in maintenance.
    pub fn is_ready(&self) -> bool {
        self.state() == State::Up
    }

    /// The fraction (0..=1] of its weight a recovered backend gets while `slow_start`
    /// ramps it up; 1 outside the ramp.
    pub fn ramp(&self, slow_start: Duration) -> f64 {
        let since = self.up_since_ms.load(Relaxed);
        if since == 0 || slow_start.is_zero() {
            return 1.0;
        }
        let elapsed = millis_since_epoch().saturating_sub(since) as f64;
        (elapsed / slow_start.as_millis() as f64).clamp(0.05, 1.0)
    }
}

/// A process-wide monotonic origin for the millisecond timestamps kept in atomics.
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn millis_since_epoch() -> u64 {
    // +1 so that 0 can mean "never".
    epoch().elapsed().as_millis() as u64 + 1
}

/// A backend as configured, with its shared runtime state.
#[derive(Debug)]
pub struct Backend {
    pub name: Arc<str>,
    pub addr: SocketAddr,
    pub addr_text: String,
    pub weight: u32,
    /// Index of the replica backend in the same upstream.
    pub replica: Option<usize>,
    /// The app-cookie route suffix naming this backend.
    pub route: String,
    /// Each connection starts with a PROXY v2 header carrying the client's
    /// address; none is pooled (see `crate::pool`).
    pub send_proxy: bool,
    pub state: Arc<BackendState>,
}

/// The last active check of a backend, for `/status`.
#[derive(Debug, Clone)]
pub struct LastCheck {
    pub ok: bool,
    pub latency: Duration,
    pub at: SystemTime,
    /// Why it failed, when it did.
    pub reason: Option<String>,
}

impl BackendState {
    pub fn set_last_check(&self, check: LastCheck) {
        *self.last_check.lock().unwrap_or_else(|e| e.into_inner()) = Some(check);
    }

    pub fn last_check(&self) -> Option<LastCheck> {
        self.last_check
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Counts a request in a backend's `in_flight` until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<BackendState>);

impl InFlight {
    pub fn start(state: &Arc<BackendState>) -> Self {
        state.in_flight.fetch_add(1, Relaxed);
        InFlight(state.clone())
    }

    /// The backend's state the request counts in.
    pub fn state(&self) -> &Arc<BackendState> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}
