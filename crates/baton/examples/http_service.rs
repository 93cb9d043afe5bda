//! An HTTP service with a leader-only background job. Run several copies: every copy serves
//! HTTP, the job runs in exactly one of them, and when that copy stops another takes the job
//! over at once.
//!
//! Needs no server: by default the copies elect through an SQLite file in the temp directory,
//! so copies on one machine elect among themselves. To elect across machines, point
//! `BATON_STORE` at a shared store and build with its feature, e.g.
//! `BATON_STORE=redis://127.0.0.1:6379` with `--features redis` (or `--all-features`).
//!
//! ```sh
//! cargo run -p baton-election --example http_service                 # listens on 127.0.0.1:3000
//! PORT=3001 cargo run -p baton-election --example http_service       # a second copy, in another terminal
//! curl -s localhost:3000/leader                             # who leads, with which fencing token
//! ```
//!
//! Environment: `BATON_STORE` (a store URL), `BATON_ID` (this copy's id; default
//! `<hostname>-<pid>`), `PORT` (default 3000; 0 picks a free one), `EXAMPLE_RUN_FOR` (stop by
//! itself after e.g. `2s`, as on Ctrl-C or SIGTERM; the tests use it).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use baton::{LeaderElection, Leadership};
use serde_json::{Value, json};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the HTTP handlers see.
#[derive(Clone)]
struct App {
    election: LeaderElection,
    /// How many times the leader-only job has run in this copy.
    job_runs: Arc<AtomicU64>,
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // 1. The store every copy shares, from the environment.
    let url = std::env::var("BATON_STORE").unwrap_or_else(|_| {
        let file = std::env::temp_dir().join("baton-http-service.db");
        format!("sqlite:{}", file.display())
    });
    let store = baton::connect::store_from_url(&url)?;

    // 2. The election. A stopped copy hands over at once; a crashed one within the lease.
    let mut builder = LeaderElection::builder_dyn(store, "http-service:leader")
        .lease_duration(Duration::from_secs(10))
        .renew_interval(Duration::from_secs(3))
        .grace_period(Duration::from_secs(3));
    if let Ok(id) = std::env::var("BATON_ID") {
        builder = builder.instance_id(id);
    }
    let election = builder.build()?;
    election.start().await?;

    // 3. The leader-only job. `run_while_leader` waits until this copy leads, runs the job,
    //    cancels it the moment leadership ends (no later than the local deadline), and runs
    //    it again if this copy leads again. It returns when the election stops.
    let app = App {
        election: election.clone(),
        job_runs: Arc::default(),
    };
    let job = tokio::spawn({
        let app = app.clone();
        async move {
            app.election
                .run_while_leader(|scope| leader_job(scope, Arc::clone(&app.job_runs)))
                .await
        }
    });

    // 4. HTTP, served by every copy, leader or not.
    let routes = Router::new()
        .route("/", get(leader))
        .route("/leader", get(leader))
        .with_state(app);
    let port: u16 = match std::env::var("PORT") {
        Ok(port) => port.parse()?,
        Err(_) => 3000,
    };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!(
        "listening on http://{} as {} (store {})",
        listener.local_addr()?,
        election.candidate_id(),
        baton::connect::redact(&url)
    );
    axum::serve(listener, routes)
        .with_graceful_shutdown(shutdown_signal())
        .await?;

    // 5. Graceful shutdown: stop the job and release the lease, so another copy takes over
    //    now rather than when the lease expires.
    election.stop().await?;
    let _ = job.await;
    println!("stopped");
    Ok(())
}

/// The job only the leader runs: here, a tick a second. Hand `scope.token()` to everything
/// the job writes, so a resource can refuse a leader whose term has ended (see the
/// `fencing_postgres` example).
async fn leader_job(scope: Leadership, job_runs: Arc<AtomicU64>) {
    loop {
        let run = job_runs.fetch_add(1, Ordering::Relaxed) + 1;
        println!("job run {run} with fencing token {}", scope.token());
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// `GET /leader`: this copy's view of the election.
async fn leader(State(app): State<App>) -> Json<Value> {
    let election = &app.election;
    Json(json!({
        "candidate": election.candidate_id(),
        "is_leader": election.is_leader(),
        "leader": election.current_leader_id(),
        "token": election.fencing_token().map(|t| t.get()),
        "job_runs": app.job_runs.load(Ordering::Relaxed),
    }))
}

/// Ctrl-C, SIGTERM, or the end of `EXAMPLE_RUN_FOR`.
async fn shutdown_signal() {
    let run_for = std::env::var("EXAMPLE_RUN_FOR")
        .ok()
        .and_then(|d| humantime::parse_duration(&d).ok());
    let deadline = async {
        match run_for {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
        () = deadline => {}
    }
}
