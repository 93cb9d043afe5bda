//! `baton demo`: the seed's walkthrough ("Sample Output"), on the default SQLite store.
//!
//! Demo 1 subscribes to events, Demo 2 starts the election, Demo 3 monitors the status, Demo 4
//! does leader-only work inside `run_while_leader`, and the graceful shutdown releases the
//! lease. Run it in two terminals: one leads, the other follows, shows who leads, and takes
//! over the moment the first one stops. Ctrl-C at any point jumps to the graceful shutdown.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use baton::{Event, LeaderElection, Leadership, LossReason};

use crate::cli::DemoArgs;
use crate::config::Settings;
use crate::failure::Failure;
use crate::output::{BAD, DIM, EventPump, GOOD, HEADING, NOTE, leader_name, say};
use crate::session::{self, Shutdown};

pub async fn run(
    settings: Settings,
    args: DemoArgs,
    shutdown: &mut Shutdown,
) -> Result<ExitCode, Failure> {
    let store = session::open_store(&settings)?;
    session::read_key(store.as_ref(), &settings).await?;
    let election = session::build_election(Arc::clone(&store), &settings)?;
    let me = election.candidate_id().to_owned();

    say(format!(
        "{HEADING}=================================================\n  \
         Baton: Leader Election Demo\n\
         ================================================={HEADING:#}\n\n"
    ));

    // Demo 1: subscribe before starting, so no event is missed.
    section("Demo 1: Subscribe to Leadership Events");
    let o = election.options();
    say(format!(
        "Candidate ID: {me}\nStore: {}\nLock Key: {}\nLease Duration: {}\nRenew Interval: {}\nGrace Period: {}\n\n",
        settings.store_display(),
        election.key(),
        baton::fmt_duration(o.lease_duration),
        baton::fmt_duration(o.renew_interval),
        baton::fmt_duration(o.grace_period),
    ));
    let pump = {
        let me = me.clone();
        EventPump::spawn(election.subscribe(), move |event| {
            print_event(&event, &me);
            Ok(())
        })
    };
    say(
        "Event handlers registered for:\n  - BecameLeader\n  - LostLeadership\n  - LeaderChanged\n\n",
    );

    let walkthrough = async {
        start(&election, &pump).await?;
        monitor(&election, &args).await;
        leader_work(&election, &pump, &args).await
    };
    tokio::select! {
        result = walkthrough => result?,
        signal = shutdown.recv() => {
            pump.flush().await;
            say(format!("\n{BAD}Received {signal}: shutting down gracefully.{BAD:#}\n\n"));
        }
    }

    section("Graceful Shutdown");
    let was_leader = election.is_leader();
    say("Stopping leader election...\n");
    if !session::leave(&election, store.as_ref(), shutdown).await {
        say("Interrupted again: exiting without waiting; the lease will expire in the store.\n");
        return Ok(ExitCode::from(130));
    }
    pump.flush().await;
    if was_leader {
        say(format!(
            "\nLease released: another instance can take over now, without waiting {} for it to expire.\n",
            baton::fmt_duration(o.lease_duration)
        ));
    } else {
        say("\nLeft the election. This instance was not leading, so it had no lease to release.\n");
    }
    say("\nDemo complete.\n");
    Ok(ExitCode::SUCCESS)
}

fn section(title: &str) {
    say(format!("{HEADING}=== {title} ==={HEADING:#}\n\n"));
}

/// Demo 2: start, then show the first result once its events are printed.
async fn start(election: &LeaderElection, pump: &EventPump) -> Result<(), Failure> {
    section("Demo 2: Start Leader Election");
    say("Starting leader election...\n");
    election.start().await?;
    pump.flush().await;
    let me = election.candidate_id();
    say(format!(
        "\nInitial election result:\n  Is Leader: {}\n  Current Leader: {}\n",
        election.is_leader(),
        leader_name(election.current_leader_id().as_deref(), me),
    ));
    if let Some(error) = &election.state().borrow().last_error {
        say(format!(
            "  {BAD}Store error:{BAD:#} {error} (still trying)\n"
        ));
    }
    say("\n");
    Ok(())
}

/// Demo 3: a few status checks, some time apart.
async fn monitor(election: &LeaderElection, args: &DemoArgs) {
    section("Demo 3: Monitor Leadership Status");
    let total = args.check_interval * args.checks;
    say(format!(
        "Monitoring leadership status for {}...\n\n",
        baton::fmt_duration(total)
    ));
    let me = election.candidate_id();
    for i in 1..=args.checks {
        let mut text = format!(
            "Status check {i}/{}:\n  Is Leader: {}\n  Current Leader: {}\n",
            args.checks,
            election.is_leader(),
            leader_name(election.current_leader_id().as_deref(), me),
        );
        if let (Some(token), Some(left)) = (election.fencing_token(), election.time_to_deadline()) {
            text.push_str(&format!(
                "  Fencing Token: {token}\n  {DIM}Leads for at least another {} unless renewed{DIM:#}\n",
                baton::fmt_duration(crate::status::round_to_millis(left))
            ));
        }
        text.push('\n');
        say(text);
        tokio::time::sleep(args.check_interval).await;
    }
}

/// Demo 4: leader-only work in batches, inside `run_while_leader`. A follower waits here and
/// takes over when the leader stops.
async fn leader_work(
    election: &LeaderElection,
    pump: &EventPump,
    args: &DemoArgs,
) -> Result<(), Failure> {
    section("Demo 4: Leader Work");
    say(format!(
        "Doing leader-only work for {}. Every batch first checks that this instance still \
         leads, and carries the fencing token that a real resource would check.\n\n",
        baton::fmt_duration(args.work_for)
    ));
    let me = election.candidate_id();
    if !election.is_leader() {
        let leader = leader_name(election.current_leader_id().as_deref(), me);
        say(format!(
            "{NOTE}Following:{NOTE:#} {leader} leads. Waiting for leadership: it passes here as \
             soon as that instance stops (Ctrl-C there, or the end of its demo).\n\n"
        ));
    }
    let batches = AtomicU64::new(0);
    let terms = AtomicU32::new(0);
    let work = async {
        loop {
            // Returns only if a term's work ends by itself, or with Err(Stopped).
            let ended = election
                .run_while_leader(|scope| {
                    batches_while_leading(scope, pump, &batches, &terms, args.batch)
                })
                .await;
            if let Err(e) = ended {
                return e;
            }
        }
    };
    tokio::select! {
        () = tokio::time::sleep(args.work_for) => {}
        error = work => return Err(Failure::from(error)),
    }
    pump.flush().await;
    let done = batches.load(Ordering::Relaxed);
    if election.is_leader() {
        say(format!("\nLeader work done: {done} batches processed.\n\n"));
    } else if done > 0 {
        say(format!(
            "\nLeader work done: {done} batches processed while this instance led.\n\n"
        ));
    } else {
        let leader = leader_name(election.current_leader_id().as_deref(), me);
        say(format!(
            "\nStill following: {leader} leads, so no leader work ran here.\n\n"
        ));
    }
    Ok(())
}

/// One term's leader work. `run_while_leader` drops this future the moment the term ends; the
/// `is_current` check is the seed's `if (!IsLeader) break;`, kept as a second line of defence.
async fn batches_while_leading(
    scope: Leadership,
    pump: &EventPump,
    batches: &AtomicU64,
    terms: &AtomicU32,
    batch: Duration,
) {
    let token = scope.token();
    // Print "LEADERSHIP ACQUIRED" first: the work may start before the event is printed.
    pump.flush().await;
    if terms.fetch_add(1, Ordering::Relaxed) == 0 {
        say(format!("Leader work started with fencing token {token}.\n"));
    } else {
        say(format!(
            "Leadership regained: leader work resumes with fencing token {token}.\n"
        ));
    }
    while scope.is_current() {
        let n = batches.fetch_add(1, Ordering::Relaxed) + 1;
        say(format!(
            "  {GOOD}[leader]{GOOD:#} Processing batch {n} with fencing token {token}\n"
        ));
        tokio::time::sleep(batch).await;
    }
}

fn print_event(event: &Event, me: &str) {
    let text = match event {
        Event::BecameLeader {
            candidate,
            key,
            token,
            ..
        } => format!(
            "\n{GOOD}*** LEADERSHIP ACQUIRED ***{GOOD:#}\n  Candidate: {candidate}\n  Lock Key: {key}\n  \
             Fencing Token: {token}\n  This instance is now the leader!\n\n"
        ),
        Event::LostLeadership { token, reason, .. } => {
            let why = match reason {
                LossReason::Stopped => "Stopping: the lease is being released.",
                LossReason::HandedOver => {
                    "Handing over: leader-only work was cancelled, and the lease goes to the next leader."
                }
                LossReason::LeaseLost => {
                    "Another instance holds the lease now; leader-only work was cancelled."
                }
                LossReason::RenewalsFailed => {
                    "Renewals kept failing past the grace period; stepped down before the lease could expire."
                }
                LossReason::DeadlineReached => {
                    "The local deadline passed; stepped down before the lease could expire."
                }
                _ => "Leader-only work was cancelled.",
            };
            format!(
                "\n{BAD}*** LEADERSHIP LOST *** ({reason}){BAD:#}\n  Fencing Token: {token} (its term is over)\n  {why}\n\n"
            )
        }
        Event::LeaderChanged {
            previous, current, ..
        } => format!(
            "{NOTE}Leader changed: {} -> {}{NOTE:#}\n",
            leader_name(previous.as_deref(), me),
            leader_name(current.as_deref(), me)
        ),
        _ => return,
    };
    say(text);
}
