mod common;
use common::*;

#[tokio::test]
async fn a_cookie_client_sticks_to_one_backend() {
    let (a, b, c) = (
        TestBackend::spawn("app1").await,
        TestBackend::spawn("app2").await,
        TestBackend::spawn("app3").await,
    );
    let lb = TestLb::start(&ring_config(&[&a, &b, &c], "affinity = \"cookie\"")).await;
    let mut client = lb.client();
    let first = client.get("/").await;
    assert_eq!(first.status, 200);
    assert!(first.set_cookie("limpet").is_some());
    let pinned = first.backend().to_string();
    for _ in 0..100 {
        let r = client.get("/").await;
        assert_eq!(r.backend(), pinned);
        assert!(
            r.set_cookie("limpet").is_none(),
            "Set-Cookie only when the pin changes"
        );
    }
}
