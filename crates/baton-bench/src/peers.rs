//! Peers, measured in the same run on the same server as Baton:
//!
//! * **`etcdctl elect`** (etcd's own `concurrency.Election`, from the Debian `etcd-client`)
//!   against two `baton --store etcd://... campaign --json` processes: graceful handoff (SIGINT
//!   to the leader process → the follower's "I lead" line arrives at the bench) and crash
//!   failover (SIGKILL instead). Both sides are timed the same way: from just before the
//!   signal to the arrival of the follower's output line at the bench's reader thread.
//! * **A naive SET NX poll client** for Redis, written from the Redis docs' single-instance
//!   lock pattern as most services use it: `SET key id NX PX lease` retried at a fixed
//!   interval until it succeeds, release by a compare-and-delete script, renewal by a
//!   compare-and-pexpire script. Measured in process, like Baton's Redis figures, with the same
//!   lease and renew interval.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use rustix::process::Signal;

use crate::BoxResult;
use crate::cost;
use crate::failover;
use crate::handoff;
use crate::procs::{self, Proc, STEP};
use crate::redis_admin::Admin;
use crate::report::{Context, Row, Samples, ms};
use crate::stores::{StoreKind, Timing};

/// A small random duration in `[0, max)` (no cryptographic needs: phases of a poll loop).
fn random_below(max: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    // RandomState is seeded randomly (and differently for each instance); the time adds more.
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    let nanos = max.as_nanos().max(1) as u64;
    Duration::from_nanos(h.finish() % nanos)
}

// ---------------------------------------------------------------------------------------------
// etcdctl elect against baton campaign, across processes.

#[derive(Debug, Clone, Copy)]
pub struct EtcdctlParams {
    pub rounds: usize,
    pub baton_crashes: usize,
    pub etcdctl_crashes: usize,
    /// How long an `etcdctl elect` crash failover is waited for (its session TTL is 60 s).
    pub etcdctl_crash_cap: Duration,
    /// Baton's election timing.
    pub timing: Timing,
}

pub struct EtcdctlRun {
    pub params: EtcdctlParams,
    pub etcdctl_handoff: Samples,
    pub baton_handoff: Samples,
    /// `None`: not within the cap.
    pub etcdctl_crashes: Vec<Option<Duration>>,
    pub baton_crashes: Vec<Duration>,
    pub etcdctl_version: String,
    pub etcd_version: String,
}

/// The number of keys under `prefix`.
fn etcd_keys(endpoint: &str, prefix: &str) -> BoxResult<usize> {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            endpoint,
            "get",
            prefix,
            "--prefix",
            "--keys-only",
        ])
        .output()?;
    if !out.status.success() {
        return Err(format!("etcdctl get: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count())
}

/// How many watchers the etcd server at `endpoint` (`127.0.0.1:PORT`, plain HTTP) has open,
/// from its `/metrics` (`etcd_debugging_mvcc_watcher_total`).
fn etcd_watchers(endpoint: &str) -> BoxResult<u64> {
    let port: u16 = endpoint
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .ok_or_else(|| format!("no port in the etcd endpoint {endpoint}"))?;
    let text = crate::dbs::http_get(port, "/metrics")?;
    Ok(text
        .lines()
        .find_map(|line| line.strip_prefix("etcd_debugging_mvcc_watcher_total "))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .map_or(0, |value| value as u64))
}

/// Wait until the etcd server at `endpoint` has more than `before` watchers: a new
/// `etcdctl elect` follower has reached its watch on its predecessor's key.
fn wait_watchers_above(endpoint: &str, before: u64) -> BoxResult<()> {
    let deadline = Instant::now() + STEP;
    while etcd_watchers(endpoint)? <= before {
        if Instant::now() > deadline {
            return Err(format!("etcd: no new watcher within {STEP:?}").into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

fn wait_keys(endpoint: &str, prefix: &str, n: usize) -> BoxResult<()> {
    let deadline = Instant::now() + STEP;
    while etcd_keys(endpoint, prefix)? != n {
        if Instant::now() > deadline {
            return Err(format!("etcd: {prefix}* never had {n} keys").into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

fn etcdctl_elect(endpoint: &str, name: &str, proposal: &str) -> BoxResult<Proc> {
    let mut cmd = Command::new("etcdctl");
    cmd.env("ETCDCTL_API", "3")
        .args(["--endpoints", endpoint, "elect", name, proposal]);
    Proc::spawn(cmd, format!("etcdctl elect {name} {proposal}"), false)
}

/// `etcdctl elect` prints the leader key (`NAME/<lease>`) and then the proposal once elected.
fn elected(name: &str) -> impl Fn(&str) -> bool + '_ {
    move |line: &str| line.starts_with(&format!("{name}/"))
}

/// Graceful handoffs (`crash` = false, SIGINT) or crash failovers (SIGKILL) of `etcdctl elect`,
/// each timed from just before the signal to the arrival of the follower's leader key at the
/// bench. The leader is signalled once the follower watches its predecessor (D54).
pub fn etcdctl_rounds(
    endpoint: &str,
    name: &str,
    rounds: usize,
    crash: bool,
    cap: Duration,
) -> BoxResult<Vec<Option<Duration>>> {
    let prefix = format!("{name}/");
    let mut n = 0;
    let mut leader = etcdctl_elect(endpoint, name, "p0")?;
    leader
        .wait_line(STEP, elected(name))
        .ok_or("the first etcdctl elect did not lead")?;
    let mut out = Vec::new();
    for _ in 0..rounds {
        n += 1;
        let watchers = etcd_watchers(endpoint)?;
        let mut follower = etcdctl_elect(endpoint, name, &format!("p{n}"))?;
        wait_keys(endpoint, &prefix, 2)?; // the follower's entry is in the queue
        // ...and it watches its predecessor, and has settled as Baton's followers do. A leader
        // stopped as soon as the entry appears is timed with the rest of the follower's
        // start-up: p50 about 40-60 ms instead of about 4 ms on this machine (D54).
        wait_watchers_above(endpoint, watchers)?;
        std::thread::sleep(procs::FOLLOWER_SETTLE);
        let t0 = Instant::now();
        leader.signal(if crash { Signal::KILL } else { Signal::INT })?;
        let arrived = follower
            .wait_line(if crash { cap } else { STEP }, elected(name))
            .map(|(at, _)| at);
        out.push(arrived.map(|at| at.saturating_duration_since(t0)));
        leader.wait_exit(STEP)?;
        if arrived.is_none() {
            if !crash {
                return Err("etcdctl elect: no handoff within 30 s".into());
            }
            // Not within the cap: end this follower too and wait for the queue to empty.
            follower.signal(Signal::KILL)?;
            follower.wait_exit(STEP)?;
            return Ok(out);
        }
        leader = follower;
    }
    leader.signal(Signal::INT)?;
    leader.wait_exit(STEP)?;
    Ok(out)
}

/// Baton's changes timed as `etcdctl elect`'s are: on arrival at the bench.
fn at_bench(changes: Vec<procs::Change>) -> Vec<Duration> {
    changes.into_iter().map(|c| c.at_bench).collect()
}

pub fn etcdctl_vs_baton(
    endpoint: &str,
    url: &str,
    baton: &Path,
    p: EtcdctlParams,
) -> BoxResult<EtcdctlRun> {
    let tag = std::process::id();
    eprintln!("vs-etcdctl: {} graceful handoffs each", p.rounds);
    let etcdctl_handoff: Vec<Duration> = etcdctl_rounds(
        endpoint,
        &format!("bench-etcdctl-{tag}"),
        p.rounds,
        false,
        STEP,
    )?
    .into_iter()
    .flatten()
    .collect();
    let baton_handoff = at_bench(procs::baton_rounds(
        baton,
        url,
        &format!("bench-baton-{tag}"),
        p.timing,
        p.rounds,
        false,
    )?);
    eprintln!(
        "vs-etcdctl: {} baton crashes, {} etcdctl crashes (each up to {:?})",
        p.baton_crashes, p.etcdctl_crashes, p.etcdctl_crash_cap
    );
    let baton_crashes = at_bench(procs::baton_rounds(
        baton,
        url,
        &format!("bench-baton-crash-{tag}"),
        p.timing,
        p.baton_crashes,
        true,
    )?);
    let mut etcdctl_crashes = Vec::new();
    for i in 0..p.etcdctl_crashes {
        // A fresh name per crash: a crash that ran past the cap leaves its entry behind.
        etcdctl_crashes.extend(etcdctl_rounds(
            endpoint,
            &format!("bench-etcdctl-crash-{tag}-{i}"),
            1,
            true,
            p.etcdctl_crash_cap,
        )?);
    }
    let etcd_version = procs::tool_version("etcd", "--version");
    Ok(EtcdctlRun {
        params: p,
        etcdctl_handoff: Samples::new(etcdctl_handoff),
        baton_handoff: Samples::new(baton_handoff),
        etcdctl_crashes,
        baton_crashes,
        etcdctl_version: procs::tool_version("etcdctl", "version"),
        etcd_version,
    })
}

pub fn ratio(a: Duration, b: Duration) -> String {
    if b.is_zero() {
        "–".to_owned()
    } else {
        format!("{:.1}×", a.as_secs_f64() / b.as_secs_f64())
    }
}

/// etcdctl's session TTL (`concurrency.NewSession` default; `etcdctl elect` has no flag for it).
const ETCDCTL_TTL: Duration = Duration::from_secs(60);

impl EtcdctlRun {
    fn crash_samples(&self) -> (Samples, Option<Samples>) {
        let baton = Samples::new(self.baton_crashes.clone());
        let etcdctl: Vec<Duration> = self.etcdctl_crashes.iter().flatten().copied().collect();
        (baton, (!etcdctl.is_empty()).then(|| Samples::new(etcdctl)))
    }

    fn capped(&self) -> usize {
        self.etcdctl_crashes.iter().filter(|c| c.is_none()).count()
    }

    pub fn summary_rows(&self) -> Vec<Row> {
        let (b, e) = (&self.baton_handoff, &self.etcdctl_handoff);
        let mut rows = vec![Row::new(
            "etcd: graceful handoff, two processes, vs `etcdctl elect`",
            format!(
                "Baton p50 {}, p99 {}; etcdctl p50 {}, p99 {} (etcdctl/Baton: {} at p50, {} at p99)",
                ms(b.p(50.0)),
                ms(b.p(99.0)),
                ms(e.p(50.0)),
                ms(e.p(99.0)),
                ratio(e.p(50.0), b.p(50.0)),
                ratio(e.p(99.0), b.p(99.0))
            ),
            "better than `etcdctl elect`",
            b.p(50.0) < e.p(50.0) && b.p(99.0) < e.p(99.0),
        )];
        let (bc, ec) = self.crash_samples();
        let etcdctl_best = ec
            .as_ref()
            .map_or(self.params.etcdctl_crash_cap, Samples::min);
        let lease = self.params.timing.lease;
        let bound = baton::store::etcd::granted_ttl(lease) + Duration::from_secs(1);
        rows.push(Row::new(
            "etcd: crash failover, two processes, vs `etcdctl elect`",
            format!(
                "Baton worst {} (lease {}); etcdctl {} (session TTL 60 s, fixed)",
                ms(bc.max()),
                baton::fmt_duration(lease),
                match &ec {
                    Some(ec) if self.capped() == 0 => format!("best {}", ms(ec.min())),
                    _ => format!(
                        "{} of {} crashes not within the {} cap{}",
                        self.capped(),
                        self.etcdctl_crashes.len(),
                        baton::fmt_duration(self.params.etcdctl_crash_cap),
                        if bc.max() >= self.params.etcdctl_crash_cap {
                            ", shorter than Baton's failover: no comparison"
                        } else {
                            ""
                        }
                    ),
                }
            ),
            "≤ TTL rounded up + 1 s, and better than `etcdctl elect`",
            bc.max() <= bound && bc.max() < etcdctl_best,
        ));
        rows
    }

    pub fn report(&self, ctx: &Context) -> String {
        let p = &self.params;
        let (b, e) = (&self.baton_handoff, &self.etcdctl_handoff);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "## etcd: Baton against `etcdctl elect`, two processes\n"
        );
        let _ = writeln!(
            out,
            "On the bench's own etcd. `etcdctl elect NAME PROPOSAL` (etcd's `concurrency.Election`) \
             against `baton --store etcd://127.0.0.1:<port> --key NAME --lease {} --renew {} \
             --grace {} campaign --json` (which speaks the same protocol). One process leads, a \
             second one waits (for etcdctl: its entry is in the queue; for Baton: it printed \
             `leader_changed` naming the leader); the bench sends the leader SIGINT (graceful: \
             etcdctl resigns, Baton releases) or SIGKILL (crash) and times, on one clock, from \
             just before the signal to the arrival of the follower's first output line as the \
             new leader at the bench (etcdctl: the leader key it prints once elected; Baton: \
             `became_leader`). Both include process signalling and the pipe to the bench.\n",
            baton::fmt_duration(p.timing.lease),
            baton::fmt_duration(p.timing.renew),
            baton::fmt_duration(p.timing.grace),
        );
        let _ = writeln!(
            out,
            "| graceful handoff | handoffs | p50 | p99 | min | mean | max |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|");
        for (who, s) in [("Baton", b), ("`etcdctl elect`", e)] {
            let _ = writeln!(
                out,
                "| {who} | {} | {} | {} | {} | {} | {} |",
                s.len(),
                ms(s.p(50.0)),
                ms(s.p(99.0)),
                ms(s.min()),
                ms(s.mean()),
                ms(s.max())
            );
        }
        let _ = writeln!(
            out,
            "| etcdctl / Baton | | {} | {} | {} | {} | {} |\n",
            ratio(e.p(50.0), b.p(50.0)),
            ratio(e.p(99.0), b.p(99.0)),
            ratio(e.min(), b.min()),
            ratio(e.mean(), b.mean()),
            ratio(e.max(), b.max())
        );

        let (bc, ec) = self.crash_samples();
        let _ = writeln!(
            out,
            "Crash failover: `etcdctl elect` keeps its session's default TTL of 60 s (it has no \
             flag to change it), so its follower waits out that lease; Baton's lease is the \
             election's ({} here, a whole number of seconds in etcd). Each etcdctl crash is \
             waited for at most {}{}.\n",
            baton::fmt_duration(p.timing.lease),
            baton::fmt_duration(p.etcdctl_crash_cap),
            if p.etcdctl_crash_cap < ETCDCTL_TTL {
                " (shorter than its TTL: a short run only checks that the measurement works)"
            } else {
                ""
            }
        );
        let _ = writeln!(
            out,
            "| crash failover | crashes | lease (TTL) | min | mean | max | max − TTL |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|");
        let _ = writeln!(
            out,
            "| Baton | {} | {} | {} | {} | {} | {} |",
            bc.len(),
            baton::fmt_duration(p.timing.lease),
            ms(bc.min()),
            ms(bc.mean()),
            ms(bc.max()),
            ms(bc.max().saturating_sub(p.timing.lease))
        );
        match &ec {
            Some(ec) => {
                let _ = writeln!(
                    out,
                    "| `etcdctl elect` | {}{} | 60s | {} | {} | {} | {} |",
                    ec.len(),
                    if self.capped() > 0 {
                        format!(" (+{} over the cap)", self.capped())
                    } else {
                        String::new()
                    },
                    ms(ec.min()),
                    ms(ec.mean()),
                    ms(ec.max()),
                    ms(ec.max().saturating_sub(ETCDCTL_TTL))
                );
                let _ = writeln!(
                    out,
                    "| etcdctl / Baton | | | {} | {} | {} | |\n",
                    ratio(ec.min(), bc.min()),
                    ratio(ec.mean(), bc.mean()),
                    ratio(ec.max(), bc.max())
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "| `etcdctl elect` | {} | 60s | not within {} | | | |\n",
                    self.etcdctl_crashes.len(),
                    baton::fmt_duration(p.etcdctl_crash_cap)
                );
            }
        }
        let _ = writeln!(
            out,
            "The crash ratio compares the two tools as shipped (etcdctl's TTL is fixed at 60 s, \
             Baton's lease is configurable); the *max − TTL* column compares what each adds to \
             its lease. Both time from the SIGKILL, while each lease ran from the last keepalive \
             before it: Baton's leader renews every {}; an etcdctl session sends one every 20 s \
             (a third of its TTL), and here the kill comes within about a second of the \
             session's start, so each failover is about the TTL plus etcd's expiry check \
             (every 500 ms).\n",
            baton::fmt_duration(p.timing.renew)
        );
        out.push_str(&ctx.footer(&[&format!(
            "`baton` CLI processes ({} build), Baton's generated etcd client on tonic {}; `{}`; server: `{}` (spawned by the bench on a free loopback port)",
            ctx.profile,
            env!("BENCH_TONIC_VERSION"),
            self.etcdctl_version,
            self.etcd_version
        )]));
        out
    }
}

// ---------------------------------------------------------------------------------------------
// The naive SET NX poll client for Redis.

/// Release: delete the key only if it still holds our id.
const NAIVE_RELEASE: &str = r#"if redis.call("get", KEYS[1]) == ARGV[1] then
    return redis.call("del", KEYS[1])
else
    return 0
end"#;

/// Renew: extend the key only if it still holds our id.
const NAIVE_RENEW: &str = r#"if redis.call("get", KEYS[1]) == ARGV[1] then
    return redis.call("pexpire", KEYS[1], ARGV[2])
else
    return 0
end"#;

/// One client of the naive lock pattern, on a connection of its own.
#[derive(Clone)]
struct Naive {
    conn: MultiplexedConnection,
    key: String,
    id: String,
    lease: Duration,
}

impl Naive {
    async fn connect(url: &str, key: &str, id: &str, lease: Duration) -> BoxResult<Naive> {
        let client = redis::Client::open(url)?;
        Ok(Naive {
            conn: client.get_multiplexed_async_connection().await?,
            key: key.to_owned(),
            id: id.to_owned(),
            lease,
        })
    }

    /// One `SET key id NX PX lease`: whether it took the lock.
    async fn try_lock(&mut self) -> BoxResult<bool> {
        let reply: Option<String> = redis::cmd("SET")
            .arg(&self.key)
            .arg(&self.id)
            .arg("NX")
            .arg("PX")
            .arg(self.lease.as_millis() as u64)
            .query_async(&mut self.conn)
            .await?;
        Ok(reply.is_some())
    }

    /// Poll every `retry` until the lock is ours; the instant the winning reply arrived.
    /// `polling` is told after the first failed attempt.
    async fn lock(
        &mut self,
        retry: Duration,
        mut polling: Option<tokio::sync::oneshot::Sender<()>>,
    ) -> BoxResult<Instant> {
        loop {
            if self.try_lock().await? {
                return Ok(Instant::now());
            }
            if let Some(tx) = polling.take() {
                let _ = tx.send(());
            }
            tokio::time::sleep(retry).await;
        }
    }

    async fn renew(&mut self) -> BoxResult<bool> {
        let n: i64 = redis::Script::new(NAIVE_RENEW)
            .key(&self.key)
            .arg(&self.id)
            .arg(self.lease.as_millis() as u64)
            .invoke_async(&mut self.conn)
            .await?;
        Ok(n == 1)
    }

    async fn unlock(&mut self) -> BoxResult<bool> {
        let n: i64 = redis::Script::new(NAIVE_RELEASE)
            .key(&self.key)
            .arg(&self.id)
            .invoke_async(&mut self.conn)
            .await?;
        Ok(n == 1)
    }

    /// Renew every `every` in a task of its own, until aborted.
    fn renewing(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let mut me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match me.renew().await {
                    Ok(true) => {}
                    _ => return,
                }
            }
        })
    }
}

#[derive(Debug, Clone, Copy)]
pub struct NaiveParams {
    pub retry: Duration,
    /// Lease and renew interval of both clients' handoffs and crashes.
    pub timing: Timing,
    pub warmup: usize,
    pub rounds: usize,
    pub crashes: usize,
    /// Both clients' cost run (Baton's through [`cost::measure`]).
    pub cost: cost::Params,
}

pub struct NaiveRun {
    pub params: NaiveParams,
    pub naive_handoff: Samples,
    pub baton_handoff: Samples,
    pub naive_crashes: Samples,
    pub baton_crashes: Samples,
    pub naive_leader: f64,
    pub naive_follower: f64,
    pub baton_leader: f64,
    pub baton_follower: f64,
}

pub async fn naive_vs_baton(url: &str, admin: &mut Admin, p: NaiveParams) -> BoxResult<NaiveRun> {
    let kind = StoreKind::Redis(url.to_owned());
    let lease = p.timing.lease;
    let step = |what: &str| format!("naive client: {what} within {STEP:?}");

    // Graceful handoffs.
    eprintln!("vs-naive-redis: {} graceful handoffs each", p.rounds);
    let key = "bench:naive:handoff";
    let mut leader = Naive::connect(url, key, "n0", lease).await?;
    if !leader.try_lock().await? {
        return Err("naive client: the first lock failed".into());
    }
    let mut renewer = leader.renewing(p.timing.renew);
    let mut samples = Vec::new();
    for round in 1..=p.warmup + p.rounds {
        let mut follower = Naive::connect(url, key, &format!("n{round}"), lease).await?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let retry = p.retry;
        let waiting = tokio::spawn(async move {
            let at = follower.lock(retry, Some(tx)).await?;
            BoxResult::Ok((follower, at))
        });
        tokio::time::timeout(STEP, rx)
            .await
            .map_err(|_| step("no failed first attempt"))??;
        // A release comes at a moment unrelated to the follower's polling.
        tokio::time::sleep(random_below(p.retry)).await;
        let t0 = Instant::now();
        renewer.abort();
        if !leader.unlock().await? {
            return Err(
                format!("naive client: round {round}: the leader had lost the lock").into(),
            );
        }
        let (follower, at) = tokio::time::timeout(STEP, waiting)
            .await
            .map_err(|_| step("no handoff"))???;
        if round > p.warmup {
            samples.push(at.saturating_duration_since(t0));
        }
        leader = follower;
        renewer = leader.renewing(p.timing.renew);
    }
    renewer.abort();
    leader.unlock().await?;
    let naive_handoff = Samples::new(samples);
    let baton_handoff = handoff::graceful(
        [kind.open()?, kind.open()?],
        "bench:naive:baton-handoff",
        p.timing,
        p.warmup,
        p.rounds,
    )
    .await?;

    // Crashes.
    eprintln!("vs-naive-redis: {} crashes each", p.crashes);
    let key = "bench:naive:crash";
    let mut crashes = Vec::new();
    for round in 0..p.crashes {
        let mut crashed = Naive::connect(url, key, &format!("crashed-{round}"), lease).await?;
        let mut last_send = Instant::now();
        if !crashed.try_lock().await? {
            return Err(format!("naive client: crash {round}: the key is still held").into());
        }
        let mut follower = Naive::connect(url, key, &format!("survivor-{round}"), lease).await?;
        let retry = p.retry;
        let waiting = tokio::spawn(async move {
            let at = follower.lock(retry, None).await?;
            BoxResult::Ok((follower, at))
        });
        for _ in 0..round % 3 {
            tokio::time::sleep_until((last_send + p.timing.renew).into()).await;
            let t = Instant::now();
            if !crashed.renew().await? {
                return Err("naive client: renewal lost the lock".into());
            }
            last_send = t;
        }
        drop(crashed); // no release, no more renewals
        let (mut follower, at) = tokio::time::timeout(lease * 3 + STEP, waiting)
            .await
            .map_err(|_| step("no failover"))???;
        crashes.push(at.saturating_duration_since(last_send));
        follower.unlock().await?;
    }
    let naive_crashes = Samples::new(crashes);
    let baton_crashes = Samples::new(
        failover::crashes(
            [kind.open()?, kind.open()?],
            "bench:naive:baton-crash",
            p.timing,
            p.crashes,
            false,
        )
        .await?
        .into_iter()
        .map(|c| c.failover)
        .collect(),
    );

    // Cost: 1 leader + N followers, each on its own connection.
    eprintln!(
        "vs-naive-redis: cost, 1 leader + {} followers for {:?} each",
        p.cost.followers, p.cost.window
    );
    let c = p.cost;
    let key = "bench:naive:cost";
    let mut leader = Naive::connect(url, key, "cost-leader", c.timing.lease).await?;
    if !leader.try_lock().await? {
        return Err("naive client: the cost leader could not lock".into());
    }
    let renewer = leader.renewing(c.timing.renew);
    let mut pollers = Vec::new();
    for i in 0..c.followers {
        let mut f = Naive::connect(url, key, &format!("cost-follower-{i}"), c.timing.lease).await?;
        let retry = p.retry;
        pollers.push(tokio::spawn(async move { f.lock(retry, None).await }));
    }
    tokio::time::sleep(c.settle).await;
    admin.reset_stats().await?;
    let t0 = Instant::now();
    tokio::time::sleep(c.window).await;
    let stats = admin.command_stats().await?;
    let secs = t0.elapsed().as_secs_f64();
    let renewing = !renewer.is_finished();
    renewer.abort();
    let mut stray = Vec::new();
    for h in pollers {
        if h.is_finished() {
            stray.push(match h.await? {
                Ok(_) => "locked".to_owned(),
                Err(e) => e.to_string(),
            });
        } else {
            h.abort();
        }
    }
    leader.unlock().await?;
    if !renewing || !stray.is_empty() {
        return Err(format!(
            "naive client: the cost run was not steady: leader renewing = {renewing}, \
             followers that stopped polling: {stray:?}"
        )
        .into());
    }
    // `SET` comes only from followers' attempts; the leader's renewals are script calls.
    let naive_follower = stats.get("set") as f64 / secs / c.followers as f64;
    let naive_leader = (stats.get("evalsha") + stats.get("eval")) as f64 / secs;
    let baton_cost = cost::measure(&kind, admin, c).await?;

    Ok(NaiveRun {
        params: p,
        naive_handoff,
        baton_handoff,
        naive_crashes,
        baton_crashes,
        naive_leader,
        naive_follower,
        baton_leader: baton_cost.leader_rate(),
        baton_follower: baton_cost.follower_rate(),
    })
}

impl NaiveRun {
    pub fn summary_rows(&self) -> Vec<Row> {
        let (b, n) = (&self.baton_handoff, &self.naive_handoff);
        let retry = baton::fmt_duration(self.params.retry);
        vec![
            Row::new(
                format!("Redis vs naive SET NX poll client ({retry} retry): graceful handoff"),
                format!(
                    "Baton p50 {}, p99 {}; naive p50 {}, p99 {} (naive/Baton: {} at p50, {} at p99)",
                    ms(b.p(50.0)),
                    ms(b.p(99.0)),
                    ms(n.p(50.0)),
                    ms(n.p(99.0)),
                    ratio(n.p(50.0), b.p(50.0)),
                    ratio(n.p(99.0), b.p(99.0))
                ),
                "better than the naive client",
                b.p(50.0) < n.p(50.0) && b.p(99.0) < n.p(99.0),
            ),
            Row::new(
                format!("Redis vs naive SET NX poll client ({retry} retry): crash failover"),
                format!(
                    "worst: Baton {}, naive {} ({} lease)",
                    ms(self.baton_crashes.max()),
                    ms(self.naive_crashes.max()),
                    baton::fmt_duration(self.params.timing.lease)
                ),
                "better than the naive client",
                self.baton_crashes.max() < self.naive_crashes.max(),
            ),
            Row::new(
                format!("Redis vs naive SET NX poll client ({retry} retry): idle follower"),
                format!(
                    "Baton {:.3} requests/s, naive {:.2} requests/s each",
                    self.baton_follower, self.naive_follower
                ),
                "better than the naive client",
                self.baton_follower < self.naive_follower,
            ),
        ]
    }

    pub fn report(&self, ctx: &Context) -> String {
        let p = &self.params;
        let retry = baton::fmt_duration(p.retry);
        let mut out = String::new();
        let _ = writeln!(out, "## Redis: Baton against a naive SET NX poll client\n");
        let _ = writeln!(
            out,
            "The *naive SET NX poll client* is the Redis docs' single-instance lock pattern as \
             most services use it, written for this bench: `SET key id NX PX <lease>` retried \
             every {retry} until it succeeds; release by a compare-and-delete Lua script \
             (`if GET == id then DEL`), renewal by a compare-and-pexpire script every renew \
             interval. Both clients run in process on the bench's redis-server, each candidate \
             on its own connection, with the same lease and renew interval ({}). Handoff: from \
             just before the leader's release (Baton: `stop()`) to the follower's winning reply \
             (Baton: `BecameLeader`); the naive leader releases at a random moment of the \
             follower's retry period, as a real release would. Crash: the leader stops renewing \
             without releasing; from just before its last lock/renew send to the follower's \
             win. Cost: 1 leader + {} idle followers, counted by the server (`INFO \
             commandstats`) over {:.1} s ({}): naive followers send `SET`, Baton's are counted \
             as in *Cost on Redis* above.\n",
            p.timing.describe(),
            p.cost.followers,
            p.cost.window.as_secs_f64(),
            p.cost.timing.describe()
        );
        let _ = writeln!(
            out,
            "| figure | Baton | naive SET NX poll client | naive / Baton |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|");
        let (b, n) = (&self.baton_handoff, &self.naive_handoff);
        for (what, x, y) in [
            ("handoff p50", b.p(50.0), n.p(50.0)),
            ("handoff p99", b.p(99.0), n.p(99.0)),
            ("handoff max", b.max(), n.max()),
        ] {
            let _ = writeln!(
                out,
                "| {what} ({} handoffs each) | {} | {} | {} |",
                b.len(),
                ms(x),
                ms(y),
                ratio(y, x)
            );
        }
        let (bc, nc) = (&self.baton_crashes, &self.naive_crashes);
        for (what, x, y) in [
            ("crash failover, mean", bc.mean(), nc.mean()),
            ("crash failover, worst", bc.max(), nc.max()),
        ] {
            let _ = writeln!(
                out,
                "| {what} ({} crashes each, {} lease) | {} | {} | {} |",
                bc.len(),
                baton::fmt_duration(p.timing.lease),
                ms(x),
                ms(y),
                ratio(y, x)
            );
        }
        let _ = writeln!(
            out,
            "| leader, requests/s | {:.2} | {:.2} | {} |",
            self.baton_leader,
            self.naive_leader,
            if self.baton_leader > 0.0 {
                format!("{:.1}×", self.naive_leader / self.baton_leader)
            } else {
                "–".to_owned()
            }
        );
        let _ = writeln!(
            out,
            "| one idle follower, requests/s | {:.3} | {:.2} | {} |\n",
            self.baton_follower,
            self.naive_follower,
            if self.baton_follower > 0.0 {
                format!("{:.0}×", self.naive_follower / self.baton_follower)
            } else {
                "Baton sends none".to_owned()
            }
        );
        let _ = writeln!(
            out,
            "The naive client's handoff is bounded by its retry interval (a follower learns of \
             the release at its next `SET`: on average half the interval), its crash failover by \
             the lease plus up to one interval, and each idle follower sends one `SET` per \
             interval ({:.0}/s at {retry}); Baton's followers are told of a release by a push \
             and otherwise wait without asking.\n",
            1.0 / p.retry.as_secs_f64()
        );
        out.push_str(&ctx.footer(&["redis"]));
        out
    }
}
