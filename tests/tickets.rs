//! `--ticket-keys`: two wssify processes with one key file are two
//! replicas behind a load balancer; a client's ticket from one resumes on
//! the other, before, during and after a rotation. The real binary, real
//! sockets, a real rustls client with its own session store.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::ca::{Ca, write_atomic};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn key_line(fill: u8) -> String {
    let mut key = [fill; 80];
    key[1] = fill.wrapping_mul(7);
    base64(&key)
}

fn keys(fills: &[u8]) -> String {
    fills.iter().map(|f| key_line(*f) + "\n").collect()
}

/// A handshake with `w` and one echo (which also reads the tickets sent
/// after the handshake); whether it resumed.
async fn resumed(w: &Wssify, config: &Arc<rustls::ClientConfig>) -> bool {
    let mut tls = tls_connect(w.addr, config.clone(), "localhost")
        .await
        .unwrap();
    tls.write_all(b"t").await.unwrap();
    let mut one = [0u8; 1];
    tls.read_exact(&mut one).await.unwrap();
    tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
}

async fn replica(dir: &Path, file: &Path) -> Wssify {
    let backend = echo_backend().await;
    Wssify::start(&[
        "--to",
        &backend.to_string(),
        "--cert",
        dir.join("srv.crt").to_str().unwrap(),
        "--key",
        dir.join("srv.key").to_str().unwrap(),
        "--ticket-keys",
        file.to_str().unwrap(),
    ])
    .await
}

#[tokio::test]
async fn a_ticket_from_one_replica_resumes_on_the_other_through_a_rotation() {
    bounded(WAIT * 2, async {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("tickets test CA");
        ca.server(&["localhost"]).write(dir.path(), "srv");
        // Each replica mounts its own copy of the one Secret.
        let (file_a, file_b) = (dir.path().join("a.keys"), dir.path().join("b.keys"));
        write_atomic(&file_a, &keys(&[1, 2, 3]));
        write_atomic(&file_b, &keys(&[1, 2, 3]));
        let mut a = replica(dir.path(), &file_a).await;
        let mut b = replica(dir.path(), &file_b).await;
        let roots = [ca.der()];

        // A ticket from A resumes on B, and one from B on A.
        let client = trusting_client(&roots);
        assert!(!resumed(&a, &client).await, "the first handshake is full");
        assert!(resumed(&b, &client).await, "A's ticket resumes on B");
        assert!(resumed(&a, &client).await, "B's ticket resumes on A");

        // Mid-rotation: A has dropped key 1 and added key 4, B not yet.
        write_atomic(&file_a, &keys(&[2, 3, 4]));
        a.signal("HUP");
        a.wait_for_log("--ticket-keys").await;
        for (from, to, what) in [(&a, &b, "rotated A to B"), (&b, &a, "B to rotated A")] {
            let client = trusting_client(&roots);
            assert!(!resumed(from, &client).await);
            assert!(resumed(to, &client).await, "{what}");
        }

        // Both rotated: still one cluster.
        write_atomic(&file_b, &keys(&[2, 3, 4]));
        b.signal("HUP");
        b.wait_for_log("--ticket-keys").await;
        let client = trusting_client(&roots);
        assert!(!resumed(&b, &client).await);
        assert!(resumed(&a, &client).await, "after the rotation");

        // Another cluster's keys: a full handshake, never an error.
        let other = dir.path().join("other.keys");
        write_atomic(&other, &keys(&[9]));
        let c = replica(dir.path(), &other).await;
        let client = trusting_client(&roots);
        assert!(!resumed(&a, &client).await);
        assert!(!resumed(&c, &client).await, "a foreign ticket is not taken");
    })
    .await;
}

#[test]
fn a_bad_key_file_is_named_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("k");
    std::fs::write(&file, format!("{}\nnot base64!\n", key_line(1))).unwrap();
    let (code, out) = run_to_exit(&[
        "--listen",
        "127.0.0.1:0",
        "--to",
        "127.0.0.1:9",
        "--ticket-keys",
        file.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!(
            "--ticket-keys {}: line 2 is not base64",
            file.display()
        )),
        "{out}"
    );
}
