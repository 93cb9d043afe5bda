//! Redis: the seed's provider, with the fencing token minted in the same script as the
//! acquire, push handoff, and protection against restarts that lose data; on one server, over
//! TLS, on a Redis Cluster or behind Sentinel.
//!
//! # Layout
//!
//! For an election key `K`:
//!
//! | key | type | content | expiry |
//! |---|---|---|---|
//! | `K` | string | the leader's candidate id, exactly as the seed stores it | the lease (`PX`) |
//! | `{K}:baton` | hash | `holder` (id of the last acquire), `token` (last fencing token minted); after a planned handoff also `handoff_to`, `handoff_from`, `handoff_until` | none: the token outlives releases and expiries |
//! | `{K}:candidates` | hash | presence records ([`LeaseStore::announce`]): candidate id → `<priority>:<expiry in ms, Redis TIME>` | with its last record |
//!
//! so `redis-cli GET K` prints the leader and `redis-cli TTL K` its remaining lease, as in the
//! seed's README. The companion key is `{K}:baton`, whose hash tag makes it hash to the same
//! cluster slot as `K`; if `K` already contains a hash tag, the companion is `K:baton`, which
//! keeps that tag. Changes are published on the channel `baton:changes:K` (`released`,
//! `acquired:<id>`, `renewed:<id>`, `handoff_requested:<id>`, `handed_over:<id>`): a follower that hears of an acquire or a renewal knows
//! the lease runs for another full term and waits without asking Redis, so idle followers
//! send no commands at all.
//!
//! # Scripts
//!
//! Every write is one Lua script, so it is atomic. Before it writes, a script checks that what
//! is there is Baton's: `K` absent, or a string with a TTL that the companion names as its
//! holder; the companion absent, or a hash of exactly `holder` and a numeric `token` (below
//! 2^53, so that Lua's numbers keep it exact), or those two and a handoff request naming the
//! holder, or, while `K` is absent, those two and a planned handoff's mark (below). Anything else is [`Error::ForeignData`] and is left as it was (a
//! property test plants random data of every type at both keys).
//!
//!
//! * **acquire** runs `SET K <id> NX PX <lease>` and, in the same script, mints the token as
//!   `max(previous + 1, Redis TIME in µs)`, so tokens keep increasing even after a restart
//!   without persistence wipes the counter (as long as the Redis clock does not go back).
//! * **renew** runs `PEXPIRE` only if `K` holds this candidate's id *and* the companion holds
//!   this lease's token: two processes that share an id never renew each other's lease.
//!   Renewals of one store are batched: those asked for within 5 ms of each other go out as one
//!   script that checks and extends each lease on its own (not on Redis Cluster), so a process
//!   with thousands of elections sends a few calls per second, not one per lease. The renewal a
//!   leader sends at once on hearing of a handoff request (`handoff_requested:<to>`) skips the
//!   batch window: it is on the path of a planned handoff.
//! * **release** deletes `K` under the same check and publishes `released`.
//! * **request a handoff** (another process, `baton handoff`, [`LeaseStore::request_handoff`])
//!   writes `handoff_to` (empty for anyone) and `handoff_from` (the holder) into the companion
//!   of a held key, touching nothing else; the holder's next renewal answers
//!   [`Renew::HandoffRequested`], and a release, a handoff or the next acquire removes them.
//! * **hand over** (a planned handoff, [`Candidacy::hand_over`]) deletes `K` under the same
//!   check, writes the mark into the companion (`handoff_to`: the candidate, or empty for
//!   anyone but the leaver; `handoff_from`; `handoff_until`: Redis `TIME` plus the window, in
//!   ms) and publishes `handed_over:<to>`. While the mark lasts, an acquire by anyone it does
//!   not admit answers [`Acquire::Reserved`]; the acquire that succeeds removes it. A mark that
//!   ran out is ignored.
//!
//! # Restarts and failovers that lose data
//!
//! When the acquire finds no token counter, the server is new or has lost its data: a restart
//! without persistence, or a failover to a replica that had not yet received the counter. The
//! old leader may still believe it leads until its deadline. So the new holder keeps and renews
//! the lease but acts only once that cannot be (see [`Lease::act_after`]):
//!
//! * once the server has been up for a whole lease duration (`INFO`, `uptime_in_seconds`,
//!   less one second because Redis rounds it up to as much as a second early): Redis's own
//!   advice on delayed restarts, applied by the client;
//! * a whole lease after the acquire if the server was promoted from replica (`INFO`'s
//!   `second_repl_offset` is set), since a promoted replica has usually been up for long.
//!
//! An acquire that finds the counter still waits until the server has been up for a lease (a
//! restart that kept the counter may have lost the key). It learns the uptime cheaply where it
//! can: `LASTSAVE` answers the server's start or a later save, so a last save more than a lease
//! (plus two seconds of rounding) ago proves the uptime without `INFO`, which costs about
//! 12 µs of the server's time per acquire; otherwise, or where `LASTSAVE` is refused (an ACL
//! without `+lastsave`, a managed service that renamed it), the script reads `INFO` as before
//! (docs/decisions.md D131).
//!
//! The counter is never deleted, so this wait happens once per key and data loss, not once per
//! election. Behind Sentinel, an acquire within one lease after the store moved to a new master
//! waits a lease too (see below).
//!
//! # URLs
//!
//! | URL | connects to |
//! |---|---|
//! | `redis://[user:password@]host[:port][/db]` | one server (port 6379 by default) |
//! | `rediss://[user:password@]host[:port][/db]` | one server, over TLS |
//! | `redis+cluster://[user:password@]host:port[,host:port...]` | a Redis Cluster, discovered from these seed nodes |
//! | `redis+sentinel://[user:password@]host[:port][,host[:port]...]/MASTER[/db]` | the master that these Sentinels (port 26379 by default) call `MASTER` |
//!
//! `rediss+cluster://` and `rediss+sentinel://` use TLS for every connection, the Sentinels'
//! included. Hosts are separated by commas, IPv6 addresses go in brackets (`[::1]:7000`). The
//! user and password are those of the data nodes (the cluster's nodes, Sentinel's master);
//! Sentinels are asked without credentials.
//!
//! The query may name PEM files for TLS, which Baton reads when the store is built:
//!
//! * `ca=PATH`: the CA certificate(s) to trust, instead of the system's;
//! * `cert=PATH&key=PATH`: a client certificate and its key, for servers that require one
//!   (`tls-auth-clients yes`).
//!
//! For example `rediss://cache:6380/?ca=/etc/myapp/ca.pem&cert=/etc/myapp/client.pem&key=/etc/myapp/client.key`.
//! [`RedisStore::builder`] takes the same certificates as bytes. Other options are refused, so
//! that a misspelt one is not silently ignored.
//!
//! # TLS
//!
//! TLS is rustls, with ring as its crypto provider: Baton installs ring's provider as the
//! process default only if the application has not installed one. The server's certificate must
//! chain to the CA given with `ca=` or, without it, to one in the system's trust store
//! (`rustls-native-certs`; on Linux, `/etc/ssl/certs`). The system store rather than a bundled
//! copy of Mozilla's roots (`webpki-roots`), so that a company CA installed on the host works
//! without configuration and public CAs follow the host's updates; a host without a trust store
//! (a bare container image) then needs `ca=` or the `ca-certificates` package. The certificate
//! must be valid for the host name in the URL; in a cluster, and behind Sentinel, for the
//! address the cluster or Sentinel announces, which is usually an IP address (an IP SAN).
//! Name checks cannot be turned off: a `#insecure` fragment is refused.
//!
//! # Redis Cluster
//!
//! Every script names `K` and its companion as its two keys, which share a slot by
//! construction, so the client sends it to the master of `K`'s slot and Redis accepts it there
//! (no `CROSSSLOT`). Different keys land on different masters. A `PUBLISH` from a script reaches
//! subscribers on every node (the cluster bus forwards it), so the subscription to a key's
//! channel can live on any node: the client puts it on the node of the channel's slot and
//! subscribes again when it rebuilds its connections. The restart guard asks the master of
//! `K`'s slot.
//!
//! redis-rs sends `READONLY` on every node connection, so a master that a failover demoted to
//! replica runs Baton's scripts itself (they declare no flags, so the cluster does not route
//! them as writes) and answers `READONLY` instead of `MOVED`. Such an answer makes the store
//! replace its cluster connection by a new one, which reads the slot map again, and subscribe
//! its channels on it. Like a Sentinel store whose master moved (below), a store that met a
//! demoted master holds any lease it acquires within one lease of that for a lease before
//! acting on it.
//!
//! # Sentinel
//!
//! redis-rs's Sentinel support hands out plain connections, which do not reconnect, so Baton
//! asks the Sentinels itself: `SENTINEL GET-MASTER-ADDR-BY-NAME` on each in turn until one
//! knows the master, then checks that the server named is a master (`INFO replication`), and
//! keeps one reconnecting connection to it. A call that fails on the connection, that the
//! server answers with `READONLY` (it became a replica), or that the engine abandons at its
//! timeout, makes the next call ask the Sentinels again. Followers waiting on a push are
//! subscribed on the new master and woken when the master changes, and try at once.
//!
//! Until Sentinel reconfigures it, which takes seconds, a demoted master goes on accepting
//! writes, so the old leader can go on renewing there. Baton asks a Sentinel every second
//! whether the master moved, and a store that moved holds any lease it acquires within one
//! lease of the move back for a lease before acting on it: by then the old leader, which asks
//! Sentinel every second too, has moved, found its lease taken, and stepped down.
//!
//! **Caveat: replication is asynchronous.** A failover can promote a replica that had not yet
//! received the latest acquire or renewal. The lease is then lost: another candidate can
//! acquire it while the old leader still believes it leads, until the old leader's deadline.
//! If the token counter was lost too, the restart guard above holds the new holder back for a
//! lease; if the new holder's store saw the failover (Sentinel named a new master while it was
//! connected, or a cluster node answered `READONLY`), the rule above holds it back for a
//! lease. Exclusion of the leaders' work can therefore break only when all of these hold: the
//! new master lacks the old leader's last acquire or renewal, a candidate whose store did not
//! see the failover (a process started just after it; on a cluster, also after a master was
//! killed rather than demoted, when nothing answers `READONLY`) acquires there before the old
//! leader's deadline, and the counter survived. Both then act until the old leader's next
//! renewal finds its lease gone (at most the renew interval, then the time its work takes to
//! stop). Nothing in Redis can tell that case apart. **Fencing tokens** are what
//! protect resources then: the new leader's token is `max(previous + 1, TIME in µs)` on the new
//! master, higher than the old leader's as long as the servers' clocks agree to within the time
//! the failover took, so a resource that rejects lower tokens rejects the old leader. The same
//! holds for a Redis Cluster failover. `min-replicas-to-write` narrows the window but does not
//! close it.
//!
//! # Connections
//!
//! One connection per [`RedisStore`], shared by all its clones and every election on it: a
//! [`ConnectionManager`](redis::aio::ConnectionManager) (multiplexed, reconnecting, RESP3) for
//! one server and for Sentinel's master, a cluster connection for a cluster. It carries
//! commands and the push messages of the change channels; subscriptions are restored
//! automatically after a reconnect. It connects lazily: a store built while Redis is down works
//! as soon as Redis is up.
//!
//! # Access control
//!
//! The minimal ACL rule for a user that runs elections on keys under `myapp:` is
//!
//! ```text
//! ACL SETUSER baton on >PASSWORD resetkeys ~myapp:* ~{myapp:*}:baton ~{myapp:*}:candidates resetchannels &baton:changes:*
//!     -@all +@connection +evalsha +eval +script|load +info +subscribe +unsubscribe
//!     +get +set +del +pexpire +pttl +type +hget +hmget +hgetall +hset +hlen +publish +time +lastsave
//! ```
//!
//! plus `+cluster|slots` on a Redis Cluster, where the client reads the slot map. `+lastsave`
//! is optional: without it, every acquire reads `INFO` instead (see above).

mod batch;
mod conn;
mod target;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use redis::{ErrorKind, RedisError, Script};
use tokio::sync::{mpsc, oneshot};

use self::conn::{Connection, PubSub};
use super::cert::{CertFault, RENEW_OR_CHECK_CLOCKS};
use super::{
    Acquire, Candidacy, Change, Changes, HandoffMark, Lease, LeaseRecord, LeaseStore,
    PendingHandoff, Presence, Renew, StoreInfo,
};
use crate::{Error, FencingToken, Result, connect::redact};

/// `KEYS[1]` = key, `KEYS[2]` = companion hash; `ARGV[1]` = candidate, `ARGV[2]` = TTL in ms,
/// `ARGV[3]` = change channel.
const ACQUIRE: &str = r#"
local kt = redis.call('TYPE', KEYS[1]).ok
if kt ~= 'none' and kt ~= 'string' then return {'foreign', 'a ' .. kt .. ' at ' .. KEYS[1]} end
local mt = redis.call('TYPE', KEYS[2]).ok
if mt ~= 'none' and mt ~= 'hash' then return {'foreign', 'a ' .. mt .. ' at ' .. KEYS[2]} end
local meta = redis.call('HMGET', KEYS[2], 'holder', 'token', 'handoff_to', 'handoff_from', 'handoff_until')
if mt == 'hash' then
  local n = redis.call('HLEN', KEYS[2])
  if not (meta[1] and meta[2] and string.match(meta[2], '^%d+$')
      and tonumber(meta[2]) < 9007199254740992
      and (n == 2 or (n == 4 and meta[3] and meta[4] and meta[4] == meta[1])
        or (n == 5 and meta[3] and meta[4] and meta[5]
          and string.match(meta[5], '^%d+$')))) then
    return {'foreign', 'a hash Baton did not write at ' .. KEYS[2]}
  end
end
local holder = redis.call('GET', KEYS[1])
if holder then
  local pttl = redis.call('PTTL', KEYS[1])
  if pttl < 0 or meta[1] ~= holder or meta[5] then
    return {'foreign', 'a string Baton did not write at ' .. KEYS[1]}
  end
  return {'held', holder, meta[2], tostring(pttl)}
end
local now = redis.call('TIME')
local us = tonumber(now[1]) * 1000000 + tonumber(now[2])
if meta[5] then
  -- A planned handoff's mark: while it lasts, only its candidate (or, to anyone: anyone but
  -- the leader that handed over) may take the key.
  local left = tonumber(meta[5]) - math.floor(us / 1000)
  if left > 0 and ((meta[3] ~= '' and meta[3] ~= ARGV[1]) or (meta[3] == '' and meta[4] == ARGV[1])) then
    return {'reserved', meta[3], meta[4], string.format('%.0f', left)}
  end
end
local last = meta[2]
local fresh = '0'
if not last then fresh = '1'; last = '0' end
local token = string.format('%.0f', math.max(tonumber(last) + 1, us))
-- For the restart guard, read before any write: a script that fails midway keeps its writes.
-- With the counter present only the uptime matters, and LASTSAVE (the server's start, or a
-- later save) shows cheaply that it is over a lease; INFO costs some 12 us of server time.
local uptime, offset = nil, ''
if fresh == '0' then
  local saved = redis.pcall('LASTSAVE')
  if type(saved) == 'number' and tonumber(now[1]) - saved > tonumber(ARGV[2]) / 1000 + 2 then
    uptime = tostring(tonumber(now[1]) - saved)
  end
end
if not uptime then
  uptime = string.match(redis.call('INFO', 'server'), 'uptime_in_seconds:(%d+)') or ''
  offset = string.match(redis.call('INFO', 'replication'), 'second_repl_offset:(%-?%d+)') or ''
end
redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
if meta[3] then redis.call('DEL', KEYS[2]) end
redis.call('HSET', KEYS[2], 'holder', ARGV[1], 'token', token)
redis.call('PUBLISH', ARGV[3], 'acquired:' .. ARGV[1])
return {'acquired', token, fresh, uptime, offset}
"#;

/// `KEYS` as for [`ACQUIRE`]; `ARGV[1]` = candidate, `ARGV[2]` = token, `ARGV[3]` = TTL in ms,
/// `ARGV[4]` = change channel.
const RENEW: &str = r#"
local kt = redis.call('TYPE', KEYS[1]).ok
if kt ~= 'none' and kt ~= 'string' then return {'foreign', 'a ' .. kt .. ' at ' .. KEYS[1]} end
local holder = redis.call('GET', KEYS[1])
local token = redis.call('HGET', KEYS[2], 'token')
if holder and holder == ARGV[1] and token == ARGV[2] then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  redis.call('PUBLISH', ARGV[4], 'renewed:' .. ARGV[1])
  -- A handoff asked of this lease (HMGET only then: the benchmarks count acquires by it).
  if redis.call('HLEN', KEYS[2]) == 4 then
    local req = redis.call('HMGET', KEYS[2], 'handoff_to', 'handoff_from')
    if req[1] and req[2] == holder then return {'renewed', req[1]} end
  end
  return {'renewed'}
end
if holder then
  return {'lost', holder, token or '0', tostring(redis.call('PTTL', KEYS[1]))}
end
return {'lost'}
"#;

/// `KEYS` as for [`ACQUIRE`]; `ARGV[1]` = candidate, `ARGV[2]` = token, `ARGV[3]` = channel.
/// A handoff asked of the lease goes with it (the companion is written again without it:
/// `HDEL` is not in the documented ACL rule).
const RELEASE: &str = r#"
if redis.call('TYPE', KEYS[1]).ok ~= 'string' then return 0 end
local holder = redis.call('GET', KEYS[1])
local token = redis.call('HGET', KEYS[2], 'token')
if holder == ARGV[1] and token == ARGV[2] then
  redis.call('DEL', KEYS[1])
  if redis.call('HLEN', KEYS[2]) > 2 then
    redis.call('DEL', KEYS[2])
    redis.call('HSET', KEYS[2], 'holder', holder, 'token', token)
  end
  redis.call('PUBLISH', ARGV[3], 'released')
  return 1
end
return 0
"#;

/// The start of every script that reads a key as [`READ`] does (`KEYS` as for [`ACQUIRE`]):
/// `K` absent or a string, the companion absent or a hash Baton could have written (exactly
/// `holder` and a numeric `token` below 2^53; or those and a request naming the holder; or
/// those and a mark). Leaves `kt`, `mt`, `meta` (the companion's five fields) and `n` (its
/// length, 0 when absent) for the rest of the script.
const SHAPE_CHECK: &str = r#"
local kt = redis.call('TYPE', KEYS[1]).ok
if kt ~= 'none' and kt ~= 'string' then return {'foreign', 'a ' .. kt .. ' at ' .. KEYS[1]} end
local mt = redis.call('TYPE', KEYS[2]).ok
if mt ~= 'none' and mt ~= 'hash' then return {'foreign', 'a ' .. mt .. ' at ' .. KEYS[2]} end
local meta = redis.call('HMGET', KEYS[2], 'holder', 'token', 'handoff_to', 'handoff_from', 'handoff_until')
local n = 0
if mt == 'hash' then
  n = redis.call('HLEN', KEYS[2])
  if not (meta[1] and meta[2] and string.match(meta[2], '^%d+$')
      and tonumber(meta[2]) < 9007199254740992
      and (n == 2 or (n == 4 and meta[3] and meta[4] and meta[4] == meta[1])
        or (n == 5 and meta[3] and meta[4] and meta[5]
          and string.match(meta[5], '^%d+$')))) then
    return {'foreign', 'a hash Baton did not write at ' .. KEYS[2]}
  end
end
"#;

/// After [`SHAPE_CHECK`]: `{'free'}` when nobody holds `K`, else the holder (`holder`) and its
/// `pttl`, with `K` checked to be the string the companion names (and no mark beside it).
const HELD_CHECK: &str = r#"
if kt == 'none' then return {'free'} end
local holder = redis.call('GET', KEYS[1])
local pttl = redis.call('PTTL', KEYS[1])
if pttl < 0 or meta[1] ~= holder or meta[5] then
  return {'foreign', 'a string Baton did not write at ' .. KEYS[1]}
end
"#;

/// `KEYS` as for [`ACQUIRE`]; `ARGV[1]` = the candidate asked for (`''`: anyone else),
/// `ARGV[2]` = change channel. Leaves the request beside a held lease (`handoff_to`, and
/// `handoff_from` = the holder), publishes `handoff_requested:<to>`, and returns the holder's
/// record, as [`READ`] does. Runs after [`SHAPE_CHECK`] and [`HELD_CHECK`].
const REQUEST_HANDOFF: &str = r#"
if ARGV[1] ~= holder then
  redis.call('HSET', KEYS[2], 'handoff_to', ARGV[1], 'handoff_from', holder)
  redis.call('PUBLISH', ARGV[2], 'handoff_requested:' .. ARGV[1])
end
return {'held', holder, meta[2], tostring(pttl)}
"#;

/// `KEYS` as for [`ACQUIRE`]; `ARGV[1]` = candidate, `ARGV[2]` = token, `ARGV[3]` = channel,
/// `ARGV[4]` = the candidate handed over to (`''`: anyone else), `ARGV[5]` = the mark's
/// window in ms.
const HAND_OVER: &str = r#"
if redis.call('TYPE', KEYS[1]).ok ~= 'string' then return 0 end
local holder = redis.call('GET', KEYS[1])
local token = redis.call('HGET', KEYS[2], 'token')
if holder == ARGV[1] and token == ARGV[2] then
  local now = redis.call('TIME')
  local until_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + tonumber(ARGV[5])
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 'handoff_to', ARGV[4], 'handoff_from', ARGV[1],
    'handoff_until', string.format('%.0f', until_ms))
  redis.call('PUBLISH', ARGV[3], 'handed_over:' .. ARGV[4])
  return 1
end
return 0
"#;

/// `KEYS` as for [`ACQUIRE`]. Runs after [`SHAPE_CHECK`] and [`HELD_CHECK`].
const READ: &str = r#"
return {'held', holder, meta[2], tostring(pttl)}
"#;

/// `KEYS` as for [`ACQUIRE`]. The handoff under way: `{'requested', holder, to}` (a request
/// beside a held lease), `{'reserved', to, from, ms left}` (a live mark on a free key), or
/// `{'none'}`. Runs after [`SHAPE_CHECK`].
const PENDING: &str = r#"
if mt == 'none' then return {'none'} end
if kt == 'string' then
  if n == 4 and redis.call('GET', KEYS[1]) == meta[1] then
    return {'requested', meta[1], meta[3]}
  end
  return {'none'}
end
if n == 5 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local left = tonumber(meta[5]) - now
  if left > 0 then return {'reserved', meta[3], meta[4], string.format('%.0f', left)} end
end
return {'none'}
"#;

/// `KEYS[1]` = the presence hash ([`presence_key`]); `ARGV[1]` = what to do (`read`,
/// `announce`, `withdraw`), `ARGV[2]` = the candidate, `ARGV[3]` = its priority, `ARGV[4]` =
/// the record's TTL in ms. Each field of the hash is a candidate, its value
/// `<priority>:<expiry, Redis TIME in ms>`. Records that ran out are dropped by the next write
/// (the hash is written again whole: `DEL` and `HSET`, so the ACL rule needs no `HDEL`), and
/// the hash expires with its last record. Returns the live records other than a withdrawn
/// one, as `candidate, priority, ms left` triples.
const PRESENCE: &str = r#"
local kt = redis.call('TYPE', KEYS[1]).ok
if kt ~= 'none' and kt ~= 'hash' then return {'foreign', 'a ' .. kt .. ' at ' .. KEYS[1]} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local all = redis.call('HGETALL', KEYS[1])
local live = {}
local dropped = false
for i = 1, #all, 2 do
  local p, u = string.match(all[i + 1], '^(%d+):(%d+)$')
  if not p or #p > 10 or tonumber(p) > 4294967295 or #u > 15 then
    return {'foreign', 'a hash Baton did not write at ' .. KEYS[1]}
  end
  u = tonumber(u)
  if u > now and not (ARGV[1] ~= 'read' and all[i] == ARGV[2]) then
    live[#live + 1] = {all[i], p, u}
  else
    dropped = true
  end
end
if ARGV[1] == 'announce' then
  live[#live + 1] = {ARGV[2], ARGV[3], now + tonumber(ARGV[4])}
end
if ARGV[1] ~= 'read' and (dropped or ARGV[1] == 'announce') then
  redis.call('DEL', KEYS[1])
  local last = 0
  for _, r in ipairs(live) do
    redis.call('HSET', KEYS[1], r[1], r[2] .. ':' .. string.format('%.0f', r[3]))
    if r[3] > last then last = r[3] end
  end
  if last > now then redis.call('PEXPIRE', KEYS[1], string.format('%.0f', last - now)) end
end
local out = {'live'}
for _, r in ipairs(live) do
  out[#out + 1] = r[1]
  out[#out + 1] = r[2]
  out[#out + 1] = string.format('%.0f', r[3] - now)
end
return out
"#;

/// The key of `key`'s presence records (D134), in the same cluster slot as `key`, named as
/// [`companion_key`] is: `{K}:candidates`, or `K:candidates` when `K` has a hash tag.
pub fn presence_key(key: &str) -> String {
    if has_hash_tag(key) {
        format!("{key}:candidates")
    } else {
        format!("{{{key}}}:candidates")
    }
}

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

/// The channel on which changes to `key` are published: `baton:changes:<key>`.
///
/// Public on purpose: the channel is part of the store's layout, like the key itself, so a
/// service in another language (or `redis-cli SUBSCRIBE`) can follow an election's releases,
/// acquisitions and renewals without polling.
pub fn change_channel(key: &str) -> String {
    format!("baton:changes:{key}")
}

/// A [`LeaseStore`] on Redis: one server, a Redis Cluster or Sentinel's master. Clones share
/// one connection.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Connection,
    /// The URL with any password replaced.
    location: String,
    pubsub: Arc<PubSub>,
    // Each script's SHA-1 is computed when the script is first used: a one-shot command
    // (`baton handoff`, `baton status`) needs two or three of them, and hashing all nine took
    // about a tenth of a millisecond of its start.
    acquire: LazyLock<Script>,
    renew: LazyLock<Script>,
    release: LazyLock<Script>,
    hand_over: LazyLock<Script>,
    request_handoff: LazyLock<Script>,
    read: LazyLock<Script>,
    pending: LazyLock<Script>,
    presence: LazyLock<Script>,
    renew_many: LazyLock<Script>,
    /// Renewals go through the batcher (see [`batch`]), except on a cluster.
    renewals: Option<mpsc::UnboundedSender<batch::Pending>>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("location", &self.inner.location)
            .finish_non_exhaustive()
    }
}

/// Builds a [`RedisStore`] with certificates given as bytes rather than files.
///
/// ```no_run
/// # fn main() -> baton::Result<()> {
/// # let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
/// # let _guard = rt.enter();
/// use baton::store::redis::RedisStore;
///
/// let store = RedisStore::builder("rediss://cache.internal:6380")
///     .ca_cert_pem(std::fs::read("/etc/myapp/redis-ca.pem").unwrap())
///     .client_cert_pem(
///         std::fs::read("/etc/myapp/client.pem").unwrap(),
///         std::fs::read("/etc/myapp/client.key").unwrap(),
///     )
///     .build()?;
/// # Ok(())
/// # }
/// ```
#[must_use]
pub struct RedisStoreBuilder {
    url: String,
    ca_cert_pem: Option<Vec<u8>>,
    client_cert_pem: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("url", &redact(&self.url))
            .field("ca_cert_pem", &self.ca_cert_pem.is_some())
            .field("client_cert_pem", &self.client_cert_pem.is_some())
            .finish()
    }
}

impl RedisStoreBuilder {
    /// Trust the CA certificate(s) in `pem` (PEM, one or more `CERTIFICATE` blocks) for the
    /// server's certificate, instead of the system's trust store. Takes precedence over `ca=`
    /// in the URL. Needs a TLS URL (`rediss://`, `rediss+cluster://`, `rediss+sentinel://`).
    pub fn ca_cert_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_cert_pem = Some(pem.into());
        self
    }

    /// Present a client certificate (PEM, the chain) with its private key (PEM: PKCS#8, RSA
    /// or EC), for servers that require one (`tls-auth-clients yes`). Takes precedence over
    /// `cert=` and `key=` in the URL. Needs a TLS URL.
    pub fn client_cert_pem(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.client_cert_pem = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// Parse the URL, read and check the certificates, and set up the connection, which is
    /// made on first use: the store can be built while Redis is down. Each failed call then
    /// says "Failed to connect to Redis at HOST:PORT. Is Redis running?".
    ///
    /// Must be called inside a tokio runtime.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a malformed URL, an unknown option, a certificate file that cannot
    /// be read or holds no certificate or key, certificates for a URL without TLS, or no tokio
    /// runtime. Messages show the URL with its password redacted.
    pub fn build(self) -> Result<RedisStore> {
        let location = redact(&self.url);
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::Config(format!(
                "the Redis store for {location} must be opened inside a tokio runtime, where its \
                 connection runs"
            )));
        }
        let target = target::parse(&self.url, &location)?;
        let certs = target::certificates(
            target.tls,
            &target.files,
            self.ca_cert_pem,
            self.client_cert_pem,
            &location,
        )?;
        if target.tls {
            target::ensure_crypto_provider();
        }
        let pubsub = Arc::new(PubSub::default());
        let conn = Connection::open(target, certs, pubsub.clone())?;
        Ok(RedisStore::assemble(conn, location, pubsub))
    }
}

impl RedisStore {
    /// A store for `url`, in any of the forms in the [module docs](self): `redis://`,
    /// `rediss://`, `redis+cluster://`, `redis+sentinel://`. Connects lazily, on first use, so
    /// it can be built while Redis is down; each failed call then says
    /// "Failed to connect to Redis at HOST:PORT. Is Redis running?".
    ///
    /// Must be called inside a tokio runtime. The same as `RedisStore::builder(url).build()`.
    pub fn open(url: &str) -> Result<RedisStore> {
        Self::builder(url).build()
    }

    /// A store that connects the way the application's `client` does: its address, TLS
    /// settings and certificates, credentials and database. For applications that already
    /// configure a [`redis::Client`]; nothing needs saying twice.
    ///
    /// The store opens one multiplexed, reconnecting connection of its own from the client
    /// (redis-rs's `ConnectionManager`, in RESP3): the release notices of the handoff arrive
    /// as push messages, which a connection routes to the one receiver it was set up with,
    /// so Baton cannot ride on a `ConnectionManager` the application built. A single server
    /// only: use a URL for Cluster and Sentinel.
    ///
    /// Must be called inside a tokio runtime.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when there is no tokio runtime or the client's settings cannot make a
    /// connection.
    pub fn from_client(client: &redis::Client) -> Result<RedisStore> {
        let info = client.get_connection_info().clone();
        let (location, address) = match info.addr() {
            redis::ConnectionAddr::Tcp(host, port) => {
                (format!("redis://{host}:{port}"), format!("{host}:{port}"))
            }
            redis::ConnectionAddr::TcpTls { host, port, .. } => {
                target::ensure_crypto_provider();
                (format!("rediss://{host}:{port}"), format!("{host}:{port}"))
            }
            redis::ConnectionAddr::Unix(path) => (
                format!("redis+unix://{}", path.display()),
                path.display().to_string(),
            ),
            _ => ("redis (the application's client)".to_owned(), String::new()),
        };
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::Config(format!(
                "the Redis store for {location} must be built inside a tokio runtime, where its \
                 connection runs"
            )));
        }
        let pubsub = Arc::new(PubSub::default());
        let conn = Connection::from_info(info, address, pubsub.clone())?;
        Ok(RedisStore::assemble(conn, location, pubsub))
    }

    fn assemble(conn: Connection, location: String, pubsub: Arc<PubSub>) -> RedisStore {
        let batched = !conn.is_cluster();
        RedisStore {
            inner: Arc::new_cyclic(|inner| Inner {
                conn,
                location,
                pubsub,
                acquire: LazyLock::new(|| Script::new(ACQUIRE)),
                renew: LazyLock::new(|| Script::new(RENEW)),
                release: LazyLock::new(|| Script::new(RELEASE)),
                hand_over: LazyLock::new(|| Script::new(HAND_OVER)),
                request_handoff: LazyLock::new(|| {
                    Script::new(&format!("{SHAPE_CHECK}{HELD_CHECK}{REQUEST_HANDOFF}"))
                }),
                read: LazyLock::new(|| Script::new(&format!("{SHAPE_CHECK}{HELD_CHECK}{READ}"))),
                pending: LazyLock::new(|| Script::new(&format!("{SHAPE_CHECK}{PENDING}"))),
                presence: LazyLock::new(|| Script::new(PRESENCE)),
                renew_many: LazyLock::new(|| Script::new(batch::RENEW_MANY)),
                renewals: batched.then(|| batch::spawn(inner.clone())),
            }),
        }
    }

    /// A builder for `url`, to add certificates given as bytes.
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder {
            url: url.into(),
            ca_cert_pem: None,
            client_cert_pem: None,
        }
    }

    /// Check that Redis answers (`PING`; every master of a cluster), with a clear error if not.
    pub async fn ping(&self) -> Result<()> {
        self.inner.conn.ping().await
    }

    /// Run [`PRESENCE`] on `key`'s presence records.
    async fn presence(
        &self,
        key: &str,
        op: &str,
        candidate: &str,
        priority: u32,
        ttl: Duration,
    ) -> Result<Vec<Presence>> {
        check_key(key)?;
        let records = presence_key(key);
        let mut call = self.inner.presence.key(&records);
        call.arg(op)
            .arg(candidate)
            .arg(priority.to_string())
            .arg(ttl_ms(ttl));
        let reply: Vec<String> = self.inner.conn.invoke(&call, "script").await?;
        let bad = |reply: &[String]| foreign(&records, reply);
        match reply.split_first() {
            Some((first, rest)) if first == "live" && rest.len() % 3 == 0 => rest
                .chunks(3)
                .map(|r| {
                    let priority = r[1].parse().map_err(|_| bad(&reply))?;
                    let ms: u64 = r[2].parse().map_err(|_| bad(&reply))?;
                    Ok(Presence::new(
                        r[0].clone(),
                        priority,
                        Duration::from_millis(ms),
                    ))
                })
                .collect(),
            _ => Err(bad(&reply)),
        }
    }

    async fn script(&self, script: &Script, key: &str, args: &[&str]) -> Result<Vec<String>> {
        let mut call = script.key(key);
        call.key(companion_key(key));
        for a in args {
            call.arg(*a);
        }
        self.inner.conn.invoke(&call, "script").await
    }

    /// How long to wait before acting on a lease acquired when the counter was missing.
    ///
    /// The acquire script read `INFO` itself (the server's uptime, and whether it was promoted
    /// from replica), so this costs no round trip, and nothing can fail between taking the
    /// lease and knowing how long to hold it. A reply without the uptime is taken as a server
    /// that just started: the whole lease is waited.
    fn restart_wait(key: &str, ttl: Duration, fresh: bool, reply: &[String]) -> Duration {
        let field = |i: usize| reply.get(i).map_or("", String::as_str);
        let facts = ServerFacts::from_fields(field(3), field(4)).unwrap_or(ServerFacts {
            uptime: Duration::ZERO,
            promoted: false,
        });
        let wait = if fresh {
            facts.restart_wait(ttl)
        } else {
            ttl.saturating_sub(facts.uptime)
        };
        if !wait.is_zero() {
            tracing::warn!(
                key,
                uptime_s = facts.uptime.as_secs(),
                promoted = facts.promoted,
                wait_ms = wait.as_millis() as u64,
                "Redis has no token counter for this key and restarted or failed over recently; \
                 holding the lease without acting until an earlier leader's lease is surely over"
            );
        }
        wait
    }

    /// Subscribe to `key`'s change channel: as a candidate (a release wakes one candidate of
    /// this store, see [`wake`]) or as an observer (every change as it comes).
    async fn subscribe(&self, key: &str, candidate: bool) -> Result<Changes> {
        let channel = change_channel(key);
        let changes = {
            let mut routes = self
                .inner
                .pubsub
                .routes
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let route = routes.entry(channel.clone()).or_default();
            if candidate {
                route.candidate()
            } else {
                route.observer()
            }
        };
        self.inner
            .conn
            .subscribe(&self.inner.pubsub, &channel)
            .await?;
        Ok(changes)
    }
}

/// What `INFO` says about the server that matters to the restart guard.
#[derive(Debug, PartialEq, Eq)]
struct ServerFacts {
    /// How long the server has surely been up: `uptime_in_seconds` less one second. Redis
    /// counts it as whole seconds of its clock since whole seconds at start, so a server started
    /// at x.9 s reports 1 at (x+1).0 s, after 0.1 s. Taken at face value, that let an acquire
    /// act up to a second early after a restart that lost the data, while the leader from
    /// before the restart was still working (found by scripts/chaos, store-restart seed
    /// 100005).
    uptime: Duration,
    /// Promoted from replica since it started (`second_repl_offset` is not -1).
    promoted: bool,
}

impl ServerFacts {
    /// From `uptime_in_seconds` and `second_repl_offset` as `INFO` writes them.
    fn from_fields(uptime: &str, second_repl_offset: &str) -> Option<ServerFacts> {
        let reported: u64 = uptime.trim().parse().ok()?;
        let uptime = Duration::from_secs(reported.saturating_sub(1));
        let promoted = second_repl_offset
            .trim()
            .parse::<i64>()
            .is_ok_and(|offset| offset >= 0);
        Some(ServerFacts { uptime, promoted })
    }

    /// A promoted replica may have missed the counter however long it has been up: wait a
    /// whole lease. Otherwise wait until the server has been up for one.
    fn restart_wait(&self, ttl: Duration) -> Duration {
        if self.promoted {
            ttl
        } else {
            ttl.saturating_sub(self.uptime)
        }
    }
}

/// Map a client error into Baton's, naming the server (`address`) but never the password.
fn map_error(e: RedisError, what: &str, address: &str) -> Error {
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
    if auth_failed {
        return Error::Config(format!(
            "Redis at {address} rejected the credentials: check the user and password in the URL"
        ));
    }
    if let Some(message) = tls_problem(&e, address) {
        return Error::Config(message);
    }
    match e.kind() {
        ErrorKind::InvalidClientConfig => {
            Error::Config(format!("invalid Redis configuration for {address}: {e}"))
        }
        ErrorKind::ClusterConnectionNotFound => Error::unavailable(
            "redis",
            format!("Failed to connect to Redis Cluster at {address}. Is Redis running?"),
            e,
        ),
        _ if e.code() == Some("READONLY") => Error::unavailable(
            "redis",
            format!(
                "Redis at {address} is a read-only replica: connect to the master, or through \
                 Sentinel (redis+sentinel://)"
            ),
            e,
        ),
        _ if e.is_connection_refusal() => Error::unavailable(
            "redis",
            format!("Failed to connect to Redis at {address}. Is Redis running?"),
            e,
        ),
        _ if e.to_string().contains("lookup address") => Error::unavailable(
            "redis",
            format!(
                "Failed to connect to Redis at {address}: the host name does not resolve ({e}). \
                 Is the host name right?"
            ),
            e,
        ),
        _ if e.is_timeout() || e.is_connection_dropped() || e.is_io_error() => {
            Error::indeterminate("redis", format!("{what} on {address}: connection lost"), e)
        }
        _ => Error::unavailable("redis", format!("{what} on {address} failed: {e}"), e),
    }
}

/// A TLS handshake that failed for a reason retrying cannot fix, explained. rustls's errors
/// reach us as text inside an I/O error.
fn tls_problem(e: &RedisError, address: &str) -> Option<String> {
    let text = e.to_string();
    let fix = match CertFault::read(&text)? {
        CertFault::UnknownCa => {
            "the server's certificate is not signed by a CA Baton trusts: pass the CA that \
             signed it, ?ca=/path/to/ca.pem in the URL or RedisStoreBuilder::ca_cert_pem"
        }
        CertFault::WrongName => {
            "the server's certificate is not valid for the host name Baton connected to: use a \
             host name the certificate lists, or reissue it with this one"
        }
        CertFault::OutsideValidity => RENEW_OR_CHECK_CLOCKS,
        CertFault::ClientCertRequired => {
            "Redis requires a client certificate: pass ?cert=/path/client.pem&key=/path/client.key \
             in the URL or RedisStoreBuilder::client_cert_pem"
        }
        CertFault::OtherCertificate => "check the CA (?ca=) and the server's certificate",
        CertFault::Refused => {
            "Redis refused the handshake: if it requires client certificates \
             (tls-auth-clients yes), pass ?cert= and ?key= signed by a CA it trusts"
        }
    };
    Some(format!(
        "TLS with Redis at {address} failed ({text}): {fix}"
    ))
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
            urgent: Arc::new(AtomicBool::new(false)),
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
        self.subscribe(key, false).await.map(Some)
    }

    async fn request_handoff(&self, key: &str, to: Option<&str>) -> Result<Option<LeaseRecord>> {
        check_key(key)?;
        let reply = self
            .script(
                &self.inner.request_handoff,
                key,
                &[to.unwrap_or(""), &change_channel(key)],
            )
            .await?;
        match reply.first().map(String::as_str) {
            Some("free") => Ok(None),
            Some("held") => parse_record(key, &reply).map(Some),
            _ => Err(foreign(key, &reply)),
        }
    }

    async fn pending_handoff(&self, key: &str) -> Result<Option<PendingHandoff>> {
        check_key(key)?;
        let reply = self.script(&self.inner.pending, key, &[]).await?;
        let to = |s: &String| (!s.is_empty()).then(|| s.clone());
        match reply.as_slice() {
            [kind] if kind == "none" => Ok(None),
            [kind, holder, wanted] if kind == "requested" => Ok(Some(PendingHandoff::Requested {
                holder: holder.clone(),
                to: to(wanted),
            })),
            [kind, wanted, from, left] if kind == "reserved" => {
                let left = left.parse().map_err(|_| foreign(key, &reply))?;
                Ok(Some(PendingHandoff::Reserved(HandoffMark::new(
                    to(wanted),
                    from.clone(),
                    Duration::from_millis(left),
                ))))
            }
            _ => Err(foreign(key, &reply)),
        }
    }

    async fn announce(
        &self,
        key: &str,
        candidate: &str,
        priority: u32,
        ttl: Duration,
    ) -> Result<Option<Vec<Presence>>> {
        self.presence(key, "announce", candidate, priority, ttl)
            .await
            .map(Some)
    }

    async fn candidates(&self, key: &str) -> Result<Option<Vec<Presence>>> {
        self.presence(key, "read", "", 0, Duration::ZERO)
            .await
            .map(Some)
    }

    async fn withdraw(&self, key: &str, candidate: &str) -> Result<()> {
        self.presence(key, "withdraw", candidate, 0, Duration::ZERO)
            .await
            .map(drop)
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
    /// Set when this candidacy's change stream brings a handoff request: the leader renews at
    /// once to read it, and that renewal skips the batch window (up to 5 ms that a planned
    /// handoff would otherwise wait), as the leaderless moments of a handoff are what its
    /// caller is timing.
    urgent: Arc<AtomicBool>,
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
            Some("reserved") => {
                let [_, to, from, left] = reply.as_slice() else {
                    return Err(foreign(&self.key, &reply));
                };
                let left = Duration::from_millis(left.parse::<u64>().unwrap_or(0));
                let to = (!to.is_empty()).then(|| to.clone());
                Ok(Acquire::Reserved(HandoffMark::new(to, from.clone(), left)))
            }
            Some("acquired") => {
                let token = parse_token(&self.key, reply.get(1).map_or("", String::as_str))?;
                let fresh = reply.get(2).map(String::as_str) == Some("1");
                // The counter was missing: a new server, or one that lost its data. Even when
                // it is there, an earlier holder may have re-created it after a restart and
                // given the lease up without ever acting, while the leader from before the
                // restart still does (found by scripts/chaos, store-restart seed 417670): so
                // every acquire waits until the server has been up for a lease.
                let mut act_after = RedisStore::restart_wait(&self.key, ttl, fresh, &reply);
                if self
                    .store
                    .inner
                    .conn
                    .since_failover()
                    .is_some_and(|since| since < ttl)
                {
                    // The old leader may still be renewing on the demoted master, or have
                    // renewed or acquired there what the new master never received.
                    tracing::warn!(
                        key = %self.key,
                        wait_ms = ttl.as_millis() as u64,
                        "acquired just after a failover (Sentinel's master moved, or a cluster \
                         node was demoted); holding the lease without acting for a lease, while \
                         the old leader may still think it leads"
                    );
                    act_after = ttl;
                }
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
        let urgent = self.urgent.swap(false, Ordering::AcqRel);
        let reply = match &self.store.inner.renewals {
            Some(renewals) if !urgent => {
                let (reply, replied) = oneshot::channel();
                let pending = batch::Pending {
                    key: lease.key.clone(),
                    args: [
                        lease.holder.clone(),
                        token,
                        ttl_ms(ttl),
                        change_channel(&lease.key),
                    ],
                    reply,
                };
                let gone = || Error::Unavailable {
                    store: "redis",
                    message: "the store's renewal batcher has stopped (is the tokio runtime \
                              that opened the store shutting down?)"
                        .into(),
                    source: None,
                };
                renewals.send(pending).map_err(|_| gone())?;
                replied.await.map_err(|_| gone())??
            }
            _ => {
                self.store
                    .script(
                        &self.store.inner.renew,
                        &lease.key,
                        &[
                            &lease.holder,
                            &token,
                            &ttl_ms(ttl),
                            &change_channel(&lease.key),
                        ],
                    )
                    .await?
            }
        };
        match reply.first().map(String::as_str) {
            Some("renewed") => Ok(match reply.get(1) {
                None => Renew::Renewed,
                Some(to) => Renew::HandoffRequested {
                    to: (!to.is_empty()).then(|| to.clone()),
                },
            }),
            Some("lost") if reply.len() == 1 => Ok(Renew::Lost(None)),
            Some("lost") => parse_record(&lease.key, &reply).map(|r| Renew::Lost(Some(r))),
            _ => Err(foreign(&lease.key, &reply)),
        }
    }

    async fn release(&mut self, lease: &Lease) -> Result<()> {
        let token = lease.token.to_string();
        let channel = change_channel(&lease.key);
        let mut call = self.store.inner.release.key(&lease.key);
        call.key(companion_key(&lease.key))
            .arg(&lease.holder)
            .arg(&token)
            .arg(&channel);
        self.store
            .inner
            .conn
            .invoke::<i64>(&call, "release")
            .await
            .map(|_| ())
    }

    async fn hand_over(&mut self, lease: &Lease, to: Option<&str>, window: Duration) -> Result<()> {
        let token = lease.token.to_string();
        let channel = change_channel(&lease.key);
        let mut call = self.store.inner.hand_over.key(&lease.key);
        call.key(companion_key(&lease.key))
            .arg(&lease.holder)
            .arg(&token)
            .arg(&channel)
            .arg(to.unwrap_or(""))
            .arg(ttl_ms(window));
        self.store
            .inner
            .conn
            .invoke::<i64>(&call, "hand over")
            .await
            .map(|_| ())
    }

    async fn watch(&mut self) -> Result<Option<Changes>> {
        let changes = self.store.subscribe(&self.key, true).await?;
        let urgent = Arc::clone(&self.urgent);
        Ok(Some(Box::pin(changes.inspect(move |change| {
            if matches!(change, Change::HandoffRequested { .. }) {
                urgent.store(true, Ordering::Release);
            }
        }))))
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
        // By redis-rs's own slot function, which routes the scripts in a cluster.
        use redis::cluster_routing::Slot;
        for key in [
            "myapp:leader",
            "{app}:leader",
            "a{b",
            "{app}:x}",
            "x{}y{z}",
            "é:ü",
        ] {
            if check_key(key).is_ok() {
                assert_eq!(
                    Slot::for_key(key),
                    Slot::for_key(companion_key(key)),
                    "{key}"
                );
            }
        }
    }

    #[test]
    fn uptime_of_one_second_may_be_a_tenth_store_restart_seed_100005() {
        // Redis reports whole seconds since a whole-second start: "1" can mean 0.1 s. With a
        // 1.5 s lease, an acquire right after a restart must still wait at least 1.5 s.
        let ttl = Duration::from_millis(1500);
        let facts = ServerFacts::from_fields("1", "-1").unwrap();
        assert_eq!(facts.restart_wait(ttl), ttl);
        let facts = ServerFacts::from_fields("2", "-1").unwrap();
        assert_eq!(facts.restart_wait(ttl), Duration::from_millis(500));
    }

    #[test]
    fn restart_wait_from_info() {
        let ttl = Duration::from_secs(15);
        // 4 whole seconds reported: surely up for 3.
        let fresh = ServerFacts::from_fields("4", "").unwrap();
        assert_eq!(fresh.restart_wait(ttl), Duration::from_secs(12));
        let old = ServerFacts::from_fields("86400", "-1").unwrap();
        assert_eq!(old.restart_wait(ttl), Duration::ZERO);
        let promoted = ServerFacts::from_fields("86400", "123457").unwrap();
        assert!(promoted.promoted);
        assert_eq!(promoted.restart_wait(ttl), ttl);
        assert_eq!(ServerFacts::from_fields("", "-1"), None);
        // A reply without the uptime: wait the whole lease.
        assert_eq!(RedisStore::restart_wait("k", ttl, true, &[]), ttl);
    }

    #[test]
    fn tls_errors_say_what_to_do() {
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "invalid peer certificate: UnknownIssuer",
        );
        let err = map_error(RedisError::from(io), "script", "h:6380");
        let msg = err.to_string();
        assert!(matches!(err, Error::Config(_)), "{msg}");
        assert!(msg.contains("h:6380") && msg.contains("?ca="), "{msg}");
    }
}
