//! The engine's timing rules (DESIGN.md §3), one test or more per rule, on the memory store
//! with tokio's paused time. No test sleeps in real time: `tokio::time::sleep` here advances
//! the paused clock from timer to timer, deterministically.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use baton::{
    Acquire, Candidacy, Changes, Clock, ElectionOptions, Error, Event, Events, LeaderElection,
    Lease, LeaseRecord, LeaseStore, LossReason, MemoryStore, Renew, Result, Role, StoreInfo,
};
use futures_util::StreamExt;

const MS: Duration = Duration::from_millis(1);

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// A test's callback run inside a store call.
type Hook = Box<dyn FnMut() + Send>;

/// What a [`Scripted`] store does to calls, set by the test while the election runs.
#[derive(Debug, Clone, Default)]
struct Faults {
    acquire: Mode,
    renew: Mode,
    release: Mode,
    /// Set on every lease acquired (as Redis does after a restart that lost data).
    act_after: Duration,
    /// Leave renewals out of change streams, as etcd does (a keepalive is no event).
    hide_renewals: bool,
    /// What candidacies answer to `watch_is_complete`.
    complete_watch: bool,
    /// Calls seen: (operation, candidate, virtual time).
    log: Vec<(&'static str, String, Duration)>,
}

#[derive(Debug, Clone, Default, PartialEq)]
enum Mode {
    #[default]
    Pass,
    /// Never answer.
    Hang,
    /// Answer with `Error::Unavailable`.
    Fail,
    /// Answer with a non-transient error.
    Foreign,
    /// Answer `Renew::Lost`.
    Lost,
    /// Wait, then pass.
    Delay(Duration),
    /// Panic inside the call.
    Panic,
}

/// The memory store, with faults injected per operation. The test keeps a handle on the
/// faults and changes them while the election runs.
#[derive(Clone)]
struct Scripted {
    inner: MemoryStore,
    faults: Arc<Mutex<Faults>>,
    clock: Clock,
    /// Runs inside `release`, before the release reaches the store.
    on_release: Arc<Mutex<Option<Hook>>>,
}

impl std::fmt::Debug for Scripted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scripted")
            .field("faults", &self.faults)
            .finish()
    }
}

impl Scripted {
    fn new(clock: &Clock) -> Self {
        Scripted {
            inner: MemoryStore::new(),
            faults: Arc::default(),
            clock: clock.clone(),
            on_release: Arc::default(),
        }
    }
    fn set(&self, f: impl FnOnce(&mut Faults)) {
        f(&mut self.faults.lock().unwrap());
    }
    fn count(&self, op: &str) -> usize {
        self.faults
            .lock()
            .unwrap()
            .log
            .iter()
            .filter(|(o, _, _)| *o == op)
            .count()
    }
    fn count_by(&self, op: &str, candidate: &str) -> usize {
        self.faults
            .lock()
            .unwrap()
            .log
            .iter()
            .filter(|(o, c, _)| *o == op && c == candidate)
            .count()
    }
    fn calls(&self, op: &str) -> Vec<Duration> {
        let faults = self.faults.lock().unwrap();
        faults
            .log
            .iter()
            .filter(|(o, _, _)| *o == op)
            .map(|(_, _, t)| *t)
            .collect()
    }
}

async fn apply(mode: Mode) -> Result<()> {
    match mode {
        Mode::Pass | Mode::Lost => Ok(()),
        Mode::Hang => std::future::pending().await,
        Mode::Fail => Err(Error::Unavailable {
            store: "scripted",
            message: "injected".into(),
            source: None,
        }),
        Mode::Foreign => Err(Error::ForeignData {
            key: "k".into(),
            found: "a string Baton did not write".into(),
        }),
        Mode::Delay(d) => {
            tokio::time::sleep(d).await;
            Ok(())
        }
        Mode::Panic => panic!("injected panic in a store call"),
    }
}

#[async_trait]
impl LeaseStore for Scripted {
    async fn join(&self, key: &str, candidate: &str) -> Result<Box<dyn Candidacy>> {
        Ok(Box::new(ScriptedCandidacy {
            store: self.clone(),
            inner: self.inner.join(key, candidate).await?,
            candidate: candidate.to_owned(),
        }))
    }
    async fn read(&self, key: &str) -> Result<Option<LeaseRecord>> {
        self.inner.read(key).await
    }
    fn info(&self) -> StoreInfo {
        self.inner.info()
    }
}

#[derive(Debug)]
struct ScriptedCandidacy {
    store: Scripted,
    inner: Box<dyn Candidacy>,
    candidate: String,
}

impl ScriptedCandidacy {
    fn mode(&self, op: &'static str) -> Mode {
        let mut f = self.store.faults.lock().unwrap();
        f.log
            .push((op, self.candidate.clone(), self.store.clock.now()));
        match op {
            "acquire" => f.acquire.clone(),
            "renew" => f.renew.clone(),
            _ => f.release.clone(),
        }
    }
}

#[async_trait]
impl Candidacy for ScriptedCandidacy {
    async fn try_acquire(&mut self, ttl: Duration) -> Result<Acquire> {
        apply(self.mode("acquire")).await?;
        let act_after = self.store.faults.lock().unwrap().act_after;
        Ok(match self.inner.try_acquire(ttl).await? {
            Acquire::Acquired(lease) => Acquire::Acquired(lease.with_act_after(act_after)),
            held => held,
        })
    }
    async fn renew(&mut self, lease: &Lease, ttl: Duration) -> Result<Renew> {
        let mode = self.mode("renew");
        if mode == Mode::Lost {
            return Ok(Renew::Lost(None));
        }
        apply(mode).await?;
        self.inner.renew(lease, ttl).await
    }
    async fn release(&mut self, lease: &Lease) -> Result<()> {
        if let Some(hook) = self.store.on_release.lock().unwrap().as_mut() {
            hook();
        }
        apply(self.mode("release")).await?;
        self.inner.release(lease).await
    }
    async fn watch(&mut self) -> Result<Option<Changes>> {
        let changes = self.inner.watch().await?;
        if !self.store.faults.lock().unwrap().hide_renewals {
            return Ok(changes);
        }
        Ok(changes.map(|stream| -> Changes {
            Box::pin(
                stream.filter(|c| std::future::ready(!matches!(c, baton::Change::Renewed { .. }))),
            )
        }))
    }
    fn watch_is_complete(&self) -> bool {
        self.store.faults.lock().unwrap().complete_watch
    }
}

fn election(store: &Scripted, id: &str, clock: &Clock) -> LeaderElection {
    LeaderElection::builder(store.clone(), "jobs:leader")
        .instance_id(id)
        .clock(clock.clone())
        .build()
        .unwrap()
}

/// Let every ready task run, without moving time.
async fn settle() {
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
}

/// Advance paused time by `d`, firing every timer on the way in order.
async fn run_for(d: Duration) {
    tokio::time::sleep(d).await;
    settle().await;
}

fn drain(events: &mut Events) -> Vec<Event> {
    std::iter::from_fn(|| events.try_recv()).collect()
}

fn lost_reasons(events: &[Event]) -> Vec<LossReason> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::LostLeadership { reason, .. } => Some(*reason),
            _ => None,
        })
        .collect()
}

fn became(events: &[Event]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, Event::BecameLeader { .. }))
        .count()
}

// ---------------------------------------------------------------------------------------------
// Rule 1: the deadline is counted from the send time, and `is_leader` checks it live.

#[tokio::test(start_paused = true)]
async fn deadline_counts_from_the_send_time_not_the_reply() {
    let clock = Clock::tokio();
    let store = Scripted::new(&clock);
    store.set(|f| f.acquire = Mode::Delay(secs(2)));
    let a = election(&store, "a", &clock);
    a.start().await.unwrap();
    assert!(a.is_leader());
    // The acquire was sent at t=0 and answered at t=2s: only validity - 2 s remain.
    let validity = ElectionOptions::default().leader_validity();
    assert_eq!(a.time_to_deadline(), Some(validity - secs(2)));
}

#[tokio::test(start_paused = true)]
async fn is_leader_turns_false_at_the_deadline_even_if_the_engine_never_runs() {
    let clock = Clock::tokio();
    let store = Scripted::new(&clock);
    let a = election(&store, "a", &clock);
    a.start().await.unwrap();
    assert!(a.is_leader());
    // Time passes without any task running (a suspend, a stalled event loop): the live check
    // alone must say "not leader".
    clock.jump(ElectionOptions::default().leader_validity());
    assert!(!a.is_leader());
    assert_eq!(a.fencing_token(), None);
    assert_eq!(a.time_to_deadline().unwrap_or_default(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn after_a_suspend_the_engine_steps_down_with_deadline_reached() {
    let clock = Clock::tokio();
    let store = Scripted::new(&clock);
    let a = election(&store, "a", &clock);
    let mut events = a.subscribe();
    a.start().await.unwrap();
    let scope = a.leadership().await.unwrap();
    clock.jump(secs(60));
    // Timers re-check the suspend-aware clock at least once a second.
    run_for(secs(1) + MS).await;
    let evs = drain(&mut events);
    assert_eq!(lost_reasons(&evs), vec![LossReason::DeadlineReached]);
    assert!(!scope.is_current());
    tokio::time::timeout(MS, scope.lost())
        .await
        .expect("scope must be lost");
}

/// A renewal that hangs across a suspend times out on the election's (suspend-aware) clock: the
/// leader steps down, and its scope is cancelled, as soon as the machine resumes, not a renewal
/// timeout later on tokio's clock, which did not count the suspend.
#[tokio::test(start_paused = true)]
async fn a_renewal_hung_across_a_suspend_steps_down_on_resume() {
    let clock = Clock::tokio();
    let store = Scripted::new(&clock);
    let a = election(&store, "a", &clock);
    let mut events = a.subscribe();
    a.start().await.unwrap();
    let scope = a.leadership().await.unwrap();
    store.set(|f| f.renew = Mode::Hang);
    // The first renewal (t = 5 s) is in flight and hangs; the machine sleeps for a minute.
    run_for(secs(5) + MS).await;
    assert_eq!(store.count("renew"), 1);
    clock.jump(secs(60));
    run_for(secs(1) + MS).await;
    assert!(!scope.is_current(), "the scope ends on resume");
    // (The candidate may lead again by now: the lease expired in the store during the
    // suspend, and it campaigns again. That is a new term.)
    let lost = lost_reasons(&drain(&mut events));
    assert!(!lost.is_empty(), "LostLeadership on resume");
}

// ---------------------------------------------------------------------------------------------
// Rule 2: the leader steps down at the earliest of Lost, renew + grace, and the deadline,
// whatever is in flight.

#[tokio::test(start_paused = true)]
async fn renewals_happen_every_renew_interval() {
    let clock = Clock::tokio();
    let store = Scripted::new(&clock);
    let a = election(&store, "a", &clock);
    let mut events = a.subscribe();
    a.start().await.unwrap();
    run_for(secs(60) + MS).await;
    assert_eq!(
        store.calls("renew"),
        (1..=12).map(|i| secs(5 * i)).collect::<Vec<_>>()
    );
    assert!(a.is_leader());
    assert_eq!(lost_reasons(&drain(&mut events)), vec![]);
}

#[tokio::test(start_paused = true)]
async fn renew_answering_lost_steps_down_at_once() {
    let clock = Clock::tokio();
    let store = Scripted::new(&clock);
    let a = election(&store, "a", &clock);
    let mut events = a.subscribe();
    a.start().await.unwrap();
    store.set(|f| f.renew = Mode::Lost);
    run_for(secs(5) - MS).await;
    assert!(a.is_leader());
    run_for(2 * MS).await;
    assert!(!a.is_leader());
    assert_eq!(
        lost_reasons(&drain(&mut events)),
        vec![LossReason::LeaseLost]
    );
}

#[tokio::test(start_paused = true)]
async fn hung_renewal_steps_down_at_renew_plus_grace_without_waiting_for_it() {
    let clock = Clock::tokio();
    let store = Scripted::new(&clock);
    let a = election(&store, "a", &clock);
    let mut events = a.subscribe();
    a.start().await.unwrap();
    // The store stops answering anything.
    store.set(|f| {
        f.renew = Mode::Hang;
        f.acquire = Mode::Hang;
        f.release = Mode::Hang;
    });
    // renew_interval (5 s) + grace_period (5 s) after the last good send (t=0).
    run_for(secs(10) - MS).await;
    assert!(a.is_leader(), "still within renew + grace");
    assert_eq!(
        store.count("renew"),
        1,
        "the hung call is not retried concurrently"
    );
    run_for(2 * MS).await;
    assert!(
        !a.is_leader(),
        "must step down at renew + grace although the call still hangs"
    );
    assert_eq!(
        lost_reasons(&drain(&mut events)),
        vec![LossReason::RenewalsFailed]
    );
}

#[tokio::test(start_paused = true)]
async fn failing_renewals_are_retried_then_step_down_at_renew_plus_grace() {
    let clock = Clock::tokio();
    let store = Scripted::new(&clock);
    let a = election(&store, "a", &clock);
    let mut events = a.subscribe();
    a.start().await.unwrap();
    store.set(|f| {
        f.renew = Mode::Fail;
        f.acquire = Mode::Fail;
    });
    run_for(secs(10) - MS).await;
    assert!(a.is_leader());
    assert!(
        store.count("renew") >= 4,
        "retries within the grace period: {}",
        store.count("renew")
    );
    run_for(2 * MS).await;
    assert!(!a.is_leader());
    assert_eq!(
        lost_reasons(&drain(&mut events)),
        vec![LossReason::RenewalsFailed]
    );
    assert!(a.state().borrow().last_error.is_some());
}

#[tokio::test(start_paused = true)]
async fn a_failed_renewal_within_grace_does_not_cost_leadership() {
    let clock = Clock::tokio();
    let store = Scripted::new(&clock);
    let a = election(&store, "a", &clock);
    let mut events = a.subscribe();
    a.start().await.unwrap();
    store.set(|f| f.renew = Mode::Fail);
    run_for(secs(6)).await;
    store.set(|f| f.renew = Mode::Pass);
    run_for(secs(60)).await;
    assert!(a.is_leader());
    assert_eq!(lost_reasons(&drain(&mut events)), vec![]);
    assert_eq!(
        a.state().borrow().last_error,
        None,
        "cleared by the next good renewal"
    );
}

#[tokio::test(start_paused = true)]
async fn a_slow_renewal_counts_from_its_send_time() {
    let clock = Clock::tokio();
    let store = Scripted::new(&clock);
    let a = election(&store, "a", &clock);
    a.start().await.unwrap();
    // Each renewal takes 3 s to answer; it still extends the deadline, from its send time.
    store.set(|f| f.renew = Mode::Delay(secs(3)));
    run_for(secs(8) + MS).await; // renewal sent at 5 s, answered at 8 s
    let validity = ElectionOptions::default().leader_validity();
    assert_eq!(a.time_to_deadline(), Some(validity - secs(3) - MS));
    run_for(secs(60)).await;
    assert!(a.is_leader());
}

#[tokio::test(start_paused = true)]
async fn a_renewal_answering_after_the_step_down_moment_is_abandoned() {
    let clock = Clock::tokio();
    let store = Scripted::new(&clock);
    let a = election(&store, "a", &clock);
    let mut events = a.subscribe();
    a.start().await.unwrap();
    // Sent at 5 s, it would answer at 11 s, after renew + grace (10 s).
    store.set(|f| {
        f.renew = Mode::Delay(secs(6));
        f.acquire = Mode::Fail;
    });
    run_for(secs(10) + MS).await;
    assert!(!a.is_leader());
    assert_eq!(
        lost_reasons(&drain(&mut events)),
        vec![LossReason::RenewalsFailed]
    );
}

// ---------------------------------------------------------------------------------------------
// Rule 3: followers wait for a notification, the holder's TTL or a retry, and never stop.

#[tokio::test(start_paused = true)]
async fn follower_takes_over_when_the_crashed_leaders_ttl_runs_out() {
    let clock = Clock::tokio();
    let store = Scripted::new(&clock);
    // A leader that crashed: it acquired a 15 s lease at t=0 and will never renew or release.
    let mut crashed = store.inner.join("jobs:leader", "crashed").await.unwrap();
    assert!(matches!(
        crashed.try_acquire(secs(15)).await.unwrap(),
        Acquire::Acquired(_)
    ));

    let b = election(&store, "b", &clock);
    let mut events = b.subscribe();
    b.start().await.unwrap();
    assert!(!b.is_leader());
    assert_eq!(b.current_leader_id().as_deref(), Some("crashed"));
    run_for(secs(15) - MS).await;
    assert!(!b.is_leader());
    assert_eq!(
        store.count("acquire"),
        2,
        "tried before subscribing and once subscribed (D128), then no polling while the \
         holder's TTL runs"
    );
    // Jitter is at most 1 % of the lease + 1 ms.
    run_for(Duration::from_millis(153)).await;
    assert!(b.is_leader());
    let evs = drain(&mut events);
    assert!(evs.contains(&Event::LeaderChanged {
        previous: None,
        current: Some("crashed".into())
    }));
    assert!(evs.contains(&Event::LeaderChanged {
        previous: Some("crashed".into()),
        current: Some("b".into())
    }));
}

#[tokio::test(start_paused = true)]
async fn follower_takes_over_at_once_when_notified_of_a_release() {
    let clock = Clock::tokio();
    let store = Scripted::new(&clock);
    let a = election(&store, "a", &clock);
    let b = election(&store, "b", &clock);
    a.start().await.unwrap();
    b.start().await.unwrap();
    run_for(secs(7)).await;
    assert!(a.is_leader() && !b.is_leader());
    let t = clock.now();
    a.stop().await.unwrap();
    settle().await;
    assert!(b.is_leader(), "handoff needs no time to pass");
    assert_eq!(clock.now(), t);
    assert_eq!(b.current_leader_id().as_deref(), Some("b"));
}

#[tokio::test(start_paused = true)]
async fn a_handoff_costs_each_follower_at_most_one_call_and_then_they_are_quiet() {
    let clock = Clock::tokio();
    let store = Scripted::new(&clock);
    let a = election(&store, "a", &clock);
    a.start().await.unwrap();
    let followers: Vec<_> = (0..5)
        .map(|i| election(&store, &format!("f{i}"), &clock))
        .collect();
    for f in &followers {
        f.start().await.unwrap();
    }
    let before = store.count("acquire");
    a.stop().await.unwrap();
    settle().await;
    assert_eq!(followers.iter().filter(|f| f.is_leader()).count(), 1);
    let handoff = store.count("acquire") - before;
    assert!(handoff <= 5, "one try per follower at most, got {handoff}");
    // The others heard who won; they wait out the new lease without asking the store.
    run_for(secs(14)).await;
    assert_eq!(store.count("acquire") - before, handoff);
    let leader = followers.iter().find(|f| f.is_leader()).unwrap();
    for f in &followers {
        assert_eq!(
            f.current_leader_id().as_deref(),
            Some(leader.candidate_id())
        );
    }
}

/// A store that does not push renewals (as on etcd, where a keepalive is no event) and whose
/// candidacies make no promise about their change streams: a follower looks at the store again
/// at the end of every lease it read, as before complete watches existed.
#[tokio::test(start_paused = true)]
async fn without_a_complete_watch_a_follower_looks_again_every_lease() {
    let clock = Clock::tokio();
    let store = Scripted::new(&clock);
    store.set(|f| f.hide_renewals = true);
    let a = election(&store, "a", &clock);
    let b = election(&store, "b", &clock);
    a.start().await.unwrap();
    b.start().await.unwrap();
    settle().await;
    // Before subscribing, and once subscribed (D128).
    assert_eq!(store.count_by("acquire", "b"), 2);
    run_for(secs(15) * 10).await;
    assert!(a.is_leader() && !b.is_leader());
    let looks = store.count_by("acquire", "b") - 2;
    assert!(
        looks >= 10,
        "one look at least every 15 s lease: {looks} in 150 s"
    );
}

/// The same store with complete change streams: the follower waits for the stream, not for
/// the lease, and looks at the store only once every 20 leases (plus jitter).
#[tokio::test(start_paused = true)]
async fn with_a_complete_watch_a_follower_looks_again_only_every_20_leases() {
    let clock = Clock::tokio();
    let store = Scripted::new(&clock);
    store.set(|f| {
        f.hide_renewals = true;
        f.complete_watch = true;
    });
    let a = election(&store, "a", &clock);
    let b = election(&store, "b", &clock);
    a.start().await.unwrap();
    b.start().await.unwrap();
    settle().await;
    // Before subscribing, and once subscribed (D128).
    assert_eq!(store.count_by("acquire", "b"), 2);
    run_for(secs(15) * 20 - secs(1)).await;
    assert!(a.is_leader() && !b.is_leader());
    assert_eq!(
        store.count_by("acquire", "b"),
        2,
        "no look at the end of each lease"
    );
    assert_eq!(b.current_leader_id().as_deref(), Some("a"));
    // The safety look: 20 leases after the first, plus a jitter of at most 151 ms.
    run_for(secs(2)).await;
    assert_eq!(store.count_by("acquire", "b"), 3);
    run_for(secs(15) * 20).await;
    assert_eq!(store.count_by("acquire", "b"), 4);
    assert!(a.is_leader() && !b.is_leader());
}

/// With complete change streams, a release still wakes the followers at once, and the one that
/// does not win learns the new leader and goes quiet again.
#[tokio::test(start_paused = true)]
async fn with_a_complete_watch_a_release_wakes_followers_at_once() {
    let clock = Clock::tokio();
    let store = Scripted::new(&clock);
    store.set(|f| {
        f.hide_renewals = true;
        f.complete_watch = true;
    });
    let a = election(&store, "a", &clock);
    let b = election(&store, "b", &clock);
    let c = election(&store, "c", &clock);
    a.start().await.unwrap();
    b.start().await.unwrap();
    c.start().await.unwrap();
    run_for(secs(60)).await;
    let followers = || store.count_by("acquire", "b") + store.count_by("acquire", "c");
    assert_eq!(
        followers(),
        4,
        "two tries each, at start: before subscribing and once subscribed (D128)"
    );
    let t = clock.now();
    a.stop().await.unwrap();
    settle().await;
    assert_eq!(clock.now(), t, "the handoff needs no time to pass");
    let (leader, other) = if b.is_leader() { (&b, &c) } else { (&c, &b) };
    assert!(leader.is_leader() && !other.is_leader());
    assert_eq!(
        other.current_leader_id().as_deref(),
        Some(leader.candidate_id())
    );
    let after = followers();
    run_for(secs(15) * 19).await;
    assert_eq!(followers(), after, "quiet again behind the new leader");
    assert!(leader.is_leader());
    assert_eq!(
        other.current_leader_id().as_deref(),
        Some(leader.candidate_id())
    );
}

#[tokio::test(start_paused = true)]
async fn follower_keeps_campaigning_through_store_errors() {
    let clock = Clock::tokio();
    let store = Scripted::new(&clock);
    store.set(|f| f.acquire = Mode::Fail);
    let b = election(&store, "b", &clock);
    b.start().await.unwrap(); // a transient error on the first attempt is not fatal
    assert!(b.state().borrow().last_error.is_some());
    run_for(secs(600)).await;
    let attempts = store.calls("acquire");
    // Capped backoff: min(renew, 5 s), jittered by half: at least one try every 5 s.
    assert!(
        attempts.len() >= 120,
        "kept trying: {} attempts",
        attempts.len()
    );
    assert!(attempts.windows(2).all(|w| w[1] - w[0] <= secs(5)));
    store.set(|f| f.acquire = Mode::Pass);
    run_for(secs(5) + MS).await;
    assert!(b.is_leader());
    assert_eq!(b.state().borrow().last_error, None);
}

#[tokio::test(start_paused = true)]
async fn a_hung_acquire_times_out_and_the_follower_tries_again() {
    let clock = Clock::tokio();
    let store = Scripted::new(&clock);
    store.set(|f| f.acquire = Mode::Hang);
    let b = election(&store, "b", &clock);
    let start = tokio::spawn({
        let b = b.clone();
        async move { b.start().await }
    });
    run_for(secs(5) + MS).await; // the request timeout is the renew interval
    store.set(|f| f.acquire = Mode::Pass);
    start.await.unwrap().unwrap();
    run_for(secs(6)).await;
    assert!(b.is_leader());
}

#[tokio::test(start_paused = true)]
async fn foreign_data_on_the_first_attempt_fails_start() {
    let clock = Clock::tokio();
    let store = Scripted::new(&clock);
    store.set(|f| f.acquire = Mode::Foreign);
    let b = election(&store, "b", &clock);
    let err = b.start().await.unwrap_err();
    assert!(matches!(err, Error::ForeignData { .. }), "{err}");
    assert_eq!(b.state().borrow().role, Role::Stopped);
}

#[tokio::test(start_paused = true)]
async fn foreign_data_later_is_retried_not_fatal() {
    let clock = Clock::tokio();
    let store = Scripted::new(&clock);
    let mut crashed = store.inner.join("jobs:leader", "other").await.unwrap();
    crashed.try_acquire(secs(15)).await.unwrap();
    let b = election(&store, "b", &clock);
    b.start().await.unwrap();
    store.set(|f| f.acquire = Mode::Foreign);
    run_for(secs(60)).await;
    assert_eq!(b.state().borrow().role, Role::Follower);
    store.set(|f| f.acquire = Mode::Pass);
    run_for(secs(6)).await;
    assert!(b.is_leader());
}

#[tokio::test(start_paused = true)]
async fn a_leader_that_stepped_down_campaigns_again() {
    let clock = Clock::tokio();
    let store = Scripted::new(&clock);
    let a = election(&store, "a", &clock);
    let mut events = a.subscribe();
    a.start().await.unwrap();
    store.set(|f| {
        f.renew = Mode::Fail;
        f.acquire = Mode::Fail;
    });
    run_for(secs(11)).await;
    assert!(!a.is_leader());
    store.set(|f| {
        f.renew = Mode::Pass;
        f.acquire = Mode::Pass;
    });
    // It released its lease on the way down (owner-checked), so it can take it again soon.
    run_for(secs(6)).await;
    assert!(a.is_leader());
    let evs = drain(&mut events);
    assert_eq!(became(&evs), 2);
    let tokens: Vec<u64> = evs
        .iter()
        .filter_map(|e| match e {
            Event::BecameLeader { token, .. } => Some(token.get()),
            _ => None,
        })
        .collect();
    assert!(
        tokens[1] > tokens[0],
        "a new term has a higher token: {tokens:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_lease_with_act_after_is_renewed_but_not_acted_on_until_then() {
    let clock = Clock::tokio();
    let store = Scripted::new(&clock);
    store.set(|f| f.act_after = secs(12));
    let a = election(&store, "a", &clock);
    let b = election(&store, "b", &clock);
    let mut events = a.subscribe();
    a.start().await.unwrap();
    b.start().await.unwrap();
    assert!(!a.is_leader() && !b.is_leader());
    assert_eq!(
        b.current_leader_id().as_deref(),
        Some("a"),
        "b sees a hold the key"
    );
    run_for(secs(12) - MS).await;
    assert!(!a.is_leader(), "no leadership before act_after");
    assert_eq!(
        store.calls("renew"),
        vec![secs(5), secs(10)],
        "renewed meanwhile"
    );
    assert!(drain(&mut events).is_empty(), "no events while waiting");
    run_for(2 * MS).await;
    assert!(a.is_leader());
    let validity = ElectionOptions::default().leader_validity();
    assert_eq!(
        a.time_to_deadline(),
        Some(validity - secs(2) - MS),
        "deadline from the last renewal's send time"
    );
    assert_eq!(became(&drain(&mut events)), 1);
}

#[tokio::test(start_paused = true)]
async fn losing_a_lease_before_act_after_emits_nothing() {
    let clock = Clock::tokio();
    let store = Scripted::new(&clock);
    store.set(|f| f.act_after = secs(12));
    let a = election(&store, "a", &clock);
    let mut events = a.subscribe();
    a.start().await.unwrap();
    store.set(|f| {
        f.renew = Mode::Lost;
        f.acquire = Mode::Fail;
    });
    run_for(secs(20)).await;
    assert!(!a.is_leader());
    assert!(drain(&mut events).is_empty());
}

// ---------------------------------------------------------------------------------------------
// Rule 4: graceful stop cancels the scope, emits LostLeadership(Stopped), then releases.

#[tokio::test(start_paused = true)]
async fn graceful_stop_cancels_then_emits_then_releases() {
    let clock = Clock::tokio();
    let store = Scripted::new(&clock);
    let a = election(&store, "a", &clock);
    let mut events = a.subscribe();
    a.start().await.unwrap();
    let scope = a.leadership().await.unwrap();
    // At release time: was the scope still current, and which events had been emitted?
    type Seen = Option<(bool, Vec<Event>)>;
    let seen_at_release: Arc<Mutex<Seen>> = Arc::default();
    {
        let seen = seen_at_release.clone();
        let scope = scope.clone();
        let mut probe = a.subscribe();
        *store.on_release.lock().unwrap() = Some(Box::new(move || {
            let evs = std::iter::from_fn(|| probe.try_recv()).collect();
            *seen.lock().unwrap() = Some((scope.is_current(), evs));
        }));
    }
    a.stop().await.unwrap();
    let (scope_current, evs) = seen_at_release.lock().unwrap().take().expect("released");
    assert!(!scope_current, "scope cancelled before the release");
    assert_eq!(
        lost_reasons(&evs),
        vec![LossReason::Stopped],
        "event emitted before the release"
    );
    assert!(
        store.inner.read("jobs:leader").await.unwrap().is_none(),
        "released"
    );
    assert_eq!(lost_reasons(&drain(&mut events)), vec![LossReason::Stopped]);
    assert_eq!(a.state().borrow().role, Role::Stopped);
    assert!(!a.is_leader());
    a.stop().await.unwrap(); // idempotent
}

#[tokio::test(start_paused = true)]
async fn the_lease_is_released_only_once_the_leaders_work_has_let_go() {
    let clock = Clock::tokio();
    let store = Scripted::new(&clock);
    let a = election(&store, "a", &clock);
    let b = election(&store, "b", &clock);
    a.start().await.unwrap();
    b.start().await.unwrap();
    let work = a.leadership().await.unwrap();
    let stopping = tokio::spawn({
        let a = a.clone();
        async move { a.stop().await }
    });
    run_for(secs(3)).await;
    assert!(!a.is_leader() && !work.is_current(), "stepped down at once");
    assert!(
        !b.is_leader(),
        "no handoff while a's work still holds its scope"
    );
    drop(work);
    settle().await;
    assert!(b.is_leader(), "handed over as soon as the work let go");
    stopping.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_scope_that_is_never_dropped_delays_the_release_only_until_the_lease_expires() {
    let clock = Clock::tokio();
    let store = Scripted::new(&clock);
    let a = election(&store, "a", &clock);
    let b = election(&store, "b", &clock);
    a.start().await.unwrap();
    b.start().await.unwrap();
    let _stuck = a.leadership().await.unwrap();
    a.stop().await.unwrap();
    // Released when the lease (15 s from the acquire at t=0) would have expired anyway.
    assert_eq!(clock.now(), secs(15));
    settle().await;
    assert!(b.is_leader());
}

#[tokio::test(start_paused = true)]
async fn dropping_the_last_handle_releases_in_the_background() {
    let clock = Clock::tokio();
    let store = Scripted::new(&clock);
    let a = election(&store, "a", &clock);
    let b = election(&store, "b", &clock);
    a.start().await.unwrap();
    b.start().await.unwrap();
    let a2 = a.clone();
    drop(a);
    settle().await;
    assert!(!b.is_leader(), "a clone still holds the election");
    drop(a2);
    settle().await;
    assert!(b.is_leader(), "the dropped leader released at once");
}

#[tokio::test(start_paused = true)]
async fn a_stopped_follower_leaves_quietly() {
    let clock = Clock::tokio();
    let store = Scripted::new(&clock);
    let a = election(&store, "a", &clock);
    let b = election(&store, "b", &clock);
    a.start().await.unwrap();
    b.start().await.unwrap();
    let mut events = b.subscribe();
    b.stop().await.unwrap();
    assert!(a.is_leader());
    assert_eq!(store.count("release"), 0);
    assert_eq!(lost_reasons(&drain(&mut events)), vec![]);
    assert!(matches!(b.leadership().await, Err(Error::Stopped)));
}

#[tokio::test(start_paused = true)]
async fn start_twice_is_an_error() {
    let clock = Clock::tokio();
    let store = Scripted::new(&clock);
    let a = election(&store, "a", &clock);
    a.start().await.unwrap();
    assert!(matches!(a.start().await, Err(Error::AlreadyStarted)));
}

#[tokio::test(start_paused = true)]
async fn start_after_stop_campaigns_again_with_a_new_token() {
    let clock = Clock::tokio();
    let store = Scripted::new(&clock);
    let a = election(&store, "a", &clock);
    let mut events = a.subscribe();
    a.start().await.unwrap();
    let first = a.fencing_token().expect("leads");
    a.stop().await.unwrap();
    assert_eq!(a.state().borrow().role, Role::Stopped);
    assert!(store.inner.read("jobs:leader").await.unwrap().is_none());

    a.start().await.unwrap();
    assert!(a.is_leader(), "the same handle leads again");
    let second = a.fencing_token().expect("leads");
    assert!(
        second > first,
        "a new term, a greater token: {first} then {second}"
    );
    assert_eq!(a.state().borrow().role, Role::Leader);
    assert!(matches!(a.start().await, Err(Error::AlreadyStarted)));
    // The subscriber from before the first start sees both terms.
    assert_eq!(became(&drain(&mut events)), 2);
    // Renewals run in the new term as in the first.
    run_for(secs(12)).await;
    assert!(a.is_leader());
    a.stop().await.unwrap();
    assert!(!a.is_leader());
}

#[tokio::test(start_paused = true)]
async fn start_after_a_fatal_first_attempt_tries_again() {
    let clock = Clock::tokio();
    let store = Scripted::new(&clock);
    let a = election(&store, "a", &clock);
    store.set(|f| f.acquire = Mode::Foreign);
    assert!(matches!(a.start().await, Err(Error::ForeignData { .. })));
    store.set(|f| f.acquire = Mode::Pass);
    a.start().await.unwrap();
    assert!(a.is_leader());
}

#[tokio::test(start_paused = true)]
async fn a_start_during_a_stop_waits_for_the_release() {
    let clock = Clock::tokio();
    let store = Scripted::new(&clock);
    let a = election(&store, "a", &clock);
    a.start().await.unwrap();
    // The release takes a second; a start issued meanwhile must not overlap the old run.
    store.set(|f| f.release = Mode::Delay(secs(1)));
    let stopping = tokio::spawn({
        let a = a.clone();
        async move { a.stop().await }
    });
    settle().await;
    store.set(|f| f.release = Mode::Pass);
    a.start().await.unwrap();
    stopping.await.unwrap().unwrap();
    assert_eq!(clock.now(), secs(1), "the start waited for the release");
    assert!(a.is_leader());
    assert_eq!(store.count("release"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_stop_whose_future_is_dropped_still_stops_and_the_next_start_waits_for_it() {
    let clock = Clock::tokio();
    let store = Scripted::new(&clock);
    let a = election(&store, "a", &clock);
    a.start().await.unwrap();
    let first = a.fencing_token().unwrap();
    // The release takes 2 s; the caller gives up on stop() after 1 s.
    store.set(|f| f.release = Mode::Delay(secs(2)));
    let gave_up = tokio::time::timeout(secs(1), a.stop()).await;
    assert!(gave_up.is_err(), "stop() was still releasing");
    assert!(!a.is_leader(), "stepped down all the same");
    store.set(|f| f.release = Mode::Pass);
    // A start now waits for the abandoned stop to finish, rather than run beside it.
    a.start().await.unwrap();
    assert_eq!(clock.now(), secs(2), "the start waited for the release");
    assert_eq!(store.count("release"), 1);
    assert!(a.is_leader());
    assert!(a.fencing_token().unwrap() > first);
    assert_eq!(a.state().borrow().role, Role::Leader);
    // The old run's end did not overwrite the new run's state.
    run_for(secs(12)).await;
    assert!(a.is_leader());
    assert_eq!(a.state().borrow().role, Role::Leader);
    assert!(a.health().healthy, "{:?}", a.health());
    a.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_failed_release_that_took_effect_after_all_is_not_reported() {
    let clock = Clock::tokio();
    let store = Scripted::new(&clock);
    let a = election(&store, "a", &clock);
    a.start().await.unwrap();
    // The release times out, but the store applied it (the reply was lost): stop() asks the
    // store and finds the lease gone.
    let inner = store.inner.clone();
    *store.on_release.lock().unwrap() = Some(Box::new(move || {
        let inner = inner.clone();
        tokio::spawn(async move {
            let mut c = inner.join("jobs:leader", "a").await.unwrap();
            if let Some(record) = inner.read("jobs:leader").await.unwrap() {
                let lease = Lease::new("jobs:leader", record.holder, record.token);
                c.release(&lease).await.unwrap();
            }
        });
    }));
    store.set(|f| f.release = Mode::Hang);
    a.stop().await.unwrap();
    assert!(store.inner.read("jobs:leader").await.unwrap().is_none());
}

#[tokio::test(start_paused = true)]
async fn stop_reports_a_release_that_failed() {
    let clock = Clock::tokio();
    let store = Scripted::new(&clock);
    let a = election(&store, "a", &clock);
    let b = election(&store, "b", &clock);
    a.start().await.unwrap();
    b.start().await.unwrap();
    store.set(|f| f.release = Mode::Fail);
    let err = a.stop().await.unwrap_err();
    // The lease it still holds, as the store reports it, runs out 15 s after the acquire.
    assert!(
        matches!(&err, Error::ReleaseFailed { expires_within, .. } if *expires_within == secs(15)),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("injected") && msg.contains("within 15s"),
        "says why and how long followers wait: {msg}"
    );
    // Stopped all the same: not leading, and the store frees the lease by itself.
    assert!(!a.is_leader());
    assert_eq!(a.state().borrow().role, Role::Stopped);
    assert!(
        a.stop().await.is_ok(),
        "a second stop has nothing to report"
    );
    run_for(secs(16)).await;
    assert!(b.is_leader(), "b took over when the lease expired");
}

#[tokio::test(start_paused = true)]
async fn stop_reports_a_release_that_hung() {
    let clock = Clock::tokio();
    let store = Scripted::new(&clock);
    let a = election(&store, "a", &clock);
    a.start().await.unwrap();
    store.set(|f| f.release = Mode::Hang);
    let err = a.stop().await.unwrap_err();
    assert!(
        matches!(&err, Error::ReleaseFailed { source, .. } if matches!(**source, Error::Timeout(_))),
        "{err:?}"
    );
    assert!(!a.is_leader());
}

// ---------------------------------------------------------------------------------------------
// Rule 5: events are delivered through channels, never on the renewal path.

#[tokio::test(start_paused = true)]
async fn a_subscriber_that_never_reads_does_not_delay_renewal() {
    let clock = Clock::tokio();
    let store = Scripted::new(&clock);
    let a = election(&store, "a", &clock);
    let b = election(&store, "b", &clock);
    let mut stuck = a.subscribe(); // never read until the end
    a.start().await.unwrap();
    b.start().await.unwrap();
    // Flap leadership many times: each flap is two or three events for `stuck`.
    for _ in 0..600 {
        let leader = if a.is_leader() { &a } else { &b };
        store.set(|f| f.renew = Mode::Lost);
        run_for(secs(5) + MS).await;
        assert!(!leader.is_leader());
        store.set(|f| f.renew = Mode::Pass);
        run_for(secs(16)).await;
    }
    assert!(a.is_leader() || b.is_leader());
    let got = drain(&mut stuck);
    assert!(
        stuck.missed() > 0,
        "a laggard skips events instead of blocking the election"
    );
    assert!(got.len() <= 16);
}

#[tokio::test(start_paused = true)]
async fn followers_see_remote_leader_changes() {
    let clock = Clock::tokio();
    let store = Scripted::new(&clock);
    let a = election(&store, "a", &clock);
    let b = election(&store, "b", &clock);
    let c = election(&store, "c", &clock);
    let mut events = c.subscribe();
    a.start().await.unwrap();
    c.start().await.unwrap();
    b.start().await.unwrap();
    a.stop().await.unwrap();
    settle().await;
    let leader = [&b, &c].into_iter().find(|e| e.is_leader()).unwrap();
    let changes: Vec<Event> = drain(&mut events)
        .into_iter()
        .filter(|e| matches!(e, Event::LeaderChanged { .. }))
        .collect();
    assert_eq!(
        changes.first(),
        Some(&Event::LeaderChanged {
            previous: None,
            current: Some("a".into())
        })
    );
    assert_eq!(
        changes.last(),
        Some(&Event::LeaderChanged {
            previous: Some("a".into()),
            current: Some(leader.candidate_id().into())
        })
    );
    assert_eq!(
        c.current_leader_id().as_deref(),
        Some(leader.candidate_id())
    );
}

// ---------------------------------------------------------------------------------------------
// Rule 6: the leadership scope carries the token and ends no later than the deadline.

#[tokio::test(start_paused = true)]
async fn leadership_scope_ends_no_later_than_renew_plus_grace() {
    let clock = Clock::tokio();
    let store = Scripted::new(&clock);
    let a = election(&store, "a", &clock);
    a.start().await.unwrap();
    let scope = a.leadership().await.unwrap();
    assert_eq!(Some(scope.token()), a.fencing_token());
    store.set(|f| f.renew = Mode::Hang);
    let t0 = clock.now();
    scope.lost().await;
    assert!(
        clock.now() - t0 <= secs(10),
        "lost after {:?}",
        clock.now() - t0
    );
    assert!(scope.cancellation().is_cancelled());
}

#[tokio::test(start_paused = true)]
async fn run_while_leader_cancels_work_on_loss_and_restarts_it_on_the_next_term() {
    let clock = Clock::tokio();
    let store = Scripted::new(&clock);
    let a = election(&store, "a", &clock);
    a.start().await.unwrap();
    let starts: Arc<Mutex<Vec<u64>>> = Arc::default();
    let work = tokio::spawn({
        let a = a.clone();
        let starts = starts.clone();
        async move {
            a.run_while_leader(|scope| {
                let starts = starts.clone();
                async move {
                    starts.lock().unwrap().push(scope.token().get());
                    let n = starts.lock().unwrap().len();
                    if n == 1 {
                        std::future::pending::<()>().await; // only cancellation ends this
                    }
                    scope.token().get()
                }
            })
            .await
        }
    });
    settle().await;
    store.set(|f| f.renew = Mode::Lost);
    run_for(secs(5) + MS).await;
    store.set(|f| f.renew = Mode::Pass);
    run_for(secs(16)).await;
    let out = work.await.unwrap().unwrap();
    let starts = starts.lock().unwrap().clone();
    assert_eq!(
        starts.len(),
        2,
        "first run cancelled, second ran to completion"
    );
    assert!(starts[1] > starts[0]);
    assert_eq!(out, starts[1]);
}

#[tokio::test(start_paused = true)]
async fn run_while_leader_returns_stopped_when_the_election_stops() {
    let clock = Clock::tokio();
    let store = Scripted::new(&clock);
    let mut other = store.inner.join("jobs:leader", "other").await.unwrap();
    other.try_acquire(secs(15)).await.unwrap();
    let b = election(&store, "b", &clock);
    b.start().await.unwrap();
    let work = tokio::spawn({
        let b = b.clone();
        async move { b.run_while_leader(|_| async {}).await }
    });
    settle().await;
    b.stop().await.unwrap();
    assert!(matches!(work.await.unwrap(), Err(Error::Stopped)));
}

// ---------------------------------------------------------------------------------------------
// Options and safety across many candidates.

#[test]
fn invalid_options_are_errors_not_panics() {
    let store = MemoryStore::new();
    let err = LeaderElection::builder(store.clone(), "")
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::Config(_)));
    let err = LeaderElection::builder(store.clone(), "k")
        .lease_duration(secs(10))
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("lease_duration"), "{err}");
    let err = LeaderElection::builder(store, "k")
        .renew_interval(Duration::ZERO)
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::Config(_)));
}

/// A key or an id with a control character would break every line-oriented output that shows
/// it (`--id $'a\nb'` split `baton`'s JSON lines): `build()` refuses both.
#[test]
fn keys_and_ids_with_control_characters_are_config_errors() {
    let store = MemoryStore::new();
    for bad in ["a\nb", "a\tb", "\u{1b}[2J"] {
        let err = LeaderElection::builder(store.clone(), bad)
            .build()
            .unwrap_err();
        assert!(
            matches!(&err, Error::Config(m) if m.contains("election key")),
            "{err}"
        );
        let err = LeaderElection::builder(store.clone(), "k")
            .instance_id(bad)
            .build()
            .unwrap_err();
        assert!(
            matches!(&err, Error::Config(m) if m.contains("instance_id")),
            "{err}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn sub_second_leases_work() {
    let clock = Clock::tokio();
    let store = Scripted::new(&clock);
    let opts = |id: &str| {
        LeaderElection::builder(store.clone(), "fast")
            .lease_duration(Duration::from_millis(500))
            .renew_interval(Duration::from_millis(100))
            .grace_period(Duration::from_millis(100))
            .instance_id(id)
            .clock(clock.clone())
            .build()
            .unwrap()
    };
    let a = opts("a");
    let b = opts("b");
    a.start().await.unwrap();
    b.start().await.unwrap();
    run_for(secs(10)).await;
    assert!(a.is_leader() && !b.is_leader());
    store.set(|f| {
        f.renew = Mode::Hang;
        f.acquire = Mode::Hang;
        f.release = Mode::Hang;
    });
    run_for(Duration::from_millis(250)).await;
    assert!(!a.is_leader(), "stepped down at renew + grace = 200 ms");
    store.set(|f| *f = Faults::default());
    run_for(Duration::from_millis(600)).await;
    assert!(a.is_leader() ^ b.is_leader());
}

/// At every instant of a long run with random faults, at most one candidate reports
/// leadership, and tokens of successive terms strictly increase.
#[tokio::test(start_paused = true)]
async fn never_two_leaders_under_random_faults() {
    let clock = Clock::tokio();
    let store = Scripted::new(&clock);
    let elections: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|id| election(&store, id, &clock))
        .collect();
    let mut events: Vec<_> = elections.iter().map(|e| e.subscribe()).collect();
    for e in &elections {
        e.start().await.unwrap();
    }
    let mut rng = fastrand::Rng::with_seed(7);
    let mut last_token = 0;
    for step in 0..20_000 {
        if step % 50 == 0 {
            let mode = match rng.u8(0..6) {
                0 => Mode::Hang,
                1 => Mode::Fail,
                2 => Mode::Delay(Duration::from_millis(rng.u64(0..8000))),
                _ => Mode::Pass,
            };
            let acquire = if rng.bool() { Mode::Pass } else { Mode::Fail };
            store.set(|f| {
                f.renew = mode;
                f.acquire = acquire;
            });
        }
        run_for(Duration::from_millis(rng.u64(1..400))).await;
        let leaders = elections.iter().filter(|e| e.is_leader()).count();
        assert!(leaders <= 1, "two leaders at step {step}");
        for ev in &mut events {
            for e in drain(ev) {
                if let Event::BecameLeader { token, .. } = e {
                    assert!(token.get() > last_token, "token went backwards");
                    last_token = token.get();
                }
            }
        }
    }
    assert!(
        last_token > 10,
        "leadership moved around: {last_token} terms"
    );
}

// ---------------------------------------------------------------------------------------------
// Health, for /healthz.

#[tokio::test(start_paused = true)]
async fn health_follows_renewals_and_catches_a_wedged_leader() {
    let clock = Clock::tokio();
    let store = Scripted::new(&clock);
    let a = election(&store, "a", &clock);
    assert!(a.health().healthy, "not started");
    a.start().await.unwrap();
    run_for(secs(30)).await;
    assert!(a.health().healthy, "{:?}", a.health());
    // The process stalls: time passes and nothing runs. It still believes it leads.
    clock.jump(secs(20));
    let h = a.health();
    assert!(!h.healthy && h.detail.contains("wedged"), "{h:?}");
    run_for(secs(2)).await; // the engine notices and steps down
    assert!(a.health().healthy, "a follower again: {:?}", a.health());
    a.stop().await.unwrap();
    assert!(!a.health().healthy, "stopped");
}

#[tokio::test(start_paused = true)]
async fn health_reports_a_stalled_campaign() {
    let clock = Clock::tokio();
    let store = Scripted::new(&clock);
    let mut other = store.inner.join("jobs:leader", "other").await.unwrap();
    other.try_acquire(secs(15)).await.unwrap();
    let b = election(&store, "b", &clock);
    b.start().await.unwrap();
    assert!(b.health().healthy);
    clock.jump(secs(40));
    let h = b.health();
    assert!(!h.healthy && h.detail.contains("stalled"), "{h:?}");
}

#[tokio::test(start_paused = true)]
async fn an_idle_follower_waiting_for_a_complete_stream_is_healthy() {
    let clock = Clock::tokio();
    let store = Scripted::new(&clock);
    store.set(|f| f.complete_watch = true);
    let a = election(&store, "a", &clock);
    let b = election(&store, "b", &clock);
    a.start().await.unwrap();
    b.start().await.unwrap();
    // b waits 20 leases for its stream; a renews all along.
    for _ in 0..19 {
        run_for(secs(15)).await;
        assert!(b.health().healthy, "{:?}", b.health());
    }
    assert!(a.is_leader() && a.health().healthy);
}

// ---------------------------------------------------------------------------------------------
// The shared driver (docs/decisions.md D76).

#[tokio::test(start_paused = true)]
async fn many_elections_run_on_one_task() {
    let clock = Clock::tokio();
    let store = Scripted::new(&clock);
    let before = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    let elections: Vec<_> = (0..200)
        .map(|i| {
            LeaderElection::builder(store.clone(), format!("jobs:{i}"))
                .instance_id(format!("c{i}"))
                .clock(clock.clone())
                .build()
                .unwrap()
        })
        .collect();
    for e in &elections {
        e.start().await.unwrap();
    }
    run_for(secs(30)).await;
    assert!(elections.iter().all(LeaderElection::is_leader));
    // Every election renewed on time, from one timer queue.
    assert!(store.count("renew") >= 200 * 5, "{}", store.count("renew"));
    let tasks = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    assert_eq!(tasks - before, 1, "one driver task for 200 elections");
    for e in &elections {
        e.stop().await.unwrap();
    }
    settle().await;
    // The driver leaves once its last election is over.
    assert_eq!(
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks(),
        before
    );
}

#[tokio::test(start_paused = true)]
async fn a_store_call_that_panics_fails_that_call_and_spares_the_other_elections() {
    let clock = Clock::tokio();
    let (panicky, fine) = (Scripted::new(&clock), Scripted::new(&clock));
    let a = election(&panicky, "a", &clock);
    let b = election(&fine, "b", &clock);
    let mut events = a.subscribe();
    a.start().await.unwrap();
    b.start().await.unwrap();
    assert!(a.is_leader() && b.is_leader());
    panicky.set(|f| {
        f.renew = Mode::Panic;
        f.acquire = Mode::Panic;
    });
    // a's renewals fail (each panic is an indeterminate error): it steps down at renew +
    // grace, as with any failing store, and keeps campaigning.
    run_for(secs(10) + MS).await;
    assert!(!a.is_leader());
    assert_eq!(
        lost_reasons(&drain(&mut events)),
        vec![LossReason::RenewalsFailed]
    );
    assert!(
        a.state()
            .borrow()
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("panicked")),
        "{:?}",
        a.state().borrow()
    );
    // b, on the same driver, never noticed.
    run_for(secs(30)).await;
    assert!(b.is_leader());
    assert!(fine.count("renew") >= 8);
    assert!(!a.is_leader());
    assert!(panicky.count("acquire") >= 2, "a campaigns on");
    panicky.set(|f| {
        f.renew = Mode::Pass;
        f.acquire = Mode::Pass;
    });
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

/// A handle that answers `is_leader()` true already has the term in place (its fencing token
/// and its leader id), and whoever is told of the term (a `state()` subscriber seeing the
/// leader role, a `BecameLeader` subscriber) finds `is_leader()` true. The driver shows a new
/// term's deadline between putting the state in place and telling anyone. Real time and a real
/// multi-threaded runtime, since the windows this guards lie between two statements of the
/// driver: a spinning thread and two woken tasks look at the handle while terms begin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_seen_from_another_thread_always_has_its_token() {
    let store = MemoryStore::new();
    for round in 0..200 {
        let a = LeaderElection::builder(store.clone(), "jobs:leader")
            .instance_id("a")
            .build()
            .unwrap();
        let watcher = {
            let a = a.clone();
            std::thread::spawn(move || {
                while !a.is_leader() {
                    std::hint::spin_loop();
                }
                (a.fencing_token(), a.current_leader_id())
            })
        };
        let told_by_state = {
            let a = a.clone();
            let mut state = a.state();
            tokio::spawn(async move {
                state
                    .wait_for(|s| s.role == Role::Leader)
                    .await
                    .map(|_| a.is_leader())
            })
        };
        let told_by_event = {
            let a = a.clone();
            let mut events = a.subscribe();
            tokio::spawn(async move {
                loop {
                    if let Some(Event::BecameLeader { .. }) = events.recv().await {
                        return a.is_leader();
                    }
                }
            })
        };
        a.start().await.unwrap();
        let (token, leader) = tokio::task::spawn_blocking(move || watcher.join().unwrap())
            .await
            .unwrap();
        assert!(token.is_some(), "round {round}: leading without a token");
        assert_eq!(leader.as_deref(), Some("a"), "round {round}");
        assert_eq!(
            told_by_state.await.unwrap().ok(),
            Some(true),
            "round {round}"
        );
        assert!(told_by_event.await.unwrap(), "round {round}");
        a.stop().await.unwrap();
    }
}
