//! Scale: E elections (distinct keys) in one process on one store instance (for Redis one
//! connection), all leading, renewing in steady state.
//!
//! Each E runs in a child process (this binary, re-executed with the hidden `scale-child`
//! subcommand) so the CPU time and memory measured are that process's alone. The child starts
//! the elections, waits until all lead, lets them settle, then reads its CPU time
//! (`/proc/self/stat` utime + stime) before and after the window and its `VmRSS`/`VmHWM` at the
//! end. For Redis the parent also reads the server's CPU time and command counters over the
//! child's window.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::BoxResult;
use crate::procfs::{context_switches, cpu_seconds, rss_kib};
use crate::redis_admin::Admin;
use crate::report::{Context, Row, display_name, verdict};
use crate::stores::{StoreKind, Timing, election};

/// Targets for 10,000 elections in one process, on every store (issue 16).
const TARGET_CPU_PERCENT: f64 = 5.0;
const TARGET_RSS_MB: f64 = 50.0;
/// Targets for 100,000 elections in one process, on the memory store and Redis (issue 16).
const TARGET_CPU_PERCENT_100K: f64 = 25.0;
const TARGET_RSS_MB_100K: f64 = 300.0;

/// The CPU (% of one core) and RSS (MB) targets at `elections`.
fn targets(elections: usize) -> (f64, f64) {
    if elections >= 100_000 {
        (TARGET_CPU_PERCENT_100K, TARGET_RSS_MB_100K)
    } else {
        (TARGET_CPU_PERCENT, TARGET_RSS_MB)
    }
}

/// The hidden subcommand's arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct ChildArgs {
    /// Store URL (`memory:`, `sqlite:PATH`, `redis://...`)
    #[arg(long)]
    pub store: String,
    /// Number of elections (keys)
    #[arg(long)]
    pub elections: usize,
    /// Key prefix
    #[arg(long)]
    pub prefix: String,
    #[arg(long, value_parser = humantime::parse_duration)]
    pub lease: Duration,
    #[arg(long, value_parser = humantime::parse_duration)]
    pub renew: Duration,
    #[arg(long, value_parser = humantime::parse_duration)]
    pub grace: Duration,
    /// Steady state before the window
    #[arg(long, value_parser = humantime::parse_duration)]
    pub settle: Duration,
    /// Measurement window
    #[arg(long, value_parser = humantime::parse_duration)]
    pub window: Duration,
}

/// The child: run the elections and print `ready`, `window` and `result` lines.
pub fn child_main(args: ChildArgs) -> BoxResult<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(child(args))?;
    // Exit without stopping the elections: their leases expire in the store.
    std::process::exit(0);
}

async fn child(args: ChildArgs) -> BoxResult<()> {
    let timing = Timing {
        lease: args.lease,
        renew: args.renew,
        grace: args.grace,
    };
    let store = StoreKind::open_url(&args.store)?;
    let t0 = Instant::now();
    let elections = (0..args.elections)
        .map(|i| {
            election(
                &store,
                &format!("{}:{i}", args.prefix),
                &format!("scale-{i}"),
                timing,
            )
        })
        .collect::<BoxResult<Vec<_>>>()?;
    let starts = futures_util::stream::iter(elections.iter().map(|e| e.start()))
        .buffer_unordered(256)
        .collect::<Vec<_>>()
        .await;
    for r in starts {
        r?;
    }
    // New keys on a young Redis wait out its restart guard (up to a lease) before leading.
    let limit = timing.lease * 2 + Duration::from_secs(60);
    loop {
        let leading = elections.iter().filter(|e| e.is_leader()).count();
        if leading == elections.len() {
            break;
        }
        if t0.elapsed() > limit {
            return Err(format!(
                "only {leading} of {} elections lead after {limit:?}",
                elections.len()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("ready {}", t0.elapsed().as_secs_f64());
    tokio::time::sleep(args.settle).await;

    println!("window");
    let cpu0 = cpu_seconds("self")?;
    let switches0 = context_switches("self")?;
    let w0 = Instant::now();
    tokio::time::sleep(args.window).await;
    let cpu1 = cpu_seconds("self")?;
    let switches1 = context_switches("self")?;
    let wall = w0.elapsed().as_secs_f64();
    let (rss, hwm) = rss_kib("self")?;
    let leading = elections.iter().filter(|e| e.is_leader()).count();
    println!(
        "result cpu_s={} wall_s={wall} rss_kib={rss} hwm_kib={hwm} leading={leading} switches={} tick_s={}",
        cpu1 - cpu0,
        switches1.saturating_sub(switches0),
        1.0 / rustix::param::clock_ticks_per_second() as f64
    );
    Ok(())
}

#[derive(Debug, Clone, Copy)]
pub struct Params {
    pub timing: Timing,
    pub settle: Duration,
    pub window: Duration,
}

/// What one child measured.
#[derive(Debug, Clone)]
pub struct ScaleRun {
    pub store: &'static str,
    pub elections: usize,
    pub ready: Duration,
    pub cpu_percent: f64,
    /// One clock tick of `/proc/PID/stat` over the window, in % of one core: the resolution.
    pub cpu_resolution: f64,
    /// Context switches per second of all the child's threads.
    pub switches_per_s: f64,
    pub rss_kib: u64,
    pub hwm_kib: u64,
    pub leading: usize,
    /// For Redis: the server's CPU % of one core and requests/s over the same window.
    pub server: Option<(f64, f64)>,
}

/// Run one child for `elections` elections on `store_url`.
pub async fn run(
    exe: &Path,
    store: &'static str,
    store_url: &str,
    elections: usize,
    params: Params,
    mut redis: Option<&mut Admin>,
) -> BoxResult<ScaleRun> {
    let t = params.timing;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("scale-child")
        .args(["--store", store_url])
        .args(["--elections", &elections.to_string()])
        .args(["--prefix", &format!("bench:scale:{elections}")])
        .args(["--lease", &millis(t.lease)])
        .args(["--renew", &millis(t.renew)])
        .args(["--grace", &millis(t.grace)])
        .args(["--settle", &millis(params.settle)])
        .args(["--window", &millis(params.window)])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();

    let server_pid = match redis.as_deref_mut() {
        Some(admin) => Some(admin.server_pid().await?.to_string()),
        None => None,
    };
    let mut ready = Duration::ZERO;
    let mut server_start = None;
    let mut result = None;
    while let Some(line) = lines.next_line().await? {
        if let Some(secs) = line.strip_prefix("ready ") {
            ready = Duration::from_secs_f64(secs.parse()?);
        } else if line == "window" {
            if let (Some(admin), Some(pid)) = (redis.as_deref_mut(), &server_pid) {
                admin.reset_stats().await?;
                server_start = Some((cpu_seconds(pid)?, Instant::now()));
            }
        } else if let Some(rest) = line.strip_prefix("result ") {
            let mut server = None;
            if let (Some(admin), Some(pid), Some((cpu0, w0))) =
                (redis.as_deref_mut(), &server_pid, server_start)
            {
                let stats = admin.command_stats().await?;
                let wall = w0.elapsed().as_secs_f64();
                let cpu = cpu_seconds(pid)? - cpu0;
                server = Some((cpu / wall * 100.0, stats.requests() as f64 / wall));
            }
            result = Some((rest.to_owned(), server));
        }
    }
    let status = child.wait().await?;
    let (rest, server) = result.ok_or_else(|| {
        format!("scale child ({store}, E = {elections}) exited with {status} before reporting")
    })?;
    let field = |name: &str| -> BoxResult<f64> {
        rest.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
            .ok_or_else(|| format!("no {name} in {rest:?}"))?
            .parse::<f64>()
            .map_err(Into::into)
    };
    let wall = field("wall_s")?;
    Ok(ScaleRun {
        store,
        elections,
        ready,
        cpu_percent: field("cpu_s")? / wall * 100.0,
        cpu_resolution: field("tick_s")? / wall * 100.0,
        switches_per_s: field("switches")? / wall,
        rss_kib: field("rss_kib")? as u64,
        hwm_kib: field("hwm_kib")? as u64,
        leading: field("leading")? as usize,
        server,
    })
}

/// A duration as `humantime` parses it back exactly.
fn millis(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

fn mb(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

pub fn summary_rows(runs: &[ScaleRun]) -> Vec<Row> {
    let mut rows = Vec::new();
    for r in targeted(runs) {
        let on = match r.store {
            "redis" => "one connection".to_owned(),
            "postgres" | "mysql" => "one pool".to_owned(),
            _ => "one client".to_owned(),
        };
        let name = display_name(r.store);
        let (cpu_target, rss_target) = targets(r.elections);
        rows.push(Row::new(
            format!("scale, {name}, {} elections on {on}: CPU", r.elections),
            format!("{:.2} % of one core", r.cpu_percent),
            format!("≤ {cpu_target} % of one core"),
            r.cpu_percent <= cpu_target,
        ));
        rows.push(Row::new(
            format!("scale, {name}, {} elections on {on}: memory", r.elections),
            format!("{:.1} MB RSS", mb(r.rss_kib)),
            format!("≤ {rss_target} MB"),
            mb(r.rss_kib) <= rss_target,
        ));
    }
    rows
}

/// The stores held to the targets at 10,000 elections and, where measured, 100,000.
const TARGETED: [&str; 6] = ["memory", "sqlite", "redis", "postgres", "mysql", "etcd"];

/// The runs held to a target: each targeted store at 10,000 and at 100,000 elections.
fn targeted(runs: &[ScaleRun]) -> impl Iterator<Item = &ScaleRun> {
    TARGETED.iter().flat_map(move |store| {
        runs.iter()
            .filter(move |r| r.store == *store && (r.elections == 10_000 || r.elections == 100_000))
    })
}

/// `0.12 %`, or `< 0.03 %` when no clock tick was counted.
fn cpu(r: &ScaleRun) -> String {
    if r.cpu_percent == 0.0 {
        format!("< {:.2} %", r.cpu_resolution)
    } else {
        format!("{:.2} %", r.cpu_percent)
    }
}

pub fn report(runs: &[ScaleRun], params: Params, ctx: &Context) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## Scale: many elections in one process\n");
    let _ = writeln!(
        out,
        "E elections on E distinct keys in one child process, on one store instance (Redis: one \
         `RedisStore`, one multiplexed connection; PostgreSQL and MySQL/MariaDB: one pool of at \
         most 4 connections, on a table of the bench's own; etcd: one client, whose elections \
         share one session lease and renew in batches, docs/decisions.md D120-D122), {}; all lead. After {} of steady state, over \
         a {} window: the child's CPU time (`/proc/self/stat` utime + stime, in clock ticks) as \
         % of one core, and the context switches of all its threads per second (how often \
         threads sleep and wake); at the end, its `VmRSS` (and peak `VmHWM`). *Per election* is \
         (RSS − RSS at E = 1) / (E − 1) for the same store. For Redis, the server's own CPU and \
         the requests/s it received over the same window.\n",
        params.timing.describe(),
        baton::fmt_duration(params.settle),
        baton::fmt_duration(params.window)
    );
    let _ = writeln!(
        out,
        "| store | E | all leading after | CPU, % of one core | context switches/s | RSS | peak RSS | per election | redis-server CPU | requests/s to Redis |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in runs {
        let (server_cpu, server_rps) = match r.server {
            Some((cpu, rps)) => (format!("{cpu:.2} %"), format!("{rps:.1}")),
            None => ("–".into(), "–".into()),
        };
        let base = runs.iter().find(|b| b.store == r.store && b.elections == 1);
        let per = match base {
            Some(b) if r.elections > 1 => format!(
                "{:.1} KB",
                (r.rss_kib as f64 - b.rss_kib as f64) / (r.elections - 1) as f64
            ),
            _ => "–".into(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {:.2} s | {} | {:.0} | {:.1} MB | {:.1} MB | {per} | {server_cpu} | {server_rps} |",
            r.store,
            r.elections,
            r.ready.as_secs_f64(),
            cpu(r),
            r.switches_per_s,
            mb(r.rss_kib),
            mb(r.hwm_kib),
        );
    }
    out.push('\n');
    for r in runs.iter().filter(|r| r.leading != r.elections) {
        let _ = writeln!(
            out,
            "- **Warning**: {} E = {}: only {} elections still led at the end of the window.",
            r.store, r.elections, r.leading
        );
    }
    for r in targeted(runs) {
        verdicts(&mut out, runs, r, params);
    }
    out.push('\n');
    let stores: Vec<&str> = {
        let mut s: Vec<&str> = runs.iter().map(|r| r.store).collect();
        s.dedup();
        s
    };
    out.push_str(&ctx.footer(&stores));
    out
}

/// The targets at a store's largest E, and for a missed one why and what would fix it.
fn verdicts(out: &mut String, runs: &[ScaleRun], r: &ScaleRun, params: Params) {
    let name = display_name(r.store);
    let (cpu_target, rss_target) = targets(r.elections);
    let cpu_ok = r.cpu_percent <= cpu_target;
    let rss_ok = mb(r.rss_kib) <= rss_target;
    let _ = writeln!(
        out,
        "- {name}, E = {}: target ≤ {cpu_target} % of a core: {}; target ≤ {rss_target} MB RSS: {}.",
        r.elections,
        verdict(cpu_ok, || format!(
            "{:.2} %: {:.2} points over, {:.1}× the target",
            r.cpu_percent,
            r.cpu_percent - cpu_target,
            r.cpu_percent / cpu_target
        )),
        verdict(rss_ok, || format!(
            "{:.1} MB, {:.1}× the target",
            mb(r.rss_kib),
            mb(r.rss_kib) / rss_target
        )),
    );
    if cpu_ok && rss_ok {
        return;
    }
    let memory = runs
        .iter()
        .find(|m| m.store == "memory" && m.elections == r.elections);
    let renewals = r.elections as f64 / params.timing.renew.as_secs_f64();
    if !rss_ok {
        let engine = match memory {
            Some(m) if r.store != "memory" => format!(
                " the memory store at the same E, which does no I/O, takes {:.1} MB: the \
                 process, the election engine's own state (each election's state machine and \
                 handle state, a timer entry, on one driver) and the memory store's; this \
                 store adds {:.1} KB per election over it.",
                mb(m.rss_kib),
                (r.rss_kib as f64 - m.rss_kib as f64) / r.elections as f64
            ),
            _ => " the process, each election's state machine and handle state on the shared \
                  driver, and the memory store's map (docs/decisions.md D76)."
                .to_owned(),
        };
        let fix = " Fix (library): smaller per-election state (the strings each election keeps \
                   twice, the state channel's eight notifiers).";
        let _ = writeln!(out, "  - Why the memory:{engine}{fix}");
    }
    if !cpu_ok {
        let engine = memory.map_or(0.0, |m| m.cpu_percent);
        let per_renewal = (r.cpu_percent - engine).max(0.0) / 100.0 / renewals * 1e6;
        let how = match (r.store, r.server) {
            ("redis", Some((_, rps))) => format!(
                "The {renewals:.0} renewals per second go out batched per connection \
                 (docs/decisions.md D30), {rps:.0} script calls per second, and the driver steps \
                 each election's state machine once per renewal (D76): about {per_renewal:.0} µs \
                 of CPU and {:.2} context switches per renewal in this process.",
                r.switches_per_s / renewals
            ),
            ("postgres", _) => format!(
                "The {renewals:.0} renewals per second go out as one statement per window of \
                 at most 20 ms (docs/decisions.md D126), and each still comes back as a notice \
                 on the `LISTEN` connection (D32): about {per_renewal:.0} µs of CPU and {:.2} \
                 context switches per renewal in this process. The rest is the engine's cost of a store call that waits for an answer, which the \
                 memory store's calls never do: a boxed future, a tokio timer for its timeout and a \
                 wake-up per call. Fix (library): the driver times store calls in its own timer \
                 queue, and a batch answers its calls with one wake-up.",
                r.switches_per_s / renewals
            ),
            ("mysql", _) => format!(
                "The {renewals:.0} renewals per second go out as one statement of up to 128 \
                 leases per window of at most 20 ms (docs/decisions.md D126): about \
                 {per_renewal:.0} µs of CPU and {:.2} context switches per renewal in this \
                 process. The rest is the engine's cost of a store call that waits for an answer, which the \
                 memory store's calls never do: a boxed future, a tokio timer for its timeout and a \
                 wake-up per call. Fix (library): the driver times store calls in its own timer \
                 queue, and a batch answers its calls with one wake-up.",
                r.switches_per_s / renewals
            ),
            ("memory", _) => "The memory store does no I/O: all of it is the engine's.".to_owned(),
            ("sqlite", _) => format!(
                "The {renewals:.0} renewals per second share one write transaction per window \
                 of at most 20 ms (docs/decisions.md D126), run on tokio's blocking pool: about \
                 {per_renewal:.0} µs of CPU and {:.2} context switches per renewal in this \
                 process. The rest is the engine's cost of a store call that waits for an answer, which the \
                 memory store's calls never do: a boxed future, a tokio timer for its timeout and a \
                 wake-up per call. Fix (library): the driver times store calls in its own timer \
                 queue, and a batch answers its calls with one wake-up.",
                r.switches_per_s / renewals
            ),
            _ => format!(
                "The elections share one session lease and their {renewals:.0} renewals per \
                 second go out batched (docs/decisions.md D120-D122: one keepalive and one `Txn` \
                 per 50 ms window), and the driver steps each election once per renewal (D76): \
                 about {per_renewal:.0} µs of CPU and {:.2} context switches per renewal in \
                 this process.",
                r.switches_per_s / renewals
            ),
        };
        let _ = writeln!(
            out,
            "  - Why the CPU: the memory store at the same E (no I/O) costs {engine:.2} % of a \
             core, the engine's own share (one timer entry and one step per renewal, on one \
             driver). {how}"
        );
    }
}
