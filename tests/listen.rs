//! Listening: bare ports on every interface, several listeners, and accept
//! errors that must neither crash nor spin the process.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn echo_through(addr: SocketAddr, fingerprint: &str) {
    let mut tls = tls_connect(addr, pinned_client(fingerprint), "localhost")
        .await
        .unwrap_or_else(|e| panic!("handshake via {addr}: {e}"));
    tls.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    tls.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
}

#[tokio::test]
async fn a_bare_port_serves_ipv4_and_ipv6() {
    bounded(WAIT, async {
        let backend = echo_backend().await;
        let mut w = Wssify::start_raw(&["--listen", "0", "--to", &backend.to_string()]).await;
        let line = w.wait_for_log("listening on").await;
        let fp = w.fingerprint().await;
        let port = w.addr.port();
        echo_through(SocketAddr::from(([127, 0, 0, 1], port)), &fp).await;
        if line.contains("(IPv4 and IPv6)") {
            echo_through(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)), &fp).await;
        } else {
            assert!(line.contains("IPv4 only"), "{line}");
        }
    })
    .await;
}

#[tokio::test]
async fn every_listen_flag_gets_a_listener() {
    bounded(WAIT, async {
        let backend = echo_backend().await;
        let mut w = Wssify::start_raw(&[
            "--listen",
            "127.0.0.1:0",
            "--listen",
            "127.0.0.1:0",
            "--to",
            &backend.to_string(),
        ])
        .await;
        let fp = w.fingerprint().await;
        w.wait_for_log("limits:").await;
        let addrs: Vec<SocketAddr> = w
            .lines_with("listening on ")
            .iter()
            .map(|l| {
                l.split("listening on ")
                    .nth(1)
                    .unwrap()
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect();
        assert_eq!(addrs.len(), 2, "{}", w.log());
        assert_ne!(addrs[0], addrs[1]);
        for addr in addrs {
            echo_through(addr, &fp).await;
        }
    })
    .await;
}

/// CPU time (user + system) the process has used, from /proc.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses).
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10) // USER_HZ is 100 on Linux
}

#[tokio::test]
async fn running_out_of_descriptors_backs_off_without_spinning_and_recovers() {
    bounded(Duration::from_secs(40), async {
        let backend = echo_backend().await;
        // A hard open-file limit of 48 that wssify cannot raise, and a
        // connection limit above what that can carry: accept must hit EMFILE.
        let exe = env!("CARGO_BIN_EXE_wssify");
        let script = format!(
            "ulimit -n 48 && exec {exe} --listen 127.0.0.1:0 --to {backend} --max-conns 1000"
        );
        let mut w = Wssify::start_raw_command("sh", &["-c", &script]).await;
        let fp = w.fingerprint().await;
        let mut hogs = Vec::new();
        for _ in 0..60 {
            match TcpStream::connect(w.addr).await {
                Ok(s) => hogs.push(s),
                Err(_) => break,
            }
        }
        w.wait_for_log("cannot accept").await;
        let before = cpu_time(w.pid());
        let wall = tokio::time::Instant::now();
        // Stay out of descriptors for a while; a busy loop would burn a core.
        let _ = tokio::time::timeout(Duration::from_secs(2), std::future::pending::<()>()).await;
        let used = cpu_time(w.pid()) - before;
        assert!(
            used < wall.elapsed() / 4,
            "accept loop spun: {used:?} of CPU in {:?}",
            wall.elapsed()
        );
        drop(hogs);
        // Descriptors come back as the silent clients are dropped.
        echo_through(w.addr, &fp).await;
    })
    .await;
}
