//! The connection behind a [`RedisStore`](super::RedisStore): one server, a cluster, or the
//! master that Sentinel names. Each carries commands and the push messages of the change
//! channels (RESP3), and each can be built without touching the network, so a store can be
//! opened while Redis is down.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::map_error;
use super::target::{Kind, Target};
use crate::store::Change;
use crate::store::wake::Route;
use crate::{Error, Result};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{
    AsyncConnectionConfig, Client, Cmd, ConnectionAddr, ConnectionInfo, FromRedisValue, Pipeline,
    PushInfo, PushKind, RedisConnectionInfo, RedisFuture, RedisResult, ScriptInvocation,
    TlsCertificates, Value,
};

/// How long to wait for a TCP (and TLS) connection to a server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest pause between reconnect attempts to a server that went away.
const RECONNECT_MAX_DELAY: Duration = Duration::from_millis(250);

/// How long a Sentinel may take to connect and answer; then the next one is asked.
const SENTINEL_TIMEOUT: Duration = Duration::from_secs(1);

/// How often to ask Sentinel whether the master moved. A demoted master can go on accepting
/// writes until Sentinel reconfigures it, which takes seconds; this bounds how long Baton keeps
/// writing there.
const SENTINEL_RECHECK: Duration = Duration::from_secs(1);

/// The change channels a store's connections are subscribed to, and the watchers of each.
#[derive(Default)]
pub(super) struct PubSub {
    /// Watchers of each channel. Push messages are routed here.
    pub routes: Mutex<HashMap<String, Arc<Route>>>,
    /// Channels subscribed on the server. Held while (re)subscribing, so a channel is never
    /// subscribed twice, nor missed when a Sentinel connection moves to a new master.
    subscribed: tokio::sync::Mutex<HashSet<String>>,
}

impl PubSub {
    /// Wake every watcher: messages may have been lost, so they should look for themselves.
    fn wake_all(&self) {
        let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        for route in routes.values() {
            route.send(Change::Other);
        }
    }
}

/// Routes push messages from any connection of the store to the watchers of their channel.
#[derive(Clone)]
struct Router(Arc<PubSub>);

impl redis::aio::AsyncPushSender for Router {
    fn send(&self, info: PushInfo) -> std::result::Result<(), redis::aio::SendError> {
        match info.kind {
            PushKind::Message => {
                let (Some(channel), Some(payload)) = (
                    info.data.first().and_then(text),
                    info.data.get(1).and_then(text),
                ) else {
                    return Ok(());
                };
                let routes = self.0.routes.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(route) = routes.get(&channel) {
                    let change = if let Some(holder) = payload.strip_prefix("acquired:") {
                        Change::Acquired {
                            holder: holder.to_owned(),
                        }
                    } else if let Some(holder) = payload.strip_prefix("renewed:") {
                        Change::Renewed {
                            holder: holder.to_owned(),
                        }
                    } else if payload == "released" {
                        Change::Released
                    } else if let Some(to) = payload.strip_prefix("handoff_requested:") {
                        Change::HandoffRequested {
                            to: (!to.is_empty()).then(|| to.to_owned()),
                        }
                    } else if let Some(to) = payload.strip_prefix("handed_over:") {
                        Change::HandedOver {
                            to: (!to.is_empty()).then(|| to.to_owned()),
                        }
                    } else {
                        Change::Other
                    };
                    route.send(change);
                }
            }
            PushKind::Disconnection => self.0.wake_all(),
            _ => {}
        }
        Ok(())
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// The connection kinds.
pub(super) enum Connection {
    /// One multiplexed, reconnecting connection to one server.
    Single {
        conn: ConnectionManager,
        address: String,
    },
    /// A connection per cluster node, routed by key slot, which follows slot moves and
    /// failovers and resubscribes after reconnecting; rebuilt when a master it knows was
    /// demoted (see [`ClusterLink`]).
    Cluster {
        link: Box<ClusterLink>,
        address: String,
    },
    /// A [`ConnectionManager`] to the master Sentinel names, found again when it fails or
    /// moves.
    Sentinel(Arc<SentinelMaster>),
}

impl Connection {
    /// Set up the connection for `target`. Touches no network: the first call connects.
    /// Must be called inside a tokio runtime.
    pub fn open(
        target: Target,
        certs: Option<TlsCertificates>,
        pubsub: Arc<PubSub>,
    ) -> Result<Connection> {
        let address = target.address;
        let setup = |e: redis::RedisError| {
            Error::Config(format!(
                "cannot set up a Redis connection to {address}: {e}"
            ))
        };
        match target.kind {
            Kind::Single(info) => {
                let client = client(info, &certs).map_err(setup)?;
                let conn = ConnectionManager::new_lazy_with_config(client, manager_config(&pubsub))
                    .map_err(setup)?;
                Ok(Connection::Single { conn, address })
            }
            Kind::Cluster(nodes) => {
                let mut builder = ClusterClientBuilder::new(nodes)
                    .tcp_settings(nodelay(&Default::default()))
                    .use_protocol(redis::ProtocolVersion::RESP3)
                    .push_sender(Router(pubsub.clone()))
                    .connection_timeout(CONNECT_TIMEOUT)
                    // Every call is bounded by the engine; a few quick retries ride out a
                    // reconnect or a slot move, the engine retries the rest.
                    .retries(3)
                    .min_retry_wait(10)
                    .max_retry_wait(500);
                if let Some(certs) = certs {
                    builder = builder.certs(certs);
                }
                let client = builder.build().map_err(setup)?;
                Ok(Connection::Cluster {
                    link: Box::new(ClusterLink::new(client, pubsub)),
                    address,
                })
            }
            Kind::Sentinel {
                sentinels,
                service,
                master,
            } => {
                let sentinels = sentinels
                    .into_iter()
                    .map(|info| client(info, &certs))
                    .collect::<RedisResult<Vec<_>>>()
                    .map_err(setup)?;
                let sentinel = Arc::new(SentinelMaster {
                    sentinels,
                    sentinel_addresses: address,
                    service,
                    master,
                    tls: target.tls,
                    certs,
                    pubsub,
                    current: Mutex::default(),
                    history: Mutex::default(),
                    resolving: tokio::sync::Mutex::default(),
                    generations: AtomicU64::new(0),
                });
                tokio::spawn(watch_sentinels(Arc::downgrade(&sentinel)));
                Ok(Connection::Sentinel(sentinel))
            }
        }
    }

    /// One reconnecting connection made with the application's `info` (address, TLS,
    /// credentials, database), switched to RESP3 for the push messages of the handoff.
    /// Touches no network. Must be called inside a tokio runtime.
    pub fn from_info(
        info: ConnectionInfo,
        address: String,
        pubsub: Arc<PubSub>,
    ) -> Result<Connection> {
        let setup = |e: redis::RedisError| {
            Error::Config(format!(
                "cannot set up a Redis connection to {address}: {e}"
            ))
        };
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(redis::ProtocolVersion::RESP3);
        let client = client(info.set_redis_settings(settings), &None).map_err(setup)?;
        let conn = ConnectionManager::new_lazy_with_config(client, manager_config(&pubsub))
            .map_err(setup)?;
        Ok(Connection::Single { conn, address })
    }

    /// How long ago this connection moved to a new master (a Sentinel failover), if it did.
    ///
    /// Until Sentinel reconfigures it, a demoted master goes on accepting writes, so the old
    /// leader can go on renewing there for a while after the new master took over; a lease
    /// taken on the new master meanwhile must not be acted on at once.
    /// On a Redis Cluster, how long ago a node answered `READONLY` (a failover demoted the
    /// master this store wrote to): the old leader may have renewed on the demoted master
    /// writes that the new one never received.
    pub fn since_failover(&self) -> Option<Duration> {
        match self {
            Connection::Sentinel(sentinel) => sentinel.moved_at().map(|at| at.elapsed()),
            Connection::Cluster { link, .. } => link.demoted_at().map(|at| at.elapsed()),
            Connection::Single { .. } => None,
        }
    }

    /// Whether this is a Redis Cluster, where keys of different slots cannot share a script.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Connection::Cluster { .. })
    }

    /// A link to send one call on.
    async fn call(&self) -> Result<Call<'_>> {
        match self {
            Connection::Single { conn, address } => Ok(Call {
                link: Link::Manager(conn.clone()),
                address: address.clone(),
                sentinel: None,
                cluster: None,
            }),
            Connection::Cluster { link, address } => {
                let (conn, generation) = link.current();
                Ok(Call {
                    link: Link::Cluster(conn),
                    address: address.clone(),
                    sentinel: None,
                    cluster: Some((link, generation)),
                })
            }
            Connection::Sentinel(sentinel) => {
                let current = sentinel.master().await?;
                Ok(Call {
                    link: Link::Manager(current.conn),
                    address: current.address,
                    sentinel: Some((sentinel, current.generation)),
                    cluster: None,
                })
            }
        }
    }

    /// Run a script. In a cluster it runs on the node of its first key.
    pub async fn invoke<T: FromRedisValue>(
        &self,
        script: &ScriptInvocation<'_>,
        what: &str,
    ) -> Result<T> {
        let mut call = self.call().await?;
        let result = script.invoke_async(&mut call.link).await;
        call.finish(result, what)
    }

    /// `PING` (every master of a cluster).
    pub async fn ping(&self) -> Result<()> {
        let mut call = self.call().await?;
        let result = redis::cmd("PING").query_async::<()>(&mut call.link).await;
        call.finish(result, "PING")
    }

    /// Subscribe to `channel` once; the connection resubscribes by itself after reconnecting,
    /// and a Sentinel connection subscribes every channel on each new master.
    pub async fn subscribe(&self, pubsub: &PubSub, channel: &str) -> Result<()> {
        if let Connection::Sentinel(sentinel) = self {
            // Connect first: a new master is set up under the lock taken below.
            sentinel.master().await?;
        }
        let mut subscribed = pubsub.subscribed.lock().await;
        if subscribed.contains(channel) {
            return Ok(());
        }
        match self {
            Connection::Single { conn, address } => {
                let result = conn.clone().subscribe(channel).await;
                result.map_err(|e| map_error(e, "SUBSCRIBE", address))?;
            }
            Connection::Cluster { link, address } => {
                let result = link.current().0.subscribe(channel).await;
                result.map_err(|e| map_error(e, "SUBSCRIBE", address))?;
            }
            Connection::Sentinel(sentinel) => {
                // No new master can be set up while we hold the lock. If the current one was
                // dropped meanwhile, the next one subscribes the channel from the set.
                if let Some(master) = sentinel.current()
                    && let Err(e) = master.conn.clone().subscribe(channel).await
                {
                    if master_may_have_moved(&e) {
                        sentinel.forget(master.generation);
                    }
                    return Err(map_error(e, "SUBSCRIBE", &master.address));
                }
            }
        }
        subscribed.insert(channel.to_owned());
        Ok(())
    }
}

/// `tcp` with `TCP_NODELAY` on, as Redis itself sets it on its side; the rest (an
/// application's keepalive, say) is kept. redis-rs leaves Nagle's algorithm on, which holds a
/// request written while an earlier one is unanswered (a renewal behind a presence update, a
/// handoff behind a renewal) until the earlier reply's acknowledgement: a round trip of delay
/// on exactly the calls a handoff waits for (docs/decisions.md D156).
fn nodelay(tcp: &redis::io::tcp::TcpSettings) -> redis::io::tcp::TcpSettings {
    tcp.clone().set_nodelay(true)
}

fn client(info: ConnectionInfo, certs: &Option<TlsCertificates>) -> RedisResult<Client> {
    let tcp = nodelay(info.tcp_settings());
    let info = info.set_tcp_settings(tcp);
    match certs {
        Some(certs) => Client::build_with_tls(info, certs.clone()),
        None => Client::open(info),
    }
}

fn manager_config(pubsub: &Arc<PubSub>) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(None) // every call is bounded by the engine
        .set_number_of_retries(2)
        // 25 ms, then 50 ms between those retries (redis-rs's default starts at 100 ms): a
        // refused connection or a failed TLS handshake is reported within about 100 ms, well
        // inside any request timeout, so the first call of a candidate (its first acquire,
        // docs/decisions.md D128) names the cause rather than timing out.
        .set_min_delay(Duration::from_millis(25))
        // Reconnect attempts at most this far apart: after an outage the election's next call
        // should not wait long for a server that is back. The long chaos run saw a candidate
        // reconnect 1.8 s after Redis came back with 1 s (store-restart seed 500092), and the
        // restart guard then adds a lease on top.
        .set_max_delay(RECONNECT_MAX_DELAY)
        .set_push_sender(Router(pubsub.clone()))
        .set_automatic_resubscription()
}

/// What one call is sent on.
enum Link {
    Manager(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Link::Manager(conn) => conn.req_packed_command(cmd),
            Link::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Link::Manager(conn) => conn.req_packed_commands(cmd, offset, count),
            Link::Cluster(conn) => conn.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Link::Manager(conn) => conn.get_db(),
            Link::Cluster(conn) => conn.get_db(),
        }
    }
}

/// One call in flight. On a Sentinel connection, a call that fails for a reason a new master
/// would explain, or that is abandoned (the engine's timeout dropped it: the master may be
/// unreachable without a word), makes the next call ask Sentinel again.
struct Call<'a> {
    link: Link,
    address: String,
    sentinel: Option<(&'a SentinelMaster, u64)>,
    /// On a cluster, the link and the generation of its connection the call went out on.
    cluster: Option<(&'a ClusterLink, u64)>,
}

impl Call<'_> {
    fn finish<T>(mut self, result: RedisResult<T>, what: &str) -> Result<T> {
        let sentinel = self.sentinel.take();
        let cluster = self.cluster.take();
        result.map_err(|e| {
            if let Some((link, generation)) = cluster
                && e.code() == Some("READONLY")
            {
                link.rebuild(generation);
            }
            if let Some((sentinel, generation)) = sentinel
                && master_may_have_moved(&e)
            {
                sentinel.forget(generation);
            }
            map_error(e, what, &self.address)
        })
    }
}

impl Drop for Call<'_> {
    fn drop(&mut self) {
        if let Some((sentinel, generation)) = self.sentinel.take() {
            sentinel.forget(generation);
        }
    }
}

/// A Redis Cluster connection that is rebuilt when a node it takes for a master answers
/// `READONLY`.
///
/// redis-rs sends `READONLY` on every connection to a cluster node (so that reads may go to
/// replicas), and a script that declares no flags is not a write command to the cluster's
/// routing: a master demoted to replica by a failover (`CLUSTER FAILOVER`, or a takeover) then
/// runs Baton's scripts itself instead of redirecting them with `MOVED`, and each fails with
/// `READONLY` at its first write. redis-rs neither retries that error nor reads the slot map
/// again, so the store would send every call to the demoted master for as long as it lives
/// (found by scripts/chaos, redis-cluster failover seed 1). A `READONLY` answer therefore
/// replaces the connection by a new one, which reads the slot map afresh on its first call,
/// and subscribes the change channels again on it.
pub(super) struct ClusterLink {
    client: redis::cluster::ClusterClient,
    /// The connection, and how many times it was rebuilt.
    current: Mutex<(ClusterConnection, u64)>,
    /// When a node last answered `READONLY`.
    demoted_at: Mutex<Option<Instant>>,
    pubsub: Arc<PubSub>,
}

impl ClusterLink {
    fn new(client: redis::cluster::ClusterClient, pubsub: Arc<PubSub>) -> ClusterLink {
        let conn = Self::connect(&client);
        ClusterLink {
            client,
            current: Mutex::new((conn, 0)),
            demoted_at: Mutex::default(),
            pubsub,
        }
    }

    /// A new connection; it connects, and reads the slot map, on its first call.
    fn connect(client: &redis::cluster::ClusterClient) -> ClusterConnection {
        client.get_pending_async_connection_with_config(
            ClusterConfig::new().set_connection_timeout(CONNECT_TIMEOUT),
        )
    }

    fn demoted_at(&self) -> Option<Instant> {
        *self.demoted_at.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn current(&self) -> (ClusterConnection, u64) {
        let current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        (current.0.clone(), current.1)
    }

    /// Replace the connection of `generation` (if no other call has already), subscribe the
    /// channels again on the new one, and wake the watchers: messages may have been lost.
    fn rebuild(&self, generation: u64) {
        *self.demoted_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        let conn = {
            let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
            if current.1 != generation {
                return;
            }
            let conn = Self::connect(&self.client);
            *current = (conn.clone(), generation + 1);
            conn
        };
        tracing::warn!(
            "a Redis Cluster node answered READONLY: a failover demoted it; reading the slot \
             map again"
        );
        let pubsub = self.pubsub.clone();
        tokio::spawn(async move {
            let mut subscribed = pubsub.subscribed.lock().await;
            let channels: Vec<String> = subscribed.iter().cloned().collect();
            for channel in channels {
                if conn.clone().subscribe(&channel).await.is_err() {
                    // The next subscribe() of the channel tries again.
                    subscribed.remove(&channel);
                }
            }
            drop(subscribed);
            pubsub.wake_all();
        });
    }
}

/// Errors after which the master should be looked up again: the connection failed, or the
/// server is no longer a (working) master.
fn master_may_have_moved(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || matches!(e.code(), Some("READONLY" | "MASTERDOWN" | "LOADING"))
}

/// The master that Sentinel names, reached through a [`ConnectionManager`] that is replaced
/// when the master moves.
///
/// redis-rs's `sentinel` module hands out plain multiplexed connections, which do not
/// reconnect, so Baton asks Sentinel itself (`SENTINEL GET-MASTER-ADDR-BY-NAME`, trying each
/// Sentinel in turn, as Sentinel's client guidelines describe), checks that the server it
/// names is a master (`INFO replication`), and keeps one reconnecting connection to it.
/// A failed or abandoned call makes the next one ask again, and a background task asks every
/// [`SENTINEL_RECHECK`] whether the master moved.
pub(super) struct SentinelMaster {
    sentinels: Vec<Client>,
    /// `host:port,...` of the Sentinels, for messages.
    sentinel_addresses: String,
    service: String,
    /// Credentials, database and protocol for the master.
    master: RedisConnectionInfo,
    tls: bool,
    certs: Option<TlsCertificates>,
    pubsub: Arc<PubSub>,
    current: Mutex<Option<Master>>,
    /// The last master connected to, and when this store moved away from another one.
    history: Mutex<History>,
    /// One lookup at a time.
    resolving: tokio::sync::Mutex<()>,
    generations: AtomicU64,
}

#[derive(Default)]
struct History {
    endpoint: Option<(String, u16)>,
    moved_at: Option<Instant>,
}

#[derive(Clone)]
struct Master {
    generation: u64,
    conn: ConnectionManager,
    /// Where Sentinel said the master is.
    endpoint: (String, u16),
    /// `host:port (master of NAME)`, for messages.
    address: String,
}

impl SentinelMaster {
    fn current(&self) -> Option<Master> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// When this store last moved from one master to another.
    fn moved_at(&self) -> Option<Instant> {
        self.history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .moved_at
    }

    /// Drop the connection of `generation` (if still current): the next call asks Sentinel.
    fn forget(&self, generation: u64) {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if current.as_ref().is_some_and(|m| m.generation == generation) {
            *current = None;
        }
    }

    /// The current master, found through Sentinel if there is none.
    async fn master(&self) -> Result<Master> {
        if let Some(master) = self.current() {
            return Ok(master);
        }
        let _resolving = self.resolving.lock().await;
        if let Some(master) = self.current() {
            return Ok(master);
        }
        let (host, port) = self.ask_sentinels().await?;
        let endpoint = (host.clone(), port);
        let address = format!("{host}:{port} (the master of {:?})", self.service);
        let addr = if self.tls {
            ConnectionAddr::TcpTls {
                host,
                port,
                insecure: false,
                tls_params: None,
            }
        } else {
            ConnectionAddr::Tcp(host, port)
        };
        let info = redis::IntoConnectionInfo::into_connection_info(addr)
            .map_err(|e| map_error(e, "connect", &address))?
            .set_redis_settings(self.master.clone());
        let client = client(info, &self.certs).map_err(|e| map_error(e, "connect", &address))?;
        let mut conn = ConnectionManager::new_with_config(client, manager_config(&self.pubsub))
            .await
            .map_err(|e| map_error(e, "connect", &address))?;
        // Sentinel's answer may lag a failover: make sure this server is a master.
        let replication: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut conn)
            .await
            .map_err(|e| map_error(e, "INFO replication", &address))?;
        let role = replication
            .lines()
            .find_map(|l| l.strip_prefix("role:"))
            .map(str::trim)
            .unwrap_or("unknown");
        if role != "master" {
            return Err(Error::Unavailable {
                store: "redis",
                message: format!(
                    "Sentinel names {address} as the master, but it reports role:{role}; a \
                     failover is probably under way"
                ),
                source: None,
            });
        }
        // Subscribe every channel on the new master before anyone can use it, then wake the
        // watchers: changes published while we had no master were lost.
        let subscribed = self.pubsub.subscribed.lock().await;
        for channel in subscribed.iter() {
            conn.subscribe(channel)
                .await
                .map_err(|e| map_error(e, "SUBSCRIBE", &address))?;
        }
        let master = Master {
            generation: self.generations.fetch_add(1, Ordering::Relaxed) + 1,
            conn,
            endpoint,
            address,
        };
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(master.clone());
        drop(subscribed);
        let mut history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        let previous = history.endpoint.replace(master.endpoint.clone());
        if previous.is_some_and(|p| p != master.endpoint) {
            history.moved_at = Some(Instant::now());
            tracing::info!(master = %master.address, "Redis Sentinel: moved to a new master");
        }
        drop(history);
        self.pubsub.wake_all();
        Ok(master)
    }

    /// `(host, port)` of the master, from the first Sentinel that knows it.
    async fn ask_sentinels(&self) -> Result<(String, u16)> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(SENTINEL_TIMEOUT))
            .set_response_timeout(Some(SENTINEL_TIMEOUT));
        let mut unknown = 0;
        let mut last_error = None;
        for sentinel in &self.sentinels {
            let answer = async {
                let mut conn = sentinel
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                redis::cmd("SENTINEL")
                    .arg("GET-MASTER-ADDR-BY-NAME")
                    .arg(&self.service)
                    .query_async::<Option<(String, u16)>>(&mut conn)
                    .await
            };
            match answer.await {
                Ok(Some(master)) => return Ok(master),
                Ok(None) => unknown += 1,
                Err(e) => {
                    tracing::debug!(sentinel = %sentinel.get_connection_info().addr(), error = %e, "Redis Sentinel did not answer");
                    last_error = Some(e);
                }
            }
        }
        let sentinels = &self.sentinel_addresses;
        match last_error {
            None if unknown > 0 => Err(Error::Config(format!(
                "no Redis Sentinel at {sentinels} knows a master named {:?}: check the name in \
                 the URL against `sentinel monitor NAME ...` in sentinel.conf",
                self.service
            ))),
            Some(e) if e.is_connection_refusal() || e.is_io_error() || e.is_timeout() => {
                Err(Error::unavailable(
                    "redis",
                    format!(
                        "Failed to connect to Redis Sentinel at {sentinels}. Is Redis Sentinel running?"
                    ),
                    e,
                ))
            }
            Some(e) => Err(map_error(e, "SENTINEL GET-MASTER-ADDR-BY-NAME", sentinels)),
            None => Err(Error::Config(format!(
                "no Redis Sentinel to ask at {sentinels}"
            ))),
        }
    }
}

/// Every [`SENTINEL_RECHECK`], ask a Sentinel where the master is; if it moved, drop the
/// connection to the old one and connect to the new one at once, so that followers waiting for
/// a push are subscribed there (and woken) even when no call fails. Ends with the store.
async fn watch_sentinels(sentinel: Weak<SentinelMaster>) {
    let mut tick = tokio::time::interval(SENTINEL_RECHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(sentinel) = sentinel.upgrade() else {
            return;
        };
        // No master yet: the next call asks Sentinel anyway.
        let Some(current) = sentinel.current() else {
            continue;
        };
        match sentinel.ask_sentinels().await {
            Ok(endpoint) if endpoint != current.endpoint => {
                tracing::info!(
                    from = %current.address,
                    to = %format!("{}:{}", endpoint.0, endpoint.1),
                    "Redis Sentinel moved the master"
                );
                sentinel.forget(current.generation);
                if let Err(e) = sentinel.master().await {
                    tracing::warn!(error = %e, "cannot connect to the new Redis master yet");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "no Redis Sentinel answered"),
        }
    }
}
