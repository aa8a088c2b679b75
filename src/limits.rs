//! The open-file limit and the connection limit derived from it.
//!
//! Each proxied connection holds two descriptors (client and backend), so
//! the default `--max-conns` is what the open-file limit can carry, after a
//! reserve for listeners, logs and the runtime.

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
}
