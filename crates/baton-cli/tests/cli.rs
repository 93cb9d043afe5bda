//! The `baton` binary, run for real against temporary SQLite files (and the machine's servers
//! where a test says so); and the library's examples, run as a user would run them.
//!
//! These tests check behaviour across processes: who leads, who takes over, what is printed,
//! what exits how. Every wait has a generous bound (seconds, not milliseconds): the machine
//! may be busy, and these are not benchmarks (`scripts/bench` is).

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};
use serde_json::Value;

/// `deploy/kubernetes/`, checked against this `baton` (in `tests/cli/deploy.rs`, one test binary).
#[path = "cli/deploy.rs"]
mod deploy;

/// Upper bound for anything that should take well under a second.
const PATIENCE: Duration = Duration::from_secs(20);

/// Short leases, so that a test that goes wrong fails in seconds rather than minutes.
const FAST: [&str; 6] = ["--lease", "2s", "--renew", "500ms", "--grace", "500ms"];

/// A scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "baton-cli-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// The store every process of a test shares.
    fn store(&self) -> String {
        format!("sqlite:{}", self.path("baton.db").display())
    }

    /// `baton` with a clean environment: no `BATON_*` from the developer's shell, and a home
    /// inside the scratch directory, so the default store never touches the real one.
    fn baton(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_baton"));
        cmd.env_clear()
            .env("HOME", &self.0)
            .env("XDG_STATE_HOME", self.path("state"))
            .stdin(Stdio::null());
        cmd
    }

    /// `baton --store <scratch db> <FAST> ARGS`.
    fn baton_fast(&self, args: &[&str]) -> Command {
        let mut cmd = self.baton();
        cmd.arg("--store").arg(self.store()).args(FAST).args(args);
        cmd
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("baton runs")
}

/// A running `baton` whose stdout is read line by line on a thread.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    stderr: Arc<Mutex<String>>,
}

impl Running {
    fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("baton starts");
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        thread::spawn(move || {
            let mut buf = String::new();
            let _ = pipe.read_to_string(&mut buf);
            sink.lock().unwrap().push_str(&buf);
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
            stderr,
        }
    }

    /// Wait for a stdout line that satisfies `want`; panic with everything seen otherwise.
    fn wait_line(&mut self, what: &str, want: impl Fn(&str) -> bool) -> String {
        let until = Instant::now() + PATIENCE;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if want(&line) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no {what} within {PATIENCE:?}\nstdout:\n{}\nstderr:\n{}",
                    self.seen.join("\n"),
                    self.stderr.lock().unwrap()
                ),
            }
        }
    }

    /// Wait for a JSON event line with `event` == `name` (and `leader` == `leader`, if given).
    fn wait_event(&mut self, name: &str, leader: Option<&str>) -> Value {
        let line = self.wait_line(name, |line| {
            let v: Value = serde_json::from_str(line).expect("stdout is JSON lines");
            v["event"] == name && leader.is_none_or(|l| v["leader"] == l)
        });
        serde_json::from_str(&line).unwrap()
    }

    fn signal(&self, signal: Signal) {
        kill_process(Pid::from_child(&self.child), signal).expect("signal sent");
    }

    /// Wait for the process to exit; returns its status and the rest of its stdout.
    fn wait_exit(&mut self) -> (ExitStatus, Vec<String>) {
        let until = Instant::now() + PATIENCE;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < until,
                "baton did not exit within {PATIENCE:?}\nstdout:\n{}",
                self.seen.join("\n")
            );
            thread::sleep(Duration::from_millis(20));
        };
        // The reader thread ends at EOF, which follows the exit.
        while let Ok(line) = self.lines.recv_timeout(PATIENCE) {
            self.seen.push(line);
        }
        (status, self.seen.clone())
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn campaign(scratch: &Scratch, id: &str) -> Running {
    Running::spawn(scratch.baton_fast(&["--id", id, "campaign", "--json"]))
}

fn status_json(scratch: &Scratch) -> (i32, Value) {
    let out = run(&mut scratch.baton_fast(&["status", "--json"]));
    let code = out.status.code().expect("exited");
    let value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("status --json printed {:?}: {e}", text(&out.stdout)));
    (code, value)
}

// (a) Two campaigners on one file: exactly one leads; SIGINT hands over to the other.
#[test]
fn two_campaigns_elect_one_leader_and_sigint_hands_over() {
    let scratch = Scratch::new("handover");
    let mut a = campaign(&scratch, "a");
    let first = a.wait_event("became_leader", None);
    assert_eq!(first["candidate"], "a");
    assert_eq!(first["key"], "baton:leader");
    assert!(first["token"].is_u64(), "{first}");
    assert!(first["ts"].as_str().unwrap().ends_with('Z'), "{first}");

    let mut b = campaign(&scratch, "b");
    // b has seen that a leads: it is following, subscribed and waiting.
    let seen = b.wait_event("leader_changed", Some("a"));
    assert_eq!(seen["candidate"], "b");
    assert!(seen["previous"].is_null(), "{seen}");
    assert!(
        !b.seen.iter().any(|l| l.contains("became_leader")),
        "two leaders: {:?}",
        b.seen
    );
    assert_eq!(status_json(&scratch).1["leader"], "a");

    a.signal(Signal::INT);
    let took_over = b.wait_event("became_leader", Some("b"));
    assert!(
        took_over["token"].as_u64() > first["token"].as_u64(),
        "fencing tokens must increase: {first} then {took_over}"
    );

    let (status, lines) = a.wait_exit();
    assert!(status.success(), "a exited with {status}: {}", a.stderr());
    let lost: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["event"] == "lost_leadership")
        .collect();
    assert_eq!(lost.len(), 1, "{lines:?}");
    assert_eq!(lost[0]["reason"], "stopped");
    assert_eq!(lost[0]["token"], first["token"]);

    b.signal(Signal::TERM);
    let (status, _) = b.wait_exit();
    assert!(status.success(), "b exited with {status}: {}", b.stderr());
    assert_eq!(b.stderr(), "", "no warnings on a clean run");
}

// (b) The demo runs to completion with the seed's sections, plain when piped.
#[test]
fn demo_runs_through_the_seeds_sections() {
    let scratch = Scratch::new("demo");
    let out = run(&mut scratch.baton_fast(&[
        "--id",
        "solo",
        "demo",
        "--checks",
        "2",
        "--check-interval",
        "100ms",
        "--work-for",
        "700ms",
        "--batch",
        "200ms",
    ]));
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    for expected in [
        "Baton: Leader Election Demo",
        "=== Demo 1: Subscribe to Leadership Events ===",
        "Candidate ID: solo",
        "Lock Key: baton:leader",
        "Lease Duration: 2s",
        "Renew Interval: 500ms",
        "Grace Period: 500ms",
        "Event handlers registered for:",
        "=== Demo 2: Start Leader Election ===",
        "*** LEADERSHIP ACQUIRED ***",
        "Initial election result:\n  Is Leader: true\n  Current Leader: solo",
        "=== Demo 3: Monitor Leadership Status ===",
        "Status check 2/2:",
        "=== Demo 4: Leader Work ===",
        "Processing batch 1 with fencing token",
        "=== Graceful Shutdown ===",
        "*** LEADERSHIP LOST *** (stopped)",
        "Lease released",
        "Demo complete.",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    let order = |s: &str| stdout.find(s).unwrap();
    assert!(order("*** LEADERSHIP ACQUIRED ***") < order("Initial election result"));
    assert!(order("Demo 4") < order("Graceful Shutdown"));
    assert!(!stdout.contains('\x1b'), "colour codes in piped output");
    assert_eq!(text(&out.stderr), "");
    // The lease was released: nobody leads.
    assert_eq!(status_json(&scratch).0, 1);
}

// (b) The seed's multi-terminal test: two demos on the default store (no --store, no server),
// the second follows, then takes over the moment the first is interrupted.
#[test]
fn a_second_demo_takes_over_when_the_first_is_interrupted() {
    let scratch = Scratch::new("demo-takeover");
    let slow = [
        "--check-interval",
        "100ms",
        "--work-for",
        "5m",
        "--batch",
        "100ms",
    ];
    // The default store: an SQLite file in the user's state directory, which the scratch
    // environment points into the scratch directory.
    let demo = |id: &str| {
        let mut cmd = scratch.baton();
        cmd.args(FAST).args(["--id", id, "demo"]).args(slow);
        cmd
    };
    let default_store = format!(
        "Store: sqlite:{}",
        scratch
            .path("state")
            .join("baton")
            .join("baton.db")
            .display()
    );
    let mut first = Running::spawn(demo("first"));
    first.wait_line("the default store", |l| l.contains(&default_store));
    first.wait_line("leader work", |l| l.contains("Processing batch 1"));

    let mut second = Running::spawn(demo("second"));
    second.wait_line("the default store", |l| l.contains(&default_store));
    second.wait_line("following", |l| l.contains("Following: first leads"));

    first.signal(Signal::INT);
    second.wait_line("takeover", |l| l.contains("*** LEADERSHIP ACQUIRED ***"));
    second.wait_line("leader work", |l| l.contains("Processing batch 1"));

    let (status, lines) = first.wait_exit();
    assert!(status.success(), "{status}: {}", first.stderr());
    let all = lines.join("\n");
    assert!(
        all.contains("Received SIGINT: shutting down gracefully."),
        "{all}"
    );
    assert!(all.contains("Lease released"), "{all}");

    second.signal(Signal::INT);
    let (status, _) = second.wait_exit();
    assert!(status.success(), "{status}: {}", second.stderr());
}

// (c) status: no leader (exit 1), a leader (exit 0, its token and lease), released (exit 1).
#[test]
fn status_reports_leader_token_and_lease() {
    let scratch = Scratch::new("status");
    let (code, before) = status_json(&scratch);
    assert_eq!(code, 1, "{before}");
    assert!(
        before["leader"].is_null() && before["token"].is_null(),
        "{before}"
    );
    assert_eq!(before["key"], "baton:leader");
    assert_eq!(before["store"], scratch.store());

    let mut leader = campaign(&scratch, "leader-1");
    let became = leader.wait_event("became_leader", None);
    let (code, during) = status_json(&scratch);
    assert_eq!(code, 0, "{during}");
    assert_eq!(during["leader"], "leader-1");
    assert_eq!(during["token"], became["token"]);
    let ttl = during["ttl_ms"].as_u64().expect("ttl_ms");
    assert!(ttl > 0 && ttl <= 2000, "{during}");

    let out = run(&mut scratch.baton_fast(&["status"]));
    assert!(out.status.success());
    let human = text(&out.stdout);
    assert!(human.contains("Leader: leader-1"), "{human}");
    assert!(
        human.contains(&format!("Fencing token: {}", became["token"])),
        "{human}"
    );
    assert!(human.contains("Remaining lease:"), "{human}");

    leader.signal(Signal::INT);
    assert!(leader.wait_exit().0.success());
    let (code, after) = status_json(&scratch);
    assert_eq!(code, 1, "released, so nobody leads: {after}");
    assert!(text(&run(&mut scratch.baton_fast(&["status"])).stdout).contains("No leader"));
}

// watch: sees a leader come and go.
#[test]
fn watch_streams_leader_changes() {
    let scratch = Scratch::new("watch");
    let mut watch = Running::spawn(scratch.baton_fast(&["watch", "--json"]));
    let mut leader = campaign(&scratch, "w1");
    leader.wait_event("became_leader", None);
    let up = watch.wait_event("leader_changed", Some("w1"));
    assert!(up["previous"].is_null(), "{up}");
    assert!(up["candidate"].is_null(), "{up}");
    assert!(up["token"].is_u64(), "{up}");

    leader.signal(Signal::INT);
    assert!(leader.wait_exit().0.success());
    let down = watch.wait_line("leader gone", |l| {
        let v: Value = serde_json::from_str(l).unwrap();
        v["leader"].is_null() && v["previous"] == "w1"
    });
    assert!(down.contains("\"event\":\"leader_changed\""), "{down}");

    watch.signal(Signal::INT);
    assert!(watch.wait_exit().0.success());
}

// watch, on every store: an observer hears of a graceful release as the candidates do, not
// when the lease runs out (on SQLite, `baton watch` used to see a release up to a second late).

/// The lease of the observer tests: far longer than any wait they allow.
const OBSERVED: [&str; 6] = ["--lease", "30s", "--renew", "5s", "--grace", "5s"];

/// How long after the leader's exit the observer may report the release: well short of the
/// 30 s lease, so only a pushed (or promptly polled) release passes.
const LONG_BEFORE_EXPIRY: Duration = Duration::from_secs(5);

/// One leader and one `baton watch --json` on `store`; the leader stops gracefully, and the
/// watcher reports the key free long before the lease could have expired.
fn watch_reports_a_release_long_before_the_lease_expires(scratch: &Scratch, store: &str) {
    // A key every store takes (a Kubernetes Lease name has no ':').
    let baton = |args: &[&str]| {
        let mut cmd = scratch.baton();
        cmd.args(["--store", store, "--key", "observed-leader"])
            .args(OBSERVED)
            .args(args);
        cmd
    };
    let mut leader = Running::spawn(baton(&["--id", "observed", "campaign", "--json"]));
    let mut watch = Running::spawn(baton(&["watch", "--json"]));
    // The watcher subscribes before it prints anything. It waits for the lease in the store,
    // not for the leader's `became_leader`: on a Redis server younger than the lease, the
    // holder holds for a whole lease before it acts (the restart guard), and the release must
    // be seen all the same.
    watch.wait_event("leader_changed", Some("observed"));

    let stopped = Instant::now();
    leader.signal(Signal::INT);
    assert!(leader.wait_exit().0.success(), "{}", leader.stderr());
    let line = watch.wait_line("the release", |l| {
        let v: Value = serde_json::from_str(l).unwrap();
        v["event"] == "leader_changed" && v["previous"] == "observed" && v["leader"] != "observed"
    });
    let waited = stopped.elapsed();
    assert!(
        waited < LONG_BEFORE_EXPIRY,
        "{store}: the watcher reported the release {waited:?} after the leader stopped, \
         as if it had waited for the 30 s lease: {line}"
    );
    watch.signal(Signal::INT);
    assert!(watch.wait_exit().0.success(), "{}", watch.stderr());
}

#[test]
fn watch_reports_a_release_at_once_on_sqlite() {
    let scratch = Scratch::new("watch-release-sqlite");
    watch_reports_a_release_long_before_the_lease_expires(&scratch, &scratch.store());
}

#[test]
fn watch_reports_a_release_at_once_on_redis() {
    let scratch = Scratch::new("watch-release-redis");
    let server = baton_testkit::servers::RedisServer::start();
    watch_reports_a_release_long_before_the_lease_expires(&scratch, &server.url());
}

#[test]
fn watch_reports_a_release_at_once_on_postgres() {
    let scratch = Scratch::new("watch-release-postgres");
    let table = SqlTable::new(Sql::Postgres);
    watch_reports_a_release_long_before_the_lease_expires(&scratch, &table.url());
}

#[test]
fn watch_reports_a_release_at_once_on_mysql() {
    let scratch = Scratch::new("watch-release-mysql");
    let table = SqlTable::new(Sql::Mysql);
    watch_reports_a_release_long_before_the_lease_expires(&scratch, &table.url());
}

#[test]
fn watch_reports_a_release_at_once_on_etcd() {
    let scratch = Scratch::new("watch-release-etcd");
    let server = baton_testkit::etcd_server::EtcdServer::start();
    watch_reports_a_release_long_before_the_lease_expires(&scratch, &server.url());
}

#[test]
fn watch_reports_a_release_at_once_on_kubernetes() {
    let scratch = Scratch::new("watch-release-kubernetes");
    let server = baton_testkit::fake_k8s::FakeK8sProcess::start();
    let url = format!("kubernetes+http://127.0.0.1:{}", server.port());
    watch_reports_a_release_long_before_the_lease_expires(&scratch, &url);
}

/// `--store kubernetes:` outside a cluster takes the kubeconfig's current context, as kubectl
/// does (`KUBECONFIG`), and the demo runs through on it; `kubectl`'s view then shows the
/// release the demo wrote.
#[test]
fn the_demo_runs_on_kubernetes_from_the_kubeconfig() {
    let scratch = Scratch::new("demo-kubernetes");
    let server = baton_testkit::fake_k8s::FakeK8sProcess::start();
    let kubeconfig = scratch.path("kubeconfig");
    server.write_kubeconfig(&kubeconfig).unwrap();
    let mut cmd = scratch.baton();
    cmd.env("KUBECONFIG", &kubeconfig).args([
        "--store",
        "kubernetes:",
        "--key",
        "demo-leader",
        "--id",
        "solo",
        "--lease",
        "2s",
        "--renew",
        "500ms",
        "--grace",
        "500ms",
        "demo",
        "--checks",
        "1",
        "--check-interval",
        "10ms",
        "--work-for",
        "300ms",
        "--batch",
        "100ms",
    ]);
    let out = run(&mut cmd);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    for expected in [
        "*** LEADERSHIP ACQUIRED ***",
        "Lease released",
        "Demo complete.",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    // A key that cannot be a Lease name is bad input, with the rule.
    let mut cmd = scratch.baton();
    cmd.env("KUBECONFIG", &kubeconfig).args([
        "--store",
        "kubernetes:",
        "--key",
        "baton:leader",
        "status",
    ]);
    let out = run(&mut cmd);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("Lease name"),
        "{}",
        text(&out.stderr)
    );
}

/// The settings the demo prints in Demo 1, as `(key, lease, renew, grace)`: the quickest way to
/// see what a run of `baton` took from where.
fn effective(cmd: &mut Command) -> (String, String, String, String) {
    cmd.args([
        "demo",
        "--checks",
        "1",
        "--check-interval",
        "10ms",
        "--work-for",
        "10ms",
        "--batch",
        "10ms",
    ]);
    let out = run(cmd);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    let field = |name: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {stdout}"))
            .to_owned()
    };
    (
        field("Lock Key: "),
        field("Lease Duration: "),
        field("Renew Interval: "),
        field("Grace Period: "),
    )
}

fn owned(v: (&str, &str, &str, &str)) -> (String, String, String, String) {
    (v.0.into(), v.1.into(), v.2.into(), v.3.into())
}

// (d) Flags over environment over config file over defaults.
#[test]
fn config_precedence_flags_env_file_defaults() {
    let scratch = Scratch::new("precedence");
    let toml = scratch.path("baton.toml");
    std::fs::write(
        &toml,
        format!(
            "store = \"{}\"\nkey = \"file:key\"\nlease = \"3s\"\nrenew = \"1s\"\ngrace = \"1s\"\n",
            scratch.store()
        ),
    )
    .unwrap();

    // Defaults (the store is still given, to stay in the scratch directory).
    assert_eq!(
        effective(scratch.baton().args(["--store", &scratch.store()])),
        owned(("baton:leader", "15s", "5s", "5s"))
    );
    // The file.
    assert_eq!(
        effective(scratch.baton().arg("--config").arg(&toml)),
        owned(("file:key", "3s", "1s", "1s"))
    );
    // The file named by BATON_CONFIG; the environment beats it.
    assert_eq!(
        effective(
            scratch
                .baton()
                .env("BATON_CONFIG", &toml)
                .env("BATON_KEY", "env:key")
                .env("BATON_LEASE", "4s")
        ),
        owned(("env:key", "4s", "1s", "1s"))
    );
    // Flags beat the environment, before or after the command.
    let mut cmd = scratch.baton();
    cmd.env("BATON_CONFIG", &toml)
        .env("BATON_KEY", "env:key")
        .env("BATON_LEASE", "4s")
        .args(["--key", "flag:key", "--lease", "5s"]);
    assert_eq!(effective(&mut cmd), owned(("flag:key", "5s", "1s", "1s")));

    // The environment alone.
    assert_eq!(
        effective(
            scratch
                .baton()
                .env("BATON_STORE", scratch.store())
                .env("BATON_RENEW", "2s")
                .env("BATON_GRACE", "3s")
        ),
        owned(("baton:leader", "15s", "2s", "3s"))
    );
}

/// The appsettings.json of the seed's README, byte for byte.
const SEED_APPSETTINGS: &str = r#"{
  "Redis": {
    "ConnectionString": "localhost:6379"
  },
  "LeaderElection": {
    "LockKey": "myapp:leader",
    "LeaseDurationSeconds": 30,
    "RenewIntervalSeconds": 10,
    "GracePeriodSeconds": 15
  }
}
"#;

// (d) A config file copied from the seed's README parses, and runs an election on Redis.
#[test]
fn the_seeds_appsettings_json_parses() {
    let scratch = Scratch::new("appsettings");
    let file = scratch.path("appsettings.json");
    std::fs::write(&file, SEED_APPSETTINGS).unwrap();

    // Copied verbatim, it names the Redis at localhost:6379.
    let out = run(scratch
        .baton()
        .arg("--config")
        .arg(&file)
        .args(["config", "--json"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["store"]["value"], "redis://localhost:6379");
    assert!(
        v["store"]["source"]
            .as_str()
            .unwrap()
            .contains("appsettings.json"),
        "{v}"
    );

    // Pointed at a Redis of the test's own, the same file runs an election.
    let server = baton_testkit::servers::RedisServer::start();
    // The file's 30 s lease is shortened by flags (flags win over the file): on a server that
    // started a moment ago the restart guard holds a new leader back until the server has been
    // up for a lease.
    let own = scratch.path("own-appsettings.json");
    std::fs::write(
        &own,
        SEED_APPSETTINGS.replace("localhost:6379", &format!("127.0.0.1:{}", server.port())),
    )
    .unwrap();
    let out = run(scratch.baton().arg("--config").arg(&own).args(FAST).args([
        "--id",
        "Instance-12345",
        "run",
        "--",
        "true",
    ]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        server.cli(&["EXISTS", "myapp:leader"]),
        "0",
        "released after the run"
    );
    assert_eq!(
        server.cli(&["TYPE", "{myapp:leader}:baton"]),
        "hash",
        "it ran on that Redis"
    );

    // With a store that exists, every other setting comes from the file.
    let mut cmd = scratch.baton();
    cmd.arg("--config")
        .arg(&file)
        .args(["--store", &scratch.store()]);
    assert_eq!(
        effective(&mut cmd),
        owned(("myapp:leader", "30s", "10s", "15s"))
    );
}

// The default store is one SQLite file at a fixed per-user path.
#[test]
fn the_default_store_is_a_per_user_sqlite_file() {
    let scratch = Scratch::new("default-store");
    let (code, value) = {
        let out = run(scratch.baton().args(["status", "--json"]));
        (
            out.status.code(),
            serde_json::from_slice::<Value>(&out.stdout).unwrap(),
        )
    };
    assert_eq!(code, Some(1), "{value}");
    let expected = scratch.path("state").join("baton").join("baton.db");
    assert_eq!(value["store"], format!("sqlite:{}", expected.display()));
    assert!(expected.exists());
}

/// Run `baton` with bad input: exit 2, exactly one line on stderr naming the problem, nothing
/// on stdout, no panic.
fn assert_bad_input(cmd: &mut Command, expected: &str) -> String {
    let out = run(cmd);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{cmd:?}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{cmd:?}: not one line: {stderr}");
    assert!(stderr.starts_with("error: "), "{cmd:?}: {stderr}");
    assert!(
        stderr.contains(expected),
        "{cmd:?}: {stderr} lacks {expected:?}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(text(&out.stdout), "", "{cmd:?}");
    stderr
}

// (e) Every kind of bad input: one line, exit 2.
#[test]
fn bad_input_is_one_line_and_exit_code_2() {
    let s = Scratch::new("bad-input");
    let store = |url: &str| {
        let mut cmd = s.baton();
        cmd.args(["--store", url]);
        cmd
    };
    for command in [
        &["status"][..],
        &["campaign", "--json"],
        &["demo"],
        &["watch"],
    ] {
        assert_bad_input(
            store("zookeeper://zk:2181").args(command),
            "unknown store scheme",
        );
    }
    assert_bad_input(store("/tmp/b.db").arg("status"), "sqlite:/tmp/b.db");
    assert_bad_input(store("sq lite:/x").arg("status"), "not a store URL");
    assert_bad_input(store("sqlite:").arg("status"), "names no file");
    assert_bad_input(store("").arg("status"), "empty");

    // Nothing listens on port 1: unreachable, and the password stays hidden.
    let password = assert_bad_input(
        store("redis://app:hunter2@127.0.0.1:1").arg("status"),
        "Failed to connect to Redis at 127.0.0.1:1. Is Redis running?",
    );
    assert!(!password.contains("hunter2"), "{password}");
    assert!(password.contains("app:****@127.0.0.1"), "{password}");
    assert_bad_input(
        store("redis://127.0.0.1:6379/?tls=maybe").arg("status"),
        "tls",
    );

    // Durations.
    assert_bad_input(
        store(&s.store()).args(["--lease", "2x", "status", "--json"]),
        "--lease",
    );
    assert_bad_input(
        store(&s.store()).arg("status").env("BATON_RENEW", "soon"),
        "BATON_RENEW",
    );
    assert_bad_input(
        store(&s.store()).args(["--lease", "0s", "status"]),
        "greater than 0",
    );
    assert_bad_input(&mut s.baton_fast(&["demo", "--batch", "nope"]), "--batch");
    // renew + grace too large for the lease.
    assert_bad_input(
        store(&s.store()).args([
            "--lease", "2s", "--renew", "1s", "--grace", "1s", "campaign",
        ]),
        "must be less than lease_duration",
    );
    // Empty key and id.
    assert_bad_input(&mut s.baton_fast(&["--key", "", "status"]), "key");
    assert_bad_input(&mut s.baton_fast(&["--id", " ", "campaign"]), "instance_id");

    // Stores that cannot be opened.
    let missing = s.path("no/such/dir/b.db");
    assert_bad_input(
        store(&format!("sqlite:{}", missing.display())).arg("status"),
        "does not exist",
    );
    assert_bad_input(
        store(&format!("sqlite:{}", s.0.display())).arg("status"),
        "is a directory",
    );
    let garbage = s.path("garbage.db");
    std::fs::write(&garbage, vec![0x5a_u8; 8192]).unwrap();
    assert_bad_input(
        store(&format!("sqlite:{}", garbage.display())).args(["campaign", "--json"]),
        "error",
    );

    // Config files.
    assert_bad_input(
        s.baton()
            .args(["--config"])
            .arg(s.path("missing.toml"))
            .arg("status"),
        "cannot read the config file",
    );
    let typo = s.path("typo.toml");
    std::fs::write(&typo, "key = \"k\"\nleese = \"2s\"\n").unwrap();
    assert_bad_input(s.baton().arg("--config").arg(&typo).arg("status"), "line 2");
    let bad_json = s.path("bad.json");
    std::fs::write(
        &bad_json,
        "{\"LeaderElection\": {\"LeaseDurationSeconds\": \"long\"}}",
    )
    .unwrap();
    assert_bad_input(
        s.baton().arg("--config").arg(&bad_json).arg("status"),
        "LeaseDurationSeconds",
    );

    // Usage errors.
    assert_bad_input(
        s.baton().args(["--metrics-addr", "localhost", "status"]),
        "not an address",
    );
    assert_bad_input(s.baton().arg("bogus"), "bogus");
    assert_bad_input(s.baton().args(["status", "--bogus"]), "--bogus");
}

/// Credentials a SQL server rejects are bad input: exit 2, one line that names the user and
/// password in the URL as the fix, and no password; not "store unavailable" retried forever.
/// PostgreSQL (which trusts 127.0.0.1 here, so checks no password): a role that does not
/// exist. MariaDB: a user of the test's own, with a wrong password.
#[test]
fn sql_credentials_the_server_rejects_are_bad_input() {
    let s = Scratch::new("sql-credentials");
    let pg = SqlTable::new(Sql::Postgres);
    let mut my = SqlTable::new(Sql::Mysql);
    let user = format!("baton_cli_{:08x}", fastrand::u32(..));
    Sql::Mysql
        .admin(&format!(
            "CREATE USER '{user}'@'%' IDENTIFIED BY 'right-one'"
        ))
        .unwrap();
    my.users.push(user.clone());
    for url in [
        format!(
            "postgres://baton_nobody_{:08x}:hunter2@127.0.0.1:5432/test?table={}",
            fastrand::u32(..),
            pg.table
        ),
        format!(
            "mysql://{user}:hunter2@127.0.0.1:3306/test?table={}",
            my.table
        ),
    ] {
        for command in [&["status"][..], &["campaign", "--json"], &["watch"]] {
            let line = assert_bad_input(
                s.baton().args(["--store", &url]).args(FAST).args(command),
                "rejected the credentials: check the user and password in the URL",
            );
            assert!(!line.contains("hunter2"), "{line}");
            assert!(line.contains(":****@127.0.0.1"), "{line}");
        }
    }
}

/// The `--store` help, the error for an unknown scheme, the README's table of stores and the
/// URL factory agree: each lists every scheme of `baton::connect::STORE_KINDS`, the one list
/// the factory opens stores by, so none can leave out a store when one is added.
#[test]
fn store_help_error_readme_and_factory_list_the_same_schemes() {
    use baton::connect::{STORE_KINDS, Status, store_from_url};

    let s = Scratch::new("schemes");
    let help = text(&run(s.baton().arg("--help")).stdout);
    let error = assert_bad_input(
        s.baton().args(["--store", "zookeeper://zk:2181", "status"]),
        "unknown store scheme",
    );
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let stores_table = readme
        .split_once("\n## Stores\n")
        .and_then(|(_, rest)| rest.split_once("\n### "))
        .expect("README.md has a Stores section with a table")
        .0;
    let crate_readmes: Vec<(&str, String)> =
        ["crates/baton/README.md", "crates/baton-cli/README.md"]
            .into_iter()
            .map(|path| (path, std::fs::read_to_string(root.join(path)).unwrap()))
            .collect();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _entered = runtime.enter();
    for kind in STORE_KINDS {
        for (i, scheme) in kind.schemes.iter().enumerate() {
            // Schemes whose URLs have no authority are written `scheme:`.
            let in_readme =
                if kind.name == "memory" || kind.name == "sqlite" || *scheme == "kubernetes" {
                    format!("`{scheme}:")
                } else {
                    format!("`{scheme}://")
                };
            assert!(
                stores_table.contains(&in_readme),
                "README.md's table of stores lacks {in_readme}"
            );
            // The packages' own READMEs (their crates.io pages) list the built stores too.
            if kind.status != Status::Planned {
                for crate_readme in &crate_readmes {
                    assert!(
                        crate_readme.1.contains(&in_readme),
                        "{} lacks {in_readme}",
                        crate_readme.0
                    );
                }
            }
            if kind.status == Status::Planned {
                assert!(error.contains(kind.name), "{error}");
                continue;
            }
            let shown = if i == 0 {
                kind.form.to_owned()
            } else {
                format!("{scheme}://")
            };
            assert!(help.contains(&shown), "--help lacks {shown}:\n{help}");
            assert!(error.contains(&shown), "the error lacks {shown}: {error}");
            let url = match kind.name {
                "memory" => "memory:".to_owned(),
                "sqlite" => format!("{scheme}:{}", s.path("factory.db").display()),
                _ => format!("{scheme}://127.0.0.1:1/x"),
            };
            if let Err(e) = store_from_url(&url) {
                let e = e.to_string();
                assert!(!e.contains("unknown store scheme"), "{url}: {e}");
            }
        }
    }
}

/// `--id $'a\nb'` was accepted, and split every JSON line that carried the id. Ids and keys
/// with control characters are bad input now, from every source, and the line shows them
/// escaped.
#[test]
fn an_id_or_key_with_a_control_character_is_bad_input() {
    let s = Scratch::new("control-characters");
    let line = assert_bad_input(
        &mut s.baton_fast(&["--id", "a\nb", "campaign", "--json"]),
        "the id from --id (\"a\\nb\") contains a control character",
    );
    assert!(line.contains("printable"), "{line}");
    assert_bad_input(
        s.baton_fast(&["watch", "--json"])
            .env("BATON_KEY", "jobs\tnightly"),
        "the key from BATON_KEY (\"jobs\\tnightly\") contains a control character",
    );
    assert_bad_input(
        &mut s.baton_fast(&["--key", "\u{1b}[31mred", "status"]),
        "control character",
    );
    let file = s.path("ids.toml");
    std::fs::write(&file, "id = \"w\\u0007\"\n").unwrap();
    assert_bad_input(
        &mut s.baton_fast(&["--config", &file.display().to_string(), "run", "--", "true"]),
        "contains a control character",
    );
}

// The README's API example is the quickstart example, which the build compiles.
#[test]
fn readme_api_example_is_the_compiled_quickstart() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let example =
        std::fs::read_to_string(root.join("crates/baton/examples/quickstart.rs")).unwrap();
    // The example without its header comment.
    let code: String = example
        .lines()
        .skip_while(|l| l.starts_with("//!") || l.is_empty())
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(
        readme.contains(&format!("```rust\n{code}```")),
        "README.md's API example differs from crates/baton/examples/quickstart.rs"
    );
    // The library's own README (its crates.io and docs.rs page) shows the same quick start.
    let crate_readme = std::fs::read_to_string(root.join("crates/baton/README.md")).unwrap();
    assert!(
        crate_readme.contains(&format!("```rust\n{code}```")),
        "crates/baton/README.md's quick start differs from crates/baton/examples/quickstart.rs"
    );
}

// ---------------------------------------------------------------------------------------------
// `baton run`

/// Whether a process exists (and is not a zombie awaiting its reaper).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn wait_for_file(path: &std::path::Path) -> String {
    let until = Instant::now() + PATIENCE;
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && text.ends_with('\n')
        {
            return text.trim().to_owned();
        }
        assert!(Instant::now() < until, "{} never appeared", path.display());
        thread::sleep(Duration::from_millis(20));
    }
}

fn wait_gone(pid: i32, what: &str) {
    let until = Instant::now() + PATIENCE;
    while alive(pid) {
        assert!(Instant::now() < until, "{what} (pid {pid}) is still alive");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn run_passes_the_environment_and_the_exit_code_and_releases() {
    let scratch = Scratch::new("run-env");
    let out = run(&mut scratch.baton_fast(&[
        "--id",
        "worker-1",
        "run",
        "--",
        "sh",
        "-c",
        "echo key=$BATON_KEY id=$BATON_CANDIDATE_ID token=$BATON_FENCING_TOKEN; exit 7",
    ]));
    assert_eq!(out.status.code(), Some(7), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("key=baton:leader id=worker-1 token="),
        "{stdout}"
    );
    let token: u64 = stdout.trim().rsplit('=').next().unwrap().parse().unwrap();
    assert!(token > 0);
    let (code, status) = status_json(&scratch);
    assert_eq!(code, 1, "released when the command exited: {status}");
}

#[test]
fn three_runs_on_one_key_never_have_two_children_alive_at_once() {
    let scratch = Scratch::new("run-three");
    three_runs_never_overlap(&scratch, &scratch.store());
}

#[test]
fn three_runs_on_redis_never_have_two_children_alive_at_once() {
    let scratch = Scratch::new("run-three-redis");
    let server = baton_testkit::servers::RedisServer::start();
    three_runs_never_overlap(&scratch, &server.url());
}

fn three_runs_never_overlap(scratch: &Scratch, store: &str) {
    // Each child takes a directory as a mutual-exclusion probe: mkdir fails if another child
    // still holds it.
    let script = format!(
        "if ! mkdir {held} 2>/dev/null; then echo OVERLAP >> {log}; exit 99; fi; \
         echo start $BATON_FENCING_TOKEN >> {log}; sleep 0.5; rmdir {held}; echo end >> {log}",
        held = scratch.path("held").display(),
        log = scratch.path("log").display(),
    );
    let runs: Vec<Child> = (0..3)
        .map(|i| {
            scratch
                .baton()
                .args(["--store", store])
                .args(FAST)
                .args(["--id", &format!("r{i}"), "run", "--", "sh", "-c", &script])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for run in runs {
        let out = run.wait_with_output().unwrap();
        assert!(out.status.success(), "a run failed: {}", text(&out.stderr));
    }
    let log = std::fs::read_to_string(scratch.path("log")).unwrap();
    assert!(!log.contains("OVERLAP"), "two children at once:\n{log}");
    let tokens: Vec<u64> = log
        .lines()
        .filter_map(|l| l.strip_prefix("start "))
        .map(|t| t.parse().unwrap())
        .collect();
    assert_eq!(tokens.len(), 3, "{log}");
    assert!(tokens.windows(2).all(|w| w[1] > w[0]), "tokens {tokens:?}");
}

#[test]
fn sigkill_of_baton_kills_its_child_and_the_childs_children() {
    let scratch = Scratch::new("run-sigkill");
    let script = format!(
        "sleep 300 & echo $! > {grandchild}; echo $$ > {child}; wait",
        grandchild = scratch.path("grandchild.pid").display(),
        child = scratch.path("child.pid").display(),
    );
    let baton = Running::spawn(scratch.baton_fast(&["run", "--", "sh", "-c", &script]));
    let child: i32 = wait_for_file(&scratch.path("child.pid")).parse().unwrap();
    let grandchild: i32 = wait_for_file(&scratch.path("grandchild.pid"))
        .parse()
        .unwrap();
    assert!(alive(child) && alive(grandchild));
    baton.signal(Signal::KILL);
    wait_gone(child, "the child");
    wait_gone(grandchild, "the grandchild");
}

#[test]
fn sigint_stops_the_child_and_releases_the_lease() {
    let scratch = Scratch::new("run-sigint");
    let script = format!(
        "echo $$ > {}; exec sleep 300",
        scratch.path("child.pid").display()
    );
    let mut baton = Running::spawn(scratch.baton_fast(&["run", "--", "sh", "-c", &script]));
    let child: i32 = wait_for_file(&scratch.path("child.pid")).parse().unwrap();
    baton.signal(Signal::INT);
    let (status, _) = baton.wait_exit();
    assert_eq!(status.code(), Some(0), "{}", baton.stderr());
    assert!(!alive(child));
    let (code, _) = status_json(&scratch);
    assert_eq!(code, 1, "released");
}

#[test]
fn losing_leadership_stops_the_child_and_once_exits_1() {
    let scratch = Scratch::new("run-lost");
    let log = scratch.path("log");
    let script = format!(
        "trap 'echo got-term >> {log}; exit 0' TERM; echo started >> {log}; \
         while true; do sleep 0.05; done",
        log = log.display()
    );
    let mut baton =
        Running::spawn(scratch.baton_fast(&["run", "--once", "--", "sh", "-c", &script]));
    wait_for_file(&log);
    // Someone else takes the lease behind baton's back; its next renewal finds out.
    let db = rusqlite::Connection::open(scratch.path("baton.db")).unwrap();
    db.execute(
        "UPDATE baton_leases SET holder = 'thief', token = token + 1",
        [],
    )
    .unwrap();
    let (status, _) = baton.wait_exit();
    assert_eq!(status.code(), Some(1), "{}", baton.stderr());
    let log = std::fs::read_to_string(&log).unwrap();
    assert_eq!(log, "started\ngot-term\n");
}

#[test]
fn a_run_waits_for_leadership_and_takes_over_when_the_leader_stops() {
    let scratch = Scratch::new("run-takeover");
    let first = format!(
        "echo one > {}; exec sleep 300",
        scratch.path("one").display()
    );
    let second = format!("echo two > {}", scratch.path("two").display());
    let mut a = Running::spawn(scratch.baton_fast(&["--id", "a", "run", "--", "sh", "-c", &first]));
    wait_for_file(&scratch.path("one"));
    let b = Running::spawn(scratch.baton_fast(&["--id", "b", "run", "--", "sh", "-c", &second]));
    thread::sleep(Duration::from_millis(300));
    assert!(
        !scratch.path("two").exists(),
        "b must not run while a leads"
    );
    a.signal(Signal::TERM);
    assert_eq!(a.wait_exit().0.code(), Some(0));
    wait_for_file(&scratch.path("two"));
    drop(b);
}

#[test]
fn run_rejects_a_missing_command_and_a_kill_after_that_cannot_fit() {
    let s = Scratch::new("run-bad");
    assert_bad_input(&mut s.baton_fast(&["run"]), "<CMD>");
    assert_bad_input(&mut s.baton_fast(&["run", "--"]), "<CMD>");
    // FAST is a 2 s lease with 500 ms renew and grace: less than a second to stop the child.
    assert_bad_input(
        &mut s.baton_fast(&["run", "--kill-after", "5s", "--", "true"]),
        "does not fit",
    );
    assert_bad_input(
        &mut s.baton_fast(&["run", "--kill-after", "soon", "--", "true"]),
        "--kill-after",
    );
    assert_bad_input(
        &mut s.baton_fast(&["run", "--", "/no/such/program"]),
        "cannot run",
    );
}

// ---------------------------------------------------------------------------------------------
// --metrics-addr

/// GET `path` from `port` over plain HTTP/1.0; returns (status code, body).
fn http_get(port: u16, path: &str) -> (u16, String) {
    use std::io::Write;
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).expect("the exporter listens");
    write!(conn, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, body.to_owned())
}

fn free_port() -> u16 {
    baton_testkit::servers::free_port()
}

#[test]
fn metrics_and_healthz_are_served_and_parse_as_prometheus_text() {
    let scratch = Scratch::new("metrics");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut baton = Running::spawn(scratch.baton_fast(&[
        "--metrics-addr",
        &addr,
        "--id",
        "m",
        "campaign",
        "--json",
    ]));
    baton.wait_event("became_leader", None);
    // A renewal or two, so the latency histogram has samples.
    thread::sleep(Duration::from_millis(1200));
    let (code, text) = http_get(port, "/metrics");
    assert_eq!(code, 200, "{text}");
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text format");
    let value = |name: &str| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name)
            .map(|s| s.value.clone())
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    };
    assert!(matches!(value("baton_is_leader"), prometheus_parse::Value::Gauge(v) if v == 1.0));
    assert!(
        matches!(value("baton_transitions_total"), prometheus_parse::Value::Counter(v) if v >= 1.0)
    );
    assert!(
        matches!(value("baton_time_to_deadline_seconds"), prometheus_parse::Value::Gauge(v) if v > 0.0)
    );
    assert!(
        matches!(value("baton_leaderless_seconds"), prometheus_parse::Value::Gauge(v) if v == 0.0)
    );
    assert!(
        matches!(
            value("baton_renew_duration_seconds"),
            prometheus_parse::Value::Histogram(_)
        ),
        "{text}"
    );
    let (code, body) = http_get(port, "/healthz");
    assert_eq!((code, body.trim()), (200, "ok: leading, renewals on time"));
    assert_eq!(http_get(port, "/nope").0, 404);
    baton.signal(Signal::INT);
    assert_eq!(baton.wait_exit().0.code(), Some(0));
}

#[test]
fn a_metrics_address_in_use_is_bad_input() {
    let scratch = Scratch::new("metrics-busy");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    assert_bad_input(
        &mut scratch.baton_fast(&["--metrics-addr", &addr, "campaign"]),
        "cannot serve metrics",
    );
}

#[test]
fn config_prints_effective_settings_with_sources_and_hides_passwords() {
    let s = Scratch::new("config");
    std::fs::create_dir_all(s.path("cfg/baton")).unwrap();
    // The conventional default config file, in the user's config directory.
    std::fs::write(
        s.path("cfg/baton/config.toml"),
        "key = \"from-file\"\ngrace = \"4s\"\n",
    )
    .unwrap();
    let out = run(s
        .baton()
        .env("XDG_CONFIG_HOME", s.path("cfg"))
        .env("BATON_LEASE", "30s")
        .args([
            "--store",
            "redis://app:hunter2@cache:6379",
            "--renew",
            "3s",
            "config",
            "--json",
        ]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["store"]["value"], "redis://app:****@cache:6379");
    assert_eq!(v["store"]["source"], "--store");
    assert_eq!(v["lease"]["value"], "30s");
    assert_eq!(v["lease"]["source"], "BATON_LEASE");
    assert_eq!(v["renew"]["source"], "--renew");
    assert_eq!(v["key"]["value"], "from-file");
    assert!(
        v["key"]["source"].as_str().unwrap().contains("config.toml"),
        "{v}"
    );
    assert_eq!(v["grace"]["value"], "4s");
    assert!(!text(&out.stdout).contains("hunter2"));
}

#[test]
fn completions_are_printed_for_each_shell() {
    let s = Scratch::new("completions");
    for shell in ["bash", "zsh", "fish"] {
        let out = run(s.baton().args(["completions", shell]));
        assert!(out.status.success());
        assert!(text(&out.stdout).contains("campaign"), "{shell}");
    }
}

// ---------------------------------------------------------------------------------------------
// The library's examples (crates/baton/examples), run as their headers say.

/// The path of the `baton` crate's example `name`, built as `scripts/test` and `scripts/bench`
/// build the workspace (`cargo build --workspace --all-features --examples`, which is up to
/// date at once after their test build), in the profile of this test binary.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/cli-<hash> -> target/<profile>
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let mut build = Command::new(env!("CARGO"));
    build
        .args([
            "build",
            "--workspace",
            "--all-features",
            "--examples",
            "--quiet",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        build.arg("--release");
    }
    // Without the variables cargo sets for this test's package: a build script that reads one
    // (ring's reads CARGO_MANIFEST_DIR) would otherwise run again, and the whole workspace be
    // rebuilt, on every call.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_BIN_")
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_CRATE_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "OUT_DIR",
            ]
            .contains(&&*name)
        {
            build.env_remove(&*name);
        }
    }
    let out = build.output().expect("cargo runs");
    assert!(
        out.status.success(),
        "building the examples failed: {}",
        text(&out.stderr)
    );
    let bin = profile_dir.join("examples").join(name);
    assert!(bin.exists(), "{} was not built", bin.display());
    bin
}

/// The first line `proc` prints that starts with `prefix`.
fn line_starting(proc: &mut Running, prefix: &str) -> String {
    proc.wait_line(prefix, |l| l.starts_with(prefix))
}

/// GET `/leader` from an `http_service` copy until `want` holds; the last answer.
fn leader_view(port: u16, what: &str, want: impl Fn(&Value) -> bool) -> Value {
    let until = Instant::now() + PATIENCE;
    loop {
        let (code, body) = http_get(port, "/leader");
        assert_eq!(code, 200, "{body}");
        let view: Value = serde_json::from_str(&body).expect("JSON from /leader");
        if want(&view) {
            return view;
        }
        assert!(Instant::now() < until, "{what}: still {view}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// The port an `http_service` copy printed it listens on.
fn listening_port(copy: &mut Running) -> u16 {
    let line = line_starting(copy, "listening on http://");
    line.trim_start_matches("listening on http://127.0.0.1:")
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"))
}

/// `examples/http_service.rs`: two copies on one SQLite file (`BATON_STORE`); one runs the job
/// and both report it as the leader on `GET /leader`; when it stops (SIGINT), the other leads
/// and runs the job; `EXAMPLE_RUN_FOR` stops a copy by itself.
#[test]
fn the_http_service_example_runs_its_job_in_one_copy_and_hands_it_over() {
    let s = Scratch::new("example-http");
    let bin = example("http_service");
    let copy = |id: &str, run_for: &str| {
        let mut cmd = Command::new(&bin);
        cmd.env_clear()
            .env("BATON_STORE", s.store())
            .env("BATON_ID", id)
            .env("PORT", "0")
            .env("EXAMPLE_RUN_FOR", run_for)
            .stdin(Stdio::null());
        Running::spawn(cmd)
    };
    let mut one = copy("web-1", "60s");
    let port_one = listening_port(&mut one);
    let view = leader_view(port_one, "web-1 leads and runs its job", |v| {
        v["is_leader"] == true && v["job_runs"].as_u64() >= Some(1)
    });
    assert_eq!(view["candidate"], "web-1", "{view}");
    assert_eq!(view["leader"], "web-1", "{view}");
    let token = view["token"]
        .as_u64()
        .expect("a fencing token while leading");
    // The job's first line may come before or after the one naming the port.
    let first_run = format!("job run 1 with fencing token {token}");
    if !one.seen.contains(&first_run) {
        one.wait_line(&first_run, |l| l == first_run);
    }

    let mut two = copy("web-2", "60s");
    let port_two = listening_port(&mut two);
    let view = leader_view(port_two, "web-2 sees web-1 lead", |v| {
        v["leader"] == "web-1"
    });
    assert_eq!(view["is_leader"], false, "{view}");
    assert!(view["token"].is_null(), "{view}");
    assert_eq!(view["job_runs"], 0, "{view}");

    one.signal(Signal::INT);
    let (status, _) = one.wait_exit();
    assert!(status.success(), "{}", one.stderr());
    let view = leader_view(port_two, "web-2 takes over", |v| {
        v["is_leader"] == true && v["job_runs"].as_u64() >= Some(1)
    });
    assert!(view["token"].as_u64() > Some(token), "{view}");
    two.signal(Signal::TERM);
    let (status, lines) = two.wait_exit();
    assert!(status.success(), "{}", two.stderr());
    assert_eq!(
        lines.last().map(String::as_str),
        Some("stopped"),
        "{lines:?}"
    );

    let mut three = copy("web-3", "300ms");
    listening_port(&mut three);
    let (status, _) = three.wait_exit();
    assert!(status.success(), "{}", three.stderr());
}

/// `examples/fencing_postgres.rs` against the machine's PostgreSQL, in tables of the test's
/// own: the stale leader's write is refused, and the counter holds the later leader's token.
#[test]
fn the_fencing_example_refuses_the_stale_leaders_write() {
    let leases = SqlTable::new(Sql::Postgres);
    let counter = SqlTable::new(Sql::Postgres);
    let out = run(Command::new(example("fencing_postgres"))
        .env("DATABASE_URL", Sql::Postgres.base())
        .env("BATON_STORE", leases.url())
        .env("EXAMPLE_TABLE", &counter.table));
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(
        lines[0].starts_with("a leads with fencing token 1; its write: accepted"),
        "{stdout}"
    );
    assert!(
        lines[1].starts_with("b leads with fencing token 2; its write: accepted"),
        "{stdout}"
    );
    assert!(
        lines[2].starts_with("a, whose term has ended, writes with token 1: refused (the table has accepted token 2; value 2)"),
        "{stdout}"
    );
}

// ---------------------------------------------------------------------------------------------
// The machine's SQL servers

/// The machine's PostgreSQL and MariaDB (or MySQL), as `scripts/test` starts them: superuser
/// without a password, database `test`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sql {
    Postgres,
    Mysql,
}

impl Sql {
    /// The server's base URL, as its superuser.
    fn base(self) -> &'static str {
        match self {
            Sql::Postgres => "postgres://postgres@127.0.0.1:5432/test",
            Sql::Mysql => "mysql://root@127.0.0.1:3306/test",
        }
    }

    /// Fail loudly, naming the fix, unless the server listens.
    fn require(self) {
        let (port, what, start) = match self {
            Sql::Postgres => (
                5432,
                "PostgreSQL",
                "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
            ),
            Sql::Mysql => (
                3306,
                "MariaDB",
                "start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd",
            ),
        };
        let addr = ([127, 0, 0, 1], port).into();
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err() {
            panic!(
                "{what} is not running on 127.0.0.1:{port}; this test needs it. Start it with \
                 `{start}` (scripts/test does this in its \"servers\" step)"
            );
        }
    }

    /// Run SQL as the superuser with the command-line client; the error is its stderr.
    fn admin(self, sql: &str) -> Result<(), String> {
        let out = match self {
            Sql::Postgres => Command::new("psql")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-U",
                    "postgres",
                    "-d",
                    "test",
                    "-q",
                    "-c",
                    sql,
                ])
                .output(),
            Sql::Mysql => Command::new("mysql")
                .args(["-h", "127.0.0.1", "-u", "root", "test", "-e", sql])
                .output(),
        }
        .map_err(|e| format!("{sql}: the command-line client does not run: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("{sql}: {}", text(&out.stderr)))
        }
    }
}

/// A lease table of this test's own on a machine's SQL server, dropped (with the users it
/// lists) when dropped.
struct SqlTable {
    sql: Sql,
    table: String,
    users: Vec<String>,
}

impl SqlTable {
    fn new(sql: Sql) -> SqlTable {
        sql.require();
        SqlTable {
            sql,
            table: format!("baton_cli_{:012x}", fastrand::u64(..) >> 16),
            users: Vec::new(),
        }
    }

    /// The store URL: the superuser, this table.
    fn url(&self) -> String {
        format!("{}?table={}", self.sql.base(), self.table)
    }
}

impl Drop for SqlTable {
    fn drop(&mut self) {
        // The lease table and its presence records (`<table>_candidates`).
        let mut statements = vec![
            format!("DROP TABLE IF EXISTS {}", self.table),
            format!("DROP TABLE IF EXISTS {}_candidates", self.table),
        ];
        for user in &self.users {
            statements.push(match self.sql {
                Sql::Postgres => format!("DROP ROLE IF EXISTS {user}"),
                Sql::Mysql => format!("DROP USER IF EXISTS '{user}'@'%'"),
            });
        }
        for statement in statements {
            if let Err(e) = self.sql.admin(&statement) {
                eprintln!("cleaning up: {e}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// baton handoff

/// `a` leads, `b` and `c` follow; `baton handoff --to c` moves leadership to `c`: `a` reports
/// the end of its term as `handed_over`, `c` becomes leader with a greater token, `b` never
/// does, and the command exits 0 with the new leader.
fn handoff_moves_leadership_to_the_named_candidate(scratch: &Scratch, store: &str) {
    let baton = |args: &[&str]| {
        let mut cmd = scratch.baton();
        cmd.args(["--store", store, "--key", "handed-leader"])
            .args(FAST)
            .args(args);
        cmd
    };
    let mut a = Running::spawn(baton(&["--id", "a", "campaign", "--json"]));
    let first = a.wait_event("became_leader", None);
    let mut b = Running::spawn(baton(&["--id", "b", "campaign", "--json"]));
    let mut c = Running::spawn(baton(&["--id", "c", "campaign", "--json"]));
    b.wait_event("leader_changed", Some("a"));
    c.wait_event("leader_changed", Some("a"));

    let out = run(&mut baton(&["handoff", "--to", "c", "--json"]));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let line: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["handed_over"], true, "{line}");
    assert_eq!(line["from"], "a", "{line}");
    assert_eq!(line["to"], "c", "{line}");
    assert_eq!(line["leader"], "c", "{line}");
    // The leader sees the request at its next renewal (every 500 ms here).
    assert!(line["took_ms"].as_f64().unwrap() < 2000.0, "{line}");

    let became = c.wait_event("became_leader", Some("c"));
    assert!(became["token"].as_u64() > first["token"].as_u64());
    let lost = a.wait_line("a's handoff", |l| l.contains("lost_leadership"));
    let lost: Value = serde_json::from_str(&lost).unwrap();
    assert_eq!(lost["reason"], "handed_over", "{lost}");
    a.wait_event("leader_changed", Some("c"));
    // b stops first: were c's release on stopping to reach b while it still ran, b would
    // lead (as it may then), which is not what this test looks for.
    b.signal(Signal::INT);
    let b_exit = b.wait_exit();
    for r in [&a, &c] {
        r.signal(Signal::INT);
    }
    for (name, r) in [("a", &mut a), ("b", &mut b), ("c", &mut c)] {
        let (status, lines) = if name == "b" {
            b_exit.clone()
        } else {
            r.wait_exit()
        };
        assert!(status.success(), "{name}: {}", r.stderr());
        if name == "b" {
            assert!(
                !lines.iter().any(|l| l.contains("became_leader")),
                "b led: {lines:?}"
            );
        }
    }
}

#[test]
fn handoff_moves_leadership_to_the_named_candidate_on_sqlite() {
    let scratch = Scratch::new("handoff-sqlite");
    handoff_moves_leadership_to_the_named_candidate(&scratch, &scratch.store());
}

#[test]
fn handoff_moves_leadership_to_the_named_candidate_on_redis() {
    let scratch = Scratch::new("handoff-redis");
    let server = baton_testkit::servers::RedisServer::start();
    handoff_moves_leadership_to_the_named_candidate(&scratch, &server.url());
}

/// `--priority`: a follower with a higher priority than the leader's takes the lease over by
/// a planned handoff (the leader's term ends `handed_over`), an equal one does not; `status`
/// lists the running candidates with their priorities.
#[test]
fn a_higher_priority_takes_the_lease_over_and_status_lists_the_candidates() {
    let scratch = Scratch::new("priority");
    let mut a =
        Running::spawn(scratch.baton_fast(&["--id", "a", "--priority", "1", "campaign", "--json"]));
    let first = a.wait_event("became_leader", None);
    let mut b =
        Running::spawn(scratch.baton_fast(&["--id", "b", "--priority", "1", "campaign", "--json"]));
    b.wait_event("leader_changed", Some("a"));
    let mut c =
        Running::spawn(scratch.baton_fast(&["--id", "c", "--priority", "7", "campaign", "--json"]));
    let became = c.wait_event("became_leader", Some("c"));
    assert!(became["token"].as_u64() > first["token"].as_u64());
    let lost = a.wait_line("a's handoff", |l| l.contains("lost_leadership"));
    assert!(lost.contains("handed_over"), "{lost}");

    let (code, status) = status_json(&scratch);
    assert_eq!(code, 0, "{status}");
    assert_eq!(status["leader"], "c", "{status}");
    let candidates: Vec<(String, u64)> = status["candidates"]
        .as_array()
        .unwrap_or_else(|| panic!("{status}"))
        .iter()
        .map(|c| {
            (
                c["id"].as_str().unwrap().to_owned(),
                c["priority"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        candidates,
        [("a".into(), 1), ("b".into(), 1), ("c".into(), 7)],
        "{status}"
    );
    let out = run(&mut scratch.baton_fast(&["status"]));
    assert!(
        text(&out.stdout).contains("Candidates: a (priority 1), b (priority 1), c (priority 7)"),
        "{}",
        text(&out.stdout)
    );

    let out = run(&mut scratch.baton_fast(&["--priority", "high", "status"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("is not a whole number"),
        "{}",
        text(&out.stderr)
    );

    // b first: once c stops, b could lead on the way out.
    b.signal(Signal::INT);
    let (status, lines) = b.wait_exit();
    assert!(status.success(), "b: {}", b.stderr());
    assert!(
        !lines.iter().any(|l| l.contains("became_leader")),
        "b has the same priority as a and never led: {lines:?}"
    );
    for r in [&a, &c] {
        r.signal(Signal::INT);
    }
    for (name, r) in [("a", &mut a), ("c", &mut c)] {
        let (status, _) = r.wait_exit();
        assert!(status.success(), "{name}: {}", r.stderr());
    }
}

// etcd: the mark and the request beside the election's prefix.
#[test]
fn handoff_moves_leadership_to_the_named_candidate_on_etcd() {
    let scratch = Scratch::new("handoff-etcd");
    let server = baton_testkit::etcd_server::EtcdServer::start();
    handoff_moves_leadership_to_the_named_candidate(&scratch, &server.url());
}

// Kubernetes (the fake API server) and Consul (the fake agent): planned handoff.

#[test]
fn handoff_moves_leadership_to_the_named_candidate_on_kubernetes() {
    let scratch = Scratch::new("handoff-kubernetes");
    let server = baton_testkit::fake_k8s::FakeK8sProcess::start();
    let url = format!("kubernetes+http://127.0.0.1:{}", server.port());
    handoff_moves_leadership_to_the_named_candidate(&scratch, &url);
}

#[test]
fn handoff_moves_leadership_to_the_named_candidate_on_consul() {
    let scratch = Scratch::new("handoff-consul");
    let server = baton_testkit::fake_consul::FakeConsulProcess::start();
    handoff_moves_leadership_to_the_named_candidate(&scratch, &server.store_url());
}

// PostgreSQL and MySQL/MariaDB: a table of the test's own on the machine's servers.

#[test]
fn handoff_moves_leadership_to_the_named_candidate_on_postgres() {
    let scratch = Scratch::new("handoff-postgres");
    let table = SqlTable::new(Sql::Postgres);
    handoff_moves_leadership_to_the_named_candidate(&scratch, &table.url());
}

#[test]
fn handoff_moves_leadership_to_the_named_candidate_on_mysql() {
    let scratch = Scratch::new("handoff-mysql");
    let table = SqlTable::new(Sql::Mysql);
    handoff_moves_leadership_to_the_named_candidate(&scratch, &table.url());
}

// Kubernetes (a Lease per candidate) and Consul (pairs under PREFIX/.candidates/): presence
// records, so priorities and the candidates `status` lists.

fn a_higher_priority_takes_over_and_status_lists_the_candidates_on(scratch: &Scratch, store: &str) {
    let baton = |args: &[&str]| {
        let mut cmd = scratch.baton();
        cmd.args(["--store", store, "--key", "prio-leader"])
            .args(FAST)
            .args(args);
        cmd
    };
    let mut a = Running::spawn(baton(&[
        "--id",
        "a",
        "--priority",
        "1",
        "campaign",
        "--json",
    ]));
    let first = a.wait_event("became_leader", None);
    let mut c = Running::spawn(baton(&[
        "--id",
        "c",
        "--priority",
        "7",
        "campaign",
        "--json",
    ]));
    let became = c.wait_event("became_leader", Some("c"));
    assert!(became["token"].as_u64() > first["token"].as_u64());
    let lost = a.wait_line("a's handoff", |l| l.contains("lost_leadership"));
    assert!(lost.contains("handed_over"), "{lost}");
    let candidates = || {
        let out = run(&mut baton(&["status", "--json"]));
        let status: Value = serde_json::from_slice(&out.stdout).unwrap();
        let mut listed: Vec<(String, u64)> = status["candidates"]
            .as_array()
            .unwrap_or_else(|| panic!("{status}"))
            .iter()
            .map(|c| {
                (
                    c["id"].as_str().unwrap().to_owned(),
                    c["priority"].as_u64().unwrap(),
                )
            })
            .collect();
        listed.sort();
        listed
    };
    assert_eq!(candidates(), [("a".into(), 1), ("c".into(), 7)]);
    for r in [&a, &c] {
        r.signal(Signal::INT);
    }
    for r in [&mut a, &mut c] {
        let (status, _) = r.wait_exit();
        assert!(status.success());
    }
}

#[test]
fn a_higher_priority_takes_over_and_status_lists_the_candidates_on_kubernetes() {
    let scratch = Scratch::new("priority-kubernetes");
    let server = baton_testkit::fake_k8s::FakeK8sProcess::start();
    let url = format!("kubernetes+http://127.0.0.1:{}", server.port());
    a_higher_priority_takes_over_and_status_lists_the_candidates_on(&scratch, &url);
}

#[test]
fn a_higher_priority_takes_over_and_status_lists_the_candidates_on_consul() {
    let scratch = Scratch::new("priority-consul");
    let server = baton_testkit::fake_consul::FakeConsulProcess::start();
    a_higher_priority_takes_over_and_status_lists_the_candidates_on(&scratch, &server.store_url());
}

/// What `baton handoff` answers when it cannot do what was asked: nobody leads (1), an id that
/// cannot be one (2), the leader itself (0, nothing to do), an id no candidate runs under (2),
/// a candidate that dies before it takes over (1 when the time runs out; the others then elect
/// a leader once the mark runs out). Every store Baton ships takes requests; a store that
/// keeps the trait's default refuses them (`request_handoff`'s docs).
#[test]
fn handoff_says_when_there_is_nothing_to_do_or_it_cannot_be_done() {
    let scratch = Scratch::new("handoff-errors");
    let out = run(&mut scratch.baton_fast(&["handoff"]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("No leader"),
        "{}",
        text(&out.stdout)
    );

    let out = run(&mut scratch.baton_fast(&["handoff", "--to", " "]));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("not a candidate id"),
        "{}",
        text(&out.stderr)
    );

    let mut a = campaign(&scratch, "a");
    a.wait_event("became_leader", None);
    let mut b = campaign(&scratch, "b");
    b.wait_event("leader_changed", Some("a"));
    let out = run(&mut scratch.baton_fast(&["handoff", "--to", "a"]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("a already leads"),
        "{}",
        text(&out.stdout)
    );

    // A name no candidate runs under: bad input, and nothing is asked of the leader.
    let out =
        run(&mut scratch.baton_fast(&["handoff", "--to", "ghost", "--timeout", "1s", "--json"]));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("no live candidate \"ghost\"")
            && text(&out.stderr).contains("running: a, b"),
        "{}",
        text(&out.stderr)
    );
    let (_, status) = status_json(&scratch);
    assert_eq!(status["leader"], "a", "{status}");
    assert_eq!(status["handoff"], Value::Null, "{status}");

    // A candidate that dies before it takes over: its presence record outlives it by up to a
    // lease, so the request is made, and the handoff falls back when the mark runs out.
    let mut c = campaign(&scratch, "c");
    c.wait_event("leader_changed", Some("a"));
    // Its presence record is written beside the first attempt: wait until it shows.
    let shows_c = (0..100).any(|_| {
        let (_, status) = status_json(&scratch);
        let has_c = status["candidates"]
            .as_array()
            .is_some_and(|l| l.iter().any(|c| c["id"] == "c"));
        if !has_c {
            thread::sleep(Duration::from_millis(20));
        }
        has_c
    });
    assert!(shows_c, "c's presence record never showed");
    c.signal(Signal::KILL);
    c.wait_exit();
    let out = run(&mut scratch.baton_fast(&["handoff", "--to", "c", "--timeout", "1s", "--json"]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let line: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["handed_over"], false, "{line}");
    let lost = a.wait_line("a's handoff", |l| l.contains("lost_leadership"));
    assert!(lost.contains("handed_over"), "{lost}");
    // The mark for the missing candidate runs out after one lease (2 s): then someone leads.
    let (_, status) = (0..100)
        .map(|_| {
            thread::sleep(Duration::from_millis(100));
            status_json(&scratch)
        })
        .find(|(code, _)| *code == 0)
        .expect("a leader after the mark ran out");
    assert!(
        status["leader"] == "a" || status["leader"] == "b",
        "{status}"
    );
}
