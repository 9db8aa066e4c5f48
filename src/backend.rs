//! A backend of an upstream: its identity from the config and its shared runtime
//! state (health, operator state and drain deadline, in-flight and tunnel
//! counts, active-session sketch, connection pool).
//!
//! [`BackendState`] lives in an `Arc` that a reload carries into the new snapshot when
//! the backend's upstream, name and address are unchanged, so the health checker, the
//! admin API and requests in flight all see one state. Everything on the request path
//! is a relaxed atomic. A backend named by DNS keeps this state when its
//! address changes (`crate::resolve` moves its pool).

use std::net::SocketAddr;
use std::sync::atomic::{
    AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed,
};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::config::BackendAddr;
use crate::pool::Pool;
use crate::sessions::Sessions;

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
    /// When a drain's deadline passes, in milliseconds since [`epoch`] (0: no
    /// deadline) and as the wall clock's Unix milliseconds (for `/status`).
    drain_deadline_ms: AtomicU64,
    drain_deadline_unix_ms: AtomicU64,
    /// Requests whose response has not finished streaming, open tunnels
    /// included (least-requests reads it).
    pub in_flight: AtomicUsize,
    /// Upgraded connections (WebSocket and others) open to this backend.
    pub tunnels: AtomicUsize,
    /// The distinct sessions seen within the upstream's `session_window`.
    pub sessions: Sessions,
    /// Requests answered by this backend since it appeared.
    pub requests: AtomicU64,
    /// Requests pinned to this backend that another one answered (failover or
    /// rebalance): with cookie affinity, about one per session moved away.
    pub failovers: AtomicU64,
    /// Consecutive connection-level failures of live traffic.
    pub passive_failures: AtomicU32,
    /// Milliseconds since [`epoch`] when the backend last came up (for slow start).
    up_since_ms: AtomicU64,
    pub pool: Pool,
    /// The last active health check (cold: written by the checker, read by `/status`).
    pub(crate) last_check: std::sync::Mutex<Option<LastCheck>>,
    /// Why the backend's DNS name has no address (cold: written by
    /// `crate::resolve`, read by the health checker).
    unresolved: std::sync::Mutex<Option<String>>,
    /// A DNS-named backend not resolved yet: it comes up at its first address.
    awaiting_first_address: AtomicBool,
}

impl BackendState {
    /// The state of a new backend: up at `addr`, or (`None`: a DNS name not
    /// resolved yet) down until its name first resolves.
    pub fn new(addr: Option<SocketAddr>) -> Self {
        BackendState {
            health: AtomicU8::new(if addr.is_some() { 0 } else { 1 }),
            operator: AtomicU8::new(0),
            drain_deadline_ms: AtomicU64::new(0),
            drain_deadline_unix_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            tunnels: AtomicUsize::new(0),
            sessions: Sessions::new(crate::config::DEFAULT_SESSION_WINDOW),
            requests: AtomicU64::new(0),
            failovers: AtomicU64::new(0),
            passive_failures: AtomicU32::new(0),
            // Backends start up, at full weight.
            up_since_ms: AtomicU64::new(0),
            pool: Pool::new(addr),
            last_check: std::sync::Mutex::new(None),
            unresolved: std::sync::Mutex::new(
                addr.is_none().then(|| "dns: not resolved yet".into()),
            ),
            awaiting_first_address: AtomicBool::new(addr.is_none()),
        }
    }

    /// Why the backend's DNS name has no address, if it has none.
    pub fn unresolved(&self) -> Option<String> {
        self.unresolved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The backend's DNS name resolved to `addr`: new connections go there
    /// (the pool moves only when the address changed). A backend that had never
    /// resolved comes up at full weight (as a new backend does); one whose name failed to
    /// resolve stays down until health checks pass. Returns the address it
    /// left, when it moved.
    pub fn resolved(&self, addr: SocketAddr) -> Option<Option<SocketAddr>> {
        let was = self.pool.addr();
        if was == Some(addr) {
            return None;
        }
        *self.unresolved.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.pool.move_to(Some(addr));
        if self.awaiting_first_address.swap(false, Relaxed) {
            self.set_health(Health::Up);
            // New, not recovering: at full weight at once (no slow start).
            self.up_since_ms.store(0, Relaxed);
        }
        Some(was)
    }

    /// The backend's DNS name resolved to nothing (`reason` says why): it is
    /// down and has no address until it resolves again. True when it was up.
    pub fn unresolvable(&self, reason: String) -> bool {
        *self.unresolved.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
        self.pool.move_to(None);
        self.set_health(Health::Down)
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

    /// Sets the operator state; a drain set this way has no deadline.
    pub fn set_operator(&self, op: Operator) {
        let value = match op {
            Operator::Ready => 0,
            Operator::Draining => 1,
            Operator::Maintenance => 2,
        };
        self.operator.store(value, Relaxed);
        self.drain_deadline_ms.store(0, Relaxed);
    }

    /// Drains until `after` from now: the backend keeps its pinned clients
    /// until then, and from then on they fail over as if it were down.
    pub fn drain_until(&self, after: Duration) {
        let after_ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX / 2);
        let unix = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        self.drain_deadline_unix_ms
            .store(unix.saturating_add(after_ms), Relaxed);
        self.drain_deadline_ms
            .store(millis_since_epoch().saturating_add(after_ms), Relaxed);
        self.operator.store(1, Relaxed);
    }

    /// A running drain's deadline: when it passes (wall clock) and the time
    /// left (zero once passed). `None` when not draining, or draining without
    /// a deadline.
    pub fn drain_deadline(&self) -> Option<(SystemTime, Duration)> {
        if self.operator() != Operator::Draining {
            return None;
        }
        let at = self.drain_deadline_ms.load(Relaxed);
        if at == 0 {
            return None;
        }
        let left = Duration::from_millis(at.saturating_sub(millis_since_epoch()));
        let unix = self.drain_deadline_unix_ms.load(Relaxed);
        Some((SystemTime::UNIX_EPOCH + Duration::from_millis(unix), left))
    }

    /// Draining, and its deadline has passed: pinned clients fail over.
    fn drain_expired(&self) -> bool {
        let at = self.drain_deadline_ms.load(Relaxed);
        at != 0 && self.operator() == Operator::Draining && millis_since_epoch() >= at
    }

    pub fn state(&self) -> State {
        match (self.health(), self.operator()) {
            (_, Operator::Maintenance) => State::Maintenance,
            (Health::Down, _) => State::Down,
            (Health::Up, Operator::Draining) => State::Draining,
            (Health::Up, Operator::Ready) => State::Up,
        }
    }

    /// May serve clients pinned to it: up, or draining before its deadline.
    pub fn is_available(&self) -> bool {
        match self.state() {
            State::Up => true,
            State::Draining => !self.drain_expired(),
            State::Down | State::Maintenance => false,
        }
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

impl BackendState {
    /// A response head came from this backend for a request of `session`
    /// (0: none): counts the request and the session, and clears the count of
    /// passive failures.
    pub fn answered(&self, session: u64) {
        // Read first: a store on every request would bounce the cache line
        // between the cores serving this backend even when nothing failed.
        if self.passive_failures.load(Relaxed) != 0 {
            self.passive_failures.store(0, Relaxed);
        }
        self.requests.fetch_add(1, Relaxed);
        if session != 0 {
            self.sessions.note(session, millis_since_epoch());
        }
    }

    /// A new session was given to this backend (least-sessions counts it
    /// before its first answer).
    pub fn session_started(&self, session: u64) {
        if session != 0 {
            self.sessions.note(session, millis_since_epoch());
        }
    }

    /// The estimated number of distinct sessions within the window.
    pub fn active_sessions(&self) -> u64 {
        self.sessions.estimate(millis_since_epoch())
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
    /// As configured: an IP address, or a DNS name (the current address is
    /// `state.pool.addr()`).
    pub addr: BackendAddr,
    pub addr_text: String,
    pub weight: u32,
    /// Index of the replica backend in the same upstream.
    pub replica: Option<usize>,
    /// The app-cookie route suffix naming this backend.
    pub route: String,
    /// Each connection starts with a PROXY v2 header carrying the client's
    /// address; none is pooled (see `crate::pool`).
    pub send_proxy: bool,
    /// TLS to this backend (`[upstream.NAME.tls]`), with its server name.
    pub tls: Option<crate::pool::TlsTarget>,
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

/// Counts an upgraded connection (a WebSocket) in a backend's `tunnels` until
/// dropped. The tunnel's request keeps its [`InFlight`] while it is open too.
#[derive(Debug)]
pub struct Tunnel(Arc<BackendState>);

impl Tunnel {
    pub fn open(state: &Arc<BackendState>) -> Self {
        state.tunnels.fetch_add(1, Relaxed);
        Tunnel(state.clone())
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.0.tunnels.fetch_sub(1, Relaxed);
    }
}
