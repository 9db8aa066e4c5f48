//! `paced ADDR RATE SECONDS CONNECTIONS [COOKIE]`: keep-alive GET / on
//! CONNECTIONS connections to 127.0.0.1 ADDR, RATE requests per second in all,
//! each due at a fixed time; latency is measured from when a request was due to
//! the end of its response. Prints one line:
//! `PACED_JSON {"rate":..,"sent":..,"errors":..,"p50_us":..,"p99_us":..,"p999_us":..,"max_us":..}`.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        eprintln!("usage: paced ADDR RATE SECONDS CONNECTIONS [COOKIE]");
        std::process::exit(2);
    }
    let addr: std::net::SocketAddr = args[1].parse().expect("ADDR: host:port");
    let rate: f64 = args[2].parse().expect("RATE");
    let seconds: f64 = args[3].parse().expect("SECONDS");
    let conns: usize = args[4].parse().expect("CONNECTIONS");
    let cookie = args.get(5).cloned().unwrap_or_default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (mut latencies, errors) = runtime.block_on(run(addr, rate, seconds, conns, cookie));
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p / 100.0) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "PACED_JSON {{\"rate\":{rate},\"sent\":{},\"errors\":{errors},\"p50_us\":{},\"p99_us\":{},\"p999_us\":{},\"max_us\":{}}}",
        latencies.len(),
        pct(50.0),
        pct(99.0),
        pct(99.9),
        latencies.last().copied().unwrap_or(0)
    );
}

async fn run(
    addr: std::net::SocketAddr,
    rate: f64,
    seconds: f64,
    conns: usize,
    cookie: String,
) -> (Vec<u64>, u64) {
    let request = match cookie.is_empty() {
        true => "GET / HTTP/1.1\r\nHost: bench\r\n\r\n".to_string(),
        false => format!("GET / HTTP/1.1\r\nHost: bench\r\nCookie: {cookie}\r\n\r\n"),
    };
    // Each connection sends every `interval`, the connections evenly staggered.
    let interval = Duration::from_secs_f64(conns as f64 / rate);
    let start = Instant::now() + Duration::from_millis(200);
    let end = start + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for i in 0..conns {
        let request = request.clone();
        let first = start + interval.mul_f64(i as f64 / conns as f64);
        tasks.push(tokio::spawn(connection(addr, request, first, interval, end)));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (lat, err) = t.await.unwrap_or_default();
        all.extend(lat);
        errors += err;
    }
    (all, errors)
}

async fn connection(
    addr: std::net::SocketAddr,
    request: String,
    first: Instant,
    interval: Duration,
    end: Instant,
) -> (Vec<u64>, u64) {
    let mut latencies = Vec::new();
    let mut errors = 0;
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return (latencies, 1);
    };
    let _ = stream.set_nodelay(true);
    let mut buf = vec![0u8; 16 * 1024];
    let mut due = first;
    while due < end {
        tokio::time::sleep_until(due.into()).await;
        let ok = exchange(&mut stream, request.as_bytes(), &mut buf).await;
        let took = due.elapsed().as_micros() as u64;
        match ok {
            true => latencies.push(took),
            false => {
                errors += 1;
                match TcpStream::connect(addr).await {
                    Ok(s) => stream = s,
                    Err(_) => return (latencies, errors),
                }
            }
        }
        due += interval;
    }
    (latencies, errors)
}

/// One request and its response (Content-Length bodies only; status must be 2xx).
async fn exchange(stream: &mut TcpStream, request: &[u8], buf: &mut [u8]) -> bool {
    if stream.write_all(request).await.is_err() {
        return false;
    }
    let mut filled = 0;
    loop {
        match stream.read(&mut buf[filled..]).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => filled += n,
        }
        let Some(head_end) = find(&buf[..filled], b"\r\n\r\n") else {
            if filled == buf.len() {
                return false;
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        if !head.starts_with("http/1.1 2") {
            return false;
        }
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let total = head_end + 4 + length;
        while filled < total {
            match stream.read(&mut buf[filled..]).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => filled += n,
            }
        }
        return true;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
