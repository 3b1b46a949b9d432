//! What the machine's CPUs did while a bench scenario ran, from the kernel's
//! counters (`/proc/stat`, Linux only): how much was busy, idle, waiting
//! for I/O, and stolen by the hypervisor for other guests.
//!
//! Figures measured on a shared virtual machine move with its neighbours'
//! load: the same build has measured a fifth apart from one half hour to
//! the next. A scenario therefore prints this line next to its figures, so
//! that a reader (and the one comparing two builds) can tell a run that
//! had the machine to itself from one that did not. Elsewhere than Linux
//! the line is left out.

/// The whole machine's CPU time counters at one moment (every core
/// summed, in the kernel's ticks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    busy: u64,
    idle: u64,
    iowait: u64,
    steal: u64,
}

impl CpuTimes {
    /// The counters now, or `None` where `/proc/stat` cannot be read.
    pub fn now() -> Option<Self> {
        Self::parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    /// Reads the aggregate `cpu` line of `/proc/stat`: user, nice, system,
    /// idle, iowait, irq, softirq, steal (guest time is already counted in
    /// user and nice).
    fn parse(stat: &str) -> Option<Self> {
        let line = stat.lines().find(|line| line.starts_with("cpu "))?;
        let fields: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        let field = |i: usize| fields.get(i).copied().unwrap_or(0);
        if fields.len() < 4 {
            return None;
        }
        Some(Self {
            busy: field(0) + field(1) + field(2) + field(5) + field(6),
            idle: field(3),
            iowait: field(4),
            steal: field(7),
        })
    }

    /// The shares of the time from `self` until now (see [`Self::until`]).
    pub fn until_now(self) -> Option<HostCpu> {
        self.until(Self::now()?)
    }

    /// The shares of the time between `self` and `later`; `None` when no
    /// tick passed or the counters went backwards. The kernel's I/O wait
    /// counter alone may step back a little (proc(5) calls it unreliable):
    /// it counts as none then.
    pub fn until(self, later: Self) -> Option<HostCpu> {
        let part = |a: u64, b: u64| b.checked_sub(a);
        let busy = part(self.busy, later.busy)?;
        let idle = part(self.idle, later.idle)?;
        let iowait = later.iowait.saturating_sub(self.iowait);
        let steal = part(self.steal, later.steal)?;
        let total = busy + idle + iowait + steal;
        if total == 0 {
            return None;
        }
        #[expect(clippy::cast_precision_loss, reason = "ratios of tick counts")]
        let share = |ticks: u64| ticks as f64 / total as f64;
        Some(HostCpu {
            busy: share(busy),
            idle: share(idle),
            iowait: share(iowait),
            steal: share(steal),
        })
    }
}

/// Shares (0 to 1) of all cores' time over an interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HostCpu {
    /// Running anything, this machine's processes and the kernel.
    pub busy: f64,
    /// Nothing to run.
    pub idle: f64,
    /// Nothing to run but waiting for the disk.
    pub iowait: f64,
    /// Taken by the hypervisor for other guests while this one had work.
    pub steal: f64,
}

impl HostCpu {
    /// The scenario's line (`label` names the interval).
    pub fn render(&self, label: &str) -> String {
        format!(
            "  host CPUs       busy {:.0} %, idle {:.0} %, I/O wait {:.0} %, stolen {:.0} % ({label}, all cores)\n",
            self.busy * 100.0,
            self.idle * 100.0,
            self.iowait * 100.0,
            self.steal * 100.0,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "cpu  100 5 50 800 20 3 2 10 0 0\ncpu0 50 2 25 400 10 1 1 5 0 0\n";
    const AFTER: &str = "cpu  160 5 80 900 30 3 2 30 0 0\ncpu0 80 2 40 450 15 1 1 15 0 0\n";

    #[test]
    fn shares_come_from_the_aggregate_line_and_add_up_to_one() {
        let before = CpuTimes::parse(BEFORE).expect("parsed");
        let after = CpuTimes::parse(AFTER).expect("parsed");
        let host = before.until(after).expect("ticks passed");
        // 60 user + 30 system busy, 100 idle, 10 I/O wait, 20 stolen: 220.
        assert!((host.busy - 90.0 / 220.0).abs() < 1e-9, "{host:?}");
        assert!((host.idle - 100.0 / 220.0).abs() < 1e-9, "{host:?}");
        assert!((host.iowait - 10.0 / 220.0).abs() < 1e-9, "{host:?}");
        assert!((host.steal - 20.0 / 220.0).abs() < 1e-9, "{host:?}");
        assert_eq!(
            host.render("during the load"),
            "  host CPUs       busy 41 %, idle 45 %, I/O wait 5 %, stolen 9 % (during the load, all cores)\n"
        );
    }

    #[test]
    fn no_interval_or_counters_going_back_give_no_line_but_io_wait_may() {
        let times = CpuTimes::parse(BEFORE).expect("parsed");
        assert_eq!(times.until(times), None);
        let after = CpuTimes::parse(AFTER).expect("parsed");
        assert_eq!(after.until(times), None, "counters went backwards");
        let iowait_back = CpuTimes::parse("cpu  160 5 80 900 15 3 2 30 0 0\n").expect("parsed");
        let host = times.until(iowait_back).expect("only I/O wait went back");
        assert!(host.iowait.abs() < 1e-9, "{host:?}");
        assert_eq!(CpuTimes::parse("intr 1 2 3\n"), None);
        assert_eq!(CpuTimes::parse("cpu  1 2\n"), None);
    }
}
