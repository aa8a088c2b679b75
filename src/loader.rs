//! The one source of the TLS configuration being served: every certificate,
//! key, CA bundle and revocation list, read from its file at start and
//! re-read on reload.
//!
//! A reload re-reads every file but re-parses only what changed, and takes a
//! change only when it is whole and consistent: a pair half rewritten (the
//! certificate already new, the key still old), garbage, or a file gone is
//! refused, and what was serving keeps serving. Refusals of the same content
//! are reported once, so a timer does not repeat them every tick.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::server::danger::ClientCertVerifier;

use crate::certs::{self, CertSummary, LoadedCert};
use crate::client_auth::{self, CaBundle, Crls};
use crate::dev_ca::{self, Development};
use crate::error::StartupError;
use crate::settings::{CertPair, CertSettings};
use crate::sni::SniTable;
use crate::tickets;
use crate::tls::{self, Resumption, TlsOptions};

/// Everything loaded, and the bytes it was loaded from (to see changes).
pub struct Loader {
    options: TlsOptions,
    strict_sni: bool,
    dev: Option<Development>,
    pairs: Vec<PairSlot>,
    dirs: Vec<DirSlot>,
    client: Option<ClientSlot>,
    acme: Option<AcmeSlot>,
    /// `--ticket-keys`: the file and what it held when last read.
    tickets: Option<TicketSlot>,
    resumption: Resumption,
}

/// `--ticket-keys`: the shared session ticket keys file.
struct TicketSlot {
    path: PathBuf,
    bytes: Vec<u8>,
    keys: Vec<[u8; tickets::KEY_BYTES]>,
}

impl TicketSlot {
    fn load(path: &Path) -> Result<TicketSlot, String> {
        let file = tickets::read_file(path)?;
        Ok(TicketSlot {
            path: path.to_path_buf(),
            bytes: file.bytes,
            keys: file.keys,
        })
    }
}

/// The session tickets for `keys` (a `--ticket-keys` file) bound to the
/// client certificate checks of `client`, or this process's own.
fn resumption_for(
    keys: Option<&TicketSlot>,
    client: Option<&ClientSlot>,
) -> Result<Resumption, String> {
    let Some(slot) = keys else {
        return Resumption::new();
    };
    let mut binding = Vec::new();
    if let Some(client) = client {
        binding.extend_from_slice(&client.ca_bytes);
        for (_, bytes, _) in &client.crls {
            binding.extend_from_slice(bytes);
        }
    }
    let ticketer = tickets::ticketer(&slot.keys, &binding)?;
    Ok(Resumption::shared(Arc::new(ticketer)))
}

/// The certificates ACME keeps (`--acme`), one file per name: served once
/// there, under the same rules as files. A name whose file is not there
/// yet is not an error: its first certificate is on the way.
struct AcmeSlot {
    /// `DIR/CA/certs`, watched.
    dir: PathBuf,
    /// Each name and its `NAME.pem`.
    files: Vec<(String, PathBuf)>,
    served: BTreeMap<String, Served>,
    refused: HashMap<String, u64>,
    /// Told when a name's certificate is taken up, so that its handshakes
    /// stop being refused at once (a replica's certificate is seen here
    /// first, through the file watcher).
    status: Option<Arc<crate::acme::Status>>,
}

/// What one reload did.
#[derive(Default)]
pub struct Report {
    /// One entry per input taken up, naming it and what it now holds.
    pub changes: Vec<String>,
    /// One entry per input refused, naming the file, why, and what was kept.
    pub refusals: Vec<String>,
    /// One entry per file ignored that may well be meant to be there (a CA
    /// bundle beside a pair in a `--cert-dir`): worth a warning, not an error.
    pub warnings: Vec<String>,
    /// The configuration to serve from now on, when anything changed.
    pub config: Option<Arc<ServerConfig>>,
}

/// A certificate being served and the file contents it came from.
pub(crate) struct Served {
    /// Where it came from, as the logs name it (`--cert PATH`, `--cert-dir DIR: NAME`).
    pub(crate) origin: String,
    cert_bytes: Vec<u8>,
    key_bytes: Vec<u8>,
    /// The certificate itself.
    pub(crate) loaded: LoadedCert,
}

/// One `--cert`/`--key` pair.
struct PairSlot {
    pair: CertPair,
    served: Served,
    refused: Option<u64>,
}

/// One `--cert-dir`.
struct DirSlot {
    dir: PathBuf,
    served: BTreeMap<String, Served>,
    /// The last refusal reported per name.
    refused: HashMap<String, u64>,
    /// The last refusal reported for listing the directory itself.
    listing_refused: Option<u64>,
}

/// The `--client-ca` bundle, its `--crl` lists and the verifier built from them.
struct ClientSlot {
    ca_path: PathBuf,
    ca_bytes: Vec<u8>,
    ca: CaBundle,
    crls: Vec<(PathBuf, Vec<u8>, Crls)>,
    optional: bool,
    verifier: Arc<dyn ClientCertVerifier>,
    refused: Option<u64>,
}

/// The files of one name in a `--cert-dir`.
pub enum DirFiles {
    /// `NAME.crt` and `NAME.key`.
    Split {
        /// `NAME.crt`.
        cert: PathBuf,
        /// `NAME.key`.
        key: PathBuf,
    },
    /// `NAME.pem`, holding the chain and the key.
    Combined(PathBuf),
    /// Only one half of a pair is there: a CA bundle beside the pairs (a
    /// cert-manager secret holds `tls.crt`, `tls.key` and `ca.crt`), or a
    /// pair still being written. Ignored, with a warning.
    Unpaired {
        /// The file that is there, e.g. `ca.crt`.
        file: String,
        /// The other half it lacks, e.g. `ca.key`.
        missing: String,
    },
}

impl DirFiles {
    /// What to say about an unpaired file in `dir` named `name`: ignored
    /// (with how to serve it) or, when its name was being `served`, that
    /// the previous certificate stays. `None` for a whole pair.
    pub fn unpaired_note(&self, dir: &Path, name: &str, served: bool) -> Option<String> {
        let DirFiles::Unpaired { file, missing } = self else {
            return None;
        };
        let label = format!("--cert-dir {}", dir.display());
        Some(if served {
            format!(
                "{label}: {file} has no {missing} beside it; still serving the previous certificate until both are there"
            )
        } else {
            let guess = if file.ends_with(".crt") {
                "a CA bundle? "
            } else {
                ""
            };
            format!(
                "{label}: {file} has no {missing} beside it: ignored ({guess}to serve it, add {missing} or put both in {name}.pem)"
            )
        })
    }
}

impl Loader {
    /// Loads every input or fails with the first problem, naming its file.
    pub fn start(
        settings: &CertSettings,
        options: TlsOptions,
    ) -> Result<(Loader, Arc<ServerConfig>), StartupError> {
        let provider = options.provider.clone();
        let dev = if settings.development() {
            Some(dev_ca::development(
                &settings.dev,
                &settings.dev_names,
                &provider,
            )?)
        } else {
            None
        };
        let mut pairs = Vec::new();
        for pair in &settings.pairs {
            let served = load_pair(pair, &provider).map_err(StartupError::new)?;
            pairs.push(PairSlot {
                pair: pair.clone(),
                served,
                refused: None,
            });
        }
        let mut dirs = Vec::new();
        // Logged only once everything has loaded, so that a start that
        // fails says one thing: why.
        let mut warnings = Vec::new();
        for dir in &settings.dirs {
            let mut served = BTreeMap::new();
            let mut refused = HashMap::new();
            let mut unpaired = Vec::new();
            for (name, files) in scan_dir(dir).map_err(StartupError::new)? {
                if let Some(why) = files.unpaired_note(dir, &name, false) {
                    if let DirFiles::Unpaired { file, missing } = &files {
                        unpaired.push(format!("{file} has no {missing}"));
                    }
                    // Recorded as a reload records it, so the reloads that
                    // follow do not repeat it.
                    let mut last = None;
                    note(&mut last, why, &[], false, &mut warnings);
                    refused.insert(name, last.unwrap_or_default());
                    continue;
                }
                let entry =
                    load_dir_entry(dir, &name, &files, &provider).map_err(StartupError::new)?;
                served.insert(name, entry);
            }
            if served.is_empty() {
                let unpaired: String = unpaired.iter().map(|u| format!("; {u}")).collect();
                return Err(StartupError::new(format!(
                    "--cert-dir {}: holds no certificate (NAME.crt with NAME.key, or NAME.pem with both{unpaired}); add one, or drop the flag",
                    dir.display()
                )));
            }
            dirs.push(DirSlot {
                dir: dir.clone(),
                served,
                refused,
                listing_refused: None,
            });
        }
        let client = match &settings.client_ca {
            None => None,
            Some(ca_path) => Some(
                load_client(
                    ca_path,
                    &settings.crls,
                    settings.client_ca_optional,
                    &provider,
                )
                .map_err(StartupError::new)?,
            ),
        };
        let acme = settings.acme.as_ref().map(|acme| {
            let (dir, files) = crate::acme::served_files(acme);
            let mut slot = AcmeSlot {
                dir,
                files,
                served: BTreeMap::new(),
                refused: HashMap::new(),
                status: None,
            };
            // A kept file that cannot be used is ordered again, not fatal.
            let mut report = Report::default();
            slot.reload(&provider, false, &mut report);
            warnings.extend(report.refusals);
            slot
        });
        let tickets = match &settings.ticket_keys {
            Some(path) => Some(TicketSlot::load(path).map_err(StartupError::new)?),
            None => None,
        };
        let resumption =
            resumption_for(tickets.as_ref(), client.as_ref()).map_err(StartupError::new)?;
        let loader = Loader {
            options,
            strict_sni: settings.strict_sni,
            dev,
            pairs,
            dirs,
            client,
            acme,
            tickets,
            resumption,
        };
        let config = loader.build()?;
        for warning in warnings {
            log::warn!("{warning}");
        }
        Ok((loader, config))
    }

    /// Tells `status` of each ACME certificate taken up from now on.
    pub fn report_acme_to(&mut self, status: Arc<crate::acme::Status>) {
        if let Some(acme) = &mut self.acme {
            for (name, served) in &acme.served {
                status.served(name, served.loaded.summary.not_after);
            }
            acme.status = Some(status);
        }
    }

    /// The development certificate, when no certificate was given.
    pub fn development(&self) -> Option<&Development> {
        self.dev.as_ref()
    }

    /// Every certificate served, with where it came from, first = default.
    pub fn served(&self) -> Vec<(&str, &CertSummary)> {
        let dev = self.dev.iter().map(|d| ("development", &d.loaded.summary));
        let pairs = self
            .pairs
            .iter()
            .map(|p| (p.served.origin.as_str(), &p.served.loaded.summary));
        let dirs = self
            .dirs
            .iter()
            .flat_map(|d| d.served.values())
            .map(|s| (s.origin.as_str(), &s.loaded.summary));
        let acme = self
            .acme
            .iter()
            .flat_map(|a| a.served.values())
            .map(|s| (s.origin.as_str(), &s.loaded.summary));
        dev.chain(pairs).chain(dirs).chain(acme).collect()
    }

    /// How the startup line describes what is served.
    pub fn describe(&self) -> String {
        let served = self.served();
        match served.as_slice() {
            [] => "none yet (ACME is obtaining the first certificates)".to_string(),
            [(_, only)] => only.to_string(),
            many => format!(
                "{} certificates by SNI, default {}",
                many.len(),
                many.first().map_or(String::new(), |(_, s)| s.to_string())
            ),
        }
    }

    /// Every input named by a flag (`--cert-dir` contents aside).
    fn input_files(&self) -> Vec<&Path> {
        let mut files: Vec<&Path> = Vec::new();
        for slot in &self.pairs {
            files.push(&slot.pair.cert);
            files.push(&slot.pair.key);
        }
        if let Some(client) = &self.client {
            files.push(&client.ca_path);
            files.extend(client.crls.iter().map(|(p, _, _)| p.as_path()));
        }
        files.extend(self.tickets.iter().map(|t| t.path.as_path()));
        files
    }

    /// The file names of the inputs and, for symbolic links, of their
    /// targets: a change under one of these names in a watched directory
    /// is a change to an input.
    pub fn input_names(&self) -> Vec<OsString> {
        let mut names = Vec::new();
        for file in self.input_files() {
            names.extend(file.file_name().map(OsStr::to_os_string));
            if let Ok(real) = std::fs::canonicalize(file) {
                names.extend(real.file_name().map(OsStr::to_os_string));
            }
        }
        names
    }

    /// The directories whose changes may change an input: each file's own
    /// directory (where editors rename into place and Kubernetes swaps its
    /// `..data` link) and, for a symbolic link, its target's directory.
    pub fn watch_dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = self.dirs.iter().map(|d| d.dir.clone()).collect();
        dirs.extend(self.acme.iter().map(|a| a.dir.clone()));
        for file in self.input_files() {
            dirs.push(parent_dir(file));
            if let Ok(real) = std::fs::canonicalize(file) {
                dirs.push(parent_dir(&real));
            }
        }
        let mut unique = Vec::new();
        for dir in dirs {
            let key = std::fs::canonicalize(&dir).unwrap_or_else(|_| dir.clone());
            if !unique.iter().any(|(k, _)| *k == key) {
                unique.push((key, dir));
            }
        }
        unique.into_iter().map(|(_, dir)| dir).collect()
    }

    /// Re-reads every input and takes up what changed and is consistent.
    /// `force` (SIGHUP) reports refusals again even if already reported.
    pub fn reload(&mut self, force: bool) -> Report {
        let mut report = Report::default();
        let provider = self.options.provider.clone();
        for slot in &mut self.pairs {
            slot.reload(&provider, force, &mut report);
        }
        for i in 0..self.dirs.len() {
            // What stays served if this directory empties.
            let elsewhere = self.served().len() - self.dirs[i].served.len();
            self.dirs[i].reload(&provider, elsewhere, force, &mut report);
        }
        if let Some(acme) = &mut self.acme {
            acme.reload(&provider, force, &mut report);
        }
        let mut client_changed = false;
        if let Some(client) = &mut self.client {
            client_changed = client.reload(&provider, force, &mut report);
        }
        let mut keys_changed = false;
        if let Some(slot) = &mut self.tickets {
            // Read once per reload; parsed keys replace the old ones only
            // when the file changed.
            match tickets::read_file(&slot.path) {
                Ok(file) if file.bytes == slot.bytes => {}
                Ok(file) => {
                    slot.bytes = file.bytes;
                    slot.keys = file.keys;
                    keys_changed = true;
                }
                Err(e) => report.refusals.push(format!(
                    "{e}; still sealing tickets with the keys read before"
                )),
            }
        }
        if client_changed || keys_changed {
            // Sessions resumed from tickets skip the client certificate
            // check: with a new CA or revocation list, old tickets must not
            // resume, so their keys are dropped (or, with --ticket-keys,
            // derived anew from the file and the new checks).
            match resumption_for(self.tickets.as_ref(), self.client.as_ref()) {
                Ok(fresh) => {
                    self.resumption = fresh;
                    if let Some(slot) = self.tickets.as_ref().filter(|_| keys_changed) {
                        report.changes.push(format!(
                            "--ticket-keys {}: {} keys, sealing with key {} (the second to last)",
                            slot.path.display(),
                            slot.keys.len(),
                            tickets::sealing_line(slot.keys.len())
                        ));
                    }
                }
                Err(e) => report.refusals.push(format!(
                    "{e}; session tickets issued before this reload stay valid"
                )),
            }
        }
        if !report.changes.is_empty() {
            match self.build() {
                Ok(config) => report.config = Some(config),
                Err(e) => report
                    .refusals
                    .push(format!("{e}; still serving the previous configuration")),
            }
        }
        report
    }

    fn build(&self) -> Result<Arc<ServerConfig>, StartupError> {
        let mut entries = Vec::new();
        if let Some(dev) = &self.dev {
            entries.push(&dev.loaded);
        }
        entries.extend(self.pairs.iter().map(|p| &p.served.loaded));
        entries.extend(
            self.dirs
                .iter()
                .flat_map(|d| d.served.values().map(|s| &s.loaded)),
        );
        entries.extend(
            self.acme
                .iter()
                .flat_map(|a| a.served.values().map(|s| &s.loaded)),
        );
        let table = SniTable::with_algs(
            entries
                .into_iter()
                .map(|l| {
                    let names = l.summary.dns_names.clone();
                    (l.certified_key.clone(), names, l.summary.algs.clone())
                })
                .collect(),
            self.strict_sni,
        );
        tls::server_config(
            &self.options,
            Arc::new(table),
            self.client.as_ref().map(|c| c.verifier.clone()),
            &self.resumption,
        )
    }
}

impl PairSlot {
    fn reload(
        &mut self,
        provider: &rustls::crypto::CryptoProvider,
        force: bool,
        report: &mut Report,
    ) {
        let (cert_label, key_label) = pair_labels(&self.pair);
        let read = certs::read(&cert_label, &self.pair.cert, certs::CERT_WHAT)
            .and_then(|c| certs::read(&key_label, &self.pair.key, certs::KEY_WHAT).map(|k| (c, k)));
        let (cert_bytes, key_bytes) = match read {
            Ok(bytes) => bytes,
            Err(why) => {
                let why = format!("{why}; still serving the previous certificate");
                refuse(&mut self.refused, why, &[], force, report);
                return;
            }
        };
        if cert_bytes == self.served.cert_bytes && key_bytes == self.served.key_bytes {
            self.refused = None;
            return;
        }
        match certs::from_pem(&cert_label, &cert_bytes, &key_label, &key_bytes, provider) {
            Ok(loaded) => {
                report.changes.push(format!(
                    "{}: {}",
                    self.served.origin,
                    loaded.summary.describe()
                ));
                self.served = Served {
                    origin: self.served.origin.clone(),
                    cert_bytes,
                    key_bytes,
                    loaded,
                };
                self.refused = None;
            }
            Err(why) => {
                let why = format!("{why}; still serving the previous certificate");
                refuse(
                    &mut self.refused,
                    why,
                    &[&cert_bytes, &key_bytes],
                    force,
                    report,
                );
            }
        }
    }
}

impl DirSlot {
    /// `elsewhere`: certificates served from other inputs, so that a
    /// removal never leaves nothing to serve.
    fn reload(
        &mut self,
        provider: &rustls::crypto::CryptoProvider,
        elsewhere: usize,
        force: bool,
        report: &mut Report,
    ) {
        let label = format!("--cert-dir {}", self.dir.display());
        let found = match scan_dir(&self.dir) {
            Ok(found) => found,
            Err(why) => {
                let why = format!("{why}; still serving its certificates as they were");
                refuse(&mut self.listing_refused, why, &[], force, report);
                return;
            }
        };
        self.listing_refused = None;
        for (name, files) in &found {
            let mut last = self.refused.get(name).copied();
            let current = self.served.get(name);
            let kept = if current.is_some() {
                "still serving the previous certificate"
            } else {
                "not served until it is fixed"
            };
            if let Some(why) = files.unpaired_note(&self.dir, name, current.is_some()) {
                // Half of a served pair is gone: an error. A file that was
                // never served (a CA bundle, a pair being written): a warning.
                let out = if current.is_some() {
                    &mut report.refusals
                } else {
                    &mut report.warnings
                };
                note(&mut last, why, &[], force, out);
                self.refused.insert(name.clone(), last.unwrap_or_default());
                continue;
            }
            let read = read_dir_entry(&self.dir, name, files);
            let (cert_bytes, key_bytes) = match read {
                Ok(bytes) => bytes,
                Err(why) => {
                    refuse(&mut last, format!("{why}; {kept}"), &[], force, report);
                    self.refused.insert(name.clone(), last.unwrap_or_default());
                    continue;
                }
            };
            if current.is_some_and(|s| s.cert_bytes == cert_bytes && s.key_bytes == key_bytes) {
                self.refused.remove(name);
                continue;
            }
            let (cert_label, key_label) = dir_labels(&self.dir, name, files);
            match certs::from_pem(&cert_label, &cert_bytes, &key_label, &key_bytes, provider) {
                Ok(loaded) => {
                    let verb = if current.is_some() {
                        "updated"
                    } else {
                        "added"
                    };
                    report.changes.push(format!(
                        "{label}: {verb} {name}: {}",
                        loaded.summary.describe()
                    ));
                    self.served.insert(
                        name.clone(),
                        Served {
                            origin: format!("{label}: {name}"),
                            cert_bytes,
                            key_bytes,
                            loaded,
                        },
                    );
                    self.refused.remove(name);
                }
                Err(why) => {
                    refuse(
                        &mut last,
                        format!("{why}; {kept}"),
                        &[&cert_bytes, &key_bytes],
                        force,
                        report,
                    );
                    self.refused.insert(name.clone(), last.unwrap_or_default());
                }
            }
        }
        let gone: Vec<String> = self
            .served
            .keys()
            .filter(|name| !found.contains_key(*name))
            .cloned()
            .collect();
        for name in gone {
            if elsewhere + self.served.len() <= 1 {
                let mut last = self.refused.get(&name).copied();
                let why = format!(
                    "{label}: {name} was removed, but it is the last certificate; still serving it until another is added"
                );
                refuse(&mut last, why, &[], force, report);
                self.refused.insert(name, last.unwrap_or_default());
                continue;
            }
            if let Some(removed) = self.served.remove(&name) {
                report.changes.push(format!(
                    "{label}: removed {name} (certificate {})",
                    removed.loaded.summary.subject
                ));
            }
            self.refused.remove(&name);
        }
    }
}

impl AcmeSlot {
    /// Takes up each name's file when it is new or changed and whole.
    fn reload(
        &mut self,
        provider: &rustls::crypto::CryptoProvider,
        force: bool,
        report: &mut Report,
    ) {
        for (name, path) in &self.files {
            let label = format!("--acme {name}: {}", path.display());
            let mut last = self.refused.get(name).copied();
            let current = self.served.get(name);
            if !path.exists() {
                if current.is_some() {
                    let why = format!(
                        "{label} was removed; still serving the certificate read before (a new one is ordered at the next renewal)"
                    );
                    refuse(&mut last, why, &[], force, report);
                    self.refused.insert(name.clone(), last.unwrap_or_default());
                }
                continue;
            }
            let bytes = match certs::read(&label, path, "a PEM file with the chain and its key") {
                Ok(bytes) => bytes,
                Err(why) => {
                    refuse(&mut last, why, &[], force, report);
                    self.refused.insert(name.clone(), last.unwrap_or_default());
                    continue;
                }
            };
            if current.is_some_and(|s| s.cert_bytes == bytes) {
                self.refused.remove(name);
                continue;
            }
            match certs::from_pem(&label, &bytes, &label, &bytes, provider) {
                Ok(loaded) => {
                    report
                        .changes
                        .push(format!("--acme {name}: {}", loaded.summary.describe()));
                    if let Some(status) = &self.status {
                        status.served(name, loaded.summary.not_after);
                    }
                    self.served.insert(
                        name.clone(),
                        Served {
                            origin: format!("--acme {name}"),
                            cert_bytes: bytes.clone(),
                            key_bytes: bytes,
                            loaded,
                        },
                    );
                    self.refused.remove(name);
                }
                Err(why) => {
                    let kept = if current.is_some() {
                        "still serving the previous certificate"
                    } else {
                        "it is ordered again"
                    };
                    refuse(
                        &mut last,
                        format!("{why}; {kept}"),
                        &[&bytes],
                        force,
                        report,
                    );
                    self.refused.insert(name.clone(), last.unwrap_or_default());
                }
            }
        }
    }
}

impl ClientSlot {
    /// Returns whether a new verifier was taken.
    fn reload(
        &mut self,
        provider: &Arc<rustls::crypto::CryptoProvider>,
        force: bool,
        report: &mut Report,
    ) -> bool {
        const KEPT: &str = "still using the previous client CA and CRLs";
        let ca_label = format!("--client-ca {}", self.ca_path.display());
        let mut read = vec![certs::read(&ca_label, &self.ca_path, client_auth::CA_WHAT)];
        for (path, _, _) in &self.crls {
            let label = format!("--crl {}", path.display());
            read.push(certs::read(&label, path, client_auth::CRL_WHAT));
        }
        let bytes = match read.into_iter().collect::<Result<Vec<_>, _>>() {
            Ok(bytes) => bytes,
            Err(why) => {
                refuse(
                    &mut self.refused,
                    format!("{why}; {KEPT}"),
                    &[],
                    force,
                    report,
                );
                return false;
            }
        };
        let unchanged = bytes[0] == self.ca_bytes
            && self
                .crls
                .iter()
                .zip(&bytes[1..])
                .all(|((_, old, _), new)| old == new);
        if unchanged {
            self.refused = None;
            return false;
        }
        let paths: Vec<PathBuf> = self.crls.iter().map(|(p, _, _)| p.clone()).collect();
        let content: Vec<u8> = bytes.concat();
        match load_client_from(&self.ca_path, &paths, bytes, self.optional, provider) {
            Ok(fresh) => {
                if fresh.ca_bytes != self.ca_bytes {
                    report
                        .changes
                        .push(format!("{ca_label}: {} CA certificates", fresh.ca.count));
                }
                for ((path, old, _), (_, new, crls)) in self.crls.iter().zip(&fresh.crls) {
                    if old != new {
                        report.changes.push(format!(
                            "--crl {}: {} revoked certificates",
                            path.display(),
                            crls.revoked
                        ));
                    }
                }
                *self = fresh;
                true
            }
            Err(why) => {
                let why = format!("{why}; {KEPT}");
                refuse(&mut self.refused, why, &[&content], force, report);
                false
            }
        }
    }
}

/// Records a refusal, and reports it unless this very refusal (same words,
/// same content) was reported last time and `force` is off.
fn refuse(
    last: &mut Option<u64>,
    why: String,
    content: &[&[u8]],
    force: bool,
    report: &mut Report,
) {
    note(last, why, content, force, &mut report.refusals);
}

/// Records a refusal or warning in `last`, and adds it to `out` unless
/// this very one (same words, same content) was last time and `force` is
/// off.
fn note(
    last: &mut Option<u64>,
    why: String,
    content: &[&[u8]],
    force: bool,
    out: &mut Vec<String>,
) {
    let mut hasher = DefaultHasher::new();
    why.hash(&mut hasher);
    content.hash(&mut hasher);
    let key = hasher.finish();
    if force || *last != Some(key) {
        out.push(why);
    }
    *last = Some(key);
}

fn pair_labels(pair: &CertPair) -> (String, String) {
    (
        format!("--cert {}", pair.cert.display()),
        format!("--key {}", pair.key.display()),
    )
}

/// Loads one `--cert`/`--key` pair.
pub(crate) fn load_pair(
    pair: &CertPair,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<Served, String> {
    let (cert_label, key_label) = pair_labels(pair);
    let cert_bytes = certs::read(&cert_label, &pair.cert, certs::CERT_WHAT)?;
    let key_bytes = certs::read(&key_label, &pair.key, certs::KEY_WHAT)?;
    let loaded = certs::from_pem(&cert_label, &cert_bytes, &key_label, &key_bytes, provider)?;
    Ok(Served {
        origin: cert_label,
        cert_bytes,
        key_bytes,
        loaded,
    })
}

/// Lists the certificate names in a `--cert-dir`: `NAME.crt`+`NAME.key`
/// pairs and `NAME.pem` files. Hidden entries (Kubernetes' `..data` and
/// timestamped directories, editors' temporary files) are skipped.
pub fn scan_dir(dir: &Path) -> Result<BTreeMap<String, DirFiles>, String> {
    let label = format!("--cert-dir {}", dir.display());
    let entries = std::fs::read_dir(dir).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            format!("{label}: no such directory; give the directory holding NAME.crt and NAME.key files")
        }
        std::io::ErrorKind::NotADirectory => {
            format!("{label}: not a directory; give the directory holding NAME.crt and NAME.key files, or use --cert/--key for one pair")
        }
        _ => format!("{label}: cannot be listed ({e})"),
    })?;
    let mut crt = BTreeMap::new();
    let mut key = BTreeMap::new();
    let mut pem = BTreeMap::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if file_name.starts_with('.') || !path.is_file() {
            continue;
        }
        let Some((name, ext)) = file_name.rsplit_once('.') else {
            continue;
        };
        let kind = match ext {
            "crt" => &mut crt,
            "key" => &mut key,
            "pem" => &mut pem,
            // Keep in step with DIR_EXTENSIONS.
            _ => continue,
        };
        kind.insert(name.to_string(), path);
    }
    let mut found = BTreeMap::new();
    let names: std::collections::BTreeSet<String> = crt
        .keys()
        .chain(key.keys())
        .chain(pem.keys())
        .cloned()
        .collect();
    for name in names {
        let files = match (crt.remove(&name), key.remove(&name), pem.remove(&name)) {
            (Some(cert), Some(key), _) => DirFiles::Split { cert, key },
            (_, _, Some(combined)) => DirFiles::Combined(combined),
            (Some(_), None, None) => DirFiles::Unpaired {
                file: format!("{name}.crt"),
                missing: format!("{name}.key"),
            },
            (None, Some(_), None) => DirFiles::Unpaired {
                file: format!("{name}.key"),
                missing: format!("{name}.crt"),
            },
            (None, None, None) => continue,
        };
        found.insert(name, files);
    }
    Ok(found)
}

fn dir_labels(dir: &Path, name: &str, files: &DirFiles) -> (String, String) {
    let label = format!("--cert-dir {}", dir.display());
    match files {
        DirFiles::Combined(_) => (
            format!("{label}: {name}.pem"),
            format!("{label}: {name}.pem"),
        ),
        _ => (
            format!("{label}: {name}.crt"),
            format!("{label}: {name}.key"),
        ),
    }
}

/// Reads a `--cert-dir` entry's certificate and key bytes (for `NAME.pem`,
/// the same bytes twice).
fn read_dir_entry(dir: &Path, name: &str, files: &DirFiles) -> Result<(Vec<u8>, Vec<u8>), String> {
    let (cert_label, key_label) = dir_labels(dir, name, files);
    match files {
        DirFiles::Split { cert, key } => Ok((
            certs::read(&cert_label, cert, certs::CERT_WHAT)?,
            certs::read(&key_label, key, certs::KEY_WHAT)?,
        )),
        DirFiles::Combined(path) => {
            let bytes = certs::read(&cert_label, path, "a PEM file with the chain and its key")?;
            Ok((bytes.clone(), bytes))
        }
        DirFiles::Unpaired { .. } => Err(files.unpaired_note(dir, name, false).unwrap_or_default()),
    }
}

/// Loads one `--cert-dir` entry.
pub(crate) fn load_dir_entry(
    dir: &Path,
    name: &str,
    files: &DirFiles,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<Served, String> {
    let (cert_bytes, key_bytes) = read_dir_entry(dir, name, files)?;
    let (cert_label, key_label) = dir_labels(dir, name, files);
    let loaded = certs::from_pem(&cert_label, &cert_bytes, &key_label, &key_bytes, provider)?;
    Ok(Served {
        origin: format!("--cert-dir {}: {name}", dir.display()),
        cert_bytes,
        key_bytes,
        loaded,
    })
}

fn load_client(
    ca_path: &Path,
    crl_paths: &[PathBuf],
    optional: bool,
    provider: &Arc<rustls::crypto::CryptoProvider>,
) -> Result<ClientSlot, String> {
    let ca_label = format!("--client-ca {}", ca_path.display());
    let mut bytes = vec![certs::read(&ca_label, ca_path, client_auth::CA_WHAT)?];
    for path in crl_paths {
        let label = format!("--crl {}", path.display());
        bytes.push(certs::read(&label, path, client_auth::CRL_WHAT)?);
    }
    load_client_from(ca_path, crl_paths, bytes, optional, provider)
}

/// `bytes`: the CA bundle's, then each CRL's, in order.
fn load_client_from(
    ca_path: &Path,
    crl_paths: &[PathBuf],
    bytes: Vec<Vec<u8>>,
    optional: bool,
    provider: &Arc<rustls::crypto::CryptoProvider>,
) -> Result<ClientSlot, String> {
    let mut bytes = bytes.into_iter();
    let ca_bytes = bytes.next().unwrap_or_default();
    let ca = client_auth::parse_ca(&format!("--client-ca {}", ca_path.display()), &ca_bytes)?;
    let mut crls = Vec::new();
    for (path, crl_bytes) in crl_paths.iter().zip(bytes) {
        let parsed = client_auth::parse_crl(&format!("--crl {}", path.display()), &crl_bytes)?;
        crls.push((path.clone(), crl_bytes, parsed));
    }
    let lists: Vec<&Crls> = crls.iter().map(|(_, _, c)| c).collect();
    let verifier = client_auth::verifier(&ca, &lists, optional, provider.clone())?;
    Ok(ClientSlot {
        ca_path: ca_path.to_path_buf(),
        ca_bytes,
        ca,
        crls,
        optional,
        verifier,
        refused: None,
    })
}

/// The extensions of the files a `--cert-dir` serves.
pub const DIR_EXTENSIONS: [&str; 3] = ["crt", "key", "pem"];

fn parent_dir(file: &Path) -> PathBuf {
    match file.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::TlsMin;

    fn options() -> TlsOptions {
        TlsOptions {
            provider: tls::provider(),
            tls_min: TlsMin::V1_2,
            alpn: Vec::new(),
        }
    }

    /// A self-signed certificate for `name`, as (certificate PEM, key PEM).
    fn pem_pair(name: &str) -> (String, String) {
        let made = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        (made.cert.pem(), made.signing_key.serialize_pem())
    }

    fn write(path: &Path, text: &str) {
        std::fs::write(path, text).unwrap();
    }

    fn subjects(loader: &Loader) -> Vec<String> {
        loader
            .served()
            .iter()
            .map(|(_, s)| s.names.join(","))
            .collect()
    }

    #[test]
    fn a_half_written_pair_is_refused_once_then_taken_when_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        let (a_cert, a_key) = pem_pair("a.test");
        let (b_cert, b_key) = pem_pair("b.test");
        write(&cert, &a_cert);
        write(&key, &a_key);
        let settings = CertSettings {
            pairs: vec![CertPair {
                cert: cert.clone(),
                key: key.clone(),
            }],
            ..CertSettings::default()
        };
        let (mut loader, _) = Loader::start(&settings, options()).unwrap();
        assert!(loader.reload(false).config.is_none(), "nothing changed");

        write(&cert, &b_cert);
        let report = loader.reload(false);
        assert!(report.config.is_none());
        assert_eq!(report.refusals.len(), 1);
        assert!(
            report.refusals[0].contains("does not match the certificate in --cert"),
            "{:?}",
            report.refusals
        );
        assert!(report.refusals[0].contains("still serving the previous certificate"));
        assert_eq!(subjects(&loader), ["a.test"]);
        // The same refusal is not repeated by a timer, but is on SIGHUP.
        assert!(loader.reload(false).refusals.is_empty());
        assert_eq!(loader.reload(true).refusals.len(), 1);

        write(&key, &b_key);
        let report = loader.reload(false);
        assert!(report.config.is_some());
        assert!(report.refusals.is_empty());
        assert!(report.changes[0].contains("names b.test, expires"));
        assert_eq!(subjects(&loader), ["b.test"]);
    }

    #[test]
    fn a_cert_dir_follows_additions_updates_and_removals_but_never_empties() {
        let dir = tempfile::tempdir().unwrap();
        let (a_cert, a_key) = pem_pair("a.test");
        write(&dir.path().join("a.crt"), &a_cert);
        write(&dir.path().join("a.key"), &a_key);
        write(&dir.path().join("notes.txt"), "not a certificate");
        let settings = CertSettings {
            dirs: vec![dir.path().to_path_buf()],
            ..CertSettings::default()
        };
        let (mut loader, _) = Loader::start(&settings, options()).unwrap();
        assert_eq!(subjects(&loader), ["a.test"]);

        // Half of a new pair: refused, not served, until the key comes.
        let (b_cert, b_key) = pem_pair("b.test");
        write(&dir.path().join("b.crt"), &b_cert);
        let report = loader.reload(false);
        assert!(report.refusals.is_empty(), "{:?}", report.refusals);
        assert!(
            report.warnings[0].contains("b.crt has no b.key beside it: ignored"),
            "{:?}",
            report.warnings
        );
        write(&dir.path().join("b.key"), &b_key);
        let report = loader.reload(false);
        assert!(
            report.changes[0].contains("added b: certificate rcgen self signed cert, names b.test"),
            "{:?}",
            report.changes
        );
        assert_eq!(subjects(&loader), ["a.test", "b.test"]);

        // A combined NAME.pem.
        let (c_cert, c_key) = pem_pair("c.test");
        write(&dir.path().join("c.pem"), &format!("{c_cert}{c_key}"));
        let report = loader.reload(false);
        assert!(
            report.changes[0].contains("added c"),
            "{:?}",
            report.changes
        );

        for name in ["a.crt", "a.key", "c.pem"] {
            std::fs::remove_file(dir.path().join(name)).unwrap();
        }
        let report = loader.reload(false);
        assert_eq!(report.changes.len(), 2, "{:?}", report.changes);
        assert!(report.changes[0].contains("removed a (certificate "));
        assert_eq!(subjects(&loader), ["b.test"]);

        // Removing the last one is refused: something must be served.
        std::fs::remove_file(dir.path().join("b.crt")).unwrap();
        std::fs::remove_file(dir.path().join("b.key")).unwrap();
        let report = loader.reload(false);
        assert!(report.config.is_none());
        assert!(
            report.refusals[0].contains("last certificate"),
            "{:?}",
            report.refusals
        );
        assert_eq!(subjects(&loader), ["b.test"]);
    }

    #[test]
    fn a_cert_manager_secret_starts_and_its_ca_bundle_is_a_warning_once() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pem_pair("a.test");
        write(&dir.path().join("tls.crt"), &cert);
        write(&dir.path().join("tls.key"), &key);
        write(&dir.path().join("ca.crt"), &pem_pair("ca.test").0);
        let settings = CertSettings {
            dirs: vec![dir.path().to_path_buf()],
            ..CertSettings::default()
        };
        let (mut loader, _) = Loader::start(&settings, options()).unwrap();
        assert_eq!(subjects(&loader), ["a.test"]);
        // Warned at start: the timer's reloads do not repeat it, SIGHUP does.
        let report = loader.reload(false);
        assert!(report.warnings.is_empty(), "{:?}", report.warnings);
        assert!(report.refusals.is_empty(), "{:?}", report.refusals);
        let report = loader.reload(true);
        assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
        assert!(
            report.warnings[0].contains("ca.crt has no ca.key beside it: ignored (a CA bundle?"),
            "{:?}",
            report.warnings
        );
        assert!(report.refusals.is_empty(), "{:?}", report.refusals);

        // Half of a served pair going is still an error.
        std::fs::remove_file(dir.path().join("tls.key")).unwrap();
        let report = loader.reload(false);
        assert!(
            report.refusals[0].contains("tls.crt has no tls.key beside it; still serving"),
            "{:?}",
            report.refusals
        );
        assert_eq!(subjects(&loader), ["a.test"]);
    }

    #[test]
    fn a_cert_dir_with_only_unpaired_files_does_not_start() {
        let dir = tempfile::tempdir().unwrap();
        write(&dir.path().join("ca.crt"), &pem_pair("ca.test").0);
        let settings = CertSettings {
            dirs: vec![dir.path().to_path_buf()],
            ..CertSettings::default()
        };
        let err = Loader::start(&settings, options())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("holds no certificate"), "{err}");
        assert!(
            err.contains("both; ca.crt has no ca.key); add one"),
            "{err}"
        );
    }

    #[test]
    fn an_empty_cert_dir_does_not_start() {
        let dir = tempfile::tempdir().unwrap();
        let settings = CertSettings {
            dirs: vec![dir.path().to_path_buf()],
            ..CertSettings::default()
        };
        let err = Loader::start(&settings, options())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("holds no certificate"), "{err}");
    }
}
