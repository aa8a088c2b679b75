//! The tokio runtime wssify runs on, and `--busy-poll`.
//!
//! A core that goes idle between two messages pays a wake-up when the next
//! one arrives: a few microseconds on bare metal, tens of them on a virtual
//! machine, whose idle vCPU halts and waits for the host to schedule it
//! again (on the 2-core VM of the README's figures, two such wake-ups are
//! about 70 of the 160 µs an echoed message takes). With `--busy-poll`, a
//! worker that runs out of work keeps checking the runtime's event queue
//! for up to the window before it sleeps, so a message that arrives within
//! it is handled at once. Like HAProxy's `busy-polling` it is off by
//! default: it spends CPU (up to the window each time a worker would
//! sleep) to buy latency, which suits a core of one's own, not a shared or
//! CPU-quota'd one.

use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use tokio::runtime::{Builder, Runtime};

/// The builder of the runtime that runs first-bytes sniffs and TLS
/// handshakes (see `priority`), on `threads` threads of their own, each of
/// which must call [`lower_priority`] as it starts: under `SCHED_IDLE`, the
/// kernel's lowest class, a handshake thread runs only on CPU nothing else
/// wants and yields the moment a connection's worker wakes. A nice value
/// was not enough: at nice 10 the kernel let a running step finish first
/// (p99 9x quiet in the handshake flood). Build it after [`build`] (busy
/// polling finds its runtime's event queue while that one is built).
pub fn handshakes_builder(threads: usize) -> Builder {
    let mut builder = Builder::new_multi_thread();
    builder
        .worker_threads(threads.clamp(1, crate::settings::MAX_THREADS))
        .thread_name("wssify-handshake")
        .enable_all();
    builder
}

/// Puts the calling thread under `SCHED_IDLE`; if the system refuses,
/// handshakes run at normal priority (said at debug).
pub fn lower_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler(2) has no wrapper in std, tokio or
    // socket2; it reads the `sched_param` we pass for the length of the
    // call and touches no other memory of ours. On Linux, pid 0 means the
    // calling thread, and moving to SCHED_IDLE needs no privilege.
    let result = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if result != 0 {
        log::debug!(
            "handshake thread keeps its CPU priority: {}",
            io::Error::last_os_error()
        );
    }
}

/// Builds the runtime: one thread needs no work-stealing scheduler (the
/// current-thread runtime does the same work without cross-thread
/// wake-ups); more get the multi-thread one. `busy_poll` is the window a
/// worker spins for before it sleeps, if any. Call it before starting any
/// thread that could make an epoll descriptor of its own (see
/// `event_queues`). A thread count of 0 or past
/// [`MAX_THREADS`](crate::settings::MAX_THREADS) is an error here rather
/// than tokio's panic or failed allocation, and the window is held to
/// [`MAX_BUSY_POLL`](crate::settings::MAX_BUSY_POLL), whatever the caller.
pub fn build(threads: usize, busy_poll: Option<Duration>) -> io::Result<Runtime> {
    let max_threads = crate::settings::MAX_THREADS;
    if threads == 0 || threads > max_threads {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{threads} worker threads: from 1 to {max_threads}"),
        ));
    }
    let busy_poll = busy_poll.map(|window| window.min(crate::settings::MAX_BUSY_POLL));
    let mut builder = if threads == 1 {
        Builder::new_current_thread()
    } else {
        let mut builder = Builder::new_multi_thread();
        builder.worker_threads(threads);
        builder
    };
    builder.enable_all();
    let Some(window) = busy_poll else {
        return builder.build();
    };

    // The hook is installed before the runtime exists; the descriptor it
    // watches is known only once the runtime has made it.
    let queue = Arc::new(AtomicI32::new(NO_QUEUE));
    let hook_queue = queue.clone();
    builder.on_thread_park(move || {
        let fd = hook_queue.load(Ordering::Relaxed);
        if fd != NO_QUEUE {
            spin_until_ready(fd, window);
        }
    });
    let before = event_queues();
    let runtime = builder.build()?;
    match event_queues().into_iter().find(|fd| !before.contains(fd)) {
        Some(fd) => {
            queue.store(fd, Ordering::Relaxed);
            log::info!(
                "busy polling: a worker checks for I/O for up to {} before it sleeps",
                crate::settings::format_duration(window)
            );
            let cores = crate::settings::default_threads();
            if threads > cores {
                log::warn!(
                    "--busy-poll with --threads {threads} on {cores} cores: a spinning worker holds a core another worker may be waiting for; give each worker a core (--threads {cores})"
                );
            }
        }
        None => log::warn!(
            "--busy-poll: cannot find the runtime's event queue in /proc/self/fd; workers sleep as soon as they are idle"
        ),
    }
    Ok(runtime)
}

/// The hook's descriptor before the runtime's event queue is known.
const NO_QUEUE: RawFd = -1;

/// The epoll descriptors this process holds. tokio does not expose its own,
/// so [`build`] takes the one that appears while the runtime is built (the
/// process has no other thread yet that could make one meanwhile).
fn event_queues() -> Vec<RawFd> {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|entry| {
            std::fs::read_link(entry.path())
                .is_ok_and(|target| target.as_os_str() == "anon_inode:[eventpoll]")
        })
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect()
}

/// Returns once the event queue has something to report (the worker's next
/// wait then returns at once, without sleeping) or when `window` has passed.
fn spin_until_ready(queue: RawFd, window: Duration) {
    // `build` holds the window to 10ms; were it past what `Instant` can
    // hold, the worker would sleep at once rather than panic.
    let deadline = Instant::now().checked_add(window);
    let mut poll_fd = libc::pollfd {
        fd: queue,
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: poll(2) with a timeout of 0 reads and writes exactly the
        // one `pollfd` it is given, which lives on this stack frame for the
        // whole call; it needs nothing of the descriptor (a closed one is
        // reported as POLLNVAL, which ends the spin). Neither std nor tokio
        // offers a way to ask an epoll descriptor whether it is ready
        // without taking its events, so the call goes to libc.
        let ready = unsafe { libc::poll(&mut poll_fd, 1, 0) };
        // Ready (> 0) or failing (< 0): either way, stop spinning.
        if ready != 0 || deadline.is_none_or(|deadline| Instant::now() >= deadline) {
            return;
        }
        std::hint::spin_loop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_counts_out_of_bounds_are_errors_not_panics() {
        for threads in [0, crate::settings::MAX_THREADS + 1, usize::MAX] {
            let err = build(threads, None).err().map(|e| e.kind());
            assert_eq!(err, Some(io::ErrorKind::InvalidInput), "{threads}");
        }
    }

    #[test]
    fn a_huge_window_is_held_to_the_busy_poll_cap() {
        let runtime = build(1, Some(Duration::MAX));
        assert!(runtime.is_ok());
        // The spin itself never overflows `Instant`: a closed descriptor
        // ends it at once, whatever the window.
        spin_until_ready(-1, Duration::MAX);
    }
}
