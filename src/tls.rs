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
use rustls::server::{
    ProducesTickets, ResolvesServerCert, ServerSessionMemoryCache, StoresServerSessions,
};

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
}

/// Builds a server configuration around a certificate resolver and, for
/// mTLS, a client certificate verifier.
pub fn server_config(
    options: &TlsOptions,
    resolver: Arc<dyn ResolvesServerCert>,
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

/// Says in plain words why a handshake failed, for the connection's log line.
pub fn describe_handshake_error(error: &std::io::Error) -> String {
    use rustls::AlertDescription as Alert;
    if error.kind() == std::io::ErrorKind::UnexpectedEof {
        return "client closed the connection during the handshake".to_string();
    }
    if let Some(refused) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<crate::tls_stream::UnknownName>())
    {
        return refused.to_string();
    }
    let Some(tls_error) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return error.to_string();
    };
    match tls_error {
        rustls::Error::AlertReceived(
            alert @ (Alert::BadCertificate
            | Alert::UnknownCA
            | Alert::CertificateUnknown
            | Alert::CertificateExpired),
        ) => format!(
            "the client does not trust our certificate (it sent {alert:?}); give it the CA, or a real certificate with --cert/--key"
        ),
        rustls::Error::AlertReceived(alert) => format!("the client gave up (it sent {alert:?})"),
        rustls::Error::PeerIncompatible(why) => {
            format!("the client cannot speak our TLS ({why:?}); see --tls-min")
        }
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
