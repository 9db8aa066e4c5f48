//! A real headless browser for the tests of limpet's pages (the admin dashboard,
//! the demo shop): Debian's `chromium`, started by the test (headless, a
//! temporary profile, `--remote-debugging-port=0`, its own process group) and
//! driven over the Chrome DevTools Protocol, JSON over the page's websocket.
//!
//! [`Chromium::start`] returns `None`, after saying so on stderr, when there is
//! no chromium (`LIMPET_CHROMIUM`, else `chromium` on `PATH`): the test then
//! returns. Dropping a [`Chromium`] kills its process group by id, also when the
//! test failed.
#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

/// How long any one wait in the browser may take (a loaded 2-core machine).
pub const WAIT: Duration = Duration::from_secs(60);

/// A headless chromium started by the test, killed (its whole process group, by
/// id) when dropped, also when the test fails.
pub struct Chromium {
    child: Child,
    port: u16,
    profile: Profile,
}

impl Chromium {
    /// Starts chromium, or says why it cannot and returns `None`.
    pub fn start() -> Option<Chromium> {
        let Some(binary) = chromium_binary() else {
            // Straight to stderr: the test harness hides what eprintln! says in a
            // passing test, and this must be seen.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: chromium not found (install Debian's `chromium`, or set \
                 LIMPET_CHROMIUM to a Chrome/Chromium binary): this test ran no browser"
            );
            return None;
        };
        let profile = Profile::new();
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
            profile,
        };
        chromium.port = chromium.devtools_port();
        Some(chromium)
    }

    /// The port chromium picked, from the `DevToolsActivePort` file it writes.
    fn devtools_port(&mut self) -> u16 {
        let file = self.profile.0.join("DevToolsActivePort");
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
        std::fs::read_to_string(self.profile.0.join("stderr.log")).unwrap_or_default()
    }

    /// A DevTools session on the browser's first page.
    pub async fn page(&self) -> Page {
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

/// `GET http://127.0.0.1:{port}{path}` as JSON (the DevTools HTTP endpoints,
/// which keep the connection open: the body is read by its Content-Length).
async fn http_get_json(port: u16, path: &str) -> Value {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let n = stream.read(&mut chunk).await?;
            answer.extend_from_slice(&chunk[..n]);
            if n == 0 || whole_response(&answer) {
                return Ok::<_, std::io::Error>(answer);
            }
        }
    };
    let answer = tokio::time::timeout(WAIT, exchange)
        .await
        .unwrap_or_else(|_| panic!("GET {path}: no answer within {WAIT:?}"))
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    assert!(head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

/// The response in `bytes` is complete: its head and Content-Length bytes of body.
fn whole_response(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(bytes);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let length = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())?
    });
    length.is_some_and(|n| body.len() >= n)
}

/// chromium's temporary profile directory, removed when dropped.
struct Profile(PathBuf);

impl Profile {
    fn new() -> Profile {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "limpet-test-chromium-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create chromium profile dir");
        Profile(dir)
    }
}

impl Drop for Profile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One page, driven over the DevTools Protocol.
pub struct Page {
    ws: Socket,
    next_id: u64,
}

impl Page {
    /// Sends a command and returns its result (events in between are skipped).
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
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

    pub async fn open(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url })).await;
    }

    /// The value of a JavaScript expression, or `None` if it threw (for instance
    /// while the page is still loading).
    pub async fn eval(&mut self, expression: &str) -> Option<Value> {
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
    pub async fn wait_until(&mut self, expression: &str, what: &str) {
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
    pub async fn text(&mut self, selector: &str) -> String {
        let expression = format!("document.querySelector({selector:?})?.textContent ?? null");
        match self.eval(&expression).await {
            Some(Value::String(s)) => s,
            other => panic!("no text at {selector}: {other:?}"),
        }
    }

    /// A real left click at the middle of the element matching `selector`.
    pub async fn click(&mut self, selector: &str) {
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
    pub async fn type_into(&mut self, selector: &str, text: &str) {
        self.click(selector).await;
        self.call("Input.insertText", json!({ "text": text })).await;
    }

    pub async fn close(mut self) {
        let _ = self.call("Browser.close", json!({})).await;
    }
}
