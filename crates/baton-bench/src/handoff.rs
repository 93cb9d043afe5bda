//! Graceful handoff in one process: two elections on two store instances (for Redis two
//! connections) pass leadership back and forth.
//!
//! One handoff: the follower has started (its first acquire answered `Held`, so it is
//! subscribed and waiting). The bench reads the clock, calls the leader's `stop()` (cancel,
//! `LostLeadership`, release), and, in the same task, waits on the follower's events; the
//! handoff ends when that subscriber receives `BecameLeader`. Building and starting the next
//! follower (a stopped election cannot be restarted, so it is a new `LeaderElection` on the
//! stopped one's store) happens outside the timed window.
//!
//! Every store runs on the bench's multi-threaded runtime; memory and Redis run once more on a
//! current-thread runtime of their own, for comparison. Each run also records how much CPU
//! other processes used meanwhile: the machine is shared, and latency tails follow its load.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton::LeaseStore;

use crate::BoxResult;
use crate::procfs::{OtherLoad, percent_or_dash};
use crate::report::{self, Context, Samples, ms, target_ms, verdict};
use crate::stores::{
    StoreKind, Timing, became_leader, became_leader_within, election, first_lead_limit,
};

/// How long one handoff may take before the run is declared broken.
const STEP_LIMIT: Duration = Duration::from_secs(10);

/// `warmup` untimed handoffs, then `rounds` timed ones.
pub async fn graceful(
    stores: [Arc<dyn LeaseStore>; 2],
    key: &str,
    timing: Timing,
    warmup: usize,
    rounds: usize,
) -> BoxResult<Samples> {
    let mut leader = election(&stores[0], key, "handoff-0", timing)?;
    let mut events = leader.subscribe();
    leader.start().await?;
    became_leader_within(&mut events, first_lead_limit(timing), "the first leader").await?;
    let mut leader_side = 0;
    let mut samples = Vec::with_capacity(rounds);
    for round in 1..=warmup + rounds {
        let side = 1 - leader_side;
        let follower = election(&stores[side], key, &format!("handoff-{round}"), timing)?;
        let mut events = follower.subscribe();
        follower.start().await?;
        // Its first attempt normally names the leader; one that met a transient store error
        // (start() then returns, campaigning on with backoff) names it on a later attempt.
        let leader_id = leader.candidate_id().to_owned();
        let _ = tokio::time::timeout(
            STEP_LIMIT,
            follower
                .state()
                .wait_for(|s| s.leader.as_deref() == Some(leader_id.as_str())),
        )
        .await;
        if follower.is_leader()
            || follower.current_leader_id() != Some(leader.candidate_id().into())
        {
            return Err(format!(
                "round {round}: the follower does not see {} leading (the follower: {:?}; the \
                 leader leads: {})",
                leader.candidate_id(),
                follower.state().borrow(),
                leader.is_leader(),
            )
            .into());
        }

        let t0 = Instant::now();
        let (stopped, arrived) = tokio::time::timeout(STEP_LIMIT, async {
            tokio::join!(leader.stop(), became_leader(&mut events))
        })
        .await
        .map_err(|_| format!("round {round}: no handoff within {STEP_LIMIT:?}"))?;
        stopped?;
        let arrived = arrived.ok_or_else(|| format!("round {round}: the follower went away"))?;
        if round > warmup {
            samples.push(arrived.saturating_duration_since(t0));
        }
        leader = follower;
        leader_side = side;
    }
    leader.stop().await?;
    Ok(Samples::new(samples))
}

/// The client's own part of a Redis handoff, without Baton: one connection runs a script that
/// publishes (as a release does), from a task of its own (as the leader's driver is); the
/// other connection, told by the push, runs one script and has its reply (as the follower's
/// acquire). Same redis-rs client, same server, same runtime as the Redis row it is shown
/// with. What a handoff costs above this is Baton's: the leader's stop reaching its driver,
/// the scripts' own work, and the event reaching its subscriber.
pub async fn redis_client_floor(url: &str, warmup: usize, rounds: usize) -> BoxResult<Samples> {
    use redis::IntoConnectionInfo as _;
    let info = url.into_connection_info()?;
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(redis::ProtocolVersion::RESP3);
    let client = redis::Client::open(info.set_redis_settings(settings))?;
    let resp3 = redis::AsyncConnectionConfig::new();
    let leader = client
        .get_multiplexed_async_connection_with_config(&resp3)
        .await?;
    let (pushes, mut pushed) = tokio::sync::mpsc::unbounded_channel();
    let mut follower = client
        .get_multiplexed_async_connection_with_config(&resp3.set_push_sender(pushes))
        .await?;
    let channel = "bench:client-floor";
    follower.subscribe(channel).await?;
    let release = redis::Script::new("return redis.call('PUBLISH', ARGV[1], 'released')");
    let acquire = redis::Script::new("return 1");
    let mut samples = Vec::with_capacity(rounds);
    for round in 1..=warmup + rounds {
        // Drop what came before this round (the subscription's confirmation).
        while pushed.try_recv().is_ok() {}
        let t0 = Instant::now();
        let mut conn = leader.clone();
        let script = release.clone();
        let released =
            tokio::spawn(async move { script.arg(channel).invoke_async::<i64>(&mut conn).await });
        tokio::time::timeout(STEP_LIMIT, pushed.recv())
            .await
            .map_err(|_| format!("client floor, round {round}: no push within {STEP_LIMIT:?}"))?
            .ok_or("client floor: the push channel closed")?;
        let _: i64 = acquire.invoke_async(&mut follower).await?;
        let done = t0.elapsed();
        released.await??;
        if round > warmup {
            samples.push(done);
        }
    }
    Ok(Samples::new(samples))
}

/// One store's handoffs, on one runtime flavour.
#[derive(Debug)]
pub struct Row {
    pub store: &'static str,
    pub current_thread: bool,
    pub warmup: usize,
    pub samples: Samples,
    /// Other processes' CPU use during the run, in % of the machine.
    pub others: Option<f64>,
    /// Redis only: [`redis_client_floor`] on the same runtime, right after the handoffs.
    pub client_floor: Option<Samples>,
}

/// Redis's graceful handoff in one process: p50 and p99 (issue 16; p50 ≤ 0.25 ms and
/// p99 ≤ 1 ms before it).
pub const REDIS_P50: Duration = Duration::from_micros(200);
pub const REDIS_P99: Duration = Duration::from_micros(500);

/// Targets of the graceful handoff per store: (p50, p99).
fn target(store: &str) -> Option<(Option<Duration>, Duration)> {
    match store {
        "redis" => Some((Some(REDIS_P50), REDIS_P99)),
        "sqlite" => Some((None, Duration::from_millis(20))),
        _ => None,
    }
}

/// Every store on the bench's multi-threaded runtime, then memory and Redis again on a
/// current-thread runtime of their own (in a thread of their own), which shows what the
/// hand-offs between worker threads cost.
pub async fn run_all(
    kinds: &[StoreKind],
    plan: &[(&'static str, usize, usize)],
    timing: Timing,
    server_pid: u32,
) -> BoxResult<Vec<Row>> {
    let mut rows = Vec::new();
    for current_thread in [false, true] {
        for kind in kinds {
            let Some(&(store, warmup, rounds)) = plan.iter().find(|p| p.0 == kind.name()) else {
                continue;
            };
            if current_thread && store == "sqlite" {
                continue; // its work runs on blocking threads either way
            }
            let flavour = if current_thread {
                ", current-thread runtime"
            } else {
                ""
            };
            eprintln!("handoff: {store}{flavour}, {rounds} handoffs");
            let key = format!(
                "bench:handoff:{store}{}",
                if current_thread { ":ct" } else { "" }
            );
            let load = OtherLoad::start(Some(server_pid))?;
            let redis_url = match kind {
                StoreKind::Redis(url) => Some(url.clone()),
                _ => None,
            };
            let measure = async move |kind: StoreKind| -> BoxResult<(Samples, Option<Samples>)> {
                let stores = [kind.open()?, kind.open()?];
                let samples = graceful(stores, &key, timing, warmup, rounds).await?;
                let floor = match &redis_url {
                    Some(url) => Some(redis_client_floor(url, warmup, rounds).await?),
                    None => None,
                };
                Ok((samples, floor))
            };
            let (samples, client_floor) = if current_thread {
                let kind = kind.clone();
                tokio::task::spawn_blocking(move || -> BoxResult<(Samples, Option<Samples>)> {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    runtime.block_on(measure(kind))
                })
                .await??
            } else {
                measure(kind.clone()).await?
            };
            rows.push(Row {
                store,
                current_thread,
                warmup,
                samples,
                others: load.percent()?,
                client_floor,
            });
        }
    }
    Ok(rows)
}

/// The summary's line: Redis on the multi-threaded runtime.
pub fn summary_row(rows: &[Row]) -> Option<report::Row> {
    let row = rows
        .iter()
        .find(|r| r.store == "redis" && !r.current_thread)?;
    let (t50, t99) = (REDIS_P50, REDIS_P99);
    let s = &row.samples;
    let (p50, p99) = (s.p(50.0), s.p(99.0));
    Some(report::Row::new(
        "Redis: graceful handoff, in process",
        format!(
            "p50 {}, p99 {}, max {} ({} handoffs)",
            ms(p50),
            ms(p99),
            ms(s.max()),
            s.len()
        ),
        format!("p50 ≤ {}, p99 ≤ {}", target_ms(t50), target_ms(t99)),
        p50 <= t50 && p99 <= t99,
    ))
}

pub fn report(rows: &[Row], timing: Timing, ctx: &Context) -> String {
    let workers = tokio::runtime::Handle::try_current().map_or(0, |h| h.metrics().num_workers());
    let mut out = String::new();
    let _ = writeln!(out, "## Graceful handoff in one process\n");
    let _ = writeln!(
        out,
        "Two elections on two store instances (SQLite: two handles on one file; Redis: two \
         `RedisStore`s, so two connections) pass leadership back and forth; {}. Timed from \
         just before the leader's `stop()` (cancel the scope, `LostLeadership`, release) to the \
         arrival of `BecameLeader` at a subscriber of the follower's events, awaited in the \
         same task. The next follower (a new `LeaderElection` on the stopped one's store) is \
         built and started outside the timed window; the first handoffs of each run are a \
         warm-up and are not counted. The bench runs on a multi-threaded tokio runtime ({workers} \
         workers, as `#[tokio::main]` builds); the rows marked *current-thread* repeat the run \
         on a current-thread runtime, where the bench's side of a handoff needs no wake-up of \
         another thread. *Others' CPU* is the CPU time other processes used during the run, \
         as a share of the whole machine (`/proc/stat` minus the bench and its redis-server): \
         the machine is shared. The rows *redis-rs alone* time the client's own part of a \
         Redis handoff without Baton, right after the Redis row on the same runtime and \
         server: one connection runs a script that publishes (as the release does), from a \
         task of its own; the other, told by the push, runs one script and has its reply (as \
         the follower's acquire). What a Redis handoff costs above that row is Baton's: the \
         leader's stop reaching its driver, the scripts' own work, the event reaching its \
         subscriber.\n",
        timing.describe()
    );
    let _ = writeln!(
        out,
        "| store | runtime | handoffs | p50 | p99 | min | mean | max | others' CPU | target |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---:|---|");
    for r in rows {
        let s = &r.samples;
        let target = match target(r.store) {
            _ if r.current_thread => "(comparison)".to_owned(),
            Some((Some(t50), t99)) => format!("p50 ≤ {}, p99 ≤ {}", target_ms(t50), target_ms(t99)),
            Some((None, t99)) => format!("p99 ≤ {}", target_ms(t99)),
            None => "none".to_owned(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} (+{} warm-up) | {} | {} | {} | {} | {} | {} | {target} |",
            r.store,
            if r.current_thread {
                "current-thread"
            } else {
                "multi-thread"
            },
            s.len(),
            r.warmup,
            ms(s.p(50.0)),
            ms(s.p(99.0)),
            ms(s.min()),
            ms(s.mean()),
            ms(s.max()),
            percent_or_dash(r.others),
        );
        if let Some(f) = &r.client_floor {
            let _ = writeln!(
                out,
                "| redis-rs alone, no Baton | {} | {} (+{} warm-up) | {} | {} | {} | {} | {} | (the same run) | (floor) |",
                if r.current_thread {
                    "current-thread"
                } else {
                    "multi-thread"
                },
                f.len(),
                r.warmup,
                ms(f.p(50.0)),
                ms(f.p(99.0)),
                ms(f.min()),
                ms(f.mean()),
                ms(f.max()),
            );
        }
    }
    out.push('\n');
    for r in rows.iter().filter(|r| !r.current_thread) {
        let Some((t50, t99)) = target(r.store) else {
            continue;
        };
        let (p50, p99) = (r.samples.p(50.0), r.samples.p(99.0));
        let mut parts = Vec::new();
        if let Some(t50) = t50 {
            parts.push(format!(
                "p50 ≤ {}: {}",
                target_ms(t50),
                verdict(p50 <= t50, || format!("by {}", ms(p50.saturating_sub(t50))))
            ));
        }
        parts.push(format!(
            "p99 ≤ {}: {}",
            target_ms(t99),
            verdict(p99 <= t99, || format!("by {}", ms(p99.saturating_sub(t99))))
        ));
        let _ = writeln!(out, "- {}: {}.", r.store, parts.join("; "));
        let comparison = rows
            .iter()
            .find(|c| c.store == r.store && c.current_thread)
            .map(|c| {
                format!(
                    " The same handoffs on a current-thread runtime, in this run: p50 {}, p99 {} \
                     (others' CPU {}).",
                    ms(c.samples.p(50.0)),
                    ms(c.samples.p(99.0)),
                    percent_or_dash(c.others)
                )
            })
            .unwrap_or_default();
        let floor = r
            .client_floor
            .as_ref()
            .map(|f| {
                format!(
                    " The client alone (*redis-rs alone*, same runtime, this run) needs p50 {} \
                     for the release's push and one script after it, so Baton's own part of the \
                     median is about {}.",
                    ms(f.p(50.0)),
                    ms(p50.saturating_sub(f.p(50.0)))
                )
            })
            .unwrap_or_default();
        if t50.is_some_and(|t| p50 > t) {
            let _ = writeln!(
                out,
                "  - Why the median: a handoff is one round trip to release, a push, and one \
                 round trip to acquire, with thread wake-ups between them (the leader's task, \
                 the connections' driver tasks, the follower's task, the subscriber); in a {} \
                 build, with other processes using {} of the machine, each wake-up of a parked \
                 worker thread costs tens of microseconds on this virtual machine.{comparison}\
                 {floor} Fix: fewer wake-ups per handoff (the push travels from the \
                 connection's task through a channel to the election's task, whose acquire \
                 goes back through the connection's task); a current-thread runtime already \
                 has none between Baton's tasks.",
                ctx.profile,
                percent_or_dash(r.others)
            );
        }
        if p99 > t99 {
            let slow = r.samples.above(t99);
            let _ = writeln!(
                out,
                "  - Why the p99: {} of {} handoffs took longer than {} (their median: {}, \
                 about a scheduler time slice; the median handoff takes {}). A handoff needs \
                 about four wake-ups in a row (the leader's release reaching redis-server, the \
                 push reaching the follower's connection, the follower's acquire, its reply and \
                 event), on 2 cores shared with redis-server and, during this run, with other \
                 processes using {} of the machine; one preemption among them costs a slice.\
                 {comparison} Fix: not in the library's logic (one round trip to release, a \
                 push, one round trip to acquire); give the service and Redis cores of their \
                 own, or measure on a quiet machine.",
                slow.len(),
                r.samples.len(),
                ms(t99),
                slow.get(slow.len() / 2)
                    .map_or_else(|| "–".to_owned(), |d| ms(*d)),
                ms(p50),
                percent_or_dash(r.others)
            );
        }
    }
    out.push('\n');
    out.push_str(&ctx.footer(&["memory", "sqlite", "redis"]));
    out
}
