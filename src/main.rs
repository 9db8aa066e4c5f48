//! The `limpet` command: parse the command line, set up logging, load the
//! configuration, start, and wait for signals. No logic of its own.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use limpet::access_log;
use limpet::{Config, Limpet};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "limpet",
    version,
    about = "A sticky-session aware HTTP load balancer"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// Log format on stderr.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve until SIGTERM/SIGINT; SIGHUP reloads the configuration file.
    Run {
        #[arg(long, env = "LIMPET_CONFIG")]
        config: PathBuf,
    },
    /// Validate the configuration file and print a summary.
    Check {
        #[arg(long, env = "LIMPET_CONFIG")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _log_guard = init_logging(cli.log_format);
    match cli.command {
        Command::Check { config } => match Config::from_file(&config) {
            Ok(c) => {
                for w in c.warnings.iter().chain(&unresolvable_names(&c)) {
                    eprintln!("warning: {w}");
                }
                // A reader that stops early (`limpet check | head -1`) is
                // not a failure of the config: print! would panic on EPIPE.
                let said = format!("{}: ok\n{}", config.display(), c.summary());
                let _ = std::io::Write::write_all(&mut std::io::stdout(), said.as_bytes());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config } => {
            let config = match Config::from_file(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            match run(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("limpet: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// `limpet check`'s warnings about backend names that do not resolve now.
fn unresolvable_names(config: &Config) -> Vec<String> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(limpet::resolve::check_names(config)),
        Err(e) => vec![format!("backend names not checked: {e}")],
    }
}

/// Logs to stderr through a background thread: a request never waits on a
/// write, and lines are written in batches. When the queue is full (stderr
/// blocked) lines are dropped rather than stalling traffic, as syslog over UDP
/// does. `RUST_LOG` filters (default `info`); colours only on a terminal. The
/// access log shares the writer, and is on if `RUST_LOG` enables
/// `limpet::access` at `info`, as read here once. The guard flushes at exit.
fn init_logging(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    use std::io::IsTerminal;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .thread_name("limpet-log")
        .finish(std::io::BufWriter::new(std::io::stderr()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer.clone());
    let access_format = match format {
        LogFormat::Text => {
            builder.init();
            access_log::Format::Text
        }
        LogFormat::Json => {
            builder.json().init();
            access_log::Format::Json
        }
    };
    // Where the access log goes is `[log]`'s to say (applied at start and
    // reload); without `[log] access`, `RUST_LOG` decides, as it always did.
    access_log::set_stderr(access_format, Stderr(writer), access_log::filter_enables());
    guard
}

/// The access log's stderr sink: stderr's non-blocking writer, one message per line.
struct Stderr(tracing_appender::non_blocking::NonBlocking);

impl access_log::Sink for Stderr {
    fn write_line(&self, line: &[u8]) {
        use std::io::Write;
        // Lossy: a full queue drops the line and counts it, never an error.
        let _ = self.0.clone().write_all(line);
    }
}

fn run(config: Config) -> anyhow::Result<()> {
    // One worker: a current-thread runtime, which spares the work-stealing
    // machinery (the way HAProxy and nginx run one event loop per thread).
    let mut builder = match config.runtime.worker_threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            if n > 0 {
                b.worker_threads(n);
            }
            b
        }
    };
    let runtime = builder.enable_all().build()?;
    runtime.block_on(async move {
        // Listened for before the listeners serve: a signal sent as soon as a
        // first request was answered must not meet its default action
        // (SIGHUP's ends the process).
        let mut signals = Signals::listen()?;
        let limpet = Limpet::start(config).await?;
        for addr in &limpet.http_addrs {
            tracing::info!("listening on http://{addr}");
        }
        for addr in &limpet.https_addrs {
            tracing::info!("listening on https://{addr}");
        }
        if let Some(addr) = limpet.admin_addr {
            tracing::info!("admin on http://{addr}");
        }
        limpet::upgrade::announce_ready();
        let limpet = std::sync::Arc::new(limpet);
        wait_for_stop(&limpet, &mut signals).await?;
        let Ok(limpet) = std::sync::Arc::try_unwrap(limpet) else {
            anyhow::bail!("still in use at shutdown");
        };
        tracing::info!("shutting down: no new connections, waiting for requests in flight (a second signal exits at once)");
        tokio::select! {
            _ = limpet.shutdown() => {}
            _ = second_signal() => tracing::warn!("second signal: exiting without waiting"),
        }
        tracing::info!("stopped");
        // Flushes an access-log file's last lines.
        access_log::close();
        Ok(())
    })
}

/// The signals limpet answers.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    usr1: tokio::signal::unix::Signal,
    usr2: tokio::signal::unix::Signal,
}

impl Signals {
    fn listen() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
            usr1: signal(SignalKind::user_defined1())?,
            usr2: signal(SignalKind::user_defined2())?,
        })
    }
}

/// Reloads on SIGHUP; reopens the access-log file on SIGUSR1; returns on
/// SIGTERM or SIGINT, and on SIGUSR2 once a
/// new process started from this one's command line serves (a binary upgrade).
async fn wait_for_stop(
    limpet: &std::sync::Arc<Limpet>,
    signals: &mut Signals,
) -> anyhow::Result<()> {
    let Signals {
        term,
        int,
        hup,
        usr1,
        usr2,
    } = signals;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = usr1.recv() => {
                // logrotate renamed the access-log file: the next line opens a new one.
                access_log::reopen();
                tracing::info!("SIGUSR1: reopening the access-log file");
            }
            _ = usr2.recv() => {
                tracing::info!("SIGUSR2: starting a new process with the listening sockets");
                let current = limpet.clone();
                match tokio::task::spawn_blocking(move || current.start_successor()).await {
                    Ok(Ok(pid)) => {
                        tracing::info!(pid, "binary upgrade: the new process serves (pid {pid}); draining this one");
                        return Ok(());
                    }
                    Ok(Err(e)) => tracing::error!("binary upgrade failed, this process keeps serving: {e}"),
                    Err(e) => tracing::error!("binary upgrade task failed: {e}"),
                }
            }
            _ = hup.recv() => {
                // Reading the file and resolving names block: keep them off the runtime.
                let reloader = limpet.reloader.clone();
                match tokio::task::spawn_blocking(move || reloader.reload()).await {
                    Ok(Ok(c)) => tracing::info!(checksum = %c.checksum, "SIGHUP: configuration reloaded"),
                    Ok(Err(e)) => tracing::error!("SIGHUP: reload failed, the old configuration keeps serving: {e}"),
                    Err(e) => tracing::error!("SIGHUP: reload task failed: {e}"),
                }
            }
        }
    }
}

/// A second SIGTERM or SIGINT during shutdown.
async fn second_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}
