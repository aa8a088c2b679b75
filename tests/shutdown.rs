//! Graceful shutdown of the real binary on real signals.

mod common;

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
        w.wait_for_log("stopped accepting").await;
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
