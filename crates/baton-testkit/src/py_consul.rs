//! A foreign candidate for the Consul store: `crates/baton-testkit/python/consul_lock.py`, a
//! client that follows the Go API's `Lock` (`api/lock.go`) step by step with Python's standard
//! library only (so it needs no install: any `python3` of 3.11 or later). It prints the same
//! events as the Kubernetes candidate, read with [`PyElector`].
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use baton_testkit::py_consul::ConsulLockConfig;
//! use baton_testkit::py_elector::EventKind;
//!
//! let config = ConsulLockConfig::new("127.0.0.1:8500", "my-service", "py-1");
//! let mut candidate = config.spawn();
//! let event = candidate.wait_for(EventKind::BecameLeader, Duration::from_secs(10));
//! assert!(event.is_some(), "{}", candidate.stderr());
//! candidate.terminate();
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::py_elector::PyElector;

/// How to run one `consul_lock.py` candidate: the Go API's `LockOptions`, as options.
#[derive(Debug, Clone)]
pub struct ConsulLockConfig {
    /// The agent, `HOST:PORT`.
    pub addr: String,
    /// The prefix; the lock is `PREFIX/.lock` (Baton's `--key`).
    pub key: String,
    /// The candidate's id, written as the lock's value.
    pub identity: String,
    /// An ACL token.
    pub token: Option<String>,
    /// `SessionTTL` (a Go duration, at least `10s`).
    pub session_ttl: String,
    /// `LockDelay` of its session (`0s`: the agent's default, 15 s, as in Go).
    pub lock_delay: String,
    /// `LockWaitTime`: the blocking queries' `wait`.
    pub lock_wait: String,
    /// Exit 1 after losing the lock instead of campaigning again.
    pub once: bool,
}

impl ConsulLockConfig {
    /// The Go API's defaults scaled down for tests: a 10 s session TTL (Consul's minimum), a
    /// 1 s lock-delay, blocking queries of 2 s.
    pub fn new(addr: &str, key: &str, identity: &str) -> Self {
        ConsulLockConfig {
            addr: addr.to_owned(),
            key: key.to_owned(),
            identity: identity.to_owned(),
            token: None,
            session_ttl: "10s".into(),
            lock_delay: "1s".into(),
            lock_wait: "2s".into(),
            once: false,
        }
    }

    /// The script's arguments (after the script's path).
    pub fn args(&self) -> Vec<String> {
        let mut args = vec![
            "--addr".to_owned(),
            self.addr.clone(),
            "--key".to_owned(),
            self.key.clone(),
            "--id".to_owned(),
            self.identity.clone(),
            "--session-ttl".to_owned(),
            self.session_ttl.clone(),
            "--lock-delay".to_owned(),
            self.lock_delay.clone(),
            "--lock-wait".to_owned(),
            self.lock_wait.clone(),
        ];
        if let Some(token) = &self.token {
            args.push("--token".to_owned());
            args.push(token.clone());
        }
        if self.once {
            args.push("--once".to_owned());
        }
        args
    }

    /// Start it.
    ///
    /// # Panics
    ///
    /// When no `python3` of 3.11 or later is on the `PATH` ([`system_python`]).
    pub fn spawn(&self) -> PyElector {
        PyElector::spawn_script(
            &system_python(),
            &script_path(),
            &self.args(),
            &self.identity,
        )
    }
}

/// The script, `crates/baton-testkit/python/consul_lock.py`.
pub fn script_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join("consul_lock.py")
}

/// `python3` from the `PATH` (or `$BATON_PYTHON3`), checked once per process to be 3.11 or
/// later.
///
/// # Panics
///
/// When there is none, naming what to install.
pub fn system_python() -> PathBuf {
    static CHECKED: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    CHECKED
        .get_or_init(|| {
            let python = std::env::var_os("BATON_PYTHON3")
                .filter(|p| !p.is_empty())
                .map_or_else(|| PathBuf::from("python3"), PathBuf::from);
            let out = Command::new(&python)
                .args(["-c", "import sys; assert sys.version_info >= (3, 11), sys.version"])
                .output();
            match out {
                Ok(out) if out.status.success() => Ok(python),
                Ok(out) => Err(format!(
                    "{} is older than Python 3.11, which consul_lock.py needs: {}",
                    python.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                )),
                Err(e) => Err(format!(
                    "cannot run {} ({e}): consul_lock.py needs Python 3.11 or later on the PATH (or set BATON_PYTHON3)",
                    python.display()
                )),
            }
        })
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}
