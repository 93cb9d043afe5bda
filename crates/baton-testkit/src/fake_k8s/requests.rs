//! A request counter, **fake-only**: a real API server has nothing like it (its
//! `apiserver_request_total` metric counts by verb and resource, never by client). Benchmarks
//! read it to count what each client sends, e.g. that an idle follower sends nothing beyond its
//! watch.
//!
//! Each request is counted once, when it arrives (a watch when it is opened), under its
//! *client* and its *verb*:
//! * the client is the bearer token the request presents, when the fake runs without
//!   `--token` (it then lets any token in, so a token is only a label: give each client a
//!   kubeconfig with a token of its own); with `--token`, `authenticated` for the right token
//!   (never echoed) and `unauthenticated` for another; `anonymous` without credentials;
//! * the verb as the API server's `requestinfo.go` names it: `get`, `list`, `watch`,
//!   `create`, `update`, `patch`, `delete`, `deletecollection`, or `nonresource` for discovery,
//!   version and health paths (and unknown paths).
//!
//! The fake serves the counts as JSON at [`REQUESTS_PATH`] (`{"CLIENT":{"VERB":N,..},..}`), a
//! path of its own that no real API server serves, not counted, open to every caller; in
//! process, [`FakeK8s::requests`](super::FakeK8s::requests) reads them.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde_json::Value;

/// The fake-only debug path that serves the request counts.
pub const REQUESTS_PATH: &str = "/debug/baton-fake/requests";

/// The live counter the server updates.
#[derive(Debug, Default)]
pub(crate) struct RequestCounter(Mutex<Requests>);

impl RequestCounter {
    pub(crate) fn count(&self, client: String, verb: &str) {
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *counts
            .0
            .entry(client)
            .or_default()
            .entry(verb.to_owned())
            .or_default() += 1;
    }

    pub(crate) fn snapshot(&self) -> Requests {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Requests counted so far: client → verb → count.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requests(pub BTreeMap<String, BTreeMap<String, u64>>);

impl Requests {
    /// The counts as served at [`REQUESTS_PATH`].
    pub fn to_json(&self) -> Value {
        serde_json::to_value(&self.0).unwrap_or_default()
    }

    /// Parse what [`REQUESTS_PATH`] serves.
    ///
    /// # Errors
    ///
    /// When `value` is not `{"CLIENT":{"VERB":N}}`.
    pub fn from_json(value: &Value) -> Result<Requests, String> {
        serde_json::from_value(value.clone())
            .map(Requests)
            .map_err(|e| format!("not the fake's request counts: {e}"))
    }

    /// What was counted after `earlier` (a snapshot of the same fake).
    pub fn since(&self, earlier: &Requests) -> Requests {
        let mut out = BTreeMap::new();
        for (client, verbs) in &self.0 {
            let before = earlier.0.get(client);
            let diff: BTreeMap<String, u64> = verbs
                .iter()
                .map(|(verb, n)| {
                    let was = before.and_then(|b| b.get(verb)).copied().unwrap_or(0);
                    (verb.clone(), n.saturating_sub(was))
                })
                .filter(|(_, n)| *n > 0)
                .collect();
            if !diff.is_empty() {
                out.insert(client.clone(), diff);
            }
        }
        Requests(out)
    }

    /// `client`'s requests of `verb`.
    pub fn get(&self, client: &str, verb: &str) -> u64 {
        self.0
            .get(client)
            .and_then(|v| v.get(verb))
            .copied()
            .unwrap_or(0)
    }

    /// `client`'s requests of every verb but `watch`.
    pub fn beyond_watch(&self, client: &str) -> u64 {
        self.0.get(client).map_or(0, |verbs| {
            verbs
                .iter()
                .filter(|(verb, _)| verb.as_str() != "watch")
                .map(|(_, n)| n)
                .sum()
        })
    }

    /// `client`'s requests as `get 3, watch 1` (`none` for none).
    pub fn describe(&self, client: &str) -> String {
        match self.0.get(client) {
            Some(verbs) if !verbs.is_empty() => verbs
                .iter()
                .map(|(verb, n)| format!("{verb} {n}"))
                .collect::<Vec<_>>()
                .join(", "),
            _ => "none".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_client_and_verb_and_subtracts_snapshots() {
        let counter = RequestCounter::default();
        counter.count("a".into(), "get");
        counter.count("a".into(), "watch");
        let before = counter.snapshot();
        counter.count("a".into(), "get");
        counter.count("b".into(), "update");
        let after = counter.snapshot();
        let diff = after.since(&before);
        assert_eq!(diff.get("a", "get"), 1);
        assert_eq!(diff.get("a", "watch"), 0);
        assert_eq!(diff.beyond_watch("b"), 1);
        assert_eq!(diff.describe("a"), "get 1");
        assert_eq!(diff.describe("c"), "none");
        assert_eq!(Requests::from_json(&after.to_json()).unwrap(), after);
    }
}
