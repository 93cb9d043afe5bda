//! The leader-only worker: `baton-chaos worker`, the command every candidate's `baton run`
//! starts while it leads.
//!
//! It stands for a real singleton job. It writes its fencing token (`BATON_FENCING_TOKEN`) to
//! the register at start and with every heartbeat, about every 10 ms, and logs each to its
//! candidate's log file against the boot-time clock, so the checker can tell when it was alive.
//! On SIGTERM it logs `term` and then, as configured, exits at once, lingers a little (a job
//! finishing its work), or ignores the signal (so `baton` must SIGKILL it).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::records::{LogLine, Mark, WriteOutcome};
use crate::register::RegisterClient;

/// What the worker does on SIGTERM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnTerm {
    /// Exit at once.
    Exit,
    /// Keep working (heartbeating) this long, then exit.
    Linger(Duration),
    /// Ignore SIGTERM: `baton` has to SIGKILL the worker.
    Ignore,
}

impl OnTerm {
    /// `exit`, `linger:150ms` or `ignore`.
    pub fn parse(text: &str) -> Result<OnTerm, String> {
        match text {
            "exit" => Ok(OnTerm::Exit),
            "ignore" => Ok(OnTerm::Ignore),
            _ => {
                let d = text
                    .strip_prefix("linger:")
                    .ok_or_else(|| format!("{text:?}: expected exit, ignore or linger:DUR"))?;
                humantime::parse_duration(d)
                    .map(OnTerm::Linger)
                    .map_err(|e| format!("{text:?}: {e}"))
            }
        }
    }

    /// The form [`parse`](Self::parse) reads.
    pub fn arg(self) -> String {
        match self {
            OnTerm::Exit => "exit".into(),
            OnTerm::Linger(d) => format!("linger:{}ms", d.as_millis()),
            OnTerm::Ignore => "ignore".into(),
        }
    }
}

/// The worker's settings (`baton-chaos worker --log FILE --register SOCKET ...`).
#[derive(Debug, Clone)]
pub struct WorkerArgs {
    /// The candidate's log file (appended to).
    pub log: PathBuf,
    /// The register's socket.
    pub register: PathBuf,
    /// Time between heartbeats.
    pub heartbeat: Duration,
    /// What to do on SIGTERM.
    pub on_term: OnTerm,
}

static TERMINATED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigterm(_: libc::c_int) {
    TERMINATED.store(true, Ordering::SeqCst);
}

struct Log(File);

impl Log {
    fn open(path: &Path) -> std::io::Result<Log> {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map(Log)
    }

    /// One `write(2)` per line on an `O_APPEND` file: lines of successive workers of one
    /// candidate never interleave, and a kill tears at most the last line.
    fn line(&mut self, line: &LogLine) {
        let _ = self.0.write_all(line.format().as_bytes());
    }
}

/// Run the worker until it is told to stop (or killed). Reads `BATON_FENCING_TOKEN` and
/// `BATON_CANDIDATE_ID` from the environment, as `baton run` sets them.
pub fn run(args: &WorkerArgs) -> ExitCode {
    let token = match std::env::var("BATON_FENCING_TOKEN")
        .ok()
        .and_then(|t| t.parse::<u64>().ok())
    {
        Some(token) => token,
        None => {
            eprintln!("baton-chaos worker: BATON_FENCING_TOKEN is missing or not a number");
            return ExitCode::from(2);
        }
    };
    let candidate = std::env::var("BATON_CANDIDATE_ID").unwrap_or_else(|_| "unknown".into());
    let pid = std::process::id();
    // SAFETY: installs a handler that only stores to an atomic (async-signal-safe), or SIG_IGN.
    unsafe {
        let handler = match args.on_term {
            OnTerm::Ignore => libc::SIG_IGN,
            _ => on_sigterm as extern "C" fn(libc::c_int) as libc::sighandler_t,
        };
        libc::signal(libc::SIGTERM, handler);
    }
    let mut log = match Log::open(&args.log) {
        Ok(log) => log,
        Err(e) => {
            eprintln!(
                "baton-chaos worker: cannot open {}: {e}",
                args.log.display()
            );
            return ExitCode::from(2);
        }
    };
    let mut register = RegisterClient::new(&args.register);
    let mut record = |log: &mut Log, mark: Mark, write: bool| {
        let outcome = if write {
            register.write(token, pid, &candidate)
        } else {
            WriteOutcome::None
        };
        log.line(&LogLine {
            mark,
            at: baton::boot_time(),
            pid,
            token,
            candidate: candidate.clone(),
            write: outcome,
        });
    };

    // The first write to the fenced resource is the first act of the term.
    record(&mut log, Mark::Start, true);
    let mut stop_at: Option<Duration> = None;
    loop {
        std::thread::sleep(args.heartbeat);
        if TERMINATED.load(Ordering::SeqCst) && stop_at.is_none() {
            record(&mut log, Mark::Term, false);
            let linger = match args.on_term {
                OnTerm::Linger(d) => d,
                _ => Duration::ZERO,
            };
            stop_at = Some(baton::boot_time() + linger);
        }
        if let Some(at) = stop_at
            && baton::boot_time() >= at
        {
            record(&mut log, Mark::End, false);
            return ExitCode::SUCCESS;
        }
        record(&mut log, Mark::Beat, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_term_round_trips() {
        for on_term in [
            OnTerm::Exit,
            OnTerm::Ignore,
            OnTerm::Linger(Duration::from_millis(150)),
        ] {
            assert_eq!(OnTerm::parse(&on_term.arg()), Ok(on_term));
        }
        assert!(OnTerm::parse("linger").is_err());
    }
}
