//! The fake as a separate process, which a test can kill, restart (keeping its KV pairs and sessions),
//! pause and resume, like `etcd_server::EtcdServer`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::FakeConsulOptions;
use crate::servers::{free_port, scratch_dir};

/// The `baton-fake-consul` binary: `$BATON_FAKE_CONSUL`, or next to the running test executable
/// (`target/<profile>/baton-fake-consul`, test executables living in `target/<profile>/deps`).
///
/// # Panics
///
/// When it is not there, naming the command that builds it.
pub fn fake_consul_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("BATON_FAKE_CONSUL") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the current executable");
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let candidate = dir.join("baton-fake-consul");
    assert!(
        candidate.exists(),
        "the fake Consul agent is not built: {} does not exist. Build it with \
         `cargo build -p baton-testkit --bin baton-fake-consul` (scripts/test does), or set \
         BATON_FAKE_CONSUL to its path",
        candidate.display()
    );
    candidate
}

/// A `baton-fake-consul` process of this test's own on a free port, with its state file in a
/// scratch directory, killed (and the directory removed) when dropped.
#[derive(Debug)]
pub struct FakeConsulProcess {
    port: u16,
    dir: PathBuf,
    options: FakeConsulOptions,
    child: Option<Child>,
}

impl FakeConsulProcess {
    /// Start one with default options (no token).
    pub fn start() -> FakeConsulProcess {
        Self::start_with(FakeConsulOptions::default())
    }

    /// Start one with `options`; its `state_file` is replaced by one in the scratch
    /// directory, so that [`restart`](Self::restart) keeps the KV pairs and sessions.
    pub fn start_with(options: FakeConsulOptions) -> FakeConsulProcess {
        Self::try_start(options).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`start_with`](Self::start_with), but a fake that cannot start is an error.
    pub fn try_start(mut options: FakeConsulOptions) -> Result<FakeConsulProcess, String> {
        let dir = scratch_dir("baton-fake-consul");
        options.state_file = Some(dir.join("state.json"));
        let mut fake = FakeConsulProcess {
            port: free_port(),
            dir,
            options,
            child: None,
        };
        fake.spawn()?;
        Ok(fake)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let mut cmd = Command::new(fake_consul_binary());
        cmd.arg("--listen").arg(format!("127.0.0.1:{}", self.port));
        if let Some(state) = &self.options.state_file {
            cmd.arg("--state").arg(state);
        }
        if let Some(token) = &self.options.token {
            cmd.arg("--token").arg(token);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        crate::servers::die_with_parent(&mut cmd);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start baton-fake-consul: {e}"))?;
        let stdout = child.stdout.take().expect("a piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next();
            let _ = tx.send(first);
            for _ in lines {}
        });
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Some(Ok(line))) if line.starts_with("listening on http://") => {
                self.child = Some(child);
                Ok(())
            }
            other => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!(
                    "baton-fake-consul on port {} did not say it was listening: {other:?}",
                    self.port
                ))
            }
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `consul://127.0.0.1:PORT`, with `?token=` when it requires one.
    pub fn store_url(&self) -> String {
        match self.token() {
            Some(token) => format!("consul://127.0.0.1:{}?token={token}", self.port),
            None => format!("consul://127.0.0.1:{}", self.port),
        }
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The bearer token it requires, if any.
    pub fn token(&self) -> Option<&str> {
        self.options.token.as_deref()
    }

    /// The state file its data is kept in.
    pub fn state_file(&self) -> &Path {
        self.options.state_file.as_deref().expect("a state file")
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kill it (SIGKILL). The state file stays, so [`restart`](Self::restart) brings back
    /// every KV pair, every session (its TTL timer started afresh, as a new Consul leader does) and
    /// the raft index; lock-delays are not kept.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kill it and start it again on the same port and state file.
    pub fn restart(&mut self) {
        self.try_restart().unwrap_or_else(|e| panic!("{e}"));
    }

    /// [`restart`](Self::restart), but a fake that does not come back is an error. After
    /// [`kill`](Self::kill), this starts it again.
    pub fn try_restart(&mut self) -> Result<(), String> {
        self.kill();
        self.spawn()
    }

    /// Freeze it (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&self) {
        self.signal(rustix::process::Signal::STOP);
    }

    /// Resume a frozen fake (SIGCONT).
    pub fn resume(&self) {
        self.signal(rustix::process::Signal::CONT);
    }

    fn signal(&self, signal: rustix::process::Signal) {
        let pid = self.pid().expect("the fake agent is running");
        let pid = rustix::process::Pid::from_raw(pid as i32).expect("a valid pid");
        rustix::process::kill_process(pid, signal).expect("signal the fake agent");
    }
}

impl Drop for FakeConsulProcess {
    fn drop(&mut self) {
        if self.child.is_some() {
            // A paused process still dies of SIGKILL.
            self.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
