//! The command line, as DESIGN.md §5 fixes it. Scripts and tests rely on these names.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

const EXAMPLES: &str = "\
Examples:
  baton demo                                  the walkthrough; run it in two terminals
  baton campaign --json                       join the election, one JSON event per line
  baton status                                who leads, with which fencing token
  baton --store sqlite:/tmp/b.db --lease 2s --renew 500ms --grace 500ms campaign
  baton --config appsettings.json status      settings in the seed's appsettings.json shape
  baton run -- ./nightly-job.sh               run a command only while this process leads
  baton handoff --to worker-2                 move leadership to worker-2, in milliseconds
  baton config                                the effective settings and their sources
  baton completions bash                      a completion script for bash, zsh or fish

Every option can also come from the environment (BATON_STORE, BATON_KEY, BATON_ID,
BATON_PRIORITY, BATON_LEASE, BATON_RENEW, BATON_GRACE, BATON_CONFIG, BATON_METRICS_ADDR) or from --config
FILE.
Precedence: flags, then environment, then the config file, then defaults.
Bad input exits with code 2 and one line on stderr.";

/// Leader election from the shell: one of several processes leads, through a store they share.
#[derive(Debug, Parser)]
#[command(name = "baton", version, after_help = EXAMPLES)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes. Durations and the store stay strings here: they may also come
/// from a config file, so they are parsed once all sources are merged (see `config`).
#[derive(Debug, Args)]
pub struct GlobalArgs {
    // Where leases live. The help lists the URLs this binary can open, from the same list
    // the URL factory opens them by (`baton::connect::STORE_KINDS`).
    #[arg(
        long,
        global = true,
        env = "BATON_STORE",
        value_name = "URL",
        hide_env_values = true,
        help = store_help()
    )]
    pub store: Option<String>,

    /// The election key: candidates on the same key compete [default: baton:leader]
    #[arg(
        long,
        global = true,
        env = "BATON_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    pub key: Option<String>,

    /// This candidate's id [default: <hostname>-<pid>]
    #[arg(
        long,
        global = true,
        env = "BATON_ID",
        value_name = "ID",
        hide_env_values = true
    )]
    pub id: Option<String>,

    /// This candidate's priority: a follower with a higher one than the leader's takes the lease
    /// over by a planned handoff; equal ones never displace a leader (campaign, run, demo)
    /// [default: 0]
    #[arg(
        long,
        global = true,
        env = "BATON_PRIORITY",
        value_name = "N",
        hide_env_values = true
    )]
    pub priority: Option<String>,

    /// How long a lease lasts without renewal [default: 15s]
    #[arg(
        long,
        global = true,
        env = "BATON_LEASE",
        value_name = "DUR",
        hide_env_values = true
    )]
    pub lease: Option<String>,

    /// How often the leader renews [default: 5s]
    #[arg(
        long,
        global = true,
        env = "BATON_RENEW",
        value_name = "DUR",
        hide_env_values = true
    )]
    pub renew: Option<String>,

    /// How long the leader keeps trying after a failed renewal before stepping down [default: 5s]
    #[arg(
        long,
        global = true,
        env = "BATON_GRACE",
        value_name = "DUR",
        hide_env_values = true
    )]
    pub grace: Option<String>,

    /// A config file: TOML, or JSON in the shape of the seed's appsettings.json
    #[arg(
        long,
        global = true,
        env = "BATON_CONFIG",
        value_name = "FILE",
        hide_env_values = true
    )]
    pub config: Option<PathBuf>,

    /// Serve Prometheus metrics at http://ADDR/metrics and a health check at /healthz
    #[arg(
        long,
        global = true,
        env = "BATON_METRICS_ADDR",
        value_name = "ADDR",
        value_parser = socket_addr
    )]
    pub metrics_addr: Option<std::net::SocketAddr>,

    /// Log format on stderr
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, value_name = "FORMAT")]
    pub log_format: LogFormat,

    /// More logs on stderr: -v info, -vv debug, -vvv trace [default: warnings]
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,

    /// Errors only on stderr
    #[arg(short, long, global = true)]
    pub quiet: bool,

    /// Test-only and unsafe: ignore the step-down deadline, so a leader keeps acting after its
    /// lease may have passed to another candidate. The chaos harness (crates/baton-chaos) runs
    /// candidates with it to show that its checker catches an unsafe election. Hidden from
    /// --help, and deliberately no environment variable or config file setting. Only in a
    /// `baton` built with the `unsafe-testing` feature, which the chaos harness's build
    /// enables: `cargo install` builds a `baton` without it.
    #[cfg(feature = "unsafe-testing")]
    #[arg(
        long = "unsafe-ignore-deadline-for-testing",
        global = true,
        hide = true
    )]
    pub unsafe_ignore_deadline_for_testing: bool,
}

/// How logs on stderr look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The seed's walkthrough: events, start, monitor, leader work, graceful shutdown
    Demo(DemoArgs),
    /// Join the election and print this candidate's events until interrupted
    Campaign(JsonArg),
    /// Show the current leader, fencing token and remaining lease (exit 1 if none)
    Status(JsonArg),
    /// Stream leader changes until interrupted
    Watch(JsonArg),
    /// Print the effective settings and where each came from (passwords hidden)
    Config(JsonArg),
    /// Print a shell completion script: baton completions bash > /etc/bash_completion.d/baton
    Completions {
        /// The shell
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Campaign, and run CMD only while this process leads
    #[command(after_help = RUN_HELP)]
    Run(RunArgs),
    /// Ask the leader to hand over to --to ID (or to any other candidate) and wait until it has
    #[command(after_help = HANDOFF_HELP)]
    Handoff(HandoffArgs),
    /// (internal) Kill a `run` command's process group if `baton` dies
    #[command(name = "__guard", hide = true)]
    Guard {
        /// The process group to kill.
        pgid: i32,
    },
}

const RUN_HELP: &str = "\
CMD gets BATON_KEY, BATON_CANDIDATE_ID and BATON_FENCING_TOKEN in its environment. When
leadership ends, CMD's process group gets SIGTERM, then SIGKILL after --kill-after, before the
lease can expire in the store; CMD never outlives baton, even if baton is killed with SIGKILL.
When CMD exits by itself, the lease is released and baton exits with CMD's status.

Examples:
  baton run -- ./nightly-report.sh
  baton --lease 1500ms --renew 300ms --grace 300ms run -- my-worker --queue jobs
  baton run --once --kill-after 5s -- python3 migrate.py

Exit codes: CMD's status (128 + N if a signal N ended it); 1 leadership lost with --once;
0 stopped by SIGINT/SIGTERM; 2 bad input.";

const HANDOFF_HELP: &str = "\
The request goes through the store: the leader hears of it at once where the store pushes
(Redis, PostgreSQL, etcd, Kubernetes, Consul), otherwise at its next renewal (within --renew
of the leader: SQLite and MySQL across processes), ends its term as a graceful stop does (its
leader-only work stops first), and leaves the key reserved for --to for one lease. Without
--to, any other candidate may take it. --to must name a running candidate (every baton
candidate keeps a presence record); if it dies before it takes over, the others hold an
ordinary election once the lease runs out.

Examples:
  baton handoff --to worker-2          move leadership to worker-2 before stopping this node
  baton handoff --timeout 1m --json    to anyone else; one JSON object on stdout

Exit codes: 0 the candidate asked for (or, without --to, another one) leads; 1 nobody leads,
the time ran out, or another candidate than --to took over; 2 bad input, including a --to that
no running candidate has.";

#[derive(Debug, Args)]
pub struct HandoffArgs {
    /// The candidate to hand over to [default: any candidate but the leader]
    #[arg(long, value_name = "ID")]
    pub to: Option<String>,

    /// How long to wait for the new leader
    #[arg(long, default_value = "30s", value_name = "DUR", value_parser = positive_duration)]
    pub timeout: Duration,

    /// One JSON object on stdout, for scripts
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Run CMD at most once: if leadership is lost, stop CMD and exit 1 instead of campaigning
    /// again
    #[arg(long)]
    pub once: bool,

    /// How long CMD gets between SIGTERM and SIGKILL when leadership ends [default: a quarter
    /// of the lease, at most 10s, and always short enough to finish before the lease expires]
    #[arg(long, value_name = "DUR", value_parser = duration)]
    pub kill_after: Option<Duration>,

    /// The command to run while leading, and its arguments
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct JsonArg {
    /// One JSON object per line on stdout, for scripts
    #[arg(long)]
    pub json: bool,
}

/// Knobs of the demo's pace. The defaults make a run of about 30 s: long enough to start a
/// second copy in another terminal and watch it take over.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Status checks in Demo 3
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub checks: u32,

    /// Time between status checks in Demo 3
    #[arg(long, default_value = "2s", value_name = "DUR", value_parser = duration)]
    pub check_interval: Duration,

    /// How long Demo 4's leader work goes on before the graceful shutdown
    #[arg(long, default_value = "20s", value_name = "DUR", value_parser = duration)]
    pub work_for: Duration,

    /// How long one batch of leader work takes
    #[arg(long, default_value = "2s", value_name = "DUR", value_parser = positive_duration)]
    pub batch: Duration,
}

/// The `--store` help: every URL this binary can open.
pub fn store_help() -> String {
    format!(
        "Where leases live: {} [default: a per-user SQLite file]",
        baton::connect::supported_schemes()
    )
}

/// A humantime duration (`500ms`, `2s`, `1m`), with the fix in the message.
pub fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("{e}; expected a duration such as 500ms, 2s or 1m"))
}

fn socket_addr(text: &str) -> Result<std::net::SocketAddr, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("{text:?} is not an address; expected IP:PORT such as 127.0.0.1:9464"))
}

fn positive_duration(text: &str) -> Result<Duration, String> {
    match duration(text)? {
        d if d.is_zero() => Err("must be greater than 0, e.g. 500ms".into()),
        d => Ok(d),
    }
}
