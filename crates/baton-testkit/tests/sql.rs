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
use baton_testkit::conformance::{ForeignWriter, StoreFactory};
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
        Acquire::Held(r) => panic!("expected to acquire, held by {r:?}"),
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
async fn mysql_polled_watch_wakes_the_follower() {
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
    c.release(&l1).await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(2), changes.next())
        .await
        .unwrap();
    assert_eq!(next, Some(baton::Change::Released));
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
