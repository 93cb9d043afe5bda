//! Random and mutated foreign data at the key (issue 19, item 4): for PostgreSQL and
//! MySQL/MariaDB (the machine's servers, tables of each test's own), etcd (a throwaway
//! server), Kubernetes (the fake API server) and Consul (the fake agent), data Baton could not
//! have written, and near misses of what it writes (its records with a field mutated, missing,
//! mistyped or out of range, the handoff and presence fields too), is planted at a key; Baton
//! then reads it, asks for a handoff, looks for a pending one, tries to acquire and announces
//! itself. Whatever Baton could not have written must come back as [`Error::ForeignData`] and
//! be byte for byte what it was; Baton's own shapes must work.
//!
//! Each property runs a bounded number of cases (the constants below; docs/RELIABILITY.md
//! quotes them), drawn from `PROPTEST_RNG_SEED` when it is set (scripts/test fixes it, D132).

// A failing property's error carries the case that failed, which is what it is for.
#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::time::Duration;

use baton::{Acquire, Error, LeaseStore};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// The candidate id Baton acts as in every case.
const ME: &str = "baton-candidate";

/// A fresh name for a table or a key.
fn unique(prefix: &str) -> String {
    format!("{prefix}{:012x}", fastrand::u64(..) >> 16)
}

/// A proptest runner for `cases` cases (the seed from `PROPTEST_RNG_SEED`, when set).
fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        // Shrinking re-plants data on a real server; the first failing case is enough.
        max_shrink_iters: 64,
        ..Config::default()
    })
}

/// Candidate ids: Baton's own, a few others, and any text.
fn id() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => Just(ME.to_owned()),
        3 => prop_oneof![Just("a"), Just("b"), Just("c")].prop_map(str::to_owned),
        1 => Just(String::new()),
        2 => "\\PC{1,12}",
    ]
}

/// What Baton did with data at a key: each call's outcome, as text for messages.
#[derive(Debug, Default)]
struct Calls {
    read: Option<baton::Result<()>>,
    request: Option<baton::Result<()>>,
    pending: Option<baton::Result<()>>,
    acquire: Option<baton::Result<()>>,
}

impl Calls {
    /// Read, ask for a handoff to `ME`, look for a pending handoff, then try to acquire (and
    /// release what was acquired).
    async fn run(store: &dyn LeaseStore, key: &str) -> Calls {
        let read = Some(store.read(key).await.map(drop));
        let request = Some(store.request_handoff(key, Some(ME)).await.map(drop));
        let pending = Some(store.pending_handoff(key).await.map(drop));
        let acquire = Some(
            async {
                let mut c = store.join(key, ME).await?;
                let got = c.try_acquire(Duration::from_secs(60)).await?;
                if let Acquire::Acquired(lease) = &got {
                    c.release(lease).await?;
                }
                let _ = c.leave().await;
                Ok(())
            }
            .await,
        );
        Calls {
            read,
            request,
            pending,
            acquire,
        }
    }

    fn all(&self) -> [(&'static str, &baton::Result<()>); 4] {
        [
            ("read", self.read.as_ref().expect("ran")),
            ("request_handoff", self.request.as_ref().expect("ran")),
            ("pending_handoff", self.pending.as_ref().expect("ran")),
            ("try_acquire", self.acquire.as_ref().expect("ran")),
        ]
    }

    /// Every call said foreign data.
    fn all_foreign(&self) -> Result<(), String> {
        for (call, result) in self.all() {
            if !matches!(result, Err(Error::ForeignData { .. })) {
                return Err(format!("{call} gave {result:?}, not foreign data"));
            }
        }
        Ok(())
    }

    /// Every call worked.
    fn all_ok(&self) -> Result<(), String> {
        for (call, result) in self.all() {
            if let Err(e) = result {
                return Err(format!("{call} failed: {e:?}"));
            }
        }
        Ok(())
    }
}

/// Counts of what a property planted.
#[derive(Debug, Default)]
struct Tally {
    foreign: u32,
    own: u32,
    refused: u32,
}

impl Tally {
    fn report(&self, what: &str, cases: u32) {
        println!(
            "{what}: {cases} cases: {} foreign, {} Baton's, {} refused by the server",
            self.foreign, self.own, self.refused
        );
    }
}

// =============================================================================================
// PostgreSQL and MySQL/MariaDB: a row of the lease table, and rows of the presence table.

mod sql {
    use super::*;
    use sqlx::Row;

    pub const PG: &str = "postgres://postgres@127.0.0.1:5432/test";
    pub const MY: &str = "mysql://root@127.0.0.1:3306/test";

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Db {
        Postgres,
        Mysql,
    }

    /// A time column's value, as an SQL expression on the server's clock.
    #[derive(Debug, Clone, PartialEq)]
    pub enum When {
        Null,
        /// Milliseconds from now.
        In(i64),
        /// A literal at or past the type's edges (index into [`Db::extremes`]).
        Edge(usize),
    }

    impl Db {
        pub fn base(self) -> &'static str {
            match self {
                Db::Postgres => PG,
                Db::Mysql => MY,
            }
        }

        /// Literals at the edges of the column's type.
        pub fn extremes(self) -> &'static [&'static str] {
            match self {
                Db::Postgres => &[
                    "infinity",
                    "-infinity",
                    "294276-12-31 23:59:59+00",
                    "4713-01-01 00:00:00+00 BC",
                    "1970-01-01 00:00:00+00",
                ],
                // MariaDB's default sql_mode takes the zero date.
                Db::Mysql => &[
                    "0000-00-00 00:00:00",
                    "1000-01-01 00:00:00",
                    "9999-12-31 23:59:59.999999",
                    "1970-01-01 00:00:00",
                ],
            }
        }

        /// Whether Baton can compute with this time (PostgreSQL's infinities cannot be
        /// subtracted from; MariaDB's zero date has no distance to now).
        pub fn usable(self, when: &When) -> bool {
            match when {
                When::Edge(i) => !matches!(
                    self.extremes()[*i],
                    "infinity" | "-infinity" | "0000-00-00 00:00:00"
                ),
                _ => true,
            }
        }

        pub fn expr(self, when: &When) -> String {
            match (self, when) {
                (_, When::Null) => "NULL".to_owned(),
                (Db::Postgres, When::In(ms)) => {
                    format!("clock_timestamp() + ({ms}) * interval '1 millisecond'")
                }
                (Db::Mysql, When::In(ms)) => {
                    format!("UTC_TIMESTAMP(6) + INTERVAL ({ms}) * 1000 MICROSECOND")
                }
                (Db::Postgres, When::Edge(i)) => format!("'{}'::timestamptz", self.extremes()[*i]),
                (Db::Mysql, When::Edge(i)) => format!("'{}'", self.extremes()[*i]),
            }
        }

        /// The smallest token Baton writes: PostgreSQL mints 1 with the row; MySQL's free row
        /// starts at 0.
        pub fn min_token(self) -> i64 {
            match self {
                Db::Postgres => 1,
                Db::Mysql => 0,
            }
        }

        fn placeholder(self, n: usize) -> String {
            match self {
                Db::Postgres => format!("${n}"),
                Db::Mysql => "?".to_owned(),
            }
        }

        fn quote_ident(self, name: &str) -> String {
            match self {
                Db::Postgres => format!("\"{name}\""),
                Db::Mysql => format!("`{name}`"),
            }
        }
    }

    pub fn when(db: Db) -> impl Strategy<Value = When> {
        let edges = db.extremes().len();
        prop_oneof![
            2 => Just(When::Null),
            3 => (30_000i64..600_000).prop_map(When::In),
            2 => (-600_000i64..-1_000).prop_map(When::In),
            1 => (-1_000_000_000_000i64..1_000_000_000_000).prop_map(When::In),
            1 => (0..edges).prop_map(When::Edge),
        ]
    }

    /// A lease-table row.
    #[derive(Debug, Clone)]
    pub struct LeaseRow {
        pub holder: Option<String>,
        pub token: i64,
        pub expires: When,
        pub acquired: When,
        pub renewed: When,
        pub to: Option<String>,
        pub from: Option<String>,
        pub until: When,
    }

    /// The rows Baton writes: free, held, held but expired, a planned handoff's mark (live or
    /// run out), a request beside a held lease.
    fn batons(db: Db) -> impl Strategy<Value = LeaseRow> {
        let live = || (30_000i64..600_000).prop_map(When::In);
        let past = || (-600_000i64..-1_000).prop_map(When::In);
        let token = db.min_token()..1_000_000i64;
        (0u8..6, id(), id(), id(), token, live(), past()).prop_map(
            move |(shape, holder, to, from, token, live, past)| {
                let mut row = LeaseRow {
                    holder: None,
                    token,
                    expires: When::Null,
                    acquired: When::In(-5_000),
                    renewed: When::In(-1_000),
                    to: None,
                    from: None,
                    until: When::Null,
                };
                match shape {
                    0 => {}
                    1 | 2 => {
                        row.holder = Some(holder);
                        row.expires = if shape == 1 { live } else { past };
                    }
                    3 | 4 => {
                        row.to = Some(to);
                        row.from = Some(from);
                        row.until = if shape == 3 { live } else { past };
                    }
                    _ => {
                        row.holder = Some(holder.clone());
                        row.expires = live;
                        row.to = Some(to);
                        row.from = Some(holder);
                    }
                }
                row
            },
        )
    }

    /// One change to a row: a field replaced by any value of its column's type (NULL, out of
    /// range, at the type's edges), or a text field by another candidate's id.
    #[derive(Debug, Clone)]
    pub enum Mutation {
        Holder(Option<String>),
        Token(i64),
        Expires(When),
        Acquired(When),
        Renewed(When),
        To(Option<String>),
        From(Option<String>),
        Until(When),
    }

    fn mutation(db: Db) -> impl Strategy<Value = Mutation> {
        let text = || proptest::option::of(id());
        let token = prop_oneof![
            any::<i64>(),
            -3i64..3,
            Just(i64::MAX),
            Just(i64::MAX - 1),
            Just(i64::MIN)
        ];
        prop_oneof![
            text().prop_map(Mutation::Holder),
            token.prop_map(Mutation::Token),
            when(db).prop_map(Mutation::Expires),
            when(db).prop_map(Mutation::Acquired),
            when(db).prop_map(Mutation::Renewed),
            text().prop_map(Mutation::To),
            text().prop_map(Mutation::From),
            when(db).prop_map(Mutation::Until),
        ]
    }

    pub fn lease_row(db: Db) -> impl Strategy<Value = LeaseRow> {
        (batons(db), proptest::collection::vec(mutation(db), 0..4)).prop_map(
            |(mut row, mutations)| {
                for m in mutations {
                    match m {
                        Mutation::Holder(v) => row.holder = v,
                        Mutation::Token(v) => row.token = v,
                        Mutation::Expires(v) => row.expires = v,
                        Mutation::Acquired(v) => row.acquired = v,
                        Mutation::Renewed(v) => row.renewed = v,
                        Mutation::To(v) => row.to = v,
                        Mutation::From(v) => row.from = v,
                        Mutation::Until(v) => row.until = v,
                    }
                }
                row
            },
        )
    }

    impl LeaseRow {
        /// Whether Baton could have written this row (docs of the SQL stores): a token it
        /// mints, `holder` and `expires_at` both set or both `NULL`, and handoff columns that
        /// are empty, a mark on a freed row, or a request naming the holder; and times it can
        /// compute with where it reads them.
        pub fn batons(&self, db: Db) -> bool {
            let expires = self.expires != When::Null;
            let until = self.until != When::Null;
            let handoff = match (&self.to, &self.from, until) {
                (None, None, false) => true,
                (Some(_), Some(_), true) => self.holder.is_none(),
                (Some(_), Some(from), false) => self.holder.as_ref() == Some(from),
                _ => false,
            };
            self.token >= db.min_token()
                && self.token < i64::MAX
                && self.holder.is_some() == expires
                && handoff
                && db.usable(&self.expires)
                && db.usable(&self.until)
        }
    }

    /// A pool of the superuser's connections, to plant and dump rows behind Baton's back.
    pub enum Pool {
        Pg(sqlx::PgPool),
        My(sqlx::MySqlPool),
    }

    /// A value bound to a statement.
    pub enum Bind {
        Text(Option<String>),
        Int(i64),
    }

    macro_rules! bound {
        ($query:expr, $binds:expr) => {{
            let mut q = $query;
            for b in $binds {
                q = match b {
                    Bind::Text(v) => q.bind(v),
                    Bind::Int(v) => q.bind(v),
                };
            }
            q
        }};
    }

    impl Pool {
        /// Run `sql` with `binds`.
        pub async fn execute(&self, sql: &str, binds: Vec<Bind>) -> Result<(), sqlx::Error> {
            let sql = sqlx::AssertSqlSafe(sql.to_owned());
            match self {
                Pool::Pg(p) => bound!(sqlx::query(sql), binds).execute(p).await.map(drop),
                Pool::My(p) => bound!(sqlx::query(sql), binds).execute(p).await.map(drop),
            }
        }

        /// The rows `sql` returns with `binds`: a text column, and an integer one if `int`.
        pub async fn texts(
            &self,
            sql: &str,
            binds: Vec<Bind>,
            int: bool,
        ) -> Vec<(String, i64, String)> {
            let sql = sqlx::AssertSqlSafe(sql.to_owned());
            match self {
                Pool::Pg(p) => bound!(sqlx::query(sql), binds)
                    .fetch_all(p)
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| {
                        if int {
                            (r.get(0), r.get(1), r.get(2))
                        } else {
                            (String::new(), 0, r.get(0))
                        }
                    })
                    .collect(),
                Pool::My(p) => bound!(sqlx::query(sql), binds)
                    .fetch_all(p)
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| {
                        if int {
                            (r.get(0), r.get(1), r.get(2))
                        } else {
                            (String::new(), 0, r.get(0))
                        }
                    })
                    .collect(),
            }
        }
    }

    /// A table pair (lease and presence) of the test's own, dropped at the end.
    pub struct Tables {
        pub db: Db,
        pub table: String,
        pub pool: Pool,
    }

    impl Tables {
        pub async fn new(db: Db) -> Tables {
            let fail = |e: sqlx::Error| -> ! {
                panic!(
                    "cannot connect to {} ({e}); scripts/test starts the machine's PostgreSQL \
                     and MariaDB",
                    db.base()
                )
            };
            let pool = match db {
                Db::Postgres => Pool::Pg(
                    sqlx::postgres::PgPoolOptions::new()
                        .max_connections(2)
                        .connect(db.base())
                        .await
                        .unwrap_or_else(|e| fail(e)),
                ),
                Db::Mysql => Pool::My(
                    sqlx::mysql::MySqlPoolOptions::new()
                        .max_connections(2)
                        .connect(db.base())
                        .await
                        .unwrap_or_else(|e| fail(e)),
                ),
            };
            Tables {
                db,
                table: unique("baton_f_"),
                pool,
            }
        }

        pub fn url(&self) -> String {
            format!("{}?table={}", self.db.base(), self.table)
        }

        pub fn presence(&self) -> String {
            format!("{}_candidates", self.table)
        }

        pub async fn exec(&self, sql: &str) {
            self.pool
                .execute(sql, Vec::new())
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        }

        /// Insert `row` at `key`; `false` when the server refused it (a value its column
        /// cannot hold).
        pub async fn plant(&self, key: &str, row: &LeaseRow) -> bool {
            let db = self.db;
            let p = |n| db.placeholder(n);
            let sql = format!(
                "INSERT INTO {} ({}, holder, token, expires_at, acquired_at, renewed_at, \
                 handoff_to, handoff_from, handoff_until) VALUES ({}, {}, {}, {}, {}, {}, {}, {}, {})",
                self.table,
                db.quote_ident("key"),
                p(1),
                p(2),
                p(3),
                db.expr(&row.expires),
                db.expr(&row.acquired),
                db.expr(&row.renewed),
                p(4),
                p(5),
                db.expr(&row.until),
            );
            let binds = vec![
                Bind::Text(Some(key.to_owned())),
                Bind::Text(row.holder.clone()),
                Bind::Int(row.token),
                Bind::Text(row.to.clone()),
                Bind::Text(row.from.clone()),
            ];
            self.pool.execute(&sql, binds).await.is_ok()
        }

        /// The row at `key`, every column as the server prints it.
        pub async fn dump(&self, key: &str) -> String {
            let db = self.db;
            let sql = match db {
                Db::Postgres => format!("SELECT t::text FROM {} t WHERE key = $1", self.table),
                Db::Mysql => format!(
                    "SELECT CONCAT_WS('|', QUOTE(holder), token, QUOTE(expires_at), \
                     QUOTE(acquired_at), QUOTE(renewed_at), QUOTE(handoff_to), \
                     QUOTE(handoff_from), QUOTE(handoff_until)) FROM {} WHERE `key` = ?",
                    self.table
                ),
            };
            self.pool
                .texts(&sql, vec![Bind::Text(Some(key.to_owned()))], false)
                .await
                .pop()
                .map_or_else(|| "no row".to_owned(), |(_, _, text)| text)
        }

        /// Every presence row at `key`, each as the server prints it, sorted.
        pub async fn dump_presence(&self, key: &str) -> Vec<(String, i64, String)> {
            let sql = match self.db {
                Db::Postgres => format!(
                    "SELECT candidate, priority, p::text FROM {} p WHERE key = $1 ORDER BY candidate",
                    self.presence()
                ),
                Db::Mysql => format!(
                    "SELECT candidate, priority, CONCAT_WS('|', QUOTE(candidate), priority, \
                     QUOTE(expires_at)) FROM {} WHERE `key` = ? ORDER BY candidate",
                    self.presence()
                ),
            };
            self.pool
                .texts(&sql, vec![Bind::Text(Some(key.to_owned()))], true)
                .await
        }

        pub async fn plant_presence(&self, key: &str, rows: &[PresenceRow]) -> bool {
            let db = self.db;
            for row in rows {
                let sql = format!(
                    "INSERT INTO {} ({}, candidate, priority, expires_at) VALUES ({}, {}, {}, {})",
                    self.presence(),
                    db.quote_ident("key"),
                    db.placeholder(1),
                    db.placeholder(2),
                    db.placeholder(3),
                    db.expr(&row.expires),
                );
                let binds = vec![
                    Bind::Text(Some(key.to_owned())),
                    Bind::Text(Some(row.candidate.clone())),
                    Bind::Int(row.priority),
                ];
                if self.pool.execute(&sql, binds).await.is_err() {
                    return false;
                }
            }
            true
        }

        pub async fn drop_tables(&self) {
            self.exec(&format!(
                "DROP TABLE IF EXISTS {}, {}",
                self.table,
                self.presence()
            ))
            .await;
        }
    }

    /// A presence-table row.
    #[derive(Debug, Clone)]
    pub struct PresenceRow {
        pub candidate: String,
        pub priority: i64,
        pub expires: When,
    }

    impl PresenceRow {
        /// Whether Baton could have written it: a priority of 0 to 4294967295, and an end
        /// Baton can compute with.
        pub fn batons(&self, db: Db) -> bool {
            (0..=i64::from(u32::MAX)).contains(&self.priority) && db.usable(&self.expires)
        }
    }

    pub fn presence_rows(db: Db) -> impl Strategy<Value = Vec<PresenceRow>> {
        let priority = prop_oneof![
            4 => 0..=i64::from(u32::MAX),
            1 => any::<i64>(),
            1 => Just(-1i64),
            1 => Just(i64::from(u32::MAX) + 1),
        ];
        // The end is NOT NULL: a NULL draw becomes a live record. Ends Baton cannot compute
        // with (PostgreSQL's infinities, MariaDB's zero date) are drawn too: foreign rows.
        let expires = when(db).prop_map(move |w| match w {
            When::Null => When::In(60_000),
            w => w,
        });
        proptest::collection::vec(
            (id(), priority, expires).prop_map(|(candidate, priority, expires)| PresenceRow {
                candidate,
                priority,
                expires,
            }),
            0..4,
        )
    }
}

/// Random and mutated rows at the key in `db`'s lease table: foreign ones are reported by
/// every call and left as they were; Baton's own work.
async fn sql_lease_rows(db: sql::Db, cases: u32) {
    let tables = sql::Tables::new(db).await;
    let store: Arc<dyn LeaseStore> = baton::connect::store_from_url(&tables.url()).unwrap();
    // Creates the tables.
    store.read("setup").await.unwrap();
    store
        .announce("setup", ME, 0, Duration::from_secs(1))
        .await
        .unwrap();
    let handle = tokio::runtime::Handle::current();
    let tally = std::cell::RefCell::new(Tally::default());
    let result = tokio::task::block_in_place(|| {
        runner(cases).run(&sql::lease_row(db), |row| {
            handle.block_on(async {
                let key = unique("k");
                if !tables.plant(&key, &row).await {
                    tally.borrow_mut().refused += 1;
                    return Ok(());
                }
                let before = tables.dump(&key).await;
                let calls = Calls::run(&*store, &key).await;
                if row.batons(db) {
                    tally.borrow_mut().own += 1;
                    calls
                        .all_ok()
                        .map_err(|e| TestCaseError::fail(format!("{row:?} ({before}): {e}")))?;
                } else {
                    tally.borrow_mut().foreign += 1;
                    calls
                        .all_foreign()
                        .map_err(|e| TestCaseError::fail(format!("{row:?} ({before}): {e}")))?;
                    let after = tables.dump(&key).await;
                    prop_assert_eq!(&before, &after, "{:?} was changed", row);
                }
                Ok(())
            })
        })
    });
    tables.drop_tables().await;
    result.unwrap();
    let tally = tally.into_inner();
    tally.report(&format!("{db:?} lease rows"), cases);
    assert!(
        tally.foreign > cases / 5 && tally.own > cases / 5,
        "{tally:?}"
    );
}

/// Random and mutated presence rows at the key: a row Baton could not have written makes
/// `announce` and `candidates` report foreign data, and is never updated or deleted (nor by
/// `withdraw`); Baton's own rows work.
async fn sql_presence_rows(db: sql::Db, cases: u32) {
    let tables = sql::Tables::new(db).await;
    let store: Arc<dyn LeaseStore> = baton::connect::store_from_url(&tables.url()).unwrap();
    store.read("setup").await.unwrap();
    store
        .announce("setup", ME, 0, Duration::from_secs(1))
        .await
        .unwrap();
    let handle = tokio::runtime::Handle::current();
    let tally = std::cell::RefCell::new(Tally::default());
    let result = tokio::task::block_in_place(|| {
        runner(cases).run(&sql::presence_rows(db), |rows| {
            handle.block_on(async {
                let key = unique("k");
                if !tables.plant_presence(&key, &rows).await {
                    tally.borrow_mut().refused += 1;
                    return Ok(());
                }
                let before = tables.dump_presence(&key).await;
                let announced = store.announce(&key, ME, 7, Duration::from_secs(60)).await;
                let listed = store.candidates(&key).await;
                let withdrawn = store.withdraw(&key, ME).await;
                let after = tables.dump_presence(&key).await;
                // The stored rows as the server holds them, judged by what they are.
                let foreign_rows: Vec<&(String, i64, String)> = before
                    .iter()
                    .filter(|(candidate, priority, _)| {
                        rows.iter()
                            .find(|r| &r.candidate == candidate && r.priority == *priority)
                            .is_none_or(|r| !r.batons(db))
                    })
                    .collect();
                if foreign_rows.is_empty() {
                    tally.borrow_mut().own += 1;
                    prop_assert!(
                        announced.is_ok(),
                        "{:?}: announce gave {:?}",
                        rows,
                        announced
                    );
                    prop_assert!(listed.is_ok(), "{:?}: candidates gave {:?}", rows, listed);
                    prop_assert!(
                        withdrawn.is_ok(),
                        "{:?}: withdraw gave {:?}",
                        rows,
                        withdrawn
                    );
                } else {
                    tally.borrow_mut().foreign += 1;
                    prop_assert!(
                        matches!(announced, Err(Error::ForeignData { .. })),
                        "{:?}: announce gave {:?}",
                        rows,
                        announced
                    );
                    prop_assert!(
                        matches!(listed, Err(Error::ForeignData { .. })),
                        "{:?}: candidates gave {:?}",
                        rows,
                        listed
                    );
                    prop_assert!(
                        matches!(withdrawn, Ok(()) | Err(Error::ForeignData { .. })),
                        "{:?}: withdraw gave {:?}",
                        rows,
                        withdrawn
                    );
                    for row in foreign_rows {
                        prop_assert!(after.contains(row), "{:?} was changed: {:?}", row, after);
                    }
                }
                Ok(())
            })
        })
    });
    tables.drop_tables().await;
    result.unwrap();
    let tally = tally.into_inner();
    tally.report(&format!("{db:?} presence rows"), cases);
    assert!(
        tally.foreign > cases / 10 && tally.own > cases / 10,
        "{tally:?}"
    );
}

/// Cases per run of each SQL property; docs/RELIABILITY.md quotes them.
const SQL_LEASE_CASES: u32 = 1000;
const SQL_PRESENCE_CASES: u32 = 300;

#[tokio::test(flavor = "multi_thread")]
async fn postgres_random_rows_are_foreign_and_never_overwritten() {
    sql_lease_rows(sql::Db::Postgres, SQL_LEASE_CASES).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mysql_random_rows_are_foreign_and_never_overwritten() {
    sql_lease_rows(sql::Db::Mysql, SQL_LEASE_CASES).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_random_presence_rows_are_foreign_and_never_overwritten() {
    sql_presence_rows(sql::Db::Postgres, SQL_PRESENCE_CASES).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mysql_random_presence_rows_are_foreign_and_never_overwritten() {
    sql_presence_rows(sql::Db::Mysql, SQL_PRESENCE_CASES).await;
}

// =============================================================================================
// A minimal HTTP/1.1 client, for etcd's JSON gateway and the fake Kubernetes and Consul
// servers: one request per connection, the body as bytes.

mod http {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    /// `method path` with `body` (JSON when not empty) to 127.0.0.1:`port`: the status and the
    /// body.
    pub fn call(port: u16, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        let mut s = TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"));
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(body).unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no HTTP head in {:?}", String::from_utf8_lossy(&raw)));
        let head = String::from_utf8_lossy(&raw[..split]).to_string();
        let mut body = raw[split + 4..].to_vec();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status in {head:?}"));
        if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            body = dechunk(&body);
        }
        (status, body)
    }

    fn dechunk(mut raw: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") else {
                return out;
            };
            let size = usize::from_str_radix(
                String::from_utf8_lossy(&raw[..eol])
                    .split(';')
                    .next()
                    .unwrap()
                    .trim(),
                16,
            )
            .unwrap_or(0);
            if size == 0 {
                return out;
            }
            out.extend_from_slice(&raw[eol + 2..eol + 2 + size]);
            raw = &raw[eol + 2 + size + 2..];
        }
    }

    /// [`call`] with a JSON body, expecting a 2xx; the JSON answer.
    pub fn json(
        port: u16,
        method: &str,
        path: &str,
        body: &serde_json::Value,
    ) -> serde_json::Value {
        let (status, answer) = call(port, method, path, body.to_string().as_bytes());
        assert!(
            (200..300).contains(&status),
            "{method} {path} {body}: {status} {}",
            String::from_utf8_lossy(&answer)
        );
        if answer.is_empty() {
            return serde_json::Value::Null;
        }
        serde_json::from_slice(&answer).unwrap_or_else(|e| {
            panic!("{method} {path}: {e}: {}", String::from_utf8_lossy(&answer))
        })
    }
}

// =============================================================================================
// etcd: the election's queue under `K/`, the handoff mark and request and the presence
// records under `baton-handoff:<K>:`.

mod etcd {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD as B64;

    /// The value of an etcd key Baton keeps a record at: Baton's encoding of fields (each `-`
    /// or `<length>:<text>`) after a tag, or raw bytes.
    #[derive(Debug, Clone)]
    pub enum Value {
        /// `tag` and the fields, encoded as Baton does.
        Fields(String, Vec<Option<String>>),
        /// Anything.
        Raw(Vec<u8>),
    }

    impl Value {
        pub fn bytes(&self) -> Vec<u8> {
            match self {
                Value::Raw(b) => b.clone(),
                Value::Fields(tag, fields) => {
                    let mut s = tag.clone();
                    for f in fields {
                        s.push(' ');
                        match f {
                            None => s.push('-'),
                            Some(t) => s.push_str(&format!("{}:{t}", t.len())),
                        }
                    }
                    s.into_bytes()
                }
            }
        }

        /// The fields after `tag`, read by the documented grammar (an independent reading of
        /// the bytes, so raw values that happen to be well formed count as such).
        pub fn fields(&self, tag: &str) -> Option<Vec<Option<String>>> {
            let bytes = self.bytes();
            let text = std::str::from_utf8(&bytes).ok()?;
            let mut rest = text.strip_prefix(tag)?;
            let mut out = Vec::new();
            while !rest.is_empty() {
                rest = rest.strip_prefix(' ')?;
                if let Some(r) = rest.strip_prefix('-') {
                    out.push(None);
                    rest = r;
                    continue;
                }
                let colon = rest.find(':')?;
                let digits = &rest[..colon];
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                let len: usize = digits.parse().ok()?;
                let after = &rest[colon + 1..];
                if after.len() < len || !after.is_char_boundary(len) {
                    return None;
                }
                out.push(Some(after[..len].to_owned()));
                rest = &after[len..];
            }
            Some(out)
        }
    }

    /// Digits only, as Baton writes numbers.
    pub fn number<T: std::str::FromStr>(text: &str) -> Option<T> {
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        text.parse().ok()
    }

    /// A field: an id, a number, none, or any text.
    fn field() -> impl Strategy<Value = Option<String>> {
        prop_oneof![
            4 => id().prop_map(Some),
            2 => (0u64..10_000_000_000u64).prop_map(|n| Some(n.to_string())),
            1 => Just(Some("+5".to_owned())),
            1 => Just(Some("-1".to_owned())),
            1 => Just(Some("99999999999999999999999".to_owned())),
            1 => Just(None),
        ]
    }

    /// A value tagged `tag` with `n` fields as Baton writes them, or a near miss: another tag,
    /// a field more or less, any fields, a length that is off, raw bytes.
    pub fn value(
        tag: &'static str,
        own: BoxedStrategy<Vec<Option<String>>>,
    ) -> impl Strategy<Value = Value> {
        let other_tag = prop_oneof![
            Just(tag.to_owned()),
            Just(format!("{tag}x")),
            Just(tag.to_uppercase()),
            Just("baton-handoff-mark".to_owned()),
            Just("baton-handoff-request".to_owned()),
            Just("baton-presence".to_owned()),
        ];
        prop_oneof![
            6 => own.clone().prop_map(move |f| Value::Fields(tag.to_owned(), f)),
            2 => (own.clone(), 0usize..4, field()).prop_map(move |(mut f, at, extra)| {
                // A field more, or one less.
                if at < f.len() && at % 2 == 0 {
                    f.remove(at);
                } else {
                    f.insert(at.min(f.len()), extra);
                }
                Value::Fields(tag.to_owned(), f)
            }),
            2 => (other_tag, proptest::collection::vec(field(), 0..5))
                .prop_map(|(t, f)| Value::Fields(t, f)),
            1 => (own, any::<proptest::sample::Index>(), -2i64..=2).prop_map(move |(f, at, delta)| {
                // A length that is off (or, with 0, a space more).
                let mut bytes = Value::Fields(tag.to_owned(), f).bytes();
                let colon = bytes.iter().enumerate().filter(|(_, b)| **b == b':').map(|(i, _)| i).collect::<Vec<_>>();
                if colon.is_empty() {
                    bytes.push(b' ');
                } else {
                    let c = colon[at.index(colon.len())];
                    let digit = bytes[c - 1];
                    bytes[c - 1] = u8::try_from(i64::from(digit) + delta).unwrap_or(b'0');
                }
                Value::Raw(bytes)
            }),
            1 => proptest::collection::vec(any::<u8>(), 0..24).prop_map(Value::Raw),
            1 => "\\PC{0,24}".prop_map(|s| Value::Raw(s.into_bytes())),
        ]
    }

    /// One key planted under the election's prefix `K/`.
    #[derive(Debug, Clone)]
    pub struct Entry {
        /// Whether it has a lease.
        pub lease: bool,
        /// Whether its name is its lease id in hex (else `name`).
        pub named_by_lease: bool,
        pub name: String,
        pub value: Vec<u8>,
    }

    /// A key planted beside the queue (the mark, the request, a presence record).
    #[derive(Debug, Clone)]
    pub struct Beside {
        pub lease: bool,
        pub value: Value,
    }

    #[derive(Debug, Clone)]
    pub struct Plant {
        pub queue: Vec<Entry>,
        pub mark: Option<Beside>,
        pub request: Option<Beside>,
        /// Presence records: the candidate the key names, and the record.
        pub presence: Vec<(String, Beside)>,
    }

    pub fn plant() -> impl Strategy<Value = Plant> {
        let entry = (
            prop_oneof![6 => Just(true), 1 => Just(false)],
            prop_oneof![6 => Just(true), 1 => Just(false)],
            prop_oneof![Just("1".to_owned()), Just("zz".to_owned()), "[0-9a-f]{1,16}", "\\PC{0,8}"],
            prop_oneof![3 => id().prop_map(String::into_bytes), 1 => proptest::collection::vec(any::<u8>(), 0..8)],
        )
            .prop_map(|(lease, named_by_lease, name, value)| Entry {
                lease,
                named_by_lease,
                name,
                value,
            });
        let lease = || prop_oneof![6 => Just(true), 1 => Just(false)];
        let mark_fields = (id(), proptest::option::of(id()))
            .prop_map(|(from, to)| vec![Some(from), to])
            .boxed();
        let request_fields = (1u64..1_000_000, proptest::option::of(id()))
            .prop_map(|(token, to)| vec![Some(token.to_string()), to])
            .boxed();
        let presence = (
            id(),
            0u32..=u32::MAX,
            1u32..100,
            prop_oneof![4 => Just(true), 1 => Just(false)],
            id(),
        )
            .prop_flat_map(move |(candidate, priority, ttl, same, other)| {
                let fields = Just(vec![
                    Some(priority.to_string()),
                    Some(ttl.to_string()),
                    Some(candidate.clone()),
                ])
                .boxed();
                let at = if same { candidate.clone() } else { other };
                (Just(at), lease(), value("baton-presence", fields))
                    .prop_map(|(at, lease, value)| (at, Beside { lease, value }))
            });
        (
            proptest::collection::vec(entry, 0..3),
            proptest::option::of((lease(), value("baton-handoff-mark", mark_fields))),
            proptest::option::of((lease(), value("baton-handoff-request", request_fields))),
            proptest::collection::vec(presence, 0..3),
        )
            .prop_map(|(queue, mark, request, mut presence)| {
                // One record per key: a second at the same key would replace the first.
                let mut seen = std::collections::HashSet::new();
                presence.retain(|(at, _)| seen.insert(at.clone()));
                Plant {
                    queue,
                    mark: mark.map(|(lease, value)| Beside { lease, value }),
                    request: request.map(|(lease, value)| Beside { lease, value }),
                    presence,
                }
            })
    }

    impl Entry {
        /// An entry `concurrency.Election` could have written: on a lease, named by it.
        pub fn batons(&self) -> bool {
            self.lease && self.named_by_lease
        }
    }

    impl Plant {
        pub fn mark_ok(&self) -> bool {
            self.mark.as_ref().is_none_or(|m| {
                m.lease
                    && matches!(
                        m.value.fields("baton-handoff-mark").as_deref(),
                        Some([Some(_), _])
                    )
            })
        }

        pub fn request_ok(&self) -> bool {
            self.request.as_ref().is_none_or(|r| {
                r.lease
                    && match r.value.fields("baton-handoff-request").as_deref() {
                        Some([Some(token), _]) => number::<i64>(token).is_some_and(|t| t > 0),
                        _ => false,
                    }
            })
        }

        /// Whether Baton could have written the presence records, at the keys they are at.
        pub fn presence_ok(&self) -> bool {
            self.presence.iter().all(|(at, p)| {
                p.lease
                    && match p.value.fields("baton-presence").as_deref() {
                        Some([Some(priority), Some(ttl), Some(candidate)]) => {
                            number::<u32>(priority).is_some()
                                && number::<i64>(ttl).is_some_and(|t| t > 0)
                                && candidate == at
                        }
                        _ => false,
                    }
            })
        }
    }

    /// A throwaway etcd and what plants data in it, through its JSON gateway.
    pub struct Server {
        pub server: &'static baton_testkit::etcd_server::EtcdServer,
    }

    impl Server {
        fn post(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
            http::json(self.server.port(), "POST", path, &body)
        }

        pub fn grant(&self) -> i64 {
            let got = self.post("/v3/lease/grant", serde_json::json!({ "TTL": 600 }));
            got["ID"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .or_else(|| got["ID"].as_i64())
                .unwrap_or_else(|| panic!("no lease id in {got}"))
        }

        pub fn put(&self, key: &str, value: &[u8], lease: Option<i64>) {
            let mut body =
                serde_json::json!({ "key": B64.encode(key), "value": B64.encode(value) });
            if let Some(id) = lease {
                body["lease"] = serde_json::json!(id.to_string());
            }
            self.post("/v3/kv/put", body);
        }

        /// Every key under `prefix`: key, value, lease and mod revision.
        pub fn dump(&self, prefix: &str) -> Vec<(String, String, String, String)> {
            let mut end = prefix.as_bytes().to_vec();
            *end.last_mut().unwrap() += 1;
            let got = self.post(
                "/v3/kv/range",
                serde_json::json!({ "key": B64.encode(prefix), "range_end": B64.encode(end) }),
            );
            let s = |v: &serde_json::Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
            got["kvs"]
                .as_array()
                .map(|kvs| {
                    kvs.iter()
                        .map(|kv| {
                            (
                                s(&kv["key"]),
                                s(&kv["value"]),
                                s(&kv["lease"]),
                                s(&kv["mod_revision"]),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default()
        }
    }
}

/// Cases per run of the etcd property; docs/RELIABILITY.md quotes it.
const ETCD_CASES: u32 = 300;

/// Random and mutated keys at an etcd election: entries under `K/`, the handoff mark and
/// request, presence records. Data Baton (or `concurrency.Election`) could not have written is
/// reported as foreign by the calls that read it, and left as it was (value, lease and mod
/// revision of every planted key); Baton's own shapes work.
#[tokio::test(flavor = "multi_thread")]
async fn etcd_random_keys_are_foreign_and_never_overwritten() {
    // The test process's own throwaway etcd, started from a thread that lives as long as the
    // process (the server dies with the thread that started it).
    let server = tokio::task::spawn_blocking(|| etcd::Server {
        server: baton_testkit::etcd_server::shared_etcd(),
    })
    .await
    .unwrap();
    let store: Arc<dyn LeaseStore> = baton::connect::store_from_url(&server.server.url()).unwrap();
    let handle = tokio::runtime::Handle::current();
    let tally = std::cell::RefCell::new(Tally::default());
    let result = tokio::task::block_in_place(|| {
        runner(ETCD_CASES).run(&etcd::plant(), |plant| {
            let key = unique("f");
            let prefix = baton::store::etcd::handoff_prefix(&key);
            // Every planted key, and whether Baton could have written it.
            let mut planted: Vec<(String, bool)> = Vec::new();
            for e in &plant.queue {
                let lease = e.lease.then(|| server.grant());
                let name = match lease {
                    Some(id) if e.named_by_lease => format!("{id:x}"),
                    _ => e.name.clone(),
                };
                let mut at = format!("{key}/{name}");
                while planted.iter().any(|(p, _)| *p == at) {
                    // Two random names alike: the second would replace the first.
                    at.push('-');
                }
                server.put(&at, &e.value, lease);
                planted.push((at, e.batons()));
            }
            let mut beside = |at: String, b: &etcd::Beside, own: bool| {
                let lease = b.lease.then(|| server.grant());
                server.put(&at, &b.value.bytes(), lease);
                planted.push((at, own));
            };
            if let Some(m) = &plant.mark {
                beside(format!("{prefix}mark"), m, plant.mark_ok());
            }
            if let Some(r) = &plant.request {
                beside(format!("{prefix}request"), r, plant.request_ok());
            }
            for (at, p) in &plant.presence {
                let escaped: String = at
                    .bytes()
                    .map(|b| {
                        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                            char::from(b).to_string()
                        } else {
                            format!("%{b:02X}")
                        }
                    })
                    .collect();
                let one = etcd::Plant {
                    queue: Vec::new(),
                    mark: None,
                    request: None,
                    presence: vec![(at.clone(), p.clone())],
                };
                beside(format!("{prefix}candidate:{escaped}"), p, one.presence_ok());
            }
            let before = (server.dump(&format!("{key}/")), server.dump(&prefix));
            handle.block_on(async {
                // The lease-side calls: the head, the predecessor, the mark and the request.
                let calls = Calls::run(&*store, &key).await;
                let head_ok = plant.queue.first().is_none_or(etcd::Entry::batons);
                let queue_ok = plant.queue.iter().all(etcd::Entry::batons);
                let beside_ok = plant.mark_ok() && plant.request_ok();
                let what = format!("{plant:?}");
                let expect = |call: &str, result: &baton::Result<()>, ok: bool| {
                    if ok {
                        prop_assert!(result.is_ok(), "{}: {} gave {:?}", what, call, result);
                    } else {
                        prop_assert!(
                            matches!(result, Err(Error::ForeignData { .. })),
                            "{}: {} gave {:?}",
                            what,
                            call,
                            result
                        );
                    }
                    Ok(())
                };
                for (call, result) in calls.all() {
                    // It looks at the head only beside a request and without a mark.
                    let unlooked = call == "pending_handoff";
                    if unlooked && beside_ok && !head_ok {
                        // The head may go unread: either answer is right.
                        prop_assert!(
                            matches!(result, Ok(()) | Err(Error::ForeignData { .. })),
                            "{}: {} gave {:?}",
                            what,
                            call,
                            result
                        );
                        continue;
                    }
                    // `read` and `request_handoff` look at the head of the queue, `try_acquire`
                    // at the head and the candidate's predecessor (every planted entry is one of
                    // the two), all three at the mark and the request, and `pending_handoff` at
                    // the mark and the request only.
                    let ok = match call {
                        "try_acquire" => queue_ok && beside_ok,
                        "pending_handoff" => beside_ok,
                        _ => head_ok && beside_ok,
                    };
                    expect(call, result, ok)?;
                }
                // Presence.
                let announced = store.announce(&key, ME, 3, Duration::from_secs(60)).await;
                let listed = store.candidates(&key).await;
                let withdrawn = store.withdraw(&key, ME).await;
                let presence_ok = plant.presence_ok();
                expect("announce", &announced.map(drop), presence_ok)?;
                expect("candidates", &listed.map(drop), presence_ok)?;
                if !presence_ok {
                    prop_assert!(
                        matches!(withdrawn, Ok(()) | Err(Error::ForeignData { .. })),
                        "{}: withdraw gave {:?}",
                        what,
                        withdrawn
                    );
                }
                let mut t = tally.borrow_mut();
                if queue_ok && beside_ok && presence_ok {
                    t.own += 1;
                } else {
                    t.foreign += 1;
                }
                Ok(())
            })?;
            // Every key Baton could not have written is as it was (Baton may replace or delete
            // its own: a mark it ends, a request it replaces, its own presence record).
            let after = (server.dump(&format!("{key}/")), server.dump(&prefix));
            for (at, own) in &planted {
                if *own {
                    continue;
                }
                let encoded =
                    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, at);
                let was: Vec<_> = before
                    .0
                    .iter()
                    .chain(&before.1)
                    .filter(|kv| kv.0 == encoded)
                    .collect();
                let is: Vec<_> = after
                    .0
                    .iter()
                    .chain(&after.1)
                    .filter(|kv| kv.0 == encoded)
                    .collect();
                prop_assert_eq!(&was, &is, "{:?}: {:?} changed", plant, at);
            }
            Ok(())
        })
    });
    result.unwrap();
    let tally = tally.into_inner();
    tally.report("etcd keys", ETCD_CASES);
    assert!(
        tally.foreign > ETCD_CASES / 5 && tally.own > ETCD_CASES / 10,
        "{tally:?}"
    );
}

// =============================================================================================
// JSON values drawn near Baton's records: each field Baton's, mistyped, out of range or
// missing, sometimes a field more.

mod json_fields {
    use super::*;
    use serde_json::{Value, json};

    /// One field of a record: absent (`None`) or a value.
    pub type Field = Option<Value>;

    /// Any JSON scalar a mutation puts in a field.
    pub fn odd() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            Just(json!(-1)),
            Just(json!(0)),
            Just(json!(1.5)),
            Just(json!(1.0)),
            Just(json!(u64::MAX)),
            "\\PC{0,8}".prop_map(Value::from),
            Just(json!([])),
            Just(json!({})),
        ]
    }

    /// `own` most of the time; otherwise missing or any odd value.
    pub fn field(own: BoxedStrategy<Value>) -> BoxedStrategy<Field> {
        prop_oneof![
            8 => own.prop_map(Some),
            1 => Just(None),
            1 => odd().prop_map(Some),
        ]
        .boxed()
    }

    /// Like [`field`], for a field Baton leaves out most of the time.
    pub fn optional(own: BoxedStrategy<Value>) -> BoxedStrategy<Field> {
        prop_oneof![
            6 => Just(None),
            3 => own.prop_map(Some),
            1 => odd().prop_map(Some),
        ]
        .boxed()
    }

    pub fn text() -> BoxedStrategy<Value> {
        id().prop_map(Value::from).boxed()
    }

    pub fn count(range: std::ops::Range<u64>) -> BoxedStrategy<Value> {
        range.prop_map(Value::from).boxed()
    }

    /// An object of the fields that are present, and maybe one field more.
    pub fn object(fields: Vec<(&'static str, Field)>, extra: Option<(String, Value)>) -> Value {
        let mut map = serde_json::Map::new();
        for (name, value) in fields {
            if let Some(v) = value {
                map.insert(name.to_owned(), v);
            }
        }
        if let Some((name, v)) = extra {
            map.insert(name, v);
        }
        Value::Object(map)
    }

    pub fn extra() -> impl Strategy<Value = Option<(String, Value)>> {
        prop_oneof![
            8 => Just(None),
            1 => ("[a-z_]{1,10}", odd()).prop_map(Some),
        ]
    }

    pub fn u64_of(v: &Field) -> Option<u64> {
        v.as_ref()?.as_u64()
    }

    pub fn str_of(v: &Field) -> Option<&str> {
        v.as_ref()?.as_str()
    }
}

// =============================================================================================
// Consul: the lock's pair `PREFIX/.lock` and the presence records `PREFIX/.candidates/<id>`.

mod consul {
    use super::json_fields::{self as jf, Field};
    use super::*;
    use serde_json::{Value, json};

    /// The lock's value: Baton's record (fields drawn near it), or raw bytes.
    #[derive(Debug, Clone)]
    pub enum LockValue {
        Record(Vec<(&'static str, Field)>, Option<(String, Value)>),
        Raw(Vec<u8>),
    }

    #[derive(Debug, Clone)]
    pub struct LockPair {
        pub flags: u64,
        pub held: bool,
        pub value: LockValue,
    }

    impl LockValue {
        pub fn bytes(&self) -> Vec<u8> {
            match self {
                LockValue::Raw(b) => b.clone(),
                LockValue::Record(fields, extra) => jf::object(fields.clone(), extra.clone())
                    .to_string()
                    .into_bytes(),
            }
        }
    }

    pub fn lock_pair() -> impl Strategy<Value = LockPair> {
        let record = (
            jf::field(Just(json!(1)).boxed()),
            jf::field(jf::text()),
            jf::field(jf::count(1..1_000_000)),
            jf::field(jf::count(1..60_000)),
            jf::field(jf::count(0..1_000)),
            jf::optional(jf::text()),
            jf::optional(jf::text()),
            jf::optional(jf::count(0..60_000)),
            jf::extra(),
        )
            .prop_map(
                |(baton, holder, token, lease, renewal, request, mark_to, window, extra)| {
                    LockValue::Record(
                        vec![
                            ("baton", baton),
                            ("holder", holder),
                            ("token", token),
                            ("lease_ms", lease),
                            ("renewal", renewal),
                            ("request_to", request),
                            ("mark_to", mark_to),
                            ("mark_window_ms", window),
                        ],
                        extra,
                    )
                },
            );
        let value = prop_oneof![
            8 => record,
            1 => proptest::collection::vec(any::<u8>(), 0..16).prop_map(LockValue::Raw),
            1 => "\\PC{0,16}".prop_map(|s| LockValue::Raw(s.into_bytes())),
        ];
        let flags = prop_oneof![
            8 => Just(baton::store::consul::LOCK_FLAGS),
            1 => Just(0u64),
            1 => any::<u64>(),
        ];
        (flags, any::<bool>(), value).prop_map(|(flags, held, value)| LockPair {
            flags,
            held,
            value,
        })
    }

    impl LockPair {
        /// Whether Baton (or another client's `Lock`) could have written this pair: a lock's
        /// flags, and a value that, when it is a JSON object with a `baton` field, is Baton's
        /// record exactly (`baton` 1, a non-empty `holder`, a positive `token` and
        /// `lease_ms`, a `renewal`, text in `request_to` and `mark_to`, `mark_window_ms`
        /// with `mark_to` only, nothing else), with no mark in a held lock.
        pub fn batons(&self) -> bool {
            if self.flags != baton::store::consul::LOCK_FLAGS {
                return false;
            }
            let bytes = self.value.bytes();
            let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(&bytes) else {
                return true;
            };
            if !object.contains_key("baton") {
                return true;
            }
            let get = |name: &str| object.get(name).cloned();
            let known = [
                "baton",
                "holder",
                "token",
                "lease_ms",
                "renewal",
                "request_to",
                "mark_to",
                "mark_window_ms",
            ];
            let text_or_absent = |name: &str| get(name).is_none_or(|v| v.is_string());
            object.keys().all(|k| known.contains(&k.as_str()))
                && get("baton") == Some(json!(1))
                && jf::str_of(&get("holder")).is_some_and(|h| !h.is_empty())
                && jf::u64_of(&get("token")).is_some_and(|t| t > 0 && t < u64::MAX)
                && jf::u64_of(&get("lease_ms")).is_some_and(|t| t > 0)
                && jf::u64_of(&get("renewal")).is_some()
                && text_or_absent("request_to")
                && text_or_absent("mark_to")
                && match (get("mark_to"), get("mark_window_ms")) {
                    (None, None) => true,
                    (Some(_), Some(w)) => w.as_u64().is_some() && !self.held,
                    _ => false,
                }
        }

        /// Whether the value is another client's (a lock Baton reads but does not write to).
        pub fn others(&self) -> bool {
            let bytes = self.value.bytes();
            !matches!(serde_json::from_slice::<Value>(&bytes), Ok(Value::Object(o)) if o.contains_key("baton"))
        }
    }

    /// A presence record: at the key of `at`, fields drawn near Baton's.
    #[derive(Debug, Clone)]
    pub struct PresencePair {
        pub at: String,
        pub fields: Vec<(&'static str, Field)>,
        pub extra: Option<(String, Value)>,
    }

    /// Candidate ids that need no escaping in a KV key.
    fn plain_id() -> impl Strategy<Value = String> {
        prop_oneof![Just(ME.to_owned()), "[a-c]{1,2}"]
    }

    pub fn presence() -> impl Strategy<Value = Vec<PresencePair>> {
        let one = (
            plain_id(),
            prop_oneof![4 => Just(None), 1 => plain_id().prop_map(Some)],
            jf::field(Just(json!(1)).boxed()),
            jf::field(jf::count(0..u64::from(u32::MAX) + 2)),
            jf::field(jf::count(1..60_000)),
            jf::field(jf::count(0..1_000)),
            jf::field(Just(json!(4_102_444_800_000u64)).boxed()),
            jf::extra(),
        )
            .prop_map(
                |(candidate, elsewhere, tag, priority, ttl, renewal, written, extra)| {
                    PresencePair {
                        at: elsewhere.unwrap_or_else(|| candidate.clone()),
                        fields: vec![
                            ("baton_presence", tag),
                            ("candidate", Some(json!(candidate))),
                            ("priority", priority),
                            ("ttl_ms", ttl),
                            ("renewal", renewal),
                            ("written_ms", written),
                        ],
                        extra,
                    }
                },
            );
        proptest::collection::vec(one, 0..3).prop_map(|mut v| {
            let mut seen = std::collections::HashSet::new();
            v.retain(|p| seen.insert(p.at.clone()));
            v
        })
    }

    impl PresencePair {
        pub fn value(&self) -> Vec<u8> {
            jf::object(self.fields.clone(), self.extra.clone())
                .to_string()
                .into_bytes()
        }

        pub fn batons(&self) -> bool {
            let v: Value = serde_json::from_slice(&self.value()).unwrap();
            let object = v.as_object().unwrap();
            let known = [
                "baton_presence",
                "candidate",
                "priority",
                "ttl_ms",
                "renewal",
                "written_ms",
            ];
            object.keys().all(|k| known.contains(&k.as_str()))
                && v["baton_presence"] == json!(1)
                && v["candidate"].as_str() == Some(self.at.as_str())
                && v["priority"]
                    .as_u64()
                    .is_some_and(|p| p <= u64::from(u32::MAX))
                && v["ttl_ms"].as_u64().is_some_and(|t| t > 0)
                && v["renewal"].as_u64().is_some()
                && v["written_ms"].as_u64().is_some()
        }
    }

    /// The fake agent, through its HTTP API.
    pub struct Agent {
        pub port: u16,
    }

    impl Agent {
        pub fn session(&self) -> String {
            let got = http::json(
                self.port,
                "PUT",
                "/v1/session/create",
                &json!({"TTL": "600s", "LockDelay": "0s"}),
            );
            got["ID"].as_str().expect("a session id").to_owned()
        }

        pub fn put(&self, key: &str, flags: u64, value: &[u8], session: Option<&str>) {
            let mut path = format!("/v1/kv/{key}?flags={flags}");
            if let Some(s) = session {
                path += &format!("&acquire={s}");
            }
            let (status, body) = http::call(self.port, "PUT", &path, value);
            assert!(
                status == 200 && body.starts_with(b"true"),
                "PUT {path}: {status} {}",
                String::from_utf8_lossy(&body)
            );
        }

        /// Every pair under `prefix`, as the agent lists them (value, flags, session, indexes).
        pub fn dump(&self, prefix: &str) -> Vec<Value> {
            let (status, body) =
                http::call(self.port, "GET", &format!("/v1/kv/{prefix}?recurse"), b"");
            if status == 404 {
                return Vec::new();
            }
            assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
            serde_json::from_slice::<Vec<Value>>(&body).unwrap()
        }
    }
}

/// Cases per run of the Consul property; docs/RELIABILITY.md quotes it.
const CONSUL_CASES: u32 = 500;

/// Random and mutated pairs at a Consul election: the lock's pair (flags, session, a value
/// near Baton's record) and presence records. What Baton could not have written is reported as
/// foreign by every call that reads it and left exactly as it was (value, flags, session and
/// indexes); Baton's own shapes, and other clients' locks, work.
#[tokio::test(flavor = "multi_thread")]
async fn consul_random_pairs_are_foreign_and_never_overwritten() {
    use baton_testkit::fake_consul::{FakeConsul, FakeConsulOptions};
    let fake = FakeConsul::serve(FakeConsulOptions::default());
    let agent = consul::Agent {
        port: fake.addr().port(),
    };
    let store: Arc<dyn LeaseStore> = baton::connect::store_from_url(&fake.store_url()).unwrap();
    let handle = tokio::runtime::Handle::current();
    let tally = std::cell::RefCell::new(Tally::default());
    let strategy = (consul::lock_pair(), consul::presence());
    let result = tokio::task::block_in_place(|| {
        runner(CONSUL_CASES).run(&strategy, |(lock, presence)| {
            let key = unique("f");
            let session = lock.held.then(|| agent.session());
            agent.put(
                &format!("{key}/.lock"),
                lock.flags,
                &lock.value.bytes(),
                session.as_deref(),
            );
            for p in &presence {
                agent.put(&format!("{key}/.candidates/{}", p.at), 0, &p.value(), None);
            }
            let before = agent.dump(&format!("{key}/"));
            let what = format!("{lock:?} {presence:?}");
            let lock_ok = lock.batons();
            let presence_ok = presence.iter().all(consul::PresencePair::batons);
            handle.block_on(async {
                let calls = Calls::run(&*store, &key).await;
                for (call, result) in calls.all() {
                    if lock_ok {
                        // Another client's lock takes no request (a configuration error).
                        let refused = call == "request_handoff"
                            && lock.others()
                            && lock.held
                            && matches!(result, Err(Error::Config(_)));
                        prop_assert!(
                            result.is_ok() || refused,
                            "{}: {} gave {:?}",
                            what,
                            call,
                            result
                        );
                    } else {
                        prop_assert!(
                            matches!(result, Err(Error::ForeignData { .. })),
                            "{}: {} gave {:?}",
                            what,
                            call,
                            result
                        );
                    }
                }
                let announced = store.announce(&key, ME, 3, Duration::from_secs(60)).await;
                let listed = store.candidates(&key).await;
                let withdrawn = store.withdraw(&key, ME).await;
                for (call, result) in [
                    ("announce", announced.map(drop)),
                    ("candidates", listed.map(drop)),
                ] {
                    if presence_ok {
                        prop_assert!(result.is_ok(), "{}: {} gave {:?}", what, call, result);
                    } else {
                        prop_assert!(
                            matches!(result, Err(Error::ForeignData { .. })),
                            "{}: {} gave {:?}",
                            what,
                            call,
                            result
                        );
                    }
                }
                if !presence_ok {
                    prop_assert!(
                        matches!(withdrawn, Ok(()) | Err(Error::ForeignData { .. })),
                        "{}: withdraw gave {:?}",
                        what,
                        withdrawn
                    );
                }
                Ok(())
            })?;
            let after = agent.dump(&format!("{key}/"));
            let pair =
                |dump: &[serde_json::Value], k: &str| dump.iter().find(|p| p["Key"] == k).cloned();
            if !lock_ok {
                let k = format!("{key}/.lock");
                prop_assert_eq!(
                    pair(&before, &k),
                    pair(&after, &k),
                    "{}: the lock changed",
                    what
                );
            }
            for p in presence.iter().filter(|p| !p.batons()) {
                let k = format!("{key}/.candidates/{}", p.at);
                prop_assert_eq!(
                    pair(&before, &k),
                    pair(&after, &k),
                    "{}: {} changed",
                    what,
                    k
                );
            }
            let mut t = tally.borrow_mut();
            if lock_ok && presence_ok {
                t.own += 1;
            } else {
                t.foreign += 1;
            }
            Ok(())
        })
    });
    result.unwrap();
    let tally = tally.into_inner();
    tally.report("Consul pairs", CONSUL_CASES);
    assert!(
        tally.foreign > CONSUL_CASES / 5 && tally.own > CONSUL_CASES / 10,
        "{tally:?}"
    );
}

// =============================================================================================
// Kubernetes: the election's Lease, through the fake API server (which validates a Lease as
// the API server does, so values of the wrong type never get stored).

mod k8s {
    use super::json_fields::{self as jf, Field};
    use super::*;
    use serde_json::{Value, json};

    pub const PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/default/leases";

    /// A MicroTime as Baton and client-go write it.
    fn micro(seconds: u32) -> String {
        format!(
            "2026-12-07T{:02}:{:02}:{:02}.{:06}Z",
            seconds / 3600 % 24,
            seconds / 60 % 60,
            seconds % 60,
            seconds
        )
    }

    /// A number as an annotation holds it: digits, or a near miss.
    fn number_text(own: std::ops::Range<u64>) -> BoxedStrategy<String> {
        prop_oneof![
            6 => own.prop_map(|n| n.to_string()),
            1 => Just(u64::MAX.to_string()),
            1 => prop_oneof![Just("+5"), Just("-1"), Just(""), Just("x"), Just("18446744073709551616"), Just("1.5")]
                .prop_map(str::to_owned),
        ]
        .boxed()
    }

    fn time_text(same: String) -> BoxedStrategy<String> {
        prop_oneof![
            6 => Just(same),
            2 => (0u32..86_400).prop_map(micro),
            1 => prop_oneof![Just("soon"), Just(""), Just("2026-13-01T00:00:00.000000Z")].prop_map(str::to_owned),
        ]
        .boxed()
    }

    #[derive(Debug, Clone)]
    pub struct Lease {
        pub spec: Vec<(&'static str, Field)>,
        pub annotations: Vec<(&'static str, Option<String>)>,
    }

    pub fn lease() -> impl Strategy<Value = Lease> {
        (0u32..86_000, 0u32..400)
            .prop_flat_map(|(acquired, renewed_after)| {
                let acquire = micro(acquired);
                let renew = micro(acquired + renewed_after);
                let spec = (
                    jf::field(id().prop_map(Value::from).boxed()),
                    jf::field(jf::count(1..60)),
                    jf::field(Just(json!(acquire.clone())).boxed()),
                    jf::field(Just(json!(renew.clone())).boxed()),
                    jf::field(jf::count(0..10)),
                    jf::optional(
                        prop_oneof![
                            3 => Just("baton.dev/handoff"),
                            1 => Just("OldestEmulationVersion"),
                            1 => Just("example.com/other"),
                        ]
                        .prop_map(Value::from)
                        .boxed(),
                    ),
                    // A preferred holder without Baton's strategy is refused by the API
                    // server, or foreign: rarely drawn, so that Baton's own Leases come often.
                    prop_oneof![
                        8 => Just(None),
                        1 => id().prop_map(|v| Some(Value::from(v))),
                        1 => jf::odd().prop_map(Some),
                    ],
                );
                let opt =
                    |s: BoxedStrategy<String>| prop_oneof![2 => Just(None), 3 => s.prop_map(Some)];
                let annotations = (
                    opt(number_text(1..1_000_000)),
                    opt(time_text(acquire.clone())),
                    prop_oneof![3 => Just(None), 1 => id().prop_map(Some)],
                    prop_oneof![3 => Just(None), 1 => id().prop_map(Some)],
                    prop_oneof![3 => Just(None), 1 => number_text(1..60_000).prop_map(Some)],
                    prop_oneof![3 => Just(None), 1 => time_text(renew.clone()).prop_map(Some)],
                );
                (spec, annotations)
            })
            .prop_map(|(s, a)| Lease {
                spec: vec![
                    ("holderIdentity", s.0),
                    ("leaseDurationSeconds", s.1),
                    ("acquireTime", s.2),
                    ("renewTime", s.3),
                    ("leaseTransitions", s.4),
                    ("strategy", s.5),
                    ("preferredHolder", s.6),
                ],
                annotations: vec![
                    ("baton.dev/fencing-token", a.0),
                    ("baton.dev/fencing-term", a.1),
                    ("baton.dev/handoff-to", a.2),
                    ("baton.dev/handoff-from", a.3),
                    ("baton.dev/handoff-window-ms", a.4),
                    ("baton.dev/handoff-at", a.5),
                ],
            })
    }

    fn digits(text: &str) -> bool {
        !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) && text.parse::<u64>().is_ok()
    }

    /// A MicroTime as written above (what the generator makes of a valid one).
    fn is_time(text: &str) -> bool {
        text.len() == 27 && text.parse::<chrono_like::Stamp>().is_ok()
    }

    /// The little of RFC 3339 the generator's valid times use.
    mod chrono_like {
        pub struct Stamp;
        impl std::str::FromStr for Stamp {
            type Err = ();
            fn from_str(s: &str) -> Result<Stamp, ()> {
                let b = s.as_bytes();
                let num = |r: std::ops::Range<usize>, max: u32| -> Result<(), ()> {
                    let v: u32 = s.get(r).ok_or(())?.parse().map_err(|_| ())?;
                    (v <= max).then_some(()).ok_or(())
                };
                if b.len() != 27 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[26] != b'Z' {
                    return Err(());
                }
                num(5..7, 12)?;
                num(8..10, 31)?;
                num(11..13, 23)?;
                num(14..16, 59)?;
                num(17..19, 59)?;
                if s[5..7].parse::<u32>() == Ok(0) {
                    return Err(());
                }
                Ok(Stamp)
            }
        }
    }

    impl Lease {
        pub fn body(&self, name: &str) -> Value {
            let annotations: serde_json::Map<String, Value> = self
                .annotations
                .iter()
                .filter_map(|(k, v)| Some(((*k).to_owned(), json!(v.as_ref()?))))
                .collect();
            let mut metadata = json!({ "name": name });
            if !annotations.is_empty() {
                metadata["annotations"] = Value::Object(annotations);
            }
            json!({
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": metadata,
                "spec": jf::object(self.spec.clone(), None),
            })
        }

        fn spec(&self, name: &str) -> Option<&Value> {
            self.spec.iter().find(|(k, _)| *k == name)?.1.as_ref()
        }

        fn annotation(&self, name: &str) -> Option<&str> {
            self.annotations
                .iter()
                .find(|(k, _)| k.ends_with(name))?
                .1
                .as_deref()
        }

        /// Whether Baton (or client-go) could have written this Lease (the store's rules):
        /// no coordinated-election strategy or preferred holder but Baton's, agreeing with its
        /// `handoff-to`; a `holderIdentity`; a positive `leaseDurationSeconds` when held;
        /// `handoff-to` and a non-empty `handoff-from` together or neither; numbers in digits;
        /// times that are MicroTimes.
        pub fn batons(&self) -> bool {
            let to = self.annotation("/handoff-to");
            let preferred = self
                .spec("preferredHolder")
                .and_then(Value::as_str)
                .filter(|p| !p.is_empty());
            let strategy_ok = match self.spec("strategy").and_then(Value::as_str) {
                None => preferred.is_none(),
                Some("baton.dev/handoff") => to.is_some_and(|to| preferred.is_none_or(|p| p == to)),
                Some(_) => false,
            };
            let holder = self.spec("holderIdentity").and_then(Value::as_str);
            let duration = self
                .spec("leaseDurationSeconds")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            let pair_ok = match (to, self.annotation("/handoff-from")) {
                (None, None) => {
                    self.annotation("/handoff-window-ms").is_none()
                        && self.annotation("/handoff-at").is_none()
                }
                (Some(_), Some(from)) => !from.is_empty(),
                _ => false,
            };
            strategy_ok
                && holder.is_some_and(|h| h.is_empty() || duration > 0)
                && pair_ok
                && self.annotation("/handoff-window-ms").is_none_or(digits)
                && self
                    .annotation("/fencing-token")
                    .is_none_or(|t| digits(t) && t != u64::MAX.to_string())
                && self.annotation("/handoff-at").is_none_or(is_time)
                && self.annotation("/fencing-term").is_none_or(is_time)
        }
    }
}

/// Cases per run of the Kubernetes property; docs/RELIABILITY.md quotes it.
const K8S_CASES: u32 = 1000;

/// Random and mutated Leases at the key: fields of the record and Baton's annotations missing,
/// out of range or malformed, coordinated-election strategies and preferred holders. A Lease
/// Baton (or client-go) could not have written is reported as foreign by every call and left
/// exactly as it was (its `resourceVersion` and every field); Baton's own work.
#[tokio::test(flavor = "multi_thread")]
async fn kubernetes_random_leases_are_foreign_and_never_overwritten() {
    use baton_testkit::fake_k8s::{FakeK8s, FakeK8sOptions};
    let fake = FakeK8s::serve(FakeK8sOptions::default());
    let port = fake.addr().port();
    let url = format!("kubernetes+http://{}?namespace=default", fake.addr());
    let store: Arc<dyn LeaseStore> = baton::connect::store_from_url(&url).unwrap();
    let handle = tokio::runtime::Handle::current();
    let tally = std::cell::RefCell::new(Tally::default());
    let result = tokio::task::block_in_place(|| {
        runner(K8S_CASES).run(&k8s::lease(), |lease| {
            let key = unique("f");
            let body = lease.body(&key);
            let (status, answer) = http::call(port, "POST", k8s::PATH, body.to_string().as_bytes());
            // 422: the API server's validation; 400: a value of the wrong type.
            if status == 422 || status == 400 {
                tally.borrow_mut().refused += 1;
                return Ok(());
            }
            prop_assert_eq!(
                status,
                201,
                "{}: {}",
                body,
                String::from_utf8_lossy(&answer)
            );
            let get = || http::call(port, "GET", &format!("{}/{key}", k8s::PATH), b"").1;
            let before = get();
            let calls = handle.block_on(Calls::run(&*store, &key));
            if lease.batons() {
                tally.borrow_mut().own += 1;
                calls
                    .all_ok()
                    .map_err(|e| TestCaseError::fail(format!("{body}: {e}")))?;
            } else {
                tally.borrow_mut().foreign += 1;
                calls
                    .all_foreign()
                    .map_err(|e| TestCaseError::fail(format!("{body}: {e}")))?;
                let after = get();
                prop_assert_eq!(
                    String::from_utf8_lossy(&before),
                    String::from_utf8_lossy(&after),
                    "{} was changed",
                    body
                );
            }
            Ok(())
        })
    });
    result.unwrap();
    let tally = tally.into_inner();
    tally.report("Kubernetes Leases", K8S_CASES);
    assert!(
        tally.foreign > K8S_CASES / 5 && tally.own > K8S_CASES / 20,
        "{tally:?}"
    );
}

// =============================================================================================
// What the first runs found, kept as regressions, with near cases of the same kind. Each of
// these four tests fails without the store fixes that came with it (checked by reverting them).

/// Lease rows Baton could not have written whose writes failed with a server error instead of
/// being refused as foreign: a token at the largest `BIGINT` (the acquire's `token + 1`
/// overflowed: "bigint out of range", retried as unavailable), PostgreSQL's infinities (the
/// read's subtraction failed; `-infinity` made a held lease look expired and the acquire took
/// it over) and MariaDB's zero date (no distance to now; the acquire took the lease over).
#[tokio::test(flavor = "multi_thread")]
async fn sql_rows_at_the_edges_of_their_types_are_foreign() {
    use sql::{Db, LeaseRow, When};
    for db in [Db::Postgres, Db::Mysql] {
        let tables = sql::Tables::new(db).await;
        let store: Arc<dyn LeaseStore> = baton::connect::store_from_url(&tables.url()).unwrap();
        store.read("setup").await.unwrap();
        let row = |holder: Option<&str>, token: i64, expires: When| LeaseRow {
            holder: holder.map(str::to_owned),
            token,
            expires,
            acquired: When::Null,
            renewed: When::Null,
            to: None,
            from: None,
            until: When::Null,
        };
        let mut rows = vec![
            (
                "a free row at the largest token",
                row(None, i64::MAX, When::Null),
            ),
            (
                "a held row at the largest token",
                row(Some("a"), i64::MAX, When::In(60_000)),
            ),
        ];
        for (i, edge) in db.extremes().iter().enumerate() {
            if !db.usable(&When::Edge(i)) {
                rows.push((edge, row(Some("a"), 5, When::Edge(i))));
                let mut marked = row(None, 5, When::Null);
                marked.to = Some(ME.to_owned());
                marked.from = Some("a".to_owned());
                marked.until = When::Edge(i);
                rows.push((edge, marked));
            }
        }
        for (what, row) in rows {
            let key = unique("k");
            assert!(tables.plant(&key, &row).await, "{db:?} {what}: planted");
            let before = tables.dump(&key).await;
            let calls = Calls::run(&*store, &key).await;
            calls
                .all_foreign()
                .unwrap_or_else(|e| panic!("{db:?} {what} ({before}): {e}"));
            assert_eq!(tables.dump(&key).await, before, "{db:?} {what}: changed");
        }
        tables.drop_tables().await;
    }
}

/// Consul: a presence record of Baton's shape with `renewal` at u64::MAX made the next
/// announce panic (`renewal + 1` overflowed); a lock whose record has a token of u64::MAX
/// would have minted the token 0 after it (or panicked); and a JSON object with a `baton`
/// field that does not come first (a field more, sorting before it) was taken for another
/// client's lock value, so the acquire overwrote it.
#[tokio::test(flavor = "multi_thread")]
async fn consul_records_at_the_edges_are_read_without_panic_or_overwrite() {
    use baton_testkit::fake_consul::{FakeConsul, FakeConsulOptions};
    use serde_json::json;
    let fake = FakeConsul::serve(FakeConsulOptions::default());
    let agent = consul::Agent {
        port: fake.addr().port(),
    };
    let store: Arc<dyn LeaseStore> = baton::connect::store_from_url(&fake.store_url()).unwrap();
    let flags = baton::store::consul::LOCK_FLAGS;

    let key = unique("f");
    let record = json!({"baton_presence": 1, "candidate": ME, "priority": 1, "ttl_ms": 30000,
        "renewal": u64::MAX, "written_ms": 4_102_444_800_000u64});
    agent.put(
        &format!("{key}/.candidates/{ME}"),
        0,
        record.to_string().as_bytes(),
        None,
    );
    let announced = store
        .announce(&key, ME, 2, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(announced.unwrap()[0].priority, 2);

    for value in [
        json!({"baton": 1, "holder": "a", "token": u64::MAX, "lease_ms": 1000, "renewal": 0})
            .to_string(),
        r#"{"_extra":0,"baton":1,"holder":"a","lease_ms":1000,"renewal":0,"token":5}"#.to_owned(),
        r#" {"baton":1,"holder":"a","lease_ms":1000,"renewal":0,"token":5,"zz":1}"#.to_owned(),
    ] {
        let key = unique("f");
        agent.put(&format!("{key}/.lock"), flags, value.as_bytes(), None);
        let before = agent.dump(&format!("{key}/"));
        Calls::run(&*store, &key)
            .await
            .all_foreign()
            .unwrap_or_else(|e| panic!("{value}: {e}"));
        assert_eq!(agent.dump(&format!("{key}/")), before, "{value}: changed");
    }
}

/// Kubernetes: annotations Baton could not have written that it took as its own: a fencing
/// token with a leading `+` (Rust's parser takes it) or at u64::MAX (no token can follow it),
/// a window with a `+`, and a mark's window or time without its candidate and leaver.
#[tokio::test(flavor = "multi_thread")]
async fn kubernetes_annotations_baton_could_not_write_are_foreign() {
    use baton_testkit::fake_k8s::{FakeK8s, FakeK8sOptions};
    use serde_json::json;
    let fake = FakeK8s::serve(FakeK8sOptions::default());
    let port = fake.addr().port();
    let url = format!("kubernetes+http://{}?namespace=default", fake.addr());
    let store: Arc<dyn LeaseStore> = baton::connect::store_from_url(&url).unwrap();
    let max = u64::MAX.to_string();
    let cases: [(&str, &str); 5] = [
        ("baton.dev/fencing-token", "+5"),
        ("baton.dev/fencing-token", &max),
        ("baton.dev/handoff-at", "2026-12-07T10:00:00.000000Z"),
        ("baton.dev/handoff-window-ms", "5000"),
        ("baton.dev/handoff-at", "soon"),
    ];
    for (annotation, value) in cases {
        let key = unique("f");
        let body = json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": key, "annotations": {annotation: value}},
            "spec": {"holderIdentity": "", "leaseDurationSeconds": 1,
                     "renewTime": "2026-12-07T10:00:00.000000Z"},
        });
        let (status, _) = http::call(port, "POST", k8s::PATH, body.to_string().as_bytes());
        assert_eq!(status, 201);
        let get = || http::call(port, "GET", &format!("{}/{key}", k8s::PATH), b"").1;
        let before = get();
        Calls::run(&*store, &key)
            .await
            .all_foreign()
            .unwrap_or_else(|e| panic!("{annotation}: {value}: {e}"));
        assert_eq!(get(), before, "{annotation}: {value}: changed");
    }
}

/// etcd: a request Baton could not have written (a token with a `+`, a missing token) was
/// taken for one, or not looked at when nobody led: `read`, `request_handoff` and
/// `pending_handoff` now report it, whoever leads, and leave it alone.
#[tokio::test(flavor = "multi_thread")]
async fn etcd_requests_baton_could_not_write_are_foreign() {
    let server = tokio::task::spawn_blocking(|| etcd::Server {
        server: baton_testkit::etcd_server::shared_etcd(),
    })
    .await
    .unwrap();
    let store: Arc<dyn LeaseStore> = baton::connect::store_from_url(&server.server.url()).unwrap();
    for value in ["baton-handoff-request 2:+5 -", "baton-handoff-request -"] {
        let key = unique("f");
        let prefix = baton::store::etcd::handoff_prefix(&key);
        let lease = server.grant();
        server.put(&format!("{prefix}request"), value.as_bytes(), Some(lease));
        let before = server.dump(&prefix);
        for (call, result) in [
            ("read", store.read(&key).await.map(drop)),
            (
                "request_handoff",
                store.request_handoff(&key, Some(ME)).await.map(drop),
            ),
            (
                "pending_handoff",
                store.pending_handoff(&key).await.map(drop),
            ),
        ] {
            assert!(
                matches!(result, Err(Error::ForeignData { .. })),
                "{value}: {call} gave {result:?}"
            );
        }
        assert_eq!(server.dump(&prefix), before, "{value}: changed");
    }
}
