//! A **fake** Consul agent that serves only what a lock client uses: the KV store, sessions
//! and transactions, for testing Consul lock clients (Baton's store, a client following the Go
//! API's `Lock`) without Consul, which cannot be installed here. It is not Consul: one node,
//! one datacenter (`dc1`), no raft, no catalog, no health checks, no ACL policies.
//!
//! What it does, each behaviour taken from Consul's source (`hashicorp/consul`) and cited where
//! it is written (`state`, `server`; `docs/decisions.md` D90–D93):
//!
//! * **KV** at `/v1/kv/KEY`: GET (one key, `?recurse`, `?raw`) with blocking queries (`index`,
//!   `wait`, jitter of up to wait/16, the `X-Consul-Index` header, never 0; a missing key
//!   reports the `kvs` table's index, tombstones included), PUT with `flags`, `cas`, `acquire`
//!   and `release`, DELETE with `cas` and `recurse`. A write that changes nothing keeps its
//!   `ModifyIndex`.
//! * **Sessions** at `/v1/session/{create,renew/ID,destroy/ID,info/ID,list}`: TTLs between
//!   10 s and 24 h, invalidated by the reaper after **twice** the TTL; `LockDelay` (15 s by
//!   default) and `Behavior` `release` or `delete`, applied to the keys a session holds when it
//!   is destroyed or expires; renew of a session that is gone is 404.
//! * **Transactions** at `/v1/txn`: the KV verbs `set`, `cas`, `lock`, `unlock`, `get`,
//!   `check-index`, `check-session`, `check-not-exists`, `delete`, `delete-cas`, and the
//!   session verb `delete`; all at one index, all or nothing, 409 with `Errors` on failure.
//! * **ACL**: with `--token`, a request without that token (`X-Consul-Token`,
//!   `Authorization: Bearer` or `?token=`) is 403.
//! * `--state FILE`: KV pairs, sessions and the index survive a restart; session timers start
//!   again at their full 2 × TTL, as on a Consul leader election; lock-delays do not survive.
//! * **Fake-only:** a count of requests per client (the token it presents) and verb
//!   (`kv-get`, `kv-block`, `kv-put`, `kv-delete`, `txn`, `session-create`, `session-renew`,
//!   `session-destroy`, `session-read`, `other`), served at `/debug/baton-fake/requests` and
//!   read in process by [`FakeConsul::requests`], for benchmarks.

pub mod client;
mod process;
mod server;
pub mod state;

pub use crate::fake_k8s::requests::{REQUESTS_PATH, Requests};
pub use process::{FakeConsulProcess, fake_consul_binary};
pub use server::DATACENTER;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::fake_k8s::requests::RequestCounter;

/// How the fake serves.
#[derive(Debug, Clone, Default)]
pub struct FakeConsulOptions {
    /// The ACL token every request must present; `None` lets everyone in.
    pub token: Option<String>,
    /// Where KV pairs, sessions and the index are kept across restarts.
    pub state_file: Option<PathBuf>,
}

/// Serve the fake agent on `listener` with `options`. The future runs until an I/O error.
///
/// # Errors
///
/// When the state file cannot be read.
pub fn run(
    listener: tokio::net::TcpListener,
    options: FakeConsulOptions,
) -> std::io::Result<impl Future<Output = std::io::Result<()>> + Send> {
    server::run_counted(listener, options, Arc::default())
}

/// A fake agent running inside this process, on its own thread and runtime, on `127.0.0.1`
/// and a free port. It stops when dropped.
#[derive(Debug)]
pub struct FakeConsul {
    addr: SocketAddr,
    token: Option<String>,
    requests: Arc<RequestCounter>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeConsul {
    /// Serve with `options` on `127.0.0.1:0`.
    ///
    /// # Panics
    ///
    /// When the port cannot be bound or the state file cannot be read.
    pub fn serve(options: FakeConsulOptions) -> FakeConsul {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the fake agent");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let addr = listener.local_addr().expect("the fake agent's address");
        let token = options.token.clone();
        let requests = Arc::new(RequestCounter::default());
        let counter = Arc::clone(&requests);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("baton-fake-consul".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("a runtime for the fake agent");
                runtime.block_on(async move {
                    let listener =
                        tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
                    let serving =
                        server::run_counted(listener, options, counter).unwrap_or_else(|e| {
                            panic!("the fake agent cannot read its state file: {e}")
                        });
                    let _ = ready_tx.send(());
                    tokio::select! {
                        result = serving => {
                            if let Err(e) = result {
                                panic!("the fake agent failed: {e}");
                            }
                        }
                        _ = rx => {}
                    }
                });
                runtime.shutdown_background();
            })
            .expect("spawn the fake agent's thread");
        let _ = ready_rx.recv();
        FakeConsul {
            addr,
            token,
            requests,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `consul://127.0.0.1:PORT`, with `?token=` when it requires one.
    pub fn store_url(&self) -> String {
        match &self.token {
            Some(token) => format!("consul://{}?token={token}", self.addr),
            None => format!("consul://{}", self.addr),
        }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The requests counted so far, per client and verb (fake-only).
    pub fn requests(&self) -> Requests {
        self.requests.snapshot()
    }
}

impl Drop for FakeConsul {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
