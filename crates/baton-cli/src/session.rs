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

/// Read the key once, so that an unreachable store or foreign data at the key is reported at
/// once, as bad input, rather than retried forever by the election.
pub async fn read_key(
    store: &dyn LeaseStore,
    settings: &Settings,
) -> Result<Option<LeaseRecord>, Failure> {
    let context = || {
        format!(
            "cannot read the key {:?} from the store {}",
            settings.key,
            settings.store_display()
        )
    };
    match tokio::time::timeout(PROBE_TIMEOUT, store.read(&settings.key)).await {
        Ok(Ok(record)) => Ok(record),
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
    #[cfg_attr(not(feature = "unsafe-testing"), allow(unused_mut))]
    let mut builder =
        LeaderElection::builder_dyn(store, settings.key.clone()).options(settings.options.clone());
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

/// Stop the election (cancel the scope, emit the event, release the lease). A second signal
/// while stopping gives up waiting: returns false, and the lease then expires in the store.
/// A release the store did not take is said on stderr; the election is stopped all the same.
pub async fn leave(election: &LeaderElection, shutdown: &mut Shutdown) -> bool {
    tokio::select! {
        stopped = election.stop() => {
            if let Err(e) = stopped {
                tracing::warn!("{e}");
            }
            true
        }
        _ = shutdown.recv() => false,
    }
}
