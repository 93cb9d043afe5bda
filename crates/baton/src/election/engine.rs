//! The engine: one task per election that campaigns, leads and steps down.
//!
//! The timing rules (DESIGN.md §3) live here, and nowhere else:
//!
//! 1. **Deadline from send time.** After a successful acquire or renew sent at `t_send`, the
//!    local deadline is `t_send + leader_validity`, where validity is the lease minus drift and
//!    safety margin. `is_leader()` compares against it at every call.
//! 2. **Step down on time.** The leader steps down at the earliest of: a renewal answering
//!    `Lost`; `renew_interval + grace_period` after the last successful renewal was sent; the
//!    deadline. A renewal in flight is raced against that moment and abandoned, never awaited.
//! 3. **Followers** wait for the earliest of a watch notification or the holder's remaining
//!    TTL plus a small jitter, then try again; on store errors they back off (capped, jittered)
//!    and never stop campaigning until the election is stopped. A follower whose change stream
//!    is complete ([`Candidacy::watch_is_complete`]) waits for the stream instead of the TTL,
//!    and looks at the store only every 20 leases in case an event was lost.
//! 4. **Graceful stop**: cancel the leadership scope, emit `LostLeadership(Stopped)`, release.
//! 5. **Events** go into channels; a slow subscriber never delays a renewal.

use std::future::{Future, pending};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use super::{ElectionState, Event, LossReason, Role, Shared, Term};
use crate::store::{Acquire, Candidacy, Changes, Lease, LeaseRecord, Renew};
use crate::{Change, Clock, Error, Result};

/// Sleep for `d` as measured on `clock`. Timers follow the monotonic clock, which stops
/// during a machine suspend; the clock's jump signal (a suspend detector for the boot clock,
/// [`Clock::jump`] for the test clock) wakes the sleep early so it can re-check.
pub(crate) async fn sleep_on(clock: &Clock, d: Duration) {
    let target = clock.now() + d;
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

/// Run a store call with a timeout; a timeout becomes [`Error::Timeout`] (an indeterminate
/// outcome).
async fn with_timeout<T>(limit: Duration, call: impl Future<Output = Result<T>>) -> Result<T> {
    match tokio::time::timeout(limit, call).await {
        Ok(r) => r,
        Err(_) => Err(Error::Timeout(limit)),
    }
}

/// The next change, or never if there is no subscription.
async fn next_change(changes: &mut Option<Changes>) -> Option<Change> {
    match changes {
        Some(stream) => stream.next().await,
        None => pending().await,
    }
}

pub(crate) struct Engine {
    shared: Arc<Shared>,
    stop: CancellationToken,
    first: Option<oneshot::Sender<Result<()>>>,
    backoff: Duration,
    /// A release (with its lease) or a leave that failed while stopping on purpose: what
    /// `stop()` reports, once a read has shown that the store still holds the lease.
    stop_error: Option<(Option<Lease>, Error)>,
}

impl Engine {
    pub fn new(
        shared: Arc<Shared>,
        stop: CancellationToken,
        first: oneshot::Sender<Result<()>>,
    ) -> Self {
        let backoff = shared.timing.backoff_min;
        Engine {
            shared,
            stop,
            first: Some(first),
            backoff,
            stop_error: None,
        }
    }

    /// Campaign and lead until stopped. Returns the failure to give the lease (or the
    /// candidate's place) back when stopping on purpose, for
    /// [`LeaderElection::stop`](super::LeaderElection::stop) to report.
    pub async fn run(mut self) -> Result<()> {
        let span =
            info_span!("election", key = %self.shared.key, candidate = %self.shared.candidate);
        async move {
            self.mark_progress();
            if let Some(mut candidacy) = self.join().await {
                self.update_state(|s| s.role = Role::Follower);
                self.campaign(&mut candidacy).await;
                if let Err(e) = with_timeout(self.shared.timing.request_timeout, candidacy.leave()).await {
                    debug!(error = %e, "leaving the election failed; the store cleans up on expiry");
                    if self.stop.is_cancelled() && self.stop_error.is_none() {
                        self.stop_error = Some((None, e));
                    }
                }
            }
            let outcome = self.stop_outcome().await;
            self.update_state(|s| {
                s.role = Role::Stopped;
                s.token = None;
            });
            self.report_first(Err(Error::Stopped));
            info!("election stopped");
            self.shared.running.store(false, Ordering::Release);
            outcome
        }
        .instrument(span)
        .await
    }

    /// What `stop()` reports: a release that failed while the store still holds this lease
    /// (a timed-out release may have been applied all the same, so the store is asked), or a
    /// failed leave.
    async fn stop_outcome(&mut self) -> Result<()> {
        let Some((lease, source)) = self.stop_error.take() else {
            return Ok(());
        };
        let timing = self.shared.timing;
        let mut expires_within = timing.lease;
        if let Some(lease) = lease {
            let read = with_timeout(timing.request_timeout, self.shared.store.read(&lease.key));
            match read.await {
                Ok(Some(record))
                    if record.holder == lease.holder && record.token == lease.token =>
                {
                    expires_within = record.ttl;
                }
                // Released after all, expired, or someone else's now: nothing to report.
                Ok(_) => return Ok(()),
                Err(e) => debug!(error = %e, "cannot tell whether the release took effect"),
            }
        }
        Err(Error::ReleaseFailed {
            expires_within,
            source: Box::new(source),
        })
    }

    /// Join the election, retrying transient errors until stopped.
    async fn join(&mut self) -> Option<Box<dyn Candidacy>> {
        loop {
            let call = self
                .shared
                .store
                .join(&self.shared.key, &self.shared.candidate);
            match with_timeout(self.shared.timing.request_timeout, call).await {
                Ok(c) => return Some(c),
                Err(e) => {
                    if self.fail(e) {
                        return None;
                    }
                }
            }
            let backoff = self.next_backoff();
            // `None` means stopped.
            self.wait(backoff, &mut None).await?;
        }
    }

    /// Follow and lead until stopped.
    async fn campaign(&mut self, candidacy: &mut Box<dyn Candidacy>) {
        let timing = self.shared.timing;
        let mut changes: Option<Changes> = None;
        loop {
            if self.stop.is_cancelled() {
                return;
            }
            if changes.is_none() {
                // Subscribe before trying, so a release between the try and the wait is seen.
                match with_timeout(timing.request_timeout, candidacy.watch()).await {
                    Ok(c) => changes = c,
                    Err(e) => debug!(error = %e, "subscribing to changes failed; using timers"),
                }
            }
            // A complete change stream reports every release and expiry (and the loss of the
            // candidate's own session), so the follower waits for it rather than for the lease
            // it read, and looks again only after the long safety interval.
            let complete = changes.is_some() && candidacy.watch_is_complete();
            // Not raced against stop: an acquire abandoned mid-flight could leave a lease
            // nobody releases. The call is bounded by its timeout instead.
            let t_send = self.shared.clock.now();
            let outcome =
                with_timeout(timing.request_timeout, candidacy.try_acquire(timing.lease)).await;
            let wait = match outcome {
                Ok(Acquire::Acquired(lease)) => {
                    self.backoff = timing.backoff_min;
                    changes = None;
                    if self.shared.clock.now() >= t_send + timing.validity {
                        warn!("acquire took longer than the lease validity; giving the lease back");
                        let _ = self.release(candidacy, &lease).await;
                        continue;
                    }
                    if self.lead(candidacy, lease, t_send).await == LossReason::Stopped {
                        return;
                    }
                    Duration::ZERO
                }
                Ok(Acquire::Held(record)) => {
                    self.backoff = timing.backoff_min;
                    self.clear_error();
                    self.set_leader(Some(record.holder.clone()), Some(&record));
                    self.report_first(Ok(()));
                    if complete {
                        timing.complete_watch_recheck + self.jitter()
                    } else {
                        (record.ttl + self.jitter()).min(timing.lease)
                    }
                }
                Err(e) => {
                    if self.fail(e) {
                        return;
                    }
                    self.next_backoff()
                }
            };
            let mut wait = wait;
            while !wait.is_zero() {
                match self.wait(wait, &mut changes).await {
                    None => return,
                    // Someone else just took the key: note who, and wait out their fresh lease
                    // (with a complete stream: wait for the stream) without asking the store, so
                    // a handoff costs followers nothing.
                    Some(Some(Change::Acquired { holder } | Change::Renewed { holder }))
                        if holder != self.shared.candidate =>
                    {
                        self.set_leader(Some(holder), None);
                        wait = if complete {
                            timing.complete_watch_recheck
                        } else {
                            timing.lease
                        } + self.jitter();
                    }
                    Some(Some(change)) => {
                        debug!(?change, "store reported a change");
                        break;
                    }
                    Some(None) => break,
                }
            }
        }
    }

    fn mark_progress(&self) {
        self.shared
            .progress
            .store(self.shared.clock.now().as_nanos() as u64, Ordering::Release);
    }

    fn jitter(&self) -> Duration {
        Duration::from_nanos(fastrand::u64(
            0..=self.shared.timing.jitter_max.as_nanos() as u64,
        ))
    }

    /// Wait for `d`, a change, or stop. `None` when stopped; `Some(Some(change))` on a change.
    async fn wait(&self, d: Duration, changes: &mut Option<Changes>) -> Option<Option<Change>> {
        self.shared.progress_due.store(
            (self.shared.clock.now() + d).as_nanos() as u64,
            Ordering::Release,
        );
        let woke = tokio::select! {
            biased;
            () = self.stop.cancelled() => None,
            change = next_change(changes) => {
                if change.is_none() {
                    debug!("change subscription ended; will subscribe again");
                    *changes = None;
                }
                Some(change)
            }
            () = sleep_on(&self.shared.clock, d) => Some(None),
        };
        self.mark_progress();
        woke
    }

    /// Hold the lease until the term ends; returns why it ended.
    ///
    /// The candidate acts as leader from `t_send + lease.act_after` (normally at once) until it
    /// steps down; before that it only renews, silently.
    async fn lead(
        &mut self,
        candidacy: &mut Box<dyn Candidacy>,
        lease: Lease,
        t_send: Duration,
    ) -> LossReason {
        let timing = self.shared.timing;
        let clock = self.shared.clock.clone();
        let unsafe_mode = self.shared.unsafe_ignore_deadline;
        let act_at = t_send + lease.act_after;
        let mut leading = false;
        let mut scopes_gone = None;
        let mut last_ok = t_send;
        let mut deadline = t_send + timing.validity;
        let mut next_renew = t_send + timing.renew;
        if !lease.act_after.is_zero() {
            info!(token = %lease.token, wait = ?lease.act_after, "holding the lease; acting as leader after the store's wait");
            self.report_first(Ok(()));
        }

        let reason = loop {
            let now = clock.now();
            if !leading && now >= act_at && now < deadline {
                self.shared
                    .renewed
                    .store(last_ok.as_nanos() as u64, Ordering::Release);
                scopes_gone = Some(self.become_leader(&lease, deadline));
                leading = true;
            }
            let step_down_at = if unsafe_mode {
                Duration::MAX
            } else {
                (last_ok + timing.renew + timing.grace).min(deadline)
            };
            let mut wake = next_renew.min(step_down_at);
            if !leading {
                wake = wake.min(act_at);
            }
            let stopped = tokio::select! {
                biased;
                () = self.stop.cancelled() => true,
                () = sleep_on(&clock, wake.saturating_sub(clock.now())) => false,
            };
            if stopped {
                break LossReason::Stopped;
            }
            let now = clock.now();
            if now >= step_down_at {
                break if now >= deadline {
                    LossReason::DeadlineReached
                } else {
                    LossReason::RenewalsFailed
                };
            }
            if now < next_renew {
                continue; // woke to start acting, not to renew
            }
            // The renewal may take at most the time left before stepping down.
            let budget = if unsafe_mode {
                timing.request_timeout
            } else {
                step_down_at - now
            };
            let t_renew = clock.now();
            let outcome = tokio::select! {
                biased;
                () = self.stop.cancelled() => None,
                r = with_timeout(budget, candidacy.renew(&lease, timing.lease)) => Some(r),
            };
            let Some(outcome) = outcome else {
                break LossReason::Stopped;
            };
            metrics::histogram!("baton_renew_duration_seconds", "key" => self.shared.key.clone())
                .record((clock.now().saturating_sub(t_renew)).as_secs_f64());
            match outcome {
                Ok(Renew::Renewed) => {
                    self.clear_error();
                    last_ok = t_renew;
                    self.shared
                        .renewed
                        .store(t_renew.as_nanos() as u64, Ordering::Release);
                    deadline = t_renew + timing.validity;
                    if leading {
                        self.shared
                            .deadline
                            .store(deadline.as_nanos() as u64, Ordering::Release);
                    }
                    next_renew = t_renew + timing.renew;
                }
                Ok(Renew::Lost(record)) => {
                    if leading {
                        self.step_down(&lease, LossReason::LeaseLost, record.as_ref());
                    }
                    return LossReason::LeaseLost;
                }
                Err(e) => {
                    warn!(error = %e, "renewal failed; retrying within the grace period");
                    self.note_error(&e);
                    let retry = timing.renew_retry.mul_f64(0.5 + fastrand::f64() * 0.5);
                    next_renew = clock.now() + retry;
                }
            }
        };
        if leading {
            self.step_down(&lease, reason, None);
        }
        // Never hand the lease on while the leader's work may still run: wait until every
        // scope of the term is dropped, or until the lease would have expired in the store
        // anyway.
        if let Some(mut gone) = scopes_gone {
            let wait = (last_ok + timing.lease).saturating_sub(clock.now());
            tokio::select! {
                _ = gone.recv() => {}
                () = sleep_on(&clock, wait) => {
                    warn!("a leadership scope outlived the lease; releasing anyway");
                }
            }
        }
        // After a graceful stop or a failed renewal the lease may still be ours in the store:
        // give it back (owner-checked, so never someone else's) so followers need not wait.
        if let Err(e) = self.release(candidacy, &lease).await
            && reason == LossReason::Stopped
        {
            self.stop_error = Some((Some(lease), e));
        }
        reason
    }

    async fn release(&self, candidacy: &mut Box<dyn Candidacy>, lease: &Lease) -> Result<()> {
        let outcome =
            with_timeout(self.shared.timing.request_timeout, candidacy.release(lease)).await;
        match &outcome {
            Ok(()) => debug!(token = %lease.token, "lease released"),
            Err(e) => warn!(error = %e, "releasing the lease failed; it will expire in the store"),
        }
        outcome
    }

    /// Start acting as leader. Returns a receiver that yields `None` once every
    /// [`Leadership`](super::Leadership) scope of the term has been dropped.
    fn become_leader(&mut self, lease: &Lease, deadline: Duration) -> mpsc::Receiver<()> {
        let (alive, scopes_gone) = mpsc::channel(1);
        *self.shared.scope.lock().unwrap_or_else(|e| e.into_inner()) = Some(Term {
            token: lease.token,
            cancel: CancellationToken::new(),
            alive,
        });
        self.shared
            .deadline
            .store(deadline.as_nanos() as u64, Ordering::Release);
        let me = self.shared.candidate.clone();
        let previous = self.shared.state.borrow().leader.clone();
        self.update_state(|s| {
            s.role = Role::Leader;
            s.token = Some(lease.token);
            s.leader = Some(me.clone());
            s.last_error = None;
        });
        info!(token = %lease.token, "became leader");
        metrics::gauge!("baton_is_leader", "key" => self.shared.key.clone()).set(1.0);
        metrics::counter!("baton_transitions_total", "key" => self.shared.key.clone(), "reason" => "acquired")
            .increment(1);
        self.emit(Event::BecameLeader {
            candidate: me.clone(),
            key: self.shared.key.clone(),
            token: lease.token,
        });
        if previous.as_deref() != Some(me.as_str()) {
            self.emit(Event::LeaderChanged {
                previous,
                current: Some(me),
            });
        }
        self.report_first(Ok(()));
        scopes_gone
    }

    /// Stop acting as leader: clear the deadline, cancel the scope, publish, emit.
    fn step_down(&mut self, lease: &Lease, reason: LossReason, record: Option<&LeaseRecord>) {
        self.shared.deadline.store(0, Ordering::Release);
        if let Some(term) = self
            .shared
            .scope
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            term.cancel.cancel();
        }
        let current = record.map(|r| r.holder.clone());
        let previous = self.shared.state.borrow().leader.clone();
        self.update_state(|s| {
            s.role = Role::Follower;
            s.token = None;
            s.leader = current.clone();
        });
        match reason {
            LossReason::Stopped => info!(token = %lease.token, "stepped down: stopping"),
            _ => warn!(token = %lease.token, %reason, "stepped down"),
        }
        metrics::gauge!("baton_is_leader", "key" => self.shared.key.clone()).set(0.0);
        metrics::counter!("baton_transitions_total", "key" => self.shared.key.clone(), "reason" => reason.as_str())
            .increment(1);
        self.emit(Event::LostLeadership {
            candidate: self.shared.candidate.clone(),
            key: self.shared.key.clone(),
            token: lease.token,
            reason,
        });
        if previous != current {
            self.emit(Event::LeaderChanged { previous, current });
        }
    }

    fn set_leader(&self, leader: Option<String>, _record: Option<&LeaseRecord>) {
        let previous = self.shared.state.borrow().leader.clone();
        if previous == leader {
            return;
        }
        self.update_state(|s| s.leader = leader.clone());
        debug!(?previous, current = ?leader, "leader changed");
        self.emit(Event::LeaderChanged {
            previous,
            current: leader,
        });
    }

    /// Handle a store error. Returns true if the election must stop: only errors that retrying
    /// cannot fix, and only on the first attempt (later they are logged and retried, so a
    /// candidate never silently stops competing).
    fn fail(&mut self, e: Error) -> bool {
        self.note_error(&e);
        if self.first.is_some() && !e.is_transient() {
            self.report_first(Err(e));
            return true;
        }
        if self.first.is_some() {
            warn!(error = %e, "store error on the first attempt; campaigning on with backoff");
            self.report_first(Ok(()));
        } else {
            warn!(error = %e, "store error; retrying with backoff");
        }
        false
    }

    fn note_error(&self, e: &Error) {
        metrics::counter!("baton_store_errors_total", "key" => self.shared.key.clone(), "kind" => e.kind())
            .increment(1);
        let msg = e.to_string();
        self.update_state(|s| s.last_error = Some(msg.clone()));
    }

    fn clear_error(&self) {
        if self.shared.state.borrow().last_error.is_some() {
            self.update_state(|s| s.last_error = None);
        }
    }

    fn next_backoff(&mut self) -> Duration {
        let timing = self.shared.timing;
        let current = self.backoff;
        self.backoff = (self.backoff * 2).min(timing.backoff_max);
        // "Equal jitter": between half and all of the current step.
        current.mul_f64(0.5 + fastrand::f64() * 0.5)
    }

    fn update_state(&self, f: impl FnOnce(&mut ElectionState)) {
        self.shared.state.send_modify(f);
    }

    fn emit(&self, event: Event) {
        // No receivers is fine; a full buffer drops the oldest for laggards, never blocks.
        let _ = self.shared.events.send(event);
    }

    fn report_first(&mut self, result: Result<()>) {
        if let Some(tx) = self.first.take() {
            let _ = tx.send(result);
        }
    }
}
