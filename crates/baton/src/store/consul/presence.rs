//! Presence records (D134): a KV pair per candidate under `PREFIX/.candidates/`, beside the
//! lock and never on it (see the module documentation, "Presence records").

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine as _;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use tracing::debug;

use super::agent::{Kind, Reply};
use super::url::{escape_path, escape_query};
use super::{Inner, MAX_RACES, REQUEST_TIMEOUT, STORE, unexpected};
use crate::clock::boot_time;
use crate::{Error, Presence, Result};

/// The folder of an election's presence records, after its prefix.
pub(super) const CANDIDATES: &str = "/.candidates/";

/// Each record this store wrote, as written, and its `ModifyIndex`: the next announce is a
/// `cas` on it.
pub(super) type Written = HashMap<String, (Record, u64)>;

/// When each presence pair was first seen at its `ModifyIndex`: prefix → KV key →
/// (`ModifyIndex`, boot-clock instant).
pub(super) type Seen = HashMap<String, HashMap<String, (u64, Duration)>>;

/// How far a candidate's clock may be behind a reader's before the reader takes its record
/// for one that ran out long ago (see [`long_gone`]).
const SKEW_ALLOWANCE: Duration = Duration::from_secs(60);

/// Whether a record written at `written_ms` (the writer's wall clock) for `ttl` ran out longer
/// ago than [`SKEW_ALLOWANCE`] by this machine's wall clock. Only this check compares clocks,
/// and only to drop records no candidate has renewed for long (a candidate killed hours ago,
/// with nobody left to delete its pair): the observation alone would count such a record
/// alive for a whole TTL in every new process.
fn long_gone(written_ms: i64, ttl: Duration, now_ms: i64) -> bool {
    let limit = i64::try_from((ttl + SKEW_ALLOWANCE).as_millis()).unwrap_or(i64::MAX);
    now_ms.saturating_sub(written_ms) > limit
}

/// Now, by this machine's wall clock, in ms since the Unix epoch.
fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The folder of `key`'s presence records.
fn folder(key: &str) -> String {
    format!("{key}{CANDIDATES}")
}

/// The KV key of `candidate`'s record at `key`: the id with `%` and `/` escaped, so that it is
/// one level below the folder.
pub(super) fn record_key(key: &str, candidate: &str) -> String {
    format!("{}{}", folder(key), escape_query(candidate))
}

/// A record as written: `{"baton_presence":1,"candidate":..,"priority":..,"ttl_ms":..,
/// "renewal":..}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Record {
    candidate: String,
    priority: u32,
    ttl_ms: u64,
    renewal: u64,
    /// When it was written, by the writer's wall clock (ms since the Unix epoch): only to drop
    /// records long past their TTL ([`long_gone`]).
    written_ms: u64,
}

impl Record {
    fn to_value(&self) -> Vec<u8> {
        json!({
            "baton_presence": 1,
            "candidate": self.candidate,
            "priority": self.priority,
            "ttl_ms": self.ttl_ms,
            "renewal": self.renewal,
            "written_ms": self.written_ms,
        })
        .to_string()
        .into_bytes()
    }
}

/// A pair under the folder, as read.
struct Pair {
    key: String,
    modify_index: u64,
    value: Vec<u8>,
}

/// The record a pair at `kv_key` holds, or [`Error::ForeignData`].
fn parse(kv_key: &str, value: &[u8]) -> Result<Record> {
    let record = (|| {
        let v: Value = serde_json::from_slice(value).ok()?;
        let object = v.as_object()?;
        const FIELDS: [&str; 6] = [
            "baton_presence",
            "candidate",
            "priority",
            "ttl_ms",
            "renewal",
            "written_ms",
        ];
        if v["baton_presence"] != 1 || !object.keys().all(|k| FIELDS.contains(&k.as_str())) {
            return None;
        }
        let record = Record {
            candidate: v["candidate"].as_str()?.to_owned(),
            priority: u32::try_from(v["priority"].as_u64()?).ok()?,
            ttl_ms: v["ttl_ms"].as_u64()?,
            renewal: v["renewal"].as_u64()?,
            written_ms: v["written_ms"].as_u64()?,
        };
        (!record.candidate.is_empty() && record.ttl_ms > 0).then_some(record)
    })();
    let record = record.ok_or_else(|| Error::ForeignData {
        key: kv_key.to_owned(),
        found: format!(
            "a value that is not a Baton presence record: {}",
            String::from_utf8_lossy(value)
                .chars()
                .take(80)
                .collect::<String>()
        ),
    })?;
    // The pair must sit at its candidate's own key (a record copied elsewhere is not Baton's).
    if !kv_key.ends_with(&format!("/{}", escape_query(&record.candidate))) {
        return Err(Error::ForeignData {
            key: kv_key.to_owned(),
            found: format!(
                "the presence record of {:?} at another key",
                record.candidate
            ),
        });
    }
    Ok(record)
}

fn decode_pairs(reply: &Reply, what: &str) -> Result<Vec<Pair>> {
    let bad = |why: String| Error::Unavailable {
        store: STORE,
        message: format!("an answer for {what} that is not a list of KV pairs: {why}"),
        source: None,
    };
    let list: Vec<Value> = serde_json::from_slice(&reply.body).map_err(|e| bad(e.to_string()))?;
    list.into_iter()
        .map(|v| {
            Ok(Pair {
                key: v["Key"]
                    .as_str()
                    .ok_or_else(|| bad("no Key".into()))?
                    .to_owned(),
                modify_index: v["ModifyIndex"]
                    .as_u64()
                    .ok_or_else(|| bad("no ModifyIndex".into()))?,
                value: match v["Value"].as_str() {
                    Some(s) => base64::engine::general_purpose::STANDARD
                        .decode(s)
                        .map_err(|e| bad(e.to_string()))?,
                    None => Vec::new(),
                },
            })
        })
        .collect()
}

impl Inner {
    async fn read_pairs(&self, path: &str, what: &str) -> Result<Vec<Pair>> {
        let reply = self
            .agent
            .call(Method::GET, path, None, Kind::Read, Some(REQUEST_TIMEOUT))
            .await?;
        match reply.status {
            StatusCode::OK => decode_pairs(&reply, what),
            StatusCode::NOT_FOUND => Ok(Vec::new()),
            _ => Err(unexpected(&reply, &format!("reading {what}"), Kind::Read)),
        }
    }

    /// `candidate`'s record and its `ModifyIndex`, checking that Baton wrote it.
    async fn read_record(&self, kv_key: &str, candidate: &str) -> Result<Option<(Record, u64)>> {
        let path = format!("/v1/kv/{}", escape_path(kv_key));
        let pairs = self.read_pairs(&path, kv_key).await?;
        let Some(pair) = pairs.into_iter().find(|p| p.key == kv_key) else {
            return Ok(None);
        };
        let record = parse(kv_key, &pair.value)?;
        if record.candidate != candidate {
            return Err(Error::ForeignData {
                key: kv_key.to_owned(),
                found: format!("the presence record of {:?}", record.candidate),
            });
        }
        Ok(Some((record, pair.modify_index)))
    }

    /// Note that the pair `kv_key` under `key` was seen at `index`, just now: the instant that
    /// index was first seen (an older answer changes nothing).
    fn observe_presence(&self, key: &str, kv_key: &str, index: u64, now: Duration) -> Duration {
        let mut seen = self.presence.lock().unwrap_or_else(|e| e.into_inner());
        let entry = seen
            .entry(key.to_owned())
            .or_default()
            .entry(kv_key.to_owned())
            .or_insert((index, now));
        if index > entry.0 {
            *entry = (index, now);
        }
        entry.1
    }

    /// Write `candidate`'s record with a `cas` on the index it was last written at (read again
    /// after a conflict; `cas` 0 creates it), then list every record of `key`.
    pub(super) async fn announce(
        &self,
        key: &str,
        candidate: &str,
        priority: u32,
        ttl: Duration,
    ) -> Result<Vec<Presence>> {
        let kv_key = record_key(key, candidate);
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let cached = self
            .presence_written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&kv_key);
        let mut last = cached;
        let mut fresh = last.is_none();
        let mut written = None;
        for _ in 0..MAX_RACES {
            if fresh {
                last = self.read_record(&kv_key, candidate).await?;
            }
            let (renewal, cas) = last
                .as_ref()
                .map_or((0, 0), |(r, index)| (r.renewal.wrapping_add(1), *index));
            let record = Record {
                candidate: candidate.to_owned(),
                priority,
                ttl_ms,
                renewal,
                written_ms: wall_ms(),
            };
            let ops = json!([{"KV": {
                "Verb": "cas",
                "Key": kv_key,
                "Value": base64::engine::general_purpose::STANDARD.encode(record.to_value()),
                "Index": cas,
            }}]);
            let reply = self
                .agent
                .call(
                    Method::PUT,
                    "/v1/txn",
                    Some(ops.to_string().into_bytes()),
                    Kind::Write,
                    Some(REQUEST_TIMEOUT),
                )
                .await?;
            match reply.status {
                StatusCode::OK => {
                    let body: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
                    let index = body["Results"][0]["KV"]["ModifyIndex"]
                        .as_u64()
                        .ok_or_else(|| {
                            unexpected(&reply, "writing a presence record", Kind::Write)
                        })?;
                    written = Some((record, index));
                    break;
                }
                StatusCode::CONFLICT => {
                    debug!(key, candidate, "lost a race to write the presence record");
                    fresh = true;
                }
                _ => return Err(unexpected(&reply, "writing a presence record", Kind::Write)),
            }
        }
        let (record, index) = written.ok_or_else(|| Error::Unavailable {
            store: STORE,
            message: format!("{kv_key}: the presence record changed under every attempt"),
            source: None,
        })?;
        self.observe_presence(key, &kv_key, index, boot_time());
        self.presence_written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(kv_key, (record, index));
        let (live, gone) = self.list_presence(key).await?;
        // Records this store saw unchanged for their whole TTL (a candidate killed before it
        // withdrew): deleted with `cas` on the index seen, so a renewal in between keeps its
        // record. Best effort: every reader ignores them all the same.
        for (kv_key, index) in gone {
            if let Err(e) = self.delete_cas(&kv_key, index).await {
                debug!(key, kv_key, error = %e, "could not delete a presence record that ran out");
            }
        }
        Ok(live)
    }

    /// `DELETE ?cas=`: whether the pair was deleted at `index`.
    async fn delete_cas(&self, kv_key: &str, index: u64) -> Result<bool> {
        let reply = self
            .agent
            .call(
                Method::DELETE,
                &format!("/v1/kv/{}?cas={index}", escape_path(kv_key)),
                None,
                Kind::Write,
                Some(REQUEST_TIMEOUT),
            )
            .await?;
        if reply.status != StatusCode::OK {
            return Err(unexpected(
                &reply,
                "deleting a presence record",
                Kind::Write,
            ));
        }
        Ok(reply.body.trim_ascii() == b"true")
    }

    /// Every record of `key`: the live ones, and (KV key, index) of those that ran out by this
    /// store's observation.
    async fn list_presence(&self, key: &str) -> Result<(Vec<Presence>, Vec<(String, u64)>)> {
        let folder = folder(key);
        let path = format!("/v1/kv/{}?recurse", escape_path(&folder));
        let pairs = self.read_pairs(&path, &folder).await?;
        let now = boot_time();
        let mut live = Vec::new();
        let mut gone = Vec::new();
        let mut keys = Vec::new();
        for pair in pairs {
            // Deeper keys are not records (another election whose prefix is in this folder).
            let Some(rest) = pair.key.strip_prefix(&folder) else {
                continue;
            };
            // `.lock`: the lock of an election named `PREFIX/.candidates`, not a record.
            if rest.is_empty() || rest.contains('/') || rest == ".lock" {
                continue;
            }
            let record = parse(&pair.key, &pair.value)?;
            let at = self.observe_presence(key, &pair.key, pair.modify_index, now);
            let ttl = Duration::from_millis(record.ttl_ms);
            let written = i64::try_from(record.written_ms).unwrap_or(i64::MAX);
            let left = if long_gone(written, ttl, i64::try_from(wall_ms()).unwrap_or(i64::MAX)) {
                Duration::ZERO
            } else {
                (at + ttl).saturating_sub(now)
            };
            keys.push(pair.key.clone());
            if left.is_zero() {
                gone.push((pair.key, pair.modify_index));
            } else {
                live.push(Presence::new(record.candidate, record.priority, left));
            }
        }
        let mut seen = self.presence.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(of_key) = seen.get_mut(key) {
            of_key.retain(|k, _| keys.contains(k));
        }
        Ok((live, gone))
    }

    pub(super) async fn candidates(&self, key: &str) -> Result<Vec<Presence>> {
        Ok(self.list_presence(key).await?.0)
    }

    /// Delete `candidate`'s record, if Baton wrote it, with `cas` on the index read.
    pub(super) async fn withdraw(&self, key: &str, candidate: &str) -> Result<()> {
        let kv_key = record_key(key, candidate);
        // The index this store last wrote: one `DELETE ?cas=` (a stopping process may not wait
        // long); read afresh when it fails.
        let mut cached = self
            .presence_written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&kv_key)
            .map(|(_, index)| index);
        for _ in 0..MAX_RACES {
            let index = match cached.take() {
                Some(index) => index,
                None => match self.read_record(&kv_key, candidate).await? {
                    Some((_, index)) => index,
                    None => return Ok(()),
                },
            };
            if self.delete_cas(&kv_key, index).await? {
                return Ok(());
            }
        }
        Err(Error::Unavailable {
            store: STORE,
            message: format!("{kv_key}: the presence record changed under every attempt"),
            source: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_records_long_past_their_ttl_are_long_gone() {
        let ttl = Duration::from_secs(15);
        assert!(!long_gone(1_000_000, ttl, 1_000_000 + 75_000));
        assert!(long_gone(1_000_000, ttl, 1_000_000 + 75_001));
        assert!(
            !long_gone(1_000_000, ttl, 0),
            "a writer whose clock is ahead"
        );
    }

    #[test]
    fn records_live_one_level_below_the_folder() {
        assert_eq!(record_key("app", "web-1"), "app/.candidates/web-1");
        assert_eq!(record_key("app", "a/b%c"), "app/.candidates/a%2Fb%25c");
        let record = Record {
            candidate: "a/b%c".into(),
            priority: 3,
            ttl_ms: 1500,
            renewal: 2,
            written_ms: 1_000,
        };
        let kv_key = record_key("app", "a/b%c");
        assert_eq!(parse(&kv_key, &record.to_value()).unwrap(), record);
        assert!(matches!(
            parse("app/.candidates/other", &record.to_value()),
            Err(Error::ForeignData { .. })
        ));
        for value in [
            &b"hello"[..],
            br#"{"baton_presence":1,"candidate":"a/b%c","priority":3,"ttl_ms":1,"renewal":0,"x":1}"#,
            br#"{"baton_presence":1,"candidate":"a/b%c","priority":-1,"ttl_ms":1,"renewal":0,"written_ms":1}"#,
            br#"{"baton_presence":1,"candidate":"a/b%c","priority":1,"ttl_ms":1,"renewal":0}"#,
        ] {
            assert!(
                matches!(parse(&kv_key, value), Err(Error::ForeignData { .. })),
                "{}",
                String::from_utf8_lossy(value)
            );
        }
    }
}
