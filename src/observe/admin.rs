//! The `--admin` server: plain HTTP on its own socket, never TLS, so that
//! Prometheus, a load balancer's health check and Kubernetes probes reach
//! it without certificates.
//!
//! It is written here on tokio rather than taken from an HTTP crate: it
//! answers three GETs and must never become a way in. Each request head is
//! read within [`HEAD_TIMEOUT`] and [`MAX_HEAD`] bytes, or the connection
//! is answered (408, 431) and closed; at most [`MAX_CLIENTS`] are served at
//! once (more are closed at once); one request per connection
//! (`Connection: close`); only `GET` and `HEAD` of a known path, anything
//! else is 404 or 405. Nothing it reads reaches a log line.

use std::sync::Arc;
use std::time::Duration;

use log::debug;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::timeout;

use crate::observe::metrics::{self, Sources};
use crate::observe::ready::Readiness;

/// The most a request head may take, request line and headers.
pub const MAX_HEAD: usize = 8 * 1024;
/// How long a client has to send its whole request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client has to take the answer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Admin connections served at once; more are closed at once.
pub const MAX_CLIENTS: usize = 32;

/// What the admin server answers from.
pub struct Admin {
    /// Readiness, for `/readyz`.
    pub ready: Arc<Readiness>,
    /// What `/metrics` reads, once the server is set up (`None` before:
    /// `/metrics` is then 503).
    pub sources: std::sync::OnceLock<Sources>,
}

/// Serves `listener` for the process's life.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>) {
    let room = Arc::new(Semaphore::new(MAX_CLIENTS));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                debug!("--admin: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Too many at once: closed without a word.
        let Ok(permit) = room.clone().try_acquire_owned() else {
            continue;
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            answer(stream, &admin).await;
            drop(permit);
        });
    }
}

/// Reads one request head and answers it.
async fn answer(mut stream: TcpStream, admin: &Admin) {
    let response = match timeout(HEAD_TIMEOUT, read_head(&mut stream)).await {
        Err(_) => Response::plain(408, "Request Timeout", "request head not sent in time\n"),
        Ok(Err(Head::TooLarge)) => Response::plain(
            431,
            "Request Header Fields Too Large",
            "request head over 8 KiB\n",
        ),
        Ok(Err(Head::Closed)) => return,
        Ok(Ok(head)) => route(&head, admin),
    };
    let _ = timeout(WRITE_TIMEOUT, async {
        stream.write_all(&response.bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

/// Why no request head was read.
enum Head {
    TooLarge,
    Closed,
}

/// Reads until the blank line that ends a request head, at most [`MAX_HEAD`].
async fn read_head(stream: &mut TcpStream) -> Result<Vec<u8>, Head> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await.map_err(|_| Head::Closed)?;
        if n == 0 {
            return Err(Head::Closed);
        }
        head.extend_from_slice(&chunk[..n]);
        if let Some(end) = find(&head, b"\r\n\r\n").or_else(|| find(&head, b"\n\n")) {
            head.truncate(end);
            return Ok(head);
        }
        if head.len() > MAX_HEAD {
            return Err(Head::TooLarge);
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The answer to a request head.
fn route(head: &[u8], admin: &Admin) -> Response {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Response::plain(400, "Bad Request", "malformed request line\n");
    };
    if !version.starts_with("HTTP/1.") {
        return Response::plain(400, "Bad Request", "HTTP/1.x only\n");
    }
    // A query string is ignored; the path must be one of the three exactly.
    let path = target.split('?').next().unwrap_or_default();
    if !matches!(path, "/metrics" | "/healthz" | "/readyz") {
        return Response::plain(
            404,
            "Not Found",
            "not found: /metrics, /healthz and /readyz are served\n",
        );
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => {
            let mut r = Response::plain(405, "Method Not Allowed", "GET or HEAD only\n");
            r.allow = true;
            return r;
        }
    };
    let mut response = match path {
        "/healthz" => Response::plain(200, "OK", "ok\n"),
        "/readyz" => match admin.ready.check() {
            Ok(()) => Response::plain(200, "OK", "ready\n"),
            Err(why) => Response::plain(503, "Service Unavailable", &format!("not ready: {why}\n")),
        },
        _ => match admin.sources.get() {
            Some(sources) => Response {
                status: 200,
                reason: "OK",
                content_type: metrics::CONTENT_TYPE,
                body: metrics::render(sources).into_bytes(),
                allow: false,
                head_only: false,
            },
            None => Response::plain(503, "Service Unavailable", "starting\n"),
        },
    };
    response.head_only = head_only;
    response
}

/// One HTTP answer.
struct Response {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    body: Vec<u8>,
    /// Send `Allow: GET, HEAD` (405).
    allow: bool,
    /// A HEAD: the headers a GET gets (its length too), no body.
    head_only: bool,
}

impl Response {
    fn plain(status: u16, reason: &'static str, body: &str) -> Response {
        Response {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            body: body.as_bytes().to_vec(),
            allow: false,
            head_only: false,
        }
    }

    fn head(&self, len: usize) -> Vec<u8> {
        let allow = if self.allow {
            "Allow: GET, HEAD\r\n"
        } else {
            ""
        };
        format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {len}\r\n{allow}Cache-Control: no-store\r\nConnection: close\r\n\r\n",
            self.status, self.reason, self.content_type
        )
        .into_bytes()
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = self.head(self.body.len());
        if !self.head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}
