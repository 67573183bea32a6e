//! CPU time spent during a bench phase, from Linux's `/proc`: the whole
//! machine's (PostgreSQL, NATS and this process together) and this
//! process's own. When every core is busy, the machine's CPU per operation
//! is what bounds the rate, and it varies far less from run to run than the
//! rate does on a shared machine, so it is the figure to compare builds by.

/// Linux reports CPU times in USER_HZ ticks, which it fixes at 100 per
/// second for user space on every architecture.
const TICK_US: f64 = 10_000.0;

/// Busy ticks of the machine and of this process at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    machine_busy: u64,
    process: u64,
}

/// CPU per operation between two [`CpuTimes`], in microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuPerOp {
    pub machine_us: f64,
    pub process_us: f64,
}

impl CpuTimes {
    /// `None` where `/proc` cannot be read (not Linux): the figures are
    /// then left out.
    pub fn now() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let own = std::fs::read_to_string("/proc/self/stat").ok()?;
        Some(CpuTimes {
            machine_busy: machine_busy(&stat)?,
            process: process_ticks(&own)?,
        })
    }
}

/// CPU ticks spent over one or more phases: a bench that runs its
/// workloads in turns adds up each one's turns.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CpuSpent {
    machine_busy: u64,
    process: u64,
}

impl CpuSpent {
    /// Adds what was spent between `before` and `after`.
    pub fn add(&mut self, before: &CpuTimes, after: &CpuTimes) {
        self.machine_busy += after.machine_busy.saturating_sub(before.machine_busy);
        self.process += after.process.saturating_sub(before.process);
    }

    pub fn per_op(&self, ops: u64) -> Option<CpuPerOp> {
        if ops == 0 {
            return None;
        }
        let us = |ticks: u64| ticks as f64 * TICK_US / ops as f64;
        Some(CpuPerOp {
            machine_us: us(self.machine_busy),
            process_us: us(self.process),
        })
    }
}

/// Busy ticks of all CPUs from `/proc/stat`'s `cpu` line: user, nice,
/// system, irq, softirq and steal (not idle, not iowait; guest time is
/// already counted in user).
fn machine_busy(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let field = |i: usize| fields.get(i).copied().unwrap_or(0);
    Some(field(0) + field(1) + field(2) + field(5) + field(6) + field(7))
}

/// utime + stime of `/proc/self/stat` (fields 14 and 15). The command name
/// (field 2) is in parentheses and may hold spaces, so fields are counted
/// from the last `)`.
fn process_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_ticks_leave_out_idle_and_iowait() {
        let stat = "cpu  100 2 30 5000 40 6 7 8 0 0\ncpu0 50 1 15 2500 20 3 3 4 0 0\n";
        assert_eq!(machine_busy(stat), Some(100 + 2 + 30 + 6 + 7 + 8));
        assert_eq!(machine_busy("intr 1 2 3\n"), None);
    }

    #[test]
    fn process_ticks_are_counted_after_the_command_name() {
        let stat = "4242 (copilot data) S 1 4242 4242 0 -1 4194560 900 0 0 0 123 45 0 0 20 0 9 0";
        assert_eq!(process_ticks(stat), Some(123 + 45));
    }

    #[test]
    fn spent_per_op_is_in_microseconds_over_every_turn() {
        let before = CpuTimes {
            machine_busy: 1_000,
            process: 400,
        };
        let after = CpuTimes {
            machine_busy: 1_200,
            process: 450,
        };
        let mut spent = CpuSpent::default();
        spent.add(&before, &after);
        let per = spent.per_op(10_000).expect("ops");
        assert_eq!(per.machine_us, 200.0);
        assert_eq!(per.process_us, 50.0);
        assert_eq!(spent.per_op(0), None);
        // A second turn of the same size doubles the time, not the ops.
        spent.add(&before, &after);
        assert_eq!(spent.per_op(20_000).expect("ops").machine_us, 200.0);
    }
}
