//! `baton handoff [--to ID] [--timeout DUR] [--json]`: ask the leader, through the store, to
//! hand over to `ID` (or to any other candidate), and wait until the store shows the new
//! leader. Exit 0 once it does; 1 when nobody leads, the time runs out, or another candidate
//! than `ID` takes over; 2 on bad input, including an `ID` that no running candidate has
//! (where the store keeps presence records: every store of the crate).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use baton::{Changes, LeaseRecord};
use futures_util::StreamExt;
use serde::Serialize;

use crate::cli::HandoffArgs;
use crate::config::Settings;
use crate::failure::Failure;
use crate::output::{self, DIM, GOOD, HEADING, say};
use crate::session;

/// Longest wait between two reads while no push arrives: the leader hands over at its next
/// renewal, and a poll this short costs one read per 20 ms for a command that runs seconds.
const POLL: Duration = Duration::from_millis(20);

/// `handoff --json`: one object, whatever the outcome.
#[derive(Debug, Serialize)]
struct HandoffLine<'a> {
    key: &'a str,
    store: &'a str,
    /// The leader that was asked to hand over (`null`: nobody led).
    from: Option<&'a str>,
    /// The candidate asked for (`null`: any other).
    to: Option<&'a str>,
    /// Whether the candidate asked for (or, without `to`, another one) leads now.
    handed_over: bool,
    /// The leader at the end, and its fencing token.
    leader: Option<&'a str>,
    token: Option<u64>,
    /// From the request until the new leader showed in the store.
    took_ms: Option<f64>,
    ts: String,
    /// `CLOCK_BOOTTIME` just before the request was sent, in nanoseconds: comparable with the
    /// `boot_ns` of `campaign --json` events on the same machine.
    asked_boot_ns: Option<u64>,
}

pub async fn run(settings: Settings, args: HandoffArgs) -> Result<ExitCode, Failure> {
    if let Some(to) = &args.to
        && (to.trim().is_empty() || to.chars().any(char::is_control))
    {
        return Err(Failure::new(format!(
            "--to {to:?} is not a candidate id: ids are non-empty and printable, e.g. worker-2"
        )));
    }
    let store = session::open_store(&settings)?;
    let key = settings.key.as_str();
    let location = settings.store_display();
    let to = args.to.as_deref();
    let asked_boot_ns = std::cell::Cell::new(None);
    let report = |from: Option<&str>, now: Option<&LeaseRecord>, took: Option<Duration>| {
        let handed_over = took.is_some();
        if args.json {
            let (ts, _) = output::stamp();
            let _ = output::json_line(&HandoffLine {
                key,
                store: &location,
                from,
                to,
                handed_over,
                leader: now.map(|r| r.holder.as_str()),
                token: now.map(|r| r.token.get()),
                took_ms: took.map(|d| d.as_secs_f64() * 1000.0),
                ts,
                asked_boot_ns: asked_boot_ns.get(),
            });
        }
    };

    // Subscribed before the request, so that a handoff made right after it is not missed; the
    // check that `--to` is running goes out meanwhile, on the store's other connection where it
    // has one (Redis: the subscription is a connection of its own), so that neither waits for
    // the other.
    let subscribe = async { store.watch(key).await.ok().flatten() };
    let check = async {
        match to {
            Some(to) => session::check_candidate(store.as_ref(), &settings, to).await,
            None => Ok(()),
        }
    };
    let (changes, checked) = tokio::join!(subscribe, check);
    checked?;
    let mut changes: Option<Changes> = changes;
    asked_boot_ns.set(Some(output::stamp().1));
    let Some(asked) = session::request_handoff(store.as_ref(), &settings, to).await? else {
        report(None, None, None);
        if !args.json {
            say(format!(
                "{HEADING}No leader{HEADING:#} for {key}: nothing to hand over.\n{DIM}Store: {location}{DIM:#}\n"
            ));
        }
        return Ok(ExitCode::from(1));
    };
    let asked_at = Instant::now();
    let from = asked.holder.clone();
    if to == Some(from.as_str()) {
        report(Some(&from), Some(&asked), Some(Duration::ZERO));
        if !args.json {
            say(format!(
                "{GOOD}{from} already leads{GOOD:#} {key} (fencing token {}).\n",
                asked.token
            ));
        }
        return Ok(ExitCode::SUCCESS);
    }
    if !args.json {
        let whom = to.map_or("any other candidate".to_owned(), str::to_owned);
        say(format!(
            "{DIM}Asked {from} to hand {key} over to {whom}; waiting up to {}.{DIM:#}\n",
            baton::fmt_duration(args.timeout)
        ));
    }

    let deadline = asked_at + args.timeout;
    let mut last = Some(asked);
    loop {
        let now = match store.read(key).await {
            Ok(now) => now,
            Err(e) => {
                tracing::warn!(error = %e, "reading the key failed; retrying");
                last.clone()
            }
        };
        if let Some(record) = &now
            && record.holder != from
        {
            let took = asked_at.elapsed();
            if to.is_none_or(|to| to == record.holder) {
                report(Some(&from), Some(record), Some(took));
                if !args.json {
                    say(format!(
                        "{GOOD}{} leads{GOOD:#} {key} now (fencing token {}), {} after the request; {from} handed over.\n",
                        record.holder,
                        record.token,
                        baton::fmt_duration(Duration::from_millis(
                            u64::try_from(took.as_millis()).unwrap_or(u64::MAX)
                        )),
                    ));
                }
                return Ok(ExitCode::SUCCESS);
            }
            report(Some(&from), Some(record), None);
            if !args.json {
                say(format!(
                    "{} took over {key} (fencing token {}), not {}: {} did not come within the handoff's window, or {from}'s lease ended otherwise.\n",
                    record.holder,
                    record.token,
                    to.unwrap_or_default(),
                    to.unwrap_or_default(),
                ));
            }
            return Ok(ExitCode::from(1));
        }
        last = now;
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            report(Some(&from), last.as_ref(), None);
            if !args.json {
                let state = match &last {
                    Some(r) if r.holder == from => format!("{from} still leads"),
                    _ => "nobody leads yet".to_owned(),
                };
                say(format!(
                    "Timed out after {}: {state}. The leader sees the request at its next renewal; is it running, and is --timeout longer than its renew interval?\n",
                    baton::fmt_duration(args.timeout)
                ));
            }
            return Ok(ExitCode::from(1));
        }
        let wait = POLL.min(left);
        match &mut changes {
            Some(stream) => {
                tokio::select! {
                    change = stream.next() => if change.is_none() { changes = None },
                    () = tokio::time::sleep(wait) => {}
                }
            }
            None => tokio::time::sleep(wait).await,
        }
    }
}
