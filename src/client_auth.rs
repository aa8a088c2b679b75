//! Client certificates (mTLS): the CA bundle they must chain to and the
//! revocation lists that withdraw some of them.
//!
//! The checking itself is rustls' webpki verifier; this module only turns
//! the user's files into it, with one-line errors naming the file, and
//! counts what was loaded for the logs.

use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;

/// What a `--client-ca` file should hold, for error messages.
pub const CA_WHAT: &str = "the PEM bundle of CA certificates client certificates must chain to";
/// What a `--crl` file should hold, for error messages.
pub const CRL_WHAT: &str = "a certificate revocation list (PEM or DER)";

/// A parsed `--client-ca` bundle.
pub struct CaBundle {
    /// The trust anchors.
    pub roots: RootCertStore,
    /// How many certificates the file held.
    pub count: usize,
}

/// Reads the CA bundle client certificates must chain to.
pub fn parse_ca(label: &str, pem_bytes: &[u8]) -> Result<CaBundle, String> {
    let certs = CertificateDer::pem_slice_iter(pem_bytes)
        .collect::<Result<Vec<_>, pem::Error>>()
        .map_err(|e| format!("{label}: malformed PEM ({e}); give {CA_WHAT}"))?;
    if certs.is_empty() {
        return Err(format!(
            "{label} has no PEM certificate (a -----BEGIN CERTIFICATE----- block); give {CA_WHAT}"
        ));
    }
    let mut roots = RootCertStore::empty();
    for (i, cert) in certs.iter().enumerate() {
        roots.add(cert.clone()).map_err(|e| {
            format!(
                "{label}: certificate {} cannot be used as a CA ({e}); give {CA_WHAT}",
                i + 1
            )
        })?;
    }
    Ok(CaBundle {
        roots,
        count: certs.len(),
    })
}

/// A parsed `--crl` file.
pub struct Crls {
    /// The lists, as rustls takes them.
    pub lists: Vec<CertificateRevocationListDer<'static>>,
    /// Revoked certificates over all lists in the file.
    pub revoked: usize,
}

/// Reads one revocation list file: PEM (one or more `X509 CRL` blocks) or DER.
pub fn parse_crl(label: &str, bytes: &[u8]) -> Result<Crls, String> {
    let mut lists = CertificateRevocationListDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, pem::Error>>()
        .map_err(|e| format!("{label}: malformed PEM ({e}); give {CRL_WHAT}"))?;
    if lists.is_empty() {
        // DER is one SEQUENCE; anything else is not a CRL at all.
        if bytes.first() != Some(&0x30) {
            return Err(format!(
                "{label} has no CRL (neither a -----BEGIN X509 CRL----- block nor DER); give {CRL_WHAT}"
            ));
        }
        lists.push(CertificateRevocationListDer::from(bytes.to_vec()));
    }
    let mut revoked = 0;
    for (i, list) in lists.iter().enumerate() {
        let (_, crl) = x509_parser::parse_x509_crl(list).map_err(|e| {
            format!(
                "{label}: revocation list {} cannot be parsed ({e}); give {CRL_WHAT}",
                i + 1
            )
        })?;
        revoked += crl.iter_revoked_certificates().count();
    }
    Ok(Crls { lists, revoked })
}

/// Builds the verifier every handshake uses. Revocation is checked where a
/// list from the certificate's issuer is loaded; certificates whose issuer
/// publishes no list here are judged by the chain alone.
pub fn verifier(
    ca: &CaBundle,
    crls: &[&Crls],
    optional: bool,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, String> {
    let lists = crls.iter().flat_map(|c| c.lists.iter().cloned());
    let mut builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(ca.roots.clone()), provider)
            .with_crls(lists)
            .allow_unknown_revocation_status();
    if optional {
        builder = builder.allow_unauthenticated();
    }
    builder
        .build()
        .map_err(|e| format!("--client-ca/--crl: cannot check client certificates ({e})"))
}
