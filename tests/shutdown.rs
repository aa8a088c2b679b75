//! Graceful shutdown of the real binary on real signals.

mod common;

use std::os::fd::{FromRawFd, OwnedFd};
use std::process::Stdio;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

#[tokio::test]
async fn sigterm_lets_a_streaming_connection_finish_refuses_new_ones_and_exits_0() {
    bounded(WAIT, async {
        let backend = echo_backend().await;
        let mut w = Wssify::start(&["--to", &backend.to_string(), "--drain-timeout", "15s"]).await;
        let mut tls = dev_connect(&mut w).await;
        tls.write_all(b"before").await.unwrap();
        let mut buf = [0u8; 6];
        tls.read_exact(&mut buf).await.unwrap();

        w.signal("TERM");
        let line = w.wait_for_log("stopped accepting").await;
        // Not run from a terminal: no word of Ctrl-C.
        assert!(
            line.ends_with("stopped accepting; waiting up to 15s for 1 open connection to finish"),
            "{line}"
        );
        let refused = TcpStream::connect(w.addr).await;
        assert!(
            refused.is_err(),
            "a new connection was accepted while draining"
        );

        // The open connection keeps streaming after the signal.
        let chunk = [7u8; 16 * 1024];
        let mut back = vec![0u8; chunk.len()];
        for _ in 0..64 {
            tls.write_all(&chunk).await.unwrap();
            tls.read_exact(&mut back).await.unwrap();
            assert_eq!(back, chunk);
        }
        tls.shutdown().await.unwrap();
        let rest = read_to_end(&mut tls).await.unwrap();
        assert!(rest.is_empty());

        assert_eq!(w.wait_exit(WAIT).await, Some(0), "log:\n{}", w.log());
        let line = w.wait_for_log("end=\"client closed\"").await;
        assert!(
            line.contains(&format!("to_backend={}B", 6 + 64 * 16 * 1024)),
            "{line}"
        );
    })
    .await;
}

#[tokio::test]
async fn drain_timeout_closes_what_remains_and_exits_0() {
    bounded(WAIT, async {
        let backend = echo_backend().await;
        let mut w = Wssify::start(&["--to", &backend.to_string(), "--drain-timeout", "1s"]).await;
        let mut tls = dev_connect(&mut w).await;
        tls.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        tls.read_exact(&mut one).await.unwrap();

        let signalled = Instant::now();
        w.signal("INT");
        // The idle connection is closed (close_notify) when the drain runs out.
        let rest = read_to_end(&mut tls).await.unwrap_or_default();
        assert!(rest.is_empty());
        let waited = signalled.elapsed();
        assert!(
            waited >= Duration::from_millis(900),
            "closed before the drain timeout: {waited:?}"
        );
        assert_eq!(w.wait_exit(WAIT).await, Some(0), "log:\n{}", w.log());
        w.wait_for_log("end=\"drained at shutdown\"").await;
    })
    .await;
}

#[tokio::test]
async fn a_second_signal_exits_at_once() {
    bounded(WAIT, async {
        let backend = echo_backend().await;
        let mut w = Wssify::start(&["--to", &backend.to_string(), "--drain-timeout", "1h"]).await;
        let _open = dev_connect(&mut w).await;
        w.signal("TERM");
        w.wait_for_log("stopped accepting").await;
        w.signal("TERM");
        // Well before the hour-long drain: the bound of this test is WAIT.
        assert_eq!(w.wait_exit(WAIT).await, Some(1), "log:\n{}", w.log());
        w.wait_for_log("exiting now").await;
    })
    .await;
}

#[tokio::test]
async fn with_nothing_open_shutdown_is_immediate() {
    bounded(WAIT, async {
        let backend = echo_backend().await;
        let mut w = Wssify::start(&["--to", &backend.to_string()]).await;
        w.signal("TERM");
        assert_eq!(w.wait_exit(WAIT).await, Some(0), "log:\n{}", w.log());
    })
    .await;
}

/// The end line of the connection from this client port.
async fn end_line(w: &mut Wssify, port: u16) -> String {
    let peer = format!("peer=127.0.0.1:{port} ");
    w.wait_for_log_matching(|l| l.contains(&peer) && l.contains(" end=\""))
        .await
        .unwrap_or_else(|| panic!("no end line for {peer}; log:\n{}", w.log()))
}

/// Waits until wssify has accepted the connection from this client port.
async fn accepted(w: &mut Wssify, port: u16) {
    let peer = format!("peer=127.0.0.1:{port} ");
    w.wait_for_log_matching(|l| l.contains(&peer) && l.contains(" accepted"))
        .await
        .unwrap_or_else(|| panic!("{peer} not accepted; log:\n{}", w.log()));
}

#[tokio::test]
async fn a_second_signal_logs_an_end_line_for_every_connection_it_cuts() {
    bounded(WAIT, async {
        let backend = echo_backend().await;
        let mut w = Wssify::start(&["--to", &backend.to_string(), "--drain-timeout", "1h"]).await;
        // One client exchanging bytes, one still in its handshake.
        let mut tls = dev_connect(&mut w).await;
        let served = tls.get_ref().0.local_addr().unwrap().port();
        tls.write_all(b"ping").await.unwrap();
        let mut back = [0u8; 4];
        tls.read_exact(&mut back).await.unwrap();
        let mut opening = TcpStream::connect(w.addr).await.unwrap();
        let handshaking = opening.local_addr().unwrap().port();
        opening
            .write_all(&[0x16, 0x03, 0x01, 0x01, 0x00])
            .await
            .unwrap();
        accepted(&mut w, handshaking).await;

        w.signal("TERM");
        let line = w.wait_for_log("stopped accepting").await;
        assert!(line.contains("for 2 open connections to finish"), "{line}");
        w.signal("TERM");
        assert_eq!(w.wait_exit(WAIT).await, Some(1), "log:\n{}", w.log());

        let line = end_line(&mut w, served).await;
        for field in [
            "sni=localhost",
            "tls=TLSv1.3",
            "to_backend=4B",
            "to_client=4B",
            "duration=",
            "end=\"cut at shutdown\"",
        ] {
            assert!(line.contains(field), "{field} in: {line}");
        }
        assert!(line.contains("conn="), "{line}");
        let line = end_line(&mut w, handshaking).await;
        assert!(
            line.contains("duration=") && line.ends_with("end=\"cut at shutdown\""),
            "{line}"
        );
        // The lines come after the warning, before the process ends.
        let log = w.log();
        let warned = log.find("exiting now").expect("the second signal is said");
        assert!(log.rfind("cut at shutdown").unwrap() > warned, "{log}");
        // The cut client learns it was cut: its connection is reset.
        let mut rest = Vec::new();
        let read = tokio::time::timeout(WAIT, tls.read_to_end(&mut rest)).await;
        assert!(
            matches!(read, Ok(Err(_))),
            "a reset, not a clean end: {read:?}"
        );
    })
    .await;
}

/// A pseudo-terminal: (controller, the terminal end a program is given).
fn pty() -> (OwnedFd, OwnedFd) {
    let (mut controller, mut terminal) = (-1, -1);
    // SAFETY: needed because std has no way to open a pseudo-terminal.
    // openpty writes two new descriptors into the two ints it is given
    // and accepts null for the name, termios and window size.
    let rc = unsafe {
        libc::openpty(
            &mut controller,
            &mut terminal,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just opened and nothing else owns them.
    unsafe {
        (
            OwnedFd::from_raw_fd(controller),
            OwnedFd::from_raw_fd(terminal),
        )
    }
}

#[tokio::test]
async fn a_drain_from_a_terminal_says_once_that_a_second_ctrl_c_exits_at_once() {
    bounded(WAIT, async {
        let backend = echo_backend().await;
        // Its input is a terminal, as when started by hand.
        let (_controller, terminal) = pty();
        let mut w = Wssify::launch(
            env!("CARGO_BIN_EXE_wssify"),
            &[
                "--listen",
                "127.0.0.1:0",
                "--to",
                &backend.to_string(),
                "--drain-timeout",
                "1h",
            ],
            "debug,rustls=info",
            Stdio::from(terminal),
        )
        .await;
        let tls = dev_connect(&mut w).await;
        let port = tls.get_ref().0.local_addr().unwrap().port();

        w.signal("INT");
        let line = w.wait_for_log("stopped accepting").await;
        assert!(
            line.ends_with(
                "stopped accepting; waiting up to 1h for 1 open connection to finish; press Ctrl-C again to exit at once"
            ),
            "{line}"
        );
        w.signal("INT");
        assert_eq!(w.wait_exit(WAIT).await, Some(1), "log:\n{}", w.log());
        assert_eq!(w.lines_with("Ctrl-C").len(), 1, "said once:\n{}", w.log());
        let line = end_line(&mut w, port).await;
        assert!(line.ends_with("end=\"cut at shutdown\""), "{line}");
    })
    .await;
}
