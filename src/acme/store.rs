//! ACME state on disk, in `--acme-dir`, kept private the way the
//! development CA is (its helpers: files opened without following links,
//! written to a temporary name with their final mode and renamed into
//! place, flock'd lock files):
//!
//! ```text
//! DIR/                          0700, owned by the user running wssify
//!   challenges/NAME             a validation under way: its digest (hex), for replicas
//!   CA/                         one per ACME server, e.g. acme-v02.api.letsencrypt.org-directory
//!     account.json              0600, the account key and URL (made once)
//!     account.lock              held while the account is made
//!     certs/NAME.pem            0600, the chain then its key, one file so a reader never sees half a pair
//!     locks/NAME.lock           held while NAME is ordered: replicas on one volume order once
//! ```

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use instant_acme::AccountCredentials;

use crate::dev_ca::store::{Lock, ensure_dir, owner_allowed, read_small, write_file};
use crate::logsafe;

/// Where one ACME server's state lives inside `--acme-dir`.
#[derive(Debug, Clone)]
pub struct Store {
    /// `--acme-dir`.
    pub root: PathBuf,
    /// `--acme-dir/CA`.
    pub ca_dir: PathBuf,
}

impl Store {
    /// The state for the ACME server at `directory_url`, without touching
    /// the disk.
    pub fn new(root: &Path, directory_url: &str) -> Store {
        Store {
            root: root.to_path_buf(),
            ca_dir: root.join(ca_key(directory_url)),
        }
    }

    /// Makes the directories (0700) and checks that nobody else can write
    /// or own them; the one-line refusal names the directory and the fix.
    pub fn prepare(&self) -> Result<(), String> {
        for dir in [
            self.root.clone(),
            self.challenges_dir(),
            self.ca_dir.clone(),
            self.certs_dir(),
            self.locks_dir(),
        ] {
            ensure_dir(&dir).map_err(|e| {
                format!(
                    "--acme-dir: cannot create {} ({e}); give a directory wssify can write with --acme-dir",
                    logsafe::path(&dir)
                )
            })?;
            let meta = std::fs::metadata(&dir)
                .map_err(|e| format!("--acme-dir: cannot look at {} ({e})", logsafe::path(&dir)))?;
            if !owner_allowed(meta.uid()) {
                return Err(format!(
                    "--acme-dir: {} belongs to another user (uid {}), so the ACME keys in it are not used: run wssify as its owner or give another --acme-dir",
                    logsafe::path(&dir),
                    meta.uid()
                ));
            }
            let mode = meta.mode() & 0o777;
            if mode & 0o022 != 0 {
                return Err(format!(
                    "--acme-dir: {} can be written by others (mode {mode:04o}), who could swap the keys served; run chmod 700 {}",
                    logsafe::path(&dir),
                    logsafe::path(&dir)
                ));
            }
        }
        Ok(())
    }

    /// `DIR/challenges`.
    pub fn challenges_dir(&self) -> PathBuf {
        self.root.join("challenges")
    }

    /// `DIR/CA/certs`: watched by the certificate reloader.
    pub fn certs_dir(&self) -> PathBuf {
        self.ca_dir.join("certs")
    }

    fn locks_dir(&self) -> PathBuf {
        self.ca_dir.join("locks")
    }

    /// The file holding `name`'s chain and key.
    pub fn cert_path(&self, name: &str) -> PathBuf {
        self.certs_dir().join(format!("{name}.pem"))
    }

    /// The account, if one was made for this server.
    pub fn read_account(&self) -> Result<Option<AccountCredentials>, String> {
        let path = self.ca_dir.join("account.json");
        let Some((bytes, _)) = read_small(&path).map_err(|e| {
            format!(
                "cannot read the ACME account {} ({e})",
                logsafe::path(&path)
            )
        })?
        else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            format!(
                "the ACME account {} is not readable ({e}); move it away to make a new account",
                logsafe::path(&path)
            )
        })
    }

    /// Keeps the account (mode 0600).
    pub fn write_account(&self, credentials: &AccountCredentials) -> Result<(), String> {
        let json = serde_json::to_vec_pretty(credentials)
            .map_err(|e| format!("cannot encode the ACME account ({e})"))?;
        write_file(&self.ca_dir, "account.json", &json, 0o600).map_err(|e| {
            format!(
                "cannot keep the ACME account in {} ({e})",
                logsafe::path(&self.ca_dir)
            )
        })
    }

    /// The account lock, if no other process holds it.
    pub(crate) fn try_lock_account(&self) -> io::Result<Option<Lock>> {
        Lock::try_file(&self.ca_dir.join("account.lock"))
    }

    /// `name`'s order lock, if no other process holds it.
    pub(crate) fn try_lock_name(&self, name: &str) -> io::Result<Option<Lock>> {
        Lock::try_file(&self.locks_dir().join(format!("{name}.lock")))
    }

    /// `name`'s chain and key as kept, if there are any.
    pub fn read_cert(&self, name: &str) -> Result<Option<Vec<u8>>, String> {
        let path = self.cert_path(name);
        read_small(&path)
            .map(|found| found.map(|(bytes, _)| bytes))
            .map_err(|e| format!("cannot read {} ({e})", logsafe::path(&path)))
    }

    /// Keeps `name`'s chain and key as one file (mode 0600), replaced whole.
    pub fn write_cert(&self, name: &str, chain_pem: &str, key_pem: &str) -> Result<(), String> {
        let mut bytes = chain_pem.trim_end().as_bytes().to_vec();
        bytes.push(b'\n');
        bytes.extend_from_slice(key_pem.as_bytes());
        write_file(&self.certs_dir(), &format!("{name}.pem"), &bytes, 0o600).map_err(|e| {
            format!(
                "cannot keep the certificate for {name} in {} ({e}); it is served until the process stops",
                logsafe::path(&self.certs_dir())
            )
        })
    }
}

/// A directory name for an ACME server: its URL's host, port and path,
/// with anything but letters, digits, `.` and `-` made `-`.
fn ca_key(directory_url: &str) -> String {
    let rest = directory_url
        .split_once("://")
        .map_or(directory_url, |(_, rest)| rest);
    let key: String = rest
        .trim_end_matches('/')
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    match key.trim_matches(|c| c == '-' || c == '.') {
        "" => "ca".to_string(),
        key => key.to_string(),
    }
}

/// Shares a validation under way with replicas.
pub fn write_challenge(dir: &Path, name: &str, digest: &[u8]) -> io::Result<()> {
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    write_file(dir, name, hex.as_bytes(), 0o600)
}

/// A replica's validation under way for `name`.
pub fn read_challenge(dir: &Path, name: &str) -> Option<Vec<u8>> {
    if name.contains('/') || name.starts_with('.') {
        return None;
    }
    let (bytes, _) = read_small(&dir.join(name)).ok()??;
    let text = std::str::from_utf8(&bytes).ok()?.trim();
    if text.len() != 64 {
        return None;
    }
    (0..32)
        .map(|i| u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

/// The validation of `name` is over.
pub fn remove_challenge(dir: &Path, name: &str) {
    let _ = std::fs::remove_file(dir.join(name));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_ca_has_a_directory_of_its_own() {
        assert_eq!(
            ca_key("https://acme-v02.api.letsencrypt.org/directory"),
            "acme-v02.api.letsencrypt.org-directory"
        );
        assert_eq!(ca_key("https://localhost:14000/dir"), "localhost-14000-dir");
        assert_eq!(ca_key("https://../../"), "ca");
    }

    #[test]
    fn challenges_round_trip_and_strangers_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        write_challenge(dir.path(), "a.test", &[0xab; 32]).unwrap();
        assert_eq!(read_challenge(dir.path(), "a.test"), Some(vec![0xab; 32]));
        assert_eq!(read_challenge(dir.path(), "b.test"), None);
        assert_eq!(read_challenge(dir.path(), "../a.test"), None);
        std::fs::write(dir.path().join("c.test"), "zz").unwrap();
        assert_eq!(read_challenge(dir.path(), "c.test"), None);
        remove_challenge(dir.path(), "a.test");
        assert_eq!(read_challenge(dir.path(), "a.test"), None);
    }
}
