//! What an operator watches wssify by: Prometheus metrics, `/healthz` and
//! `/readyz` on the `--admin` port, and log lines as JSON. It reads what connections report and
//! the state other parts keep; it never blocks a connection.
//!
//! - [`metrics`]: every metric name, the counters, the text exposition.
//! - [`admin`]: the small, bounded HTTP server behind `--admin`.
//! - [`ready`]: what `/readyz` waits for.
//! - [`json_log`]: `--log-format json`.

pub mod admin;
pub mod json_log;
pub mod metrics;
pub mod ready;

use std::net::SocketAddr;
use std::sync::Arc;

use crate::error::StartupError;

/// Binds `--admin` and starts serving it (and the readiness probe), before
/// anything else starts: `/healthz` answers and `/readyz` says what is
/// still missing from the first moment. `None`: no `--admin`.
pub fn start(addr: Option<SocketAddr>) -> Result<Option<Arc<admin::Admin>>, StartupError> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    let listener = std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .and_then(tokio::net::TcpListener::from_std)
        .map_err(|e| {
            let why = match e.kind() {
                std::io::ErrorKind::AddrInUse => {
                    "the port is already in use; choose another port".to_string()
                }
                std::io::ErrorKind::AddrNotAvailable => {
                    "not an address of this host; use 127.0.0.1:PORT or 0.0.0.0:PORT".to_string()
                }
                std::io::ErrorKind::PermissionDenied => {
                    "permission denied; use a port above 1023".to_string()
                }
                _ => format!("cannot listen ({e})"),
            };
            StartupError::new(format!("--admin {addr}: {why}"))
        })?;
    let bound = listener.local_addr().unwrap_or(addr);
    let admin = Arc::new(admin::Admin {
        ready: ready::Readiness::new(),
        sources: std::sync::OnceLock::new(),
    });
    log::info!("admin: http://{bound}/metrics, /healthz and /readyz (plain HTTP)");
    tokio::spawn(admin::serve(listener, admin.clone()));
    tokio::spawn(ready::probe(admin.ready.clone()));
    Ok(Some(admin))
}
