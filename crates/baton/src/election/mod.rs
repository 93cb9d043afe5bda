//! The application's handle on an election: [`LeaderElection`].

mod driver;
mod events;
mod presence;
mod state;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::{broadcast, oneshot, watch};
use tokio_util::sync::CancellationToken;

pub use events::{Event, Events, LossReason};
pub(crate) use state::shutdown_budget;

use crate::{Clock, ElectionOptions, Error, FencingToken, LeaseStore, Result};

/// This candidate's role. Roles may be added in minor releases: match with a `_` arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Role {
    /// Not started yet.
    Idle,
    /// Campaigning; someone else leads, or nobody is known to.
    Follower,
    /// Leading. Check [`LeaderElection::is_leader`] before acting: it also checks the deadline.
    Leader,
    /// Stopped; the lease, if any, has been released.
    Stopped,
}

/// A snapshot of an election, published on [`LeaderElection::state`] at every change. Fields
/// may be added in minor releases.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ElectionState {
    /// This candidate's role.
    pub role: Role,
    /// The leader as this candidate last learned it from the store.
    pub leader: Option<String>,
    /// The fencing token of this candidate's current term, while it leads.
    pub token: Option<FencingToken>,
    /// The last store error, cleared by the next successful store call.
    pub last_error: Option<String>,
}

/// Events buffered per subscriber. Tokio allocates every slot up front, for each election,
/// so this stays small: a subscriber that falls further behind skips events (and the state
/// channel still has the truth).
pub(crate) const EVENT_BUFFER: usize = 16;

/// State shared by the handle, the engine task and leadership scopes.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The key, the candidate id, the timing: shared with the state machine
    /// ([`state::Election`]), so an election keeps them once.
    pub config: Arc<state::Config>,
    pub options: ElectionOptions,
    pub clock: Clock,
    pub store: Arc<dyn LeaseStore>,
    /// Local leadership deadline on `clock`, in nanoseconds; 0 when not leading. This and the
    /// three times below are published by the driver from the state machine
    /// (`state::Election`) after every step.
    pub deadline: AtomicU64,
    /// When the engine last made progress (finished a store call or a wait), on `clock`, in
    /// nanoseconds: a campaign that stops moving shows here.
    pub progress: AtomicU64,
    /// When the engine's current wait ends, on `clock`, in nanoseconds: a follower waiting
    /// for a complete change stream ([`crate::COMPLETE_WATCH_RECHECK_LEASES`] leases) is not
    /// stalled before then.
    pub progress_due: AtomicU64,
    /// Send time of the last successful acquire or renewal of the current term, in
    /// nanoseconds on `clock`.
    pub renewed: AtomicU64,
    /// The current [`ElectionState`], and its watch channel once someone asked for it.
    pub state: StateCell,
    /// Made by the first [`LeaderElection::subscribe`]: until then events have no receiver,
    /// and the channel's slots (allocated up front) would cost every election for nothing.
    pub events: OnceLock<broadcast::Sender<Event>>,
    /// The handle of `baton_renew_duration_seconds` for this key, registered with the metrics
    /// recorder at the first renewal and kept, so that a renewal records without building the
    /// metric's name and labels again (that allocates on every renewal otherwise).
    pub renew_duration: OnceLock<metrics::Histogram>,
    /// The current term's scope, while leading.
    pub scope: Mutex<Option<Term>>,
    pub control: Mutex<Control>,
    /// The current run on the driver, if any. `start` and `stop` hold this lock for their
    /// whole work, so a `start` waits for a `stop` in progress to release the lease before a
    /// new run begins. The run stays here until someone has seen it finish: a `stop()` whose
    /// future was dropped midway (a timeout around it, a `select!`) leaves it for the next
    /// `start` to wait for, never a second run beside the first.
    pub run: tokio::sync::Mutex<Option<driver::RunHandle>>,
    /// Whether the current run is alive on its driver (read by `health`).
    pub running: std::sync::atomic::AtomicBool,
    /// The live presence records at the key, as this candidate's last
    /// [`announce`](LeaseStore::announce) returned them; `None` before the first, without
    /// presence, or on a store that keeps none.
    pub presence: Mutex<Option<Vec<crate::Presence>>>,
}

impl Shared {
    /// Whether to answer a handoff request to `to` ([`presence::admits_request`]).
    pub fn admits_request(&self, to: Option<&str>) -> bool {
        let live = self.presence.lock().unwrap_or_else(|e| e.into_inner());
        presence::admits_request(to, live.as_deref())
    }
}

/// What every [`Leadership`] of one term shares: its token, its cancellation, and a sender
/// whose clones keep the engine from releasing the lease while any scope of the term lives.
#[derive(Debug, Clone)]
pub(crate) struct Term {
    pub token: FencingToken,
    pub cancel: CancellationToken,
    pub alive: Arc<driver::TermAlive>,
}

#[derive(Debug, Default)]
pub(crate) struct Control {
    /// Stops the current run: `stop()`, or the last handle dropped.
    pub stop: Option<driver::Stopper>,
    /// Stops the current run's presence task ([`presence::keep`]), and the task, which ends
    /// once it has removed the record.
    pub presence: Option<(CancellationToken, tokio::task::JoinHandle<()>)>,
}

/// Fail with [`Error::NoSuchCandidate`] when `store` can tell that `to` is not a live
/// candidate at `key`: the store keeps presence records ([`LeaseStore::candidates`]), some
/// candidate at the key has one, and `to` has none. Where nobody has one, it cannot tell and
/// answers `Ok`. The check of [`LeaderElection::hand_over`] and of `baton handoff --to`.
pub async fn check_alive(store: &dyn LeaseStore, key: &str, to: &str) -> Result<()> {
    let live = store.candidates(key).await?;
    if presence::admits_request(Some(to), live.as_deref()) {
        return Ok(());
    }
    let mut live: Vec<String> = live
        .unwrap_or_default()
        .into_iter()
        .map(|p| p.candidate)
        .collect();
    live.sort();
    Err(Error::NoSuchCandidate {
        candidate: to.to_owned(),
        live,
    })
}

/// Wait for a run to finish and return what it reports. A run whose driver went away (a
/// runtime shutting down) reports nothing.
async fn finish(run: &mut driver::RunHandle) -> Result<()> {
    run.outcome().await
}

/// An election's current [`ElectionState`], and the watch channel that publishes it, made by
/// the first [`LeaderElection::state`] or [`LeaderElection::leadership`]: until then the
/// channel (its value and eight notifiers, about 400 bytes) would cost every election for
/// nothing.
#[derive(Debug, Default)]
pub(crate) struct StateCell {
    current: Mutex<ElectionState>,
    channel: OnceLock<watch::Sender<ElectionState>>,
}

impl Default for ElectionState {
    fn default() -> Self {
        ElectionState {
            role: Role::Idle,
            leader: None,
            token: None,
            last_error: None,
        }
    }
}

impl StateCell {
    /// The current state.
    pub fn get(&self) -> std::sync::MutexGuard<'_, ElectionState> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Change the state with `f`; if `f` says it changed, publish it.
    pub fn modify(&self, f: impl FnOnce(&mut ElectionState) -> bool) {
        let mut current = self.get();
        // Under the lock, so the channel sees every state in order.
        if f(&mut current)
            && let Some(channel) = self.channel.get()
        {
            channel.send_replace(current.clone());
        }
    }

    /// Publish `state` (subscribers are told even if it did not change), and run `before_telling` once it is in place but before any subscriber
    /// is told: the driver shows a new term's deadline there, so that `is_leader()` is never
    /// true before the term's token is readable, and is true for whoever the news wakes.
    pub fn publish_then(&self, state: ElectionState, before_telling: impl FnOnce()) {
        self.modify(|s| {
            *s = state;
            before_telling();
            true
        });
    }

    /// A receiver of every state from now on.
    pub fn subscribe(&self) -> watch::Receiver<ElectionState> {
        let current = self.get();
        // Under the lock, so no state published meanwhile is missed.
        self.channel
            .get_or_init(|| watch::Sender::new(current.clone()))
            .subscribe()
    }
}

impl Shared {
    /// Whether this candidate leads now: the deadline the state machine published has not
    /// passed ([`state::leads`]).
    pub fn is_leader_now(&self) -> bool {
        state::leads(
            self.deadline(),
            self.clock.now(),
            self.config.unsafe_ignore_deadline,
        )
    }

    pub fn deadline(&self) -> Option<Duration> {
        match self.deadline.load(Ordering::Acquire) {
            0 => None,
            d => Some(Duration::from_nanos(d)),
        }
    }
}

/// Whether an election is working as it should, for a health endpoint
/// ([`LeaderElection::health`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// False when the process should be considered broken.
    pub healthy: bool,
    /// What was checked, or what is wrong.
    pub detail: String,
}

/// Stops the election when the last [`LeaderElection`] clone is dropped.
#[derive(Debug)]
struct DropGuard(Arc<Shared>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        let control = self.0.control.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(stop) = &control.stop {
            // The engine task releases the lease in the background, if the runtime lives on.
            stop.cancel();
        }
        if let Some((presence, _)) = &control.presence {
            presence.cancel();
        }
    }
}

/// One candidate in one election.
///
/// Build it with [`LeaderElection::builder`], [`start`](Self::start) it, and either ask
/// [`is_leader`](Self::is_leader) before leader-only work or run that work inside
/// [`run_while_leader`](Self::run_while_leader), which cancels it no later than the local
/// deadline. [`stop`](Self::stop) releases the lease so a follower takes over at once.
///
/// Clones share the election. Dropping the last clone stops it and releases the lease in the
/// background (best effort: prefer an explicit `stop().await`).
///
/// ```
/// use baton::{LeaderElection, MemoryStore};
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> baton::Result<()> {
/// let store = MemoryStore::new();
/// let election = LeaderElection::builder(store, "myapp:leader")
///     .lease_duration(Duration::from_secs(30))
///     .renew_interval(Duration::from_secs(10))
///     .grace_period(Duration::from_secs(15))
///     .instance_id("instance-1")
///     .build()?;
/// let mut events = election.subscribe();
/// election.start().await?;
/// assert!(election.is_leader());
/// assert_eq!(election.current_leader_id().as_deref(), Some("instance-1"));
/// println!("{:?}", events.recv().await);
/// election.stop().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct LeaderElection {
    shared: Arc<Shared>,
    _guard: Arc<DropGuard>,
}

/// Builds a [`LeaderElection`]; see [`LeaderElection::builder`].
#[derive(Debug)]
#[must_use]
pub struct LeaderElectionBuilder {
    store: Arc<dyn LeaseStore>,
    key: String,
    options: ElectionOptions,
    clock: Clock,
    unsafe_ignore_deadline: bool,
    listen_while_leading: bool,
    presence: Option<bool>,
    priority: u32,
}

impl LeaderElectionBuilder {
    /// All options at once.
    pub fn options(mut self, options: ElectionOptions) -> Self {
        self.options = options;
        self
    }
    /// How long a lease lasts without renewal (default 15 s).
    pub fn lease_duration(mut self, d: Duration) -> Self {
        self.options.lease_duration = d;
        self
    }
    /// How often the leader renews (default 5 s).
    pub fn renew_interval(mut self, d: Duration) -> Self {
        self.options.renew_interval = d;
        self
    }
    /// How long past a missed renewal the leader keeps trying (default 5 s).
    pub fn grace_period(mut self, d: Duration) -> Self {
        self.options.grace_period = d;
        self
    }
    /// This candidate's id (default `<hostname>-<pid>`).
    pub fn instance_id(mut self, id: impl Into<String>) -> Self {
        self.options.instance_id = Some(id.into());
        self
    }
    /// The clock deadlines are measured on. Defaults to [`Clock::boot`]; tests pass
    /// [`Clock::tokio`] to drive time with `tokio::time::pause`.
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Whether the leader listens for handoff requests ([`LeaseStore::request_handoff`],
    /// `baton handoff`) while it leads (default: no). With it, a request reaches the leader
    /// through its store's push (Redis; the memory store; SQLite within one process) and the
    /// leader hands over within milliseconds; without it, at its next renewal (half a renew
    /// interval on average). It costs a change subscription for every leading election on a
    /// store that pushes, which a process with thousands of elections may not want; `baton`
    /// turns it on. The first attempt of a listening candidate also subscribes before it
    /// tries, so that a first leader listens too.
    pub fn listen_for_handoff_requests(mut self, on: bool) -> Self {
        self.listen_while_leading = on;
        self
    }

    /// This candidate's priority (default 0). A follower whose priority is higher than the
    /// leader's asks the leader to hand the lease over to it ([`LeaderElection::hand_over`]'s
    /// path, through [`LeaseStore::request_handoff`]), so the lease moves to the candidate that
    /// wants it most, without a leaderless gap; equal priorities never displace a leader.
    ///
    /// Priorities are written in presence records, so setting one turns presence on
    /// ([`announce_presence`](Self::announce_presence)). They work on stores that keep
    /// presence records (every store of this crate; [`LeaseStore::announce`]) and between
    /// candidates that announce themselves: a leader whose priority cannot be seen keeps the
    /// lease.
    pub fn priority(mut self, priority: u32) -> Self {
        self.priority = priority;
        self.presence.get_or_insert(true);
        self
    }

    /// Whether this candidate keeps a presence record at the key (default: only with a
    /// [`priority`](Self::priority)). It writes the record ([`LeaseStore::announce`]) when the
    /// election starts and every renew interval after, with a TTL of one lease, and removes it
    /// when the election stops. With it, `baton handoff --to ID` can refuse an `ID` that is not
    /// running, and a leader does not hand over to a candidate without a record. It costs one
    /// store write per renew interval per election; `baton` turns it on.
    pub fn announce_presence(mut self, on: bool) -> Self {
        self.presence = Some(on);
        self
    }

    /// **Unsafe, for testing safety checkers only.** Keeps reporting leadership past the
    /// deadline and ignores failed renewals until the store says the lease is lost. A checker
    /// that cannot catch an election built this way proves nothing.
    ///
    /// Only with the `unsafe-testing` feature, which nothing but Baton's chaos harness enables.
    #[doc(hidden)]
    #[cfg(feature = "unsafe-testing")]
    pub fn unsafe_ignore_deadline_for_testing(mut self) -> Self {
        self.unsafe_ignore_deadline = true;
        self
    }

    /// Validate the options and build the election (not yet started).
    pub fn build(self) -> Result<LeaderElection> {
        crate::options::validate_key(&self.key)?;
        self.options.validate()?;
        let candidate = self.options.effective_instance_id();
        let shared = Arc::new(Shared {
            config: Arc::new(state::Config {
                key: self.key,
                candidate,
                timing: self.options.timing(),
                unsafe_ignore_deadline: self.unsafe_ignore_deadline,
                listen_while_leading: self.listen_while_leading,
                presence: self.presence.unwrap_or(false),
                priority: self.priority,
            }),
            options: self.options,
            clock: self.clock,
            store: self.store,
            deadline: AtomicU64::new(0),
            progress: AtomicU64::new(0),
            progress_due: AtomicU64::new(0),
            renewed: AtomicU64::new(0),
            state: StateCell::default(),
            events: OnceLock::new(),
            renew_duration: OnceLock::new(),
            scope: Mutex::new(None),
            control: Mutex::new(Control::default()),
            run: tokio::sync::Mutex::new(None),
            running: std::sync::atomic::AtomicBool::new(false),
            presence: Mutex::new(None),
        });
        Ok(LeaderElection {
            _guard: Arc::new(DropGuard(shared.clone())),
            shared,
        })
    }
}

impl LeaderElection {
    /// Start building an election at `key` on `store`, with the seed's defaults.
    pub fn builder(store: impl LeaseStore, key: impl Into<String>) -> LeaderElectionBuilder {
        Self::builder_dyn(Arc::new(store), key)
    }

    /// Like [`builder`](Self::builder), for a store chosen at run time.
    pub fn builder_dyn(
        store: Arc<dyn LeaseStore>,
        key: impl Into<String>,
    ) -> LeaderElectionBuilder {
        LeaderElectionBuilder {
            store,
            key: key.into(),
            options: ElectionOptions::default(),
            clock: Clock::default(),
            unsafe_ignore_deadline: false,
            listen_while_leading: false,
            presence: None,
            priority: 0,
        }
    }

    /// Join the election. Returns once the first attempt has an outcome, so
    /// [`is_leader`](Self::is_leader) and [`current_leader_id`](Self::current_leader_id) are
    /// meaningful right after.
    ///
    /// If the store is unreachable, `start` still returns `Ok` and the election keeps trying,
    /// with capped, jittered backoff (the error is logged and kept in
    /// [`ElectionState::last_error`]). Errors that retrying cannot fix, such as
    /// [`Error::Config`] or [`Error::ForeignData`] on the first attempt, are returned and the
    /// election stops.
    ///
    /// After [`stop`](Self::stop) (or after the election stopped on such an error), `start`
    /// joins the election again, with the same id, options and subscribers: a new term gets a
    /// new fencing token. While the election runs, it fails with [`Error::AlreadyStarted`].
    ///
    /// Must be called inside a tokio runtime.
    pub async fn start(&self) -> Result<()> {
        let mut run = self.shared.run.lock().await;
        if let Some(task) = run.as_mut() {
            let stopping = self
                .shared
                .control
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .stop
                .as_ref()
                .is_some_and(driver::Stopper::is_cancelled);
            if !task.is_finished() && !stopping {
                return Err(Error::AlreadyStarted);
            }
            // A run that ended, or one being stopped by a `stop()` nobody waited for: let it
            // release and leave before the new run joins.
            if let Err(e) = finish(task).await {
                tracing::warn!(error = %e, "the previous run ended with an error");
            }
            *run = None;
        }
        let (first_tx, first_rx) = oneshot::channel();
        // A run after a stop starts from scratch, not from the last run's end.
        self.shared.state.modify(|s| {
            let restart = s.role == Role::Stopped;
            if restart {
                s.role = Role::Idle;
                s.last_error = None;
            }
            restart
        });
        // The last run's presence record is removed before this run writes its own, so that
        // a late removal cannot undo the new record.
        let previous = self
            .shared
            .control
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .presence
            .take();
        if let Some((previous, task)) = previous {
            previous.cancel();
            let _ = task.await;
        }
        self.shared.running.store(true, Ordering::Release);
        let (stop, handle) = driver::start(self.shared.clone(), first_tx);
        self.shared
            .control
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .stop = Some(stop);
        if self.shared.config.presence {
            let done = CancellationToken::new();
            let task = tokio::spawn(presence::keep(self.shared.clone(), done.clone()));
            self.shared
                .control
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .presence = Some((done, task));
        }
        let task = run.insert(handle);
        // The first outcome comes before the engine's first wait, within one store call's
        // timeout, so holding the lock meanwhile delays a concurrent `stop()` only that long.
        let first = first_rx.await.unwrap_or(Err(Error::Stopped));
        if first.is_err() {
            // The run is over (an error retrying cannot fix, or stopped): wait until it has
            // left the election, so that a `start()` right after this one finds it finished.
            let _ = finish(task).await;
            *run = None;
        }
        first
    }

    /// Leave the election gracefully: cancel the leadership scope, emit
    /// [`Event::LostLeadership`] with [`LossReason::Stopped`], release the lease so a follower
    /// takes over at once, and leave. Idempotent: stopping an election that is not running
    /// returns `Ok`.
    ///
    /// The release waits until every [`Leadership`] scope of the term has been dropped (at
    /// most until the lease would have expired), so a follower never starts while this
    /// leader's work still runs.
    ///
    /// If this future is dropped before it completes, the election still stops and releases
    /// in the background, and a later [`start`](Self::start) waits for that to finish.
    ///
    /// # Errors
    ///
    /// [`Error::ReleaseFailed`] when the store could not be told (unreachable, or no answer in
    /// time) and still holds this candidate's lease. The election is stopped all the same, and
    /// this candidate does not act as leader; the lease expires in the store by itself, so
    /// followers take over within the time the error names rather than at once. Nothing
    /// needs to be retried.
    pub async fn stop(&self) -> Result<()> {
        let mut run = self.shared.run.lock().await;
        if let Some(stop) = &self
            .shared
            .control
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .stop
        {
            stop.cancel();
        }
        let presence = self
            .shared
            .control
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .presence
            .take();
        if let Some((presence, task)) = presence {
            // The record goes with the election: `stop` returns once it is removed (or its
            // removal timed out: it then runs out within one lease).
            presence.cancel();
            let _ = task.await;
        }
        let Some(task) = run.as_mut() else {
            return Ok(());
        };
        let outcome = finish(task).await;
        *run = None;
        outcome
    }

    /// Hand leadership over on purpose: to candidate `to`, or (`None`) to any other
    /// candidate. For a rolling deploy, to drain a zone, or to move the leader next to its
    /// data, without the leaderless gap of a stop and without leaving the next leader to a
    /// race.
    ///
    /// The term ends as for a stop: the leadership scope is cancelled,
    /// [`Event::LostLeadership`] fires with [`LossReason::HandedOver`], and the lease is given
    /// up only once every [`Leadership`] of the term is dropped (at most until the lease would
    /// have expired), so two leaders never act at once. The store then keeps a
    /// [`HandoffMark`](crate::HandoffMark) for one lease: only `to` may take the key (with
    /// `None`, anyone but this candidate). `to` is woken at once where the store pushes
    /// changes. This candidate stays in the election as a follower. A handoff to a candidate
    /// that is not running ends in a normal election when the mark runs out, within one lease.
    ///
    /// Returns once the store holds the mark. Who leads next shows in
    /// [`current_leader_id`](Self::current_leader_id) and in the events.
    ///
    /// Stores outside this crate that do not implement
    /// [`Candidacy::hand_over`](crate::Candidacy::hand_over) release instead: whoever acquires
    /// first leads.
    ///
    /// # Errors
    ///
    /// * [`Error::Config`] when `to` is this candidate's own id or not a valid id;
    /// * [`Error::NoSuchCandidate`] when the store keeps presence records and `to` has none
    ///   (it is not running); the term goes on;
    /// * [`Error::NotLeader`] when this candidate does not hold the lease (or is already
    ///   handing over); [`Error::Stopped`] when the election is not running;
    /// * the store's error when it could not be told. The term has ended all the same; the
    ///   lease then expires in the store as after a failed release.
    pub async fn hand_over(&self, to: Option<&str>) -> Result<()> {
        if let Some(to) = to {
            if to.trim().is_empty() || crate::options::has_control(to) {
                return Err(Error::Config(format!(
                    "cannot hand over to {to:?}: not a candidate id (ids are non-empty and printable, e.g. worker-1)"
                )));
            }
            if to == self.shared.config.candidate {
                return Err(Error::Config(format!(
                    "cannot hand over to {to:?}: that is this candidate itself"
                )));
            }
            check_alive(&*self.shared.store, &self.shared.config.key, to).await?;
        }
        let (tx, rx) = oneshot::channel();
        {
            let control = self
                .shared
                .control
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            match &control.stop {
                Some(stop) if !stop.is_cancelled() => stop.hand_over(to.map(str::to_owned), tx),
                _ => return Err(Error::Stopped),
            }
        }
        rx.await.unwrap_or(Err(Error::Stopped))
    }

    /// This candidate's id.
    pub fn candidate_id(&self) -> &str {
        &self.shared.config.candidate
    }

    /// The election key.
    pub fn key(&self) -> &str {
        &self.shared.config.key
    }

    /// The options in effect.
    pub fn options(&self) -> &ElectionOptions {
        &self.shared.options
    }

    /// Whether this candidate leads *now*: it holds the lease and its local deadline has not
    /// passed. Checked against the clock at every call, so a stalled event loop or a paused
    /// process never reports stale leadership.
    pub fn is_leader(&self) -> bool {
        self.shared.is_leader_now()
    }

    /// The leader as this candidate last learned it from the store (itself, while it leads).
    pub fn current_leader_id(&self) -> Option<String> {
        if self.is_leader() {
            return Some(self.shared.config.candidate.clone());
        }
        self.shared.state.get().leader.clone()
    }

    /// The fencing token of the current term, while this candidate leads.
    pub fn fencing_token(&self) -> Option<FencingToken> {
        if !self.is_leader() {
            return None;
        }
        self.shared.state.get().token
    }

    /// Time left before this candidate must stop acting as leader, while it leads.
    pub fn time_to_deadline(&self) -> Option<Duration> {
        let deadline = self.shared.deadline()?;
        deadline.checked_sub(self.shared.clock.now())
    }

    /// Whether this election is working: a leader must have renewed within
    /// `renew_interval + grace_period` and still be before its deadline (a leader past its
    /// deadline that has not stepped down is wedged); a follower must keep campaigning (a store
    /// call or a wake-up at least every two leases, or, while it waits longer on purpose for a
    /// complete change stream, within a lease of that wait's end); the engine must not have
    /// stopped on its own. Unlike client-go's `HealthzAdaptor`, a wedged process is unhealthy whatever it
    /// believes about its role.
    pub fn health(&self) -> Health {
        let shared = &self.shared;
        let at = |nanos: &AtomicU64| Duration::from_nanos(nanos.load(Ordering::Acquire));
        let (role, last_error) = {
            let s = shared.state.get();
            (s.role, s.last_error.clone())
        };
        let control = shared.control.lock().unwrap_or_else(|e| e.into_inner());
        let stopped_on_purpose = control.stop.as_ref().is_some_and(|s| s.is_cancelled());
        drop(control);
        let view = state::HealthView {
            role,
            last_error,
            stopped_on_purpose,
            task_ended: !shared.running.load(Ordering::Acquire),
            deadline: shared.deadline(),
            renewed: at(&shared.renewed),
            progress: at(&shared.progress),
            progress_due: at(&shared.progress_due),
            unsafe_mode: shared.config.unsafe_ignore_deadline,
        };
        state::health(&view, shared.clock.now(), &shared.config.timing)
    }

    /// Subscribe to events from now on.
    pub fn subscribe(&self) -> Events {
        Events {
            rx: self
                .shared
                .events
                .get_or_init(|| broadcast::Sender::new(EVENT_BUFFER))
                .subscribe(),
            missed: 0,
        }
    }

    /// A channel that always holds the current [`ElectionState`].
    pub fn state(&self) -> watch::Receiver<ElectionState> {
        self.shared.state.subscribe()
    }

    /// Wait until this candidate leads, and return the [`Leadership`] scope of that term.
    /// Fails with [`Error::Stopped`] if the election stops first.
    pub async fn leadership(&self) -> Result<Leadership> {
        let mut state = self.shared.state.subscribe();
        loop {
            {
                let s = state.borrow_and_update();
                if s.role == Role::Stopped {
                    return Err(Error::Stopped);
                }
            }
            if let Some(scope) = self.current_scope() {
                return Ok(scope);
            }
            if state.changed().await.is_err() {
                return Err(Error::Stopped);
            }
        }
    }

    fn current_scope(&self) -> Option<Leadership> {
        if !self.is_leader() {
            return None;
        }
        let scope = self.shared.scope.lock().unwrap_or_else(|e| e.into_inner());
        let term = scope.as_ref()?;
        Some(Leadership {
            shared: self.shared.clone(),
            token: term.token,
            cancel: term.cancel.clone(),
            _alive: term.alive.clone(),
        })
    }

    /// The seed's "leader work pattern", made safe: wait for leadership, run `work` with the
    /// term's [`Leadership`], and cancel (drop) it the moment leadership ends, no later than
    /// the local deadline. If leadership is lost, wait to lead again and run `work` anew.
    ///
    /// Returns `work`'s output once it completes while leading, or [`Error::Stopped`] if the
    /// election stops first.
    pub async fn run_while_leader<F, Fut, T>(&self, mut work: F) -> Result<T>
    where
        F: FnMut(Leadership) -> Fut,
        Fut: Future<Output = T>,
    {
        loop {
            let scope = self.leadership().await?;
            let lost = scope.clone();
            tokio::select! {
                biased;
                () = lost.lost() => continue,
                out = work(scope) => return Ok(out),
            }
        }
    }
}

/// One term of leadership: its fencing token, and a signal that fires when it ends.
///
/// The signal fires no later than the local deadline even if the election's own task is
/// delayed: [`Leadership::lost`] also watches the deadline itself.
///
/// While any clone of a term's `Leadership` is alive, the election does not release that
/// term's lease after stepping down (it waits, at most until the lease would have expired in
/// the store anyway). Drop the scope once the leader's work has really stopped: a follower
/// can then take over at once, and never while that work still runs.
/// [`LeaderElection::run_while_leader`] does this for you.
#[derive(Debug, Clone)]
pub struct Leadership {
    shared: Arc<Shared>,
    token: FencingToken,
    cancel: CancellationToken,
    _alive: Arc<driver::TermAlive>,
}

impl Leadership {
    /// The fencing token of this term. Pass it to every resource the leader writes.
    pub fn token(&self) -> FencingToken {
        self.token
    }

    /// The election key.
    pub fn key(&self) -> &str {
        &self.shared.config.key
    }

    /// This candidate's id.
    pub fn candidate_id(&self) -> &str {
        &self.shared.config.candidate
    }

    /// Whether this term is still current: not cancelled and before the deadline.
    pub fn is_current(&self) -> bool {
        !self.cancel.is_cancelled() && self.shared.is_leader_now()
    }

    /// Resolves when this term ends: step-down, stop, or the deadline passing.
    pub async fn lost(&self) {
        loop {
            if !self.is_current() {
                return;
            }
            let Some(deadline) = self.shared.deadline() else {
                return;
            };
            let now = self.shared.clock.now();
            let wait = deadline.saturating_sub(now);
            if !state::leads(Some(deadline), now, false) {
                if self.shared.config.unsafe_ignore_deadline {
                    // The test-only unsafe variant ignores deadlines: only cancellation ends it.
                    self.cancel.cancelled().await;
                    return;
                }
                continue;
            }
            tokio::select! {
                () = self.cancel.cancelled() => return,
                () = driver::sleep_on(&self.shared.clock, wait) => {}
            }
        }
    }

    /// A cancellation token that the engine cancels when this term ends.
    pub fn cancellation(&self) -> CancellationToken {
        self.cancel.child_token()
    }
}
