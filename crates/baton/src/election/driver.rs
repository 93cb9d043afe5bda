//! The driver: one task per tokio runtime and clock that carries out what
//! [`state::step`](super::state) decides, for every election started there.
//!
//! Every decision (when to renew, when to step down, how long a follower waits, what to
//! report) is made by the pure state machine in [`super::state`]. The driver only performs its
//! [`Action`]s: store calls (each with a timeout), timers, listening to change streams, the
//! leadership scopes, the state channels and events. It feeds every answer back as an
//! [`Input`], with the clock's time.
//!
//! Many elections share one driver (docs/decisions.md D76): one task, one timer queue
//! ([`DelayQueue`]), one set of store calls in flight ([`FuturesUnordered`]), and change
//! streams and scope receivers polled by the driver itself with a waker per election, so an
//! idle election costs its state and a timer entry, not a task, a stack of futures and
//! timers of its own. Store calls of many elections go out concurrently, and each store
//! batches what it can (Redis renewals, for one).
//!
//! Each election is a *slot*. A slot is either in a store call (at most one, as the state
//! machine asks) or waiting. A waiting slot is given, in this order, its change stream's next
//! item (while it listens), the end of its term's scopes (while it waits for them), and its
//! timer: what the per-election task's `biased` select gave it before. What arrives while the
//! slot is in a call waits until the call is answered: a stream is polled only while its
//! slot waits and listens, as before. A stop is delivered at once, in a call or not; the
//! state machine says whether the call is abandoned (a renewal) or finishes first.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use futures_util::future::{AbortHandle, Abortable, BoxFuture, FutureExt, poll_fn};
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::task::AtomicWaker;
use tokio::sync::{mpsc, oneshot};
use tokio_util::time::{DelayQueue, delay_queue};
use tracing::{Instrument, Span, info, info_span};

use super::state::{Action, Election, Input};
use super::{Shared, Term};
use crate::store::{Candidacy, Changes, Renew};
use crate::{Clock, Error, Result};

/// Sleep for `d` as measured on `clock`. Timers follow the monotonic clock, which stops
/// during a machine suspend; the clock's jump signal (a suspend detector for the boot clock,
/// [`Clock::jump`] for the test clock) wakes the sleep early so it can re-check.
pub(crate) async fn sleep_on(clock: &Clock, d: Duration) {
    sleep_until(clock, clock.now() + d).await;
}

/// Sleep until `target` on `clock` (see [`sleep_on`]).
async fn sleep_until(clock: &Clock, target: Duration) {
    loop {
        let jumped = clock.jump_signal().notified();
        tokio::pin!(jumped);
        jumped.as_mut().enable();
        let now = clock.now();
        if now >= target {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(target - now) => {}
            () = jumped => {}
        }
    }
}

/// Run a store call with a timeout on `clock`; a timeout becomes [`Error::Timeout`] (an
/// indeterminate outcome). On the election's clock, not tokio's: after a machine suspend, a
/// renewal that hung across it times out as soon as the machine resumes (the boot clock
/// counted the suspend), so the leader steps down then, not a renewal timeout later.
async fn with_timeout<T>(
    clock: &Clock,
    limit: Duration,
    call: impl Future<Output = Result<T>>,
) -> Result<T> {
    tokio::select! {
        biased;
        r = call => r,
        () = sleep_on(clock, limit) => Err(Error::Timeout(limit)),
    }
}

/// A run's number, unique in the process.
type Id = u64;

/// What the handles send their driver.
pub(crate) enum Command {
    /// Begin a run.
    Start(Box<Run>),
    /// Stop a run (delivered to the state machine once).
    Stop(Id),
    /// Hand a run's lease over (`LeaderElection::hand_over`); the answer goes to the sender.
    HandOver(Id, Option<String>, oneshot::Sender<Result<()>>),
}

/// A run to begin.
pub(crate) struct Run {
    id: Id,
    shared: Arc<Shared>,
    first: oneshot::Sender<Result<()>>,
    done: oneshot::Sender<Result<()>>,
    finished: Arc<AtomicBool>,
}

/// Stops one run: what [`stop`](super::LeaderElection::stop) and the last handle's drop call.
#[derive(Debug)]
pub(crate) struct Stopper {
    id: Id,
    tx: mpsc::UnboundedSender<Command>,
    stopped: AtomicBool,
}

impl Stopper {
    /// Ask the run to stop (once; later calls do nothing).
    pub fn cancel(&self) {
        if !self.stopped.swap(true, Ordering::AcqRel) {
            // A driver that is gone has finished the run already.
            let _ = self.tx.send(Command::Stop(self.id));
        }
    }

    /// Ask the run to hand its lease over to `to` (or to anyone else); `reply` learns how it
    /// went. A run that is over drops `reply`.
    pub fn hand_over(&self, to: Option<String>, reply: oneshot::Sender<Result<()>>) {
        let _ = self.tx.send(Command::HandOver(self.id, to, reply));
    }

    /// Whether stop was asked for.
    pub fn is_cancelled(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }
}

/// A started run, as `start()` keeps it until someone has seen it finish.
#[derive(Debug)]
pub(crate) struct RunHandle {
    done: oneshot::Receiver<Result<()>>,
    finished: Arc<AtomicBool>,
}

impl RunHandle {
    /// Whether the run is over.
    pub fn is_finished(&self) -> bool {
        self.finished.load(Ordering::Acquire)
    }

    /// The run's outcome, once it is over. A run whose driver went away (its runtime shut
    /// down) reports nothing.
    pub async fn outcome(&mut self) -> Result<()> {
        (&mut self.done).await.unwrap_or(Ok(()))
    }
}

/// Which driver an election runs on: one per tokio runtime and clock.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct DriverKey {
    runtime: tokio::runtime::Id,
    clock: usize,
}

/// The drivers of the process, by runtime and clock. A driver removes itself when its last
/// election is over, under this lock, after making sure nothing was sent to it meanwhile;
/// starts send under this lock. So no start is ever sent to a driver that is exiting.
fn drivers() -> &'static Mutex<HashMap<DriverKey, mpsc::UnboundedSender<Command>>> {
    static DRIVERS: OnceLock<Mutex<HashMap<DriverKey, mpsc::UnboundedSender<Command>>>> =
        OnceLock::new();
    DRIVERS.get_or_init(Default::default)
}

/// Begin a run of `shared`'s election on its driver (started if there is none). `first`
/// learns how the first attempt went. Must be called inside a tokio runtime.
pub(crate) fn start(
    shared: Arc<Shared>,
    first: oneshot::Sender<Result<()>>,
) -> (Stopper, RunHandle) {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    let key = DriverKey {
        runtime: tokio::runtime::Handle::current().id(),
        clock: shared.clock.identity(),
    };
    let (done_tx, done) = oneshot::channel();
    let finished = Arc::new(AtomicBool::new(false));
    let mut run = Box::new(Run {
        id,
        shared: shared.clone(),
        first,
        done: done_tx,
        finished: finished.clone(),
    });
    let mut drivers = drivers().lock().unwrap_or_else(|e| e.into_inner());
    // Drivers of runtimes that shut down.
    drivers.retain(|_, tx| !tx.is_closed());
    let tx = loop {
        let tx = drivers
            .entry(key.clone())
            .or_insert_with(|| Driver::spawn(key.clone(), shared.clock.clone()));
        match tx.send(Command::Start(run)) {
            Ok(()) => break tx.clone(),
            Err(mpsc::error::SendError(Command::Start(back))) => {
                // Its runtime is shutting down: start another (which goes the same way).
                run = back;
                drivers.remove(&key);
            }
            Err(_) => unreachable!("a start was sent"),
        }
    };
    drop(drivers);
    let stopper = Stopper {
        id,
        tx,
        stopped: AtomicBool::new(false),
    };
    (stopper, RunHandle { done, finished })
}

/// Slots whose change stream or term scopes woke, for the driver to look at.
#[derive(Default)]
struct Ready {
    queue: Mutex<VecDeque<Id>>,
    driver: AtomicWaker,
}

/// The waker a slot's stream is polled with, and its term's scopes wake.
struct SlotWaker {
    id: Id,
    ready: Arc<Ready>,
}

impl Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.ready
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(self.id);
        self.ready.driver.wake();
    }
}

/// Held by the term's entry in the election and by every [`Leadership`](super::Leadership)
/// of the term: when the last of them is dropped, the driver is woken to see that the
/// term's scopes are gone. An `Arc` and a waker, where a channel would cost every leader a
/// channel's allocation.
#[derive(Debug)]
pub(crate) struct TermAlive {
    waker: Waker,
}

impl Drop for TermAlive {
    fn drop(&mut self) {
        self.waker.wake_by_ref();
    }
}

/// A store call's answer, before the driver keeps what it returned (a candidacy, a stream).
enum Answer {
    Joined(Result<Box<dyn Candidacy>>),
    Subscribed(Result<Option<Changes>>),
    Input(Input),
}

/// A store call in flight: the slot, the call's number, the answer.
type Call = Abortable<BoxFuture<'static, (Id, u64, Answer)>>;

/// The candidacy, shared with the call in flight (which locks it for the call).
type SharedCandidacy = Arc<tokio::sync::Mutex<Box<dyn Candidacy>>>;

/// One election's run on the driver.
struct Slot {
    shared: Arc<Shared>,
    state: Election,
    span: Span,
    first: Option<oneshot::Sender<Result<()>>>,
    done: Option<oneshot::Sender<Result<()>>>,
    finished: Arc<AtomicBool>,
    candidacy: Option<SharedCandidacy>,
    changes: Option<Changes>,
    /// Polls `changes`; woken by the stream and by the end of the term's scopes.
    waker: Waker,
    listen: bool,
    /// The current term's scopes: gone once nothing holds the term any more.
    scopes: Option<Weak<TermAlive>>,
    awaiting_scopes: bool,
    /// The timer's entry in the queue, and when it fires on the clock.
    timer: Option<(delay_queue::Key, Duration)>,
    /// The timer fired while the slot was in a call.
    timer_due: bool,
    /// The store call in flight, by number.
    call: Option<(u64, AbortHandle)>,
    calls_made: u64,
    stop_seen: bool,
    /// What a stop asked for while a call was in flight, for when it is answered.
    later: Vec<Action>,
    /// Who waits for the handoff under way.
    handoff_reply: Option<oneshot::Sender<Result<()>>>,
}

/// What woke the driver.
enum Event {
    Command(Command),
    Ready(Id),
    Answer(Id, u64, Answer),
    Timer(Id),
}

struct Driver {
    key: DriverKey,
    rx: mpsc::UnboundedReceiver<Command>,
    clock: Clock,
    /// Boxed: the map's spare capacity then costs a pointer per entry, not a slot.
    slots: HashMap<Id, Box<Slot>>,
    calls: FuturesUnordered<Call>,
    timers: DelayQueue<Id>,
    ready: Arc<Ready>,
}

impl Driver {
    fn spawn(key: DriverKey, clock: Clock) -> mpsc::UnboundedSender<Command> {
        let (tx, rx) = mpsc::unbounded_channel();
        let driver = Driver {
            key,
            rx,
            clock,
            slots: HashMap::new(),
            calls: FuturesUnordered::new(),
            timers: DelayQueue::new(),
            ready: Arc::default(),
        };
        tokio::spawn(driver.run());
        tx
    }

    async fn run(mut self) {
        let clock = self.clock.clone();
        loop {
            let jumped = clock.jump_signal().notified();
            tokio::pin!(jumped);
            jumped.as_mut().enable();
            loop {
                let event = tokio::select! {
                    biased;
                    () = jumped.as_mut() => break,
                    event = poll_fn(|cx| self.poll_event(cx)) => event,
                };
                self.handle(event);
                if self.slots.is_empty() && self.exit() {
                    return;
                }
            }
            // The clock jumped ahead of tokio's timers: re-set every timer from the clock.
            self.reset_timers();
        }
    }

    /// Leave the registry if nothing was sent meanwhile (see [`drivers`]).
    fn exit(&mut self) -> bool {
        let mut drivers = drivers().lock().unwrap_or_else(|e| e.into_inner());
        match self.rx.try_recv() {
            Ok(command) => {
                drop(drivers);
                self.handle(Event::Command(command));
                false
            }
            Err(_) => {
                drivers.remove(&self.key);
                true
            }
        }
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        if let Poll::Ready(Some(command)) = self.rx.poll_recv(cx) {
            return Poll::Ready(Event::Command(command));
        }
        self.ready.driver.register(cx.waker());
        loop {
            let next = self
                .ready
                .queue
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop_front();
            match next {
                Some(id) if self.slots.contains_key(&id) => {
                    return Poll::Ready(Event::Ready(id));
                }
                Some(_) => continue,
                None => break,
            }
        }
        while let Poll::Ready(Some(answer)) = self.calls.poll_next_unpin(cx) {
            // An abandoned call ends as `Err(Aborted)`: nothing to do.
            if let Ok((id, n, answer)) = answer {
                return Poll::Ready(Event::Answer(id, n, answer));
            }
        }
        if let Poll::Ready(Some(expired)) = self.timers.poll_expired(cx) {
            return Poll::Ready(Event::Timer(expired.into_inner()));
        }
        Poll::Pending
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Command(Command::Start(run)) => self.begin(*run),
            Event::Command(Command::Stop(id)) => self.stop(id),
            Event::Command(Command::HandOver(id, to, reply)) => self.hand_over(id, to, reply),
            Event::Ready(id) => self.drive(id, Vec::new()),
            Event::Answer(id, n, answer) => self.answered(id, n, answer),
            Event::Timer(id) => {
                let now = self.clock.now();
                let Some(slot) = self.slots.get_mut(&id) else {
                    return;
                };
                let Some((_, at)) = slot.timer.take() else {
                    return;
                };
                if now < at {
                    // tokio's timer ran ahead of the election's clock: wait for the rest.
                    let key = self.timers.insert(id, at - now);
                    slot.timer = Some((key, at));
                    return;
                }
                slot.timer_due = true;
                if slot.call.is_none() {
                    self.drive(id, Vec::new());
                }
            }
        }
    }

    fn reset_timers(&mut self) {
        let now = self.clock.now();
        let mut due = Vec::new();
        for (&id, slot) in &mut self.slots {
            if let Some((key, at)) = slot.timer.take() {
                self.timers.remove(&key);
                if at <= now {
                    slot.timer_due = true;
                    if slot.call.is_none() {
                        due.push(id);
                    }
                } else {
                    slot.timer = Some((self.timers.insert(id, at - now), at));
                }
            }
        }
        for id in due {
            self.drive(id, Vec::new());
        }
    }

    fn begin(&mut self, run: Run) {
        let Run {
            id,
            shared,
            first,
            done,
            finished,
        } = run;
        let span =
            info_span!("election", key = %shared.config.key, candidate = %shared.config.candidate);
        let config = shared.config.clone();
        let view = shared.state.get().clone();
        let (state, actions) =
            Election::start(config, view, fastrand::Rng::new(), shared.clock.now());
        publish_times(&shared, &state);
        let waker = Waker::from(Arc::new(SlotWaker {
            id,
            ready: self.ready.clone(),
        }));
        let slot = Slot {
            shared,
            state,
            span,
            first: Some(first),
            done: Some(done),
            finished,
            candidacy: None,
            changes: None,
            waker,
            listen: false,
            scopes: None,
            awaiting_scopes: false,
            timer: None,
            timer_due: false,
            call: None,
            calls_made: 0,
            stop_seen: false,
            later: Vec::new(),
            handoff_reply: None,
        };
        self.slots.insert(id, Box::new(slot));
        self.drive(id, actions);
    }

    /// Deliver a stop: at once to the state machine, which abandons a call in flight or lets
    /// it finish.
    fn stop(&mut self, id: Id) {
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        if slot.stop_seen {
            return;
        }
        slot.stop_seen = true;
        let _span = slot.span.clone().entered();
        let actions = slot.state.step(Input::Stop, slot.shared.clock.now());
        publish_lowered_deadline(&slot.shared, &slot.state);
        self.deliver_now(id, actions);
    }

    /// Carry out what a stop or a handoff request asked of slot `id` while a store call may
    /// be out: abandon the call if the state machine says so, or keep what it asked for until
    /// the call is answered (nothing for the I/O to do until then).
    fn deliver_now(&mut self, id: Id, actions: Vec<Action>) {
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        match &slot.call {
            Some((_, abort)) if actions.iter().any(|a| matches!(a, Action::Abandon)) => {
                abort.abort();
                slot.call = None;
                self.drive(id, actions);
            }
            Some(_) => slot.later.extend(actions),
            None => self.drive(id, actions),
        }
    }

    /// Deliver a handoff request, as a stop is delivered: at once to the state machine.
    fn hand_over(&mut self, id: Id, to: Option<String>, reply: oneshot::Sender<Result<()>>) {
        let Some(slot) = self.slots.get_mut(&id) else {
            let _ = reply.send(Err(Error::Stopped));
            return;
        };
        let _span = slot.span.clone().entered();
        let actions = slot
            .state
            .step(Input::HandOver { to }, slot.shared.clock.now());
        publish_lowered_deadline(&slot.shared, &slot.state);
        if let [Action::HandOverDone(Err(_))] = actions.as_slice() {
            // Refused: nothing else changed.
            if let Some(Action::HandOverDone(outcome)) = actions.into_iter().next() {
                let _ = reply.send(outcome);
            }
            return;
        }
        slot.handoff_reply = Some(reply);
        self.deliver_now(id, actions);
    }

    fn answered(&mut self, id: Id, n: u64, answer: Answer) {
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        if slot.call.as_ref().is_none_or(|(current, _)| *current != n) {
            return;
        }
        slot.call = None;
        let _span = slot.span.clone().entered();
        for action in std::mem::take(&mut slot.later) {
            if !action.is_store_call() {
                let _ = carry_out(id, slot, action, &mut self.timers, &self.clock);
            }
        }
        let input = match answer {
            Answer::Joined(r) => Input::Joined(r.map(|c| {
                slot.candidacy = Some(Arc::new(tokio::sync::Mutex::new(c)));
            })),
            Answer::Subscribed(r) => Input::Subscribed(r.map(|c| {
                slot.changes = c;
                slot.changes.is_some()
            })),
            Answer::Input(input) => input,
        };
        let actions = slot.state.step(input, slot.shared.clock.now());
        publish_lowered_deadline(&slot.shared, &slot.state);
        self.drive(id, actions);
    }

    /// Carry out `actions` for slot `id`, then, while the slot waits, give it whatever is
    /// ready for it and carry out what that asks for, until it waits for something that is
    /// not ready or makes a store call.
    fn drive(&mut self, id: Id, mut actions: Vec<Action>) {
        loop {
            let Some(slot) = self.slots.get_mut(&id) else {
                return;
            };
            let _span = slot.span.clone().entered();
            let mut call = None;
            for action in actions {
                if action.is_store_call() {
                    debug_assert!(call.is_none(), "two store calls in one step");
                    call = Some(action);
                } else if let Some(outcome) =
                    carry_out(id, slot, action, &mut self.timers, &self.clock)
                {
                    self.finish(id, outcome);
                    return;
                }
            }
            // A later deadline that no `Publish` showed (a renewal's) shows now.
            publish_times(&slot.shared, &slot.state);
            if let Some(action) = call {
                let calls_made = slot.calls_made + 1;
                slot.calls_made = calls_made;
                let future = store_call(id, calls_made, slot, action);
                let (abort, registration) = AbortHandle::new_pair();
                slot.call = Some((calls_made, abort));
                self.calls.push(Abortable::new(future, registration));
                return;
            }
            if slot.call.is_some() {
                return;
            }
            let Some(input) = ready_input(slot) else {
                return;
            };
            actions = slot.state.step(input, slot.shared.clock.now());
            publish_lowered_deadline(&slot.shared, &slot.state);
        }
    }

    fn finish(&mut self, id: Id, outcome: Result<()>) {
        let Some(mut slot) = self.slots.remove(&id) else {
            return;
        };
        let _span = slot.span.clone().entered();
        info!("election stopped");
        if let Some((key, _)) = slot.timer.take() {
            self.timers.remove(&key);
        }
        if let Some((_, abort)) = slot.call.take() {
            abort.abort();
        }
        slot.shared.running.store(false, Ordering::Release);
        slot.finished.store(true, Ordering::Release);
        if let Some(done) = slot.done.take() {
            let _ = done.send(outcome);
        }
    }
}

/// What a waiting slot is given next, in the order of the old `biased` select: its stream's
/// next change (while it listens), the end of its scopes (while it waits for them), its timer.
fn ready_input(slot: &mut Slot) -> Option<Input> {
    if slot.listen
        && let Some(stream) = slot.changes.as_mut()
    {
        let mut cx = Context::from_waker(&slot.waker);
        if let Poll::Ready(change) = stream.poll_next_unpin(&mut cx) {
            if change.is_none() {
                slot.changes = None;
            }
            return Some(Input::Changed(change));
        }
    }
    if slot.awaiting_scopes
        && let Some(scopes) = &slot.scopes
        && scopes.strong_count() == 0
    {
        slot.scopes = None;
        return Some(Input::ScopesGone);
    }
    if std::mem::take(&mut slot.timer_due) {
        return Some(Input::Timer);
    }
    None
}

/// Carry out one action that is not a store call. Returns the run's outcome once it is
/// over.
fn carry_out(
    id: Id,
    slot: &mut Slot,
    action: Action,
    timers: &mut DelayQueue<Id>,
    clock: &Clock,
) -> Option<Result<()>> {
    let shared = &slot.shared;
    let key = shared.config.key.clone();
    match action {
        // Only ever asked for together with stop, which `Driver::stop` handles; store calls
        // go through `store_call`.
        Action::Abandon
        | Action::Join
        | Action::Subscribe
        | Action::TryAcquire
        | Action::Renew { .. }
        | Action::Release(_)
        | Action::HandOver { .. }
        | Action::Leave
        | Action::Read(_) => {}
        Action::HandOverDone(outcome) => {
            if let Some(reply) = slot.handoff_reply.take() {
                let _ = reply.send(outcome);
            }
        }
        Action::Unsubscribe => slot.changes = None,
        Action::Timer(at) => {
            if let Some((key, _)) = slot.timer.take() {
                timers.remove(&key);
            }
            slot.timer_due = false;
            if let Some(at) = at {
                let delay = at.saturating_sub(clock.now());
                slot.timer = Some((timers.insert(id, delay), at));
            }
        }
        Action::Listen(on) => slot.listen = on,
        Action::AwaitScopes(on) => {
            slot.awaiting_scopes = on;
            if !on {
                slot.scopes = None;
            }
        }
        Action::BeginTerm { token } => {
            let alive = Arc::new(TermAlive {
                waker: slot.waker.clone(),
            });
            slot.scopes = Some(Arc::downgrade(&alive));
            *shared.scope.lock().unwrap_or_else(|e| e.into_inner()) = Some(Term {
                token,
                cancel: tokio_util::sync::CancellationToken::new(),
                alive,
            });
            metrics::gauge!("baton_is_leader", "key" => key.clone()).set(1.0);
            metrics::counter!("baton_transitions_total", "key" => key, "reason" => "acquired")
                .increment(1);
        }
        Action::EndTerm { reason } => {
            if let Some(term) = shared
                .scope
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
            {
                term.cancel.cancel();
            }
            metrics::gauge!("baton_is_leader", "key" => key.clone()).set(0.0);
            metrics::counter!("baton_transitions_total", "key" => key, "reason" => reason.as_str())
                .increment(1);
        }
        Action::Publish(view) => shared
            .state
            .publish_then(view, || publish_times(shared, &slot.state)),
        Action::Emit(event) => {
            // No subscriber is fine; a full buffer drops the oldest for laggards, never
            // blocks.
            if let Some(events) = shared.events.get() {
                let _ = events.send(event);
            }
        }
        Action::StoreError(kind) => {
            metrics::counter!("baton_store_errors_total", "key" => key, "kind" => kind)
                .increment(1);
        }
        Action::ReportFirst(result) => {
            if let Some(tx) = slot.first.take() {
                let _ = tx.send(result);
            }
        }
        Action::Finish(outcome) => return Some(outcome),
    }
    None
}

/// The store call `action` of slot `id`, as a future that owns what it needs.
fn store_call(
    id: Id,
    n: u64,
    slot: &Slot,
    action: Action,
) -> BoxFuture<'static, (Id, u64, Answer)> {
    let shared = slot.shared.clone();
    let candidacy = slot.candidacy.clone();
    let span = slot.span.clone();
    // A store call that panics fails with an indeterminate error instead of taking the
    // driver, and every election on it, down.
    let before = shared.clock.now();
    let failed: fn(Error, Duration) -> Answer = match &action {
        Action::Join => |e, _| Answer::Joined(Err(e)),
        Action::Subscribe => |e, _| Answer::Subscribed(Err(e)),
        Action::TryAcquire => |e, sent| {
            Answer::Input(Input::Acquired {
                sent,
                complete: false,
                outcome: Err(e),
            })
        },
        Action::Renew { .. } => |e, sent| {
            Answer::Input(Input::Renewed {
                sent,
                outcome: Err(e),
            })
        },
        Action::Release(_) | Action::HandOver { .. } => {
            |e, _| Answer::Input(Input::Released(Err(e)))
        }
        Action::Read(_) => |e, _| Answer::Input(Input::Read(Err(e))),
        _ => |e, _| Answer::Input(Input::Left(Err(e))),
    };
    // Named only on a panic: `info()` builds a string, and this is the renewal path.
    let store = Arc::clone(&shared.store);
    let call = std::panic::AssertUnwindSafe(async move {
        let timing = shared.config.timing;
        let clock = &shared.clock;
        let limit = timing.request_timeout;
        match (action, candidacy) {
            (Action::Join, _) => Answer::Joined(
                with_timeout(
                    clock,
                    limit,
                    shared
                        .store
                        .join(&shared.config.key, &shared.config.candidate),
                )
                .await,
            ),
            (Action::Read(key), _) => Answer::Input(Input::Read(
                with_timeout(clock, limit, shared.store.read(&key)).await,
            )),
            // Only `join` and `read` come before a candidacy, and `leave` may.
            (_, None) => Answer::Input(Input::Left(Ok(()))),
            (action, Some(candidacy)) => {
                let mut candidacy = candidacy.lock_owned().await;
                match action {
                    Action::Subscribe => {
                        Answer::Subscribed(with_timeout(clock, limit, candidacy.watch()).await)
                    }
                    Action::TryAcquire => {
                        let complete = candidacy.watch_is_complete();
                        let sent = clock.now();
                        let outcome =
                            with_timeout(clock, limit, candidacy.try_acquire(timing.lease)).await;
                        Answer::Input(Input::Acquired {
                            sent,
                            complete,
                            outcome,
                        })
                    }
                    Action::Renew { lease, timeout } => {
                        let sent = clock.now();
                        let outcome = match with_timeout(
                            clock,
                            timeout,
                            candidacy.renew(&lease, timing.lease),
                        )
                        .await
                        {
                            Ok(Renew::HandoffRequested { to })
                                if !shared.admits_request(to.as_deref()) =>
                            {
                                // The records seen last may be a renew interval old: a
                                // candidate that started since is not in them. Look again
                                // before refusing.
                                if let Ok(live) = with_timeout(
                                    clock,
                                    limit,
                                    shared.store.candidates(&shared.config.key),
                                )
                                .await
                                {
                                    *shared.presence.lock().unwrap_or_else(|e| e.into_inner()) =
                                        live;
                                }
                                if shared.admits_request(to.as_deref()) {
                                    Ok(Renew::HandoffRequested { to })
                                } else {
                                    tracing::warn!(
                                        key = %shared.config.key,
                                        to = to.as_deref().unwrap_or(""),
                                        "not handing over as asked: that candidate has no presence record (it is not running)"
                                    );
                                    Ok(Renew::Renewed)
                                }
                            }
                            other => other,
                        };
                        shared
                            .renew_duration
                            .get_or_init(|| {
                                metrics::histogram!("baton_renew_duration_seconds", "key" => shared.config.key.clone())
                            })
                            .record(clock.now().saturating_sub(sent).as_secs_f64());
                        Answer::Input(Input::Renewed { sent, outcome })
                    }
                    Action::Release(lease) => Answer::Input(Input::Released(
                        with_timeout(clock, limit, candidacy.release(&lease)).await,
                    )),
                    Action::HandOver { lease, to, window } => Answer::Input(Input::Released(
                        with_timeout(
                            clock,
                            limit,
                            candidacy.hand_over(&lease, to.as_deref(), window),
                        )
                        .await,
                    )),
                    Action::Leave => Answer::Input(Input::Left(
                        with_timeout(clock, limit, candidacy.leave()).await,
                    )),
                    other => unreachable!("not a store call: {other:?}"),
                }
            }
        }
    });
    Box::pin(
        async move {
            let answer = call.catch_unwind().await.unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".to_owned());
                let store = store.info().name;
                tracing::error!(store, panic = %what, "a store call panicked");
                failed(
                    Error::indeterminate(store, "a store call panicked", what),
                    before,
                )
            });
            (id, n, answer)
        }
        .instrument(span),
    )
}

/// Right after a step, before its actions are carried out: publish the new deadline only if
/// it is earlier than the one shown (a step-down shows at once). A later deadline waits: a new
/// term's shows when its `Publish` action has put the state (with the token) in place, before
/// the state's subscribers are told and before `BecameLeader` is emitted, so that nobody sees
/// this candidate lead without its token, and whoever hears of the term sees it lead; a
/// renewal's shows after the step's actions ([`publish_times`]).
fn publish_lowered_deadline(shared: &Shared, state: &Election) {
    let new = state.deadline().map_or(0, |d| d.as_nanos() as u64);
    let _ = shared
        .deadline
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |shown| {
            (new < shown).then_some(new)
        });
}

/// Publish the times the handle's questions read: the deadline (0 when not leading), the
/// last good renewal, and the campaign's progress.
fn publish_times(shared: &Shared, state: &Election) {
    let nanos = |d: Duration| d.as_nanos() as u64;
    shared
        .deadline
        .store(state.deadline().map_or(0, nanos), Ordering::Release);
    shared
        .renewed
        .store(nanos(state.renewed()), Ordering::Release);
    shared
        .progress
        .store(nanos(state.progress()), Ordering::Release);
    shared
        .progress_due
        .store(nanos(state.progress_due()), Ordering::Release);
}
