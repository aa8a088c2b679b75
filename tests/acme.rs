//! `--acme` against a real ACME server: Debian's `pebble` (Let's Encrypt's
//! RFC 8555 test server), whose validation authority dials wssify's own
//! listening port (`tlsPort`) for the TLS-ALPN-01 challenge. Pebble's HTTPS
//! certificate is made here (Debian ships none) and given to wssify with
//! `--acme-ca-root`; clients trust the issuing root Pebble makes at each
//! start, fetched from its management API.
//!
//! `WSSIFY_ACME_RETRY_MS` shortens wssify's back-off, so that no test waits
//! for minutes; every wait is on a log line or a port.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::ca::Ca;
use common::{Wssify, bounded, debian_package, free_port, tls_connect, trusting_client};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The overall bound of one test.
const TEST_LIMIT: Duration = Duration::from_secs(90);

/// A Pebble configured to validate on `tls_port`, not yet started.
struct Pebble {
    program: PathBuf,
    dir: tempfile::TempDir,
    config: PathBuf,
    api_port: u16,
    management_port: u16,
    /// The test CA that signed Pebble's HTTPS certificate.
    https_ca: Ca,
    child: Option<Child>,
}

impl Pebble {
    fn new(tls_port: u16) -> Pebble {
        // Once per test binary: the tests run at once, and two apt-get
        // runs at once would fight over dpkg's lock.
        static PROGRAM: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
        let program = PROGRAM
            .get_or_init(|| debian_package("pebble", "pebble"))
            .clone();
        let dir = tempfile::tempdir().unwrap();
        let https_ca = Ca::new("pebble https test CA");
        let leaf = https_ca.server(&["localhost", "127.0.0.1"]);
        std::fs::write(dir.path().join("cert.pem"), &leaf.cert_pem).unwrap();
        std::fs::write(dir.path().join("key.pem"), &leaf.key_pem).unwrap();
        std::fs::write(dir.path().join("root.pem"), https_ca.cert_pem()).unwrap();
        let (api_port, management_port) = (free_port(), free_port());
        let config = dir.path().join("pebble.json");
        let json = format!(
            r#"{{"pebble": {{
                "listenAddress": "127.0.0.1:{api_port}",
                "managementListenAddress": "127.0.0.1:{management_port}",
                "certificate": "{cert}",
                "privateKey": "{key}",
                "httpPort": {http_port},
                "tlsPort": {tls_port},
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false
            }}}}"#,
            cert = dir.path().join("cert.pem").display(),
            key = dir.path().join("key.pem").display(),
            http_port = free_port(),
        );
        std::fs::write(&config, json).unwrap();
        Pebble {
            program,
            dir,
            config,
            api_port,
            management_port,
            https_ca,
            child: None,
        }
    }

    /// The ACME directory URL.
    fn url(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.api_port)
    }

    /// The PEM file to give `--acme-ca-root`.
    fn https_root(&self) -> PathBuf {
        self.dir.path().join("root.pem")
    }

    /// Starts Pebble and waits until its API port accepts.
    async fn start(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("pebble.log")).unwrap();
        let child = Command::new(&self.program)
            .arg("-config")
            .arg(&self.config)
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_VA_ALWAYS_VALID", "0")
            // Every order validates again (no reuse of a valid authorization).
            .env("PEBBLE_AUTHZREUSE", "0")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("pebble starts");
        self.child = Some(child);
        for port in [self.api_port, self.management_port] {
            wait_for_port(port, &self.log_path()).await;
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("pebble.log")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The root Pebble issues under (new at each start), from its
    /// management API.
    async fn issuing_root(&self) -> CertificateDer<'static> {
        let config = trusting_client(&[self.https_ca.der()]);
        let addr = format!("127.0.0.1:{}", self.management_port)
            .parse()
            .unwrap();
        let mut tls = tls_connect(addr, config, "localhost")
            .await
            .expect("pebble's management API over TLS");
        tls.write_all(b"GET /roots/0 HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let mut response = Vec::new();
        let _ = tls.read_to_end(&mut response).await;
        let text = String::from_utf8_lossy(&response);
        let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
        CertificateDer::from_pem_slice(body.as_bytes())
            .unwrap_or_else(|e| panic!("no root in pebble's answer ({e}): {text}"))
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits (bounded) until something accepts on 127.0.0.1:`port`.
async fn wait_for_port(port: u16, log: &Path) {
    let deadline = tokio::time::Instant::now() + common::WAIT;
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing listens on {port}; pebble's log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// wssify on `port` (IPv4 and IPv6: Pebble may dial ::1 for localhost)
/// with `--acme localhost` from `pebble`, state in `dir`, and `extra`.
async fn wssify(pebble: &Pebble, port: u16, dir: &Path, backend: &str, extra: &[&str]) -> Wssify {
    wssify_env(pebble, port, dir, backend, extra, &[]).await
}

/// [`wssify`] with more environment.
async fn wssify_env(
    pebble: &Pebble,
    port: u16,
    dir: &Path,
    backend: &str,
    extra: &[&str],
    env: common::Env<'_>,
) -> Wssify {
    let port = port.to_string();
    let root = pebble.https_root().display().to_string();
    let dir = dir.display().to_string();
    let url = pebble.url();
    let mut args = vec![
        "--listen",
        &port,
        "--to",
        backend,
        "--acme",
        "localhost",
        "--acme-ca",
        &url,
        "--acme-ca-root",
        &root,
        "--acme-dir",
        &dir,
    ];
    args.extend_from_slice(extra);
    let mut env = env.to_vec();
    env.push(("WSSIFY_ACME_RETRY_MS", Some("300")));
    Wssify::start_raw_env(&args, &env).await
}

fn local(port: u16) -> std::net::SocketAddr {
    ([127, 0, 0, 1], port).into()
}

/// A client of `localhost` that trusts only Pebble's issuing root and
/// offers what browsers offer.
fn browser(root: &CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    let mut config = (*trusting_client(std::slice::from_ref(root))).clone();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Says `hello` through wssify to the echo backend and reads it back.
async fn echo(tls: &mut tokio_rustls::client::TlsStream<TcpStream>, hello: &[u8]) {
    tls.write_all(hello).await.unwrap();
    let mut back = vec![0; hello.len()];
    tls.read_exact(&mut back).await.unwrap();
    assert_eq!(back, hello);
}

/// The leaf wssify served on a connection.
fn served_leaf(tls: &tokio_rustls::client::TlsStream<TcpStream>) -> Vec<u8> {
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test]
async fn obtains_a_certificate_for_localhost_serves_it_and_a_restart_reuses_it() {
    bounded(TEST_LIMIT, async {
        let port = free_port();
        let mut pebble = Pebble::new(port);
        pebble.start().await;
        let state = tempfile::tempdir().unwrap();
        let backend = common::echo_backend().await.to_string();
        let mut w = wssify(
            &pebble,
            port,
            state.path(),
            &backend,
            &["--admin", "127.0.0.1:0"],
        )
        .await;
        let obtained = w
            .wait_for_log_matching(|l| l.contains("certificate for localhost obtained"))
            .await
            .unwrap_or_else(|| {
                panic!(
                    "not obtained; wssify:\n{}\npebble:\n{}",
                    w.log(),
                    pebble.log()
                )
            });
        assert!(obtained.contains("valid until"), "{obtained}");

        // The order and the renewal it plans are in the metrics.
        let admin = common::admin_addr(&mut w).await;
        let (_, _, metrics) = common::http_get(admin, "/metrics").await;
        assert!(
            metrics.contains("wssify_acme_orders_total{result=\"obtained\"} 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains("wssify_acme_next_order_seconds{name=\"localhost\"}"),
            "{metrics}"
        );

        // A client trusting only Pebble's root verifies the chain.
        let root = pebble.issuing_root().await;
        let mut tls = tls_connect(local(port), browser(&root), "localhost")
            .await
            .expect("the ACME certificate verifies against Pebble's root");
        echo(&mut tls, b"hello over an ACME certificate").await;
        let first = served_leaf(&tls);
        drop(tls);

        // Kept privately on disk.
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let ca_dir = std::fs::read_dir(state.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.join("account.json").exists())
            .expect("an account kept under --acme-dir");
        assert_eq!(mode(&ca_dir), 0o700);
        assert_eq!(mode(&ca_dir.join("certs")), 0o700);
        assert_eq!(mode(&ca_dir.join("account.json")), 0o600);
        assert_eq!(mode(&ca_dir.join("certs/localhost.pem")), 0o600);

        // --check judges the kept certificate as it judges files.
        drop(w);
        let port_text = port.to_string();
        let root_file = pebble.https_root().display().to_string();
        let (_, checked) = common::run_to_exit(&[
            "--check",
            "--listen",
            &port_text,
            "--to",
            &backend,
            "--acme",
            "localhost",
            "--acme-ca",
            &pebble.url(),
            "--acme-ca-root",
            &root_file,
            "--acme-dir",
            &state.path().display().to_string(),
        ]);
        assert!(
            checked.contains("certificate --acme localhost: localhost"),
            "{checked}"
        );

        // A restart serves the kept certificate and orders nothing.
        let mut again = wssify(&pebble, port, state.path(), &backend, &[]).await;
        let mut tls = tls_connect(local(port), browser(&root), "localhost")
            .await
            .expect("the kept certificate is served at once");
        echo(&mut tls, b"after a restart").await;
        assert_eq!(served_leaf(&tls), first, "the same certificate");
        again.wait_for_log("ACME: certificates for localhost").await;
        assert!(
            again.lines_with("ordering a certificate").is_empty(),
            "a restart with a valid certificate ordered again:\n{}",
            again.log()
        );
    })
    .await;
}

#[tokio::test]
async fn a_forced_renewal_swaps_the_certificate_without_touching_open_connections() {
    bounded(TEST_LIMIT, async {
        let port = free_port();
        let mut pebble = Pebble::new(port);
        pebble.start().await;
        let state = tempfile::tempdir().unwrap();
        // A backend that counts who reaches it: validations never must.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = listener.local_addr().unwrap().to_string();
        let reached = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = reached.clone();
        tokio::spawn(async move {
            // wssify's own check at start comes first and is not a client.
            let _ = listener.accept().await;
            while let Ok((mut stream, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let (mut r, mut w) = stream.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        // Pebble's certificates last years: a renewal due at once renews
        // each time the pace allows (WSSIFY_ACME_RETRY_MS).
        let mut w = wssify_env(
            &pebble,
            port,
            state.path(),
            &backend,
            &[],
            &[("WSSIFY_ACME_RENEW_AFTER_MS", Some("0"))],
        )
        .await;
        w.wait_for_log("certificate for localhost obtained").await;
        let root = pebble.issuing_root().await;
        let mut open = tls_connect(local(port), browser(&root), "localhost")
            .await
            .unwrap();
        echo(&mut open, b"before the renewal").await;
        let before = served_leaf(&open);

        // Browsers keep connecting while renewals validate: each is served
        // (never no_application_protocol, never the challenge certificate).
        let mut clients = 1;
        let mut renewed = None;
        while renewed.is_none() || w.lines_with("certificate for localhost obtained").len() < 3 {
            let mut tls = tls_connect(local(port), browser(&root), "localhost")
                .await
                .unwrap_or_else(|e| panic!("a browser during renewals: {e}\n{}", w.log()));
            echo(&mut tls, b"during renewals").await;
            clients += 1;
            let leaf = served_leaf(&tls);
            if leaf != before {
                renewed = Some(leaf);
            }
        }
        // The connection opened before is untouched.
        echo(&mut open, b"after the renewal, same connection").await;
        assert_eq!(served_leaf(&open), before);
        let validations = w.lines_with("ACME TLS-ALPN-01 validation answered").len();
        assert!(validations >= 2, "validations: {validations}\n{}", w.log());
        assert_eq!(
            reached.load(std::sync::atomic::Ordering::SeqCst),
            clients,
            "only clients reach the backend, never a validation"
        );
        assert!(w.lines_with("reloaded (ACME)").len() >= 2, "{}", w.log());
    })
    .await;
}

#[tokio::test]
async fn with_the_ca_down_at_start_other_names_are_served_and_the_name_comes_once_it_is_up() {
    bounded(TEST_LIMIT, async {
        let port = free_port();
        let mut pebble = Pebble::new(port);
        let state = tempfile::tempdir().unwrap();
        let files = tempfile::tempdir().unwrap();
        let other_ca = Ca::new("other names");
        let (cert, key) = other_ca
            .server(&["other.test"])
            .write(files.path(), "other");
        let backend = common::echo_backend().await.to_string();
        let (cert, key) = (cert.display().to_string(), key.display().to_string());
        let mut w = wssify(
            &pebble,
            port,
            state.path(),
            &backend,
            &["--cert", &cert, "--key", &key],
        )
        .await;
        // The CA cannot be reached: said, with the next attempt.
        let failed = w.wait_for_log("no certificate for localhost yet").await;
        assert!(
            failed.contains("cannot talk to the ACME server"),
            "{failed}"
        );
        assert!(failed.contains("next attempt at"), "{failed}");

        // Other names are served meanwhile.
        let mut tls = tls_connect(
            local(port),
            trusting_client(&[other_ca.der()]),
            "other.test",
        )
        .await
        .expect("other names are served while ACME waits");
        echo(&mut tls, b"other name").await;
        // The waiting name is refused before any handshake, saying why
        // (and when the next attempt is, once the first one has failed:
        // before that, the line says an order is under way).
        w.wait_for_lines("ACME: no certificate for localhost yet", 1)
            .await;
        let refused =
            tls_connect(local(port), trusting_client(&[other_ca.der()]), "localhost").await;
        assert!(
            refused.is_err(),
            "a waiting name must not be served another certificate"
        );
        let line = w
            .wait_for_log("no certificate for localhost yet (--acme)")
            .await;
        assert!(line.contains("next attempt at"), "{line}");

        // Retried with back-off while it is down, then obtained once up.
        w.wait_for_lines("ACME: no certificate for localhost yet", 2)
            .await;
        pebble.start().await;
        w.wait_for_log_matching(|l| l.contains("certificate for localhost obtained"))
            .await
            .unwrap_or_else(|| {
                panic!(
                    "not obtained once up; wssify:\n{}\npebble:\n{}",
                    w.log(),
                    pebble.log()
                )
            });
        let root = pebble.issuing_root().await;
        let mut tls = tls_connect(local(port), browser(&root), "localhost")
            .await
            .expect("served once obtained");
        echo(&mut tls, b"localhost at last").await;
    })
    .await;
}

#[tokio::test]
async fn two_processes_sharing_the_directory_order_once() {
    bounded(TEST_LIMIT, async {
        let port = free_port();
        let other_port = free_port();
        let mut pebble = Pebble::new(port);
        pebble.start().await;
        let state = tempfile::tempdir().unwrap();
        let backend = common::echo_backend().await.to_string();
        // Both at once; Pebble validates on the first one's port, so
        // whichever orders, the other answers from the shared challenge.
        let (mut a, mut b) = tokio::join!(
            wssify(&pebble, port, state.path(), &backend, &[]),
            wssify(&pebble, other_port, state.path(), &backend, &[]),
        );
        for w in [&mut a, &mut b] {
            w.wait_for_log_matching(|l| l.contains("--acme localhost: "))
                .await
                .unwrap_or_else(|| {
                    panic!(
                        "not served; wssify:\n{}\npebble:\n{}",
                        w.log(),
                        pebble.log()
                    )
                });
        }
        let orders = a.lines_with("ordering a certificate").len()
            + b.lines_with("ordering a certificate").len();
        assert_eq!(orders, 1, "A:\n{}\nB:\n{}", a.log(), b.log());
        let root = pebble.issuing_root().await;
        let mut leaves = Vec::new();
        for p in [port, other_port] {
            let mut tls = tls_connect(local(p), browser(&root), "localhost")
                .await
                .expect("both serve the one certificate");
            echo(&mut tls, b"replica").await;
            leaves.push(served_leaf(&tls));
        }
        assert_eq!(leaves[0], leaves[1]);
    })
    .await;
}

#[tokio::test]
async fn the_replica_the_validation_reaches_answers_for_the_one_that_ordered() {
    bounded(TEST_LIMIT, async {
        // A is on the port Pebble validates on, but orders nothing (its CA
        // is down); B orders from Pebble on another port. The validation
        // reaches A, which answers from the challenge B shared in the
        // directory, as replicas behind one load balancer must.
        let port = free_port();
        let other_port = free_port();
        let mut pebble = Pebble::new(port);
        pebble.start().await;
        let down = Pebble::new(port);
        let state = tempfile::tempdir().unwrap();
        let backend = common::echo_backend().await.to_string();
        let mut a = wssify(&down, port, state.path(), &backend, &[]).await;
        a.wait_for_log("cannot talk to the ACME server").await;
        let mut b = wssify(&pebble, other_port, state.path(), &backend, &[]).await;
        b.wait_for_log_matching(|l| l.contains("certificate for localhost obtained"))
            .await
            .unwrap_or_else(|| {
                panic!(
                    "B:\n{}\nA:\n{}\npebble:\n{}",
                    b.log(),
                    a.log(),
                    pebble.log()
                )
            });
        a.wait_for_log("ACME TLS-ALPN-01 validation answered: challenge certificate sent")
            .await;
        assert!(
            a.lines_with("ordering a certificate").is_empty(),
            "{}",
            a.log()
        );
        assert!(
            b.lines_with("validation answered").is_empty(),
            "{}",
            b.log()
        );
    })
    .await;
}

#[tokio::test]
async fn a_validation_that_cannot_reach_wssify_says_port_443_must() {
    bounded(TEST_LIMIT, async {
        // Pebble validates on a port nothing listens on, as the CA would
        // when port 443 does not reach wssify.
        let port = free_port();
        let mut pebble = Pebble::new(free_port());
        pebble.start().await;
        let state = tempfile::tempdir().unwrap();
        let backend = common::echo_backend().await.to_string();
        let mut w = wssify(&pebble, port, state.path(), &backend, &[]).await;
        let line = w
            .wait_for_log("ACME: no certificate for localhost yet")
            .await;
        assert!(
            line.contains("the CA could not validate the name over TLS")
                && line
                    .contains("port 443 of the name's address must reach wssify's --listen port")
                && line.contains("next attempt at"),
            "{line}"
        );
        assert_eq!(line.lines().count(), 1);
    })
    .await;
}

#[test]
fn acme_flag_mistakes_get_one_line_each() {
    let cases: &[(&[&str], &str)] = &[
        (&["--acme", "*.example.com"], "DNS-01"),
        (&["--acme", "192.0.2.1"], "IP address"),
        (&["--acme", "bad_name.example"], "not a DNS name"),
        (&["--acme-email", "ops@example.com"], "needs --acme NAME"),
        (
            &[
                "--acme",
                "a.example",
                "--acme-staging",
                "--acme-ca",
                "https://ca.test/dir",
            ],
            "keep one",
        ),
        (&["--acme", "a.example", "--acme-ca", "ca.test"], "https://"),
        (&["--acme", "a.example", "--acme-email", "nobody"], "e-mail"),
        (
            &["--acme", "a.example", "--acme-ca-root", "/nonexistent.pem"],
            "no such file",
        ),
        (
            &["--acme", "a.example", "--self-signed"],
            "drop --self-signed or --acme",
        ),
    ];
    for (flags, expected) in cases {
        let mut args = vec!["--listen", "0", "--to", "127.0.0.1:9"];
        args.extend_from_slice(flags);
        let (code, stderr) = common::run_to_exit(&args);
        assert_eq!(code, 2, "{flags:?}: {stderr}");
        assert!(stderr.contains(expected), "{flags:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{flags:?}: {stderr}");
    }
    // A directory that cannot be made stops the start (exit 1), saying so.
    let (code, stderr) = common::run_to_exit(&[
        "--listen",
        "127.0.0.1:0",
        "--to",
        "127.0.0.1:9",
        "--acme",
        "a.example",
        "--acme-dir",
        "/proc/wssify-acme",
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("--acme-dir: cannot create")
                && l.contains("give a directory wssify can write with --acme-dir")),
        "{stderr}"
    );
}
