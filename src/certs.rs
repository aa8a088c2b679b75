//! Turning certificate and key files into something rustls can serve: PEM
//! from the user, or an in-memory self-signed certificate for development
//! (the one signed by the development CA is made in [`crate::dev_ca`]).
//!
//! PEM is read with `rustls-pki-types`' `PemObject` (re-exported by rustls),
//! the maintained successor of the archived `rustls-pemfile`. Every way a
//! certificate or key file can be wrong becomes one line naming the flag,
//! the file and the fix: a startup error, or a refused reload.

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use crate::error::StartupError;

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
    /// The moment it expires, in Unix seconds, for expiry warnings.
    pub not_after: i64,
    /// SHA-256 of the leaf's DER, as colon-separated hex (what clients pin).
    pub fingerprint: String,
    /// The DNS names SNI is matched against, lower case: the DNS names of
    /// subjectAltName, or the common name when there are none.
    pub dns_names: Vec<String>,
    /// Generated at start for development, and how.
    pub development: Option<Development>,
    /// Certificates in the chain, leaf included.
    pub chain_len: usize,
    /// What is wrong with the chain that a start still serves (the leaf
    /// alone, without its intermediates): a warning, see [`only_the_leaf`].
    pub chain_warning: Option<String>,
    /// Its algorithms as the PROXY protocol names them, worked out once
    /// here and shared by the SNI table with every handshake that serves it.
    pub algs: Arc<CertAlgs>,
}

/// How a served certificate is signed and what key it holds, named as
/// HAProxy names them in the PROXY protocol v2's `PP2_SUBTYPE_SSL_SIG_ALG`
/// and `PP2_SUBTYPE_SSL_KEY_ALG` (`ssl_sock_get_cert_sig`,
/// `cert_get_pkey_algo`), so a backend that reads HAProxy's header reads
/// wssify's alike. `None`: HAProxy would send nothing, or a name no reader
/// could use (OpenSSL's `UNDEF` for a signature it does not know).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertAlgs {
    /// OpenSSL's short name for the algorithm in the certificate's
    /// `signature` field (`RSA-SHA256`, `ecdsa-with-SHA256`, `ED25519`).
    pub sig_alg: Option<&'static str>,
    /// The key's type and size in bits (`RSA2048`, `EC256`); none for
    /// Ed25519 and other keys, as with HAProxy.
    pub key_alg: Option<String>,
}

/// Signature algorithm OIDs and OpenSSL's short names for them (`SN_` in
/// OpenSSL's `obj_mac.h`).
const SIG_ALG_NAMES: &[(&str, &str)] = &[
    ("1.2.840.113549.1.1.4", "RSA-MD5"),
    ("1.2.840.113549.1.1.5", "RSA-SHA1"),
    ("1.2.840.113549.1.1.14", "RSA-SHA224"),
    ("1.2.840.113549.1.1.11", "RSA-SHA256"),
    ("1.2.840.113549.1.1.12", "RSA-SHA384"),
    ("1.2.840.113549.1.1.13", "RSA-SHA512"),
    ("1.2.840.113549.1.1.10", "RSASSA-PSS"),
    ("1.2.840.10045.4.1", "ecdsa-with-SHA1"),
    ("1.2.840.10045.4.3.1", "ecdsa-with-SHA224"),
    ("1.2.840.10045.4.3.2", "ecdsa-with-SHA256"),
    ("1.2.840.10045.4.3.3", "ecdsa-with-SHA384"),
    ("1.2.840.10045.4.3.4", "ecdsa-with-SHA512"),
    ("1.3.101.112", "ED25519"),
    ("1.3.101.113", "ED448"),
    ("1.2.840.10040.4.3", "DSA-SHA1"),
    ("2.16.840.1.101.3.4.3.1", "dsa_with_SHA224"),
    ("2.16.840.1.101.3.4.3.2", "dsa_with_SHA256"),
];

/// The public key OID of an RSA key (`rsaEncryption`; an RSASSA-PSS key is
/// another type to OpenSSL, and HAProxy names it not at all).
const RSA_KEY: &str = "1.2.840.113549.1.1.1";
/// The public key OID of an elliptic curve key (`id-ecPublicKey`).
const EC_KEY: &str = "1.2.840.10045.2.1";
/// Named curves and their size in bits as OpenSSL's `EVP_PKEY_bits` gives it.
const EC_CURVE_BITS: &[(&str, u32)] = &[
    ("1.2.840.10045.3.1.7", 256), // P-256
    ("1.3.132.0.34", 384),        // P-384
    ("1.3.132.0.35", 521),        // P-521
    ("1.3.132.0.10", 256),        // secp256k1
];

impl CertAlgs {
    /// The names for a parsed leaf certificate.
    fn of(cert: &x509_parser::certificate::X509Certificate<'_>) -> CertAlgs {
        let sig = cert.tbs_certificate.signature.algorithm.to_id_string();
        let sig_alg = SIG_ALG_NAMES
            .iter()
            .find(|(oid, _)| *oid == sig)
            .map(|(_, name)| *name);
        let spki = cert.public_key();
        let key_alg = match spki.algorithm.algorithm.to_id_string().as_str() {
            RSA_KEY => match spki.parsed() {
                Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => {
                    Some(format!("RSA{}", bits_of(rsa.modulus)))
                }
                _ => None,
            },
            EC_KEY => spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|curve| curve.to_id_string())
                .and_then(|curve| {
                    EC_CURVE_BITS
                        .iter()
                        .find(|(oid, _)| *oid == curve)
                        .map(|(_, bits)| format!("EC{bits}"))
                }),
            _ => None,
        };
        CertAlgs { sig_alg, key_alg }
    }
}

/// The size in bits of a big-endian unsigned integer (an RSA modulus, whose
/// DER form may start with a zero byte).
fn bits_of(n: &[u8]) -> usize {
    let n = match n.iter().position(|b| *b != 0) {
        Some(first) => &n[first..],
        None => return 0,
    };
    n.len() * 8 - n[0].leading_zeros() as usize
}

impl CertSummary {
    /// The one-line description a reload or `--check` prints.
    pub fn describe(&self) -> String {
        let names = if self.names.is_empty() {
            "none".to_string()
        } else {
            self.names.join(", ")
        };
        format!(
            "certificate {}, names {names}, expires {}, sha256 {}",
            self.subject, self.expires, self.fingerprint
        )
    }
}

impl fmt::Display for CertSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.development == Some(Development::SelfSigned) {
            write!(f, "self-signed for {}", self.names.join(", "))
        } else if self.development == Some(Development::SignedByDevCa) {
            write!(
                f,
                "development certificate for {}, signed by the development CA",
                self.names.join(", ")
            )
        } else {
            write!(f, "{} (expires {}", self.subject, self.expires)?;
            if self.chain_len > 1 {
                write!(f, ", {} certificates in chain", self.chain_len)?;
            }
            f.write_str(")")
        }
    }
}

/// How a development certificate was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Development {
    /// Self-signed, in memory, new at each start.
    SelfSigned,
    /// Signed at start by the development CA kept on disk.
    SignedByDevCa,
}

/// The names the development certificate is valid for.
pub const SELF_SIGNED_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// The development names, then `extra` (without repeats).
pub fn development_names(extra: &[String]) -> Vec<String> {
    let mut names: Vec<String> = SELF_SIGNED_NAMES.iter().map(|s| s.to_string()).collect();
    for name in extra {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    names
}

/// Makes the in-memory development certificate.
pub fn self_signed(provider: &CryptoProvider) -> Result<LoadedCert, StartupError> {
    self_signed_for(provider, &[])
}

/// Makes the in-memory development certificate, for `extra` names too.
pub fn self_signed_for(
    provider: &CryptoProvider,
    extra: &[String],
) -> Result<LoadedCert, StartupError> {
    let names = development_names(extra);
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
    summary.development = Some(Development::SelfSigned);
    Ok(LoadedCert {
        certified_key: Arc::new(certified_key),
        summary,
    })
}

/// Builds a certificate from PEM already read. `cert_label` and `key_label`
/// name where each came from (`--cert /etc/tls/a.pem`, `--cert-dir /d:
/// a.pem`) so that every error says which file is wrong and how.
pub fn from_pem(
    cert_label: &str,
    cert_pem: &[u8],
    key_label: &str,
    key_pem: &[u8],
    provider: &CryptoProvider,
) -> Result<LoadedCert, String> {
    let chain = parse_chain(cert_label, cert_pem)?;
    let key = parse_key(key_label, key_pem)?;
    let signing_key = provider.key_provider.load_private_key(key).map_err(|e| {
        format!(
            "{key_label}: the key cannot be used ({e}); use an RSA (2048 bits or more), ECDSA P-256/P-384 or Ed25519 key"
        )
    })?;
    let certified_key = CertifiedKey::new(chain.clone(), signing_key.clone());
    match certified_key.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            // The key belongs to a later certificate: the chain is upside down.
            let belongs = chain.iter().enumerate().skip(1).find(|(_, cert)| {
                CertifiedKey::new(vec![(*cert).clone()], signing_key.clone())
                    .keys_match()
                    .is_ok()
            });
            if let Some((at, cert)) = belongs {
                return Err(format!(
                    "{cert_label}: the leaf must come first: certificate {} ({}) is the one {key_label} belongs to; put it first in the file, then its intermediates",
                    at + 1,
                    subject_of(cert)
                ));
            }
            return Err(format!(
                "{key_label} does not match the certificate in {cert_label}: give the key that was made with that certificate (the first one in the file)"
            ));
        }
        Err(e) => {
            return Err(format!(
                "{cert_label}: the first certificate cannot be parsed ({e}); it must be the server's own certificate, followed by its intermediates"
            ));
        }
    }
    let summary = summarize(&certified_key.cert);
    Ok(LoadedCert {
        certified_key: Arc::new(certified_key),
        summary,
    })
}

/// Reads a whole file, or says in one line why not: `label` names the flag
/// and file, `what` what the file should hold.
pub fn read(label: &str, path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path)
        .map_err(|e| {
            let fix = match e.kind() {
                io::ErrorKind::NotFound => format!("no such file; give the path of {what}"),
                io::ErrorKind::PermissionDenied => {
                    "permission denied; make it readable by the user wssify runs as".to_string()
                }
                io::ErrorKind::IsADirectory => {
                    format!("this is a directory; give the path of {what}")
                }
                _ => format!("cannot be read ({e}); give the path of {what}"),
            };
            format!("{label}: {fix}")
        })
        .and_then(|bytes| {
            if bytes.iter().all(u8::is_ascii_whitespace) {
                Err(format!("{label} is empty; it should hold {what}"))
            } else {
                Ok(bytes)
            }
        })
}

/// What a `--cert` file should hold, for error messages.
pub const CERT_WHAT: &str = "your PEM certificate chain (e.g. fullchain.pem)";
/// What a `--key` file should hold, for error messages.
pub const KEY_WHAT: &str = "the PEM private key (e.g. privkey.pem)";

fn parse_chain(label: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, pem::Error>>()
        .map_err(|e| {
            format!("{label}: malformed PEM ({e}); give the certificate chain in PEM form")
        })?;
    if chain.is_empty() {
        let why = if contains(pem, b"PRIVATE KEY") {
            "holds a private key but no certificate; did you swap --cert and --key?"
        } else {
            "has no PEM certificate (a -----BEGIN CERTIFICATE----- block); for a DER file run: openssl x509 -inform der -in FILE -out FILE.pem"
        };
        return Err(format!("{label} {why}"));
    }
    Ok(chain)
}

fn parse_key(label: &str, pem: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    if contains(pem, b"ENCRYPTED PRIVATE KEY") || contains(pem, b"Proc-Type: 4,ENCRYPTED") {
        return Err(format!(
            "{label}: the key is encrypted with a passphrase, which wssify cannot ask for; decrypt it first: openssl pkey -in FILE -out key.pem"
        ));
    }
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| {
        let why = match e {
            pem::Error::NoItemsFound if contains(pem, b"BEGIN CERTIFICATE") => {
                "holds a certificate but no private key; did you swap --cert and --key?"
                    .to_string()
            }
            pem::Error::NoItemsFound if PrivateKeyDer::try_from(pem).is_ok() => {
                "is a DER (binary) private key, not PEM; convert it: openssl pkey -inform der -in KEY -out key.pem".to_string()
            }
            pem::Error::NoItemsFound => "has no private key (a BEGIN PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY block); give the key in PEM form".to_string(),
            other => format!("malformed PEM ({other}); give the private key in PEM form"),
        };
        format!("{label} {why}")
    })
}

/// Says what is wrong with the order of a chain (each certificate must be
/// issued by the next), or `None` when it is in order. Clients that get an
/// out-of-order chain may fail to build a path, and only some of them.
pub fn chain_order_problem(chain: &[CertificateDer<'_>]) -> Option<String> {
    let parsed: Vec<_> = chain
        .iter()
        .map(|der| {
            x509_parser::parse_x509_certificate(der)
                .ok()
                .map(|(_, c)| c)
        })
        .collect();
    for (i, pair) in parsed.windows(2).enumerate() {
        let (Some(child), Some(parent)) = (&pair[0], &pair[1]) else {
            return Some(format!(
                "certificate {} in the chain cannot be parsed",
                i + 2
            ));
        };
        if child.issuer() != parent.subject() && parent.issuer() == child.subject() {
            return Some(format!(
                "{}chain out of order: certificate {} ({}) is issued by certificate {} ({}), so it must come before it; put the server's certificate first, then each issuer in turn",
                if i == 0 {
                    "the leaf must come first: "
                } else {
                    ""
                },
                i + 2,
                parent.subject(),
                i + 1,
                child.subject()
            ));
        }
        if child.issuer() != parent.subject() {
            return Some(format!(
                "chain out of order: certificate {} ({}) is not issued by certificate {} ({}); put the server's certificate first, then each issuer in turn",
                i + 1,
                child.subject(),
                i + 2,
                parent.subject()
            ));
        }
    }
    None
}

/// Says so when a chain is a leaf alone that is not self-signed: the most
/// common production TLS fault, `cert.pem` given instead of
/// `fullchain.pem`. Browsers often fill the gap from a cache, so it looks
/// fine from a desktop, while other clients (phones, programs, `curl`)
/// fail to verify it. A leaf issued straight by a root that clients hold
/// (a private CA) needs nothing more, which is why this is a warning.
pub fn only_the_leaf(chain: &[CertificateDer<'_>]) -> Option<String> {
    let [leaf] = chain else {
        return None;
    };
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf).ok()?;
    if parsed.issuer() == parsed.subject() {
        return None;
    }
    let issuer = common_name_or_subject(parsed.issuer());
    Some(format!(
        "the chain has only the leaf; use the full chain (e.g. fullchain.pem, not cert.pem): clients refuse a leaf without the intermediate that issued it ({issuer}), unless {issuer} is itself a root they trust"
    ))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Reads the subject, names and expiry of the leaf for the logs.
pub fn summarize(chain: &[CertificateDer<'_>]) -> CertSummary {
    let mut summary = CertSummary {
        subject: "(unreadable subject)".to_string(),
        names: Vec::new(),
        expires: "unknown".to_string(),
        not_after: i64::MAX,
        fingerprint: String::new(),
        dns_names: Vec::new(),
        development: None,
        chain_len: chain.len(),
        chain_warning: only_the_leaf(chain),
        algs: Arc::default(),
    };
    let Some(leaf) = chain.first() else {
        return summary;
    };
    summary.fingerprint = fingerprint(leaf);
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(leaf) else {
        return summary;
    };
    summary.algs = Arc::new(CertAlgs::of(&parsed));
    let subject = parsed.subject();
    summary.subject = common_name_or_subject(subject);
    summary.expires = parsed.validity().not_after.to_datetime().date().to_string();
    summary.not_after = parsed.validity().not_after.timestamp();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        use x509_parser::extensions::GeneralName;
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => {
                    summary.names.push(dns.to_string());
                    summary.dns_names.push(dns.to_ascii_lowercase());
                }
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
    if summary.dns_names.is_empty()
        && let Some(cn) = subject
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
    {
        summary.dns_names.push(cn.to_ascii_lowercase());
    }
    summary
}

/// The subject of a certificate as the logs name it: its common name, or the
/// whole subject when it has none.
pub fn subject_of(der: &[u8]) -> String {
    match x509_parser::parse_x509_certificate(der) {
        Ok((_, parsed)) => common_name_or_subject(parsed.subject()),
        Err(_) => "(unreadable subject)".to_string(),
    }
}

/// The subject common name of a certificate, if it has one (the PROXY
/// protocol's `PP2_SUBTYPE_SSL_CN`).
pub fn common_name_of(der: &[u8]) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = parsed.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

fn common_name_or_subject(subject: &x509_parser::x509::X509Name<'_>) -> String {
    subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| subject.to_string())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The names for a certificate rcgen makes with `alg`.
    fn algs(alg: &'static rcgen::SignatureAlgorithm) -> CertAlgs {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let params = rcgen::CertificateParams::new(vec!["a.test".to_string()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        (*summarize(&[cert.der().clone()]).algs).clone()
    }

    fn named(sig_alg: &'static str, key_alg: Option<&str>) -> CertAlgs {
        CertAlgs {
            sig_alg: Some(sig_alg),
            key_alg: key_alg.map(str::to_string),
        }
    }

    /// The strings HAProxy sends for the same certificates (OpenSSL's short
    /// name of the signature, `cert_get_pkey_algo`'s key), as
    /// `openssl x509 -text` shows them in long form.
    #[test]
    fn algorithms_are_named_as_haproxy_names_them() {
        assert_eq!(
            algs(&rcgen::PKCS_RSA_SHA256),
            named("RSA-SHA256", Some("RSA2048"))
        );
        assert_eq!(
            algs(&rcgen::PKCS_ECDSA_P256_SHA256),
            named("ecdsa-with-SHA256", Some("EC256"))
        );
        assert_eq!(
            algs(&rcgen::PKCS_ECDSA_P384_SHA384),
            named("ecdsa-with-SHA384", Some("EC384"))
        );
        // HAProxy names no key type but RSA, EC and DSA.
        assert_eq!(algs(&rcgen::PKCS_ED25519), named("ED25519", None));
    }

    #[test]
    fn a_modulus_is_measured_without_its_sign_byte() {
        assert_eq!(bits_of(&[0x00, 0x80, 0x00]), 16);
        assert_eq!(bits_of(&[0x01, 0xff]), 9);
        assert_eq!(bits_of(&[0x00]), 0);
        assert_eq!(bits_of(&[]), 0);
    }

    #[test]
    fn an_unreadable_certificate_names_nothing() {
        assert_eq!(
            *summarize(&[CertificateDer::from(vec![1, 2, 3])]).algs,
            CertAlgs::default()
        );
    }
}
