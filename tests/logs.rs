//! The log cannot be flooded or forged by clients: lines any client can
//! cause at will are rate-limited with a count of those held back, and what
//! a client chose (here its certificate's subject) is escaped, so one
//! connection is one line.

mod common;

use common::ca::Ca;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
