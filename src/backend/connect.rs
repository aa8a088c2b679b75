//! One client's backend connect: one loop over the policy's ranking of the
//! selection, each attempt under its own `--connect-timeout`, so that a
//! blackholed address costs one timeout and the next backend is tried.

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::timeout;

use crate::backend::balance::rank;
use crate::backend::pool::{Peer, Pool};
use crate::backend::stream::{Addr, Stream};
use crate::settings::format_duration;

/// A connection's hold on its backend: least-conn's count of open
/// connections goes down when it is dropped. One pointer per connection.
pub struct Lease(Arc<Peer>);

impl Lease {
    /// The backend it holds, for log lines.
    pub fn addr(&self) -> &Addr {
        &self.0.addr
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why one attempt failed.
#[derive(Debug)]
pub enum Failure {
    /// Refused, reset, unreachable...
    Io(io::Error),
    /// No answer within `--connect-timeout`.
    TimedOut(Duration),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Io(e) => write!(f, "{e}"),
            Failure::TimedOut(limit) => write!(f, "no answer within {}", format_duration(*limit)),
        }
    }
}

/// No backend took the client: every backend and why, for its log line.
#[derive(Debug)]
pub struct ConnectError {
    /// One entry per backend (address, or a name with no address): what
    /// happened to it.
    pub backends: Vec<(String, String)>,
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.backends.len() > 1 {
            f.write_str("no backend reachable: ")?;
        }
        for (i, (name, why)) in self.backends.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "backend {name} {why}")?;
        }
        Ok(())
    }
}

/// Connects a client from `client` to a backend: the policy's first
/// choice that is up, then the next, at most `--connect-retries` attempts.
/// When every backend is in its back-off, the one whose back-off ends
/// first is tried anyway (one attempt): nothing is lost by it, and a
/// backend that came back early is found at once.
pub async fn connect(pool: &Pool, client: IpAddr) -> Result<(Stream, Lease), ConnectError> {
    let selection = pool.selection();
    let peers = &selection.peers;
    let order = rank(pool, peers, client);
    let mut candidates: Vec<usize> = order
        .iter()
        .copied()
        .filter(|&i| pool.available(&peers[i]))
        .collect();
    if candidates.is_empty()
        && let Some(soonest) = order
            .iter()
            .copied()
            .min_by_key(|&i| pool.retry_in(&peers[i]))
    {
        candidates.push(soonest);
    }
    let most = pool.connect_retries.unwrap_or(peers.len()).max(1);
    let mut tried: Vec<(Addr, Failure)> = Vec::new();
    for &i in candidates.iter().take(most) {
        let peer = &peers[i];
        // Counted from the attempt on, so least-conn sees connects under way.
        peer.open.fetch_add(1, Ordering::Relaxed);
        peer.attempts.fetch_add(1, Ordering::Relaxed);
        let lease = Lease(peer.clone());
        let failure = match timeout(pool.connect_timeout, peer.addr.connect()).await {
            Ok(Ok(stream)) => {
                pool.succeeded(peer);
                return Ok((stream, lease));
            }
            Ok(Err(e)) => Failure::Io(e),
            Err(_) => Failure::TimedOut(pool.connect_timeout),
        };
        drop(lease);
        peer.connect_failures.fetch_add(1, Ordering::Relaxed);
        pool.failed(peer, &failure.to_string());
        tried.push((peer.addr.clone(), failure));
    }
    if pool.has_names() {
        // The backend may have moved: look again, in the background.
        pool.resolve_now.notify_one();
    }
    Err(explain(pool, peers, tried))
}

/// Every backend and why it did not take this client.
fn explain(pool: &Pool, peers: &[Arc<Peer>], tried: Vec<(Addr, Failure)>) -> ConnectError {
    let mut backends: Vec<(String, String)> = Vec::new();
    for peer in peers {
        let why = match tried.iter().find(|(addr, _)| *addr == peer.addr) {
            Some((_, failure)) => format!("unreachable: {failure}"),
            None if !pool.available(peer) => format!(
                "down: {} (retry in {})",
                peer.why(),
                format_duration(Duration::from_secs(pool.retry_in(peer).as_secs().max(1)))
            ),
            None => "not tried (--connect-retries)".to_string(),
        };
        backends.push((peer.addr.to_string(), why));
    }
    if let Ok(resolved) = pool.resolved.lock() {
        for (name, answer) in pool.names.iter().zip(resolved.iter()) {
            if answer.addrs.is_empty() {
                let why = answer
                    .error
                    .clone()
                    .unwrap_or_else(|| "not resolved yet".to_string());
                backends.push((name.to_string(), format!("unreachable: {why}")));
            }
        }
    }
    ConnectError { backends }
}
