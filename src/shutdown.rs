//! Signals and the drain: stop accepting at once, let open connections
//! finish for the drain timeout, then close what remains.
//!
//! Listeners and connections watch one [`Phase`]; each connection also holds
//! a [`ConnectionGuard`], and the drain is over when the last guard drops.

use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};

use crate::error::StartupError;

/// Where the process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Accepting and serving.
    Running,
    /// Not accepting; open connections run on.
    Draining,
    /// The drain timeout ran out: open connections close now.
    Closing,
    /// A second shutdown request: open connections log their end and are
    /// cut at once, and the process exits.
    Cut,
}

/// How long a second shutdown request waits for the connections it cuts
/// to log their end lines (each only formats a line and drops its sockets).
const CUT_LINES_TIMEOUT: Duration = Duration::from_secs(1);

/// How the drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Every connection finished (or was closed at the drain timeout).
    Drained,
    /// A second shutdown request came during the drain.
    Forced,
}

/// Owned by the server: moves the phase and waits for connections to end.
pub struct Coordinator {
    phase: watch::Sender<Phase>,
    guard_tx: mpsc::Sender<()>,
    guard_rx: mpsc::Receiver<()>,
}

/// Held by every connection task; dropping it tells the drain it has ended.
#[derive(Clone)]
pub struct ConnectionGuard {
    _tx: mpsc::Sender<()>,
}

impl Default for Coordinator {
    fn default() -> Self {
        Self::new()
    }
}

impl Coordinator {
    /// A coordinator in the running phase.
    pub fn new() -> Self {
        let (phase, _) = watch::channel(Phase::Running);
        let (guard_tx, guard_rx) = mpsc::channel(1);
        Self {
            phase,
            guard_tx,
            guard_rx,
        }
    }

    /// A view of the phase for a listener or connection.
    pub fn watch(&self) -> watch::Receiver<Phase> {
        self.phase.subscribe()
    }

    /// A guard for one more connection.
    pub fn guard(&self) -> ConnectionGuard {
        ConnectionGuard {
            _tx: self.guard_tx.clone(),
        }
    }

    /// Tells the listeners to stop accepting.
    pub fn stop_accepting(&self) {
        self.phase.send_replace(Phase::Draining);
    }

    /// Waits up to `drain` for connections to finish, then closes the rest.
    /// A message on `requests` during the drain cuts it short.
    pub async fn drain(self, drain: Duration, requests: &mut mpsc::Receiver<()>) -> Exit {
        let Coordinator {
            phase,
            guard_tx,
            mut guard_rx,
        } = self;
        phase.send_replace(Phase::Draining);
        drop(guard_tx);
        tokio::select! {
            _ = guard_rx.recv() => return Exit::Drained,
            Some(()) = requests.recv() => return cut(&phase, &mut guard_rx).await,
            _ = tokio::time::sleep(drain) => {}
        }
        log::info!("drain timeout reached: closing the connections still open");
        phase.send_replace(Phase::Closing);
        // Closing is quick (a close_notify each); bound it all the same.
        tokio::select! {
            _ = guard_rx.recv() => Exit::Drained,
            Some(()) = requests.recv() => cut(&phase, &mut guard_rx).await,
            _ = tokio::time::sleep(Duration::from_secs(5)) => Exit::Drained,
        }
    }
}

/// Cuts the open connections: each logs its end line (`cut at shutdown`)
/// and drops its sockets; waits a moment for those lines, not for peers.
async fn cut(phase: &watch::Sender<Phase>, guards: &mut mpsc::Receiver<()>) -> Exit {
    phase.send_replace(Phase::Cut);
    let _ = tokio::time::timeout(CUT_LINES_TIMEOUT, guards.recv()).await;
    Exit::Forced
}

/// Resolves once the phase reaches `wanted` (or the coordinator is gone);
/// `Closing` is reached by `Cut` too.
pub async fn reached(phase: &mut watch::Receiver<Phase>, wanted: Phase) {
    let _ = phase
        .wait_for(|p| match wanted {
            Phase::Running => true,
            Phase::Draining => *p != Phase::Running,
            Phase::Closing => matches!(*p, Phase::Closing | Phase::Cut),
            Phase::Cut => *p == Phase::Cut,
        })
        .await;
}

/// Turns SIGTERM and SIGINT into shutdown requests: the first starts the
/// drain, a second one during the drain exits at once.
pub fn signals() -> Result<mpsc::Receiver<()>, StartupError> {
    let listen = |kind: SignalKind, name: &str| {
        signal(kind).map_err(|e| StartupError::new(format!("cannot listen for {name}: {e}")))
    };
    let mut term = listen(SignalKind::terminate(), "SIGTERM")?;
    let mut int = listen(SignalKind::interrupt(), "SIGINT")?;
    let (tx, rx) = mpsc::channel(2);
    tokio::spawn(async move {
        let mut seen = 0;
        loop {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            seen += 1;
            if seen == 1 {
                log::info!("{name}: no longer accepting; draining open connections");
            } else {
                log::warn!("{name} again: exiting now without waiting for open connections");
            }
            if tx.send(()).await.is_err() {
                return;
            }
        }
    });
    Ok(rx)
}
