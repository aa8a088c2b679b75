//! The open-file limit, the memory budget, and the connection limit derived
//! from both.
//!
//! Each proxied connection holds two descriptors (client and backend), and
//! needs room in the memory budget to move a record each way; the default
//! `--max-conns` is what both can carry, so the limit that is reached first
//! is the one the operator chose, never an out-of-memory kill.

use std::path::Path;

/// Descriptors kept back for listeners, the runtime, logging and DNS.
const RESERVED_FDS: u64 = 64;

/// The open-file limit after start-up, and what it was before.
#[derive(Debug, Clone, Copy)]
pub struct FdLimit {
    /// The soft limit before wssify raised it.
    pub before: u64,
    /// The soft limit now in force.
    pub now: u64,
}

/// Raises the soft open-file limit to the hard limit.
pub fn raise_fd_limit() -> std::io::Result<FdLimit> {
    let (before, _hard) = rlimit::Resource::NOFILE.get()?;
    let now = rlimit::increase_nofile_limit(u64::MAX)?;
    Ok(FdLimit { before, now })
}

/// Budget each connection must be able to take when all of them move data
/// at once: a full TLS record of 16 KiB on its way in and out.
pub const BUDGET_PER_CONN: usize = 32 * 1024;

/// The default `--max-memory`, and where it came from (for the startup
/// line): half the cgroup's memory limit when the process runs under one
/// (a container, a systemd unit with MemoryMax=), else a quarter of the
/// physical memory. The rest is left for what the budget does not count:
/// each connection's TLS and task state (about 6 KiB idle), the
/// allocator's slack, and, without a cgroup, the other programs on the host.
pub fn default_max_memory() -> (usize, String) {
    if let Some(limit) = cgroup_memory_limit() {
        return (
            limit / 2,
            format!(
                "half the cgroup memory limit of {}",
                crate::settings::format_size(limit)
            ),
        );
    }
    match physical_memory() {
        Some(total) => (
            total / 4,
            format!(
                "a quarter of the {} of physical memory",
                crate::settings::format_size(total)
            ),
        ),
        None => (
            1 << 30,
            "1GiB: neither a cgroup limit nor the physical memory could be read".to_string(),
        ),
    }
}

/// The tightest memory limit of this process's cgroup (v2, walking up to
/// the root) or of the v1 memory controller; `None` when unlimited.
fn cgroup_memory_limit() -> Option<usize> {
    let membership = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mut tightest: Option<usize> = None;
    let mut consider = |text: Option<String>| {
        let limit = text.and_then(|t| t.trim().parse::<u64>().ok());
        // v1 reports "no limit" as a number near 2^63.
        if let Some(limit) = limit.filter(|l| *l < (1 << 60)) {
            let limit = usize::try_from(limit).unwrap_or(usize::MAX);
            tightest = Some(tightest.map_or(limit, |t| t.min(limit)));
        }
    };
    for line in membership.lines() {
        // v2: "0::/path"; v1: "N:memory:/path" (or "N:...,memory,...:/path").
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let (root, file) = if controllers.is_empty() {
            ("/sys/fs/cgroup", "memory.max")
        } else if controllers.split(',').any(|c| c == "memory") {
            ("/sys/fs/cgroup/memory", "memory.limit_in_bytes")
        } else {
            continue;
        };
        // The limit of every ancestor applies too: walk up to the root.
        let mut dir = Path::new(root).join(path.trim_start_matches('/'));
        loop {
            consider(std::fs::read_to_string(dir.join(file)).ok());
            if dir == Path::new(root) || !dir.pop() {
                break;
            }
        }
    }
    tightest
}

/// MemTotal from /proc/meminfo.
fn physical_memory() -> Option<usize> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// The most connections a memory budget of `max_memory` bytes can carry.
pub fn max_conns_for_memory(max_memory: usize) -> usize {
    (max_memory / BUDGET_PER_CONN).max(1)
}

/// The most connections `fd_limit` descriptors can carry.
pub fn max_conns_for(fd_limit: u64) -> usize {
    let usable = fd_limit.saturating_sub(RESERVED_FDS) / 2;
    usize::try_from(usable.max(1)).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_descriptors_per_connection() {
        assert_eq!(max_conns_for(1024), 480);
        assert_eq!(max_conns_for(10), 1);
    }

    #[test]
    fn a_record_each_way_per_connection() {
        assert_eq!(max_conns_for_memory(64 << 20), 2048);
        assert_eq!(max_conns_for_memory(0), 1);
    }

    #[test]
    fn the_default_budget_is_a_share_of_something_real() {
        let (budget, why) = default_max_memory();
        assert!(budget >= 1 << 20, "{budget} from {why}");
    }
}
