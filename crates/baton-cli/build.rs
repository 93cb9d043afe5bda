//! Link `baton` as a position-dependent executable on Linux (`-no-pie`).
//!
//! A position-independent `baton` starts with tens of thousands of relative relocations (every
//! store's client is in it), which the dynamic loader applies before `main`, writing to every
//! page that holds them: about a third of the CPU time of a short command such as
//! `baton handoff` or `baton status`. Linked at a fixed address, there is nothing to apply.
//! The cost is that the executable's own code is not placed at a random address (shared
//! libraries, the stack and the heap still are); Go builds its binaries the same way by default
//! (etcd, kubectl, consul). docs/decisions.md D142.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if os == "linux" {
        println!("cargo:rustc-link-arg-bin=baton=-no-pie");
    }
}
