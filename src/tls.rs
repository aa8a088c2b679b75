//! Building the rustls server configuration every connection shares.
//!
//! One place decides the crypto provider (aws-lc-rs, with the post-quantum
//! hybrid X25519MLKEM768 preferred), the TLS versions, ALPN and session
//! tickets, so the connection code only ever sees a finished `ServerConfig`.

use std::sync::Arc;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::ResolvesServerCert;

use crate::error::StartupError;
use crate::settings::TlsMin;

/// The crypto provider wssify uses: rustls' default, aws-lc-rs.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Builds the shared server configuration around a certificate resolver.
pub fn server_config(
    provider: Arc<CryptoProvider>,
    tls_min: TlsMin,
    alpn: &[Vec<u8>],
    resolver: Arc<dyn ResolvesServerCert>,
) -> Result<Arc<ServerConfig>, StartupError> {
    let versions: &[&'static rustls::SupportedProtocolVersion] = match tls_min {
        TlsMin::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsMin::V1_3 => &[&rustls::version::TLS13],
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| StartupError::new(format!("--tls-min: cannot configure TLS ({e})")))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = alpn.to_vec();
    // Stateless TLS 1.3 session tickets whose keys rotate (every 6 hours in
    // rustls), so a reconnect storm after a deploy costs resumptions rather
    // than full handshakes. 0-RTT stays off (rustls' default): it is
    // replayable and a byte pipe cannot know whether that is safe.
    config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()
        .map_err(|e| StartupError::new(format!("cannot set up TLS session tickets ({e})")))?;
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
        rustls::Error::NoCertificatesPresented => "the client sent no certificate".to_string(),
        rustls::Error::InvalidCertificate(why) => {
            format!("the client's certificate is not valid ({why:?})")
        }
        other => other.to_string(),
    }
}
