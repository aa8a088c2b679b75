//! Backend names are looked up here, off the connection path: once at
//! start, then every `--resolve-interval`, and soon after a connect fails.
//! A changed answer is followed by new connections (open ones stay where
//! they are); a name that stops resolving keeps its last good addresses.

use std::sync::Arc;
use std::time::Duration;

use log::{info, warn};
use tokio::time::{Instant, sleep, sleep_until, timeout};

use crate::backend::pool::{Pool, literal};
use crate::backend::stream::Addr;
use crate::settings::Backend;
use crate::settings::format_duration;

/// Looks up after a connect failure come at most this often.
const MIN_GAP: Duration = Duration::from_secs(1);

/// Looks every name up again, now; swaps the selection if an answer changed.
pub async fn refresh(pool: &Pool) {
    let mut changed = false;
    for (i, name) in pool.names.iter().enumerate() {
        let (host, port) = match name {
            Backend::Tcp { host, port } if literal(name).is_none() => (host.as_str(), *port),
            _ => continue,
        };
        let lookup = tokio::net::lookup_host((host, port));
        let answer: Result<Vec<_>, String> = match timeout(pool.connect_timeout, lookup).await {
            Ok(Ok(addrs)) => {
                let addrs: Vec<_> = addrs.map(Addr::Tcp).collect();
                if addrs.is_empty() {
                    Err("the name resolved to no address".to_string())
                } else {
                    Ok(addrs)
                }
            }
            Ok(Err(e)) => Err(format!("does not resolve: {e}")),
            Err(_) => Err(format!(
                "does not resolve: no answer within {}",
                format_duration(pool.connect_timeout)
            )),
        };
        let Ok(mut resolved) = pool.resolved.lock() else {
            return;
        };
        let Some(entry) = resolved.get_mut(i) else {
            continue;
        };
        match answer {
            Ok(addrs) => {
                if addrs != entry.addrs {
                    let now = if entry.addrs.is_empty() { "" } else { "now " };
                    info!("backend {name} {now}resolves to {}", list(&addrs));
                    entry.addrs = addrs;
                    changed = true;
                }
                entry.error = None;
            }
            Err(why) => {
                if entry.error.is_none() {
                    if entry.addrs.is_empty() {
                        warn!("backend {name} (--to) {why}");
                    } else {
                        warn!(
                            "backend {name} (--to) {why}; keeping its last addresses {}",
                            list(&entry.addrs)
                        );
                    }
                }
                entry.error = Some(why);
            }
        }
    }
    if changed {
        pool.rebuild();
    }
}

/// Keeps the names fresh for the process's life (spawned once at start,
/// after the first [`refresh`]).
pub async fn run(pool: Arc<Pool>) {
    if !pool.has_names() {
        return;
    }
    loop {
        let next = Instant::now() + pool.resolve_interval;
        tokio::select! {
            () = sleep_until(next) => {}
            () = pool.resolve_now.notified() => sleep(MIN_GAP).await,
        }
        refresh(&pool).await;
    }
}

fn list(addrs: &[Addr]) -> String {
    addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
