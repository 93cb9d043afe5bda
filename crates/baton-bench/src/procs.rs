//! Child processes whose output lines the bench reads: `baton campaign --json` (the cli-handoff,
//! observer and vs-etcdctl figures), `baton watch --json` (observer) and `etcdctl elect`
//! (vs-etcdctl).
//!
//! A leader change between two `baton campaign --json` processes is timed on two clocks at
//! once ([`Change`]): the arrival of the follower's `became_leader` line at the bench (the only
//! way to time a peer that stamps nothing, such as `etcdctl elect`), and the `boot_ns` stamp
//! the follower put on that line itself, on `CLOCK_BOOTTIME`, when its event arrived (one clock
//! for every process on the machine, read by the bench just before its signal), which leaves
//! out the pipe to the bench.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};

use crate::BoxResult;
use crate::stores::Timing;

/// How long any one untimed step may take.
pub const STEP: Duration = Duration::from_secs(30);

/// A child process whose stdout lines arrive on a channel, stamped with their arrival.
pub struct Proc {
    what: String,
    child: Child,
    lines: mpsc::Receiver<(Instant, String)>,
}

impl Proc {
    /// Start `cmd` with stdout piped to the bench; its stderr goes to the bench's
    /// (`inherit_stderr`) or nowhere.
    pub fn spawn(mut cmd: Command, what: String, inherit_stderr: bool) -> BoxResult<Proc> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(if inherit_stderr {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .map_err(|e| format!("cannot start {what}: {e}"))?;
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        Ok(Proc { what, child, lines })
    }

    /// The next line for which `want` holds and its arrival time, within `limit`; `None` when
    /// the limit passed (or the process closed its stdout first).
    pub fn wait_line(
        &self,
        limit: Duration,
        want: impl Fn(&str) -> bool,
    ) -> Option<(Instant, String)> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((at, line)) if want(&line) => return Some((at, line)),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    pub fn signal(&self, signal: Signal) -> BoxResult<()> {
        kill_process(Pid::from_child(&self.child), signal)
            .map_err(|e| format!("cannot signal {}: {e}", self.what).into())
    }

    /// Wait for the process to exit, at most `limit`; its exit status.
    pub fn wait_exit(&mut self, limit: Duration) -> BoxResult<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                return Err(format!("{} did not exit within {limit:?}", self.what).into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `baton --store URL --key KEY --id ID --lease .. --renew .. --grace .. campaign --json`.
pub fn baton_campaign(baton: &Path, url: &str, key: &str, id: &str, t: Timing) -> BoxResult<Proc> {
    let mut cmd = Command::new(baton);
    cmd.args(["--store", url, "--key", key, "--id", id])
        .args(["--lease", &baton::fmt_duration(t.lease)])
        .args(["--renew", &baton::fmt_duration(t.renew)])
        .args(["--grace", &baton::fmt_duration(t.grace)])
        .args(["campaign", "--json"]);
    Proc::spawn(cmd, format!("baton campaign {id}"), true)
}

/// `baton --store URL --key KEY --lease .. --renew .. --grace .. watch --json`: an observer.
pub fn baton_watch(baton: &Path, url: &str, key: &str, t: Timing) -> BoxResult<Proc> {
    let mut cmd = Command::new(baton);
    cmd.args(["--store", url, "--key", key])
        .args(["--lease", &baton::fmt_duration(t.lease)])
        .args(["--renew", &baton::fmt_duration(t.renew)])
        .args(["--grace", &baton::fmt_duration(t.grace)])
        .args(["watch", "--json"]);
    Proc::spawn(cmd, "baton watch".to_owned(), true)
}

/// The command line of [`baton_campaign`], for reports (`URL` and `KEY` as given).
pub fn campaign_args(url: &str, key: &str, t: Timing) -> String {
    format!(
        "baton --store {url} --key {key} --id <id> --lease {} --renew {} --grace {} campaign --json",
        baton::fmt_duration(t.lease),
        baton::fmt_duration(t.renew),
        baton::fmt_duration(t.grace)
    )
}

/// A `campaign --json` or `watch --json` line: its `event`, `leader`, `previous`, `candidate`
/// and `boot_ns`.
pub struct EventLine {
    pub event: String,
    pub leader: Option<String>,
    pub previous: Option<String>,
    pub candidate: Option<String>,
    pub boot_ns: u64,
}

pub fn parse(line: &str) -> Option<EventLine> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let text = |k: &str| v[k].as_str().map(str::to_owned);
    Some(EventLine {
        event: text("event")?,
        leader: text("leader"),
        previous: text("previous"),
        candidate: text("candidate"),
        boot_ns: v["boot_ns"].as_u64()?,
    })
}

/// Whether `line` is event `event` naming `leader` as the leader.
pub fn is_event(line: &str, event: &str, leader: &str) -> bool {
    parse(line).is_some_and(|l| l.event == event && l.leader.as_deref() == Some(leader))
}

/// `CLOCK_BOOTTIME` now, in nanoseconds (what `boot_ns` holds).
pub fn boot_ns_now() -> u64 {
    u64::try_from(baton::boot_time().as_nanos()).unwrap_or(u64::MAX)
}

/// One leader change between two `baton campaign --json` processes, from just before the
/// bench's signal to the leader.
#[derive(Debug, Clone, Copy)]
pub struct Change {
    /// To the arrival of the follower's `became_leader` line at the bench's reader thread.
    pub at_bench: Duration,
    /// To the follower's own `boot_ns` stamp on that line (`CLOCK_BOOTTIME`, read when its
    /// event arrived, in its own process).
    pub in_follower: Duration,
    /// To the leader's `boot_ns` stamp on its `lost_leadership` line (its graceful stop has
    /// begun: the release follows at once). `None` after SIGKILL.
    pub leader_stop: Option<Duration>,
}

pub fn since(t0: u64, t1: u64) -> Duration {
    Duration::from_nanos(t1.saturating_sub(t0))
}

/// `rounds` leader changes between `baton campaign --json` processes on `url`: one process
/// leads; for each change a new one starts and, once it has printed `leader_changed` naming
/// the leader and [`FOLLOWER_SETTLE`] more has passed (it has subscribed and waits: its first
/// attempt goes out before it subscribes, D128), the bench reads both clocks and sends the leader
/// SIGINT (graceful: it releases) or, with `crash`, SIGKILL; the follower leads next.
/// How long a new follower process is left to settle, once it is known to wait for the
/// leader, before the leader is stopped: a handoff is timed from an idle follower, as in a
/// deployment, not from one still starting up. The same for Baton's followers and for
/// `etcdctl elect`'s (D54).
pub const FOLLOWER_SETTLE: Duration = Duration::from_millis(200);

pub fn baton_rounds(
    baton: &Path,
    url: &str,
    key: &str,
    timing: Timing,
    rounds: usize,
    crash: bool,
) -> BoxResult<Vec<Change>> {
    baton_rounds_phased(baton, url, key, timing, rounds, crash, Duration::ZERO)
}

/// A pseudo-random duration in `[0, max)`, from the boot clock's nanoseconds.
pub fn phase(max: Duration) -> Duration {
    let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX).max(1);
    Duration::from_nanos(boot_ns_now().wrapping_mul(0x9e37_79b9_7f4a_7c15) % nanos)
}

/// [`baton_rounds`], each follower left to settle a random part of `phase_max` more, so that
/// the signal falls anywhere in the leader's renew interval: a follower may report that it
/// waits right after it saw a renewal, which would otherwise put every crash at the same
/// point of the interval.
pub fn baton_rounds_phased(
    baton: &Path,
    url: &str,
    key: &str,
    timing: Timing,
    rounds: usize,
    crash: bool,
    phase_max: Duration,
) -> BoxResult<Vec<Change>> {
    let mut leader_id = "b0".to_owned();
    let mut leader = baton_campaign(baton, url, key, &leader_id, timing)?;
    leader
        .wait_line(STEP, |l| is_event(l, "became_leader", "b0"))
        .ok_or_else(|| format!("the first baton campaign on {url} did not lead within {STEP:?}"))?;
    let mut out = Vec::with_capacity(rounds);
    for n in 1..=rounds {
        let id = format!("b{n}");
        let follower = baton_campaign(baton, url, key, &id, timing)?;
        follower
            .wait_line(STEP, |l| is_event(l, "leader_changed", &leader_id))
            .ok_or_else(|| format!("{id} never saw {leader_id} lead"))?;
        std::thread::sleep(FOLLOWER_SETTLE + phase(phase_max));
        let boot0 = boot_ns_now();
        let t0 = Instant::now();
        leader.signal(if crash { Signal::KILL } else { Signal::INT })?;
        let (at, line) = follower
            .wait_line(STEP, |l| is_event(l, "became_leader", &id))
            .ok_or_else(|| format!("{id} did not lead within {STEP:?}"))?;
        let became = parse(&line).ok_or("unreachable: parsed before")?;
        let leader_stop = if crash {
            None
        } else {
            let (_, stop) = leader
                .wait_line(STEP, |l| {
                    parse(l).is_some_and(|l| {
                        l.event == "lost_leadership" && l.candidate.as_deref() == Some(&*leader_id)
                    })
                })
                .ok_or_else(|| format!("{leader_id} printed no lost_leadership"))?;
            parse(&stop).map(|l| since(boot0, l.boot_ns))
        };
        out.push(Change {
            at_bench: at.saturating_duration_since(t0),
            in_follower: since(boot0, became.boot_ns),
            leader_stop,
        });
        let status = leader.wait_exit(STEP)?;
        if !crash && !status.success() {
            return Err(format!("{leader_id} exited with {status} after SIGINT").into());
        }
        leader = follower;
        leader_id = id;
    }
    leader.signal(Signal::INT)?;
    leader.wait_exit(STEP)?;
    Ok(out)
}

/// The first line a tool prints for `arg` (`version`, `--version`), or why there is none.
pub fn tool_version(program: &str, arg: &str) -> String {
    Command::new(program)
        .arg(arg)
        .env("ETCDCTL_API", "3")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned()
        })
        .unwrap_or_else(|e| format!("unknown ({e})"))
}
