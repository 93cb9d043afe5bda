//! The SQLite store against real files in a temporary directory, with real (short) time.
//!
//! The conformance suite in `baton-testkit` covers the generic contract; these cases pin what
//! is particular to SQLite: separate connections on one file, the file and table checks, boot
//! ids, and push across connections and processes.

#![cfg(feature = "sqlite")]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use baton::{
    Acquire, Candidacy, Changes, Error, FencingToken, Lease, LeaseStore, Renew, SqliteStore,
};
use futures_util::StreamExt;

const KEY: &str = "jobs";
const LONG: Duration = Duration::from_secs(30);
/// A generous bound for a notification: it normally arrives in milliseconds.
const PROMPTLY: Duration = Duration::from_secs(2);

/// A directory under the system's temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let dir = std::env::temp_dir().join(format!(
            "baton-sqlite-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn db(&self) -> PathBuf {
        self.0.join("baton.db")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn open(path: &Path) -> SqliteStore {
    SqliteStore::open(path).expect("open the sqlite store")
}

async fn acquire(c: &mut Box<dyn Candidacy>, ttl: Duration) -> Lease {
    match c.try_acquire(ttl).await.expect("try_acquire") {
        Acquire::Acquired(lease) => lease,
        other => panic!("expected to acquire, got {other:?}"),
    }
}

async fn next_change(changes: &mut Changes) {
    tokio::time::timeout(PROMPTLY, changes.next())
        .await
        .expect("a change within the bound")
        .expect("the change stream is still open");
}

/// Wait out file events still in flight from earlier writes.
async fn settle(changes: &mut Changes) {
    while tokio::time::timeout(Duration::from_millis(100), changes.next())
        .await
        .is_ok()
    {}
}

/// A connection that is not a `SqliteStore`: writes through it reach a store only through the
/// file watch, as another process's would.
fn raw(path: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path).expect("raw connection");
    conn.busy_timeout(Duration::from_secs(5))
        .expect("busy timeout");
    conn
}

#[tokio::test(flavor = "multi_thread")]
async fn acquire_a_free_key_then_contention_returns_the_holder() {
    let dir = TempDir::new();
    let store = open(&dir.db());
    assert_eq!(store.read(KEY).await.unwrap(), None);

    let mut a = store.join(KEY, "a").await.unwrap();
    let lease = acquire(&mut a, LONG).await;
    assert_eq!(lease.key, KEY);
    assert_eq!(lease.holder, "a");
    assert_eq!(lease.token, FencingToken(1));

    let mut b = store.join(KEY, "b").await.unwrap();
    match b.try_acquire(LONG).await.unwrap() {
        Acquire::Held(record) => {
            assert_eq!(record.holder, "a");
            assert_eq!(record.token, lease.token);
            assert!(record.ttl <= LONG && record.ttl > LONG - Duration::from_secs(5));
        }
        other => panic!("expected Held, got {other:?}"),
    }
    let record = store.read(KEY).await.unwrap().expect("a record");
    assert_eq!((record.holder.as_str(), record.token), ("a", lease.token));
}

#[tokio::test(flavor = "multi_thread")]
async fn renew_by_the_owner_succeeds_and_by_a_stale_lease_fails() {
    let dir = TempDir::new();
    let store = open(&dir.db());
    let mut a = store.join(KEY, "a").await.unwrap();
    let first = acquire(&mut a, LONG).await;
    assert_eq!(a.renew(&first, LONG).await.unwrap(), Renew::Renewed);

    // Same candidate id, newer term: the old lease must not renew it.
    a.release(&first).await.unwrap();
    let second = acquire(&mut a, LONG).await;
    assert!(second.token > first.token);
    match a.renew(&first, LONG).await.unwrap() {
        Renew::Lost(Some(record)) => assert_eq!(record.token, second.token),
        other => panic!("expected Lost, got {other:?}"),
    }
    // Another candidate's id with the current token does not renew it either.
    let mut forged = second.clone();
    forged.holder = "b".to_owned();
    assert!(matches!(
        a.renew(&forged, LONG).await.unwrap(),
        Renew::Lost(Some(_))
    ));
    assert_eq!(a.renew(&second, LONG).await.unwrap(), Renew::Renewed);
}

#[tokio::test(flavor = "multi_thread")]
async fn release_by_a_non_owner_is_a_no_op() {
    let dir = TempDir::new();
    let store = open(&dir.db());
    let mut a = store.join(KEY, "a").await.unwrap();
    let mut b = store.join(KEY, "b").await.unwrap();
    let lease = acquire(&mut a, LONG).await;

    let mut other_holder = lease.clone();
    other_holder.holder = "b".to_owned();
    b.release(&other_holder).await.unwrap();
    let mut stale_token = lease.clone();
    stale_token.token = FencingToken(lease.token.get() - 1);
    a.release(&stale_token).await.unwrap();
    let mut huge_token = lease.clone();
    huge_token.token = FencingToken(u64::MAX);
    a.release(&huge_token).await.unwrap();

    let record = store.read(KEY).await.unwrap().expect("still held");
    assert_eq!((record.holder.as_str(), record.token), ("a", lease.token));
    assert!(matches!(
        b.try_acquire(LONG).await.unwrap(),
        Acquire::Held(_)
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn expiry_frees_the_key() {
    let dir = TempDir::new();
    let store = open(&dir.db());
    let mut a = store.join(KEY, "a").await.unwrap();
    let mut b = store.join(KEY, "b").await.unwrap();
    let lease = acquire(&mut a, Duration::from_millis(100)).await;
    assert!(matches!(
        b.try_acquire(LONG).await.unwrap(),
        Acquire::Held(_)
    ));

    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(store.read(KEY).await.unwrap(), None);
    assert_eq!(a.renew(&lease, LONG).await.unwrap(), Renew::Lost(None));
    let taken = acquire(&mut b, LONG).await;
    assert!(taken.token > lease.token);
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_increase_across_release_expiry_and_reopening_the_file() {
    let dir = TempDir::new();
    let mut tokens = Vec::new();
    {
        let store = open(&dir.db());
        let mut a = store.join(KEY, "a").await.unwrap();
        let lease = acquire(&mut a, LONG).await;
        tokens.push(lease.token);
        a.release(&lease).await.unwrap();
        assert_eq!(store.read(KEY).await.unwrap(), None);

        let lease = acquire(&mut a, Duration::from_millis(50)).await;
        tokens.push(lease.token);
        tokio::time::sleep(Duration::from_millis(120)).await;
        tokens.push(acquire(&mut a, LONG).await.token);
    }
    // A new store on the same file, as after a restart of every process.
    let store = open(&dir.db());
    let mut a = store.join(KEY, "a").await.unwrap();
    let held = a.try_acquire(LONG).await.unwrap();
    assert!(
        matches!(held, Acquire::Held(_)),
        "the lease survives reopening"
    );
    let record = store.read(KEY).await.unwrap().unwrap();
    let lease = Lease::new(KEY.to_owned(), record.holder, record.token);
    a.release(&lease).await.unwrap();
    tokens.push(acquire(&mut a, LONG).await.token);

    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "tokens must strictly increase: {tokens:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_acquirers_on_separate_connections_produce_exactly_one_winner() {
    const N: usize = 8;
    let dir = TempDir::new();
    // Open every store first: opening is not what is being raced.
    let stores: Vec<SqliteStore> = (0..N).map(|_| open(&dir.db())).collect();
    let barrier = Arc::new(tokio::sync::Barrier::new(N));
    let mut tasks = Vec::new();
    for (i, store) in stores.into_iter().enumerate() {
        let barrier = Arc::clone(&barrier);
        tasks.push(tokio::spawn(async move {
            let mut c = store.join(KEY, &format!("c{i}")).await.unwrap();
            barrier.wait().await;
            c.try_acquire(LONG).await.unwrap()
        }));
    }
    let mut winners = Vec::new();
    let mut holders_seen = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Acquire::Acquired(lease) => winners.push(lease),
            Acquire::Held(record) => holders_seen.push(record.holder),
            other => panic!("no handoff was made: {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one winner: {winners:?}");
    assert_eq!(winners[0].token, FencingToken(1));
    assert!(holders_seen.iter().all(|h| *h == winners[0].holder));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_that_is_not_a_database_gives_foreign_data_and_stays_untouched() {
    let dir = TempDir::new();
    let path = dir.db();
    let bytes = b"name,value\nanswer,42\n".repeat(300);
    std::fs::write(&path, &bytes).unwrap();

    match SqliteStore::open(&path) {
        Err(Error::ForeignData { key, found }) => {
            assert!(key.contains("baton.db"), "names the file: {key}");
            assert!(found.contains("not an SQLite database"), "{found}");
        }
        other => panic!("expected ForeignData, got {other:?}"),
    }
    assert_eq!(std::fs::read(&path).unwrap(), bytes);

    // A short file is not a database either, and not an empty one.
    std::fs::write(&path, b"x").unwrap();
    assert!(matches!(
        SqliteStore::open(&path),
        Err(Error::ForeignData { .. })
    ));
    assert_eq!(std::fs::read(&path).unwrap(), b"x");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_baton_leases_table_of_another_shape_gives_foreign_data_and_stays_untouched() {
    let dir = TempDir::new();
    let path = dir.db();
    let schema = "CREATE TABLE baton_leases (name TEXT PRIMARY KEY, owner TEXT, until INTEGER)";
    {
        let conn = raw(&path);
        conn.execute_batch(schema).unwrap();
        conn.execute(
            "INSERT INTO baton_leases VALUES ('jobs', 'someone', 12345)",
            [],
        )
        .unwrap();
    }
    match SqliteStore::open(&path) {
        Err(Error::ForeignData { key, found }) => {
            assert!(key.contains("baton_leases"), "{key}");
            assert!(found.contains("owner"), "describes what is there: {found}");
        }
        other => panic!("expected ForeignData, got {other:?}"),
    }
    let conn = raw(&path);
    let sql: String = conn
        .query_row(
            "SELECT sql FROM sqlite_master WHERE name = 'baton_leases'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(sql, schema);
    let row: (String, String, i64) = conn
        .query_row("SELECT * FROM baton_leases", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert_eq!(row, ("jobs".to_owned(), "someone".to_owned(), 12345));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_row_baton_did_not_write_gives_foreign_data_and_stays_untouched() {
    let dir = TempDir::new();
    let store = open(&dir.db());
    raw(&dir.db())
        .execute(
            "INSERT INTO baton_leases (key, holder, token) VALUES (?1, 'x', 'not a number')",
            [KEY],
        )
        .unwrap();
    let mut c = store.join(KEY, "a").await.unwrap();
    for result in [
        store.read(KEY).await.map(|_| ()),
        c.try_acquire(LONG).await.map(|_| ()),
    ] {
        match result {
            Err(Error::ForeignData { key, found }) => {
                assert_eq!(key, KEY);
                assert!(found.contains("token"), "{found}");
            }
            other => panic!("expected ForeignData, got {other:?}"),
        }
    }
    let token: String = raw(&dir.db())
        .query_row(
            "SELECT token FROM baton_leases WHERE key = ?1",
            [KEY],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(token, "not a number");
}

#[test]
fn a_missing_directory_gives_config_naming_it() {
    let dir = TempDir::new();
    let missing = dir.0.join("no-such-dir");
    match SqliteStore::open(missing.join("baton.db")) {
        Err(Error::Config(message)) => {
            assert!(
                message.contains(&missing.display().to_string()),
                "names the directory: {message}"
            );
            assert!(
                message.contains("create it"),
                "says how to fix it: {message}"
            );
        }
        other => panic!("expected Config, got {other:?}"),
    }
    assert!(!missing.exists(), "the directory is not created");
}

#[test]
fn a_directory_or_memory_path_gives_config() {
    let dir = TempDir::new();
    assert!(matches!(SqliteStore::open(&dir.0), Err(Error::Config(_))));
    assert!(matches!(
        SqliteStore::open(":memory:"),
        Err(Error::Config(_))
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lease_from_an_earlier_boot_counts_as_expired() {
    let dir = TempDir::new();
    let store = open(&dir.db());
    // Far in the future on this boot's clock, but written during another boot.
    raw(&dir.db())
        .execute(
            "INSERT INTO baton_leases (key, holder, token, expires_at_ms, boot_id)
             VALUES (?1, 'ghost', 7, 9000000000000, 'an-earlier-boot')",
            [KEY],
        )
        .unwrap();
    assert_eq!(store.read(KEY).await.unwrap(), None);

    let mut c = store.join(KEY, "a").await.unwrap();
    let ghost = Lease::new(KEY.to_owned(), "ghost".to_owned(), FencingToken(7));
    assert!(matches!(
        c.renew(&ghost, LONG).await.unwrap(),
        Renew::Lost(None)
    ));
    let lease = acquire(&mut c, LONG).await;
    assert_eq!(
        lease.token,
        FencingToken(8),
        "the token continues from the row"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_lock_held_elsewhere_gives_unavailable_within_the_ttl() {
    let dir = TempDir::new();
    let store = open(&dir.db());
    let blocker = raw(&dir.db());
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();

    let mut c = store.join(KEY, "a").await.unwrap();
    let started = std::time::Instant::now();
    match c.try_acquire(Duration::from_millis(200)).await {
        Err(e @ Error::Unavailable { .. }) => {
            assert!(e.is_transient());
            assert!(e.to_string().contains("locked"), "{e}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    // The wait is bounded by the TTL, not by the 5 s cap; the bound here is generous.
    assert!(started.elapsed() < Duration::from_secs(3));
    // Readers are not blocked by a writer (WAL).
    assert_eq!(store.read(KEY).await.unwrap(), None);

    blocker.execute_batch("COMMIT").unwrap();
    acquire(&mut c, LONG).await;
}

/// An acquire whose caller timed out while it waited for the lock must not take the key later:
/// nobody would renew or release that lease.
#[tokio::test(flavor = "multi_thread")]
async fn an_acquire_abandoned_while_waiting_for_the_lock_is_not_made_late() {
    let dir = TempDir::new();
    let store = open(&dir.db());
    let blocker = raw(&dir.db());
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();

    let mut c = store.join(KEY, "a").await.unwrap();
    let gave_up = tokio::time::timeout(Duration::from_millis(100), c.try_acquire(LONG)).await;
    assert!(
        gave_up.is_err(),
        "the acquire cannot finish while the lock is held"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    blocker.execute_batch("COMMIT").unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(store.read(KEY).await.unwrap(), None);
    assert_eq!(acquire(&mut c, LONG).await.token, FencingToken(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn info_and_debug_name_the_file() {
    let dir = TempDir::new();
    let store = open(&dir.db());
    let info = store.info();
    assert_eq!(info.name, "sqlite");
    assert!(info.can_watch);
    assert_eq!(info.location, format!("sqlite:{}", dir.db().display()));
    assert_eq!(store.path(), dir.db());
    assert!(format!("{:?}", store.clone()).contains("baton.db"));
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_delivers_a_release_by_another_store_promptly() {
    let dir = TempDir::new();
    let leader_store = open(&dir.db());
    let follower_store = open(&dir.db());
    let mut leader = leader_store.join(KEY, "leader").await.unwrap();
    let mut follower = follower_store.join(KEY, "follower").await.unwrap();
    let lease = acquire(&mut leader, LONG).await;

    let mut changes = follower.watch().await.unwrap().expect("sqlite can watch");
    settle(&mut changes).await;
    assert!(matches!(
        follower.try_acquire(LONG).await.unwrap(),
        Acquire::Held(_)
    ));
    leader.release(&lease).await.unwrap();
    next_change(&mut changes).await;
    let taken = acquire(&mut follower, LONG).await;
    assert!(taken.token > lease.token);
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_sees_writes_made_outside_this_process_through_the_file() {
    let dir = TempDir::new();
    let store = open(&dir.db());
    let mut a = store.join(KEY, "a").await.unwrap();
    let lease = acquire(&mut a, LONG).await;

    let mut changes = store.watch(KEY).await.unwrap().expect("sqlite can watch");
    settle(&mut changes).await;
    // Released by a connection this process's stores know nothing about.
    raw(&dir.db())
        .execute_batch(
            "BEGIN IMMEDIATE; UPDATE baton_leases SET holder = NULL, expires_at_ms = NULL; COMMIT;",
        )
        .unwrap();
    next_change(&mut changes).await;
    assert_eq!(store.read(KEY).await.unwrap(), None);
    let mut b = store.join(KEY, "b").await.unwrap();
    assert!(acquire(&mut b, LONG).await.token > lease.token);
}

/// An observer (`LeaseStore::watch`, `baton watch`) only reads, so it must not be told of a
/// file event before the write behind it can be read: a file event comes while the commit is
/// still being written, and an observer that read at once saw the old holder, then heard
/// nothing more until its next poll (`baton watch` on SQLite reported a release a second
/// late). Here the file changes while another connection's write is still open; the observer's
/// stream yields only once that write has committed.
#[tokio::test(flavor = "multi_thread")]
async fn an_observer_is_told_of_a_change_only_once_it_can_read_it() {
    let dir = TempDir::new();
    let store = open(&dir.db());
    let mut a = store.join(KEY, "a").await.unwrap();
    acquire(&mut a, LONG).await;

    let observer = open(&dir.db());
    let mut changes = observer
        .watch(KEY)
        .await
        .unwrap()
        .expect("sqlite can watch");
    settle(&mut changes).await;

    let db = dir.db();
    let (touched_tx, touched) = std::sync::mpsc::channel();
    let writer = std::thread::spawn(move || {
        let conn = raw(&db);
        conn.execute_batch(
            "BEGIN IMMEDIATE; UPDATE baton_leases SET holder = NULL, expires_at_ms = NULL;",
        )
        .unwrap();
        // A file event while the write is still open, as a commit's first WAL pages make.
        std::fs::File::options()
            .append(true)
            .open(&db)
            .unwrap()
            .set_modified(std::time::SystemTime::now())
            .unwrap();
        touched_tx.send(()).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        conn.execute_batch("COMMIT").unwrap();
    });
    touched.recv().unwrap();
    next_change(&mut changes).await;
    assert_eq!(
        observer.read(KEY).await.unwrap(),
        None,
        "the observer was woken before the release it was woken for could be read"
    );
    writer.join().unwrap();
}

/// A follower that finds the key held writes nothing, so it does not wake itself or other
/// followers: no notification loop between followers.
#[tokio::test(flavor = "multi_thread")]
async fn watch_stays_quiet_while_nothing_is_written() {
    let dir = TempDir::new();
    let store = open(&dir.db());
    let mut a = store.join(KEY, "a").await.unwrap();
    acquire(&mut a, LONG).await;

    let other = open(&dir.db());
    let mut b = other.join(KEY, "b").await.unwrap();
    let mut changes = b.watch().await.unwrap().expect("sqlite can watch");
    settle(&mut changes).await;
    for _ in 0..3 {
        assert!(matches!(
            b.try_acquire(LONG).await.unwrap(),
            Acquire::Held(_)
        ));
        let _ = other.read(KEY).await.unwrap();
    }
    let woke = tokio::time::timeout(Duration::from_millis(300), changes.next()).await;
    assert!(
        woke.is_err(),
        "woke with {woke:?} though nothing was written"
    );
}

/// The environment variable that turns [`child_process_holder`] into the other process of
/// [`watch_delivers_a_release_by_another_process_promptly`].
const CHILD_DB: &str = "BATON_TEST_SQLITE_CHILD_DB";

#[tokio::test(flavor = "multi_thread")]
async fn watch_delivers_a_release_by_another_process_promptly() {
    if let Some(path) = std::env::var_os(CHILD_DB) {
        // This process is the child that the parent run of this test spawned.
        return child_process_holder(Path::new(&path)).await;
    }
    let dir = TempDir::new();
    let store = open(&dir.db());
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "watch_delivers_a_release_by_another_process_promptly",
            "--nocapture",
        ])
        .env(CHILD_DB, dir.db())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the child test process");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut wait_for = |marker: &str| {
        let mut line = String::new();
        loop {
            line.clear();
            let n = stdout.read_line(&mut line).unwrap();
            assert!(n > 0, "the child exited before printing {marker:?}");
            if line.contains(marker) {
                return;
            }
        }
    };
    wait_for("CHILD ACQUIRED");

    let mut c = store.join(KEY, "parent").await.unwrap();
    let mut changes = c.watch().await.unwrap().expect("sqlite can watch");
    settle(&mut changes).await;
    let held = match c.try_acquire(LONG).await.unwrap() {
        Acquire::Held(record) => record,
        other => panic!("the child should hold the key, got {other:?}"),
    };
    assert_eq!(held.holder, "child");

    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "release").unwrap();
    stdin.flush().unwrap();
    next_change(&mut changes).await;
    let lease = acquire(&mut c, LONG).await;
    assert!(lease.token > held.token);
    drop(stdin);
    assert!(child.wait().unwrap().success());
}

/// The other process of [`watch_delivers_a_release_by_another_process_promptly`]: the test
/// binary re-run with [`CHILD_DB`] set. It takes the key, waits for a line on stdin, releases
/// the key and exits.
async fn child_process_holder(path: &Path) {
    let store = open(path);
    let mut c = store.join(KEY, "child").await.unwrap();
    let lease = acquire(&mut c, LONG).await;
    println!("CHILD ACQUIRED {}", lease.token);
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    c.release(&lease).await.unwrap();
    println!("CHILD RELEASED");
}

/// Regression: three `baton run` processes started at once on a new file failed with
/// "database is locked" while switching it to WAL mode, which SQLite does not retry.
#[test]
fn many_connections_opening_a_new_file_at_once_all_succeed() {
    for round in 0..10 {
        let dir = TempDir::new();
        let path = dir.db();
        let start = std::sync::Arc::new(std::sync::Barrier::new(8));
        let opens: Vec<_> = (0..8)
            .map(|_| {
                let (path, start) = (path.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    SqliteStore::open(&path).map(|_| ())
                })
            })
            .collect();
        for open in opens {
            open.join()
                .unwrap()
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
        }
    }
}

/// A file from before planned handoffs (seven columns) gets the three handoff columns added
/// when a store opens it, its rows kept as they were; tokens go on from where they were, and a
/// handoff works on it.
#[tokio::test(flavor = "multi_thread")]
async fn a_table_from_before_handoffs_gets_the_handoff_columns_and_keeps_its_rows() {
    let dir = TempDir::new();
    let path = dir.db();
    {
        let conn = raw(&path);
        conn.execute_batch(
            "CREATE TABLE baton_leases (
                key           TEXT PRIMARY KEY NOT NULL,
                holder        TEXT,
                token         INTEGER NOT NULL,
                expires_at_ms INTEGER,
                boot_id       TEXT,
                acquired_at   TEXT,
                renewed_at    TEXT
            );
            INSERT INTO baton_leases (key, holder, token) VALUES ('jobs', NULL, 41);",
        )
        .unwrap();
    }
    // Two stores open it at once: one adds the columns, the other finds them.
    let (a, b) = (path.clone(), path.clone());
    let (a, b) = (
        std::thread::spawn(move || SqliteStore::open(a)),
        std::thread::spawn(move || SqliteStore::open(b)),
    );
    let store = a.join().unwrap().unwrap();
    b.join().unwrap().unwrap();
    let columns: Vec<String> = raw(&path)
        .prepare("SELECT name FROM pragma_table_info('baton_leases') ORDER BY cid")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    assert_eq!(
        columns[7..],
        ["handoff_to", "handoff_from", "handoff_until_ms"]
    );
    let mut a = store.join("jobs", "a").await.unwrap();
    let mut b = store.join("jobs", "b").await.unwrap();
    let lease = acquire(&mut a, LONG).await;
    assert_eq!(lease.token, FencingToken(42), "the token goes on");
    a.hand_over(&lease, Some("b"), LONG).await.unwrap();
    assert!(matches!(
        a.try_acquire(LONG).await.unwrap(),
        Acquire::Reserved(m) if m.to.as_deref() == Some("b") && m.from == "a"
    ));
    assert_eq!(acquire(&mut b, LONG).await.token, FencingToken(43));
}

/// Handoff columns that hold what Baton could not have written make the row foreign: it is
/// reported, and left as it was.
#[tokio::test(flavor = "multi_thread")]
async fn handoff_columns_baton_did_not_write_are_foreign_and_left_untouched() {
    let dir = TempDir::new();
    let store = open(&dir.db());
    let rows = [
        // An end that is not a number.
        "INSERT INTO baton_leases (key, holder, token, handoff_to, handoff_from, handoff_until_ms)
         VALUES ('k1', NULL, 3, 'b', 'a', 'soon')",
        // A mark beside a holder.
        "INSERT INTO baton_leases (key, holder, token, handoff_to, handoff_from, handoff_until_ms)
         VALUES ('k2', 'a', 3, 'b', 'a', 1)",
        // Half a mark.
        "INSERT INTO baton_leases (key, holder, token, handoff_to) VALUES ('k3', NULL, 3, 'b')",
    ];
    for (i, row) in rows.iter().enumerate() {
        let key = format!("k{}", i + 1);
        raw(&dir.db()).execute(row, []).unwrap();
        let dump = || -> Vec<String> {
            let conn = raw(&dir.db());
            let mut st = conn
                .prepare("SELECT quote(holder), quote(token), quote(handoff_to), quote(handoff_from), quote(handoff_until_ms) FROM baton_leases WHERE key = ?1")
                .unwrap();
            st.query_row([&key], |r| (0..5).map(|i| r.get(i)).collect())
                .unwrap()
        };
        let before = dump();
        assert!(
            matches!(store.read(&key).await, Err(Error::ForeignData { .. })),
            "{row}"
        );
        let mut c = store.join(&key, "c").await.unwrap();
        assert!(
            matches!(c.try_acquire(LONG).await, Err(Error::ForeignData { .. })),
            "{row}"
        );
        assert_eq!(dump(), before, "{row}");
    }
}

/// Random values of every SQLite type in every column of a `baton_leases` row: reading and
/// acquiring never panic; a row Baton could not have written is reported as foreign and left
/// exactly as it was (every column, `quote()`d, before and after); a row Baton could have
/// written works. What Baton could have written is judged on the values as stored (SQLite's
/// type affinity turns the text `'12'` into the integer 12 in an `INTEGER` column).
#[test]
fn random_rows_are_read_as_foreign_and_never_overwritten() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    use rusqlite::types::Value;

    const CASES: u32 = 1000;
    const COLUMNS: &str =
        "holder, token, expires_at_ms, boot_id, handoff_to, handoff_from, handoff_until_ms";
    let dir = TempDir::new();
    let path = dir.db();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let store = open(&path);
    let conn = raw(&path);
    let value = prop_oneof![
        Just(Value::Null),
        any::<i64>().prop_map(Value::Integer),
        (0i64..10).prop_map(Value::Integer),
        any::<f64>().prop_map(Value::Real),
        "[a-z0-9 -]{0,8}".prop_map(Value::Text),
        prop::collection::vec(any::<u8>(), 0..4).prop_map(Value::Blob),
    ];
    // Each column drawn mostly from what Baton writes there, sometimes from anything, so that
    // both Baton's rows and near misses come up often.
    let text = || "[a-z0-9-]{1,8}".prop_map(Value::Text);
    let int = || (0i64..1_000_000).prop_map(Value::Integer);
    let null = || Just(Value::Null);
    let row = (
        prop_oneof![2 => null(), 2 => text(), 1 => value.clone()],
        prop_oneof![4 => int(), 1 => value.clone()],
        prop_oneof![2 => null(), 2 => int(), 1 => value.clone()],
        prop_oneof![2 => null(), 2 => text(), 1 => value.clone()],
        prop_oneof![6 => null(), 2 => text(), 1 => value.clone()],
        prop_oneof![6 => null(), 2 => text(), 1 => value.clone()],
        prop_oneof![6 => null(), 2 => int(), 1 => value],
    )
        .prop_map(|(a, b, c, d, e, f, g)| vec![a, b, c, d, e, f, g]);
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        ..Config::default()
    });
    let (foreign, own) = (std::cell::Cell::new(0), std::cell::Cell::new(0));
    let next = std::cell::Cell::new(0);
    runner
        .run(&row, |values| {
            next.set(next.get() + 1);
            let key = format!("random-{}", next.get());
            let inserted = conn.execute(
                &format!("INSERT INTO baton_leases (key, {COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"),
                rusqlite::params_from_iter(std::iter::once(Value::Text(key.clone())).chain(values)),
            );
            if inserted.is_err() {
                // NOT NULL refused it: nothing is at the key.
                return Ok(());
            }
            let stored: Vec<Value> = conn
                .query_row(
                    &format!("SELECT {COLUMNS} FROM baton_leases WHERE key = ?1"),
                    [&key],
                    |r| (0..7).map(|i| r.get(i)).collect(),
                )
                .unwrap();
            let dump = || -> String {
                conn.query_row(
                    "SELECT quote(holder) || quote(token) || quote(expires_at_ms) || quote(boot_id) || quote(handoff_to) || quote(handoff_from) || quote(handoff_until_ms) FROM baton_leases WHERE key = ?1",
                    [&key],
                    |r| r.get(0),
                )
                .unwrap()
            };
            let before = dump();
            let (read, acquired) = runtime.block_on(async {
                let read = store.read(&key).await;
                let mut c = store.join(&key, "baton-candidate").await.unwrap();
                let acquired = c.try_acquire(Duration::from_secs(60)).await;
                if let Ok(Acquire::Acquired(lease)) = &acquired {
                    c.release(lease).await.unwrap();
                }
                (read, acquired)
            });
            let text = |v: &Value| matches!(v, Value::Null | Value::Text(_));
            let [holder, token, expires, boot, to, from, until] = stored.as_slice() else {
                unreachable!("seven columns");
            };
            let mark_ok = match (to, from, until) {
                (Value::Null, Value::Null, Value::Null) => true,
                (Value::Text(_), Value::Text(_), Value::Integer(_)) => matches!(holder, Value::Null),
                (Value::Text(_), Value::Text(f), Value::Null) => {
                    matches!(holder, Value::Text(h) if h == f)
                }
                _ => false,
            };
            let batons = text(holder)
                && matches!(token, Value::Integer(t) if *t >= 0)
                && matches!(expires, Value::Null | Value::Integer(_))
                && text(boot)
                && mark_ok;
            if batons {
                own.set(own.get() + 1);
                assert!(read.is_ok(), "{stored:?}: {read:?}");
                let at_max = matches!(token, Value::Integer(i64::MAX));
                assert!(
                    acquired.is_ok() || (at_max && matches!(acquired, Err(Error::ForeignData { .. }))),
                    "{stored:?}: {acquired:?}"
                );
            } else {
                foreign.set(foreign.get() + 1);
                assert!(matches!(read, Err(Error::ForeignData { .. })), "{stored:?}: {read:?}");
                assert!(matches!(acquired, Err(Error::ForeignData { .. })), "{stored:?}: {acquired:?}");
                assert_eq!(dump(), before, "{stored:?} changed");
            }
            Ok(())
        })
        .unwrap();
    let (foreign, own) = (foreign.get(), own.get());
    println!("{CASES} random rows: {foreign} foreign, {own} Baton's, the rest refused by NOT NULL");
    assert!(foreign > 100 && own > 100, "foreign {foreign}, own {own}");
}
