//! The access log: one line per request, written where the request's metrics
//! are (`crate::flow`, for both HTTP engines) once its response has ended,
//! beside the flow rather than in it.
//!
//! A request hands [`write()`] an [`AccessRecord`] of borrowed fields; the line is
//! formatted into a per-thread buffer (integers with `itoa`, strings copied, the
//! date re-formatted only when the second changes) and given to the [`Sink`] in
//! one call. [`enabled`] is a single atomic load, so a request skips copying its
//! path (and making a [`RequestId`]) when the log is off. It is not a `tracing`
//! event: dispatching one and formatting it through a visitor cost several
//! times more per request, and this log has one fixed shape.
//!
//! The line keeps the shape tracing-subscriber's `fmt` output gave it, so that
//! parsers of earlier logs keep working (`format = "text"` and `"json"`); the
//! fields added since come after `duration_us`:
//!
//! ```text
//! 2026-11-22T00:47:12.123456Z  INFO limpet::access: method="GET" path=/shop/cart?x=1 status=200 upstream="shop" backend="app1" affinity="new" duration_us=1234 request_id="4f2a9c..." client=203.0.113.7 bytes_in=0 bytes_out=5 failover_from=""
//! {"timestamp":"2026-11-22T00:47:12.123456Z","level":"INFO","fields":{"method":"GET","path":"/shop/cart?x=1","status":200,"upstream":"shop","backend":"app1","affinity":"new","duration_us":1234,"request_id":"4f2a9c...","client":"203.0.113.7","bytes_in":0,"bytes_out":5,"failover_from":""},"target":"limpet::access"}
//! ```
//!
//! Text values are quoted and escaped as Rust's `{:?}` does (the path only when
//! it holds a control character); JSON strings as serde_json writes them. Text
//! lines carry no ANSI colours, even on a terminal.
//!
//! Configuration is the process's: `[log]` is applied ([`apply`]) when a limpet
//! starts and at every reload that changes it; the stderr destination and the
//! default format are the binary's to give ([`set_stderr`], or [`init`]).
//! Until a destination is set the log is off. A file is written through a
//! background thread and reopened on [`reopen`] (SIGUSR1, after logrotate).

use std::cell::RefCell;
use std::fs::File;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;

pub use crate::config::LogFormat as Format;
use crate::config::{AccessDestination, LogConfig};

/// The log's name in its lines, and the `RUST_LOG` target that turns it on or
/// off in limpet's binary (see [`filter_enables`]).
pub const TARGET: &str = "limpet::access";

/// One request, as the access log reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccessRecord<'a> {
    pub method: &'a str,
    /// The request target's path and query, as received.
    pub path: &'a str,
    pub status: u16,
    /// The upstream that the request was routed to; empty if none (404).
    pub upstream: &'a str,
    /// The backend that answered, or was last tried; empty if none.
    pub backend: &'a str,
    /// The affinity outcome (`new`, `pinned`, `failover`, ...), `-` if none.
    pub affinity: &'a str,
    /// From the request head to the response head (as
    /// `limpet_request_duration_seconds`).
    pub duration_us: u64,
    /// The request's `x-request-id`: the client's, or one limpet made.
    pub request_id: &'a str,
    /// The client's address: the connection's peer, or the source of its
    /// PROXY header.
    pub client: IpAddr,
    /// Body bytes received from the client (HTTP/1: as they came on the
    /// connection, chunk framing included; HTTP/2: DATA payload).
    pub bytes_in: u64,
    /// Body bytes sent to the client, counted the same way (limpet's own
    /// answers: their body).
    pub bytes_out: u64,
    /// The backend the request failed over from (`x-limpet-failover-from`);
    /// empty if none.
    pub failover_from: &'a str,
}

/// Where lines go.
pub trait Sink: Send + Sync + 'static {
    /// Writes one whole line, `\n` included, or drops it. Called on the
    /// request's thread: it should not block for long.
    fn write_line(&self, line: &[u8]);
}

/// Blocking writes to stderr, one `write` per line (the demo and tests use it;
/// limpet's binary uses a non-blocking writer).
impl Sink for std::io::Stderr {
    fn write_line(&self, line: &[u8]) {
        let _ = self.lock().write_all(line);
    }
}

/// What [`write()`] writes to, while the log is on.
struct Output {
    format: Format,
    sink: Arc<dyn Sink>,
}

/// Whether the log is on: what [`enabled`] reads, one relaxed load.
static ON: AtomicBool = AtomicBool::new(false);
static OUTPUT: ArcSwapOption<Output> = ArcSwapOption::const_empty();

/// What the process set up for stderr, and the file open now: changed only
/// at start, reload and SIGUSR1.
struct Setup {
    /// The stderr sink and the format of limpet's other logs; `None` until
    /// [`init`] or [`set_stderr`].
    stderr: Option<(Arc<dyn Sink>, Format)>,
    /// Whether the log is on with no `[log] access` key (`RUST_LOG`'s say).
    by_default: bool,
    /// The configuration applied last.
    applied: LogConfig,
    file: Option<(PathBuf, Arc<FileSink>)>,
}

static SETUP: Mutex<Setup> = Mutex::new(Setup {
    stderr: None,
    by_default: false,
    applied: LogConfig {
        access: AccessDestination::Default,
        format: None,
    },
    file: None,
});

fn setup() -> std::sync::MutexGuard<'static, Setup> {
    SETUP.lock().unwrap_or_else(|e| e.into_inner())
}

/// [`init`] was called before.
#[derive(Debug, thiserror::Error)]
#[error("the access log is already configured")]
pub struct AlreadyConfigured;

/// Turns the access log on, writing `format` to `sink` (the process's stderr
/// destination), as a configuration without `[log] access` has it. Once only:
/// a later call changes nothing and says so.
pub fn init(format: Format, sink: impl Sink) -> Result<(), AlreadyConfigured> {
    if setup().stderr.is_some() {
        return Err(AlreadyConfigured);
    }
    set_stderr(format, sink, true);
    Ok(())
}

/// Sets the process's stderr destination and the format of its other logs,
/// and whether the access log is on when the configuration has no `[log]
/// access` (limpet's binary asks `RUST_LOG`, see [`filter_enables`]); then
/// applies the last configuration again.
pub fn set_stderr(format: Format, sink: impl Sink, by_default: bool) {
    let mut setup = setup();
    setup.stderr = Some((Arc::new(sink), format));
    setup.by_default = by_default;
    let applied = setup.applied.clone();
    // Stderr needs no opening: this cannot fail.
    let _ = apply_locked(&mut setup, &applied);
}

/// Applies `[log]` (at start and at every reload): the destination and the
/// format. A file already open for the same path stays open; another is
/// opened in append mode. On an error the log keeps its previous destination.
pub fn apply(config: &LogConfig) -> std::io::Result<()> {
    apply_locked(&mut setup(), config)
}

fn apply_locked(setup: &mut Setup, config: &LogConfig) -> std::io::Result<()> {
    let stderr = setup.stderr.clone();
    let default_format = stderr.as_ref().map(|s| s.1).unwrap_or_default();
    let format = config.format.unwrap_or(default_format);
    let sink: Option<Arc<dyn Sink>> = match &config.access {
        AccessDestination::Off => None,
        AccessDestination::Default if !setup.by_default => None,
        AccessDestination::Default | AccessDestination::Stderr => stderr.map(|s| s.0),
        AccessDestination::File(path) => Some(open_file(setup, path)?),
    };
    if !matches!(config.access, AccessDestination::File(_)) {
        setup.file = None;
    }
    setup.applied = config.clone();
    ON.store(sink.is_some(), Relaxed);
    OUTPUT.store(sink.map(|sink| Arc::new(Output { format, sink })));
    Ok(())
}

/// The file sink for `path`: the one open already, or a new one.
fn open_file(setup: &mut Setup, path: &Path) -> std::io::Result<Arc<dyn Sink>> {
    if let Some((open, sink)) = &setup.file {
        if open == path {
            return Ok(sink.clone());
        }
    }
    let sink = Arc::new(FileSink::open(path)?);
    setup.file = Some((path.to_path_buf(), sink.clone()));
    Ok(sink)
}

/// Reopens the access-log file (SIGUSR1, after logrotate renamed it): lines
/// from the next one on go to a file at the configured path, created if
/// missing. Nothing to do when the log does not go to a file.
pub fn reopen() {
    if let Some((_, sink)) = &setup().file {
        sink.reopen.store(true, Relaxed);
    }
}

/// Turns the log off and lets go of its destination, flushing a file's lines
/// (at exit).
pub fn close() {
    let mut setup = setup();
    ON.store(false, Relaxed);
    OUTPUT.store(None);
    setup.file = None;
}

/// An access-log file: lines go through a background thread (a request
/// never waits on the disk; when its queue is full, lines are dropped, as on
/// stderr), which reopens the file when asked.
struct FileSink {
    writer: tracing_appender::non_blocking::NonBlocking,
    reopen: Arc<AtomicBool>,
    _flush_on_drop: tracing_appender::non_blocking::WorkerGuard,
}

impl FileSink {
    fn open(path: &Path) -> std::io::Result<FileSink> {
        let reopen = Arc::new(AtomicBool::new(false));
        let file = Reopening {
            path: path.to_path_buf(),
            file: open_append(path)?,
            reopen: reopen.clone(),
        };
        let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
            .lossy(true)
            .thread_name("limpet-access-log")
            .finish(std::io::BufWriter::new(file));
        Ok(FileSink {
            writer,
            reopen,
            _flush_on_drop: guard,
        })
    }
}

impl Sink for FileSink {
    fn write_line(&self, line: &[u8]) {
        let _ = self.writer.clone().write_all(line);
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
}

/// The file under the background writer: reopened at its path before the
/// next write once `reopen` is set.
struct Reopening {
    path: PathBuf,
    file: File,
    reopen: Arc<AtomicBool>,
}

impl std::io::Write for Reopening {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.reopen.swap(false, Relaxed) {
            let _ = self.file.flush();
            match open_append(&self.path) {
                Ok(file) => self.file = file,
                Err(e) => eprintln!(
                    "limpet: cannot reopen the access log {}: {e}; writing on to the old file",
                    self.path.display()
                ),
            }
        }
        self.file.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Whether the current `tracing` subscriber enables target [`TARGET`] at
/// `INFO`: how limpet's binary derives the access log's on/off from `RUST_LOG`
/// when `[log] access` is not set (`warn` or `info,limpet::access=off` turn it
/// off). Asked once, at start; a later change of `RUST_LOG` needs a restart.
pub fn filter_enables() -> bool {
    tracing::enabled!(target: TARGET, tracing::Level::INFO)
}

/// Whether [`write()`] writes anything; one atomic load, for every request.
#[inline]
pub fn enabled() -> bool {
    ON.load(Relaxed)
}

/// Writes `record` as one line, if the log is on.
pub fn write(record: &AccessRecord<'_>) {
    let output = OUTPUT.load();
    let Some(log) = output.as_deref() else {
        return;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let record_with = |line: &mut Line| {
        line.format(log.format, now, record);
        log.sink.write_line(&line.bytes);
        line.finish();
    };
    let done = LINE.try_with(|line| match line.try_borrow_mut() {
        Ok(mut line) => record_with(&mut line),
        // Re-entered from the sink: a buffer of its own.
        Err(_) => record_with(&mut Line::new()),
    });
    if done.is_err() {
        // The thread is exiting and its buffer is gone.
        record_with(&mut Line::new());
    }
}

/// The longest `x-request-id` kept from a client.
pub const REQUEST_ID_MAX: usize = 64;

/// A request's id: the client's `x-request-id` when it is 1 to
/// [`REQUEST_ID_MAX`] visible ASCII characters, else 32 random hex digits
/// (128 bits, as nginx's `$request_id`). Held inline: no allocation.
#[derive(Clone, Copy)]
pub struct RequestId {
    bytes: [u8; REQUEST_ID_MAX],
    len: u8,
}

impl Default for RequestId {
    fn default() -> Self {
        RequestId {
            bytes: [0; REQUEST_ID_MAX],
            len: 0,
        }
    }
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl RequestId {
    /// The client's id if it is sane, else a new one.
    pub fn from_client(value: Option<&[u8]>) -> RequestId {
        match value {
            Some(v)
                if !v.is_empty()
                    && v.len() <= REQUEST_ID_MAX
                    && v.iter().all(|b| b.is_ascii_graphic()) =>
            {
                let mut id = RequestId::default();
                id.bytes[..v.len()].copy_from_slice(v);
                id.len = v.len() as u8;
                id
            }
            _ => RequestId::generate(),
        }
    }

    /// 32 hex digits from the thread's random generator.
    pub fn generate() -> RequestId {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut id = RequestId::default();
        let mut n = fastrand::u128(..);
        for b in id.bytes[..32].iter_mut() {
            *b = HEX[(n & 0xf) as usize];
            n >>= 4;
        }
        id.len = 32;
        id
    }

    /// Empty when none was set.
    pub fn as_str(&self) -> &str {
        // Only visible ASCII is ever stored.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("")
    }

    pub fn is_set(&self) -> bool {
        self.len > 0
    }
}

/// Years 1970 to 9999: a 4-digit year. Later clocks are written as the last
/// second of 9999, earlier ones as the epoch.
const MAX_SECOND: u64 = 253_402_300_799;
/// A buffer grown larger than this (a huge path) is not kept.
const KEEP_CAPACITY: usize = 16 * 1024;

/// A thread's line buffer and the date of the second it last wrote.
struct Line {
    bytes: Vec<u8>,
    /// The second `date` holds, as seconds since the epoch.
    second: u64,
    /// `YYYY-MM-DDTHH:MM:SS.` for `second`.
    date: [u8; 20],
}

thread_local! {
    static LINE: RefCell<Line> = const { RefCell::new(Line::new()) };
}

impl Line {
    const fn new() -> Line {
        Line {
            bytes: Vec::new(),
            second: u64::MAX,
            date: [0; 20],
        }
    }

    /// Formats `r` at time `now` (since the epoch) into `self.bytes`.
    fn format(&mut self, format: Format, now: Duration, r: &AccessRecord<'_>) {
        let second = now.as_secs().min(MAX_SECOND);
        if self.second != second {
            self.second = second;
            self.date = date_time(second);
        }
        let b = &mut self.bytes;
        b.clear();
        match format {
            Format::Text => {
                b.extend_from_slice(&self.date);
                push_micros(b, now.subsec_micros());
                b.extend_from_slice(b"  INFO ");
                b.extend_from_slice(TARGET.as_bytes());
                b.extend_from_slice(b": method=");
                push_quoted(b, r.method);
                b.extend_from_slice(b" path=");
                if r.path.bytes().any(|c| c < 0x20 || c == 0x7f) {
                    push_quoted(b, r.path);
                } else {
                    b.extend_from_slice(r.path.as_bytes());
                }
                b.extend_from_slice(b" status=");
                push_int(b, r.status);
                b.extend_from_slice(b" upstream=");
                push_quoted(b, r.upstream);
                b.extend_from_slice(b" backend=");
                push_quoted(b, r.backend);
                b.extend_from_slice(b" affinity=");
                push_quoted(b, r.affinity);
                b.extend_from_slice(b" duration_us=");
                push_int(b, r.duration_us);
                b.extend_from_slice(b" request_id=");
                push_quoted(b, r.request_id);
                b.extend_from_slice(b" client=");
                push_ip(b, r.client);
                b.extend_from_slice(b" bytes_in=");
                push_int(b, r.bytes_in);
                b.extend_from_slice(b" bytes_out=");
                push_int(b, r.bytes_out);
                b.extend_from_slice(b" failover_from=");
                push_quoted(b, r.failover_from);
                b.push(b'\n');
            }
            Format::Json => {
                b.extend_from_slice(b"{\"timestamp\":\"");
                b.extend_from_slice(&self.date);
                push_micros(b, now.subsec_micros());
                b.extend_from_slice(b"\",\"level\":\"INFO\",\"fields\":{\"method\":");
                push_json_str(b, r.method);
                b.extend_from_slice(b",\"path\":");
                push_json_str(b, r.path);
                b.extend_from_slice(b",\"status\":");
                push_int(b, r.status);
                b.extend_from_slice(b",\"upstream\":");
                push_json_str(b, r.upstream);
                b.extend_from_slice(b",\"backend\":");
                push_json_str(b, r.backend);
                b.extend_from_slice(b",\"affinity\":");
                push_json_str(b, r.affinity);
                b.extend_from_slice(b",\"duration_us\":");
                push_int(b, r.duration_us);
                b.extend_from_slice(b",\"request_id\":");
                push_json_str(b, r.request_id);
                b.extend_from_slice(b",\"client\":\"");
                push_ip(b, r.client);
                b.extend_from_slice(b"\",\"bytes_in\":");
                push_int(b, r.bytes_in);
                b.extend_from_slice(b",\"bytes_out\":");
                push_int(b, r.bytes_out);
                b.extend_from_slice(b",\"failover_from\":");
                push_json_str(b, r.failover_from);
                b.extend_from_slice(b"},\"target\":\"");
                b.extend_from_slice(TARGET.as_bytes());
                b.extend_from_slice(b"\"}\n");
            }
        }
    }

    /// Empties the buffer, and lets go of it if a huge line grew it.
    fn finish(&mut self) {
        if self.bytes.capacity() > KEEP_CAPACITY {
            self.bytes = Vec::new();
        } else {
            self.bytes.clear();
        }
    }
}

fn push_int(b: &mut Vec<u8>, n: impl itoa::Integer) {
    b.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// `"value"`, escaped as `str`'s `fmt::Debug` escapes it.
fn push_quoted(b: &mut Vec<u8>, s: &str) {
    if s.bytes()
        .all(|c| (0x20..0x7f).contains(&c) && c != b'"' && c != b'\\')
    {
        b.push(b'"');
        b.extend_from_slice(s.as_bytes());
        b.push(b'"');
    } else {
        // Non-ASCII and control characters: `Debug` knows which to escape.
        let _ = write!(b, "{s:?}");
    }
}

/// A JSON string as serde_json writes it.
fn push_json_str(b: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|c| c >= 0x20 && c != b'"' && c != b'\\') {
        b.push(b'"');
        b.extend_from_slice(s.as_bytes());
        b.push(b'"');
    } else {
        let _ = serde_json::to_writer(&mut *b, s);
    }
}

/// Appends `ip` as its `Display` would, IPv4 without the formatting machinery.
pub fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                if octet >= 100 {
                    out.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    out.push(b'0' + octet / 10 % 10);
                }
                out.push(b'0' + octet % 10);
            }
        }
        IpAddr::V6(_) => {
            use std::io::Write as _;
            let _ = write!(out, "{ip}");
        }
    }
}

/// The 6 digits of `.123456Z` and the `Z` (the `.` ends the cached date).
fn push_micros(b: &mut Vec<u8>, micros: u32) {
    let mut digits = *b"000000Z";
    let mut n = micros;
    for d in digits[..6].iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    b.extend_from_slice(&digits);
}

/// `YYYY-MM-DDTHH:MM:SS.` in UTC for seconds since the epoch (at most
/// [`MAX_SECOND`]).
fn date_time(secs: u64) -> [u8; 20] {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (rem / 3600, rem / 60 % 60, rem % 60);
    let mut out = *b"0000-00-00T00:00:00.";
    let two = |out: &mut [u8; 20], at: usize, v: u64| {
        out[at] = b'0' + (v / 10) as u8;
        out[at + 1] = b'0' + (v % 10) as u8;
    };
    two(&mut out, 0, year / 100);
    two(&mut out, 2, year % 100);
    two(&mut out, 5, month);
    two(&mut out, 8, day);
    two(&mut out, 11, hour);
    two(&mut out, 14, minute);
    two(&mut out, 17, second);
    out
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for days on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECORD: AccessRecord<'static> = AccessRecord {
        method: "GET",
        path: "/shop/cart?x=1",
        status: 200,
        upstream: "shop",
        backend: "app1",
        affinity: "new",
        duration_us: 1234,
        request_id: "4f2a9c",
        client: IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 7)),
        bytes_in: 0,
        bytes_out: 5,
        failover_from: "",
    };

    /// 2026-11-22T00:47:12.000042Z
    const NOW: Duration = Duration::new(1_795_308_432, 42_999);

    fn line(format: Format, now: Duration, r: &AccessRecord<'_>) -> String {
        let mut line = Line::new();
        line.format(format, now, r);
        String::from_utf8(line.bytes).expect("UTF-8")
    }

    #[test]
    fn text_and_json_lines_keep_tracing_subscribers_shape() {
        assert_eq!(
            line(Format::Text, NOW, &RECORD),
            "2026-11-22T00:47:12.000042Z  INFO limpet::access: method=\"GET\" path=/shop/cart?x=1 \
             status=200 upstream=\"shop\" backend=\"app1\" affinity=\"new\" duration_us=1234 \
             request_id=\"4f2a9c\" client=203.0.113.7 bytes_in=0 bytes_out=5 failover_from=\"\"\n"
        );
        assert_eq!(
            line(Format::Json, NOW, &RECORD),
            "{\"timestamp\":\"2026-11-22T00:47:12.000042Z\",\"level\":\"INFO\",\"fields\":{\
             \"method\":\"GET\",\"path\":\"/shop/cart?x=1\",\"status\":200,\"upstream\":\"shop\",\
             \"backend\":\"app1\",\"affinity\":\"new\",\"duration_us\":1234,\
             \"request_id\":\"4f2a9c\",\"client\":\"203.0.113.7\",\"bytes_in\":0,\
             \"bytes_out\":5,\"failover_from\":\"\"},\
             \"target\":\"limpet::access\"}\n"
        );
    }

    const ODD: &str = "quote\" backslash\\ tab\t nl\n nel\u{85} bidi\u{202e} é esc\x1b";

    #[test]
    fn odd_values_are_escaped_and_stay_on_one_line() {
        let odd = AccessRecord {
            method: ODD,
            path: ODD,
            upstream: "",
            backend: ODD,
            affinity: "-",
            ..RECORD
        };
        let text = line(Format::Text, NOW, &odd);
        let escaped = format!("{ODD:?}");
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(
            text.contains(&format!("method={escaped} path={escaped} status=200")),
            "{text}"
        );
        assert!(
            text.contains(&format!("upstream=\"\" backend={escaped} affinity=\"-\"")),
            "{text}"
        );
        // A path with no control character is written as it came.
        let plain = AccessRecord {
            path: "/caf\u{e9}?q=\"x\"",
            ..RECORD
        };
        assert!(line(Format::Text, NOW, &plain).contains(" path=/caf\u{e9}?q=\"x\" status="));

        let json = line(Format::Json, NOW, &odd);
        assert_eq!(json.lines().count(), 1, "{json}");
        let v: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
        assert_eq!(v["fields"]["method"], ODD);
        assert_eq!(v["fields"]["path"], ODD);
        assert_eq!(v["fields"]["backend"], ODD);
        assert_eq!(v["fields"]["upstream"], "");
        assert_eq!(v["fields"]["status"], 200);
        assert_eq!(v["fields"]["duration_us"], 1234);
        assert_eq!(v["target"], TARGET);
    }

    #[test]
    fn request_ids_are_kept_when_sane_else_made() {
        let kept = RequestId::from_client(Some(b"abc-123_XYZ"));
        assert_eq!(kept.as_str(), "abc-123_XYZ");
        let longest = "x".repeat(REQUEST_ID_MAX);
        assert_eq!(
            RequestId::from_client(Some(longest.as_bytes())).as_str(),
            longest
        );
        let too_long = "x".repeat(REQUEST_ID_MAX + 1);
        for bad in [
            &b""[..],
            b"has space",
            b"tab\t",
            b"nl\n",
            "caf\u{e9}".as_bytes(),
            too_long.as_bytes(),
        ] {
            let made = RequestId::from_client(Some(bad));
            assert_eq!(made.as_str().len(), 32, "{bad:?}");
            assert!(made.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
        }
        let a = RequestId::from_client(None);
        let b = RequestId::generate();
        assert_ne!(a.as_str(), b.as_str());
        assert!(!RequestId::default().is_set());
    }

    #[test]
    fn clocks_outside_the_four_digit_years_are_clamped() {
        let far = Duration::from_secs(u64::MAX / 2);
        assert!(line(Format::Text, far, &RECORD).starts_with("9999-12-31T23:59:59."));
        assert!(line(Format::Text, Duration::ZERO, &RECORD)
            .starts_with("1970-01-01T00:00:00.000000Z  INFO"));
    }

    #[test]
    fn the_cached_date_follows_the_second() {
        let mut l = Line::new();
        for (secs, micros, expected) in [
            (1_795_308_432, 1, "2026-11-22T00:47:12.000001Z"),
            (1_795_308_432, 999_999, "2026-11-22T00:47:12.999999Z"),
            (1_795_308_433, 0, "2026-11-22T00:47:13.000000Z"),
            (951_782_400, 5, "2000-02-29T00:00:00.000005Z"),
        ] {
            l.format(Format::Json, Duration::new(secs, micros * 1000), &RECORD);
            let text = String::from_utf8_lossy(&l.bytes).into_owned();
            assert!(text.contains(expected), "{text}");
            l.finish();
        }
    }

    #[test]
    fn date_time_matches_httpdate() {
        let months = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        // Every day from 1970 to 2100 at a varying time of day, then every
        // 50 days (httpdate stops at 9999-01-01).
        let mut secs = 0u64;
        while secs < 253_370_764_800 {
            for s in [secs, secs + 86_399] {
                let t = UNIX_EPOCH + Duration::from_secs(s);
                // "Sun, 06 Nov 1994 08:49:37 GMT"
                let http = httpdate::fmt_http_date(t);
                let p: Vec<&str> = http.split([' ', ':']).collect();
                let month = months.iter().position(|m| *m == p[2]).expect("month") + 1;
                let expected = format!("{}-{month:02}-{}T{}:{}:{}.", p[3], p[1], p[4], p[5], p[6]);
                assert_eq!(String::from_utf8_lossy(&date_time(s)), expected, "{s}");
            }
            secs += if secs < 4_102_444_800 {
                86_400 + 3_607
            } else {
                50 * 86_400 + 3_607
            };
        }
    }

    #[test]
    fn a_huge_line_does_not_keep_its_buffer() {
        let path = "/x".repeat(KEEP_CAPACITY);
        let mut l = Line::new();
        l.format(
            Format::Text,
            NOW,
            &AccessRecord {
                path: &path,
                ..RECORD
            },
        );
        l.finish();
        assert_eq!(l.bytes.capacity(), 0);
        l.format(Format::Text, NOW, &RECORD);
        l.finish();
        assert!(l.bytes.capacity() > 0);
    }
}
