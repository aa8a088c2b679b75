//! Fuzz harnesses: peer bytes fed to the code that parses them, over real
//! loopback sockets, as a client would send them.
//!
//! They live in the library (hidden from the docs) so that the cargo-fuzz
//! targets under `fuzz/` and the stable test `tests/fuzz_corpus.rs` run the
//! very same code: every input the fuzzer kept, or that once failed, is
//! re-checked by plain `cargo test` without a nightly toolchain.
//!
//! Each harness panics only when a property fails (a panic inside wssify,
//! a hang, more plaintext than was sent) or when its own setup is
//! impossible; whatever the server answers is otherwise fine.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::time::{Instant, timeout, timeout_at};

use crate::budget::Budget;
use crate::settings::{CertSettings, DevCert, TlsMin};
use crate::sniff::{self, FirstBytes};
use crate::tls::{self, TlsOptions};
use crate::tls_stream::TlsStream;

/// How long the server side may wait for anything. The client has sent
/// FIN long before, so a server still waiting then is stuck: a finding.
const SERVER_DEADLINE: Duration = Duration::from_secs(5);
/// Bound on one input, client and server together; passing it is a hang.
const INPUT_LIMIT: Duration = Duration::from_secs(10);

/// What every input reuses, built once per process: the fuzzer runs
/// thousands of inputs a second, so only the connection is new each time.
struct Fixture {
    runtime: Runtime,
    listener: TcpListener,
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    /// One input at a time: the listener is shared, and test threads may
    /// call in parallel.
    one_at_a_time: Mutex<()>,
}

/// The process's [`Fixture`], built on first use.
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("fuzz harness: cannot build a tokio runtime");
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("fuzz harness: cannot listen on 127.0.0.1");
        // The served configuration exactly as `Server::bind` makes it with
        // no --cert: the in-memory development certificate, TLS 1.2 and 1.3.
        let certs = CertSettings {
            reload_interval: None,
            dev: DevCert::InMemory,
            ..CertSettings::default()
        };
        let options = TlsOptions {
            provider: tls::provider(),
            tls_min: TlsMin::V1_2,
            alpn: Vec::new(),
        };
        let (_loader, server) = crate::loader::Loader::start(&certs, options)
            .expect("fuzz harness: cannot build the development TLS configuration");
        let mut client = ClientConfig::builder_with_provider(tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("fuzz harness: cannot configure a TLS 1.3 client")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(tls::provider())))
            .with_no_client_auth();
        // Every input gets the same full handshake, never a resumption.
        client.resumption = rustls::client::Resumption::disabled();
        Fixture {
            runtime,
            listener,
            server,
            client: Arc::new(client),
            one_at_a_time: Mutex::new(()),
        }
    })
}

impl Fixture {
    /// Runs one input: `client` and `server` concurrently, within
    /// [`INPUT_LIMIT`]. The server gets the accepted connection.
    fn run<C, S, T>(&self, client: C, server: impl FnOnce(TcpStream) -> S) -> T
    where
        C: Future<Output = ()>,
        S: Future<Output = T>,
    {
        let _turn: MutexGuard<'_, ()> = self
            .one_at_a_time
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.runtime.block_on(async {
            let accepted = async {
                let (tcp, _) = self
                    .listener
                    .accept()
                    .await
                    .expect("fuzz harness: accept failed");
                server(tcp).await
            };
            let both = async { tokio::join!(client, accepted).1 };
            timeout(INPUT_LIMIT, both)
                .await
                .expect("an input did not finish within its time bound (hang)")
        })
    }

    /// The client's side of a new connection to the shared listener.
    async fn connect(&self) -> TcpStream {
        let addr = self
            .listener
            .local_addr()
            .expect("fuzz harness: listener has no address");
        TcpStream::connect(addr)
            .await
            .expect("fuzz harness: cannot connect over loopback")
    }
}

/// The first bytes of a connection: a client sends `data` then FIN, and the
/// server does what `connection::handshake_here` does with them (classify; answer
/// plain HTTP; start a TLS handshake).
/// Property: no panic, and the server finishes without needing a timeout.
pub fn first_bytes(data: &[u8]) {
    let fixture = fixture();
    let client = async {
        let mut tcp = fixture.connect().await;
        // The server may close early (not TLS, bad hello): errors are fine.
        let _ = tcp.write_all(data).await;
        let _ = tcp.shutdown().await;
        let _ = tcp.read_to_end(&mut Vec::new()).await;
    };
    fixture.run(client, |tcp| async move {
        let mut tcp = crate::socket::Socket::from(tcp);
        let deadline = Instant::now() + SERVER_DEADLINE;
        let prefix = match sniff::classify(&mut tcp, deadline).await {
            Ok(Some(FirstBytes::Tls)) => Vec::new(),
            // Neither TLS nor HTTP: rustls gets the bytes read so far and
            // answers them with its own alert, as `connection::handshake_here` does.
            Ok(Some(FirstBytes::NotTls(head))) => head.bytes().to_vec(),
            Ok(Some(FirstBytes::PlainHttp)) => {
                let _ = sniff::answer_plain_http(&mut tcp).await;
                return;
            }
            Ok(Some(FirstBytes::Nothing)) | Err(_) => return,
            Ok(None) => panic!("classify still waiting after the client's FIN"),
        };
        let accept = TlsStream::accept_with_prefix(
            tcp,
            fixture.server.clone(),
            &prefix,
            // Small enough that reads past the first chunks go through the
            // budget's grants.
            Arc::new(Budget::new(1 << 20)),
        );
        match timeout_at(deadline, accept).await {
            Err(_) => panic!("TLS handshake still waiting after the client's FIN"),
            Ok(Err(mut refused)) => sniff::linger(&mut refused.tcp).await,
            Ok(Ok(_)) => {}
        }
    });
}

/// The TLS stream after a real TLS 1.3 handshake: the client then writes
/// `data` raw where records belong (garbage, truncated records, fake
/// alerts) and FIN, while the server writes a little and reads through
/// `TlsStream` until the end. Property: no panic, no hang, and never more
/// plaintext delivered than the client sent (here: none, as nothing the
/// client sends after the handshake is sealed with the session's keys).
pub fn tls_stream(data: &[u8]) {
    let _ = after_handshake(&[Step::Raw(data)]);
}

/// Like [`tls_stream`], but `data` is a script that mixes genuine records
/// sealed by the client's rustls with raw bytes, so the paths that deliver
/// plaintext (records split across reads, larger than the reader's buffer,
/// key updates, close_notify, data after it) run too. Property: what the
/// server delivers is always a prefix of the plaintext the client sealed.
///
/// Each step is a tag byte, then what it needs:
/// - `0x00..=0x3f` (n): the next n bytes, raw;
/// - `0x40..=0x7f` (0x40 + n): the next n bytes, sealed as one record;
/// - `0x80..=0xbf` (0x80 + n): (n + 1) × 512 bytes of a pattern, sealed
///   (up to 32 KiB: two full records);
/// - `0xc0..=0xff`, by its low two bits: close_notify; a key update; a
///   pause, so the server reads what was sent so far; the rest of the
///   input, raw.
pub fn tls_records(data: &[u8]) {
    let _ = after_handshake(&script(data));
}

/// One thing the client does after its handshake.
#[derive(Debug)]
enum Step<'a> {
    /// Bytes written as they are.
    Raw(&'a [u8]),
    /// Plaintext sealed into application-data records.
    Seal(std::borrow::Cow<'a, [u8]>),
    /// A close_notify alert.
    CloseNotify,
    /// A TLS 1.3 KeyUpdate.
    KeyUpdate,
    /// Lets the server run before the next step.
    Pause,
}

/// Sealed plaintext per input at most, so one input stays cheap.
const SEAL_BUDGET: usize = 256 * 1024;

/// Reads [`tls_records`]' input as steps (see there).
fn script(mut data: &[u8]) -> Vec<Step<'_>> {
    let mut steps = Vec::new();
    let mut sealed = 0;
    while let Some((&tag, rest)) = data.split_first() {
        let n = usize::from(tag & 0x3f);
        let (operand, after) = rest.split_at(n.min(rest.len()));
        data = after;
        let step = match tag >> 6 {
            0 => Step::Raw(operand),
            1 => Step::Seal(operand.into()),
            2 => {
                data = rest; // takes no operand
                let pattern = (0..(n + 1) * 512).map(|i| (i % 251) as u8);
                Step::Seal(pattern.collect::<Vec<u8>>().into())
            }
            _ => {
                data = rest; // takes no operand
                match tag & 3 {
                    0 => Step::CloseNotify,
                    1 => Step::KeyUpdate,
                    2 => Step::Pause,
                    _ => {
                        data = &[];
                        Step::Raw(rest)
                    }
                }
            }
        };
        if let Step::Seal(plaintext) = &step {
            sealed += plaintext.len();
            if sealed > SEAL_BUDGET {
                break;
            }
        }
        steps.push(step);
    }
    steps
}

/// Runs `steps` as the client after a real handshake, the server reading
/// through `TlsStream`, and checks what the server delivered (returned for
/// the tests below).
fn after_handshake(steps: &[Step<'_>]) -> Vec<u8> {
    let fixture = fixture();
    let mut sealed = Vec::new();
    let client = async {
        let mut tcp = fixture.connect().await;
        let mut conn = client_handshake(&mut tcp, fixture.client.clone()).await;
        let (mut from_server, mut to_server) = tcp.split();
        let send = async {
            for step in steps {
                // The server may have closed already: errors end nothing.
                let _ = match step {
                    Step::Raw(bytes) => to_server.write_all(bytes).await,
                    Step::Seal(plaintext) => {
                        let n = io::Write::write(&mut conn.writer(), plaintext).unwrap_or(0);
                        sealed.extend_from_slice(&plaintext[..n]);
                        send_tls(&mut conn, &mut to_server).await
                    }
                    Step::CloseNotify => {
                        conn.send_close_notify();
                        send_tls(&mut conn, &mut to_server).await
                    }
                    Step::KeyUpdate => {
                        let _ = conn.refresh_traffic_keys();
                        send_tls(&mut conn, &mut to_server).await
                    }
                    Step::Pause => {
                        tokio::task::yield_now().await;
                        Ok(())
                    }
                };
            }
            let _ = to_server.shutdown().await;
        };
        // Take what the server writes meanwhile, so its writes never block.
        let drain = async {
            let _ = from_server.read_to_end(&mut Vec::new()).await;
        };
        tokio::join!(send, drain);
    };
    let delivered = fixture.run(client, |tcp| serve_tls(tcp, fixture.server.clone()));
    assert!(
        sealed.starts_with(&delivered),
        "the server delivered {} plaintext bytes that are not a prefix of the {} the client sealed",
        delivered.len(),
        sealed.len()
    );
    delivered
}

/// Sends whatever TLS records the client's connection has queued.
async fn send_tls(
    conn: &mut ClientConnection,
    tcp: &mut tokio::net::tcp::WriteHalf<'_>,
) -> io::Result<()> {
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out)?;
    }
    tcp.write_all(&out).await
}

/// The server side: handshake, a greeting, then reads through a buffer
/// smaller than a record until the end, with a short answer to each of the
/// first reads. Returns the plaintext delivered.
async fn serve_tls(tcp: TcpStream, config: Arc<ServerConfig>) -> Vec<u8> {
    let deadline = Instant::now() + SERVER_DEADLINE;
    let mut stream = match timeout_at(deadline, TlsStream::accept(tcp, config)).await {
        Ok(Ok(stream)) => stream,
        // Bytes right behind the client's Finished can fail the handshake.
        Ok(Err(_)) => return Vec::new(),
        Err(_) => panic!("TLS handshake with a real client did not finish"),
    };
    let stuck = "TlsStream still waiting after the client's FIN";
    let written = timeout_at(deadline, stream.write_all(b"hello from wssify\n")).await;
    written.expect(stuck).ok();
    let mut delivered = Vec::new();
    let mut buf = [0u8; 1000];
    for reads in 0.. {
        match timeout_at(deadline, stream.read(&mut buf))
            .await
            .expect(stuck)
        {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                delivered.extend_from_slice(&buf[..n]);
                if reads < 8 {
                    let ack = timeout_at(deadline, stream.write_all(b"ok\n")).await;
                    ack.expect(stuck).ok();
                }
            }
        }
    }
    timeout_at(deadline, stream.shutdown())
        .await
        .expect(stuck)
        .ok();
    delivered
}

/// Completes a TLS 1.3 handshake as a rustls client over `tcp`, sending the
/// client's Finished before returning. Any failure is the harness's (the
/// server has seen nothing but a real client so far), so it panics.
async fn client_handshake(tcp: &mut TcpStream, config: Arc<ClientConfig>) -> ClientConnection {
    let name = ServerName::try_from("localhost").expect("fuzz harness: server name");
    let mut conn = ClientConnection::new(config, name).expect("fuzz harness: client TLS");
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let mut out = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut out)
                .expect("fuzz harness: client TLS write");
        }
        tcp.write_all(&out)
            .await
            .expect("fuzz harness: the server closed during a real handshake");
        if !conn.is_handshaking() {
            return conn;
        }
        let n = tcp
            .read(&mut buf)
            .await
            .expect("fuzz harness: the server closed during a real handshake");
        assert!(n > 0, "the server closed during a real handshake");
        conn.read_tls(&mut &buf[..n])
            .expect("fuzz harness: client TLS read");
        conn.process_new_packets()
            .expect("the server's handshake was refused by a rustls client");
    }
}

/// Accepts the development certificate (it is made anew per process) but
/// still checks handshake signatures, as `tests/common` does.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The PROXY protocol encoder (`wire::proxy_header`), round trip: the
/// input is turned into addresses and TLS facts, encoded, and read back by
/// a reader written here from the specification, independent of the
/// encoder. Input: a flags byte (bit 0: v2; 1, 2: the client's and the
/// local address are IPv6; 3: the addresses are unknown; 4: a client
/// certificate), 16 + 16 address bytes and 2 + 2 port bytes (missing bytes
/// are zeros), then the SNI, ALPN, version, cipher, signature algorithm,
/// key algorithm and CN, separated by zero bytes (empty: absent).
///
/// Property: the header is what the specification allows (v1 at most 107
/// bytes, one line; v2's length matches), and it carries exactly the
/// addresses given (canonical, one family) and every value given.
pub fn proxy_header(data: &[u8]) {
    use crate::wire::proxy_header::{TlsFacts, Version, encode};
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

    let byte = |i: usize| data.get(i).copied().unwrap_or(0);
    let flags = byte(0);
    let ip = |at: usize, v6: bool| -> IpAddr {
        let mut octets = [0u8; 16];
        for (k, o) in octets.iter_mut().enumerate() {
            *o = byte(at + k);
        }
        if v6 {
            IpAddr::V6(Ipv6Addr::from(octets))
        } else {
            IpAddr::V4(Ipv4Addr::new(octets[0], octets[1], octets[2], octets[3]))
        }
    };
    let peer = SocketAddr::new(
        ip(1, flags & 2 != 0),
        u16::from_be_bytes([byte(33), byte(34)]),
    );
    let local = SocketAddr::new(
        ip(17, flags & 4 != 0),
        u16::from_be_bytes([byte(35), byte(36)]),
    );
    let addrs = (flags & 8 == 0).then_some((peer, local));
    let fields: Vec<String> = data
        .get(37..)
        .unwrap_or(&[])
        .split(|b| *b == 0)
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect();
    let field = |i: usize| fields.get(i).map(String::as_str).filter(|f| !f.is_empty());
    let tls = TlsFacts {
        sni: field(0),
        alpn: field(1).map(str::as_bytes),
        version: field(2),
        cipher: field(3),
        sig_alg: field(4),
        key_alg: field(5),
        client_cert: flags & 16 != 0,
        cn: field(6),
        passed_through: flags & 32 != 0,
    };
    let version = if flags & 1 != 0 {
        Version::V2
    } else {
        Version::V1
    };
    let header = encode(version, addrs, &tls);

    // What the header must say: both addresses canonical, and of one
    // family (IPv4 mapped into IPv6 when they differ).
    let want = addrs.map(|(p, l)| {
        let (pi, li) = (p.ip().to_canonical(), l.ip().to_canonical());
        let (pi, li) = if pi.is_ipv4() == li.is_ipv4() {
            (pi, li)
        } else {
            let map = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
                v6 => v6,
            };
            (map(pi), map(li))
        };
        (SocketAddr::new(pi, p.port()), SocketAddr::new(li, l.port()))
    });

    if version == Version::V1 {
        assert!(header.len() <= 107, "v1 header too long: {header:?}");
        let line = std::str::from_utf8(&header).expect("v1 is ASCII");
        let line = line.strip_suffix("\r\n").expect("v1 ends with CRLF");
        assert!(!line.contains(['\r', '\n']), "one line: {line:?}");
        let words: Vec<&str> = line.split(' ').collect();
        let Some((p, l)) = want else {
            assert_eq!(words, ["PROXY", "UNKNOWN"]);
            return;
        };
        let family = if p.is_ipv4() { "TCP4" } else { "TCP6" };
        assert_eq!(words.len(), 6, "{line:?}");
        assert_eq!((words[0], words[1]), ("PROXY", family), "{line:?}");
        let read = |a: &str, port: &str| {
            SocketAddr::new(
                a.parse().expect("v1 address"),
                port.parse().expect("v1 port"),
            )
        };
        assert_eq!(read(words[2], words[4]), p, "{line:?}");
        assert_eq!(read(words[3], words[5]), l, "{line:?}");
        return;
    }

    assert_eq!(&header[..12], b"\r\n\r\n\0\r\nQUIT\n", "v2 signature");
    let length = usize::from(u16::from_be_bytes([header[14], header[15]]));
    assert_eq!(length, header.len() - 16, "v2 length");
    let mut rest = &header[16..];
    match want {
        None => assert_eq!((header[12], header[13]), (0x20, 0x00), "LOCAL, AF_UNSPEC"),
        Some((p, l)) => {
            assert_eq!(header[12], 0x21, "PROXY");
            let (read_p, read_l) = if p.is_ipv4() {
                assert_eq!(header[13], 0x11, "TCP over IPv4");
                let ip = |b: &[u8]| IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]));
                let pair = (ip(&rest[0..4]), ip(&rest[4..8]));
                rest = &rest[8..];
                pair
            } else {
                assert_eq!(header[13], 0x21, "TCP over IPv6");
                let ip = |b: &[u8]| {
                    let mut o = [0u8; 16];
                    o.copy_from_slice(b);
                    IpAddr::V6(Ipv6Addr::from(o))
                };
                let pair = (ip(&rest[0..16]), ip(&rest[16..32]));
                rest = &rest[32..];
                pair
            };
            let sport = u16::from_be_bytes([rest[0], rest[1]]);
            let dport = u16::from_be_bytes([rest[2], rest[3]]);
            rest = &rest[4..];
            assert_eq!(SocketAddr::new(read_p, sport), p);
            assert_eq!(SocketAddr::new(read_l, dport), l);
        }
    }
    // Type, 16-bit length, value, to the end.
    let walk = |mut bytes: &[u8]| -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            assert!(bytes.len() >= 3, "a TLV cut short");
            let len = usize::from(u16::from_be_bytes([bytes[1], bytes[2]]));
            assert!(bytes.len() >= 3 + len, "a TLV longer than the header");
            out.push((bytes[0], bytes[3..3 + len].to_vec()));
            bytes = &bytes[3 + len..];
        }
        out
    };
    let tlvs = walk(rest);
    let get = |list: &[(u8, Vec<u8>)], kind: u8| {
        list.iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, v)| v.clone())
    };
    // Inputs this small always fit; larger ones may leave values out.
    let fits = data.len() < 60_000;
    let check = |list: &[(u8, Vec<u8>)], kind: u8, given: Option<&[u8]>| {
        let read = get(list, kind);
        match (given, read) {
            (Some(g), Some(r)) => assert_eq!(g, r.as_slice(), "TLV 0x{kind:02x}"),
            (None, Some(_)) => panic!("TLV 0x{kind:02x} was not given"),
            (Some(_), None) => assert!(!fits, "TLV 0x{kind:02x} left out"),
            (None, None) => {}
        }
    };
    check(&tlvs, 0x01, tls.alpn);
    check(&tlvs, 0x02, tls.sni.map(str::as_bytes));
    if tls.passed_through {
        assert_eq!(get(&tlvs, 0x20), None, "no SSL TLV for TLS passed through");
        return;
    }
    let Some(ssl) = get(&tlvs, 0x20) else {
        assert!(!fits, "the SSL TLV left out");
        return;
    };
    assert!(ssl.len() >= 5, "SSL TLV: client byte and verify");
    let client = if tls.client_cert { 0x07 } else { 0x01 };
    assert_eq!(ssl[0], client, "client flags");
    assert_eq!(&ssl[1..5], &[0, 0, 0, 0], "verify");
    let subs = walk(&ssl[5..]);
    check(&subs, 0x21, tls.version.map(str::as_bytes));
    check(&subs, 0x22, tls.cn.map(str::as_bytes));
    check(&subs, 0x23, tls.cipher.map(str::as_bytes));
    check(&subs, 0x24, tls.sig_alg.map(str::as_bytes));
    check(&subs, 0x25, tls.key_alg.map(str::as_bytes));
}

/// The harnesses must reach what they are meant to test: a harness that
/// never got past its handshake would fuzz nothing and still pass.
/// The ClientHello reader (`wire::client_hello`) on arbitrary bytes,
/// checked against rustls' own reading of the same bytes (its `Acceptor`,
/// as a server would run it).
///
/// Properties: no panic; an `Incomplete` asks for more than it was given;
/// a hello read `Ok` reads the same from just its records, and every
/// shorter prefix of those is `Incomplete` with an `at_least` no further
/// than where the records end; and when rustls accepts the bytes as a
/// ClientHello, the reader does too (unless one of its documented limits
/// says `TooLarge`) and agrees on the server name and the ALPN protocols.
pub fn client_hello(data: &[u8]) {
    use crate::wire::client_hello::{Error, parse};

    let ours = parse(data);
    match &ours {
        Err(Error::Incomplete { at_least }) => assert!(
            *at_least > data.len(),
            "Incomplete asks for {at_least} bytes with {} given",
            data.len()
        ),
        Ok(hello) => {
            let end = hello.records_len;
            assert!(end <= data.len(), "records_len {end} past the input");
            assert_eq!(parse(&data[..end]), ours, "the same from its records alone");
            // Every prefix when the input is small, some otherwise: all
            // would make the fuzzer quadratic.
            let step = (end / 64).max(1);
            let cuts = (0..end).step_by(step).chain([end / 2, end - 1]);
            for cut in cuts {
                match parse(&data[..cut]) {
                    Err(Error::Incomplete { at_least }) => assert!(
                        cut < at_least && at_least <= end,
                        "prefix {cut} of {end}: at_least {at_least}"
                    ),
                    other => panic!("prefix {cut} of a hello of {end} bytes: {other:?}"),
                }
            }
        }
        Err(_) => {}
    }
    let Some((server_name, alpn)) = rustls_accepts(data) else {
        return;
    };
    let hello = match ours {
        Ok(hello) => hello,
        // Records past 2^14 bytes, or a hello past MAX_HELLO: rustls is
        // more lenient (see the module's notes).
        Err(Error::TooLarge) => return,
        Err(e) => panic!("rustls accepts this ClientHello, the reader says {e:?}"),
    };
    assert_eq!(
        hello.server_name, server_name,
        "server name, rustls' vs ours"
    );
    assert_eq!(hello.alpn, alpn, "ALPN, rustls' vs ours");
}

/// What rustls makes of `data` as the first bytes of a connection: the
/// server name and ALPN protocols of the ClientHello when its `Acceptor`
/// accepts one, `None` when it refuses or waits for more.
pub fn rustls_accepts(data: &[u8]) -> Option<(Option<String>, Vec<Vec<u8>>)> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut rest = data;
    loop {
        // It takes a limited amount per call: feed it until it decides.
        let read = acceptor.read_tls(&mut rest).unwrap_or(0);
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let hello = accepted.client_hello();
                let name = hello.server_name().map(str::to_string);
                let alpn = hello
                    .alpn()
                    .map(|names| names.map(<[u8]>::to_vec).collect())
                    .unwrap_or_default();
                return Some((name, alpn));
            }
            Ok(None) if read > 0 && !rest.is_empty() => continue,
            Ok(None) | Err(_) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_records_reach_the_reader_in_order() {
        let mut input = vec![0x45];
        input.extend_from_slice(b"hello");
        input.extend_from_slice(&[0xc1, 0x9f, 0xc2, 0x43]); // key update, 16 KiB, pause
        input.extend_from_slice(b"end");
        let delivered = after_handshake(&script(&input));
        assert_eq!(delivered.len(), 5 + 16 * 1024 + 3);
        assert!(delivered.starts_with(b"hello") && delivered.ends_with(b"end"));
    }

    #[test]
    fn close_notify_ends_what_is_delivered() {
        let delivered = after_handshake(&script(b"\x43abc\xc0\x43def"));
        assert_eq!(delivered, b"abc");
    }

    #[test]
    fn the_proxy_header_round_trip_reads_every_field() {
        proxy_header(b"");
        proxy_header(&[0x1f; 64]);
        let mut input = vec![0x17]; // v2, both IPv6, a client certificate
        input.extend_from_slice(&[0u8; 10]);
        input.extend_from_slice(&[0xff, 0xff, 10, 0, 0, 1]); // ::ffff:10.0.0.1
        input.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        input.extend_from_slice(&[0u8; 12]);
        input.extend_from_slice(&[0x13, 0x88, 0x01, 0xbb]);
        input.extend_from_slice(b"a.test\0h2\0TLSv1.3\0TLS_AES_128_GCM_SHA256\0\0\0bob");
        proxy_header(&input);
        input[0] = 0x06; // v1
        proxy_header(&input);
    }

    #[test]
    fn an_empty_input_is_a_clean_session() {
        assert!(after_handshake(&[]).is_empty());
        first_bytes(b"");
        first_bytes(b"GET / HTTP/1.1\r\n\r\n");
    }

    #[test]
    fn the_script_reads_every_kind_of_step() {
        let steps = script(b"\x02ab\x42cd\x80\xc0\xc1\xc2\xc3rest");
        let kinds: Vec<String> = steps.iter().map(|s| format!("{s:?}")).collect();
        assert_eq!(kinds.len(), 7, "{kinds:?}");
        assert!(matches!(steps[0], Step::Raw(b"ab")));
        assert!(matches!(&steps[2], Step::Seal(p) if p.len() == 512));
        assert!(matches!(steps[6], Step::Raw(b"rest")));
    }
}
