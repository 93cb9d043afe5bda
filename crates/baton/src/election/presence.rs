//! Presence records and priorities (docs/decisions.md D134).
//!
//! A candidate with presence on writes its record ([`LeaseStore::announce`]) when its run
//! starts and every renew interval after, with a TTL of one lease, and removes it when the run
//! ends. The records answer two questions no lease can: is a candidate alive, and how much
//! does it want to lead. The rules that use them are pure functions here ([`claims`],
//! [`admits_request`]); the task that keeps the record ([`keep`]) only carries them out.
//!
//! The record is kept beside the election, not by its state machine: it is one write per
//! renew interval whatever the election does, and it must not delay a renewal or wait behind
//! an acquire.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::driver::sleep_on;
use super::{Role, Shared};
use crate::Presence;

/// Whether follower `me`, with `priority`, should ask `leader` to hand the lease over to it,
/// given the live records `live`.
///
/// * Only a follower claims, and only from a leader whose record it can see: a leader without
///   one (it does not announce, or its record ran out) keeps the lease, since its priority is
///   unknown.
/// * Only a strictly higher priority claims: equal priorities never displace a leader.
/// * Of several followers above the leader, only the one with the highest priority claims
///   (the smallest id among equals), so they do not take the lease from each other in turn.
pub(crate) fn claims(me: &str, priority: u32, leader: Option<&str>, live: &[Presence]) -> bool {
    let Some(leader) = leader else {
        return false;
    };
    if leader == me {
        return false;
    }
    let Some(theirs) = live.iter().find(|p| p.candidate == leader) else {
        return false;
    };
    if priority <= theirs.priority {
        return false;
    }
    !live.iter().any(|p| {
        p.candidate != me
            && p.candidate != leader
            && (p.priority > priority || (p.priority == priority && p.candidate.as_str() < me))
    })
}

/// Whether a leader should answer a handoff request to `to`, given the live records `live`
/// (`None`: the store keeps none). A leader never hands over to a candidate it can tell is not
/// alive: one without a record, where some candidate at the key has one. Where nobody has a
/// record (the store keeps none, or the candidates do not announce), it cannot tell, and it
/// answers: a mark for a candidate that never comes runs out within one lease.
pub(crate) fn admits_request(to: Option<&str>, live: Option<&[Presence]>) -> bool {
    match (to, live) {
        (None, _) | (_, None) => true,
        (Some(_), Some([])) => true,
        (Some(to), Some(live)) => live.iter().any(|p| p.candidate == to),
    }
}

/// Keep this candidate's presence record at the election's key until `done` is cancelled or
/// the run ends, then remove it. Every renew interval: write the record, keep the list of live
/// records for the leader's check ([`admits_request`]), and, as a follower, ask for the lease
/// when [`claims`] says so (at most once a lease: the leader answers at its next renewal, or
/// at once where its store pushes the request).
pub(crate) async fn keep(shared: Arc<Shared>, done: CancellationToken) {
    let config = shared.config.clone();
    let timing = &config.timing;
    let store = shared.store.clone();
    let mut last_claim: Option<Duration> = None;
    loop {
        let announced = tokio::time::timeout(
            timing.request_timeout,
            store.announce(
                &config.key,
                &config.candidate,
                config.priority,
                timing.lease,
            ),
        )
        .await;
        match announced {
            Ok(Ok(live)) => {
                let claim = live.as_deref().is_some_and(|live| {
                    let state = shared.state.get();
                    state.role == Role::Follower
                        && claims(
                            &config.candidate,
                            config.priority,
                            state.leader.as_deref(),
                            live,
                        )
                });
                *shared.presence.lock().unwrap_or_else(|e| e.into_inner()) = live;
                let now = shared.clock.now();
                let due = last_claim.is_none_or(|at| now >= at + timing.lease);
                if claim && due && !done.is_cancelled() {
                    last_claim = Some(now);
                    tracing::info!(
                        key = %config.key,
                        priority = config.priority,
                        "asking the leader to hand over: this candidate's priority is higher"
                    );
                    let asked = tokio::time::timeout(
                        timing.request_timeout,
                        store.request_handoff(&config.key, Some(&config.candidate)),
                    )
                    .await;
                    if let Ok(Err(e)) = asked {
                        tracing::warn!(key = %config.key, error = %e, "the handoff request failed");
                    }
                }
            }
            Ok(Err(e)) => {
                tracing::debug!(key = %config.key, error = %e, "writing the presence record failed");
            }
            Err(_) => {
                tracing::debug!(key = %config.key, "writing the presence record timed out");
            }
        }
        tokio::select! {
            () = done.cancelled() => break,
            () = sleep_on(&shared.clock, timing.renew) => {}
        }
        if !shared.running.load(Ordering::Acquire) {
            break;
        }
    }
    *shared.presence.lock().unwrap_or_else(|e| e.into_inner()) = None;
    let withdrawn = tokio::time::timeout(
        timing.request_timeout,
        store.withdraw(&config.key, &config.candidate),
    )
    .await;
    if !matches!(withdrawn, Ok(Ok(()))) {
        tracing::debug!(key = %config.key, "removing the presence record failed; it runs out within one lease");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(records: &[(&str, u32)]) -> Vec<Presence> {
        records
            .iter()
            .map(|(c, p)| Presence::new(*c, *p, Duration::from_secs(15)))
            .collect()
    }

    #[test]
    fn who_claims_the_lease() {
        let three = live(&[("lead", 1), ("a", 5), ("b", 3)]);
        // (me, priority, leader, live, claims)
        type Row<'a> = (&'a str, u32, Option<&'a str>, &'a [Presence], bool);
        let table: &[Row] = &[
            ("a", 5, Some("lead"), &three, true),
            // Only the highest follower claims.
            ("b", 3, Some("lead"), &three, false),
            // Equal priorities never displace a leader.
            ("a", 1, Some("lead"), &live(&[("lead", 1), ("a", 1)]), false),
            // A lower one never does.
            ("a", 0, Some("lead"), &live(&[("lead", 1), ("a", 0)]), false),
            // Nobody leads: nothing to claim (the follower campaigns as usual).
            ("a", 5, None, &three, false),
            // A leader without a record keeps the lease: its priority is unknown.
            ("a", 5, Some("ghost"), &three, false),
            // The leader itself never claims.
            ("lead", 9, Some("lead"), &three, false),
            // Among equals above the leader, the smallest id claims.
            (
                "a",
                4,
                Some("lead"),
                &live(&[("lead", 1), ("a", 4), ("b", 4)]),
                true,
            ),
            (
                "b",
                4,
                Some("lead"),
                &live(&[("lead", 1), ("a", 4), ("b", 4)]),
                false,
            ),
        ];
        for (me, priority, leader, live, expected) in table {
            assert_eq!(
                claims(me, *priority, *leader, live),
                *expected,
                "{me} with priority {priority}, leader {leader:?}, live {live:?}"
            );
        }
    }

    #[test]
    fn a_leader_answers_requests_only_for_live_candidates_where_it_can_tell() {
        let records = live(&[("lead", 0), ("a", 0)]);
        assert!(admits_request(Some("a"), Some(&records)));
        assert!(!admits_request(Some("ghost"), Some(&records)));
        assert!(admits_request(None, Some(&records)), "to anyone");
        assert!(admits_request(Some("ghost"), None), "no presence kept");
        assert!(admits_request(Some("ghost"), Some(&[])), "nobody announces");
    }
}
