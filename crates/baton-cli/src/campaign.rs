//! `baton campaign [--json]`: join the election and print this candidate's events until
//! SIGINT or SIGTERM, then leave gracefully (release the lease) and exit 0.

use std::io;
use std::process::ExitCode;
use std::sync::Arc;

use baton::{ElectionState, Event};
use tokio::sync::watch;

use crate::config::Settings;
use crate::failure::Failure;
use crate::output::{self, BAD, DIM, EventLine, EventPump, GOOD, NOTE, leader_name, say};
use crate::session::{self, Shutdown};

pub async fn run(
    settings: Settings,
    json: bool,
    shutdown: &mut Shutdown,
) -> Result<ExitCode, Failure> {
    let store = session::open_store(&settings)?;
    session::read_key(store.as_ref(), &settings).await?;
    let election = session::build_election(Arc::clone(&store), &settings)?;

    let candidate = election.candidate_id().to_owned();
    let key = election.key().to_owned();
    let state = election.state();
    let pump = EventPump::spawn(election.subscribe(), move |event| {
        if json {
            print_json(&event, &candidate, &key, &state)
        } else {
            print_human(&event, &candidate);
            Ok(())
        }
    });

    if !json {
        say(format!(
            "{DIM}Campaigning for {} on {} as {}; Ctrl-C to leave.{DIM:#}\n",
            settings.key,
            settings.store_display(),
            election.candidate_id()
        ));
    }
    election.start().await?;

    let closed = pump.closed();
    tokio::select! {
        signal = shutdown.recv() => tracing::info!(signal, "leaving the election"),
        () = closed.cancelled() => tracing::info!("stdout closed; leaving the election"),
    }
    if !session::leave(&election, store.as_ref(), shutdown).await {
        return Ok(ExitCode::from(130));
    }
    pump.flush().await;
    Ok(ExitCode::SUCCESS)
}

fn print_json(
    event: &Event,
    candidate: &str,
    key: &str,
    state: &watch::Receiver<ElectionState>,
) -> io::Result<()> {
    let (ts, boot_ns) = output::stamp();
    let line = match event {
        Event::BecameLeader { token, .. } => EventLine {
            event: event.name(),
            candidate: Some(candidate),
            key,
            token: Some(token.get()),
            leader: Some(candidate),
            reason: None,
            previous: None,
            ts,
            boot_ns,
        },
        Event::LostLeadership { token, reason, .. } => {
            // The event does not say who leads now; the state does, unless it is already
            // stale (we lead again), in which case the next lines tell.
            let leader = state.borrow().leader.clone().filter(|l| l != candidate);
            return output::json_line(&EventLine {
                event: event.name(),
                candidate: Some(candidate),
                key,
                token: Some(token.get()),
                leader: leader.as_deref(),
                reason: Some(reason.as_str()),
                previous: None,
                ts,
                boot_ns,
            });
        }
        Event::LeaderChanged {
            previous, current, ..
        } => {
            // The token is known only for our own term.
            let token = match current.as_deref() {
                Some(c) if c == candidate => state.borrow().token.map(|t| t.get()),
                _ => None,
            };
            return output::json_line(&EventLine {
                event: event.name(),
                candidate: Some(candidate),
                key,
                token,
                leader: current.as_deref(),
                reason: None,
                previous: Some(previous.as_deref()),
                ts,
                boot_ns,
            });
        }
        // An event this build does not know: its name and the state tell the rest.
        _ => EventLine {
            event: event.name(),
            candidate: Some(candidate),
            key,
            token: None,
            leader: None,
            reason: None,
            previous: None,
            ts,
            boot_ns,
        },
    };
    output::json_line(&line)
}

fn print_human(event: &Event, me: &str) {
    let (ts, _) = output::stamp();
    let text = match event {
        Event::BecameLeader { token, .. } => {
            format!("{GOOD}became leader{GOOD:#} (fencing token {token})")
        }
        Event::LostLeadership { token, reason, .. } => {
            format!("{BAD}lost leadership{BAD:#}: {reason} (fencing token {token})")
        }
        Event::LeaderChanged {
            previous, current, ..
        } => format!(
            "{NOTE}leader changed{NOTE:#}: {} -> {}",
            leader_name(previous.as_deref(), me),
            leader_name(current.as_deref(), me)
        ),
        _ => event.name().replace('_', " "),
    };
    say(format!("{DIM}{ts}{DIM:#}  {text}\n"));
}
