//! The fake as a separate process, which a test can kill, restart (keeping its objects),
//! pause and resume, like `etcd_server::EtcdServer`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{FakeK8sOptions, kubeconfig};
use crate::servers::{free_port, scratch_dir};

/// The `baton-fake-k8s` binary: `$BATON_FAKE_K8S`, or next to the running test executable
/// (`target/<profile>/baton-fake-k8s`, test executables living in `target/<profile>/deps`).
///
/// # Panics
///
/// When it is not there, naming the command that builds it.
pub fn fake_k8s_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("BATON_FAKE_K8S") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the current executable");
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let candidate = dir.join("baton-fake-k8s");
    assert!(
        candidate.exists(),
        "the fake Kubernetes API server is not built: {} does not exist. Build it with \
         `cargo build -p baton-testkit --bin baton-fake-k8s` (scripts/test does), or set \
         BATON_FAKE_K8S to its path",
        candidate.display()
    );
    candidate
}

/// A `baton-fake-k8s` process of this test's own on a free port, with its state file in a
/// scratch directory, killed (and the directory removed) when dropped.
#[derive(Debug)]
pub struct FakeK8sProcess {
    port: u16,
    dir: PathBuf,
    options: FakeK8sOptions,
    child: Option<Child>,
}

impl FakeK8sProcess {
    /// Start one with default options (no token, 60 s bookmarks, 1000 events of history).
    pub fn start() -> FakeK8sProcess {
        Self::start_with(FakeK8sOptions::default())
    }

    /// Start one with `options`; its `state_file` is replaced by one in the scratch
    /// directory, so that [`restart`](Self::restart) keeps the objects.
    pub fn start_with(options: FakeK8sOptions) -> FakeK8sProcess {
        Self::try_start(options).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`start_with`](Self::start_with), but a fake that cannot start is an error.
    pub fn try_start(mut options: FakeK8sOptions) -> Result<FakeK8sProcess, String> {
        let dir = scratch_dir("baton-fake-k8s");
        options.state_file = Some(dir.join("state.json"));
        let mut fake = FakeK8sProcess {
            port: free_port(),
            dir,
            options,
            child: None,
        };
        fake.spawn()?;
        Ok(fake)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let mut cmd = Command::new(fake_k8s_binary());
        cmd.arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--bookmark-interval")
            .arg(humantime::format_duration(self.options.bookmark_interval).to_string())
            .arg("--history")
            .arg(self.options.history.to_string());
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
            .map_err(|e| format!("cannot start baton-fake-k8s: {e}"))?;
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
                    "baton-fake-k8s on port {} did not say it was listening: {other:?}",
                    self.port
                ))
            }
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The bearer token it requires, if any.
    pub fn token(&self) -> Option<&str> {
        self.options.token.as_deref()
    }

    /// The state file its objects are kept in.
    pub fn state_file(&self) -> &Path {
        self.options.state_file.as_deref().expect("a state file")
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Write a kubeconfig for this fake (its URL and token, namespace `default`) to `path`,
    /// for `kubectl --kubeconfig` or the Python client.
    pub fn write_kubeconfig(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, kubeconfig(&self.url(), self.token()))
    }

    /// Kill it (SIGKILL). The state file stays, so [`restart`](Self::restart) brings back
    /// every object and the resourceVersion counter (not the watch history).
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
        let pid = self.pid().expect("the fake API server is running");
        let pid = rustix::process::Pid::from_raw(pid as i32).expect("a valid pid");
        rustix::process::kill_process(pid, signal).expect("signal the fake API server");
    }
}

impl Drop for FakeK8sProcess {
    fn drop(&mut self) {
        if self.child.is_some() {
            // A paused process still dies of SIGKILL.
            self.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
