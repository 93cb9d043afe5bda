//! The fake agent's data: the KV store, sessions, the raft index, lock-delays and session
//! timers, with Consul's state-store rules. Pure and synchronous: the server holds it behind a
//! mutex; the tests of this module drive it with chosen instants.
//!
//! Every rule cites the Consul source it follows (paths in `hashicorp/consul`).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

/// `structs.SessionTTLMultiplier` (`agent/structs/structs.go`): a session's TTL timer fires
/// after twice its TTL (`agent/consul/session_ttl.go`, `resetSessionTimer`).
pub const SESSION_TTL_MULTIPLIER: u32 = 2;
/// The smallest TTL a session may ask for: the server's default `session_ttl_min`
/// (`agent/config/default.go`), checked in `agent/consul/session_endpoint.go` `Apply`.
pub const SESSION_TTL_MIN: Duration = Duration::from_secs(10);
/// `SessionTTLMax` (`agent/consul/session_endpoint.go`... `structs.SessionTTLMax`): 24 h.
pub const SESSION_TTL_MAX: Duration = Duration::from_secs(86_400);
/// The lock-delay of a session that does not set one (`agent/session_endpoint.go`,
/// `SessionCreate`: `LockDelay: 15 * time.Second`).
pub const DEFAULT_LOCK_DELAY: Duration = Duration::from_secs(15);

/// A KV pair (`structs.DirEntry`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub create_index: u64,
    pub modify_index: u64,
    pub lock_index: u64,
    pub flags: u64,
    pub value: Vec<u8>,
    /// The session holding the lock; empty when unlocked.
    pub session: String,
}

/// What a session does to the keys it holds when it is invalidated (`structs.SessionBehavior`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behavior {
    Release,
    Delete,
}

impl Behavior {
    fn as_str(self) -> &'static str {
        match self {
            Behavior::Release => "release",
            Behavior::Delete => "delete",
        }
    }
}

/// A session (`structs.Session`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id: String,
    pub name: String,
    /// The TTL as the client wrote it (Consul keeps the string), `""` for none.
    pub ttl: String,
    pub lock_delay: Duration,
    pub behavior: Behavior,
    pub create_index: u64,
    pub modify_index: u64,
}

impl Session {
    fn ttl(&self) -> Option<Duration> {
        parse_go_duration(&self.ttl).ok().filter(|d| !d.is_zero())
    }
}

/// A failed operation, as the server's RPC error text (the HTTP layer answers 500 with it,
/// as `agent/http.go` does for RPC errors it does not recognise).
pub type OpError = String;

/// What a transaction operation asks for (`api.TxnOp`, KV or Session).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    Kv {
        verb: String,
        key: String,
        value: Vec<u8>,
        flags: u64,
        index: u64,
        session: String,
    },
    SessionDelete {
        id: String,
    },
}

/// The data, the index, and the timers.
#[derive(Debug)]
pub struct State {
    /// The last raft index applied.
    pub index: u64,
    /// The `kvs` table's index: the highest index of any KV write or delete (tombstones
    /// included: `agent/consul/state/kvs.go`, `kvsMaxIndex` reads `kvs` and `tombstones`).
    pub kvs_index: u64,
    pub kv: BTreeMap<String, Entry>,
    pub sessions: BTreeMap<String, Session>,
    /// When each session with a TTL is invalidated unless renewed.
    expiry: HashMap<String, Instant>,
    /// Keys on which a lock may not be taken before the instant (`state.lockDelay`).
    lock_delay: HashMap<String, Instant>,
    state_file: Option<PathBuf>,
}

impl State {
    /// A fresh state, or the one kept in `state_file`. Session timers start again at their
    /// full `2 × TTL`, as a newly elected Consul leader does (`agent/consul/session_ttl.go`,
    /// `initializeSessionTimers`); lock-delays are not kept (they live in memory in Consul
    /// too: `agent/consul/state/delay.go`).
    pub fn open(state_file: Option<PathBuf>, now: Instant) -> std::io::Result<State> {
        let mut state = State {
            index: 1,
            kvs_index: 0,
            kv: BTreeMap::new(),
            sessions: BTreeMap::new(),
            expiry: HashMap::new(),
            lock_delay: HashMap::new(),
            state_file,
        };
        if let Some(path) = state.state_file.clone()
            && path.exists()
        {
            let text = std::fs::read_to_string(&path)?;
            let saved: Value = serde_json::from_str(&text)
                .map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))?;
            state.load(&saved).map_err(|e| {
                std::io::Error::other(format!("{}: not a state file: {e}", path.display()))
            })?;
            let ids: Vec<String> = state.sessions.keys().cloned().collect();
            for id in ids {
                state.reset_timer(&id, now);
            }
        }
        Ok(state)
    }

    fn load(&mut self, saved: &Value) -> Result<(), String> {
        let u = |v: &Value, f: &str| v[f].as_u64().ok_or(format!("no {f}"));
        self.index = u(saved, "index")?;
        self.kvs_index = u(saved, "kvs_index")?;
        for e in saved["kv"].as_array().ok_or("no kv")? {
            let key = e["Key"].as_str().ok_or("no Key")?.to_owned();
            let entry = entry_from_json(e)?;
            self.kv.insert(key, entry);
        }
        for s in saved["sessions"].as_array().ok_or("no sessions")? {
            let session = Session {
                id: s["ID"].as_str().ok_or("no ID")?.to_owned(),
                name: s["Name"].as_str().unwrap_or_default().to_owned(),
                ttl: s["TTL"].as_str().unwrap_or_default().to_owned(),
                lock_delay: Duration::from_nanos(u(s, "LockDelay")?),
                behavior: if s["Behavior"] == "delete" {
                    Behavior::Delete
                } else {
                    Behavior::Release
                },
                create_index: u(s, "CreateIndex")?,
                modify_index: u(s, "ModifyIndex")?,
            };
            self.sessions.insert(session.id.clone(), session);
        }
        Ok(())
    }

    /// Write the data to the state file, if any (write a new file, then rename it).
    pub fn save(&self) -> std::io::Result<()> {
        let Some(path) = &self.state_file else {
            return Ok(());
        };
        let saved = json!({
            "index": self.index,
            "kvs_index": self.kvs_index,
            "kv": self.kv.iter().map(|(k, e)| entry_json(k, e, true)).collect::<Vec<_>>(),
            "sessions": self.sessions.values().map(session_json).collect::<Vec<_>>(),
        });
        let tmp = tmp_path(path);
        std::fs::write(&tmp, serde_json::to_vec(&saved)?)?;
        std::fs::rename(&tmp, path)
    }

    /// The index a single-key read reports: the entry's `ModifyIndex`, or for a missing key
    /// the `kvs` table's index, and never 0 (`agent/consul/kvs_endpoint.go`, `Get`: "Must
    /// provide non-zero index to prevent blocking").
    pub fn key_index(&self, key: &str) -> u64 {
        match self.kv.get(key) {
            Some(e) => e.modify_index,
            None => self.kvs_index.max(1),
        }
    }

    /// The index a recursive read reports: the `kvs` table's, at least 1.
    pub fn table_index(&self) -> u64 {
        self.kvs_index.max(1)
    }

    fn next_index(&mut self) -> u64 {
        self.index += 1;
        self.index
    }

    // ---- sessions (agent/consul/state/session.go, agent/consul/session_endpoint.go) ----

    /// Create a session from the body of `PUT /v1/session/create`.
    pub fn create_session(&mut self, body: &Value, now: Instant) -> Result<String, OpError> {
        let ttl = body["TTL"].as_str().unwrap_or_default().to_owned();
        if !ttl.is_empty() {
            let d =
                parse_go_duration(&ttl).map_err(|e| format!("Session TTL '{ttl}' invalid: {e}"))?;
            if !d.is_zero() && !(SESSION_TTL_MIN..=SESSION_TTL_MAX).contains(&d) {
                return Err(format!(
                    "Invalid Session TTL '{}', must be between [{}={}]",
                    d.as_nanos(),
                    go_duration(SESSION_TTL_MIN),
                    go_duration(SESSION_TTL_MAX)
                ));
            }
        }
        let behavior = match body["Behavior"].as_str().unwrap_or("release") {
            "" | "release" => Behavior::Release,
            "delete" => Behavior::Delete,
            other => return Err(format!("Invalid Behavior setting '{other}'")),
        };
        let lock_delay = match &body["LockDelay"] {
            Value::Null => DEFAULT_LOCK_DELAY,
            // `structs.Session.UnmarshalJSON` / `FixupLockDelay`: a number below 1000 is
            // seconds, otherwise nanoseconds.
            Value::Number(n) => {
                let n = n.as_u64().ok_or("LockDelay: not a duration")?;
                if n < 1000 {
                    Duration::from_secs(n)
                } else {
                    Duration::from_nanos(n)
                }
            }
            Value::String(s) => parse_go_duration(s).map_err(|e| format!("LockDelay: {e}"))?,
            other => return Err(format!("LockDelay: not a duration: {other}")),
        };
        let index = self.next_index();
        let id = uuid();
        let session = Session {
            id: id.clone(),
            name: body["Name"].as_str().unwrap_or_default().to_owned(),
            ttl,
            lock_delay,
            behavior,
            create_index: index,
            modify_index: index,
        };
        self.sessions.insert(id.clone(), session);
        self.reset_timer(&id, now);
        Ok(id)
    }

    /// Renew a session's TTL timer; `None` when it is gone (the endpoint answers 404).
    pub fn renew_session(&mut self, id: &str, now: Instant) -> Option<Session> {
        let session = self.sessions.get(id)?.clone();
        self.reset_timer(id, now);
        Some(session)
    }

    fn reset_timer(&mut self, id: &str, now: Instant) {
        if let Some(ttl) = self.sessions.get(id).and_then(Session::ttl) {
            self.expiry
                .insert(id.to_owned(), now + ttl * SESSION_TTL_MULTIPLIER);
        }
    }

    /// Destroy a session (a no-op for one that is gone), invalidating its locks.
    pub fn destroy_session(&mut self, id: &str, now: Instant) {
        if self.sessions.contains_key(id) {
            let index = self.next_index();
            self.invalidate(id, index, now);
        }
    }

    /// `deleteSessionTxn`: drop the session and, by its behaviour, release or delete every key
    /// it holds, setting the session's lock-delay on each.
    fn invalidate(&mut self, id: &str, index: u64, now: Instant) {
        let Some(session) = self.sessions.remove(id) else {
            return;
        };
        self.expiry.remove(id);
        let held: Vec<String> = self
            .kv
            .iter()
            .filter(|(_, e)| e.session == id)
            .map(|(k, _)| k.clone())
            .collect();
        for key in held {
            match session.behavior {
                Behavior::Release => {
                    let entry = self.kv.get_mut(&key).expect("a held key");
                    entry.session.clear();
                    entry.modify_index = index;
                }
                Behavior::Delete => {
                    self.kv.remove(&key);
                }
            }
            self.kvs_index = index;
            if !session.lock_delay.is_zero() {
                self.lock_delay
                    .insert(key.clone(), now + session.lock_delay);
            }
        }
    }

    /// The sessions whose TTL timers have fired by `now`, invalidated; whether any was.
    pub fn reap(&mut self, now: Instant) -> bool {
        let due: Vec<String> = self
            .expiry
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &due {
            let index = self.next_index();
            self.invalidate(id, index, now);
        }
        !due.is_empty()
    }

    /// The earliest session timer, if any.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.expiry.values().min().copied()
    }

    // ---- KV (agent/consul/state/kvs.go, agent/consul/kvs_endpoint.go) ----

    /// `kvsSetTxn`: write `entry` at `key` at `index`, keeping `CreateIndex` and `LockIndex`;
    /// the session too unless `update_session`. A write that changes nothing is skipped and
    /// keeps its `ModifyIndex` ("Skip further writing in the state store if the entry is not
    /// actually changed").
    fn set(&mut self, key: &str, mut entry: Entry, index: u64, update_session: bool) -> Entry {
        if let Some(existing) = self.kv.get(key) {
            entry.create_index = existing.create_index;
            entry.lock_index = existing.lock_index;
            if !update_session {
                entry.session.clone_from(&existing.session);
            }
            let mut same = entry.clone();
            same.modify_index = existing.modify_index;
            if &same == existing {
                return same;
            }
        } else {
            entry.create_index = index;
        }
        entry.modify_index = index;
        self.kv.insert(key.to_owned(), entry.clone());
        self.kvs_index = index;
        entry
    }

    fn plain(value: Vec<u8>, flags: u64) -> Entry {
        Entry {
            create_index: 0,
            modify_index: 0,
            lock_index: 0,
            flags,
            value,
            session: String::new(),
        }
    }

    /// Whether a lock-delay forbids locking `key` at `now` (`kvsPreApply` in
    /// `agent/consul/kvs_endpoint.go`, checked before the write).
    fn delayed(&self, key: &str, now: Instant) -> bool {
        self.lock_delay.get(key).is_some_and(|until| *until > now)
    }

    /// `PUT /v1/kv/KEY` without `cas`, `acquire` or `release`.
    pub fn kv_set(&mut self, key: &str, value: Vec<u8>, flags: u64) -> bool {
        let index = self.next_index();
        self.set(key, Self::plain(value, flags), index, false);
        true
    }

    /// `?cas=INDEX`: 0 creates only a missing key; otherwise the `ModifyIndex` must match
    /// (`kvsSetCASTxn`).
    pub fn kv_cas(&mut self, key: &str, value: Vec<u8>, flags: u64, cas: u64) -> bool {
        let ok = match self.kv.get(key) {
            None => cas == 0,
            Some(e) => cas != 0 && e.modify_index == cas,
        };
        if ok {
            let index = self.next_index();
            self.set(key, Self::plain(value, flags), index, false);
        }
        ok
    }

    /// `?acquire=SESSION` (`kvsLockTxn`).
    pub fn kv_lock(
        &mut self,
        key: &str,
        value: Vec<u8>,
        flags: u64,
        session: &str,
        now: Instant,
    ) -> Result<bool, OpError> {
        if self.delayed(key, now) {
            return Ok(false);
        }
        let index = self.index + 1;
        match self.lock_at(key, value, flags, session, index)? {
            Some(_) => {
                self.index = index;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn lock_at(
        &mut self,
        key: &str,
        value: Vec<u8>,
        flags: u64,
        session: &str,
        index: u64,
    ) -> Result<Option<Entry>, OpError> {
        if session.is_empty() {
            return Err("missing session".into());
        }
        if !self.sessions.contains_key(session) {
            return Err(format!("invalid session {session:?}"));
        }
        let lock_index = match self.kv.get(key) {
            Some(e) if e.session == session => e.lock_index,
            Some(e) if !e.session.is_empty() => return Ok(None),
            Some(e) => e.lock_index + 1,
            None => 1,
        };
        let mut entry = Self::plain(value, flags);
        entry.session = session.to_owned();
        let mut written = self.set(key, entry, index, true);
        if let Some(e) = self.kv.get_mut(key) {
            e.lock_index = lock_index;
            written = e.clone();
        }
        if written.modify_index == index {
            self.kvs_index = index;
        }
        Ok(Some(written))
    }

    /// `?release=SESSION` (`kvsUnlockTxn`): only the holder's session releases; the value and
    /// flags of the request are written with it.
    pub fn kv_unlock(&mut self, key: &str, value: Vec<u8>, flags: u64, session: &str) -> bool {
        match self.kv.get(key) {
            Some(e) if e.session == session && !session.is_empty() => {
                let index = self.next_index();
                self.set(key, Self::plain(value, flags), index, true);
                true
            }
            _ => false,
        }
    }

    /// `DELETE /v1/kv/KEY[?cas=INDEX]` (`kvsDeleteTxn`, `kvsDeleteCASTxn`).
    pub fn kv_delete(&mut self, key: &str, cas: Option<u64>) -> bool {
        let exists = self.kv.get(key).map(|e| e.modify_index);
        match (cas, exists) {
            (Some(c), Some(m)) if c != m => return false,
            (Some(c), None) if c != 0 => return false,
            _ => {}
        }
        if exists.is_some() {
            let index = self.next_index();
            self.kv.remove(key);
            self.kvs_index = index;
        }
        true
    }

    /// `DELETE ?recurse`: every key under a prefix.
    pub fn kv_delete_tree(&mut self, prefix: &str) -> bool {
        let keys: Vec<String> = self
            .kv
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect();
        if !keys.is_empty() {
            let index = self.next_index();
            for k in keys {
                self.kv.remove(&k);
            }
            self.kvs_index = index;
        }
        true
    }

    /// `PUT /v1/txn` (`agent/consul/state/txn.go`): every operation at one index, all or
    /// nothing. `Ok` with one result per operation that returns an entry; `Err` with the
    /// failing operation's position and text, nothing applied.
    pub fn txn(&mut self, ops: &[TxnOp], now: Instant) -> Result<Vec<Entry>, (usize, String)> {
        // The lock-delay check runs before the transaction (`txn_endpoint.go`, `preCheck`
        // calling `kvsPreApply`).
        for (i, op) in ops.iter().enumerate() {
            if let TxnOp::Kv { verb, key, .. } = op
                && verb == "lock"
                && self.delayed(key, now)
            {
                return Err((i, format!("failed to lock key {key:?} due to lock delay")));
            }
        }
        let snapshot = (
            self.index,
            self.kvs_index,
            self.kv.clone(),
            self.sessions.clone(),
            self.expiry.clone(),
            self.lock_delay.clone(),
        );
        let index = self.index + 1;
        let mut results = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            match self.txn_op(op, index, now) {
                Ok(Some(entry)) => results.push(entry),
                Ok(None) => {}
                Err(what) => {
                    (
                        self.index,
                        self.kvs_index,
                        self.kv,
                        self.sessions,
                        self.expiry,
                        self.lock_delay,
                    ) = snapshot;
                    return Err((i, what));
                }
            }
        }
        self.index = index;
        Ok(results)
    }

    fn txn_op(&mut self, op: &TxnOp, index: u64, now: Instant) -> Result<Option<Entry>, String> {
        let (verb, key, value, flags, cas, session) = match op {
            TxnOp::SessionDelete { id } => {
                self.invalidate(id, index, now);
                return Ok(None);
            }
            TxnOp::Kv {
                verb,
                key,
                value,
                flags,
                index,
                session,
            } => (verb.as_str(), key, value.clone(), *flags, *index, session),
        };
        let current = self.kv.get(key).cloned();
        let missing = || format!("key {key:?} doesn't exist");
        match verb {
            "set" => Ok(Some(self.set(key, Self::plain(value, flags), index, false))),
            "cas" => {
                let ok = match &current {
                    None => cas == 0,
                    Some(e) => cas != 0 && e.modify_index == cas,
                };
                if !ok {
                    return Err(format!("failed to set key {key:?}, index is stale"));
                }
                Ok(Some(self.set(key, Self::plain(value, flags), index, false)))
            }
            "lock" => match self.lock_at(key, value, flags, session, index)? {
                Some(e) => Ok(Some(e)),
                None => Err(format!("failed to lock key {key:?}, lock is already held")),
            },
            "unlock" => match &current {
                Some(e) if e.session == *session && !session.is_empty() => {
                    Ok(Some(self.set(key, Self::plain(value, flags), index, true)))
                }
                _ => Err(format!(
                    "failed to unlock key {key:?}, lock isn't held, or is held by another session"
                )),
            },
            "get" => current.map(Some).ok_or_else(missing),
            "check-index" => match current {
                Some(e) if e.modify_index == cas => Ok(Some(e)),
                Some(_) => Err(format!(
                    "current modify index {} != {cas}",
                    current.map_or(0, |e| e.modify_index)
                )),
                None => Err(missing()),
            },
            "check-session" => match current {
                Some(e) if e.session == *session => Ok(Some(e)),
                Some(_) => Err(format!(
                    "failed session check for key {key:?}, current session {:?} != {session:?}",
                    current.map(|e| e.session).unwrap_or_default()
                )),
                None => Err(missing()),
            },
            "check-not-exists" => match current {
                Some(_) => Err(format!("key {key:?} exists")),
                None => Ok(None),
            },
            "delete" => {
                if current.is_some() {
                    self.kv.remove(key);
                    self.kvs_index = index;
                }
                Ok(None)
            }
            "delete-cas" => match current {
                Some(e) if e.modify_index == cas => {
                    self.kv.remove(key);
                    self.kvs_index = index;
                    Ok(None)
                }
                _ => Err(format!("failed to delete key {key:?}, index is stale")),
            },
            other => Err(format!("unknown KV verb {other:?}")),
        }
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// A KV pair as the HTTP API shows it (`api.KVPair`); `with_value` false blanks the value, as
/// transaction results of other verbs than `get` do (`txn.go`).
pub fn entry_json(key: &str, e: &Entry, with_value: bool) -> Value {
    let mut v = json!({
        "LockIndex": e.lock_index,
        "Key": key,
        "Flags": e.flags,
        "Value": if with_value && !e.value.is_empty() {
            Value::String(base64::engine::general_purpose::STANDARD.encode(&e.value))
        } else {
            Value::Null
        },
        "CreateIndex": e.create_index,
        "ModifyIndex": e.modify_index,
    });
    if !e.session.is_empty() {
        v["Session"] = Value::String(e.session.clone());
    }
    v
}

fn entry_from_json(e: &Value) -> Result<Entry, String> {
    let u = |f: &str| e[f].as_u64().ok_or(format!("no {f}"));
    Ok(Entry {
        create_index: u("CreateIndex")?,
        modify_index: u("ModifyIndex")?,
        lock_index: u("LockIndex")?,
        flags: u("Flags")?,
        value: match e["Value"].as_str() {
            Some(s) => base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(|e| e.to_string())?,
            None => Vec::new(),
        },
        session: e["Session"].as_str().unwrap_or_default().to_owned(),
    })
}

/// A session as the HTTP API shows it (`api.SessionEntry`): `LockDelay` in nanoseconds.
pub fn session_json(s: &Session) -> Value {
    json!({
        "ID": s.id,
        "Name": s.name,
        "Node": "baton-fake-consul",
        "LockDelay": u64::try_from(s.lock_delay.as_nanos()).unwrap_or(u64::MAX),
        "Behavior": s.behavior.as_str(),
        "TTL": s.ttl,
        "NodeChecks": ["serfHealth"],
        "ServiceChecks": null,
        "CreateIndex": s.create_index,
        "ModifyIndex": s.modify_index,
    })
}

/// A random version-4-shaped UUID, as Consul's session ids are (`go-uuid`).
fn uuid() -> String {
    let b: Vec<u8> = (0..16).map(|_| fastrand::u8(..)).collect();
    let h = |r: std::ops::Range<usize>| b[r].iter().map(|x| format!("{x:02x}")).collect::<String>();
    format!(
        "{}-{}-{}-{}-{}",
        h(0..4),
        h(4..6),
        h(6..8),
        h(8..10),
        h(10..16)
    )
}

/// Parse a Go duration (`time.ParseDuration`): `10s`, `1m30s`, `500ms`, `0`.
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("time: invalid duration {s:?}");
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(bad());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let number: f64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let nanos_per = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total += Duration::from_nanos((number * nanos_per) as u64);
    }
    Ok(total)
}

/// A duration as Go prints it, for whole seconds: `10s`, `24h0m0s`.
fn go_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h{}m{}s", s / 3600, s % 3600 / 60, s % 60)
    } else if s >= 60 {
        format!("{}m{}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> (State, Instant) {
        let now = Instant::now();
        (State::open(None, now).unwrap(), now)
    }

    fn session(s: &mut State, now: Instant, body: Value) -> String {
        s.create_session(&body, now).unwrap()
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_go_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_go_duration("0"), Ok(Duration::ZERO));
        assert!(parse_go_duration("10").is_err());
        assert!(parse_go_duration("s").is_err());
        assert_eq!(go_duration(SESSION_TTL_MAX), "24h0m0s");
    }

    #[test]
    fn session_ttls_are_bounded_and_reaped_after_twice_their_ttl() {
        let (mut s, now) = state();
        let err = s.create_session(&json!({"TTL": "5s"}), now).unwrap_err();
        assert!(err.contains("must be between [10s=24h0m0s]"), "{err}");
        assert!(s.create_session(&json!({"Behavior": "keep"}), now).is_err());
        let id = session(&mut s, now, json!({"TTL": "10s", "LockDelay": "0s"}));
        assert!(!s.reap(now + Duration::from_secs(19)));
        assert!(
            s.renew_session(&id, now + Duration::from_secs(19))
                .is_some()
        );
        assert!(!s.reap(now + Duration::from_secs(38)));
        assert!(s.reap(now + Duration::from_secs(39)));
        assert!(
            s.renew_session(&id, now + Duration::from_secs(40))
                .is_none()
        );
    }

    #[test]
    fn locks_count_lock_index_and_invalidation_releases_with_lock_delay() {
        let (mut s, now) = state();
        let a = session(&mut s, now, json!({"TTL": "10s"}));
        let b = session(&mut s, now, json!({"LockDelay": "0s"}));
        assert_eq!(s.kv_lock("k", b"a".to_vec(), 7, &a, now), Ok(true));
        assert_eq!(s.kv["k"].lock_index, 1);
        assert_eq!(s.kv_lock("k", b"b".to_vec(), 7, &b, now), Ok(false));
        // The holder locks again: value written, LockIndex kept.
        assert_eq!(s.kv_lock("k", b"a2".to_vec(), 7, &a, now), Ok(true));
        assert_eq!(
            (s.kv["k"].lock_index, &s.kv["k"].value[..]),
            (1, &b"a2"[..])
        );
        assert!(!s.kv_unlock("k", vec![], 7, &b));
        // Destroying the holder releases the key and sets its 15 s default lock-delay.
        let before = s.kv["k"].modify_index;
        s.destroy_session(&a, now);
        assert_eq!(s.kv["k"].session, "");
        assert!(s.kv["k"].modify_index > before);
        assert_eq!(
            s.kv_lock("k", vec![], 7, &b, now + Duration::from_secs(14)),
            Ok(false)
        );
        assert_eq!(
            s.kv_lock("k", vec![], 7, &b, now + Duration::from_secs(15)),
            Ok(true)
        );
        assert_eq!(s.kv["k"].lock_index, 2);
        assert!(s.kv_lock("other", vec![], 7, "nope", now).is_err());
    }

    #[test]
    fn delete_behaviour_deletes_and_missing_keys_report_the_table_index() {
        let (mut s, now) = state();
        let a = session(&mut s, now, json!({"Behavior": "delete", "LockDelay": 0}));
        assert_eq!(s.kv_lock("k", vec![], 0, &a, now), Ok(true));
        let held = s.key_index("k");
        s.destroy_session(&a, now);
        assert!(!s.kv.contains_key("k"));
        assert!(s.key_index("k") > held);
        assert!(s.kv_cas("k", vec![1], 0, 0));
        assert!(!s.kv_cas("k", vec![2], 0, 0));
        let m = s.kv["k"].modify_index;
        assert!(!s.kv_delete("k", Some(m + 1)));
        assert!(s.kv_delete("k", Some(m)));
        assert!(s.key_index("k") > m);
    }

    #[test]
    fn unchanged_writes_keep_their_index() {
        let (mut s, _) = state();
        s.kv_set("k", vec![1], 0);
        let m = s.kv["k"].modify_index;
        s.kv_set("k", vec![1], 0);
        assert_eq!(s.kv["k"].modify_index, m);
        s.kv_set("k", vec![2], 0);
        assert!(s.kv["k"].modify_index > m);
    }

    #[test]
    fn transactions_are_all_or_nothing() {
        let (mut s, now) = state();
        let a = session(&mut s, now, json!({"LockDelay": "0s"}));
        let b = session(&mut s, now, json!({"LockDelay": "0s"}));
        let lock = |session: &str| TxnOp::Kv {
            verb: "lock".into(),
            key: "k".into(),
            value: vec![],
            flags: 0,
            index: 0,
            session: session.into(),
        };
        let check = |verb: &str, index: u64| TxnOp::Kv {
            verb: verb.into(),
            key: "k".into(),
            value: vec![],
            flags: 0,
            index,
            session: String::new(),
        };
        let got = s
            .txn(&[check("check-not-exists", 0), lock(&a)], now)
            .unwrap();
        let m = got[0].modify_index;
        assert_eq!(m, s.index);
        // Stale index: nothing applied, not even the session delete before it.
        let err = s
            .txn(
                &[
                    check("check-index", m - 1),
                    TxnOp::SessionDelete { id: a.clone() },
                    lock(&b),
                ],
                now,
            )
            .unwrap_err();
        assert_eq!(err.0, 0);
        assert!(s.sessions.contains_key(&a));
        let err = s
            .txn(
                &[
                    TxnOp::SessionDelete { id: a.clone() },
                    check("check-index", m),
                    lock(&b),
                ],
                now,
            )
            .unwrap_err();
        // The session delete released the key at this index, so the check fails.
        assert_eq!(err.0, 1);
        assert!(s.sessions.contains_key(&a) && s.kv["k"].session == a);
        let got = s
            .txn(
                &[
                    check("check-index", m),
                    TxnOp::SessionDelete { id: a.clone() },
                    lock(&b),
                ],
                now,
            )
            .unwrap();
        assert_eq!(got[1].session, b);
        assert_eq!(got[1].lock_index, 2);
        assert!(!s.sessions.contains_key(&a));
    }

    #[test]
    fn the_state_file_keeps_data_and_restarts_session_timers() {
        let dir = std::env::temp_dir().join(format!("baton-fake-consul-{:x}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("state.json");
        let now = Instant::now();
        let mut s = State::open(Some(file.clone()), now).unwrap();
        let a = s.create_session(&json!({"TTL": "10s"}), now).unwrap();
        s.kv_lock("k", b"v".to_vec(), 3, &a, now).unwrap();
        s.save().unwrap();
        let later = now + Duration::from_secs(15);
        let mut t = State::open(Some(file), later).unwrap();
        assert_eq!(t.kv, s.kv);
        assert_eq!(t.index, s.index);
        assert!(!t.reap(later + Duration::from_secs(19)));
        assert!(t.reap(later + Duration::from_secs(20)));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
