//! The PostgreSQL, MySQL/MariaDB and etcd servers the store figures run on, and their own
//! counters, read by the bench beside the stores under test.
//!
//! * PostgreSQL and MariaDB/MySQL are the machine's servers (127.0.0.1:5432, user `postgres`;
//!   127.0.0.1:3306, user `root`; both trust/empty password, database `test`). The bench works
//!   in a lease table of its own, `baton_bench_<pid>_<random>`, and drops it when done.
//! * etcd is a throwaway single-member server the bench spawns on free loopback ports
//!   ([`baton_testkit::etcd_server::EtcdServer`]).
//!
//! Counters:
//!
//! * PostgreSQL: `pg_stat_user_tables` of the bench's own table. `lookups` = `seq_scan` +
//!   `idx_scan` (every statement Baton runs finds its row through one scan of the table or of
//!   its primary key; `LISTEN` connections touch no table and are not counted), `updates` =
//!   `n_tup_upd` (rows a renewal, release or acquire changed), `inserts` = `n_tup_ins`. Nothing
//!   else on the server touches that table, so these are the bench's alone. A backend reports
//!   its counters when it goes idle, at most once a second (otherwise up to 10 s later), so
//!   windows are long and follow a settling time.
//! * MariaDB/MySQL: `SHOW GLOBAL STATUS` deltas of `Com_select`, `Com_update`, `Com_insert`,
//!   `Com_delete` (statements by kind, prepared ones included) and `Questions`. They are the
//!   whole server's: other clients' statements are measured in a window without the bench's
//!   candidates and subtracted.
//! * etcd: `grpc_server_msg_received_total` from its `/metrics`, per gRPC method: every
//!   message a client sent (a unary call is one; each keepalive on a lease stream is one).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use sqlx::Row as _;

use crate::BoxResult;

pub const PG_BASE: &str = "postgres://postgres@127.0.0.1:5432/test";
pub const MY_BASE: &str = "mysql://root@127.0.0.1:3306/test";

/// Counter name → value.
pub type Snapshot = BTreeMap<String, u64>;

/// `b − a` per counter (counters absent from `a` count from 0).
pub fn delta(a: &Snapshot, b: &Snapshot) -> Snapshot {
    b.iter()
        .map(|(k, v)| (k.clone(), v.saturating_sub(a.get(k).copied().unwrap_or(0))))
        .collect()
}

/// A server and the way the bench reads its counters.
pub enum Server {
    Postgres {
        pool: sqlx::PgPool,
        table: String,
    },
    Mysql {
        pool: sqlx::MySqlPool,
        table: String,
    },
    Etcd {
        port: u16,
    },
}

fn table_name() -> String {
    format!(
        "baton_bench_{}_{:06x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
            & 0xff_ffff
    )
}

impl Server {
    pub async fn postgres() -> BoxResult<Server> {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .connect(PG_BASE)
            .await
            .map_err(|e| {
                format!(
                    "PostgreSQL on 127.0.0.1:5432 ({e}); start it with `pg_ctlcluster \
                     --skip-systemctl-redirect $(ls /etc/postgresql) main start` (scripts/test \
                     does), or leave `postgres` out with --only"
                )
            })?;
        Ok(Server::Postgres {
            pool,
            table: table_name(),
        })
    }

    pub async fn mysql() -> BoxResult<Server> {
        let pool = sqlx::mysql::MySqlPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .connect(MY_BASE)
            .await
            .map_err(|e| {
                format!(
                    "MariaDB/MySQL on 127.0.0.1:3306 ({e}); start it with `start-stop-daemon \
                     --start --oknodo --background --exec /usr/sbin/mariadbd` (scripts/test \
                     does), or leave `mysql` out with --only"
                )
            })?;
        Ok(Server::Mysql {
            pool,
            table: table_name(),
        })
    }

    pub fn etcd(port: u16) -> Server {
        Server::Etcd { port }
    }

    /// The store URL Baton uses (the SQL ones on the bench's own table).
    pub fn store_url(&self) -> String {
        match self {
            Server::Postgres { table, .. } => format!("{PG_BASE}?table={table}"),
            Server::Mysql { table, .. } => format!("{MY_BASE}?table={table}"),
            Server::Etcd { port } => format!("etcd://127.0.0.1:{port}"),
        }
    }

    /// The server's own version string.
    pub async fn version(&self) -> String {
        let v: Result<String, Box<dyn std::error::Error + Send + Sync>> = async {
            Ok(match self {
                Server::Postgres { pool, .. } => {
                    sqlx::query_scalar::<_, String>("SELECT version()")
                        .fetch_one(pool)
                        .await?
                }
                Server::Mysql { pool, .. } => {
                    let v: String = sqlx::query_scalar("SELECT VERSION()")
                        .fetch_one(pool)
                        .await?;
                    format!("MySQL/MariaDB {v}")
                }
                Server::Etcd { .. } => {
                    let out = std::process::Command::new("etcd")
                        .arg("--version")
                        .output()?;
                    String::from_utf8_lossy(&out.stdout)
                        .lines()
                        .next()
                        .unwrap_or("etcd, unknown version")
                        .trim()
                        .to_owned()
                }
            })
        }
        .await;
        v.unwrap_or_else(|e| format!("unknown ({e})"))
    }

    /// The counters now.
    pub async fn snapshot(&self) -> BoxResult<Snapshot> {
        let mut out = Snapshot::new();
        match self {
            Server::Postgres { pool, table } => {
                let row = sqlx::query(
                    "SELECT coalesce(seq_scan, 0) + coalesce(idx_scan, 0), n_tup_upd, n_tup_ins \
                     FROM pg_stat_user_tables WHERE relname = $1",
                )
                .bind(table)
                .fetch_optional(pool)
                .await?;
                if let Some(row) = row {
                    out.insert("lookups".into(), row.try_get::<i64, _>(0)? as u64);
                    out.insert("updates".into(), row.try_get::<i64, _>(1)? as u64);
                    out.insert("inserts".into(), row.try_get::<i64, _>(2)? as u64);
                }
            }
            Server::Mysql { pool, .. } => {
                let rows = sqlx::query(
                    "SHOW GLOBAL STATUS WHERE Variable_name IN \
                     ('Questions', 'Com_select', 'Com_update', 'Com_insert', 'Com_delete')",
                )
                .fetch_all(pool)
                .await?;
                for row in rows {
                    let name: String = row.try_get(0)?;
                    let value: String = row.try_get(1)?;
                    out.insert(name.to_lowercase(), value.parse()?);
                }
            }
            Server::Etcd { port } => {
                let text = http_get(*port, "/metrics")?;
                out.extend(baton_testkit::etcd_server::grpc_messages_from_metrics(
                    &text,
                ));
            }
        }
        Ok(out)
    }

    /// Requests in a delta of counters: statements (SQL) or gRPC messages (etcd). The admin
    /// reads themselves are not among them (PostgreSQL and etcd count only the bench's table
    /// or gRPC; `SHOW` is none of MariaDB's `Com_select/update/insert/delete`).
    pub fn requests(&self, d: &Snapshot) -> u64 {
        let get = |k: &str| d.get(k).copied().unwrap_or(0);
        match self {
            Server::Postgres { .. } => get("lookups"),
            Server::Mysql { .. } => {
                get("com_select") + get("com_update") + get("com_insert") + get("com_delete")
            }
            Server::Etcd { .. } => d.values().sum(),
        }
    }

    /// What [`requests`](Self::requests) counts, for the report.
    pub fn counts_what(&self) -> &'static str {
        match self {
            Server::Postgres { .. } => {
                "statements on the bench's own table, from `pg_stat_user_tables` (`seq_scan` + \
                 `idx_scan`: each of Baton's statements finds its row with one scan; `LISTEN` \
                 connections touch no table). A backend reports its counters when it goes idle, \
                 at most once a second, otherwise within 10 s: each window follows a settling \
                 time of at least 11 s in the full run"
            }
            Server::Mysql { .. } => {
                "statements, from `SHOW GLOBAL STATUS` (`Com_select` + `Com_update` + \
                 `Com_insert` + `Com_delete`, prepared statements included); the counters are \
                 the whole server's, so the rate of other clients, measured in a window \
                 without the bench's candidates, is subtracted"
            }
            Server::Etcd { .. } => {
                "gRPC messages received, from etcd's `/metrics` \
                 (`grpc_server_msg_received_total`, summed over methods: a unary call is one, \
                 each keepalive on a lease stream is one); the server is the bench's own"
            }
        }
    }

    /// Medians of `n` round trips (`SELECT 1`) and of `n` one-row `UPDATE` commits on row `key`
    /// of the bench's table (setting `renewed_at` to itself, after the handoffs are done), on
    /// the admin connection: what one statement of a handoff costs on this server, in this run.
    /// `None` for etcd.
    pub async fn latencies(&self, key: &str, n: usize) -> BoxResult<Option<(Duration, Duration)>> {
        let median = |mut v: Vec<Duration>| {
            v.sort_unstable();
            v[v.len() / 2]
        };
        let (mut rtt, mut commit) = (Vec::new(), Vec::new());
        for _ in 0..n.max(1) {
            let t = std::time::Instant::now();
            match self {
                Server::Postgres { pool, .. } => {
                    sqlx::query("SELECT 1").execute(pool).await?;
                }
                Server::Mysql { pool, .. } => {
                    sqlx::query("SELECT 1").execute(pool).await?;
                }
                Server::Etcd { .. } => return Ok(None),
            }
            rtt.push(t.elapsed());
            let t = std::time::Instant::now();
            match self {
                Server::Postgres { pool, table } => {
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "UPDATE {table} SET renewed_at = renewed_at WHERE key = $1"
                    )))
                    .bind(key)
                    .execute(pool)
                    .await?;
                }
                Server::Mysql { pool, table } => {
                    // A value that changes, so InnoDB really writes and commits.
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "UPDATE {table} SET renewed_at = UTC_TIMESTAMP(6) WHERE `key` = ?"
                    )))
                    .bind(key)
                    .execute(pool)
                    .await?;
                }
                Server::Etcd { .. } => return Ok(None),
            }
            commit.push(t.elapsed());
        }
        Ok(Some((median(rtt), median(commit))))
    }

    /// Drop the bench's table (SQL); a no-op for etcd.
    pub async fn cleanup(&self) {
        let result = match self {
            Server::Postgres { pool, table } => sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP TABLE IF EXISTS {table}, {table}_candidates"
            )))
            .execute(pool)
            .await
            .map(|_| ()),
            Server::Mysql { pool, table } => sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP TABLE IF EXISTS {table}, {table}_candidates"
            )))
            .execute(pool)
            .await
            .map(|_| ()),
            Server::Etcd { .. } => Ok(()),
        };
        if let Err(e) = result {
            eprintln!("warning: cannot drop the bench's table: {e}");
        }
    }
}

/// `GET path` over HTTP/1.0 on 127.0.0.1:`port`; the body.
pub fn http_get(port: u16, path: &str) -> BoxResult<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    let (head, body) = reply.split_once("\r\n\r\n").ok_or("malformed HTTP reply")?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        return Err(format!("GET {path}: {}", head.lines().next().unwrap_or_default()).into());
    }
    Ok(body.to_owned())
}
