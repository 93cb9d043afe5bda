//! The driver: one task per election that carries out what [`state::step`](super::state)
//! decides.
//!
//! Every decision (when to renew, when to step down, how long a follower waits, what to
//! report) is made by the pure state machine in [`super::state`]. This task only performs its
//! [`Action`]s: store calls (each with a timeout), one timer, listening to the change stream,
//! the leadership scope, the state channel and events. It feeds every answer back as an
//! [`Input`], with the clock's time. A store call in flight is raced against stop only to
//! tell the state machine, which says whether to abandon it (a renewal) or let it finish
//! (an acquire, a release, a leave).

use std::future::{Future, pending};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use super::state::{Action, Config, Election, Input};
use super::{Shared, Term};
use crate::store::{Candidacy, Changes};
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

/// The next change, or never if there is no subscription.
async fn next_change(changes: &mut Option<Changes>) -> Option<crate::Change> {
    match changes {
        Some(stream) => stream.next().await,
        None => pending().await,
    }
}

/// Resolves once every scope of the term is gone (or never, without a term).
async fn scopes_gone(gone: &mut Option<mpsc::Receiver<()>>) {
    match gone {
        Some(rx) => while rx.recv().await.is_some() {},
        None => pending().await,
    }
}

/// What the driver holds for the state machine: the I/O resources and what it waits for.
#[derive(Default)]
struct Io {
    candidacy: Option<Box<dyn Candidacy>>,
    changes: Option<Changes>,
    timer: Option<Duration>,
    listen: bool,
    awaiting_scopes: bool,
    scopes_gone: Option<mpsc::Receiver<()>>,
    stop_seen: bool,
}

/// How a store call ended.
enum Called {
    /// With this answer.
    Answered(Input),
    /// Abandoned by the state machine on stop, which asked for these actions instead.
    Abandoned(Vec<Action>),
}

/// A store call's answer, before the driver keeps what it returned (a candidacy, a stream).
enum Answer {
    Joined(Result<Box<dyn Candidacy>>),
    Subscribed(Result<Option<Changes>>),
    Input(Input),
}

pub(crate) struct Engine {
    shared: Arc<Shared>,
    stop: CancellationToken,
    first: Option<oneshot::Sender<Result<()>>>,
}

impl Engine {
    pub fn new(
        shared: Arc<Shared>,
        stop: CancellationToken,
        first: oneshot::Sender<Result<()>>,
    ) -> Self {
        Engine {
            shared,
            stop,
            first: Some(first),
        }
    }

    /// Campaign and lead until stopped. Returns the failure to give the lease (or the
    /// candidate's place) back when stopping on purpose, for
    /// [`LeaderElection::stop`](super::LeaderElection::stop) to report.
    pub async fn run(mut self) -> Result<()> {
        let span =
            info_span!("election", key = %self.shared.key, candidate = %self.shared.candidate);
        async move {
            let config = Config {
                key: self.shared.key.clone(),
                candidate: self.shared.candidate.clone(),
                timing: self.shared.timing,
                unsafe_ignore_deadline: self.shared.unsafe_ignore_deadline,
            };
            let view = self.shared.state.borrow().clone();
            let (mut state, actions) =
                Election::start(config, view, fastrand::Rng::new(), self.shared.clock.now());
            self.publish_times(&state);
            let mut io = Io::default();
            let mut batch = actions;
            loop {
                // Carry out the batch in order; its store call (a step asks for at most one)
                // goes out once the rest is done, and its answer is the next input.
                let mut call = None;
                for action in batch {
                    if action.is_store_call() {
                        debug_assert!(call.is_none(), "two store calls in one step");
                        call = Some(action);
                    } else if let Some(outcome) = self.carry_out(action, &mut io) {
                        info!("election stopped");
                        self.shared.running.store(false, Ordering::Release);
                        return outcome;
                    }
                }
                let input = match call {
                    Some(call) => match self.call(call, &mut io, &mut state).await {
                        Called::Answered(input) => input,
                        Called::Abandoned(actions) => {
                            batch = actions;
                            continue;
                        }
                    },
                    None => self.wait(&mut io).await,
                };
                batch = state.step(input, self.shared.clock.now());
                self.publish_times(&state);
            }
        }
        .instrument(span)
        .await
    }

    /// Wait for whatever the state machine waits for: stop, a change, the term's scopes, the
    /// timer.
    async fn wait(&self, io: &mut Io) -> Input {
        let clock = &self.shared.clock;
        let timer = io.timer;
        let input = tokio::select! {
            biased;
            () = self.stop.cancelled(), if !io.stop_seen => Input::Stop,
            change = next_change(&mut io.changes), if io.listen => Input::Changed(change),
            () = scopes_gone(&mut io.scopes_gone), if io.awaiting_scopes => Input::ScopesGone,
            () = sleep_until(clock, timer.unwrap_or_default()), if timer.is_some() => Input::Timer,
            else => {
                // The state machine always waits for something (a property its tests check):
                // reaching this is a bug. Wait forever rather than spin.
                debug_assert!(false, "the election waits for nothing");
                warn!("the election waits for nothing");
                pending::<Input>().await
            }
        };
        match &input {
            Input::Stop => io.stop_seen = true,
            Input::Timer => io.timer = None,
            Input::Changed(None) => io.changes = None,
            Input::ScopesGone => io.scopes_gone = None,
            _ => {}
        }
        input
    }

    /// Carry out one action that is not a store call. Returns the run's outcome once it is
    /// over.
    fn carry_out(&mut self, action: Action, io: &mut Io) -> Option<Result<()>> {
        let shared = &self.shared;
        let key = shared.key.clone();
        match action {
            // Only ever asked for together with stop, which `call` handles; store calls go
            // through `call`.
            Action::Abandon
            | Action::Join
            | Action::Subscribe
            | Action::TryAcquire
            | Action::Renew { .. }
            | Action::Release(_)
            | Action::Leave
            | Action::Read(_) => {}
            Action::Unsubscribe => io.changes = None,
            Action::Timer(at) => io.timer = at,
            Action::Listen(on) => io.listen = on,
            Action::AwaitScopes(on) => {
                io.awaiting_scopes = on;
                if !on {
                    io.scopes_gone = None;
                }
            }
            Action::BeginTerm { token } => {
                let (alive, gone) = mpsc::channel(1);
                *shared.scope.lock().unwrap_or_else(|e| e.into_inner()) = Some(Term {
                    token,
                    cancel: CancellationToken::new(),
                    alive,
                });
                io.scopes_gone = Some(gone);
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
            Action::Publish(view) => shared.state.send_modify(|s| *s = view),
            Action::Emit(event) => {
                // No receivers is fine; a full buffer drops the oldest for laggards, never
                // blocks.
                let _ = shared.events.send(event);
            }
            Action::StoreError(kind) => {
                metrics::counter!("baton_store_errors_total", "key" => key, "kind" => kind)
                    .increment(1);
            }
            Action::ReportFirst(result) => {
                if let Some(tx) = self.first.take() {
                    let _ = tx.send(result);
                }
            }
            Action::Finish(outcome) => return Some(outcome),
        }
        None
    }

    /// Make a store call, telling the state machine of a stop meanwhile (and carrying out
    /// what that step asks for at once, unless it abandons the call).
    async fn call(&mut self, action: Action, io: &mut Io, state: &mut Election) -> Called {
        let shared = self.shared.clone();
        let timing = shared.timing;
        let clock = shared.clock.clone();
        let stop = self.stop.clone();
        let mut stop_seen = io.stop_seen;
        let mut later = Vec::new();
        let answer = {
            let candidacy = &mut io.candidacy;
            let call = async {
                let Some(candidacy) = candidacy.as_mut() else {
                    // Only `join` and `read` come before a candidacy, and `leave` may.
                    return match action {
                        Action::Join => Answer::Joined(
                            with_timeout(
                                &clock,
                                timing.request_timeout,
                                shared.store.join(&shared.key, &shared.candidate),
                            )
                            .await,
                        ),
                        Action::Read(key) => Answer::Input(Input::Read(
                            with_timeout(&clock, timing.request_timeout, shared.store.read(&key))
                                .await,
                        )),
                        _ => Answer::Input(Input::Left(Ok(()))),
                    };
                };
                match action {
                    Action::Subscribe => Answer::Subscribed(
                        with_timeout(&clock, timing.request_timeout, candidacy.watch()).await,
                    ),
                    Action::TryAcquire => {
                        let complete = candidacy.watch_is_complete();
                        let sent = clock.now();
                        let outcome = with_timeout(
                            &clock,
                            timing.request_timeout,
                            candidacy.try_acquire(timing.lease),
                        )
                        .await;
                        Answer::Input(Input::Acquired {
                            sent,
                            complete,
                            outcome,
                        })
                    }
                    Action::Renew { lease, timeout } => {
                        let sent = clock.now();
                        let outcome =
                            with_timeout(&clock, timeout, candidacy.renew(&lease, timing.lease))
                                .await;
                        metrics::histogram!("baton_renew_duration_seconds", "key" => shared.key.clone())
                        .record(clock.now().saturating_sub(sent).as_secs_f64());
                        Answer::Input(Input::Renewed { sent, outcome })
                    }
                    Action::Release(lease) => Answer::Input(Input::Released(
                        with_timeout(&clock, timing.request_timeout, candidacy.release(&lease))
                            .await,
                    )),
                    Action::Leave => Answer::Input(Input::Left(
                        with_timeout(&clock, timing.request_timeout, candidacy.leave()).await,
                    )),
                    Action::Read(key) => Answer::Input(Input::Read(
                        with_timeout(&clock, timing.request_timeout, shared.store.read(&key)).await,
                    )),
                    Action::Join => Answer::Joined(
                        with_timeout(
                            &clock,
                            timing.request_timeout,
                            shared.store.join(&shared.key, &shared.candidate),
                        )
                        .await,
                    ),
                    other => unreachable!("not a store call: {other:?}"),
                }
            };
            tokio::pin!(call);
            loop {
                let stopped = tokio::select! {
                    biased;
                    () = stop.cancelled(), if !stop_seen => true,
                    answer = &mut call => break answer,
                };
                if stopped {
                    stop_seen = true;
                    let actions = state.step(Input::Stop, clock.now());
                    self.publish_times(state);
                    if actions.iter().any(|a| matches!(a, Action::Abandon)) {
                        io.stop_seen = true;
                        return Called::Abandoned(actions);
                    }
                    // A stop the state machine only notes: nothing for the I/O to do yet.
                    later.extend(actions);
                }
            }
        };
        io.stop_seen = stop_seen;
        for action in later {
            let _ = self.carry_out(action, io);
        }
        Called::Answered(match answer {
            Answer::Joined(r) => Input::Joined(r.map(|c| io.candidacy = Some(c))),
            Answer::Subscribed(r) => Input::Subscribed(r.map(|c| {
                io.changes = c;
                io.changes.is_some()
            })),
            Answer::Input(input) => input,
        })
    }

    /// Publish the times the handle's questions read: the deadline (0 when not leading), the
    /// last good renewal, and the campaign's progress.
    fn publish_times(&self, state: &Election) {
        let nanos = |d: Duration| d.as_nanos() as u64;
        let shared = &self.shared;
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
}
