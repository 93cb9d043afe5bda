//! The fake's storage: every Lease, one global resourceVersion counter, and a bounded history
//! of events for watches (the watch cache's role in the real server).

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// A watch event's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// `ADDED`
    Added,
    /// `MODIFIED`
    Modified,
    /// `DELETED`
    Deleted,
}

/// One change, as the history keeps it and watchers receive it.
#[derive(Debug, Clone)]
pub struct Event {
    /// What happened.
    pub kind: EventType,
    /// The resourceVersion of the change.
    pub rv: u64,
    /// The object after the change; for a delete, the last state with the delete's
    /// resourceVersion (etcd3's watcher does the same).
    pub object: Value,
    /// The object before the change, for label-selector transitions.
    pub prev: Option<Value>,
}

/// `(namespace, name)`.
pub type Key = (String, String);

/// Everything the fake stores.
#[derive(Debug)]
pub struct Store {
    /// Every Lease, with `kind` and `apiVersion`.
    pub objects: BTreeMap<Key, Value>,
    /// The last resourceVersion handed out.
    pub rv: u64,
    /// The newest events, oldest first, at most `capacity`.
    pub history: VecDeque<Event>,
    /// A watch from a resourceVersion below this is too old (the watch cache's `oldest - 1`).
    pub floor: u64,
    capacity: usize,
    state_file: Option<PathBuf>,
}

impl Store {
    /// An empty store, or the one saved in `state_file`. History starts empty: a watch from a
    /// resourceVersion before the start is too old, as after a real API server's restart.
    pub fn open(state_file: Option<PathBuf>, capacity: usize) -> std::io::Result<Store> {
        let mut store = Store {
            objects: BTreeMap::new(),
            rv: 1,
            history: VecDeque::new(),
            floor: 1,
            capacity: capacity.max(1),
            state_file,
        };
        if let Some(path) = &store.state_file
            && path.exists()
        {
            let saved: Value = serde_json::from_slice(&std::fs::read(path)?)?;
            store.rv = saved["resourceVersion"].as_u64().unwrap_or(1);
            for item in saved["items"].as_array().into_iter().flatten() {
                let ns = item["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned();
                let name = item["metadata"]["name"].as_str().unwrap_or("").to_owned();
                store.objects.insert((ns, name), item.clone());
            }
            store.floor = store.rv;
        }
        Ok(store)
    }

    /// The next resourceVersion.
    pub fn bump(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    /// Record an event in the history (dropping the oldest beyond capacity) and save the state.
    pub fn record(&mut self, event: Event) {
        if self.history.len() >= self.capacity
            && let Some(dropped) = self.history.pop_front()
        {
            self.floor = dropped.rv;
        }
        self.history.push_back(event);
        if let Err(e) = self.save() {
            eprintln!("baton-fake-k8s: cannot save the state: {e}");
        }
    }

    /// Write every object and the counter to the state file: a temporary file, then a rename,
    /// so a killed fake leaves the old state or the new one.
    fn save(&self) -> std::io::Result<()> {
        let Some(path) = &self.state_file else {
            return Ok(());
        };
        let items: Vec<&Value> = self.objects.values().collect();
        let body = json!({ "resourceVersion": self.rv, "items": items });
        let tmp = tmp_path(path);
        std::fs::write(&tmp, serde_json::to_vec(&body)?)?;
        std::fs::rename(&tmp, path)
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}
