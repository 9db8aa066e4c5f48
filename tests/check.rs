//! `limpet check` (SPEC sections 1 and 2), the built binary: a broken config gives
//! `FILE:LINE:COL: key: why` at the offending key and exit 1; the shipped configs pass.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_limpet");
/// An environment variable no test sets.
const UNSET: &str = "LIMPET_TEST_VARIABLE_THAT_IS_NOT_SET";

struct Output {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs the binary with `args` from the crate root, `env` added and [`UNSET`]
/// removed; kills it after 30 s.
fn limpet(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove(UNSET)
        .env_remove("LIMPET_CONFIG")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("run limpet");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("limpet {args:?} did not finish within 30 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().expect("output");
    Output {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Writes `text` to a file of its own under the target's test directory.
fn write(name: &str, text: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("check");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// 1-based line and column of the first occurrence of `marker` in `text`.
fn position(text: &str, marker: &str) -> (usize, usize) {
    let offset = text
        .find(marker)
        .unwrap_or_else(|| panic!("{marker:?} not in the config"));
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before[before.rfind('\n').map(|i| i + 1).unwrap_or(0)..]
        .chars()
        .count()
        + 1;
    (line, col)
}

/// `limpet check` on `text` fails with `FILE:LINE:COL: key: ...why...`, the position
/// being where `marker` starts.
fn assert_error(name: &str, text: &str, marker: &str, key: &str, why: &str) {
    let path = write(name, text);
    let out = limpet(&["check", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(out.code, Some(1), "{name}: {}{}", out.stdout, out.stderr);
    assert_eq!(out.stdout, "", "{name}");
    let (line, col) = position(text, marker);
    let expected = format!("{}:{line}:{col}: {key}: ", path.display());
    let first = out.stderr.lines().next().unwrap_or("");
    assert!(
        first.starts_with(&expected),
        "{name}: expected {expected:?}..., got {:?}",
        out.stderr
    );
    assert!(first.contains(why), "{name}: {why:?} not in {first:?}");
    assert_eq!(
        out.stderr.lines().count(),
        1,
        "{name}: one line: {:?}",
        out.stderr
    );
}

const LISTEN: &str = "[listen]\nhttp = [\"127.0.0.1:8080\"]\n";

fn backend(upstream: &str, name: &str, port: u16, extra: &str) -> String {
    format!(
        "\n[[upstream.{upstream}.backend]]\nname = \"{name}\"\naddr = \"127.0.0.1:{port}\"\n{extra}"
    )
}

/// A valid config with one upstream `shop` of two backends, `extra` in `[upstream.shop]`.
fn shop(extra: &str) -> String {
    format!(
        "{LISTEN}\n[upstream.shop]\n{extra}\n{}{}",
        backend("shop", "app1", 9001, "replica = \"app2\"\n"),
        backend("shop", "app2", 9002, "replica = \"app1\"\n")
    )
}

#[test]
fn a_valid_config_passes_with_a_summary() {
    let path = write("valid", &shop("balance = \"round-robin\""));
    let out = limpet(&["check", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stdout.contains(": ok"), "{}", out.stdout);
    assert!(out.stdout.contains("upstream shop"), "{}", out.stdout);
    assert!(out.stdout.contains("backend app1"), "{}", out.stdout);
    assert!(out.stdout.contains("replica=app2"), "{}", out.stdout);
}

#[test]
fn unknown_upstream_in_a_route() {
    let text = format!(
        "{LISTEN}\n[[route]]\npath_prefix = \"/\"\nupstream = \"shop\"\n\n\
         [[route]]\npath_prefix = \"/api\"\nupstream = \"shpo\"\n\n[upstream.shop]\n{}",
        backend("shop", "app1", 9001, "")
    );
    assert_error(
        "unknown-upstream",
        &text,
        "upstream = \"shpo\"",
        "route[1].upstream",
        "unknown upstream \"shpo\"",
    );
}

#[test]
fn duplicate_backend_names() {
    let text = format!(
        "{LISTEN}\n[upstream.shop]\n{}{}{}",
        backend("shop", "app1", 9001, ""),
        backend("shop", "app2", 9002, ""),
        "\n[[upstream.shop.backend]]\nname = \"app1\" # again\naddr = \"127.0.0.1:9003\"\n"
    );
    assert_error(
        "duplicate-backend",
        &text,
        "name = \"app1\" # again",
        "upstream.shop.backend[2].name",
        "duplicate backend name \"app1\"",
    );
}

#[test]
fn a_replica_that_is_unknown_or_itself() {
    let text = format!(
        "{LISTEN}\n[upstream.shop]\n{}{}",
        backend("shop", "app1", 9001, "replica = \"app2\"\n"),
        backend("shop", "app2", 9002, "weight = 2\nreplica = \"app3\"\n")
    );
    assert_error(
        "unknown-replica",
        &text,
        "replica = \"app3\"",
        "upstream.shop.backend[1].replica",
        "unknown backend \"app3\"",
    );
    let text = format!(
        "{LISTEN}\n[upstream.shop]\n{}{}",
        backend("shop", "app1", 9001, "replica = \"app1\"\n"),
        backend("shop", "app2", 9002, "")
    );
    assert_error(
        "self-replica",
        &text,
        "replica = \"app1\"",
        "upstream.shop.backend[0].replica",
        "cannot be its own replica",
    );
}

#[test]
fn https_without_tls() {
    let text = shop("").replace(
        "http = [\"127.0.0.1:8080\"]\n",
        "http = [\"127.0.0.1:8080\"]\nhttps = [\"127.0.0.1:8443\"]\n",
    );
    assert_error(
        "https-without-tls",
        &text,
        "https = ",
        "listen.https",
        "[tls]",
    );
}

#[test]
fn unreadable_cert_or_key() {
    let readable = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let tls = |cert: &str, key: &str| {
        format!(
            "{LISTEN}https = [\"127.0.0.1:8443\"]\n\n[tls]\n\
             certs = [ {{ cert = \"{cert}\", key = \"{key}\" }} ]\n\n[upstream.shop]\n{}",
            backend("shop", "app1", 9001, "")
        )
    };
    let text = tls("/nonexistent/site.pem", readable);
    assert_error(
        "unreadable-cert",
        &text,
        "cert = ",
        "tls.certs[0].cert",
        "/nonexistent/site.pem",
    );
    let text = tls(readable, "/nonexistent/site.key");
    assert_error(
        "unreadable-key",
        &text,
        "key = ",
        "tls.certs[0].key",
        "/nonexistent/site.key",
    );
}

#[test]
fn bad_tls_resumption_values() {
    let readable = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let tls = |extra: &str| {
        format!(
            "{LISTEN}https = [\"127.0.0.1:8443\"]\n\n[tls]\n\
             certs = [ {{ cert = \"{readable}\", key = \"{readable}\" }} ]\n{extra}\n\
             [upstream.shop]\n{}",
            backend("shop", "app1", 9001, "")
        )
    };
    assert_error(
        "huge-session-cache",
        &tls("session_cache = 5000000"),
        "session_cache = ",
        "tls.session_cache",
        "at most 1000000 sessions",
    );
    assert_error(
        "bad-session-tickets",
        &tls("session_tickets = \"yes\""),
        "\"yes\"",
        "tls.session_tickets",
        "expected a boolean",
    );
}

#[test]
fn a_secret_variable_that_is_unset() {
    let text = format!(
        "{}\n[upstream.shop.cookie]\nname = \"sid\"\nsecret = \"env:{UNSET}\"\n",
        shop("")
    );
    assert_error(
        "unset-secret",
        &text,
        "secret = ",
        "upstream.shop.cookie.secret",
        UNSET,
    );
    let text = format!(
        "{}\n[upstream.shop.cookie]\nsecret = \"s\"\nprevious_secrets = [\"old\", \"env:{UNSET}\"]\n",
        shop("")
    );
    assert_error(
        "unset-previous-secret",
        &text,
        &format!("\"env:{UNSET}\""),
        "upstream.shop.cookie.previous_secrets[1]",
        UNSET,
    );
    let text = format!(
        "{LISTEN}\n[admin]\nlisten = \"127.0.0.1:9100\"\ntoken = \"env:{UNSET}\"\n{}",
        shop("").trim_start_matches(LISTEN)
    );
    assert_error("unset-token", &text, "token = ", "admin.token", UNSET);
}

#[test]
fn bad_durations() {
    let text = format!(
        "{LISTEN}\n[timeouts]\nclient_header = \"10s\"\nupstream_response = \"30 parsecs\"\n{}",
        shop("").trim_start_matches(LISTEN)
    );
    assert_error(
        "bad-duration",
        &text,
        "upstream_response = ",
        "timeouts.upstream_response",
        "\"30 parsecs\" is not a duration",
    );
    let text = format!(
        "{}\n[upstream.shop.health]\npath = \"/up\"\ninterval = \"fast\"\n",
        shop("")
    );
    assert_error(
        "bad-health-interval",
        &text,
        "interval = ",
        "upstream.shop.health.interval",
        "\"fast\" is not a duration",
    );
    let text = format!(
        "{}\n[upstream.shop.timeouts]\nconnect = \"1s\"\nresponse = \"soon\"\n",
        shop("")
    );
    assert_error(
        "bad-upstream-response-timeout",
        &text,
        "response = ",
        "upstream.shop.timeouts.response",
        "\"soon\" is not a duration",
    );
    let text = format!("{}\n[upstream.shop.timeouts]\nconnect = \"0s\"\n", shop(""));
    assert_error(
        "zero-upstream-connect-timeout",
        &text,
        "connect = ",
        "upstream.shop.timeouts.connect",
        "must be longer than 0s",
    );
}

#[test]
fn bad_addresses() {
    let text = shop("").replace("127.0.0.1:9002", "localhost");
    assert_error(
        "backend-addr-no-port",
        &text,
        "addr = \"localhost\"",
        "upstream.shop.backend[1].addr",
        "\"localhost\" is not a usable host:port address",
    );
    let text = shop("").replace("127.0.0.1:9002", "app 2.shop:8080");
    assert_error(
        "backend-addr-not-a-name",
        &text,
        "addr = \"app 2",
        "upstream.shop.backend[1].addr",
        "the host is neither an IP address nor a DNS name",
    );
    let text = shop("").replace("127.0.0.1:9002", "app2.shop:80800");
    assert_error(
        "backend-addr-port-out-of-range",
        &text,
        "addr = \"app2.shop",
        "upstream.shop.backend[1].addr",
        "the port must be 0 to 65535",
    );
    let text = shop("resolve_interval = \"10ms\"");
    assert_error(
        "resolve-interval-too-short",
        &text,
        "resolve_interval",
        "upstream.shop.resolve_interval",
        "must be at least 100ms",
    );
    let text = format!("[dns]\nserver = \"dns.local\"\n{}", shop(""));
    assert_error(
        "dns-server-not-an-ip",
        &text,
        "server = ",
        "dns.server",
        "\"dns.local\" is not an IP address or IP:port",
    );
    let text = shop("").replace(
        "http = [\"127.0.0.1:8080\"]",
        "http = [\"127.0.0.1:8080\", \"127.0.0.1:99999\"]",
    );
    assert_error(
        "listen-port-out-of-range",
        &text,
        "\"127.0.0.1:99999\"",
        "listen.http[1]",
        "the port must be 0 to 65535",
    );
}

#[test]
fn an_upstream_with_no_backends() {
    let text = format!(
        "{LISTEN}\n[[route]]\npath_prefix = \"/\"\nupstream = \"shop\"\n\n\
         [[route]]\npath_prefix = \"/api\"\nupstream = \"api\"\n\n\
         [upstream.api]\naffinity = \"none\"\n\n{}",
        shop("").trim_start_matches(LISTEN)
    );
    assert_error(
        "no-backends",
        &text,
        "[upstream.api]",
        "upstream.api",
        "no backends",
    );
}

#[test]
fn unknown_keys() {
    let text = shop("affinity = \"cookie\"\nbalanse = \"round-robin\"");
    assert_error(
        "unknown-upstream-key",
        &text,
        "balanse",
        "upstream.shop.balanse",
        "unknown field `balanse`",
    );
    let text = format!("{}\n[upstream.shop.cookie]\nsecrte = \"x\"\n", shop(""));
    assert_error(
        "unknown-cookie-key",
        &text,
        "secrte",
        "upstream.shop.cookie.secrte",
        "unknown field `secrte`",
    );
    let text = shop("").replace("name = \"app2\"", "name = \"app2\"\nwieght = 2");
    assert_error(
        "unknown-backend-key",
        &text,
        "wieght",
        "upstream.shop.backend[1].wieght",
        "unknown field `wieght`",
    );
    let text = format!("{}\n[timeout]\nclient_header = \"1s\"\n", shop(""));
    assert_error(
        "unknown-table",
        &text,
        "timeout]",
        "timeout",
        "unknown field `timeout`",
    );
    let text = format!(
        "{}\n[upstream.shop.timeouts]\nresponse = \"1s\"\nread = \"1s\"\n",
        shop("")
    );
    assert_error(
        "unknown-upstream-timeouts-key",
        &text,
        "read = ",
        "upstream.shop.timeouts.read",
        "unknown field `read`",
    );
}

#[test]
fn bad_values() {
    let text = shop("balance = \"fastest\"");
    assert_error(
        "bad-balance",
        &text,
        "\"fastest\"",
        "upstream.shop.balance",
        "unknown variant `fastest`",
    );
    let text = shop("retries = \"two\"");
    assert_error(
        "bad-retries",
        &text,
        "\"two\"",
        "upstream.shop.retries",
        "expected u32",
    );
    let text = shop("").replace("name = \"app1\"", "name = \"app1\"\nweight = 0");
    assert_error(
        "zero-weight",
        &text,
        "weight = 0",
        "upstream.shop.backend[0].weight",
        "must be between 1",
    );
    let text = shop("").replacen(LISTEN, &format!("{LISTEN}backlog = 0\n"), 1);
    assert_error(
        "zero-backlog",
        &text,
        "backlog = 0",
        "listen.backlog",
        "must be at least 1",
    );
    let text = format!(
        "{LISTEN}\n[[route]]\nupstream = \"shop\"\nhsts = \"forever\"\n{}",
        shop("").trim_start_matches(LISTEN)
    );
    assert_error(
        "bad-hsts",
        &text,
        "hsts = ",
        "route[0].hsts",
        "is not a Strict-Transport-Security value",
    );
}

/// Values that passed `check` and then broke at run time (found by
/// black-box probing): worker threads by the tens of thousands aborted the
/// start; a health path with a space failed every check (the whole upstream
/// down); a cookie path with `;` or a CR added attributes to Set-Cookie or
/// split the response.
#[test]
fn values_that_broke_at_run_time() {
    let text = shop("").replacen(
        LISTEN,
        &format!("{LISTEN}\n[runtime]\nworker_threads = 99999\n"),
        1,
    );
    assert_error(
        "huge-worker-threads",
        &text,
        "worker_threads = ",
        "runtime.worker_threads",
        "must be at most 1024",
    );
    for (name, path) in [("space", "/he alth"), ("cr", "/health\\r\\nX: 1")] {
        let text = format!("{}\n[upstream.shop.health]\npath = \"{path}\"\n", shop(""));
        assert_error(
            &format!("health-path-{name}"),
            &text,
            "path = ",
            "upstream.shop.health.path",
            "must be a request target",
        );
    }
    for (name, path) in [
        ("attribute", "/a; Domain=evil.example"),
        ("crlf", "/\\r\\nX-Evil: 1"),
        ("relative", "shop"),
        ("empty", ""),
    ] {
        let text = format!("{}\n[upstream.shop.cookie]\npath = \"{path}\"\n", shop(""));
        assert_error(
            &format!("cookie-path-{name}"),
            &text,
            "path = ",
            "upstream.shop.cookie.path",
            "must start with / and have no control characters or ;",
        );
    }
    let text = format!(
        "{LISTEN}\n[[route]]\nhost = \"a.com:xx\"\nupstream = \"shop\"\n{}",
        shop("").trim_start_matches(LISTEN)
    );
    assert_error(
        "route-host-bad-port",
        &text,
        "host = ",
        "route[0].host",
        "is not a host name",
    );
}

/// An address given to two listeners, or the admin API on a traffic
/// listener, is refused at the key: `check` passed them and `run` failed
/// with "address already in use", naming no key.
#[test]
fn listeners_on_one_address() {
    let text = shop("").replacen(
        LISTEN,
        "[listen]\nhttp = [\"127.0.0.1:8080\", \"127.0.0.1:8080\"]\n",
        1,
    );
    assert_error(
        "same-http-twice",
        &text,
        "\"127.0.0.1:8080\"]",
        "listen.http[1]",
        "127.0.0.1:8080 is already listen.http[0]",
    );
    let text = format!("{}\n[admin]\nlisten = \"127.0.0.1:8080\"\n", shop(""));
    assert_error(
        "admin-on-traffic",
        &text,
        "listen = ",
        "admin.listen",
        "127.0.0.1:8080 is already listen.http[0]",
    );
}

/// Messages that named no key, the wrong one, or a type of limpet's own.
#[test]
fn messages_name_the_key_and_say_what_is_wanted() {
    let text = format!(
        "{}\n[upstream.shop.health]\ninterval = \"5s\"\ntimeout = \"0s\"\n",
        shop("")
    );
    assert_error(
        "zero-health-timeout",
        &text,
        "timeout = ",
        "upstream.shop.health.timeout",
        "must be longer than 0s",
    );
    let text = format!(
        "{LISTEN}\n[limits]\nmax_connections = 99999999999999999999\n{}",
        shop("").trim_start_matches(LISTEN)
    );
    assert_error(
        "integer-past-64-bits",
        &text,
        "99999999999999999999",
        "limits.max_connections",
        "number too large",
    );
    let text = format!("{}\n[upstream.shop.cookie]\nsecure = 1\n", shop(""));
    assert_error(
        "secure-number",
        &text,
        "1\n",
        "upstream.shop.cookie.secure",
        "true, false or \"auto\"",
    );
    let text = format!(
        "{}\n[upstream.shop.ip_hash]\ntrusted_proxies = [\"10.0.0.0/33\"]\n",
        shop("affinity = \"ip-hash\"")
    );
    assert_error(
        "bad-network",
        &text,
        "\"10.0.0.0/33\"]",
        "upstream.shop.ip_hash.trusted_proxies[0]",
        "\"10.0.0.0/33\" is not an address or a network",
    );
    let text = format!(
        "{}\n[upstream.shop.app_cookie]\nname = \"a b\"\n",
        shop("affinity = \"app-cookie\"")
    );
    assert_error(
        "app-cookie-name",
        &text,
        "name = \"a b\"",
        "upstream.shop.app_cookie.name",
        "\"a b\" is not a valid cookie name",
    );
    // A single address is a network of one.
    let text = format!(
        "{}\n[upstream.shop.ip_hash]\ntrusted_proxies = [\"10.0.0.1\", \"::1\"]\n",
        shop("affinity = \"ip-hash\"")
    );
    let path = write("single-address-network", &text);
    let out = limpet(&["check", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
}

/// `limpet check | head -1` (a reader gone before limpet writes) is still a
/// passing check: exit 0, no panic. print! panicked on the broken pipe
/// (exit 101), which failed `set -o pipefail` deploy scripts on good configs.
#[test]
fn a_reader_that_stops_early_does_not_fail_check() {
    let path = write("pipe", &shop(""));
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = Command::new(BIN)
        .args(["check", "--config", path.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("run limpet");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn bad_proxy_protocol_values() {
    let pp = "proxy_protocol = { from = [\"10.0.0.0/8\", \"10.1.2.300/32\"] }\n";
    let text = shop("").replacen(LISTEN, &format!("{LISTEN}{pp}"), 1);
    assert_error(
        "bad-proxy-cidr",
        &text,
        "\"10.1.2.300/32\"",
        "listen.proxy_protocol.from[1]",
        "\"10.1.2.300/32\" is not an address or a network",
    );
    let text = shop("send_proxy = \"v3\"");
    assert_error(
        "bad-send-proxy",
        &text,
        "\"v3\"",
        "upstream.shop.send_proxy",
        "unknown variant `v3`",
    );
}

#[test]
fn bad_log_values() {
    let text = format!("{}\n[log]\nformat = \"xml\"\n", shop(""));
    assert_error(
        "bad-log-format",
        &text,
        "\"xml\"",
        "log.format",
        "unknown variant `xml`",
    );
    let text = format!(
        "{}\n[log]\naccess = \"/nonexistent-limpet-dir/access.log\"\n",
        shop("")
    );
    assert_error(
        "unwritable-access-log",
        &text,
        "access = ",
        "log.access",
        "cannot open /nonexistent-limpet-dir/access.log for appending",
    );
    let text = format!("{}\n[log]\naccess = \"\"\n", shop(""));
    assert_error(
        "empty-access-log",
        &text,
        "access = ",
        "log.access",
        "must be \"off\", \"stderr\" or a file path",
    );
}

#[test]
fn a_syntax_error_has_a_position_and_one_line() {
    let text = shop("").replace(
        "http = [\"127.0.0.1:8080\"]",
        "http = [\"127.0.0.1:8080\"\nhttps = []",
    );
    let path = write("syntax", &text);
    let out = limpet(&["check", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(out.code, Some(1));
    let prefix = format!("{}:", path.display());
    let rest = out
        .stderr
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("{}", out.stderr));
    let mut parts = rest.splitn(3, ':');
    let line: usize = parts.next().unwrap().parse().expect("a line");
    let _col: usize = parts.next().unwrap().parse().expect("a column");
    assert!((2..=3).contains(&line), "{}", out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "{:?}", out.stderr);
}

#[test]
fn a_missing_file_is_named_without_a_position() {
    let out = limpet(&["check", "--config", "config/does-not-exist.toml"], &[]);
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr
            .starts_with("config/does-not-exist.toml: cannot read the file"),
        "{}",
        out.stderr
    );
}

#[test]
fn the_shipped_configs_pass() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![PathBuf::from("config/limpet.toml")];
    let mut examples: Vec<PathBuf> = std::fs::read_dir(root.join("config/examples"))
        .expect("config/examples")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| p.strip_prefix(root).unwrap().to_path_buf())
        .collect();
    examples.sort();
    assert!(!examples.is_empty());
    files.extend(examples);
    let env = [
        ("LIMPET_SECRET", "a-long-random-test-secret"),
        ("LIMPET_ADMIN_TOKEN", "a-test-token"),
    ];
    for file in &files {
        let file = file.to_str().unwrap();
        let out = limpet(&["check", "--config", file], &env);
        assert_eq!(out.code, Some(0), "{file}: {}", out.stderr);
        assert!(
            out.stdout.starts_with(&format!("{file}: ok")),
            "{file}: {}",
            out.stdout
        );
    }
    // --config may come from LIMPET_CONFIG.
    let out = limpet(&["check"], &[("LIMPET_CONFIG", "config/limpet.toml")]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
}

#[test]
fn an_address_in_use_is_said_once() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let text = shop("").replacen(LISTEN, &format!("[listen]\nhttp = [\"{addr}\"]\n"), 1);
    let path = write("address-in-use", &text);
    let out = limpet(&["run", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!("cannot listen on {addr}")),
        "{}",
        out.stderr
    );
    assert_eq!(
        out.stderr.matches("Address already in use").count(),
        1,
        "{}",
        out.stderr
    );
}

/// README's sample error is what `limpet check` really prints for it: the
/// shipped config with the second backend's replica changed to `app9` (the
/// line may drift as the file grows; the column, key and message may not).
#[test]
fn the_readme_sample_error_is_real_output() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let sample = readme
        .split('`')
        .find(|s| s.starts_with("limpet.toml:") && s.contains("\"app9\""))
        .expect("README has the sample error");
    let shipped =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/limpet.toml"))
            .unwrap();
    let second = shipped
        .match_indices("[[upstream.shop.backend]]")
        .nth(1)
        .expect("a second backend")
        .0;
    let (head, tail) = shipped.split_at(second);
    let broken = format!(
        "{head}{}",
        tail.replacen("replica = \"app3\"", "replica = \"app9\"", 1)
    );
    assert_ne!(broken, shipped, "the second backend's replica is app3");
    let path = write("readme-sample", &broken);
    let out = limpet(&["check", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    let real = out.stderr.lines().next().unwrap_or("");
    let real = real
        .strip_prefix(&format!("{}:", path.display()))
        .unwrap_or_else(|| panic!("{real}"));
    let sample = sample.strip_prefix("limpet.toml:").unwrap();
    let without_line = |s: &str| s.split_once(':').map(|(_, rest)| rest.to_owned());
    assert_eq!(without_line(real), without_line(sample), "real: {real}");
    let (line, _) = position(&broken, "replica = \"app9\"");
    assert_eq!(real.split(':').next(), Some(line.to_string().as_str()));
}
