//! Live certificate reload: SIGHUP, file changes (in place, renamed into
//! place, the Kubernetes `..data` symlink swap), refusals of broken pairs,
//! and expiry warnings, each against the real binary with real clients.
//! Open connections must keep moving bytes across every reload.

mod common;

use std::path::{Path, PathBuf};

use common::ca::{Ca, Leaf, days_from_today, presented, write_atomic, ymd_text};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// wssify serving `cert`/`key` in front of an echo backend.
async fn serve(cert: &Path, key: &Path, extra: &[&str]) -> Wssify {
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    Wssify::serving_pair(cert, key, &extra).await
}

/// The fingerprint of the certificate a new handshake gets.
async fn served(w: &Wssify) -> String {
    let der = presented(w.addr, Some("localhost"))
        .await
        .unwrap_or_else(|e| panic!("handshake failed: {e}\n{}", w.log()));
    fingerprint(&der)
}

/// A connection opened through wssify that has echoed once.
async fn open_connection(
    w: &Wssify,
    ca: &Ca,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut tls = tls_connect(w.addr, trusting_client(&[ca.der()]), "localhost")
        .await
        .expect("handshake");
    echo(&mut tls, b"before the reload").await;
    tls
}

async fn echo<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(tls: &mut S, msg: &[u8]) {
    tls.write_all(msg).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    tls.read_exact(&mut back).await.unwrap();
    assert_eq!(back, msg);
}

/// A CA, two `localhost` pairs from it, and the first written as
/// `tls.crt`/`tls.key` in a fresh directory.
struct Pairs {
    ca: Ca,
    a: Leaf,
    b: Leaf,
    dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
}

impl Pairs {
    fn new() -> Pairs {
        let ca = Ca::new("reload CA");
        let (a, b) = (ca.server(&["localhost"]), ca.server(&["localhost"]));
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = a.write(dir.path(), "tls");
        Pairs {
            ca,
            a,
            b,
            dir,
            cert,
            key,
        }
    }
}

fn pair(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("tls.crt"), dir.join("tls.key"))
}

#[tokio::test]
async fn sighup_serves_the_new_pair_to_new_handshakes_and_keeps_open_connections() {
    bounded(WAIT * 2, async {
        let ca = Ca::new("reload CA");
        let (a, b) = (ca.server(&["localhost"]), ca.server(&["localhost", "b.test"]));
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = a.write(dir.path(), "tls");
        // Only the signal may reload here.
        let mut w = serve(&cert, &key, &["--reload-interval", "0"]).await;
        assert_eq!(served(&w).await, a.fingerprint);
        let mut open = open_connection(&w, &ca).await;

        b.write(dir.path(), "tls");
        w.signal("HUP");
        let line = w.wait_for_log("reloaded (SIGHUP)").await;
        assert!(
            line.contains(&format!(
                "--cert {}: certificate localhost, names localhost, b.test, expires 2049-01-01, sha256 {}",
                cert.display(),
                b.fingerprint
            )),
            "the line says what changed, the subject, names and expiry: {line}"
        );
        assert_eq!(served(&w).await, b.fingerprint);
        // The connection opened before still moves bytes both ways.
        echo(&mut open, b"after the reload").await;
        assert!(w.lines_with("reload refused").is_empty(), "{}", w.log());
    })
    .await;
}

#[tokio::test]
async fn a_pair_renamed_into_place_is_taken_without_a_signal() {
    bounded(WAIT * 2, async {
        let Pairs {
            ca,
            a: _,
            b,
            dir: _dir,
            cert,
            key,
        } = Pairs::new();
        // The timer is far away: only watching can notice.
        let mut w = serve(&cert, &key, &["--reload-interval", "1h"]).await;
        let mut open = open_connection(&w, &ca).await;

        write_atomic(&key, &b.key_pem);
        write_atomic(&cert, &b.cert_pem);
        let line = w.wait_for_log("reloaded (").await;
        assert!(line.contains("reloaded (file change)"), "{line}");
        assert!(line.contains(&b.fingerprint), "{line}");
        assert_eq!(served(&w).await, b.fingerprint);
        echo(&mut open, b"after the reload").await;
    })
    .await;
}

/// A file written again and again beside the certificates (a log, say)
/// must not wake the reloader: it would re-read every certificate every
/// 2 seconds and wake the runtime on each write.
#[tokio::test]
async fn other_files_in_the_directory_are_not_watched() {
    bounded(WAIT, async {
        let Pairs { dir, cert, key, .. } = Pairs::new();
        let mut w = serve(&cert, &key, &["--reload-interval", "1h"]).await;
        w.wait_for_log("certificates reload on SIGHUP, on file change")
            .await;
        let log = dir.path().join("wssify.log");
        for i in 0..20 {
            std::fs::write(&log, format!("line {i}\n")).unwrap();
        }
        // Events are handled in order: once this one is seen, the writes
        // before it have been handled too.
        let marker = dir.path().join("marker.pem");
        std::fs::write(&marker, "not a certificate").unwrap();
        let seen = w.wait_for_log("marker.pem").await;
        assert!(seen.contains("certificate change seen"), "{seen}");
        assert!(
            w.lines_with("certificate change seen")
                .iter()
                .all(|l| !l.contains("wssify.log")),
            "{}",
            w.log()
        );
    })
    .await;
}

/// How a Kubernetes secret volume looks and changes: the files are symlinks
/// through `..data`, itself a symlink to a timestamped directory, and an
/// update re-points `..data` with one rename.
#[tokio::test]
async fn the_kubernetes_data_symlink_swap_is_taken() {
    bounded(WAIT * 2, async {
        use std::os::unix::fs::symlink;
        let ca = Ca::new("reload CA");
        let (a, b) = (ca.server(&["localhost"]), ca.server(&["localhost"]));
        let mount = tempfile::tempdir().unwrap();
        let m = mount.path();
        let first = m.join("..2026_11_23_01_00_00.1");
        std::fs::create_dir(&first).unwrap();
        a.write(&first, "tls");
        symlink(first.file_name().unwrap(), m.join("..data")).unwrap();
        symlink("..data/tls.crt", m.join("tls.crt")).unwrap();
        symlink("..data/tls.key", m.join("tls.key")).unwrap();
        let (cert, key) = pair(m);
        let mut w = serve(&cert, &key, &["--reload-interval", "1h"]).await;
        assert_eq!(served(&w).await, a.fingerprint);
        let mut open = open_connection(&w, &ca).await;

        // What the kubelet does: new directory, new link, rename over ..data,
        // then remove the old directory.
        let second = m.join("..2026_11_23_02_00_00.2");
        std::fs::create_dir(&second).unwrap();
        b.write(&second, "tls");
        symlink(second.file_name().unwrap(), m.join("..data_tmp")).unwrap();
        std::fs::rename(m.join("..data_tmp"), m.join("..data")).unwrap();
        std::fs::remove_dir_all(&first).unwrap();

        let line = w.wait_for_log("reloaded (").await;
        assert!(line.contains("reloaded (file change)"), "{line}");
        assert_eq!(served(&w).await, b.fingerprint);
        echo(&mut open, b"after the swap").await;
    })
    .await;
}

#[tokio::test]
async fn a_half_written_pair_is_refused_until_the_key_arrives() {
    bounded(WAIT * 2, async {
        let Pairs {
            ca: _,
            a,
            b,
            dir: _dir,
            cert,
            key,
        } = Pairs::new();
        let mut w = serve(&cert, &key, &["--reload-interval", "1h"]).await;

        // The certificate is new, the key still old.
        write_atomic(&cert, &b.cert_pem);
        let line = w.wait_for_log("reload refused").await;
        assert!(
            line.contains(&format!(
                "--key {} does not match the certificate in --cert {}",
                key.display(),
                cert.display()
            )),
            "{line}"
        );
        assert!(
            line.contains("still serving the previous certificate"),
            "{line}"
        );
        assert!(line.contains("ERROR"), "a refusal is an error: {line}");
        assert_eq!(served(&w).await, a.fingerprint, "the old pair still serves");

        write_atomic(&key, &b.key_pem);
        let line = w.wait_for_log("reloaded (").await;
        assert!(line.contains(&b.fingerprint), "{line}");
        assert_eq!(served(&w).await, b.fingerprint);
    })
    .await;
}

#[tokio::test]
async fn a_garbage_pair_is_refused_and_a_later_good_pair_is_taken() {
    bounded(WAIT * 2, async {
        let Pairs {
            ca: _,
            a,
            b,
            dir: _dir,
            cert,
            key,
        } = Pairs::new();
        let mut w = serve(&cert, &key, &["--reload-interval", "1h"]).await;

        write_atomic(&cert, "this is not a certificate\n");
        let line = w.wait_for_log("reload refused").await;
        assert!(
            line.contains(&format!("--cert {} has no PEM certificate", cert.display())),
            "{line}"
        );
        assert_eq!(served(&w).await, a.fingerprint);

        // A SIGHUP repeats the refusal and still serves the old pair.
        w.signal("HUP");
        w.wait_for_lines("reload refused", 2).await;
        assert_eq!(served(&w).await, a.fingerprint);

        write_atomic(&key, &b.key_pem);
        write_atomic(&cert, &b.cert_pem);
        w.wait_for_log("reloaded (").await;
        assert_eq!(served(&w).await, b.fingerprint);
    })
    .await;
}

#[tokio::test]
async fn reload_interval_zero_watches_nothing_and_waits_for_sighup() {
    bounded(WAIT * 2, async {
        let Pairs {
            ca: _,
            a,
            b,
            dir,
            cert,
            key,
        } = Pairs::new();

        // With watching on, the directory is watched...
        let watching = serve(&cert, &key, &[]).await;
        assert!(
            !watching.lines_with("for certificate changes").is_empty(),
            "{}",
            watching.log()
        );
        assert!(
            !watching
                .lines_with("on file change and every 30s")
                .is_empty(),
            "the default interval is 30s: {}",
            watching.log()
        );
        drop(watching);

        // ...and with 0, nothing is.
        let mut w = serve(&cert, &key, &["--reload-interval", "0"]).await;
        assert!(
            !w.lines_with("certificates reload on SIGHUP only")
                .is_empty(),
            "{}",
            w.log()
        );
        assert!(
            w.lines_with("for certificate changes").is_empty(),
            "{}",
            w.log()
        );
        b.write(dir.path(), "tls");
        assert_eq!(served(&w).await, a.fingerprint);
        w.signal("HUP");
        let line = w.wait_for_log("reloaded (").await;
        assert!(line.contains("reloaded (SIGHUP)"), "{line}");
        assert_eq!(w.lines_with("reloaded (").len(), 1, "{}", w.log());
        assert_eq!(served(&w).await, b.fingerprint);
    })
    .await;
}

#[tokio::test]
async fn sighup_with_nothing_new_says_so() {
    bounded(WAIT, async {
        let ca = Ca::new("reload CA");
        let a = ca.server(&["localhost"]);
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = a.write(dir.path(), "tls");
        let mut w = serve(&cert, &key, &["--reload-interval", "0"]).await;
        w.signal("HUP");
        w.wait_for_log("reload (SIGHUP): nothing changed").await;
        assert_eq!(served(&w).await, a.fingerprint);
    })
    .await;
}

#[tokio::test]
async fn expiry_is_warned_about_at_start_and_on_reload_and_an_expired_pair_still_serves() {
    bounded(WAIT * 2, async {
        let ca = Ca::new("expiry CA");
        let soon = days_from_today(5);
        let past = days_from_today(-3);
        let expiring = ca.server_until(&["localhost"], soon);
        let expired = ca.server_until(&["localhost"], past);
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = expiring.write(dir.path(), "tls");
        let mut w = serve(&cert, &key, &["--reload-interval", "0"]).await;
        let line = w.wait_for_log("expires in").await;
        assert!(line.contains("WARN"), "{line}");
        assert!(
            line.contains(&format!(
                "certificate localhost (--cert {}) expires in 4 days, on {}",
                cert.display(),
                ymd_text(soon)
            )) || line.contains(&format!("expires in 5 days, on {}", ymd_text(soon))),
            "{line}"
        );

        expired.write(dir.path(), "tls");
        w.signal("HUP");
        w.wait_for_log("reloaded (SIGHUP)").await;
        let line = w.wait_for_log("expired on").await;
        assert!(line.contains("ERROR"), "{line}");
        assert!(
            line.contains(&format!(
                "expired on {} and is still served",
                ymd_text(past)
            )),
            "{line}"
        );
        // Still served: a client that pins it (ignoring dates) gets it.
        tls_connect(w.addr, pinned_client(&expired.fingerprint), "localhost")
            .await
            .expect("the expired certificate is still served");
    })
    .await;
}

/// Starting with an expired certificate logs the error but serves.
#[tokio::test]
async fn an_expired_certificate_at_start_is_served_with_an_error() {
    bounded(WAIT, async {
        let ca = Ca::new("expiry CA");
        let expired: Leaf = ca.server_until(&["localhost"], days_from_today(-1));
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = expired.write(dir.path(), "tls");
        let mut w = serve(&cert, &key, &[]).await;
        let line = w.wait_for_log("is still served").await;
        assert!(line.contains("ERROR"), "{line}");
        assert_eq!(served(&w).await, expired.fingerprint);
    })
    .await;
}

/// The timer catches what no watched directory reports: here the
/// certificate's directory is itself a symlink, swapped in a parent that
/// wssify does not watch, the kind of event a watcher misses.
#[tokio::test]
async fn the_timer_takes_up_a_change_no_watched_directory_reported() {
    bounded(WAIT * 2, async {
        let ca = Ca::new("reload CA");
        let (a, b) = (ca.server(&["localhost"]), ca.server(&["localhost"]));
        let root = tempfile::tempdir().unwrap();
        for (leaf, version) in [(&a, "v1"), (&b, "v2")] {
            std::fs::create_dir(root.path().join(version)).unwrap();
            leaf.write(&root.path().join(version), "tls");
        }
        let current = root.path().join("current");
        std::os::unix::fs::symlink("v1", &current).unwrap();
        let (cert, key) = pair(&current);
        let mut w = serve(&cert, &key, &["--reload-interval", "1s"]).await;
        assert_eq!(served(&w).await, a.fingerprint);

        // Swap `current` to v2 the atomic way, in a directory not watched.
        let staged = root.path().join("current.tmp");
        std::os::unix::fs::symlink("v2", &staged).unwrap();
        std::fs::rename(&staged, &current).unwrap();

        let line = w.wait_for_log("reloaded (").await;
        assert!(line.contains("reloaded (timer)"), "{line}");
        assert!(line.contains(&b.fingerprint), "{line}");
        assert_eq!(served(&w).await, b.fingerprint);
    })
    .await;
}
