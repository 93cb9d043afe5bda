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
use crate::output::{self, DIM, EventLine, NOTE, say};
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
    }
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
