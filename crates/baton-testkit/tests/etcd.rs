//! The etcd store against real `etcd` processes: the conformance suite, interop with
//! `etcdctl elect` (etcd's own `concurrency.Election`) both ways, an etcd restart that keeps
//! its data (and one during which the leader steps down), a frozen etcd (keepalive loss), push handoff between Baton candidates, and
//! elections over TLS and with etcd's authentication (including a token that expires).
//!
//! Timing bounds are generous on purpose: they check behaviour (push, not polling; stepping
//! down before the store can hand the lease on), not speed.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use baton::store::etcd::EtcdStore;
use baton::{BoxError, Error, Event, LeaderElection, LeaseStore, LossReason, Result};
use baton_testkit::conformance::{Capabilities, ForeignWriter, StoreFactory};
use baton_testkit::etcd_cluster::EtcdCluster;
use baton_testkit::etcd_server::{EtcdServer, shared_etcd};
use baton_testkit::faulty::{FaultControl, FaultyStore, Op};
use baton_testkit::servers::{TlsFiles, scratch_dir};
use baton_testkit::tls::TestCa;
use futures_util::StreamExt;

/// Every `store()` is a new client of the shared server, as another process would have.
struct EtcdFactory;

#[async_trait]
impl StoreFactory for EtcdFactory {
    async fn store(&self) -> Result<Arc<dyn LeaseStore>> {
        Ok(Arc::new(EtcdStore::open(&shared_etcd().url())?))
    }
    fn capabilities(&self) -> Capabilities {
        // Whole-second TTLs; etcd raises a 1 s TTL to its minimum (2 s by default) and sweeps
        // expired leases every 500 ms.
        Capabilities::new()
            .with_min_ttl(Duration::from_secs(1))
            .with_expiry_slack(Duration::from_millis(2500))
            .with_handoff(true)
            .with_presence(true)
            .with_shows_handoff(true)
    }
    fn foreign_writer(&self) -> Option<&dyn ForeignWriter> {
        Some(self)
    }
}

/// A key without a lease under the election's prefix: not an election entry.
fn foreign_key(key: &str) -> String {
    format!("{key}/not-baton")
}

#[async_trait]
impl ForeignWriter for EtcdFactory {
    async fn plant(&self, key: &str) -> std::result::Result<(), BoxError> {
        shared_etcd().ctl(&["put", &foreign_key(key), "not baton's"]);
        Ok(())
    }
    async fn check_untouched(&self, key: &str) -> std::result::Result<(), String> {
        let got = shared_etcd().ctl(&["get", &foreign_key(key), "--print-value-only"]);
        if got == "not baton's" {
            Ok(())
        } else {
            Err(format!("{} now holds {got:?}", foreign_key(key)))
        }
    }
}

mod conformance {
    baton_testkit::conformance_tests!(super::EtcdFactory);
}

/// Every `store()` is built with `EtcdStore::from_channel` on a channel of its own, as an
/// application that already holds a gRPC channel to etcd would.
struct ChannelFactory;

#[async_trait]
impl StoreFactory for ChannelFactory {
    async fn store(&self) -> Result<Arc<dyn LeaseStore>> {
        let endpoint = baton::store::etcd::Endpoint::from_shared(format!(
            "http://{}",
            shared_etcd().endpoint()
        ))
        .expect("an endpoint");
        Ok(Arc::new(EtcdStore::from_channel(endpoint.connect_lazy())))
    }
    fn capabilities(&self) -> Capabilities {
        EtcdFactory.capabilities()
    }
    fn foreign_writer(&self) -> Option<&dyn ForeignWriter> {
        Some(&EtcdFactory)
    }
}

mod from_channel_conformance {
    baton_testkit::conformance_tests!(super::ChannelFactory);
}

fn unique(name: &str) -> String {
    format!("test-{name}-{:08x}", fastrand::u32(..))
}

fn election(url: &str, key: &str, id: &str, lease: Duration) -> LeaderElection {
    let store = EtcdStore::open(url).unwrap();
    LeaderElection::builder(store, key)
        .lease_duration(lease)
        .renew_interval(lease / 4)
        .grace_period(lease / 4)
        .instance_id(id)
        .build()
        .unwrap()
}

/// An election whose store calls are counted: the etcd store in a `FaultyStore` with no faults
/// set (a transparent wrapper).
fn counted_election(
    url: &str,
    key: &str,
    id: &str,
    lease: Duration,
) -> (LeaderElection, FaultControl) {
    let store = FaultyStore::new(Arc::new(EtcdStore::open(url).unwrap()));
    let calls = store.control();
    let election = LeaderElection::builder(store, key)
        .lease_duration(lease)
        .renew_interval(lease / 4)
        .grace_period(lease / 4)
        .instance_id(id)
        .build()
        .unwrap();
    (election, calls)
}

async fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    f()
}

/// A child process whose standard output lines arrive on a channel.
struct Lines {
    child: Child,
    lines: Receiver<String>,
}

impl Lines {
    fn spawn(mut cmd: std::process::Command) -> Lines {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .stdin(Stdio::null())
            .spawn()
            .expect("run etcdctl (apt-get install etcd-client)");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Lines { child, lines }
    }

    /// The next line within `limit`, or `None`.
    fn next(&self, limit: Duration) -> Option<String> {
        self.lines.recv_timeout(limit).ok()
    }

    fn interrupt(&self) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn etcdctl_elect_sees_baton_and_each_excludes_the_other() {
    let server = shared_etcd();
    let name = unique("interop");
    let a = election(&server.url(), &name, "baton-a", Duration::from_secs(2));
    a.start().await.unwrap();
    assert!(wait_until(Duration::from_secs(5), || a.is_leader()).await);

    // `etcdctl elect -l` (Observe) prints the leader's key and value.
    let observer = Lines::spawn({
        let mut cmd = server.etcdctl();
        cmd.args(["elect", "-l", &name]);
        cmd
    });
    let key = observer
        .next(Duration::from_secs(5))
        .expect("etcdctl elect -l prints the leader key");
    assert!(key.starts_with(&format!("{name}/")), "{key}");
    assert_eq!(
        observer.next(Duration::from_secs(1)).as_deref(),
        Some("baton-a")
    );

    // etcdctl campaigns behind Baton and waits.
    let go = Lines::spawn({
        let mut cmd = server.etcdctl();
        cmd.args(["elect", &name, "etcdctl-b"]);
        cmd
    });
    assert_eq!(
        go.next(Duration::from_millis(1500)),
        None,
        "etcdctl elect must not win while Baton leads"
    );
    assert!(a.is_leader(), "Baton keeps leading while etcdctl waits");

    // Baton steps down: etcdctl wins at once (it watches Baton's entry).
    let stopped = Instant::now();
    a.stop().await.unwrap();
    let key = go
        .next(Duration::from_secs(3))
        .expect("etcdctl elect wins after Baton releases");
    let handoff = stopped.elapsed();
    assert!(key.starts_with(&format!("{name}/")), "{key}");
    assert_eq!(
        go.next(Duration::from_secs(1)).as_deref(),
        Some("etcdctl-b")
    );
    assert_eq!(
        observer.next(Duration::from_secs(3)).as_deref(),
        Some(key.as_str())
    );
    assert_eq!(
        observer.next(Duration::from_secs(1)).as_deref(),
        Some("etcdctl-b")
    );
    println!("Baton -> etcdctl elect handoff: {handoff:?}");

    // Baton campaigns behind etcdctl, sees it as the leader, and does not lead.
    let c = election(&server.url(), &name, "baton-c", Duration::from_secs(2));
    c.start().await.unwrap();
    assert!(
        wait_until(Duration::from_secs(3), || c.current_leader_id().as_deref()
            == Some("etcdctl-b"))
        .await,
        "Baton sees etcdctl's leader: {:?}",
        c.current_leader_id()
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !c.is_leader(),
        "Baton must not lead while etcdctl elect leads"
    );
    let record = EtcdStore::open(&server.url())
        .unwrap()
        .read(&name)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.holder, "etcdctl-b");

    // etcdctl resigns on SIGINT: Baton takes over at once.
    let resigned = Instant::now();
    go.interrupt();
    assert!(
        wait_until(Duration::from_secs(3), || c.is_leader()).await,
        "Baton leads after etcdctl elect resigns"
    );
    println!("etcdctl elect -> Baton handoff: {:?}", resigned.elapsed());
    let key = observer
        .next(Duration::from_secs(3))
        .expect("the observer sees Baton again");
    assert!(key.starts_with(&format!("{name}/")), "{key}");
    assert_eq!(
        observer.next(Duration::from_secs(1)).as_deref(),
        Some("baton-c")
    );
    c.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn graceful_handoff_is_pushed_not_polled() {
    let server = shared_etcd();
    let name = unique("handoff");
    // A 10 s lease: a follower that polled would take seconds, not milliseconds.
    let a = election(&server.url(), &name, "a", Duration::from_secs(10));
    let b = election(&server.url(), &name, "b", Duration::from_secs(10));
    let c = election(&server.url(), &name, "c", Duration::from_secs(10));
    a.start().await.unwrap();
    assert!(wait_until(Duration::from_secs(5), || a.is_leader()).await);
    b.start().await.unwrap();
    c.start().await.unwrap();
    assert!(
        wait_until(Duration::from_secs(3), || b.current_leader_id().as_deref()
            == Some("a"))
        .await
    );
    let first = a.fencing_token().unwrap();
    for (from, to, rest) in [(&a, &b, &c), (&b, &c, &a)] {
        let stopped = Instant::now();
        from.stop().await.unwrap();
        assert!(
            wait_until(Duration::from_secs(2), || to.is_leader()).await,
            "the next in the queue leads within 2 s of a release"
        );
        println!(
            "handoff {} -> {}: {:?}",
            from.candidate_id(),
            to.candidate_id(),
            stopped.elapsed()
        );
        assert!(to.fencing_token().unwrap() > first);
        assert!(!rest.is_leader());
    }
    c.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_third_follower_learns_the_new_leader_from_its_watch_without_asking() {
    let server = shared_etcd();
    let name = unique("third");
    // A 10 s lease: a follower that looked at the store only when the lease it read ran out
    // would name the old leader for seconds.
    let lease = Duration::from_secs(10);
    let a = election(&server.url(), &name, "a", lease);
    let (b, b_calls) = counted_election(&server.url(), &name, "b", lease);
    let (c, c_calls) = counted_election(&server.url(), &name, "c", lease);
    a.start().await.unwrap();
    assert!(wait_until(Duration::from_secs(5), || a.is_leader()).await);
    // A follower's start is two attempts: one before subscribing, which leaves the queue
    // again, and one that queues for good (D128). Let b queue before c starts, and c finish
    // both before its requests are counted.
    b.start().await.unwrap();
    assert!(wait_until(Duration::from_secs(5), || b_calls.calls(Op::Acquire) >= 2).await);
    c.start().await.unwrap();
    assert!(wait_until(Duration::from_secs(5), || c_calls.calls(Op::Acquire) >= 2).await);
    assert_eq!(b.current_leader_id().as_deref(), Some("a"));
    assert_eq!(c.current_leader_id().as_deref(), Some("a"));
    let mut events = c.subscribe();
    let (tries, reads) = (c_calls.calls(Op::Acquire), c_calls.calls(Op::Read));

    // a leaves; b, next in the queue, takes over; c, third, only hears of it.
    a.stop().await.unwrap();
    assert!(wait_until(Duration::from_secs(2), || b.is_leader()).await);
    assert!(
        wait_until(Duration::from_secs(2), || c.current_leader_id().as_deref()
            == Some("b"))
        .await,
        "c names b as the leader: {:?}",
        c.current_leader_id()
    );
    let changed = std::iter::from_fn(|| events.try_recv()).collect::<Vec<_>>();
    assert!(
        changed.contains(&Event::LeaderChanged {
            previous: Some("a".into()),
            current: Some("b".into()),
        }),
        "{changed:?}"
    );
    assert!(!c.is_leader());
    assert_eq!(
        (c_calls.calls(Op::Acquire), c_calls.calls(Op::Read)),
        (tries, reads),
        "c learnt the new leader from its watch, without a request of its own"
    );

    // Now c is next: b's release wakes it.
    b.stop().await.unwrap();
    assert!(wait_until(Duration::from_secs(2), || c.is_leader()).await);
    assert_eq!(c_calls.calls(Op::Acquire), tries + 1);
    c.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_follower_sends_nothing_but_its_keepalives() {
    // A server of the test's own: its counters are this test's requests alone.
    let server = EtcdServer::start();
    let name = unique("idle");
    // etcd keeps a 3 s TTL as it is: a follower's session sends a keepalive every second, and
    // the leader renews every 750 ms.
    let lease = Duration::from_secs(3);
    let (a, a_calls) = counted_election(&server.url(), &name, "a", lease);
    let (b, b_calls) = counted_election(&server.url(), &name, "b", lease);
    a.start().await.unwrap();
    assert!(wait_until(Duration::from_secs(5), || a.is_leader()).await);
    b.start().await.unwrap();
    assert_eq!(b.current_leader_id().as_deref(), Some("a"));
    tokio::time::sleep(Duration::from_secs(1)).await;

    let before = server.grpc_messages_received();
    let (renewals, tries) = (a_calls.calls(Op::Renew), b_calls.calls(Op::Acquire));
    // Four leases: before complete watches, the follower looked at its position at the end of
    // each (a keepalive, a `Txn`, a `LeaseTimeToLive` and a new `Watch`).
    tokio::time::sleep(lease * 4).await;
    let after = server.grpc_messages_received();
    let renewals = a_calls.calls(Op::Renew) - renewals;

    let delta: std::collections::BTreeMap<String, u64> = after
        .iter()
        .map(|(method, n)| (method.clone(), n - before.get(method).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect();
    assert!(a.is_leader() && !b.is_leader());
    assert_eq!(b.current_leader_id().as_deref(), Some("a"));
    assert_eq!(
        b_calls.calls(Op::Acquire),
        tries,
        "the follower made no attempt"
    );
    let others: Vec<_> = delta
        .keys()
        .filter(|m| !matches!(m.as_str(), "LeaseKeepAlive" | "Txn"))
        .collect();
    assert!(
        others.is_empty(),
        "only keepalives and the leader's renewal checks reach etcd: {delta:?}"
    );
    // Each renewal of the leader is one keepalive and one `Txn` checking its entry (a batch
    // of one; a renewal in flight at either end of the window may fall on either side).
    let reads = delta.get("Txn").copied().unwrap_or(0);
    assert!(
        reads.abs_diff(renewals) <= 1,
        "{reads} reads for {renewals} renewals: {delta:?}"
    );
    // The rest are the follower's session keepalives: one per second at most.
    let keepalives = delta.get("LeaseKeepAlive").copied().unwrap_or(0);
    let follower = keepalives.saturating_sub(renewals);
    assert!(
        (1..=lease.as_secs() * 4 + 2).contains(&follower),
        "{follower} keepalives of the follower's session in 12 s: {delta:?}"
    );
    b.stop().await.unwrap();
    a.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watch_nobody_reads_any_more_ends_on_the_server() {
    // A server of the test's own: its watchers are this test's alone.
    let server = EtcdServer::start();
    let name = unique("watchers");
    // One client for everything below, kept alive throughout: a watch must end when it is
    // dropped, not when its connection closes.
    let store = EtcdStore::open(&server.url()).unwrap();
    // An observer's watch has a watcher for the prefix, one for the handoff mark and one for
    // the handoff request, on one stream; a follower's, for the prefix and the mark.
    const OBSERVER: u64 = 3;
    const FOLLOWER: u64 = 2;
    for _ in 0..5 {
        let changes = store.watch(&name).await.unwrap().unwrap();
        assert!(wait_until(Duration::from_secs(3), || server.watchers() == OBSERVER).await);
        drop(changes);
    }
    assert!(
        wait_until(Duration::from_secs(3), || server.watchers() == 0).await,
        "{} observer watches still open on etcd",
        server.watchers()
    );

    // A follower watches the queue from its last read until its turn comes; then, leading, it
    // watches nothing.
    let election = |id: &str| {
        LeaderElection::builder(store.clone(), name.as_str())
            .lease_duration(Duration::from_secs(5))
            .renew_interval(Duration::from_millis(1250))
            .grace_period(Duration::from_millis(1250))
            .instance_id(id)
            .build()
            .unwrap()
    };
    let (a, b) = (election("a"), election("b"));
    a.start().await.unwrap();
    assert!(wait_until(Duration::from_secs(5), || a.is_leader()).await);
    b.start().await.unwrap();
    assert!(wait_until(Duration::from_secs(3), || server.watchers() == FOLLOWER).await);
    for _ in 0..3 {
        // Someone deletes b's entry: b queues anew and watches from its new read; the watch
        // from before ends.
        let txns = || server.grpc_messages_received().get("Txn").copied();
        let before = txns();
        let listing = server.ctl(&["get", "--prefix", &format!("{name}/")]);
        let lines: Vec<&str> = listing.lines().collect();
        let entry = lines
            .chunks(2)
            .find(|kv| kv.get(1) == Some(&"b"))
            .map(|kv| kv[0].to_owned())
            .expect("b's queue entry");
        server.ctl(&["del", &entry]);
        // Its attempt: create the entry, then read the queue.
        assert!(wait_until(Duration::from_secs(3), || txns() >= before.map(|n| n + 2)).await);
        assert!(
            wait_until(Duration::from_secs(3), || server.watchers() == FOLLOWER).await,
            "{} watchers open for one follower",
            server.watchers()
        );
        assert!(!b.is_leader());
    }
    a.stop().await.unwrap();
    assert!(wait_until(Duration::from_secs(3), || b.is_leader()).await);
    assert!(
        wait_until(Duration::from_secs(3), || server.watchers() == 0).await,
        "{} watches open with nobody following",
        server.watchers()
    );
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crashed_leaders_expiry_wakes_the_follower_through_its_watch() {
    let server = shared_etcd();
    let name = unique("expiry");
    let lease = Duration::from_secs(2);
    let store = EtcdStore::open(&server.url()).unwrap();
    let mut crashed = store.join(&name, "crashed").await.unwrap();
    assert!(matches!(
        crashed.try_acquire(lease).await.unwrap(),
        baton::Acquire::Acquired(_)
    ));
    let (b, b_calls) = counted_election(&server.url(), &name, "b", lease);
    b.start().await.unwrap();
    assert_eq!(b.current_leader_id().as_deref(), Some("crashed"));
    // A leader that neither renews nor releases: forget the candidacy (dropping it would take
    // its entry out). Its session's only member leads, so nothing but renewals keeps the lease
    // alive; a killed process is the test with a child process below.
    std::mem::forget(crashed);
    // etcd revokes the lease within its TTL plus its 500 ms expiry sweep, deleting the entry.
    assert!(wait_until(Duration::from_secs(6), || b.is_leader()).await);
    assert_eq!(
        b_calls.calls(Op::Acquire),
        3,
        "two attempts at start (before subscribing and once subscribed, D128), one when the \
         watch saw the crashed leader's entry go"
    );
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_keeps_tokens_monotonic_and_leadership_is_regained() {
    let mut server = EtcdServer::start();
    let name = unique("restart");
    let a = election(&server.url(), &name, "a", Duration::from_secs(2));
    let b = election(&server.url(), &name, "b", Duration::from_secs(2));
    a.start().await.unwrap();
    assert!(wait_until(Duration::from_secs(5), || a.is_leader()).await);
    b.start().await.unwrap();
    let before = a.fencing_token().unwrap();

    server.restart();
    assert!(
        wait_until(Duration::from_secs(15), || a.is_leader() || b.is_leader()).await,
        "someone leads again after etcd restarts"
    );
    let leader = if a.is_leader() { &a } else { &b };
    let other = if a.is_leader() { &b } else { &a };
    let after = leader.fencing_token().unwrap();
    assert!(
        after >= before,
        "tokens never go back: {after} after {before}"
    );
    assert!(!other.is_leader());

    // The revision counter survived the restart: the next term's token is greater still.
    leader.stop().await.unwrap();
    assert!(wait_until(Duration::from_secs(5), || other.is_leader()).await);
    let next = other.fencing_token().unwrap();
    assert!(
        next > after,
        "a term after the restart gets a greater token: {next} after {after}"
    );
    other.stop().await.unwrap();
}

/// D127: the leader steps down while etcd is down, so its release (the revoke of its session)
/// fails. When etcd restarts it gives every lease a whole TTL and an election timeout again,
/// so an entry left to its lease would hold the follower up that long after etcd is back
/// (3.1-3.4 s here with a 2 s lease); the candidacy deletes it at its next attempt instead.
#[tokio::test(flavor = "multi_thread")]
async fn a_leader_whose_release_failed_while_etcd_was_down_is_replaced_once_etcd_is_back() {
    let mut server = EtcdServer::start();
    let name = unique("down");
    let lease = Duration::from_secs(2);
    let a = election(&server.url(), &name, "a", lease);
    let mut events = a.subscribe();
    a.start().await.unwrap();
    assert!(wait_until(Duration::from_secs(5), || a.is_leader()).await);
    let token = a.fencing_token().unwrap();
    let b = election(&server.url(), &name, "b", lease);
    b.start().await.unwrap();
    assert_eq!(b.current_leader_id().as_deref(), Some("a"));
    // `start` returns after b's first attempt, which only found a leading; b queues its entry
    // in the attempt after it (D128). Killed before that entry is in, etcd comes back with a's
    // spent entry alone, and a, which campaigns on, may queue again before b and win: a fair
    // race, not the case this test is about (it failed so in CI, 1 run in 10 here).
    assert!(
        wait_until(Duration::from_secs(5), || entries(&server, &name).len()
            == 2)
        .await,
        "b queues its entry behind a's"
    );

    server.kill();
    assert!(
        wait_until(lease, || !a.is_leader()).await,
        "a steps down within its lease"
    );
    // The release that follows the step-down finds etcd down (connection refused at once).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut lost = false;
    while let Some(event) = events.try_recv() {
        lost |= matches!(event, Event::LostLeadership { .. });
    }
    assert!(lost, "a reported the end of its term");

    server.restart();
    let back = Instant::now();
    assert!(
        wait_until(Duration::from_secs(6), || b.is_leader()).await,
        "b takes over"
    );
    let took = back.elapsed();
    println!("b leads {took:?} after etcd is back");
    assert!(
        took <= Duration::from_secs(1),
        "b took over {took:?} after etcd was back: a's spent entry waited for its lease"
    );
    assert!(b.fencing_token().unwrap() > token);
    assert!(!a.is_leader());
    b.stop().await.unwrap();
    assert!(wait_until(Duration::from_secs(5), || a.is_leader()).await);
    a.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn frozen_etcd_makes_the_leader_step_down_on_time() {
    let server = EtcdServer::start();
    let name = unique("frozen");
    let lease = Duration::from_secs(2);
    let a = election(&server.url(), &name, "a", lease);
    let mut events = a.subscribe();
    a.start().await.unwrap();
    assert!(wait_until(Duration::from_secs(5), || a.is_leader()).await);
    let token = a.fencing_token().unwrap();

    // Keepalives go unanswered for longer than the TTL.
    let frozen = Instant::now();
    server.pause();
    let stepped_down = wait_until(lease + Duration::from_millis(200), || !a.is_leader()).await;
    let took = frozen.elapsed();
    assert!(
        stepped_down,
        "the leader must step down within the lease of the last renewal"
    );
    println!("stepped down {took:?} after etcd froze");
    let mut reason = None;
    while let Some(event) = events.try_recv() {
        if let Event::LostLeadership { reason: r, .. } = event {
            reason = Some(r);
        }
    }
    assert!(
        matches!(
            reason,
            Some(LossReason::RenewalsFailed | LossReason::DeadlineReached)
        ),
        "{reason:?}"
    );
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(frozen.elapsed())).await;

    // Once etcd runs again, the expired lease is swept and the candidate leads again, with a
    // greater token.
    server.resume();
    assert!(
        wait_until(Duration::from_secs(15), || a.is_leader()).await,
        "the candidate campaigns on and leads again once etcd answers"
    );
    assert!(a.fencing_token().unwrap() > token);
    a.stop().await.unwrap();
}

/// Two candidates on `url`: the first leads, the second follows and takes over when the first
/// stops. Returns the second, leading.
async fn two_candidates_hand_over(url: &str, name: &str) -> LeaderElection {
    let a = election(url, name, "a", Duration::from_secs(5));
    let b = election(url, name, "b", Duration::from_secs(5));
    a.start().await.unwrap();
    assert!(wait_until(Duration::from_secs(5), || a.is_leader()).await);
    b.start().await.unwrap();
    assert!(
        wait_until(Duration::from_secs(3), || b.current_leader_id().as_deref()
            == Some("a"))
        .await
    );
    assert!(!b.is_leader());
    let token = a.fencing_token().unwrap();
    a.stop().await.unwrap();
    assert!(
        wait_until(Duration::from_secs(3), || b.is_leader()).await,
        "the follower leads after the leader stops"
    );
    assert!(b.fencing_token().unwrap() > token);
    b
}

// TLS

/// A throwaway CA and a server certificate it signed for 127.0.0.1 (and localhost), as PEM
/// files in a scratch directory.
struct Pki {
    dir: PathBuf,
    files: TlsFiles,
}

impl Pki {
    fn new() -> Pki {
        let dir = scratch_dir("baton-etcd-pki");
        let files =
            TestCa::new("Baton etcd test CA").server_files(&dir, &["127.0.0.1", "localhost"]);
        Pki { dir, files }
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_election_runs_over_tls_and_a_wrong_ca_is_a_clear_error() {
    let pki = Pki::new();
    let server = EtcdServer::start_tls(&pki.files);
    let url = format!("{}?ca={}", server.url(), pki.files.ca.display());
    assert!(url.starts_with("etcds://127.0.0.1:"), "{url}");
    let name = unique("tls");

    let store = EtcdStore::open(&url).unwrap();
    store.ping().await.unwrap();
    let b = two_candidates_hand_over(&url, &name).await;
    // etcdctl, over TLS too, sees Baton's leader.
    let observed = Lines::spawn({
        let mut cmd = server.etcdctl();
        cmd.args(["elect", "-l", &name]);
        cmd
    });
    assert!(observed.next(Duration::from_secs(5)).is_some());
    assert_eq!(observed.next(Duration::from_secs(1)).as_deref(), Some("b"));
    assert_eq!(store.read(&name).await.unwrap().unwrap().holder, "b");
    b.stop().await.unwrap();

    // A CA that did not sign the server's certificate: the handshake fails, and the error says
    // it is about the certificate, not that etcd is down.
    let other = Pki::new();
    let wrong = format!("{}?ca={}", server.url(), other.files.ca.display());
    let err = EtcdStore::open(&wrong)
        .unwrap()
        .read(&name)
        .await
        .unwrap_err();
    let msg = format!("{err:#}");
    println!("wrong CA: {msg}");
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    assert!(msg.contains("certificate"), "{msg}");
    assert!(msg.contains(&server.url()), "{msg}");

    // Plain HTTP/2 to a TLS port fails too (it must not hang or look like success).
    let plain = format!("etcd://127.0.0.1:{}", server.port());
    let store = EtcdStore::open(&plain).unwrap();
    let res = tokio::time::timeout(Duration::from_secs(10), store.read(&name)).await;
    assert!(matches!(res, Ok(Err(_))), "{res:?}");
}

// Authentication

/// Let `user` (made by `add_user_for_prefix`) read and write election `name`'s handoff keys.
fn grant_handoff_keys(server: &EtcdServer, user: &str, name: &str) {
    server.ctl(&[
        "role",
        "grant-permission",
        &format!("{user}-role"),
        "--prefix=true",
        "readwrite",
        &baton::store::etcd::handoff_prefix(name),
    ]);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_election_runs_with_auth_and_a_wrong_password_is_a_clear_error() {
    let mut server = EtcdServer::start();
    let name = unique("auth");
    server.enable_auth("root-secret-1");
    server.add_user_for_prefix("app", "app-secret-2", &format!("{name}/"));
    let url = format!("etcd://app:app-secret-2@127.0.0.1:{}", server.port());

    // A user whose role covers only the election's prefix can check the connection.
    EtcdStore::open(&url).unwrap().ping().await.unwrap();
    // But an election also reads its handoff keys: without them, a clear error naming them.
    let err = EtcdStore::open(&url)
        .unwrap()
        .read(&name)
        .await
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    assert!(
        msg.contains("permission denied") && msg.contains("baton-handoff:"),
        "{msg}"
    );
    grant_handoff_keys(&server, "app", &name);
    let b = two_candidates_hand_over(&url, &name).await;
    let record = EtcdStore::open(&url)
        .unwrap()
        .read(&name)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.holder, "b");
    // etcdctl as root sees the same leader.
    let leader = server.ctl(&["get", "--prefix", &format!("{name}/"), "--print-value-only"]);
    assert_eq!(leader, "b");
    // The user may leave a handoff request, beside the prefix.
    let asked = EtcdStore::open(&url)
        .unwrap()
        .request_handoff(&name, Some("c"))
        .await
        .unwrap()
        .expect("b holds the key");
    assert_eq!(asked.holder, "b");
    // It may show the handoff under way (a request, or b's mark once b answered it), and keep
    // presence records, under the same prefix: announce, read them with their leases' time
    // left, and withdraw (which revokes the record's lease).
    let presence = EtcdStore::open(&url).unwrap();
    let shown = presence.pending_handoff(&name).await.unwrap();
    assert!(shown.is_some(), "{shown:?}");
    let live = presence
        .announce(&name, "c", 7, Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(live.len(), 1);
    assert_eq!(names(&presence, &name).await, [("c".to_owned(), 7)]);
    presence.withdraw(&name, "c").await.unwrap();
    assert_eq!(names(&presence, &name).await, []);
    b.stop().await.unwrap();

    // A wrong password: a configuration error naming the store, without the password.
    let wrong = format!("etcd://app:wrong-pass-3@127.0.0.1:{}", server.port());
    let err = EtcdStore::open(&wrong)
        .unwrap()
        .read(&name)
        .await
        .unwrap_err();
    let msg = format!("{err:#} {err:?}");
    println!("wrong password: {err:#}");
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    assert!(msg.contains("authentication failed"), "{msg}");
    assert!(msg.contains("app:****@"), "{msg}");
    assert!(!msg.contains("wrong-pass-3"), "the password leaked: {msg}");
    // The election's start fails the same way: retrying cannot fix a password.
    let e = election(&wrong, &name, "c", Duration::from_secs(5));
    let err = e.start().await.unwrap_err();
    let msg = format!("{err:#} {err:?}");
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    assert!(!msg.contains("wrong-pass-3"), "the password leaked: {msg}");

    // The right password, but an election outside the user's prefix: refused, and said so.
    let err = EtcdStore::open(&url)
        .unwrap()
        .read(&unique("elsewhere"))
        .await
        .unwrap_err();
    let msg = format!("{err:#}");
    println!("no permission: {msg}");
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    assert!(msg.contains("permission denied"), "{msg}");
    assert!(!msg.contains("app-secret-2"), "the password leaked: {msg}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_token_is_renewed_and_the_call_retried() {
    let mut server = EtcdServer::start();
    let name = unique("token");
    server.enable_auth("root-secret-1");
    server.add_user_for_prefix("app", "app-secret-2", &format!("{name}/"));
    grant_handoff_keys(&server, "app", &name);
    // etcd forgets a token that goes unused for a second.
    server.restart_with_auth_token_ttl(1);
    let url = format!("etcd://app:app-secret-2@127.0.0.1:{}", server.port());
    let store = EtcdStore::open(&url).unwrap();
    let mut candidacy = store.join(&name, "a").await.unwrap();
    let lease = match candidacy
        .try_acquire(Duration::from_secs(10))
        .await
        .unwrap()
    {
        baton::Acquire::Acquired(lease) => lease,
        other => panic!("{other:?}"),
    };

    // The store's token expires; etcd refuses it as invalid. The client authenticates again
    // and retries, so callers see the answers, not a configuration error.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let record = store.read(&name).await.unwrap().unwrap();
    assert_eq!(record.holder, "a");
    assert_eq!(record.token, lease.token);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        candidacy
            .renew(&lease, Duration::from_secs(10))
            .await
            .unwrap(),
        baton::Renew::Renewed
    );
    // A watch with an expired token: etcd cancels it with "invalid auth token" rather than
    // failing the call; the client authenticates again and watches, so the observer hears of
    // the release below.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut changes = store
        .watch(&name)
        .await
        .unwrap()
        .expect("etcd pushes changes");
    let observer = EtcdStore::open(&url).unwrap();
    candidacy.leave().await.unwrap();
    let change = tokio::time::timeout(Duration::from_secs(5), changes.next())
        .await
        .expect("the watch reports the release");
    assert_eq!(change, Some(baton::Change::Released));
    assert_eq!(observer.read(&name).await.unwrap(), None);
}

// Shared sessions: the elections of one store share one session lease (per TTL), as Go's
// `concurrency.Session` is shared by its `Election`s, and renew in batches.

/// The ids of the leases on `server`, in hex as entry names spell them (`etcdctl lease list`
/// pads them to 16 digits).
fn leases(server: &EtcdServer) -> Vec<String> {
    server
        .ctl(&["lease", "list"])
        .lines()
        .skip(1)
        .map(|id| format!("{:x}", u64::from_str_radix(id.trim(), 16).unwrap()))
        .collect()
}

/// The queue entries of election `name`, oldest first.
fn entries(server: &EtcdServer, name: &str) -> Vec<String> {
    server
        .ctl(&[
            "get",
            "--prefix",
            &format!("{name}/"),
            "--keys-only",
            "--sort-by=CREATE",
        ])
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

fn election_on(store: impl LeaseStore, key: &str, id: &str, lease: Duration) -> LeaderElection {
    LeaderElection::builder(store, key)
        .lease_duration(lease)
        .renew_interval(lease / 4)
        .grace_period(lease / 4)
        .instance_id(id)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn elections_of_one_store_share_one_lease_and_renew_in_batches() {
    // A server of the test's own: its leases and counters are this test's alone.
    let server = EtcdServer::start();
    let lease = Duration::from_secs(3);
    let store = FaultyStore::new(Arc::new(EtcdStore::open(&server.url()).unwrap()));
    let calls = store.control();
    let names: Vec<String> = (0..100).map(|i| unique(&format!("shared-{i}"))).collect();
    let elections: Vec<LeaderElection> = names
        .iter()
        .map(|name| election_on(store.clone(), name, "a", lease))
        .collect();
    for election in &elections {
        election.start().await.unwrap();
    }
    assert!(
        wait_until(Duration::from_secs(20), || elections
            .iter()
            .all(LeaderElection::is_leader))
        .await,
        "every election leads"
    );
    let ids = leases(&server);
    assert_eq!(ids.len(), 1, "one session lease for 100 elections: {ids:?}");
    for name in &names {
        assert_eq!(entries(&server, name), [format!("{name}/{}", ids[0])]);
    }

    // Every renewal checks its own entry, but the renewals that fall due together share one
    // keepalive and one `Txn`: at most one batch per batching window.
    let before = server.grpc_messages_received();
    let renewals_before = calls.calls(Op::Renew);
    let started = Instant::now();
    tokio::time::sleep(lease * 2).await;
    let after = server.grpc_messages_received();
    let took = started.elapsed();
    let renewals = calls.calls(Op::Renew) - renewals_before;
    let delta = |method: &str| {
        after.get(method).copied().unwrap_or(0) - before.get(method).copied().unwrap_or(0)
    };
    let (keepalives, txns) = (delta("LeaseKeepAlive"), delta("Txn"));
    println!("{renewals} renewals: {keepalives} keepalives, {txns} Txns in {took:?}");
    assert!(
        renewals >= 100 * 4,
        "{renewals} renewals of 100 elections in {took:?}"
    );
    let windows = (took.as_millis() / baton::store::etcd::RENEW_BATCH_WINDOW.as_millis()) as u64;
    assert!(
        keepalives <= windows + 2 && txns <= windows + 2,
        "{renewals} renewals took {keepalives} keepalives and {txns} Txns in {took:?}"
    );
    assert!(
        keepalives + txns < renewals / 2,
        "{renewals} renewals took {keepalives} keepalives and {txns} Txns"
    );
    for election in &elections {
        assert!(election.is_leader());
        election.stop().await.unwrap();
    }
    assert!(
        wait_until(Duration::from_secs(3), || leases(&server).is_empty()).await,
        "the last election to stop revokes the session: {:?}",
        leases(&server)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_release_deletes_only_its_own_entry_and_the_last_one_revokes_the_session() {
    let server = EtcdServer::start();
    let lease = Duration::from_secs(5);
    let store = EtcdStore::open(&server.url()).unwrap();
    let (first, second) = (unique("first"), unique("second"));
    let a = election_on(store.clone(), &first, "a", lease);
    let b = election_on(store.clone(), &second, "b", lease);
    a.start().await.unwrap();
    b.start().await.unwrap();
    assert!(wait_until(Duration::from_secs(5), || a.is_leader() && b.is_leader()).await);
    let ids = leases(&server);
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(entries(&server, &first), [format!("{first}/{}", ids[0])]);

    a.stop().await.unwrap();
    assert!(entries(&server, &first).is_empty(), "a's entry is gone");
    assert_eq!(
        entries(&server, &second),
        [format!("{second}/{}", ids[0])],
        "b's entry stays"
    );
    assert_eq!(leases(&server), ids, "the session lives on for b");
    tokio::time::sleep(lease / 2).await;
    assert!(b.is_leader(), "b keeps leading on the shared session");

    b.stop().await.unwrap();
    assert!(entries(&server, &second).is_empty());
    assert!(
        leases(&server).is_empty(),
        "the last member revokes the session"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn candidacies_of_one_election_in_one_store_get_distinct_sessions_and_exclude_each_other() {
    let server = EtcdServer::start();
    let lease = Duration::from_secs(3);
    let store = EtcdStore::open(&server.url()).unwrap();
    let (name, other) = (unique("same"), unique("other"));
    let a = election_on(store.clone(), &name, "a", lease);
    a.start().await.unwrap();
    assert!(wait_until(Duration::from_secs(5), || a.is_leader()).await);
    let b = election_on(store.clone(), &name, "b", lease);
    let c = election_on(store.clone(), &other, "c", lease);
    b.start().await.unwrap();
    c.start().await.unwrap();
    assert!(wait_until(Duration::from_secs(5), || c.is_leader()).await);
    assert_eq!(b.current_leader_id().as_deref(), Some("a"));
    let queue = entries(&server, &name);
    assert_eq!(queue.len(), 2, "a and b queue apart: {queue:?}");
    assert_ne!(queue[0], queue[1]);
    let ids = leases(&server);
    assert_eq!(
        ids.len(),
        2,
        "b needs a session of its own; c shares one: {ids:?}"
    );
    // `etcdctl elect -l` sees a.
    assert_eq!(
        server.ctl(&["get", &queue[0], "--print-value-only"]),
        "a",
        "the head of the queue is a's"
    );
    let until = Instant::now() + lease;
    while Instant::now() < until {
        assert!(!(a.is_leader() && b.is_leader()), "a and b both lead");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.stop().await.unwrap();
    assert!(wait_until(Duration::from_secs(3), || b.is_leader()).await);
    assert!(c.is_leader());
    b.stop().await.unwrap();
    c.stop().await.unwrap();
    assert!(leases(&server).is_empty(), "{:?}", leases(&server));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_that_stops_renewing_loses_its_entry_on_time_though_its_session_lives() {
    let server = EtcdServer::start();
    // 3 s, not 2: the follower's session must outlive a stall of the machine.
    let lease = Duration::from_secs(3);
    let (x, y) = (unique("x"), unique("y"));
    // Store S: a follower of x keeps S's session alive in the background, and a candidacy
    // of y leads and then never renews (its engine hangs, say).
    let s = EtcdStore::open(&server.url()).unwrap();
    let t = EtcdStore::open(&server.url()).unwrap();
    let x_leader = election_on(t.clone(), &x, "x-leader", lease);
    x_leader.start().await.unwrap();
    assert!(wait_until(Duration::from_secs(5), || x_leader.is_leader()).await);
    let x_follower = election_on(s.clone(), &x, "x-follower", lease);
    x_follower.start().await.unwrap();
    assert_eq!(x_follower.current_leader_id().as_deref(), Some("x-leader"));
    let mut stuck = s.join(&y, "stuck").await.unwrap();
    let acquired = Instant::now();
    let held = match stuck.try_acquire(lease).await.unwrap() {
        baton::Acquire::Acquired(lease) => lease,
        other => panic!("{other:?}"),
    };
    let s_lease = entries(&server, &y)[0]
        .strip_prefix(&format!("{y}/"))
        .unwrap()
        .to_owned();
    assert_eq!(
        entries(&server, &x)[1],
        format!("{x}/{s_lease}"),
        "the follower and the stuck leader share S's session"
    );
    let b = election_on(t.clone(), &y, "b", lease);
    b.start().await.unwrap();
    assert_eq!(b.current_leader_id().as_deref(), Some("stuck"));

    // S's session is kept alive for its follower, but the stuck leader's entry goes when its
    // own renewals would have let its lease expire: a TTL after the keepalive of its attempt.
    assert!(
        wait_until(Duration::from_secs(6), || b.is_leader()).await,
        "b takes over from the stuck leader"
    );
    let took = acquired.elapsed();
    println!("b leads {took:?} after the stuck leader's last renewal");
    assert!(
        took <= lease + Duration::from_secs(1),
        "b took over {took:?} after the stuck leader's last keepalive"
    );
    assert!(
        leases(&server).contains(&s_lease),
        "S's session lives on for its follower"
    );
    assert_eq!(
        entries(&server, &x).len(),
        2,
        "the follower is still queued"
    );
    assert!(
        matches!(
            stuck.renew(&held, lease).await.unwrap(),
            baton::Renew::Lost(_)
        ),
        "the stuck leader's next renewal is lost"
    );
    stuck.leave().await.unwrap();
    b.stop().await.unwrap();
    x_leader.stop().await.unwrap();
    assert!(wait_until(Duration::from_secs(3), || x_follower.is_leader()).await);
    x_follower.stop().await.unwrap();
}

/// Set in the child process of the crash test: the server's URL, a tab, and the election names
/// separated by commas.
const CRASH_CHILD: &str = "BATON_ETCD_CRASH_CHILD";

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_process_frees_every_election_of_its_session_within_the_ttl() {
    let lease = Duration::from_secs(2);
    if let Ok(spec) = std::env::var(CRASH_CHILD) {
        // The child: lead every election on one store (one session), say so, and wait to be
        // killed.
        let (url, names) = spec.split_once('\t').unwrap();
        let store = EtcdStore::open(url).unwrap();
        let elections: Vec<LeaderElection> = names
            .split(',')
            .map(|name| election_on(store.clone(), name, "child", lease))
            .collect();
        for election in &elections {
            election.start().await.unwrap();
        }
        assert!(
            wait_until(Duration::from_secs(20), || elections
                .iter()
                .all(LeaderElection::is_leader))
            .await
        );
        println!("\nchild-ready");
        tokio::time::sleep(Duration::from_secs(600)).await;
        return;
    }
    let server = EtcdServer::start();
    let names: Vec<String> = (0..10).map(|i| unique(&format!("crash-{i}"))).collect();
    let child = Lines::spawn({
        let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
        cmd.args([
            "a_killed_process_frees_every_election_of_its_session_within_the_ttl",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(
            CRASH_CHILD,
            format!("{}\t{}", server.url(), names.join(",")),
        );
        cmd
    });
    let mut ready = false;
    while let Some(line) = child.next(Duration::from_secs(60)) {
        // libtest's "test NAME ... " has no line end of its own.
        if line.ends_with("child-ready") {
            ready = true;
            break;
        }
    }
    assert!(ready, "the child leads its elections");
    assert_eq!(
        leases(&server).len(),
        1,
        "one session for the child's 10 elections"
    );
    let store = EtcdStore::open(&server.url()).unwrap();
    let followers: Vec<LeaderElection> = names
        .iter()
        .map(|name| election_on(store.clone(), name, "follower", lease))
        .collect();
    for follower in &followers {
        follower.start().await.unwrap();
        assert_eq!(follower.current_leader_id().as_deref(), Some("child"));
    }
    drop(child); // SIGKILL
    let killed = Instant::now();
    assert!(
        wait_until(Duration::from_secs(10), || followers
            .iter()
            .all(LeaderElection::is_leader))
        .await,
        "every follower takes over"
    );
    let took = killed.elapsed();
    println!("every election taken over {took:?} after the kill");
    let bound = store.granted_ttl(lease) + Duration::from_secs(1);
    assert!(took <= bound, "{took:?} after the kill, over {bound:?}");
    for follower in &followers {
        follower.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_member_of_a_lost_session_learns_it_and_they_rejoin_one_new_session() {
    let server = EtcdServer::start();
    let lease = Duration::from_secs(3);
    let (s, t) = (
        EtcdStore::open(&server.url()).unwrap(),
        EtcdStore::open(&server.url()).unwrap(),
    );
    let (x, y, z) = (unique("x"), unique("y"), unique("z"));
    // Store T leads x and y; store S follows both and leads z: S's three candidacies share
    // one session.
    let t_elections = [
        election_on(t.clone(), &x, "t", lease),
        election_on(t.clone(), &y, "t", lease),
    ];
    for e in &t_elections {
        e.start().await.unwrap();
    }
    assert!(
        wait_until(Duration::from_secs(5), || t_elections
            .iter()
            .all(LeaderElection::is_leader))
        .await
    );
    let followers = [
        election_on(s.clone(), &x, "s", lease),
        election_on(s.clone(), &y, "s", lease),
    ];
    let leader = election_on(s.clone(), &z, "s", lease);
    let mut events = leader.subscribe();
    for e in followers.iter().chain([&leader]) {
        e.start().await.unwrap();
    }
    assert!(wait_until(Duration::from_secs(5), || leader.is_leader()).await);
    let token = leader.fencing_token().unwrap();
    let on_lease = |name: &str, index: usize| {
        entries(&server, name)
            .get(index)
            .and_then(|e| e.strip_prefix(&format!("{name}/")).map(str::to_owned))
    };
    let old = on_lease(&z, 0).unwrap();
    assert_eq!(on_lease(&x, 1).as_deref(), Some(old.as_str()));
    assert_eq!(on_lease(&y, 1).as_deref(), Some(old.as_str()));
    assert_eq!(leases(&server).len(), 2);

    // Someone revokes S's session: every entry on it goes at once.
    server.ctl(&["lease", "revoke", &old]);
    assert!(
        wait_until(Duration::from_secs(10), || {
            let (a, b, c) = (on_lease(&x, 1), on_lease(&y, 1), on_lease(&z, 0));
            a.is_some() && a != Some(old.clone()) && a == b && b == c && leader.is_leader()
        })
        .await,
        "S's three candidacies queue again on one new session: {:?} {:?} {:?}",
        entries(&server, &x),
        entries(&server, &y),
        entries(&server, &z)
    );
    let ids = leases(&server);
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(!ids.contains(&old));
    assert!(leader.fencing_token().unwrap() > token);
    let mut lost = false;
    while let Some(event) = events.try_recv() {
        lost |= matches!(event, Event::LostLeadership { .. });
    }
    assert!(lost, "the leader on the lost session stepped down");
    for f in &followers {
        assert!(!f.is_leader());
        assert_eq!(f.current_leader_id().as_deref(), Some("t"));
    }
    for e in followers.iter().chain([&leader]).chain(&t_elections) {
        e.stop().await.unwrap();
    }
}

// Planned handoff (issue #18): the mark and the request live beside the election's prefix.

/// The revision etcd is at.
fn revision(server: &EtcdServer) -> i64 {
    field_values(
        &server.ctl(&["get", "baton-test-no-such-key", "-w", "fields"]),
        "Revision",
    )[0]
    .parse()
    .unwrap()
}

/// The values of `"NAME" : VALUE` lines in `etcdctl -w fields` output, quotes removed.
fn field_values(fields: &str, name: &str) -> Vec<String> {
    let prefix = format!("\"{name}\" : ");
    fields
        .lines()
        .filter_map(|line| line.strip_prefix(&prefix))
        .map(|v| v.trim_matches('"').to_owned())
        .collect()
}

/// Election `name`'s queue at revision `rev`, as a raw reader listing the prefix sees it:
/// (key, lease, value) of each entry, oldest first.
fn queue_at(server: &EtcdServer, name: &str, rev: i64) -> Vec<(String, i64, String)> {
    let out = server.ctl(&[
        "get",
        "--prefix",
        &format!("{name}/"),
        "--rev",
        &rev.to_string(),
        "--sort-by=CREATE",
        "--order=ASCEND",
        "-w",
        "fields",
    ]);
    let keys = field_values(&out, "Key");
    let leases = field_values(&out, "Lease");
    let values = field_values(&out, "Value");
    assert_eq!(keys.len(), leases.len());
    keys.into_iter()
        .zip(leases)
        .zip(values)
        .map(|((k, l), v)| (k, l.parse().unwrap(), v))
        .collect()
}

/// Three candidates queued in the order alice, bob, carol; alice hands over to carol, who is
/// behind bob. carol leads next with a greater token, bob never leads in between (he steps
/// out of the queue while the mark lives, and queues again behind carol), and a raw reader
/// replaying the election prefix revision by revision sees a valid `concurrency.Election`
/// queue at every one: only entries named after their own lease, and one head throughout.
/// etcd's own observer (`etcdctl elect -l`) ends on carol.
#[tokio::test(flavor = "multi_thread")]
async fn a_handoff_to_a_candidate_queued_behind_another_passes_it_over() {
    let server = shared_etcd();
    let name = unique("handoff-behind");
    let lease = Duration::from_secs(10);
    let url = server.url();
    let alice = election(&url, &name, "alice", lease);
    let bob = election(&url, &name, "bob", lease);
    let carol = election(&url, &name, "carol", lease);
    alice.start().await.unwrap();
    assert!(wait_until(Duration::from_secs(5), || alice.is_leader()).await);
    let start = revision(server);
    for (n, follower) in [(2, &bob), (3, &carol)] {
        follower.start().await.unwrap();
        assert!(
            wait_until(Duration::from_secs(5), || entries(server, &name).len() == n).await,
            "{} queues",
            follower.candidate_id()
        );
    }
    let observer = Lines::spawn({
        let mut cmd = server.etcdctl();
        cmd.args(["elect", "-l", &name]);
        cmd
    });
    let token = alice.fencing_token().unwrap();
    let mut bobs_events = bob.subscribe();

    let asked = Instant::now();
    alice.hand_over(Some("carol")).await.unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || carol.is_leader()).await,
        "carol leads after the handoff"
    );
    println!("handoff alice -> carol past bob: {:?}", asked.elapsed());
    assert!(carol.fencing_token().unwrap() > token);
    for other in [&alice, &bob] {
        assert!(
            wait_until(Duration::from_secs(5), || other
                .current_leader_id()
                .as_deref()
                == Some("carol"))
            .await,
            "{} follows carol",
            other.candidate_id()
        );
    }
    assert!(!bob.is_leader() && !alice.is_leader());
    while let Some(event) = bobs_events.try_recv() {
        assert!(
            !matches!(event, Event::BecameLeader { .. }),
            "bob led in between: {event:?}"
        );
    }
    assert!(
        wait_until(Duration::from_secs(5), || entries(server, &name).len() == 3).await,
        "alice and bob queue again behind carol"
    );
    let end = revision(server);

    // Replay the prefix: a valid election at every revision, alice's head first and carol's
    // last; the only other head is bob's, for the moment it takes him to step aside.
    let mut heads: Vec<String> = Vec::new();
    for rev in start..=end {
        let queue = queue_at(server, &name, rev);
        for (key, lease, _) in &queue {
            assert!(
                *lease != 0 && *key == format!("{name}/{lease:x}"),
                "revision {rev}: {key} (lease {lease:x}) is not an election entry: {queue:?}"
            );
        }
        let head = &queue
            .first()
            .unwrap_or_else(|| panic!("revision {rev}: no head"))
            .2;
        if heads.last() != Some(head) {
            heads.push(head.clone());
        }
    }
    println!("heads, revisions {start}..={end}: {heads:?}");
    assert!(
        heads == ["alice", "carol"] || heads == ["alice", "bob", "carol"],
        "{heads:?}"
    );
    // The mark is gone, and it never was under the prefix.
    assert_eq!(
        server.ctl(&["get", "--prefix", "baton-handoff:", "--keys-only"]),
        ""
    );

    // etcd's observer: its last word is carol.
    let mut seen = Vec::new();
    while let Some(line) = observer.next(Duration::from_millis(500)) {
        seen.push(line);
    }
    assert_eq!(seen.last().map(String::as_str), Some("carol"), "{seen:?}");

    for e in [&alice, &bob, &carol] {
        e.stop().await.unwrap();
    }
}

/// A handoff request from another process reaches the leader, which hands over to the
/// candidate named; a leader that listens while it leads hears of it by push, at once.
#[tokio::test(flavor = "multi_thread")]
async fn a_requested_handoff_reaches_the_leader_by_push_and_moves_leadership() {
    let server = shared_etcd();
    let name = unique("handoff-request");
    // A 30 s lease: the renewal that would otherwise bring the request comes 7.5 s later.
    let lease = Duration::from_secs(30);
    let build = |id: &str| {
        LeaderElection::builder(EtcdStore::open(&server.url()).unwrap(), &name)
            .lease_duration(lease)
            .renew_interval(lease / 4)
            .grace_period(lease / 4)
            .instance_id(id)
            .listen_for_handoff_requests(true)
            .build()
            .unwrap()
    };
    let (alice, bob, carol) = (build("alice"), build("bob"), build("carol"));
    alice.start().await.unwrap();
    assert!(wait_until(Duration::from_secs(5), || alice.is_leader()).await);
    bob.start().await.unwrap();
    carol.start().await.unwrap();
    assert!(wait_until(Duration::from_secs(5), || entries(server, &name).len() == 3).await);
    let token = alice.fencing_token().unwrap();

    let asked = Instant::now();
    let requester = EtcdStore::open(&server.url()).unwrap();
    let record = requester
        .request_handoff(&name, Some("carol"))
        .await
        .unwrap()
        .expect("alice holds the key");
    assert_eq!((record.holder.as_str(), record.token), ("alice", token));
    assert!(
        wait_until(Duration::from_secs(5), || carol.is_leader()).await,
        "carol leads well before alice's next renewal"
    );
    println!("requested handoff alice -> carol: {:?}", asked.elapsed());
    assert!(!bob.is_leader());
    assert!(carol.fencing_token().unwrap() > token);
    // The request went with alice's term: carol keeps leading through her renewals.
    let record = requester.read(&name).await.unwrap().unwrap();
    assert_eq!(record.holder, "carol");

    // Foreign data at the request key is reported, never overwritten.
    let request_key = format!("{}request", baton::store::etcd::handoff_prefix(&name));
    server.ctl(&["put", &request_key, "not baton's"]);
    let err = requester.request_handoff(&name, None).await.unwrap_err();
    assert!(matches!(err, Error::ForeignData { .. }), "{err:?}");
    assert_eq!(
        server.ctl(&["get", &request_key, "--print-value-only"]),
        "not baton's"
    );
    assert!(carol.is_leader());
    server.ctl(&["del", &request_key]);
    for e in [&alice, &bob, &carol] {
        e.stop().await.unwrap();
    }
}

/// What Baton did not write at the mark key fails reads and the leader's handoff with
/// `ForeignData`, keeps its value, and leaves the leader's lease as it was.
#[tokio::test(flavor = "multi_thread")]
async fn foreign_data_at_the_mark_key_is_reported_and_never_overwritten() {
    let server = shared_etcd();
    let name = unique("handoff-foreign");
    let ttl = Duration::from_secs(5);
    let store = EtcdStore::open(&server.url()).unwrap();
    let mut alice = store.join(&name, "alice").await.unwrap();
    let lease = match alice.try_acquire(ttl).await.unwrap() {
        baton::Acquire::Acquired(lease) => lease,
        other => panic!("{other:?}"),
    };
    let mark_key = format!("{}mark", baton::store::etcd::handoff_prefix(&name));
    server.ctl(&["put", &mark_key, "not baton's"]);
    let err = store.read(&name).await.unwrap_err();
    assert!(matches!(err, Error::ForeignData { .. }), "{err:?}");
    let err = alice.hand_over(&lease, Some("bob"), ttl).await.unwrap_err();
    assert!(matches!(err, Error::ForeignData { .. }), "{err:?}");
    assert_eq!(
        server.ctl(&["get", &mark_key, "--print-value-only"]),
        "not baton's"
    );
    server.ctl(&["del", &mark_key]);
    assert_eq!(
        alice.renew(&lease, ttl).await.unwrap(),
        baton::Renew::Renewed,
        "the failed handoff left the lease alone"
    );
    alice.release(&lease).await.unwrap();
    assert_eq!(store.read(&name).await.unwrap(), None);
}

// Presence records

/// The live candidates at `name`, sorted, without their TTLs.
async fn names(store: &EtcdStore, name: &str) -> Vec<(String, u32)> {
    let mut live: Vec<(String, u32)> = store
        .candidates(name)
        .await
        .unwrap()
        .expect("etcd keeps presence records")
        .into_iter()
        .map(|p| (p.candidate, p.priority))
        .collect();
    live.sort();
    live
}

/// Presence records sit beside the queue: a candidate's announces write nothing while nothing
/// changes (etcd's revision stands still under a leader and a follower that both announce),
/// cost a keepalive and one read each, open no watch, and stopping removes the record at once.
#[tokio::test(flavor = "multi_thread")]
async fn announces_write_nothing_while_nothing_changes_and_open_no_watch() {
    // A server of the test's own: its revision, counters and watchers are this test's alone.
    let server = EtcdServer::start();
    let name = unique("presence");
    let store = EtcdStore::open(&server.url()).unwrap();
    let election = |id: &str| {
        LeaderElection::builder(store.clone(), name.as_str())
            .lease_duration(Duration::from_secs(3))
            .renew_interval(Duration::from_millis(750))
            .grace_period(Duration::from_millis(750))
            .instance_id(id)
            .announce_presence(true)
            .build()
            .unwrap()
    };
    let (a, b) = (election("a"), election("b"));
    a.start().await.unwrap();
    assert!(wait_until(Duration::from_secs(5), || a.is_leader()).await);
    b.start().await.unwrap();
    let both = vec![("a".to_owned(), 0), ("b".to_owned(), 0)];
    let start = Instant::now();
    while names(&store, &name).await != both {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "both records show"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The follower watches the queue and the mark, as without presence; nothing watches the
    // records.
    assert!(wait_until(Duration::from_secs(3), || server.watchers() == 2).await);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (before, calls) = (revision(&server), server.grpc_messages_received());
    // Four renew intervals of each: eight announces, four renewals, the follower's keepalives.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (after, now) = (revision(&server), server.grpc_messages_received());
    assert_eq!(
        after, before,
        "announcing a record that is already as it should be writes nothing"
    );
    let delta = |method: &str| {
        now.get(method).copied().unwrap_or(0) - calls.get(method).copied().unwrap_or(0)
    };
    // Each announce is one keepalive and one read-only `Txn`: no grants, no puts, no lease
    // lookups (`announce` reports the others' TTL from their records). (The one `Range` is
    // etcdctl's, reading the revision.)
    assert_eq!(delta("Range"), 1, "{now:?} after {calls:?}");
    for method in ["LeaseGrant", "Put", "LeaseTimeToLive", "Watch"] {
        assert_eq!(delta(method), 0, "{method}: {now:?} after {calls:?}");
    }
    assert!(delta("Txn") >= 8 && delta("LeaseKeepAlive") >= 8, "{now:?}");
    assert_eq!(server.watchers(), 2);
    assert!(a.is_leader() && !b.is_leader());

    // Stopping withdraws the record at once (its lease is revoked).
    b.stop().await.unwrap();
    assert_eq!(names(&store, &name).await, [("a".to_owned(), 0)]);
    a.stop().await.unwrap();
    assert_eq!(names(&store, &name).await, []);
    let records = server.ctl(&[
        "get",
        "--prefix",
        &baton::store::etcd::handoff_prefix(&name),
        "--keys-only",
    ]);
    assert_eq!(records, "", "nothing is left beside the queue");
}

/// A follower with a higher priority than the leader asks for the lease through its presence
/// record and the handoff request, and the leader hands over to it.
#[tokio::test(flavor = "multi_thread")]
async fn a_follower_with_a_higher_priority_takes_the_lease_by_a_handoff() {
    let url = shared_etcd().url();
    let name = unique("priority");
    let election = |id: &str, priority: u32| {
        LeaderElection::builder(EtcdStore::open(&url).unwrap(), name.as_str())
            .lease_duration(Duration::from_secs(3))
            .renew_interval(Duration::from_millis(750))
            .grace_period(Duration::from_millis(750))
            .instance_id(id)
            .priority(priority)
            .build()
            .unwrap()
    };
    let low = election("low", 1);
    low.start().await.unwrap();
    assert!(wait_until(Duration::from_secs(5), || low.is_leader()).await);
    let token = low.fencing_token().expect("the leader's token");
    let high = election("high", 5);
    high.start().await.unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || high.is_leader()).await,
        "the follower with the higher priority leads"
    );
    assert!(!low.is_leader());
    assert!(high.fencing_token().expect("the new leader's token") > token);
    let store = EtcdStore::open(&url).unwrap();
    assert_eq!(store.read(&name).await.unwrap().unwrap().holder, "high");
    assert_eq!(store.pending_handoff(&name).await.unwrap(), None);
    high.stop().await.unwrap();
    low.stop().await.unwrap();
}

/// Anything Baton did not write under an election's presence records is `ForeignData` for
/// `announce`, `candidates` and `withdraw`, and is never overwritten or deleted; so is a value
/// that is not Baton's at the request key for `pending_handoff`.
#[tokio::test(flavor = "multi_thread")]
async fn foreign_data_among_the_presence_records_is_reported_and_never_overwritten() {
    let server = shared_etcd();
    let name = unique("presence-foreign");
    let ttl = Duration::from_secs(5);
    let store = EtcdStore::open(&server.url()).unwrap();
    let prefix = baton::store::etcd::handoff_prefix(&name);
    let alice_key = format!("{prefix}candidate:alice");
    let mallory_key = format!("{prefix}candidate:mallory");

    // At the candidate's own key.
    server.ctl(&["put", &alice_key, "not baton's"]);
    let err = store.announce(&name, "alice", 1, ttl).await.unwrap_err();
    assert!(matches!(err, Error::ForeignData { .. }), "{err:?}");
    // The store that tried revokes the lease it granted for the record, which carries
    // nothing; another store finds the key is not Baton's record. Neither deletes it.
    store.withdraw(&name, "alice").await.unwrap();
    let err = EtcdStore::open(&server.url())
        .unwrap()
        .withdraw(&name, "alice")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ForeignData { .. }), "{err:?}");
    assert_eq!(
        server.ctl(&["get", &alice_key, "--print-value-only"]),
        "not baton's"
    );
    server.ctl(&["del", &alice_key]);

    // At another candidate's key: Baton's own record is written, but the list is refused.
    let live = store
        .announce(&name, "alice", 1, ttl)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(live.len(), 1);
    // A record of Baton's shape without a lease is not Baton's either.
    let shaped = "baton-presence 1:0 1:5 7:mallory";
    server.ctl(&["put", &mallory_key, shaped]);
    for err in [
        store.announce(&name, "alice", 1, ttl).await.unwrap_err(),
        store.candidates(&name).await.unwrap_err(),
        store.withdraw(&name, "mallory").await.unwrap_err(),
    ] {
        assert!(matches!(err, Error::ForeignData { .. }), "{err:?}");
    }
    assert_eq!(
        server.ctl(&["get", &mallory_key, "--print-value-only"]),
        shaped
    );
    server.ctl(&["del", &mallory_key]);
    assert_eq!(names(&store, &name).await, [("alice".to_owned(), 1)]);
    store.withdraw(&name, "alice").await.unwrap();
    assert_eq!(names(&store, &name).await, []);

    // pending_handoff reads the request key: a value there Baton did not write is refused.
    let mut holder = store.join(&name, "holder").await.unwrap();
    let lease = match holder.try_acquire(ttl).await.unwrap() {
        baton::Acquire::Acquired(lease) => lease,
        other => panic!("{other:?}"),
    };
    let request_key = format!("{prefix}request");
    server.ctl(&["put", &request_key, "not baton's"]);
    let err = store.pending_handoff(&name).await.unwrap_err();
    assert!(matches!(err, Error::ForeignData { .. }), "{err:?}");
    server.ctl(&["del", &request_key]);
    assert_eq!(store.pending_handoff(&name).await.unwrap(), None);
    holder.release(&lease).await.unwrap();
}

/// A record another store announced (another process) is withdrawn by name, as on every
/// store, and a record a restarted process announces again under the same id replaces the old
/// one.
#[tokio::test(flavor = "multi_thread")]
async fn a_record_is_replaced_by_a_new_process_and_withdrawn_from_any() {
    let url = shared_etcd().url();
    let name = unique("presence-processes");
    let ttl = Duration::from_secs(30);
    let (first, second) = (
        EtcdStore::open(&url).unwrap(),
        EtcdStore::open(&url).unwrap(),
    );
    first.announce(&name, "web", 1, ttl).await.unwrap();
    // A restart: the same id from another client, with another priority, on its own lease.
    let live = second
        .announce(&name, "web", 2, ttl)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(live.len(), 1);
    assert_eq!((live[0].candidate.as_str(), live[0].priority), ("web", 2));
    // The first client's lease no longer carries the record: its withdraw leaves it.
    first.withdraw(&name, "web").await.unwrap();
    assert_eq!(names(&first, &name).await, [("web".to_owned(), 2)]);
    let left = first.candidates(&name).await.unwrap().unwrap()[0].ttl;
    assert!(
        left > Duration::from_secs(25) && left <= ttl,
        "the time left comes from the record's lease: {left:?}"
    );
    // A client that did not announce it removes it by name.
    EtcdStore::open(&url)
        .unwrap()
        .withdraw(&name, "web")
        .await
        .unwrap();
    assert_eq!(names(&second, &name).await, []);
    // The announcing client's next announce writes it again, on the lease it kept alive.
    second.announce(&name, "web", 2, ttl).await.unwrap();
    assert_eq!(names(&first, &name).await, [("web".to_owned(), 2)]);
    second.withdraw(&name, "web").await.unwrap();
    assert_eq!(names(&first, &name).await, []);
}

/// `etcd://` with every member of `cluster`, member `first` first (the member the client
/// talks to until a call there fails), then the others in order.
fn cluster_url(cluster: &EtcdCluster, first: usize) -> String {
    let hosts: Vec<String> = (0..cluster.size())
        .map(|i| {
            cluster
                .client_addr((first + i) % cluster.size())
                .to_string()
        })
        .collect();
    format!("etcd://{}", hosts.join(","))
}

/// Poll `a` and `b` until `done` or `limit`, failing if both ever lead at once.
async fn exclusive_until(
    a: &LeaderElection,
    b: &LeaderElection,
    limit: Duration,
    mut done: impl FnMut() -> bool,
) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        assert!(
            !(a.is_leader() && b.is_leader()),
            "two leaders at once, {:?} into the fault",
            start.elapsed()
        );
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    done()
}

/// Issue #19: a leader whose client talks to a member cut off from its two peers cannot renew
/// (the member has no quorum): it steps down within its lease of the last renewal, and the
/// follower, whose client talks to a member of the majority, takes over once etcd frees the
/// leader's entry there; never both at once.
#[tokio::test(flavor = "multi_thread")]
async fn a_leader_on_a_member_cut_off_from_its_quorum_steps_down_and_the_majority_takes_over() {
    let cluster = EtcdCluster::start(3);
    let name = unique("cut-leader");
    let lease = Duration::from_secs(2);
    let a = election(&cluster_url(&cluster, 0), &name, "a", lease);
    a.start().await.unwrap();
    assert!(wait_until(Duration::from_secs(10), || a.is_leader()).await);
    let token = a.fencing_token().unwrap();
    let b = election(&cluster_url(&cluster, 1), &name, "b", lease);
    b.start().await.unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || b.current_leader_id().as_deref()
            == Some("a"))
        .await,
        "b follows a"
    );

    let cut = Instant::now();
    cluster.partition(0);
    // The last renewal was sent before the cut, and the deadline is less than a lease after it.
    let stepped_down = exclusive_until(&a, &b, lease, || !a.is_leader()).await;
    let took = cut.elapsed();
    assert!(
        stepped_down,
        "a must step down within its lease of the last renewal ({took:?})"
    );
    // etcd frees a's entry a TTL (2 s) after the last keepalive it carried out (plus its 500 ms
    // expiry sweep), or sooner when a's next attempt, sent to another member, deletes it.
    let took_over = exclusive_until(&a, &b, Duration::from_secs(8), || b.is_leader()).await;
    println!(
        "a stepped down {took:?} after the cut; b led {:?} after it",
        cut.elapsed()
    );
    assert!(took_over, "b, on the majority, takes over");
    assert!(b.fencing_token().unwrap() > token);
    cluster.heal();
    b.stop().await.unwrap();
    a.stop().await.unwrap();
}

/// Issue #19: every watch requires a leader, so etcd ends a watch on a member cut off from its
/// quorum rather than keeping it open and silent: a store with that member alone sees its
/// change stream end; and a follower whose client talks to that member still learns that the
/// leader (on the majority) released, and takes over.
#[tokio::test(flavor = "multi_thread")]
async fn a_watch_on_a_cut_off_member_ends_and_its_follower_still_takes_over() {
    let cluster = EtcdCluster::start(3);
    // a's member must keep its quorum through the cut, with no Raft election on its side (one
    // takes up to two election timeouts, which a's 2 s lease may not survive): a talks to the
    // Raft leader, and the member cut off is another one.
    let raft_leader = cluster
        .wait_for_raft_leader(Duration::from_secs(10))
        .expect("the cluster elects a Raft leader");
    let cut_off = (raft_leader + 1) % 3;
    let name = unique("cut-watch");
    let lease = Duration::from_secs(2);
    let a = election(&cluster_url(&cluster, raft_leader), &name, "a", lease);
    a.start().await.unwrap();
    assert!(wait_until(Duration::from_secs(10), || a.is_leader()).await);
    let b = election(&cluster_url(&cluster, cut_off), &name, "b", lease);
    b.start().await.unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || b.current_leader_id().as_deref()
            == Some("a"))
        .await,
        "b follows a"
    );
    // A change stream on the cut-off member alone: nowhere else to go, so only etcd can end it.
    let lone = EtcdStore::open(&format!("etcd://{}", cluster.client_addr(cut_off))).unwrap();
    let mut changes = lone.watch(&name).await.unwrap().expect("etcd pushes");

    let cut = Instant::now();
    cluster.partition(cut_off);
    // a, on the majority, renews on; it releases a moment later.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(a.is_leader(), "a's member keeps its quorum");
    a.stop().await.unwrap();
    let released = cut.elapsed();

    // etcd ends the watches of a member that has had no leader for three election timeouts
    // (1 s each by default), checked once per election timeout, after the member itself
    // noticed (one to two election timeouts): well within 10 s.
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while changes.next().await.is_some() {}
    })
    .await;
    assert!(
        ended.is_ok(),
        "the watch on the cut-off member must end (require-leader)"
    );
    let watch_ended = cut.elapsed();
    assert!(
        wait_until(Duration::from_secs(10), || b.is_leader()).await,
        "b, whose member is cut off, still learns that a released and takes over"
    );
    println!(
        "a released {released:?} after the cut; the lone watch ended after {watch_ended:?}; b led \
         after {:?}",
        cut.elapsed()
    );
    cluster.heal();
    b.stop().await.unwrap();
}
