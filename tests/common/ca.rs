//! A test certificate authority: server and client certificates with chosen
//! names, serials and expiry, revocation lists, and files written the ways
//! real tools write them (in place, renamed into place).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CertifiedIssuer, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams,
    SerialNumber, date_time_ymd,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A root CA that signs everything a test needs.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate with its key, as PEM and DER.
pub struct Leaf {
    /// The certificate in PEM.
    pub cert_pem: String,
    /// The private key in PEM (PKCS#8).
    pub key_pem: String,
    /// The certificate in DER.
    pub der: CertificateDer<'static>,
    /// SHA-256 of the DER, as wssify logs it.
    pub fingerprint: String,
}

/// A date as (year, month, day), `days` from today (UTC).
pub fn days_from_today(days: i64) -> (i32, u8, u8) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    civil_from_days(now / 86_400 + days)
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i32, u8, u8) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let y = (yoe + era * 400 + i64::from(m <= 2)) as i32;
    (y, m, d)
}

/// `YYYY-MM-DD` for a date.
pub fn ymd_text((y, m, d): (i32, u8, u8)) -> String {
    format!("{y:04}-{m:02}-{d:02}")
}

/// Parameters for a CA certificate named `cn` that may sign certificates
/// and revocation lists, valid 2020 to 2050.
pub fn ca_params(cn: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = date_time_ymd(2020, 1, 1);
    params.not_after = date_time_ymd(2050, 1, 1);
    params
}

impl Ca {
    /// A new root CA named `cn`.
    pub fn new(cn: &str) -> Ca {
        let issuer =
            CertifiedIssuer::self_signed(ca_params(cn), KeyPair::generate().unwrap()).unwrap();
        Ca { issuer }
    }

    /// A new root CA named `cn` with a key of `alg` (`new`: ECDSA P-256),
    /// which is then what signs its certificates.
    pub fn keyed(cn: &str, alg: &'static rcgen::SignatureAlgorithm) -> Ca {
        let key = KeyPair::generate_for(alg).unwrap();
        let issuer = CertifiedIssuer::self_signed(ca_params(cn), key).unwrap();
        Ca { issuer }
    }

    /// An intermediate CA named `cn`, issued by this one.
    pub fn intermediate(&self, cn: &str) -> Ca {
        let issuer =
            CertifiedIssuer::signed_by(ca_params(cn), KeyPair::generate().unwrap(), &self.issuer)
                .unwrap();
        Ca { issuer }
    }

    /// The CA certificate in PEM (a `--client-ca` bundle).
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// The CA certificate in DER (a client's trust anchor).
    pub fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// A server certificate for `names` (CN = first name), valid until 2049.
    pub fn server(&self, names: &[&str]) -> Leaf {
        self.leaf(names, 1, (2049, 1, 1), ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A server certificate for `names` with a key of `alg` (`server`:
    /// ECDSA P-256), valid until 2049.
    pub fn server_keyed(&self, names: &[&str], alg: &'static rcgen::SignatureAlgorithm) -> Leaf {
        let key = KeyPair::generate_for(alg).unwrap();
        self.leaf_with(
            key,
            names,
            1,
            (2049, 1, 1),
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A server certificate for `names` that expires on `until`.
    pub fn server_until(&self, names: &[&str], until: (i32, u8, u8)) -> Leaf {
        self.leaf(names, 1, until, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate for `cn` with this serial, expiring on `until`.
    pub fn client(&self, cn: &str, serial: u64, until: (i32, u8, u8)) -> Leaf {
        self.leaf(&[cn], serial, until, ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn leaf(
        &self,
        names: &[&str],
        serial: u64,
        until: (i32, u8, u8),
        usage: ExtendedKeyUsagePurpose,
    ) -> Leaf {
        self.leaf_with(KeyPair::generate().unwrap(), names, serial, until, usage)
    }

    fn leaf_with(
        &self,
        key: KeyPair,
        names: &[&str],
        serial: u64,
        (y, m, d): (i32, u8, u8),
        usage: ExtendedKeyUsagePurpose,
    ) -> Leaf {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.serial_number = Some(SerialNumber::from(serial));
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after = date_time_ymd(y, m, d);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            fingerprint: super::fingerprint(cert.der()),
        }
    }

    /// A revocation list (PEM) revoking these serials.
    pub fn crl(&self, revoked: &[u64]) -> String {
        let params = CertificateRevocationListParams {
            this_update: date_time_ymd(2024, 1, 1),
            next_update: date_time_ymd(2049, 1, 1),
            crl_number: SerialNumber::from(revoked.len() as u64 + 1),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|serial| RevokedCertParams {
                    serial_number: SerialNumber::from(*serial),
                    revocation_time: date_time_ymd(2024, 1, 1),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params.signed_by(&self.issuer).unwrap().pem().unwrap()
    }
}

impl Leaf {
    /// Writes `STEM.crt` and `STEM.key` into `dir`, in place.
    pub fn write(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        std::fs::write(&cert, &self.cert_pem).unwrap();
        std::fs::write(&key, &self.key_pem).unwrap();
        (cert, key)
    }

    /// A client config trusting `roots` and presenting this certificate.
    pub fn client_config(&self, roots: &[CertificateDer<'static>]) -> Arc<rustls::ClientConfig> {
        let mut store = rustls::RootCertStore::empty();
        for root in roots {
            store.add(root.clone()).unwrap();
        }
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).unwrap();
        Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(store)
            .with_client_auth_cert(vec![self.der.clone()], key)
            .unwrap(),
        )
    }
}

use rustls::pki_types::pem::PemObject;

/// Replaces `path` the way editors and most tools do: write a temporary
/// file beside it, then rename it into place (one atomic step).
pub fn write_atomic(path: &Path, contents: &str) {
    let staged = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&staged, contents).unwrap();
    std::fs::rename(&staged, path).unwrap();
}

/// Connects with a client that accepts any server certificate, asking for
/// `sni` (`None`: no SNI, as a client connecting by IP address), and
/// returns the leaf the server presented, or the handshake error.
pub async fn presented(
    addr: std::net::SocketAddr,
    sni: Option<&str>,
) -> std::io::Result<CertificateDer<'static>> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(super::any_cert_verifier())
        .with_no_client_auth();
    let name = match sni {
        Some(name) => ServerName::try_from(name.to_string()).unwrap(),
        None => {
            // rustls sends no SNI for an IP address.
            config.enable_sni = false;
            ServerName::try_from("127.0.0.1").unwrap()
        }
    };
    let tcp = TcpStream::connect(addr).await?;
    let tls: TlsStream<TcpStream> = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    let (_, conn) = tls.get_ref();
    Ok(conn.peer_certificates().unwrap()[0].clone().into_owned())
}
