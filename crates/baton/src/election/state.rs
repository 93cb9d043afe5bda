//! The election's decisions, as one pure function: [`step`].
//!
//! An election is an [`Election`] value (its phase, plus what every phase shares), and
//! `step(state, input, now) -> (state, actions)` is the only place that changes it. `step`
//! does no I/O and reads no clock: the driver ([`super::engine`]) passes the time in, carries
//! out the [`Action`]s (store calls, a timer, events, the leadership scope) and feeds every
//! answer back as an [`Input`]. Randomness (jitter, backoff) comes from a seeded generator
//! kept in the state, so a test that seeds it replays every decision exactly.
//!
//! The timing rules of DESIGN.md §3 live here, and nowhere else:
//!
//! 1. **Deadline from send time** ([`deadline_after`]). After a successful acquire or renewal
//!    sent at `t_send`, the local deadline is `t_send + leader_validity` (the lease minus drift
//!    and safety margin). [`leads`] compares a deadline with the clock; `is_leader()`,
//!    [`Leadership::lost`](super::Leadership::lost) and [`health`] ask it.
//! 2. **Step down on time** ([`step_down_at`]). The leader steps down at the earliest of: a
//!    renewal answering `Lost`; `renew_interval + grace_period` after the last successful
//!    renewal was sent; the deadline. A renewal in flight carries a timeout that ends at that
//!    moment, and is abandoned on stop. [`shutdown_budget`] is the time the rule leaves between
//!    stepping down and the deadline (`baton run`'s kill budget).
//! 3. **Followers** wait for the earliest of a pushed change or the holder's remaining TTL plus
//!    a small jitter, then try again; on store errors they back off (capped, jittered) and never
//!    stop campaigning until the election is stopped. A follower whose change stream is
//!    complete ([`Candidacy::watch_is_complete`](crate::Candidacy::watch_is_complete)) waits
//!    for the stream instead of the TTL, and looks at the store only every
//!    [`COMPLETE_WATCH_RECHECK_LEASES`](crate::COMPLETE_WATCH_RECHECK_LEASES) leases in case an
//!    event was lost.
//! 4. **Graceful stop**: cancel the leadership scope, emit `LostLeadership(Stopped)`, wait for
//!    the term's scopes to be dropped (at most until the lease would have expired), release,
//!    leave. A failed release is reported only if a read shows the store still holds the lease.
//! 5. **Events** are actions; the driver puts them into channels, so a slow subscriber never
//!    delays a renewal.

use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, info, warn};

use super::{ElectionState, Event, Health, LossReason, Role};
use crate::options::Timing;
use crate::store::{Acquire, Change, Lease, LeaseRecord, Renew};
use crate::{Error, FencingToken, Result, fmt_duration};

/// Rule 1: the local deadline of a lease whose acquire or renewal was sent at `sent`.
pub(crate) fn deadline_after(timing: &Timing, sent: Duration) -> Duration {
    sent + timing.validity
}

/// Rule 2: when a leader whose last successful acquire or renewal was sent at `last_ok` steps
/// down unless a renewal succeeds first: `renew + grace` after it, and never after the
/// deadline. Never, in the test-only unsafe variant.
pub(crate) fn step_down_at(timing: &Timing, last_ok: Duration, unsafe_mode: bool) -> Duration {
    if unsafe_mode {
        return Duration::MAX;
    }
    (last_ok + timing.renew + timing.grace).min(deadline_after(timing, last_ok))
}

/// Whether a candidate whose published deadline is `deadline` leads at `now`.
pub(crate) fn leads(deadline: Option<Duration>, now: Duration, unsafe_mode: bool) -> bool {
    deadline.is_some_and(|d| unsafe_mode || now < d)
}

/// The time between a leader stepping down because its renewals failed and its deadline: what
/// the leader's work has to stop in before the lease can expire in the store.
pub(crate) fn shutdown_budget(timing: &Timing) -> Duration {
    let last_ok = Duration::ZERO;
    deadline_after(timing, last_ok).saturating_sub(step_down_at(timing, last_ok, false))
}

/// What [`health`] looks at: the published state of one election.
#[derive(Debug, Clone)]
pub(crate) struct HealthView {
    pub role: Role,
    pub last_error: Option<String>,
    pub stopped_on_purpose: bool,
    pub task_ended: bool,
    /// The published deadline ([`Election::deadline`]).
    pub deadline: Option<Duration>,
    /// [`Election::renewed`].
    pub renewed: Duration,
    /// [`Election::progress`].
    pub progress: Duration,
    /// [`Election::progress_due`].
    pub progress_due: Duration,
    pub unsafe_mode: bool,
}

/// The health rule: a leader must have renewed within `renew + grace` and still be before its
/// deadline; a follower must keep campaigning (a store call or a wake-up at least every two
/// leases, or, while it waits longer on purpose for a complete change stream, within a lease
/// of that wait's end); the engine must not have stopped on its own.
pub(crate) fn health(view: &HealthView, now: Duration, timing: &Timing) -> Health {
    let since = |t: Duration| now.saturating_sub(t);
    let (healthy, detail) = match view.role {
        Role::Idle => (true, "not started".to_owned()),
        Role::Stopped if view.stopped_on_purpose => (false, "stopped".to_owned()),
        Role::Stopped => (
            false,
            format!(
                "the election stopped: {}",
                view.last_error.clone().unwrap_or_default()
            ),
        ),
        _ if view.task_ended => (false, "the election task ended unexpectedly".to_owned()),
        Role::Leader if !leads(view.deadline, now, view.unsafe_mode) => (
            false,
            "leading past its deadline without stepping down: the election is wedged".to_owned(),
        ),
        Role::Leader if since(view.renewed) > timing.renew + timing.grace => (
            false,
            format!(
                "leader renewal overdue: last good renewal {} ago",
                fmt_duration(since(view.renewed))
            ),
        ),
        Role::Leader => (true, "leading, renewals on time".to_owned()),
        Role::Follower
            if since(view.progress) > 2 * timing.lease + timing.request_timeout
                && since(view.progress_due) > timing.lease + timing.request_timeout =>
        {
            (
                false,
                format!(
                    "campaign stalled: no progress for {}",
                    fmt_duration(since(view.progress))
                ),
            )
        }
        Role::Follower => (true, "following, campaigning".to_owned()),
    };
    Health { healthy, detail }
}

/// What does not change while an election runs.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub key: String,
    pub candidate: String,
    pub timing: Timing,
    /// Test-only: ignore the deadline and the grace period (the chaos checker's unsafe
    /// variant).
    pub unsafe_ignore_deadline: bool,
    /// Keep the change stream while leading, and renew at once when it reports a handoff
    /// request ([`LeaderElectionBuilder::listen_for_handoff_requests`](super::LeaderElectionBuilder::listen_for_handoff_requests)).
    /// The first attempt then subscribes first too, so that a first leader has the stream.
    pub listen_while_leading: bool,
    /// Whether the candidate keeps a presence record ([`super::presence`]).
    pub presence: bool,
    /// Its priority, written in the record.
    pub priority: u32,
}

/// What happened: a store call's answer, a timer, a pushed change, stop.
#[derive(Debug)]
pub(crate) enum Input {
    /// [`Action::Join`] answered.
    Joined(Result<()>),
    /// [`Action::Subscribe`] answered: whether a change stream is now open.
    Subscribed(Result<bool>),
    /// [`Action::TryAcquire`] answered. `sent` is the instant before the request was sent;
    /// `complete` is what the candidacy said of its change stream then.
    Acquired {
        sent: Duration,
        complete: bool,
        outcome: Result<Acquire>,
    },
    /// [`Action::Renew`] answered (its timeout becomes [`Error::Timeout`]). `sent` is the
    /// instant before the request was sent.
    Renewed {
        sent: Duration,
        outcome: Result<Renew>,
    },
    /// [`Action::Release`] answered.
    Released(Result<()>),
    /// [`Action::Leave`] answered.
    Left(Result<()>),
    /// [`Action::Read`] answered.
    Read(Result<Option<LeaseRecord>>),
    /// The timer set by the last [`Action::Timer`] fired.
    Timer,
    /// The change stream delivered a change, or ended (`None`).
    Changed(Option<Change>),
    /// Every leadership scope of the term has been dropped.
    ScopesGone,
    /// Stop was asked for (delivered once).
    Stop,
    /// [`LeaderElection::hand_over`](super::LeaderElection::hand_over): end the term and hand
    /// the lease to `to` (or, `None`, to any other candidate). Answered once with
    /// [`Action::HandOverDone`].
    HandOver { to: Option<String> },
}

/// What the driver must do. Store calls carry the election's request timeout unless they say
/// otherwise, and their answers come back as [`Input`]s; at most one is out at a time.
#[derive(Debug)]
pub(crate) enum Action {
    /// `LeaseStore::join`.
    Join,
    /// `Candidacy::watch`.
    Subscribe,
    /// Drop the change stream.
    Unsubscribe,
    /// `Candidacy::try_acquire(lease)`.
    TryAcquire,
    /// `Candidacy::renew`, with this timeout. The lease is shared with the state machine's
    /// hold: a renewal every few seconds per election should not copy its key and holder.
    Renew {
        lease: Arc<Lease>,
        timeout: Duration,
    },
    /// Drop the store call in flight without waiting for its answer.
    Abandon,
    /// `Candidacy::release`.
    Release(Lease),
    /// `Candidacy::hand_over(lease, to, window)`, answered as [`Input::Released`].
    HandOver {
        lease: Lease,
        to: Option<String>,
        window: Duration,
    },
    /// Tell the caller of `hand_over` how it went: `Ok` once the handoff mark is written.
    HandOverDone(Result<()>),
    /// `Candidacy::leave`.
    Leave,
    /// `LeaseStore::read(key)`.
    Read(String),
    /// Fire [`Input::Timer`] at this instant (replacing any timer), or at no time.
    Timer(Option<Duration>),
    /// Deliver the change stream's items as [`Input::Changed`], or stop listening.
    Listen(bool),
    /// Deliver [`Input::ScopesGone`] once every scope of the term is dropped, or stop waiting.
    AwaitScopes(bool),
    /// A term begins: set up its leadership scope.
    BeginTerm { token: FencingToken },
    /// The term ends: cancel its leadership scope.
    EndTerm { reason: LossReason },
    /// Publish this state on the election's state channel.
    Publish(ElectionState),
    /// Send an event to subscribers.
    Emit(Event),
    /// A store call failed (for the error counter).
    StoreError(&'static str),
    /// Tell `start()` how the first attempt went (at most once per run).
    ReportFirst(Result<()>),
    /// The run is over; `stop()` reports this.
    Finish(Result<()>),
}

impl Action {
    /// Whether this is a store call, answered by an [`Input`].
    pub fn is_store_call(&self) -> bool {
        matches!(
            self,
            Action::Join
                | Action::Subscribe
                | Action::TryAcquire
                | Action::Renew { .. }
                | Action::Release(_)
                | Action::HandOver { .. }
                | Action::Leave
                | Action::Read(_)
        )
    }
}

/// Where an election is.
#[derive(Debug)]
enum Phase {
    /// A `join` is out.
    Joining,
    /// Waiting until `until` to join again after a failed join.
    JoinBackoff { until: Duration },
    /// A `watch` is out, before the next attempt.
    Subscribing,
    /// A `try_acquire` is out.
    Acquiring,
    /// A follower waiting until `until`, or for a change.
    Waiting { until: Duration, complete: bool },
    /// Holding a lease: renewing it, and leading from `act_at`.
    Holding(Hold),
    /// A term that ended, waiting (until `until` at most) for its scopes to be dropped before
    /// the release.
    AwaitingScopes {
        lease: Lease,
        reason: LossReason,
        until: Duration,
    },
    /// A release is out: of a term that ended for `reason`, or (`None`) of a lease never
    /// acted on because the acquire took longer than the lease's validity.
    Releasing {
        lease: Lease,
        reason: Option<LossReason>,
    },
    /// A `leave` is out.
    Leaving,
    /// Reading the key to learn whether a release that failed while stopping took effect.
    Checking { lease: Lease, source: Error },
    /// The run is over.
    Stopped,
}

/// A lease this candidate holds.
#[derive(Debug)]
struct Hold {
    lease: Arc<Lease>,
    /// When it may start acting as leader (`t_send + lease.act_after`).
    act_at: Duration,
    /// Whether it acts as leader (the term has begun).
    leading: bool,
    /// Send instant of the last successful acquire or renewal.
    last_ok: Duration,
    /// When to send the next renewal.
    next_renew: Duration,
    /// Whether a renewal is out.
    renewing: bool,
    /// A handoff request was pushed while a renewal was out: that renewal may have read the
    /// key before the request was written, so unless its answer brings a request, renew
    /// again at once rather than at the next renew interval.
    request_pushed: bool,
}

/// One election's state: its [`Phase`] and what all phases share.
#[derive(Debug)]
pub(crate) struct Election {
    /// Shared with the election's handle ([`Shared`](super::Shared)), which needs the same
    /// facts: one copy per election, not two.
    config: Arc<Config>,
    rng: fastrand::Rng,
    phase: Phase,
    /// The next backoff step.
    backoff: Duration,
    first_reported: bool,
    stop_requested: bool,
    /// A release (with its lease) or a leave that failed while stopping on purpose.
    /// Boxed: rare, and a lease and an error would make every election's state larger.
    stop_error: Option<Box<(Option<Lease>, Error)>>,
    /// Whether a change stream is open.
    subscribed: bool,
    /// A handoff under way, from the request until the store answers it: to whom (`None`:
    /// anyone else). Boxed for the same reason as `stop_error`.
    handing_over: Option<Box<Option<String>>>,
    /// The run's first attempt has not gone out yet. It goes out before subscribing: a
    /// candidate that gets the lease never needs a change stream, and at start that is most
    /// of a process's elections when each has a key of its own (docs/decisions.md D128).
    probe: bool,
    /// The attempt out is that first one: if the key is held, subscribe and try again
    /// (a release between the two is then seen), rather than wait.
    probing: bool,
    /// What is published on the state channel.
    view: ElectionState,
    /// Send time of the last successful acquire or renewal of the current term.
    renewed: Duration,
    /// When the election last made progress (started, or woke from a wait).
    progress: Duration,
    /// When the current wait ends.
    progress_due: Duration,
    /// What the driver was last told: timer, listening, awaiting scopes.
    armed: Option<Duration>,
    listening: bool,
    awaiting_scopes: bool,
}

/// Step `state` with `input` at `now` (on the election's clock). The driver calls the
/// in-place form, [`Election::step`]; both are the same code.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) fn step(mut state: Election, input: Input, now: Duration) -> (Election, Vec<Action>) {
    let actions = state.step(input, now);
    (state, actions)
}

impl Election {
    /// A new run of an election at `now`, publishing from `view` (the state the last run left).
    /// The first action joins the election.
    pub fn start(
        config: impl Into<Arc<Config>>,
        view: ElectionState,
        rng: fastrand::Rng,
        now: Duration,
    ) -> (Election, Vec<Action>) {
        let config = config.into();
        let backoff = config.timing.backoff_min;
        let probe = !config.listen_while_leading;
        let state = Election {
            config,
            rng,
            phase: Phase::Joining,
            backoff,
            first_reported: false,
            stop_requested: false,
            stop_error: None,
            subscribed: false,
            handing_over: None,
            probe,
            probing: false,
            view,
            renewed: Duration::ZERO,
            progress: now,
            progress_due: Duration::ZERO,
            armed: None,
            listening: false,
            awaiting_scopes: false,
        };
        (state, vec![Action::Join])
    }

    /// Take `input` at `now`; return what to do, in order.
    pub fn step(&mut self, input: Input, now: Duration) -> Vec<Action> {
        let mut out = Vec::new();
        self.handle(input, now, &mut out);
        self.sync(&mut out);
        out
    }

    /// The deadline to publish: set only while acting as leader.
    pub fn deadline(&self) -> Option<Duration> {
        match &self.phase {
            Phase::Holding(h) if h.leading => Some(deadline_after(&self.config.timing, h.last_ok)),
            _ => None,
        }
    }

    /// Send time of the last successful acquire or renewal of the current term.
    pub fn renewed(&self) -> Duration {
        self.renewed
    }

    /// When the election last made progress.
    pub fn progress(&self) -> Duration {
        self.progress
    }

    /// When the current wait ends.
    pub fn progress_due(&self) -> Duration {
        self.progress_due
    }

    /// Whether this run is over.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn is_stopped(&self) -> bool {
        matches!(self.phase, Phase::Stopped)
    }

    /// Whether a store call is out (its answer is the next thing the election needs).
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn awaits_call(&self) -> bool {
        match &self.phase {
            Phase::Joining
            | Phase::Subscribing
            | Phase::Acquiring
            | Phase::Releasing { .. }
            | Phase::Leaving
            | Phase::Checking { .. } => true,
            Phase::Holding(h) => h.renewing,
            _ => false,
        }
    }

    /// The instant the driver's timer should fire at, if any.
    fn wake_at(&self) -> Option<Duration> {
        let timing = &self.config.timing;
        match &self.phase {
            Phase::JoinBackoff { until }
            | Phase::Waiting { until, .. }
            | Phase::AwaitingScopes { until, .. } => Some(*until),
            Phase::Holding(h) if !h.renewing => {
                let mut wake = h.next_renew.min(step_down_at(
                    timing,
                    h.last_ok,
                    self.config.unsafe_ignore_deadline,
                ));
                if !h.leading {
                    wake = wake.min(h.act_at);
                }
                Some(wake)
            }
            _ => None,
        }
    }

    /// Tell the driver what to wait for, where that changed.
    fn sync(&mut self, out: &mut Vec<Action>) {
        let wake = self.wake_at();
        if wake != self.armed {
            self.armed = wake;
            out.push(Action::Timer(wake));
        }
        let listen = self.subscribed
            && match self.phase {
                Phase::Waiting { .. } => true,
                Phase::Holding(_) => self.config.listen_while_leading,
                _ => false,
            };
        if listen != self.listening {
            self.listening = listen;
            out.push(Action::Listen(listen));
        }
        let scopes = matches!(self.phase, Phase::AwaitingScopes { .. });
        if scopes != self.awaiting_scopes {
            self.awaiting_scopes = scopes;
            out.push(Action::AwaitScopes(scopes));
        }
    }

    fn handle(&mut self, input: Input, now: Duration, out: &mut Vec<Action>) {
        match input {
            Input::Stop => {
                if !self.stop_requested {
                    self.stop_requested = true;
                    self.on_stop(now, out);
                }
            }
            Input::HandOver { to } => self.on_hand_over(to, out),
            Input::Timer => {
                // The driver's timer is spent once it fires.
                self.armed = None;
                self.on_timer(now, out);
            }
            Input::Joined(outcome) if matches!(self.phase, Phase::Joining) => {
                self.on_joined(outcome, now, out)
            }
            Input::Subscribed(outcome) if matches!(self.phase, Phase::Subscribing) => {
                match outcome {
                    Ok(open) => self.subscribed = open,
                    Err(e) => {
                        debug!(error = %e, "subscribing to changes failed; using timers");
                        self.subscribed = false;
                    }
                }
                // A stop that came while subscribing: leave, never take a lease first.
                if self.stop_requested {
                    self.leave(out);
                } else {
                    self.attempt(out);
                }
            }
            Input::Acquired {
                sent,
                complete,
                outcome,
            } if matches!(self.phase, Phase::Acquiring) => {
                self.on_acquired(sent, complete, outcome, now, out)
            }
            Input::Renewed { sent, outcome } if matches!(&self.phase, Phase::Holding(h) if h.renewing) => {
                self.on_renewed(sent, outcome, now, out)
            }
            Input::Released(outcome) if matches!(self.phase, Phase::Releasing { .. }) => {
                self.on_released(outcome, now, out)
            }
            Input::Left(outcome) if matches!(self.phase, Phase::Leaving) => {
                if let Err(e) = outcome {
                    debug!(error = %e, "leaving the election failed; the store cleans up on expiry");
                    if self.stop_requested && self.stop_error.is_none() {
                        self.stop_error = Some(Box::new((None, e)));
                    }
                }
                self.check_outcome(out);
            }
            Input::Read(outcome) if matches!(self.phase, Phase::Checking { .. }) => {
                self.on_read(outcome, out)
            }
            Input::Changed(change) if self.listening => self.on_changed(change, now, out),
            Input::ScopesGone if matches!(self.phase, Phase::AwaitingScopes { .. }) => {
                self.release_after_term(out)
            }
            // An answer to no call in flight, or a change nobody listens for: stale.
            other => debug!(input = ?other, "ignored"),
        }
    }

    fn on_stop(&mut self, now: Duration, out: &mut Vec<Action>) {
        match &self.phase {
            // No candidacy yet: nothing to leave.
            Phase::JoinBackoff { .. } => {
                self.progress = now;
                self.finish(Ok(()), out);
            }
            Phase::Waiting { .. } => {
                self.progress = now;
                self.leave(out);
            }
            Phase::Holding(h) => {
                if h.renewing {
                    out.push(Action::Abandon);
                }
                self.end_term(LossReason::Stopped, out);
            }
            // Store calls are not abandoned (an abandoned acquire could leave a lease nobody
            // releases; release and leave are how a stop ends). The phase that follows looks
            // at `stop_requested`.
            _ => {}
        }
    }

    /// A planned handoff: a holder ends its term (the scopes first, as for a stop), then
    /// writes the handoff mark instead of a plain release, and campaigns on as a follower.
    fn on_hand_over(&mut self, to: Option<String>, out: &mut Vec<Action>) {
        let holding = matches!(self.phase, Phase::Holding(_));
        if !holding || self.stop_requested || self.handing_over.is_some() {
            let e = if self.stop_requested || matches!(self.phase, Phase::Stopped) {
                Error::Stopped
            } else {
                Error::NotLeader
            };
            out.push(Action::HandOverDone(Err(e)));
            return;
        }
        if let Phase::Holding(h) = &self.phase
            && h.renewing
        {
            out.push(Action::Abandon);
        }
        info!(to = ?to, "handing the lease over");
        self.handing_over = Some(Box::new(to));
        self.end_term(LossReason::HandedOver, out);
    }

    fn on_timer(&mut self, now: Duration, out: &mut Vec<Action>) {
        match &mut self.phase {
            Phase::JoinBackoff { until } if now >= *until => {
                self.progress = now;
                self.phase = Phase::Joining;
                out.push(Action::Join);
            }
            Phase::Waiting { until, .. } if now >= *until => {
                self.progress = now;
                self.cycle(out);
            }
            Phase::AwaitingScopes { until, .. } if now >= *until => {
                warn!("a leadership scope outlived the lease; releasing anyway");
                self.release_after_term(out);
            }
            Phase::Holding(h) if !h.renewing => {
                let timing = &self.config.timing;
                let unsafe_mode = self.config.unsafe_ignore_deadline;
                let step_down = step_down_at(timing, h.last_ok, unsafe_mode);
                if now >= step_down || now < h.next_renew {
                    // Time to step down, or woke to start acting, not to renew.
                    self.hold_top(now, out);
                } else {
                    // The renewal may take at most the time left before stepping down.
                    let timeout = if unsafe_mode {
                        timing.request_timeout
                    } else {
                        step_down - now
                    };
                    h.renewing = true;
                    out.push(Action::Renew {
                        lease: h.lease.clone(),
                        timeout,
                    });
                }
            }
            // Early or stale: the wait goes on (the driver is told again in `sync`).
            _ => {}
        }
    }

    fn on_joined(&mut self, outcome: Result<()>, now: Duration, out: &mut Vec<Action>) {
        match outcome {
            Ok(()) => {
                self.view.role = Role::Follower;
                self.publish(out);
                self.cycle(out);
            }
            Err(e) => {
                if self.fail(e, out) {
                    return self.finish(Ok(()), out);
                }
                let wait = self.next_backoff();
                self.progress_due = now + wait;
                if self.stop_requested {
                    self.progress = now;
                    return self.finish(Ok(()), out);
                }
                self.phase = Phase::JoinBackoff { until: now + wait };
            }
        }
    }

    /// The top of the campaign: stop if asked, subscribe if not subscribed, then try.
    fn cycle(&mut self, out: &mut Vec<Action>) {
        if self.stop_requested {
            return self.leave(out);
        }
        if !self.subscribed {
            if self.probe {
                self.probe = false;
                self.probing = true;
                return self.attempt(out);
            }
            // Subscribe before trying, so a release between the try and the wait is seen.
            self.phase = Phase::Subscribing;
            out.push(Action::Subscribe);
        } else {
            self.attempt(out);
        }
    }

    fn attempt(&mut self, out: &mut Vec<Action>) {
        self.phase = Phase::Acquiring;
        out.push(Action::TryAcquire);
    }

    fn on_acquired(
        &mut self,
        sent: Duration,
        complete: bool,
        outcome: Result<Acquire>,
        now: Duration,
        out: &mut Vec<Action>,
    ) {
        let timing = self.config.timing;
        // A complete change stream reports every release and expiry (and the loss of the
        // candidate's own session), so the follower waits for it rather than for the lease
        // it read, and looks again only after the long safety interval.
        let complete = self.subscribed && complete;
        let probing = std::mem::take(&mut self.probing);
        match outcome {
            Ok(Acquire::Acquired(lease)) => {
                self.backoff = timing.backoff_min;
                if !self.config.listen_while_leading {
                    self.unsubscribe(out);
                }
                if now >= deadline_after(&timing, sent) {
                    warn!("acquire took longer than the lease validity; giving the lease back");
                    self.phase = Phase::Releasing {
                        lease: lease.clone(),
                        reason: None,
                    };
                    out.push(Action::Release(lease));
                    return;
                }
                self.hold(lease, sent, now, out);
            }
            Ok(Acquire::Held(record)) => {
                self.backoff = timing.backoff_min;
                self.clear_error(out);
                self.set_leader(Some(record.holder.clone()), out);
                self.report_first(Ok(()), out);
                if probing {
                    // Tried before subscribing: subscribe, then try again.
                    return self.cycle(out);
                }
                let wait = if complete {
                    timing.complete_watch_recheck + self.jitter()
                } else {
                    (record.ttl + self.jitter()).min(timing.lease)
                };
                self.wait(wait, complete, now, out);
            }
            Ok(Acquire::Reserved(mark)) => {
                self.backoff = timing.backoff_min;
                self.clear_error(out);
                self.report_first(Ok(()), out);
                if probing {
                    return self.cycle(out);
                }
                debug!(to = ?mark.to, from = %mark.from, ttl = ?mark.ttl, "the key is reserved by a handoff");
                // The mark's end is never pushed: wait for it (or for a change), even with a
                // complete stream.
                let wait = (mark.ttl + self.jitter()).min(timing.lease);
                self.wait(wait, false, now, out);
            }
            Err(e) => {
                if self.fail(e, out) {
                    return self.leave(out);
                }
                let wait = self.next_backoff();
                self.wait(wait, complete, now, out);
            }
        }
    }

    /// Wait as a follower for `d` (or a change, or stop).
    fn wait(&mut self, d: Duration, complete: bool, now: Duration, out: &mut Vec<Action>) {
        if d.is_zero() {
            return self.cycle(out);
        }
        self.progress_due = now + d;
        if self.stop_requested {
            self.progress = now;
            return self.leave(out);
        }
        self.phase = Phase::Waiting {
            until: now + d,
            complete,
        };
    }

    fn on_changed(&mut self, change: Option<Change>, now: Duration, out: &mut Vec<Action>) {
        if let Phase::Holding(h) = &mut self.phase {
            match change {
                // Asked to hand over: renew now, and the renewal brings the request.
                Some(Change::HandoffRequested { .. }) if h.leading && !h.renewing => {
                    debug!("a handoff was requested; renewing at once to read it");
                    h.next_renew = now;
                    self.on_timer(now, out);
                }
                // A renewal is out, and it may have read the key before the request was
                // written: when its answer brings no request, renew again at once.
                Some(Change::HandoffRequested { .. }) if h.leading => {
                    h.request_pushed = true;
                }
                // The stream ended: renewals still bring requests, at their own pace.
                None => self.unsubscribe(out),
                // The leader's own acquire and renewals, and the rest: nothing to do.
                Some(_) => {}
            }
            return;
        }
        let Phase::Waiting { complete, until } = self.phase else {
            return;
        };
        self.progress = now;
        match change {
            // Someone else just took the key: note who, and wait out their fresh lease (with a
            // complete stream: wait for the stream) without asking the store, so a handoff
            // costs followers nothing.
            Some(Change::Acquired { holder } | Change::Renewed { holder })
                if holder != self.config.candidate =>
            {
                self.set_leader(Some(holder), out);
                let timing = &self.config.timing;
                let wait = if complete {
                    timing.complete_watch_recheck
                } else {
                    timing.lease
                } + self.jitter();
                self.wait(wait, complete, now, out);
            }
            // Concerns the leader, not its followers.
            Some(Change::HandoffRequested { .. }) => {}
            Some(change) => {
                debug!(?change, "store reported a change");
                self.cycle(out);
            }
            None => {
                debug!("change subscription ended; will subscribe again");
                self.unsubscribe(out);
                if self.view.last_error.is_some() {
                    // The store is failing, and a stream that ends at once (its server is
                    // down) must not turn the backoff into a busy loop of subscribe and
                    // attempt: look again after at most the shortest backoff step, which
                    // keeps noticing a store that is back as quick as the stream would.
                    let until = until.min(now + self.config.timing.backoff_min);
                    if until > now {
                        self.progress_due = until;
                        self.phase = Phase::Waiting {
                            until,
                            complete: false,
                        };
                        return;
                    }
                }
                self.cycle(out);
            }
        }
    }

    /// A lease was acquired at `sent`: hold it.
    fn hold(&mut self, lease: Lease, sent: Duration, now: Duration, out: &mut Vec<Action>) {
        let timing = self.config.timing;
        if !lease.act_after.is_zero() {
            info!(token = %lease.token, wait = ?lease.act_after, "holding the lease; acting as leader after the store's wait");
            self.report_first(Ok(()), out);
        }
        self.phase = Phase::Holding(Hold {
            act_at: sent + lease.act_after,
            leading: false,
            last_ok: sent,
            next_renew: sent + timing.renew,
            renewing: false,
            request_pushed: false,
            lease: Arc::new(lease),
        });
        self.hold_top(now, out);
    }

    /// The top of the holding loop: step down if stop was asked for or the step-down moment
    /// has come; otherwise begin acting as leader once allowed.
    fn hold_top(&mut self, now: Duration, out: &mut Vec<Action>) {
        let timing = self.config.timing;
        let unsafe_mode = self.config.unsafe_ignore_deadline;
        let Phase::Holding(h) = &mut self.phase else {
            return;
        };
        let step_down = step_down_at(&timing, h.last_ok, unsafe_mode);
        if now >= step_down && !self.stop_requested {
            let reason = if now >= deadline_after(&timing, h.last_ok) {
                LossReason::DeadlineReached
            } else {
                LossReason::RenewalsFailed
            };
            return self.end_term(reason, out);
        }
        // Never begin a term at or after the step-down moment (D71).
        if !h.leading
            && now >= h.act_at
            && now < deadline_after(&timing, h.last_ok)
            && now < step_down
        {
            h.leading = true;
            self.renewed = h.last_ok;
            let token = h.lease.token;
            self.begin_term(token, out);
        }
        if self.stop_requested {
            self.end_term(LossReason::Stopped, out);
        }
    }

    fn on_renewed(
        &mut self,
        sent: Duration,
        outcome: Result<Renew>,
        now: Duration,
        out: &mut Vec<Action>,
    ) {
        let timing = self.config.timing;
        let Phase::Holding(h) = &mut self.phase else {
            return;
        };
        h.renewing = false;
        let request_pushed = std::mem::take(&mut h.request_pushed);
        match outcome {
            Ok(Renew::Renewed) => {
                h.last_ok = sent;
                h.next_renew = if request_pushed {
                    debug!(
                        "a handoff was requested while a renewal was out; renewing again to read it"
                    );
                    now
                } else {
                    sent + timing.renew
                };
                self.renewed = sent;
                self.clear_error(out);
                self.hold_top(now, out);
            }
            Ok(Renew::HandoffRequested { to }) => {
                h.last_ok = sent;
                h.next_renew = sent + timing.renew;
                self.renewed = sent;
                self.clear_error(out);
                self.hold_top(now, out);
                // Asked through the store, by another process: hand over as `hand_over` does,
                // once leading (before that, the next renewal brings the request again).
                let leading = matches!(&self.phase, Phase::Holding(h) if h.leading);
                if leading
                    && !self.stop_requested
                    && self.handing_over.is_none()
                    && to.as_deref() != Some(self.config.candidate.as_str())
                {
                    info!(to = ?to, "a handoff was requested through the store");
                    self.on_hand_over(to, out);
                }
            }
            Ok(Renew::Lost(record)) => {
                let leading = h.leading;
                let lease = Arc::clone(&h.lease);
                if leading {
                    self.step_down(&lease, LossReason::LeaseLost, record.as_ref(), out);
                }
                // The lease is someone else's (or gone): nothing to release. Campaign again.
                self.cycle(out);
            }
            Err(e) => {
                warn!(error = %e, "renewal failed; retrying within the grace period");
                let factor = 0.5 + self.rng.f64() * 0.5;
                if let Phase::Holding(h) = &mut self.phase {
                    h.next_renew = now + timing.renew_retry.mul_f64(factor);
                }
                self.note_error(&e, out);
                self.hold_top(now, out);
            }
        }
    }

    /// The term ends for `reason` (not a lost lease): step down, then wait for the scopes
    /// and release.
    fn end_term(&mut self, reason: LossReason, out: &mut Vec<Action>) {
        let Phase::Holding(h) = std::mem::replace(&mut self.phase, Phase::Stopped) else {
            return;
        };
        if h.leading {
            self.step_down(&h.lease, reason, None, out);
            // Never hand the lease on while the leader's work may still run: wait until every
            // scope of the term is dropped, or until the lease would have expired in the store
            // anyway.
            self.phase = Phase::AwaitingScopes {
                until: h.last_ok + self.config.timing.lease,
                lease: Arc::unwrap_or_clone(h.lease),
                reason,
            };
        } else {
            self.give_back(Arc::unwrap_or_clone(h.lease), reason, out);
        }
    }

    /// Release `lease` after a term that ended for `reason`, or hand it over when that is why
    /// the term ended.
    fn give_back(&mut self, lease: Lease, reason: LossReason, out: &mut Vec<Action>) {
        self.phase = Phase::Releasing {
            lease: lease.clone(),
            reason: Some(reason),
        };
        match (&self.handing_over, reason) {
            (Some(to), LossReason::HandedOver) => out.push(Action::HandOver {
                lease,
                to: (**to).clone(),
                window: self.config.timing.lease,
            }),
            _ => out.push(Action::Release(lease)),
        }
    }

    fn release_after_term(&mut self, out: &mut Vec<Action>) {
        let Phase::AwaitingScopes { lease, reason, .. } =
            std::mem::replace(&mut self.phase, Phase::Stopped)
        else {
            return;
        };
        // After a graceful stop or a failed renewal the lease may still be ours in the store:
        // give it back (owner-checked, so never someone else's) so followers need not wait.
        self.give_back(lease, reason, out);
    }

    fn on_released(&mut self, outcome: Result<()>, _now: Duration, out: &mut Vec<Action>) {
        let Phase::Releasing { lease, reason } = std::mem::replace(&mut self.phase, Phase::Stopped)
        else {
            return;
        };
        if reason == Some(LossReason::HandedOver) && self.handing_over.take().is_some() {
            match outcome {
                Ok(()) => {
                    debug!(token = %lease.token, "lease handed over");
                    out.push(Action::HandOverDone(Ok(())));
                }
                Err(e) => {
                    warn!(error = %e, "handing the lease over failed; it will expire in the store");
                    out.push(Action::HandOverDone(Err(e)));
                }
            }
            return self.cycle(out);
        }
        match outcome {
            Ok(()) => debug!(token = %lease.token, "lease released"),
            Err(e) => {
                warn!(error = %e, "releasing the lease failed; it will expire in the store");
                if reason == Some(LossReason::Stopped) {
                    self.stop_error = Some(Box::new((Some(lease), e)));
                }
            }
        }
        if reason == Some(LossReason::Stopped) {
            self.leave(out);
        } else {
            self.cycle(out);
        }
    }

    fn leave(&mut self, out: &mut Vec<Action>) {
        self.unsubscribe(out);
        self.phase = Phase::Leaving;
        out.push(Action::Leave);
    }

    /// What `stop()` reports: a release that failed while the store still holds this lease
    /// (a timed-out release may have been applied all the same, so the store is asked), or a
    /// failed leave.
    fn check_outcome(&mut self, out: &mut Vec<Action>) {
        match self.stop_error.take().map(|b| *b) {
            None => self.finish(Ok(()), out),
            Some((Some(lease), source)) => {
                out.push(Action::Read(lease.key.clone()));
                self.phase = Phase::Checking { lease, source };
            }
            Some((None, source)) => {
                let lease = self.config.timing.lease;
                self.finish(Err(release_failed(lease, source)), out);
            }
        }
    }

    fn on_read(&mut self, outcome: Result<Option<LeaseRecord>>, out: &mut Vec<Action>) {
        let Phase::Checking { lease, source } = std::mem::replace(&mut self.phase, Phase::Stopped)
        else {
            return;
        };
        let expires_within = match outcome {
            Ok(Some(record)) if record.holder == lease.holder && record.token == lease.token => {
                record.ttl
            }
            // Released after all, expired, or someone else's now: nothing to report.
            Ok(_) => return self.finish(Ok(()), out),
            Err(e) => {
                debug!(error = %e, "cannot tell whether the release took effect");
                self.config.timing.lease
            }
        };
        self.finish(Err(release_failed(expires_within, source)), out);
    }

    fn finish(&mut self, outcome: Result<()>, out: &mut Vec<Action>) {
        self.unsubscribe(out);
        self.phase = Phase::Stopped;
        self.view.role = Role::Stopped;
        self.view.token = None;
        self.publish(out);
        self.report_first(Err(Error::Stopped), out);
        out.push(Action::Finish(outcome));
    }

    /// Start acting as leader: the scope, the state, the events.
    fn begin_term(&mut self, token: FencingToken, out: &mut Vec<Action>) {
        let me = self.config.candidate.clone();
        let previous = self.view.leader.clone();
        out.push(Action::BeginTerm { token });
        self.view.role = Role::Leader;
        self.view.token = Some(token);
        self.view.leader = Some(me.clone());
        self.view.last_error = None;
        self.publish(out);
        info!(token = %token, "became leader");
        out.push(Action::Emit(Event::BecameLeader {
            candidate: me.clone(),
            key: self.config.key.clone(),
            token,
        }));
        if previous.as_deref() != Some(me.as_str()) {
            out.push(Action::Emit(Event::LeaderChanged {
                previous,
                current: Some(me),
            }));
        }
        self.report_first(Ok(()), out);
    }

    /// Stop acting as leader: cancel the scope, publish, emit.
    fn step_down(
        &mut self,
        lease: &Lease,
        reason: LossReason,
        record: Option<&LeaseRecord>,
        out: &mut Vec<Action>,
    ) {
        if let Phase::Holding(h) = &mut self.phase {
            h.leading = false;
        }
        out.push(Action::EndTerm { reason });
        let current = record.map(|r| r.holder.clone());
        let previous = self.view.leader.clone();
        self.view.role = Role::Follower;
        self.view.token = None;
        self.view.leader = current.clone();
        self.publish(out);
        match reason {
            LossReason::Stopped => info!(token = %lease.token, "stepped down: stopping"),
            LossReason::HandedOver => info!(token = %lease.token, "stepped down: handing over"),
            _ => warn!(token = %lease.token, %reason, "stepped down"),
        }
        out.push(Action::Emit(Event::LostLeadership {
            candidate: self.config.candidate.clone(),
            key: self.config.key.clone(),
            token: lease.token,
            reason,
        }));
        if previous != current {
            out.push(Action::Emit(Event::LeaderChanged { previous, current }));
        }
    }

    fn set_leader(&mut self, leader: Option<String>, out: &mut Vec<Action>) {
        let previous = self.view.leader.clone();
        if previous == leader {
            return;
        }
        self.view.leader = leader.clone();
        self.publish(out);
        debug!(?previous, current = ?leader, "leader changed");
        out.push(Action::Emit(Event::LeaderChanged {
            previous,
            current: leader,
        }));
    }

    /// Handle a store error. Returns true if the election must stop: only errors that retrying
    /// cannot fix, and only on the first attempt (later they are logged and retried, so a
    /// candidate never silently stops competing).
    fn fail(&mut self, e: Error, out: &mut Vec<Action>) -> bool {
        self.note_error(&e, out);
        if !self.first_reported && !e.is_transient() {
            self.report_first(Err(e), out);
            return true;
        }
        if !self.first_reported {
            warn!(error = %e, "store error on the first attempt; campaigning on with backoff");
            self.report_first(Ok(()), out);
        } else {
            warn!(error = %e, "store error; retrying with backoff");
        }
        false
    }

    fn note_error(&mut self, e: &Error, out: &mut Vec<Action>) {
        out.push(Action::StoreError(e.kind()));
        self.view.last_error = Some(e.to_string());
        self.publish(out);
    }

    fn clear_error(&mut self, out: &mut Vec<Action>) {
        if self.view.last_error.is_some() {
            self.view.last_error = None;
            self.publish(out);
        }
    }

    fn unsubscribe(&mut self, out: &mut Vec<Action>) {
        if self.subscribed {
            self.subscribed = false;
            out.push(Action::Unsubscribe);
        }
    }

    fn publish(&self, out: &mut Vec<Action>) {
        out.push(Action::Publish(self.view.clone()));
    }

    fn report_first(&mut self, result: Result<()>, out: &mut Vec<Action>) {
        if !self.first_reported {
            self.first_reported = true;
            out.push(Action::ReportFirst(result));
        }
    }

    fn jitter(&mut self) -> Duration {
        Duration::from_nanos(
            self.rng
                .u64(0..=self.config.timing.jitter_max.as_nanos() as u64),
        )
    }

    fn next_backoff(&mut self) -> Duration {
        let current = self.backoff;
        self.backoff = (self.backoff * 2).min(self.config.timing.backoff_max);
        // "Equal jitter": between half and all of the current step.
        current.mul_f64(0.5 + self.rng.f64() * 0.5)
    }
}

fn release_failed(expires_within: Duration, source: Error) -> Error {
    Error::ReleaseFailed {
        expires_within,
        source: Box::new(source),
    }
}

#[cfg(test)]
mod tests;
