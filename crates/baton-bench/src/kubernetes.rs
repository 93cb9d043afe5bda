//! The Kubernetes Lease store against the **fake** API server (`baton_testkit::fake_k8s`, in
//! the bench's process on a runtime thread of its own), with the Python `kubernetes` client's
//! leader election (`baton_testkit::py_elector`) as the peer, timed by the same methods in the
//! same run:
//!
//! * **Graceful handoff in one process**: [`handoff::graceful`] on two store instances.
//! * **Graceful handoff between two processes**: Baton's with [`procs::baton_rounds`] (SIGINT
//!   to the leader → the follower's own `CLOCK_BOOTTIME` stamp on `became_leader`); Python's
//!   the same way ([`py_rounds`]: SIGINT → the follower's stamp on its `became_leader` line).
//! * **Crash failover**: the same rounds with SIGKILL, for both.
//! * **An idle follower's requests**: one leader and one follower process, each with a
//!   kubeconfig of its own whose bearer token labels its requests in the fake's request
//!   counter (fake-only, `fake_k8s::requests`), counted over a window.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use baton::LeaseStore;
use baton_testkit::fake_k8s::{FakeK8s, FakeK8sOptions, Requests};
use baton_testkit::py_elector::{self, EventKind, PyElector, PyElectorConfig};
use rustix::process::{Pid, Signal, kill_process};

use crate::BoxResult;
use crate::handoff;
use crate::peers::ratio;
use crate::procs::{self, Change, FOLLOWER_SETTLE, STEP};
use crate::report::{Context, Row, Samples, ms, target_ms, verdict};
use crate::stores::{StoreKind, Timing};

/// The namespace of every Lease the bench writes.
pub const NAMESPACE: &str = "bench";

#[derive(Debug, Clone, Copy)]
pub struct Params {
    /// In one process: untimed, then timed handoffs.
    pub warmup: usize,
    pub rounds: usize,
    pub handoff_timing: Timing,
    /// Handoffs between processes, Baton's and Python's each.
    pub process_rounds: usize,
    /// Crashes, Baton's and Python's each.
    pub crashes: usize,
    /// The processes' election timing, Baton's and Python's alike: Python's `lease_duration`
    /// is `lease` in whole seconds, its `retry_period` (its renew and poll period) `renew`,
    /// its `renew_deadline` `lease - grace` (above 1.2 × `retry_period`, as the library wants).
    pub timing: Timing,
    /// After both candidates of a cost window run, before counting.
    pub settle: Duration,
    pub window: Duration,
}

/// Graceful handoff between two `baton` processes: the target at p99.
pub const PROCESS_HANDOFF_TARGET: Duration = Duration::from_millis(10);
/// Crash failover: within the lease the store grants plus this much.
pub const FAILOVER_SLACK: Duration = Duration::from_millis(100);

/// `kubernetes+http://127.0.0.1:PORT?namespace=bench`.
pub fn store_url(fake: &FakeK8s) -> String {
    format!("kubernetes+http://{}?namespace={NAMESPACE}", fake.addr())
}

/// What one cost window counted.
pub struct Idle {
    pub window: Duration,
    pub leader: String,
    pub follower: String,
    pub counted: Requests,
}

impl Idle {
    fn follower_rate(&self) -> f64 {
        self.counted.beyond_watch(&self.follower) as f64 / self.window.as_secs_f64()
    }

    fn leader_rate(&self) -> f64 {
        let all: u64 = self
            .counted
            .0
            .get(&self.leader)
            .map_or(0, |v| v.values().sum());
        all as f64 / self.window.as_secs_f64()
    }
}

pub struct Run {
    pub params: Params,
    pub in_process: Samples,
    /// The TTL the store grants for the processes' lease (`granted_ttl`, whole seconds).
    pub granted: Duration,
    pub baton_handoffs: Vec<Change>,
    pub py_handoffs: Vec<Change>,
    pub baton_crashes: Vec<Change>,
    pub py_crashes: Vec<Change>,
    pub baton_idle: Idle,
    pub py_idle: Idle,
    pub py_version: String,
}

/// The Python peer's interpreter, or the error that names the fix (the bench checks this before
/// its first figure, and again here).
pub fn python() -> BoxResult<std::path::PathBuf> {
    std::panic::catch_unwind(py_elector::venv_python)
        .map_err(|e| {
            e.downcast_ref::<String>()
                .cloned()
                .unwrap_or_else(|| "no Python virtualenv for the Kubernetes peer".to_owned())
        })
        .map_err(Into::into)
}

pub async fn measure(baton: &Path, dir: &Path, p: Params) -> BoxResult<Run> {
    // Fails here, with the fix, rather than in the middle of the run.
    let python = python()?;
    let py_version = std::process::Command::new(&python)
        .args(["-c", "import kubernetes; print(kubernetes.__version__)"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();

    let fake = FakeK8s::serve(FakeK8sOptions::default());
    let url = store_url(&fake);
    let kind = StoreKind::Url("kubernetes", url.clone());

    eprintln!("kubernetes: in one process, {} handoffs", p.rounds);
    let stores = [kind.open()?, kind.open()?];
    let granted = stores[0].granted_ttl(p.timing.lease);
    let in_process = handoff::graceful(
        stores,
        "bench-k8s-handoff",
        p.handoff_timing,
        p.warmup,
        p.rounds,
    )
    .await?;

    let baton = baton.to_owned();
    let dir = dir.join("kubernetes");
    std::fs::create_dir_all(&dir)?;
    let run = tokio::task::spawn_blocking(move || -> BoxResult<Run> {
        eprintln!("kubernetes: baton processes, {} handoffs", p.process_rounds);
        let baton_handoffs = procs::baton_rounds(
            &baton,
            &url,
            "bench-k8s-cli-handoff",
            p.timing,
            p.process_rounds,
            false,
        )?;
        eprintln!(
            "kubernetes: python processes, {} handoffs",
            p.process_rounds
        );
        let py_handoffs = py_rounds(&fake, &dir, "bench-k8s-py-handoff", p, false)?;
        eprintln!("kubernetes: baton processes, {} crashes", p.crashes);
        let baton_crashes = procs::baton_rounds_phased(
            &baton,
            &url,
            "bench-k8s-cli-crash",
            p.timing,
            p.crashes,
            true,
            p.timing.renew,
        )?;
        eprintln!("kubernetes: python processes, {} crashes", p.crashes);
        let py_crashes = py_rounds(&fake, &dir, "bench-k8s-py-crash", p, true)?;
        eprintln!("kubernetes: idle followers, {:?} each", p.window);
        let baton_idle = baton_idle(&fake, &baton, &dir, p)?;
        let py_idle = py_idle(&fake, &dir, p)?;
        let _ = std::fs::remove_dir_all(&dir);
        Ok(Run {
            params: p,
            in_process,
            granted,
            baton_handoffs,
            py_handoffs,
            baton_crashes,
            py_crashes,
            baton_idle,
            py_idle,
            py_version,
        })
    })
    .await??;
    Ok(run)
}

/// A kubeconfig for the fake whose bearer token is `client` (a label in the fake's request
/// counter: the fake checks no token), in a directory of its own under `dir`.
fn kubeconfig(fake: &FakeK8s, dir: &Path, client: &str) -> BoxResult<PathBuf> {
    let dir = dir.join(client);
    std::fs::create_dir_all(&dir)?;
    Ok(py_elector::write_kubeconfig(
        &dir,
        &fake.url(),
        Some(client),
        NAMESPACE,
    ))
}

/// A Python candidate on `lease` with the figure's timing, its requests labelled `id`.
fn py_candidate(
    fake: &FakeK8s,
    dir: &Path,
    lease: &str,
    id: &str,
    t: Timing,
) -> BoxResult<PyElector> {
    let mut config = PyElectorConfig::new(&kubeconfig(fake, dir, id)?, NAMESPACE, lease, id);
    config.lease_duration_secs = t.lease.as_secs_f64().ceil() as u64;
    config.retry_period = t.renew;
    config.renew_deadline = t.lease.saturating_sub(t.grace);
    Ok(PyElector::spawn(&config))
}

/// Wait until `client` has sent a `get` (a Python follower has read the Lease and found it
/// held: it now polls every retry period).
fn wait_first_get(fake: &FakeK8s, client: &str) -> BoxResult<()> {
    let deadline = Instant::now() + STEP;
    while fake.requests().get(client, "get") == 0 {
        if Instant::now() > deadline {
            return Err(format!("{client} read nothing within {STEP:?}").into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// [`procs::baton_rounds`] for Python candidates: one leads; for each change a new one starts
/// and, once it has read the Lease (it polls from then on), waits [`FOLLOWER_SETTLE`] plus a
/// random part of its retry period (so that the signal falls anywhere in its polling cycle);
/// the bench reads `CLOCK_BOOTTIME` and sends the leader SIGINT (it releases) or SIGKILL; the
/// follower's own stamp on its `became_leader` line ends the change.
fn py_rounds(
    fake: &FakeK8s,
    dir: &Path,
    lease: &str,
    p: Params,
    crash: bool,
) -> BoxResult<Vec<Change>> {
    let rounds = if crash { p.crashes } else { p.process_rounds };
    let mut leader = py_candidate(fake, dir, lease, &format!("{lease}-0"), p.timing)?;
    leader
        .wait_for(EventKind::BecameLeader, STEP)
        .ok_or_else(|| {
            format!(
                "the first Python candidate did not lead: {}",
                leader.stderr()
            )
        })?;
    let mut out = Vec::with_capacity(rounds);
    for n in 1..=rounds {
        let id = format!("{lease}-{n}");
        let follower = py_candidate(fake, dir, lease, &id, p.timing)?;
        wait_first_get(fake, &id)?;
        std::thread::sleep(FOLLOWER_SETTLE + procs::phase(p.timing.renew));
        let pid = leader.pid().ok_or("the Python leader is gone")?;
        let boot0 = procs::boot_ns_now();
        let t0 = Instant::now();
        if crash {
            leader.kill();
        } else {
            kill_process(Pid::from_raw(pid as i32).ok_or("pid 0")?, Signal::INT)?;
        }
        let became = follower
            .wait_for(EventKind::BecameLeader, STEP)
            .ok_or_else(|| format!("{id} did not lead within {STEP:?}: {}", follower.stderr()))?;
        let at_bench = t0.elapsed();
        let leader_stop = if crash {
            None
        } else {
            let stop = leader
                .wait_for(EventKind::LostLeadership, STEP)
                .ok_or("the Python leader printed no lost_leadership")?;
            let status = leader.terminate();
            if !status.is_some_and(|s| s.success()) {
                return Err(format!(
                    "the Python leader exited with {status:?} after SIGINT: {}",
                    leader.stderr()
                )
                .into());
            }
            Some(procs::since(boot0, stop.boot_time.as_nanos() as u64))
        };
        out.push(Change {
            at_bench,
            in_follower: procs::since(boot0, became.boot_time.as_nanos() as u64),
            leader_stop,
        });
        leader = follower;
    }
    leader.terminate();
    Ok(out)
}

/// One Baton leader and one idle Baton follower process (`kubernetes:?kubeconfig=..`, each its
/// own token); the follower's requests over the window.
fn baton_idle(fake: &FakeK8s, baton: &Path, dir: &Path, p: Params) -> BoxResult<Idle> {
    let key = "bench-k8s-idle";
    let url = |client: &str| -> BoxResult<String> {
        Ok(format!(
            "kubernetes:?kubeconfig={}&namespace={NAMESPACE}",
            kubeconfig(fake, dir, client)?.display()
        ))
    };
    let (leader_id, follower_id) = ("baton-idle-leader", "baton-idle-follower");
    let leader = procs::baton_campaign(baton, &url(leader_id)?, key, leader_id, p.timing)?;
    leader
        .wait_line(STEP, |l| procs::is_event(l, "became_leader", leader_id))
        .ok_or("the idle figure's Baton leader did not lead")?;
    let follower = procs::baton_campaign(baton, &url(follower_id)?, key, follower_id, p.timing)?;
    follower
        .wait_line(STEP, |l| procs::is_event(l, "leader_changed", leader_id))
        .ok_or("the idle Baton follower never saw the leader")?;
    let idle = count(fake, leader_id, follower_id, p)?;
    drop((leader, follower));
    Ok(idle)
}

/// The same with two Python candidates.
fn py_idle(fake: &FakeK8s, dir: &Path, p: Params) -> BoxResult<Idle> {
    let lease = "bench-k8s-py-idle";
    let (leader_id, follower_id) = ("py-idle-leader", "py-idle-follower");
    let mut leader = py_candidate(fake, dir, lease, leader_id, p.timing)?;
    leader
        .wait_for(EventKind::BecameLeader, STEP)
        .ok_or_else(|| {
            format!(
                "the idle figure's Python leader did not lead: {}",
                leader.stderr()
            )
        })?;
    let mut follower = py_candidate(fake, dir, lease, follower_id, p.timing)?;
    wait_first_get(fake, follower_id)?;
    let idle = count(fake, leader_id, follower_id, p)?;
    follower.terminate();
    leader.terminate();
    Ok(idle)
}

/// After `settle`, the requests of the window.
fn count(fake: &FakeK8s, leader: &str, follower: &str, p: Params) -> BoxResult<Idle> {
    std::thread::sleep(p.settle);
    let before = fake.requests();
    let t0 = Instant::now();
    std::thread::sleep(p.window);
    let counted = fake.requests().since(&before);
    Ok(Idle {
        window: t0.elapsed(),
        leader: leader.to_owned(),
        follower: follower.to_owned(),
        counted,
    })
}

fn follower_samples(changes: &[Change]) -> Samples {
    Samples::new(changes.iter().map(|c| c.in_follower).collect())
}

fn leader_samples(changes: &[Change]) -> Samples {
    Samples::new(
        changes
            .iter()
            .map(|c| c.leader_stop.unwrap_or_default())
            .collect(),
    )
}

impl Run {
    fn process_handoff(&self) -> Samples {
        follower_samples(&self.baton_handoffs)
    }

    fn failover_ok(&self) -> bool {
        follower_samples(&self.baton_crashes).max() <= self.granted + FAILOVER_SLACK
    }

    pub fn summary_rows(&self) -> Vec<Row> {
        let h = self.process_handoff();
        let ph = follower_samples(&self.py_handoffs);
        let c = follower_samples(&self.baton_crashes);
        let pc = follower_samples(&self.py_crashes);
        vec![
            Row::new(
                "Kubernetes (fake API server): graceful handoff, two `baton` processes",
                format!(
                    "p50 {}, p99 {}, max {} ({} handoffs); Python client p50 {}, p99 {}",
                    ms(h.p(50.0)),
                    ms(h.p(99.0)),
                    ms(h.max()),
                    h.len(),
                    ms(ph.p(50.0)),
                    ms(ph.p(99.0)),
                ),
                format!("p99 ≤ {}", target_ms(PROCESS_HANDOFF_TARGET)),
                h.p(99.0) <= PROCESS_HANDOFF_TARGET,
            ),
            Row::new(
                "Kubernetes (fake API server): crash failover, two `baton` processes",
                format!(
                    "worst of {} crashes {} after the SIGKILL with a {} lease (lease {}); Python client worst {}",
                    c.len(),
                    ms(c.max()),
                    baton::fmt_duration(self.granted),
                    signed_ms(c.max(), self.granted),
                    ms(pc.max()),
                ),
                format!("≤ lease + {}", target_ms(FAILOVER_SLACK)),
                self.failover_ok(),
            ),
            Row::new(
                "Kubernetes (fake API server): idle follower",
                format!(
                    "{:.3} requests/s beyond its watch; Python client {:.2} requests/s",
                    self.baton_idle.follower_rate(),
                    self.py_idle.follower_rate()
                ),
                "0 requests/s beyond its watch",
                self.baton_idle
                    .counted
                    .beyond_watch(&self.baton_idle.follower)
                    == 0,
            ),
        ]
    }

    pub fn report(&self, ctx: &Context) -> String {
        let p = &self.params;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "## Kubernetes Lease store, against a fake API server\n"
        );
        let _ = writeln!(
            out,
            "Every figure here runs against **a fake** Kubernetes API server, \
             `baton_testkit::fake_k8s` (the `baton-fake-k8s` code, served in the bench's own \
             process on a runtime thread of its own, plain HTTP on a loopback port): Leases \
             kept in memory, no etcd behind it, no admission, no authorization. A real API \
             server adds its own latency to every request (an etcd write and its watch cache), \
             so these figures are what Baton's store and its peers add on top of the API \
             server, not what a cluster gives. Baton's processes use `--store \
             kubernetes+http://127.0.0.1:<port>?namespace={NAMESPACE}`. The peer is the Python \
             `kubernetes` client's leader election (PyPI `kubernetes` {}, `LeaseLock`, run by \
             `crates/baton-testkit/python/k8s_elector.py`, which adds a release on SIGINT as \
             client-go's `ReleaseOnCancel` writes it; docs/decisions.md D65), in processes, \
             timed in the same run by the same method as Baton's processes.\n",
            self.py_version
        );

        let _ = writeln!(out, "### Graceful handoff\n");
        let _ = writeln!(
            out,
            "*In one process*: as in *Graceful handoff in one process* above, two elections on \
             two store instances (two HTTP clients) pass leadership back and forth ({}); timed \
             from just before the leader's `stop()` to the follower's `BecameLeader`; the first \
             {} handoffs are a warm-up. *Two processes*: as in *Graceful handoff across \
             processes*: a new follower process starts; once it waits (Baton: it printed \
             `leader_changed` naming the leader; Python, which prints nothing as a follower: \
             the fake counted its first `get` of the Lease) and {} more have passed (for Python \
             also a random part of its retry period, so that the signal falls anywhere in its \
             polling cycle), the bench reads `CLOCK_BOOTTIME` and sends the leader SIGINT; the \
             leader releases and exits; the handoff ends at the follower's own \
             `CLOCK_BOOTTIME` stamp on its `became_leader` line. Both kinds of process run with \
             the same timing: Baton `{}`; Python `lease_duration` {} s, `retry_period` {} \
             (its renew and poll period), `renew_deadline` {}.\n",
            p.handoff_timing.describe(),
            p.warmup,
            baton::fmt_duration(FOLLOWER_SETTLE),
            procs::campaign_args("URL", "KEY", p.timing),
            p.timing.lease.as_secs_f64().ceil(),
            baton::fmt_duration(p.timing.renew),
            baton::fmt_duration(p.timing.lease.saturating_sub(p.timing.grace)),
        );
        let _ = writeln!(
            out,
            "| candidates | handoffs | p50 | p99 | min | mean | max | leader's stop p50 | target |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---|");
        let ip = &self.in_process;
        let _ = writeln!(
            out,
            "| Baton, one process | {} | {} | {} | {} | {} | {} | – | none |",
            ip.len(),
            ms(ip.p(50.0)),
            ms(ip.p(99.0)),
            ms(ip.min()),
            ms(ip.mean()),
            ms(ip.max()),
        );
        let h = self.process_handoff();
        let ph = follower_samples(&self.py_handoffs);
        for (name, s, changes, target) in [
            (
                "Baton, two `baton` processes",
                &h,
                &self.baton_handoffs,
                format!(
                    "p99 ≤ {}: {}",
                    target_ms(PROCESS_HANDOFF_TARGET),
                    verdict(h.p(99.0) <= PROCESS_HANDOFF_TARGET, || format!(
                        "by {}",
                        ms(h.p(99.0).saturating_sub(PROCESS_HANDOFF_TARGET))
                    ))
                ),
            ),
            (
                "Python client, two processes",
                &ph,
                &self.py_handoffs,
                "(the peer)".to_owned(),
            ),
        ] {
            let _ = writeln!(
                out,
                "| {name} | {} | {} | {} | {} | {} | {} | {} | {target} |",
                s.len(),
                ms(s.p(50.0)),
                ms(s.p(99.0)),
                ms(s.min()),
                ms(s.mean()),
                ms(s.max()),
                ms(leader_samples(changes).p(50.0)),
            );
        }
        let _ = writeln!(
            out,
            "| Python / Baton, two processes | | {} | {} | {} | {} | {} | | |\n",
            ratio(ph.p(50.0), h.p(50.0)),
            ratio(ph.p(99.0), h.p(99.0)),
            ratio(ph.min(), h.min()),
            ratio(ph.mean(), h.mean()),
            ratio(ph.max(), h.max()),
        );
        let _ = writeln!(
            out,
            "*Leader's stop* is from the SIGINT to the leader's own stamp on its \
             `lost_leadership` line (its release follows). A Baton follower watches the Lease, \
             so the fake's watch event for the release reaches it at once and it acquires; a \
             Python follower reads the Lease every `retry_period` and finds it free at its \
             next read, so its handoff is spread over one retry period ({}).\n",
            baton::fmt_duration(p.timing.renew)
        );

        let _ = writeln!(out, "### Crash failover\n");
        let c = follower_samples(&self.baton_crashes);
        let pc = follower_samples(&self.py_crashes);
        let _ = writeln!(
            out,
            "The same rounds with SIGKILL instead of SIGINT, each follower (Baton's too) left to \
             settle a random part of the renew interval more, so that the kill falls anywhere in \
             the leader's renew interval: the leader process dies without a release; timed from just before the SIGKILL to the follower's own stamp on \
             `became_leader`. Baton's lease: `--lease {}`, which the store grants as \
             `leaseDurationSeconds` {} (`granted_ttl`: whole seconds, rounded up); a Baton \
             follower takes the Lease once that long has passed since it last saw the record \
             change (client-go's rule), which it sees through its watch at every renewal. The \
             kill falls anywhere in the leader's renew interval ({}), so a failover is between \
             about the lease minus one renew interval and the lease, plus the follower's \
             jitter and its acquire; the target bounds the worst. The Python follower applies \
             the same rule with its own `lease_duration` ({} s), but learns of changes only at \
             its reads, every `retry_period`.\n",
            baton::fmt_duration(p.timing.lease),
            self.granted.as_secs(),
            baton::fmt_duration(p.timing.renew),
            p.timing.lease.as_secs_f64().ceil(),
        );
        let _ = writeln!(
            out,
            "| candidates | crashes | lease | min | mean | max | max − lease | target ≤ lease + {} |",
            target_ms(FAILOVER_SLACK)
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---|");
        let _ = writeln!(
            out,
            "| Baton, two `baton` processes | {} | {} | {} | {} | {} | {} | {} |",
            c.len(),
            baton::fmt_duration(self.granted),
            ms(c.min()),
            ms(c.mean()),
            ms(c.max()),
            signed_ms(c.max(), self.granted),
            verdict(self.failover_ok(), || format!(
                "by {}",
                ms(c.max().saturating_sub(self.granted + FAILOVER_SLACK))
            )),
        );
        let py_lease = Duration::from_secs(p.timing.lease.as_secs_f64().ceil() as u64);
        let _ = writeln!(
            out,
            "| Python client, two processes | {} | {} | {} | {} | {} | {} | (the peer) |",
            pc.len(),
            baton::fmt_duration(py_lease),
            ms(pc.min()),
            ms(pc.mean()),
            ms(pc.max()),
            signed_ms(pc.max(), py_lease),
        );
        let _ = writeln!(
            out,
            "| Python / Baton | | | {} | {} | {} | | |\n",
            ratio(pc.min(), c.min()),
            ratio(pc.mean(), c.mean()),
            ratio(pc.max(), c.max()),
        );
        let _ = writeln!(
            out,
            "Each crash (ms after the SIGKILL): Baton {}; Python {}.\n",
            list(&self.baton_crashes),
            list(&self.py_crashes)
        );

        let _ = writeln!(out, "### An idle follower's requests\n");
        let _ = writeln!(
            out,
            "One leader and one follower process on one Lease, each with a kubeconfig of its \
             own (Baton: `--store kubernetes:?kubeconfig=<its file>&namespace={NAMESPACE}`) \
             whose bearer token names it; the fake, which checks no token, counts every request \
             under the token it carries and its verb (a request counter that only the fake \
             has, `baton_testkit::fake_k8s::requests`, also served at \
             `/debug/baton-fake/requests`; a watch counts once, when it is opened). So the \
             follower's requests are told apart from the leader's by who sent them, in the \
             same window. Counted over {:.1} s, after both had run {} as leader and follower; \
             same timing as above.\n",
            self.baton_idle.window.as_secs_f64(),
            baton::fmt_duration(p.settle),
        );
        let _ = writeln!(
            out,
            "| candidates | follower: requests/s beyond its watch | follower's requests | leader: requests/s | leader's requests | target |"
        );
        let _ = writeln!(out, "|---|---:|---|---:|---|---|");
        for (name, idle, target) in [
            (
                "Baton",
                &self.baton_idle,
                format!(
                    "0 beyond its watch: {}",
                    verdict(idle_zero(&self.baton_idle), || "see below".to_owned())
                ),
            ),
            ("Python client", &self.py_idle, "(the peer)".to_owned()),
        ] {
            let _ = writeln!(
                out,
                "| {name} | {:.3} | {} | {:.2} | {} | {target} |",
                idle.follower_rate(),
                idle.counted.describe(&idle.follower),
                idle.leader_rate(),
                idle.counted.describe(&idle.leader),
            );
        }
        out.push('\n');
        let _ = writeln!(
            out,
            "A Baton follower keeps one watch open and reads nothing while the leader renews: \
             each renewal reaches it as a watch event. A Python follower reads the Lease once \
             per `retry_period` ({}), as a Python leader does before each renewal's `update`.\n",
            baton::fmt_duration(p.timing.renew)
        );
        out.push_str(&ctx.footer(&[
            "kubernetes",
            &format!("`baton` CLI processes ({} build)", ctx.profile),
            &format!("Python `kubernetes` {} (target/py-k8s)", self.py_version),
        ]));
        out
    }
}

/// `a − b` as `+1.234 ms` or `−1.234 ms`.
fn signed_ms(a: Duration, b: Duration) -> String {
    if a >= b {
        format!("+ {}", ms(a - b))
    } else {
        format!("− {}", ms(b - a))
    }
}

fn idle_zero(idle: &Idle) -> bool {
    idle.counted.beyond_watch(&idle.follower) == 0
}

fn list(changes: &[Change]) -> String {
    changes
        .iter()
        .map(|c| format!("{:.1}", c.in_follower.as_secs_f64() * 1e3))
        .collect::<Vec<_>>()
        .join(", ")
}
