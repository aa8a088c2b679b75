//! Rate-limited log lines for what any client can cause at will.
//!
//! Failed handshakes, probes (closed before sending anything, or not TLS),
//! plain HTTP on the TLS port and refusals over `--max-conns-per-ip` each
//! cost a client one connect. Logged one line apiece, a scanner or a flood
//! would fill the disk and bury every other line. So each kind logs at most
//! [`LINES_PER_SECOND`] lines a second at info, and counts the rest; the
//! count is reported as one `N similar lines suppressed` line when that
//! kind may log again, or [`SUMMARY_DELAY`] after the first line held back,
//! so a flood that stops still says how big it was.
//!
//! It sits on the connection path, so it takes no lock: one atomic word per
//! kind holds the current second and the lines logged in it.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Lines of one kind logged per second at most; enough to see what is
/// going on, few enough that a flood costs the log almost nothing.
pub const LINES_PER_SECOND: u64 = 10;

/// How soon after the first line held back its count is reported, when no
/// line of its kind is logged before: lines held back meanwhile join it.
pub const SUMMARY_DELAY: Duration = Duration::from_secs(1);

/// The kinds of line that are limited, each with its own allowance so a
/// flood of one kind never hides the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A TLS handshake (or the sniff before it) that failed.
    HandshakeFailed,
    /// A client that closed before sending anything, or sent something
    /// other than TLS or HTTP: port scanners and health checks.
    Probe,
    /// A plain HTTP request on the TLS port.
    PlainHttp,
    /// A connection refused over `--max-conns-per-ip`.
    PerIpRefused,
}

impl Kind {
    const ALL: [Kind; 4] = [
        Kind::HandshakeFailed,
        Kind::Probe,
        Kind::PlainHttp,
        Kind::PerIpRefused,
    ];

    /// What the suppressed lines were about, for the summary line.
    fn label(self) -> &'static str {
        match self {
            Kind::HandshakeFailed => "failed handshakes",
            Kind::Probe => "probes (closed before sending anything, or not TLS)",
            Kind::PlainHttp => "plain HTTP requests",
            Kind::PerIpRefused => "refusals over --max-conns-per-ip",
        }
    }
}

/// Bits of a bucket's state that count lines in the current second; the
/// bits above hold the second.
const COUNT_BITS: u32 = 20;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

/// One kind's allowance.
#[derive(Default)]
struct Bucket {
    /// `second << COUNT_BITS | lines logged in that second`, so a line is
    /// admitted with one compare-and-swap.
    state: AtomicU64,
    /// Lines held back and not yet reported.
    suppressed: AtomicU64,
}

/// Per-kind allowances of lines a second, and the counts held back.
pub struct RateLog {
    per_second: u64,
    epoch: Instant,
    buckets: [Bucket; Kind::ALL.len()],
    /// Woken by the first line held back after a report.
    held_back: Notify,
}

/// The process's limiter: the log is process-wide, so its allowance is too.
static GLOBAL: LazyLock<RateLog> = LazyLock::new(|| RateLog::new(LINES_PER_SECOND));

/// Whether a line of `kind` may be logged now; logs the count held back
/// before it first. Use [`info_limited!`](crate::ratelog::info_limited).
pub fn admit(kind: Kind) -> bool {
    GLOBAL.admit(kind)
}

/// Reports the counts held back, [`SUMMARY_DELAY`] after the first line of
/// a flood is; runs as long as the server. Summaries are otherwise written
/// only when the next line of their kind is, which may be never.
pub async fn report_held_back() {
    GLOBAL.report_held_back().await;
}

/// Logs at once the counts still held back: the process is about to end,
/// and a summary due in a moment would never come.
pub fn flush() {
    for kind in Kind::ALL {
        GLOBAL.report(kind);
    }
}

/// `log::info!` for a line any client can cause: at most
/// [`LINES_PER_SECOND`] a second per [`Kind`], the rest counted. Lines the
/// caller's log filter drops are not counted. (Summaries are logged under
/// this module's name.)
macro_rules! info_limited {
    ($kind:expr, $($arg:tt)+) => {
        if log::log_enabled!(log::Level::Info) && $crate::ratelog::admit($kind) {
            log::info!($($arg)+);
        }
    };
}
pub(crate) use info_limited;

impl RateLog {
    /// A limiter allowing `per_second` lines of each kind a second.
    pub fn new(per_second: u64) -> Self {
        RateLog {
            per_second: per_second.clamp(1, COUNT_MASK),
            epoch: Instant::now(),
            buckets: Default::default(),
            held_back: Notify::new(),
        }
    }

    /// [`admit`] for this limiter, at the present second.
    pub fn admit(&self, kind: Kind) -> bool {
        let second = self.epoch.elapsed().as_secs();
        let admitted = self.admit_at(kind, second);
        if admitted {
            self.report(kind);
        }
        admitted
    }

    /// Counts one line of `kind` during `second` (since the epoch): `true`
    /// if it is within the allowance, else it is held back.
    fn admit_at(&self, kind: Kind, second: u64) -> bool {
        let bucket = &self.buckets[kind as usize];
        let mut state = bucket.state.load(Ordering::Relaxed);
        loop {
            let (current, count) = (state >> COUNT_BITS, state & COUNT_MASK);
            // A thread that read the clock just before another moved the
            // window on counts in the newer second rather than reset it.
            let next = if second > current {
                (second << COUNT_BITS) | 1
            } else if count < self.per_second {
                state + 1
            } else {
                if bucket.suppressed.fetch_add(1, Ordering::Relaxed) == 0 {
                    self.held_back.notify_one();
                }
                return false;
            };
            match bucket.state.compare_exchange_weak(
                state,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => state = now,
            }
        }
    }

    /// Takes the count of `kind` held back since the last report.
    fn take_suppressed(&self, kind: Kind) -> u64 {
        self.buckets[kind as usize]
            .suppressed
            .swap(0, Ordering::Relaxed)
    }

    /// Logs the count of `kind` held back, if any.
    fn report(&self, kind: Kind) {
        let n = self.take_suppressed(kind);
        if n > 0 {
            log::info!(
                "{n} similar lines suppressed: {} (at most {} a second are logged)",
                kind.label(),
                self.per_second
            );
        }
    }

    /// [`report_held_back`] for this limiter.
    pub async fn report_held_back(&self) {
        loop {
            self.held_back.notified().await;
            tokio::time::sleep(SUMMARY_DELAY).await;
            for kind in Kind::ALL {
                self.report(kind);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_second_admits_its_allowance_and_counts_the_rest() {
        let log = RateLog::new(3);
        let admitted = (0..10).filter(|_| log.admit_at(Kind::PlainHttp, 5)).count();
        assert_eq!(admitted, 3);
        assert_eq!(log.take_suppressed(Kind::PlainHttp), 7);
        assert_eq!(log.take_suppressed(Kind::PlainHttp), 0, "reported once");
        // The next second has a fresh allowance.
        assert!(log.admit_at(Kind::PlainHttp, 6));
    }

    #[test]
    fn kinds_have_separate_allowances() {
        let log = RateLog::new(1);
        assert!(log.admit_at(Kind::HandshakeFailed, 0));
        assert!(!log.admit_at(Kind::HandshakeFailed, 0));
        assert!(log.admit_at(Kind::Probe, 0));
        assert!(log.admit_at(Kind::PerIpRefused, 0));
        assert_eq!(log.take_suppressed(Kind::HandshakeFailed), 1);
        assert_eq!(log.take_suppressed(Kind::Probe), 0);
    }

    #[test]
    fn a_late_reader_of_the_clock_does_not_reset_the_window() {
        let log = RateLog::new(2);
        assert!(log.admit_at(Kind::Probe, 9));
        assert!(log.admit_at(Kind::Probe, 9));
        // A thread that read second 8 before the window moved to 9.
        assert!(!log.admit_at(Kind::Probe, 8));
        assert!(!log.admit_at(Kind::Probe, 9));
        assert_eq!(log.take_suppressed(Kind::Probe), 2);
    }

    #[test]
    fn threads_together_never_exceed_the_allowance() {
        let log = RateLog::new(LINES_PER_SECOND);
        let admitted: usize = std::thread::scope(|s| {
            let workers: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        (0..1000)
                            .filter(|_| log.admit_at(Kind::HandshakeFailed, 1))
                            .count()
                    })
                })
                .collect();
            workers.into_iter().filter_map(|w| w.join().ok()).sum()
        });
        assert_eq!(admitted as u64, LINES_PER_SECOND);
        assert_eq!(
            log.take_suppressed(Kind::HandshakeFailed),
            4000 - LINES_PER_SECOND
        );
    }

    #[test]
    fn the_first_line_held_back_wakes_the_reporter_once() {
        use futures_util::FutureExt;
        let log = RateLog::new(1);
        assert!(log.admit_at(Kind::PlainHttp, 0));
        assert!(log.held_back.notified().now_or_never().is_none());
        assert!(!log.admit_at(Kind::PlainHttp, 0));
        assert!(log.held_back.notified().now_or_never().is_some());
        // More of the same flood joins the pending report without a wake.
        assert!(!log.admit_at(Kind::PlainHttp, 0));
        assert!(log.held_back.notified().now_or_never().is_none());
        assert_eq!(log.take_suppressed(Kind::PlainHttp), 2);
    }
}
