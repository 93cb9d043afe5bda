//! Election options, with the seed's names and defaults, and the timing derived from them.

use std::time::Duration;

use crate::{Error, Result};

/// Options of one election. The names and defaults are the seed library's.
///
/// | option | default | meaning |
/// |---|---|---|
/// | `lease_duration` | 15 s | how long a lease lasts in the store without renewal |
/// | `renew_interval` | 5 s | how often the leader renews |
/// | `grace_period` | 5 s | how long after a missed renewal the leader keeps trying before it steps down |
/// | `instance_id` | `<hostname>-<pid>` | this candidate's id, as stored in the lease |
///
/// Validation requires every duration to be greater than zero and
/// `renew_interval + grace_period + skew_margin < lease_duration`, where the skew margin is
/// 2 % of the lease plus 5 ms (see [`ElectionOptions::skew_margin`]). The leader therefore
/// always steps down before the lease can expire in the store.
///
/// Start from [`ElectionOptions::default`] (or [`ElectionOptions::new`]) and set what you
/// need with the `with_*` methods or the public fields; options may be added in minor
/// releases, each with a default, so the struct cannot be written as a literal outside Baton.
///
/// ```
/// use std::time::Duration;
/// let options = baton::ElectionOptions::new()
///     .with_lease_duration(Duration::from_secs(30))
///     .with_renew_interval(Duration::from_secs(10))
///     .with_grace_period(Duration::from_secs(15))
///     .with_instance_id("instance-1");
/// options.validate().unwrap();
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ElectionOptions {
    /// How long a lease lasts in the store without renewal.
    pub lease_duration: Duration,
    /// How often the leader renews its lease.
    pub renew_interval: Duration,
    /// How long past a missed renewal the leader keeps trying before it steps down.
    pub grace_period: Duration,
    /// This candidate's id. `None` means `<hostname>-<pid>`, so two processes on one host never
    /// share an id.
    pub instance_id: Option<String>,
}

impl Default for ElectionOptions {
    fn default() -> Self {
        ElectionOptions {
            lease_duration: Duration::from_secs(15),
            renew_interval: Duration::from_secs(5),
            grace_period: Duration::from_secs(5),
            instance_id: None,
        }
    }
}

/// Rate at which a local clock may run fast relative to the store's clock (1 %).
const DRIFT_PERCENT: u32 = 1;
/// Fixed part of the safety margin, for scheduling and one-way network delay.
const MARGIN_FIXED: Duration = Duration::from_millis(5);

impl ElectionOptions {
    /// The seed's defaults: lease 15 s, renew 5 s, grace 5 s, instance id `<hostname>-<pid>`.
    pub fn new() -> Self {
        Self::default()
    }

    /// With `lease_duration` set.
    #[must_use]
    pub fn with_lease_duration(mut self, d: Duration) -> Self {
        self.lease_duration = d;
        self
    }

    /// With `renew_interval` set.
    #[must_use]
    pub fn with_renew_interval(mut self, d: Duration) -> Self {
        self.renew_interval = d;
        self
    }

    /// With `grace_period` set.
    #[must_use]
    pub fn with_grace_period(mut self, d: Duration) -> Self {
        self.grace_period = d;
        self
    }

    /// With `instance_id` set.
    #[must_use]
    pub fn with_instance_id(mut self, id: impl Into<String>) -> Self {
        self.instance_id = Some(id.into());
        self
    }

    /// The default instance id: `<hostname>-<pid>`.
    pub fn default_instance_id() -> String {
        let host = gethostname::gethostname();
        format!("{}-{}", host.to_string_lossy(), std::process::id())
    }

    /// The instance id in effect: the configured one, or the default.
    pub fn effective_instance_id(&self) -> String {
        self.instance_id
            .clone()
            .unwrap_or_else(Self::default_instance_id)
    }

    /// The safety margin subtracted from every lease: 1 % of the lease plus 5 ms.
    pub fn safety_margin(&self) -> Duration {
        self.lease_duration / 100 + MARGIN_FIXED
    }

    /// Drift allowance plus safety margin: 2 % of the lease plus 5 ms. It scales with the lease,
    /// so sub-second leases stay valid.
    pub fn skew_margin(&self) -> Duration {
        self.lease_duration * DRIFT_PERCENT / 100 + self.safety_margin()
    }

    /// How long after sending a successful acquire or renew this candidate may consider itself
    /// the leader: `lease_duration * (1 - drift) - safety_margin`.
    pub fn leader_validity(&self) -> Duration {
        let drifted = self.lease_duration - self.lease_duration * DRIFT_PERCENT / 100;
        drifted.saturating_sub(self.safety_margin())
    }

    /// How long a follower whose change stream is complete
    /// ([`Candidacy::watch_is_complete`](crate::Candidacy::watch_is_complete), as on etcd) waits
    /// without news before it looks at the store anyway, in case an event was lost:
    /// [`COMPLETE_WATCH_RECHECK_LEASES`] leases. Followers on other stores look when the lease
    /// they read runs out.
    pub fn complete_watch_recheck(&self) -> Duration {
        self.lease_duration * COMPLETE_WATCH_RECHECK_LEASES
    }

    /// The time a leader's work has to stop in when the leader steps down because its
    /// renewals failed, before its lease can expire in the store: `leader_validity -
    /// (renew_interval + grace_period)`.
    ///
    /// The leader steps down `renew_interval + grace_period` after its last successful renewal
    /// was sent, and that renewal holds for [`leader_validity`](Self::leader_validity) from the
    /// same instant; the store keeps the lease longer still. Work told to stop by
    /// [`Leadership::lost`](crate::Leadership::lost) must be gone within this, which is what
    /// `baton run` checks its `--kill-after` against. Zero for options that do not
    /// [validate](Self::validate).
    ///
    /// ```
    /// use std::time::Duration;
    /// // 15 s lease: validity 14.695 s, minus renew 5 s and grace 5 s.
    /// let budget = baton::ElectionOptions::default().shutdown_budget();
    /// assert_eq!(budget, Duration::from_millis(4695));
    /// ```
    pub fn shutdown_budget(&self) -> Duration {
        crate::election::shutdown_budget(&self.timing())
    }

    /// Check the options; every problem is a [`Error::Config`] naming the fix.
    pub fn validate(&self) -> Result<()> {
        for (name, d) in [
            ("lease_duration", self.lease_duration),
            ("renew_interval", self.renew_interval),
            ("grace_period", self.grace_period),
        ] {
            if d.is_zero() {
                return Err(Error::Config(format!("{name} must be greater than 0")));
            }
        }
        if let Some(id) = &self.instance_id {
            if id.trim().is_empty() {
                return Err(Error::Config(
                    "instance_id must not be empty: leave it unset for <hostname>-<pid>".into(),
                ));
            }
            if has_control(id) {
                return Err(Error::Config(format!(
                    "instance_id {id:?} contains a control character: ids are printed one per line, in events, logs and `baton` output; use printable characters, e.g. worker-1"
                )));
            }
        }
        let needed = self.renew_interval + self.grace_period + self.skew_margin();
        if needed >= self.lease_duration {
            return Err(Error::Config(format!(
                "renew_interval ({}) + grace_period ({}) + skew margin ({}) must be less than lease_duration ({}): \
                 lengthen the lease or shorten renew/grace, e.g. lease 15s, renew 5s, grace 5s",
                fmt_duration(self.renew_interval),
                fmt_duration(self.grace_period),
                fmt_duration(self.skew_margin()),
                fmt_duration(self.lease_duration),
            )));
        }
        Ok(())
    }

    pub(crate) fn timing(&self) -> Timing {
        let renew = self.renew_interval;
        Timing {
            lease: self.lease_duration,
            renew,
            grace: self.grace_period,
            validity: self.leader_validity(),
            request_timeout: renew,
            renew_retry: (renew / 4).max(Duration::from_millis(1)),
            backoff_min: (renew / 10).clamp(Duration::from_millis(1), Duration::from_millis(100)),
            backoff_max: renew.min(Duration::from_secs(5)),
            jitter_max: self.lease_duration / 100 + Duration::from_millis(1),
            complete_watch_recheck: self.complete_watch_recheck(),
        }
    }
}

/// Durations the engine works with, derived once from validated options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timing {
    pub lease: Duration,
    pub renew: Duration,
    pub grace: Duration,
    /// Leader validity after a successful send (see [`ElectionOptions::leader_validity`]).
    pub validity: Duration,
    /// Timeout of a follower's store call.
    pub request_timeout: Duration,
    /// Delay between renewal attempts after a failed one.
    pub renew_retry: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Jitter added to a follower's wake-up at the holder's expiry.
    pub jitter_max: Duration,
    /// How long a follower whose change stream is complete
    /// ([`Candidacy::watch_is_complete`](crate::Candidacy::watch_is_complete)) waits before it
    /// looks at the store again without having been told of a change.
    pub complete_watch_recheck: Duration,
}

/// A follower whose change stream reports every release and expiry
/// ([`Candidacy::watch_is_complete`](crate::Candidacy::watch_is_complete)) still looks at the
/// store once every this many leases (plus jitter), in case an event was lost all the same
/// ([`ElectionOptions::complete_watch_recheck`]).
///
/// Public so that tools that predict an election's store traffic (Baton's benchmarks) read the
/// number the engine uses instead of a copy.
pub const COMPLETE_WATCH_RECHECK_LEASES: u32 = 20;

/// Check an election key: not empty, and without control characters (a line break, a tab, an
/// escape, ...), which would break the line-oriented output that shows keys (events, logs,
/// `baton`'s JSON lines and `status`). Every problem is an [`Error::Config`] naming the fix.
/// [`LeaderElectionBuilder::build`](crate::LeaderElectionBuilder::build) calls it.
///
/// ```
/// assert!(baton::validate_key("myapp:leader").is_ok());
/// assert!(baton::validate_key("a\nb").is_err());
/// ```
pub fn validate_key(key: &str) -> Result<()> {
    if key.trim().is_empty() {
        return Err(Error::Config(
            "the election key must not be empty: pass a name such as \"myapp:leader\"".into(),
        ));
    }
    if has_control(key) {
        return Err(Error::Config(format!(
            "the election key {key:?} contains a control character: keys are printed one per line, in events, logs and `baton` output; use printable characters, e.g. myapp:leader"
        )));
    }
    Ok(())
}

/// Whether `text` holds a control character (Unicode category Cc: C0, DEL, C1).
pub(crate) fn has_control(text: &str) -> bool {
    text.chars().any(char::is_control)
}

/// Formats a duration the way the CLI parses them and Baton's errors print them: `1s 500ms`,
/// `250ms`, `15s`; durations that are not whole milliseconds in Rust's `Debug` form.
///
/// Public on purpose: applications that echo Baton's options (in logs, in a status page) can
/// print them the way `baton` does, and `humantime` parses the result back.
pub fn fmt_duration(d: Duration) -> String {
    humantime_like(d)
}

fn humantime_like(d: Duration) -> String {
    if d.is_zero() {
        return "0s".into();
    }
    let ms = d.as_millis();
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        return format!("{d:?}");
    }
    let (s, ms) = (ms / 1000, ms % 1000);
    match (s, ms) {
        (0, ms) => format!("{ms}ms"),
        (s, 0) => format!("{s}s"),
        (s, ms) => format!("{s}s {ms}ms"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(lease: u64, renew: u64, grace: u64) -> ElectionOptions {
        ElectionOptions {
            lease_duration: Duration::from_millis(lease),
            renew_interval: Duration::from_millis(renew),
            grace_period: Duration::from_millis(grace),
            instance_id: None,
        }
    }

    #[test]
    fn seed_defaults_are_valid() {
        let o = ElectionOptions::default();
        assert_eq!(o.lease_duration, Duration::from_secs(15));
        assert_eq!(o.renew_interval, Duration::from_secs(5));
        assert_eq!(o.grace_period, Duration::from_secs(5));
        o.validate().unwrap();
    }

    #[test]
    fn sub_second_and_short_leases_are_valid() {
        opts(500, 100, 100).validate().unwrap();
        opts(1500, 300, 300).validate().unwrap();
        opts(2000, 500, 500).validate().unwrap();
    }

    #[test]
    fn renew_plus_grace_must_fit_in_the_lease() {
        let e = opts(10_000, 5_000, 5_000).validate().unwrap_err();
        assert!(
            e.to_string().contains("must be less than lease_duration"),
            "{e}"
        );
        // Exactly at the margin is rejected too.
        let e = opts(1000, 490, 485).validate().unwrap_err();
        assert!(matches!(e, Error::Config(_)));
    }

    #[test]
    fn zero_durations_are_rejected() {
        for o in [opts(0, 1, 1), opts(1000, 0, 1), opts(1000, 1, 0)] {
            assert!(matches!(o.validate(), Err(Error::Config(_))));
        }
    }

    #[test]
    fn validity_is_lease_minus_drift_and_margin() {
        let o = ElectionOptions::default();
        // 15 s * 0.99 - (150 ms + 5 ms)
        assert_eq!(o.leader_validity(), Duration::from_millis(14_850 - 155));
        assert!(o.renew_interval + o.grace_period < o.leader_validity());
    }

    /// `--id $'a\nb'` broke `baton`'s line-oriented output: ids and keys with control
    /// characters are refused, and the error shows them escaped, on one line.
    #[test]
    fn ids_and_keys_with_control_characters_are_rejected() {
        for bad in [
            "a\nb",
            "a\rb",
            "tab\there",
            "esc\u{1b}[31m",
            "nul\0",
            "del\u{7f}",
            "c1\u{85}",
        ] {
            let o = ElectionOptions {
                instance_id: Some(bad.into()),
                ..Default::default()
            };
            match o.validate() {
                Err(Error::Config(msg)) => {
                    assert!(msg.contains("instance_id") && !msg.contains('\n'), "{msg}")
                }
                other => panic!("{bad:?}: {other:?}"),
            }
            match validate_key(bad) {
                Err(Error::Config(msg)) => {
                    assert!(msg.contains("election key") && !msg.contains('\n'), "{msg}")
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        for good in ["worker-1", "myapp:leader", "ünïcode ✓", "with space"] {
            validate_key(good).unwrap();
            ElectionOptions {
                instance_id: Some(good.into()),
                ..Default::default()
            }
            .validate()
            .unwrap();
        }
    }

    #[test]
    fn empty_instance_id_is_rejected() {
        let o = ElectionOptions {
            instance_id: Some(" ".into()),
            ..Default::default()
        };
        assert!(matches!(o.validate(), Err(Error::Config(_))));
        assert!(ElectionOptions::default_instance_id().contains(&std::process::id().to_string()));
    }
}
