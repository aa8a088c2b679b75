//! A connected stream socket that is TCP or UNIX: a client accepted on
//! `--listen PORT` or `--listen unix:/path`, a backend on `--to HOST:PORT`
//! or `--to unix:/path`. One type for both, so the TLS stream, the sniff
//! and the copy loop never ask which it is.
//!
//! It is an enum of tokio's two streams with the UNIX one boxed, so the
//! enum finds its tag in the TCP stream's spare bits and is exactly the
//! size of a `TcpStream` (tested below): a TCP connection, the common case,
//! costs not a byte more, and each poll pays one well-predicted match. A
//! UNIX connection costs one small allocation.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd};
use std::pin::Pin;
use std::task::{Context, Poll};

use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// One connected stream socket.
#[derive(Debug)]
pub enum Socket {
    /// Over TCP.
    Tcp(TcpStream),
    /// Over a UNIX socket, boxed (see the module's comment).
    Unix(Box<UnixStream>),
}

/// A [`Socket`] taken off its runtime (a plain descriptor), to be
/// registered on another one (`connection::handshake_on`).
#[derive(Debug)]
pub enum Detached {
    /// A TCP socket.
    Tcp(std::net::TcpStream),
    /// A UNIX socket.
    Unix(std::os::unix::net::UnixStream),
}

impl From<TcpStream> for Socket {
    fn from(tcp: TcpStream) -> Socket {
        Socket::Tcp(tcp)
    }
}

impl From<UnixStream> for Socket {
    fn from(unix: UnixStream) -> Socket {
        Socket::Unix(Box::new(unix))
    }
}

impl Socket {
    /// The TCP socket, for what only TCP has (TCP_NODELAY, keepalive, a
    /// reset by SO_LINGER 0, addresses for the PROXY header). A UNIX
    /// stream has none of these: dropping it is its close, and its peer
    /// cannot be sent a reset.
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Socket::Tcp(s) => Some(s),
            Socket::Unix(_) => None,
        }
    }

    /// Ready when a read may find something (or the peer closed).
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Socket::Tcp(s) => s.poll_read_ready(cx),
            Socket::Unix(s) => s.poll_read_ready(cx),
        }
    }

    /// Reads without consuming (the sniff looks at the first byte and
    /// leaves it for rustls); waits until something is there.
    pub async fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.peek(buf).await,
            // tokio's UnixStream has no peek: recv(MSG_PEEK) when readable.
            Socket::Unix(s) => {
                s.async_io(Interest::READABLE, || {
                    // SAFETY: a `&mut [u8]` seen as `&mut [MaybeUninit<u8>]`
                    // is sound as long as nothing writes an uninitialised
                    // byte through it; recv(2) (socket2's `peek`) only
                    // writes bytes it received. socket2 takes nothing but
                    // `MaybeUninit` buffers, and neither std nor tokio
                    // offers a peek on a UNIX stream in stable Rust.
                    let uninit = unsafe {
                        &mut *(std::ptr::from_mut::<[u8]>(buf) as *mut [MaybeUninit<u8>])
                    };
                    SockRef::from(&**s).peek(uninit)
                })
                .await
            }
        }
    }

    /// Takes the socket off this runtime, as a plain descriptor.
    pub fn into_std(self) -> io::Result<Detached> {
        match self {
            Socket::Tcp(s) => s.into_std().map(Detached::Tcp),
            Socket::Unix(s) => s.into_std().map(Detached::Unix),
        }
    }

    /// Registers a detached socket on the runtime this is called on.
    pub fn from_std(detached: Detached) -> io::Result<Socket> {
        match detached {
            Detached::Tcp(s) => TcpStream::from_std(s).map(Socket::Tcp),
            Detached::Unix(s) => UnixStream::from_std(s).map(Socket::from),
        }
    }

    /// A duplicate of the descriptor, registered on the runtime this is
    /// called on (the same connection, watched from here).
    pub fn duplicate(&self) -> io::Result<Socket> {
        let duplicate = SockRef::from(self).try_clone()?;
        match self {
            Socket::Tcp(_) => TcpStream::from_std(duplicate.into()).map(Socket::Tcp),
            Socket::Unix(_) => UnixStream::from_std(duplicate.into()).map(Socket::from),
        }
    }
}

impl AsFd for Socket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Socket::Tcp(s) => s.as_fd(),
            Socket::Unix(s) => s.as_fd(),
        }
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Unix(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Unix(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Socket::Unix(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Socket::Tcp(s) => s.is_write_vectored(),
            Socket::Unix(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_flush(cx),
            Socket::Unix(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Unix(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

impl crate::proxy::Peer for Socket {
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_read_ready(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Every session holds two (client and backend): a TCP connection must
    /// pay nothing for the UNIX case.
    #[test]
    fn a_socket_is_the_size_of_a_tcp_stream() {
        assert_eq!(
            std::mem::size_of::<Socket>(),
            std::mem::size_of::<TcpStream>()
        );
    }

    #[tokio::test]
    async fn a_unix_peek_leaves_the_bytes_to_read() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut a = Socket::from(a);
        let mut b = Socket::from(b);
        b.write_all(b"\x16hello").await.unwrap();
        let mut first = [0u8; 1];
        assert_eq!(a.peek(&mut first).await.unwrap(), 1);
        assert_eq!(first, [0x16]);
        let mut all = [0u8; 6];
        a.read_exact(&mut all).await.unwrap();
        assert_eq!(&all, b"\x16hello");
        // Moved between runtimes' registrations, it is the same connection.
        let mut a = Socket::from_std(a.into_std().unwrap()).unwrap();
        let b = b.duplicate().unwrap();
        let mut b = b;
        b.write_all(b"!").await.unwrap();
        a.read_exact(&mut first).await.unwrap();
        assert_eq!(first, *b"!");
    }
}
