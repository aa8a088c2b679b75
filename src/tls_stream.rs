//! A server-side TLS stream over TCP (or a UNIX socket, `--listen unix:`)
//! that owns every buffer it uses, so an idle connection holds none.
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
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use crate::budget::{Budget, MIN_GRANT, Waiting};
use crate::conn_id::{self, ConnId};
use crate::socket::Socket;
use crate::wire::client_hello;

/// How much ciphertext is read from the socket at a time: two full TLS
/// records (16 KiB of plaintext plus header and tag each), so bulk
/// transfers take fewer system calls. Held only while bytes are pending.
const READ_CHUNK: usize = 2 * (MAX_RECORD_PLAINTEXT + MAX_RECORD_OVERHEAD);
/// Largest handshake flight we accept buffered (client certificates can be
/// large); rustls enforces the same bound on handshake messages.
const MAX_INCOMING: usize = 64 * 1024 + READ_CHUNK;
/// The most bytes read while waiting for a whole ClientHello: its 16 KiB
/// and the headers of the records carrying it, with room to spare for a
/// client that splits it into many small records.
const MAX_HELLO_BYTES: usize = 2 * client_hello::MAX_HELLO;
/// Outgoing ciphertext queued before writes push back.
const OUTGOING_LIMIT: usize = 64 * 1024;
/// The content type of a handshake record, which every ClientHello starts with.
const HANDSHAKE_RECORD: u8 = 0x16;
/// Plaintext per record (TLS' maximum).
const MAX_RECORD_PLAINTEXT: usize = 16 * 1024;
/// What a record may add to its plaintext: header, explicit nonce, tag and
/// padding (TLS 1.3 allows up to 256 bytes of expansion).
const MAX_RECORD_OVERHEAD: usize = 5 + 256;
/// Plaintext taken per `poll_write`, encrypted as consecutive records and
/// sent with one system call.
const MAX_WRITE: usize = 4 * MAX_RECORD_PLAINTEXT;

/// A TLS connection to one client, after or during its handshake.
pub struct TlsStream {
    /// The client's socket, TCP or UNIX (`--listen unix:`).
    tcp: Socket,
    conn: UnbufferedServerConnection,
    /// Ciphertext read from the socket and not yet processed.
    incoming: Incoming,
    /// Decrypted bytes not yet handed to the reader, from `taken` on.
    plaintext: Vec<u8>,
    taken: usize,
    /// Ciphertext to send, from `sent` on.
    outgoing: Vec<u8>,
    sent: usize,
    /// Application records in `outgoing` not yet wholly sent: where each
    /// ends in `outgoing`, and its plaintext length. Allocated only while
    /// the socket does not take a write at once; empty (no allocation) when
    /// everything was sent.
    unsent_records: Vec<(usize, usize)>,
    /// Plaintext bytes whose records were written to the socket in full.
    plaintext_sent: u64,
    /// Ciphertext bytes the socket took: what the stall timeout watches
    /// (a slow reader takes part of a record long before all of it).
    ciphertext_sent: u64,
    /// The peer sent close_notify, or closed TCP: nothing more to read.
    read_closed: bool,
    /// We queued close_notify: nothing more may be written.
    write_closed: bool,
    /// The client closed TCP at a record boundary without close_notify.
    closed_without_notify: bool,
    /// During the handshake: rustls has seen every byte received and waits
    /// for more.
    awaiting_bytes: bool,
    /// A failure found after bytes of the same read were delivered: the
    /// next read returns it (tokio drops a read's bytes when it fails).
    deferred: Option<io::Error>,
    /// The server name rustls accepted, as the certificate resolver saw it
    /// (boxed: with `served`, the size of the `String` it was).
    sni: Option<Box<str>>,
    /// The algorithms of the certificate served, for the PROXY protocol.
    served: Option<Arc<crate::certs::CertAlgs>>,
    /// This stream's buffers in the process-wide memory budget.
    account: Account,
    /// rustls reported a fatal error: it is never asked again (it would run
    /// the bad record once more and queue a second fatal alert, a debug
    /// assertion in rustls, found by the fuzzer).
    failed: bool,
    /// The connection's id, named while rustls works (its log lines carry it).
    id: ConnId,
    /// Handshake flights sent in full: whether our certificate went out.
    flights: u8,
    /// The version in the client's hello (0 until seen): one older than
    /// TLS 1.2 is what a failed handshake is blamed on.
    hello_version: u16,
}

/// What the log line reports about a finished handshake.
pub struct Negotiated {
    /// The client's SNI, if any.
    pub sni: Option<String>,
    /// The algorithms of the certificate served (PROXY protocol v2).
    pub served: Option<Arc<crate::certs::CertAlgs>>,
    /// The TLS version.
    pub version: Option<rustls::ProtocolVersion>,
    /// The cipher suite.
    pub suite: Option<SupportedCipherSuite>,
    /// The key exchange group.
    pub group: Option<rustls::NamedGroup>,
    /// The ALPN protocol.
    pub alpn: Option<Vec<u8>>,
    /// The subject of the client's certificate (mTLS), if it sent one.
    pub client_cert: Option<String>,
}

/// A handshake refused under `--strict-sni`: no certificate has the name
/// the client asked for (or it asked for none).
#[derive(Debug)]
pub struct UnknownName {
    /// The name from the client's SNI.
    pub sni: Option<String>,
}

impl std::fmt::Display for UnknownName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.sni {
            Some(name) => write!(
                f,
                "no certificate for the requested name '{name}' (--strict-sni); sent unrecognized_name"
            ),
            None => f.write_str(
                "the client sent no server name (SNI) and --strict-sni is on; sent unrecognized_name",
            ),
        }
    }
}

impl std::error::Error for UnknownName {}

/// A client whose hello offers only versions older than TLS 1.2; it was
/// sent the `protocol_version` alert.
#[derive(Debug)]
pub struct TooOld;

impl std::fmt::Display for TooOld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the client supports only TLS 1.0/1.1, too old; wssify needs TLS 1.2 or newer")
    }
}

impl std::error::Error for TooOld {}

/// The client closed (or reset) the connection during the handshake.
/// Clients that do not trust our certificate mostly say so with an alert,
/// but some just close once they have read it (Node.js, Python's asyncio),
/// so whether it had gone out is what tells the two apart.
#[derive(Debug)]
pub struct ClientLeft {
    /// Our certificate had gone out in full.
    pub after_certificate: bool,
}

impl std::fmt::Display for ClientLeft {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("client closed the connection during the handshake")
    }
}

impl std::error::Error for ClientLeft {}

/// A fatal `unrecognized_name` alert as a plaintext record (RFC 6066 §3):
/// rustls answers an unresolved certificate with `access_denied`, but this
/// is what clients expect for an unknown name. It is sent before any
/// ServerHello, so no record protection applies yet.
const UNRECOGNIZED_NAME_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70];

/// A handshake that failed, with its socket, so that the caller can let
/// the alert rustls sent reach the client before closing (see
/// `sniff::linger`).
pub struct Refused {
    /// Why the handshake failed.
    pub error: io::Error,
    /// The client's socket.
    pub tcp: Socket,
}

impl TlsStream {
    /// Performs the server handshake on `tcp` with no memory budget (for
    /// tests and the fuzzer). Bound it with a timeout.
    pub async fn accept(
        tcp: impl Into<Socket>,
        config: Arc<ServerConfig>,
    ) -> io::Result<TlsStream> {
        let unlimited = Arc::new(Budget::new(usize::MAX / 2));
        TlsStream::accept_with_prefix(tcp, config, &[], unlimited)
            .await
            .map_err(|refused| refused.error)
    }

    /// Performs the server handshake on `tcp` as if `prefix` had been read
    /// from it first: the bytes a sniff has already consumed. rustls then
    /// judges them and sends its own alert when they are not TLS.
    pub async fn accept_with_prefix(
        tcp: impl Into<Socket>,
        config: Arc<ServerConfig>,
        prefix: &[u8],
        budget: Arc<Budget>,
    ) -> Result<TlsStream, Refused> {
        TlsStream::start(tcp, config, prefix, budget)?
            .handshake()
            .await
    }

    /// A stream whose handshake has not begun; `prefix` is what a sniff
    /// already read from `tcp`.
    pub fn start(
        tcp: impl Into<Socket>,
        config: Arc<ServerConfig>,
        prefix: &[u8],
        budget: Arc<Budget>,
    ) -> Result<TlsStream, Refused> {
        let mut stream =
            TlsStream::new(tcp, config, budget).map_err(|(error, tcp)| Refused { error, tcp })?;
        stream.incoming.buf.extend_from_slice(prefix);
        Ok(stream)
    }

    /// Waits until the whole ClientHello is in (it may span several
    /// records and many reads: post-quantum key shares make it 1.5 KiB and
    /// more), without handing it to rustls, and reads its server name and
    /// ALPN, so the caller can decide what the connection becomes before
    /// any TLS work is done: until then a client costs only the bytes it
    /// sent. `Ok(Err(_))`: not a ClientHello this reader takes
    /// ([`client_hello::Error`]); the bytes stay pending either way. A FIN
    /// before the hello is whole is an error ([`ClientLeft`]). Bound it
    /// with a timeout.
    pub async fn client_hello(
        &mut self,
    ) -> io::Result<Result<client_hello::Hello, client_hello::Error>> {
        // Parsed again only once the bytes it asked for are in: a hello
        // trickled byte by byte is not parsed once per byte.
        let mut need = 0;
        let waited = std::future::poll_fn(|cx| {
            loop {
                if self.incoming.pending().len() >= need {
                    match client_hello::parse(self.incoming.pending()) {
                        Err(client_hello::Error::Incomplete { at_least }) => need = at_least,
                        parsed => return Poll::Ready(Ok(parsed)),
                    }
                }
                match ready!(self.poll_fill(cx, MAX_HELLO_BYTES)) {
                    Ok(0) => return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into())),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                        return Poll::Ready(Ok(Err(client_hello::Error::TooLarge)));
                    }
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
        })
        .await;
        self.count_buffers();
        waited.map_err(|e| self.left(e))
    }

    /// Runs the handshake on `config` instead of the one the stream was
    /// started with: an ACME TLS-ALPN-01 validation (RFC 8737) must be
    /// answered from a configuration of its own (ALPN `acme-tls/1`, the
    /// challenge certificate), chosen once [`Self::client_hello`] has shown
    /// what the client asks for.
    ///
    /// Valid only while rustls has seen no byte: the pre-read keeps the
    /// hello pending without handing it over, so a connection made now from
    /// `config` starts from the same bytes. Once rustls has processed a
    /// record (it consumed bytes, queued a flight, resolved a name), the
    /// stream is bound to its configuration and this is an error.
    pub fn reconfigure(&mut self, config: Arc<ServerConfig>) -> io::Result<()> {
        let untouched = self.incoming.start == 0
            && self.outgoing.is_empty()
            && self.flights == 0
            && self.hello_version == 0
            && self.sni.is_none()
            && !self.failed
            && self.conn.is_handshaking();
        debug_assert!(untouched, "reconfigure after rustls processed a record");
        if !untouched {
            return Err(io::Error::other(
                "the TLS configuration can only be replaced before the handshake begins",
            ));
        }
        self.conn = UnbufferedServerConnection::new(config).map_err(io::Error::other)?;
        Ok(())
    }

    /// Gives back the socket and every byte read from it, untouched, for a
    /// connection passed through instead of terminated. Only before the
    /// handshake: rustls has not seen the bytes.
    pub fn into_raw(mut self) -> (Socket, Vec<u8>) {
        self.incoming.compact();
        let bytes = std::mem::take(&mut self.incoming.buf);
        (self.tcp, bytes)
    }

    /// Performs the server handshake. Bound it with a timeout.
    pub async fn handshake(mut self) -> Result<TlsStream, Refused> {
        let handshake = std::future::poll_fn(|cx| {
            let done = self.poll_handshake(cx);
            self.count_buffers();
            done
        });
        match handshake.await {
            Ok(()) => Ok(self),
            Err(error) => Err(self.refused(error)),
        }
    }

    /// Gives the socket back with the error that ended the stream, so the
    /// caller can let an alert reach the client before closing.
    pub fn refused(self, error: io::Error) -> Refused {
        Refused {
            error,
            tcp: self.tcp,
        }
    }

    /// A stream before its handshake.
    fn new(
        tcp: impl Into<Socket>,
        config: Arc<ServerConfig>,
        budget: Arc<Budget>,
    ) -> Result<TlsStream, (io::Error, Socket)> {
        let tcp = tcp.into();
        let conn = match UnbufferedServerConnection::new(config) {
            Ok(conn) => conn,
            Err(e) => return Err((io::Error::other(e), tcp)),
        };
        Ok(TlsStream {
            tcp,
            conn,
            incoming: Incoming::default(),
            plaintext: Vec::new(),
            taken: 0,
            outgoing: Vec::new(),
            sent: 0,
            unsent_records: Vec::new(),
            plaintext_sent: 0,
            ciphertext_sent: 0,
            read_closed: false,
            failed: false,
            account: Account {
                budget,
                held: 0,
                waiting: Waiting::default(),
            },
            write_closed: false,
            closed_without_notify: false,
            awaiting_bytes: false,
            deferred: None,
            sni: None,
            served: None,
            id: ConnId::NONE,
            flights: 0,
            hello_version: 0,
        })
    }

    /// Names the connection this stream serves, so that what rustls logs
    /// for it carries its id.
    pub fn set_id(&mut self, id: ConnId) {
        self.id = id;
    }

    /// The TCP socket under the stream, for socket options (a reset on
    /// close); reading or writing it directly would break the session.
    /// `None` for a UNIX client, which has no TCP options.
    pub fn tcp(&self) -> Option<&tokio::net::TcpStream> {
        self.tcp.tcp()
    }

    /// Moves the socket's registration to the runtime this is called on
    /// (the handshake ran on its own threads). A duplicate of the
    /// descriptor is registered here and the original, registered there,
    /// is closed: the connection itself is untouched, and whatever the
    /// client sent meanwhile is reported by the new registration.
    pub fn rebind(&mut self) -> io::Result<()> {
        self.tcp = self.tcp.duplicate()?;
        Ok(())
    }

    /// Plaintext bytes whose records were written to the socket in full:
    /// what the client can have received (not what was merely queued).
    pub fn plaintext_sent(&self) -> u64 {
        self.plaintext_sent
    }

    /// The client ended its stream by closing TCP at a record boundary
    /// without sending close_notify first (many browsers do). Reads saw a
    /// clean end; the log line says how it came.
    pub fn closed_without_notify(&self) -> bool {
        self.closed_without_notify
    }

    /// Bytes of memory the stream's buffers hold (capacity, not length).
    /// For tests: an idle stream must hold no more than what is pending.
    #[doc(hidden)]
    pub fn buffered_capacity(&self) -> usize {
        self.incoming.buf.capacity() + self.plaintext.capacity() + self.outgoing.capacity()
    }

    /// Bytes received and not yet handed on (ciphertext not yet processed
    /// plus plaintext not yet read). For tests, with [`Self::buffered_capacity`].
    #[doc(hidden)]
    pub fn buffered_pending(&self) -> usize {
        self.incoming.pending().len() + (self.plaintext.len() - self.taken)
    }

    /// The server name rustls accepted, once the handshake has read it
    /// (until [`Self::negotiated`] takes it).
    pub fn sni(&self) -> Option<&str> {
        self.sni.as_deref()
    }

    /// The client's certificate (mTLS), verified by the handshake, as DER.
    pub fn peer_leaf(&self) -> Option<&[u8]> {
        self.conn
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|leaf| leaf.as_ref())
    }

    /// What was negotiated, for the log line. The SNI moves out rather
    /// than being copied: each connection keeps it once.
    pub fn negotiated(&mut self) -> Negotiated {
        Negotiated {
            sni: self.sni.take().map(String::from),
            served: self.served.take(),
            version: self.conn.protocol_version(),
            suite: self.conn.negotiated_cipher_suite(),
            group: self.conn.negotiated_key_exchange_group().map(|g| g.name()),
            alpn: self.conn.alpn_protocol().map(<[u8]>::to_vec),
            client_cert: self
                .conn
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|leaf| crate::certs::subject_of(leaf)),
        }
    }

    /// [`Self::poll_handshake_steps`], with a close or reset by the client
    /// said as such ([`ClientLeft`]).
    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let done = ready!(self.poll_handshake_steps(cx));
        Poll::Ready(done.map_err(|e| self.left(e)))
    }

    fn poll_handshake_steps(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let closed = || io::Error::from(io::ErrorKind::UnexpectedEof);
        loop {
            if !self.conn.is_handshaking() {
                // Done. Whatever the client sent after its Finished (data,
                // even close_notify) is already kept for the reader.
                ready!(self.poll_send(cx))?;
                return Poll::Ready(Ok(()));
            }
            // rustls is asked again only once more bytes have come: a
            // second look at the same records would do nothing but run
            // them again, and each run counts the records it skips (those
            // of a rejected 0-RTT flight) against its 16 KiB budget for
            // skipping, which a client's ordinary flight can then exceed.
            if !self.awaiting_bytes {
                match self.advance(cx, None, None)? {
                    // Keep encoding: the whole flight goes out in one write.
                    Step::Progress => continue,
                    // The last flight went out with the handshake done.
                    Step::Transmitted if !self.conn.is_handshaking() => continue,
                    Step::PeerClosed | Step::Closed => return Poll::Ready(Err(closed())),
                    // Still handshaking with every record seen (a TLS 1.3
                    // server may write before the client's Finished): wait
                    // for the client.
                    Step::Transmitted | Step::NeedBytes | Step::Ready | Step::Wrote => {
                        self.awaiting_bytes = true;
                    }
                }
            }
            // Our flight goes out before we wait for the client's next one.
            let flight = self.sent < self.outgoing.len();
            ready!(self.poll_send(cx))?;
            if flight {
                self.flights = self.flights.saturating_add(1);
            }
            if ready!(self.poll_fill(cx, MAX_INCOMING))? == 0 {
                return Poll::Ready(Err(closed()));
            }
            self.awaiting_bytes = false;
        }
    }

    /// Whether our certificate has gone out in full: the first flight of a
    /// full handshake carries it, or the second after a HelloRetryRequest.
    /// A resumed handshake sends none.
    fn certificate_sent(&self) -> bool {
        use rustls::HandshakeKind;
        match self.conn.handshake_kind() {
            Some(HandshakeKind::Full) => self.flights >= 1,
            Some(HandshakeKind::FullWithHelloRetryRequest) => self.flights >= 2,
            _ => false,
        }
    }

    /// A failure that is the client closing or resetting the connection
    /// becomes [`ClientLeft`]; others are returned as they are.
    fn left(&self, error: io::Error) -> io::Error {
        use io::ErrorKind as Kind;
        let is_tls = error.get_ref().is_some_and(|inner| {
            inner.is::<rustls::Error>() || inner.is::<UnknownName>() || inner.is::<TooOld>()
        });
        match error.kind() {
            Kind::UnexpectedEof
            | Kind::ConnectionReset
            | Kind::ConnectionAborted
            | Kind::BrokenPipe
                if !is_tls =>
            {
                io::Error::new(
                    error.kind(),
                    ClientLeft {
                        after_certificate: self.certificate_sent(),
                    },
                )
            }
            _ => error,
        }
    }

    /// Hands what has been received to rustls once and does what the
    /// resulting state asks: decrypted records go to `out` (or are kept for
    /// the reader when there is no `out` or it is full), TLS data is queued
    /// for sending, and `write` runs if application data may be written.
    fn advance(
        &mut self,
        cx: &mut Context<'_>,
        out: Option<&mut ReadBuf<'_>>,
        write: Option<&mut WriteFn<'_>>,
    ) -> io::Result<Step> {
        // Whatever rustls logs meanwhile is about this connection.
        conn_id::scope(self.id, || self.advance_named(cx, out, write))
    }

    /// [`Self::advance`], with the connection named for rustls' log lines.
    fn advance_named(
        &mut self,
        cx: &mut Context<'_>,
        mut out: Option<&mut ReadBuf<'_>>,
        write: Option<&mut WriteFn<'_>>,
    ) -> io::Result<Step> {
        if self.failed {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the TLS connection failed earlier",
            ));
        }
        // During the handshake the certificate resolver records the name
        // rustls accepted (and a refusal), on this thread, inside the call.
        let handshaking = self.conn.is_handshaking();
        if handshaking {
            crate::sni::forget_seen();
            if self.hello_version == 0 && self.incoming.start == 0 {
                self.hello_version = hello_version(self.incoming.pending()).unwrap_or(0);
            }
        }
        let UnbufferedStatus { discard, state } =
            self.conn.process_tls_records(self.incoming.pending_mut());
        let mut refused = false;
        if handshaking && let Some(seen) = crate::sni::take_seen() {
            self.sni = seen.name.map(String::into_boxed_str);
            self.served = seen.served;
            refused = seen.refused;
        }
        let step = match state {
            Err(e) => {
                self.incoming.consume(discard);
                return Err(self.fail(cx, e, refused));
            }
            Ok(ConnectionState::ReadTraffic(mut s)) => {
                let mut failed = None;
                while let Some(record) = s.next_record() {
                    let payload = match record {
                        Ok(record) => record.payload,
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    };
                    // Straight into the reader's buffer; only what does not
                    // fit waits in `plaintext`.
                    let n = match out.as_deref_mut() {
                        Some(out) if self.plaintext.is_empty() => {
                            let n = payload.len().min(out.remaining());
                            out.put_slice(&payload[..n]);
                            n
                        }
                        _ => 0,
                    };
                    self.plaintext.extend_from_slice(&payload[n..]);
                }
                if let Some(e) = failed {
                    self.incoming.consume(discard);
                    return Err(self.fail(cx, e, false));
                }
                Step::Progress
            }
            Ok(ConnectionState::EncodeTlsData(mut s)) => {
                encode_into(&mut self.outgoing, |out| s.encode(out))?;
                Step::Progress
            }
            Ok(ConnectionState::TransmitTlsData(s)) => {
                s.done();
                Step::Transmitted
            }
            Ok(ConnectionState::WriteTraffic(mut s)) => match write {
                Some(write) => {
                    write(&mut s, &mut self.outgoing)?;
                    Step::Wrote
                }
                None => Step::Ready,
            },
            Ok(ConnectionState::PeerClosed) => {
                self.read_closed = true;
                Step::PeerClosed
            }
            Ok(ConnectionState::Closed) => {
                self.read_closed = true;
                Step::Closed
            }
            Ok(ConnectionState::BlockedHandshake) => Step::NeedBytes,
            // The configuration never accepts 0-RTT, so rustls cannot hand
            // early data over; if it ever did, nothing here would read it.
            Ok(ConnectionState::ReadEarlyData(_)) => {
                self.incoming.consume(discard);
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "rustls accepted early data, which wssify never enables",
                ));
            }
            // A state a later rustls adds: an error, never a silent loop.
            Ok(other) => {
                let what = format!("unexpected TLS state {other:?}");
                self.incoming.consume(discard);
                return Err(io::Error::other(what));
            }
        };
        self.incoming.consume(discard);
        Ok(step)
    }

    /// Turns a TLS error into an I/O error, after trying once to send the
    /// alert rustls queued for it. `refused`: the certificate resolver
    /// chose nothing (`--strict-sni`), which gets `unrecognized_name`.
    fn fail(&mut self, cx: &mut Context<'_>, error: rustls::Error, refused: bool) -> io::Error {
        self.failed = true;
        // A client older than TLS 1.2 fails on whatever rustls checks
        // first (often the signature_algorithms extension TLS 1.2 added):
        // its version is the reason, and protocol_version the alert that
        // says so (RFC 5246, appendix E.1), in a record of its version.
        if (0x0300..0x0303).contains(&self.hello_version)
            && matches!(error, rustls::Error::PeerIncompatible(_))
        {
            let [major, minor] = self.hello_version.to_be_bytes();
            self.outgoing
                .extend_from_slice(&[0x15, major, minor, 0x00, 0x02, 0x02, 0x46]);
            let _ = self.poll_send(cx);
            return io::Error::new(io::ErrorKind::InvalidData, TooOld);
        }
        if refused {
            self.outgoing.extend_from_slice(&UNRECOGNIZED_NAME_ALERT);
            let _ = self.poll_send(cx);
            return io::Error::new(
                io::ErrorKind::InvalidData,
                UnknownName {
                    sni: self.sni.as_deref().map(String::from),
                },
            );
        }
        // Only while rustls has something queued (its alert): it hands out
        // what it queued before looking at records again, and looking
        // again would run the record that failed once more and queue a
        // second fatal alert (a debug assertion in rustls). The pending
        // bytes are passed anyway: rustls may hold parts of the client's
        // flight as ranges into them.
        while self.conn.wants_write() {
            let UnbufferedStatus { state, .. } =
                self.conn.process_tls_records(self.incoming.pending_mut());
            match state {
                Ok(ConnectionState::EncodeTlsData(mut s)) => {
                    if encode_into(&mut self.outgoing, |out| s.encode(out)).is_err() {
                        break;
                    }
                }
                _ => break,
            }
        }
        let _ = self.poll_send(cx);
        io::Error::new(io::ErrorKind::InvalidData, error)
    }

    /// Reads more ciphertext from the socket into `incoming` (at most `max`
    /// bytes held). `Ready(Ok(0))` is the client's FIN. Whenever it has to
    /// wait for the socket, `incoming` is shrunk to exactly the bytes
    /// pending (freed when none are), so a client that stops inside a
    /// record pins what it sent, not a read buffer.
    fn poll_fill(&mut self, cx: &mut Context<'_>, max: usize) -> Poll<io::Result<usize>> {
        if self.incoming.pending().len() >= max {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "TLS message too large",
            )));
        }
        // No buffer is taken until the socket is readable.
        if let Poll::Ready(ready) = self.tcp.poll_read_ready(cx) {
            ready?;
        } else {
            self.incoming.shrink_to_pending();
            self.count_buffers();
            return Poll::Pending;
        }
        ready!(self.poll_grant(cx, max));
        // Through tokio's own read, which marks the socket not ready after
        // a short read: the next fill waits for readiness instead of
        // spending a system call on EAGAIN (one per message, seen with
        // strace). The future only borrows; dropping it when pending loses
        // nothing.
        let read = std::pin::pin!(self.tcp.read_buf(&mut self.incoming.buf)).poll(cx);
        if read.is_pending() {
            self.incoming.shrink_to_pending();
            self.count_buffers();
        } else {
            shrink_if_empty(&mut self.incoming.buf);
        }
        read
    }

    /// Makes room in `incoming` for a read, granted by the memory budget:
    /// a chunk while the budget allows, at least what completes a record
    /// already begun (so a connection is never stuck on half a record
    /// while the budget has room at all), and nothing (the socket is left
    /// unread, its sender meets TCP backpressure) when the budget is spent.
    fn poll_grant(&mut self, cx: &mut Context<'_>, max: usize) -> Poll<()> {
        self.incoming.compact();
        let buf = &self.incoming.buf;
        let spare = buf.capacity() - buf.len();
        let want = READ_CHUNK.min(max.saturating_sub(buf.len()));
        if spare >= want.min(MIN_GRANT) && spare > 0 {
            return Poll::Ready(());
        }
        let need = record_remainder(buf).unwrap_or(0).saturating_sub(spare);
        let budget = self.account.budget.clone();
        let held = buf.capacity();
        let granted =
            match budget.poll_reserve(cx, &mut self.account.waiting, held, want - spare, MIN_GRANT)
            {
                Poll::Ready(n) => n,
                Poll::Pending if need > 0 => {
                    ready!(budget.poll_reserve_progress(cx, &mut self.account.waiting, need))
                }
                Poll::Pending => return Poll::Pending,
            };
        self.account.held += granted;
        self.incoming.buf.reserve_exact(spare + granted);
        Poll::Ready(())
    }

    /// Brings the budget up to date with what the buffers hold now (they
    /// grow and shrink with every message; the budget follows).
    fn count_buffers(&mut self) {
        let held = self.incoming.buf.capacity()
            + self.plaintext.capacity()
            + self.outgoing.capacity()
            + self.unsent_records.capacity() * std::mem::size_of::<(usize, usize)>();
        let Account {
            budget,
            held: counted,
            ..
        } = &mut self.account;
        if held != *counted {
            budget.resize(counted, held);
        }
    }

    /// Sends queued ciphertext; `Ready(Ok)` once none is left. Counts the
    /// plaintext of every application record that went out in full.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.outgoing.len() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.outgoing[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
            self.ciphertext_sent += n as u64;
            self.count_sent_records();
        }
        self.outgoing = Vec::new();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Moves the records now sent in full from `unsent_records` to the count.
    fn count_sent_records(&mut self) {
        if self.unsent_records.is_empty() {
            return;
        }
        let done = self
            .unsent_records
            .iter()
            .take_while(|(end, _)| *end <= self.sent)
            .count();
        for (_, len) in self.unsent_records.drain(..done) {
            self.plaintext_sent += len as u64;
        }
        if self.unsent_records.is_empty() {
            self.unsent_records = Vec::new();
        }
    }

    /// Fills `out` with decrypted bytes: first any left over from earlier,
    /// then from records received, reading the socket as needed. Returns
    /// with nothing added only at the end of the stream. A failure after
    /// some bytes were added is returned by the next call, so those bytes
    /// (authenticated records) still reach the reader.
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
            if let Some(e) = self.deferred.take() {
                return Poll::Ready(Err(e));
            }
            if self.read_closed || out.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            let advanced = self.advance(cx, Some(&mut *out), None);
            let delivered = out.filled().len() > start;
            let step = match advanced {
                Ok(step) => step,
                Err(e) if delivered => {
                    self.deferred = Some(e);
                    return Poll::Ready(Ok(()));
                }
                Err(e) => return Poll::Ready(Err(e)),
            };
            if self.sent < self.outgoing.len() {
                // Post-handshake messages (tickets, key updates): send what
                // we can now; poll_write and poll_flush send the rest.
                if let Poll::Ready(Err(e)) = self.poll_send(cx) {
                    if delivered {
                        self.deferred = Some(e);
                        return Poll::Ready(Ok(()));
                    }
                    return Poll::Ready(Err(e));
                }
            }
            match step {
                // Keep decrypting records already received while there is
                // room, so a burst reaches the reader in one piece.
                Step::Progress | Step::Transmitted => {
                    if delivered && (out.remaining() == 0 || !self.plaintext.is_empty()) {
                        return Poll::Ready(Ok(()));
                    }
                }
                // End of stream, reported at the top of the loop.
                Step::PeerClosed | Step::Closed => {}
                Step::Ready | Step::NeedBytes | Step::Wrote => {
                    // Never wait for the socket once something was delivered.
                    if delivered {
                        return Poll::Ready(Ok(()));
                    }
                    if ready!(self.poll_fill(cx, MAX_INCOMING))? == 0 {
                        if !self.incoming.pending().is_empty() {
                            // Not an end of stream: the client's last record
                            // never came whole, so what it meant to send is
                            // unknown. Not `UnexpectedEof`, which the proxy
                            // takes as a clean end.
                            return Poll::Ready(Err(io::Error::new(
                                io::ErrorKind::InvalidData,
                                "truncated: the client closed TCP inside a TLS record",
                            )));
                        }
                        // FIN at a record boundary without close_notify:
                        // the client has finished sending.
                        self.read_closed = true;
                        self.closed_without_notify = true;
                    }
                }
            }
        }
    }

    /// Gets a state in which application data may be encrypted and runs
    /// `write` on it. Records that arrive meanwhile are kept for the reader.
    fn with_write_traffic(
        &mut self,
        cx: &mut Context<'_>,
        write: &mut WriteFn<'_>,
    ) -> io::Result<()> {
        loop {
            match self.advance(cx, None, Some(&mut *write))? {
                Step::Wrote => return Ok(()),
                Step::Progress | Step::Transmitted | Step::PeerClosed => {}
                Step::Ready | Step::NeedBytes | Step::Closed => {
                    return Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the TLS connection is closed for writing",
                    ));
                }
            }
        }
    }
}

/// Encrypts application data into the outgoing buffer.
type WriteFn<'a> = dyn FnMut(
        &mut rustls::unbuffered::WriteTraffic<'_, rustls::server::ServerConnectionData>,
        &mut Vec<u8>,
    ) -> io::Result<()>
    + 'a;

/// What one turn of [`TlsStream::advance`] left to do.
enum Step {
    /// Something was handled (records decrypted, TLS data queued): go on.
    Progress,
    /// The TLS data queued may now be sent; rustls has looked at every
    /// record received.
    Transmitted,
    /// The handshake needs more bytes from the client.
    NeedBytes,
    /// Nothing pending; application data may be written (more bytes are
    /// needed for anything to read).
    Ready,
    /// `write` ran.
    Wrote,
    /// The client sent close_notify; we may still write.
    PeerClosed,
    /// Both sides sent close_notify.
    Closed,
}

impl AsyncRead for TlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let read = this.poll_decrypt(cx, buf);
        this.count_buffers();
        read
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = this.poll_encrypt(cx, buf);
        this.count_buffers();
        written
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let flushed = this.poll_send(cx);
        this.count_buffers();
        flushed
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let closed = this.poll_close(cx);
        this.count_buffers();
        closed
    }
}

impl TlsStream {
    /// Encrypts up to [`MAX_WRITE`] bytes of `buf` and starts sending them.
    fn poll_encrypt(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self;
        if this.write_closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if this.outgoing.len() - this.sent >= OUTGOING_LIMIT {
            ready!(this.poll_send(cx))?;
        }
        let take = buf.len().min(MAX_WRITE);
        // Where each record ends in `outgoing`, with its plaintext length:
        // on the stack, kept only for records the socket does not take now.
        let mut records = [(0usize, 0usize); MAX_WRITE / MAX_RECORD_PLAINTEXT];
        let mut count = 0;
        this.with_write_traffic(cx, &mut |s, outgoing| {
            // Room for every record at once: growing record by record
            // reallocated and copied what was already encrypted (1% of a
            // core in the bulk benchmark, seen with perf).
            let records_needed = take.div_ceil(MAX_RECORD_PLAINTEXT);
            outgoing.reserve(take + records_needed * MAX_RECORD_OVERHEAD);
            for record in buf[..take].chunks(MAX_RECORD_PLAINTEXT) {
                encode_into(outgoing, |out| s.encrypt(record, out))?;
                if let Some(slot) = records.get_mut(count) {
                    *slot = (outgoing.len(), record.len());
                    count += 1;
                }
            }
            Ok(())
        })?;
        // Start sending now; whatever the socket will not take stays queued.
        if this.poll_send(cx)?.is_ready() {
            // The usual case: every record went out.
            this.plaintext_sent += take as u64;
        } else {
            for &(end, len) in &records[..count] {
                if end <= this.sent {
                    this.plaintext_sent += len as u64;
                } else {
                    this.unsent_records.push((end, len));
                }
            }
        }
        Poll::Ready(Ok(take))
    }

    /// Queues close_notify, sends what is queued, then FIN.
    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self;
        if !this.write_closed {
            this.with_write_traffic(cx, &mut |s, outgoing| {
                encode_into(outgoing, |out| s.queue_close_notify(out)).map(drop)
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

    /// Moves the pending bytes to the front.
    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }

    /// Holds exactly the pending bytes, or nothing when none are: called
    /// whenever the stream waits for the socket. While bytes keep coming
    /// the socket stays readable and the read buffer is kept, so bulk
    /// transfers do not reallocate per record.
    fn shrink_to_pending(&mut self) {
        if self.buf.capacity() == self.buf.len() - self.start {
            return;
        }
        self.compact();
        if self.buf.is_empty() {
            self.buf = Vec::new();
        } else {
            self.buf.shrink_to_fit();
        }
    }
}

/// What a stream holds in the memory budget; given back when it drops.
struct Account {
    budget: Arc<Budget>,
    held: usize,
    waiting: Waiting,
}

impl Drop for Account {
    fn drop(&mut self) {
        self.budget.release(self.held);
    }
}

/// The version a ClientHello offers (its `legacy_version`: TLS 1.3 clients
/// put 1.2 there), when `pending` begins with one's first bytes.
fn hello_version(pending: &[u8]) -> Option<u16> {
    const CLIENT_HELLO: u8 = 1;
    match pending.get(..11)? {
        [
            HANDSHAKE_RECORD,
            _,
            _,
            _,
            _,
            CLIENT_HELLO,
            _,
            _,
            _,
            major,
            minor,
        ] => Some(u16::from_be_bytes([*major, *minor])),
        _ => None,
    }
}

/// Bytes still missing from the TLS record that `pending` begins, when its
/// header has arrived.
fn record_remainder(pending: &[u8]) -> Option<usize> {
    let header = pending.get(..5)?;
    let length = usize::from(u16::from_be_bytes([header[3], header[4]]));
    Some((5 + length).saturating_sub(pending.len()))
}

fn shrink_if_empty(buf: &mut Vec<u8>) {
    if buf.is_empty() && buf.capacity() > 0 {
        *buf = Vec::new();
    }
}

/// What the copy loop asks of the client beyond reading and writing.
impl crate::proxy::Peer for TlsStream {
    /// Ciphertext the socket took, so a slow reader is never taken for a
    /// stalled one.
    fn progress(&self) -> u64 {
        self.ciphertext_sent
    }

    /// Always ready: what a read may find depends on records rustls has
    /// yet to see (some arrive while the other direction writes), so the
    /// read itself decides; its own buffer is granted by the budget when
    /// the socket is readable (`poll_grant`).
    fn poll_readable(&self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    fn config() -> Arc<ServerConfig> {
        let provider = crate::tls::provider();
        let cert = crate::certs::self_signed(&provider).unwrap();
        let names = cert.summary.dns_names.clone();
        let table = crate::sni::SniTable::new(vec![(cert.certified_key, names)], false);
        let options = crate::tls::TlsOptions {
            provider,
            tls_min: crate::settings::TlsMin::V1_2,
            alpn: Vec::new(),
        };
        let resumption = crate::tls::Resumption::new().unwrap();
        crate::tls::server_config(&options, Arc::new(table), None, &resumption).unwrap()
    }

    fn client_hello() -> Vec<u8> {
        let config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[tokio::test]
    async fn a_stream_reconfigured_after_its_hello_was_read_handshakes_on_the_new_configuration() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCert))
                .with_no_client_auth();
            config.alpn_protocols = vec![b"x-test".to_vec()];
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
                .unwrap();
            tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec)
        });
        let (tcp, _) = listener.accept().await.unwrap();
        let mut stream = TlsStream::start(tcp, config(), &[], Arc::new(Budget::new(1 << 30)))
            .map_err(|refused| refused.error)
            .unwrap();
        let hello = stream.client_hello().await.unwrap().unwrap();
        assert_eq!(hello.alpn, vec![b"x-test".to_vec()]);
        // The first configuration offers no ALPN; the new one does.
        let mut other = (*config()).clone();
        other.alpn_protocols = vec![b"x-test".to_vec()];
        stream.reconfigure(Arc::new(other)).unwrap();
        let done = stream.handshake().await.map_err(|r| r.error).unwrap();
        assert_eq!(done.conn.alpn_protocol(), Some(&b"x-test"[..]));
        assert_eq!(client.await.unwrap().as_deref(), Some(&b"x-test"[..]));
    }

    /// A client verifier that accepts any server certificate.
    #[derive(Debug)]
    struct AnyCert;

    impl rustls::client::danger::ServerCertVerifier for AnyCert {
        fn verify_server_cert(
            &self,
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &[rustls::pki_types::CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &crate::tls::provider().signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &crate::tls::provider().signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            crate::tls::provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }

    #[tokio::test]
    async fn a_hello_trickled_before_the_handshake_counts_only_its_bytes_in_the_budget() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        let budget = Arc::new(Budget::new(1 << 30));
        let mut stream = TlsStream::start(tcp, config(), &[], budget.clone())
            .map_err(|refused| refused.error)
            .unwrap();
        let hello = client_hello();
        let run = async {
            let body = &hello[..hello.len() - 1];
            for (n, piece) in body.chunks(64).enumerate() {
                client.write_all(piece).await.unwrap();
                let i = (n * 64 + piece.len()).saturating_sub(1);
                // Until the hello is whole, client_hello waits for more.
                let waited = tokio::time::timeout(
                    std::time::Duration::from_millis(20),
                    stream.client_hello(),
                )
                .await;
                assert!(
                    waited.is_err(),
                    "client_hello ended before the hello was whole"
                );
                let counted = budget.used();
                assert!(
                    counted <= i + 1 + 16,
                    "{counted} bytes of budget counted for {} bytes of a ClientHello",
                    i + 1
                );
            }
            client.write_all(&hello[hello.len() - 1..]).await.unwrap();
            let hello = stream.client_hello().await.unwrap();
            assert_eq!(
                hello.ok().and_then(|h| h.server_name).as_deref(),
                Some("localhost")
            );
        };
        tokio::time::timeout(std::time::Duration::from_secs(60), run)
            .await
            .expect("bounded");
    }

    #[tokio::test]
    async fn a_client_hello_sent_byte_by_byte_pins_only_its_bytes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        let mut stream = TlsStream::new(tcp, config(), Arc::new(Budget::new(1 << 30)))
            .map_err(|(e, _)| e)
            .unwrap();
        let hello = client_hello();
        let run = async {
            // All but the last byte: rustls waits for the record to complete.
            for (i, byte) in hello[..hello.len() - 1].iter().enumerate() {
                client.write_all(&[*byte]).await.unwrap();
                std::future::poll_fn(|cx| match stream.poll_handshake(cx) {
                    Poll::Ready(r) => panic!("the hello is not complete yet: {r:?}"),
                    Poll::Pending if stream.buffered_pending() == i + 1 => Poll::Ready(()),
                    Poll::Pending => Poll::Pending,
                })
                .await;
                let held = stream.buffered_capacity();
                assert!(
                    held <= i + 1 + 16,
                    "{held} bytes held for {} bytes of a ClientHello",
                    i + 1
                );
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(20), run)
            .await
            .expect("bounded");
    }
}
