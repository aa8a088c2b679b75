//! Shared test parts: the real wssify binary, real backends and real TLS
//! clients, all on 127.0.0.1 with port 0. Every wait is bounded and waits on
//! readiness (a log line, a socket), never on a sleep.
#![allow(dead_code)]

pub mod ca;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// The longest any single wait in a test may take.
pub const WAIT: Duration = Duration::from_secs(20);

/// Runs a test body with an overall time bound.
pub async fn bounded<F: std::future::Future>(limit: Duration, body: F) -> F::Output {
    tokio::time::timeout(limit, body)
        .await
        .expect("test exceeded its time bound")
}

/// A running wssify binary whose log lines are collected as they arrive.
pub struct Wssify {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    changed: watch::Receiver<usize>,
    /// The first address it listens on.
    pub addr: SocketAddr,
    /// Its HOME and XDG_DATA_HOME: the development CA is made there, never
    /// in the real home; removed when the process is dropped.
    pub data_home: tempfile::TempDir,
}

/// Environment changes for a started binary: `Some` sets a variable,
/// `None` removes it. Applied after the defaults (HOME and XDG_DATA_HOME
/// in a fresh temporary directory).
pub type Env<'a> = &'a [(&'a str, Option<&'a str>)];

/// A fresh directory for a binary's HOME and XDG_DATA_HOME, and the
/// command set up to use it, then `env`.
pub fn isolated(command: &mut Command, env: Env<'_>) -> tempfile::TempDir {
    let data_home = tempfile::tempdir().expect("a temporary HOME");
    command
        .env("HOME", data_home.path())
        .env("XDG_DATA_HOME", data_home.path());
    for (name, value) in env {
        match value {
            Some(value) => command.env(name, value),
            None => command.env_remove(name),
        };
    }
    data_home
}

impl Wssify {
    /// Starts `wssify --listen 127.0.0.1:0 <args>` and waits for its
    /// "listening on" line.
    pub async fn start(args: &[&str]) -> Wssify {
        let mut all = vec!["--listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        Self::start_raw(&all).await
    }

    /// [`Wssify::start`] for arguments built as owned strings.
    pub async fn start_owned(args: &[String]) -> Wssify {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Self::start(&args).await
    }

    /// Starts wssify serving `cert`/`key` in front of a new echo backend,
    /// with `extra` flags.
    pub async fn serving_pair(
        cert: &std::path::Path,
        key: &std::path::Path,
        extra: &[String],
    ) -> Wssify {
        let backend = echo_backend().await;
        let mut args = vec![
            "--to".to_string(),
            backend.to_string(),
            "--cert".to_string(),
            cert.display().to_string(),
            "--key".to_string(),
            key.display().to_string(),
        ];
        args.extend(extra.iter().cloned());
        Self::start_owned(&args).await
    }

    /// Starts the binary with exactly `args` and waits for "listening on".
    pub async fn start_raw(args: &[&str]) -> Wssify {
        Self::start_raw_command(env!("CARGO_BIN_EXE_wssify"), args).await
    }

    /// Starts `program args` (which must exec wssify, e.g. through `sh -c`
    /// to set a limit first) and waits for "listening on".
    pub async fn start_raw_command(program: &str, args: &[&str]) -> Wssify {
        Self::start_raw_command_env(program, args, &[]).await
    }

    /// [`Wssify::start_raw`] with environment changes.
    pub async fn start_raw_env(args: &[&str], env: Env<'_>) -> Wssify {
        Self::start_raw_command_env(env!("CARGO_BIN_EXE_wssify"), args, env).await
    }

    /// [`Wssify::start_raw_command`] with environment changes.
    pub async fn start_raw_command_env(program: &str, args: &[&str], env: Env<'_>) -> Wssify {
        Self::launch_env(
            program,
            args,
            "debug,rustls=info,tokio_rustls=info",
            Stdio::null(),
            env,
        )
        .await
    }

    /// Starts `program args` with this `RUST_LOG` and standard input (a
    /// terminal, say), and waits for "listening on".
    pub async fn launch(program: &str, args: &[&str], rust_log: &str, stdin: Stdio) -> Wssify {
        Self::launch_env(program, args, rust_log, stdin, &[]).await
    }

    /// [`Wssify::launch`] with environment changes; the process gets a HOME
    /// (and data directory) of its own.
    pub async fn launch_env(
        program: &str,
        args: &[&str],
        rust_log: &str,
        stdin: Stdio,
        env: Env<'_>,
    ) -> Wssify {
        let mut command = Command::new(program);
        command.env("RUST_LOG", rust_log);
        let data_home = isolated(&mut command, env);
        let mut child = command
            .args(args)
            .stdin(stdin)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the wssify binary starts");
        let stderr = child.stderr.take().expect("stderr is piped");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, changed) = watch::channel(0usize);
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("WSSIFY_TEST_LOG").is_some() {
                    eprintln!("wssify| {line}");
                }
                let mut lines = sink.lock().unwrap();
                lines.push(line);
                tx.send_replace(lines.len());
            }
            // Closed stderr: wake waiters one last time.
            tx.send_modify(|_| {});
        });
        let mut w = Wssify {
            child,
            lines,
            changed,
            addr: "127.0.0.1:0".parse().unwrap(),
            data_home,
        };
        let line = w.wait_for_log("listening on ").await;
        let addr = line
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in: {line}"));
        w.addr = addr;
        w
    }

    /// Waits (bounded) for a log line containing `needle` and returns it.
    pub async fn wait_for_log(&mut self, needle: &str) -> String {
        self.wait_for_log_matching(|l| l.contains(needle))
            .await
            .unwrap_or_else(|| panic!("no log line with {needle:?}; log:\n{}", self.log()))
    }

    /// Waits (bounded by [`WAIT`]) for a line satisfying `pred`.
    pub async fn wait_for_log_matching(&mut self, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            self.changed.borrow_and_update();
            if let Some(line) = self.lines.lock().unwrap().iter().find(|l| pred(l)) {
                return Some(line.clone());
            }
            match tokio::time::timeout_at(deadline, self.changed.changed()).await {
                Ok(Ok(())) => {}
                // Timed out, or the process closed stderr: one last look.
                _ => {
                    return self.lines.lock().unwrap().iter().find(|l| pred(l)).cloned();
                }
            }
        }
    }

    /// Waits (bounded by [`WAIT`]) until `n` lines contain `needle`.
    pub async fn wait_for_lines(&mut self, needle: &str, n: usize) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            self.changed.borrow_and_update();
            let found = self.lines_with(needle);
            if found.len() >= n {
                return found;
            }
            let woke = tokio::time::timeout_at(deadline, self.changed.changed()).await;
            if !matches!(woke, Ok(Ok(()))) {
                let found = self.lines_with(needle);
                assert!(
                    found.len() >= n,
                    "{n} lines with {needle:?} expected; log:\n{}",
                    self.log()
                );
                return found;
            }
        }
    }

    /// Where the development CA is by default for this process.
    pub fn dev_ca_dir(&self) -> std::path::PathBuf {
        self.data_home.path().join("wssify/dev-ca")
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every line logged so far.
    pub fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Lines logged so far that contain `needle`.
    pub fn lines_with(&self, needle: &str) -> Vec<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }

    /// The development certificate's fingerprint from the startup log.
    pub async fn fingerprint(&mut self) -> String {
        let line = self.wait_for_log("fingerprint: ").await;
        line.rsplit("fingerprint: ")
            .next()
            .unwrap()
            .trim()
            .to_string()
    }

    /// Sends a signal by name (TERM, INT, ...) with the real `kill`.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits (bounded) for the process to exit and returns its exit code.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "wssify did not exit within {limit:?}; log:\n{}",
                self.log()
            );
            // The child gives no async readiness; its stderr closing does.
            let _ = tokio::time::timeout(Duration::from_millis(50), self.changed.changed()).await;
        }
    }
}

impl Drop for Wssify {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the binary to completion with `args` (it must exit by itself within
/// [`WAIT`]) and returns its exit code and stderr, then stdout.
pub fn run_to_exit(args: &[&str]) -> (i32, String) {
    run_to_exit_env(args, &[])
}

/// [`run_to_exit`] with environment changes.
pub fn run_to_exit_env(args: &[&str], env: Env<'_>) -> (i32, String) {
    let (code, stderr, stdout) = run_to_exit_split(args, env);
    (code, stderr + &stdout)
}

/// [`run_to_exit_env`], with stderr and stdout apart: (code, stderr, stdout).
pub fn run_to_exit_split(args: &[&str], env: Env<'_>) -> (i32, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wssify"));
    command.args(args);
    run_command_split(command, env)
}

/// Runs `command` (the binary, maybe wrapped, e.g. by
/// [`unprivileged_wssify`]) to completion, with a HOME of its own, and
/// returns its exit code and its stderr followed by its stdout.
pub fn run_command_to_exit(command: Command) -> (i32, String) {
    let (code, stderr, stdout) = run_command_split(command, &[]);
    (code, stderr + &stdout)
}

/// Runs `command` to completion (it must exit by itself within [`WAIT`])
/// with a HOME of its own: (code, stderr, stdout).
fn run_command_split(mut command: Command, env: Env<'_>) -> (i32, String, String) {
    let _data_home = isolated(&mut command, env);
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the wssify binary starts");
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            break;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("{command:?} did not exit within {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().expect("output");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

/// A command that runs the wssify binary without the privilege to bind
/// ports below 1024: directly when the tests run without it; as root,
/// through util-linux's `setpriv` as `nobody` (uid and gid 65534, no
/// groups; a non-root uid keeps no capabilities across exec). `Err` says
/// why this machine cannot show a refused low port, for the test to print.
pub fn unprivileged_wssify() -> Result<Command, String> {
    let bin = env!("CARGO_BIN_EXE_wssify");
    let start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse::<u16>().ok());
    if let Some(start) = start
        && start <= 80
    {
        return Err(format!(
            "net.ipv4.ip_unprivileged_port_start is {start}, so anyone may bind port 80"
        ));
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next().map(str::to_string))
    };
    let root = field("Uid:").as_deref() == Some("0");
    let can_bind = field("CapEff:")
        .and_then(|caps| u64::from_str_radix(&caps, 16).ok())
        .is_some_and(|caps| caps & (1 << 10) != 0);
    if !root && !can_bind {
        return Ok(Command::new(bin));
    }
    let drop_privileges = |command: &mut Command| {
        command.args(["--reuid=65534", "--regid=65534", "--clear-groups", bin]);
    };
    let mut probe = Command::new("setpriv");
    drop_privileges(&mut probe);
    match probe.arg("--version").output() {
        Ok(out) if out.status.success() => {
            let mut command = Command::new("setpriv");
            drop_privileges(&mut command);
            Ok(command)
        }
        Ok(out) => Err(format!(
            "the tests run with the privilege to bind low ports and `setpriv` could not run wssify as nobody: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(format!(
            "the tests run with the privilege to bind low ports and `setpriv` (util-linux) is not available to drop it ({e})"
        )),
    }
}

/// Accepts the connection wssify opens at start to check that the backend
/// is up (it closes without a byte), then the next one: a client's. For a
/// backend listening before wssify starts; wssify begins that check
/// before it accepts any client, so it always comes first.
pub async fn accept_past_check(listener: &TcpListener) -> TcpStream {
    let (check, _) = listener.accept().await.unwrap();
    drop(check);
    listener.accept().await.unwrap().0
}

/// A TCP echo backend: echoes until the client's EOF, then shuts its write
/// side down (so half-closes are visible end to end).
pub async fn echo_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// A plain ws:// echo server (text and binary messages come back; pings and
/// closes are answered by tungstenite), the kind of backend wssify is put
/// in front of.
pub async fn ws_echo_backend() -> SocketAddr {
    use futures_util::{SinkExt, StreamExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// The admin address from wssify's "admin:" startup line.
pub async fn admin_addr(w: &mut Wssify) -> SocketAddr {
    let line = w.wait_for_log("admin: http://").await;
    line.split("admin: http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in: {line}"))
}

/// `wssify --to <a new echo backend> --admin 127.0.0.1:0 <extra>`, and its
/// admin address.
pub async fn with_admin(extra: &[&str]) -> (Wssify, SocketAddr) {
    let backend = echo_backend().await.to_string();
    let mut args = vec!["--to", backend.as_str(), "--admin", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let mut w = Wssify::start(&args).await;
    let admin = admin_addr(&mut w).await;
    (w, admin)
}

/// One HTTP/1.1 request (to the admin port) on a fresh connection: the
/// status, the head and the body (the server closes after its answer).
pub async fn http_request(addr: SocketAddr, request: &str) -> (u16, String, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let raw = read_to_end(&mut tcp).await.unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, head.to_string(), body.to_string())
}

/// `GET path` through [`http_request`].
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    http_request(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: test\r\nAccept: */*\r\nConnection: close\r\n\r\n"),
    )
    .await
}

/// Every sample of a scrape, by `name{labels}` as written.
pub fn samples(body: &str) -> std::collections::HashMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// Sends a message through `tls` and reads the echo back.
pub async fn echo(tls: &mut TlsStream<TcpStream>) {
    let msg = b"through the terminator";
    tls.write_all(msg).await.expect("write to wssify");
    let mut back = [0u8; 22];
    tokio::time::timeout(WAIT, tls.read_exact(&mut back))
        .await
        .expect("echo within the bound")
        .expect("read the echo");
    assert_eq!(&back, msg);
}

/// A TLS session through wssify to the echo backend, checked with one echo.
pub async fn session(w: &Wssify, config: Arc<rustls::ClientConfig>) -> TlsStream<TcpStream> {
    let mut tls = tokio::time::timeout(WAIT, tls_connect(w.addr, config, "localhost"))
        .await
        .unwrap_or_else(|_| panic!("handshake within the bound; log:\n{}", w.log()))
        .expect("handshake");
    echo(&mut tls).await;
    tls
}

/// Makes sure the process has a crypto provider for test-side rustls configs.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A client config that trusts exactly the certificate with this SHA-256
/// fingerprint (colon-separated hex), the way a client pins a self-signed one.
pub fn pinned_client(fingerprint: &str) -> Arc<rustls::ClientConfig> {
    let verifier = pinned_verifier(fingerprint);
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth(),
    )
}

/// A verifier that accepts exactly the certificate with this fingerprint.
pub fn pinned_verifier(fingerprint: &str) -> Arc<dyn rustls::client::danger::ServerCertVerifier> {
    Arc::new(Pinned {
        accept: Accept::Only(fingerprint.to_string()),
        provider: provider(),
    })
}

/// A verifier that accepts any certificate (signatures are still checked),
/// so a test can look at what the server chose.
pub fn any_cert_verifier() -> Arc<dyn rustls::client::danger::ServerCertVerifier> {
    Arc::new(Pinned {
        accept: Accept::Any,
        provider: provider(),
    })
}

/// A verifier that refuses every certificate with `error`, as a client
/// that does not trust it does: rustls then sends the alert that matches
/// (unknown_ca for UnknownIssuer, bad_certificate for a wrong name).
pub fn refusing_verifier(
    error: rustls::CertificateError,
) -> Arc<dyn rustls::client::danger::ServerCertVerifier> {
    Arc::new(Pinned {
        accept: Accept::None(error),
        provider: provider(),
    })
}

/// A client config that trusts these CA certificates (DER).
pub fn trusting_client(roots: &[CertificateDer<'static>]) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(root.clone()).unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(store)
            .with_no_client_auth(),
    )
}

/// Connects and completes a TLS handshake for `name`.
pub async fn tls_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    name: &str,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(name.to_string()).unwrap();
    TlsConnector::from(config).connect(name, tcp).await
}

/// Connects to a wssify running the development certificate.
pub async fn dev_connect(w: &mut Wssify) -> TlsStream<TcpStream> {
    let fp = w.fingerprint().await;
    tls_connect(w.addr, pinned_client(&fp), "localhost")
        .await
        .expect("TLS handshake with the pinned development certificate")
}

/// SHA-256 of DER as `AB:CD:..`, as wssify logs it.
pub fn fingerprint(der: &[u8]) -> String {
    wssify::certs::fingerprint(der)
}

/// Standard base64 with padding, as wssify writes it.
pub fn base64(bytes: &[u8]) -> String {
    wssify::dev_ca::store::base64(bytes)
}

/// A PEM block with 64-character lines, as wssify writes it.
pub fn pem(label: &str, der: &[u8]) -> String {
    wssify::dev_ca::store::pem(label, der)
}

/// A test client's certificate check: signatures are always checked, the
/// certificate itself as `accept` says.
#[derive(Debug)]
struct Pinned {
    accept: Accept,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

/// Which server certificates a [`Pinned`] verifier takes.
#[derive(Debug)]
enum Accept {
    /// The one with this fingerprint.
    Only(String),
    /// Any.
    Any,
    /// None: each is refused with this error.
    None(rustls::CertificateError),
}

impl rustls::client::danger::ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let refused = match &self.accept {
            Accept::Any => None,
            Accept::Only(pinned) if fingerprint(end_entity) == *pinned => None,
            Accept::Only(_) => Some(rustls::CertificateError::UnknownIssuer),
            Accept::None(error) => Some(error.clone()),
        };
        match refused {
            None => Ok(rustls::client::danger::ServerCertVerified::assertion()),
            Some(error) => Err(rustls::Error::InvalidCertificate(error)),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
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
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Reads until EOF (bounded by [`WAIT`]); panics on timeout.
pub async fn read_to_end<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, r.read_to_end(&mut out))
        .await
        .expect("read_to_end timed out")?;
    Ok(out)
}

/// Makes sure a Debian package's program is installed, for tests that need
/// a real outside component (HAProxy reading the PROXY protocol, say):
/// installs `package` with `apt-get install -y` when `program` is missing
/// and the tests run as root; otherwise the test fails with one line naming
/// the command to run. Never a silent skip. Returns the program's path.
pub fn debian_package(package: &str, program: &str) -> std::path::PathBuf {
    let found = || {
        ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
            .iter()
            .map(|dir| std::path::Path::new(dir).join(program))
            .find(|path| path.is_file())
    };
    if let Some(path) = found() {
        return path;
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.trim_ascii() == b"0");
    assert!(
        root,
        "this test needs {program}: install it with `sudo apt-get install -y {package}`"
    );
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", package])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !install() {
        // The package lists may be missing (a fresh container).
        let _ = Command::new("apt-get")
            .arg("update")
            .stdout(Stdio::null())
            .status();
        install();
    }
    found().unwrap_or_else(|| {
        panic!("this test needs {program}: `apt-get install -y {package}` did not install it")
    })
}

/// A port free on 127.0.0.1 now, for a program that takes its port as
/// an argument (bound to port 0, then released).
///
/// Never the same port twice in one test binary: the kernel may hand a
/// port just released to the next bind, and two calls in a row would then
/// give one port to two programs.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port on 127.0.0.1");
        let mut given = GIVEN.lock().unwrap();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A listening socket whose accept queue is full and never drained: the
/// kernel drops further SYNs, so connecting to it hangs like a dead host.
pub fn black_hole() -> (socket2::Socket, Vec<std::net::TcpStream>) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    socket.listen(0).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            Ok(s) => fillers.push(s),
            Err(_) => return (socket, fillers),
        }
    }
    panic!("could not fill the accept queue of {addr}");
}

/// A blocking TCP connection for a hand-driven rustls client, with every
/// read bounded by [`WAIT`].
pub fn blocking_tcp(addr: std::net::SocketAddr) -> std::net::TcpStream {
    let tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    tcp.set_nodelay(true).unwrap();
    tcp
}

/// Everything a hand-driven rustls client has queued for the wire.
pub fn drain_tls(conn: &mut rustls::ClientConnection) -> Vec<u8> {
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

/// The first bytes a real rustls client sends (its ClientHello for
/// `localhost`).
pub fn client_hello() -> Vec<u8> {
    let config = trusting_client(&[]);
    let mut conn = rustls::ClientConnection::new(config, "localhost".try_into().unwrap()).unwrap();
    drain_tls(&mut conn)
}
