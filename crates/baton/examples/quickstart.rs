//! The README's API example: the seed's registration and leader work pattern, in Rust.
//!
//! Runs with no setup on the in-process memory store: `cargo run -p baton-election --example quickstart`.
//! For leaders across processes on one machine, open `baton::store::sqlite::SqliteStore`
//! instead (feature `sqlite`); `baton::connect::store_from_url` picks a store from a URL.

use std::time::Duration;

use baton::{LeaderElection, MemoryStore};

#[tokio::main]
async fn main() -> baton::Result<()> {
    // 1. The store the candidates share (the seed registers a Redis connection here).
    let store = MemoryStore::new();

    // 2. The election, with the seed's options.
    let election = LeaderElection::builder(store, "myapp:leader")
        .lease_duration(Duration::from_secs(30))
        .renew_interval(Duration::from_secs(10))
        .grace_period(Duration::from_secs(15))
        .instance_id("instance-1")
        .build()?;

    // 3. Events arrive on a channel, never on the renewal path: a slow handler cannot make
    //    the leader miss a renewal.
    let mut events = election.subscribe();
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            println!("event: {event:?}");
        }
    });

    // 4. Start; returns once the first attempt has an outcome.
    election.start().await?;
    println!(
        "is leader: {}, current leader: {:?}",
        election.is_leader(),
        election.current_leader_id()
    );

    // 5. Leader-only work. It waits for leadership, and is cancelled the moment leadership
    //    ends, no later than the local deadline. Pass the fencing token to every resource
    //    you write, so a resource can reject a stale leader.
    let batches = election
        .run_while_leader(|scope| async move {
            let mut done = 0;
            for batch in 1..=3 {
                if !scope.is_current() {
                    break;
                }
                println!("batch {batch} with fencing token {}", scope.token());
                tokio::time::sleep(Duration::from_millis(100)).await;
                done += 1;
            }
            done
        })
        .await?;
    println!("processed {batches} batches");

    // 6. Graceful shutdown: release the lease so another instance takes over at once.
    election.stop().await?;
    Ok(())
}
