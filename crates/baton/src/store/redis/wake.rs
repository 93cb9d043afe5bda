//! Routing a key's change messages to the candidates of one store, waking one per release.
//!
//! Every candidate of a store watches its key's channel through the store's one connection.
//! When the leader releases, Redis sends the `released` message once per connection, and
//! without care every follower on the connection would answer it with an acquire script, all
//! but one of them in vain: a thundering herd of C − 1 attempts for C candidates (999 per
//! handoff at C = 1000 in `scripts/bench`'s contention figure).
//!
//! So a release is *claimed*: the first candidate's stream to take the message yields
//! [`Change::Released`] and its candidate tries at once; the others hold the message back and
//! wait for what follows. Whoever wins publishes `acquired:<holder>`, which the held-back
//! streams yield instead, and their candidates wait out the new lease without asking Redis. If
//! nothing follows within [`WAKE_OTHERS_AFTER`] (the claimer was stopped, or its acquire
//! failed), they yield the `Released` after all and try themselves. A handoff then costs one
//! acquire attempt per connection (per process, for `baton run`), not one per candidate. See
//! docs/decisions.md D38.
//!
//! Observers that are not candidates (`baton watch`, [`LeaseStore::watch`]) see every message
//! as it comes: they never acquire.
//!
//! [`LeaseStore::watch`]: crate::LeaseStore::watch

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

use crate::store::{Change, Changes};

/// How long the candidates that did not claim a release wait for the claimer's outcome before
/// they try themselves. The claimer's `acquired` message normally follows the release within a
/// round trip; this only delays a handoff whose claimer did not take the lease (it was stopped
/// at that moment, or its acquire failed), and is long enough that a busy machine does not
/// bring the herd back by delaying that message.
pub(super) const WAKE_OTHERS_AFTER: Duration = Duration::from_millis(200);

/// One change message, numbered if it is a release.
#[derive(Debug, Clone)]
pub(super) struct Push {
    pub change: Change,
    /// For [`Change::Released`], the number of this release on its route (from 1); 0 otherwise.
    pub release: u64,
}

/// The watchers of one channel on one store.
#[derive(Debug)]
pub(super) struct Route {
    tx: broadcast::Sender<Push>,
    /// Releases seen on this route.
    releases: AtomicU64,
    /// The highest release a candidate has claimed.
    claimed: AtomicU64,
}

impl Default for Route {
    fn default() -> Self {
        Route {
            tx: broadcast::channel(64).0,
            releases: AtomicU64::new(0),
            claimed: AtomicU64::new(0),
        }
    }
}

impl Route {
    /// Pass a change to every watcher, numbering releases.
    pub fn send(&self, change: Change) {
        let release = if change == Change::Released {
            self.releases.fetch_add(1, Ordering::AcqRel) + 1
        } else {
            0
        };
        let _ = self.tx.send(Push { change, release });
    }

    /// Every change as it comes, for observers.
    pub fn observer(&self) -> Changes {
        Box::pin(futures_util::stream::unfold(
            self.tx.subscribe(),
            |mut rx| async move {
                match rx.recv().await {
                    Ok(push) => Some((push.change, rx)),
                    Err(RecvError::Lagged(_)) => Some((Change::Other, rx)),
                    Err(RecvError::Closed) => None,
                }
            },
        ))
    }

    /// Changes for a candidate: a release it did not claim is held back, as the module docs
    /// describe.
    pub fn candidate(self: &Arc<Self>) -> Changes {
        let state = (self.tx.subscribe(), self.clone());
        Box::pin(futures_util::stream::unfold(
            state,
            |(mut rx, route)| async move {
                let mut held_back: Option<tokio::time::Instant> = None;
                loop {
                    let next = match held_back {
                        None => rx.recv().await,
                        Some(until) => tokio::select! {
                            next = rx.recv() => next,
                            () = tokio::time::sleep_until(until) => {
                                return Some((Change::Released, (rx, route)));
                            }
                        },
                    };
                    match next {
                        Ok(Push {
                            change: Change::Released,
                            release,
                        }) => {
                            if route.claimed.fetch_max(release, Ordering::AcqRel) < release {
                                return Some((Change::Released, (rx, route)));
                            }
                            held_back.get_or_insert_with(|| {
                                tokio::time::Instant::now() + WAKE_OTHERS_AFTER
                            });
                        }
                        Ok(push) => return Some((push.change, (rx, route))),
                        Err(RecvError::Lagged(_)) => return Some((Change::Other, (rx, route))),
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
}
