//! The store conformance suite: the rules of `DESIGN.md` §2 as test functions.
//!
//! Every case is a free `async fn` that takes a [`StoreFactory`] and panics, with a message
//! naming the broken rule, when the store breaks it. [`run_all`] runs every case in sequence;
//! [`conformance_tests!`](crate::conformance_tests) expands to one `#[test]` per case. See the
//! [crate docs](crate) for how a store wires it up.
//!
//! # What the cases need from a store
//!
//! * **Isolation by key.** Each case works on keys of its own,
//!   `conformance-<case>-<16 hex digits>` (lowercase letters, digits and `-`, valid in every
//!   backend's key or name syntax), so cases can share one backend and run in parallel.
//! * **Real time.** Expiry is judged by the store's clock, which for most stores is not tokio's.
//!   The cases sleep in real time (a few hundred milliseconds in all) and must not run on a
//!   runtime with paused time. [`block_on`] gives each case the runtime it needs.
//! * **Several handles.** [`StoreFactory::store`] is called once per case, and once per
//!   candidate by the cases that model several processes
//!   ([`concurrent_acquirers_one_winner`], [`watch_delivers_release`]). Every handle must see the
//!   same leases; a separate connection per call exercises atomicity across connections.

use std::any::Any;
use std::future::Future;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use baton::{
    Acquire, BoxError, Candidacy, Change, Changes, Error, FencingToken, Lease, LeaseRecord,
    LeaseStore, PendingHandoff, Presence, Renew,
};
use futures_util::{FutureExt, StreamExt};
use tokio::time::{Instant, sleep, sleep_until};

/// The TTL of cases that do not wait for expiry: far longer than any case runs.
const LEASE: Duration = Duration::from_secs(30);

/// The shortest TTL the expiry cases use, unless the store needs a longer one
/// ([`Capabilities::min_ttl`]).
const SHORT_TTL: Duration = Duration::from_millis(150);

/// How long a watch may take to deliver a release. Generous: a behaviour check, not a benchmark.
const WATCH_BOUND: Duration = Duration::from_secs(2);

/// How many candidates race in [`concurrent_acquirers_one_winner`].
const CONTENDERS: usize = 16;

/// How often the expiry cases look at the key while they wait for it to expire.
const POLL: Duration = Duration::from_millis(10);

/// What a store can and cannot do, so the suite applies only the assertions that fit it.
///
/// Whether a store can push changes is not listed here: the suite takes it from the store's
/// own [`StoreInfo::can_watch`](baton::StoreInfo::can_watch) and checks that promise. Whether
/// it can hold foreign data is [`StoreFactory::foreign_writer`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// The shortest TTL the store keeps with millisecond precision. The expiry cases use
    /// `max(150 ms, min_ttl)`. Zero (the default) for stores with millisecond expiry; about a
    /// second for stores whose TTLs are whole seconds (etcd leases, Kubernetes
    /// `leaseDurationSeconds`).
    pub min_ttl: Duration,
    /// How long past its TTL a lease may still be reported held: lazy expiry, a revocation
    /// sweep, a poll interval. The expiry cases poll, so a generous bound costs nothing when
    /// the store is prompt. Default 1 s.
    pub expiry_slack: Duration,
    /// Whether the store keeps a planned handoff's mark ([`Candidacy::hand_over`]). `false`
    /// (the default) for a store that relies on the trait's default, a plain release: the
    /// handoff case then says it was skipped by capability.
    pub handoff: bool,
    /// Whether the store keeps presence records ([`LeaseStore::announce`]). `false` (the
    /// default) for a store that relies on the trait's defaults: the presence case then says
    /// it was skipped by capability.
    pub presence: bool,
    /// Whether [`LeaseStore::pending_handoff`] shows requests and marks. `false` (the
    /// default) for a store that relies on the trait's default.
    pub shows_handoff: bool,
}

impl Default for Capabilities {
    fn default() -> Self {
        Capabilities {
            min_ttl: Duration::ZERO,
            expiry_slack: Duration::from_secs(1),
            handoff: false,
            presence: false,
            shows_handoff: false,
        }
    }
}

impl Capabilities {
    /// The defaults: millisecond TTLs, expiry within a second of the TTL.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets [`min_ttl`](Capabilities::min_ttl).
    pub fn with_min_ttl(mut self, min_ttl: Duration) -> Self {
        self.min_ttl = min_ttl;
        self
    }

    /// Sets [`expiry_slack`](Capabilities::expiry_slack).
    pub fn with_expiry_slack(mut self, expiry_slack: Duration) -> Self {
        self.expiry_slack = expiry_slack;
        self
    }

    /// Sets [`handoff`](Capabilities::handoff).
    pub fn with_handoff(mut self, handoff: bool) -> Self {
        self.handoff = handoff;
        self
    }

    /// Sets [`presence`](Capabilities::presence).
    pub fn with_presence(mut self, presence: bool) -> Self {
        self.presence = presence;
        self
    }

    /// Sets [`shows_handoff`](Capabilities::shows_handoff).
    pub fn with_shows_handoff(mut self, shows_handoff: bool) -> Self {
        self.shows_handoff = shows_handoff;
        self
    }

    /// The TTL the expiry cases use.
    fn short_ttl(&self) -> Duration {
        SHORT_TTL.max(self.min_ttl)
    }
}

/// How the suite reaches the store under test.
///
/// One factory stands for one backend (one Redis database, one SQLite file, one in-process
/// map). Build a fresh factory per case when state must not be shared at all, as
/// [`conformance_tests!`](crate::conformance_tests) does; the cases' unique keys make sharing
/// safe too.
#[async_trait]
pub trait StoreFactory: Send + Sync {
    /// A handle on the backend. Called once per case and once per simulated process; every
    /// handle sees the same leases. Stores that can open separate connections should: the
    /// concurrency case then checks atomicity across connections.
    async fn store(&self) -> baton::Result<Arc<dyn LeaseStore>>;

    /// What the store can do. The default suits stores with millisecond expiry.
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    /// Writes data Baton did not write, for [`foreign_data_is_left_untouched`]. `None` (the
    /// default) when the store cannot hold such data at a key, as the memory store cannot: the
    /// case is then skipped by capability, and says so.
    fn foreign_writer(&self) -> Option<&dyn ForeignWriter> {
        None
    }
}

/// Plants data another program wrote at a key, and checks later that Baton left it alone.
#[async_trait]
pub trait ForeignWriter: Send + Sync {
    /// Write data at `key` the way another program would: a Redis key of another type, a row
    /// or document Baton's layout does not describe. Called on a key no case has used.
    async fn plant(&self, key: &str) -> Result<(), BoxError>;

    /// `Ok` when the data planted at `key` is exactly as planted; otherwise what changed.
    async fn check_untouched(&self, key: &str) -> Result<(), String>;
}

/// Runs one case (or [`run_all`]) to completion on a fresh multi-thread tokio runtime with real
/// time, which is what the cases need. Panics propagate, so a `#[test]` fails with the case's
/// message.
pub fn block_on<T>(case: impl Future<Output = T>) -> T {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("the conformance suite could not build a tokio runtime")
        .block_on(case)
}

/// Defines [`CASES`] and [`run_all`] from one list, so they cannot drift apart.
macro_rules! cases {
    ($($case:ident),* $(,)?) => {
        /// The name of every case, in the order [`run_all`] runs them. Each is also a function
        /// of this module.
        pub const CASES: &[&str] = &[$(stringify!($case)),*];

        /// Runs every case against the store in sequence. Cases after a failing one still run;
        /// at the end it panics once, naming every failing case and the rule it broke.
        pub async fn run_all<F: StoreFactory + ?Sized>(factory: &F) {
            let mut failures = Vec::new();
            $(
                if let Err(payload) = AssertUnwindSafe($case(factory)).catch_unwind().await {
                    failures.push(format!(
                        "conformance case `{}` failed: {}",
                        stringify!($case),
                        panic_message(&*payload),
                    ));
                }
            )*
            if !failures.is_empty() {
                panic!(
                    "{} of {} conformance cases failed:\n{}",
                    failures.len(),
                    CASES.len(),
                    failures.join("\n"),
                );
            }
        }
    };
}

cases!(
    acquire_free_key,
    contention_returns_holder,
    renew_by_owner_extends,
    renew_by_stale_lease_is_lost,
    renewals_at_once_each_get_their_own_answer,
    release_only_by_owner,
    expiry_frees_key,
    tokens_strictly_increase,
    concurrent_acquirers_one_winner,
    watch_delivers_release,
    foreign_data_is_left_untouched,
    read_of_unused_key_is_none,
    leave_is_harmless,
    handoff_reserves_the_key_for_its_candidate,
    pending_handoff_shows_requests_and_marks,
    presence_records_live_for_their_ttl,
);

/// **Acquire a free key.** The candidate gets `Acquired` with its own id, the key and a token
/// greater than 0, and `read` then shows that holder and token with `0 < ttl <= requested`.
pub async fn acquire_free_key<F: StoreFactory + ?Sized>(factory: &F) {
    let store = open(factory).await;
    let key = unique_key("acquire-free-key");
    let mut alice = join(&*store, &key, "alice").await;

    let lease = acquired(
        ok(alice.try_acquire(LEASE).await, "try_acquire on a free key"),
        "a free key must be acquired",
    );
    assert_eq!(
        lease.key, key,
        "the lease must name the key it was acquired for"
    );
    assert_eq!(
        lease.holder, "alice",
        "the lease must name the candidate that acquired it"
    );
    assert!(
        lease.token > FencingToken(0),
        "a minted fencing token must be greater than 0, got {}",
        lease.token
    );

    let record = expect_holder(
        &*store,
        &key,
        "alice",
        lease.token,
        "read() after acquire must show the new holder and the minted token",
    )
    .await;
    check_ttl(record.ttl, LEASE, "read() right after acquire");

    ok(alice.release(&lease).await, "release by the owner");
}

/// **Contention returns the holder.** A second candidate gets `Held` with the holder's id and
/// token and `0 < ttl <= lease`, and changes nothing. A second candidacy with the *holder's*
/// id is contention too: two processes that share an instance id never both lead.
pub async fn contention_returns_holder<F: StoreFactory + ?Sized>(factory: &F) {
    let store = open(factory).await;
    let key = unique_key("contention-returns-holder");
    let mut alice = join(&*store, &key, "alice").await;
    let lease = acquired(
        ok(alice.try_acquire(LEASE).await, "try_acquire on a free key"),
        "a free key must be acquired",
    );

    let mut bob = join(&*store, &key, "bob").await;
    let record = held(
        ok(
            bob.try_acquire(LEASE).await,
            "try_acquire on a held key (contention is a result, never an error)",
        ),
        "a key held by another candidate must not be acquired",
    );
    assert_eq!(record.holder, "alice", "contention must report the holder");
    assert_eq!(
        record.token, lease.token,
        "contention must report the holder's token"
    );
    check_ttl(record.ttl, LEASE, "the Held record");

    let mut twin = join(&*store, &key, "alice").await;
    let record = held(
        ok(
            twin.try_acquire(LEASE).await,
            "try_acquire by a second candidacy with the holder's id",
        ),
        "a second candidacy with the holder's id must not acquire a held key: two processes \
         that share an instance id must never both lead",
    );
    assert_eq!(
        record.token, lease.token,
        "contention by the holder's id must report the holder's token, not mint one"
    );

    expect_holder(
        &*store,
        &key,
        "alice",
        lease.token,
        "contention must not change the lease",
    )
    .await;
    assert_eq!(
        ok(alice.renew(&lease, LEASE).await, "renew by the owner"),
        Renew::Renewed,
        "the holder's lease must survive contention"
    );
    ok(alice.release(&lease).await, "release by the owner");
}

/// **Renew by the owner succeeds and extends the lease.** After half the TTL has passed, a
/// renew succeeds, leaves holder and token as they were, raises the TTL `read` reports, and
/// the lease outlives its original deadline.
pub async fn renew_by_owner_extends<F: StoreFactory + ?Sized>(factory: &F) {
    let store = open(factory).await;
    let key = unique_key("renew-by-owner-extends");
    let ttl = factory.capabilities().short_ttl() * 2;
    let mut alice = join(&*store, &key, "alice").await;
    let lease = acquired(
        ok(alice.try_acquire(ttl).await, "try_acquire on a free key"),
        "a free key must be acquired",
    );
    let acquired_at = Instant::now();

    sleep(ttl / 2).await;
    let before = expect_holder(
        &*store,
        &key,
        "alice",
        lease.token,
        "a lease must still be held half its TTL after acquire",
    )
    .await;
    let renewed_after = acquired_at.elapsed();
    assert_eq!(
        ok(alice.renew(&lease, ttl).await, "renew by the owner"),
        Renew::Renewed,
        "renew by the owner {renewed_after:?} after acquiring with a TTL of {ttl:?} must succeed"
    );
    let after = expect_holder(
        &*store,
        &key,
        "alice",
        lease.token,
        "renew must not change the holder or the token",
    )
    .await;
    assert!(
        after.ttl > before.ttl,
        "renew must extend the lease: read() showed a TTL of {:?} before renew and {:?} after",
        before.ttl,
        after.ttl
    );
    assert!(
        after.ttl <= ttl,
        "renew must extend the lease by the requested TTL ({ttl:?}), not more: read() showed {:?}",
        after.ttl
    );

    // Past the original deadline (the store set it no later than `acquired_at + ttl`), well
    // before the renewed one.
    sleep_until(acquired_at + ttl + ttl / 8).await;
    let record = ok(store.read(&key).await, "read() after the original deadline");
    assert!(
        record
            .as_ref()
            .is_some_and(|r| r.holder == "alice" && r.token == lease.token),
        "a renewed lease must outlive its original deadline: {:?} after acquiring with a TTL of \
         {ttl:?} and renewing after {renewed_after:?}, read() showed {record:?}",
        acquired_at.elapsed()
    );
    ok(alice.release(&lease).await, "release by the owner");
}

/// **Renew by a stale lease is lost.** A lease that was released and reacquired (by the same
/// candidate) gets `Lost` with the current record, and does not disturb the current lease. A
/// second candidacy with the same id and a made-up or old token gets `Lost`: two processes
/// that share an instance id never renew each other's lease. After release, renew is
/// `Lost(None)`; after another candidate acquires, it is `Lost` with that candidate's record.
pub async fn renew_by_stale_lease_is_lost<F: StoreFactory + ?Sized>(factory: &F) {
    let store = open(factory).await;
    let key = unique_key("renew-by-stale-lease-is-lost");
    let mut alice = join(&*store, &key, "alice").await;
    let old = acquired(
        ok(alice.try_acquire(LEASE).await, "try_acquire on a free key"),
        "a free key must be acquired",
    );
    ok(alice.release(&old).await, "release by the owner");
    let current = acquired(
        ok(alice.try_acquire(LEASE).await, "try_acquire after release"),
        "a released key must be acquired again by the same candidate",
    );

    let record = lost(
        ok(alice.renew(&old, LEASE).await, "renew of a stale lease"),
        "renew of a lease that was released and reacquired must be Lost",
    );
    assert_record(
        record.as_ref(),
        "alice",
        current.token,
        "Lost after a stale renew must carry the current record",
    );
    assert_eq!(
        ok(alice.renew(&current, LEASE).await, "renew by the owner"),
        Renew::Renewed,
        "a stale renew must not disturb the current lease"
    );

    let mut twin = join(&*store, &key, "alice").await;
    for (what, token) in [
        ("an old", old.token),
        ("a made-up", FencingToken(current.token.get() + 1)),
    ] {
        let forged = Lease::new(key.clone(), "alice", token);
        let record = lost(
            ok(
                twin.renew(&forged, LEASE).await,
                "renew by a second candidacy with the holder's id",
            ),
            &format!(
                "renew with the holder's id but {what} token ({token}, the lease has {}) must be \
                 Lost: two processes that share an instance id never renew each other's lease",
                current.token
            ),
        );
        assert_record(
            record.as_ref(),
            "alice",
            current.token,
            "Lost must carry the current record",
        );
    }

    ok(alice.release(&current).await, "release by the owner");
    assert_eq!(
        ok(alice.renew(&current, LEASE).await, "renew after release"),
        Renew::Lost(None),
        "renew of a released lease must be Lost, with no record while the key is free"
    );
    assert_eq!(
        ok(
            store.read(&key).await,
            "read() after a renew of a released lease"
        ),
        None,
        "renew of a released lease must not take the key back"
    );

    let mut bob = join(&*store, &key, "bob").await;
    let bobs = acquired(
        ok(bob.try_acquire(LEASE).await, "try_acquire after release"),
        "a released key must be free for another candidate",
    );
    let record = lost(
        ok(
            alice.renew(&current, LEASE).await,
            "renew of a lease another candidate has since taken over",
        ),
        "renew of a lease another candidate has since acquired must be Lost",
    );
    assert_record(
        record.as_ref(),
        "bob",
        bobs.token,
        "Lost must carry the new holder's record",
    );
    ok(bob.release(&bobs).await, "release by the owner");
}

/// How many leases [`renewals_at_once_each_get_their_own_answer`] renews at once.
const AT_ONCE: usize = 40;

/// **Renewals at once each get their own answer.** Many leases of one store renewed at the
/// same moment, as a process with many elections does (stores may write them together, D126):
/// each gets the answer it would get alone. A lease another candidate has since taken is
/// `Lost` with that holder's record, a lease with a made-up token is `Lost` with the holder's
/// record, and every other one is renewed, by its own TTL (two TTLs in one round), without
/// changing its holder or token.
pub async fn renewals_at_once_each_get_their_own_answer<F: StoreFactory + ?Sized>(factory: &F) {
    let store = open(factory).await;
    let short = LEASE / 2;
    let mut keys = Vec::new();
    let mut alices = Vec::new();
    let mut leases = Vec::new();
    for i in 0..AT_ONCE {
        let key = unique_key(&format!("renewals-at-once-{i}"));
        let mut alice = join(&*store, &key, "alice").await;
        let ttl = if i % 4 == 3 { short } else { LEASE };
        let lease = acquired(
            ok(alice.try_acquire(ttl).await, "try_acquire on a free key"),
            "a free key must be acquired",
        );
        keys.push(key);
        alices.push(alice);
        leases.push((lease, ttl));
    }
    // Key 0 changes hands; key 1 is renewed by a twin with a made-up token.
    ok(
        alices[0].release(&leases[0].0).await,
        "release by the owner",
    );
    let mut bob = join(&*store, &keys[0], "bob").await;
    let bobs = acquired(
        ok(bob.try_acquire(LEASE).await, "try_acquire after release"),
        "a released key must be free for another candidate",
    );
    let forged = Lease::new(
        keys[1].clone(),
        "alice",
        FencingToken(leases[1].0.token.get() + 1),
    );
    let twin = join(&*store, &keys[1], "alice").await;
    let mut owner_1 = std::mem::replace(&mut alices[1], twin);
    let real_1 = std::mem::replace(&mut leases[1].0, forged);

    for round in 1..=2 {
        let skip = if round == 1 { 0 } else { 2 };
        let answers = futures_util::future::join_all(
            alices
                .iter_mut()
                .zip(&leases)
                .skip(skip)
                .map(|(alice, (lease, ttl))| alice.renew(lease, *ttl)),
        )
        .await;
        for (i, answer) in (skip..).zip(answers) {
            let answer = ok(
                answer,
                &format!("renew {i} of {AT_ONCE} at once (round {round})"),
            );
            match i {
                0 => assert_record(
                    lost(
                        answer,
                        "renew of a lease another candidate has since acquired",
                    )
                    .as_ref(),
                    "bob",
                    bobs.token,
                    "renewed among others, Lost must carry the new holder's record",
                ),
                1 => assert_record(
                    lost(answer, "renew with the holder's id and a made-up token").as_ref(),
                    "alice",
                    real_1.token,
                    "renewed among others, Lost must carry the current record",
                ),
                _ => assert_eq!(
                    answer,
                    Renew::Renewed,
                    "renew {i} by its owner, among {AT_ONCE} at once (round {round}), must succeed"
                ),
            }
        }
    }
    // Each lease runs for its own TTL from the renewal: the short ones no longer than theirs,
    // the others longer than the short TTL.
    for (i, (lease, ttl)) in leases.iter().enumerate().skip(2) {
        let record = expect_holder(
            &*store,
            &keys[i],
            "alice",
            lease.token,
            "renewing among others must not change the holder or the token",
        )
        .await;
        if *ttl == short {
            assert!(
                record.ttl <= short,
                "lease {i} renewed with {short:?} among others must run for at most that: read() showed {:?}",
                record.ttl
            );
        } else {
            assert!(
                record.ttl > short,
                "lease {i} renewed with {LEASE:?} among others must run for longer than {short:?}: read() showed {:?}",
                record.ttl
            );
        }
    }
    for (alice, (lease, _)) in alices.iter_mut().zip(&leases).skip(2) {
        ok(alice.release(lease).await, "release by the owner");
    }
    ok(owner_1.release(&real_1).await, "release by the owner");
    ok(bob.release(&bobs).await, "release by the owner");
}

/// **Release only by the owner.** Release by another candidate, or by a candidacy with the
/// holder's id and another token, is a no-op. Release by the owner frees the key (`read` is
/// `None`, another candidate can acquire); releasing again is a no-op, not an error, and never
/// touches the next holder's lease.
pub async fn release_only_by_owner<F: StoreFactory + ?Sized>(factory: &F) {
    let store = open(factory).await;
    let key = unique_key("release-only-by-owner");
    let mut alice = join(&*store, &key, "alice").await;
    let lease = acquired(
        ok(alice.try_acquire(LEASE).await, "try_acquire on a free key"),
        "a free key must be acquired",
    );

    let mut bob = join(&*store, &key, "bob").await;
    let bobs_claim = Lease::new(key.clone(), "bob".to_owned(), lease.token);
    ok(bob.release(&bobs_claim).await, "release by a non-owner");
    expect_holder(
        &*store,
        &key,
        "alice",
        lease.token,
        "release by a non-owner must be a no-op",
    )
    .await;

    let mut twin = join(&*store, &key, "alice").await;
    let forged = Lease::new(
        key.clone(),
        "alice".to_owned(),
        FencingToken(lease.token.get() + 1),
    );
    ok(
        twin.release(&forged).await,
        "release by a second candidacy with the holder's id",
    );
    expect_holder(
        &*store,
        &key,
        "alice",
        lease.token,
        "release with the holder's id but another token must be a no-op: two processes that \
         share an instance id never release each other's lease",
    )
    .await;

    ok(alice.release(&lease).await, "release by the owner");
    assert_eq!(
        ok(store.read(&key).await, "read() after release"),
        None,
        "release by the owner must free the key"
    );
    ok(
        alice.release(&lease).await,
        "release of an already released lease (must be a no-op, not an error)",
    );
    assert_eq!(
        ok(store.read(&key).await, "read() after a second release"),
        None,
        "release of an already released lease must be a no-op"
    );

    let bobs = acquired(
        ok(bob.try_acquire(LEASE).await, "try_acquire after release"),
        "a released key must be free for another candidate",
    );
    ok(
        alice.release(&lease).await,
        "release of a stale lease (must be a no-op, not an error)",
    );
    expect_holder(
        &*store,
        &key,
        "bob",
        bobs.token,
        "release of a stale lease must never touch another holder's lease",
    )
    .await;
    ok(bob.release(&bobs).await, "release by the owner");
}

/// **Expiry frees the key.** A lease with a short TTL is held before it expires; in real time
/// after it, `read` shows the key free and another candidate acquires it with a greater token.
/// Renew of the expired lease is then `Lost` with the new holder's record, and its release does
/// not touch the new lease.
pub async fn expiry_frees_key<F: StoreFactory + ?Sized>(factory: &F) {
    let caps = factory.capabilities();
    let store = open(factory).await;
    let key = unique_key("expiry-frees-key");
    let ttl = caps.short_ttl();
    let mut alice = join(&*store, &key, "alice").await;
    let mut bob = join(&*store, &key, "bob").await;

    let lease = acquired(
        ok(alice.try_acquire(ttl).await, "try_acquire on a free key"),
        "a free key must be acquired",
    );
    let acquired_at = Instant::now();
    let early = ok(
        bob.try_acquire(LEASE).await,
        "try_acquire before the lease expires",
    );
    // Only a meaningful check when the call was quick; a slow machine skips it.
    if acquired_at.elapsed() < ttl / 2 {
        let record = held(early, "a lease must not be free before its TTL has passed");
        assert_record(
            Some(&record),
            "alice",
            lease.token,
            "contention before expiry",
        );
    }

    wait_for_expiry(&*store, &key, ttl, acquired_at, caps.expiry_slack).await;
    let bobs = acquired(
        ok(bob.try_acquire(LEASE).await, "try_acquire after expiry"),
        "another candidate must acquire an expired key",
    );
    assert!(
        bobs.token > lease.token,
        "an acquisition after expiry must mint a greater token: {} after {}",
        bobs.token,
        lease.token
    );

    let record = lost(
        ok(alice.renew(&lease, ttl).await, "renew of an expired lease"),
        "renew of an expired lease must be Lost",
    );
    assert_record(
        record.as_ref(),
        "bob",
        bobs.token,
        "Lost after expiry must carry the new holder's record",
    );
    ok(
        alice.release(&lease).await,
        "release of an expired lease (must be a no-op, not an error)",
    );
    expect_holder(
        &*store,
        &key,
        "bob",
        bobs.token,
        "release of an expired lease must not touch the new holder's lease",
    )
    .await;
    ok(bob.release(&bobs).await, "release by the owner");
}

/// **Tokens strictly increase** with every acquisition of a key: after release, after expiry,
/// on reacquire by the same candidate and by another one. Renew and contention mint nothing.
pub async fn tokens_strictly_increase<F: StoreFactory + ?Sized>(factory: &F) {
    let caps = factory.capabilities();
    let store = open(factory).await;
    let key = unique_key("tokens-strictly-increase");
    let mut alice = join(&*store, &key, "alice").await;
    let mut bob = join(&*store, &key, "bob").await;
    let mut tokens: Vec<(&str, FencingToken)> = Vec::new();
    let mut minted = |step: &'static str, lease: &Lease| {
        if let Some((previous_step, previous)) = tokens.last() {
            assert!(
                lease.token > *previous,
                "tokens must strictly increase with every acquisition of a key: {step} minted {} \
                 after {previous_step} minted {previous} (all so far: {tokens:?})",
                lease.token
            );
        }
        tokens.push((step, lease.token));
    };

    let first = acquired(
        ok(alice.try_acquire(LEASE).await, "try_acquire on a free key"),
        "a free key must be acquired",
    );
    minted("the first acquire", &first);
    ok(alice.release(&first).await, "release by the owner");

    let second = acquired(
        ok(alice.try_acquire(LEASE).await, "try_acquire after release"),
        "a released key must be acquired again",
    );
    minted("reacquire by the same candidate after release", &second);
    assert_eq!(
        ok(alice.renew(&second, LEASE).await, "renew by the owner"),
        Renew::Renewed,
        "renew by the owner must succeed"
    );
    let contended = held(
        ok(bob.try_acquire(LEASE).await, "try_acquire on a held key"),
        "a held key must not be acquired by another candidate",
    );
    assert_eq!(
        contended.token, second.token,
        "contention must report the holder's token, not mint one"
    );
    expect_holder(
        &*store,
        &key,
        "alice",
        second.token,
        "renew and contention must not mint tokens",
    )
    .await;
    ok(alice.release(&second).await, "release by the owner");

    let ttl = caps.short_ttl();
    let third = acquired(
        ok(alice.try_acquire(ttl).await, "try_acquire after release"),
        "a released key must be acquired again",
    );
    let acquired_at = Instant::now();
    minted("the second reacquire by the same candidate", &third);
    wait_for_expiry(&*store, &key, ttl, acquired_at, caps.expiry_slack).await;
    let fourth = acquired(
        ok(alice.try_acquire(LEASE).await, "try_acquire after expiry"),
        "an expired key must be acquired again by its last holder",
    );
    minted("reacquire by the same candidate after expiry", &fourth);
    ok(alice.release(&fourth).await, "release by the owner");

    let fifth = acquired(
        ok(bob.try_acquire(LEASE).await, "try_acquire after release"),
        "a released key must be free for another candidate",
    );
    minted("acquire by another candidate after release", &fifth);
    ok(bob.release(&fifth).await, "release by the owner");

    let sixth = acquired(
        ok(alice.try_acquire(LEASE).await, "try_acquire after release"),
        "a released key must be free for the first candidate again",
    );
    minted(
        "acquire by the first candidate after another's term",
        &sixth,
    );
    ok(alice.release(&sixth).await, "release by the owner");
}

/// **N concurrent acquirers produce exactly one winner.** Sixteen candidates, each with its own
/// store handle and candidacy, try to acquire a free key at once: exactly one gets `Acquired`,
/// every other gets `Held` with the winner's record, and none gets an error (contention is a
/// result). After the winner releases, the rest race again, with the same outcome and a
/// greater token.
pub async fn concurrent_acquirers_one_winner<F: StoreFactory + ?Sized>(factory: &F) {
    let key = unique_key("concurrent-acquirers-one-winner");
    let mut contenders = Vec::with_capacity(CONTENDERS);
    let mut stores = Vec::with_capacity(CONTENDERS);
    for i in 0..CONTENDERS {
        let store = open(factory).await;
        contenders.push(join(&*store, &key, &format!("contender-{i:02}")).await);
        stores.push(store);
    }

    let (mut winner, lease, losers) = race(contenders, "the first race").await;
    expect_holder(
        &*stores[0],
        &key,
        &lease.holder,
        lease.token,
        "read() after a race must show the winner",
    )
    .await;

    ok(winner.release(&lease).await, "release by the winner");
    let (mut second_winner, second, _) = race(losers, "the race after the winner released").await;
    assert!(
        second.token > lease.token,
        "a second race must mint a greater token: {} after {}",
        second.token,
        lease.token
    );
    ok(
        second_winner.release(&second).await,
        "release by the winner",
    );
}

/// **Watch delivers a release promptly** (only for stores whose
/// [`StoreInfo::can_watch`](baton::StoreInfo::can_watch) is true). A follower, on its own store
/// handle, subscribes with [`Candidacy::watch`] *before* it tries to acquire, as the engine
/// does, and an observer subscribes with [`LeaseStore::watch`]. After the leader releases,
/// both streams yield a change within 2 s, and the follower then acquires the key.
pub async fn watch_delivers_release<F: StoreFactory + ?Sized>(factory: &F) {
    let store = open(factory).await;
    let info = store.info();
    if !info.can_watch {
        println!(
            "conformance: watch_delivers_release skipped by capability: the {} store reports \
             can_watch = false (followers fall back to timers)",
            info.name
        );
        return;
    }
    let key = unique_key("watch-delivers-release");
    let mut alice = join(&*store, &key, "alice").await;
    let lease = acquired(
        ok(alice.try_acquire(LEASE).await, "try_acquire on a free key"),
        "a free key must be acquired",
    );

    let elsewhere = open(factory).await;
    let mut follower = join(&*elsewhere, &key, "bob").await;
    let mut follower_changes =
        ok(follower.watch().await, "Candidacy::watch").unwrap_or_else(|| {
            panic!(
                "the {} store reports can_watch = true, but Candidacy::watch returned None",
                info.name
            )
        });
    let mut observer_changes =
        ok(elsewhere.watch(&key).await, "LeaseStore::watch").unwrap_or_else(|| {
            panic!(
                "the {} store reports can_watch = true, but LeaseStore::watch returned None",
                info.name
            )
        });
    held(
        ok(
            follower.try_acquire(LEASE).await,
            "try_acquire on a held key",
        ),
        "a held key must not be acquired by another candidate",
    );
    drain(&mut follower_changes);
    drain(&mut observer_changes);

    ok(alice.release(&lease).await, "release by the owner");
    let released_at = Instant::now();
    let change = next_change(&mut follower_changes, released_at, "Candidacy::watch").await;
    next_change(&mut observer_changes, released_at, "LeaseStore::watch").await;

    let bobs = acquired(
        ok(
            follower.try_acquire(LEASE).await,
            "try_acquire after a release notification",
        ),
        &format!("after a release notification ({change:?}) the follower must acquire the key"),
    );
    ok(follower.release(&bobs).await, "release by the owner");
}

/// **Foreign data at the key gives a clear error and stays untouched** (only for stores whose
/// factory has a [`ForeignWriter`]). `read` and `try_acquire` fail with
/// [`Error::ForeignData`] saying what is there (`join` may fail with it already); renew and
/// release of a made-up lease do not succeed; the planted data is unchanged at the end.
pub async fn foreign_data_is_left_untouched<F: StoreFactory + ?Sized>(factory: &F) {
    let store = open(factory).await;
    let Some(writer) = factory.foreign_writer() else {
        println!(
            "conformance: foreign_data_is_left_untouched skipped by capability: the {} store \
             cannot hold data Baton did not write at a key (its factory has no ForeignWriter)",
            store.info().name
        );
        return;
    };
    let key = unique_key("foreign-data-is-left-untouched");
    if let Err(e) = writer.plant(&key).await {
        panic!("the factory's ForeignWriter could not plant data at {key:?}: {e}");
    }

    expect_foreign(store.read(&key).await, "read()");
    match store.join(&key, "alice").await {
        Err(e) => expect_foreign(Err::<(), _>(e), "join()"),
        Ok(mut alice) => {
            expect_foreign(alice.try_acquire(LEASE).await, "try_acquire()");
            let forged = Lease::new(key.clone(), "alice".to_owned(), FencingToken(1));
            match alice.renew(&forged, LEASE).await {
                Ok(Renew::Lost(_)) | Err(Error::ForeignData { .. }) => {}
                other => panic!(
                    "renew() on a key holding foreign data must be Lost or fail with \
                     Error::ForeignData, got {}",
                    show(&other)
                ),
            }
            match alice.release(&forged).await {
                Ok(()) | Err(Error::ForeignData { .. }) => {}
                Err(e) => panic!(
                    "release() on a key holding foreign data must be a no-op or fail with \
                     Error::ForeignData, got {}",
                    describe(&e)
                ),
            }
            match alice.leave().await {
                Ok(()) | Err(Error::ForeignData { .. }) => {}
                Err(e) => panic!(
                    "leave() on a key holding foreign data must be harmless, got {}",
                    describe(&e)
                ),
            }
        }
    }
    if let Err(what) = writer.check_untouched(&key).await {
        panic!("foreign data at {key:?} must stay untouched, but {what}");
    }
}

/// **Read of a never-used key is `None`**, and reading it does not claim it: a candidate can
/// then acquire it.
pub async fn read_of_unused_key_is_none<F: StoreFactory + ?Sized>(factory: &F) {
    let store = open(factory).await;
    let key = unique_key("read-of-unused-key-is-none");
    assert_eq!(
        ok(store.read(&key).await, "read() of a never-used key"),
        None,
        "read() of a never-used key must be None"
    );
    let mut alice = join(&*store, &key, "alice").await;
    let lease = acquired(
        ok(alice.try_acquire(LEASE).await, "try_acquire after read()"),
        "a key that was only read must be free",
    );
    ok(alice.release(&lease).await, "release by the owner");
}

/// **Leave is harmless.** `leave` after release keeps the key free for others; a follower's
/// `leave`, and the `leave` of a candidacy that never tried, leave the holder's lease alone.
pub async fn leave_is_harmless<F: StoreFactory + ?Sized>(factory: &F) {
    let store = open(factory).await;
    let key = unique_key("leave-is-harmless");
    let mut alice = join(&*store, &key, "alice").await;
    let lease = acquired(
        ok(alice.try_acquire(LEASE).await, "try_acquire on a free key"),
        "a free key must be acquired",
    );
    ok(alice.release(&lease).await, "release by the owner");
    ok(alice.leave().await, "leave() after release");
    assert_eq!(
        ok(store.read(&key).await, "read() after leave"),
        None,
        "leave() after release must leave the key free"
    );

    let mut bob = join(&*store, &key, "bob").await;
    let bobs = acquired(
        ok(
            bob.try_acquire(LEASE).await,
            "try_acquire after the holder left",
        ),
        "a key whose holder released and left must be free for another candidate",
    );

    let mut carol = join(&*store, &key, "carol").await;
    held(
        ok(carol.try_acquire(LEASE).await, "try_acquire on a held key"),
        "a held key must not be acquired by another candidate",
    );
    ok(carol.leave().await, "leave() by a follower");
    let mut dave = join(&*store, &key, "dave").await;
    ok(
        dave.leave().await,
        "leave() by a candidacy that never tried",
    );

    expect_holder(
        &*store,
        &key,
        "bob",
        bobs.token,
        "a follower's leave() must not touch the holder's lease",
    )
    .await;
    assert_eq!(
        ok(bob.renew(&bobs, LEASE).await, "renew by the owner"),
        Renew::Renewed,
        "the holder must keep renewing after followers left"
    );
    ok(bob.release(&bobs).await, "release by the owner");
    ok(bob.leave().await, "leave() after release");
}

// ---------------------------------------------------------------------------------------------
// Shared steps. Each panics with the rule it checks.

fn unique_key(case: &str) -> String {
    format!("conformance-{case}-{:016x}", fastrand::u64(..))
}

async fn open<F: StoreFactory + ?Sized>(factory: &F) -> Arc<dyn LeaseStore> {
    match factory.store().await {
        Ok(store) => store,
        Err(e) => panic!("the factory could not open the store: {}", describe(&e)),
    }
}

async fn join(store: &dyn LeaseStore, key: &str, candidate: &str) -> Box<dyn Candidacy> {
    ok(
        store.join(key, candidate).await,
        &format!("join({key:?}, {candidate:?})"),
    )
}

/// The value of a store call that must not fail.
fn ok<T>(result: baton::Result<T>, call: &str) -> T {
    result.unwrap_or_else(|e| panic!("{call} failed: {}", describe(&e)))
}

fn acquired(outcome: Acquire, rule: &str) -> Lease {
    match outcome {
        Acquire::Acquired(lease) => lease,
        other => panic!("{rule}: expected Acquired, got {other:?}"),
    }
}

fn reserved(outcome: Acquire, rule: &str) -> baton::HandoffMark {
    match outcome {
        Acquire::Reserved(mark) => mark,
        other => panic!("{rule}: expected Reserved, got {other:?}"),
    }
}

fn held(outcome: Acquire, rule: &str) -> LeaseRecord {
    match outcome {
        Acquire::Held(record) => record,
        other => panic!("{rule}: expected Held, got {other:?}"),
    }
}

fn lost(outcome: Renew, rule: &str) -> Option<LeaseRecord> {
    match outcome {
        Renew::Lost(record) => record,
        other => panic!("{rule}: expected Lost, got {other:?}"),
    }
}

fn assert_record(record: Option<&LeaseRecord>, holder: &str, token: FencingToken, rule: &str) {
    assert!(
        record.is_some_and(|r| r.holder == holder && r.token == token),
        "{rule}: expected {holder:?} holding token {token}, got {record:?}"
    );
}

/// Reads the key and checks who holds it; returns the record.
async fn expect_holder(
    store: &dyn LeaseStore,
    key: &str,
    holder: &str,
    token: FencingToken,
    rule: &str,
) -> LeaseRecord {
    match ok(store.read(key).await, "read()") {
        Some(record) if record.holder == holder && record.token == token => record,
        other => {
            panic!("{rule}: expected {holder:?} holding token {token}, read() showed {other:?}")
        }
    }
}

/// `0 < ttl <= requested`, and not far below what was requested.
fn check_ttl(ttl: Duration, requested: Duration, what: &str) {
    assert!(
        ttl > Duration::ZERO && ttl <= requested,
        "{what}: the remaining TTL must be in (0, {requested:?}], got {ttl:?}"
    );
    assert!(
        ttl >= requested / 2,
        "{what}: the store must keep the requested TTL ({requested:?}), but only {ttl:?} remain"
    );
}

/// **A planned handoff reserves the key for its candidate, for its window only** (only for
/// stores whose [`Capabilities::handoff`] is true). A request from another handle
/// ([`LeaseStore::request_handoff`]) names the holder and changes nothing of its lease, and the
/// holder's next renewal reports it ([`Renew::HandoffRequested`]); a request for the holder
/// itself writes nothing; a key nobody holds answers `None`. After `alice` hands over to
/// `carol`:
/// `read` shows the key free; `bob` and `alice` get [`Acquire::Reserved`] with the mark;
/// where the store can push, `carol` hears of it within 2 s; `carol` acquires with a greater
/// token, which clears the mark; a handoff of a lease that is no longer held changes nothing.
/// A handoff to anyone keeps out only the leaver; a mark to a candidate that never comes runs
/// out after its window, and then anyone acquires.
pub async fn handoff_reserves_the_key_for_its_candidate<F: StoreFactory + ?Sized>(factory: &F) {
    let caps = factory.capabilities();
    let store = open(factory).await;
    if !caps.handoff {
        println!(
            "conformance: handoff_reserves_the_key_for_its_candidate skipped by capability: the \
             {} store hands over with a plain release",
            store.info().name
        );
        return;
    }
    let key = unique_key("handoff-reserves-the-key");
    let mut alice = join(&*store, &key, "alice").await;
    let lease = acquired(
        ok(alice.try_acquire(LEASE).await, "try_acquire on a free key"),
        "a free key must be acquired",
    );
    let elsewhere = open(factory).await;
    let mut bob = join(&*elsewhere, &key, "bob").await;
    let mut carol = join(&*elsewhere, &key, "carol").await;
    let mut carols_changes = if store.info().can_watch {
        let changes = ok(carol.watch().await, "Candidacy::watch");
        held(
            ok(carol.try_acquire(LEASE).await, "try_acquire on a held key"),
            "a held key must not be acquired by another candidate",
        );
        changes.map(|mut c| {
            drain(&mut c);
            c
        })
    } else {
        None
    };

    assert!(
        ok(
            elsewhere.request_handoff(&unique_key("unused"), None).await,
            "request_handoff on a key nobody holds"
        )
        .is_none(),
        "a request on a free key must answer None"
    );
    let asked = ok(
        elsewhere.request_handoff(&key, Some("carol")).await,
        "request_handoff",
    );
    assert_record(
        asked.as_ref(),
        "alice",
        lease.token,
        "a request must name the holder it was left for",
    );
    ok(
        elsewhere.request_handoff(&key, Some("alice")).await,
        "request_handoff to the holder itself",
    );
    expect_holder(
        &*store,
        &key,
        "alice",
        lease.token,
        "a request must not touch the lease",
    )
    .await;
    let renewed = ok(alice.renew(&lease, LEASE).await, "renew after a request");
    assert_eq!(
        renewed,
        Renew::HandoffRequested {
            to: Some("carol".into())
        },
        "the holder's renewal must report the request (and a request for the holder itself \
         must not replace it)"
    );

    ok(
        alice.hand_over(&lease, Some("carol"), LEASE).await,
        "hand_over by the owner",
    );
    let handed_at = Instant::now();
    assert!(
        ok(store.read(&key).await, "read after a handoff").is_none(),
        "after a handoff nobody holds the key"
    );
    for (who, candidacy) in [("bob", &mut bob), ("alice", &mut alice)] {
        let mark = reserved(
            ok(
                candidacy.try_acquire(LEASE).await,
                "try_acquire of a reserved key",
            ),
            &format!("a key handed over to carol must be reserved for her, also against {who}"),
        );
        assert_eq!(mark.to.as_deref(), Some("carol"), "the mark names carol");
        assert_eq!(mark.from, "alice", "the mark names the leaver");
        assert!(
            mark.ttl <= LEASE && mark.ttl + Duration::from_secs(5) >= LEASE,
            "the mark runs for the window asked for ({LEASE:?}), not {:?}",
            mark.ttl
        );
    }
    if let Some(changes) = carols_changes.as_mut() {
        next_change(changes, handed_at, "Candidacy::watch after a handoff").await;
    }
    let carols = acquired(
        ok(
            carol.try_acquire(LEASE).await,
            "try_acquire by the named candidate",
        ),
        "the candidate a key is handed over to must acquire it",
    );
    assert!(
        carols.token > lease.token,
        "a handoff mints a greater token: {} after {}",
        carols.token,
        lease.token
    );
    assert_eq!(
        ok(carol.renew(&carols, LEASE).await, "renew by the new holder"),
        Renew::Renewed,
        "a request goes with the lease it was made of"
    );
    ok(
        alice.hand_over(&lease, Some("bob"), LEASE).await,
        "hand_over of a lease no longer held (must be a no-op, not an error)",
    );
    expect_holder(
        &*store,
        &key,
        "carol",
        carols.token,
        "a handoff of a lease no longer held must not touch the holder's lease",
    )
    .await;

    // To anyone: only the leaver is kept out.
    ok(
        carol.hand_over(&carols, None, LEASE).await,
        "hand_over to anyone",
    );
    let mark = reserved(
        ok(carol.try_acquire(LEASE).await, "try_acquire by the leaver"),
        "after a handoff to anyone the leaver must not take the key back",
    );
    assert_eq!((mark.to, mark.from.as_str()), (None, "carol"));
    let bobs = acquired(
        ok(
            bob.try_acquire(LEASE).await,
            "try_acquire after a handoff to anyone",
        ),
        "after a handoff to anyone another candidate must acquire the key",
    );

    // To a candidate that never comes: the mark runs out after its window.
    let window = caps.short_ttl();
    ok(
        bob.hand_over(&bobs, Some("nobody"), window).await,
        "hand_over to a candidate that is not running",
    );
    let handed_at = Instant::now();
    reserved(
        ok(
            alice.try_acquire(LEASE).await,
            "try_acquire of a reserved key",
        ),
        "a key handed over to nobody is reserved until the mark runs out",
    );
    sleep_until(handed_at + window).await;
    let deadline = handed_at + window + caps.expiry_slack;
    let alices = loop {
        match ok(
            alice.try_acquire(LEASE).await,
            "try_acquire after the mark's window",
        ) {
            Acquire::Acquired(lease) => break lease,
            other => assert!(
                Instant::now() < deadline,
                "a mark with a window of {window:?} still kept the key {:?} later: {other:?}",
                handed_at.elapsed()
            ),
        }
        sleep(POLL).await;
    };
    assert!(alices.token > bobs.token);
    ok(alice.release(&alices).await, "release by the owner");
}

/// **`pending_handoff` shows a request, then the mark** (only for stores whose
/// [`Capabilities::shows_handoff`] is true): nothing on a key without one; a request from
/// another handle shows as `Requested` with the holder and the candidate asked for; after the
/// handoff, `Reserved` with the mark; once the named candidate acquires, nothing again.
pub async fn pending_handoff_shows_requests_and_marks<F: StoreFactory + ?Sized>(factory: &F) {
    let caps = factory.capabilities();
    let store = open(factory).await;
    if !caps.shows_handoff {
        println!(
            "conformance: pending_handoff_shows_requests_and_marks skipped by capability: the {} \
             store does not show handoffs under way",
            store.info().name
        );
        return;
    }
    let key = unique_key("pending-handoff");
    assert_eq!(
        ok(
            store.pending_handoff(&key).await,
            "pending_handoff of an unused key"
        ),
        None
    );
    let mut alice = join(&*store, &key, "alice").await;
    let lease = acquired(
        ok(alice.try_acquire(LEASE).await, "try_acquire on a free key"),
        "a free key must be acquired",
    );
    assert_eq!(
        ok(
            store.pending_handoff(&key).await,
            "pending_handoff of a held key"
        ),
        None,
        "a held key without a request has no handoff under way"
    );
    let elsewhere = open(factory).await;
    ok(
        elsewhere.request_handoff(&key, Some("carol")).await,
        "request_handoff",
    );
    assert_eq!(
        ok(
            store.pending_handoff(&key).await,
            "pending_handoff after a request"
        ),
        Some(PendingHandoff::Requested {
            holder: "alice".into(),
            to: Some("carol".into())
        })
    );
    ok(
        alice.hand_over(&lease, Some("carol"), LEASE).await,
        "hand_over by the owner",
    );
    match ok(
        store.pending_handoff(&key).await,
        "pending_handoff after a handoff",
    ) {
        Some(PendingHandoff::Reserved(mark)) => {
            assert_eq!(mark.to.as_deref(), Some("carol"));
            assert_eq!(mark.from, "alice");
            assert!(mark.ttl <= LEASE && !mark.ttl.is_zero(), "{:?}", mark.ttl);
        }
        other => panic!("after a handoff the key must show the mark, not {other:?}"),
    }
    let mut carol = join(&*elsewhere, &key, "carol").await;
    let carols = acquired(
        ok(
            carol.try_acquire(LEASE).await,
            "try_acquire by the named candidate",
        ),
        "the candidate a key is handed over to must acquire it",
    );
    assert_eq!(
        ok(
            store.pending_handoff(&key).await,
            "pending_handoff after the handoff"
        ),
        None,
        "the acquire by the named candidate ends the handoff"
    );
    ok(carol.release(&carols).await, "release by the owner");
}

/// **Presence records live for their TTL** (only for stores whose [`Capabilities::presence`]
/// is true). `announce` returns every live record, its own included, with the priority it was
/// given and `0 < ttl <= requested`; another handle's `candidates` sees the same; a second
/// announce replaces the record (a new priority); `withdraw` removes it; a record that is not
/// renewed runs out after its TTL; records at one key never show at another.
pub async fn presence_records_live_for_their_ttl<F: StoreFactory + ?Sized>(factory: &F) {
    let caps = factory.capabilities();
    let store = open(factory).await;
    if !caps.presence {
        println!(
            "conformance: presence_records_live_for_their_ttl skipped by capability: the {} \
             store keeps no presence records",
            store.info().name
        );
        return;
    }
    let key = unique_key("presence");
    let elsewhere = open(factory).await;
    let sorted = |live: Option<Vec<Presence>>, what: &str| -> Vec<(String, u32)> {
        let live = live.unwrap_or_else(|| panic!("{what}: a store with presence answers Some"));
        for p in &live {
            assert!(
                !p.ttl.is_zero() && p.ttl <= LEASE,
                "{what}: {}'s record must have 0 < ttl <= {LEASE:?}, not {:?}",
                p.candidate,
                p.ttl
            );
        }
        let mut names: Vec<(String, u32)> = live
            .into_iter()
            .map(|p| (p.candidate, p.priority))
            .collect();
        names.sort();
        names
    };
    assert_eq!(
        sorted(
            ok(store.candidates(&key).await, "candidates"),
            "candidates of an unused key"
        ),
        []
    );
    let live = ok(store.announce(&key, "alice", 3, LEASE).await, "announce");
    assert_eq!(sorted(live, "announce"), [("alice".into(), 3)]);
    let live = ok(elsewhere.announce(&key, "bob", 0, LEASE).await, "announce");
    assert_eq!(
        sorted(live, "a second announce"),
        [("alice".into(), 3), ("bob".into(), 0)]
    );
    let live = ok(
        store.announce(&key, "alice", u32::MAX, LEASE).await,
        "announce",
    );
    assert_eq!(
        sorted(live, "announce again"),
        [("alice".into(), u32::MAX), ("bob".into(), 0)],
        "a second announce replaces the record"
    );
    assert_eq!(
        sorted(
            ok(
                elsewhere.candidates(&unique_key("other")).await,
                "candidates"
            ),
            "another key"
        ),
        []
    );
    ok(elsewhere.withdraw(&key, "bob").await, "withdraw");
    ok(
        elsewhere.withdraw(&key, "nobody").await,
        "withdraw of a record that is not there",
    );
    assert_eq!(
        sorted(
            ok(store.candidates(&key).await, "candidates"),
            "after a withdraw"
        ),
        [("alice".into(), u32::MAX)]
    );
    let ttl = caps.short_ttl();
    ok(store.announce(&key, "carol", 1, ttl).await, "announce");
    let announced = Instant::now();
    sleep_until(announced + ttl).await;
    let deadline = announced + ttl + caps.expiry_slack;
    loop {
        let names = sorted(
            ok(store.candidates(&key).await, "candidates"),
            "after a TTL",
        );
        if names == [("alice".to_owned(), u32::MAX)] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a record with a TTL of {ttl:?} still shows {:?} later: {names:?}",
            announced.elapsed()
        );
        sleep(POLL).await;
    }
    ok(store.withdraw(&key, "alice").await, "withdraw");
}

/// Waits, in real time, until the lease acquired at `acquired_at` with `ttl` has expired and
/// `read` shows the key free; panics if that takes longer than `ttl + slack`.
async fn wait_for_expiry(
    store: &dyn LeaseStore,
    key: &str,
    ttl: Duration,
    acquired_at: Instant,
    slack: Duration,
) {
    sleep_until(acquired_at + ttl).await;
    let deadline = acquired_at + ttl + slack;
    loop {
        let record = ok(store.read(key).await, "read() while waiting for expiry");
        let Some(record) = record else { return };
        assert!(
            Instant::now() < deadline,
            "expiry must free the key: a lease acquired with a TTL of {ttl:?} was still held {:?} \
             later (expiry_slack {slack:?}): {record:?}",
            acquired_at.elapsed()
        );
        sleep(POLL).await;
    }
}

/// Races the candidacies to acquire a free key at once; returns the winner, its lease and the
/// losers, after checking there is exactly one winner and every loser saw it.
async fn race(
    contenders: Vec<Box<dyn Candidacy>>,
    round: &str,
) -> (Box<dyn Candidacy>, Lease, Vec<Box<dyn Candidacy>>) {
    let start = Arc::new(tokio::sync::Barrier::new(contenders.len()));
    let tasks: Vec<_> = contenders
        .into_iter()
        .map(|mut candidacy| {
            let start = Arc::clone(&start);
            tokio::spawn(async move {
                start.wait().await;
                let outcome = candidacy.try_acquire(LEASE).await;
                (candidacy, outcome)
            })
        })
        .collect();

    let mut winners = Vec::new();
    let mut losers = Vec::new();
    for task in tasks {
        let (candidacy, outcome) = match task.await {
            Ok(done) => done,
            Err(e) if e.is_panic() => panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("{round}: a contender's task failed: {e}"),
        };
        match outcome {
            Ok(Acquire::Acquired(lease)) => winners.push((candidacy, lease)),
            Ok(Acquire::Held(record)) => losers.push((candidacy, record)),
            Ok(other) => panic!("{round}: no handoff was made, but a contender got {other:?}"),
            Err(e) => panic!(
                "{round}: contention is a result, never an error, but a contender got: {}",
                describe(&e)
            ),
        }
    }
    assert!(
        winners.len() == 1,
        "{round}: {} concurrent acquirers must produce exactly one winner, got {}: {:?}",
        winners.len() + losers.len(),
        winners.len(),
        winners.iter().map(|(_, lease)| lease).collect::<Vec<_>>()
    );
    let (winner, lease) = winners.pop().expect("exactly one winner");
    for (_, record) in &losers {
        assert_record(
            Some(record),
            &lease.holder,
            lease.token,
            &format!("{round}: every loser must see the winner's lease, the only one minted"),
        );
    }
    let losers = losers.into_iter().map(|(candidacy, _)| candidacy).collect();
    (winner, lease, losers)
}

/// Discards changes that were already waiting, so the next one is news.
fn drain(changes: &mut Changes) {
    while let Some(Some(_)) = changes.next().now_or_never() {}
}

/// The first change after a release, within [`WATCH_BOUND`]. An `Acquired` change can only be
/// old news of the leader's acquisition (nobody acquires after the release until the follower
/// tries), so it does not count.
async fn next_change(changes: &mut Changes, released_at: Instant, which: &str) -> Change {
    loop {
        match tokio::time::timeout_at(released_at + WATCH_BOUND, changes.next()).await {
            Ok(Some(Change::Acquired { .. })) => continue,
            Ok(Some(change)) => return change,
            Ok(None) => panic!("{which}: the change stream ended instead of delivering a release"),
            Err(_) => panic!(
                "{which}: watch must deliver a release promptly, but nothing arrived within \
                 {WATCH_BOUND:?}"
            ),
        }
    }
}

fn expect_foreign<T: std::fmt::Debug>(result: baton::Result<T>, call: &str) {
    match result {
        Err(Error::ForeignData { key, found }) => assert!(
            !found.trim().is_empty(),
            "{call} on foreign data must say what is there, but Error::ForeignData for {key:?} \
             has an empty description"
        ),
        other => panic!(
            "{call} on a key holding data Baton did not write must fail with \
             Error::ForeignData, got {}",
            show(&other)
        ),
    }
}

fn show<T: std::fmt::Debug>(result: &baton::Result<T>) -> String {
    match result {
        Ok(value) => format!("Ok({value:?})"),
        Err(e) => format!("Err({})", describe(e)),
    }
}

/// An error with its chain of sources.
fn describe(err: &Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "(a panic without a message)".to_owned()
    }
}
