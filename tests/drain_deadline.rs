//! Issue 11 item 3: a drain with a deadline. Until the deadline the backend
//! keeps its pinned clients and takes no new ones; at the deadline its clients
//! fail over to its replica as if it were down (`x-limpet-failover-from`, a new
//! cookie) while requests in flight finish there; `/status` and
//! `limpet_backend_drain_deadline_seconds` show the deadline; a reload keeps it.

mod common;
mod ops;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use ops::*;

fn config(backends: &[&TestBackend]) -> String {
    let extra = "balance = \"round-robin\"\n\n[upstream.shop.health]\ninterval = \"500ms\"\n";
    let mut s = ring_config(backends, extra);
    s.push_str(ADMIN);
    s
}

/// What one client saw while it sent requests in a loop.
#[derive(Debug, Default)]
struct Seen {
    /// Backends that answered, in order, with the failover header and
    /// whether a new cookie came.
    answers: Vec<(String, Option<String>, bool)>,
    failures: Vec<String>,
}

/// Sends `GET /` in a loop (keep-alive, one cookie jar) until `stop`.
async fn load(mut client: Client, stop: Arc<AtomicBool>) -> Seen {
    let mut seen = Seen::default();
    while !stop.load(Ordering::SeqCst) {
        match client.try_request("GET", "/", Bytes::new()).await {
            Ok(r) if r.status == 200 => seen.answers.push((
                r.backend().to_string(),
                r.header("x-seen-failover-from").map(str::to_string),
                r.set_cookie("limpet").is_some(),
            )),
            Ok(r) => seen.failures.push(format!("{}: {}", r.status, r.body)),
            Err(e) => seen.failures.push(e),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    seen
}

#[tokio::test]
async fn clients_move_to_the_replica_at_the_deadline_without_a_failed_request() {
    let [a, b, c] = three_backends().await;
    let lb = start_from_file(&config(&[&a, &b, &c])).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut on_app1 = Vec::new();
    for _ in 0..4 {
        on_app1.push(tokio::spawn(load(
            lb.client_pinned_to("app1").await,
            stop.clone(),
        )));
    }
    let mut others = Vec::new();
    for backend in ["app2", "app3"] {
        others.push(tokio::spawn(load(
            lb.client_pinned_to(backend).await,
            stop.clone(),
        )));
    }

    let mut slow_client = lb.client_pinned_to("app1").await;
    let r = lb
        .admin
        .post("/upstreams/shop/backends/app1/drain?deadline=3s")
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let answer = r.json();
    assert_eq!(answer["state"], "draining");
    let deadline = answer["drain"]["deadline"].as_str().unwrap().to_string();
    let left = answer["drain"]["left_s"].as_u64().unwrap();
    assert!((1..=3).contains(&left), "{answer}");
    let summary = answer["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("app1: draining until ") && summary.ends_with(" active sessions"),
        "{summary}"
    );
    // A request in flight on app1 when the deadline passes finishes there.
    let slow = tokio::spawn(async move { slow_client.get("/slow?ms=4500").await });

    // app1 has its 5 sessions (4 under load, 1 slow), each counted once
    // (4 when two random session ids share a register: 1 chance in 400).
    let counted = eventually(Duration::from_secs(5), || async {
        let n = lb.admin.backend("shop", "app1").await["active_sessions"].clone();
        n == 5 || n == 4
    })
    .await;
    let before = lb.admin.backend("shop", "app1").await;
    assert!(counted, "{before}");

    // A reload keeps the drain and its deadline, and the session estimate.
    let reload = lb.admin.post("/reload").await;
    assert_eq!(reload.status, 200, "{}", reload.body);
    let entry = lb.admin.backend("shop", "app1").await;
    assert_eq!(entry["state"], "draining");
    assert_eq!(entry["drain"]["deadline"], deadline.as_str(), "{entry}");
    assert_eq!(
        entry["active_sessions"], before["active_sessions"],
        "{entry}"
    );
    let metrics = lb.admin.metrics().await;
    let gauge = metrics.value(
        "limpet_backend_drain_deadline_seconds",
        &[("upstream", "shop"), ("backend", "app1")],
    );
    assert!(gauge > 0.0 && gauge <= 3.0, "{gauge}");
    assert_eq!(
        metrics
            .samples(
                "limpet_backend_drain_deadline_seconds",
                &[("backend", "app2")]
            )
            .count(),
        0,
        "no gauge for a backend without a deadline"
    );

    // New clients never land on app1 meanwhile.
    for _ in 0..10 {
        assert_ne!(lb.client().get("/").await.backend(), "app1");
    }

    // After the deadline, app1's clients are on app2.
    let passed = eventually(Duration::from_secs(15), || async {
        lb.admin.backend("shop", "app1").await["drain"]["left_s"] == 0
    })
    .await;
    assert!(passed, "the deadline never passed");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);

    for task in on_app1 {
        let seen = task.await.unwrap();
        assert!(seen.failures.is_empty(), "{:?}", seen.failures);
        let moved = seen
            .answers
            .iter()
            .position(|(backend, _, _)| backend != "app1")
            .unwrap_or_else(|| panic!("never left app1: {:?}", seen.answers.len()));
        assert!(moved > 0, "left app1 before the deadline");
        let (backend, from, new_cookie) = &seen.answers[moved];
        assert_eq!(backend, "app2", "the replica takes app1's clients");
        assert_eq!(from.as_deref(), Some("app1"));
        assert!(new_cookie, "re-pinned to app2");
        for (backend, from, new_cookie) in &seen.answers[moved + 1..] {
            assert_eq!(backend, "app2", "stays on the replica");
            assert_eq!(from, &None);
            assert!(!new_cookie);
        }
    }
    for task in others {
        let seen = task.await.unwrap();
        assert!(seen.failures.is_empty(), "{:?}", seen.failures);
        assert!(seen.answers.iter().all(|(_, from, _)| from.is_none()));
    }
    let slow = slow.await.unwrap();
    assert_eq!(slow.status, 200);
    assert_eq!(
        slow.backend(),
        "app1",
        "in flight at the deadline: finished"
    );
    // app1 stays up (draining) after the deadline; the gauge reads 0.
    assert_eq!(lb.admin.state("app1").await, "draining");
    let gauge = lb.admin.metrics().await.value(
        "limpet_backend_drain_deadline_seconds",
        &[("upstream", "shop"), ("backend", "app1")],
    );
    assert_eq!(gauge, 0.0);
    let summary = lb.admin.set("app1", "drain?deadline=1s").await["summary"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(summary.starts_with("app1: draining until "), "{summary}");
    // ready clears the drain and its deadline.
    let entry = lb.admin.set("app1", "ready").await;
    assert!(entry["drain"].is_null(), "{entry}");
}

/// `POST path` with `body` on the admin listener: status and body.
async fn post_body(admin: &AdminClient, path: &str, body: &str) -> (u16, String) {
    use http_body_util::{BodyExt, Full};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let req = http::Request::post(format!("{}{path}", admin.base))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("admin timed out")
        .expect("admin request");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn the_deadline_comes_in_the_body_or_the_query_and_bad_ones_are_refused() {
    let [a, b, c] = three_backends().await;
    let lb = start_from_file(&config(&[&a, &b, &c])).await;
    let drain = "/upstreams/shop/backends/app2/drain";

    let (status, body) = post_body(&lb.admin, drain, r#"{"deadline": "30m"}"#).await;
    assert_eq!(status, 200, "{body}");
    let entry: serde_json::Value = serde_json::from_str(&body).unwrap();
    let left = entry["drain"]["left_s"].as_u64().unwrap();
    assert!((1790..=1800).contains(&left), "{entry}");
    assert!(
        entry["summary"]
            .as_str()
            .unwrap()
            .contains("(30m left), ~0 active sessions"),
        "{entry}"
    );

    // A drain without a deadline replaces the running one.
    let entry = lb.admin.set("app2", "drain").await;
    assert_eq!(entry["state"], "draining");
    assert!(entry["drain"].is_null(), "{entry}");

    for (path, body, why) in [
        (format!("{drain}?deadline=soon"), "", "is not a duration"),
        (format!("{drain}?deadline=0s"), "", "longer than 0s"),
        // Past the year 9999 it was taken, and /status panicked at the date.
        (format!("{drain}?deadline=10000y"), "", "longer than a year"),
        (
            drain.to_string(),
            r#"{"deadline": "999999999999h"}"#,
            "longer than a year",
        ),
        (drain.to_string(), r#"{"deadline": 30}"#, "the body is not"),
        (
            drain.to_string(),
            r#"{"dead_line": "30m"}"#,
            "the body is not",
        ),
        (drain.to_string(), "30m", "the body is not"),
        (
            format!("{drain}?deadline=1m"),
            r#"{"deadline": "2m"}"#,
            "give the deadline once",
        ),
        (
            "/upstreams/shop/backends/app2/maintenance?deadline=1m".to_string(),
            "",
            "only to drain",
        ),
    ] {
        let (status, answer) = post_body(&lb.admin, &path, body).await;
        assert_eq!(status, 400, "{path} {body}: {answer}");
        assert!(answer.contains(why), "{path} {body}: {answer}");
    }
    // Refused: the drain without a deadline is still what runs, and the
    // status page still answers.
    lb.admin.status().await;
    let entry = lb.admin.backend("shop", "app2").await;
    assert_eq!(entry["operator"], "draining");
    assert!(entry["drain"].is_null(), "{entry}");
    let (status, _) = post_body(
        &lb.admin,
        "/upstreams/shop/backends/nope/drain?deadline=1m",
        "",
    )
    .await;
    assert_eq!(status, 404);
}
