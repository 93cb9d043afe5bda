//! `baton-protogen [DIR]`: write the etcd store's generated gRPC client into DIR (by default
//! `crates/baton/src/store/etcd/pb`), replacing the `.rs` files there. `scripts/regen-etcd-proto`
//! runs it.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let out = std::env::args_os()
        .nth(1)
        .map_or_else(baton_protogen::committed_dir, PathBuf::from);
    match run(&out) {
        Ok(files) => {
            for file in files {
                println!("{}", out.join(file).display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("baton-protogen: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(out: &std::path::Path) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    std::fs::create_dir_all(out)?;
    // Files of packages no longer generated must not linger.
    for entry in std::fs::read_dir(out)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "rs") {
            std::fs::remove_file(path)?;
        }
    }
    baton_protogen::generate(out)
}
