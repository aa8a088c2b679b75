//! A server-side TLS stream over TCP that owns every buffer it uses, so an
//! idle connection holds none.
//!
//! It drives rustls' unbuffered API. rustls' buffered `ServerConnection`
//! (what tokio-rustls wraps) keeps a 4 KiB incoming record buffer for the
//! connection's whole life; here the incoming ciphertext, the decrypted
//! plaintext not yet read, and the outgoing ciphertext not yet sent each
//! live in a `Vec` that is released as soon as it is empty. That is most of
//! the memory an idle WebSocket costs (measured with valgrind massif).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus,
};
use rustls::{ServerConfig, SupportedCipherSuite};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// How much ciphertext is read from the socket at a time: two full TLS
/// records (16 KiB of plaintext plus header and tag each), so bulk
/// transfers take fewer system calls. Held only while bytes are pending.
const READ_CHUNK: usize = 2 * (16 * 1024 + 5 + 256);
/// Largest handshake flight we accept buffered (client certificates can be
/// large); rustls enforces the same bound on handshake messages.
const MAX_INCOMING: usize = 64 * 1024 + READ_CHUNK;
/// Outgoing ciphertext queued before writes push back.
const OUTGOING_LIMIT: usize = 64 * 1024;
/// Plaintext per record (TLS' maximum).
const MAX_RECORD_PLAINTEXT: usize = 16 * 1024;
/// Plaintext taken per `poll_write`, encrypted as consecutive records and
/// sent with one system call.
const MAX_WRITE: usize = 4 * MAX_RECORD_PLAINTEXT;

/// A TLS connection to one client, after or during its handshake.
pub struct TlsStream {
    tcp: TcpStream,
    conn: UnbufferedServerConnection,
    /// Ciphertext read from the socket and not yet processed.
    incoming: Incoming,
    /// Decrypted bytes not yet handed to the reader, from `taken` on.
    plaintext: Vec<u8>,
    taken: usize,
    /// Ciphertext to send, from `sent` on.
    outgoing: Vec<u8>,
    sent: usize,
    /// The peer sent close_notify, or closed TCP: nothing more to read.
    read_closed: bool,
    /// We queued close_notify: nothing more may be written.
    write_closed: bool,
    /// The server name the client asked for, read from its ClientHello.
    sni: Option<String>,
}

/// What the log line reports about a finished handshake.
pub struct Negotiated {
    /// The client's SNI, if any.
    pub sni: Option<String>,
    /// The TLS version.
    pub version: Option<rustls::ProtocolVersion>,
    /// The cipher suite.
    pub suite: Option<SupportedCipherSuite>,
    /// The key exchange group.
    pub group: Option<rustls::NamedGroup>,
    /// The ALPN protocol.
    pub alpn: Option<Vec<u8>>,
}

impl TlsStream {
    /// Performs the server handshake on `tcp`. Bound it with a timeout.
    pub async fn accept(tcp: TcpStream, config: Arc<ServerConfig>) -> io::Result<TlsStream> {
        let conn = UnbufferedServerConnection::new(config).map_err(io::Error::other)?;
        let mut stream = TlsStream {
            tcp,
            conn,
            incoming: Incoming::default(),
            plaintext: Vec::new(),
            taken: 0,
            outgoing: Vec::new(),
            sent: 0,
            read_closed: false,
            write_closed: false,
            sni: None,
        };
        std::future::poll_fn(|cx| stream.poll_handshake(cx)).await?;
        Ok(stream)
    }

    /// What was negotiated, for the log line.
    pub fn negotiated(&self) -> Negotiated {
        Negotiated {
            sni: self.sni.clone(),
            version: self.conn.protocol_version(),
            suite: self.conn.negotiated_cipher_suite(),
            group: self.conn.negotiated_key_exchange_group().map(|g| g.name()),
            alpn: self.conn.alpn_protocol().map(<[u8]>::to_vec),
        }
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.sni.is_none() && !self.incoming.pending().is_empty() {
                self.sni = crate::sniff::client_hello_sni(self.incoming.pending());
            }
            let UnbufferedStatus { discard, state } =
                self.conn.process_tls_records(self.incoming.pending_mut());
            let state = match state {
                Ok(state) => state,
                Err(e) => {
                    self.incoming.consume(discard);
                    return Poll::Ready(Err(self.fail(cx, e)));
                }
            };
            let mut need_bytes = false;
            let mut done = false;
            match state {
                ConnectionState::EncodeTlsData(mut s) => {
                    encode_into(&mut self.outgoing, |out| s.encode(out))?;
                }
                ConnectionState::TransmitTlsData(s) => s.done(),
                ConnectionState::BlockedHandshake => need_bytes = true,
                ConnectionState::WriteTraffic(_) | ConnectionState::ReadTraffic(_) => done = true,
                ConnectionState::PeerClosed | ConnectionState::Closed => {
                    self.incoming.consume(discard);
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "client closed the connection during the handshake",
                    )));
                }
                _ => need_bytes = true,
            }
            self.incoming.consume(discard);
            if !(need_bytes || done) {
                // Keep encoding: the whole flight goes out in one write.
                continue;
            }
            // Our flight must go out before we wait for the client's next one.
            ready!(self.poll_send(cx))?;
            if done {
                return Poll::Ready(Ok(()));
            }
            if need_bytes && ready!(self.poll_fill(cx, MAX_INCOMING))? == 0 {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "client closed the connection during the handshake",
                )));
            }
        }
    }

    /// Turns a TLS error into an I/O error, after trying once to send the
    /// alert rustls queued for it.
    fn fail(&mut self, cx: &mut Context<'_>, error: rustls::Error) -> io::Error {
        for _ in 0..4 {
            let UnbufferedStatus { state, .. } = self.conn.process_tls_records(&mut []);
            match state {
                Ok(ConnectionState::EncodeTlsData(mut s)) => {
                    if encode_into(&mut self.outgoing, |out| s.encode(out)).is_err() {
                        break;
                    }
                }
                Ok(ConnectionState::TransmitTlsData(s)) => s.done(),
                _ => break,
            }
        }
        let _ = self.poll_send(cx);
        io::Error::new(io::ErrorKind::InvalidData, error)
    }

    /// Reads more ciphertext from the socket into `incoming` (at most `max`
    /// bytes held). `Ready(Ok(0))` is the client's FIN.
    fn poll_fill(&mut self, cx: &mut Context<'_>, max: usize) -> Poll<io::Result<usize>> {
        if self.incoming.pending().len() >= max {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "TLS message too large",
            )));
        }
        loop {
            ready!(self.tcp.poll_read_ready(cx))?;
            match self.incoming.read_from(&self.tcp, max) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result),
            }
        }
    }

    /// Sends queued ciphertext; `Ready(Ok)` once none is left.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.outgoing.len() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.outgoing[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.outgoing = Vec::new();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Fills `out` with decrypted bytes: first any left over from earlier,
    /// then from records received, reading the socket as needed. Returns
    /// with nothing added only at the end of the stream.
    fn poll_decrypt(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let start = out.filled().len();
        loop {
            if self.taken < self.plaintext.len() {
                let available = &self.plaintext[self.taken..];
                let n = available.len().min(out.remaining());
                out.put_slice(&available[..n]);
                self.taken += n;
                if self.taken == self.plaintext.len() {
                    self.plaintext = Vec::new();
                    self.taken = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if self.read_closed || out.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            let UnbufferedStatus { discard, state } =
                self.conn.process_tls_records(self.incoming.pending_mut());
            let state = match state {
                Ok(state) => state,
                Err(e) => {
                    self.incoming.consume(discard);
                    return Poll::Ready(Err(self.fail(cx, e)));
                }
            };
            let mut need_bytes = false;
            match state {
                ConnectionState::ReadTraffic(mut s) => {
                    while let Some(record) = s.next_record() {
                        let payload = record.map_err(io::Error::other)?.payload;
                        // Straight into the reader's buffer; only what does
                        // not fit waits in `plaintext`.
                        let n = if self.plaintext.is_empty() {
                            payload.len().min(out.remaining())
                        } else {
                            0
                        };
                        out.put_slice(&payload[..n]);
                        self.plaintext.extend_from_slice(&payload[n..]);
                    }
                }
                ConnectionState::EncodeTlsData(mut s) => {
                    encode_into(&mut self.outgoing, |out| s.encode(out))?;
                }
                ConnectionState::TransmitTlsData(s) => s.done(),
                ConnectionState::PeerClosed | ConnectionState::Closed => self.read_closed = true,
                _ => need_bytes = true,
            }
            self.incoming.consume(discard);
            if self.sent < self.outgoing.len() {
                // Post-handshake messages (tickets, key updates): send what
                // we can now; poll_write and poll_flush send the rest.
                let _ = self.poll_send(cx)?;
            }
            // Keep decrypting records already received while there is room,
            // so a burst reaches the reader in one piece; never wait for the
            // socket once something was delivered.
            let delivered = out.filled().len() > start;
            if delivered && (need_bytes || out.remaining() == 0 || !self.plaintext.is_empty()) {
                return Poll::Ready(Ok(()));
            }
            if need_bytes && ready!(self.poll_fill(cx, MAX_INCOMING))? == 0 {
                // FIN without close_notify: the client has finished sending.
                self.read_closed = true;
            }
        }
    }

    /// Gets a state in which application data may be encrypted and runs `f`
    /// on it. Records that arrive meanwhile are decrypted for the reader.
    fn with_write_traffic<T>(
        &mut self,
        cx: &mut Context<'_>,
        mut f: impl FnMut(
            &mut rustls::unbuffered::WriteTraffic<'_, rustls::server::ServerConnectionData>,
            &mut Vec<u8>,
        ) -> io::Result<T>,
    ) -> io::Result<T> {
        loop {
            let UnbufferedStatus { discard, state } =
                self.conn.process_tls_records(self.incoming.pending_mut());
            let state = match state {
                Ok(state) => state,
                Err(e) => {
                    self.incoming.consume(discard);
                    return Err(self.fail(cx, e));
                }
            };
            let result = match state {
                ConnectionState::WriteTraffic(mut s) => Some(f(&mut s, &mut self.outgoing)),
                ConnectionState::ReadTraffic(mut s) => {
                    while let Some(record) = s.next_record() {
                        let record = record.map_err(io::Error::other)?;
                        self.plaintext.extend_from_slice(record.payload);
                    }
                    None
                }
                ConnectionState::EncodeTlsData(mut s) => {
                    encode_into(&mut self.outgoing, |out| s.encode(out))?;
                    None
                }
                ConnectionState::TransmitTlsData(s) => {
                    s.done();
                    None
                }
                ConnectionState::PeerClosed => {
                    self.read_closed = true;
                    None
                }
                _ => Some(Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "the TLS connection is closed for writing",
                ))),
            };
            self.incoming.consume(discard);
            if let Some(result) = result {
                return result;
            }
        }
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.get_mut().poll_decrypt(cx, buf)
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.write_closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if this.outgoing.len() - this.sent >= OUTGOING_LIMIT {
            ready!(this.poll_send(cx))?;
        }
        let take = buf.len().min(MAX_WRITE);
        this.with_write_traffic(cx, |s, outgoing| {
            for record in buf[..take].chunks(MAX_RECORD_PLAINTEXT) {
                encode_into(outgoing, |out| s.encrypt(record, out))?;
            }
            Ok(())
        })?;
        // Start sending now; whatever the socket will not take stays queued.
        let _ = this.poll_send(cx)?;
        Poll::Ready(Ok(take))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_send(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.write_closed {
            this.with_write_traffic(cx, |s, outgoing| {
                encode_into(outgoing, |out| s.queue_close_notify(out))
            })?;
            this.write_closed = true;
        }
        ready!(this.poll_send(cx))?;
        match ready!(Pin::new(&mut this.tcp).poll_shutdown(cx)) {
            Err(e) if e.kind() != io::ErrorKind::NotConnected => Poll::Ready(Err(e)),
            _ => Poll::Ready(Ok(())),
        }
    }
}

/// Something rustls writes into a caller's buffer, failing with the size it
/// needs when the buffer is too small.
trait NeedsSize {
    fn required_size(&self) -> Option<usize>;
}

impl NeedsSize for EncodeError {
    fn required_size(&self) -> Option<usize> {
        match self {
            EncodeError::InsufficientSize(InsufficientSizeError { required_size }) => {
                Some(*required_size)
            }
            _ => None,
        }
    }
}

impl NeedsSize for EncryptError {
    fn required_size(&self) -> Option<usize> {
        match self {
            EncryptError::InsufficientSize(InsufficientSizeError { required_size }) => {
                Some(*required_size)
            }
            _ => None,
        }
    }
}

/// Appends what `write` produces to `out`, growing it to the size rustls asks for.
fn encode_into<E: NeedsSize + std::error::Error + Send + Sync + 'static>(
    out: &mut Vec<u8>,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, E>,
) -> io::Result<usize> {
    let used = out.len();
    let needed = match write(&mut []) {
        Ok(n) => return Ok(n),
        Err(e) => e.required_size().ok_or_else(|| io::Error::other(e))?,
    };
    out.resize(used + needed, 0);
    match write(&mut out[used..]) {
        Ok(n) => {
            out.truncate(used + n);
            Ok(n)
        }
        Err(e) => {
            out.truncate(used);
            Err(io::Error::other(e))
        }
    }
}

/// Ciphertext received and not yet processed: `buf[start..]`. Processed
/// records are skipped by moving `start` (no copying per record); the vector
/// is compacted only before a read and freed whenever it is empty.
#[derive(Default)]
struct Incoming {
    buf: Vec<u8>,
    start: usize,
}

impl Incoming {
    fn pending(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    fn pending_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..]
    }

    /// Forgets the first `n` pending bytes (records rustls has finished with).
    fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.buf.len());
        if self.start == self.buf.len() {
            self.buf = Vec::new();
            self.start = 0;
        }
    }

    /// One non-blocking read from `tcp`, keeping at most `max` bytes pending.
    fn read_from(&mut self, tcp: &TcpStream, max: usize) -> io::Result<usize> {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let held = self.buf.len();
        self.buf.resize(held + READ_CHUNK.min(max - held), 0);
        let result = tcp.try_read(&mut self.buf[held..]);
        self.buf.truncate(held + *result.as_ref().unwrap_or(&0));
        shrink_if_empty(&mut self.buf);
        result
    }
}

fn shrink_if_empty(buf: &mut Vec<u8>) {
    if buf.is_empty() && buf.capacity() > 0 {
        *buf = Vec::new();
    }
}
