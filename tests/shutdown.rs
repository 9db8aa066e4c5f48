//! SPEC section 8, shutdown: on SIGTERM/SIGINT the real binary stops accepting,
//! lets requests in flight finish up to `shutdown_grace`, then exits 0; a
//! response in flight tells its client that the connection closes after it.

mod common;
mod ops;

use std::time::{Duration, Instant};

use common::scripted::{ok, write, ScriptedBackend, Step};
use common::wire::*;
use common::*;
use ops::*;

both_sides!(
    a_response_in_flight_at_shutdown_says_connection_close,
    a_request_waiting_at_shutdown_is_served,
    the_next_request_after_a_response_streaming_at_shutdown_is_served,
);

fn config(backend: &TestBackend, grace: &str) -> String {
    format!(
        "[listen]\nhttp = [\"127.0.0.1:0\"]\n\n[timeouts]\nshutdown_grace = \"{grace}\"\n\n\
         [upstream.shop]\n\n[[upstream.shop.backend]]\nname = \"{}\"\naddr = \"{}\"\n{ADMIN}",
        backend.name, backend.addr
    )
}

/// True once `addr` refuses TCP connections.
async fn refuses(addr: std::net::SocketAddr) -> bool {
    matches!(
        tokio::net::TcpStream::connect(addr).await,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

#[tokio::test]
async fn sigterm_lets_the_request_in_flight_finish_refuses_new_connections_and_exits_0() {
    let backend = TestBackend::spawn("app1").await;
    let mut process = Process::start(&config(&backend, "10s")).await;
    let http = process.http;
    let admin_addr = process.admin.unwrap();

    // An idle keep-alive connection must not hold shutdown up.
    let mut idle = Client::new(http);
    assert_eq!(idle.get("/").await.status, 200);

    let mut slow = Client::new(http);
    let in_flight = tokio::spawn(async move {
        let r = slow.get("/slow?ms=1500").await;
        (r, Instant::now())
    });
    assert!(
        eventually(Duration::from_secs(5), || async { backend.hits() >= 2 }).await,
        "the slow request reached the backend"
    );

    let signalled = Instant::now();
    process.signal("TERM");
    assert!(
        eventually(Duration::from_millis(1000), || refuses(http)).await,
        "new connections are refused while the slow request is still in flight"
    );
    assert!(!in_flight.is_finished());
    assert!(eventually(Duration::from_secs(1), || refuses(admin_addr)).await);

    let (reply, answered) = in_flight.await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "app1", "the request in flight completed");
    let status = process
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("exited");
    let exited = Instant::now();
    assert!(status.success(), "{status:?}");
    assert!(exited >= answered);
    let took = exited - signalled;
    assert!(
        took < Duration::from_secs(4),
        "exits once the request is done, not after the whole grace: {took:?}"
    );
    assert!(
        process
            .messages()
            .iter()
            .any(|m| m.starts_with("shutting down")),
        "{:#?}",
        process.messages()
    );
}

#[tokio::test]
async fn a_request_longer_than_the_grace_is_cut_and_the_process_still_exits_0() {
    let backend = TestBackend::spawn("app1").await;
    let mut process = Process::start(&config(&backend, "500ms")).await;
    let mut slow = Client::new(process.http);
    let in_flight = tokio::spawn(async move {
        slow.try_request("GET", "/slow?ms=20000", Default::default())
            .await
    });
    assert!(eventually(Duration::from_secs(5), || async { backend.hits() >= 1 }).await);

    let signalled = Instant::now();
    process.signal("TERM");
    let status = process
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("exited");
    let took = signalled.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(3),
        "exits when shutdown_grace is over: {took:?}"
    );
    let reply = in_flight.await.unwrap();
    assert!(reply.is_err(), "the cut request fails: {reply:?}");
}

#[tokio::test]
async fn sigint_shuts_down_like_sigterm() {
    let backend = TestBackend::spawn("app1").await;
    let mut process = Process::start(&config(&backend, "10s")).await;
    let mut client = Client::new(process.http);
    assert_eq!(client.get("/").await.status, 200);
    let signalled = Instant::now();
    process.signal("INT");
    let status = process
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("exited");
    assert!(status.success(), "{status:?}");
    assert!(signalled.elapsed() < Duration::from_secs(3));
    assert!(refuses(process.http).await);
}

/// At graceful shutdown, a request in flight is answered and the connection
/// then closed; the answer must say `Connection: close` (as hyper's path does:
/// its graceful shutdown disables keep-alive before the response head is
/// written), or a keep-alive client sends its next request into a closing
/// connection. The engine decided Connection: close before forwarding the
/// request and never looked again.
async fn a_response_in_flight_at_shutdown_says_connection_close(side: Side) {
    let backend = ScriptedBackend::spawn(|_| {
        let mut steps = vec![Step::Pause(Duration::from_millis(800))];
        steps.extend(ok("slow"));
        steps
    })
    .await;
    let lb = lb_for(side, &backend).await;
    let mut wire = lb.connect().await;
    wire.send(get("/slow")).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            !backend.received().is_empty()
        })
        .await,
        "the request reached the backend"
    );
    let stopping = tokio::spawn(lb.lb.limpet.shutdown());
    let resp = wire.read().await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.text(), "slow", "{resp:?}");
    assert!(
        resp.connection_tokens().contains(&"close".to_string()),
        "the connection closes after this response but it does not say so: {resp:?}"
    );
    assert!(wire.closed().await);
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("shutdown finished")
        .unwrap();
}

/// At shutdown, a request that has already arrived on an idle kept-alive
/// connection is served, with `Connection: close`, instead of being dropped
/// with the connection (HAProxy's `idle-close-on-response`); an idle
/// connection with nothing waiting is closed at once. The engine used to look
/// at the shutdown flag before reading what was waiting.
async fn a_request_waiting_at_shutdown_is_served(side: Side) {
    let backend = ScriptedBackend::spawn(|_| ok("ok")).await;
    let lb = lb_for(side, &backend).await;
    let (mut busy, mut idle) = (lb.connect().await, lb.connect().await);
    assert_ok(&busy.exchange(get("/first")).await, "ok");
    assert_ok(&idle.exchange(get("/first")).await, "ok");
    // The next request is in limpet's receive buffer as shutdown starts:
    // nothing between the write and the shutdown lets limpet run.
    busy.send(get("/second")).await;
    let stopping = tokio::spawn(lb.lb.limpet.shutdown());
    let resp = busy.read().await;
    assert_ok(&resp, "ok");
    assert!(
        resp.connection_tokens().contains(&"close".to_string()),
        "{resp:?}"
    );
    assert!(busy.closed().await);
    assert!(idle.closed().await, "an idle connection closes at shutdown");
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("shutdown finished")
        .unwrap();
}

/// A response whose head went out (keep-alive) before shutdown began and
/// whose body ends after: the client, told keep-alive, sends its next
/// request, which is served with `Connection: close`, as on any connection
/// idle at shutdown. The engine closed the connection as that response
/// ended, and the next request got nothing (under SIGTERM and SIGUSR2: every
/// busy keep-alive connection of a streaming backend lost one request).
async fn the_next_request_after_a_response_streaming_at_shutdown_is_served(side: Side) {
    let backend = ScriptedBackend::spawn(|r| match r.target.as_str() {
        "/stream" => vec![
            write("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab"),
            Step::Pause(Duration::from_millis(800)),
            write("cd"),
        ],
        _ => ok("next"),
    })
    .await;
    let lb = lb_for(side, &backend).await;
    let mut wire = lb.connect().await;
    wire.send(get("/stream")).await;
    // The head and the first bytes have gone out before shutdown begins.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopping = tokio::spawn(lb.lb.limpet.shutdown());
    let resp = wire.read().await;
    assert_eq!(resp.text(), "abcd", "{resp:?}");
    assert!(!resp.connection_tokens().contains(&"close".to_string()));
    let next = wire.exchange(get("/next")).await;
    assert_eq!(next.text(), "next", "{next:?}");
    assert!(
        next.connection_tokens().contains(&"close".to_string()),
        "{next:?}"
    );
    assert!(wire.closed().await);
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("shutdown finished")
        .unwrap();
}
