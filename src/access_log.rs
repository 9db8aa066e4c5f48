//! The access log: one line per request, written where the request's metrics
//! are (`Proxy::record`, for both HTTP engines), beside the flow rather than in it.
//!
//! A request hands [`write()`] an [`AccessRecord`] of borrowed fields; the line is
//! formatted into a per-thread buffer (integers with `itoa`, strings copied, the
//! date re-formatted only when the second changes) and given to the [`Sink`] in
//! one call. [`enabled`] is a single atomic load, so a request skips copying its
//! path when the log is off. It is not a `tracing` event: dispatching one and
//! formatting it through a visitor cost several times more per request, and
//! this log has one fixed shape.
//!
//! The line keeps the shape tracing-subscriber's `fmt` output gave it, so that
//! parsers of earlier logs keep working (`--log-format text` and `json`):
//!
//! ```text
//! 2026-11-22T00:47:12.123456Z  INFO limpet::access: method="GET" path=/shop/cart?x=1 status=200 upstream="shop" backend="app1" affinity="new" duration_us=1234
//! {"timestamp":"2026-11-22T00:47:12.123456Z","level":"INFO","fields":{"method":"GET","path":"/shop/cart?x=1","status":200,"upstream":"shop","backend":"app1","affinity":"new","duration_us":1234},"target":"limpet::access"}
//! ```
//!
//! Text values are quoted and escaped as Rust's `{:?}` does (the path only when
//! it holds a control character); JSON strings as serde_json writes them. Text
//! lines carry no ANSI colours, even on a terminal.
//!
//! Configuration is global and set once at startup ([`init`]): the format, and
//! the sink, which is where a destination lives (limpet's binary gives it the
//! same non-blocking stderr writer as its other logs). Until then, or without
//! it, the log is off. A destination that needs state (a file reopened on
//! SIGUSR1) is a [`Sink`] holding that state; neither it nor another format
//! changes [`write()`]'s callers.

use std::cell::RefCell;
use std::io::Write as _;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
    pub duration_us: u64,
}

/// How a line is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// `TIMESTAMP  INFO limpet::access: key=value ...`
    #[default]
    Text,
    /// One JSON object per line, keyed as tracing-subscriber's JSON format.
    Json,
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

struct Log {
    format: Format,
    sink: Box<dyn Sink>,
}

static LOG: OnceLock<Log> = OnceLock::new();

/// [`init`] was called before.
#[derive(Debug, thiserror::Error)]
#[error("the access log is already configured")]
pub struct AlreadyConfigured;

/// Turns the access log on, for the rest of the process, writing `format` to
/// `sink`. Once only: a later call changes nothing and says so.
pub fn init(format: Format, sink: impl Sink) -> Result<(), AlreadyConfigured> {
    LOG.set(Log {
        format,
        sink: Box::new(sink),
    })
    .map_err(|_| AlreadyConfigured)
}

/// Whether the current `tracing` subscriber enables target [`TARGET`] at
/// `INFO`: how limpet's binary derives the access log's on/off from `RUST_LOG`
/// (`warn` or `info,limpet::access=off` turn it off). Asked once, before
/// [`init`]; a later change of `RUST_LOG` needs a restart.
pub fn filter_enables() -> bool {
    tracing::enabled!(target: TARGET, tracing::Level::INFO)
}

/// Whether [`write()`] writes anything; one atomic load, for every request.
#[inline]
pub fn enabled() -> bool {
    LOG.get().is_some()
}

/// Writes `record` as one line, if the log is on.
pub fn write(record: &AccessRecord<'_>) {
    let Some(log) = LOG.get() else {
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
             status=200 upstream=\"shop\" backend=\"app1\" affinity=\"new\" duration_us=1234\n"
        );
        assert_eq!(
            line(Format::Json, NOW, &RECORD),
            "{\"timestamp\":\"2026-11-22T00:47:12.000042Z\",\"level\":\"INFO\",\"fields\":{\
             \"method\":\"GET\",\"path\":\"/shop/cart?x=1\",\"status\":200,\"upstream\":\"shop\",\
             \"backend\":\"app1\",\"affinity\":\"new\",\"duration_us\":1234},\
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
