//! Graceful handoff on a throwaway etcd, in one process: how long from the leader's `stop()`
//! to the follower's `BecameLeader`, and where that time goes.
//!
//! ```sh
//! cargo run --release -p baton-testkit --example etcd_handoff -- [ROUNDS]
//! RUST_LOG=baton=trace cargo run ... # every step of a handoff, with timestamps
//! ```
//!
//! The method is the handoff benchmark's (`crates/baton-bench/src/handoff.rs`): a new follower
//! starts (its first attempt answered `Held`, so it is subscribed and waiting), the clock is
//! read, the leader's `stop()` is called and, in the same task, the follower's events are
//! awaited until `BecameLeader`. Each candidate has a client of its own, as separate processes
//! would. A third client (a store of its own, through [`LeaseStore::watch`], which reports the
//! deletion of an entry under the election prefix as [`Change::Released`]) splits each handoff
//! in two: from `stop()` to the moment the deletion of the leader's entry reaches a watcher
//! (the leader's side), and from there to `BecameLeader` (the follower's side).
//!
//! Not a test: timings on a shared machine are noisy; compare builds in the same window.

use std::time::{Duration, Instant};

use baton::store::etcd::EtcdStore;
use baton::{Change, Event, LeaderElection, LeaseStore};
use baton_testkit::etcd_server::EtcdServer;
use futures_util::StreamExt;
use tokio::sync::mpsc;

const WARMUP: usize = 5;

fn election(url: &str, key: &str, id: &str) -> LeaderElection {
    LeaderElection::builder(EtcdStore::open(url).unwrap(), key)
        .lease_duration(Duration::from_secs(10))
        .renew_interval(Duration::from_secs(3))
        .grace_period(Duration::from_secs(3))
        .instance_id(id)
        .build()
        .unwrap()
}

async fn became_leader(events: &mut baton::Events) -> Instant {
    loop {
        match events.recv().await.expect("the follower's events") {
            Event::BecameLeader { .. } => return Instant::now(),
            _ => continue,
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn summary(name: &str, mut v: Vec<Duration>) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{name:<24} n={:<4} p50 {:>6.2} ms  p90 {:>6.2} ms  p99 {:>6.2} ms  min {:>6.2} ms  max {:>6.2} ms",
        v.len(),
        ms(percentile(&v, 0.5)),
        ms(percentile(&v, 0.9)),
        ms(percentile(&v, 0.99)),
        ms(v[0]),
        ms(v[v.len() - 1]),
    );
}

#[tokio::main]
async fn main() {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_timer(tracing_subscriber::fmt::time::uptime())
            .init();
    }
    let rounds: usize = std::env::args()
        .nth(1)
        .map_or(100, |s| s.parse().expect("ROUNDS is a number"));
    let server = EtcdServer::start();
    let url = server.url();
    let key = format!("handoff-{:08x}", fastrand::u32(..));

    // The third client: when does a watcher see the leader's entry deleted?
    let watcher = EtcdStore::open(&url).unwrap();
    let mut changes = watcher
        .watch(&key)
        .await
        .unwrap()
        .expect("the etcd store can watch");
    let (deleted_tx, mut deleted) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(change) = changes.next().await {
            if change == Change::Released {
                let _ = deleted_tx.send(Instant::now());
            }
        }
    });

    let mut leader = election(&url, &key, "c0");
    let mut events = leader.subscribe();
    leader.start().await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), became_leader(&mut events))
        .await
        .expect("the first candidate leads");

    let (mut total, mut leader_side, mut follower_side, mut stop_call) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 1..=WARMUP + rounds {
        let follower = election(&url, &key, &format!("c{round}"));
        let mut events = follower.subscribe();
        follower.start().await.unwrap();
        assert!(!follower.is_leader());
        assert_eq!(
            follower.current_leader_id().as_deref(),
            Some(leader.candidate_id())
        );
        while deleted.try_recv().is_ok() {}

        let t0 = Instant::now();
        let (stopped, arrived) = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(
                async {
                    leader.stop().await.unwrap();
                    Instant::now()
                },
                became_leader(&mut events)
            )
        })
        .await
        .expect("a handoff within 10 s");
        let seen = deleted.recv().await.expect("the watcher saw the deletion");
        if round > WARMUP {
            total.push(arrived - t0);
            leader_side.push(seen.saturating_duration_since(t0));
            follower_side.push(arrived.saturating_duration_since(seen));
            stop_call.push(stopped - t0);
        }
        leader = follower;
    }
    leader.stop().await.unwrap();
    summary("stop -> BecameLeader", total);
    summary("stop -> delete seen", leader_side);
    summary("delete seen -> Became", follower_side);
    summary("stop() returned", stop_call);
}
