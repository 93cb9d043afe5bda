//! The stores under test, opened as separate instances (separate connections), and the small
//! helpers every figure shares.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton::store::redis::RedisStore;
use baton::{Event, Events, LeaderElection, LeaseStore, MemoryStore, SqliteStore};

use crate::BoxResult;

/// A store kind, and where its instances point.
#[derive(Debug, Clone)]
pub enum StoreKind {
    /// One in-process store; "instances" are clones sharing its leases.
    Memory(MemoryStore),
    /// One SQLite file; every instance opens it anew.
    Sqlite(PathBuf),
    /// One Redis server; every instance is its own `RedisStore`, so its own connection.
    Redis(String),
    /// PostgreSQL, MySQL/MariaDB or etcd: `(name, url)`; every instance is a store of its own
    /// (for SQL its own pool and, on PostgreSQL, its own `LISTEN` connection; for etcd its own
    /// client), as a separate process would have.
    Url(&'static str, String),
}

impl StoreKind {
    pub fn name(&self) -> &'static str {
        match self {
            StoreKind::Memory(_) => "memory",
            StoreKind::Sqlite(_) => "sqlite",
            StoreKind::Redis(_) => "redis",
            StoreKind::Url(name, _) => name,
        }
    }

    /// A new instance: for SQLite a new handle on the file, for Redis a new connection.
    pub fn open(&self) -> BoxResult<Arc<dyn LeaseStore>> {
        Ok(match self {
            StoreKind::Memory(store) => Arc::new(store.clone()),
            StoreKind::Sqlite(path) => Arc::new(SqliteStore::open(path)?),
            StoreKind::Redis(url) => Arc::new(RedisStore::open(url)?),
            StoreKind::Url(_, url) => baton::connect::store_from_url(url)?,
        })
    }

    /// Open the store a URL names, for the scale child: `redis://` through [`RedisStore`],
    /// the rest through [`baton::connect::store_from_url`].
    pub fn open_url(url: &str) -> BoxResult<Arc<dyn LeaseStore>> {
        if url.starts_with("redis://") {
            Ok(Arc::new(RedisStore::open(url)?))
        } else {
            Ok(baton::connect::store_from_url(url)?)
        }
    }
}

/// Lease timing of the elections in one figure.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub lease: Duration,
    pub renew: Duration,
    pub grace: Duration,
}

impl Timing {
    pub const fn ms(lease: u64, renew: u64, grace: u64) -> Timing {
        Timing {
            lease: Duration::from_millis(lease),
            renew: Duration::from_millis(renew),
            grace: Duration::from_millis(grace),
        }
    }

    /// `lease 2s, renew 500ms, grace 500ms`.
    pub fn describe(&self) -> String {
        format!(
            "lease {}, renew {}, grace {}",
            baton::fmt_duration(self.lease),
            baton::fmt_duration(self.renew),
            baton::fmt_duration(self.grace)
        )
    }
}

/// An election (not started) on `store`.
pub fn election(
    store: &Arc<dyn LeaseStore>,
    key: &str,
    id: &str,
    timing: Timing,
) -> BoxResult<LeaderElection> {
    Ok(LeaderElection::builder_dyn(store.clone(), key)
        .lease_duration(timing.lease)
        .renew_interval(timing.renew)
        .grace_period(timing.grace)
        .instance_id(id)
        .build()?)
}

/// The instant this subscriber received `BecameLeader`, or `None` if the election went away.
pub async fn became_leader(events: &mut Events) -> Option<Instant> {
    loop {
        match events.recv().await? {
            Event::BecameLeader { .. } => return Some(Instant::now()),
            _ => continue,
        }
    }
}

/// [`became_leader`] within `limit`, as an error naming `what` otherwise.
pub async fn became_leader_within(
    events: &mut Events,
    limit: Duration,
    what: &str,
) -> BoxResult<Instant> {
    match tokio::time::timeout(limit, became_leader(events)).await {
        Ok(Some(at)) => Ok(at),
        Ok(None) => Err(format!("{what}: the election ended before it led").into()),
        Err(_) => Err(format!("{what}: no BecameLeader within {limit:?}").into()),
    }
}

/// How long a new election may take to lead on a fresh key. Redis holds a new key's first
/// lease without acting until the server has been up for a whole lease (its restart guard), so
/// allow a lease on top of a generous margin.
pub fn first_lead_limit(timing: Timing) -> Duration {
    timing.lease * 2 + Duration::from_secs(10)
}
