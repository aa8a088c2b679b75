//! A backend is a TCP address or a UNIX socket (`--to unix:/path`): one
//! address type for the pool and one stream type for the connection, so
//! balancing, failover and back-off never ask which it is.
//!
//! The stream is `crate::socket::Socket`, an enum of tokio's two streams
//! the size of a `TcpStream`, so a session costs what it did with TCP alone.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

use tokio::net::{TcpStream, UnixStream};

/// Where one backend listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addr {
    /// A TCP address (a `--to` IP address, or one its name resolved to).
    Tcp(SocketAddr),
    /// A UNIX socket's path (`--to unix:/path`), never resolved.
    Unix(PathBuf),
}

impl fmt::Display for Addr {
    /// `127.0.0.1:9200`, `[::1]:9200` or `unix:/run/app.sock`, as `--to` takes them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Addr::Tcp(addr) => write!(f, "{addr}"),
            Addr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// An [`Addr`] written as one log field, by [`Addr::field`].
pub struct Field<'a>(&'a Addr);

impl fmt::Display for Field<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use std::os::unix::ffi::OsStrExt;
        match self.0 {
            Addr::Tcp(addr) => write!(f, "{addr}"),
            Addr::Unix(path) => write!(
                f,
                "unix:{}",
                crate::logsafe::bare(path.as_os_str().as_bytes())
            ),
        }
    }
}

impl Addr {
    /// The address as one unquoted log field (`backend=...`): a UNIX
    /// socket's path may hold a space, a quote or a newline, which are
    /// escaped as the log escapes what clients send (`src/logsafe.rs`), so
    /// the field can neither end the line nor add a field.
    pub fn field(&self) -> Field<'_> {
        Field(self)
    }

    /// Connects (no timeout here: the caller sets its own).
    pub async fn connect(&self) -> io::Result<Stream> {
        match self {
            Addr::Tcp(addr) => TcpStream::connect(addr).await.map(Stream::Tcp),
            Addr::Unix(path) => UnixStream::connect(path)
                .await
                .map(Stream::from)
                .map_err(|e| unix_error(path, e)),
        }
    }
}

/// A UNIX connect's failure with what to do about it: the OS's own words
/// ("No such file or directory") do not say which file, nor why it matters.
pub fn unix_error(path: &std::path::Path, e: io::Error) -> io::Error {
    let shown = path.display();
    let hint = match e.kind() {
        io::ErrorKind::NotFound => {
            format!("no socket at {shown}: start the backend, or fix the path in --to")
        }
        io::ErrorKind::PermissionDenied => format!(
            "permission denied on {shown}: run wssify as a user that may write to the socket (and search its directories)"
        ),
        // Linux refuses a connect to a file that is not a socket: one stat
        // (only on this failure) tells the two apart.
        io::ErrorKind::ConnectionRefused => match std::fs::metadata(path) {
            Ok(meta) if !std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) => {
                format!("{shown} is not a socket: fix the path in --to")
            }
            _ => {
                format!(
                    "nothing listens on {shown} (a socket file left behind?): start the backend"
                )
            }
        },
        _ => format!("{shown}: {e}"),
    };
    io::Error::new(e.kind(), hint)
}

/// One connection's backend stream: TCP or a UNIX socket, the size of a
/// `TcpStream` (the same type a client's socket is, see `crate::socket`).
pub use crate::socket::Socket as Stream;

#[cfg(test)]
mod tests {
    use super::*;

    /// A UNIX path is the operator's, but a space in it would still split
    /// the `backend=` field in two, and a newline start a line.
    #[test]
    fn a_unix_path_is_one_field() {
        let tcp = Addr::Tcp("[::1]:9200".parse().unwrap());
        assert_eq!(tcp.field().to_string(), "[::1]:9200");
        let unix = Addr::Unix(PathBuf::from("/run/my app/\"x\"\n.sock"));
        assert_eq!(
            unix.field().to_string(),
            "unix:/run/my\\x20app/\\\"x\\\"\\n.sock"
        );
    }
}
