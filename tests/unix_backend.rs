//! `--to unix:/path`: a backend on a UNIX socket, through the real binary
//! with real sockets in a temporary directory: a wss round trip, the PROXY
//! v2 header carrying the TCP client's addresses, failover from a missing
//! socket to a live one, TCP and UNIX backends side by side, and
//! `--check` naming a missing socket, a file that is not one, or a socket
//! file nothing listens on.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::*;
use ppp::HeaderResult;
use ppp::v2::Addresses as V2Addresses;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::mpsc;

/// A UNIX echo backend at `dir/name` that first writes `tag` (if any).
fn unix_backend(dir: &Path, name: &str, tag: Option<u8>) -> PathBuf {
    let path = dir.join(name);
    let listener = UnixListener::bind(&path).unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Some(tag) = tag
                    && s.write_all(&[tag]).await.is_err()
                {
                    return;
                }
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    path
}

fn to(path: &Path) -> String {
    format!("unix:{}", path.display())
}

/// A TLS client of wssify's development certificate.
async fn client(w: &mut Wssify) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let config: Arc<rustls::ClientConfig> = pinned_client(&w.fingerprint().await);
    tls_connect(w.addr, config, "localhost")
        .await
        .expect("TLS handshake")
}

#[tokio::test]
async fn a_wss_round_trip_reaches_a_unix_socket_backend() {
    bounded(WAIT, async {
        let dir = tempfile::tempdir().unwrap();
        let path = unix_backend(dir.path(), "echo.sock", None);
        let mut w = Wssify::start(&["--to", &to(&path)]).await;
        assert!(
            w.log().contains(&format!("-> backend {}", to(&path))),
            "{}",
            w.log()
        );
        let mut tls = client(&mut w).await;
        tls.write_all(b"ping over a UNIX socket").await.unwrap();
        let mut back = [0u8; 23];
        tls.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"ping over a UNIX socket");
        tls.shutdown().await.unwrap();
        let line = w.wait_for_log("to_backend=23B").await;
        assert!(line.contains("to_client=23B"), "{line}");
        assert!(
            line.contains(&format!(" backend={} to_backend=", to(&path))),
            "{line}"
        );
    })
    .await;
}

/// Reads a v2 header: 16 bytes, then the length they give.
async fn read_v2_header(stream: &mut (impl AsyncRead + Unpin)) -> Option<Vec<u8>> {
    let mut header = vec![0u8; 16];
    stream.read_exact(&mut header).await.ok()?;
    let length = usize::from(u16::from_be_bytes([header[14], header[15]]));
    header.resize(16 + length, 0);
    stream.read_exact(&mut header[16..]).await.ok()?;
    Some(header)
}

#[tokio::test]
async fn the_proxy_header_comes_first_on_a_unix_backend_with_the_tcp_clients_addresses() {
    bounded(WAIT, async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let (tx, mut headers) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    // The start-up check sends nothing and is ignored.
                    if let Some(header) = read_v2_header(&mut s).await {
                        let _ = tx.send(header);
                        let (mut r, mut w) = s.split();
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                    }
                });
            }
        });
        let mut w = Wssify::start(&["--to", &to(&path), "--proxy-protocol", "v2"]).await;
        let mut tls = client(&mut w).await;
        let me = tls.get_ref().0.local_addr().unwrap();
        tls.write_all(b"ping").await.unwrap();
        let mut back = [0u8; 4];
        tls.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"ping", "the header did not leak into the echo");
        let header = headers.recv().await.expect("the backend read a header");
        let HeaderResult::V2(Ok(parsed)) = HeaderResult::parse(&header) else {
            panic!("ppp cannot read {header:?}");
        };
        let V2Addresses::IPv4(a) = parsed.addresses else {
            panic!("addresses {:?}", parsed.addresses);
        };
        assert_eq!(
            (a.source_address, a.source_port),
            (
                match me.ip() {
                    std::net::IpAddr::V4(ip) => ip,
                    other => panic!("{other}"),
                },
                me.port()
            )
        );
        assert_eq!(a.destination_port, w.addr.port());
    })
    .await;
}

#[tokio::test]
async fn a_missing_socket_fails_over_to_a_live_one() {
    bounded(WAIT, async {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.sock");
        let live = unix_backend(dir.path(), "live.sock", Some(b'L'));
        let mut w = Wssify::start(&["--to", &to(&missing), "--to", &to(&live)]).await;
        for _ in 0..4 {
            let mut tls = client(&mut w).await;
            let mut tag = [0u8; 1];
            tls.read_exact(&mut tag)
                .await
                .unwrap_or_else(|e| panic!("no backend answered: {e}; log:\n{}", w.log()));
            assert_eq!(tag[0], b'L');
        }
        let line = w
            .wait_for_log(&format!("backend {} down", to(&missing)))
            .await;
        assert!(
            line.contains(&format!("no socket at {}", missing.display()))
                && line.contains("start the backend, or fix the path in --to"),
            "{line}"
        );
    })
    .await;
}

#[tokio::test]
async fn tcp_and_unix_backends_share_the_clients() {
    bounded(WAIT, async {
        let dir = tempfile::tempdir().unwrap();
        let unix = unix_backend(dir.path(), "u.sock", Some(b'U'));
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp_addr = tcp.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = tcp.accept().await {
                let _ = s.write_all(b"T").await;
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let mut w = Wssify::start(&["--to", &tcp_addr.to_string(), "--to", &to(&unix)]).await;
        let mut seen = Vec::new();
        for _ in 0..4 {
            let mut tls = client(&mut w).await;
            let mut tag = [0u8; 1];
            tls.read_exact(&mut tag).await.unwrap();
            seen.push(tag[0]);
        }
        seen.sort_unstable();
        assert_eq!(seen, b"TTUU", "round-robin over both");
    })
    .await;
}

#[test]
fn check_names_a_missing_socket_a_file_that_is_not_one_and_a_stale_one() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.sock");
    let (code, out) = run_to_exit(&["--check", "--listen", "127.0.0.1:0", "--to", &to(&missing)]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains(&format!("backend {} (--to) is unreachable", to(&missing)))
            && out.contains(&format!("no socket at {}", missing.display())),
        "{out}"
    );
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"").unwrap();
    let (code, out) = run_to_exit(&["--check", "--listen", "127.0.0.1:0", "--to", &to(&file)]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains(&format!("{} is not a socket", file.display())),
        "{out}"
    );
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let (code, out) = run_to_exit(&["--check", "--listen", "127.0.0.1:0", "--to", &to(&stale)]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains(&format!("nothing listens on {}", stale.display())),
        "{out}"
    );
}
