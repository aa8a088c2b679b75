//! Client certificates (mTLS): `--client-ca` admits clients whose
//! certificate chains to the bundle and refuses the rest with a reason in
//! the log; `--crl` revokes, and a list published while running takes
//! effect for the next handshake (resumption included);
//! `--client-ca-optional` admits clients without a certificate.

mod common;

use std::sync::Arc;

use common::ca::{Ca, days_from_today, write_atomic};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// wssify with the server certificate from `server_ca` and these flags.
async fn serve(server_ca: &Ca, dir: &std::path::Path, extra: &[String]) -> Wssify {
    let (cert, key) = server_ca.server(&["localhost"]).write(dir, "server");
    Wssify::serving_pair(&cert, &key, extra).await
}

/// Whether bytes make it through and back: the handshake (which a TLS 1.3
/// client may finish before the server has judged its certificate) and one
/// echo.
async fn echoes(w: &Wssify, config: Arc<rustls::ClientConfig>) -> bool {
    let Ok(mut tls) = tls_connect(w.addr, config, "localhost").await else {
        return false;
    };
    let msg = b"hello from a client";
    if tls.write_all(msg).await.is_err() {
        return false;
    }
    let mut back = vec![0u8; msg.len()];
    tls.read_exact(&mut back).await.is_ok() && back == msg
}

fn anonymous(server_ca: &Ca) -> Arc<rustls::ClientConfig> {
    trusting_client(&[server_ca.der()])
}

#[tokio::test]
async fn required_client_certificates_admit_good_ones_and_say_why_others_are_refused() {
    bounded(WAIT * 2, async {
        let server_ca = Ca::new("server CA");
        let client_ca = Ca::new("client CA");
        let stranger_ca = Ca::new("some other CA");
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("clients.pem");
        std::fs::write(&bundle, client_ca.cert_pem()).unwrap();
        let mut w = serve(
            &server_ca,
            dir.path(),
            &["--client-ca".into(), bundle.display().to_string()],
        )
        .await;

        let good = client_ca.client("device-7", 7, (2049, 1, 1));
        assert!(echoes(&w, good.client_config(&[server_ca.der()])).await);
        let line = w.wait_for_log("client_cert=").await;
        assert!(line.contains("client_cert=\"device-7\""), "{line}");

        let cases = [
            (
                anonymous(&server_ca),
                "client certificate refused: no certificate",
            ),
            (
                stranger_ca
                    .client("intruder", 8, (2049, 1, 1))
                    .client_config(&[server_ca.der()]),
                "client certificate refused: unknown CA",
            ),
            (
                client_ca
                    .client("old-device", 9, days_from_today(-2))
                    .client_config(&[server_ca.der()]),
                "client certificate refused: expired",
            ),
        ];
        for (config, reason) in cases {
            assert!(!echoes(&w, config).await, "{reason}: must not get through");
            let line = w.wait_for_log(reason).await;
            assert!(line.contains("handshake failed"), "{line}");
        }
        // Only the good client reached the backend.
        assert_eq!(w.lines_with("client_cert=").len(), 1, "{}", w.log());
    })
    .await;
}

#[tokio::test]
async fn a_revocation_list_published_while_running_refuses_the_next_handshake() {
    bounded(WAIT * 2, async {
        let server_ca = Ca::new("server CA");
        let client_ca = Ca::new("client CA");
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("clients.pem");
        std::fs::write(&bundle, client_ca.cert_pem()).unwrap();
        let crl = dir.path().join("clients.crl");
        std::fs::write(&crl, client_ca.crl(&[])).unwrap();
        let mut w = serve(
            &server_ca,
            dir.path(),
            &[
                "--client-ca".into(),
                bundle.display().to_string(),
                "--crl".into(),
                crl.display().to_string(),
                "--reload-interval".into(),
                "1h".into(),
            ],
        )
        .await;

        let device = client_ca.client("device-42", 42, (2049, 1, 1));
        let other = client_ca.client("device-43", 43, (2049, 1, 1));
        // One config throughout: it keeps the session tickets it is given,
        // so the next connection would resume if the server let it.
        let config = device.client_config(&[server_ca.der()]);
        assert!(echoes(&w, config.clone()).await, "{}", w.log());
        assert!(echoes(&w, config.clone()).await, "{}", w.log());

        write_atomic(&crl, &client_ca.crl(&[42]));
        let line = w.wait_for_log("reloaded (").await;
        assert!(
            line.contains(&format!("--crl {}: 1 revoked certificates", crl.display())),
            "{line}"
        );

        assert!(!echoes(&w, config).await, "revoked, even with a ticket");
        w.wait_for_log("client certificate refused: revoked").await;
        // Others from the same CA still get through.
        assert!(echoes(&w, other.client_config(&[server_ca.der()])).await);
    })
    .await;
}

#[tokio::test]
async fn optional_client_certificates_admit_none_but_refuse_bad_ones() {
    bounded(WAIT * 2, async {
        let server_ca = Ca::new("server CA");
        let client_ca = Ca::new("client CA");
        let stranger_ca = Ca::new("some other CA");
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("clients.pem");
        std::fs::write(&bundle, client_ca.cert_pem()).unwrap();
        let mut w = serve(
            &server_ca,
            dir.path(),
            &[
                "--client-ca".into(),
                bundle.display().to_string(),
                "--client-ca-optional".into(),
            ],
        )
        .await;

        assert!(echoes(&w, anonymous(&server_ca)).await, "{}", w.log());
        let line = w.wait_for_log("end=").await;
        assert!(!line.contains("client_cert="), "{line}");

        let good = client_ca.client("device-1", 1, (2049, 1, 1));
        assert!(echoes(&w, good.client_config(&[server_ca.der()])).await);
        w.wait_for_log("client_cert=\"device-1\"").await;

        let bad = stranger_ca.client("intruder", 2, (2049, 1, 1));
        assert!(!echoes(&w, bad.client_config(&[server_ca.der()])).await);
        w.wait_for_log("client certificate refused: unknown CA")
            .await;
    })
    .await;
}

#[tokio::test]
async fn a_new_client_ca_bundle_is_taken_while_running() {
    bounded(WAIT * 2, async {
        let server_ca = Ca::new("server CA");
        let (old_ca, new_ca) = (Ca::new("old client CA"), Ca::new("new client CA"));
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("clients.pem");
        std::fs::write(&bundle, old_ca.cert_pem()).unwrap();
        let mut w = serve(
            &server_ca,
            dir.path(),
            &[
                "--client-ca".into(),
                bundle.display().to_string(),
                "--reload-interval".into(),
                "1h".into(),
            ],
        )
        .await;
        let old_client = old_ca.client("old-device", 1, (2049, 1, 1));
        let new_client = new_ca.client("new-device", 2, (2049, 1, 1));
        assert!(echoes(&w, old_client.client_config(&[server_ca.der()])).await);
        assert!(!echoes(&w, new_client.client_config(&[server_ca.der()])).await);

        write_atomic(&bundle, &new_ca.cert_pem());
        let line = w.wait_for_log("reloaded (").await;
        assert!(
            line.contains(&format!(
                "--client-ca {}: 1 CA certificates",
                bundle.display()
            )),
            "{line}"
        );
        assert!(echoes(&w, new_client.client_config(&[server_ca.der()])).await);
        assert!(!echoes(&w, old_client.client_config(&[server_ca.der()])).await);
        w.wait_for_lines("client certificate refused: unknown CA", 2)
            .await;
    })
    .await;
}
