//! `baton status [--json]`: who leads, with which fencing token, for how much longer. Exit 0
//! when a leader exists and 1 when none does, so scripts can branch on it.

use std::process::ExitCode;

use serde::Serialize;

use crate::config::Settings;
use crate::failure::Failure;
use crate::output::{self, DIM, HEADING, HandoffView, say};
use crate::session;

/// `status --json`: one object. `ttl_ms` is the remaining lease by the store's clock.
#[derive(Debug, Serialize)]
struct StatusLine<'a> {
    key: &'a str,
    store: &'a str,
    leader: Option<&'a str>,
    token: Option<u64>,
    ttl_ms: Option<u64>,
    /// A planned handoff under way (`null`: none).
    handoff: Option<HandoffView>,
    /// The running candidates, by their presence records (`null`: the store keeps none).
    candidates: Option<Vec<CandidateLine>>,
    ts: String,
}

#[derive(Debug, Serialize)]
struct CandidateLine {
    id: String,
    priority: u32,
    ttl_ms: u64,
}

pub async fn run(settings: Settings, json: bool) -> Result<ExitCode, Failure> {
    let store = session::open_store(&settings)?;
    let record = session::read_key(store.as_ref(), &settings).await?;
    let location = settings.store_display();
    // Best effort: the lease above is what status is for, and a store that keeps no handoff
    // state or presence answers `None` anyway.
    let handoff = match store.pending_handoff(&settings.key).await {
        Ok(pending) => pending.as_ref().and_then(HandoffView::new),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the handoff state");
            None
        }
    };
    let mut candidates = match store.candidates(&settings.key).await {
        Ok(live) => live,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the presence records");
            None
        }
    };
    if let Some(live) = &mut candidates {
        live.sort_by(|a, b| a.candidate.cmp(&b.candidate));
    }
    if json {
        let (ts, _) = output::stamp();
        output::json_line(&StatusLine {
            key: &settings.key,
            store: &location,
            leader: record.as_ref().map(|r| r.holder.as_str()),
            token: record.as_ref().map(|r| r.token.get()),
            ttl_ms: record
                .as_ref()
                .map(|r| u64::try_from(r.ttl.as_millis()).unwrap_or(u64::MAX)),
            handoff,
            candidates: candidates.map(|live| {
                live.into_iter()
                    .map(|p| CandidateLine {
                        id: p.candidate,
                        priority: p.priority,
                        ttl_ms: u64::try_from(p.ttl.as_millis()).unwrap_or(u64::MAX),
                    })
                    .collect()
            }),
            ts,
        })
        .map_err(|e| Failure::new(format!("cannot write to stdout: {e}")))?;
    } else {
        match &record {
            Some(r) => say(format!(
                "{HEADING}Leader:{HEADING:#} {}\n\
                 Fencing token: {}\n\
                 Remaining lease: {}\n\
                 {DIM}Key: {}  Store: {location}{DIM:#}\n",
                r.holder,
                r.token,
                baton::fmt_duration(round_to_millis(r.ttl)),
                settings.key,
            )),
            None => say(format!(
                "{HEADING}No leader{HEADING:#} for {}\n{DIM}Store: {location}{DIM:#}\n",
                settings.key
            )),
        }
        if let Some(handoff) = &handoff {
            say(format!("Handoff: {}\n", handoff.describe()));
        }
        if let Some(live) = candidates.as_ref().filter(|l| !l.is_empty()) {
            let names: Vec<String> = live
                .iter()
                .map(|p| format!("{} (priority {})", p.candidate, p.priority))
                .collect();
            say(format!("Candidates: {}\n", names.join(", ")));
        }
    }
    Ok(if record.is_some() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

pub fn round_to_millis(d: std::time::Duration) -> std::time::Duration {
    std::time::Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
