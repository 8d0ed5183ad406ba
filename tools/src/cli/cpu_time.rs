//! CPU time spent on this machine while something ran, read from `/proc`: the whole machine's, one
//! process', and Postgres' (every `postgres` process). A ratio to a floor hides whether a run waited or
//! computed; these say how much of the machine's cores it took, and who took them.

use anyhow::{anyhow, Context as _, Result};

/// CPU seconds, cumulative since boot (the machine) or since each process started.
#[derive(Clone, Copy, Default)]
pub struct CpuTimes {
    pub machine: f64,
    pub process: f64,
    pub postgres: f64,
}

impl CpuTimes {
    /// Now, with `pid` as the process.
    pub fn now(pid: Option<u32>) -> Result<CpuTimes> {
        Ok(CpuTimes {
            machine: machine_busy()?,
            process: match pid {
                Some(pid) => ticks_to_secs(process_ticks(pid, false)?),
                None => 0.0,
            },
            postgres: postgres()?,
        })
    }

    /// What was spent since `earlier`.
    pub fn since(&self, earlier: &CpuTimes) -> CpuTimes {
        CpuTimes {
            machine: self.machine - earlier.machine,
            process: self.process - earlier.process,
            postgres: self.postgres - earlier.postgres,
        }
    }

    /// Both spans' together.
    pub fn plus(&self, other: &CpuTimes) -> CpuTimes {
        CpuTimes {
            machine: self.machine + other.machine,
            process: self.process + other.process,
            postgres: self.postgres + other.postgres,
        }
    }
}

/// The machine's cores.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn ticks_to_secs(ticks: u64) -> f64 {
    // SAFETY: sysconf reads a constant of the running system and has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    ticks as f64 / per_second.max(1) as f64
}

/// Every core's busy time: `/proc/stat`'s first line less idle and I/O wait.
fn machine_busy() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or_else(|| anyhow!("/proc/stat has no cpu line"))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().context("a /proc/stat cpu field"))
        .collect::<Result<_>>()?;
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let busy: u64 = fields
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum();
    Ok(ticks_to_secs(busy))
}

/// A process' user and system ticks, with those of its children it has waited for when `children`.
fn process_ticks(pid: u32, children: bool) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    process_ticks_of(&stat, children).ok_or_else(|| anyhow!("unreadable /proc/{pid}/stat"))
}

/// From a `/proc/<pid>/stat` line: fields 14-17 (utime, stime, cutime, cstime) follow the command, which is
/// in parentheses and may hold spaces.
fn process_ticks_of(stat: &str, children: bool) -> Option<u64> {
    let after_command = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_command.split_whitespace().collect();
    let take = if children { 4 } else { 2 };
    fields
        .get(11..11 + take)?
        .iter()
        .map(|v| v.parse::<i64>().ok().map(|t| t.max(0) as u64))
        .sum()
}

/// Every `postgres` process' ticks with its waited-for children's: the postmaster's children are the
/// backends, so one that exits between two readings still counts, in its parent's.
fn postgres() -> Result<f64> {
    let mut ticks = 0;
    for entry in std::fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if stat.contains("(postgres)") {
            ticks += process_ticks_of(&stat, true).unwrap_or(0);
        }
    }
    Ok(ticks_to_secs(ticks))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_read_after_a_command_with_spaces_and_parentheses() {
        // proc(5): pid (comm) state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt cmajflt utime
        // stime cutime cstime ...
        let stat = "42 (tokio (rt) worker) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 7 3 20 0 1 0";
        assert_eq!(process_ticks_of(stat, false), Some(300));
        assert_eq!(process_ticks_of(stat, true), Some(310));
        assert_eq!(process_ticks_of("7 (short) S 1 2", false), None);
    }

    #[test]
    fn this_process_is_seen_spending_cpu() {
        let me = Some(std::process::id());
        let before = CpuTimes::now(me).unwrap();
        let started = std::time::Instant::now();
        let mut x = 0u64;
        let mut spent = CpuTimes::default();
        while spent.process < 0.1 && started.elapsed().as_secs() < 10 {
            for _ in 0..1_000_000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
            spent = CpuTimes::now(me).unwrap().since(&before);
        }
        assert!(spent.process >= 0.1, "{}", spent.process);
        // The machine's busy time includes this process' (up to a tick each side).
        assert!(
            spent.machine >= spent.process - 0.02,
            "{} < {}",
            spent.machine,
            spent.process
        );
    }
}
