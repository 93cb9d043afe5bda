//! Renewals batched per connection.
//!
//! A process that holds many elections on one Redis (10,000 leases on one store, each renewed
//! every few seconds) would otherwise send one `EVALSHA` round trip per renewal, and most of its
//! CPU would go to handing each request to the connection's task and each reply back. Instead,
//! renewals on one store go through a batcher: the first renewal to arrive waits up to
//! [`WINDOW`] for others, and all that arrived meanwhile (at most [`MAX_BATCH`]) go out as one
//! call of [`RENEW_MANY`], which judges each lease exactly as the one-lease renewal does.
//!
//! Why this is safe:
//! * The engine computes a renewal's deadline from the moment *it* asked for the renewal, before
//!   the batcher's wait; the server extends the lease from when the script runs, later. Waiting
//!   only makes the engine's view of the lease more conservative.
//! * Each lease is checked on its own (holder and token), inside one script, so one lease's
//!   outcome never depends on another's. A key that holds foreign data fails only its own
//!   renewal.
//! * Batches go out concurrently, each on its own task: a batch stuck on a dead connection holds
//!   up nothing sent after it, and the engine gives up on its renewals at their deadlines as it
//!   would on a single call.
//! * A renewal the engine stopped waiting for (its deadline passed) is dropped from a batch not
//!   yet sent.
//!
//! Not used on Redis Cluster, where the leases of one batch would live in different slots; a
//! cluster's renewals are single calls, as before.

use std::sync::Weak;
use std::time::Duration;

use redis::Script;
use tokio::sync::{mpsc, oneshot};

use super::{Inner, companion_key};
use crate::{Error, Result};

/// How long the first renewal of a batch waits for others. Small against any sensible renew
/// interval and grace, and long enough that at 2,000 renewals per second a batch holds about
/// ten.
pub(super) const WINDOW: Duration = Duration::from_millis(5);

/// The most leases one call renews.
pub(super) const MAX_BATCH: usize = 128;

/// `KEYS` = key and companion hash of each lease, in pairs; `ARGV` = candidate, token, TTL in
/// ms and change channel of each lease, in fours. Returns one reply per lease, each as
/// [`RENEW`](super::RENEW) returns it.
pub(super) const RENEW_MANY: &str = r#"
local out = {}
for i = 1, #KEYS / 2 do
  local key, counter = KEYS[2 * i - 1], KEYS[2 * i]
  local a = (i - 1) * 4
  local kt = redis.call('TYPE', key).ok
  local ct = redis.call('TYPE', counter).ok
  if kt ~= 'none' and kt ~= 'string' then
    out[i] = {'foreign', 'a ' .. kt .. ' at ' .. key}
  elseif ct ~= 'none' and ct ~= 'hash' then
    out[i] = {'foreign', 'a ' .. ct .. ' at ' .. counter}
  else
    local holder = redis.call('GET', key)
    local token = redis.call('HGET', counter, 'token')
    if holder and holder == ARGV[a + 1] and token == ARGV[a + 2] then
      redis.call('PEXPIRE', key, ARGV[a + 3])
      redis.call('PUBLISH', ARGV[a + 4], 'renewed:' .. ARGV[a + 1])
      -- A handoff asked of this lease (HMGET only then: the benchmarks count acquires by it).
      local req = {}
      if redis.call('HLEN', counter) == 4 then
        req = redis.call('HMGET', counter, 'handoff_to', 'handoff_from')
      end
      if req[1] and req[2] == holder then
        out[i] = {'renewed', req[1]}
      else
        out[i] = {'renewed'}
      end
    elseif holder then
      out[i] = {'lost', holder, token or '0', tostring(redis.call('PTTL', key))}
    else
      out[i] = {'lost'}
    end
  end
end
return out
"#;

/// One renewal waiting for its batch.
pub(super) struct Pending {
    pub key: String,
    /// Candidate, token, TTL in ms, change channel.
    pub args: [String; 4],
    pub reply: oneshot::Sender<Result<Vec<String>>>,
}

/// Start the batcher of a store; it ends when the store is dropped.
pub(super) fn spawn(inner: Weak<Inner>) -> mpsc::UnboundedSender<Pending> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(collect(inner, rx));
    tx
}

async fn collect(inner: Weak<Inner>, mut rx: mpsc::UnboundedReceiver<Pending>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let linger = tokio::time::sleep(WINDOW);
        tokio::pin!(linger);
        while batch.len() < MAX_BATCH {
            tokio::select! {
                biased;
                next = rx.recv() => match next {
                    Some(p) => batch.push(p),
                    None => break,
                },
                () = &mut linger => break,
            }
        }
        batch.retain(|p| !p.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let Some(inner) = inner.upgrade() else {
            return;
        };
        tokio::spawn(async move {
            let result = send(&inner.renew_many, &inner, &batch).await;
            match result {
                Ok(replies) if replies.len() == batch.len() => {
                    for (p, reply) in batch.into_iter().zip(replies) {
                        let _ = p.reply.send(Ok(reply));
                    }
                }
                Ok(replies) => {
                    let message = format!(
                        "a batched renewal of {} leases got {} replies",
                        batch.len(),
                        replies.len()
                    );
                    for p in batch {
                        let _ = p.reply.send(Err(Error::Indeterminate {
                            store: "redis",
                            message: message.clone(),
                            source: None,
                        }));
                    }
                }
                Err(e) => {
                    for p in batch {
                        let _ = p.reply.send(Err(e.again()));
                    }
                }
            }
        });
    }
}

async fn send(script: &Script, inner: &Inner, batch: &[Pending]) -> Result<Vec<Vec<String>>> {
    let mut call = script.prepare_invoke();
    for p in batch {
        call.key(&p.key).key(companion_key(&p.key));
        for a in &p.args {
            call.arg(a);
        }
    }
    inner.conn.invoke(&call, "script").await
}
