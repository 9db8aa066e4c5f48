//! Long-idle plain keep-alive connections leave their task for the
//! listener's lot (src/park.rs) after a tenth of a second without a request: they go on
//! serving when their client sends again, close when their idle time ends,
//! make room at `max_connections`, and take part in graceful shutdown as any
//! idle connection does.

mod common;

use std::time::Duration;

use common::scripted::{ok, ScriptedBackend};
use common::wire::*;

/// Longer than a connection waits in its task before it parks (100 ms).
const PARKED: Duration = Duration::from_millis(1600);

async fn lb(backend: &ScriptedBackend, top: &str) -> WireLb {
    WireLb::start(Side::Plain, &config(backend.addr, top, "")).await
}

#[tokio::test]
async fn a_parked_connection_serves_its_next_requests() {
    bounded(async {
        let backend = ScriptedBackend::spawn(|_| ok("ok")).await;
        let lb = lb(&backend, "").await;
        let mut wire = lb.connect().await;
        assert_ok(&wire.exchange(get("/1")).await, "ok");
        // Parked, given back, parked again.
        for path in ["/2", "/3"] {
            tokio::time::sleep(PARKED).await;
            assert_ok(&wire.exchange(get(path)).await, "ok");
        }
        // Pipelined requests arriving at a parked connection.
        tokio::time::sleep(PARKED).await;
        wire.send(format!("{}{}", get("/4"), get("/5"))).await;
        assert_ok(&wire.read().await, "ok");
        assert_ok(&wire.read().await, "ok");
    })
    .await;
}

#[tokio::test]
async fn a_parked_connection_closes_when_its_idle_time_ends() {
    bounded(async {
        let backend = ScriptedBackend::spawn(|_| ok("ok")).await;
        let lb = lb(&backend, "[timeouts]\nclient_idle = \"2500ms\"").await;
        let mut wire = lb.connect().await;
        assert_ok(&wire.exchange(get("/")).await, "ok");
        tokio::time::sleep(PARKED).await;
        assert!(wire.closed().await, "closed at the end of client_idle");
    })
    .await;
}

#[tokio::test]
async fn a_client_closing_a_parked_connection_is_seen() {
    bounded(async {
        let backend = ScriptedBackend::spawn(|_| ok("ok")).await;
        let lb = lb(&backend, "[limits]\nmax_connections = 1").await;
        let mut wire = lb.connect().await;
        assert_ok(&wire.exchange(get("/")).await, "ok");
        tokio::time::sleep(PARKED).await;
        drop(wire);
        // Its place is free again: the next client is served.
        let mut next = lb.connect().await;
        assert_ok(&next.exchange(get("/")).await, "ok");
    })
    .await;
}

#[tokio::test]
async fn at_the_limit_a_parked_connection_makes_room() {
    bounded(async {
        let backend = ScriptedBackend::spawn(|_| ok("ok")).await;
        let lb = lb(&backend, "[limits]\nmax_connections = 2").await;
        let mut oldest = lb.connect().await;
        assert_ok(&oldest.exchange(get("/")).await, "ok");
        tokio::time::sleep(PARKED).await;
        let mut newer = lb.connect().await;
        assert_ok(&newer.exchange(get("/")).await, "ok");
        let mut arriving = lb.connect().await;
        assert_ok(&arriving.exchange(get("/")).await, "ok");
        assert!(oldest.closed().await, "the parked connection was closed");
        assert_ok(&newer.exchange(get("/")).await, "ok");
    })
    .await;
}

/// At shutdown a parked connection is given back to the engine: a request
/// already sent is served with `Connection: close`, an idle one is closed,
/// and shutdown does not wait for the connections' idle time.
#[tokio::test]
async fn shutdown_closes_parked_connections_and_serves_what_arrived() {
    bounded(async {
        let backend = ScriptedBackend::spawn(|_| ok("ok")).await;
        let lb = lb(&backend, "").await;
        let (mut busy, mut idle) = (lb.connect().await, lb.connect().await);
        assert_ok(&busy.exchange(get("/first")).await, "ok");
        assert_ok(&idle.exchange(get("/first")).await, "ok");
        tokio::time::sleep(PARKED).await;
        busy.send(get("/second")).await;
        let stopping = tokio::spawn(lb.lb.limpet.shutdown());
        let resp = busy.read().await;
        assert_ok(&resp, "ok");
        assert!(idle.closed().await, "an idle parked connection closes");
        tokio::time::timeout(Duration::from_secs(10), stopping)
            .await
            .expect("shutdown finished")
            .unwrap();
    })
    .await;
}

/// At the limit with every connection busy, a new client waits; once one of
/// them finishes its request and sits idle, it is closed to let the waiting
/// client in (README: "a new client is served by closing the keep-alive
/// connection idle longest"). Eviction was tried only as the client
/// arrived: it then waited for a connection to end, up to client_idle.
#[tokio::test]
async fn a_client_waiting_at_the_limit_gets_the_place_of_one_gone_idle() {
    bounded(async {
        let backend = ScriptedBackend::spawn(|r| {
            let mut steps = Vec::new();
            if r.target == "/slow" {
                steps.push(common::scripted::Step::Pause(Duration::from_millis(500)));
            }
            steps.extend(ok("ok"));
            steps
        })
        .await;
        let lb = lb(&backend, "[limits]\nmax_connections = 1").await;
        let mut busy = lb.connect().await;
        busy.send(get("/slow")).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Arrives while the only connection is busy; admitted once it idles.
        let started = std::time::Instant::now();
        let mut waiting = lb.connect().await;
        assert_ok(&busy.read().await, "ok");
        assert_ok(&waiting.exchange(get("/")).await, "ok");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "admitted after {:?}",
            started.elapsed()
        );
        assert!(busy.closed().await, "the idle one made room");
    })
    .await;
}
