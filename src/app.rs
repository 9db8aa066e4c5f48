//! The composition root: binds the listeners of a configuration, builds the first
//! snapshot, and spawns the accept loops, the health checker, the resolver of
//! backends named by DNS and the admin listener. [`Limpet::start`] is what `limpet run` and the tests call.

use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::{Config, ConfigError};
use crate::flow::Proxy;
use crate::limit::ConnectionLimit;
use crate::metrics::{ConnectionGauge, Metrics};
use crate::reload::Reloader;
use crate::state::{self, SharedState, Snapshot};
use crate::upgrade::Inherited;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot open the access log")]
    AccessLog(#[source] std::io::Error),
}

/// A running limpet.
pub struct Limpet {
    /// The bound public plain-HTTP listeners (port 0 in the config becomes real here).
    pub http_addrs: Vec<SocketAddr>,
    /// The bound public https listeners.
    pub https_addrs: Vec<SocketAddr>,
    /// The bound admin listener, if configured.
    pub admin_addr: Option<SocketAddr>,
    pub state: SharedState,
    pub metrics: Metrics,
    shutdown: watch::Sender<bool>,
    pub reloader: Reloader,
    tasks: JoinSet<()>,
    /// The listening sockets (public and admin), for a binary upgrade.
    sockets: Vec<OwnedFd>,
}

impl Limpet {
    /// Binds every listener of `config` and starts serving.
    pub async fn start(config: Config) -> Result<Limpet, StartError> {
        for warning in &config.warnings {
            tracing::warn!("{warning}");
        }
        let metrics = Metrics::with_process_metrics()?;
        // The access log is the process's: the last limpet started or
        // reloaded in it says where it goes.
        crate::access_log::apply(&config.log).map_err(StartError::AccessLog)?;
        let snapshot = Snapshot::build(config, None);
        metrics.register_snapshot(&snapshot);
        let state = state::shared(snapshot);
        let config = state.load().config.clone();
        // Backends named by DNS get their first address before traffic does.
        crate::resolve::resolve_all(&state).await;

        let backlog = config.listen.backlog;
        // Sockets handed over by an upgrade (or systemd) are taken first.
        let mut inherited = Inherited::from_env();
        let mut listen = |addr: SocketAddr, backlog: u32| match inherited.take(addr) {
            Some(listener) => Ok(listener),
            None => bind(addr, backlog),
        };
        let mut http = Vec::new();
        for addr in &config.listen.http {
            http.push(listen(*addr, backlog)?);
        }
        let mut https = Vec::new();
        for addr in &config.listen.https {
            https.push(listen(*addr, backlog)?);
        }
        let admin = match &config.admin {
            Some(a) => Some(listen(a.listen, ADMIN_BACKLOG)?),
            None => None,
        };
        // Kept to hand over at the next upgrade.
        let sockets = http
            .iter()
            .chain(&https)
            .chain(&admin)
            .filter_map(|l| l.as_fd().try_clone_to_owned().ok())
            .collect();
        let http_addrs = http.iter().filter_map(|l| l.local_addr().ok()).collect();
        let https_addrs = https.iter().filter_map(|l| l.local_addr().ok()).collect();
        let admin_addr = admin.as_ref().and_then(|l| l.local_addr().ok());

        let (shutdown, shutdown_rx) = watch::channel(false);
        let connections = Arc::new(ConnectionLimit::new(config.limits.max_connections));
        let reloader = Reloader::new(state.clone(), metrics.clone(), connections.clone());
        let proxy = Proxy::new(state.clone(), metrics.clone());
        let mut tasks = JoinSet::new();
        let public = http
            .into_iter()
            .map(|l| (l, false))
            .chain(https.into_iter().map(|l| (l, true)));
        for (listener, tls) in public {
            // The listener's connection series exists from the start, at 0.
            if let Ok(addr) = listener.local_addr() {
                ConnectionGauge::register(&metrics, &addr.to_string());
            }
            tasks.spawn(crate::listener::serve(
                listener,
                tls,
                proxy.clone(),
                connections.clone(),
                shutdown_rx.clone(),
                config.timeouts.shutdown_grace,
            ));
        }
        tasks.spawn(crate::resolve::run(
            state.clone(),
            reloader.generation(),
            shutdown_rx.clone(),
        ));
        tasks.spawn(crate::health::run(
            state.clone(),
            metrics.clone(),
            reloader.generation(),
            shutdown_rx.clone(),
        ));
        let mut limpet = Limpet {
            http_addrs,
            https_addrs,
            admin_addr,
            state,
            metrics,
            shutdown,
            reloader,
            tasks,
            sockets,
        };
        if let Some(listener) = admin {
            let admin = crate::admin::Admin {
                state: limpet.state.clone(),
                metrics: limpet.metrics.clone(),
                reloader: limpet.reloader.clone(),
            };
            limpet.tasks.spawn(admin.serve(listener, shutdown_rx));
        }
        Ok(limpet)
    }

    /// Starts a new limpet from this one's command line with its listening
    /// sockets, and returns once it serves (see `crate::upgrade`); then this
    /// one should [`Limpet::shutdown`]. Blocks: call it off the runtime.
    pub fn start_successor(&self) -> Result<u32, String> {
        let mut child =
            crate::upgrade::spawn_successor(&self.sockets).map_err(|e| format!("start: {e}"))?;
        crate::upgrade::wait_ready(&mut child, SUCCESSOR_READY)?;
        Ok(child.id())
    }

    /// Re-reads the configuration file and swaps it in; on error nothing changes.
    pub fn reload(&self) -> Result<Arc<Config>, ConfigError> {
        self.reloader.reload()
    }

    /// Swaps in an already parsed configuration (or counts the error).
    pub fn apply(&self, result: Result<Config, ConfigError>) -> Result<Arc<Config>, ConfigError> {
        self.reloader.apply(result)
    }

    /// Stops accepting, lets requests in flight finish up to `shutdown_grace`, and
    /// returns when every task has ended.
    pub async fn shutdown(mut self) {
        // The sockets kept for an upgrade would keep the listeners open (new
        // connections queued, not refused) once the accept loops drop theirs.
        self.sockets.clear();
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
    }

    /// A receiver that turns true when shutdown starts.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }
}

/// How long a new process started by an upgrade may take to serve.
const SUCCESSOR_READY: std::time::Duration = std::time::Duration::from_secs(30);

/// The accept queue of the admin listener.
const ADMIN_BACKLOG: u32 = 128;

/// A listening socket on `addr` with an accept queue of `backlog`.
fn bind(addr: SocketAddr, backlog: u32) -> Result<TcpListener, StartError> {
    let listen = || {
        let socket = match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        // As std's and tokio's TcpListener::bind do on Unix: a restart need
        // not wait for the old connections' TIME_WAIT.
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(backlog)
    };
    listen().map_err(|source| StartError::Bind { addr, source })
}
