//! Handoff, crash failover and cost on a store with a server of its own kind: PostgreSQL,
//! MySQL/MariaDB and etcd (one figure per store, one section each).
//!
//! * **Handoff**: [`handoff::graceful`] on two store instances (two pools, or two etcd clients).
//! * **Crash failover**: [`failover::crashes`], a raw candidacy abandoned without release.
//! * **Cost**: requests per second counted by the server itself ([`Server::snapshot`]), in
//!   three windows of equal length: nobody (other clients of a shared server), the leader
//!   alone, the leader and N idle followers (each store instance its own, as separate
//!   processes would be). The leader's rate is the second window minus the first; an idle
//!   follower's is the third minus the second, divided by N. Roles are told apart by the
//!   windows, not by guessing which statement is whose.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton::{LeaderElection, LeaseStore};

use crate::BoxResult;
use crate::dbs::{Server, Snapshot, delta};
use crate::failover::{self, Crash};
use crate::handoff;
use crate::procfs::{OtherLoad, percent_or_dash};
use crate::report::{Context, Row, Samples, display_name, ms, target_ms, verdict};
use crate::stores::{StoreKind, Timing, became_leader_within, election, first_lead_limit};

#[derive(Debug, Clone, Copy)]
pub struct Params {
    pub warmup: usize,
    pub rounds: usize,
    pub handoff_timing: Timing,
    pub crashes: usize,
    pub cost: CostParams,
}

#[derive(Debug, Clone, Copy)]
pub struct CostParams {
    pub timing: Timing,
    pub followers: usize,
    pub settle: Duration,
    pub window: Duration,
}

/// Crash-failover timing per store: the SQL stores take a 1 s lease; etcd leases are whole
/// seconds with a minimum of 2 s (1.5 × the default election timeout), so it takes 2 s.
pub fn failover_timing(store: &str) -> Timing {
    match store {
        "etcd" => Timing::ms(2000, 500, 500),
        _ => Timing::ms(1000, 250, 250),
    }
}

/// The crash-failover bound per store.
pub fn failover_target(store: &str, lease: Duration) -> (Duration, String) {
    match store {
        "etcd" => {
            let ttl = baton::store::etcd::granted_ttl(lease);
            (
                ttl + Duration::from_secs(1),
                "≤ TTL rounded up + 1 s".to_owned(),
            )
        }
        _ => (
            lease + Duration::from_millis(100),
            "≤ lease + 100 ms".to_owned(),
        ),
    }
}

/// The graceful-handoff p99 target per store (etcd's is the comparison with `etcdctl elect`).
pub fn handoff_target(store: &str) -> Option<Duration> {
    match store {
        "postgres" => Some(Duration::from_millis(5)),
        "mysql" => Some(Duration::from_millis(5)),
        _ => None,
    }
}

pub struct Run {
    pub store: &'static str,
    pub version: String,
    pub url_shape: String,
    pub params: Params,
    pub handoff: Samples,
    pub handoff_others: Option<f64>,
    /// Medians of a round trip and of a one-row `UPDATE` commit on the SQL server, this run.
    pub latencies: Option<(Duration, Duration)>,
    pub failover_timing: Timing,
    pub crashes: Vec<Crash>,
    pub cost: Cost,
}

pub struct Cost {
    pub counts_what: &'static str,
    /// (seconds, requests, counters) of each window: background, leader, leader + followers.
    pub windows: [(f64, u64, Snapshot); 3],
    pub background_measured: bool,
    pub followers: usize,
    pub timing: Timing,
    pub settle: Duration,
}

impl Cost {
    pub fn background(&self) -> f64 {
        self.windows[0].1 as f64 / self.windows[0].0.max(1e-9)
    }
    fn rate(&self, i: usize) -> f64 {
        self.windows[i].1 as f64 / self.windows[i].0
    }
    pub fn leader(&self) -> f64 {
        (self.rate(1) - self.background()).max(0.0)
    }
    pub fn per_follower(&self) -> f64 {
        ((self.rate(2) - self.rate(1)) / self.followers as f64).max(0.0)
    }
}

pub async fn measure(store: &'static str, server: &Server, params: Params) -> BoxResult<Run> {
    let kind = StoreKind::Url(store, server.store_url());
    let version = server.version().await;

    eprintln!("{store}: {} handoffs", params.rounds);
    let load = OtherLoad::start(None)?;
    let handoff = handoff::graceful(
        [kind.open()?, kind.open()?],
        &format!("bench-handoff-{store}"),
        params.handoff_timing,
        params.warmup,
        params.rounds,
    )
    .await?;
    let handoff_others = load.percent()?;
    let latencies = server
        .latencies(&format!("bench-handoff-{store}"), 50)
        .await?;

    let failover_timing = failover_timing(store);
    eprintln!("{store}: {} crashes", params.crashes);
    let crashes = failover::crashes(
        [kind.open()?, kind.open()?],
        &format!("bench-failover-{store}"),
        failover_timing,
        params.crashes,
        store == "etcd",
    )
    .await?;

    eprintln!(
        "{store}: cost, 1 leader + {} followers, windows of {:?}",
        params.cost.followers, params.cost.window
    );
    let cost = cost(store, &kind, server, params.cost).await?;
    Ok(Run {
        store,
        version,
        url_shape: match store {
            "etcd" => "`etcd://127.0.0.1:<port>` (spawned by the bench)".to_owned(),
            "postgres" => "`postgres://postgres@127.0.0.1:5432/test?table=<own table>`".to_owned(),
            _ => "`mysql://root@127.0.0.1:3306/test?table=<own table>` (default `poll=25ms`)"
                .to_owned(),
        },
        params,
        handoff,
        handoff_others,
        latencies,
        failover_timing,
        crashes,
        cost,
    })
}

async fn window(server: &Server, length: Duration) -> BoxResult<(f64, u64, Snapshot)> {
    let a = server.snapshot().await?;
    let t0 = Instant::now();
    tokio::time::sleep(length).await;
    let b = server.snapshot().await?;
    let secs = t0.elapsed().as_secs_f64();
    let d = delta(&a, &b);
    Ok((secs, server.requests(&d), d))
}

async fn cost(store: &str, kind: &StoreKind, server: &Server, p: CostParams) -> BoxResult<Cost> {
    // Only MySQL's counters are the whole server's; the others count the bench's own table or
    // server, where nobody else runs anything.
    let background_measured = store == "mysql";
    let background = if background_measured {
        window(server, p.window).await?
    } else {
        (p.window.as_secs_f64(), 0, Snapshot::new())
    };

    let key = format!("bench-cost-{store}");
    let leader_store = kind.open()?;
    let leader = election(&leader_store, &key, "cost-leader", p.timing)?;
    let mut events = leader.subscribe();
    leader.start().await?;
    became_leader_within(&mut events, first_lead_limit(p.timing), "the cost leader").await?;
    tokio::time::sleep(p.settle).await;
    let alone = window(server, p.window).await?;

    let mut followers: Vec<(Arc<dyn LeaseStore>, LeaderElection)> = Vec::new();
    for i in 0..p.followers {
        let store = kind.open()?;
        let follower = election(&store, &key, &format!("cost-follower-{i}"), p.timing)?;
        follower.start().await?;
        followers.push((store, follower));
    }
    tokio::time::sleep(p.settle).await;
    let all = window(server, p.window).await?;

    let still_leading = leader.is_leader();
    let stray = followers.iter().filter(|(_, f)| f.is_leader()).count();
    for (_, f) in &followers {
        f.stop().await?;
    }
    leader.stop().await?;
    if !still_leading || stray > 0 {
        return Err(format!(
            "{store}: the cost run was not steady: leader still leading = {still_leading}, followers that led = {stray}"
        )
        .into());
    }
    Ok(Cost {
        counts_what: server.counts_what(),
        windows: [background, alone, all],
        background_measured,
        followers: p.followers,
        timing: p.timing,
        settle: p.settle,
    })
}

impl Run {
    fn failover_worst(&self) -> Duration {
        self.crashes
            .iter()
            .map(|c| c.failover)
            .max()
            .unwrap_or_default()
    }

    pub fn summary_rows(&self) -> Vec<Row> {
        let mut rows = Vec::new();
        let s = &self.handoff;
        let name = display_name(self.store);
        if let Some(t) = handoff_target(self.store) {
            let mut measured = format!(
                "p50 {}, p99 {}, max {} ({} handoffs)",
                ms(s.p(50.0)),
                ms(s.p(99.0)),
                ms(s.max()),
                s.len()
            );
            if self.store == "mysql" {
                let _ = write!(
                    measured,
                    "; idle followers send {:.1} statements/s each",
                    self.cost.per_follower()
                );
            }
            rows.push(Row::new(
                format!("{name}: graceful handoff, in process"),
                measured,
                format!("p99 ≤ {}", target_ms(t)),
                s.p(99.0) <= t,
            ));
        }
        let worst = self.failover_worst();
        let lease = self.failover_timing.lease;
        let (bound, target) = failover_target(self.store, lease);
        rows.push(Row::new(
            format!("{name}: crash failover"),
            format!(
                "worst of {} crashes {} with a {} lease (lease + {})",
                self.crashes.len(),
                ms(worst),
                baton::fmt_duration(lease),
                ms(worst.saturating_sub(lease))
            ),
            target,
            worst <= bound,
        ));
        rows
    }

    pub fn report(&self, ctx: &Context) -> String {
        let name = display_name(self.store);
        let mut out = String::new();
        let _ = writeln!(out, "## {name}: handoff, crash failover, cost\n");
        let _ = writeln!(
            out,
            "Store URL: {}. Every store instance below is a store of its own (for SQL its own \
             connection pool{}, for etcd its own client), as a separate process would have.\n",
            self.url_shape,
            match self.store {
                "postgres" => " and `LISTEN` connection",
                _ => "",
            }
        );

        // Handoff.
        let s = &self.handoff;
        let _ = writeln!(out, "### Graceful handoff in one process\n");
        let _ = writeln!(
            out,
            "As in *Graceful handoff in one process* above: two elections on two store \
             instances pass leadership back and forth ({}); timed from just before the \
             leader's `stop()` to the follower's `BecameLeader`; the first {} handoffs are a \
             warm-up. *Others' CPU* includes the database server's (it is not the bench's \
             own process).\n",
            self.params.handoff_timing.describe(),
            self.params.warmup
        );
        let _ = writeln!(
            out,
            "| handoffs | p50 | p99 | min | mean | max | others' CPU | target |"
        );
        let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---|");
        let target = handoff_target(self.store);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            s.len(),
            ms(s.p(50.0)),
            ms(s.p(99.0)),
            ms(s.min()),
            ms(s.mean()),
            ms(s.max()),
            percent_or_dash(self.handoff_others),
            target.map_or_else(
                || "better than `etcdctl elect` (see below)".to_owned(),
                |t| format!("p99 ≤ {}", target_ms(t))
            ),
        );
        if let Some(t) = target {
            let p99 = s.p(99.0);
            let _ = writeln!(
                out,
                "- p99 ≤ {}: {}.",
                target_ms(t),
                verdict(p99 <= t, || format!("by {}", ms(p99.saturating_sub(t))))
            );
            if let Some((rtt, commit)) = self.latencies {
                let _ = writeln!(
                    out,
                    "- On this server in this run (medians of 50, on one connection): a round \
                     trip (`SELECT 1`) {}, a one-row `UPDATE` commit {}.",
                    ms(rtt),
                    ms(commit)
                );
            }
            if p99 > t {
                let slow = s.above(t);
                let why = match self.store {
                    "postgres" => format!(
                        "a PostgreSQL handoff is the release (`UPDATE` + `pg_notify`, one \
                         commit), the notice on the follower's `LISTEN` connection, and the \
                         acquire (one upsert, one commit): three trips through the server and \
                         two commits, {} by this run's medians; {} of {} handoffs took longer \
                         than {} (median of those: {}), with other processes using {} of the \
                         machine. Fix: measure on a quiet machine; if the commits dominate there \
                         too, their WAL flush is the cost (`synchronous_commit`, the disk)",
                        self.latencies.map_or_else(
                            || "–".to_owned(),
                            |(rtt, commit)| format!("about {}", ms(rtt + commit * 2))
                        ),
                        slow.len(),
                        s.len(),
                        target_ms(t),
                        slow.get(slow.len() / 2)
                            .map_or_else(|| "–".into(), |d| ms(*d)),
                        percent_or_dash(self.handoff_others)
                    ),
                    _ => format!(
                        "a MySQL follower is woken by the leader's release of its term lock \
                         (`GET_LOCK`, D110), then reads the row and acquires: about four round \
                         trips; {} of {} handoffs took longer than {} (median of those: {}), \
                         with other processes using {} of the machine. Fix: measure on a quiet \
                         machine",
                        slow.len(),
                        s.len(),
                        target_ms(t),
                        slow.get(slow.len() / 2)
                            .map_or_else(|| "–".into(), |d| ms(*d)),
                        percent_or_dash(self.handoff_others)
                    ),
                };
                let _ = writeln!(out, "  - Why: {why}.");
            }
            out.push('\n');
        }

        // Failover.
        let lease = self.failover_timing.lease;
        let (bound, target) = failover_target(self.store, lease);
        let worst = self.failover_worst();
        let _ = writeln!(out, "### Crash failover\n");
        let _ = writeln!(
            out,
            "As in *Crash failover* above: a raw candidacy acquires, renews 0–2 times and is \
             abandoned without release while a follower election watches; timed from just \
             before its last acquire/renew was sent to the follower's `BecameLeader`. \
             Follower: {}.{}\n",
            self.failover_timing.describe(),
            if self.store == "etcd" {
                " etcd leases are whole seconds, at least 2 s with etcd's default election \
                 timeout, and etcd looks for expired leases every 500 ms. The crashed \
                 candidacy is forgotten rather than dropped: dropping one revokes its lease, \
                 as a clean exit should, which a killed process never does (for a killed \
                 process, see *Baton against `etcdctl elect`*)."
            } else {
                ""
            }
        );
        let c = Samples::new(self.crashes.iter().map(|c| c.failover).collect());
        let _ = writeln!(
            out,
            "| crashes | min | mean | max | max − lease | target {target} |"
        );
        let _ = writeln!(out, "|---:|---:|---:|---:|---:|---|");
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |\n",
            c.len(),
            ms(c.min()),
            ms(c.mean()),
            ms(worst),
            ms(worst.saturating_sub(lease)),
            verdict(worst <= bound, || format!(
                "by {}",
                ms(worst.saturating_sub(bound))
            ))
        );
        let _ = writeln!(
            out,
            "Each crash (ms after the last send, renewals before the crash): {}.\n",
            self.crashes
                .iter()
                .map(|c| format!("{:.1} ({})", c.failover.as_secs_f64() * 1e3, c.renewals))
                .collect::<Vec<_>>()
                .join(", ")
        );
        if worst > bound {
            let _ = writeln!(
                out,
                "- Why: the worst crash took {} over the lease; the follower sleeps until the \
                 holder's remaining lease plus a jitter of up to 1 % of the lease + 1 ms, then \
                 acquires{}. Fix: measure on a quiet machine; if it persists, look at the \
                 follower's wake-up against the store's expiry.\n",
                ms(worst.saturating_sub(lease)),
                if self.store == "etcd" {
                    "; etcd frees an expired lease only at its next 500 ms check"
                } else {
                    ""
                }
            );
        }

        // Cost.
        let cost = &self.cost;
        let _ = writeln!(
            out,
            "### Cost: 1 leader + {} idle followers\n",
            cost.followers
        );
        let _ = writeln!(
            out,
            "Requests are {}. Elections: {}. Windows of {:.1} s each{}: the leader alone \
             (after {} of settling), then with {} idle followers started (after another {} of \
             settling). Leader = its window − the background; one idle follower = (the third \
             window − the leader's) / {}.\n",
            cost.counts_what,
            cost.timing.describe(),
            cost.windows[1].0,
            if cost.background_measured {
                ", first one with none of the bench's candidates (the background)"
            } else {
                ""
            },
            baton::fmt_duration(cost.settle),
            cost.followers,
            baton::fmt_duration(cost.settle),
            cost.followers
        );
        let _ = writeln!(out, "| who | requests/s | counters in its window |");
        let _ = writeln!(out, "|---|---:|---|");
        let fmt_counts = |s: &Snapshot| {
            let v: Vec<String> = s
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            if v.is_empty() {
                "none".to_owned()
            } else {
                v.join(", ")
            }
        };
        if cost.background_measured {
            let _ = writeln!(
                out,
                "| other clients of the server (background) | {:.2} | {} |",
                cost.background(),
                fmt_counts(&cost.windows[0].2)
            );
        }
        let _ = writeln!(
            out,
            "| leader (renew every {}) | {:.2} | {} |",
            baton::fmt_duration(cost.timing.renew),
            cost.leader(),
            fmt_counts(&cost.windows[1].2)
        );
        let _ = writeln!(
            out,
            "| one idle follower | {:.3} | (leader + {} followers: {}) |",
            cost.per_follower(),
            cost.followers,
            fmt_counts(&cost.windows[2].2)
        );
        let _ = writeln!(
            out,
            "| {} idle followers, together | {:.2} | |\n",
            cost.followers,
            cost.per_follower() * cost.followers as f64
        );
        let expect = match self.store {
            "postgres" => format!(
                "Expected: the leader one `UPDATE` per renewal. Acquire, renewal and release \
                 each send a notice (`NOTIFY`) in the same statement, so a follower behind a \
                 live leader waits out each fresh lease without asking: about 0 statements \
                 per follower. Measured: {:.3} statements/s per follower.",
                cost.per_follower()
            ),
            "mysql" => format!(
                "Expected: the leader one `UPDATE` per renewal. Each follower's store blocks \
                 on the leader's term lock (`GET_LOCK`, D110) and reads the key only when the \
                 lease it last read is due to expire (the leader renewed it meanwhile): a \
                 `GET_LOCK` and a `SELECT` about once per lease minus renew interval, well \
                 under 1/s here (it polled 40/s before push). Measured: {:.3} statements/s \
                 per follower.",
                cost.per_follower()
            ),
            _ => {
                let recheck = baton::ElectionOptions::new()
                    .with_lease_duration(cost.timing.lease)
                    .complete_watch_recheck();
                format!(
                    "Expected: the leader one keepalive and one read per renewal; each follower \
                     one keepalive per third of its session's TTL (as Go's `concurrency.Session` \
                     does: {:.2}/s at a {} s TTL: the lease rounded up to whole seconds, at \
                     least 2), and nothing else. A follower watches the election's prefix and \
                     keeps its view of the queue from the events: its turn (the entry ahead of \
                     it deleted, by a release or by etcd revoking an expired lease alike) and \
                     every new leader reach it without a request. It looks at its position on \
                     its own only once every {} leases ({} here), in case an event was lost: a \
                     keepalive, a read-only `Txn`, a `LeaseTimeToLive` of the leader's lease and \
                     a new `Watch`, about {:.2}/s on average, which a window of {:.0} s starting \
                     {} after the followers may not hold at all. Measured: {:.2} messages/s per \
                     follower above the keepalives.",
                    3.0 / etcd_ttl_secs(cost.timing.lease),
                    etcd_ttl_secs(cost.timing.lease),
                    baton::COMPLETE_WATCH_RECHECK_LEASES,
                    baton::fmt_duration(recheck),
                    4.0 / recheck.as_secs_f64(),
                    cost.windows[2].0,
                    baton::fmt_duration(cost.settle),
                    (cost.per_follower() - 3.0 / etcd_ttl_secs(cost.timing.lease)).max(0.0)
                )
            }
        };
        let _ = writeln!(out, "{expect}\n");
        out.push_str(&ctx.footer(&[&format!(
            "{}; server: `{}`",
            match self.store {
                "postgres" | "mysql" => format!(
                    "sqlx {} ({})",
                    env!("BENCH_SQLX_VERSION"),
                    if self.store == "postgres" {
                        "the machine's server on 127.0.0.1:5432, a table of the bench's own, dropped afterwards"
                    } else {
                        "the machine's server on 127.0.0.1:3306, a table of the bench's own, dropped afterwards"
                    }
                ),
                _ => format!(
                    "Baton's generated etcd client on tonic {} (spawned by the bench on a free loopback port)",
                    env!("BENCH_TONIC_VERSION")
                ),
            },
            self.version
        )]));
        out
    }
}

/// The TTL etcd grants for `lease`, in seconds: the library's rule
/// ([`baton::store::etcd::granted_ttl`]).
fn etcd_ttl_secs(lease: Duration) -> f64 {
    baton::store::etcd::granted_ttl(lease).as_secs_f64()
}
