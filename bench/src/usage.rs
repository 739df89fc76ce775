//! CPU accounting from /proc, to tell what bounds a scenario on a small machine: the
//! server's CPU time, the harness's own (emitters and sink share the machine), and the
//! whole machine's busy time (PostgreSQL and anything else running, which also shows
//! when a run was disturbed by other work).

use std::time::{Duration, Instant};

/// CPU counters at one moment.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot {
    at: Instant,
    server: Option<u64>,
    harness: Option<u64>,
    machine: Option<u64>,
}

/// Average cores used between two snapshots.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    /// Wall time between the snapshots.
    pub elapsed: Duration,
    /// Server process (all threads).
    pub server: Option<f64>,
    /// This process.
    pub harness: Option<f64>,
    /// Every CPU of the machine, busy (not idle or iowait).
    pub machine: Option<f64>,
}

impl Snapshot {
    /// Reads the counters of `server_pid`, this process and the machine.
    pub fn take(server_pid: u32) -> Snapshot {
        Snapshot {
            at: Instant::now(),
            server: process_ticks(&format!("/proc/{server_pid}/stat")),
            harness: process_ticks("/proc/self/stat"),
            machine: machine_busy_ticks(),
        }
    }

    /// Usage from `self` to `later`.
    pub fn until(&self, later: &Snapshot) -> Usage {
        let elapsed = later.at.duration_since(self.at);
        let hz = ticks_per_second();
        let cores = |a: Option<u64>, b: Option<u64>| {
            let ticks = b?.checked_sub(a?)?;
            Some(ticks as f64 / hz / elapsed.as_secs_f64().max(1e-9))
        };
        Usage {
            elapsed,
            server: cores(self.server, later.server),
            harness: cores(self.harness, later.harness),
            machine: cores(self.machine, later.machine),
        }
    }
}

/// CPU ticks (utime + stime) of process `pid`, if it exists and is readable.
pub fn pid_ticks(pid: u32) -> Option<u64> {
    process_ticks(&format!("/proc/{pid}/stat"))
}

/// CPU ticks of `root` and of its live direct children: a postmaster and its backends
/// and background workers. Children that exited are not counted (their time is gone
/// from /proc): pooled backends live long, autovacuum workers do not.
pub fn family_ticks(root: u32) -> Option<u64> {
    let mut total = pid_ticks(root)?;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if parse_parent(&stat) == Some(root) {
            total += parse_process_ticks(&stat).unwrap_or(0);
        }
    }
    Some(total)
}

/// Busy ticks of the whole machine (see [`Snapshot`]).
pub fn machine_ticks() -> Option<u64> {
    machine_busy_ticks()
}

/// Average cores that `ticks` of CPU time over `elapsed` amount to.
pub fn cores(ticks: u64, elapsed: Duration) -> f64 {
    ticks as f64 / ticks_per_second() / elapsed.as_secs_f64().max(1e-9)
}

/// The parent pid (field 4) of a `/proc/<pid>/stat` line.
fn parse_parent(stat: &str) -> Option<u32> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(1)?.parse().ok()
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}

/// utime + stime of a `/proc/<pid>/stat` file.
fn process_ticks(path: &str) -> Option<u64> {
    parse_process_ticks(&std::fs::read_to_string(path).ok()?)
}

fn parse_process_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces; fields after it start at field 3.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Busy ticks of all CPUs: the `cpu` line of /proc/stat minus idle and iowait.
fn machine_busy_ticks() -> Option<u64> {
    parse_machine_busy(&std::fs::read_to_string("/proc/stat").ok()?)
}

fn parse_machine_busy(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: u64 = values.iter().take(8).sum();
    let idle = values.get(3)? + values.get(4).copied().unwrap_or(0);
    total.checked_sub(idle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_ticks_survive_spaces_in_the_name() {
        let stat = "1234 (tokio runtime) S 1 2 3 4 5 6 7 8 9 10 25 5 0 0 20 0";
        assert_eq!(parse_process_ticks(stat), Some(30));
    }

    #[test]
    fn the_parent_follows_the_state_field() {
        let stat = "1234 (postgres: x) S 77 2 3 4 5 6 7 8 9 10 25 5 0 0 20 0";
        assert_eq!(parse_parent(stat), Some(77));
    }

    #[test]
    fn machine_busy_excludes_idle_and_iowait() {
        let stat = "cpu  100 10 50 1000 40 5 5 0 0 0\ncpu0 1 1 1 1 1 1 1 1 0 0\n";
        assert_eq!(parse_machine_busy(stat), Some(170));
    }
}
