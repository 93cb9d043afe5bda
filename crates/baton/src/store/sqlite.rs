//! The embedded default store: one SQLite file shared by the processes of one machine.
//!
//! No server: every process that opens the same file takes part in the same elections. The
//! file may also hold other tables; Baton only touches its own.
//!
//! # Layout
//!
//! One table, `baton_leases`, one row per election key:
//!
//! | column | type | meaning |
//! |---|---|---|
//! | `key` | `TEXT PRIMARY KEY NOT NULL` | the election key |
//! | `holder` | `TEXT`, `NULL` when released | the holder's candidate id |
//! | `token` | `INTEGER NOT NULL` | the last fencing token minted for the key |
//! | `expires_at_ms` | `INTEGER` | expiry, in milliseconds of the machine's boot-time clock |
//! | `boot_id` | `TEXT` | the boot (`/proc/sys/kernel/random/boot_id`) that clock belongs to |
//! | `acquired_at` | `TEXT` | wall-clock time of the last acquisition (UTC, ISO 8601), for humans |
//! | `renewed_at` | `TEXT` | wall-clock time of the last renewal, for humans |
//! | `handoff_to` | `TEXT` | a planned handoff's candidate (empty: anyone but `handoff_from`) |
//! | `handoff_from` | `TEXT` | the leader that handed over, or is asked to |
//! | `handoff_until_ms` | `INTEGER` | when the handoff's mark runs out, on the boot-time clock of `boot_id`; `NULL` for a request |
//!
//! A release sets `holder` to `NULL` and keeps the row, so `token` survives it and every later
//! acquisition gets a larger token, across releases, expiries and process restarts. A planned
//! handoff ([`Candidacy::hand_over`]) is a release that also fills the three `handoff_`
//! columns; until the mark runs out only its candidate acquires, and the acquisition clears
//! them. A handoff asked for by another process ([`LeaseStore::request_handoff`]) is the same
//! columns without an end, on a held row (`handoff_from` is the holder); the holder's renewal
//! answers it, and a release, a handoff or the next acquisition clears it. A table from before
//! the handoff columns (seven columns) gets them added
//! (`ALTER TABLE ... ADD COLUMN`) when a store opens the file; nothing in it is rewritten.
//!
//! A second table, `baton_candidates`, keeps presence records ([`LeaseStore::announce`],
//! D134): one row per candidate that announces itself at a key, `(key, candidate)` its primary
//! key, with its `priority` and an end (`expires_at_ms`, on the clock of its `boot_id`). An
//! announce drops the records of the key that ran out, writes its own and reads the live
//! ones, in one transaction. Each announce is a write to the file, so it wakes the followers
//! that watch it as a renewal does (they look at the key and wait again). A table of that name
//! with other columns is foreign data: the store refuses to open the file.
//!
//! # Time
//!
//! Expiry is judged by the machine's boot-time clock ([`boot_time`], `CLOCK_BOOTTIME` on
//! Linux), never the wall clock: every process on the machine shares it, and neither NTP nor a
//! suspend can make it jump. That clock restarts at zero when the machine reboots, so a row
//! written during an earlier boot (its `boot_id` differs) counts as expired: a reboot ended
//! every process of that boot. The same leases must therefore not be shared between machines
//! (a network file system), nor between processes in different time namespaces. Outside Linux
//! and Android there is no boot id, so a lease stored before a reboot is only freed when the new
//! clock passes its expiry.
//!
//! This store follows the real clock even in tests that pause tokio's time.
//!
//! # Writes
//!
//! Every write is one `BEGIN IMMEDIATE` transaction, which takes SQLite's write lock before it
//! reads, so the read and the write that depends on it are one atomic step. The renewals of a
//! store's elections that fall due within a short window (at most 20 ms) share one such
//! transaction, and so one commit (D126). Commits are durable
//! (`synchronous = FULL`): a token handed to a resource is never minted again, not even after a
//! power cut. The journal is in WAL mode, so readers never wait for writers. A call waits for
//! another connection's write lock for at most five seconds (acquire and renew: at most their
//! TTL), then fails with [`Error::Unavailable`]; a call whose caller has given up stops waiting.
//!
//! # Push
//!
//! [`watch`](Candidacy::watch) yields whenever the file may have changed. Acquisitions and
//! releases made through any [`SqliteStore`] of this process are broadcast to every store of the
//! same file in the process; writes made by other processes are seen through a file-system
//! watch (inotify on Linux) on the database file and its WAL. A follower in another process
//! therefore wakes within milliseconds of a release instead of waiting out the lease.
//!
//! A file event comes while the commit that causes it is still being written: the WAL's pages
//! are written, then synced, and only then does the commit become visible to readers. A
//! candidate that wakes early loses nothing, because its acquire waits for the write lock. An
//! observer ([`LeaseStore::watch`], `baton watch`) only reads, so its stream waits for the
//! write in flight before it yields: it takes the write lock and lets it go without writing.
//! A read after the stream yields therefore sees the change that woke it, rather than the state
//! before it and then nothing until the observer's next poll.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use notify::{RecursiveMode, Watcher};
use rusqlite::types::Value;
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior, params};
use tokio::sync::broadcast;
use tracing::debug;

use super::batch::{self, Batcher};
use super::{
    Acquire, Candidacy, Change, Changes, HandoffMark, Lease, LeaseRecord, LeaseStore,
    PendingHandoff, Presence, Renew, StoreInfo,
};
use crate::{Error, FencingToken, Result, boot_time};

/// The store's name in errors and [`StoreInfo`].
const STORE: &str = "sqlite";

/// The longest a call waits for another connection's write lock before giving up with
/// [`Error::Unavailable`]. Acquire and renew wait at most their TTL: a lease that would have
/// expired by the time the lock came is not worth waiting for.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long an observer waits for the write behind a file event before it yields the change
/// anyway. A commit holds the write lock for about one fsync; a writer that holds it for a
/// second is slow or stuck, and the observer should not stall behind it for the five seconds
/// of [`BUSY_TIMEOUT`], on a connection the same store's candidates share.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(1);

/// The first 16 bytes of every SQLite database file.
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// Where Linux publishes the id of the current boot.
const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

/// The lease table. See the module documentation for what each column means.
const CREATE_TABLE: &str = "
CREATE TABLE IF NOT EXISTS baton_leases (
    key           TEXT PRIMARY KEY NOT NULL,
    holder        TEXT,
    token         INTEGER NOT NULL,
    expires_at_ms INTEGER,
    boot_id       TEXT,
    acquired_at   TEXT,
    renewed_at    TEXT,
    handoff_to       TEXT,
    handoff_from     TEXT,
    handoff_until_ms INTEGER
)";

/// Presence records ([`LeaseStore::announce`], D134): one row per candidate that announces
/// itself at a key, alive until `expires_at_ms` on the boot-time clock of `boot_id`.
const CREATE_CANDIDATES: &str = "
CREATE TABLE IF NOT EXISTS baton_candidates (
    key           TEXT NOT NULL,
    candidate     TEXT NOT NULL,
    priority      INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    boot_id       TEXT NOT NULL,
    PRIMARY KEY (key, candidate)
)";

/// The columns [`CREATE_CANDIDATES`] makes, as `PRAGMA table_info` reports them.
const CANDIDATE_COLUMNS: [(&str, &str, bool, bool); 5] = [
    ("key", "TEXT", true, true),
    ("candidate", "TEXT", true, true),
    ("priority", "INTEGER", true, false),
    ("expires_at_ms", "INTEGER", true, false),
    ("boot_id", "TEXT", true, false),
];

/// Drop the presence records at key ?1 that ran out (?2 current boot id, ?3 now).
const PRUNE_CANDIDATES: &str = "
DELETE FROM baton_candidates WHERE key = ?1 AND (boot_id IS NOT ?2 OR expires_at_ms <= ?3)";

/// Write candidate ?2's record at key ?1 (?3 priority, ?4 expiry, ?5 boot id).
const ANNOUNCE: &str = "
INSERT INTO baton_candidates (key, candidate, priority, expires_at_ms, boot_id)
VALUES (?1, ?2, ?3, ?4, ?5)
ON CONFLICT (key, candidate) DO UPDATE SET
    priority = excluded.priority, expires_at_ms = excluded.expires_at_ms, boot_id = excluded.boot_id";

/// The live records at key ?1 (?2 current boot id, ?3 now), as raw values.
const SELECT_CANDIDATES: &str = "
SELECT candidate, priority, expires_at_ms FROM baton_candidates
WHERE key = ?1 AND boot_id = ?2 AND expires_at_ms > ?3 ORDER BY candidate";

/// Remove candidate ?2's record at key ?1.
const WITHDRAW: &str = "DELETE FROM baton_candidates WHERE key = ?1 AND candidate = ?2";

/// The columns a planned handoff added to the table (D133), as `ALTER TABLE` adds them to a
/// table made before.
const HANDOFF_COLUMNS: [(&str, &str); 3] = [
    ("handoff_to", "TEXT"),
    ("handoff_from", "TEXT"),
    ("handoff_until_ms", "INTEGER"),
];

/// The columns [`CREATE_TABLE`] makes, as `PRAGMA table_info` reports them:
/// (name, declared type, NOT NULL, part of the primary key).
const COLUMNS: [(&str, &str, bool, bool); 10] = [
    ("key", "TEXT", true, true),
    ("holder", "TEXT", false, false),
    ("token", "INTEGER", true, false),
    ("expires_at_ms", "INTEGER", false, false),
    ("boot_id", "TEXT", false, false),
    ("acquired_at", "TEXT", false, false),
    ("renewed_at", "TEXT", false, false),
    ("handoff_to", "TEXT", false, false),
    ("handoff_from", "TEXT", false, false),
    ("handoff_until_ms", "INTEGER", false, false),
];

/// What kind of schema object is called `baton_leases` (a table, we hope).
const TABLE_KIND: &str = "SELECT type FROM sqlite_master WHERE name = 'baton_leases'";

/// The columns of whatever table is called `baton_leases`.
const TABLE_INFO: &str =
    "SELECT name, type, \"notnull\", pk FROM pragma_table_info('baton_leases') ORDER BY cid";

/// The row at a key, read as raw values so data Baton did not write can be described.
const SELECT_LEASE: &str = "SELECT holder, token, expires_at_ms, boot_id, handoff_to, \
     handoff_from, handoff_until_ms FROM baton_leases WHERE key = ?1";

/// Take the key if it is free (?1 key, ?2 candidate, ?3 expiry, ?4 current boot id, ?5 now).
///
/// Free means released, expired, or written during another boot. The token is bumped in the
/// same statement; a new key starts at 1. Returns the new token, or no row if the key is held.
const ACQUIRE: &str = "
INSERT INTO baton_leases (key, holder, token, expires_at_ms, boot_id, acquired_at, renewed_at)
VALUES (?1, ?2, 1, ?3, ?4,
        strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
ON CONFLICT (key) DO UPDATE SET
    holder        = excluded.holder,
    token         = baton_leases.token + 1,
    expires_at_ms = excluded.expires_at_ms,
    boot_id       = excluded.boot_id,
    acquired_at   = excluded.acquired_at,
    renewed_at    = excluded.renewed_at,
    handoff_to       = NULL,
    handoff_from     = NULL,
    handoff_until_ms = NULL
WHERE baton_leases.holder IS NULL
   OR baton_leases.boot_id IS NOT ?4
   OR coalesce(baton_leases.expires_at_ms, 0) <= ?5
RETURNING token";

/// Extend the lease if this lease (holder ?2 and token ?3) still holds the key ?1 and has not
/// expired (?4 current boot id, ?5 now, ?6 new expiry). Returns the handoff asked for, if any.
const RENEW: &str = "
UPDATE baton_leases
SET expires_at_ms = ?6, renewed_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
WHERE key = ?1 AND holder = ?2 AND token = ?3 AND boot_id = ?4 AND expires_at_ms > ?5
RETURNING handoff_to";

/// Free the key ?1 if this lease (holder ?2 and token ?3) holds it, with any handoff asked of
/// it. The row, and so the token, stays.
const RELEASE: &str = "
UPDATE baton_leases
SET holder = NULL, expires_at_ms = NULL, handoff_to = NULL, handoff_from = NULL
WHERE key = ?1 AND holder = ?2 AND token = ?3";

/// Ask the holder ?3 (token ?4) of key ?1 to hand over to ?2 ('' for anyone).
const REQUEST_HANDOFF: &str = "
UPDATE baton_leases
SET handoff_to = ?2, handoff_from = holder
WHERE key = ?1 AND holder = ?3 AND token = ?4";

/// Hand the key ?1 over if this lease (holder ?2 and token ?3) holds it: free it as a release
/// does, and leave the mark (?4 the candidate or '', ?5 its end on the boot-time clock of ?6).
const HAND_OVER: &str = "
UPDATE baton_leases
SET holder = NULL, expires_at_ms = NULL,
    handoff_to = ?4, handoff_from = ?2, handoff_until_ms = ?5, boot_id = ?6
WHERE key = ?1 AND holder = ?2 AND token = ?3";

/// A [`LeaseStore`] in one SQLite file, shared by every process on the machine that opens it.
///
/// Cheap to clone: clones share one connection. Stores opened separately on the same file (in
/// this process or others) see the same leases and wake each other's watchers.
///
/// ```no_run
/// # fn main() -> baton::Result<()> {
/// use baton::LeaseStore;
///
/// let store = baton::SqliteStore::open("/var/lib/myapp/baton.db")?;
/// assert_eq!(store.info().name, "sqlite");
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// The path as given to [`SqliteStore::open`].
    path: PathBuf,
    /// Id of the boot this process runs in.
    boot_id: String,
    /// One connection; blocking calls on it run on tokio's blocking pool.
    conn: Mutex<Connection>,
    /// The call in progress on `conn`, as its busy handler sees it.
    call: Arc<Call>,
    /// Change notices for this file, shared by all stores of this process that opened it.
    feed: Arc<Feed>,
    /// Renewals gathered into one transaction per window (D126).
    renewals: Arc<Batcher<(Lease, Duration), Renew>>,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Open the lease file at `path`, creating the file (but not its directory) if it is
    /// missing, and the `baton_leases` table if the file has none.
    ///
    /// Synchronous: it opens a local file and runs a few statements.
    ///
    /// # Errors
    ///
    /// * [`Error::Config`] if the directory does not exist, `path` is a directory, the file
    ///   cannot be opened for writing, or (on Linux) the boot id cannot be read;
    /// * [`Error::ForeignData`] if the file is not an SQLite database, or holds a
    ///   `baton_leases` that is not Baton's table. Neither is modified;
    /// * [`Error::Unavailable`] if another connection keeps the file locked for longer than
    ///   five seconds, or the file system fails.
    pub fn open(path: impl AsRef<Path>) -> Result<SqliteStore> {
        let path = path.as_ref().to_path_buf();
        check_location(&path)?;
        let boot_id = current_boot_id()?;
        let call = Arc::new(Call::default());
        let conn = connect(&path, Arc::clone(&call))?;
        let file = std::fs::canonicalize(&path).map_err(|e| {
            Error::Config(format!(
                "cannot resolve the path of the SQLite lease file {}: {e}",
                path.display()
            ))
        })?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path,
                boot_id,
                conn: Mutex::new(conn),
                call,
                feed: Feed::for_file(file),
                renewals: Arc::default(),
            }),
        })
    }

    /// The path the store was opened with.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Run `op` on the connection on tokio's blocking pool, waiting at most `busy_limit` for
    /// the write lock. `write` says whether `op` may write, which decides what a panic in it
    /// means.
    ///
    /// A blocking call cannot be cancelled once it runs. If the caller gives up (the engine's
    /// timeout) while the call still waits for the connection or for the write lock, the call
    /// stops there: a write the caller no longer expects, such as an acquisition nobody would
    /// renew or release, is not made late.
    async fn run<T, F>(&self, write: bool, busy_limit: Duration, op: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner, &mut Connection) -> Result<T> + Send + 'static,
    {
        self.run_or_undo(write, busy_limit, op, |_, _, _| {}).await
    }

    /// [`run`](Self::run), and if the caller gave up after `op` got the write lock, so that
    /// its success can no longer be delivered, `undo` it on the same connection before letting
    /// the connection go.
    ///
    /// An acquisition made just as the engine's timeout fired would otherwise hold the lease
    /// for a whole TTL with nobody acting on it: a leaderless gap that the chaos harness found
    /// after stalls of the store (sqlite slow-store seed 100015, kill-leader seed 100017).
    async fn run_or_undo<T, F, U>(
        &self,
        write: bool,
        busy_limit: Duration,
        op: F,
        undo: U,
    ) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner, &mut Connection) -> Result<T> + Send + 'static,
        U: FnOnce(&Inner, &mut Connection, T) + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        let caller_gone = CallerGone::default();
        let gone = Arc::clone(&caller_gone.0);
        let (deliver, delivered) = tokio::sync::oneshot::channel();
        let joined = tokio::task::spawn_blocking(move || {
            let mut conn = inner.conn.lock().unwrap_or_else(PoisonError::into_inner);
            if gone.load(Ordering::Acquire) {
                let _ = deliver.send(Err(Error::Unavailable {
                    store: STORE,
                    message: "the caller gave up while an earlier call held the connection; nothing was done".to_owned(),
                    source: None,
                }));
                return;
            }
            inner.call.begin(busy_limit, gone);
            let result = op(&inner, &mut conn);
            // The receiver is gone only if the caller's future was dropped: nobody will act on
            // what `op` did, so take it back while the connection is still ours.
            if let Err(Ok(done)) = deliver.send(result) {
                undo(&inner, &mut conn, done);
            }
        });
        let result = delivered.await;
        drop(caller_gone);
        if let Ok(result) = result {
            return result;
        }
        // Nothing was delivered: the blocking call panicked, or never ran.
        match joined.await {
            Ok(()) => Err(Error::Unavailable {
                store: STORE,
                message: "a call on the connection ended without an answer; nothing was done"
                    .to_owned(),
                source: None,
            }),
            Err(e) if e.is_cancelled() => Err(Error::unavailable(
                STORE,
                "the tokio runtime is shutting down; nothing was written",
                e,
            )),
            Err(e) if write => Err(Error::indeterminate(
                STORE,
                format!("a write to {} panicked", self.inner.path.display()),
                e,
            )),
            Err(e) => Err(Error::unavailable(
                STORE,
                format!("a read of {} panicked", self.inner.path.display()),
                e,
            )),
        }
    }
}

#[async_trait]
impl LeaseStore for SqliteStore {
    async fn join(&self, key: &str, candidate: &str) -> Result<Box<dyn Candidacy>> {
        Ok(Box::new(SqliteCandidacy {
            store: self.clone(),
            key: key.to_owned(),
            candidate: candidate.to_owned(),
        }))
    }

    async fn read(&self, key: &str) -> Result<Option<LeaseRecord>> {
        let key = key.to_owned();
        self.run(false, BUSY_TIMEOUT, move |inner, conn| {
            inner.read(conn, &key)
        })
        .await
    }

    async fn request_handoff(&self, key: &str, to: Option<&str>) -> Result<Option<LeaseRecord>> {
        let key = key.to_owned();
        let to = to.map(str::to_owned);
        self.run(true, BUSY_TIMEOUT, move |inner, conn| {
            inner.request_handoff(conn, &key, to.as_deref())
        })
        .await
    }

    async fn watch(&self, key: &str) -> Result<Option<Changes>> {
        Ok(self.inner.feed.subscribe(key, Some(self.clone())))
    }

    async fn pending_handoff(&self, key: &str) -> Result<Option<PendingHandoff>> {
        let key = key.to_owned();
        self.run(false, BUSY_TIMEOUT, move |inner, conn| {
            let stored = inner.select(conn, &key, "reading")?;
            Ok(stored.and_then(|s| s.pending(now_ms(), &inner.boot_id)))
        })
        .await
    }

    async fn announce(
        &self,
        key: &str,
        candidate: &str,
        priority: u32,
        ttl: Duration,
    ) -> Result<Option<Vec<Presence>>> {
        let (key, candidate) = (key.to_owned(), candidate.to_owned());
        self.run(true, BUSY_TIMEOUT, move |inner, conn| {
            inner
                .announce(conn, &key, &candidate, priority, ttl)
                .map(Some)
        })
        .await
    }

    async fn candidates(&self, key: &str) -> Result<Option<Vec<Presence>>> {
        let key = key.to_owned();
        self.run(false, BUSY_TIMEOUT, move |inner, conn| {
            inner
                .live_candidates(conn, &key, now_ms(), "reading the candidates in")
                .map(Some)
        })
        .await
    }

    async fn withdraw(&self, key: &str, candidate: &str) -> Result<()> {
        let (key, candidate) = (key.to_owned(), candidate.to_owned());
        self.run(true, BUSY_TIMEOUT, move |inner, conn| {
            conn.prepare_cached(WITHDRAW)
                .and_then(|mut st| st.execute(params![key, candidate]))
                .map_err(|e| inner.error("removing a presence record in", e))
                .map(drop)
        })
        .await
    }

    fn info(&self) -> StoreInfo {
        StoreInfo {
            name: STORE,
            location: format!("sqlite:{}", self.inner.path.display()),
            can_watch: true,
        }
    }
}

/// A candidate in a [`SqliteStore`] election. Holds no state in the file.
#[derive(Debug)]
struct SqliteCandidacy {
    store: SqliteStore,
    key: String,
    candidate: String,
}

#[async_trait]
impl Candidacy for SqliteCandidacy {
    async fn try_acquire(&mut self, ttl: Duration) -> Result<Acquire> {
        let (key, candidate) = (self.key.clone(), self.candidate.clone());
        self.store
            .run_or_undo(
                true,
                ttl.min(BUSY_TIMEOUT),
                move |inner, conn| inner.try_acquire(conn, &key, &candidate, ttl),
                Inner::undo_acquire,
            )
            .await
    }

    async fn renew(&mut self, lease: &Lease, ttl: Duration) -> Result<Renew> {
        let store = self.store.clone();
        self.store
            .inner
            .renewals
            .submit(
                (lease.clone(), ttl),
                batch::window(ttl),
                STORE,
                move |batch| async move {
                    let limit = batch.iter().map(|(_, ttl)| *ttl).min();
                    let limit = limit.unwrap_or(BUSY_TIMEOUT).min(BUSY_TIMEOUT);
                    store
                        .run(true, limit, move |inner, conn| {
                            inner.renew_many(conn, &batch)
                        })
                        .await
                },
            )
            .await
    }

    async fn release(&mut self, lease: &Lease) -> Result<()> {
        let lease = lease.clone();
        self.store
            .run(true, BUSY_TIMEOUT, move |inner, conn| {
                inner.release(conn, &lease)
            })
            .await
    }

    async fn hand_over(&mut self, lease: &Lease, to: Option<&str>, window: Duration) -> Result<()> {
        let lease = lease.clone();
        let to = to.map(str::to_owned);
        self.store
            .run(true, BUSY_TIMEOUT, move |inner, conn| {
                inner.hand_over(conn, &lease, to, window)
            })
            .await
    }

    async fn watch(&mut self) -> Result<Option<Changes>> {
        // A candidate's acquire waits for the write lock itself: no need to wait here.
        Ok(self.store.inner.feed.subscribe(&self.key, None))
    }
}

// ---------------------------------------------------------------------------------------------
// The operations, run on the blocking pool with the connection locked.

impl Inner {
    fn read(&self, conn: &Connection, key: &str) -> Result<Option<LeaseRecord>> {
        let stored = self.select(conn, key, "reading")?;
        Ok(stored.and_then(|s| s.live(now_ms(), &self.boot_id)))
    }

    fn try_acquire(
        &self,
        conn: &mut Connection,
        key: &str,
        candidate: &str,
        ttl: Duration,
    ) -> Result<Acquire> {
        let doing = "acquiring a lease in";
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.error(doing, e))?;
        // Read the clock only once the write lock is ours: waiting for it can take a while.
        let now = now_ms();
        let stored = self.select(&tx, key, doing)?;
        if let Some(stored) = &stored {
            if let Some(record) = stored.live(now, &self.boot_id) {
                return Ok(Acquire::Held(record));
            }
            if let Some(mark) = stored.reserved(candidate, now, &self.boot_id) {
                return Ok(Acquire::Reserved(mark));
            }
            if i64::try_from(stored.token).is_ok_and(|t| t == i64::MAX) {
                return Err(Error::ForeignData {
                    key: key.to_owned(),
                    found: format!(
                        "a baton_leases row in {} whose token is at the largest value SQLite can store, so no larger token can be minted",
                        self.path.display()
                    ),
                });
            }
        }
        let expires = now.saturating_add(ttl_ms(ttl));
        let token: Option<i64> = tx
            .prepare_cached(ACQUIRE)
            .and_then(|mut st| {
                st.query_row(params![key, candidate, expires, self.boot_id, now], |r| {
                    r.get(0)
                })
                .optional()
            })
            .map_err(|e| self.error(doing, e))?;
        let Some(token) = token else {
            // The row was read under the same lock and found free; the statement disagrees.
            return Err(Error::Unavailable {
                store: STORE,
                message: format!(
                    "the lease at key {key:?} in {} changed while the write lock was held; please report this",
                    self.path.display()
                ),
                source: None,
            });
        };
        tx.commit().map_err(|e| self.commit_error(doing, e))?;
        self.feed.publish(
            key,
            Change::Acquired {
                holder: candidate.to_owned(),
            },
        );
        Ok(Acquire::Acquired(Lease {
            key: key.to_owned(),
            holder: candidate.to_owned(),
            token: FencingToken(u64::try_from(token).unwrap_or_default()),
            act_after: Duration::ZERO,
        }))
    }

    /// Take back an acquisition whose caller gave up before it could be told (see
    /// [`SqliteStore::run_or_undo`]): nobody acts on that lease, so it is released at once.
    fn undo_acquire(&self, conn: &mut Connection, acquired: Acquire) {
        if let Acquire::Acquired(lease) = acquired {
            let undone = self.release(conn, &lease);
            tracing::debug!(
                key = lease.key,
                token = lease.token.0,
                ?undone,
                "released a lease acquired after its caller gave up"
            );
        }
    }

    /// Renew every lease of `batch` (with its TTL) in one transaction, so that many elections'
    /// renewals cost one commit (D126). A lease that no longer holds its key is answered with
    /// the current record, the others are renewed; a failed commit fails them all.
    fn renew_many(
        &self,
        conn: &mut Connection,
        batch: &[(Lease, Duration)],
    ) -> Result<Vec<Result<Renew>>> {
        let doing = "renewing a lease in";
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.error(doing, e))?;
        let now = now_ms();
        let results: Vec<Result<Renew>> = batch
            .iter()
            .map(|(lease, ttl)| self.renew(&tx, lease, *ttl, now))
            .collect();
        if results
            .iter()
            .any(|r| matches!(r, Ok(Renew::Renewed | Renew::HandoffRequested { .. })))
        {
            tx.commit().map_err(|e| self.commit_error(doing, e))?;
        }
        Ok(results)
    }

    /// Renew `lease` by `ttl` within the transaction `tx`, at `now`.
    fn renew(&self, tx: &Connection, lease: &Lease, ttl: Duration, now: i64) -> Result<Renew> {
        let doing = "renewing a lease in";
        let lost = || -> Result<Renew> {
            let current = self.select(tx, &lease.key, doing)?;
            Ok(Renew::Lost(
                current.and_then(|s| s.live(now, &self.boot_id)),
            ))
        };
        let Some(token) = sql_token(lease.token) else {
            // No row can hold a token SQLite cannot store: this lease holds nothing.
            return lost();
        };
        let expires = now.saturating_add(ttl_ms(ttl));
        let renewed: Option<Option<String>> = tx
            .prepare_cached(RENEW)
            .and_then(|mut st| {
                st.query_row(
                    params![lease.key, lease.holder, token, self.boot_id, now, expires],
                    |r| r.get(0),
                )
                .optional()
            })
            .map_err(|e| self.error(doing, e))?;
        match renewed {
            None => lost(),
            Some(None) => Ok(Renew::Renewed),
            Some(Some(to)) => Ok(Renew::HandoffRequested {
                to: (!to.is_empty()).then_some(to),
            }),
        }
    }

    fn release(&self, conn: &mut Connection, lease: &Lease) -> Result<()> {
        let doing = "releasing a lease in";
        let Some(token) = sql_token(lease.token) else {
            return Ok(());
        };
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.error(doing, e))?;
        let changed = tx
            .prepare_cached(RELEASE)
            .and_then(|mut st| st.execute(params![lease.key, lease.holder, token]))
            .map_err(|e| self.error(doing, e))?;
        if changed == 0 {
            return Ok(());
        }
        tx.commit().map_err(|e| self.commit_error(doing, e))?;
        self.feed.publish(&lease.key, Change::Released);
        Ok(())
    }

    fn request_handoff(
        &self,
        conn: &mut Connection,
        key: &str,
        to: Option<&str>,
    ) -> Result<Option<LeaseRecord>> {
        let doing = "asking for a handoff in";
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.error(doing, e))?;
        let Some(record) = self
            .select(&tx, key, doing)?
            .and_then(|s| s.live(now_ms(), &self.boot_id))
        else {
            return Ok(None);
        };
        if to == Some(record.holder.as_str()) {
            return Ok(Some(record));
        }
        let token = sql_token(record.token).unwrap_or(i64::MAX);
        tx.prepare_cached(REQUEST_HANDOFF)
            .and_then(|mut st| st.execute(params![key, to.unwrap_or(""), record.holder, token]))
            .map_err(|e| self.error(doing, e))?;
        tx.commit().map_err(|e| self.commit_error(doing, e))?;
        // Stores of this process are told; other processes see a file event, which a leader
        // does not act on (its own renewals make them too): it reads the request at its next
        // renewal.
        self.feed.publish(
            key,
            Change::HandoffRequested {
                to: to.map(str::to_owned),
            },
        );
        Ok(Some(record))
    }

    fn hand_over(
        &self,
        conn: &mut Connection,
        lease: &Lease,
        to: Option<String>,
        window: Duration,
    ) -> Result<()> {
        let doing = "handing a lease over in";
        let Some(token) = sql_token(lease.token) else {
            return Ok(());
        };
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.error(doing, e))?;
        let until = now_ms().saturating_add(ttl_ms(window));
        let changed = tx
            .prepare_cached(HAND_OVER)
            .and_then(|mut st| {
                st.execute(params![
                    lease.key,
                    lease.holder,
                    token,
                    to.as_deref().unwrap_or(""),
                    until,
                    self.boot_id
                ])
            })
            .map_err(|e| self.error(doing, e))?;
        if changed == 0 {
            return Ok(());
        }
        tx.commit().map_err(|e| self.commit_error(doing, e))?;
        self.feed.publish(&lease.key, Change::HandedOver { to });
        Ok(())
    }

    fn announce(
        &self,
        conn: &mut Connection,
        key: &str,
        candidate: &str,
        priority: u32,
        ttl: Duration,
    ) -> Result<Vec<Presence>> {
        let doing = "writing a presence record in";
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.error(doing, e))?;
        let now = now_ms();
        tx.prepare_cached(PRUNE_CANDIDATES)
            .and_then(|mut st| st.execute(params![key, self.boot_id, now]))
            .and_then(|_| tx.prepare_cached(ANNOUNCE))
            .and_then(|mut st| {
                st.execute(params![
                    key,
                    candidate,
                    i64::from(priority),
                    now.saturating_add(ttl_ms(ttl)),
                    self.boot_id
                ])
            })
            .map_err(|e| self.error(doing, e))?;
        let live = self.live_candidates(&tx, key, now, doing)?;
        tx.commit().map_err(|e| self.commit_error(doing, e))?;
        Ok(live)
    }

    /// The live presence records at `key` at `now`; a row Baton could not have written is
    /// [`Error::ForeignData`].
    fn live_candidates(
        &self,
        conn: &Connection,
        key: &str,
        now: i64,
        doing: &str,
    ) -> Result<Vec<Presence>> {
        let rows: Vec<[Value; 3]> = conn
            .prepare_cached(SELECT_CANDIDATES)
            .and_then(|mut st| {
                st.query_map(params![key, self.boot_id, now], |r| {
                    Ok([r.get(0)?, r.get(1)?, r.get(2)?])
                })?
                .collect()
            })
            .map_err(|e| self.error(doing, e))?;
        rows.into_iter()
            .map(|row| match row {
                [
                    Value::Text(candidate),
                    Value::Integer(priority),
                    Value::Integer(until),
                ] if u32::try_from(priority).is_ok() => Ok(Presence::new(
                    candidate,
                    u32::try_from(priority).unwrap_or_default(),
                    Duration::from_millis(u64::try_from(until - now).unwrap_or_default()),
                )),
                [candidate, priority, _] => Err(Error::ForeignData {
                    key: key.to_owned(),
                    found: format!(
                        "a baton_candidates row in {} with candidate {} and priority {}",
                        self.path.display(),
                        describe(&candidate),
                        describe(&priority)
                    ),
                }),
            })
            .collect()
    }

    /// Wait until no other connection is in the middle of a write: take the write lock and let
    /// it go at once, writing nothing. A commit still being written when its file event came
    /// holds that lock until it is visible, so a read after this sees it.
    fn wait_for_writers(&self, conn: &mut Connection) -> Result<()> {
        let doing = "waiting for a write to finish in";
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.error(doing, e))?;
        tx.rollback().map_err(|e| self.error(doing, e))
    }

    /// The row at `key`, checked to be one Baton could have written.
    fn select(&self, conn: &Connection, key: &str, doing: &str) -> Result<Option<Stored>> {
        let values = conn
            .prepare_cached(SELECT_LEASE)
            .and_then(|mut st| {
                st.query_row([key], |r| {
                    Ok([
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                    ])
                })
                .optional()
            })
            .map_err(|e| self.error(doing, e))?;
        values
            .map(|v| Stored::parse(v).map_err(|found| self.foreign_row(key, &found)))
            .transpose()
    }

    fn foreign_row(&self, key: &str, found: &str) -> Error {
        Error::ForeignData {
            key: key.to_owned(),
            found: format!(
                "a baton_leases row in {} whose {found}",
                self.path.display()
            ),
        }
    }

    fn error(&self, doing: &str, e: rusqlite::Error) -> Error {
        sqlite_error(&self.path, doing, Phase::Use, e)
    }

    fn commit_error(&self, doing: &str, e: rusqlite::Error) -> Error {
        sqlite_error(&self.path, doing, Phase::Commit, e)
    }
}

/// A `baton_leases` row, as Baton writes it.
#[derive(Debug)]
struct Stored {
    holder: Option<String>,
    token: u64,
    expires_at_ms: Option<i64>,
    boot_id: Option<String>,
    /// A planned handoff's mark: to ('' for anyone), from, until (ms of `boot_id`'s clock);
    /// or, without `until` and on a held row, a handoff asked of the holder.
    mark: Option<Box<(String, String, Option<i64>)>>,
}

impl Stored {
    /// Check the raw values of `SELECT_LEASE`; the error describes the first bad column.
    fn parse(
        [holder, token, expires_at_ms, boot_id, to, from, until]: [Value; 7],
    ) -> Result<Self, String> {
        let text = |name: &str, v: Value| match v {
            Value::Null => Ok(None),
            Value::Text(s) => Ok(Some(s)),
            other => Err(format!("{name} is {}", describe(&other))),
        };
        let token = match token {
            Value::Integer(t) => u64::try_from(t).ok(),
            _ => None,
        }
        .ok_or_else(|| format!("token is {}", describe(&token)))?;
        let expires_at_ms = match expires_at_ms {
            Value::Null => None,
            Value::Integer(t) => Some(t),
            other => return Err(format!("expires_at_ms is {}", describe(&other))),
        };
        let holder = text("holder", holder)?;
        let mark = match (text("handoff_to", to)?, text("handoff_from", from)?, until) {
            (None, None, Value::Null) => None,
            // Baton leaves a mark only on a row it frees.
            (Some(to), Some(from), Value::Integer(until)) if holder.is_none() => {
                Some(Box::new((to, from, Some(until))))
            }
            // A request names the holder it was made of.
            (Some(to), Some(from), Value::Null) if holder.as_ref() == Some(&from) => {
                Some(Box::new((to, from, None)))
            }
            (_, _, until) => {
                return Err(format!(
                    "handoff columns are not a mark or a request Baton could have left (handoff_until_ms is {}{})",
                    describe(&until),
                    if holder.is_some() {
                        ", beside a holder"
                    } else {
                        ""
                    }
                ));
            }
        };
        Ok(Stored {
            holder,
            token,
            expires_at_ms,
            boot_id: text("boot_id", boot_id)?,
            mark,
        })
    }

    /// The mark of a planned handoff, if it is live at `now_ms` (written during this boot)
    /// and does not admit `candidate`.
    fn reserved(&self, candidate: &str, now_ms: i64, boot_id: &str) -> Option<HandoffMark> {
        let (to, from, until) = self.mark.as_deref()?;
        let until = (*until)?;
        if self.boot_id.as_deref() != Some(boot_id) {
            return None;
        }
        let left = until.checked_sub(now_ms).filter(|left| *left > 0)?;
        let mark = HandoffMark::new(
            (!to.is_empty()).then(|| to.clone()),
            from.clone(),
            Duration::from_millis(u64::try_from(left).unwrap_or_default()),
        );
        (!mark.admits(candidate)).then_some(mark)
    }

    /// The handoff under way at this row at `now_ms`: a request of its live holder, or a live
    /// mark on the freed row.
    fn pending(&self, now_ms: i64, boot_id: &str) -> Option<PendingHandoff> {
        if let Some(record) = self.live(now_ms, boot_id) {
            let (to, _, until) = self.mark.as_deref()?;
            return until.is_none().then(|| PendingHandoff::Requested {
                holder: record.holder,
                to: (!to.is_empty()).then(|| to.clone()),
            });
        }
        // `reserved` answers only for candidates the mark does not admit; its leaver is never
        // admitted by a mark to anyone, nor by one to someone else.
        let (_, from, _) = self.mark.as_deref()?;
        let from = from.clone();
        self.reserved(&from, now_ms, boot_id)
            .map(PendingHandoff::Reserved)
    }

    /// The lease this row records, if it is held, was written during this boot, and has not
    /// expired at `now_ms`. Mirrors the `WHERE` clause of [`ACQUIRE`], negated.
    fn live(&self, now_ms: i64, boot_id: &str) -> Option<LeaseRecord> {
        let holder = self.holder.as_ref()?;
        if self.boot_id.as_deref() != Some(boot_id) {
            return None;
        }
        let left = self.expires_at_ms.unwrap_or(0).checked_sub(now_ms)?;
        if left <= 0 {
            return None;
        }
        Some(LeaseRecord {
            holder: holder.clone(),
            token: FencingToken(self.token),
            ttl: Duration::from_millis(u64::try_from(left).unwrap_or_default()),
        })
    }
}

/// A value, described for an error message.
fn describe(v: &Value) -> String {
    match v {
        Value::Null => "NULL".to_owned(),
        Value::Integer(i) => format!("the integer {i}"),
        Value::Real(r) => format!("the real number {r}"),
        Value::Text(s) => {
            let short: String = s.chars().take(40).collect();
            let more = if short.len() < s.len() { "..." } else { "" };
            format!("the text {short:?}{more}")
        }
        Value::Blob(b) => format!("a blob of {} bytes", b.len()),
    }
}

/// Milliseconds of the boot-time clock.
fn now_ms() -> i64 {
    i64::try_from(boot_time().as_millis()).unwrap_or(i64::MAX)
}

/// A TTL in whole milliseconds, rounded up: the store may keep a lease a little longer than
/// asked, never shorter, because the engine's deadline assumes at least `ttl`.
fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_nanos().div_ceil(1_000_000)).unwrap_or(i64::MAX)
}

/// Set when the caller of [`SqliteStore::run`] stops waiting (its future is dropped).
#[derive(Default)]
struct CallerGone(Arc<AtomicBool>);

impl Drop for CallerGone {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// The call in progress on a connection, shared with the connection's busy handler.
struct Call {
    /// How long it may wait for the write lock, in milliseconds (at most [`BUSY_TIMEOUT`]).
    limit_ms: AtomicU64,
    /// Whether its caller has stopped waiting for it.
    gone: Mutex<Arc<AtomicBool>>,
}

impl Default for Call {
    fn default() -> Self {
        Call {
            limit_ms: AtomicU64::new(millis(BUSY_TIMEOUT)),
            gone: Mutex::new(Arc::default()),
        }
    }
}

impl Call {
    fn begin(&self, limit: Duration, gone: Arc<AtomicBool>) {
        self.limit_ms
            .store(millis(limit.min(BUSY_TIMEOUT)), Ordering::Relaxed);
        *self.gone.lock().unwrap_or_else(PoisonError::into_inner) = gone;
    }

    fn limit(&self) -> Duration {
        Duration::from_millis(self.limit_ms.load(Ordering::Relaxed)).min(BUSY_TIMEOUT)
    }

    fn caller_gone(&self) -> bool {
        self.gone
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .load(Ordering::Acquire)
    }
}

/// A duration in whole milliseconds, saturating.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A token as SQLite stores it, or `None` if it is too large for any row to hold.
fn sql_token(token: FencingToken) -> Option<i64> {
    i64::try_from(token.0).ok()
}

// ---------------------------------------------------------------------------------------------
// Opening the file.

/// Refuse paths SQLite would mishandle, before SQLite sees them: a missing directory (SQLite
/// would report only "unable to open"), a directory, and a file that is not a database.
fn check_location(path: &Path) -> Result<()> {
    if path.as_os_str().is_empty() {
        return Err(Error::Config(
            "the sqlite store needs a file path, e.g. sqlite:/var/lib/myapp/baton.db".to_owned(),
        ));
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(Error::Config(format!(
            "the directory {} for the SQLite lease file {} does not exist: create it (Baton does not create directories) or choose another path",
            dir.display(),
            path.display()
        )));
    }
    if path.is_dir() {
        return Err(Error::Config(format!(
            "{} is a directory: the sqlite store needs a file path, e.g. {}",
            path.display(),
            path.join("baton.db").display()
        )));
    }
    let mut header = Vec::with_capacity(SQLITE_HEADER.len());
    match std::fs::File::open(path) {
        Ok(file) => {
            let read = file
                .take(SQLITE_HEADER.len() as u64)
                .read_to_end(&mut header);
            if let Err(e) = read {
                return Err(Error::unavailable(
                    STORE,
                    format!("cannot read {}: {e}", path.display()),
                    e,
                ));
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            return Err(Error::Config(format!(
                "cannot read the SQLite lease file {}: permission denied; make it readable and writable by this user, or choose another path",
                path.display()
            )));
        }
        Err(e) => {
            return Err(Error::unavailable(
                STORE,
                format!("cannot open {}: {e}", path.display()),
                e,
            ));
        }
    }
    // SQLite treats an empty file as an empty database; anything else must carry its header.
    if !header.is_empty() && header.as_slice() != SQLITE_HEADER {
        return Err(not_a_database(path));
    }
    Ok(())
}

fn not_a_database(path: &Path) -> Error {
    Error::ForeignData {
        key: path.display().to_string(),
        found: "a file that is not an SQLite database; point the sqlite store at another file"
            .to_owned(),
    }
}

/// Open a connection, set it up, and make sure the file holds Baton's table.
fn connect(path: &Path, call: Arc<Call>) -> Result<Connection> {
    let fail = |doing: &'static str| move |e| sqlite_error(path, doing, Phase::Open, e);
    // Not SQLITE_OPEN_URI: the path is a file name, whatever it looks like.
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = Connection::open_with_flags(path, flags).map_err(fail("opening"))?;
    conn.busy_handler(Some(wait_for_lock(call)))
        .map_err(fail("setting up"))?;
    if conn
        .is_readonly(rusqlite::MAIN_DB)
        .map_err(fail("opening"))?
    {
        return Err(Error::Config(format!(
            "the SQLite lease file {} is read-only for this user: make it and its directory writable, or choose another path",
            path.display()
        )));
    }
    let mode: String =
        retry_busy(|| conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0)))
            .map_err(fail("switching to WAL mode"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::Config(format!(
            "the sqlite store needs a file on a local disk that supports WAL mode, but {} stays in {mode:?} mode; choose a file path on a local file system (not :memory:)",
            path.display()
        )));
    }
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(fail("setting up"))?;
    retry_busy(|| conn.execute_batch(CREATE_TABLE))
        .map_err(fail("creating the baton_leases table in"))?;
    check_table(&conn, path)?;
    retry_busy(|| conn.execute_batch(CREATE_CANDIDATES))
        .map_err(fail("creating the baton_candidates table in"))?;
    check_candidates_table(&conn, path)?;
    Ok(conn)
}

/// Run a setup step, retrying for up to [`BUSY_TIMEOUT`] while another connection holds a
/// lock it needs. Switching a new file to WAL mode takes an exclusive lock, and SQLite reports
/// that conflict at once instead of calling the busy handler, so several processes opening a
/// new file at the same moment would otherwise fail (found by `baton run` started three times
/// at once on a fresh file).
fn retry_busy<T>(mut step: impl FnMut() -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    let deadline = Instant::now() + BUSY_TIMEOUT;
    loop {
        match step() {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if matches!(e.code, ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(1 + fastrand::u64(0..5)));
            }
            other => return other,
        }
    }
}

/// Make sure `baton_leases` is the table [`CREATE_TABLE`] makes, so Baton never writes into a
/// table it does not understand.
fn check_table(conn: &Connection, path: &Path) -> Result<()> {
    let fail = |e| sqlite_error(path, "checking the baton_leases table in", Phase::Open, e);
    let foreign = |found: String| Error::ForeignData {
        key: format!("{} (table baton_leases)", path.display()),
        found,
    };
    let kind: String = conn.query_row(TABLE_KIND, [], |r| r.get(0)).map_err(fail)?;
    if kind != "table" {
        return Err(foreign(format!(
            "a {kind} named baton_leases; drop it or point the sqlite store at another file"
        )));
    }
    let mut columns = table_columns(conn).map_err(fail)?;
    let layout = |columns: &[Column], want: &[(&str, &str, bool, bool)]| {
        columns.len() == want.len()
            && columns.iter().zip(want).all(|(found, want)| {
                found.0 == want.0
                    && found.1.eq_ignore_ascii_case(want.1)
                    && found.2 == want.2
                    && found.3 == want.3
            })
    };
    let before_handoff = &COLUMNS[..COLUMNS.len() - HANDOFF_COLUMNS.len()];
    if layout(&columns, before_handoff) {
        // Baton's table from before planned handoffs: add their columns, under the write lock,
        // unless another process just did.
        let migrate = || -> rusqlite::Result<Vec<Column>> {
            conn.execute_batch("BEGIN IMMEDIATE")?;
            let result = (|| {
                let found = table_columns(conn)?;
                if layout(&found, before_handoff) {
                    for (name, ty) in HANDOFF_COLUMNS {
                        conn.execute_batch(&format!(
                            "ALTER TABLE baton_leases ADD COLUMN {name} {ty}"
                        ))?;
                    }
                }
                table_columns(conn)
            })();
            match result {
                Ok(found) => conn.execute_batch("COMMIT").map(|()| found),
                Err(e) => {
                    let _ = conn.execute_batch("ROLLBACK");
                    Err(e)
                }
            }
        };
        columns = retry_busy(migrate).map_err(|e| {
            sqlite_error(
                path,
                "adding the handoff columns to the baton_leases table in",
                Phase::Open,
                e,
            )
        })?;
    }
    let matches = layout(&columns, &COLUMNS);
    if !matches {
        let found: Vec<String> = columns
            .iter()
            .map(|(name, ty, _, _)| format!("{name} {ty}").trim().to_owned())
            .collect();
        return Err(foreign(format!(
            "a baton_leases table with columns ({}) where Baton expects ({}); rename that table or point the sqlite store at another file",
            found.join(", "),
            COLUMNS
                .iter()
                .map(|(name, ty, _, _)| format!("{name} {ty}"))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(())
}

/// Make sure `baton_candidates` is the table [`CREATE_CANDIDATES`] makes.
fn check_candidates_table(conn: &Connection, path: &Path) -> Result<()> {
    let fail = |e| {
        sqlite_error(
            path,
            "checking the baton_candidates table in",
            Phase::Open,
            e,
        )
    };
    let columns: Vec<Column> = conn
        .prepare(
            "SELECT name, type, \"notnull\", pk FROM pragma_table_info('baton_candidates') ORDER BY cid",
        )
        .and_then(|mut st| {
            st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get::<_, i64>(3)? > 0)))?
                .collect()
        })
        .map_err(fail)?;
    let matches = columns.len() == CANDIDATE_COLUMNS.len()
        && columns.iter().zip(&CANDIDATE_COLUMNS).all(|(found, want)| {
            found.0 == want.0
                && found.1.eq_ignore_ascii_case(want.1)
                && found.2 == want.2
                && found.3 == want.3
        });
    if matches {
        return Ok(());
    }
    Err(Error::ForeignData {
        key: format!("{} (table baton_candidates)", path.display()),
        found: format!(
            "a baton_candidates table with columns ({}) where Baton expects (key, candidate, priority, expires_at_ms, boot_id); rename that table or point the sqlite store at another file",
            columns
                .iter()
                .map(|(name, ty, _, _)| format!("{name} {ty}").trim().to_owned())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    })
}

/// A column as `PRAGMA table_info` reports it: name, declared type, NOT NULL, primary key.
type Column = (String, String, bool, bool);

fn table_columns(conn: &Connection) -> rusqlite::Result<Vec<Column>> {
    let mut st = conn.prepare(TABLE_INFO)?;
    st.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, bool>(2)?,
            r.get::<_, i64>(3)? > 0,
        ))
    })
    .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
}

/// A busy handler that retries every millisecond, for as long as the call in progress may
/// wait, and stops as soon as its caller has gone.
///
/// SQLite's own busy timeout backs off to 100 ms between tries, which adds milliseconds to
/// tens of milliseconds to a handoff whenever the follower arrives while the releasing commit
/// is still in flight (the file watch fires while the commit writes). Write transactions here
/// last about one `fsync`, so polling the lock often is cheap.
fn wait_for_lock(call: Arc<Call>) -> impl FnMut(i32) -> bool + Send + 'static {
    let mut deadline = Instant::now();
    move |attempt| {
        if attempt == 0 {
            deadline = Instant::now() + call.limit();
        }
        if Instant::now() >= deadline || call.caller_gone() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
        true
    }
}

/// The id of the boot this process runs in.
///
/// On Linux it must be readable: without it, a lease written before a reboot could not be told
/// from a current one, and a process that guessed wrong could take a lease that is still held.
fn current_boot_id() -> Result<String> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        match std::fs::read_to_string(BOOT_ID_PATH) {
            Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_owned()),
            Ok(_) => Err(Error::Config(format!(
                "{BOOT_ID_PATH} is empty; the sqlite store needs the boot id to judge leases across reboots: mount /proc, or use another store"
            ))),
            Err(e) => Err(Error::Config(format!(
                "cannot read {BOOT_ID_PATH} ({e}); the sqlite store needs the boot id to judge leases across reboots: mount /proc, or use another store"
            ))),
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = BOOT_ID_PATH;
        Ok("unknown".to_owned())
    }
}

/// When an error happened, which decides what it means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// In [`SqliteStore::open`]: a problem that will not go away is a configuration error.
    Open,
    /// Before a commit: nothing was written.
    Use,
    /// During a commit: the write may or may not have happened.
    Commit,
}

/// Map a SQLite error to Baton's, with a message that says what is wrong and how to fix it.
fn sqlite_error(path: &Path, doing: &str, phase: Phase, e: rusqlite::Error) -> Error {
    let file = path.display();
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.display().to_string(),
        _ => ".".to_owned(),
    };
    let code = e.sqlite_error_code();
    if code == Some(ErrorCode::NotADatabase) {
        return not_a_database(path);
    }
    let (message, lasting) = match code {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => (
            format!(
                "{doing} {file}: another connection kept the database locked longer than this call could wait (at most {}s); find the process holding a long write transaction on it (an open `sqlite3` shell?)",
                BUSY_TIMEOUT.as_secs()
            ),
            false,
        ),
        Some(ErrorCode::CannotOpen) => (
            format!(
                "{doing} {file}: cannot open the file or its -wal/-shm files ({e}); make sure this user may create and write files in {dir}"
            ),
            true,
        ),
        Some(ErrorCode::PermissionDenied | ErrorCode::ReadOnly) => (
            format!(
                "{doing} {file}: permission denied ({e}); make the file, its -wal/-shm files and {dir} writable by this user"
            ),
            true,
        ),
        Some(ErrorCode::DiskFull) => (
            format!("{doing} {file}: the disk is full; free some space"),
            false,
        ),
        Some(ErrorCode::DatabaseCorrupt) => (
            format!(
                "{doing} {file}: the database is corrupt ({e}); stop every process using it, then restore it or delete it (deleting restarts fencing tokens at 1)"
            ),
            true,
        ),
        _ => (format!("{doing} {file} failed: {e}"), false),
    };
    match phase {
        Phase::Open if lasting => Error::Config(message),
        Phase::Commit => Error::indeterminate(STORE, message, e),
        Phase::Open | Phase::Use => Error::unavailable(STORE, message, e),
    }
}

// ---------------------------------------------------------------------------------------------
// Change notices.

/// Every [`Feed`] of this process, by canonical file path, so that all stores of one file share
/// one feed and one file watch.
static FEEDS: LazyLock<Mutex<HashMap<PathBuf, Weak<Feed>>>> = LazyLock::new(Default::default);

/// A hint that the file changed, for one key or (from the file watch) for any key.
#[derive(Debug, Clone)]
struct Notice {
    key: Option<Arc<str>>,
    change: Change,
}

/// Change notices for one database file in this process.
#[derive(Debug)]
struct Feed {
    /// The canonical path of the database file.
    file: PathBuf,
    notices: broadcast::Sender<Notice>,
    /// The file watch, while some subscription uses it.
    file_watch: Mutex<Weak<FileWatch>>,
}

impl Feed {
    /// The feed for `file` (a canonical path), shared with every other store of this process
    /// that opened it.
    fn for_file(file: PathBuf) -> Arc<Feed> {
        let mut feeds = FEEDS.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(feed) = feeds.get(&file).and_then(Weak::upgrade) {
            return feed;
        }
        feeds.retain(|_, feed| feed.strong_count() > 0);
        let feed = Arc::new(Feed {
            file: file.clone(),
            notices: broadcast::channel(64).0,
            file_watch: Mutex::new(Weak::new()),
        });
        feeds.insert(file, Arc::downgrade(&feed));
        feed
    }

    /// Tell this process's watchers of `key` about a change made through this process.
    fn publish(&self, key: &str, change: Change) {
        let _ = self.notices.send(Notice {
            key: Some(key.into()),
            change,
        });
    }

    /// Changes to `key`, or `None` if the file cannot be watched: then only changes made by this
    /// process would be seen, and a caller told "no push" polls or sleeps until the expiry
    /// instead of waiting for a notice that would never come.
    ///
    /// With `settle` (an observer's stream), a change seen through the file watch is yielded
    /// only once the write in flight has finished, on `settle`'s connection (see the module
    /// documentation, *Push*).
    fn subscribe(self: &Arc<Self>, key: &str, settle: Option<SqliteStore>) -> Option<Changes> {
        // Subscribe before the file watch starts, so nothing in between is missed.
        let notices = self.notices.subscribe();
        let file_watch = match self.file_watch() {
            Ok(w) => w,
            Err(e) => {
                debug!(file = %self.file.display(), error = %e,
                    "cannot watch the SQLite lease file; watchers fall back to timers");
                return None;
            }
        };
        let subscription = Subscription {
            key: key.into(),
            notices,
            settle,
            _feed: Arc::clone(self),
            _file_watch: file_watch,
        };
        Some(Box::pin(futures_util::stream::unfold(
            subscription,
            |mut s| async move { s.next().await.map(|change| (change, s)) },
        )))
    }

    /// The running file watch, started if none is.
    fn file_watch(&self) -> notify::Result<Arc<FileWatch>> {
        let mut slot = self
            .file_watch
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(w) = slot.upgrade() {
            return Ok(w);
        }
        let w = Arc::new(FileWatch::start(&self.file, self.notices.clone())?);
        *slot = Arc::downgrade(&w);
        Ok(w)
    }
}

/// A file-system watch on the directory of a database file, reporting writes to the file and
/// its journals (made by any process) as [`Change::Other`]. Stops when dropped.
#[derive(Debug)]
struct FileWatch {
    _watcher: notify::RecommendedWatcher,
}

impl FileWatch {
    fn start(file: &Path, notices: broadcast::Sender<Notice>) -> notify::Result<FileWatch> {
        let (Some(dir), Some(name)) = (file.parent(), file.file_name()) else {
            return Err(notify::Error::path_not_found().add_path(file.to_path_buf()));
        };
        // A commit writes to the WAL; a checkpoint, or a connection in rollback mode, writes
        // the file itself.
        let names: Vec<OsString> = ["", "-wal", "-journal"]
            .iter()
            .map(|suffix| {
                let mut n = name.to_os_string();
                n.push(suffix);
                n
            })
            .collect();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let relevant = match &event {
                    Ok(event) => {
                        event.need_rescan()
                            || (is_write(&event.kind)
                                && event.paths.iter().any(|p| {
                                    p.file_name().is_some_and(|n| names.iter().any(|x| x == n))
                                }))
                    }
                    Err(e) => {
                        // Something may have been missed: wake the watchers to re-read.
                        debug!(error = %e, "error watching the SQLite lease file");
                        true
                    }
                };
                if relevant {
                    let _ = notices.send(Notice {
                        key: None,
                        change: Change::Other,
                    });
                }
            })?;
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
        Ok(FileWatch { _watcher: watcher })
    }
}

/// Whether an event can mean new data. Opening, reading and closing the file cannot.
fn is_write(kind: &notify::EventKind) -> bool {
    use notify::EventKind;
    matches!(
        kind,
        EventKind::Create(_)
            | EventKind::Modify(_)
            | EventKind::Remove(_)
            | EventKind::Any
            | EventKind::Other
    )
}

/// One [`Changes`] stream: the notices for its key. It keeps the feed and the file watch alive.
struct Subscription {
    key: Arc<str>,
    notices: broadcast::Receiver<Notice>,
    /// For an observer: the store on whose connection to wait for the write behind a file
    /// event before yielding it.
    settle: Option<SqliteStore>,
    _feed: Arc<Feed>,
    _file_watch: Arc<FileWatch>,
}

impl Subscription {
    /// The next change. Notices already queued behind it are folded into one
    /// [`Change::Other`], so a burst of file events (one commit writes several pages) wakes a
    /// follower once rather than once per page.
    ///
    /// An observer's stream yields a change seen through the file watch (or a burst that may
    /// contain one) only once the write behind it is visible.
    async fn next(&mut self) -> Option<Change> {
        let first = loop {
            match self.notices.recv().await {
                Ok(notice) if self.concerns(&notice) => break notice,
                Ok(_) => {}
                // A watcher that fell behind only needs to know that something changed.
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    break Notice {
                        key: None,
                        change: Change::Other,
                    };
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        };
        let mut burst = false;
        loop {
            match self.notices.try_recv() {
                Ok(notice) => burst |= self.concerns(&notice),
                Err(broadcast::error::TryRecvError::Lagged(_)) => burst = true,
                Err(_) => break,
            }
        }
        // Notices published by this process's stores follow their commit; file events may
        // precede it.
        if let Some(store) = &self.settle
            && (burst || first.key.is_none())
        {
            let settled = store
                .run(false, SETTLE_TIMEOUT, |inner, conn| {
                    inner.wait_for_writers(conn)
                })
                .await;
            if let Err(e) = settled {
                debug!(error = %e, "could not wait for a write to finish; yielding the change anyway");
            }
        }
        Some(if burst { Change::Other } else { first.change })
    }

    fn concerns(&self, notice: &Notice) -> bool {
        notice.key.as_ref().is_none_or(|k| *k == self.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An acquisition that got the write lock just as its caller gave up (the engine's timeout)
    /// is released at once, not left holding the lease for a whole TTL with nobody acting on it
    /// (found by scripts/chaos: sqlite slow-store seed 100015, kill-leader seed 100017).
    #[tokio::test(flavor = "multi_thread")]
    async fn an_acquire_whose_caller_gave_up_is_released_slow_store_seed_100015() {
        let dir = std::env::temp_dir().join(format!("baton-sqlite-undo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = SqliteStore::open(dir.join("leases.db")).unwrap();
        let (acquired_tx, acquired_rx) = tokio::sync::oneshot::channel::<()>();
        let (go_on_tx, go_on_rx) = std::sync::mpsc::channel::<()>();
        let call = store.run_or_undo(
            true,
            BUSY_TIMEOUT,
            move |inner, conn| {
                let result = inner.try_acquire(conn, "jobs", "ghost", Duration::from_secs(60));
                let _ = acquired_tx.send(());
                // Stay in the call until the caller has gone, as a slow commit would.
                let _ = go_on_rx.recv();
                result
            },
            Inner::undo_acquire,
        );
        tokio::select! {
            _ = call => panic!("the call cannot finish before it is told to go on"),
            _ = acquired_rx => {}
        }
        // The caller's future is gone; the call finishes now.
        go_on_tx.send(()).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            match store.read("jobs").await.unwrap() {
                None => break,
                Some(record) => {
                    assert_eq!(record.holder, "ghost");
                    assert!(
                        std::time::Instant::now() < deadline,
                        "the lease acquired for a caller that gave up is still held: {record:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
        // The key is free for the next candidate at once, and the token goes on increasing.
        let mut next = store.join("jobs", "next").await.unwrap();
        match next.try_acquire(Duration::from_secs(60)).await.unwrap() {
            Acquire::Acquired(lease) => assert_eq!(lease.token, FencingToken(2)),
            other => panic!("still held: {other:?}"),
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
