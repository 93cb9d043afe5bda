//! What an election tells its subscribers.

use std::fmt;

use tokio::sync::broadcast;

use crate::FencingToken;

/// Why this candidate stopped leading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LossReason {
    /// A renewal found the lease held by someone else, or gone.
    LeaseLost,
    /// Renewals kept failing for `renew_interval + grace_period` after the last good one.
    RenewalsFailed,
    /// The local deadline (from the send time of the last good renewal) passed.
    DeadlineReached,
    /// [`LeaderElection::stop`](crate::LeaderElection::stop) was called or the handle was
    /// dropped.
    Stopped,
    /// [`LeaderElection::hand_over`](crate::LeaderElection::hand_over) ended the term on
    /// purpose, to let another candidate lead.
    HandedOver,
}

impl LossReason {
    /// A stable snake_case name, for logs, metrics and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            LossReason::LeaseLost => "lease_lost",
            LossReason::RenewalsFailed => "renewals_failed",
            LossReason::DeadlineReached => "deadline_reached",
            LossReason::Stopped => "stopped",
            LossReason::HandedOver => "handed_over",
        }
    }
}

impl fmt::Display for LossReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An election event. Delivered through channels, never run on the renewal path.
///
/// Events may be added in minor releases: match with a `_` arm.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// This candidate became the leader.
    BecameLeader {
        /// This candidate's id.
        candidate: String,
        /// The election key.
        key: String,
        /// The fencing token of the new term.
        token: FencingToken,
    },
    /// This candidate stopped leading.
    LostLeadership {
        /// This candidate's id.
        candidate: String,
        /// The election key.
        key: String,
        /// The fencing token of the term that ended.
        token: FencingToken,
        /// Why.
        reason: LossReason,
    },
    /// The leader, as this candidate knows it, changed: raised for remote changes too, so
    /// followers see who leads. `None` means no leader is known.
    LeaderChanged {
        /// The leader before.
        previous: Option<String>,
        /// The leader now.
        current: Option<String>,
    },
}

impl Event {
    /// A stable snake_case name: `became_leader`, `lost_leadership`, `leader_changed`.
    pub fn name(&self) -> &'static str {
        match self {
            Event::BecameLeader { .. } => "became_leader",
            Event::LostLeadership { .. } => "lost_leadership",
            Event::LeaderChanged { .. } => "leader_changed",
        }
    }
}

/// A subscription to an election's [`Event`]s, from [`LeaderElection::subscribe`].
///
/// Events are buffered (16 per subscriber). A subscriber that falls further behind skips the
/// oldest events rather than slowing the election; [`Events::missed`] counts them. The
/// [`state`](crate::LeaderElection::state) channel always has the current truth.
///
/// [`LeaderElection::subscribe`]: crate::LeaderElection::subscribe
#[derive(Debug)]
pub struct Events {
    pub(crate) rx: broadcast::Receiver<Event>,
    pub(crate) missed: u64,
}

impl Events {
    /// The next event, or `None` once the election is dropped.
    pub async fn recv(&mut self) -> Option<Event> {
        loop {
            match self.rx.recv().await {
                Ok(e) => return Some(e),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "event subscriber fell behind; events skipped");
                    self.missed += n;
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// The next event if one is ready, without waiting.
    pub fn try_recv(&mut self) -> Option<Event> {
        loop {
            match self.rx.try_recv() {
                Ok(e) => return Some(e),
                Err(broadcast::error::TryRecvError::Lagged(n)) => self.missed += n,
                Err(_) => return None,
            }
        }
    }

    /// How many events this subscriber skipped because it fell behind.
    pub fn missed(&self) -> u64 {
        self.missed
    }
}
