//! SPEC section 1: one access log line per request, at `info` of target
//! `limpet::access`, with method, path, status, upstream, backend, affinity
//! outcome and duration; checked on the real binary's JSON logs.

mod common;
mod ops;

use std::time::Duration;

use common::*;
use ops::*;

#[tokio::test]
async fn every_request_gets_one_access_line_with_its_fields() {
    let app1 = TestBackend::spawn("app1").await;
    let toml = format!(
        "[listen]\nhttp = [\"127.0.0.1:0\"]\n\n[[route]]\npath_prefix = \"/shop\"\nupstream = \"shop\"\n\n\
         [upstream.shop.cookie]\nsecret = \"s\"\n\n[[upstream.shop.backend]]\nname = \"app1\"\naddr = \"{}\"\n",
        app1.addr
    );
    let process = Process::start(&toml).await;
    let mut client = Client::new(process.http);
    assert_eq!(client.get("/shop/cart?x=1").await.status, 200);
    assert_eq!(client.get("/shop/cart").await.status, 200);
    assert_eq!(client.get("/elsewhere").await.status, 404);

    let access = || -> Vec<serde_json::Value> {
        process
            .log_lines()
            .into_iter()
            .filter(|l| l["target"] == "limpet::access")
            .collect()
    };
    assert!(
        eventually(Duration::from_secs(5), || async { access().len() >= 3 }).await,
        "three access lines: {:#?}",
        process.log_lines()
    );
    let lines = access();
    assert_eq!(lines.len(), 3, "{lines:#?}");
    let fields: Vec<&serde_json::Value> = lines.iter().map(|l| &l["fields"]).collect();
    assert_eq!(lines[0]["level"], "INFO");
    assert_eq!(fields[0]["method"], "GET");
    assert_eq!(fields[0]["path"], "/shop/cart?x=1");
    assert_eq!(fields[0]["status"], 200);
    assert_eq!(fields[0]["upstream"], "shop");
    assert_eq!(fields[0]["backend"], "app1");
    assert_eq!(fields[0]["affinity"], "new");
    assert!(
        fields[0]["duration_us"].as_u64().is_some(),
        "{:?}",
        fields[0]
    );
    assert_eq!(fields[1]["affinity"], "pinned");
    assert_eq!(fields[2]["status"], 404);
    assert_eq!(fields[2]["upstream"], "");
    assert_eq!(fields[2]["affinity"], "-");
}
