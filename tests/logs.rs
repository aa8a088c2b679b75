//! The log cannot be flooded or forged by clients: lines any client can
//! cause at will are rate-limited with a count of those held back, and what
//! a client chose (here its certificate's subject) is escaped, so one
//! connection is one line.

mod common;

use common::ca::Ca;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Lines of one kind wssify logs per second at most.
const LINES_PER_SECOND: u64 = 10;

/// The count at the start of a `N similar lines suppressed` line.
fn suppressed_count(line: &str) -> u64 {
    line.split(" similar lines suppressed")
        .next()
        .and_then(|head| head.split_whitespace().last())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in: {line}"))
}

#[tokio::test]
async fn a_burst_of_plain_http_is_logged_as_a_few_lines_and_a_count() {
    bounded(WAIT * 3, async {
        const REQUESTS: u64 = 100;
        let backend = echo_backend().await;
        let mut w = Wssify::start(&["--to", &backend.to_string()]).await;
        let started = Instant::now();
        let clients: Vec<_> = (0..REQUESTS)
            .map(|_| {
                let addr = w.addr;
                tokio::spawn(async move {
                    let mut tcp = TcpStream::connect(addr).await.unwrap();
                    tcp.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
                        .await
                        .unwrap();
                    read_to_end(&mut tcp).await.unwrap()
                })
            })
            .collect();
        for client in clients {
            let answer = client.await.unwrap();
            assert!(
                answer.starts_with(b"HTTP/1.1 400 "),
                "every request answered"
            );
        }

        // Wait until every request is accounted for: logged, or counted in
        // a summary (the last one comes by timer, as the flood has stopped).
        let (logged, suppressed) = loop {
            let seen = w.lines_with("plain HTTP");
            let logged = w.lines_with("plain HTTP on the TLS port").len() as u64;
            let suppressed: u64 = w
                .lines_with("similar lines suppressed: plain HTTP requests")
                .iter()
                .map(|l| suppressed_count(l))
                .sum();
            if logged + suppressed >= REQUESTS {
                break (logged, suppressed);
            }
            w.wait_for_lines("plain HTTP", seen.len() + 1).await;
        };
        let spanned = started.elapsed().as_secs() + 1;
        assert_eq!(logged + suppressed, REQUESTS, "{}", w.log());
        assert!(suppressed > 0, "nothing held back; log:\n{}", w.log());
        // At most the allowance of each second the burst touched.
        assert!(
            logged <= LINES_PER_SECOND * (spanned + 1) && logged < REQUESTS,
            "{logged} lines in {spanned}s; log:\n{}",
            w.log()
        );
    })
    .await;
}

#[tokio::test]
async fn a_client_certificate_cannot_forge_a_log_line() {
    bounded(WAIT * 2, async {
        let server_ca = Ca::new("server CA");
        let client_ca = Ca::new("client CA");
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = server_ca.server(&["localhost"]).write(dir.path(), "server");
        let bundle = dir.path().join("clients.pem");
        std::fs::write(&bundle, client_ca.cert_pem()).unwrap();
        let mut w = Wssify::serving_pair(
            &cert,
            &key,
            &["--client-ca".into(), bundle.display().to_string()],
        )
        .await;

        // A name with a newline, a forged line after it, a quote to end the
        // field early, and an ESC sequence that would colour a terminal.
        let forged = "INFO  wssify::connection] peer=10.0.0.1:1 end=\"forged\"";
        let cn = format!("device-9\n{forged}\x1b[31m");
        let device = client_ca.client(&cn, 9, (2049, 1, 1));
        let mut tls = tls_connect(w.addr, device.client_config(&[server_ca.der()]), "localhost")
            .await
            .expect("the certificate chains to the client CA");
        tls.write_all(b"ping").await.unwrap();
        let mut back = [0u8; 4];
        tls.read_exact(&mut back).await.unwrap();
        drop(tls);

        let line = w.wait_for_log("client_cert=").await;
        assert!(
            line.contains(
                r#"client_cert="device-9\nINFO  wssify::connection] peer=10.0.0.1:1 end=\"forged\"\x1b[31m""#
            ),
            "{line}"
        );
        assert_eq!(w.lines_with("client_cert=").len(), 1, "{}", w.log());
        let log = w.log();
        assert!(
            !log.lines().any(|l| l.starts_with("INFO  wssify") || l.contains('\x1b')),
            "a forged line or a raw escape reached the log:\n{log}"
        );
    })
    .await;
}

/// The `peer=` address of a log line, if it has one.
fn peer_of(line: &str) -> Option<&str> {
    line.split("peer=").nth(1)?.split_whitespace().next()
}

/// The `conn=` id of a log line, if it has one.
fn conn_of(line: &str) -> Option<&str> {
    let rest = line.split("conn=").nth(1)?;
    rest.split_whitespace().next()
}

#[tokio::test]
async fn every_line_about_a_connection_carries_its_id_at_debug_level() {
    bounded(WAIT * 2, async {
        let backend = echo_backend().await;
        let mut w = Wssify::launch(
            env!("CARGO_BIN_EXE_wssify"),
            &["--listen", "127.0.0.1:0", "--to", &backend.to_string()],
            "debug",
            std::process::Stdio::null(),
        )
        .await;
        // A client served to its end, a port probe, and a client that
        // does not trust our certificate.
        let mut tls = dev_connect(&mut w).await;
        tls.write_all(b"ping").await.unwrap();
        let mut back = [0u8; 4];
        tls.read_exact(&mut back).await.unwrap();
        tls.shutdown().await.unwrap();
        read_to_end(&mut tls).await.unwrap();
        drop(TcpStream::connect(w.addr).await.unwrap());
        let refused = tls_connect(w.addr, trusting_client(&[]), "localhost").await;
        assert!(
            refused.is_err(),
            "the development certificate is not trusted"
        );
        w.wait_for_lines(" end=\"", 3).await;

        let log = w.log();
        // Ours name the peer; rustls' own are logged under its name.
        let about: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("peer=") || l.contains(" rustls::"))
            .collect();
        assert!(
            about.iter().any(|l| l.contains(" rustls::")),
            "no rustls line at debug level:\n{log}"
        );
        for line in &about {
            assert!(conn_of(line).is_some(), "no conn= id in: {line}");
        }
        let mut ids: Vec<&str> = about.iter().filter_map(|l| conn_of(l)).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 3, "three connections, three ids:\n{log}");
        for id in ids {
            let lines: Vec<&str> = about
                .iter()
                .copied()
                .filter(|l| conn_of(l) == Some(id))
                .collect();
            let opened = lines[0];
            assert!(
                opened.contains(" accepted") && opened.contains(&format!("listener={}", w.addr)),
                "the first line of conn={id} says it was accepted, and where: {opened}"
            );
            let ends: Vec<&&str> = lines.iter().filter(|l| l.contains(" end=\"")).collect();
            assert_eq!(ends.len(), 1, "one end line for conn={id}:\n{log}");
            assert_eq!(
                lines.last(),
                ends.first().copied(),
                "the end line is the last of conn={id}"
            );
            // The accept line and the end line name the same peer.
            assert_eq!(peer_of(opened), peer_of(ends[0]), "{log}");
        }
    })
    .await;
}
