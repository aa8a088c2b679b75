//! Telling a TLS client from everything else by its first bytes.
//!
//! Nothing is parsed beyond that: a TLS handshake record goes on to rustls;
//! a plain HTTP request (someone typed `ws://` or `http://`) gets a short
//! `400` that says to use `wss://` or `https://`; anything else goes to
//! rustls too, with the bytes read here, so that it answers with the same
//! fatal alert it would give on its own (an SSLv2-format hello, say).

use std::time::Duration;

use crate::socket::Socket;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, timeout, timeout_at};

/// The first byte of every TLS record that starts a handshake.
const TLS_HANDSHAKE: u8 = 0x16;

/// HTTP methods whose request line we recognise.
const HTTP_METHODS: [&[u8]; 9] = [
    b"GET ",
    b"POST ",
    b"HEAD ",
    b"PUT ",
    b"DELETE ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
];

/// The body of the answer to plain HTTP.
pub const PLAIN_HTTP_BODY: &str =
    "This port speaks TLS: connect with wss:// or https:// instead of ws:// or http://.\n";

/// What the first bytes of a connection turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum FirstBytes {
    /// A TLS handshake record: hand the stream to rustls (nothing consumed).
    Tls,
    /// The client closed before sending anything (port probes, health checks).
    Nothing,
    /// A plain HTTP request line.
    PlainHttp,
    /// Anything else; holds the bytes read from the stream while looking
    /// for an HTTP method (rustls must see them too).
    NotTls(Head),
}

/// The first bytes of a connection that is neither TLS nor HTTP, as read
/// (consumed) from the socket while looking for an HTTP method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    bytes: [u8; 8],
    len: usize,
}

impl Head {
    /// The first byte, for the log.
    pub fn first(&self) -> u8 {
        self.bytes[0]
    }

    /// Every byte read, in order.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// Looks at the first byte without consuming it; for non-TLS input, reads
/// enough to recognise an HTTP method. Returns `None` on the deadline.
pub async fn classify(tcp: &mut Socket, deadline: Instant) -> std::io::Result<Option<FirstBytes>> {
    let mut first = [0u8; 1];
    let n = match timeout_at(deadline, tcp.peek(&mut first)).await {
        Ok(result) => result?,
        Err(_) => return Ok(None),
    };
    if n == 0 {
        return Ok(Some(FirstBytes::Nothing));
    }
    if first[0] == TLS_HANDSHAKE {
        return Ok(Some(FirstBytes::Tls));
    }
    // Not a TLS handshake, so the bytes may be consumed: read up to the
    // longest method (rustls is given them if this is not HTTP).
    let mut head = [0u8; 8];
    let mut len = 0;
    while len < head.len() && could_be_http(&head[..len]) {
        match timeout_at(deadline, tcp.read(&mut head[len..])).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(n)) => len += n,
            Ok(Err(e)) => return Err(e),
        }
        if is_http(&head[..len]) {
            return Ok(Some(FirstBytes::PlainHttp));
        }
    }
    if len == 0 {
        // Peeked but not read (the deadline came first): the byte is
        // still in the socket, where rustls will read it.
        return Ok(Some(FirstBytes::NotTls(Head {
            bytes: [first[0], 0, 0, 0, 0, 0, 0, 0],
            len: 0,
        })));
    }
    Ok(Some(FirstBytes::NotTls(Head { bytes: head, len })))
}

fn could_be_http(head: &[u8]) -> bool {
    HTTP_METHODS
        .iter()
        .any(|m| m.starts_with(&head[..head.len().min(m.len())]))
}

fn is_http(head: &[u8]) -> bool {
    HTTP_METHODS.iter().any(|m| head.starts_with(m))
}

/// Answers a plain HTTP request with `400` and closes, reading (and
/// discarding) what the client still sends for a moment so the kernel does
/// not turn the close into a reset that would destroy the answer.
pub async fn answer_plain_http(tcp: &mut Socket) -> std::io::Result<()> {
    let response = format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        PLAIN_HTTP_BODY.len(),
        PLAIN_HTTP_BODY
    );
    timeout(Duration::from_secs(5), tcp.write_all(response.as_bytes()))
        .await
        .map_err(|_| std::io::ErrorKind::TimedOut)??;
    tcp.shutdown().await?;
    linger(tcp).await;
    Ok(())
}

/// Drains a little of what the peer still sends, for at most a second, so a
/// close does not become a reset while our last bytes are in flight.
pub async fn linger(tcp: &mut Socket) {
    let mut sink = [0u8; 1024];
    let mut budget: usize = 64 * 1024;
    let deadline = Instant::now() + Duration::from_secs(1);
    while budget > 0 {
        match timeout_at(deadline, tcp.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => budget = budget.saturating_sub(n),
            _ => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_methods_from_a_prefix() {
        assert!(could_be_http(b""));
        assert!(could_be_http(b"GE"));
        assert!(could_be_http(b"OPTIONS"));
        assert!(!could_be_http(b"GX"));
        assert!(is_http(b"GET /"));
        assert!(is_http(b"CONNECT "));
        assert!(!is_http(b"GET"));
        assert!(!is_http(b"\x00\x01"));
    }
}
