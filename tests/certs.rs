//! Certificates end to end: the development certificates, CA-issued
//! certificates, chains with an intermediate, and every key format the
//! `--key` help promises, each served by the real binary to a real client.

mod common;
use common::ca::ca_params;
use common::*;

use std::path::{Path, PathBuf};

use rcgen::{
    CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair,
    KeyUsagePurpose, SigningKey, date_time_ymd,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

// ---------------------------------------------------------------------------
// PEM and DER by hand
// ---------------------------------------------------------------------------

/// Splits one DER TLV off `input`: (tag, contents, rest).
fn der_tlv(input: &[u8]) -> (u8, &[u8], &[u8]) {
    let tag = input[0];
    let (len, header) = if input[1] < 0x80 {
        (usize::from(input[1]), 2)
    } else {
        let n = usize::from(input[1] & 0x7f);
        let len = input[2..2 + n]
            .iter()
            .fold(0usize, |len, b| (len << 8) | usize::from(*b));
        (len, 2 + n)
    };
    (tag, &input[header..header + len], &input[header + len..])
}

/// The PKCS#1 `RSAPrivateKey` inside a PKCS#8 `PrivateKeyInfo`
/// (SEQUENCE { INTEGER version, SEQUENCE algorithm, OCTET STRING key }).
fn pkcs1_from_pkcs8(pkcs8: &[u8]) -> Vec<u8> {
    const RSA_ENCRYPTION_OID: &[u8] = &[
        0x06, 0x09, 0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x01,
    ];
    let (tag, info, _) = der_tlv(pkcs8);
    assert_eq!(tag, 0x30, "PrivateKeyInfo is a SEQUENCE");
    let (tag, version, rest) = der_tlv(info);
    assert_eq!((tag, version), (0x02, &[0u8][..]), "PKCS#8 v1 version");
    let (tag, algorithm, rest) = der_tlv(rest);
    assert_eq!(tag, 0x30, "AlgorithmIdentifier is a SEQUENCE");
    assert!(
        algorithm.starts_with(RSA_ENCRYPTION_OID),
        "the PKCS#8 key is rsaEncryption"
    );
    let (tag, key, _) = der_tlv(rest);
    assert_eq!(tag, 0x04, "privateKey is an OCTET STRING");
    assert_eq!(key[0], 0x30, "RSAPrivateKey is a SEQUENCE");
    key.to_vec()
}

#[test]
fn pem_helpers_match_known_answers() {
    assert_eq!(base64(b""), "");
    assert_eq!(base64(b"f"), "Zg==");
    assert_eq!(base64(b"fo"), "Zm8=");
    assert_eq!(base64(b"foo"), "Zm9v");
    assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    // rcgen's own PEM of the same key must equal ours.
    let key = KeyPair::generate().unwrap();
    assert_eq!(
        pem("PRIVATE KEY", &key.serialize_der()).replace("\r\n", "\n"),
        key.serialize_pem().replace("\r\n", "\n")
    );
}

// ---------------------------------------------------------------------------
// A test PKI
// ---------------------------------------------------------------------------

/// The leaf's subject CN and last valid day, as the startup line shows them.
const LEAF_CN: &str = "wssify test server";
const LEAF_EXPIRES: (i32, u8, u8) = (2040, 6, 15);
const LEAF_EXPIRES_TEXT: &str = "2040-06-15";

/// A self-signed root CA.
fn root_ca(cn: &str) -> CertifiedIssuer<'static, KeyPair> {
    CertifiedIssuer::self_signed(ca_params(cn), KeyPair::generate().unwrap()).unwrap()
}

/// An intermediate CA signed by `parent`.
fn intermediate_ca(
    cn: &str,
    parent: &Issuer<'_, impl SigningKey>,
) -> CertifiedIssuer<'static, KeyPair> {
    CertifiedIssuer::signed_by(ca_params(cn), KeyPair::generate().unwrap(), parent).unwrap()
}

/// A server certificate for `localhost` and 127.0.0.1 with `key`'s public
/// key, signed by `issuer`.
fn leaf_cert(
    key: &impl SigningKey,
    issuer: &Issuer<'_, impl SigningKey>,
) -> CertificateDer<'static> {
    let mut params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, LEAF_CN);
    params.not_before = date_time_ymd(2020, 1, 1);
    let (y, m, d) = LEAF_EXPIRES;
    params.not_after = date_time_ymd(y, m, d);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.signed_by(key, issuer).unwrap().der().clone()
}

/// Writes `cert.pem` and `key.pem` into `dir` and returns their paths.
fn write_pair(dir: &Path, cert_pem: &str, key_pem: &str) -> (PathBuf, PathBuf) {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, cert_pem).unwrap();
    std::fs::write(&key, key_pem).unwrap();
    (cert, key)
}

// ---------------------------------------------------------------------------
// Client side checks
// ---------------------------------------------------------------------------

/// Sends bytes through wssify to the echo backend and expects them back.
async fn echo_through(tls: &mut TlsStream<TcpStream>) {
    let message = b"bytes through wssify and back";
    tls.write_all(message).await.unwrap();
    let mut back = vec![0u8; message.len()];
    tls.read_exact(&mut back).await.unwrap();
    assert_eq!(&back[..], &message[..]);
}

/// The handshake failed because the client did not accept the certificate.
fn assert_rejected_certificate(result: std::io::Result<TlsStream<TcpStream>>) {
    let err = match result {
        Ok(_) => panic!("the handshake succeeded, but the client must not trust this certificate"),
        Err(err) => err,
    };
    let rustls_err = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .unwrap_or_else(|| panic!("not a rustls error: {err:?}"));
    assert!(
        matches!(rustls_err, rustls::Error::InvalidCertificate(_)),
        "expected a certificate verification failure, got {rustls_err:?}"
    );
}

/// Starts wssify with these files in front of an echo backend, checks the
/// startup line describes the CA-issued leaf, then verifies the certificate
/// as `localhost` trusting only `root` and echoes bytes. Returns the stream.
async fn serve_and_echo(
    cert: &Path,
    key: &Path,
    root: &CertificateDer<'static>,
) -> (Wssify, TlsStream<TcpStream>) {
    let backend = echo_backend().await;
    let mut w = Wssify::start(&[
        "--to",
        &backend.to_string(),
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ])
    .await;
    let line = w.wait_for_log("listening on ").await;
    assert!(
        line.contains(&format!(
            "certificate: {LEAF_CN} (expires {LEAF_EXPIRES_TEXT}"
        )),
        "the startup line names the subject and expiry: {line}"
    );
    assert!(!line.contains("self-signed"), "{line}");
    assert!(
        w.lines_with("development").is_empty(),
        "no development warning with a real certificate:\n{}",
        w.log()
    );
    let mut tls = tls_connect(
        w.addr,
        trusting_client(std::slice::from_ref(root)),
        "localhost",
    )
    .await
    .unwrap_or_else(|e| panic!("handshake trusting the test CA failed: {e}\n{}", w.log()));
    echo_through(&mut tls).await;
    (w, tls)
}

// ---------------------------------------------------------------------------
// 1. The development certificate
// ---------------------------------------------------------------------------

#[tokio::test]
async fn default_certificate_is_signed_by_the_development_ca_and_for_development_only() {
    bounded(WAIT, async {
        let backend = echo_backend().await;
        let mut w = Wssify::start(&["--to", &backend.to_string()]).await;

        let warning = w.wait_for_log("For development only").await;
        assert!(warning.contains("WARN"), "{warning}");
        assert!(warning.contains("signed by the development CA"), "{warning}");
        let line = w.wait_for_log("listening on ").await;
        assert!(
            line.contains("certificate: development certificate for localhost, 127.0.0.1, ::1, signed by the development CA"),
            "{line}"
        );

        // Trusting nothing, or an unrelated CA, the certificate is refused.
        assert_rejected_certificate(tls_connect(w.addr, trusting_client(&[]), "localhost").await);
        let unrelated = root_ca("unrelated test CA");
        assert_rejected_certificate(
            tls_connect(
                w.addr,
                trusting_client(&[unrelated.der().clone()]),
                "localhost",
            )
            .await,
        );

        // Trusting the development CA, it is accepted and bytes flow.
        let ca = CertificateDer::from_pem_file(w.dev_ca_dir().join("ca.pem")).unwrap();
        let mut tls = tls_connect(w.addr, trusting_client(std::slice::from_ref(&ca)), "localhost")
            .await
            .expect("handshake trusting the development CA");
        echo_through(&mut tls).await;

        // The served certificate's fingerprint is still logged (at debug),
        // and pinning it works too.
        let fp = w.fingerprint().await;
        assert_eq!(fp.len(), 32 * 3 - 1, "SHA-256 as AB:CD:..: {fp}");
        let mut tls = tls_connect(w.addr, pinned_client(&fp), "localhost")
            .await
            .expect("pinned handshake");
        let served = tls.get_ref().1.peer_certificates().unwrap();
        assert_eq!(served.len(), 2, "the certificate, then the development CA");
        assert_eq!(fingerprint(&served[0]), fp);
        assert_eq!(served[1], ca);
        echo_through(&mut tls).await;
    })
    .await;
}

#[tokio::test]
async fn self_signed_certificate_is_untrusted_but_pinnable_and_for_development_only() {
    bounded(WAIT, async {
        let backend = echo_backend().await;
        let mut w = Wssify::start(&["--to", &backend.to_string(), "--self-signed"]).await;

        let warning = w.wait_for_log("For development only").await;
        assert!(warning.contains("WARN"), "{warning}");
        assert!(warning.contains("self-signed"), "{warning}");
        let line = w.wait_for_log("listening on ").await;
        assert!(
            line.contains("certificate: self-signed for localhost, 127.0.0.1, ::1"),
            "{line}"
        );
        assert_rejected_certificate(tls_connect(w.addr, trusting_client(&[]), "localhost").await);

        // Pinning the logged fingerprint, it is accepted and bytes flow.
        let fp = w.fingerprint().await;
        let warning = w.wait_for_log("fingerprint: ").await;
        assert!(
            warning.contains("WARN"),
            "at start, for all to see: {warning}"
        );
        let mut tls = tls_connect(w.addr, pinned_client(&fp), "localhost")
            .await
            .expect("pinned handshake");
        let served = tls.get_ref().1.peer_certificates().unwrap();
        assert_eq!(served.len(), 1);
        assert_eq!(fingerprint(&served[0]), fp);
        echo_through(&mut tls).await;
    })
    .await;
}

// ---------------------------------------------------------------------------
// 2. A CA-issued certificate
// ---------------------------------------------------------------------------

#[tokio::test]
async fn ca_issued_certificate_verifies_as_localhost_and_is_described_at_startup() {
    bounded(WAIT, async {
        let dir = tempfile::tempdir().unwrap();
        let ca = root_ca("wssify test CA");
        let key = KeyPair::generate().unwrap();
        let leaf = leaf_cert(&key, &ca);
        let (cert_path, key_path) =
            write_pair(dir.path(), &pem("CERTIFICATE", &leaf), &key.serialize_pem());

        let (mut w, tls) = serve_and_echo(&cert_path, &key_path, ca.der()).await;
        let served = tls.get_ref().1.peer_certificates().unwrap();
        assert_eq!(
            served,
            &[leaf.clone()][..],
            "the leaf from --cert is served"
        );
        let line = w.wait_for_log("listening on ").await;
        assert!(!line.contains("certificates in chain"), "{line}");

        // Verification really checks the name: another name is refused.
        assert_rejected_certificate(
            tls_connect(
                w.addr,
                trusting_client(&[ca.der().clone()]),
                "not-this-server.example",
            )
            .await,
        );
        // ...and the issuer: a different CA is refused.
        let other = root_ca("another test CA");
        assert_rejected_certificate(
            tls_connect(w.addr, trusting_client(&[other.der().clone()]), "localhost").await,
        );
    })
    .await;
}

// ---------------------------------------------------------------------------
// 3. A chain with an intermediate
// ---------------------------------------------------------------------------

#[tokio::test]
async fn chain_with_intermediate_is_sent_whole_and_verifies_against_the_root() {
    bounded(WAIT, async {
        let dir = tempfile::tempdir().unwrap();
        let root = root_ca("wssify test root");
        let intermediate = intermediate_ca("wssify test intermediate", &root);
        let key = KeyPair::generate().unwrap();
        let leaf = leaf_cert(&key, &intermediate);
        let chain_pem = pem("CERTIFICATE", &leaf) + &pem("CERTIFICATE", intermediate.der());
        let (cert_path, key_path) = write_pair(dir.path(), &chain_pem, &key.serialize_pem());

        let (mut w, tls) = serve_and_echo(&cert_path, &key_path, root.der()).await;
        let served = tls.get_ref().1.peer_certificates().unwrap();
        assert_eq!(served.len(), 2, "leaf and intermediate are sent");
        assert_eq!(served[0], leaf);
        assert_eq!(&served[1], intermediate.der());
        let line = w.wait_for_log("listening on ").await;
        assert!(line.contains("2 certificates in chain"), "{line}");
        assert!(w.lines_with("only the leaf").is_empty(), "{}", w.log());
    })
    .await;
}

#[tokio::test]
async fn leaf_without_its_intermediate_does_not_verify_against_the_root() {
    // The control for the test above: without the intermediate in --cert,
    // a client trusting only the root cannot build the chain.
    bounded(WAIT, async {
        let dir = tempfile::tempdir().unwrap();
        let root = root_ca("wssify test root");
        let intermediate = intermediate_ca("wssify test intermediate", &root);
        let key = KeyPair::generate().unwrap();
        let leaf = leaf_cert(&key, &intermediate);
        let (cert_path, key_path) =
            write_pair(dir.path(), &pem("CERTIFICATE", &leaf), &key.serialize_pem());
        let backend = echo_backend().await;
        let mut w = Wssify::start(&[
            "--to",
            &backend.to_string(),
            "--cert",
            cert_path.to_str().unwrap(),
            "--key",
            key_path.to_str().unwrap(),
        ])
        .await;
        // It still serves, but says why clients may refuse it, and how to fix it.
        let warning = w.wait_for_log("the chain has only the leaf").await;
        assert!(warning.contains("WARN"), "{warning}");
        assert!(
            warning.contains(&format!(
                "--cert {}: the chain has only the leaf; use the full chain (e.g. fullchain.pem, not cert.pem)",
                cert_path.display()
            )),
            "{warning}"
        );
        assert_rejected_certificate(
            tls_connect(w.addr, trusting_client(&[root.der().clone()]), "localhost").await,
        );
    })
    .await;
}

// ---------------------------------------------------------------------------
// 4. Every key format
// ---------------------------------------------------------------------------

/// Issues a leaf for `signing_key` from a fresh CA, writes it with
/// `key_pem`, and serves it end to end.
async fn key_format_serves(signing_key: &KeyPair, key_pem: &str, label: &str) {
    assert!(
        key_pem.starts_with(&format!("-----BEGIN {label}-----")),
        "the key file is {label}: {key_pem}"
    );
    let dir = tempfile::tempdir().unwrap();
    let ca = root_ca("wssify key format CA");
    let leaf = leaf_cert(signing_key, &ca);
    let (cert_path, key_path) = write_pair(dir.path(), &pem("CERTIFICATE", &leaf), key_pem);
    let (_w, tls) = serve_and_echo(&cert_path, &key_path, ca.der()).await;
    assert_eq!(tls.get_ref().1.peer_certificates().unwrap()[0], leaf);
}

#[tokio::test]
async fn pkcs8_ecdsa_key_loads_and_serves() {
    bounded(WAIT, async {
        let key = KeyPair::generate().unwrap();
        key_format_serves(&key, &key.serialize_pem(), "PRIVATE KEY").await;
    })
    .await;
}

#[tokio::test]
async fn pkcs8_ed25519_key_loads_and_serves() {
    bounded(WAIT, async {
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        key_format_serves(&key, &key.serialize_pem(), "PRIVATE KEY").await;
    })
    .await;
}

#[tokio::test]
async fn pkcs1_rsa_key_loads_and_serves() {
    bounded(WAIT, async {
        let key = KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
        let pkcs1 = pkcs1_from_pkcs8(&key.serialize_der());
        key_format_serves(&key, &pem("RSA PRIVATE KEY", &pkcs1), "RSA PRIVATE KEY").await;
    })
    .await;
}

#[tokio::test]
async fn sec1_ec_key_loads_and_serves() {
    use aws_lc_rs::encoding::{AsDer, EcPrivateKeyRfc5915Der};
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};

    bounded(WAIT, async {
        let ec = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING).unwrap();
        let sec1: EcPrivateKeyRfc5915Der<'static> = ec.private_key().as_der().unwrap();
        let pkcs8 = ec.to_pkcs8v1().unwrap();
        // rcgen signs the certificate with the same key, read from PKCS#8.
        let key = KeyPair::try_from(pkcs8.as_ref()).unwrap();
        key_format_serves(
            &key,
            &pem("EC PRIVATE KEY", sec1.as_ref()),
            "EC PRIVATE KEY",
        )
        .await;
    })
    .await;
}

// ---------------------------------------------------------------------------
// A key that does not match fails at startup
// ---------------------------------------------------------------------------

#[test]
fn mismatched_key_fails_at_startup_instead_of_serving() {
    let dir = tempfile::tempdir().unwrap();
    let ca = root_ca("wssify test CA");
    let key = KeyPair::generate().unwrap();
    let other = KeyPair::generate().unwrap();
    let leaf = leaf_cert(&key, &ca);
    let (cert_path, key_path) = write_pair(
        dir.path(),
        &pem("CERTIFICATE", &leaf),
        &other.serialize_pem(),
    );
    let (code, out) = run_to_exit(&[
        "--listen",
        "127.0.0.1:0",
        "--to",
        "127.0.0.1:9",
        "--cert",
        cert_path.to_str().unwrap(),
        "--key",
        key_path.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("does not match the certificate"), "{out}");
    assert!(!out.contains("listening on"), "it must not serve: {out}");
    assert!(!out.contains("panicked"), "{out}");
}

// ---------------------------------------------------------------------------
// A Kubernetes cert-manager secret as a --cert-dir
// ---------------------------------------------------------------------------

/// cert-manager's secret holds `tls.crt`, `tls.key` and the issuing CA's
/// `ca.crt`, which has no key. Mounted as a `--cert-dir`, it must start,
/// serve `tls.crt`, and say once (not on every reload) that `ca.crt` is
/// ignored.
#[tokio::test]
async fn a_cert_manager_secret_serves_tls_crt_and_warns_once_about_ca_crt() {
    bounded(WAIT * 2, async {
        let ca = common::ca::Ca::new("cert-manager CA");
        let leaf = ca.server(&["localhost"]);
        let dir = tempfile::tempdir().unwrap();
        leaf.write(dir.path(), "tls");
        std::fs::write(dir.path().join("ca.crt"), ca.cert_pem()).unwrap();
        let backend = echo_backend().await;
        let mut w = Wssify::start(&[
            "--to",
            &backend.to_string(),
            "--cert-dir",
            dir.path().to_str().unwrap(),
        ])
        .await;
        let line = w.wait_for_log("listening on ").await;
        assert!(line.contains("certificate: localhost (expires"), "{line}");

        let mut tls = tls_connect(w.addr, trusting_client(&[ca.der()]), "localhost")
            .await
            .unwrap_or_else(|e| panic!("handshake trusting the CA failed: {e}\n{}", w.log()));
        let presented = tls.get_ref().1.peer_certificates().map(|c| c[0].clone());
        assert_eq!(presented, Some(leaf.der.clone()), "tls.crt is served");
        echo_through(&mut tls).await;

        let warned = |w: &Wssify| w.lines_with("ca.crt");
        let lines = warned(&w);
        assert_eq!(lines.len(), 1, "one line names ca.crt:\n{}", w.log());
        assert!(lines[0].contains(" WARN "), "a warning: {}", lines[0]);
        assert!(
            lines[0].contains(&format!(
                "--cert-dir {}: ca.crt has no ca.key beside it: ignored (a CA bundle?",
                dir.path().display()
            )),
            "{}",
            lines[0]
        );

        // A reload (another certificate added, in one file) re-reads the
        // directory without repeating the warning.
        let other = ca.server(&["other.test"]);
        common::ca::write_atomic(
            &dir.path().join("other.pem"),
            &format!("{}{}", other.cert_pem, other.key_pem),
        );
        w.wait_for_log("added other").await;
        assert_eq!(warned(&w).len(), 1, "warned once:\n{}", w.log());
    })
    .await;
}
