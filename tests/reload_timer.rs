//! The reload timer catches what no watched directory reports: here the
//! certificate's directory is itself a symlink, swapped in a parent that
//! wssify does not watch, the kind of event a watcher misses.

mod common;

use std::path::Path;

use common::*;

fn write_pair(dir: &Path, name: &str) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let made = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
    std::fs::write(dir.join("tls.crt"), made.cert.pem()).unwrap();
    std::fs::write(dir.join("tls.key"), made.signing_key.serialize_pem()).unwrap();
    fingerprint(made.cert.der())
}

#[tokio::test]
async fn the_timer_takes_up_a_change_no_watched_directory_reported() {
    bounded(WAIT * 2, async {
        let root = tempfile::tempdir().unwrap();
        let a = write_pair(&root.path().join("v1"), "localhost");
        let b = write_pair(&root.path().join("v2"), "localhost");
        let current = root.path().join("current");
        std::os::unix::fs::symlink("v1", &current).unwrap();
        let backend = echo_backend().await;
        let cert = current.join("tls.crt");
        let key = current.join("tls.key");
        let mut w = Wssify::start(&[
            "--to",
            &backend.to_string(),
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "--reload-interval",
            "1s",
        ])
        .await;
        tls_connect(w.addr, pinned_client(&a), "localhost")
            .await
            .expect("serves the first certificate");

        // Swap `current` to v2 the atomic way, in a directory not watched.
        let staged = root.path().join("current.tmp");
        std::os::unix::fs::symlink("v2", &staged).unwrap();
        std::fs::rename(&staged, &current).unwrap();

        let line = w.wait_for_log("reloaded (").await;
        assert!(line.contains("reloaded (timer)"), "{line}");
        assert!(
            line.contains(&b),
            "the line names the new fingerprint: {line}"
        );
        tls_connect(w.addr, pinned_client(&b), "localhost")
            .await
            .expect("a new handshake gets the new certificate");
        assert!(
            tls_connect(w.addr, pinned_client(&a), "localhost")
                .await
                .is_err(),
            "the old certificate is no longer served"
        );
    })
    .await;
}
