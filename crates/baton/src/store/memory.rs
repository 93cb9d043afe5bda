//! An in-process store, for tests and for electing among tasks of one process.
//!
//! Layout: one map from key to slot. A slot keeps the current lease (holder, token, expiry on
//! tokio's clock) and the last token minted, which survives release, so tokens strictly
//! increase for the life of the store. Expiry follows tokio's time, so tests that pause and
//! advance time drive it too. Every change is broadcast to watchers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::{
    Acquire, Candidacy, Change, Changes, Lease, LeaseRecord, LeaseStore, Renew, StoreInfo,
    broadcast_changes,
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
    /// Made by the first watcher and dropped at the first change nobody watches any more:
    /// tokio allocates every slot of a channel up front (about 600 bytes here), which would
    /// cost every key, watched or not.
    changes: Option<broadcast::Sender<Change>>,
}

#[derive(Debug, Clone)]
struct Held {
    holder: String,
    token: u64,
    expires: Instant,
}

impl Slot {
    fn new() -> Self {
        Slot {
            lease: None,
            last_token: 0,
            changes: None,
        }
    }

    /// A receiver of this key's changes from now on.
    fn watch(&mut self) -> broadcast::Receiver<Change> {
        // Small: a watcher that falls behind gets one `Change::Other` and looks again.
        self.changes
            .get_or_insert_with(|| broadcast::channel(8).0)
            .subscribe()
    }

    /// Tell the watchers of `change` (built only if someone watches); drop the channel once
    /// nobody watches.
    fn notify(&mut self, change: impl FnOnce() -> Change) {
        if let Some(tx) = &self.changes
            && tx.send(change()).is_err()
        {
            self.changes = None;
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
        broadcast_changes(self.with_slot(key, Slot::watch))
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
            slot.last_token += 1;
            slot.lease = Some(Held {
                holder: self.candidate.clone(),
                token: slot.last_token,
                expires: now + ttl,
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
                if let Some(h) = slot.lease.as_mut() {
                    h.expires = now + ttl;
                }
                slot.notify(|| Change::Renewed {
                    holder: lease.holder.clone(),
                });
                Renew::Renewed
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

    async fn watch(&mut self) -> Result<Option<Changes>> {
        Ok(Some(self.store.subscribe(&self.key)))
    }
}
