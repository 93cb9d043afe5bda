//! Crash failover: the leader vanishes without releasing, and a follower takes over once the
//! lease expires in the store.
//!
//! The crashed leader is a raw candidacy on its own store instance (for Redis its own
//! connection): it acquires the key, renews it 0, 1 or 2 times at the renew interval (round by
//! round) while a follower election on another instance watches, and is then abandoned: no
//! release, no more renewals, exactly what the store sees when a process dies. The failover is
//! the time from the instant just before the last acquire or renew was sent to the follower's
//! `BecameLeader`; the store's own clock started the lease a little after that instant, so the
//! figure is an upper bound. The renewals make the follower re-read a moved expiry, as it does
//! behind a live leader.
//!
//! Stores whose candidacy does something when dropped (etcd's revokes its lease, as a clean
//! exit should) are crashed with `leak`: the candidacy is forgotten, so no code of it runs
//! again, as when its process is killed. The bench leaks one candidacy per such crash.

use std::sync::Arc;
use std::time::{Duration, Instant};

use baton::{Acquire, LeaseStore, Renew};

use crate::BoxResult;
use crate::stores::{Timing, became_leader_within, election};

/// One crash.
#[derive(Debug, Clone, Copy)]
pub struct Crash {
    /// Last acquire/renew send → the follower's `BecameLeader`.
    pub failover: Duration,
    /// Renewals the crashed leader made before it vanished.
    pub renewals: usize,
}

pub async fn crashes(
    stores: [Arc<dyn LeaseStore>; 2],
    key: &str,
    timing: Timing,
    rounds: usize,
    leak: bool,
) -> BoxResult<Vec<Crash>> {
    // Connect both instances first: a store's first call opens its connection (for the SQL
    // stores a pool connection and the table check, for PostgreSQL a new backend), which
    // would otherwise fall between the first round's last send and the lease's start.
    for store in &stores {
        store.read(key).await?;
    }
    let mut crashes = Vec::with_capacity(rounds);
    let mut slow_starts = 0;
    let mut round = 0;
    while round < rounds {
        let mut crashed = stores[0].join(key, &format!("crashed-{round}")).await?;
        let mut last_send = Instant::now();
        let lease = match crashed.try_acquire(timing.lease).await? {
            Acquire::Acquired(lease) => lease,
            Acquire::Held(record) => {
                return Err(format!(
                    "round {round}: the key is still held by {} ({:?} left)",
                    record.holder, record.ttl
                )
                .into());
            }
            other => return Err(format!("round {round}: the key is not free: {other:?}").into()),
        };

        let follower = election(&stores[1], key, &format!("survivor-{round}"), timing)?;
        let mut events = follower.subscribe();
        follower.start().await?;
        if follower.is_leader() {
            let since = last_send.elapsed();
            if since < timing.lease {
                return Err(format!(
                    "round {round}: the follower led {since:?} after the crashed leader's acquire was sent, within its lease of {:?}",
                    timing.lease
                )
                .into());
            }
            // The lease ran out before the follower had started (a machine too busy for the
            // short leases of `--smoke`): this round times nothing. Run it again, a few times.
            slow_starts += 1;
            if slow_starts > 3 {
                return Err(format!(
                    "round {round}: the follower's start took longer than the lease ({:?}) {slow_starts} times; the machine is too busy to time a crash",
                    timing.lease
                )
                .into());
            }
            if leak {
                std::mem::forget(crashed);
            }
            follower.stop().await?;
            continue;
        }

        let renewals = round % 3;
        for _ in 0..renewals {
            tokio::time::sleep_until((last_send + timing.renew).into()).await;
            let t = Instant::now();
            match crashed.renew(&lease, timing.lease).await? {
                Renew::Renewed | Renew::HandoffRequested { .. } => last_send = t,
                Renew::Lost(record) => {
                    return Err(
                        format!("round {round}: renewal lost the lease to {record:?}").into(),
                    );
                }
                other => return Err(format!("round {round}: renewal gave {other:?}").into()),
            }
        }
        if leak {
            // Vanishes without its `Drop` running: etcd's candidacy gives its lease back when
            // dropped (best effort, for a clean exit), which a killed process never does.
            std::mem::forget(crashed);
        } else {
            drop(crashed); // vanishes: no release
        }

        let limit = timing.lease * 3 + Duration::from_secs(5);
        let arrived = became_leader_within(&mut events, limit, "the survivor").await?;
        crashes.push(Crash {
            failover: arrived.saturating_duration_since(last_send),
            renewals,
        });
        follower.stop().await?; // releases, so the next round starts on a free key
        round += 1;
    }
    Ok(crashes)
}
