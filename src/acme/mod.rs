//! Trusted certificates by themselves: ACME (RFC 8555, Let's Encrypt and
//! any other ACME CA) with the TLS-ALPN-01 challenge (RFC 8737) answered on
//! the listening port itself, so no HTTP listener and no port 80.
//!
//! One certificate per `--acme` name, each kept by a background task of
//! its own ([`spawn`]): it reads what `--acme-dir` holds, orders when there
//! is nothing valid, renews when the CA's renewal information (ARI, RFC
//! 9773) says or at two thirds of the lifetime, and retries failures with
//! growing back-off while the current certificate keeps serving. A
//! certificate obtained is written to the directory and taken up by the
//! certificate reloader ([`crate::loader`]), so it is served under the same
//! rules as files: SNI choice, reload without touching open connections,
//! expiry warnings. Nothing here runs on a connection's path; connections
//! only read [`Status`].

pub mod challenge;
pub mod store;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use instant_acme::{
    Account, AuthorizationStatus, CertificateIdentifier, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use log::{debug, error, info, warn};
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::reload::{Reloader, Trigger};
use challenge::Challenges;
use store::Store;

/// Let's Encrypt's production directory: `--acme-ca`'s default.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Let's Encrypt's staging directory (`--acme-staging`): untrusted
/// certificates, generous rate limits, for trying a setup out.
pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// First wait after a failure; it doubles up to [`MAX_RETRY`]. Tests
/// shorten it with `WSSIFY_ACME_RETRY_MS` (it also paces lock polling and
/// the earliest renewal after a certificate is obtained); neither that nor
/// `WSSIFY_ACME_RENEW_AFTER_MS` is meant for operators.
const FIRST_RETRY: Duration = Duration::from_secs(60);
/// Longest wait between attempts.
const MAX_RETRY: Duration = Duration::from_secs(6 * 3600);
/// A certificate is looked at again at least this often (ARI may move the
/// window, a replica may have renewed it).
const RECHECK: Duration = Duration::from_secs(6 * 3600);
/// How long the CA may take to validate and to issue.
const ORDER_TIMEOUT: Duration = Duration::from_secs(90);

/// The ACME part of the settings (`--acme` and its flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeSettings {
    /// The names to obtain certificates for, lower case, one each.
    pub names: Vec<String>,
    /// `--acme-email`: the account's contact (expiry and policy mail).
    pub email: Option<String>,
    /// The ACME directory URL (`--acme-ca`, `--acme-staging`).
    pub directory: String,
    /// `--acme-ca-root`: trust only this PEM root for the ACME server's
    /// HTTPS (Pebble, step-ca, a company CA); `None`: the system's roots.
    pub ca_root: Option<PathBuf>,
    /// `--acme-dir`.
    pub dir: PathBuf,
    /// `--acme-renew-before`: renew when less than this is left, whatever
    /// the CA says.
    pub renew_before: Option<Duration>,
}

/// `--acme-dir`'s default: `$STATE_DIRECTORY` (what systemd's
/// `StateDirectory=wssify` sets) + `/acme`, else
/// `$XDG_STATE_HOME/wssify/acme`, else `~/.local/state/wssify/acme`.
pub fn default_dir() -> Result<PathBuf, String> {
    let absolute = |var: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    // systemd joins several StateDirectory= entries with ':'.
    if let Some(state) = std::env::var("STATE_DIRECTORY")
        .ok()
        .and_then(|s| s.split(':').next().map(PathBuf::from))
        .filter(|p| p.is_absolute())
    {
        return Ok(state.join("acme"));
    }
    if let Some(state) = absolute("XDG_STATE_HOME") {
        return Ok(state.join("wssify").join("acme"));
    }
    if let Some(home) = absolute("HOME") {
        return Ok(home.join(".local/state/wssify/acme"));
    }
    Err("neither STATE_DIRECTORY, XDG_STATE_HOME nor HOME is set".to_string())
}

/// What connections read: the challenges under way and the names still
/// waiting for their first certificate.
pub struct Status {
    /// The challenge certificates (this process's and replicas').
    pub challenges: Arc<Challenges>,
    /// The configuration validations are answered with.
    pub challenge_config: Arc<ServerConfig>,
    /// Names without a certificate yet, and why.
    waiting: Mutex<HashMap<String, Waiting>>,
}

/// A name with no certificate yet.
#[derive(Clone)]
struct Waiting {
    /// The last failure, if any.
    why: Option<String>,
    /// When the next attempt starts; `None`: under way now.
    next: Option<SystemTime>,
}

/// What a connection becomes, by its ClientHello, as far as ACME cares.
pub enum Verdict {
    /// Served as usual.
    Serve,
    /// A TLS-ALPN-01 validation of a name being validated: answered with
    /// the challenge certificate, never sent to a backend.
    Validation,
    /// An `--acme` name with no certificate yet: refused before the
    /// handshake, for this reason.
    Waiting(String),
}

impl Status {
    /// What a connection whose ClientHello asked for this becomes.
    pub fn verdict(&self, hello: &crate::wire::client_hello::Hello) -> Verdict {
        let Some(name) = hello.server_name.as_deref() else {
            return Verdict::Serve;
        };
        if challenge::is_validation(&hello.alpn) && self.challenges.pending(name) {
            return Verdict::Validation;
        }
        match self.waiting(name) {
            Some(why) => Verdict::Waiting(why),
            None => Verdict::Serve,
        }
    }

    /// Why a handshake for `name` cannot be served yet (an `--acme` name
    /// with no certificate), with when the next attempt is; `None` when
    /// it can.
    pub fn waiting(&self, name: &str) -> Option<String> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let waiting = self.waiting.lock().ok()?.get(&name).cloned()?;
        let when = match waiting.next {
            Some(at) => format!("next attempt at {}", rfc3339(at)),
            None => "an order is under way".to_string(),
        };
        Some(match waiting.why {
            Some(why) => format!("no certificate for {name} yet (--acme): {why}; {when}"),
            None => format!("no certificate for {name} yet (--acme): {when}"),
        })
    }

    fn set_waiting(&self, name: &str, why: Option<String>, next: Option<SystemTime>) {
        if let Ok(mut waiting) = self.waiting.lock() {
            waiting.insert(name.to_string(), Waiting { why, next });
        }
    }

    /// The loader took up a certificate for `name` expiring at
    /// `not_after` (Unix seconds): its handshakes are served from now on.
    pub fn served(&self, name: &str, not_after: i64) {
        if not_after > crate::dev_ca::store::now() {
            self.set_ready(name);
        }
    }

    fn set_ready(&self, name: &str) {
        if let Ok(mut waiting) = self.waiting.lock() {
            waiting.remove(name);
        }
    }
}

/// The parts the certificate loader needs to serve what ACME keeps: one
/// `DIR/CA/certs/NAME.pem` per name.
pub fn served_files(settings: &AcmeSettings) -> (PathBuf, Vec<(String, PathBuf)>) {
    let store = Store::new(&settings.dir, &settings.directory);
    let files = settings
        .names
        .iter()
        .map(|name| (name.clone(), store.cert_path(name)))
        .collect();
    (store.certs_dir(), files)
}

/// Prepares `--acme-dir` and the challenge configuration; fails with one
/// line when the directory cannot be used. Names already holding a valid
/// certificate are served at once (the loader read them); the others are
/// marked waiting until [`spawn`]'s tasks obtain theirs.
pub fn prepare(
    settings: &AcmeSettings,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<Status>, String> {
    let store = Store::new(&settings.dir, &settings.directory);
    store.prepare()?;
    let challenges = Arc::new(Challenges::new(
        settings.names.clone(),
        store.challenges_dir(),
        provider,
    ));
    let challenge_config = challenges.config()?;
    let status = Arc::new(Status {
        challenges,
        challenge_config,
        waiting: Mutex::new(HashMap::new()),
    });
    let now = SystemTime::now();
    for name in &settings.names {
        if !matches!(held(&store, name), Some(h) if h.not_after > now) {
            status.set_waiting(name, None, None);
        }
    }
    Ok(status)
}

/// Starts one background task per name (see the module comment). Runs
/// inside the tokio runtime; returns at once.
pub fn spawn(settings: &AcmeSettings, status: Arc<Status>, reloader: Arc<Reloader>) {
    let first_retry = std::env::var("WSSIFY_ACME_RETRY_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map_or(FIRST_RETRY, Duration::from_millis);
    let manager = Arc::new(Manager {
        store: Store::new(&settings.dir, &settings.directory),
        settings: settings.clone(),
        status,
        reloader,
        account: tokio::sync::Mutex::new(None),
        first_retry,
        renew_after: std::env::var("WSSIFY_ACME_RENEW_AFTER_MS")
            .ok()
            .and_then(|ms| ms.parse().ok())
            .map(Duration::from_millis),
    });
    info!(
        "ACME: certificates for {} from {}, kept in {}",
        settings.names.join(", "),
        settings.directory,
        crate::logsafe::path(&settings.dir)
    );
    for name in &settings.names {
        tokio::spawn(manager.clone().keep(name.clone()));
    }
}

/// What every name's task shares.
struct Manager {
    settings: AcmeSettings,
    store: Store,
    status: Arc<Status>,
    reloader: Arc<Reloader>,
    /// Made or read once, on first need.
    account: tokio::sync::Mutex<Option<Account>>,
    first_retry: Duration,
    /// Tests only (`WSSIFY_ACME_RENEW_AFTER_MS`): renew this long after a
    /// certificate's start, to see renewals with a CA whose certificates
    /// last years (Pebble's).
    renew_after: Option<Duration>,
}

/// A certificate kept for a name.
struct Held {
    not_before: SystemTime,
    not_after: SystemTime,
    /// Its ARI identifier, when it has an authority key identifier.
    id: Option<CertificateIdentifier<'static>>,
    /// SHA-256 of the leaf, to tell a new one from the one served.
    fingerprint: String,
}

/// The certificate kept for `name`, if it is there and readable.
fn held(store: &Store, name: &str) -> Option<Held> {
    let bytes = store.read_cert(name).ok()??;
    let leaf = CertificateDer::pem_slice_iter(&bytes).next()?.ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let at = |t: x509_parser::time::ASN1Time| {
        SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(t.timestamp()).unwrap_or(0))
    };
    Some(Held {
        not_before: at(cert.validity().not_before),
        not_after: at(cert.validity().not_after),
        id: CertificateIdentifier::try_from(&leaf)
            .ok()
            .map(CertificateIdentifier::into_owned),
        fingerprint: crate::certs::fingerprint(leaf.as_ref()),
    })
}

/// What stopped an attempt, said for the operator, and how long to wait
/// at least before the next (a rate limit's end).
struct Failure {
    why: String,
    not_before: Option<SystemTime>,
}

impl From<String> for Failure {
    fn from(why: String) -> Failure {
        Failure {
            why,
            not_before: None,
        }
    }
}

impl Manager {
    /// Keeps `name`'s certificate for the process's life.
    async fn keep(self: Arc<Self>, name: String) {
        let mut failures: u32 = 0;
        let mut served: Option<String> = None;
        let mut said_locked = false;
        loop {
            let current = held(&self.store, &name);
            if let Some(h) = &current {
                if served.as_ref() != Some(&h.fingerprint) {
                    // A certificate another process (or an earlier run)
                    // wrote: served from now on.
                    if served.is_some() || self.status.waiting(&name).is_some() {
                        self.take_up().await;
                    }
                    served = Some(h.fingerprint.clone());
                }
                if h.not_after > SystemTime::now() {
                    self.status.set_ready(&name);
                }
            }
            let due = match &current {
                Some(h) => self.renewal_time(&name, h).await,
                None => SystemTime::now(),
            };
            crate::observe::metrics::acme_next(&name, due);
            if let Ok(wait) = due.duration_since(SystemTime::now()) {
                tokio::time::sleep(wait.min(RECHECK)).await;
                continue;
            }
            let lock = match self.store.try_lock_name(&name) {
                Ok(Some(lock)) => lock,
                Ok(None) => {
                    if !said_locked {
                        info!(
                            "ACME: another wssify sharing --acme-dir is ordering {name}; waiting for its certificate"
                        );
                        said_locked = true;
                    }
                    tokio::time::sleep(self.first_retry.min(Duration::from_secs(5))).await;
                    continue;
                }
                Err(e) => {
                    error!(
                        "ACME: cannot lock {name} in {} ({e}); check that --acme-dir is writable; retrying",
                        crate::logsafe::path(&self.store.ca_dir)
                    );
                    tokio::time::sleep(self.backoff(failures.max(1))).await;
                    continue;
                }
            };
            said_locked = false;
            // Under the lock: a replica may have just written one.
            if let Some(h) = held(&self.store, &name)
                && served.as_ref() != Some(&h.fingerprint)
            {
                drop(lock);
                continue;
            }
            self.status.set_waiting_if_absent(&name, current.is_none());
            let started = std::time::Instant::now();
            let attempt = self.obtain(&name, current.as_ref()).await;
            self.status.challenges.remove(&name);
            crate::observe::metrics::acme_order(attempt.is_ok());
            match attempt {
                Ok(()) => {
                    failures = 0;
                    self.take_up().await;
                    self.status.set_ready(&name);
                    if let Some(h) = held(&self.store, &name) {
                        served = Some(h.fingerprint.clone());
                        let due = self.renewal_time(&name, &h).await;
                        crate::observe::metrics::acme_next(&name, due);
                        info!(
                            "ACME: certificate for {name} obtained in {:.1}s, valid until {}; serving it",
                            started.elapsed().as_secs_f64(),
                            rfc3339(h.not_after)
                        );
                    }
                    drop(lock);
                    // Never two orders back to back (a renewal window
                    // already open, a forced --acme-renew-before).
                    tokio::time::sleep(self.first_retry).await;
                }
                Err(failure) => {
                    drop(lock);
                    failures = failures.saturating_add(1);
                    let mut wait = self.backoff(failures);
                    if let Some(until) = failure.not_before
                        && let Ok(longer) = until.duration_since(SystemTime::now())
                    {
                        wait = wait.max(longer);
                    }
                    let next = SystemTime::now() + wait;
                    crate::observe::metrics::acme_next(&name, next);
                    match &current {
                        Some(h) if h.not_after > SystemTime::now() => {
                            let left = h
                                .not_after
                                .duration_since(SystemTime::now())
                                .unwrap_or_default();
                            let line = format!(
                                "ACME: renewing {name} failed: {}; the current certificate keeps serving (expires {}, in {}); next attempt at {}",
                                failure.why,
                                rfc3339(h.not_after),
                                crate::settings::format_duration(Duration::from_secs(
                                    left.as_secs()
                                )),
                                rfc3339(next)
                            );
                            if left < Duration::from_secs(7 * 86_400) {
                                error!("{line}");
                            } else {
                                warn!("{line}");
                            }
                        }
                        _ => {
                            warn!(
                                "ACME: no certificate for {name} yet: {}; next attempt at {}",
                                failure.why,
                                rfc3339(next)
                            );
                            self.status
                                .set_waiting(&name, Some(failure.why.clone()), Some(next));
                        }
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Growing back-off: the first wait, doubled per failure, capped.
    fn backoff(&self, failures: u32) -> Duration {
        let factor = 1u32 << failures.saturating_sub(1).min(16);
        self.first_retry.saturating_mul(factor).min(MAX_RETRY)
    }

    /// Has the reloader take up what the directory now holds.
    async fn take_up(&self) {
        let reloader = self.reloader.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || reloader.reload(Trigger::Acme)).await {
            error!("ACME: reloading certificates failed unexpectedly ({e})");
        }
    }

    /// When `h` should be replaced: see [`planned_renewal`]; the CA's
    /// window is asked for (ARI) unless `--acme-renew-before` decides.
    async fn renewal_time(&self, name: &str, h: &Held) -> SystemTime {
        if let Some(after) = self.renew_after {
            return h.not_before + after;
        }
        let lifetime = h.not_after.duration_since(h.not_before).unwrap_or_default();
        if let Some(before) = self.settings.renew_before
            && before >= lifetime
        {
            warn!(
                "ACME: --acme-renew-before {} is not shorter than {name}'s certificate's lifetime ({}); renewing at two thirds of it instead",
                crate::settings::format_duration(before),
                crate::settings::format_duration(Duration::from_secs(lifetime.as_secs()))
            );
        }
        let window = match (&h.id, self.settings.renew_before) {
            (Some(id), None) => self.renewal_window(name, id).await,
            _ => None,
        };
        let mut random = [0u8; 4];
        let _ = aws_lc_rs::rand::fill(&mut random);
        let fraction = f64::from(u32::from_le_bytes(random)) / f64::from(u32::MAX);
        planned_renewal(
            h.not_before,
            h.not_after,
            self.settings.renew_before,
            window,
            fraction,
        )
    }

    /// The CA's suggested renewal window for a certificate (ARI), if it
    /// has one and answers.
    async fn renewal_window(
        &self,
        name: &str,
        id: &CertificateIdentifier<'static>,
    ) -> Option<(SystemTime, SystemTime)> {
        let account = match self.account().await {
            Ok(account) => account,
            Err(e) => {
                debug!("ACME: no renewal information for {name}: {}", e.why);
                return None;
            }
        };
        match account.renewal_info(id).await {
            Ok((info, _)) => {
                let start = SystemTime::from(info.suggested_window.start);
                let end = SystemTime::from(info.suggested_window.end);
                debug!(
                    "ACME: the CA suggests renewing {name} between {} and {}",
                    rfc3339(start),
                    rfc3339(end)
                );
                Some((start, end))
            }
            Err(instant_acme::Error::Unsupported(_)) => None,
            Err(e) => {
                debug!(
                    "ACME: no renewal information for {name} ({e}); renewing at two thirds of its lifetime"
                );
                None
            }
        }
    }

    /// The ACME account: read from the directory, or made once (under the
    /// account lock, so replicas make one between them).
    async fn account(&self) -> Result<Account, Failure> {
        let mut cached = self.account.lock().await;
        if let Some(account) = &*cached {
            return Ok(account.clone());
        }
        let lock = loop {
            match self.store.try_lock_account() {
                Ok(Some(lock)) => break lock,
                Ok(None) => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(e) => {
                    return Err(format!(
                        "cannot lock the ACME account in {} ({e}); check that --acme-dir is writable",
                        crate::logsafe::path(&self.store.ca_dir)
                    )
                    .into());
                }
            }
        };
        let builder = || match &self.settings.ca_root {
            Some(root) => Account::builder_with_root(root).map_err(|e| {
                Failure::from(format!(
                    "--acme-ca-root {}: not a usable PEM certificate ({e})",
                    crate::logsafe::path(root)
                ))
            }),
            None => Account::builder().map_err(|e| Failure::from(self.explain(&e))),
        };
        let account = match self.store.read_account()? {
            Some(credentials) => builder()?
                .from_credentials(credentials)
                .await
                .map_err(|e| Failure::from(self.explain(&e)))?,
            None => {
                let contact = self.settings.email.as_ref().map(|e| format!("mailto:{e}"));
                let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
                let (account, credentials) = builder()?
                    .create(
                        &NewAccount {
                            contact: &contacts,
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        self.settings.directory.clone(),
                        None,
                    )
                    .await
                    .map_err(|e| self.failure(&e))?;
                self.store.write_account(&credentials)?;
                info!(
                    "ACME: account made at {} and kept in {}",
                    self.settings.directory,
                    crate::logsafe::path(&self.store.ca_dir)
                );
                account
            }
        };
        drop(lock);
        *cached = Some(account.clone());
        Ok(account)
    }

    /// One order for `name`, from the new order to the certificate kept.
    async fn obtain(&self, name: &str, previous: Option<&Held>) -> Result<(), Failure> {
        let account = self.account().await?;
        info!(
            "ACME: ordering a certificate for {name} from {}",
            self.settings.directory
        );
        let identifiers = [Identifier::Dns(name.to_string())];
        let replaces = previous.and_then(|h| h.id.clone());
        let mut order = match replaces {
            Some(id) => match account
                .new_order(&NewOrder::new(&identifiers).replaces(id))
                .await
            {
                // A CA without ARI takes no `replaces`.
                Err(instant_acme::Error::Unsupported(_)) => {
                    account.new_order(&NewOrder::new(&identifiers)).await
                }
                other => other,
            },
            None => account.new_order(&NewOrder::new(&identifiers)).await,
        }
        .map_err(|e| self.failure(&e))?;

        let mut authorizations = order.authorizations();
        while let Some(authorization) = authorizations.next().await {
            let mut authorization = authorization.map_err(|e| self.failure(&e))?;
            match authorization.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => {
                    return Err(format!(
                        "the CA's authorization for {name} is {other:?}; a new order is tried next"
                    )
                    .into());
                }
            }
            let mut challenge = authorization
                .challenge(ChallengeType::TlsAlpn01)
                .ok_or_else(|| {
                    Failure::from(format!(
                        "the CA offers no tls-alpn-01 challenge for {name}, the only one wssify answers; use a CA that does (Let's Encrypt, step-ca, Pebble)"
                    ))
                })?;
            let digest = challenge.key_authorization().digest();
            self.status.challenges.add(name, digest.as_ref())?;
            challenge.set_ready().await.map_err(|e| self.failure(&e))?;
        }
        let polling = RetryPolicy::new()
            .initial_delay(Duration::from_millis(250))
            .backoff(1.5)
            .timeout(ORDER_TIMEOUT);
        let status = order
            .poll_ready(&polling)
            .await
            .map_err(|e| self.failure(&e))?;
        if status != OrderStatus::Ready {
            // Why: the challenge's error, from the authorization.
            let mut why = None;
            let mut authorizations = order.authorizations();
            while let Some(Ok(mut authorization)) = authorizations.next().await {
                if let Ok(state) = authorization.refresh().await {
                    why = state
                        .challenges
                        .iter()
                        .find_map(|c| c.error.clone())
                        .or(why);
                }
            }
            return Err(match why {
                Some(problem) => self.problem(&problem),
                None => format!("the CA left the order for {name} {status:?}").into(),
            });
        }
        let key_pem = order.finalize().await.map_err(|e| self.failure(&e))?;
        let chain = order
            .poll_certificate(&polling)
            .await
            .map_err(|e| self.failure(&e))?;
        self.store.write_cert(name, &chain, &key_pem)?;
        Ok(())
    }

    fn failure(&self, error: &instant_acme::Error) -> Failure {
        match error {
            instant_acme::Error::Api(problem) => self.problem(problem),
            other => Failure::from(self.explain(other)),
        }
    }

    /// A failure that is not a problem document, said with its fix.
    fn explain(&self, error: &instant_acme::Error) -> String {
        match error {
            instant_acme::Error::Api(problem) => self.problem(problem).why,
            instant_acme::Error::Timeout(_) => format!(
                "the CA did not finish within {}s (it may be overloaded); retrying",
                ORDER_TIMEOUT.as_secs()
            ),
            other => format!(
                "cannot talk to the ACME server {} ({}); check this host's outgoing HTTPS and DNS, the --acme-ca URL{}",
                self.settings.directory,
                chain_of(other),
                if self.settings.ca_root.is_some() {
                    " and --acme-ca-root"
                } else {
                    ", and --acme-ca-root if the server has a private certificate"
                }
            ),
        }
    }

    /// A CA's problem document in one line, with the fix.
    fn problem(&self, problem: &instant_acme::Problem) -> Failure {
        let kind = problem
            .r#type
            .as_deref()
            .unwrap_or("")
            .rsplit(':')
            .next()
            .unwrap_or("")
            .to_string();
        let detail = problem.detail.clone().unwrap_or_else(|| kind.clone());
        let dir = crate::logsafe::path(&self.store.ca_dir).to_string();
        let why = match kind.as_str() {
            "connection" | "tls" | "incorrectResponse" | "unauthorized" => format!(
                "the CA could not validate the name over TLS ({detail}): port 443 of the name's address must reach wssify's --listen port from the internet (open the firewall, forward 443, or pass TLS through a load balancer unchanged)"
            ),
            "dns" => format!(
                "the CA cannot resolve the name ({detail}): point its DNS A/AAAA records at this host"
            ),
            "caa" => format!(
                "the name's CAA DNS records forbid this CA ({detail}): add a CAA record allowing it"
            ),
            "rejectedIdentifier" | "unsupportedIdentifier" => format!(
                "the CA will not issue for this name ({detail}): public CAs need a public DNS name you control"
            ),
            "rateLimited" => {
                let until = retry_after_in(&detail);
                return Failure {
                    why: format!(
                        "rate limited by the CA until {} ({detail}); waiting for it (use --acme-staging while trying a setup out)",
                        until.map_or("it lifts".to_string(), rfc3339)
                    ),
                    not_before: until,
                };
            }
            "accountDoesNotExist"
            | "invalidContact"
            | "unsupportedContact"
            | "agreementRequired"
            | "userActionRequired"
            | "externalAccountRequired"
            | "badPublicKey" => format!(
                "the CA refused the account ({detail}): check --acme-email; to start over with a new account move {dir}/account.json away"
            ),
            "malformed" | "badCSR" | "serverInternal" | "orderNotReady" | "badNonce" => {
                format!("the CA refused the request ({detail}); retrying")
            }
            _ => format!("the CA answered: {detail}"),
        };
        Failure::from(why)
    }
}

impl Status {
    /// Marks `name` waiting while its first order runs (`absent`: no
    /// certificate is held), keeping a failure already reported.
    fn set_waiting_if_absent(&self, name: &str, absent: bool) {
        if !absent {
            return;
        }
        if let Ok(mut waiting) = self.waiting.lock() {
            let entry = waiting.entry(name.to_string()).or_insert(Waiting {
                why: None,
                next: None,
            });
            entry.next = None;
        }
    }
}

/// When a certificate valid from `not_before` to `not_after` is renewed:
/// `renew_before` ahead of its end (when that is within its lifetime), else
/// at `fraction` (0 to 1, drawn at random) of the CA's suggested `window`
/// (RFC 9773: a random moment spreads the CA's load), else at two thirds
/// of its lifetime.
fn planned_renewal(
    not_before: SystemTime,
    not_after: SystemTime,
    renew_before: Option<Duration>,
    window: Option<(SystemTime, SystemTime)>,
    fraction: f64,
) -> SystemTime {
    let lifetime = not_after.duration_since(not_before).unwrap_or_default();
    if let Some(before) = renew_before.filter(|b| *b < lifetime) {
        return not_after - before;
    }
    if let Some((start, end)) = window {
        let span = end.duration_since(start).unwrap_or_default();
        return start + span.mul_f64(fraction.clamp(0.0, 1.0));
    }
    not_before + lifetime * 2 / 3
}

/// An error with its sources, on one line.
fn chain_of(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        let more = inner.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = inner.source();
    }
    text
}

/// The moment a rate-limit detail names ("retry after 2026-01-02 03:04:05
/// UTC" or an RFC 3339 time), if any.
fn retry_after_in(detail: &str) -> Option<SystemTime> {
    let lower = detail.to_ascii_lowercase();
    let at = lower.find("retry after ")? + "retry after ".len();
    let text = detail.get(at..)?;
    let stamp: String = text
        .chars()
        .take_while(|c| c.is_ascii_digit() || matches!(c, '-' | ':' | ' ' | 'T' | 'Z'))
        .collect();
    let stamp = stamp.trim().trim_end_matches(':').trim();
    let digits: Vec<i64> = stamp
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect();
    let [year, month, day, hour, minute, second, ..] = digits[..] else {
        return None;
    };
    let days = days_from_civil(year, month, day)?;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> Option<i64> {
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

/// A moment as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn rfc3339(at: SystemTime) -> String {
    let secs = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Inverse of days_from_civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_without_a_certificate_is_refused_saying_why_and_when() {
        let dir = tempfile::tempdir().unwrap();
        let settings = AcmeSettings {
            names: vec!["a.test".to_string()],
            email: None,
            directory: "https://ca.test/dir".to_string(),
            ca_root: None,
            dir: dir.path().join("acme"),
            renew_before: None,
        };
        let status = prepare(&settings, crate::tls::provider()).unwrap();
        let why = status.waiting("A.test.").unwrap();
        assert!(why.contains("an order is under way"), "{why}");
        assert_eq!(status.waiting("b.test"), None);
        let next = SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_323_045);
        status.set_waiting(
            "a.test",
            Some("the CA cannot resolve the name".into()),
            Some(next),
        );
        assert_eq!(
            status.waiting("a.test").unwrap(),
            "no certificate for a.test yet (--acme): the CA cannot resolve the name; next attempt at 2026-01-02T03:04:05Z"
        );
        // An expired certificate taken up does not end the wait; a valid one does.
        status.served("a.test", 1);
        assert!(status.waiting("a.test").is_some());
        status.served("a.test", i64::MAX);
        assert_eq!(status.waiting("a.test"), None);
        // The directory is private.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("acme"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn the_default_https_client_builds_without_a_process_wide_provider() {
        // Let's Encrypt's path: the system's roots, no --acme-ca-root.
        assert!(Account::builder().is_ok());
    }

    #[test]
    fn a_directory_others_can_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("acme");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let why = Store::new(&open, LETS_ENCRYPT).prepare().unwrap_err();
        assert!(
            why.contains("can be written by others") && why.contains("chmod 700"),
            "{why}"
        );
    }

    #[test]
    fn renewal_is_planned_by_the_flag_the_ca_or_two_thirds() {
        let day = Duration::from_secs(86_400);
        let start = SystemTime::UNIX_EPOCH + 1000 * day;
        let end = start + 90 * day;
        // Two thirds of 90 days, without a window or a flag.
        assert_eq!(
            planned_renewal(start, end, None, None, 0.5),
            start + 60 * day
        );
        // A moment in the CA's window.
        let window = Some((start + 70 * day, start + 72 * day));
        assert_eq!(
            planned_renewal(start, end, None, window, 0.0),
            start + 70 * day
        );
        assert_eq!(
            planned_renewal(start, end, None, window, 0.5),
            start + 71 * day
        );
        assert_eq!(
            planned_renewal(start, end, None, window, 1.0),
            start + 72 * day
        );
        // The flag wins; one not shorter than the lifetime is not taken.
        assert_eq!(
            planned_renewal(start, end, Some(30 * day), window, 0.5),
            start + 60 * day
        );
        assert_eq!(
            planned_renewal(start, end, Some(90 * day), None, 0.5),
            start + 60 * day
        );
    }

    #[test]
    fn times_are_written_and_read_back() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_323_045);
        assert_eq!(rfc3339(at), "2026-01-02T03:04:05Z");
        assert_eq!(
            retry_after_in(
                "too many certificates already issued, retry after 2026-01-02 03:04:05 UTC: see https://letsencrypt.org/docs/rate-limits/"
            ),
            Some(at)
        );
        assert_eq!(retry_after_in("Retry after 2026-01-02T03:04:05Z"), Some(at));
        assert_eq!(retry_after_in("slow down"), None);
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
    }
}
