//! Limits on what hostile or broken clients can hold: `--max-handshakes`
//! (handshakes in progress; the rest wait in the kernel's accept queue),
//! `--max-conns-per-ip` (the rest are closed at once), and running out of
//! descriptors (a warning, a back-off, and recovery).

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn past_max_handshakes_clients_wait_until_a_handshake_ends_not_a_connection() {
    bounded(WAIT * 3, async {
        let backend = echo_backend().await;
        let mut w = Wssify::start(&[
            "--to",
            &backend.to_string(),
            "--max-handshakes",
            "2",
            // The silent clients below must hold their slots for the test.
            "--handshake-timeout",
            "1h",
        ])
        .await;
        let config = pinned_client(&w.fingerprint().await);

        // Two clients send a whole ClientHello and stall there: both
        // slots are taken by handshakes under way.
        let silent = stalled_after_hello(w.addr).await;
        let _silent_too = stalled_after_hello(w.addr).await;
        let mut third = tokio::spawn(tls_connect(w.addr, config.clone(), "localhost"));
        // With both slots held, the accept loop stops after taking the
        // third (which waits inside for a slot) and says so once.
        w.wait_for_log("handshake limit reached (--max-handshakes 2)")
            .await;
        // Nothing can complete it while both slots are held; a bounded
        // look shows it pending (without the limit it completes at once).
        assert!(
            tokio::time::timeout(Duration::from_millis(500), &mut third)
                .await
                .is_err(),
            "a third handshake completed while both slots were held; log:\n{}",
            w.log()
        );

        // One silent client leaves: its slot goes to the third.
        drop(silent);
        let mut third = tokio::time::timeout(WAIT, third)
            .await
            .expect("the third handshake completes once a slot is free")
            .unwrap()
            .expect("third handshake");
        echo(&mut third).await;

        // The third's slot was given back when its handshake ended, not
        // when it closes: with it open and one silent client left, a
        // fourth still gets through.
        let mut fourth = session(&w, config.clone()).await;
        echo(&mut third).await;
        echo(&mut fourth).await;
    })
    .await;
}

/// A client that sends a whole ClientHello, waits for the server's answer,
/// and then sends nothing.
async fn stalled_after_hello(addr: std::net::SocketAddr) -> TcpStream {
    let hello = client_hello();
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(&hello).await.unwrap();
    // The server's first flight: its handshake (and its slot) is under way.
    let mut answer = [0u8; 1];
    tokio::time::timeout(WAIT, tcp.read_exact(&mut answer))
        .await
        .expect("the server answers the hello within the bound")
        .expect("the server's first flight");
    tcp
}

#[tokio::test]
async fn clients_that_stall_before_their_hello_is_whole_hold_no_handshake_slot() {
    bounded(WAIT * 3, async {
        let backend = echo_backend().await;
        let mut w = Wssify::start(&[
            "--to",
            &backend.to_string(),
            "--max-handshakes",
            "2",
            "--handshake-timeout",
            "1h",
        ])
        .await;
        let config = pinned_client(&w.fingerprint().await);
        // Ten clients: some send nothing, some the first bytes of a
        // handshake record, and stall.
        let mut stalled = Vec::new();
        for i in 0..10 {
            let mut tcp = TcpStream::connect(w.addr).await.unwrap();
            if i % 2 == 1 {
                tcp.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
            }
            stalled.push(tcp);
        }
        // Real clients are still served (with the slots held by the
        // stalled ones, their handshakes would wait for an hour).
        let mut first = session(&w, config.clone()).await;
        let mut second = session(&w, config.clone()).await;
        echo(&mut first).await;
        echo(&mut second).await;
        drop(stalled);
    })
    .await;
}

#[tokio::test]
async fn over_max_conns_per_ip_a_connection_is_closed_at_once_and_logged() {
    bounded(WAIT * 3, async {
        let backend = echo_backend().await;
        let mut w = Wssify::start(&[
            "--to",
            &backend.to_string(),
            "--max-conns-per-ip",
            "2",
            // Anything that closes the third must be the per-IP limit.
            "--handshake-timeout",
            "1h",
        ])
        .await;
        let config = pinned_client(&w.fingerprint().await);

        let first = session(&w, config.clone()).await;
        let mut second = session(&w, config.clone()).await;

        // The third from 127.0.0.1 is closed before it sends a byte: the
        // reset may come before connect() even returns.
        match TcpStream::connect(w.addr).await {
            Ok(mut third) => {
                let mut byte = [0u8; 1];
                let read = tokio::time::timeout(WAIT, third.read(&mut byte))
                    .await
                    .expect("the third connection is closed at once");
                assert!(
                    matches!(read, Ok(0) | Err(_)),
                    "the third connection got {read:?}"
                );
            }
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        }
        let line = w.wait_for_log("--max-conns-per-ip 2").await;
        assert!(
            line.contains("peer=127.0.0.1:")
                && line.contains("refused: 2 connections already open from 127.0.0.1"),
            "{line}"
        );
        // No TLS for it, and the other two carry on.
        echo(&mut second).await;

        // One of the two closes; once its line is written a new client
        // gets its place. (The place is given back just after the line:
        // a client that races it is refused, and the next one is served.)
        drop(first);
        w.wait_for_log("to_backend=").await;
        let mut served = None;
        for _ in 0..50 {
            if let Ok(Ok(mut tls)) =
                tokio::time::timeout(WAIT, tls_connect(w.addr, config.clone(), "localhost")).await
            {
                let msg = b"hello";
                let mut back = [0u8; 5];
                if tls.write_all(msg).await.is_ok()
                    && tokio::time::timeout(WAIT, tls.read_exact(&mut back))
                        .await
                        .is_ok_and(|r| r.is_ok())
                {
                    served = Some(tls);
                    break;
                }
            }
        }
        assert!(served.is_some(), "no new client served; log:\n{}", w.log());
        echo(&mut second).await;
    })
    .await;
}

#[tokio::test]
async fn out_of_descriptors_warns_once_and_says_how_long_when_it_recovers() {
    bounded(WAIT * 3, async {
        let backend = echo_backend().await;
        // A hard open-file limit that wssify cannot raise, and a connection
        // limit above what it carries: accept() must fail with EMFILE.
        let exe = env!("CARGO_BIN_EXE_wssify");
        let script = format!(
            "ulimit -n 48 && exec {exe} --listen 127.0.0.1:0 --to {backend} --max-conns 1000 --handshake-timeout 1h"
        );
        let mut w = Wssify::start_raw_command("sh", &["-c", &script]).await;
        let config = pinned_client(&w.fingerprint().await);
        let mut hogs = Vec::new();
        for _ in 0..60 {
            match TcpStream::connect(w.addr).await {
                Ok(s) => hogs.push(s),
                Err(_) => break,
            }
        }
        let warning = w.wait_for_log("cannot accept").await;
        assert!(
            warning.contains("Too many open files") && warning.contains("open-file limit"),
            "{warning}"
        );
        drop(hogs);
        let _tls = session(&w, config).await;
        let recovered = w.wait_for_log("accepting again").await;
        let failures: u64 = recovered
            .split("after ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no count of failed accepts in: {recovered}"));
        assert!(failures >= 1, "{recovered}");
        assert!(recovered.contains("failed accepts over "), "{recovered}");
        // However many retries failed, the warning was written once.
        assert_eq!(w.lines_with("cannot accept").len(), 1, "{}", w.log());
    })
    .await;
}

#[tokio::test]
async fn low_priority_handshakes_run_on_idle_class_threads_and_serve_as_usual() {
    bounded(WAIT * 3, async {
        let backend = echo_backend().await;
        let mut w = Wssify::start(&[
            "--to",
            &backend.to_string(),
            "--handshake-priority",
            "low",
            "--threads",
            "2",
        ])
        .await;
        let config = pinned_client(&w.fingerprint().await);
        // Handshakes on the other threads, then bytes on the connection's
        // own runtime: both directions work, for more than one client.
        let mut first = session(&w, config.clone()).await;
        let mut second = session(&w, config.clone()).await;
        echo(&mut first).await;
        echo(&mut second).await;
        // The handshake threads are in SCHED_IDLE (policy 5), the others not.
        let mut idle_class = 0;
        let mut others = 0;
        for task in std::fs::read_dir(format!("/proc/{}/task", w.pid())).unwrap() {
            let dir = task.unwrap().path();
            let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
            let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
            // Fields after the command name, which is in parentheses.
            let after = stat.rsplit_once(") ").map_or("", |(_, rest)| rest);
            // policy is field 41 of stat, the 39th after the name.
            let policy: u32 = after
                .split_whitespace()
                .nth(38)
                .and_then(|p| p.parse().ok())
                .unwrap_or(u32::MAX);
            if comm.trim() == "wssify-handshak" {
                assert_eq!(policy, 5, "a handshake thread is not SCHED_IDLE");
                idle_class += 1;
            } else {
                assert_ne!(policy, 5, "{} is SCHED_IDLE", comm.trim());
                others += 1;
            }
        }
        assert_eq!(idle_class, 2, "two handshake threads for --threads 2");
        assert!(others > 0);
    })
    .await;
}
