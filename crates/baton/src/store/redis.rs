//! Redis: the seed's provider, with the fencing token minted in the same script as the
//! acquire, push handoff, and protection against restarts that lose data.
//!
//! # Layout
//!
//! For an election key `K`:
//!
//! | key | type | content | expiry |
//! |---|---|---|---|
//! | `K` | string | the leader's candidate id, exactly as the seed stores it | the lease (`PX`) |
//! | `{K}:baton` | hash | `holder` (id of the last acquire), `token` (last fencing token minted) | none: the token outlives releases and expiries |
//!
//! so `redis-cli GET K` prints the leader and `redis-cli TTL K` its remaining lease, as in the
//! seed's README. The companion key is `{K}:baton`, whose hash tag makes it hash to the same
//! cluster slot as `K`; if `K` already contains a hash tag, the companion is `K:baton`, which
//! keeps that tag. Changes are published on the channel `baton:changes:K` (`released`,
//! `acquired:<id>`).
//!
//! # Scripts
//!
//! Every write is one Lua script, so it is atomic:
//!
//! * **acquire** runs `SET K <id> NX PX <lease>` and, in the same script, mints the token as
//!   `max(previous + 1, Redis TIME in µs)`, so tokens keep increasing even after a restart
//!   without persistence wipes the counter (as long as the Redis clock does not go back).
//! * **renew** runs `PEXPIRE` only if `K` holds this candidate's id *and* the companion holds
//!   this lease's token: two processes that share an id never renew each other's lease.
//! * **release** deletes `K` under the same check and publishes `released`.
//!
//! # Restarts that lose data
//!
//! When the acquire finds no token counter, the server is new or has lost its data (a restart
//! without persistence, a failover to a replica that had not seen the lease). The old leader may
//! still believe it leads until its deadline. So the new holder keeps and renews the lease but
//! acts only once the server has been up for a whole lease duration (`INFO server`,
//! `uptime_in_seconds`): Redis's own advice on delayed restarts, applied by the client. See
//! [`Lease::act_after`].
//!
//! # Connections
//!
//! One [`ConnectionManager`] (multiplexed, reconnecting, RESP3) per [`RedisStore`], shared by all
//! its clones and every election on it. It carries commands and the push messages of the
//! change channels; subscriptions are restored automatically after a reconnect. It connects
//! lazily: a store built while Redis is down works as soon as Redis is up.
//!
//! # Access control
//!
//! The minimal ACL rule for a user that runs elections on keys under `myapp:` is
//!
//! ```text
//! ACL SETUSER baton on >PASSWORD resetkeys ~myapp:* ~{myapp:*}:baton resetchannels &baton:changes:*
//!     -@all +@connection +evalsha +eval +script|load +info +subscribe +unsubscribe
//!     +get +set +del +pexpire +pttl +type +hget +hmget +hset +publish +time
//! ```

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, ErrorKind, PushKind, RedisError, Script, Value};
use tokio::sync::broadcast;

use super::{
    Acquire, Candidacy, Change, Changes, Lease, LeaseRecord, LeaseStore, Renew, StoreInfo,
    broadcast_changes,
};
use crate::{Error, FencingToken, Result, connect::redact};

/// `KEYS[1]` = key, `KEYS[2]` = companion hash; `ARGV[1]` = candidate, `ARGV[2]` = TTL in ms,
/// `ARGV[3]` = change channel.
const ACQUIRE: &str = r#"
local kt = redis.call('TYPE', KEYS[1]).ok
if kt ~= 'none' and kt ~= 'string' then return {'foreign', 'a ' .. kt .. ' at ' .. KEYS[1]} end
local mt = redis.call('TYPE', KEYS[2]).ok
if mt ~= 'none' and mt ~= 'hash' then return {'foreign', 'a ' .. mt .. ' at ' .. KEYS[2]} end
local holder = redis.call('GET', KEYS[1])
if holder then
  local pttl = redis.call('PTTL', KEYS[1])
  local meta = redis.call('HMGET', KEYS[2], 'holder', 'token')
  if pttl < 0 or (meta[1] and meta[1] ~= holder) then
    return {'foreign', 'a string Baton did not write at ' .. KEYS[1]}
  end
  return {'held', holder, meta[2] or '0', tostring(pttl)}
end
local last = redis.call('HGET', KEYS[2], 'token')
local fresh = '0'
if not last then fresh = '1'; last = '0' end
local now = redis.call('TIME')
local us = tonumber(now[1]) * 1000000 + tonumber(now[2])
local token = string.format('%.0f', math.max(tonumber(last) + 1, us))
redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
redis.call('HSET', KEYS[2], 'holder', ARGV[1], 'token', token)
redis.call('PUBLISH', ARGV[3], 'acquired:' .. ARGV[1])
return {'acquired', token, fresh}
"#;

/// `KEYS` as for [`ACQUIRE`]; `ARGV[1]` = candidate, `ARGV[2]` = token, `ARGV[3]` = TTL in ms.
const RENEW: &str = r#"
local kt = redis.call('TYPE', KEYS[1]).ok
if kt ~= 'none' and kt ~= 'string' then return {'foreign', 'a ' .. kt .. ' at ' .. KEYS[1]} end
local holder = redis.call('GET', KEYS[1])
local token = redis.call('HGET', KEYS[2], 'token')
if holder and holder == ARGV[1] and token == ARGV[2] then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {'renewed'}
end
if holder then
  return {'lost', holder, token or '0', tostring(redis.call('PTTL', KEYS[1]))}
end
return {'lost'}
"#;

/// `KEYS` as for [`ACQUIRE`]; `ARGV[1]` = candidate, `ARGV[2]` = token, `ARGV[3]` = channel.
const RELEASE: &str = r#"
if redis.call('TYPE', KEYS[1]).ok ~= 'string' then return 0 end
local holder = redis.call('GET', KEYS[1])
local token = redis.call('HGET', KEYS[2], 'token')
if holder == ARGV[1] and token == ARGV[2] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[3], 'released')
  return 1
end
return 0
"#;

/// `KEYS` as for [`ACQUIRE`].
const READ: &str = r#"
local kt = redis.call('TYPE', KEYS[1]).ok
if kt == 'none' then return {'free'} end
if kt ~= 'string' then return {'foreign', 'a ' .. kt .. ' at ' .. KEYS[1]} end
local holder = redis.call('GET', KEYS[1])
local pttl = redis.call('PTTL', KEYS[1])
local meta = redis.call('HMGET', KEYS[2], 'holder', 'token')
if pttl < 0 or (meta[1] and meta[1] ~= holder) then
  return {'foreign', 'a string Baton did not write at ' .. KEYS[1]}
end
return {'held', holder, meta[2] or '0', tostring(pttl)}
"#;

/// Check that `key` can have a companion in its cluster slot. A key with a `}` but no hash
/// tag cannot: wrapping it in `{..}` would end the tag at its own `}`.
fn check_key(key: &str) -> Result<()> {
    if key.contains('}') && !has_hash_tag(key) {
        return Err(Error::Config(format!(
            "the Redis key {key:?} contains '}}' outside a hash tag; Baton cannot place its token \
             counter in the same cluster slot: use a key without braces, or with a hash tag like {{app}}:leader"
        )));
    }
    Ok(())
}

/// The companion key of `key`, in the same cluster slot.
pub fn companion_key(key: &str) -> String {
    if has_hash_tag(key) {
        format!("{key}:baton")
    } else {
        format!("{{{key}}}:baton")
    }
}

/// Whether `key` has a Redis Cluster hash tag: a `{` followed later by a `}` with at least
/// one character between them.
fn has_hash_tag(key: &str) -> bool {
    key.find('{')
        .and_then(|open| key[open + 1..].find('}'))
        .is_some_and(|len| len > 0)
}

/// The channel on which changes to `key` are published.
pub fn change_channel(key: &str) -> String {
    format!("baton:changes:{key}")
}

type Routes = Arc<Mutex<HashMap<String, broadcast::Sender<Change>>>>;

/// A [`LeaseStore`] on a Redis server. Clones share one connection.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    conn: ConnectionManager,
    /// The URL with any password replaced.
    location: String,
    /// `host:port`, for error messages.
    address: String,
    routes: Routes,
    subscribed: tokio::sync::Mutex<HashSet<String>>,
    acquire: Script,
    renew: Script,
    release: Script,
    read: Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("location", &self.inner.location)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store for `url`: `redis://[user:password@]host[:port][/db]`. Connects lazily, on first
    /// use, so it can be built while Redis is down; each failed call then says
    /// "Failed to connect to Redis at HOST:PORT. Is Redis running?".
    ///
    /// Must be called inside a tokio runtime.
    pub fn open(url: &str) -> Result<RedisStore> {
        let location = redact(url);
        let client = Client::open(url).map_err(|e| {
            Error::Config(format!(
                "invalid Redis URL {location}: {e}; expected redis://[user:password@]host[:port][/db]"
            ))
        })?;
        let info = client.get_connection_info().clone();
        let address = match info.addr() {
            redis::ConnectionAddr::Tcp(h, p) => format!("{h}:{p}"),
            redis::ConnectionAddr::TcpTls { host, port, .. } => format!("{host}:{port}"),
            redis::ConnectionAddr::Unix(p) => p.display().to_string(),
            other => format!("{other:?}"),
        };
        // RESP3 carries push messages on the same multiplexed connection as commands.
        let redis_settings = info
            .redis_settings()
            .clone()
            .set_protocol(redis::ProtocolVersion::RESP3);
        let client = Client::open(info.set_redis_settings(redis_settings))
            .map_err(|e| Error::Config(format!("invalid Redis URL {location}: {e}")))?;

        let routes: Routes = Arc::default();
        let push_routes = routes.clone();
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(None) // every call is bounded by the engine
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1))
            .set_push_sender(move |info: redis::PushInfo| -> Result<(), ()> {
                route_push(&push_routes, info);
                Ok(())
            })
            .set_automatic_resubscription();
        let conn = ConnectionManager::new_lazy_with_config(client, config).map_err(|e| {
            Error::Config(format!(
                "cannot set up a Redis connection to {location}: {e}"
            ))
        })?;
        Ok(RedisStore {
            inner: Arc::new(Inner {
                conn,
                location,
                address,
                routes,
                subscribed: tokio::sync::Mutex::default(),
                acquire: Script::new(ACQUIRE),
                renew: Script::new(RENEW),
                release: Script::new(RELEASE),
                read: Script::new(READ),
            }),
        })
    }

    /// Check that Redis answers (`PING`), with a clear error if not.
    pub async fn ping(&self) -> Result<()> {
        let mut conn = self.inner.conn.clone();
        redis::cmd("PING")
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| self.error(e, "PING"))
    }

    async fn script(&self, script: &Script, key: &str, args: &[&str]) -> Result<Vec<String>> {
        let mut conn = self.inner.conn.clone();
        let mut call = script.key(key);
        call.key(companion_key(key));
        for a in args {
            call.arg(*a);
        }
        call.invoke_async(&mut conn)
            .await
            .map_err(|e| self.error(e, "script"))
    }

    /// Seconds since the server started (`INFO server`).
    async fn uptime(&self) -> Result<Duration> {
        let mut conn = self.inner.conn.clone();
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut conn)
            .await
            .map_err(|e| self.error(e, "INFO server"))?;
        info.lines()
            .find_map(|l| l.strip_prefix("uptime_in_seconds:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs)
            .ok_or_else(|| Error::Unavailable {
                store: "redis",
                message: "INFO server did not report uptime_in_seconds".into(),
                source: None,
            })
    }

    async fn subscribe(&self, key: &str) -> Result<Changes> {
        let channel = change_channel(key);
        let rx = {
            let mut routes = self.inner.routes.lock().unwrap_or_else(|e| e.into_inner());
            routes
                .entry(channel.clone())
                .or_insert_with(|| broadcast::channel(64).0)
                .subscribe()
        };
        let mut subscribed = self.inner.subscribed.lock().await;
        if !subscribed.contains(&channel) {
            let mut conn = self.inner.conn.clone();
            conn.subscribe(&channel)
                .await
                .map_err(|e| self.error(e, "SUBSCRIBE"))?;
            subscribed.insert(channel);
        }
        Ok(broadcast_changes(rx))
    }

    /// Map a client error into Baton's, naming the server but never the password.
    fn error(&self, e: RedisError, what: &str) -> Error {
        let address = &self.inner.address;
        if e.code() == Some("WRONGTYPE") {
            return Error::ForeignData {
                key: what.to_owned(),
                found: format!("a value of another type ({e})"),
            };
        }
        if e.code() == Some("NOPERM") {
            return Error::Config(format!(
                "the Redis user may not run {what} on {address}: {e}; see the minimal ACL rule in the docs of baton::store::redis"
            ));
        }
        let auth_failed = matches!(e.code(), Some("WRONGPASS" | "NOAUTH"))
            || e.kind() == ErrorKind::AuthenticationFailed;
        match e.kind() {
            _ if auth_failed => Error::Config(format!(
                "Redis at {address} rejected the credentials: check the user and password in the URL"
            )),
            ErrorKind::InvalidClientConfig => {
                Error::Config(format!("invalid Redis configuration for {address}: {e}"))
            }
            _ if e.is_connection_refusal() => Error::unavailable(
                "redis",
                format!("Failed to connect to Redis at {address}. Is Redis running?"),
                e,
            ),
            _ if e.is_timeout() || e.is_connection_dropped() || e.is_io_error() => {
                Error::indeterminate("redis", format!("{what} on {address}: connection lost"), e)
            }
            _ => Error::unavailable("redis", format!("{what} on {address} failed: {e}"), e),
        }
    }
}

/// Deliver a push message to the watchers of its channel. A disconnection wakes every watcher:
/// messages may have been lost, so they should look for themselves.
fn route_push(routes: &Routes, info: redis::PushInfo) {
    let routes = routes.lock().unwrap_or_else(|e| e.into_inner());
    match info.kind {
        PushKind::Message => {
            let (Some(channel), Some(payload)) = (info.data.first(), info.data.get(1)) else {
                return;
            };
            let (Some(channel), Some(payload)) = (text(channel), text(payload)) else {
                return;
            };
            if let Some(tx) = routes.get(&channel) {
                let change = match payload.strip_prefix("acquired:") {
                    Some(holder) => Change::Acquired {
                        holder: holder.to_owned(),
                    },
                    None if payload == "released" => Change::Released,
                    None => Change::Other,
                };
                let _ = tx.send(change);
            }
        }
        PushKind::Disconnection => {
            for tx in routes.values() {
                let _ = tx.send(Change::Other);
            }
        }
        _ => {}
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn foreign(key: &str, reply: &[String]) -> Error {
    Error::ForeignData {
        key: key.to_owned(),
        found: reply
            .get(1)
            .cloned()
            .unwrap_or_else(|| "unknown data".into()),
    }
}

fn parse_token(key: &str, s: &str) -> Result<FencingToken> {
    s.parse().map(FencingToken).map_err(|_| Error::ForeignData {
        key: companion_key(key),
        found: format!("a token that is not a number ({s:?})"),
    })
}

/// `held, holder, token, pttl` → record.
fn parse_record(key: &str, reply: &[String]) -> Result<LeaseRecord> {
    let [_, holder, token, pttl] = reply else {
        return Err(foreign(key, reply));
    };
    Ok(LeaseRecord {
        holder: holder.clone(),
        token: parse_token(key, token)?,
        ttl: Duration::from_millis(pttl.parse::<i64>().unwrap_or(0).max(0) as u64),
    })
}

fn ttl_ms(ttl: Duration) -> String {
    ttl.as_millis().max(1).to_string()
}

#[async_trait]
impl LeaseStore for RedisStore {
    async fn join(&self, key: &str, candidate: &str) -> Result<Box<dyn Candidacy>> {
        check_key(key)?;
        Ok(Box::new(RedisCandidacy {
            store: self.clone(),
            key: key.to_owned(),
            candidate: candidate.to_owned(),
        }))
    }

    async fn read(&self, key: &str) -> Result<Option<LeaseRecord>> {
        let reply = self.script(&self.inner.read, key, &[]).await?;
        match reply.first().map(String::as_str) {
            Some("free") => Ok(None),
            Some("held") => parse_record(key, &reply).map(Some),
            _ => Err(foreign(key, &reply)),
        }
    }

    async fn watch(&self, key: &str) -> Result<Option<Changes>> {
        self.subscribe(key).await.map(Some)
    }

    fn info(&self) -> StoreInfo {
        StoreInfo {
            name: "redis",
            location: self.inner.location.clone(),
            can_watch: true,
        }
    }
}

/// One candidate in a Redis election: a key and an id; no per-candidate state on the server.
#[derive(Debug)]
struct RedisCandidacy {
    store: RedisStore,
    key: String,
    candidate: String,
}

#[async_trait]
impl Candidacy for RedisCandidacy {
    async fn try_acquire(&mut self, ttl: Duration) -> Result<Acquire> {
        let channel = change_channel(&self.key);
        let reply = self
            .store
            .script(
                &self.store.inner.acquire,
                &self.key,
                &[&self.candidate, &ttl_ms(ttl), &channel],
            )
            .await?;
        match reply.first().map(String::as_str) {
            Some("held") => parse_record(&self.key, &reply).map(Acquire::Held),
            Some("acquired") => {
                let token = parse_token(&self.key, reply.get(1).map_or("", String::as_str))?;
                let fresh = reply.get(2).map(String::as_str) == Some("1");
                let act_after = if fresh {
                    // The counter was missing: a new server, or one that lost its data. Act
                    // only once it has been up for a whole lease.
                    let uptime = self.store.uptime().await?;
                    let wait = ttl.saturating_sub(uptime);
                    if !wait.is_zero() {
                        tracing::warn!(
                            key = %self.key,
                            uptime_s = uptime.as_secs(),
                            wait_ms = wait.as_millis() as u64,
                            "Redis has no token counter and restarted recently; \
                             holding the lease without acting until it has been up for a lease"
                        );
                    }
                    wait
                } else {
                    Duration::ZERO
                };
                Ok(Acquire::Acquired(Lease {
                    key: self.key.clone(),
                    holder: self.candidate.clone(),
                    token,
                    act_after,
                }))
            }
            _ => Err(foreign(&self.key, &reply)),
        }
    }

    async fn renew(&mut self, lease: &Lease, ttl: Duration) -> Result<Renew> {
        let token = lease.token.to_string();
        let reply = self
            .store
            .script(
                &self.store.inner.renew,
                &lease.key,
                &[&lease.holder, &token, &ttl_ms(ttl)],
            )
            .await?;
        match reply.first().map(String::as_str) {
            Some("renewed") => Ok(Renew::Renewed),
            Some("lost") if reply.len() == 1 => Ok(Renew::Lost(None)),
            Some("lost") => parse_record(&lease.key, &reply).map(|r| Renew::Lost(Some(r))),
            _ => Err(foreign(&lease.key, &reply)),
        }
    }

    async fn release(&mut self, lease: &Lease) -> Result<()> {
        let token = lease.token.to_string();
        let channel = change_channel(&lease.key);
        let mut conn = self.store.inner.conn.clone();
        let mut call = self.store.inner.release.key(&lease.key);
        call.key(companion_key(&lease.key))
            .arg(&lease.holder)
            .arg(&token)
            .arg(&channel);
        call.invoke_async::<i64>(&mut conn)
            .await
            .map(|_| ())
            .map_err(|e| self.store.error(e, "release"))
    }

    async fn watch(&mut self) -> Result<Option<Changes>> {
        self.store.subscribe(&self.key).await.map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn companion_key_shares_the_slot() {
        assert_eq!(companion_key("myapp:leader"), "{myapp:leader}:baton");
        assert_eq!(companion_key("{app}:leader"), "{app}:leader:baton");
        assert_eq!(companion_key("a{b"), "{a{b}:baton");
        assert!(check_key("a{}b").is_err());
        assert!(check_key("a}b").is_err());
        assert!(check_key("{app}:x}").is_ok());
    }
}
