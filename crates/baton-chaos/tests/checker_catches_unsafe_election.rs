//! The checker can fail. Candidates run with baton's hidden, test-only
//! `--unsafe-ignore-deadline-for-testing` flag keep leading through a partition from the store,
//! while the lease passes to another candidate: the checker must report two workers alive at
//! once. The same partition, with the deadline kept, must be clean.
//!
//! These run the real binaries against a real `redis-server` (installed by `scripts/test`):
//! `baton-chaos` (this package's binary) and `baton`, which must sit next to it in
//! `target/<profile>/` (`cargo test --workspace` and `scripts/chaos` build it) or be named by
//! `BATON_CHAOS_BATON`.

use std::path::PathBuf;
use std::time::Duration;

use baton_chaos::records::ViolationKind;
use baton_chaos::{Config, Harness, RunOutcome, RunSpec, Scenario, Store};

/// A partition long enough for the lease (1.5 s) to expire and pass to a follower.
const PARTITION: Duration = Duration::from_secs(3);

fn partition_run(unsafe_ignore_deadline: bool, seed: u64) -> RunOutcome {
    let worker = PathBuf::from(env!("CARGO_BIN_EXE_baton-chaos"));
    let baton = std::env::var_os("BATON_CHAOS_BATON")
        .map(PathBuf::from)
        .unwrap_or_else(|| worker.with_file_name("baton"));
    assert!(
        baton.is_file(),
        "no baton binary at {}: build it with `cargo build -p baton-cli --all-features` \
         (scripts/chaos does), or set BATON_CHAOS_BATON",
        baton.display()
    );
    let mut config = Config::new(baton, worker);
    config.episodes = 1;
    config.fault_duration = Some(PARTITION);
    config.unsafe_ignore_deadline = unsafe_ignore_deadline;
    config.work_dir = std::env::temp_dir().join(format!(
        "baton-chaos-test-{}-{}",
        std::process::id(),
        u8::from(unsafe_ignore_deadline)
    ));
    let harness = Harness::new(config).expect("start the harness");
    let outcome = harness.run(RunSpec {
        store: Store::Redis,
        scenario: Scenario::PartitionLeader,
        seed,
    });
    assert_eq!(
        outcome.error, None,
        "the run could not be carried out: {outcome:#?}"
    );
    assert_eq!(
        outcome.faults, 1,
        "the partition was not injected: {outcome:#?}"
    );
    if !outcome.failed() {
        let _ = std::fs::remove_dir_all(&harness.config().work_dir);
    }
    outcome
}

#[test]
fn a_leader_that_ignores_its_deadline_through_a_partition_is_caught() {
    let outcome = partition_run(true, 1);
    let exclusion: Vec<_> = outcome
        .analysis
        .violations
        .iter()
        .filter(|v| v.kind == ViolationKind::Exclusion)
        .collect();
    assert!(
        !exclusion.is_empty(),
        "the checker must report two workers alive at once: {outcome:#?}"
    );
    // The partitioned leader's worker ran on from when the lease expired (about 1.5 s into the
    // partition) until the partition healed and its renewal came back Lost.
    assert!(
        outcome.analysis.max_overlap >= Duration::from_millis(500),
        "overlap {:?}: {outcome:#?}",
        outcome.analysis.max_overlap
    );
}

#[test]
fn the_same_partition_with_the_deadline_kept_is_clean() {
    let outcome = partition_run(false, 1);
    assert!(
        outcome.analysis.violations.is_empty(),
        "violations: {:#?}",
        outcome.analysis.violations
    );
    assert!(
        outcome.analysis.workers >= 2,
        "the lease must have passed on: {outcome:#?}"
    );
}
