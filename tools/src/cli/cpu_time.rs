//! CPU time spent on this machine while something ran, read from `/proc`: the whole machine's, one
//! process', and Postgres' (every `postgres` process). A ratio to a floor hides whether a run waited or
//! computed; these say how much of the machine's cores it took, and who took them.

use anyhow::{Context as _, Result};
use procfs::process::{all_processes, Process, Stat};
use procfs::{CurrentSI as _, KernelStats};

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
                Some(pid) => ticks_to_secs(process_ticks(pid)?),
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
    ticks as f64 / procfs::ticks_per_second().max(1) as f64
}

/// Every core's busy time: all of `/proc/stat`'s first line but idle and I/O wait (guest time is already in
/// user).
fn machine_busy() -> Result<f64> {
    let total = KernelStats::current().context("reading /proc/stat")?.total;
    let busy = total.user
        + total.nice
        + total.system
        + total.irq.unwrap_or(0)
        + total.softirq.unwrap_or(0)
        + total.steal.unwrap_or(0);
    Ok(ticks_to_secs(busy))
}

/// A process' user and system ticks, with those of its children it has waited for when `children`.
fn ticks(stat: &Stat, children: bool) -> u64 {
    let own = stat.utime + stat.stime;
    if children {
        own + (stat.cutime.max(0) + stat.cstime.max(0)) as u64
    } else {
        own
    }
}

fn process_ticks(pid: u32) -> Result<u64> {
    let stat = Process::new(pid as i32)
        .and_then(|p| p.stat())
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    Ok(ticks(&stat, false))
}

/// Every `postgres` process' ticks with its waited-for children's: the postmaster's children are the
/// backends, so one that exits between two readings still counts, in its parent's. A process that exits
/// while the list is read is skipped.
fn postgres() -> Result<f64> {
    let ticks: u64 = all_processes()
        .context("listing /proc")?
        .filter_map(|p| p.and_then(|p| p.stat()).ok())
        .filter(|stat| stat.comm == "postgres")
        .map(|stat| ticks(&stat, true))
        .sum();
    Ok(ticks_to_secs(ticks))
}

#[cfg(test)]
mod tests {
    use super::*;
    use procfs::FromRead as _;

    #[test]
    fn ticks_are_read_after_a_command_with_spaces_and_parentheses() {
        // proc(5): pid (comm) state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt cmajflt utime
        // stime cutime cstime priority nice num_threads itrealvalue starttime vsize rss rsslim startcode
        // endcode startstack kstkesp kstkeip signal blocked sigignore sigcatch wchan nswap cnswap ...
        let line = "42 (tokio (rt) worker) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 7 3 20 0 1 0 \
                    1000 1000000 100 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let stat = Stat::from_read(line.as_bytes()).unwrap();
        assert_eq!(stat.comm, "tokio (rt) worker");
        assert_eq!(ticks(&stat, false), 300);
        assert_eq!(ticks(&stat, true), 310);
        assert!(Stat::from_read("7 (short) S 1 2".as_bytes()).is_err());
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
