//! Moving bytes both ways between the client and the backend.
//!
//! This is the memory-critical path. Each direction owns a copy buffer only
//! while bytes are moving through it: the buffer is allocated when the
//! source has something to read and released as soon as the source would
//! block with nothing left to write, so an idle connection holds none.
//! A finished direction is passed on as a half-close (FIN towards the
//! backend, close_notify then FIN towards the client), and the idle timeout
//! fires only when no byte has moved in either direction for that long.

use std::fmt;
use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::time::Instant;

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
    /// Reading from or writing to the client failed.
    ClientError(io::Error),
    /// Reading from or writing to the backend failed.
    BackendError(io::Error),
    /// Shutdown's drain timeout ran out while the connection was open.
    Drained,
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
            End::ClientError(e) => write!(f, "client error: {e}"),
            End::BackendError(e) => write!(f, "backend error: {e}"),
            End::Drained => f.write_str("drained at shutdown"),
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

/// Copies both ways until both directions are finished, an error occurs, the
/// idle timeout passes with no byte moving (`None`: never), or `stop`
/// completes.
pub async fn pipe<C, B, S>(
    client: &mut C,
    backend: &mut B,
    idle_timeout: Option<Duration>,
    mut stop: S,
) -> Outcome
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
    S: Future<Output = ()> + Unpin,
{
    let mut up = Half::default();
    let mut down = Half::default();
    let mut first_done: Option<End> = None;
    let mut last_activity = Instant::now();
    let idle = idle_timeout.map(tokio::time::sleep);
    tokio::pin!(idle);

    let end = poll_fn(|cx| {
        if Pin::new(&mut stop).poll(cx).is_ready() {
            return Poll::Ready(End::Drained);
        }
        let mut moved = false;
        if !up.done {
            match up.poll_copy(cx, &mut *client, &mut *backend, &mut moved) {
                Poll::Ready(Ok(())) => {
                    first_done.get_or_insert(End::ClientClosed);
                }
                Poll::Ready(Err(Failure::Read(e))) => return Poll::Ready(End::ClientError(e)),
                Poll::Ready(Err(Failure::Write(e))) => return Poll::Ready(End::BackendError(e)),
                Poll::Pending => {}
            }
        }
        if !down.done {
            match down.poll_copy(cx, &mut *backend, &mut *client, &mut moved) {
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
        }
        if let (Some(mut sleep), Some(limit)) = (idle.as_mut().as_pin_mut(), idle_timeout) {
            // The timer is re-armed lazily: only when it fires do we look at
            // when bytes last moved, so busy connections never touch it.
            while sleep.as_mut().poll(cx).is_ready() {
                let deadline = last_activity + limit;
                if Instant::now() >= deadline {
                    return Poll::Ready(End::IdleTimeout(limit));
                }
                sleep.as_mut().reset(deadline);
            }
        }
        Poll::Pending
    })
    .await;

    Outcome {
        to_backend: up.bytes,
        to_client: down.bytes,
        end,
    }
}

/// Which side of a one-way copy failed.
enum Failure {
    Read(io::Error),
    Write(io::Error),
}

/// One direction of the copy.
#[derive(Default)]
struct Half {
    /// Present only while bytes are in flight; its length is what was read.
    buf: Option<Vec<u8>>,
    /// Next byte of `buf` to write.
    pos: usize,
    /// End of the bytes read into `buf`.
    cap: usize,
    /// The source has finished (EOF or close_notify).
    read_done: bool,
    /// Bytes were written since the last flush.
    need_flush: bool,
    /// EOF was passed on as a shutdown: this direction is over.
    done: bool,
    /// Bytes written to the destination.
    bytes: u64,
    /// Size of the next buffer: doubles while reads fill it, halves while
    /// they use under a quarter (0 means the minimum).
    size: usize,
}

impl Half {
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
        moved: &mut bool,
    ) -> Poll<Result<(), Failure>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        loop {
            if self.pos == self.cap && !self.read_done {
                let size = self.size.max(COPY_BUFFER_MIN);
                let buf = self.buf.get_or_insert_with(|| Vec::with_capacity(size));
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
                        self.buf = None;
                        if self.need_flush {
                            ready!(Pin::new(&mut *writer).poll_flush(cx))
                                .map_err(Failure::Write)?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                }
            }

            while self.pos < self.cap {
                let Some(buf) = self.buf.as_deref() else {
                    break;
                };
                match ready!(Pin::new(&mut *writer).poll_write(cx, &buf[self.pos..self.cap])) {
                    Ok(0) => {
                        return Poll::Ready(Err(Failure::Write(io::ErrorKind::WriteZero.into())));
                    }
                    Ok(n) => {
                        self.pos += n;
                        self.bytes += n as u64;
                        self.need_flush = true;
                        *moved = true;
                    }
                    Err(e) => return Poll::Ready(Err(Failure::Write(e))),
                }
            }
            self.pos = 0;
            self.cap = 0;

            if self.read_done {
                self.buf = None;
                // Shutdown flushes first, then passes the half-close on.
                match ready!(Pin::new(&mut *writer).poll_shutdown(cx)) {
                    // The destination already went away entirely: nothing
                    // is left to tell it, and nothing was lost.
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
                    Err(e) => return Poll::Ready(Err(Failure::Write(e))),
                }
                self.done = true;
                return Poll::Ready(Ok(()));
            }
        }
    }
}
