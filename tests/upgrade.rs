//! An upgrade without a refused connection: a new wssify started with
//! `--reuse-port` on the port an old one serves takes every new client at
//! once; the old one, sent SIGTERM, drains and exits; a client loop running
//! throughout sees no refusal and no reset. The real binaries, real sockets.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use common::ca::Ca;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn start(port: u16, backend: &str, cert: &str, key: &str) -> Wssify {
    Wssify::start_raw(&[
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--to",
        backend,
        "--cert",
        cert,
        "--key",
        key,
        "--reuse-port",
    ])
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_wssify_takes_over_the_port_and_the_old_one_drains_with_no_client_refused() {
    bounded(WAIT * 3, async {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("upgrade test CA");
        let (cert, key) = ca.server(&["localhost"]).write(dir.path(), "srv");
        let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
        let backend = echo_backend().await.to_string();
        let port = free_port();
        let mut old = start(port, &backend, cert, key).await;
        let addr = old.addr;
        let config = trusting_client(&[ca.der()]);

        // One long-lived connection on the old process: it must outlive
        // the switch and keep moving bytes while the old one drains.
        let mut long = tls_connect(addr, config.clone(), "localhost")
            .await
            .unwrap();

        // Clients back to back, each a handshake and an echo, throughout.
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let clients = {
            let (stop, done, config) = (stop.clone(), done.clone(), config.clone());
            tokio::spawn(async move {
                let mut failures = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let attempt = async {
                        let mut tls = tls_connect(addr, config.clone(), "localhost").await?;
                        tls.write_all(b"ping").await?;
                        let mut back = [0u8; 4];
                        tls.read_exact(&mut back).await?;
                        Ok::<_, std::io::Error>(back)
                    };
                    match attempt.await {
                        Ok(back) if &back == b"ping" => {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(back) => failures.push(format!("wrong echo {back:?}")),
                        Err(e) => failures.push(e.to_string()),
                    }
                }
                failures
            })
        };
        let wait_for = |n: usize| {
            let done = done.clone();
            async move {
                while done.load(Ordering::Relaxed) < n {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
            }
        };
        wait_for(20).await;

        // The upgrade: the new one binds the same port beside the old one.
        let mut new = start(port, &backend, cert, key).await;
        // The client is sequential: the one connection it may have had in
        // flight as the new one started was the old one's to accept. Every
        // connection after it begins with the new one listening.
        let in_flight = done.load(Ordering::Relaxed) + 1;
        wait_for(in_flight).await;
        let before = done.load(Ordering::Relaxed);
        let accepted_by_old = old.lines_with(" accepted").len();
        wait_for(before + 30).await;
        assert_eq!(
            old.lines_with(" accepted").len(),
            accepted_by_old,
            "new clients went to the new wssify only"
        );
        assert!(new.lines_with(" accepted").len() >= 30, "{}", new.log());

        // The old one drains: its open connection still works, then ends.
        old.signal("TERM");
        old.wait_for_log("stopped accepting").await;
        long.write_all(b"still").await.unwrap();
        let mut back = [0u8; 5];
        long.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"still");
        drop(long);
        assert_eq!(old.wait_exit(WAIT).await, Some(0), "log:\n{}", old.log());

        let after = done.load(Ordering::Relaxed);
        wait_for(after + 20).await;
        stop.store(true, Ordering::Relaxed);
        let failures = clients.await.unwrap();
        assert!(failures.is_empty(), "clients failed: {failures:?}");
        new.signal("TERM");
        assert_eq!(new.wait_exit(WAIT).await, Some(0), "log:\n{}", new.log());
    })
    .await;
}
