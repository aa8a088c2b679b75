//! A plain ws:// WebSocket echo server: the kind of backend wssify is put in
//! front of. It echoes every text and binary message back to its sender.
//!
//! ```text
//! cargo run --example ws_echo                    # listens on 127.0.0.1:9200
//! cargo run --example ws_echo -- 127.0.0.1:0     # any free port; the real one is printed
//! ```
//!
//! It prints `ws echo listening on ADDR` once it accepts connections.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};

const DEFAULT_ADDR: &str = "127.0.0.1:9200";

#[tokio::main]
async fn main() -> ExitCode {
    let addr = match std::env::args().nth(1) {
        Some(arg) if arg == "-h" || arg == "--help" => {
            println!("usage: ws_echo [ADDR]   (default {DEFAULT_ADDR}; port 0 picks a free port)");
            return ExitCode::SUCCESS;
        }
        Some(arg) => arg,
        None => DEFAULT_ADDR.to_string(),
    };
    let listener = match TcpListener::bind(&addr).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("ws_echo: cannot listen on {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let local = match listener.local_addr() {
        Ok(local) => local,
        Err(e) => {
            eprintln!("ws_echo: cannot read the bound address: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("ws echo listening on {local}");

    // As PID 1 in a container (deploy/kubernetes/) no signal has a default
    // action, so SIGTERM must be handled here or `podman stop` and a pod's
    // termination wait out their timeout and kill it.
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            eprintln!("ws_echo: cannot listen for SIGTERM: {e}");
            return ExitCode::FAILURE;
        }
    };
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = term.recv() => {
                println!("ws echo: SIGTERM, exiting");
                return ExitCode::SUCCESS;
            }
        };
        match accepted {
            Ok((stream, peer)) => {
                tokio::spawn(echo(stream, peer));
            }
            Err(e) => {
                // Out of descriptors and the like: pause rather than spin.
                eprintln!("ws_echo: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Echoes one client's text and binary messages until it closes.
async fn echo(stream: TcpStream, peer: SocketAddr) {
    use tokio_tungstenite::tungstenite::error::{Error, ProtocolError};
    let mut ws = match tokio_tungstenite::accept_async(stream).await {
        Ok(ws) => ws,
        // Closed before sending a request: a health check, such as the
        // connection wssify opens at start to see that its backend is up.
        Err(Error::Protocol(ProtocolError::HandshakeIncomplete)) => {
            println!("ws echo: {peer} closed before sending a request (a health check)");
            return;
        }
        Err(e) => {
            eprintln!("ws_echo: {peer}: WebSocket handshake failed: {e}");
            return;
        }
    };
    println!("ws echo: {peer} connected");
    let mut echoed = 0u64;
    while let Some(message) = ws.next().await {
        match message {
            Ok(message) if message.is_text() || message.is_binary() => {
                if let Err(e) = ws.send(message).await {
                    eprintln!("ws_echo: {peer}: cannot send: {e}");
                    return;
                }
                echoed += 1;
            }
            // Pings are answered and closes echoed by tungstenite itself.
            Ok(_) => {}
            Err(e) => {
                eprintln!("ws_echo: {peer}: {e}");
                return;
            }
        }
    }
    println!("ws echo: {peer} closed after {echoed} messages");
}
