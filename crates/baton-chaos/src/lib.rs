//! Baton's chaos harness: real `baton run` candidates against a real store, seeded faults, and
//! a checker that judges the run from what the leader-only workers recorded.
//!
//! DESIGN.md §6 promises that at no instant are two `run` children alive for one key, under
//! partitions, SIGKILL of the leader, store restarts that lose data and slow stores; that
//! fencing tokens of successive leaders strictly increase, and that a token-checking resource
//! rejects a leader that was paused past its lease; and that a leader appears within
//! `lease + renew + ε` once faults heal. This crate tests exactly that, end to end:
//!
//! * [`harness`] starts N candidates (the real `baton` binary) against one [`Store`]: an
//!   SQLite file; a `redis-server` of its own; the machine's PostgreSQL, in a lease table of
//!   the run's own; an `etcd` of its own, or a 3-member etcd cluster of its own whose members
//!   can be cut off from their peers; a fake Kubernetes API server of its own
//!   (`baton-fake-k8s`); a fake Consul agent of its own (`baton-fake-consul`); the machine's
//!   MariaDB, in a lease table of the run's own; or a Redis Sentinel deployment or a Redis
//!   Cluster with replicas of its own ([`redis_ha`](baton_testkit::redis_ha), reached directly,
//!   failed over by the failover scenarios) (on the single-server stores, each candidate behind a
//!   [`FaultProxy`](baton_testkit::proxy::FaultProxy) of its own), and injects one
//!   [`Scenario`]'s faults on a schedule drawn from a seed.
//! * [`worker`] is the command each candidate runs while it leads (`baton-chaos worker`): it
//!   heartbeats every 10 ms into a log, on the boot-time clock every process shares, and
//!   writes its fencing token to the [`register`], a fenced resource.
//! * [`check`] reads those records and finds every violation of exclusion, fencing, orphans
//!   and liveness; [`report`] prints the table and the command that reproduces each failure.
//!
//! `scripts/chaos --quick` runs every scenario once per store, one fault each (CI);
//! `scripts/chaos --long` runs 100 seeded schedules per store and scenario, two faults each.
//! `scripts/chaos --help` lists the rest.

pub mod check;
pub mod harness;
mod mysql;
pub mod records;
pub mod register;
pub mod report;
pub mod scenario;
pub mod worker;

pub use harness::{Config, Harness, RunOutcome};
pub use scenario::{RunSpec, Scenario, Store};
