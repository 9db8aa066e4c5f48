//! A backend whose SYNs go unanswered (a dead host behind a firewall) is the
//! connect-timeout path: the pinned client fails over to the replica within
//! `connect` and a margin, and the backend is marked down passively.
//!
//! The unanswered SYNs come from a route over a veth pair whose other end sits,
//! down, in a network namespace of its own: the next hop never answers ARP, so
//! nothing is ever answered and nothing leaves the machine. Making it needs
//! root and `ip` (iproute2); without them the test says so and passes without
//! running. The pair and the namespace are removed when the test ends,
//! however it ends.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// An address nobody answers (198.18.0.0/15 is for benchmarks, RFC 2544),
/// while the guard lives.
struct Blackhole {
    device: String,
    namespace: String,
    addr: &'static str,
}

impl Blackhole {
    fn make() -> Result<Blackhole, String> {
        let id = std::process::id() % 100_000;
        let (device, peer, namespace) = (
            format!("lmpx{id}"),
            format!("lmpy{id}"),
            format!("limpet-blackhole-{id}"),
        );
        let addr = "198.18.99.2";
        let ip = |args: &[&str]| -> Result<(), String> {
            let out = Command::new("ip")
                .args(args)
                .output()
                .map_err(|e| format!("ip: {e}"))?;
            match out.status.success() {
                true => Ok(()),
                false => Err(format!(
                    "ip {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                )),
            }
        };
        ip(&["netns", "add", &namespace])?;
        let hole = Blackhole {
            device,
            namespace,
            addr,
        };
        ip(&[
            "link",
            "add",
            &hole.device,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
        ])?;
        ip(&["link", "set", &peer, "netns", &hole.namespace])?;
        ip(&["addr", "add", "198.18.99.1/30", "dev", &hole.device])?;
        ip(&["link", "set", &hole.device, "up"])?;
        Ok(hole)
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        // Removing one end removes the pair, its address and route.
        let _ = Command::new("ip")
            .args(["link", "del", &self.device])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.namespace])
            .output();
    }
}

#[tokio::test]
async fn a_backend_that_never_answers_syn_fails_over_within_connect() {
    let hole = match Blackhole::make() {
        Ok(hole) => hole,
        Err(why) => {
            eprintln!("skipped: cannot make a blackhole route ({why}); needs root and iproute2");
            return;
        }
    };
    let replica = TestBackend::spawn("app2").await;
    let secret = "0123456789abcdef0123456789abcdef";
    let toml = format!(
        "[listen]\nhttp = [\"127.0.0.1:0\"]\n\n\
         [upstream.shop]\nretries = 1\n\
         [upstream.shop.cookie]\nsecret = \"{secret}\"\n\
         [upstream.shop.timeouts]\nconnect = \"300ms\"\n\
         [upstream.shop.health]\ninterval = \"1h\"\n\
         [[upstream.shop.backend]]\nname = \"app1\"\naddr = \"{}:80\"\nreplica = \"app2\"\n\
         [[upstream.shop.backend]]\nname = \"app2\"\naddr = \"{}\"\n",
        hole.addr, replica.addr
    );
    let lb = TestLb::start(&toml).await;
    // A client pinned to app1, with the cookie limpet would have issued.
    let codec = limpet::affinity::CookieCodec::new("shop", [secret.as_bytes()], &["app1", "app2"]);
    let mut client = lb.client();
    client.cookie = Some(codec.encode(0, &limpet::affinity::Session::new()));
    let started = Instant::now();
    let reply = client.get("/cart").await;
    let took = started.elapsed();
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.backend(), "app2");
    assert_eq!(reply.header("x-seen-failover-from"), Some("app1"));
    assert!(
        reply.set_cookie("limpet").is_some(),
        "re-pinned to the replica"
    );
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(2),
        "failed over after the 300 ms connect timeout: {took:?}"
    );
    // Marked down passively (passive_fall = 1), long before a health check.
    lb.wait_backend_state("shop", "app1", "down", Duration::from_secs(2))
        .await;
    drop(hole);
}
