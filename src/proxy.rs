//! Moving bytes both ways between the client and the backend.
//!
//! This is the memory-critical path. Each direction owns a copy buffer only
//! while bytes are moving through it: the buffer is granted and allocated
//! once the source is readable and released as soon as the source would
//! block with nothing left to write, so an idle connection holds none.
//! A finished direction is passed on as a half-close (FIN towards the
//! backend, close_notify then FIN towards the client), and the idle timeout
//! fires only when no byte has moved in either direction for that long.
//!
//! Two rules keep what a connection holds bounded by what its peers do:
//! a direction reads again only once its destination has taken everything
//! written so far (a client that stops reading pins one read's worth, not a
//! queue), and every copy buffer is granted by the process-wide
//! [`Budget`](crate::budget::Budget) first, so when the budget is spent
//! connections stop reading and their senders meet TCP backpressure. A
//! destination that takes none of the bytes waiting for it for the stall
//! timeout ends the connection.

use std::fmt;
use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::time::Instant;

use crate::budget::{Budget, MIN_GRANT, Waiting};

/// The copy buffer for small messages: one full TLS record of plaintext.
pub const COPY_BUFFER_MIN: usize = 16 * 1024;
/// The copy buffer a bulk transfer grows to (four records), so it costs one
/// system call per 64 KiB on each side. Buffers exist only while bytes move.
pub const COPY_BUFFER_MAX: usize = 64 * 1024;

/// Why a proxied connection ended.
#[derive(Debug)]
pub enum End {
    /// The client finished sending first, then the backend.
    ClientClosed,
    /// The backend finished sending first, then the client.
    BackendClosed,
    /// No byte moved either way for the idle timeout.
    IdleTimeout(Duration),
    /// The client took none of the bytes waiting for it for the stall timeout.
    ClientStalled(Duration),
    /// The backend took none of the bytes waiting for it for the stall timeout.
    BackendStalled(Duration),
    /// Reading from or writing to the client failed.
    ClientError(io::Error),
    /// Reading from or writing to the backend failed.
    BackendError(io::Error),
    /// Shutdown's drain timeout ran out while the connection was open.
    Drained,
    /// A second shutdown request cut the drain short while the connection
    /// was open.
    Cut,
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            End::ClientClosed => f.write_str("client closed"),
            End::BackendClosed => f.write_str("backend closed"),
            End::IdleTimeout(d) => write!(
                f,
                "idle timeout ({} with no bytes)",
                crate::settings::format_duration(*d)
            ),
            End::ClientStalled(d) => write!(
                f,
                "client stalled (took none of the bytes waiting for it for {})",
                crate::settings::format_duration(*d)
            ),
            End::BackendStalled(d) => write!(
                f,
                "backend stalled (took none of the bytes waiting for it for {})",
                crate::settings::format_duration(*d)
            ),
            End::ClientError(e) => write!(f, "client error: {e}"),
            End::BackendError(e) => write!(f, "backend error: {e}"),
            End::Drained => f.write_str("drained at shutdown"),
            End::Cut => f.write_str("cut at shutdown"),
        }
    }
}

/// What a finished proxy session did.
#[derive(Debug)]
pub struct Outcome {
    /// Plaintext bytes written to the backend.
    pub to_backend: u64,
    /// Plaintext bytes written to the client.
    pub to_client: u64,
    /// Why it ended.
    pub end: End,
}

/// What the copy loop asks of each side beyond reading and writing.
pub trait Peer {
    /// A count that grows whenever this side's socket takes bytes it had
    /// queued: a TLS stream accepts a write into its record queue before
    /// the socket takes it, so a stall is judged on this, not on writes
    /// alone. A side that queues nothing keeps the default.
    fn progress(&self) -> u64 {
        0
    }

    /// Ready when a read may find something: a copy buffer is granted and
    /// allocated only then, so an idle direction asks the budget for
    /// nothing.
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl Peer for tokio::net::TcpStream {
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_read_ready(cx)
    }
}

/// The timeouts a proxied connection runs under; `None`: never.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// No byte moved either way for this long.
    pub idle: Option<Duration>,
    /// A destination took none of the bytes waiting for it for this long.
    pub stall: Option<Duration>,
}

/// Copies both ways until both directions are finished, an error occurs, a
/// timeout passes, or `stop` completes. Copy buffers are granted by `budget`.
/// The connection counts as open for `priority` while bytes may flow, and
/// tells it when they move: once settled, floods of handshakes give way to
/// its messages.
///
/// Every idle connection holds this future, so it is an `async` block: an
/// `async fn` would store its parameters twice.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn stores its parameters twice"
)]
pub fn pipe<C, B, S>(
    client: &mut C,
    backend: &mut B,
    timeouts: Timeouts,
    budget: &Budget,
    mut stop: S,
) -> impl Future<Output = Outcome>
where
    C: AsyncRead + AsyncWrite + Peer + Unpin,
    B: AsyncRead + AsyncWrite + Peer + Unpin,
    S: Future<Output = ()> + Unpin,
{
    async move {
        let open = crate::priority::Open::count();
        let mut halves = Halves {
            up: Half::default(),
            down: Half::default(),
            budget,
        };
        let mut first_done: Option<End> = None;
        let mut last_activity = Instant::now();
        let first_deadline = match (timeouts.idle, timeouts.stall) {
            (Some(idle), Some(stall)) => Some(idle.min(stall)),
            (idle, stall) => idle.or(stall),
        };
        let timer = first_deadline.map(|d| tokio::time::sleep_until(last_activity + d));
        tokio::pin!(timer);

        let end = poll_fn(|cx| {
            if Pin::new(&mut stop).poll(cx).is_ready() {
                return Poll::Ready(End::Drained);
            }
            let Halves { up, down, budget } = &mut halves;
            let mut moved = false;
            if !up.done {
                match up.poll_copy(cx, &mut *client, &mut *backend, budget, &mut moved) {
                    Poll::Ready(Ok(())) => {
                        first_done.get_or_insert(End::ClientClosed);
                    }
                    Poll::Ready(Err(Failure::Read(e))) => return Poll::Ready(End::ClientError(e)),
                    Poll::Ready(Err(Failure::Write(e))) => {
                        return Poll::Ready(End::BackendError(e));
                    }
                    Poll::Pending => {}
                }
            }
            if !down.done {
                match down.poll_copy(cx, &mut *backend, &mut *client, budget, &mut moved) {
                    Poll::Ready(Ok(())) => {
                        first_done.get_or_insert(End::BackendClosed);
                    }
                    Poll::Ready(Err(Failure::Read(e))) => return Poll::Ready(End::BackendError(e)),
                    Poll::Ready(Err(Failure::Write(e))) => return Poll::Ready(End::ClientError(e)),
                    Poll::Pending => {}
                }
            }
            if up.done && down.done {
                return Poll::Ready(first_done.take().unwrap_or(End::ClientClosed));
            }
            if moved {
                last_activity = Instant::now();
                open.moved();
            }
            let Some(mut timer) = timer.as_mut().as_pin_mut() else {
                return Poll::Pending;
            };
            if let Some(stall) = timeouts.stall {
                // A direction that starts waiting on its destination (or sees it
                // take bytes) gets a new mark; the timer must not sleep past it.
                let marks = [
                    up.mark_stall(backend.progress()),
                    down.mark_stall(client.progress()),
                ];
                if let Some(at) = marks.into_iter().flatten().min().map(|at| at + stall)
                    && at < timer.deadline()
                {
                    timer.as_mut().reset(at);
                }
            }
            // The timer is re-armed lazily: only when it fires do we look at
            // when bytes last moved, so busy connections never touch it.
            while timer.as_mut().poll(cx).is_ready() {
                let now = Instant::now();
                let mut next: Option<Instant> = None;
                if let Some(limit) = timeouts.idle {
                    let at = last_activity + limit;
                    if now >= at {
                        return Poll::Ready(End::IdleTimeout(limit));
                    }
                    next = Some(at);
                }
                if let Some(limit) = timeouts.stall {
                    for (half, end) in [
                        (&*down, End::ClientStalled(limit)),
                        (&*up, End::BackendStalled(limit)),
                    ] {
                        if let Some((since, _)) = half.stalled {
                            let at = since + limit;
                            if now >= at {
                                return Poll::Ready(end);
                            }
                            next = Some(next.map_or(at, |n| n.min(at)));
                        }
                    }
                    // Nothing waiting: look again after a stall's length.
                    next.get_or_insert(now + limit);
                }
                match next {
                    Some(at) => timer.as_mut().reset(at),
                    None => break,
                }
            }
            Poll::Pending
        })
        .await;

        Outcome {
            to_backend: halves.up.bytes,
            to_client: halves.down.bytes,
            end,
        }
    }
}

/// Which side of a one-way copy failed.
enum Failure {
    Read(io::Error),
    Write(io::Error),
}

/// Both directions, giving their buffers back to the budget however the
/// copy ends (even if the future is dropped).
struct Halves<'b> {
    up: Half,
    down: Half,
    budget: &'b Budget,
}

impl Drop for Halves<'_> {
    fn drop(&mut self) {
        self.up.free(self.budget);
        self.down.free(self.budget);
    }
}

/// One direction of the copy.
#[derive(Default)]
struct Half {
    /// Present only while bytes are in flight; its length is what was read.
    buf: Option<Vec<u8>>,
    /// What the budget granted for `buf`.
    granted: usize,
    /// This direction's place in the budget's wait list.
    waiting: Waiting,
    /// Next byte of `buf` to write.
    pos: usize,
    /// End of the bytes read into `buf`.
    cap: usize,
    /// The source has finished (EOF or close_notify).
    read_done: bool,
    /// Bytes were written since the last flush.
    need_flush: bool,
    /// The destination has bytes of ours it has not taken yet and cannot
    /// take more now.
    blocked: bool,
    /// While blocked: since when the destination has taken nothing, and its
    /// progress count then.
    stalled: Option<(Instant, u64)>,
    /// EOF was passed on as a shutdown: this direction is over.
    done: bool,
    /// Bytes written to the destination.
    bytes: u64,
    /// Size of the next buffer: doubles while reads fill it, halves while
    /// they use under a quarter (0 means the minimum).
    size: usize,
}

impl Half {
    /// Gives the copy buffer and its grant back.
    fn free(&mut self, budget: &Budget) {
        self.buf = None;
        budget.release(std::mem::take(&mut self.granted));
    }

    /// Follows whether the destination is taking bytes: returns when a new
    /// stall mark was set (the destination just started waiting, or took
    /// some bytes while blocked), so the caller can arm its timer.
    fn mark_stall(&mut self, destination_progress: u64) -> Option<Instant> {
        if !self.blocked {
            self.stalled = None;
            return None;
        }
        let progress = self.bytes + destination_progress;
        match self.stalled {
            Some((_, seen)) if seen == progress => None,
            _ => {
                let now = Instant::now();
                self.stalled = Some((now, progress));
                Some(now)
            }
        }
    }

    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
        budget: &Budget,
        moved: &mut bool,
    ) -> Poll<Result<(), Failure>>
    where
        R: AsyncRead + Peer + Unpin,
        W: AsyncWrite + Unpin,
    {
        loop {
            if self.pos == self.cap && !self.read_done {
                // Read more only once the destination has taken everything
                // written so far: a peer that stops reading then pins what
                // it was last sent, not a growing queue.
                if self.need_flush {
                    match Pin::new(&mut *writer).poll_flush(cx) {
                        Poll::Ready(Ok(())) => self.need_flush = false,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(Failure::Write(e))),
                        Poll::Pending => {
                            self.free(budget);
                            self.blocked = true;
                            return Poll::Pending;
                        }
                    }
                }
                self.blocked = false;
                if self.buf.is_none() {
                    if let Err(e) = ready!(reader.poll_readable(cx)) {
                        return Poll::Ready(Err(Failure::Read(e)));
                    }
                    let want = self.size.max(COPY_BUFFER_MIN);
                    let granted =
                        ready!(budget.poll_reserve(cx, &mut self.waiting, 0, want, MIN_GRANT));
                    self.granted = granted;
                    self.buf = Some(Vec::with_capacity(granted));
                }
                let Some(buf) = self.buf.as_mut() else {
                    continue;
                };
                buf.clear();
                let capacity = buf.capacity();
                // Into spare capacity, so a new buffer is not zeroed first
                // (calloc's memset was 6% of the instructions of a bulk
                // transfer under callgrind). The future only borrows; when
                // it is pending, dropping it loses nothing.
                match std::pin::pin!(reader.read_buf(buf)).poll(cx) {
                    Poll::Ready(Ok(n)) => {
                        if n == capacity {
                            self.size = (n * 2).min(COPY_BUFFER_MAX);
                        } else if n < capacity / 4 {
                            self.size = (capacity / 2).max(COPY_BUFFER_MIN);
                        }
                        if n == 0 {
                            self.read_done = true;
                        } else {
                            self.pos = 0;
                            self.cap = n;
                            *moved = true;
                        }
                    }
                    // A TLS peer that closes TCP without close_notify has
                    // still finished sending; treat it as EOF like any
                    // byte-stream proxy does.
                    Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        self.read_done = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(Failure::Read(e))),
                    Poll::Pending => {
                        // Nothing to move: give the buffer back while idle.
                        self.free(budget);
                        return Poll::Pending;
                    }
                }
            }

            while self.pos < self.cap {
                let Some(buf) = self.buf.as_deref() else {
                    break;
                };
                match Pin::new(&mut *writer).poll_write(cx, &buf[self.pos..self.cap]) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(Failure::Write(io::ErrorKind::WriteZero.into())));
                    }
                    Poll::Ready(Ok(n)) => {
                        self.pos += n;
                        self.bytes += n as u64;
                        self.need_flush = true;
                        self.blocked = false;
                        *moved = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(Failure::Write(e))),
                    Poll::Pending => {
                        self.blocked = true;
                        return Poll::Pending;
                    }
                }
            }
            self.pos = 0;
            self.cap = 0;

            if self.read_done {
                self.free(budget);
                // Shutdown flushes first, then passes the half-close on.
                self.blocked = true;
                match ready!(Pin::new(&mut *writer).poll_shutdown(cx)) {
                    // The destination already went away entirely: nothing
                    // is left to tell it, and nothing was lost.
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
                    Err(e) => return Poll::Ready(Err(Failure::Write(e))),
                }
                self.blocked = false;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
        }
    }
}
