//! Throwaway servers for tests: real `redis-server` processes on free loopback ports, which a
//! test can kill and restart; over TLS, as a three-master Redis Cluster, or as a Sentinel.
//!
//! A missing binary is a loud failure naming the fix, never a skip: `scripts/test` installs
//! every server the suite needs. Everything here needs only the Debian packages
//! `redis-server` (a Sentinel is `redis-server --sentinel`; the `redis-sentinel` package only
//! adds a service) and `redis-tools` (`redis-cli`).

use std::io::{BufRead, BufReader, Read};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 for a server a test is about to start, chosen at random
/// *below* the kernel's ephemeral range (`/proc/sys/net/ipv4/ip_local_port_range`).
///
/// The port is bound, then released, so the server's own bind is very likely to get it. A port
/// from the ephemeral range (what binding port 0 returns) is not: any outgoing connection on
/// the machine may take it as its source port in between (CI once saw etcd fail with "bind:
/// address already in use" on such a port), and a server restarted on the same port would race
/// every connection made meanwhile. Ports below the range are only ever taken by explicit
/// binds. A process never gets the same port twice.
pub fn free_port() -> u16 {
    free_port_with_offset(None)
}

/// A free port `p` (as [`free_port`]) such that `p + offset` is free too and also below the
/// ephemeral range: a Redis Cluster node listens on `p` and on its cluster bus, `p + 10000`.
fn free_port_with_offset(offset: Option<u16>) -> u16 {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let low = ephemeral_low().clamp(12_000, 65_535);
    let high = low - offset.unwrap_or(0).min(low - 11_000);
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    let free = |port: u16| {
        // Loopback, then (once that is released) the wildcard: a server may listen on either.
        let loopback = TcpListener::bind(("127.0.0.1", port)).is_ok();
        loopback && TcpListener::bind(("0.0.0.0", port)).is_ok()
    };
    for _ in 0..1_000 {
        let port = fastrand::u16(10_000..high);
        let ports = [Some(port), offset.map(|o| port + o)];
        if ports.iter().flatten().any(|p| given.contains(p)) {
            continue;
        }
        if ports.iter().flatten().all(|&p| free(p)) {
            given.extend(ports.iter().flatten());
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 between 10000 and {high} after 1000 tries")
}

/// The first port of the kernel's ephemeral range (32768 when it cannot be read).
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// A unique scratch directory under the system temp dir, removed by its owner.
pub fn scratch_dir(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "{prefix}-{}-{:016x}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).expect("create a scratch directory");
    dir
}

/// Remove the [`scratch_dir`]s made with `prefix` by test processes that are gone. A server
/// shared by every test of a process lives in a static, which is never dropped: the
/// parent-death signal kills the server, but its directory stays (an etcd's is some 120 MB, a
/// MariaDB's some 20 MB; a whole test run starts hundreds of processes) until a later start
/// sweeps it here.
pub(crate) fn remove_stale_dirs(prefix: &str) {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name
            .to_str()
            .and_then(|n| n.strip_prefix(prefix))
            .and_then(|n| n.strip_prefix('-'))
        else {
            continue;
        };
        let pid = rest
            .split('-')
            .next()
            .and_then(|p| p.parse::<i32>().ok())
            .and_then(rustix::process::Pid::from_raw);
        let gone = pid.is_some_and(|pid| {
            matches!(
                rustix::process::test_kill_process(pid),
                Err(rustix::io::Errno::SRCH)
            )
        });
        if gone {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A `redis-server` of this test's own, without persistence (a restart loses every key, like
/// the machine's default Redis), killed when dropped.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    mode: Mode,
    extra: Vec<String>,
    child: Option<Child>,
}

#[derive(Debug, Clone)]
enum Mode {
    /// Plain TCP on `port`.
    Plain,
    /// TLS only, on `port` (`--port 0 --tls-port PORT`).
    Tls {
        files: TlsFiles,
        require_client_cert: bool,
    },
    /// `redis-server sentinel.conf --sentinel`, the configuration in the scratch directory,
    /// monitoring a master called `name`.
    Sentinel { name: String },
}

/// The PEM files of a TLS server: its certificate and key, and the CA it trusts for client
/// certificates (and that `redis-cli` trusts for the server's).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The server's certificate chain.
    pub cert: PathBuf,
    /// The server's private key.
    pub key: PathBuf,
    /// The CA certificate.
    pub ca: PathBuf,
}

impl RedisServer {
    /// Start a server on a free port.
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// Start a server on a free port with extra `redis-server` arguments
    /// (e.g. `["--requirepass", "secret"]`).
    pub fn start_with(extra: &[&str]) -> RedisServer {
        Self::start_on(free_port(), extra)
    }

    /// Start a server on `port` (for tests that first need the port to be closed).
    pub fn start_on(port: u16, extra: &[&str]) -> RedisServer {
        Self::launch(port, Mode::Plain, "baton-redis", extra)
    }

    /// Start a TLS-only server on a free port (`--port 0 --tls-port PORT`) with these
    /// certificate files. With `require_client_cert`, clients must present a certificate signed
    /// by `files.ca` (`--tls-auth-clients yes`). [`url`](Self::url) is then
    /// `rediss://localhost:PORT`, so the server's certificate must name `localhost`.
    pub fn start_tls(files: &TlsFiles, require_client_cert: bool) -> RedisServer {
        let mode = Mode::Tls {
            files: files.clone(),
            require_client_cert,
        };
        Self::launch(free_port(), mode, "baton-redis-tls", &[])
    }

    /// Start a Sentinel on a free port that monitors `master` under the name `name`, with a
    /// quorum of one and a one-second down-after period. [`url`](Self::url) is then
    /// `redis+sentinel://127.0.0.1:PORT/NAME`.
    pub fn start_sentinel(master: &RedisServer, name: &str) -> RedisServer {
        let port = free_port();
        let dir = scratch_dir("baton-sentinel");
        let conf = format!(
            "port {port}\nbind 127.0.0.1\ndir {dir}\n\
             sentinel monitor {name} 127.0.0.1 {master} 1\n\
             sentinel down-after-milliseconds {name} 1000\n\
             sentinel failover-timeout {name} 5000\n",
            dir = dir.display(),
            master = master.port,
        );
        std::fs::write(dir.join("sentinel.conf"), conf).expect("write sentinel.conf");
        let mut server = RedisServer {
            port,
            dir,
            mode: Mode::Sentinel {
                name: name.to_owned(),
            },
            extra: Vec::new(),
            child: None,
        };
        server.spawn();
        // Sentinel knows its master from the configuration at once; wait until it answers.
        let deadline = Instant::now() + Duration::from_secs(10);
        while server
            .cli(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", name])
            .is_empty()
        {
            assert!(
                Instant::now() < deadline,
                "the Sentinel on port {port} does not know {name}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    fn launch(port: u16, mode: Mode, prefix: &str, extra: &[&str]) -> RedisServer {
        let mut server = RedisServer {
            port,
            dir: scratch_dir(prefix),
            mode,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        let port = self.port.to_string();
        match &self.mode {
            Mode::Sentinel { .. } => {
                cmd.arg(self.dir.join("sentinel.conf")).arg("--sentinel");
            }
            mode => {
                if let Mode::Tls {
                    files,
                    require_client_cert,
                } = mode
                {
                    cmd.args(["--port", "0", "--tls-port", &port])
                        .arg("--tls-cert-file")
                        .arg(&files.cert)
                        .arg("--tls-key-file")
                        .arg(&files.key)
                        .arg("--tls-ca-cert-file")
                        .arg(&files.ca)
                        .arg("--tls-auth-clients")
                        .arg(if *require_client_cert { "yes" } else { "no" });
                } else {
                    cmd.args(["--port", &port]);
                }
                // A TLS server is reached as `localhost`, which may resolve to ::1 too.
                let bind = match mode {
                    Mode::Tls { .. } => "127.0.0.1 -::1",
                    _ => "127.0.0.1",
                };
                cmd.args(["--bind", bind])
                    .args(["--save", "", "--appendonly", "no"])
                    .args(["--dir", &self.dir.to_string_lossy()])
                    .args(&self.extra);
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start redis-server ({e}): install it with `apt-get install redis-server`, \
                 or run scripts/test, which installs it"
            )
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
                use std::io::Write;
                // A TLS port cannot answer a plain PING: listening is enough, since the server
                // loads its certificates before it listens.
                if matches!(self.mode, Mode::Tls { .. }) {
                    break;
                }
                let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                // Any reply (+PONG, or -NOAUTH with a password) means the server is up.
                if s.write_all(b"PING\r\n").is_ok() {
                    let mut line = String::new();
                    if BufReader::new(&s).read_line(&mut line).is_ok() && !line.is_empty() {
                        break;
                    }
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                let mut out = String::new();
                if let Some(mut o) = child.stdout.take() {
                    let _ = o.read_to_string(&mut out);
                }
                panic!(
                    "redis-server on port {} exited with {status}: {out}",
                    self.port
                );
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer within 10 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        // Drain its output so a chatty server never blocks on a full pipe.
        for pipe in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            std::thread::spawn(move || std::io::copy(&mut { pipe }, &mut std::io::sink()));
        }
        self.child = Some(child);
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`; `rediss://localhost:PORT` for a TLS server;
    /// `redis+sentinel://127.0.0.1:PORT/NAME` for a Sentinel.
    pub fn url(&self) -> String {
        match &self.mode {
            Mode::Plain => format!("redis://127.0.0.1:{}", self.port),
            Mode::Tls { .. } => format!("rediss://localhost:{}", self.port),
            Mode::Sentinel { name } => format!("redis+sentinel://127.0.0.1:{}/{name}", self.port),
        }
    }

    /// Kill the server (SIGKILL): every key is lost, connections drop.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kill the server and start it again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Run a command with `redis-cli` against this server and return its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]);
        if let Mode::Tls { files, .. } = &self.mode {
            // redis-cli checks the certificate against the CA, and always presents one.
            cmd.args(["--tls", "--sni", "localhost", "--cacert"])
                .arg(&files.ca)
                .arg("--cert")
                .arg(&files.cert)
                .arg("--key")
                .arg(&files.key);
        }
        let out = cmd
            .args(args)
            .output()
            .expect("run redis-cli (apt-get install redis-tools)");
        String::from_utf8_lossy(&out.stdout).trim_end().to_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis Cluster of three masters (no replicas) on free loopback ports, each node without
/// persistence, all killed when dropped.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Start three `redis-server --cluster-enabled yes` nodes, join them with
    /// `redis-cli --cluster create` (which gives each a third of the slots) and wait until every
    /// node reports `cluster_state:ok`.
    pub fn start() -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                // The node's cluster bus listens on port + 10000.
                let port = free_port_with_offset(Some(10_000));
                let conf = format!("nodes-{port}.conf");
                RedisServer::launch(
                    port,
                    Mode::Plain,
                    "baton-redis-cluster",
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        &conf,
                        "--cluster-node-timeout",
                        "5000",
                    ],
                )
            })
            .collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create (apt-get install redis-tools)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = RedisCluster { nodes };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = cluster.nodes.iter().all(|n| {
                let info = n.cli(&["CLUSTER", "INFO"]);
                info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:3")
            });
            if ready {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the Redis Cluster on {addresses:?} did not reach cluster_state:ok within 20 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        cluster
    }

    /// `redis+cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3`.
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", nodes.join(","))
    }

    /// The nodes, each a master.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// Run a command with `redis-cli -c` (following redirections) and return its output.
    pub fn cli(&self, args: &[&str]) -> String {
        self.nodes[0].cli(&[&["-c"], args].concat())
    }

    /// The hash slot of `key`, by the cluster's own `CLUSTER KEYSLOT`.
    pub fn slot_of(&self, key: &str) -> u16 {
        let out = self.nodes[0].cli(&["CLUSTER", "KEYSLOT", key]);
        out.parse()
            .unwrap_or_else(|_| panic!("CLUSTER KEYSLOT {key:?} answered {out:?}"))
    }

    /// The port of the master that serves `key`, from `CLUSTER NODES`.
    pub fn master_of(&self, key: &str) -> u16 {
        let slot = self.slot_of(key);
        let nodes = self.nodes[0].cli(&["CLUSTER", "NODES"]);
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let serves = fields.iter().skip(8).any(|range| {
                let (start, end) = range.split_once('-').unwrap_or((range, range));
                match (start.parse::<u16>(), end.parse::<u16>()) {
                    (Ok(start), Ok(end)) => (start..=end).contains(&slot),
                    _ => false,
                }
            });
            if serves && fields.get(2).is_some_and(|flags| flags.contains("master")) {
                let address = fields[1].split('@').next().unwrap_or_default();
                if let Some(port) = address.rsplit(':').next().and_then(|p| p.parse().ok()) {
                    return port;
                }
            }
        }
        panic!("no master serves slot {slot} of {key:?}:\n{nodes}")
    }
}

/// One three-master cluster shared by every test of this process that asks for it, like
/// [`shared_redis`].
pub fn shared_redis_cluster() -> &'static RedisCluster {
    static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            tx.send(RedisCluster::start())
                .expect("hand over the cluster");
            loop {
                std::thread::park();
            }
        });
        rx.recv().expect("start the shared Redis Cluster")
    })
}

/// One server shared by every test of this process (each test uses keys of its own). It lives
/// as long as the process: the parent-death signal ends it when the test process exits.
pub fn shared_redis() -> &'static RedisServer {
    static SERVER: OnceLock<RedisServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        // Spawned from a thread that never ends, because the parent-death signal follows the
        // spawning *thread*, and test threads end.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            tx.send(RedisServer::start()).expect("hand over the server");
            loop {
                std::thread::park();
            }
        });
        rx.recv().expect("start the shared redis-server")
    })
}

/// Make the child die with this process, so no server outlives a crashed test run.
pub(crate) fn die_with_parent(cmd: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                rustix::process::set_parent_process_death_signal(Some(
                    rustix::process::Signal::KILL,
                ))
                .map_err(std::io::Error::from)
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cmd;
}
