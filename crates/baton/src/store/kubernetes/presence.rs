//! Presence records (D134): one Lease per candidate, beside the election's Lease, never on it.
//!
//! The record of `candidate` at the election `key` is the Lease `<key>-<hash>` (the hash of
//! key and candidate: 16 hex digits; a key too long for that is cut to fit), labelled
//! `baton.dev/election=<key>` (a key longer than a label value's 63 characters is labelled
//! `h<hash of key>`), annotated `baton.dev/presence-of: <key>` and `baton.dev/priority`, with
//! `holderIdentity` the candidate, `leaseDurationSeconds` the record's TTL (rounded up to whole
//! seconds) and `renewTime` when it was written. It is read back by a list on the label.
//!
//! A record is judged as the store judges leases: alive for `leaseDurationSeconds` from when
//! this store first saw its `resourceVersion`, on its boot clock; no wall clock is compared.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease as K8sLease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, DeleteParams, ListParams, PostParams, Preconditions};
use tracing::debug;

use super::{Inner, MAX_RACES, STORE, duration_secs, is_code, now_micro, rv_of};
use crate::clock::boot_time;
use crate::{Error, Presence, Result};

/// The label every presence Lease of an election carries: the election's key (or its hash).
pub(super) const ELECTION_LABEL: &str = "baton.dev/election";
/// The election a presence Lease belongs to, in full (a label value holds 63 characters).
const PRESENCE_OF_ANNOTATION: &str = "baton.dev/presence-of";
/// The candidate's priority.
const PRIORITY_ANNOTATION: &str = "baton.dev/priority";

/// How far a candidate's clock may be behind a reader's before the reader takes its record
/// for one that ran out long ago (see [`long_gone`]).
pub(super) const SKEW_ALLOWANCE: Duration = Duration::from_secs(60);

/// Whether a record renewed at `renew` (the writer's wall clock) for `ttl` ran out longer ago
/// than [`SKEW_ALLOWANCE`] by this machine's wall clock. Only this check compares clocks, and
/// only to drop records a reader sees for the first time that no candidate has renewed for
/// long (a candidate killed hours ago, with nobody left to delete its record): the
/// observation alone would count such a record alive for a whole TTL in every new process.
pub(super) fn long_gone(renew_ms: i64, ttl: Duration, now_ms: i64) -> bool {
    let limit = i64::try_from((ttl + SKEW_ALLOWANCE).as_millis()).unwrap_or(i64::MAX);
    now_ms.saturating_sub(renew_ms) > limit
}

/// When each presence Lease of each key was first seen at its resourceVersion: key → Lease
/// name → (resourceVersion, boot-clock instant).
pub(super) type Seen = HashMap<String, HashMap<String, (u64, Duration)>>;

/// FNV-1a, 64 bits, of `parts` joined by NUL bytes: a stable hash (names must not change
/// between Baton versions).
fn fnv(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let joined = parts.join("\0");
    for b in joined.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The name of `candidate`'s presence Lease at `key`: `<key>-<16 hex digits>`, the key cut to
/// keep the name within 253 characters.
pub(super) fn presence_name(key: &str, candidate: &str) -> String {
    let hash = format!("{:016x}", fnv(&[key, candidate]));
    let room = 253 - hash.len() - 1;
    let prefix = if key.len() > room { &key[..room] } else { key };
    let prefix = prefix.trim_end_matches(['-', '.']);
    format!("{prefix}-{hash}")
}

/// The value of [`ELECTION_LABEL`] for `key`: the key itself when it fits a label value (a
/// Lease name always has a label value's characters), else `h` and its hash.
pub(super) fn election_label(key: &str) -> String {
    if key.len() <= 63 {
        key.to_owned()
    } else {
        format!("h{:016x}", fnv(&[key]))
    }
}

/// A presence Lease's candidate, priority and duration, or [`Error::ForeignData`] when Baton
/// did not write it for `key`.
fn parse(key: &str, lease: &K8sLease) -> Result<(String, u32, Duration)> {
    let name = lease.metadata.name.clone().unwrap_or_default();
    let foreign = |found: &str| Error::ForeignData {
        key: name.clone(),
        found: format!("{found} (at the presence records of {key:?})"),
    };
    let annotations = lease.metadata.annotations.as_ref();
    let annotation = |n: &str| annotations.and_then(|a| a.get(n));
    if annotation(PRESENCE_OF_ANNOTATION).map(String::as_str) != Some(key) {
        return Err(foreign(&format!(
            "a Lease without the annotation {PRESENCE_OF_ANNOTATION}: {key}"
        )));
    }
    let priority = annotation(PRIORITY_ANNOTATION)
        .and_then(|p| p.parse::<u32>().ok())
        .ok_or_else(|| foreign(&format!("a Lease without a numeric {PRIORITY_ANNOTATION}")))?;
    let spec = lease.spec.as_ref();
    let candidate = spec
        .and_then(|s| s.holder_identity.clone())
        .filter(|c| !c.is_empty())
        .ok_or_else(|| foreign("a presence Lease with no spec.holderIdentity"))?;
    let secs = spec
        .and_then(|s| s.lease_duration_seconds)
        .filter(|d| *d > 0)
        .ok_or_else(|| foreign("a presence Lease with no positive spec.leaseDurationSeconds"))?;
    if lease.spec.as_ref().is_some_and(|s| {
        s.strategy.is_some() || s.preferred_holder.is_some() || s.acquire_time.is_none()
    }) {
        return Err(foreign("a Lease with fields a presence record has not"));
    }
    Ok((
        candidate,
        priority,
        Duration::from_secs(secs.unsigned_abs().into()),
    ))
}

/// `candidate`'s record at `key` as it is written: `base` (the Lease as last written or read)
/// with the holder, TTL, renewTime and priority set.
fn record(
    key: &str,
    name: &str,
    candidate: &str,
    priority: u32,
    ttl: Duration,
    base: Option<K8sLease>,
) -> K8sLease {
    let now = now_micro();
    let mut lease = base.unwrap_or_else(|| K8sLease {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        spec: None,
    });
    lease
        .metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(ELECTION_LABEL.into(), election_label(key));
    let annotations = lease.metadata.annotations.get_or_insert_with(BTreeMap::new);
    annotations.insert(PRESENCE_OF_ANNOTATION.into(), key.to_owned());
    annotations.insert(PRIORITY_ANNOTATION.into(), priority.to_string());
    let acquired = lease
        .spec
        .as_ref()
        .and_then(|s| s.acquire_time.clone())
        .unwrap_or(MicroTime(now));
    lease.spec = Some(LeaseSpec {
        holder_identity: Some(candidate.to_owned()),
        lease_duration_seconds: Some(duration_secs(ttl)),
        acquire_time: Some(acquired),
        renew_time: Some(MicroTime(now)),
        ..LeaseSpec::default()
    });
    lease
}

fn lost_races(name: &str) -> Error {
    Error::unavailable(
        STORE,
        format!("{name}: the presence Lease keeps changing"),
        "lost races",
    )
}

impl Inner {
    /// Note that the presence Lease `name` of `key` was seen at `rv`, just now: the instant
    /// its current resourceVersion was first seen (a stale answer changes nothing).
    fn observe_presence(&self, key: &str, name: &str, rv: u64, now: Duration) -> Duration {
        let mut seen = self.presence.lock().unwrap_or_else(|e| e.into_inner());
        let entry = seen
            .entry(key.to_owned())
            .or_default()
            .entry(name.to_owned())
            .or_insert((rv, now));
        if rv > entry.0 {
            *entry = (rv, now);
        }
        entry.1
    }

    /// Read `candidate`'s presence Lease, checking that Baton wrote it.
    async fn presence_lease(
        &self,
        api: &Api<K8sLease>,
        key: &str,
        name: &str,
        candidate: &str,
    ) -> Result<Option<K8sLease>> {
        let Some(lease) = api.get_opt(name).await.map_err(|e| self.error(e, false))? else {
            return Ok(None);
        };
        let (holder, _, _) = parse(key, &lease)?;
        if holder != candidate {
            return Err(Error::ForeignData {
                key: name.to_owned(),
                found: format!("the presence record of {holder:?}, not of {candidate:?}"),
            });
        }
        Ok(Some(lease))
    }

    /// Write `candidate`'s record (the Lease as last written, or read afresh after a conflict;
    /// created when missing), then list every record of `key`.
    pub(super) async fn announce(
        &self,
        key: &str,
        candidate: &str,
        priority: u32,
        ttl: Duration,
    ) -> Result<Vec<Presence>> {
        let api = self.api().await?;
        let name = presence_name(key, candidate);
        let cached = self
            .presence_written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&name);
        let mut base = cached;
        let mut fresh = base.is_none();
        let mut written = None;
        for _ in 0..MAX_RACES {
            if fresh {
                base = self.presence_lease(&api, key, &name, candidate).await?;
            }
            let creating = base.is_none();
            let object = record(key, &name, candidate, priority, ttl, base.take());
            let answer = if creating {
                api.create(&PostParams::default(), &object).await
            } else {
                api.replace(&name, &PostParams::default(), &object).await
            };
            match answer {
                Ok(lease) => {
                    written = Some(lease);
                    break;
                }
                Err(e) if is_code(&e, 409) || is_code(&e, 404) => {
                    debug!(key, candidate, "lost a race to write the presence record");
                    fresh = true;
                }
                Err(e) => return Err(self.error(e, true)),
            }
        }
        let written = written.ok_or_else(|| lost_races(&name))?;
        self.observe_presence(key, &name, rv_of(&written), boot_time());
        self.presence_written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name, written);
        let (live, gone) = self.list_presence(&api, key).await?;
        // Records this store saw unchanged for their whole TTL (a candidate killed before it
        // withdrew): deleted, on the resourceVersion seen, so a renewal in between keeps its
        // record. Best effort: what is left is ignored by every reader all the same.
        for (name, rv) in gone {
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    resource_version: Some(rv.to_string()),
                    uid: None,
                }),
                ..DeleteParams::default()
            };
            if let Err(e) = api.delete(&name, &params).await {
                debug!(key, name, error = %e, "could not delete a presence record that ran out");
            }
        }
        Ok(live)
    }

    /// Every presence record of `key`: the live ones, and (name, resourceVersion) of those that
    /// ran out by this store's observation.
    async fn list_presence(
        &self,
        api: &Api<K8sLease>,
        key: &str,
    ) -> Result<(Vec<Presence>, Vec<(String, u64)>)> {
        let list = api
            .list(
                &ListParams::default().labels(&format!("{ELECTION_LABEL}={}", election_label(key))),
            )
            .await
            .map_err(|e| self.error(e, false))?;
        let now = boot_time();
        let mut live = Vec::new();
        let mut gone = Vec::new();
        let mut names = Vec::new();
        for lease in &list.items {
            let name = lease.metadata.name.clone().unwrap_or_default();
            // A longer key whose label is the same hash: another election's record.
            let of = lease
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(PRESENCE_OF_ANNOTATION));
            if key.len() > 63 && of.is_some_and(|of| of != key) {
                continue;
            }
            let (candidate, priority, duration) = parse(key, lease)?;
            let rv = rv_of(lease);
            let at = self.observe_presence(key, &name, rv, now);
            let renew_ms = lease
                .spec
                .as_ref()
                .and_then(|s| s.renew_time.as_ref())
                .map_or(i64::MIN, |t| t.0.as_millisecond());
            let left = if long_gone(renew_ms, duration, now_micro().as_millisecond()) {
                Duration::ZERO
            } else {
                (at + duration).saturating_sub(now)
            };
            names.push(name.clone());
            if left.is_zero() {
                gone.push((name, rv));
            } else {
                live.push(Presence::new(candidate, priority, left));
            }
        }
        // Forget the observations of records that are gone.
        let mut seen = self.presence.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(of_key) = seen.get_mut(key) {
            of_key.retain(|name, _| names.contains(name));
        }
        Ok((live, gone))
    }

    /// Every live presence record of `key`.
    pub(super) async fn candidates(&self, key: &str) -> Result<Vec<Presence>> {
        let api = self.api().await?;
        Ok(self.list_presence(&api, key).await?.0)
    }

    /// Delete `candidate`'s presence Lease, if Baton wrote it, on the resourceVersion read.
    pub(super) async fn withdraw(&self, key: &str, candidate: &str) -> Result<()> {
        let api = self.api().await?;
        let name = presence_name(key, candidate);
        // The record as this store last wrote it: one DELETE on its resourceVersion (a stopping
        // process may not wait long); read afresh after a conflict.
        let mut cached = self
            .presence_written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&name);
        for _ in 0..MAX_RACES {
            let lease = match cached.take() {
                Some(lease) => lease,
                None => match self.presence_lease(&api, key, &name, candidate).await? {
                    Some(lease) => lease,
                    None => return Ok(()),
                },
            };
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    resource_version: lease.metadata.resource_version.clone(),
                    uid: None,
                }),
                ..DeleteParams::default()
            };
            match api.delete(&name, &params).await {
                Ok(_) => return Ok(()),
                Err(e) if is_code(&e, 404) => return Ok(()),
                Err(e) if is_code(&e, 409) => continue,
                Err(e) => return Err(self.error(e, true)),
            }
        }
        Err(lost_races(&name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_a_lease_name_and_labels_a_label_value() {
        let name = presence_name("my-service", "web-1");
        assert!(name.starts_with("my-service-") && name.len() == "my-service-".len() + 16);
        assert_ne!(name, presence_name("my-service", "web-2"));
        assert_ne!(presence_name("a", "b-c"), presence_name("a-b", "c"));
        let long = format!("{}.{}", "a".repeat(235), "b".repeat(17));
        let name = presence_name(&long, "web-1");
        assert!(name.len() <= 253, "{}", name.len());
        assert!(
            name.starts_with(&"a".repeat(235)) && !name.contains(".-"),
            "{name}"
        );
        assert_eq!(election_label("my-service"), "my-service");
        let label = election_label(&long);
        assert!(label.len() <= 63 && label.starts_with('h'), "{label}");
    }

    #[test]
    fn only_records_long_past_their_ttl_are_long_gone() {
        let ttl = Duration::from_secs(15);
        assert!(!long_gone(1_000_000, ttl, 1_000_000 + 75_000));
        assert!(long_gone(1_000_000, ttl, 1_000_000 + 75_001));
        // A writer whose clock is ahead: never gone by the wall clock.
        assert!(!long_gone(1_000_000, ttl, 0));
        assert!(long_gone(i64::MIN, ttl, 0));
    }

    #[test]
    fn records_baton_did_not_write_are_foreign() {
        let mut lease = record("k", "k-1", "web-1", 7, Duration::from_millis(1500), None);
        assert_eq!(
            parse("k", &lease).unwrap(),
            ("web-1".to_owned(), 7, Duration::from_secs(2))
        );
        assert!(matches!(
            parse("other", &lease),
            Err(Error::ForeignData { .. })
        ));
        lease
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(PRIORITY_ANNOTATION.into(), "high".into());
        assert!(matches!(parse("k", &lease), Err(Error::ForeignData { .. })));
        let node = K8sLease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: Some("node-1".into()),
                ..LeaseSpec::default()
            }),
        };
        assert!(matches!(parse("k", &node), Err(Error::ForeignData { .. })));
    }
}
