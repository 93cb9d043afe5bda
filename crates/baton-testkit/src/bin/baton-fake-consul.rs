//! `baton-fake-consul`: a fake Consul agent that serves only KV, sessions and transactions, in
//! plain HTTP, for pointing Consul lock clients at in tests. See `baton_testkit::fake_consul`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use baton_testkit::fake_consul::{FakeConsulOptions, run};
use clap::Parser;

/// A fake Consul agent: KV, sessions and transactions only.
#[derive(Debug, Parser)]
#[command(name = "baton-fake-consul", version)]
struct Args {
    /// The address to listen on, e.g. 127.0.0.1:8500 (port 0 picks a free one).
    #[arg(long)]
    listen: SocketAddr,
    /// Require this ACL token (X-Consul-Token, a bearer token or ?token=): others get 403.
    #[arg(long)]
    token: Option<String>,
    /// Keep KV pairs, sessions and the index in this file across restarts.
    #[arg(long)]
    state: Option<PathBuf>,
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen).await?;
        let addr = listener.local_addr()?;
        let options = FakeConsulOptions {
            token: args.token,
            state_file: args.state,
        };
        let serving = run(listener, options)?;
        println!("listening on http://{addr}");
        std::io::stdout().flush()?;
        serving.await
    })
}
