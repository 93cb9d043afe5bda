//! The one public error type.
//!
//! Every store maps its backend's failures into [`Error`]. The variants say what the engine may
//! assume: after [`Error::Unavailable`] nothing was applied, after [`Error::Indeterminate`] the
//! write may or may not have happened, so the engine assumes the worst for safety (it is not the
//! leader) and for liveness (it may still hold the lease, and must wait it out).

use std::fmt;

/// Result alias used throughout Baton.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Boxed source error of a backend.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in Baton.
///
/// Messages never contain secrets: stores redact passwords from URLs before building an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The store could not be reached or refused the request; nothing was applied.
    #[error("{store} store unavailable: {message}")]
    Unavailable {
        /// Which store (`"sqlite"`, `"redis"`, ...).
        store: &'static str,
        /// What failed, and where possible how to fix it.
        message: String,
        /// The backend's own error.
        #[source]
        source: Option<BoxError>,
    },
    /// The request was sent but its outcome is unknown (for example a timeout after sending).
    #[error("{store} store: outcome unknown: {message}")]
    Indeterminate {
        /// Which store.
        store: &'static str,
        /// What happened.
        message: String,
        /// The backend's own error.
        #[source]
        source: Option<BoxError>,
    },
    /// The options, URL or store setup are wrong. Retrying will not help.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The key holds data Baton did not write. Baton never overwrites it.
    #[error(
        "the key {key:?} holds data Baton did not write ({found}); Baton will not overwrite it: choose another key or remove that data"
    )]
    ForeignData {
        /// The key (or row, or file) in question.
        key: String,
        /// A description of what was found there.
        found: String,
    },
    /// A store call did not finish within the time the engine could give it.
    #[error("store call timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// The election was already started.
    #[error("the election is already started")]
    AlreadyStarted,
    /// The election is not running (never started, or stopped).
    #[error("the election is not running")]
    Stopped,
    /// [`LeaderElection::hand_over`](crate::LeaderElection::hand_over) was asked of a candidate
    /// that does not hold the lease (or is already handing over).
    #[error("this candidate does not lead, so it has nothing to hand over")]
    NotLeader,
    /// A handoff named a candidate that is not running: the store keeps presence records
    /// ([`LeaseStore::announce`](crate::LeaseStore::announce)) and `candidate` has none at the
    /// key. Nothing was written.
    #[error(
        "no live candidate {candidate:?} at this key (running: {}); check the id, or start that candidate first",
        if .live.is_empty() { "none that announce themselves".to_owned() } else { .live.join(", ") }
    )]
    NoSuchCandidate {
        /// The candidate asked for.
        candidate: String,
        /// The candidates that are running, by their presence records.
        live: Vec<String>,
    },
    /// [`LeaderElection::stop`](crate::LeaderElection::stop) stopped the election, but could
    /// not give the lease (or the candidate's place in the election) back to the store.
    /// Nothing is unsafe: this candidate no longer acts as leader. Followers take over when
    /// the lease expires in the store, within `expires_within`, instead of at once.
    #[error(
        "stopped, but the lease could not be released ({source}); followers take over when it expires in the store, within {}",
        crate::fmt_duration(*.expires_within)
    )]
    ReleaseFailed {
        /// At most how long until the store frees the lease by itself.
        expires_within: std::time::Duration,
        /// Why the release failed.
        #[source]
        source: Box<Error>,
    },
}

impl Error {
    /// An [`Error::Unavailable`] with a message and a source.
    pub fn unavailable(
        store: &'static str,
        message: impl fmt::Display,
        source: impl Into<BoxError>,
    ) -> Self {
        Error::Unavailable {
            store,
            message: message.to_string(),
            source: Some(source.into()),
        }
    }

    /// An [`Error::Indeterminate`] with a message and a source.
    pub fn indeterminate(
        store: &'static str,
        message: impl fmt::Display,
        source: impl Into<BoxError>,
    ) -> Self {
        Error::Indeterminate {
            store,
            message: message.to_string(),
            source: Some(source.into()),
        }
    }

    /// The same error again, for another caller of one failed store call (each renewal of a
    /// failed batch): same kind, store and message, with the backend's error folded into the
    /// message, since a source cannot be cloned.
    #[cfg_attr(
        not(any(
            feature = "redis",
            feature = "sqlite",
            feature = "postgres",
            feature = "mysql"
        )),
        allow(dead_code)
    )]
    pub(crate) fn again(&self) -> Error {
        fn with_source(message: &str, source: &Option<BoxError>) -> String {
            match source {
                Some(source) => format!("{message}: {source}"),
                None => message.to_owned(),
            }
        }
        match self {
            Error::Unavailable {
                store,
                message,
                source,
            } => Error::Unavailable {
                store,
                message: with_source(message, source),
                source: None,
            },
            Error::Indeterminate {
                store,
                message,
                source,
            } => Error::Indeterminate {
                store,
                message: with_source(message, source),
                source: None,
            },
            Error::Config(message) => Error::Config(message.clone()),
            Error::ForeignData { key, found } => Error::ForeignData {
                key: key.clone(),
                found: found.clone(),
            },
            Error::Timeout(d) => Error::Timeout(*d),
            other => Error::Indeterminate {
                store: "baton",
                message: other.to_string(),
                source: None,
            },
        }
    }

    /// True when retrying later can succeed (the store was unreachable, slow or ambiguous).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Unavailable { .. } | Error::Indeterminate { .. } | Error::Timeout(_)
        )
    }

    /// A short, stable name for the kind of error, used as a metrics label.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Unavailable { .. } => "unavailable",
            Error::Indeterminate { .. } => "indeterminate",
            Error::Config(_) => "config",
            Error::ForeignData { .. } => "foreign_data",
            Error::Timeout(_) => "timeout",
            Error::AlreadyStarted => "already_started",
            Error::Stopped => "stopped",
            Error::NotLeader => "not_leader",
            Error::NoSuchCandidate { .. } => "no_such_candidate",
            Error::ReleaseFailed { .. } => "release_failed",
        }
    }
}
