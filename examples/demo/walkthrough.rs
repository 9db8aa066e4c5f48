//! The scripted story of `cargo run --example demo`: alice logs in through limpet,
//! fills her cart, her server dies, and she carries on, on its replica. Then the
//! same with 20 users, with and without replica routing.
//!
//! Everything runs in-process on loopback; [`run`] is what the example and the
//! tests call.

use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use limpet::backend::Health;
use limpet::config::{Config, Failover};
use limpet::Limpet;

use crate::app::{CartView, Cluster, DemoError, Placement, SESSION_COOKIE};
use crate::client::Browser;
use crate::control::Control;

/// The demo's limpet configuration (its backend addresses are replaced at start).
pub const CONFIG: &str = include_str!("../../config/demo.toml");
pub const CONFIG_NAME: &str = "config/demo.toml";
/// How long to wait for limpet to notice a backend died or came back.
const HEALTH_WAIT: Duration = Duration::from_secs(10);

/// Which ports limpet's own listeners use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ports {
    /// The config's (`127.0.0.1:8080`, admin `:9100`), or free ports if those are taken.
    FromConfig,
    /// Free ports (tests, `--walkthrough-only`).
    Ephemeral,
}

/// The upstream of config/demo.toml that is the demo's control endpoint; the
/// other one is the shop its app servers form.
pub const CONTROL_UPSTREAM: &str = "demo";

/// The app servers, the control endpoint and limpet in front of them.
pub struct Demo {
    pub cluster: Cluster,
    pub limpet: Limpet,
    /// The upstream the app servers form (the config's other one).
    pub upstream: String,
    /// The config's ports were taken, so limpet listens on free ones.
    pub ports_taken: bool,
    /// The page's kill and revive controls, which limpet routes `/_demo/` to.
    pub control: Control,
}

impl Demo {
    /// Starts one app server per backend of the shop upstream (replicating as the
    /// config's `replica` says) and the control endpoint, points the config at
    /// them, and starts limpet.
    pub async fn start(mut config: Config, ports: Ports) -> Result<Demo, DemoError> {
        let (mut control, mut shop): (Vec<_>, Vec<_>) = config
            .upstreams
            .iter_mut()
            .partition(|u| u.name == CONTROL_UPSTREAM);
        let ([control_upstream], [upstream]) = (control.as_mut_slice(), shop.as_mut_slice()) else {
            return Err(DemoError::Unexpected(format!(
                "the demo config needs two upstreams: the shop and {CONTROL_UPSTREAM:?}"
            )));
        };
        let servers: Vec<(&str, Option<&str>)> = upstream
            .backends
            .iter()
            .map(|b| (b.name.as_str(), b.replica.as_deref()))
            .collect();
        let cluster = Cluster::start(&servers).await?;
        for b in &mut upstream.backends {
            if let Some(addr) = cluster.addr(&b.name) {
                b.addr = limpet::config::BackendAddr::Ip(addr);
                b.addr_text = addr.to_string();
            }
        }
        let control = Control::start(cluster.clone()).await?;
        for b in &mut control_upstream.backends {
            b.addr = limpet::config::BackendAddr::Ip(control.addr);
            b.addr_text = control.addr.to_string();
        }
        let upstream = upstream.name.clone();
        if ports == Ports::Ephemeral {
            ephemeral(&mut config);
        }
        let (limpet, ports_taken) = match Limpet::start(config.clone()).await {
            Ok(limpet) => (limpet, false),
            Err(limpet::app::StartError::Bind { .. }) if ports == Ports::FromConfig => {
                ephemeral(&mut config);
                (Limpet::start(config).await?, true)
            }
            Err(e) => return Err(e.into()),
        };
        Ok(Demo {
            cluster,
            limpet,
            upstream,
            ports_taken,
            control,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.limpet.http_addrs[0]
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    pub fn admin_url(&self) -> Option<String> {
        self.limpet.admin_addr.map(|a| format!("http://{a}"))
    }

    /// A new browser (empty cookie jar) pointed at limpet.
    pub fn browser(&self) -> Browser {
        Browser::new(self.addr())
    }

    /// limpet's view of a backend's health.
    pub fn health(&self, backend: &str) -> Option<Health> {
        let snap = self.limpet.state.load();
        let up = snap.upstream(&self.upstream)?;
        let b = up.backends.iter().find(|b| &*b.name == backend)?;
        Some(b.state.health())
    }

    /// Polls until limpet sees `backend` as `health`; returns how long that took.
    pub async fn await_health(&self, backend: &str, health: Health) -> Result<Duration, DemoError> {
        let start = Instant::now();
        while self.health(backend) != Some(health) {
            if start.elapsed() > HEALTH_WAIT {
                return Err(DemoError::Unexpected(format!(
                    "limpet did not see {backend} {health:?} within {HEALTH_WAIT:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(start.elapsed())
    }

    /// `limpet_affinity_total{outcome}` for the demo's upstream.
    pub fn affinity(&self, outcome: &str) -> u64 {
        self.limpet
            .metrics
            .affinity
            .with_label_values(&[&self.upstream, outcome])
            .get()
    }

    /// Stops limpet, then the control endpoint (the app servers stop when the
    /// last clone of the cluster goes).
    pub async fn shutdown(self) {
        self.limpet.shutdown().await;
        drop(self.control);
    }
}

fn ephemeral(config: &mut Config) {
    let any: SocketAddr = ([127, 0, 0, 1], 0).into();
    config.listen.http = vec![any];
    if let Some(admin) = &mut config.admin {
        admin.listen = any;
    }
}

/// What the walkthrough saw.
#[derive(Debug, Clone)]
pub struct Report {
    /// The server alice landed on, which was killed.
    pub victim: String,
    /// The server that answered for her afterwards.
    pub replica: String,
    /// Every check held: still logged in, same cart, re-pinned, failover counted.
    pub survived: bool,
}

/// The story of one user. With `victim`, alice opens new sessions until limpet
/// pins her to that server (tests kill each server in turn); without, she stays
/// wherever limpet put her.
pub async fn walkthrough<W: Write>(
    demo: &Demo,
    victim: Option<&str>,
    out: &mut W,
) -> Result<Report, DemoError> {
    let mut ok = true;
    let mut check = |out: &mut W, cond: bool, what: &str| -> std::io::Result<()> {
        ok &= cond;
        writeln!(out, "     {} {what}", if cond { "ok  " } else { "FAIL" })
    };

    writeln!(out, "\n1. alice opens the shop")?;
    let mut alice = demo.browser();
    let (mut view, mut reply) = alice.cart().await?;
    for _ in 0..30 {
        if victim.is_none_or(|v| v == view.served_by) {
            break;
        }
        alice = demo.browser();
        (view, reply) = alice.cart().await?;
    }
    let home = view.served_by.clone();
    if victim.is_some_and(|v| v != home) {
        return Err(DemoError::Unexpected(format!(
            "limpet never pinned a new session to {victim:?}"
        )));
    }
    let pin = reply.set_cookie("limpet").unwrap_or_default().to_owned();
    writeln!(
        out,
        "   GET  /cart                           -> served by {home}"
    )?;
    writeln!(
        out,
        "     limpet pins her to {home}: Set-Cookie: limpet={}",
        abbreviate(&pin)
    )?;

    writeln!(out, "\n2. she logs in and fills her cart")?;
    let (v, _) = alice.login("alice").await?;
    step(out, "POST /login {\"name\":\"alice\"}", &v)?;
    let mut same_server = v.served_by == home;
    for item in ["coffee beans", "croissant"] {
        let (v, _) = alice.add(item).await?;
        step(out, &format!("POST /cart  {{\"item\":\"{item}\"}}"), &v)?;
        same_server &= v.served_by == home;
    }
    check(out, same_server, &format!("every request went to {home}"))?;
    let replica = demo.cluster.replica_of(&home).unwrap_or("-").to_owned();
    let backups = demo
        .cluster
        .servers()
        .iter()
        .find(|s| s.name == replica)
        .map_or(0, |s| s.backups);
    check(
        out,
        backups >= 1,
        &format!(
            "{home} replicated each write to {replica}, which holds {backups} backup session(s)"
        ),
    )?;
    let cart_before = vec!["coffee beans".to_owned(), "croissant".to_owned()];

    writeln!(
        out,
        "\n3. {home} dies: listener and connections closed, its memory gone"
    )?;
    demo.cluster.kill(&home).await;

    writeln!(out, "\n4. alice clicks again")?;
    let (v, reply) = alice.cart().await?;
    step(out, "GET  /cart", &v)?;
    check(
        out,
        v.user.as_deref() == Some("alice") && v.items == cart_before,
        "still logged in as alice, cart intact",
    )?;
    check(
        out,
        v.served_by == replica,
        &format!("limpet sent her to {home}'s replica, {replica}"),
    )?;
    let repin = reply.set_cookie("limpet").unwrap_or_default().to_owned();
    check(
        out,
        !repin.is_empty() && repin != pin,
        &format!(
            "re-pinned to {replica}: Set-Cookie: limpet={}",
            abbreviate(&repin)
        ),
    )?;
    check(
        out,
        v.failover_from.as_deref() == Some(home.as_str()) && v.promoted,
        &format!("{replica} got `x-limpet-failover-from: {home}` and promoted its copy"),
    )?;
    let (v, reply) = alice.add("jam").await?;
    step(out, "POST /cart  {\"item\":\"jam\"}", &v)?;
    check(
        out,
        v.served_by == replica && v.items.len() == 3 && reply.set_cookie("limpet").is_none(),
        &format!("she stays on {replica}; no new cookie"),
    )?;

    demo.await_health(&home, Health::Down).await?;
    writeln!(out, "\n5. {home} comes back, with empty memory")?;
    demo.cluster.revive(&home).await?;
    let up = demo.await_health(&home, Health::Up).await?;
    writeln!(
        out,
        "     limpet's health checks see {home} up again after {} ms",
        up.as_millis()
    )?;
    let (v, _) = alice.cart().await?;
    step(out, "GET  /cart", &v)?;
    check(
        out,
        v.served_by == replica && v.user.as_deref() == Some("alice") && v.items.len() == 3,
        &format!("alice stays on {replica}, which holds her newest session"),
    )?;

    writeln!(
        out,
        "\n6. what limpet counted (limpet_affinity_total, also at the admin /metrics)"
    )?;
    for line in demo.limpet.metrics.render().lines().filter(|l| {
        l.starts_with("limpet_affinity_total{")
            && l.contains(&format!("upstream=\"{}\"", demo.upstream))
    }) {
        writeln!(out, "     {line}")?;
    }
    check(
        out,
        demo.affinity("failover") >= 1,
        "one failover, counted as outcome=\"failover\"",
    )?;

    Ok(Report {
        victim: home,
        replica,
        survived: ok,
    })
}

fn step<W: Write>(out: &mut W, request: &str, v: &CartView) -> std::io::Result<()> {
    writeln!(
        out,
        "   {request:<36} -> served by {}: user {}, cart [{}]",
        v.served_by,
        v.user.as_deref().unwrap_or("(none)"),
        v.items.join(", ")
    )
}

fn abbreviate(cookie: &str) -> String {
    match cookie.get(..16) {
        Some(head) if cookie.len() > 16 => format!("{head}..."),
        _ => cookie.to_owned(),
    }
}

/// How many users kept their session when their server died.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub failover: Failover,
    pub users: usize,
    /// Users whose server was killed.
    pub affected: usize,
    /// Of those, still logged in with their cart.
    pub kept: usize,
}

impl Tally {
    pub fn lost(&self) -> usize {
        self.affected - self.kept
    }
}

/// A user who logged in and put a book in the cart, and the server that did it.
struct Shopper {
    browser: Browser,
    name: String,
    home: String,
}

/// `users` new users log in through `demo` and each add a book.
async fn shop(demo: &Demo, users: usize) -> Result<Vec<Shopper>, DemoError> {
    let mut shoppers = Vec::with_capacity(users);
    for i in 0..users {
        let mut browser = demo.browser();
        let name = format!("user{i}");
        browser.login(&name).await?;
        let (v, _) = browser.add("book").await?;
        shoppers.push(Shopper {
            browser,
            name,
            home: v.served_by,
        });
    }
    Ok(shoppers)
}

/// The shoppers whose server was `victim` click again: how many they are, and
/// how many are still logged in with their book.
async fn still_shopping(
    shoppers: &mut [Shopper],
    victim: &str,
) -> Result<(usize, usize), DemoError> {
    let (mut affected, mut kept) = (0, 0);
    for s in shoppers.iter_mut().filter(|s| s.home == victim) {
        affected += 1;
        let (v, _) = s.browser.cart().await?;
        if v.user.as_deref() == Some(s.name.as_str()) && v.items == ["book"] {
            kept += 1;
        }
    }
    Ok((affected, kept))
}

/// `users` log in and add to their cart through a fresh demo with `failover`;
/// `victim` dies; every user of the victim clicks again.
pub async fn contrast(
    config: &Config,
    failover: Failover,
    users: usize,
    victim: &str,
) -> Result<Tally, DemoError> {
    let mut config = config.clone();
    for up in config
        .upstreams
        .iter_mut()
        .filter(|u| u.name != CONTROL_UPSTREAM)
    {
        up.failover = failover;
    }
    let demo = Demo::start(config, Ports::Ephemeral).await?;
    let mut shoppers = shop(&demo, users).await?;
    demo.cluster.kill(victim).await;
    let (affected, kept) = still_shopping(&mut shoppers, victim).await?;
    demo.shutdown().await;
    Ok(Tally {
        failover,
        users,
        affected,
        kept,
    })
}

/// What happened to the sessions of a server that chose each session's replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    /// The server told limpet each session's replica (`x-session-replica`).
    pub told: bool,
    /// Users on the victim, and how many of them kept their session.
    pub affected: usize,
    pub kept: usize,
    /// Of the affected, those whose copy was not on the victim's static replica.
    pub elsewhere: usize,
}

/// `users` log in through a fresh demo in which `victim` places each new
/// session's copy on its peers in turn (telling limpet when `told`);
/// `victim` dies; every user of the victim clicks again.
pub async fn per_session(
    config: &Config,
    told: bool,
    users: usize,
    victim: &str,
) -> Result<Placed, DemoError> {
    let demo = Demo::start(config.clone(), Ports::Ephemeral).await?;
    demo.cluster
        .set_placement(victim, Placement::PerSession { tell: told });
    let static_replica = demo.cluster.replica_of(victim).map(str::to_owned);
    let mut shoppers = shop(&demo, users).await?;
    let elsewhere = shoppers
        .iter()
        .filter(|s| s.home == victim)
        .map(|s| s.browser.jar.get(SESSION_COOKIE))
        .filter(|id| id.and_then(|id| demo.cluster.holder_of_copy(id)) != static_replica.as_deref())
        .count();
    demo.cluster.kill(victim).await;
    let (affected, kept) = still_shopping(&mut shoppers, victim).await?;
    demo.shutdown().await;
    Ok(Placed {
        told,
        affected,
        kept,
        elsewhere,
    })
}

/// The whole narration: starts the demo, tells alice's story, then the contrast
/// with `users` users. Returns the demo (still serving) and whether every cart
/// that replica routing was responsible for survived.
pub async fn run<W: Write>(
    ports: Ports,
    users: usize,
    out: &mut W,
) -> Result<(Demo, bool), DemoError> {
    let config = Config::parse(CONFIG, CONFIG_NAME)?;
    let demo = Demo::start(config.clone(), ports).await?;
    writeln!(out, "limpet demo: a login that survives its server's death")?;
    writeln!(
        out,
        "======================================================\n"
    )?;
    for s in demo.cluster.servers() {
        writeln!(
            out,
            "  {}  {}  replicates its sessions to {}",
            s.name,
            s.addr,
            s.replica.as_deref().unwrap_or("nobody")
        )?;
    }
    writeln!(
        out,
        "  limpet {}  affinity = \"cookie\", failover = \"replica\"",
        demo.url()
    )?;
    if demo.ports_taken {
        writeln!(
            out,
            "  (the ports of {CONFIG_NAME} were taken, so limpet listens on free ones)"
        )?;
    }

    let report = walkthrough(&demo, None, out).await?;

    writeln!(
        out,
        "\n7. for contrast: {users} users log in and fill a cart, then {} dies",
        report.victim
    )?;
    let with = contrast(&config, Failover::Replica, users, &report.victim).await?;
    let without = contrast(&config, Failover::Rebalance, users, &report.victim).await?;
    for t in [with, without] {
        writeln!(
            out,
            "   failover = {:<12} {:>2} of {} users were on {}: {:>2} kept their session, {:>2} lost it",
            format!("\"{}\"", t.failover.as_str()),
            t.affected,
            t.users,
            report.victim,
            t.kept,
            t.lost()
        )?;
    }
    writeln!(
        out,
        "     (rebalance keeps a session only when it happens to land on {}, the one server with a copy)",
        report.replica
    )?;

    let victim = report.victim.as_str();
    let static_replica = demo.cluster.replica_of(victim).unwrap_or("-").to_owned();
    writeln!(
        out,
        "\n8. replicas chosen per session: {victim} now puts each new session's copy on its peers\n   \
         in turn (as a replication layer spreading its backups would), not always on\n   \
         {static_replica}; {users} users log in, then {victim} dies"
    )?;
    let told = per_session(&config, true, users, victim).await?;
    let untold = per_session(&config, false, users, victim).await?;
    for p in [told, untold] {
        writeln!(
            out,
            "   {:<34} {:>2} users on {victim} ({:>2} with their copy elsewhere than {static_replica}): {:>2} kept, {:>2} lost",
            if p.told {
                "with `x-session-replica: <name>`"
            } else {
                "without telling limpet"
            },
            p.affected,
            p.elsewhere,
            p.kept,
            p.affected - p.kept
        )?;
    }
    writeln!(
        out,
        "     (limpet carries the replica it is told in its signed cookie and sends each session\n      \
         to the server holding its copy; told nothing, it can only follow the static chain)"
    )?;

    let ok =
        report.survived && with.lost() == 0 && told.kept == told.affected && told.elsewhere > 0;
    writeln!(
        out,
        "\n{}",
        if ok {
            "Result: the cart survived its server's death."
        } else {
            "Result: FAILED: a session was lost (see the FAIL lines above)."
        }
    )?;
    Ok((demo, ok))
}
