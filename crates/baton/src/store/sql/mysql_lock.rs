//! MySQL/MariaDB push: a named lock per term as the followers' wake-up signal
//! (docs/decisions.md D110).
//!
//! The leader of a key holds the server's named lock [`lock_name`]`(key, token)` for as long as
//! its term lasts, on the one connection its store keeps for its leaders' locks
//! ([`TermLocks`]), and releases it right after the `UPDATE` that frees the row. A follower's store blocks in `GET_LOCK` on that name
//! on a connection of its own ([`LockWait`]), one per watched key and store (not per
//! candidate: the store's candidates share it, and [`store::wake`](crate::store::wake) wakes
//! one of them), so the release wakes it at once, without polling.
//!
//! The lock is only a signal. The row stays the truth for holders, tokens and expiry: a
//! follower that wakes reads the row, and acquires only by the same conditional `UPDATE` as
//! ever. A lock can be released without the row being freed (the leader's lock connection
//! dropped, or its term ended by the deadline); the follower then finds the row still leased
//! and waits for its expiry as before. Where no one holds the lock of the row's term (a leader
//! whose lock connection failed, a Baton without push, the moment between an acquire and its
//! lock), the watch reads the row every poll interval, as it did before push.

use std::sync::Arc;
use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlConnection};
use sqlx::{Connection, Row};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::time::Instant;
use tracing::debug;

/// How long an acquire that began a term waits for its lock to be held; the lock is one round
/// trip on a connection opened when the candidacy joined, so this bounds only the unexpected.
const HOLD_WAIT: Duration = Duration::from_millis(100);

/// How long a release waits for the server to drop the lock (it goes on without waiting
/// longer: followers then wake when it is dropped, or at the lease's end).
const RELEASE_WAIT: Duration = Duration::from_millis(500);

/// The longest a follower's store blocks in `GET_LOCK` before it reads the row anyway.
const LONGEST_BLOCK: Duration = Duration::from_secs(30);

/// How many keys a store waits on at once, each on a connection of its own; the store's other
/// watched keys are polled (the fallback), so a process watching thousands of keys does not
/// open thousands of connections.
pub(crate) const MAX_WAITING_KEYS: usize = 16;

/// How long a follower's store waits before it connects again after a failed connection.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

/// The name of the lock the leader of `key` holds during its term `token`:
/// `baton.<16 hex digits>.<token>`, the digits a 64-bit FNV-1a hash of the database, the
/// table and the key. Named locks are server-wide, and MySQL allows at most 64 characters; this
/// is at most 43. A hash collision (another key, the same token) costs only a spurious wake-up.
pub(crate) fn lock_name(database: &str, table: &str, key: &str, token: u64) -> String {
    format!("baton.{:016x}.{token}", hash(database, table, key))
}

/// The name of the lock under which a store adds the handoff columns to an older lease
/// table: `baton.<16 hex digits of the database and table>.migrate` (no term lock ends so).
pub(crate) fn migration_lock_name(database: &str, table: &str) -> String {
    format!("baton.{:016x}.migrate", hash(database, table, ""))
}

/// The 64-bit FNV-1a hash of the database, the table and the key.
fn hash(database: &str, table: &str, key: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, part) in [database, table, key].iter().enumerate() {
        if i > 0 {
            // 0xff never occurs in UTF-8, so ("ab", "c") and ("a", "bc") differ.
            hash = (hash ^ 0xff).wrapping_mul(0x0100_0000_01b3);
        }
        for byte in part.bytes() {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

async fn connect(options: &MySqlConnectOptions) -> Result<MySqlConnection, sqlx::Error> {
    MySqlConnection::connect_with(options).await
}

// ---------------------------------------------------------------------------------------------
// The leader's side.

/// How many times the holder tries a lock that is busy (a watching store holds it for the
/// instant of one statement), and how long it waits between tries.
const HOLD_TRIES: u32 = 50;
const HOLD_RETRY: Duration = Duration::from_millis(2);

enum Command {
    /// Take this lock for a term that just began, and say when done.
    Hold(String, oneshot::Sender<()>),
    /// Drop this lock, and say when done.
    Release(String, oneshot::Sender<()>),
}

/// The term locks of a store's leaders, all held on one connection of the store's own by one
/// task (named locks are per session, and a session may hold many), so that taking one never
/// delays the acquire that began the term, and a store with 10,000 leaders opens one
/// connection for them, not 10,000. Dropping this drops the connection, and with it the locks.
#[derive(Debug)]
pub(crate) struct TermLocks {
    commands: mpsc::UnboundedSender<Command>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TermLocks {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TermLocks {
    pub fn new(options: Arc<MySqlConnectOptions>) -> TermLocks {
        let (commands, rx) = mpsc::unbounded_channel();
        TermLocks {
            commands,
            task: tokio::spawn(hold_locks(options, rx)),
        }
    }

    /// Take lock `name` for the term that just began; waits for the server's answer, at most
    /// [`HOLD_WAIT`] (the lock is then taken in the background).
    pub async fn hold(&self, name: String) {
        let (done, taken) = oneshot::channel();
        if self.commands.send(Command::Hold(name, done)).is_ok() {
            let _ = tokio::time::timeout(HOLD_WAIT, taken).await;
        }
    }

    /// Drop lock `name` (in the background).
    pub fn release_soon(&self, name: String) {
        let (done, _) = oneshot::channel();
        let _ = self.commands.send(Command::Release(name, done));
    }

    /// Drop lock `name`, which wakes the followers; waits for the server's answer, at most
    /// [`RELEASE_WAIT`].
    pub async fn release(&self, name: String) {
        let (done, confirmed) = oneshot::channel();
        if self.commands.send(Command::Release(name, done)).is_ok() {
            let _ = tokio::time::timeout(RELEASE_WAIT, confirmed).await;
        }
    }
}

async fn hold_locks(options: Arc<MySqlConnectOptions>, mut rx: mpsc::UnboundedReceiver<Command>) {
    // Connected at once, so the first term does not wait for it.
    let mut conn: Option<MySqlConnection> = match connect(&options).await {
        Ok(c) => Some(c),
        Err(e) => {
            debug!(error = %e, "no connection for term locks yet; followers poll");
            None
        }
    };
    while let Some(command) = rx.recv().await {
        match command {
            Command::Release(name, done) => {
                if let Some(c) = conn.as_mut()
                    && let Err(e) = sqlx::query("DO RELEASE_LOCK(?)")
                        .bind(&name)
                        .execute(c)
                        .await
                {
                    // The connection's end drops every lock it held.
                    debug!(lock = name, error = %e, "releasing a term lock failed; dropping the connection");
                    conn = None;
                }
                let _ = done.send(());
            }
            Command::Hold(name, done) => {
                if conn.is_none() {
                    match connect(&options).await {
                        Ok(c) => conn = Some(c),
                        Err(e) => {
                            debug!(lock = name, error = %e, "no connection for term locks; followers poll");
                            continue;
                        }
                    }
                }
                let Some(c) = conn.as_mut() else { continue };
                let mut tries = 0;
                loop {
                    tries += 1;
                    match sqlx::query_scalar::<_, Option<i64>>("SELECT GET_LOCK(?, 0)")
                        .bind(&name)
                        .fetch_one(&mut *c)
                        .await
                    {
                        Ok(Some(1)) => break,
                        Ok(_) if tries < HOLD_TRIES => tokio::time::sleep(HOLD_RETRY).await,
                        Ok(other) => {
                            debug!(lock = name, result = ?other, "a term lock stayed busy; followers poll");
                            break;
                        }
                        Err(e) => {
                            debug!(lock = name, error = %e, "taking a term lock failed; followers poll");
                            conn = None;
                            break;
                        }
                    }
                }
                let _ = done.send(());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The followers' side.

/// What ended a [`LockWait::wait`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Woken {
    /// The lock was held and has been released (or its holder's connection ended).
    Released,
    /// The lock is still held after the time given.
    TimedOut,
    /// No one held the lock: no push for this term.
    NotHeld,
    /// No connection, or the statement failed.
    Failed,
}

/// A connection of a store's own on which it blocks until a term's lock is released: one per
/// watched key, at most [`MAX_WAITING_KEYS`] per store (`permits`).
pub(crate) struct LockWait {
    options: Arc<MySqlConnectOptions>,
    permits: Arc<Semaphore>,
    permit: Option<OwnedSemaphorePermit>,
    conn: Option<MySqlConnection>,
    /// MariaDB takes fractions of a second as `GET_LOCK`'s timeout; MySQL is given whole ones.
    mariadb: bool,
    connect_after: Option<Instant>,
}

impl LockWait {
    pub fn new(options: Arc<MySqlConnectOptions>, permits: Arc<Semaphore>) -> LockWait {
        LockWait {
            options,
            permits,
            permit: None,
            conn: None,
            mariadb: false,
            connect_after: None,
        }
    }

    /// Block until lock `name` is released, or for `longest` (at most [`LONGEST_BLOCK`]);
    /// return at once if no one holds it. The lock is taken for the instant of the statement
    /// only (`GET_LOCK` and `RELEASE_LOCK` in one `SELECT`, evaluated left to right).
    /// Take a permit and connect, unless done already (or tried less than
    /// [`RECONNECT_AFTER`] ago); whether there is a connection to wait on.
    pub async fn connect(&mut self) -> bool {
        if self.permit.is_none() {
            match Arc::clone(&self.permits).try_acquire_owned() {
                Ok(permit) => self.permit = Some(permit),
                // The store waits on as many keys as it may: this one is polled.
                Err(_) => return false,
            }
        }
        if self.conn.is_some() {
            return true;
        }
        if self.connect_after.is_some_and(|t| Instant::now() < t) {
            return false;
        }
        match connect(&self.options).await {
            Ok(mut c) => {
                let version: Result<String, _> =
                    sqlx::query_scalar("SELECT CAST(VERSION() AS CHAR)")
                        .fetch_one(&mut c)
                        .await;
                self.mariadb = version.is_ok_and(|v| v.contains("MariaDB"));
                self.conn = Some(c);
                self.connect_after = None;
                true
            }
            Err(e) => {
                debug!(error = %e, "no connection to wait for releases on; polling");
                self.connect_after = Some(Instant::now() + RECONNECT_AFTER);
                false
            }
        }
    }

    pub async fn wait(&mut self, name: &str, longest: Duration) -> Woken {
        if !self.connect().await {
            return Woken::Failed;
        }
        let Some(c) = self.conn.as_mut() else {
            return Woken::Failed;
        };
        let longest = longest.min(LONGEST_BLOCK);
        let query = sqlx::query("SELECT IS_FREE_LOCK(?), GET_LOCK(?, ?), RELEASE_LOCK(?)")
            .bind(name)
            .bind(name);
        let query = if self.mariadb {
            query.bind(longest.as_secs_f64())
        } else {
            // Whole seconds, rounded up: a wait never ends before `longest`.
            query.bind(i64::try_from(longest.as_millis().div_ceil(1000)).unwrap_or(30))
        };
        let row = match query.bind(name).fetch_one(&mut *c).await {
            Ok(row) => row,
            Err(e) => {
                debug!(lock = name, error = %e, "waiting for a release failed; polling");
                self.conn = None;
                return Woken::Failed;
            }
        };
        let free: Option<i64> = row.try_get(0).unwrap_or(None);
        let got: Option<i64> = row.try_get(1).unwrap_or(None);
        let released: Option<i64> = row.try_get(2).unwrap_or(None);
        if got == Some(1)
            && released != Some(1)
            && sqlx::query("DO RELEASE_LOCK(?)")
                .bind(name)
                .execute(&mut *c)
                .await
                .is_err()
        {
            self.conn = None;
        }
        match (free, got) {
            (Some(1), _) => Woken::NotHeld,
            (_, Some(1)) => Woken::Released,
            (_, Some(0)) => Woken::TimedOut,
            _ => Woken::Failed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_names_fit_and_tell_keys_apart() {
        let long = "k".repeat(255);
        let name = lock_name("test", "baton_leases", &long, u64::MAX);
        assert!(name.len() <= 64, "{name}");
        assert_eq!(name, lock_name("test", "baton_leases", &long, u64::MAX));
        assert_ne!(
            lock_name("test", "t", "ab", 1),
            lock_name("test", "ta", "b", 1)
        );
        assert_ne!(
            lock_name("test", "t", "a", 1),
            lock_name("test", "t", "a", 2)
        );
        assert_ne!(lock_name("a", "t", "k", 1), lock_name("b", "t", "k", 1));
        // Stable across builds and processes: every Baton computes the same name.
        assert_eq!(
            lock_name("test", "baton_leases", "jobs", 7),
            "baton.d4994b2b3482cd8f.7"
        );
    }
}
