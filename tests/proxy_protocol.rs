//! `--proxy-protocol v1|v2`: the backend's first bytes are a PROXY protocol
//! header naming the client's address and the one it connected to (IPv4
//! and IPv6), and with v2 the SNI, ALPN, TLS version, cipher, the served
//! certificate's signature and key algorithms and, under mTLS, the client
//! certificate's CN as the specification's TLVs. Read
//! back by an independent parser (`ppp`) from what the real binary sent,
//! and by a real reader, HAProxy (`accept-proxy`), from Debian's package.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use common::ca::Ca;
use common::*;
use ppp::HeaderResult;
use ppp::v2::{self, Addresses as V2Addresses, Command as V2Command};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const SSL: u8 = 0x20;
const ALPN: u8 = 0x01;
const AUTHORITY: u8 = 0x02;
const SSL_VERSION: u8 = 0x21;
const SSL_CN: u8 = 0x22;
const SSL_CIPHER: u8 = 0x23;
const SSL_SIG_ALG: u8 = 0x24;
const SSL_KEY_ALG: u8 = 0x25;

/// A backend that reads each connection's PROXY header (v1: up to the
/// line's end; v2: 16 bytes and the length they give), hands it over, then
/// echoes. The start-time check connection sends nothing and is ignored.
async fn header_backend() -> (SocketAddr, mpsc::UnboundedReceiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                if let Some((header, mut stream)) = read_header(stream).await {
                    let _ = tx.send(header);
                    let (mut r, mut w) = stream.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
            });
        }
    });
    (addr, rx)
}

async fn read_header(mut stream: TcpStream) -> Option<(Vec<u8>, TcpStream)> {
    let mut header = vec![0u8; 1];
    stream.read_exact(&mut header).await.ok()?;
    if header[0] == b'P' {
        while !header.ends_with(b"\r\n") && header.len() < 108 {
            header.push(stream.read_u8().await.ok()?);
        }
    } else {
        header.resize(16, 0);
        stream.read_exact(&mut header[1..]).await.ok()?;
        let length = usize::from(u16::from_be_bytes([header[14], header[15]]));
        let start = header.len();
        header.resize(start + length, 0);
        stream.read_exact(&mut header[start..]).await.ok()?;
    }
    Some((header, stream))
}

/// A client of the development certificate offering `alpn`, limited to
/// TLS 1.2 when `tls12`.
async fn dev_client(w: &mut Wssify, alpn: &[u8], tls12: bool) -> Arc<rustls::ClientConfig> {
    let fp = w.fingerprint().await;
    let mut config = if tls12 {
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(pinned_verifier(&fp))
        .with_no_client_auth()
    } else {
        (*pinned_client(&fp)).clone()
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(config)
}

/// One round trip through wssify: the echo proves the header did not
/// leak into the client's bytes. Returns the header the backend read, the
/// client's own address, and the version and cipher it negotiated.
async fn through(
    w: &Wssify,
    config: Arc<rustls::ClientConfig>,
    headers: &mut mpsc::UnboundedReceiver<Vec<u8>>,
) -> (
    Vec<u8>,
    SocketAddr,
    rustls::ProtocolVersion,
    rustls::CipherSuite,
) {
    let mut tls = tls_connect(w.addr, config, "localhost").await.unwrap();
    let me = tls.get_ref().0.local_addr().unwrap();
    let (_, conn) = tls.get_ref();
    let version = conn.protocol_version().unwrap();
    let suite = conn.negotiated_cipher_suite().unwrap().suite();
    tls.write_all(b"ping").await.unwrap();
    let mut back = [0u8; 4];
    tls.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"ping");
    let header = headers.recv().await.expect("the backend read a header");
    (header, me, version, suite)
}

/// The TLVs of a v2 header, and the SSL TLV split into its client byte,
/// verify word and sub-TLVs, as `ppp` reads them.
struct Tlvs {
    top: Vec<(u8, Vec<u8>)>,
    client: u8,
    verify: u32,
    sub: Vec<(u8, Vec<u8>)>,
}

fn tlvs_of(header: &v2::Header<'_>) -> Tlvs {
    let top: Vec<(u8, Vec<u8>)> = header
        .tlvs()
        .map(|t| t.expect("a well-formed TLV"))
        .map(|t| (t.kind, t.value.to_vec()))
        .collect();
    let ssl = top
        .iter()
        .find(|(kind, _)| *kind == SSL)
        .map(|(_, v)| v.clone())
        .expect("an SSL TLV");
    let sub = v2::TypeLengthValues::from(&ssl[5..])
        .map(|t| t.expect("a well-formed sub-TLV"))
        .map(|t| (t.kind, t.value.to_vec()))
        .collect();
    Tlvs {
        top,
        client: ssl[0],
        verify: u32::from_be_bytes([ssl[1], ssl[2], ssl[3], ssl[4]]),
        sub,
    }
}

fn value(list: &[(u8, Vec<u8>)], kind: u8) -> Option<String> {
    list.iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, v)| String::from_utf8(v.clone()).unwrap())
}

/// The addresses a parsed header carries: (source, destination).
fn v2_addresses(header: &v2::Header<'_>) -> (SocketAddr, SocketAddr) {
    match header.addresses {
        V2Addresses::IPv4(a) => (
            SocketAddr::new(a.source_address.into(), a.source_port),
            SocketAddr::new(a.destination_address.into(), a.destination_port),
        ),
        V2Addresses::IPv6(a) => (
            SocketAddr::new(a.source_address.into(), a.source_port),
            SocketAddr::new(a.destination_address.into(), a.destination_port),
        ),
        other => panic!("addresses {other:?}"),
    }
}

#[tokio::test]
async fn v1_names_ipv4_and_ipv6_clients() {
    bounded(WAIT * 2, async {
        for listen in ["127.0.0.1:0", "[::1]:0"] {
            let (backend, mut headers) = header_backend().await;
            let mut w = Wssify::start_raw(&[
                "--listen",
                listen,
                "--to",
                &backend.to_string(),
                "--proxy-protocol",
                "v1",
            ])
            .await;
            let config = dev_client(&mut w, b"http/1.1", false).await;
            let (header, me, _, _) = through(&w, config, &mut headers).await;
            let family = if me.is_ipv4() { "TCP4" } else { "TCP6" };
            assert_eq!(
                String::from_utf8(header.clone()).unwrap(),
                format!(
                    "PROXY {family} {} {} {} {}\r\n",
                    me.ip(),
                    w.addr.ip(),
                    me.port(),
                    w.addr.port()
                )
            );
            let HeaderResult::V1(Ok(parsed)) = HeaderResult::parse(&header) else {
                panic!("ppp cannot read {header:?}");
            };
            let (source, destination) = match parsed.addresses {
                ppp::v1::Addresses::Tcp4(a) => (
                    SocketAddr::new(a.source_address.into(), a.source_port),
                    SocketAddr::new(a.destination_address.into(), a.destination_port),
                ),
                ppp::v1::Addresses::Tcp6(a) => (
                    SocketAddr::new(a.source_address.into(), a.source_port),
                    SocketAddr::new(a.destination_address.into(), a.destination_port),
                ),
                other => panic!("addresses {other:?}"),
            };
            assert_eq!((source, destination), (me, w.addr), "{listen}");
            let line = w.wait_for_log("listening on").await;
            assert!(line.contains("PROXY protocol v1"), "{line}");
        }
    })
    .await;
}

#[tokio::test]
async fn v2_carries_addresses_sni_alpn_version_and_cipher() {
    bounded(WAIT * 3, async {
        for (listen, tls12) in [
            ("127.0.0.1:0", false),
            ("[::1]:0", false),
            ("127.0.0.1:0", true),
        ] {
            let (backend, mut headers) = header_backend().await;
            let mut w = Wssify::start_raw(&[
                "--listen",
                listen,
                "--to",
                &backend.to_string(),
                "--proxy-protocol",
                "v2",
                "--alpn",
                "http/1.1",
            ])
            .await;
            let config = dev_client(&mut w, b"http/1.1", tls12).await;
            let (header, me, version, suite) = through(&w, config, &mut headers).await;
            let HeaderResult::V2(Ok(parsed)) = HeaderResult::parse(&header) else {
                panic!("ppp cannot read {header:?}");
            };
            assert_eq!(parsed.command, V2Command::Proxy);
            assert_eq!(v2_addresses(&parsed), (me, w.addr), "{listen}");
            let tlvs = tlvs_of(&parsed);
            assert_eq!(value(&tlvs.top, AUTHORITY).as_deref(), Some("localhost"));
            assert_eq!(value(&tlvs.top, ALPN).as_deref(), Some("http/1.1"));
            assert_eq!(tlvs.client, 0x01, "TLS, no client certificate");
            assert_eq!(tlvs.verify, 0);
            let want_version = match version {
                rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
                rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2",
                other => panic!("{other:?}"),
            };
            assert_eq!(tls12, want_version == "TLSv1.2");
            assert_eq!(value(&tlvs.sub, SSL_VERSION).as_deref(), Some(want_version));
            assert_eq!(
                value(&tlvs.sub, SSL_CIPHER).as_deref(),
                wssify::tls::openssl_cipher_name(suite)
            );
            assert_eq!(value(&tlvs.sub, SSL_CN), None);
            // The development certificate: an ECDSA P-256 key, signed
            // with ECDSA and SHA-256.
            assert_eq!(
                value(&tlvs.sub, SSL_SIG_ALG).as_deref(),
                Some("ecdsa-with-SHA256")
            );
            assert_eq!(value(&tlvs.sub, SSL_KEY_ALG).as_deref(), Some("EC256"));
        }
    })
    .await;
}

/// SIG_ALG and KEY_ALG describe the certificate served for the name the
/// client asked for, as HAProxy names them: here an RSA one signed by an
/// RSA CA, and an ECDSA P-384 one signed by an ECDSA P-256 CA.
#[tokio::test]
async fn v2_names_the_algorithms_of_the_certificate_served_for_each_name() {
    bounded(WAIT * 2, async {
        let rsa_ca = Ca::keyed("RSA CA", &rcgen::PKCS_RSA_SHA256);
        let ec_ca = Ca::new("EC CA");
        let dir = tempfile::tempdir().unwrap();
        let (backend, mut headers) = header_backend().await;
        let mut args = vec!["--to".to_string(), backend.to_string()];
        for (stem, leaf) in [
            (
                "rsa",
                rsa_ca.server_keyed(&["rsa.test"], &rcgen::PKCS_RSA_SHA256),
            ),
            (
                "ec",
                ec_ca.server_keyed(&["ec.test"], &rcgen::PKCS_ECDSA_P384_SHA384),
            ),
        ] {
            let (cert, key) = leaf.write(dir.path(), stem);
            args.extend([
                "--cert".into(),
                cert.display().to_string(),
                "--key".into(),
                key.display().to_string(),
            ]);
        }
        args.extend(["--proxy-protocol".into(), "v2".into()]);
        let w = Wssify::start_owned(&args).await;
        let config = trusting_client(&[rsa_ca.der(), ec_ca.der()]);
        // The second round resumes the sessions of the first (the client
        // keeps its tickets): no certificate is sent then, but it is still
        // the one served for the name, and HAProxy names it too.
        for (round, (name, sig_alg, key_alg)) in [
            ("ec.test", "ecdsa-with-SHA256", "EC384"),
            ("rsa.test", "RSA-SHA256", "RSA2048"),
            ("ec.test", "ecdsa-with-SHA256", "EC384"),
            ("rsa.test", "RSA-SHA256", "RSA2048"),
        ]
        .into_iter()
        .enumerate()
        {
            let mut tls = tls_connect(w.addr, config.clone(), name).await.unwrap();
            let kind = tls.get_ref().1.handshake_kind();
            let resumed = kind == Some(rustls::HandshakeKind::Resumed);
            assert_eq!(resumed, round >= 2, "{name}: {kind:?}");
            tls.write_all(b"ping").await.unwrap();
            // Reading the echo reads the session tickets sent before it.
            let mut back = [0u8; 4];
            tls.read_exact(&mut back).await.unwrap();
            let header = headers.recv().await.expect("the backend read a header");
            let HeaderResult::V2(Ok(parsed)) = HeaderResult::parse(&header) else {
                panic!("ppp cannot read {header:?}");
            };
            let tlvs = tlvs_of(&parsed);
            assert_eq!(value(&tlvs.top, AUTHORITY).as_deref(), Some(name));
            assert_eq!(
                value(&tlvs.sub, SSL_SIG_ALG).as_deref(),
                Some(sig_alg),
                "{name}"
            );
            assert_eq!(
                value(&tlvs.sub, SSL_KEY_ALG).as_deref(),
                Some(key_alg),
                "{name}"
            );
        }
    })
    .await;
}

/// A bare port listens on `[::]` for IPv4 too; its IPv4 clients show up
/// as `::ffff:a.b.c.d` there, and are sent as what they are: IPv4.
#[tokio::test]
async fn a_dual_stack_listeners_ipv4_clients_are_sent_as_ipv4() {
    bounded(WAIT * 2, async {
        for version in ["v1", "v2"] {
            let (backend, mut headers) = header_backend().await;
            let mut w = Wssify::start_raw(&[
                "--listen",
                "0",
                "--to",
                &backend.to_string(),
                "--proxy-protocol",
                version,
            ])
            .await;
            assert!(w.addr.is_ipv6(), "a bare port listens on [::]: {}", w.addr);
            w.addr = SocketAddr::from(([127, 0, 0, 1], w.addr.port()));
            let config = dev_client(&mut w, b"http/1.1", false).await;
            let (header, me, _, _) = through(&w, config, &mut headers).await;
            assert!(me.is_ipv4());
            match HeaderResult::parse(&header) {
                HeaderResult::V1(Ok(parsed)) => assert_eq!(
                    parsed.addresses,
                    ppp::v1::Addresses::new_tcp4(
                        [127, 0, 0, 1],
                        [127, 0, 0, 1],
                        me.port(),
                        w.addr.port()
                    )
                ),
                HeaderResult::V2(Ok(parsed)) => {
                    assert!(matches!(parsed.addresses, V2Addresses::IPv4(_)));
                    assert_eq!(v2_addresses(&parsed), (me, w.addr));
                }
                _ => panic!("ppp cannot read {header:?}"),
            }
        }
    })
    .await;
}

#[tokio::test]
async fn v2_carries_the_client_certificates_cn_under_mtls() {
    bounded(WAIT * 2, async {
        let server_ca = Ca::new("server CA");
        let client_ca = Ca::new("client CA");
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("clients.pem");
        std::fs::write(&bundle, client_ca.cert_pem()).unwrap();
        let (cert, key) = server_ca.server(&["localhost"]).write(dir.path(), "server");
        let (backend, mut headers) = header_backend().await;
        let w = Wssify::start_owned(&[
            "--to".into(),
            backend.to_string(),
            "--cert".into(),
            cert.display().to_string(),
            "--key".into(),
            key.display().to_string(),
            "--client-ca".into(),
            bundle.display().to_string(),
            "--proxy-protocol".into(),
            "v2".into(),
        ])
        .await;
        let config = client_ca
            .client("device-7", 7, (2049, 1, 1))
            .client_config(&[server_ca.der()]);
        let (header, me, _, suite) = through(&w, config, &mut headers).await;
        let HeaderResult::V2(Ok(parsed)) = HeaderResult::parse(&header) else {
            panic!("ppp cannot read {header:?}");
        };
        assert_eq!(v2_addresses(&parsed), (me, w.addr));
        let tlvs = tlvs_of(&parsed);
        assert_eq!(
            tlvs.client, 0x07,
            "TLS, certificate on the connection and session"
        );
        assert_eq!(tlvs.verify, 0);
        assert_eq!(value(&tlvs.sub, SSL_CN).as_deref(), Some("device-7"));
        assert_eq!(
            value(&tlvs.sub, SSL_CIPHER).as_deref(),
            wssify::tls::openssl_cipher_name(suite)
        );
        assert_eq!(value(&tlvs.top, ALPN), None, "no ALPN was agreed");
    })
    .await;
}

/// HAProxy in the foreground, killed when dropped.
struct Haproxy {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts HAProxy (from Debian's `haproxy` package) with an HTTP frontend
/// on `port` that takes a PROXY header (`accept-proxy`) and answers every
/// request with what it read there; waits until it accepts connections.
async fn haproxy(port: u16) -> Haproxy {
    let program = debian_package("haproxy", "haproxy");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n  log stderr local0 info\n\
             defaults\n  mode http\n  timeout client 10s\n  timeout connect 5s\n  timeout server 10s\n\
             frontend fe\n  bind 127.0.0.1:{port} accept-proxy\n  \
             http-request return status 200 content-type text/plain lf-string \"src=%[src]:%[src_port] dst=%[dst]:%[dst_port] authority=%[fc_pp_authority]\"\n"
        ),
    )
    .unwrap();
    let child = Command::new(program)
        .arg("-db")
        .arg("-f")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("haproxy starts");
    let haproxy = Haproxy { child, _dir: dir };
    // Ready once it accepts a connection (this one sends nothing).
    loop {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    haproxy
}

#[tokio::test]
async fn haproxy_reads_the_clients_address_and_sni() {
    bounded(WAIT * 3, async {
        for (version, listen) in [
            ("v1", "127.0.0.1:0"),
            ("v2", "[::1]:0"),
            ("v2", "127.0.0.1:0"),
        ] {
            let port = free_port();
            let _haproxy = haproxy(port).await;
            let mut w = Wssify::start_raw(&[
                "--listen",
                listen,
                "--to",
                &format!("127.0.0.1:{port}"),
                "--proxy-protocol",
                version,
            ])
            .await;
            let fp = w.fingerprint().await;
            let mut tls = tls_connect(w.addr, pinned_client(&fp), "localhost")
                .await
                .unwrap();
            let me = tls.get_ref().0.local_addr().unwrap();
            tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let reply = String::from_utf8_lossy(&read_to_end(&mut tls).await.unwrap()).into_owned();
            assert!(
                reply.starts_with("HTTP/1.1 200"),
                "{version} {listen}: {reply}"
            );
            let authority = if version == "v2" { "localhost" } else { "" };
            let want = format!(
                "src={}:{} dst={}:{} authority={authority}",
                me.ip(),
                me.port(),
                w.addr.ip(),
                w.addr.port()
            );
            assert!(
                reply.ends_with(&want),
                "{version} {listen}: HAProxy saw\n{reply}\nwanted {want}"
            );
        }
    })
    .await;
}

#[test]
fn a_wrong_version_is_a_usage_error_naming_the_flag() {
    let (code, out) = run_to_exit(&[
        "--listen",
        "127.0.0.1:0",
        "--to",
        "127.0.0.1:9",
        "--proxy-protocol",
        "v3",
    ]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("--proxy-protocol") && out.contains("v1 or v2"),
        "{out}"
    );
    assert!(!out.contains("panicked"), "{out}");
}

#[test]
fn check_says_the_backend_must_expect_the_header() {
    let (code, out) = run_to_exit(&[
        "--check",
        "--listen",
        "127.0.0.1:0",
        "--to",
        "127.0.0.1:9",
        "--proxy-protocol",
        "v2",
    ]);
    assert!(
        out.contains("--proxy-protocol v2: each connection to the backend starts with a PROXY protocol v2 header"),
        "exit {code}: {out}"
    );
}
