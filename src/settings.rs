//! Validated, typed settings: what the rest of wssify runs on.
//!
//! Nothing here does I/O; the parsers turn the user's text into addresses
//! and durations and say, in plain words, what they expected instead.
//! `cli` adds the flag name to those words.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// How long a connection may sit with no byte moving before it is closed.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// How long a client has to finish the TLS handshake.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a backend has to accept the TCP connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often backend names are resolved again, off the connection path.
pub const DEFAULT_RESOLVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long open connections may run on after SIGTERM/SIGINT.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a peer may leave bytes waiting for it without taking any: longer
/// than the radio outages (tunnels, lifts, hand-overs) that a phone's TCP
/// connection survives, so a healthy mobile WebSocket is never cut; a peer
/// that takes nothing for this long has gone (TCP itself gives up after
/// about 15 minutes of retransmissions) or is hostile.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(300);

/// Everything wssify needs to run, already checked.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The addresses to accept TLS on.
    pub listen: Vec<ListenAddr>,
    /// The plain TCP servers the decrypted bytes go to (`--to`, in order):
    /// every name no route claims. Empty only when routes serve every
    /// connection (`--route`, `--passthrough`).
    pub backends: Vec<Backend>,
    /// Names sent elsewhere by the ClientHello's SNI (`--route`,
    /// `--passthrough`), one entry per name, in the order first given.
    pub routes: Vec<Route>,
    /// How a client's connection picks among the backends.
    pub balance: Balance,
    /// Most connect attempts per client, each to another backend; `None`:
    /// every backend once.
    pub connect_retries: Option<usize>,
    /// How often backend names are resolved again in the background.
    pub resolve_interval: Duration,
    /// Where the certificates come from, and client certificate checks.
    pub certs: CertSettings,
    /// `None` means connections are never closed for being idle.
    pub idle_timeout: Option<Duration>,
    /// Limit on the first bytes plus the TLS handshake.
    pub handshake_timeout: Duration,
    /// Limit on each attempt to connect to a backend.
    pub connect_timeout: Duration,
    /// Limit on letting open connections finish at shutdown.
    pub drain_timeout: Duration,
    /// `None` derives the limit from the open-file limit and the memory
    /// budget at start.
    pub max_conns: Option<usize>,
    /// Bytes that all connections' buffers may hold together; `None`
    /// derives it at start from the cgroup memory limit or physical memory
    /// (see `limits::default_max_memory`).
    pub max_memory: Option<usize>,
    /// Close a connection when a peer has taken none of the bytes waiting
    /// for it for this long; `None`: never.
    pub stall_timeout: Option<Duration>,
    /// TLS handshakes in progress at once; further clients wait in the
    /// kernel's accept queue.
    pub max_handshakes: usize,
    /// Connections open at once from one client address; `None`: no limit
    /// (carriers put many users behind one address).
    pub max_conns_per_ip: Option<usize>,
    /// The oldest TLS version offered.
    pub tls_min: TlsMin,
    /// ALPN protocols offered, in order of preference; empty offers none.
    pub alpn: Vec<Vec<u8>>,
    /// The PROXY protocol header sent to the backend first; `None`: none.
    pub proxy_protocol: Option<crate::wire::proxy_header::Version>,
    /// Worker threads for the runtime.
    pub threads: usize,
    /// How long an idle worker checks for I/O before it sleeps; `None`
    /// sleeps at once (see `runtime`).
    pub busy_poll: Option<Duration>,
    /// Where handshakes run (`--handshake-priority`, see `priority`).
    pub handshake_priority: crate::priority::HandshakePriority,
    /// TCP listeners may share their port with a newer wssify, which then
    /// takes every new client (`--reuse-port`, for upgrades).
    pub reuse_port: bool,
    /// Where `/metrics`, `/healthz` and `/readyz` are served (`--admin`);
    /// `None`: nowhere.
    pub admin: Option<std::net::SocketAddr>,
    /// How log lines are written (`--log-format`).
    pub log_format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// `key=value` text lines, as always.
    #[default]
    Text,
    /// One JSON object per line, with the same fields, typed.
    Json,
}

/// Parses `--admin`: a bare port (127.0.0.1, so metrics stay local unless
/// asked), or `IP:PORT` (`[::]:9100` for every interface).
pub fn parse_admin(text: &str) -> Result<std::net::SocketAddr, String> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return parse_port(text).map(|port| std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    }
    text.parse().map_err(|_| {
        "expected a port (on 127.0.0.1) or IP:PORT, e.g. 9100 or 0.0.0.0:9100".to_string()
    })
}

impl Settings {
    /// Settings with every default, for a listener and a backend.
    pub fn new(listen: Vec<ListenAddr>, backend: Backend) -> Self {
        Self::serving(listen, vec![backend])
    }

    /// Whether any client is terminated here (`--to` or a `--route`), so
    /// that certificates are served.
    pub fn terminates(&self) -> bool {
        !self.backends.is_empty() || self.routes.iter().any(|r| r.way == Way::Terminate)
    }

    /// Settings with every default, for listeners and `--to` backends
    /// (none when routes will serve every client).
    pub fn serving(listen: Vec<ListenAddr>, backends: Vec<Backend>) -> Self {
        Self {
            listen,
            backends,
            routes: Vec::new(),
            balance: Balance::RoundRobin,
            connect_retries: None,
            resolve_interval: DEFAULT_RESOLVE_INTERVAL,
            certs: CertSettings::default(),
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            max_conns: None,
            max_memory: None,
            stall_timeout: Some(DEFAULT_STALL_TIMEOUT),
            max_handshakes: default_max_handshakes(),
            max_conns_per_ip: None,
            tls_min: TlsMin::V1_2,
            alpn: Vec::new(),
            proxy_protocol: None,
            threads: default_threads(),
            busy_poll: None,
            handshake_priority: crate::priority::HandshakePriority::Auto,
            reuse_port: false,
            admin: None,
            log_format: LogFormat::Text,
        }
    }
}

/// The smallest `--max-memory`: a few connections' worth of buffers.
pub const MIN_MAX_MEMORY: usize = 1 << 20;

/// The largest `--max-memory`: half the 128 TiB a process can address on
/// x86-64, already more buffer memory than any host has. Far enough below
/// `usize::MAX` that the budget's `used + want` sums cannot overflow.
pub const MAX_MAX_MEMORY: usize = {
    const BYTES: u64 = 64 << 40;
    if BYTES as u128 <= usize::MAX as u128 {
        BYTES as usize
    } else {
        usize::MAX / 2
    }
};

/// The longest duration any flag takes: 365 days. wssify adds timeouts to
/// `Instant`s (the handshake deadline, idle and stall deadlines, the reload
/// timer), which panics on overflow; tokio clamps its own sleeps to 30
/// years because 100 already overflow on some systems. A year is far inside
/// both and longer than any timeout needs; a flag whose limit can be
/// switched off takes 0 for that instead.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 86_400);

/// The most connections `--max-conns`, `--max-handshakes` and
/// `--max-conns-per-ip` may name: each connection holds two open files
/// (a stock kernel lets a process open about a million) and about 6 KiB
/// even when idle, so ten million is beyond any host, yet far below
/// tokio's `Semaphore::MAX_PERMITS`, whose excess panics.
pub const MAX_CONNS: usize = 10_000_000;

/// The most `--threads`: a worker per core on the largest hosts, and far
/// below what makes the runtime's per-worker allocations fail (which
/// aborts the process rather than returning an error).
pub const MAX_THREADS: usize = 1024;

/// The longest `--busy-poll` window: beyond it a worker burns more CPU
/// than a sleep and a wake-up cost, even on a VM.
pub const MAX_BUSY_POLL: Duration = Duration::from_millis(10);

/// The cores this process may run on, or 1 when that cannot be known.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Handshakes in progress per core by default. A core completes about
/// 4,000 full handshakes a second and a handshake mostly waits for the
/// client's next flight (one round trip), so 256 per core never holds back
/// a real client, while a flood of clients that open handshakes and stall
/// waits in the kernel's accept queue instead of holding state here.
pub const HANDSHAKES_PER_CORE: usize = 256;

/// The default `--max-handshakes`: [`HANDSHAKES_PER_CORE`] per core.
pub fn default_max_handshakes() -> usize {
    HANDSHAKES_PER_CORE * default_threads()
}

/// How often certificate files are re-read even without a change event.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(30);

/// Every file that makes up the TLS identity and client checks; all of them
/// are re-read on reload. With no pair and no directory, a development
/// certificate is served (see [`DevCert`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSettings {
    /// `--cert`/`--key` pairs in order; the first is the default certificate.
    pub pairs: Vec<CertPair>,
    /// `--cert-dir` directories, each holding `NAME.crt`+`NAME.key` or `NAME.pem`.
    pub dirs: Vec<PathBuf>,
    /// Refuse handshakes whose SNI matches no certificate.
    pub strict_sni: bool,
    /// Client certificates must chain to this PEM bundle.
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: clients without a certificate are admitted.
    pub client_ca_optional: bool,
    /// Revocation lists for client certificates.
    pub crls: Vec<PathBuf>,
    /// `None`: no watching and no timer; SIGHUP still reloads.
    pub reload_interval: Option<Duration>,
    /// Where the development certificate comes from when no certificate
    /// is given.
    pub dev: DevCert,
    /// Names the development certificate covers besides localhost,
    /// 127.0.0.1 and ::1: the `--route` names under `.localhost`, the only
    /// ones the development CA may sign, so that routing works on the
    /// first day without a certificate of one's own.
    pub dev_names: Vec<String>,
    /// `--acme`: certificates obtained from an ACME CA, kept in a directory.
    pub acme: Option<crate::acme::AcmeSettings>,
    /// `--ticket-keys`: session ticket keys shared by every replica.
    pub ticket_keys: Option<PathBuf>,
}

/// Where the development certificate comes from (no `--cert`, no
/// `--cert-dir`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DevCert {
    /// Signed at each start by the development CA kept in a directory, so
    /// that trusting the CA once lasts across restarts. `None` is the
    /// default place under the user's data directory, which falls back to
    /// [`DevCert::InMemory`] where nothing can be written there; a
    /// directory given with `--dev-ca-dir` must work or the start fails.
    Ca(Option<PathBuf>),
    /// `--self-signed`: a self-signed certificate made in memory at each
    /// start; nothing is read or written.
    InMemory,
}

impl Default for CertSettings {
    fn default() -> Self {
        Self {
            pairs: Vec::new(),
            dirs: Vec::new(),
            strict_sni: false,
            client_ca: None,
            client_ca_optional: false,
            crls: Vec::new(),
            reload_interval: Some(DEFAULT_RELOAD_INTERVAL),
            dev: DevCert::Ca(None),
            dev_names: Vec::new(),
            acme: None,
            ticket_keys: None,
        }
    }
}

impl CertSettings {
    /// No certificate was given: serve a development one (see [`DevCert`]).
    pub fn development(&self) -> bool {
        self.pairs.is_empty() && self.dirs.is_empty() && self.acme.is_none()
    }
}

/// One `--cert` with its `--key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPair {
    /// A PEM chain, leaf first.
    pub cert: PathBuf,
    /// Its PEM private key.
    pub key: PathBuf,
}

/// The oldest TLS version wssify will speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMin {
    /// TLS 1.2 and 1.3 (the default: some clients still lack 1.3).
    V1_2,
    /// TLS 1.3 only.
    V1_3,
}

impl fmt::Display for TlsMin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsMin::V1_2 => "TLS 1.2, TLS 1.3",
            TlsMin::V1_3 => "TLS 1.3",
        })
    }
}

/// One `--listen` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// A bare port: every interface, IPv4 and IPv6 where the host has it.
    AllInterfaces(u16),
    /// One address.
    Addr(SocketAddr),
    /// A UNIX stream socket (`--listen unix:/path`), for local clients.
    Unix {
        /// Where the socket file is made.
        path: PathBuf,
        /// Its permission bits (`--unix-mode`); connecting takes write
        /// permission on it.
        mode: u32,
    },
    /// The sockets systemd passed (socket activation): every one, or those
    /// whose `FileDescriptorName=` is the name given (`systemd:NAME`).
    Systemd(Option<String>),
}

/// A `--listen unix:` socket's mode unless `--unix-mode` says otherwise:
/// its owner and group may connect (HAProxy's documented `mode 660`), set
/// after bind whatever the umask, so that what may connect does not depend
/// on the environment wssify was started from.
pub const DEFAULT_UNIX_MODE: u32 = 0o660;

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::AllInterfaces(port) => write!(f, "{port}"),
            ListenAddr::Addr(addr) => write!(f, "{addr}"),
            ListenAddr::Unix { path, .. } => write!(f, "unix:{}", path.display()),
            ListenAddr::Systemd(None) => f.write_str("systemd"),
            ListenAddr::Systemd(Some(name)) => write!(f, "systemd:{name}"),
        }
    }
}

/// Reads `PORT`, `:PORT`, `IP:PORT`, `[IPv6]:PORT`, `unix:/path`, or
/// `systemd[:NAME]`.
pub fn parse_listen(text: &str) -> Result<ListenAddr, String> {
    const EXPECTED: &str = "expected a port (9300), IP:PORT (127.0.0.1:9300), [IPv6]:PORT ([::1]:9300), unix:/path/to.sock or systemd";
    let text = text.trim();
    if text == "systemd" {
        return Ok(ListenAddr::Systemd(None));
    }
    if let Some(name) = text.strip_prefix("systemd:") {
        let valid = !name.is_empty()
            && name.len() <= 255
            && name.bytes().all(|b| b.is_ascii_graphic() && b != b':');
        if !valid {
            return Err(
                "expected systemd or systemd:NAME, NAME as in the socket unit's FileDescriptorName= (printable, no ':')"
                    .to_string(),
            );
        }
        return Ok(ListenAddr::Systemd(Some(name.to_string())));
    }
    if let Some(path) = text.strip_prefix("unix:") {
        return unix_path(path, "--listen unix:/run/wssify/tls.sock").map(|path| {
            ListenAddr::Unix {
                path,
                mode: DEFAULT_UNIX_MODE,
            }
        });
    }
    let bare = text.strip_prefix(':').unwrap_or(text);
    if !bare.is_empty() && bare.bytes().all(|b| b.is_ascii_digit()) {
        return parse_port(bare).map(ListenAddr::AllInterfaces);
    }
    if let Some(why) = ip_without_port("--listen", text, "9300") {
        return Err(why);
    }
    match text.parse::<SocketAddr>() {
        Ok(addr) => Ok(ListenAddr::Addr(addr)),
        Err(_) => match text.rsplit_once(':') {
            Some((host, _)) if host.parse::<IpAddr>().is_err() && !host.is_empty() => Err(format!(
                "'{host}' is not an IP address; {EXPECTED} (use 0.0.0.0 or [::] for every interface)"
            )),
            Some((_, port)) => parse_port(port).and(Err(EXPECTED.to_string())),
            None => Err(EXPECTED.to_string()),
        },
    }
}

/// Says how two `--listen` values would take the same port, so that the
/// second bind would fail, or `None` when each can be bound. A bare port
/// binds `[::]` for IPv4 and IPv6, so it overlaps any address on its port;
/// `0.0.0.0:PORT` overlaps every IPv4 address on it, `[::]:PORT` every
/// IPv6 one. Port 0 asks the kernel for a free port each time: no overlap.
pub fn listen_overlap(listen: &[ListenAddr]) -> Option<String> {
    let port = |addr: &ListenAddr| match addr {
        ListenAddr::AllInterfaces(port) => Some(*port),
        ListenAddr::Addr(addr) => Some(addr.port()),
        ListenAddr::Unix { .. } | ListenAddr::Systemd(_) => None,
    };
    let canonical = |addr: &ListenAddr| match addr {
        ListenAddr::Addr(addr) => {
            ListenAddr::Addr(SocketAddr::new(addr.ip().to_canonical(), addr.port()))
        }
        other => other.clone(),
    };
    for (i, later) in listen.iter().enumerate() {
        for earlier in &listen[..i] {
            if let (ListenAddr::Unix { path: a, .. }, ListenAddr::Unix { path: b, .. }) =
                (earlier, later)
                && a == b
            {
                return Some(format!(
                    "--listen {later} is given twice; give each socket once"
                ));
            }
            if port(earlier) != port(later) || matches!(port(later), None | Some(0)) {
                continue;
            }
            let (a, b) = (canonical(earlier), canonical(later));
            if a == b {
                return Some(format!(
                    "--listen {later} is given twice; give each address once"
                ));
            }
            let why = match (a, b) {
                (ListenAddr::AllInterfaces(_), _) | (_, ListenAddr::AllInterfaces(_)) => {
                    "a bare port already listens on every address, IPv4 and IPv6"
                }
                (ListenAddr::Unix { .. } | ListenAddr::Systemd(_), _)
                | (_, ListenAddr::Unix { .. } | ListenAddr::Systemd(_)) => continue,
                (ListenAddr::Addr(x), ListenAddr::Addr(y)) => {
                    let wide = |w: SocketAddr, o: SocketAddr| {
                        w.ip().is_unspecified() && w.is_ipv4() == o.is_ipv4()
                    };
                    if wide(x, y) || wide(y, x) {
                        if x.is_ipv4() {
                            "0.0.0.0 already listens on every IPv4 address"
                        } else {
                            "[::] already listens on every IPv6 address"
                        }
                    } else {
                        continue;
                    }
                }
            };
            return Some(format!(
                "--listen {earlier} and --listen {later} overlap: {why}; give only one of them"
            ));
        }
    }
    None
}

/// What to say about an IP address typed without a port (`127.0.0.1`,
/// `[::1]`), or an IPv6 address and port without brackets (`::1:9300`),
/// for `flag`; `port` is the example port. `None` for anything else.
fn ip_without_port(flag: &str, text: &str, port: &str) -> Option<String> {
    if let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']'))
        && inner.parse::<std::net::Ipv6Addr>().is_ok()
    {
        return Some(format!("no port in '{text}'; e.g. {flag} {text}:{port}"));
    }
    match text.parse::<IpAddr>().ok()? {
        IpAddr::V4(_) => Some(format!("no port in '{text}'; e.g. {flag} {text}:{port}")),
        IpAddr::V6(_) => match text.rsplit_once(':') {
            Some((ip, last))
                if ip.parse::<std::net::Ipv6Addr>().is_ok()
                    && !last.is_empty()
                    && last.bytes().all(|b| b.is_ascii_digit()) =>
            {
                Some(format!(
                    "an IPv6 address goes in brackets before its port: {flag} [{ip}]:{last} (or, if {last} is part of the address, {flag} [{text}]:{port})"
                ))
            }
            _ => Some(format!(
                "no port, and an IPv6 address goes in brackets: {flag} [{text}]:{port}"
            )),
        },
    }
}

/// What to say about a URL given as `--to` (`ws://host:9200/chat`): the
/// backend is a TCP address, so the scheme goes, and the path too (each
/// client's request carries its own). `None` when `text` has no scheme.
fn drop_scheme(text: &str) -> Option<String> {
    let (scheme, rest) = text.split_once("://")?;
    if scheme.is_empty()
        || !scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+.-".contains(&b))
    {
        return None;
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    let authority = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let has_port = authority.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty()
            && !port.is_empty()
            && port.bytes().all(|b| b.is_ascii_digit())
            && (!host.contains(':') || host.ends_with(']'))
    });
    let mut why = if authority.is_empty() {
        "drop the scheme: --to HOST:PORT, e.g. --to 127.0.0.1:9200".to_string()
    } else if has_port {
        format!("drop the scheme: --to {authority}")
    } else {
        format!("drop the scheme and give the port: --to {authority}:PORT")
    };
    if !path.is_empty() && path != "/" {
        why.push_str(" (the path is not needed: each client's request carries its own)");
    }
    if matches!(scheme.to_ascii_lowercase().as_str(), "wss" | "https") {
        why.push_str("; wssify speaks plain TCP to the backend, so it must not expect TLS");
    }
    Some(why)
}

/// How a client's connection picks its backend (`--balance`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// Each in turn.
    RoundRobin,
    /// The one with the fewest open connections.
    LeastConn,
    /// Any, at random.
    Random,
    /// The same one for the same client address (rendezvous hashing).
    IpHash,
}

impl Balance {
    /// Reads `round-robin`, `least-conn`, `random` or `ip-hash`.
    pub fn parse(text: &str) -> Result<Balance, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "round-robin" => Ok(Balance::RoundRobin),
            "least-conn" => Ok(Balance::LeastConn),
            "random" => Ok(Balance::Random),
            "ip-hash" => Ok(Balance::IpHash),
            _ => Err("expected round-robin, least-conn, random or ip-hash".to_string()),
        }
    }
}

impl fmt::Display for Balance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Balance::RoundRobin => "round-robin",
            Balance::LeastConn => "least-conn",
            Balance::Random => "random",
            Balance::IpHash => "ip-hash",
        })
    }
}

/// A backend: a host (name or IP) and a port, names resolved in the
/// background (`--resolve-interval`) because backends move in containers;
/// or a UNIX socket's path, for a backend on the same machine that need
/// not open a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// Over TCP.
    Tcp {
        /// A DNS name or an IP address (without brackets).
        host: String,
        /// The TCP port.
        port: u16,
    },
    /// A UNIX stream socket (`--to unix:/path`), never resolved.
    Unix(PathBuf),
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backend::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Backend::Tcp { host, port } => write!(f, "{host}:{port}"),
            Backend::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// What becomes of a connection whose SNI a route names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    /// TLS ends here, with the certificate for the name, and the
    /// decrypted bytes go to the route's backends (`--route`).
    Terminate,
    /// The client's bytes, ClientHello included, go to the route's
    /// backends untouched: TLS is between them (`--passthrough`).
    Passthrough,
}

impl Way {
    /// The flag that makes a route of this way.
    pub fn flag(self) -> &'static str {
        match self {
            Way::Terminate => "--route",
            Way::Passthrough => "--passthrough",
        }
    }
}

/// One name's route: where connections whose SNI it matches go. Several
/// backends share its clients as `--to`'s do (`--balance`, failover).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// As matched: lower case, no trailing dot; `*.example.com` matches
    /// one label under `example.com`; `*` (passthrough only) every name
    /// no other route or certificate serves, and clients without SNI.
    pub name: String,
    /// Terminated here or passed through.
    pub way: Way,
    /// In the order given (never empty).
    pub backends: Vec<Backend>,
}

/// Reads `NAME=BACKEND` (`ws.example.com=127.0.0.1:9200`,
/// `*.example.com=unix:/run/ws.sock`, `*=127.0.0.1:8443`): the name as a
/// route matches it, and the backend as [`parse_backend`] reads it.
pub fn parse_route(text: &str, way: Way) -> Result<(String, Backend), String> {
    let example = match way {
        Way::Terminate => "ws.example.com=127.0.0.1:9200",
        Way::Passthrough => "'*=127.0.0.1:8443'",
    };
    let Some((name, backend)) = text.trim().split_once('=') else {
        return Err(format!(
            "expected NAME=HOST:PORT, e.g. {} {example}",
            way.flag()
        ));
    };
    let name = name.trim().trim_end_matches('.').to_ascii_lowercase();
    if name == "*" {
        if way == Way::Terminate {
            return Err(
                "every other name goes to --to: give --to HOST:PORT instead of --route '*=...'"
                    .to_string(),
            );
        }
    } else {
        let bare = name.strip_prefix("*.").unwrap_or(&name);
        let label_ok = |label: &str| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if name.is_empty() {
            return Err(format!("no name before '='; e.g. {} {example}", way.flag()));
        }
        if bare.parse::<IpAddr>().is_ok() {
            return Err(format!(
                "'{name}' is an IP address, and clients send only names as SNI (a client that dials an IP address sends none): route the name they use, or send them to --to"
            ));
        }
        if bare.len() > 253 || !bare.split('.').all(label_ok) {
            return Err(format!(
                "'{name}' is not a server name (letters, digits, '-' and '.', or '*.' before one); e.g. {} {example}",
                way.flag()
            ));
        }
    }
    let backend = parse_backend(backend).map_err(|why| format!("after '{name}=': {why}"))?;
    if matches!(backend, Backend::Tcp { port: 0, .. }) {
        return Err(format!("after '{name}=': port 0 cannot be connected to"));
    }
    Ok((name, backend))
}

/// The longest UNIX socket path the kernel takes (`sun_path` holds 108
/// bytes with its terminating NUL).
const MAX_UNIX_PATH: usize = 107;

/// The path of a `unix:` value (`--to`, `--listen`), checked as the kernel
/// will take it; `example` is the flag as it should look.
fn unix_path(path: &str, example: &str) -> Result<PathBuf, String> {
    if path.is_empty() {
        return Err(format!("no path after unix:; e.g. {example}"));
    }
    if path.len() > MAX_UNIX_PATH {
        return Err(format!(
            "the socket path is {} bytes, and the kernel takes at most {MAX_UNIX_PATH}; use a shorter path (or a symlink to its directory)",
            path.len()
        ));
    }
    if path.contains('\0') {
        return Err("a socket path cannot hold a NUL byte".to_string());
    }
    Ok(PathBuf::from(path))
}

/// Reads `HOST:PORT`, `[IPv6]:PORT`, a bare `PORT` meaning 127.0.0.1, or
/// `unix:/path/to.sock`.
pub fn parse_backend(text: &str) -> Result<Backend, String> {
    const EXPECTED: &str =
        "expected HOST:PORT (127.0.0.1:9200, ws-server:9200, [::1]:9200) or unix:/path/to.sock";
    let text = text.trim();
    if let Some(path) = text.strip_prefix("unix:") {
        return unix_path(path, "--to unix:/run/app/ws.sock").map(Backend::Unix);
    }
    if let Some(why) = drop_scheme(text) {
        return Err(why);
    }
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        let port = parse_port(text)?;
        return Ok(Backend::Tcp {
            host: "127.0.0.1".to_string(),
            port,
        });
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(Backend::Tcp {
            host: addr.ip().to_string(),
            port: addr.port(),
        });
    }
    if let Some(why) = ip_without_port("--to", text, "9200") {
        return Err(why);
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!("no port in '{text}'; {EXPECTED}"));
    };
    let port = parse_port(port)?;
    let valid_name = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    if !valid_name {
        return Err(format!(
            "'{host}' is not a host name or IP address; {EXPECTED}"
        ));
    }
    Ok(Backend::Tcp {
        host: host.to_string(),
        port,
    })
}

fn parse_port(text: &str) -> Result<u16, String> {
    match text.parse::<u16>() {
        Ok(port) => Ok(port),
        Err(_) => Err(format!("'{text}' is not a port (0-65535)")),
    }
}

/// Why a duration or size was refused, in words. `TooLarge` is told apart
/// so that a flag can state its own bound, or that 0 switches it off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueError {
    /// Not a duration or size at all; the words say what was expected.
    Invalid(String),
    /// A duration longer than [`MAX_DURATION`], or a size past `usize`.
    TooLarge(String),
}

impl fmt::Display for ValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValueError::Invalid(why) | ValueError::TooLarge(why) => f.write_str(why),
        }
    }
}

/// Splits `text` (trimmed) into its number and its unit, as durations and
/// sizes are written; `what` and `expected` word the error.
fn number_and_unit<'a>(
    text: &'a str,
    what: &str,
    expected: &str,
) -> Result<(Decimal<'a>, &'a str), ValueError> {
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    match Decimal::read(number) {
        Some(number) => Ok((number, unit)),
        None => Err(ValueError::Invalid(format!(
            "'{text}' is not {what}; {expected}"
        ))),
    }
}

/// The duration units, largest first, each with the names it is typed
/// as and its length in nanoseconds. A compound duration (`1h30m`) gives
/// its units in this order, each once.
const DURATION_UNITS: [(&[&str], u128); 6] = [
    (&["d"], 86_400 * NANOS_PER_SEC),
    (&["h"], 3600 * NANOS_PER_SEC),
    (&["m", "min", "mins"], 60 * NANOS_PER_SEC),
    (&["", "s", "sec", "secs"], NANOS_PER_SEC),
    (&["ms"], 1_000_000),
    (&["us", "µs"], 1_000),
];
const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Reads `90s`, `5m`, `1h`, `2d`, `250ms`, `200us`, fractions of them
/// (`1.5s`), plain seconds (`30`), or several of them largest first, each
/// unit once (`1h30m`, `2m30s`, `1d12h`; spaces between the parts are
/// allowed, `1h 30m`, as between a number and its unit), at most
/// [`MAX_DURATION`]. The arithmetic is exact (no floating point) and
/// rounds each part up to the nanosecond, so no value but 0 becomes 0,
/// which some flags read as "never".
pub fn parse_duration(text: &str) -> Result<Duration, ValueError> {
    const EXPECTED: &str = "expected a duration like 90s, 5m, 1h30m, 250ms, 200us or plain seconds";
    let text = text.trim();
    let too_long = || {
        ValueError::TooLarge(format!(
            "'{text}' is longer than {}, the longest duration wssify takes",
            format_duration(MAX_DURATION)
        ))
    };
    let parts = duration_parts(text);
    let compound = parts.len() > 1;
    let mut total: u128 = 0;
    let mut previous: Option<usize> = None;
    for part in parts {
        let (number, unit) = number_and_unit(part, "a duration", EXPECTED)
            .map_err(|_| ValueError::Invalid(format!("'{text}' is not a duration; {EXPECTED}")))?;
        let unit = unit.trim();
        let Some(rank) = DURATION_UNITS
            .iter()
            .position(|(names, _)| names.contains(&unit))
        else {
            return Err(ValueError::Invalid(format!(
                "unknown unit '{unit}' in '{text}'; {EXPECTED}"
            )));
        };
        if compound && unit.is_empty() {
            return Err(ValueError::Invalid(format!(
                "'{text}' has a number without a unit; in a duration of several parts each needs one, e.g. 1h30m"
            )));
        }
        if previous.is_some_and(|previous| rank <= previous) {
            return Err(ValueError::Invalid(format!(
                "'{text}' has its units out of order; give the largest first and each once, e.g. 1h30m"
            )));
        }
        previous = Some(rank);
        let nanos = number
            .scaled(DURATION_UNITS[rank].1, Rounding::Up)
            .ok_or_else(too_long)?;
        total = total.checked_add(nanos).ok_or_else(too_long)?;
    }
    if total > MAX_DURATION.as_nanos() {
        return Err(too_long());
    }
    u64::try_from(total)
        .map(Duration::from_nanos)
        .map_err(|_| too_long())
}

/// Splits a duration into its parts, each a number and its unit: a new
/// part starts wherever a digit or `.` follows anything else (`1h30m`,
/// `1h 30m`). A number and its unit stay one part even with a space
/// between them (`5 s`).
fn duration_parts(text: &str) -> Vec<&str> {
    let numeric = |c: char| c.is_ascii_digit() || c == '.';
    let mut parts = Vec::new();
    let mut start = 0;
    let mut after_unit = false;
    for (at, c) in text.char_indices() {
        if numeric(c) {
            if after_unit {
                parts.push(&text[start..at]);
                start = at;
            }
            after_unit = false;
        } else if !c.is_whitespace() {
            after_unit = true;
        }
    }
    parts.push(&text[start..]);
    parts
}

/// A non-negative decimal number as typed (`30`, `1.5`, `.5`), kept as
/// digits so that scaling it is exact.
struct Decimal<'a> {
    whole: &'a str,
    fraction: &'a str,
}

/// Which way [`Decimal::scaled`] rounds a result that is not whole.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Rounding {
    Down,
    Up,
}

impl<'a> Decimal<'a> {
    /// Digits with at most one `.`, and at least one digit.
    fn read(text: &'a str) -> Option<Decimal<'a>> {
        let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
        let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if (whole.is_empty() && fraction.is_empty()) || !digits(whole) || !digits(fraction) {
            return None;
        }
        Some(Decimal { whole, fraction })
    }

    /// The number times `scale`, rounded to a whole number; `None` when it
    /// does not fit in a `u128`.
    fn scaled(&self, scale: u128, rounding: Rounding) -> Option<u128> {
        /// Fraction digits taken exactly; those after them only round up.
        const EXACT_DIGITS: usize = 20;
        let whole = if self.whole.is_empty() {
            0
        } else {
            self.whole.parse::<u128>().ok()?
        };
        let (exact, rest) = self
            .fraction
            .split_at(self.fraction.len().min(EXACT_DIGITS));
        let mut part = 0;
        if !exact.is_empty() {
            let numerator = exact.parse::<u128>().ok()?.checked_mul(scale)?;
            let denominator = 10u128.checked_pow(u32::try_from(exact.len()).ok()?)?;
            part = numerator / denominator;
            let inexact = numerator % denominator != 0 || rest.bytes().any(|b| b != b'0');
            if rounding == Rounding::Up && inexact {
                part += 1;
            }
        } else if rounding == Rounding::Up && rest.bytes().any(|b| b != b'0') {
            part = 1;
        }
        whole.checked_mul(scale)?.checked_add(part)
    }
}

/// Reads a size in bytes: `64MiB`, `1GiB`, `1.5GiB`, `512KiB`, `64M`, `1G`
/// (binary units, as memory limits are) or plain bytes, rounded down to a
/// whole byte.
pub fn parse_size(text: &str) -> Result<usize, ValueError> {
    const EXPECTED: &str = "expected a size like 64MiB, 1GiB, 512KiB or plain bytes";
    let text = text.trim();
    let (number, unit) = number_and_unit(text, "a size", EXPECTED)?;
    let scale: u128 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => {
            return Err(ValueError::Invalid(format!(
                "unknown unit '{other}' in '{text}'; {EXPECTED}"
            )));
        }
    };
    number
        .scaled(scale, Rounding::Down)
        .and_then(|bytes| usize::try_from(bytes).ok())
        .ok_or_else(|| ValueError::TooLarge(format!("'{text}' is out of range; {EXPECTED}")))
}

/// Writes a size the way a person would type it back (`64MiB`, `1GiB`,
/// `5.9GiB`). An uneven size shows a tenth of its unit, rounded down, so
/// reading it back gives at most the size and never overflows.
pub fn format_size(bytes: usize) -> String {
    const UNITS: [(u128, &str); 4] = [
        (1 << 40, "TiB"),
        (1 << 30, "GiB"),
        (1 << 20, "MiB"),
        (1 << 10, "KiB"),
    ];
    let exact = bytes as u128;
    for (scale, unit) in UNITS {
        if exact >= scale {
            return if exact.is_multiple_of(scale) {
                format!("{}{unit}", exact / scale)
            } else {
                let tenths = exact * 10 / scale;
                format!("{}.{}{unit}", tenths / 10, tenths % 10)
            };
        }
    }
    format!("{bytes}B")
}

/// Writes a duration the way a person would type it back (`1h`, `90s`,
/// `250ms`, `1.5s`); exact to the nanosecond, so [`parse_duration`] reads
/// back the same duration.
pub fn format_duration(duration: Duration) -> String {
    let secs = duration.as_secs();
    let nanos = duration.subsec_nanos();
    if nanos == 0 {
        if secs == 0 {
            return "0s".to_string();
        }
        if secs.is_multiple_of(86_400) {
            return format!("{}d", secs / 86_400);
        }
        if secs.is_multiple_of(3600) {
            return format!("{}h", secs / 3600);
        }
        if secs.is_multiple_of(60) {
            return format!("{}m", secs / 60);
        }
        return format!("{secs}s");
    }
    if secs == 0 {
        if nanos.is_multiple_of(1_000_000) {
            return format!("{}ms", nanos / 1_000_000);
        }
        if nanos.is_multiple_of(1_000) {
            return format!("{}us", nanos / 1_000);
        }
    }
    let fraction = format!("{nanos:09}");
    format!("{secs}.{}s", fraction.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_forms() {
        assert_eq!(parse_listen("9300"), Ok(ListenAddr::AllInterfaces(9300)));
        assert_eq!(parse_listen(":9300"), Ok(ListenAddr::AllInterfaces(9300)));
        assert_eq!(
            parse_listen("127.0.0.1:9300"),
            Ok(ListenAddr::Addr("127.0.0.1:9300".parse().unwrap()))
        );
        assert_eq!(
            parse_listen("[::1]:9300"),
            Ok(ListenAddr::Addr("[::1]:9300".parse().unwrap()))
        );
        assert!(parse_listen("99999").unwrap_err().contains("not a port"));
        assert!(
            parse_listen("example.com:9300")
                .unwrap_err()
                .contains("not an IP")
        );
        assert!(
            parse_listen("1.2.3.4:x")
                .unwrap_err()
                .contains("not a port")
        );
        assert!(parse_listen("").is_err());
        assert_eq!(
            parse_listen("unix:/run/wssify/tls.sock"),
            Ok(ListenAddr::Unix {
                path: PathBuf::from("/run/wssify/tls.sock"),
                mode: DEFAULT_UNIX_MODE,
            })
        );
        assert_eq!(
            parse_listen("unix:/run/wssify/tls.sock")
                .unwrap()
                .to_string(),
            "unix:/run/wssify/tls.sock"
        );
        assert!(parse_listen("unix:").unwrap_err().contains("no path"));
        let long = format!("unix:/{}", "a".repeat(200));
        assert!(parse_listen(&long).unwrap_err().contains("at most 107"));
    }

    #[test]
    fn backend_forms() {
        let tcp = |host: &str, port| Backend::Tcp {
            host: host.to_string(),
            port,
        };
        assert_eq!(parse_backend("127.0.0.1:9200"), Ok(tcp("127.0.0.1", 9200)));
        assert_eq!(parse_backend("ws-server:9200"), Ok(tcp("ws-server", 9200)));
        let b = parse_backend("unix:/run/app/ws.sock").unwrap();
        assert_eq!(b, Backend::Unix(PathBuf::from("/run/app/ws.sock")));
        assert_eq!(b.to_string(), "unix:/run/app/ws.sock");
        assert!(parse_backend("unix:").unwrap_err().contains("no path"));
        let long = format!("unix:/{}", "a".repeat(200));
        assert!(parse_backend(&long).unwrap_err().contains("at most 107"));
        let b = parse_backend("[::1]:9200").unwrap();
        assert_eq!(b.to_string(), "[::1]:9200");
        assert_eq!(parse_backend("9200").unwrap().to_string(), "127.0.0.1:9200");
        assert!(parse_backend("ws-server").unwrap_err().contains("no port"));
        assert!(
            parse_backend("bad host:1")
                .unwrap_err()
                .contains("not a host")
        );
        assert!(parse_backend("h:70000").unwrap_err().contains("not a port"));
    }

    #[test]
    fn addresses_without_a_port_or_brackets_say_how_to_write_them() {
        let cases = [
            (
                "127.0.0.1",
                "no port in '127.0.0.1'; e.g. --listen 127.0.0.1:9300",
            ),
            ("[::1]", "no port in '[::1]'; e.g. --listen [::1]:9300"),
            (
                "::1",
                "no port, and an IPv6 address goes in brackets: --listen [::1]:9300",
            ),
            (
                "fe80::1:9300",
                "an IPv6 address goes in brackets before its port: --listen [fe80::1]:9300",
            ),
        ];
        for (text, why) in cases {
            let err = parse_listen(text).unwrap_err();
            assert!(err.starts_with(why), "{text}: {err}");
        }
        let err = parse_backend("::1:9200").unwrap_err();
        assert!(
            err.starts_with("an IPv6 address goes in brackets before its port: --to [::1]:9200"),
            "{err}"
        );
        let err = parse_backend("[::1]").unwrap_err();
        assert!(
            err.starts_with("no port in '[::1]'; e.g. --to [::1]:9200"),
            "{err}"
        );
        let err = parse_backend("10.0.0.5").unwrap_err();
        assert!(
            err.starts_with("no port in '10.0.0.5'; e.g. --to 10.0.0.5:9200"),
            "{err}"
        );
    }

    #[test]
    fn a_url_as_backend_is_told_to_drop_the_scheme() {
        let cases = [
            (
                "ws://127.0.0.1:9200",
                "drop the scheme: --to 127.0.0.1:9200",
            ),
            (
                "http://ws-server:9200/",
                "drop the scheme: --to ws-server:9200",
            ),
            ("tcp://[::1]:9200", "drop the scheme: --to [::1]:9200"),
            (
                "WS://host:1/chat?x=1",
                "drop the scheme: --to host:1 (the path is not needed",
            ),
            (
                "ws://localhost",
                "drop the scheme and give the port: --to localhost:PORT",
            ),
            ("ws://user@host:5", "drop the scheme: --to host:5"),
        ];
        for (text, why) in cases {
            let err = parse_backend(text).unwrap_err();
            assert!(err.starts_with(why), "{text}: {err}");
            assert!(!err.contains("TLS"), "{text}: {err}");
        }
        for text in ["wss://host:9443/x", "https://host:9443"] {
            let err = parse_backend(text).unwrap_err();
            assert!(err.starts_with("drop the scheme: --to host:9443"), "{err}");
            assert!(
                err.ends_with("plain TCP to the backend, so it must not expect TLS"),
                "{err}"
            );
        }
    }

    #[test]
    fn listen_addresses_that_would_take_the_same_port() {
        let listen = |texts: &[&str]| -> Vec<ListenAddr> {
            texts.iter().map(|t| parse_listen(t).unwrap()).collect()
        };
        let cases: [(&[&str], &str); 7] = [
            (&["9300", "9300"], "--listen 9300 is given twice"),
            (&["9300", ":9300"], "--listen 9300 is given twice"),
            (
                &["127.0.0.1:9300", "[::ffff:127.0.0.1]:9300"],
                "given twice",
            ),
            (
                &["9300", "0.0.0.0:9300"],
                "--listen 9300 and --listen 0.0.0.0:9300 overlap: a bare port already listens on every address, IPv4 and IPv6; give only one of them",
            ),
            (&["[::]:9300", "9300"], "a bare port already listens"),
            (
                &["127.0.0.1:9300", "0.0.0.0:9300"],
                "0.0.0.0 already listens on every IPv4 address",
            ),
            (
                &["[::]:9300", "[::1]:9300"],
                "[::] already listens on every IPv6 address",
            ),
        ];
        let twice = listen(&["unix:/run/a.sock", "9300", "unix:/run/a.sock"]);
        assert_eq!(
            listen_overlap(&twice).as_deref(),
            Some("--listen unix:/run/a.sock is given twice; give each socket once")
        );
        for (texts, why) in cases {
            let found = listen_overlap(&listen(texts)).unwrap_or_default();
            assert!(found.contains(why), "{texts:?}: {found}");
        }
        for texts in [
            &["9300", "9301"][..],
            &["127.0.0.1:9300", "192.0.2.1:9300"],
            &["0.0.0.0:9300", "[::1]:9300"],
            &["127.0.0.1:0", "127.0.0.1:0"],
            &["0", "0"],
            &["unix:/run/a.sock", "unix:/run/b.sock"],
            &["9300", "unix:/run/a.sock"],
        ] {
            assert_eq!(listen_overlap(&listen(texts)), None, "{texts:?}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("200us"), Ok(Duration::from_micros(200)));
        assert_eq!(parse_duration("50µs"), Ok(Duration::from_micros(50)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("soon").is_err());
        assert!(
            parse_duration("5y")
                .unwrap_err()
                .to_string()
                .contains("unknown unit")
        );
        assert!(parse_duration("").is_err());
        assert!(parse_duration(".").is_err());
        assert!(parse_duration("1.2.3s").is_err());
    }

    #[test]
    fn compound_durations() {
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("2m30s"), Ok(Duration::from_secs(150)));
        assert_eq!(parse_duration("1d12h"), Ok(Duration::from_secs(129_600)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1 h 30 min"), Ok(Duration::from_secs(5400)));
        assert_eq!(
            parse_duration("1d2h3m4s5ms6us"),
            Ok(Duration::new(93_784, 5_006_000))
        );
        assert_eq!(parse_duration("1s500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1.5h30m"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("364d23h59m60s"), Ok(MAX_DURATION));
        for (text, why) in [
            ("30m1h", "out of order"),
            ("1m1m", "out of order"),
            ("1m30min", "out of order"),
            ("1h30", "a number without a unit"),
            ("1h30x", "unknown unit 'x'"),
            ("1h-30m", "unknown unit 'h-'"),
        ] {
            let err = parse_duration(text).unwrap_err().to_string();
            assert!(err.contains(why), "{text}: {err}");
            assert!(err.contains(&format!("'{text}'")), "{text}: {err}");
        }
        assert!(matches!(
            parse_duration("365d1s"),
            Err(ValueError::TooLarge(why)) if why.contains("longer than 365d")
        ));
        assert!(matches!(
            parse_duration("99999999999999999999999999999999999999d1h"),
            Err(ValueError::TooLarge(_))
        ));
    }

    #[test]
    fn durations_are_exact_and_round_up() {
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration(".5m"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("0.1"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("0.3ms"), Ok(Duration::from_micros(300)));
        // Finer than a nanosecond rounds up: nothing but 0 means "never".
        assert_eq!(parse_duration("0.0000000001"), Ok(Duration::from_nanos(1)));
        assert_eq!(
            parse_duration("0.0000000000000000000000001s"),
            Ok(Duration::from_nanos(1))
        );
        assert_eq!(parse_duration("0.000"), Ok(Duration::ZERO));
    }

    #[test]
    fn durations_stop_at_a_year() {
        assert_eq!(parse_duration("365d"), Ok(MAX_DURATION));
        assert_eq!(parse_duration("8760h"), Ok(MAX_DURATION));
        for text in [
            "365.000000001d",
            "366d",
            "200000000000000d",
            "18446744073709551616",
            "99999999999999999999999999999999999999999999d",
        ] {
            match parse_duration(text) {
                Err(ValueError::TooLarge(why)) => {
                    assert!(why.contains("longer than 365d"), "{text}: {why}")
                }
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("512kib"), Ok(512 << 10));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert!(parse_size("lots").is_err());
        assert!(
            parse_size("5XB")
                .unwrap_err()
                .to_string()
                .contains("unknown unit")
        );
        assert!(parse_size("99999999999999999999G").is_err());
        assert!(matches!(
            parse_size("9999999999T"),
            Err(ValueError::TooLarge(why)) if why.contains("out of range")
        ));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("0.5k"), Ok(512));
        assert_eq!(parse_size("1.0000001KiB"), Ok(1024), "rounded down");
        assert!(parse_size("1.2.3G").is_err());
        for text in ["64MiB", "1GiB", "512KiB", "100B", "64TiB", "1.5GiB"] {
            assert_eq!(format_size(parse_size(text).unwrap()), text);
        }
        // Uneven sizes show a tenth, rounded down, so they read back lower.
        assert_eq!(format_size((1 << 30) - 1), "1023.9MiB");
        assert_eq!(format_size(usize::MAX), "16777215.9TiB");
        assert!(parse_size(&format_size(usize::MAX)).is_ok());
    }

    #[test]
    fn durations_print_back() {
        for text in [
            "1h",
            "90s",
            "5m",
            "10s",
            "250ms",
            "200us",
            "2d",
            "0s",
            "1.5s",
            "1500us",
            "0.0000015s",
            "90.000000001s",
            "365d",
        ] {
            assert_eq!(format_duration(parse_duration(text).unwrap()), text);
        }
    }
}
