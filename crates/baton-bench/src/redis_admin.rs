//! The benchmark's view of its own `redis-server`: command counters (`INFO commandstats`,
//! reset with `CONFIG RESETSTAT`) and the server process's CPU time.
//!
//! `INFO commandstats` counts every command the server ran, including the commands a Lua script
//! runs through `redis.call`: one renewal is one `EVALSHA` *request* and four commands inside
//! it (`TYPE`, `GET`, `HGET`, `PEXPIRE`). Reports therefore give both: requests (round trips
//! from clients) and commands (everything the server executed).

use std::collections::BTreeMap;

use redis::aio::MultiplexedConnection;

use crate::BoxResult;

/// Commands only a client sends (never from inside Baton's scripts): one each is a round trip.
const REQUESTS: &[&str] = &[
    "evalsha",
    "eval",
    "script|load",
    "subscribe",
    "unsubscribe",
    "ping",
    "hello",
    "info",
    "client|setinfo",
    "client|setname",
    "select",
];

/// The admin connection of the bench (RESP2, separate from the stores under test).
pub struct Admin {
    conn: MultiplexedConnection,
}

impl Admin {
    pub async fn connect(url: &str) -> BoxResult<Admin> {
        let client = redis::Client::open(url)?;
        Ok(Admin {
            conn: client.get_multiplexed_async_connection().await?,
        })
    }

    /// `CONFIG RESETSTAT`: zero the command counters.
    pub async fn reset_stats(&mut self) -> BoxResult<()> {
        redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query_async::<()>(&mut self.conn)
            .await?;
        Ok(())
    }

    /// `INFO commandstats` as `command → calls`, without the bench's own `CONFIG RESETSTAT`
    /// (the `INFO` that reads the counters is not counted in its own answer).
    pub async fn command_stats(&mut self) -> BoxResult<CommandStats> {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut self.conn)
            .await?;
        let mut calls = BTreeMap::new();
        for line in info.lines() {
            let Some((name, rest)) = line
                .strip_prefix("cmdstat_")
                .and_then(|l| l.split_once(':'))
            else {
                continue;
            };
            if name == "config|resetstat" {
                continue;
            }
            let n = rest
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| format!("cannot parse INFO commandstats line {line:?}"))?;
            calls.insert(name.to_owned(), n);
        }
        Ok(CommandStats(calls))
    }

    /// The server's process id (`INFO server`).
    pub async fn server_pid(&mut self) -> BoxResult<u32> {
        self.info_server_field("process_id").await
    }

    /// Wait until Baton's restart guard no longer holds a new lease on this server: until it
    /// reports an uptime of more than `lease` plus the second the guard takes off
    /// (docs/decisions.md D28, D29). A figure that times acquisitions on a fresh server waits
    /// this first.
    pub async fn wait_past_restart_guard(&mut self, lease: std::time::Duration) -> BoxResult<()> {
        let need = lease.as_secs() + u64::from(lease.subsec_nanos() > 0) + 1;
        while self.info_server_field::<u64>("uptime_in_seconds").await? < need {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        Ok(())
    }

    /// A field of `INFO server`.
    async fn info_server_field<T: std::str::FromStr>(&mut self, name: &str) -> BoxResult<T> {
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut self.conn)
            .await?;
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| format!("INFO server did not report {name}").into())
    }
}

/// Calls per command since the last reset.
#[derive(Debug, Clone, Default)]
pub struct CommandStats(pub BTreeMap<String, u64>);

impl CommandStats {
    pub fn get(&self, name: &str) -> u64 {
        self.0.get(name).copied().unwrap_or(0)
    }

    /// Client requests (round trips): commands a client sends itself.
    pub fn requests(&self) -> u64 {
        self.0
            .iter()
            .filter(|(name, _)| REQUESTS.contains(&name.as_str()))
            .map(|(_, n)| n)
            .sum()
    }

    /// Every command the server executed, scripts' inner commands included.
    pub fn commands(&self) -> u64 {
        self.0.values().sum()
    }

    /// `evalsha 12, get 12, ...`, busiest first.
    pub fn breakdown(&self) -> String {
        let mut v: Vec<(&String, &u64)> = self.0.iter().collect();
        v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        v.iter()
            .map(|(name, n)| format!("{name} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}
