//! Graceful-handoff benchmark: two `baton campaign --json` processes on one SQLite file pass
//! leadership back and forth, and we time each handoff.
//!
//! One handoff: the follower has printed `leader_changed` naming the leader (so it is
//! subscribed and waiting); the bench reads the boot clock and sends SIGINT to the leader; the
//! leader stops gracefully (cancel, `lost_leadership`, release); the follower is notified,
//! acquires and prints `became_leader`, stamped with the boot clock *inside the follower* when
//! its event arrived. `CLOCK_BOOTTIME` is one clock for every process on the machine, so the
//! difference is the handoff as the two processes saw it, without the pipe to this bench. It
//! includes signal delivery and the leader's stop before the release, so it is an upper bound
//! on release -> `became_leader`. Then a new follower process joins and the roles swap.
//!
//! Run through `scripts/bench` (`--smoke` for a short run that only checks it works).

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, SystemTime};

use clap::Parser;
use rustix::process::{Pid, Signal, kill_process};
use serde_json::Value;

/// Election timing of the benchmarked processes. The handoff does not depend on it as long as
/// the store pushes the release; if it did not, the follower would wait out the lease and the
/// numbers would show seconds.
const TIMING: [&str; 6] = ["--lease", "5s", "--renew", "1s", "--grace", "1s"];
/// How long any one step may take before the run is declared broken.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// The markers around this benchmark's section of docs/BENCHMARKS.md, so that other
/// benchmarks can keep their own sections in the same file.
const BEGIN: &str = "<!-- handoff_bench: begin (written by scripts/bench; do not edit by hand) -->";
const END: &str = "<!-- handoff_bench: end -->";

#[derive(Debug, Parser)]
struct Args {
    /// The `baton` binary [default: target/<profile>/baton, beside this example's directory]
    #[arg(long)]
    baton: Option<PathBuf>,
    /// Number of handoffs to time
    #[arg(long, default_value_t = 100)]
    rounds: usize,
    /// Replace this benchmark's section of a Markdown file (e.g. docs/BENCHMARKS.md)
    #[arg(long)]
    write: Option<PathBuf>,
    /// The command line to record in the report
    #[arg(long, default_value = "scripts/bench")]
    command: String,
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(&args) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<(), String> {
    let baton = match &args.baton {
        Some(path) => path.clone(),
        None => default_baton()?,
    };
    if args.rounds == 0 {
        return Err("--rounds must be at least 1".into());
    }
    let dir = std::env::temp_dir().join(format!("baton-handoff-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let store = format!("sqlite:{}", dir.join("bench.db").display());
    let result = measure(&baton, &store, args.rounds);
    let _ = std::fs::remove_dir_all(&dir);
    let samples = result?;

    let report = report(args, &samples);
    println!("{report}");
    if let Some(path) = &args.write {
        write_section(path, &report)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn default_baton() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    // target/<profile>/examples/handoff_bench -> target/<profile>/baton
    let path = exe
        .parent()
        .and_then(Path::parent)
        .map(|profile| profile.join("baton"))
        .ok_or("cannot locate the baton binary: pass --baton PATH")?;
    if path.exists() {
        Ok(path)
    } else {
        Err(format!(
            "{} does not exist: build it first, or pass --baton PATH",
            path.display()
        ))
    }
}

/// A `baton campaign --json` process whose stdout lines arrive on a channel.
struct Campaigner {
    id: String,
    child: Child,
    lines: mpsc::Receiver<Value>,
}

impl Campaigner {
    fn spawn(baton: &Path, store: &str, id: String) -> Result<Self, String> {
        let mut child = Command::new(baton)
            .args(["--store", store, "--key", "bench:handoff", "--id", &id])
            .args(TIMING)
            .args(["campaign", "--json"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", baton.display()))?;
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let Ok(value) = serde_json::from_str::<Value>(&line) else {
                    eprintln!("not JSON: {line}");
                    break;
                };
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        Ok(Campaigner { id, child, lines })
    }

    /// The next event named `event` (with `leader` == `leader`, if given).
    fn wait_for(&self, event: &str, leader: Option<&str>) -> Result<Value, String> {
        loop {
            let line = self
                .lines
                .recv_timeout(STEP_TIMEOUT)
                .map_err(|_| format!("{}: no {event} within {STEP_TIMEOUT:?}", self.id))?;
            if line["event"] == event && leader.is_none_or(|l| line["leader"] == l) {
                return Ok(line);
            }
        }
    }

    fn interrupt(&self) -> Result<(), String> {
        kill_process(Pid::from_child(&self.child), Signal::INT)
            .map_err(|e| format!("cannot signal {}: {e}", self.id))
    }

    fn wait_exit(mut self) -> Result<(), String> {
        let deadline = std::time::Instant::now() + STEP_TIMEOUT;
        loop {
            match self.child.try_wait().map_err(|e| e.to_string())? {
                Some(status) if status.success() => return Ok(()),
                Some(status) => return Err(format!("{} exited with {status}", self.id)),
                None if std::time::Instant::now() > deadline => {
                    let _ = self.child.kill();
                    return Err(format!("{} did not exit after SIGINT", self.id));
                }
                None => thread::sleep(Duration::from_millis(5)),
            }
        }
    }
}

impl Drop for Campaigner {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Time `rounds` handoffs; returns each in nanoseconds.
fn measure(baton: &Path, store: &str, rounds: usize) -> Result<Vec<u64>, String> {
    let mut next_id = 0;
    let mut id = || {
        next_id += 1;
        format!("bench-{next_id}")
    };
    let mut leader = Campaigner::spawn(baton, store, id())?;
    leader.wait_for("became_leader", None)?;
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let follower = Campaigner::spawn(baton, store, id())?;
        follower.wait_for("leader_changed", Some(&leader.id))?;

        let t0 = baton::boot_time().as_nanos() as u64;
        leader.interrupt()?;
        let became = follower.wait_for("became_leader", Some(&follower.id))?;
        let t1 = became["boot_ns"]
            .as_u64()
            .ok_or_else(|| format!("became_leader without boot_ns: {became}"))?;
        samples.push(t1.saturating_sub(t0));
        leader.wait_exit()?;
        leader = follower;
    }
    leader.interrupt()?;
    leader.wait_exit()?;
    Ok(samples)
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(ns: u64) -> String {
    format!("{:.2} ms", ns as f64 / 1e6)
}

fn report(args: &Args, samples: &[u64]) -> String {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let (p50, p99) = (percentile(&sorted, 50.0), percentile(&sorted, 99.0));
    let mean = sorted.iter().sum::<u64>() / sorted.len() as u64;
    let target = Duration::from_millis(20).as_nanos() as u64;
    let verdict = if p99 <= target { "met" } else { "NOT met" };
    let date = humantime::format_rfc3339_seconds(SystemTime::now());
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };

    let mut out = String::new();
    let _ = writeln!(out, "## Graceful handoff on SQLite, two processes\n");
    let _ = writeln!(
        out,
        "From SIGINT to the leader until the follower's `became_leader`, both read on \
         `CLOCK_BOOTTIME` (the follower stamps its event on arrival, inside its own process). \
         This includes signal delivery and the leader's graceful stop before its release, so \
         it bounds release → `became_leader` from above.\n"
    );
    let _ = writeln!(out, "| handoffs | p50 | p99 | min | mean | max |");
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|");
    let _ = writeln!(
        out,
        "| {} | {} | {} | {} | {} | {} |\n",
        sorted.len(),
        ms(p50),
        ms(p99),
        ms(sorted[0]),
        ms(mean),
        ms(sorted[sorted.len() - 1]),
    );
    let _ = writeln!(out, "Target p99 ≤ 20 ms: **{verdict}**.\n");
    let _ = writeln!(
        out,
        "- Command: `{}` ({} handoffs, {profile} build; processes run `baton --store sqlite:<temp file> --key bench:handoff {} campaign --json`)",
        args.command,
        args.rounds,
        TIMING.join(" ")
    );
    let _ = writeln!(out, "- Date: {date}");
    let _ = writeln!(out, "- Machine: {}", machine());
    out
}

fn machine() -> String {
    let cpus = thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|rest| rest.split_once(':'))
        .map_or("unknown CPU".to_owned(), |(_, m)| m.trim().to_owned());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!(
        "{cpus} CPUs (nproc), {model}, Linux {}, load average {} (1, 5, 15 min) when the run ended",
        kernel.trim(),
        load.join(" ")
    )
}

/// Replace the text between this benchmark's markers, or append a marked section (creating
/// the file with a title if needed). Other sections of the file are left alone.
fn write_section(path: &Path, report: &str) -> Result<(), String> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let section = format!("{BEGIN}\n{report}{END}\n");
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(begin), Some(end)) if begin < end => {
            let after = old[end + END.len()..].trim_start_matches('\n');
            format!("{}{section}{after}", &old[..begin])
        }
        _ if old.trim().is_empty() => format!(
            "# Benchmarks\n\nNumbers in this file are written by the benchmark runs themselves; \
             never edit them by hand.\n\n{section}"
        ),
        _ => format!("{}\n\n{section}", old.trim_end()),
    };
    std::fs::write(path, new).map_err(|e| format!("cannot write {}: {e}", path.display()))
}
