//! `baton-fake-k8s`: a fake Kubernetes API server that serves only Leases and discovery, in
//! plain HTTP, for pointing Kubernetes clients at in tests. See `baton_testkit::fake_k8s`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use baton_testkit::fake_k8s::{FakeK8sOptions, run};
use clap::Parser;

/// A fake Kubernetes API server: Leases (coordination.k8s.io/v1) and discovery only.
#[derive(Debug, Parser)]
#[command(name = "baton-fake-k8s", version)]
struct Args {
    /// The address to listen on, e.g. 127.0.0.1:8080 (port 0 picks a free one).
    #[arg(long)]
    listen: SocketAddr,
    /// Require this bearer token: a wrong one is 401, none is 403.
    #[arg(long)]
    token: Option<String>,
    /// Keep objects and the resourceVersion counter in this file across restarts.
    #[arg(long)]
    state: Option<PathBuf>,
    /// How often watches that allow bookmarks get one (e.g. 60s, 100ms).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    bookmark_interval: Duration,
    /// How many events the watch history keeps; older resourceVersions get 410.
    #[arg(long, default_value_t = 1000)]
    history: usize,
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
        let options = FakeK8sOptions {
            token: args.token,
            state_file: args.state,
            bookmark_interval: args.bookmark_interval,
            history: args.history,
        };
        let serving = run(listener, options)?;
        println!("listening on http://{addr}");
        std::io::stdout().flush()?;
        serving.await
    })
}
