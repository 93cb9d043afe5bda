//! The store contract: atomic lease primitives on one backend.
//!
//! A store keeps one lease record per key: the holder (a candidate id), a fencing token and an
//! expiry judged by the store's own clock. The engine ([`crate::LeaderElection`]) is written
//! once against these two traits and never names a concrete store.
//!
//! # Shape: a store, and a candidacy per candidate
//!
//! [`LeaseStore`] is what the application hands to the election: it can [`read`] a key and let a
//! candidate [`join`] the election for a key. Joining returns a [`Candidacy`], a per-candidate
//! handle that owns whatever per-candidate state the backend's native recipe needs, and is the
//! only thing the engine writes through.
//!
//! | backend | what `join` creates | `try_acquire` | token | `leave` |
//! |---|---|---|---|---|
//! | memory, SQLite, SQL, Redis | nothing (a key and an id) | CAS on the single record | counter bumped in the same atomic step | no-op |
//! | etcd (`concurrency.Election`) | a lease (session) kept alive by the candidacy | put `<prefix>/<lease id>` if absent, then lead iff it has the lowest create revision | the leader key's create revision | revoke the lease (deletes the own key with it) |
//! | ZooKeeper (Curator `LeaderLatch`) | an ephemeral sequential znode | lead iff own znode is the lowest | the znode's sequence / czxid | delete the znode |
//! | Consul (`consul lock`) | a session (TTL: the lease, at least 10 s), created at the first acquire | a transaction: check the index read, lock with the session | the raft index read, plus one | destroy the session |
//! | Kubernetes Lease | the time the record was last observed to change (client-go's `observedTime`) | PUT with `resourceVersion` when the observed record is stale | `leaseTransitions` | no-op |
//!
//! A follower in a queue-shaped store (etcd, ZooKeeper) keeps its queue entry between
//! attempts; `try_acquire` then answers [`Acquire::Held`] until the entry reaches the head, and
//! [`Candidacy::watch`] wakes it only when its predecessor goes, so a handoff wakes one
//! follower, not all. (etcd's stream also tells every follower the new head's id, from the
//! watch's events alone.)
//!
//! # Rules every implementation keeps
//!
//! * Every write is one atomic compare-and-set on the backend.
//! * Contention is a result ([`Acquire::Held`]), never an error.
//! * `renew` and `release` act only while *this* lease (same holder **and** same token) holds
//!   the key; two processes that share a candidate id never renew or release each other's
//!   lease.
//! * Fencing tokens strictly increase with every acquisition of a key, across releases,
//!   expiries and restarts.
//! * Expiry is judged by the store's clock, never by a client's wall clock.
//! * Data Baton did not write gives [`Error::ForeignData`](crate::Error::ForeignData) and is
//!   left untouched.
//!
//! The conformance suite in `baton-testkit` checks these rules against every store.
//!
//! [`read`]: LeaseStore::read
//! [`join`]: LeaseStore::join

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::Stream;

use crate::Result;

#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
mod batch;
#[cfg(any(
    feature = "redis",
    feature = "postgres",
    feature = "mysql",
    feature = "etcd",
    feature = "consul"
))]
mod cert;
#[cfg(feature = "consul")]
pub mod consul;
#[cfg(feature = "etcd")]
pub mod etcd;
#[cfg(feature = "kubernetes")]
pub mod kubernetes;
pub mod memory;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub mod sql;
#[cfg(feature = "sqlite")]
pub mod sqlite;
#[cfg(any(feature = "redis", feature = "postgres", feature = "mysql"))]
mod wake;

/// A fencing token: strictly increases with every acquisition of a key.
///
/// Hand it to every resource the leader writes to; a resource that remembers the highest token
/// it has accepted and rejects lower ones cannot be corrupted by a stale leader, even one that
/// was paused past its lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct FencingToken(pub u64);

impl FencingToken {
    /// The raw number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl From<FencingToken> for u64 {
    fn from(t: FencingToken) -> u64 {
        t.0
    }
}

/// A lease this candidate holds: proof of a successful acquire.
///
/// Stores build it with [`Lease::new`] (and [`Lease::with_act_after`]); new fields may be added
/// in minor releases.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Lease {
    /// The election key.
    pub key: String,
    /// The candidate that holds it.
    pub holder: String,
    /// The fencing token minted when it was acquired.
    pub token: FencingToken,
    /// How long after sending the acquire the holder must wait before acting as leader, while
    /// it keeps renewing. Zero for almost every acquire. A store sets it when it cannot rule out
    /// that an earlier holder still believes it leads: Redis after a restart that lost its
    /// data waits until the server has been up for a whole lease.
    pub act_after: Duration,
}

impl Lease {
    /// A lease the holder may act on at once.
    pub fn new(key: impl Into<String>, holder: impl Into<String>, token: FencingToken) -> Self {
        Lease {
            key: key.into(),
            holder: holder.into(),
            token,
            act_after: Duration::ZERO,
        }
    }

    /// The same lease, on which the holder must wait `wait` after sending the acquire before
    /// it acts as leader (see [`Lease::act_after`]).
    #[must_use]
    pub fn with_act_after(mut self, wait: Duration) -> Self {
        self.act_after = wait;
        self
    }
}

/// What the store says about a key: who holds it, with which token, for how much longer.
///
/// Built with [`LeaseRecord::new`]; new fields may be added in minor releases.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LeaseRecord {
    /// The holder's candidate id.
    pub holder: String,
    /// The holder's fencing token.
    pub token: FencingToken,
    /// Time left on the lease, by the store's clock, when it was read.
    pub ttl: Duration,
}

impl LeaseRecord {
    /// The record of `holder`'s lease with `token`, `ttl` from expiry.
    pub fn new(holder: impl Into<String>, token: FencingToken, ttl: Duration) -> Self {
        LeaseRecord {
            holder: holder.into(),
            token,
            ttl,
        }
    }
}

/// The outcome of [`Candidacy::try_acquire`].
///
/// New outcomes may be added in minor releases: the engine is the only caller that matches.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Acquire {
    /// The key was free or expired, and is now ours.
    Acquired(Lease),
    /// Someone holds the key. For queue-shaped stores: this candidate is queued behind it.
    Held(LeaseRecord),
    /// Nobody holds the key, but a planned handoff reserved it for someone else
    /// ([`Candidacy::hand_over`]): for the mark's [`ttl`](HandoffMark::ttl) only its
    /// candidate may take it. The engine waits for a change or for the mark to run out.
    Reserved(HandoffMark),
}

/// The mark a planned handoff leaves at a key ([`Candidacy::hand_over`]): until it runs out,
/// only [`to`](HandoffMark::to) may take the key; with `to = None`, anyone but
/// [`from`](HandoffMark::from), the leader that handed over. A mark that ran out is ignored,
/// so a handoff to a candidate that died midway ends in a normal election within one lease.
///
/// Built with [`HandoffMark::new`]; new fields may be added in minor releases.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HandoffMark {
    /// The candidate the key is reserved for; `None`: anyone but `from`.
    pub to: Option<String>,
    /// The leader that handed over.
    pub from: String,
    /// Time left on the mark, by the store's clock, when it was read.
    pub ttl: Duration,
}

impl HandoffMark {
    /// `from`'s handoff to `to` (or to anyone else), `ttl` from running out.
    pub fn new(to: Option<String>, from: impl Into<String>, ttl: Duration) -> Self {
        HandoffMark {
            to,
            from: from.into(),
            ttl,
        }
    }

    /// Whether the mark lets `candidate` take the key.
    pub fn admits(&self, candidate: &str) -> bool {
        match &self.to {
            Some(to) => to == candidate,
            None => self.from != candidate,
        }
    }
}

/// A live candidate at a key, as its presence record says ([`LeaseStore::announce`]).
///
/// Built with [`Presence::new`]; new fields may be added in minor releases.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Presence {
    /// The candidate's id.
    pub candidate: String,
    /// Its priority ([`LeaderElectionBuilder::priority`](crate::LeaderElectionBuilder::priority)):
    /// a follower with a higher priority than the leader asks for the lease.
    pub priority: u32,
    /// Time left on the record, by the store's clock, when it was read.
    pub ttl: Duration,
}

impl Presence {
    /// `candidate`'s record with `priority`, `ttl` from running out.
    pub fn new(candidate: impl Into<String>, priority: u32, ttl: Duration) -> Self {
        Presence {
            candidate: candidate.into(),
            priority,
            ttl,
        }
    }
}

/// A planned handoff that has not finished yet, as [`LeaseStore::pending_handoff`] reports it
/// (`baton status` and `baton watch` show it).
///
/// New kinds may be added in minor releases.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PendingHandoff {
    /// Someone asked `holder` to hand the key over ([`LeaseStore::request_handoff`]), to `to`
    /// (`None`: anyone else); the holder has not yet answered.
    Requested {
        /// The holder asked.
        holder: String,
        /// The candidate asked for.
        to: Option<String>,
    },
    /// The holder handed over: the key is free and reserved by this mark.
    Reserved(HandoffMark),
}

/// The outcome of [`Candidacy::renew`].
///
/// New outcomes may be added in minor releases: the engine is the only caller that matches.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Renew {
    /// The lease was extended by the requested TTL.
    Renewed,
    /// The lease was extended, and someone asked for it to be handed over
    /// ([`LeaseStore::request_handoff`]): to `to`, or (`None`) to any other candidate. The
    /// engine then hands over as [`LeaderElection::hand_over`](crate::LeaderElection::hand_over)
    /// does.
    HandoffRequested {
        /// The candidate asked for.
        to: Option<String>,
    },
    /// The lease is no longer ours; the current record, if any.
    Lost(Option<LeaseRecord>),
}

/// A hint that the lease at a key may have changed. Followers react by trying to acquire.
///
/// New kinds of change may be added in minor releases: match with a `_` arm, and treat an
/// unknown change as [`Change::Other`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change {
    /// The holder released the key.
    Released,
    /// A candidate acquired the key.
    Acquired {
        /// Its candidate id.
        holder: String,
    },
    /// The holder renewed its lease: it runs for another full term from now.
    Renewed {
        /// Its candidate id.
        holder: String,
    },
    /// The lease expired (or the holder's session ended).
    Expired,
    /// Someone asked the holder to hand the key over ([`LeaseStore::request_handoff`]): to
    /// `to`, or (`None`) to anyone else. Followers ignore it; a leader that listens while it
    /// leads renews at once, and its renewal brings the request.
    HandoffRequested {
        /// The candidate asked for.
        to: Option<String>,
    },
    /// The holder handed the key over ([`Candidacy::hand_over`]): to `to`, or (`None`) to
    /// anyone but itself.
    HandedOver {
        /// The candidate the key is reserved for.
        to: Option<String>,
    },
    /// Something changed; read the store to learn what.
    Other,
}

/// A stream of [`Change`]s. It ends when the subscription breaks; the engine then falls back to
/// timers and subscribes again.
pub type Changes = Pin<Box<dyn Stream<Item = Change> + Send + 'static>>;

/// A [`Changes`] stream fed by a broadcast channel. A receiver that falls behind gets one
/// [`Change::Other`] for everything it missed: it only needs to know to look again.
pub(crate) fn broadcast_changes(rx: tokio::sync::broadcast::Receiver<Change>) -> Changes {
    use tokio::sync::broadcast::error::RecvError;
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        match rx.recv().await {
            Ok(change) => Some((change, rx)),
            Err(RecvError::Lagged(_)) => Some((Change::Other, rx)),
            Err(RecvError::Closed) => None,
        }
    }))
}

/// Static facts about a store.
///
/// Built with [`StoreInfo::new`] and [`StoreInfo::with_watch`]; new facts may be added in minor
/// releases.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreInfo {
    /// A short name: `"memory"`, `"sqlite"`, `"redis"`, ...
    pub name: &'static str,
    /// Where it is, with any password redacted.
    pub location: String,
    /// Whether [`Candidacy::watch`] / [`LeaseStore::watch`] push changes.
    pub can_watch: bool,
}

impl StoreInfo {
    /// A store called `name` at `location` (redact any password first), which does not push
    /// changes.
    pub fn new(name: &'static str, location: impl Into<String>) -> Self {
        StoreInfo {
            name,
            location: location.into(),
            can_watch: false,
        }
    }

    /// The same, with [`can_watch`](StoreInfo::can_watch) set to `can_watch`.
    #[must_use]
    pub fn with_watch(mut self, can_watch: bool) -> Self {
        self.can_watch = can_watch;
        self
    }
}

/// A backend that keeps leases. Object safe: the CLI picks one at run time as
/// `Arc<dyn LeaseStore>`.
#[async_trait]
pub trait LeaseStore: Send + Sync + fmt::Debug + 'static {
    /// Join the election at `key` as `candidate`. Cheap for single-record stores; queue- and
    /// session-shaped stores create the candidate's per-candidate state here.
    async fn join(&self, key: &str, candidate: &str) -> Result<Box<dyn Candidacy>>;

    /// The current record at `key`, or `None` if the key is free or expired.
    async fn read(&self, key: &str) -> Result<Option<LeaseRecord>>;

    /// Changes to `key`, for observers that are not candidates (`baton watch`). `None` when the
    /// store cannot push; observers then poll [`read`](LeaseStore::read).
    async fn watch(&self, key: &str) -> Result<Option<Changes>> {
        let _ = key;
        Ok(None)
    }

    /// Ask the holder of `key` to hand it over to `to` (or, `None`, to any other candidate),
    /// from any process: `baton handoff`. The request is kept beside the lease without touching
    /// its holder, token or expiry; the holder sees it on its next renewal
    /// ([`Renew::HandoffRequested`]) and hands over. A later request replaces it; a release, a
    /// handoff or the lease's end clears it.
    ///
    /// Returns the record of the holder the request was left for, or `None` (nothing written)
    /// when nobody holds the key. When `to` already holds it, nothing is written either.
    ///
    /// The default refuses with [`Error::Config`](crate::Error::Config): a store must keep the
    /// request to take one.
    async fn request_handoff(&self, key: &str, to: Option<&str>) -> Result<Option<LeaseRecord>> {
        let _ = (key, to);
        Err(crate::Error::Config(format!(
            "the {} store does not take handoff requests from other processes (yet); \
             call LeaderElection::hand_over in the leader instead",
            self.info().name
        )))
    }

    /// A planned handoff under way at `key`: a request the holder has not yet answered, or the
    /// mark of a handoff whose candidate has not yet taken the key. `None` when there is none,
    /// and by default: a store that keeps no handoff state has none to show.
    async fn pending_handoff(&self, key: &str) -> Result<Option<PendingHandoff>> {
        let _ = key;
        Ok(None)
    }

    /// Write (or refresh) `candidate`'s presence record at `key`: alive, with `priority`, for
    /// `ttl` by the store's clock. Returns every live candidate's record, this one's included.
    ///
    /// Presence is what lets Baton tell a live candidate from a name: `baton handoff --to ID`
    /// refuses an `ID` that has none, a leader does not hand over to a candidate without one,
    /// and priorities compare the records' priorities. A candidate writes its record every
    /// renew interval while its election runs (when presence is on:
    /// [`LeaderElectionBuilder::priority`](crate::LeaderElectionBuilder::priority),
    /// [`LeaderElectionBuilder::announce_presence`](crate::LeaderElectionBuilder::announce_presence))
    /// and removes it when it stops ([`withdraw`](LeaseStore::withdraw)).
    ///
    /// `None` (nothing written) by default: the store keeps no presence, and Baton then cannot
    /// tell whether a candidate is alive.
    async fn announce(
        &self,
        key: &str,
        candidate: &str,
        priority: u32,
        ttl: Duration,
    ) -> Result<Option<Vec<Presence>>> {
        let _ = (key, candidate, priority, ttl);
        Ok(None)
    }

    /// Every live candidate's presence record at `key` (see [`announce`](LeaseStore::announce)),
    /// or `None` when the store keeps no presence (the default). An empty list means the store
    /// keeps presence but no candidate announces itself at `key`.
    async fn candidates(&self, key: &str) -> Result<Option<Vec<Presence>>> {
        let _ = key;
        Ok(None)
    }

    /// Remove `candidate`'s presence record at `key`, if any (a stopping candidate). A no-op by
    /// default.
    async fn withdraw(&self, key: &str, candidate: &str) -> Result<()> {
        let _ = (key, candidate);
        Ok(())
    }

    /// Name, redacted location and capabilities.
    fn info(&self) -> StoreInfo;

    /// How long this store keeps a lease that an election asks for with `requested`
    /// (`lease_duration`) and that is not renewed: the TTL it actually grants.
    ///
    /// The default is `requested` itself, to the store's precision (milliseconds for SQLite
    /// and Redis, microseconds for the SQL servers). A store whose TTLs are coarser says so,
    /// and rounds up so that it never frees a lease before the holder's deadline: etcd's are
    /// whole seconds, rounded up, and at least etcd's minimum TTL. Crash failover takes this
    /// long (plus the store's own expiry sweep); tools that predict it (Baton's benchmarks and
    /// chaos harness) read it here rather than copy the rule.
    fn granted_ttl(&self, requested: Duration) -> Duration {
        requested
    }
}

#[async_trait]
impl<S: LeaseStore + ?Sized> LeaseStore for Arc<S> {
    async fn join(&self, key: &str, candidate: &str) -> Result<Box<dyn Candidacy>> {
        (**self).join(key, candidate).await
    }
    async fn read(&self, key: &str) -> Result<Option<LeaseRecord>> {
        (**self).read(key).await
    }
    async fn watch(&self, key: &str) -> Result<Option<Changes>> {
        (**self).watch(key).await
    }
    async fn request_handoff(&self, key: &str, to: Option<&str>) -> Result<Option<LeaseRecord>> {
        (**self).request_handoff(key, to).await
    }
    async fn pending_handoff(&self, key: &str) -> Result<Option<PendingHandoff>> {
        (**self).pending_handoff(key).await
    }
    async fn announce(
        &self,
        key: &str,
        candidate: &str,
        priority: u32,
        ttl: Duration,
    ) -> Result<Option<Vec<Presence>>> {
        (**self).announce(key, candidate, priority, ttl).await
    }
    async fn candidates(&self, key: &str) -> Result<Option<Vec<Presence>>> {
        (**self).candidates(key).await
    }
    async fn withdraw(&self, key: &str, candidate: &str) -> Result<()> {
        (**self).withdraw(key, candidate).await
    }
    fn info(&self) -> StoreInfo {
        (**self).info()
    }
    fn granted_ttl(&self, requested: Duration) -> Duration {
        (**self).granted_ttl(requested)
    }
}

/// One candidate's place in one election. The engine's only write path.
///
/// Each call is a single atomic operation on the backend. The engine wraps every call in a
/// timeout and treats a timeout as an indeterminate outcome; it cancels a call by dropping its
/// future, so a store whose work cannot be cancelled (a blocking driver) should skip work
/// whose caller has gone, rather than apply it late.
///
/// Further rules, which the conformance suite checks:
///
/// * The [`Lease`] passed to `renew` and `release` is one this candidacy acquired: its key is
///   the candidacy's key. The engine always renews with the TTL it acquired with.
/// * `try_acquire` on a key held by the same candidate id (another process with the same id,
///   or an acquire whose reply was lost) answers [`Acquire::Held`]: acquisition is never
///   re-entrant, and the engine waits that lease out.
/// * Releasing a lease that has expired but not been taken by anyone else may clear it.
/// * [`watch`](Candidacy::watch) may answer `None` even when [`StoreInfo::can_watch`] is true
///   (the subscription could not be set up); callers fall back to timers.
#[async_trait]
pub trait Candidacy: Send + Sync + fmt::Debug + 'static {
    /// If the key is free or expired, take it and mint a new fencing token in the same atomic
    /// step. Otherwise report the holder.
    async fn try_acquire(&mut self, ttl: Duration) -> Result<Acquire>;

    /// Extend `lease` by `ttl`, only while it still holds the key (same holder and token).
    async fn renew(&mut self, lease: &Lease, ttl: Duration) -> Result<Renew>;

    /// Give up `lease` if it still holds the key; a no-op otherwise. Never touches another
    /// holder's lease. Stores that can push notify followers.
    async fn release(&mut self, lease: &Lease) -> Result<()>;

    /// Give up `lease` as [`release`](Candidacy::release) does, leaving a [`HandoffMark`] for
    /// `window`: until it runs out, [`try_acquire`](Candidacy::try_acquire) by anyone the mark
    /// does not admit answers [`Acquire::Reserved`]. Stores that can push notify followers
    /// with [`Change::HandedOver`]. The token rules do not change: the next acquire mints a
    /// greater token.
    ///
    /// The default is a plain release: a store that cannot keep a mark hands over to whoever
    /// acquires first (the leaver included).
    async fn hand_over(&mut self, lease: &Lease, to: Option<&str>, window: Duration) -> Result<()> {
        let _ = (to, window);
        self.release(lease).await
    }

    /// Leave the election: remove this candidate's per-candidate state (queue entry, session).
    /// The engine calls it once, after the last release, when the election stops.
    async fn leave(&mut self) -> Result<()> {
        Ok(())
    }

    /// Subscribe to changes that concern this candidate (for queue-shaped stores: at least its
    /// predecessor). The engine subscribes *before* it tries to acquire, so no release is
    /// missed. `None` when the store cannot push.
    async fn watch(&mut self) -> Result<Option<Changes>> {
        Ok(None)
    }

    /// Whether the stream [`watch`](Candidacy::watch) returns is *complete*: while it is open,
    /// it reports every change that could let this candidate lead or that ends its wait, so a
    /// follower need not look at the store when the holder's lease would run out. That means:
    ///
    /// * every release **and every expiry** of the holder's lease, as [`Change::Released`] or
    ///   [`Change::Expired`] (or [`Change::Other`]), at least when this candidate is the next to
    ///   lead;
    /// * the loss of this candidate's own per-candidate state (its session, its queue entry);
    /// * a stream that can no longer promise this ends (or yields [`Change::Other`]).
    ///
    /// The engine then waits for the stream alone, with one look at the store every
    /// [`COMPLETE_WATCH_RECHECK_LEASES`](crate::COMPLETE_WATCH_RECHECK_LEASES) leases in case
    /// an event was lost all the same, instead of one at the end of every lease it read
    /// or heard of. Holder changes reported as [`Change::Acquired`] keep the follower's leader
    /// id current without a request.
    ///
    /// `false` by default: a store whose renewals and expiries are not pushed (a single record
    /// that nobody deletes when it expires) must let the engine look when the lease runs out.
    /// The etcd store answers `true`: etcd deletes a queue entry when it revokes the entry's
    /// expired lease, so the deletion a follower watches covers release and expiry alike.
    fn watch_is_complete(&self) -> bool {
        false
    }
}
