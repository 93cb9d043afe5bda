//! SQL stores: PostgreSQL ([`postgres`], feature `postgres`) and MySQL/MariaDB ([`mysql`],
//! feature `mysql`).
//!
//! Both keep one row per election key in one lease table, write with one atomic statement per
//! step, judge expiry by the database server's clock, and reach the server through an sqlx pool.
//! What they share lives here: the URL options Baton reads itself, the table-name rule, change
//! notices, the rule for the planned-handoff columns (`handoff_to`, `handoff_from`,
//! `handoff_until`: empty, a mark on a freed row, or a request beside a held lease; anything
//! else is [`Error::ForeignData`]; [`LeaseStore::pending_handoff`](crate::LeaseStore::pending_handoff)
//! reads them: a request beside a live lease, or a live mark), and how sqlx errors map onto
//! Baton's [`Error`].
//!
//! # URL options
//!
//! Besides the driver's own parameters (`sslmode`/`ssl-mode`, `sslrootcert`, ...), the query
//! string may carry, and Baton removes before the driver sees the URL:
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `table=NAME` | `baton_leases` | the lease table: lowercase letters, digits and `_`, starting with a letter or `_`, at most 63 characters |
//! | `create=false` | `true` | never create a table; a missing lease table is then a configuration error naming the SQL file, and a missing presence table turns presence off (below) |
//! | `poll=DUR` | `25ms` | MySQL only: how often a watching follower reads the key while no leader holds its term lock (push handoff's fallback; `10ms`, `100ms`, `1s`) |
//!
//! # Presence records
//!
//! [`LeaseStore::announce`](crate::LeaseStore::announce), `candidates` and `withdraw` keep one
//! row per candidate and key in a second table beside the lease table, named after it:
//! `<table>_candidates` (`baton_leases_candidates` by default), so `table=` moves both. A
//! lease table name of 53 characters or more would make that longer than the 63 characters
//! both databases allow; the presence table is then the lease table's first 43 characters,
//! `_`, eight hex digits of the 32-bit FNV-1a hash of its whole name, and `_candidates` (63
//! characters; `candidates_table()` on the store gives it). Its rows are `(key, candidate,
//! priority, expires_at)`, primary key `(key, candidate)`, with `expires_at` set and compared
//! by the server's clock; a record that ran out is ignored, and the next announce at its key
//! deletes it. The table is looked up at a store's first presence call (not by the election's
//! own statements, which never touch it) and created when missing, as the lease table is.
//!
//! Presence is optional, so that deployments made before it keep working: when the table is
//! missing and the URL says `create=false`, or the user may not create it, the store keeps no
//! presence (the three calls answer `None` and write nothing; a warning says so when the right
//! to create is missing). Baton then cannot tell a live candidate from a name and priorities do
//! nothing; a DBA turns it on by creating the table from the store's SQL file and granting
//! `SELECT, INSERT, UPDATE, DELETE` on it (the lookup is made once per store: processes
//! started after that use it). A table of that name with other columns, and rows with a
//! priority outside `0..=u32::MAX`, are [`Error::ForeignData`] on the presence calls and are
//! never written to or deleted; the election itself goes on.
//!
//! # TLS
//!
//! TLS is rustls (ring). A CA file named in the URL (`sslrootcert=`, `ssl-ca=`) is trusted
//! **in addition to** the system's trust store, not instead of it as with libpq: sqlx always
//! loads the system's roots. So a "verify the CA" mode (`sslmode=verify-ca`,
//! `ssl-mode=verify_ca`), which does not check the name, accepts any certificate that a CA in
//! the system's store signed; use the modes that check the name too (`verify-full`,
//! `verify_identity`) where that matters. A certificate the client refuses (unknown CA, wrong
//! name, expired) is an [`Error::Config`] that says which and what to change, since trying
//! again cannot help.
//!
//! # Errors the server gives
//!
//! A server error is reported with the server's message and its code (PostgreSQL's SQLSTATE;
//! MySQL's error number and SQLSTATE), never with the position in the server's own source
//! code that PostgreSQL adds. Those that retrying cannot fix are an [`Error::Config`] naming
//! what in the URL to change, so that `start()` fails at once instead of retrying forever:
//!
//! | server says | PostgreSQL | MySQL/MariaDB | fix |
//! |---|---|---|---|
//! | wrong password, unknown user | `28P01`, `28000` | 1045, 1698 | the user and password in the URL |
//! | the user may not connect from this host | `28000` (no `pg_hba.conf` entry) | 1130 | the host in the URL, or the user's allowed hosts |
//! | the user may not use the database | | 1044 | the database in the URL, or the user's grants |
//! | no such database | `3D000` | 1049 | the database in the URL's path |

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::cert::{CertFault, RENEW_OR_CHECK_CLOCKS};
use super::wake::{Route, Subscription};
use super::{Change, Changes, HandoffMark, LeaseRecord, PendingHandoff, Presence};
use crate::connect::redact;
use crate::{Error, Result};

#[cfg(feature = "mysql")]
pub mod mysql;
#[cfg(feature = "mysql")]
mod mysql_lock;
#[cfg(feature = "postgres")]
pub mod postgres;

/// The lease table's name unless the URL says otherwise.
pub const DEFAULT_TABLE: &str = "baton_leases";

/// How many times an operation that is safe to repeat is tried when the connection it ran on
/// turned out to be dead (killed by `pg_terminate_backend` or `KILL`, dropped by a proxy).
/// The pool closes a dead connection and opens a new one, so the retry runs on a fresh one.
const ATTEMPTS: usize = 4;

/// Options parsed from a SQL store URL, and the URL the driver gets.
#[derive(Debug, Clone)]
pub(crate) struct SqlUrl {
    /// The URL without Baton's own options, for the driver. Holds the password: never print.
    pub driver_url: String,
    /// The URL as given, password redacted: for errors, logs and [`crate::StoreInfo`].
    pub redacted: String,
    /// The validated table name.
    pub table: String,
    /// Whether Baton may create the table.
    pub create: bool,
    /// MySQL's follower poll interval.
    #[cfg_attr(not(feature = "mysql"), allow(dead_code))]
    pub poll: Option<Duration>,
}

impl SqlUrl {
    /// The settings of a store built on an application's pool: the table `table` (created
    /// when missing), the default poll, and a location without a password (a pool's options
    /// do not give it out anyway) that says the pool is the application's.
    pub fn for_pool(
        scheme: &str,
        user: &str,
        host: &str,
        port: u16,
        database: Option<&str>,
        table: &str,
    ) -> Result<SqlUrl> {
        let table = validate_table(table)?;
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        let user = if user.is_empty() {
            String::new()
        } else {
            format!("{user}@")
        };
        let database = database.unwrap_or("");
        let location =
            format!("{scheme}://{user}{host}:{port}/{database} (the application's pool)");
        Ok(SqlUrl {
            driver_url: String::new(),
            redacted: location,
            table,
            create: true,
            poll: None,
        })
    }

    /// Split Baton's options off `url`. `store` names the store in messages.
    pub fn parse(url: &str, store: &str) -> Result<SqlUrl> {
        let redacted = redact(url);
        let (base, query) = match url.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (url, None),
        };
        let (query, fragment) = match query.map(|q| q.split_once('#').unwrap_or((q, ""))) {
            Some((q, f)) => (q, f),
            None => ("", ""),
        };
        if !fragment.is_empty() {
            return Err(Error::Config(format!(
                "{redacted}: the {store} store takes no #fragment; put options in the query (?table=...)"
            )));
        }
        let mut table = DEFAULT_TABLE.to_owned();
        let mut create = true;
        let mut poll = None;
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            match name {
                "table" => table = validate_table(value)?,
                "create" => {
                    create = match value {
                        "true" | "1" | "yes" => true,
                        "false" | "0" | "no" => false,
                        other => {
                            return Err(Error::Config(format!(
                                "{redacted}: create={other:?} is not a boolean; write create=true or create=false"
                            )));
                        }
                    }
                }
                "poll" if store == "mysql" => poll = Some(parse_poll(value, &redacted)?),
                _ => kept.push(pair),
            }
        }
        let driver_url = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        Ok(SqlUrl {
            driver_url,
            redacted,
            table,
            create,
            poll,
        })
    }
}

fn parse_poll(value: &str, redacted: &str) -> Result<Duration> {
    let (number, unit) = value.split_at(
        value
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(value.len()),
    );
    let n: u64 = number.parse().map_err(|_| {
        Error::Config(format!(
            "{redacted}: poll={value:?} is not a duration; write e.g. poll=25ms"
        ))
    })?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        _ => {
            return Err(Error::Config(format!(
                "{redacted}: poll={value:?} is not a duration; write e.g. poll=25ms or poll=1s"
            )));
        }
    };
    if d < Duration::from_millis(1) || d > Duration::from_secs(60) {
        return Err(Error::Config(format!(
            "{redacted}: poll={value} is out of range; choose between 1ms and 60s"
        )));
    }
    Ok(d)
}

/// Check a lease table name: an identifier that needs no quoting in either database, so that
/// it can be put into SQL text safely and means the same thing to every client.
pub(crate) fn validate_table(name: &str) -> Result<String> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if valid {
        Ok(name.to_owned())
    } else {
        Err(Error::Config(format!(
            "{name:?} is not a valid lease table name: use lowercase letters, digits and _, starting with a letter or _, at most 63 characters (e.g. table=baton_leases)"
        )))
    }
}

// ---------------------------------------------------------------------------------------------
// Presence records (D134), in a second table named after the lease table.

/// The longest table name both databases take (PostgreSQL's limit; MySQL's is 64).
const MAX_TABLE_NAME: usize = 63;

/// The name of the presence table beside lease table `table`: `<table>_candidates`, or, when
/// that would be longer than 63 characters (a lease table name of 53 or more), the table's
/// first 43 characters, `_`, eight hex digits of a 32-bit FNV-1a hash of the whole name, and
/// `_candidates` (63 characters): every process derives the same name, and two long table
/// names that start alike still get two presence tables.
pub(crate) fn candidates_table(table: &str) -> String {
    const SUFFIX: &str = "_candidates";
    if table.len() + SUFFIX.len() <= MAX_TABLE_NAME {
        return format!("{table}{SUFFIX}");
    }
    let mut hash: u32 = 0x811c_9dc5;
    for byte in table.bytes() {
        hash = (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193);
    }
    // Table names are ASCII (`validate_table`), so any byte index is a character boundary.
    let head = &table[..MAX_TABLE_NAME - SUFFIX.len() - 9];
    format!("{head}_{hash:08x}{SUFFIX}")
}

/// The largest priority (`u32::MAX`): a presence row with a priority outside `0..=` this was
/// not written by Baton.
pub(crate) const MAX_PRIORITY: i64 = u32::MAX as i64;

/// Presence rows of one key as read (candidate, priority, microseconds left by the server's
/// clock): the live records, sorted by candidate, and whether some ran out. A priority Baton
/// could not have written is [`Error::ForeignData`] (`table` names the presence table, with
/// its location).
pub(crate) fn presence_rows(
    key: &str,
    table: &str,
    rows: Vec<(String, i64, Option<i64>)>,
) -> Result<(Vec<Presence>, bool)> {
    let mut live = Vec::with_capacity(rows.len());
    let mut spent = false;
    for (candidate, priority, left_us) in rows {
        let Ok(priority) = u32::try_from(priority) else {
            return Err(Error::ForeignData {
                key: key.to_owned(),
                found: format!(
                    "a row in presence table {table} for candidate {candidate:?} with priority {priority} (Baton writes 0 to {MAX_PRIORITY})"
                ),
            });
        };
        // No time left at all: an end the server cannot compute with (PostgreSQL's
        // infinities, MariaDB's zero date), which Baton never writes.
        let Some(us) = left_us else {
            return Err(Error::ForeignData {
                key: key.to_owned(),
                found: format!(
                    "a row in presence table {table} for candidate {candidate:?} whose expires_at is not a time the server can compute with (infinity, or the zero date)"
                ),
            });
        };
        if us > 0 {
            live.push(Presence::new(candidate, priority, left(us)));
        } else {
            spent = true;
        }
    }
    live.sort_by(|a, b| a.candidate.cmp(&b.candidate));
    Ok((live, spent))
}

// ---------------------------------------------------------------------------------------------
// Planned handoff: the mark and the request (D133), in three nullable columns.

/// The condition, in SQL both databases read, that a row's handoff columns are empty, a mark
/// or a request, as Baton writes them (`prefix` qualifies the columns, e.g. `"l."`). Every
/// write's `WHERE` includes it, so a row with handoff columns Baton could not have written is
/// never written to; [`parse_handoff`] says what is wrong with such a row.
///
/// * nothing: `handoff_to`, `handoff_from` and `handoff_until` all `NULL`;
/// * a mark, left by a handoff on the row it freed: all three set, `holder` `NULL`;
/// * a request, beside a held lease: `handoff_to` and `handoff_from` (= `holder`) set,
///   `handoff_until` `NULL`.
pub(crate) fn handoff_shape(prefix: &str) -> String {
    let p = prefix;
    format!(
        "({p}handoff_to IS NULL) = ({p}handoff_from IS NULL) \
         AND ({p}handoff_until IS NULL OR ({p}holder IS NULL AND {p}handoff_to IS NOT NULL)) \
         AND ({p}handoff_to IS NULL OR {p}handoff_until IS NOT NULL OR {p}handoff_from = {p}holder)"
    )
}

/// The handoff columns of a row as Baton writes them. `handoff_to` is `''` for "anyone".
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Handoff {
    /// A planned handoff's mark on a freed row: only `to` (or, for `''`, anyone but `from`)
    /// may take the key for `left_us` more microseconds by the server's clock.
    Mark {
        to: String,
        from: String,
        left_us: i64,
    },
    /// A handoff asked of the holder ([`LeaseStore::request_handoff`](crate::LeaseStore::request_handoff)).
    Request { to: String },
}

impl Handoff {
    /// The mark, if it is live and does not admit `candidate`: what `try_acquire` answers.
    pub fn reserved(&self, candidate: &str) -> Option<HandoffMark> {
        let mark = self.live_mark()?;
        (!mark.admits(candidate)).then_some(mark)
    }

    /// The mark, if this is one and it has not run out.
    pub fn live_mark(&self) -> Option<HandoffMark> {
        match self {
            Handoff::Mark { to, from, left_us } if *left_us > 0 => {
                Some(HandoffMark::new(anyone(to), from.clone(), left(*left_us)))
            }
            _ => None,
        }
    }
}

/// The handoff under way at a row ([`LeaseStore::pending_handoff`](crate::LeaseStore::pending_handoff)):
/// a request beside its live lease (`live`), or a live mark on the freed row. A request
/// beside a lease that ran out, and a mark that ran out, are none.
pub(crate) fn pending(
    live: Option<LeaseRecord>,
    handoff: Option<&Handoff>,
) -> Option<PendingHandoff> {
    match (live, handoff?) {
        (Some(record), Handoff::Request { to }) => Some(PendingHandoff::Requested {
            holder: record.holder,
            to: anyone(to),
        }),
        (None, mark @ Handoff::Mark { .. }) => mark.live_mark().map(PendingHandoff::Reserved),
        _ => None,
    }
}

/// `to` as stored (`''` for anyone) as the contract has it.
pub(crate) fn anyone(to: &str) -> Option<String> {
    (!to.is_empty()).then(|| to.to_owned())
}

/// Check a row's handoff columns (`to`, `from`, whether `handoff_until` is set, and the
/// microseconds it has left) beside its `holder`: `Err` describes columns that are neither
/// empty, a mark nor a request as Baton writes them (see [`handoff_shape`]).
pub(crate) fn parse_handoff(
    holder: Option<&str>,
    to: Option<String>,
    from: Option<String>,
    has_until: bool,
    left_us: Option<i64>,
) -> std::result::Result<Option<Handoff>, String> {
    match (to, from, has_until) {
        (None, None, false) => Ok(None),
        // Baton leaves a mark only on a row it frees.
        (Some(to), Some(from), true) if holder.is_none() => Ok(Some(Handoff::Mark {
            to,
            from,
            left_us: left_us.unwrap_or(0),
        })),
        // A request names the holder it was made of.
        (Some(to), Some(from), false) if holder == Some(from.as_str()) => {
            Ok(Some(Handoff::Request { to }))
        }
        (to, from, has_until) => {
            let show = |v: &Option<String>| match v {
                Some(s) => format!("{s:?}"),
                None => "NULL".to_owned(),
            };
            Err(format!(
                "handoff columns are not a mark or a request Baton could have left \
                 (handoff_to {}, handoff_from {}, handoff_until {}, holder {})",
                show(&to),
                show(&from),
                if has_until { "set" } else { "NULL" },
                holder.map_or_else(|| "NULL".to_owned(), |h| format!("{h:?}")),
            ))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Change notices.

/// A change to one key, as a store's listener or poller saw it. `key: None` means "any key":
/// notices may have been missed (the listener reconnected).
#[derive(Debug, Clone)]
pub(crate) struct Notice {
    pub key: Option<Arc<str>>,
    pub change: Change,
}

/// Change notices of one store, routed to the subscriptions of their key.
///
/// Each key has its own channel, so a notice wakes only its key's subscribers: with E
/// elections in one process, a notice costs O(its key's subscribers), not O(E). (One channel
/// for every key made each subscriber filter every notice: starting 10,000 elections on one
/// PostgreSQL store woke 10,000 streams for each of the 10,000 acquisitions, and the lagging
/// streams' spurious wake-ups kept most elections from leading for minutes.)
///
/// A release wakes one candidate of the store; the others wait for the winner's notice
/// ([`wake`](crate::store::wake), docs/decisions.md D41). Observers see every notice.
#[derive(Debug, Default)]
pub(crate) struct Feed {
    routes: Mutex<HashMap<Arc<str>, Arc<Route>>>,
}

impl Feed {
    /// Pass `change` to the subscriptions of `key`, or to every subscription for `None`
    /// (notices may have been missed). Keys nobody subscribes to any more are forgotten.
    pub fn publish(&self, key: Option<&str>, change: Change) {
        let mut routes = lock(&self.routes);
        match key {
            Some(key) => {
                if let Some(route) = routes.get(key) {
                    if route.is_watched() {
                        route.send(change);
                    } else {
                        routes.remove(key);
                    }
                }
            }
            None => routes.retain(|_, route| {
                route.send(change.clone());
                route.is_watched()
            }),
        }
    }

    /// Publish a notice as a store's listener parsed it.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub fn publish_notice(&self, notice: Notice) {
        self.publish(notice.key.as_deref(), notice.change);
    }

    /// Notices for `key`, for a candidate (`candidate`: a release it did not claim is held
    /// back) or an observer. `keep` is held by the stream for as long as it lives (a poller, a
    /// listener), and dropped with it.
    pub fn subscribe<K: Send + 'static>(&self, key: &str, candidate: bool, keep: K) -> Changes {
        Self::stream(self.receiver(key), candidate, keep)
    }

    /// A subscription to `key`'s notices taken now, to be turned into a stream with
    /// [`Feed::stream`] later: nothing published in between is lost.
    pub fn receiver(&self, key: &str) -> Subscription {
        let mut routes = lock(&self.routes);
        routes.entry(key.into()).or_default().subscribe()
    }

    /// The notices of `sub`, for a candidate or an observer, keeping `keep` alive as long as
    /// the stream.
    pub fn stream<K: Send + 'static>(sub: Subscription, candidate: bool, keep: K) -> Changes {
        if candidate {
            sub.candidate(keep)
        } else {
            sub.observer(keep)
        }
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------------------------------------
// Errors.

/// What a failed call may have done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Effect {
    /// A read, or a write that repeats harmlessly: a failure is "nothing applied".
    None,
    /// A write whose outcome is unknown when the connection failed mid-call.
    Maybe,
}

/// Whether `e` says the connection is dead (rather than the statement being refused), so the
/// call should be tried again on another connection. `certain` is true when the statement
/// surely did not run (the server said it was shutting the session down before running it).
pub(crate) fn dead_connection(e: &sqlx::Error) -> (bool, bool) {
    if tls_fix(e, TlsParams::POSTGRES).is_some() {
        // A certificate that was refused once is refused on every connection.
        return (false, false);
    }
    match e {
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed => (true, false),
        sqlx::Error::Database(db) => {
            let code = db.code();
            let code = code.as_deref().unwrap_or("");
            // PostgreSQL: class 08 (connection exception), 57P01..03 (terminated by an
            // administrator, crash, cannot connect now). MySQL/MariaDB: 1927 (connection was
            // killed), 1053 (server shutdown), 08S01 (communication link failure).
            let dead = code.starts_with("08")
                || matches!(
                    code,
                    "57P01" | "57P02" | "57P03" | "1927" | "1053" | "70100"
                );
            (dead, dead)
        }
        _ => (false, false),
    }
}

/// Map an sqlx error to Baton's. `doing` says what failed ("renewing the lease at key ...").
pub(crate) fn map_error(
    store: &'static str,
    location: &str,
    doing: &str,
    effect: Effect,
    e: sqlx::Error,
) -> Error {
    let params = if store == "mysql" {
        TlsParams::MYSQL
    } else {
        TlsParams::POSTGRES
    };
    if let Some((cause, fix)) = tls_fix(&e, params) {
        return Error::Config(format!(
            "{doing} in {location}: TLS failed ({cause}): {fix}"
        ));
    }
    let described = describe(&e);
    let message = format!("{doing} in {location}: {described}");
    match &e {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
            Error::unavailable(store, message, e)
        }
        sqlx::Error::Configuration(_) => Error::Config(message),
        sqlx::Error::Database(db) => match config_fault(db.as_ref()) {
            Some(fix) => Error::Config(format!("{message}: {fix}")),
            // The server's error without sqlx's rendering of it, which adds PostgreSQL's
            // source position ("at line 768").
            None => Error::unavailable(store, message, ServerError(described)),
        },
        _ if effect == Effect::Maybe && dead_connection(&e).0 && !dead_connection(&e).1 => {
            Error::indeterminate(store, message, e)
        }
        _ => Error::unavailable(store, message, e),
    }
}

/// The names of a store's TLS URL parameters, for telling users what to change.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TlsParams {
    mode: &'static str,
    ca: &'static str,
    verify_ca: &'static str,
    client: &'static str,
}

impl TlsParams {
    const POSTGRES: TlsParams = TlsParams {
        mode: "sslmode",
        ca: "sslrootcert",
        verify_ca: "sslmode=verify-ca",
        client: "sslcert=/path/client.pem&sslkey=/path/client.key",
    };
    const MYSQL: TlsParams = TlsParams {
        mode: "ssl-mode",
        ca: "ssl-ca",
        verify_ca: "ssl-mode=verify_ca",
        client: "ssl-cert=/path/client.pem&ssl-key=/path/client.key",
    };
}

/// If `e` is a TLS failure that trying again cannot fix: what failed, and what to do about
/// it. sqlx reports
/// rustls's certificate errors as I/O errors whose text names the rustls error (the server's
/// certificate is checked while connecting, so nothing was sent), and its own TLS setup
/// problems as [`sqlx::Error::Tls`].
fn tls_fix(e: &sqlx::Error, p: TlsParams) -> Option<(String, String)> {
    let TlsParams {
        mode,
        ca,
        verify_ca,
        client,
    } = p;
    let text = match e {
        sqlx::Error::Tls(inner) => {
            let text = inner.to_string();
            let fix = if text.contains("does not support TLS") {
                format!(
                    "the server does not speak TLS: turn TLS on in the server, or choose a {mode} that allows a plain connection"
                )
            } else {
                format!("check {mode} and the CA file ({ca}=)")
            };
            return Some((text, fix));
        }
        sqlx::Error::Io(io) => io.to_string(),
        _ => return None,
    };
    let fix = match CertFault::read(&text)? {
        CertFault::UnknownCa => format!(
            "the server's certificate is not signed by a CA Baton trusts: name the CA that signed it with {ca}=/path/to/ca.pem (trusted in addition to the system's trust store)"
        ),
        CertFault::WrongName => format!(
            "the server's certificate does not name the host in the URL: connect by a name the certificate lists, reissue the certificate with this one, or use {verify_ca}, which checks the chain but not the name (any certificate from a CA in {ca}= or in the system's trust store then passes)"
        ),
        CertFault::OutsideValidity => RENEW_OR_CHECK_CLOCKS.to_owned(),
        CertFault::ClientCertRequired | CertFault::Refused => format!(
            "the server refused the handshake: if it requires a client certificate, pass {client}"
        ),
        CertFault::OtherCertificate => {
            format!("check {mode}, the CA ({ca}=) and the server's certificate")
        }
    };
    Some((text, fix))
}

/// An sqlx error, described without anything secret (sqlx never puts the password in one).
/// A server error is its message and code, without PostgreSQL's source position.
fn describe(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::PoolTimedOut => {
            "no connection to the server within the pool's timeout (is the server up and reachable?)"
                .to_owned()
        }
        sqlx::Error::Database(db) => {
            let sqlstate = db.code();
            match (mysql_error_number(db.as_ref()), sqlstate) {
                (Some(n), Some(state)) => format!("{} (error {n}, SQLSTATE {state})", db.message()),
                (Some(n), None) => format!("{} (error {n})", db.message()),
                (None, Some(state)) => format!("{} (SQLSTATE {state})", db.message()),
                (None, None) => db.message().to_owned(),
            }
        }
        other => other.to_string(),
    }
}

/// A server's error as [`describe`] puts it: the source of an [`Error`] mapped from one, in
/// place of sqlx's error, whose text adds PostgreSQL's source position.
#[derive(Debug)]
struct ServerError(String);

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ServerError {}

/// MySQL's own error number (1045, ...) of a server error; `None` for PostgreSQL's.
fn mysql_error_number(db: &dyn sqlx::error::DatabaseError) -> Option<u16> {
    #[cfg(feature = "mysql")]
    if let Some(e) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
        return Some(e.number());
    }
    let _ = db;
    None
}

/// The fix for a server error that retrying cannot fix (see the module documentation,
/// *Errors the server gives*), or `None`.
fn config_fault(db: &dyn sqlx::error::DatabaseError) -> Option<&'static str> {
    const CREDENTIALS: &str =
        "the server rejected the credentials: check the user and password in the URL";
    const DATABASE: &str = "check the database name in the URL's path (postgres://USER@HOST/DB), or create that database";
    if let Some(number) = mysql_error_number(db) {
        return match number {
            // ER_ACCESS_DENIED_ERROR, ER_ACCESS_DENIED_NO_PASSWORD_ERROR
            1045 | 1698 => Some(CREDENTIALS),
            // ER_HOST_NOT_PRIVILEGED ("Host ... is not allowed to connect"). A host blocked
            // after too many failed connections (1129) stays transient: an administrator's
            // FLUSH HOSTS ends it, and the election then goes on by itself.
            1130 => Some(
                "the server does not let this user connect from this host: check the host in the URL, or allow the user from this host (CREATE USER 'USER'@'HOST')",
            ),
            // ER_DBACCESS_DENIED_ERROR
            1044 => Some(
                "the user may not use this database: check the database in the URL's path (mysql://USER@HOST/DB), or grant the user access to it",
            ),
            // ER_BAD_DB_ERROR
            1049 => Some(
                "check the database name in the URL's path (mysql://USER@HOST/DB), or create that database",
            ),
            _ => None,
        };
    }
    match db.code().as_deref() {
        // invalid_authorization_specification (an unknown role, no pg_hba.conf entry),
        // invalid_password
        Some("28000" | "28P01") => Some(CREDENTIALS),
        // invalid_catalog_name
        Some("3D000") => Some(DATABASE),
        _ => None,
    }
}

/// Run `op` up to [`ATTEMPTS`] times while it fails on a dead connection, if `effect` allows
/// repeating it or the server said the statement did not run.
pub(crate) async fn retrying<T, F, Fut>(effect: Effect, mut op: F) -> Result<T, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, sqlx::Error>>,
{
    let mut attempt = 1;
    loop {
        match op().await {
            Err(e) if attempt < ATTEMPTS => {
                let (dead, certain) = dead_connection(&e);
                if !dead || (effect == Effect::Maybe && !certain) {
                    return Err(e);
                }
                tracing::debug!(error = %e, attempt, "SQL connection lost; trying again on another connection");
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// A TTL in whole microseconds, rounded up: the server may keep a lease a little longer than
/// asked, never shorter.
pub(crate) fn ttl_us(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_nanos().div_ceil(1000)).unwrap_or(i64::MAX)
}

/// Microseconds left (as the server computed them) as a TTL.
pub(crate) fn left(us: i64) -> Duration {
    Duration::from_micros(u64::try_from(us).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{FutureExt, StreamExt};

    /// The next change if one is ready now.
    fn ready(changes: &mut Changes) -> Option<Change> {
        changes.next().now_or_never().flatten()
    }

    #[tokio::test]
    async fn a_notice_wakes_only_its_keys_subscribers() {
        let feed = Feed::default();
        let mut a = feed.subscribe("a", true, ());
        let mut b = feed.subscribe("b", true, ());
        feed.publish(Some("a"), Change::Released);
        assert_eq!(ready(&mut a), Some(Change::Released));
        assert_eq!(ready(&mut b), None, "b was woken by a's notice");
        feed.publish(None, Change::Other);
        assert_eq!(ready(&mut a), Some(Change::Other));
        assert_eq!(ready(&mut b), Some(Change::Other));
    }

    #[tokio::test]
    async fn a_receiver_taken_early_misses_nothing_and_keys_without_subscribers_are_forgotten() {
        let feed = Feed::default();
        let rx = feed.receiver("k");
        feed.publish(Some("k"), Change::Expired);
        let mut changes = Feed::stream(rx, true, ());
        assert_eq!(ready(&mut changes), Some(Change::Expired));
        drop(changes);
        feed.publish(Some("k"), Change::Released);
        assert!(lock(&feed.routes).is_empty());
        let mut again = feed.subscribe("k", true, ());
        feed.publish(Some("k"), Change::Released);
        assert_eq!(ready(&mut again), Some(Change::Released));
    }

    /// D41: a release wakes one candidate of the store; the others learn who won, and
    /// observers see everything.
    #[tokio::test(start_paused = true)]
    async fn a_release_wakes_one_candidate_and_every_observer() {
        let feed = Feed::default();
        let mut a = feed.subscribe("k", true, ());
        let mut b = feed.subscribe("k", true, ());
        let mut watcher = feed.subscribe("k", false, ());
        feed.publish(Some("k"), Change::Released);
        assert_eq!(ready(&mut a), Some(Change::Released));
        assert_eq!(ready(&mut b), None, "b answered a release a claimed");
        assert_eq!(ready(&mut watcher), Some(Change::Released));
        let won = Change::Acquired { holder: "a".into() };
        feed.publish(Some("k"), won.clone());
        assert_eq!(ready(&mut b), Some(won.clone()));
        assert_eq!(ready(&mut watcher), Some(won));
        // With nobody taking the lease, b tries after all.
        feed.publish(Some("k"), Change::Released);
        assert_eq!(ready(&mut a), Some(Change::Acquired { holder: "a".into() }));
        assert_eq!(ready(&mut a), Some(Change::Released));
        let start = tokio::time::Instant::now();
        assert_eq!(b.next().await, Some(Change::Released));
        assert_eq!(start.elapsed(), crate::store::wake::WAKE_OTHERS_AFTER);
    }

    /// A server error with a SQLSTATE, as PostgreSQL's look to the mapping.
    #[derive(Debug)]
    struct Sqlstate(&'static str, &'static str);

    impl std::fmt::Display for Sqlstate {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{} at line 768", self.1)
        }
    }

    impl std::error::Error for Sqlstate {}

    impl sqlx::error::DatabaseError for Sqlstate {
        fn message(&self) -> &str {
            self.1
        }
        fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
            Some(self.0.into())
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    fn server(code: &'static str, message: &'static str) -> sqlx::Error {
        sqlx::Error::Database(Box::new(Sqlstate(code, message)))
    }

    /// Rejected credentials and a missing database are configuration errors naming what to
    /// fix (a wrong password, 28P01, cannot be provoked on the test machine's trusting
    /// server); other server errors stay transient. None shows the server's source position.
    #[test]
    fn server_errors_that_retrying_cannot_fix_are_configuration_errors() {
        let loc = "postgres://app:****@db/x";
        for (code, fix) in [
            ("28P01", "check the user and password in the URL"),
            ("28000", "check the user and password in the URL"),
            ("3D000", "check the database name in the URL's path"),
        ] {
            let e = map_error("postgres", loc, "reading", Effect::None, server(code, "no"));
            let text = e.to_string();
            assert!(matches!(e, Error::Config(_)), "{code}: {text}");
            assert!(
                text.contains(fix) && text.contains(&format!("SQLSTATE {code}")),
                "{text}"
            );
        }
        let e = map_error(
            "postgres",
            loc,
            "reading",
            Effect::None,
            server("53300", "busy"),
        );
        assert!(e.is_transient(), "{e}");
        let source = std::error::Error::source(&e).unwrap().to_string();
        assert_eq!(source, "busy (SQLSTATE 53300)");
        assert!(!e.to_string().contains("at line"), "{e}");
    }

    /// Handoff columns are empty, a mark on a freed row or a request naming the holder;
    /// anything else is described as foreign.
    #[test]
    fn handoff_columns_baton_could_not_have_written_are_foreign() {
        let s = |v: &str| Some(v.to_owned());
        assert_eq!(parse_handoff(Some("a"), None, None, false, None), Ok(None));
        let mark = parse_handoff(None, s(""), s("a"), true, Some(5_000_000))
            .unwrap()
            .unwrap();
        let live = mark.live_mark().unwrap();
        assert_eq!((live.to, live.from.as_str()), (None, "a"));
        assert_eq!(live.ttl, Duration::from_secs(5));
        assert!(mark.reserved("a").is_some() && mark.reserved("b").is_none());
        let spent = parse_handoff(None, s("b"), s("a"), true, Some(-3))
            .unwrap()
            .unwrap();
        assert!(spent.live_mark().is_none() && spent.reserved("c").is_none());
        assert_eq!(
            parse_handoff(Some("a"), s("b"), s("a"), false, None),
            Ok(Some(Handoff::Request { to: "b".into() }))
        );
        for (holder, to, from, until) in [
            // A mark beside a holder.
            (Some("a"), s("b"), s("a"), true),
            // A request on a free row, or naming someone else.
            (None, s("b"), s("a"), false),
            (Some("c"), s("b"), s("a"), false),
            // An end without the rest; half a mark.
            (None, None, None, true),
            (None, s("b"), None, true),
            (None, None, s("a"), true),
            (Some("a"), None, s("a"), false),
        ] {
            let e = parse_handoff(holder, to.clone(), from.clone(), until, Some(1))
                .expect_err(&format!("{holder:?} {to:?} {from:?} {until}"));
            assert!(e.contains("handoff columns"), "{e}");
        }
    }

    #[test]
    fn presence_table_names_fit() {
        assert_eq!(candidates_table("baton_leases"), "baton_leases_candidates");
        let longest_plain = "t".repeat(52);
        assert_eq!(
            candidates_table(&longest_plain),
            format!("{longest_plain}_candidates")
        );
        let a = candidates_table(&format!("{}a", "t".repeat(52)));
        let b = candidates_table(&format!("{}b", "t".repeat(52)));
        let longest = candidates_table(&"x".repeat(63));
        for name in [&a, &b, &longest] {
            assert_eq!(name.len(), 63, "{name}");
            assert!(validate_table(name).is_ok(), "{name}");
            assert!(name.ends_with("_candidates"), "{name}");
        }
        assert_ne!(a, b);
        assert!(a.starts_with(&"t".repeat(43)));
        // Stable across versions: every process must derive the same name.
        assert_eq!(candidates_table(&"x".repeat(63)), longest);
    }

    #[test]
    fn presence_rows_with_a_priority_baton_could_not_write_are_foreign() {
        let rows = vec![
            ("b".to_owned(), 0, Some(5)),
            ("a".to_owned(), MAX_PRIORITY, Some(1_000_000)),
            ("c".to_owned(), 2, Some(0)),
        ];
        let (live, spent) = presence_rows("k", "t_candidates", rows).unwrap();
        assert!(spent);
        assert_eq!(
            live,
            [
                Presence::new("a", u32::MAX, Duration::from_secs(1)),
                Presence::new("b", 0, Duration::from_micros(5)),
            ]
        );
        for bad in [-1, MAX_PRIORITY + 1] {
            match presence_rows("k", "t_candidates", vec![("x".to_owned(), bad, Some(9))]) {
                Err(Error::ForeignData { key, found }) => {
                    assert_eq!(key, "k");
                    assert!(found.contains("t_candidates") && found.contains(&bad.to_string()));
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        // An end the server cannot compute with (infinity, MariaDB's zero date) comes back
        // with no time left at all: foreign, never a record that ran out (which announce
        // would delete).
        match presence_rows("k", "t_candidates", vec![("d".to_owned(), 2, None)]) {
            Err(Error::ForeignData { found, .. }) => {
                assert!(
                    found.contains("\"d\"") && found.contains("expires_at"),
                    "{found}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn table_names() {
        assert!(validate_table("baton_leases").is_ok());
        assert!(validate_table("_t1").is_ok());
        for bad in [
            "",
            "1t",
            "Leases",
            "a-b",
            "a;drop table x",
            "a.b",
            &"x".repeat(64),
        ] {
            assert!(validate_table(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn baton_options_are_removed_and_the_rest_kept() {
        let u = SqlUrl::parse(
            "postgres://u:pw@h/db?sslmode=require&table=my_leases&create=false",
            "postgres",
        )
        .unwrap();
        assert_eq!(u.driver_url, "postgres://u:pw@h/db?sslmode=require");
        assert_eq!(
            u.redacted,
            "postgres://u:****@h/db?sslmode=require&table=my_leases&create=false"
        );
        assert_eq!((u.table.as_str(), u.create), ("my_leases", false));
        let u = SqlUrl::parse("mysql://h/db?poll=10ms", "mysql").unwrap();
        assert_eq!(u.driver_url, "mysql://h/db");
        assert_eq!(u.poll, Some(Duration::from_millis(10)));
        let e = SqlUrl::parse("postgres://u:hunter2@h/db?table=Bad-Name", "postgres").unwrap_err();
        assert!(!e.to_string().contains("hunter2"));
        assert!(SqlUrl::parse("mysql://h/db?poll=fast", "mysql").is_err());
    }

    fn io(text: &str) -> sqlx::Error {
        sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            text.to_owned(),
        ))
    }

    /// A refused certificate is a configuration error naming the store's own parameter, never
    /// an indeterminate write and never retried.
    #[test]
    fn tls_errors_say_what_to_change() {
        let unknown = "invalid peer certificate: UnknownIssuer";
        for (store, says) in [("postgres", "sslrootcert="), ("mysql", "ssl-ca=")] {
            let e = map_error(store, "h:1", "acquiring", Effect::Maybe, io(unknown));
            let text = e.to_string();
            assert!(matches!(e, Error::Config(_)), "{text}");
            assert!(text.contains("h:1") && text.contains(says), "{text}");
        }
        assert_eq!(dead_connection(&io(unknown)), (false, false));
        let name = "invalid peer certificate: certificate not valid for name \"10.0.0.1\"; certificate is only valid for DnsName(\"db\")";
        let text = map_error("postgres", "h:1", "reading", Effect::None, io(name)).to_string();
        assert!(
            text.contains("10.0.0.1") && text.contains("sslmode=verify-ca"),
            "{text}"
        );
        let text = map_error("mysql", "h:1", "reading", Effect::None, io(name)).to_string();
        assert!(text.contains("ssl-mode=verify_ca"), "{text}");
        let plain = sqlx::Error::Tls("server does not support TLS".into());
        let text = map_error("mysql", "h:1", "reading", Effect::None, plain).to_string();
        assert!(
            text.contains("does not speak TLS") && text.contains("ssl-mode"),
            "{text}"
        );
        // A connection that died is still one.
        let reset = sqlx::Error::Io(std::io::ErrorKind::ConnectionReset.into());
        assert_eq!(dead_connection(&reset), (true, false));
        assert!(matches!(
            map_error("postgres", "h:1", "acquiring", Effect::Maybe, reset),
            Error::Indeterminate { .. }
        ));
    }
}
