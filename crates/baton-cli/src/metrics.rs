//! `--metrics-addr ADDR`: `/metrics` in the Prometheus text format and `/healthz`.
//!
//! The library counts through the `metrics` facade (`baton_is_leader`,
//! `baton_transitions_total{reason}`, `baton_renew_duration_seconds`,
//! `baton_store_errors_total{kind}`); only this binary installs an exporter. Two gauges are
//! computed at scrape time from the election: `baton_time_to_deadline_seconds` (0 when not
//! leading) and `baton_leaderless_seconds` (how long no leader has been known; 0 while one
//! is).
//!
//! `/healthz` answers 200 while [`LeaderElection::health`] is healthy and 503 otherwise: a
//! leader whose renewal is overdue, or that is past its deadline without stepping down (a
//! wedged process), or a campaign that stopped moving.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use baton::LeaderElection;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::failure::Failure;

/// Buckets of the renewal latency histogram, in seconds: loopback Redis to a slow SQL server.
const RENEW_BUCKETS: &[f64] = &[
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// The exporter of this process, once `--metrics-addr` started it.
static EXPORTER: OnceLock<Exporter> = OnceLock::new();

/// Serve `/metrics` and `/healthz` on `addr` for the rest of the process.
pub fn start(addr: SocketAddr) -> Result<(), Failure> {
    let exporter = Exporter::start(addr)?;
    let _ = EXPORTER.set(exporter);
    Ok(())
}

/// Report on `election` at `/metrics` and `/healthz`, if the exporter runs. Must be called
/// inside the runtime.
pub fn watch(election: &LeaderElection) {
    if let Some(exporter) = EXPORTER.get() {
        exporter.watch(election);
    }
}

/// The exporter: serves on its own thread, so a busy runtime never delays a scrape.
#[derive(Clone)]
struct Exporter {
    election: Arc<Mutex<Option<Watched>>>,
}

struct Watched {
    election: LeaderElection,
    leaderless_since: Arc<Mutex<Option<Instant>>>,
}

impl Exporter {
    /// Install the Prometheus recorder and start serving on `addr`.
    fn start(addr: SocketAddr) -> Result<Exporter, Failure> {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full("baton_renew_duration_seconds".into()),
                RENEW_BUCKETS,
            )
            .map_err(|e| Failure::new(format!("cannot set up metrics: {e}")))?
            .build_recorder();
        let handle = recorder.handle();
        metrics::set_global_recorder(recorder)
            .map_err(|e| Failure::new(format!("cannot set up metrics: {e}")))?;
        let server = tiny_http::Server::http(addr).map_err(|e| {
            Failure::new(format!(
                "cannot serve metrics on {addr}: {e}; choose a free address for --metrics-addr, e.g. 127.0.0.1:9464"
            ))
        })?;
        let exporter = Exporter {
            election: Arc::default(),
        };
        let serving = exporter.clone();
        std::thread::Builder::new()
            .name("baton-metrics".into())
            .spawn(move || serving.serve(&server, &handle))
            .map_err(|e| Failure::new(format!("cannot start the metrics thread: {e}")))?;
        Ok(exporter)
    }

    /// Report on `election` from now on. Must be called inside the runtime.
    fn watch(&self, election: &LeaderElection) {
        let leaderless_since = Arc::new(Mutex::new(Some(Instant::now())));
        let mut state = election.state();
        let since = leaderless_since.clone();
        tokio::spawn(async move {
            loop {
                let has_leader = state.borrow_and_update().leader.is_some();
                {
                    let mut since = since.lock().unwrap_or_else(|e| e.into_inner());
                    match (has_leader, *since) {
                        (true, _) => *since = None,
                        (false, None) => *since = Some(Instant::now()),
                        (false, Some(_)) => {}
                    }
                }
                if state.changed().await.is_err() {
                    return;
                }
            }
        });
        *self.election.lock().unwrap_or_else(|e| e.into_inner()) = Some(Watched {
            election: election.clone(),
            leaderless_since,
        });
    }

    fn serve(&self, server: &tiny_http::Server, handle: &PrometheusHandle) {
        for request in server.incoming_requests() {
            let (status, body, content_type) = match request.url() {
                "/metrics" => {
                    self.update_gauges();
                    (
                        200,
                        handle.render(),
                        "text/plain; version=0.0.4; charset=utf-8",
                    )
                }
                "/healthz" => {
                    let (healthy, detail) = self.health();
                    let status = if healthy { 200 } else { 503 };
                    let word = if healthy { "ok" } else { "unhealthy" };
                    (
                        status,
                        format!("{word}: {detail}\n"),
                        "text/plain; charset=utf-8",
                    )
                }
                _ => (
                    404,
                    "not found: try /metrics or /healthz\n".to_owned(),
                    "text/plain",
                ),
            };
            let header =
                tiny_http::Header::from_bytes(&b"Content-Type"[..], content_type.as_bytes())
                    .expect("a static header is valid");
            let response = tiny_http::Response::from_string(body)
                .with_status_code(status)
                .with_header(header);
            let _ = request.respond(response);
        }
    }

    fn health(&self) -> (bool, String) {
        match &*self.election.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(w) => {
                let h = w.election.health();
                (h.healthy, h.detail)
            }
            None => (true, "no election in this command".to_owned()),
        }
    }

    fn update_gauges(&self) {
        let guard = self.election.lock().unwrap_or_else(|e| e.into_inner());
        let Some(w) = &*guard else { return };
        let key = w.election.key().to_owned();
        let to_deadline = w.election.time_to_deadline().unwrap_or(Duration::ZERO);
        metrics::gauge!("baton_time_to_deadline_seconds", "key" => key.clone())
            .set(to_deadline.as_secs_f64());
        let leaderless = w
            .leaderless_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map_or(Duration::ZERO, |since| since.elapsed());
        metrics::gauge!("baton_leaderless_seconds", "key" => key).set(leaderless.as_secs_f64());
    }
}
