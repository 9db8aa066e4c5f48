//! Fixtures for the operations tests (health, admin, metrics, reload, shutdown), on
//! top of `tests/common`:
//!
//! - [`AdminClient`]: GET/POST on the admin listener, with an optional Bearer token,
//!   `/status` as JSON and `/metrics` parsed by a real Prometheus text parser.
//! - [`Metrics`]: a parsed scrape with label-matching lookups.
//! - [`TempDir`] and [`start_from_file`]: limpet in-process from a config *file*, so
//!   that reload has something to re-read.
//! - [`Process`]: the real `limpet` binary with JSON logs on stderr, for signals.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioExecutor;

/// The `[admin]` table for a test config: any free port.
pub const ADMIN: &str = "\n[admin]\nlisten = \"127.0.0.1:0\"\n";

/// A client of limpet's admin listener.
#[derive(Clone)]
pub struct AdminClient {
    pub base: String,
    pub token: Option<String>,
    /// The `Origin` a browser would send (none, as curl sends none).
    pub origin: Option<String>,
    inner: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
}

/// An admin answer.
#[derive(Debug)]
pub struct AdminReply {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl AdminReply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

impl AdminClient {
    pub fn new(addr: SocketAddr) -> AdminClient {
        AdminClient {
            base: format!("http://{addr}"),
            token: None,
            origin: None,
            inner: hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    pub fn with_token(mut self, token: &str) -> AdminClient {
        self.token = Some(token.to_string());
        self
    }

    pub async fn request(&self, method: &str, path: &str) -> AdminReply {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path));
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if let Some(origin) = &self.origin {
            req = req.header("origin", origin);
        }
        let req = req.body(Full::new(Bytes::new())).expect("admin request");
        let resp = tokio::time::timeout(Duration::from_secs(10), self.inner.request(req))
            .await
            .unwrap_or_else(|_| panic!("{method} {path}: timed out"))
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("admin body").to_bytes();
        AdminReply {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    pub async fn get(&self, path: &str) -> AdminReply {
        self.request("GET", path).await
    }

    pub async fn post(&self, path: &str) -> AdminReply {
        self.request("POST", path).await
    }

    /// `GET /status`, which must answer 200 with JSON.
    pub async fn status(&self) -> serde_json::Value {
        let r = self.get("/status").await;
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()
    }

    /// One backend's `/status` entry.
    pub async fn backend(&self, upstream: &str, backend: &str) -> serde_json::Value {
        let status = self.status().await;
        backend_entry(&status, upstream, backend)
    }

    /// One backend's state (`up`, `down`, `draining`, `maintenance`).
    pub async fn state(&self, backend: &str) -> String {
        self.backend("shop", backend).await["state"]
            .as_str()
            .expect("state")
            .to_string()
    }

    /// `POST /upstreams/shop/backends/{backend}/{action}`, which must answer 200.
    pub async fn set(&self, backend: &str, action: &str) -> serde_json::Value {
        let r = self
            .post(&format!("/upstreams/shop/backends/{backend}/{action}"))
            .await;
        assert_eq!(r.status, 200, "{action} {backend}: {}", r.body);
        r.json()
    }

    /// `GET /metrics`, parsed.
    pub async fn metrics(&self) -> Metrics {
        let r = self.get("/metrics").await;
        assert_eq!(r.status, 200, "{}", r.body);
        Metrics::parse(&r.body)
    }
}

/// The entry of `backend` in upstream `upstream` of a `/status` document.
pub fn backend_entry(
    status: &serde_json::Value,
    upstream: &str,
    backend: &str,
) -> serde_json::Value {
    let up = status["upstreams"]
        .as_array()
        .expect("upstreams")
        .iter()
        .find(|u| u["name"] == upstream)
        .unwrap_or_else(|| panic!("no upstream {upstream} in {status}"));
    up["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .find(|b| b["name"] == backend)
        .unwrap_or_else(|| panic!("no backend {backend} in {up}"))
        .clone()
}

/// A parsed `/metrics` scrape.
pub struct Metrics {
    pub scrape: prometheus_parse::Scrape,
    pub text: String,
}

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        let lines = text.lines().map(|l| Ok(l.to_string()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text format");
        Metrics {
            scrape,
            text: text.to_string(),
        }
    }

    /// Samples of `name` whose labels include every pair of `labels`.
    pub fn samples<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a prometheus_parse::Sample> + 'a {
        self.scrape.samples.iter().filter(move |s| {
            s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
        })
    }

    /// The sum of the matching counter, gauge or untyped samples (0 when none).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples(name, labels)
            .map(|s| match &s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => *v,
                other => panic!("{name} is not a single value: {other:?}"),
            })
            .sum()
    }

    /// The one sample of `name` with exactly `labels` (panics when absent).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let matching: Vec<_> = self
            .samples(name, labels)
            .filter(|s| s.labels.len() == labels.len())
            .collect();
        assert_eq!(
            matching.len(),
            1,
            "{name}{labels:?}: {} samples in\n{}",
            matching.len(),
            self.text
        );
        match &matching[0].value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            other => panic!("{name} is not a single value: {other:?}"),
        }
    }

    /// The `# TYPE` of a metric family, read from the text.
    pub fn type_of(&self, family: &str) -> Option<String> {
        self.text.lines().find_map(|l| {
            let rest = l.strip_prefix("# TYPE ")?;
            let (name, ty) = rest.split_once(' ')?;
            (name == family).then(|| ty.trim().to_string())
        })
    }

    /// Checks taken of a backend of upstream `shop` with `result` (`ok` / `fail`).
    pub fn checks(&self, backend: &str, result: &str) -> f64 {
        self.sum(
            "limpet_health_checks_total",
            &[
                ("upstream", "shop"),
                ("backend", backend),
                ("result", result),
            ],
        )
    }

    /// `limpet_backend_up` of a backend of upstream `shop`.
    pub fn up(&self, backend: &str) -> f64 {
        self.value(
            "limpet_backend_up",
            &[("upstream", "shop"), ("backend", backend)],
        )
    }
}

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "limpet-test-{tag}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    /// Writes `text` to `name` in the directory and returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        // Write then rename, as an editor or a deploy tool would: a reload never
        // reads a half-written file.
        let tmp = self.0.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).expect("write config");
        std::fs::rename(&tmp, &path).expect("rename config");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// limpet in-process from a config file (so that `POST /reload` re-reads it).
pub struct FileLb {
    pub limpet: limpet::Limpet,
    pub addr: SocketAddr,
    pub admin: AdminClient,
    pub path: PathBuf,
    pub dir: TempDir,
}

impl FileLb {
    /// Rewrites the config file (the running config is untouched until a reload).
    pub fn rewrite(&self, text: &str) {
        self.dir.write("limpet.toml", text);
    }

    pub fn client(&self) -> crate::common::Client {
        crate::common::Client::new(self.addr)
    }

    /// A client pinned to `backend` (see `common::client_pinned_to`).
    pub async fn client_pinned_to(&self, backend: &str) -> crate::common::Client {
        crate::common::client_pinned_to(self.addr, backend).await
    }
}

/// Writes `toml` (which needs an `[admin]` table) to a temp dir and starts limpet from it.
pub async fn start_from_file(toml: &str) -> FileLb {
    let dir = TempDir::new("lb");
    let path = dir.write("limpet.toml", toml);
    let config = limpet::Config::from_file(&path).unwrap_or_else(|e| panic!("config: {e}"));
    let limpet = limpet::Limpet::start(config).await.expect("start limpet");
    let addr = limpet.http_addrs[0];
    let admin = AdminClient::new(limpet.admin_addr.expect("the config needs [admin]"));
    FileLb {
        limpet,
        addr,
        admin,
        path,
        dir,
    }
}

/// The real `limpet run` binary, with JSON logs on stderr collected line by line.
pub struct Process {
    pub child: Child,
    pub http: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub logs: Arc<Mutex<Vec<serde_json::Value>>>,
    pub dir: TempDir,
    pub config: PathBuf,
}

impl Process {
    /// Starts `limpet run --config FILE` on `toml` and waits until it listens.
    pub async fn start(toml: &str) -> Process {
        let dir = TempDir::new("bin");
        let config = dir.write("limpet.toml", toml);
        let mut child = Command::new(env!("CARGO_BIN_EXE_limpet"))
            .args(["--log-format", "json", "run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn limpet");
        let stderr = child.stderr.take().expect("stderr");
        let logs: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
        let sink = logs.clone();
        // Drain stderr for the whole life of the process, so it never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let value = serde_json::from_str(&line)
                    .unwrap_or_else(|_| serde_json::json!({ "fields": { "message": line } }));
                sink.lock().unwrap().push(value);
            }
        });
        let mut process = Process {
            child,
            http: "0.0.0.0:0".parse().unwrap(),
            admin: None,
            logs,
            dir,
            config,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let http = process.logged_addr("listening on http://");
            if let Some(http) = http {
                process.http = http;
                process.admin = process.logged_addr("admin on http://");
                return process;
            }
            if let Ok(Some(status)) = process.child.try_wait() {
                panic!(
                    "limpet exited with {status}: {:#?}",
                    process.logs.lock().unwrap()
                );
            }
            assert!(
                Instant::now() < deadline,
                "limpet did not start: {:#?}",
                process.logs.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn logged_addr(&self, prefix: &str) -> Option<SocketAddr> {
        self.messages()
            .iter()
            .find_map(|m| m.strip_prefix(prefix).and_then(|a| a.trim().parse().ok()))
    }

    /// The `message` of every log line so far.
    pub fn messages(&self) -> Vec<String> {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| l["fields"]["message"].as_str().map(str::to_string))
            .collect()
    }

    /// Every log line so far.
    pub fn log_lines(&self) -> Vec<serde_json::Value> {
        self.logs.lock().unwrap().clone()
    }

    /// The access-log lines so far (target `limpet::access`).
    pub fn access_lines(&self) -> Vec<serde_json::Value> {
        self.log_lines()
            .into_iter()
            .filter(|l| l["target"] == "limpet::access")
            .collect()
    }

    pub fn admin_client(&self) -> AdminClient {
        AdminClient::new(self.admin.expect("the config needs [admin]"))
    }

    /// Sends a signal (`TERM`, `INT`, `HUP`) to the process.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit, at most `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Rewrites the config file.
    pub fn rewrite(&self, text: &str) {
        self.dir.write("limpet.toml", text);
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // Only this process, by its own handle.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Label pairs as a map, for asserting on a sample's whole label set.
pub fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Where a file lives relative to the temp dir, for error-message assertions.
pub fn display(path: &Path) -> String {
    path.display().to_string()
}
