//! Consul: a session per candidate and a KV lock, written as `consul lock` and the Go API's
//! `Lock` write them, so a Baton candidate and `consul lock PREFIX` (or any client of the Go
//! API's `Lock` on `PREFIX/.lock`) exclude each other.
//!
//! # The key
//!
//! The election key `PREFIX` is the KV key `PREFIX/.lock` (`consul lock`'s layout), with the
//! flags `0x2ddccbc058a50c18` (the Go API's `LockFlagValue`). The lock is held by a session:
//! the pair's `Session`. While a Baton candidate holds it, the value is Baton's record:
//!
//! ```json
//! {"baton":1,"holder":"web-1","token":4711,"lease_ms":15000,"renewal":12}
//! ```
//!
//! with, for a planned handoff, `request_to` or `mark_to` and `mark_window_ms` (see below);
//! any other field makes the value foreign.
//!
//! A pair at that key with other flags (a semaphore, or data of another program) is left alone
//! and reported as [`Error::ForeignData`], as the Go API's `Lock` answers `ErrLockConflict`. A
//! lock held by a session whose value is not Baton's record is another client's lock
//! (`consul lock`, the Go API): its holder is the value, when it is short printable text, or
//! `session SESSION-ID`; its token is 0.
//!
//! # Sessions, and Consul's 2 × TTL
//!
//! A candidate creates its session when it first tries to acquire (the lease is known then):
//! TTL = the lease rounded **up** to whole seconds and at least Consul's minimum of 10 s,
//! `LockDelay` 0, `Behavior` `release`. Consul invalidates a session only `2 × TTL` after its
//! last renewal (`session_ttl.go`), so a session never ends before the Baton leader's deadline:
//! every acquire and every renewal first makes sure the session lasts a lease from now
//! (renewing it with `PUT /v1/session/renew/ID` when an earlier renewal no longer covers that,
//! D103), and the deadline counts from before the request. Clients that only follow Consul's own rules
//! (`consul lock`) take over once Consul has invalidated the session, within `2 × TTL` of the
//! leader's last renewal: always after the Baton leader stepped down.
//!
//! Baton's followers do not wait for that: crash failover would take twice the lease (and at
//! least 20 s). The leader's renewal also rewrites its record (`renewal` + 1, a new
//! `ModifyIndex`), and a Baton follower judges the lease the way the Kubernetes store does:
//! expired once `lease_ms` have passed on its own monotonic clock since it first saw the
//! current `ModifyIndex`. It then takes the key over in **one transaction** that checks the
//! `ModifyIndex` it saw, destroys the holder's session and locks the key with its own; a
//! renewal that reached Consul first changed the index and the takeover fails; a takeover that
//! came first destroyed the session, and the renewal fails. Only records Baton wrote are taken
//! over this way: another client's lock is left to Consul's TTL.
//!
//! # Fencing tokens
//!
//! `LockIndex` restarts when the key is deleted, so the token is minted from Consul's raft
//! index instead: `max(ModifyIndex read (X-Consul-Index for a missing key), token in the
//! record) + 1`, written in the record by the transaction that locks the key, which also checks
//! that the key is still at the index read (`check-index`; a missing key is first created as a
//! free lock, D103). The lock's
//! own `ModifyIndex` is above the index read, so each token is at most its own write's index,
//! and every later acquisition reads an index at least that high: tokens strictly increase
//! across releases, session expiries, other clients' terms and deletion of the key (a key
//! created again gets an index above its deletion's).
//!
//! # Push
//!
//! Followers hold one blocking query on the key (`?index=` of the last answer, `wait=`); a
//! release, a takeover, an expiry by Consul and every renewal of a Baton leader answer it. An
//! idle follower therefore costs its open blocking query, one more per renewal of the leader,
//! and no session renewals (its session is renewed when it tries to acquire).
//!
//! # Release
//!
//! `PUT /v1/kv/PREFIX/.lock?release=SESSION` (with the flags and the record, which Consul
//! writes with the release), then `PUT /v1/session/destroy/SESSION`, as the Go API's
//! `Unlock` and its session renewer do.
//!
//! # Planned handoff: fields of the lock's value
//!
//! * **hand over** ([`Candidacy::hand_over`]) is one transaction, `unlock` with the holder's
//!   session (Consul refuses it unless that session holds the lock: the handoff of a lease
//!   that is gone is a no-op), writing the record with the mark, `"mark_to"` (the candidate,
//!   `""` for anyone but the leaver, the record's `holder`) and `"mark_window_ms"`; then the
//!   session is destroyed, as after a release. Consul KV has no TTL, and a session cannot
//!   carry the window (at least 10 s, and invalidated only up to `2 × TTL` later), so the mark
//!   runs out as a Baton lease does: `window` after a candidate first saw the pair's
//!   `ModifyIndex`, on its own monotonic clock. A candidate that first reads it late waits
//!   longer, never less. While it runs, an acquire by anyone it does not admit answers
//!   [`Acquire::Reserved`]; the acquire that succeeds writes a record without it. A mark is
//!   Baton's only in a free lock's value; in a held one it is foreign.
//! * **request** ([`LeaseStore::request_handoff`]) writes `"request_to"` (`""` for anyone)
//!   into the held lock's record with `PUT ?cas=MODIFYINDEX&flags=...`: a plain write keeps
//!   the lock's session and `LockIndex`, and holder, token and lease stay as they are. Another
//!   client's lock (`consul lock`) takes no request ([`Error::Config`]): its value is not
//!   Baton's to write.
//! * **renewal**: the renewal's transaction checks the `ModifyIndex` of the holder's own last
//!   write besides its session, so a request written since rolls it back rather than being
//!   overwritten. The holder then reads the key, renews with the request kept, and answers
//!   [`Renew::HandoffRequested`]; the request stays in the value until the handoff (or a
//!   release) clears it. A renewal without a request costs nothing more (one more check in
//!   the same transaction); one that meets a request costs a rolled-back transaction and a
//!   read. A leader that listens for requests hears of one on its blocking query at once.
//! * **push**: the blocking query reports a mark as [`Change::HandedOver`] and a request as
//!   [`Change::HandoffRequested`].
//!
//! A record with the handoff fields is refused as foreign by Baton versions from before them.
//!
//! `pending_handoff` ([`LeaseStore::pending_handoff`]) reads the same fields: `request_to`
//! while the holder's lease runs, the mark while its window runs, both by this store's
//! observation.
//!
//! # Presence records
//!
//! A candidate's presence record ([`LeaseStore::announce`]) is a KV pair of its own, never
//! the lock (a write there would make the leader's renewal transaction roll back):
//! `PREFIX/.candidates/<id>` (the id with `%` and `/` escaped as `%25` and `%2F`), flags 0,
//! value
//!
//! ```json
//! {"baton_presence":1,"candidate":"web-1","priority":0,"ttl_ms":15000,"renewal":41,"written_ms":1796650000000}
//! ```
//!
//! An announce is one transaction (`cas` on the `ModifyIndex` the candidate last wrote; `0`
//! creates the pair; a conflict reads it again) and one `?recurse` read of the folder.
//! `consul lock PREFIX` and the Go API's `Lock` read and write only `PREFIX/.lock`, so they
//! ignore the folder (a semaphore, `consul lock -n`, counts only pairs held by a session; these
//! have none).
//!
//! Consul KV has no TTL, so a record is judged as a Baton lease is: alive for `ttl_ms` from
//! when this store first saw its `ModifyIndex`, on its own monotonic clock (every announce
//! changes the index: `renewal` + 1). Clock skew does not matter; a store that reads a record
//! for the first time counts it alive for a whole TTL from then (`baton status` or `baton
//! handoff --to` may take a candidate killed a moment ago for alive; a handoff to it runs out
//! within a lease, D130). One wall-clock check, only to drop records long dead: a record whose
//! `written_ms` (the writer's clock) is older than its TTL plus 60 s by the reader's clock
//! counts as run out (a candidate killed hours ago, with nobody left to delete its pair, would
//! otherwise show alive in every new process); a candidate's clock would have to be a minute
//! behind for its live record to be missed. A session cannot carry the record instead: Consul's sessions last 10
//! s at least and are invalidated only up to `2 x TTL` after their last renewal, so a record of
//! a killed candidate would show for up to twice the lease (20 s at least), and every announce
//! would cost a session renewal besides the write. The price of the observed rule: a killed
//! candidate's pair stays in the KV store until another candidate's announce sees it run out
//! and deletes it (`DELETE ?cas=` on the index seen, so a record renewed meanwhile stays); a
//! stopping candidate deletes its own (`withdraw`, `?cas=` too). A pair in the folder that is
//! not a Baton record (or a record at another candidate's key) is [`Error::ForeignData`] and
//! is never written or deleted; keys deeper in the folder are ignored.
//!
//! # URLs
//!
//! | URL | connects to |
//! |---|---|
//! | `consul://HOST[:PORT][?token=TOKEN&dc=DC]` | the agent's HTTP API (port 8500 by default) |
//! | `consuls://HOST[:PORT][?ca=PATH&cert=PATH&key=PATH&token=TOKEN&dc=DC]` | its HTTPS API (port 8501 by default), with rustls and ring; the system's trust store unless `ca=` is given |
//!
//! The token is sent in the `X-Consul-Token` header and never shown: not in errors, logs or
//! `Debug` output. The `baton` command also takes it from `CONSUL_HTTP_TOKEN`. It needs
//! `key:write` on the key and `session:write` on the agent's node; with presence records (the
//! `baton` command keeps them), `key:write` on the prefix `PREFIX/.candidates/` too (a
//! `key_prefix "PREFIX/"` rule with `write` covers both, and the folder's recursive read, even
//! with `acl.enable_key_list_policy`). A 403 is a configuration
//! error. `docs/decisions.md` (D94–D101) has the reasoning.

mod agent;
mod presence;
mod url;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tracing::debug;

use self::agent::{Agent, Kind, Reply};
use self::url::{escape_path, escape_query, parse_url};
use super::{
    Acquire, Candidacy, Change, Changes, HandoffMark, Lease, LeaseRecord, LeaseStore,
    PendingHandoff, Presence, Renew, StoreInfo,
};
use crate::clock::boot_time;
use crate::{Error, FencingToken, Result, connect::redact};

/// The store's name in errors and [`StoreInfo`].
const STORE: &str = "consul";
/// The Go API's `LockFlagValue` (`api/lock.go`): the flags of a lock's KV pair.
pub const LOCK_FLAGS: u64 = 0x2ddc_cbc0_58a5_0c18;
/// The suffix `consul lock PREFIX` puts after the prefix (`command/lock/lock.go`).
pub const LOCK_SUFFIX: &str = "/.lock";
/// Consul's smallest session TTL (`session_ttl_min`, 10 s by default).
pub const SESSION_TTL_MIN: Duration = Duration::from_secs(10);
/// Consul's largest session TTL (`SessionTTLMax`, 24 h).
pub const SESSION_TTL_MAX: Duration = Duration::from_secs(86_400);
/// Consul's `SessionTTLMultiplier`: a session is invalidated this many TTLs after its last
/// renewal.
pub const SESSION_TTL_MULTIPLIER: u32 = 2;
/// How long one blocking query waits at most.
const BLOCKING_WAIT: Duration = Duration::from_secs(60);
/// How long a request other than a blocking query may take before it counts as failed (the
/// engine gives each call less when its deadline is nearer).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Lost races in a row after which `try_acquire` reports the holder it last read.
const MAX_RACES: usize = 4;
/// How long a candidate waits before trying a key under a lock-delay again (the Go API's
/// `DefaultLockRetryTime`, 5 s, or the lease if shorter).
const LOCK_DELAY_RETRY: Duration = Duration::from_secs(5);

/// Leader election on Consul sessions and KV locks, compatible with `consul lock`. See the
/// [module documentation](self).
#[derive(Clone)]
pub struct ConsulStore {
    inner: Arc<Inner>,
}

struct Inner {
    agent: Agent,
    /// When each key's `ModifyIndex` was first seen, on this machine's boot clock.
    observed: Mutex<HashMap<String, Observed>>,
    /// When each presence record was first seen at its `ModifyIndex`.
    presence: Mutex<presence::Seen>,
    /// Each presence record this store wrote.
    presence_written: Mutex<presence::Written>,
}

impl std::fmt::Debug for ConsulStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulStore")
            .field("location", &self.inner.agent.location())
            .finish_non_exhaustive()
    }
}

/// A lock's KV pair as read.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pair {
    modify_index: u64,
    flags: u64,
    session: String,
    value: Vec<u8>,
}

/// What a pair says about the election.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Lock {
    /// Nobody holds it. The highest token Baton minted on it, if its record is Baton's, and the
    /// mark a handoff left in it, if any.
    Free { high_water: u64, mark: Option<Mark> },
    /// A Baton candidate holds it.
    Baton { session: String, record: Record },
    /// Another client (`consul lock`, the Go API) holds it.
    Other { session: String, holder: String },
}

/// A handoff's mark in a freed lock's value: only `to` (or, `None`, anyone but `from`) may lock
/// it for `window`, counted from when a candidate first saw the pair's `ModifyIndex`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mark {
    to: Option<String>,
    from: String,
    window: Duration,
}

/// Baton's record, the value of a lock it holds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Record {
    holder: String,
    token: u64,
    lease_ms: u64,
    renewal: u64,
    /// `request_to`: a handoff request left beside the held lock (`Some(None)`: to anyone).
    request: Option<Option<String>>,
    /// `mark_to` and `mark_window_ms`: the mark a handoff left in the freed lock's value.
    mark: Option<(Option<String>, u64)>,
}

impl Record {
    fn to_value(&self) -> Vec<u8> {
        let mut v = json!({
            "baton": 1,
            "holder": self.holder,
            "token": self.token,
            "lease_ms": self.lease_ms,
            "renewal": self.renewal,
        });
        if let Some(to) = &self.request {
            v["request_to"] = json!(to.as_deref().unwrap_or(""));
        }
        if let Some((to, window_ms)) = &self.mark {
            v["mark_to"] = json!(to.as_deref().unwrap_or(""));
            v["mark_window_ms"] = json!(window_ms);
        }
        v.to_string().into_bytes()
    }

    /// The record without a request or a mark: what a release writes.
    fn plain(&self) -> Record {
        Record {
            request: None,
            mark: None,
            ..self.clone()
        }
    }

    fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms)
    }
}

/// What a store last saw of a key, and since when.
#[derive(Debug, Clone)]
struct Observed {
    /// The pair; `None` once seen missing.
    pair: Option<Pair>,
    /// The index it was seen at (the pair's `ModifyIndex`, or the table's for a missing key).
    index: u64,
    /// Boot-clock instant at which this index was first seen: never before its write.
    at: Duration,
}

/// The KV key of the election key `key`.
fn lock_key(key: &str) -> String {
    format!("{key}{LOCK_SUFFIX}")
}

/// The session TTL for a lease: the lease rounded up to whole seconds, within Consul's bounds.
///
/// # Errors
///
/// [`Error::Config`] for a lease that even a session of the largest TTL cannot cover: above
/// `2 × 24 h`.
pub fn session_ttl(lease: Duration) -> Result<Duration> {
    if lease > SESSION_TTL_MAX * SESSION_TTL_MULTIPLIER {
        return Err(Error::Config(format!(
            "a lease of {} is longer than a Consul session can last unrenewed (2 x 24 h): choose a shorter lease",
            crate::fmt_duration(lease)
        )));
    }
    let secs = lease.as_secs() + u64::from(lease.subsec_nanos() > 0);
    Ok(Duration::from_secs(secs).clamp(SESSION_TTL_MIN, SESSION_TTL_MAX))
}

impl ConsulStore {
    /// Open the store a `consul://` or `consuls://` URL names (see the [module
    /// documentation](self)). Nothing is connected until first use.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a malformed URL, an unknown option, or TLS files that cannot be
    /// read.
    pub fn open(url: &str) -> Result<Self> {
        let target = parse_url(url)?;
        let agent = Agent::new(&target, redact(url))?;
        Ok(ConsulStore {
            inner: Arc::new(Inner {
                agent,
                observed: Mutex::new(HashMap::new()),
                presence: Mutex::new(HashMap::new()),
                presence_written: Mutex::new(HashMap::new()),
            }),
        })
    }
}

/// Parse a pair at `kv_key`.
fn parse_lock(kv_key: &str, pair: &Pair) -> Result<Lock> {
    let foreign = |found: String| Error::ForeignData {
        key: kv_key.to_owned(),
        found,
    };
    if pair.flags != LOCK_FLAGS {
        return Err(foreign(format!(
            "a KV pair with flags {:#x}, not a lock's {LOCK_FLAGS:#x}",
            pair.flags
        )));
    }
    // Baton's record is a JSON object with a `baton` field (serde_json writes it first, but
    // any object with that field claims to be one, and must be one exactly).
    let claims_record = serde_json::from_slice::<Value>(&pair.value)
        .is_ok_and(|v| v.as_object().is_some_and(|o| o.contains_key("baton")));
    let record = if claims_record {
        Some(parse_record(&pair.value).ok_or_else(|| {
            foreign(format!(
                "a lock whose value looks like Baton's record but is not one: {}",
                String::from_utf8_lossy(&pair.value)
                    .chars()
                    .take(80)
                    .collect::<String>()
            ))
        })?)
    } else {
        None
    };
    Ok(match (pair.session.is_empty(), record) {
        (true, record) => Lock::Free {
            high_water: record.as_ref().map_or(0, |r| r.token),
            mark: record.and_then(|r| {
                let (to, window_ms) = r.mark?;
                Some(Mark {
                    to,
                    from: r.holder,
                    window: Duration::from_millis(window_ms),
                })
            }),
        },
        (false, Some(record)) if record.mark.is_some() => {
            return Err(foreign(format!(
                "a lock held with a handoff mark in its value: {}",
                String::from_utf8_lossy(&pair.value)
                    .chars()
                    .take(80)
                    .collect::<String>()
            )));
        }
        (false, Some(record)) => Lock::Baton {
            session: pair.session.clone(),
            record,
        },
        (false, None) => Lock::Other {
            session: pair.session.clone(),
            holder: other_holder(&pair.value, &pair.session),
        },
    })
}

fn parse_record(value: &[u8]) -> Option<Record> {
    const FIELDS: [&str; 8] = [
        "baton",
        "holder",
        "token",
        "lease_ms",
        "renewal",
        "request_to",
        "mark_to",
        "mark_window_ms",
    ];
    let v: Value = serde_json::from_slice(value).ok()?;
    let object = v.as_object()?;
    if v["baton"] != 1 || !object.keys().all(|k| FIELDS.contains(&k.as_str())) {
        return None;
    }
    let named = |field: &str| -> Option<Option<Option<String>>> {
        match object.get(field) {
            None => Some(None),
            Some(Value::String(to)) => Some(Some((!to.is_empty()).then(|| to.clone()))),
            Some(_) => None,
        }
    };
    let mark = match (named("mark_to")?, object.get("mark_window_ms")) {
        (None, None) => None,
        (Some(to), Some(window)) => Some((to, window.as_u64()?)),
        _ => return None,
    };
    let record = Record {
        holder: v["holder"].as_str()?.to_owned(),
        token: v["token"].as_u64()?,
        lease_ms: v["lease_ms"].as_u64()?,
        renewal: v["renewal"].as_u64()?,
        request: named("request_to")?,
        mark,
    };
    // A token of u64::MAX leaves no token to follow it: Baton never mints it (a token is at
    // most its own write's index).
    (!record.holder.is_empty()
        && record.token > 0
        && record.token < u64::MAX
        && record.lease_ms > 0)
        .then_some(record)
}

/// Another client's holder: its value when that is short printable text, else its session.
fn other_holder(value: &[u8], session: &str) -> String {
    match std::str::from_utf8(value) {
        Ok(text)
            if !text.is_empty() && text.len() <= 253 && text.chars().all(|c| !c.is_control()) =>
        {
            text.to_owned()
        }
        _ => format!("session {session}"),
    }
}

fn decode_pair(reply: &Reply, kv_key: &str) -> Result<Option<Pair>> {
    let bad = |why: String| Error::Unavailable {
        store: STORE,
        message: format!("an answer for {kv_key} that is not a KV pair: {why}"),
        source: None,
    };
    let list: Vec<Value> = serde_json::from_slice(&reply.body).map_err(|e| bad(e.to_string()))?;
    let Some(v) = list.into_iter().find(|v| v["Key"] == kv_key) else {
        return Ok(None);
    };
    Ok(Some(Pair {
        modify_index: v["ModifyIndex"]
            .as_u64()
            .ok_or_else(|| bad("no ModifyIndex".into()))?,
        flags: v["Flags"].as_u64().unwrap_or(0),
        session: v["Session"].as_str().unwrap_or_default().to_owned(),
        value: match v["Value"].as_str() {
            Some(s) => base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(|e| bad(e.to_string()))?,
            None => Vec::new(),
        },
    }))
}

/// An unexpected answer.
fn unexpected(reply: &Reply, what: &str, kind: Kind) -> Error {
    let message = format!("{what}: HTTP {}: {}", reply.status, reply.text());
    match kind {
        Kind::Read => Error::Unavailable {
            store: STORE,
            message,
            source: None,
        },
        Kind::Write => Error::Indeterminate {
            store: STORE,
            message,
            source: None,
        },
    }
}

impl Inner {
    /// Read the pair at `kv_key`, blocking while its index is `index` (if given): the pair, its
    /// index, and the observation.
    async fn get(&self, kv_key: &str, index: Option<u64>) -> Result<(Option<Pair>, Observed)> {
        let mut path = format!("/v1/kv/{}", escape_path(kv_key));
        let timeout = match index {
            Some(index) => {
                path.push_str(&format!("?index={index}&wait={}s", BLOCKING_WAIT.as_secs()));
                // The agent may add up to wait/16 of jitter.
                BLOCKING_WAIT + BLOCKING_WAIT / 16 + REQUEST_TIMEOUT
            }
            None => REQUEST_TIMEOUT,
        };
        let reply = self
            .agent
            .call(Method::GET, &path, None, Kind::Read, Some(timeout))
            .await?;
        // Taken once the answer is here: never before the write it shows.
        let now = boot_time();
        let pair = match reply.status {
            StatusCode::OK => decode_pair(&reply, kv_key)?,
            StatusCode::NOT_FOUND => None,
            _ => return Err(unexpected(&reply, &format!("reading {kv_key}"), Kind::Read)),
        };
        let index = match &pair {
            Some(p) => p.modify_index,
            // Never 0 (the docs' "Blocking Queries": treat an index below 1 as 1).
            None => reply.index.unwrap_or(1).max(1),
        };
        let observed = self.observe(kv_key, pair.as_ref(), index, now);
        Ok((pair, observed))
    }

    /// Note that `pair` was seen at `index`, at `now`: the observation as it stands. An answer
    /// older than the observation changes nothing.
    fn observe(&self, kv_key: &str, pair: Option<&Pair>, index: u64, now: Duration) -> Observed {
        let mut observed = self.observed.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = Observed {
            pair: pair.cloned(),
            index,
            at: now,
        };
        let entry = observed
            .entry(kv_key.to_owned())
            .or_insert_with(|| fresh.clone());
        if index > entry.index || (index == entry.index && entry.pair.as_ref() != pair) {
            *entry = fresh;
        }
        entry.clone()
    }

    /// The observation of `kv_key`, when it shows a free lock.
    fn seen_free(&self, kv_key: &str) -> Option<Observed> {
        let observed = self.observed.lock().unwrap_or_else(|e| e.into_inner());
        let seen = observed.get(kv_key)?;
        let pair = seen.pair.as_ref()?;
        matches!(parse_lock(kv_key, pair), Ok(Lock::Free { .. })).then(|| seen.clone())
    }

    /// The record of a lock, as seen at `observed`, with the time it has left; `None` when it
    /// is free or a Baton lease has run out. Another client's lock reports the TTL of its
    /// session, doubled (when Consul would invalidate it at the latest).
    async fn lease_record(&self, kv_key: &str, observed: &Observed) -> Result<Option<LeaseRecord>> {
        let Some(pair) = &observed.pair else {
            return Ok(None);
        };
        Ok(match parse_lock(kv_key, pair)? {
            Lock::Free { .. } => None,
            Lock::Baton { record, .. } => {
                let left = remaining(observed, &record, boot_time());
                (!left.is_zero())
                    .then(|| LeaseRecord::new(record.holder, FencingToken(record.token), left))
            }
            Lock::Other { session, holder } => {
                let ttl = self.session_ttl_of(&session).await?;
                Some(LeaseRecord::new(holder, FencingToken(0), ttl))
            }
        })
    }

    /// Twice the TTL of another client's session (at most how long it can hold unrenewed);
    /// 30 s (twice the Go API's default TTL) when it has none.
    async fn session_ttl_of(&self, session: &str) -> Result<Duration> {
        let reply = self
            .agent
            .call(
                Method::GET,
                &format!("/v1/session/info/{}", escape_query(session)),
                None,
                Kind::Read,
                Some(REQUEST_TIMEOUT),
            )
            .await?;
        let ttl = serde_json::from_slice::<Value>(&reply.body)
            .ok()
            .and_then(|v| v[0]["TTL"].as_str().map(str::to_owned))
            .and_then(|t| parse_go_seconds(&t));
        Ok(ttl.unwrap_or(Duration::from_secs(15)) * SESSION_TTL_MULTIPLIER)
    }
}

/// A Go duration of whole seconds as Consul writes a TTL: `10s`, `1m30s`, `1h0m0s`.
fn parse_go_seconds(s: &str) -> Option<Duration> {
    let mut total = 0u64;
    let mut number = 0u64;
    for c in s.chars() {
        match c {
            '0'..='9' => number = number * 10 + u64::from(c.to_digit(10)?),
            'h' => (total, number) = (total + number * 3600, 0),
            'm' => (total, number) = (total + number * 60, 0),
            's' => (total, number) = (total + number, 0),
            _ => return None,
        }
    }
    (total > 0).then(|| Duration::from_secs(total))
}

/// Whether a session of `ttl` renewed at `renewed_at` still lasts a `lease` sent at `now`:
/// Consul keeps it until at least `renewed_at + 2 × ttl`; a tenth of the slack is kept for the
/// drift of Consul's timer.
fn session_outlasts(renewed_at: Duration, now: Duration, ttl: Duration, lease: Duration) -> bool {
    let covered = (ttl * SESSION_TTL_MULTIPLIER)
        .saturating_sub(lease)
        .mul_f64(0.9);
    now.saturating_sub(renewed_at) <= covered
}

/// The time a Baton lease has left, judged from when its index was first seen.
fn remaining(observed: &Observed, record: &Record, now: Duration) -> Duration {
    (observed.at + record.lease()).saturating_sub(now)
}

#[async_trait]
impl LeaseStore for ConsulStore {
    async fn join(&self, key: &str, candidate: &str) -> Result<Box<dyn Candidacy>> {
        Ok(Box::new(ConsulCandidacy {
            inner: self.inner.clone(),
            key: key.to_owned(),
            kv_key: lock_key(key),
            candidate: candidate.to_owned(),
            session: None,
            renewed_at: Duration::ZERO,
            held: None,
            held_index: None,
        }))
    }

    async fn read(&self, key: &str) -> Result<Option<LeaseRecord>> {
        let kv_key = lock_key(key);
        let (_, observed) = self.inner.get(&kv_key, None).await?;
        self.inner.lease_record(&kv_key, &observed).await
    }

    async fn watch(&self, key: &str) -> Result<Option<Changes>> {
        Ok(Some(
            watch_changes(self.inner.clone(), lock_key(key)).await?,
        ))
    }

    /// A `request_to` field in the held lock's value, written with `?cas=` on the
    /// `ModifyIndex` read (Consul keeps the lock's session on a plain write).
    async fn request_handoff(&self, key: &str, to: Option<&str>) -> Result<Option<LeaseRecord>> {
        let kv_key = lock_key(key);
        for _ in 0..MAX_RACES {
            let (pair, observed) = self.inner.get(&kv_key, None).await?;
            let Some(pair) = pair else { return Ok(None) };
            let record = match parse_lock(&kv_key, &pair)? {
                Lock::Free { .. } => return Ok(None),
                Lock::Other { holder, .. } => {
                    return Err(Error::Config(format!(
                        "{kv_key} is held by {holder:?}, which is not a Baton candidate: it \
                         takes no handoff requests"
                    )));
                }
                Lock::Baton { record, .. } => record,
            };
            let left = remaining(&observed, &record, boot_time());
            if left.is_zero() {
                return Ok(None);
            }
            let held = LeaseRecord::new(record.holder.clone(), FencingToken(record.token), left);
            let asked = Some(to.map(str::to_owned));
            if to == Some(record.holder.as_str()) || record.request == asked {
                return Ok(Some(held));
            }
            let value = Record {
                request: asked,
                ..record
            }
            .to_value();
            let path = format!(
                "/v1/kv/{}?cas={}&flags={LOCK_FLAGS}",
                escape_path(&kv_key),
                pair.modify_index
            );
            let reply = self
                .inner
                .agent
                .call(
                    Method::PUT,
                    &path,
                    Some(value),
                    Kind::Write,
                    Some(REQUEST_TIMEOUT),
                )
                .await?;
            if reply.status != StatusCode::OK {
                return Err(unexpected(&reply, "leaving a handoff request", Kind::Write));
            }
            if reply.body.trim_ascii() == b"true" {
                return Ok(Some(held));
            }
            debug!(key = %kv_key, "lost a race to leave a handoff request");
        }
        Err(Error::Unavailable {
            store: STORE,
            message: format!(
                "{}: the lock at {kv_key} changed under every attempt to leave a request",
                self.inner.agent.location()
            ),
            source: None,
        })
    }

    /// The lock's value: `request_to` in a Baton lease that still runs (by this store's
    /// observation), or `mark_to` in the freed lock while its window runs.
    async fn pending_handoff(&self, key: &str) -> Result<Option<PendingHandoff>> {
        let kv_key = lock_key(key);
        let (pair, observed) = self.inner.get(&kv_key, None).await?;
        let Some(pair) = pair else { return Ok(None) };
        let now = boot_time();
        Ok(match parse_lock(&kv_key, &pair)? {
            Lock::Baton { record, .. } if !remaining(&observed, &record, now).is_zero() => {
                record.request.clone().map(|to| PendingHandoff::Requested {
                    holder: record.holder.clone(),
                    to,
                })
            }
            Lock::Free {
                mark: Some(mark), ..
            } => {
                let left = (observed.at + mark.window).saturating_sub(now);
                (!left.is_zero())
                    .then(|| PendingHandoff::Reserved(HandoffMark::new(mark.to, mark.from, left)))
            }
            _ => None,
        })
    }

    /// A KV pair per candidate, `PREFIX/.candidates/<id>` (see the module documentation,
    /// "Presence records").
    async fn announce(
        &self,
        key: &str,
        candidate: &str,
        priority: u32,
        ttl: Duration,
    ) -> Result<Option<Vec<Presence>>> {
        self.inner
            .announce(key, candidate, priority, ttl)
            .await
            .map(Some)
    }

    async fn candidates(&self, key: &str) -> Result<Option<Vec<Presence>>> {
        self.inner.candidates(key).await.map(Some)
    }

    async fn withdraw(&self, key: &str, candidate: &str) -> Result<()> {
        self.inner.withdraw(key, candidate).await
    }

    fn info(&self) -> StoreInfo {
        StoreInfo::new(STORE, self.inner.agent.location()).with_watch(true)
    }
}

/// One candidate in one election: its session, and the term it holds.
struct ConsulCandidacy {
    inner: Arc<Inner>,
    key: String,
    kv_key: String,
    candidate: String,
    /// The candidate's session and its TTL, once created.
    session: Option<(String, Duration)>,
    /// Boot-clock instant before the last successful renewal (or creation) of the session was
    /// sent: Consul keeps the session at least `2 × TTL` from then.
    renewed_at: Duration,
    /// The record of the term this candidacy holds.
    held: Option<Record>,
    /// The `ModifyIndex` of the lock as this candidacy last wrote it, while it holds it: a
    /// renewal checks it, so a request written since (which changed it) is read, not lost.
    held_index: Option<u64>,
}

impl std::fmt::Debug for ConsulCandidacy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulCandidacy")
            .field("key", &self.key)
            .field("candidate", &self.candidate)
            .field("session", &self.session.as_ref().map(|(id, _)| id))
            .finish_non_exhaustive()
    }
}

/// What a transaction answered.
enum TxnOutcome {
    /// Applied: the results' entries.
    Applied(Vec<Value>),
    /// Rolled back: the first error's text.
    RolledBack(String),
}

impl ConsulCandidacy {
    /// Renew this candidate's session, or create one for `lease` if it has none or Consul
    /// invalidated it. Sent before the lock is written: the session then lasts at least
    /// `2 × TTL ≥ lease` from before the write.
    ///
    /// A session renewed recently enough is not renewed again: one renewed (or created) at
    /// `t` lasts until at least `t + 2 × TTL`, and a lease acquired or renewed now must not
    /// outlive it, so a renewal is needed only once `now − t > 2 × TTL − lease` (less a tenth,
    /// for the drift of Consul's timer). With TTL ≥ lease that is at least one lease, so a
    /// leader renews its session about once a lease rather than at every renewal, and a
    /// follower that created its session recently acquires without renewing it (D103).
    async fn fresh_session(&mut self, lease: Duration) -> Result<String> {
        let ttl = session_ttl(lease)?;
        if let Some((id, had)) = self.session.clone() {
            if had == ttl && self.session_is_fresh(ttl, lease) {
                return Ok(id);
            }
            let sent = boot_time();
            if had == ttl && self.renew_session(&id).await? {
                self.renewed_at = sent;
                return Ok(id);
            }
            if had != ttl {
                self.destroy_session().await?;
            }
            self.session = None;
        }
        let body = json!({
            "Name": format!("Baton: {} on {}", self.candidate, self.key),
            "TTL": format!("{}s", ttl.as_secs()),
            "LockDelay": "0s",
            "Behavior": "release",
        });
        let sent = boot_time();
        let reply = self
            .inner
            .agent
            .call(
                Method::PUT,
                "/v1/session/create",
                Some(body.to_string().into_bytes()),
                Kind::Write,
                Some(REQUEST_TIMEOUT),
            )
            .await?;
        if reply.status != StatusCode::OK {
            return Err(unexpected(&reply, "creating a session", Kind::Write));
        }
        let id = serde_json::from_slice::<Value>(&reply.body)
            .ok()
            .and_then(|v| v["ID"].as_str().map(str::to_owned))
            .ok_or_else(|| unexpected(&reply, "creating a session", Kind::Write))?;
        self.session = Some((id.clone(), ttl));
        self.renewed_at = sent;
        Ok(id)
    }

    /// Whether the session, renewed at `renewed_at`, outlasts a lease sent from now.
    fn session_is_fresh(&self, ttl: Duration, lease: Duration) -> bool {
        session_outlasts(self.renewed_at, boot_time(), ttl, lease)
    }

    /// Whether the session is still there (renewed).
    async fn renew_session(&self, id: &str) -> Result<bool> {
        let reply = self
            .inner
            .agent
            .call(
                Method::PUT,
                &format!("/v1/session/renew/{}", escape_query(id)),
                None,
                Kind::Write,
                Some(REQUEST_TIMEOUT),
            )
            .await?;
        match reply.status {
            StatusCode::OK => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(unexpected(&reply, "renewing the session", Kind::Write)),
        }
    }

    async fn destroy_session(&mut self) -> Result<()> {
        if let Some((id, _)) = self.session.take() {
            let reply = self
                .inner
                .agent
                .call(
                    Method::PUT,
                    &format!("/v1/session/destroy/{}", escape_query(&id)),
                    None,
                    Kind::Write,
                    Some(REQUEST_TIMEOUT),
                )
                .await?;
            if reply.status != StatusCode::OK {
                return Err(unexpected(&reply, "destroying the session", Kind::Write));
            }
        }
        Ok(())
    }

    async fn txn(&self, ops: Value) -> Result<TxnOutcome> {
        let reply = self
            .inner
            .agent
            .call(
                Method::PUT,
                "/v1/txn",
                Some(ops.to_string().into_bytes()),
                Kind::Write,
                Some(REQUEST_TIMEOUT),
            )
            .await?;
        let body: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
        match reply.status {
            StatusCode::OK => Ok(TxnOutcome::Applied(
                body["Results"].as_array().cloned().unwrap_or_default(),
            )),
            StatusCode::CONFLICT => Ok(TxnOutcome::RolledBack(
                body["Errors"][0]["What"]
                    .as_str()
                    .unwrap_or("rolled back")
                    .to_owned(),
            )),
            _ => Err(unexpected(&reply, "a transaction on the lock", Kind::Write)),
        }
    }

    fn lock_op(&self, session: &str, record: &Record) -> Value {
        json!({"KV": {
            "Verb": "lock",
            "Key": self.kv_key,
            "Value": base64::engine::general_purpose::STANDARD.encode(record.to_value()),
            "Flags": LOCK_FLAGS,
            "Session": session,
        }})
    }

    /// The current record, for `Lost`.
    async fn current(&self) -> Result<Option<LeaseRecord>> {
        let (_, observed) = self.inner.get(&self.kv_key, None).await?;
        self.inner.lease_record(&self.kv_key, &observed).await
    }

    /// Create the free lock at a missing key: `PUT ?cas=0` with the lock's flags and no value.
    /// `false` (someone created the key first) is fine: the caller reads it again.
    async fn create_free(&self) -> Result<()> {
        let path = format!(
            "/v1/kv/{}?cas=0&flags={LOCK_FLAGS}",
            escape_path(&self.kv_key)
        );
        let reply = self
            .inner
            .agent
            .call(
                Method::PUT,
                &path,
                Some(Vec::new()),
                Kind::Write,
                Some(REQUEST_TIMEOUT),
            )
            .await?;
        if reply.status != StatusCode::OK {
            return Err(unexpected(&reply, "creating the lock's key", Kind::Write));
        }
        Ok(())
    }

    /// Release the lock this candidacy's session holds (with `value`, which Consul writes with
    /// the release), then destroy the session.
    async fn unlock(&mut self, value: Vec<u8>) -> Result<()> {
        if let Some((id, _)) = &self.session {
            let path = format!(
                "/v1/kv/{}?release={}&flags={LOCK_FLAGS}",
                escape_path(&self.kv_key),
                escape_query(id)
            );
            let reply = self
                .inner
                .agent
                .call(
                    Method::PUT,
                    &path,
                    Some(value),
                    Kind::Write,
                    Some(REQUEST_TIMEOUT),
                )
                .await?;
            if reply.status != StatusCode::OK {
                return Err(unexpected(&reply, "releasing the lock", Kind::Write));
            }
        }
        self.held = None;
        self.held_index = None;
        // The session holds no lock now; if it cannot be destroyed, Consul ends it within
        // 2 x TTL (the Go API's renewer ignores this error too).
        if let Err(e) = self.destroy_session().await {
            debug!(key = %self.key, error = %e, "could not destroy the session after a release");
        }
        Ok(())
    }
}

#[async_trait]
impl Candidacy for ConsulCandidacy {
    async fn try_acquire(&mut self, ttl: Duration) -> Result<Acquire> {
        let lease_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut last = None;
        for attempt in 0..MAX_RACES {
            // A free lock this store already saw (a follower's blocking query just reported the
            // release) is locked without reading it again: the transaction checks its index.
            let seen = (attempt == 0)
                .then(|| self.inner.seen_free(&self.kv_key))
                .flatten();
            let (pair, observed) = match seen {
                Some(seen) => (seen.pair.clone(), seen),
                None => self.inner.get(&self.kv_key, None).await?,
            };
            let Some(present) = &pair else {
                // A missing key's index cannot be checked in a transaction (a key created and
                // deleted since the read would pass `check-not-exists`, and a token minted from
                // the read could repeat one minted in between). So the free lock is created
                // first (`cas=0`, the lock's flags, no session: what `consul lock` sees as
                // free), and locked at its own index on the next pass.
                self.create_free().await?;
                continue;
            };
            let lock = parse_lock(&self.kv_key, present)?;
            let own = self.session.as_ref().map(|(id, _)| id.as_str());
            // The check that the key is as read, and the holder to remove first, if any.
            let (check, remove, high_water) = match lock {
                Lock::Baton { session, .. } | Lock::Other { session, .. }
                    if Some(session.as_str()) == own =>
                {
                    // This candidacy's own lock, from an acquire whose answer was lost or a
                    // term the engine has ended: give it back, then compete afresh.
                    let value = pair.map(|p| p.value).unwrap_or_default();
                    self.unlock(value).await?;
                    continue;
                }
                Lock::Baton { session, record } => {
                    let left = remaining(&observed, &record, boot_time());
                    if !left.is_zero() {
                        return Ok(Acquire::Held(LeaseRecord::new(
                            record.holder,
                            FencingToken(record.token),
                            left,
                        )));
                    }
                    (
                        json!({"KV": {"Verb": "check-index", "Key": self.kv_key, "Index": observed.index}}),
                        Some(session),
                        record.token,
                    )
                }
                Lock::Other { session, holder } => {
                    let ttl = self.inner.session_ttl_of(&session).await?;
                    return Ok(Acquire::Held(LeaseRecord::new(
                        holder,
                        FencingToken(0),
                        ttl,
                    )));
                }
                Lock::Free { high_water, mark } => {
                    if let Some(mark) = mark {
                        let left = (observed.at + mark.window).saturating_sub(boot_time());
                        let mark = HandoffMark::new(mark.to, mark.from, left);
                        if !left.is_zero() && !mark.admits(&self.candidate) {
                            return Ok(Acquire::Reserved(mark));
                        }
                    }
                    (
                        json!({"KV": {"Verb": "check-index", "Key": self.kv_key, "Index": observed.index}}),
                        None,
                        high_water,
                    )
                }
            };
            let session = self.fresh_session(ttl).await?;
            let record = Record {
                holder: self.candidate.clone(),
                token: observed.index.max(high_water) + 1,
                lease_ms,
                ..Record::default()
            };
            let mut ops = vec![check];
            if let Some(holder) = &remove {
                ops.push(json!({"Session": {"Verb": "delete", "Session": {"ID": holder}}}));
            }
            ops.push(self.lock_op(&session, &record));
            match self.txn(Value::Array(ops)).await? {
                TxnOutcome::Applied(results) => {
                    let index = results
                        .last()
                        .and_then(|r| r["KV"]["ModifyIndex"].as_u64())
                        .unwrap_or(observed.index + 1);
                    let pair = Pair {
                        modify_index: index,
                        flags: LOCK_FLAGS,
                        session: session.clone(),
                        value: record.to_value(),
                    };
                    self.inner
                        .observe(&self.kv_key, Some(&pair), index, boot_time());
                    let token = FencingToken(record.token);
                    self.held = Some(record);
                    self.held_index = Some(index);
                    debug!(key = %self.key, token = token.0, took_over = remove.is_some(), "acquired");
                    return Ok(Acquire::Acquired(Lease::new(
                        self.key.clone(),
                        self.candidate.clone(),
                        token,
                    )));
                }
                TxnOutcome::RolledBack(what) if what.contains("lock delay") => {
                    // Another client's session ended with a lock-delay: wait it out.
                    let holder = match &pair {
                        Some(p) => other_holder(&p.value, &p.session),
                        None => String::new(),
                    };
                    return Ok(Acquire::Held(LeaseRecord::new(
                        if holder.starts_with("session ") || holder.is_empty() {
                            "(a lock-delay)".to_owned()
                        } else {
                            holder
                        },
                        FencingToken(0),
                        LOCK_DELAY_RETRY.min(ttl),
                    )));
                }
                TxnOutcome::RolledBack(what) => {
                    if what.contains("invalid session") {
                        // Consul ended this candidate's session (its TTL, or a destroy): a new
                        // one on the next pass.
                        self.session = None;
                    }
                    debug!(key = %self.key, %what, "lost a race for the lock");
                    last = Some(what);
                }
            }
        }
        // Lost every race: report whoever holds it now.
        match self.current().await? {
            Some(record) => Ok(Acquire::Held(record)),
            None => Err(Error::Unavailable {
                store: STORE,
                message: format!(
                    "{}: the lock at {} changed under every attempt ({})",
                    self.inner.agent.location(),
                    self.kv_key,
                    last.unwrap_or_default()
                ),
                source: None,
            }),
        }
    }

    async fn renew(&mut self, lease: &Lease, _ttl: Duration) -> Result<Renew> {
        let (Some(record), Some((session, _))) = (self.held.clone(), self.session.clone()) else {
            return Ok(Renew::Lost(self.current().await?));
        };
        if record.token != lease.token.0 || lease.holder != self.candidate {
            return Ok(Renew::Lost(self.current().await?));
        }
        let lease_ttl = Duration::from_millis(record.lease_ms);
        let ttl = session_ttl(lease_ttl)?;
        if !self.session_is_fresh(ttl, lease_ttl) {
            let sent = boot_time();
            if !self.renew_session(&session).await? {
                self.session = None;
                self.held = None;
                return Ok(Renew::Lost(self.current().await?));
            }
            self.renewed_at = sent;
        }
        let mut record = record;
        for _ in 0..MAX_RACES {
            let next = Record {
                // Only a change counter: a record of someone else's at u64::MAX wraps to 0.
                renewal: record.renewal.wrapping_add(1),
                ..record.clone()
            };
            let mut ops = vec![
                json!({"KV": {"Verb": "check-session", "Key": self.kv_key, "Session": session}}),
            ];
            if let Some(index) = self.held_index {
                ops.push(
                    json!({"KV": {"Verb": "check-index", "Key": self.kv_key, "Index": index}}),
                );
            }
            ops.push(self.lock_op(&session, &next));
            match self.txn(Value::Array(ops)).await? {
                TxnOutcome::Applied(results) => {
                    let index = results.last().and_then(|r| r["KV"]["ModifyIndex"].as_u64());
                    if let Some(index) = index {
                        let pair = Pair {
                            modify_index: index,
                            flags: LOCK_FLAGS,
                            session: session.clone(),
                            value: next.to_value(),
                        };
                        self.inner
                            .observe(&self.kv_key, Some(&pair), index, boot_time());
                    }
                    self.held_index = index;
                    let request = next.request.clone();
                    self.held = Some(next);
                    return Ok(match request {
                        Some(to) => Renew::HandoffRequested { to },
                        None => Renew::Renewed,
                    });
                }
                TxnOutcome::RolledBack(what) => {
                    // The lock changed since this candidacy wrote it: another process left a
                    // request (kept, and reported), or the lock is no longer ours.
                    let (pair, _) = self.inner.get(&self.kv_key, None).await?;
                    let ours = match &pair {
                        Some(p) if p.session == session => match parse_lock(&self.kv_key, p)? {
                            Lock::Baton { record: now, .. }
                                if now.holder == self.candidate && now.token == lease.token.0 =>
                            {
                                Some((now, p.modify_index))
                            }
                            _ => None,
                        },
                        _ => None,
                    };
                    let Some((now, index)) = ours else {
                        debug!(key = %self.key, %what, "renewal refused: the lock is no longer ours");
                        self.held = None;
                        self.held_index = None;
                        return Ok(Renew::Lost(self.current().await?));
                    };
                    record = now;
                    self.held_index = Some(index);
                }
            }
        }
        Err(Error::Unavailable {
            store: STORE,
            message: format!(
                "{}: the lock at {} changed under every renewal",
                self.inner.agent.location(),
                self.kv_key
            ),
            source: None,
        })
    }

    async fn release(&mut self, lease: &Lease) -> Result<()> {
        match &self.held {
            Some(record) if record.token == lease.token.0 && lease.holder == self.candidate => {
                let value = record.plain().to_value();
                self.unlock(value).await
            }
            _ => Ok(()),
        }
    }

    /// One transaction: `unlock` with this candidacy's session (refused, a no-op, when the
    /// session no longer holds the lock) writing the record with the mark; then the session is
    /// destroyed, as after a release.
    async fn hand_over(&mut self, lease: &Lease, to: Option<&str>, window: Duration) -> Result<()> {
        let record = match &self.held {
            Some(record) if record.token == lease.token.0 && lease.holder == self.candidate => {
                record.plain()
            }
            _ => return Ok(()),
        };
        let Some((session, _)) = self.session.clone() else {
            self.held = None;
            return Ok(());
        };
        let marked = Record {
            mark: Some((
                to.map(str::to_owned),
                u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
            )),
            ..record
        };
        let ops = json!([{"KV": {
            "Verb": "unlock",
            "Key": self.kv_key,
            "Value": base64::engine::general_purpose::STANDARD.encode(marked.to_value()),
            "Flags": LOCK_FLAGS,
            "Session": session,
        }}]);
        match self.txn(ops).await? {
            TxnOutcome::Applied(results) => {
                if let Some(index) = results.last().and_then(|r| r["KV"]["ModifyIndex"].as_u64()) {
                    let pair = Pair {
                        modify_index: index,
                        flags: LOCK_FLAGS,
                        session: String::new(),
                        value: marked.to_value(),
                    };
                    self.inner
                        .observe(&self.kv_key, Some(&pair), index, boot_time());
                }
            }
            TxnOutcome::RolledBack(what) => {
                debug!(key = %self.key, %what, "handoff refused: the lock is no longer ours");
            }
        }
        self.held = None;
        self.held_index = None;
        if let Err(e) = self.destroy_session().await {
            debug!(key = %self.key, error = %e, "could not destroy the session after a handoff");
        }
        Ok(())
    }

    async fn leave(&mut self) -> Result<()> {
        self.held = None;
        self.destroy_session().await
    }

    async fn watch(&mut self) -> Result<Option<Changes>> {
        Ok(Some(
            watch_changes(self.inner.clone(), self.kv_key.clone()).await?,
        ))
    }
}

/// Changes to the lock at `kv_key`, from a blocking query held by a task of its own. The key
/// is read once before this returns, so no change after the call is missed. The stream ends on
/// an error (the engine subscribes again).
async fn watch_changes(inner: Arc<Inner>, kv_key: String) -> Result<Changes> {
    let (pair, observed) = inner.get(&kv_key, None).await?;
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        tokio::select! {
            () = tx.closed() => {}
            () = run_watch(&inner, &kv_key, pair, observed.index, &tx) => {}
        }
    });
    Ok(Box::pin(futures_util::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|change| (change, rx)) },
    )))
}

async fn run_watch(
    inner: &Inner,
    kv_key: &str,
    mut seen: Option<Pair>,
    mut index: u64,
    tx: &mpsc::Sender<Change>,
) {
    loop {
        let (pair, observed) = match inner.get(kv_key, Some(index)).await {
            Ok(answer) => answer,
            Err(e) => {
                debug!(key = kv_key, error = %e, "blocking query failed");
                return;
            }
        };
        // The docs' rules for blocking queries: an index that goes backwards (a restored
        // snapshot, another server) starts again from 0; never wait on 0.
        let fresh = observed.index;
        index = if fresh < index { 1 } else { fresh.max(1) };
        if pair == seen {
            continue;
        }
        let change = classify(kv_key, seen.as_ref(), pair.as_ref());
        seen = pair;
        if tx.send(change).await.is_err() {
            return;
        }
    }
}

/// What a change of the pair says to a follower.
fn classify(kv_key: &str, before: Option<&Pair>, after: Option<&Pair>) -> Change {
    let lock = |p: Option<&Pair>| p.and_then(|p| parse_lock(kv_key, p).ok());
    let holder_of = |l: &Lock| match l {
        Lock::Baton { session, record } => Some((session.clone(), record.holder.clone())),
        Lock::Other { session, holder } => Some((session.clone(), holder.clone())),
        Lock::Free { .. } => None,
    };
    let before_lock = lock(before);
    let after_lock = lock(after);
    match (&before_lock, &after_lock) {
        (
            _,
            Some(Lock::Free {
                mark: Some(mark), ..
            }),
        ) if !matches!(&before_lock, Some(Lock::Free { mark: Some(m), .. }) if m == mark) => {
            return Change::HandedOver {
                to: mark.to.clone(),
            };
        }
        (
            Some(Lock::Baton {
                session: s0,
                record: r0,
            }),
            Some(Lock::Baton {
                session: s1,
                record: r1,
            }),
        ) if s0 == s1 && r1.request.is_some() && r0.request != r1.request => {
            return Change::HandoffRequested {
                to: r1.request.clone().flatten(),
            };
        }
        _ => {}
    }
    let before = before_lock.as_ref().and_then(holder_of);
    match (after, after_lock) {
        (None, _) => Change::Released,
        (Some(_), None) => Change::Other,
        (Some(_), Some(after)) => match (before, holder_of(&after)) {
            (_, None) => Change::Released,
            (Some((s0, _)), Some((s1, holder))) if s0 == s1 => Change::Renewed { holder },
            (_, Some((_, holder))) => Change::Acquired { holder },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(flags: u64, session: &str, value: &[u8]) -> Pair {
        Pair {
            modify_index: 7,
            flags,
            session: session.into(),
            value: value.to_vec(),
        }
    }

    fn record(token: u64) -> Record {
        Record {
            holder: "web-1".into(),
            token,
            lease_ms: 1500,
            ..Record::default()
        }
    }

    #[test]
    fn session_ttls_cover_the_lease_within_consuls_bounds() {
        let s = |ms| session_ttl(Duration::from_millis(ms)).unwrap();
        assert_eq!(s(200), Duration::from_secs(10));
        assert_eq!(s(15_000), Duration::from_secs(15));
        assert_eq!(s(15_001), Duration::from_secs(16));
        assert_eq!(s(100_000_000), SESSION_TTL_MAX);
        assert!(matches!(
            session_ttl(Duration::from_secs(172_801)),
            Err(Error::Config(m)) if m.contains("shorter lease")
        ));
        // Safety: Consul keeps a session 2 x TTL after its last renewal, never less than the
        // lease.
        for ms in [1, 999, 1000, 9_999, 20_000, 86_400_000, 172_800_000] {
            let lease = Duration::from_millis(ms);
            assert!(
                session_ttl(lease).unwrap() * SESSION_TTL_MULTIPLIER >= lease,
                "{ms}"
            );
        }
    }

    #[test]
    fn a_session_is_renewed_before_it_could_end_within_a_lease() {
        let ms = Duration::from_millis;
        // A 15 s lease, a 15 s session: kept 30 s; no renewal needed for 13.5 s.
        let (ttl, lease) = (session_ttl(secs(15)).unwrap(), secs(15));
        assert!(session_outlasts(secs(100), secs(100), ttl, lease));
        assert!(session_outlasts(secs(100), ms(113_500), ttl, lease));
        assert!(!session_outlasts(secs(100), ms(113_501), ttl, lease));
        // A 1 s lease, Consul's 10 s minimum: kept 20 s, renewed every 17.1 s at most.
        let (ttl, lease) = (session_ttl(secs(1)).unwrap(), secs(1));
        assert!(session_outlasts(secs(0), ms(17_100), ttl, lease));
        assert!(!session_outlasts(secs(0), ms(17_101), ttl, lease));
        // Whatever the lease, what is left of the session after the wait covers a lease.
        for lease_ms in [1, 500, 9_999, 10_001, 15_000, 100_000, 172_800_000] {
            let lease = ms(lease_ms);
            let ttl = session_ttl(lease).unwrap();
            let limit = (ttl * SESSION_TTL_MULTIPLIER)
                .saturating_sub(lease)
                .mul_f64(0.9);
            assert!(session_outlasts(secs(5), secs(5) + limit, ttl, lease));
            assert!(limit + lease <= ttl * SESSION_TTL_MULTIPLIER, "{lease_ms}");
        }
    }

    #[test]
    fn records_round_trip_and_locks_are_classified() {
        let r = record(42);
        assert_eq!(parse_record(&r.to_value()), Some(r.clone()));
        let baton = pair(LOCK_FLAGS, "s1", &r.to_value());
        assert_eq!(
            parse_lock("k/.lock", &baton).unwrap(),
            Lock::Baton {
                session: "s1".into(),
                record: r.clone()
            }
        );
        assert_eq!(
            parse_lock("k/.lock", &pair(LOCK_FLAGS, "", &r.to_value())).unwrap(),
            Lock::Free {
                high_water: 42,
                mark: None
            }
        );
        // consul lock: no value.
        assert_eq!(
            parse_lock("k/.lock", &pair(LOCK_FLAGS, "s2", b"")).unwrap(),
            Lock::Other {
                session: "s2".into(),
                holder: "session s2".into()
            }
        );
        assert_eq!(
            parse_lock("k/.lock", &pair(LOCK_FLAGS, "s2", b"py-1")).unwrap(),
            Lock::Other {
                session: "s2".into(),
                holder: "py-1".into()
            }
        );
        assert_eq!(
            parse_lock("k/.lock", &pair(LOCK_FLAGS, "", b"anything")).unwrap(),
            Lock::Free {
                high_water: 0,
                mark: None
            }
        );
    }

    #[test]
    fn handoff_requests_and_marks_are_fields_of_the_value() {
        let asked = Record {
            request: Some(Some("carol".into())),
            ..record(42)
        };
        let value = asked.to_value();
        assert_eq!(parse_record(&value), Some(asked.clone()));
        assert_eq!(
            parse_lock("k/.lock", &pair(LOCK_FLAGS, "s1", &value)).unwrap(),
            Lock::Baton {
                session: "s1".into(),
                record: asked
            }
        );
        let anyone = Record {
            request: Some(None),
            ..record(42)
        };
        assert!(String::from_utf8_lossy(&anyone.to_value()).contains("\"request_to\":\"\""));
        assert_eq!(parse_record(&anyone.to_value()), Some(anyone));
        let marked = Record {
            mark: Some((None, 15_000)),
            ..record(42)
        };
        assert_eq!(
            parse_lock("k/.lock", &pair(LOCK_FLAGS, "", &marked.to_value())).unwrap(),
            Lock::Free {
                high_water: 42,
                mark: Some(Mark {
                    to: None,
                    from: "web-1".into(),
                    window: secs(15),
                })
            }
        );
        // A mark on a held lock, a mark without its window, an unknown field: not Baton's.
        assert!(parse_lock("k/.lock", &pair(LOCK_FLAGS, "s1", &marked.to_value())).is_err());
        for value in [
            r#"{"baton":1,"holder":"a","token":1,"lease_ms":1,"renewal":0,"mark_to":"b"}"#,
            r#"{"baton":1,"holder":"a","token":1,"lease_ms":1,"renewal":0,"request_to":7}"#,
            r#"{"baton":1,"holder":"a","token":1,"lease_ms":1,"renewal":0,"priority":1}"#,
        ] {
            assert_eq!(parse_record(value.as_bytes()), None, "{value}");
        }
    }

    #[test]
    fn pairs_that_are_not_locks_are_foreign() {
        for (p, why) in [
            (pair(0, "", b"hello"), "flags 0x0"),
            (pair(0xe0f6_9a2b_aa41_4de0, "s", b""), "not a lock's"),
            (
                pair(LOCK_FLAGS, "s", b"{\"baton\":2}"),
                "looks like Baton's record",
            ),
            (
                pair(
                    LOCK_FLAGS,
                    "s",
                    b"{\"baton\":1,\"holder\":\"a\",\"token\":0,\"lease_ms\":1,\"renewal\":0}",
                ),
                "looks like Baton's record",
            ),
        ] {
            match parse_lock("k/.lock", &p) {
                Err(Error::ForeignData { key, found }) => {
                    assert_eq!(key, "k/.lock");
                    assert!(found.contains(why), "{found}");
                }
                other => panic!("{why}: {other:?}"),
            }
        }
    }

    #[test]
    fn observations_start_when_the_index_changes() {
        let store = ConsulStore::open("consul://127.0.0.1:1").unwrap();
        let inner = &store.inner;
        let p = pair(LOCK_FLAGS, "s", &record(1).to_value());
        let first = inner.observe("k", Some(&p), 7, secs(100));
        assert_eq!(first.at, secs(100));
        assert_eq!(inner.observe("k", Some(&p), 7, secs(105)).at, secs(100));
        assert_eq!(
            remaining(&first, &record(1), secs(101)),
            Duration::from_millis(500)
        );
        assert_eq!(remaining(&first, &record(1), secs(102)), Duration::ZERO);
        let renewed = Pair {
            modify_index: 9,
            ..p.clone()
        };
        assert_eq!(
            inner.observe("k", Some(&renewed), 9, secs(106)).at,
            secs(106)
        );
        // An older answer, read before the renewal: changes nothing.
        let stale = inner.observe("k", Some(&p), 7, secs(107));
        assert_eq!((stale.index, stale.at), (9, secs(106)));
        let gone = inner.observe("k", None, 12, secs(108));
        assert!(gone.pair.is_none());
    }

    #[test]
    fn changes_of_the_pair() {
        let a = pair(LOCK_FLAGS, "s1", &record(1).to_value());
        let a2 = Pair {
            modify_index: 8,
            ..a.clone()
        };
        let free = pair(LOCK_FLAGS, "", &record(1).to_value());
        let b = pair(LOCK_FLAGS, "s2", b"py-1");
        let k = "k/.lock";
        assert_eq!(
            classify(k, Some(&a), Some(&a2)),
            Change::Renewed {
                holder: "web-1".into()
            }
        );
        assert_eq!(classify(k, Some(&a), Some(&free)), Change::Released);
        assert_eq!(classify(k, Some(&a), None), Change::Released);
        assert_eq!(
            classify(k, Some(&free), Some(&b)),
            Change::Acquired {
                holder: "py-1".into()
            }
        );
        assert_eq!(classify(k, None, Some(&pair(0, "", b""))), Change::Other);
        // A request on the same session, then the renewal that keeps it; a mark.
        let asked = pair(
            LOCK_FLAGS,
            "s1",
            &Record {
                request: Some(Some("c".into())),
                ..record(1)
            }
            .to_value(),
        );
        assert_eq!(
            classify(k, Some(&a), Some(&asked)),
            Change::HandoffRequested {
                to: Some("c".into())
            }
        );
        assert_eq!(
            classify(k, Some(&asked), Some(&asked)),
            Change::Renewed {
                holder: "web-1".into()
            }
        );
        let marked = pair(
            LOCK_FLAGS,
            "",
            &Record {
                mark: Some((None, 2000)),
                ..record(1)
            }
            .to_value(),
        );
        assert_eq!(
            classify(k, Some(&asked), Some(&marked)),
            Change::HandedOver { to: None }
        );
    }

    #[test]
    fn debug_output_never_shows_the_token() {
        let store = ConsulStore::open("consul://127.0.0.1:1?token=hunter2").unwrap();
        let shown = format!("{store:?} {:?}", store.info());
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn go_ttls() {
        assert_eq!(parse_go_seconds("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_go_seconds("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_go_seconds("1h0m0s"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_go_seconds(""), None);
        assert_eq!(parse_go_seconds("1.5s"), None);
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }
}
