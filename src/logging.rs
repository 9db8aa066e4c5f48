//! Logging on stderr: tracing-subscriber's `fmt` layer for every event but the
//! access log, and a dedicated layer for the access log (target
//! `limpet::access`, one event per request), which writes the same bytes as
//! the `fmt` layer would at a fraction of the cost.
//!
//! Why: at `info`, formatting the access line through the `fmt` layer (its
//! field visitor, `fmt::Debug` per field, the ANSI-style wrappers even when
//! colours are off, a calendar computation per timestamp) was ~12% of limpet's
//! throughput. [`AccessLayer`] appends each field straight into a per-thread
//! buffer (integers without `fmt`, plain strings copied, `fmt::Debug` only for
//! values given with `%` or `?`), re-formats the date and time of day only when
//! the second changes, and hands the line to the writer in one write: with
//! `bench/callgrind.sh`, ~2.7k instructions per access event instead of ~12.4k.
//!
//! Filtering is unchanged: `RUST_LOG` (default `info`) is one global
//! [`EnvFilter`], outermost in the stack, so `RUST_LOG=warn` or
//! `RUST_LOG=info,limpet::access=off` turn the access log off (and
//! `tracing::enabled!` says so to the proxy, which then skips copying the
//! path). Below it, two per-layer filters split the events by target: the
//! `fmt` layer never sees an access event, the access layer sees nothing else.
//!
//! Anything the fast path does not reproduce byte for byte (an access event
//! inside a span, a `message` field, an error value, a float in JSON, a clock
//! outside 1970-9999) is handed to a private `fmt` layer with the same configuration,
//! so the output stays the `fmt` layer's in every case.

use std::cell::RefCell;
use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::filter::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, Filter, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

/// The access log's target (`Proxy::call` logs one event per request to it).
pub const ACCESS_TARGET: &str = "limpet::access";

/// Log format on stderr.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Logs to stderr through a background thread: a request never waits on a
/// write, and lines are written in batches. When the queue is full (stderr
/// blocked) lines are dropped rather than stalling traffic, as syslog over UDP
/// does. Colours only on a terminal (text format). The guard flushes at exit.
pub fn init(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    use std::io::IsTerminal;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .thread_name("limpet-log")
        .finish(std::io::BufWriter::new(std::io::stderr()));
    subscriber(format, std::io::stderr().is_terminal(), filter, writer).init();
    guard
}

fn is_access(meta: &Metadata<'_>) -> bool {
    meta.is_event() && meta.target() == ACCESS_TARGET
}

/// The per-layer filter splitting events by target: access events to the
/// access layer, the others to the `fmt` layer. Spans go to both, so that both
/// see the same span context, and are asked `enabled` each time (interest
/// `sometimes`, as every event callsite is here: `always` for one layer and
/// `never` for the other). A per-layer filter decides through per-thread state
/// that an `enabled` call sets and the next span or event consumes; a
/// `tracing::enabled!` with no event after it (the proxy asks one per request)
/// leaves that state behind, and a callsite of interest `always`, which skips
/// `enabled`, would read it (tokio-rs/tracing#2519, #2448): with `filter_fn`,
/// a span created after such a check went missing for one of the layers.
struct Split {
    access: bool,
}

impl<S> Filter<S> for Split {
    fn enabled(&self, meta: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        !meta.is_event() || is_access(meta) == self.access
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        if !meta.is_event() {
            Interest::sometimes()
        } else if is_access(meta) == self.access {
            Interest::always()
        } else {
            Interest::never()
        }
    }
}

/// The whole stack: `EnvFilter` (global) over the `fmt` layer (all but the
/// access log) and the access layer (the access log only), split by [`Split`].
///
/// The per-layer filters give no level hint: with a global filter outermost,
/// the stack's max level is then `EnvFilter`'s, as it was with the `fmt`
/// subscriber alone (a hint of TRACE on either would raise it to TRACE).
pub fn subscriber<W>(
    format: LogFormat,
    ansi: bool,
    filter: EnvFilter,
    writer: W,
) -> impl Subscriber + for<'a> LookupSpan<'a> + Send + Sync + 'static
where
    W: for<'a> MakeWriter<'a> + Clone + Send + Sync + 'static,
{
    tracing_subscriber::registry()
        .with(fmt_layer(format, ansi, writer.clone()).with_filter(Split { access: false }))
        .with(AccessLayer::new(format, ansi, writer).with_filter(Split { access: true }))
        .with(filter)
}

/// The `fmt` layer as the `fmt` subscriber builder configured it before.
fn fmt_layer<S, W>(
    format: LogFormat,
    ansi: bool,
    writer: W,
) -> Box<dyn Layer<S> + Send + Sync + 'static>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(writer)
        .log_internal_errors(true);
    match format {
        LogFormat::Text => Box::new(layer),
        LogFormat::Json => Box::new(layer.json()),
    }
}

/// Writes access events itself; see the module documentation.
pub struct AccessLayer<S, W> {
    format: LogFormat,
    /// Colours (text format on a terminal only, as the `fmt` layer).
    ansi: bool,
    writer: W,
    /// The `fmt` layer for what the fast path does not do exactly.
    fallback: Box<dyn Layer<S> + Send + Sync + 'static>,
}

impl<S, W> AccessLayer<S, W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'a> MakeWriter<'a> + Clone + Send + Sync + 'static,
{
    pub fn new(format: LogFormat, ansi: bool, writer: W) -> Self {
        AccessLayer {
            format,
            ansi: ansi && format == LogFormat::Text,
            fallback: fmt_layer(format, ansi, writer.clone()),
            writer,
        }
    }
}

impl<S, W> AccessLayer<S, W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn fall_back(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        #[cfg(test)]
        tests::FALLBACKS.with(|n| n.set(n.get() + 1));
        self.fallback.on_event(event, ctx);
    }
}

/// Per-thread state: the line being built and the cached date and time.
struct Buffers {
    line: Vec<u8>,
    /// Scratch space for `fmt::Debug` output that JSON must escape.
    scratch: String,
    /// The second `date` holds, as seconds since the epoch.
    second: u64,
    /// `YYYY-MM-DDTHH:MM:SS.` for `second`.
    date: [u8; 20],
}

thread_local! {
    static BUFFERS: RefCell<Buffers> = const {
        RefCell::new(Buffers {
            line: Vec::new(),
            scratch: String::new(),
            second: u64::MAX,
            date: [0; 20],
        })
    };
}

/// Years 1970 to 9999: the `fmt` layer's timestamp has 4 digits there.
const MAX_SECOND: u64 = 253_402_300_800;

impl<S, W> Layer<S> for AccessLayer<S, W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'a> MakeWriter<'a> + Clone + Send + Sync + 'static,
{
    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        // Within a span, the `fmt` layer also prints the span context.
        if event.parent().is_some() || ctx.lookup_current().is_some() {
            return self.fall_back(event, ctx);
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .ok()
            .filter(|d| d.as_secs() < MAX_SECOND);
        let Some(now) = now else {
            return self.fall_back(event, ctx);
        };
        let written = BUFFERS.with(|b| {
            let Ok(mut b) = b.try_borrow_mut() else {
                return false; // re-entered (an event logged while writing one)
            };
            let b = &mut *b;
            b.line.clear();
            if b.second != now.as_secs() {
                b.second = now.as_secs();
                b.date = date_time(b.second);
            }
            let micros = now.subsec_micros();
            let ok = match self.format {
                LogFormat::Text => text_line(b, micros, event, self.ansi),
                LogFormat::Json => json_line(b, micros, event),
            };
            if ok {
                let mut writer = self.writer.make_writer_for(event.metadata());
                if let Err(e) = writer.write_all(&b.line) {
                    // As the `fmt` subscriber (log_internal_errors).
                    eprintln!("[tracing-subscriber] Unable to write an event to the Writer for this Subscriber! Error: {e}\n");
                }
            }
            b.line.clear();
            ok
        });
        if !written {
            self.fall_back(event, ctx);
        }
    }
}

const DIM: &[u8] = b"\x1b[2m";
const ITALIC: &[u8] = b"\x1b[3m";
const RESET: &[u8] = b"\x1b[0m";

/// `2026-11-22T00:47:12.123456Z  INFO limpet::access: method="GET" ...`, as
/// the `fmt` layer's `Full` format with its defaults. False: not done (the
/// caller falls back to the `fmt` layer).
fn text_line(b: &mut Buffers, micros: u32, event: &Event<'_>, ansi: bool) -> bool {
    let meta = event.metadata();
    let line = &mut b.line;
    if ansi {
        line.extend_from_slice(DIM);
    }
    line.extend_from_slice(&b.date);
    push_micros(line, micros);
    if ansi {
        line.extend_from_slice(RESET);
        line.push(b' ');
        let colour: &[u8] = match *meta.level() {
            Level::TRACE => b"\x1b[35m",
            Level::DEBUG => b"\x1b[34m",
            Level::INFO => b"\x1b[32m",
            Level::WARN => b"\x1b[33m",
            Level::ERROR => b"\x1b[31m",
        };
        line.extend_from_slice(colour);
        line.extend_from_slice(level_padded(meta.level()).as_bytes());
        line.extend_from_slice(RESET);
        line.push(b' ');
        line.extend_from_slice(DIM);
        line.extend_from_slice(meta.target().as_bytes());
        line.extend_from_slice(RESET);
        line.extend_from_slice(DIM);
        line.push(b':');
        line.extend_from_slice(RESET);
        line.push(b' ');
    } else {
        line.push(b' ');
        line.extend_from_slice(level_padded(meta.level()).as_bytes());
        line.push(b' ');
        line.extend_from_slice(meta.target().as_bytes());
        line.extend_from_slice(b": ");
    }
    let mut fields = TextFields {
        line,
        ansi,
        first: true,
        unsupported: false,
    };
    event.record(&mut fields);
    if fields.unsupported {
        return false;
    }
    line.push(b'\n');
    true
}

/// `{"timestamp":"...","level":"INFO","fields":{...},"target":"limpet::access"}`,
/// as the `fmt` layer's JSON format with its defaults.
fn json_line(b: &mut Buffers, micros: u32, event: &Event<'_>) -> bool {
    let meta = event.metadata();
    let line = &mut b.line;
    line.extend_from_slice(b"{\"timestamp\":\"");
    line.extend_from_slice(&b.date);
    push_micros(line, micros);
    line.extend_from_slice(b"\",\"level\":\"");
    line.extend_from_slice(meta.level().as_str().as_bytes());
    line.extend_from_slice(b"\",\"fields\":{");
    let mut fields = JsonFields {
        line,
        scratch: &mut b.scratch,
        first: true,
        unsupported: false,
    };
    event.record(&mut fields);
    if fields.unsupported {
        return false;
    }
    line.extend_from_slice(b"},\"target\":");
    push_json_str(line, meta.target());
    line.extend_from_slice(b"}\n");
    true
}

/// The `fmt` layer's level column: right-aligned in 5.
fn level_padded(level: &Level) -> &'static str {
    match *level {
        Level::TRACE => "TRACE",
        Level::DEBUG => "DEBUG",
        Level::INFO => " INFO",
        Level::WARN => " WARN",
        Level::ERROR => "ERROR",
    }
}

/// Names the fast path writes as given: the `fmt` layer treats `message`,
/// `r#...` and `log....` specially.
fn plain_name(name: &str) -> bool {
    name != "message" && !name.starts_with("r#") && !name.starts_with("log.")
}

/// The `fmt` layer's `DefaultVisitor`: `name=value` separated by spaces, the
/// value as `fmt::Debug` (so strings quoted and escaped, `%` values as
/// `Display`).
struct TextFields<'a> {
    line: &'a mut Vec<u8>,
    ansi: bool,
    first: bool,
    unsupported: bool,
}

impl TextFields<'_> {
    /// The separator and `name=`; false if the field is not for the fast path.
    fn name(&mut self, field: &Field) -> bool {
        let name = field.name();
        if self.unsupported || !plain_name(name) {
            self.unsupported = true;
            return false;
        }
        if !self.first {
            self.line.push(b' ');
        }
        self.first = false;
        if self.ansi {
            self.line.extend_from_slice(ITALIC);
            self.line.extend_from_slice(name.as_bytes());
            self.line.extend_from_slice(RESET);
            self.line.extend_from_slice(DIM);
            self.line.push(b'=');
            self.line.extend_from_slice(RESET);
        } else {
            self.line.extend_from_slice(name.as_bytes());
            self.line.push(b'=');
        }
        true
    }
}

impl Visit for TextFields<'_> {
    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.name(field) {
            push_u64(self.line, value);
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.name(field) {
            push_i64(self.line, value);
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if self.name(field) {
            let v: &[u8] = if value { b"true" } else { b"false" };
            self.line.extend_from_slice(v);
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if self.name(field) {
            if value
                .bytes()
                .all(|c| (0x20..0x7f).contains(&c) && c != b'"' && c != b'\\')
            {
                self.line.push(b'"');
                self.line.extend_from_slice(value.as_bytes());
                self.line.push(b'"');
            } else {
                // `str`'s Debug escapes more than ASCII controls (unicode
                // escapes for non-printable characters): the real thing.
                let _ = write!(self.line, "{value:?}");
            }
        }
    }

    fn record_error(&mut self, _: &Field, _: &(dyn std::error::Error + 'static)) {
        // The `fmt` layer prints the sources and escapes ANSI: leave it to it.
        self.unsupported = true;
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if self.name(field) {
            let _ = write!(self.line, "{value:?}");
        }
    }
}

/// tracing-serde's map visitor under serde_json: 64-bit integers and booleans
/// as JSON values, strings escaped, anything else (128-bit integers too) as its
/// `fmt::Debug` string.
struct JsonFields<'a> {
    line: &'a mut Vec<u8>,
    scratch: &'a mut String,
    first: bool,
    unsupported: bool,
}

impl JsonFields<'_> {
    /// The separator and `"name":`; false if the field is not for the fast path.
    fn name(&mut self, field: &Field) -> bool {
        let name = field.name();
        if self.unsupported || !plain_name(name) {
            self.unsupported = true;
            return false;
        }
        if !self.first {
            self.line.push(b',');
        }
        self.first = false;
        push_json_str(self.line, name);
        self.line.push(b':');
        true
    }
}

impl Visit for JsonFields<'_> {
    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.name(field) {
            push_u64(self.line, value);
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.name(field) {
            push_i64(self.line, value);
        }
    }

    fn record_f64(&mut self, _: &Field, _: f64) {
        // serde_json's float formatting (and null for NaN): leave it to it.
        self.unsupported = true;
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if self.name(field) {
            let v: &[u8] = if value { b"true" } else { b"false" };
            self.line.extend_from_slice(v);
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if self.name(field) {
            push_json_str(self.line, value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if self.name(field) {
            use std::fmt::Write as _;
            self.scratch.clear();
            let _ = write!(self.scratch, "{value:?}");
            push_json_str(self.line, self.scratch);
            self.scratch.clear();
        }
    }
}

/// A JSON string as serde_json writes it.
fn push_json_str(line: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|c| c >= 0x20 && c != b'"' && c != b'\\') {
        line.push(b'"');
        line.extend_from_slice(s.as_bytes());
        line.push(b'"');
    } else {
        let _ = serde_json::to_writer(&mut *line, s);
    }
}

/// Decimal digits, as `Display` (and serde_json) write them.
fn push_u64(line: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    line.extend_from_slice(&digits[at..]);
}

fn push_i64(line: &mut Vec<u8>, n: i64) {
    if n < 0 {
        line.push(b'-');
    }
    push_u64(line, n.unsigned_abs());
}

/// `.123456Z`'s digits and `Z` (the `.` is in the cached date).
fn push_micros(line: &mut Vec<u8>, micros: u32) {
    let mut digits = [b'0', b'0', b'0', b'0', b'0', b'0', b'Z'];
    let mut n = micros;
    for d in digits[..6].iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    line.extend_from_slice(&digits);
}

/// `YYYY-MM-DDTHH:MM:SS.` in UTC for seconds since the epoch (before
/// [`MAX_SECOND`]), as tracing-subscriber's `SystemTime` timer writes it.
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
    use std::sync::{Arc, Mutex};

    #[test]
    fn date_time_matches_httpdate() {
        let months = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        // Every day from 1970 to 9999 at a varying time of day, and around
        // leap days and year ends.
        let mut secs = 0u64;
        // httpdate stops at 9999-01-01.
        while secs < 253_370_764_800 {
            for s in [secs, secs + 86_399] {
                let t = UNIX_EPOCH + std::time::Duration::from_secs(s);
                // "Sun, 06 Nov 1994 08:49:37 GMT"
                let http = httpdate::fmt_http_date(t);
                let p: Vec<&str> = http.split([' ', ':']).collect();
                let month = months.iter().position(|m| *m == p[2]).unwrap() + 1;
                let expected = format!("{}-{month:02}-{}T{}:{}:{}.", p[3], p[1], p[4], p[5], p[6]);
                assert_eq!(std::str::from_utf8(&date_time(s)).unwrap(), expected, "{s}");
            }
            secs += if secs < 4_102_444_800 {
                86_400 + 3_607
            } else {
                50 * 86_400 + 3_607
            };
        }
    }

    /// A writer collecting lines in memory.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Sink {
        type Writer = Sink;
        fn make_writer(&'a self) -> Sink {
            self.clone()
        }
    }

    impl Sink {
        fn take(&self) -> String {
            String::from_utf8(std::mem::take(&mut *self.0.lock().unwrap())).unwrap()
        }
    }

    type Hint = Option<tracing::level_filters::LevelFilter>;

    /// The subscriber limpet had before this module (the `fmt` subscriber),
    /// and its max level hint.
    fn before(
        format: LogFormat,
        ansi: bool,
        filter: &str,
        sink: Sink,
    ) -> (Hint, tracing::Dispatch) {
        let builder = tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new(filter))
            .with_ansi(ansi)
            .with_writer(sink);
        match format {
            LogFormat::Text => {
                let s = builder.finish();
                (s.max_level_hint(), s.into())
            }
            LogFormat::Json => {
                let s = builder.json().finish();
                (s.max_level_hint(), s.into())
            }
        }
    }

    fn after(format: LogFormat, ansi: bool, filter: &str, sink: Sink) -> (Hint, tracing::Dispatch) {
        let s = subscriber(format, ansi, EnvFilter::new(filter), sink);
        (s.max_level_hint(), s.into())
    }

    /// Each line with its timestamp (RFC 3339, UTC, microseconds, as
    /// tracing-subscriber writes it) replaced by `TIMESTAMP`.
    fn mask(log: &str) -> String {
        let shape = b"dddd-dd-ddTdd:dd:dd.ddddddZ";
        let is_stamp = |at: &[u8]| {
            at.len() >= shape.len()
                && shape.iter().zip(at).all(|(s, b)| match s {
                    b'd' => b.is_ascii_digit(),
                    s => s == b,
                })
        };
        log.lines()
            .map(|l| {
                let at = (0..l.len())
                    .find(|&i| is_stamp(&l.as_bytes()[i..]))
                    .unwrap_or_else(|| panic!("no timestamp in {l:?}"));
                format!("{}TIMESTAMP{}\n", &l[..at], &l[at + shape.len()..])
            })
            .collect()
    }

    thread_local! {
        /// Access events handed to the `fmt` layer on this thread.
        pub(super) static FALLBACKS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    const ODD: &str = "quote\" backslash\\ tab\t nel\u{85} bidi\u{202e} é esc\x1b";

    /// Access events as the proxy logs them, with plain and awkward values.
    fn access_events() {
        let path = String::from("/shop/cart?x=1");
        tracing::info!(
            target: "limpet::access",
            method = "GET",
            path = %path,
            status = 200u16,
            upstream = "shop",
            backend = "app1",
            affinity = "new",
            duration_us = 1234u64,
        );
        tracing::info!(
            target: "limpet::access",
            method = "PURGE",
            path = %ODD,
            status = 404u16,
            upstream = "",
            backend = ODD,
            affinity = "-",
            duration_us = 0u64,
            signed = -5i64,
            big = u128::MAX,
            flag = true,
            debugged = ?Some(ODD),
            r#type = "x",
        );
    }

    /// Logs the same events under `dispatch`; returns whether the access log
    /// was enabled for the proxy's `tracing::enabled!` check.
    fn emit(dispatch: &tracing::Dispatch) -> bool {
        tracing::dispatcher::with_default(dispatch, || {
            let enabled = tracing::enabled!(target: "limpet::access", Level::INFO);
            tracing::info!("listening on http://127.0.0.1:8080");
            access_events();
            tracing::debug!(target: "limpet::access", method = "GET", "a debug access event");
            // What the fast path leaves to the `fmt` layer.
            tracing::warn!(target: "limpet::access", "with a message: {}", ODD);
            let err: &(dyn std::error::Error + 'static) = &std::fmt::Error;
            tracing::info!(target: "limpet::access", status = 1u64, error = err);
            tracing::info!(target: "limpet::access", ratio = 0.25f64, status = 1u64);
            {
                let _span = tracing::info_span!("conn", peer = "127.0.0.1:1").entered();
                tracing::info!(target: "limpet::access", method = "GET", status = 200u16);
                tracing::info!("inside a span");
            }
            tracing::warn!(target: "limpet::proxy", backend = "app1", "backend down");
            tracing::debug!("debug elsewhere");
            enabled
        })
    }

    #[test]
    fn same_output_and_filtering_as_the_fmt_subscriber() {
        let filters = [
            "info",
            "warn",
            "debug",
            "info,limpet::access=off",
            "warn,limpet::access=info",
            "limpet::access=debug",
            "off",
            "info,limpet=warn",
        ];
        for format in [LogFormat::Text, LogFormat::Json] {
            for ansi in [false, true] {
                for filter in filters {
                    let (old, new) = (Sink::default(), Sink::default());
                    let (old_hint, old_dispatch) = before(format, ansi, filter, old.clone());
                    let (new_hint, new_dispatch) = after(format, ansi, filter, new.clone());
                    let what = format!("{format:?} ansi={ansi} RUST_LOG={filter}");
                    assert_eq!(old_hint, new_hint, "{what}: max level");
                    let old_enabled = emit(&old_dispatch);
                    let new_enabled = emit(&new_dispatch);
                    assert_eq!(old_enabled, new_enabled, "{what}: enabled!");
                    let (old, new) = (old.take(), new.take());
                    assert_eq!(mask(&old), mask(&new), "{what}");
                    if filter == "info" {
                        assert!(new.contains("duration_us"), "{what}: {new}");
                    }
                }
            }
        }
    }

    /// The proxy asks `tracing::enabled!` for the access log on every request
    /// and may log nothing else before other code runs. With per-layer
    /// filters that answer leaves per-thread filter state behind (tokio-rs/tracing
    /// #2519, #2448): a callsite that skips `enabled` (interest `always`)
    /// would read it and vanish from the `fmt` layer.
    #[test]
    fn a_lone_enabled_check_does_not_hide_what_follows() {
        let run = |dispatch: &tracing::Dispatch| {
            tracing::dispatcher::with_default(dispatch, || {
                let _ = tracing::enabled!(target: "limpet::access", Level::INFO);
                let span = tracing::info_span!("conn", peer = "127.0.0.1:1");
                let _ = tracing::enabled!(target: "limpet::access", Level::INFO);
                let _entered = span.enter();
                let _ = tracing::enabled!(target: "limpet::access", Level::INFO);
                tracing::info!("in the span");
                let _ = tracing::enabled!(target: "limpet::access", Level::INFO);
                tracing::info!(target: "limpet::access", status = 200u16);
            })
        };
        for format in [LogFormat::Text, LogFormat::Json] {
            let (old, new) = (Sink::default(), Sink::default());
            run(&before(format, false, "info", old.clone()).1);
            run(&after(format, false, "info", new.clone()).1);
            let (old, new) = (old.take(), new.take());
            assert_eq!(mask(&old), mask(&new), "{format:?}");
            assert_eq!(
                new.matches("conn").count(),
                2 * (1 + usize::from(format == LogFormat::Json)),
                "{new}"
            );
        }
    }

    #[test]
    fn access_lines_take_the_fast_path() {
        for format in [LogFormat::Text, LogFormat::Json] {
            for ansi in [false, true] {
                let (old, new) = (Sink::default(), Sink::default());
                let (_, old_dispatch) = before(format, ansi, "info", old.clone());
                let (_, new_dispatch) = after(format, ansi, "info", new.clone());
                tracing::dispatcher::with_default(&old_dispatch, access_events);
                FALLBACKS.with(|n| n.set(0));
                tracing::dispatcher::with_default(&new_dispatch, access_events);
                let what = format!("{format:?} ansi={ansi}");
                assert_eq!(FALLBACKS.with(|n| n.get()), 0, "{what}");
                let (old, new) = (old.take(), new.take());
                assert_eq!(new.lines().count(), 2, "{what}: {new}");
                assert_eq!(mask(&old), mask(&new), "{what}");
            }
        }
    }

    #[test]
    fn the_timestamp_is_now() {
        let sink = Sink::default();
        let dispatch: tracing::Dispatch =
            subscriber(LogFormat::Text, false, EnvFilter::new("info"), sink.clone()).into();
        let before = SystemTime::now();
        tracing::dispatcher::with_default(&dispatch, access_events);
        let after = SystemTime::now();
        let line = sink.take();
        let stamp = line.split(' ').next().unwrap();
        let rfc3339 = |t: SystemTime| {
            let d = t.duration_since(UNIX_EPOCH).unwrap();
            let mut l = date_time(d.as_secs()).to_vec();
            push_micros(&mut l, d.subsec_micros());
            String::from_utf8(l).unwrap()
        };
        assert!(
            rfc3339(before).as_str() <= stamp && stamp <= rfc3339(after).as_str(),
            "{stamp}"
        );
        assert_eq!(stamp.len(), "2026-11-22T00:47:12.123456Z".len(), "{stamp}");
    }
}
