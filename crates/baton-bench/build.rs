//! Records the versions of the store client crates this build links (from the workspace's
//! `Cargo.lock`), so the report can name them.

use std::path::Path;

fn main() {
    let lock = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.lock");
    println!("cargo::rerun-if-changed={}", lock.display());
    let text = std::fs::read_to_string(&lock).unwrap_or_default();
    for (krate, var) in [
        ("redis", "BENCH_REDIS_RS_VERSION"),
        ("rusqlite", "BENCH_RUSQLITE_VERSION"),
        ("tokio", "BENCH_TOKIO_VERSION"),
        ("sqlx", "BENCH_SQLX_VERSION"),
        ("tonic", "BENCH_TONIC_VERSION"),
        ("kube-client", "BENCH_KUBE_VERSION"),
    ] {
        println!("cargo::rustc-env={var}={}", locked_version(&text, krate));
    }
}

/// The version of `krate` in a `Cargo.lock`, or `unknown`.
fn locked_version(lock: &str, krate: &str) -> String {
    let name = format!("name = \"{krate}\"");
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == name
            && let Some(version) = lines
                .next()
                .and_then(|l| l.trim().strip_prefix("version = \""))
                .and_then(|v| v.strip_suffix('"'))
        {
            return version.to_owned();
        }
    }
    "unknown".to_owned()
}
