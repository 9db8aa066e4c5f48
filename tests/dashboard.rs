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

mod common;
mod ops;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use common::*;
use ops::*;

/// How long any one wait in the browser may take (a loaded 2-core machine).
const WAIT: Duration = Duration::from_secs(60);

/// A headless chromium started by the test, killed (its whole process group, by
/// id) when dropped, also when the test fails.
struct Chromium {
    child: Child,
    port: u16,
    _profile: TempDir,
}

impl Chromium {
    /// Starts chromium, or says why it cannot and returns `None`.
    fn start() -> Option<Chromium> {
        let Some(binary) = chromium_binary() else {
            eprintln!(
                "SKIPPED: chromium not found (install Debian's `chromium`, or set \
                 LIMPET_CHROMIUM to a Chrome/Chromium binary); the dashboard was not \
                 tested in a browser"
            );
            return None;
        };
        let profile = TempDir::new("chromium");
        let log = std::fs::File::create(profile.0.join("stderr.log")).expect("chromium log");
        let child = Command::new(&binary)
            .args([
                "--headless",
                // Needed when the tests run as root (CI containers).
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-breakpad",
                "--disable-crash-reporter",
                "--window-size=1600,1000",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.0.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            // Its own process group, so that Drop ends its helpers too.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
        let mut chromium = Chromium {
            child,
            port: 0,
            _profile: profile,
        };
        chromium.port = chromium.devtools_port();
        Some(chromium)
    }

    /// The port chromium picked, from the `DevToolsActivePort` file it writes.
    fn devtools_port(&mut self) -> u16 {
        let file = self._profile.0.join("DevToolsActivePort");
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(port) = std::fs::read_to_string(&file)
                .ok()
                .and_then(|s| s.lines().next()?.trim().parse().ok())
            {
                return port;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("chromium exited ({status}): {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "chromium wrote no DevToolsActivePort within {WAIT:?}: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._profile.0.join("stderr.log")).unwrap_or_default()
    }

    /// A DevTools session on the browser's first page.
    async fn page(&self) -> Page {
        let list = "/json/list";
        let deadline = Instant::now() + WAIT;
        let url = loop {
            let targets = http_get_json(self.port, list).await;
            let page = targets.as_array().and_then(|t| {
                t.iter()
                    .find(|t| t["type"] == "page")
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str())
                    .map(str::to_owned)
            });
            if let Some(url) = page {
                break url;
            }
            assert!(Instant::now() < deadline, "no page target: {targets}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .unwrap_or_else(|e| panic!("devtools websocket {url}: {e}"));
        Page { ws, next_id: 1 }
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let pid = self.child.id();
        // The group we made for it: chromium's renderer and utility processes.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chromium_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("LIMPET_CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("chromium"))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `GET http://127.0.0.1:{port}{path}` as JSON (the DevTools HTTP endpoints).
async fn http_get_json(port: u16, path: &str) -> Value {
    let client = AdminClient::new(([127, 0, 0, 1], port).into());
    let reply = client.get(path).await;
    assert_eq!(reply.status, 200, "GET {path}: {}", reply.body);
    reply.json()
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One page, driven over the DevTools Protocol.
struct Page {
    ws: Socket,
    next_id: u64,
}

impl Page {
    /// Sends a command and returns its result (events in between are skipped).
    async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let command = json!({ "id": id, "method": method, "params": params });
        self.ws
            .send(Message::text(command.to_string()))
            .await
            .unwrap_or_else(|e| panic!("{method}: {e}"));
        let answer = tokio::time::timeout(WAIT, async {
            while let Some(message) = self.ws.next().await {
                let text = match message {
                    Ok(Message::Text(text)) => text,
                    Ok(_) => continue,
                    Err(e) => panic!("{method}: {e}"),
                };
                let value: Value = serde_json::from_str(&text).expect("devtools JSON");
                if value["id"] == id {
                    return value;
                }
            }
            panic!("{method}: the devtools websocket closed")
        })
        .await
        .unwrap_or_else(|_| panic!("{method}: no answer within {WAIT:?}"));
        assert!(answer["error"].is_null(), "{method}: {answer}");
        answer["result"].clone()
    }

    async fn open(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url })).await;
    }

    /// The value of a JavaScript expression, or `None` if it threw (for instance
    /// while the page is still loading).
    async fn eval(&mut self, expression: &str) -> Option<Value> {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            )
            .await;
        if result["exceptionDetails"].is_object() {
            return None;
        }
        Some(result["result"]["value"].clone())
    }

    /// Polls `expression` until it is true; panics with `what` after [`WAIT`].
    async fn wait_until(&mut self, expression: &str, what: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            if self.eval(expression).await == Some(Value::Bool(true)) {
                return;
            }
            if Instant::now() > deadline {
                let text = self.eval("document.body.innerText").await;
                panic!("{what}: not within {WAIT:?}; the page says: {text:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The text of the first element matching `selector`.
    async fn text(&mut self, selector: &str) -> String {
        let expression = format!("document.querySelector({selector:?})?.textContent ?? null");
        match self.eval(&expression).await {
            Some(Value::String(s)) => s,
            other => panic!("no text at {selector}: {other:?}"),
        }
    }

    /// A real left click at the middle of the element matching `selector`.
    async fn click(&mut self, selector: &str) {
        let expression = format!(
            "(() => {{ const e = document.querySelector({selector:?}); if (!e) return null; \
             e.scrollIntoView({{ block: 'center' }}); const r = e.getBoundingClientRect(); \
             return [r.x + r.width / 2, r.y + r.height / 2]; }})()"
        );
        let Some(Value::Array(at)) = self.eval(&expression).await else {
            panic!("nothing to click at {selector}");
        };
        let (x, y) = (at[0].clone(), at[1].clone());
        for (kind, buttons) in [("mouseMoved", 0), ("mousePressed", 1), ("mouseReleased", 0)] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({ "type": kind, "x": x, "y": y, "button": "left",
                        "buttons": buttons, "clickCount": 1 }),
            )
            .await;
        }
    }

    /// Clicks into the field matching `selector` and types `text`.
    async fn type_into(&mut self, selector: &str, text: &str) {
        self.click(selector).await;
        self.call("Input.insertText", json!({ "text": text })).await;
    }

    async fn close(mut self) {
        let _ = self.call("Browser.close", json!({})).await;
    }
}

fn config(backends: &[&TestBackend], admin_extra: &str) -> String {
    let mut toml = ring_config(
        backends,
        "[upstream.shop.health]\ninterval = \"200ms\"\ntimeout = \"150ms\"\nfall = 2\n",
    );
    toml.push_str(ADMIN);
    toml.push_str(admin_extra);
    toml
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
    let [a, b, c] = three_backends().await;
    let lb = TestLb::start(&config(&[&a, &b, &c], "")).await;
    let admin = AdminClient::new(lb.limpet.admin_addr.unwrap());
    let mut page = chromium.page().await;
    page.open(&format!("{}/", admin.base)).await;
    page.wait_until(
        "document.querySelectorAll('tr[data-backend]').length === 3",
        "three backend rows",
    )
    .await;
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
    page.close().await;
    drop(chromium);
}

#[tokio::test]
async fn with_a_token_the_buttons_send_the_one_entered() {
    let Some(chromium) = Chromium::start() else {
        return;
    };
    let [a, b, c] = three_backends().await;
    let lb = TestLb::start(&config(&[&a, &b, &c], "token = \"s3cret-token\"\n")).await;
    let admin = AdminClient::new(lb.limpet.admin_addr.unwrap());
    let mut page = chromium.page().await;
    page.open(&format!("{}/", admin.base)).await;
    page.wait_until(
        "document.querySelectorAll('tr[data-backend]').length === 3",
        "three backend rows",
    )
    .await;

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
