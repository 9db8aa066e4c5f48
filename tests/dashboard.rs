//! Issue 12 item 7: the live dashboard at the admin listener's `/`, in a real
//! headless browser.
//!
//! Each test starts Debian's `chromium` itself (headless, a temporary profile,
//! `--remote-debugging-port=0`), drives it over the Chrome DevTools Protocol
//! (JSON over the page's websocket), loads the dashboard of a real limpet in
//! front of real backends, waits for the backend rows, clicks a button with real
//! mouse events at its coordinates, and checks through the admin API that the
//! backend's state changed. Without chromium (`LIMPET_CHROMIUM` or `chromium` on
//! `PATH`) each test prints why and returns.

mod browser;
mod common;
mod ops;

use std::time::Instant;

use browser::{Chromium, Page, WAIT};
use common::*;
use ops::*;

fn config(backends: &[&TestBackend], admin_extra: &str) -> String {
    let mut toml = ring_config(
        backends,
        "[upstream.shop.health]\ninterval = \"200ms\"\ntimeout = \"150ms\"\nfall = 2\n",
    );
    toml.push_str(ADMIN);
    toml.push_str(admin_extra);
    toml
}

/// A limpet in front of three backends, its dashboard open in a page.
struct Dashboard {
    backends: [TestBackend; 3],
    lb: TestLb,
    admin: AdminClient,
    page: Page,
}

/// Starts three backends and limpet (`admin_extra` appended to `[admin]`),
/// opens the dashboard and waits until it shows the three backend rows.
async fn open_dashboard(chromium: &Chromium, admin_extra: &str) -> Dashboard {
    let backends = three_backends().await;
    let [a, b, c] = &backends;
    let lb = TestLb::start(&config(&[a, b, c], admin_extra)).await;
    let admin = AdminClient::new(lb.limpet.admin_addr.unwrap());
    let mut page = chromium.page().await;
    page.open(&format!("{}/", admin.base)).await;
    page.wait_until(
        "document.querySelectorAll('tr[data-backend]').length === 3",
        "three backend rows",
    )
    .await;
    Dashboard {
        backends,
        lb,
        admin,
        page,
    }
}

fn row(backend: &str) -> String {
    format!("tr[data-backend=\"shop/{backend}\"]")
}

fn button(backend: &str, action: &str) -> String {
    format!("{} button[data-action=\"{action}\"]", row(backend))
}

/// Waits until the page shows `backend` in `state` (the page's own refresh).
async fn page_shows_state(page: &mut Page, backend: &str, state: &str) {
    let cell = format!("{} td.state", row(backend));
    page.wait_until(
        &format!("document.querySelector({cell:?})?.textContent === {state:?}"),
        &format!("the page showing {backend} {state}"),
    )
    .await;
}

#[tokio::test]
async fn the_dashboard_shows_every_backend_and_its_buttons_act() {
    let Some(chromium) = Chromium::start() else {
        return;
    };
    let Dashboard {
        backends: [a, b, c],
        lb,
        admin,
        mut page,
    } = open_dashboard(&chromium, "").await;
    assert_eq!(page.text(&format!("{} td.state", row("app1"))).await, "up");
    assert_eq!(
        page.text(&format!("{} td:nth-child(10)", row("app1")))
            .await,
        "app2 → app3 → rebalance",
        "where app1's sessions fail over"
    );

    // Traffic shows as requests per second, computed between two refreshes.
    let mut client = lb.client();
    let pinned = client.get("/").await.backend().to_string();
    let rate = format!("{} td:nth-child(7)", row(&pinned));
    let deadline = Instant::now() + WAIT;
    loop {
        client.get("/").await;
        let shown = page.text(&rate).await;
        if shown.parse::<f64>().is_ok_and(|r| r > 0.0) {
            break;
        }
        assert!(Instant::now() < deadline, "req/s of {pinned}: {shown}");
    }

    let sessions = format!("{} td:nth-child(6)", row(&pinned));
    page.wait_until(
        &format!("Number(document.querySelector({sessions:?})?.textContent) >= 1"),
        "the pinned backend's active sessions",
    )
    .await;

    // A dead backend: its health cell says why, and its failovers are counted.
    let (victim, victim_backend) = match pinned.as_str() {
        "app1" => ("app1", &a),
        "app2" => ("app2", &b),
        _ => ("app3", &c),
    };
    victim_backend.stop().await;
    let reply = client.get("/").await;
    assert_ne!(reply.backend(), victim, "failed over");
    let health = format!("{} td:nth-child(3)", row(victim));
    page.wait_until(
        &format!(
            "document.querySelector({health:?})?.textContent.startsWith('downcheck failed: ')"
        ),
        "the page showing the failed check and its reason",
    )
    .await;
    let failovers = admin.backend("shop", victim).await["failovers"].clone();
    assert_eq!(failovers, 1, "one request failed over from {victim}");
    let cell = format!("{} td:nth-child(9)", row(victim));
    page.wait_until(
        &format!("document.querySelector({cell:?})?.textContent === '1'"),
        "the page showing one failover",
    )
    .await;

    // Each button, pressed with the mouse, changes the backend's state.
    let other = if victim == "app1" { "app2" } else { "app1" };
    page.click(&button(other, "drain")).await;
    lb.wait_backend_state("shop", other, "draining", WAIT).await;
    assert_eq!(admin.state(other).await, "draining");
    page_shows_state(&mut page, other, "draining").await;
    page.click(&button(other, "maintenance")).await;
    lb.wait_backend_state("shop", other, "maintenance", WAIT)
        .await;
    page_shows_state(&mut page, other, "maintenance").await;
    page.click(&button(other, "ready")).await;
    lb.wait_backend_state("shop", other, "up", WAIT).await;
    page_shows_state(&mut page, other, "up").await;

    // A drain with the deadline typed into the page; a bad one is refused.
    page.type_into("#deadline", "soon").await;
    page.click(&button(other, "drain")).await;
    page.wait_until(
        "document.getElementById('msg').textContent.includes(': 400 ')",
        "the 400 for a bad deadline",
    )
    .await;
    assert_eq!(admin.state(other).await, "up");
    page.eval("document.getElementById('deadline').value = ''")
        .await;
    page.type_into("#deadline", "30m").await;
    page.click(&button(other, "drain")).await;
    lb.wait_backend_state("shop", other, "draining", WAIT).await;
    let drain = admin.backend("shop", other).await["drain"].clone();
    assert!(drain["left_s"].as_u64().is_some_and(|s| s > 60), "{drain}");
    let state = format!("{} td.state", row(other));
    page.wait_until(
        &format!(
            "document.querySelector({state:?})?.textContent.startsWith('drainingfails over in ')"
        ),
        "the page showing the drain's time left",
    )
    .await;
    page.close().await;
    drop(chromium);
}

#[tokio::test]
async fn with_a_token_the_buttons_send_the_one_entered() {
    let Some(chromium) = Chromium::start() else {
        return;
    };
    let Dashboard {
        backends: _backends,
        lb,
        admin,
        mut page,
    } = open_dashboard(&chromium, "token = \"s3cret-token\"\n").await;

    // No token: a clear 401 message, nothing changes.
    page.click(&button("app2", "drain")).await;
    page.wait_until(
        "document.getElementById('msg').textContent.startsWith('401: this limpet needs the admin token')",
        "the message asking for the token",
    )
    .await;
    assert_eq!(admin.state("app2").await, "up");

    // A wrong token: refused, nothing changes.
    page.type_into("#token", "guess").await;
    page.click("#token-save").await;
    page.click(&button("app2", "drain")).await;
    page.wait_until(
        "document.getElementById('msg').textContent.startsWith('401: the admin token was refused')",
        "the message saying the token was refused",
    )
    .await;
    assert_eq!(admin.state("app2").await, "up");

    // The right one: the backend drains.
    page.click("#token-forget").await;
    page.type_into("#token", "s3cret-token").await;
    page.click("#token-save").await;
    page.click(&button("app2", "drain")).await;
    lb.wait_backend_state("shop", "app2", "draining", WAIT)
        .await;
    page_shows_state(&mut page, "app2", "draining").await;
    // Kept for the tab: a reload of the page still sends it.
    page.open(&format!("{}/", admin.base)).await;
    page.wait_until(
        "document.querySelectorAll('tr[data-backend]').length === 3",
        "three backend rows after a reload",
    )
    .await;
    page.click(&button("app2", "ready")).await;
    lb.wait_backend_state("shop", "app2", "up", WAIT).await;
    page.close().await;
    drop(chromium);
}
