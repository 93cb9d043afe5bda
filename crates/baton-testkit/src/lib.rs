//! Baton's test kit: the conformance suite every lease store must pass.
//!
//! Baton's election engine is written once against [`LeaseStore`](baton::LeaseStore) and
//! [`Candidacy`](baton::Candidacy), and trusts every store to keep the same rules. The
//! [`conformance`] module states those rules (`DESIGN.md` §2) as test functions, written once
//! and run against every store: the memory store, SQLite and every real backend. A new store
//! is accepted when it passes them.
//!
//! # What a passing store promises
//!
//! * A free key is acquired with the candidate's id, the key and a fencing token above 0, and
//!   `read` shows it with a TTL no longer than requested.
//! * Contention is a result, never an error: `Held` with the holder's id, token and remaining
//!   TTL. A second process with the *same* candidate id is contention too.
//! * Renew succeeds for the owning lease and extends it; a stale lease (released, expired, or
//!   a made-up token under the holder's id) gets `Lost` with the current record.
//! * Release by anyone but the owning lease is a no-op, and releasing twice is harmless.
//! * Expiry, judged by the store's clock in real time, frees the key for another candidate.
//! * Fencing tokens strictly increase with every acquisition of a key: after release, after
//!   expiry, on reacquire by the same candidate.
//! * Of sixteen candidates racing on separate store handles, exactly one wins.
//! * A store that says it can watch delivers a release to a subscribed follower within 2 s.
//! * Data Baton did not write gives [`Error::ForeignData`](baton::Error::ForeignData) and is
//!   left untouched.
//! * `read` of a never-used key is `None`; `leave` never disturbs the holder.
//!
//! Every assertion message says which of these rules broke.
//!
//! # Running the suite against a store
//!
//! Implement [`StoreFactory`](conformance::StoreFactory) for the store: how to open a handle
//! on the backend, its [`Capabilities`](conformance::Capabilities), and, if the backend can
//! hold data Baton did not write, a [`ForeignWriter`](conformance::ForeignWriter) that plants
//! some. Then expand one `#[test]` per case with [`conformance_tests!`], inside a module of its
//! own. The factory expression is evaluated afresh for every case, so each case can get its
//! own backend (a new temporary file, a new database):
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use async_trait::async_trait;
//! use baton::{LeaseStore, MemoryStore};
//! use baton_testkit::conformance::{self, StoreFactory};
//!
//! #[derive(Default)]
//! struct MemoryFactory(MemoryStore);
//!
//! #[async_trait]
//! impl StoreFactory for MemoryFactory {
//!     async fn store(&self) -> baton::Result<Arc<dyn LeaseStore>> {
//!         // Clones share the leases, as separate connections to one backend would.
//!         Ok(Arc::new(self.0.clone()))
//!     }
//! }
//!
//! // In a test file: `acquire_free_key`, `expiry_frees_key`, ... each a `#[test]`.
//! mod memory {
//!     baton_testkit::conformance_tests!(super::MemoryFactory::default());
//! }
//!
//! // Or everything in one go, naming every failing case at the end.
//! fn main() {
//!     conformance::block_on(conformance::run_all(&MemoryFactory::default()));
//! }
//! ```
//!
//! A store's own extra cases (its foreign-data shapes, its connection failures) live next to
//! the store's tests and may call the shared cases with other capabilities.
//!
//! The cases sleep in real time where expiry needs it (well under a second per case), so run
//! them on a runtime whose time is not paused; [`conformance::block_on`] builds one.
//!
//! # A fake Kubernetes API server
//!
//! [`fake_k8s`] is a *fake* API server, not Kubernetes: it serves only Leases
//! (`coordination.k8s.io/v1`) and enough discovery for `kubectl get leases`, in plain HTTP,
//! with the simplifications its module documentation lists. It runs in-process
//! ([`fake_k8s::FakeK8s`]) or as the `baton-fake-k8s` command
//! ([`fake_k8s::FakeK8sProcess`]), so any Kubernetes client can be pointed at it.

pub mod conformance;
pub mod etcd_cluster;
pub mod etcd_server;
pub mod fake_consul;
pub mod fake_k8s;
pub mod faulty;
pub mod mariadb_server;
pub mod proxy;
pub mod py_consul;
pub mod py_elector;
pub mod redis_ha;
pub mod servers;
pub mod tls;

/// Expands to one `#[test]` per conformance case, each running the case on a fresh runtime
/// with a fresh factory, plus a test that checks no case is missing. Invoke it inside a module
/// of its own (the tests are named after the cases) with an expression that builds a
/// [`StoreFactory`](conformance::StoreFactory); see the [crate docs](crate) for an example.
#[macro_export]
macro_rules! conformance_tests {
    (@cases $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                let factory = $factory;
                $crate::conformance::block_on($crate::conformance::$case(&factory));
            }
        )*

        #[test]
        fn every_conformance_case_is_listed() {
            assert_eq!(
                &[$(stringify!($case)),*][..],
                $crate::conformance::CASES,
                "conformance_tests! must expand every case in baton_testkit::conformance::CASES",
            );
        }
    };
    ($factory:expr $(,)?) => {
        $crate::conformance_tests!(@cases $factory;
            acquire_free_key,
            contention_returns_holder,
            renew_by_owner_extends,
            renew_by_stale_lease_is_lost,
            renewals_at_once_each_get_their_own_answer,
            release_only_by_owner,
            expiry_frees_key,
            tokens_strictly_increase,
            concurrent_acquirers_one_winner,
            watch_delivers_release,
            foreign_data_is_left_untouched,
            read_of_unused_key_is_none,
            leave_is_harmless,
            handoff_reserves_the_key_for_its_candidate,
            pending_handoff_shows_requests_and_marks,
            presence_records_live_for_their_ttl,
        );
    };
}
