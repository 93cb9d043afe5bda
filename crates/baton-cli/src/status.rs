//! `baton status [--json]`: who leads, with which fencing token, for how much longer. Exit 0
//! when a leader exists and 1 when none does, so scripts can branch on it.

use std::process::ExitCode;

use serde::Serialize;

use crate::config::Settings;
use crate::failure::Failure;
use crate::output::{self, DIM, HEADING, say};
use crate::session;

/// `status --json`: one object. `ttl_ms` is the remaining lease by the store's clock.
#[derive(Debug, Serialize)]
struct StatusLine<'a> {
    key: &'a str,
    store: &'a str,
    leader: Option<&'a str>,
    token: Option<u64>,
    ttl_ms: Option<u64>,
    ts: String,
}

pub async fn run(settings: Settings, json: bool) -> Result<ExitCode, Failure> {
    let store = session::open_store(&settings)?;
    let record = session::read_key(store.as_ref(), &settings).await?;
    let location = settings.store_display();
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
