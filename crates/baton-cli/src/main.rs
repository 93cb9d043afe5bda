//! `baton`: leader election from the shell. The contract (flags, JSON shapes, exit codes) is
//! DESIGN.md §5; scripts rely on it.
//!
//! Exit codes: 0 success; 1 `status` found no leader, or `handoff` did not see the handoff
//! made; 2 bad input or a store that cannot be
//! opened or reached, with one line on stderr; 130 a second signal cut a graceful stop short.
//! stdout carries events and JSON only; logs go to stderr.

mod campaign;
mod cli;
mod config;
mod demo;
mod failure;
mod handoff;
mod metrics;
mod output;
mod run;
mod session;
mod show_config;
mod status;
mod watch;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::{CommandFactory, FromArgMatches};
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command, LogFormat};
use crate::config::Settings;
use crate::failure::Failure;
use crate::session::Shutdown;

fn main() -> ExitCode {
    let cli = match Cli::command()
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m).map(|cli| (cli, m)))
    {
        Ok(parsed) => parsed,
        Err(e) => return usage_error(e),
    };
    let (cli, matches) = cli;
    match cli.command {
        Command::Guard { pgid } => return run::guard(pgid),
        Command::Completions { shell } => {
            // Into a buffer first: clap_complete panics on a write error such as a closed pipe.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "baton", &mut script);
            use std::io::Write;
            let _ = std::io::stdout().write_all(&script);
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    init_logging(cli.global.log_format, cli.global.verbose, cli.global.quiet);
    let settings = match config::resolve(&cli.global, &matches) {
        Ok(settings) => settings,
        Err(failure) => return fail(&failure),
    };
    if let Some(addr) = cli.global.metrics_addr
        && let Err(failure) = metrics::start(addr)
    {
        return fail(&failure);
    }
    // The one-shot commands (`status`, `handoff`, `config`) make a few requests and exit: one
    // thread does it, and starting no worker threads saves a short command most of its
    // runtime's start (docs/decisions.md D155). The long-running ones get two workers, so an
    // election's timers never wait behind a busy child's output or a slow store call.
    let one_shot = matches!(
        cli.command,
        Command::Status(_) | Command::Handoff(_) | Command::Config(_)
    );
    let mut builder = if one_shot {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(2);
        builder
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            return fail(&Failure::new(format!(
                "cannot start the async runtime: {e}"
            )));
        }
    };
    let code = match runtime.block_on(run(cli.command, settings)) {
        Ok(code) => code,
        Err(failure) => fail(&failure),
    };
    // Do not wait for stray background work (a store's watcher thread, say) at exit.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    code
}

async fn run(command: Command, settings: Settings) -> Result<ExitCode, Failure> {
    // `status` keeps the default signal handling, so Ctrl-C stops it even while the store is
    // slow to answer; the long-running commands catch signals before they touch the store.
    match command {
        Command::Status(args) => status::run(settings, args.json).await,
        Command::Demo(args) => demo::run(settings, args, &mut Shutdown::install()?).await,
        Command::Campaign(args) => {
            campaign::run(settings, args.json, &mut Shutdown::install()?).await
        }
        Command::Watch(args) => watch::run(settings, args.json, &mut Shutdown::install()?).await,
        Command::Config(args) => show_config::run(&settings, args.json),
        Command::Completions { .. } => Ok(ExitCode::SUCCESS),
        Command::Run(args) => run::run(settings, args, &mut Shutdown::install()?).await,
        Command::Handoff(args) => handoff::run(settings, args).await,
        // Handled before the runtime starts; kept total so nothing can panic here.
        Command::Guard { pgid } => Ok(run::guard(pgid)),
    }
}

fn fail(failure: &Failure) -> ExitCode {
    eprintln!("error: {failure}");
    ExitCode::from(2)
}

/// clap's own errors, reduced to the one line the contract promises; help and version are
/// printed as clap formats them.
fn usage_error(e: clap::Error) -> ExitCode {
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
        _ => {}
    }
    let text = e.to_string();
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let mut first = lines.next().unwrap_or("invalid arguments").to_owned();
    // "the following required arguments were not provided:" is followed by the names.
    if first.ends_with(':')
        && let Some(next) = lines.next()
    {
        first = format!("{first} {next}");
    }
    let first = first.strip_prefix("error: ").unwrap_or(&first);
    fail(&Failure::new(format!("{first}; see `baton --help`")))
}

/// Logs go to stderr only: stdout is for events and JSON. Warnings by default; `-v` info,
/// `-vv` debug, `-vvv` trace, `-q` errors only. Without `-v`/`-q`, `RUST_LOG` may choose.
fn init_logging(format: LogFormat, verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        (false, _) => "trace",
    };
    let filter = if quiet || verbose > 0 {
        EnvFilter::new(level)
    } else {
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level))
    };
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    let _ = match format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).try_init(),
        LogFormat::Json => logs.json().try_init(),
    };
}
