//! The stores the harness runs candidates against, and the fault classes it injects.

use std::fmt;

/// A store the candidates share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Store {
    /// An SQLite file in the run's directory.
    Sqlite,
    /// A `redis-server` of the run's own, without persistence, reached by every candidate
    /// through a fault proxy of its own.
    Redis,
    /// The machine's PostgreSQL (`postgres@127.0.0.1:5432/test`), in a lease table of the
    /// run's own (dropped afterwards), reached by every candidate through a fault proxy of its
    /// own; `LISTEN`/`NOTIFY` goes through the same proxy.
    Postgres,
    /// An `etcd` of the run's own (a single member with a data directory of its own), reached
    /// by every candidate through a fault proxy of its own.
    Etcd,
    /// A fake Kubernetes API server of the run's own (`baton-fake-k8s`, keeping its Leases in
    /// a state file), reached by every candidate through a fault proxy of its own; the key is
    /// a Lease in namespace `default`.
    Kubernetes,
    /// A fake Consul agent of the run's own (`baton-fake-consul`, keeping its KV pairs and
    /// sessions in a state file), reached by every candidate through a fault proxy of its own;
    /// the key is the pair `chaos/.lock`.
    Consul,
    /// The machine's MariaDB (or MySQL, `root@127.0.0.1:3306/test`), in a lease table of the
    /// run's own (dropped afterwards, with its presence table), reached by every candidate
    /// through a fault proxy of its own: the pool, the connection the leader's term lock is
    /// held on and the followers' `GET_LOCK` waits all go through the same proxy.
    Mysql,
    /// A Redis Sentinel deployment of the run's own: one master, two replicas and three
    /// Sentinels (quorum 2, `down-after-milliseconds` 500), without persistence; candidates
    /// find the master through the Sentinels (see [`redis_ha`](baton_testkit::redis_ha)).
    RedisSentinel,
    /// A Redis Cluster of the run's own: three masters and three replicas,
    /// `cluster-node-timeout` 1000 ms, without persistence (see [`redis_ha`](baton_testkit::redis_ha)).
    RedisCluster,
    /// An etcd cluster of the run's own: three members, each with a data directory of its own,
    /// whose peer links go through fault proxies (so one member can be cut off from the
    /// others); every candidate's URL lists all three members' client endpoints, each through
    /// a fault proxy of the candidate's own, starting with a member of its own.
    Etcd3,
}

impl Store {
    /// Every store, in table order.
    pub const ALL: [Store; 10] = [
        Store::Sqlite,
        Store::Redis,
        Store::Postgres,
        Store::Etcd,
        Store::Kubernetes,
        Store::Consul,
        Store::Mysql,
        Store::RedisSentinel,
        Store::RedisCluster,
        Store::Etcd3,
    ];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Store::Sqlite => "sqlite",
            Store::Redis => "redis",
            Store::Postgres => "postgres",
            Store::Etcd => "etcd",
            Store::Kubernetes => "kubernetes",
            Store::Consul => "consul",
            Store::Mysql => "mysql",
            Store::RedisSentinel => "redis-sentinel",
            Store::RedisCluster => "redis-cluster",
            Store::Etcd3 => "etcd3",
        }
    }

    /// The one scenario `scripts/chaos --quick` runs on this store, where the quick profile
    /// cannot afford every scenario: a lossy failover on Redis Sentinel and on Redis Cluster
    /// (each run starts a deployment of six servers). `None`: every scenario that applies.
    pub fn quick_scenario(self) -> Option<Scenario> {
        match self {
            Store::RedisSentinel | Store::RedisCluster => Some(Scenario::LossyFailover),
            _ => None,
        }
    }

    /// Parse [`name`](Self::name).
    pub fn parse(text: &str) -> Option<Store> {
        Store::ALL.into_iter().find(|s| s.name() == text)
    }
}

impl fmt::Display for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A fault class. Each run injects faults of one class, a few times, on a seeded schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Scenario {
    /// SIGKILL the leader's `baton`; restart the candidate a little later.
    KillLeader,
    /// Partition the leader from the store: its proxy blackholes every byte, 0.2–3 s.
    PartitionLeader,
    /// Reset the leader's connections (TCP RST), and every new one, for 0.05–0.8 s.
    ResetConnections,
    /// Slow store: every candidate's round trip takes 0.4–1.2 s (longer than the renew
    /// interval) for 1–4 s. On SQLite: another process holds the write lock for 0.3–3 s.
    SlowStore,
    /// Restart the store, 0–2 s down. Redis (without persistence) is SIGKILLed and restarted
    /// empty; half the time, the candidate that took the lease after the restart is then
    /// gracefully restarted. etcd is SIGKILLed and restarted with its data directory: etcd is
    /// durable, and a restart that loses its data is not a fault its revisions (the tokens)
    /// are meant to survive. The fake Kubernetes API server is SIGKILLed and restarted on its
    /// state file, keeping its Leases and its resourceVersion counter but not its watch history
    /// (a watch from an older resourceVersion gets 410 Gone and lists again), as an API server
    /// whose etcd survives does. The fake Consul agent is SIGKILLed and restarted on its state
    /// file, keeping its KV pairs, sessions (their TTL timers started afresh) and index, as a
    /// Consul server restart keeps its raft log. The machine's PostgreSQL and MariaDB are
    /// shared and are never restarted: every candidate's proxy resets its connections and
    /// refuses new ones instead, which is what a restart of a durable server looks like from
    /// the candidates (the data is kept; on MariaDB the named locks held on the reset
    /// connections are dropped, as a restart drops them).
    StoreRestart,
    /// SIGSTOP the leader's `baton` and its worker for longer than the lease, then SIGCONT.
    PauseLeader,
    /// Stop every candidate in turn with SIGTERM and start it again.
    RollingRestart,
    /// `baton handoff` from a process of its own: to a running follower, to anyone, or to a
    /// candidate that is not running; a third of the handoffs to a follower SIGKILL that
    /// follower at a random moment while the handoff is under way. Every store takes handoff
    /// requests; a handoff to a candidate that is not running is refused at once (exit 2)
    /// where the store keeps presence records, and otherwise leaves a mark that runs out.
    Handoff,
    /// A clean failover of the election key's master while a leader holds the lease:
    /// `SENTINEL FAILOVER`, or `CLUSTER FAILOVER` on the master's replica. Redis Sentinel and
    /// Redis Cluster only.
    Failover,
    /// SIGKILL the election key's master while a leader holds the lease; the deployment
    /// promotes a replica by itself, and the killed server comes back 0–2 s later, empty, as a
    /// replica. Redis Sentinel and Redis Cluster only.
    KillMaster,
    /// A promotion that loses the last writes: the replication links of the election key's
    /// master are cut for 0.3–2.5 s while the leader renews (and, half the time, the leader is
    /// SIGKILLed in the meantime, so that another candidate acquires on the master alone);
    /// then a lagging replica becomes master: behind Sentinel the master is SIGKILLed and
    /// Sentinel promotes one, on a cluster the replica takes over with
    /// `CLUSTER FAILOVER TAKEOVER` while the old master runs. Redis Sentinel and Redis Cluster
    /// only.
    LossyFailover,
    /// Every fault in turn at random: each episode draws one of the other classes that apply
    /// to the store (handoff requests among them), so faults of different kinds follow each
    /// other within one run, before the previous one's effects have all settled.
    Mixed,
    /// A 3-member etcd: cut the member the leader's client talks to off from its two peers
    /// (a minority of one; its clients still reach it) for 0.2–5 s. The leader cannot renew
    /// there and must step down on time; a follower on the majority takes over.
    PartitionMember,
    /// A 3-member etcd: SIGKILL the Raft leader member (found from the members' metrics), and
    /// start it again on its data directory 0–2 s later. The other two elect a new Raft
    /// leader meanwhile.
    KillRaftLeader,
    /// A 3-member etcd: SIGKILL every member in turn (in a seeded order), each down 0–1.5 s,
    /// started again on its data directory and healthy before the next: the cluster keeps its
    /// quorum throughout, and every client's member goes away once.
    RestartMembers,
}

impl Scenario {
    /// Every scenario, in table order.
    pub const ALL: [Scenario; 15] = [
        Scenario::KillLeader,
        Scenario::PartitionLeader,
        Scenario::ResetConnections,
        Scenario::SlowStore,
        Scenario::StoreRestart,
        Scenario::PauseLeader,
        Scenario::RollingRestart,
        Scenario::Handoff,
        Scenario::Failover,
        Scenario::KillMaster,
        Scenario::LossyFailover,
        Scenario::Mixed,
        Scenario::PartitionMember,
        Scenario::KillRaftLeader,
        Scenario::RestartMembers,
    ];

    /// The classes a [`Scenario::Mixed`] run draws from on `store`.
    pub fn mixed_on(store: Store) -> Vec<Scenario> {
        Scenario::ALL
            .into_iter()
            .filter(|s| *s != Scenario::Mixed && s.applies_to(store))
            .collect()
    }

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::KillLeader => "kill-leader",
            Scenario::PartitionLeader => "partition-leader",
            Scenario::ResetConnections => "reset-connections",
            Scenario::SlowStore => "slow-store",
            Scenario::StoreRestart => "store-restart",
            Scenario::PauseLeader => "pause-leader",
            Scenario::RollingRestart => "rolling-restart",
            Scenario::Handoff => "handoff",
            Scenario::Failover => "failover",
            Scenario::KillMaster => "kill-master",
            Scenario::LossyFailover => "lossy-failover",
            Scenario::Mixed => "mixed",
            Scenario::PartitionMember => "partition-member",
            Scenario::KillRaftLeader => "kill-raft-leader",
            Scenario::RestartMembers => "restart-members",
        }
    }

    /// Parse [`name`](Self::name).
    pub fn parse(text: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.name() == text)
    }

    /// Whether the fault can be injected into `store`. SQLite is a local file opened by every
    /// candidate itself: there is no connection to partition or reset, and wiping the file is
    /// not a fault its tokens are meant to survive. Every other store is reached over TCP
    /// through a proxy per candidate and takes every fault (a PostgreSQL "restart" is an
    /// outage of every candidate's connections, and so is a MySQL one, see
    /// [`Scenario::StoreRestart`]).
    ///
    /// Redis Sentinel and Redis Cluster candidates reach the servers directly (the deployment
    /// tells them where its masters are), so the faults of one candidate's connections
    /// (partition, resets, slow store) and whole-store restarts do not apply to them; the
    /// failovers do, and apply to nothing else.
    ///
    /// The faults of a cluster's members (partition-member, kill-raft-leader,
    /// restart-members) apply to the 3-member etcd alone; it takes every other class but the
    /// store restart (its members restart one at a time: restart-members).
    pub fn applies_to(self, store: Store) -> bool {
        if self.is_member_fault() {
            return store == Store::Etcd3;
        }
        let failover = matches!(
            self,
            Scenario::Failover | Scenario::KillMaster | Scenario::LossyFailover
        );
        match store {
            Store::RedisSentinel | Store::RedisCluster => {
                failover
                    || matches!(
                        self,
                        Scenario::KillLeader
                            | Scenario::PauseLeader
                            | Scenario::RollingRestart
                            | Scenario::Handoff
                            | Scenario::Mixed
                    )
            }
            _ if failover => false,
            Store::Redis
            | Store::Postgres
            | Store::Etcd
            | Store::Kubernetes
            | Store::Consul
            | Store::Mysql => true,
            Store::Etcd3 => self != Scenario::StoreRestart,
            Store::Sqlite => matches!(
                self,
                Scenario::KillLeader
                    | Scenario::SlowStore
                    | Scenario::PauseLeader
                    | Scenario::RollingRestart
                    | Scenario::Handoff
                    | Scenario::Mixed
            ),
        }
    }
}

impl Scenario {
    /// Whether this is a fault of one member of a cluster (see [`applies_to`](Self::applies_to)).
    pub fn is_member_fault(self) -> bool {
        matches!(
            self,
            Scenario::PartitionMember | Scenario::KillRaftLeader | Scenario::RestartMembers
        )
    }

    /// Whether `scripts/chaos --quick` runs this cell: every cell, except that on the 3-member
    /// etcd it runs only the faults of its members (the other classes run there as they do on
    /// the single etcd, which the quick profile covers), and on Redis Sentinel and Redis Cluster
    /// only [`Store::quick_scenario`], so the profile stays near 4 minutes.
    pub fn in_quick_profile(self, store: Store) -> bool {
        self.applies_to(store)
            && store.quick_scenario().is_none_or(|q| q == self)
            && (store != Store::Etcd3 || self.is_member_fault())
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One run: a store, a fault class and the seed of its schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RunSpec {
    /// The store.
    pub store: Store,
    /// The fault class.
    pub scenario: Scenario,
    /// The seed every random choice of the run is drawn from.
    pub seed: u64,
}

impl RunSpec {
    /// `STORE:SCENARIO:SEED`, as `--reproduce` reads it.
    pub fn id(&self) -> String {
        format!("{}:{}:{}", self.store, self.scenario, self.seed)
    }

    /// Parse [`id`](Self::id).
    pub fn parse(text: &str) -> Result<RunSpec, String> {
        let mut parts = text.split(':');
        let (Some(store), Some(scenario), Some(seed), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(format!(
                "{text:?}: expected STORE:SCENARIO:SEED, e.g. redis:partition-leader:42"
            ));
        };
        let store = Store::parse(store).ok_or_else(|| format!("unknown store {store:?}"))?;
        let scenario =
            Scenario::parse(scenario).ok_or_else(|| format!("unknown scenario {scenario:?}"))?;
        let seed = seed
            .parse()
            .map_err(|_| format!("seed {seed:?} is not a number"))?;
        if !scenario.applies_to(store) {
            return Err(format!("{scenario} does not apply to {store}"));
        }
        Ok(RunSpec {
            store,
            scenario,
            seed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in Scenario::ALL {
            assert_eq!(Scenario::parse(s.name()), Some(s));
            assert_eq!(
                clap::ValueEnum::to_possible_value(&s).unwrap().get_name(),
                s.name()
            );
        }
        for s in Store::ALL {
            assert_eq!(Store::parse(s.name()), Some(s));
        }
        let spec = RunSpec {
            store: Store::Redis,
            scenario: Scenario::PauseLeader,
            seed: 7,
        };
        assert_eq!(RunSpec::parse(&spec.id()), Ok(spec));
        assert!(RunSpec::parse("sqlite:partition-leader:1").is_err());
        for store in ["redis", "postgres", "etcd", "kubernetes", "consul", "mysql"] {
            for s in Scenario::ALL.into_iter().filter(|s| {
                !matches!(
                    s,
                    Scenario::Failover | Scenario::KillMaster | Scenario::LossyFailover
                )
            }) {
                assert_eq!(
                    RunSpec::parse(&format!("{store}:{s}:3")).is_ok(),
                    !s.is_member_fault(),
                    "{store} {s}"
                );
            }
        }
        for s in Scenario::ALL {
            assert_eq!(
                RunSpec::parse(&format!("etcd3:{s}:3")).is_ok(),
                s != Scenario::StoreRestart
                    && !matches!(
                        s,
                        Scenario::Failover | Scenario::KillMaster | Scenario::LossyFailover
                    ),
                "etcd3 {s}"
            );
            assert_eq!(
                s.in_quick_profile(Store::Etcd3),
                s.is_member_fault(),
                "etcd3 {s}"
            );
            assert_eq!(s.in_quick_profile(Store::Redis), s.applies_to(Store::Redis));
            assert_eq!(
                s.in_quick_profile(Store::RedisCluster),
                s == Scenario::LossyFailover
            );
        }
        assert!(RunSpec::parse("sqlite:kill-raft-leader:1").is_err());
        assert!(RunSpec::parse("sqlite:handoff:1").is_ok());
        assert!(RunSpec::parse("redis:handoff:1").is_ok());
        for store in ["redis-sentinel", "redis-cluster"] {
            for s in [
                "failover",
                "kill-master",
                "lossy-failover",
                "kill-leader",
                "mixed",
            ] {
                assert!(
                    RunSpec::parse(&format!("{store}:{s}:3")).is_ok(),
                    "{store} {s}"
                );
            }
            assert!(RunSpec::parse(&format!("{store}:partition-leader:3")).is_err());
        }
        assert!(RunSpec::parse("redis:lossy-failover:1").is_err());
    }
}
