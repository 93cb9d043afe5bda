//! # Baton: leader election for Rust services
//!
//! Several copies of a service run; exactly one of them must do the singleton work. Baton
//! elects that one through a store the copies share, hands leadership over promptly when the
//! leader stops or dies, steps a leader down *on time* when the store misbehaves, and gives
//! every term a [`FencingToken`] so resources can reject a stale leader.
//!
//! * [`LeaderElection`] is what applications hold: state, events, leadership scopes,
//!   start/stop. Its options keep the names and defaults of the .NET library it mirrors.
//! * [`LeaseStore`] / [`Candidacy`] are the store contract, implemented once per backend:
//!   [`MemoryStore`] (in process), [`SqliteStore`] (one file shared
//!   by the processes of one machine; feature `sqlite`, on by default).
//!
//! The library never prints and never reads the environment. It logs with `tracing` and
//! counts with the `metrics` facade: `baton_is_leader`, `baton_transitions_total{reason}`,
//! `baton_renew_duration_seconds` and `baton_store_errors_total{kind}`.

#![warn(missing_docs)]

mod clock;
pub mod connect;
mod election;
mod error;
mod options;
pub mod store;

pub use clock::{Clock, boot_time};
pub use election::{
    ElectionState, Event, Events, Health, LeaderElection, LeaderElectionBuilder, Leadership,
    LossReason, Role,
};
pub use error::{BoxError, Error, Result};
pub use options::{ElectionOptions, fmt_duration, validate_key};
pub use store::memory::MemoryStore;
#[cfg(feature = "sqlite")]
pub use store::sqlite::SqliteStore;
pub use store::{
    Acquire, Candidacy, Change, Changes, FencingToken, Lease, LeaseRecord, LeaseStore, Renew,
    StoreInfo,
};
