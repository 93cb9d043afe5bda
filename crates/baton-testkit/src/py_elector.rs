//! A foreign candidate for the Kubernetes Lease store: one process of the Python `kubernetes`
//! client's leader election (PyPI `kubernetes` 37.x, `LeaseLock`), run by
//! `crates/baton-testkit/python/k8s_elector.py`, with its transitions as parsed events.
//!
//! The script prints one JSON line per transition, with the time on `CLOCK_BOOTTIME`, the
//! clock `baton campaign --json` reports as `boot_ns`; so a Python candidate's terms and Baton's
//! can be laid on one time line and checked for overlap. What the Python client does and does
//! not do (its expiry judgement, no release, no `leaseTransitions`) is in docs/decisions.md,
//! D65, and at the top of the script.
//!
//! It runs on the virtualenv `scripts/test` makes: `$BATON_PY_VENV`, else
//! `<workspace>/target/py-k8s`. A missing virtualenv is a loud failure naming the fix, never a
//! skip.
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use baton_testkit::py_elector::{EventKind, PyElector, PyElectorConfig, write_kubeconfig};
//!
//! let dir = baton_testkit::servers::scratch_dir("py-elector");
//! let kubeconfig = write_kubeconfig(&dir, "http://127.0.0.1:8080", Some("token"), "default");
//! let config = PyElectorConfig::new(&kubeconfig, "default", "my-lease", "py-1");
//! let mut candidate = PyElector::spawn(&config);
//! let event = candidate.wait_for(EventKind::BecameLeader, Duration::from_secs(10));
//! assert!(event.is_some(), "{}", candidate.stderr());
//! candidate.terminate();
//! ```

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::servers::die_with_parent;

/// What the Python client's candidate reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The library's `onstarted_leading`: this candidate took or kept the Lease.
    BecameLeader,
    /// Leadership ended: the renew loop gave up (`renew_failed`), an exception escaped the
    /// library (`error`), or the candidate was stopped while leading (`stopped`).
    LostLeadership,
}

/// One transition of a Python candidate.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// The candidate's identity (the Lease's `holderIdentity` while it leads).
    pub candidate: String,
    /// When, on `CLOCK_BOOTTIME` (the time since boot, suspend included): comparable with
    /// [`baton::boot_time`] in any process of the machine, and with `baton`'s `boot_ns`.
    pub boot_time: Duration,
    /// Why leadership ended, on [`EventKind::LostLeadership`]: `renew_failed`, `error` or
    /// `stopped`.
    pub reason: Option<String>,
}

/// Parse one line the script prints.
///
/// `{"event":"became_leader","candidate":"py-1","t":12.5}` and `lost_leadership` with an
/// optional `reason`; unknown fields are ignored, anything else is an error that quotes the
/// line.
pub fn parse_event(line: &str) -> Result<Event, String> {
    let bad = |why: &str| format!("not a k8s_elector.py event ({why}): {line}");
    let value: serde_json::Value = serde_json::from_str(line).map_err(|e| bad(&e.to_string()))?;
    let kind = match value.get("event").and_then(|v| v.as_str()) {
        Some("became_leader") => EventKind::BecameLeader,
        Some("lost_leadership") => EventKind::LostLeadership,
        Some(other) => return Err(bad(&format!("unknown event {other:?}"))),
        None => return Err(bad("no \"event\"")),
    };
    let candidate = value
        .get("candidate")
        .and_then(|v| v.as_str())
        .ok_or_else(|| bad("no \"candidate\" string"))?
        .to_owned();
    let seconds = value
        .get("t")
        .and_then(|v| v.as_f64())
        .ok_or_else(|| bad("no \"t\" number"))?;
    let boot_time = Duration::try_from_secs_f64(seconds).map_err(|e| bad(&e.to_string()))?;
    let reason = value
        .get("reason")
        .and_then(|v| v.as_str())
        .map(str::to_owned);
    Ok(Event {
        kind,
        candidate,
        boot_time,
        reason,
    })
}

/// How to run one Python candidate: the script's command line.
#[derive(Debug, Clone)]
pub struct PyElectorConfig {
    /// A kubeconfig file whose current context is the API server ([`write_kubeconfig`]).
    pub kubeconfig: PathBuf,
    /// The Lease's namespace.
    pub namespace: String,
    /// The Lease's name (Baton's election key).
    pub name: String,
    /// The candidate's `holderIdentity`.
    pub identity: String,
    /// The library's `lease_duration`, in whole seconds (the library writes it with
    /// `int(str(value))`). The Python client waits this long after it last saw the Lease
    /// change, whatever the Lease's `leaseDurationSeconds` says: give it at least the Baton
    /// candidates' lease, or it takes a lease Baton still holds (D65).
    pub lease_duration_secs: u64,
    /// The library's `renew_deadline`: a leader gives up after failing to renew this long.
    pub renew_deadline: Duration,
    /// The library's `retry_period`: the pause between attempts (at least 1 s; the library
    /// refuses less).
    pub retry_period: Duration,
    /// One try of at most this long per API call, instead of the library's default (no
    /// timeout, 3 retries).
    pub request_timeout: Option<Duration>,
    /// On SIGTERM/SIGINT, write client-go's release record (the library has no release).
    pub release_on_exit: bool,
    /// Exit 1 after losing leadership instead of campaigning again.
    pub once: bool,
}

impl PyElectorConfig {
    /// The library's example settings scaled down for tests: a 4 s lease, a 2 s renew
    /// deadline, a 1 s retry period (the library's minimum), 1 s per API call, and a release
    /// on exit.
    pub fn new(kubeconfig: &Path, namespace: &str, name: &str, identity: &str) -> Self {
        PyElectorConfig {
            kubeconfig: kubeconfig.to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            identity: identity.to_owned(),
            lease_duration_secs: 4,
            renew_deadline: Duration::from_secs(2),
            retry_period: Duration::from_secs(1),
            request_timeout: Some(Duration::from_secs(1)),
            release_on_exit: true,
            once: false,
        }
    }

    /// The script's arguments (after the script's path).
    pub fn args(&self) -> Vec<String> {
        let mut args = vec![
            "--kubeconfig".to_owned(),
            self.kubeconfig.display().to_string(),
            "--namespace".to_owned(),
            self.namespace.clone(),
            "--name".to_owned(),
            self.name.clone(),
            "--identity".to_owned(),
            self.identity.clone(),
            "--lease-duration".to_owned(),
            self.lease_duration_secs.to_string(),
            "--renew-deadline".to_owned(),
            self.renew_deadline.as_secs_f64().to_string(),
            "--retry-period".to_owned(),
            self.retry_period.as_secs_f64().to_string(),
        ];
        if let Some(timeout) = self.request_timeout {
            args.push("--request-timeout".to_owned());
            args.push(timeout.as_secs_f64().to_string());
        }
        if self.release_on_exit {
            args.push("--release-on-exit".to_owned());
        }
        if self.once {
            args.push("--once".to_owned());
        }
        args
    }
}

/// Write a kubeconfig whose current context is `server` (e.g. `http://127.0.0.1:PORT`), with a
/// bearer `token` if given and `namespace` as the context's namespace; returns its path,
/// `dir/kubeconfig`.
pub fn write_kubeconfig(dir: &Path, server: &str, token: Option<&str>, namespace: &str) -> PathBuf {
    // JSON is YAML, so no YAML writer is needed, and every string is quoted correctly.
    let user = match token {
        Some(token) => serde_json::json!({ "token": token }),
        None => serde_json::json!({}),
    };
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "baton-test", "cluster": { "server": server } }],
        "users": [{ "name": "baton-test", "user": user }],
        "contexts": [{
            "name": "baton-test",
            "context": { "cluster": "baton-test", "user": "baton-test", "namespace": namespace }
        }],
        "current-context": "baton-test",
    });
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&config).expect("a JSON value"),
    )
    .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

/// The virtualenv the script runs in: `$BATON_PY_VENV`, else `<workspace>/target/py-k8s`.
pub fn venv_dir() -> PathBuf {
    match std::env::var_os("BATON_PY_VENV") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => workspace_dir().join("target").join("py-k8s"),
    }
}

/// The script, `crates/baton-testkit/python/k8s_elector.py`.
pub fn script_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join("k8s_elector.py")
}

fn workspace_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    dir.canonicalize().unwrap_or(dir)
}

/// The virtualenv's `python`, checked once per process to import the client's `LeaseLock`.
///
/// # Panics
///
/// When the virtualenv is missing or lacks the client, with the commands that fix it.
pub fn venv_python() -> PathBuf {
    static CHECKED: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    CHECKED
        .get_or_init(|| {
            let venv = venv_dir();
            let python = venv.join("bin").join("python");
            let fix = format!(
                "run scripts/test, which installs it, or: python3 -m venv {0} && \
                 {0}/bin/pip install 'kubernetes>=37,<38' (BATON_PY_VENV names another \
                 virtualenv)",
                venv.display()
            );
            let output = Command::new(&python)
                .args([
                    "-c",
                    "import kubernetes.leaderelection.resourcelock.leaselock",
                ])
                .stdin(Stdio::null())
                .output();
            match output {
                Ok(out) if out.status.success() => Ok(python),
                Ok(out) => Err(format!(
                    "the Python kubernetes client is not installed in {}: {}; {fix}",
                    venv.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                )),
                Err(e) => Err(format!(
                    "no Python virtualenv at {} ({} : {e}); {fix}",
                    venv.display(),
                    python.display()
                )),
            }
        })
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// One running Python candidate, killed when dropped.
///
/// Spawn it from the test's own thread (or one that outlives it): the process gets the
/// parent-death signal, which Linux sends when the spawning *thread* ends.
#[derive(Debug)]
pub struct PyElector {
    identity: String,
    child: Option<Child>,
    events: Receiver<Event>,
    stderr: Arc<Mutex<String>>,
    /// Lines on stdout that were not events (a bug in the script), kept for the panic.
    garbage: Arc<Mutex<Vec<String>>>,
}

impl PyElector {
    /// Start the script with `config`.
    ///
    /// # Panics
    ///
    /// When the virtualenv is missing ([`venv_python`]) or the process cannot start.
    pub fn spawn(config: &PyElectorConfig) -> PyElector {
        Self::spawn_script(
            &venv_python(),
            &script_path(),
            &config.args(),
            &config.identity,
        )
    }

    /// Start `script` with `python` and `args`: any candidate that prints this module's events
    /// (`consul_lock.py` too), as `identity`.
    ///
    /// # Panics
    ///
    /// When the process cannot start.
    pub fn spawn_script(
        python: &Path,
        script: &Path,
        args: &[String],
        identity: &str,
    ) -> PyElector {
        let mut cmd = Command::new(python);
        cmd.arg("-u")
            .arg(script)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        die_with_parent(&mut cmd);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", python.display()));

        let (tx, events) = mpsc::channel();
        let garbage = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("piped stdout");
        let kept = Arc::clone(&garbage);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match parse_event(&line) {
                    Ok(event) => {
                        if tx.send(event).is_err() {
                            break;
                        }
                    }
                    Err(e) => kept.lock().unwrap().push(e),
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().expect("piped stderr");
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        PyElector {
            identity: identity.to_owned(),
            child: Some(child),
            events,
            stderr,
            garbage,
        }
    }

    /// The candidate's identity.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The process id, while it runs (to pause it with `SIGSTOP`, say).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Every event, in order, as the script prints them. The channel ends when the process's
    /// stdout closes.
    pub fn events(&self) -> &Receiver<Event> {
        &self.events
    }

    /// The next event within `timeout`, or `None`.
    pub fn next_event(&self, timeout: Duration) -> Option<Event> {
        self.events.recv_timeout(timeout).ok()
    }

    /// Events until one of `kind` arrives within `timeout` (the others are dropped), or `None`.
    pub fn wait_for(&self, kind: EventKind, timeout: Duration) -> Option<Event> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let event = self.next_event(left)?;
            if event.kind == kind {
                return Some(event);
            }
        }
    }

    /// What the script wrote on stderr so far (the library's logs, tracebacks), and any
    /// stdout line that was not an event: for assertion messages.
    pub fn stderr(&self) -> String {
        let mut out = self.stderr.lock().unwrap().clone();
        for line in self.garbage.lock().unwrap().iter() {
            out.push_str("\nstdout: ");
            out.push_str(line);
        }
        out
    }

    /// SIGTERM, as a graceful stop: a leader prints `lost_leadership` (`stopped`) and, with
    /// [`release_on_exit`](PyElectorConfig::release_on_exit), releases. Waits up to 10 s for
    /// the exit, then kills. Returns the exit status (`None` if it had to be killed or was
    /// already gone).
    pub fn terminate(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let pid = rustix::process::Pid::from_raw(child.id() as i32)?;
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            match child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(_) => break,
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// SIGKILL, as a crash: no event, no release.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PyElector {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_became_leader() {
        let event = parse_event(r#"{"event":"became_leader","candidate":"py-1","t":493.80757274}"#)
            .unwrap();
        assert_eq!(event.kind, EventKind::BecameLeader);
        assert_eq!(event.candidate, "py-1");
        assert_eq!(event.boot_time, Duration::from_secs_f64(493.80757274));
        assert_eq!(event.reason, None);
    }

    #[test]
    fn parses_lost_leadership_with_its_reason() {
        let event = parse_event(
            r#"{"event":"lost_leadership","candidate":"b","t":498,"reason":"renew_failed"}"#,
        )
        .unwrap();
        assert_eq!(event.kind, EventKind::LostLeadership);
        assert_eq!(event.boot_time, Duration::from_secs(498));
        assert_eq!(event.reason.as_deref(), Some("renew_failed"));
    }

    #[test]
    fn ignores_unknown_fields() {
        let event =
            parse_event(r#"{"event":"became_leader","candidate":"a","t":1.5,"token":null}"#)
                .unwrap();
        assert_eq!(event.boot_time, Duration::from_millis(1500));
    }

    #[test]
    fn refuses_what_is_not_an_event() {
        for (line, why) in [
            ("Traceback (most recent call last):", "expected value"),
            (r#"{"candidate":"a","t":1}"#, "no \"event\""),
            (
                r#"{"event":"leader_changed","candidate":"a","t":1}"#,
                "unknown event",
            ),
            (r#"{"event":"became_leader","t":1}"#, "no \"candidate\""),
            (r#"{"event":"became_leader","candidate":"a"}"#, "no \"t\""),
            (
                r#"{"event":"became_leader","candidate":"a","t":"1"}"#,
                "no \"t\"",
            ),
            (
                r#"{"event":"became_leader","candidate":"a","t":-1}"#,
                "negative",
            ),
        ] {
            let err = parse_event(line).unwrap_err();
            assert!(err.contains(why), "{line}: {err}");
            assert!(err.ends_with(line), "the error quotes the line: {err}");
        }
    }

    #[test]
    fn script_arguments() {
        let mut config = PyElectorConfig::new(Path::new("/k"), "ns", "lease", "py-1");
        config.request_timeout = None;
        config.release_on_exit = false;
        config.renew_deadline = Duration::from_millis(2500);
        assert_eq!(
            config.args().join(" "),
            "--kubeconfig /k --namespace ns --name lease --identity py-1 --lease-duration 4 \
             --renew-deadline 2.5 --retry-period 1"
        );
        config.request_timeout = Some(Duration::from_millis(500));
        config.release_on_exit = true;
        config.once = true;
        assert!(
            config
                .args()
                .join(" ")
                .ends_with("--request-timeout 0.5 --release-on-exit --once")
        );
    }

    #[test]
    fn kubeconfig_names_server_token_and_namespace() {
        let dir = crate::servers::scratch_dir("py-elector-kubeconfig");
        let path = write_kubeconfig(&dir, "http://127.0.0.1:1", Some("t\"k"), "ns");
        let written: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(
            written["clusters"][0]["cluster"]["server"],
            "http://127.0.0.1:1"
        );
        assert_eq!(written["users"][0]["user"]["token"], "t\"k");
        assert_eq!(written["contexts"][0]["context"]["namespace"], "ns");
        let _ = std::fs::remove_dir_all(dir);
    }

    /// The virtualenv is there (scripts/test installs it) and the script runs in it: with no
    /// API server it campaigns without leading, and leaves on SIGTERM with status 0.
    #[test]
    fn the_script_runs_and_stops_on_sigterm() {
        let dir = crate::servers::scratch_dir("py-elector-run");
        let port = crate::servers::free_port();
        let kubeconfig =
            write_kubeconfig(&dir, &format!("http://127.0.0.1:{port}"), None, "default");
        let mut candidate =
            PyElector::spawn(&PyElectorConfig::new(&kubeconfig, "default", "l", "py-1"));
        // Time to import the client and fail its first attempt.
        let event = candidate.next_event(Duration::from_secs(3));
        assert_eq!(event, None, "{}", candidate.stderr());
        let status = candidate.terminate();
        assert!(
            status.is_some_and(|s| s.success()),
            "{status:?}: {}",
            candidate.stderr()
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
