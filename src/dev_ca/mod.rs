//! The development certificate served when no certificate is given, and
//! the local development CA that signs it, so that trusting it once lasts
//! across restarts.
//!
//! How the certificate is chosen (no `--cert`, no `--cert-dir`):
//! 1. `--self-signed`: a self-signed certificate made in memory at each
//!    start; nothing is read or written. Clients must trust it anew after
//!    every restart.
//! 2. `--dev-ca-dir DIR`: a certificate signed at this start by the CA in
//!    `DIR`, made there the first time. If that CA cannot be made or used,
//!    the start fails with one line saying why.
//! 3. Otherwise the same with the default directory,
//!    `$XDG_DATA_HOME/wssify/dev-ca` or `$HOME/.local/share/wssify/dev-ca`.
//!    Where nothing can be written there (a read-only file system, no
//!    `HOME`, a container's locked-down user), wssify falls back to 1 and
//!    warns once, saying why and how to get the CA.
//!
//! Either way, a CA whose key others may have read is refused, never
//! silently used or replaced; and so is anything in the directory wssify
//! did not make itself (see [`store`]): it is left exactly as it is.
//!
//! [`store`] keeps the CA on disk, [`trust`] writes what each client needs
//! to trust it, [`system`] puts it into the system store on request
//! (`--dev-ca install`).

pub mod store;
pub mod system;
pub mod trust;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use log::Level;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

use crate::certs::{self, Development as DevKind, LoadedCert};
use crate::error::StartupError;
use crate::settings::DevCert;

pub use store::{DevCa, OpenError, Opened, Peek};

/// How long the served certificate is valid from each start. A new one is
/// signed at every start; a process that runs longer is warned about it
/// 14 days ahead (restarting gets a fresh one). Its key never leaves the
/// process's memory.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(90 * 86_400);

/// The development certificate chosen at start, and what to tell about it.
pub struct Development {
    /// What is served.
    pub loaded: LoadedCert,
    /// The directory and facts of the CA that signed it; `None` for the
    /// in-memory self-signed one. The CA's key is not kept: it is dropped
    /// as soon as this start's certificate is signed.
    pub ca: Option<(PathBuf, store::CaInfo)>,
    /// `--dev-ca-dir` was given (the commands printed must name it).
    pub dir_given: bool,
    /// Lines to log before the rest of the start-up lines (the CA was made,
    /// replaced, or could not be kept).
    pub notes: Vec<(Level, String)>,
}

impl Development {
    /// What the start-up lines say, detached from the certificate so that
    /// they can be logged once the ports are bound.
    pub fn report(&self) -> Report {
        Report {
            names: self.loaded.summary.names.join(", "),
            fingerprint: self.loaded.summary.fingerprint.clone(),
            ca: self.ca.clone(),
            dir_given: self.dir_given,
            notes: self.notes.clone(),
        }
    }
}

/// The facts the start-up lines about the development certificate need.
pub struct Report {
    names: String,
    fingerprint: String,
    ca: Option<(PathBuf, store::CaInfo)>,
    dir_given: bool,
    notes: Vec<(Level, String)>,
}

impl Report {
    /// The start-up lines; `port` is the first listener's, for the example
    /// commands.
    pub fn lines(&self, port: Option<u16>) -> Vec<(Level, String)> {
        let mut lines = self.notes.clone();
        let names = &self.names;
        let fingerprint = format!(
            "development certificate SHA-256 fingerprint: {}",
            self.fingerprint
        );
        match &self.ca {
            None => {
                lines.push((
                    Level::Warn,
                    format!(
                        "no --cert/--key given: serving a self-signed certificate made in memory for {names}. For development only: clients must trust it explicitly (or pin it), browsers will warn; it changes at every start"
                    ),
                ));
                lines.push((Level::Warn, fingerprint));
            }
            Some((dir, info)) => {
                lines.push((
                    Level::Warn,
                    format!(
                        "no --cert/--key given: serving a development certificate for {names}, signed by the development CA {} (sha256 {}). For development only: trust that CA once and every later start is trusted too",
                        crate::logsafe::path(&dir.join(store::CERT_FILE)),
                        info.fingerprint
                    ),
                ));
                lines.push((Level::Info, trust::short(dir, info, port, self.dir_given)));
                // The leaf changes at every start: pinning it is what the
                // CA makes unnecessary, so it is only for debugging.
                lines.push((Level::Debug, fingerprint));
            }
        }
        lines
    }
}

/// The development certificate `dev` asks for; see the module comment.
/// `extra`: names it covers besides the development names (`--route`
/// names under `.localhost`, which the CA may sign).
pub fn development(
    dev: &DevCert,
    extra: &[String],
    provider: &CryptoProvider,
) -> Result<Development, StartupError> {
    match dev {
        DevCert::InMemory => in_memory(provider, extra, Vec::new()),
        DevCert::Ca(Some(dir)) => match store::open(&absolute(dir)) {
            Ok((ca, opened)) => signed(ca, opened, true, extra, provider),
            Err(OpenError::Unwritable(why)) => Err(StartupError::new(format!(
                "--dev-ca-dir {}: {why}; give a directory wssify can write, or --self-signed for a certificate made in memory",
                crate::logsafe::path(dir)
            ))),
            Err(OpenError::Refused(why)) => Err(StartupError::new(why)),
        },
        DevCert::Ca(None) => {
            let dir = match default_dir() {
                Ok(dir) => dir,
                Err(why) => return in_memory(provider, extra, vec![fallback_note(&why)]),
            };
            match store::open(&dir) {
                Ok((ca, opened)) => signed(ca, opened, false, extra, provider),
                Err(OpenError::Unwritable(why)) => {
                    in_memory(provider, extra, vec![fallback_note(&why)])
                }
                Err(OpenError::Refused(why)) => Err(StartupError::new(why)),
            }
        }
    }
}

/// The one line saying why the development CA is not used and how to get it.
fn fallback_note(why: &str) -> (Level, String) {
    (
        Level::Warn,
        format!(
            "no development CA: {why}; serving a self-signed certificate made in memory instead, which clients must trust again after every restart. For one that stays trusted give a writable --dev-ca-dir (e.g. a mounted volume); --self-signed chooses the in-memory one without this warning"
        ),
    )
}

/// What `--dev-ca` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Print where the CA is and how to trust it in each client; make it
    /// first if there is none, so it can be trusted before the first start.
    Show,
    /// Delete it (and what wssify put beside it).
    Remove,
    /// Put it into the system trust store (needs root).
    Install,
    /// Take it out of the system trust store (needs root).
    Uninstall,
}

impl Action {
    /// Reads `show`, `remove`, `install` or `uninstall`.
    pub fn parse(text: &str) -> Option<Action> {
        match text.trim() {
            "show" => Some(Action::Show),
            "remove" => Some(Action::Remove),
            "install" => Some(Action::Install),
            "uninstall" => Some(Action::Uninstall),
            _ => None,
        }
    }
}

/// Does `action` on the CA in `--dev-ca-dir` (`given`) or the default
/// directory: what to print on stdout, or the one-line error.
pub fn run_action(action: Action, given: Option<&Path>) -> Result<String, String> {
    match action {
        Action::Show => show(&action_dir(given)?, given.is_some()),
        Action::Remove => remove(&action_dir(given)?),
        Action::Install => {
            // Under sudo, the CA to install is the user's, in their files.
            store::allow_sudo_user();
            install(&action_dir(given)?, given)
        }
        // Needs no CA: the system store's file has a fixed name.
        Action::Uninstall => system::uninstall(&trust::sudo_command("uninstall", None))
            .map(|done| format!("{done}\n")),
    }
}

/// `--dev-ca show`.
fn show(dir: &Path, dir_given: bool) -> Result<String, String> {
    let (ca, opened) = store::open(dir).map_err(|e| match e {
        OpenError::Unwritable(why) => {
            format!("{why}; give a directory wssify can write with --dev-ca-dir")
        }
        OpenError::Refused(why) => why,
    })?;
    let mut out = String::new();
    match opened {
        Opened::Existing => {}
        Opened::Made => out.push_str("Made a new development CA.\n\n"),
        Opened::Replaced { why, .. } => out.push_str(&format!(
            "The development CA there could not be used ({why}): made a new one.\n\n"
        )),
    }
    out.push_str(&trust::full(&ca.dir, &ca.info, None, dir_given));
    let pem = store::pem("CERTIFICATE", &ca.cert_der);
    if let Some(file) = system::installed(pem.as_bytes()) {
        out.push_str(&format!("\nIt is in the system store: {file}\n"));
    }
    Ok(out)
}

/// `--dev-ca remove`.
fn remove(dir: &Path) -> Result<String, String> {
    match store::remove(dir) {
        Ok((_, false)) => Ok(format!(
            "no development CA in {}: nothing to remove\n",
            crate::logsafe::path(dir)
        )),
        Ok((info, true)) => {
            let what = info.as_ref().map_or(String::new(), |i| {
                format!(" ({}, sha256 {})", i.subject, i.fingerprint)
            });
            Ok(format!(
                "removed the development CA in {}{what}\n{}",
                crate::logsafe::path(dir),
                trust::after_removal(info.as_ref())
            ))
        }
        Err(why) => Err(why),
    }
}

/// `--dev-ca install`: only a CA that is already there (made by a start or
/// `show` as the user), so that `sudo` never makes one as root.
fn install(dir: &Path, given: Option<&Path>) -> Result<String, String> {
    let ca = match store::peek(dir) {
        Peek::Good(ca) => ca,
        Peek::Missing => {
            return Err(format!(
                "no development CA in {}: it is made by the first start without --cert, or by wssify --dev-ca show{}",
                crate::logsafe::path(dir),
                sudo_hint(given)
            ));
        }
        Peek::Replaceable(why) | Peek::Refused(why) => {
            return Err(format!(
                "the development CA in {} cannot be installed: {why}",
                crate::logsafe::path(dir)
            ));
        }
    };
    let pem = store::pem("CERTIFICATE", &ca.cert_der);
    system::install(pem.as_bytes(), &trust::sudo_command("install", Some(dir)))
        .map(|done| format!("{done}\n"))
}

/// Under sudo without `--dev-ca-dir`, HOME is often root's: say so.
fn sudo_hint(given: Option<&Path>) -> &'static str {
    if given.is_none() && std::env::var_os("SUDO_USER").is_some() {
        "; under sudo, HOME may be root's: give your user's directory with --dev-ca-dir (wssify --dev-ca show, run as you, prints it)"
    } else {
        ""
    }
}

/// Where the development CA lives by default: `$XDG_DATA_HOME/wssify/dev-ca`
/// (an absolute `XDG_DATA_HOME` only, as the XDG spec says), else
/// `$HOME/.local/share/wssify/dev-ca`; or why there is no such place.
pub fn default_dir() -> Result<PathBuf, String> {
    let absolute = |var: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    if let Some(data) = absolute("XDG_DATA_HOME") {
        return Ok(data.join("wssify").join("dev-ca"));
    }
    if let Some(home) = absolute("HOME") {
        return Ok(home.join(".local/share/wssify/dev-ca"));
    }
    Err("neither HOME nor XDG_DATA_HOME is set (to an absolute path) to keep it in".to_string())
}

/// The CA directory a `--dev-ca` action works on: `--dev-ca-dir`, else the
/// default, else a one-line error.
pub fn action_dir(given: Option<&Path>) -> Result<PathBuf, String> {
    match given {
        Some(dir) if dir.as_os_str().is_empty() => {
            Err("--dev-ca-dir '': give the directory the development CA is in".to_string())
        }
        Some(dir) => Ok(absolute(dir)),
        None => default_dir().map_err(|why| {
            format!("no place for the development CA: {why}; give --dev-ca-dir DIR")
        }),
    }
}

/// `dir` made absolute, so that the commands printed work from anywhere
/// (another terminal, a browser's file dialog).
fn absolute(dir: &Path) -> PathBuf {
    std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf())
}

fn in_memory(
    provider: &CryptoProvider,
    extra: &[String],
    notes: Vec<(Level, String)>,
) -> Result<Development, StartupError> {
    Ok(Development {
        loaded: certs::self_signed_for(provider, extra)?,
        ca: None,
        dir_given: false,
        notes,
    })
}

/// Signs this start's certificate with `ca`, with lines saying how the CA
/// was come by.
fn signed(
    ca: DevCa,
    opened: Opened,
    dir_given: bool,
    extra: &[String],
    provider: &CryptoProvider,
) -> Result<Development, StartupError> {
    let mut notes = Vec::new();
    match &opened {
        Opened::Existing => {}
        Opened::Made => notes.push((
            Level::Info,
            format!(
                "made a development CA in {}: {} (give this to clients to trust) and its key {} (readable only by you); it can sign only for {}",
                crate::logsafe::path(&ca.dir),
                store::CERT_FILE,
                store::KEY_FILE,
                ca.info.constraints.as_deref().unwrap_or("any name")
            ),
        )),
        Opened::Replaced { why, kept } => notes.push((
            Level::Warn,
            format!(
                "the development CA in {} could not be used ({why}): made a new one (the old files are kept as {}); clients that trusted the old one must trust the new one",
                crate::logsafe::path(&ca.dir),
                kept.iter()
                    .filter_map(|p| p.file_name())
                    .map(|n| n.to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
    let now = store::now();
    let days_left = ca.info.not_after.saturating_sub(now) / 86_400;
    if days_left < LEAF_VALIDITY.as_secs() as i64 / 86_400 {
        notes.push((
            Level::Warn,
            format!(
                "the development CA in {} expires in {days_left} days, on {}; a new one is made once it has: run wssify --dev-ca remove and start again to make it now",
                crate::logsafe::path(&ca.dir),
                ca.info.expires
            ),
        ));
    }
    let loaded = issue(&ca, extra, provider).map_err(|e| {
        StartupError::new(format!(
            "could not sign the development certificate with the CA in {} ({e}); run wssify --dev-ca remove to start afresh, or pass --self-signed",
            crate::logsafe::path(&ca.dir)
        ))
    })?;
    Ok(Development {
        loaded,
        ca: Some((ca.dir.clone(), ca.info.clone())),
        dir_given,
        notes,
    })
}

/// This start's certificate: a new key, the development names and
/// `extra`, valid for
/// [`LEAF_VALIDITY`] (no longer than the CA), signed by `ca`. The chain
/// served is the certificate and then the CA, so that Chrome's
/// `--ignore-certificate-errors-spki-list` can name the CA's key, which
/// does not change between starts (Chrome matches the keys the server
/// sends).
pub fn issue(
    ca: &DevCa,
    extra: &[String],
    provider: &CryptoProvider,
) -> Result<LoadedCert, String> {
    let issuer =
        Issuer::from_ca_cert_der(&ca.cert_der, &ca.key).map_err(|e| format!("its CA: {e}"))?;
    let names = certs::development_names(extra);
    let mut params = CertificateParams::new(names).map_err(|e| e.to_string())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "wssify development");
    dn.push(DnType::CommonName, "localhost");
    params.distinguished_name = dn;
    let made = SystemTime::now();
    let ca_end = UNIX_EPOCH + Duration::from_secs(u64::try_from(ca.info.not_after).unwrap_or(0));
    params.not_before = (made - store::BACKDATE).into();
    params.not_after = (made + LEAF_VALIDITY).min(ca_end).into();
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(store::random_serial());
    let key = KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params.signed_by(&key, &issuer).map_err(|e| e.to_string())?;
    let chain = vec![cert.der().clone(), ca.cert_der.clone()];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let certified_key = CertifiedKey::from_der(chain, key, provider).map_err(|e| e.to_string())?;
    let mut summary = certs::summarize(&certified_key.cert);
    summary.development = Some(DevKind::SignedByDevCa);
    Ok(LoadedCert {
        certified_key: Arc::new(certified_key),
        summary,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;

    #[test]
    fn the_served_chain_verifies_under_the_ca_for_every_development_name() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, _) = store::open(&dir.path().join("ca")).unwrap();
        let provider = crate::tls::provider();
        let loaded = issue(&ca, &[], &provider).unwrap();
        let chain = &loaded.certified_key.cert;
        assert_eq!(chain.len(), 2);
        assert_eq!(chain[1], ca.cert_der);
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert_der.clone()).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .unwrap();
        for name in certs::SELF_SIGNED_NAMES.iter().chain(&["app.localhost"]) {
            let name = rustls::pki_types::ServerName::try_from(*name).unwrap();
            let result = verifier.verify_server_cert(
                &chain[0],
                &chain[1..],
                &name,
                &[],
                rustls::pki_types::UnixTime::now(),
            );
            // app.localhost is within the constraints but not on the
            // certificate: refused for the name, not the chain.
            if name.to_str() == "app.localhost" {
                assert!(result.is_err());
            } else {
                result.unwrap_or_else(|e| panic!("{name:?}: {e}"));
            }
        }
        assert_eq!(loaded.summary.development, Some(DevKind::SignedByDevCa));
        let days = (loaded.summary.not_after - store::now()) / 86_400;
        assert!((89..=90).contains(&days), "{days}");
    }

    #[test]
    fn the_ca_cannot_sign_for_other_names() {
        // What a leaked key could do: sign for example.com. Clients that
        // trust the CA refuse it because of the name constraints.
        let dir = tempfile::tempdir().unwrap();
        let (ca, _) = store::open(&dir.path().join("ca")).unwrap();
        let issuer = Issuer::from_ca_cert_der(&ca.cert_der, &ca.key).unwrap();
        let key = KeyPair::generate().unwrap();
        let forged = CertificateParams::new(vec!["example.com".to_string()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert_der.clone()).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            crate::tls::provider(),
        )
        .build()
        .unwrap();
        let name = rustls::pki_types::ServerName::try_from("example.com").unwrap();
        let err = verifier
            .verify_server_cert(
                forged.der(),
                &[],
                &name,
                &[],
                rustls::pki_types::UnixTime::now(),
            )
            .unwrap_err();
        assert!(
            format!("{err:?}").contains("NameConstraintViolation"),
            "{err:?}"
        );
    }
}
