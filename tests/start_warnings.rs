//! Warnings at start for set-ups that would fail only later, at the first
//! client: a backend that is down, and `--alpn h2` in front of a backend
//! that may not speak HTTP/2. The real binary, real sockets.

mod common;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[tokio::test]
async fn a_backend_down_at_start_is_warned_of_and_wssify_serves_once_it_is_up() {
    bounded(WAIT, async {
        let port = {
            let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            closed.local_addr().unwrap().port()
        };
        let backend = format!("127.0.0.1:{port}");
        let mut w = Wssify::start(&["--to", &backend]).await;
        let line = w
            .wait_for_log(&format!(
                "cannot connect to backend {backend} (--to) at start"
            ))
            .await;
        assert!(line.contains(" WARN "), "{line}");
        assert!(
            line.contains("Connection refused"),
            "names the error: {line}"
        );
        assert!(
            line.contains("wssify keeps running and connects to it for each client"),
            "{line}"
        );

        // The backend comes up: clients are served.
        let listener = TcpListener::bind(&backend).await.unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut wr) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut wr).await;
                });
            }
        });
        let mut tls = dev_connect(&mut w).await;
        tls.write_all(b"up now").await.unwrap();
        let mut back = [0u8; 6];
        tls.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"up now");
    })
    .await;
}

#[tokio::test]
async fn a_backend_up_at_start_sees_one_silent_check_and_no_warning() {
    bounded(WAIT, async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = listener.local_addr().unwrap().to_string();
        let mut w = Wssify::start(&["--to", &backend]).await;
        // The check: a connection that closes without a byte.
        let (mut check, _) = tokio::time::timeout(WAIT, listener.accept())
            .await
            .expect("wssify checks the backend at start")
            .unwrap();
        let got = read_to_end(&mut check).await.unwrap();
        assert!(got.is_empty(), "the check sends nothing: {got:?}");
        w.wait_for_log(&format!("backend {backend} accepts connections"))
            .await;
        assert!(
            w.lines_with("cannot connect to backend").is_empty(),
            "{}",
            w.log()
        );
    })
    .await;
}

#[tokio::test]
async fn alpn_h2_is_warned_of_at_start() {
    bounded(WAIT, async {
        let backend = echo_backend().await.to_string();
        let mut w = Wssify::start(&["--to", &backend, "--alpn", "h2", "--alpn", "http/1.1"]).await;
        let line = w.wait_for_log("--alpn h2:").await;
        assert!(line.contains(" WARN "), "{line}");
        for words in [
            "passes the bytes through as they are",
            &format!("the backend {backend} must speak HTTP/2"),
            "RFC 8441",
        ] {
            assert!(line.contains(words), "{words:?} in: {line}");
        }

        // http/1.1 alone needs no warning.
        let mut w = Wssify::start(&["--to", &backend, "--alpn", "http/1.1"]).await;
        // Logged after where the warning would be.
        w.wait_for_log("limits:").await;
        assert!(w.lines_with("--alpn h2").is_empty(), "{}", w.log());
    })
    .await;
}
