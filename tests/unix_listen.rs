//! `--listen unix:/path`: a local TLS endpoint on a UNIX stream socket,
//! through the real binary with real sockets in a temporary directory: a
//! wss round trip (also with the handshakes on their own threads, and
//! beside a TCP listener), a stale socket file replaced, a live socket or
//! a regular file refused and left alone, the file removed after SIGTERM
//! and by `--check`, its mode (660 by default, `--unix-mode`), the PROXY
//! header for a client without an address, and `--max-conns-per-ip`
//! leaving UNIX clients alone.

mod common;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use common::*;
use futures_util::{SinkExt, StreamExt};
use ppp::HeaderResult;
use ppp::v2::{Addresses as V2Addresses, Command as V2Command};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::Message;

fn listen(path: &Path) -> String {
    format!("unix:{}", path.display())
}

/// A TLS client over the UNIX socket at `path`, pinned to wssify's
/// development certificate.
async fn unix_tls(w: &mut Wssify, path: &Path) -> TlsStream<UnixStream> {
    let config = pinned_client(&w.fingerprint().await);
    unix_tls_with(config, path).await
}

async fn unix_tls_with(config: Arc<rustls::ClientConfig>, path: &Path) -> TlsStream<UnixStream> {
    let unix = UnixStream::connect(path)
        .await
        .expect("connect to the socket");
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    TlsConnector::from(config)
        .connect(name, unix)
        .await
        .expect("TLS handshake over the UNIX socket")
}

/// A WebSocket session over TLS over the socket at `path`: a text message,
/// 1 MiB of binary, and a clean close.
async fn wss_round_trip(w: &mut Wssify, path: &Path) {
    let tls = unix_tls(w, path).await;
    let (mut ws, response) = tokio_tungstenite::client_async("wss://localhost/chat", tls)
        .await
        .unwrap();
    assert_eq!(response.status(), 101);
    ws.send(Message::text("hello over a UNIX socket"))
        .await
        .unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("hello over a UNIX socket")
    );
    let big: Vec<u8> = (0..1024 * 1024).map(|i| (i * 31 % 251) as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    match ws.next().await.unwrap().unwrap() {
        Message::Binary(data) => assert!(data[..] == big[..], "1 MiB message intact"),
        other => panic!("expected the 1 MiB echo, got {other:?}"),
    }
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
}

#[tokio::test]
async fn a_wss_round_trip_goes_through_a_unix_listener_beside_a_tcp_one() {
    bounded(WAIT, async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tls.sock");
        let backend = ws_echo_backend().await;
        let mut w =
            Wssify::start(&["--listen", &listen(&path), "--to", &backend.to_string()]).await;
        let started = w
            .wait_for_log(&format!("listening on {}", listen(&path)))
            .await;
        assert!(started.contains("-> backend"), "{started}");
        wss_round_trip(&mut w, &path).await;
        // The log line names the socket the client came through.
        let line = w
            .wait_for_log(&format!("peer={} sni=localhost", listen(&path)))
            .await;
        assert!(line.contains("to_backend="), "{line}");
        // The TCP listener of the same process still serves.
        let mut tcp = dev_connect(&mut w).await;
        tcp.write_all(b"GET /").await.unwrap();
        tcp.shutdown().await.unwrap();
        w.wait_for_log("peer=127.0.0.1:").await;
    })
    .await;
}

#[tokio::test]
async fn a_unix_client_handshakes_on_the_low_priority_threads() {
    bounded(WAIT * 2, async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tls.sock");
        let backend = ws_echo_backend().await;
        let mut w = Wssify::start(&[
            "--listen",
            &listen(&path),
            "--to",
            &backend.to_string(),
            "--handshake-priority",
            "low",
            "--threads",
            "2",
        ])
        .await;
        wss_round_trip(&mut w, &path).await;
        wss_round_trip(&mut w, &path).await;
        assert_eq!(
            w.wait_for_lines(&format!("peer={} sni=", listen(&path)), 2)
                .await
                .len(),
            2
        );
    })
    .await;
}

#[tokio::test]
async fn a_stale_socket_file_is_replaced() {
    bounded(WAIT, async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tls.sock");
        // Bound and closed: the file stays, nothing accepts on it (as after
        // a SIGKILL).
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let backend = ws_echo_backend().await;
        let mut w =
            Wssify::start(&["--listen", &listen(&path), "--to", &backend.to_string()]).await;
        w.wait_for_log(&format!("{}: removed a stale socket file", path.display()))
            .await;
        wss_round_trip(&mut w, &path).await;
    })
    .await;
}

/// The one line a failed start printed (stderr, without the log's
/// timestamps), and its exit code.
fn refused_start(args: &[&str]) -> (i32, String) {
    let (code, out) = run_to_exit(args);
    let line = out
        .lines()
        .find(|l| l.starts_with("wssify: "))
        .unwrap_or_else(|| panic!("no error line in:\n{out}"))
        .to_string();
    (code, line)
}

#[tokio::test]
async fn a_socket_something_accepts_on_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("live.sock");
    let live = tokio::net::UnixListener::bind(&path).unwrap();
    let listen = listen(&path);
    let (code, line) = tokio::task::spawn_blocking(move || {
        refused_start(&["--listen", &listen, "--to", "127.0.0.1:9", "--self-signed"])
    })
    .await
    .unwrap();
    assert_eq!(code, 1, "{line}");
    // Named by the flag, the path, and who holds it (this test process).
    let expected = format!("wssify: --listen unix:{0}: {0} is in use: ", path.display());
    assert!(line.starts_with(&expected), "{line}");
    assert!(
        line.contains(&format!("(pid {})", std::process::id()))
            && line.ends_with("accepts connections on it; stop it or choose another path"),
        "{line}"
    );
    // Still there, and still ours.
    assert!(path.exists());
    let client = UnixStream::connect(&path).await.unwrap();
    let (accepted, _) = live.accept().await.unwrap();
    drop((client, accepted));
}

#[test]
fn a_regular_file_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("not-a-socket");
    std::fs::write(&path, b"precious").unwrap();
    let (code, line) = refused_start(&[
        "--listen",
        &listen(&path),
        "--to",
        "127.0.0.1:9",
        "--self-signed",
    ]);
    assert_eq!(code, 1, "{line}");
    assert_eq!(
        line,
        format!(
            "wssify: --listen unix:{0}: {0} exists and is not a socket; wssify replaces only a socket file left behind by a process that has ended: move the file away or choose another path",
            path.display()
        )
    );
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
}

#[test]
fn a_missing_directory_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-dir/tls.sock");
    let (code, line) = refused_start(&[
        "--listen",
        &listen(&path),
        "--to",
        "127.0.0.1:9",
        "--self-signed",
    ]);
    assert_eq!(code, 1, "{line}");
    assert!(
        line.ends_with(&format!(
            "the directory {} does not exist: create it first (systemd: RuntimeDirectory=)",
            dir.path().join("no-such-dir").display()
        )),
        "{line}"
    );
}

#[test]
fn bad_unix_values_are_usage_errors() {
    let long = format!("unix:/{}", "a".repeat(200));
    for (args, expected) in [
        (vec!["--listen", "unix:"], "no path after unix:"),
        (
            vec!["--listen", long.as_str()],
            "the kernel takes at most 107",
        ),
        (
            vec![
                "--listen",
                "unix:/tmp/x.sock",
                "--listen",
                "unix:/tmp/x.sock",
            ],
            "--listen unix:/tmp/x.sock is given twice",
        ),
        (
            vec!["--listen", "unix:/tmp/x.sock", "--unix-mode", "999"],
            "--unix-mode '999'",
        ),
        (
            vec!["--listen", "9300", "--unix-mode", "600"],
            "it sets the mode of --listen unix: sockets, and none is given",
        ),
    ] {
        let mut all = args.clone();
        all.extend(["--to", "127.0.0.1:9"]);
        let (code, line) = refused_start(&all);
        assert_eq!(code, 2, "{args:?}: {line}");
        assert!(line.contains(expected), "{args:?}: {line}");
    }
}

fn mode_of(path: &Path) -> u32 {
    let meta = std::fs::symlink_metadata(path).unwrap();
    assert!(meta.file_type().is_socket());
    meta.permissions().mode() & 0o777
}

#[tokio::test]
async fn the_socket_is_660_whatever_the_umask_and_unix_mode_sets_it() {
    bounded(WAIT, async {
        let dir = tempfile::tempdir().unwrap();
        let backend = echo_backend().await.to_string();
        // A umask of 077 would give 600 to a plain bind.
        let path = dir.path().join("default.sock");
        let args = format!(
            "umask 077 && exec {} --listen 127.0.0.1:0 --listen {} --to {backend}",
            env!("CARGO_BIN_EXE_wssify"),
            listen(&path)
        );
        let _w = Wssify::start_raw_command("sh", &["-c", &args]).await;
        assert_eq!(mode_of(&path), 0o660);
        let open = dir.path().join("open.sock");
        let second = dir.path().join("second.sock");
        let _v = Wssify::start(&[
            "--listen",
            &listen(&open),
            "--listen",
            &listen(&second),
            "--unix-mode",
            "666",
            "--to",
            &backend,
        ])
        .await;
        assert_eq!(mode_of(&open), 0o666);
        assert_eq!(mode_of(&second), 0o666);
    })
    .await;
}

#[tokio::test]
async fn the_socket_file_is_removed_after_sigterm() {
    bounded(WAIT, async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tls.sock");
        let backend = echo_backend().await;
        let mut w =
            Wssify::start(&["--listen", &listen(&path), "--to", &backend.to_string()]).await;
        // An open connection through it is drained, then the process exits.
        let mut tls = unix_tls(&mut w, &path).await;
        tls.write_all(b"ping").await.unwrap();
        let mut back = [0u8; 4];
        tls.read_exact(&mut back).await.unwrap();
        assert!(mode_of(&path) != 0);
        w.signal("TERM");
        w.wait_for_log("stopped accepting").await;
        assert!(
            !path.exists(),
            "the socket file is gone once accepting stops"
        );
        // The open connection still works through the drain, then ends it.
        tls.write_all(b"pong").await.unwrap();
        tls.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"pong");
        tls.shutdown().await.unwrap();
        assert_eq!(w.wait_exit(WAIT).await, Some(0));
        assert!(!path.exists());
    })
    .await;
}

#[tokio::test]
async fn check_binds_the_socket_and_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tls.sock");
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let to = backend.local_addr().unwrap().to_string();
    let listen = listen(&path);
    let args = ["--check", "--listen", &listen, "--to", &to, "--self-signed"].map(String::from);
    let (code, out) = tokio::task::spawn_blocking(move || {
        run_to_exit(&args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .unwrap();
    assert!(
        out.contains(&format!(
            "--listen unix:{0}: free; a start listens on unix:{0}",
            path.display()
        )),
        "{out}"
    );
    assert_eq!(code, 0, "{out}");
    assert!(!path.exists(), "--check left {}", path.display());
}

/// A TCP backend that hands over each connection's PROXY header (v1: up
/// to its line's end; v2: 16 bytes and the length they give), then echoes.
async fn header_backend() -> (std::net::SocketAddr, mpsc::UnboundedReceiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                if let Some(header) = read_header(&mut stream).await {
                    let _ = tx.send(header);
                    let (mut r, mut w) = stream.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
            });
        }
    });
    (addr, rx)
}

async fn read_header(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut header = vec![stream.read_u8().await.ok()?];
    if header[0] == b'P' {
        while !header.ends_with(b"\r\n") && header.len() < 108 {
            header.push(stream.read_u8().await.ok()?);
        }
    } else {
        header.resize(16, 0);
        stream.read_exact(&mut header[1..]).await.ok()?;
        let length = usize::from(u16::from_be_bytes([header[14], header[15]]));
        header.resize(16 + length, 0);
        stream.read_exact(&mut header[16..]).await.ok()?;
    }
    Some(header)
}

/// One echo through wssify over the UNIX socket; the header the backend read.
async fn header_through(
    w: &mut Wssify,
    path: &Path,
    headers: &mut mpsc::UnboundedReceiver<Vec<u8>>,
) -> Vec<u8> {
    let mut tls = unix_tls(w, path).await;
    tls.write_all(b"ping").await.unwrap();
    let mut back = [0u8; 4];
    tls.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"ping", "the header did not leak into the echo");
    headers.recv().await.expect("the backend read a header")
}

#[tokio::test]
async fn the_proxy_header_of_a_unix_client_says_it_has_no_address() {
    bounded(WAIT, async {
        let dir = tempfile::tempdir().unwrap();
        let (backend, mut headers) = header_backend().await;
        let backend = backend.to_string();

        // v1: the specification's UNKNOWN line.
        let path = dir.path().join("v1.sock");
        let mut w = Wssify::start(&[
            "--listen",
            &listen(&path),
            "--to",
            &backend,
            "--proxy-protocol",
            "v1",
        ])
        .await;
        let header = header_through(&mut w, &path, &mut headers).await;
        assert_eq!(header, b"PROXY UNKNOWN\r\n");
        let HeaderResult::V1(Ok(parsed)) = HeaderResult::parse(&header) else {
            panic!("ppp cannot read {header:?}");
        };
        assert_eq!(parsed.addresses, ppp::v1::Addresses::Unknown);
        drop(w);

        // v2: LOCAL with AF_UNSPEC, and still the TLS facts as TLVs.
        let path = dir.path().join("v2.sock");
        let mut w = Wssify::start(&[
            "--listen",
            &listen(&path),
            "--to",
            &backend,
            "--proxy-protocol",
            "v2",
        ])
        .await;
        let header = header_through(&mut w, &path, &mut headers).await;
        let HeaderResult::V2(Ok(parsed)) = HeaderResult::parse(&header) else {
            panic!("ppp cannot read {header:?}");
        };
        assert_eq!(parsed.command, V2Command::Local);
        assert_eq!(parsed.addresses, V2Addresses::Unspecified);
        // AF_UNSPEC has no address bytes, so the TLVs follow the 16 fixed
        // bytes at once (ppp counts them as the address block it ignores,
        // as the specification tells a receiver of LOCAL to).
        let mut tlvs = Vec::new();
        let mut rest = &header[16..];
        while let [kind, high, low, more @ ..] = rest {
            let length = usize::from(u16::from_be_bytes([*high, *low]));
            assert!(length <= more.len(), "a TLV runs past the header");
            tlvs.push((*kind, more[..length].to_vec()));
            rest = &more[length..];
        }
        assert!(rest.is_empty(), "{header:?}");
        assert!(tlvs.contains(&(0x02, b"localhost".to_vec())), "{tlvs:?}");
        assert!(
            tlvs.iter().any(|(kind, _)| *kind == 0x20),
            "no SSL TLV: {tlvs:?}"
        );

        // A TCP client of the same process still gets its addresses.
        let mut tcp = dev_connect(&mut w).await;
        let me = tcp.get_ref().0.local_addr().unwrap();
        tcp.write_all(b"ping").await.unwrap();
        let mut back = [0u8; 4];
        tcp.read_exact(&mut back).await.unwrap();
        let header = headers.recv().await.unwrap();
        let HeaderResult::V2(Ok(parsed)) = HeaderResult::parse(&header) else {
            panic!("ppp cannot read {header:?}");
        };
        let V2Addresses::IPv4(a) = parsed.addresses else {
            panic!("addresses {:?}", parsed.addresses);
        };
        assert_eq!(a.source_port, me.port());
    })
    .await;
}

#[tokio::test]
async fn max_conns_per_ip_does_not_count_unix_clients() {
    bounded(WAIT, async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tls.sock");
        let backend = echo_backend().await;
        let mut w = Wssify::start(&[
            "--listen",
            &listen(&path),
            "--to",
            &backend.to_string(),
            "--max-conns-per-ip",
            "1",
        ])
        .await;
        let config = pinned_client(&w.fingerprint().await);
        let mut open = Vec::new();
        for n in 0..3u8 {
            let mut tls = unix_tls_with(config.clone(), &path).await;
            tls.write_all(&[n]).await.unwrap();
            let mut back = [0u8; 1];
            tls.read_exact(&mut back).await.unwrap();
            assert_eq!(back, [n]);
            open.push(tls);
        }
        assert!(!w.log().contains("refused:"), "{}", w.log());
    })
    .await;
}

#[tokio::test]
async fn a_socket_a_running_wssify_serves_is_named_and_only_warned_about_by_check() {
    bounded(WAIT, async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tls.sock");
        let backend = echo_backend().await.to_string();
        let w = Wssify::start(&["--listen", &listen(&path), "--to", &backend]).await;
        let socket = listen(&path);
        let pid = w.pid();
        let (code, line, check_code, check) = tokio::task::spawn_blocking(move || {
            let (code, line) =
                refused_start(&["--listen", &socket, "--to", &backend, "--self-signed"]);
            let (check_code, check) = run_to_exit(&[
                "--check",
                "--listen",
                &socket,
                "--to",
                &backend,
                "--self-signed",
            ]);
            (code, line, check_code, check)
        })
        .await
        .unwrap();
        assert_eq!(code, 1, "{line}");
        assert!(
            line.ends_with(&format!(
                "{} is in use: wssify (pid {pid}) accepts connections on it; stop it or choose another path",
                path.display()
            )),
            "{line}"
        );
        // --check: most likely the wssify these flags replace.
        assert!(
            check.contains("a start succeeds once it has stopped"),
            "{check}"
        );
        assert_eq!(check_code, 0, "{check}");
        // The running one keeps its socket.
        assert!(path.exists());
        drop(w);
    })
    .await;
}
