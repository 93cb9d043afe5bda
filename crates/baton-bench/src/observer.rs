//! How soon an observer hears of a graceful release, per store: a `baton watch --json` process
//! watches while `baton campaign --json` processes pass leadership on by SIGINT, as in the
//! cli-handoff figure. Each handoff is timed from the leader's own stamp on its
//! `lost_leadership` line (its graceful stop has begun; the release follows at once) to the
//! watcher's stamp on its first `leader_changed` line after it, and, for comparison, to the
//! follower's stamp on its `became_leader`. All three stamps are `boot_ns` (`CLOCK_BOOTTIME`,
//! one clock for every process on the machine), so the pipes to the bench are left out.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use baton_testkit::fake_k8s::{FakeK8s, FakeK8sOptions};
use rustix::process::Signal;

use crate::report::{Context, Row, Samples, display_name, ms, target_ms, verdict};
use crate::stores::Timing;
use crate::{BoxResult, Servers, cli_handoff, procs};
use crate::{procs::STEP, redis_admin::Admin};

#[derive(Debug, Clone, Copy)]
pub struct Params {
    /// Timed handoffs per store.
    pub rounds: usize,
    pub timing: Timing,
}

/// The key every store's processes campaign for and the watcher watches.
const KEY: &str = "bench-observer";

/// How much later than the candidates an observer may hear of a release, at p99: the
/// observer reads the key after its notice, where the candidate acquires, and both then print.
const SLACK: Duration = Duration::from_millis(5);

/// One handoff, from the leader's `lost_leadership` stamp.
#[derive(Debug, Clone, Copy)]
pub struct Round {
    /// To the watcher's first `leader_changed` after it.
    observer: Duration,
    /// To the follower's `became_leader`.
    candidate: Duration,
    /// Whether the watcher's line said "no leader" (it read between the release and the
    /// follower's acquire) rather than naming the follower.
    saw_none: bool,
}

pub struct StoreRun {
    store: &'static str,
    rounds: Vec<Round>,
}

impl StoreRun {
    fn observer(&self) -> Samples {
        Samples::new(self.rounds.iter().map(|r| r.observer).collect())
    }

    fn candidate(&self) -> Samples {
        Samples::new(self.rounds.iter().map(|r| r.candidate).collect())
    }

    /// Whether the observers heard of releases no later than the candidates, give or take
    /// [`SLACK`], at p99.
    fn met(&self) -> bool {
        self.observer().p(99.0) <= self.candidate().p(99.0) + SLACK
    }
}

pub struct Run {
    params: Params,
    stores: Vec<StoreRun>,
}

/// `p.rounds` handoffs on every cross-process store, with a watcher.
pub async fn measure(
    servers: &Servers<'_>,
    admin: &mut Admin,
    dir: &Path,
    p: Params,
) -> BoxResult<Run> {
    let baton = servers.baton_checked()?.to_owned();
    let mut stores = Vec::new();
    for store in cli_handoff::STORES {
        eprintln!("observer: {store}, {} handoffs", p.rounds);
        let mut server = None;
        let mut fake = None;
        let url = match store {
            "sqlite" => format!("sqlite:{}", dir.join("observer.db").display()),
            "redis" => {
                admin.wait_past_restart_guard(p.timing.lease).await?;
                servers.redis_url.to_owned()
            }
            "kubernetes" => {
                let f = FakeK8s::serve(FakeK8sOptions::default());
                let url = crate::kubernetes::store_url(&f);
                fake = Some(f);
                url
            }
            _ => {
                let s = servers.server(store).await?;
                let url = s.store_url();
                server = Some(s);
                url
            }
        };
        let baton = baton.clone();
        let rounds = tokio::task::spawn_blocking(move || rounds(&baton, &url, p)).await?;
        if let Some(s) = server {
            s.cleanup().await;
        }
        drop(fake);
        stores.push(StoreRun {
            store,
            rounds: rounds?,
        });
    }
    Ok(Run { params: p, stores })
}

/// `p.rounds` handoffs between `baton campaign` processes on `url`, watched throughout by one
/// `baton watch`.
fn rounds(baton: &Path, url: &str, p: Params) -> BoxResult<Vec<Round>> {
    let event = |line: &str| procs::parse(line).ok_or_else(|| format!("not an event: {line}"));
    let mut watch = procs::baton_watch(baton, url, KEY, p.timing)?;
    let mut leader_id = "o0".to_owned();
    let mut leader = procs::baton_campaign(baton, url, KEY, &leader_id, p.timing)?;
    leader
        .wait_line(STEP, |l| procs::is_event(l, "became_leader", &leader_id))
        .ok_or_else(|| format!("the first baton campaign on {url} did not lead within {STEP:?}"))?;
    watch
        .wait_line(STEP, |l| procs::is_event(l, "leader_changed", &leader_id))
        .ok_or_else(|| format!("baton watch on {url} never saw {leader_id} lead"))?;
    let mut out = Vec::with_capacity(p.rounds);
    for n in 1..=p.rounds {
        let id = format!("o{n}");
        let follower = procs::baton_campaign(baton, url, KEY, &id, p.timing)?;
        follower
            .wait_line(STEP, |l| procs::is_event(l, "leader_changed", &leader_id))
            .ok_or_else(|| format!("{id} never saw {leader_id} lead"))?;
        // Its first attempt goes out before it subscribes (docs/decisions.md D128): let it
        // subscribe and wait, as cli-handoff does.
        std::thread::sleep(procs::FOLLOWER_SETTLE);
        leader.signal(Signal::INT)?;
        let (_, stop) = leader
            .wait_line(STEP, |l| {
                procs::parse(l).is_some_and(|l| {
                    l.event == "lost_leadership" && l.candidate.as_deref() == Some(&*leader_id)
                })
            })
            .ok_or_else(|| format!("{leader_id} printed no lost_leadership"))?;
        let (_, became) = follower
            .wait_line(STEP, |l| procs::is_event(l, "became_leader", &id))
            .ok_or_else(|| format!("{id} did not lead within {STEP:?}"))?;
        let (_, seen) = watch
            .wait_line(STEP, |l| {
                procs::parse(l).is_some_and(|l| {
                    l.event == "leader_changed" && l.previous.as_deref() == Some(&*leader_id)
                })
            })
            .ok_or_else(|| format!("baton watch did not see {leader_id} go within {STEP:?}"))?;
        let (stop, became, seen) = (event(&stop)?, event(&became)?, event(&seen)?);
        if seen.leader.as_deref() != Some(&*id) {
            watch
                .wait_line(STEP, |l| procs::is_event(l, "leader_changed", &id))
                .ok_or_else(|| format!("baton watch did not see {id} lead within {STEP:?}"))?;
        }
        out.push(Round {
            observer: procs::since(stop.boot_ns, seen.boot_ns),
            candidate: procs::since(stop.boot_ns, became.boot_ns),
            saw_none: seen.leader.is_none(),
        });
        let status = leader.wait_exit(STEP)?;
        if !status.success() {
            return Err(format!("{leader_id} exited with {status} after SIGINT").into());
        }
        leader = follower;
        leader_id = id;
    }
    leader.signal(Signal::INT)?;
    leader.wait_exit(STEP)?;
    watch.signal(Signal::INT)?;
    watch.wait_exit(STEP)?;
    Ok(out)
}

impl Run {
    pub fn summary_rows(&self) -> Vec<Row> {
        self.stores
            .iter()
            .map(|s| {
                let (o, c) = (s.observer(), s.candidate());
                Row::new(
                    format!(
                        "{}: an observer (`baton watch`) hears of a graceful release",
                        display_name(s.store)
                    ),
                    format!(
                        "observer p50 {}, p99 {}; candidate p50 {}, p99 {} ({} handoffs)",
                        ms(o.p(50.0)),
                        ms(o.p(99.0)),
                        ms(c.p(50.0)),
                        ms(c.p(99.0)),
                        o.len()
                    ),
                    format!("p99 ≤ the candidates' p99 + {}", target_ms(SLACK)),
                    s.met(),
                )
            })
            .collect()
    }

    pub fn report(&self, ctx: &Context) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "## An observer hears of a graceful release\n");
        let _ = writeln!(
            out,
            "The cross-process handoffs of *Graceful handoff across processes*, each `{}`, \
             with one `baton --store URL --key {KEY} watch --json` watching throughout. Each \
             handoff is timed from the leader's stamp on its `lost_leadership` line (its \
             graceful stop has begun; the release follows at once) to the watcher's stamp on \
             its first `leader_changed` line after it (*observer*), and to the follower's \
             stamp on its `became_leader` (*candidate*), all on `CLOCK_BOOTTIME`, so the pipes \
             to the bench are left out. The watcher reads the key when its store tells it of \
             a change, and reports whatever it finds: no leader (it read between the release \
             and the follower's acquire) or the follower. An observer should hear of a \
             release as soon as the candidates do; the target allows it {} more at p99 for \
             its read.\n",
            procs::campaign_args("URL", KEY, self.params.timing),
            target_ms(SLACK),
        );
        let _ = writeln!(
            out,
            "| store | handoffs | observer p50 | observer p99 | observer max | candidate p50 | candidate p99 | candidate max | watcher saw no leader first | target |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|");
        for s in &self.stores {
            let (o, c) = (s.observer(), s.candidate());
            let none = s.rounds.iter().filter(|r| r.saw_none).count();
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {none} | p99 ≤ candidate p99 + {}: {} |",
                display_name(s.store),
                o.len(),
                ms(o.p(50.0)),
                ms(o.p(99.0)),
                ms(o.max()),
                ms(c.p(50.0)),
                ms(c.p(99.0)),
                ms(c.max()),
                target_ms(SLACK),
                verdict(s.met(), || format!(
                    "by {}",
                    ms(o.p(99.0).saturating_sub(c.p(99.0) + SLACK))
                )),
            );
        }
        out.push('\n');
        let _ = writeln!(
            out,
            "- MySQL/MariaDB: the watcher's store and each candidate's store block on the \
             leader's term lock (`GET_LOCK`, docs/decisions.md D110) on connections of their \
             own, and the server wakes them one after the other, so either may hear first.\n"
        );
        let stores: Vec<&str> = self.stores.iter().map(|s| s.store).collect();
        let mut versions = vec![format!("`baton` CLI processes ({} build)", ctx.profile)];
        versions.extend(stores.iter().map(|s| (*s).to_owned()));
        out.push_str(&ctx.footer(&versions.iter().map(String::as_str).collect::<Vec<_>>()));
        out
    }
}
