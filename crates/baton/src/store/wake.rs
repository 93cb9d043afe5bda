//! Routing a key's change messages to the candidates of one store instance, waking one per
//! release. Used by the Redis store (a route per connection and channel) and the SQL stores (a
//! route per store and key, fed by PostgreSQL's `LISTEN` connection or MySQL's poller).
//!
//! Every candidate of a store instance watches its key through the instance's one source of
//! changes. When the leader releases, that source reports the release once, and without care
//! every follower of the instance would answer it with an acquire, all but one of them in vain:
//! a thundering herd of C − 1 attempts for C candidates (999 per handoff at C = 1000 in
//! `scripts/bench`'s contention figure).
//!
//! So a release is *claimed*: the first candidate's stream to take the message yields
//! [`Change::Released`] and its candidate tries at once; the others hold the message back and
//! wait for what follows. Whoever wins is reported as [`Change::Acquired`], which the held-back
//! streams yield instead, and their candidates wait out the new lease without asking the
//! store. If nothing follows within [`WAKE_OTHERS_AFTER`] (the claimer was stopped, or its
//! acquire failed), they yield the `Released` after all and try themselves. A handoff then
//! costs one acquire attempt per store instance (per process, for `baton run`), not one per
//! candidate. See docs/decisions.md D38 and D41.
//!
//! Observers that are not candidates (`baton watch`, [`LeaseStore::watch`]) see every message
//! as it comes: they never acquire, so they never claim.
//!
//! [`LeaseStore::watch`]: crate::LeaseStore::watch

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

use crate::store::{Change, Changes};

/// How long the candidates that did not claim a release wait for the claimer's outcome before
/// they try themselves. The claimer's `acquired` message normally follows the release within a
/// round trip; this only delays a handoff whose claimer did not take the lease (it was stopped
/// at that moment, or its acquire failed), and is long enough that a busy machine does not
/// bring the herd back by delaying that message.
pub(crate) const WAKE_OTHERS_AFTER: Duration = Duration::from_millis(200);

/// One change message, numbered if it is a release.
#[derive(Debug, Clone)]
pub(crate) struct Push {
    pub change: Change,
    /// For [`Change::Released`], the number of this release on its route (from 1); 0 otherwise.
    pub release: u64,
}

/// The watchers of one key (or channel) on one store instance.
#[derive(Debug, Default)]
pub(crate) struct Route {
    /// The watchers' channel, made by the first subscription and dropped with the last: tokio
    /// allocates every slot of a channel up front (about 650 bytes here), which would cost
    /// every key a store has watched, for as long as the store lives, where most keys' watchers
    /// are gone (a candidate stops watching once it leads).
    tx: Mutex<Option<broadcast::Sender<Push>>>,
    /// Releases seen on this route.
    releases: AtomicU64,
    /// The highest release a candidate has claimed.
    claimed: AtomicU64,
}

/// Slots of a route's channel. Small: a watcher that falls behind loses nothing it needs (it
/// gets `Change::Other` and looks again).
const CAPACITY: usize = 8;

impl Route {
    fn tx(&self) -> std::sync::MutexGuard<'_, Option<broadcast::Sender<Push>>> {
        self.tx.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Pass a change to every watcher, numbering releases.
    pub fn send(&self, change: Change) {
        let release = if change == Change::Released {
            self.releases.fetch_add(1, Ordering::AcqRel) + 1
        } else {
            0
        };
        if let Some(tx) = self.tx().as_ref() {
            let _ = tx.send(Push { change, release });
        }
    }

    /// Every change as it comes, for observers.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub fn observer(self: &Arc<Self>) -> Changes {
        self.subscribe().observer(())
    }

    /// Whether anyone still listens.
    #[cfg_attr(not(any(feature = "postgres", feature = "mysql")), allow(dead_code))]
    pub fn is_watched(&self) -> bool {
        self.tx().is_some()
    }

    /// A subscription taken now, to become a stream later ([`Subscription::candidate`],
    /// [`Subscription::observer`]): nothing sent in between is lost.
    pub fn subscribe(self: &Arc<Self>) -> Subscription {
        let rx = self
            .tx()
            .get_or_insert_with(|| broadcast::channel(CAPACITY).0)
            .subscribe();
        Subscription {
            rx,
            _unwatch: Unwatch(Arc::clone(self)),
        }
    }

    /// Changes for a candidate: a release it did not claim is held back, as the module docs
    /// describe.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub fn candidate(self: &Arc<Self>) -> Changes {
        self.subscribe().candidate(())
    }
}

/// Drops its route's channel when the last receiver is gone. Declared after the receiver in
/// every struct and tuple that holds both, so the receiver is dropped first.
#[derive(Debug)]
struct Unwatch(Arc<Route>);

impl Drop for Unwatch {
    fn drop(&mut self) {
        let mut tx = self.0.tx();
        if tx.as_ref().is_some_and(|tx| tx.receiver_count() == 0) {
            *tx = None;
        }
    }
}

/// A subscription to a [`Route`], taken before it becomes a stream.
#[derive(Debug)]
pub(crate) struct Subscription {
    rx: broadcast::Receiver<Push>,
    /// After `rx`: dropped after it.
    _unwatch: Unwatch,
}

impl Subscription {
    /// Every change as it comes, for observers; `keep` lives as long as the stream.
    pub fn observer<K: Send + 'static>(self, keep: K) -> Changes {
        let keep = (self._unwatch, keep);
        Box::pin(futures_util::stream::unfold(
            (self.rx, keep),
            |(mut rx, keep)| async move {
                match rx.recv().await {
                    Ok(push) => Some((push.change, (rx, keep))),
                    Err(RecvError::Lagged(_)) => Some((Change::Other, (rx, keep))),
                    Err(RecvError::Closed) => None,
                }
            },
        ))
    }

    /// Changes for a candidate, a release it did not claim held back; `keep` lives as long as
    /// the stream.
    pub fn candidate<K: Send + 'static>(self, keep: K) -> Changes {
        // The route is kept by `Unwatch`, after the receiver.
        let state = (self.rx, self._unwatch, keep);
        Box::pin(futures_util::stream::unfold(
            state,
            |(mut rx, unwatch, keep)| async move {
                let route = &unwatch.0;
                let mut held_back: Option<tokio::time::Instant> = None;
                loop {
                    let next = match held_back {
                        None => rx.recv().await,
                        Some(until) => tokio::select! {
                            next = rx.recv() => next,
                            () = tokio::time::sleep_until(until) => {
                                return Some((Change::Released, (rx, unwatch, keep)));
                            }
                        },
                    };
                    match next {
                        Ok(Push {
                            change: Change::Released,
                            release,
                        }) => {
                            if route.claimed.fetch_max(release, Ordering::AcqRel) < release {
                                return Some((Change::Released, (rx, unwatch, keep)));
                            }
                            held_back.get_or_insert_with(|| {
                                tokio::time::Instant::now() + WAKE_OTHERS_AFTER
                            });
                        }
                        Ok(push) => return Some((push.change, (rx, unwatch, keep))),
                        Err(RecvError::Lagged(_)) => {
                            return Some((Change::Other, (rx, unwatch, keep)));
                        }
                        Err(RecvError::Closed) => return None,
                    }
                }
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn acquired(holder: &str) -> Change {
        Change::Acquired {
            holder: holder.into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_candidate_claims_a_release_and_the_others_see_who_won() {
        let route = Arc::new(Route::default());
        let mut first = route.candidate();
        let mut second = route.candidate();
        let mut observer = route.observer();
        route.send(Change::Released);
        assert_eq!(first.next().await, Some(Change::Released));
        route.send(acquired("first"));
        assert_eq!(second.next().await, Some(acquired("first")));
        assert_eq!(observer.next().await, Some(Change::Released));
        assert_eq!(observer.next().await, Some(acquired("first")));
        assert_eq!(first.next().await, Some(acquired("first")));
    }

    #[tokio::test(start_paused = true)]
    async fn the_others_try_after_a_while_if_the_claimer_takes_nothing() {
        let route = Arc::new(Route::default());
        let mut first = route.candidate();
        let mut second = route.candidate();
        let mut third = route.candidate();
        route.send(Change::Released);
        assert_eq!(first.next().await, Some(Change::Released));
        let start = tokio::time::Instant::now();
        assert_eq!(second.next().await, Some(Change::Released));
        assert_eq!(start.elapsed(), WAKE_OTHERS_AFTER);
        assert_eq!(third.next().await, Some(Change::Released));
    }

    #[tokio::test(start_paused = true)]
    async fn each_release_is_claimed_once() {
        let route = Arc::new(Route::default());
        let mut a = route.candidate();
        let mut b = route.candidate();
        route.send(Change::Released);
        assert_eq!(a.next().await, Some(Change::Released));
        route.send(acquired("a"));
        assert_eq!(b.next().await, Some(acquired("a")));
        // The next release goes to whichever asks first: here b.
        route.send(Change::Released);
        assert_eq!(b.next().await, Some(Change::Released));
        route.send(acquired("b"));
        assert_eq!(a.next().await, Some(acquired("a")));
        assert_eq!(a.next().await, Some(acquired("b")));
    }

    #[tokio::test(start_paused = true)]
    async fn other_changes_pass_unclaimed() {
        let route = Arc::new(Route::default());
        let mut a = route.candidate();
        let mut b = route.candidate();
        route.send(Change::Other);
        route.send(Change::Renewed { holder: "x".into() });
        for s in [&mut a, &mut b] {
            assert_eq!(s.next().await, Some(Change::Other));
            assert_eq!(s.next().await, Some(Change::Renewed { holder: "x".into() }));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_channel_lives_only_while_someone_watches() {
        let route = Arc::new(Route::default());
        assert!(!route.is_watched());
        route.send(Change::Other); // nobody hears it, nothing is kept
        let a = route.candidate();
        let b = route.observer();
        assert!(route.is_watched());
        drop(a);
        assert!(route.is_watched());
        drop(b);
        assert!(!route.is_watched());
        // A subscription taken and never made a stream lets go too.
        drop(route.subscribe());
        assert!(!route.is_watched());
        // A new watcher gets a new channel and hears what follows, releases still numbered.
        let mut c = route.candidate();
        route.send(Change::Released);
        assert_eq!(c.next().await, Some(Change::Released));
    }
}
