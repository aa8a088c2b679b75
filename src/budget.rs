//! The process-wide memory budget for connection buffers (`--max-memory`).
//!
//! Every buffer that holds a connection's bytes (the TLS stream's incoming
//! and outgoing records, the copy buffers between client and backend) is
//! counted here. Buffers that take bytes in from a socket must be granted
//! first; when the budget cannot grant, the connection stops reading, so
//! its sender meets TCP backpressure instead of the process growing, and it
//! resumes when buffers elsewhere drain. Nothing is dropped.
//!
//! Fairness: while less than half the budget is in use, a holder gets what
//! it asks for. Past half, each holder may take at most an equal share of
//! the other half (`limit / 2` over every holder of every open
//! connection), so connections whose peers stopped reading can pin at most
//! half the budget plus their own shares, and a new client always finds its
//! share free: it is served while others are stalled.

use std::num::NonZeroU64;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};

/// Buffers that may be gated per connection: the TLS stream's incoming
/// records and the two copy buffers.
const GATED_HOLDERS_PER_CONN: usize = 3;
/// The least a grant under pressure is worth: one small WebSocket message
/// with its record overhead. Asking for less would only cost system calls.
pub const MIN_GRANT: usize = 4 * 1024;
/// Waiters are woken once this much is free again (or the budget is below
/// half): the least any of them asks for, so none waits while its grant
/// would fit, and a crowd does not wake for a crumb.
const WAKE_AFTER_FREE: usize = MIN_GRANT;

/// The budget every connection draws its buffers from.
#[derive(Debug)]
pub struct Budget {
    limit: usize,
    used: AtomicUsize,
    /// Open connections, which the fair share is divided among.
    conns: AtomicUsize,
    /// Tasks waiting for room, woken all at once when room appears.
    waiters: Mutex<Vec<Waker>>,
    /// Incremented at each wake-up, so a holder registers once per round.
    round: AtomicU64,
    /// Times a read was held back for want of room (for the log and, later,
    /// metrics).
    refusals: AtomicU64,
}

/// A holder's place in the wait list: which wake-up round it registered
/// for, so polling again while waiting does not add it twice.
#[derive(Debug, Default)]
pub struct Waiting {
    // Rounds count from 1, so `None` costs no extra word.
    round: Option<NonZeroU64>,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Budget {
        Budget {
            limit,
            used: AtomicUsize::new(0),
            conns: AtomicUsize::new(0),
            waiters: Mutex::new(Vec::new()),
            round: AtomicU64::new(1),
            refusals: AtomicU64::new(0),
        }
    }

    /// The budget in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes held by all buffers now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// How many times a read waited for room.
    pub fn refusals(&self) -> u64 {
        self.refusals.load(Ordering::Relaxed)
    }

    /// Counts an open connection for the fair share until the guard drops.
    pub fn connection(&self) -> ConnGuard<'_> {
        self.conns.fetch_add(1, Ordering::Relaxed);
        ConnGuard(self)
    }

    /// Asks for up to `want` bytes for a holder that already has `held`;
    /// grants at least `min.min(want)`. `Pending` registers the task to be
    /// woken when room appears.
    pub fn poll_reserve(
        &self,
        cx: &mut Context<'_>,
        waiting: &mut Waiting,
        held: usize,
        want: usize,
        min: usize,
    ) -> Poll<usize> {
        let min = min.min(want);
        let holders = self.conns.load(Ordering::Relaxed).max(1) * GATED_HOLDERS_PER_CONN;
        // Never below the least worth granting: a budget too small for its
        // connections then serves them in turns rather than none at all.
        let share = (self.limit / 2 / holders).max(min);
        self.take_or_wait(cx, waiting, |used| {
            if used + want <= self.limit / 2 {
                Some(want)
            } else {
                let room = share
                    .saturating_sub(held)
                    .min(self.limit.saturating_sub(used));
                (room >= min).then(|| want.min(room))
            }
        })
    }

    /// Asks for exactly `need` bytes that a holder must have to make any
    /// progress (the rest of a TLS record already begun): granted whenever
    /// the budget as a whole has room, whatever the holder's share.
    pub fn poll_reserve_progress(
        &self,
        cx: &mut Context<'_>,
        waiting: &mut Waiting,
        need: usize,
    ) -> Poll<usize> {
        self.take_or_wait(cx, waiting, |used| {
            (used + need <= self.limit).then_some(need)
        })
    }

    /// Counts bytes that may not wait (ciphertext of bytes already held, a
    /// handshake alert); they still count against everyone else's grants.
    pub fn add(&self, bytes: usize) {
        self.used.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Gives back bytes a buffer no longer holds, waking waiters once there
    /// is worthwhile room.
    pub fn release(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let before = self.used.fetch_sub(bytes, Ordering::Relaxed);
        let now = before.saturating_sub(bytes);
        if now <= self.limit / 2 || self.limit - now.min(self.limit) >= WAKE_AFTER_FREE {
            self.wake_all();
        }
    }

    /// Moves `held` to `new` bytes for a buffer whose size changed without
    /// a grant (shrinking, or growing by what may not wait).
    pub fn resize(&self, held: &mut usize, new: usize) {
        if new > *held {
            self.add(new - *held);
        } else {
            self.release(*held - new);
        }
        *held = new;
    }

    fn try_take(&self, decide: &impl Fn(usize) -> Option<usize>) -> Option<usize> {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let take = decide(used)?;
            match self.used.compare_exchange_weak(
                used,
                used + take,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(take),
                Err(now) => used = now,
            }
        }
    }

    /// Takes what `decide` grants, or registers the task to be woken. The
    /// second look, under the lock that `wake_all` takes, closes the gap in
    /// which a release could find no one to wake just before this task is
    /// listed.
    fn take_or_wait(
        &self,
        cx: &mut Context<'_>,
        waiting: &mut Waiting,
        decide: impl Fn(usize) -> Option<usize>,
    ) -> Poll<usize> {
        if let Some(n) = self.try_take(&decide) {
            waiting.round = None;
            return Poll::Ready(n);
        }
        let mut waiters = match self.waiters.lock() {
            Ok(waiters) => waiters,
            Err(poisoned) => poisoned.into_inner(),
        };
        let round = NonZeroU64::new(self.round.load(Ordering::Relaxed));
        if waiting.round != round {
            self.refusals.fetch_add(1, Ordering::Relaxed);
            waiters.push(cx.waker().clone());
            waiting.round = round;
        }
        if let Some(n) = self.try_take(&decide) {
            // Listed for nothing: a wake-up it does not need is harmless.
            waiting.round = None;
            return Poll::Ready(n);
        }
        Poll::Pending
    }

    fn wake_all(&self) {
        let woken = {
            let mut waiters = match self.waiters.lock() {
                Ok(waiters) => waiters,
                Err(poisoned) => poisoned.into_inner(),
            };
            if waiters.is_empty() {
                return;
            }
            self.round.fetch_add(1, Ordering::Relaxed);
            std::mem::take(&mut *waiters)
        };
        for waker in woken {
            waker.wake();
        }
    }
}

/// One open connection counted in the fair share.
#[derive(Debug)]
pub struct ConnGuard<'a>(&'a Budget);

impl Drop for ConnGuard<'_> {
    fn drop(&mut self) {
        self.0.conns.fetch_sub(1, Ordering::Relaxed);
        // Every share just grew: a holder waiting at its share may fit now.
        if self.0.used() > self.0.limit / 2 {
            self.0.wake_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    fn poll(budget: &Budget, waiting: &mut Waiting, held: usize, want: usize) -> Poll<usize> {
        let mut cx = Context::from_waker(Waker::noop());
        budget.poll_reserve(&mut cx, waiting, held, want, MIN_GRANT)
    }

    #[test]
    fn grants_in_full_below_half() {
        let budget = Budget::new(1 << 20);
        let _c = budget.connection();
        assert_eq!(
            poll(&budget, &mut Waiting::default(), 0, 64 << 10),
            Poll::Ready(64 << 10)
        );
        assert_eq!(budget.used(), 64 << 10);
        budget.release(64 << 10);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn past_half_each_holder_gets_its_share_and_no_more() {
        let budget = Budget::new(1 << 20);
        let conns: Vec<_> = (0..4).map(|_| budget.connection()).collect();
        // Half the budget pinned by stalled connections.
        budget.add(512 << 10);
        let share = (1 << 20) / 2 / (4 * GATED_HOLDERS_PER_CONN);
        let mut waiting = Waiting::default();
        assert_eq!(poll(&budget, &mut waiting, 0, 64 << 10), Poll::Ready(share));
        // A holder at its share waits, counted once however often it polls.
        assert_eq!(poll(&budget, &mut waiting, share, 4096), Poll::Pending);
        assert_eq!(poll(&budget, &mut waiting, share, 4096), Poll::Pending);
        assert_eq!(budget.refusals(), 1);
        // Another holder still finds its share.
        assert_eq!(
            poll(&budget, &mut Waiting::default(), 0, 4096),
            Poll::Ready(4096)
        );
        drop(conns);
    }

    #[test]
    fn never_past_the_limit() {
        let budget = Budget::new(1 << 20);
        let _c = budget.connection();
        budget.add((1 << 20) - 1000);
        let mut cx = Context::from_waker(Waker::noop());
        let mut waiting = Waiting::default();
        assert_eq!(
            budget.poll_reserve_progress(&mut cx, &mut waiting, 2000),
            Poll::Pending
        );
        assert_eq!(
            budget.poll_reserve_progress(&mut cx, &mut waiting, 1000),
            Poll::Ready(1000)
        );
        assert_eq!(poll(&budget, &mut Waiting::default(), 0, 1), Poll::Pending);
    }
}
