//! Settings -> a live pool of backend addresses -> a connected stream.
//!
//! The pool (`pool`) is one `ArcSwap`'d selection of addresses, each with
//! atomics for its state, so a connection reads it without a lock; the
//! policy (`balance`) ranks the selection for one client; `connect` walks
//! that ranking, one attempt per backend under its own timeout, marking
//! the ones that fail down for a growing back-off (failover as one loop
//! over a selection, as pingora does); `resolve` keeps names' addresses
//! fresh in the background, so no connection waits on DNS; `stream` is
//! what a backend is (TCP or a UNIX socket) and the stream to it.

pub mod balance;
pub mod connect;
pub mod pool;
pub mod resolve;
pub mod stream;

pub use connect::{ConnectError, Lease, connect};
pub use pool::Pool;
pub use stream::{Addr, Stream};
