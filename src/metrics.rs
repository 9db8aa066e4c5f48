//! The Prometheus metrics of SPEC section 7, registered on a registry passed in (no
//! global registry: every test's limpet starts at zero).

use std::sync::{Arc, Mutex};

use prometheus::{
    GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use crate::affinity::Outcome;
use crate::backend::State;
pub use crate::series::code_class;
use crate::state::Snapshot;

#[derive(Debug, Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub duration: HistogramVec,
    pub backend_up: IntGaugeVec,
    pub backend_state: IntGaugeVec,
    pub backend_in_flight: IntGaugeVec,
    pub backend_tunnels: IntGaugeVec,
    pub backend_active_sessions: IntGaugeVec,
    pub backend_drain_deadline: GaugeVec,
    pub affinity: IntCounterVec,
    pub pins_ignored: IntCounterVec,
    pub session_replica_invalid: IntCounterVec,
    pub retries: IntCounterVec,
    pub health_checks: IntCounterVec,
    pub downstream_connections: IntGaugeVec,
    pub proxy_protocol_rejected: IntCounterVec,
    pub config_reloads: IntCounterVec,
    pub build_info: IntGaugeVec,
    /// Serialises scrapes: [`Metrics::scrape`] resets and refills the state gauges,
    /// and a concurrent scrape must not see them half filled.
    scrape: Arc<Mutex<()>>,
}

impl Metrics {
    pub fn new(registry: Registry) -> prometheus::Result<Metrics> {
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<IntCounterVec> {
                let c = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let gauge = |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<IntGaugeVec> {
            let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "limpet_request_duration_seconds",
                "Time from the request head to the response head, per backend.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ]),
            &["upstream", "backend"],
        )?;
        registry.register(Box::new(duration.clone()))?;
        let drain_deadline = GaugeVec::new(
            Opts::new(
                "limpet_backend_drain_deadline_seconds",
                "Seconds left until a draining backend's deadline (0 once passed); \
                 only for backends draining with a deadline.",
            ),
            &["upstream", "backend"],
        )?;
        registry.register(Box::new(drain_deadline.clone()))?;
        let m = Metrics {
            requests: counter(
                "limpet_requests_total",
                "Client requests, by the backend that answered and the status class.",
                &["upstream", "backend", "code"],
            )?,
            duration,
            backend_up: gauge(
                "limpet_backend_up",
                "1 when the backend is healthy.",
                &["upstream", "backend"],
            )?,
            backend_state: gauge(
                "limpet_backend_state",
                "1 on the backend's current state.",
                &["upstream", "backend", "state"],
            )?,
            backend_in_flight: gauge(
                "limpet_backend_in_flight",
                "Requests in flight to the backend.",
                &["upstream", "backend"],
            )?,
            backend_tunnels: gauge(
                "limpet_backend_tunnels",
                "Upgraded connections (WebSocket) open to the backend.",
                &["upstream", "backend"],
            )?,
            backend_active_sessions: gauge(
                "limpet_backend_active_sessions",
                "Estimated distinct sessions the backend served within the upstream's session_window.",
                &["upstream", "backend"],
            )?,
            backend_drain_deadline: drain_deadline,
            affinity: counter(
                "limpet_affinity_total",
                "Routing decisions by outcome.",
                &["upstream", "outcome"],
            )?,
            pins_ignored: counter(
                "limpet_pins_ignored_total",
                "Pins a request carried that were not used: expired (cookie.max_lifetime) or idle (cookie.max_idle).",
                &["upstream", "reason"],
            )?,
            session_replica_invalid: counter(
                "limpet_session_replica_invalid_total",
                "x-session-replica answers that named no other backend of the upstream (ignored).",
                &["upstream"],
            )?,
            retries: counter(
                "limpet_retries_total",
                "Retries, labelled with the backend that failed.",
                &["upstream", "backend"],
            )?,
            health_checks: counter(
                "limpet_health_checks_total",
                "Active health checks by result.",
                &["upstream", "backend", "result"],
            )?,
            downstream_connections: gauge(
                "limpet_downstream_connections",
                "Open client connections per listener.",
                &["listener"],
            )?,
            proxy_protocol_rejected: counter(
                "limpet_proxy_protocol_rejected_total",
                "Connections closed for a missing, malformed or late PROXY header, from a `proxy_protocol.from` source.",
                &["listener", "reason"],
            )?,
            config_reloads: counter(
                "limpet_config_reloads_total",
                "Configuration reloads by result.",
                &["result"],
            )?,
            build_info: gauge(
                "limpet_build_info",
                "Always 1; the version label says which.",
                &["version"],
            )?,
            registry,
            scrape: Arc::new(Mutex::new(())),
        };
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for result in ["ok", "error"] {
            m.config_reloads.with_label_values(&[result]);
        }
        Ok(m)
    }

    /// A fresh registry with the process collector and limpet's metrics.
    pub fn with_process_metrics() -> prometheus::Result<Metrics> {
        let registry = Registry::new();
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Metrics::new(registry)
    }

    /// Makes every label combination of a snapshot visible at zero, so that rates
    /// and alerts work from the first scrape.
    pub fn register_snapshot(&self, snap: &Snapshot) {
        for up in &snap.upstreams {
            for outcome in Outcome::ALL {
                self.affinity
                    .with_label_values(&[&up.name, outcome.as_str()]);
            }
            for ignored in crate::state::Ignored::ALL {
                self.pins_ignored
                    .with_label_values(&[&up.name, ignored.as_str()]);
            }
            self.session_replica_invalid.with_label_values(&[&up.name]);
            for b in &up.backends {
                self.retries.with_label_values(&[&up.name, &b.name]);
                for code in ["1xx", "2xx", "3xx", "4xx", "5xx"] {
                    self.requests.with_label_values(&[&up.name, &b.name, code]);
                }
                for result in ["ok", "fail"] {
                    self.health_checks
                        .with_label_values(&[&up.name, &b.name, result]);
                }
            }
        }
    }

    /// Refreshes the gauges that mirror backend state (called before each scrape).
    pub fn update_gauges(&self, snap: &Snapshot) {
        self.backend_up.reset();
        self.backend_state.reset();
        self.backend_in_flight.reset();
        self.backend_tunnels.reset();
        self.backend_active_sessions.reset();
        self.backend_drain_deadline.reset();
        for up in &snap.upstreams {
            for b in &up.backends {
                let state = b.state.state();
                let labels = [&*up.name, &*b.name];
                self.backend_tunnels
                    .with_label_values(&labels)
                    .set(b.state.tunnels.load(std::sync::atomic::Ordering::Relaxed) as i64);
                self.backend_active_sessions
                    .with_label_values(&labels)
                    .set(b.state.active_sessions() as i64);
                if let Some((_, left)) = b.state.drain_deadline() {
                    self.backend_drain_deadline
                        .with_label_values(&labels)
                        .set(left.as_secs_f64());
                }
                self.backend_up
                    .with_label_values(&labels)
                    .set((b.state.health() == crate::backend::Health::Up) as i64);
                self.backend_in_flight
                    .with_label_values(&labels)
                    .set(b.state.in_flight.load(std::sync::atomic::Ordering::Relaxed) as i64);
                for s in State::ALL {
                    self.backend_state
                        .with_label_values(&[&up.name, &b.name, s.as_str()])
                        .set((s == state) as i64);
                }
            }
        }
    }

    /// Refreshes the state gauges from `snap` and renders every metric: what
    /// `GET /metrics` answers.
    pub fn scrape(&self, snap: &Snapshot) -> String {
        let _one_at_a_time = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        self.update_gauges(snap);
        self.render()
    }

    /// Drops the series of backends (and upstreams) that `old` had and `new` has
    /// not, so that a fleet whose backends come and go does not grow the exposition
    /// forever. Backends that remain keep their counters.
    pub fn forget_removed(&self, old: &Snapshot, new: &Snapshot) {
        for up in &old.upstreams {
            let kept = new.upstream(&up.name);
            if kept.is_none() {
                for outcome in Outcome::ALL {
                    let _ = self
                        .affinity
                        .remove_label_values(&[&up.name, outcome.as_str()]);
                }
                for ignored in crate::state::Ignored::ALL {
                    let _ = self
                        .pins_ignored
                        .remove_label_values(&[&up.name, ignored.as_str()]);
                }
                let _ = self
                    .session_replica_invalid
                    .remove_label_values(&[&up.name]);
            }
            for b in &up.backends {
                if kept.is_some_and(|k| k.backend_index(&b.name).is_some()) {
                    continue;
                }
                let labels = [&*up.name, &*b.name];
                let _ = self.retries.remove_label_values(&labels);
                let _ = self.duration.remove_label_values(&labels);
                for result in ["ok", "fail"] {
                    let _ = self
                        .health_checks
                        .remove_label_values(&[&up.name, &b.name, result]);
                }
                for code in ["1xx", "2xx", "3xx", "4xx", "5xx"] {
                    let _ = self
                        .requests
                        .remove_label_values(&[&up.name, &b.name, code]);
                }
            }
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let families = self.registry.gather();
        prometheus::TextEncoder::new()
            .encode_to_string(&families)
            .unwrap_or_default()
    }
}

/// A connection counted in `limpet_downstream_connections` until dropped.
#[derive(Debug)]
pub struct ConnectionGauge(IntGauge);

impl ConnectionGauge {
    /// The listener's series, at 0 until its first connection: it exists from
    /// the start.
    pub fn register(metrics: &Metrics, listener: &str) {
        metrics
            .downstream_connections
            .with_label_values(&[listener])
            .set(0);
    }

    /// The listener's series, looked up once: [`ListenerGauge::open`] then
    /// counts a connection without a label lookup.
    pub fn of(metrics: &Metrics, listener: &str) -> ListenerGauge {
        ListenerGauge(
            metrics
                .downstream_connections
                .with_label_values(&[listener]),
        )
    }
}

/// One listener's `limpet_downstream_connections` series.
#[derive(Debug)]
pub struct ListenerGauge(IntGauge);

impl ListenerGauge {
    pub fn open(&self) -> ConnectionGauge {
        self.0.inc();
        ConnectionGauge(self.0.clone())
    }
}

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}
