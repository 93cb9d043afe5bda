#![doc = include_str!("../README.md")]
//!
//! # The parts
//!
//! * [`LeaderElection`] is what applications hold: state, events, leadership scopes,
//!   start/stop. Its options ([`ElectionOptions`]) keep the names and defaults of the .NET
//!   library it mirrors.
//! * [`LeaseStore`] / [`Candidacy`] are the store contract, implemented once per backend in
//!   [`store`]; [`connect::store_from_url`] picks one from a URL.
//! * [`Error`] is the one error type: it says whether a store call was not applied, may have
//!   been applied, or cannot succeed until the configuration changes.
//!
//! The library never prints and never reads the environment. It logs with `tracing` and
//! counts with the `metrics` facade: `baton_is_leader`, `baton_transitions_total{reason}`,
//! `baton_renew_duration_seconds` and `baton_store_errors_total{kind}`.

#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod clock;
pub mod connect;
mod election;
mod error;
mod options;
pub mod store;

pub use clock::{Clock, boot_time};
pub use election::{
    ElectionState, Event, Events, Health, LeaderElection, LeaderElectionBuilder, Leadership,
    LossReason, Role, check_alive,
};
pub use error::{BoxError, Error, Result};
pub use options::{COMPLETE_WATCH_RECHECK_LEASES, ElectionOptions, fmt_duration, validate_key};
pub use store::memory::MemoryStore;
#[cfg(feature = "sqlite")]
pub use store::sqlite::SqliteStore;
pub use store::{
    Acquire, Candidacy, Change, Changes, FencingToken, HandoffMark, Lease, LeaseRecord, LeaseStore,
    PendingHandoff, Presence, Renew, StoreInfo,
};

/// Compile-time promises: the handles and every store can move between threads and tasks,
/// and be shared (`Arc`), for as long as the program runs.
const _: () = {
    const fn send_sync_static<T: Send + Sync + 'static>() {}
    send_sync_static::<LeaderElection>();
    send_sync_static::<LeaderElectionBuilder>();
    send_sync_static::<Leadership>();
    send_sync_static::<Events>();
    send_sync_static::<Error>();
    send_sync_static::<MemoryStore>();
    #[cfg(feature = "sqlite")]
    send_sync_static::<SqliteStore>();
    #[cfg(feature = "redis")]
    send_sync_static::<store::redis::RedisStore>();
    #[cfg(feature = "postgres")]
    send_sync_static::<store::sql::postgres::PostgresStore>();
    #[cfg(feature = "mysql")]
    send_sync_static::<store::sql::mysql::MysqlStore>();
    #[cfg(feature = "etcd")]
    send_sync_static::<store::etcd::EtcdStore>();
};
