//! The committed etcd client (`crates/baton/src/store/etcd/pb/`) is what the `.proto` files in
//! `crates/baton-protogen/proto` give today.

use std::collections::BTreeMap;
use std::path::Path;

/// The `.rs` files of a directory, by name.
fn rust_files(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "rs"))
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&path).unwrap())
        })
        .collect()
}

#[test]
fn the_committed_etcd_client_matches_the_proto_files() {
    let scratch = std::env::temp_dir().join(format!(
        "baton-protogen-{}-{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&scratch).unwrap();
    let written = baton_protogen::generate(&scratch);
    let fresh = rust_files(&scratch);
    let _ = std::fs::remove_dir_all(&scratch);
    let written = written.expect("the .proto files compile");
    assert_eq!(written, fresh.keys().cloned().collect::<Vec<_>>());

    let committed = rust_files(&baton_protogen::committed_dir());
    let mut stale = Vec::new();
    for name in fresh.keys().chain(committed.keys()) {
        if fresh.get(name) != committed.get(name) && !stale.contains(name) {
            stale.push(name.clone());
        }
    }
    assert!(
        stale.is_empty(),
        "crates/baton/src/store/etcd/pb is out of date with crates/baton-protogen/proto \
         ({} differ): run scripts/regen-etcd-proto and commit the result",
        stale.join(", ")
    );
}
