//! The backends as every connection sees them: one `ArcSwap`'d selection
//! of addresses, each with its state in atomics (up or down, back-off,
//! failures, open connections), so the connection path takes no lock.
//!
//! State changes are made with compare-and-swap, so that each change is
//! logged once however many connections see it at the same moment.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use log::{debug, info, warn};
use tokio::sync::Notify;

use crate::backend::stream::Addr;
use crate::settings::{Backend, Balance, Settings, format_duration};

/// The first back-off after a failure; it doubles with each failure in a row.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest back-off.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// One backend address and what is known about it.
pub struct Peer {
    /// Where it is: a TCP address or a UNIX socket's path.
    pub addr: Addr,
    /// Connections open to it, and connects under way (least-conn's count).
    pub(crate) open: AtomicUsize,
    /// Failures in a row; 0 while it is up.
    failures: AtomicU32,
    /// Milliseconds since the pool's epoch until which it is left alone;
    /// 0: up. Once passed, live traffic probes it again.
    down_until: AtomicU64,
    /// Milliseconds since the pool's epoch (plus one) when it went down; 0: up.
    down_since: AtomicU64,
    /// Why it last failed; locked only when it fails and when every
    /// backend has failed a client.
    why: Mutex<String>,
    /// A connect to it has succeeded at least once (the start check's or
    /// a client's): until then it is not counted as up for `/readyz`.
    reached: AtomicBool,
    /// Connect attempts for clients, and those that failed (metrics).
    pub(crate) attempts: AtomicU64,
    pub(crate) connect_failures: AtomicU64,
}

impl Peer {
    fn new(addr: Addr) -> Peer {
        Peer {
            addr,
            open: AtomicUsize::new(0),
            failures: AtomicU32::new(0),
            down_until: AtomicU64::new(0),
            down_since: AtomicU64::new(0),
            why: Mutex::new(String::new()),
            reached: AtomicBool::new(false),
            attempts: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
        }
    }

    /// Up: a connect has succeeded and none has failed since.
    pub fn up(&self) -> bool {
        self.reached.load(Ordering::Relaxed) && self.down_until.load(Ordering::Relaxed) == 0
    }

    /// Connect attempts for clients so far.
    pub fn attempts(&self) -> u64 {
        self.attempts.load(Ordering::Relaxed)
    }

    /// Connect attempts for clients that failed so far.
    pub fn connect_failures(&self) -> u64 {
        self.connect_failures.load(Ordering::Relaxed)
    }

    /// Why it last failed.
    pub fn why(&self) -> String {
        self.why.lock().map(|w| w.clone()).unwrap_or_default()
    }

    /// Connections open to it now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

/// The addresses connections choose from, swapped whole when DNS changes.
#[derive(Default)]
pub struct Selection {
    /// In `--to` order, each name's addresses in the order DNS gave them.
    pub peers: Vec<Arc<Peer>>,
}

/// What the last lookup of one `--to` said.
#[derive(Clone, Default)]
pub(crate) struct Resolved {
    /// The last good answer (kept when a lookup fails).
    pub(crate) addrs: Vec<Addr>,
    /// Why the last lookup failed; `None`: it did not.
    pub(crate) error: Option<String>,
}

/// The live backends: every connection holds the same one.
pub struct Pool {
    /// What `--to` said, in order.
    pub(crate) names: Vec<Backend>,
    /// The last answer for each of `names` (an IP address or a UNIX
    /// socket is its own).
    pub(crate) resolved: Mutex<Vec<Resolved>>,
    selection: ArcSwap<Selection>,
    /// How a client's connection picks.
    pub balance: Balance,
    /// Round-robin's turn.
    pub(crate) turn: AtomicUsize,
    /// Limit on each connect attempt.
    pub connect_timeout: Duration,
    /// Most attempts per client; `None`: every backend once.
    pub connect_retries: Option<usize>,
    /// How often names are looked up again.
    pub resolve_interval: Duration,
    /// Asks the resolver for a lookup now (after a connect failure).
    pub(crate) resolve_now: Notify,
    epoch: Instant,
}

impl Pool {
    /// The pool for these settings: IP addresses are in it at once; names
    /// join when the resolver has looked them up (`resolve::refresh`).
    /// `backends` are `--to`'s or one route's.
    pub fn new(settings: &Settings, backends: &[Backend]) -> Pool {
        let resolved = backends
            .iter()
            .map(|b| Resolved {
                addrs: literal(b).into_iter().collect(),
                error: None,
            })
            .collect::<Vec<_>>();
        let pool = Pool {
            names: backends.to_vec(),
            resolved: Mutex::new(resolved),
            selection: ArcSwap::from_pointee(Selection::default()),
            balance: settings.balance,
            turn: AtomicUsize::new(0),
            connect_timeout: settings.connect_timeout,
            connect_retries: settings.connect_retries,
            resolve_interval: settings.resolve_interval,
            resolve_now: Notify::new(),
            epoch: Instant::now(),
        };
        pool.rebuild();
        pool
    }

    /// How many backends were given (`--to`s, or one route's), each a
    /// name or an address.
    pub fn given(&self) -> usize {
        self.names.len()
    }

    /// The current selection (one lock-free load).
    pub fn selection(&self) -> Arc<Selection> {
        self.selection.load_full()
    }

    /// Whether any `--to` is a name (so a resolver has work to do).
    pub fn has_names(&self) -> bool {
        self.names.iter().any(|b| literal(b).is_none())
    }

    /// Builds the selection anew from the last answers, keeping the state
    /// of every address that stays.
    pub(crate) fn rebuild(&self) {
        let old = self.selection.load();
        let mut peers: Vec<Arc<Peer>> = Vec::new();
        let resolved = match self.resolved.lock() {
            Ok(resolved) => resolved.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        for answer in &resolved {
            for addr in &answer.addrs {
                if peers.iter().any(|p| p.addr == *addr) {
                    continue;
                }
                let kept = old.peers.iter().find(|p| p.addr == *addr).cloned();
                peers.push(kept.unwrap_or_else(|| Arc::new(Peer::new(addr.clone()))));
            }
        }
        self.selection.store(Arc::new(Selection { peers }));
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether a connection may try `peer` now: it is up, or its back-off
    /// has ended (a probe).
    pub fn available(&self, peer: &Peer) -> bool {
        let until = peer.down_until.load(Ordering::Relaxed);
        until == 0 || self.now_ms() >= until
    }

    /// How long until `peer`'s back-off ends (zero when it is up or over).
    pub fn retry_in(&self, peer: &Peer) -> Duration {
        let until = peer.down_until.load(Ordering::Relaxed);
        Duration::from_millis(until.saturating_sub(self.now_ms()))
    }

    /// A connect to `peer` succeeded: it is up (again).
    pub fn succeeded(&self, peer: &Peer) {
        if !peer.reached.load(Ordering::Relaxed) {
            peer.reached.store(true, Ordering::Relaxed);
        }
        if peer.failures.load(Ordering::Relaxed) == 0 {
            return;
        }
        peer.failures.store(0, Ordering::Relaxed);
        peer.down_until.store(0, Ordering::Relaxed);
        let since = peer.down_since.swap(0, Ordering::Relaxed);
        if since != 0 {
            let down = Duration::from_millis(self.now_ms().saturating_sub(since - 1));
            info!(
                "backend {} up again after {}",
                peer.addr,
                format_duration(whole_seconds(down))
            );
        }
    }

    /// A connect to `peer` failed: it is down for a back-off that doubles
    /// with each failure in a row (1 s to 30 s, with jitter). Failures seen
    /// while it is already down count once.
    pub fn failed(&self, peer: &Peer, why: &str) {
        let now = self.now_ms();
        let until = peer.down_until.load(Ordering::Relaxed);
        if until != 0 && now < until {
            return;
        }
        // Only the connection that moves `down_until` counts the failure.
        let failures = peer.failures.load(Ordering::Relaxed).saturating_add(1);
        let backoff = backoff(failures);
        let new_until = now.saturating_add(backoff.as_millis() as u64).max(1);
        if peer
            .down_until
            .compare_exchange(until, new_until, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        peer.failures.store(failures, Ordering::Relaxed);
        if let Ok(mut last) = peer.why.lock() {
            *last = why.to_string();
        }
        let retry = format_duration(whole_seconds(backoff));
        if peer
            .down_since
            .compare_exchange(0, now + 1, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            warn!("backend {} down: {why}; retry in {retry}", peer.addr);
        } else {
            debug!("backend {} still down: {why}; retry in {retry}", peer.addr);
        }
    }
}

/// The back-off after `failures` failures in a row: 1 s doubling to 30 s,
/// then ±20 % so that backends that failed together are not probed together.
fn backoff(failures: u32) -> Duration {
    let doubled = FIRST_BACKOFF.saturating_mul(1 << failures.saturating_sub(1).min(5));
    let base = doubled.min(MAX_BACKOFF).as_millis() as u64;
    let jitter = crate::backend::balance::random() % (base * 2 / 5 + 1);
    Duration::from_millis(base - base / 5 + jitter)
}

/// Rounded to whole seconds (at least one), for log lines.
fn whole_seconds(d: Duration) -> Duration {
    Duration::from_secs(((d.as_millis() + 500) / 1000).max(1) as u64)
}

/// The address of a backend given as an IP address or a UNIX socket
/// (`None`: a name, for the resolver).
pub(crate) fn literal(backend: &Backend) -> Option<Addr> {
    match backend {
        Backend::Tcp { host, port } => host
            .parse::<std::net::IpAddr>()
            .ok()
            .map(|ip| Addr::Tcp(std::net::SocketAddr::new(ip, *port))),
        Backend::Unix(path) => Some(Addr::Unix(path.clone())),
    }
}

impl fmt::Display for Pool {
    /// What `--to` said, for the startup line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.names.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{b}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_from_about_one_second_to_about_thirty() {
        for (failures, secs) in [(1, 1), (2, 2), (3, 4), (4, 8), (5, 16), (6, 30), (60, 30)] {
            let b = backoff(failures).as_millis() as u64;
            let base = secs * 1000;
            assert!(
                b >= base * 4 / 5 && b <= base * 6 / 5,
                "{failures} failures: {b}ms"
            );
        }
    }
}
