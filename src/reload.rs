//! Reload: SIGHUP or `POST /reload` -> parse -> validate -> rebuild the snapshot
//! (carrying backend state over) -> swap. A config that fails changes nothing.

use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::config::{Config, ConfigError};
use crate::limit::ConnectionLimit;
use crate::metrics::Metrics;
use crate::state::{SharedState, Snapshot};

/// Swaps configurations into the shared state; cheap to clone.
#[derive(Debug, Clone)]
pub struct Reloader {
    state: SharedState,
    metrics: Metrics,
    /// `max_connections`, resized when a reload changes it.
    limit: Arc<ConnectionLimit>,
    /// Bumped on every successful reload; the health checker and tests follow it.
    generation: Arc<watch::Sender<u64>>,
    /// One reload at a time (SIGHUP and `POST /reload` may race): each builds on
    /// the snapshot the previous one stored, so no carried state is lost.
    one_at_a_time: Arc<Mutex<()>>,
}

impl Reloader {
    pub fn new(state: SharedState, metrics: Metrics, limit: Arc<ConnectionLimit>) -> Self {
        Reloader {
            state,
            metrics,
            limit,
            generation: Arc::new(watch::channel(0).0),
            one_at_a_time: Arc::new(Mutex::new(())),
        }
    }

    /// A receiver of the reload generation.
    pub fn generation(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Re-reads the configuration file the running config came from. Blocking file
    /// I/O (and name resolution): call it from `spawn_blocking` on a busy runtime.
    pub fn reload(&self) -> Result<Arc<Config>, ConfigError> {
        let _one = self.one_at_a_time.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.state.load_full();
        let result = match &current.config.path {
            Some(path) => Config::from_file(path),
            None => Err(ConfigError {
                file: "(inline)".into(),
                position: None,
                message: "this configuration was not loaded from a file".into(),
            }),
        };
        self.apply_locked(result)
    }

    /// Swaps in `config` (already parsed), keeping backend state where it applies.
    pub fn apply(&self, result: Result<Config, ConfigError>) -> Result<Arc<Config>, ConfigError> {
        let _one = self.one_at_a_time.lock().unwrap_or_else(|e| e.into_inner());
        self.apply_locked(result)
    }

    fn apply_locked(
        &self,
        result: Result<Config, ConfigError>,
    ) -> Result<Arc<Config>, ConfigError> {
        let config = match result {
            Ok(c) => c,
            Err(e) => {
                self.metrics
                    .config_reloads
                    .with_label_values(&["error"])
                    .inc();
                return Err(e);
            }
        };
        for warning in &config.warnings {
            tracing::warn!("{warning}");
        }
        let current = self.state.load_full();
        let admin_addr = |c: &Config| c.admin.as_ref().map(|a| a.listen);
        if config.listen.http != current.config.listen.http
            || config.listen.https != current.config.listen.https
            || admin_addr(&config) != admin_addr(&current.config)
        {
            tracing::warn!("listener addresses changed: they take effect at the next restart");
        }
        if config.listen.backlog != current.config.listen.backlog {
            tracing::warn!(
                "listen.backlog changed (when unset, it follows limits.max_connections): it takes effect at the next restart (the kernel sizes a listening socket's queue once)"
            );
        }
        if config.runtime.worker_threads != current.config.runtime.worker_threads {
            tracing::warn!(
                "runtime.worker_threads changed: it takes effect at the next restart (the runtime's threads start once)"
            );
        }
        if config.log != current.config.log {
            // Checked when the file was validated; a failure now (the disk
            // changed since) keeps the old destination.
            if let Err(e) = crate::access_log::apply(&config.log) {
                tracing::error!("[log]: {e}; the access log keeps its previous destination");
            }
        }
        self.limit.resize(config.limits.max_connections);
        let snapshot = Snapshot::build(config, Some(&current));
        self.metrics.register_snapshot(&snapshot);
        let config = snapshot.config.clone();
        let snapshot = Arc::new(snapshot);
        self.state.store(snapshot.clone());
        self.metrics.forget_removed(&current, &snapshot);
        self.generation.send_modify(|g| *g += 1);
        self.metrics.config_reloads.with_label_values(&["ok"]).inc();
        tracing::info!(checksum = %config.checksum, "configuration reloaded");
        Ok(config)
    }
}
