//! Many names on one port: the certificate for each handshake is chosen by
//! the client's SNI (exact names before wildcards, the first pair as the
//! default), `--strict-sni` refuses unknown names with `unrecognized_name`,
//! and `--cert-dir` follows pairs added and removed while running.

mod common;

use std::path::Path;

use common::ca::{Ca, presented, write_atomic};
use common::*;

async fn sni_cert(w: &Wssify, sni: Option<&str>) -> String {
    let der = presented(w.addr, sni)
        .await
        .unwrap_or_else(|e| panic!("handshake for {sni:?} failed: {e}\n{}", w.log()));
    fingerprint(&der)
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

#[tokio::test]
async fn each_name_gets_its_certificate_and_unknown_names_get_the_first() {
    bounded(WAIT * 2, async {
        let ca = Ca::new("sni CA");
        let a = ca.server(&["a.test"]);
        let b = ca.server(&["b.test", "www.b.test"]);
        let wild = ca.server(&["*.w.test"]);
        let exact = ca.server(&["exact.w.test"]);
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<_> = [("a", &a), ("b", &b), ("wild", &wild), ("exact", &exact)]
            .iter()
            .map(|(stem, leaf)| leaf.write(dir.path(), stem))
            .collect();
        let backend = echo_backend().await;
        let mut args = vec!["--to".to_string(), backend.to_string()];
        for (cert, key) in &files {
            args.extend(["--cert".into(), path(cert), "--key".into(), path(key)]);
        }
        let mut w = Wssify::start_owned(&args).await;
        let line = w.wait_for_log("listening on").await;
        assert!(
            line.contains("4 certificates by SNI, default a.test"),
            "{line}"
        );

        assert_eq!(sni_cert(&w, Some("a.test")).await, a.fingerprint);
        assert_eq!(sni_cert(&w, Some("b.test")).await, b.fingerprint);
        assert_eq!(sni_cert(&w, Some("WWW.B.TEST")).await, b.fingerprint);
        assert_eq!(sni_cert(&w, Some("x.w.test")).await, wild.fingerprint);
        assert_eq!(sni_cert(&w, Some("exact.w.test")).await, exact.fingerprint);
        // A wildcard covers one label: neither the bare parent nor two labels.
        assert_eq!(sni_cert(&w, Some("a.b.w.test")).await, a.fingerprint);
        assert_eq!(sni_cert(&w, Some("w.test")).await, a.fingerprint);
        // Unknown names and no SNI at all get the first pair.
        assert_eq!(sni_cert(&w, Some("unknown.test")).await, a.fingerprint);
        assert_eq!(sni_cert(&w, None).await, a.fingerprint);

        // A client that verifies names gets a valid chain for its name.
        tls_connect(w.addr, trusting_client(&[ca.der()]), "x.w.test")
            .await
            .expect("the wildcard certificate verifies for x.w.test");
    })
    .await;
}

#[tokio::test]
async fn strict_sni_refuses_unknown_names_with_unrecognized_name() {
    bounded(WAIT * 2, async {
        let ca = Ca::new("sni CA");
        let a = ca.server(&["a.test"]);
        let wild = ca.server(&["*.w.test"]);
        let dir = tempfile::tempdir().unwrap();
        let (ac, ak) = a.write(dir.path(), "a");
        let (wc, wk) = wild.write(dir.path(), "w");
        let backend = echo_backend().await;
        let mut w = Wssify::start(&[
            "--to",
            &backend.to_string(),
            "--cert",
            &path(&ac),
            "--key",
            &path(&ak),
            "--cert",
            &path(&wc),
            "--key",
            &path(&wk),
            "--strict-sni",
        ])
        .await;

        // Known names are served as usual.
        assert_eq!(sni_cert(&w, Some("a.test")).await, a.fingerprint);
        assert_eq!(sni_cert(&w, Some("x.w.test")).await, wild.fingerprint);

        let err = presented(w.addr, Some("unknown.test")).await.unwrap_err();
        let tls_err = err
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
            .unwrap_or_else(|| panic!("not a TLS error: {err:?}"));
        assert_eq!(
            tls_err,
            &rustls::Error::AlertReceived(rustls::AlertDescription::UnrecognisedName)
        );
        let line = w
            .wait_for_log("no certificate for the requested name 'unknown.test'")
            .await;
        assert!(
            line.contains("(--strict-sni); sent unrecognized_name"),
            "{line}"
        );

        let err = presented(w.addr, None).await.unwrap_err();
        assert!(
            format!("{err:?}").contains("UnrecognisedName"),
            "no SNI is refused too: {err:?}"
        );
        w.wait_for_log("sent no server name (SNI) and --strict-sni is on")
            .await;
    })
    .await;
}

#[tokio::test]
async fn cert_dir_follows_added_and_removed_pairs() {
    bounded(WAIT * 2, async {
        let ca = Ca::new("sni CA");
        let a = ca.server(&["a.test"]);
        let b = ca.server(&["b.test"]);
        let dir = tempfile::tempdir().unwrap();
        a.write(dir.path(), "a");
        let backend = echo_backend().await;
        let mut w = Wssify::start(&[
            "--to",
            &backend.to_string(),
            "--cert-dir",
            &path(dir.path()),
            "--reload-interval",
            "1h",
        ])
        .await;
        assert_eq!(sni_cert(&w, Some("b.test")).await, a.fingerprint);

        // Added, as one combined b.pem renamed into place.
        write_atomic(
            &dir.path().join("b.pem"),
            &format!("{}{}", b.cert_pem, b.key_pem),
        );
        let line = w.wait_for_log("reloaded (").await;
        assert!(
            line.contains(&format!(
                "reloaded (file change): --cert-dir {}: added b: certificate b.test, names b.test",
                dir.path().display()
            )),
            "{line}"
        );
        assert_eq!(sni_cert(&w, Some("b.test")).await, b.fingerprint);
        assert_eq!(sni_cert(&w, Some("a.test")).await, a.fingerprint);

        // Removed: a.test now gets the default, which is b.
        std::fs::remove_file(dir.path().join("a.crt")).unwrap();
        std::fs::remove_file(dir.path().join("a.key")).unwrap();
        let line = w.wait_for_log("removed a").await;
        assert!(line.contains("removed a (certificate a.test)"), "{line}");
        assert_eq!(sni_cert(&w, Some("a.test")).await, b.fingerprint);
        assert!(w.lines_with("reload refused").is_empty(), "{}", w.log());
    })
    .await;
}
