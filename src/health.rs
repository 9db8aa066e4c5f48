//! Backend health: passive marking from live traffic, and the active checker task
//! that owns the rise/fall counters (SPEC section 5).
//!
//! The checker runs one task per backend of the current snapshot; when the snapshot
//! is swapped (reload) the tasks are replaced. Health itself lives in the backend's
//! shared [`BackendState`], so it carries over a reload.

use std::fmt::Display;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{header, HeaderValue, Request};
use http_body_util::{Either, Empty};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::backend::{Backend, BackendState, Health};
use crate::config::HealthConfig;
use crate::metrics::Metrics;
use crate::state::{SharedState, Upstream};

/// The last active check of a backend, for `/status`.
#[derive(Debug, Clone)]
pub struct LastCheck {
    pub ok: bool,
    pub latency: Duration,
    pub at: SystemTime,
    /// Why it failed, when it did.
    pub reason: Option<String>,
}

/// A connection-level failure of live traffic to `upstream.backends[index]`: after
/// `passive_fall` in a row the backend is marked down at once.
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
            "backend down: {failures} consecutive connection failure(s) of live traffic ({cause})"
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
            _ = crate::listener::stopped(&mut shutdown) => return,
        }
        tasks.abort_all();
    }
}

async fn check_loop(upstream: &Upstream, backend: &Backend, metrics: &Metrics) {
    let cfg = &upstream.config.health;
    let (mut passes, mut fails) = (0u32, 0u32);
    // Spread the first checks over one interval so that they do not align.
    tokio::time::sleep(cfg.interval.mul_f64(fastrand::f64())).await;
    loop {
        let started = Instant::now();
        let result = check(backend, cfg).await;
        let latency = started.elapsed();
        let ok = result.is_ok();
        metrics
            .health_checks
            .with_label_values(&[
                &*upstream.name,
                &*backend.name,
                if ok { "ok" } else { "fail" },
            ])
            .inc();
        backend.state.set_last_check(LastCheck {
            ok,
            latency,
            at: SystemTime::now(),
            reason: result.as_ref().err().cloned(),
        });
        match result {
            Ok(()) => {
                fails = 0;
                passes += 1;
                if backend.state.health() == Health::Down
                    && passes >= cfg.rise
                    && backend.state.set_health(Health::Up)
                {
                    tracing::warn!(upstream = %upstream.name, backend = %backend.name, "backend up: {passes} consecutive checks passed");
                }
            }
            Err(reason) => {
                passes = 0;
                fails += 1;
                if backend.state.health() == Health::Up
                    && fails >= cfg.fall
                    && backend.state.set_health(Health::Down)
                {
                    tracing::warn!(upstream = %upstream.name, backend = %backend.name, "backend down: {fails} consecutive checks failed (check failed: {reason})");
                }
            }
        }
        // ±10% jitter keeps checks of many backends from aligning.
        let jitter = 0.9 + 0.2 * fastrand::f64();
        tokio::time::sleep(cfg.interval.mul_f64(jitter)).await;
    }
}

/// One `GET health.path`; the error says why it failed.
async fn check(backend: &Backend, cfg: &HealthConfig) -> Result<(), String> {
    let attempt = async {
        let mut sender = crate::upstream::connect(backend.addr, cfg.timeout)
            .await
            .map_err(|e| match e {
                crate::upstream::ConnectError::Io(io)
                    if io.kind() == std::io::ErrorKind::ConnectionRefused =>
                {
                    "connection refused".to_string()
                }
                other => other.to_string(),
            })?;
        let mut req = Request::new(Either::Right(Empty::<Bytes>::new()));
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
        Err(_) => Err(format!("timeout after {:?}", cfg.timeout)),
    }
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
