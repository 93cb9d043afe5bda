//! Presence records and priorities (`LeaderElectionBuilder::priority`,
//! `announce_presence`) on the memory store, with tokio's paused time: a higher priority takes
//! the lease by a planned handoff, equal and lower ones never displace a leader, and a leader
//! never hands over to a candidate that is not running. No test sleeps in real time.

use std::time::Duration;

use baton::{Clock, Error, Event, LeaderElection, LeaseStore, LossReason, MemoryStore};

const KEY: &str = "jobs:leader";
/// The seed's defaults.
const LEASE: Duration = Duration::from_secs(15);
const RENEW: Duration = Duration::from_secs(5);

fn election(store: &MemoryStore, id: &str, priority: Option<u32>, clock: &Clock) -> LeaderElection {
    let builder = LeaderElection::builder(store.clone(), KEY)
        .instance_id(id)
        .clock(clock.clone())
        .listen_for_handoff_requests(true)
        .announce_presence(true);
    match priority {
        Some(p) => builder.priority(p),
        None => builder,
    }
    .build()
    .unwrap()
}

/// Let every ready task run, without moving time.
async fn settle() {
    for _ in 0..200 {
        tokio::task::yield_now().await;
    }
}

/// Advance paused time by `d`, in steps of 100 ms, letting tasks run at each.
async fn run_for(d: Duration) {
    let step = Duration::from_millis(100);
    let mut left = d;
    while !left.is_zero() {
        let now = step.min(left);
        tokio::time::sleep(now).await;
        settle().await;
        left -= now;
    }
}

fn leaders(all: &[&LeaderElection]) -> Vec<String> {
    all.iter()
        .filter(|e| e.is_leader())
        .map(|e| e.candidate_id().to_owned())
        .collect()
}

async fn names(store: &MemoryStore) -> Vec<(String, u32)> {
    let mut live: Vec<(String, u32)> = store
        .candidates(KEY)
        .await
        .unwrap()
        .unwrap()
        .into_iter()
        .map(|p| (p.candidate, p.priority))
        .collect();
    live.sort();
    live
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn candidates_announce_themselves_while_they_run_and_withdraw_when_they_stop() {
    let clock = Clock::tokio();
    let store = MemoryStore::new();
    let a = election(&store, "a", None, &clock);
    let b = election(&store, "b", Some(7), &clock);
    a.start().await.unwrap();
    b.start().await.unwrap();
    settle().await;
    assert_eq!(names(&store).await, [("a".into(), 0), ("b".into(), 7)]);
    // Kept alive for as long as they run, far past one lease.
    run_for(LEASE * 3).await;
    assert_eq!(names(&store).await.len(), 2);
    b.stop().await.unwrap();
    settle().await;
    assert_eq!(names(&store).await, [("a".into(), 0)]);
    a.stop().await.unwrap();
    settle().await;
    assert!(names(&store).await.is_empty());

    // Without presence (the library's default), nothing is written.
    let quiet = LeaderElection::builder(store.clone(), KEY)
        .instance_id("q")
        .clock(clock.clone())
        .build()
        .unwrap();
    quiet.start().await.unwrap();
    run_for(RENEW * 2).await;
    assert!(names(&store).await.is_empty());
    quiet.stop().await.unwrap();
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_follower_with_a_higher_priority_takes_the_lease_by_a_planned_handoff() {
    let clock = Clock::tokio();
    let store = MemoryStore::new();
    let low = election(&store, "low", Some(1), &clock);
    low.start().await.unwrap();
    settle().await;
    assert!(low.is_leader());
    let mut low_events = low.subscribe();
    let before = low.fencing_token().unwrap();

    let high = election(&store, "high", Some(5), &clock);
    high.start().await.unwrap();
    settle().await;
    // The follower asks at its first announce after it has learned who leads: within one
    // renew interval. Never two leaders on the way.
    let started = tokio::time::Instant::now();
    while !high.is_leader() {
        assert!(
            started.elapsed() <= RENEW + Duration::from_secs(1),
            "the higher priority did not take over within a renew interval"
        );
        assert!(leaders(&[&low, &high]).len() <= 1);
        run_for(Duration::from_millis(100)).await;
    }
    assert_eq!(leaders(&[&low, &high]), ["high"]);
    assert!(high.fencing_token().unwrap() > before);
    let lost: Vec<Event> = std::iter::from_fn(|| low_events.try_recv()).collect();
    assert!(
        lost.iter().any(|e| matches!(
            e,
            Event::LostLeadership {
                reason: LossReason::HandedOver,
                ..
            }
        )),
        "{lost:?}"
    );

    // And it stays: the lower priority never takes it back.
    run_for(LEASE * 4).await;
    assert_eq!(leaders(&[&low, &high]), ["high"]);
    low.stop().await.unwrap();
    high.stop().await.unwrap();
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn equal_and_lower_priorities_never_displace_a_leader() {
    let clock = Clock::tokio();
    let store = MemoryStore::new();
    let leader = election(&store, "leader", Some(3), &clock);
    leader.start().await.unwrap();
    settle().await;
    let token = leader.fencing_token().unwrap();
    let equal = election(&store, "equal", Some(3), &clock);
    let lower = election(&store, "lower", Some(1), &clock);
    let unset = election(&store, "unset", None, &clock);
    for e in [&equal, &lower, &unset] {
        e.start().await.unwrap();
    }
    run_for(LEASE * 4).await;
    assert!(leader.is_leader());
    assert_eq!(
        leader.fencing_token(),
        Some(token),
        "the same term all along"
    );
    for e in [&leader, &equal, &lower, &unset] {
        e.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn of_several_higher_followers_only_the_highest_asks_and_leads() {
    let clock = Clock::tokio();
    let store = MemoryStore::new();
    let leader = election(&store, "leader", Some(0), &clock);
    leader.start().await.unwrap();
    settle().await;
    let mid = election(&store, "mid", Some(5), &clock);
    let top = election(&store, "top", Some(9), &clock);
    mid.start().await.unwrap();
    top.start().await.unwrap();
    let mut mid_events = mid.subscribe();
    run_for(LEASE * 2).await;
    assert_eq!(leaders(&[&leader, &mid, &top]), ["top"]);
    let mid_saw: Vec<Event> = std::iter::from_fn(|| mid_events.try_recv()).collect();
    assert!(
        !mid_saw
            .iter()
            .any(|e| matches!(e, Event::BecameLeader { .. })),
        "the middle priority never led on the way: {mid_saw:?}"
    );
    for e in [&leader, &mid, &top] {
        e.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_leader_never_hands_over_to_a_candidate_that_is_not_running() {
    let clock = Clock::tokio();
    let store = MemoryStore::new();
    let a = election(&store, "a", None, &clock);
    let b = election(&store, "b", None, &clock);
    a.start().await.unwrap();
    b.start().await.unwrap();
    settle().await;
    let token = a.fencing_token().unwrap();

    // Asked in the library: refused, and the term goes on.
    match a.hand_over(Some("ghost")).await {
        Err(Error::NoSuchCandidate { candidate, live }) => {
            assert_eq!(candidate, "ghost");
            assert_eq!(live, ["a", "b"]);
        }
        other => panic!("expected NoSuchCandidate, got {other:?}"),
    }
    assert!(a.is_leader());

    // Asked through the store by someone who did not check: the leader does not answer.
    store.request_handoff(KEY, Some("ghost")).await.unwrap();
    run_for(LEASE * 2).await;
    assert!(a.is_leader());
    assert_eq!(a.fencing_token(), Some(token));

    // A running candidate is handed over to, as before.
    a.hand_over(Some("b")).await.unwrap();
    settle().await;
    assert!(b.is_leader());
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_request_for_a_candidate_that_started_since_the_leaders_last_look_is_answered() {
    let clock = Clock::tokio();
    let store = MemoryStore::new();
    let a = election(&store, "a", None, &clock);
    a.start().await.unwrap();
    settle().await;
    // b starts after a's presence write: a's records do not show it yet.
    let b = election(&store, "b", None, &clock);
    b.start().await.unwrap();
    settle().await;
    store.request_handoff(KEY, Some("b")).await.unwrap();
    // a listens: it renews at once, finds b missing from what it saw, looks again, hands over.
    settle().await;
    assert!(b.is_leader(), "the request was answered without waiting");
    assert!(!a.is_leader());
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}
