//! Throwaway etcd clusters for tests and the chaos harness: N real `etcd` members on free
//! loopback ports, each with a data directory of its own, whose peer traffic goes through
//! fault proxies so that one member can be cut off from the others while its clients still
//! reach it (a minority member, as a network partition leaves it).
//!
//! Each member listens for peers on a port of its own and *advertises* a [`FaultProxy`] in
//! front of it, so every connection another member opens to it goes through that proxy. A
//! proxy cannot tell by address who dialled it (every member dials from `127.0.0.1`), so it
//! asks the kernel: the client socket of each connection it accepts is found in
//! `/proc/net/tcp` and its owner among the members' processes (`/proc/PID/fd`). Each ordered
//! pair of members (dialler, listener) is a *link* with a mode of its own, and
//! [`partition`](EtcdCluster::partition) holds every link to and from one member
//! ([`ProxyMode::Blackhole`]: bytes are withheld both ways, none lost) until
//! [`heal`](EtcdCluster::heal). That cuts the member off both ways; blackholing only the
//! connections others open to it would not (etcd's Raft transport sends a member's messages
//! to a peer over connections that either of them dialled).
//!
//! The members run with `--pre-vote` (the default from etcd 3.5 on), so a member that was cut
//! off does not force an election when it comes back (it did not raise its term meanwhile),
//! and with etcd's default timing (100 ms heartbeats, a 1 s election timeout). Clients talk to
//! the members' client ports directly; the caller puts its own proxies in front of them (the
//! chaos harness gives each candidate one per member).
//!
//! A missing binary is a loud failure, never a skip, as for [`crate::etcd_server`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::proxy::{FaultProxy, ProxyMode, Router};
use crate::servers::{free_port, remove_stale_dirs, scratch_dir};

/// The scratch directories' prefix: `baton-etcd-cluster-<test process id>-<random>`.
const DIR_PREFIX: &str = "baton-etcd-cluster";

/// How long a cluster (or a restarted member) may take to be healthy.
const START_LIMIT: Duration = Duration::from_secs(30);

/// The process ids of the members, by index (`None` while a member is down).
type Pids = Arc<Mutex<Vec<Option<u32>>>>;

/// The modes of the peer links: `links[from][to]` is for the connections member `from` opened
/// to member `to`.
type Links = Arc<Vec<Vec<watch::Sender<ProxyMode>>>>;

/// A cluster of etcd members of this test's own, killed (and their data directories removed)
/// when dropped.
pub struct EtcdCluster {
    members: Vec<Member>,
    pids: Pids,
    links: Links,
    /// Runs the peer proxies, whatever runtime (if any) the caller has.
    runtime: Option<tokio::runtime::Runtime>,
    dir: PathBuf,
    token: String,
}

impl std::fmt::Debug for EtcdCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdCluster")
            .field("members", &self.members)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// One member.
#[derive(Debug)]
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    metrics_port: u16,
    /// What the member advertises as its peer URL, in front of `peer_port`.
    peer_proxy: FaultProxy,
    child: Option<Child>,
}

impl Member {
    fn peer_url(&self) -> String {
        format!("http://{}", self.peer_proxy.addr())
    }

    /// The body of a plain-HTTP `GET` on the metrics port.
    fn http_get(&self, path: &str) -> std::io::Result<String> {
        crate::etcd_server::metrics_get(self.metrics_port, path, Duration::from_secs(2))
    }

    /// Whether `/health` answers `"health":"true"` (the member has a leader).
    fn healthy(&self) -> bool {
        self.http_get("/health")
            .is_ok_and(|body| body.contains("\"health\":\"true\""))
    }

    /// A gauge of `/metrics`, e.g. `etcd_server_is_leader`.
    fn gauge(&self, name: &str) -> Option<f64> {
        let text = self.http_get("/metrics").ok()?;
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|value| value.trim().parse().ok())
    }
}

impl EtcdCluster {
    /// Start `size` members on free ports with fresh data directories, and wait until every
    /// one is healthy. Panics when it cannot.
    pub fn start(size: usize) -> EtcdCluster {
        EtcdCluster::try_start(size).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`start`](Self::start), but a cluster that cannot be started is an error, not a panic.
    pub fn try_start(size: usize) -> Result<EtcdCluster, String> {
        if size == 0 {
            return Err("an etcd cluster needs at least one member".into());
        }
        remove_stale_dirs(DIR_PREFIX);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("etcd-cluster-peers")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the peer proxies' runtime: {e}"))?;
        let pids: Pids = Arc::new(Mutex::new(vec![None; size]));
        let links: Links = Arc::new(
            (0..size)
                .map(|_| {
                    (0..size)
                        .map(|_| watch::channel(ProxyMode::Pass).0)
                        .collect()
                })
                .collect(),
        );
        let dir = scratch_dir(DIR_PREFIX);
        let mut members = Vec::new();
        {
            let _enter = runtime.enter();
            for index in 0..size {
                let peer_port = free_port();
                let upstream: SocketAddr = ([127, 0, 0, 1], peer_port).into();
                let router = peer_router(index, pids.clone(), links.clone());
                let peer_proxy = FaultProxy::start_routed(upstream, router)
                    .map_err(|e| format!("cannot start a peer proxy: {e}"))?;
                members.push(Member {
                    name: format!("m{index}"),
                    client_port: free_port(),
                    peer_port,
                    metrics_port: free_port(),
                    peer_proxy,
                    child: None,
                });
            }
        }
        let mut cluster = EtcdCluster {
            members,
            pids,
            links,
            runtime: Some(runtime),
            token: format!("baton-{:016x}", fastrand::u64(..)),
            dir,
        };
        for index in 0..size {
            cluster.spawn(index)?;
        }
        cluster.wait_healthy(None)?;
        Ok(cluster)
    }

    fn spawn(&mut self, index: usize) -> Result<(), String> {
        let initial: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect();
        let member = &self.members[index];
        let client = format!("http://127.0.0.1:{}", member.client_port);
        let mut cmd = Command::new("etcd");
        cmd.arg("--data-dir")
            .arg(self.dir.join(&member.name))
            .args(["--name", &member.name])
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args([
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{}", member.peer_port),
            ])
            .args(["--initial-advertise-peer-urls", &member.peer_url()])
            .args(["--initial-cluster", &initial.join(",")])
            .args(["--initial-cluster-token", &self.token])
            .args(["--initial-cluster-state", "new"])
            .args([
                "--listen-metrics-urls",
                &format!("http://127.0.0.1:{}", member.metrics_port),
            ])
            .arg("--pre-vote")
            .args(["--log-level", "info"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.dir.join(format!("{}.log", member.name)))
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
            );
        crate::servers::die_with_parent(&mut cmd);
        let child = cmd.spawn().map_err(|e| {
            format!(
                "cannot start etcd ({e}): install it with `apt-get install etcd-server etcd-client`, \
                 or run scripts/test, which installs it"
            )
        })?;
        lock(&self.pids)[index] = Some(child.id());
        self.members[index].child = Some(child);
        Ok(())
    }

    /// Wait until member `only` (or every running member) is healthy.
    fn wait_healthy(&mut self, only: Option<usize>) -> Result<(), String> {
        let deadline = Instant::now() + START_LIMIT;
        for index in 0..self.members.len() {
            if only.is_some_and(|i| i != index) || self.members[index].child.is_none() {
                continue;
            }
            while !self.members[index].healthy() {
                if let Some(child) = self.members[index].child.as_mut()
                    && let Ok(Some(status)) = child.try_wait()
                {
                    let log = std::fs::read_to_string(
                        self.dir.join(format!("{}.log", self.members[index].name)),
                    )
                    .unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(5).collect();
                    return Err(format!(
                        "etcd member {index} exited with {status}: {}",
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    ));
                }
                if Instant::now() >= deadline {
                    return Err(format!(
                        "etcd member {index} was not healthy within {START_LIMIT:?}"
                    ));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    /// How many members the cluster has.
    pub fn size(&self) -> usize {
        self.members.len()
    }

    /// Member `index`'s client address, `127.0.0.1:PORT`.
    pub fn client_addr(&self, index: usize) -> SocketAddr {
        ([127, 0, 0, 1], self.members[index].client_port).into()
    }

    /// `etcd://` and every member's client address, in order: a URL for Baton.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = (0..self.size())
            .map(|i| self.client_addr(i).to_string())
            .collect();
        format!("etcd://{}", hosts.join(","))
    }

    /// Member `index`'s process id, while it runs.
    pub fn pid(&self, index: usize) -> Option<u32> {
        self.members[index].child.as_ref().map(Child::id)
    }

    /// The member that is the Raft leader now (by its `etcd_server_is_leader` gauge), if any
    /// running member says it is.
    pub fn raft_leader(&self) -> Option<usize> {
        (0..self.size()).find(|&i| {
            self.members[i].child.is_some()
                && self.members[i].gauge("etcd_server_is_leader") == Some(1.0)
        })
    }

    /// Whether member `index` runs and knows a leader (its `etcd_server_has_leader` gauge).
    pub fn has_leader(&self, index: usize) -> bool {
        self.members[index].child.is_some()
            && self.members[index].gauge("etcd_server_has_leader") == Some(1.0)
    }

    /// Wait until some member is the Raft leader, at most `limit`; which one.
    pub fn wait_for_raft_leader(&self, limit: Duration) -> Option<usize> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(leader) = self.raft_leader() {
                return Some(leader);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Cut member `index` off from every other member, both ways: the connections between
    /// them hold their bytes (none lost) until [`heal`](Self::heal). Its clients still reach it.
    pub fn partition(&self, index: usize) {
        for (from, row) in self.links.iter().enumerate() {
            for (to, link) in row.iter().enumerate() {
                if from != to && (from == index || to == index) {
                    link.send_replace(ProxyMode::Blackhole);
                }
            }
        }
    }

    /// Reconnect every member with every other.
    pub fn heal(&self) {
        for row in self.links.iter() {
            for link in row {
                link.send_replace(ProxyMode::Pass);
            }
        }
    }

    /// SIGKILL member `index`. Its data directory stays, so [`restart`](Self::restart) brings it
    /// back with everything it had.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.members[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        lock(&self.pids)[index] = None;
    }

    /// Start member `index` again (killing it first if it runs) on its ports and data
    /// directory, and wait until it is healthy (it has rejoined and knows a leader).
    pub fn restart(&mut self, index: usize) -> Result<(), String> {
        self.kill(index);
        self.spawn(index)?;
        self.wait_healthy(Some(index))
    }

    /// What member `index` has logged so far (its standard error, at etcd's `info` level: Raft
    /// elections and lost peers included), for a failed test or chaos run to keep.
    pub fn log(&self, index: usize) -> String {
        std::fs::read_to_string(self.dir.join(format!("{}.log", self.members[index].name)))
            .unwrap_or_default()
    }

    /// An `etcdctl` command (API v3) aimed at every member, to add arguments to and run.
    pub fn etcdctl(&self) -> Command {
        let endpoints: Vec<String> = (0..self.size())
            .map(|i| self.client_addr(i).to_string())
            .collect();
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(endpoints.join(","));
        cmd
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for index in 0..self.members.len() {
            self.kill(index);
        }
        for member in &mut self.members {
            // Its tasks end with the runtime.
            member.peer_proxy.set_mode(ProxyMode::Reset);
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The router of member `to`'s peer proxy: a connection from member `from` follows the link
/// `links[from][to]`; one whose dialler is not found among the members follows the proxy's own
/// mode (pass).
fn peer_router(to: usize, pids: Pids, links: Links) -> Router {
    Arc::new(move |client: SocketAddr| {
        let current: Vec<Option<u32>> = lock(&pids).clone();
        // The socket is in the kernel's table once the connection is accepted; look twice in
        // case the table was read just before.
        for _ in 0..2 {
            if let Some(inode) = socket_inode(client)
                && let Some(from) = current
                    .iter()
                    .position(|pid| pid.is_some_and(|pid| owns_socket(pid, inode)))
            {
                return Some(links[from][to].subscribe());
            }
        }
        None
    })
}

/// The inode of the local TCP socket bound to `local` (a client's end of a connection), from
/// `/proc/net/tcp` (and `tcp6`).
fn socket_inode(local: SocketAddr) -> Option<u64> {
    let port = format!(":{:04X}", local.port());
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            let (Some(address), Some(inode)) = (fields.get(1), fields.get(9)) else {
                continue;
            };
            let loopback = address.starts_with("0100007F:")
                || address.starts_with("0000000000000000FFFF00000100007F:");
            if loopback && address.ends_with(&port) {
                return inode.parse().ok().filter(|&inode| inode != 0);
            }
        }
    }
    None
}

/// Whether process `pid` has the socket `inode` open.
fn owns_socket(pid: u32, inode: u64) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    let wanted = format!("socket:[{inode}]");
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|target| target.as_os_str() == wanted.as_str())
    })
}
