//! A resource that checks fencing tokens: a PostgreSQL table whose writes carry the leader's
//! token, and which refuses a write whose token is lower than one it has already accepted. So
//! a leader whose term has ended cannot write, even if it does not know yet that it no longer
//! leads.
//!
//! Why the resource must check: a leader process that is paused (a stop signal, a VM freeze, a
//! long stall) past its lease can act for a moment after it resumes, before it looks at the
//! clock again, while another process already leads. Nothing in the election can prevent
//! that; the token the resource compares can.
//!
//! Needs PostgreSQL. The example creates the table `fenced_counter` (or `EXAMPLE_TABLE`) in
//! `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`) and elects through the
//! same database, in the lease table `baton_example_leases` (or the store `BATON_STORE`).
//!
//! ```sh
//! cargo run -p baton-election --example fencing_postgres --features postgres
//! psql -c "SELECT * FROM fenced_counter"     # the value and the highest token accepted
//! ```
//!
//! Keep the counter with the lease table it was fenced by: tokens increase per key of one
//! lease table, and a new lease table starts them at 1 again, which this counter would refuse.
//!
//! It exits with status 1 if the stale write was accepted.

use std::time::Duration;

use baton::{FencingToken, LeaderElection, LeaseStore};
use sqlx::PgPool;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The resource: one counter, with the highest fencing token it has accepted.
const CREATE: &str = "CREATE TABLE IF NOT EXISTS {table} (
    name          TEXT PRIMARY KEY,
    value         BIGINT NOT NULL,
    fencing_token BIGINT NOT NULL
)";

/// A fenced write: it applies only if its token is at least the highest one accepted so far,
/// and then records its token. The check and the write are one statement, so no stale write
/// can slip in between.
const INCREMENT: &str = "UPDATE {table}
SET value = value + 1, fencing_token = $2
WHERE name = $1 AND fencing_token <= $2";

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let database = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let table = std::env::var("EXAMPLE_TABLE").unwrap_or_else(|_| "fenced_counter".to_owned());
    let store_url = std::env::var("BATON_STORE").unwrap_or_else(|_| {
        let sep = if database.contains('?') { '&' } else { '?' };
        format!("{database}{sep}table=baton_example_leases")
    });
    if !table
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(format!("EXAMPLE_TABLE={table:?}: use lowercase letters, digits and _").into());
    }
    let sql = |text: &str| sqlx::AssertSqlSafe(text.replace("{table}", &table));

    let pool = PgPool::connect(&database).await?;
    sqlx::query(sql(CREATE)).execute(&pool).await?;
    sqlx::query(sql(
        "INSERT INTO {table} VALUES ('nightly', 0, 0) ON CONFLICT (name) DO NOTHING",
    ))
    .execute(&pool)
    .await?;
    let write = |token: FencingToken| {
        let (pool, statement) = (pool.clone(), sql(INCREMENT));
        async move {
            let token = i64::try_from(token.get())?;
            let done = sqlx::query(statement)
                .bind("nightly")
                .bind(token)
                .execute(&pool)
                .await?;
            Ok::<bool, BoxError>(done.rows_affected() == 1)
        }
    };
    let verdict = |accepted: bool| if accepted { "accepted" } else { "refused" };

    // Two candidates, each with a store of its own, as two processes would have.
    let candidate = |id: &str| -> Result<LeaderElection, BoxError> {
        let store: std::sync::Arc<dyn LeaseStore> = baton::connect::store_from_url(&store_url)?;
        Ok(LeaderElection::builder_dyn(store, "fencing-example:leader")
            .lease_duration(Duration::from_secs(2))
            .renew_interval(Duration::from_millis(500))
            .grace_period(Duration::from_millis(500))
            .instance_id(id)
            .build()?)
    };
    let a = candidate("a")?;
    let b = candidate("b")?;

    // `a` leads and writes with its token.
    a.start().await?;
    let token_a = a.leadership().await?.token();
    println!(
        "a leads with fencing token {token_a}; its write: {}",
        verdict(write(token_a).await?)
    );

    // `a`'s term ends while `a` still holds its token: here it stops, which releases the
    // lease; a paused process is in the same place when it resumes. `b` takes over with a
    // larger token, and writes.
    a.stop().await?;
    b.start().await?;
    let token_b = b.leadership().await?.token();
    println!(
        "b leads with fencing token {token_b}; its write: {}",
        verdict(write(token_b).await?)
    );

    // `a` writes again with its old token, as a leader that resumed from a pause would before
    // it looked at the clock: the resource refuses it.
    let stale = write(token_a).await?;
    let (value, highest): (i64, i64) = sqlx::query_as(sql(
        "SELECT value, fencing_token FROM {table} WHERE name = 'nightly'",
    ))
    .fetch_one(&pool)
    .await?;
    println!(
        "a, whose term has ended, writes with token {token_a}: {} (the table has accepted token {highest}; value {value})",
        verdict(stale)
    );

    b.stop().await?;
    if stale {
        return Err("the stale leader's write was accepted".into());
    }
    Ok(())
}
