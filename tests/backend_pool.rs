//! limpet's idle backend connections: how long they are kept. (Reuse itself is
//! pinned in `http1_wire.rs`: sequential requests share a backend connection,
//! and one the backend closed while idle costs a GET nothing.)

mod common;

use std::time::Duration;

use common::scripted::{ok, ScriptedBackend, Step};
use common::wire::*;

/// The idle backend sockets of limpet's engine are a LIFO stack whose top
/// is checked for age only when taken: after a burst, the sockets under the
/// one in steady use are never looked at again, and stay open (in CLOSE_WAIT
/// once the backend's keep-alive timeout closes them) for good, up to 512
/// per backend. (hyper's pooled senders close with their connection task.)
/// Past the pool's 15 s idle limit they must go.
#[tokio::test]
async fn expired_pooled_backend_sockets_are_not_kept_forever() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let backend = ScriptedBackend::spawn(|_| {
            let mut steps = vec![Step::Pause(Duration::from_millis(300))];
            steps.extend(ok("x"));
            steps
        })
        .await;
        // Plain only: the pool is on the backend side, the same for both listeners.
        let lb = lb_for(Side::Plain, &backend).await;
        let idle = || {
            let snap = lb.lb.limpet.state.load();
            snap.upstream("wire").unwrap().backends[0]
                .state
                .pool
                .idle_count()
        };
        // A burst: ten requests at once leave ten backend sockets idle.
        let mut burst = tokio::task::JoinSet::new();
        for _ in 0..10 {
            let addr = lb.addr();
            burst.spawn(async move {
                let mut wire = Wire::connect(addr).await;
                assert_eq!(wire.exchange(get("/")).await.text(), "x");
            });
        }
        while let Some(done) = burst.join_next().await {
            done.unwrap();
        }
        assert_eq!(idle(), 10);
        // Then one request at a time for longer than the idle limit.
        let mut wire = lb.connect().await;
        let until = tokio::time::Instant::now() + Duration::from_secs(17);
        while tokio::time::Instant::now() < until {
            assert_eq!(wire.exchange(get("/")).await.text(), "x");
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
        assert!(
            idle() <= 2,
            "{} idle backend sockets kept past the 15 s idle limit",
            idle()
        );
    })
    .await
    .expect("test timed out");
}
