//! MySQL and MariaDB: one conditional `UPDATE` per acquisition, expiry by the server's
//! `UTC_TIMESTAMP(6)`, and push handoff through a named lock (`GET_LOCK`) per term.
//!
//! # Layout
//!
//! One InnoDB table, `baton_leases` by default (`?table=NAME`), in the URL's database, one row
//! per election key. The same definition, with comments for DBAs, is in
//! `crates/baton/sql/mysql.sql`:
//!
//! | column | type | meaning |
//! |---|---|---|
//! | `key` | `VARCHAR(255) ... COLLATE utf8mb4_bin NOT NULL PRIMARY KEY` | the election key (at most 255 characters, compared exactly) |
//! | `holder` | `VARCHAR(255) ... COLLATE utf8mb4_bin`, `NULL` when free | the holder's candidate id |
//! | `token` | `BIGINT NOT NULL` | the last fencing token minted for the key (0 before the first acquisition) |
//! | `expires_at` | `DATETIME(6)`, `NULL` when free | when the lease ends, UTC, by the server's clock |
//! | `acquired_at` | `DATETIME(6)` | when it was last acquired (UTC), for humans |
//! | `renewed_at` | `DATETIME(6)` | when it was last renewed (UTC), for humans |
//! | `handoff_to` | `VARCHAR(255) ... COLLATE utf8mb4_bin` | a planned handoff's candidate (`''`: anyone but `handoff_from`) |
//! | `handoff_from` | `VARCHAR(255) ... COLLATE utf8mb4_bin` | the leader that handed over, or is asked to |
//! | `handoff_until` | `DATETIME(6)` | when the handoff's mark runs out (UTC, server's clock); `NULL` for a request |
//!
//! The binary collation matters: with MySQL's default case-insensitive one, keys `Jobs` and
//! `jobs` would be one election. A release sets `holder` and `expires_at` to `NULL` and keeps
//! the row, so `token` survives it. Rows whose `holder` and `expires_at` are not both set or
//! both `NULL`, whose `token` is negative or the largest `BIGINT` (no token can follow it), or
//! whose `expires_at` or `handoff_until` is a time the server cannot measure from now (the zero
//! date `0000-00-00`, which MariaDB's default `sql_mode` stores), were not written by Baton:
//! they give [`Error::ForeignData`] and are never written to.
//!
//! A second InnoDB table, `<table>_candidates` (`baton_leases_candidates`), keeps presence
//! records ([`LeaseStore::announce`], D134; see [presence records](super#presence-records)):
//!
//! | column | type | meaning |
//! |---|---|---|
//! | `key` | `VARCHAR(255) ... COLLATE utf8mb4_bin NOT NULL` | the election key |
//! | `candidate` | `VARCHAR(255) ... COLLATE utf8mb4_bin NOT NULL` | the candidate's id; `PRIMARY KEY (key, candidate)` |
//! | `priority` | `BIGINT NOT NULL` | its priority, 0 to 4294967295 |
//! | `expires_at` | `DATETIME(6) NOT NULL` | when the record ends (UTC, server's clock) |
//!
//! An announce is two statements, each atomic on its own: an upsert of its own record
//! (`INSERT ... ON DUPLICATE KEY UPDATE`), then a read of the key's records; a third, only
//! when that read found records that ran out, deletes them (checking their end again by the
//! server's clock). Presence never touches the lease table.
//!
//! # Planned handoff
//!
//! A handoff ([`Candidacy::hand_over`]) is the release's `UPDATE` that also fills the three
//! `handoff_` columns: the *mark*, with `handoff_until` the server's `UTC_TIMESTAMP(6)` plus
//! the window. Until then only `handoff_to` (or, for `''`, anyone but `handoff_from`) acquires:
//! the acquire's `UPDATE` matches no row for anyone else, and the read that follows (as for a
//! held key) answers [`Acquire::Reserved`] with the time the mark has left by the server's
//! clock. The acquisition that succeeds clears the columns in the same `UPDATE`, so a
//! successful acquire is still one statement. A mark that ran out is ignored. The handoff
//! drops the term lock like a release, and a woken follower's poller reports
//! [`Change::HandedOver`].
//!
//! A handoff asked for by any process ([`LeaseStore::request_handoff`], `baton handoff`) is
//! the same columns without an end on the held row (`handoff_from` = the holder), written by
//! one `UPDATE` matched on the holder and token just read, which does not touch holder, token
//! or expiry, and writes nothing when nobody holds the key or `to` already does. The renewal
//! learns of it without another statement in the usual case: its `UPDATE` calls
//! `LAST_INSERT_ID(1)` for a renewed row that carries a request, so its last insert id is 1
//! only then, and only then are the requests read ([`Renew::HandoffRequested`]). A release, a
//! handoff and the next acquisition clear a request. The request is pushed
//! ([`Change::HandoffRequested`]) to the candidates of the store that wrote it; a leader in
//! another process reads it at its next renewal (MySQL has no `NOTIFY`).
//!
//! Handoff columns Baton could not have written (a mark beside a holder, a request on a free
//! row or naming another holder, `handoff_until` without the others, ...) make the row
//! foreign: [`Error::ForeignData`], and every write's `WHERE` leaves such a row alone.
//!
//! # Setup
//!
//! As for PostgreSQL: on first use the table is looked up in `information_schema` and created
//! if missing (unless `create=false`); a user without `CREATE` gets a configuration error
//! pointing to the SQL file; an existing table must have exactly these columns (types,
//! nullability, primary key, `DATETIME(6)`, a `_bin` collation) or every call fails with
//! [`Error::ForeignData`] naming the difference. The one exception is Baton's own table from
//! before planned handoffs (the first six columns, exactly): the store adds the three
//! `handoff_` columns with one `ALTER TABLE ... ADD COLUMN`, under the named lock
//! `baton.<hash>.migrate` and after reading the columns again under it, so that of two stores
//! opening the table at once one adds them and the other finds them. No row is rewritten. A
//! user without `ALTER` on the table gets a configuration error quoting the statement to have
//! run. Baton never drops a table or changes a column. The user needs
//! `SELECT, INSERT, UPDATE` on the lease table and `SELECT, INSERT, UPDATE, DELETE` on the
//! presence table (and `CREATE` only if Baton is to create them). Without the presence table,
//! and without the right to create it (or with `create=false`), presence is off and nothing
//! fails. The presence table is checked as the lease table is (other columns, types,
//! collation or primary key: [`Error::ForeignData`] on the presence calls only).
//!
//! # Writes and time
//!
//! The acquisition is `ACQUIRE`: one `UPDATE` that takes the row only if it is free or
//! expired, bumps `token` and hands the new value back through `LAST_INSERT_ID(expr)`, all in
//! one atomic statement. A key without a row first gets a free one (`ENSURE_ROW`, which
//! changes nothing if the row exists). Renew and release match `holder` **and** `token`. The
//! renewals of a store's elections that fall due within a short window (at most 20 ms) go as
//! one `UPDATE` of up to 128 rows, each still matched on its own holder and token (D126).
//! Times are computed and compared with the server's `UTC_TIMESTAMP(6)` (not `NOW(6)`, which
//! follows each session's `time_zone`); Baton sends only durations.
//!
//! # Followers: woken by the leader's named lock
//!
//! MySQL has no `NOTIFY`. Instead the leader holds the server's named lock of its term,
//! `GET_LOCK('baton.<hash of database, table and key>.<token>')` ([`MysqlStore::term_lock_name`]),
//! from just after its acquire until just after its release, on the one connection its store
//! keeps for its leaders' locks. A watching store blocks in `GET_LOCK` on the same name on a
//! connection of its own (one per watched key and store, shared by the store's candidates and
//! observers, for at most 16 keys per store; the others are polled), so a release wakes it at
//! once; it then reads the row, and a candidate acquires by the usual conditional
//! `UPDATE`. A graceful handoff costs about four round trips: the release, the lock's release,
//! the read and the acquire. An idle follower sends no statements while it waits, except one
//! read when the lease it waits on was due to expire (the leader renewed it meanwhile).
//!
//! The lock is only a wake-up signal, never what safety rests on: a dropped connection releases
//! it, so a follower that wakes reads the row and finds it still leased (it then waits for the
//! lease as before), and fencing tokens and expiry come from the row alone. Where no one holds
//! the term's lock (a leader whose lock connection failed, a Baton version without push, the
//! moment between an acquire and its lock), the watch reads the key every `poll` interval
//! (default 25 ms, `?poll=DUR`), as all watches did before push. Changes made through the same
//! store object are delivered at once. Of a store's candidates, one answers a release; the
//! others wait for the winner (docs/decisions.md D41, D110).
//!
//! # Connections
//!
//! An sqlx pool of at most four connections per store, opened lazily, plus, outside the pool,
//! one connection for the store's leaders' term locks and one per watched key (at most 16) to
//! wait on them. A connection found dead
//! (`KILL`, a restart, a proxy) is replaced, and reads, renewals and releases are retried at
//! once on a fresh connection, so a killed connection costs no leadership.
//!
//! # URLs
//!
//! `mysql://[user[:password]@]host[:port]/database[?options]` (or `mariadb://`), with sqlx's
//! parameters: `ssl-mode=disabled|preferred|required|verify_ca|verify_identity`, `ssl-ca=PATH`,
//! `ssl-cert=PATH`, `ssl-key=PATH`, `socket=PATH`, plus Baton's `table=`, `create=` and
//! `poll=`. The database is required. TLS is rustls with the system's trust store plus the CA
//! that `ssl-ca` names ([TLS](super#tls)); a parameter sqlx does not know (say libpq's
//! `sslrootcert`) is ignored. The password never appears in errors, logs or [`StoreInfo`].

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::mysql::{MySqlConnectOptions, MySqlDatabaseError, MySqlPool, MySqlPoolOptions};
use sqlx::{AssertSqlSafe, Row};
use tokio::sync::OnceCell;
use tracing::debug;

use super::mysql_lock::{
    LockWait, MAX_WAITING_KEYS, TermLocks, Woken, lock_name, migration_lock_name,
};
use super::{
    Effect, Feed, Handoff, MAX_PRIORITY, SqlUrl, anyone, candidates_table, handoff_shape, left,
    lock, map_error, parse_handoff, pending, presence_rows, retrying, ttl_us,
};
use crate::store::batch::{self, Batcher};
use crate::store::{
    Acquire, Candidacy, Change, Changes, Lease, LeaseRecord, LeaseStore, PendingHandoff, Presence,
    Renew, StoreInfo,
};
use crate::{Error, FencingToken, Result};

/// The store's name in errors and [`StoreInfo`].
const STORE: &str = "mysql";

/// Where DBAs find the table definition.
const SQL_FILE: &str = "crates/baton/sql/mysql.sql in Baton's sources";

/// How often a follower's watch reads the key while no leader holds its term lock, unless the
/// URL says `poll=`.
pub const DEFAULT_POLL: Duration = Duration::from_millis(25);

/// The longest key and candidate id the table holds, in characters.
const MAX_LEN: usize = 255;

/// The lease table (`{t}` is the validated table name).
const CREATE_TABLE: &str = "
CREATE TABLE IF NOT EXISTS {t} (
    `key`       VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL PRIMARY KEY,
    holder      VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
    token       BIGINT NOT NULL,
    expires_at  DATETIME(6) NULL,
    acquired_at DATETIME(6) NULL,
    renewed_at  DATETIME(6) NULL,
    handoff_to    VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
    handoff_from  VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
    handoff_until DATETIME(6) NULL
) ENGINE=InnoDB";

/// The columns [`CREATE_TABLE`] makes: name, `COLUMN_TYPE` prefix, nullable, primary key. A
/// table with only the first six (Baton's before planned handoffs) gets the last three added
/// ([`ADD_HANDOFF_COLUMNS`]).
const COLUMNS: [(&str, &str, bool, bool); 9] = [
    ("key", "varchar(255)", false, true),
    ("holder", "varchar(255)", true, false),
    ("token", "bigint", false, false),
    ("expires_at", "datetime(6)", true, false),
    ("acquired_at", "datetime(6)", true, false),
    ("renewed_at", "datetime(6)", true, false),
    ("handoff_to", "varchar(255)", true, false),
    ("handoff_from", "varchar(255)", true, false),
    ("handoff_until", "datetime(6)", true, false),
];

/// The condition that a row is one Baton could have written, beyond its handoff columns
/// ([`handoff_shape`]): a token below the largest `BIGINT` (no token could follow it), and
/// times the server can compute with (MariaDB stores the zero date `0000-00-00`, whose distance
/// to now is `NULL`). Every write's `WHERE` includes it, so such a row is never written to;
/// [`Inner::select`] reports it as foreign data.
fn row_shape() -> String {
    format!(
        "{} AND token < {} AND (expires_at IS NULL OR {}) AND (handoff_until IS NULL OR {})",
        handoff_shape(""),
        i64::MAX,
        computable("expires_at"),
        computable("handoff_until"),
    )
}

/// The condition that the time in `column` is one the server can compute with: not the zero
/// date `0000-00-00` (MariaDB stores it), whose distance to any time is `NULL`.
fn computable(column: &str) -> String {
    format!("TIMESTAMPDIFF(MICROSECOND, '2000-01-01', {column}) IS NOT NULL")
}

/// How many of [`COLUMNS`] a table made before planned handoffs has.
const COLUMNS_BEFORE_HANDOFF: usize = 6;

/// Add the handoff columns to a table made before them (D133), in one statement. Run under a
/// named lock after reading the columns again, so two stores opening the table at once do not
/// both add them. No row is rewritten.
const ADD_HANDOFF_COLUMNS: &str = "ALTER TABLE {t} \
ADD COLUMN handoff_to VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL, \
ADD COLUMN handoff_from VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL, \
ADD COLUMN handoff_until DATETIME(6) NULL";

/// How long a store waits for another store's migration of the table (the named lock).
const MIGRATION_WAIT_S: i64 = 30;

/// The current database, and what kind of object table `?` is in it.
const TABLE_KIND: &str = "
SELECT CAST(DATABASE() AS CHAR),
       (SELECT CAST(table_type AS CHAR) FROM information_schema.tables
        WHERE table_schema = DATABASE() AND table_name = ?)";

/// The columns of table `?` in the current database.
const TABLE_COLUMNS: &str = "
SELECT CAST(column_name AS CHAR), CAST(column_type AS CHAR), CAST(is_nullable AS CHAR),
       CAST(column_key AS CHAR), CAST(COALESCE(collation_name, '') AS CHAR)
FROM information_schema.columns
WHERE table_schema = DATABASE() AND table_name = ?
ORDER BY ordinal_position";

/// The row at key `?`: holder, token, whether it has an expiry, microseconds left; then the
/// handoff columns, with the microseconds the mark has left.
const SELECT_LEASE: &str = "
SELECT holder, token, CAST(expires_at IS NOT NULL AS SIGNED),
       CAST(TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), expires_at) AS SIGNED),
       handoff_to, handoff_from, CAST(handoff_until IS NOT NULL AS SIGNED),
       CAST(TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), handoff_until) AS SIGNED)
FROM {t} WHERE `key` = ?";

/// A free row for key `?` with token 0, unless the key has a row.
const ENSURE_ROW: &str =
    "INSERT INTO {t} (`key`, token) VALUES (?, 0) ON DUPLICATE KEY UPDATE token = token";

/// Take the row of key `?3` for candidate `?1` for `?2` µs if it is free or expired and no
/// live handoff mark keeps the candidate (`?4`, `?5`) out, bumping the token and clearing the
/// handoff columns; the new token comes back as the statement's last insert id. (`WHERE` sees
/// the row as it was; the assignments run left to right.)
const ACQUIRE: &str = "
UPDATE {t}
SET token       = LAST_INSERT_ID(token + 1),
    holder      = ?,
    expires_at  = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND,
    acquired_at = UTC_TIMESTAMP(6),
    renewed_at  = UTC_TIMESTAMP(6),
    handoff_to    = NULL,
    handoff_from  = NULL,
    handoff_until = NULL
WHERE `key` = ? AND token >= 0
  AND (holder IS NULL) = (expires_at IS NULL)
  AND (holder IS NULL OR expires_at <= UTC_TIMESTAMP(6))
  AND {shape}
  AND (handoff_until IS NULL OR handoff_until <= UTC_TIMESTAMP(6)
       OR handoff_to = ? OR (handoff_to = '' AND handoff_from <> ?))";

/// The assignment a renewal adds to tell its caller that one of the rows it renewed carries a
/// handoff request, without a second statement: it leaves `handoff_to` as it is, but calls
/// `LAST_INSERT_ID(1)` for such a row, so the statement's last insert id is 1 (otherwise 0:
/// an `UPDATE` reports 0 unless it called `LAST_INSERT_ID(expr)`). Only then are the requests
/// read ([`Inner::requests`]).
const FLAG_REQUEST: &str = "handoff_to = CASE WHEN handoff_to IS NULL THEN NULL \
WHEN LAST_INSERT_ID(1) = 1 THEN handoff_to ELSE handoff_to END";

/// Extend the lease by `?` µs if holder and token still hold key `?` unexpired (flagging a
/// request, see [`FLAG_REQUEST`]).
const RENEW: &str = "
UPDATE {t}
SET expires_at = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND, renewed_at = UTC_TIMESTAMP(6),
    {flag}
WHERE `key` = ? AND holder = ? AND token = ? AND expires_at > UTC_TIMESTAMP(6) AND {shape}";

/// The most leases one [`renew_many_sql`] statement renews; larger batches are split.
const MAX_RENEW_BATCH: usize = 128;

/// [`RENEW`] for `n` leases at once (D126): binds the TTL in µs, then `n` keys, then `n`
/// triples of key, holder and token. The key list lets the server find the rows through the
/// primary key (and lock them in its order); each row is still matched on its own holder and
/// token. Only sizes that are powers of two are built, so that a connection caches at most a
/// handful of them; a batch is padded to the next size by repeating its last lease.
fn renew_many_sql(table: &str, n: usize) -> String {
    let keys = vec!["?"; n].join(", ");
    let leases = vec!["(`key` = ? AND holder = ? AND token = ?)"; n].join(" OR ");
    let shape = row_shape();
    format!(
        "UPDATE {table}
SET expires_at = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND, renewed_at = UTC_TIMESTAMP(6),
    {FLAG_REQUEST}
WHERE `key` IN ({keys}) AND expires_at > UTC_TIMESTAMP(6) AND {shape} AND ({leases})"
    )
}

/// The requests beside the leases of `n` keys, read after a renewal flagged one
/// ([`FLAG_REQUEST`]); padded to a power of two as [`renew_many_sql`] is.
fn requests_sql(table: &str, n: usize) -> String {
    let keys = vec!["?"; n].join(", ");
    format!(
        "SELECT `key`, holder, token, handoff_to FROM {table}
WHERE `key` IN ({keys}) AND holder IS NOT NULL AND handoff_to IS NOT NULL AND handoff_until IS NULL"
    )
}

/// Free the key if holder and token hold it, with any handoff asked of it; the row and its
/// token stay.
const RELEASE: &str = "
UPDATE {t} SET holder = NULL, expires_at = NULL, handoff_to = NULL, handoff_from = NULL
WHERE `key` = ? AND holder = ? AND token = ? AND expires_at IS NOT NULL AND {shape}";

/// Hand the key (`?4`) over if holder `?5` and token `?6` hold it: free it as [`RELEASE`]
/// does and leave the mark (to `?1`, `''` for anyone; from `?2`, the holder; until the
/// server's clock plus `?3` µs).
const HAND_OVER: &str = "
UPDATE {t} SET holder = NULL, expires_at = NULL,
    handoff_to = ?, handoff_from = ?, handoff_until = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND
WHERE `key` = ? AND holder = ? AND token = ? AND expires_at IS NOT NULL AND {shape}";

/// Ask the holder (`?3`, token `?4`) of key `?2` to hand over to `?1` (`''` for anyone),
/// while its lease lasts: the request goes beside the lease, which is not touched.
const REQUEST_HANDOFF: &str = "
UPDATE {t} SET handoff_to = ?, handoff_from = holder
WHERE `key` = ? AND holder = ? AND token = ? AND expires_at > UTC_TIMESTAMP(6) AND {shape}";

/// The presence table beside the lease table (`{c}`, see [`candidates_table`]): one row per
/// candidate that announces itself at a key, alive until `expires_at` (UTC, server's clock).
const CREATE_CANDIDATES: &str = "
CREATE TABLE IF NOT EXISTS {c} (
    `key`      VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    candidate  VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    priority   BIGINT NOT NULL,
    expires_at DATETIME(6) NOT NULL,
    PRIMARY KEY (`key`, candidate)
) ENGINE=InnoDB";

/// The columns [`CREATE_CANDIDATES`] makes: name, `COLUMN_TYPE` prefix, nullable, primary key.
const CANDIDATE_COLUMNS: [(&str, &str, bool, bool); 4] = [
    ("key", "varchar(255)", false, true),
    ("candidate", "varchar(255)", false, true),
    ("priority", "bigint", false, false),
    ("expires_at", "datetime(6)", false, false),
];

/// The condition that a presence row is one Baton could have written: a priority of 0 to
/// [`MAX_PRIORITY`], and an end the server can compute with (MariaDB stores the zero date
/// `0000-00-00`, whose distance to now is `NULL`). Every write's `WHERE` (or `IF`) includes it,
/// so such a row is never written to nor deleted; [`CANDIDATES`] returns it with no time left
/// (`NULL`), and the caller reports it as foreign data.
fn presence_shape() -> String {
    format!(
        "priority BETWEEN 0 AND {MAX_PRIORITY} AND {}",
        computable("expires_at")
    )
}

/// Write candidate `?2`'s presence record at key `?1` (priority `?3`, alive `?4` µs by the
/// server's clock). A row Baton could not have written ([`presence_shape`]) is left as it was
/// (`expires_at` is assigned first, while `priority` is still the old one, and a row it keeps
/// keeps its end, so the second test gives the same answer), and [`CANDIDATES`] then reports
/// it.
const ANNOUNCE: &str = "
INSERT INTO {c} (`key`, candidate, priority, expires_at)
VALUES (?, ?, ?, UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND)
ON DUPLICATE KEY UPDATE
    expires_at = IF({pshape}, VALUES(expires_at), expires_at),
    priority = IF({pshape}, VALUES(priority), priority)";

/// Every presence row at key `?`: candidate, priority, µs left by the server's clock.
const CANDIDATES: &str = "
SELECT candidate, priority, CAST(TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), expires_at) AS SIGNED)
FROM {c} WHERE `key` = ?";

/// Drop the presence records at key `?` that ran out (by the server's clock, checked again
/// here, so a record renewed since it was read stays).
const PRUNE: &str = "
DELETE FROM {c} WHERE `key` = ? AND expires_at <= UTC_TIMESTAMP(6) AND {pshape}";

/// Remove candidate `?2`'s presence record at key `?1` (a row Baton could not have written
/// stays).
const WITHDRAW: &str = "DELETE FROM {c} WHERE `key` = ? AND candidate = ? AND {pshape}";

#[derive(Debug)]
struct Sql {
    /// The presence table's name ([`candidates_table`]).
    candidates_table: String,
    create_candidates: Arc<str>,
    announce: Arc<str>,
    candidates: Arc<str>,
    prune: Arc<str>,
    withdraw: Arc<str>,
    create: Arc<str>,
    select: Arc<str>,
    ensure: Arc<str>,
    acquire: Arc<str>,
    renew: Arc<str>,
    /// [`renew_many_sql`] for 2, 4, 8, ... [`MAX_RENEW_BATCH`] leases.
    renew_many: Vec<Arc<str>>,
    /// [`requests_sql`] for 1, 2, 4, ... [`MAX_RENEW_BATCH`] keys.
    requests: Vec<Arc<str>>,
    release: Arc<str>,
    hand_over: Arc<str>,
    request: Arc<str>,
    add_handoff_columns: Arc<str>,
}

impl Sql {
    fn for_table(table: &str) -> Sql {
        let shape = row_shape();
        let presence_shape = presence_shape();
        let candidates = candidates_table(table);
        let fill = |sql: &str| {
            Arc::from(
                sql.replace("{t}", table)
                    .replace("{c}", &candidates)
                    .replace("{pshape}", &presence_shape)
                    .replace("{max}", &MAX_PRIORITY.to_string())
                    .replace("{shape}", &shape)
                    .replace("{flag}", FLAG_REQUEST),
            )
        };
        let sizes = |first: usize| {
            std::iter::successors(Some(first), |n| Some(n * 2))
                .take_while(|&n| n <= MAX_RENEW_BATCH)
        };
        Sql {
            create_candidates: fill(CREATE_CANDIDATES),
            announce: fill(ANNOUNCE),
            candidates: fill(CANDIDATES),
            prune: fill(PRUNE),
            withdraw: fill(WITHDRAW),
            candidates_table: candidates.clone(),
            create: fill(CREATE_TABLE),
            select: fill(SELECT_LEASE),
            ensure: fill(ENSURE_ROW),
            acquire: fill(ACQUIRE),
            renew: fill(RENEW),
            renew_many: sizes(2)
                .map(|n| Arc::from(renew_many_sql(table, n)))
                .collect(),
            requests: sizes(1)
                .map(|n| Arc::from(requests_sql(table, n)))
                .collect(),
            release: fill(RELEASE),
            hand_over: fill(HAND_OVER),
            request: fill(REQUEST_HANDOFF),
            add_handoff_columns: fill(ADD_HANDOFF_COLUMNS),
        }
    }
}

fn q(sql: &Arc<str>) -> AssertSqlSafe<Arc<str>> {
    AssertSqlSafe(Arc::clone(sql))
}

/// A [`LeaseStore`] in a MySQL or MariaDB table. Cheap to clone: clones share the pool and the
/// pollers.
///
/// ```no_run
/// # async fn f() -> baton::Result<()> {
/// use baton::LeaseStore;
/// use baton::store::sql::mysql::MysqlStore;
///
/// let store = MysqlStore::open("mysql://app:secret@db.internal/app?ssl-mode=required")?;
/// assert_eq!(store.info().name, "mysql");
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct MysqlStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: MySqlPool,
    url: SqlUrl,
    poll: Duration,
    sql: Sql,
    ready: OnceCell<()>,
    /// Set once the presence table was looked up: whether this store keeps presence records.
    presence: OnceCell<bool>,
    feed: Arc<Feed>,
    pollers: Mutex<HashMap<String, std::sync::Weak<Poller>>>,
    /// Pollers running (one per watched key).
    polling: Arc<AtomicUsize>,
    /// The database, part of every term lock's name (named locks are server-wide).
    database: Arc<str>,
    /// Reads of a key by this store's pollers, for tests and the benchmarks.
    poller_reads: Arc<AtomicU64>,
    /// The term locks of this store's leaders, on one connection (started by the first term).
    term_locks: OnceLock<TermLocks>,
    /// Connections to wait on term locks: one per watched key, at most `MAX_WAITING_KEYS`.
    waiting: Arc<tokio::sync::Semaphore>,
    /// Renewals gathered into one statement per window (D126); `None` for a lease not renewed.
    renewals: Arc<Batcher<Renewal, Option<Renew>>>,
}

/// One lease to renew.
#[derive(Debug)]
struct Renewal {
    key: String,
    holder: String,
    token: i64,
    ttl_us: i64,
}

impl std::fmt::Debug for MysqlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MysqlStore")
            .field("url", &self.inner.url.redacted)
            .field("table", &self.inner.url.table)
            .finish_non_exhaustive()
    }
}

impl MysqlStore {
    /// Open a store from a `mysql://` or `mariadb://` URL. Connects lazily. Needs a tokio
    /// runtime.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a malformed URL, a bad table name or option, or no tokio runtime.
    pub fn open(url: &str) -> Result<MysqlStore> {
        let mut url = SqlUrl::parse(url, STORE)?;
        // The driver knows only `mysql://`, in lower case. `get`, not indexing: the URL may
        // have a multi-byte character where the scheme would end.
        let strip = |prefix: &str| {
            let url = &url.driver_url;
            url.get(..prefix.len())
                .filter(|head| head.eq_ignore_ascii_case(prefix))
                .map(|_| url[prefix.len()..].to_owned())
        };
        if let Some(rest) = strip("mysql://").or_else(|| strip("mariadb://")) {
            url.driver_url = format!("mysql://{rest}");
        }
        let options = MySqlConnectOptions::from_str(&url.driver_url).map_err(|e| {
            Error::Config(format!("{} is not a valid MySQL URL: {e}", url.redacted))
        })?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::Config(format!(
                "the mysql store ({}) must be opened inside a tokio runtime",
                url.redacted
            )));
        }
        let pool = MySqlPoolOptions::new()
            .max_connections(4)
            .min_connections(0)
            .acquire_timeout(Duration::from_secs(5))
            .idle_timeout(Duration::from_secs(60))
            .test_before_acquire(false)
            .connect_lazy_with(options);
        Ok(MysqlStore::with_pool(pool, url))
    }

    /// A store on the application's own pool, in the lease table `table`
    /// ([`DEFAULT_TABLE`](super::DEFAULT_TABLE) is the usual name), which Baton creates when
    /// it is missing. The store shares the pool's connections with the application rather
    /// than opening a second pool (the term locks of push handoff use connections of their own,
    /// made with the pool's options); where no term lock is held, watching followers poll every
    /// 25 ms (open the store from a URL with `poll=` for another interval).
    ///
    /// Give the pool room for the election: a renewal waits for a free connection like any
    /// other query, and a pool starved for longer than the grace period makes the leader step
    /// down.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an invalid table name.
    pub fn from_pool(pool: MySqlPool, table: &str) -> Result<MysqlStore> {
        let options = pool.connect_options();
        let url = SqlUrl::for_pool(
            "mysql",
            options.get_username(),
            options.get_host(),
            options.get_port(),
            options.get_database(),
            table,
        )?;
        Ok(MysqlStore::with_pool(pool, url))
    }

    fn with_pool(pool: MySqlPool, url: SqlUrl) -> Self {
        let database: Arc<str> = Arc::from(pool.connect_options().get_database().unwrap_or(""));
        MysqlStore {
            inner: Arc::new(Inner {
                database,
                poller_reads: Arc::default(),
                term_locks: OnceLock::new(),
                waiting: Arc::new(tokio::sync::Semaphore::new(MAX_WAITING_KEYS)),
                pool,
                poll: url.poll.unwrap_or(DEFAULT_POLL),
                sql: Sql::for_table(&url.table),
                url,
                ready: OnceCell::new(),
                presence: OnceCell::new(),
                feed: Arc::new(Feed::default()),
                pollers: Mutex::new(HashMap::new()),
                polling: Arc::default(),
                renewals: Arc::default(),
            }),
        }
    }

    /// The lease table's name.
    pub fn table(&self) -> &str {
        &self.inner.url.table
    }

    /// How often a watching follower reads its key when no leader holds its term's lock (the
    /// fallback of push handoff).
    pub fn poll_interval(&self) -> Duration {
        self.inner.poll
    }

    /// How many keys this store watches now: one poller per watched key, however many of the
    /// store's candidates and observers watch it. A poller waits on the term lock of the
    /// lease it last read, and reads its key once per [`poll_interval`](Self::poll_interval)
    /// only while no one holds that lock.
    pub fn pollers(&self) -> usize {
        self.inner.polling.load(Ordering::Acquire)
    }

    /// How many times this store's pollers have read a key since the store was opened. With
    /// push (the leader holds its term's lock) a waiting follower reads its key when the lease
    /// is released, changes hands or is due to expire, not every poll interval.
    pub fn poller_reads(&self) -> u64 {
        self.inner.poller_reads.load(Ordering::Acquire)
    }

    /// The name of the server's named lock that the leader of `key` holds during its term
    /// `token`, and whose release wakes the followers (`SELECT IS_USED_LOCK(name)` shows the
    /// connection that holds it). The name hashes the database, the table and the key.
    pub fn term_lock_name(&self, key: &str, token: FencingToken) -> String {
        lock_name(&self.inner.database, &self.inner.url.table, key, token.0)
    }

    /// The holder of this store's leaders' term locks, started (and connecting) on first use.
    fn term_locks(&self) -> &TermLocks {
        let inner = &self.inner;
        inner
            .term_locks
            .get_or_init(|| TermLocks::new(inner.pool.connect_options()))
    }

    /// The presence table's name: `<table>_candidates`, shortened with a hash when that
    /// would be longer than 63 characters (see [the SQL stores](super)).
    pub fn candidates_table(&self) -> &str {
        &self.inner.sql.candidates_table
    }

    /// The pool, for callers that want to run their own statements on the same server.
    pub fn pool(&self) -> &MySqlPool {
        &self.inner.pool
    }
}

/// A column as `TABLE_COLUMNS` reads it: name, type, nullable, key, collation.
type Column = (String, String, String, String, String);

/// Whether `columns` are `want` (name, type, nullability, primary key, a binary collation for
/// text).
fn layout(columns: &[Column], want: &[(&str, &str, bool, bool)]) -> bool {
    columns.len() == want.len()
        && columns.iter().zip(want).all(|(found, want)| {
            let (name, ty, nullable, key, collation) = found;
            name == want.0
                && ty.to_ascii_lowercase().starts_with(want.1)
                && (nullable == "YES") == want.2
                && (key == "PRI") == want.3
                && (!want.1.starts_with("varchar") || collation.ends_with("_bin"))
        })
}

fn check_len(what: &str, value: &str) -> Result<()> {
    if value.chars().count() > MAX_LEN {
        return Err(Error::Config(format!(
            "the mysql store keeps {what}s of at most {MAX_LEN} characters; {value:.40}... is longer"
        )));
    }
    Ok(())
}

fn error_number(e: &sqlx::Error) -> Option<u16> {
    match e {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<MySqlDatabaseError>()
            .map(|e| e.number()),
        _ => None,
    }
}

impl Inner {
    /// Renew `batch`: one statement per [`MAX_RENEW_BATCH`] leases of one TTL. When such a
    /// statement renews fewer rows than it has leases, it cannot say which, so each of its
    /// leases is renewed again on its own (repeating a renewal is harmless). For each lease:
    /// `None` if it was not renewed, else [`Renew::Renewed`] or the handoff asked of it.
    async fn renew_many(&self, batch: Vec<Renewal>) -> Vec<Result<Option<Renew>>> {
        let mut results: Vec<Option<Result<Option<Renew>>>> = batch.iter().map(|_| None).collect();
        let mut order: Vec<usize> = (0..batch.len()).collect();
        order.sort_by(|&a, &b| {
            (batch[a].ttl_us, &batch[a].key).cmp(&(batch[b].ttl_us, &batch[b].key))
        });
        for group in order.chunk_by(|&a, &b| batch[a].ttl_us == batch[b].ttl_us) {
            for chunk in group.chunks(MAX_RENEW_BATCH) {
                let all = if chunk.len() > 1 {
                    self.renew_chunk(&batch, chunk).await
                } else {
                    Ok((false, false))
                };
                // The requests beside the chunk's leases, read only when the renewal said
                // there is one.
                let asked = match &all {
                    Ok((true, true)) => {
                        let keys: Vec<&str> =
                            chunk.iter().map(|&i| batch[i].key.as_str()).collect();
                        self.requests(&keys).await
                    }
                    _ => HashMap::new(),
                };
                for &i in chunk {
                    let r = &batch[i];
                    results[i] = Some(match &all {
                        Ok((true, _)) => Ok(Some(
                            match asked.get(&(r.key.clone(), r.holder.clone(), r.token)) {
                                Some(to) => Renew::HandoffRequested { to: anyone(to) },
                                None => Renew::Renewed,
                            },
                        )),
                        Ok((false, _)) => self.renew_one(r).await,
                        Err(e) => Err(e.again()),
                    });
                }
            }
        }
        results.into_iter().map(|r| r.unwrap_or(Ok(None))).collect()
    }

    /// Renew the leases `chunk` (indices into `batch`, one TTL) in one statement: whether it
    /// renewed all of them, and whether one of the rows it renewed carries a request.
    async fn renew_chunk(&self, batch: &[Renewal], chunk: &[usize]) -> Result<(bool, bool)> {
        let size = chunk.len().next_power_of_two();
        let sql = &self.sql.renew_many[size.trailing_zeros() as usize - 1];
        let padded = || {
            chunk
                .iter()
                .chain(std::iter::repeat_n(
                    &chunk[chunk.len() - 1],
                    size - chunk.len(),
                ))
                .map(|&i| &batch[i])
        };
        let done = retrying(Effect::None, || {
            let mut query = sqlx::query(q(sql)).bind(batch[chunk[0]].ttl_us);
            for r in padded() {
                query = query.bind(&r.key);
            }
            for r in padded() {
                query = query.bind(&r.key).bind(&r.holder).bind(r.token);
            }
            query.execute(&self.pool)
        })
        .await
        .map_err(|e| {
            let doing = format!(
                "renewing {} leases (keys {:?}, ...)",
                chunk.len(),
                batch[chunk[0]].key
            );
            self.error(&doing, Effect::None, e)
        })?;
        Ok((
            done.rows_affected() == chunk.len() as u64,
            done.last_insert_id() != 0,
        ))
    }

    /// The handoff requests (`handoff_to`) beside the leases at `keys`, by key, holder and
    /// token. A read that fails finds none: the renewals it follows did renew, and the next
    /// renewal flags the requests again.
    async fn requests(&self, keys: &[&str]) -> HashMap<(String, String, i64), String> {
        let size = keys.len().next_power_of_two();
        let sql = &self.sql.requests[size.trailing_zeros() as usize];
        let rows: Vec<(String, String, i64, String)> = retrying(Effect::None, || {
            let mut query = sqlx::query_as(q(sql));
            for i in 0..size {
                query = query.bind(keys[i.min(keys.len() - 1)]);
            }
            query.fetch_all(&self.pool)
        })
        .await
        .unwrap_or_else(|e| {
            debug!(error = %e, key = keys[0], "cannot read the handoffs asked; the next renewal will");
            Vec::new()
        });
        rows.into_iter()
            .map(|(key, holder, token, to)| ((key, holder, token), to))
            .collect()
    }

    /// [`RENEW`] for one lease: `None` if it was not renewed, else [`Renew::Renewed`] or the
    /// handoff asked of it.
    async fn renew_one(&self, r: &Renewal) -> Result<Option<Renew>> {
        let done = retrying(Effect::None, || {
            sqlx::query(q(&self.sql.renew))
                .bind(r.ttl_us)
                .bind(&r.key)
                .bind(&r.holder)
                .bind(r.token)
                .execute(&self.pool)
        })
        .await
        .map_err(|e| {
            let doing = format!("renewing the lease at key {:?}", r.key);
            self.error(&doing, Effect::None, e)
        })?;
        if done.rows_affected() != 1 {
            return Ok(None);
        }
        if done.last_insert_id() == 0 {
            return Ok(Some(Renew::Renewed));
        }
        let asked = self.requests(&[r.key.as_str()]).await;
        Ok(Some(
            match asked.get(&(r.key.clone(), r.holder.clone(), r.token)) {
                Some(to) => Renew::HandoffRequested { to: anyone(to) },
                None => Renew::Renewed,
            },
        ))
    }

    fn error(&self, doing: &str, effect: Effect, e: sqlx::Error) -> Error {
        map_error(STORE, &self.url.redacted, doing, effect, e)
    }

    async fn ready(&self) -> Result<()> {
        self.ready
            .get_or_try_init(|| self.prepare_table())
            .await
            .map(|_| ())
    }

    async fn prepare_table(&self) -> Result<()> {
        let doing = "looking up the lease table";
        let table = &self.url.table;
        let kind = || async {
            retrying(Effect::None, || {
                sqlx::query_as::<_, (Option<String>, Option<String>)>(TABLE_KIND)
                    .bind(table)
                    .fetch_one(&self.pool)
            })
            .await
            .map_err(|e| self.error(doing, Effect::None, e))
        };
        let (database, mut found) = kind().await?;
        let Some(database) = database else {
            return Err(Error::Config(format!(
                "{} names no database: write mysql://user@host/DATABASE",
                self.url.redacted
            )));
        };
        if found.is_none() {
            if !self.url.create {
                return Err(Error::Config(format!(
                    "the lease table {table} does not exist in database {database} ({}) and the URL says create=false: have it created with {SQL_FILE}",
                    self.url.redacted
                )));
            }
            match sqlx::query(q(&self.sql.create)).execute(&self.pool).await {
                Ok(_) => debug!(table, "created the lease table"),
                Err(e) if matches!(error_number(&e), Some(1142 | 1044 | 1227)) => {
                    return Err(Error::Config(format!(
                        "the lease table {table} does not exist in database {database} ({}) and this user may not create it ({}): have a DBA create it with {SQL_FILE} and grant SELECT, INSERT, UPDATE on it",
                        self.url.redacted,
                        e.as_database_error()
                            .map(|d| d.message().to_owned())
                            .unwrap_or_default()
                    )));
                }
                Err(e) => return Err(self.error("creating the lease table", Effect::None, e)),
            }
            found = kind().await?.1;
        }
        let foreign = |found: String| Error::ForeignData {
            key: format!("table {database}.{table} in {}", self.url.redacted),
            found,
        };
        match found.as_deref() {
            Some("BASE TABLE") => {}
            Some(other) => {
                return Err(foreign(format!(
                    "a {other} named {table}, not a table; choose another table with ?table=NAME"
                )));
            }
            None => {
                return Err(Error::Unavailable {
                    store: STORE,
                    message: format!(
                        "the lease table {table} vanished right after it was created in {}",
                        self.url.redacted
                    ),
                    source: None,
                });
            }
        }
        let mut columns: Vec<Column> = retrying(Effect::None, || {
            sqlx::query_as(TABLE_COLUMNS)
                .bind(table)
                .fetch_all(&self.pool)
        })
        .await
        .map_err(|e| self.error(doing, Effect::None, e))?;
        if layout(&columns, &COLUMNS[..COLUMNS_BEFORE_HANDOFF]) {
            // Baton's table from before planned handoffs.
            columns = self.add_handoff_columns(&database).await?;
        }
        if !layout(&columns, &COLUMNS) {
            let found: Vec<String> = columns
                .iter()
                .map(|(name, ty, nullable, key, collation)| {
                    let mut s = format!("{name} {ty}");
                    if !collation.is_empty() {
                        s.push_str(&format!(" COLLATE {collation}"));
                    }
                    if nullable == "NO" {
                        s.push_str(" NOT NULL");
                    }
                    if key == "PRI" {
                        s.push_str(" PRIMARY KEY");
                    }
                    s
                })
                .collect();
            let expected: Vec<String> = COLUMNS
                .iter()
                .map(|(name, ty, nullable, key)| {
                    let mut s = format!("{name} {ty}");
                    if ty.starts_with("varchar") {
                        s.push_str(" COLLATE utf8mb4_bin");
                    }
                    if !nullable {
                        s.push_str(" NOT NULL");
                    }
                    if *key {
                        s.push_str(" PRIMARY KEY");
                    }
                    s
                })
                .collect();
            return Err(foreign(format!(
                "a table {table} with columns ({}) where Baton expects ({}); Baton alters no table but its own from before planned handoffs, to add their columns: choose another with ?table=NAME, or recreate it from {SQL_FILE}",
                found.join(", "),
                expected.join(", ")
            )));
        }
        Ok(())
    }

    /// Whether this store keeps presence records: the presence table is looked up (and
    /// created when missing, if the URL allows) once per store. Missing, with `create=false`
    /// or without the right to create it: `false`, and the presence calls answer `None`, so a
    /// deployment whose user may use only the lease table keeps working. A table of that name
    /// with other columns is [`Error::ForeignData`] on every presence call.
    async fn presence(&self) -> Result<bool> {
        self.presence
            .get_or_try_init(|| self.prepare_presence())
            .await
            .copied()
    }

    async fn prepare_presence(&self) -> Result<bool> {
        let doing = "looking up the presence table";
        let table = &self.sql.candidates_table;
        let kind = || async {
            retrying(Effect::None, || {
                sqlx::query_as::<_, (Option<String>, Option<String>)>(TABLE_KIND)
                    .bind(table)
                    .fetch_one(&self.pool)
            })
            .await
            .map_err(|e| self.error(doing, Effect::None, e))
        };
        let (database, mut found) = kind().await?;
        let Some(database) = database else {
            return Err(Error::Config(format!(
                "{} names no database: write mysql://user@host/DATABASE",
                self.url.redacted
            )));
        };
        if found.is_none() {
            if !self.url.create {
                debug!(table, "no presence table and create=false: presence is off");
                return Ok(false);
            }
            match sqlx::query(q(&self.sql.create_candidates))
                .execute(&self.pool)
                .await
            {
                Ok(_) => debug!(table, "created the presence table"),
                Err(e) if matches!(error_number(&e), Some(1142 | 1044 | 1227)) => {
                    tracing::warn!(
                        table,
                        "this user may not create the presence table ({}): presence is off (baton handoff --to cannot tell live candidates, priorities do nothing); have it created with {SQL_FILE}",
                        e.as_database_error()
                            .map(|d| d.message().to_owned())
                            .unwrap_or_default()
                    );
                    return Ok(false);
                }
                Err(e) => return Err(self.error("creating the presence table", Effect::None, e)),
            }
            found = kind().await?.1;
        }
        let foreign = |found: String| Error::ForeignData {
            key: format!("table {database}.{table} in {}", self.url.redacted),
            found,
        };
        match found.as_deref() {
            Some("BASE TABLE") => {}
            Some(other) => {
                return Err(foreign(format!(
                    "a {other} named {table}, not a table, where Baton keeps presence records; rename it, or choose another lease table with ?table=NAME"
                )));
            }
            None => return Ok(false),
        }
        let columns: Vec<Column> = retrying(Effect::None, || {
            sqlx::query_as(TABLE_COLUMNS)
                .bind(table)
                .fetch_all(&self.pool)
        })
        .await
        .map_err(|e| self.error(doing, Effect::None, e))?;
        if !layout(&columns, &CANDIDATE_COLUMNS) {
            let found: Vec<String> = columns
                .iter()
                .map(|(name, ty, nullable, key, _)| {
                    format!(
                        "{name} {ty}{}{}",
                        if nullable == "NO" { " NOT NULL" } else { "" },
                        if key == "PRI" { " (primary key)" } else { "" }
                    )
                })
                .collect();
            return Err(foreign(format!(
                "a table {table} with columns ({}) where Baton expects its presence records (key varchar(255) COLLATE utf8mb4_bin NOT NULL, candidate varchar(255) COLLATE utf8mb4_bin NOT NULL, priority bigint NOT NULL, expires_at datetime(6) NOT NULL, PRIMARY KEY (key, candidate)); rename that table, or choose another lease table with ?table=NAME",
                found.join(", ")
            )));
        }
        Ok(true)
    }

    /// The presence rows at `key` ([`CANDIDATES`]): the live records, and whether some ran out.
    async fn presence_rows(&self, key: &str, doing: &str) -> Result<(Vec<Presence>, bool)> {
        let rows: Vec<(String, i64, Option<i64>)> = retrying(Effect::None, || {
            sqlx::query_as(q(&self.sql.candidates))
                .bind(key)
                .fetch_all(&self.pool)
        })
        .await
        .map_err(|e| self.error(doing, Effect::None, e))?;
        let table = format!("{} in {}", self.sql.candidates_table, self.url.redacted);
        presence_rows(key, &table, rows)
    }

    /// Add the handoff columns to Baton's table from before them ([`ADD_HANDOFF_COLUMNS`]),
    /// under a named lock, after reading the columns again under it: of two stores opening
    /// the table at once, one adds them and the other finds them. Returns the columns then.
    /// A user that may not alter the table gets a configuration error with the statement to
    /// have run.
    async fn add_handoff_columns(&self, database: &str) -> Result<Vec<Column>> {
        let doing = "adding the handoff columns to the lease table";
        let table = &self.url.table;
        let fail = |e| self.error(doing, Effect::None, e);
        let mut conn = self.pool.acquire().await.map_err(fail)?;
        let lock = migration_lock_name(database, table);
        let locked: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(?, ?)")
            .bind(&lock)
            .bind(MIGRATION_WAIT_S)
            .fetch_one(&mut *conn)
            .await
            .map_err(fail)?;
        if locked != Some(1) {
            return Err(Error::Unavailable {
                store: STORE,
                message: format!(
                    "{doing} {table} in {}: another session held the lock {lock} for {MIGRATION_WAIT_S} s; try again",
                    self.url.redacted
                ),
                source: None,
            });
        }
        let added = async {
            let columns: Vec<Column> = sqlx::query_as(TABLE_COLUMNS)
                .bind(table)
                .fetch_all(&mut *conn)
                .await?;
            if !layout(&columns, &COLUMNS[..COLUMNS_BEFORE_HANDOFF]) {
                return Ok(columns);
            }
            sqlx::query(q(&self.sql.add_handoff_columns))
                .execute(&mut *conn)
                .await?;
            debug!(table, "added the handoff columns to the lease table");
            sqlx::query_as(TABLE_COLUMNS)
                .bind(table)
                .fetch_all(&mut *conn)
                .await
        }
        .await;
        let released = sqlx::query("SELECT RELEASE_LOCK(?)")
            .bind(&lock)
            .execute(&mut *conn)
            .await;
        if released.is_err() {
            // Closing the session lets the lock go with it.
            conn.close_on_drop();
        }
        match added {
            Ok(columns) => Ok(columns),
            Err(e) if matches!(error_number(&e), Some(1142 | 1044 | 1227)) => {
                Err(Error::Config(format!(
                    "the lease table {table} in database {database} ({}) was made by an earlier Baton, without the columns of planned handoffs, and this user may not add them ({}): have a DBA run `{}` (see {SQL_FILE}), or grant ALTER on the table",
                    self.url.redacted,
                    e.as_database_error()
                        .map(|d| d.message().to_owned())
                        .unwrap_or_default(),
                    self.sql.add_handoff_columns
                )))
            }
            Err(e) => Err(fail(e)),
        }
    }

    async fn select(&self, key: &str, doing: &str) -> Result<Option<Stored>> {
        let row = retrying(Effect::None, || {
            sqlx::query(q(&self.sql.select))
                .bind(key)
                .fetch_optional(&self.pool)
        })
        .await
        .map_err(|e| self.error(doing, Effect::None, e))?;
        let Some(row) = row else { return Ok(None) };
        let decode = |e| self.error(doing, Effect::None, e);
        let holder: Option<String> = row.try_get(0).map_err(decode)?;
        let token: i64 = row.try_get(1).map_err(decode)?;
        let has_expiry: i64 = row.try_get(2).map_err(decode)?;
        let left_us: Option<i64> = row.try_get(3).map_err(decode)?;
        let handoff_to: Option<String> = row.try_get(4).map_err(decode)?;
        let handoff_from: Option<String> = row.try_get(5).map_err(decode)?;
        let has_until: i64 = row.try_get(6).map_err(decode)?;
        let until_us: Option<i64> = row.try_get(7).map_err(decode)?;
        let foreign = |what: String| Error::ForeignData {
            key: key.to_owned(),
            found: format!("a row in table {} whose {what}", self.url.table),
        };
        if token < 0 {
            return Err(foreign(format!(
                "token is {token} (Baton's tokens are never negative)"
            )));
        }
        if token == i64::MAX {
            return Err(foreign(format!(
                "token is {token}, the largest BIGINT: no token can follow it"
            )));
        }
        // The zero date (and any time MySQL cannot measure from now) has no distance to now.
        if (has_expiry != 0 && left_us.is_none()) || (has_until != 0 && until_us.is_none()) {
            return Err(foreign(
                "expires_at or handoff_until is not a time the server can compute with (the zero date?)"
                    .to_owned(),
            ));
        }
        if holder.is_some() != (has_expiry != 0) {
            return Err(foreign(if holder.is_some() {
                "holder is set but expires_at is NULL".to_owned()
            } else {
                "expires_at is set but holder is NULL".to_owned()
            }));
        }
        let handoff = parse_handoff(
            holder.as_deref(),
            handoff_to,
            handoff_from,
            has_until != 0,
            until_us,
        )
        .map_err(foreign)?;
        Ok(Some(Stored {
            holder,
            token: u64::try_from(token).unwrap_or_default(),
            has_expiry: has_expiry != 0,
            left_us: left_us.unwrap_or(0),
            handoff,
        }))
    }
}

/// A row as Baton writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stored {
    holder: Option<String>,
    token: u64,
    has_expiry: bool,
    left_us: i64,
    /// A planned handoff's mark (on a freed row) or a handoff asked of the holder.
    handoff: Option<Handoff>,
}

impl Stored {
    fn live(&self) -> Option<LeaseRecord> {
        let holder = self.holder.as_ref()?;
        (self.left_us > 0).then(|| LeaseRecord {
            holder: holder.clone(),
            token: FencingToken(self.token),
            ttl: left(self.left_us),
        })
    }
}

#[async_trait]
impl LeaseStore for MysqlStore {
    async fn join(&self, key: &str, candidate: &str) -> Result<Box<dyn Candidacy>> {
        check_len("key", key)?;
        check_len("candidate id", candidate)?;
        // The connection for term locks opens now, not in the term that needs it.
        self.term_locks();
        Ok(Box::new(MysqlCandidacy {
            store: self.clone(),
            key: key.to_owned(),
            candidate: candidate.to_owned(),
            term_lock: None,
        }))
    }

    async fn read(&self, key: &str) -> Result<Option<LeaseRecord>> {
        check_len("key", key)?;
        self.inner.ready().await?;
        let stored = self
            .inner
            .select(key, &format!("reading key {key:?}"))
            .await?;
        Ok(stored.and_then(|s| s.live()))
    }

    async fn watch(&self, key: &str) -> Result<Option<Changes>> {
        check_len("key", key)?;
        self.subscribe(key, false).await.map(Some)
    }

    async fn request_handoff(&self, key: &str, to: Option<&str>) -> Result<Option<LeaseRecord>> {
        check_len("key", key)?;
        if let Some(to) = to {
            check_len("candidate id", to)?;
        }
        let inner = &self.inner;
        inner.ready().await?;
        let doing = format!("asking for a handoff at key {key:?}");
        // The request is written only beside the lease just read (its holder and token, still
        // unexpired); if that changed in between, read again.
        for _ in 0..3 {
            let Some(record) = inner.select(key, &doing).await?.and_then(|s| s.live()) else {
                return Ok(None);
            };
            if Some(record.holder.as_str()) == to {
                return Ok(Some(record));
            }
            let Ok(token) = i64::try_from(record.token.0) else {
                return Ok(None);
            };
            // `rows_affected` counts the rows matched (sqlx asks for CLIENT_FOUND_ROWS), so
            // the same request again is not taken for a lease that changed.
            let done = retrying(Effect::None, || {
                sqlx::query(q(&inner.sql.request))
                    .bind(to.unwrap_or(""))
                    .bind(key)
                    .bind(&record.holder)
                    .bind(token)
                    .execute(&inner.pool)
            })
            .await
            .map_err(|e| inner.error(&doing, Effect::None, e))?;
            if done.rows_affected() == 1 {
                // Tells this store's candidates; a leader in another store reads the request
                // at its next renewal.
                inner.feed.publish(
                    Some(key),
                    Change::HandoffRequested {
                        to: to.map(str::to_owned),
                    },
                );
                return Ok(Some(record));
            }
        }
        Err(Error::Unavailable {
            store: STORE,
            message: format!("{doing}: the key kept changing hands; try again"),
            source: None,
        })
    }

    async fn pending_handoff(&self, key: &str) -> Result<Option<PendingHandoff>> {
        check_len("key", key)?;
        self.inner.ready().await?;
        let stored = self
            .inner
            .select(key, &format!("reading the handoff at key {key:?}"))
            .await?;
        Ok(stored.and_then(|s| pending(s.live(), s.handoff.as_ref())))
    }

    /// Two statements: the upsert, then a read of the key's records; a third, only when
    /// that read found some that ran out, deletes those.
    async fn announce(
        &self,
        key: &str,
        candidate: &str,
        priority: u32,
        ttl: Duration,
    ) -> Result<Option<Vec<Presence>>> {
        check_len("key", key)?;
        check_len("candidate id", candidate)?;
        let inner = &self.inner;
        if !inner.presence().await? {
            return Ok(None);
        }
        let doing = format!("writing the presence record of {candidate:?} at key {key:?}");
        retrying(Effect::None, || {
            sqlx::query(q(&inner.sql.announce))
                .bind(key)
                .bind(candidate)
                .bind(i64::from(priority))
                .bind(ttl_us(ttl))
                .execute(&inner.pool)
        })
        .await
        .map_err(|e| inner.error(&doing, Effect::None, e))?;
        let (live, spent) = inner.presence_rows(key, &doing).await?;
        if spent {
            retrying(Effect::None, || {
                sqlx::query(q(&inner.sql.prune))
                    .bind(key)
                    .execute(&inner.pool)
            })
            .await
            .map_err(|e| inner.error(&doing, Effect::None, e))?;
        }
        Ok(Some(live))
    }

    async fn candidates(&self, key: &str) -> Result<Option<Vec<Presence>>> {
        check_len("key", key)?;
        let inner = &self.inner;
        if !inner.presence().await? {
            return Ok(None);
        }
        let doing = format!("reading the candidates at key {key:?}");
        let (live, _) = inner.presence_rows(key, &doing).await?;
        Ok(Some(live))
    }

    async fn withdraw(&self, key: &str, candidate: &str) -> Result<()> {
        let inner = &self.inner;
        if !inner.presence().await? {
            return Ok(());
        }
        let doing = format!("removing the presence record of {candidate:?} at key {key:?}");
        retrying(Effect::None, || {
            sqlx::query(q(&inner.sql.withdraw))
                .bind(key)
                .bind(candidate)
                .execute(&inner.pool)
        })
        .await
        .map_err(|e| inner.error(&doing, Effect::None, e))?;
        Ok(())
    }

    fn info(&self) -> StoreInfo {
        StoreInfo {
            name: STORE,
            location: format!(
                "{} (table {})",
                self.inner.url.redacted, self.inner.url.table
            ),
            can_watch: true,
        }
    }
}

#[derive(Debug)]
struct MysqlCandidacy {
    store: MysqlStore,
    key: String,
    candidate: String,
    /// The named lock of this candidacy's term while it leads (the followers' wake-up
    /// signal), held by the store's [`TermLocks`].
    term_lock: Option<String>,
}

impl MysqlCandidacy {
    /// Hold the term lock of a term that just began.
    /// Hold the lock of a term that just began; waits for the server's answer (at most
    /// `HOLD_WAIT`), so that once the term is known the lock is held and a follower that reads
    /// the row finds something to wait on.
    async fn hold_term_lock(&mut self, token: FencingToken) {
        let name = self.store.term_lock_name(&self.key, token);
        let locks = self.store.term_locks();
        // A term that ended without a release or a lost renewal (its deadline passed) still
        // holds its lock: drop it first.
        if let Some(old) = self.term_lock.replace(name.clone()) {
            locks.release_soon(old);
        }
        locks.hold(name).await;
    }

    /// Drop the term lock, waking the followers (the server's answer awaited).
    async fn drop_term_lock(&mut self) {
        if let (Some(name), Some(locks)) =
            (self.term_lock.take(), self.store.inner.term_locks.get())
        {
            locks.release(name).await;
        }
    }
}

impl Drop for MysqlCandidacy {
    /// A candidacy dropped while it leads (its election dropped without a release) gives up
    /// its term lock, so the followers wake (and find the lease still held).
    fn drop(&mut self) {
        if let (Some(name), Some(locks)) =
            (self.term_lock.take(), self.store.inner.term_locks.get())
        {
            locks.release_soon(name);
        }
    }
}

#[async_trait]
impl Candidacy for MysqlCandidacy {
    async fn try_acquire(&mut self, ttl: Duration) -> Result<Acquire> {
        let inner = &self.store.inner;
        inner.ready().await?;
        let doing = format!("acquiring the lease at key {:?}", self.key);
        for _ in 0..3 {
            let done = retrying(Effect::Maybe, || {
                sqlx::query(q(&inner.sql.acquire))
                    .bind(&self.candidate)
                    .bind(ttl_us(ttl))
                    .bind(&self.key)
                    .bind(&self.candidate)
                    .bind(&self.candidate)
                    .execute(&inner.pool)
            })
            .await
            .map_err(|e| inner.error(&doing, Effect::Maybe, e))?;
            if done.rows_affected() == 1 {
                inner.feed.publish(
                    Some(&self.key),
                    Change::Acquired {
                        holder: self.candidate.clone(),
                    },
                );
                let token = FencingToken(done.last_insert_id());
                self.hold_term_lock(token).await;
                return Ok(Acquire::Acquired(Lease::new(
                    &self.key,
                    &self.candidate,
                    token,
                )));
            }
            match inner.select(&self.key, &doing).await? {
                Some(stored) => {
                    if let Some(record) = stored.live() {
                        return Ok(Acquire::Held(record));
                    }
                    if let Some(mark) = stored
                        .handoff
                        .as_ref()
                        .and_then(|h| h.reserved(&self.candidate))
                    {
                        return Ok(Acquire::Reserved(mark));
                    }
                }
                None => {
                    retrying(Effect::None, || {
                        sqlx::query(q(&inner.sql.ensure))
                            .bind(&self.key)
                            .execute(&inner.pool)
                    })
                    .await
                    .map_err(|e| inner.error(&doing, Effect::None, e))?;
                }
            }
        }
        Err(Error::Unavailable {
            store: STORE,
            message: format!("{doing}: the key kept changing hands; try again"),
            source: None,
        })
    }

    async fn renew(&mut self, lease: &Lease, ttl: Duration) -> Result<Renew> {
        let inner = &self.store.inner;
        inner.ready().await?;
        if let Ok(token) = i64::try_from(lease.token.0) {
            let renewal = Renewal {
                key: lease.key.clone(),
                holder: lease.holder.clone(),
                token,
                ttl_us: ttl_us(ttl),
            };
            let batch_inner = Arc::clone(&self.store.inner);
            let renewed = inner
                .renewals
                .submit(
                    renewal,
                    batch::window(ttl),
                    STORE,
                    move |batch| async move { Ok(batch_inner.renew_many(batch).await) },
                )
                .await?;
            if let Some(renewed) = renewed {
                return Ok(renewed);
            }
        }
        // Lost (rare): only now is the description for errors worth building.
        let doing = format!("renewing the lease at key {:?}", lease.key);
        let current = inner.select(&lease.key, &doing).await?;
        self.drop_term_lock().await;
        Ok(Renew::Lost(current.and_then(|s| s.live())))
    }

    async fn release(&mut self, lease: &Lease) -> Result<()> {
        let inner = &self.store.inner;
        inner.ready().await?;
        let Ok(token) = i64::try_from(lease.token.0) else {
            return Ok(());
        };
        let doing = format!("releasing the lease at key {:?}", lease.key);
        let done = retrying(Effect::None, || {
            sqlx::query(q(&inner.sql.release))
                .bind(&lease.key)
                .bind(&lease.holder)
                .bind(token)
                .execute(&inner.pool)
        })
        .await
        .map_err(|e| inner.error(&doing, Effect::None, e))?;
        if done.rows_affected() == 1 {
            inner.feed.publish(Some(&lease.key), Change::Released);
        }
        // After the row is free: the followers this wakes find it free.
        self.drop_term_lock().await;
        Ok(())
    }

    async fn hand_over(&mut self, lease: &Lease, to: Option<&str>, window: Duration) -> Result<()> {
        let inner = &self.store.inner;
        if let Some(to) = to {
            check_len("candidate id", to)?;
        }
        inner.ready().await?;
        let Ok(token) = i64::try_from(lease.token.0) else {
            return Ok(());
        };
        let doing = format!("handing over the lease at key {:?}", lease.key);
        // Repeats harmlessly: a second run finds the lease gone and writes nothing.
        let done = retrying(Effect::None, || {
            sqlx::query(q(&inner.sql.hand_over))
                .bind(to.unwrap_or(""))
                .bind(&lease.holder)
                .bind(ttl_us(window))
                .bind(&lease.key)
                .bind(&lease.holder)
                .bind(token)
                .execute(&inner.pool)
        })
        .await
        .map_err(|e| inner.error(&doing, Effect::None, e))?;
        if done.rows_affected() == 1 {
            inner.feed.publish(
                Some(&lease.key),
                Change::HandedOver {
                    to: to.map(str::to_owned),
                },
            );
        }
        // After the mark is written: the followers this wakes find it (and their pollers
        // tell them it is a handoff).
        self.drop_term_lock().await;
        Ok(())
    }

    async fn watch(&mut self) -> Result<Option<Changes>> {
        self.store.subscribe(&self.key, true).await.map(Some)
    }
}

// ---------------------------------------------------------------------------------------------
// The watch: blocked on the term lock, polling where no one holds it.

/// The poller of one key; stops when the last subscription to it is dropped.
struct Poller {
    task: tokio::task::JoinHandle<()>,
    /// The store's count of running pollers, which this one is part of.
    polling: Arc<AtomicUsize>,
    /// Becomes true once the poller has read the key the first time: every change after that
    /// is published.
    baseline: tokio::sync::watch::Receiver<bool>,
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.task.abort();
        self.polling.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a poll saw at a key, for telling changes apart.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Held {
        holder: String,
        token: u64,
    },
    /// `handed_to`: the live mark's candidate (`''` for anyone), if a handoff left one.
    Free {
        released: bool,
        handed_to: Option<String>,
    },
}

impl Seen {
    fn of(stored: Option<Stored>) -> Seen {
        match stored {
            Some(s) if s.live().is_some() => Seen::Held {
                holder: s.holder.unwrap_or_default(),
                token: s.token,
            },
            Some(s) => Seen::Free {
                released: !s.has_expiry,
                handed_to: match &s.handoff {
                    Some(Handoff::Mark { to, left_us, .. }) if *left_us > 0 => Some(to.clone()),
                    _ => None,
                },
            },
            None => Seen::Free {
                released: true,
                handed_to: None,
            },
        }
    }
}

impl MysqlStore {
    /// Changes to `key` for a candidate or an observer (see [`Feed`]), from this store's
    /// poller of the key (started if none runs).
    async fn subscribe(&self, key: &str, candidate: bool) -> Result<Changes> {
        let inner = &self.inner;
        inner.ready().await?;
        // One poller per key and store, however many subscribe at once: found or started
        // under one lock, with no await in between (candidates that start together used to
        // start one poller each).
        let (changes, mut baseline) = self.poll_key(key, candidate);
        // Returned once the poller has read the key, so a change after the caller's next read
        // is published (a poller whose task ended stops the wait too).
        let _ = baseline.wait_for(|taken| *taken).await;
        Ok(changes)
    }

    /// A stream of `key`'s changes from its poller, found or started, and the poller's
    /// baseline signal.
    fn poll_key(
        &self,
        key: &str,
        candidate: bool,
    ) -> (Changes, tokio::sync::watch::Receiver<bool>) {
        let inner = &self.inner;
        let mut pollers = lock(&inner.pollers);
        if let Some(poller) = pollers.get(key).and_then(std::sync::Weak::upgrade) {
            let baseline = poller.baseline.clone();
            return (inner.feed.subscribe(key, candidate, poller), baseline);
        }
        // Subscribe first; the poller then takes its baseline, so no change after it is missed.
        let rx = inner.feed.receiver(key);
        let (baseline_taken, baseline) = tokio::sync::watch::channel(false);
        let weak = Arc::downgrade(inner);
        let owned_key = key.to_owned();
        let poll = inner.poll;
        let options = inner.pool.connect_options();
        let database = Arc::clone(&inner.database);
        let table = inner.url.table.clone();
        let reads = Arc::clone(&inner.poller_reads);
        let permits = Arc::clone(&inner.waiting);
        let task = tokio::spawn(async move {
            let doing = format!("watching key {owned_key:?}");
            let mut waiting = LockWait::new(options, permits);
            // Connected before the first read, so the first wait does not have to.
            waiting.connect().await;
            let first = match weak.upgrade() {
                Some(inner) => {
                    reads.fetch_add(1, Ordering::AcqRel);
                    inner.select(&owned_key, &doing).await.ok()
                }
                None => return,
            };
            let _ = baseline_taken.send(true);
            // What the last read found (`None`: nothing, or the read failed), and what was
            // last published.
            let mut seen = first.clone().map(Seen::of);
            let mut last = first.flatten();
            // The last term found without its lock, and how far the looking went: 1, read at
            // once; 2, looked for again over one poll interval.
            let mut rechecked: Option<(u64, u8)> = None;
            loop {
                // Until the row's term lock is released (push), or the lease is due to
                // expire; without a lock to wait for, one poll interval (D110).
                // How long to pause before the next read, and whether a release woke us.
                let mut pause = poll;
                let mut woke = false;
                if let Some((token, ttl)) =
                    last.as_ref().and_then(|s| Some((s.token, s.live()?.ttl)))
                {
                    let name = lock_name(&database, &table, &owned_key, token);
                    // A little past the expiry, so that the read finds it expired.
                    let until_expiry = (ttl + Duration::from_millis(2)).max(poll);
                    let stage = match rechecked {
                        Some((t, stage)) if t == token => stage,
                        _ => 0,
                    };
                    let mut woken = waiting.wait(&name, until_expiry).await;
                    if woken == Woken::NotHeld && stage == 0 {
                        // The term may have ended before this store looked: read at once.
                        rechecked = Some((token, 1));
                        pause = Duration::ZERO;
                    } else {
                        if woken == Woken::NotHeld && stage == 1 {
                            // Still held, its lock not yet: a term just begun takes its lock
                            // a moment after its acquire. Look again after 1, 2, 4, 8 ms, once
                            // per term, so a leader without push costs little more than the
                            // poll.
                            rechecked = Some((token, 2));
                            let mut step = Duration::from_millis(1);
                            let mut paused = Duration::ZERO;
                            while woken == Woken::NotHeld && paused + step < poll {
                                tokio::time::sleep(step).await;
                                paused += step;
                                step *= 2;
                                woken = waiting.wait(&name, until_expiry).await;
                            }
                            pause = poll.saturating_sub(paused);
                        }
                        match woken {
                            Woken::Released => {
                                woke = true;
                                pause = Duration::ZERO;
                            }
                            Woken::TimedOut => pause = Duration::ZERO,
                            Woken::NotHeld | Woken::Failed => {}
                        }
                    }
                }
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
                let Some(inner) = weak.upgrade() else { return };
                reads.fetch_add(1, Ordering::AcqRel);
                let stored = match inner.select(&owned_key, "polling").await {
                    Ok(s) => s,
                    Err(e) => {
                        debug!(key = owned_key, error = %e, "poll failed");
                        last = None;
                        continue;
                    }
                };
                let now = Seen::of(stored.clone());
                last = stored;
                if seen.as_ref() != Some(&now) {
                    let change = match (&seen, &now) {
                        (_, Seen::Held { holder, .. }) => Change::Acquired {
                            holder: holder.clone(),
                        },
                        (
                            _,
                            Seen::Free {
                                handed_to: Some(to),
                                ..
                            },
                        ) => Change::HandedOver { to: anyone(to) },
                        (Some(Seen::Held { .. }), Seen::Free { released: true, .. }) => {
                            Change::Released
                        }
                        (
                            Some(Seen::Held { .. }),
                            Seen::Free {
                                released: false, ..
                            },
                        ) => Change::Expired,
                        _ => Change::Other,
                    };
                    inner.feed.publish(Some(&owned_key), change);
                    seen = Some(now);
                } else if woke {
                    // Woken, but the row did not change (the leader's lock connection ended,
                    // or its term ended by the deadline): no push for this term; poll.
                    tokio::time::sleep(poll).await;
                }
            }
        });
        let taken = baseline.clone();
        inner.polling.fetch_add(1, Ordering::AcqRel);
        let poller = Arc::new(Poller {
            task,
            polling: Arc::clone(&inner.polling),
            baseline,
        });
        pollers.insert(key.to_owned(), Arc::downgrade(&poller));
        (Feed::stream(rx, candidate, poller), taken)
    }
}
