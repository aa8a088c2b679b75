//! Loading the server certificate: PEM files from the user, or an
//! in-memory self-signed one for development.
//!
//! PEM is read with `rustls-pki-types`' `PemObject` (re-exported by rustls),
//! the maintained successor of the archived `rustls-pemfile`. Every way a
//! certificate or key file can be wrong becomes a one-line [`StartupError`]
//! naming the flag, the file and the fix.

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use crate::error::StartupError;
use crate::settings::CertSource;

/// A certificate chain with its signing key, and what to tell people about it.
pub struct LoadedCert {
    /// What rustls serves.
    pub certified_key: Arc<CertifiedKey>,
    /// What the logs say about it.
    pub summary: CertSummary,
}

/// The human-readable facts about a leaf certificate.
#[derive(Debug, Clone)]
pub struct CertSummary {
    /// The subject's common name, or the whole subject when it has none.
    pub subject: String,
    /// DNS names and IP addresses from the subjectAltName extension.
    pub names: Vec<String>,
    /// The last day it is valid, `YYYY-MM-DD` (UTC).
    pub expires: String,
    /// SHA-256 of the leaf's DER, as colon-separated hex (what clients pin).
    pub fingerprint: String,
    /// Generated at start for development.
    pub self_signed: bool,
    /// Certificates in the chain, leaf included.
    pub chain_len: usize,
}

impl fmt::Display for CertSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.self_signed {
            write!(f, "self-signed for {}", self.names.join(", "))
        } else {
            write!(f, "{} (expires {}", self.subject, self.expires)?;
            if self.chain_len > 1 {
                write!(f, ", {} certificates in chain", self.chain_len)?;
            }
            f.write_str(")")
        }
    }
}

/// Loads the certificate the settings ask for.
pub fn load(source: &CertSource, provider: &CryptoProvider) -> Result<LoadedCert, StartupError> {
    match source {
        CertSource::SelfSigned => self_signed(provider),
        CertSource::Files { cert, key } => load_files(cert, key, provider),
    }
}

/// The names the development certificate is valid for.
pub const SELF_SIGNED_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

fn self_signed(provider: &CryptoProvider) -> Result<LoadedCert, StartupError> {
    let names: Vec<String> = SELF_SIGNED_NAMES.iter().map(|s| s.to_string()).collect();
    let generated = rcgen::generate_simple_self_signed(names).map_err(|e| {
        StartupError::new(format!(
            "could not generate the development certificate: {e}; pass --cert and --key instead"
        ))
    })?;
    let chain = vec![generated.cert.der().clone()];
    let key = PrivateKeyDer::from(generated.signing_key);
    let certified_key = CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        StartupError::new(format!(
            "could not use the development certificate: {e}; pass --cert and --key instead"
        ))
    })?;
    let mut summary = summarize(&certified_key.cert);
    summary.self_signed = true;
    Ok(LoadedCert {
        certified_key: Arc::new(certified_key),
        summary,
    })
}

fn load_files(
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<LoadedCert, StartupError> {
    let cert_pem = read(
        "--cert",
        cert_path,
        "your PEM certificate chain (e.g. fullchain.pem)",
    )?;
    let key_pem = read("--key", key_path, "the PEM private key (e.g. privkey.pem)")?;
    let chain = parse_chain(cert_path, &cert_pem)?;
    let key = parse_key(key_path, &key_pem)?;

    let signing_key = provider.key_provider.load_private_key(key).map_err(|e| {
        StartupError::new(format!(
            "--key {}: the key cannot be used ({e}); use an RSA (2048 bits or more), ECDSA P-256/P-384 or Ed25519 key",
            key_path.display()
        ))
    })?;
    let certified_key = CertifiedKey::new(chain, signing_key);
    match certified_key.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(StartupError::new(format!(
                "--key {} does not match the certificate in --cert {}: give the key that was made with that certificate (the first one in the file)",
                key_path.display(),
                cert_path.display()
            )));
        }
        Err(e) => {
            return Err(StartupError::new(format!(
                "--cert {}: the first certificate cannot be parsed ({e}); it must be the server's own certificate, followed by its intermediates",
                cert_path.display()
            )));
        }
    }
    let summary = summarize(&certified_key.cert);
    Ok(LoadedCert {
        certified_key: Arc::new(certified_key),
        summary,
    })
}

fn read(flag: &str, path: &Path, what: &str) -> Result<Vec<u8>, StartupError> {
    std::fs::read(path).map_err(|e| {
        let fix = match e.kind() {
            io::ErrorKind::NotFound => format!("no such file; give the path of {what}"),
            io::ErrorKind::PermissionDenied => {
                "permission denied; make it readable by the user wssify runs as".to_string()
            }
            io::ErrorKind::IsADirectory => format!("this is a directory; give the path of {what}"),
            _ => format!("cannot be read ({e}); give the path of {what}"),
        };
        StartupError::new(format!("{flag} {}: {fix}", path.display()))
    })
}

fn parse_chain(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, StartupError> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, pem::Error>>()
        .map_err(|e| {
            StartupError::new(format!(
                "--cert {}: malformed PEM ({e}); give the certificate chain in PEM form",
                path.display()
            ))
        })?;
    if chain.is_empty() {
        let why = if contains(pem, b"PRIVATE KEY") {
            "holds a private key but no certificate; did you swap --cert and --key?"
        } else {
            "has no PEM certificate (a -----BEGIN CERTIFICATE----- block); for a DER file run: openssl x509 -inform der -in FILE -out FILE.pem"
        };
        return Err(StartupError::new(format!(
            "--cert {} {why}",
            path.display()
        )));
    }
    Ok(chain)
}

fn parse_key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, StartupError> {
    if contains(pem, b"ENCRYPTED PRIVATE KEY") || contains(pem, b"Proc-Type: 4,ENCRYPTED") {
        return Err(StartupError::new(format!(
            "--key {0}: the key is encrypted with a passphrase, which wssify cannot ask for; decrypt it first: openssl pkey -in {0} -out key.pem",
            path.display()
        )));
    }
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| {
        let why = match e {
            pem::Error::NoItemsFound if contains(pem, b"BEGIN CERTIFICATE") => {
                "holds a certificate but no private key; did you swap --cert and --key?"
                    .to_string()
            }
            pem::Error::NoItemsFound => "has no private key (a BEGIN PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY block); give the key in PEM form".to_string(),
            other => format!("malformed PEM ({other}); give the private key in PEM form"),
        };
        StartupError::new(format!("--key {} {why}", path.display()))
    })
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Reads the subject, names and expiry of the leaf for the logs.
fn summarize(chain: &[CertificateDer<'_>]) -> CertSummary {
    let mut summary = CertSummary {
        subject: "(unreadable subject)".to_string(),
        names: Vec::new(),
        expires: "unknown".to_string(),
        fingerprint: String::new(),
        self_signed: false,
        chain_len: chain.len(),
    };
    let Some(leaf) = chain.first() else {
        return summary;
    };
    summary.fingerprint = fingerprint(leaf);
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(leaf) else {
        return summary;
    };
    let subject = parsed.subject();
    summary.subject = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| subject.to_string());
    summary.expires = parsed.validity().not_after.to_datetime().date().to_string();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        use x509_parser::extensions::GeneralName;
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => summary.names.push(dns.to_string()),
                GeneralName::IPAddress(bytes) => {
                    let ip = match bytes.len() {
                        4 => <[u8; 4]>::try_from(*bytes).ok().map(std::net::IpAddr::from),
                        16 => <[u8; 16]>::try_from(*bytes)
                            .ok()
                            .map(std::net::IpAddr::from),
                        _ => None,
                    };
                    if let Some(ip) = ip {
                        summary.names.push(ip.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    summary
}

/// SHA-256 of a certificate's DER, as `AB:CD:...` (the form `openssl x509
/// -fingerprint -sha256` prints), so a client can pin it.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}
