//! Binary upgrades without a refused connection. On SIGUSR2 a running limpet
//! starts a new one from its own command line (so a binary replaced on disk
//! is the one that starts), handing over its listening sockets the way
//! systemd's socket activation does (`LISTEN_FDS`, file descriptors from 3);
//! once the new one says it serves, the old one drains as at SIGTERM. Both
//! accept from the same sockets meanwhile, so no client is refused and no
//! queued connection is lost. A new process that fails to start (a broken
//! config, a broken binary) leaves the old one serving.
//!
//! At start, [`Inherited`] takes the sockets handed over (or given by systemd)
//! whose address is a configured listener's; the others are bound anew.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader};
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use command_fds::{CommandFdExt, FdMapping};

/// Set for a process started by an upgrade: it says "ready" on stdout once it
/// serves.
const READY_ENV: &str = "LIMPET_UPGRADE_READY";
/// The first file descriptor handed over (systemd's `SD_LISTEN_FDS_START`).
const FIRST_FD: i32 = 3;

/// Listening sockets handed to this process, by address.
#[derive(Debug, Default)]
pub struct Inherited(HashMap<SocketAddr, std::net::TcpListener>);

impl Inherited {
    /// The sockets of `LISTEN_FDS` (when `LISTEN_PID` is this process or unset).
    pub fn from_env() -> Inherited {
        let mut fds = listenfd::ListenFd::from_env();
        let mut by_addr = HashMap::new();
        for i in 0..fds.len() {
            if let Ok(Some(listener)) = fds.take_tcp_listener(i) {
                if let Ok(addr) = listener.local_addr() {
                    by_addr.insert(addr, listener);
                }
            }
        }
        Inherited(by_addr)
    }

    /// The inherited socket listening on `addr`, ready for tokio.
    pub fn take(&mut self, addr: SocketAddr) -> Option<tokio::net::TcpListener> {
        let listener = self.0.remove(&addr)?;
        listener.set_nonblocking(true).ok()?;
        tokio::net::TcpListener::from_std(listener).ok()
    }
}

/// Starts the successor: this process's command line again, with `sockets`
/// handed over.
pub fn spawn_successor(sockets: &[OwnedFd]) -> io::Result<Child> {
    let mut args = std::env::args_os();
    let program = args
        .next()
        .ok_or_else(|| io::Error::other("no program name to start again"))?;
    let mappings = sockets
        .iter()
        .zip(FIRST_FD..)
        .map(|(fd, child_fd)| {
            Ok(FdMapping {
                parent_fd: fd.try_clone()?,
                child_fd,
            })
        })
        .collect::<io::Result<Vec<_>>>()?;
    let mut command = Command::new(program);
    command
        .args(args)
        .env("LISTEN_FDS", sockets.len().to_string())
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES")
        .env(READY_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    command.fd_mappings(mappings).map_err(io::Error::other)?;
    command.spawn()
}

/// Waits (blocking) until the successor says it serves; on failure or after
/// `timeout`, it is stopped and the reason given.
pub fn wait_ready(child: &mut Child, timeout: Duration) -> Result<(), String> {
    let Some(stdout) = child.stdout.take() else {
        return Err("no pipe from the new process".into());
    };
    let (said, heard) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let read = BufReader::new(stdout).read_line(&mut line);
        let _ = said.send(read.map(|_| line));
    });
    let outcome = match heard.recv_timeout(timeout) {
        Ok(Ok(line)) if line.trim() == "ready" => return Ok(()),
        Ok(Ok(_)) => "the new process exited before serving".to_string(),
        Ok(Err(e)) => format!("reading from the new process: {e}"),
        Err(_) => format!("the new process did not serve within {timeout:?}"),
    };
    // Only the process this one started, by its handle.
    let _ = child.kill();
    let _ = child.wait();
    Err(outcome)
}

/// Tells the process that started this one, if any, that it serves.
pub fn announce_ready() {
    if std::env::var_os(READY_ENV).is_some() {
        use std::io::Write;
        let mut out = io::stdout();
        let _ = writeln!(out, "ready");
        let _ = out.flush();
    }
}
