//! Throwaway Redis deployments that fail over: a Sentinel deployment and a Redis Cluster with
//! replicas, for the chaos harness's `redis-sentinel` and `redis-cluster` stores and for tests.
//!
//! * **Sentinel** ([`Sentinel`]): one master and two replicas, and three Sentinels that
//!   monitor them with a quorum of two, `down-after-milliseconds` 500 and `failover-timeout`
//!   2.5 s (a Sentinel tries a failover of the same master again only after twice that). Every server is a `redis-server` of the run's own on a free loopback port, without
//!   persistence. Candidates get the three Sentinels in their URL
//!   (`redis+sentinel://S1,S2,S3/baton`) and reach the master directly.
//! * **Cluster** ([`Cluster`]): three masters and three replicas (one per master),
//!   `cluster-node-timeout` 1000 ms, no persistence. Each node announces `127.0.0.2` as its IP
//!   (what replicas and the cluster bus use) and `127.0.0.1` as its hostname, with
//!   `cluster-preferred-endpoint-type hostname` (what clients are told, in `CLUSTER SLOTS` and
//!   in redirections). A [`FaultProxy`] on `127.0.0.2:PORT` forwards to the node's
//!   `127.0.0.1:PORT`, and one on its bus port to its bus: so a node's replica reaches it
//!   through a proxy of its own, which can cut the replication link alone while the clients
//!   and the cluster bus go on.
//!
//! The faults, all aimed at the master of the election key (on a cluster, of its slot):
//!
//! * [`failover`](RedisHa::failover): a clean, operator-driven failover: `SENTINEL FAILOVER`,
//!   or `CLUSTER FAILOVER` on the master's replica (which waits until the replica has caught
//!   up before it takes over).
//! * [`kill_master`](RedisHa::kill_master): the master SIGKILLed; the deployment promotes a
//!   replica by itself. [`restart_killed`](RedisHa::restart_killed) starts the killed server
//!   again, empty, as a replica of the new master (as the configuration Sentinel or the
//!   cluster rewrote says).
//! * [`cut_replication`](RedisHa::cut_replication) then
//!   [`promote_lagging`](RedisHa::promote_lagging): a promotion that loses the last writes.
//!   The replicas' links to the master are cut (every byte withheld) while the candidates go on
//!   writing to the master; then, behind Sentinel, the master is SIGKILLed and the withheld
//!   bytes dropped, so that Sentinel promotes a replica without them; on a cluster, the lagging
//!   replica takes over with `CLUSTER FAILOVER TAKEOVER` (no agreement, no catching up) while
//!   the old master still runs, and the old master, demoted, discards what it had.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::proxy::{FaultProxy, ProxyMode};
use crate::servers::{free_port, scratch_dir};
use rustix::process::Signal;

/// The name Sentinel monitors the master under.
pub const SENTINEL_MASTER: &str = "baton";

/// How long a deployment may take to start or to fail over before it counts as broken.
const SETTLE_LIMIT: Duration = Duration::from_secs(20);

/// The loopback address a cluster node announces to its replicas and its peers.
const ANNOUNCE_IP: [u8; 4] = [127, 0, 0, 2];

/// One `redis-server` process (a data node or a Sentinel) on a port of its own.
#[derive(Debug)]
struct Node {
    port: u16,
    dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn new(log_dir: &Path, label: &str) -> Node {
        let port = free_port();
        Node {
            port,
            dir: scratch_dir("baton-chaos-redis-ha"),
            log: log_dir.join(format!("redis-{label}-{port}.log")),
            child: None,
        }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Start `redis-server` with these arguments (after the port, bind, no persistence, the
    /// directory and the log file), or a Sentinel on `sentinel.conf` of the node's directory.
    fn spawn(&mut self, args: &[String], sentinel: bool) -> Result<(), String> {
        let mut cmd = Command::new("redis-server");
        if sentinel {
            cmd.arg(self.dir.join("sentinel.conf")).arg("--sentinel");
        } else {
            cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(&self.dir)
                .arg("--logfile")
                .arg(&self.log)
                .args(args);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                rustix::process::set_parent_process_death_signal(Some(Signal::KILL))
                    .map_err(std::io::Error::from)
            });
        }
        let mut child = cmd.spawn().map_err(|e| {
            format!(
                "cannot start redis-server ({e}): install it with `apt-get install redis-server`"
            )
        })?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                if s.write_all(b"PING\r\n").is_ok() {
                    let mut line = String::new();
                    if BufReader::new(&s).read_line(&mut line).is_ok() && !line.is_empty() {
                        break;
                    }
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "redis-server on port {} exited with {status} (see {})",
                    self.port,
                    self.log.display()
                ));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "redis-server on port {} did not answer within 10 s",
                    self.port
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.child = Some(child);
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn running(&self) -> bool {
        self.child.is_some()
    }

    /// `redis-cli` against this node; its output, trimmed (empty if it could not run).
    fn cli(&self, args: &[&str]) -> String {
        if !self.running() {
            return String::new();
        }
        Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map(|out| String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
            .unwrap_or_default()
    }

    /// A field of `INFO section`.
    fn info(&self, section: &str, field: &str) -> Option<String> {
        let text = self.cli(&["INFO", section]);
        text.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .map(|v| v.trim().to_owned())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Poll `ready` every 20 ms until it holds, or fail with `what` after [`SETTLE_LIMIT`].
fn wait_until(what: &str, mut ready: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + SETTLE_LIMIT;
    while !ready() {
        if Instant::now() > deadline {
            return Err(format!("{what}: not within {}s", SETTLE_LIMIT.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Replication settings for every data node: full syncs start at once.
fn replication_args() -> Vec<String> {
    [
        "--repl-diskless-sync",
        "yes",
        "--repl-diskless-sync-delay",
        "0",
    ]
    .map(String::from)
    .to_vec()
}

/// A Sentinel deployment: see the [module docs](self).
#[derive(Debug)]
pub struct Sentinel {
    data: Vec<Node>,
    sentinels: Vec<Node>,
    /// Proxies that carry the replicas' links while [`cut_replication`](RedisHa::cut_replication)
    /// is in force.
    cut: Vec<FaultProxy>,
    /// The data node last SIGKILLed, to be started again as a replica.
    killed: Option<usize>,
}

impl Sentinel {
    fn start(log_dir: &Path) -> Result<Sentinel, String> {
        let mut data: Vec<Node> = (0..3)
            .map(|i| Node::new(log_dir, &format!("d{i}")))
            .collect();
        let master = data[0].port.to_string();
        data[0].spawn(&replication_args(), false)?;
        for node in &mut data[1..] {
            let mut args = replication_args();
            args.extend(["--replicaof".into(), "127.0.0.1".into(), master.clone()]);
            node.spawn(&args, false)?;
        }
        wait_until("the replicas' first sync", || {
            data[1..]
                .iter()
                .all(|n| n.info("replication", "master_link_status").as_deref() == Some("up"))
        })?;
        let mut sentinels: Vec<Node> = (0..3)
            .map(|i| Node::new(log_dir, &format!("s{i}")))
            .collect();
        for s in &mut sentinels {
            let conf = format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\nlogfile {log}\n\
                 sentinel monitor {name} 127.0.0.1 {master} 2\n\
                 sentinel down-after-milliseconds {name} 500\n\
                 sentinel failover-timeout {name} 2500\n\
                 sentinel parallel-syncs {name} 2\n",
                port = s.port,
                dir = s.dir.display(),
                log = s.log.display(),
                name = SENTINEL_MASTER,
            );
            std::fs::write(s.dir.join("sentinel.conf"), conf)
                .map_err(|e| format!("cannot write sentinel.conf: {e}"))?;
            s.spawn(&[], true)?;
        }
        let deployment = Sentinel {
            data,
            sentinels,
            cut: Vec::new(),
            killed: None,
        };
        // Every Sentinel must know both replicas and the two other Sentinels (from their hello
        // messages) before a failover can be agreed on.
        wait_until("the Sentinels' discovery of each other", || {
            deployment.sentinels.iter().all(|s| {
                let fields = s.cli(&["SENTINEL", "MASTER", SENTINEL_MASTER]);
                let lines: Vec<&str> = fields.lines().collect();
                let field = |name: &str| {
                    lines
                        .iter()
                        .position(|l| *l == name)
                        .and_then(|i| lines.get(i + 1))
                        .copied()
                };
                field("num-slaves") == Some("2") && field("num-other-sentinels") == Some("2")
            })
        })?;
        Ok(deployment)
    }

    fn url(&self) -> String {
        let hosts: Vec<String> = self.sentinels.iter().map(Node::addr).collect();
        format!("redis+sentinel://{}/{SENTINEL_MASTER}", hosts.join(","))
    }

    /// The master's port as a majority of the Sentinels name it.
    fn announced_master(&self) -> Option<u16> {
        let answers: Vec<u16> = self
            .sentinels
            .iter()
            .filter_map(|s| {
                let out = s.cli(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SENTINEL_MASTER]);
                out.lines().nth(1)?.trim().parse().ok()
            })
            .collect();
        answers
            .iter()
            .copied()
            .find(|p| answers.iter().filter(|q| *q == p).count() >= 2)
    }

    fn index_of(&self, port: u16) -> Option<usize> {
        self.data.iter().position(|n| n.port == port)
    }

    /// The data node that is the master now.
    fn master(&self) -> Result<usize, String> {
        let port = self
            .announced_master()
            .ok_or("the Sentinels do not agree on a master")?;
        let index = self
            .index_of(port)
            .ok_or_else(|| format!("the Sentinels name an unknown master on port {port}"))?;
        if self.data[index].info("replication", "role").as_deref() != Some("master") {
            return Err(format!(
                "the master the Sentinels name ({port}) is not one yet"
            ));
        }
        Ok(index)
    }

    /// Wait until a majority of the Sentinels name another master than `old`, and it says it
    /// is one. Returns its index.
    fn wait_for_new_master(&self, old: usize) -> Result<usize, String> {
        let mut new = None;
        wait_until("the Sentinels' failover", || {
            new = self
                .announced_master()
                .and_then(|p| self.index_of(p))
                .filter(|&i| {
                    i != old
                        && self.data[i].info("replication", "role").as_deref() == Some("master")
                });
            new.is_some()
        })?;
        Ok(new.expect("set when ready"))
    }
}

/// A cluster node, with the proxies that carry its announced address.
#[derive(Debug)]
struct ClusterNode {
    node: Node,
    bus: u16,
    id: String,
    /// `127.0.0.2:PORT` → the node: its replicas' links.
    data_proxy: FaultProxy,
    /// `127.0.0.2:BUS` → its cluster bus (never faulted).
    _bus_proxy: FaultProxy,
}

impl ClusterNode {
    fn args(&self) -> Vec<String> {
        let mut args = replication_args();
        for (flag, value) in [
            ("--cluster-enabled", "yes".to_owned()),
            ("--cluster-config-file", "nodes.conf".to_owned()),
            ("--cluster-node-timeout", "1000".to_owned()),
            ("--cluster-port", self.bus.to_string()),
            ("--cluster-announce-ip", "127.0.0.2".to_owned()),
            ("--cluster-announce-port", self.node.port.to_string()),
            ("--cluster-announce-bus-port", self.bus.to_string()),
            ("--cluster-announce-hostname", "127.0.0.1".to_owned()),
            ("--cluster-preferred-endpoint-type", "hostname".to_owned()),
        ] {
            args.push(flag.to_owned());
            args.push(value);
        }
        args
    }

    fn role(&self) -> Option<String> {
        self.node.info("replication", "role")
    }
}

/// A Redis Cluster deployment: see the [module docs](self).
#[derive(Debug)]
pub struct Cluster {
    nodes: Vec<ClusterNode>,
    killed: Option<usize>,
    /// The master whose replication link is cut, while it is.
    cut: Option<usize>,
}

impl Cluster {
    fn start(log_dir: &Path) -> Result<Cluster, String> {
        let mut nodes = Vec::new();
        for i in 0..6 {
            let node = Node::new(log_dir, &format!("n{i}"));
            let bus = free_port();
            let proxy = |port: u16| {
                FaultProxy::start_on((ANNOUNCE_IP, port).into(), ([127, 0, 0, 1], port).into())
                    .map_err(|e| format!("cannot start a proxy on 127.0.0.2:{port}: {e}"))
            };
            let mut node = ClusterNode {
                data_proxy: proxy(node.port)?,
                _bus_proxy: proxy(bus)?,
                node,
                bus,
                id: String::new(),
            };
            let args = node.args();
            node.node.spawn(&args, false)?;
            node.id = node.node.cli(&["CLUSTER", "MYID"]);
            if node.id.len() != 40 {
                return Err(format!("CLUSTER MYID answered {:?}", node.id));
            }
            nodes.push(node);
        }
        for n in &nodes[1..] {
            let out = nodes[0].node.cli(&[
                "CLUSTER",
                "MEET",
                "127.0.0.2",
                &n.node.port.to_string(),
                &n.bus.to_string(),
            ]);
            if out != "OK" {
                return Err(format!("CLUSTER MEET answered {out:?}"));
            }
        }
        for (i, (first, last)) in [(0, 5460), (5461, 10922), (10923, 16383)]
            .into_iter()
            .enumerate()
        {
            let out = nodes[i].node.cli(&[
                "CLUSTER",
                "ADDSLOTSRANGE",
                &first.to_string(),
                &last.to_string(),
            ]);
            if out != "OK" {
                return Err(format!("CLUSTER ADDSLOTSRANGE answered {out:?}"));
            }
        }
        wait_until("the cluster nodes' meeting", || {
            nodes.iter().all(|n| {
                n.node.info("cluster", "cluster_enabled").is_some()
                    && n.node
                        .cli(&["CLUSTER", "INFO"])
                        .contains("cluster_known_nodes:6")
            })
        })?;
        for i in 3..6 {
            let master = nodes[i - 3].id.clone();
            wait_until("a replica's CLUSTER REPLICATE", || {
                nodes[i].node.cli(&["CLUSTER", "REPLICATE", &master]) == "OK"
            })?;
        }
        wait_until("cluster_state:ok and the replicas' first sync", || {
            nodes.iter().all(|n| {
                n.node
                    .cli(&["CLUSTER", "INFO"])
                    .contains("cluster_state:ok")
            }) && nodes[3..]
                .iter()
                .all(|n| n.node.info("replication", "master_link_status").as_deref() == Some("up"))
        })?;
        Ok(Cluster {
            nodes,
            killed: None,
            cut: None,
        })
    }

    fn url(&self) -> String {
        let seeds: Vec<String> = self.nodes.iter().map(|n| n.node.addr()).collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    fn index_of_id(&self, id: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == id)
    }

    /// The master that serves `key`'s slot, by `CLUSTER NODES` of a running node.
    fn master_of(&self, key: &str) -> Result<usize, String> {
        let asker = self
            .nodes
            .iter()
            .find(|n| n.node.running())
            .ok_or("no cluster node runs")?;
        let slot: u16 = asker
            .node
            .cli(&["CLUSTER", "KEYSLOT", key])
            .parse()
            .map_err(|_| "CLUSTER KEYSLOT did not answer a number".to_owned())?;
        let table = asker.node.cli(&["CLUSTER", "NODES"]);
        table
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .filter(|f| f.len() > 8 && f[2].contains("master") && !f[2].contains("fail"))
            .filter(|f| {
                f[8..].iter().any(|range| {
                    let (a, b) = range.split_once('-').unwrap_or((range, range));
                    matches!((a.parse::<u16>(), b.parse::<u16>()),
                        (Ok(a), Ok(b)) if (a..=b).contains(&slot))
                })
            })
            .find_map(|f| self.index_of_id(f[0]))
            .ok_or_else(|| format!("no master serves slot {slot}:\n{table}"))
    }

    /// A running replica of `master`, by `CLUSTER NODES` of the master.
    fn replica_of(&self, master: usize) -> Result<usize, String> {
        let table = self.nodes[master].node.cli(&["CLUSTER", "NODES"]);
        table
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .filter(|f| f.len() >= 8 && f[2].contains("slave") && !f[2].contains("fail"))
            .filter(|f| f[3] == self.nodes[master].id)
            .filter_map(|f| self.index_of_id(f[0]))
            .find(|&r| self.nodes[r].node.running())
            .ok_or_else(|| {
                format!(
                    "the master {} has no running replica",
                    self.nodes[master].node.port
                )
            })
    }

    fn master_and_replica(&self, key: &str) -> Result<(usize, usize), String> {
        let master = self.master_of(key)?;
        Ok((master, self.replica_of(master)?))
    }

    /// Wait until `new` says it is a master and the cluster agrees that it serves `key`'s
    /// slot.
    fn wait_for_master(&self, key: &str, new: usize) -> Result<(), String> {
        wait_until("the cluster's failover", || {
            self.nodes[new].role().as_deref() == Some("master")
                && self.master_of(key).is_ok_and(|m| m == new)
        })
    }
}

/// A deployment that fails over: Sentinel or Cluster.
#[derive(Debug)]
pub enum RedisHa {
    /// See [`Sentinel`].
    Sentinel(Sentinel),
    /// See [`Cluster`].
    Cluster(Cluster),
}

impl RedisHa {
    /// Start a Sentinel deployment; the servers' logs go to `log_dir`. Must be called within a
    /// tokio runtime (for [`cut_replication`](Self::cut_replication)'s proxies, later too).
    pub fn start_sentinel(log_dir: &Path) -> Result<RedisHa, String> {
        Sentinel::start(log_dir).map(RedisHa::Sentinel)
    }

    /// Start a Redis Cluster; the servers' logs go to `log_dir`. Must be called within a tokio
    /// runtime (its proxies run on it).
    pub fn start_cluster(log_dir: &Path) -> Result<RedisHa, String> {
        Cluster::start(log_dir).map(RedisHa::Cluster)
    }

    /// The store URL the candidates use.
    pub fn url(&self) -> String {
        match self {
            RedisHa::Sentinel(s) => s.url(),
            RedisHa::Cluster(c) => c.url(),
        }
    }

    /// A clean failover of `key`'s master; returns a description once the new master serves.
    pub fn failover(&mut self, key: &str) -> Result<String, String> {
        match self {
            RedisHa::Sentinel(s) => {
                let old = s.master()?;
                let out = s.sentinels[0].cli(&["SENTINEL", "FAILOVER", SENTINEL_MASTER]);
                if out != "OK" {
                    return Err(format!("SENTINEL FAILOVER answered {out:?}"));
                }
                let new = s.wait_for_new_master(old)?;
                Ok(format!(
                    "SENTINEL FAILOVER from {} to {}",
                    s.data[old].port, s.data[new].port
                ))
            }
            RedisHa::Cluster(c) => {
                let (old, replica) = c.master_and_replica(key)?;
                let out = c.nodes[replica].node.cli(&["CLUSTER", "FAILOVER"]);
                if out != "OK" {
                    return Err(format!("CLUSTER FAILOVER answered {out:?}"));
                }
                c.wait_for_master(key, replica)?;
                Ok(format!(
                    "CLUSTER FAILOVER from {} to {}",
                    c.nodes[old].node.port, c.nodes[replica].node.port
                ))
            }
        }
    }

    /// SIGKILL `key`'s master; returns when it was killed, and (once a replica has been
    /// promoted) a description.
    pub fn kill_master(&mut self, key: &str) -> Result<(Duration, String), String> {
        match self {
            RedisHa::Sentinel(s) => {
                let old = s.master()?;
                s.data[old].kill();
                let at = baton::boot_time();
                s.killed = Some(old);
                let new = s.wait_for_new_master(old)?;
                Ok((
                    at,
                    format!(
                        "SIGKILL of the master {}; Sentinel promoted {}",
                        s.data[old].port, s.data[new].port
                    ),
                ))
            }
            RedisHa::Cluster(c) => {
                let (old, replica) = c.master_and_replica(key)?;
                c.nodes[old].node.kill();
                let at = baton::boot_time();
                c.killed = Some(old);
                c.wait_for_master(key, replica)?;
                Ok((
                    at,
                    format!(
                        "SIGKILL of the master {}; the cluster promoted {}",
                        c.nodes[old].node.port, c.nodes[replica].node.port
                    ),
                ))
            }
        }
    }

    /// Start the server [`kill_master`](Self::kill_master) or
    /// [`promote_lagging`](Self::promote_lagging) killed, empty, as a replica of the master now.
    pub fn restart_killed(&mut self) -> Result<(), String> {
        match self {
            RedisHa::Sentinel(s) => {
                let Some(old) = s.killed.take() else {
                    return Ok(());
                };
                let master = s.master()?;
                let mut args = replication_args();
                args.extend([
                    "--replicaof".into(),
                    "127.0.0.1".into(),
                    s.data[master].port.to_string(),
                ]);
                s.data[old].spawn(&args, false)
            }
            RedisHa::Cluster(c) => {
                let Some(old) = c.killed.take() else {
                    return Ok(());
                };
                // Its nodes.conf is kept: it comes back as the same node, finds a newer
                // epoch for its slots, and becomes a replica of the node that took them.
                let args = c.nodes[old].args();
                c.nodes[old].node.spawn(&args, false)
            }
        }
    }

    /// Cut the replication links of `key`'s master: from now on its replicas receive nothing
    /// (the bytes are withheld), while clients go on writing to it. Behind Sentinel, each
    /// replica is first pointed at the master through a proxy of its own (`REPLICAOF`), and
    /// this waits until it has caught up.
    pub fn cut_replication(&mut self, key: &str) -> Result<String, String> {
        match self {
            RedisHa::Sentinel(s) => {
                let master = s.master()?;
                let upstream: SocketAddr = ([127, 0, 0, 1], s.data[master].port).into();
                let mut cut = Vec::new();
                for (i, node) in s.data.iter().enumerate() {
                    if i == master || !node.running() {
                        continue;
                    }
                    let proxy = FaultProxy::start(upstream)
                        .map_err(|e| format!("cannot start a replication proxy: {e}"))?;
                    let out =
                        node.cli(&["REPLICAOF", "127.0.0.1", &proxy.addr().port().to_string()]);
                    if !out.starts_with("OK") {
                        return Err(format!("REPLICAOF answered {out:?}"));
                    }
                    cut.push((i, proxy));
                }
                for (i, _) in &cut {
                    let node = &s.data[*i];
                    wait_until("a replica's sync through its proxy", || {
                        node.info("replication", "master_link_status").as_deref() == Some("up")
                    })?;
                }
                for (_, proxy) in &cut {
                    proxy.set_mode(ProxyMode::Blackhole);
                }
                let ports: Vec<String> = cut
                    .iter()
                    .map(|(i, _)| s.data[*i].port.to_string())
                    .collect();
                s.cut = cut.into_iter().map(|(_, p)| p).collect();
                Ok(format!(
                    "replication from the master {} to {} cut",
                    s.data[master].port,
                    ports.join(", ")
                ))
            }
            RedisHa::Cluster(c) => {
                let (master, replica) = c.master_and_replica(key)?;
                c.nodes[master].data_proxy.set_mode(ProxyMode::Blackhole);
                c.cut = Some(master);
                Ok(format!(
                    "replication from the master {} to {} cut",
                    c.nodes[master].node.port, c.nodes[replica].node.port
                ))
            }
        }
    }

    /// After [`cut_replication`](Self::cut_replication): promote a replica that lacks what
    /// the master received since. Behind Sentinel the master is SIGKILLed and the withheld
    /// bytes dropped, and Sentinel promotes a replica; on a cluster the replica takes over
    /// with `CLUSTER FAILOVER TAKEOVER` while the old master runs, and the withheld bytes are
    /// dropped. Returns when the master was killed or the takeover asked for, and a
    /// description, once the new master serves.
    pub fn promote_lagging(&mut self, key: &str) -> Result<(Duration, String), String> {
        match self {
            RedisHa::Sentinel(s) => {
                let old = s.master()?;
                s.data[old].kill();
                let at = baton::boot_time();
                s.killed = Some(old);
                for proxy in s.cut.drain(..) {
                    // A reset drops what the proxy withheld.
                    proxy.set_mode(ProxyMode::Reset);
                }
                let new = s.wait_for_new_master(old)?;
                let offset = s.data[new]
                    .info("replication", "master_repl_offset")
                    .unwrap_or_default();
                Ok((
                    at,
                    format!(
                        "SIGKILL of the master {} with its replicas cut off; Sentinel promoted \
                         {} (offset {offset})",
                        s.data[old].port, s.data[new].port
                    ),
                ))
            }
            RedisHa::Cluster(c) => {
                let (old, replica) = c.master_and_replica(key)?;
                let lag = c.nodes[old]
                    .node
                    .info("replication", "master_repl_offset")
                    .zip(
                        c.nodes[replica]
                            .node
                            .info("replication", "slave_repl_offset"),
                    )
                    .and_then(|(m, r)| Some(m.parse::<i64>().ok()? - r.parse::<i64>().ok()?))
                    .unwrap_or(-1);
                let out = c.nodes[replica]
                    .node
                    .cli(&["CLUSTER", "FAILOVER", "TAKEOVER"]);
                let at = baton::boot_time();
                if out != "OK" {
                    return Err(format!("CLUSTER FAILOVER TAKEOVER answered {out:?}"));
                }
                c.wait_for_master(key, replica)?;
                if let Some(cut) = c.cut.take() {
                    c.nodes[cut].data_proxy.set_mode(ProxyMode::Reset);
                    std::thread::sleep(Duration::from_millis(20));
                    c.nodes[cut].data_proxy.set_mode(ProxyMode::Pass);
                }
                Ok((
                    at,
                    format!(
                        "CLUSTER FAILOVER TAKEOVER by {} of the master {}, {lag} bytes of \
                         replication behind",
                        c.nodes[replica].node.port, c.nodes[old].node.port
                    ),
                ))
            }
        }
    }
}
