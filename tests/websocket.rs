//! A real WebSocket server and client through wssify: what users run it for.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// A wss:// client through wssify, trusting its pinned development certificate.
async fn wss_client(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> WebSocketStream<TlsStream<TcpStream>> {
    let tls = tls_connect(addr, config, "localhost").await.unwrap();
    let url = format!("wss://localhost:{}/chat", addr.port());
    let (ws, response) = tokio_tungstenite::client_async(url, tls).await.unwrap();
    assert_eq!(response.status(), 101);
    ws
}

#[tokio::test]
async fn text_binary_large_ping_and_close_go_through() {
    bounded(WAIT, async {
        let backend = ws_echo_backend().await;
        let mut w = Wssify::start(&["--to", &backend.to_string()]).await;
        let config = pinned_client(&w.fingerprint().await);
        let mut ws = wss_client(w.addr, config).await;

        ws.send(Message::text("hello over wss")).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::text("hello over wss")
        );

        let binary: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
        ws.send(Message::binary(binary.clone())).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(binary));

        let big: Vec<u8> = (0..1024 * 1024).map(|i| (i * 31 % 251) as u8).collect();
        ws.send(Message::binary(big.clone())).await.unwrap();
        match ws.next().await.unwrap().unwrap() {
            Message::Binary(data) => assert!(data[..] == big[..], "1 MiB message intact"),
            other => panic!("expected the 1 MiB echo, got {other:?}"),
        }

        ws.send(Message::Ping(b"are you there".to_vec().into()))
            .await
            .unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::Pong(b"are you there".to_vec().into())
        );

        ws.close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        }))
        .await
        .unwrap();
        match ws.next().await {
            Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Normal),
            other => panic!("expected the close handshake, got {other:?}"),
        }
        assert!(
            ws.next().await.is_none(),
            "stream ends after the close handshake"
        );
        drop(ws);
        let line = w.wait_for_log("end=\"").await;
        assert!(line.contains("end=\"backend closed\""), "{line}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_clients_hundred_messages_each_in_order() {
    bounded(std::time::Duration::from_secs(120), async {
        let backend = ws_echo_backend().await;
        let mut w = Wssify::start(&["--to", &backend.to_string()]).await;
        let config = pinned_client(&w.fingerprint().await);
        let addr = w.addr;
        let clients = (0..100).map(|client| {
            let config = config.clone();
            tokio::spawn(async move {
                let ws = wss_client(addr, config).await;
                let (mut tx, mut rx) = ws.split();
                let sender = tokio::spawn(async move {
                    for n in 0..100 {
                        tx.send(Message::text(format!("client {client} message {n}")))
                            .await
                            .unwrap();
                    }
                    tx.close().await.unwrap();
                });
                for n in 0..100 {
                    let msg = rx.next().await.unwrap().unwrap();
                    assert_eq!(msg, Message::text(format!("client {client} message {n}")));
                }
                sender.await.unwrap();
            })
        });
        for client in futures_util::future::join_all(clients).await {
            client.unwrap();
        }
    })
    .await;
}
