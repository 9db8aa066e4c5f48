//! `cargo run --release --example demo`: a login that survives its server's death.
//!
//! Starts three demo app servers that replicate their sessions (app1 -> app2 ->
//! app3 -> app1) and limpet in front of them (config/demo.toml), narrates a
//! scripted walkthrough, then keeps serving the demo shop until Ctrl-C.
//!
//! `--walkthrough-only`: exit after the narration, 0 only if the cart survived.
//! `RUST_LOG=info` shows limpet's logs (access log included) on stderr.
//!
//! The demo lives outside the library so that limpet's public API is only what an
//! embedder sees: `app.rs` (the replicating app servers), `control.rs` (the
//! page's kill and revive controls, which limpet routes `/_demo/` to),
//! `client.rs` (a small HTTP client with a cookie jar) and `walkthrough.rs` (the
//! scripted story). `tests/demo.rs` compiles the same files into the test with
//! `#[path]`.

mod app;
mod client;
mod control;
mod walkthrough;

use std::process::ExitCode;

use walkthrough::Ports;

const USERS: usize = 20;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    if limpet::access_log::filter_enables() {
        // The first and only configuration: it cannot fail.
        let _ = limpet::access_log::init(limpet::access_log::Format::Text, std::io::stderr());
    }
    let walkthrough_only = std::env::args().skip(1).any(|a| a == "--walkthrough-only");
    let ports = if walkthrough_only {
        Ports::Ephemeral
    } else {
        Ports::FromConfig
    };
    let mut out = std::io::stdout();
    let (demo, survived) = match walkthrough::run(ports, USERS, &mut out).await {
        Ok(done) => done,
        Err(e) => {
            eprintln!("demo failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = if survived {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    };
    if walkthrough_only {
        demo.shutdown().await;
        return code;
    }

    println!("\nThe demo keeps serving; try it in a browser (Ctrl-C to stop):");
    println!("  shop (through limpet)  {}/", demo.url());
    if let Some(admin) = demo.admin_url() {
        println!("  limpet's dashboard     {admin}/");
        println!("  backend status         {admin}/status");
        println!("  metrics                {admin}/metrics");
    }
    for s in demo.cluster.servers() {
        println!("  {} directly          http://{}/", s.name, s.addr);
    }
    println!("Log in, add to your cart, then kill the server that answered.");
    if tokio::signal::ctrl_c().await.is_err() {
        eprintln!("cannot listen for Ctrl-C; stopping");
    }
    demo.shutdown().await;
    code
}
