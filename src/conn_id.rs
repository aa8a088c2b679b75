//! A short id for every connection, so that the lines about one connection
//! can be picked out of many: `grep 'conn=1f '` follows one client from
//! its accept through its handshake to its end line, `RUST_LOG=debug`
//! lines and rustls' own lines included.
//!
//! The id is a process-wide counter printed in hex. A connection keeps it
//! as one `u64` (8 bytes, nothing formatted until a line is logged).
//! rustls logs through the `log` crate without knowing which connection it
//! works for, so while a TLS stream hands bytes to rustls it names its
//! connection in a thread-local ([`scope`]), and [`Tagged`], the process's
//! logger, puts that id in front of every line logged meanwhile by code
//! other than wssify's own (whose lines carry the id already).

use std::cell::Cell;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

/// One connection's id: `conn=` and a few hex digits in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId(u64);

/// The next id to hand out; 0 is never used (the thread-local's "none").
static NEXT: AtomicU64 = AtomicU64::new(1);

impl ConnId {
    /// A new id, unique for the process's life.
    pub fn next() -> ConnId {
        ConnId(NEXT.fetch_add(1, Ordering::Relaxed))
    }

    /// No connection: for streams made outside a server (tests, the fuzzer).
    pub const NONE: ConnId = ConnId(0);
}

impl fmt::Display for ConnId {
    /// The log field, `conn=1f`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn={:x}", self.0)
    }
}

/// What every line about a connection starts with: its id and its peer,
/// `conn=1f peer=203.0.113.7:51234`.
#[derive(Debug, Clone, Copy)]
pub struct Who {
    /// The connection's id.
    pub id: ConnId,
    /// The client's address.
    pub peer: SocketAddr,
}

impl fmt::Display for Who {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} peer={}", self.id, self.peer)
    }
}

thread_local! {
    /// The connection rustls is working for on this thread now (0: none).
    static CURRENT: Cell<u64> = const { Cell::new(0) };
}

/// Runs `f` (a call into rustls) with `id` named as the connection it works
/// for, so that lines it logs carry the id (see [`Tagged`]).
pub fn scope<R>(id: ConnId, f: impl FnOnce() -> R) -> R {
    /// Puts back what was there before, even if `f` panics.
    struct Restore(u64);
    impl Drop for Restore {
        fn drop(&mut self) {
            CURRENT.set(self.0);
        }
    }
    let _restore = Restore(CURRENT.replace(id.0));
    f()
}

/// A logger that puts the current connection's id (see [`scope`]) in front
/// of lines logged by other crates (rustls) while they work for it.
pub struct Tagged<L> {
    inner: L,
}

impl<L: log::Log> Tagged<L> {
    /// Wraps `inner`, which formats, filters and writes every line.
    pub fn new(inner: L) -> Tagged<L> {
        Tagged { inner }
    }
}

impl<L: log::Log> log::Log for Tagged<L> {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        let id = CURRENT.get();
        if id == 0 || record.target().starts_with("wssify") {
            return self.inner.log(record);
        }
        self.inner.log(
            &log::Record::builder()
                .metadata(record.metadata().clone())
                .args(format_args!("{} {}", ConnId(id), record.args()))
                .module_path(record.module_path())
                .file(record.file())
                .line(record.line())
                .build(),
        );
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_short_hex_and_never_repeat() {
        let a = ConnId::next();
        let b = ConnId::next();
        assert_ne!(a, b);
        assert_eq!(ConnId(31).to_string(), "conn=1f");
        let who = Who {
            id: ConnId(255),
            peer: "127.0.0.1:9".parse().unwrap(),
        };
        assert_eq!(who.to_string(), "conn=ff peer=127.0.0.1:9");
    }

    #[test]
    fn the_scope_names_the_connection_and_is_undone() {
        assert_eq!(CURRENT.get(), 0);
        scope(ConnId(7), || {
            assert_eq!(CURRENT.get(), 7);
            scope(ConnId(8), || assert_eq!(CURRENT.get(), 8));
            assert_eq!(CURRENT.get(), 7);
        });
        assert_eq!(CURRENT.get(), 0);
    }
}
