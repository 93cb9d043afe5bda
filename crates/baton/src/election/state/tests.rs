//! Tests of the timing rules as tests of [`step`]: synchronous, with chosen `now` values, no
//! runtime. Table-driven where a table fits; property tests over random input sequences for
//! the invariants (never leading past the deadline, stepping down at the earliest of the three
//! moments, tokens never going backwards).

use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::ElectionOptions;
use crate::store::{Acquire, HandoffMark};

const ME: &str = "me";
const KEY: &str = "jobs:leader";

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// The seed's defaults: lease 15 s, renew 5 s, grace 5 s; validity 14.695 s.
fn timing() -> Timing {
    ElectionOptions::default().timing()
}

fn config(unsafe_ignore_deadline: bool) -> Config {
    Config {
        key: KEY.into(),
        candidate: ME.into(),
        timing: timing(),
        unsafe_ignore_deadline,
        listen_while_leading: false,
        presence: false,
        priority: 0,
    }
}

fn idle() -> ElectionState {
    ElectionState {
        role: Role::Idle,
        leader: None,
        token: None,
        last_error: None,
    }
}

fn lease(token: u64) -> Lease {
    Lease::new(KEY, ME, FencingToken(token))
}

fn unavailable() -> Error {
    Error::Unavailable {
        store: "test",
        message: "injected".into(),
        source: None,
    }
}

/// An election started at 0 with a fixed seed.
fn started() -> Election {
    started_with(config(false))
}

/// An election with `config` started at 0 with a fixed seed.
fn started_with(config: Config) -> Election {
    let (state, actions) = Election::start(config, idle(), fastrand::Rng::with_seed(1), ms(0));
    assert!(matches!(actions[..], [Action::Join]));
    state
}

/// An election that joined, subscribed (`subscribed`) and is trying to acquire at 0.
fn acquiring(subscribed: bool) -> Election {
    acquiring_with(config(false), subscribed)
}

/// [`acquiring`], with `config`.
fn acquiring_with(config: Config, subscribed: bool) -> Election {
    let mut e = started_with(config);
    // Past the run's first attempt, which goes out before subscribing (its own tests below).
    e.probe = false;
    let a = e.step(Input::Joined(Ok(())), ms(0));
    assert!(a.iter().any(|a| matches!(a, Action::Subscribe)));
    let a = e.step(Input::Subscribed(Ok(subscribed)), ms(0));
    assert!(a.iter().any(|a| matches!(a, Action::TryAcquire)));
    e
}

/// An election that acquired `lease(1)` with a request sent at `sent`, answered at `now`.
fn holding(sent: Duration, now: Duration) -> (Election, Vec<Action>) {
    step(
        acquiring(true),
        Input::Acquired {
            sent,
            complete: false,
            outcome: Ok(Acquire::Acquired(lease(1))),
        },
        now,
    )
}

fn timer_of(actions: &[Action]) -> Option<Option<Duration>> {
    actions.iter().rev().find_map(|a| match a {
        Action::Timer(t) => Some(*t),
        _ => None,
    })
}

fn end_reason(actions: &[Action]) -> Option<LossReason> {
    actions.iter().find_map(|a| match a {
        Action::EndTerm { reason } => Some(*reason),
        _ => None,
    })
}

fn began(actions: &[Action]) -> Option<FencingToken> {
    actions.iter().find_map(|a| match a {
        Action::BeginTerm { token } => Some(*token),
        _ => None,
    })
}

fn renew_timeout(actions: &[Action]) -> Option<Duration> {
    actions.iter().find_map(|a| match a {
        Action::Renew { timeout, .. } => Some(*timeout),
        _ => None,
    })
}

fn events(actions: &[Action]) -> Vec<&Event> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Emit(e) => Some(e),
            _ => None,
        })
        .collect()
}

fn finish(actions: &[Action]) -> Option<&Result<()>> {
    actions.iter().find_map(|a| match a {
        Action::Finish(r) => Some(r),
        _ => None,
    })
}

// --- the rules as pure functions ---

#[test]
fn a_stop_while_subscribing_leaves_without_acquiring() {
    let mut e = started();
    e.probe = false;
    let a = e.step(Input::Joined(Ok(())), ms(0));
    assert!(a.iter().any(|a| matches!(a, Action::Subscribe)));
    e.step(Input::Stop, ms(1));
    let a = e.step(Input::Subscribed(Ok(true)), ms(2));
    assert!(
        !a.iter().any(|a| matches!(a, Action::TryAcquire)),
        "a stopped candidate must not take a lease: {a:?}"
    );
    assert!(a.iter().any(|a| matches!(a, Action::Leave)), "{a:?}");
}

/// The answer to an acquire sent at `sent`: `lease(1)` won.
fn won(sent: Duration) -> Input {
    Input::Acquired {
        sent,
        complete: false,
        outcome: Ok(Acquire::Acquired(lease(1))),
    }
}

/// The answer to an acquire sent at `sent`: the store failed.
fn failed(sent: Duration) -> Input {
    Input::Acquired {
        sent,
        complete: false,
        outcome: Err(unavailable()),
    }
}

fn held_by(holder: &str) -> Input {
    Input::Acquired {
        sent: ms(0),
        complete: false,
        outcome: Ok(Acquire::Held(LeaseRecord {
            holder: holder.into(),
            token: FencingToken(7),
            ttl: secs(10),
        })),
    }
}

/// D128: the run's first attempt goes out before subscribing; a candidate that gets the lease
/// never subscribes.
#[test]
fn the_first_attempt_goes_out_before_subscribing_and_a_winner_never_subscribes() {
    let mut e = started();
    let a = e.step(Input::Joined(Ok(())), ms(0));
    assert!(a.iter().any(|a| matches!(a, Action::TryAcquire)), "{a:?}");
    assert!(!a.iter().any(|a| matches!(a, Action::Subscribe)), "{a:?}");
    let a = e.step(won(ms(0)), ms(1));
    assert!(
        !a.iter()
            .any(|a| matches!(a, Action::Subscribe | Action::Unsubscribe)),
        "{a:?}"
    );
    assert_eq!(began(&a), Some(FencingToken(1)));
}

/// D128: a first attempt that finds the key held subscribes and tries again at once (a
/// release between the two attempts is then seen), and only then waits; later cycles
/// subscribe first, as before.
#[test]
fn a_first_attempt_that_finds_the_key_held_subscribes_and_tries_again() {
    let mut e = started();
    e.step(Input::Joined(Ok(())), ms(0));
    let a = e.step(held_by("other"), ms(1));
    assert!(matches!(a.last(), Some(Action::Subscribe)), "{a:?}");
    assert!(
        a.iter().any(|a| matches!(a, Action::ReportFirst(Ok(())))),
        "start() learns of the first attempt: {a:?}"
    );
    let a = e.step(Input::Subscribed(Ok(true)), ms(2));
    assert!(matches!(a.last(), Some(Action::TryAcquire)), "{a:?}");
    // Held again: now it waits (a timer), subscribed.
    let a = e.step(held_by("other"), ms(3));
    assert!(
        !a.iter()
            .any(|a| matches!(a, Action::TryAcquire | Action::Subscribe)),
        "{a:?}"
    );
    assert!(matches!(timer_of(&a), Some(Some(_))), "{a:?}");
    // The stream ends: the next cycle subscribes before trying, as every later one does.
    let a = e.step(Input::Changed(None), ms(4));
    assert!(a.iter().any(|a| matches!(a, Action::Subscribe)), "{a:?}");
    assert!(!a.iter().any(|a| matches!(a, Action::TryAcquire)), "{a:?}");
}

/// D128: a stop that arrives during the first attempt leaves once it is answered, without
/// subscribing.
#[test]
fn a_stop_during_the_first_attempt_leaves_without_subscribing() {
    let mut e = started();
    e.step(Input::Joined(Ok(())), ms(0));
    e.step(Input::Stop, ms(1));
    let a = e.step(held_by("other"), ms(2));
    assert!(!a.iter().any(|a| matches!(a, Action::Subscribe)), "{a:?}");
    assert!(a.iter().any(|a| matches!(a, Action::Leave)), "{a:?}");
}

#[test]
fn the_rules_for_the_seed_defaults() {
    let t = timing();
    assert_eq!(deadline_after(&t, secs(1)), secs(1) + ms(14_695));
    assert_eq!(step_down_at(&t, secs(1), false), secs(11));
    assert_eq!(step_down_at(&t, secs(1), true), Duration::MAX);
    assert_eq!(shutdown_budget(&t), ms(4_695));
    assert_eq!(ElectionOptions::default().shutdown_budget(), ms(4_695));
}

/// `leads`: the deadline itself is already too late; the unsafe variant ignores it.
#[test]
fn leads_is_strictly_before_the_deadline() {
    let table = [
        (None, secs(1), false, false),
        (Some(secs(2)), secs(1), false, true),
        (Some(secs(2)), secs(2), false, false),
        (Some(secs(2)), secs(3), false, false),
        (Some(secs(2)), secs(3), true, true),
        (None, secs(3), true, false),
    ];
    for (deadline, now, unsafe_mode, expected) in table {
        assert_eq!(
            leads(deadline, now, unsafe_mode),
            expected,
            "{deadline:?} at {now:?}, unsafe {unsafe_mode}"
        );
    }
}

#[test]
fn the_shutdown_budget_scales_with_the_lease() {
    // (lease, renew, grace, budget): validity minus renew and grace.
    let table = [
        (1_500, 300, 300, 1_500 - 15 - 20 - 600),
        (15_000, 5_000, 5_000, 4_695),
        (120_000, 10_000, 10_000, 120_000 - 1_200 - 1_205 - 20_000),
        (10_000, 4_500, 5_000, 10_000 - 100 - 105 - 9_500),
    ];
    for (lease, renew, grace, budget) in table {
        let o = ElectionOptions::new()
            .with_lease_duration(ms(lease))
            .with_renew_interval(ms(renew))
            .with_grace_period(ms(grace));
        o.validate().unwrap();
        assert_eq!(o.shutdown_budget(), ms(budget), "lease {lease} ms");
        assert_eq!(
            o.shutdown_budget(),
            o.leader_validity() - (o.renew_interval + o.grace_period)
        );
    }
}

#[test]
fn health_follows_the_published_times() {
    let t = timing();
    let view = |role, deadline: Option<u64>, renewed: u64, progress: u64, due: u64| HealthView {
        role,
        last_error: None,
        stopped_on_purpose: false,
        task_ended: false,
        deadline: deadline.map(secs),
        renewed: secs(renewed),
        progress: secs(progress),
        progress_due: secs(due),
        unsafe_mode: false,
    };
    // (view, now in s, healthy)
    let table = [
        (view(Role::Idle, None, 0, 0, 0), 100, true),
        (view(Role::Leader, Some(20), 5, 0, 0), 10, true),
        // Renewal overdue: more than renew + grace (10 s) since the last good one.
        (view(Role::Leader, Some(20), 5, 0, 0), 16, false),
        // Past the deadline without stepping down: wedged.
        (view(Role::Leader, Some(20), 15, 0, 0), 20, false),
        // A follower: two leases plus a request timeout (35 s) without progress...
        (view(Role::Follower, None, 0, 0, 0), 35, true),
        (view(Role::Follower, None, 0, 0, 0), 36, false),
        // ...unless it waits on purpose until later (a complete stream).
        (view(Role::Follower, None, 0, 0, 300), 36, true),
        (view(Role::Follower, None, 0, 0, 300), 321, false),
    ];
    for (v, now, healthy) in table {
        let h = health(&v, secs(now), &t);
        assert_eq!(h.healthy, healthy, "{v:?} at {now} s: {}", h.detail);
    }
}

// --- rule 1: the deadline counts from the send time ---

/// (sent, answered): the deadline is `sent + validity` however late the answer; an answer at
/// or after that moment is never acted on, and the lease is given back.
#[test]
fn the_deadline_counts_from_the_send_time() {
    let validity = timing().validity;
    for (sent, answered) in [(0, 0), (0, 4_000), (1_000, 10_999), (0, 9_999)] {
        let (e, a) = holding(ms(sent), ms(answered));
        assert_eq!(
            began(&a),
            Some(FencingToken(1)),
            "sent {sent}, answered {answered}"
        );
        assert_eq!(e.deadline(), Some(ms(sent) + validity));
        // The first renewal is due renew_interval after the send.
        assert_eq!(timer_of(&a), Some(Some(ms(sent) + secs(5))));
    }
    // At or after the deadline, or after renew + grace (the acquire counts as the last good
    // renewal): never acted on, given back.
    for (sent, answered) in [(0, 14_695), (0, 20_000), (1_000, 11_000), (1_000, 14_000)] {
        let (e, a) = holding(ms(sent), ms(answered));
        assert_eq!(began(&a), None, "sent {sent}, answered {answered}");
        assert_eq!(e.deadline(), None);
        assert!(a.iter().any(|a| matches!(a, Action::Release(_))));
    }
}

#[test]
fn a_slow_renewal_counts_from_its_send_time() {
    let (mut e, _) = holding(ms(0), ms(0));
    let a = e.step(Input::Timer, secs(5));
    assert_eq!(
        renew_timeout(&a),
        Some(secs(5)),
        "at most until renew + grace"
    );
    e.step(
        Input::Renewed {
            sent: secs(5),
            outcome: Ok(Renew::Renewed),
        },
        secs(9),
    );
    assert_eq!(e.deadline(), Some(secs(5) + timing().validity));
    assert_eq!(e.renewed(), secs(5));
}

// --- rule 2: step down at the earliest of three moments ---

/// One scenario per row: renewal answers (at, outcome) after leading from 0; the step-down
/// time and reason expected.
#[test]
fn step_down_moments() {
    enum R {
        Ok,
        Fail,
        Lost,
    }
    struct Row {
        name: &'static str,
        answers: Vec<(u64, R)>,
        /// A timer that fires this late (a suspend).
        late: Duration,
        expected: (u64, LossReason),
    }
    let rows = vec![
        Row {
            name: "a renewal answering Lost steps down at once",
            answers: vec![(5_000, R::Lost)],
            late: Duration::ZERO,
            expected: (5_000, LossReason::LeaseLost),
        },
        Row {
            name: "failing renewals step down at renew + grace",
            answers: vec![(5_000, R::Fail)],
            late: Duration::ZERO,
            expected: (10_000, LossReason::RenewalsFailed),
        },
        Row {
            name: "renew + grace counts from the last good renewal's send",
            answers: vec![(5_000, R::Ok), (10_000, R::Fail)],
            late: Duration::ZERO,
            expected: (15_000, LossReason::RenewalsFailed),
        },
        Row {
            name: "a timer that fires past the deadline reports the deadline",
            answers: vec![],
            late: secs(20),
            expected: (25_000, LossReason::DeadlineReached),
        },
    ];
    for row in rows {
        let (mut e, _) = holding(ms(0), ms(0));
        let mut answers = row.answers.into_iter().peekable();
        let mut outcome = None;
        for _ in 0..100 {
            let Some(at) = e.armed else {
                panic!("{}: no timer while holding", row.name)
            };
            let now = at + row.late;
            let a = e.step(Input::Timer, now);
            if let Some(reason) = end_reason(&a) {
                outcome = Some((now, reason));
                break;
            }
            let Some(timeout) = renew_timeout(&a) else {
                continue;
            };
            let (answer_at, r) = match answers.next() {
                Some((t, r)) => (ms(t).max(now), r),
                None => (now, R::Fail),
            };
            let (answer_at, result) = match r {
                _ if answer_at > now + timeout => (now + timeout, Err(Error::Timeout(timeout))),
                R::Ok => (answer_at, Ok(Renew::Renewed)),
                R::Fail => (answer_at, Err(unavailable())),
                R::Lost => (answer_at, Ok(Renew::Lost(None))),
            };
            let a = e.step(
                Input::Renewed {
                    sent: now,
                    outcome: result,
                },
                answer_at,
            );
            if let Some(reason) = end_reason(&a) {
                outcome = Some((answer_at, reason));
                break;
            }
        }
        let (at, reason) = outcome.unwrap_or_else(|| panic!("{}: never stepped down", row.name));
        assert_eq!(
            (at, reason),
            (ms(row.expected.0), row.expected.1),
            "{}",
            row.name
        );
        assert_eq!(e.deadline(), None, "{}", row.name);
    }
}

/// A renewal in flight never outlives the step-down moment: its timeout ends there, and the
/// timeout's answer steps down.
#[test]
fn a_hung_renewal_is_bounded_by_the_step_down_moment() {
    let (mut e, _) = holding(ms(0), ms(0));
    let a = e.step(Input::Timer, secs(5));
    assert_eq!(renew_timeout(&a), Some(secs(5)));
    assert_eq!(
        timer_of(&a),
        None,
        "the timer fired; none while the renewal is out"
    );
    assert_eq!(e.armed, None);
    let a = e.step(
        Input::Renewed {
            sent: secs(5),
            outcome: Err(Error::Timeout(secs(5))),
        },
        secs(10),
    );
    // The timeout's answer arrives at the step-down moment: it steps down.
    assert_eq!(end_reason(&a), Some(LossReason::RenewalsFailed));
}

#[test]
fn the_unsafe_variant_ignores_the_deadline_and_the_grace_period() {
    let (mut e, _) = Election::start(config(true), idle(), fastrand::Rng::with_seed(1), ms(0));
    e.step(Input::Joined(Ok(())), ms(0));
    e.step(Input::Subscribed(Ok(false)), ms(0));
    e.step(won(ms(0)), ms(0));
    let a = e.step(Input::Timer, secs(5));
    assert_eq!(renew_timeout(&a), Some(timing().request_timeout));
    let a = e.step(
        Input::Renewed {
            sent: secs(5),
            outcome: Err(unavailable()),
        },
        secs(60),
    );
    assert_eq!(end_reason(&a), None);
    assert!(e.deadline().is_some());
}

// --- act_after ---

#[test]
fn a_lease_with_act_after_is_renewed_but_acted_on_only_from_then() {
    let mut e = acquiring(false);
    let a = e.step(
        Input::Acquired {
            sent: ms(0),
            complete: false,
            outcome: Ok(Acquire::Acquired(lease(1).with_act_after(secs(7)))),
        },
        ms(0),
    );
    assert_eq!(began(&a), None);
    assert!(a.iter().any(|a| matches!(a, Action::ReportFirst(Ok(())))));
    assert_eq!(timer_of(&a), Some(Some(secs(5))), "the renewal first");
    let a = e.step(Input::Timer, secs(5));
    assert!(renew_timeout(&a).is_some());
    let a = e.step(
        Input::Renewed {
            sent: secs(5),
            outcome: Ok(Renew::Renewed),
        },
        secs(5),
    );
    assert_eq!(timer_of(&a), Some(Some(secs(7))), "then acting");
    let a = e.step(Input::Timer, secs(7));
    assert_eq!(began(&a), Some(FencingToken(1)));
    assert_eq!(e.deadline(), Some(secs(5) + timing().validity));
}

/// A holder that could act only once its renewals have already failed past renew + grace
/// never begins a term it would have to end at once (D71).
#[test]
fn a_term_never_begins_at_or_after_the_step_down_moment() {
    let mut e = acquiring(false);
    e.step(
        Input::Acquired {
            sent: ms(0),
            complete: false,
            outcome: Ok(Acquire::Acquired(lease(1).with_act_after(secs(12)))),
        },
        ms(0),
    );
    let mut now = ms(0);
    loop {
        let at = e.armed.expect("a timer while holding");
        now = now.max(at);
        let a = e.step(Input::Timer, now);
        assert_eq!(began(&a), None, "at {now:?}");
        if end_reason(&a).is_some() || a.iter().any(|a| matches!(a, Action::Release(_))) {
            break;
        }
        if renew_timeout(&a).is_some() {
            let a = e.step(
                Input::Renewed {
                    sent: now,
                    outcome: Err(unavailable()),
                },
                now,
            );
            assert_eq!(began(&a), None);
        }
    }
    assert!(now >= secs(10) && now < secs(12), "{now:?}");
}

// --- followers ---

#[test]
fn a_follower_waits_for_the_holders_ttl_or_the_complete_stream() {
    let t = timing();
    // (subscribed, the candidacy's stream complete, ttl read, wait from, wait to)
    let table = [
        (true, false, secs(3), secs(3), secs(3) + t.jitter_max),
        (false, false, secs(3), secs(3), secs(3) + t.jitter_max),
        // Never longer than a lease, whatever the store says.
        (true, false, secs(60), t.lease, t.lease),
        // A complete stream: the long recheck.
        (
            true,
            true,
            secs(3),
            t.complete_watch_recheck,
            t.complete_watch_recheck + t.jitter_max,
        ),
        // "Complete" means nothing without a stream.
        (false, true, secs(3), secs(3), secs(3) + t.jitter_max),
    ];
    for (subscribed, complete, ttl, from, to) in table {
        let mut e = acquiring(subscribed);
        let a = e.step(
            Input::Acquired {
                sent: secs(1),
                complete,
                outcome: Ok(Acquire::Held(LeaseRecord::new(
                    "other",
                    FencingToken(9),
                    ttl,
                ))),
            },
            secs(1),
        );
        let at = timer_of(&a).flatten().expect("a wait");
        let wait = at - secs(1);
        assert!(
            wait >= from && wait <= to,
            "{subscribed} {complete} {ttl:?}: {wait:?}"
        );
        assert_eq!(e.view.leader.as_deref(), Some("other"));
        assert_eq!(e.progress_due(), at);
        assert!(
            events(&a)
                .iter()
                .any(|e| matches!(e, Event::LeaderChanged { .. }))
        );
        assert_eq!(
            a.iter().any(|a| matches!(a, Action::Listen(true))),
            subscribed
        );
    }
}

#[test]
fn a_follower_told_of_a_new_holder_waits_without_asking_and_wakes_on_a_release() {
    let t = timing();
    let mut e = acquiring(true);
    e.step(
        Input::Acquired {
            sent: secs(0),
            complete: false,
            outcome: Ok(Acquire::Held(LeaseRecord::new(
                "a",
                FencingToken(1),
                secs(2),
            ))),
        },
        secs(0),
    );
    let a = e.step(
        Input::Changed(Some(Change::Acquired { holder: "b".into() })),
        secs(1),
    );
    assert!(!a.iter().any(Action::is_store_call));
    let at = timer_of(&a).flatten().unwrap();
    assert!(at >= secs(1) + t.lease && at <= secs(1) + t.lease + t.jitter_max);
    assert_eq!(e.view.leader.as_deref(), Some("b"));
    assert_eq!(e.progress(), secs(1));
    // Its own renewal is no news.
    let a = e.step(
        Input::Changed(Some(Change::Renewed { holder: ME.into() })),
        secs(2),
    );
    assert!(a.iter().any(|a| matches!(a, Action::TryAcquire)));
    // A stream that ends is subscribed again before the next try.
    let mut e = acquiring(true);
    e.step(
        Input::Acquired {
            sent: secs(0),
            complete: false,
            outcome: Ok(Acquire::Held(LeaseRecord::new(
                "a",
                FencingToken(1),
                secs(2),
            ))),
        },
        secs(0),
    );
    let a = e.step(Input::Changed(None), secs(1));
    assert!(a.iter().any(|a| matches!(a, Action::Subscribe)));
}

/// A change stream that ends while the store is failing (its server is down, so every new
/// stream ends at once) waits the shortest backoff step before subscribing again, never a busy
/// loop of subscribe and attempt; a stream that ends while the store answers is subscribed
/// again at once (above).
#[test]
fn a_stream_that_ends_while_the_store_fails_waits_the_shortest_backoff_step() {
    let t = timing();
    let mut e = acquiring(true);
    // Grow the backoff well past its first step.
    let mut now = secs(0);
    for _ in 0..6 {
        e.step(failed(now), now);
        let Phase::Waiting { until, .. } = e.phase else {
            panic!("a follower waits after a failed attempt: {:?}", e.phase);
        };
        now = until;
        let a = e.step(Input::Timer, now);
        assert!(a.iter().any(|a| matches!(a, Action::TryAcquire)), "{a:?}");
    }
    e.step(failed(now), now);
    let Phase::Waiting { until: backoff, .. } = e.phase else {
        panic!("waiting");
    };
    assert!(backoff - now > t.backoff_min, "the backoff grew");
    // The stream ends 1 ms later: no store call now, a look after the shortest step.
    let a = e.step(Input::Changed(None), now + ms(1));
    assert!(!a.iter().any(Action::is_store_call), "{a:?}");
    assert!(a.iter().any(|a| matches!(a, Action::Unsubscribe)), "{a:?}");
    assert_eq!(timer_of(&a), Some(Some(now + ms(1) + t.backoff_min)));
    // Then it subscribes again and tries.
    let a = e.step(Input::Timer, now + ms(1) + t.backoff_min);
    assert!(a.iter().any(|a| matches!(a, Action::Subscribe)), "{a:?}");
}

/// Backoff on store errors: equal jitter over a step that doubles up to its cap, and back to
/// the minimum after an answer.
#[test]
fn store_errors_back_off_doubling_to_the_cap() {
    let t = timing();
    let mut e = acquiring(false);
    let mut step = t.backoff_min;
    let mut now = secs(0);
    for round in 0..12 {
        let a = e.step(failed(now), now);
        if round == 0 {
            assert!(a.iter().any(|a| matches!(a, Action::ReportFirst(Ok(())))));
        }
        let at = timer_of(&a).flatten().unwrap();
        let wait = at - now;
        assert!(
            wait >= step / 2 && wait <= step,
            "round {round}: {wait:?} for {step:?}"
        );
        step = (step * 2).min(t.backoff_max);
        now = at;
        let a = e.step(Input::Timer, now);
        assert!(a.iter().any(|a| matches!(a, Action::Subscribe)));
        e.step(Input::Subscribed(Ok(false)), now);
    }
    assert_eq!(step, t.backoff_max);
    e.step(
        Input::Acquired {
            sent: now,
            complete: false,
            outcome: Ok(Acquire::Held(LeaseRecord::new(
                "a",
                FencingToken(1),
                secs(1),
            ))),
        },
        now,
    );
    assert_eq!(e.backoff, t.backoff_min);
}

#[test]
fn only_the_first_attempt_can_fail_start() {
    // A fatal error on the first join: start() fails, nothing to leave.
    let mut e = started();
    let a = e.step(Input::Joined(Err(Error::Config("bad".into()))), ms(0));
    assert!(matches!(
        a.iter().find(|a| matches!(a, Action::ReportFirst(_))),
        Some(Action::ReportFirst(Err(Error::Config(_))))
    ));
    assert!(matches!(finish(&a), Some(Ok(()))));
    assert!(!a.iter().any(|a| matches!(a, Action::Leave)));
    // On the first acquire: leave, then stop.
    let mut e = acquiring(false);
    let a = e.step(
        Input::Acquired {
            sent: ms(0),
            complete: false,
            outcome: Err(Error::ForeignData {
                key: KEY.into(),
                found: "a string".into(),
            }),
        },
        ms(0),
    );
    assert!(a.iter().any(|a| matches!(a, Action::Leave)));
    // Later, the same error is retried.
    let mut e = acquiring(false);
    e.step(
        Input::Acquired {
            sent: ms(0),
            complete: false,
            outcome: Ok(Acquire::Held(LeaseRecord::new(
                "a",
                FencingToken(1),
                secs(1),
            ))),
        },
        ms(0),
    );
    e.step(Input::Timer, secs(2));
    e.step(Input::Subscribed(Ok(false)), secs(2));
    let a = e.step(
        Input::Acquired {
            sent: secs(2),
            complete: false,
            outcome: Err(Error::ForeignData {
                key: KEY.into(),
                found: "a string".into(),
            }),
        },
        secs(2),
    );
    assert!(
        !a.iter()
            .any(|a| matches!(a, Action::Leave | Action::Finish(_)))
    );
    assert!(timer_of(&a).flatten().is_some());
}

// --- graceful stop ---

#[test]
fn a_graceful_stop_cancels_then_emits_then_waits_for_the_scopes_then_releases() {
    let (mut e, _) = holding(ms(0), ms(0));
    let a = e.step(Input::Timer, secs(5));
    assert!(renew_timeout(&a).is_some());
    let a = e.step(Input::Stop, secs(6));
    let order: Vec<&str> = a
        .iter()
        .filter_map(|a| match a {
            Action::Abandon => Some("abandon"),
            Action::EndTerm { .. } => Some("cancel"),
            Action::Emit(Event::LostLeadership { reason, .. }) => {
                assert_eq!(*reason, LossReason::Stopped);
                Some("lost")
            }
            Action::Release(_) => Some("release"),
            Action::AwaitScopes(true) => Some("await scopes"),
            _ => None,
        })
        .collect();
    assert_eq!(order, ["abandon", "cancel", "lost", "await scopes"]);
    assert_eq!(e.deadline(), None);
    // Waits for the scopes at most until the lease would have expired (from the last good
    // send, 0).
    assert_eq!(timer_of(&a), Some(Some(timing().lease)));
    let a = e.step(Input::ScopesGone, secs(7));
    assert!(a.iter().any(|a| matches!(a, Action::Release(_))));
    let a = e.step(Input::Released(Ok(())), secs(7));
    assert!(a.iter().any(|a| matches!(a, Action::Leave)));
    let a = e.step(Input::Left(Ok(())), secs(7));
    assert!(matches!(finish(&a), Some(Ok(()))));
    assert!(e.is_stopped());
    assert_eq!(e.view.role, Role::Stopped);
}

#[test]
fn a_handoff_ends_the_term_like_a_stop_then_marks_the_lease_and_campaigns_on() {
    let (mut e, _) = holding(ms(0), ms(0));
    let a = e.step(Input::Timer, secs(5));
    assert!(renew_timeout(&a).is_some());
    let a = e.step(
        Input::HandOver {
            to: Some("next".into()),
        },
        secs(6),
    );
    let order: Vec<&str> = a
        .iter()
        .filter_map(|a| match a {
            Action::Abandon => Some("abandon"),
            Action::EndTerm { .. } => Some("cancel"),
            Action::Emit(Event::LostLeadership { reason, .. }) => {
                assert_eq!(*reason, LossReason::HandedOver);
                Some("lost")
            }
            Action::Release(_) | Action::HandOver { .. } => Some("release"),
            Action::AwaitScopes(true) => Some("await scopes"),
            Action::HandOverDone(_) => Some("answered"),
            _ => None,
        })
        .collect();
    assert_eq!(order, ["abandon", "cancel", "lost", "await scopes"]);
    assert_eq!(e.deadline(), None);
    // A second request while the first is under way is refused, and changes nothing.
    let again = e.step(Input::HandOver { to: None }, secs(6));
    assert!(
        matches!(
            again.as_slice(),
            [Action::HandOverDone(Err(Error::NotLeader))]
        ),
        "{again:?}"
    );
    let a = e.step(Input::ScopesGone, secs(7));
    let window = a.iter().find_map(|a| match a {
        Action::HandOver { to, window, .. } => {
            assert_eq!(to.as_deref(), Some("next"));
            Some(*window)
        }
        _ => None,
    });
    assert_eq!(window, Some(timing().lease), "the mark lasts one lease");
    // Answered once; then a follower again: it subscribes and tries (and is kept out by the
    // mark until `next` leads or the mark runs out).
    let a = e.step(Input::Released(Ok(())), secs(7));
    assert!(matches!(a.first(), Some(Action::HandOverDone(Ok(())))));
    assert!(a.iter().any(|a| matches!(a, Action::Subscribe)));
    assert_eq!(e.view.role, Role::Follower);
    let _ = e.step(Input::Subscribed(Ok(true)), secs(7));
    let a = e.step(
        Input::Acquired {
            sent: secs(7),
            complete: true,
            outcome: Ok(Acquire::Reserved(HandoffMark::new(
                Some("next".into()),
                ME,
                secs(9),
            ))),
        },
        secs(7),
    );
    let wake = timer_of(&a).flatten().expect("waits for the mark");
    assert!(
        wake >= secs(16) && wake <= secs(16) + timing().jitter_max,
        "{wake:?}"
    );
    // A follower (or a stopped election) has nothing to hand over.
    let a = e.step(Input::HandOver { to: None }, secs(8));
    assert!(matches!(
        a.as_slice(),
        [Action::HandOverDone(Err(Error::NotLeader))]
    ));
}

/// Rows: what the read after a failed release finds, and whether stop reports it.
#[test]
fn a_failed_release_is_reported_only_while_the_store_still_holds_the_lease() {
    let t = timing();
    let rows: Vec<(Result<Option<LeaseRecord>>, Option<Duration>)> = vec![
        (
            Ok(Some(LeaseRecord::new(ME, FencingToken(1), secs(9)))),
            Some(secs(9)),
        ),
        (
            Ok(Some(LeaseRecord::new("other", FencingToken(2), secs(9)))),
            None,
        ),
        (
            Ok(Some(LeaseRecord::new(ME, FencingToken(2), secs(9)))),
            None,
        ),
        (Ok(None), None),
        (Err(unavailable()), Some(t.lease)),
    ];
    for (read, reported) in rows {
        let (mut e, _) = holding(ms(0), ms(0));
        e.step(Input::Stop, secs(1));
        e.step(Input::ScopesGone, secs(1));
        e.step(
            Input::Released(Err(Error::Timeout(t.request_timeout))),
            secs(6),
        );
        let a = e.step(Input::Left(Ok(())), secs(6));
        assert!(
            matches!(&a[..], [.., Action::Read(key)] if key == KEY),
            "{a:?}"
        );
        let a = e.step(Input::Read(read), secs(6));
        match (finish(&a), reported) {
            (Some(Ok(())), None) => {}
            (Some(Err(Error::ReleaseFailed { expires_within, .. })), Some(d)) => {
                assert_eq!(*expires_within, d)
            }
            (other, _) => panic!("{other:?} for {reported:?}"),
        }
    }
}

/// A stop that arrives while an acquire is out lets the acquire finish (an abandoned acquire
/// could leave a lease nobody releases); the term that acquire wins ends at once.
#[test]
fn a_stop_during_an_acquire_waits_for_it_then_steps_down_and_releases() {
    let mut e = acquiring(false);
    let a = e.step(Input::Stop, ms(1));
    assert!(a.is_empty(), "{a:?}");
    let a = e.step(won(ms(0)), ms(2));
    assert_eq!(began(&a), Some(FencingToken(1)));
    assert_eq!(end_reason(&a), Some(LossReason::Stopped));
    assert_eq!(e.deadline(), None);
}

/// Answers to no call in flight (an abandoned renewal's, a duplicate) change nothing.
#[test]
fn stale_answers_are_ignored() {
    let (mut e, _) = holding(ms(0), ms(0));
    let before = e.deadline();
    for input in [
        Input::Renewed {
            sent: secs(1),
            outcome: Ok(Renew::Renewed),
        },
        Input::Acquired {
            sent: secs(1),
            complete: false,
            outcome: Ok(Acquire::Acquired(lease(0))),
        },
        Input::Released(Ok(())),
        Input::Changed(Some(Change::Released)),
        Input::ScopesGone,
    ] {
        let a = e.step(input, secs(1));
        assert!(a.is_empty(), "{a:?}");
    }
    assert_eq!(e.deadline(), before);
    assert_eq!(e.view.token, Some(FencingToken(1)));
}

// --- properties over random input sequences ---

/// What the test makes happen next; mapped onto what the election waits for.
#[derive(Debug, Clone)]
enum Choice {
    /// Answer the store call in flight after `delay`; `pick` chooses the outcome.
    Answer { delay: Duration, pick: u8 },
    /// Let the timer fire, `late` after its instant (a suspend, a busy runtime).
    Timer { late: Duration },
    /// The change stream delivers something.
    Change { pick: u8 },
    /// Every scope of the term is dropped.
    ScopesGone,
    /// Stop.
    Stop,
    /// `hand_over`: to a named candidate (odd `pick`) or to anyone.
    HandOver { pick: u8 },
    /// An answer to a call not in flight.
    Stale { pick: u8 },
}

fn choice() -> impl Strategy<Value = Choice> {
    let delay = prop_oneof![
        4 => (0u64..50).prop_map(ms),
        3 => (0u64..3_000).prop_map(ms),
        1 => (0u64..30_000).prop_map(ms),
    ];
    let late = prop_oneof![
        6 => Just(Duration::ZERO),
        3 => (0u64..2_000).prop_map(ms),
        1 => (0u64..30_000).prop_map(ms),
    ];
    prop_oneof![
        10 => (delay, any::<u8>()).prop_map(|(delay, pick)| Choice::Answer { delay, pick }),
        8 => late.prop_map(|late| Choice::Timer { late }),
        2 => any::<u8>().prop_map(|pick| Choice::Change { pick }),
        1 => Just(Choice::ScopesGone),
        1 => Just(Choice::Stop),
        1 => any::<u8>().prop_map(|pick| Choice::HandOver { pick }),
        1 => any::<u8>().prop_map(|pick| Choice::Stale { pick }),
    ]
}

/// The driver's side of the conversation, and the test's model of the rules.
struct World {
    e: Election,
    now: Duration,
    unsafe_mode: bool,
    /// The store call in flight and when it was sent.
    call: Option<(Action, Duration)>,
    timer: Option<Duration>,
    listening: bool,
    awaiting_scopes: bool,
    stop_sent: bool,
    /// The next token the store mints; every acquisition gets a higher one.
    next_token: u64,
    /// Tokens of the terms begun, in order.
    tokens: Vec<u64>,
    /// The model: send time of the last acquire or renewal the store answered with success,
    /// for the lease held.
    last_ok: Option<Duration>,
    leading: bool,
    finished: bool,
    first_reports: usize,
    /// Why each term ended, for the coverage check.
    reasons: Vec<LossReason>,
    /// Handoffs asked for, and answers given (each is answered exactly once).
    handoffs_asked: usize,
    handoffs_answered: usize,
    /// Handoffs that the store was asked to carry out.
    handoffs_made: usize,
}

impl World {
    fn new(unsafe_mode: bool, seed: u64) -> World {
        // Half the worlds listen for handoff requests while leading.
        let config = Config {
            listen_while_leading: seed.is_multiple_of(2),
            ..config(unsafe_mode)
        };
        let (e, actions) = Election::start(config, idle(), fastrand::Rng::with_seed(seed), ms(0));
        let mut w = World {
            e,
            now: ms(0),
            unsafe_mode,
            call: None,
            timer: None,
            listening: false,
            awaiting_scopes: false,
            stop_sent: false,
            next_token: 1,
            tokens: Vec::new(),
            last_ok: None,
            leading: false,
            finished: false,
            first_reports: 0,
            reasons: Vec::new(),
            handoffs_asked: 0,
            handoffs_answered: 0,
            handoffs_made: 0,
        };
        w.apply(actions, &Input::Timer);
        w
    }

    fn step_down_moment(&self) -> Duration {
        let last_ok = self.last_ok.expect("holding");
        step_down_at(&timing(), last_ok, self.unsafe_mode)
    }

    /// Feed `input` at `now` and check every invariant on the answer.
    fn feed(&mut self, input: Input, now: Duration) {
        assert!(now >= self.now, "time goes forward");
        self.now = now;
        if matches!(input, Input::Timer) {
            self.timer = None;
        }
        let was_leading = self.leading;
        let lost = matches!(
            &input,
            Input::Renewed {
                outcome: Ok(Renew::Lost(_)),
                ..
            }
        );
        let stop = matches!(input, Input::Stop);
        let hand_over = matches!(input, Input::HandOver { .. });
        if hand_over {
            self.handoffs_asked += 1;
        }
        let requested = matches!(
            &input,
            Input::Renewed {
                outcome: Ok(Renew::HandoffRequested { .. }),
                ..
            }
        );
        // The model learns from the store's answers what the election may rely on.
        if let Input::Renewed {
            sent,
            outcome: Ok(Renew::Renewed | Renew::HandoffRequested { .. }),
        } = &input
        {
            self.last_ok = Some(*sent);
        }
        let actions = self.e.step(input.clone_for_model(), now);
        if requested
            && actions.iter().any(|a| {
                matches!(
                    a,
                    Action::EndTerm {
                        reason: LossReason::HandedOver
                    }
                )
            })
        {
            // A handoff asked for through the store: answered like one asked of the handle.
            self.handoffs_asked += 1;
        }
        self.apply(actions, &input);
        let t = timing();

        // Never leading past the deadline, nor past renew + grace after the last good send.
        if self.leading {
            let deadline = self.e.deadline().expect("a leader has a deadline");
            let last_ok = self.last_ok.expect("a leader holds a lease");
            assert_eq!(
                deadline,
                deadline_after(&t, last_ok),
                "the deadline counts from the send"
            );
            if !self.unsafe_mode {
                assert!(now < deadline, "leading at {now:?}, deadline {deadline:?}");
                assert!(now < self.step_down_moment(), "leading past renew + grace");
            }
            // ...and the driver is woken no later than the step-down moment: by the timer, or
            // by the timeout of the renewal in flight.
            let wake = match &self.call {
                Some((Action::Renew { timeout, .. }, sent)) => {
                    if self.unsafe_mode {
                        *sent + *timeout
                    } else {
                        assert!(*sent + *timeout <= self.step_down_moment());
                        *sent + *timeout
                    }
                }
                Some(other) => panic!("a leader waits for {other:?}"),
                None => self.timer.expect("a leader has a timer"),
            };
            if !self.unsafe_mode {
                assert!(wake <= self.step_down_moment());
            }
        }
        // Stepping down at the earliest of the three moments, and not before any of them.
        if was_leading && !self.leading {
            let moment = self.step_down_moment();
            assert!(
                lost || stop || hand_over || requested || now >= moment,
                "stepped down early at {now:?}, moment {moment:?}"
            );
        }
        if was_leading && (lost || stop || hand_over) {
            assert!(
                !self.leading,
                "a loss, a stop or a handoff ends the term at once"
            );
        }
        assert!(self.handoffs_answered <= self.handoffs_asked);
        // The election always waits for something until it is over.
        assert!(
            self.finished || self.call.is_some() || self.timer.is_some(),
            "waiting for nothing in {:?}",
            self.e.phase
        );
        assert_eq!(self.finished, self.e.is_stopped());
        assert_eq!(
            self.call.is_some(),
            self.e.awaits_call(),
            "{:?}",
            self.e.phase
        );
        assert!(self.first_reports <= 1);
        // Tokens never go backwards, and the published token is the term's.
        assert!(
            self.tokens.windows(2).all(|w| w[0] < w[1]),
            "{:?}",
            self.tokens
        );
        if let Some(token) = self.e.view.token {
            assert_eq!(Some(&token.get()), self.tokens.last());
        }
    }

    fn apply(&mut self, actions: Vec<Action>, input: &Input) {
        for a in actions {
            match a {
                Action::Timer(t) => self.timer = t,
                Action::Listen(on) => self.listening = on,
                Action::AwaitScopes(on) => self.awaiting_scopes = on,
                Action::Abandon => {
                    assert!(
                        matches!(self.call, Some((Action::Renew { .. }, _))),
                        "only a renewal is abandoned"
                    );
                    self.call = None;
                }
                Action::BeginTerm { token } => {
                    assert!(!self.leading);
                    self.leading = true;
                    self.tokens.push(token.get());
                }
                Action::EndTerm { reason } => {
                    assert!(self.leading);
                    self.leading = false;
                    self.reasons.push(reason);
                }
                Action::ReportFirst(_) => self.first_reports += 1,
                Action::HandOverDone(_) => self.handoffs_answered += 1,
                Action::Finish(_) => {
                    assert!(!self.finished);
                    self.finished = true;
                }
                a if a.is_store_call() => {
                    if matches!(a, Action::Release(_) | Action::HandOver { .. }) {
                        assert!(!self.leading, "released while leading");
                    }
                    if matches!(a, Action::HandOver { .. }) {
                        self.handoffs_made += 1;
                        assert!(
                            self.handoffs_made <= self.handoffs_asked,
                            "a handoff nobody asked for"
                        );
                    }
                    assert!(
                        self.call.is_none(),
                        "a second call {a:?} while {:?} is out (after {input:?})",
                        self.call
                    );
                    self.call = Some((a, self.now));
                }
                _ => {}
            }
        }
    }

    fn play(&mut self, c: Choice) {
        if self.finished {
            return;
        }
        let t = timing();
        match c {
            Choice::Answer { delay, pick } => {
                let Some((call, sent)) = self.call.take() else {
                    return;
                };
                let limit = match &call {
                    Action::Renew { timeout, .. } => *timeout,
                    _ => t.request_timeout,
                };
                let timed_out = delay > limit;
                let at = sent + delay.min(limit);
                let timeout = || Error::Timeout(limit);
                let err = |pick: u8| {
                    if pick.is_multiple_of(7) {
                        Error::Config("fatal".into())
                    } else {
                        unavailable()
                    }
                };
                let input = match call {
                    Action::Join => Input::Joined(if timed_out {
                        Err(timeout())
                    } else if pick % 5 == 0 {
                        Err(err(pick / 5))
                    } else {
                        Ok(())
                    }),
                    Action::Subscribe => Input::Subscribed(if timed_out {
                        Err(timeout())
                    } else {
                        Ok(pick % 3 != 0)
                    }),
                    Action::TryAcquire => {
                        let outcome = if timed_out {
                            Err(timeout())
                        } else {
                            match pick % 6 {
                                0 | 1 => {
                                    let token = self.next_token;
                                    self.next_token += 1 + u64::from(pick % 3);
                                    let act_after = if pick % 4 == 0 {
                                        ms(u64::from(pick) * 50)
                                    } else {
                                        Duration::ZERO
                                    };
                                    Ok(Acquire::Acquired(lease(token).with_act_after(act_after)))
                                }
                                2 | 3 => Ok(Acquire::Held(LeaseRecord::new(
                                    "other",
                                    FencingToken(self.next_token),
                                    ms(u64::from(pick) * 80),
                                ))),
                                4 if pick % 4 == 0 => Ok(Acquire::Reserved(HandoffMark::new(
                                    None,
                                    "other",
                                    ms(u64::from(pick) * 40),
                                ))),
                                _ => Err(err(pick)),
                            }
                        };
                        if matches!(outcome, Ok(Acquire::Acquired(_))) {
                            self.last_ok = Some(sent);
                        }
                        Input::Acquired {
                            sent,
                            complete: pick % 2 == 0,
                            outcome,
                        }
                    }
                    Action::Renew { .. } => Input::Renewed {
                        sent,
                        outcome: if timed_out {
                            Err(timeout())
                        } else {
                            match pick % 5 {
                                0 if pick % 3 == 0 => Ok(Renew::HandoffRequested {
                                    to: (pick % 2 == 0).then(|| "next".to_owned()),
                                }),
                                0..=2 => Ok(Renew::Renewed),
                                3 => Ok(Renew::Lost(None)),
                                _ => Err(unavailable()),
                            }
                        },
                    },
                    Action::Release(_) | Action::HandOver { .. } => Input::Released(if timed_out {
                        Err(timeout())
                    } else if pick % 3 == 0 {
                        Err(unavailable())
                    } else {
                        Ok(())
                    }),
                    Action::Leave => Input::Left(if timed_out {
                        Err(timeout())
                    } else if pick % 3 == 0 {
                        Err(unavailable())
                    } else {
                        Ok(())
                    }),
                    Action::Read(_) => Input::Read(match pick % 3 {
                        0 => Ok(Some(LeaseRecord::new(
                            ME,
                            FencingToken(*self.tokens.last().unwrap_or(&0)),
                            secs(3),
                        ))),
                        1 => Ok(None),
                        _ => Err(unavailable()),
                    }),
                    other => unreachable!("{other:?}"),
                };
                // While a call is out the driver waits for nothing else but stop.
                self.feed(input, at.max(self.now));
            }
            Choice::Timer { late } => {
                // The driver does not wait for its timer while a call is out.
                if self.call.is_some() {
                    return;
                }
                if let Some(at) = self.timer {
                    self.feed(Input::Timer, at.max(self.now) + late);
                }
            }
            Choice::Change { pick } => {
                if !self.listening {
                    return;
                }
                let change = match pick % 6 {
                    5 => Some(Change::HandoffRequested {
                        to: Some("next".into()),
                    }),
                    0 => Some(Change::Acquired {
                        holder: "other".into(),
                    }),
                    1 => Some(Change::Renewed {
                        holder: "other".into(),
                    }),
                    2 => Some(Change::Released),
                    3 => Some(Change::Renewed { holder: ME.into() }),
                    _ => None,
                };
                let now = self.now + ms(u64::from(pick));
                // A timer due first fires first.
                match self.timer {
                    Some(at) if at <= now => self.feed(Input::Timer, at.max(self.now)),
                    _ => self.feed(Input::Changed(change), now),
                }
            }
            Choice::ScopesGone => {
                if self.awaiting_scopes && self.call.is_none() {
                    self.feed(Input::ScopesGone, self.now);
                }
            }
            Choice::Stop => {
                if !self.stop_sent {
                    self.stop_sent = true;
                    self.feed(Input::Stop, self.now);
                }
            }
            Choice::HandOver { pick } => {
                let to = (pick % 2 == 1).then(|| "next".to_owned());
                self.feed(Input::HandOver { to }, self.now);
            }
            Choice::Stale { pick } => {
                let input = match pick % 3 {
                    0 if !matches!(self.call, Some((Action::TryAcquire, _))) => Input::Acquired {
                        sent: self.now,
                        complete: false,
                        outcome: Ok(Acquire::Acquired(lease(0))),
                    },
                    1 if !matches!(self.call, Some((Action::Renew { .. }, _))) => Input::Renewed {
                        sent: self.now,
                        outcome: Ok(Renew::Renewed),
                    },
                    2 if !matches!(
                        self.call,
                        Some((Action::Release(_) | Action::HandOver { .. }, _))
                    ) =>
                    {
                        Input::Released(Ok(()))
                    }
                    _ => return,
                };
                let before = self.e.deadline();
                let actions = self.e.step(input, self.now);
                assert!(actions.is_empty(), "a stale answer did {actions:?}");
                assert_eq!(self.e.deadline(), before);
            }
        }
    }
}

/// A copy of a store answer: the value, or an error of the same kind.
fn copy<T: Clone>(r: &Result<T>) -> Result<T> {
    match r {
        Ok(v) => Ok(v.clone()),
        Err(Error::Timeout(d)) => Err(Error::Timeout(*d)),
        Err(Error::Config(m)) => Err(Error::Config(m.clone())),
        Err(_) => Err(unavailable()),
    }
}

impl Input {
    /// The same input (the model keeps its own copy of what it needs).
    fn clone_for_model(&self) -> Input {
        let err = |e: &Error| match e {
            Error::Timeout(d) => Error::Timeout(*d),
            Error::Config(m) => Error::Config(m.clone()),
            _ => unavailable(),
        };
        match self {
            Input::Joined(r) => Input::Joined(r.as_ref().map(|_| ()).map_err(err)),
            Input::Subscribed(r) => Input::Subscribed(r.as_ref().map(|b| *b).map_err(err)),
            Input::Acquired {
                sent,
                complete,
                outcome,
            } => Input::Acquired {
                sent: *sent,
                complete: *complete,
                outcome: copy(outcome),
            },
            Input::Renewed { sent, outcome } => Input::Renewed {
                sent: *sent,
                outcome: copy(outcome),
            },
            Input::Released(r) => Input::Released(r.as_ref().map(|_| ()).map_err(err)),
            Input::Left(r) => Input::Left(r.as_ref().map(|_| ()).map_err(err)),
            Input::Read(r) => Input::Read(copy(r)),
            Input::Timer => Input::Timer,
            Input::Changed(c) => Input::Changed(c.clone()),
            Input::ScopesGone => Input::ScopesGone,
            Input::Stop => Input::Stop,
            Input::HandOver { to } => Input::HandOver { to: to.clone() },
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Over random sequences of answers, timers, changes and a stop: never leading past the
    /// deadline or renew + grace; stepping down at the earliest of a `Lost`, renew + grace
    /// since the last good send, and the deadline; tokens never going backwards; always
    /// waiting for something until the run is over.
    #[test]
    fn the_timing_rules_hold_over_random_inputs(
        seed in any::<u64>(),
        choices in prop::collection::vec(choice(), 1..300),
    ) {
        let mut w = World::new(false, seed);
        for c in choices {
            w.play(c);
        }
    }

    /// The same sequences with a stop at the end always finish the run, with nothing held.
    #[test]
    fn a_stop_always_ends_the_run(
        seed in any::<u64>(),
        choices in prop::collection::vec(choice(), 1..200),
    ) {
        let mut w = World::new(false, seed);
        for c in choices {
            w.play(c);
        }
        w.play(Choice::Stop);
        for i in 0..200u8 {
            if w.finished {
                break;
            }
            w.play(Choice::Answer { delay: ms(1), pick: i.wrapping_mul(37) });
            w.play(Choice::ScopesGone);
            w.play(Choice::Timer { late: Duration::ZERO });
        }
        prop_assert!(w.finished, "still running in {:?}", w.e.phase);
        prop_assert!(!w.leading);
        prop_assert_eq!(w.handoffs_answered, w.handoffs_asked, "every handoff is answered once");
        prop_assert_eq!(w.e.deadline(), None);
    }
}

/// The random sequences above are worth something only if they reach every way a term ends.
#[test]
fn random_sequences_reach_every_step_down() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = prop::collection::vec(choice(), 1..300);
    let mut seen = std::collections::HashSet::new();
    let mut terms = 0;
    for seed in 0..300 {
        let choices = strategy.new_tree(&mut runner).unwrap().current();
        let mut w = World::new(false, seed);
        for c in choices {
            w.play(c);
        }
        terms += w.tokens.len();
        seen.extend(w.reasons);
    }
    assert!(terms > 100, "{terms} terms");
    for reason in [
        LossReason::LeaseLost,
        LossReason::RenewalsFailed,
        LossReason::DeadlineReached,
        LossReason::Stopped,
        LossReason::HandedOver,
    ] {
        assert!(seen.contains(&reason), "no {reason} in {seen:?}");
    }
}

/// A handoff request pushed while a renewal is out may have been written after that renewal
/// read the key: when the renewal's answer brings no request, the leader renews again at once
/// (which brings it) instead of at the next renew interval.
#[test]
fn a_request_pushed_while_a_renewal_is_out_is_read_at_once() {
    for pushed in [false, true] {
        let config = Config {
            listen_while_leading: true,
            ..config(false)
        };
        let mut e = acquiring_with(config, true);
        let a = e.step(
            Input::Acquired {
                sent: ms(0),
                complete: true,
                outcome: Ok(Acquire::Acquired(lease(1))),
            },
            ms(0),
        );
        assert_eq!(began(&a), Some(FencingToken(1)));
        let a = e.step(Input::Timer, secs(5));
        assert!(renew_timeout(&a).is_some(), "the renewal goes out at 5 s");
        if pushed {
            let a = e.step(
                Input::Changed(Some(Change::HandoffRequested {
                    to: Some("b".into()),
                })),
                secs(5) + ms(1),
            );
            assert_eq!(renew_timeout(&a), None, "one renewal out at a time");
        }
        let a = e.step(
            Input::Renewed {
                sent: secs(5),
                outcome: Ok(Renew::Renewed),
            },
            secs(5) + ms(2),
        );
        let next = if pushed { secs(5) + ms(2) } else { secs(10) };
        assert_eq!(timer_of(&a), Some(Some(next)), "pushed: {pushed}");
        let a = e.step(Input::Timer, next);
        assert!(renew_timeout(&a).is_some(), "pushed: {pushed}");
        // The next answer brings the request; the leader hands over as when asked directly.
        if pushed {
            let a = e.step(
                Input::Renewed {
                    sent: next,
                    outcome: Ok(Renew::HandoffRequested {
                        to: Some("b".into()),
                    }),
                },
                next + ms(1),
            );
            assert_eq!(end_reason(&a), Some(LossReason::HandedOver), "{a:?}");
        }
    }
}
