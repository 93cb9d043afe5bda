//! What every command does around its own work: open the store, check it answers, catch
//! SIGINT/SIGTERM, and leave an election gracefully.

use std::sync::Arc;
use std::time::Duration;

use baton::{LeaderElection, LeaseRecord, LeaseStore};
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::config::Settings;
use crate::failure::Failure;

/// How long the first read may take before the store counts as unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Open the store the settings name. Errors say which store, with any password redacted.
pub fn open_store(settings: &Settings) -> Result<Arc<dyn LeaseStore>, Failure> {
    baton::connect::store_from_url(&settings.store).map_err(|e| match e {
        baton::Error::Config(_) => Failure::from(e),
        other => Failure::from(other).context(format!(
            "cannot open the store {}",
            settings.store_display()
        )),
    })
}

/// Check that `to` is a running candidate, where the store keeps presence records (every store
/// of the crate): a name that is not running is bad input. A store without records admits any.
pub async fn check_candidate(
    store: &dyn LeaseStore,
    settings: &Settings,
    to: &str,
) -> Result<(), Failure> {
    probe(
        baton::check_alive(store, &settings.key, to),
        "cannot hand over the key",
        "in",
        settings,
    )
    .await
}

/// Ask the holder of the key to hand over to `to` (or anyone else): the holder's record, or
/// `None` when nobody holds it. A store that takes no requests is bad input. Check `to` with
/// [`check_candidate`] first.
pub async fn request_handoff(
    store: &dyn LeaseStore,
    settings: &Settings,
    to: Option<&str>,
) -> Result<Option<LeaseRecord>, Failure> {
    probe(
        store.request_handoff(&settings.key, to),
        "cannot ask for a handoff of the key",
        "in",
        settings,
    )
    .await
}

/// Read the key once, so that an unreachable store or foreign data at the key is reported at
/// once, as bad input, rather than retried forever by the election.
pub async fn read_key(
    store: &dyn LeaseStore,
    settings: &Settings,
) -> Result<Option<LeaseRecord>, Failure> {
    probe(
        store.read(&settings.key),
        "cannot read the key",
        "from",
        settings,
    )
    .await
}

/// One store call on the key, given [`PROBE_TIMEOUT`]; a failure, or no answer, is bad input
/// that says what was being done: `"{doing} {key:?} {preposition} the store {store}"`.
async fn probe<T>(
    call: impl std::future::Future<Output = baton::Result<T>>,
    doing: &str,
    preposition: &str,
    settings: &Settings,
) -> Result<T, Failure> {
    let context = || {
        format!(
            "{doing} {:?} {preposition} the store {}",
            settings.key,
            settings.store_display()
        )
    };
    match tokio::time::timeout(PROBE_TIMEOUT, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(Failure::from(e).context(context())),
        Err(_) => Err(Failure::new(format!(
            "no answer within {}: is the store running and reachable?",
            baton::fmt_duration(PROBE_TIMEOUT)
        ))
        .context(context())),
    }
}

/// Build the election the settings describe.
pub fn build_election(
    store: Arc<dyn LeaseStore>,
    settings: &Settings,
) -> Result<LeaderElection, Failure> {
    // One election per process: a subscription while leading costs nothing that matters, and
    // `baton handoff` then reaches the leader at once where the store pushes (D133).
    #[cfg_attr(not(feature = "unsafe-testing"), allow(unused_mut))]
    let mut builder = LeaderElection::builder_dyn(store, settings.key.clone())
        .options(settings.options.clone())
        .listen_for_handoff_requests(true)
        // Presence records, so that `baton handoff --to` can tell a running candidate from a
        // name, and priorities (D134).
        .announce_presence(true)
        .priority(settings.priority);
    #[cfg(feature = "unsafe-testing")]
    if unsafe_ignore_deadline_for_testing() {
        tracing::warn!(
            "--unsafe-ignore-deadline-for-testing: this candidate ignores its deadline and can \
             act as leader alongside another; for testing safety checkers only"
        );
        builder = builder.unsafe_ignore_deadline_for_testing();
    }
    let election = builder.build()?;
    crate::metrics::watch(&election);
    Ok(election)
}

/// Whether the hidden, test-only `--unsafe-ignore-deadline-for-testing` flag was given. It is
/// no setting (no config file or environment variable can turn it on), so [`Settings`] does not
/// carry it: it is read from the command line, parsed with the same definition as every other
/// flag, so an argument of the command after `run --` never counts.
#[cfg(feature = "unsafe-testing")]
fn unsafe_ignore_deadline_for_testing() -> bool {
    use clap::Parser;
    crate::cli::Cli::try_parse().is_ok_and(|cli| cli.global.unsafe_ignore_deadline_for_testing)
}

/// SIGINT and SIGTERM, caught from the start of the process, so that a signal that arrives
/// while the store is being opened still leads to a graceful stop instead of killing the
/// process with the lease held.
pub struct Shutdown {
    interrupt: Signal,
    terminate: Signal,
}

impl Shutdown {
    pub fn install() -> Result<Self, Failure> {
        let catch = |kind| {
            signal(kind).map_err(|e| Failure::new(format!("cannot install a signal handler: {e}")))
        };
        Ok(Shutdown {
            interrupt: catch(SignalKind::interrupt())?,
            terminate: catch(SignalKind::terminate())?,
        })
    }

    /// The next SIGINT or SIGTERM; returns its name.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}

/// How long a leader that left waits for the next leader before its process goes on to exit
/// (docs/decisions.md D129): its exit (closing the store's connections, the runtime's
/// teardown) would otherwise compete with the successor's acquire for the same cores.
pub const SUCCESSOR_WAIT: Duration = Duration::from_millis(100);

/// How long a leader that left stays once it has seen the next leader: the successor learns
/// of its own acquire when the store's notice reaches this process, and still has its event
/// to deliver and its work to start (D129).
pub const SUCCESSOR_SETTLE: Duration = Duration::from_millis(10);

/// Stop the election (cancel the scope, emit the event, release the lease). A second signal
/// while stopping gives up waiting: returns false, and the lease then expires in the store.
/// A release the store did not take is said on stderr; the election is stopped all the same.
///
/// A leader that released then reads its key, for at most [`SUCCESSOR_WAIT`], until its store
/// says that another candidate leads, and waits [`SUCCESSOR_SETTLE`] more (only on a store
/// that pushes changes, where the successor is quick; a second signal ends the wait at once). The release has happened by then: the wait
/// only keeps this process's teardown out of the successor's way.
pub async fn leave(
    election: &LeaderElection,
    store: &dyn LeaseStore,
    shutdown: &mut Shutdown,
) -> bool {
    let was_leader = election.is_leader();
    let stopped = tokio::select! {
        stopped = election.stop() => stopped,
        _ = shutdown.recv() => return false,
    };
    if let Err(e) = stopped {
        tracing::warn!("{e}");
        return true;
    }
    if was_leader && store.info().can_watch {
        let me = election.candidate_id();
        tokio::select! {
            next = wait_for_successor(store, election.key(), me) => match next {
                Some(holder) => tracing::info!(holder, "the next leader leads"),
                None => tracing::debug!("no next leader seen; exiting"),
            },
            _ = shutdown.recv() => {}
        }
    }
    true
}

/// Wait at most [`SUCCESSOR_WAIT`] for a holder of `key` other than `me`; once one is seen,
/// stay [`SUCCESSOR_SETTLE`] more. Returns it, or `None` if none was seen in time.
async fn wait_for_successor(store: &dyn LeaseStore, key: &str, me: &str) -> Option<String> {
    let holder = tokio::time::timeout(SUCCESSOR_WAIT, successor(store, key, me))
        .await
        .ok()
        .flatten()?;
    tokio::time::sleep(SUCCESSOR_SETTLE).await;
    Some(holder)
}

/// The first gap before a leader that left reads its key; each later gap is twice the one
/// before (reads at 1, 3, 7, 15, 31 and 63 ms after the release).
pub const SUCCESSOR_FIRST_GAP: Duration = Duration::from_millis(1);

/// The next holder of `key` other than `me`, by reads on the store's open connections at
/// doubling gaps; `None` if the store cannot tell. Reads, not a watch: on MySQL and PostgreSQL
/// a watch opens a connection of its own, a new server thread or process at the very moment
/// the successor acquires, which is what this wait keeps out of its way (D129).
async fn successor(store: &dyn LeaseStore, key: &str, me: &str) -> Option<String> {
    let mut gap = SUCCESSOR_FIRST_GAP;
    loop {
        tokio::time::sleep(gap).await;
        gap *= 2;
        match store.read(key).await {
            Ok(Some(record)) if record.holder != me => return Some(record.holder),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton::{Acquire, MemoryStore};
    use tokio::time::Instant;

    const KEY: &str = "jobs";

    async fn lead(store: &MemoryStore, who: &str) {
        let mut c = store.join(KEY, who).await.unwrap();
        let got = c.try_acquire(Duration::from_secs(15)).await.unwrap();
        assert!(matches!(got, Acquire::Acquired(_)), "{who} should lead");
    }

    /// [`wait_for_successor`] of `a`, and how long it took.
    async fn timed_wait(store: &MemoryStore) -> (Option<String>, Duration) {
        let t0 = Instant::now();
        let next = wait_for_successor(store, KEY, "a").await;
        (next, t0.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_that_left_waits_until_its_successor_leads_then_settles() {
        let store = MemoryStore::new();
        let later = store.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            lead(&later, "b").await;
        });
        // Read at 1, 3, 7, 15 and 31 ms: the last finds b.
        let (next, took) = timed_wait(&store).await;
        assert_eq!(next.as_deref(), Some("b"));
        assert_eq!(took, Duration::from_millis(31) + SUCCESSOR_SETTLE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_successor_that_already_leads_is_found_by_the_first_read() {
        let store = MemoryStore::new();
        lead(&store, "b").await;
        let (next, took) = timed_wait(&store).await;
        assert_eq!(next.as_deref(), Some("b"));
        assert_eq!(took, SUCCESSOR_FIRST_GAP + SUCCESSOR_SETTLE);
    }

    #[tokio::test(start_paused = true)]
    async fn with_no_other_candidate_the_wait_ends_after_successor_wait() {
        let store = MemoryStore::new();
        assert_eq!(timed_wait(&store).await, (None, SUCCESSOR_WAIT));
    }

    #[tokio::test(start_paused = true)]
    async fn the_leaver_itself_taking_the_key_again_is_no_successor() {
        let store = MemoryStore::new();
        lead(&store, "a").await;
        assert_eq!(timed_wait(&store).await, (None, SUCCESSOR_WAIT));
    }
}
