//! Contention: C candidates on one key, spread over a few store instances (as a few processes
//! would run many candidates each), and the cost of one handoff; on Redis, PostgreSQL,
//! MySQL/MariaDB and etcd.
//!
//! One handoff: every follower knows the leader. Read the clock; the leader `stop()`s (release);
//! the handoff ends when the first `BecameLeader` of any candidate reaches its subscriber (a
//! task per candidate forwards it with its arrival time). The stopped candidate is replaced by
//! a new one on the same store instance afterwards, so C stays constant.
//!
//! Counting: on Redis, `CONFIG RESETSTAT` before the `stop()` and `INFO commandstats` once every
//! candidate knows the new leader (so every reaction to the release has been answered), before
//! the replacement joins: per handoff. The other servers' counters ([`dbs::Server`]) cannot be
//! reset, and PostgreSQL's arrive seconds late, so there they are read once around all the
//! handoffs, after a settling time at each end, minus the steady rate of the same candidates
//! without handoffs (the leader's renewals; MySQL's pollers), measured just before: per
//! handoff on average, the replacement's joining included.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton::{LeaderElection, LeaseStore};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::BoxResult;
use crate::dbs;
use crate::procfs::{OtherLoad, percent_or_dash};
use crate::redis_admin::{Admin, CommandStats};
use crate::report::{Context, Row, Samples, display_name, ms, target_ms, verdict};
use crate::stores::{
    StoreKind, Timing, became_leader, became_leader_within, election, first_lead_limit,
};

/// How long one step may take before the run is declared broken.
const STEP_LIMIT: Duration = Duration::from_secs(30);
/// Target p99 of a handoff among many candidates (issue 3).
const TARGET_P99: Duration = Duration::from_millis(10);

#[derive(Debug, Clone, Copy)]
pub struct Params {
    pub timing: Timing,
    pub candidates: usize,
    pub connections: usize,
    pub handoffs: usize,
}

/// How a run counts the store's requests.
pub enum Counter<'a> {
    /// Redis: `INFO commandstats` per handoff.
    Redis(&'a mut Admin),
    /// PostgreSQL, MySQL/MariaDB or etcd: the server's counters over all the handoffs, each
    /// read after `settle`.
    Server(&'a dbs::Server, Duration),
}

#[derive(Debug)]
pub struct Contention {
    /// `redis`, `postgres`, `mysql` or `etcd`.
    pub store: &'static str,
    pub params: Params,
    pub latency: Samples,
    /// Redis: counters of each handoff's window.
    pub stats: Vec<CommandStats>,
    /// The other servers: counted over all the handoffs.
    pub counted: Option<Counted>,
    /// Other processes' CPU use during the handoffs, in % of the machine (Redis only: the other
    /// servers are part of the work).
    pub others: Option<f64>,
}

/// A server's requests over all the handoffs of a run.
#[derive(Debug)]
pub struct Counted {
    /// Requests per handoff: those counted around the handoffs, minus the steady rate over
    /// the same time, divided by the handoffs.
    pub per_handoff: f64,
    /// The steady rate of the same candidates without handoffs, requests/s.
    pub steady_per_s: f64,
    /// What the server counts.
    pub what: &'static str,
}

impl Contention {
    /// Requests per handoff (mean).
    fn requests(&self) -> f64 {
        match &self.counted {
            Some(c) => c.per_handoff,
            None => spread(&self.stats, CommandStats::requests).0,
        }
    }
}

struct Candidates {
    stores: Vec<Arc<dyn LeaseStore>>,
    elections: Vec<LeaderElection>,
    generation: usize,
    timing: Timing,
    became: mpsc::UnboundedSender<(usize, Instant)>,
}

impl Candidates {
    const KEY: &str = "bench:contention";

    /// A new candidate in slot `i` (on connection `i % connections`), with a forwarder of its
    /// `BecameLeader` events. Not started.
    fn make(&mut self, i: usize) -> BoxResult<LeaderElection> {
        self.generation += 1;
        let store = &self.stores[i % self.stores.len()];
        let e = election(
            store,
            Self::KEY,
            &format!("cand-{i}-{}", self.generation),
            self.timing,
        )?;
        let mut events = e.subscribe();
        let tx = self.became.clone();
        tokio::spawn(async move {
            while let Some(at) = became_leader(&mut events).await {
                if tx.send((i, at)).is_err() {
                    break;
                }
            }
        });
        Ok(e)
    }

    fn leader(&self) -> Option<usize> {
        let mut leaders = self
            .elections
            .iter()
            .enumerate()
            .filter(|(_, e)| e.is_leader());
        let first = leaders.next().map(|(i, _)| i);
        if leaders.next().is_some() {
            return None;
        }
        first
    }

    /// Wait until every candidate but `skip` names `leader` as the leader.
    async fn all_know(&self, leader: &str, skip: usize) -> BoxResult<()> {
        let deadline = Instant::now() + STEP_LIMIT;
        loop {
            let lagging = self
                .elections
                .iter()
                .enumerate()
                .filter(|(i, e)| *i != skip && e.current_leader_id().as_deref() != Some(leader))
                .count();
            if lagging == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{lagging} candidates still do not know {leader} leads after {STEP_LIMIT:?}"
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

pub async fn measure(
    kind: &StoreKind,
    mut counter: Counter<'_>,
    params: Params,
) -> BoxResult<Contention> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut c = Candidates {
        stores: (0..params.connections)
            .map(|_| kind.open())
            .collect::<BoxResult<_>>()?,
        elections: Vec::with_capacity(params.candidates),
        generation: 0,
        timing: params.timing,
        became: tx,
    };
    // The first candidate leads first (a new key may wait out Redis's restart guard).
    let first = c.make(0)?;
    let mut events = first.subscribe();
    first.start().await?;
    became_leader_within(
        &mut events,
        first_lead_limit(params.timing),
        "the first candidate",
    )
    .await?;
    c.elections.push(first);
    for i in 1..params.candidates {
        let e = c.make(i)?;
        c.elections.push(e);
    }
    let starts = futures_util::stream::iter(c.elections.iter().skip(1).map(|e| e.start()))
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    for r in starts {
        r?;
    }
    let first_id = c.elections[0].candidate_id().to_owned();
    c.all_know(&first_id, 0).await?;
    while rx.try_recv().is_ok() {}

    let mut latency = Vec::with_capacity(params.handoffs);
    let mut stats = Vec::with_capacity(params.handoffs);
    // The other servers: the steady rate first, then the count around the handoffs.
    let mut around = None;
    if let Counter::Server(server, settle) = &counter {
        tokio::time::sleep(*settle).await;
        let (s0, t0) = (server.snapshot().await?, Instant::now());
        tokio::time::sleep(*settle).await;
        let (s1, t1) = (server.snapshot().await?, Instant::now());
        let steady = server.requests(&dbs::delta(&s0, &s1)) as f64 / (t1 - t0).as_secs_f64();
        around = Some((s1, t1, steady));
    }
    let load = match &mut counter {
        Counter::Redis(admin) => Some(OtherLoad::start(Some(admin.server_pid().await?))?),
        Counter::Server(..) => None,
    };
    for h in 0..params.handoffs {
        let old = c
            .leader()
            .ok_or_else(|| format!("handoff {h}: not exactly one leader"))?;
        if let Counter::Redis(admin) = &mut counter {
            admin.reset_stats().await?;
        }
        let t0 = Instant::now();
        let (stopped, became) = tokio::time::timeout(STEP_LIMIT, async {
            tokio::join!(c.elections[old].stop(), rx.recv())
        })
        .await
        .map_err(|_| format!("handoff {h}: no new leader within {STEP_LIMIT:?}"))?;
        stopped?;
        let (new, at) = became.ok_or("the forwarders went away")?;
        latency.push(at.saturating_duration_since(t0));
        let new_id = c.elections[new].candidate_id().to_owned();
        c.all_know(&new_id, old).await?;
        if let Counter::Redis(admin) = &mut counter {
            stats.push(admin.command_stats().await?);
        }

        let replacement = c.make(old)?;
        replacement.start().await?;
        c.elections[old] = replacement;
        c.all_know(&new_id, usize::MAX).await?;
        while rx.try_recv().is_ok() {}
    }
    let others = match load {
        Some(load) => load.percent()?,
        None => None,
    };
    let mut counted = None;
    if let (Counter::Server(server, settle), Some((s1, t1, steady))) = (&counter, around) {
        tokio::time::sleep(*settle).await;
        let s2 = server.snapshot().await?;
        let total = server.requests(&dbs::delta(&s1, &s2)) as f64;
        let background = steady * t1.elapsed().as_secs_f64();
        counted = Some(Counted {
            per_handoff: ((total - background) / params.handoffs as f64).max(0.0),
            steady_per_s: steady,
            what: server.counts_what(),
        });
    }
    for e in &c.elections {
        e.stop().await?;
    }
    Ok(Contention {
        store: kind.name(),
        params,
        latency: Samples::new(latency),
        stats,
        counted,
        others,
    })
}

/// Mean, min and max of `f` over the handoffs.
fn spread(stats: &[CommandStats], f: impl Fn(&CommandStats) -> u64) -> (f64, u64, u64) {
    let v: Vec<u64> = stats.iter().map(f).collect();
    let mean = v.iter().sum::<u64>() as f64 / v.len() as f64;
    (
        mean,
        v.iter().copied().min().unwrap_or(0),
        v.iter().copied().max().unwrap_or(0),
    )
}

/// Acquire attempts per handoff (mean): every acquire script reads the companion with one
/// `HMGET`, whether it finds the key held or wins it.
fn attempts(run: &Contention) -> f64 {
    spread(&run.stats, |s| s.get("hmget")).0
}

/// A herd: more acquire attempts per handoff than connections. A release wakes one candidate
/// per connection (docs/decisions.md D38), as it would wake one per process, so one attempt
/// per connection is the design's bound; more means followers on one connection answer the
/// same release.
fn herd(run: &Contention) -> bool {
    attempts(run) > run.params.connections.min(run.params.candidates - 1) as f64 + 0.5
}

/// The summary's lines: the largest C.
pub fn summary_rows(runs: &[Contention]) -> Vec<Row> {
    let Some(run) = redis(runs).max_by_key(|r| r.params.candidates) else {
        return Vec::new();
    };
    let c = run.params.candidates;
    let p99 = run.latency.p(99.0);
    vec![
        Row::new(
            format!("contention, {c} candidates: handoff"),
            format!(
                "p99 {} (p50 {}, {} handoffs)",
                ms(p99),
                ms(run.latency.p(50.0)),
                run.latency.len()
            ),
            format!("p99 ≤ {}", target_ms(TARGET_P99)),
            p99 <= TARGET_P99,
        ),
        Row::new(
            format!("contention, {c} candidates: herd"),
            format!(
                "{:.0} acquire attempts, {:.0} requests, {:.0} commands per handoff",
                attempts(run),
                spread(&run.stats, CommandStats::requests).0,
                spread(&run.stats, CommandStats::commands).0
            ),
            format!(
                "no thundering herd: at most one attempt per connection ({})",
                run.params.connections
            ),
            !herd(run),
        ),
    ]
}

/// The Redis runs (counted per handoff).
fn redis(runs: &[Contention]) -> impl Iterator<Item = &Contention> {
    runs.iter().filter(|r| r.store == "redis")
}

pub fn report(all: &[Contention], ctx: &Context, servers: &[(&str, String)]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## Contention: many candidates on one key\n");
    let runs: Vec<&Contention> = redis(all).collect();
    let _ = writeln!(out, "### Redis\n");
    if let Some(first) = runs.first() {
        let _ = writeln!(
            out,
            "C candidates (elections) on one key, spread evenly over {} connections (`RedisStore`s) \
             in one process; {}. A handoff is timed from just before the leader's `stop()` to the \
             arrival of the first `BecameLeader` of any candidate at its subscriber. Commands are \
             counted by the server from just before the `stop()` until every candidate knows the \
             new leader (the stopped candidate's replacement joins afterwards). A *request* is one \
             round trip (`EVALSHA`, ...); *commands* include those run inside Baton's scripts; \
             *acquire attempts* are `EVALSHA`s of the acquire script (each runs one `HMGET` of \
             the companion, held or won). *Others' CPU* is the CPU time other processes used \
             during the handoffs, as a share of the whole machine (`/proc/stat` minus the bench \
             and its redis-server): the machine is shared.\n",
            first.params.connections,
            first.params.timing.describe()
        );
    }
    let _ = writeln!(
        out,
        "| candidates | handoffs | p50 | p99 | max | requests / handoff | commands / handoff | acquire attempts / handoff (min–max) | others' CPU |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for run in &runs {
        let (req, _, _) = spread(&run.stats, CommandStats::requests);
        let (cmds, _, _) = spread(&run.stats, CommandStats::commands);
        let (att, att_min, att_max) = spread(&run.stats, |s| s.get("hmget"));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {req:.1} | {cmds:.1} | {att:.1} ({att_min}–{att_max}) | {} |",
            run.params.candidates,
            run.latency.len(),
            ms(run.latency.p(50.0)),
            ms(run.latency.p(99.0)),
            ms(run.latency.max()),
            percent_or_dash(run.others),
        );
    }
    out.push('\n');
    for run in &runs {
        let p99 = run.latency.p(99.0);
        let (att, _, _) = spread(&run.stats, |s| s.get("hmget"));
        let c = run.params.candidates;
        let _ = writeln!(
            out,
            "- C = {c}: target p99 ≤ {}: {}. Thundering herd: {} ({att:.0} acquire attempts per handoff for {} followers on {} connections).",
            target_ms(TARGET_P99),
            verdict(p99 <= TARGET_P99, || format!(
                "by {}",
                ms(p99.saturating_sub(TARGET_P99))
            )),
            if herd(run) { "**yes**" } else { "no" },
            c - 1,
            run.params.connections.min(c),
        );
    }
    let _ = writeln!(
        out,
        "\nA release reaches each connection once, and wakes one candidate there (docs/decisions.md \
         D38): the first to take the message tries to acquire, the others wait for the winner's \
         `acquired` message and then wait out the new lease without asking. So a handoff costs \
         about one acquire attempt per connection (as it would cost one per process with one \
         connection each), whatever the number of candidates."
    );
    for run in runs.iter().filter(|r| r.latency.p(99.0) > TARGET_P99) {
        let _ = writeln!(
            out,
            "\nWhy the p99 at C = {c}: about {:.0} acquire attempts and {:.0} commands per \
             handoff, and {} `LeaderChanged` events to deliver, on this process's {} worker \
             threads, on a 2-core machine where other processes used {} of the CPU meanwhile; \
             the median is {}.",
            attempts(run),
            spread(&run.stats, CommandStats::commands).0,
            run.params.candidates - 1,
            tokio::runtime::Handle::try_current().map_or(0, |h| h.metrics().num_workers()),
            percent_or_dash(run.others),
            ms(run.latency.p(50.0)),
            c = run.params.candidates,
        );
    }
    if runs.iter().any(|r| herd(r)) {
        let _ = writeln!(
            out,
            "\nWhy the herd: more candidates of one connection answered a release than the one \
             that claimed it. The others try on their own only when no `acquired` message follows \
             the release within 200 ms (docs/decisions.md D38), so a herd here means a handoff \
             took that long or the claim failed: see the p99 and max columns."
        );
    }
    out.push('\n');
    other_stores(&mut out, all);
    let mut versions = vec!["redis".to_owned()];
    versions.extend(servers.iter().map(|(name, v)| format!("{name}: {v}")));
    out.push_str(&ctx.footer(&versions.iter().map(String::as_str).collect::<Vec<_>>()));
    out
}

/// The stores counted over all the handoffs, in the report's order.
pub const SERVERS: [&str; 3] = ["postgres", "mysql", "etcd"];

/// The section on the stores counted over all the handoffs.
fn other_stores(out: &mut String, all: &[Contention]) {
    let runs: Vec<&Contention> = all.iter().filter(|r| r.counted.is_some()).collect();
    let Some(first) = runs.first() else { return };
    let _ = writeln!(out, "### PostgreSQL, MySQL/MariaDB and etcd\n");
    let _ = writeln!(
        out,
        "The same handoffs, with the candidates spread evenly over {} store instances (each its own \
         pool or client, as a process of its own would have) in one process; {}. These servers' \
         counters cannot be reset, and PostgreSQL's arrive seconds late, so *requests / handoff* \
         is counted once around all the handoffs, after a settling time at each end, minus the \
         steady rate of the same candidates without handoffs, measured just before (*steady*: \
         the leader's renewals, and on MySQL the followers' polling), and divided by the \
         handoffs; it includes the stopped candidate's replacement joining (on the SQL stores an \
         acquire attempt and a read; on etcd its queue entry, lease and watch). What each server \
         counts: {}.\n",
        first.params.connections,
        first.params.timing.describe(),
        SERVERS
            .iter()
            .filter_map(|s| runs.iter().find(|r| r.store == *s))
            .map(|r| format!(
                "{}, {}",
                display_name(r.store),
                r.counted.as_ref().map_or("", |c| c.what)
            ))
            .collect::<Vec<_>>()
            .join("; ")
    );
    let _ = writeln!(
        out,
        "| store | candidates | handoffs | p50 | p99 | max | requests / handoff | steady requests/s |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for run in &runs {
        let steady = run.counted.as_ref().map_or(0.0, |c| c.steady_per_s);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {:.1} | {steady:.1} |",
            display_name(run.store),
            run.params.candidates,
            run.latency.len(),
            ms(run.latency.p(50.0)),
            ms(run.latency.p(99.0)),
            ms(run.latency.max()),
            run.requests(),
        );
    }
    out.push('\n');
    for store in SERVERS {
        let of: Vec<&&Contention> = runs.iter().filter(|r| r.store == store).collect();
        let (Some(small), Some(large)) = (
            of.iter().min_by_key(|r| r.params.candidates),
            of.iter().max_by_key(|r| r.params.candidates),
        ) else {
            continue;
        };
        let grows = large.requests() > small.requests() * 2.0 + 4.0;
        let _ = writeln!(
            out,
            "- {}: from C = {} to C = {}, requests per handoff {:.1} → {:.1}, p99 {} → {}. {}",
            display_name(store),
            small.params.candidates,
            large.params.candidates,
            small.requests(),
            large.requests(),
            ms(small.latency.p(99.0)),
            ms(large.latency.p(99.0)),
            match (store, grows) {
                ("etcd", false) =>
                    "The cost of a handoff does not grow with the candidates: \
                                    they wait in a queue, and only the next one acts.",
                (_, false) =>
                    "The cost of a handoff does not grow with the candidates: a \
                               release wakes one candidate per store instance \
                               (docs/decisions.md D41).",
                ("etcd", true) => "The cost grows with the candidates.",
                (_, true) =>
                    "The cost grows with the candidates: a thundering herd, which \
                              the wake-one of docs/decisions.md D41 should prevent.",
            }
        );
    }
    out.push('\n');
}
