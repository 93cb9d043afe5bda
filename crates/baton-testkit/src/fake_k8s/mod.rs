//! A **fake** Kubernetes API server that serves only Leases (`coordination.k8s.io/v1`) and
//! enough discovery for `kubectl`, for testing Kubernetes Lease clients (Baton's store, the
//! Python `kubernetes` client, client-go, `kubectl`) without a cluster. It is not a Kubernetes
//! API server: no other resource, no admission, no RBAC, no protobuf, no TLS.
//!
//! What it does, each behaviour taken from the real API server's source and cited where it is
//! written:
//!
//! * Leases at `/apis/coordination.k8s.io/v1/namespaces/{ns}/leases[/{name}]` and the
//!   cluster-wide list `/apis/coordination.k8s.io/v1/leases`: get, create (POST), update (PUT,
//!   which needs a resourceVersion and creates a missing Lease), patch (merge, strategic merge,
//!   JSON patch, apply), delete (with preconditions), list (field and label selectors, `limit`
//!   and `continue`, `as=Table` for `kubectl get`) and watch.
//! * One global resourceVersion counter, bumped by every write; a write that changes nothing
//!   bumps nothing (etcd3's `GuaranteedUpdate` short-circuit).
//! * Errors as `metav1.Status` bodies with the real codes, reasons and wording (`status`).
//! * MicroTimes parsed strictly as Go's `RFC3339Micro` (`micro_time`).
//! * Watches: synthetic ADDED events from resourceVersion unset or `0`, a bounded history
//!   (`--history`), 410 Expired as an ERROR event for a resourceVersion the history no
//!   longer covers, bookmarks, `timeoutSeconds`.
//! * A bearer token (`--token`): a wrong one is 401, none is 403 for `system:anonymous`.
//! * `--state FILE`: objects and the counter survive a restart; the watch history does not.
//! * **Fake-only:** a count of requests per client and verb, served at
//!   `/debug/baton-fake/requests` and read in process by [`FakeK8s::requests`] (`requests`),
//!   for benchmarks. No real API server serves that path.
//!
//! Simplifications (see `docs/decisions.md`, D60–D64):
//!
//! * Every namespace exists. Namespaces are not validated beyond the URL.
//! * `managedFields` are neither kept nor returned; `generation` is never set (Lease's
//!   strategy does not set it either).
//! * Server-side apply (`application/apply-patch+yaml`) takes a JSON body, needs
//!   `fieldManager`, creates a missing Lease and otherwise acts as a merge patch: no field
//!   ownership, so no apply conflicts and no removal of fields a manager stopped sending.
//! * Strategic merge patch is a merge patch (a Lease has no list that merges by key).
//! * `deletecollection`, `dryRun`, `fieldValidation=Strict`, Tables in watches, and the
//!   streaming list (`sendInitialEvents`) are not served.
//! * A `continue` token resumes at the current state, not at the first page's snapshot.

mod lease;
pub mod micro_time;
mod process;
pub mod requests;
mod server;
pub mod status;
mod store;

pub use process::{FakeK8sProcess, fake_k8s_binary};
pub use requests::{REQUESTS_PATH, Requests};
pub use server::run;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use requests::RequestCounter;

/// How the fake serves.
#[derive(Debug, Clone)]
pub struct FakeK8sOptions {
    /// The bearer token every request must carry; `None` lets everyone in.
    pub token: Option<String>,
    /// Where objects and the resourceVersion counter are kept across restarts.
    pub state_file: Option<PathBuf>,
    /// How often a watch that asked for bookmarks gets one (the watch cache sends one about
    /// every minute).
    pub bookmark_interval: Duration,
    /// How many events the watch history keeps (the watch cache's capacity).
    pub history: usize,
}

impl Default for FakeK8sOptions {
    fn default() -> Self {
        FakeK8sOptions {
            token: None,
            state_file: None,
            bookmark_interval: Duration::from_secs(60),
            history: 1000,
        }
    }
}

/// A fake API server running inside this process, on its own thread and runtime, on
/// `127.0.0.1` and a free port. It stops when dropped.
#[derive(Debug)]
pub struct FakeK8s {
    addr: SocketAddr,
    token: Option<String>,
    requests: Arc<RequestCounter>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeK8s {
    /// Serve with `options` on `127.0.0.1:0`.
    ///
    /// # Panics
    ///
    /// When the port cannot be bound or the state file cannot be read.
    pub fn serve(options: FakeK8sOptions) -> FakeK8s {
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind the fake API server");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let addr = listener
            .local_addr()
            .expect("the fake API server's address");
        let token = options.token.clone();
        let requests = Arc::new(RequestCounter::default());
        let counter = Arc::clone(&requests);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("baton-fake-k8s".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("a runtime for the fake API server");
                runtime.block_on(async move {
                    let listener =
                        tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
                    let serving =
                        server::run_counted(listener, options, counter).unwrap_or_else(|e| {
                            panic!("the fake API server cannot read its state file: {e}")
                        });
                    let _ = ready_tx.send(());
                    tokio::select! {
                        result = serving => {
                            if let Err(e) = result {
                                panic!("the fake API server failed: {e}");
                            }
                        }
                        _ = rx => {}
                    }
                });
                runtime.shutdown_background();
            })
            .expect("spawn the fake API server's thread");
        let _ = ready_rx.recv();
        FakeK8s {
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

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The requests counted so far, per client and verb (fake-only: see `requests`).
    pub fn requests(&self) -> Requests {
        self.requests.snapshot()
    }

    /// Write a kubeconfig for this server (with its token, namespace `default`) to `path`.
    pub fn write_kubeconfig(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, kubeconfig(&self.url(), self.token.as_deref()))
    }
}

impl Drop for FakeK8s {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A kubeconfig with one cluster at `server`, one user with `token` (if any) and one context
/// `baton-fake` in namespace `default`, current.
pub fn kubeconfig(server: &str, token: Option<&str>) -> String {
    let user = match token {
        Some(token) => format!("    token: {token:?}\n"),
        None => "    {}\n".to_owned(),
    };
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: baton-fake\n  cluster:\n    \
         server: {server}\ncontexts:\n- name: baton-fake\n  context:\n    cluster: baton-fake\n    \
         user: baton-fake\n    namespace: default\ncurrent-context: baton-fake\nusers:\n\
         - name: baton-fake\n  user:\n{user}"
    )
}
