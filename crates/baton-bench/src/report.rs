//! Statistics, the run's context (machine, versions, command, date) and the marked sections of
//! `docs/BENCHMARKS.md`.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// Latency samples, sorted.
#[derive(Debug, Clone)]
pub struct Samples(Vec<Duration>);

impl Samples {
    pub fn new(mut samples: Vec<Duration>) -> Samples {
        assert!(!samples.is_empty(), "no samples");
        samples.sort_unstable();
        Samples(samples)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Nearest-rank percentile.
    pub fn p(&self, percent: f64) -> Duration {
        let rank = ((percent / 100.0) * self.0.len() as f64).ceil() as usize;
        self.0[rank.clamp(1, self.0.len()) - 1]
    }

    /// The samples above `limit`, in order.
    pub fn above(&self, limit: Duration) -> &[Duration] {
        &self.0[self.0.partition_point(|d| *d <= limit)..]
    }

    pub fn min(&self) -> Duration {
        self.0[0]
    }

    pub fn max(&self) -> Duration {
        self.0[self.0.len() - 1]
    }

    pub fn mean(&self) -> Duration {
        self.0.iter().sum::<Duration>() / self.0.len() as u32
    }
}

/// `1.234 ms`, with three decimals (microseconds).
pub fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

/// A target duration, without trailing zeros: `0.25 ms`, `1 ms`, `20 ms`.
pub fn target_ms(d: Duration) -> String {
    let s = format!("{:.3}", d.as_secs_f64() * 1e3);
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s} ms")
}

/// `**met**` or `**NOT met** (by ...)`.
pub fn verdict(met: bool, miss: impl FnOnce() -> String) -> String {
    if met {
        "**met**".to_owned()
    } else {
        format!("**NOT met** ({})", miss())
    }
}

/// One line of the summary table: a figure against its target.
#[derive(Debug, Clone)]
pub struct Row {
    pub figure: String,
    pub measured: String,
    pub target: String,
    pub met: bool,
}

impl Row {
    pub fn new(
        figure: impl Into<String>,
        measured: impl Into<String>,
        target: impl Into<String>,
        met: bool,
    ) -> Row {
        Row {
            figure: figure.into(),
            measured: measured.into(),
            target: target.into(),
            met,
        }
    }
}

/// What every section records besides its figures.
#[derive(Debug, Clone)]
pub struct Context {
    /// The exact command line that produced the run.
    pub command: String,
    /// `release` or `debug`.
    pub profile: &'static str,
    /// `redis-server --version`.
    pub redis_server: String,
}

impl Context {
    pub fn new(command: String) -> Context {
        let redis_server = std::process::Command::new("redis-server")
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_else(|e| format!("unknown ({e})"));
        Context {
            command,
            profile: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
            redis_server,
        }
    }

    /// The closing lines of a section: command, versions, date, machine. `stores` names the
    /// stores the section measured (`memory`, `sqlite`, `redis`).
    pub fn footer(&self, stores: &[&str]) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "- Command: `{}` ({} build of `baton-bench`, crates/baton-bench)",
            self.command, self.profile
        );
        let mut versions = vec![format!(
            "baton {} (tokio {})",
            env!("CARGO_PKG_VERSION"),
            env!("BENCH_TOKIO_VERSION")
        )];
        for store in stores {
            match *store {
                "memory" => versions.push("memory store (in process)".to_owned()),
                "sqlite" => versions.push(format!(
                    "SQLite {} via rusqlite {} (bundled), a temp file",
                    rusqlite::version(),
                    env!("BENCH_RUSQLITE_VERSION")
                )),
                "redis" => versions.push(format!(
                    "redis-rs {}, RESP3; server: `{}` (spawned by the bench on a free loopback port, no persistence)",
                    env!("BENCH_REDIS_RS_VERSION"),
                    self.redis_server
                )),
                "postgres" => versions.push(
                    "PostgreSQL via sqlx (the machine's server on 127.0.0.1:5432; its version in the PostgreSQL section)".to_owned(),
                ),
                "mysql" => versions.push(
                    "MySQL/MariaDB via sqlx (the machine's server on 127.0.0.1:3306; its version in the MySQL/MariaDB section)".to_owned(),
                ),
                "etcd" => versions.push(
                    "etcd via Baton's generated client on tonic (spawned by the bench on a free loopback port; its version in the etcd section)".to_owned(),
                ),
                "kubernetes" => versions.push(format!(
                    "Kubernetes via kube {} against a fake API server (`baton_testkit::fake_k8s`, in the bench's process; not a real one)",
                    env!("BENCH_KUBE_VERSION")
                )),
                "consul" => versions.push(
                    "Consul against a fake agent (`baton_testkit::fake_consul`, in the bench's process; not a real one)".to_owned(),
                ),
                other => versions.push(other.to_owned()),
            }
        }
        let _ = writeln!(out, "- Versions: {}", versions.join("; "));
        let _ = writeln!(
            out,
            "- Date: {}",
            humantime::format_rfc3339_seconds(SystemTime::now())
        );
        let _ = writeln!(out, "- Machine: {}", machine());
        out
    }
}

/// Cores, CPU model, kernel and load average (the machine is shared: the load says how much).
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|rest| rest.split_once(':'))
        .map_or("unknown CPU".to_owned(), |(_, m)| m.trim().to_owned());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!(
        "{cpus} CPUs (nproc), {model}, Linux {}, load average {} (1, 5, 15 min) when the section ended",
        kernel.trim(),
        load.join(" ")
    )
}

fn markers(name: &str) -> (String, String) {
    (
        format!(
            "<!-- baton-bench {name}: begin (written by scripts/bench; do not edit by hand) -->"
        ),
        format!("<!-- baton-bench {name}: end -->"),
    )
}

/// Replace the text between the markers of section `name`, or append a marked section
/// (creating the file with a title if needed). Every other section is left alone.
pub fn write_section(path: &Path, name: &str, body: &str) -> Result<(), String> {
    let (begin_marker, end_marker) = markers(name);
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let section = format!("{begin_marker}\n{}\n{end_marker}\n", body.trim_end());
    let new = match (old.find(&begin_marker), old.find(&end_marker)) {
        (Some(begin), Some(end)) if begin < end => {
            let after = old[end + end_marker.len()..].trim_start_matches('\n');
            let sep = if after.is_empty() { "" } else { "\n" };
            format!("{}{section}{sep}{after}", &old[..begin])
        }
        _ if old.trim().is_empty() => format!(
            "# Benchmarks\n\nNumbers in this file are written by the benchmark runs themselves; \
             never edit them by hand.\n\n{section}"
        ),
        _ => format!("{}\n\n{section}", old.trim_end()),
    };
    std::fs::write(path, new).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// A store's name as the report prints it (`postgres` → `PostgreSQL`).
pub fn display_name(store: &str) -> &'static str {
    match store {
        "memory" => "memory",
        "sqlite" => "SQLite",
        "redis" => "Redis",
        "postgres" => "PostgreSQL",
        "mysql" => "MySQL/MariaDB",
        "etcd" => "etcd",
        "kubernetes" => "Kubernetes (fake API server)",
        "consul" => "Consul (fake agent)",
        _ => "?",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let s = Samples::new((1..=100).rev().map(Duration::from_millis).collect());
        assert_eq!(s.p(50.0), Duration::from_millis(50));
        assert_eq!(s.p(99.0), Duration::from_millis(99));
        assert_eq!(s.max(), Duration::from_millis(100));
        assert_eq!(s.min(), Duration::from_millis(1));
    }

    #[test]
    fn targets_drop_trailing_zeros() {
        assert_eq!(target_ms(Duration::from_micros(250)), "0.25 ms");
        assert_eq!(target_ms(Duration::from_millis(20)), "20 ms");
    }

    #[test]
    fn sections_are_replaced_in_place() {
        let dir = std::env::temp_dir().join(format!("baton-bench-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("B.md");
        std::fs::write(
            &path,
            "# T\n\nintro\n\n<!-- other: begin -->\nkeep\n<!-- other: end -->\n",
        )
        .unwrap();
        write_section(&path, "a", "first").unwrap();
        write_section(&path, "b", "second").unwrap();
        write_section(&path, "a", "third").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("keep"), "{text}");
        assert!(text.contains("third") && !text.contains("first"), "{text}");
        assert!(
            text.find("third").unwrap() < text.find("second").unwrap(),
            "{text}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
