//! Planned handoff across processes (`baton handoff`), on every store (the Kubernetes API
//! server and the Consul agent are Baton's fakes): two `baton campaign --json` processes, and for each handoff a
//! `baton handoff --to <follower> --json` process of its own. Two figures per handoff, both on
//! `CLOCK_BOOTTIME` (one clock for every process on the machine):
//!
//! * *request to leader*: from just before the bench starts `baton handoff` to the named
//!   follower's own stamp on its `became_leader` line. A `baton` leader hears of the request
//!   through its store's push on Redis; on SQLite across processes it reads it at its next
//!   renewal, about half a renew interval later on average (docs/decisions.md D133);
//! * *leaderless gap*: from the leader's stamp on its `lost_leadership` (`handed_over`) line to
//!   the follower's on `became_leader`: how long nobody leads.
//!
//! The same run also times graceful stops ([`procs::baton_rounds`]: SIGINT to the leader) on the
//! same store, and reports their gap (the leader's `lost_leadership` to the follower's
//! `became_leader`) beside it: what a rolling deploy that just stops the leader costs.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use baton_testkit::etcd_server::EtcdServer;
use baton_testkit::fake_consul::{FakeConsul, FakeConsulOptions};
use baton_testkit::fake_k8s::{FakeK8s, FakeK8sOptions};

use crate::BoxResult;
use crate::dbs::Server;
use crate::procs::{self, FOLLOWER_SETTLE, Proc, STEP, is_event, parse, since};
use crate::redis_admin::Admin;
use crate::report::{Context, Row, Samples, display_name, ms, target_ms, verdict};
use crate::stores::Timing;

#[derive(Debug, Clone, Copy)]
pub struct Params {
    /// Timed handoffs per store, and as many graceful stops.
    pub rounds: usize,
    pub timing: Timing,
}

/// The targets on Redis: from `baton handoff` to the named candidate's
/// `became_leader`, and the leaderless gap, both p99.
pub const REDIS_REQUEST_P99: Duration = Duration::from_millis(5);
pub const REDIS_GAP_P99: Duration = Duration::from_millis(2);

const KEY: &str = "bench-planned-handoff";

pub struct StoreRun {
    pub store: &'static str,
    pub url_shape: &'static str,
    /// Request (bench) → the named follower's `became_leader` stamp.
    pub request: Samples,
    /// The `baton handoff` process's own stamp just before it sends the request → the same
    /// `became_leader` stamp: the request without the process's start.
    pub sent: Samples,
    /// The leader's `lost_leadership` stamp → the follower's `became_leader` stamp.
    pub gap: Samples,
    /// The same gap for graceful stops (SIGINT) in the same run.
    pub stop_gap: Samples,
    /// (request, from the send) per handoff, unsorted, for the split of the two.
    parts: Vec<(Duration, Duration)>,
}

impl StoreRun {
    /// (request, from the send) of each handoff, in the order measured.
    fn request_parts(&self) -> impl Iterator<Item = (Duration, Duration)> + '_ {
        self.parts.iter().copied()
    }
}

pub struct Run {
    pub params: Params,
    pub stores: Vec<StoreRun>,
}

fn handoff_cmd(baton: &Path, url: &str, to: &str, t: Timing) -> Command {
    let mut cmd = Command::new(baton);
    cmd.args(["--store", url, "--key", KEY])
        .args(["--lease", &baton::fmt_duration(t.lease)])
        .args(["--renew", &baton::fmt_duration(t.renew)])
        .args(["--grace", &baton::fmt_duration(t.grace)])
        .args(["handoff", "--to", to, "--json"]);
    cmd
}

/// `rounds` planned handoffs between two `baton campaign --json` processes on `url`; each
/// request is made a random part of the renew interval after the follower settled, so that
/// it falls anywhere in the leader's renew interval. Returns (request, sent, gap) per handoff.
fn handoffs(
    baton: &Path,
    url: &str,
    t: Timing,
    rounds: usize,
) -> BoxResult<Vec<(Duration, Duration, Duration)>> {
    let mut ids = ("p0".to_owned(), "p1".to_owned());
    let mut leader = procs::baton_campaign(baton, url, KEY, &ids.0, t)?;
    leader
        .wait_line(STEP, |l| is_event(l, "became_leader", "p0"))
        .ok_or_else(|| format!("the first baton campaign on {url} did not lead within {STEP:?}"))?;
    let mut follower = procs::baton_campaign(baton, url, KEY, &ids.1, t)?;
    follower
        .wait_line(STEP, |l| is_event(l, "leader_changed", "p0"))
        .ok_or("p1 never saw p0 lead")?;
    let mut out = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        std::thread::sleep(FOLLOWER_SETTLE + procs::phase(t.renew));
        let boot0 = procs::boot_ns_now();
        let mut handoff = Proc::spawn(
            handoff_cmd(baton, url, &ids.1, t),
            format!("baton handoff --to {}", ids.1),
            true,
        )?;
        let (_, line) = follower
            .wait_line(STEP, |l| is_event(l, "became_leader", &ids.1))
            .ok_or_else(|| format!("{} did not lead within {STEP:?}", ids.1))?;
        let became = parse(&line).ok_or("unreachable: parsed before")?;
        let (_, line) = leader
            .wait_line(STEP, |l| {
                parse(l).is_some_and(|l| {
                    l.event == "lost_leadership" && l.candidate.as_deref() == Some(&*ids.0)
                })
            })
            .ok_or_else(|| format!("{} printed no lost_leadership", ids.0))?;
        let lost = parse(&line).ok_or("unreachable: parsed before")?;
        let (_, answer) = handoff
            .wait_line(STEP, |l| l.contains("\"handed_over\""))
            .ok_or("baton handoff printed no JSON line")?;
        let asked = serde_json::from_str::<serde_json::Value>(&answer)?["asked_boot_ns"]
            .as_u64()
            .ok_or("baton handoff's JSON line has no asked_boot_ns")?;
        let status = handoff.wait_exit(STEP)?;
        if !status.success() {
            return Err(format!("baton handoff --to {} exited with {status}", ids.1).into());
        }
        out.push((
            since(boot0, became.boot_ns),
            since(asked, became.boot_ns),
            since(lost.boot_ns, became.boot_ns),
        ));
        // The old leader follows the new one: the roles swap.
        leader
            .wait_line(STEP, |l| is_event(l, "leader_changed", &ids.1))
            .ok_or_else(|| format!("{} never saw {} lead", ids.0, ids.1))?;
        std::mem::swap(&mut leader, &mut follower);
        ids = (ids.1, ids.0);
    }
    for p in [&leader, &follower] {
        p.signal(rustix::process::Signal::INT)?;
    }
    leader.wait_exit(STEP)?;
    follower.wait_exit(STEP)?;
    Ok(out)
}

/// The stores, in report order: every store takes handoff requests (D133, D135 to D138).
pub const STORES: [&str; 7] = [
    "sqlite",
    "redis",
    "postgres",
    "mysql",
    "etcd",
    "kubernetes",
    "consul",
];

pub async fn measure(
    baton: &Path,
    redis_url: &str,
    admin: &mut Admin,
    etcd: &EtcdServer,
    dir: &Path,
    p: Params,
) -> BoxResult<Run> {
    let mut stores = Vec::new();
    for store in STORES {
        eprintln!(
            "planned-handoff: {store}, {} handoffs and {} graceful stops",
            p.rounds, p.rounds
        );
        // What must outlive the rounds: a SQL table (dropped afterwards), a fake server.
        let mut sql = None;
        let mut _k8s = None;
        let mut _consul = None;
        let (url, url_shape) = match store {
            "sqlite" => (
                format!("sqlite:{}", dir.join("planned-handoff.db").display()),
                "sqlite:<temp file>",
            ),
            "redis" => {
                admin.wait_past_restart_guard(p.timing.lease).await?;
                (redis_url.to_owned(), "redis://127.0.0.1:<port>")
            }
            "postgres" | "mysql" => {
                let server = if store == "postgres" {
                    Server::postgres().await?
                } else {
                    Server::mysql().await?
                };
                let url = server.store_url();
                sql = Some(server);
                (
                    url,
                    if store == "postgres" {
                        "postgres://postgres@127.0.0.1:5432/test?table=<own table>"
                    } else {
                        "mysql://root@127.0.0.1:3306/test?table=<own table>"
                    },
                )
            }
            "etcd" => (etcd.url(), "etcd://127.0.0.1:<port>"),
            "kubernetes" => {
                let fake = FakeK8s::serve(FakeK8sOptions::default());
                let url = crate::kubernetes::store_url(&fake);
                _k8s = Some(fake);
                (url, "kubernetes+http://127.0.0.1:<port>?namespace=bench")
            }
            _ => {
                let fake = FakeConsul::serve(FakeConsulOptions::default());
                let url = fake.store_url();
                _consul = Some(fake);
                (url, "consul://127.0.0.1:<port>")
            }
        };
        let baton = baton.to_owned();
        let measured = tokio::task::spawn_blocking(move || -> BoxResult<_> {
            let handed = handoffs(&baton, &url, p.timing, p.rounds)?;
            let stops = procs::baton_rounds(&baton, &url, KEY, p.timing, p.rounds, false)?;
            Ok((handed, stops))
        })
        .await?;
        if let Some(server) = sql {
            server.cleanup().await;
        }
        let (handed, stops) = measured?;
        stores.push(StoreRun {
            store,
            url_shape,
            request: Samples::new(handed.iter().map(|h| h.0).collect()),
            sent: Samples::new(handed.iter().map(|h| h.1).collect()),
            gap: Samples::new(handed.iter().map(|h| h.2).collect()),
            parts: handed.iter().map(|h| (h.0, h.1)).collect(),
            stop_gap: Samples::new(
                stops
                    .iter()
                    .map(|c| {
                        c.in_follower
                            .saturating_sub(c.leader_stop.unwrap_or_default())
                    })
                    .collect(),
            ),
        });
    }
    Ok(Run { params: p, stores })
}

impl Run {
    fn redis(&self) -> Option<&StoreRun> {
        self.stores.iter().find(|s| s.store == "redis")
    }

    pub fn summary_rows(&self) -> Vec<Row> {
        let Some(r) = self.redis() else {
            return Vec::new();
        };
        vec![
            Row::new(
                "Redis: `baton handoff` to the named candidate's `became_leader`, two `baton` processes",
                format!(
                    "p50 {}, p99 {} ({} handoffs, the `baton handoff` process's start included; from the request's send: p50 {}, p99 {})",
                    ms(r.request.p(50.0)),
                    ms(r.request.p(99.0)),
                    r.request.len(),
                    ms(r.sent.p(50.0)),
                    ms(r.sent.p(99.0)),
                ),
                format!("p99 ≤ {}", target_ms(REDIS_REQUEST_P99)),
                r.request.p(99.0) <= REDIS_REQUEST_P99,
            ),
            Row::new(
                "Redis: leaderless gap of a planned handoff",
                format!(
                    "p50 {}, p99 {} (graceful stop in the same run: p50 {}, p99 {})",
                    ms(r.gap.p(50.0)),
                    ms(r.gap.p(99.0)),
                    ms(r.stop_gap.p(50.0)),
                    ms(r.stop_gap.p(99.0))
                ),
                format!("p99 ≤ {}", target_ms(REDIS_GAP_P99)),
                r.gap.p(99.0) <= REDIS_GAP_P99,
            ),
        ]
    }

    pub fn report(&self, ctx: &Context) -> String {
        let p = &self.params;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "## Planned handoff across processes (`baton handoff`)\n"
        );
        let _ = writeln!(
            out,
            "Two `baton` processes, each `{}`. One leads, the other follows; {} after the \
             follower has printed `leader_changed`, plus a random part of the renew interval, \
             the bench reads `CLOCK_BOOTTIME` and runs `baton --store URL --key {KEY} handoff \
             --to <the follower> --json` (the process's start is in the figure). The request \
             goes through the store; the leader hears of it through the store's push \
             (Redis, PostgreSQL, etcd, Kubernetes, Consul) or reads it at its next renewal \
             (SQLite and MySQL across processes), ends its term as a \
             graceful stop does (its \
             `lost_leadership` says `handed_over`), and leaves the key reserved for the \
             follower, which its store wakes. Then the roles swap. *Request to leader* ends at \
             the follower's own stamp on `became_leader`; *gap* is from the leader's stamp on \
             `lost_leadership` to that one: how long nobody leads. The same run then times as \
             many graceful stops (SIGINT to the leader, as in the cross-process handoff \
             section) on the same store: their gap, from the leader's `lost_leadership` to the \
             follower's `became_leader`, is what just stopping the leader costs. The \
             Kubernetes API server and the Consul agent are Baton's fakes \
             (`baton_testkit::fake_k8s`, `baton_testkit::fake_consul`), in the bench's process: \
             their figures show Baton's path, not a real server's.\n",
            procs::campaign_args("URL", KEY, p.timing),
            baton::fmt_duration(FOLLOWER_SETTLE),
        );
        let _ = writeln!(
            out,
            "| store | `--store` | handoffs | request to leader p50 | p99 | max | gap p50 | gap p99 | gap max | graceful stop gap p50 | p99 |"
        );
        let _ = writeln!(
            out,
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for s in &self.stores {
            let _ = writeln!(
                out,
                "| {} | `{}` | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                display_name(s.store),
                s.url_shape,
                s.request.len(),
                ms(s.request.p(50.0)),
                ms(s.request.p(99.0)),
                ms(s.request.max()),
                ms(s.gap.p(50.0)),
                ms(s.gap.p(99.0)),
                ms(s.gap.max()),
                ms(s.stop_gap.p(50.0)),
                ms(s.stop_gap.p(99.0)),
            );
        }
        out.push('\n');
        let _ = writeln!(
            out,
            "Where the request's time goes: *start* is from the bench's stamp to `baton \
             handoff`'s own stamp just before it sends the request (`asked_boot_ns` in its \
             JSON: the process's start, opening the store, subscribing to the key); *from the \
             send* is from there to the new leader's `became_leader` stamp.\n"
        );
        let _ = writeln!(
            out,
            "| store | start p50 | start p99 | from the send p50 | from the send p99 |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|");
        for s in &self.stores {
            let start = Samples::new(
                s.request_parts()
                    .map(|(all, sent)| all.saturating_sub(sent))
                    .collect(),
            );
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                display_name(s.store),
                ms(start.p(50.0)),
                ms(start.p(99.0)),
                ms(s.sent.p(50.0)),
                ms(s.sent.p(99.0)),
            );
        }
        out.push('\n');
        if let Some(r) = self.redis() {
            let req = r.request.p(99.0);
            let gap = r.gap.p(99.0);
            let _ = writeln!(
                out,
                "- Redis, request to leader: p99 {} against a target of {}: {}. It includes \
                 starting the `baton handoff` process, which opens its store and asks; from the \
                 request's send it is p50 {}, p99 {}: the leader hears of the request through \
                 Redis's push and renews at once to read it. On SQLite the request from another \
                 process waits for the leader's next renewal (every {} here), so its figure \
                 shows half that on average.",
                ms(req),
                target_ms(REDIS_REQUEST_P99),
                verdict(req <= REDIS_REQUEST_P99, || format!(
                    "by {}",
                    ms(req.saturating_sub(REDIS_REQUEST_P99))
                )),
                ms(r.sent.p(50.0)),
                ms(r.sent.p(99.0)),
                baton::fmt_duration(p.timing.renew),
            );
            let _ = writeln!(
                out,
                "- Redis, leaderless gap: p99 {} against a target of {}: {}.",
                ms(gap),
                target_ms(REDIS_GAP_P99),
                verdict(gap <= REDIS_GAP_P99, || format!(
                    "by {}",
                    ms(gap.saturating_sub(REDIS_GAP_P99))
                )),
            );
        }
        out.push('\n');
        out.push_str(&ctx.footer(&STORES));
        out
    }
}
