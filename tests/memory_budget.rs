//! The memory budget and the stall timeout, end to end: clients that stop
//! reading while their backends push cannot grow wssify past
//! `--max-memory`, lose no byte once they read again, and do not keep a new
//! client from being served; a peer that takes nothing for the stall
//! timeout is closed.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Wssify, bounded, dev_connect, pinned_client, tls_connect};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A backend that answers its client's first byte: `P` pushes `push` bytes
/// of a counting pattern then closes its side; `E` echoes; `S` reads
/// nothing and sends nothing (a stalled backend).
async fn push_backend(push: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut mode = [0u8; 1];
                if stream.read_exact(&mut mode).await.is_err() {
                    return;
                }
                match mode[0] {
                    b'P' => {
                        let chunk: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
                        let mut left = push;
                        while left > 0 {
                            let n = left.min(chunk.len());
                            // Every chunk starts the pattern over at 0, so
                            // the reader can check any prefix of it.
                            if stream.write_all(&chunk[..n]).await.is_err() {
                                return;
                            }
                            left -= n;
                        }
                        let _ = stream.shutdown().await;
                        let mut sink = Vec::new();
                        let _ = stream.read_to_end(&mut sink).await;
                    }
                    b'E' => {
                        let (mut r, mut w) = stream.split();
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                        let _ = w.shutdown().await;
                    }
                    _ => {
                        // Hold the connection open without reading.
                        let _keep = stream;
                        std::future::pending::<()>().await;
                    }
                }
            });
        }
    });
    addr
}

/// Bytes each stalled client asks its backend for: more than the kernel's
/// socket buffers hold, so the rest waits in wssify or in the backend.
const PUSH: usize = 4 << 20;

/// The resident set of a process, in bytes.
fn rss(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS in /proc/PID/status");
    let kib: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// A TLS client with a small receive buffer, so that when it stops
/// reading the kernel holds little for it and the rest waits in wssify.
async fn small_window_connect(
    addr: SocketAddr,
    config: std::sync::Arc<rustls::ClientConfig>,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .expect("handshake")
}

/// Checks that `data` is the push pattern: 64 KiB chunks counting mod 251.
fn is_pattern(data: &[u8]) -> bool {
    data.iter()
        .enumerate()
        .all(|(i, b)| *b == ((i % (64 * 1024)) % 251) as u8)
}

/// Starts wssify with a budget in front of a push backend, opens `n`
/// clients that ask for a push and do not read, and returns the largest
/// resident set seen while the pushes stall, over the idle base, with the
/// clients (to be read later).
/// `enough`: stop sampling once the peak is past it (the control waits
/// for growth, up to 30 s on a busy machine); `usize::MAX` samples the
/// full 3 s.
async fn stalled_clients(
    budget: &str,
    n: usize,
    push: usize,
    enough: usize,
) -> (
    Wssify,
    SocketAddr,
    usize,
    Vec<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
) {
    let backend = push_backend(push).await;
    let mut w = Wssify::start(&[
        "--to",
        &backend.to_string(),
        "--max-memory",
        budget,
        "--stall-timeout",
        "0",
        // More than a 2MiB budget would allow by default (64): the test is
        // about what the budget does when connections outnumber it.
        "--max-conns",
        "1000",
    ])
    .await;
    let config = pinned_client(&w.fingerprint().await);
    let mut clients = Vec::new();
    for _ in 0..n {
        clients.push(small_window_connect(w.addr, config.clone()).await);
    }
    // Every connection established and idle: the base the budget adds to.
    let mut probe = dev_connect(&mut w).await;
    probe.write_all(b"E").await.unwrap();
    let mut one = [0u8; 1];
    probe.write_all(b"x").await.unwrap();
    probe.read_exact(&mut one).await.unwrap();
    let base = rss(w.pid());
    for client in &mut clients {
        client.write_all(b"P").await.unwrap();
        client.flush().await.unwrap();
    }
    // Sample while the pushes fill every buffer they can and stall.
    let mut peak = 0;
    let samples = if enough == usize::MAX { 60 } else { 600 };
    for _ in 0..samples {
        peak = peak.max(rss(w.pid()).saturating_sub(base));
        if peak > enough {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A new client is served meanwhile.
    let mut fresh = tls_connect(w.addr, config.clone(), "localhost")
        .await
        .expect("a new client's handshake while the budget is spent");
    fresh.write_all(b"Ehello").await.unwrap();
    let mut answer = [0u8; 5];
    fresh.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"hello");
    peak = peak.max(rss(w.pid()).saturating_sub(base));
    drop(fresh);
    drop(probe);
    (w, backend, peak, clients)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_stop_reading_cannot_grow_the_process_past_the_budget() {
    bounded(Duration::from_secs(120), async {
        const N: usize = 150;
        const BUDGET: usize = 2 << 20;
        let (w, _backend, peak, clients) = stalled_clients("2MiB", N, PUSH, usize::MAX).await;
        // Room for what the budget does not count: the allocator's slack
        // and rustls' own records in flight.
        assert!(
            peak <= BUDGET + BUDGET / 2,
            "resident set grew by {peak} bytes over the idle base with a 2MiB budget; log:\n{}",
            w.log()
        );
        // Every byte arrives once the readers resume.
        let readers = clients.into_iter().map(|mut client| {
            tokio::spawn(async move {
                let mut got = Vec::with_capacity(PUSH);
                client.read_to_end(&mut got).await.map(|_| got)
            })
        });
        for reader in readers {
            let got = reader.await.unwrap().expect("read the push");
            assert_eq!(got.len(), PUSH);
            assert!(is_pattern(&got), "push bytes arrived altered");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_tight_budget_the_same_clients_do_grow_it() {
    // The control for the test above: the same stalled clients with a
    // budget that never binds pin far more than 2MiB, so the bound above
    // is the budget's doing.
    bounded(Duration::from_secs(120), async {
        const GROWN: usize = 3 << 20;
        let (w, _backend, peak, _clients) = stalled_clients("1GiB", 150, PUSH, GROWN).await;
        assert!(
            peak > GROWN,
            "only {peak} bytes pinned without a budget; log:\n{}",
            w.log()
        );
    })
    .await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_at_the_stall_timeout() {
    bounded(Duration::from_secs(60), async {
        let backend = push_backend(256 << 20).await;
        let mut w = Wssify::start(&["--to", &backend.to_string(), "--stall-timeout", "1s"]).await;
        let mut client = dev_connect(&mut w).await;
        client.write_all(b"P").await.unwrap();
        client.flush().await.unwrap();
        let line = w.wait_for_log("end=\"client stalled").await;
        assert!(line.contains("for 1s"), "{line}");
        // The healthy ones around it are untouched.
        let mut other = dev_connect(&mut w).await;
        other.write_all(b"Eping").await.unwrap();
        let mut answer = [0u8; 4];
        other.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"ping");
    })
    .await;
}

#[tokio::test]
async fn a_backend_that_stops_reading_is_closed_at_the_stall_timeout() {
    bounded(Duration::from_secs(60), async {
        let backend = push_backend(0).await;
        let mut w = Wssify::start(&["--to", &backend.to_string(), "--stall-timeout", "1s"]).await;
        let client = dev_connect(&mut w).await;
        let (mut reader, mut writer) = tokio::io::split(client);
        let upload = tokio::spawn(async move {
            writer.write_all(b"S").await?;
            let chunk = vec![7u8; 64 * 1024];
            loop {
                writer.write_all(&chunk).await?;
            }
            #[allow(unreachable_code)]
            Ok::<(), std::io::Error>(())
        });
        let line = w.wait_for_log("end=\"backend stalled").await;
        assert!(line.contains("for 1s"), "{line}");
        // The client hears about it: its connection ends.
        let mut sink = Vec::new();
        let _ = reader.read_to_end(&mut sink).await;
        upload.abort();
    })
    .await;
}

#[tokio::test]
async fn a_slow_but_steady_reader_is_never_taken_for_stalled() {
    bounded(Duration::from_secs(60), async {
        let backend = push_backend(1 << 20).await;
        let mut w = Wssify::start(&["--to", &backend.to_string(), "--stall-timeout", "1s"]).await;
        let mut client = dev_connect(&mut w).await;
        client.write_all(b"P").await.unwrap();
        client.flush().await.unwrap();
        // 1 MiB at about 16 KiB per 20 ms: it takes over a second, with
        // the client always taking something well within the timeout.
        let mut got = Vec::new();
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            let n = client.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&chunk[..n]);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(got.len(), 1 << 20);
        drop(client);
        let line = w.wait_for_log("end=").await;
        assert!(!line.contains("stalled"), "{line}");
    })
    .await;
}
