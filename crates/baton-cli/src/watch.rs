//! `baton watch [--json]`: stream leader changes at a key, as an observer (not a candidate).
//!
//! The store's own record is the truth, so the loop is: read the key, report a change of holder
//! or fencing token, then wait for the earliest of a push from the store (where it can push),
//! the current lease's expiry, or a short poll, and read again. Reading on every wake-up rather
//! than trusting the pushed hint keeps this correct for stores that push only hints.

use std::process::ExitCode;
use std::time::Duration;

use baton::{Changes, LeaseRecord};
use futures_util::StreamExt;

use crate::config::Settings;
use crate::failure::Failure;
use crate::output::{self, DIM, EventLine, HandoffView, NOTE, say};
use crate::session::{self, Shutdown};

/// Longest wait between two reads: bounds how late a change is seen when no push arrives.
const POLL: Duration = Duration::from_secs(1);
/// Read a little after the expiry, so the expired lease is really gone.
const AFTER_EXPIRY: Duration = Duration::from_millis(5);

pub async fn run(
    settings: Settings,
    json: bool,
    shutdown: &mut Shutdown,
) -> Result<ExitCode, Failure> {
    let store = session::open_store(&settings)?;
    let mut last = session::read_key(store.as_ref(), &settings).await?;
    let key = settings.key.as_str();
    let mut changes: Option<Changes> = subscribe(store.as_ref(), key).await;
    let mut handoff = pending(store.as_ref(), key).await;

    if json {
        if let Some(record) = &last
            && report(key, None, Some(record), true).is_err()
        {
            return Ok(ExitCode::SUCCESS);
        }
    } else {
        let now = last.as_ref().map_or("(none)".to_owned(), |r| {
            format!("{} (fencing token {})", r.holder, r.token)
        });
        say(format!(
            "{DIM}Watching {key} on {}; Ctrl-C to stop.{DIM:#}\nLeader now: {now}\n",
            settings.store_display()
        ));
    }

    loop {
        let wait = last
            .as_ref()
            .map_or(POLL, |r| (r.ttl + AFTER_EXPIRY).min(POLL));
        tokio::select! {
            _ = shutdown.recv() => return Ok(ExitCode::SUCCESS),
            change = next_change(&mut changes) => {
                if change.is_none() {
                    changes = None;
                }
            }
            () = tokio::time::sleep(wait) => {}
        }
        if changes.is_none() {
            changes = subscribe(store.as_ref(), key).await;
        }
        let now = match store.read(key).await {
            Ok(now) => now,
            Err(e) => {
                tracing::warn!(error = %e, "reading the key failed; retrying");
                continue;
            }
        };
        let same = |a: &Option<LeaseRecord>, b: &Option<LeaseRecord>| match (a, b) {
            (Some(a), Some(b)) => a.holder == b.holder && a.token == b.token,
            (None, None) => true,
            _ => false,
        };
        if !same(&last, &now) && report(key, last.as_ref(), now.as_ref(), json).is_err() {
            return Ok(ExitCode::SUCCESS);
        }
        last = now;
        let pending_now = pending(store.as_ref(), key).await;
        let unchanged = match (&handoff, &pending_now) {
            (Some(a), Some(b)) => a.same(b),
            (None, None) => true,
            _ => false,
        };
        if !unchanged
            && let Some(view) = &pending_now
            && report_handoff(key, view, json).is_err()
        {
            return Ok(ExitCode::SUCCESS);
        }
        handoff = pending_now;
    }
}

/// The handoff under way at `key`, if the store can tell (a failed read is none).
async fn pending(store: &dyn baton::LeaseStore, key: &str) -> Option<HandoffView> {
    match store.pending_handoff(key).await {
        Ok(pending) => pending.as_ref().and_then(HandoffView::new),
        Err(e) => {
            tracing::debug!(error = %e, "cannot read the handoff state");
            None
        }
    }
}

/// `watch --json`'s line for a planned handoff: `handoff_requested` or `handoff_reserved`.
#[derive(Debug, serde::Serialize)]
struct HandoffLine<'a> {
    event: String,
    key: &'a str,
    #[serde(flatten)]
    handoff: &'a HandoffView,
    ts: String,
    boot_ns: u64,
}

/// Print a planned handoff that began or moved on (requested, then reserved).
fn report_handoff(key: &str, view: &HandoffView, json: bool) -> std::io::Result<()> {
    let (ts, boot_ns) = output::stamp();
    if json {
        return output::json_line(&HandoffLine {
            event: format!("handoff_{}", view.state),
            key,
            handoff: view,
            ts,
            boot_ns,
        });
    }
    say(format!(
        "{DIM}{ts}{DIM:#}  {NOTE}handoff{NOTE:#}: {}\n",
        view.describe()
    ));
    Ok(())
}

async fn subscribe(store: &dyn baton::LeaseStore, key: &str) -> Option<Changes> {
    match store.watch(key).await {
        Ok(changes) => changes,
        Err(e) => {
            tracing::debug!(error = %e, "cannot subscribe to changes; polling");
            None
        }
    }
}

async fn next_change(changes: &mut Option<Changes>) -> Option<baton::Change> {
    match changes {
        Some(stream) => stream.next().await,
        None => std::future::pending().await,
    }
}

/// Print a change of leader (a new holder, or a new term of the same holder).
fn report(
    key: &str,
    before: Option<&LeaseRecord>,
    now: Option<&LeaseRecord>,
    json: bool,
) -> std::io::Result<()> {
    let (ts, boot_ns) = output::stamp();
    if json {
        return output::json_line(&EventLine {
            event: "leader_changed",
            candidate: None,
            key,
            token: now.map(|r| r.token.get()),
            leader: now.map(|r| r.holder.as_str()),
            reason: None,
            previous: Some(before.map(|r| r.holder.as_str())),
            ts,
            boot_ns,
        });
    }
    let name = |r: Option<&LeaseRecord>| {
        r.map_or("(none)".to_owned(), |r| {
            format!("{} (fencing token {})", r.holder, r.token)
        })
    };
    say(format!(
        "{DIM}{ts}{DIM:#}  {NOTE}leader changed{NOTE:#}: {} -> {}\n",
        name(before),
        name(now)
    ));
    Ok(())
}
