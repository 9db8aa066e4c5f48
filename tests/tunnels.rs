//! Issue 11 item 4: WebSocket (upgraded) tunnels count while open, in
//! `limpet_backend_tunnels` and `/status` `tunnels`, and as requests in flight,
//! so that least-requests sends new clients away from a backend holding open
//! WebSockets.

mod common;
mod ops;

use std::time::Duration;

use common::ws::*;
use common::*;
use futures_util::StreamExt;
use ops::*;

#[tokio::test]
async fn open_websockets_count_as_tunnels_and_in_flight_for_least_requests() {
    let (b1, b2) = (
        WsBackend::spawn("app1").await,
        WsBackend::spawn("app2").await,
    );
    let (a1, a2) = (b1.addr, b2.addr);
    let toml = format!(
        "[listen]\nhttp = [\"127.0.0.1:0\"]\n\n[upstream.shop]\nbalance = \"least-requests\"\n\
         [upstream.shop.cookie]\nsecret = \"test-secret\"\n\
         [[upstream.shop.backend]]\nname = \"app1\"\naddr = \"{a1}\"\nreplica = \"app2\"\n\
         [[upstream.shop.backend]]\nname = \"app2\"\naddr = \"{a2}\"\nreplica = \"app1\"\n{ADMIN}"
    );
    let lb = TestLb::start(&toml).await;
    let admin = AdminClient::new(lb.limpet.admin_addr.unwrap());
    let mut pinned = None;
    for _ in 0..20 {
        let mut client = lb.client();
        if client.get("/").await.backend() == "app1" {
            pinned = client.cookie;
            break;
        }
    }
    let cookie = format!("limpet={}", pinned.expect("a client pinned to app1"));

    let mut sockets = Vec::new();
    for i in 0..3 {
        let mut ws = ws_connect(lb.addr, &cookie)
            .await
            .expect("WebSocket handshake");
        assert_eq!(
            ws_roundtrip(&mut ws, &format!("hi {i}"))
                .await
                .expect("an echo"),
            format!("app1: hi {i}")
        );
        sockets.push(ws);
    }
    let entry = admin.backend("shop", "app1").await;
    assert_eq!(entry["tunnels"], 3, "{entry}");
    assert_eq!(entry["in_flight"], 3, "{entry}");
    let metrics = admin.metrics().await;
    let labels = |b: &'static str| [("upstream", "shop"), ("backend", b)];
    assert_eq!(
        metrics.value("limpet_backend_tunnels", &labels("app1")),
        3.0
    );
    assert_eq!(
        metrics.value("limpet_backend_tunnels", &labels("app2")),
        0.0
    );
    assert_eq!(
        metrics.value("limpet_backend_in_flight", &labels("app1")),
        3.0
    );

    // Open WebSockets are load: every new client goes to app2.
    for _ in 0..20 {
        assert_eq!(lb.client().get("/").await.backend(), "app2");
    }

    for mut ws in sockets {
        ws.close(None).await.unwrap();
        while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {}
    }
    let closed = eventually(Duration::from_secs(10), || async {
        let entry = admin.backend("shop", "app1").await;
        entry["tunnels"] == 0 && entry["in_flight"] == 0
    })
    .await;
    assert!(closed, "{}", admin.backend("shop", "app1").await);
    let mut on_app1 = 0;
    for _ in 0..20 {
        on_app1 += (lb.client().get("/").await.backend() == "app1") as usize;
    }
    assert!(
        on_app1 >= 5,
        "closed tunnels weigh nothing: {on_app1} of 20"
    );
}
