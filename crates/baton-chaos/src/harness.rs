//! One run: start the store and the candidates, inject the scenario's faults on a seeded
//! schedule, stop everything, and hand the records to the checker.
//!
//! Every candidate is the real `baton` binary:
//!
//! ```text
//! baton --store URL --key chaos --id c<slot>-<incarnation> --lease 1500ms --renew 300ms
//!       --grace 300ms -v run -- baton-chaos worker --log worker-<id>.log --register register.sock
//! ```
//!
//! with its stdout and stderr in `baton-<id>.log` of the run's directory. The stores:
//!
//! * **SQLite**: a file in the run's directory, opened by every candidate itself.
//! * **Redis**: a `redis-server` of the run's own, without persistence.
//! * **PostgreSQL**: the machine's server on `127.0.0.1:5432` (user `postgres`, database
//!   `test`, no password), in a lease table of the run's own (`baton_chaos_<random>`, so runs,
//!   parallel ones too, never meet; its `NOTIFY` channel is named after it), dropped with
//!   `psql` when the run ends. The server is shared, so it is never restarted.
//! * **etcd**: an `etcd` of the run's own (single member, data directory of its own), which a
//!   store restart SIGKILLs and starts again on the same data directory.
//! * **Kubernetes**: a fake API server of the run's own (`baton-fake-k8s`, built next to the
//!   harness; `BATON_FAKE_K8S` names another), with bookmarks every 200 ms and its Leases in a
//!   state file, which a store restart SIGKILLs and starts again on the same port and state
//!   file. The key is the Lease `chaos` in namespace `default`.
//! * **Consul**: a fake agent of the run's own (`baton-fake-consul`, built next to the harness;
//!   `BATON_FAKE_CONSUL` names another), with its KV pairs and sessions in a state file, which
//!   a store restart SIGKILLs and starts again on the same port and state file. The key is the
//!   pair `chaos/.lock`.
//! * **Redis Sentinel** and **Redis Cluster**: a deployment of the run's own that fails over
//!   ([`redis_ha`](baton_testkit::redis_ha)); the candidates reach its servers directly, and the
//!   failover scenarios fail its master over under them.
//! * **MySQL**: the machine's MariaDB on `127.0.0.1:3306` (user `root`, database `test`, no
//!   password), in a lease table of the run's own (`baton_chaos_<random>`), dropped with its
//!   presence table when the run ends, and never restarted, as PostgreSQL's.
//!
//! On every store but SQLite each candidate slot reaches the server through a [`FaultProxy`]
//! of its own (every connection of the candidate: PostgreSQL's pool and its `LISTEN`
//! connection, etcd's one HTTP/2 connection, the Kubernetes client's requests and its watch,
//! the Consul client's requests and its blocking queries, MySQL's pool, its term-lock
//! connection and its followers' `GET_LOCK` waits),
//! so one candidate can be partitioned from the store while the others are not. Candidates die with the thread that
//! runs the harness (the parent-death signal), so an interrupted harness leaves nothing behind.
//!
//! Random choices (which fault, how long, how each worker reacts to SIGTERM, the settle times)
//! are drawn from one RNG seeded with the run's seed, so a schedule can be replayed with
//! `--seed`. Process scheduling is not replayed: a replay runs the same schedule, not the same
//! interleaving.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use baton::store::LeaseStore;
use baton::store::consul::ConsulStore;
use baton::store::kubernetes::KubernetesStore;
use baton_testkit::etcd_server::EtcdServer;
use baton_testkit::fake_consul::{FakeConsulOptions, FakeConsulProcess, fake_consul_binary};
use baton_testkit::fake_k8s::{FakeK8sOptions, FakeK8sProcess, fake_k8s_binary};
use baton_testkit::proxy::{FaultProxy, ProxyMode};
use baton_testkit::redis_ha::RedisHa;
use baton_testkit::servers::RedisServer;
use rustix::process::{Pid, Signal};

use crate::check::{self, Analysis, Bounds};
use crate::records::{
    self, Episode, Kill, Observations, Pause, RegisterEntry, Violation, ViolationKind, ms, rel,
};
use crate::register::Register;
use crate::scenario::{RunSpec, Scenario, Store};
use crate::worker::OnTerm;

mod etcd3;

/// The election key every candidate campaigns for (on Kubernetes, a Lease's name).
const KEY: &str = "chaos";

/// The namespace of the Kubernetes runs' Lease.
const K8S_NAMESPACE: &str = "default";

/// How often the fake Kubernetes API server sends a bookmark to each watch: far more often
/// than a real one (about a minute), so the runs exercise bookmarks.
const K8S_BOOKMARKS: Duration = Duration::from_millis(200);

/// How recent a register write must be for its writer to count as the acting leader.
const FRESH: Duration = Duration::from_millis(100);

/// How often the harness looks at its processes and the register.
const TICK: Duration = Duration::from_millis(10);

/// How long a `baton` may take to stop after SIGTERM before it counts as hung.
const STOP_LIMIT: Duration = Duration::from_secs(5);

/// How long the first leader may take to appear.
const FIRST_LEADER_LIMIT: Duration = Duration::from_secs(15);

/// The machine's PostgreSQL, which PostgreSQL runs share (each in a table of its own).
const POSTGRES_ADDR: ([u8; 4], u16) = ([127, 0, 0, 1], 5432);

/// Environment variables `baton` reads, removed so the caller's settings cannot leak in.
const BATON_ENV: &[&str] = &[
    "BATON_STORE",
    "BATON_KEY",
    "BATON_ID",
    "BATON_LEASE",
    "BATON_RENEW",
    "BATON_GRACE",
    "BATON_CONFIG",
    "BATON_METRICS_ADDR",
    "RUST_LOG",
];

/// What every run of a harness shares.
#[derive(Debug, Clone)]
pub struct Config {
    /// The `baton` binary.
    pub baton: PathBuf,
    /// The `baton-chaos` binary, re-run as `baton-chaos worker`.
    pub worker: PathBuf,
    /// How many candidates campaign at once.
    pub candidates: usize,
    /// `--lease`.
    pub lease: Duration,
    /// `--renew`.
    pub renew: Duration,
    /// `--grace`.
    pub grace: Duration,
    /// Faults per run.
    pub episodes: usize,
    /// A fixed duration for every fault, instead of a seeded one.
    pub fault_duration: Option<Duration>,
    /// Run the candidates with the hidden `--unsafe-ignore-deadline-for-testing` flag: the
    /// unsafe variant the checker must catch.
    pub unsafe_ignore_deadline: bool,
    /// Where run directories go.
    pub work_dir: PathBuf,
    /// Keep every run's directory, not only those of failed runs.
    pub keep_logs: bool,
    /// The candidates' `RUST_LOG` (for example `info,baton=debug`), instead of `-v` (info):
    /// what their logs in the run directory show.
    pub candidate_log: Option<String>,
}

impl Config {
    /// The defaults: three candidates, a 1.5 s lease renewed every 300 ms with a 300 ms grace
    /// period, two faults per run.
    pub fn new(baton: PathBuf, worker: PathBuf) -> Config {
        Config {
            baton,
            worker,
            candidates: 3,
            lease: Duration::from_millis(1500),
            renew: Duration::from_millis(300),
            grace: Duration::from_millis(300),
            episodes: 2,
            fault_duration: None,
            unsafe_ignore_deadline: false,
            work_dir: std::env::temp_dir().join(format!("baton-chaos-{}", std::process::id())),
            keep_logs: false,
            candidate_log: None,
        }
    }

    /// `baton run`'s default `--kill-after` for these options: a quarter of the lease, at most
    /// 10 s and at most half of the library's
    /// [`shutdown_budget`](baton::ElectionOptions::shutdown_budget) (what is left of the lease
    /// after `renew + grace` and the skew margin).
    pub fn kill_after(&self) -> Duration {
        let budget = baton::ElectionOptions::new()
            .with_lease_duration(self.lease)
            .with_renew_interval(self.renew)
            .with_grace_period(self.grace)
            .shutdown_budget();
        (self.lease / 4)
            .min(Duration::from_secs(10))
            .min(budget / 2)
    }

    /// How long `store` keeps a lease that is no longer renewed: `--lease`, except on etcd,
    /// whose lease TTLs are whole seconds, at least etcd's minimum (2 s with the defaults the
    /// run's own etcd keeps): the library's rule, [`baton::store::etcd::granted_ttl`]; and on
    /// Kubernetes, whose `leaseDurationSeconds` are whole seconds, rounded up (the Kubernetes
    /// store's [`granted_ttl`](LeaseStore::granted_ttl)). With `--lease 1500ms` both are 2 s.
    /// The engine's own deadline (and so `--kill-after`) still comes from `--lease`.
    pub fn effective_lease(&self, store: Store) -> Duration {
        match store {
            Store::Etcd | Store::Etcd3 => baton::store::etcd::granted_ttl(self.lease),
            Store::Kubernetes => {
                // Opening connects to nothing: the store only answers its rule here.
                KubernetesStore::open("kubernetes+http://127.0.0.1:1")
                    .expect("a valid Kubernetes store URL")
                    .granted_ttl(self.lease)
            }
            Store::Consul => ConsulStore::open("consul://127.0.0.1:1")
                .expect("a valid Consul store URL")
                .granted_ttl(self.lease),
            Store::Sqlite
            | Store::Redis
            | Store::Postgres
            | Store::Mysql
            | Store::RedisSentinel
            | Store::RedisCluster => self.lease,
        }
    }

    /// What the checker allows with these options on `store`. Liveness is the store's
    /// [effective lease](Self::effective_lease) + renew + 1 s: a follower cannot take over
    /// before the store frees the lease.
    ///
    /// On Kubernetes nothing frees the lease: each follower counts the lease from the instant
    /// it *observed* the record's last change (D80). That instant is the last renewal's arrival
    /// over the follower's watch: before the fault, or, when the store was slow, at most one
    /// delayed one-way trip (0.6 s) after it, within the 1 s. A candidate started after the
    /// leader's last renewal waits a whole lease from its first read, so the bound holds only
    /// while some follower has watched since before the fault; every scenario keeps one (a
    /// killed leader is restarted, a rolling restart stops one candidate at a time, and the
    /// others keep watching). Consul is the same for a Baton leader's lock: followers time its
    /// record from when their blocking query saw it change (D95).
    pub fn bounds(&self, store: Store) -> Bounds {
        Bounds {
            liveness: self.effective_lease(store) + self.renew + Duration::from_secs(1),
            orphan: Duration::from_millis(250),
            stale_after_resume: self.kill_after() + Duration::from_secs(1),
        }
    }

    /// What the checker allows for `spec`: [`bounds`](Self::bounds), except for the faults of a
    /// 3-member etcd's members (and mixed runs there, which draw them), whose liveness bound
    /// also allows a Raft election and etcd's extension of every lease when a new Raft leader
    /// takes office (three election timeouts; derived in `harness/etcd3.rs`): 6.3 s with the
    /// defaults.
    pub fn bounds_for(&self, spec: &RunSpec) -> Bounds {
        let mut bounds = self.bounds(spec.store);
        if spec.store == Store::Etcd3
            && (spec.scenario.is_member_fault() || spec.scenario == Scenario::Mixed)
        {
            bounds.liveness += etcd3::member_fault_allowance();
        }
        bounds
    }

    /// The flags that make `scripts/chaos` run a spec exactly as this configuration does.
    pub fn reproduce_command(&self, spec: &RunSpec) -> String {
        let defaults = Config::new(PathBuf::new(), PathBuf::new());
        let mut cmd = format!(
            "scripts/chaos --store {} --scenario {} --seed {} --episodes {}",
            spec.store, spec.scenario, spec.seed, self.episodes
        );
        if self.candidates != defaults.candidates {
            cmd += &format!(" --candidates {}", self.candidates);
        }
        for (flag, value, default) in [
            ("--lease", self.lease, defaults.lease),
            ("--renew", self.renew, defaults.renew),
            ("--grace", self.grace, defaults.grace),
        ] {
            if value != default {
                cmd += &format!(" {flag} {}ms", value.as_millis());
            }
        }
        if let Some(d) = self.fault_duration {
            cmd += &format!(" --fault-duration {}ms", d.as_millis());
        }
        if self.unsafe_ignore_deadline {
            cmd += " --unsafe-ignore-deadline-for-testing";
        }
        if let Some(filter) = &self.candidate_log {
            cmd += &format!(" --candidate-log '{filter}'");
        }
        cmd + " --keep-logs"
    }
}

/// The result of one run.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// What ran.
    pub spec: RunSpec,
    /// What the checker found.
    pub analysis: Analysis,
    /// Why the run could not be carried out, if it could not (a setup problem, not a finding).
    pub error: Option<String>,
    /// How many faults were injected.
    pub faults: usize,
    /// How long the run took.
    pub elapsed: Duration,
    /// The run's directory, if it was kept.
    pub kept: Option<PathBuf>,
}

impl RunOutcome {
    /// Whether the run found a violation or could not be carried out.
    pub fn failed(&self) -> bool {
        self.error.is_some() || !self.analysis.violations.is_empty()
    }
}

/// Runs chaos runs. Holds the tokio runtime the proxies and registers of its runs use; runs
/// may go on in parallel, from several threads.
#[derive(Debug)]
pub struct Harness {
    config: Config,
    runtime: tokio::runtime::Runtime,
}

impl Harness {
    /// A harness with this configuration.
    pub fn new(config: Config) -> std::io::Result<Harness> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("baton-chaos-io")
            .enable_all()
            .build()?;
        std::fs::create_dir_all(&config.work_dir)?;
        Ok(Harness { config, runtime })
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Carry out one run and check it. Blocks; the candidates' parent-death signal is tied to
    /// the calling thread.
    pub fn run(&self, spec: RunSpec) -> RunOutcome {
        let started = baton::boot_time();
        let dir = self
            .config
            .work_dir
            .join(format!("{}-{}-{}", spec.store, spec.scenario, spec.seed));
        let _ = std::fs::remove_dir_all(&dir);
        let mut outcome = RunOutcome {
            spec,
            analysis: Analysis::default(),
            error: None,
            faults: 0,
            elapsed: Duration::ZERO,
            kept: None,
        };
        if let Err(e) = std::fs::create_dir_all(&dir) {
            outcome.error = Some(format!("cannot create {}: {e}", dir.display()));
            return outcome;
        }
        let mut run = match Run::new(&self.config, spec, dir.clone(), self.runtime.handle()) {
            Ok(run) => run,
            Err(e) => {
                outcome.error = Some(e);
                outcome.elapsed = baton::boot_time().saturating_sub(started);
                let _ = std::fs::write(
                    dir.join("report.txt"),
                    crate::report::failures(std::slice::from_ref(&outcome), &self.config),
                );
                outcome.kept = Some(dir);
                return outcome;
            }
        };
        let result = run.execute();
        run.teardown();
        let obs = run.finish();
        outcome.faults = obs.episodes.len();
        outcome.analysis = check::check(&obs, &self.config.bounds_for(&spec));
        outcome.error = result.err();
        outcome.elapsed = baton::boot_time().saturating_sub(started);
        if outcome.failed() || self.config.keep_logs {
            let _ = std::fs::write(
                dir.join("report.txt"),
                crate::report::failures(std::slice::from_ref(&outcome), &self.config)
                    + &format!(
                        "
{:#?}
",
                        outcome.analysis
                    ),
            );
            outcome.kept = Some(dir);
        } else {
            let _ = std::fs::remove_dir_all(&dir);
        }
        outcome
    }
}

/// One candidate process: a `baton run`.
#[derive(Debug)]
struct Candidate {
    id: String,
    child: Child,
}

impl Candidate {
    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32).expect("a child has a positive pid")
    }
}

/// A place for one candidate; a restarted candidate is a new incarnation in the same slot.
#[derive(Debug)]
struct Slot {
    index: usize,
    incarnations: usize,
    proxy: Option<FaultProxy>,
    on_term: OnTerm,
    current: Option<Candidate>,
}

struct Run<'h> {
    cfg: &'h Config,
    spec: RunSpec,
    rng: fastrand::Rng,
    dir: PathBuf,
    register: Register,
    redis: Option<RedisServer>,
    etcd: Option<EtcdServer>,
    /// The 3-member etcd and the candidates' proxies to its members.
    etcd3: Option<etcd3::Etcd3>,
    fake_k8s: Option<FakeK8sProcess>,
    fake_consul: Option<FakeConsulProcess>,
    /// A Redis Sentinel or Redis Cluster run's deployment.
    ha: Option<RedisHa>,
    /// Its store URL (kept apart: a failover holds the deployment while it spawns).
    ha_url: Option<String>,
    /// The runtime the proxies run on (a lossy failover starts some midway).
    handle: tokio::runtime::Handle,
    /// The lease table of a PostgreSQL run, dropped by [`teardown`](Run::teardown).
    postgres_table: Option<String>,
    /// The lease table of a MySQL run, dropped by [`teardown`](Run::teardown).
    mysql_table: Option<String>,
    sqlite: Option<PathBuf>,
    slots: Vec<Slot>,
    obs: Observations,
    /// Candidates that exited with bad input (2) before anyone led.
    refused: usize,
    timeline: Vec<String>,
}

fn now() -> Duration {
    baton::boot_time()
}

impl<'h> Run<'h> {
    fn new(
        cfg: &'h Config,
        spec: RunSpec,
        dir: PathBuf,
        handle: &'h tokio::runtime::Handle,
    ) -> Result<Run<'h>, String> {
        let _runtime = handle.enter();
        let register = Register::start(&dir.join("register.sock"))
            .map_err(|e| format!("cannot start the register: {e}"))?;
        let mut rng = fastrand::Rng::with_seed(spec.seed);
        let (mut redis, mut etcd, mut fake_k8s, mut fake_consul, mut postgres_table, mut sqlite) =
            (None, None, None, None, None, None);
        let mut ha = None;
        let mut mysql_table = None;
        let mut cluster = None;
        let upstream: Option<std::net::SocketAddr> = match spec.store {
            Store::Sqlite => {
                sqlite = Some(dir.join("leases.db"));
                None
            }
            Store::Redis => {
                let server = std::panic::catch_unwind(RedisServer::start)
                    .map_err(|_| "cannot start redis-server (see the message above)".to_owned())?;
                let port = server.port();
                redis = Some(server);
                Some(([127, 0, 0, 1], port).into())
            }
            Store::Postgres => {
                let addr = POSTGRES_ADDR.into();
                std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(
                    |e| {
                        format!(
                            "PostgreSQL is not running on {addr} ({e}); start it with \
                             `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main \
                             start` (scripts/test does)"
                        )
                    },
                )?;
                // Not drawn from the run's RNG: the name only has to be unique, and replays of
                // a schedule must not depend on it.
                postgres_table = Some(format!("baton_chaos_{:012x}", fastrand::u64(..) >> 16));
                Some(addr)
            }
            Store::Etcd => {
                let server = EtcdServer::try_start()?;
                let port = server.port();
                etcd = Some(server);
                Some(([127, 0, 0, 1], port).into())
            }
            Store::Etcd3 => {
                // Proxies of its own per candidate and member: no slot proxy.
                cluster = Some(etcd3::Etcd3::start(cfg.candidates)?);
                None
            }
            Store::Kubernetes => {
                // Where it is: BATON_FAKE_K8S, or next to this binary (scripts/chaos builds it
                // there). Looked up first so that a missing binary is an error, not a panic.
                std::panic::catch_unwind(fake_k8s_binary).map_err(|_| {
                    "no baton-fake-k8s binary (see the message above); scripts/chaos builds it"
                        .to_owned()
                })?;
                let server = FakeK8sProcess::try_start(FakeK8sOptions {
                    bookmark_interval: K8S_BOOKMARKS,
                    ..FakeK8sOptions::default()
                })?;
                let port = server.port();
                fake_k8s = Some(server);
                Some(([127, 0, 0, 1], port).into())
            }
            Store::Consul => {
                std::panic::catch_unwind(fake_consul_binary).map_err(|_| {
                    "no baton-fake-consul binary (see the message above); scripts/chaos builds it"
                        .to_owned()
                })?;
                let server = FakeConsulProcess::try_start(FakeConsulOptions::default())?;
                let port = server.port();
                fake_consul = Some(server);
                Some(([127, 0, 0, 1], port).into())
            }
            Store::RedisSentinel => {
                ha = Some(RedisHa::start_sentinel(&dir)?);
                None
            }
            Store::RedisCluster => {
                ha = Some(RedisHa::start_cluster(&dir)?);
                None
            }
            Store::Mysql => {
                let addr = crate::mysql::server()?;
                mysql_table = Some(crate::mysql::table_name());
                Some(addr)
            }
        };
        let mut slots = Vec::new();
        for index in 0..cfg.candidates {
            let proxy = match upstream {
                Some(addr) => Some(
                    FaultProxy::start(addr)
                        .map_err(|e| format!("cannot start a fault proxy: {e}"))?,
                ),
                None => None,
            };
            // How this slot's workers take SIGTERM: most exit at once, some finish a little
            // work first, some ignore it and must be killed.
            let on_term = match rng.u32(0..10) {
                0..5 => OnTerm::Exit,
                5..8 => OnTerm::Linger(Duration::from_millis(rng.u64(20..=200))),
                _ => OnTerm::Ignore,
            };
            slots.push(Slot {
                index,
                incarnations: 0,
                proxy,
                on_term,
                current: None,
            });
        }
        Ok(Run {
            cfg,
            spec,
            rng,
            dir,
            register,
            redis,
            etcd,
            etcd3: cluster,
            fake_k8s,
            fake_consul,
            ha_url: ha.as_ref().map(RedisHa::url),
            ha,
            handle: handle.clone(),
            postgres_table,
            mysql_table,
            sqlite,
            slots,
            obs: Observations::default(),
            refused: 0,
            timeline: Vec::new(),
        })
    }

    fn note(&mut self, what: impl AsRef<str>) {
        let line = format!("{} {}", rel(now(), self.obs.begin), what.as_ref());
        self.timeline.push(line);
    }

    fn store_url(&self, slot: usize) -> String {
        if let Some(path) = &self.sqlite {
            return format!("sqlite:{}", path.display());
        }
        if let Some(url) = &self.ha_url {
            return url.clone();
        }
        if let Some(cluster) = &self.etcd3 {
            return cluster.url(slot);
        }
        let proxy = self.slots[slot]
            .proxy
            .as_ref()
            .expect("a run over TCP has a proxy per slot")
            .addr();
        match self.spec.store {
            Store::Sqlite => unreachable!("an SQLite run has a file"),
            Store::Redis => format!("redis://{proxy}"),
            Store::Postgres => format!(
                "postgres://postgres@{proxy}/test?table={}",
                self.postgres_table
                    .as_deref()
                    .expect("a PostgreSQL run has a table")
            ),
            Store::Etcd => format!("etcd://{proxy}"),
            Store::Etcd3 => unreachable!("an etcd3 run's URLs come from its cluster"),
            Store::Kubernetes => format!("kubernetes+http://{proxy}?namespace={K8S_NAMESPACE}"),
            Store::Consul => format!("consul://{proxy}"),
            Store::RedisSentinel | Store::RedisCluster => {
                unreachable!("a Redis Sentinel or Cluster run has a deployment")
            }
            Store::Mysql => crate::mysql::url(
                proxy,
                self.mysql_table
                    .as_deref()
                    .expect("a MySQL run has a table"),
            ),
        }
    }

    /// Start a new incarnation of `slot`.
    fn spawn(&mut self, slot: usize) -> Result<(), String> {
        let url = self.store_url(slot);
        let s = &mut self.slots[slot];
        let id = format!("c{}-{}", s.index, s.incarnations);
        s.incarnations += 1;
        let log = File::create(self.dir.join(format!("baton-{id}.log")))
            .map_err(|e| format!("cannot create the log of {id}: {e}"))?;
        let stderr = log
            .try_clone()
            .map_err(|e| format!("cannot create the log of {id}: {e}"))?;
        let millis = |d: Duration| format!("{}ms", d.as_millis());
        let mut cmd = Command::new(&self.cfg.baton);
        cmd.args(["--store", &url, "--key", KEY, "--id", &id])
            .args(["--lease", &millis(self.cfg.lease)])
            .args(["--renew", &millis(self.cfg.renew)])
            .args(["--grace", &millis(self.cfg.grace)]);
        // baton reads RUST_LOG only without -v; the environment is cleared below first.
        if self.cfg.candidate_log.is_none() {
            cmd.arg("-v");
        }
        if self.cfg.unsafe_ignore_deadline {
            cmd.arg("--unsafe-ignore-deadline-for-testing");
        }
        cmd.args(["run", "--"])
            .arg(&self.cfg.worker)
            .arg("worker")
            .arg("--log")
            .arg(self.dir.join(format!("worker-{id}.log")))
            .arg("--register")
            .arg(self.register.path())
            .args(["--on-term", &s.on_term.arg()])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr);
        for var in BATON_ENV {
            cmd.env_remove(var);
        }
        if let Some(filter) = &self.cfg.candidate_log {
            cmd.env("RUST_LOG", filter);
        }
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                rustix::process::set_parent_process_death_signal(Some(Signal::KILL))
                    .map_err(std::io::Error::from)
            });
        }
        let child = cmd.spawn().map_err(|e| {
            format!(
                "cannot start {}: {e}; build it with `cargo build -p baton-cli --all-features` or pass --baton",
                self.cfg.baton.display()
            )
        })?;
        let pid = child.id();
        s.current = Some(Candidate {
            id: id.clone(),
            child,
        });
        self.note(format!("started {id} (pid {pid}) on {url}"));
        Ok(())
    }

    /// The last lines of a candidate's log, for messages.
    fn log_tail(&self, id: &str) -> String {
        let text =
            std::fs::read_to_string(self.dir.join(format!("baton-{id}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n    ")
    }

    /// Notice candidates that exited by themselves: a `baton run` whose worker never exits by
    /// itself has no reason to, so each is a crash. Only when *every* candidate has exited with
    /// bad input (2) before any led is it a setup error (a store this `baton` cannot open, a
    /// flag it does not know) rather than a finding.
    fn reap(&mut self) -> Result<(), String> {
        for slot in 0..self.slots.len() {
            let Some(candidate) = self.slots[slot].current.as_mut() else {
                continue;
            };
            let Ok(Some(status)) = candidate.child.try_wait() else {
                continue;
            };
            let id = candidate.id.clone();
            self.slots[slot].current = None;
            let tail = self.log_tail(&id);
            self.note(format!("{id} exited by itself: {status}"));
            let no_leader_yet = self.register.ledger().last_accept().is_none();
            let none_left = self.slots.iter().all(|s| s.current.is_none());
            let all_refused = self.refused == self.obs.incidents.len();
            if status.code() == Some(2)
                && no_leader_yet
                && none_left
                && all_refused
                && self.obs.episodes.is_empty()
            {
                // Not findings: this baton cannot run this configuration at all.
                self.obs.incidents.clear();
                return Err(format!(
                    "baton {id} could not start ({status}):\n    {tail}"
                ));
            }
            let what = if no_leader_yet && status.code() == Some(2) {
                self.refused += 1;
                "could not start"
            } else {
                "exited by itself"
            };
            self.obs.incidents.push(Violation {
                kind: ViolationKind::Crash,
                detail: format!(
                    "baton {id} {what} at {} with {status} while other candidates ran; its \
                     log ends:\n    {tail}",
                    rel(now(), self.obs.begin)
                ),
            });
        }
        Ok(())
    }

    /// Sleep, keeping an eye on the candidates.
    fn sleep(&mut self, d: Duration) -> Result<(), String> {
        let until = now() + d;
        loop {
            self.reap()?;
            let left = until.saturating_sub(now());
            if left.is_zero() {
                return Ok(());
            }
            std::thread::sleep(left.min(TICK));
        }
    }

    /// The slot whose worker acts as leader now, and its latest write.
    fn leader(&self) -> Option<(usize, RegisterEntry)> {
        let writer = self.register.ledger().active_writer(FRESH)?;
        let slot = self
            .slots
            .iter()
            .position(|s| s.current.as_ref().is_some_and(|c| c.id == writer.candidate))?;
        Some((slot, writer))
    }

    fn wait_for_leader(
        &mut self,
        limit: Duration,
    ) -> Result<Option<(usize, RegisterEntry)>, String> {
        let until = now() + limit;
        while now() < until {
            if let Some(leader) = self.leader() {
                return Ok(Some(leader));
            }
            self.sleep(TICK)?;
        }
        Ok(None)
    }

    /// Wait until leadership is back after a fault that healed at `heal`, or give up (the
    /// checker judges). Back means a worker writes after `heal` that is either a new term (not
    /// `before`, the term the fault hit) or the old term still going a lease after the heal: the
    /// old term's worker may write on for a moment while its `baton` stops it, and that is no
    /// recovery.
    fn wait_for_recovery(&mut self, heal: Duration, before: u64) -> Result<(), String> {
        let until = now() + self.cfg.bounds_for(&self.spec).liveness + Duration::from_secs(2);
        let lease = self.cfg.effective_lease(self.spec.store);
        while now() < until {
            let survived = now() > heal + lease;
            if self
                .leader()
                .is_some_and(|(_, w)| w.at > heal && (w.token != before || survived))
            {
                return Ok(());
            }
            self.sleep(TICK)?;
        }
        self.note("no leader after the fault healed; going on");
        Ok(())
    }

    /// A fault's duration: the configured one, or a seeded one in `range` (milliseconds).
    fn duration(&mut self, range: std::ops::RangeInclusive<u64>) -> Duration {
        self.cfg
            .fault_duration
            .unwrap_or_else(|| Duration::from_millis(self.rng.u64(range)))
    }

    fn episode(&mut self, what: String, target: Option<String>, start: Duration, heal: Duration) {
        self.note(format!("healed: {what}"));
        self.obs.episodes.push(Episode {
            what,
            target,
            start,
            heal,
        });
    }

    fn execute(&mut self) -> Result<(), String> {
        self.obs.begin = now();
        for slot in 0..self.slots.len() {
            self.spawn(slot)?;
        }
        if self.wait_for_leader(FIRST_LEADER_LIMIT)?.is_none() {
            self.obs.incidents.push(Violation {
                kind: ViolationKind::Liveness,
                detail: format!(
                    "no leader within {} of starting {} candidates",
                    ms(FIRST_LEADER_LIMIT),
                    self.slots.len()
                ),
            });
            self.obs.end = now();
            return Ok(());
        }
        for _ in 0..self.cfg.episodes {
            let settle = Duration::from_millis(self.rng.u64(300..=1200));
            self.sleep(settle)?;
            let Some((slot, writer)) =
                self.wait_for_leader(self.cfg.bounds_for(&self.spec).liveness)?
            else {
                // The checker reports the missing leader (the previous fault's liveness).
                continue;
            };
            let before = writer.token;
            let heal = self.inject(slot, writer)?;
            self.wait_for_recovery(heal, before)?;
        }
        self.sleep(Duration::from_millis(500))?;
        self.obs.end = now();
        Ok(())
    }

    /// Inject one fault of the run's scenario, aimed at the leader in `slot`; returns when it
    /// healed.
    fn inject(&mut self, slot: usize, writer: RegisterEntry) -> Result<Duration, String> {
        let id = writer.candidate.clone();
        let scenario = match self.spec.scenario {
            Scenario::Mixed => {
                let classes = Scenario::mixed_on(self.spec.store);
                let drawn = classes[self.rng.usize(0..classes.len())];
                self.note(format!("mixed: this episode is {drawn}"));
                drawn
            }
            scenario => scenario,
        };
        match scenario {
            Scenario::KillLeader => {
                let candidate = self.slots[slot].current.as_mut().expect("the leader runs");
                let pid = candidate.pid();
                let _ = rustix::process::kill_process(pid, Signal::KILL);
                let at = now();
                let _ = candidate.child.wait();
                self.slots[slot].current = None;
                self.obs.kills.push(Kill {
                    candidate: id.clone(),
                    at,
                });
                self.episode(format!("SIGKILL of the leader {id}"), Some(id), at, at);
                let delay = Duration::from_millis(self.rng.u64(100..=1000));
                self.sleep(delay)?;
                self.spawn(slot)?;
                Ok(at)
            }
            Scenario::PartitionLeader => {
                let d = self.duration(200..=3000);
                let start = self.set_proxies(Some(slot), ProxyMode::Blackhole);
                self.sleep(d)?;
                let heal = self.set_proxies(Some(slot), ProxyMode::Pass);
                self.episode(
                    format!("partition of the leader {id} for {}", ms(d)),
                    Some(id),
                    start,
                    heal,
                );
                Ok(heal)
            }
            Scenario::ResetConnections => {
                let d = self.duration(50..=800);
                let start = self.set_proxies(Some(slot), ProxyMode::Reset);
                self.sleep(d)?;
                let heal = self.set_proxies(Some(slot), ProxyMode::Pass);
                self.episode(
                    format!("connection resets of the leader {id} for {}", ms(d)),
                    Some(id),
                    start,
                    heal,
                );
                Ok(heal)
            }
            Scenario::SlowStore => self.slow_store(),
            Scenario::StoreRestart => self.store_restart(),
            Scenario::PauseLeader => {
                // Longer than the lease the store keeps, so that another candidate can take
                // over while the leader is stopped.
                let lease = self.cfg.effective_lease(self.spec.store);
                let d = self
                    .cfg
                    .fault_duration
                    .unwrap_or_else(|| lease + Duration::from_millis(self.rng.u64(100..=1500)));
                let baton = self.slots[slot]
                    .current
                    .as_ref()
                    .expect("the leader runs")
                    .pid();
                let worker = Pid::from_raw(writer.pid as i32).expect("a worker pid is positive");
                let _ = rustix::process::kill_process(baton, Signal::STOP);
                let _ = rustix::process::kill_process_group(worker, Signal::STOP);
                let start = now();
                self.note(format!("SIGSTOP {id} and its worker (pid {})", writer.pid));
                self.sleep(d)?;
                // The resumption is timed *before* SIGCONT: everything the worker does from
                // the moment it can run again is post-resume (excused, measured), never part
                // of its term before the pause (checked).
                let resume = now();
                // baton first: it must notice its lost term and stop the worker.
                let _ = rustix::process::kill_process(baton, Signal::CONT);
                let _ = rustix::process::kill_process_group(worker, Signal::CONT);
                self.obs.pauses.push(Pause {
                    candidate: id.clone(),
                    worker_pid: writer.pid,
                    start,
                    resume,
                });
                self.episode(
                    format!("a pause of the leader {id} for {}", ms(resume - start)),
                    Some(id),
                    start,
                    resume,
                );
                Ok(resume)
            }
            Scenario::Handoff => self.handoff(slot, &id),
            Scenario::Failover | Scenario::KillMaster | Scenario::LossyFailover => {
                self.redis_failover(scenario, slot, &id)
            }
            Scenario::PartitionMember => self.partition_member(slot, &id),
            Scenario::KillRaftLeader => self.kill_raft_leader(),
            Scenario::RestartMembers => self.restart_members(),
            Scenario::Mixed => unreachable!("a mixed run draws one of the other classes"),
            Scenario::RollingRestart => {
                let mut order: Vec<usize> = (0..self.slots.len()).collect();
                self.rng.shuffle(&mut order);
                let mut heal = now();
                for slot in order {
                    if let Some((start, stopped, id)) = self.stop(slot)? {
                        heal = stopped;
                        self.episode(
                            format!("a graceful stop of {id} (rolling restart)"),
                            Some(id),
                            start,
                            stopped,
                        );
                    }
                    let delay = Duration::from_millis(self.rng.u64(0..=300));
                    self.sleep(delay)?;
                    self.spawn(slot)?;
                    let delay = Duration::from_millis(self.rng.u64(200..=800));
                    self.sleep(delay)?;
                }
                Ok(heal)
            }
        }
    }

    /// `baton handoff` of the leader in `slot` (see [`Scenario::Handoff`]); returns when the
    /// command is done and any candidate it named was killed.
    fn handoff(&mut self, slot: usize, leader: &str) -> Result<Duration, String> {
        let followers: Vec<(usize, String)> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != slot)
            .filter_map(|(i, s)| s.current.as_ref().map(|c| (i, c.id.clone())))
            .collect();
        let pick = self.rng.u64(0..4);
        let (to, victim) = match (pick, followers.is_empty()) {
            (0, _) => (None, None),
            (1, _) | (_, true) => (Some("not-running".to_owned()), None),
            _ => {
                let (i, id) = followers[self.rng.usize(0..followers.len())].clone();
                let kill = self.rng.u64(0..3) == 0;
                (Some(id), kill.then_some(i))
            }
        };
        let millis = |d: Duration| format!("{}ms", d.as_millis());
        let timeout = self.cfg.renew + self.cfg.effective_lease(self.spec.store);
        let mut cmd = Command::new(&self.cfg.baton);
        cmd.args(["--store", &self.store_url(slot), "--key", KEY])
            .args(["--lease", &millis(self.cfg.lease)])
            .args(["--renew", &millis(self.cfg.renew)])
            .args(["--grace", &millis(self.cfg.grace)])
            .args(["handoff", "--json", "--timeout", &millis(timeout)]);
        if let Some(to) = &to {
            cmd.args(["--to", to]);
        }
        for var in BATON_ENV {
            cmd.env_remove(var);
        }
        let log = File::create(
            self.dir
                .join(format!("handoff-{}.log", self.obs.episodes.len())),
        )
        .map_err(|e| format!("cannot create the log of a handoff: {e}"))?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        let start = now();
        let whom = to.clone().unwrap_or_else(|| "anyone".to_owned());
        self.note(format!("baton handoff of {leader} to {whom}"));
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start baton handoff: {e}"))?;
        let mut heal = start;
        if let Some(victim) = victim {
            // Somewhere between the request and the leader's next renewal, or just after.
            let delay = Duration::from_millis(self.rng.u64(0..=self.cfg.renew.as_millis() as u64));
            self.sleep(delay)?;
            if let Some(candidate) = self.slots[victim].current.as_mut() {
                let id = candidate.id.clone();
                let _ = rustix::process::kill_process(candidate.pid(), Signal::KILL);
                let at = now();
                let _ = candidate.child.wait();
                self.slots[victim].current = None;
                self.obs.kills.push(Kill {
                    candidate: id.clone(),
                    at,
                });
                self.note(format!("SIGKILL of {id}, named by the handoff"));
                heal = at;
            }
        }
        let status = loop {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                break status;
            }
            self.sleep(TICK)?;
        };
        heal = heal.max(now());
        self.episode(
            format!(
                "baton handoff of {leader} to {whom}{} (exit {})",
                if victim.is_some() {
                    ", which was killed midway"
                } else {
                    ""
                },
                status
                    .code()
                    .map_or("by a signal".to_owned(), |c| c.to_string())
            ),
            Some(leader.to_owned()),
            start,
            heal,
        );
        if let Some(victim) = victim {
            let delay = Duration::from_millis(self.rng.u64(100..=1000));
            self.sleep(delay)?;
            self.spawn(victim)?;
        }
        Ok(heal)
    }

    /// Restart the store (see [`Scenario::StoreRestart`]); returns when it was back.
    fn store_restart(&mut self) -> Result<Duration, String> {
        let down = self.duration(0..=2000);
        match self.spec.store {
            Store::Sqlite | Store::RedisSentinel | Store::RedisCluster | Store::Etcd3 => {
                unreachable!("store restarts do not apply to {}", self.spec.store)
            }
            Store::Redis => {
                let server = self.redis.as_mut().expect("a Redis run has a server");
                server.kill();
                let start = now();
                self.note("killed redis-server");
                self.sleep(down)?;
                let server = self.redis.as_mut().expect("a Redis run has a server");
                std::panic::catch_unwind(AssertUnwindSafe(|| server.restart())).map_err(|_| {
                    "cannot restart redis-server (see the message above)".to_owned()
                })?;
                let heal = now();
                self.episode(
                    format!("a store restart with data loss ({} down)", ms(heal - start)),
                    None,
                    start,
                    heal,
                );
                // Half the time, a deploy goes on while the store comes back: the candidate
                // that took the lease after the restart (and waits out the restart guard) is
                // stopped gracefully, so its lease is released within the guard's window.
                if self.rng.bool() {
                    let delay = Duration::from_millis(self.rng.u64(0..=600));
                    self.sleep(delay)?;
                    if let Some(stopped) = self.stop_guarded_holder(heal)? {
                        return Ok(stopped);
                    }
                }
                Ok(heal)
            }
            Store::Etcd => {
                // SIGKILL, then start again on the same data directory: etcd is durable, and
                // its revisions (the tokens) are meant to survive a crash, not the loss of
                // its data.
                let server = self.etcd.as_mut().expect("an etcd run has a server");
                server.kill();
                let start = now();
                self.note("killed etcd");
                self.sleep(down)?;
                let server = self.etcd.as_mut().expect("an etcd run has a server");
                server
                    .try_restart()
                    .map_err(|e| format!("cannot restart etcd: {e}"))?;
                let heal = now();
                self.episode(
                    format!(
                        "a store restart keeping its data (etcd SIGKILLed, {} down)",
                        ms(heal - start)
                    ),
                    None,
                    start,
                    heal,
                );
                Ok(heal)
            }
            Store::Kubernetes => {
                // SIGKILL, then start again on the same port and state file: the Leases and
                // the resourceVersion counter survive (as they do an API server's restart,
                // etcd keeping them), the watch history does not.
                let server = self.fake_k8s.as_mut().expect("a Kubernetes run has a fake");
                server.kill();
                let start = now();
                self.note("killed baton-fake-k8s");
                self.sleep(down)?;
                let server = self.fake_k8s.as_mut().expect("a Kubernetes run has a fake");
                server
                    .try_restart()
                    .map_err(|e| format!("cannot restart baton-fake-k8s: {e}"))?;
                let heal = now();
                self.episode(
                    format!(
                        "a store restart keeping its objects (baton-fake-k8s SIGKILLed, {} \
                         down)",
                        ms(heal - start)
                    ),
                    None,
                    start,
                    heal,
                );
                Ok(heal)
            }
            Store::Consul => {
                // SIGKILL, then start again on the same port and state file: the KV pairs, the
                // sessions and the index survive (as a Consul server's raft log does); session
                // timers start again at 2 x TTL, lock-delays are gone.
                let server = self.fake_consul.as_mut().expect("a Consul run has a fake");
                server.kill();
                let start = now();
                self.note("killed baton-fake-consul");
                self.sleep(down)?;
                let server = self.fake_consul.as_mut().expect("a Consul run has a fake");
                server
                    .try_restart()
                    .map_err(|e| format!("cannot restart baton-fake-consul: {e}"))?;
                let heal = now();
                self.episode(
                    format!(
                        "a store restart keeping its data (baton-fake-consul SIGKILLed, {} down)",
                        ms(heal - start)
                    ),
                    None,
                    start,
                    heal,
                );
                Ok(heal)
            }
            Store::Postgres | Store::Mysql => {
                // The machine's server is shared: it is not restarted. What the candidates
                // see of a restart of a durable server is what they get: every connection
                // (pools, LISTEN, MySQL's term locks and lock waits) reset, new ones refused,
                // then the same data back; MariaDB drops the named locks of the reset
                // connections, as a restart does.
                let start = self.set_proxies(None, ProxyMode::Reset);
                self.sleep(down)?;
                let heal = self.set_proxies(None, ProxyMode::Pass);
                self.episode(
                    format!(
                        "a store outage keeping its data (every connection reset, new ones \
                         refused, for {})",
                        ms(down)
                    ),
                    None,
                    start,
                    heal,
                );
                Ok(heal)
            }
        }
    }

    /// SIGKILL the candidate in `slot` (whose id is `id`) and record the kill.
    fn kill_candidate(&mut self, slot: usize, id: &str) -> Duration {
        let at = now();
        if let Some(candidate) = self.slots[slot].current.as_mut() {
            let _ = rustix::process::kill_process(candidate.pid(), Signal::KILL);
            let _ = candidate.child.wait();
            self.slots[slot].current = None;
            self.obs.kills.push(Kill {
                candidate: id.to_owned(),
                at,
            });
        }
        at
    }

    /// Fail the master of a Redis Sentinel or Cluster run over (see [`Scenario::Failover`],
    /// [`Scenario::KillMaster`], [`Scenario::LossyFailover`]) while the leader in `slot`
    /// holds the lease; returns when the new master served.
    fn redis_failover(
        &mut self,
        scenario: Scenario,
        slot: usize,
        leader: &str,
    ) -> Result<Duration, String> {
        let _runtime = self.handle.clone();
        let _runtime = _runtime.enter();
        let mut ha = self
            .ha
            .take()
            .expect("a Redis Sentinel or Cluster run has a deployment");
        let result = self.redis_failover_on(&mut ha, scenario, slot, leader);
        self.ha = Some(ha);
        result
    }

    fn redis_failover_on(
        &mut self,
        ha: &mut RedisHa,
        scenario: Scenario,
        slot: usize,
        leader: &str,
    ) -> Result<Duration, String> {
        match scenario {
            Scenario::Failover => {
                let start = now();
                self.note("clean failover asked for");
                let what = ha.failover(KEY)?;
                let heal = now();
                self.episode(what, None, start, heal);
                Ok(heal)
            }
            Scenario::KillMaster => {
                let (start, what) = ha.kill_master(KEY)?;
                let heal = now();
                self.episode(what, None, start, heal);
                let down = self.duration(0..=2000);
                self.sleep(down)?;
                ha.restart_killed()?;
                self.note("the killed master is back, as a replica");
                Ok(heal)
            }
            Scenario::LossyFailover => {
                let cut = ha.cut_replication(KEY)?;
                let start = now();
                self.note(&cut);
                let d = self.duration(300..=2500);
                if self.rng.bool() {
                    // Another term begins on the master alone: its acquire is lost too.
                    let before = Duration::from_millis(self.rng.u64(0..=d.as_millis() as u64 / 2));
                    self.sleep(before)?;
                    self.kill_candidate(slot, leader);
                    self.note(format!(
                        "SIGKILL of the leader {leader} while replication is cut"
                    ));
                    let delay = Duration::from_millis(self.rng.u64(100..=1000));
                    self.sleep(delay)?;
                    self.spawn(slot)?;
                    self.sleep(d.saturating_sub(before + delay))?;
                } else {
                    self.sleep(d)?;
                }
                let (at, what) = ha.promote_lagging(KEY)?;
                let heal = now();
                self.episode(
                    format!("{cut} for {}; then {what}", ms(at - start)),
                    Some(leader.to_owned()),
                    start,
                    heal,
                );
                let down = self.duration(0..=2000);
                self.sleep(down)?;
                ha.restart_killed()?;
                Ok(heal)
            }
            _ => unreachable!("{scenario} is not a failover"),
        }
    }

    /// Gracefully restart the candidate that holds the Redis lease without acting on it yet
    /// (no register write since `since`), if there is one; returns when it was gone.
    fn stop_guarded_holder(&mut self, since: Duration) -> Result<Option<Duration>, String> {
        let Some(server) = &self.redis else {
            return Ok(None);
        };
        let holder = server.cli(&["GET", KEY]);
        let acting = self
            .register
            .ledger()
            .entries()
            .iter()
            .any(|e| e.candidate == holder && e.at > since);
        let slot = self
            .slots
            .iter()
            .position(|s| s.current.as_ref().is_some_and(|c| c.id == holder));
        let (Some(slot), false) = (slot, acting) else {
            return Ok(None);
        };
        let Some((start, stopped, id)) = self.stop(slot)? else {
            return Ok(None);
        };
        self.episode(
            format!("a graceful stop of {id}, which held the lease after the store restart"),
            Some(id),
            start,
            stopped,
        );
        self.spawn(slot)?;
        Ok(Some(stopped))
    }

    /// Set the mode of one slot's proxy, or of every proxy; returns when.
    fn set_proxies(&mut self, slot: Option<usize>, mode: ProxyMode) -> Duration {
        for (i, s) in self.slots.iter().enumerate() {
            if slot.is_none_or(|only| only == i)
                && let Some(proxy) = &s.proxy
            {
                proxy.set_mode(mode);
            }
        }
        if let Some(cluster) = &self.etcd3 {
            cluster.set_mode(slot, mode);
        }
        let at = now();
        let whom = match slot {
            Some(i) => format!("proxy of slot {i}"),
            None => "every proxy".into(),
        };
        self.note(format!("{whom}: {mode}"));
        at
    }

    fn slow_store(&mut self) -> Result<Duration, String> {
        let d = self.duration(1000..=4000);
        match self.spec.store {
            Store::RedisSentinel | Store::RedisCluster => {
                unreachable!("a slow store does not apply to {}", self.spec.store)
            }
            Store::Redis
            | Store::Postgres
            | Store::Etcd
            | Store::Kubernetes
            | Store::Consul
            | Store::Mysql
            | Store::Etcd3 => {
                // Each way: a round trip then takes 2x, longer than the renew interval.
                let one_way = Duration::from_millis(self.rng.u64(200..=600));
                let start = self.set_proxies(None, ProxyMode::Delay(one_way));
                self.sleep(d)?;
                let heal = self.set_proxies(None, ProxyMode::Pass);
                self.episode(
                    format!(
                        "a slow store ({} round trips for {})",
                        ms(one_way * 2),
                        ms(d)
                    ),
                    None,
                    start,
                    heal,
                );
                Ok(heal)
            }
            Store::Sqlite => {
                let d = self
                    .cfg
                    .fault_duration
                    .unwrap_or_else(|| Duration::from_millis(self.rng.u64(300..=3000)));
                let path = self.sqlite.clone().expect("an SQLite run has a file");
                let conn = rusqlite::Connection::open(&path)
                    .and_then(|c| c.busy_timeout(Duration::from_secs(10)).map(|()| c))
                    .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
                conn.execute_batch("BEGIN IMMEDIATE").map_err(|e| {
                    format!("cannot take the write lock of {}: {e}", path.display())
                })?;
                let start = now();
                self.note("took SQLite's write lock");
                self.sleep(d)?;
                conn.execute_batch("ROLLBACK")
                    .map_err(|e| format!("cannot release the write lock: {e}"))?;
                drop(conn);
                let heal = now();
                self.episode(
                    format!("a stalled store (write lock held for {})", ms(heal - start)),
                    None,
                    start,
                    heal,
                );
                Ok(heal)
            }
        }
    }

    /// SIGTERM the candidate in `slot` and wait for it to exit. Returns when it was signalled,
    /// when it was gone, and its id.
    fn stop(&mut self, slot: usize) -> Result<Option<(Duration, Duration, String)>, String> {
        self.reap()?;
        let Some(mut candidate) = self.slots[slot].current.take() else {
            return Ok(None);
        };
        let _ = rustix::process::kill_process(candidate.pid(), Signal::TERM);
        let start = now();
        self.note(format!("SIGTERM {}", candidate.id));
        let status = loop {
            if let Ok(Some(status)) = candidate.child.try_wait() {
                break Some(status);
            }
            if now() - start > STOP_LIMIT {
                break None;
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let stopped = now();
        match status {
            Some(status) if status.success() => {
                self.note(format!("{} stopped", candidate.id));
            }
            Some(status) => {
                let tail = self.log_tail(&candidate.id);
                self.obs.incidents.push(Violation {
                    kind: ViolationKind::Crash,
                    detail: format!(
                        "baton {} exited with {status} after SIGTERM (expected 0); its log \
                         ends:\n    {tail}",
                        candidate.id
                    ),
                });
            }
            None => {
                let _ = candidate.child.kill();
                let _ = candidate.child.wait();
                self.obs.incidents.push(Violation {
                    kind: ViolationKind::Crash,
                    detail: format!(
                        "baton {} did not stop within {} of SIGTERM (killed)",
                        candidate.id,
                        ms(STOP_LIMIT)
                    ),
                });
            }
        }
        Ok(Some((start, stopped, candidate.id)))
    }

    /// Stop every candidate, then look for worker processes left behind.
    fn teardown(&mut self) {
        if self.obs.end.is_zero() {
            self.obs.end = now();
        }
        // Resume anything still paused (a run cut short by an error).
        for s in &self.slots {
            if let Some(c) = &s.current {
                let _ = rustix::process::kill_process(c.pid(), Signal::CONT);
            }
        }
        for slot in 0..self.slots.len() {
            if let Err(e) = self.stop(slot) {
                self.note(format!("teardown: {e}"));
            }
        }
        std::thread::sleep(Duration::from_millis(100));
        let mut pids: Vec<u32> = self
            .register
            .ledger()
            .entries()
            .iter()
            .map(|e| e.pid)
            .collect();
        pids.sort_unstable();
        pids.dedup();
        for pid in pids {
            if worker_is_running(pid) {
                if let Some(pid) = Pid::from_raw(pid as i32) {
                    let _ = rustix::process::kill_process(pid, Signal::KILL);
                }
                self.obs.incidents.push(Violation {
                    kind: ViolationKind::Orphan,
                    detail: format!(
                        "worker pid {pid} was still running after every baton had exited"
                    ),
                });
            }
        }
        for s in &mut self.slots {
            s.proxy = None;
        }
        self.redis = None;
        self.etcd = None;
        if let Some(cluster) = self.etcd3.take() {
            cluster.keep_logs(&self.dir);
        }
        self.fake_k8s = None;
        self.fake_consul = None;
        self.ha = None;
        if let Some(table) = self.postgres_table.take() {
            self.drop_postgres_table(&table);
        }
        if let Some(table) = self.mysql_table.take() {
            let what = crate::mysql::drop_tables(&table);
            self.note(what);
        }
    }

    /// Drop a PostgreSQL run's lease table, with `psql` (as the SQL stores' tests do).
    fn drop_postgres_table(&mut self, table: &str) {
        let (ip, port) = POSTGRES_ADDR;
        let host = std::net::Ipv4Addr::from(ip).to_string();
        let out = Command::new("psql")
            .args(["-h", &host, "-p", &port.to_string()])
            .args(["-U", "postgres", "-d", "test", "-q", "-c"])
            // With its presence records' table (D134; the name rule for short table names).
            .arg(format!("DROP TABLE IF EXISTS {table}, {table}_candidates"))
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(out) if out.status.success() => self.note(format!("dropped table {table}")),
            Ok(out) => self.note(format!(
                "cannot drop table {table}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) => self.note(format!("cannot drop table {table}: cannot run psql: {e}")),
        }
    }

    /// Gather the records.
    fn finish(mut self) -> Observations {
        let mut lines = Vec::new();
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            let mut paths: Vec<PathBuf> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| is_worker_log(p))
                .collect();
            paths.sort();
            for path in paths {
                match records::read_worker_log(&path) {
                    Ok(log) => {
                        if log.garbled > 0 {
                            self.obs.incidents.push(Violation {
                                kind: ViolationKind::Crash,
                                detail: format!(
                                    "{} has {} garbled lines (a harness bug)",
                                    path.display(),
                                    log.garbled
                                ),
                            });
                        }
                        lines.extend(log.lines);
                    }
                    Err(e) => self.note(format!("cannot read {}: {e}", path.display())),
                }
            }
        }
        self.obs.lines = lines;
        self.obs.register = self.register.ledger().entries();
        let begin = self.obs.begin;
        let mut register_log = String::new();
        for e in &self.obs.register {
            register_log += &format!(
                "{} {} token {} pid {} {}\n",
                rel(e.at, begin),
                if e.accepted { "accept" } else { "reject" },
                e.token,
                e.pid,
                e.candidate
            );
        }
        let _ = std::fs::write(self.dir.join("register.log"), register_log);
        let _ = std::fs::write(
            self.dir.join("timeline.log"),
            self.timeline.join("\n") + "\n",
        );
        self.obs
    }
}

fn is_worker_log(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("worker-") && n.ends_with(".log"))
}

/// Whether `pid` is a live (not zombie) `baton-chaos worker` process.
fn worker_is_running(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the parenthesised command name.
    let state = stat
        .rsplit(')')
        .next()
        .and_then(|rest| rest.trim_start().chars().next());
    if matches!(state, Some('Z' | 'X') | None) {
        return false;
    }
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|cmd| cmd.split(|b| *b == 0).any(|arg| arg == b"worker"))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_bounds_use_the_ttl_etcd_keeps() {
        let mut cfg = Config::new(PathBuf::new(), PathBuf::new());
        for store in [Store::Sqlite, Store::Redis, Store::Postgres, Store::Mysql] {
            assert_eq!(cfg.effective_lease(store), Duration::from_millis(1500));
            assert_eq!(cfg.bounds(store).liveness, Duration::from_millis(2800));
        }
        // 1.5 s rounds up to 2 s, etcd's minimum with its defaults.
        assert_eq!(cfg.effective_lease(Store::Etcd), Duration::from_secs(2));
        assert_eq!(
            cfg.bounds(Store::Etcd).liveness,
            Duration::from_millis(3300)
        );
        // Only liveness follows the store; the engine's deadline comes from --lease.
        assert_eq!(
            cfg.bounds(Store::Etcd).stale_after_resume,
            cfg.bounds(Store::Redis).stale_after_resume
        );
        cfg.lease = Duration::from_millis(2500);
        assert_eq!(cfg.effective_lease(Store::Etcd), Duration::from_secs(3));
        cfg.lease = Duration::from_millis(500);
        assert_eq!(cfg.effective_lease(Store::Etcd), Duration::from_secs(2));
    }

    #[test]
    fn kubernetes_bounds_use_whole_lease_duration_seconds() {
        let mut cfg = Config::new(PathBuf::new(), PathBuf::new());
        // leaseDurationSeconds: 1.5 s rounds up to 2 s, and followers count it from the last
        // change they observed; liveness is that + renew + 1 s.
        assert_eq!(
            cfg.effective_lease(Store::Kubernetes),
            Duration::from_secs(2)
        );
        assert_eq!(
            cfg.bounds(Store::Kubernetes).liveness,
            Duration::from_millis(3300)
        );
        // The engine's deadline, and so the stale-after-resume allowance, comes from --lease.
        assert_eq!(
            cfg.bounds(Store::Kubernetes).stale_after_resume,
            cfg.bounds(Store::Redis).stale_after_resume
        );
        // Whole seconds, rounded up, with no etcd-like minimum beyond 1 s.
        cfg.lease = Duration::from_millis(2500);
        assert_eq!(
            cfg.effective_lease(Store::Kubernetes),
            Duration::from_secs(3)
        );
        cfg.lease = Duration::from_secs(3);
        assert_eq!(
            cfg.effective_lease(Store::Kubernetes),
            Duration::from_secs(3)
        );
        cfg.lease = Duration::from_millis(500);
        assert_eq!(
            cfg.effective_lease(Store::Kubernetes),
            Duration::from_secs(1)
        );
        assert_eq!(
            cfg.bounds(Store::Kubernetes).liveness,
            Duration::from_millis(2300)
        );
    }
}
