//! Process figures from `/proc`: CPU time, resident memory and context switches.

use crate::BoxResult;

/// CPU time (user + system) of process `pid` so far, from `/proc/<pid>/stat`, in seconds.
pub fn cpu_seconds(pid: &str) -> BoxResult<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name is in parentheses and may contain spaces: fields start after the last ')'.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or("malformed /proc/PID/stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 (utime) and 15 (stime) of proc(5); `after` starts at field 3.
    let ticks = |i: usize| -> BoxResult<u64> {
        Ok(fields
            .get(i - 3)
            .ok_or("short /proc/PID/stat")?
            .parse::<u64>()?)
    };
    let total = ticks(14)? + ticks(15)?;
    Ok(total as f64 / rustix::param::clock_ticks_per_second() as f64)
}

/// `VmRSS` and `VmHWM` (peak) of process `pid`, in KiB.
pub fn rss_kib(pid: &str) -> BoxResult<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> BoxResult<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| format!("no {name} in /proc/{pid}/status").into())
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// Context switches (voluntary + involuntary) of every thread of process `pid` so far: how
/// often its threads went to sleep and were woken, or were preempted.
pub fn context_switches(pid: &str) -> BoxResult<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let Ok(status) = std::fs::read_to_string(task?.path().join("status")) else {
            continue; // the thread ended meanwhile
        };
        for line in status.lines() {
            if let Some(v) = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                total += v.trim().parse::<u64>()?;
            }
        }
    }
    Ok(total)
}

/// The machine's CPU time so far, from the `cpu` line of `/proc/stat`: (busy, total) in
/// seconds summed over all CPUs.
fn machine_cpu() -> BoxResult<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or("no cpu line in /proc/stat")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse::<u64>())
        .collect::<Result<_, _>>()?;
    let field = |i: usize| v.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal (guest time is included in user).
    let busy = field(0) + field(1) + field(2) + field(5) + field(6) + field(7);
    let total = busy + field(3) + field(4);
    let tick = rustix::param::clock_ticks_per_second() as f64;
    Ok((busy as f64 / tick, total as f64 / tick))
}

/// How busy the machine was with *other* work during a measurement: all CPU time spent on
/// the machine minus this process's and (if given) the Redis server's.
#[derive(Debug, Clone)]
pub struct OtherLoad {
    server_pid: Option<String>,
    start: (f64, f64, f64, f64),
}

impl OtherLoad {
    pub fn start(server_pid: Option<u32>) -> BoxResult<OtherLoad> {
        let server_pid = server_pid.map(|p| p.to_string());
        let start = Self::sample(server_pid.as_deref())?;
        Ok(OtherLoad { server_pid, start })
    }

    /// (busy, total, own, server) CPU seconds.
    fn sample(server_pid: Option<&str>) -> BoxResult<(f64, f64, f64, f64)> {
        let (busy, total) = machine_cpu()?;
        let own = cpu_seconds("self")?;
        let server = match server_pid {
            Some(pid) => cpu_seconds(pid)?,
            None => 0.0,
        };
        Ok((busy, total, own, server))
    }

    /// Other processes' CPU time as a percentage of the machine's capacity (all CPUs), or
    /// `None` when the measurement was too short for `/proc`'s clock ticks (under a second of
    /// machine time).
    pub fn percent(&self) -> BoxResult<Option<f64>> {
        let (b1, t1, o1, s1) = Self::sample(self.server_pid.as_deref())?;
        let (b0, t0, o0, s0) = self.start;
        let total = t1 - t0;
        if total < 1.0 {
            return Ok(None);
        }
        let others = (b1 - b0) - (o1 - o0) - (s1 - s0);
        Ok(Some((others / total * 100.0).clamp(0.0, 100.0)))
    }
}

/// `12 %`, or `–` for a measurement too short to tell.
pub fn percent_or_dash(p: Option<f64>) -> String {
    p.map_or_else(|| "–".to_owned(), |p| format!("{p:.0} %"))
}
