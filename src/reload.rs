//! When to reload certificates, and telling the operator how it went.
//!
//! Three triggers re-read every input ([`crate::loader`]): SIGHUP, a change
//! in a watched directory (inotify; a Kubernetes `..data` symlink swap or an
//! editor's rename-into-place lands there), and a timer, so a missed event
//! never leaves an old certificate serving. A reload swaps the configuration
//! new handshakes use; open connections keep the one they started with.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use log::{debug, error, info, warn};
use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher};
use rustls::ServerConfig;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;

use crate::certs::{CertSummary, Development};
use crate::error::StartupError;
use crate::loader::{DIR_EXTENSIONS, Loader};
use crate::settings::format_duration;

/// Certificates expiring within this many days get a warning.
pub const EXPIRY_WARNING_DAYS: i64 = 14;
/// Events closer together than this are one change (a pair written as two
/// files, a symlink swap in several steps).
const SETTLE: Duration = Duration::from_millis(200);
/// A stream of events is reloaded at least this often.
const SETTLE_AT_MOST: Duration = Duration::from_secs(2);
/// How often expiry is re-checked when nothing else happens.
const EXPIRY_CHECK: Duration = Duration::from_secs(24 * 3600);

/// What caused a reload, as the log line names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// SIGHUP: the operator asked; refusals are repeated.
    Signal,
    /// A watched directory changed.
    FileChange,
    /// `--reload-interval` passed.
    Timer,
    /// ACME obtained or renewed a certificate (or saw one a replica did).
    Acme,
}

impl Trigger {
    fn name(self) -> &'static str {
        match self {
            Trigger::Signal => "SIGHUP",
            Trigger::FileChange => "file change",
            Trigger::Timer => "timer",
            Trigger::Acme => "ACME",
        }
    }
}

/// The loader and the configuration handshakes read.
pub struct Reloader {
    loader: Mutex<Loader>,
    live: Arc<ArcSwap<ServerConfig>>,
}

impl Reloader {
    /// Serves `config` (what `loader` built at start).
    pub fn new(loader: Loader, config: Arc<ServerConfig>) -> Reloader {
        Reloader {
            loader: Mutex::new(loader),
            live: Arc::new(ArcSwap::new(config)),
        }
    }

    /// The configuration each new handshake loads.
    pub fn live(&self) -> Arc<ArcSwap<ServerConfig>> {
        self.live.clone()
    }

    /// The startup line's description of what is served.
    pub fn describe(&self) -> String {
        self.lock().describe()
    }

    /// The directories to watch.
    pub fn watch_dirs(&self) -> Vec<PathBuf> {
        self.lock().watch_dirs()
    }

    /// The file names whose changes in those directories matter.
    pub fn input_names(&self) -> Vec<OsString> {
        self.lock().input_names()
    }

    /// Re-reads every input and logs one line for what was taken and one
    /// per refusal. Blocking: reads files.
    pub fn reload(&self, trigger: Trigger) {
        let mut loader = self.lock();
        let report = loader.reload(trigger == Trigger::Signal);
        for refusal in &report.refusals {
            error!("reload refused: {refusal}");
        }
        if !report.refusals.is_empty() {
            crate::observe::metrics::reload(false);
        }
        for warning in &report.warnings {
            warn!("{warning}");
        }
        if let Some(config) = report.config {
            crate::observe::metrics::reload(true);
            self.live.store(config);
            info!(
                "reloaded ({}): {}",
                trigger.name(),
                report.changes.join("; ")
            );
        } else if trigger == Trigger::Signal && report.refusals.is_empty() {
            info!("reload ({}): nothing changed", trigger.name());
        }
        if !report.changes.is_empty() {
            log_chains(&loader.served());
        }
        if !report.changes.is_empty() || trigger == Trigger::Signal {
            log_expiry(&loader.served());
        }
    }

    /// Each certificate served: subject, SHA-256 fingerprint and not-after
    /// (Unix seconds), once each (for the metrics).
    pub fn certificates(&self) -> Vec<(String, String, i64)> {
        let mut all: Vec<(String, String, i64)> = Vec::new();
        for (_, summary) in self.lock().served() {
            if !all.iter().any(|(_, sha, _)| *sha == summary.fingerprint) {
                all.push((
                    summary.subject.clone(),
                    summary.fingerprint.clone(),
                    summary.not_after,
                ));
            }
        }
        all
    }

    /// Logs a warning or error for each certificate near or past its expiry.
    pub fn check_expiry(&self) {
        log_expiry(&self.lock().served());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Loader> {
        // A panic while holding the lock leaves a loader that is still
        // whole (every field is replaced only once it is complete).
        self.loader.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Warns about each served certificate whose chain lacks its
/// intermediates (see [`crate::certs::only_the_leaf`]): at start and
/// after a reload that took something, not daily.
pub fn log_chains(served: &[(&str, &CertSummary)]) {
    for (origin, summary) in served {
        if let Some(why) = &summary.chain_warning {
            warn!("{origin}: {why}");
        }
    }
}

/// Logs what [`expiry_note`] says about each served certificate.
pub fn log_expiry(served: &[(&str, &CertSummary)]) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    for (origin, summary) in served {
        match expiry_note(summary, origin, now) {
            Some(Expiry::Expired(line)) => error!("{line}"),
            Some(Expiry::Soon(line)) => warn!("{line}"),
            None => {}
        }
    }
}

/// A certificate's expiry worth telling.
#[derive(Debug, PartialEq, Eq)]
pub enum Expiry {
    /// Within [`EXPIRY_WARNING_DAYS`].
    Soon(String),
    /// Already past; it is still served, so an outage is not made worse.
    Expired(String),
}

/// What to say about a certificate's expiry at `now` (Unix seconds).
pub fn expiry_note(summary: &CertSummary, origin: &str, now: i64) -> Option<Expiry> {
    let renew = match summary.development {
        // New at every start and never reloaded: nothing to say.
        Some(Development::SelfSigned) => return None,
        // Signed for a while at start: a restart signs a new one.
        Some(Development::SignedByDevCa) => "restart wssify to sign a new one",
        None => "renew it",
    };
    let left = summary.not_after.saturating_sub(now);
    if left < 0 {
        return Some(Expiry::Expired(format!(
            "certificate {} ({origin}) expired on {} and is still served: {renew}",
            summary.subject, summary.expires
        )));
    }
    let days = left / 86_400;
    (days < EXPIRY_WARNING_DAYS).then(|| {
        Expiry::Soon(format!(
            "certificate {} ({origin}) expires in {days} days, on {}: {renew}",
            summary.subject, summary.expires
        ))
    })
}

/// Registers for SIGHUP. Done before the startup line: SIGHUP's default
/// action would end the process.
pub fn hangups() -> Result<Signal, StartupError> {
    signal(SignalKind::hangup())
        .map_err(|e| StartupError::new(format!("cannot listen for SIGHUP: {e}")))
}

/// Runs the reload triggers for the process's life: SIGHUP always; with an
/// interval, also directory watching and the timer.
pub fn spawn(reloader: Arc<Reloader>, mut hangups: Signal, interval: Option<Duration>) {
    let (tx, mut changes) = mpsc::channel::<()>(1);
    let dirs = reloader.watch_dirs();
    // The development certificate has no file: nothing to watch or poll.
    let interval = interval.filter(|_| !dirs.is_empty());
    // Kept alive by the task; dropping it stops the watching.
    let watcher = interval.and_then(|_| watch(&dirs, reloader.input_names(), tx));
    match interval {
        _ if dirs.is_empty() => {}
        Some(every) => info!(
            "certificates reload on SIGHUP, on file change{} and every {}",
            if watcher.is_some() {
                ""
            } else {
                " (watching unavailable)"
            },
            format_duration(every)
        ),
        None => info!("certificates reload on SIGHUP only (--reload-interval 0)"),
    }
    tokio::spawn(async move {
        let _watcher = watcher;
        let period = interval.unwrap_or(EXPIRY_CHECK);
        let mut timer = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        let mut daily =
            tokio::time::interval_at(tokio::time::Instant::now() + EXPIRY_CHECK, EXPIRY_CHECK);
        loop {
            let trigger = tokio::select! {
                _ = hangups.recv() => Trigger::Signal,
                Some(()) = changes.recv() => {
                    settle(&mut changes).await;
                    Trigger::FileChange
                }
                _ = timer.tick(), if interval.is_some() => Trigger::Timer,
                _ = daily.tick() => {
                    let reloader = reloader.clone();
                    let _ = tokio::task::spawn_blocking(move || reloader.check_expiry()).await;
                    continue;
                }
            };
            debug!("reloading certificates ({})", trigger.name());
            // `systemctl reload` sends SIGHUP to a Type=notify-reload unit
            // and waits for RELOADING=1, then READY=1.
            let asked = matches!(trigger, Trigger::Signal);
            if asked {
                crate::systemd::reloading();
            }
            let reloader = reloader.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || reloader.reload(trigger)).await {
                error!("reload failed unexpectedly ({e}); still serving the previous certificates");
            }
            if asked {
                crate::systemd::ready();
            }
        }
    });
}

/// Whether a change to `path`, in a watched directory, may change an input:
/// one named by `names` (an input or a link's target), a Kubernetes
/// `..data` link and its siblings, or a name a `--cert-dir` would serve (or
/// a renewal writes beside a link's target). Anything else must not wake
/// the reloader: a log file written into the same directory would have it
/// re-read every certificate every 2 seconds, and wake the runtime on
/// every line.
fn may_change_an_input(path: &Path, names: &[OsString]) -> bool {
    let Some(name) = path.file_name() else {
        return true;
    };
    names.iter().any(|n| n == name)
        || name.as_encoded_bytes().starts_with(b"..")
        || path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| DIR_EXTENSIONS.contains(&e))
}

/// Waits until events stop arriving for [`SETTLE`], or [`SETTLE_AT_MOST`].
async fn settle(changes: &mut mpsc::Receiver<()>) {
    let until = tokio::time::Instant::now() + SETTLE_AT_MOST;
    while let Ok(Some(())) = tokio::time::timeout_at(
        until.min(tokio::time::Instant::now() + SETTLE),
        changes.recv(),
    )
    .await
    {}
}

/// Watches `dirs` (not recursively); every change that could alter an
/// input sends on `tx`. `None` when inotify cannot be used: the timer remains.
fn watch(
    dirs: &[PathBuf],
    names: Vec<OsString>,
    tx: mpsc::Sender<()>,
) -> Option<notify::RecommendedWatcher> {
    let handler = move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        // Opening and reading files (our own reloads among them) changes nothing.
        if matches!(
            event.kind,
            EventKind::Access(
                AccessKind::Open(_) | AccessKind::Read | AccessKind::Close(AccessMode::Read)
            )
        ) {
            return;
        }
        // No path: the kernel's queue overflowed, and anything may have changed.
        let matters = |p: &PathBuf| may_change_an_input(p, &names);
        if !event.paths.is_empty() && !event.paths.iter().any(matters) {
            return;
        }
        debug!("certificate change seen: {:?}", event.paths);
        // Full means a reload is already due.
        let _ = tx.try_send(());
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(watcher) => watcher,
        Err(e) => {
            warn!("cannot watch certificate files ({e}); relying on SIGHUP and the timer");
            return None;
        }
    };
    for dir in dirs {
        match watcher.watch(dir, RecursiveMode::NonRecursive) {
            Ok(()) => debug!("watching {} for certificate changes", dir.display()),
            Err(e) => warn!(
                "cannot watch {} ({e}); its changes are seen on SIGHUP and by the timer",
                dir.display()
            ),
        }
    }
    Some(watcher)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(not_after: i64) -> CertSummary {
        CertSummary {
            subject: "example.com".to_string(),
            names: vec!["example.com".to_string()],
            expires: "2030-01-01".to_string(),
            not_after,
            fingerprint: String::new(),
            dns_names: Vec::new(),
            development: None,
            chain_len: 1,
            chain_warning: None,
            algs: Default::default(),
        }
    }

    #[test]
    fn only_changes_to_inputs_wake_the_reloader() {
        let names = vec![OsString::from("fullchain"), OsString::from("tls.key")];
        for path in [
            "/etc/x/fullchain",
            "/etc/x/tls.key",
            "/etc/x/..data",
            "/etc/x/..2026_11_23_10_00_00.123",
            "/etc/x/new.crt",
            "/etc/archive/fullchain4.pem",
            "/",
        ] {
            assert!(may_change_an_input(Path::new(path), &names), "{path}");
        }
        for path in ["/etc/x/wssify.log", "/etc/x/fullchain.tmp", "/etc/x/notes"] {
            assert!(!may_change_an_input(Path::new(path), &names), "{path}");
        }
    }

    #[test]
    fn expiry_notes() {
        let day = 86_400;
        let now = 1_000_000_000;
        assert_eq!(expiry_note(&summary(now + 30 * day), "--cert a", now), None);
        match expiry_note(&summary(now + 5 * day + 10), "--cert a", now) {
            Some(Expiry::Soon(line)) => assert!(line.contains("expires in 5 days"), "{line}"),
            other => panic!("{other:?}"),
        }
        match expiry_note(&summary(now - 1), "--cert a", now) {
            Some(Expiry::Expired(line)) => {
                assert!(line.contains("(--cert a) expired on 2030-01-01"), "{line}")
            }
            other => panic!("{other:?}"),
        }
        let mut dev = summary(now + 5 * day + 10);
        dev.development = Some(Development::SignedByDevCa);
        match expiry_note(&dev, "development", now) {
            Some(Expiry::Soon(line)) => assert!(
                line.ends_with(
                    "expires in 5 days, on 2030-01-01: restart wssify to sign a new one"
                ),
                "{line}"
            ),
            other => panic!("{other:?}"),
        }
        dev.development = Some(Development::SelfSigned);
        assert_eq!(expiry_note(&dev, "development", now), None);
    }
}
