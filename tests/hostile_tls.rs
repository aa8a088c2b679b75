//! Clients that do not play by the rules: each test drives wssify's TLS
//! stream over loopback sockets with a client that forges, splits, cuts
//! short or stalls what it sends, mostly through the real binary.

mod common;

use std::future::poll_fn;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use common::ca::Ca;
use common::*;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use wssify::settings::TlsMin;
use wssify::sni::SniTable;
use wssify::tls::{Resumption, TlsOptions};
use wssify::tls_stream::TlsStream;

// ---------------------------------------------------------------------------
// Helpers

/// A server configuration as wssify builds it, for the development
/// certificate (names: localhost, 127.0.0.1, ::1).
fn server_config() -> Arc<rustls::ServerConfig> {
    let provider = wssify::tls::provider();
    let cert = wssify::certs::self_signed(&provider).unwrap();
    let names = cert.summary.dns_names.clone();
    let table = SniTable::new(vec![(cert.certified_key, names)], false);
    let options = TlsOptions {
        provider,
        tls_min: TlsMin::V1_2,
        alpn: Vec::new(),
    };
    wssify::tls::server_config(&options, Arc::new(table), None, &Resumption::new().unwrap())
        .unwrap()
}

/// A client that accepts any certificate (it still checks signatures).
fn any_client() -> ClientConfig {
    ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(any_cert_verifier())
        .with_no_client_auth()
}

/// A TLS server in this process and a client connected to it, both
/// handshaken: the server side is wssify's own stream.
async fn library_pair() -> (TlsStream, tokio_rustls::client::TlsStream<TcpStream>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = server_config();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        TlsStream::accept(tcp, config).await.unwrap()
    });
    let client = tls_connect(addr, Arc::new(any_client()), "localhost")
        .await
        .unwrap();
    (server.await.unwrap(), client)
}

/// What a backend saw of one connection.
#[derive(Debug)]
enum Seen {
    Bytes(Vec<u8>),
    /// An orderly end (FIN).
    Eof,
    /// The connection broke.
    Error(std::io::ErrorKind),
}

/// A backend that reports every read of the first client's connection (past
/// wssify's start-up check), then how that connection ended; it closes its
/// side after the client's end.
async fn watching_backend() -> (SocketAddr, mpsc::UnboundedReceiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut s = accept_past_check(&listener).await;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match s.read(&mut buf).await {
                Ok(0) => {
                    let _ = tx.send(Seen::Eof);
                    break;
                }
                Ok(n) => {
                    let _ = tx.send(Seen::Bytes(buf[..n].to_vec()));
                }
                Err(e) => {
                    let _ = tx.send(Seen::Error(e.kind()));
                    break;
                }
            }
        }
    });
    (addr, rx)
}

/// Waits (bounded) until the backend has received `n` bytes; returns them.
async fn backend_bytes(events: &mut mpsc::UnboundedReceiver<Seen>, n: usize) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < n {
        match tokio::time::timeout(WAIT, events.recv()).await {
            Ok(Some(Seen::Bytes(b))) => got.extend(b),
            other => panic!("backend: {other:?} after {got:?}, {n} bytes expected"),
        }
    }
    got
}

/// Waits (bounded) for how the backend's connection ended, with any bytes
/// that came first.
async fn backend_end(events: &mut mpsc::UnboundedReceiver<Seen>) -> (Vec<u8>, Seen) {
    let mut got = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, events.recv()).await {
            Ok(Some(Seen::Bytes(b))) => got.extend(b),
            Ok(Some(end)) => return (got, end),
            other => panic!("backend: no end seen ({other:?}) after {got:?}"),
        }
    }
}

/// Finishes the client's handshake over `tcp`.
fn finish_handshake(
    conn: &mut ClientConnection,
    tcp: &mut std::net::TcpStream,
) -> std::io::Result<()> {
    while conn.is_handshaking() {
        conn.complete_io(tcp)?;
    }
    Ok(())
}

/// Sends `data` over an established connection and reads it back (echo).
fn echo_blocking(
    conn: &mut ClientConnection,
    tcp: &mut std::net::TcpStream,
    data: &[u8],
) -> std::io::Result<Vec<u8>> {
    let mut stream = rustls::Stream::new(conn, tcp);
    stream.write_all(data)?;
    stream.flush()?;
    let mut back = vec![0u8; data.len()];
    stream.read_exact(&mut back)?;
    Ok(back)
}

/// Splits the first record of `wire` (a ClientHello) into two handshake
/// records, the first `at` bytes of the message in the first.
fn split_first_record(wire: &[u8], at: usize) -> Vec<u8> {
    assert_eq!(wire[0], 0x16, "a handshake record comes first");
    let len = usize::from(u16::from_be_bytes([wire[3], wire[4]]));
    let (message, rest) = wire[5..].split_at(len);
    let mut out = Vec::new();
    for part in [&message[..at], &message[at..]] {
        out.extend_from_slice(&wire[..3]);
        out.extend_from_slice(&(part.len() as u16).to_be_bytes());
        out.extend_from_slice(part);
    }
    out.extend_from_slice(rest);
    out
}

/// The length of the first TLS record of `wire`, header included.
fn first_record_len(wire: &[u8]) -> usize {
    5 + usize::from(u16::from_be_bytes([wire[3], wire[4]]))
}

/// The log line of the connection from this client port (its first
/// physical line, should a forged name have split it).
async fn line_for(w: &mut Wssify, port: u16) -> String {
    let needle = format!("peer=127.0.0.1:{port} ");
    w.wait_for_log_matching(|l| l.contains(&needle) && (l.contains(" end=") || l.contains(" sni=")))
        .await
        .unwrap_or_else(|| panic!("no log line for port {port}; log:\n{}", w.log()))
}

/// Gets a session ticket that allows 0-RTT, from a rustls server in this
/// process (wssify's own tickets never allow it), into `config`'s session
/// store for `name`. wssify cannot read the ticket, so a client that
/// offers it gets a full handshake with its early data rejected.
async fn ticket_allowing_early_data(config: &Arc<ClientConfig>, name: &str) {
    // Stateful tickets (rustls' default): only those may allow 0-RTT.
    let provider = wssify::tls::provider();
    let cert = wssify::certs::self_signed(&provider).unwrap();
    let names = cert.summary.dns_names.clone();
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniTable::new(
            vec![(cert.certified_key, names)],
            false,
        )));
    server.max_early_data_size = 16384;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.unwrap();
        let mut one = [0u8; 1];
        tls.read_exact(&mut one).await.unwrap();
        tls.write_all(&one).await.unwrap();
        tls.shutdown().await.unwrap();
    });
    let mut tls = tls_connect(addr, config.clone(), name).await.unwrap();
    tls.write_all(b"t").await.unwrap();
    let mut one = [0u8; 1];
    // The tickets come before the echo.
    tls.read_exact(&mut one).await.unwrap();
    let mut probe = ClientConnection::new(
        config.clone(),
        ServerName::try_from(name.to_string()).unwrap(),
    )
    .unwrap();
    assert!(
        probe.early_data().is_some(),
        "the ticket allows 0-RTT, so the client offers early data"
    );
}

// ---------------------------------------------------------------------------
// Finding 1: memory held is bounded by the bytes pending.

#[tokio::test]
async fn a_client_stalled_inside_a_record_pins_only_the_bytes_it_sent() {
    bounded(WAIT, async {
        let (mut server, mut client) = library_pair().await;
        // The first three bytes of a record header, then nothing.
        client
            .get_mut()
            .0
            .write_all(&[0x17, 0x03, 0x03])
            .await
            .unwrap();
        // Read until the server has taken them off the socket and waits.
        let mut buf = [0u8; 64];
        poll_fn(|cx| {
            let mut out = ReadBuf::new(&mut buf);
            match Pin::new(&mut server).poll_read(cx, &mut out) {
                Poll::Ready(r) => panic!("nothing can be read yet: {r:?}"),
                Poll::Pending if server.buffered_pending() == 3 => Poll::Ready(()),
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        let held = server.buffered_capacity();
        assert!(
            held <= 64,
            "a connection waiting on 3 bytes of a record holds {held} bytes of buffers"
        );
    })
    .await;
}

// ---------------------------------------------------------------------------
// Finding 2 and 3: the SNI in the log is the one rustls accepted.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_hello_after_a_rejected_0rtt_hello_does_not_reach_the_log() {
    bounded(WAIT, async {
        let backend = echo_backend().await;
        let mut w = Wssify::start(&["--to", &backend.to_string()]).await;
        let mut config = any_client();
        config.enable_early_data = true;
        let config = Arc::new(config);
        // An IP address: the client sends no SNI.
        ticket_allowing_early_data(&config, "127.0.0.1").await;

        // What sniffing the bytes would take for a ClientHello naming
        // "forged\r\n\x1b[1mxy": rustls skips it as undecryptable early data.
        let mut forged = ClientConnection::new(
            Arc::new(any_client()),
            ServerName::try_from("forged.example").unwrap(),
        )
        .unwrap();
        let mut forged = drain_tls(&mut forged);
        let at = forged
            .windows(14)
            .position(|w| w == b"forged.example")
            .unwrap();
        forged[at..at + 14].copy_from_slice(b"forged\r\n\x1b[1mxy");
        let forged_record = forged[..first_record_len(&forged)].to_vec();

        let addr = w.addr;
        let (port, echoed) = tokio::task::spawn_blocking(move || {
            let mut tcp = blocking_tcp(addr);
            let port = tcp.local_addr().unwrap().port();
            let mut conn =
                ClientConnection::new(config, ServerName::try_from("127.0.0.1").unwrap()).unwrap();
            assert!(conn.early_data().is_some(), "0-RTT offered");
            let wire = drain_tls(&mut conn);
            let hello = first_record_len(&wire);
            let mut first = wire[..hello].to_vec();
            first.extend_from_slice(&forged_record);
            first.extend_from_slice(&wire[hello..]);
            tcp.write_all(&first).unwrap();
            finish_handshake(&mut conn, &mut tcp).expect("the handshake completes");
            let echoed = echo_blocking(&mut conn, &mut tcp, b"ping").expect("echo");
            conn.send_close_notify();
            let _ = conn.complete_io(&mut tcp);
            (port, echoed)
        })
        .await
        .unwrap();
        assert_eq!(echoed, b"ping");
        let line = line_for(&mut w, port).await;
        assert!(line.contains(" sni=- "), "{line}");
        assert!(!w.log().contains("forged"), "{}", w.log());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_hello_split_across_records_logs_its_sni() {
    bounded(WAIT, async {
        let backend = echo_backend().await;
        let mut w = Wssify::start(&["--to", &backend.to_string()]).await;
        let config = pinned_client(&w.fingerprint().await);
        let addr = w.addr;
        let port = tokio::task::spawn_blocking(move || {
            let mut tcp = blocking_tcp(addr);
            let port = tcp.local_addr().unwrap().port();
            let mut conn =
                ClientConnection::new(config, ServerName::try_from("localhost").unwrap()).unwrap();
            // The SNI extension ends up in the second record.
            tcp.write_all(&split_first_record(&drain_tls(&mut conn), 40))
                .unwrap();
            finish_handshake(&mut conn, &mut tcp).expect("the handshake completes");
            let echoed = echo_blocking(&mut conn, &mut tcp, b"split").expect("echo");
            assert_eq!(echoed, b"split");
            conn.send_close_notify();
            let _ = conn.complete_io(&mut tcp);
            port
        })
        .await
        .unwrap();
        let line = line_for(&mut w, port).await;
        assert!(line.contains(" sni=localhost "), "{line}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_sni_names_what_the_client_asked_for_even_in_a_split_hello() {
    bounded(WAIT, async {
        let ca = Ca::new("hostile CA");
        let leaf = ca.server(&["a.test"]);
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = leaf.write(dir.path(), "a");
        let backend = echo_backend().await;
        let mut w = Wssify::start(&[
            "--to",
            &backend.to_string(),
            "--cert",
            &cert.display().to_string(),
            "--key",
            &key.display().to_string(),
            "--strict-sni",
        ])
        .await;
        let config = trusting_client(&[ca.der()]);
        let addr = w.addr;
        let (port, refused) = tokio::task::spawn_blocking(move || {
            let mut tcp = blocking_tcp(addr);
            let port = tcp.local_addr().unwrap().port();
            let mut conn =
                ClientConnection::new(config, ServerName::try_from("unknown.test").unwrap())
                    .unwrap();
            tcp.write_all(&split_first_record(&drain_tls(&mut conn), 40))
                .unwrap();
            (port, finish_handshake(&mut conn, &mut tcp))
        })
        .await
        .unwrap();
        let refused = refused.expect_err("an unknown name is refused");
        assert!(
            refused.to_string().contains("UnrecognisedName")
                || refused.to_string().contains("UnrecognizedName"),
            "{refused}"
        );
        let line = line_for(&mut w, port).await;
        assert!(
            line.contains("no certificate for the requested name 'unknown.test' (--strict-sni)"),
            "{line}"
        );
    })
    .await;
}

// ---------------------------------------------------------------------------
// Finding 4: a FIN inside a record is not a clean end.

#[tokio::test]
async fn a_record_cut_short_by_fin_resets_the_backend() {
    bounded(WAIT, async {
        let (backend, mut events) = watching_backend().await;
        let mut w = Wssify::start(&["--to", &backend.to_string()]).await;
        let mut tls = dev_connect(&mut w).await;
        let port = tls.get_ref().0.local_addr().unwrap().port();
        tls.write_all(b"complete").await.unwrap();
        tls.flush().await.unwrap();
        assert_eq!(backend_bytes(&mut events, 8).await, b"complete");
        // Half of the next record, then FIN (no close_notify).
        let tcp = tls.get_mut().0;
        tcp.write_all(&[0x17, 0x03, 0x03, 0x00, 0x40, 1, 2, 3, 4])
            .await
            .unwrap();
        tcp.shutdown().await.unwrap();
        let (more, end) = backend_end(&mut events).await;
        assert!(more.is_empty(), "{more:?}");
        assert!(
            matches!(end, Seen::Error(std::io::ErrorKind::ConnectionReset)),
            "the backend must see a reset, not an orderly end: {end:?}"
        );
        let line = line_for(&mut w, port).await;
        assert!(line.contains("end=\"client error: truncated"), "{line}");
    })
    .await;
}

#[tokio::test]
async fn fin_at_a_record_boundary_is_a_clean_end_noted_in_the_log() {
    bounded(WAIT, async {
        let (backend, mut events) = watching_backend().await;
        let mut w = Wssify::start(&["--to", &backend.to_string()]).await;
        let mut tls = dev_connect(&mut w).await;
        let port = tls.get_ref().0.local_addr().unwrap().port();
        tls.write_all(b"all of it").await.unwrap();
        tls.flush().await.unwrap();
        assert_eq!(backend_bytes(&mut events, 9).await, b"all of it");
        // FIN without close_notify, as many browsers close.
        tls.get_mut().0.shutdown().await.unwrap();
        let (more, end) = backend_end(&mut events).await;
        assert!(more.is_empty(), "{more:?}");
        assert!(matches!(end, Seen::Eof), "{end:?}");
        let line = line_for(&mut w, port).await;
        assert!(
            line.contains("end=\"client closed (no close_notify)\""),
            "{line}"
        );
    })
    .await;
}

// ---------------------------------------------------------------------------
// Finding 5: authenticated bytes are delivered before the error; to_client
// counts what reached the socket.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_records_before_a_forged_one_reach_the_backend_then_a_reset() {
    bounded(WAIT, async {
        let (backend, mut events) = watching_backend().await;
        let mut w = Wssify::start(&["--to", &backend.to_string()]).await;
        let config = pinned_client(&w.fingerprint().await);
        let addr = w.addr;
        let port = tokio::task::spawn_blocking(move || {
            let mut tcp = blocking_tcp(addr);
            let port = tcp.local_addr().unwrap().port();
            let mut conn =
                ClientConnection::new(config, ServerName::try_from("localhost").unwrap()).unwrap();
            finish_handshake(&mut conn, &mut tcp).unwrap();
            conn.writer().write_all(b"authentic, ").unwrap();
            let mut wire = drain_tls(&mut conn);
            conn.writer().write_all(b"bytes").unwrap();
            wire.extend(drain_tls(&mut conn));
            conn.writer().write_all(b"forged").unwrap();
            let mut forged = drain_tls(&mut conn);
            let last = forged.len() - 1;
            forged[last] ^= 0x01; // the tag no longer matches
            wire.extend(forged);
            // All three records in one write, so one read takes them.
            tcp.write_all(&wire).unwrap();
            port
        })
        .await
        .unwrap();
        let (got, end) = backend_end(&mut events).await;
        assert_eq!(got, b"authentic, bytes", "records before the forged one");
        assert!(
            matches!(end, Seen::Error(std::io::ErrorKind::ConnectionReset)),
            "{end:?}"
        );
        let line = line_for(&mut w, port).await;
        assert!(line.contains("end=\"client error: "), "{line}");
        assert!(line.contains("to_backend=16B"), "{line}");
    })
    .await;
}

#[tokio::test]
async fn plaintext_sent_counts_only_records_that_reached_the_socket() {
    bounded(WAIT, async {
        let (mut server, mut client) = library_pair().await;
        // Write while the client reads nothing, until the stream pushes back.
        let chunk = vec![0x5a; 64 * 1024];
        let mut accepted = 0u64;
        poll_fn(|cx| {
            loop {
                match Pin::new(&mut server).poll_write(cx, &chunk) {
                    Poll::Ready(Ok(n)) => accepted += n as u64,
                    Poll::Ready(Err(e)) => panic!("{e}"),
                    Poll::Pending => return Poll::Ready(()),
                }
            }
        })
        .await;
        let sent = server.plaintext_sent();
        assert!(
            sent < accepted,
            "{sent} of {accepted} bytes counted as sent while the socket is full"
        );
        // The client reads everything; the server flushes the rest.
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 256 * 1024];
            let mut total = 0u64;
            while total < accepted {
                total += client.read(&mut buf).await.unwrap() as u64;
            }
            total
        });
        server.flush().await.unwrap();
        assert_eq!(reader.await.unwrap(), accepted);
        assert_eq!(server.plaintext_sent(), accepted);
    })
    .await;
}

// ---------------------------------------------------------------------------
// Finding 6: as good as rustls alone.

#[tokio::test]
async fn an_sslv2_hello_gets_the_alert_rustls_sends() {
    bounded(WAIT, async {
        let backend = echo_backend().await;
        let mut w = Wssify::start(&["--to", &backend.to_string()]).await;
        // An SSLv2-format ClientHello offering TLS 1.2 (RFC 5246 E.2).
        let mut body = vec![0x01, 0x03, 0x03, 0x00, 0x03, 0x00, 0x00, 0x00, 0x10];
        body.extend_from_slice(&[0x00, 0xc0, 0x2f]);
        body.extend_from_slice(&[0x42; 16]);
        let mut hello = vec![0x80, body.len() as u8];
        hello.extend_from_slice(&body);
        let mut tcp = TcpStream::connect(w.addr).await.unwrap();
        let port = tcp.local_addr().unwrap().port();
        tcp.write_all(&hello).await.unwrap();
        let answer = read_to_end(&mut tcp).await.unwrap_or_default();
        assert!(
            answer.len() >= 7 && answer[0] == 0x15 && answer[3..6] == [0x00, 0x02, 0x02],
            "a fatal alert record, as rustls answers: {answer:02x?}"
        );
        let line = line_for(&mut w, port).await;
        assert!(line.contains("end=\"not TLS (first byte 0x80): "), "{line}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_0rtt_flight_still_completes_the_handshake() {
    bounded(WAIT, async {
        let backend = echo_backend().await;
        let mut w = Wssify::start(&["--to", &backend.to_string()]).await;
        let mut config = any_client();
        config.enable_early_data = true;
        let config = Arc::new(config);
        ticket_allowing_early_data(&config, "localhost").await;
        let addr = w.addr;
        let (port, accepted, echoed) = tokio::task::spawn_blocking(move || {
            let mut tcp = blocking_tcp(addr);
            let port = tcp.local_addr().unwrap().port();
            let mut conn =
                ClientConnection::new(config, ServerName::try_from("localhost").unwrap()).unwrap();
            // 7,000 bytes of early data: rustls skips at most 16 KiB of
            // records it cannot decrypt, so they may be looked at twice,
            // not three times.
            let early = vec![0x0e; 7000];
            let mut writer = conn.early_data().expect("0-RTT offered");
            writer.write_all(&early).unwrap();
            // The hello and the early data in one write.
            tcp.write_all(&drain_tls(&mut conn)).unwrap();
            finish_handshake(&mut conn, &mut tcp).expect("the handshake completes");
            let accepted = conn.is_early_data_accepted();
            // The server fails the handshake only once the client has
            // sent its Finished, so a failure shows here.
            let echoed = echo_blocking(&mut conn, &mut tcp, b"after 0-RTT")
                .expect("the echo comes back: wssify completed the handshake");
            conn.send_close_notify();
            let _ = conn.complete_io(&mut tcp);
            (port, accepted, echoed)
        })
        .await
        .unwrap();
        assert!(!accepted, "wssify never accepts early data");
        assert_eq!(echoed, b"after 0-RTT");
        let line = line_for(&mut w, port).await;
        assert!(line.contains(" tls=TLSv1.3 "), "{line}");
        assert!(line.contains("to_backend=11B"), "{line}");
    })
    .await;
}
