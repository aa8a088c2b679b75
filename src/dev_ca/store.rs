//! The development CA on disk: made once, read back at every start, never
//! half written, never two of them.
//!
//! A directory (mode 0700) holds `ca.pem` (the CA certificate, what
//! clients trust) and `ca.key` (its private key, mode 0600). Each file is
//! written to a temporary name created with its final mode and renamed into
//! place, so a reader never sees a half-written file and the key is never
//! readable by others, not even for a moment. An exclusive lock on
//! `DIR/.lock` (flock) is held while the CA is read, made or replaced, so
//! two wssify processes starting at once agree on one CA: the second waits
//! for the first and reads what it wrote.
//!
//! Only a CA wssify made is ever used, replaced or deleted: one whose
//! certificate is self-signed (signature checked), has wssify's
//! organisation and common name and exactly the localhost name
//! constraints [`make`] writes. Anything else in the directory (a CA put
//! there by hand, a corporate root) is refused with one line and left
//! exactly as it is: not served, not renamed, not deleted. The directory
//! and both files must belong to the user running wssify; the files are
//! opened without following symbolic links and must be regular files.
//!
//! What can be wrong with the files, and what happens:
//! - the key is readable or writable by group or others, or the directory
//!   is writable by them: refused (someone may have read the key or may
//!   swap the CA), with what to do;
//! - the key cannot be read at all (made by another user, e.g. under sudo):
//!   refused, with what to do;
//! - the key is there without the certificate (a start interrupted
//!   between them), the key is unusable or does not match wssify's
//!   certificate: a new CA is made, the old files kept beside it as
//!   `NAME.old-SECONDS`, and the caller says so (clients must trust the
//!   new one);
//! - the CA has expired: the same.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DistinguishedName, DnType, GeneralSubtree,
    IsCa, KeyPair, KeyUsagePurpose, NameConstraints, PublicKeyData, SerialNumber,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::certs;

/// The CA certificate's file name: what clients are given to trust.
pub const CERT_FILE: &str = "ca.pem";
/// The CA private key's file name (mode 0600).
pub const KEY_FILE: &str = "ca.key";
/// The lock file's name, held while the CA is read, made or replaced.
const LOCK_FILE: &str = ".lock";
/// The organisation every CA wssify makes has; with the common name's
/// prefix and the name constraints, how a wssify CA is recognised.
const CA_ORGANISATION: &str = "wssify development CA";
/// The most read from `ca.pem`, `ca.key` or a set-aside file: a CA and its
/// key are a few kilobytes; anything larger is not one.
const MAX_FILE: u64 = 64 * 1024;
/// How long a start waits for another process holding the lock (it holds
/// it for the few milliseconds making a CA takes).
const LOCK_WAIT: Duration = Duration::from_secs(10);
/// How long a new CA is valid: ten years, as mkcert's and Caddy's roots.
/// Only this machine has its key, and it can sign only for local names.
const CA_VALIDITY: Duration = Duration::from_secs(3650 * 86_400);
/// Certificates start this long before they are made, so that a client
/// whose clock is a little behind (a VM, a container) still accepts them.
pub(crate) const BACKDATE: Duration = Duration::from_secs(3600);

/// A development CA read from (or just written to) its directory.
pub struct DevCa {
    /// The directory it lives in.
    pub dir: PathBuf,
    /// The CA certificate.
    pub cert_der: CertificateDer<'static>,
    /// Its private key; never logged, never leaves the directory.
    pub(crate) key: KeyPair,
    /// What people are told about it.
    pub info: CaInfo,
}

/// The human-readable facts about a development CA.
#[derive(Debug, Clone)]
pub struct CaInfo {
    /// Its subject's common name.
    pub subject: String,
    /// The day it was made, `YYYY-MM-DD` (UTC).
    pub made: String,
    /// The last day it is valid, `YYYY-MM-DD` (UTC).
    pub expires: String,
    /// The moment it expires, in Unix seconds.
    pub not_after: i64,
    /// SHA-256 of its DER, as `AB:CD:...`.
    pub fingerprint: String,
    /// SHA-256 of its SubjectPublicKeyInfo in base64: what Chrome's
    /// `--ignore-certificate-errors-spki-list` takes.
    pub spki_sha256: String,
    /// The names it may sign for (its name constraints), or `None` when it
    /// has none (a CA put there by hand).
    pub constraints: Option<String>,
}

impl DevCa {
    /// `DIR/ca.pem`.
    pub fn cert_path(&self) -> PathBuf {
        self.dir.join(CERT_FILE)
    }

    /// `DIR/ca.key`.
    pub fn key_path(&self) -> PathBuf {
        self.dir.join(KEY_FILE)
    }

    /// A short name unique to this CA (the start of its fingerprint), for
    /// trust store nicknames: a CA made later gets a different one.
    pub fn short_id(&self) -> String {
        self.info.fingerprint.replace(':', "")[..8].to_string()
    }
}

/// How [`open`] came by the CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// It was there and good.
    Existing,
    /// There was none: made now.
    Made,
    /// The one there could not be used (`why`); a new one was made and the
    /// old files were kept as `kept`.
    Replaced {
        /// What was wrong with the old one.
        why: String,
        /// Where the old files went.
        kept: Vec<PathBuf>,
    },
}

/// Why [`open`] gave no CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenError {
    /// Nothing could be written where the CA must be made (read-only file
    /// system, permission denied, not a directory...). Where the directory
    /// is the default one, the caller falls back to an in-memory certificate.
    Unwritable(String),
    /// The CA there must not be used, and must not be silently replaced
    /// either (its key may have been read by others). One line, with the fix.
    Refused(String),
}

/// What [`peek`] found, without writing anything.
pub enum Peek {
    /// No CA yet.
    Missing,
    /// A good CA.
    Good(Box<DevCa>),
    /// A CA a start would replace, and why.
    Replaceable(String),
    /// A CA a start would refuse, and why.
    Refused(String),
}

/// The CA in `dir`, made (or remade) if need be; see the module comment.
pub fn open(dir: &Path) -> Result<(DevCa, Opened), OpenError> {
    let writable = ensure_dir(dir);
    if let Err(e) = &writable
        && !dir.is_dir()
    {
        return Err(OpenError::Unwritable(format!(
            "cannot create {} ({e})",
            crate::logsafe::path(dir)
        )));
    }
    check_dir_mode(dir)?;
    let lock = match writable.and_then(|()| Lock::take(dir)) {
        Ok(lock) => lock,
        // A directory that exists but cannot be written (a read-only file
        // system, a CA baked into an image): a good CA there is still used.
        Err(e) if is_cannot_write(&e) => {
            return match inspect(dir, now()) {
                State::Good(ca) => Ok((*ca, Opened::Existing)),
                State::Unsafe(why) | State::Foreign(why) => Err(OpenError::Refused(why)),
                State::Missing | State::Broken(_) | State::Expired(_) => {
                    Err(OpenError::Unwritable(format!(
                        "{} cannot be written ({e})",
                        crate::logsafe::path(dir)
                    )))
                }
            };
        }
        Err(e) => {
            return Err(OpenError::Unwritable(format!(
                "cannot lock {} ({e})",
                crate::logsafe::path(&dir.join(LOCK_FILE))
            )));
        }
    };
    let result = match inspect(dir, now()) {
        State::Good(ca) => Ok((*ca, Opened::Existing)),
        State::Unsafe(why) | State::Foreign(why) => Err(OpenError::Refused(why)),
        State::Missing => make(dir).map(|ca| (ca, Opened::Made)),
        State::Broken(why) | State::Expired(why) => {
            let kept = set_aside(dir).map_err(|e| {
                OpenError::Unwritable(format!(
                    "the development CA in {} cannot be used ({why}) and cannot be moved aside ({e})",
                    crate::logsafe::path(dir)
                ))
            })?;
            make(dir).map(|ca| (ca, Opened::Replaced { why, kept }))
        }
    };
    drop(lock);
    result
}

/// What a start would find in `dir`, without creating or writing anything
/// (for `--check` and `--dev-ca install`).
pub fn peek(dir: &Path) -> Peek {
    if !dir.exists() {
        return Peek::Missing;
    }
    if let Err(OpenError::Refused(why) | OpenError::Unwritable(why)) = check_dir_mode(dir) {
        return Peek::Refused(why);
    }
    match inspect(dir, now()) {
        State::Missing => Peek::Missing,
        State::Good(ca) => Peek::Good(ca),
        State::Broken(why) | State::Expired(why) => Peek::Replaceable(why),
        State::Unsafe(why) | State::Foreign(why) => Peek::Refused(why),
    }
}

/// Deletes the CA in `dir` and what wssify put beside it (its old CAs set
/// aside, temporary files), then the directory if that leaves it empty.
/// Only a wssify CA: anything else is refused with one line and left as it
/// is. The lock file stays: a start waiting on it must lock the same file
/// the next one will. Returns what the CA was and whether anything was
/// removed, or the one-line refusal.
pub fn remove(dir: &Path) -> Result<(Option<CaInfo>, bool), String> {
    if fs::symlink_metadata(dir).is_err() {
        return Ok((None, false));
    }
    check_dir_mode(dir).map_err(|(OpenError::Refused(why) | OpenError::Unwritable(why))| why)?;
    let cannot = |e: io::Error| {
        format!(
            "cannot remove the development CA in {} ({e})",
            crate::logsafe::path(dir)
        )
    };
    let lock = Lock::take(dir).map_err(cannot)?;
    let key_path = dir.join(KEY_FILE);
    let key_there = fs::symlink_metadata(&key_path).is_ok();
    let info = match wssify_cert(&dir.join(CERT_FILE))? {
        Some(der) => Some(describe(&der)),
        None if key_there => {
            return Err(match inspect(dir, now()) {
                State::Unsafe(why) | State::Foreign(why) => why,
                _ => orphan_key_refusal(&key_path),
            });
        }
        None => None,
    };
    // Another user's key is theirs to delete.
    if let Ok(meta) = fs::symlink_metadata(&key_path)
        && !owner_allowed(meta.uid())
    {
        return Err(not_owned(&key_path, meta.uid()));
    }
    let mut removed = false;
    if info.is_some() {
        for name in [KEY_FILE, CERT_FILE] {
            match fs::remove_file(dir.join(name)) {
                Ok(()) => removed = true,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(cannot(e)),
            }
        }
    }
    for entry in fs::read_dir(dir).map_err(cannot)? {
        let entry = entry.map_err(cannot)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let doomed: Vec<PathBuf> =
            if let Some(stamp) = name.strip_prefix(&format!("{CERT_FILE}.old-")) {
                // An old CA set aside: only if it is wssify's, with its key.
                match wssify_cert(&entry.path()) {
                    Ok(Some(_)) => vec![entry.path(), dir.join(format!("{KEY_FILE}.old-{stamp}"))],
                    _ => Vec::new(),
                }
            } else if name.starts_with(&format!(".{CERT_FILE}.tmp-"))
                || name.starts_with(&format!(".{KEY_FILE}.tmp-"))
            {
                vec![entry.path()]
            } else {
                Vec::new()
            };
        for path in doomed {
            match fs::remove_file(&path) {
                Ok(()) => removed = true,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(cannot(e)),
            }
        }
    }
    drop(lock);
    // Only if empty: a directory given with --dev-ca-dir may hold more
    // (and the lock file stays, see above).
    let _ = fs::remove_dir(dir);
    Ok((info, removed))
}

/// Who may own the CA directory and files: the effective user; and, for
/// `--dev-ca install`/`uninstall` run as root under sudo, the user who ran
/// sudo (whose CA install is asked to trust).
static SUDO_USER_ALLOWED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Lets files owned by `SUDO_UID` count as the user's own (for
/// `--dev-ca install` run under sudo).
pub fn allow_sudo_user() {
    SUDO_USER_ALLOWED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Whether `uid` may own the CA's directory and files.
pub(crate) fn owner_allowed(uid: u32) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if uid == euid {
        return true;
    }
    euid == 0
        && SUDO_USER_ALLOWED.load(std::sync::atomic::Ordering::Relaxed)
        && std::env::var("SUDO_UID")
            .ok()
            .and_then(|u| u.parse::<u32>().ok())
            == Some(uid)
}

/// The refusal for a file or directory another user owns.
fn not_owned(path: &Path, uid: u32) -> String {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    format!(
        "{} belongs to another user (uid {uid}, this is uid {euid}), so it is not used as a development CA and nothing was changed: run wssify as its owner, or give a directory of your own with --dev-ca-dir",
        crate::logsafe::path(path)
    )
}

/// The refusal for a CA wssify did not make.
fn foreign(path: &Path, why: &str) -> String {
    format!(
        "{} is not a wssify development CA ({why}); nothing was changed (not used, moved or deleted): move it away yourself or give another --dev-ca-dir",
        crate::logsafe::path(path)
    )
}

/// The refusal for a key without `ca.pem`, which nothing identifies.
fn orphan_key_refusal(key_path: &Path) -> String {
    format!(
        "{} is there without {CERT_FILE}, so it cannot be told to be a wssify development CA's key; nothing was changed: delete it yourself if wssify made it",
        crate::logsafe::path(key_path)
    )
}

/// Opens `path` for reading without following a symbolic link, and reads
/// it if it is a regular file of at most [`MAX_FILE`] bytes: `None` when
/// there is no such file; the metadata is the open handle's.
pub(crate) fn read_small(path: &Path) -> io::Result<Option<(Vec<u8>, fs::Metadata)>> {
    use std::io::Read;
    let file = match OpenOptions::new()
        .read(true)
        // O_NONBLOCK: opening a FIFO put there must not hang the start.
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "it is a symbolic link; wssify reads only the file itself",
            ));
        }
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "it is not a regular file",
        ));
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "it is larger than 64 KiB",
        ));
    }
    Ok(Some((bytes, meta)))
}

/// The certificate in `path` if it is a CA wssify made (see the module
/// comment), `None` if there is no file, else the one-line refusal.
fn wssify_cert(path: &Path) -> Result<Option<CertificateDer<'static>>, String> {
    let (pem, meta) = match read_small(path) {
        Ok(Some(found)) => found,
        Ok(None) => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            return Err(foreign(path, &e.to_string()));
        }
        Err(e) => {
            return Err(format!(
                "cannot read {} ({e}); nothing was changed",
                crate::logsafe::path(path)
            ));
        }
    };
    if !owner_allowed(meta.uid()) {
        return Err(not_owned(path, meta.uid()));
    }
    let der = CertificateDer::pem_slice_iter(&pem)
        .next()
        .and_then(Result::ok)
        .ok_or_else(|| foreign(path, "it holds no PEM certificate"))?;
    recognise(&der).map_err(|why| foreign(path, why))?;
    Ok(Some(der))
}

/// Whether `der` is a CA [`make`] made: a self-issued CA with wssify's
/// organisation and common name, exactly the localhost name constraints,
/// and a valid self-signature (ECDSA P-256 with SHA-256, what wssify's
/// keys are). Else why not.
fn recognise(der: &[u8]) -> Result<(), &'static str> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|_| "it cannot be parsed")?;
    if !cert.is_ca() {
        return Err("it is not a CA certificate");
    }
    let subject = cert.subject();
    let orgs: Vec<_> = subject.iter_organization().map(|o| o.as_str()).collect();
    let cns: Vec<_> = subject.iter_common_name().map(|o| o.as_str()).collect();
    let ours = matches!(orgs.as_slice(), [Ok(o)] if *o == CA_ORGANISATION)
        && matches!(cns.as_slice(), [Ok(cn)] if cn.starts_with(CA_ORGANISATION));
    if !ours {
        return Err("its subject is not wssify's");
    }
    let local = match cert.name_constraints() {
        Ok(Some(ext)) => {
            let permitted: Vec<&GeneralName<'_>> = ext
                .value
                .permitted_subtrees
                .iter()
                .flatten()
                .map(|s| &s.base)
                .collect();
            let excluded = ext
                .value
                .excluded_subtrees
                .as_ref()
                .is_some_and(|e| !e.is_empty());
            let mut v6 = [0u8; 32];
            v6[15] = 1;
            v6[16..].fill(0xff);
            !excluded
                && matches!(
                    permitted.as_slice(),
                    [GeneralName::DNSName("localhost"), GeneralName::IPAddress(v4), GeneralName::IPAddress(v6b)]
                        if *v4 == [127, 0, 0, 0, 255, 0, 0, 0] && *v6b == v6
                )
        }
        _ => false,
    };
    if !local {
        return Err("it is not constrained to exactly localhost, 127.0.0.0/8 and ::1");
    }
    if cert.issuer().as_raw() != subject.as_raw() {
        return Err("it is not self-issued");
    }
    if cert.signature_algorithm.algorithm != x509_parser::oid_registry::OID_SIG_ECDSA_WITH_SHA256 {
        return Err("it is not signed with ECDSA and SHA-256 as wssify signs");
    }
    let key = aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1,
        cert.public_key().subject_public_key.data.as_ref(),
    );
    key.verify(
        cert.tbs_certificate.as_ref(),
        cert.signature_value.data.as_ref(),
    )
    .map_err(|_| "its self-signature does not verify")?;
    Ok(())
}

/// Creates `dir` (mode 0700) and its parents, unless it exists.
pub(crate) fn ensure_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent)?;
    }
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        // Another process made it meanwhile.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Others must not be able to swap the CA under us.
fn check_dir_mode(dir: &Path) -> Result<(), OpenError> {
    let meta = fs::metadata(dir).map_err(|e| {
        OpenError::Unwritable(format!(
            "cannot look at {} ({e})",
            crate::logsafe::path(dir)
        ))
    })?;
    if !meta.is_dir() {
        return Err(OpenError::Unwritable(format!(
            "{} is not a directory",
            crate::logsafe::path(dir)
        )));
    }
    if !owner_allowed(meta.uid()) {
        return Err(OpenError::Refused(not_owned(dir, meta.uid())));
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o022 != 0 {
        return Err(OpenError::Refused(format!(
            "the development CA directory {} can be written by others (mode {mode:04o}), who could replace the CA your clients trust; run chmod 700 {} or choose another --dev-ca-dir",
            crate::logsafe::path(dir),
            crate::logsafe::path(dir)
        )));
    }
    Ok(())
}

/// Errors that mean "this place cannot be written", as opposed to a
/// problem with what is there.
fn is_cannot_write(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ReadOnlyFilesystem
            | io::ErrorKind::PermissionDenied
            | io::ErrorKind::StorageFull
            | io::ErrorKind::QuotaExceeded
    )
}

/// The exclusive lock on `DIR/.lock`, released when dropped (closing the
/// file releases a flock, also when the process dies). ACME's per-name
/// locks are the same kind ([`Lock::try_file`]).
pub(crate) struct Lock {
    _held: File,
}

impl Lock {
    fn take(dir: &Path) -> io::Result<Lock> {
        let file = Lock::open(&dir.join(LOCK_FILE))?;
        let deadline = Instant::now() + LOCK_WAIT;
        loop {
            if Lock::flock(&file)? {
                return Ok(Lock { _held: file });
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "another process has held it for {}s; is a wssify stuck there?",
                        LOCK_WAIT.as_secs()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The lock on `path` (created with mode 0600) if no other process
    /// holds it, without waiting: `None` when one does.
    pub(crate) fn try_file(path: &Path) -> io::Result<Option<Lock>> {
        let file = Lock::open(path)?;
        Ok(Lock::flock(&file)?.then_some(Lock { _held: file }))
    }

    fn open(path: &Path) -> io::Result<File> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            // Never a link put there to make us create or lock another file.
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)?;
        if !file.metadata()?.is_file() {
            return Err(io::Error::other(format!(
                "{} is not a regular file",
                crate::logsafe::path(path)
            )));
        }
        Ok(file)
    }

    /// One non-blocking attempt: whether the lock was taken.
    fn flock(file: &File) -> io::Result<bool> {
        // SAFETY: flock only reads the descriptor number, which `file`
        // keeps open for the whole call. Needed because std's
        // `File::try_lock` is newer (Rust 1.89) than the Rust 1.88
        // wssify supports.
        let result = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if result == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(false),
            _ => Err(e),
        }
    }
}

/// What is in a CA directory.
enum State {
    Missing,
    Good(Box<DevCa>),
    /// Unusable but harmless to replace.
    Broken(String),
    Expired(String),
    /// Must not be used nor silently replaced.
    Unsafe(String),
    /// Not a CA wssify made: neither used, replaced nor deleted.
    Foreign(String),
}

fn inspect(dir: &Path, now: i64) -> State {
    let key_path = dir.join(KEY_FILE);
    let cert_path = dir.join(CERT_FILE);
    // Anything but a wssify CA is left alone.
    let cert_der = match wssify_cert(&cert_path) {
        Ok(der) => der,
        Err(why) => return State::Foreign(why),
    };
    // Never through a link: the key judged is the file in the directory.
    let key = match read_small(&key_path) {
        Ok(key) => key,
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied && cert_der.is_some() => {
            return State::Unsafe(format!(
                "cannot read the development CA key {} (permission denied): it was made by another user (under sudo?). Give this user its own with --dev-ca-dir, or remove that one as its owner (wssify --dev-ca remove)",
                crate::logsafe::path(&key_path)
            ));
        }
        Err(e) if cert_der.is_none() => {
            return State::Foreign(format!(
                "cannot use {} ({e}); nothing was changed: move it away yourself or give another --dev-ca-dir",
                crate::logsafe::path(&key_path)
            ));
        }
        Err(e) => {
            return State::Unsafe(format!(
                "cannot use the development CA key {} ({e}); fix it or run wssify --dev-ca remove",
                crate::logsafe::path(&key_path)
            ));
        }
    };
    let (key_pem, key_meta) = match (key, cert_der.is_some()) {
        (None, false) => return State::Missing,
        (None, true) => return State::Broken(format!("{CERT_FILE} without its key {KEY_FILE}")),
        (Some((_, meta)), false) => {
            // Checked before it is set aside: a key others could read is
            // never quietly kept.
            if !owner_allowed(meta.uid()) {
                return State::Unsafe(not_owned(&key_path, meta.uid()));
            }
            let mode = meta.mode() & 0o777;
            if mode & 0o077 != 0 {
                return State::Unsafe(format!(
                    "{} (a private key without {CERT_FILE}) can be read or changed by others (mode {mode:04o}); nothing was changed: delete it, or if you are sure nobody else read it, chmod 600 {}",
                    crate::logsafe::path(&key_path),
                    crate::logsafe::path(&key_path)
                ));
            }
            return State::Broken(format!(
                "{KEY_FILE} without {CERT_FILE}, left by an interrupted start"
            ));
        }
        (Some(key), true) => key,
    };
    if !owner_allowed(key_meta.uid()) {
        return State::Unsafe(not_owned(&key_path, key_meta.uid()));
    }
    let mode = key_meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return State::Unsafe(format!(
            "the development CA key {} can be read or changed by others (mode {mode:04o}): whoever read it can make certificates for localhost that your clients trust. Run wssify --dev-ca remove (and remove the CA from where you trusted it), or if you are sure nobody else read it, chmod 600 {}",
            crate::logsafe::path(&key_path),
            crate::logsafe::path(&key_path)
        ));
    }
    let Some(cert_der) = cert_der else {
        return State::Missing;
    };
    let Ok(key_pem) = String::from_utf8(key_pem) else {
        return State::Broken(format!("{KEY_FILE} cannot be read as text"));
    };
    let Ok(key) = KeyPair::from_pem(&key_pem) else {
        return State::Broken(format!("{KEY_FILE} holds no usable private key"));
    };
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(&cert_der) else {
        return State::Broken(format!("{CERT_FILE} cannot be parsed"));
    };
    if parsed.tbs_certificate.subject_pki.raw != key.subject_public_key_info().as_slice() {
        return State::Broken(format!("{KEY_FILE} does not match {CERT_FILE}"));
    }
    let info = describe(&cert_der);
    if info.not_after <= now {
        return State::Expired(format!("it expired on {}", info.expires));
    }
    State::Good(Box::new(DevCa {
        dir: dir.to_path_buf(),
        cert_der,
        key,
        info,
    }))
}

/// The facts about a CA certificate.
pub fn describe(der: &CertificateDer<'_>) -> CaInfo {
    let mut info = CaInfo {
        // Escaped: it reaches log lines and the terminal (a CN may hold
        // anything, e.g. escape codes from USER).
        subject: crate::logsafe::quoted(certs::subject_of(der).as_bytes()).to_string(),
        made: "unknown".to_string(),
        expires: "unknown".to_string(),
        not_after: i64::MAX,
        fingerprint: certs::fingerprint(der),
        spki_sha256: String::new(),
        constraints: None,
    };
    if let Ok((_, parsed)) = x509_parser::parse_x509_certificate(der) {
        let validity = parsed.validity();
        // The certificate starts BACKDATE before it was made.
        let made = validity.not_before.timestamp() + BACKDATE.as_secs() as i64;
        info.made = x509_parser::time::ASN1Time::from_timestamp(made).map_or_else(
            |_| "unknown".to_string(),
            |t| t.to_datetime().date().to_string(),
        );
        info.expires = validity.not_after.to_datetime().date().to_string();
        info.not_after = validity.not_after.timestamp();
        let digest = aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            parsed.tbs_certificate.subject_pki.raw,
        );
        info.spki_sha256 = base64(digest.as_ref());
        if let Ok(Some(ext)) = parsed.name_constraints()
            && let Some(permitted) = &ext.value.permitted_subtrees
        {
            let names: Vec<String> = permitted.iter().map(|s| subtree_text(&s.base)).collect();
            info.constraints = Some(names.join(", "));
        }
    }
    info
}

/// A name constraint as people write it: `localhost` also covers
/// `*.localhost`; addresses as `IP/PREFIX`.
fn subtree_text(name: &x509_parser::extensions::GeneralName<'_>) -> String {
    use x509_parser::extensions::GeneralName;
    match name {
        GeneralName::DNSName(dns) => format!("{dns}, *.{dns}"),
        GeneralName::IPAddress(bytes) if bytes.len() == 8 => {
            let ip = std::net::Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]);
            let prefix: u32 = bytes[4..].iter().map(|b| b.count_ones()).sum();
            format!("{ip}/{prefix}")
        }
        GeneralName::IPAddress(bytes) if bytes.len() == 32 => {
            let mut addr = [0u8; 16];
            addr.copy_from_slice(&bytes[..16]);
            let ip = std::net::Ipv6Addr::from(addr);
            let prefix: u32 = bytes[16..].iter().map(|b| b.count_ones()).sum();
            if prefix == 128 {
                ip.to_string()
            } else {
                format!("{ip}/{prefix}")
            }
        }
        other => other.to_string(),
    }
}

/// Makes a new CA and writes it into `dir` (the lock is held).
fn make(dir: &Path) -> Result<DevCa, OpenError> {
    let (key, cert_der) = generate()
        .map_err(|e| OpenError::Refused(format!("could not make a development CA: {e}")))?;
    let cert_pem = pem("CERTIFICATE", &cert_der);
    // The key first: a start interrupted between the two leaves a key
    // without a certificate, which is replaced, never a certificate
    // someone may already trust without its key.
    let written = write_file(dir, KEY_FILE, key.serialize_pem().as_bytes(), 0o600)
        .and_then(|()| write_file(dir, CERT_FILE, cert_pem.as_bytes(), 0o644));
    if let Err(e) = written {
        let _ = fs::remove_file(dir.join(KEY_FILE));
        return Err(OpenError::Unwritable(format!(
            "cannot write the development CA into {} ({e})",
            crate::logsafe::path(dir)
        )));
    }
    // Make the renames durable before anyone is told to trust the CA.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    let info = describe(&cert_der);
    Ok(DevCa {
        dir: dir.to_path_buf(),
        cert_der,
        key,
        info,
    })
}

/// A new CA key and self-signed certificate, constrained to local names.
fn generate() -> Result<(KeyPair, CertificateDer<'static>), rcgen::Error> {
    let key = KeyPair::generate()?;
    let cert = ca_params().self_signed(&key)?;
    Ok((key, cert.der().clone()))
}

/// What every CA wssify makes is: its subject, name constraints, validity.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let made = SystemTime::now();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "wssify development CA");
    dn.push(DnType::CommonName, ca_common_name(made));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    // A client that trusts the CA accepts what it signs only for these
    // names, so even its key, if it leaked, could not be used to
    // impersonate any other site.
    params.name_constraints = Some(NameConstraints {
        permitted_subtrees: vec![
            // Covers localhost and every name under it (RFC 5280 4.2.1.10).
            GeneralSubtree::DnsName("localhost".to_string()),
            GeneralSubtree::IpAddress(CidrSubnet::from_v4_prefix([127, 0, 0, 0], 8)),
            GeneralSubtree::IpAddress(CidrSubnet::from_v6_prefix(
                std::net::Ipv6Addr::LOCALHOST.octets(),
                128,
            )),
        ],
        excluded_subtrees: Vec::new(),
    });
    params.not_before = (made - BACKDATE).into();
    params.not_after = (made + CA_VALIDITY).into();
    params.serial_number = Some(random_serial());
    params
}

/// `wssify development CA (USER@HOST, YYYY-MM-DD)`: recognisable in a
/// browser's list of authorities, and different for each CA made.
fn ca_common_name(made: SystemTime) -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|u| !u.is_empty());
    let host = fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty());
    let date = time_date(made);
    let who = match (user, host) {
        (Some(u), Some(h)) => format!("{u}@{h}, "),
        (Some(u), None) => format!("{u}, "),
        (None, Some(h)) => format!("{h}, "),
        (None, None) => String::new(),
    };
    // A common name is at most 64 characters.
    let mut name = format!("wssify development CA ({who}{date})");
    if name.len() > 64 {
        name = format!("wssify development CA ({date})");
    }
    name
}

fn time_date(at: SystemTime) -> String {
    let secs = at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0));
    x509_parser::time::ASN1Time::from_timestamp(secs)
        .map(|t| t.to_datetime().date().to_string())
        .unwrap_or_default()
}

/// A random positive 128-bit serial number.
pub(crate) fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    // Without randomness the time makes a serial unique enough here.
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes = nanos.to_be_bytes();
    }
    bytes[0] &= 0x7f;
    bytes[0] |= 0x40;
    SerialNumber::from_slice(&bytes)
}

/// Writes `bytes` to `dir/name` atomically: a temporary file created with
/// `mode` (never changed afterwards), synced, then renamed into place.
pub(crate) fn write_file(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, dir.join(name))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Moves `ca.pem` and `ca.key` aside as `NAME.old-SECONDS` (the lock is
/// held), so nothing the user had is ever deleted by a start.
fn set_aside(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let stamp = now();
    let mut kept = Vec::new();
    for name in [CERT_FILE, KEY_FILE] {
        let from = dir.join(name);
        if fs::symlink_metadata(&from).is_err() {
            continue;
        }
        let mut to = dir.join(format!("{name}.old-{stamp}"));
        let mut n = 1;
        while fs::symlink_metadata(&to).is_ok() {
            to = dir.join(format!("{name}.old-{stamp}-{n}"));
            n += 1;
        }
        fs::rename(&from, &to)?;
        kept.push(to);
    }
    Ok(kept)
}

/// Now, in Unix seconds.
pub(crate) fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A PEM block with 64-character lines (the CA certificate as clients
/// are given it).
pub fn pem(label: &str, der: &[u8]) -> String {
    let body = base64(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Standard base64 with padding (RFC 4648): PEM bodies and the SPKI hash
/// Chrome's `--ignore-certificate-errors-spki-list` takes.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_known_answers() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn a_new_ca_is_constrained_to_local_names() {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("dev-ca");
        let (ca, how) = open(&ca_dir).unwrap();
        assert_eq!(how, Opened::Made);
        assert_eq!(
            ca.info.constraints.as_deref(),
            Some("localhost, *.localhost, 127.0.0.0/8, ::1")
        );
        assert_eq!(ca.info.spki_sha256.len(), 44);
        let (again, how) = open(&ca_dir).unwrap();
        assert_eq!(how, Opened::Existing);
        assert_eq!(again.cert_der, ca.cert_der);
        assert_eq!(again.short_id().len(), 8);
    }

    #[test]
    fn only_a_self_signed_wssify_ca_is_recognised() {
        let (key, der) = generate().unwrap();
        assert_eq!(recognise(&der), Ok(()));
        // The same certificate signed by another key: self-issued, but its
        // signature does not verify with its own key.
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
        let params = ca_params();
        let other = KeyPair::generate().unwrap();
        let issuer = rcgen::Issuer::from_params(&params, &other);
        let forged = params.signed_by(&key, &issuer).unwrap();
        assert_eq!(
            x509_parser::parse_x509_certificate(forged.der())
                .unwrap()
                .1
                .subject()
                .as_raw(),
            parsed.subject().as_raw()
        );
        assert_eq!(
            recognise(forged.der()),
            Err("its self-signature does not verify")
        );
    }
}
