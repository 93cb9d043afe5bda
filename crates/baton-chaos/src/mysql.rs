//! The MySQL/MariaDB runs' server: the machine's (`root@127.0.0.1:3306/test`, no password),
//! shared by every run, each in a lease table of its own (`baton_chaos_<random>`, with its
//! presence table `<table>_candidates`), dropped with the `mariadb` (or `mysql`) client when
//! the run ends. The server is never restarted: a store restart is an outage of every
//! candidate's connections (see [`Scenario::StoreRestart`](crate::Scenario::StoreRestart)).
//!
//! The candidates' connections all go through their slot's fault proxy: the sqlx pool, the
//! one connection on which a store's leaders hold their term locks (`GET_LOCK`, D110), and the
//! connection on which a follower's store blocks in `GET_LOCK` until the leader's term lock is
//! released. A partitioned leader's term lock therefore stays held on the server for as long
//! as the partition lasts (the proxy holds the connection open and loses nothing); followers
//! wait on it at most until the lease they read is due to expire, then read the row, which
//! alone decides who leads.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The machine's MariaDB, which MySQL runs share (each in a table of its own).
pub(crate) const MYSQL_ADDR: ([u8; 4], u16) = ([127, 0, 0, 1], 3306);

/// The server's address, if something listens there; otherwise an error saying how to start
/// it.
pub(crate) fn server() -> Result<SocketAddr, String> {
    let addr = MYSQL_ADDR.into();
    std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| {
        format!(
            "MariaDB is not running on {addr} ({e}); start it with `start-stop-daemon --start \
             --oknodo --background --exec /usr/sbin/mariadbd` (scripts/test does)"
        )
    })?;
    Ok(addr)
}

/// A lease table name of a run's own. Not drawn from the run's RNG: the name only has to be
/// unique, and replays of a schedule must not depend on it.
pub(crate) fn table_name() -> String {
    format!("baton_chaos_{:012x}", fastrand::u64(..) >> 16)
}

/// The store URL of a candidate whose proxy listens on `proxy`.
pub(crate) fn url(proxy: SocketAddr, table: &str) -> String {
    format!("mysql://root@{proxy}/test?table={table}")
}

/// Drop a run's lease table and its presence table; what happened, for the timeline.
pub(crate) fn drop_tables(table: &str) -> String {
    let (ip, port) = MYSQL_ADDR;
    let host = std::net::Ipv4Addr::from(ip).to_string();
    let sql = format!("DROP TABLE IF EXISTS {table}, {table}_candidates");
    let mut last = String::new();
    // Debian's MariaDB packages name the client `mariadb` (and `mysql`, a link, in older
    // ones); MySQL's is `mysql`.
    for client in ["mariadb", "mysql"] {
        let out = Command::new(client)
            .args([
                "-h",
                &host,
                "-P",
                &port.to_string(),
                "-u",
                "root",
                "test",
                "-e",
            ])
            .arg(&sql)
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(out) if out.status.success() => return format!("dropped table {table}"),
            Ok(out) => {
                return format!(
                    "cannot drop table {table}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            Err(e) => last = format!("cannot run {client}: {e}"),
        }
    }
    format!("cannot drop table {table}: {last}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_the_runs_own_and_fit() {
        let (a, b) = (table_name(), table_name());
        assert_ne!(a, b);
        // With `_candidates`, within the 63 characters that keep the presence table's name
        // `<table>_candidates` (what drop_tables drops).
        assert!(a.len() + "_candidates".len() <= 63, "{a}");
        assert_eq!(
            url(([127, 0, 0, 1], 4000).into(), "baton_chaos_1"),
            "mysql://root@127.0.0.1:4000/test?table=baton_chaos_1"
        );
    }
}
