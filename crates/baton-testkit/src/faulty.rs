//! [`FaultyStore`]: any [`LeaseStore`] with faults injected under a test's control.
//!
//! The engine must stay safe when its store is slow, down, or ambiguous about what it did.
//! `FaultyStore` wraps a real store and, per operation, delays calls, fails them without
//! applying them, applies them and then reports an unknown outcome, or never answers. The test
//! holds a [`FaultControl`] and changes the faults while the election runs; every handle made
//! from one control (several stores standing for several processes' connections) sees the
//! change at once.
//!
//! With no faults set, a `FaultyStore` is a transparent wrapper: it passes the conformance
//! suite exactly as its inner store does (`tests/conformance.rs` runs it over the memory and
//! SQLite stores).
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use baton::{LeaderElection, MemoryStore};
//! use baton_testkit::faulty::{Fault, FaultyStore, Op};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> baton::Result<()> {
//! let store = FaultyStore::new(Arc::new(MemoryStore::new()));
//! let faults = store.control();
//! let election = LeaderElection::builder(store, "job")
//!     .lease_duration(Duration::from_millis(900))
//!     .renew_interval(Duration::from_millis(200))
//!     .grace_period(Duration::from_millis(200))
//!     .build()?;
//! election.start().await?;
//! assert!(election.is_leader());
//!
//! // The store stops answering this candidate: it must step down on its own, on time.
//! faults.set(&Op::WRITES, Fault::Hang);
//! tokio::time::sleep(Duration::from_millis(800)).await;
//! assert!(!election.is_leader());
//! # election.stop().await?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use baton::{
    Acquire, Candidacy, Changes, Error, Lease, LeaseRecord, LeaseStore, PendingHandoff, Presence,
    Renew, Result, StoreInfo,
};

/// A store operation a fault can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// [`LeaseStore::join`].
    Join,
    /// [`LeaseStore::read`].
    Read,
    /// [`LeaseStore::watch`] and [`Candidacy::watch`] (setting up a subscription).
    Watch,
    /// [`Candidacy::try_acquire`].
    Acquire,
    /// [`Candidacy::renew`].
    Renew,
    /// [`Candidacy::release`] and [`Candidacy::hand_over`].
    Release,
    /// [`Candidacy::leave`].
    Leave,
}

impl Op {
    /// Every operation.
    pub const ALL: [Op; 7] = [
        Op::Join,
        Op::Read,
        Op::Watch,
        Op::Acquire,
        Op::Renew,
        Op::Release,
        Op::Leave,
    ];

    /// The operations that change a lease: acquire, renew, release.
    pub const WRITES: [Op; 3] = [Op::Acquire, Op::Renew, Op::Release];

    fn index(self) -> usize {
        self as usize
    }

    /// A short name, as in error messages.
    pub fn name(self) -> &'static str {
        match self {
            Op::Join => "join",
            Op::Read => "read",
            Op::Watch => "watch",
            Op::Acquire => "try_acquire",
            Op::Renew => "renew",
            Op::Release => "release",
            Op::Leave => "leave",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What happens to a call that a fault hits.
///
/// The variants follow the store contract's error model: [`Error::Unavailable`] promises that
/// nothing was applied, [`Error::Indeterminate`] and a call that never answers leave the caller
/// not knowing. A faithful fault injector must produce the *worst* case each error allows, so
/// the "indeterminate" faults always apply the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Wait this long (on tokio's clock), then make the call: a slow network on the way there.
    Latency(Duration),
    /// Make the call, then wait this long before answering: the store applied it early, the
    /// answer comes late. A caller that times out meanwhile has an indeterminate outcome.
    SlowReply(Duration),
    /// Do not make the call; answer [`Error::Unavailable`] (nothing was applied).
    Unavailable,
    /// Make the call, then answer [`Error::Indeterminate`], whatever it did: the reply was lost.
    Indeterminate,
    /// Make the call, then never answer: the caller's timeout is all it has.
    ApplyThenHang,
    /// Never make the call and never answer.
    Hang,
}

#[derive(Debug, Clone, Copy)]
struct Rule {
    fault: Fault,
    probability: f64,
}

#[derive(Debug)]
struct State {
    rules: [Option<Rule>; Op::ALL.len()],
    rng: fastrand::Rng,
    calls: [u64; Op::ALL.len()],
    injected: [u64; Op::ALL.len()],
}

/// The switchboard of one or more [`FaultyStore`]s. Clones share it: the test keeps one and
/// changes faults while stores made from it are in use. Each operation has at most one fault
/// at a time; setting one replaces the previous.
#[derive(Clone)]
pub struct FaultControl(Arc<Mutex<State>>);

impl fmt::Debug for FaultControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        let mut map = f.debug_map();
        for op in Op::ALL {
            if let Some(rule) = state.rules[op.index()] {
                map.entry(&op, &rule);
            }
        }
        map.finish()
    }
}

impl Default for FaultControl {
    fn default() -> Self {
        Self::new()
    }
}

impl FaultControl {
    /// No faults. Faults set with a probability draw from a random seed; see
    /// [`seed`](Self::seed).
    pub fn new() -> Self {
        FaultControl(Arc::new(Mutex::new(State {
            rules: [None; Op::ALL.len()],
            rng: fastrand::Rng::new(),
            calls: [0; Op::ALL.len()],
            injected: [0; Op::ALL.len()],
        })))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Seed the dice of probabilistic faults, so a failing test can be replayed (as far as the
    /// order of calls is itself deterministic).
    pub fn seed(&self, seed: u64) {
        self.lock().rng.seed(seed);
    }

    /// Hit every call of `ops` with `fault`, from now on.
    pub fn set(&self, ops: &[Op], fault: Fault) {
        self.set_sometimes(ops, fault, 1.0);
    }

    /// Hit calls of `ops` with `fault` with the given probability (clamped to `0.0..=1.0`).
    pub fn set_sometimes(&self, ops: &[Op], fault: Fault, probability: f64) {
        let mut state = self.lock();
        let probability = probability.clamp(0.0, 1.0);
        for op in ops {
            state.rules[op.index()] = Some(Rule { fault, probability });
        }
    }

    /// Remove the faults of `ops`. Calls already hanging stay hung: their callers' timeouts end
    /// them, as with a real store.
    pub fn clear(&self, ops: &[Op]) {
        let mut state = self.lock();
        for op in ops {
            state.rules[op.index()] = None;
        }
    }

    /// Remove every fault.
    pub fn clear_all(&self) {
        self.clear(&Op::ALL);
    }

    /// The fault currently set for `op`, if any.
    pub fn fault(&self, op: Op) -> Option<Fault> {
        self.lock().rules[op.index()].map(|r| r.fault)
    }

    /// How many calls of `op` the stores of this control have seen.
    pub fn calls(&self, op: Op) -> u64 {
        self.lock().calls[op.index()]
    }

    /// How many calls of `op` a fault has hit.
    pub fn injected(&self, op: Op) -> u64 {
        self.lock().injected[op.index()]
    }

    /// Count a call of `op` and roll for its fault.
    fn draw(&self, op: Op) -> Option<Fault> {
        let mut state = self.lock();
        state.calls[op.index()] += 1;
        let rule = state.rules[op.index()]?;
        let hit = rule.probability >= 1.0 || state.rng.f64() < rule.probability;
        if hit {
            state.injected[op.index()] += 1;
            Some(rule.fault)
        } else {
            None
        }
    }

    /// Run `call` as `op`, through whatever fault the dice pick.
    async fn apply<T, F>(&self, store: &'static str, op: Op, call: F) -> Result<T>
    where
        F: Future<Output = Result<T>>,
    {
        let Some(fault) = self.draw(op) else {
            return call.await;
        };
        match fault {
            Fault::Latency(d) => {
                tokio::time::sleep(d).await;
                call.await
            }
            Fault::SlowReply(d) => {
                let outcome = call.await;
                tokio::time::sleep(d).await;
                outcome
            }
            Fault::Unavailable => Err(Error::Unavailable {
                store,
                message: format!("{op}: injected fault: store unavailable (nothing was applied)"),
                source: None,
            }),
            Fault::Indeterminate => {
                let outcome = call.await;
                Err(Error::Indeterminate {
                    store,
                    message: format!(
                        "{op}: injected fault: the reply was lost (the call {})",
                        if outcome.is_ok() {
                            "was applied"
                        } else {
                            "failed"
                        }
                    ),
                    source: None,
                })
            }
            Fault::ApplyThenHang => {
                let _ = call.await;
                std::future::pending().await
            }
            Fault::Hang => std::future::pending().await,
        }
    }
}

/// A [`LeaseStore`] that passes every call to an inner store, through the faults its
/// [`FaultControl`] sets. Candidacies it hands out are wrapped too.
#[derive(Debug, Clone)]
pub struct FaultyStore {
    inner: Arc<dyn LeaseStore>,
    control: FaultControl,
    name: &'static str,
}

impl FaultyStore {
    /// Wrap `inner` with a control of its own, with no faults set.
    pub fn new(inner: Arc<dyn LeaseStore>) -> Self {
        Self::with_control(inner, FaultControl::new())
    }

    /// Wrap `inner` under an existing control, which other stores may share.
    pub fn with_control(inner: Arc<dyn LeaseStore>, control: FaultControl) -> Self {
        let name = inner.info().name;
        FaultyStore {
            inner,
            control,
            name,
        }
    }

    /// The control of this store's faults.
    pub fn control(&self) -> FaultControl {
        self.control.clone()
    }

    /// The wrapped store.
    pub fn inner(&self) -> &Arc<dyn LeaseStore> {
        &self.inner
    }
}

#[async_trait]
impl LeaseStore for FaultyStore {
    async fn join(&self, key: &str, candidate: &str) -> Result<Box<dyn Candidacy>> {
        let inner = self
            .control
            .apply(self.name, Op::Join, self.inner.join(key, candidate))
            .await?;
        Ok(Box::new(FaultyCandidacy {
            inner,
            control: self.control.clone(),
            name: self.name,
        }))
    }

    async fn read(&self, key: &str) -> Result<Option<LeaseRecord>> {
        self.control
            .apply(self.name, Op::Read, self.inner.read(key))
            .await
    }

    async fn watch(&self, key: &str) -> Result<Option<Changes>> {
        self.control
            .apply(self.name, Op::Watch, self.inner.watch(key))
            .await
    }

    /// Passed through without faults: only `baton handoff` asks, never an election.
    async fn request_handoff(&self, key: &str, to: Option<&str>) -> Result<Option<LeaseRecord>> {
        self.inner.request_handoff(key, to).await
    }

    /// Passed through without faults: only `baton status` and `baton watch` ask.
    async fn pending_handoff(&self, key: &str) -> Result<Option<PendingHandoff>> {
        self.inner.pending_handoff(key).await
    }

    /// Presence records are passed through without faults: they are kept beside the
    /// election, and the faults here are aimed at its lease calls (tests count those).
    async fn announce(
        &self,
        key: &str,
        candidate: &str,
        priority: u32,
        ttl: Duration,
    ) -> Result<Option<Vec<Presence>>> {
        self.inner.announce(key, candidate, priority, ttl).await
    }

    async fn candidates(&self, key: &str) -> Result<Option<Vec<Presence>>> {
        self.inner.candidates(key).await
    }

    async fn withdraw(&self, key: &str, candidate: &str) -> Result<()> {
        self.inner.withdraw(key, candidate).await
    }

    fn info(&self) -> StoreInfo {
        let mut info = self.inner.info();
        info.location = format!("{} (with injected faults)", info.location);
        info
    }

    fn granted_ttl(&self, requested: Duration) -> Duration {
        self.inner.granted_ttl(requested)
    }
}

/// A candidacy of a [`FaultyStore`].
#[derive(Debug)]
struct FaultyCandidacy {
    inner: Box<dyn Candidacy>,
    control: FaultControl,
    name: &'static str,
}

#[async_trait]
impl Candidacy for FaultyCandidacy {
    async fn try_acquire(&mut self, ttl: Duration) -> Result<Acquire> {
        self.control
            .apply(self.name, Op::Acquire, self.inner.try_acquire(ttl))
            .await
    }

    async fn renew(&mut self, lease: &Lease, ttl: Duration) -> Result<Renew> {
        self.control
            .apply(self.name, Op::Renew, self.inner.renew(lease, ttl))
            .await
    }

    async fn release(&mut self, lease: &Lease) -> Result<()> {
        self.control
            .apply(self.name, Op::Release, self.inner.release(lease))
            .await
    }

    /// A handoff is a release that leaves a mark: the faults set for [`Op::Release`] apply.
    async fn hand_over(&mut self, lease: &Lease, to: Option<&str>, window: Duration) -> Result<()> {
        self.control
            .apply(
                self.name,
                Op::Release,
                self.inner.hand_over(lease, to, window),
            )
            .await
    }

    async fn leave(&mut self) -> Result<()> {
        self.control
            .apply(self.name, Op::Leave, self.inner.leave())
            .await
    }

    async fn watch(&mut self) -> Result<Option<Changes>> {
        self.control
            .apply(self.name, Op::Watch, self.inner.watch())
            .await
    }

    /// The inner store's answer: faults act on calls, and a stream, once set up, is the inner
    /// store's own.
    fn watch_is_complete(&self) -> bool {
        self.inner.watch_is_complete()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use baton::{Acquire, LeaderElection, LeaseStore, MemoryStore, Renew};
    use tokio::time::{Instant, timeout};

    use super::*;

    const TTL: Duration = Duration::from_secs(30);

    fn faulty() -> (FaultyStore, MemoryStore) {
        let memory = MemoryStore::new();
        (FaultyStore::new(Arc::new(memory.clone())), memory)
    }

    #[tokio::test]
    async fn no_faults_is_transparent() {
        let (store, memory) = faulty();
        let mut alice = store.join("k", "alice").await.unwrap();
        let Acquire::Acquired(lease) = alice.try_acquire(TTL).await.unwrap() else {
            panic!("a free key must be acquired");
        };
        assert_eq!(memory.read("k").await.unwrap().unwrap().holder, "alice");
        assert_eq!(alice.renew(&lease, TTL).await.unwrap(), Renew::Renewed);
        alice.release(&lease).await.unwrap();
        assert_eq!(memory.read("k").await.unwrap(), None);
        let control = store.control();
        assert_eq!(control.calls(Op::Acquire), 1);
        assert_eq!(control.injected(Op::Acquire), 0);
        assert_eq!(store.info().name, "memory");
    }

    #[tokio::test]
    async fn unavailable_applies_nothing() {
        let (store, memory) = faulty();
        let mut alice = store.join("k", "alice").await.unwrap();
        store.control().set(&[Op::Acquire], Fault::Unavailable);
        let err = alice.try_acquire(TTL).await.unwrap_err();
        assert!(matches!(err, Error::Unavailable { .. }), "{err}");
        assert_eq!(
            memory.read("k").await.unwrap(),
            None,
            "Unavailable must mean nothing was applied"
        );
        store.control().clear_all();
        assert!(matches!(
            alice.try_acquire(TTL).await.unwrap(),
            Acquire::Acquired(_)
        ));
    }

    #[tokio::test]
    async fn indeterminate_applies_the_call_and_hides_the_outcome() {
        let (store, memory) = faulty();
        let mut alice = store.join("k", "alice").await.unwrap();
        store.control().set(&[Op::Acquire], Fault::Indeterminate);
        let err = alice.try_acquire(TTL).await.unwrap_err();
        assert!(matches!(err, Error::Indeterminate { .. }), "{err}");
        let record = memory
            .read("k")
            .await
            .unwrap()
            .expect("the acquire was applied");
        assert_eq!(record.holder, "alice");
    }

    #[tokio::test(start_paused = true)]
    async fn apply_then_hang_applies_and_never_answers() {
        let (store, memory) = faulty();
        let mut alice = store.join("k", "alice").await.unwrap();
        store.control().set(&[Op::Acquire], Fault::ApplyThenHang);
        assert!(
            timeout(Duration::from_secs(1), alice.try_acquire(TTL))
                .await
                .is_err()
        );
        assert_eq!(memory.read("k").await.unwrap().unwrap().holder, "alice");
    }

    #[tokio::test(start_paused = true)]
    async fn hang_neither_applies_nor_answers() {
        let (store, memory) = faulty();
        let mut alice = store.join("k", "alice").await.unwrap();
        store.control().set(&Op::WRITES, Fault::Hang);
        assert!(
            timeout(Duration::from_secs(1), alice.try_acquire(TTL))
                .await
                .is_err()
        );
        assert_eq!(memory.read("k").await.unwrap(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn latency_and_slow_reply_delay_the_answer() {
        let (store, memory) = faulty();
        let mut alice = store.join("k", "alice").await.unwrap();
        let control = store.control();
        control.set(&[Op::Read], Fault::Latency(Duration::from_millis(300)));
        let start = Instant::now();
        assert_eq!(store.read("k").await.unwrap(), None);
        assert_eq!(start.elapsed(), Duration::from_millis(300));

        control.set(&[Op::Acquire], Fault::SlowReply(Duration::from_millis(500)));
        let start = Instant::now();
        let call = alice.try_acquire(TTL);
        // The store applied it before the answer arrives: a caller that gives up after 100 ms
        // still leaves the lease taken.
        assert!(timeout(Duration::from_millis(100), call).await.is_err());
        assert_eq!(memory.read("k").await.unwrap().unwrap().holder, "alice");
        assert_eq!(start.elapsed(), Duration::from_millis(100));
    }

    #[tokio::test]
    async fn probability_is_seeded_and_counted() {
        let outcomes = |seed| async move {
            let (store, _) = faulty();
            let control = store.control();
            control.seed(seed);
            control.set_sometimes(&[Op::Read], Fault::Unavailable, 0.5);
            let mut seen = Vec::new();
            for _ in 0..64 {
                seen.push(store.read("k").await.is_ok());
            }
            assert_eq!(control.calls(Op::Read), 64);
            let failed = seen.iter().filter(|ok| !**ok).count() as u64;
            assert_eq!(control.injected(Op::Read), failed);
            assert!(
                (8..56).contains(&failed),
                "{failed} of 64 failed at p = 0.5"
            );
            seen
        };
        assert_eq!(outcomes(7).await, outcomes(7).await);
    }

    #[tokio::test]
    async fn stores_of_one_control_share_faults() {
        let control = FaultControl::new();
        let memory = MemoryStore::new();
        let a = FaultyStore::with_control(Arc::new(memory.clone()), control.clone());
        let b = FaultyStore::with_control(Arc::new(memory), control.clone());
        control.set(&[Op::Read], Fault::Unavailable);
        assert!(a.read("k").await.is_err());
        assert!(b.read("k").await.is_err());
        assert_eq!(control.fault(Op::Read), Some(Fault::Unavailable));
        assert_eq!(control.injected(Op::Read), 2);
    }

    /// The engine steps down on time when the store stops answering, and a follower on a
    /// healthy connection takes over only once the lease has expired in the store.
    #[tokio::test(start_paused = true)]
    async fn a_leader_cut_off_from_the_store_steps_down_before_anyone_takes_over() {
        let memory = MemoryStore::new();
        let leader_store = FaultyStore::new(Arc::new(memory.clone()));
        let faults = leader_store.control();
        let build = |store: FaultyStore, id: &str| {
            LeaderElection::builder(store, "job")
                .lease_duration(Duration::from_millis(1500))
                .renew_interval(Duration::from_millis(300))
                .grace_period(Duration::from_millis(300))
                .instance_id(id)
                .clock(baton::Clock::tokio())
                .build()
                .unwrap()
        };
        let leader = build(leader_store, "leader");
        leader.start().await.unwrap();
        assert!(leader.is_leader());
        let follower = build(FaultyStore::new(Arc::new(memory.clone())), "follower");
        follower.start().await.unwrap();
        assert!(!follower.is_leader());

        // Every write of the leader now hangs: no renewal, no release, no new acquire.
        faults.set(&Op::WRITES, Fault::Hang);
        let start = Instant::now();
        while leader.is_leader() {
            assert!(!follower.is_leader(), "two leaders at once");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let stepped_down = start.elapsed();
        assert!(
            stepped_down <= Duration::from_millis(605),
            "renew + grace is 600 ms, the leader stepped down after {stepped_down:?}"
        );
        while !follower.is_leader() {
            assert!(
                !leader.is_leader(),
                "the cut-off leader must not lead again"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let took_over = start.elapsed();
        assert!(
            took_over >= Duration::from_millis(1500),
            "the lease was acquired for 1.5 s, the follower took over after {took_over:?}"
        );
        assert!(faults.injected(Op::Renew) >= 1);
        faults.clear_all();
        follower.stop().await.unwrap();
        leader.stop().await.unwrap();
    }
}
