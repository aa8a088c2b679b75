//! The TLS-ALPN-01 answer (RFC 8737), on the listening port itself: the
//! CA's validator connects with ALPN `acme-tls/1` only and must get a
//! self-signed certificate for the name carrying the SHA-256 of the key
//! authorization in the critical `id-pe-acmeIdentifier` extension.
//!
//! It is served from a configuration of its own ([`Challenges::config`])
//! that the connection switches to once its ClientHello has been read
//! (`TlsStream::reconfigure`): putting `acme-tls/1` in the main
//! configuration's ALPN list would make rustls answer browsers offering
//! `h2, http/1.1` with `no_application_protocol`. The certificate goes out
//! through a resolver, never through `with_single_cert`, which would try to
//! parse the critical extension and fail.
//!
//! Replicas sharing one `--acme-dir` share the challenges too: the process
//! that orders writes the digest to `DIR/challenges/NAME`, and whichever
//! replica the validator reaches answers from it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rcgen::{CertificateParams, CustomExtension, KeyPair};
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::store;

/// The ALPN protocol of a TLS-ALPN-01 validation.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Whether a ClientHello's ALPN offer is a TLS-ALPN-01 validation: exactly
/// `acme-tls/1` and nothing else (RFC 8737 §3). A browser never offers it.
pub fn is_validation(alpn: &[Vec<u8>]) -> bool {
    matches!(alpn, [only] if only == ACME_TLS_ALPN)
}

/// The challenge certificates of the names being validated now, by name.
pub struct Challenges {
    /// Certificates this process made, by name (lower case).
    made: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    /// Where other replicas' challenges are found (`DIR/challenges`).
    shared_dir: PathBuf,
    /// The `--acme` names: only these are ever looked up, so a client's
    /// SNI never names a file to read.
    names: Vec<String>,
    provider: Arc<CryptoProvider>,
}

impl std::fmt::Debug for Challenges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Challenges")
            .field("shared_dir", &self.shared_dir)
            .finish_non_exhaustive()
    }
}

impl Challenges {
    /// No challenge yet for `names` (the `--acme` names, lower case);
    /// `shared_dir` is `DIR/challenges`.
    pub fn new(
        names: Vec<String>,
        shared_dir: PathBuf,
        provider: Arc<CryptoProvider>,
    ) -> Challenges {
        Challenges {
            made: Mutex::new(HashMap::new()),
            shared_dir,
            names,
            provider,
        }
    }

    /// The configuration a validation connection is answered with: TLS 1.2
    /// and 1.3, ALPN `acme-tls/1` only, no resumption, the certificate
    /// chosen by [`Challenges::certificate`].
    pub fn config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, String> {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("cannot configure TLS for ACME challenges ({e})"))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(Arc::new(config))
    }

    /// Starts answering validations of `name` with `digest` (the SHA-256
    /// of the key authorization), in this process and, through the shared
    /// directory, in replicas.
    pub fn add(&self, name: &str, digest: &[u8]) -> Result<(), String> {
        let key = challenge_cert(name, digest, &self.provider)?;
        if let Ok(mut made) = self.made.lock() {
            made.insert(name.to_ascii_lowercase(), key);
        }
        store::write_challenge(&self.shared_dir, name, digest)
            .map_err(|e| format!("cannot share the challenge for {name} with replicas: {e}"))
    }

    /// Stops answering validations of `name`.
    pub fn remove(&self, name: &str) {
        if let Ok(mut made) = self.made.lock() {
            made.remove(&name.to_ascii_lowercase());
        }
        store::remove_challenge(&self.shared_dir, name);
    }

    /// Whether `name` is being validated (by this process or a replica).
    pub fn pending(&self, name: &str) -> bool {
        self.certificate(name).is_some()
    }

    /// The challenge certificate for `name`, if it is being validated.
    pub fn certificate(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if !self.names.contains(&name) {
            return None;
        }
        let mine = self.made.lock().ok()?.get(&name).cloned();
        if mine.is_some() {
            return mine;
        }
        // A replica's order: made here from the digest it shared.
        let digest = store::read_challenge(&self.shared_dir, &name)?;
        challenge_cert(&name, &digest, &self.provider).ok()
    }
}

impl ResolvesServerCert for Challenges {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.certificate(hello.server_name()?)
    }
}

/// Answers a validation connection whose ClientHello has been read:
/// the handshake on the challenge configuration, then a close (the
/// validator only looks at the certificate). Says how it went, for the
/// debug line.
pub async fn answer(
    mut stream: crate::tls_stream::TlsStream,
    status: &super::Status,
    deadline: tokio::time::Instant,
) -> String {
    use tokio::io::AsyncWriteExt;
    if let Err(e) = stream.reconfigure(status.challenge_config.clone()) {
        return format!("cannot switch to the challenge configuration: {e}");
    }
    match tokio::time::timeout_at(deadline, stream.handshake()).await {
        Ok(Ok(mut done)) => {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), done.shutdown()).await;
            "challenge certificate sent".to_string()
        }
        // A validator has what it came for once the certificate is out,
        // and may close without finishing the handshake.
        Ok(Err(refused))
            if refused
                .error
                .get_ref()
                .and_then(|e| e.downcast_ref::<crate::tls_stream::ClientLeft>())
                .is_some_and(|left| left.after_certificate) =>
        {
            "challenge certificate sent (the validator closed after reading it)".to_string()
        }
        Ok(Err(refused)) => format!("handshake failed: {}", refused.error),
        Err(_) => "handshake not finished in time".to_string(),
    }
}

/// A self-signed certificate for `name` with the acmeIdentifier extension
/// holding `digest`, and a fresh P-256 key.
pub fn challenge_cert(
    name: &str,
    digest: &[u8],
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, String> {
    if digest.len() != 32 {
        return Err(format!(
            "the key authorization digest for {name} is {} bytes, not 32",
            digest.len()
        ));
    }
    let failed =
        |e: rcgen::Error| format!("cannot make the ACME challenge certificate for {name}: {e}");
    let mut params = CertificateParams::new(vec![name.to_string()]).map_err(failed)?;
    params
        .custom_extensions
        .push(CustomExtension::new_acme_identifier(digest));
    let key = KeyPair::generate().map_err(failed)?;
    let cert = params.self_signed(&key).map_err(failed)?;
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| format!("cannot load the ACME challenge key for {name}: {e}"))?;
    Ok(Arc::new(CertifiedKey::new(
        vec![CertificateDer::from(cert.der().to_vec())],
        signing,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_offer_of_exactly_acme_tls_is_a_validation() {
        assert!(is_validation(&[b"acme-tls/1".to_vec()]));
        assert!(!is_validation(&[]));
        assert!(!is_validation(&[b"h2".to_vec(), b"http/1.1".to_vec()]));
        assert!(!is_validation(&[b"acme-tls/1".to_vec(), b"h2".to_vec()]));
    }

    #[test]
    fn the_challenge_certificate_carries_the_digest_in_a_critical_extension() {
        let provider = crate::tls::provider();
        let digest = [7u8; 32];
        let key = challenge_cert("a.test", &digest, &provider).unwrap();
        let der = key.cert[0].as_ref();
        let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
        let ext = cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("id-pe-acmeIdentifier");
        assert!(ext.critical);
        // An OCTET STRING of the 32 bytes.
        assert_eq!(&ext.value[..2], &[0x04, 32]);
        assert_eq!(&ext.value[2..], &digest);
        assert!(challenge_cert("a.test", &[1; 31], &provider).is_err());
    }

    #[test]
    fn only_acme_names_are_answered_and_replicas_share_challenges() {
        let dir = tempfile::tempdir().unwrap();
        let provider = crate::tls::provider();
        let ours = Challenges::new(vec!["a.test".into()], dir.path().into(), provider.clone());
        let replica = Challenges::new(vec!["a.test".into()], dir.path().into(), provider);
        assert!(!ours.pending("a.test"));
        ours.add("a.test", &[9; 32]).unwrap();
        assert!(ours.pending("A.TEST."));
        // Another process sharing the directory answers it too.
        assert!(replica.pending("a.test"));
        // A name that is not an --acme name is never looked up.
        store::write_challenge(dir.path(), "b.test", &[9; 32]).unwrap();
        assert!(!ours.pending("b.test"));
        ours.remove("a.test");
        assert!(!ours.pending("a.test"));
        assert!(!replica.pending("a.test"));
    }
}
