//! Throwaway etcd servers for tests: a real single-member `etcd` on free loopback ports with a
//! temporary data directory, which a test can kill, restart (keeping its data), pause
//! (`SIGSTOP`) and resume, plus `etcdctl` against it. [`EtcdServer::start_tls`] serves clients
//! over TLS only, and [`EtcdServer::enable_auth`] turns on etcd's authentication.
//!
//! A missing binary is a loud failure naming the fix, never a skip: `scripts/test` installs
//! the Debian packages `etcd-server` (`etcd`) and `etcd-client` (`etcdctl`).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::servers::{TlsFiles, free_port, remove_stale_dirs, scratch_dir};

/// The scratch directories' prefix: `baton-etcd-<test process id>-<random>`.
const DIR_PREFIX: &str = "baton-etcd";

/// A single-member etcd cluster of this test's own, killed (and its data directory removed)
/// when dropped.
#[derive(Debug)]
pub struct EtcdServer {
    client_port: u16,
    peer_port: u16,
    /// Plain-HTTP `/health` (and `/metrics`), so a TLS server is checked without a client
    /// certificate dance.
    metrics_port: u16,
    dir: PathBuf,
    /// The server's certificate and key, and the CA `etcdctl` trusts, when clients speak TLS.
    tls: Option<TlsFiles>,
    /// `user:password` for `etcdctl`, once [`enable_auth`](Self::enable_auth) ran.
    ctl_user: Option<String>,
    /// `--auth-token-ttl` in seconds, once
    /// [`restart_with_auth_token_ttl`](Self::restart_with_auth_token_ttl) set it.
    auth_token_ttl: Option<u64>,
    child: Option<Child>,
}

impl EtcdServer {
    /// Start a server on free ports with a fresh data directory, and wait until it is healthy.
    pub fn start() -> EtcdServer {
        EtcdServer::try_start().unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`start`](Self::start), but a server that cannot be started is an error, not a panic
    /// (for the chaos harness, which reports it and goes on).
    pub fn try_start() -> Result<EtcdServer, String> {
        Self::launch(None)
    }

    /// Start a server that speaks TLS only to clients, with `files.cert` and `files.key` (the
    /// peer port stays plain: a single member has no peers). [`url`](Self::url) is then
    /// `etcds://127.0.0.1:PORT`, and [`etcdctl`](Self::etcdctl) trusts `files.ca`.
    pub fn start_tls(files: &TlsFiles) -> EtcdServer {
        Self::launch(Some(files.clone())).unwrap_or_else(|e| panic!("{e}"))
    }

    fn launch(tls: Option<TlsFiles>) -> Result<EtcdServer, String> {
        remove_stale_dirs(DIR_PREFIX);
        // A port taken between `free_port` and etcd's bind (another test's server) is retried
        // on fresh ports, with a fresh data directory; any other failure is reported.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut server = EtcdServer {
                client_port: free_port(),
                peer_port: free_port(),
                metrics_port: free_port(),
                dir: scratch_dir(DIR_PREFIX),
                tls: tls.clone(),
                ctl_user: None,
                auth_token_ttl: None,
                child: None,
            };
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(e) if attempt < 3 && e.contains("address already in use") => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// `http` or `https`, as the server's client URLs are written.
    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    fn spawn(&mut self) -> Result<(), String> {
        let client = format!("{}://127.0.0.1:{}", self.scheme(), self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let metrics = format!("http://127.0.0.1:{}", self.metrics_port);
        let mut cmd = Command::new("etcd");
        cmd.arg("--data-dir")
            .arg(self.dir.join("data"))
            .args(["--name", "default"])
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("default={peer}")])
            .args(["--listen-metrics-urls", &metrics])
            .args(["--log-level", "warn"]);
        if let Some(ttl) = self.auth_token_ttl {
            cmd.args(["--auth-token-ttl", &ttl.to_string()]);
        }
        if let Some(tls) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&tls.cert)
                .arg("--key-file")
                .arg(&tls.key);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        crate::servers::die_with_parent(&mut cmd);
        let mut child = cmd.spawn().map_err(|e| {
            format!(
                "cannot start etcd ({e}): install it with `apt-get install etcd-server etcd-client`, \
                 or run scripts/test, which installs it"
            )
        })?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.healthy() {
            if let Ok(Some(status)) = child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                return Err(format!(
                    "etcd on port {} exited with {status}: {err}",
                    self.client_port
                ));
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "etcd on port {} was not healthy within 20 s",
                    self.client_port
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(mut pipe) = child.stderr.take() {
            std::thread::spawn(move || std::io::copy(&mut pipe, &mut std::io::sink()));
        }
        self.child = Some(child);
        Ok(())
    }

    /// Whether `GET /health` on the metrics port answers `"health":"true"`.
    fn healthy(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.metrics_port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        reply.contains("\"health\":\"true\"")
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.client_port
    }

    /// `etcd://127.0.0.1:PORT` (`etcds://` over TLS), for Baton; without credentials or a CA
    /// option, which a test adds as it needs.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "etcds" } else { "etcd" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// The gRPC messages the server has received so far, per method (`LeaseKeepAlive`, `Txn`,
    /// `Range`, `Watch`, ...), from its `/metrics` (`grpc_server_msg_received_total`): a unary
    /// call is one message, and so is each keepalive or watch request on a stream. Methods
    /// with none are left out.
    ///
    /// # Panics
    ///
    /// When the metrics cannot be read.
    pub fn grpc_messages_received(&self) -> BTreeMap<String, u64> {
        let text = self
            .http_get("/metrics")
            .unwrap_or_else(|e| panic!("reading etcd's /metrics: {e}"));
        grpc_messages_from_metrics(&text)
    }

    /// How many watchers the server has open now, from its `/metrics`
    /// (`etcd_debugging_mvcc_watcher_total`): one per watch a client created and has not
    /// ended.
    ///
    /// # Panics
    ///
    /// When the metrics cannot be read.
    pub fn watchers(&self) -> u64 {
        let text = self
            .http_get("/metrics")
            .unwrap_or_else(|e| panic!("reading etcd's /metrics: {e}"));
        text.lines()
            .find_map(|line| line.strip_prefix("etcd_debugging_mvcc_watcher_total "))
            .and_then(|value| value.trim().parse::<f64>().ok())
            .map_or(0, |value| value as u64)
    }

    /// The body of a plain-HTTP `GET` on the metrics port.
    fn http_get(&self, path: &str) -> std::io::Result<String> {
        metrics_get(self.metrics_port, path, Duration::from_secs(5))
    }

    /// `127.0.0.1:PORT` (`https://127.0.0.1:PORT` over TLS), for `etcdctl --endpoints`.
    pub fn endpoint(&self) -> String {
        match self.tls {
            Some(_) => format!("https://127.0.0.1:{}", self.client_port),
            None => format!("127.0.0.1:{}", self.client_port),
        }
    }

    /// Turn on etcd's authentication: create the user `root` with `root_password` (etcd
    /// needs it before `auth enable`) and enable auth. From then on [`etcdctl`](Self::etcdctl)
    /// runs as root.
    pub fn enable_auth(&mut self, root_password: &str) {
        self.ctl(&["user", "add", &format!("root:{root_password}")]);
        self.ctl(&["auth", "enable"]);
        self.ctl_user = Some(format!("root:{root_password}"));
    }

    /// Create `user` with `password` and a role of its own that may read and write the keys
    /// under `prefix` (e.g. an election's `NAME/`), and nothing else. Needs
    /// [`enable_auth`](Self::enable_auth) first (or works on a server without auth, where the
    /// role is not checked).
    pub fn add_user_for_prefix(&self, user: &str, password: &str, prefix: &str) {
        let role = format!("{user}-role");
        self.ctl(&["role", "add", &role]);
        self.ctl(&[
            "role",
            "grant-permission",
            &role,
            "--prefix=true",
            "readwrite",
            prefix,
        ]);
        self.ctl(&["user", "add", &format!("{user}:{password}")]);
        self.ctl(&["user", "grant-role", user, &role]);
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kill the server (SIGKILL). Its data directory stays, so [`restart`](Self::restart)
    /// brings back every key, lease and revision.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kill the server and start it again on the same ports and data directory.
    pub fn restart(&mut self) {
        self.try_restart().unwrap_or_else(|e| panic!("{e}"));
    }

    /// [`restart`](Self::restart) with authentication tokens that expire after `secs` seconds
    /// unused (etcd's `--auth-token-ttl`, 300 s by default), for this and later restarts.
    pub fn restart_with_auth_token_ttl(&mut self, secs: u64) {
        self.auth_token_ttl = Some(secs);
        self.restart();
    }

    /// [`restart`](Self::restart), but a server that does not come back is an error, not a
    /// panic. After [`kill`](Self::kill), this starts the server again (the chaos harness
    /// keeps it down for a while in between).
    pub fn try_restart(&mut self) -> Result<(), String> {
        self.kill();
        self.spawn()
    }

    /// Freeze the server (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&self) {
        self.signal(rustix::process::Signal::STOP);
    }

    /// Resume a frozen server (SIGCONT).
    pub fn resume(&self) {
        self.signal(rustix::process::Signal::CONT);
    }

    fn signal(&self, signal: rustix::process::Signal) {
        let pid = self.pid().expect("the etcd server is running");
        let pid = rustix::process::Pid::from_raw(pid as i32).expect("a valid pid");
        rustix::process::kill_process(pid, signal).expect("signal etcd");
    }

    /// An `etcdctl` command (API v3) aimed at this server, to add arguments to and run.
    pub fn etcdctl(&self) -> Command {
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(self.endpoint());
        if let Some(tls) = &self.tls {
            cmd.arg("--cacert").arg(&tls.ca);
        }
        if let Some(user) = &self.ctl_user {
            cmd.arg("--user").arg(user);
        }
        cmd
    }

    /// Run `etcdctl ARGS` and return its standard output; panics, with its error output, if it
    /// fails.
    pub fn ctl(&self, args: &[&str]) -> String {
        let out: Output = self.etcdctl().args(args).output().unwrap_or_else(|e| {
            panic!(
                "cannot run etcdctl ({e}): install it with `apt-get install etcd-client`, or run \
                 scripts/test, which installs it"
            )
        });
        assert!(
            out.status.success(),
            "etcdctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim_end().to_owned()
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One server shared by every test of this process (each test uses election names of its
/// own). It lives as long as the process: the parent-death signal ends it when the test
/// process exits.
pub fn shared_etcd() -> &'static EtcdServer {
    static SERVER: OnceLock<EtcdServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        // Spawned from a thread that never ends, because the parent-death signal follows the
        // spawning *thread*, and test threads end.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            tx.send(EtcdServer::start()).expect("hand over the server");
            loop {
                std::thread::park();
            }
        });
        rx.recv().expect("start the shared etcd")
    })
}

/// gRPC messages received per method (`grpc_server_msg_received_total`, summed over services
/// and types), from the text of etcd's `/metrics`.
pub fn grpc_messages_from_metrics(text: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("grpc_server_msg_received_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let method = labels
            .split(',')
            .find_map(|kv| kv.strip_prefix("grpc_method=\""))
            .and_then(|m| m.strip_suffix('"'))
            .unwrap_or("?");
        let value: f64 = value.trim().parse().unwrap_or(0.0);
        if value > 0.0 {
            *out.entry(method.to_owned()).or_default() += value as u64;
        }
    }
    out
}

/// The body of a plain-HTTP `GET` of `path` on an etcd's metrics port, waiting up to `timeout`
/// for the reply (also used by [`crate::etcd_cluster`]).
pub(crate) fn metrics_get(port: u16, path: &str, timeout: Duration) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    Ok(reply
        .split_once("\r\n\r\n")
        .map_or(reply.as_str(), |(_, body)| body)
        .to_owned())
}
