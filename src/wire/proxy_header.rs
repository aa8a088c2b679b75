//! The PROXY protocol header (HAProxy's `doc/proxy-protocol.txt`), written
//! to the backend before any client byte so that it learns the client's
//! address, and with version 2 what the TLS handshake settled.
//!
//! Only the encoder: wssify sends the header, it never reads one. It has no
//! I/O and cannot fail: a TLV whose value would not fit its 16-bit length
//! (or push the header past its own) is left out rather than cut.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// Which version of the header to send (`--proxy-protocol v1|v2`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// The text line, `PROXY TCP4 src dst sport dport\r\n`: addresses only.
    V1,
    /// The binary header, with the TLS facts as TLVs.
    V2,
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Version::V1 => "v1",
            Version::V2 => "v2",
        })
    }
}

/// The twelve bytes every v2 header starts with.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Version 2, command PROXY: the connection was relayed for a client.
const VER_CMD_PROXY: u8 = 0x21;
/// Version 2, command LOCAL: use the connection's own addresses (sent, as
/// HAProxy does, when the client's could not be read).
const VER_CMD_LOCAL: u8 = 0x20;
/// AF_UNSPEC: no addresses follow.
const FAM_UNSPEC: u8 = 0x00;
/// AF_INET over STREAM.
const FAM_TCP4: u8 = 0x11;
/// AF_INET6 over STREAM.
const FAM_TCP6: u8 = 0x21;

/// TLV types (section 2.2 of the specification).
pub const PP2_TYPE_ALPN: u8 = 0x01;
/// The host name the client asked for (its SNI).
pub const PP2_TYPE_AUTHORITY: u8 = 0x02;
/// The TLS facts: a client byte, a verify word, then sub-TLVs.
pub const PP2_TYPE_SSL: u8 = 0x20;
/// Sub-TLV: the TLS version, e.g. `TLSv1.3`.
pub const PP2_SUBTYPE_SSL_VERSION: u8 = 0x21;
/// Sub-TLV: the client certificate's subject common name.
pub const PP2_SUBTYPE_SSL_CN: u8 = 0x22;
/// Sub-TLV: the cipher's OpenSSL name, e.g. `TLS_AES_128_GCM_SHA256`.
pub const PP2_SUBTYPE_SSL_CIPHER: u8 = 0x23;
/// Sub-TLV: the algorithm that signed the server's certificate.
pub const PP2_SUBTYPE_SSL_SIG_ALG: u8 = 0x24;
/// Sub-TLV: the server certificate's key algorithm.
pub const PP2_SUBTYPE_SSL_KEY_ALG: u8 = 0x25;

/// Client flag: the connection was made over TLS.
pub const PP2_CLIENT_SSL: u8 = 0x01;
/// Client flag: the client presented a certificate on this connection.
pub const PP2_CLIENT_CERT_CONN: u8 = 0x02;
/// Client flag: the client presented a certificate in this TLS session.
pub const PP2_CLIENT_CERT_SESS: u8 = 0x04;

/// What the TLS handshake settled, for the v2 TLVs; `None` fields are left
/// out. Borrowed: the header is written once and nothing is kept.
#[derive(Debug, Default, Clone, Copy)]
pub struct TlsFacts<'a> {
    /// The client's SNI (`PP2_TYPE_AUTHORITY`).
    pub sni: Option<&'a str>,
    /// The ALPN protocol agreed (`PP2_TYPE_ALPN`).
    pub alpn: Option<&'a [u8]>,
    /// `TLSv1.3` or `TLSv1.2`, as OpenSSL names them.
    pub version: Option<&'a str>,
    /// The cipher suite, as OpenSSL names it.
    pub cipher: Option<&'a str>,
    /// The signature algorithm of the server's certificate.
    pub sig_alg: Option<&'a str>,
    /// The key algorithm of the server's certificate.
    pub key_alg: Option<&'a str>,
    /// The client presented a certificate that was verified (mTLS).
    pub client_cert: bool,
    /// The common name of the client's certificate.
    pub cn: Option<&'a str>,
    /// TLS was passed through to the backend, not ended here: no
    /// `PP2_TYPE_SSL` is sent, since this side settled nothing about it
    /// (the SNI, as the client asked for it, still goes as the authority).
    pub passed_through: bool,
}

/// The header for a client at `peer` that connected to `local` (`None`:
/// the addresses could not be read, and the receiver is told so: v1
/// `UNKNOWN`, v2 LOCAL with `AF_UNSPEC`, as HAProxy sends them). v1
/// ignores `tls`.
///
/// Addresses are canonicalized first (`::ffff:a.b.c.d` becomes `a.b.c.d`,
/// as a dual-stack listener reports IPv4 peers). Should the two families
/// still differ (which an accepted socket's two ends never do), both are
/// sent as IPv6, the IPv4 one mapped, as HAProxy's `make_proxy_line_v1/v2`
/// do: the client's address is kept, and any reader can unmap it.
pub fn encode(
    version: Version,
    addrs: Option<(SocketAddr, SocketAddr)>,
    tls: &TlsFacts,
) -> Vec<u8> {
    let addrs = addrs.map(|(peer, local)| canonical_pair(peer, local));
    match version {
        Version::V1 => encode_v1(addrs),
        Version::V2 => encode_v2(addrs, tls),
    }
}

/// Both addresses canonical and of one family.
fn canonical_pair(peer: SocketAddr, local: SocketAddr) -> (SocketAddr, SocketAddr) {
    let (p, l) = (peer.ip().to_canonical(), local.ip().to_canonical());
    let (p, l) = match (p, l) {
        (IpAddr::V4(a), IpAddr::V6(b)) => (IpAddr::V6(a.to_ipv6_mapped()), IpAddr::V6(b)),
        (IpAddr::V6(a), IpAddr::V4(b)) => (IpAddr::V6(a), IpAddr::V6(b.to_ipv6_mapped())),
        same => same,
    };
    (
        SocketAddr::new(p, peer.port()),
        SocketAddr::new(l, local.port()),
    )
}

fn encode_v1(addrs: Option<(SocketAddr, SocketAddr)>) -> Vec<u8> {
    let mut line = String::with_capacity(108);
    match addrs {
        Some((peer, local)) => {
            let family = if peer.is_ipv4() { "TCP4" } else { "TCP6" };
            let _ = write!(
                line,
                "PROXY {family} {} {} {} {}\r\n",
                peer.ip(),
                local.ip(),
                peer.port(),
                local.port()
            );
        }
        None => line.push_str("PROXY UNKNOWN\r\n"),
    }
    line.into_bytes()
}

fn encode_v2(addrs: Option<(SocketAddr, SocketAddr)>, tls: &TlsFacts) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(&V2_SIGNATURE);
    out.push(if addrs.is_some() {
        VER_CMD_PROXY
    } else {
        VER_CMD_LOCAL
    });
    let family = match addrs {
        None => FAM_UNSPEC,
        Some((peer, _)) if peer.is_ipv4() => FAM_TCP4,
        Some(_) => FAM_TCP6,
    };
    out.push(family);
    out.extend_from_slice(&[0, 0]); // the length, filled in below
    if let Some((peer, local)) = addrs {
        match (peer.ip(), local.ip()) {
            (IpAddr::V4(p), IpAddr::V4(l)) => {
                out.extend_from_slice(&p.octets());
                out.extend_from_slice(&l.octets());
            }
            (p, l) => {
                out.extend_from_slice(&v6(p).octets());
                out.extend_from_slice(&v6(l).octets());
            }
        }
        out.extend_from_slice(&peer.port().to_be_bytes());
        out.extend_from_slice(&local.port().to_be_bytes());
    }
    if let Some(alpn) = tls.alpn {
        tlv(&mut out, PP2_TYPE_ALPN, alpn);
    }
    if let Some(sni) = tls.sni {
        tlv(&mut out, PP2_TYPE_AUTHORITY, sni.as_bytes());
    }
    if !tls.passed_through {
        tlv(&mut out, PP2_TYPE_SSL, &ssl_value(tls));
    }
    // The length counts what follows the 16 fixed bytes; each TLV was
    // left out if it would have pushed it past u16 (see `tlv`).
    let length = (out.len() - 16) as u16;
    out[14..16].copy_from_slice(&length.to_be_bytes());
    out
}

/// The value of the `PP2_TYPE_SSL` TLV: client flags, verify result, and
/// the sub-TLVs known.
fn ssl_value(tls: &TlsFacts) -> Vec<u8> {
    let mut ssl = Vec::with_capacity(64);
    ssl.push(if tls.client_cert {
        PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS
    } else {
        PP2_CLIENT_SSL
    });
    // verify: 0, the client's certificate was verified or none was asked
    // for (a client whose certificate fails never gets this far).
    ssl.extend_from_slice(&0u32.to_be_bytes());
    // In HAProxy's order.
    let subs = [
        (PP2_SUBTYPE_SSL_VERSION, tls.version),
        (PP2_SUBTYPE_SSL_CN, tls.cn),
        (PP2_SUBTYPE_SSL_KEY_ALG, tls.key_alg),
        (PP2_SUBTYPE_SSL_SIG_ALG, tls.sig_alg),
        (PP2_SUBTYPE_SSL_CIPHER, tls.cipher),
    ];
    for (kind, value) in subs {
        if let Some(value) = value {
            tlv(&mut ssl, kind, value.as_bytes());
        }
    }
    ssl
}

/// An IPv6 address as is, an IPv4 one mapped.
fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// Appends one TLV unless it would not fit: its value in a 16-bit length,
/// or the whole header (16 fixed bytes, then at most 65535) in its own.
fn tlv(out: &mut Vec<u8>, kind: u8, value: &[u8]) {
    let Ok(length) = u16::try_from(value.len()) else {
        return;
    };
    if out.len() + 3 + value.len() > 16 + usize::from(u16::MAX) {
        return;
    }
    out.push(kind);
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(value);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_ipv4_is_the_spec_line() {
        let header = encode(
            Version::V1,
            Some((addr("192.0.2.1:56324"), addr("198.51.100.7:443"))),
            &TlsFacts::default(),
        );
        assert_eq!(header, b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n");
    }

    #[test]
    fn v1_ipv6_and_unknown() {
        let header = encode(
            Version::V1,
            Some((addr("[2001:db8::1]:1000"), addr("[::1]:9300"))),
            &TlsFacts::default(),
        );
        assert_eq!(header, b"PROXY TCP6 2001:db8::1 ::1 1000 9300\r\n");
        assert_eq!(
            encode(Version::V1, None, &TlsFacts::default()),
            b"PROXY UNKNOWN\r\n"
        );
    }

    #[test]
    fn a_dual_stack_listeners_mapped_ipv4_is_sent_as_ipv4() {
        let pair = Some((
            addr("[::ffff:10.1.2.3]:5000"),
            addr("[::ffff:127.0.0.1]:9300"),
        ));
        assert_eq!(
            encode(Version::V1, pair, &TlsFacts::default()),
            b"PROXY TCP4 10.1.2.3 127.0.0.1 5000 9300\r\n"
        );
        let v2 = encode(Version::V2, pair, &TlsFacts::default());
        assert_eq!(v2[13], FAM_TCP4);
        assert_eq!(&v2[16..20], &[10, 1, 2, 3]);
    }

    #[test]
    fn mixed_families_are_both_sent_as_ipv6() {
        let pair = Some((addr("10.1.2.3:5000"), addr("[2001:db8::7]:9300")));
        assert_eq!(
            encode(Version::V1, pair, &TlsFacts::default()),
            b"PROXY TCP6 ::ffff:10.1.2.3 2001:db8::7 5000 9300\r\n"
        );
        let v2 = encode(Version::V2, pair, &TlsFacts::default());
        assert_eq!(v2[13], FAM_TCP6);
        let mut mapped = [0u8; 16];
        mapped[10..12].copy_from_slice(&[0xff, 0xff]);
        mapped[12..].copy_from_slice(&[10, 1, 2, 3]);
        assert_eq!(&v2[16..32], &mapped);
    }

    /// Byte for byte, from the specification's layout: signature, 0x21
    /// (v2, PROXY), 0x11 (TCP over IPv4), length, src, dst, sport, dport,
    /// then TLVs (type, 16-bit length, value); the SSL TLV's value is the
    /// client byte, a 32-bit verify and its sub-TLVs.
    #[test]
    fn v2_ipv4_with_every_tlv_golden() {
        let tls = TlsFacts {
            sni: Some("a.test"),
            alpn: Some(b"h2"),
            version: Some("TLSv1.3"),
            cipher: Some("TLS_AES_128_GCM_SHA256"),
            sig_alg: None,
            key_alg: None,
            client_cert: true,
            cn: Some("bob"),
            passed_through: false,
        };
        let header = encode(
            Version::V2,
            Some((addr("192.0.2.1:56324"), addr("198.51.100.7:443"))),
            &tls,
        );
        let mut want: Vec<u8> = vec![
            0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54,
            0x0A, // signature
            0x21, 0x11, // v2 PROXY, TCP4
            0x00, 0x00, // length, set below
            192, 0, 2, 1, // src
            198, 51, 100, 7, // dst
            0xDC, 0x04, // 56324
            0x01, 0xBB, // 443
            0x01, 0x00, 0x02, b'h', b'2', // ALPN
            0x02, 0x00, 0x06, // AUTHORITY
        ];
        want.extend_from_slice(b"a.test");
        let mut ssl = vec![0x07, 0, 0, 0, 0]; // SSL | CERT_CONN | CERT_SESS, verify 0
        ssl.extend_from_slice(&[0x21, 0x00, 0x07]);
        ssl.extend_from_slice(b"TLSv1.3");
        ssl.extend_from_slice(&[0x22, 0x00, 0x03]);
        ssl.extend_from_slice(b"bob");
        ssl.extend_from_slice(&[0x23, 0x00, 22]);
        ssl.extend_from_slice(b"TLS_AES_128_GCM_SHA256");
        want.extend_from_slice(&[0x20, 0x00, ssl.len() as u8]);
        want.extend_from_slice(&ssl);
        let length = (want.len() - 16) as u16;
        want[14..16].copy_from_slice(&length.to_be_bytes());
        assert_eq!(header, want);
    }

    #[test]
    fn v2_ipv6_without_tls_facts_golden() {
        let header = encode(
            Version::V2,
            Some((addr("[2001:db8::1]:1000"), addr("[::1]:9300"))),
            &TlsFacts::default(),
        );
        let mut want = V2_SIGNATURE.to_vec();
        want.extend_from_slice(&[0x21, 0x21, 0x00, 36 + 8]);
        want.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        want.extend_from_slice(&[0; 15]);
        want.push(1);
        want.extend_from_slice(&[0x03, 0xE8, 0x24, 0x54]); // 1000, 9300
        want.extend_from_slice(&[0x20, 0x00, 0x05, 0x01, 0, 0, 0, 0]); // SSL, no sub-TLVs
        assert_eq!(header, want);
    }

    #[test]
    fn v2_unknown_addresses_are_local_af_unspec() {
        let header = encode(Version::V2, None, &TlsFacts::default());
        let mut want = V2_SIGNATURE.to_vec();
        want.extend_from_slice(&[0x20, 0x00, 0x00, 8, 0x20, 0x00, 0x05, 0x01, 0, 0, 0, 0]);
        assert_eq!(header, want);
    }

    #[test]
    fn a_value_too_long_for_its_length_is_left_out() {
        let long = "x".repeat(70_000);
        let tls = TlsFacts {
            sni: Some(&long),
            cn: Some(&long),
            ..TlsFacts::default()
        };
        let header = encode(Version::V2, None, &tls);
        assert_eq!(header.len(), 16 + 8);
        // Values that fit one by one but not together: the header stays
        // within its own 16-bit length.
        let half = "y".repeat(40_000);
        let tls = TlsFacts {
            sni: Some(&half),
            cn: Some(&half),
            ..TlsFacts::default()
        };
        let header = encode(Version::V2, None, &tls);
        let length = u16::from_be_bytes([header[14], header[15]]);
        assert_eq!(usize::from(length), header.len() - 16);
    }
}
