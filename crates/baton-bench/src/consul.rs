//! The Consul store against the **fake** agent (`baton_testkit::fake_consul`, in the bench's
//! process on a runtime thread of its own):
//!
//! * **Graceful handoff in one process**: [`handoff::graceful`] on two store instances.
//! * **Graceful handoff between two processes**: [`procs::baton_rounds`] (SIGINT to the leader
//!   → the follower's own `CLOCK_BOOTTIME` stamp on `became_leader`).
//! * **Crash failover**: the same rounds with SIGKILL, at any point of the renew interval.
//! * **An idle follower's requests**: one leader and one follower process, each with an ACL
//!   token of its own (`?token=`) that labels its requests in the fake's request counter
//!   (fake-only), counted over a window.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use baton::LeaseStore;
use baton_testkit::fake_consul::{FakeConsul, FakeConsulOptions, Requests};

use crate::BoxResult;
use crate::handoff;
use crate::procs::{self, Change, FOLLOWER_SETTLE, STEP};
use crate::report::{Context, Row, Samples, ms, target_ms, verdict};
use crate::stores::{StoreKind, Timing};

#[derive(Debug, Clone, Copy)]
pub struct Params {
    /// In one process: untimed, then timed handoffs.
    pub warmup: usize,
    pub rounds: usize,
    pub handoff_timing: Timing,
    /// Handoffs between processes.
    pub process_rounds: usize,
    /// Crashes.
    pub crashes: usize,
    /// The processes' election timing.
    pub timing: Timing,
    /// After both candidates of the cost window run, before counting.
    pub settle: Duration,
    pub window: Duration,
}

/// Graceful handoff between two `baton` processes: the target at p99.
pub const PROCESS_HANDOFF_TARGET: Duration = Duration::from_millis(10);
/// Crash failover: within the lease the store grants plus this much.
pub const FAILOVER_SLACK: Duration = Duration::from_millis(100);

/// What one cost window counted.
pub struct Idle {
    pub window: Duration,
    pub leader: String,
    pub follower: String,
    pub counted: Requests,
}

impl Idle {
    fn rate(&self, client: &str, only: Option<&str>) -> f64 {
        let n: u64 = self.counted.0.get(client).map_or(0, |verbs| {
            verbs
                .iter()
                .filter(|(verb, _)| only.is_none_or(|o| o == verb.as_str()))
                .map(|(_, n)| n)
                .sum()
        });
        n as f64 / self.window.as_secs_f64()
    }

    /// The follower's requests that are not blocking queries.
    fn follower_beyond_blocking(&self) -> u64 {
        self.counted.0.get(&self.follower).map_or(0, |verbs| {
            verbs
                .iter()
                .filter(|(verb, _)| verb.as_str() != "kv-block")
                .map(|(_, n)| n)
                .sum()
        })
    }
}

pub struct Run {
    pub params: Params,
    pub in_process: Samples,
    /// The TTL the store grants for the processes' lease (`granted_ttl`).
    pub granted: Duration,
    pub baton_handoffs: Vec<Change>,
    pub baton_crashes: Vec<Change>,
    pub idle: Idle,
}

pub async fn measure(baton: &Path, p: Params) -> BoxResult<Run> {
    let fake = FakeConsul::serve(FakeConsulOptions::default());
    let url = fake.store_url();
    let kind = StoreKind::Url("consul", url.clone());

    eprintln!("consul: in one process, {} handoffs", p.rounds);
    let stores = [kind.open()?, kind.open()?];
    let granted = stores[0].granted_ttl(p.timing.lease);
    let in_process = handoff::graceful(
        stores,
        "bench-consul-handoff",
        p.handoff_timing,
        p.warmup,
        p.rounds,
    )
    .await?;

    let baton = baton.to_owned();
    let run = tokio::task::spawn_blocking(move || -> BoxResult<Run> {
        eprintln!("consul: baton processes, {} handoffs", p.process_rounds);
        let baton_handoffs = procs::baton_rounds(
            &baton,
            &url,
            "bench-consul-cli-handoff",
            p.timing,
            p.process_rounds,
            false,
        )?;
        eprintln!("consul: baton processes, {} crashes", p.crashes);
        let baton_crashes = procs::baton_rounds_phased(
            &baton,
            &url,
            "bench-consul-cli-crash",
            p.timing,
            p.crashes,
            true,
            p.timing.renew,
        )?;
        eprintln!("consul: an idle follower, {:?}", p.window);
        let idle = baton_idle(&fake, &baton, p)?;
        Ok(Run {
            params: p,
            in_process,
            granted,
            baton_handoffs,
            baton_crashes,
            idle,
        })
    })
    .await??;
    Ok(run)
}

/// One Baton leader and one idle Baton follower process, each with a token of its own; the
/// requests of both over the window.
fn baton_idle(fake: &FakeConsul, baton: &Path, p: Params) -> BoxResult<Idle> {
    let key = "bench-consul-idle";
    let url = |client: &str| format!("consul://{}?token={client}", fake.addr());
    let (leader_id, follower_id) = ("baton-idle-leader", "baton-idle-follower");
    let leader = procs::baton_campaign(baton, &url(leader_id), key, leader_id, p.timing)?;
    leader
        .wait_line(STEP, |l| procs::is_event(l, "became_leader", leader_id))
        .ok_or("the idle figure's Baton leader did not lead")?;
    let follower = procs::baton_campaign(baton, &url(follower_id), key, follower_id, p.timing)?;
    follower
        .wait_line(STEP, |l| procs::is_event(l, "leader_changed", leader_id))
        .ok_or("the idle Baton follower never saw the leader")?;
    std::thread::sleep(p.settle);
    let before = fake.requests();
    let t0 = Instant::now();
    std::thread::sleep(p.window);
    let counted = fake.requests().since(&before);
    let idle = Idle {
        window: t0.elapsed(),
        leader: leader_id.to_owned(),
        follower: follower_id.to_owned(),
        counted,
    };
    drop((leader, follower));
    Ok(idle)
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

/// `a − b` as `+ 1.234 ms` or `− 1.234 ms`.
fn signed_ms(a: Duration, b: Duration) -> String {
    if a >= b {
        format!("+ {}", ms(a - b))
    } else {
        format!("− {}", ms(b - a))
    }
}

impl Run {
    fn failover_ok(&self) -> bool {
        follower_samples(&self.baton_crashes).max() <= self.granted + FAILOVER_SLACK
    }

    fn renewals_per_second(&self) -> f64 {
        1.0 / self.params.timing.renew.as_secs_f64()
    }

    pub fn summary_rows(&self) -> Vec<Row> {
        let h = follower_samples(&self.baton_handoffs);
        let c = follower_samples(&self.baton_crashes);
        vec![
            Row::new(
                "Consul (fake agent): graceful handoff, two `baton` processes",
                format!(
                    "p50 {}, p99 {}, max {} ({} handoffs)",
                    ms(h.p(50.0)),
                    ms(h.p(99.0)),
                    ms(h.max()),
                    h.len(),
                ),
                format!("p99 ≤ {}", target_ms(PROCESS_HANDOFF_TARGET)),
                h.p(99.0) <= PROCESS_HANDOFF_TARGET,
            ),
            Row::new(
                "Consul (fake agent): crash failover, two `baton` processes",
                format!(
                    "worst of {} crashes {} after the SIGKILL with a {} lease (lease {})",
                    c.len(),
                    ms(c.max()),
                    baton::fmt_duration(self.granted),
                    signed_ms(c.max(), self.granted),
                ),
                format!("≤ lease + {}", target_ms(FAILOVER_SLACK)),
                self.failover_ok(),
            ),
            Row::new(
                "Consul (fake agent): idle follower",
                format!(
                    "{:.2} blocking queries/s (the leader renews {:.2}/s), {} other requests",
                    self.idle.rate(&self.idle.follower, Some("kv-block")),
                    self.renewals_per_second(),
                    self.idle.follower_beyond_blocking(),
                ),
                "its blocking query only",
                self.idle.follower_beyond_blocking() == 0,
            ),
        ]
    }

    pub fn report(&self, ctx: &Context) -> String {
        let p = &self.params;
        let mut out = String::new();
        let _ = writeln!(out, "## Consul store, against a fake agent\n");
        let _ = writeln!(
            out,
            "Every figure here runs against **a fake** Consul agent, `baton_testkit::fake_consul` \
             (the `baton-fake-consul` code, served in the bench's own process on a runtime \
             thread of its own, plain HTTP on a loopback port): KV pairs and sessions in memory, \
             no raft, no servers behind it. A real agent forwards every write to the Consul \
             leader and waits for raft to commit it, so these figures are what Baton's store \
             adds on top of Consul, not what a cluster gives. Baton's processes use `--store \
             consul://127.0.0.1:<port>`.\n"
        );

        let _ = writeln!(out, "### Graceful handoff\n");
        let _ = writeln!(
            out,
            "*In one process*: two elections on two store instances (two HTTP clients) pass \
             leadership back and forth ({}); timed from just before the leader's `stop()` to \
             the follower's `BecameLeader`; the first {} handoffs are a warm-up. *Two \
             processes*: a new follower process starts; once it printed `leader_changed` naming \
             the leader and {} more have passed, the bench reads `CLOCK_BOOTTIME` and sends the \
             leader SIGINT; the leader releases (`?release=`, then destroys its session) and \
             exits; the handoff ends at the follower's own `CLOCK_BOOTTIME` stamp on its \
             `became_leader` line. The follower hears the release through its blocking query, \
             then renews or creates its session and locks the key in one transaction. Timing: \
             `{}`.\n",
            p.handoff_timing.describe(),
            p.warmup,
            baton::fmt_duration(FOLLOWER_SETTLE),
            procs::campaign_args("URL", "KEY", p.timing),
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
        let h = follower_samples(&self.baton_handoffs);
        let _ = writeln!(
            out,
            "| Baton, two `baton` processes | {} | {} | {} | {} | {} | {} | {} | p99 ≤ {}: {} |\n",
            h.len(),
            ms(h.p(50.0)),
            ms(h.p(99.0)),
            ms(h.min()),
            ms(h.mean()),
            ms(h.max()),
            ms(leader_samples(&self.baton_handoffs).p(50.0)),
            target_ms(PROCESS_HANDOFF_TARGET),
            verdict(h.p(99.0) <= PROCESS_HANDOFF_TARGET, || format!(
                "by {}",
                ms(h.p(99.0).saturating_sub(PROCESS_HANDOFF_TARGET))
            )),
        );

        let _ = writeln!(out, "### Crash failover\n");
        let c = follower_samples(&self.baton_crashes);
        let _ = writeln!(
            out,
            "The same rounds with SIGKILL instead of SIGINT, each follower left to settle a \
             random part of the renew interval more, so that the kill falls anywhere in the \
             leader's renew interval; timed from just before the SIGKILL to the follower's own \
             stamp on `became_leader`. `--lease {}`: the dead leader's session lives on in \
             Consul (TTL {}, invalidated only 2 × TTL after its last renewal), but a Baton \
             follower times the leader's record from when its blocking query saw the last \
             renewal rewrite it, and takes over once the lease has passed: one transaction that \
             checks the index, destroys the dead leader's session and locks with its own \
             (docs/decisions.md D95). So a failover is between about the lease minus one renew \
             interval ({}) and the lease, plus the follower's jitter and its acquire.\n",
            baton::fmt_duration(p.timing.lease),
            baton::store::consul::session_ttl(p.timing.lease)
                .map(baton::fmt_duration)
                .unwrap_or_default(),
            baton::fmt_duration(p.timing.renew),
        );
        let _ = writeln!(
            out,
            "| candidates | crashes | lease | min | mean | max | max − lease | target ≤ lease + {} |",
            target_ms(FAILOVER_SLACK)
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---|");
        let _ = writeln!(
            out,
            "| Baton, two `baton` processes | {} | {} | {} | {} | {} | {} | {} |\n",
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
        let _ = writeln!(
            out,
            "Each crash (ms after the SIGKILL): {}.\n",
            self.baton_crashes
                .iter()
                .map(|c| format!("{:.1}", c.in_follower.as_secs_f64() * 1e3))
                .collect::<Vec<_>>()
                .join(", ")
        );

        let _ = writeln!(out, "### An idle follower's requests\n");
        let _ = writeln!(
            out,
            "One leader and one follower process on one key, each with an ACL token of its own \
             (`--store consul://127.0.0.1:<port>?token=<its name>`); the fake, started without \
             a token, checks none and counts every request under the token it carries and its \
             kind (a request counter only the fake has, also served at \
             `/debug/baton-fake/requests`; a blocking query counts when it is sent). Counted \
             over {:.1} s, after both had run {} as leader and follower; same timing as \
             above.\n",
            self.idle.window.as_secs_f64(),
            baton::fmt_duration(p.settle),
        );
        let _ = writeln!(
            out,
            "| candidate | blocking queries/s | other requests/s | requests | target |"
        );
        let _ = writeln!(out, "|---|---:|---:|---|---|");
        for (name, client) in [
            ("follower", &self.idle.follower),
            ("leader", &self.idle.leader),
        ] {
            let all = self.idle.rate(client, None);
            let blocking = self.idle.rate(client, Some("kv-block"));
            let _ = writeln!(
                out,
                "| {name} | {blocking:.2} | {:.2} | {} | {} |",
                all - blocking,
                self.idle.counted.describe(client),
                if name == "follower" {
                    format!(
                        "its blocking query only: {}",
                        verdict(self.idle.follower_beyond_blocking() == 0, || {
                            "see the requests".to_owned()
                        })
                    )
                } else {
                    "–".to_owned()
                },
            );
        }
        out.push('\n');
        let _ = writeln!(
            out,
            "The leader renews every {}: a session renewal and a transaction that rewrites its \
             record. Each rewrite answers the follower's blocking query, which it sends again \
             at once, so an idle follower sends about one blocking query per renewal \
             ({:.2}/s) and nothing else: no reads, no session renewals (D99).\n",
            baton::fmt_duration(p.timing.renew),
            self.renewals_per_second(),
        );
        out.push_str(&ctx.footer(&[
            "consul",
            &format!("`baton` CLI processes ({} build)", ctx.profile),
        ]));
        out
    }
}
