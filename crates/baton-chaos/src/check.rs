//! The safety checker: what the records of one run say about exclusion, fencing, orphans and
//! liveness (DESIGN.md §6).
//!
//! It trusts nothing but the records. A worker was alive from its first sign of life to its
//! last: its log lines and its register writes, all stamped with the boot-time clock. Between
//! heartbeats (10 ms) it may have lived a little longer than the records show, so the overlaps
//! found are lower bounds, and a worker that died between heartbeats is never blamed for time
//! it did not live.
//!
//! * **Exclusion.** No two workers alive at once: the intervals `[first, last sign of life]`
//!   of different workers never overlap. A leader paused past its lease (SIGSTOP of `baton`
//!   and its worker) is the one excused case: what its worker does after it resumes, and
//!   before `baton` notices and kills it, is measured as *stale-after-resume*, and only fencing
//!   can stop it. Its life before the pause is checked like any other.
//! * **Fencing.** Workers, in the order they started, have strictly increasing tokens; the
//!   register's accepted tokens never decrease; no write was accepted once a higher token had
//!   been written; no worker's first write was rejected.
//! * **Orphans.** After a `baton` is killed with SIGKILL, its worker's last sign of life is
//!   within a small bound of the kill. (The harness adds what only it can see: processes left
//!   over after the run.)
//! * **Liveness.** After each fault heals (the store is back, the partition over, the process
//!   resumed or gone), leadership is continuous again within `lease + renew + 1 s`. Store
//!   downtime never counts against it: a store fault heals when the store is back.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::records::{Mark, Observations, Violation, ViolationKind, WriteOutcome, ms, rel};

/// How long the checker allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// From a fault's healing to continuous leadership: `lease + renew + 1 s`.
    pub liveness: Duration,
    /// From SIGKILL of a `baton` to its worker's last sign of life.
    pub orphan: Duration,
    /// From a paused leader's resumption to its worker's last sign of life.
    pub stale_after_resume: Duration,
}

/// The figures and the violations of one run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Analysis {
    /// Every broken property, the harness's incidents included.
    pub violations: Vec<Violation>,
    /// How many workers (terms that ran the command) the run saw.
    pub workers: usize,
    /// The longest time two workers were alive at once, outside the excused cases.
    pub max_overlap: Duration,
    /// The longest time no worker was alive, from the first worker to the end of the run.
    pub max_gap: Duration,
    /// The longest time from a fault's healing to continuous leadership.
    pub max_recovery: Duration,
    /// The longest a paused leader's worker lived on after it resumed (pause runs only).
    pub stale_after_resume: Option<Duration>,
    /// The longest a resumed, stale worker was alive together with a newer one (excused).
    pub excused_overlap: Duration,
    /// The longest a killed `baton`'s worker lived on after the kill (kill runs only).
    pub max_orphan_lag: Option<Duration>,
    /// Writes the register rejected as stale: fencing at work.
    pub rejected_writes: usize,
}

/// One worker: one term of one candidate that ran the command.
#[derive(Debug, Clone)]
struct Worker {
    candidate: String,
    pid: u32,
    token: u64,
    /// Every sign of life, sorted.
    beats: Vec<Duration>,
    /// How the register answered the worker's first write, if its start line survived.
    first_write: Option<WriteOutcome>,
    /// When the register first accepted this worker's token.
    first_accept: Option<Duration>,
}

impl Worker {
    fn name(&self) -> String {
        format!(
            "{} (pid {}, token {})",
            self.candidate, self.pid, self.token
        )
    }
}

/// A span of a worker's life the exclusion check applies to.
#[derive(Debug, Clone, Copy)]
struct Span {
    worker: usize,
    start: Duration,
    end: Duration,
}

/// Check one run's records.
pub fn check(obs: &Observations, bounds: &Bounds) -> Analysis {
    let mut analysis = Analysis {
        violations: obs.incidents.clone(),
        ..Analysis::default()
    };
    let workers = workers(obs);
    analysis.workers = workers.len();
    let begin = obs.begin;
    let t = |at: Duration| rel(at, begin);

    // Trusted spans, and the post-resume spans of paused leaders.
    let mut trusted: Vec<Span> = Vec::new();
    let mut stale: Vec<Span> = Vec::new();
    for (i, w) in workers.iter().enumerate() {
        let pause = obs
            .pauses
            .iter()
            .find(|p| p.worker_pid == w.pid && p.candidate == w.candidate);
        let (before, after): (Vec<Duration>, Vec<Duration>) = match pause {
            Some(p) => w.beats.iter().partition(|&&b| b < p.resume),
            None => (w.beats.clone(), Vec::new()),
        };
        if let (Some(&start), Some(&end)) = (before.first(), before.last()) {
            trusted.push(Span {
                worker: i,
                start,
                end,
            });
        }
        if let Some(p) = pause {
            let lived = after.last().map_or(Duration::ZERO, |&last| last - p.resume);
            analysis.stale_after_resume =
                Some(analysis.stale_after_resume.unwrap_or_default().max(lived));
            if lived > bounds.stale_after_resume {
                analysis.violations.push(Violation {
                    kind: ViolationKind::StaleAfterResume,
                    detail: format!(
                        "{} was paused at {} and resumed at {}, then lived on for {} (bound {}): \
                         baton must stop a worker whose term ended while it was paused",
                        w.name(),
                        t(p.start),
                        t(p.resume),
                        ms(lived),
                        ms(bounds.stale_after_resume)
                    ),
                });
            }
            if let Some(&end) = after.last() {
                stale.push(Span {
                    worker: i,
                    start: p.resume,
                    end,
                });
            }
        }
    }
    if !obs.pauses.is_empty() && analysis.stale_after_resume.is_none() {
        analysis.stale_after_resume = Some(Duration::ZERO);
    }

    // Exclusion.
    for (a, sa) in trusted.iter().enumerate() {
        for sb in &trusted[a + 1..] {
            let (first, second) = if sa.start <= sb.start {
                (sa, sb)
            } else {
                (sb, sa)
            };
            if second.start > first.end {
                continue;
            }
            let overlap = first.end.min(second.end) - second.start;
            analysis.max_overlap = analysis.max_overlap.max(overlap);
            let (wf, ws) = (&workers[first.worker], &workers[second.worker]);
            analysis.violations.push(Violation {
                kind: ViolationKind::Exclusion,
                detail: format!(
                    "two workers alive at once for {}: {} lived {}..{}, {} started at {} \
                     (lived until {})",
                    ms(overlap),
                    wf.name(),
                    t(first.start),
                    t(first.end),
                    ws.name(),
                    t(second.start),
                    t(second.end),
                ),
            });
        }
    }
    for span in &stale {
        for other in &trusted {
            if other.worker == span.worker {
                continue;
            }
            let start = span.start.max(other.start);
            let end = span.end.min(other.end);
            if start <= end {
                analysis.excused_overlap = analysis.excused_overlap.max(end - start);
            }
        }
    }

    // Fencing.
    let mut by_start: Vec<&Span> = trusted.iter().collect();
    by_start.sort_by_key(|s| s.start);
    for pair in by_start.windows(2) {
        let (prev, next) = (&workers[pair[0].worker], &workers[pair[1].worker]);
        if next.token <= prev.token {
            analysis.violations.push(Violation {
                kind: ViolationKind::Fencing,
                detail: format!(
                    "tokens of successive workers must strictly increase: {} started at {} \
                     after {} (started at {})",
                    next.name(),
                    t(pair[1].start),
                    prev.name(),
                    t(pair[0].start)
                ),
            });
        }
    }
    let mut highest = 0;
    for entry in &obs.register {
        if !entry.accepted {
            analysis.rejected_writes += 1;
            continue;
        }
        if entry.token < highest {
            analysis.violations.push(Violation {
                kind: ViolationKind::Fencing,
                detail: format!(
                    "the register accepted token {} from {} (pid {}) at {} after accepting {}",
                    entry.token,
                    entry.candidate,
                    entry.pid,
                    t(entry.at),
                    highest
                ),
            });
        }
        highest = highest.max(entry.token);
        if let Some(newer) = workers
            .iter()
            .find(|w| w.token > entry.token && w.first_accept.is_some_and(|first| first < entry.at))
        {
            analysis.violations.push(Violation {
                kind: ViolationKind::Fencing,
                detail: format!(
                    "the register accepted a stale write: token {} from {} (pid {}) at {}, \
                     after {} had written",
                    entry.token,
                    entry.candidate,
                    entry.pid,
                    t(entry.at),
                    newer.name()
                ),
            });
        }
    }
    for w in &workers {
        if w.first_write == Some(WriteOutcome::Rejected) {
            analysis.violations.push(Violation {
                kind: ViolationKind::Fencing,
                detail: format!(
                    "{} started with a token the register had already passed: the store \
                     minted a token lower than an earlier term's",
                    w.name()
                ),
            });
        }
    }

    // Orphans.
    for kill in &obs.kills {
        for w in workers
            .iter()
            .filter(|w| w.candidate == kill.candidate && w.beats[0] <= kill.at)
        {
            let last = *w
                .beats
                .last()
                .expect("a worker has at least one sign of life");
            let lag = last.saturating_sub(kill.at);
            analysis.max_orphan_lag = Some(analysis.max_orphan_lag.unwrap_or_default().max(lag));
            if lag > bounds.orphan {
                analysis.violations.push(Violation {
                    kind: ViolationKind::Orphan,
                    detail: format!(
                        "{} outlived its baton: SIGKILL at {}, last sign of life at {} ({} later; \
                         bound {})",
                        w.name(),
                        t(kill.at),
                        t(last),
                        ms(lag),
                        ms(bounds.orphan)
                    ),
                });
            }
        }
    }
    if !obs.kills.is_empty() && analysis.max_orphan_lag.is_none() {
        analysis.max_orphan_lag = Some(Duration::ZERO);
    }

    // Liveness and gaps, on the union of the trusted spans.
    let union = union(&trusted);
    for pair in union.windows(2) {
        analysis.max_gap = analysis.max_gap.max(pair[1].0 - pair[0].1);
    }
    if let Some(last) = union.last() {
        analysis.max_gap = analysis.max_gap.max(obs.end.saturating_sub(last.1));
    }
    for (i, episode) in obs.episodes.iter().enumerate() {
        let until = obs
            .episodes
            .get(i + 1)
            .map_or(obs.end, |next| next.start)
            .max(episode.heal);
        // Leadership must reach `until` (give or take a heartbeat) without a gap.
        let slack = Duration::from_millis(50);
        let reaching = union
            .iter()
            .find(|(start, end)| *end + slack >= until && *start <= until);
        let recovered_at = reaching.map(|(start, _)| (*start).max(episode.heal));
        let recovery = match recovered_at {
            Some(at) => at - episode.heal,
            None => until - episode.heal,
        };
        analysis.max_recovery = analysis.max_recovery.max(recovery);
        if recovery > bounds.liveness {
            analysis.violations.push(Violation {
                kind: ViolationKind::Liveness,
                detail: match recovered_at {
                    Some(at) => format!(
                        "after {} healed at {}, leadership was continuous again only at {} ({} \
                         later; bound {})",
                        episode.what,
                        t(episode.heal),
                        t(at),
                        ms(recovery),
                        ms(bounds.liveness)
                    ),
                    None => format!(
                        "after {} healed at {}, no worker was running at {} ({} later; bound {})",
                        episode.what,
                        t(episode.heal),
                        t(until),
                        ms(recovery),
                        ms(bounds.liveness)
                    ),
                },
            });
        }
    }
    analysis
}

/// Group the records into workers, keyed by process id and token.
fn workers(obs: &Observations) -> Vec<Worker> {
    fn entry<'m>(
        map: &'m mut BTreeMap<(u32, u64), Worker>,
        pid: u32,
        token: u64,
        candidate: &str,
    ) -> &'m mut Worker {
        map.entry((pid, token)).or_insert_with(|| Worker {
            candidate: candidate.to_owned(),
            pid,
            token,
            beats: Vec::new(),
            first_write: None,
            first_accept: None,
        })
    }
    let mut map: BTreeMap<(u32, u64), Worker> = BTreeMap::new();
    for line in &obs.lines {
        let w = entry(&mut map, line.pid, line.token, &line.candidate);
        w.beats.push(line.at);
        if line.mark == Mark::Start && w.first_write.is_none() {
            w.first_write = Some(line.write);
        }
    }
    for reg in &obs.register {
        let w = entry(&mut map, reg.pid, reg.token, &reg.candidate);
        w.beats.push(reg.at);
        if reg.accepted && w.first_accept.is_none() {
            w.first_accept = Some(reg.at);
        }
    }
    let mut workers: Vec<Worker> = map.into_values().collect();
    for w in &mut workers {
        w.beats.sort();
    }
    workers.sort_by_key(|w| w.beats[0]);
    workers
}

/// The union of spans, as sorted, disjoint `(start, end)` pairs.
fn union(spans: &[Span]) -> Vec<(Duration, Duration)> {
    let mut sorted: Vec<(Duration, Duration)> = spans.iter().map(|s| (s.start, s.end)).collect();
    sorted.sort();
    let mut out: Vec<(Duration, Duration)> = Vec::new();
    for (start, end) in sorted {
        match out.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => out.push((start, end)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{Episode, Kill, LogLine, Pause, RegisterEntry};

    const BOUNDS: Bounds = Bounds {
        liveness: Duration::from_millis(2800),
        orphan: Duration::from_millis(250),
        stale_after_resume: Duration::from_millis(1375),
    };

    fn ms_(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A worker that beat every 10 ms from `from` to `to` (ms), writing its token each time.
    /// [`settle`] then decides the writes as the register would.
    fn worker(obs: &mut Observations, candidate: &str, pid: u32, token: u64, from: u64, to: u64) {
        let mut at = from;
        let mut first = true;
        while at <= to {
            obs.register.push(RegisterEntry {
                at: ms_(at),
                token,
                pid,
                candidate: candidate.into(),
                accepted: true,
                highest_before: 0,
            });
            obs.lines.push(LogLine {
                mark: if first { Mark::Start } else { Mark::Beat },
                at: ms_(at) + Duration::from_micros(100),
                pid,
                token,
                candidate: candidate.into(),
                write: WriteOutcome::Accepted,
            });
            first = false;
            at += 10;
        }
    }

    /// Decide every write in time order, as a correct register does, and note the answers in
    /// the workers' lines.
    fn settle(obs: &mut Observations) {
        obs.register.sort_by_key(|e| e.at);
        let mut highest = 0;
        for e in &mut obs.register {
            e.highest_before = highest;
            e.accepted = e.token >= highest;
            highest = highest.max(e.token);
        }
        for line in &mut obs.lines {
            let at = line.at - Duration::from_micros(100);
            if let Some(e) = obs
                .register
                .iter()
                .find(|e| e.pid == line.pid && e.token == line.token && e.at == at)
            {
                line.write = if e.accepted {
                    WriteOutcome::Accepted
                } else {
                    WriteOutcome::Rejected
                };
            }
        }
    }

    fn checked(obs: &mut Observations) -> Analysis {
        settle(obs);
        check(obs, &BOUNDS)
    }

    fn run(end: u64) -> Observations {
        Observations {
            begin: Duration::ZERO,
            end: ms_(end),
            ..Observations::default()
        }
    }

    fn kinds(a: &Analysis) -> Vec<ViolationKind> {
        a.violations.iter().map(|v| v.kind).collect()
    }

    #[test]
    fn a_clean_handoff_passes() {
        let mut obs = run(5000);
        worker(&mut obs, "c0-0", 100, 1, 100, 2000);
        worker(&mut obs, "c1-0", 200, 2, 3000, 5000);
        obs.kills.push(Kill {
            candidate: "c0-0".into(),
            at: ms_(2000),
        });
        obs.episodes.push(Episode {
            what: "SIGKILL c0-0".into(),
            target: Some("c0-0".into()),
            start: ms_(2000),
            heal: ms_(2000),
        });
        let a = checked(&mut obs);
        assert_eq!(kinds(&a), vec![], "{:#?}", a.violations);
        assert_eq!(a.workers, 2);
        assert_eq!(a.max_overlap, Duration::ZERO);
        assert!(
            a.max_gap >= ms_(990) && a.max_gap <= ms_(1000),
            "{:?}",
            a.max_gap
        );
        assert!(a.max_recovery >= ms_(1000) && a.max_recovery < ms_(1001));
        assert!(a.max_orphan_lag.unwrap() <= Duration::from_micros(100));
    }

    #[test]
    fn overlapping_workers_are_an_exclusion_violation() {
        let mut obs = run(3000);
        worker(&mut obs, "c0-0", 100, 1, 100, 2000);
        worker(&mut obs, "c1-0", 200, 2, 1950, 3000);
        let a = checked(&mut obs);
        assert_eq!(kinds(&a), vec![ViolationKind::Exclusion]);
        assert!(a.max_overlap >= ms_(50), "{:?}", a.max_overlap);
        assert!(a.violations[0].detail.contains("c0-0 (pid 100, token 1)"));
    }

    #[test]
    fn a_paused_leader_is_excused_after_it_resumes_but_measured() {
        let mut obs = run(6000);
        // Paused at 1000 (last beat 1000), resumed at 3000, killed 200 ms later; a new leader
        // took over at 2600.
        worker(&mut obs, "c0-0", 100, 1, 100, 1000);
        worker(&mut obs, "c1-0", 200, 2, 2600, 6000);
        worker(&mut obs, "c0-0", 100, 1, 3000, 3200);
        obs.pauses.push(Pause {
            candidate: "c0-0".into(),
            worker_pid: 100,
            start: ms_(1000),
            resume: ms_(3000),
        });
        let a = checked(&mut obs);
        assert_eq!(kinds(&a), vec![], "{:#?}", a.violations);
        let stale = a.stale_after_resume.unwrap();
        assert!(stale >= ms_(200) && stale < ms_(201), "{stale:?}");
        assert!(a.excused_overlap >= ms_(200));
        assert!(
            a.rejected_writes > 0,
            "the register fenced the stale writes"
        );
    }

    #[test]
    fn a_paused_leader_that_lives_on_is_caught() {
        let mut obs = run(9000);
        worker(&mut obs, "c0-0", 100, 1, 100, 1000);
        worker(&mut obs, "c1-0", 200, 2, 2600, 9000);
        worker(&mut obs, "c0-0", 100, 1, 3000, 9000);
        obs.pauses.push(Pause {
            candidate: "c0-0".into(),
            worker_pid: 100,
            start: ms_(1000),
            resume: ms_(3000),
        });
        assert_eq!(
            kinds(&checked(&mut obs)),
            vec![ViolationKind::StaleAfterResume]
        );
    }

    #[test]
    fn the_pause_excuse_does_not_cover_an_overlap_before_the_pause() {
        let mut obs = run(6000);
        worker(&mut obs, "c0-0", 100, 1, 100, 1000);
        worker(&mut obs, "c1-0", 200, 2, 900, 6000);
        obs.pauses.push(Pause {
            candidate: "c0-0".into(),
            worker_pid: 100,
            start: ms_(1000),
            resume: ms_(3000),
        });
        assert!(kinds(&checked(&mut obs)).contains(&ViolationKind::Exclusion));
    }

    #[test]
    fn a_token_that_does_not_increase_is_a_fencing_violation() {
        let mut obs = run(5000);
        worker(&mut obs, "c0-0", 100, 5, 100, 2000);
        worker(&mut obs, "c1-0", 200, 3, 3000, 5000);
        let a = checked(&mut obs);
        let kinds = kinds(&a);
        assert!(kinds.contains(&ViolationKind::Fencing), "{kinds:?}");
        assert!(a.violations.iter().any(|v| {
            v.detail
                .contains("started with a token the register had already passed")
        }));
    }

    #[test]
    fn a_stale_write_the_register_accepted_is_caught() {
        let mut obs = run(5000);
        worker(&mut obs, "c0-0", 100, 5, 100, 2000);
        worker(&mut obs, "c1-0", 200, 7, 3000, 5000);
        settle(&mut obs);
        // A broken register: accepts token 5 after 7.
        obs.register.push(RegisterEntry {
            at: ms_(4000),
            token: 5,
            pid: 100,
            candidate: "c0-0".into(),
            accepted: true,
            highest_before: 7,
        });
        obs.register.sort_by_key(|e| e.at);
        let a = check(&obs, &BOUNDS);
        assert!(kinds(&a).iter().all(|k| *k != ViolationKind::Liveness));
        assert!(
            a.violations
                .iter()
                .any(|v| v.detail.contains("accepted a stale write"))
        );
    }

    #[test]
    fn a_worker_that_outlives_its_killed_baton_is_an_orphan() {
        let mut obs = run(5000);
        worker(&mut obs, "c0-0", 100, 1, 100, 2600);
        obs.kills.push(Kill {
            candidate: "c0-0".into(),
            at: ms_(2000),
        });
        let a = checked(&mut obs);
        assert!(kinds(&a).contains(&ViolationKind::Orphan));
        assert!(a.max_orphan_lag.unwrap() >= ms_(600));
    }

    #[test]
    fn no_leader_long_after_a_fault_healed_is_a_liveness_violation() {
        let mut obs = run(9000);
        worker(&mut obs, "c0-0", 100, 1, 100, 2000);
        worker(&mut obs, "c1-0", 200, 2, 6000, 9000);
        obs.episodes.push(Episode {
            what: "blackhole c0-0".into(),
            target: Some("c0-0".into()),
            start: ms_(1500),
            heal: ms_(2500),
        });
        let a = checked(&mut obs);
        assert_eq!(kinds(&a), vec![ViolationKind::Liveness]);
        assert!(a.max_recovery >= ms_(3500));
        // Within the bound it passes.
        let mut obs = run(9000);
        worker(&mut obs, "c0-0", 100, 1, 100, 2000);
        worker(&mut obs, "c1-0", 200, 2, 4000, 9000);
        obs.episodes.push(Episode {
            what: "blackhole c0-0".into(),
            target: Some("c0-0".into()),
            start: ms_(1500),
            heal: ms_(2500),
        });
        assert_eq!(kinds(&checked(&mut obs)), vec![]);
    }

    #[test]
    fn a_leader_that_survives_the_fault_needs_no_recovery() {
        let mut obs = run(5000);
        worker(&mut obs, "c0-0", 100, 1, 100, 5000);
        obs.episodes.push(Episode {
            what: "reset c0-0".into(),
            target: Some("c0-0".into()),
            start: ms_(1500),
            heal: ms_(1600),
        });
        let a = checked(&mut obs);
        assert_eq!(kinds(&a), vec![]);
        assert_eq!(a.max_recovery, Duration::ZERO);
    }
}
