//! SPEC section 1: one access log line per request, at `info` of target
//! `limpet::access`, with method, path, status, upstream, backend, affinity
//! outcome and duration; checked on the real binary's JSON logs.

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

    let access = || -> Vec<serde_json::Value> {
        process
            .log_lines()
            .into_iter()
            .filter(|l| l["target"] == "limpet::access")
            .collect()
    };
    assert!(
        eventually(Duration::from_secs(5), || async { access().len() >= 3 }).await,
        "three access lines: {:#?}",
        process.log_lines()
    );
    let lines = access();
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
        use std::io::BufRead;
        // Free a port for limpet (the same pattern as binding to :0, one step later).
        let http = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let toml = format!(
            "[listen]\nhttp = [\"{http}\"]\n\n[[route]]\npath_prefix = \"/shop\"\nupstream = \"shop\"\n\n\
             [upstream.shop.cookie]\nsecret = \"s\"\n\n[[upstream.shop.backend]]\nname = \"app1\"\naddr = \"{backend}\"\n"
        );
        let dir = TempDir::new("access-log");
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
            "TS  INFO limpet::access: method=\"GET\" path=/shop/cart?x=1 status=200 upstream=\"shop\" backend=\"app1\" affinity=\"new\" duration_us=N",
            "TS  INFO limpet::access: method=\"GET\" path=/shop/cart status=200 upstream=\"shop\" backend=\"app1\" affinity=\"pinned\" duration_us=N",
            "TS  INFO limpet::access: method=\"GET\" path=/elsewhere status=404 upstream=\"\" backend=\"\" affinity=\"-\" duration_us=N",
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
            r#"{"timestamp":"TS","level":"INFO","fields":{"method":"GET","path":"/shop/cart?x=1","status":200,"upstream":"shop","backend":"app1","affinity":"new","duration_us":N},"target":"limpet::access"}"#,
            r#"{"timestamp":"TS","level":"INFO","fields":{"method":"GET","path":"/shop/cart","status":200,"upstream":"shop","backend":"app1","affinity":"pinned","duration_us":N},"target":"limpet::access"}"#,
            r#"{"timestamp":"TS","level":"INFO","fields":{"method":"GET","path":"/elsewhere","status":404,"upstream":"","backend":"","affinity":"-","duration_us":N},"target":"limpet::access"}"#,
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
