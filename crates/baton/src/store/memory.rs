//! An in-process store, for tests and for electing among tasks of one process.
//!
//! Layout: one map from key to slot. A slot keeps the current lease (holder, token, expiry on
//! tokio's clock) and the last token minted, which survives release, so tokens strictly
//! increase for the life of the store, the mark of a planned handoff while it is live, and the
//! presence records of the candidates that announce themselves ([`LeaseStore::announce`]).
//! Expiry follows tokio's time, so tests that pause and advance time drive it too. Every
//! change is broadcast to watchers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::{
    Acquire, Candidacy, Change, Changes, HandoffMark, Lease, LeaseRecord, LeaseStore,
    PendingHandoff, Presence, Renew, StoreInfo, broadcast_changes,
};
use crate::{FencingToken, Result};

/// An in-process [`LeaseStore`]. Clones share the same leases.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    slots: Arc<Mutex<HashMap<String, Slot>>>,
}

#[derive(Debug)]
struct Slot {
    lease: Option<Held>,
    last_token: u64,
    /// A planned handoff's mark (boxed: rare, and every key would pay for it).
    mark: Option<Box<Mark>>,
    /// Presence records ([`LeaseStore::announce`]): candidate, priority, expiry. Empty (no
    /// allocation) unless candidates announce themselves.
    presence: Vec<(String, u32, Instant)>,
    /// Made by the first watcher and dropped with the last one ([`Unwatch`]):
    /// tokio allocates every slot of a channel up front (about 600 bytes here), which would
    /// cost every key, watched or not.
    changes: Option<broadcast::Sender<Change>>,
}

#[derive(Debug)]
struct Mark {
    to: Option<String>,
    from: String,
    until: Instant,
}

#[derive(Debug, Clone)]
struct Held {
    holder: String,
    token: u64,
    expires: Instant,
    /// A handoff asked for by another process ([`LeaseStore::request_handoff`]): to whom
    /// (`None`: anyone else). Goes with the lease.
    request: Option<Box<Option<String>>>,
}

impl Slot {
    fn new() -> Self {
        Slot {
            lease: None,
            last_token: 0,
            mark: None,
            presence: Vec::new(),
            changes: None,
        }
    }

    /// The live presence records, dropping those that ran out.
    fn present(&mut self, now: Instant) -> Vec<Presence> {
        self.presence.retain(|(_, _, until)| *until > now);
        self.presence
            .iter()
            .map(|(c, p, until)| Presence::new(c.clone(), *p, *until - now))
            .collect()
    }

    /// A receiver of this key's changes from now on.
    fn watch(&mut self) -> broadcast::Receiver<Change> {
        // Small: a watcher that falls behind gets one `Change::Other` and looks again.
        self.changes
            .get_or_insert_with(|| broadcast::channel(8).0)
            .subscribe()
    }

    /// Tell the watchers of `change` (built only if someone watches).
    fn notify(&mut self, change: impl FnOnce() -> Change) {
        if let Some(tx) = &self.changes {
            let _ = tx.send(change());
        }
    }

    /// The live lease, dropping it if it has expired.
    fn live(&mut self, now: Instant) -> Option<&Held> {
        if self.lease.as_ref().is_some_and(|h| h.expires <= now) {
            self.lease = None;
        }
        self.lease.as_ref()
    }

    fn record(&mut self, now: Instant) -> Option<LeaseRecord> {
        self.live(now).map(|h| LeaseRecord {
            holder: h.holder.clone(),
            token: FencingToken(h.token),
            ttl: h.expires - now,
        })
    }

    /// The live handoff mark, if it does not admit `candidate`.
    fn reserved(&mut self, candidate: &str, now: Instant) -> Option<HandoffMark> {
        if self.mark.as_ref().is_some_and(|m| m.until <= now) {
            self.mark = None;
        }
        let m = self.mark.as_ref()?;
        let mark = HandoffMark::new(m.to.clone(), m.from.clone(), m.until - now);
        (!mark.admits(candidate)).then_some(mark)
    }

    fn owns(&mut self, lease: &Lease, now: Instant) -> bool {
        self.live(now)
            .is_some_and(|h| h.holder == lease.holder && h.token == lease.token.0)
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn with_slot<T>(&self, key: &str, f: impl FnOnce(&mut Slot) -> T) -> T {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        f(slots.entry(key.to_owned()).or_insert_with(Slot::new))
    }

    fn subscribe(&self, key: &str) -> Changes {
        Box::pin(Watched {
            changes: broadcast_changes(self.with_slot(key, Slot::watch)),
            _unwatch: Unwatch {
                store: self.clone(),
                key: key.to_owned(),
            },
        })
    }
}

/// A watcher's stream of one key's changes.
struct Watched {
    changes: Changes,
    /// After `changes`, so it is dropped after the receiver in it.
    _unwatch: Unwatch,
}

impl futures_util::Stream for Watched {
    type Item = Change;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Change>> {
        self.changes.as_mut().poll_next(cx)
    }
}

/// Drops a key's change channel when its last receiver is gone.
struct Unwatch {
    store: MemoryStore,
    key: String,
}

impl Drop for Unwatch {
    fn drop(&mut self) {
        let mut slots = self.store.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = slots.get_mut(&self.key)
            && slot
                .changes
                .as_ref()
                .is_some_and(|tx| tx.receiver_count() == 0)
        {
            slot.changes = None;
        }
    }
}

#[async_trait]
impl LeaseStore for MemoryStore {
    async fn join(&self, key: &str, candidate: &str) -> Result<Box<dyn Candidacy>> {
        Ok(Box::new(MemoryCandidacy {
            store: self.clone(),
            key: key.to_owned(),
            candidate: candidate.to_owned(),
        }))
    }

    async fn read(&self, key: &str) -> Result<Option<LeaseRecord>> {
        // Reading a key never creates a slot, so status queries on arbitrary keys cost nothing.
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        Ok(slots.get_mut(key).and_then(|s| s.record(Instant::now())))
    }

    async fn watch(&self, key: &str) -> Result<Option<Changes>> {
        Ok(Some(self.subscribe(key)))
    }

    async fn request_handoff(&self, key: &str, to: Option<&str>) -> Result<Option<LeaseRecord>> {
        let now = Instant::now();
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let Some(slot) = slots.get_mut(key) else {
            return Ok(None);
        };
        let record = slot.record(now);
        if let (Some(held), Some(record)) = (slot.lease.as_mut(), &record)
            && to != Some(record.holder.as_str())
        {
            held.request = Some(Box::new(to.map(str::to_owned)));
            slot.notify(|| Change::HandoffRequested {
                to: to.map(str::to_owned),
            });
        }
        Ok(record)
    }

    async fn pending_handoff(&self, key: &str) -> Result<Option<PendingHandoff>> {
        let now = Instant::now();
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let Some(slot) = slots.get_mut(key) else {
            return Ok(None);
        };
        if let Some(held) = slot.live(now) {
            return Ok(held.request.as_deref().map(|to| PendingHandoff::Requested {
                holder: held.holder.clone(),
                to: to.clone(),
            }));
        }
        if slot.mark.as_ref().is_some_and(|m| m.until <= now) {
            slot.mark = None;
        }
        Ok(slot.mark.as_ref().map(|m| {
            PendingHandoff::Reserved(HandoffMark::new(
                m.to.clone(),
                m.from.clone(),
                m.until - now,
            ))
        }))
    }

    async fn announce(
        &self,
        key: &str,
        candidate: &str,
        priority: u32,
        ttl: Duration,
    ) -> Result<Option<Vec<Presence>>> {
        let now = Instant::now();
        Ok(Some(self.with_slot(key, |slot| {
            match slot.presence.iter_mut().find(|(c, _, _)| c == candidate) {
                Some(record) => *record = (candidate.to_owned(), priority, now + ttl),
                None => slot
                    .presence
                    .push((candidate.to_owned(), priority, now + ttl)),
            }
            slot.present(now)
        })))
    }

    async fn candidates(&self, key: &str) -> Result<Option<Vec<Presence>>> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        Ok(Some(
            slots
                .get_mut(key)
                .map(|s| s.present(Instant::now()))
                .unwrap_or_default(),
        ))
    }

    async fn withdraw(&self, key: &str, candidate: &str) -> Result<()> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = slots.get_mut(key) {
            slot.presence.retain(|(c, _, _)| c != candidate);
        }
        Ok(())
    }

    fn info(&self) -> StoreInfo {
        StoreInfo {
            name: "memory",
            location: "memory:".to_owned(),
            can_watch: true,
        }
    }
}

/// A candidate in a [`MemoryStore`] election.
#[derive(Debug)]
struct MemoryCandidacy {
    store: MemoryStore,
    key: String,
    candidate: String,
}

#[async_trait]
impl Candidacy for MemoryCandidacy {
    async fn try_acquire(&mut self, ttl: Duration) -> Result<Acquire> {
        let now = Instant::now();
        Ok(self.store.with_slot(&self.key, |slot| {
            if let Some(record) = slot.record(now) {
                return Acquire::Held(record);
            }
            if let Some(mark) = slot.reserved(&self.candidate, now) {
                return Acquire::Reserved(mark);
            }
            slot.mark = None;
            slot.last_token += 1;
            slot.lease = Some(Held {
                holder: self.candidate.clone(),
                token: slot.last_token,
                expires: now + ttl,
                request: None,
            });
            slot.notify(|| Change::Acquired {
                holder: self.candidate.clone(),
            });
            Acquire::Acquired(Lease {
                key: self.key.clone(),
                holder: self.candidate.clone(),
                token: FencingToken(slot.last_token),
                act_after: Duration::ZERO,
            })
        }))
    }

    async fn renew(&mut self, lease: &Lease, ttl: Duration) -> Result<Renew> {
        let now = Instant::now();
        Ok(self.store.with_slot(&lease.key, |slot| {
            if slot.owns(lease, now) {
                let mut request = None;
                if let Some(h) = slot.lease.as_mut() {
                    h.expires = now + ttl;
                    request = h.request.as_deref().cloned();
                }
                slot.notify(|| Change::Renewed {
                    holder: lease.holder.clone(),
                });
                match request {
                    Some(to) => Renew::HandoffRequested { to },
                    None => Renew::Renewed,
                }
            } else {
                Renew::Lost(slot.record(now))
            }
        }))
    }

    async fn release(&mut self, lease: &Lease) -> Result<()> {
        let now = Instant::now();
        self.store.with_slot(&lease.key, |slot| {
            if slot.owns(lease, now) {
                slot.lease = None;
                slot.notify(|| Change::Released);
            }
        });
        Ok(())
    }

    async fn hand_over(&mut self, lease: &Lease, to: Option<&str>, window: Duration) -> Result<()> {
        let now = Instant::now();
        self.store.with_slot(&lease.key, |slot| {
            if slot.owns(lease, now) {
                slot.lease = None;
                slot.mark = Some(Box::new(Mark {
                    to: to.map(str::to_owned),
                    from: lease.holder.clone(),
                    until: now + window,
                }));
                slot.notify(|| Change::HandedOver {
                    to: to.map(str::to_owned),
                });
            }
        });
        Ok(())
    }

    async fn watch(&mut self) -> Result<Option<Changes>> {
        Ok(Some(self.store.subscribe(&self.key)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn has_channel(store: &MemoryStore, key: &str) -> bool {
        let slots = store.slots.lock().unwrap();
        slots.get(key).is_some_and(|s| s.changes.is_some())
    }

    #[tokio::test]
    async fn a_keys_change_channel_lives_only_while_someone_watches() {
        let store = MemoryStore::new();
        let mut a = store.join("k", "a").await.unwrap();
        let mut b = store.join("k", "b").await.unwrap();
        assert!(!has_channel(&store, "k"));
        let mut watching = b.watch().await.unwrap().unwrap();
        let observer = store.watch("k").await.unwrap().unwrap();
        assert!(has_channel(&store, "k"));
        let Acquire::Acquired(lease) = a.try_acquire(Duration::from_secs(10)).await.unwrap() else {
            panic!("a free key is acquired");
        };
        assert_eq!(
            watching.next().await,
            Some(Change::Acquired { holder: "a".into() })
        );
        drop(watching);
        assert!(has_channel(&store, "k"), "the observer still watches");
        drop(observer);
        assert!(!has_channel(&store, "k"));
        // Changes nobody watches cost nothing; a new watcher hears what follows.
        assert!(matches!(
            a.renew(&lease, Duration::from_secs(10)).await.unwrap(),
            Renew::Renewed
        ));
        let mut again = b.watch().await.unwrap().unwrap();
        a.release(&lease).await.unwrap();
        assert_eq!(again.next().await, Some(Change::Released));
    }
}
