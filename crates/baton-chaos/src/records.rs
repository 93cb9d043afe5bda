//! What a run leaves behind for the checker: the workers' log lines, the register's decisions,
//! and the harness's own timeline of the faults it injected.
//!
//! Every time is a reading of the machine's boot-time clock ([`baton::boot_time`],
//! `CLOCK_BOOTTIME`), which every process of the machine shares, so the workers', the
//! register's and the harness's records can be compared directly.

use std::fmt;
use std::io;
use std::path::Path;
use std::time::Duration;

/// What a worker log line records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// The worker started (after its first register write).
    Start,
    /// A heartbeat (after a register write).
    Beat,
    /// SIGTERM arrived.
    Term,
    /// The worker is about to exit by itself.
    End,
}

impl Mark {
    fn as_str(self) -> &'static str {
        match self {
            Mark::Start => "start",
            Mark::Beat => "hb",
            Mark::Term => "term",
            Mark::End => "end",
        }
    }

    fn parse(s: &str) -> Option<Mark> {
        Some(match s {
            "start" => Mark::Start,
            "hb" => Mark::Beat,
            "term" => Mark::Term,
            "end" => Mark::End,
            _ => return None,
        })
    }
}

/// How the register answered the write that goes with a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The register accepted the token.
    Accepted,
    /// The register rejected the token as stale.
    Rejected,
    /// The register could not be reached.
    Failed,
    /// No write goes with this line.
    None,
}

impl WriteOutcome {
    fn as_str(self) -> &'static str {
        match self {
            WriteOutcome::Accepted => "ok",
            WriteOutcome::Rejected => "stale",
            WriteOutcome::Failed => "err",
            WriteOutcome::None => "-",
        }
    }

    fn parse(s: &str) -> Option<WriteOutcome> {
        Some(match s {
            "ok" => WriteOutcome::Accepted,
            "stale" => WriteOutcome::Rejected,
            "err" => WriteOutcome::Failed,
            "-" => WriteOutcome::None,
            _ => return None,
        })
    }
}

/// One line of a worker's log: `<mark> <boot-time ns> <pid> <token> <candidate> <write>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// What happened.
    pub mark: Mark,
    /// When, on the boot-time clock.
    pub at: Duration,
    /// The worker's process id.
    pub pid: u32,
    /// The fencing token the worker was started with.
    pub token: u64,
    /// The candidate (`baton --id`) that started it.
    pub candidate: String,
    /// The register's answer to the write made just before this line.
    pub write: WriteOutcome,
}

impl LogLine {
    /// The line as written, with its newline.
    pub fn format(&self) -> String {
        format!(
            "{} {} {} {} {} {}\n",
            self.mark.as_str(),
            self.at.as_nanos(),
            self.pid,
            self.token,
            self.candidate,
            self.write.as_str()
        )
    }

    /// Parse a line (without its newline); `None` if it is not one.
    pub fn parse(line: &str) -> Option<LogLine> {
        let mut fields = line.split(' ');
        let line = LogLine {
            mark: Mark::parse(fields.next()?)?,
            at: Duration::from_nanos(fields.next()?.parse().ok()?),
            pid: fields.next()?.parse().ok()?,
            token: fields.next()?.parse().ok()?,
            candidate: fields.next()?.to_owned(),
            write: WriteOutcome::parse(fields.next()?)?,
        };
        fields.next().is_none().then_some(line)
    }
}

/// A worker log read back: its lines, and how many lines could not be parsed. A worker killed
/// in the middle of a write may leave one torn last line; anything else unparsable is a harness
/// bug and is reported.
#[derive(Debug, Default)]
pub struct WorkerLog {
    /// The complete, parsable lines, in file order.
    pub lines: Vec<LogLine>,
    /// Lines that were complete but did not parse.
    pub garbled: usize,
    /// Whether the file ended in the middle of a line.
    pub torn_tail: bool,
}

/// Read a worker log. A missing file is an empty log (the candidate never led).
pub fn read_worker_log(path: &Path) -> io::Result<WorkerLog> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(WorkerLog::default()),
        Err(e) => return Err(e),
    };
    let mut log = WorkerLog::default();
    let complete = match text.rfind('\n') {
        Some(end) => &text[..end],
        None => "",
    };
    log.torn_tail = !text.is_empty() && !text.ends_with('\n');
    for line in complete.lines().filter(|l| !l.is_empty()) {
        match LogLine::parse(line) {
            Some(parsed) => log.lines.push(parsed),
            None => log.garbled += 1,
        }
    }
    Ok(log)
}

/// One decision of the token-checking register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterEntry {
    /// When the register decided, on the boot-time clock.
    pub at: Duration,
    /// The token written.
    pub token: u64,
    /// The writing worker's process id.
    pub pid: u32,
    /// The writing worker's candidate.
    pub candidate: String,
    /// Whether the write was accepted.
    pub accepted: bool,
    /// The highest token accepted before this write.
    pub highest_before: u64,
}

/// A fault the harness injected, from its start to the moment it healed (the store came back,
/// the partition ended, the process resumed, the killed leader was gone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Episode {
    /// What was done, for messages: `"SIGKILL c1-0"`, `"blackhole c0-0 for 1.2s"`.
    pub what: String,
    /// The candidate it targeted, if it targeted one.
    pub target: Option<String>,
    /// When it began.
    pub start: Duration,
    /// When it healed: from here, a leader must appear within the liveness bound.
    pub heal: Duration,
}

/// A candidate (`baton` process) the harness killed with SIGKILL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kill {
    /// The candidate id.
    pub candidate: String,
    /// When the signal was sent.
    pub at: Duration,
}

/// A leader whose `baton` and worker the harness stopped (SIGSTOP) and later resumed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pause {
    /// The candidate id.
    pub candidate: String,
    /// The worker that was paused with it.
    pub worker_pid: u32,
    /// When SIGSTOP was sent.
    pub start: Duration,
    /// When SIGCONT was sent.
    pub resume: Duration,
}

/// A property the checker (or the harness, for what only it can see) found broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ViolationKind {
    /// Two workers alive at once (outside the excused post-resume time of a paused leader).
    Exclusion,
    /// Tokens that did not strictly increase, or a stale write the register accepted.
    Fencing,
    /// A worker that outlived its killed `baton`, or any process left after the run.
    Orphan,
    /// No leader within the bound after a fault healed.
    Liveness,
    /// A paused leader's worker that lived on too long after it resumed.
    StaleAfterResume,
    /// A `baton` that exited when it should not have, or would not stop.
    Crash,
}

impl ViolationKind {
    /// A short name for tables and messages.
    pub fn name(self) -> &'static str {
        match self {
            ViolationKind::Exclusion => "exclusion",
            ViolationKind::Fencing => "fencing",
            ViolationKind::Orphan => "orphan",
            ViolationKind::Liveness => "liveness",
            ViolationKind::StaleAfterResume => "stale-after-resume",
            ViolationKind::Crash => "crash",
        }
    }
}

impl fmt::Display for ViolationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One broken property, with what the records show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Which property.
    pub kind: ViolationKind,
    /// What happened, with times relative to the start of the run.
    pub detail: String,
}

/// Everything the checker needs from one run.
#[derive(Debug, Clone, Default)]
pub struct Observations {
    /// When the run began (the first candidate was started).
    pub begin: Duration,
    /// When the harness stopped observing (before it stopped the candidates).
    pub end: Duration,
    /// Every worker log line of the run, from every candidate's log.
    pub lines: Vec<LogLine>,
    /// The register's decisions, in order.
    pub register: Vec<RegisterEntry>,
    /// The faults injected, in order.
    pub episodes: Vec<Episode>,
    /// The candidates killed with SIGKILL.
    pub kills: Vec<Kill>,
    /// The leaders paused.
    pub pauses: Vec<Pause>,
    /// What the harness itself saw go wrong: crashes, hung stops, leftover processes.
    pub incidents: Vec<Violation>,
}

/// A time relative to `begin`, as the checker prints it: `+12.345s`.
pub fn rel(at: Duration, begin: Duration) -> String {
    if at >= begin {
        format!("+{:.3}s", (at - begin).as_secs_f64())
    } else {
        format!("-{:.3}s", (begin - at).as_secs_f64())
    }
}

/// A duration in milliseconds, as tables print it: `37ms`, `1.52s`.
pub fn ms(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.2}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_round_trip() {
        let line = LogLine {
            mark: Mark::Beat,
            at: Duration::from_nanos(123_456_789_012),
            pid: 4242,
            token: 1_700_000_000_000_001,
            candidate: "c1-0".into(),
            write: WriteOutcome::Rejected,
        };
        let text = line.format();
        assert!(text.ends_with('\n'));
        assert_eq!(LogLine::parse(text.trim_end()), Some(line));
        assert_eq!(LogLine::parse("hb 1 2 3 c1-0 ok extra"), None);
        assert_eq!(LogLine::parse("hb 1 2"), None);
    }

    #[test]
    fn a_torn_last_line_is_not_garbage() {
        let dir = std::env::temp_dir().join(format!("baton-chaos-records-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("w.log");
        std::fs::write(&path, "start 1 2 3 c0-0 ok\nhb 5 2 3 c0-0 ok\nhb 7 2 3 c0").unwrap();
        let log = read_worker_log(&path).unwrap();
        assert_eq!(log.lines.len(), 2);
        assert!(log.torn_tail);
        assert_eq!(log.garbled, 0);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(read_worker_log(&path).unwrap().lines.is_empty());
    }

    #[test]
    fn durations_print_compactly() {
        assert_eq!(ms(Duration::from_millis(37)), "37ms");
        assert_eq!(ms(Duration::from_millis(1520)), "1.52s");
        assert_eq!(ms(Duration::ZERO), "0ms");
        assert_eq!(
            rel(Duration::from_millis(1500), Duration::from_millis(500)),
            "+1.000s"
        );
    }
}
