//! Binding the listening sockets and running the accept loops.
//!
//! The accept loop is where overload is handled: at `--max-conns` or
//! `--max-handshakes` it stops accepting until a connection or a handshake
//! ends (logged once per burst), so further clients wait in the kernel's
//! accept queue; over `--max-conns-per-ip` a new connection is closed at
//! once; an accept error that concerns one connection is skipped, and
//! running out of descriptors or memory backs off instead of spinning.
//!
//! A listener is TCP or a UNIX socket (`--listen unix:/path`, made by
//! `unix_listen`); what is accepted is a [`Socket`] either way. A UNIX
//! client has no address, so `--max-conns-per-ip` does not count it.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use log::{debug, info, warn};
use socket2::{Domain, Protocol, SockRef, Type};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::conn_id::{ConnId, Peer, Who};
use crate::connection::{self, Shared};
use crate::error::StartupError;
use crate::observe::metrics::{self, Limit};
use crate::port_holder;
use crate::ratelog::{Kind, info_limited};
use crate::settings::{ListenAddr, format_duration};
use crate::shutdown::{ConnectionGuard, Coordinator, Phase, reached};
use crate::socket::Socket;
use crate::systemd;
use crate::unix_listen;

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
    pub listener: Listener,
    /// The address it is bound to (with the real port when 0 was asked).
    pub local_addr: Local,
    /// `(IPv4 and IPv6)` or similar, for the startup line.
    pub scope: &'static str,
    /// Its place in the metrics' per-listener counts.
    pub stats: u16,
}

/// A listening socket: TCP, or UNIX with the file it made (removed when
/// the listener is dropped).
pub enum Listener {
    /// `--listen PORT`, `IP:PORT`.
    Tcp(TcpListener),
    /// `--listen unix:/path`, and its name (as in [`Local::Unix`]).
    Unix(unix_listen::Bound, &'static str),
    /// A UNIX socket systemd passed (`--listen systemd`): its file is
    /// systemd's, never removed here.
    PassedUnix(tokio::net::UnixListener, &'static str),
}

/// Where a listener listens, as its log lines name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Local {
    /// A TCP address.
    Tcp(SocketAddr),
    /// `unix:/path`, made once per listener and kept for the process's
    /// life: each of its clients' log lines names it (`conn_id::Peer`).
    Unix(&'static str),
}

impl Local {
    /// The TCP address, `None` for a UNIX socket.
    pub fn tcp(&self) -> Option<SocketAddr> {
        match self {
            Local::Tcp(addr) => Some(*addr),
            Local::Unix(_) => None,
        }
    }
}

impl std::fmt::Display for Local {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Local::Tcp(addr) => write!(f, "{addr}"),
            Local::Unix(name) => f.write_str(name),
        }
    }
}

impl Listener {
    /// A client already waiting in the kernel's accept queue, without
    /// waiting for one (`None`: the queue is empty), for the last sweep
    /// before the socket closes.
    fn accept_queued(&self) -> io::Result<Option<(Socket, Peer)>> {
        let accepted = match self {
            Listener::Tcp(listener) => SockRef::from(listener).accept(),
            Listener::Unix(bound, _) => SockRef::from(&bound.listener).accept(),
            Listener::PassedUnix(listener, _) => SockRef::from(listener).accept(),
        };
        let (socket, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) => return Err(e),
        };
        socket.set_nonblocking(true)?;
        match self {
            Listener::Tcp(_) => {
                let tcp = tokio::net::TcpStream::from_std(socket.into())?;
                let Some(peer) = peer.as_socket() else {
                    return Err(io::Error::other("a TCP client without an address"));
                };
                let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
                Ok(Some((Socket::Tcp(tcp), Peer::Tcp(peer))))
            }
            Listener::Unix(_, name) | Listener::PassedUnix(_, name) => {
                let unix = tokio::net::UnixStream::from_std(std::os::unix::net::UnixStream::from(
                    std::os::fd::OwnedFd::from(socket),
                ))?;
                Ok(Some((Socket::from(unix), Peer::Unix(name))))
            }
        }
    }

    /// The next client, and who it is. IPv4 clients of a dual-stack socket
    /// are shown as plain IPv4; a UNIX client by the socket's `name`.
    async fn accept(&self) -> io::Result<(Socket, Peer)> {
        match self {
            Listener::Tcp(listener) => {
                let (tcp, peer) = listener.accept().await?;
                let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
                Ok((Socket::Tcp(tcp), Peer::Tcp(peer)))
            }
            Listener::Unix(bound, name) => {
                let (unix, _) = bound.listener.accept().await?;
                Ok((Socket::from(unix), Peer::Unix(name)))
            }
            Listener::PassedUnix(listener, name) => {
                let (unix, _) = listener.accept().await?;
                Ok((Socket::from(unix), Peer::Unix(name)))
            }
        }
    }
}

/// The listeners of one `--listen` value: the sockets systemd passed for
/// `systemd[:NAME]` (one or more), else the one [`bind`] makes.
/// `reuse_port`: see [`bind`].
pub fn bind_all(addr: &ListenAddr, reuse_port: bool) -> Result<Vec<Bound>, StartupError> {
    let ListenAddr::Systemd(name) = addr else {
        return bind(addr, reuse_port).map(|bound| vec![bound]);
    };
    let passed = systemd::take(name.as_deref());
    if passed.is_empty() {
        let left = systemd::names_left();
        return Err(StartupError::new(
            match (name, systemd::has_passed() || !left.is_empty()) {
                (_, false) => format!(
                    "--listen {addr}: systemd passed no socket to this process (no LISTEN_FDS for it): start wssify from a socket unit (deploy/systemd/wssify.socket), or listen on a port (--listen 443)"
                ),
                (Some(name), true) => format!(
                    "--listen {addr}: systemd passed no socket named {name} (FileDescriptorName=); the sockets left are named {}",
                    left.join(", ")
                ),
                (None, true) => {
                    format!("--listen {addr}: every socket systemd passed is taken already")
                }
            },
        ));
    }
    passed
        .into_iter()
        .map(|(fd, name)| {
            adopt(fd, &name).map_err(|e| {
                StartupError::new(format!(
                    "--listen {addr}: the socket systemd passed as {name} cannot be used: {e}"
                ))
            })
        })
        .collect()
}

/// A listening socket systemd passed, as a listener of ours: TCP or UNIX,
/// as the socket unit made it.
fn adopt(fd: std::os::fd::OwnedFd, name: &str) -> io::Result<Bound> {
    let socket = socket2::Socket::from(fd);
    if socket.r#type()? != Type::STREAM {
        return Err(io::Error::other(
            "it is not a stream socket (ListenStream= in the socket unit)",
        ));
    }
    socket.set_nonblocking(true)?;
    let local = socket.local_addr()?;
    if let Some(addr) = local.as_socket() {
        let listener = TcpListener::from_std(socket.into())?;
        return Ok(Bound {
            listener: Listener::Tcp(listener),
            local_addr: Local::Tcp(addr),
            scope: " (from systemd)",
            stats: metrics::register_listener(addr.to_string()),
        });
    }
    let path = local
        .as_pathname()
        .map_or(format!("unix:systemd:{name}"), |p| {
            format!("unix:{}", p.display())
        });
    // Leaked once per listener, as for `--listen unix:`.
    let shown: &'static str = Box::leak(
        crate::logsafe::bare(path.as_bytes())
            .to_string()
            .into_boxed_str(),
    );
    let listener = tokio::net::UnixListener::from_std(std::os::unix::net::UnixListener::from(
        std::os::fd::OwnedFd::from(socket),
    ))?;
    Ok(Bound {
        listener: Listener::PassedUnix(listener, shown),
        local_addr: Local::Unix(shown),
        scope: " (from systemd)",
        stats: metrics::register_listener(shown.to_string()),
    })
}

/// Binds one `--listen` value. A bare port binds `[::]` for IPv4 and IPv6
/// together, or `0.0.0.0` on hosts without IPv6.
///
/// `reuse_port` (`--reuse-port`): the TCP port may be bound by another
/// wssify that also asked for it, and new clients go to the newest (see
/// [`steer_to_newest`]): how one wssify replaces another without a
/// refused connection.
pub fn bind(addr: &ListenAddr, reuse_port: bool) -> Result<Bound, StartupError> {
    try_bind(addr, reuse_port).map_err(|failure| failure.message)
}

/// Why a `--listen` value could not be bound.
pub struct BindError {
    /// The one line a start stops with, naming the flag and the fix.
    pub message: StartupError,
    /// Another wssify holds the port: for `--check`, most likely the one
    /// the checked flags are about to replace.
    pub held_by_wssify: bool,
}

/// [`bind`], telling `--check` who holds a port in use. `--check` binds
/// through here so that it and a start say the same thing.
pub fn try_bind(addr: &ListenAddr, reuse_port: bool) -> Result<Bound, BindError> {
    if let ListenAddr::Unix { path, mode } = addr {
        return match unix_listen::bind(path, *mode, BACKLOG) {
            Ok(bound) => {
                // Leaked once per listener: its clients' `Who` is `Copy`.
                let name: &'static str = Box::leak(
                    crate::logsafe::bare(addr.to_string().as_bytes())
                        .to_string()
                        .into_boxed_str(),
                );
                Ok(Bound {
                    listener: Listener::Unix(bound, name),
                    local_addr: Local::Unix(name),
                    scope: "",
                    stats: metrics::register_listener(name.to_string()),
                })
            }
            Err(failure) => Err(BindError {
                message: StartupError::new(format!("--listen {addr}: {}", failure.why)),
                held_by_wssify: failure.held_by_wssify,
            }),
        };
    }
    let result = match *addr {
        ListenAddr::Addr(socket_addr) => bind_one(socket_addr, false, reuse_port).map(|b| (b, "")),
        ListenAddr::Unix { .. } => unreachable!("bound above"),
        ListenAddr::Systemd(_) => {
            return Err(BindError {
                message: StartupError::new(format!(
                    "--listen {addr}: systemd's sockets are taken at start, not bound"
                )),
                held_by_wssify: false,
            });
        }
        ListenAddr::AllInterfaces(port) => {
            let dual = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
            match bind_one(dual, true, reuse_port) {
                Ok(listener) => Ok((listener, " (IPv4 and IPv6)")),
                Err(e) if no_ipv6(&e) => bind_one(
                    SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
                    false,
                    reuse_port,
                )
                .map(|b| (b, " (IPv4 only: this host has no IPv6)")),
                Err(e) => Err(e),
            }
        }
    };
    let (listener, scope) = result.map_err(|e| bind_error(addr, &e))?;
    let local_addr = listener.local_addr().map_err(|e| bind_error(addr, &e))?;
    Ok(Bound {
        listener: Listener::Tcp(listener),
        local_addr: Local::Tcp(local_addr),
        scope,
        stats: metrics::register_listener(local_addr.to_string()),
    })
}

fn bind_one(addr: SocketAddr, dual_stack: bool, reuse_port: bool) -> io::Result<TcpListener> {
    let socket =
        socket2::Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if dual_stack {
        socket.set_only_v6(false)?;
    }
    // Lets a restarted wssify bind while old connections sit in TIME_WAIT.
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    // After listen: attached before, the program makes the port's group
    // refuse the next bind (EADDRINUSE, seen on Linux 6.18).
    if reuse_port {
        steer_to_newest(&socket)?;
    }
    TcpListener::from_std(socket.into())
}

/// With `--reuse-port`, the sockets bound to one port form a group, and the
/// kernel spreads new connections over them by a hash: an old wssify would
/// keep getting its share until it closes, and closing resets whatever
/// waits in its queue. A one-instruction classic BPF program on the group
/// ("the socket at place 1") sends every new connection to the second
/// socket, the newer wssify, from the moment it listens; alone in the
/// group, place 1 does not exist and the kernel picks the only socket. The
/// old one then accepts what its queue still holds and closes
/// (`accept_queued`), and no client is refused or reset.
fn steer_to_newest(socket: &socket2::Socket) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // BPF_RET | BPF_K: return the constant 1.
    let program = [libc::sock_filter {
        code: 0x06,
        jt: 0,
        jf: 0,
        k: 1,
    }];
    let fprog = libc::sock_fprog {
        len: 1,
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: setsockopt reads `fprog` (and the one instruction it points
    // to, which outlives the call) during the call only; the descriptor is
    // this socket's own. No safe wrapper exists for this option (socket2
    // has none, and rustix would be a new dependency for one call).
    let done = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            std::ptr::from_ref(&fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if done != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn no_ipv6(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::AddrNotAvailable | io::ErrorKind::Unsupported
    ) || e.raw_os_error() == Some(97) // EAFNOSUPPORT
}

/// The lowest port anyone may bind without a privilege, from the kernel
/// (`net.ipv4.ip_unprivileged_port_start`, which covers IPv6 too), or
/// the traditional 1024.
fn unprivileged_port_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(1024)
}

fn bind_error(addr: &ListenAddr, e: &io::Error) -> BindError {
    let (port, ip) = match addr {
        ListenAddr::AllInterfaces(port) => (*port, None),
        ListenAddr::Addr(a) => (a.port(), Some(a.ip())),
        ListenAddr::Unix { .. } | ListenAddr::Systemd(_) => (0, None),
    };
    let mut held_by_wssify = false;
    let why = match e.kind() {
        io::ErrorKind::AddrInUse => match port_holder::listening_on(port) {
            Some(holder) if holder.is_this_process() => format!(
                "port {port} is already taken by another --listen of this wssify; give each address once"
            ),
            Some(holder) => {
                held_by_wssify = holder.name == "wssify";
                format!(
                    "port {port} is already in use by {} (pid {}); stop it or choose another port",
                    holder.name, holder.pid
                )
            }
            None => format!(
                "port {port} is already in use by another program; stop it or choose another port (`ss -ltnp 'sport = :{port}'` shows which)"
            ),
        },
        io::ErrorKind::PermissionDenied => {
            let start = unprivileged_port_start();
            if port < start {
                format!(
                    "permission denied for port {port}: ports below {start} need a privilege; run `sudo setcap cap_net_bind_service=+ep $(command -v wssify)` once, or give its systemd unit AmbientCapabilities=CAP_NET_BIND_SERVICE, or lower the sysctl net.ipv4.ip_unprivileged_port_start to {port}; or listen on a high port and map it (docker run -p {port}:9300)"
                )
            } else {
                format!(
                    "permission denied for port {port} ({e}), which needs no privilege: a security policy (SELinux, AppArmor, seccomp) refuses it"
                )
            }
        }
        io::ErrorKind::AddrNotAvailable => format!(
            "{} is not an address of this host; use a bare port to listen everywhere, or an address `ip addr` shows",
            ip.map_or("that IP".to_string(), |ip| ip.to_string())
        ),
        _ => format!("cannot listen ({e})"),
    };
    BindError {
        message: StartupError::new(format!("--listen {addr}: {why}")),
        held_by_wssify,
    }
}

/// What an accept loop admits clients by; shared by every listener.
#[derive(Clone)]
pub struct Gates {
    /// One permit per connection allowed at once (`--max-conns`).
    pub conns: Arc<Semaphore>,
    /// `--max-conns`, for the log line when it is reached.
    pub max_conns: usize,
    /// One permit per handshake under way (`--max-handshakes`), held by a
    /// connection from its whole first ClientHello record to the end of
    /// its handshake. The accept loop waits for room before `accept()`
    /// without holding it, so past the limit new clients wait in the
    /// kernel's accept queue.
    pub handshakes: Arc<Semaphore>,
    /// `--max-handshakes`, for the log line when it is reached.
    pub max_handshakes: usize,
    /// Open connections per client address, with `--max-conns-per-ip`.
    pub per_ip: Option<Arc<PerIp>>,
}

/// What an accepted connection holds for its whole life; dropping it frees
/// its place under `--max-conns` and `--max-conns-per-ip`, and tells the
/// drain the connection has ended.
pub struct Held {
    /// Its `--max-conns` permit.
    pub permit: OwnedSemaphorePermit,
    /// Its place in the drain's count.
    pub guard: ConnectionGuard,
    /// Its place in its listener's open count (metrics), and in its
    /// address's count when that is limited.
    pub place: IpSlot,
}

/// Accepts until the drain starts.
pub async fn accept_loop(
    bound: Bound,
    shared: Arc<Shared>,
    gates: Gates,
    coordinator: Arc<Coordinator>,
) {
    let Bound {
        listener,
        local_addr,
        stats,
        ..
    } = bound;
    let mut phase = coordinator.watch();
    let mut backoff = BACKOFF_MIN;
    // Since when, and how often, accept() has failed for want of resources.
    let mut failing: Option<(tokio::time::Instant, u64)> = None;
    let mut conns_full = None;
    let mut handshakes_full = None;
    let mut sweeping = false;
    loop {
        let Some(permit) = take(&gates.conns, Limit::MaxConns, &mut phase, &mut conns_full, || {
            warn!(
                "{local_addr}: connection limit reached (--max-conns {}); new clients wait until a connection ends",
                gates.max_conns
            );
        })
        .await
        else {
            break;
        };
        // Room for one more handshake is waited for, not held: the slot is
        // taken by the connection once its ClientHello's first record is
        // whole (see `connection`), and waiting in line behind
        // connections that want theirs back (the semaphore is fair) keeps
        // the loop from holding a slot idle in accept() meanwhile.
        let Some(room) = take(&gates.handshakes, Limit::Handshakes, &mut phase, &mut handshakes_full, || {
            warn!(
                "{local_addr}: handshake limit reached (--max-handshakes {}); new clients wait until a handshake ends",
                gates.max_handshakes
            );
        })
        .await
        else {
            break;
        };
        drop(room);
        let accepted = if sweeping {
            // Draining: only the clients already in the queue.
            match listener.accept_queued() {
                Ok(Some(accepted)) => Ok(accepted),
                Ok(None) => break,
                Err(e) => Err(e),
            }
        } else {
            tokio::select! {
                accepted = listener.accept() => accepted,
                _ = reached(&mut phase, Phase::Draining) => {
                    // Clients whose connections the kernel has already
                    // completed would get a reset when the socket closes:
                    // they are accepted and served first (with
                    // --reuse-port, a new wssify takes everyone else).
                    sweeping = true;
                    continue;
                }
            }
        };
        match accepted {
            Ok((tcp, peer)) => {
                let who = Who {
                    id: ConnId::next(),
                    peer,
                };
                debug!("{who} listener={local_addr} accepted");
                if let Some((since, failures)) = failing.take() {
                    info!(
                        "{local_addr}: accepting again after {failures} failed accepts over {}",
                        format_duration(since.elapsed())
                    );
                }
                backoff = BACKOFF_MIN;
                // A UNIX client has no address to count.
                let place = match (&gates.per_ip, peer.addr()) {
                    (Some(per_ip), Some(addr)) => match per_ip.admit(addr.ip()) {
                        Ok(slot) => slot,
                        Err(open) => {
                            refuse(tcp, who, addr.ip(), open, per_ip.limit);
                            continue;
                        }
                    },
                    _ => IpSlot::default(),
                };
                let held = Held {
                    permit,
                    guard: coordinator.guard(),
                    place: place.opened_on(stats),
                };
                let task = connection::serve(
                    tcp,
                    who,
                    shared.clone(),
                    coordinator.watch(),
                    held,
                    gates.handshakes.clone(),
                );
                // Every idle connection pays for its task: a change that
                // grows it fails every test that opens a connection.
                debug_assert!(
                    std::mem::size_of_val(&task) <= connection::MAX_TASK_BYTES,
                    "the connection task grew to {} bytes",
                    std::mem::size_of_val(&task)
                );
                tokio::spawn(task);
            }
            Err(_) if sweeping => break,
            Err(e) => match classify(&e) {
                AcceptError::PerConnection => {
                    debug!("{local_addr}: a connection failed while being accepted: {e}");
                }
                class => {
                    let (_, failures) =
                        failing.get_or_insert_with(|| (tokio::time::Instant::now(), 0));
                    *failures += 1;
                    if *failures == 1 {
                        warn!(
                            "{local_addr}: cannot accept ({e}); pausing and retrying{}",
                            match class {
                                AcceptError::OutOfDescriptors => {
                                    " (raise the open-file limit, e.g. LimitNOFILE= in systemd, or lower --max-conns)"
                                }
                                AcceptError::OutOfMemory => " (the kernel is short of memory)",
                                _ => "",
                            }
                        );
                    }
                    // Nothing is held while waiting: other listeners may
                    // still accept.
                    drop(permit);
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = reached(&mut phase, Phase::Draining) => break,
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            },
        }
    }
    // Closing the socket is what makes new clients see a refusal.
    drop(listener);
    debug!("{local_addr}: listener closed");
}

/// Takes a permit from `gate`, waiting for one when none is free and
/// calling `report` once per burst (a new report needs
/// [`LIMIT_REPORT_QUIET`] without reaching the limit). `None` when the
/// drain starts first.
async fn take(
    gate: &Arc<Semaphore>,
    limit: Limit,
    phase: &mut watch::Receiver<Phase>,
    last_full: &mut Option<tokio::time::Instant>,
    report: impl FnOnce(),
) -> Option<OwnedSemaphorePermit> {
    if let Ok(permit) = gate.clone().try_acquire_owned() {
        return Some(permit);
    }
    metrics::limit_hit(limit);
    let now = tokio::time::Instant::now();
    if last_full.is_none_or(|at| now - at >= LIMIT_REPORT_QUIET) {
        report();
    }
    *last_full = Some(now);
    let waited = tokio::select! {
        permit = gate.clone().acquire_owned() => permit,
        _ = reached(phase, Phase::Draining) => return None,
    };
    waited.ok()
}

/// Closes a connection over `--max-conns-per-ip` at once, before any TLS,
/// with a reset: the client learns at once, and no TIME_WAIT is left here
/// for each refusal of a flood.
fn refuse(tcp: Socket, who: Who, ip: IpAddr, open: usize, limit: usize) {
    if let Err(e) = SockRef::from(&tcp).set_linger(Some(Duration::ZERO)) {
        debug!("{who}: cannot set SO_LINGER for the refusal: {e}");
    }
    drop(tcp);
    metrics::limit_hit(Limit::PerIp);
    info_limited!(
        Kind::PerIpRefused,
        "{who} end=\"refused: {open} connections already open from {ip} (--max-conns-per-ip {limit})\""
    );
}

/// Open connections per client address, for `--max-conns-per-ip`.
///
/// An address is in the map only while it has a connection open, so the
/// map is as large as the number of distinct clients connected now, never
/// the number seen since start. The lock is held for one hash-map update
/// per connect and per close; the map's hasher is keyed at random, so
/// clients cannot pick addresses that collide.
pub struct PerIp {
    limit: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One open connection's place in its address's count (when
/// `--max-conns-per-ip` is set) and in its listener's open count (metrics);
/// dropping it gives both back, and forgets the address with its last
/// connection. One struct, so the listener's index sits in what was the
/// address slot's padding: every idle connection holds one, and the
/// connection task keeps its size (an 8-byte handle would have pushed it
/// over tokio's next 128-byte step in a release build).
pub struct IpSlot {
    map: Option<Arc<PerIp>>,
    ip: IpAddr,
    /// Its listener's index in the metrics; `u16::MAX`: none.
    listener: u16,
}

impl Default for IpSlot {
    /// No address counted, no listener.
    fn default() -> IpSlot {
        IpSlot {
            map: None,
            ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            listener: u16::MAX,
        }
    }
}

impl IpSlot {
    /// Counts the connection as open on `listener` until dropped.
    pub fn opened_on(mut self, listener: u16) -> IpSlot {
        metrics::listener_opened(listener);
        self.listener = listener;
        self
    }
}

impl PerIp {
    /// Counts connections against `limit` per address.
    pub fn new(limit: usize) -> Arc<PerIp> {
        Arc::new(PerIp {
            limit,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Counts one more connection from `ip`; `Err` with the number already
    /// open when that is the limit.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<IpSlot, usize> {
        let mut open = self.lock();
        let count = open.entry(ip).or_insert(0);
        if *count >= self.limit {
            return Err(*count);
        }
        *count += 1;
        Ok(IpSlot {
            map: Some(self.clone()),
            ip,
            listener: u16::MAX,
        })
    }

    /// Addresses with a connection open now.
    pub fn addresses(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
        // A panic while holding the lock cannot leave a count half
        // updated: every update is one statement.
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        if self.listener != u16::MAX {
            metrics::listener_closed(self.listener);
        }
        let Some(map) = &self.map else {
            return;
        };
        let mut open = map.lock();
        if let Some(count) = open.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.ip);
                // Give back the room a past crowd of addresses took.
                let len = open.len();
                if open.capacity() > 64 && len < open.capacity() / 4 {
                    open.shrink_to(len * 2);
                }
            }
        }
    }
}

/// What an accept error says about the listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AcceptError {
    /// Only the connection being accepted failed (it was reset, a firewall
    /// refused it, its network went away): skip it and accept the next.
    PerConnection,
    /// Out of file descriptors (EMFILE, ENFILE): back off until
    /// connections end.
    OutOfDescriptors,
    /// Out of kernel memory (ENOBUFS, ENOMEM): back off.
    OutOfMemory,
    /// Anything else concerns the listening socket itself; backing off
    /// keeps a persistent error from spinning the loop.
    Listener,
}

/// Sorts an accept error by its OS error code, which is more precise than
/// `io::ErrorKind` (EPROTO and EPERM, say, have no kind of their own).
/// Linux passes errors already pending on the new socket back from
/// accept() (see `man 2 accept`): those concern that connection only.
fn classify(e: &io::Error) -> AcceptError {
    let Some(code) = e.raw_os_error() else {
        return match e.kind() {
            io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
            | io::ErrorKind::TimedOut => AcceptError::PerConnection,
            io::ErrorKind::OutOfMemory => AcceptError::OutOfMemory,
            _ => AcceptError::Listener,
        };
    };
    match code {
        libc::EMFILE | libc::ENFILE => AcceptError::OutOfDescriptors,
        libc::ENOBUFS | libc::ENOMEM => AcceptError::OutOfMemory,
        libc::ECONNABORTED
        | libc::ECONNRESET
        | libc::EPROTO
        | libc::EPERM
        | libc::ENETDOWN
        | libc::ENETUNREACH
        | libc::EHOSTDOWN
        | libc::EHOSTUNREACH
        | libc::ENOPROTOOPT
        | libc::EOPNOTSUPP
        | libc::ETIMEDOUT
        | libc::EINTR
        | libc::EAGAIN => AcceptError::PerConnection,
        #[cfg(any(target_os = "linux", target_os = "android"))]
        libc::ENONET => AcceptError::PerConnection,
        _ => AcceptError::Listener,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(code: i32) -> AcceptError {
        classify(&io::Error::from_raw_os_error(code))
    }

    #[test]
    fn errors_of_one_connection_are_skipped() {
        for code in [
            libc::ECONNABORTED,
            libc::ECONNRESET,
            libc::EPROTO,
            libc::EPERM,
            libc::ENETDOWN,
            libc::ENETUNREACH,
            libc::EHOSTDOWN,
            libc::EHOSTUNREACH,
            libc::ENONET,
            libc::ENOPROTOOPT,
            libc::EOPNOTSUPP,
            libc::ETIMEDOUT,
            libc::EINTR,
            libc::EAGAIN,
            libc::EWOULDBLOCK,
        ] {
            assert_eq!(os(code), AcceptError::PerConnection, "errno {code}");
        }
        let aborted = io::Error::new(io::ErrorKind::ConnectionAborted, "aborted");
        assert_eq!(classify(&aborted), AcceptError::PerConnection);
    }

    #[test]
    fn exhaustion_backs_off_and_says_which() {
        assert_eq!(os(libc::EMFILE), AcceptError::OutOfDescriptors);
        assert_eq!(os(libc::ENFILE), AcceptError::OutOfDescriptors);
        assert_eq!(os(libc::ENOBUFS), AcceptError::OutOfMemory);
        assert_eq!(os(libc::ENOMEM), AcceptError::OutOfMemory);
    }

    #[test]
    fn errors_of_the_listener_back_off() {
        for code in [libc::EBADF, libc::EINVAL, libc::ENOTSOCK, libc::EFAULT] {
            assert_eq!(os(code), AcceptError::Listener, "errno {code}");
        }
        let other = io::Error::other("something else");
        assert_eq!(classify(&other), AcceptError::Listener);
    }

    #[test]
    fn per_ip_counts_refuse_over_the_limit_and_forget_closed_addresses() {
        let per_ip = PerIp::new(2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        let first = per_ip.admit(a).unwrap();
        let second = per_ip.admit(a).unwrap();
        assert_eq!(per_ip.admit(a).err(), Some(2));
        let other = per_ip.admit(b).unwrap();
        assert_eq!(per_ip.addresses(), 2);
        drop(first);
        let third = per_ip.admit(a).unwrap();
        drop((second, third, other));
        assert_eq!(
            per_ip.addresses(),
            0,
            "no address stays without a connection"
        );
    }

    #[test]
    fn per_ip_memory_follows_the_clients_connected_now() {
        let per_ip = PerIp::new(1);
        let slots: Vec<_> = (0..10_000u32)
            .map(|n| per_ip.admit(IpAddr::from(n.to_be_bytes())).unwrap())
            .collect();
        assert_eq!(per_ip.addresses(), 10_000);
        drop(slots);
        assert_eq!(per_ip.addresses(), 0);
        assert!(per_ip.lock().capacity() <= 128, "the map shrank back");
    }
}
