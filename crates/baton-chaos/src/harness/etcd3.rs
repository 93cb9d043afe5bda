//! The 3-member etcd of a run ([`Store::Etcd3`](crate::scenario::Store::Etcd3)) and the faults
//! of its members.
//!
//! The cluster is a [`EtcdCluster`] of the run's own: three members with data directories of
//! their own, each member's peer links through fault proxies so that one member can be cut off
//! from the other two (both ways) while its clients still reach it. Every candidate slot has a
//! [`FaultProxy`] of its own in front of each member's client port, and its URL lists all
//! three, starting with member `slot % 3`, so that the candidates start out on different
//! members (Baton's client talks to the first endpoint until a call there fails). The
//! candidate-level faults (partition-leader, reset-connections, slow-store) switch all of a
//! slot's proxies at once, as the one proxy of a single-member run.
//!
//! The faults of the members
//! ([`Scenario::is_member_fault`](crate::scenario::Scenario::is_member_fault)):
//!
//! * **partition-member**: the member the leader's client talks to (the one whose proxy of
//!   the leader's slot carried the most bytes over 400 ms) is cut off from its peers for
//!   0.2–5 s.
//! * **kill-raft-leader**: the member whose `etcd_server_is_leader` gauge is 1 is SIGKILLed,
//!   and started again on its data directory 0–2 s later.
//! * **restart-members**: every member in turn, in a seeded order, is SIGKILLed and started
//!   again 0–1.5 s later; the next goes once it is healthy again.
//!
//! A member fault heals, for the checker, when it is injected (a kill: the other two keep a
//! quorum and elect a Raft leader by themselves) or when the partition ends. Its liveness
//! bound adds [`member_fault_allowance`] to the single etcd's (the TTL etcd keeps + renew +
//! 1 s); see there.

use std::time::Duration;

use baton_testkit::etcd_cluster::EtcdCluster;
use baton_testkit::proxy::{FaultProxy, ProxyMode};

use super::{Run, now};
use crate::records::ms;

/// The members of the cluster.
const MEMBERS: usize = 3;

/// etcd's election timeout, which the run's members keep at its default.
const ELECTION_TIMEOUT: Duration = Duration::from_secs(1);

/// How long the harness waits for a Raft leader to kill.
const RAFT_LEADER_LIMIT: Duration = Duration::from_secs(10);

/// What the liveness bound of a member fault adds to the single etcd's (effective lease +
/// renew + 1 s): three election timeouts, 3 s with etcd's defaults, so 6.3 s in all for
/// `--lease 1500ms --renew 300ms`. Derived:
///
/// * When the Raft leader is lost (killed, or cut off: with etcd's check-quorum it steps down
///   an election timeout after it last heard from a quorum), the others elect a new one once
///   one of them has gone a randomized election timeout without a heartbeat: at most two
///   election timeouts (2 s), plus a pre-vote and a vote round trip on loopback.
/// * Meanwhile no renewal can succeed, so Baton's leader steps down (`renew + grace` after
///   its last good renewal), and its entry stays until its own next attempt, once a Raft
///   leader is back, deletes it (at most a backoff step, `renew`, after that), or until its
///   lease runs out: the new Raft leader extends *every* lease to a full TTL plus an election
///   timeout from when it takes office (etcd's `lessor.Promote`), so that is at most the TTL
///   (2 s) + 1 s after the new Raft leader, plus etcd's 500 ms expiry sweep.
/// * A follower whose watch is on a live member sees the deletion at once and takes over in
///   one transaction; one whose member is the lost one leaves it at its next failed call
///   (refused at once: connection refused, or "no leader") and campaigns on another.
///
/// Worst case after the fault: 2 s (election) + 2 s (TTL) + 1 s (extension) + 0.5 s (sweep)
/// = 5.5 s, inside 2 s + 2 s + 1 s + `renew` + 1 s = 6.3 s. A partition of a member that is
/// not the Raft leader costs no election: the leader's entry is freed a TTL after its last
/// keepalive (before the cut), inside the single etcd's bound.
pub(super) fn member_fault_allowance() -> Duration {
    3 * ELECTION_TIMEOUT
}

/// The cluster and the candidates' proxies to it.
pub(super) struct Etcd3 {
    cluster: EtcdCluster,
    /// `proxies[slot][member]`.
    proxies: Vec<Vec<FaultProxy>>,
}

impl Etcd3 {
    /// Start the cluster, and `candidates` slots' proxies to its members (within the harness's
    /// runtime).
    pub(super) fn start(candidates: usize) -> Result<Etcd3, String> {
        let cluster = EtcdCluster::try_start(MEMBERS)?;
        let mut proxies = Vec::new();
        for _ in 0..candidates {
            let slot = (0..MEMBERS)
                .map(|m| {
                    FaultProxy::start(cluster.client_addr(m))
                        .map_err(|e| format!("cannot start a fault proxy: {e}"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            proxies.push(slot);
        }
        Ok(Etcd3 { cluster, proxies })
    }

    /// Slot `slot`'s URL: its proxies of every member, member `slot % 3` first.
    pub(super) fn url(&self, slot: usize) -> String {
        let hosts: Vec<String> = (0..MEMBERS)
            .map(|i| self.proxies[slot][(slot + i) % MEMBERS].addr().to_string())
            .collect();
        format!("etcd://{}", hosts.join(","))
    }

    /// Switch the proxies of `slot` (or of every slot) to `mode`.
    pub(super) fn set_mode(&self, slot: Option<usize>, mode: ProxyMode) {
        for (i, proxies) in self.proxies.iter().enumerate() {
            if slot.is_none_or(|only| only == i) {
                for proxy in proxies {
                    proxy.set_mode(mode);
                }
            }
        }
    }

    /// Write the members' logs into the run's directory (`etcd-m<i>.log`), which is kept when
    /// the run fails.
    pub(super) fn keep_logs(&self, dir: &std::path::Path) {
        for member in 0..MEMBERS {
            let _ = std::fs::write(
                dir.join(format!("etcd-m{member}.log")),
                self.cluster.log(member),
            );
        }
    }

    /// The bytes `slot`'s proxies have carried to each member so far.
    fn sent(&self, slot: usize) -> Vec<u64> {
        self.proxies[slot]
            .iter()
            .map(FaultProxy::bytes_sent)
            .collect()
    }
}

impl Run<'_> {
    fn cluster(&mut self) -> &mut Etcd3 {
        self.etcd3.as_mut().expect("an etcd3 run has a cluster")
    }

    /// The member `slot`'s client talks to: the one its proxies carried the most bytes to over
    /// 400 ms (a leader renews every `renew`).
    fn member_of(&mut self, slot: usize) -> Result<usize, String> {
        let before = self.cluster().sent(slot);
        self.sleep(Duration::from_millis(400))?;
        let after = self.cluster().sent(slot);
        let member = (0..MEMBERS)
            .max_by_key(|&m| after[m] - before[m])
            .unwrap_or(0);
        self.note(format!(
            "slot {slot} sent {:?} bytes to the members in 400ms: it talks to member {member}",
            (0..MEMBERS)
                .map(|m| after[m] - before[m])
                .collect::<Vec<_>>()
        ));
        Ok(member)
    }

    /// Cut the member the leader in `slot` talks to off from its peers (see the module docs).
    pub(super) fn partition_member(&mut self, slot: usize, id: &str) -> Result<Duration, String> {
        let member = self.member_of(slot)?;
        let d = self.duration(200..=5000);
        let raft_leader = self.cluster().cluster.raft_leader();
        self.cluster().cluster.partition(member);
        let start = now();
        self.note(format!(
            "etcd member {member} cut off from its peers (the Raft leader was {raft_leader:?})"
        ));
        self.sleep(d)?;
        self.cluster().cluster.heal();
        let heal = now();
        let role = if raft_leader == Some(member) {
            ", the Raft leader,"
        } else {
            ""
        };
        self.episode(
            format!(
                "a partition of etcd member {member}{role} which the leader {id} talks to, from \
                 its peers, for {}",
                ms(d)
            ),
            Some(id.to_owned()),
            start,
            heal,
        );
        Ok(heal)
    }

    /// SIGKILL `member`, start it again after `down`, and record the episode (it heals at the
    /// kill: the others keep a quorum).
    fn kill_member(&mut self, member: usize, down: Duration, what: &str) -> Result<(), String> {
        self.cluster().cluster.kill(member);
        let at = now();
        self.note(format!("SIGKILL etcd member {member} ({what})"));
        self.sleep(down)?;
        self.cluster()
            .cluster
            .restart(member)
            .map_err(|e| format!("cannot restart etcd member {member}: {e}"))?;
        self.note(format!("etcd member {member} is back and healthy"));
        self.episode(
            format!(
                "a SIGKILL of etcd member {member} ({what}), started again after {}",
                ms(down)
            ),
            None,
            at,
            at,
        );
        Ok(())
    }

    /// SIGKILL the Raft leader and start it again 0–2 s later; returns the kill's instant.
    pub(super) fn kill_raft_leader(&mut self) -> Result<Duration, String> {
        let Some(leader) = self
            .cluster()
            .cluster
            .wait_for_raft_leader(RAFT_LEADER_LIMIT)
        else {
            return Err(format!(
                "no etcd member was the Raft leader within {}",
                ms(RAFT_LEADER_LIMIT)
            ));
        };
        let down = self.duration(0..=2000);
        self.kill_member(leader, down, "the Raft leader")?;
        Ok(self.obs.episodes.last().map_or_else(now, |e| e.heal))
    }

    /// SIGKILL every member in turn (see the module docs); returns the last kill's instant.
    pub(super) fn restart_members(&mut self) -> Result<Duration, String> {
        let mut order: Vec<usize> = (0..MEMBERS).collect();
        self.rng.shuffle(&mut order);
        for member in order {
            let raft_leader = self.cluster().cluster.raft_leader();
            let what = if raft_leader == Some(member) {
                "the Raft leader"
            } else {
                "a Raft follower"
            };
            let down = self.duration(0..=1500);
            self.kill_member(member, down, what)?;
            let pause = Duration::from_millis(self.rng.u64(200..=800));
            self.sleep(pause)?;
        }
        Ok(self.obs.episodes.last().map_or_else(now, |e| e.heal))
    }
}
