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
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
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
/// `conn=1f peer=203.0.113.7:51234` (or `peer=unix:/run/wssify.sock`).
#[derive(Debug, Clone, Copy)]
pub struct Who {
    /// The connection's id.
    pub id: ConnId,
    /// The client's address.
    pub peer: Peer,
}

/// Where a client came from. A client of `--listen unix:/path` has no
/// address (its end of the socket is unnamed), so it is named by the
/// socket it came through, as nginx's `$remote_addr` says `unix:`.
/// The same size as a `SocketAddr` (tested below): TCP clients pay nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// A TCP client's address and port.
    Tcp(SocketAddr),
    /// A UNIX client: the listener's `unix:/path`, made once per listener
    /// and kept for the process's life (see `listener::bind`).
    Unix(&'static str),
}

impl Peer {
    /// The client's TCP address, `None` for a UNIX client.
    pub fn addr(&self) -> Option<SocketAddr> {
        match self {
            Peer::Tcp(addr) => Some(*addr),
            Peer::Unix(_) => None,
        }
    }

    /// The client's IP address, what `--balance ip-hash` keeps one client
    /// on. A UNIX client has none: the unspecified address (`::`) stands
    /// for it, so UNIX clients, all local, share one ip-hash key. (Per-IP
    /// limits and the PROXY header ask [`Peer::addr`] instead, and leave
    /// UNIX clients out.)
    pub fn ip(&self) -> IpAddr {
        match self {
            Peer::Tcp(addr) => addr.ip(),
            Peer::Unix(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Tcp(addr) => write!(f, "{addr}"),
            Peer::Unix(path) => f.write_str(path),
        }
    }
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
            peer: Peer::Tcp("127.0.0.1:9".parse().unwrap()),
        };
        assert_eq!(who.to_string(), "conn=ff peer=127.0.0.1:9");
        let who = Who {
            id: ConnId(255),
            peer: Peer::Unix("unix:/run/wssify.sock"),
        };
        assert_eq!(who.to_string(), "conn=ff peer=unix:/run/wssify.sock");
        assert_eq!(who.peer.addr(), None);
    }

    /// Every connection's task holds one: UNIX clients must not make it larger.
    #[test]
    fn a_peer_is_the_size_of_a_socket_address() {
        assert_eq!(
            std::mem::size_of::<Peer>(),
            std::mem::size_of::<SocketAddr>()
        );
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
