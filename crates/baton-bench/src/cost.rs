//! Cost in steady state on Redis: one leader and idle followers, each on its own connection
//! (as separate processes would be), counted by the server (`INFO commandstats`).
//!
//! Attribution by role uses the commands inside Baton's scripts: `PEXPIRE` runs only in the
//! renew script (one per successful renewal: the leader), `HMGET` only in the acquire script
//! when it finds the key held (a follower's attempt; nobody calls `read` here), `HSET` only
//! when an acquire succeeds.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton::{LeaderElection, LeaseStore};

use crate::BoxResult;
use crate::redis_admin::{Admin, CommandStats};
use crate::report::{Context, Row, verdict};
use crate::stores::{StoreKind, Timing, became_leader_within, election, first_lead_limit};

#[derive(Debug, Clone, Copy)]
pub struct Params {
    pub timing: Timing,
    pub followers: usize,
    /// Time between the last follower's start and the window, so start-up traffic is excluded.
    pub settle: Duration,
    pub window: Duration,
}

#[derive(Debug)]
pub struct Cost {
    pub params: Params,
    pub elapsed: Duration,
    pub stats: CommandStats,
}

pub async fn measure(kind: &StoreKind, admin: &mut Admin, params: Params) -> BoxResult<Cost> {
    let key = "bench:cost";
    let timing = params.timing;
    let leader_store = kind.open()?;
    let leader = election(&leader_store, key, "cost-leader", timing)?;
    let mut events = leader.subscribe();
    leader.start().await?;
    became_leader_within(&mut events, first_lead_limit(timing), "the cost leader").await?;

    let mut followers: Vec<(Arc<dyn LeaseStore>, LeaderElection)> = Vec::new();
    for i in 0..params.followers {
        let store = kind.open()?;
        let follower = election(&store, key, &format!("cost-follower-{i}"), timing)?;
        follower.start().await?;
        followers.push((store, follower));
    }
    tokio::time::sleep(params.settle).await;

    admin.reset_stats().await?;
    let t0 = Instant::now();
    tokio::time::sleep(params.window).await;
    let stats = admin.command_stats().await?;
    let elapsed = t0.elapsed();

    let still_leading = leader.is_leader();
    let stray = followers.iter().filter(|(_, f)| f.is_leader()).count();
    for (_, f) in &followers {
        f.stop().await?;
    }
    leader.stop().await?;
    if !still_leading || stray > 0 {
        return Err(format!(
            "the cost run was not steady: leader still leading = {still_leading}, followers that led = {stray}"
        )
        .into());
    }
    Ok(Cost {
        params,
        elapsed,
        stats,
    })
}

/// Rates derived from the counters.
struct Rates {
    secs: f64,
    renewals: u64,
    attempts: u64,
    requests: u64,
    leader: f64,
    leader_expected: f64,
    per_follower: f64,
    leader_ok: bool,
    followers_ok: bool,
}

impl Cost {
    /// The leader's requests per second.
    pub fn leader_rate(&self) -> f64 {
        self.rates().leader
    }

    /// One idle follower's requests per second.
    pub fn follower_rate(&self) -> f64 {
        self.rates().per_follower
    }

    fn rates(&self) -> Rates {
        let secs = self.elapsed.as_secs_f64();
        let renewals = self.stats.get("pexpire");
        // Every acquire script reads the companion with one HMGET.
        let attempts = self.stats.get("hmget");
        let leader = renewals as f64 / secs;
        let leader_expected = 1.0 / self.params.timing.renew.as_secs_f64();
        let per_follower = attempts as f64 / secs / self.params.followers as f64;
        Rates {
            secs,
            renewals,
            attempts,
            requests: self.stats.requests(),
            leader,
            leader_expected,
            per_follower,
            // "About 1 per renew interval": not more than 10 % above it.
            leader_ok: leader <= leader_expected * 1.1,
            // "About 0": less than one attempt per follower per minute.
            followers_ok: per_follower < 1.0 / 60.0,
        }
    }

    pub fn summary_rows(&self) -> Vec<Row> {
        let r = self.rates();
        vec![
            Row::new(
                "Redis cost: leader",
                format!(
                    "{:.2} requests/s (renew every {})",
                    r.leader,
                    baton::fmt_duration(self.params.timing.renew)
                ),
                "about 1 per renew interval",
                r.leader_ok,
            ),
            Row::new(
                "Redis cost: idle follower",
                format!(
                    "{:.3} requests/s each ({:.2}/s for {})",
                    r.per_follower,
                    r.attempts as f64 / r.secs,
                    self.params.followers
                ),
                "about 0",
                r.followers_ok,
            ),
        ]
    }

    pub fn report(&self, ctx: &Context) -> String {
        let r = self.rates();
        let secs = r.secs;
        let rate = |n: u64| n as f64 / secs;
        let p = &self.params;
        let (renewals, attempts, requests) = (r.renewals, r.attempts, r.requests);
        let other = requests.saturating_sub(renewals + attempts);
        let (leader_rate, expected_leader, follower_rate) =
            (r.leader, r.leader_expected, r.per_follower);
        let follower_period = if attempts > 0 {
            format!(
                "one attempt every {:.2} s per follower",
                secs * p.followers as f64 / attempts as f64
            )
        } else {
            "no attempts".to_owned()
        };

        let mut out = String::new();
        let _ = writeln!(
            out,
            "## Cost on Redis: 1 leader + {} idle followers\n",
            p.followers
        );
        let _ = writeln!(
            out,
            "Each candidate on its own connection ({}). After start-up and {} of settling, \
             `CONFIG RESETSTAT`, then `INFO commandstats` {:.1} s later. A *request* is one round \
             trip from a client (`EVALSHA`, `SUBSCRIBE`, ...); *commands* also count what \
             Baton's Lua scripts run inside Redis (`TYPE`, `GET`, `PEXPIRE`, ...). Roles are told \
             apart by the commands only their scripts run: `PEXPIRE` (renewal), `HMGET` (an \
             acquire that found the key held).\n",
            p.timing.describe(),
            baton::fmt_duration(p.settle),
            secs
        );
        let _ = writeln!(out, "| who | requests/s | what |");
        let _ = writeln!(out, "|---|---:|---|");
        let _ = writeln!(
            out,
            "| leader | {leader_rate:.2} | {renewals} renewals (expected 1 per renew interval = {expected_leader:.2}/s) |"
        );
        let _ = writeln!(
            out,
            "| {} idle followers, together | {:.2} | {attempts} acquire attempts that found the key held: {follower_period} |",
            p.followers,
            rate(attempts)
        );
        let _ = writeln!(out, "| one idle follower | {follower_rate:.3} | |");
        let _ = writeln!(out, "| other requests | {:.2} | {other} |", rate(other));
        let _ = writeln!(
            out,
            "| **all clients** | **{:.2}** | {} commands/s counting those inside scripts |\n",
            rate(requests),
            format_args!("{:.1}", rate(self.stats.commands()))
        );
        let _ = writeln!(
            out,
            "Server counters over the window: {}.\n",
            self.stats.breakdown()
        );

        let (leader_ok, followers_ok) = (r.leader_ok, r.followers_ok);
        let _ = writeln!(
            out,
            "- Target \"leader about 1 per renew interval\": {}.",
            verdict(leader_ok, || format!(
                "{leader_rate:.2}/s against {expected_leader:.2}/s"
            ))
        );
        let _ = writeln!(
            out,
            "- Target \"idle followers about 0\": {}.",
            verdict(followers_ok, || format!(
                "{follower_rate:.3} requests/s per follower, {:.2}/s for {} followers",
                rate(attempts),
                p.followers
            ))
        );
        if !followers_ok {
            let _ = writeln!(
                out,
                "  - Why: a follower that finds the key held sleeps until the holder's remaining \
                 TTL (plus up to 1 % jitter) and then tries again, because a crashed leader is \
                 only noticed by its lease running out, and Redis pushes nothing when a lease \
                 is *renewed* (the renew script publishes nothing) or expires (no keyspace \
                 notifications are used). Behind a live leader each wake-up finds a freshly \
                 renewed key, so every idle follower polls about once per \
                 `lease − time since the last renewal`, i.e. every {}–{} here. The release push \
                 works: no follower polls more often than that.\n  \
                 - Fix (library, not done here): publish `renewed` with the new expiry from the \
                 renew script (one more command inside the script, no extra round trip) so that \
                 subscribed followers move their wake-up without asking Redis; with that, idle \
                 followers cost 0 requests and crash failover stays lease + jitter after the \
                 last renewal. Alternatives: keyspace notifications for `expired`/`del` on the \
                 key (Redis emits `expired` only when it reclaims the key, up to ~100 ms late at \
                 `hz 10`, which would eat the failover budget), or sleeping a whole lease after \
                 each `Held` (half the polls, up to twice the failover).",
                baton::fmt_duration(p.timing.lease.saturating_sub(p.timing.renew)),
                baton::fmt_duration(p.timing.lease)
            );
        }
        out.push('\n');
        out.push_str(&ctx.footer(&["redis"]));
        out
    }
}
