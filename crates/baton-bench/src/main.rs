//! `baton-bench`: Baton's benchmarks for the memory, SQLite, Redis, PostgreSQL, MySQL/MariaDB
//! and etcd stores, and against peers, run by `scripts/bench`.
//!
//! Figures (issue 3's Redis table, and issue 8's where cheap):
//!
//! 1. **Graceful handoff in process** (memory, SQLite, Redis): two elections on two store
//!    instances pass leadership back and forth; `stop()` → the follower's `BecameLeader`.
//!    **Across processes** (SQLite, Redis, PostgreSQL, MySQL/MariaDB, etcd): `baton campaign
//!    --json` processes; SIGINT to the leader → the follower's `became_leader`, on the boot
//!    clock (and `etcdctl elect` on the same etcd, for comparison). **Observer** (the same five):
//!    a `baton watch --json` process watches those handoffs; the leader's `lost_leadership` →
//!    the watcher's `leader_changed`, against the follower's `became_leader`.
//! 2. **Crash failover** (memory, SQLite, Redis): a leader that vanishes without releasing; its
//!    last acquire/renew send → the follower's `BecameLeader`, against the lease.
//! 3. **Cost** (Redis): requests per second of one leader and ten idle followers, from the
//!    server's `INFO commandstats`.
//! 4. **Contention** (Redis, PostgreSQL, MySQL/MariaDB, etcd): C candidates on one key;
//!    handoff latency and the server's requests per handoff.
//! 5. **Scale** (memory, SQLite, Redis, PostgreSQL, MySQL/MariaDB, etcd): E elections in one
//!    child process; its CPU and RSS.
//! 6. **PostgreSQL, MySQL/MariaDB, etcd** (one figure each): graceful handoff, crash failover
//!    and cost (requests/s of the leader and of idle followers, from the server's own counters).
//! 7. **Against `etcdctl elect`**: graceful handoff and crash failover across processes, Baton's
//!    CLI against etcd's own election client, on one etcd.
//! 8. **Against a naive SET NX poll client** on Redis: handoff, crash failover, idle cost.
//! 9. **Kubernetes** against the fake API server (`baton_testkit::fake_k8s`): graceful handoff
//!    in one process and between `baton` processes, crash failover, an idle follower's
//!    requests (counted per client by the fake), and the same for the Python `kubernetes`
//!    client as the peer.
//! 10. **Consul** against the fake agent (`baton_testkit::fake_consul`): graceful handoff in
//!     one process and between `baton` processes, crash failover, an idle follower's requests.
//!
//! PostgreSQL and MySQL/MariaDB are the machine's servers (127.0.0.1:5432 and :3306, database
//! `test`), used through a lease table of the bench's own that it drops afterwards; etcd is a
//! throwaway server the bench spawns.
//! Every Redis figure runs against a `redis-server` the bench spawns on a free loopback port
//! (never the machine's 6379). Each figure is printed, and with `--write FILE` rewritten in its
//! own marked section of that file (`docs/BENCHMARKS.md`); other sections are left alone.
//! `--smoke` runs every figure briefly, to check that the benchmark works, and writes nothing.

mod cli_handoff;
mod consul;
mod contention;
mod cost;
mod dbs;
mod failover;
mod handoff;
mod kubernetes;
mod observer;
mod peers;
mod planned_handoff;
mod procfs;
mod procs;
mod redis_admin;
mod report;
mod scale;
mod server_stores;
mod stores;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use baton::MemoryStore;
use baton_testkit::etcd_server::EtcdServer;
use baton_testkit::servers::{RedisServer, scratch_dir};
use clap::{Parser, Subcommand, ValueEnum};

use crate::redis_admin::Admin;
use crate::report::{Context, Row, Samples, ms, target_ms, verdict};
use crate::stores::{StoreKind, Timing};

/// Errors of the bench: anything, shown once at the top.
pub type BoxResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[derive(Debug, Parser)]
#[command(
    about = "Baton's benchmarks: handoff, failover, cost, contention and scale per store, and peers"
)]
struct Args {
    /// A few seconds of every figure, to check the benchmark works; writes nothing
    #[arg(long)]
    smoke: bool,
    /// Rewrite each measured figure's section of this Markdown file (e.g. docs/BENCHMARKS.md)
    #[arg(long, conflicts_with = "smoke")]
    write: Option<PathBuf>,
    /// The command line to record in the report
    #[arg(long, default_value = "scripts/bench")]
    command: String,
    /// Only these figures (comma-separated) [default: all]
    #[arg(long, value_delimiter = ',')]
    only: Vec<Figure>,
    /// Timed handoffs of the cli-handoff and observer (per store), postgres, mysql, etcd and
    /// vs-* figures [default: 100; smoke: 3-5]
    #[arg(long)]
    rounds: Option<usize>,
    /// Crashes of the postgres, mysql, etcd and vs-* figures [default: 10; smoke: 1]; `etcdctl
    /// elect` crashes (60 s each) are at most 3
    #[arg(long)]
    crashes: Option<usize>,
    /// Length of each cost window of the postgres, mysql, etcd and vs-naive-redis figures
    /// [default: 20s]
    #[arg(long, value_parser = humantime::parse_duration)]
    cost_window: Option<Duration>,
    /// Only these stores (comma-separated: memory, sqlite, redis, postgres, mysql, etcd) in the
    /// scale figure; prints, and writes nothing, as a partial scale table would replace the
    /// whole one [default: all]
    #[arg(long, value_delimiter = ',', conflicts_with = "write")]
    scale_stores: Vec<String>,
    /// The `baton` binary for the cli-handoff and vs-etcdctl figures [default: `baton` beside
    /// this executable]
    #[arg(long)]
    baton: Option<PathBuf>,
    #[command(subcommand)]
    child: Option<Child>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Figure {
    Handoff,
    CliHandoff,
    PlannedHandoff,
    Observer,
    Failover,
    Cost,
    Contention,
    Scale,
    Postgres,
    Mysql,
    Etcd,
    VsEtcdctl,
    VsNaiveRedis,
    Kubernetes,
    Consul,
}

const ALL: [Figure; 15] = [
    Figure::Handoff,
    Figure::CliHandoff,
    Figure::PlannedHandoff,
    Figure::Observer,
    Figure::Failover,
    Figure::Cost,
    Figure::Contention,
    Figure::Scale,
    Figure::Postgres,
    Figure::Mysql,
    Figure::Etcd,
    Figure::VsEtcdctl,
    Figure::VsNaiveRedis,
    Figure::Kubernetes,
    Figure::Consul,
];

#[derive(Debug, Subcommand)]
enum Child {
    /// (internal) One scale measurement, in a process of its own
    #[command(hide = true)]
    ScaleChild(scale::ChildArgs),
}

/// How much of each figure to run.
struct Profile {
    /// The `--smoke` profile.
    smoke: bool,
    /// (store, untimed warm-up handoffs, timed handoffs)
    handoff: [(&'static str, usize, usize); 3],
    handoff_timing: Timing,
    cli_handoff: cli_handoff::Params,
    planned_handoff: planned_handoff::Params,
    observer: observer::Params,
    failover_rounds: usize,
    failover_timing: Timing,
    cost: cost::Params,
    contention: Vec<contention::Params>,
    scale: scale::Params,
    /// (store, E)
    scale_runs: Vec<(&'static str, usize)>,
    server_stores: server_stores::Params,
    etcdctl: peers::EtcdctlParams,
    naive: peers::NaiveParams,
    kubernetes: kubernetes::Params,
    consul: consul::Params,
}

impl Profile {
    fn full() -> Profile {
        let contention_timing = Timing::ms(15_000, 5_000, 5_000);
        Profile {
            smoke: false,
            handoff: [
                ("memory", 50, 2000),
                ("sqlite", 10, 200),
                ("redis", 50, 2000),
            ],
            handoff_timing: Timing::ms(2000, 500, 500),
            cli_handoff: cli_handoff::Params {
                rounds: 100,
                timing: CLI_TIMING,
            },
            planned_handoff: planned_handoff::Params {
                rounds: 100,
                timing: CLI_TIMING,
            },
            observer: observer::Params {
                rounds: 100,
                timing: CLI_TIMING,
            },
            failover_rounds: 10,
            failover_timing: Timing::ms(1000, 250, 250),
            cost: cost::Params {
                timing: Timing::ms(3000, 1000, 1000),
                followers: 10,
                settle: Duration::from_secs(5),
                window: Duration::from_secs(20),
            },
            contention: [10, 100, 1000]
                .into_iter()
                .map(|candidates| contention::Params {
                    timing: contention_timing,
                    candidates,
                    connections: 10,
                    handoffs: 100,
                })
                .collect(),
            scale: scale::Params {
                timing: Timing::ms(15_000, 5_000, 5_000),
                settle: Duration::from_secs(5),
                window: Duration::from_secs(30),
            },
            scale_runs: vec![
                ("memory", 1),
                ("memory", 100),
                ("memory", 10_000),
                ("memory", 100_000),
                ("sqlite", 1),
                ("sqlite", 100),
                ("sqlite", 10_000),
                ("redis", 1),
                ("redis", 100),
                ("redis", 10_000),
                ("redis", 100_000),
                ("postgres", 1),
                ("postgres", 100),
                ("postgres", 10_000),
                ("mysql", 1),
                ("mysql", 100),
                ("mysql", 10_000),
                ("etcd", 1),
                ("etcd", 100),
                ("etcd", 10_000),
            ],
            server_stores: server_stores::Params {
                warmup: 10,
                rounds: 100,
                handoff_timing: Timing::ms(2000, 500, 500),
                crashes: 10,
                cost: server_stores::CostParams {
                    timing: Timing::ms(3000, 1000, 1000),
                    followers: 10,
                    settle: Duration::from_secs(5),
                    window: Duration::from_secs(20),
                },
            },
            etcdctl: peers::EtcdctlParams {
                rounds: 100,
                baton_crashes: 10,
                etcdctl_crashes: 3,
                etcdctl_crash_cap: Duration::from_secs(90),
                timing: Timing::ms(2000, 500, 500),
            },
            naive: peers::NaiveParams {
                retry: Duration::from_millis(100),
                timing: Timing::ms(1000, 250, 250),
                warmup: 10,
                rounds: 100,
                crashes: 10,
                cost: cost::Params {
                    timing: Timing::ms(3000, 1000, 1000),
                    followers: 10,
                    settle: Duration::from_secs(5),
                    window: Duration::from_secs(20),
                },
            },
            kubernetes: kubernetes::Params {
                warmup: 10,
                rounds: 200,
                handoff_timing: Timing::ms(2000, 500, 500),
                process_rounds: 100,
                crashes: 10,
                // Python's retry period is at least 1 s: both renew every second.
                timing: Timing::ms(3000, 1000, 1000),
                settle: Duration::from_secs(5),
                window: Duration::from_secs(30),
            },
            consul: consul::Params {
                warmup: 10,
                rounds: 200,
                handoff_timing: Timing::ms(2000, 500, 500),
                process_rounds: 100,
                crashes: 10,
                timing: Timing::ms(3000, 1000, 1000),
                settle: Duration::from_secs(5),
                window: Duration::from_secs(30),
            },
        }
    }

    fn smoke() -> Profile {
        let short = Timing::ms(600, 200, 200);
        Profile {
            smoke: true,
            handoff: [("memory", 2, 20), ("sqlite", 1, 5), ("redis", 2, 20)],
            handoff_timing: Timing::ms(500, 100, 100),
            planned_handoff: planned_handoff::Params {
                rounds: 3,
                timing: Timing::ms(2000, 500, 500),
            },
            cli_handoff: cli_handoff::Params {
                rounds: 3,
                // A shorter lease than the full run's: Redis's restart guard is waited out
                // first (etcd leases are at least 2 s).
                timing: Timing::ms(2000, 500, 500),
            },
            observer: observer::Params {
                rounds: 3,
                timing: Timing::ms(2000, 500, 500),
            },
            failover_rounds: 1,
            failover_timing: Timing::ms(1000, 250, 250),
            cost: cost::Params {
                timing: short,
                followers: 10,
                settle: Duration::from_millis(200),
                window: Duration::from_millis(500),
            },
            contention: vec![contention::Params {
                timing: short,
                candidates: 10,
                connections: 3,
                handoffs: 3,
            }],
            scale: scale::Params {
                timing: short,
                settle: Duration::from_millis(100),
                window: Duration::from_millis(300),
            },
            scale_runs: vec![("memory", 10), ("redis", 10)],
            server_stores: server_stores::Params {
                warmup: 1,
                rounds: 5,
                handoff_timing: Timing::ms(1000, 250, 250),
                crashes: 1,
                cost: server_stores::CostParams {
                    timing: short,
                    followers: 3,
                    settle: Duration::from_millis(200),
                    window: Duration::from_millis(500),
                },
            },
            etcdctl: peers::EtcdctlParams {
                rounds: 3,
                baton_crashes: 1,
                etcdctl_crashes: 1,
                etcdctl_crash_cap: Duration::from_secs(1),
                timing: Timing::ms(2000, 500, 500),
            },
            naive: peers::NaiveParams {
                retry: Duration::from_millis(100),
                timing: Timing::ms(1000, 250, 250),
                warmup: 1,
                rounds: 5,
                crashes: 1,
                cost: cost::Params {
                    timing: short,
                    followers: 3,
                    settle: Duration::from_millis(200),
                    window: Duration::from_millis(500),
                },
            },
            kubernetes: kubernetes::Params {
                warmup: 1,
                rounds: 5,
                handoff_timing: Timing::ms(1000, 250, 250),
                process_rounds: 2,
                crashes: 1,
                // Python's retry period is at least 1 s.
                timing: Timing::ms(2000, 1000, 500),
                settle: Duration::from_millis(200),
                window: Duration::from_secs(1),
            },
            consul: consul::Params {
                warmup: 1,
                rounds: 5,
                handoff_timing: Timing::ms(1000, 250, 250),
                process_rounds: 2,
                crashes: 1,
                timing: Timing::ms(1000, 250, 250),
                settle: Duration::from_millis(200),
                window: Duration::from_secs(1),
            },
        }
    }

    /// Apply `--rounds`, `--crashes` and `--cost-window`.
    fn adjust(&mut self, args: &Args) {
        if let Some(n) = args.rounds {
            self.cli_handoff.rounds = n.max(1);
            self.planned_handoff.rounds = n.max(1);
            self.observer.rounds = n.max(1);
            self.server_stores.rounds = n.max(1);
            self.server_stores.warmup = self.server_stores.warmup.min(n.div_ceil(10));
            self.etcdctl.rounds = n.max(1);
            self.naive.rounds = n.max(1);
            self.naive.warmup = self.naive.warmup.min(n.div_ceil(10));
            self.kubernetes.process_rounds = n.max(1);
            self.consul.process_rounds = n.max(1);
        }
        if let Some(n) = args.crashes {
            let n = n.max(1);
            self.server_stores.crashes = n;
            self.etcdctl.baton_crashes = n;
            self.etcdctl.etcdctl_crashes = n.min(3);
            self.naive.crashes = n;
            self.kubernetes.crashes = n;
            self.consul.crashes = n;
        }
        if let Some(w) = args.cost_window {
            self.server_stores.cost.window = w;
            self.naive.cost.window = w;
            self.kubernetes.window = w;
            self.consul.window = w;
        }
    }
}

fn main() {
    let args = Args::parse();
    let result = match args.child {
        Some(Child::ScaleChild(child)) => scale::child_main(child),
        None => run(&args),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> BoxResult<()> {
    let figures: Vec<Figure> = if args.only.is_empty() {
        ALL.to_vec()
    } else {
        ALL.into_iter().filter(|f| args.only.contains(f)).collect()
    };
    let mut profile = if args.smoke {
        Profile::smoke()
    } else {
        Profile::full()
    };
    profile.adjust(args);
    if !args.scale_stores.is_empty() {
        profile
            .scale_runs
            .retain(|(store, _)| args.scale_stores.iter().any(|s| s == store));
    }
    // What a figure needs from outside, checked before the first figure runs, so that a
    // missing piece fails at once with its fix rather than after half an hour of figures.
    if figures.contains(&Figure::Kubernetes) {
        kubernetes::python()?;
    }
    // Started from the main thread, which outlives the run: the server dies with the thread
    // that spawned it.
    let redis = RedisServer::start();
    let etcd = [
        Figure::CliHandoff,
        Figure::PlannedHandoff,
        Figure::Observer,
        Figure::Contention,
        Figure::Scale,
        Figure::Etcd,
        Figure::VsEtcdctl,
    ]
    .iter()
    .any(|f| figures.contains(f))
    .then(EtcdServer::start);
    let baton_exe = match &args.baton {
        Some(path) => path.clone(),
        None => std::env::current_exe()?
            .parent()
            .map(|dir| dir.join("baton"))
            .ok_or("cannot locate the baton binary: pass --baton PATH")?,
    };
    let dir = scratch_dir("baton-bench");
    let ctx = Context::new(args.command.clone());
    eprintln!(
        "baton-bench: {} profile, redis-server on port {}, SQLite under {}",
        if args.smoke { "smoke" } else { "full" },
        redis.port(),
        dir.display()
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut sections: Vec<(&'static str, String)> = Vec::new();
    let outcome = runtime.block_on(measure(
        &figures,
        &profile,
        &ctx,
        Servers {
            redis_url: &redis.url(),
            etcd: etcd.as_ref(),
            baton: &baton_exe,
        },
        &dir,
        &mut sections,
    ));
    drop(runtime);
    let _ = std::fs::remove_dir_all(&dir);

    if let Some(path) = &args.write {
        // The summary first: on a new file, sections appear in the order written.
        let mut order: Vec<&(&str, String)> =
            sections.iter().filter(|s| s.0 == "summary").collect();
        order.extend(sections.iter().filter(|s| s.0 != "summary"));
        for (name, body) in order {
            report::write_section(path, name, body)?;
        }
        if !sections.is_empty() {
            eprintln!("wrote {} section(s) of {}", sections.len(), path.display());
        }
    }
    outcome
}

/// The servers and binaries the figures run against.
struct Servers<'a> {
    redis_url: &'a str,
    etcd: Option<&'a EtcdServer>,
    baton: &'a std::path::Path,
}

impl Servers<'_> {
    /// The server of `postgres`, `mysql` or `etcd`, with its counters.
    async fn server(&self, store: &str) -> BoxResult<dbs::Server> {
        Ok(match store {
            "postgres" => dbs::Server::postgres().await?,
            "mysql" => dbs::Server::mysql().await?,
            _ => dbs::Server::etcd(self.etcd.ok_or("no etcd server")?.port()),
        })
    }

    /// The `baton` binary, if it exists.
    fn baton_checked(&self) -> BoxResult<&std::path::Path> {
        if self.baton.exists() {
            Ok(self.baton)
        } else {
            Err(format!(
                "{} does not exist: build the baton binary, or pass --baton PATH",
                self.baton.display()
            )
            .into())
        }
    }
}

/// Election timing of the cross-process handoff's `baton` processes. A handoff does not depend
/// on it as long as the store tells followers of a release (etcd leases are whole seconds).
const CLI_TIMING: Timing = Timing::ms(5000, 1000, 1000);

async fn measure(
    figures: &[Figure],
    profile: &Profile,
    ctx: &Context,
    servers: Servers<'_>,
    dir: &std::path::Path,
    sections: &mut Vec<(&'static str, String)>,
) -> BoxResult<()> {
    let redis_url = servers.redis_url;
    let kinds = [
        StoreKind::Memory(MemoryStore::new()),
        StoreKind::Sqlite(dir.join("bench.db")),
        StoreKind::Redis(redis_url.to_owned()),
    ];
    let mut admin = Admin::connect(redis_url).await?;
    let mut summary_rows: Vec<Row> = Vec::new();
    let mut emit = |name: &'static str, body: String| {
        println!("{body}");
        sections.push((name, body));
    };

    if figures.contains(&Figure::Handoff) {
        let server_pid = admin.server_pid().await?;
        let rows =
            handoff::run_all(&kinds, &profile.handoff, profile.handoff_timing, server_pid).await?;
        summary_rows.extend(handoff::summary_row(&rows));
        emit(
            "handoff",
            handoff::report(&rows, profile.handoff_timing, ctx),
        );
    }

    if figures.contains(&Figure::CliHandoff) {
        let run = cli_handoff::measure(
            servers.baton_checked()?,
            redis_url,
            &ctx.redis_server,
            &mut admin,
            servers.etcd.ok_or("no etcd server")?,
            dir,
            profile.cli_handoff,
        )
        .await?;
        summary_rows.extend(run.summary_rows());
        emit("cli-handoff", run.report(ctx));
    }

    if figures.contains(&Figure::PlannedHandoff) {
        let run = planned_handoff::measure(
            servers.baton_checked()?,
            redis_url,
            &mut admin,
            servers.etcd.ok_or("no etcd server")?,
            dir,
            profile.planned_handoff,
        )
        .await?;
        summary_rows.extend(run.summary_rows());
        emit("planned-handoff", run.report(ctx));
    }

    if figures.contains(&Figure::Observer) {
        let run = observer::measure(&servers, &mut admin, dir, profile.observer).await?;
        summary_rows.extend(run.summary_rows());
        emit("observer", run.report(ctx));
    }

    if figures.contains(&Figure::Failover) {
        let timing = profile.failover_timing;
        let mut rows = Vec::new();
        for kind in &kinds {
            eprintln!(
                "failover: {}, {} crashes",
                kind.name(),
                profile.failover_rounds
            );
            let stores = [kind.open()?, kind.open()?];
            let crashes = failover::crashes(
                stores,
                &format!("bench:failover:{}", kind.name()),
                timing,
                profile.failover_rounds,
                false,
            )
            .await?;
            let worst = crashes.iter().map(|c| c.failover).max().unwrap_or_default();
            if kind.name() == "redis" {
                summary_rows.push(Row::new(
                    "Redis: crash failover",
                    format!(
                        "worst of {} crashes {} with a {} lease (lease + {})",
                        crashes.len(),
                        ms(worst),
                        baton::fmt_duration(timing.lease),
                        ms(worst.saturating_sub(timing.lease))
                    ),
                    format!("≤ lease + {}", target_ms(FAILOVER_SLACK)),
                    worst <= timing.lease + FAILOVER_SLACK,
                ));
            }
            rows.push((kind.name(), crashes));
        }
        emit("failover", failover_report(&rows, timing, ctx));
    }

    if figures.contains(&Figure::Cost) {
        eprintln!(
            "cost: 1 leader + {} followers for {:?}",
            profile.cost.followers, profile.cost.window
        );
        let cost = cost::measure(&kinds[2], &mut admin, profile.cost).await?;
        summary_rows.extend(cost.summary_rows());
        emit("cost", cost.report(ctx));
    }

    if figures.contains(&Figure::Contention) {
        let mut runs = Vec::new();
        for &params in &profile.contention {
            eprintln!(
                "contention: redis, {} candidates, {} handoffs",
                params.candidates, params.handoffs
            );
            let counter = contention::Counter::Redis(&mut admin);
            runs.push(contention::measure(&kinds[2], counter, params).await?);
        }
        let mut versions = Vec::new();
        for store in contention::SERVERS {
            let server = servers.server(store).await?;
            // PostgreSQL backends report table counters up to 10 s late (see dbs.rs).
            let settle = match (profile.smoke, store) {
                (true, _) => Duration::from_millis(200),
                (false, "postgres") => Duration::from_secs(11),
                (false, _) => Duration::from_secs(2),
            };
            versions.push((store, server.version().await));
            let kind = StoreKind::Url(store, server.store_url());
            let mut result = Ok(());
            for &params in &profile.contention {
                eprintln!(
                    "contention: {store}, {} candidates, {} handoffs",
                    params.candidates, params.handoffs
                );
                let counter = contention::Counter::Server(&server, settle);
                match contention::measure(&kind, counter, params).await {
                    Ok(run) => runs.push(run),
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            server.cleanup().await;
            result?;
        }
        summary_rows.extend(contention::summary_rows(&runs));
        emit("contention", contention::report(&runs, ctx, &versions));
    }

    if figures.contains(&Figure::Scale) {
        let exe = std::env::current_exe()?;
        let mut runs = Vec::new();
        for &(store, elections) in &profile.scale_runs {
            eprintln!("scale: {store}, E = {elections}");
            let mut server = None;
            let (url, admin) = match store {
                "memory" => ("memory:".to_owned(), None),
                "sqlite" => (
                    format!(
                        "sqlite:{}",
                        dir.join(format!("scale-{elections}.db")).display()
                    ),
                    None,
                ),
                "postgres" | "mysql" | "etcd" => {
                    let s = servers.server(store).await?;
                    let url = s.store_url();
                    server = Some(s);
                    (url, None)
                }
                _ => (redis_url.to_owned(), Some(&mut admin)),
            };
            let run = scale::run(&exe, store, &url, elections, profile.scale, admin).await;
            if let Some(s) = server {
                s.cleanup().await;
            }
            runs.push(run?);
        }
        summary_rows.extend(scale::summary_rows(&runs));
        emit("scale", scale::report(&runs, profile.scale, ctx));
    }

    for (figure, store) in [
        (Figure::Postgres, "postgres"),
        (Figure::Mysql, "mysql"),
        (Figure::Etcd, "etcd"),
    ] {
        if !figures.contains(&figure) {
            continue;
        }
        let server = servers.server(store).await?;
        let mut params = profile.server_stores;
        if store == "postgres" && !profile.smoke {
            // PostgreSQL backends report table counters up to 10 s late (see dbs.rs).
            params.cost.settle = params.cost.settle.max(Duration::from_secs(11));
        }
        let run = server_stores::measure(store, &server, params).await;
        server.cleanup().await;
        let run = run?;
        summary_rows.extend(run.summary_rows());
        emit(store, run.report(ctx));
    }

    if figures.contains(&Figure::VsEtcdctl) {
        let etcd = servers.etcd.ok_or("no etcd server")?;
        let (endpoint, url) = (etcd.endpoint(), etcd.url());
        let baton = servers.baton_checked()?.to_owned();
        let params = profile.etcdctl;
        let run = tokio::task::spawn_blocking(move || {
            peers::etcdctl_vs_baton(&endpoint, &url, &baton, params)
        })
        .await??;
        summary_rows.extend(run.summary_rows());
        emit("vs-etcdctl", run.report(ctx));
    }

    if figures.contains(&Figure::VsNaiveRedis) {
        let run = peers::naive_vs_baton(redis_url, &mut admin, profile.naive).await?;
        summary_rows.extend(run.summary_rows());
        emit("vs-naive-redis", run.report(ctx));
    }

    if figures.contains(&Figure::Kubernetes) {
        let run = kubernetes::measure(servers.baton_checked()?, dir, profile.kubernetes).await?;
        summary_rows.extend(run.summary_rows());
        emit("kubernetes", run.report(ctx));
    }

    if figures.contains(&Figure::Consul) {
        let run = consul::measure(servers.baton_checked()?, profile.consul).await?;
        summary_rows.extend(run.summary_rows());
        emit("consul", run.report(ctx));
    }

    if figures == ALL {
        emit("summary", summary(&summary_rows, ctx));
    }
    Ok(())
}

/// Target of a crash failover: within the lease plus this much.
const FAILOVER_SLACK: Duration = Duration::from_millis(50);

fn failover_report(rows: &[(&str, Vec<failover::Crash>)], timing: Timing, ctx: &Context) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## Crash failover\n");
    let _ = writeln!(
        out,
        "A leader that vanishes without releasing: a raw candidacy on its own store instance \
         (Redis: its own connection) acquires the key, renews it 0, 1 or 2 times at the renew \
         interval while a follower election on another instance watches, and is then \
         abandoned (no release, no renewals, as when its process is killed). Timed from just \
         before the last acquire/renew was sent to the arrival of the follower's \
         `BecameLeader`; the store started the lease a little later, so this bounds the \
         failover from above. Follower: {}.\n",
        timing.describe()
    );
    let _ = writeln!(
        out,
        "| store | crashes | min | mean | max | max − lease | max / lease | target ≤ lease + {} |",
        target_ms(FAILOVER_SLACK)
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---|");
    for (store, crashes) in rows {
        let s = Samples::new(crashes.iter().map(|c| c.failover).collect());
        let max = s.max();
        let over = max.saturating_sub(timing.lease);
        let ok = max <= timing.lease + FAILOVER_SLACK;
        let _ = writeln!(
            out,
            "| {store} | {} | {} | {} | {} | {} | {:.3} | {} |",
            s.len(),
            ms(s.min()),
            ms(s.mean()),
            ms(max),
            ms(over),
            max.as_secs_f64() / timing.lease.as_secs_f64(),
            verdict(ok, || format!(
                "by {}",
                ms(max.saturating_sub(timing.lease + FAILOVER_SLACK))
            )),
        );
    }
    out.push('\n');
    let _ = writeln!(
        out,
        "Each crash (ms after the last send, renewals before the crash): {}.\n",
        rows.iter()
            .map(|(store, crashes)| format!(
                "{store}: {}",
                crashes
                    .iter()
                    .map(|c| format!("{:.1} ({})", c.failover.as_secs_f64() * 1e3, c.renewals))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .collect::<Vec<_>>()
            .join("; ")
    );
    let _ = writeln!(
        out,
        "The follower sleeps until the holder's remaining TTL plus a jitter of up to 1 % of the \
         lease + 1 ms ({} here), then acquires: the excess over the lease is that jitter plus \
         one round trip.\n",
        ms(timing.lease / 100 + Duration::from_millis(1))
    );
    out.push_str(&ctx.footer(&["memory", "sqlite", "redis"]));
    out
}

fn summary(rows: &[Row], ctx: &Context) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## Summary: the targets\n");
    let _ = writeln!(
        out,
        "From the same run as the sections below, which give the method, the detail, and for \
         every missed target by how much, why, and what would fix it.\n"
    );
    let _ = writeln!(out, "| figure | measured | target | met? |");
    let _ = writeln!(out, "|---|---|---|---|");
    for row in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            row.figure,
            row.measured,
            row.target,
            if row.met { "yes" } else { "**no**" }
        );
    }
    out.push('\n');
    out.push_str(&ctx.footer(&[
        "redis",
        "PostgreSQL, MySQL/MariaDB and etcd as given in their sections",
    ]));
    out
}
