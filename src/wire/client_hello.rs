//! The client's ClientHello, read before anything else is decided: the one
//! reader that routing by SNI, passing the raw bytes through to another TLS
//! server, and answering an ACME TLS-ALPN-01 challenge share.
//!
//! Pure: [`parse`] takes the bytes read from the socket so far and says
//! what they hold, or how many more it needs ([`Error::Incomplete`]). It
//! never reads out of bounds, never panics, allocates at most one copy of
//! the message (only when it spans records), and runs in time linear in
//! its input. It reads only what wssify decides on (the server name, the
//! ALPN protocols, the versions offered) and checks the framing around
//! them; the other extensions' contents are left to whoever completes the
//! handshake (rustls, or the TLS server the bytes are passed to).
//!
//! # Framing
//!
//! The hello may span several handshake records (and any number of
//! reads). Each record: content type 22, version 0x03xx, length 1 to
//! 2^14. The first record of another type is [`Error::NotClientHello`]
//! (that includes SSLv2-format hellos, first byte 0x80, which rustls
//! answers itself); a record of another type *between* the hello's
//! records is [`Error::Malformed`], as the client did start a ClientHello
//! and RFC 8446 5.1 forbids interleaving (`unexpected_message`, which
//! rustls sends too). So is a record holding more than the end of the
//! hello (5.1 again: a message before a key change ends on a record
//! boundary; rustls checks it too). What follows the hello's last record
//! is not read: the caller keeps it for whoever goes on.
//!
//! # Where it differs from rustls 0.23
//!
//! The fields read follow rustls' own decoding (`msgs/handshake.rs`): the
//! same list-length rules, the same duplicate checks, and the very same
//! DNS name validation (`pki_types::ServerName`). The differences:
//!
//! - A plaintext record longer than 2^14 bytes is [`Error::TooLarge`]
//!   (RFC 8446 5.1: `record_overflow`). rustls accepts up to 2^14 + 2047
//!   before encryption starts, as it applies the ciphertext limit to every
//!   record.
//! - A ClientHello longer than [`MAX_HELLO`] is [`Error::TooLarge`]; rustls
//!   accepts handshake messages up to 64 KiB.
//! - A `host_name` that is neither a DNS name nor an IP address (say
//!   `a b`, or a list whose first entry is of an unknown name type) is
//!   `server_name: None` here; rustls refuses such a hello with
//!   `illegal_parameter`. An IP address is `None` in both.
//! - Extensions other than server_name, ALPN and supported_versions are
//!   not decoded, so a hello whose key_share (say) is garbage is `Ok` here
//!   and refused by rustls. Whatever rustls accepts is `Ok` here, unless
//!   one of the limits above is passed.

use std::borrow::Cow;
use std::fmt;

use rustls::pki_types::ServerName;

/// Largest ClientHello accepted, counted as its handshake header's length
/// field does: the body, without the 4-byte header. Real hellos are far
/// smaller (1.5–2 KB with a post-quantum key share); 16 KiB leaves room
/// for several such shares and a long pre-shared key list, while keeping
/// what a client can make wssify buffer before it decides anything small.
pub const MAX_HELLO: usize = 16 * 1024;

/// Largest plaintext record (RFC 8446 5.1): 2^14 bytes of payload.
pub const MAX_RECORD: usize = 1 << 14;

/// The ALPN protocol of an ACME TLS-ALPN-01 challenge (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// A TLS record header: content type, version, length.
const RECORD_HEADER: usize = 5;
/// A handshake message header: type, 24-bit length.
const HANDSHAKE_HEADER: usize = 4;
/// Content type of handshake records.
const CONTENT_HANDSHAKE: u8 = 22;
/// Handshake type of a ClientHello.
const CLIENT_HELLO: u8 = 1;

/// Extension types read here (IANA TLS ExtensionType registry).
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
const EXT_PRE_SHARED_KEY: u16 = 41;
const EXT_SUPPORTED_VERSIONS: u16 = 43;
/// `host_name`, the only server name type defined (RFC 6066 3).
const NAME_TYPE_HOST: u8 = 0;
/// TLS 1.3 in supported_versions.
const TLS13: u16 = 0x0304;

/// The reason given when another record type comes between the records of
/// the ClientHello; [`Error::alert`] answers it with `unexpected_message`.
const INTERLEAVED: &str = "another record type inside the ClientHello";

/// What wssify needs to know of a ClientHello to decide what to do with
/// the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Where the records carrying the ClientHello end in the input: the
    /// bytes `[..records_len]` are the whole records holding the message,
    /// its last record included in full (and holding nothing after it).
    /// What follows (a change_cipher_spec, early data) is not read.
    pub records_len: usize,
    /// `legacy_version` from the ClientHello body (0x0303 for TLS 1.2 and
    /// 1.3 clients), as sent: not checked.
    pub legacy_version: u16,
    /// The server_name extension's `host_name`, ASCII-lowercased, without
    /// a trailing dot. `None` when there is no such extension, or when its
    /// name is not a DNS name by rustls' rules (`pki_types::DnsName`): an
    /// IP address (which rustls ignores too, as some clients send them),
    /// or anything else rustls would refuse (see the module's notes).
    pub server_name: Option<String>,
    /// ALPN protocol names offered, in the client's order (empty without
    /// an ALPN extension).
    pub alpn: Vec<Vec<u8>>,
    /// Whether supported_versions offers TLS 1.3 (0x0304).
    pub offers_tls13: bool,
}

impl Hello {
    /// Whether this is an ACME TLS-ALPN-01 validation: ALPN offering only
    /// `acme-tls/1`, as RFC 8737 3 has the validating server send it.
    pub fn is_acme_challenge(&self) -> bool {
        matches!(self.alpn.as_slice(), [only] if only == ACME_TLS_ALPN)
    }
}

/// Why the input is not (yet) a ClientHello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// More bytes are needed. `at_least` is the total input length below
    /// which trying again cannot succeed (an error may still show
    /// earlier): always more than the input given, from the record and
    /// handshake headers read so far, assuming the rest comes in as few
    /// records as it can. It is the client's word, bounded only by the
    /// limits here (less than 33 KiB past the input: the rest of one
    /// record, then [`MAX_HELLO`] and its headers), and a client sending
    /// tiny records raises it a little at a time, so the whole can take
    /// far more than [`MAX_HELLO`] (5 bytes of header per record). Size
    /// reads with it; bound what is buffered by the connection's own
    /// budget, never by this.
    Incomplete {
        /// Total input length needed, at least, before calling again.
        at_least: usize,
    },
    /// Not a ClientHello at all: the first record is not a handshake record
    /// (content type 22: this includes SSLv2-format hellos, first byte
    /// 0x80, and plain HTTP), or the first handshake message is not a
    /// ClientHello (type 1). The caller may hand the bytes to rustls so
    /// that it answers them as it answers any stray input.
    NotClientHello,
    /// The ClientHello is longer than [`MAX_HELLO`], or a record carrying
    /// it longer than [`MAX_RECORD`].
    TooLarge,
    /// A ClientHello, but malformed: a static reason for the log.
    Malformed(&'static str),
}

impl Error {
    /// The alert to refuse the connection with, if any (`Incomplete` has
    /// none: read more). `NotClientHello` is `unexpected_message`, but the
    /// caller may rather leave such input to rustls.
    pub fn alert(&self) -> Option<AlertDescription> {
        match self {
            Error::Incomplete { .. } => None,
            Error::NotClientHello => Some(AlertDescription::UnexpectedMessage),
            Error::TooLarge => Some(AlertDescription::RecordOverflow),
            // RFC 8446 5.1: interleaving is unexpected_message, as rustls
            // answers it; anything else that does not decode is
            // decode_error.
            Error::Malformed(why) if *why == INTERLEAVED => {
                Some(AlertDescription::UnexpectedMessage)
            }
            Error::Malformed(_) => Some(AlertDescription::DecodeError),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Incomplete { at_least } => {
                write!(f, "incomplete ClientHello (need {at_least} bytes)")
            }
            Error::NotClientHello => f.write_str("not a TLS ClientHello"),
            Error::TooLarge => f.write_str("ClientHello too large"),
            Error::Malformed(why) => write!(f, "malformed ClientHello: {why}"),
        }
    }
}

impl std::error::Error for Error {}

/// TLS alert descriptions (RFC 8446 6), those a refused ClientHello may
/// need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum AlertDescription {
    /// A message that does not belong here.
    UnexpectedMessage = 10,
    /// A record longer than the protocol allows.
    RecordOverflow = 22,
    /// No acceptable set of parameters.
    HandshakeFailure = 40,
    /// A field out of range or inconsistent with others.
    IllegalParameter = 47,
    /// A message that could not be decoded.
    DecodeError = 50,
    /// A protocol version wssify does not support.
    ProtocolVersion = 70,
    /// wssify's own failure.
    InternalError = 80,
    /// No route for the server name asked for.
    UnrecognizedName = 112,
    /// None of the ALPN protocols offered is served.
    NoApplicationProtocol = 120,
}

/// The 7-byte fatal alert record answering a ClientHello refused before
/// any TLS state exists: a plaintext alert record, version 0x0303 (what
/// rustls and other TLS 1.3 servers put on records before encryption).
pub fn fatal_alert(description: AlertDescription) -> [u8; 7] {
    const ALERT: u8 = 21;
    const FATAL: u8 = 2;
    [ALERT, 0x03, 0x03, 0x00, 0x02, FATAL, description as u8]
}

/// Reads the ClientHello at the start of `input`: the bytes read from the
/// connection so far, records and all. Call again with more bytes while
/// it answers [`Error::Incomplete`]. Bytes after the ClientHello's last
/// record are not looked at.
pub fn parse(input: &[u8]) -> Result<Hello, Error> {
    let (message, records_len) = reassemble(input)?;
    let mut hello = parse_body(&message[HANDSHAKE_HEADER..])?;
    hello.records_len = records_len;
    Ok(hello)
}

/// The ClientHello handshake message (header included) from the records
/// at the start of `input`, borrowed when one record holds it, and the
/// end of its last record. Each error as soon as the bytes show it: a
/// wrong record or message type, or a length past the limits, is reported
/// before the rest arrives.
fn reassemble(input: &[u8]) -> Result<(Cow<'_, [u8]>, usize), Error> {
    // The handshake bytes seen so far, by where they lie: a message in one
    // record stays borrowed; one across records is copied, once.
    let mut joined: Option<Vec<u8>> = None;
    let mut first_payload: &[u8] = &[];
    // Handshake bytes in the records before `at`, and the message's total
    // (header included) once its header is known.
    let mut have = 0usize;
    let mut need: Option<usize> = None;
    let mut header = [0u8; HANDSHAKE_HEADER];
    let mut at = 0usize;
    loop {
        let first = at == 0;
        let available = input.get(at..).unwrap_or(&[]);
        // The record header, checked byte by byte as it arrives.
        if let Some(&kind) = available.first()
            && kind != CONTENT_HANDSHAKE
        {
            return Err(if first {
                Error::NotClientHello
            } else {
                Error::Malformed(INTERLEAVED)
            });
        }
        if let Some(&major) = available.get(1)
            && major != 0x03
        {
            return Err(Error::Malformed("record version is not 3.x"));
        }
        let Some(&[_, _, _, hi, lo]) = available.get(..RECORD_HEADER) else {
            return Err(incomplete(at, have, need));
        };
        let length = usize::from(u16::from_be_bytes([hi, lo]));
        if length == 0 {
            // RFC 8446 5.1; rustls refuses it too.
            return Err(Error::Malformed("empty handshake record"));
        }
        if length > MAX_RECORD {
            return Err(Error::TooLarge);
        }
        let end = at + RECORD_HEADER + length;
        // What of this record's payload has arrived: enough, perhaps, to
        // check the handshake header early.
        let payload = &available[RECORD_HEADER..];
        let arrived = &payload[..length.min(payload.len())];
        if need.is_none() {
            for (k, &b) in arrived.iter().enumerate() {
                let i = have + k;
                if i >= HANDSHAKE_HEADER {
                    break;
                }
                header[i] = b;
                // (Byte 0 is always in the first record: none is empty.)
                if i == 0 && b != CLIENT_HELLO {
                    return Err(Error::NotClientHello);
                }
                if i == HANDSHAKE_HEADER - 1 {
                    let body = usize::from(header[1]) << 16
                        | usize::from(header[2]) << 8
                        | usize::from(header[3]);
                    if body > MAX_HELLO {
                        return Err(Error::TooLarge);
                    }
                    need = Some(HANDSHAKE_HEADER + body);
                }
            }
        }
        if let Some(need) = need
            && have + length > need
        {
            // RFC 8446 5.1: a message before a key change (the server's
            // answer) must end at a record boundary; rustls checks it too.
            return Err(Error::Malformed("data after the ClientHello in its record"));
        }
        if arrived.len() < length {
            return Err(incomplete(end, have + length, need));
        }
        // A whole record, all of it the message's.
        if first {
            first_payload = arrived;
        } else {
            let copy = joined.get_or_insert_with(|| {
                let mut v = Vec::with_capacity(need.unwrap_or(HANDSHAKE_HEADER));
                v.extend_from_slice(first_payload);
                v
            });
            copy.extend_from_slice(arrived);
        }
        have += length;
        at = end;
        if need == Some(have) {
            let message = match joined {
                Some(v) => Cow::Owned(v),
                None => Cow::Borrowed(first_payload),
            };
            return Ok((message, at));
        }
    }
}

/// [`Error::Incomplete`] when the records up to `after` hold `have`
/// handshake bytes of the `need` the message takes (or at least its
/// header, while that is unknown): the rest comes in as few full records
/// as can carry it.
fn incomplete(after: usize, have: usize, need: Option<usize>) -> Error {
    let rest = need.unwrap_or(HANDSHAKE_HEADER).saturating_sub(have);
    let records = rest.div_ceil(MAX_RECORD);
    // Always past the input: either `after` is the end of a record not
    // all here, or a record header (at `after`) is missing and `rest` > 0.
    Error::Incomplete {
        at_least: after + rest + records * RECORD_HEADER,
    }
}

/// Reads a ClientHello body (RFC 8446 4.1.2, RFC 5246 7.4.1.2).
fn parse_body(body: &[u8]) -> Result<Hello, Error> {
    let mut r = Reader(body);
    let legacy_version = r.u16().ok_or(Error::Malformed("truncated version"))?;
    r.take(32).ok_or(Error::Malformed("truncated random"))?;
    let session_id = r.vec8().ok_or(Error::Malformed("truncated session id"))?;
    if session_id.len() > 32 {
        return Err(Error::Malformed("session id longer than 32 bytes"));
    }
    let suites = r
        .vec16()
        .ok_or(Error::Malformed("truncated cipher suites"))?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(Error::Malformed("cipher suite list empty or odd"));
    }
    let compression = r
        .vec8()
        .ok_or(Error::Malformed("truncated compression methods"))?;
    if compression.is_empty() {
        return Err(Error::Malformed("no compression method"));
    }
    let mut hello = Hello {
        records_len: 0,
        legacy_version,
        server_name: None,
        alpn: Vec::new(),
        offers_tls13: false,
    };
    // A TLS 1.2 hello may end here, without extensions.
    if r.0.is_empty() {
        return Ok(hello);
    }
    let mut extensions = Reader(
        r.vec16()
            .ok_or(Error::Malformed("truncated extension list"))?,
    );
    if !r.0.is_empty() {
        return Err(Error::Malformed("data after the extensions"));
    }
    // One bit per extension type: duplicates are malformed (RFC 8446 4.2),
    // known to rustls or not. 8 KiB, and linear time however many.
    let mut seen = [0u64; 1024];
    while !extensions.0.is_empty() {
        let kind = extensions
            .u16()
            .ok_or(Error::Malformed("truncated extension"))?;
        let data = extensions
            .vec16()
            .ok_or(Error::Malformed("truncated extension"))?;
        let (word, bit) = (usize::from(kind / 64), 1u64 << (kind % 64));
        if seen[word] & bit != 0 {
            return Err(Error::Malformed(match kind {
                EXT_SERVER_NAME => "duplicate server_name extension",
                EXT_ALPN => "duplicate ALPN extension",
                EXT_SUPPORTED_VERSIONS => "duplicate supported_versions extension",
                _ => "duplicate extension",
            }));
        }
        seen[word] |= bit;
        match kind {
            EXT_SERVER_NAME => hello.server_name = server_name(data)?,
            EXT_ALPN => hello.alpn = alpn(data)?,
            EXT_SUPPORTED_VERSIONS => hello.offers_tls13 = offers_tls13(data)?,
            // RFC 8446 4.2.11: it binds everything before it.
            EXT_PRE_SHARED_KEY if !extensions.0.is_empty() => {
                return Err(Error::Malformed("pre_shared_key is not the last extension"));
            }
            _ => {}
        }
    }
    Ok(hello)
}

/// The server_name extension (RFC 6066 3), as rustls reads it: a
/// non-empty list; `host_name` entries (non-empty, at most one); an entry
/// of another type ends the list, as its length cannot be known. The name
/// is kept if it is a DNS name by `pki_types` (rustls' own check), which
/// says an IP address or anything else is not.
fn server_name(data: &[u8]) -> Result<Option<String>, Error> {
    let mut r = Reader(data);
    let list = r
        .vec16()
        .ok_or(Error::Malformed("truncated server_name extension"))?;
    if list.is_empty() {
        return Err(Error::Malformed("empty server_name list"));
    }
    if !r.0.is_empty() {
        return Err(Error::Malformed("data after the server_name list"));
    }
    let mut list = Reader(list);
    let mut found: Option<&[u8]> = None;
    while let Some(kind) = list.u8() {
        if kind != NAME_TYPE_HOST {
            break;
        }
        let name = list
            .vec16()
            .ok_or(Error::Malformed("truncated server_name"))?;
        if name.is_empty() {
            return Err(Error::Malformed("empty server_name"));
        }
        if found.is_some() {
            return Err(Error::Malformed("more than one host_name in server_name"));
        }
        found = Some(name);
    }
    let Some(name) = found else {
        return Ok(None);
    };
    Ok(match ServerName::try_from(name) {
        Ok(ServerName::DnsName(dns)) => {
            // pki-types 1.16 already drops one trailing dot (RFC 6066
            // names have none), as rustls' `server_name()` shows; older
            // ones kept it.
            let dns = dns.as_ref();
            let dns = dns.strip_suffix('.').unwrap_or(dns);
            Some(dns.to_ascii_lowercase())
        }
        _ => None,
    })
}

/// The ALPN extension (RFC 7301 3.1), as rustls reads it: a non-empty
/// list of non-empty names filling the extension.
fn alpn(data: &[u8]) -> Result<Vec<Vec<u8>>, Error> {
    let mut r = Reader(data);
    let list = r
        .vec16()
        .ok_or(Error::Malformed("truncated ALPN extension"))?;
    if list.is_empty() {
        return Err(Error::Malformed("empty ALPN list"));
    }
    if !r.0.is_empty() {
        return Err(Error::Malformed("data after the ALPN list"));
    }
    let mut list = Reader(list);
    let mut names = Vec::new();
    while !list.0.is_empty() {
        let name = list
            .vec8()
            .ok_or(Error::Malformed("truncated ALPN protocol name"))?;
        if name.is_empty() {
            return Err(Error::Malformed("empty ALPN protocol name"));
        }
        names.push(name.to_vec());
    }
    Ok(names)
}

/// The supported_versions extension (RFC 8446 4.2.1), as rustls reads it:
/// a non-empty list of 16-bit versions filling the extension.
fn offers_tls13(data: &[u8]) -> Result<bool, Error> {
    let mut r = Reader(data);
    let list = r
        .vec8()
        .ok_or(Error::Malformed("truncated supported_versions extension"))?;
    if list.is_empty() || list.len() % 2 != 0 {
        return Err(Error::Malformed("supported_versions list empty or odd"));
    }
    if !r.0.is_empty() {
        return Err(Error::Malformed("data after the supported_versions list"));
    }
    Ok(list
        .chunks_exact(2)
        .any(|v| u16::from_be_bytes([v[0], v[1]]) == TLS13))
}

/// A cursor over bytes that answers `None` instead of reading past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    /// Bytes behind a one-byte length.
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(n.into())
    }

    /// Bytes behind a two-byte length.
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(n.into())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::crypto::aws_lc_rs::{default_provider, kx_group};
    use rustls::crypto::{CryptoProvider, SupportedKxGroup};
    use rustls::version::{TLS12, TLS13};
    use rustls::{ClientConfig, ClientConnection, RootCertStore, SupportedProtocolVersion};

    use super::*;

    /// How a test client is configured.
    struct Client<'a> {
        name: &'a str,
        alpn: &'a [&'a [u8]],
        groups: &'a [&'static dyn SupportedKxGroup],
        versions: &'a [&'static SupportedProtocolVersion],
    }

    const CLIENT: Client<'static> = Client {
        name: "ws.example.com",
        alpn: &[],
        groups: &[kx_group::X25519],
        versions: &[&TLS13, &TLS12],
    };

    /// The first flight of a real rustls client: its ClientHello records.
    fn rustls_hello(client: &Client) -> Vec<u8> {
        let provider = CryptoProvider {
            kx_groups: client.groups.to_vec(),
            ..default_provider()
        };
        let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(client.versions)
            .unwrap()
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth();
        config.alpn_protocols = client.alpn.iter().map(|p| p.to_vec()).collect();
        let name = client.name.to_string().try_into().unwrap();
        let mut conn = ClientConnection::new(Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut out).unwrap();
        }
        out
    }

    /// The handshake message carried by `records` (record headers taken
    /// off, payloads joined; no checks: test input is well formed).
    fn message_of(records: &[u8]) -> Vec<u8> {
        let mut message = Vec::new();
        let mut rest = records;
        while rest.len() >= 5 {
            let length = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
            message.extend_from_slice(&rest[5..5 + length]);
            rest = &rest[5 + length..];
        }
        message
    }

    /// `message` in handshake records of at most `size` bytes each.
    fn framed(message: &[u8], size: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in message.chunks(size) {
            out.extend_from_slice(&[22, 3, 1]);
            out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }

    /// A ClientHello message from a body.
    fn message(body: &[u8]) -> Vec<u8> {
        let length = (body.len() as u32).to_be_bytes();
        let mut out = vec![1, length[1], length[2], length[3]];
        out.extend_from_slice(body);
        out
    }

    /// A ClientHello taken apart to edit: the body up to the extensions,
    /// and the extensions.
    struct Parts {
        fixed: Vec<u8>,
        extensions: Vec<(u16, Vec<u8>)>,
    }

    impl Parts {
        fn of(records: &[u8]) -> Parts {
            let message = message_of(records);
            let body = &message[4..];
            let mut at = 2 + 32;
            at += 1 + usize::from(body[at]);
            at += 2 + usize::from(u16::from_be_bytes([body[at], body[at + 1]]));
            at += 1 + usize::from(body[at]);
            let fixed = body[..at].to_vec();
            let mut rest = &body[at + 2..];
            let mut extensions = Vec::new();
            while !rest.is_empty() {
                let kind = u16::from_be_bytes([rest[0], rest[1]]);
                let length = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
                extensions.push((kind, rest[4..4 + length].to_vec()));
                rest = &rest[4 + length..];
            }
            Parts { fixed, extensions }
        }

        /// Replaces (or adds, first) extension `kind`.
        fn set(&mut self, kind: u16, data: Vec<u8>) -> &mut Self {
            match self.extensions.iter_mut().find(|(k, _)| *k == kind) {
                Some(ext) => ext.1 = data,
                None => self.extensions.insert(0, (kind, data)),
            }
            self
        }

        fn body(&self) -> Vec<u8> {
            let mut list = Vec::new();
            for (kind, data) in &self.extensions {
                list.extend_from_slice(&kind.to_be_bytes());
                list.extend_from_slice(&(data.len() as u16).to_be_bytes());
                list.extend_from_slice(data);
            }
            let mut body = self.fixed.clone();
            body.extend_from_slice(&(list.len() as u16).to_be_bytes());
            body.extend_from_slice(&list);
            body
        }

        /// As one record.
        fn records(&self) -> Vec<u8> {
            framed(&message(&self.body()), MAX_RECORD)
        }
    }

    /// A server_name extension naming `name` (one host_name).
    fn sni(name: &[u8]) -> Vec<u8> {
        let mut entry = vec![NAME_TYPE_HOST];
        entry.extend_from_slice(&(name.len() as u16).to_be_bytes());
        entry.extend_from_slice(name);
        let mut data = (entry.len() as u16).to_be_bytes().to_vec();
        data.extend_from_slice(&entry);
        data
    }

    /// Checks `records` (a whole ClientHello and nothing else) byte for
    /// byte: parsed whole; every prefix Incomplete, asking for more than it
    /// has and no more than the whole; the same when re-framed into two
    /// records (cut at several places, the handshake header too) and into
    /// many; rustls accepts it, and agrees (`fuzzing::client_hello`).
    fn check_everywhere(records: &[u8]) -> Hello {
        let hello = check_framings(records);
        let theirs = crate::fuzzing::rustls_accepts(records).expect("rustls accepts it");
        assert_eq!((&hello.server_name, &hello.alpn), (&theirs.0, &theirs.1));
        hello
    }

    /// [`check_everywhere`] but for rustls, which may refuse the hello.
    fn check_framings(records: &[u8]) -> Hello {
        let hello = parse(records).unwrap();
        assert_eq!(hello.records_len, records.len());
        for n in 0..records.len() {
            match parse(&records[..n]) {
                Err(Error::Incomplete { at_least }) => {
                    assert!(n < at_least && at_least <= records.len(), "{n}: {at_least}")
                }
                other => panic!("prefix of {n} bytes: {other:?}"),
            }
        }
        crate::fuzzing::client_hello(records);
        let message = message_of(records);
        let mut splits: Vec<Vec<u8>> = [1, 2, 3, 4, 5, message.len() / 2, message.len() - 1]
            .iter()
            .map(|&cut| {
                let mut two = framed(&message[..cut], MAX_RECORD);
                two.extend_from_slice(&framed(&message[cut..], MAX_RECORD));
                two
            })
            .collect();
        splits.extend([1, 7, 100, 1000].map(|size| framed(&message, size)));
        for split in &splits {
            let again = parse(split).unwrap();
            assert_eq!(again.records_len, split.len());
            assert_eq!(
                Hello {
                    records_len: 0,
                    ..again
                },
                Hello {
                    records_len: 0,
                    ..hello.clone()
                }
            );
            crate::fuzzing::client_hello(split);
        }
        // Whatever follows the hello's records is not read.
        let mut more = records.to_vec();
        more.extend_from_slice(&[20, 3, 3, 0, 1, 1, 23, 3, 3]);
        assert_eq!(parse(&more), Ok(hello.clone()));
        hello
    }

    #[test]
    fn a_rustls_hello_with_sni() {
        let records = rustls_hello(&CLIENT);
        let hello = check_everywhere(&records);
        assert_eq!(hello.server_name.as_deref(), Some("ws.example.com"));
        assert_eq!(hello.legacy_version, 0x0303);
        assert!(hello.offers_tls13);
        assert!(hello.alpn.is_empty());
        assert!(!hello.is_acme_challenge());
    }

    #[test]
    fn a_rustls_hello_to_an_ip_address_has_no_sni() {
        let records = rustls_hello(&Client {
            name: "192.0.2.7",
            ..CLIENT
        });
        assert_eq!(check_everywhere(&records).server_name, None);
    }

    #[test]
    fn rustls_hellos_with_alpn() {
        let records = rustls_hello(&Client {
            alpn: &[b"h2", b"http/1.1"],
            ..CLIENT
        });
        let hello = check_everywhere(&records);
        assert_eq!(hello.alpn, [b"h2".to_vec(), b"http/1.1".to_vec()]);
        assert!(!hello.is_acme_challenge());

        let records = rustls_hello(&Client {
            alpn: &[ACME_TLS_ALPN],
            ..CLIENT
        });
        let hello = check_everywhere(&records);
        assert_eq!(hello.alpn, [b"acme-tls/1".to_vec()]);
        assert!(hello.is_acme_challenge());
    }

    #[test]
    fn a_post_quantum_hello_is_large_and_read_whole() {
        let records = rustls_hello(&Client {
            groups: &[kx_group::X25519MLKEM768, kx_group::X25519],
            ..CLIENT
        });
        assert!(records.len() > 1200, "{} bytes", records.len());
        let hello = check_everywhere(&records);
        assert_eq!(hello.server_name.as_deref(), Some("ws.example.com"));
        // At 5 bytes the record's length is known; past 9 the message's.
        assert_eq!(
            parse(&records[..5]),
            Err(Error::Incomplete {
                at_least: records.len()
            })
        );
        assert_eq!(parse(&[]), Err(Error::Incomplete { at_least: 9 }));
    }

    #[test]
    fn a_tls12_only_hello_does_not_offer_tls13() {
        let records = rustls_hello(&Client {
            versions: &[&TLS12],
            ..CLIENT
        });
        let hello = check_everywhere(&records);
        assert!(!hello.offers_tls13);
        assert_eq!(hello.server_name.as_deref(), Some("ws.example.com"));
    }

    #[test]
    fn sni_is_lowercased_without_its_trailing_dot() {
        let base = rustls_hello(&CLIENT);
        let with = |name: &[u8]| {
            let records = Parts::of(&base).set(EXT_SERVER_NAME, sni(name)).records();
            check_everywhere(&records).server_name
        };
        // Names rustls refuses (illegal_parameter) are no name here: the
        // caller's default route decides, and rustls refuses them there.
        let refused = |name: &[u8]| {
            let records = Parts::of(&base).set(EXT_SERVER_NAME, sni(name)).records();
            assert_eq!(crate::fuzzing::rustls_accepts(&records), None);
            check_framings(&records).server_name
        };
        assert_eq!(with(b"WS.Example.COM").as_deref(), Some("ws.example.com"));
        assert_eq!(with(b"ws.example.com.").as_deref(), Some("ws.example.com"));
        assert_eq!(
            with(b"Under_score.test").as_deref(),
            Some("under_score.test")
        );
        // An IP address, which rustls ignores.
        assert_eq!(with(b"127.0.0.1"), None);
        assert_eq!(with(b"::1"), None);
        assert_eq!(refused(b"a b.test"), None);
        assert_eq!(refused(b"a..b"), None);
        assert_eq!(refused("ünï.test".as_bytes()), None);
        assert_eq!(refused(&[b'a'; 254]), None);
        // An entry of another name type ends the list: no host name.
        let mut other = sni(b"x.test");
        other[2] = 7;
        let records = Parts::of(&base).set(EXT_SERVER_NAME, other).records();
        assert_eq!(parse(&records).unwrap().server_name, None);
    }

    #[test]
    fn malformed_extensions_are_named() {
        let base = rustls_hello(&Client {
            alpn: &[b"h2"],
            ..CLIENT
        });
        let malformed = |kind: u16, data: &[u8]| {
            let records = Parts::of(&base).set(kind, data.to_vec()).records();
            crate::fuzzing::client_hello(&records);
            match parse(&records) {
                Err(Error::Malformed(why)) => why,
                other => panic!("{kind} {data:?}: {other:?}"),
            }
        };
        assert_eq!(
            malformed(EXT_SERVER_NAME, &[]),
            "truncated server_name extension"
        );
        assert_eq!(
            malformed(EXT_SERVER_NAME, &[0, 0]),
            "empty server_name list"
        );
        assert_eq!(
            malformed(EXT_SERVER_NAME, &[0, 3, 0, 0, 0]),
            "empty server_name"
        );
        assert_eq!(
            malformed(EXT_SERVER_NAME, &[0, 4, 0, 0, 2, b'a']),
            "truncated server_name"
        );
        let mut two = sni(b"a.test");
        two.extend_from_within(2..);
        let n = (two.len() - 2) as u16;
        two[..2].copy_from_slice(&n.to_be_bytes());
        assert_eq!(
            malformed(EXT_SERVER_NAME, &two),
            "more than one host_name in server_name"
        );
        let mut trailing = sni(b"a.test");
        trailing.push(0);
        assert_eq!(
            malformed(EXT_SERVER_NAME, &trailing),
            "data after the server_name list"
        );
        assert_eq!(malformed(EXT_ALPN, &[0, 0]), "empty ALPN list");
        assert_eq!(malformed(EXT_ALPN, &[0, 1, 0]), "empty ALPN protocol name");
        assert_eq!(
            malformed(EXT_ALPN, &[0, 3, 3, b'h', b'2']),
            "truncated ALPN protocol name"
        );
        assert_eq!(
            malformed(EXT_ALPN, &[0, 3, 2, b'h', b'2', 9]),
            "data after the ALPN list"
        );
        assert_eq!(
            malformed(EXT_SUPPORTED_VERSIONS, &[]),
            "truncated supported_versions extension"
        );
        assert_eq!(
            malformed(EXT_SUPPORTED_VERSIONS, &[3, 3, 4, 3]),
            "supported_versions list empty or odd"
        );
        assert_eq!(
            malformed(EXT_SUPPORTED_VERSIONS, &[0]),
            "supported_versions list empty or odd"
        );

        // Duplicates, known or not (RFC 8446 4.2).
        let mut parts = Parts::of(&base);
        let first = parts.extensions[0].clone();
        parts.extensions.push(first);
        assert!(
            matches!(parse(&parts.records()), Err(Error::Malformed(why)) if why.starts_with("duplicate"))
        );
        let mut parts = Parts::of(&base);
        parts.extensions.push((0xfafa, vec![]));
        parts.extensions.push((0xfafa, vec![1]));
        assert_eq!(
            parse(&parts.records()),
            Err(Error::Malformed("duplicate extension"))
        );
        crate::fuzzing::client_hello(&parts.records());
        let mut parts = Parts::of(&base);
        parts.set(EXT_ALPN, vec![0, 3, 2, b'h', b'2']);
        parts.extensions.push((EXT_ALPN, vec![0, 3, 2, b'h', b'2']));
        assert_eq!(
            parse(&parts.records()),
            Err(Error::Malformed("duplicate ALPN extension"))
        );

        // pre_shared_key must come last.
        let mut parts = Parts::of(&base);
        parts.extensions.insert(0, (EXT_PRE_SHARED_KEY, vec![0; 8]));
        assert_eq!(
            parse(&parts.records()),
            Err(Error::Malformed("pre_shared_key is not the last extension"))
        );
    }

    #[test]
    fn truncated_bodies_are_malformed_never_a_panic() {
        let base = rustls_hello(&Client {
            alpn: &[b"h2", b"http/1.1"],
            ..CLIENT
        });
        let body = message_of(&base)[4..].to_vec();
        // A body cut anywhere, framed as if whole: never Ok, never a panic.
        for n in 0..body.len() {
            let records = framed(&message(&body[..n]), MAX_RECORD);
            match parse(&records) {
                Err(Error::Malformed(_)) => {}
                Ok(hello) if n == Parts::of(&base).fixed.len() => {
                    // Cut right before the extensions: a TLS 1.2 hello
                    // without any, which is fine.
                    assert_eq!(hello.server_name, None);
                }
                other => panic!("body cut at {n}: {other:?}"),
            }
            crate::fuzzing::client_hello(&records);
        }
        // One byte more than the extensions.
        let mut longer = body.clone();
        longer.push(0);
        assert_eq!(
            parse(&framed(&message(&longer), MAX_RECORD)),
            Err(Error::Malformed("data after the extensions"))
        );
        // Lengths out of range in the fixed part.
        let mut parts = Parts::of(&base);
        parts.fixed[34] = 33;
        assert!(matches!(parse(&parts.records()), Err(Error::Malformed(_))));
    }

    #[test]
    fn not_a_client_hello() {
        for input in [
            &b"GET / HTTP/1.1\r\n"[..],
            // SSLv2-format hello: rustls answers those.
            &[0x80, 0x2e, 0x01, 0x03, 0x01],
            // An alert, application data, a change_cipher_spec first.
            &[21, 3, 3, 0, 2, 2, 40],
            &[23, 3, 3, 0, 1, 0],
            &[20, 3, 3, 0, 1, 1],
            // A handshake record holding a ServerHello, known from its
            // first byte.
            &[22, 3, 3, 0, 60, 2],
            &[0],
        ] {
            assert_eq!(parse(input), Err(Error::NotClientHello), "{input:?}");
            crate::fuzzing::client_hello(input);
        }
        // Garbage after a handshake record header is malformed.
        assert_eq!(
            parse(&[22, 0, 0]),
            Err(Error::Malformed("record version is not 3.x"))
        );
        assert_eq!(
            parse(&[22, 3, 1, 0, 0]),
            Err(Error::Malformed("empty handshake record"))
        );
    }

    #[test]
    fn too_large_is_said_from_the_headers() {
        // A record past 2^14, before its payload arrives.
        assert_eq!(parse(&[22, 3, 3, 0x40, 0x01]), Err(Error::TooLarge));
        assert_eq!(
            parse(&[22, 3, 3, 0x40, 0x00]),
            Err(Error::Incomplete {
                at_least: 5 + MAX_RECORD
            })
        );
        // A hello past MAX_HELLO, from its handshake header alone.
        let length = (MAX_HELLO as u32 + 1).to_be_bytes();
        let header = [22, 3, 3, 0x40, 0x00, 1, length[1], length[2], length[3]];
        assert_eq!(parse(&header), Err(Error::TooLarge));
        // MAX_HELLO itself is fine, and asks for two records' worth.
        let length = (MAX_HELLO as u32).to_be_bytes();
        let header = [22, 3, 3, 0x40, 0x00, 1, length[1], length[2], length[3]];
        assert_eq!(
            parse(&header),
            Err(Error::Incomplete {
                at_least: 5 + 4 + MAX_HELLO + 5
            })
        );
        // A real hello padded to just past MAX_HELLO, in records.
        let base = rustls_hello(&CLIENT);
        let mut parts = Parts::of(&base);
        let now = parts.body().len();
        parts
            .extensions
            .insert(0, (21, vec![0; MAX_HELLO + 1 - now - 4]));
        assert_eq!(parts.body().len(), MAX_HELLO + 1);
        let records = framed(&message(&parts.body()), 4000);
        assert_eq!(parse(&records), Err(Error::TooLarge));
        crate::fuzzing::client_hello(&records);
        // One byte less (padding, extension 21) is read.
        parts.extensions[0].1.pop();
        let records = framed(&message(&parts.body()), 4000);
        assert_eq!(
            check_everywhere(&records).server_name.as_deref(),
            Some("ws.example.com")
        );
    }

    #[test]
    fn records_must_carry_the_hello_alone() {
        let base = rustls_hello(&CLIENT);
        let message = message_of(&base);
        // A change_cipher_spec between two halves (RFC 8446 5.1).
        let mut records = framed(&message[..100], MAX_RECORD);
        records.extend_from_slice(&[20, 3, 3, 0, 1, 1]);
        records.extend_from_slice(&framed(&message[100..], MAX_RECORD));
        let refused = parse(&records).unwrap_err();
        assert_eq!(refused, Error::Malformed(INTERLEAVED));
        assert_eq!(refused.alert(), Some(AlertDescription::UnexpectedMessage));
        crate::fuzzing::client_hello(&records);
        // More handshake bytes after it in its last record.
        let mut longer = message.clone();
        longer.extend_from_slice(&[20, 0, 0, 0]);
        let records = framed(&longer, MAX_RECORD);
        assert_eq!(
            parse(&records),
            Err(Error::Malformed("data after the ClientHello in its record"))
        );
        // Known from the two headers, before the rest arrives.
        assert_eq!(
            parse(&records[..9]),
            Err(Error::Malformed("data after the ClientHello in its record"))
        );
        crate::fuzzing::client_hello(&records);
    }

    #[test]
    fn alerts_are_seven_bytes_of_a_fatal_alert_record() {
        assert_eq!(
            fatal_alert(AlertDescription::UnrecognizedName),
            [21, 3, 3, 0, 2, 2, 112]
        );
        assert_eq!(fatal_alert(AlertDescription::DecodeError)[6], 50);
        assert_eq!(fatal_alert(AlertDescription::RecordOverflow)[6], 22);
        assert_eq!(fatal_alert(AlertDescription::UnexpectedMessage)[6], 10);
        assert_eq!(fatal_alert(AlertDescription::InternalError)[6], 80);
        assert_eq!(fatal_alert(AlertDescription::ProtocolVersion)[6], 70);
        assert_eq!(fatal_alert(AlertDescription::HandshakeFailure)[6], 40);
        assert_eq!(fatal_alert(AlertDescription::NoApplicationProtocol)[6], 120);
        assert_eq!(
            Error::TooLarge.alert(),
            Some(AlertDescription::RecordOverflow)
        );
        assert_eq!(
            Error::Malformed("x").alert(),
            Some(AlertDescription::DecodeError)
        );
        assert_eq!(Error::Incomplete { at_least: 9 }.alert(), None);
    }

    /// Writes the fuzz seeds in `fuzz/corpus/client_hello/` (hellos from
    /// the rustls client above, re-framed, edited, and non-hellos): run it
    /// with `--ignored` after changing the clients, then commit the files.
    #[test]
    #[ignore = "writes fuzz/corpus/client_hello/; run by hand"]
    fn write_fuzz_seeds() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/client_hello");
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, bytes: &[u8]| std::fs::write(dir.join(name), bytes).unwrap();
        let hello = rustls_hello(&CLIENT);
        let pq = rustls_hello(&Client {
            groups: &[kx_group::X25519MLKEM768, kx_group::X25519],
            ..CLIENT
        });
        write("rustls-sni", &hello);
        write("rustls-x25519mlkem768", &pq);
        write(
            "rustls-ip-no-sni",
            &rustls_hello(&Client {
                name: "192.0.2.7",
                ..CLIENT
            }),
        );
        let h2 = rustls_hello(&Client {
            alpn: &[b"h2", b"http/1.1"],
            ..CLIENT
        });
        write("rustls-alpn-h2-http1", &h2);
        let acme = rustls_hello(&Client {
            alpn: &[ACME_TLS_ALPN],
            ..CLIENT
        });
        write("rustls-alpn-acme", &acme);
        write(
            "rustls-tls12-only",
            &rustls_hello(&Client {
                versions: &[&TLS12],
                ..CLIENT
            }),
        );
        let message = message_of(&hello);
        write("records-of-100", &framed(&message, 100));
        let mut two = framed(&message[..2], MAX_RECORD);
        two.extend_from_slice(&framed(&message[2..], MAX_RECORD));
        write("header-split-in-two-records", &two);
        write("pq-records-of-300", &framed(&message_of(&pq), 300));
        let mut ccs = framed(&message[..100], MAX_RECORD);
        ccs.extend_from_slice(&[20, 3, 3, 0, 1, 1]);
        ccs.extend_from_slice(&framed(&message[100..], MAX_RECORD));
        write("interleaved-ccs", &ccs);
        let mut after = hello.clone();
        after.extend_from_slice(&[20, 3, 3, 0, 1, 1]);
        write("followed-by-ccs", &after);
        let with_sni = |name: &[u8]| Parts::of(&hello).set(EXT_SERVER_NAME, sni(name)).records();
        write("sni-upper-trailing-dot", &with_sni(b"WS.Example.COM."));
        write("sni-ip-literal", &with_sni(b"127.0.0.1"));
        write("sni-invalid", &with_sni(b"a b"));
        write("http-get", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        write(
            "sslv2-hello",
            &[
                0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15, 0x00, 0x00, 0x00, 0x10,
            ],
        );
        write("empty", b"");
        write(
            "too-large-header",
            &[22, 3, 3, 0x40, 0x00, 1, 0, 0x40, 0x01],
        );
    }
}
