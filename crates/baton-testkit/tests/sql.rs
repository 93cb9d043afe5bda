//! The SQL stores against the machine's real servers: PostgreSQL on 127.0.0.1:5432 and MariaDB
//! (or MySQL) on 127.0.0.1:3306, both reached as their superuser without a password, database
//! `test`. `scripts/test` starts them; a test that cannot reach its server fails, naming how to
//! start it.
//!
//! Every test works in tables of its own (`baton_t_<random>`), dropped at the end, so tests
//! run in parallel with each other and with other users of the servers. Timing bounds are
//! generous: they check behaviour (push, not waiting out the lease), not speed.

use std::net::TcpStream;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use baton::store::sql::mysql::MysqlStore;
use baton::store::sql::postgres::PostgresStore;
use baton::{Acquire, BoxError, Error, Event, LeaderElection, LeaseStore, Result};
use baton_testkit::conformance::{Capabilities, ForeignWriter, StoreFactory};
use baton_testkit::mariadb_server::{MariaDbServer, shared_mariadb_tls};
use baton_testkit::tls::TestCa;
use sqlx::Executor;

const PG_BASE: &str = "postgres://postgres@127.0.0.1:5432/test";
const MY_BASE: &str = "mysql://root@127.0.0.1:3306/test";

fn require(port: u16, what: &str, start: &str) {
    if TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2)).is_err() {
        panic!(
            "{what} is not running on 127.0.0.1:{port}; these tests need it. Start it with `{start}` \
             (scripts/test does this in its \"servers\" step)"
        );
    }
}

fn require_pg() {
    require(
        5432,
        "PostgreSQL",
        "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    );
}

fn require_my() {
    require(
        3306,
        "MariaDB",
        "start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd",
    );
}

fn table_name() -> String {
    format!("baton_t_{:012x}", fastrand::u64(..) >> 16)
}

/// Run SQL as the superuser with the command-line client (for cleanup in `Drop`).
fn admin(db: Db, sql: &str) {
    let out = match db {
        Db::Postgres => Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "test",
                "-q",
                "-c",
                sql,
            ])
            .output(),
        Db::Mysql => Command::new("mysql")
            .args(["-h", "127.0.0.1", "-u", "root", "test", "-e", sql])
            .output(),
    };
    if let Ok(out) = out
        && !out.status.success()
    {
        eprintln!("{sql}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Db {
    Postgres,
    Mysql,
}

/// A table of this test's own; dropped (with the users and roles it lists) when dropped.
struct Scratch {
    db: Db,
    table: String,
    drop_roles: Vec<String>,
}

impl Scratch {
    fn new(db: Db) -> Scratch {
        match db {
            Db::Postgres => require_pg(),
            Db::Mysql => require_my(),
        }
        Scratch {
            db,
            table: table_name(),
            drop_roles: Vec::new(),
        }
    }

    fn url(&self) -> String {
        self.url_with("")
    }

    fn url_with(&self, extra: &str) -> String {
        let base = match self.db {
            Db::Postgres => PG_BASE,
            Db::Mysql => MY_BASE,
        };
        format!("{base}?table={}{extra}", self.table)
    }

    fn store(&self) -> Arc<dyn LeaseStore> {
        self.store_at(&self.url())
    }

    fn store_at(&self, url: &str) -> Arc<dyn LeaseStore> {
        baton::connect::store_from_url(url).unwrap_or_else(|e| panic!("open {url}: {e}"))
    }

    async fn pg(&self) -> sqlx::PgPool {
        sqlx::PgPool::connect(PG_BASE)
            .await
            .expect("connect to PostgreSQL as postgres")
    }

    async fn my(&self) -> sqlx::MySqlPool {
        sqlx::MySqlPool::connect(MY_BASE)
            .await
            .expect("connect to MariaDB as root")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        admin(self.db, &format!("DROP TABLE IF EXISTS {}", self.table));
        admin(
            self.db,
            &format!("DROP TABLE IF EXISTS {}", presence_table(&self.table)),
        );
        for role in &self.drop_roles {
            match self.db {
                Db::Postgres => admin(self.db, &format!("DROP ROLE IF EXISTS {role}")),
                Db::Mysql => admin(self.db, &format!("DROP USER IF EXISTS '{role}'@'%'")),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The conformance suite, once per database.

struct SqlFactory(Scratch);

#[async_trait]
impl StoreFactory for SqlFactory {
    /// A new store, with its own pool, on the factory's table: another process.
    async fn store(&self) -> Result<Arc<dyn LeaseStore>> {
        Ok(self.0.store())
    }
    fn foreign_writer(&self) -> Option<&dyn ForeignWriter> {
        Some(self)
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .with_handoff(true)
            .with_shows_handoff(true)
            .with_presence(true)
    }
}

#[async_trait]
impl ForeignWriter for SqlFactory {
    /// A row with a holder but no expiry, as a person editing the table by hand might leave.
    async fn plant(&self, key: &str) -> std::result::Result<(), BoxError> {
        // Let Baton create its table first.
        self.0.store().read("setup").await?;
        let t = &self.0.table;
        match self.0.db {
            Db::Postgres => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO {t} (key, holder, token) VALUES ($1, 'someone-else', 7)"
                )))
                .bind(key)
                .execute(&self.0.pg().await)
                .await?;
            }
            Db::Mysql => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO {t} (`key`, holder, token) VALUES (?, 'someone-else', 7)"
                )))
                .bind(key)
                .execute(&self.0.my().await)
                .await?;
            }
        }
        Ok(())
    }

    async fn check_untouched(&self, key: &str) -> std::result::Result<(), String> {
        let t = &self.0.table;
        let row: (Option<String>, i64, bool) = match self.0.db {
            Db::Postgres => sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT holder, token, expires_at IS NULL AND acquired_at IS NULL FROM {t} WHERE key = $1"
            )))
            .bind(key)
            .fetch_one(&self.0.pg().await)
            .await
            .map_err(|e| e.to_string())?,
            Db::Mysql => {
                let (h, tok, untouched): (Option<String>, i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT holder, token, CAST(expires_at IS NULL AND acquired_at IS NULL AS SIGNED) FROM {t} WHERE `key` = ?"
                )))
                .bind(key)
                .fetch_one(&self.0.my().await)
                .await
                .map_err(|e| e.to_string())?;
                (h, tok, untouched != 0)
            }
        };
        if row == (Some("someone-else".to_owned()), 7, true) {
            Ok(())
        } else {
            Err(format!("the row is now {row:?}"))
        }
    }
}

mod postgres_conformance {
    baton_testkit::conformance_tests!(super::SqlFactory(super::Scratch::new(super::Db::Postgres)));
}

mod mysql_conformance {
    baton_testkit::conformance_tests!(super::SqlFactory(super::Scratch::new(super::Db::Mysql)));
}

// ---------------------------------------------------------------------------------------------
// Shared helpers.

fn election(store: Arc<dyn LeaseStore>, key: &str, id: &str, lease: Duration) -> LeaderElection {
    LeaderElection::builder(store, key)
        .lease_duration(lease)
        .renew_interval(lease / 4)
        .grace_period(lease / 4)
        .instance_id(id)
        .build()
        .unwrap()
}

async fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    f()
}

fn acquired(a: Acquire) -> baton::Lease {
    match a {
        Acquire::Acquired(l) => l,
        other => panic!("expected to acquire, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Server clock.

/// The lease's end is whatever the server stored, judged by the server's clock: moving
/// `expires_at` on the server frees or keeps the key whatever TTL the client asked for.
async fn expiry_follows_server_clock(db: Db) {
    let s = Scratch::new(db);
    let store = s.store();
    let mut alice = store.join("clock", "alice").await.unwrap();
    let lease = acquired(alice.try_acquire(Duration::from_secs(60)).await.unwrap());
    let t = &s.table;
    let (past, future) = match db {
        Db::Postgres => (
            format!("UPDATE {t} SET expires_at = clock_timestamp() - interval '1 millisecond'"),
            format!("UPDATE {t} SET expires_at = clock_timestamp() + interval '1 hour'"),
        ),
        Db::Mysql => (
            format!("UPDATE {t} SET expires_at = UTC_TIMESTAMP(6) - INTERVAL 1 MICROSECOND"),
            format!("UPDATE {t} SET expires_at = UTC_TIMESTAMP(6) + INTERVAL 1 HOUR"),
        ),
    };
    let run = |sql: String| {
        let s = &s;
        async move {
            match db {
                Db::Postgres => {
                    s.pg()
                        .await
                        .execute(sqlx::AssertSqlSafe(sql))
                        .await
                        .unwrap();
                }
                Db::Mysql => {
                    s.my()
                        .await
                        .execute(sqlx::AssertSqlSafe(sql))
                        .await
                        .unwrap();
                }
            }
        }
    };
    // The server says it ended: free at once, though the client asked for a minute.
    run(past).await;
    assert_eq!(store.read("clock").await.unwrap(), None);
    let mut bob = store.join("clock", "bob").await.unwrap();
    let bobs = acquired(bob.try_acquire(Duration::from_millis(100)).await.unwrap());
    assert!(bobs.token > lease.token);
    // The server says it lasts an hour: held long after the client's 100 ms.
    run(future).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let record = store
        .read("clock")
        .await
        .unwrap()
        .expect("still held by the server's clock");
    assert_eq!(record.holder, "bob");
    assert!(record.ttl > Duration::from_secs(3500), "{record:?}");
    assert!(matches!(
        alice.try_acquire(Duration::from_secs(1)).await.unwrap(),
        Acquire::Held(_)
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_expiry_follows_server_clock() {
    expiry_follows_server_clock(Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mysql_expiry_follows_server_clock() {
    expiry_follows_server_clock(Db::Mysql).await;
}

/// A session in another time zone sees the same leases: times are UTC on the server.
#[tokio::test(flavor = "multi_thread")]
async fn mysql_session_time_zone_does_not_matter() {
    let s = Scratch::new(Db::Mysql);
    let utc = s.store();
    let tokyo = s.store_at(&s.url_with("&timezone=%2B09:00"));
    let mut a = utc.join("tz", "a").await.unwrap();
    let lease = acquired(a.try_acquire(Duration::from_millis(400)).await.unwrap());
    let seen = tokyo.read("tz").await.unwrap().expect("held");
    assert!(
        seen.ttl <= Duration::from_millis(400) && seen.token == lease.token,
        "{seen:?}"
    );
    let mut b = tokyo.join("tz", "b").await.unwrap();
    assert!(matches!(
        b.try_acquire(Duration::from_secs(1)).await.unwrap(),
        Acquire::Held(_)
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    acquired(b.try_acquire(Duration::from_secs(1)).await.unwrap());
}

// ---------------------------------------------------------------------------------------------
// Handoff.

/// A graceful stop hands over at once: the follower leads far sooner than the lease (10 s).
async fn graceful_handoff_is_prompt(db: Db) -> Duration {
    let s = Scratch::new(db);
    let lease = Duration::from_secs(10);
    let a = election(s.store(), "handoff", "a", lease);
    a.start().await.unwrap();
    assert!(wait_until(Duration::from_secs(5), || a.is_leader()).await);
    let b = election(s.store(), "handoff", "b", lease);
    b.start().await.unwrap();
    // Let b settle as a follower, watching.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!b.is_leader());
    let stopped = Instant::now();
    a.stop().await.unwrap();
    assert!(
        wait_until(Duration::from_secs(2), || b.is_leader()).await,
        "the follower did not lead within 2 s of a graceful stop (lease 10 s)"
    );
    let took = stopped.elapsed();
    println!("{db:?}: graceful handoff took {took:?}");
    b.stop().await.unwrap();
    took
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_notify_wakes_the_follower() {
    graceful_handoff_is_prompt(Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mysql_term_lock_wakes_the_follower() {
    graceful_handoff_is_prompt(Db::Mysql).await;
}

/// The NOTIFY itself: a watcher on another store gets `Released` for its key only.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_notify_names_the_key_and_the_change() {
    use futures_util::StreamExt;
    let s = Scratch::new(Db::Postgres);
    let (leader, watcher) = (s.store(), s.store());
    let mut changes = watcher
        .watch("k1")
        .await
        .unwrap()
        .expect("postgres can watch");
    let mut other = leader.join("k2", "x").await.unwrap();
    let l2 = acquired(other.try_acquire(Duration::from_secs(5)).await.unwrap());
    other.release(&l2).await.unwrap();
    let mut c = leader.join("k1", "alice").await.unwrap();
    let l1 = acquired(c.try_acquire(Duration::from_secs(5)).await.unwrap());
    let next = tokio::time::timeout(Duration::from_secs(2), changes.next())
        .await
        .unwrap();
    assert_eq!(
        next,
        Some(baton::Change::Acquired {
            holder: "alice".to_owned()
        })
    );
    // A renewal is pushed too, so idle followers wait out the fresh lease without asking.
    assert_eq!(
        c.renew(&l1, Duration::from_secs(5)).await.unwrap(),
        baton::Renew::Renewed
    );
    let next = tokio::time::timeout(Duration::from_secs(2), changes.next())
        .await
        .unwrap();
    assert_eq!(
        next,
        Some(baton::Change::Renewed {
            holder: "alice".to_owned()
        })
    );
    c.release(&l1).await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(2), changes.next())
        .await
        .unwrap();
    assert_eq!(next, Some(baton::Change::Released));
}

/// Which of the election's statements on `table` are prepared on `conn`: acquire, renew,
/// release, select.
async fn prepared(conn: &mut sqlx::PgConnection, table: &str) -> [bool; 4] {
    let statements: Vec<String> =
        sqlx::query_scalar("SELECT statement FROM pg_prepared_statements WHERE statement LIKE $1")
            .bind(format!("%{table}%"))
            .fetch_all(conn)
            .await
            .unwrap();
    let has = |what: &str| statements.iter().any(|s| s.contains(what));
    [
        has("INSERT INTO"),
        has("FROM renewed"),
        has("FROM freed"),
        has("* 1000000)::bigint"),
    ]
}

/// D39: once the table is known, every connection the pool opens or hands out has the
/// election's statements prepared, so the acquire after a release runs at once, without a
/// Parse and a Describe first, on whichever connection the pool gives it.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_pool_connections_have_the_election_statements_prepared() {
    let s = Scratch::new(Db::Postgres);
    let store = PostgresStore::open(&s.url()).unwrap();
    // Before the table is known: nothing to prepare (the statements name it).
    {
        let mut conn = store.pool().acquire().await.unwrap();
        assert_eq!(prepared(&mut conn, &s.table).await, [false; 4]);
    }
    // The first read checks the table; from then on the pool prepares.
    assert_eq!(store.read("k").await.unwrap(), None);
    // Two at once: the idle connection from before (prepared as it is handed out) and a new
    // one (prepared as it is opened).
    let mut first = store.pool().acquire().await.unwrap();
    let mut second = store.pool().acquire().await.unwrap();
    assert_eq!(prepared(&mut first, &s.table).await, [true; 4]);
    assert_eq!(prepared(&mut second, &s.table).await, [true; 4]);
    drop((first, second));
    // And the election runs on them.
    let mut c = store.join("k", "alice").await.unwrap();
    let lease = acquired(c.try_acquire(Duration::from_secs(5)).await.unwrap());
    assert_eq!(
        c.renew(&lease, Duration::from_secs(5)).await.unwrap(),
        baton::Renew::Renewed
    );
    c.release(&lease).await.unwrap();
    assert_eq!(store.read("k").await.unwrap(), None);
}

/// D41: a release wakes one candidate of a store, not all of them (no thundering herd); the
/// others learn who won from the winner's notice. Twenty followers on one store instance (as
/// in one process): a handoff costs one acquire attempt, up to three on MySQL, whose poller
/// may report the release again before it sees the winner (without the claim: 20).
async fn a_release_wakes_one_candidate_per_store(db: Db) {
    use baton_testkit::faulty::{FaultyStore, Op};
    let s = Scratch::new(db);
    let faulty = FaultyStore::new(s.store());
    let calls = faulty.control();
    let store: Arc<dyn LeaseStore> = Arc::new(faulty);
    let lease = Duration::from_secs(20);
    let leader = election(Arc::clone(&store), "k", "c0", lease);
    leader.start().await.unwrap();
    assert!(leader.is_leader());
    let followers: Vec<LeaderElection> = (1..=20)
        .map(|i| election(Arc::clone(&store), "k", &format!("c{i}"), lease))
        .collect();
    for r in futures_util::future::join_all(followers.iter().map(|f| f.start())).await {
        r.unwrap();
    }
    assert!(
        wait_until(Duration::from_secs(10), || followers
            .iter()
            .all(|f| f.current_leader_id().as_deref() == Some("c0")))
        .await
    );
    // Each follower tries before subscribing and once subscribed (D128): wait for both (the
    // leader's one attempt and two per follower), so the count below is the handoff's alone.
    assert!(
        wait_until(Duration::from_secs(10), || calls.calls(Op::Acquire)
            > 2 * followers.len() as u64)
        .await
    );
    let before = calls.calls(Op::Acquire);
    leader.stop().await.unwrap();
    let settled = || {
        let leaders: Vec<String> = followers
            .iter()
            .filter(|f| f.is_leader())
            .map(|f| f.candidate_id().to_owned())
            .collect();
        leaders.len() == 1
            && followers
                .iter()
                .all(|f| f.current_leader_id().as_deref() == Some(leaders[0].as_str()))
    };
    assert!(
        wait_until(Duration::from_secs(10), settled).await,
        "no single new leader that every follower knows"
    );
    // Past the claim's fallback (200 ms): a held-back follower that never heard of the winner
    // would have tried by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let attempts = calls.calls(Op::Acquire) - before;
    let most = if db == Db::Mysql { 3 } else { 1 };
    assert!(
        (1..=most).contains(&attempts),
        "{attempts} acquire attempts for one release among 20 followers of one store"
    );
    for f in &followers {
        f.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_a_release_wakes_one_candidate_per_store() {
    a_release_wakes_one_candidate_per_store(Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mysql_a_release_wakes_one_candidate_per_store() {
    a_release_wakes_one_candidate_per_store(Db::Mysql).await;
}

/// Candidates of one MySQL store that start together share one poller of their key (each
/// used to start its own when none was running yet: 100 candidates polled 70 times as often).
#[tokio::test(flavor = "multi_thread")]
async fn mysql_candidates_that_start_together_share_one_poller() {
    let s = Scratch::new(Db::Mysql);
    let store = MysqlStore::open(&s.url()).unwrap();
    let shared: Arc<dyn LeaseStore> = Arc::new(store.clone());
    let lease = Duration::from_secs(20);
    let elections: Vec<LeaderElection> = (0..50)
        .map(|i| election(Arc::clone(&shared), "k", &format!("c{i}"), lease))
        .collect();
    for r in futures_util::future::join_all(elections.iter().map(|e| e.start())).await {
        r.unwrap();
    }
    assert_eq!(elections.iter().filter(|e| e.is_leader()).count(), 1);
    assert_eq!(store.pollers(), 1);
    let observer = shared.watch("k").await.unwrap().expect("mysql can watch");
    assert_eq!(
        store.pollers(),
        1,
        "an observer of the key starts no poller of its own"
    );
    for e in &elections {
        e.stop().await.unwrap();
    }
    drop(observer);
    assert!(
        wait_until(Duration::from_secs(5), || store.pollers() == 0).await,
        "{} pollers left after every watcher went away",
        store.pollers()
    );
}

// ---------------------------------------------------------------------------------------------
// MySQL push: the leader's term lock (D110).

/// The connection id that holds `name`, if any.
async fn lock_holder(pool: &sqlx::MySqlPool, name: &str) -> Option<i64> {
    sqlx::query_scalar("SELECT CAST(IS_USED_LOCK(?) AS SIGNED)")
        .bind(name)
        .fetch_one(pool)
        .await
        .expect("IS_USED_LOCK")
}

/// Start a leader of `key` on its own store and wait until it holds its term's lock.
async fn mysql_leader_holding_its_term_lock(
    s: &Scratch,
    key: &str,
    lease: Duration,
) -> (LeaderElection, String) {
    let store = MysqlStore::open(&s.url()).unwrap();
    let leader = election(Arc::new(store.clone()), key, "a", lease);
    leader.start().await.unwrap();
    assert!(leader.is_leader());
    let token = leader.fencing_token().expect("the leader has a token");
    let name = store.term_lock_name(key, token);
    let admin = s.my().await;
    let start = Instant::now();
    while lock_holder(&admin, &name).await.is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the leader did not take its term lock {name} within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (leader, name)
}

/// A follower in another store (another process) is woken by the leader's release of its
/// term lock, not by polling: its store polls every 10 s, the lease is 30 s, and it leads
/// within 2 s of the stop. While it waits, its store does not read the key at all.
#[tokio::test(flavor = "multi_thread")]
async fn mysql_a_release_wakes_a_follower_in_another_store_without_polling() {
    let s = Scratch::new(Db::Mysql);
    let lease = Duration::from_secs(30);
    let (a, _) = mysql_leader_holding_its_term_lock(&s, "k", lease).await;
    let follower_store = MysqlStore::open(&s.url_with("&poll=10s")).unwrap();
    let b = election(Arc::new(follower_store.clone()), "k", "b", lease);
    b.start().await.unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || b.current_leader_id().as_deref()
            == Some("a"))
        .await
    );
    assert!(!b.is_leader());
    // Idle: blocked on the term lock, no reads.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let reads = follower_store.poller_reads();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        follower_store.poller_reads(),
        reads,
        "a follower waiting on the term lock read the key"
    );
    let stopped = Instant::now();
    a.stop().await.unwrap();
    assert!(
        wait_until(Duration::from_secs(2), || b.is_leader()).await,
        "the follower did not lead within 2 s of the release (poll 10 s, lease 30 s)"
    );
    println!("handoff by the term lock: {:?}", stopped.elapsed());
    b.stop().await.unwrap();
}

/// An observer (`baton watch`) on another store hears of the release as promptly.
#[tokio::test(flavor = "multi_thread")]
async fn mysql_a_release_reaches_an_observer_in_another_store_without_polling() {
    use futures_util::StreamExt;
    let s = Scratch::new(Db::Mysql);
    let (a, _) = mysql_leader_holding_its_term_lock(&s, "k", Duration::from_secs(30)).await;
    let observer_store = s.store_at(&s.url_with("&poll=10s"));
    let mut changes = observer_store
        .watch("k")
        .await
        .unwrap()
        .expect("mysql watches");
    // The observer's store has read the key and waits on the term lock.
    tokio::time::sleep(Duration::from_millis(200)).await;
    a.stop().await.unwrap();
    let heard = tokio::time::timeout(Duration::from_secs(2), changes.next())
        .await
        .expect("no change within 2 s of the release (poll 10 s)");
    assert_eq!(heard, Some(baton::Change::Released));
}

/// A store's leaders hold their term locks on one connection of the store's, not one each: a
/// process leading 10,000 elections must not open 10,000 connections.
#[tokio::test(flavor = "multi_thread")]
async fn mysql_a_stores_leaders_share_one_term_lock_connection() {
    let s = Scratch::new(Db::Mysql);
    let store = MysqlStore::open(&s.url()).unwrap();
    let shared: Arc<dyn LeaseStore> = Arc::new(store.clone());
    let elections: Vec<LeaderElection> = (0..20)
        .map(|i| {
            election(
                Arc::clone(&shared),
                &format!("k{i}"),
                "a",
                Duration::from_secs(20),
            )
        })
        .collect();
    for r in futures_util::future::join_all(elections.iter().map(|e| e.start())).await {
        r.unwrap();
    }
    let admin = s.my().await;
    let mut holders = std::collections::BTreeSet::new();
    for e in &elections {
        let name = store.term_lock_name(e.key(), e.fencing_token().expect("leads"));
        let start = Instant::now();
        let holder = loop {
            if let Some(id) = lock_holder(&admin, &name).await {
                break id;
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "{name} not held within 5 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        holders.insert(holder);
    }
    assert_eq!(
        holders.len(),
        1,
        "term locks held on connections {holders:?}"
    );
    for e in &elections {
        e.stop().await.unwrap();
    }
}

/// The term lock is only a signal: when the leader's lock connection dies (here, killed), the
/// followers wake, find the row still leased, and do not take it while the leader renews;
/// they poll again, so the leader's release still hands over promptly.
#[tokio::test(flavor = "multi_thread")]
async fn mysql_a_killed_term_lock_connection_frees_no_lease() {
    let s = Scratch::new(Db::Mysql);
    let lease = Duration::from_secs(2);
    let (a, name) = mysql_leader_holding_its_term_lock(&s, "k", lease).await;
    let b = election(s.store(), "k", "b", lease);
    b.start().await.unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || b.current_leader_id().as_deref()
            == Some("a"))
        .await
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let admin = s.my().await;
    let holder = lock_holder(&admin, &name).await.expect("the lock is held");
    sqlx::query(sqlx::AssertSqlSafe(format!("KILL {holder}")))
        .execute(&admin)
        .await
        .unwrap();
    // Two leases: the leader renews all along, and the follower never leads.
    let watched = Instant::now();
    while watched.elapsed() < 2 * lease {
        assert!(a.is_leader(), "the leader lost its lease");
        assert!(
            !b.is_leader(),
            "two leaders after the term lock's connection died"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    a.stop().await.unwrap();
    assert!(
        wait_until(Duration::from_secs(1), || b.is_leader()).await,
        "the follower did not lead within 1 s of the release (lease 2 s)"
    );
    b.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Killed connections.

/// Killing every connection of the leader, again and again, costs no leadership: each renewal
/// finds its connection dead and runs again on a new one at once.
async fn killed_connections_keep_leadership(db: Db) {
    let mut s = Scratch::new(db);
    let role = format!("baton_k_{:08x}", fastrand::u32(..));
    let url = match db {
        Db::Postgres => {
            let pool = s.pg().await;
            pool.execute(sqlx::AssertSqlSafe(format!(
                "CREATE ROLE {role} LOGIN SUPERUSER"
            )))
            .await
            .unwrap();
            s.drop_roles.push(role.clone());
            format!("postgres://{role}@127.0.0.1:5432/test?table={}", s.table)
        }
        Db::Mysql => {
            let pool = s.my().await;
            pool.execute(sqlx::AssertSqlSafe(format!("CREATE USER '{role}'@'%'")))
                .await
                .unwrap();
            s.drop_roles.push(role.clone());
            pool.execute(sqlx::AssertSqlSafe(format!(
                "GRANT ALL ON test.* TO '{role}'@'%'"
            )))
            .await
            .unwrap();
            format!("mysql://{role}@127.0.0.1:3306/test?table={}", s.table)
        }
    };
    let lease = Duration::from_secs(2);
    let leader = election(s.store_at(&url), "killed", "leader", lease);
    let mut events = leader.subscribe();
    leader.start().await.unwrap();
    assert!(wait_until(Duration::from_secs(5), || leader.is_leader()).await);
    let follower = election(s.store(), "killed", "follower", lease);
    follower.start().await.unwrap();

    let start = Instant::now();
    let mut kills = 0;
    while start.elapsed() < lease * 3 {
        kills += match db {
            Db::Postgres => {
                let killed: Vec<bool> = sqlx::query_scalar(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
                )
                .bind(&role)
                .fetch_all(&s.pg().await)
                .await
                .unwrap();
                killed.len()
            }
            Db::Mysql => {
                let pool = s.my().await;
                let ids: Vec<u64> = sqlx::query_scalar(
                    "SELECT CAST(id AS UNSIGNED) FROM information_schema.processlist WHERE user = ?",
                )
                .bind(&role)
                .fetch_all(&pool)
                .await
                .unwrap();
                for id in &ids {
                    let _ = pool
                        .execute(sqlx::AssertSqlSafe(format!("KILL {id}")))
                        .await;
                }
                ids.len()
            }
        };
        assert!(
            leader.is_leader(),
            "the leader lost leadership after {kills} killed connections"
        );
        assert!(!follower.is_leader());
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(
        kills >= 5,
        "only {kills} connections were killed; the test did not test"
    );
    let lost: Vec<Event> = std::iter::from_fn(|| events.try_recv())
        .filter(|e| matches!(e, Event::LostLeadership { .. }))
        .collect();
    assert!(lost.is_empty(), "{lost:?}");
    println!("{db:?}: kept leadership through {kills} killed connections");
    leader.stop().await.unwrap();
    assert!(wait_until(Duration::from_secs(2), || follower.is_leader()).await);
    follower.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_killed_connections_keep_leadership() {
    killed_connections_keep_leadership(Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mysql_killed_connections_keep_leadership() {
    killed_connections_keep_leadership(Db::Mysql).await;
}

// ---------------------------------------------------------------------------------------------
// Bad tables, missing rights.

/// A table of the same name with other columns: ForeignData naming them, table untouched.
async fn wrong_table_shape_is_foreign_and_untouched(db: Db) {
    let s = Scratch::new(db);
    let t = &s.table;
    let create = match db {
        Db::Postgres => format!("CREATE TABLE {t} (key text PRIMARY KEY, owner text)"),
        Db::Mysql => format!("CREATE TABLE {t} (`key` VARCHAR(100) PRIMARY KEY, owner TEXT)"),
    };
    let insert = format!("INSERT INTO {t} VALUES ('jobs', 'theirs')");
    let count = format!("SELECT count(*) FROM {t} WHERE owner = 'theirs'");
    match db {
        Db::Postgres => {
            let p = s.pg().await;
            p.execute(sqlx::AssertSqlSafe(create)).await.unwrap();
            p.execute(sqlx::AssertSqlSafe(insert)).await.unwrap();
        }
        Db::Mysql => {
            let p = s.my().await;
            p.execute(sqlx::AssertSqlSafe(create)).await.unwrap();
            p.execute(sqlx::AssertSqlSafe(insert)).await.unwrap();
        }
    }
    let store = s.store();
    for result in [
        store.read("jobs").await.map(|_| ()),
        async {
            store
                .join("jobs", "a")
                .await?
                .try_acquire(Duration::from_secs(5))
                .await
                .map(|_| ())
        }
        .await,
    ] {
        match result {
            Err(Error::ForeignData { key, found }) => {
                assert!(key.contains(t.as_str()), "{key}");
                assert!(found.contains("owner"), "{found}");
                assert!(found.contains("expires_at"), "{found}");
                assert!(!found.contains("hunter2"));
            }
            other => panic!("expected ForeignData, got {other:?}"),
        }
    }
    let (n, columns): (i64, i64) = match db {
        Db::Postgres => (
            sqlx::query_scalar(sqlx::AssertSqlSafe(count)).fetch_one(&s.pg().await).await.unwrap(),
            sqlx::query_scalar("SELECT count(*) FROM information_schema.columns WHERE table_name = $1")
                .bind(t)
                .fetch_one(&s.pg().await)
                .await
                .unwrap(),
        ),
        Db::Mysql => (
            sqlx::query_scalar(sqlx::AssertSqlSafe(count)).fetch_one(&s.my().await).await.unwrap(),
            sqlx::query_scalar(
                "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'test' AND table_name = ?",
            )
            .bind(t)
            .fetch_one(&s.my().await)
            .await
            .unwrap(),
        ),
    };
    assert_eq!(
        (n, columns),
        (1, 2),
        "the foreign table must stay as it was"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_wrong_table_shape_is_foreign_and_untouched() {
    wrong_table_shape_is_foreign_and_untouched(Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mysql_wrong_table_shape_is_foreign_and_untouched() {
    wrong_table_shape_is_foreign_and_untouched(Db::Mysql).await;
}

/// A user that may not create the table gets a configuration error pointing to the SQL file;
/// so does `create=false` on a missing table.
async fn no_right_to_create_points_to_the_sql_file(db: Db) {
    let mut s = Scratch::new(db);
    let role = format!("baton_np_{:08x}", fastrand::u32(..));
    let (url, file) = match db {
        Db::Postgres => {
            s.pg()
                .await
                .execute(sqlx::AssertSqlSafe(format!("CREATE ROLE {role} LOGIN")))
                .await
                .unwrap();
            s.drop_roles.push(role.clone());
            (
                format!("postgres://{role}@127.0.0.1:5432/test?table={}", s.table),
                "postgres.sql",
            )
        }
        Db::Mysql => {
            let p = s.my().await;
            p.execute(sqlx::AssertSqlSafe(format!("CREATE USER '{role}'@'%'")))
                .await
                .unwrap();
            s.drop_roles.push(role.clone());
            p.execute(sqlx::AssertSqlSafe(format!(
                "GRANT SELECT, INSERT, UPDATE ON test.* TO '{role}'@'%'"
            )))
            .await
            .unwrap();
            (
                format!("mysql://{role}@127.0.0.1:3306/test?table={}", s.table),
                "mysql.sql",
            )
        }
    };
    for url in [url, s.url_with("&create=false")] {
        match s.store_at(&url).read("k").await {
            Err(Error::Config(msg)) => assert!(msg.contains(file), "{msg}"),
            other => panic!("{url}: expected a configuration error, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_no_right_to_create_points_to_the_sql_file() {
    no_right_to_create_points_to_the_sql_file(Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mysql_no_right_to_create_points_to_the_sql_file() {
    no_right_to_create_points_to_the_sql_file(Db::Mysql).await;
}

// ---------------------------------------------------------------------------------------------
// Planned handoff (#18): the handoff columns, their migration, foreign values, batches, push.

impl Scratch {
    /// Run `sql` as the superuser.
    async fn exec(&self, sql: String) {
        match self.db {
            Db::Postgres => {
                self.pg()
                    .await
                    .execute(sqlx::AssertSqlSafe(sql.clone()))
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
            }
            Db::Mysql => {
                self.my()
                    .await
                    .execute(sqlx::AssertSqlSafe(sql.clone()))
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
            }
        }
    }

    /// The table's columns, in order.
    async fn columns(&self) -> Vec<String> {
        match self.db {
            Db::Postgres => sqlx::query_scalar(
                "SELECT column_name::text FROM information_schema.columns \
                 WHERE table_name = $1 ORDER BY ordinal_position",
            )
            .bind(&self.table)
            .fetch_all(&self.pg().await)
            .await
            .unwrap(),
            Db::Mysql => sqlx::query_scalar(
                "SELECT CAST(column_name AS CHAR) FROM information_schema.columns \
                 WHERE table_schema = 'test' AND table_name = ? ORDER BY ordinal_position",
            )
            .bind(&self.table)
            .fetch_all(&self.my().await)
            .await
            .unwrap(),
        }
    }

    /// The row at `key` as text, every column, for "untouched" checks (times to the
    /// microsecond).
    async fn row(&self, key: &str) -> String {
        self.row_of(key, "handoff_to, handoff_from, handoff_until, ")
            .await
    }

    /// The row at `key` as text; on MySQL with the columns of Baton's table from before
    /// planned handoffs, and `handoff` (more columns, each followed by a comma).
    async fn row_of(&self, key: &str, handoff: &str) -> String {
        let t = &self.table;
        match self.db {
            Db::Postgres => sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT row_to_json(r)::text FROM {t} r WHERE key = $1"
            )))
            .bind(key)
            .fetch_one(&self.pg().await)
            .await
            .unwrap(),
            Db::Mysql => sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT CAST(CONCAT_WS('|', holder, token, expires_at, acquired_at, renewed_at, \
                 {handoff} 'end') AS CHAR) FROM {t} WHERE `key` = ?"
            )))
            .bind(key)
            .fetch_one(&self.my().await)
            .await
            .unwrap(),
        }
    }

    /// Create the lease table as Baton made it before planned handoffs, with a free row at
    /// `free` (token 5) and a row held by `old` (token 3, for an hour) at `held`.
    async fn create_table_before_handoff(&self) {
        let t = &self.table;
        let (create, rows) = match self.db {
            Db::Postgres => (
                format!(
                    "CREATE TABLE {t} (key text PRIMARY KEY, holder text, token bigint NOT NULL, \
                     expires_at timestamptz, acquired_at timestamptz, renewed_at timestamptz)"
                ),
                format!(
                    "INSERT INTO {t} VALUES ('free', NULL, 5, NULL, now(), now()), \
                     ('held', 'old', 3, clock_timestamp() + interval '1 hour', now(), now())"
                ),
            ),
            Db::Mysql => (
                format!(
                    "CREATE TABLE {t} (\
                     `key` VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL PRIMARY KEY, \
                     holder VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL, \
                     token BIGINT NOT NULL, expires_at DATETIME(6) NULL, \
                     acquired_at DATETIME(6) NULL, renewed_at DATETIME(6) NULL) ENGINE=InnoDB"
                ),
                format!(
                    "INSERT INTO {t} VALUES ('free', NULL, 5, NULL, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6)), \
                     ('held', 'old', 3, UTC_TIMESTAMP(6) + INTERVAL 1 HOUR, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6))"
                ),
            ),
        };
        self.exec(create).await;
        self.exec(rows).await;
    }
}

const HANDOFF_COLUMNS: [&str; 3] = ["handoff_to", "handoff_from", "handoff_until"];

/// A table from before planned handoffs gets the three columns when stores open it, two at
/// once included; its rows are not rewritten, and it then works as a new one, handoffs too.
async fn an_older_table_gets_the_handoff_columns(db: Db) {
    let s = Scratch::new(db);
    s.create_table_before_handoff().await;
    let before = (s.row_of("free", "").await, s.row_of("held", "").await);
    let (a, b) = (s.store(), s.store());
    let (read_a, read_b) = tokio::join!(a.read("held"), b.read("held"));
    for read in [read_a, read_b] {
        let record = read
            .expect("a store opening an older table")
            .expect("the held row is still held");
        assert_eq!((record.holder.as_str(), record.token.0), ("old", 3));
    }
    let columns = s.columns().await;
    assert_eq!(columns.len(), 9, "{columns:?}");
    assert_eq!(&columns[6..], HANDOFF_COLUMNS, "{columns:?}");
    let after = (s.row_of("free", "").await, s.row_of("held", "").await);
    let with_handoff = (s.row("free").await, s.row("held").await);
    match db {
        // row_to_json shows the new columns, NULL.
        Db::Postgres => {
            for (old, new) in [(&before.0, &after.0), (&before.1, &after.1)] {
                assert_eq!(
                    new.as_str(),
                    format!(
                        "{},\"handoff_to\":null,\"handoff_from\":null,\"handoff_until\":null}}",
                        old.trim_end_matches('}')
                    ),
                    "the old row must be intact"
                );
            }
        }
        // CONCAT_WS skips NULLs.
        Db::Mysql => {
            assert_eq!(after, before, "the old rows must be intact");
            assert_eq!(with_handoff, before, "the new columns must be NULL");
        }
    }
    let lease = Duration::from_secs(5);
    let mut alice = a.join("free", "alice").await.unwrap();
    let mut bob = b.join("held", "bob").await.unwrap();
    match bob.try_acquire(lease).await.unwrap() {
        Acquire::Held(record) => assert_eq!((record.holder.as_str(), record.token.0), ("old", 3)),
        other => panic!("the old holder's lease must stand, got {other:?}"),
    }
    let mine = acquired(alice.try_acquire(lease).await.unwrap());
    assert_eq!(mine.token.0, 6, "the token goes on from the old row's");
    alice.hand_over(&mine, Some("carol"), lease).await.unwrap();
    let mut dave = b.join("free", "dave").await.unwrap();
    match dave.try_acquire(lease).await.unwrap() {
        Acquire::Reserved(mark) => assert_eq!(mark.to.as_deref(), Some("carol")),
        other => panic!("a migrated table must keep the mark, got {other:?}"),
    }
    let mut carol = a.join("free", "carol").await.unwrap();
    assert_eq!(acquired(carol.try_acquire(lease).await.unwrap()).token.0, 7);
    // Opening it again changes nothing.
    assert!(s.store().read("held").await.unwrap().is_some());
    assert_eq!(s.columns().await, columns);
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_an_older_table_gets_the_handoff_columns() {
    an_older_table_gets_the_handoff_columns(Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mysql_an_older_table_gets_the_handoff_columns() {
    an_older_table_gets_the_handoff_columns(Db::Mysql).await;
}

/// A user that may read and write the older table but not alter it gets a configuration error
/// quoting the statement to have run; the table stays as it was.
async fn no_right_to_alter_an_older_table_says_what_to_run(db: Db) {
    let mut s = Scratch::new(db);
    s.create_table_before_handoff().await;
    let role = format!("baton_na_{:08x}", fastrand::u32(..));
    let t = s.table.clone();
    let (url, file) = match db {
        Db::Postgres => {
            s.exec(format!("CREATE ROLE {role} LOGIN")).await;
            s.drop_roles.push(role.clone());
            s.exec(format!("GRANT SELECT, INSERT, UPDATE ON {t} TO {role}"))
                .await;
            (
                format!("postgres://{role}@127.0.0.1:5432/test?table={t}"),
                "postgres.sql",
            )
        }
        Db::Mysql => {
            s.exec(format!("CREATE USER '{role}'@'%'")).await;
            s.drop_roles.push(role.clone());
            s.exec(format!(
                "GRANT SELECT, INSERT, UPDATE ON test.* TO '{role}'@'%'"
            ))
            .await;
            (
                format!("mysql://{role}@127.0.0.1:3306/test?table={t}"),
                "mysql.sql",
            )
        }
    };
    match s.store_at(&url).read("held").await {
        Err(Error::Config(msg)) => {
            assert!(
                msg.contains("ALTER TABLE") && msg.contains("handoff_until"),
                "{msg}"
            );
            assert!(msg.contains(file) && msg.contains(&t), "{msg}");
        }
        other => panic!("expected a configuration error, got {other:?}"),
    }
    assert_eq!(s.columns().await.len(), 6, "the table must stay as it was");
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_no_right_to_alter_an_older_table_says_what_to_run() {
    no_right_to_alter_an_older_table_says_what_to_run(Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mysql_no_right_to_alter_an_older_table_says_what_to_run() {
    no_right_to_alter_an_older_table_says_what_to_run(Db::Mysql).await;
}

/// Handoff columns Baton could not have written are foreign data: every call on the row
/// says so (or, for the holder's release and handoff, does nothing), and none writes to it.
async fn foreign_handoff_columns_are_reported_and_left_alone(db: Db) {
    let s = Scratch::new(db);
    let store = s.store();
    let lease = Duration::from_secs(30);
    let mut alice = store.join("marked-lease", "alice").await.unwrap();
    let held = acquired(alice.try_acquire(lease).await.unwrap());
    let t = &s.table;
    let (later, insert) = match db {
        Db::Postgres => (
            "clock_timestamp() + interval '1 hour'",
            "INSERT INTO {t} (key, holder, token, expires_at, handoff_to, handoff_from, handoff_until)",
        ),
        Db::Mysql => (
            "UTC_TIMESTAMP(6) + INTERVAL 1 HOUR",
            "INSERT INTO {t} (`key`, holder, token, expires_at, handoff_to, handoff_from, handoff_until)",
        ),
    };
    let insert = insert.replace("{t}", t);
    // A mark beside a lease that is held; a request on a free row; a request naming another
    // holder; an end alone; half a mark.
    s.exec(format!(
        "{insert} VALUES ('mark-beside-holder', 'h', 2, {later}, 'x', 'h', {later}), \
         ('request-on-free-row', NULL, 2, NULL, 'x', 'h', NULL), \
         ('request-of-another', 'h', 2, {later}, 'x', 'someone', NULL), \
         ('until-alone', NULL, 2, NULL, NULL, NULL, {later}), \
         ('to-without-from', NULL, 2, NULL, 'x', NULL, {later})"
    ))
    .await;
    // And one on alice's own lease, under her.
    let key_col = if db == Db::Postgres { "key" } else { "`key`" };
    s.exec(format!(
        "UPDATE {t} SET handoff_until = {later} WHERE {key_col} = 'marked-lease'"
    ))
    .await;
    let keys = [
        "mark-beside-holder",
        "request-on-free-row",
        "request-of-another",
        "until-alone",
        "to-without-from",
        "marked-lease",
    ];
    let mut before = Vec::new();
    for key in keys {
        before.push(s.row(key).await);
    }
    let foreign = |what: &str, key: &str, r: Result<String>| match r {
        Err(Error::ForeignData { key: k, found }) => {
            assert_eq!(k, key);
            assert!(found.contains("handoff"), "{what} {key}: {found}");
        }
        other => panic!("{what} {key}: expected ForeignData, got {other:?}"),
    };
    for key in keys {
        foreign("read", key, store.read(key).await.map(|r| format!("{r:?}")));
        let mut x = store.join(key, "x").await.unwrap();
        foreign(
            "try_acquire",
            key,
            x.try_acquire(lease).await.map(|a| format!("{a:?}")),
        );
        foreign(
            "request_handoff",
            key,
            store
                .request_handoff(key, Some("y"))
                .await
                .map(|r| format!("{r:?}")),
        );
    }
    foreign(
        "renew",
        "marked-lease",
        alice.renew(&held, lease).await.map(|r| format!("{r:?}")),
    );
    alice.hand_over(&held, Some("x"), lease).await.unwrap();
    alice.release(&held).await.unwrap();
    for (key, old) in keys.iter().zip(&before) {
        assert_eq!(
            &s.row(key).await,
            old,
            "{key}: the row must be left as it was"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_foreign_handoff_columns_are_reported_and_left_alone() {
    foreign_handoff_columns_are_reported_and_left_alone(Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mysql_foreign_handoff_columns_are_reported_and_left_alone() {
    foreign_handoff_columns_are_reported_and_left_alone(Db::Mysql).await;
}

/// Renewals that go as one batch (D126) each answer with the request made of their own lease;
/// a release clears a request, so the next holder's renewal answers plainly.
async fn batched_renewals_answer_each_lease_with_its_own_request(db: Db) {
    let s = Scratch::new(db);
    let store = s.store();
    let ttl = Duration::from_secs(10);
    let mut candidacies = Vec::new();
    let mut leases = Vec::new();
    for i in 0..5 {
        let mut c = store
            .join(&format!("k{i}"), &format!("c{i}"))
            .await
            .unwrap();
        leases.push(acquired(c.try_acquire(ttl).await.unwrap()));
        candidacies.push(c);
    }
    let asker = s.store();
    let asked = asker.request_handoff("k1", Some("z")).await.unwrap();
    assert_eq!(asked.map(|r| r.holder), Some("c1".to_owned()));
    asker.request_handoff("k3", None).await.unwrap();
    // Asking the holder for itself writes nothing.
    asker.request_handoff("k4", Some("c4")).await.unwrap();
    use baton::Renew::{HandoffRequested, Lost, Renewed};
    let expected = [
        Renewed,
        HandoffRequested {
            to: Some("z".into()),
        },
        Renewed,
        HandoffRequested { to: None },
        Renewed,
    ];
    let renewals = candidacies
        .iter_mut()
        .zip(&leases)
        .map(|(c, l)| c.renew(l, ttl));
    let answers: Vec<baton::Renew> = futures_util::future::join_all(renewals)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(answers, expected);
    // Again, with a lease that no longer holds its key in the batch (MySQL then renews each
    // lease of it on its own): the requests stay until the holder acts on them.
    let mut stale = store.join("k2", "c2").await.unwrap();
    let stale_lease = baton::Lease::new("k2", "c2", baton::FencingToken(leases[2].token.0 + 9));
    let renewals = candidacies
        .iter_mut()
        .zip(&leases)
        .map(|(c, l)| c.renew(l, ttl))
        .chain([stale.renew(&stale_lease, ttl)]);
    let mut answers: Vec<baton::Renew> = futures_util::future::join_all(renewals)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    match answers.pop() {
        Some(Lost(Some(record))) => assert_eq!(record.token, leases[2].token),
        other => panic!("a stale lease must be lost to the holder's, got {other:?}"),
    }
    assert_eq!(answers, expected);
    // A release clears a request.
    candidacies[1].release(&leases[1]).await.unwrap();
    let mut z = store.join("k1", "z").await.unwrap();
    let zs = acquired(z.try_acquire(ttl).await.unwrap());
    assert_eq!(z.renew(&zs, ttl).await.unwrap(), Renewed);
    // Nobody holds a released key: nothing to ask, nothing written.
    z.release(&zs).await.unwrap();
    let row = s.row("k1").await;
    assert!(
        asker
            .request_handoff("k1", Some("q"))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(s.row("k1").await, row);
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_batched_renewals_answer_each_lease_with_its_own_request() {
    batched_renewals_answer_each_lease_with_its_own_request(Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mysql_batched_renewals_answer_each_lease_with_its_own_request() {
    batched_renewals_answer_each_lease_with_its_own_request(Db::Mysql).await;
}

/// The next change from `changes` that is not a lease's acquisition or renewal, within 5 s.
async fn next_handoff_change(changes: &mut baton::Changes) -> baton::Change {
    use futures_util::StreamExt;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, changes.next()).await {
            Ok(Some(baton::Change::Acquired { .. } | baton::Change::Renewed { .. })) => {}
            Ok(Some(change)) => return change,
            Ok(None) => panic!("the change stream ended"),
            Err(_) => panic!("no handoff change within 5 s"),
        }
    }
}

/// A request and a handoff reach a watcher of another store: PostgreSQL's NOTIFY carries both;
/// on MySQL the store that wrote the request tells its own watchers, and the handoff reaches
/// the other store's poller through the leader's term lock.
async fn a_request_and_a_handoff_reach_a_watcher(db: Db) {
    let s = Scratch::new(db);
    let (leader, other) = (s.store(), s.store());
    let ttl = Duration::from_secs(30);
    let mut alice = leader.join("k", "alice").await.unwrap();
    let lease = acquired(alice.try_acquire(ttl).await.unwrap());
    let mut changes = other
        .watch("k")
        .await
        .unwrap()
        .expect("the SQL stores watch");
    other.request_handoff("k", Some("bob")).await.unwrap();
    assert_eq!(
        next_handoff_change(&mut changes).await,
        baton::Change::HandoffRequested {
            to: Some("bob".into())
        }
    );
    alice.hand_over(&lease, Some("bob"), ttl).await.unwrap();
    assert_eq!(
        next_handoff_change(&mut changes).await,
        baton::Change::HandedOver {
            to: Some("bob".into())
        }
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_a_request_and_a_handoff_reach_a_watcher() {
    a_request_and_a_handoff_reach_a_watcher(Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mysql_a_request_and_a_handoff_reach_a_watcher() {
    a_request_and_a_handoff_reach_a_watcher(Db::Mysql).await;
}

// ---------------------------------------------------------------------------------------------
// Errors the server gives.

/// The error chain of `e`, as an application printing every source would show it.
fn chain(e: &Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(" | ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// `start()` on `url` fails at once with a configuration error that names the user and
/// password in the URL as the fix and never shows `password`; it used to report the store
/// unavailable and retry forever.
async fn rejected_credentials_fail_start(url: &str, password: &str) {
    let store = baton::connect::store_from_url(url).unwrap();
    let e = election(store, "k", "c1", Duration::from_secs(5));
    let started = tokio::time::timeout(Duration::from_secs(30), e.start())
        .await
        .expect("start() answers instead of retrying");
    match started {
        Err(err @ Error::Config(_)) => {
            let text = chain(&err);
            assert!(
                text.contains("rejected the credentials: check the user and password in the URL"),
                "{text}"
            );
            assert!(!text.contains(password), "the password shows: {text}");
            assert!(!format!("{err:?}").contains(password), "{err:?}");
        }
        other => panic!("{url}: expected a configuration error, got {other:?}"),
    }
    assert!(!e.is_leader());
}

/// PostgreSQL: a role that does not exist (SQLSTATE 28000). The machine's server trusts every
/// connection from 127.0.0.1 (pg_hba.conf `trust`), so it never checks a password and a wrong
/// one (28P01) cannot be provoked here; both map alike (see `baton::store::sql`).
#[tokio::test(flavor = "multi_thread")]
async fn postgres_an_unknown_role_fails_start_as_a_configuration_error() {
    let s = Scratch::new(Db::Postgres);
    let role = format!("baton_nobody_{:08x}", fastrand::u32(..));
    let url = format!(
        "postgres://{role}:hunter2@127.0.0.1:5432/test?table={}",
        s.table
    );
    rejected_credentials_fail_start(&url, "hunter2").await;
}

/// MariaDB: a user with a password, reached with a wrong one, and a user that does not exist
/// (error 1045 both).
#[tokio::test(flavor = "multi_thread")]
async fn mysql_a_wrong_password_or_user_fails_start_as_a_configuration_error() {
    let mut s = Scratch::new(Db::Mysql);
    let user = format!("baton_pw_{:08x}", fastrand::u32(..));
    s.my()
        .await
        .execute(sqlx::AssertSqlSafe(format!(
            "CREATE USER '{user}'@'%' IDENTIFIED BY 'right-one'"
        )))
        .await
        .unwrap();
    s.drop_roles.push(user.clone());
    let wrong = format!(
        "mysql://{user}:hunter2@127.0.0.1:3306/test?table={}",
        s.table
    );
    rejected_credentials_fail_start(&wrong, "hunter2").await;
    let nobody = format!(
        "mysql://baton_nobody_{:08x}:hunter2@127.0.0.1:3306/test?table={}",
        fastrand::u32(..),
        s.table
    );
    rejected_credentials_fail_start(&nobody, "hunter2").await;
}

/// A database that does not exist is a configuration error too, naming the URL's path.
#[tokio::test(flavor = "multi_thread")]
async fn a_database_that_does_not_exist_fails_start_as_a_configuration_error() {
    for (db, url) in [
        (
            Db::Postgres,
            "postgres://postgres@127.0.0.1:5432/baton_no_such_db",
        ),
        (Db::Mysql, "mysql://root@127.0.0.1:3306/baton_no_such_db"),
    ] {
        let _s = Scratch::new(db);
        let e = election(
            baton::connect::store_from_url(url).unwrap(),
            "k",
            "c1",
            Duration::from_secs(5),
        );
        match e.start().await {
            Err(Error::Config(msg)) => {
                assert!(
                    msg.contains("check the database name in the URL's path"),
                    "{msg}"
                )
            }
            other => panic!("{url}: expected a configuration error, got {other:?}"),
        }
    }
}

/// PostgreSQL's errors keep the server's message and SQLSTATE but not the position in the
/// server's own source that sqlx appends ("... at line 768"), anywhere in the error's chain.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_errors_keep_the_sqlstate_and_drop_the_source_position() {
    let mut s = Scratch::new(Db::Postgres);
    // A table the superuser made, and a role that may log in but not read it: 42501.
    s.store().read("k").await.unwrap();
    let role = format!("baton_noread_{:08x}", fastrand::u32(..));
    s.pg()
        .await
        .execute(sqlx::AssertSqlSafe(format!("CREATE ROLE {role} LOGIN")))
        .await
        .unwrap();
    s.drop_roles.push(role.clone());
    let url = format!("postgres://{role}@127.0.0.1:5432/test?table={}", s.table);
    let err = s.store_at(&url).read("k").await.unwrap_err();
    let text = chain(&err);
    assert!(text.contains("permission denied"), "{text}");
    assert!(text.contains("SQLSTATE 42501"), "{text}");
    assert!(!text.contains(" at line "), "{text}");
    // The same for an error that is a configuration error.
    let url = format!(
        "postgres://baton_nobody:pw@127.0.0.1:5432/test?table={}",
        s.table
    );
    let err = s.store_at(&url).read("k").await.unwrap_err();
    let text = chain(&err);
    assert!(text.contains("SQLSTATE 28000"), "{text}");
    assert!(!text.contains(" at line "), "{text}");
}

// ---------------------------------------------------------------------------------------------
// Many connections.

/// Rounds of candidates, each on its own store (pool), racing for one key: one winner a round,
/// tokens increasing from round to round.
async fn concurrent_acquirers_from_many_connections(db: Db) {
    let s = Scratch::new(db);
    let stores: Vec<Arc<dyn LeaseStore>> = (0..12).map(|_| s.store()).collect();
    let mut last = 0;
    for round in 0..8 {
        let mut tasks = Vec::new();
        for (i, store) in stores.iter().enumerate() {
            let store = Arc::clone(store);
            tasks.push(tokio::spawn(async move {
                let mut c = store.join("race", &format!("c{i}")).await.unwrap();
                let outcome = c.try_acquire(Duration::from_secs(30)).await.unwrap();
                (c, outcome)
            }));
        }
        let mut winners = Vec::new();
        for t in tasks {
            let (c, outcome) = t.await.unwrap();
            if let Acquire::Acquired(lease) = outcome {
                winners.push((c, lease));
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: {} winners", winners.len());
        let (mut c, lease) = winners.pop().unwrap();
        assert!(
            lease.token.get() > last,
            "round {round}: token {} after {last}",
            lease.token
        );
        last = lease.token.get();
        c.release(&lease).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_concurrent_acquirers_from_many_connections() {
    concurrent_acquirers_from_many_connections(Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mysql_concurrent_acquirers_from_many_connections() {
    concurrent_acquirers_from_many_connections(Db::Mysql).await;
}

/// Passwords stay out of errors and `info()`.
#[tokio::test(flavor = "multi_thread")]
async fn passwords_are_redacted() {
    for url in [
        "postgres://postgres:hunter2@127.0.0.1:1/test",
        "mysql://root:hunter2@127.0.0.1:1/test",
    ] {
        let store = baton::connect::store_from_url(url).unwrap();
        assert!(!store.info().location.contains("hunter2"));
        let e = store.read("k").await.unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert!(!format!("{e:?}").contains("hunter2"), "{e:?}");
    }
    let _ = (
        PostgresStore::open(PG_BASE).unwrap(),
        MysqlStore::open(MY_BASE).unwrap(),
    );
}

// ---------------------------------------------------------------------------------------------
// TLS.
//
// PostgreSQL: the machine's server, which has `ssl = on` with Debian's self-signed snakeoil
// certificate (a fresh Debian install's default). MariaDB: the machine's has TLS off and must
// not be reconfigured, so these tests run against a throwaway `mariadbd` of their own with
// TLS on and a certificate signed by a CA made for it (`shared_mariadb_tls`).

/// Debian's self-signed certificate, which the machine's PostgreSQL serves.
const SNAKEOIL: &str = "/etc/ssl/certs/ssl-cert-snakeoil.pem";

/// Fail loudly unless the machine's PostgreSQL speaks TLS.
async fn require_pg_tls(s: &Scratch) {
    let ssl: String = sqlx::query_scalar("SHOW ssl")
        .fetch_one(&s.pg().await)
        .await
        .unwrap();
    assert_eq!(
        ssl, "on",
        "the machine's PostgreSQL has ssl = {ssl}; the TLS tests need ssl = on, as Debian \
         configures it (ssl_cert_file = '{SNAKEOIL}', ssl_key_file = \
         '/etc/ssl/private/ssl-cert-snakeoil.key' in postgresql.conf, then reload)"
    );
    assert!(
        std::path::Path::new(SNAKEOIL).exists(),
        "{SNAKEOIL} is missing: install the Debian package ssl-cert (make-ssl-cert generate-default-snakeoil)"
    );
}

/// `(ssl, version)` of every backend whose `application_name` is `app`, seen from another
/// connection through `pg_stat_ssl`.
async fn pg_tls_of(s: &Scratch, app: &str) -> Vec<(bool, Option<String>)> {
    sqlx::query_as(
        "SELECT s.ssl, s.version FROM pg_stat_ssl s JOIN pg_stat_activity a ON a.pid = s.pid \
         WHERE a.application_name = $1",
    )
    .bind(app)
    .fetch_all(&s.pg().await)
    .await
    .unwrap()
}

/// Assert that the store's connections (named `app`) exist and are all TLS.
async fn assert_pg_tls(s: &Scratch, app: &str) {
    let seen = pg_tls_of(s, app).await;
    assert!(
        !seen.is_empty(),
        "no connection named {app} in pg_stat_activity"
    );
    assert!(
        seen.iter().all(|(ssl, version)| *ssl && version.is_some()),
        "connections of {app} without TLS: {seen:?}"
    );
}

fn app_name(prefix: &str) -> String {
    format!("{prefix}_{:08x}", fastrand::u32(..))
}

/// `sslmode=require`: an election runs, hands over, and every connection of it (the pool's
/// and the `LISTEN` connection) is TLS, as the server sees it. The same check on an
/// `sslmode=disable` store sees plain connections, so the check can tell.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_tls_require_runs_an_election_over_tls() {
    let s = Scratch::new(Db::Postgres);
    require_pg_tls(&s).await;
    let app = app_name("baton_tls");
    let url = s.url_with(&format!("&sslmode=require&application_name={app}"));
    let lease = Duration::from_secs(2);
    let a = election(s.store_at(&url), "tls", "a", lease);
    a.start().await.unwrap();
    assert!(wait_until(Duration::from_secs(5), || a.is_leader()).await);
    let b = election(s.store_at(&url), "tls", "b", lease);
    b.start().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_pg_tls(&s, &app).await;
    a.stop().await.unwrap();
    assert!(
        wait_until(Duration::from_secs(2), || b.is_leader()).await,
        "the follower did not take over within 2 s of a graceful stop"
    );
    assert_pg_tls(&s, &app).await;
    b.stop().await.unwrap();

    let plain = app_name("baton_plain");
    let store = s.store_at(&s.url_with(&format!("&sslmode=disable&application_name={plain}")));
    store.read("tls").await.unwrap();
    let seen = pg_tls_of(&s, &plain).await;
    assert!(
        !seen.is_empty() && seen.iter().all(|(ssl, _)| !ssl),
        "sslmode=disable: {seen:?}"
    );
}

/// `sslmode=verify-ca` with the server's own (self-signed) certificate as the root: the chain
/// is checked, the name is not.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_tls_verify_ca_with_the_servers_certificate() {
    let s = Scratch::new(Db::Postgres);
    require_pg_tls(&s).await;
    let app = app_name("baton_tls_ca");
    let store = s.store_at(&s.url_with(&format!(
        "&sslmode=verify-ca&sslrootcert={SNAKEOIL}&application_name={app}"
    )));
    let mut c = store.join("tls", "a").await.unwrap();
    let lease = acquired(c.try_acquire(Duration::from_secs(5)).await.unwrap());
    assert_eq!(store.read("tls").await.unwrap().unwrap().holder, "a");
    assert_pg_tls(&s, &app).await;
    c.release(&lease).await.unwrap();
}

/// What a failed TLS connection must say: which server, that the certificate is the problem,
/// how to fix it; never the password.
fn assert_clear_tls_error(e: &Error, server: &str, says: &[&str]) {
    let text = e.to_string();
    assert!(
        matches!(e, Error::Config(_) | Error::Unavailable { .. }),
        "{e:?}"
    );
    assert!(text.contains(server), "names the server: {text}");
    for s in says {
        assert!(text.contains(s), "says {s:?}: {text}");
    }
    assert!(!text.contains("hunter2"), "{text}");
    assert!(!format!("{e:?}").contains("hunter2"), "{e:?}");
}

/// `sslmode=verify-full` checks the name too: the snakeoil certificate does not name
/// 127.0.0.1, so connecting fails, saying so and what to do.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_tls_verify_full_rejects_a_name_the_certificate_lacks() {
    let s = Scratch::new(Db::Postgres);
    require_pg_tls(&s).await;
    // Trust authentication ignores the password; it is there to check it is never printed.
    let url = format!(
        "postgres://postgres:hunter2@127.0.0.1:5432/test?table={}&sslmode=verify-full&sslrootcert={SNAKEOIL}",
        s.table
    );
    let store = s.store_at(&url);
    let e = store.read("tls").await.unwrap_err();
    println!("{e}");
    assert_clear_tls_error(&e, "127.0.0.1:5432", &["127.0.0.1", "sslmode=verify-ca"]);
    let e = election(store, "tls", "a", Duration::from_secs(2))
        .start()
        .await
        .unwrap_err();
    assert_clear_tls_error(&e, "127.0.0.1:5432", &["127.0.0.1"]);
}

/// `sslmode=verify-ca` with a CA that did not sign the server's certificate fails, saying so.
///
/// sqlx trusts `sslrootcert` *in addition to* the system's trust store (libpq trusts it
/// instead), and Debian's trust directory `/etc/ssl/certs` holds the snakeoil certificate
/// itself, so on such a machine any `sslrootcert` passes. The check therefore runs in a child
/// process of this test whose system trust store is the stranger CA alone (`SSL_CERT_FILE`,
/// which rustls-native-certs reads instead of the system's), as on a machine that does not
/// trust the server's certificate.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_tls_verify_ca_rejects_a_certificate_from_another_ca() {
    const TEST: &str = "postgres_tls_verify_ca_rejects_a_certificate_from_another_ca";
    let s = Scratch::new(Db::Postgres);
    require_pg_tls(&s).await;
    if let Some(stranger) = std::env::var_os("BATON_TEST_STRANGER_CA") {
        let url = format!(
            "postgres://postgres:hunter2@127.0.0.1:5432/test?table={}&sslmode=verify-ca&sslrootcert={}",
            s.table,
            std::path::Path::new(&stranger).display()
        );
        let e = s.store_at(&url).read("tls").await.unwrap_err();
        println!("{e}");
        assert_clear_tls_error(
            &e,
            "127.0.0.1:5432",
            &["not signed by a CA", "sslrootcert="],
        );
        return;
    }
    let dir = baton_testkit::servers::scratch_dir("baton-pg-tls");
    let stranger = TestCa::new("Baton stranger CA").write(&dir, "stranger.pem");
    let out = Command::new(std::env::current_exe().unwrap())
        .args([TEST, "--exact", "--nocapture", "--test-threads=1"])
        .env("BATON_TEST_STRANGER_CA", &stranger)
        .env("SSL_CERT_FILE", &stranger)
        .env_remove("SSL_CERT_DIR")
        .output()
        .expect("run this test again in a child process");
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "the child process failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A user of its own on the throwaway TLS MariaDB, so the test can find its store's
/// connections; returns the user's name.
async fn my_tls_user(server: &MariaDbServer) -> String {
    let user = app_name("baton_tls");
    let admin = sqlx::MySqlPool::connect(&format!(
        "{}?ssl-mode=verify_ca&ssl-ca={}",
        server.url(),
        server.ca().display()
    ))
    .await
    .expect("connect to the throwaway MariaDB as root");
    admin
        .execute(sqlx::AssertSqlSafe(format!("CREATE USER '{user}'@'%'")))
        .await
        .unwrap();
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            "GRANT ALL ON test.* TO '{user}'@'%'"
        )))
        .await
        .unwrap();
    user
}

/// `CONNECTION_TYPE` (`SSL/TLS`, `TCP/IP`) of every connection of `user`, seen from another
/// connection through `performance_schema.threads`.
async fn my_connection_types(server: &MariaDbServer, user: &str) -> Vec<String> {
    let admin = sqlx::MySqlPool::connect(&format!(
        "{}?ssl-mode=verify_ca&ssl-ca={}",
        server.url(),
        server.ca().display()
    ))
    .await
    .unwrap();
    sqlx::query_scalar(
        "SELECT CAST(CONNECTION_TYPE AS CHAR) FROM performance_schema.threads \
         WHERE PROCESSLIST_USER = ?",
    )
    .bind(user)
    .fetch_all(&admin)
    .await
    .unwrap()
}

async fn assert_my_tls(server: &MariaDbServer, user: &str) {
    let seen = my_connection_types(server, user).await;
    assert!(
        !seen.is_empty() && seen.iter().all(|t| t == "SSL/TLS"),
        "connections of {user}: {seen:?}"
    );
}

/// `ssl-mode=required`: an election runs and hands over, and every connection of it is TLS as
/// the server sees it; an `ssl-mode=disabled` store's connections are not, so the check can
/// tell.
#[tokio::test(flavor = "multi_thread")]
async fn mysql_tls_required_runs_an_election_over_tls() {
    let server = shared_mariadb_tls();
    let user = my_tls_user(server).await;
    let url = format!(
        "mysql://{user}@127.0.0.1:{}/test?table={}&ssl-mode=required",
        server.port(),
        table_name()
    );
    let store = || baton::connect::store_from_url(&url).unwrap();
    let lease = Duration::from_secs(2);
    let a = election(store(), "tls", "a", lease);
    a.start().await.unwrap();
    assert!(wait_until(Duration::from_secs(5), || a.is_leader()).await);
    let b = election(store(), "tls", "b", lease);
    b.start().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_my_tls(server, &user).await;
    a.stop().await.unwrap();
    assert!(
        wait_until(Duration::from_secs(2), || b.is_leader()).await,
        "the follower did not take over within 2 s of a graceful stop"
    );
    assert_my_tls(server, &user).await;
    b.stop().await.unwrap();

    let plain = my_tls_user(server).await;
    let store = baton::connect::store_from_url(&format!(
        "mysql://{plain}@127.0.0.1:{}/test?table={}&ssl-mode=disabled",
        server.port(),
        table_name()
    ))
    .unwrap();
    store.read("tls").await.unwrap();
    let seen = my_connection_types(server, &plain).await;
    assert!(
        !seen.is_empty() && seen.iter().all(|t| t == "TCP/IP"),
        "ssl-mode=disabled: {seen:?}"
    );
}

/// `ssl-mode=verify_ca` with the CA that signed the server's certificate works, and so does
/// `verify_identity`, since the certificate names 127.0.0.1.
#[tokio::test(flavor = "multi_thread")]
async fn mysql_tls_verify_ca_with_the_servers_ca() {
    let server = shared_mariadb_tls();
    for mode in ["verify_ca", "verify_identity"] {
        let user = my_tls_user(server).await;
        let store = baton::connect::store_from_url(&format!(
            "mysql://{user}@127.0.0.1:{}/test?table={}&ssl-mode={mode}&ssl-ca={}",
            server.port(),
            table_name(),
            server.ca().display()
        ))
        .unwrap();
        let mut c = store.join("tls", "a").await.unwrap();
        let lease = acquired(c.try_acquire(Duration::from_secs(5)).await.unwrap());
        assert_eq!(store.read("tls").await.unwrap().unwrap().holder, "a");
        assert_my_tls(server, &user).await;
        c.release(&lease).await.unwrap();
    }
}

/// `ssl-mode=verify_ca` with a CA that did not sign the server's certificate fails, saying so;
/// so does the system's trust store (no `ssl-ca`), which does not know the test's CA either.
#[tokio::test(flavor = "multi_thread")]
async fn mysql_tls_verify_ca_rejects_a_certificate_from_another_ca() {
    let server = shared_mariadb_tls();
    let dir = baton_testkit::servers::scratch_dir("baton-my-tls");
    let stranger = TestCa::new("Baton stranger CA").write(&dir, "stranger.pem");
    let at = format!("127.0.0.1:{}", server.port());
    for tls in [
        format!("ssl-mode=verify_ca&ssl-ca={}", stranger.display()),
        "ssl-mode=verify_ca".to_owned(),
    ] {
        let url = format!(
            "mysql://root:hunter2@{at}/test?table={}&{tls}",
            table_name()
        );
        let store = baton::connect::store_from_url(&url).unwrap();
        let e = store.read("tls").await.unwrap_err();
        println!("{e}");
        assert_clear_tls_error(&e, &at, &["ssl-ca"]);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------
// Stores on the application's own pool (`from_pool`).

/// Stores built with `from_pool` on a pool of the test's own, as an application that already
/// holds one would.
struct AppPoolFactory(SqlFactory);

impl AppPoolFactory {
    fn new(db: Db) -> AppPoolFactory {
        AppPoolFactory(SqlFactory(Scratch::new(db)))
    }

    /// A store on a new application pool (another process, as far as the server can tell).
    fn app_store(&self) -> Arc<dyn LeaseStore> {
        let s = &self.0.0;
        match s.db {
            Db::Postgres => {
                let pool = sqlx::PgPool::connect_lazy(PG_BASE).expect("a PostgreSQL pool");
                Arc::new(PostgresStore::from_pool(pool, &s.table).expect("from_pool"))
            }
            Db::Mysql => {
                let pool = sqlx::MySqlPool::connect_lazy(MY_BASE).expect("a MariaDB pool");
                Arc::new(MysqlStore::from_pool(pool, &s.table).expect("from_pool"))
            }
        }
    }
}

#[async_trait]
impl StoreFactory for AppPoolFactory {
    async fn store(&self) -> Result<Arc<dyn LeaseStore>> {
        Ok(self.app_store())
    }
    fn foreign_writer(&self) -> Option<&dyn ForeignWriter> {
        self.0.foreign_writer()
    }
    fn capabilities(&self) -> Capabilities {
        self.0.capabilities()
    }
}

mod postgres_app_pool_conformance {
    baton_testkit::conformance_tests!(super::AppPoolFactory::new(super::Db::Postgres));
}

mod mysql_app_pool_conformance {
    baton_testkit::conformance_tests!(super::AppPoolFactory::new(super::Db::Mysql));
}

/// A store on the application's pool uses that pool (no second one), says where it is without
/// a password, hands over by push like a store opened from a URL, and reads the same election
/// as a store opened from the URL with the same table.
async fn app_pool_store_shares_the_pool_and_hands_over_promptly(db: Db) {
    let f = AppPoolFactory::new(db);
    let s = &f.0.0;
    // The application's pool, which it also uses for its own queries.
    let (store, pool_size): (Arc<dyn LeaseStore>, Box<dyn Fn() -> u32>) = match db {
        Db::Postgres => {
            let pool = sqlx::PgPool::connect_lazy(PG_BASE).unwrap();
            let app = pool.clone();
            (
                Arc::new(PostgresStore::from_pool(pool, &s.table).unwrap()),
                Box::new(move || app.size()),
            )
        }
        Db::Mysql => {
            let pool = sqlx::MySqlPool::connect_lazy(MY_BASE).unwrap();
            let app = pool.clone();
            (
                Arc::new(MysqlStore::from_pool(pool, &s.table).unwrap()),
                Box::new(move || app.size()),
            )
        }
    };
    let info = store.info();
    assert!(
        info.location.contains("127.0.0.1") && info.location.contains("application's pool"),
        "{info:?}"
    );
    assert_eq!(pool_size(), 0, "nothing connected yet");
    let lease = Duration::from_secs(10);
    let a = election(store, "app-pool", "a", lease);
    a.start().await.unwrap();
    assert!(wait_until(Duration::from_secs(5), || a.is_leader()).await);
    assert!(
        pool_size() >= 1,
        "the election runs on the application's pool"
    );
    let b = election(f.app_store(), "app-pool", "b", lease);
    b.start().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!b.is_leader());
    // A store opened from the URL with the same table reads the same election.
    let record = s.store().read("app-pool").await.unwrap().expect("held");
    assert_eq!(record.holder, "a");
    a.stop().await.unwrap();
    assert!(
        wait_until(Duration::from_secs(2), || b.is_leader()).await,
        "the follower did not lead within 2 s of a graceful stop (lease 10 s)"
    );
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_app_pool_store_shares_the_pool_and_hands_over_promptly() {
    app_pool_store_shares_the_pool_and_hands_over_promptly(Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mysql_app_pool_store_shares_the_pool_and_hands_over_promptly() {
    app_pool_store_shares_the_pool_and_hands_over_promptly(Db::Mysql).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn from_pool_checks_the_table_name() {
    require_pg();
    let pool = sqlx::PgPool::connect_lazy(PG_BASE).unwrap();
    let err = PostgresStore::from_pool(pool, "Robert'); DROP TABLE x;--").unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
    require_my();
    let pool = sqlx::MySqlPool::connect_lazy(MY_BASE).unwrap();
    assert!(matches!(
        MysqlStore::from_pool(pool, ""),
        Err(Error::Config(_))
    ));
}

// ---------------------------------------------------------------------------------------------
// Presence records (D134): the table beside the lease table, off where it cannot be.

/// The presence table's name as the module documentation gives the rule (computed here on
/// its own, so that a change to the rule, which would split a deployment's processes between
/// two tables, fails a test): `<table>_candidates`, or, past 63 characters, the table's first
/// 43 characters, `_`, 8 hex digits of the 32-bit FNV-1a hash of the name, `_candidates`.
fn presence_table(table: &str) -> String {
    let plain = format!("{table}_candidates");
    if plain.len() <= 63 {
        return plain;
    }
    let hash = table.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    format!("{}_{hash:08x}_candidates", &table[..43])
}

impl Scratch {
    /// Whether table `name` exists in the test database.
    async fn has_table(&self, name: &str) -> bool {
        let n: i64 = match self.db {
            Db::Postgres => sqlx::query_scalar(
                "SELECT count(*) FROM information_schema.tables WHERE table_name = $1",
            )
            .bind(name)
            .fetch_one(&self.pg().await)
            .await
            .unwrap(),
            Db::Mysql => sqlx::query_scalar(
                "SELECT count(*) FROM information_schema.tables \
                 WHERE table_schema = 'test' AND table_name = ?",
            )
            .bind(name)
            .fetch_one(&self.my().await)
            .await
            .unwrap(),
        };
        n == 1
    }

    /// The rows of the presence table as `candidate:priority`, sorted.
    async fn presence_rows(&self) -> Vec<String> {
        let p = presence_table(&self.table);
        match self.db {
            Db::Postgres => sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT candidate || ':' || priority FROM {p} ORDER BY 1"
            )))
            .fetch_all(&self.pg().await)
            .await
            .unwrap(),
            Db::Mysql => sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT CAST(CONCAT(candidate, ':', priority) AS CHAR) FROM {p} ORDER BY 1"
            )))
            .fetch_all(&self.my().await)
            .await
            .unwrap(),
        }
    }
}

/// Names and priorities of `live`, which a store with presence must answer.
fn names(live: Option<Vec<baton::Presence>>) -> Vec<(String, u32)> {
    let mut names: Vec<(String, u32)> = live
        .expect("the store keeps presence records here")
        .into_iter()
        .map(|p| (p.candidate, p.priority))
        .collect();
    names.sort();
    names
}

/// `create=false` without a presence table: presence is off (`None`, never an error) and the
/// election works as before; once the table exists (another store created it), a new store
/// with `create=false` keeps records in it.
async fn presence_is_off_without_its_table_under_create_false(db: Db) {
    let s = Scratch::new(db);
    // The lease table, made by a store that creates nothing else until a presence call.
    s.store().read("setup").await.unwrap();
    let presence = presence_table(&s.table);
    assert!(!s.has_table(&presence).await);
    let store = s.store_at(&s.url_with("&create=false"));
    assert_eq!(store.candidates("jobs").await.unwrap(), None);
    assert_eq!(
        store
            .announce("jobs", "a", 1, Duration::from_secs(5))
            .await
            .unwrap(),
        None
    );
    store.withdraw("jobs", "a").await.unwrap();
    let mut a = store.join("jobs", "a").await.unwrap();
    let lease = acquired(a.try_acquire(Duration::from_secs(5)).await.unwrap());
    a.release(&lease).await.unwrap();
    assert!(!s.has_table(&presence).await, "create=false made a table");
    assert_eq!(names(s.store().candidates("jobs").await.unwrap()), []);
    assert!(s.has_table(&presence).await);
    let store = s.store_at(&s.url_with("&create=false"));
    assert_eq!(
        names(
            store
                .announce("jobs", "a", 1, Duration::from_secs(5))
                .await
                .unwrap()
        ),
        [("a".to_owned(), 1)]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_presence_is_off_without_its_table_under_create_false() {
    presence_is_off_without_its_table_under_create_false(Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mysql_presence_is_off_without_its_table_under_create_false() {
    presence_is_off_without_its_table_under_create_false(Db::Mysql).await;
}

/// A table of the presence table's name with other columns: every presence call is
/// ForeignData naming it, the table stays as it was, and the election is not affected.
async fn a_foreign_presence_table_is_reported_and_left_alone(db: Db) {
    let s = Scratch::new(db);
    let presence = presence_table(&s.table);
    s.exec(match db {
        Db::Postgres => format!("CREATE TABLE {presence} (key text PRIMARY KEY, who text)"),
        Db::Mysql => format!("CREATE TABLE {presence} (`key` VARCHAR(100) PRIMARY KEY, who TEXT)"),
    })
    .await;
    s.exec(format!("INSERT INTO {presence} VALUES ('jobs', 'theirs')"))
        .await;
    let store = s.store();
    for result in [
        store.candidates("jobs").await.map(drop),
        store
            .announce("jobs", "a", 1, Duration::from_secs(5))
            .await
            .map(drop),
        store.withdraw("jobs", "theirs").await,
    ] {
        match result {
            Err(Error::ForeignData { key, found }) => {
                assert!(key.contains(&presence), "{key}");
                assert!(
                    found.contains("who") && found.contains("priority"),
                    "{found}"
                );
            }
            other => panic!("expected ForeignData, got {other:?}"),
        }
    }
    let mut a = store.join("jobs", "a").await.unwrap();
    acquired(a.try_acquire(Duration::from_secs(5)).await.unwrap());
    let count = format!("SELECT count(*) FROM {presence} WHERE who = 'theirs'");
    let n: i64 = match db {
        Db::Postgres => sqlx::query_scalar(sqlx::AssertSqlSafe(count))
            .fetch_one(&s.pg().await)
            .await
            .unwrap(),
        Db::Mysql => sqlx::query_scalar(sqlx::AssertSqlSafe(count))
            .fetch_one(&s.my().await)
            .await
            .unwrap(),
    };
    assert_eq!(n, 1, "the foreign table must stay as it was");
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_a_foreign_presence_table_is_reported_and_left_alone() {
    a_foreign_presence_table_is_reported_and_left_alone(Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mysql_a_foreign_presence_table_is_reported_and_left_alone() {
    a_foreign_presence_table_is_reported_and_left_alone(Db::Mysql).await;
}

/// A presence row with a priority Baton could not have written (another's, or at the
/// announcing candidate's own place, live or spent) is ForeignData, and no announce, prune or
/// withdraw changes it.
async fn foreign_presence_rows_are_reported_and_left_alone(db: Db) {
    let s = Scratch::new(db);
    let store = s.store();
    let ttl = Duration::from_secs(5);
    assert_eq!(
        names(store.announce("jobs", "a", 1, ttl).await.unwrap()),
        [("a".to_owned(), 1)]
    );
    let presence = presence_table(&s.table);
    let (soon, past) = match db {
        Db::Postgres => (
            "clock_timestamp() + interval '1 hour'",
            "clock_timestamp() - interval '1 hour'",
        ),
        Db::Mysql => (
            "UTC_TIMESTAMP(6) + INTERVAL 1 HOUR",
            "UTC_TIMESTAMP(6) - INTERVAL 1 HOUR",
        ),
    };
    for (candidate, priority, until) in [("m", -1_i64, soon), ("z", 4_294_967_296, past)] {
        s.exec(format!(
            "INSERT INTO {presence} VALUES ('jobs', '{candidate}', {priority}, {until})"
        ))
        .await;
        for result in [
            store.candidates("jobs").await.map(drop),
            store.announce("jobs", "a", 2, ttl).await.map(drop),
            store.announce("jobs", candidate, 2, ttl).await.map(drop),
        ] {
            match result {
                Err(Error::ForeignData { key, found }) => {
                    assert_eq!(key, "jobs");
                    assert!(
                        found.contains(&presence)
                            && (found.contains("priority -1") || found.contains("4294967296")),
                        "{found}"
                    );
                }
                other => panic!("expected ForeignData, got {other:?}"),
            }
        }
        store.withdraw("jobs", candidate).await.unwrap();
    }
    assert_eq!(
        s.presence_rows().await,
        ["a:2", "m:-1", "z:4294967296"],
        "Baton's own record is written; the foreign rows stay as they were"
    );
    // Another key is not affected.
    assert_eq!(
        names(store.announce("other", "a", 1, ttl).await.unwrap()),
        [("a".to_owned(), 1)]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_foreign_presence_rows_are_reported_and_left_alone() {
    foreign_presence_rows_are_reported_and_left_alone(Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mysql_foreign_presence_rows_are_reported_and_left_alone() {
    foreign_presence_rows_are_reported_and_left_alone(Db::Mysql).await;
}

/// The documented minimal rights: with `SELECT, INSERT, UPDATE` on the lease table only (a
/// DBA made it) the election works and presence is off, not an error; once the DBA creates
/// the presence table from the SQL file's definition and grants `SELECT, INSERT, UPDATE,
/// DELETE` on it, a store keeps, prunes and withdraws records in it.
async fn presence_needs_only_the_documented_rights(db: Db) {
    let mut s = Scratch::new(db);
    s.store().read("setup").await.unwrap();
    let t = s.table.clone();
    let presence = presence_table(&t);
    let role = format!("baton_pr_{:08x}", fastrand::u32(..));
    let url = match db {
        Db::Postgres => {
            s.exec(format!("CREATE ROLE {role} LOGIN")).await;
            s.drop_roles.push(role.clone());
            s.exec(format!("GRANT SELECT, INSERT, UPDATE ON {t} TO {role}"))
                .await;
            format!("postgres://{role}@127.0.0.1:5432/test?table={t}")
        }
        Db::Mysql => {
            s.exec(format!("CREATE USER '{role}'@'%'")).await;
            s.drop_roles.push(role.clone());
            s.exec(format!(
                "GRANT SELECT, INSERT, UPDATE ON test.{t} TO '{role}'@'%'"
            ))
            .await;
            format!("mysql://{role}@127.0.0.1:3306/test?table={t}")
        }
    };
    let store = s.store_at(&url);
    let ttl = Duration::from_secs(5);
    assert_eq!(store.announce("jobs", "a", 1, ttl).await.unwrap(), None);
    assert_eq!(store.candidates("jobs").await.unwrap(), None);
    let mut a = store.join("jobs", "a").await.unwrap();
    acquired(a.try_acquire(ttl).await.unwrap());
    assert!(!s.has_table(&presence).await);
    // The DBA runs the SQL file's definition, with the table names of this deployment.
    let file = match db {
        Db::Postgres => include_str!("../../baton/sql/postgres.sql"),
        Db::Mysql => include_str!("../../baton/sql/mysql.sql"),
    };
    let create = file
        .split(';')
        .find(|part| part.contains("CREATE TABLE IF NOT EXISTS baton_leases_candidates"))
        .expect("the SQL file defines the presence table");
    s.exec(create.replace("baton_leases_candidates", &presence))
        .await;
    s.exec(match db {
        Db::Postgres => format!("GRANT SELECT, INSERT, UPDATE, DELETE ON {presence} TO {role}"),
        Db::Mysql => {
            format!("GRANT SELECT, INSERT, UPDATE, DELETE ON test.{presence} TO '{role}'@'%'")
        }
    })
    .await;
    let store = s.store_at(&url);
    store
        .announce("jobs", "b", 0, Duration::from_millis(1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        names(store.announce("jobs", "a", 1, ttl).await.unwrap()),
        [("a".to_owned(), 1)]
    );
    assert_eq!(
        s.presence_rows().await,
        ["a:1"],
        "the spent record was dropped"
    );
    store.withdraw("jobs", "a").await.unwrap();
    assert_eq!(names(store.candidates("jobs").await.unwrap()), []);
    assert!(s.presence_rows().await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_presence_needs_only_the_documented_rights() {
    presence_needs_only_the_documented_rights(Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mysql_presence_needs_only_the_documented_rights() {
    presence_needs_only_the_documented_rights(Db::Mysql).await;
}

/// A lease table whose name leaves no room for `_candidates` within 63 characters gets a
/// presence table named by the documented rule, which works.
async fn a_long_table_name_gets_a_shortened_presence_table(db: Db) {
    let mut s = Scratch::new(db);
    s.table = format!("{}_{}", s.table, "x".repeat(63 - s.table.len() - 1));
    assert_eq!(s.table.len(), 63);
    let presence = presence_table(&s.table);
    assert_eq!(presence.len(), 63);
    let named = match db {
        Db::Postgres => PostgresStore::open(&s.url())
            .unwrap()
            .candidates_table()
            .to_owned(),
        Db::Mysql => MysqlStore::open(&s.url())
            .unwrap()
            .candidates_table()
            .to_owned(),
    };
    assert_eq!(named, presence);
    let store = s.store();
    assert_eq!(
        names(
            store
                .announce("jobs", "a", 7, Duration::from_secs(5))
                .await
                .unwrap()
        ),
        [("a".to_owned(), 7)]
    );
    assert!(s.has_table(&presence).await);
    assert_eq!(s.presence_rows().await, ["a:7"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_a_long_table_name_gets_a_shortened_presence_table() {
    a_long_table_name_gets_a_shortened_presence_table(Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mysql_a_long_table_name_gets_a_shortened_presence_table() {
    a_long_table_name_gets_a_shortened_presence_table(Db::Mysql).await;
}
