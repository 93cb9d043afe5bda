//! A throwaway MariaDB server for tests that need a server configured in a way the machine's
//! own must not be (TLS on): a real `mariadbd` on a free loopback port with a fresh data
//! directory made by `mariadb-install-db`, killed and removed when dropped.
//!
//! A missing binary is a loud failure naming the fix, never a skip: `scripts/test` installs
//! the Debian package `mariadb-server` (`mariadbd`, and `mariadb-install-db` from
//! `mariadb-server-core`).

use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::servers::{TlsFiles, die_with_parent, free_port, remove_stale_dirs, scratch_dir};
use crate::tls::TestCa;

/// The scratch directories' prefix: `baton-mariadb-<test process id>-<random>`.
const PREFIX: &str = "baton-mariadb";

/// Small InnoDB files and buffers: the server holds a few tiny tables.
const SMALL: [&str; 2] = ["--innodb-log-file-size=4M", "--innodb-buffer-pool-size=16M"];

/// A `mariadbd` of this test's own with TLS on, reached as `root` without a password on
/// 127.0.0.1, with an empty database `test`. Killed, and its directory removed, when dropped.
#[derive(Debug)]
pub struct MariaDbServer {
    port: u16,
    dir: PathBuf,
    tls: TlsFiles,
    child: Option<Child>,
}

impl MariaDbServer {
    /// Start a server on a free port whose TLS certificate, for `localhost` and `127.0.0.1`,
    /// is signed by a CA made for it ([`ca`](Self::ca)). Clients may connect with or without
    /// TLS (`require_secure_transport` is off), so a test can tell the two apart;
    /// `performance_schema` is on, so `performance_schema.threads.CONNECTION_TYPE` says which
    /// connections are `SSL/TLS`.
    pub fn start_tls() -> MariaDbServer {
        remove_stale_dirs(PREFIX);
        let dir = scratch_dir(PREFIX);
        let tls =
            TestCa::new("Baton test CA (MariaDB)").server_files(&dir, &["localhost", "127.0.0.1"]);
        let data = dir.join("data");
        let mut install = Command::new(find("mariadb-install-db"));
        install
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg("--auth-root-authentication-method=normal")
            .arg("--skip-test-db")
            .args(as_root())
            .args(SMALL)
            .stdin(Stdio::null());
        die_with_parent(&mut install);
        let out = install.output().unwrap_or_else(|e| {
            panic!(
                "cannot run mariadb-install-db ({e}): install it with `apt-get install mariadb-server`, \
                 or run scripts/test, which installs it"
            )
        });
        assert!(
            out.status.success(),
            "mariadb-install-db failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let init = dir.join("init.sql");
        std::fs::write(&init, "CREATE DATABASE IF NOT EXISTS test;\n").expect("write init.sql");
        let mut server = MariaDbServer {
            port: free_port(),
            dir,
            tls,
            child: None,
        };
        server.spawn(&data, &init);
        server
    }

    fn spawn(&mut self, data: &Path, init: &Path) {
        let mut cmd = Command::new(find("mariadbd"));
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--port={}", self.port))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--socket={}", self.dir.join("sock").display()))
            .arg(format!("--pid-file={}", self.dir.join("pid").display()))
            .arg(format!("--init-file={}", init.display()))
            .arg(format!("--ssl-cert={}", self.tls.cert.display()))
            .arg(format!("--ssl-key={}", self.tls.key.display()))
            .arg(format!("--ssl-ca={}", self.tls.ca.display()))
            .args(["--performance-schema=ON", "--skip-log-bin"])
            .args(as_root())
            .args(SMALL)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start mariadbd ({e}): install it with `apt-get install mariadb-server`, \
                 or run scripts/test, which installs it"
            )
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        while !greets(self.port) {
            if let Ok(Some(status)) = child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                panic!("mariadbd on port {} exited with {status}: {err}", self.port);
            }
            assert!(
                Instant::now() < deadline,
                "mariadbd on port {} did not greet a client within 30 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // Drain its log so a chatty server never blocks on a full pipe.
        if let Some(mut err) = child.stderr.take() {
            std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
        }
        self.child = Some(child);
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `mysql://root@127.0.0.1:PORT/test`, without TLS options.
    pub fn url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}/test", self.port)
    }

    /// The PEM file of the CA that signed the server's certificate.
    pub fn ca(&self) -> &Path {
        &self.tls.ca
    }

    /// Kill the server (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for MariaDbServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One TLS server shared by every test of this process that asks for it (each test uses
/// tables and users of its own), like [`shared_redis`](crate::servers::shared_redis).
pub fn shared_mariadb_tls() -> &'static MariaDbServer {
    static SERVER: OnceLock<MariaDbServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        // Spawned from a thread that never ends, because the parent-death signal follows the
        // spawning *thread*, and test threads end.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            tx.send(MariaDbServer::start_tls())
                .expect("hand over the server");
            loop {
                std::thread::park();
            }
        });
        rx.recv().expect("start the shared mariadbd")
    })
}

/// Whether a server on `port` sends its greeting (the handshake packet every MySQL-protocol
/// server sends first): it then accepts clients.
fn greets(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut header = [0u8; 5];
    // 3 bytes length, 1 byte sequence, then protocol version 10 (or 0xff: an error packet,
    // e.g. "too many connections" while starting).
    s.read_exact(&mut header).is_ok() && header[4] == 10
}

/// `--user=root` when running as root (mariadbd refuses to run as root without it; as anyone
/// else it runs as that user).
fn as_root() -> Option<&'static str> {
    rustix::process::geteuid()
        .is_root()
        .then_some("--user=root")
}

/// A MariaDB program: on the PATH, or in /usr/sbin and /usr/bin, where Debian puts them
/// (a user's PATH often lacks /usr/sbin).
fn find(program: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin"] {
        let path = Path::new(dir).join(program);
        if path.exists() {
            return path;
        }
    }
    PathBuf::from(program)
}
