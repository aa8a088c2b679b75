//! Binding the listening sockets and running the accept loops.
//!
//! The accept loop is where overload is handled: at `--max-conns` it stops
//! accepting until a connection ends (logged once per burst), and accept
//! errors such as running out of descriptors back off instead of spinning.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use log::{debug, info, warn};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::connection::{self, Shared};
use crate::error::StartupError;
use crate::settings::ListenAddr;
use crate::shutdown::{Coordinator, Phase, reached};

/// Pending connections the kernel may queue for us.
const BACKLOG: i32 = 1024;
/// First and longest pause after an accept error.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// A burst at the connection limit is reported once; a new report needs
/// this long without reaching the limit.
const LIMIT_REPORT_QUIET: Duration = Duration::from_secs(10);

/// A bound listening socket and how to describe it.
pub struct Bound {
    /// The socket, ready to accept.
    pub listener: TcpListener,
    /// The address it is bound to (with the real port when 0 was asked).
    pub local_addr: SocketAddr,
    /// `(IPv4 and IPv6)` or similar, for the startup line.
    pub scope: &'static str,
}

/// Binds one `--listen` value. A bare port binds `[::]` for IPv4 and IPv6
/// together, or `0.0.0.0` on hosts without IPv6.
pub fn bind(addr: &ListenAddr) -> Result<Bound, StartupError> {
    let result = match *addr {
        ListenAddr::Addr(socket_addr) => bind_one(socket_addr, false).map(|b| (b, "")),
        ListenAddr::AllInterfaces(port) => {
            let dual = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
            match bind_one(dual, true) {
                Ok(listener) => Ok((listener, " (IPv4 and IPv6)")),
                Err(e) if no_ipv6(&e) => {
                    bind_one(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)), false)
                        .map(|b| (b, " (IPv4 only: this host has no IPv6)"))
                }
                Err(e) => Err(e),
            }
        }
    };
    let (listener, scope) = result.map_err(|e| bind_error(addr, &e))?;
    let local_addr = listener.local_addr().map_err(|e| bind_error(addr, &e))?;
    Ok(Bound {
        listener,
        local_addr,
        scope,
    })
}

fn bind_one(addr: SocketAddr, dual_stack: bool) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if dual_stack {
        socket.set_only_v6(false)?;
    }
    // Lets a restarted wssify bind while old connections sit in TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

fn no_ipv6(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::AddrNotAvailable | io::ErrorKind::Unsupported
    ) || e.raw_os_error() == Some(97) // EAFNOSUPPORT
}

fn bind_error(addr: &ListenAddr, e: &io::Error) -> StartupError {
    let port = match addr {
        ListenAddr::AllInterfaces(port) => *port,
        ListenAddr::Addr(a) => a.port(),
    };
    let why = match e.kind() {
        io::ErrorKind::AddrInUse => format!(
            "port {port} is already in use by another program; stop it or choose another port (`ss -ltnp 'sport = :{port}'` shows who has it)"
        ),
        io::ErrorKind::PermissionDenied => format!(
            "permission denied for port {port}; ports below 1024 need a privilege: run `sudo setcap cap_net_bind_service=+ep $(command -v wssify)` once, or listen on a high port and map it (docker run -p 443:9300)"
        ),
        io::ErrorKind::AddrNotAvailable => {
            "that IP is not an address of this machine; use a bare port to listen everywhere, or an address `ip addr` shows".to_string()
        }
        _ => format!("cannot listen ({e})"),
    };
    StartupError::new(format!("--listen {addr}: {why}"))
}

/// Accepts until the drain starts. `limit` holds one permit per connection
/// allowed at once.
pub async fn accept_loop(
    bound: Bound,
    shared: Arc<Shared>,
    limit: Arc<Semaphore>,
    max_conns: usize,
    coordinator: Arc<Coordinator>,
) {
    let Bound {
        listener,
        local_addr,
        ..
    } = bound;
    let mut phase = coordinator.watch();
    let mut backoff = BACKOFF_MIN;
    let mut failing = false;
    let mut last_at_limit: Option<tokio::time::Instant> = None;
    loop {
        let permit = match limit.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                let now = tokio::time::Instant::now();
                if last_at_limit.is_none_or(|at| now - at >= LIMIT_REPORT_QUIET) {
                    warn!(
                        "{local_addr}: connection limit reached (--max-conns {}); new clients wait until a connection ends",
                        max_conns
                    );
                }
                last_at_limit = Some(now);
                let waited = tokio::select! {
                    permit = limit.clone().acquire_owned() => permit,
                    _ = reached(&mut phase, Phase::Draining) => break,
                };
                let Ok(permit) = waited else { break };
                debug!("{local_addr}: below the connection limit again; accepting");
                permit
            }
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = reached(&mut phase, Phase::Draining) => break,
        };
        match accepted {
            Ok((tcp, peer)) => {
                // Show IPv4 clients of a dual-stack socket as plain IPv4.
                let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
                if failing {
                    info!("{local_addr}: accepting again");
                    failing = false;
                }
                backoff = BACKOFF_MIN;
                tokio::spawn(connection::serve(
                    tcp,
                    peer,
                    shared.clone(),
                    coordinator.watch(),
                    permit,
                    coordinator.guard(),
                ));
            }
            Err(e) if is_per_connection(&e) => {
                debug!("{local_addr}: a connection failed while being accepted: {e}");
            }
            Err(e) => {
                if !failing {
                    warn!(
                        "{local_addr}: cannot accept ({e}); pausing and retrying{}",
                        if e.raw_os_error() == Some(24) || e.raw_os_error() == Some(23) {
                            " (raise the open-file limit, e.g. LimitNOFILE= in systemd, or lower --max-conns)"
                        } else {
                            ""
                        }
                    );
                    failing = true;
                }
                drop(permit);
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = reached(&mut phase, Phase::Draining) => break,
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
    // Closing the socket is what makes new clients see a refusal.
    drop(listener);
    debug!("{local_addr}: listener closed");
}

/// Errors that concern only the connection being accepted, not the listener.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}
