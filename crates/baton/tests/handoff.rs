//! Planned handoff (`LeaderElection::hand_over`) on the memory store, with tokio's paused
//! time: who may lead next, that two leaders never act at once, the fallback when the named
//! candidate is not running, and the errors. No test sleeps in real time.

use std::time::Duration;

use baton::{
    Acquire, Clock, Error, Event, Events, HandoffMark, LeaderElection, LeaseStore, LossReason,
    MemoryStore,
};

const KEY: &str = "jobs:leader";

fn election(store: &MemoryStore, id: &str, clock: &Clock) -> LeaderElection {
    LeaderElection::builder(store.clone(), KEY)
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

/// Three candidates on one memory store, `a` leading.
async fn three(clock: &Clock) -> (MemoryStore, [LeaderElection; 3]) {
    let store = MemoryStore::new();
    let a = election(&store, "a", clock);
    a.start().await.unwrap();
    settle().await;
    assert!(a.is_leader());
    let b = election(&store, "b", clock);
    let c = election(&store, "c", clock);
    b.start().await.unwrap();
    c.start().await.unwrap();
    settle().await;
    (store, [a, b, c])
}

fn leaders(all: &[LeaderElection]) -> Vec<&str> {
    all.iter()
        .filter(|e| e.is_leader())
        .map(LeaderElection::candidate_id)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_handoff_to_a_named_candidate_makes_it_lead_at_once_and_nobody_else() {
    let clock = Clock::tokio();
    let (store, all) = three(&clock).await;
    let [a, b, c] = &all;
    let mut a_events = a.subscribe();
    let mut b_events = b.subscribe();
    let before = a.fencing_token().unwrap();

    let started = tokio::time::Instant::now();
    a.hand_over(Some("c")).await.unwrap();
    settle().await;
    assert_eq!(started.elapsed(), Duration::ZERO, "no timer was waited for");
    assert_eq!(leaders(&all), ["c"]);
    assert!(
        c.fencing_token().unwrap() > before,
        "the next term mints a greater token"
    );

    let a_saw = drain(&mut a_events);
    assert!(
        a_saw.iter().any(|e| matches!(
            e,
            Event::LostLeadership {
                reason: LossReason::HandedOver,
                ..
            }
        )),
        "{a_saw:?}"
    );
    assert_eq!(LossReason::HandedOver.as_str(), "handed_over");
    // Everyone learns who leads, the leaver too (it campaigns on as a follower).
    assert_eq!(a.current_leader_id().as_deref(), Some("c"));
    assert_eq!(b.current_leader_id().as_deref(), Some("c"));
    assert!(
        !drain(&mut b_events)
            .iter()
            .any(|e| matches!(e, Event::BecameLeader { .. }))
    );

    // It is an ordinary term from then on: c renews, and the others follow for as long.
    run_for(Duration::from_secs(60)).await;
    assert_eq!(leaders(&all), ["c"]);
    assert_eq!(store.read(KEY).await.unwrap().unwrap().holder, "c");
    for e in &all {
        e.stop().await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn a_handoff_to_anyone_never_goes_back_to_the_leaver() {
    let clock = Clock::tokio();
    let (_store, all) = three(&clock).await;
    let [a, _, _] = &all;
    a.hand_over(None).await.unwrap();
    settle().await;
    let now = leaders(&all);
    assert_eq!(now.len(), 1, "{now:?}");
    assert_ne!(
        now[0], "a",
        "the leaver was the first to know the key was free"
    );
    for e in &all {
        e.stop().await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn a_handoff_to_a_candidate_that_is_not_running_falls_back_within_one_lease() {
    let clock = Clock::tokio();
    let (_store, all) = three(&clock).await;
    let [a, _, _] = &all;
    let lease = a.options().lease_duration;
    a.hand_over(Some("gone")).await.unwrap();
    settle().await;
    assert!(leaders(&all).is_empty(), "reserved for the named candidate");
    // Nobody leads while the mark is live...
    run_for(lease - Duration::from_millis(1)).await;
    assert!(leaders(&all).is_empty());
    // ...and once it runs out, a normal election (the jitter is at most a few ms).
    let ran_out = tokio::time::Instant::now();
    while leaders(&all).is_empty() {
        run_for(Duration::from_millis(1)).await;
        assert!(
            ran_out.elapsed() < Duration::from_millis(200),
            "nobody took over after the mark ran out"
        );
    }
    assert_eq!(leaders(&all).len(), 1);
    for e in &all {
        e.stop().await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn the_named_candidate_leads_only_once_the_leaders_work_has_let_go() {
    let clock = Clock::tokio();
    let (_store, all) = three(&clock).await;
    let [a, _, _] = &all;
    let work = a.leadership().await.unwrap();
    let handing = tokio::spawn({
        let a = a.clone();
        async move { a.hand_over(Some("b")).await }
    });
    run_for(Duration::from_secs(3)).await;
    assert!(
        !a.is_leader() && !work.is_current(),
        "a stepped down at once"
    );
    assert!(
        leaders(&all).is_empty(),
        "no handoff while a's work still holds its scope"
    );
    assert!(
        !handing.is_finished(),
        "hand_over returns once the mark is written"
    );
    drop(work);
    settle().await;
    assert_eq!(leaders(&all), ["b"]);
    handing.await.unwrap().unwrap();
    for e in &all {
        e.stop().await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn a_stop_during_a_handoff_still_hands_over_and_leaves() {
    let clock = Clock::tokio();
    let (_store, all) = three(&clock).await;
    let [a, _, _] = &all;
    let work = a.leadership().await.unwrap();
    let handing = tokio::spawn({
        let a = a.clone();
        async move { a.hand_over(Some("b")).await }
    });
    settle().await;
    let stopping = tokio::spawn({
        let a = a.clone();
        async move { a.stop().await }
    });
    settle().await;
    drop(work);
    settle().await;
    handing.await.unwrap().unwrap();
    stopping.await.unwrap().unwrap();
    assert_eq!(leaders(&all), ["b"]);
    assert!(
        a.hand_over(None).await.is_err(),
        "a stopped election hands nothing over"
    );
    for e in &all {
        e.stop().await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn hand_over_is_refused_where_there_is_nothing_to_hand_over() {
    let clock = Clock::tokio();
    let (_store, all) = three(&clock).await;
    let [a, b, _] = &all;
    assert!(matches!(b.hand_over(None).await, Err(Error::NotLeader)));
    assert!(matches!(
        a.hand_over(Some("a")).await,
        Err(Error::Config(m)) if m.contains("this candidate itself")
    ));
    assert!(matches!(
        a.hand_over(Some("b\nc")).await,
        Err(Error::Config(_))
    ));
    assert!(a.is_leader(), "a refused handoff changes nothing");
    let idle = election(&MemoryStore::new(), "idle", &clock);
    assert!(matches!(idle.hand_over(None).await, Err(Error::Stopped)));
    for e in &all {
        e.stop().await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn the_store_answers_reserved_to_everyone_the_mark_does_not_admit() {
    let store = MemoryStore::new();
    let mut a = store.join(KEY, "a").await.unwrap();
    let mut b = store.join(KEY, "b").await.unwrap();
    let mut c = store.join(KEY, "c").await.unwrap();
    let ttl = Duration::from_secs(10);
    let Acquire::Acquired(lease) = a.try_acquire(ttl).await.unwrap() else {
        panic!("a acquires a free key");
    };
    a.hand_over(&lease, Some("c"), ttl).await.unwrap();
    let Acquire::Reserved(mark) = b.try_acquire(ttl).await.unwrap() else {
        panic!("reserved for c");
    };
    assert_eq!(mark, HandoffMark::new(Some("c".into()), "a", ttl));
    assert!(matches!(
        a.try_acquire(ttl).await.unwrap(),
        Acquire::Reserved(_)
    ));
    assert!(store.read(KEY).await.unwrap().is_none(), "nobody holds it");
    let Acquire::Acquired(next) = c.try_acquire(ttl).await.unwrap() else {
        panic!("c may take it");
    };
    assert!(next.token > lease.token);
    // A handoff by a candidate that no longer holds the key changes nothing.
    a.hand_over(&lease, Some("b"), ttl).await.unwrap();
    assert_eq!(store.read(KEY).await.unwrap().unwrap().holder, "c");

    // The mark of a handoff to anyone keeps out only the leaver, and only for its window.
    c.hand_over(&next, None, ttl).await.unwrap();
    assert!(matches!(
        c.try_acquire(ttl).await.unwrap(),
        Acquire::Reserved(m) if m.to.is_none() && m.from == "c"
    ));
    tokio::time::advance(ttl).await;
    assert!(matches!(
        c.try_acquire(ttl).await.unwrap(),
        Acquire::Acquired(_)
    ));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_handoff_requested_through_the_store_is_made_at_the_leaders_next_renewal() {
    let clock = Clock::tokio();
    let (store, all) = three(&clock).await;
    let [a, _, c] = &all;
    let renew = a.options().renew_interval;
    let mut a_events = a.subscribe();
    // Another process (`baton handoff`) asks; it learns who it asked.
    let asked = store
        .request_handoff(KEY, Some("c"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(asked.holder, "a");
    assert_eq!(
        store.read(KEY).await.unwrap().unwrap().holder,
        "a",
        "only a request"
    );
    settle().await;
    assert_eq!(
        leaders(&all),
        ["a"],
        "the leader sees it on its next renewal"
    );
    run_for(renew).await;
    assert_eq!(leaders(&all), ["c"]);
    assert!(drain(&mut a_events).iter().any(|e| matches!(
        e,
        Event::LostLeadership {
            reason: LossReason::HandedOver,
            ..
        }
    )));
    // The request went with a's lease: c's renewals are plain ones.
    run_for(renew * 3).await;
    assert_eq!(leaders(&all), ["c"]);
    // Asking the leader to hand over to itself writes nothing; an unused key has no holder.
    assert_eq!(
        store
            .request_handoff(KEY, Some("c"))
            .await
            .unwrap()
            .unwrap()
            .holder,
        "c"
    );
    run_for(renew * 2).await;
    assert!(c.is_leader());
    assert!(
        store
            .request_handoff("unused", None)
            .await
            .unwrap()
            .is_none()
    );
    for e in &all {
        e.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_leader_that_listens_hands_over_as_soon_as_it_is_asked() {
    let clock = Clock::tokio();
    let store = MemoryStore::new();
    let listening = |id: &str| {
        LeaderElection::builder(store.clone(), KEY)
            .instance_id(id)
            .clock(clock.clone())
            .listen_for_handoff_requests(true)
            .build()
            .unwrap()
    };
    let (a, b) = (listening("a"), listening("b"));
    a.start().await.unwrap();
    settle().await;
    assert!(a.is_leader(), "a first leader acquires after subscribing");
    b.start().await.unwrap();
    settle().await;
    let asked = tokio::time::Instant::now();
    store
        .request_handoff(KEY, Some("b"))
        .await
        .unwrap()
        .unwrap();
    settle().await;
    assert_eq!(asked.elapsed(), Duration::ZERO, "no renew interval waited");
    assert!(b.is_leader() && !a.is_leader());
    // And back, with the leaver's stream still open (it stayed subscribed as a follower).
    store.request_handoff(KEY, None).await.unwrap().unwrap();
    settle().await;
    assert!(a.is_leader() && !b.is_leader());
    // Requests to followers' keys change nothing for them, and a stream's own renewals are
    // not requests: a long quiet run keeps the same leader.
    run_for(a.options().lease_duration * 4).await;
    assert!(a.is_leader());
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}
