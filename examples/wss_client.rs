//! A wss:// client: connects over TCP, does TLS with rustls, does the
//! WebSocket handshake, sends one message, prints the echo and closes.
//!
//! ```text
//! wss_client --ca FILE URL        trust the CA certificate(s) in a PEM file
//! wss_client URL FINGERPRINT      pin the certificate by its SHA-256 fingerprint
//! ```
//!
//! For wssify's development certificate, trust its development CA (the file
//! `wssify --dev-ca show` names), which lasts across restarts. A
//! fingerprint pins one certificate: what wssify logs with `--self-signed`
//! (`development certificate SHA-256 fingerprint: AB:CD:...`), or what
//! `openssl x509 -noout -fingerprint -sha256 -in cert.pem` prints.
//!
//! ```text
//! cargo run --example wss_client -- --ca ~/.local/share/wssify/dev-ca/ca.pem wss://localhost:9300/
//! cargo run --example wss_client -- --ca certs/ca.pem wss://localhost:9300/
//! cargo run --example wss_client -- wss://localhost:9300/ AB:CD:...
//! ```

use std::fmt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::http::Uri;

const MESSAGE: &str = "hello from wss_client";
/// The whole exchange must finish within this.
const TIME_LIMIT: Duration = Duration::from_secs(10);

const USAGE: &str = "usage: wss_client --ca FILE URL\n       wss_client URL FINGERPRINT\n\
e.g.   wss_client --ca ~/.local/share/wssify/dev-ca/ca.pem wss://localhost:9300/   (wssify's development CA)";

/// How the client decides to trust the server.
enum Trust {
    /// Exactly the certificate with this SHA-256, as `AB:CD:..`.
    Pinned(String),
    /// Certificates chaining to the CAs in this PEM file.
    Ca(PathBuf),
}

#[tokio::main]
async fn main() -> ExitCode {
    let (url, trust) = match parse_args(std::env::args().skip(1).collect()) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("wss_client: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match tokio::time::timeout(TIME_LIMIT, run(&url, trust)).await {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("wss_client: {e}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("wss_client: no echo within {TIME_LIMIT:?}");
            ExitCode::FAILURE
        }
    }
}

/// `Ok(None)` asks for the usage text.
fn parse_args(args: Vec<String>) -> Result<Option<(String, Trust)>, String> {
    let mut ca = None;
    let mut positional = Vec::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--ca" => match args.next() {
                Some(file) => ca = Some(PathBuf::from(file)),
                None => return Err("--ca needs a PEM file".to_string()),
            },
            _ if arg.starts_with("--") => return Err(format!("unknown option {arg}")),
            _ => positional.push(arg),
        }
    }
    let mut positional = positional.into_iter();
    let Some(url) = positional.next() else {
        return Err("give the wss:// URL".to_string());
    };
    let trust = match (positional.next(), ca) {
        (Some(fingerprint), None) => Trust::Pinned(normalize_fingerprint(&fingerprint)?),
        (None, Some(ca)) => Trust::Ca(ca),
        (Some(_), Some(_)) => return Err("give a FINGERPRINT or --ca FILE, not both".to_string()),
        (None, None) => {
            return Err("give the certificate's FINGERPRINT or --ca FILE".to_string());
        }
    };
    if let Some(extra) = positional.next() {
        return Err(format!("unexpected argument {extra}"));
    }
    Ok(Some((url, trust)))
}

/// Accepts `AB:CD:..`, `ab:cd:..` or plain hex; returns the `AB:CD:..` form.
fn normalize_fingerprint(text: &str) -> Result<String, String> {
    let text = text.trim();
    let text = text.rsplit('=').next().unwrap_or(text); // openssl's "sha256 Fingerprint=AB:.."
    let hex: String = text
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_uppercase())
        .collect();
    if hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
        let pairs: Vec<&str> = (0..32).map(|i| &hex[2 * i..2 * i + 2]).collect();
        Ok(pairs.join(":"))
    } else {
        Err(format!(
            "'{text}' is not a SHA-256 fingerprint (32 hex bytes, e.g. AB:CD:...)"
        ))
    }
}

async fn run(url: &str, trust: Trust) -> Result<(), String> {
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("'{url}' is not a URL: {e}"))?;
    if uri.scheme_str() != Some("wss") {
        return Err(format!("'{url}' is not a wss:// URL"));
    }
    let host = uri
        .host()
        .ok_or_else(|| format!("'{url}' has no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(443);

    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = client_config(provider, trust)?;
    let server_name = ServerName::try_from(host.clone())
        .map_err(|e| format!("'{host}' is not a valid server name: {e}"))?;

    // As written in the URL: IPv6 addresses keep their brackets.
    let shown = uri.host().unwrap_or_default();
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("cannot connect to {shown}:{port}: {e}"))?;
    let tls = TlsConnector::from(config)
        .connect(server_name, tcp)
        .await
        .map_err(|e| {
            format!(
                "TLS handshake with {shown}:{port} failed: {}",
                describe_tls_error(&e)
            )
        })?;
    let (_, conn) = tls.get_ref();
    println!(
        "TLS: {}, {}, key exchange {}",
        match conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
            other => format!("{other:?}"),
        },
        conn.negotiated_cipher_suite()
            .map_or("-".to_string(), |s| format!("{:?}", s.suite())),
        conn.negotiated_key_exchange_group()
            .map_or("-".to_string(), |g| format!("{:?}", g.name())),
    );

    let (mut ws, response) = tokio_tungstenite::client_async(url, tls)
        .await
        .map_err(|e| format!("WebSocket handshake failed: {e}"))?;
    println!("WebSocket: {} {}", response.status(), url);

    ws.send(Message::text(MESSAGE))
        .await
        .map_err(|e| format!("cannot send: {e}"))?;
    println!("sent: {MESSAGE}");
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                println!("echo: {}", text.as_str());
                break;
            }
            Some(Ok(Message::Binary(data))) => {
                println!("echo: {} bytes of binary", data.len());
                break;
            }
            // Pongs and the like: keep waiting for the echo.
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("no echo: {e}")),
            None => return Err("the server closed before echoing".to_string()),
        }
    }
    ws.close(None)
        .await
        .map_err(|e| format!("cannot close: {e}"))?;
    // Read until the server's close frame answers ours.
    while let Some(Ok(_)) = ws.next().await {}
    println!("closed");
    Ok(())
}

/// The pinning verifier's own words when the fingerprint did not match.
fn describe_tls_error(error: &std::io::Error) -> String {
    let tls_error = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match tls_error {
        Some(rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(why)))) => {
            why.to_string()
        }
        _ => error.to_string(),
    }
}

fn client_config(
    provider: Arc<CryptoProvider>,
    trust: Trust,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot configure TLS: {e}"))?;
    let config = match trust {
        Trust::Pinned(fingerprint) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned {
                fingerprint,
                provider,
            }))
            .with_no_client_auth(),
        Trust::Ca(path) => {
            let mut roots = rustls::RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(&path)
                .map_err(|e| format!("--ca {}: {e}", path.display()))?;
            for cert in certs {
                let cert = cert.map_err(|e| format!("--ca {}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("--ca {}: {e}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("--ca {}: no PEM certificate in it", path.display()));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    Ok(Arc::new(config))
}

/// Trusts exactly one certificate, named by its SHA-256 fingerprint, the way
/// a client pins a self-signed certificate. Signatures are still checked.
#[derive(Debug)]
struct Pinned {
    fingerprint: String,
    provider: Arc<CryptoProvider>,
}

/// The server presented a different certificate than the pinned one.
#[derive(Debug)]
struct Mismatch {
    presented: String,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the server's certificate has SHA-256 {}, not the pinned fingerprint",
            self.presented
        )
    }
}

impl std::error::Error for Mismatch {}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The same function wssify uses for the fingerprint it logs.
        let presented = wssify::certs::fingerprint(end_entity);
        if presented == self.fingerprint {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(Mismatch { presented })),
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
