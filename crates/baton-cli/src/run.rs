//! `baton run [--once] [--kill-after DUR] -- CMD [ARGS..]`: campaign, and run CMD only while
//! this process leads. The cross-store answer to `consul lock` and `etcdctl elect`.
//!
//! # What is promised
//!
//! * CMD starts only while this candidate leads, with `BATON_KEY`, `BATON_CANDIDATE_ID` and
//!   `BATON_FENCING_TOKEN` in its environment; its stdout and stderr pass through, its stdin is
//!   closed (it runs in a process group of its own, so it cannot read the terminal).
//! * When leadership ends, CMD's process group gets SIGTERM, then SIGKILL after `--kill-after`,
//!   and the lease is handed on only once the group is gone (the election waits for the
//!   leadership scope that `run` holds while CMD lives). The kill budget is checked against the
//!   lease: CMD is dead before the lease can expire in the store, even if the store never
//!   answers again.
//! * CMD never outlives `baton`: it gets the parent-death signal (SIGKILL) on Linux, and a
//!   guardian process (`baton` itself, re-run) kills CMD's whole process group, grandchildren
//!   included, when `baton` dies, even by SIGKILL.
//! * CMD exits by itself: the lease is released and `baton` exits with CMD's status (128 + N
//!   for a signal N). Leadership lost: CMD is stopped and `baton` campaigns again, or with
//!   `--once` exits 1. SIGINT or SIGTERM: CMD is stopped, the lease released, exit 0.

use std::io::Read;
use std::process::{ExitCode, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use baton::{ElectionOptions, LeaderElection, Leadership, LeaseStore, fmt_duration};
use rustix::process::{Pid, Signal};
use tokio::process::{Child, ChildStdin, Command};

use crate::cli::RunArgs;
use crate::config::Settings;
use crate::failure::Failure;
use crate::session::{self, Shutdown};

/// Exit code when leadership was lost and `--once` was given.
const LOST_EXIT: u8 = 1;

/// How much of the kill budget a default `--kill-after` may take: the rest is for SIGKILL to
/// land and the kernel to reap the group.
const DEFAULT_SHARE: u32 = 2;

/// The time between losing leadership and the earliest moment the lease can expire in the
/// store: the library's step-down rule says it ([`ElectionOptions::shutdown_budget`]).
pub fn kill_budget(options: &ElectionOptions) -> Duration {
    options.shutdown_budget()
}

/// The `--kill-after` in effect: the given one if it fits the budget, else a clear error; by
/// default a quarter of the lease, at most 10 s, and at most half the budget.
pub fn kill_after(options: &ElectionOptions, given: Option<Duration>) -> Result<Duration, Failure> {
    let budget = kill_budget(options);
    match given {
        Some(d) if d.is_zero() => Err(Failure::new(
            "--kill-after must be greater than 0, e.g. 2s: the child gets that long after SIGTERM",
        )),
        Some(d) if d >= budget => Err(Failure::new(format!(
            "--kill-after {} does not fit: the child must be gone within {} of losing leadership \
             (lease {} minus renew {}, grace {} and the skew margin), or the lease could expire \
             while it still runs; use a shorter --kill-after or lengthen --lease",
            fmt_duration(d),
            fmt_duration(budget),
            fmt_duration(options.lease_duration),
            fmt_duration(options.renew_interval),
            fmt_duration(options.grace_period),
        ))),
        Some(d) => Ok(d),
        None => Ok((options.lease_duration / 4)
            .min(Duration::from_secs(10))
            .min(budget / DEFAULT_SHARE)),
    }
}

pub async fn run(
    settings: Settings,
    args: RunArgs,
    shutdown: &mut Shutdown,
) -> Result<ExitCode, Failure> {
    let kill_after = kill_after(&settings.options, args.kill_after)?;
    let store = session::open_store(&settings)?;
    session::read_key(store.as_ref(), &settings).await?;
    let election = session::build_election(Arc::clone(&store), &settings)?;
    election.start().await?;
    tracing::info!(
        candidate = election.candidate_id(),
        kill_after = %fmt_duration(kill_after),
        "campaigning to run {:?}",
        args.command
    );

    loop {
        let scope = tokio::select! {
            scope = election.leadership() => scope?,
            signal = shutdown.recv() => {
                tracing::info!(signal, "leaving the election");
                return Ok(leave(&election, store.as_ref(), shutdown).await);
            }
        };
        let mut job = match Job::start(&args.command, &election, &scope) {
            Ok(job) => job,
            Err(e) => {
                drop(scope);
                leave(&election, store.as_ref(), shutdown).await;
                return Err(e);
            }
        };
        tracing::info!(token = %scope.token(), pid = job.pid(), "leading: started the command");
        let ended = tokio::select! {
            status = job.child.wait() => Ended::Exited(status),
            () = scope.lost() => Ended::Lost,
            signal = shutdown.recv() => Ended::Signal(signal),
        };
        match ended {
            Ended::Exited(status) => {
                job.finish().await;
                drop(scope);
                let code = status
                    .map(exit_code)
                    .map_err(|e| Failure::new(format!("cannot wait for the command: {e}")))?;
                tracing::info!(code, "the command exited; releasing the lease");
                let stopped = leave(&election, store.as_ref(), shutdown).await;
                return Ok(if stopped == ExitCode::SUCCESS {
                    ExitCode::from(code)
                } else {
                    stopped
                });
            }
            Ended::Lost => {
                tracing::warn!(token = %scope.token(), "leadership lost: stopping the command");
                job.stop(kill_after).await;
                drop(scope);
                if args.once {
                    leave(&election, store.as_ref(), shutdown).await;
                    return Ok(ExitCode::from(LOST_EXIT));
                }
            }
            Ended::Signal(signal) => {
                tracing::info!(signal, "stopping the command and leaving the election");
                job.stop(kill_after).await;
                drop(scope);
                return Ok(leave(&election, store.as_ref(), shutdown).await);
            }
        }
    }
}

enum Ended {
    Exited(std::io::Result<ExitStatus>),
    Lost,
    Signal(&'static str),
}

/// Graceful stop; a second signal cuts it short (exit 130, the lease then expires).
async fn leave(
    election: &LeaderElection,
    store: &dyn LeaseStore,
    shutdown: &mut Shutdown,
) -> ExitCode {
    if session::leave(election, store, shutdown).await {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(130)
    }
}

/// The shell's convention: the exit code, or 128 + the signal that ended the process.
fn exit_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code).unwrap_or(1),
        (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(255),
        (None, None) => 1,
    }
}

/// The command, in a process group of its own, and its guardian.
struct Job {
    child: Child,
    pgid: Pid,
    guardian: Option<(tokio::process::Child, ChildStdin)>,
}

impl Job {
    fn start(
        command: &[String],
        election: &LeaderElection,
        scope: &Leadership,
    ) -> Result<Job, Failure> {
        let (program, args) = command
            .split_first()
            .ok_or_else(|| Failure::new("no command given after --: baton run -- CMD [ARGS..]"))?;
        let parent = rustix::process::getpid();
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env("BATON_KEY", election.key())
            .env("BATON_CANDIDATE_ID", election.candidate_id())
            .env("BATON_FENCING_TOKEN", scope.token().to_string())
            .stdin(Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        // SAFETY: only async-signal-safe calls (prctl, getppid) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                #[cfg(target_os = "linux")]
                rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
                // If baton died before the line above, the signal will never come.
                if rustix::process::getppid() != Some(parent) {
                    return Err(std::io::Error::other(
                        "baton exited while starting the command",
                    ));
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| {
            Failure::new(format!(
                "cannot run {program:?}: {e}; check the command after --"
            ))
        })?;
        let pid = child
            .id()
            .ok_or_else(|| Failure::new("the command exited at once"))?;
        let pgid = Pid::from_raw(pid as i32)
            .ok_or_else(|| Failure::new("the command has no process id"))?;
        let guardian = match spawn_guardian(pgid) {
            Ok(g) => Some(g),
            Err(e) => {
                tracing::warn!(error = %e, "no guardian for the command's process group; \
                    if baton is killed, only the command itself is killed with it");
                None
            }
        };
        Ok(Job {
            child,
            pgid,
            guardian,
        })
    }

    fn pid(&self) -> i32 {
        self.pgid.as_raw_nonzero().get()
    }

    /// SIGTERM to the group, SIGKILL after `kill_after`, then wait until it is gone.
    async fn stop(&mut self, kill_after: Duration) {
        signal_group(self.pgid, Signal::TERM);
        if tokio::time::timeout(kill_after, self.child.wait())
            .await
            .is_err()
        {
            tracing::warn!(kill_after = %fmt_duration(kill_after), "the command ignored SIGTERM: SIGKILL");
            signal_group(self.pgid, Signal::KILL);
            let _ = self.child.wait().await;
        }
        self.finish().await;
    }

    /// After the command has exited: kill whatever is left of its process group (children it
    /// left behind must not run on once leadership is handed on), and dismiss the guardian.
    async fn finish(&mut self) {
        signal_group(self.pgid, Signal::KILL);
        if let Some((mut guardian, mut stdin)) = self.guardian.take() {
            use tokio::io::AsyncWriteExt;
            let _ = stdin.write_all(b"done\n").await;
            drop(stdin);
            let _ = guardian.wait().await;
        }
    }
}

fn signal_group(pgid: Pid, signal: Signal) {
    // ESRCH (the group is already gone) is the expected end.
    let _ = rustix::process::kill_process_group(pgid, signal);
}

/// Start `baton __guard PGID`: it waits on a pipe from this process and kills the group if the
/// pipe closes without a "done" (this process died).
fn spawn_guardian(pgid: Pid) -> std::io::Result<(tokio::process::Child, ChildStdin)> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .args(["__guard", &pgid.as_raw_nonzero().get().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let stdin = child
        .stdin
        .take()
        .ok_or_else(|| std::io::Error::other("no pipe to the guardian"))?;
    Ok((child, stdin))
}

/// The guardian (`baton __guard PGID`): ignore the signals a terminal or a supervisor sends to
/// baton's group, wait until stdin closes, and unless baton said "done", SIGKILL the group.
pub fn guard(pgid: i32) -> ExitCode {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: SIG_IGN installs no handler code; this process has no other threads yet.
        unsafe {
            libc::signal(signal, libc::SIG_IGN);
        }
    }
    let mut said = String::new();
    let _ = std::io::stdin().read_to_string(&mut said);
    if said.trim() != "done"
        && let Some(pgid) = Pid::from_raw(pgid)
    {
        signal_group(pgid, Signal::KILL);
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(lease: u64, renew: u64, grace: u64) -> ElectionOptions {
        ElectionOptions::new()
            .with_lease_duration(Duration::from_millis(lease))
            .with_renew_interval(Duration::from_millis(renew))
            .with_grace_period(Duration::from_millis(grace))
    }

    #[test]
    fn the_default_kill_after_scales_with_the_lease() {
        // 1.5 s lease: a quarter of it, well inside the budget, with no flag needed.
        let short = opts(1500, 300, 300);
        assert_eq!(
            kill_after(&short, None).unwrap(),
            Duration::from_millis(375)
        );
        assert!(kill_after(&short, None).unwrap() < kill_budget(&short));
        // The seed's defaults: a quarter (3.75 s) would not leave half the budget of 4.695 s.
        let seed = opts(15_000, 5_000, 5_000);
        assert_eq!(kill_budget(&seed), Duration::from_millis(4695));
        assert_eq!(
            kill_after(&seed, None).unwrap(),
            Duration::from_micros(2_347_500)
        );
        // Long leases are capped at 10 s.
        assert_eq!(
            kill_after(&opts(120_000, 10_000, 10_000), None).unwrap(),
            Duration::from_secs(10)
        );
        // Renew + grace close to the lease: half the budget.
        let tight = opts(10_000, 4_500, 5_000);
        assert_eq!(kill_after(&tight, None).unwrap(), kill_budget(&tight) / 2);
    }

    #[test]
    fn an_explicit_kill_after_that_cannot_fit_is_rejected() {
        let short = opts(1500, 300, 300);
        let err = kill_after(&short, Some(Duration::from_secs(1))).unwrap_err();
        assert!(err.to_string().contains("does not fit"), "{err}");
        assert!(kill_after(&short, Some(Duration::from_millis(500))).is_ok());
        assert!(kill_after(&short, Some(Duration::ZERO)).is_err());
    }
}
