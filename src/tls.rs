//! Building the rustls server configuration every connection shares.
//!
//! One place decides the crypto provider (aws-lc-rs, with the post-quantum
//! hybrid X25519MLKEM768 preferred), the TLS versions, ALPN, client
//! certificate checks and session tickets, so the connection code only ever
//! sees a finished `ServerConfig`.

use std::sync::Arc;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ProducesTickets, ServerSessionMemoryCache, StoresServerSessions};

use crate::error::StartupError;
use crate::settings::TlsMin;

/// The crypto provider wssify uses: rustls' default, aws-lc-rs.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The TLS choices fixed for the process's life (from the flags).
pub struct TlsOptions {
    /// The crypto provider.
    pub provider: Arc<CryptoProvider>,
    /// The oldest version offered.
    pub tls_min: TlsMin,
    /// ALPN protocols offered.
    pub alpn: Vec<Vec<u8>>,
}

/// Session resumption state carried from one configuration to the next, so
/// a certificate reload does not turn every reconnect into a full handshake.
#[derive(Clone)]
pub struct Resumption {
    ticketer: Arc<dyn ProducesTickets>,
    sessions: Arc<dyn StoresServerSessions>,
}

impl Resumption {
    /// Fresh ticket keys and an empty session cache. Stateless TLS 1.3
    /// tickets whose keys rotate (every 6 hours in rustls), so a reconnect
    /// storm after a deploy costs resumptions rather than full handshakes.
    /// 0-RTT stays off (rustls' default): it is replayable and a byte pipe
    /// cannot know whether that is safe.
    pub fn new() -> Result<Resumption, String> {
        let ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()
            .map_err(|e| format!("cannot set up TLS session tickets ({e})"))?;
        Ok(Resumption {
            ticketer,
            sessions: ServerSessionMemoryCache::new(256),
        })
    }

    /// Tickets sealed with the keys of a `--ticket-keys` file, which every
    /// replica shares (see `tickets`); the session cache (TLS 1.2 session
    /// ids) stays this process's own.
    pub fn shared(ticketer: Arc<crate::tickets::SharedTicketer>) -> Resumption {
        Resumption {
            ticketer,
            sessions: ServerSessionMemoryCache::new(256),
        }
    }
}

/// Builds a server configuration around a certificate table and, for
/// mTLS, a client certificate verifier.
pub fn server_config(
    options: &TlsOptions,
    resolver: Arc<crate::sni::SniTable>,
    client_verifier: Option<Arc<dyn ClientCertVerifier>>,
    resumption: &Resumption,
) -> Result<Arc<ServerConfig>, StartupError> {
    let versions: &[&'static rustls::SupportedProtocolVersion] = match options.tls_min {
        TlsMin::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsMin::V1_3 => &[&rustls::version::TLS13],
    };
    let builder = ServerConfig::builder_with_provider(options.provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| StartupError::new(format!("--tls-min: cannot configure TLS ({e})")))?;
    let builder = match client_verifier {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    // Every configuration records what its resolver saw: the log's SNI and
    // the `--strict-sni` refusal come from there (see `sni::Seen`).
    let mut config = builder.with_cert_resolver(Arc::new(crate::sni::Recording(resolver)));
    config.alpn_protocols = options.alpn.clone();
    config.ticketer = resumption.ticketer.clone();
    config.session_storage = resumption.sessions.clone();
    Ok(Arc::new(config))
}

/// A short name for a negotiated TLS version, as the logs print it.
pub fn version_name(version: Option<rustls::ProtocolVersion>) -> &'static str {
    match version {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        Some(_) => "other",
        None => "-",
    }
}

/// A cipher suite by the name OpenSSL gives it (`SSL_CIPHER_get_name`),
/// which is what HAProxy sends in the PROXY protocol's
/// `PP2_SUBTYPE_SSL_CIPHER` and what its readers compare against; `None`
/// for a suite rustls has and OpenSSL names differently or not at all.
pub fn openssl_cipher_name(suite: rustls::CipherSuite) -> Option<&'static str> {
    use rustls::CipherSuite as S;
    Some(match suite {
        S::TLS13_AES_128_GCM_SHA256 => "TLS_AES_128_GCM_SHA256",
        S::TLS13_AES_256_GCM_SHA384 => "TLS_AES_256_GCM_SHA384",
        S::TLS13_CHACHA20_POLY1305_SHA256 => "TLS_CHACHA20_POLY1305_SHA256",
        S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 => "ECDHE-ECDSA-AES128-GCM-SHA256",
        S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 => "ECDHE-ECDSA-AES256-GCM-SHA384",
        S::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 => "ECDHE-ECDSA-CHACHA20-POLY1305",
        S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => "ECDHE-RSA-AES128-GCM-SHA256",
        S::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => "ECDHE-RSA-AES256-GCM-SHA384",
        S::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => "ECDHE-RSA-CHACHA20-POLY1305",
        _ => return None,
    })
}

/// Says in plain words why a handshake failed, for the connection's log
/// line. `tls_min` is the oldest version served (what a client too old for
/// it is told). The wordings are a small fixed set, listed in the README's
/// Logs section: what each common client sends is there too.
pub fn describe_handshake_error(error: &std::io::Error, tls_min: TlsMin) -> String {
    use rustls::AlertDescription as Alert;
    use rustls::PeerIncompatible as Incompatible;
    let inner = error.get_ref();
    if let Some(left) = inner.and_then(|e| e.downcast_ref::<crate::tls_stream::ClientLeft>()) {
        return if left.after_certificate {
            format!(
                "client closed the connection after our certificate, without an alert: most likely it does not trust it (Node.js and Python asyncio clients close this way); {TRUST_HINT}"
            )
        } else {
            "client closed the connection during the handshake, before our certificate was sent"
                .to_string()
        };
    }
    if error.kind() == std::io::ErrorKind::UnexpectedEof {
        return "client closed the connection during the handshake".to_string();
    }
    if let Some(refused) = inner.and_then(|e| e.downcast_ref::<crate::tls_stream::UnknownName>()) {
        return refused.to_string();
    }
    if let Some(old) = inner.and_then(|e| e.downcast_ref::<crate::tls_stream::TooOld>()) {
        return old.to_string();
    }
    let Some(tls_error) = inner.and_then(|e| e.downcast_ref::<rustls::Error>()) else {
        return error.to_string();
    };
    let untrusted = |alert: Alert, why: &str| {
        format!(
            "the client does not trust our certificate (it sent {}: {why}); {TRUST_HINT}",
            alert_name(alert)
        )
    };
    let too_old = crate::tls_stream::TooOld.to_string();
    let only_tls12 = "the client cannot speak our TLS: it offers TLS 1.2 at most, and --tls-min 1.3 refuses it; --tls-min 1.2 accepts it";
    match tls_error {
        rustls::Error::AlertReceived(alert) => match alert {
            Alert::UnknownCA => untrusted(
                *alert,
                "it does not know the CA that issued it, e.g. a self-signed certificate",
            ),
            Alert::BadCertificate => untrusted(
                *alert,
                "most often its names do not include the one the client asked for, or the client does not know its CA",
            ),
            Alert::CertificateUnknown => untrusted(
                *alert,
                "as Chrome and Java say of an unknown CA or a name the certificate lacks",
            ),
            Alert::CertificateExpired => untrusted(
                *alert,
                "it is expired or not yet valid by the client's clock",
            ),
            Alert::CertificateRevoked => untrusted(*alert, "it was revoked"),
            Alert::UnsupportedCertificate => {
                untrusted(*alert, "the client cannot use its key type or usage")
            }
            alert => format!("the client gave up (it sent {})", alert_name(*alert)),
        },
        rustls::Error::PeerIncompatible(why) => match why {
            Incompatible::Tls12NotOffered => too_old,
            // The client listed its versions (supported_versions): none is
            // one we serve.
            Incompatible::Tls12NotOfferedOrEnabled => match tls_min {
                TlsMin::V1_2 => too_old,
                TlsMin::V1_3 => only_tls12.to_string(),
            },
            // A TLS 1.2 client that does not list versions, with TLS 1.2 off.
            Incompatible::SupportedVersionsExtensionRequired => only_tls12.to_string(),
            Incompatible::NoCipherSuitesInCommon => {
                "the client cannot speak our TLS: no cipher suite in common (wssify offers only AES-GCM and ChaCha20-Poly1305)".to_string()
            }
            Incompatible::NoKxGroupsInCommon => {
                "the client cannot speak our TLS: no key exchange group in common".to_string()
            }
            Incompatible::NoSignatureSchemesInCommon => {
                "the client cannot speak our TLS: it accepts no signature our certificate's key can make".to_string()
            }
            other => format!("the client cannot speak our TLS ({other:?})"),
        },
        rustls::Error::InvalidMessage(why) => format!("malformed TLS from the client ({why:?})"),
        rustls::Error::NoCertificatesPresented => {
            "client certificate refused: no certificate (--client-ca requires one)".to_string()
        }
        rustls::Error::InvalidCertificate(why) => {
            use rustls::CertificateError as Why;
            let why = match why {
                Why::UnknownIssuer => "unknown CA (not issued under --client-ca)".to_string(),
                Why::Expired | Why::ExpiredContext { .. } => "expired".to_string(),
                Why::NotValidYet | Why::NotValidYetContext { .. } => "not valid yet".to_string(),
                Why::Revoked => "revoked (listed in --crl)".to_string(),
                Why::BadSignature => "bad signature".to_string(),
                other => format!("{other:?}"),
            };
            format!("client certificate refused: {why}")
        }
        other => other.to_string(),
    }
}

/// What to do about a client that does not trust our certificate.
const TRUST_HINT: &str =
    "give the client the CA, or serve a certificate it trusts for the name it uses (--cert/--key)";

/// An alert's name as TLS specifications and other tools (openssl,
/// Wireshark) print it.
fn alert_name(alert: rustls::AlertDescription) -> String {
    use rustls::AlertDescription as A;
    let name = match alert {
        A::CloseNotify => "close_notify",
        A::UnexpectedMessage => "unexpected_message",
        A::BadRecordMac => "bad_record_mac",
        A::RecordOverflow => "record_overflow",
        A::HandshakeFailure => "handshake_failure",
        A::BadCertificate => "bad_certificate",
        A::UnsupportedCertificate => "unsupported_certificate",
        A::CertificateRevoked => "certificate_revoked",
        A::CertificateExpired => "certificate_expired",
        A::CertificateUnknown => "certificate_unknown",
        A::IllegalParameter => "illegal_parameter",
        A::UnknownCA => "unknown_ca",
        A::AccessDenied => "access_denied",
        A::DecodeError => "decode_error",
        A::DecryptError => "decrypt_error",
        A::ProtocolVersion => "protocol_version",
        A::InsufficientSecurity => "insufficient_security",
        A::InternalError => "internal_error",
        A::InappropriateFallback => "inappropriate_fallback",
        A::UserCanceled => "user_canceled",
        A::MissingExtension => "missing_extension",
        A::UnsupportedExtension => "unsupported_extension",
        A::UnrecognisedName => "unrecognized_name",
        A::BadCertificateStatusResponse => "bad_certificate_status_response",
        A::UnknownPSKIdentity => "unknown_psk_identity",
        A::CertificateRequired => "certificate_required",
        A::NoApplicationProtocol => "no_application_protocol",
        other => return format!("alert {}", u8::from(other)),
    };
    name.to_string()
}
