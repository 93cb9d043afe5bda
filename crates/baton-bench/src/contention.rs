//! Contention on Redis: C candidates on one key, spread over a few connections (as a few
//! processes would run many candidates each), and the cost of one handoff.
//!
//! One handoff: every follower knows the leader. `CONFIG RESETSTAT`; read the clock; the leader
//! `stop()`s (release, which publishes `released`); the handoff ends when the first
//! `BecameLeader` of any candidate reaches its subscriber (a task per candidate forwards it with
//! its arrival time). The window for the command count stays open until every candidate
//! knows the new leader (so every reaction to the release has been answered); then
//! `INFO commandstats`. The stopped candidate is replaced by a new one on the same connection
//! afterwards, outside both windows, so C stays constant.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton::{LeaderElection, LeaseStore};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::BoxResult;
use crate::procfs::{OtherLoad, percent_or_dash};
use crate::redis_admin::{Admin, CommandStats};
use crate::report::{Context, Row, Samples, ms, target_ms, verdict};
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

#[derive(Debug)]
pub struct Contention {
    pub params: Params,
    pub latency: Samples,
    /// Counters of each handoff's window.
    pub stats: Vec<CommandStats>,
    /// Other processes' CPU use during the handoffs, in % of the machine.
    pub others: Option<f64>,
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

pub async fn measure(kind: &StoreKind, admin: &mut Admin, params: Params) -> BoxResult<Contention> {
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
    let load = OtherLoad::start(Some(admin.server_pid().await?))?;
    for h in 0..params.handoffs {
        let old = c
            .leader()
            .ok_or_else(|| format!("handoff {h}: not exactly one leader"))?;
        admin.reset_stats().await?;
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
        stats.push(admin.command_stats().await?);

        let replacement = c.make(old)?;
        replacement.start().await?;
        c.elections[old] = replacement;
        c.all_know(&new_id, usize::MAX).await?;
        while rx.try_recv().is_ok() {}
    }
    let others = load.percent()?;
    for e in &c.elections {
        e.stop().await?;
    }
    Ok(Contention {
        params,
        latency: Samples::new(latency),
        stats,
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

/// Acquire attempts per handoff (mean): acquire scripts that found the key held or won it.
fn attempts(run: &Contention) -> f64 {
    spread(&run.stats, |s| s.get("hmget") + s.get("hset")).0
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
    let Some(run) = runs.iter().max_by_key(|r| r.params.candidates) else {
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

pub fn report(runs: &[Contention], ctx: &Context) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## Contention on Redis: many candidates on one key\n");
    if let Some(first) = runs.first() {
        let _ = writeln!(
            out,
            "C candidates (elections) on one key, spread evenly over {} connections (`RedisStore`s) \
             in one process; {}. A handoff is timed from just before the leader's `stop()` to the \
             arrival of the first `BecameLeader` of any candidate at its subscriber. Commands are \
             counted by the server from just before the `stop()` until every candidate knows the \
             new leader (the stopped candidate's replacement joins afterwards). A *request* is one \
             round trip (`EVALSHA`, ...); *commands* include those run inside Baton's scripts; \
             *acquire attempts* are `EVALSHA`s of the acquire script (`HMGET` when the key was \
             held, `HSET` when it was won). *Others' CPU* is the CPU time other processes used \
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
    for run in runs {
        let (req, _, _) = spread(&run.stats, CommandStats::requests);
        let (cmds, _, _) = spread(&run.stats, CommandStats::commands);
        let (att, att_min, att_max) = spread(&run.stats, |s| s.get("hmget") + s.get("hset"));
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
    for run in runs {
        let p99 = run.latency.p(99.0);
        let (att, _, _) = spread(&run.stats, |s| s.get("hmget") + s.get("hset"));
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
    if runs.iter().any(herd) {
        let _ = writeln!(
            out,
            "\nWhy the herd: more candidates of one connection answered a release than the one \
             that claimed it. The others try on their own only when no `acquired` message follows \
             the release within 200 ms (docs/decisions.md D38), so a herd here means a handoff \
             took that long or the claim failed: see the p99 and max columns."
        );
    }
    out.push('\n');
    out.push_str(&ctx.footer(&["redis"]));
    out
}
