//! Presence records (`docs/decisions.md`, D134; see the module docs of the store, *Presence
//! records*): one key per candidate under the election's handoff prefix, each on a lease of its
//! own that etcd ends by its own clock.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use super::client;
use super::handoff::{escape, field, foreign, handoff_prefix, parse};
use super::pb::etcdserverpb::TxnRequest;
use super::pb::mvccpb::KeyValue;
use super::{EtcdStore, STORE, lease_not_found, lease_ttl_secs, time_left, txn_ranges};
use crate::store::Presence;
use crate::{Error, Result};

/// The first word of a presence record's value.
const TAG: &str = "baton-presence";

/// The prefix of election `key`'s presence records: `baton-handoff:<key escaped>:candidate:`.
pub(super) fn candidates_prefix(key: &str) -> String {
    format!("{}candidate:", handoff_prefix(key))
}

/// The key of `candidate`'s presence record at election `key`:
/// `baton-handoff:<key escaped>:candidate:<candidate escaped>` (no `/`, so under no election's
/// prefix).
pub(super) fn candidate_key(key: &str, candidate: &str) -> String {
    format!("{}{}", candidates_prefix(key), escape(candidate))
}

/// A presence record as written: `baton-presence <priority> <TTL in s> <candidate>`, each field
/// `<length>:<text>`, on the lease whose TTL it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Record {
    pub candidate: String,
    pub priority: u32,
    /// The TTL etcd granted the record's lease: at most the time it has left.
    pub ttl_secs: i64,
}

impl Record {
    /// The value written at the record's key.
    pub fn encode(&self) -> String {
        format!(
            "{TAG} {} {} {}",
            field(Some(&self.priority.to_string())),
            field(Some(&self.ttl_secs.to_string())),
            field(Some(&self.candidate))
        )
    }

    /// The record at `kv` (under election `key`'s [`candidates_prefix`]), or
    /// [`Error::ForeignData`] when Baton did not write it: every record is attached to a
    /// lease, has this shape, and sits at its candidate's key.
    pub fn read(key: &str, kv: &KeyValue) -> Result<Record> {
        let parsed = (kv.lease != 0)
            .then(|| parse(&kv.value, TAG))
            .flatten()
            .and_then(|fields| match fields.as_slice() {
                [Some(priority), Some(ttl), Some(candidate)] => Some(Record {
                    candidate: candidate.clone(),
                    priority: digits(priority)?.parse().ok()?,
                    ttl_secs: digits(ttl)?.parse().ok().filter(|t| *t > 0)?,
                }),
                _ => None,
            })
            .filter(|r| kv.key == candidate_key(key, &r.candidate).as_bytes());
        parsed.ok_or_else(|| foreign(key, kv, "candidates' presence records"))
    }
}

/// `text` if it is digits only (Rust's parsers also take a leading `+`).
fn digits(text: &str) -> Option<&str> {
    text.bytes().all(|b| b.is_ascii_digit()).then_some(text)
}

/// The lease a store keeps one candidate's record at one election on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    id: i64,
    /// The TTL asked for, in whole seconds (etcd may have granted more).
    ttl_secs: i64,
}

/// The leases of the records a store announces, per (election, candidate): granted by the
/// first `announce`, kept alive by each next one, revoked by `withdraw`.
#[derive(Debug, Default)]
pub(super) struct Leases {
    held: Mutex<HashMap<(String, String), Held>>,
}

impl Leases {
    fn lock(&self) -> MutexGuard<'_, HashMap<(String, String), Held>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn get(&self, key: &str, candidate: &str) -> Option<Held> {
        self.lock()
            .get(&(key.to_owned(), candidate.to_owned()))
            .copied()
    }

    /// Keep `held` for (key, candidate); the lease it replaces, if any.
    fn set(&self, key: &str, candidate: &str, held: Held) -> Option<Held> {
        self.lock()
            .insert((key.to_owned(), candidate.to_owned()), held)
    }

    fn take(&self, key: &str, candidate: &str) -> Option<Held> {
        self.lock().remove(&(key.to_owned(), candidate.to_owned()))
    }

    /// Forget lease `id` for (key, candidate), if it is still the one kept (it is gone).
    fn forget(&self, key: &str, candidate: &str, id: i64) {
        let mut held = self.lock();
        let slot = (key.to_owned(), candidate.to_owned());
        if held.get(&slot).is_some_and(|h| h.id == id) {
            held.remove(&slot);
        }
    }
}

/// A record read back: the record and its lease.
struct Found {
    record: Record,
    lease: i64,
}

/// The records among `kvs` (a read of election `key`'s [`candidates_prefix`]).
fn records(key: &str, kvs: &[KeyValue]) -> Result<Vec<Found>> {
    kvs.iter()
        .map(|kv| {
            Ok(Found {
                record: Record::read(key, kv)?,
                lease: kv.lease,
            })
        })
        .collect()
}

fn check_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::Config("the etcd election name is empty".into()));
    }
    Ok(())
}

impl EtcdStore {
    /// A live lease of `ttl_secs` for `candidate`'s record at `key`, just kept alive (or just
    /// granted), with the TTL etcd gives it and the lease it replaces (to revoke once the
    /// record has moved off it).
    async fn presence_lease(
        &self,
        key: &str,
        candidate: &str,
        ttl_secs: i64,
    ) -> Result<(i64, i64, Option<i64>)> {
        let client = self.client().await?;
        let old = self.inner.presence.get(key, candidate);
        if let Some(held) = old.filter(|h| h.ttl_secs == ttl_secs) {
            match client.lease_keep_alive(held.id).await {
                Ok(resp) if resp.ttl > 0 => return Ok((held.id, resp.ttl, None)),
                Ok(_) => {}
                Err(e) if lease_not_found(&e) => {}
                Err(e) => {
                    return Err(self.error(e, "keeping a presence record's lease alive", true));
                }
            }
        }
        let resp = client
            .lease_grant(ttl_secs)
            .await
            .map_err(|e| self.error(e, "granting a presence record's lease", true))?;
        let held = Held {
            id: resp.id,
            ttl_secs,
        };
        let replaced = self.inner.presence.set(key, candidate, held);
        Ok((resp.id, resp.ttl.max(ttl_secs), replaced.map(|h| h.id)))
    }

    /// [`LeaseStore::announce`](crate::LeaseStore::announce): keep the record's lease alive,
    /// then one transaction that reads every record when this one is already as it should be
    /// (no write), or else writes it (on the record's key being as read) and reads them all.
    pub(super) async fn announce_presence(
        &self,
        key: &str,
        candidate: &str,
        priority: u32,
        ttl: Duration,
    ) -> Result<Vec<Presence>> {
        check_key(key)?;
        let own_key = candidate_key(key, candidate);
        let all = client::get_prefix_by_age(&candidates_prefix(key));
        for _ in 0..5 {
            let (lease, granted, replaced) = self
                .presence_lease(key, candidate, lease_ttl_secs(ttl))
                .await?;
            let value = Record {
                candidate: candidate.to_owned(),
                priority,
                ttl_secs: granted,
            }
            .encode();
            let client = self.client().await?;
            let check = TxnRequest {
                compare: vec![
                    client::lease_is(&own_key, lease),
                    client::value_is(&own_key, &value),
                ],
                success: vec![client::range_op(all.clone())],
                failure: vec![client::range_op(client::get(&own_key))],
            };
            let resp = client
                .txn(check)
                .await
                .map_err(|e| self.error(e, "reading the presence records", false))?;
            let steady = resp.succeeded;
            let found = txn_ranges(resp).next().unwrap_or_default();
            if steady {
                return self.as_announced(key, candidate, granted, &found);
            }
            let guard = match found.first() {
                Some(kv) => {
                    // Baton's record of this candidate (another lease, priority or TTL, or
                    // another process with the same id): replaced. Anything else: refused.
                    Record::read(key, kv)?;
                    client::mod_revision_is(&own_key, kv.mod_revision)
                }
                None => client::create_revision_is(&own_key, 0),
            };
            let write = TxnRequest {
                compare: vec![guard],
                success: vec![
                    client::put_op(&own_key, &value, lease),
                    client::range_op(all.clone()),
                ],
                failure: Vec::new(),
            };
            match client.txn(write).await {
                Ok(resp) if resp.succeeded => {
                    if let Some(old) = replaced.filter(|old| *old != lease) {
                        self.revoke_later(old);
                    }
                    let found = txn_ranges(resp).nth(1).unwrap_or_default();
                    return self.as_announced(key, candidate, granted, &found);
                }
                // The record changed between the read and the write: look again.
                Ok(_) => {}
                // The lease ended between its keepalive and the write.
                Err(e) if lease_not_found(&e) => self.inner.presence.forget(key, candidate, lease),
                Err(e) => return Err(self.error(e, "writing a presence record", true)),
            }
        }
        Err(Error::Unavailable {
            store: STORE,
            message: format!(
                "the presence record of {candidate:?} at the election {key:?} at {} kept \
                 changing while it was written",
                self.inner.location
            ),
            source: None,
        })
    }

    /// The records an announce read: the own one's time left is the TTL its keepalive just
    /// gave it; another's is at most its lease's TTL, which its value names (asking etcd for
    /// each lease's time left would cost a request per candidate on every announce).
    fn as_announced(
        &self,
        key: &str,
        candidate: &str,
        granted: i64,
        found: &[KeyValue],
    ) -> Result<Vec<Presence>> {
        Ok(records(key, found)?
            .into_iter()
            .map(|f| {
                let secs = if f.record.candidate == candidate {
                    granted
                } else {
                    f.record.ttl_secs
                };
                Presence::new(
                    f.record.candidate,
                    f.record.priority,
                    Duration::from_secs(secs.max(1).unsigned_abs()),
                )
            })
            .collect())
    }

    /// [`LeaseStore::candidates`](crate::LeaseStore::candidates): one read of the records, then
    /// each record's lease's time left, asked of etcd (all at once).
    pub(super) async fn presence_records(&self, key: &str) -> Result<Vec<Presence>> {
        check_key(key)?;
        let client = self.client().await?;
        let resp = client
            .txn(TxnRequest {
                compare: Vec::new(),
                success: vec![client::range_op(client::get_prefix_by_age(
                    &candidates_prefix(key),
                ))],
                failure: Vec::new(),
            })
            .await
            .map_err(|e| self.error(e, "reading the presence records", false))?;
        let found = records(key, &txn_ranges(resp).next().unwrap_or_default())?;
        let left = futures_util::future::join_all(
            found
                .iter()
                .map(|f| async { client.lease_time_to_live(f.lease).await }),
        )
        .await;
        let mut live = Vec::with_capacity(found.len());
        for (f, left) in found.into_iter().zip(left) {
            match left {
                Ok(resp) if resp.ttl >= 0 => live.push(Presence::new(
                    f.record.candidate,
                    f.record.priority,
                    time_left(resp.ttl, resp.granted_ttl),
                )),
                // Its lease just ran out: etcd is deleting the record.
                Ok(_) => {}
                Err(e) if lease_not_found(&e) => {}
                Err(e) => {
                    return Err(self.error(e, "reading a presence record's lease", false));
                }
            }
        }
        Ok(live)
    }

    /// [`LeaseStore::withdraw`](crate::LeaseStore::withdraw): revoke the record's lease, which
    /// deletes the record in the same write; a store that did not announce it deletes Baton's
    /// record (on its key being as read) and refuses anything else.
    pub(super) async fn withdraw_presence(&self, key: &str, candidate: &str) -> Result<()> {
        check_key(key)?;
        if let Some(held) = self.inner.presence.take(key, candidate) {
            if let Err(e) = self.revoke(held.id).await {
                // Keep it: the next announce keeps it alive, the next withdraw revokes it.
                self.inner.presence.set(key, candidate, held);
                return Err(e);
            }
            return Ok(());
        }
        let own_key = candidate_key(key, candidate);
        let client = self.client().await?;
        let resp = client
            .txn(TxnRequest {
                compare: Vec::new(),
                success: vec![client::range_op(client::get(&own_key))],
                failure: Vec::new(),
            })
            .await
            .map_err(|e| self.error(e, "reading a presence record", false))?;
        let Some(kv) = txn_ranges(resp)
            .next()
            .unwrap_or_default()
            .into_iter()
            .next()
        else {
            return Ok(());
        };
        Record::read(key, &kv)?;
        // If the record changed meanwhile, someone announced it again: it stays.
        client
            .txn(TxnRequest {
                compare: vec![client::mod_revision_is(&own_key, kv.mod_revision)],
                success: vec![client::delete_op(&own_key)],
                failure: Vec::new(),
            })
            .await
            .map_err(|e| self.error(e, "deleting a presence record", true))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str, lease: i64) -> KeyValue {
        KeyValue {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            lease,
            ..KeyValue::default()
        }
    }

    #[test]
    fn presence_keys_are_under_the_handoff_prefix_and_no_elections() {
        for (name, candidate) in [("e", "alice"), ("a/b", "x/y"), ("a", "b:c"), ("e", "")] {
            let key = candidate_key(name, candidate);
            assert!(!key.contains('/'), "{key}");
            assert!(key.starts_with(&handoff_prefix(name)), "{key}");
            assert!(key.starts_with(&candidates_prefix(name)), "{key}");
        }
        assert_eq!(
            candidate_key("services/api", "web-1"),
            "baton-handoff:services%2Fapi:candidate:web-1"
        );
        // Distinct candidates, distinct keys; no candidate's key is another's prefix's.
        assert_ne!(candidate_key("e", "a:b"), candidate_key("e", "a%3Ab"));
        assert!(!candidate_key("e", "x").starts_with(&format!("{}mark", handoff_prefix("e"))));
    }

    #[test]
    fn records_read_back_and_anything_else_is_foreign() {
        for record in [
            Record {
                candidate: "alice".into(),
                priority: 0,
                ttl_secs: 30,
            },
            Record {
                candidate: "a b:1 - 2:x/ü".into(),
                priority: u32::MAX,
                ttl_secs: 2,
            },
        ] {
            let at = candidate_key("e", &record.candidate);
            assert_eq!(
                Record::read("e", &kv(&at, &record.encode(), 7)).unwrap(),
                record
            );
        }
        let alice = Record {
            candidate: "alice".into(),
            priority: 3,
            ttl_secs: 5,
        }
        .encode();
        let at = candidate_key("e", "alice");
        for (key, value, lease) in [
            (at.as_str(), alice.as_str(), 0),
            (&candidate_key("e", "bob"), &alice, 7),
            (&at, "not baton's", 7),
            (&at, "baton-presence 1:3 1:5", 7),
            (&at, "baton-presence 2:-3 1:5 5:alice", 7),
            (&at, "baton-presence 1:+ 1:5 5:alice", 7),
            (&at, "baton-presence 10:4294967296 1:5 5:alice", 7),
            (&at, "baton-presence 1:3 1:0 5:alice", 7),
            (&at, "baton-presence 1:3 - 5:alice", 7),
        ] {
            match Record::read("e", &kv(key, value, lease)) {
                Err(Error::ForeignData { key, found }) => {
                    assert_eq!(key, "e");
                    assert!(found.contains("baton-handoff:e:candidate:"), "{found}");
                }
                other => panic!("{value:?} at {key}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_store_forgets_only_the_lease_it_still_keeps() {
        let leases = Leases::default();
        let held = Held { id: 7, ttl_secs: 2 };
        assert_eq!(leases.set("e", "a", held), None);
        leases.forget("e", "a", 8);
        assert_eq!(leases.get("e", "a"), Some(held));
        leases.forget("e", "a", 7);
        assert_eq!(leases.get("e", "a"), None);
        leases.set("e", "a", held);
        assert_eq!(leases.take("e", "a"), Some(held));
        assert_eq!(leases.take("e", "a"), None);
    }
}
