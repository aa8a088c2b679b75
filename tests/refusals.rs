//! What the log says of a client that will not or cannot talk to us: one
//! that refuses our certificate (with an alert, or by closing as Node.js
//! and Python's asyncio do), one that leaves before it was sent, one too
//! old for TLS 1.2. Real rustls clients (driven by hand where a real client
//! closes without the alert rustls would send) against the real binary.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rustls::pki_types::ServerName;
use rustls::{CertificateError, ClientConfig, ClientConnection, SupportedProtocolVersion};

/// The words every line about a refused certificate starts with.
const UNTRUSTED: &str = "handshake failed: the client does not trust our certificate";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A client of exactly this TLS version that refuses our certificate with `error`.
fn refusing_client(
    version: &'static SupportedProtocolVersion,
    error: CertificateError,
) -> Arc<ClientConfig> {
    Arc::new(
        ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[version])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(refusing_verifier(error))
            .with_no_client_auth(),
    )
}

const VERSIONS: [(&str, &SupportedProtocolVersion); 2] = [
    ("TLS 1.2", &rustls::version::TLS12),
    ("TLS 1.3", &rustls::version::TLS13),
];

/// How a client leaves without an alert.
#[derive(Clone, Copy, Debug)]
enum Leave {
    /// FIN: what Node.js and Python's asyncio do.
    Close,
    /// RST.
    Reset,
}

fn leave(tcp: std::net::TcpStream, how: Leave) {
    match how {
        Leave::Close => tcp.shutdown(std::net::Shutdown::Both).unwrap(),
        Leave::Reset => socket2::SockRef::from(&tcp)
            .set_linger(Some(Duration::ZERO))
            .unwrap(),
    }
    drop(tcp);
}

/// Sends the client's hello, then feeds it our answers until `done` says
/// it has seen enough; returns the socket (nothing more is sent).
fn hello_then_read(
    addr: SocketAddr,
    conn: &mut ClientConnection,
    done: impl Fn(&ClientConnection, bool) -> bool,
) -> std::net::TcpStream {
    let mut tcp = blocking_tcp(addr);
    tcp.write_all(&drain_tls(conn)).unwrap();
    loop {
        let n = conn.read_tls(&mut tcp).unwrap();
        assert!(n > 0, "wssify closed before the client was done");
        let failed = conn.process_new_packets().is_err();
        if done(conn, failed) {
            return tcp;
        }
    }
}

/// The end line of the connection from this client port.
async fn line_for(w: &mut Wssify, port: u16) -> String {
    let peer = format!("peer=127.0.0.1:{port} ");
    w.wait_for_log_matching(|l| l.contains(&peer) && l.contains(" end=\""))
        .await
        .unwrap_or_else(|| panic!("no end line for {peer}; log:\n{}", w.log()))
}

#[tokio::test]
async fn a_client_refusing_our_certificate_with_an_alert_is_said_not_to_trust_it() {
    bounded(WAIT * 2, async {
        let backend = echo_backend().await;
        let mut w = Wssify::start(&["--to", &backend.to_string()]).await;
        // What each alert is sent by: OpenSSL (curl, Python, openssl
        // s_client) and Firefox for an unknown CA; Go, Firefox and Python
        // for a wrong name; Chrome and Java; any client for a date.
        let cases = [
            (CertificateError::UnknownIssuer, "it sent unknown_ca:"),
            (
                CertificateError::NotValidForName,
                "it sent bad_certificate:",
            ),
            (
                CertificateError::Other(rustls::OtherError(Arc::new(std::fmt::Error))),
                "it sent certificate_unknown:",
            ),
            (CertificateError::Expired, "it sent certificate_expired:"),
        ];
        for (name, version) in VERSIONS {
            for (error, alert) in cases.clone() {
                let tcp = tokio::net::TcpStream::connect(w.addr).await.unwrap();
                let port = tcp.local_addr().unwrap().port();
                let connector = tokio_rustls::TlsConnector::from(refusing_client(version, error));
                let refused = connector
                    .connect(ServerName::try_from("localhost").unwrap(), tcp)
                    .await;
                assert!(refused.is_err(), "{name}: the client refused");
                let line = line_for(&mut w, port).await;
                assert!(
                    line.contains(UNTRUSTED) && line.contains(alert),
                    "{name}, {alert}: {line}"
                );
                assert!(line.contains("--cert/--key"), "{line}");
            }
        }
    })
    .await;
}

#[tokio::test]
async fn a_client_closing_after_our_certificate_without_an_alert_most_likely_does_not_trust_it() {
    bounded(WAIT * 2, async {
        let backend = echo_backend().await;
        let mut w = Wssify::start(&["--to", &backend.to_string()]).await;
        for (name, version) in VERSIONS {
            for how in [Leave::Close, Leave::Reset] {
                let mut conn = ClientConnection::new(
                    refusing_client(version, CertificateError::UnknownIssuer),
                    ServerName::try_from("localhost").unwrap(),
                )
                .unwrap();
                // Our flight is read until the client has judged the
                // certificate; the alert rustls queued is never sent.
                let tcp = hello_then_read(w.addr, &mut conn, |_, failed| failed);
                let port = tcp.local_addr().unwrap().port();
                leave(tcp, how);
                let line = line_for(&mut w, port).await;
                assert!(
                    line.contains(
                        "handshake failed: client closed the connection after our certificate, without an alert: most likely it does not trust it"
                    ),
                    "{name}, {how:?}: {line}"
                );
            }
        }
    })
    .await;
}

#[tokio::test]
async fn a_client_leaving_before_our_certificate_is_not_said_to_distrust_it() {
    bounded(WAIT * 2, async {
        let backend = echo_backend().await;
        let mut w = Wssify::start(&["--to", &backend.to_string()]).await;
        let before = "handshake failed: client closed the connection during the handshake, before our certificate was sent";

        // Half a hello, then FIN or RST.
        for how in [Leave::Close, Leave::Reset] {
            let mut conn = ClientConnection::new(
                trusting_client(&[]),
                ServerName::try_from("localhost").unwrap(),
            )
            .unwrap();
            let hello = drain_tls(&mut conn);
            let mut tcp = blocking_tcp(w.addr);
            let port = tcp.local_addr().unwrap().port();
            tcp.write_all(&hello[..hello.len() / 2]).unwrap();
            leave(tcp, how);
            let line = line_for(&mut w, port).await;
            assert!(line.contains(before), "{how:?}: {line}");
        }

        // A HelloRetryRequest carries no certificate: the client offers a
        // key share only for a group wssify does not serve (ML-KEM alone),
        // reads the request for another, and closes.
        let mut kx = rustls::crypto::aws_lc_rs::default_provider();
        kx.kx_groups = vec![
            rustls::crypto::aws_lc_rs::kx_group::MLKEM768,
            rustls::crypto::aws_lc_rs::kx_group::X25519,
        ];
        let offer = ClientConfig::builder_with_provider(Arc::new(kx))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let mut conn =
            ClientConnection::new(Arc::new(offer), ServerName::try_from("localhost").unwrap())
                .unwrap();
        let tcp = hello_then_read(w.addr, &mut conn, |conn, failed| {
            assert!(!failed, "a retry request is no failure");
            conn.handshake_kind() == Some(rustls::HandshakeKind::FullWithHelloRetryRequest)
        });
        let port = tcp.local_addr().unwrap().port();
        leave(tcp, Leave::Close);
        let line = line_for(&mut w, port).await;
        assert!(line.contains(before), "after a retry request: {line}");
    })
    .await;
}

#[tokio::test]
async fn a_client_leaving_after_the_handshake_without_a_byte_is_told_apart() {
    bounded(WAIT, async {
        let backend = echo_backend().await;
        let mut w = Wssify::start(&["--to", &backend.to_string()]).await;
        // Node.js over TLS 1.2, or curl for a name the certificate lacks:
        // the handshake completes, then the client checks and leaves.
        let tls = dev_connect(&mut w).await;
        let (tcp, _) = tls.into_inner();
        let port = tcp.local_addr().unwrap().port();
        drop(tcp);
        let line = line_for(&mut w, port).await;
        assert!(
            line.contains(
                "to_backend=0B to_client=0B duration="
            ) && line.contains(
                "end=\"client closed after the handshake without sending anything: a TLS health check, or a client that checks our certificate only after the handshake and does not trust it"
            ),
            "{line}"
        );

        // One that sent something ended as usual.
        let mut tls = dev_connect(&mut w).await;
        let port = tls.get_ref().0.local_addr().unwrap().port();
        tokio::io::AsyncWriteExt::write_all(&mut tls, b"hi").await.unwrap();
        let mut back = [0u8; 2];
        tokio::io::AsyncReadExt::read_exact(&mut tls, &mut back)
            .await
            .unwrap();
        drop(tls);
        let line = line_for(&mut w, port).await;
        assert!(line.contains("end=\"client closed"), "{line}");
        assert!(!line.contains("without sending anything"), "{line}");
    })
    .await;
}

/// A ClientHello as a client that speaks at most `version` (0x0301 for
/// TLS 1.0, 0x0302 for 1.1) sends it, as OpenSSL's `-tls1_1` does: no
/// supported_versions and no signature_algorithms (both came later).
fn old_client_hello(version: u16) -> Vec<u8> {
    fn extension(out: &mut Vec<u8>, kind: u16, body: &[u8]) {
        out.extend_from_slice(&kind.to_be_bytes());
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(body);
    }
    let mut hello = Vec::new();
    hello.extend_from_slice(&version.to_be_bytes());
    hello.extend_from_slice(&[0x42; 32]); // random
    hello.push(0); // no session id
    // ECDHE-ECDSA and ECDHE-RSA with AES-CBC-SHA, RSA with AES-CBC-SHA.
    let suites: [u16; 5] = [0xc00a, 0xc014, 0xc009, 0xc013, 0x002f];
    hello.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
    for suite in suites {
        hello.extend_from_slice(&suite.to_be_bytes());
    }
    hello.extend_from_slice(&[1, 0]); // null compression
    let mut extensions = Vec::new();
    let name = b"localhost";
    let mut sni = Vec::new();
    sni.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
    sni.push(0); // host_name
    sni.extend_from_slice(&(name.len() as u16).to_be_bytes());
    sni.extend_from_slice(name);
    extension(&mut extensions, 0x0000, &sni);
    extension(&mut extensions, 0x000b, &[1, 0]); // ec_point_formats: uncompressed
    extension(&mut extensions, 0x000a, &[0, 4, 0x00, 0x1d, 0x00, 0x17]); // x25519, P-256
    extension(&mut extensions, 0x0023, &[]); // session_ticket
    hello.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
    hello.extend_from_slice(&extensions);

    let mut message = vec![1]; // client_hello
    message.extend_from_slice(&(hello.len() as u32).to_be_bytes()[1..]);
    message.extend_from_slice(&hello);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(message.len() as u16).to_be_bytes());
    record.extend_from_slice(&message);
    record
}

#[tokio::test]
async fn tls_1_0_and_1_1_clients_are_told_their_version_is_too_old() {
    bounded(WAIT * 2, async {
        let backend = echo_backend().await;
        for tls_min in ["1.2", "1.3"] {
            let mut w =
                Wssify::start(&["--to", &backend.to_string(), "--tls-min", tls_min]).await;
            for version in [0x0301u16, 0x0302] {
                let mut tcp = blocking_tcp(w.addr);
                let port = tcp.local_addr().unwrap().port();
                tcp.write_all(&old_client_hello(version)).unwrap();
                // The client hears protocol_version, in a record of its version.
                let mut answer = Vec::new();
                tcp.read_to_end(&mut answer).unwrap();
                let [major, minor] = version.to_be_bytes();
                assert_eq!(
                    answer,
                    [0x15, major, minor, 0x00, 0x02, 0x02, 70],
                    "--tls-min {tls_min}, client {version:#06x}: a fatal protocol_version alert"
                );
                let line = line_for(&mut w, port).await;
                assert!(
                    line.contains(
                        "end=\"handshake failed: the client supports only TLS 1.0/1.1, too old; wssify needs TLS 1.2 or newer\""
                    ),
                    "--tls-min {tls_min}: {line}"
                );
                assert!(!line.contains("--tls-min"), "no flag can help: {line}");
            }
        }
    })
    .await;
}

#[tokio::test]
async fn a_tls_1_2_client_under_tls_min_1_3_is_told_which_flag_accepts_it() {
    bounded(WAIT, async {
        let backend = echo_backend().await;
        let mut w = Wssify::start(&["--to", &backend.to_string(), "--tls-min", "1.3"]).await;
        let fp = w.fingerprint().await;
        let old = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(pinned_verifier(&fp))
            .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(w.addr).await.unwrap();
        let port = tcp.local_addr().unwrap().port();
        let refused = tokio_rustls::TlsConnector::from(Arc::new(old))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await;
        assert!(refused.is_err());
        let line = line_for(&mut w, port).await;
        assert!(
            line.contains(
                "end=\"handshake failed: the client cannot speak our TLS: it offers TLS 1.2 at most, and --tls-min 1.3 refuses it; --tls-min 1.2 accepts it\""
            ),
            "{line}"
        );
    })
    .await;
}
