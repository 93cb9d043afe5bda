//! The table of results, scenario × store, and the reproduction of every failure.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use crate::harness::{Config, RunOutcome};
use crate::records::ms;
use crate::scenario::{Scenario, Store};

/// The figures of every run of one scenario on one store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cell {
    /// Runs carried out.
    pub runs: usize,
    /// Runs that could not be carried out (setup errors).
    pub errors: usize,
    /// Violations found, over all runs.
    pub violations: usize,
    /// Runs with at least one violation.
    pub failed_runs: usize,
    /// Faults injected, over all runs.
    pub faults: usize,
    /// Workers (terms that ran the command), over all runs.
    pub workers: usize,
    /// Largest overlap of two workers, outside the excused cases.
    pub max_overlap: Duration,
    /// Largest leaderless gap.
    pub max_gap: Duration,
    /// Largest time from a fault's healing to continuous leadership.
    pub max_recovery: Duration,
    /// Largest time a resumed, stale worker lived on (pause runs).
    pub stale_after_resume: Option<Duration>,
    /// Largest excused overlap (a resumed stale worker alive with a newer one).
    pub excused_overlap: Duration,
    /// Largest time a killed baton's worker lived on (kill runs).
    pub orphan_lag: Option<Duration>,
    /// Stale writes the register rejected.
    pub rejected_writes: usize,
}

fn max_opt(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// Fold outcomes into cells.
pub fn cells(outcomes: &[RunOutcome]) -> BTreeMap<(Scenario, Store), Cell> {
    let mut cells: BTreeMap<(Scenario, Store), Cell> = BTreeMap::new();
    for o in outcomes {
        let cell = cells.entry((o.spec.scenario, o.spec.store)).or_default();
        let a = &o.analysis;
        cell.runs += 1;
        cell.errors += usize::from(o.error.is_some());
        cell.violations += a.violations.len();
        cell.failed_runs += usize::from(!a.violations.is_empty());
        cell.faults += o.faults;
        cell.workers += a.workers;
        cell.max_overlap = cell.max_overlap.max(a.max_overlap);
        cell.max_gap = cell.max_gap.max(a.max_gap);
        cell.max_recovery = cell.max_recovery.max(a.max_recovery);
        cell.stale_after_resume = max_opt(cell.stale_after_resume, a.stale_after_resume);
        cell.excused_overlap = cell.excused_overlap.max(a.excused_overlap);
        cell.orphan_lag = max_opt(cell.orphan_lag, a.max_orphan_lag);
        cell.rejected_writes += a.rejected_writes;
    }
    cells
}

/// The table, one row per scenario and store, as Markdown (it reads well in a terminal too).
pub fn table(outcomes: &[RunOutcome]) -> String {
    let opt = |d: Option<Duration>| d.map_or_else(|| "-".to_owned(), ms);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| scenario | store | runs | faults | violations | max overlap | max leaderless gap | max recovery after heal | stale-after-resume (excused overlap) | orphan lag after SIGKILL | stale writes rejected |"
    );
    let _ = writeln!(out, "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for ((scenario, store), c) in cells(outcomes) {
        let stale = match c.stale_after_resume {
            Some(d) => format!("{} ({})", ms(d), ms(c.excused_overlap)),
            None => "-".into(),
        };
        let errors = if c.errors > 0 {
            format!(" ({} errors)", c.errors)
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "| {scenario} | {store} | {}{errors} | {} | {} | {} | {} | {} | {stale} | {} | {} |",
            c.runs,
            c.faults,
            c.violations,
            ms(c.max_overlap),
            ms(c.max_gap),
            ms(c.max_recovery),
            opt(c.orphan_lag),
            c.rejected_writes,
        );
    }
    out
}

/// Every failed run: what broke, how to reproduce it, where its logs are.
pub fn failures(outcomes: &[RunOutcome], config: &Config) -> String {
    let mut out = String::new();
    for o in outcomes.iter().filter(|o| o.failed()) {
        let _ = writeln!(
            out,
            "\nFAILED {} {} seed {}:",
            o.spec.store, o.spec.scenario, o.spec.seed
        );
        if let Some(e) = &o.error {
            let _ = writeln!(out, "  error: {e}");
        }
        for v in &o.analysis.violations {
            let _ = writeln!(out, "  {} violation: {}", v.kind, v.detail);
        }
        let _ = writeln!(out, "  reproduce: {}", config.reproduce_command(&o.spec));
        let _ = writeln!(
            out,
            "         or: scripts/chaos --reproduce {} {}",
            o.spec.id(),
            reproduce_options(config)
        );
        if let Some(dir) = &o.kept {
            let _ = writeln!(out, "  logs: {}", dir.display());
        }
    }
    out
}

/// The options of [`Config::reproduce_command`] after the spec.
fn reproduce_options(config: &Config) -> String {
    let full = config.reproduce_command(&crate::scenario::RunSpec {
        store: Store::Sqlite,
        scenario: Scenario::KillLeader,
        seed: 0,
    });
    full.split_once(" --seed 0 ")
        .map(|(_, rest)| rest.to_owned())
        .unwrap_or_default()
}
