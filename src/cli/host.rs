//! Who had the machine's CPUs during a measurement (Linux `/proc`; `None` elsewhere).
//!
//! On a shared virtual machine a run can lose time to other programs or to the hypervisor (steal
//! time: the host ran something else on our virtual CPU), and a benchmark row then reads slower
//! than the code is. [`CpuShares`] splits the machine's CPU time over a span into this process,
//! other programs of the machine, steal and idle, so that a slow row says whether it had the
//! machine. What it cannot see: a neighbour on the same host contending for memory bandwidth or
//! shared caches without taking our CPUs, and the clock's frequency.

use serde::Serialize;

/// CPU time counters at one moment, in clock ticks (`USER_HZ`, the unit of both files).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    /// The machine's time on all CPUs: user, nice, system, idle, iowait, irq, softirq and steal
    /// (guest time is inside user and nice already).
    total: u64,
    /// Idle and iowait.
    idle: u64,
    /// Stolen by the hypervisor.
    steal: u64,
    /// This process's user and system time (all its threads).
    process: u64,
}

/// Shares of the machine's CPU time over a span (all CPUs together; they add up to 1).
#[derive(Serialize, Debug, Clone, Copy, PartialEq)]
pub struct CpuShares {
    /// This process.
    pub ours: f64,
    /// Every other program of the machine, and the kernel's work for them.
    pub others: f64,
    /// Time the hypervisor gave to someone else while our virtual CPUs wanted to run.
    pub steal: f64,
    /// Idle (and waiting for I/O).
    pub idle: f64,
}

impl CpuTimes {
    /// The counters now, or `None` where `/proc` does not have them.
    pub fn now() -> Option<Self> {
        let machine = std::fs::read_to_string("/proc/stat").ok()?;
        let process = std::fs::read_to_string("/proc/self/stat").ok()?;
        Self::parse(&machine, &process)
    }

    /// The counters from the texts of `/proc/stat` and `/proc/<pid>/stat`.
    fn parse(machine: &str, process: &str) -> Option<Self> {
        let line = machine.lines().find(|l| l.starts_with("cpu "))?;
        let fields: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        // user nice system idle iowait irq softirq steal [guest guest_nice]
        let [user, nice, system, idle, iowait, irq, softirq, steal] = *fields.get(..8)? else {
            return None;
        };
        // The command name (field 2) is in parentheses and may hold spaces or parentheses: the
        // fields after the last `)` start with field 3; utime and stime are fields 14 and 15.
        let (_, rest) = process.rsplit_once(')')?;
        let rest: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |field: usize| rest.get(field - 3)?.parse::<u64>().ok();
        Some(Self {
            total: user + nice + system + idle + iowait + irq + softirq + steal,
            idle: idle + iowait,
            steal,
            process: ticks(14)? + ticks(15)?,
        })
    }
}

impl CpuShares {
    /// The shares between two readings (`None` if either is missing or no tick passed).
    pub fn between(before: Option<CpuTimes>, after: Option<CpuTimes>) -> Option<Self> {
        let (a, b) = (before?, after?);
        let total = b.total.checked_sub(a.total).filter(|&t| t > 0)? as f64;
        let idle = b.idle.saturating_sub(a.idle) as f64;
        let steal = b.steal.saturating_sub(a.steal) as f64;
        let busy = (total - idle - steal).max(0.0);
        // The process's counters and the machine's are sampled a moment apart: ours is capped
        // at what the machine was busy with.
        let ours = (b.process.saturating_sub(a.process) as f64).min(busy);
        Some(Self {
            ours: ours / total,
            others: (busy - ours) / total,
            steal: steal / total,
            idle: idle / total,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MACHINE: &str = "cpu  5434608 8 226651 1024802 32215 0 3397 45772 0 0\n\
                           cpu0 2717304 4 113325 512401 16107 0 1698 22886 0 0\n\
                           intr 1 2 3\n";

    fn process(utime: u64, stime: u64) -> String {
        // A command name with a space and a parenthesis, as `/proc` shows such names.
        format!(
            "4242 (bench (x) 2) R 1 4242 4242 0 -1 4194304 100 0 0 0 {utime} {stime} 0 0 20 0 3 0 1 1 1"
        )
    }

    #[test]
    fn counters_are_read_past_odd_command_names() {
        let t = CpuTimes::parse(MACHINE, &process(700, 50)).unwrap();
        assert_eq!(
            t,
            CpuTimes {
                total: 5434608 + 8 + 226651 + 1024802 + 32215 + 3397 + 45772,
                idle: 1024802 + 32215,
                steal: 45772,
                process: 750,
            }
        );
    }

    #[test]
    fn malformed_texts_give_none() {
        let ok = process(1, 2);
        assert!(CpuTimes::parse("cpu0 1 2 3 4 5 6 7 8\n", &ok).is_none());
        assert!(CpuTimes::parse("cpu  1 2 3 4 5 6 7\n", &ok).is_none());
        assert!(CpuTimes::parse("cpu  1 2 x 4 5 6 7 8\n", &ok).is_none());
        assert!(CpuTimes::parse(MACHINE, "4242 bench R 1").is_none());
        assert!(CpuTimes::parse(MACHINE, "4242 (bench) R 1 2").is_none());
    }

    #[test]
    fn shares_split_the_machines_time_and_add_up_to_one() {
        let at = |total, idle, steal, process| CpuTimes {
            total,
            idle,
            steal,
            process,
        };
        // 200 ticks on two CPUs: 120 ours, 30 others, 10 stolen, 40 idle.
        let s =
            CpuShares::between(Some(at(1000, 300, 50, 400)), Some(at(1200, 340, 60, 520))).unwrap();
        assert_eq!(
            s,
            CpuShares {
                ours: 0.6,
                others: 0.15,
                steal: 0.05,
                idle: 0.2,
            }
        );
        // The process read a tick more than the machine was busy: capped, still a whole.
        let s = CpuShares::between(Some(at(0, 0, 0, 0)), Some(at(100, 50, 0, 51))).unwrap();
        assert_eq!((s.ours, s.others, s.idle), (0.5, 0.0, 0.5));
        // No tick passed, or a reading is missing.
        assert!(CpuShares::between(Some(at(5, 1, 0, 1)), Some(at(5, 1, 0, 1))).is_none());
        assert!(CpuShares::between(None, Some(at(5, 1, 0, 1))).is_none());
    }

    #[test]
    fn this_machine_has_the_counters_where_proc_exists() {
        if std::path::Path::new("/proc/stat").exists() {
            let t = CpuTimes::now().expect("counters from /proc");
            assert!(t.total >= t.idle + t.steal, "{t:?}");
        }
    }
}
