//! `baton-chaos`: run seeded fault schedules against real `baton run` candidates and check
//! that no two leaders' work ever overlapped. Run it as `scripts/chaos`.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Duration;

use baton_chaos::worker::{self, OnTerm, WorkerArgs};
use baton_chaos::{Config, Harness, RunOutcome, RunSpec, Scenario, Store, report};
use clap::{Args, Parser, Subcommand};

const ABOUT: &str = "\
Runs N real `baton run` candidates against a real store (SQLite; or, each reached through a
fault proxy per candidate, a redis-server of its own, the machine's PostgreSQL on
127.0.0.1:5432 in a table of the run's own, an etcd of its own, a fake Kubernetes API
server of its own, a fake Consul agent of its own, or the machine's MariaDB on
127.0.0.1:3306 in a table of the run's own; or a Redis Sentinel deployment or a
Redis Cluster of its own, reached directly), injects seeded faults, and checks from the leader-only workers' records
that no two workers were ever alive at once, that fencing tokens strictly increase and stale
writes are rejected, that no worker outlives its killed baton, and that a leader is back
within lease + renew + 1s once a fault heals (on etcd the lease is the TTL etcd keeps: whole
seconds, at least 2s; on Kubernetes leaseDurationSeconds: whole seconds). On a 3-member etcd
(etcd3), the faults of its members (partition-member, kill-raft-leader, restart-members) are
allowed a Raft election and etcd's lease extension on top: 2 election timeouts + the TTL + 1
election timeout + renew + 1s.";

const AFTER: &str = "\
Profiles:
  --quick    every scenario once per store, one fault each (what CI runs); on
             redis-sentinel and redis-cluster only lossy-failover, on etcd3 only the
             faults of its members
  --long     100 seeded schedules per store and scenario
Examples:
  scripts/chaos --quick
  scripts/chaos --store redis --scenario partition-leader --seed 42
  scripts/chaos --store postgres,etcd --runs 3
  scripts/chaos --store kubernetes --runs 5 --jobs 2
  scripts/chaos --store consul --runs 5 --jobs 2
  scripts/chaos --store redis-sentinel,redis-cluster --scenario lossy-failover --runs 10
  scripts/chaos --store mysql --runs 10 --jobs 1
  scripts/chaos --store etcd3 --scenario partition-member,kill-raft-leader,restart-members --runs 10 --jobs 1
  scripts/chaos --reproduce redis:partition-leader:42 --episodes 2 --keep-logs
  scripts/chaos --store etcd --scenario store-restart --keep-logs --candidate-log info,baton=debug
Exit codes: 0 no violation; 1 violations (each printed with the command that reproduces it);
2 bad input or a run that could not be carried out.";

#[derive(Debug, Parser)]
#[command(name = "baton-chaos", about = ABOUT, after_help = AFTER)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// (internal) The leader-only worker that each candidate's `baton run` starts
    #[command(hide = true)]
    Worker {
        /// The candidate's log file
        #[arg(long)]
        log: PathBuf,
        /// The register's Unix socket
        #[arg(long)]
        register: PathBuf,
        /// Time between heartbeats
        #[arg(long, default_value = "10ms", value_parser = duration)]
        heartbeat: Duration,
        /// What to do on SIGTERM: exit, linger:DUR or ignore
        #[arg(long, default_value = "exit", value_parser = OnTerm::parse)]
        on_term: OnTerm,
    },
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Every scenario once per store (the default)
    #[arg(long, conflicts_with = "long")]
    quick: bool,

    /// 100 seeded schedules per store and scenario
    #[arg(long)]
    long: bool,

    /// Stores to run [default: all]
    #[arg(long, value_enum, value_delimiter = ',')]
    store: Vec<Store>,

    /// Scenarios to run [default: all that apply to the store]
    #[arg(long, value_enum, value_delimiter = ',')]
    scenario: Vec<Scenario>,

    /// The seed of the first run of each store and scenario; run i gets seed + i [default:
    /// drawn at random and printed]
    #[arg(long)]
    seed: Option<u64>,

    /// Runs per store and scenario [default: 1 with --quick, 100 with --long]
    #[arg(long)]
    runs: Option<u64>,

    /// Run one schedule again: STORE:SCENARIO:SEED, as a failure report prints it
    #[arg(long, value_name = "STORE:SCENARIO:SEED", value_parser = RunSpec::parse,
          conflicts_with_all = ["store", "scenario", "seed", "runs", "quick", "long"])]
    reproduce: Option<RunSpec>,

    /// Faults per run [default: 1 with --quick, so that it stays quick over every store;
    /// otherwise 2]
    #[arg(long)]
    episodes: Option<usize>,

    /// Candidates per run
    #[arg(long, default_value_t = 3)]
    candidates: usize,

    /// The candidates' --lease
    #[arg(long, default_value = "1500ms", value_parser = duration)]
    lease: Duration,

    /// The candidates' --renew
    #[arg(long, default_value = "300ms", value_parser = duration)]
    renew: Duration,

    /// The candidates' --grace
    #[arg(long, default_value = "300ms", value_parser = duration)]
    grace: Duration,

    /// Give every fault this duration instead of a seeded one
    #[arg(long, value_parser = duration)]
    fault_duration: Option<Duration>,

    /// Run the candidates with baton's hidden test-only flag that ignores the step-down
    /// deadline: the checker must then report violations
    #[arg(long)]
    unsafe_ignore_deadline_for_testing: bool,

    /// The baton binary [default: `baton` next to this binary]
    #[arg(long, env = "BATON_CHAOS_BATON", value_name = "PATH")]
    baton: Option<PathBuf>,

    /// Runs carried out at once
    #[arg(long, default_value_t = 1)]
    jobs: usize,

    /// Start no new run after this long (the table says how many ran)
    #[arg(long, value_parser = duration, value_name = "DUR")]
    max_time: Option<Duration>,

    /// Keep every run's logs, not only those of failed runs
    #[arg(long)]
    keep_logs: bool,

    /// The candidates' RUST_LOG, e.g. `info,baton=debug` (the store's and the engine's debug
    /// lines in each run's baton-*.log) [default: info, baton's -v]
    #[arg(long, value_name = "FILTER")]
    candidate_log: Option<String>,

    /// Where run directories go [default: a directory under the system temp dir]
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
}

fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| format!("{e}; expected e.g. 300ms or 2s"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Worker {
            log,
            register,
            heartbeat,
            on_term,
        }) => worker::run(&WorkerArgs {
            log,
            register,
            heartbeat,
            on_term,
        }),
        None => match chaos(cli.run) {
            Ok(code) => code,
            Err(message) => {
                eprintln!("error: {message}");
                ExitCode::from(2)
            }
        },
    }
}

fn chaos(args: RunArgs) -> Result<ExitCode, String> {
    let worker = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let baton = match args.baton {
        Some(path) => path,
        None => worker.with_file_name("baton"),
    };
    if !baton.is_file() {
        return Err(format!(
            "no baton binary at {}: build it with `cargo build -p baton-cli --all-features` (scripts/chaos \
             does), or pass --baton PATH",
            baton.display()
        ));
    }
    let mut config = Config::new(baton, worker);
    config.candidates = args.candidates.max(2);
    config.lease = args.lease;
    config.renew = args.renew;
    config.grace = args.grace;
    config.episodes = args
        .episodes
        .unwrap_or(if args.quick { 1 } else { 2 })
        .max(1);
    config.fault_duration = args.fault_duration;
    config.unsafe_ignore_deadline = args.unsafe_ignore_deadline_for_testing;
    config.keep_logs = args.keep_logs;
    config.candidate_log = args.candidate_log;
    if let Some(dir) = args.work_dir {
        config.work_dir = dir;
    }

    let specs: Vec<RunSpec> = match args.reproduce {
        Some(spec) => vec![spec],
        None => {
            let seed = args.seed.unwrap_or_else(|| fastrand::u64(1..1_000_000));
            let runs = args.runs.unwrap_or(if args.long { 100 } else { 1 });
            let stores = if args.store.is_empty() {
                Store::ALL.to_vec()
            } else {
                args.store
            };
            let scenarios = if args.scenario.is_empty() {
                Scenario::ALL.to_vec()
            } else {
                args.scenario
            };
            let mut specs = Vec::new();
            // Round-robin over the cells, so a run cut short by --max-time covers them evenly.
            for i in 0..runs {
                for &store in &stores {
                    let cell = |s: &&Scenario| {
                        if args.quick {
                            s.in_quick_profile(store)
                        } else {
                            s.applies_to(store)
                        }
                    };
                    for &scenario in scenarios.iter().filter(cell) {
                        specs.push(RunSpec {
                            store,
                            scenario,
                            seed: seed + i,
                        });
                    }
                }
            }
            if specs.is_empty() {
                return Err("none of the scenarios given applies to the stores given".into());
            }
            eprintln!(
                "baton-chaos: {} runs (seeds from {seed}), {} candidates, lease {}ms, renew {}ms, \
                 grace {}ms, {} faults per run{}",
                specs.len(),
                config.candidates,
                config.lease.as_millis(),
                config.renew.as_millis(),
                config.grace.as_millis(),
                config.episodes,
                if config.unsafe_ignore_deadline {
                    ", UNSAFE: candidates ignore their deadline"
                } else {
                    ""
                }
            );
            specs
        }
    };

    let harness = Harness::new(config).map_err(|e| format!("cannot start the harness: {e}"))?;
    let total = specs.len();
    let queue = Mutex::new(specs.into_iter().collect::<VecDeque<_>>());
    let outcomes = Mutex::new(Vec::new());
    let started = baton::boot_time();
    std::thread::scope(|scope| {
        for _ in 0..args.jobs.max(1) {
            scope.spawn(|| {
                loop {
                    if args
                        .max_time
                        .is_some_and(|limit| baton::boot_time() - started >= limit)
                    {
                        return;
                    }
                    let Some(spec) = queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front()
                    else {
                        return;
                    };
                    let outcome = harness.run(spec);
                    let mut done = outcomes.lock().unwrap_or_else(|e| e.into_inner());
                    done.push(outcome);
                    progress(done.len(), total, done.last().expect("just pushed"));
                }
            });
        }
    });
    let mut outcomes = outcomes.into_inner().unwrap_or_else(|e| e.into_inner());
    outcomes.sort_by_key(|o| (o.spec.scenario, o.spec.store, o.spec.seed));
    let elapsed = baton::boot_time() - started;

    println!();
    print!("{}", report::table(&outcomes));
    println!(
        "\n{} of {total} runs in {:.0}s{}.",
        outcomes.len(),
        elapsed.as_secs_f64(),
        if outcomes.len() < total {
            " (stopped by --max-time)"
        } else {
            ""
        }
    );
    print!("{}", report::failures(&outcomes, harness.config()));
    let violations: usize = outcomes.iter().map(|o| o.analysis.violations.len()).sum();
    let errors = outcomes.iter().filter(|o| o.error.is_some()).count();
    if errors > 0 {
        println!("\n{errors} runs could not be carried out.");
        return Ok(ExitCode::from(2));
    }
    if violations > 0 {
        println!("\n{violations} violations.");
        return Ok(ExitCode::from(1));
    }
    println!("No violations.");
    Ok(ExitCode::SUCCESS)
}

fn progress(done: usize, total: usize, outcome: &RunOutcome) {
    let verdict = match (&outcome.error, outcome.analysis.violations.len()) {
        (Some(_), _) => "ERROR".to_owned(),
        (None, 0) => "ok".to_owned(),
        (None, n) => format!("{n} VIOLATIONS"),
    };
    eprintln!(
        "[{done}/{total}] {} {} seed {}: {verdict} ({} faults, {} workers, {:.1}s)",
        outcome.spec.store,
        outcome.spec.scenario,
        outcome.spec.seed,
        outcome.faults,
        outcome.analysis.workers,
        outcome.elapsed.as_secs_f64()
    );
}
