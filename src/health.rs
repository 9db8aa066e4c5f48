//! Backend health: passive marking from live traffic, and the active checker task
//! that owns the rise/fall counters (SPEC section 5).
//!
//! The checker runs one task per backend of the current snapshot; when the snapshot
//! is swapped (reload) the tasks are replaced. Health itself lives in the backend's
//! shared [`crate::backend::BackendState`], so it carries over a reload.

use std::fmt::Display;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{header, HeaderValue, Request};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::backend::{Backend, Health, LastCheck};
use crate::config::HealthConfig;
use crate::metrics::Metrics;
use crate::state::{SharedState, Upstream};

/// A connection-level failure of live traffic to `upstream.backends[index]` (no
/// connection, a broken exchange, garbage for an answer, or no answer within the
/// response timeout): after `passive_fall` in a row the backend is marked down
/// at once.
pub fn passive_failure(upstream: &Upstream, index: usize, cause: &dyn Display) {
    let backend = &upstream.backends[index];
    let failures = backend
        .state
        .passive_failures
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        + 1;
    if failures >= upstream.config.health.passive_fall && backend.state.set_health(Health::Down) {
        tracing::warn!(
            upstream = %upstream.name,
            backend = %backend.name,
            reason = %cause,
            "backend down: {failures} consecutive connection failure(s) of live traffic, the last with {cause}"
        );
        warn_if_all_down(upstream);
    }
}

/// After a backend went down: if it was the last one up, say that every
/// request to the upstream now gets 503 (the warnings before say why each
/// went down).
pub fn warn_if_all_down(upstream: &Upstream) {
    if upstream
        .backends
        .iter()
        .all(|b| b.state.health() == Health::Down)
    {
        tracing::warn!(
            upstream = %upstream.name,
            "every backend of the upstream is down: its requests get 503 until one comes back (health path {})",
            upstream.config.health.path
        );
    }
}

/// Runs the active checks of the current snapshot until `shutdown`, restarting
/// them whenever `generation` changes (a reload).
pub async fn run(
    state: SharedState,
    metrics: Metrics,
    mut generation: watch::Receiver<u64>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let snap = state.load_full();
        let mut tasks = JoinSet::new();
        for upstream in &snap.upstreams {
            for i in 0..upstream.backends.len() {
                let snap = snap.clone();
                let metrics = metrics.clone();
                let upstream_name = upstream.name.clone();
                tasks.spawn(async move {
                    if let Some(up) = snap.upstream(&upstream_name) {
                        check_loop(up, &up.backends[i], &metrics).await;
                    }
                });
            }
        }
        tokio::select! {
            changed = generation.changed() => if changed.is_err() { return },
            _ = crate::shutdown::stopped(&mut shutdown) => return,
        }
        tasks.abort_all();
    }
}

async fn check_loop(upstream: &Upstream, backend: &Backend, metrics: &Metrics) {
    let cfg = &upstream.config.health;
    let mut counter = RiseFall::new(cfg.rise, cfg.fall);
    let checks = |result: &str| {
        metrics
            .health_checks
            .with_label_values(&[&*upstream.name, &*backend.name, result])
    };
    let (ok_checks, failed_checks) = (checks("ok"), checks("fail"));
    // Spread the first checks over one interval so that they do not align.
    tokio::time::sleep(cfg.interval.mul_f64(fastrand::f64())).await;
    loop {
        let started = Instant::now();
        let result = check(backend, cfg).await;
        let latency = started.elapsed();
        if result.is_ok() {
            ok_checks.inc();
        } else {
            failed_checks.inc();
        }
        backend.state.set_last_check(LastCheck {
            ok: result.is_ok(),
            latency,
            at: SystemTime::now(),
            reason: result.as_ref().err().cloned(),
        });
        let health = backend.state.health();
        if let Some(next) = counter.observe(result.is_ok(), health) {
            if backend.state.set_health(next) {
                match &result {
                    Ok(()) => tracing::warn!(
                        upstream = %upstream.name,
                        backend = %backend.name,
                        "backend up: {} consecutive health check(s) passed",
                        cfg.rise
                    ),
                    Err(reason) => tracing::warn!(
                        upstream = %upstream.name,
                        backend = %backend.name,
                        reason = %reason,
                        "backend down: {} consecutive health check(s) failed, the last with {reason}",
                        cfg.fall
                    ),
                }
                if next == Health::Down {
                    warn_if_all_down(upstream);
                }
            }
        }
        // ±10% jitter keeps checks of many backends from aligning.
        let jitter = 0.9 + 0.2 * fastrand::f64();
        tokio::time::sleep(cfg.interval.mul_f64(jitter)).await;
    }
}

/// The rise/fall counters of one backend, owned by its checker task.
///
/// Passes count only while the backend is down and failures only while it is up,
/// so a backend that live traffic marked down (passive) needs `rise` fresh passes
/// to come back, however many checks it passed before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RiseFall {
    rise: u32,
    fall: u32,
    passes: u32,
    fails: u32,
}

impl RiseFall {
    pub fn new(rise: u32, fall: u32) -> Self {
        RiseFall {
            rise: rise.max(1),
            fall: fall.max(1),
            passes: 0,
            fails: 0,
        }
    }

    /// Records one check of a backend whose health is `now`; returns the health it
    /// must change to, if any.
    pub fn observe(&mut self, ok: bool, now: Health) -> Option<Health> {
        match (ok, now) {
            (true, Health::Up) | (false, Health::Down) => {
                self.passes = 0;
                self.fails = 0;
                None
            }
            (true, Health::Down) => {
                self.fails = 0;
                self.passes += 1;
                (self.passes >= self.rise).then(|| {
                    self.passes = 0;
                    Health::Up
                })
            }
            (false, Health::Up) => {
                self.passes = 0;
                self.fails += 1;
                (self.fails >= self.fall).then(|| {
                    self.fails = 0;
                    Health::Down
                })
            }
        }
    }
}

/// One `GET health.path`; the error says why it failed.
async fn check(backend: &Backend, cfg: &HealthConfig) -> Result<(), String> {
    let Some(addr) = backend.state.pool.addr() else {
        // A DNS name without an address: `crate::resolve` said why.
        return Err(backend
            .state
            .unresolved()
            .unwrap_or_else(|| "dns: no address".to_string()));
    };
    let attempt = async {
        // With `send_proxy`, a v2 LOCAL header: the connection is limpet's
        // own, not a client's.
        let mut local = Vec::new();
        if backend.send_proxy {
            crate::proxy_protocol::write_v2_local(&mut local);
        }
        let header = backend.send_proxy.then_some(&local[..]);
        let socket = crate::pool::connect(addr, backend.tls.as_ref(), cfg.timeout, header)
            .await
            .map_err(|e| match e {
                crate::pool::ConnectError::Io(io)
                    if io.kind() == std::io::ErrorKind::ConnectionRefused =>
                {
                    "connection refused".to_string()
                }
                other => other.to_string(),
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(socket))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            // Errors show in the response.
            let _ = conn.await;
        });
        let mut req = Request::new(Empty::<Bytes>::new());
        *req.uri_mut() = cfg
            .path
            .parse()
            .map_err(|_| "bad health path".to_string())?;
        let headers = req.headers_mut();
        if let Ok(host) = HeaderValue::from_str(&backend.addr_text) {
            headers.insert(header::HOST, host);
        }
        headers.insert(
            header::USER_AGENT,
            HeaderValue::from_static("limpet-health-check"),
        );
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        if cfg
            .expect
            .iter()
            .any(|(lo, hi)| (*lo..=*hi).contains(&status))
        {
            Ok(())
        } else {
            Err(format!("status {status}"))
        }
    };
    match tokio::time::timeout(cfg.timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "timeout after {}",
            humantime::format_duration(cfg.timeout)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `checks` to a counter, applying each change, and returns the health
    /// after every check.
    fn run(rise: u32, fall: u32, start: Health, checks: &[bool]) -> Vec<Health> {
        let mut counter = RiseFall::new(rise, fall);
        let mut health = start;
        checks
            .iter()
            .map(|&ok| {
                if let Some(next) = counter.observe(ok, health) {
                    health = next;
                }
                health
            })
            .collect()
    }

    use Health::{Down as D, Up as U};

    #[test]
    fn goes_down_after_exactly_fall_failures() {
        assert_eq!(run(2, 3, U, &[false, false, false]), [U, U, D]);
        assert_eq!(run(2, 1, U, &[false]), [D]);
    }

    #[test]
    fn a_pass_resets_the_failures() {
        assert_eq!(
            run(2, 3, U, &[false, false, true, false, false, false]),
            [U, U, U, U, U, D]
        );
    }

    #[test]
    fn comes_up_after_exactly_rise_passes() {
        assert_eq!(run(2, 3, D, &[true, true]), [D, U]);
        assert_eq!(
            run(3, 3, D, &[true, true, false, true, true, true]),
            [D, D, D, D, D, U]
        );
    }

    #[test]
    fn passes_while_up_do_not_count_towards_rise() {
        // Passive marking took the backend down after many good checks: it still
        // needs `rise` passes to come back.
        let mut counter = RiseFall::new(3, 3);
        for _ in 0..10 {
            assert_eq!(counter.observe(true, U), None);
        }
        assert_eq!(counter.observe(true, D), None);
        assert_eq!(counter.observe(true, D), None);
        assert_eq!(counter.observe(true, D), Some(U));
    }

    #[test]
    fn failures_while_down_do_not_count_towards_fall() {
        let mut counter = RiseFall::new(2, 2);
        for _ in 0..10 {
            assert_eq!(counter.observe(false, D), None);
        }
        assert_eq!(counter.observe(false, U), None);
        assert_eq!(counter.observe(false, U), Some(D));
    }

    #[test]
    fn zero_thresholds_act_as_one() {
        assert_eq!(run(0, 0, U, &[false, true]), [D, U]);
    }
}
