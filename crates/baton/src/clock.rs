//! The one clock the engine reads.
//!
//! Leadership deadlines are instants on a monotonic clock that keeps counting while the machine
//! is suspended: on Linux that is `CLOCK_BOOTTIME`, so a laptop lid closed for an hour cannot
//! leave a process believing it still leads. Tests swap in [`Clock::tokio`], which follows
//! tokio's (pausable) time, so every timing rule can be driven deterministically.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A monotonic clock. [`Clock::now`] is the time elapsed since an arbitrary fixed origin.
#[derive(Clone)]
pub struct Clock(ClockKind);

#[derive(Clone)]
enum ClockKind {
    Boot,
    Tokio {
        origin: tokio::time::Instant,
        /// Time added by [`Clock::jump`], in nanoseconds: time that passed without timers
        /// seeing it, as during a suspend.
        jumped: Arc<AtomicU64>,
    },
}

impl Clock {
    /// The suspend-aware system clock (`CLOCK_BOOTTIME` on Linux, the monotonic clock
    /// elsewhere). The default.
    pub fn boot() -> Self {
        Clock(ClockKind::Boot)
    }

    /// A clock that follows tokio's time, which tests can pause and advance
    /// (`tokio::time::pause`, `advance`). Must be created inside a tokio runtime.
    pub fn tokio() -> Self {
        Clock(ClockKind::Tokio {
            origin: tokio::time::Instant::now(),
            jumped: Arc::new(AtomicU64::new(0)),
        })
    }

    /// **For tests.** Move a [`Clock::tokio`] clock forward by `d` without firing tokio's
    /// timers, as a machine suspend does to the boot clock. Clones see the jump. Has no effect
    /// on [`Clock::boot`].
    pub fn jump(&self, d: Duration) {
        if let ClockKind::Tokio { jumped, .. } = &self.0 {
            jumped.fetch_add(d.as_nanos() as u64, Ordering::AcqRel);
        }
    }

    /// Time since the clock's origin.
    pub fn now(&self) -> Duration {
        match &self.0 {
            ClockKind::Boot => boot_time(),
            ClockKind::Tokio { origin, jumped } => {
                origin.elapsed() + Duration::from_nanos(jumped.load(Ordering::Acquire))
            }
        }
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::boot()
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            ClockKind::Boot => f.write_str("Clock::boot"),
            ClockKind::Tokio { .. } => f.write_str("Clock::tokio"),
        }
    }
}

/// Time since boot, including time spent suspended, on Linux and Android; the plain monotonic
/// clock elsewhere.
pub fn boot_time() -> Duration {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let id = rustix::time::ClockId::Boottime;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let id = rustix::time::ClockId::Monotonic;
    let ts = rustix::time::clock_gettime(id);
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_clock_is_monotonic() {
        let c = Clock::boot();
        let a = c.now();
        let b = c.now();
        assert!(b >= a);
        assert!(a > Duration::ZERO);
    }
}
