//! SPEC section 1: one access log line per request, at `info` of target
//! `limpet::access`, with method, path, status, upstream, backend, affinity
//! outcome and duration; checked on the real binary's JSON logs. Issue 12
//! item 5: `[log] access` ("stderr", "off", a file reopened on SIGUSR1) and
//! `format`, and the fields request_id (x-request-id kept or made, and
//! forwarded), client, bytes_in, bytes_out, failover_from.

mod common;
mod ops;

use std::time::Duration;

use common::*;
use ops::*;

#[tokio::test]
async fn every_request_gets_one_access_line_with_its_fields() {
    let app1 = TestBackend::spawn("app1").await;
    let toml = format!(
        "[listen]\nhttp = [\"127.0.0.1:0\"]\n\n[[route]]\npath_prefix = \"/shop\"\nupstream = \"shop\"\n\n\
         [upstream.shop.cookie]\nsecret = \"s\"\n\n[[upstream.shop.backend]]\nname = \"app1\"\naddr = \"{}\"\n",
        app1.addr
    );
    let process = Process::start(&toml).await;
    let mut client = Client::new(process.http);
    assert_eq!(client.get("/shop/cart?x=1").await.status, 200);
    assert_eq!(client.get("/shop/cart").await.status, 200);
    assert_eq!(client.get("/elsewhere").await.status, 404);

    assert!(
        eventually(Duration::from_secs(5), || async {
            process.access_lines().len() >= 3
        })
        .await,
        "three access lines: {:#?}",
        process.log_lines()
    );
    let lines = process.access_lines();
    assert_eq!(lines.len(), 3, "{lines:#?}");
    let fields: Vec<&serde_json::Value> = lines.iter().map(|l| &l["fields"]).collect();
    assert_eq!(lines[0]["level"], "INFO");
    assert_eq!(fields[0]["method"], "GET");
    assert_eq!(fields[0]["path"], "/shop/cart?x=1");
    assert_eq!(fields[0]["status"], 200);
    assert_eq!(fields[0]["upstream"], "shop");
    assert_eq!(fields[0]["backend"], "app1");
    assert_eq!(fields[0]["affinity"], "new");
    assert!(
        fields[0]["duration_us"].as_u64().is_some(),
        "{:?}",
        fields[0]
    );
    assert_eq!(fields[1]["affinity"], "pinned");
    assert_eq!(fields[2]["status"], 404);
    assert_eq!(fields[2]["upstream"], "");
    assert_eq!(fields[2]["affinity"], "-");
}

/// A request limpet refuses before routing (a malformed head: 400; an
/// unmet expectation: 417) gets its access line too, with what of its
/// method and target can be read (visible ASCII, else `-`: the bytes are
/// the client's). It got none, and no count in limpet_requests_total.
#[tokio::test]
async fn a_refused_request_head_gets_its_access_line() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app1 = TestBackend::spawn("app1").await;
    let toml = format!(
        "[listen]\nhttp = [\"127.0.0.1:0\"]\n\n\
         [upstream.shop.cookie]\nsecret = \"s\"\n\n[[upstream.shop.backend]]\nname = \"app1\"\naddr = \"{}\"\n",
        app1.addr
    );
    let process = Process::start(&toml).await;
    for raw in [
        &b"GET /two HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"[..],
        b"PUT /x HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\nContent-Length: 1\r\n\r\nx",
        b"G\x01T /\x7f HTTP/1.1\r\nHost: a\r\n\r\n",
    ] {
        let mut conn = tokio::net::TcpStream::connect(process.http).await.unwrap();
        conn.write_all(raw).await.unwrap();
        let mut answer = Vec::new();
        let _ = conn.read_to_end(&mut answer).await;
        assert!(
            answer.starts_with(b"HTTP/1.1 4"),
            "{:?}",
            String::from_utf8_lossy(&answer)
        );
    }
    assert!(
        eventually(Duration::from_secs(5), || async {
            process.access_lines().len() >= 3
        })
        .await,
        "three access lines: {:#?}",
        process.log_lines()
    );
    let lines: Vec<_> = process
        .access_lines()
        .iter()
        .map(|l| l["fields"].clone())
        .collect();
    let seen: Vec<_> = lines
        .iter()
        .map(|f| (f["method"].clone(), f["path"].clone(), f["status"].clone()))
        .collect();
    assert_eq!(
        seen,
        [
            ("GET".into(), "/two".into(), 400.into()),
            ("PUT".into(), "/x".into(), 417.into()),
            ("-".into(), "-".into(), 400.into()),
        ],
        "{lines:#?}"
    );
    assert!(
        lines.iter().all(|f| f["bytes_out"].as_u64() > Some(0)),
        "{lines:#?}"
    );
}

/// The real binary with a given `--log-format` and `RUST_LOG` (`None`: unset,
/// the default), on a port chosen here: at `warn` nothing says where it listens.
struct Binary {
    child: std::process::Child,
    http: std::net::SocketAddr,
    stderr: Option<std::thread::JoinHandle<Vec<String>>>,
    _dir: TempDir,
}

impl Binary {
    async fn start(backend: std::net::SocketAddr, format: &str, rust_log: Option<&str>) -> Binary {
        Binary::start_with(backend, format, rust_log, |_| String::new()).await
    }

    /// As [`Binary::start`], with `extra(dir)` appended to the config (`dir`:
    /// a directory removed with the binary, for log files).
    async fn start_with(
        backend: std::net::SocketAddr,
        format: &str,
        rust_log: Option<&str>,
        extra: impl FnOnce(&std::path::Path) -> String,
    ) -> Binary {
        let toml = |http: std::net::SocketAddr, dir: &std::path::Path| {
            format!(
                "[listen]\nhttp = [\"{http}\"]\n\n[[route]]\npath_prefix = \"/shop\"\nupstream = \"shop\"\n\n\
                 [[route]]\npath_prefix = \"/echo\"\nupstream = \"shop\"\n\n\
                 [upstream.shop.cookie]\nsecret = \"s\"\n\n[[upstream.shop.backend]]\nname = \"app1\"\naddr = \"{backend}\"\n\n{}",
                extra(dir)
            )
        };
        Binary::launch(format, rust_log, toml).await
    }

    /// The binary on the config `toml(its http address, a directory removed
    /// with it)`.
    async fn launch(
        format: &str,
        rust_log: Option<&str>,
        toml: impl FnOnce(std::net::SocketAddr, &std::path::Path) -> String,
    ) -> Binary {
        use std::io::BufRead;
        // Free a port for limpet (the same pattern as binding to :0, one step later).
        let http = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let dir = TempDir::new("access-log");
        let toml = toml(http, &dir.0);
        let config = dir.write("limpet.toml", &toml);
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_limpet"));
        command
            .args(["--log-format", format, "run", "--config"])
            .arg(&config)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        match rust_log {
            Some(filter) => command.env("RUST_LOG", filter),
            None => command.env_remove("RUST_LOG"),
        };
        let mut child = command.spawn().expect("spawn limpet");
        let stderr = child.stderr.take().expect("stderr");
        // Drained all along, so that limpet never blocks on a full pipe.
        let stderr = std::thread::spawn(move || {
            std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
                .collect()
        });
        let mut binary = Binary {
            child,
            http,
            stderr: Some(stderr),
            _dir: dir,
        };
        let listening = eventually(Duration::from_secs(10), || async {
            tokio::net::TcpStream::connect(http).await.is_ok()
        })
        .await;
        if !listening {
            panic!(
                "limpet did not listen on {http}: {:#?}",
                binary.stop().await
            );
        }
        binary
    }

    /// Sends `signal` (`-USR1`, ...) to this process, by its pid.
    fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .arg(signal)
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// SIGTERM, then every line it wrote (the log is flushed at exit).
    async fn stop(&mut self) -> Vec<String> {
        let status = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success());
        let exited = eventually(Duration::from_secs(10), || {
            let done = matches!(self.child.try_wait(), Ok(Some(_)));
            async move { done }
        })
        .await;
        assert!(exited, "limpet did not exit on SIGTERM");
        self.stderr.take().expect("stopped once").join().unwrap()
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        // Only this process, by its own handle.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The same three requests as above; the client is dropped, so that no
/// connection is left open at shutdown.
async fn three_requests(http: std::net::SocketAddr) {
    let mut client = Client::new(http);
    assert_eq!(client.get("/shop/cart?x=1").await.status, 200);
    assert_eq!(client.get("/shop/cart").await.status, 200);
    assert_eq!(client.get("/elsewhere").await.status, 404);
}

/// A line with its timestamp as `TS` (checked to be RFC 3339 in UTC with
/// microseconds, as tracing-subscriber writes it) and duration as `N`.
fn masked(line: &str) -> String {
    let shape = b"dddd-dd-ddTdd:dd:dd.ddddddZ";
    let bytes = line.as_bytes();
    let at = (0..bytes.len().saturating_sub(shape.len()))
        .find(|&i| {
            shape.iter().zip(&bytes[i..]).all(|(s, b)| match s {
                b'd' => b.is_ascii_digit(),
                s => s == b,
            })
        })
        .unwrap_or_else(|| panic!("no timestamp in {line:?}"));
    let line = format!("{}TS{}", &line[..at], &line[at + shape.len()..]);
    let line = masked_request_id(&line);
    let mut out = String::new();
    let mut rest = line.as_str();
    for key in ["duration_us=", "\"duration_us\":"] {
        if let Some(i) = rest.find(key) {
            let end = i + key.len();
            let digits = rest[end..].bytes().take_while(u8::is_ascii_digit).count();
            assert!(digits > 0, "{line:?}");
            out.push_str(&rest[..end]);
            out.push('N');
            rest = &rest[end + digits..];
        }
    }
    out.push_str(rest);
    out
}

/// `line` with a generated request id (32 hex digits) as `R`.
fn masked_request_id(line: &str) -> String {
    for key in ["request_id=\"", "\"request_id\":\""] {
        if let Some(i) = line.find(key) {
            let start = i + key.len();
            let id = &line[start..start + 32];
            assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{line:?}");
            assert_eq!(&line[start + 32..start + 33], "\"", "{line:?}");
            return format!("{}R{}", &line[..start], &line[start + 32..]);
        }
    }
    line.to_string()
}

#[tokio::test]
async fn text_format_access_lines_are_the_fmt_layers() {
    let app1 = TestBackend::spawn("app1").await;
    // RUST_LOG unset: the default, info.
    let mut limpet = Binary::start(app1.addr, "text", None).await;
    three_requests(limpet.http).await;
    let lines: Vec<String> = limpet.stop().await.iter().map(|l| masked(l)).collect();
    let access: Vec<&String> = lines.iter().filter(|l| l.contains("access")).collect();
    assert_eq!(
        access,
        [
            "TS  INFO limpet::access: method=\"GET\" path=/shop/cart?x=1 status=200 upstream=\"shop\" backend=\"app1\" affinity=\"new\" duration_us=N request_id=\"R\" client=127.0.0.1 bytes_in=0 bytes_out=4 failover_from=\"\"",
            "TS  INFO limpet::access: method=\"GET\" path=/shop/cart status=200 upstream=\"shop\" backend=\"app1\" affinity=\"pinned\" duration_us=N request_id=\"R\" client=127.0.0.1 bytes_in=0 bytes_out=4 failover_from=\"\"",
            "TS  INFO limpet::access: method=\"GET\" path=/elsewhere status=404 upstream=\"\" backend=\"\" affinity=\"-\" duration_us=N request_id=\"R\" client=127.0.0.1 bytes_in=0 bytes_out=13 failover_from=\"\"",
        ],
        "{lines:#?}"
    );
    // Every other event still goes through the fmt layer.
    let http = limpet.http;
    assert!(
        lines.contains(&format!("TS  INFO limpet: listening on http://{http}")),
        "{lines:#?}"
    );
    assert_eq!(
        lines.last().map(String::as_str),
        Some("TS  INFO limpet: stopped")
    );
}

#[tokio::test]
async fn json_access_lines_keep_the_json_formatters_keys_and_order() {
    let app1 = TestBackend::spawn("app1").await;
    let mut limpet = Binary::start(app1.addr, "json", None).await;
    three_requests(limpet.http).await;
    let lines: Vec<String> = limpet.stop().await.iter().map(|l| masked(l)).collect();
    let access: Vec<&String> = lines.iter().filter(|l| l.contains("access")).collect();
    assert_eq!(
        access,
        [
            r#"{"timestamp":"TS","level":"INFO","fields":{"method":"GET","path":"/shop/cart?x=1","status":200,"upstream":"shop","backend":"app1","affinity":"new","duration_us":N,"request_id":"R","client":"127.0.0.1","bytes_in":0,"bytes_out":4,"failover_from":""},"target":"limpet::access"}"#,
            r#"{"timestamp":"TS","level":"INFO","fields":{"method":"GET","path":"/shop/cart","status":200,"upstream":"shop","backend":"app1","affinity":"pinned","duration_us":N,"request_id":"R","client":"127.0.0.1","bytes_in":0,"bytes_out":4,"failover_from":""},"target":"limpet::access"}"#,
            r#"{"timestamp":"TS","level":"INFO","fields":{"method":"GET","path":"/elsewhere","status":404,"upstream":"","backend":"","affinity":"-","duration_us":N,"request_id":"R","client":"127.0.0.1","bytes_in":0,"bytes_out":13,"failover_from":""},"target":"limpet::access"}"#,
        ],
        "{lines:#?}"
    );
    assert_eq!(
        lines.last().map(String::as_str),
        Some(
            r#"{"timestamp":"TS","level":"INFO","fields":{"message":"stopped"},"target":"limpet"}"#
        )
    );
}

#[tokio::test]
async fn rust_log_turns_the_access_log_off() {
    let app1 = TestBackend::spawn("app1").await;
    for (filter, other_info_lines) in [("warn", false), ("info,limpet::access=off", true)] {
        for format in ["text", "json"] {
            let mut limpet = Binary::start(app1.addr, format, Some(filter)).await;
            three_requests(limpet.http).await;
            let lines = limpet.stop().await;
            let what = format!("RUST_LOG={filter} --log-format {format}: {lines:#?}");
            assert!(!lines.iter().any(|l| l.contains("access")), "{what}");
            assert_eq!(
                lines.iter().any(|l| l.contains("stopped")),
                other_info_lines,
                "{what}"
            );
        }
    }
}

/// The access lines among `lines`, parsed (JSON format).
fn json_access(lines: &[String]) -> Vec<serde_json::Value> {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "limpet::access")
        .map(|v| v["fields"].clone())
        .collect()
}

fn read_lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|t| t.lines().map(str::to_string).collect())
        .unwrap_or_default()
}

fn is_generated_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

#[tokio::test]
async fn request_ids_are_kept_or_made_forwarded_and_logged_with_the_byte_counts() {
    let app1 = TestBackend::spawn("app1").await;
    let mut limpet = Binary::start(app1.addr, "json", None).await;
    let mut client = Client::new(limpet.http);
    client
        .headers
        .insert("x-request-id", "abc-123.XYZ".parse().unwrap());
    let kept = client.get("/shop/kept").await;
    assert_eq!(kept.header("x-seen-request-id"), Some("abc-123.XYZ"));
    // Not sane (a space; too long): replaced by one limpet makes.
    client
        .headers
        .insert("x-request-id", "two words".parse().unwrap());
    let spaced = client.get("/shop/spaced").await;
    let long = "x".repeat(65);
    client.headers.insert("x-request-id", long.parse().unwrap());
    let too_long = client.get("/shop/long").await;
    client.headers.clear();
    let made = client.get("/shop/made").await;
    let again = client.get("/shop/made").await;
    let ids: Vec<String> = [&spaced, &too_long, &made, &again]
        .iter()
        .map(|r| r.header("x-seen-request-id").unwrap_or("").to_string())
        .collect();
    for id in &ids {
        assert!(is_generated_id(id), "{ids:?}");
    }
    assert_ne!(ids[2], ids[3], "one id per request");
    let echoed = client
        .request("POST", "/echo", bytes::Bytes::from_static(b"hello, limpet"))
        .await;
    assert_eq!(echoed.body, "hello, limpet");

    let fields = json_access(&limpet.stop().await);
    assert_eq!(fields.len(), 6, "{fields:#?}");
    assert_eq!(fields[0]["request_id"], "abc-123.XYZ");
    for (line, id) in fields[1..5].iter().zip(&ids) {
        assert_eq!(
            line["request_id"],
            id.as_str(),
            "the backend's id is logged"
        );
    }
    for line in &fields {
        assert_eq!(line["client"], "127.0.0.1");
        assert_eq!(line["failover_from"], "");
    }
    assert_eq!(fields[0]["bytes_in"], 0);
    assert_eq!(fields[0]["bytes_out"], 4, "app1");
    assert_eq!(fields[5]["path"], "/echo");
    assert_eq!(fields[5]["bytes_in"], 13);
    assert_eq!(fields[5]["bytes_out"], 13);
}

#[tokio::test]
async fn failover_from_names_the_backend_failed_over_from() {
    let backends = three_backends().await;
    let ring = backends
        .iter()
        .enumerate()
        .map(|(i, b)| {
            format!(
                "[[upstream.shop.backend]]\nname = \"{}\"\naddr = \"{}\"\nreplica = \"{}\"\n\n",
                b.name,
                b.addr,
                backends[(i + 1) % 3].name
            )
        })
        .collect::<String>();
    let mut limpet = Binary::launch("json", None, |http, _| {
        format!("[listen]\nhttp = [\"{http}\"]\n\n[upstream.shop.cookie]\nsecret = \"s\"\n\n{ring}")
    })
    .await;
    let mut client = Client::new(limpet.http);
    let first = client.get("/").await;
    let pinned = first.backend().to_string();
    let dead = backends.iter().find(|b| b.name == pinned).unwrap();
    dead.stop().await;
    let after = client.get("/").await;
    assert_eq!(after.status, 200);
    assert_ne!(after.backend(), pinned);
    let fields = json_access(&limpet.stop().await);
    assert_eq!(fields.len(), 2, "{fields:#?}");
    assert_eq!(fields[0]["failover_from"], "");
    assert_eq!(fields[1]["failover_from"], pinned.as_str(), "{fields:#?}");
    assert_eq!(fields[1]["backend"], after.backend());
}

#[tokio::test]
async fn a_file_destination_is_appended_to_and_reopened_on_sigusr1() {
    let app1 = TestBackend::spawn("app1").await;
    let mut path = std::path::PathBuf::new();
    // RUST_LOG=warn: an explicit destination does not ask RUST_LOG.
    let mut limpet = Binary::start_with(app1.addr, "text", Some("warn"), |dir| {
        path = dir.join("access.log");
        std::fs::write(&path, "an older line\n").unwrap();
        format!(
            "[log]\naccess = \"{}\"\nformat = \"json\"\n",
            path.display()
        )
    })
    .await;
    let mut client = Client::new(limpet.http);
    client.get("/shop/one").await;
    client.get("/shop/two").await;
    let written = eventually(Duration::from_secs(10), || async {
        read_lines(&path).len() == 3
    })
    .await;
    assert!(written, "{:?}", read_lines(&path));
    let lines = read_lines(&path);
    assert_eq!(lines[0], "an older line", "appended, not truncated");
    let fields = json_access(&lines);
    assert_eq!(fields[0]["path"], "/shop/one");
    assert_eq!(fields[1]["path"], "/shop/two");
    assert!(is_generated_id(fields[0]["request_id"].as_str().unwrap()));

    // logrotate: rename, then SIGUSR1; lines go to a new file at the path.
    let rotated = path.with_extension("log.1");
    std::fs::rename(&path, &rotated).unwrap();
    limpet.signal("-USR1");
    let mut sent = 0;
    let reopened = eventually(Duration::from_secs(10), || {
        sent += 1;
        let mut client = Client::new(limpet.http);
        let path = path.clone();
        async move {
            client.get("/shop/after").await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            !read_lines(&path).is_empty()
        }
    })
    .await;
    assert!(reopened, "no new file after SIGUSR1");
    let stderr = limpet.stop().await;
    assert!(
        !stderr.iter().any(|l| l.contains("limpet::access")),
        "{stderr:#?}"
    );
    let old = json_access(&read_lines(&rotated));
    let new = json_access(&read_lines(&path));
    assert!(!new.is_empty());
    assert!(new.iter().all(|f| f["path"] == "/shop/after"), "{new:#?}");
    // Every line is in one of the files: none lost across the rotation.
    let after =
        |fields: &[serde_json::Value]| fields.iter().filter(|f| f["path"] == "/shop/after").count();
    assert_eq!(after(&old) + after(&new), sent, "{old:#?} {new:#?}");
}

#[tokio::test]
async fn access_off_writes_nothing_and_leaves_x_request_id_alone() {
    let app1 = TestBackend::spawn("app1").await;
    let mut limpet = Binary::start_with(app1.addr, "json", None, |_| {
        "[log]\naccess = \"off\"\n".to_string()
    })
    .await;
    let mut client = Client::new(limpet.http);
    let none = client.get("/shop/a").await;
    assert_eq!(none.header("x-seen-request-id"), None);
    client
        .headers
        .insert("x-request-id", "two words".parse().unwrap());
    let passed = client.get("/shop/b").await;
    assert_eq!(passed.header("x-seen-request-id"), Some("two words"));
    let lines = limpet.stop().await;
    assert!(json_access(&lines).is_empty(), "{lines:#?}");
    assert!(lines.iter().any(|l| l.contains("stopped")), "{lines:#?}");
}

#[tokio::test]
async fn access_stderr_is_on_whatever_rust_log_says() {
    let app1 = TestBackend::spawn("app1").await;
    let mut limpet = Binary::start_with(app1.addr, "text", Some("warn"), |_| {
        "[log]\naccess = \"stderr\"\nformat = \"json\"\n".to_string()
    })
    .await;
    three_requests(limpet.http).await;
    let lines = limpet.stop().await;
    let fields = json_access(&lines);
    assert_eq!(fields.len(), 3, "{lines:#?}");
    assert_eq!(fields[2]["status"], 404);
    // The other logs keep RUST_LOG=warn.
    assert!(!lines.iter().any(|l| l.contains("stopped")), "{lines:#?}");
}

#[tokio::test]
async fn http2_requests_are_logged_with_their_id_and_bytes() {
    let app1 = TestBackend::spawn("app1").await;
    let mut limpet = Binary::start(app1.addr, "json", None).await;
    let mut h2 = common::wire::h2_client(common::wire::raw(limpet.http).await).await;
    for id in [Some("h2-id-1"), None] {
        let mut req = http::Request::get(format!("http://{}/shop/h2", limpet.http));
        if let Some(id) = id {
            req = req.header("x-request-id", id);
        }
        let resp = h2
            .send_request(req.body(http_body_util::Empty::new()).unwrap())
            .await
            .expect("h2 response");
        let seen = resp.headers()["x-seen-request-id"].to_str().unwrap();
        match id {
            Some(id) => assert_eq!(seen, id),
            None => assert!(is_generated_id(seen), "{seen}"),
        }
        // The body is read to its end: the line is written then.
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(&body[..], b"app1");
    }
    drop(h2);
    let fields = json_access(&limpet.stop().await);
    assert_eq!(fields.len(), 2, "{fields:#?}");
    assert_eq!(fields[0]["request_id"], "h2-id-1");
    assert!(is_generated_id(fields[1]["request_id"].as_str().unwrap()));
    for line in &fields {
        assert_eq!(line["bytes_out"], 4);
        assert_eq!(line["bytes_in"], 0);
        assert_eq!(line["client"], "127.0.0.1");
    }
}

#[tokio::test]
async fn sighup_moves_the_access_log_to_a_file() {
    let app1 = TestBackend::spawn("app1").await;
    let mut config = std::path::PathBuf::new();
    let mut limpet = Binary::start_with(app1.addr, "text", None, |dir| {
        config = dir.join("limpet.toml");
        "[log]\naccess = \"off\"\n".to_string()
    })
    .await;
    let log = config.with_file_name("after-reload.log");
    let text = std::fs::read_to_string(&config).unwrap();
    let moved = text.replace(
        "access = \"off\"",
        &format!("access = \"{}\"\nformat = \"json\"", log.display()),
    );
    assert_ne!(text, moved);
    Client::new(limpet.http).get("/shop/before").await;
    std::fs::write(&config, moved).unwrap();
    limpet.signal("-HUP");
    let reloaded = eventually(Duration::from_secs(10), || {
        let mut client = Client::new(limpet.http);
        let log = log.clone();
        async move {
            client.get("/shop/after").await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            !read_lines(&log).is_empty()
        }
    })
    .await;
    assert!(reloaded, "no line in the file after SIGHUP");
    let stderr = limpet.stop().await;
    let fields = json_access(&read_lines(&log));
    assert!(
        fields.iter().all(|f| f["path"] == "/shop/after"),
        "{fields:#?}"
    );
    assert!(
        !stderr.iter().any(|l| l.contains("limpet::access")),
        "off, then the file: {stderr:#?}"
    );
}
