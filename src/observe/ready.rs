//! Whether wssify is ready for new clients, for `/readyz`: every listener
//! bound, the certificates loaded, at least one backend up in every
//! route's pool (`--to`'s included), and no drain started.
//!
//! A latch per part, as linkerd2-proxy's admin does it: each flag is set
//! once by the part it speaks for, and the answer is worked out when asked
//! (a probe every few seconds), never on a connection's path.
//!
//! Every route, not just one: a replica that cannot serve some of the
//! names it is configured for is not ready. Backends are up once a connect
//! has succeeded (the start check's, a client's or the probe's below) and
//! none has failed since; while a pool has none up, [`probe`] tries each of
//! its backends once a second, so a backend that comes up later (the app
//! beside a sidecar, still starting) makes wssify ready without a client.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use crate::backend::Pool;

/// How often a pool with no backend up is probed.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// The parts readiness waits for.
#[derive(Default)]
pub struct Readiness {
    listeners: AtomicBool,
    certificates: AtomicBool,
    draining: AtomicBool,
    /// Every route's name (`--to` for the default backends) and pool, set
    /// once the routes are built.
    pools: std::sync::OnceLock<Vec<(String, Arc<Pool>)>>,
}

impl Readiness {
    /// Nothing ready yet.
    pub fn new() -> Arc<Readiness> {
        Arc::new(Readiness::default())
    }

    /// Every `--listen` address is bound.
    pub fn listeners_bound(&self) {
        self.listeners.store(true, Relaxed);
    }

    /// The certificates are loaded (or none is needed).
    pub fn certificates_loaded(&self) {
        self.certificates.store(true, Relaxed);
    }

    /// The drain has started: never ready again.
    pub fn draining(&self) {
        self.draining.store(true, Relaxed);
    }

    /// The routes' pools, which backends are checked in.
    pub fn set_pools(&self, pools: Vec<(String, Arc<Pool>)>) {
        let _ = self.pools.set(pools);
    }

    /// `Ok`: ready. `Err`: why not, in one line.
    pub fn check(&self) -> Result<(), String> {
        if self.draining.load(Relaxed) {
            return Err("draining: wssify is shutting down and takes no new clients".into());
        }
        if !self.listeners.load(Relaxed) {
            return Err("listeners not bound yet".into());
        }
        if !self.certificates.load(Relaxed) {
            return Err("certificates not loaded yet".into());
        }
        let Some(pools) = self.pools.get() else {
            return Err("backends not set up yet".into());
        };
        for (route, pool) in pools {
            let peers = pool.selection();
            if !peers.peers.iter().any(|p| p.up()) {
                let which = match route.as_str() {
                    "--to" => format!("--to {pool}"),
                    name => format!("route {name} ({pool})"),
                };
                return Err(match peers.peers.is_empty() {
                    true => format!("no backend address known yet for {which}"),
                    false => format!("no backend up for {which}"),
                });
            }
        }
        Ok(())
    }
}

/// Probes, once a second, the backends of every pool that has none up: a
/// plain connect, closed at once, under the pool's connect timeout (each
/// backend sees it like a TCP health check). A success marks the backend
/// up; a failure changes nothing (clients' failures are what mark a
/// backend down). Runs for the process's life.
pub async fn probe(ready: Arc<Readiness>) {
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(pools) = ready.pools.get() else {
            continue;
        };
        for (_, pool) in pools {
            let selection = pool.selection();
            if selection.peers.iter().any(|p| p.up()) {
                continue;
            }
            for peer in &selection.peers {
                if let Ok(Ok(_stream)) =
                    tokio::time::timeout(pool.connect_timeout, peer.addr.connect()).await
                {
                    pool.succeeded(peer);
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_part_is_named_until_ready_and_a_drain_is_final() {
        let ready = Readiness::new();
        assert_eq!(ready.check().unwrap_err(), "listeners not bound yet");
        ready.listeners_bound();
        assert_eq!(ready.check().unwrap_err(), "certificates not loaded yet");
        ready.certificates_loaded();
        assert_eq!(ready.check().unwrap_err(), "backends not set up yet");
        ready.set_pools(Vec::new());
        assert_eq!(ready.check(), Ok(()));
        ready.draining();
        assert!(ready.check().unwrap_err().starts_with("draining"));
    }
}
