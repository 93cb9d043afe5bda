//! PostgreSQL: one upsert per acquisition, expiry by the server's `clock_timestamp()`, push
//! handoff with `LISTEN`/`NOTIFY`.
//!
//! # Layout
//!
//! One table, `baton_leases` by default (`?table=NAME`), one row per election key. The same
//! definition, with comments for DBAs, is in `crates/baton/sql/postgres.sql`:
//!
//! | column | type | meaning |
//! |---|---|---|
//! | `key` | `text PRIMARY KEY` | the election key |
//! | `holder` | `text`, `NULL` when released | the holder's candidate id |
//! | `token` | `bigint NOT NULL` | the last fencing token minted for the key (1, 2, ...) |
//! | `expires_at` | `timestamptz`, `NULL` when released | when the lease ends, by the server's clock |
//! | `acquired_at` | `timestamptz` | when the lease was last acquired, for humans |
//! | `renewed_at` | `timestamptz` | when it was last renewed, for humans |
//! | `handoff_to` | `text` | a planned handoff's candidate (`''`: anyone but `handoff_from`) |
//! | `handoff_from` | `text` | the leader that handed over, or is asked to |
//! | `handoff_until` | `timestamptz` | when the handoff's mark runs out, by the server's clock; `NULL` for a request |
//!
//! A release sets `holder` and `expires_at` to `NULL` and keeps the row, so `token` survives it
//! and every later acquisition gets a larger one. Rows in which `holder` and `expires_at` are
//! not both set or both `NULL`, whose `token` is below 1 or the largest `bigint` (no token can
//! follow it), or whose `expires_at` or `handoff_until` is `infinity` or `-infinity`, were not
//! written by Baton: they give [`Error::ForeignData`] and are never written to.
//!
//! A second table, `<table>_candidates` (`baton_leases_candidates`), keeps presence records
//! ([`LeaseStore::announce`], D134; see [presence records](super#presence-records)):
//!
//! | column | type | meaning |
//! |---|---|---|
//! | `key` | `text NOT NULL` | the election key |
//! | `candidate` | `text NOT NULL` | the candidate's id; `PRIMARY KEY (key, candidate)` |
//! | `priority` | `bigint NOT NULL` | its priority, 0 to 4294967295 |
//! | `expires_at` | `timestamptz NOT NULL` | when the record ends, by the server's clock |
//!
//! An announce is one statement: a `WITH` that deletes the key's records that ran out,
//! upserts its own and returns the live ones. Presence never touches the lease table.
//!
//! # Planned handoff
//!
//! A handoff ([`Candidacy::hand_over`]) is the release's `UPDATE` that also fills the three
//! `handoff_` columns: the *mark*, with `handoff_until` the server's `clock_timestamp()` plus
//! the window. Until then only `handoff_to` (or, for `''`, anyone but `handoff_from`) acquires:
//! the acquire's upsert declines anyone else, and the read that follows a declined upsert (as
//! for a held key) answers [`Acquire::Reserved`] with the time the mark has left by the
//! server's clock. The acquisition that succeeds clears the columns in the same statement, so
//! a successful acquire is still one statement. A mark that ran out is ignored.
//!
//! A handoff asked for by any process ([`LeaseStore::request_handoff`], `baton handoff`) is
//! the same columns without an end, on the held row (`handoff_from` = the holder): one
//! `UPDATE` that does not touch holder, token or expiry, and that writes nothing when nobody
//! holds the key or `to` already does. The renewal returns `handoff_to` with each lease it
//! renewed, so the holder learns of the request without another statement
//! ([`Renew::HandoffRequested`]); a release, a handoff and the next acquisition clear it.
//!
//! Handoff columns Baton could not have written (a mark beside a holder, a request on a free
//! row or naming another holder, `handoff_until` without the others, ...) make the row
//! foreign: [`Error::ForeignData`], and every write's `WHERE` leaves such a row alone.
//!
//! # Setup
//!
//! On first use the store looks the table up (`to_regclass`, through the connection's
//! `search_path`). If it is missing and the URL does not say `create=false`, the store creates
//! it; a user without the right to (`42501`) gets a configuration error that points to the SQL
//! file, which a DBA can run instead. An existing table must have exactly the columns above,
//! with those types, and a unique index on `key`; otherwise every call fails with
//! [`Error::ForeignData`] naming what differs. The one exception is Baton's own table from
//! before planned handoffs (the first six columns, exactly): the store adds the three
//! `handoff_` columns with one `ALTER TABLE ... ADD COLUMN IF NOT EXISTS` (two stores doing so
//! at once: one adds them, the other finds them), which rewrites no row. A role that may not
//! (it does not own the table) gets a configuration error quoting the statement to have run.
//! Baton never drops a table or changes a column.
//! The role Baton connects as needs `SELECT, INSERT, UPDATE` on the lease table, and
//! `SELECT, INSERT, UPDATE, DELETE` on the presence table (and `CREATE` on the schema only if
//! Baton is to create them). Without the presence table, and without the right to create it
//! (or with `create=false`), presence is off and nothing fails. The presence table is checked
//! as the lease table is (a relation of its name with other columns, or without a unique
//! index on `(key, candidate)`, is [`Error::ForeignData`] on the presence calls only).
//!
//! # Writes and time
//!
//! Every write is one statement, atomic on its own (`ACQUIRE`, `RENEW`, `RELEASE`,
//! `HAND_OVER`, `REQUEST_HANDOFF`). The
//! acquire takes the row only if it is free or expired, bumps `token` in the same statement and
//! returns it. Renew and release match on `holder` **and** `token`. The renewals of a store's
//! elections that fall due within a short window (at most 20 ms) go as one `RENEW` statement
//! over arrays (`unnest`), each lease still matched on its own holder and token (D126).
//! Expiry is computed and
//! compared with the server's `clock_timestamp()`; Baton sends only durations, never
//! timestamps, so client clocks never decide who leads.
//!
//! # Push
//!
//! Acquire, renew, release, handoff and a handoff request call `pg_notify` in the same
//! statement as the write, so a notice is sent exactly when the write commits, on the channel
//! named like the table ([`Change::HandedOver`] and [`Change::HandoffRequested`] for the last
//! two, so a leader that listens hears of a request from any process at once). A follower that
//! hears of an acquire or a renewal waits out that fresh lease without asking the server, so
//! idle followers send no statements while the leader renews (the cost is one notice per
//! renewal to each listening connection). A store listens
//! on a dedicated connection (sqlx's `PgListener`, outside the pool), started by the first
//! [`watch`](Candidacy::watch) and kept until the store is dropped; it reconnects by itself,
//! and after a reconnect tells every watcher to look again ([`Change::Other`]), since notices
//! sent while it was away are lost. A follower therefore wakes one notification after a
//! release: a graceful handoff costs about two round trips. Of a store's candidates, one
//! answers a release; the others wait for the winner's notice (docs/decisions.md D41).
//!
//! # Connections
//!
//! An sqlx pool of at most four connections per store, opened lazily, so a store built while
//! the server is down works once it is up. A connection found dead (`pg_terminate_backend`, a
//! restart, a proxy) is replaced, and reads, renewals and releases (which repeat harmlessly)
//! are retried at once on a fresh connection, so a killed backend costs no leadership. An
//! acquire is retried only when the server said the statement did not run. The engine bounds
//! every call with its own timeout and drops the future at its deadline; the pool then closes
//! the connection that was interrupted.
//!
//! # URLs
//!
//! `postgres://[user[:password]@]host[:port]/database[?options]` (or `postgresql://`), with
//! libpq's parameters as sqlx reads them: `sslmode=disable|prefer|require|verify-ca|verify-full`,
//! `sslrootcert=PATH`, `sslcert=PATH`, `sslkey=PATH`, `application_name`, `options`, plus
//! Baton's `table=` and `create=` (see [the SQL stores](super)). TLS is rustls with the
//! system's trust store, plus the CA that `sslrootcert` names (in addition, not instead: see
//! [TLS](super#tls)). The password never appears in errors, logs or [`StoreInfo`].

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Executor, Row, SqlSafeStr};
use tokio::sync::{Mutex, OnceCell, oneshot};
use tracing::debug;

use super::{
    Effect, Feed, Handoff, MAX_PRIORITY, Notice, SqlUrl, anyone, candidates_table, handoff_shape,
    left, map_error, parse_handoff, pending, presence_rows, retrying, ttl_us,
};
use crate::store::batch::{self, Batcher};
use crate::store::{
    Acquire, Candidacy, Change, Changes, Lease, LeaseRecord, LeaseStore, PendingHandoff, Presence,
    Renew, StoreInfo,
};
use crate::{Error, FencingToken, Result};

/// The store's name in errors and [`StoreInfo`].
const STORE: &str = "postgres";

/// Where DBAs find the table definition.
const SQL_FILE: &str = "crates/baton/sql/postgres.sql in Baton's sources";

/// The lease table (`{t}` is the validated table name).
const CREATE_TABLE: &str = "
CREATE TABLE IF NOT EXISTS {t} (
    key         text PRIMARY KEY,
    holder      text,
    token       bigint NOT NULL,
    expires_at  timestamptz,
    acquired_at timestamptz,
    renewed_at  timestamptz,
    handoff_to    text,
    handoff_from  text,
    handoff_until timestamptz
)";

/// The columns [`CREATE_TABLE`] makes: name, `format_type`, NOT NULL. A table with only the
/// first six (Baton's before planned handoffs) gets the last three added
/// ([`ADD_HANDOFF_COLUMNS`]).
const COLUMNS: [(&str, &str, bool); 9] = [
    ("key", "text", true),
    ("holder", "text", false),
    ("token", "bigint", true),
    ("expires_at", "timestamp with time zone", false),
    ("acquired_at", "timestamp with time zone", false),
    ("renewed_at", "timestamp with time zone", false),
    ("handoff_to", "text", false),
    ("handoff_from", "text", false),
    ("handoff_until", "timestamp with time zone", false),
];

/// How many of [`COLUMNS`] a table made before planned handoffs has.
const COLUMNS_BEFORE_HANDOFF: usize = 6;

/// Add the handoff columns to a table made before them (D133): one statement, so it is all
/// or nothing, and `IF NOT EXISTS`, so two stores opening the table at once both succeed
/// (the second waits for the first's lock, then finds the columns). No row is rewritten.
const ADD_HANDOFF_COLUMNS: &str = "ALTER TABLE {t} \
ADD COLUMN IF NOT EXISTS handoff_to text, \
ADD COLUMN IF NOT EXISTS handoff_from text, \
ADD COLUMN IF NOT EXISTS handoff_until timestamptz";

/// What kind of relation `$1` is (`r` for a table), if it exists.
const RELATION_KIND: &str = "SELECT c.relkind::text FROM pg_class c WHERE c.oid = to_regclass($1)";

/// The columns of relation `$1`.
const TABLE_COLUMNS: &str = "
SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull
FROM pg_attribute a
WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum";

/// Whether relation `$1` has a unique index on `key` alone, which `ACQUIRE`'s
/// `ON CONFLICT (key)` needs.
const KEY_IS_UNIQUE: &str = "
SELECT EXISTS (
    SELECT 1 FROM pg_index i
    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
    WHERE i.indrelid = to_regclass($1) AND i.indisunique AND i.indnkeyatts = 1
      AND i.indpred IS NULL AND a.attname = 'key')";

/// The row at key `$1`: holder, token, and microseconds left by the server's clock; then the
/// handoff columns, with the microseconds the mark has left.
const SELECT_LEASE: &str = "
SELECT holder, token, expires_at IS NOT NULL,
       CASE WHEN isfinite(expires_at)
            THEN (extract(epoch FROM expires_at - clock_timestamp()) * 1000000)::bigint END,
       handoff_to, handoff_from, handoff_until IS NOT NULL,
       CASE WHEN isfinite(handoff_until)
            THEN (extract(epoch FROM handoff_until - clock_timestamp()) * 1000000)::bigint END,
       coalesce(isfinite(expires_at), true) AND coalesce(isfinite(handoff_until), true)
FROM {t} WHERE key = $1";

/// Take key `$1` for candidate `$2` for `$3` µs if it is free (no row, released, or expired)
/// and no live handoff mark keeps `$2` out, minting the next token and clearing the handoff
/// columns in the same statement, and notify channel `$4` (`a <holder length> <holder><key>`).
/// Returns the new token, or no row if the key is held, reserved, or holds a row Baton did not
/// write.
const ACQUIRE: &str = "
WITH won AS (
    INSERT INTO {t} AS l (key, holder, token, expires_at, acquired_at, renewed_at)
    VALUES ($1, $2, 1, clock_timestamp() + $3::bigint * interval '1 microsecond',
            clock_timestamp(), clock_timestamp())
    ON CONFLICT (key) DO UPDATE SET
        holder      = excluded.holder,
        token       = l.token + 1,
        expires_at  = excluded.expires_at,
        acquired_at = excluded.acquired_at,
        renewed_at  = excluded.renewed_at,
        handoff_to    = NULL,
        handoff_from  = NULL,
        handoff_until = NULL
    WHERE l.token >= 1
      AND (l.holder IS NULL) = (l.expires_at IS NULL)
      AND (l.holder IS NULL OR l.expires_at <= clock_timestamp())
      AND {shape_l}
      AND (l.handoff_until IS NULL OR l.handoff_until <= clock_timestamp()
           OR l.handoff_to = excluded.holder
           OR (l.handoff_to = '' AND l.handoff_from <> excluded.holder))
    RETURNING key, holder, token
)
SELECT won.token FROM won
CROSS JOIN LATERAL pg_notify($4, CASE WHEN octet_length(won.key) + octet_length(won.holder) < 7000
    THEN 'a ' || length(won.holder) || ' ' || won.holder || won.key ELSE '' END) AS n";

/// Extend many leases at once (D126): the lease at each key of `$1` by that entry's TTL in `$4`
/// (µs) from now, if the holder in `$2` with the token in `$3` holds it and it has not expired
/// (arrays of one length, sorted by key, so that two batches lock rows they share in one
/// order). Notifies channel `$5` for each (`n <holder length> <holder><key>`), so idle
/// followers wait out the fresh lease without asking; no notice for keys too long for a
/// payload: the followers of those ask at the lease's end instead. Returns the key and token
/// of each lease it renewed, and the handoff asked of it (`handoff_to`, `NULL` for none: a
/// held row has no mark).
const RENEW: &str = "
WITH renewed AS (
    UPDATE {t} AS l
    SET expires_at = clock_timestamp() + i.ttl_us * interval '1 microsecond',
        renewed_at = clock_timestamp()
    FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[]) AS i(key, holder, token, ttl_us)
    WHERE l.key = i.key AND l.holder = i.holder AND l.token = i.token
      AND l.expires_at > clock_timestamp() AND {shape_l}
    RETURNING l.key, l.holder, l.token, l.handoff_to
)
SELECT renewed.key, renewed.token, renewed.handoff_to FROM renewed
LEFT JOIN LATERAL (
    SELECT pg_notify($5, 'n ' || length(renewed.holder) || ' ' || renewed.holder || renewed.key)
    WHERE octet_length(renewed.key) + octet_length(renewed.holder) < 7000
) AS n ON true";

/// Free key `$1` if holder `$2` with token `$3` holds it (the row and its token stay), with
/// any handoff asked of it, and notify channel `$4` (`r <key>`).
const RELEASE: &str = "
WITH freed AS (
    UPDATE {t} SET holder = NULL, expires_at = NULL, handoff_to = NULL, handoff_from = NULL
    WHERE key = $1 AND holder = $2 AND token = $3 AND expires_at IS NOT NULL AND {shape}
    RETURNING key
)
SELECT 1 FROM freed
CROSS JOIN LATERAL pg_notify($4, CASE WHEN octet_length(freed.key) < 7000
    THEN 'r ' || freed.key ELSE '' END) AS n";

/// Hand key `$1` over if holder `$2` with token `$3` holds it: free it as [`RELEASE`] does and
/// leave the mark (to `$5`, `''` for anyone; from `$2`; until the server's clock plus `$6`
/// µs), and notify channel `$4` (`h <to length> <to><key>`).
const HAND_OVER: &str = "
WITH freed AS (
    UPDATE {t} SET holder = NULL, expires_at = NULL,
        handoff_to = $5::text, handoff_from = $2,
        handoff_until = clock_timestamp() + $6::bigint * interval '1 microsecond'
    WHERE key = $1 AND holder = $2 AND token = $3 AND expires_at IS NOT NULL AND {shape}
    RETURNING key
)
SELECT 1 FROM freed
CROSS JOIN LATERAL pg_notify($4, CASE WHEN octet_length(freed.key) + octet_length($5::text) < 7000
    THEN 'h ' || length($5::text) || ' ' || $5::text || freed.key ELSE '' END) AS n";

/// Ask the holder of key `$1` to hand over to `$2` (`''` for anyone), if someone other than
/// `$2` holds it unexpired: the request goes beside the lease (`handoff_from` = the holder),
/// which is not touched; notify channel `$3` (`q <to length> <to><key>`). Returns the holder,
/// its token and the microseconds its lease has left; no row when nothing was written.
const REQUEST_HANDOFF: &str = "
WITH asked AS (
    UPDATE {t} SET handoff_to = $2::text, handoff_from = holder
    WHERE key = $1 AND holder IS NOT NULL AND holder <> $2::text
      AND expires_at > clock_timestamp() AND token >= 1 AND {shape}
    RETURNING key, holder, token,
        (extract(epoch FROM expires_at - clock_timestamp()) * 1000000)::bigint AS left_us
)
SELECT asked.holder, asked.token, asked.left_us FROM asked
CROSS JOIN LATERAL pg_notify($3, CASE WHEN octet_length(asked.key) + octet_length($2::text) < 7000
    THEN 'q ' || length($2::text) || ' ' || $2::text || asked.key ELSE '' END) AS n";

/// The condition that a row (`prefix` qualifies its columns) is one Baton could have written,
/// beyond its handoff columns ([`handoff_shape`]): a token below the largest `bigint` (no token
/// could follow it), and finite times (`infinity` cannot be subtracted from, and `-infinity`
/// would make a held lease look expired). Every write's `WHERE` includes it, so such a row is
/// never written to; [`Inner::select`] reports it as foreign data.
fn row_shape(prefix: &str) -> String {
    let p = prefix;
    format!(
        "{} AND {p}token < {} AND ({p}expires_at IS NULL OR isfinite({p}expires_at)) \
         AND ({p}handoff_until IS NULL OR isfinite({p}handoff_until))",
        handoff_shape(prefix),
        i64::MAX
    )
}

/// The presence table beside the lease table (`{c}`, see [`candidates_table`]): one row per
/// candidate that announces itself at a key, alive until `expires_at` by the server's clock.
const CREATE_CANDIDATES: &str = "
CREATE TABLE IF NOT EXISTS {c} (
    key        text NOT NULL,
    candidate  text NOT NULL,
    priority   bigint NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (key, candidate)
)";

/// The columns [`CREATE_CANDIDATES`] makes: name, `format_type`, NOT NULL.
const CANDIDATE_COLUMNS: [(&str, &str, bool); 4] = [
    ("key", "text", true),
    ("candidate", "text", true),
    ("priority", "bigint", true),
    ("expires_at", "timestamp with time zone", true),
];

/// Whether relation `$1` has a unique index on exactly `(key, candidate)`, which
/// [`ANNOUNCE`]'s `ON CONFLICT (key, candidate)` needs.
const PAIR_IS_UNIQUE: &str = "
SELECT EXISTS (
    SELECT 1 FROM pg_index i
    WHERE i.indrelid = to_regclass($1) AND i.indisunique AND i.indnkeyatts = 2
      AND i.indnatts = 2 AND i.indpred IS NULL
      AND (SELECT array_agg(a.attname::text ORDER BY a.attname::text) FROM pg_attribute a
           WHERE a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey::int2[]))
          = ARRAY['candidate', 'key'])";

/// Write candidate `$2`'s presence record at key `$1` (priority `$3`, alive `$4` µs by the
/// server's clock), drop the key's records that ran out, and return the key's live records
/// (candidate, priority, µs left), all in one statement. A row with a priority Baton could not
/// have written (outside 0..=[`MAX_PRIORITY`]) is never deleted nor updated, and is returned
/// whether it is live or not, so the caller reports it. (Every part of the statement sees the
/// table as it was before it: the record just written comes from `mine`.)
const ANNOUNCE: &str = "
WITH gone AS (
    DELETE FROM {c}
    WHERE key = $1 AND candidate <> $2 AND expires_at <= clock_timestamp() AND {pshape}
), mine AS (
    INSERT INTO {c} AS p (key, candidate, priority, expires_at)
    VALUES ($1, $2, $3, clock_timestamp() + $4::bigint * interval '1 microsecond')
    ON CONFLICT (key, candidate) DO UPDATE
        SET priority = excluded.priority, expires_at = excluded.expires_at
        WHERE p.priority BETWEEN 0 AND {max} AND isfinite(p.expires_at)
    RETURNING candidate, priority,
        (extract(epoch FROM expires_at - clock_timestamp()) * 1000000)::bigint AS left_us
)
SELECT candidate, priority, left_us FROM mine
UNION ALL
SELECT candidate, priority, {left_us}
FROM {c}
WHERE key = $1
  AND (NOT ({pshape}) OR (candidate <> $2 AND expires_at > clock_timestamp()))";

/// The live presence records at key `$1` (and any row Baton could not have written).
const CANDIDATES: &str = "
SELECT candidate, priority, {left_us}
FROM {c}
WHERE key = $1 AND (NOT ({pshape}) OR expires_at > clock_timestamp())";

/// Remove candidate `$2`'s presence record at key `$1` (a row Baton could not have written
/// stays).
const WITHDRAW: &str = "DELETE FROM {c} WHERE key = $1 AND candidate = $2 AND {pshape}";

/// The condition that a presence row is one Baton could have written: a priority of 0 to
/// [`MAX_PRIORITY`] and a finite end (`infinity` and `-infinity` cannot be subtracted from,
/// and `-infinity` would look long expired). Such a row is never updated nor deleted, and is
/// returned with no time left (`NULL`, [`PRESENCE_LEFT_US`]) so the caller reports it.
const PRESENCE_SHAPE: &str = "priority BETWEEN 0 AND {max} AND isfinite(expires_at)";

/// A presence row's µs left by the server's clock, `NULL` for an end that is not finite.
const PRESENCE_LEFT_US: &str = "CASE WHEN isfinite(expires_at) \
     THEN (extract(epoch FROM expires_at - clock_timestamp()) * 1000000)::bigint END";

/// The SQL of one table: the constants above with its name filled in.
#[derive(Debug)]
struct Sql {
    create: Arc<str>,
    select: Arc<str>,
    acquire: Arc<str>,
    renew: Arc<str>,
    release: Arc<str>,
    hand_over: Arc<str>,
    request: Arc<str>,
    add_handoff_columns: Arc<str>,
    /// The presence table's name ([`candidates_table`]).
    candidates_table: String,
    create_candidates: Arc<str>,
    announce: Arc<str>,
    candidates: Arc<str>,
    withdraw: Arc<str>,
}

impl Sql {
    fn for_table(table: &str) -> Sql {
        let (shape, shape_l) = (row_shape(""), row_shape("l."));
        let candidates = candidates_table(table);
        let fill = |sql: &str| {
            Arc::from(
                sql.replace("{t}", table)
                    .replace("{c}", &candidates)
                    .replace("{left_us}", PRESENCE_LEFT_US)
                    .replace("{pshape}", PRESENCE_SHAPE)
                    .replace("{max}", &MAX_PRIORITY.to_string())
                    .replace("{shape_l}", &shape_l)
                    .replace("{shape}", &shape),
            )
        };
        Sql {
            create_candidates: fill(CREATE_CANDIDATES),
            announce: fill(ANNOUNCE),
            candidates: fill(CANDIDATES),
            withdraw: fill(WITHDRAW),
            create: fill(CREATE_TABLE),
            select: fill(SELECT_LEASE),
            acquire: fill(ACQUIRE),
            renew: fill(RENEW),
            release: fill(RELEASE),
            hand_over: fill(HAND_OVER),
            request: fill(REQUEST_HANDOFF),
            add_handoff_columns: fill(ADD_HANDOFF_COLUMNS),
            candidates_table: candidates,
        }
    }
}

fn q(sql: &Arc<str>) -> AssertSqlSafe<Arc<str>> {
    AssertSqlSafe(Arc::clone(sql))
}

/// Prepare the election's statements on `conn`, once the table is known to exist (D39).
///
/// sqlx prepares a statement on a connection the first time it runs it there (a Parse and a
/// Describe: one more round trip, and the server parses and analyses the statement). The
/// pool calls this on every connection it opens, and the store once on the idle connections
/// when it finds the table ready, so that cost is paid when a connection is set up, not by the
/// acquire that follows a release: the handoff. When a connection is handed out, it runs again
/// and finds the statements in sqlx's cache (no round trip), or prepares a connection that
/// missed both. A failure here is only logged: the statement then runs, and fails, where the
/// caller sees it.
async fn prepare_election(conn: &mut PgConnection, sql: &Sql, ready: &AtomicBool) {
    if !ready.load(Ordering::Acquire) {
        return;
    }
    // The handoff too: the leaderless gap of a planned handoff runs from its statement to the
    // next leader's acquire.
    for statement in [
        &sql.acquire,
        &sql.select,
        &sql.renew,
        &sql.release,
        &sql.hand_over,
    ] {
        if let Err(e) = conn.prepare(q(statement).into_sql_str()).await {
            debug!(error = %e, "cannot prepare the election's statements; they run unprepared");
            return;
        }
    }
}

/// A [`LeaseStore`] in a PostgreSQL table. Cheap to clone: clones share the pool and the
/// listener.
///
/// ```no_run
/// # async fn f() -> baton::Result<()> {
/// use baton::LeaseStore;
/// use baton::store::sql::postgres::PostgresStore;
///
/// let store = PostgresStore::open("postgres://app:secret@db.internal/app?sslmode=verify-full")?;
/// assert_eq!(store.info().name, "postgres");
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    url: SqlUrl,
    sql: Arc<Sql>,
    /// Set once the table is known to be Baton's.
    ready: OnceCell<()>,
    /// Set once the presence table was looked up: whether this store keeps presence records.
    presence: OnceCell<bool>,
    /// Set with `ready`: from then on the pool prepares the election's statements on every
    /// connection it opens (see [`prepare_election`]).
    table_ready: Arc<AtomicBool>,
    feed: Arc<Feed>,
    /// The listener task, once a watch started it.
    listener: Mutex<Option<ListenerTask>>,
    /// Renewals gathered into one statement per window (D126); `None` for a lease not renewed.
    renewals: Arc<Batcher<Renewal, Option<Renew>>>,
}

/// One lease to renew, for [`RENEW`].
#[derive(Debug)]
struct Renewal {
    key: String,
    holder: String,
    token: i64,
    ttl_us: i64,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("url", &self.inner.url.redacted)
            .field("table", &self.inner.url.table)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Open a store from a `postgres://` or `postgresql://` URL. Connects lazily: nothing is
    /// sent until the first call. Needs a tokio runtime.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a malformed URL, a bad table name or option, or no tokio runtime.
    pub fn open(url: &str) -> Result<PostgresStore> {
        let url = SqlUrl::parse(url, STORE)?;
        let options = PgConnectOptions::from_str(&url.driver_url).map_err(|e| {
            Error::Config(format!(
                "{} is not a valid PostgreSQL URL: {e}",
                url.redacted
            ))
        })?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::Config(format!(
                "the postgres store ({}) must be opened inside a tokio runtime",
                url.redacted
            )));
        }
        let sql = Arc::new(Sql::for_table(&url.table));
        let table_ready = Arc::new(AtomicBool::new(false));
        let (sql_c, ready_c) = (Arc::clone(&sql), Arc::clone(&table_ready));
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .min_connections(0)
            .acquire_timeout(Duration::from_secs(5))
            .idle_timeout(Duration::from_secs(60))
            .test_before_acquire(false)
            .after_connect(move |conn, _| {
                let (sql, ready) = (Arc::clone(&sql_c), Arc::clone(&ready_c));
                Box::pin(async move {
                    prepare_election(conn, &sql, &ready).await;
                    Ok(())
                })
            })
            // A connection that was on its way back to the pool (sqlx returns them from a task
            // of their own) when the table became ready missed both the above and `ready()`'s
            // round of the idle ones: prepare it as it is handed out. On a prepared connection
            // this finds the statements in sqlx's cache and sends nothing.
            .before_acquire({
                let (sql, ready) = (Arc::clone(&sql), Arc::clone(&table_ready));
                move |conn, _| {
                    let (sql, ready) = (Arc::clone(&sql), Arc::clone(&ready));
                    Box::pin(async move {
                        prepare_election(conn, &sql, &ready).await;
                        Ok(true)
                    })
                }
            })
            .connect_lazy_with(options);
        Ok(PostgresStore::with_pool(pool, url, sql, table_ready))
    }

    /// A store on the application's own pool, in the lease table `table`
    /// ([`DEFAULT_TABLE`](super::DEFAULT_TABLE) is the usual name), which Baton creates when
    /// it is missing. The store shares the pool's connections with the application rather
    /// than opening a second pool; `baton status --store postgres://...?table=NAME` reads the
    /// same election.
    ///
    /// Give the pool room for the election: a renewal waits for a free connection like any
    /// other query, and a pool starved for longer than the grace period makes the leader step
    /// down. A watch (a follower's push) holds one connection of its own for `LISTEN`. The
    /// pool's connections are not prepared ahead for the election's statements (the store's
    /// own pool does that, D39); sqlx prepares them on first use.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an invalid table name.
    pub fn from_pool(pool: PgPool, table: &str) -> Result<PostgresStore> {
        let options = pool.connect_options();
        let url = SqlUrl::for_pool(
            "postgres",
            options.get_username(),
            options.get_host(),
            options.get_port(),
            options.get_database(),
            table,
        )?;
        let sql = Arc::new(Sql::for_table(&url.table));
        Ok(PostgresStore::with_pool(
            pool,
            url,
            sql,
            Arc::new(AtomicBool::new(false)),
        ))
    }

    fn with_pool(pool: PgPool, url: SqlUrl, sql: Arc<Sql>, table_ready: Arc<AtomicBool>) -> Self {
        PostgresStore {
            inner: Arc::new(Inner {
                pool,
                sql,
                table_ready,
                url,
                ready: OnceCell::new(),
                presence: OnceCell::new(),
                feed: Arc::default(),
                listener: Mutex::new(None),
                renewals: Arc::default(),
            }),
        }
    }

    /// The lease table's name.
    pub fn table(&self) -> &str {
        &self.inner.url.table
    }

    /// The presence table's name: `<table>_candidates`, shortened with a hash when that
    /// would be longer than 63 characters (see [the SQL stores](super)).
    pub fn candidates_table(&self) -> &str {
        &self.inner.sql.candidates_table
    }

    /// The pool, for callers that want to run their own statements on the same server.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }
}

impl Inner {
    fn error(&self, doing: &str, effect: Effect, e: sqlx::Error) -> Error {
        map_error(STORE, &self.url.redacted, doing, effect, e)
    }

    /// Renew `batch` in one statement ([`RENEW`]): for each lease, `None` if it was not
    /// renewed, else [`Renew::Renewed`] or the handoff asked of it.
    async fn renew_many(&self, batch: Vec<Renewal>) -> Result<Vec<Result<Option<Renew>>>> {
        let mut order: Vec<usize> = (0..batch.len()).collect();
        order.sort_by(|&a, &b| batch[a].key.cmp(&batch[b].key));
        let keys: Vec<&str> = order.iter().map(|&i| batch[i].key.as_str()).collect();
        let holders: Vec<&str> = order.iter().map(|&i| batch[i].holder.as_str()).collect();
        let tokens: Vec<i64> = order.iter().map(|&i| batch[i].token).collect();
        let ttls: Vec<i64> = order.iter().map(|&i| batch[i].ttl_us).collect();
        let rows: Vec<(String, i64, Option<String>)> = retrying(Effect::None, || {
            sqlx::query_as(q(&self.sql.renew))
                .bind(&keys)
                .bind(&holders)
                .bind(&tokens)
                .bind(&ttls)
                .bind(&self.url.table)
                .fetch_all(&self.pool)
        })
        .await
        .map_err(|e| {
            let doing = if batch.len() == 1 {
                format!("renewing the lease at key {:?}", batch[0].key)
            } else {
                format!(
                    "renewing {} leases (keys {:?}, ...)",
                    batch.len(),
                    batch[0].key
                )
            };
            self.error(&doing, Effect::None, e)
        })?;
        let renewed: std::collections::HashMap<(&str, i64), Option<&str>> = rows
            .iter()
            .map(|(k, t, to)| ((k.as_str(), *t), to.as_deref()))
            .collect();
        Ok(batch
            .iter()
            .map(|r| {
                Ok(renewed
                    .get(&(r.key.as_str(), r.token))
                    .map(|asked| match asked {
                        None => Renew::Renewed,
                        Some(to) => Renew::HandoffRequested { to: anyone(to) },
                    }))
            })
            .collect())
    }

    /// Make sure the table exists and is Baton's, once per store.
    async fn ready(&self) -> Result<()> {
        self.ready
            .get_or_try_init(|| async {
                self.prepare_table().await?;
                // From now on every new connection is prepared as it opens; the ones that
                // checked the table are prepared here, once.
                self.table_ready.store(true, Ordering::Release);
                let idle: Vec<_> = std::iter::from_fn(|| self.pool.try_acquire()).collect();
                for mut conn in idle {
                    prepare_election(&mut conn, &self.sql, &self.table_ready).await;
                }
                Ok::<_, Error>(())
            })
            .await
            .map(|_| ())
    }

    async fn prepare_table(&self) -> Result<()> {
        let doing = "looking up the lease table";
        let table = &self.url.table;
        let kind = |pool| async move {
            retrying(Effect::None, || {
                sqlx::query_scalar::<_, String>(RELATION_KIND)
                    .bind(table)
                    .fetch_optional(pool)
            })
            .await
        };
        let mut found = kind(&self.pool)
            .await
            .map_err(|e| self.error(doing, Effect::None, e))?;
        if found.is_none() {
            if !self.url.create {
                return Err(Error::Config(format!(
                    "the lease table {table} does not exist in {} and the URL says create=false: have it created with {SQL_FILE} (with the table name changed if it is not baton_leases)",
                    self.url.redacted
                )));
            }
            let created = sqlx::query(q(&self.sql.create)).execute(&self.pool).await;
            match created {
                Ok(_) => debug!(table, "created the lease table"),
                Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42501") => {
                    return Err(Error::Config(format!(
                        "the lease table {table} does not exist in {} and this user may not create it ({}): have a DBA create it with {SQL_FILE} and grant SELECT, INSERT, UPDATE on it, or grant CREATE on the schema",
                        self.url.redacted,
                        db.message()
                    )));
                }
                // Another process created it at the same moment: PostgreSQL reports the race
                // as a duplicate table (42P07), a duplicate row type (42710, `type ... already
                // exists`, seen in CI with many connections at once) or a unique violation in
                // its catalog (23505).
                Err(sqlx::Error::Database(db))
                    if matches!(db.code().as_deref(), Some("23505" | "42P07" | "42710")) => {}
                Err(e) => return Err(self.error("creating the lease table", Effect::None, e)),
            }
            found = kind(&self.pool)
                .await
                .map_err(|e| self.error(doing, Effect::None, e))?;
        }
        let foreign = |found: String| Error::ForeignData {
            key: format!("table {table} in {}", self.url.redacted),
            found,
        };
        match found.as_deref() {
            Some("r" | "p") => {}
            Some(kind) => {
                return Err(foreign(format!(
                    "a relation of kind {kind:?} (not a table) named {table}; choose another table with ?table=NAME"
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
        let read_columns = || async {
            retrying(Effect::None, || {
                sqlx::query_as::<_, (String, String, bool)>(TABLE_COLUMNS)
                    .bind(table)
                    .fetch_all(&self.pool)
            })
            .await
            .map_err(|e| self.error(doing, Effect::None, e))
        };
        let expected: Vec<(String, String, bool)> = COLUMNS
            .iter()
            .map(|(n, t, nn)| ((*n).to_owned(), (*t).to_owned(), *nn))
            .collect();
        let mut columns = read_columns().await?;
        if columns == expected[..COLUMNS_BEFORE_HANDOFF] {
            // Baton's table from before planned handoffs.
            self.add_handoff_columns().await?;
            columns = read_columns().await?;
        }
        if columns != expected {
            let show = |cols: &[(String, String, bool)]| {
                cols.iter()
                    .map(|(n, t, nn)| format!("{n} {t}{}", if *nn { " NOT NULL" } else { "" }))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(foreign(format!(
                "a table {table} with columns ({}) where Baton expects ({}); Baton alters no table but its own from before planned handoffs, to add their columns: choose another with ?table=NAME, or recreate it from {SQL_FILE}",
                show(&columns),
                show(&expected)
            )));
        }
        let unique: bool = retrying(Effect::None, || {
            sqlx::query_scalar(KEY_IS_UNIQUE)
                .bind(table)
                .fetch_one(&self.pool)
        })
        .await
        .map_err(|e| self.error(doing, Effect::None, e))?;
        if !unique {
            return Err(foreign(format!(
                "a table {table} whose key column is not its primary key (no unique index on key alone); Baton needs PRIMARY KEY (key): see {SQL_FILE}"
            )));
        }
        Ok(())
    }

    /// Whether this store keeps presence records: the presence table is looked up (and
    /// created when missing, if the URL allows) once per store. Missing, with `create=false`
    /// or without the right to create it: `false`, and the presence calls answer `None`, so a
    /// deployment whose role may use only the lease table keeps working. A relation of that
    /// name with other columns is [`Error::ForeignData`] on every presence call.
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
                sqlx::query_scalar::<_, String>(RELATION_KIND)
                    .bind(table)
                    .fetch_optional(&self.pool)
            })
            .await
            .map_err(|e| self.error(doing, Effect::None, e))
        };
        let mut found = kind().await?;
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
                Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42501") => {
                    tracing::warn!(
                        table,
                        "this role may not create the presence table ({}): presence is off (baton handoff --to cannot tell live candidates, priorities do nothing); have it created with {SQL_FILE}",
                        db.message()
                    );
                    return Ok(false);
                }
                // Created by another process at the same moment (see `prepare_table`).
                Err(sqlx::Error::Database(db))
                    if matches!(db.code().as_deref(), Some("23505" | "42P07" | "42710")) => {}
                Err(e) => return Err(self.error("creating the presence table", Effect::None, e)),
            }
            found = kind().await?;
        }
        let foreign = |found: String| Error::ForeignData {
            key: format!("table {table} in {}", self.url.redacted),
            found,
        };
        match found.as_deref() {
            Some("r" | "p") => {}
            Some(kind) => {
                return Err(foreign(format!(
                    "a relation of kind {kind:?} (not a table) named {table}, where Baton keeps presence records; rename it, or choose another lease table with ?table=NAME"
                )));
            }
            None => return Ok(false),
        }
        let columns: Vec<(String, String, bool)> = retrying(Effect::None, || {
            sqlx::query_as(TABLE_COLUMNS)
                .bind(table)
                .fetch_all(&self.pool)
        })
        .await
        .map_err(|e| self.error(doing, Effect::None, e))?;
        let expected: Vec<(String, String, bool)> = CANDIDATE_COLUMNS
            .iter()
            .map(|(n, t, nn)| ((*n).to_owned(), (*t).to_owned(), *nn))
            .collect();
        let unique = columns == expected
            && retrying(Effect::None, || {
                sqlx::query_scalar::<_, bool>(PAIR_IS_UNIQUE)
                    .bind(table)
                    .fetch_one(&self.pool)
            })
            .await
            .map_err(|e| self.error(doing, Effect::None, e))?;
        if !unique {
            let show = |cols: &[(String, String, bool)]| {
                cols.iter()
                    .map(|(n, t, nn)| format!("{n} {t}{}", if *nn { " NOT NULL" } else { "" }))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(foreign(format!(
                "a table {table} with columns ({}) where Baton expects its presence records ({}, PRIMARY KEY (key, candidate)); rename that table, or choose another lease table with ?table=NAME",
                show(&columns),
                show(&expected)
            )));
        }
        Ok(true)
    }

    /// Presence rows as [`ANNOUNCE`] and [`CANDIDATES`] return them: the live records.
    async fn presence_rows(
        &self,
        key: &str,
        doing: &str,
        sql: &Arc<str>,
        candidate: Option<(&str, i64, i64)>,
    ) -> Result<Vec<Presence>> {
        let rows: Vec<(String, i64, Option<i64>)> = retrying(Effect::None, || {
            let query = sqlx::query_as(q(sql)).bind(key);
            match candidate {
                Some((candidate, priority, ttl_us)) => {
                    query.bind(candidate).bind(priority).bind(ttl_us)
                }
                None => query,
            }
            .fetch_all(&self.pool)
        })
        .await
        .map_err(|e| self.error(doing, Effect::None, e))?;
        let table = format!("{} in {}", self.sql.candidates_table, self.url.redacted);
        presence_rows(key, &table, rows).map(|(live, _)| live)
    }

    /// Add the handoff columns to Baton's table from before them ([`ADD_HANDOFF_COLUMNS`]).
    /// A role that may not alter the table (it is not its owner) gets a configuration error
    /// with the statement to have run.
    async fn add_handoff_columns(&self) -> Result<()> {
        let table = &self.url.table;
        let added = retrying(Effect::None, || {
            sqlx::query(q(&self.sql.add_handoff_columns)).execute(&self.pool)
        })
        .await;
        match added {
            Ok(_) => {
                debug!(table, "added the handoff columns to the lease table");
                Ok(())
            }
            Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42501") => {
                Err(Error::Config(format!(
                    "the lease table {table} in {} was made by an earlier Baton, without the columns of planned handoffs, and this role may not add them ({}): have the table's owner run `{}` (see {SQL_FILE}), or connect as the owner once",
                    self.url.redacted,
                    db.message(),
                    self.sql.add_handoff_columns
                )))
            }
            Err(e) => Err(self.error(
                "adding the handoff columns to the lease table",
                Effect::None,
                e,
            )),
        }
    }

    /// The row at `key`: `Ok(None)` if there is none, the live record if held, and
    /// [`Error::ForeignData`] for a row Baton did not write.
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
        let has_expiry: bool = row.try_get(2).map_err(decode)?;
        let left_us: Option<i64> = row.try_get(3).map_err(decode)?;
        let handoff_to: Option<String> = row.try_get(4).map_err(decode)?;
        let handoff_from: Option<String> = row.try_get(5).map_err(decode)?;
        let has_until: bool = row.try_get(6).map_err(decode)?;
        let until_us: Option<i64> = row.try_get(7).map_err(decode)?;
        let finite: bool = row.try_get(8).map_err(decode)?;
        let foreign = |what: String| Error::ForeignData {
            key: key.to_owned(),
            found: format!("a row in table {} whose {what}", self.url.table),
        };
        if token < 1 {
            return Err(foreign(format!(
                "token is {token} (Baton's tokens start at 1)"
            )));
        }
        if token == i64::MAX {
            return Err(foreign(format!(
                "token is {token}, the largest bigint: no token can follow it"
            )));
        }
        if !finite {
            return Err(foreign(
                "expires_at or handoff_until is infinity or -infinity".to_owned(),
            ));
        }
        if holder.is_some() != has_expiry {
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
            has_until,
            until_us,
        )
        .map_err(foreign)?;
        Ok(Some(Stored {
            holder,
            token: u64::try_from(token).unwrap_or_default(),
            left_us: left_us.unwrap_or(0),
            handoff,
        }))
    }
}

/// A row as Baton writes it.
struct Stored {
    holder: Option<String>,
    token: u64,
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
impl LeaseStore for PostgresStore {
    async fn join(&self, key: &str, candidate: &str) -> Result<Box<dyn Candidacy>> {
        Ok(Box::new(PostgresCandidacy {
            store: self.clone(),
            key: key.to_owned(),
            candidate: candidate.to_owned(),
        }))
    }

    async fn read(&self, key: &str) -> Result<Option<LeaseRecord>> {
        self.inner.ready().await?;
        let stored = self
            .inner
            .select(key, &format!("reading key {key:?}"))
            .await?;
        Ok(stored.and_then(|s| s.live()))
    }

    async fn watch(&self, key: &str) -> Result<Option<Changes>> {
        self.subscribe(key, false).await
    }

    async fn request_handoff(&self, key: &str, to: Option<&str>) -> Result<Option<LeaseRecord>> {
        let inner = &self.inner;
        inner.ready().await?;
        let doing = format!("asking for a handoff at key {key:?}");
        // The lease read when nothing was written may have changed hands in between: try again.
        for _ in 0..3 {
            let asked: Option<(String, i64, Option<i64>)> = retrying(Effect::None, || {
                sqlx::query_as(q(&inner.sql.request))
                    .bind(key)
                    .bind(to.unwrap_or(""))
                    .bind(&inner.url.table)
                    .fetch_optional(&inner.pool)
            })
            .await
            .map_err(|e| inner.error(&doing, Effect::None, e))?;
            if let Some((holder, token, left_us)) = asked {
                return Ok(Some(LeaseRecord {
                    holder,
                    token: FencingToken(u64::try_from(token).unwrap_or_default()),
                    ttl: left(left_us.unwrap_or(0)),
                }));
            }
            // Nothing written: nobody holds the key, `to` does, or the row is not Baton's
            // (which `select` reports).
            match inner.select(key, &doing).await?.and_then(|s| s.live()) {
                None => return Ok(None),
                Some(record) if Some(record.holder.as_str()) == to => return Ok(Some(record)),
                Some(_) => {}
            }
        }
        Err(Error::Unavailable {
            store: STORE,
            message: format!("{doing}: the key kept changing hands; try again"),
            source: None,
        })
    }

    async fn pending_handoff(&self, key: &str) -> Result<Option<PendingHandoff>> {
        self.inner.ready().await?;
        let stored = self
            .inner
            .select(key, &format!("reading the handoff at key {key:?}"))
            .await?;
        Ok(stored.and_then(|s| pending(s.live(), s.handoff.as_ref())))
    }

    async fn announce(
        &self,
        key: &str,
        candidate: &str,
        priority: u32,
        ttl: Duration,
    ) -> Result<Option<Vec<Presence>>> {
        let inner = &self.inner;
        if !inner.presence().await? {
            return Ok(None);
        }
        let doing = format!("writing the presence record of {candidate:?} at key {key:?}");
        let args = (candidate, i64::from(priority), ttl_us(ttl));
        inner
            .presence_rows(key, &doing, &inner.sql.announce, Some(args))
            .await
            .map(Some)
    }

    async fn candidates(&self, key: &str) -> Result<Option<Vec<Presence>>> {
        let inner = &self.inner;
        if !inner.presence().await? {
            return Ok(None);
        }
        let doing = format!("reading the candidates at key {key:?}");
        inner
            .presence_rows(key, &doing, &inner.sql.candidates, None)
            .await
            .map(Some)
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

/// A candidate in a [`PostgresStore`] election. Holds no state in the database.
#[derive(Debug)]
struct PostgresCandidacy {
    store: PostgresStore,
    key: String,
    candidate: String,
}

#[async_trait]
impl Candidacy for PostgresCandidacy {
    async fn try_acquire(&mut self, ttl: Duration) -> Result<Acquire> {
        let inner = &self.store.inner;
        inner.ready().await?;
        let doing = format!("acquiring the lease at key {:?}", self.key);
        // The held or reserved row is read after the upsert declined; if it was freed (or its
        // mark ran out) in between, try again.
        for _ in 0..3 {
            let token: Option<i64> = retrying(Effect::Maybe, || {
                sqlx::query_scalar(q(&inner.sql.acquire))
                    .bind(&self.key)
                    .bind(&self.candidate)
                    .bind(ttl_us(ttl))
                    .bind(&inner.url.table)
                    .fetch_optional(&inner.pool)
            })
            .await
            .map_err(|e| inner.error(&doing, Effect::Maybe, e))?;
            if let Some(token) = token {
                return Ok(Acquire::Acquired(Lease::new(
                    &self.key,
                    &self.candidate,
                    FencingToken(u64::try_from(token).unwrap_or_default()),
                )));
            }
            let Some(stored) = inner.select(&self.key, &doing).await? else {
                continue;
            };
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
                    move |batch| async move { batch_inner.renew_many(batch).await },
                )
                .await?;
            if let Some(renewed) = renewed {
                return Ok(renewed);
            }
        }
        // Lost (rare): only now is the description for errors worth building.
        let doing = format!("renewing the lease at key {:?}", lease.key);
        let current = inner.select(&lease.key, &doing).await?;
        Ok(Renew::Lost(current.and_then(|s| s.live())))
    }

    async fn release(&mut self, lease: &Lease) -> Result<()> {
        let inner = &self.store.inner;
        inner.ready().await?;
        let Ok(token) = i64::try_from(lease.token.0) else {
            return Ok(());
        };
        let doing = format!("releasing the lease at key {:?}", lease.key);
        retrying(Effect::None, || {
            sqlx::query(q(&inner.sql.release))
                .bind(&lease.key)
                .bind(&lease.holder)
                .bind(token)
                .bind(&inner.url.table)
                .fetch_all(&inner.pool)
        })
        .await
        .map_err(|e| inner.error(&doing, Effect::None, e))?;
        Ok(())
    }

    async fn hand_over(&mut self, lease: &Lease, to: Option<&str>, window: Duration) -> Result<()> {
        let inner = &self.store.inner;
        inner.ready().await?;
        let Ok(token) = i64::try_from(lease.token.0) else {
            return Ok(());
        };
        let doing = format!("handing over the lease at key {:?}", lease.key);
        // Repeats harmlessly: a second run finds the lease gone and writes nothing.
        retrying(Effect::None, || {
            sqlx::query(q(&inner.sql.hand_over))
                .bind(&lease.key)
                .bind(&lease.holder)
                .bind(token)
                .bind(&inner.url.table)
                .bind(to.unwrap_or(""))
                .bind(ttl_us(window))
                .fetch_all(&inner.pool)
        })
        .await
        .map_err(|e| inner.error(&doing, Effect::None, e))?;
        Ok(())
    }

    async fn watch(&mut self) -> Result<Option<Changes>> {
        self.store.subscribe(&self.key, true).await
    }
}

// ---------------------------------------------------------------------------------------------
// LISTEN / NOTIFY.

/// The running listener; aborted when the store is dropped.
struct ListenerTask(tokio::task::JoinHandle<()>);

impl Drop for ListenerTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl PostgresStore {
    /// Changes to `key` for a candidate or an observer (see [`Feed`]), once the listener is
    /// listening; `None` if it cannot connect.
    async fn subscribe(&self, key: &str, candidate: bool) -> Result<Option<Changes>> {
        let inner = &self.inner;
        inner.ready().await?;
        let mut slot = inner.listener.lock().await;
        let changes = inner.feed.subscribe(key, candidate, ());
        let running = slot.as_ref().is_some_and(|t| !t.0.is_finished());
        if !running {
            let (ready_tx, ready_rx) = oneshot::channel();
            let task = tokio::spawn(listen(
                inner.pool.clone(),
                inner.url.table.clone(),
                Arc::clone(&inner.feed),
                ready_tx,
            ));
            let task = ListenerTask(task);
            match ready_rx.await {
                Ok(Ok(())) => *slot = Some(task),
                Ok(Err(e)) => {
                    debug!(error = %e, "cannot LISTEN; watchers fall back to timers");
                    return Ok(None);
                }
                Err(_) => return Ok(None),
            }
        }
        Ok(Some(changes))
    }
}

/// Listen on `channel` until aborted, publishing every notice. Reports on `ready` whether the
/// first `LISTEN` worked; after that, reconnects for ever.
async fn listen(
    pool: PgPool,
    channel: String,
    feed: Arc<Feed>,
    ready: oneshot::Sender<std::result::Result<(), sqlx::Error>>,
) {
    let first = async {
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.ignore_pool_close_event(true);
        listener.listen(&channel).await?;
        Ok::<_, sqlx::Error>(listener)
    };
    let mut listener = match first.await {
        Ok(l) => {
            let _ = ready.send(Ok(()));
            l
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let anything = |feed: &Feed| feed.publish(None, Change::Other);
    let mut backoff = Duration::from_millis(20);
    loop {
        match listener.try_recv().await {
            Ok(Some(n)) => {
                backoff = Duration::from_millis(20);
                feed.publish_notice(parse_payload(n.payload()));
            }
            Ok(None) => {
                debug!(channel, "the LISTEN connection was lost; reconnecting");
                anything(&feed);
            }
            Err(e) => {
                debug!(channel, error = %e, "LISTEN failed; retrying");
                anything(&feed);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// `r <key>` (released), `a <holder length in characters> <holder><key>` (acquired),
/// `n <holder length> <holder><key>` (renewed), `h <to length> <to><key>` (handed over; an
/// empty `to` for anyone) or `q <to length> <to><key>` (a handoff requested); anything else (an
/// empty payload for very long keys) concerns every key.
fn parse_payload(payload: &str) -> Notice {
    let other = Notice {
        key: None,
        change: Change::Other,
    };
    if let Some(key) = payload.strip_prefix("r ") {
        return Notice {
            key: Some(key.into()),
            change: Change::Released,
        };
    }
    let Some((kind @ ("a" | "n" | "h" | "q"), rest)) = payload.split_once(' ') else {
        return other;
    };
    let Some((len, rest)) = rest.split_once(' ') else {
        return other;
    };
    let Ok(len) = len.parse::<usize>() else {
        return other;
    };
    let split = rest.char_indices().nth(len).map_or(rest.len(), |(i, _)| i);
    let (name, key) = rest.split_at(split);
    let name = name.to_owned();
    Notice {
        key: Some(key.into()),
        change: match kind {
            "a" => Change::Acquired { holder: name },
            "n" => Change::Renewed { holder: name },
            "h" => Change::HandedOver { to: anyone(&name) },
            _ => Change::HandoffRequested { to: anyone(&name) },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads() {
        let n = parse_payload("r jobs leader");
        assert_eq!(
            (n.key.as_deref(), n.change),
            (Some("jobs leader"), Change::Released)
        );
        let n = parse_payload("a 3 bøbjobs");
        assert_eq!(n.key.as_deref(), Some("jobs"));
        assert_eq!(
            n.change,
            Change::Acquired {
                holder: "bøb".to_owned()
            }
        );
        let n = parse_payload("n 5 alicejobs");
        assert_eq!(n.key.as_deref(), Some("jobs"));
        assert_eq!(
            n.change,
            Change::Renewed {
                holder: "alice".to_owned()
            }
        );
        let n = parse_payload("h 5 carolj obs");
        assert_eq!(n.key.as_deref(), Some("j obs"));
        assert_eq!(
            n.change,
            Change::HandedOver {
                to: Some("carol".to_owned())
            }
        );
        let n = parse_payload("h 0 jobs");
        assert_eq!(
            (n.key.as_deref(), n.change),
            (Some("jobs"), Change::HandedOver { to: None })
        );
        let n = parse_payload("q 3 bobjobs");
        assert_eq!(
            (n.key.as_deref(), n.change),
            (
                Some("jobs"),
                Change::HandoffRequested {
                    to: Some("bob".to_owned())
                }
            )
        );
        assert_eq!(parse_payload("").key, None);
        assert_eq!(parse_payload("x 1 ab").key, None);
    }
}
