//! A binary upgrade (SIGUSR2): a new process started from the running one's
//! command line takes over its listening sockets while the old one drains;
//! under load, no connection is refused and no request fails.

mod common;
mod ops;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::wire::{raw_exchange, raw_status};
use common::*;
use ops::*;

/// A port that was free a moment ago.
fn free_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap().port()
}

fn alive(pid: u32) -> bool {
    Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[tokio::test]
async fn sigusr2_hands_the_sockets_to_a_new_process_without_a_failed_request() {
    let backend = TestBackend::spawn("app1").await;
    let (http, admin) = (free_port(), free_port());
    let toml = format!(
        "[listen]\nhttp = [\"127.0.0.1:{http}\"]\n\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\n\
         [upstream.shop]\n[[upstream.shop.backend]]\nname = \"app1\"\naddr = \"{}\"\n",
        backend.addr
    );
    let mut old = Process::start(&toml).await;
    let addr: SocketAddr = old.http;

    // Load: a new connection per request, so that a refused or reset
    // connection shows.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let req = b"GET / HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\r\n";
                let (text, _) = raw_exchange(addr, req, Duration::from_secs(5)).await;
                match raw_status(&text) {
                    Some(200) => ok.fetch_add(1, Ordering::SeqCst),
                    _ => {
                        failures.push(text);
                        failed.fetch_add(1, Ordering::SeqCst)
                    }
                };
            }
            failures
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = ok.load(Ordering::SeqCst);
    assert!(before > 0, "load runs");

    old.signal("USR2");
    let status = old
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("the old process exits once the new one serves");
    assert!(status.success(), "{status:?}");
    let new_pid = old
        .log_lines()
        .iter()
        .find_map(|l| l["fields"]["pid"].as_u64())
        .expect("the old process logged the new one's pid") as u32;
    // The new one serves alone now.
    let at_exit = ok.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let mut failures = Vec::new();
    for task in load {
        failures.extend(task.await.unwrap());
    }
    let served_after = ok.load(Ordering::SeqCst) - at_exit;

    // Stop the new process (started by the old one, found by its pid).
    let _ = Command::new("kill")
        .args(["-TERM", &new_pid.to_string()])
        .status();
    assert!(
        eventually(Duration::from_secs(10), || async { !alive(new_pid) }).await,
        "the new process stops on SIGTERM"
    );

    assert_eq!(failed.load(Ordering::SeqCst), 0, "{failures:#?}");
    assert!(
        served_after > 0,
        "the new process served after the old one left"
    );
    assert!(
        old.messages()
            .iter()
            .any(|m| m.starts_with("binary upgrade: the new process serves")),
        "{:#?}",
        old.messages()
    );
}

#[tokio::test]
async fn a_new_process_that_cannot_start_leaves_the_old_one_serving() {
    let backend = TestBackend::spawn("app1").await;
    let http = free_port();
    let toml = format!(
        "[listen]\nhttp = [\"127.0.0.1:{http}\"]\n\n\
         [upstream.shop]\n[[upstream.shop.backend]]\nname = \"app1\"\naddr = \"{}\"\n",
        backend.addr
    );
    let mut old = Process::start(&toml).await;
    // The new process would read a broken file.
    old.rewrite("[listen]\nhttp = [\"127.0.0.1:1\"]\nthis is not toml\n");
    old.signal("USR2");
    assert!(
        eventually(Duration::from_secs(10), || async {
            old.messages()
                .iter()
                .any(|m| m.starts_with("binary upgrade failed"))
        })
        .await,
        "{:#?}",
        old.messages()
    );
    assert!(old.wait_exit(Duration::from_millis(200)).await.is_none());
    let mut client = Client::new(old.http);
    assert_eq!(client.get("/").await.status, 200, "still serving");
}
