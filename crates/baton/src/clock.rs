//! The one clock the engine reads.
//!
//! Leadership deadlines are instants on a monotonic clock that keeps counting while the machine
//! is suspended: on Linux that is `CLOCK_BOOTTIME`, so a laptop lid closed for an hour cannot
//! leave a process believing it still leads. Tests swap in [`Clock::tokio`], which follows
//! tokio's (pausable) time, so every timing rule can be driven deterministically.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

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
        /// Woken by [`Clock::jump`].
        jump_signal: Arc<Notify>,
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
            jump_signal: Arc::new(Notify::new()),
        })
    }

    /// Move a [`Clock::tokio`] clock forward by `d` without firing tokio's timers, as a
    /// machine suspend does to the boot clock. Clones see the jump. Has no effect on
    /// [`Clock::boot`], so it cannot disturb a production election.
    ///
    /// Public on purpose, with [`Clock::tokio`]: applications test their own leader-only work
    /// under paused time, and a suspend (or a process paused past its deadline) is the case
    /// such tests most need to reach.
    pub fn jump(&self, d: Duration) {
        if let ClockKind::Tokio {
            jumped,
            jump_signal,
            ..
        } = &self.0
        {
            jumped.fetch_add(d.as_nanos() as u64, Ordering::AcqRel);
            jump_signal.notify_waiters();
        }
    }

    /// Time since the clock's origin.
    pub fn now(&self) -> Duration {
        match &self.0 {
            ClockKind::Boot => boot_time(),
            ClockKind::Tokio { origin, jumped, .. } => {
                origin.elapsed() + Duration::from_nanos(jumped.load(Ordering::Acquire))
            }
        }
    }

    /// Which clock this is, for sharing a driver among elections on the same clock: clones
    /// of one test clock are the same clock; every boot clock is.
    pub(crate) fn identity(&self) -> usize {
        match &self.0 {
            ClockKind::Boot => 0,
            ClockKind::Tokio { jump_signal, .. } => Arc::as_ptr(jump_signal) as usize,
        }
    }

    /// Notified when this clock jumps ahead of the monotonic clock that tokio's timers follow:
    /// after a machine suspend (the boot clock), or a [`Clock::jump`] (the test clock).
    /// Sleepers race their timer against it and re-check the clock when it fires.
    pub(crate) fn jump_signal(&self) -> &Notify {
        match &self.0 {
            ClockKind::Boot => suspend_signal(),
            ClockKind::Tokio { jump_signal, .. } => jump_signal,
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

/// How often the suspend detector compares the boot clock with the monotonic clock.
const SUSPEND_CHECK: Duration = Duration::from_secs(1);
/// How far the boot clock must run ahead of the monotonic clock to count as a suspend.
const SUSPEND_THRESHOLD: Duration = Duration::from_millis(200);

/// The process-wide suspend signal: one thread compares the boot clock, which counts time
/// suspended, with the monotonic clock, which does not, once a second, and wakes every
/// sleeper when the boot clock has jumped ahead. One thread per process, rather than every
/// timer waking once a second to look: 10,000 elections then cost no idle wake-ups.
fn suspend_signal() -> &'static Notify {
    static SIGNAL: OnceLock<Arc<Notify>> = OnceLock::new();
    SIGNAL.get_or_init(|| {
        let signal = Arc::new(Notify::new());
        let notify = signal.clone();
        let spawned = std::thread::Builder::new()
            .name("baton-suspend-detector".into())
            .spawn(move || {
                let (mut boot, mut mono) = (boot_time(), Instant::now());
                loop {
                    std::thread::sleep(SUSPEND_CHECK);
                    let (boot_now, mono_now) = (boot_time(), Instant::now());
                    let skew = (boot_now - boot).saturating_sub(mono_now - mono);
                    if skew > SUSPEND_THRESHOLD {
                        notify.notify_waiters();
                    }
                    (boot, mono) = (boot_now, mono_now);
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "no suspend detector: timers notice a suspend only when they fire");
        }
        signal
    })
}

/// Time since boot, including time spent suspended, on Linux and Android; the plain monotonic
/// clock elsewhere.
///
/// Public on purpose: it is the clock [`Clock::boot`] reads, and the one clock every process
/// of a machine shares and that NTP cannot step. Tools that compare instants across processes
/// (Baton's benchmarks and chaos harness time handoffs between `baton` processes with it)
/// read the same clock as the elections they observe.
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
