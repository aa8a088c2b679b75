//! Thousands of idle connections, then data on every one of them: the
//! memory savings (buffers released while idle) must never cost a byte.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_idle_connections_all_move_data_again() {
    bounded(Duration::from_secs(180), async {
        const CONNECTIONS: usize = 2000;
        let backend = echo_backend().await;
        // One thread: the current-thread runtime path, under load.
        let mut w = Wssify::start(&["--to", &backend.to_string(), "--threads", "1"]).await;
        let config = pinned_client(&w.fingerprint().await);

        let mut held = Vec::with_capacity(CONNECTIONS);
        for batch in 0..CONNECTIONS / 100 {
            let opening = (0..100).map(|i| {
                let (addr, config) = (w.addr, config.clone());
                tokio::spawn(async move {
                    let mut tls = tls_connect(addr, config, "localhost").await.unwrap();
                    let hello = format!("hello {}", batch * 100 + i);
                    tls.write_all(hello.as_bytes()).await.unwrap();
                    let mut back = vec![0u8; hello.len()];
                    tls.read_exact(&mut back).await.unwrap();
                    assert_eq!(back, hello.as_bytes());
                    tls
                })
            });
            for task in futures_util::future::join_all(opening).await {
                held.push(task.unwrap());
            }
        }

        // All idle now. Then every connection moves 64 KiB each way, which
        // needs buffers again on both sides of wssify.
        let busy = held.into_iter().enumerate().map(|(i, mut tls)| {
            tokio::spawn(async move {
                let data: Vec<u8> = (0..64 * 1024).map(|b| (b * 7 + i) as u8).collect();
                let (mut rd, mut wr) = tokio::io::split(&mut tls);
                let send = async {
                    wr.write_all(&data).await.unwrap();
                };
                let mut back = vec![0u8; data.len()];
                let receive = async {
                    rd.read_exact(&mut back).await.unwrap();
                };
                tokio::join!(send, receive);
                assert!(back == data, "connection {i} got its bytes back intact");
            })
        });
        for task in futures_util::future::join_all(busy).await {
            task.unwrap();
        }
        assert!(w.lines_with("end=\"client error").is_empty(), "{}", w.log());
    })
    .await;
}
