//! The development CA end to end: the real binary makes it once, keeps it
//! under the user's data directory with private modes, signs each start's
//! certificate with it, and real TLS clients that trust it once verify
//! every later start. Also: two starts at once, the in-memory fallback,
//! files gone bad, and `--dev-ca show` / `remove` / `install`.
//!
//! Every test keeps the CA in a temporary directory (the helpers give each
//! process its own HOME and XDG_DATA_HOME), never in the real home.

mod common;
use common::*;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The development names, as a client asks for them.
const NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// The CA certificate in `dir/ca.pem`.
fn ca_cert(dir: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(dir.join("ca.pem")).expect("a CA certificate in ca.pem")
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Verifies the served certificate for every development name trusting
/// only `ca`, sends bytes through, and returns the chain served.
async fn verify_with(w: &Wssify, ca: &CertificateDer<'static>) -> Vec<CertificateDer<'static>> {
    let config = trusting_client(std::slice::from_ref(ca));
    let mut chain = Vec::new();
    for name in NAMES {
        let mut tls = tls_connect(w.addr, config.clone(), name)
            .await
            .unwrap_or_else(|e| panic!("{name}: not verified trusting the CA: {e}\n{}", w.log()));
        tls.write_all(b"ping").await.unwrap();
        let mut back = [0u8; 4];
        tls.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"ping");
        chain = tls.get_ref().1.peer_certificates().unwrap().to_vec();
    }
    chain
}

/// Starts wssify in front of an echo backend with `args`.
async fn start(args: &[&str]) -> Wssify {
    let backend = echo_backend().await.to_string();
    let mut all = vec!["--to", &backend];
    all.extend_from_slice(args);
    Wssify::start(&all).await
}

// ---------------------------------------------------------------------------
// Trust once, across restarts
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_client_trusting_the_ca_from_the_first_start_verifies_the_second() {
    bounded(WAIT * 3, async {
        let home = tempfile::tempdir().unwrap();
        let dir = home.path().join("dev-ca");

        let mut first = start(&["--dev-ca-dir", p(&dir)]).await;
        first.wait_for_log("made a development CA in").await;
        // What the user trusts after the first start: the CA file.
        let trusted = ca_cert(&dir);
        let first_chain = verify_with(&first, &trusted).await;
        drop(first);

        let mut second = start(&["--dev-ca-dir", p(&dir)]).await;
        let second_chain = verify_with(&second, &trusted).await;
        assert!(
            second.lines_with("made a development CA").is_empty(),
            "the second start reuses the CA:\n{}",
            second.log()
        );
        let line = second.wait_for_log("listening on ").await;
        assert!(
            line.contains(
                "certificate: development certificate for localhost, 127.0.0.1, ::1, signed by the development CA"
            ),
            "{line}"
        );

        // A new certificate (and key) at each start, the same CA sent after it.
        assert_ne!(first_chain[0], second_chain[0]);
        assert_eq!(first_chain.len(), 2);
        assert_eq!(second_chain[1], trusted);
        assert_eq!(ca_cert(&dir), trusted, "the CA file is unchanged");

        // An unrelated root is still refused: trust comes from the CA.
        let other = common::ca::Ca::new("unrelated");
        let refused = tls_connect(second.addr, trusting_client(&[other.der()]), "localhost").await;
        assert!(refused.is_err(), "an unrelated CA must not verify it");
    })
    .await;
}

#[tokio::test]
async fn the_default_place_is_private_and_under_the_users_data_directory() {
    bounded(WAIT * 2, async {
        // XDG_DATA_HOME set (by the helper): $XDG_DATA_HOME/wssify/dev-ca.
        let mut w = start(&[]).await;
        let dir = w.dev_ca_dir();
        let made = w.wait_for_log("made a development CA in").await;
        assert!(made.contains(p(&dir)), "{made}");
        assert_eq!(mode(&dir), 0o700, "the directory is private");
        assert_eq!(mode(&dir.join("ca.key")), 0o600, "the key is private");
        assert_eq!(mode(&dir.join("ca.pem")) & 0o600, 0o600);
        verify_with(&w, &ca_cert(&dir)).await;
        let entries: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            !entries.iter().any(|e| e.contains("tmp")),
            "no temporary file left: {entries:?}"
        );

        // The start-up lines: what is served, signed by what, and the
        // commands for the usual clients with this port.
        let warn = w.wait_for_log("no --cert/--key given").await;
        assert!(warn.contains("WARN"), "{warn}");
        assert!(warn.contains("For development only"), "{warn}");
        assert!(
            warn.contains(&format!("{}/ca.pem", dir.display())),
            "{warn}"
        );
        let trust = w.wait_for_log("trust the development CA once").await;
        let ca = format!("{}/ca.pem", dir.display());
        for needle in [
            format!("curl --cacert {ca} https://localhost:{}/", w.addr.port()),
            format!("NODE_EXTRA_CA_CERTS={ca} node"),
            format!("SSL_CERT_FILE={ca} python3"),
            "certutil -d sql:\"$HOME\"/.pki/nssdb -A -t C,, -n 'wssify development CA ".to_string(),
            "--dev-ca show".to_string(),
        ] {
            assert!(trust.contains(&needle), "{needle:?} in: {trust}");
        }

        // Without XDG_DATA_HOME: $HOME/.local/share/wssify/dev-ca.
        let w = Wssify::start_raw_env(
            &["--listen", "127.0.0.1:0", "--to", "127.0.0.1:9"],
            &[("XDG_DATA_HOME", None)],
        )
        .await;
        let dir = w.data_home.path().join(".local/share/wssify/dev-ca");
        assert_eq!(mode(&dir.join("ca.key")), 0o600, "{}", w.log());
    })
    .await;
}

#[tokio::test]
async fn two_starts_at_once_make_one_ca() {
    bounded(WAIT * 2, async {
        let home = tempfile::tempdir().unwrap();
        let dir = home.path().join("dev-ca");
        let backend = echo_backend().await.to_string();
        let args = ["--to", &backend, "--dev-ca-dir", p(&dir)];
        let (a, b) = tokio::join!(Wssify::start(&args), Wssify::start(&args));
        let made = a.lines_with("made a development CA").len()
            + b.lines_with("made a development CA").len();
        assert_eq!(
            made,
            1,
            "exactly one of them made it:\n{}\n--\n{}",
            a.log(),
            b.log()
        );
        let ca = ca_cert(&dir);
        assert_eq!(verify_with(&a, &ca).await[1], ca);
        assert_eq!(verify_with(&b, &ca).await[1], ca);
    })
    .await;
}

// ---------------------------------------------------------------------------
// In memory: asked for, or where nothing can be written
// ---------------------------------------------------------------------------

#[tokio::test]
async fn self_signed_serves_from_memory_and_writes_nothing() {
    bounded(WAIT, async {
        let mut w = start(&["--self-signed"]).await;
        let line = w.wait_for_log("listening on ").await;
        assert!(
            line.contains("certificate: self-signed for localhost, 127.0.0.1, ::1"),
            "{line}"
        );
        let warn = w.wait_for_log("made in memory").await;
        assert!(warn.contains("For development only"), "{warn}");
        assert!(w.lines_with("no development CA").is_empty(), "{}", w.log());
        // Pinned by its logged fingerprint, as before.
        let mut tls = dev_connect(&mut w).await;
        tls.write_all(b"x").await.unwrap();
        let entries = std::fs::read_dir(w.data_home.path()).unwrap().count();
        assert_eq!(entries, 0, "--self-signed writes nothing");
    })
    .await;
}

#[tokio::test]
async fn where_the_default_place_cannot_be_written_it_falls_back_to_memory_and_says_why() {
    bounded(WAIT * 2, async {
        // XDG_DATA_HOME below a regular file: nothing can be created there.
        let home = tempfile::tempdir().unwrap();
        let file = home.path().join("a-file");
        std::fs::write(&file, "not a directory").unwrap();
        let xdg = file.join("share");
        let backend = echo_backend().await.to_string();
        let args = ["--listen", "127.0.0.1:0", "--to", &backend];
        let mut w = Wssify::start_raw_env(&args, &[("XDG_DATA_HOME", Some(p(&xdg)))]).await;
        let warn = w.wait_for_log("no development CA").await;
        assert!(warn.contains("WARN"), "{warn}");
        assert!(
            warn.contains(&format!("cannot create {}/wssify/dev-ca", xdg.display())),
            "{warn}"
        );
        assert!(warn.contains("Not a directory"), "{warn}");
        assert!(
            warn.contains("serving a self-signed certificate made in memory instead"),
            "{warn}"
        );
        assert!(warn.contains("--dev-ca-dir"), "{warn}");
        assert!(warn.contains("--self-signed"), "{warn}");
        assert_eq!(w.lines_with("no development CA").len(), 1, "one line");
        let line = w.wait_for_log("listening on ").await;
        assert!(line.contains("certificate: self-signed for"), "{line}");
        dev_connect(&mut w).await;

        // No HOME and no XDG_DATA_HOME at all (a bare container).
        let mut w = Wssify::start_raw_env(&args, &[("XDG_DATA_HOME", None), ("HOME", None)]).await;
        let warn = w.wait_for_log("no development CA").await;
        assert!(
            warn.contains("neither HOME nor XDG_DATA_HOME is set"),
            "{warn}"
        );
        dev_connect(&mut w).await;
    })
    .await;
}

#[test]
fn a_dev_ca_dir_that_cannot_be_used_stops_the_start() {
    let home = tempfile::tempdir().unwrap();
    let file = home.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let dir = file.join("dev-ca");
    let (code, out) = run_to_exit(&[
        "--listen",
        "127.0.0.1:0",
        "--to",
        "127.0.0.1:9",
        "--dev-ca-dir",
        p(&dir),
    ]);
    assert_eq!(code, 1, "{out}");
    let error = one_error_line(&out);
    assert!(
        error.starts_with(&format!(
            "wssify: --dev-ca-dir {}: cannot create",
            dir.display()
        )),
        "{error}"
    );
    assert!(error.contains("--self-signed"), "{error}");
}

/// The single `wssify: ` line of a failed start (log lines start with `[`).
fn one_error_line(out: &str) -> String {
    let errors: Vec<&str> = out.lines().filter(|l| l.starts_with("wssify: ")).collect();
    assert_eq!(errors.len(), 1, "one error line:\n{out}");
    assert!(!out.contains("panicked"), "{out}");
    errors[0].to_string()
}

// ---------------------------------------------------------------------------
// CA files gone bad
// ---------------------------------------------------------------------------

/// A directory holding a good CA made by wssify itself, and its files.
fn made_ca() -> (tempfile::TempDir, PathBuf) {
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join("dev-ca");
    let (code, out) = run_to_exit(&["--dev-ca", "show", "--dev-ca-dir", p(&dir)]);
    assert_eq!(code, 0, "{out}");
    (home, dir)
}

fn check_in(dir: &Path) -> (i32, String) {
    run_to_exit(&[
        "--listen",
        "127.0.0.1:0",
        "--to",
        "127.0.0.1:9",
        "--dev-ca-dir",
        p(dir),
        "--check",
    ])
}

#[test]
fn a_ca_key_others_can_read_is_refused_with_what_to_do() {
    let (_home, dir) = made_ca();
    let key = dir.join("ca.key");
    let before = std::fs::read(&key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, out) = run_to_exit(&[
        "--listen",
        "127.0.0.1:0",
        "--to",
        "127.0.0.1:9",
        "--dev-ca-dir",
        p(&dir),
    ]);
    assert_eq!(code, 1, "{out}");
    let error = one_error_line(&out);
    for needle in [
        &format!(
            "the development CA key {} can be read or changed by others (mode 0644)",
            key.display()
        ),
        "--dev-ca remove",
        &format!("chmod 600 {}", key.display()),
    ] {
        assert!(error.contains(needle), "{needle:?} in {error}");
    }
    assert_eq!(
        std::fs::read(&key).unwrap(),
        before,
        "the key is left alone"
    );
    // --check says the same, as an error.
    let (code, out) = check_in(&dir);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("error: the development CA key"), "{out}");

    // A directory others can write is refused too.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (code, out) = run_to_exit(&["--dev-ca", "show", "--dev-ca-dir", p(&dir)]);
    assert_eq!(code, 1, "{out}");
    assert!(
        one_error_line(&out).contains("can be written by others (mode 0777)"),
        "{out}"
    );
}

/// Parameters of a CA as wssify makes them (its subject, and its name
/// constraints when `constrained`), for CAs made here by hand.
fn wssify_like_params(constrained: bool) -> rcgen::CertificateParams {
    use rcgen::{CidrSubnet, DnType, GeneralSubtree, NameConstraints};
    let mut params = common::ca::ca_params("wssify development CA (test)");
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "wssify development CA");
    params
        .distinguished_name
        .push(DnType::CommonName, "wssify development CA (test)");
    if constrained {
        params.name_constraints = Some(NameConstraints {
            permitted_subtrees: vec![
                GeneralSubtree::DnsName("localhost".to_string()),
                GeneralSubtree::IpAddress(CidrSubnet::from_v4_prefix([127, 0, 0, 0], 8)),
                GeneralSubtree::IpAddress(CidrSubnet::from_v6_prefix(
                    std::net::Ipv6Addr::LOCALHOST.octets(),
                    128,
                )),
            ],
            excluded_subtrees: Vec::new(),
        });
    }
    params
}

/// Writes a CA made from `params` into `dir` (mode 0700) as ca.pem and
/// ca.key (mode 0600), as someone might by hand.
fn place_ca(dir: &Path, params: &rcgen::CertificateParams) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.join("ca.pem"), cert.pem()).unwrap();
    let key_path = dir.join("ca.key");
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Every file in `dir` with its bytes, to show nothing was changed.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name() != ".lock")
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap_or_default(),
            )
        })
        .collect();
    files.sort();
    files
}

/// Runs start, `--check`, show, remove and install on `dir` and expects
/// each to refuse with a line containing `needle`, changing nothing.
fn refused_everywhere(dir: &Path, needle: &str) {
    let before = snapshot(dir);
    let start = [
        "--listen",
        "127.0.0.1:0",
        "--to",
        "127.0.0.1:9",
        "--dev-ca-dir",
        p(dir),
    ];
    for args in [
        &start[..],
        &["--dev-ca", "show", "--dev-ca-dir", p(dir)],
        &["--dev-ca", "remove", "--dev-ca-dir", p(dir)],
        &["--dev-ca", "install", "--dev-ca-dir", p(dir)],
    ] {
        let (code, out) = run_to_exit(args);
        assert_eq!(code, 1, "{args:?}: {out}");
        let error = one_error_line(&out);
        assert!(error.contains(needle), "{args:?}: {needle:?} in {error}");
        assert!(!error.contains("--dev-ca remove"), "{args:?}: {error}");
        assert_eq!(snapshot(dir), before, "{args:?} changed nothing");
    }
    let (code, out) = check_in(dir);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(needle), "{out}");
    assert_eq!(snapshot(dir), before, "--check changed nothing");
}

#[test]
fn a_ca_wssify_did_not_make_is_never_used_moved_or_deleted() {
    // A corporate root put there by hand.
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join("dev-ca");
    place_ca(&dir, &common::ca::ca_params("CorpRootCA"));
    let pem = dir.join("ca.pem");
    refused_everywhere(
        &dir,
        &format!(
            "{} is not a wssify development CA (its subject is not wssify's); nothing was changed",
            pem.display()
        ),
    );
    // Its key readable by others: still named as not wssify's, and
    // nobody is told to run --dev-ca remove on it.
    std::fs::set_permissions(dir.join("ca.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    refused_everywhere(&dir, "is not a wssify development CA");

    // wssify's subject without the name constraints: not served, not installed.
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join("dev-ca");
    place_ca(&dir, &wssify_like_params(false));
    refused_everywhere(
        &dir,
        "is not a wssify development CA (it is not constrained to exactly localhost, 127.0.0.0/8 and ::1)",
    );

    // Garbage for the certificate: nothing says wssify wrote it.
    let (_h, dir) = made_ca();
    std::fs::write(dir.join("ca.pem"), "garbage").unwrap();
    refused_everywhere(&dir, "(it holds no PEM certificate); nothing was changed");
}

/// Starts wssify on `dir` whose CA was spoiled, expects the one warning
/// naming `why`, a new CA that verifies, and the old files kept.
async fn replaced(dir: &Path, why: &str) {
    let old = std::fs::read_dir(dir).unwrap().count();
    let mut w = start(&["--dev-ca-dir", p(dir)]).await;
    let warn = w.wait_for_log("could not be used").await;
    assert!(warn.contains("WARN"), "{warn}");
    assert!(warn.contains(why), "{why:?} in {warn}");
    assert!(
        warn.contains("clients that trusted the old one must trust the new one"),
        "{warn}"
    );
    verify_with(&w, &ca_cert(dir)).await;
    let kept = std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains(".old-")
        })
        .count();
    assert!(kept >= 1 && old > 0, "the old files are kept: {}", w.log());
    assert_eq!(mode(&dir.join("ca.key")), 0o600);
}

#[tokio::test]
async fn a_broken_ca_is_replaced_with_one_line_and_kept_aside() {
    bounded(WAIT * 4, async {
        // Half written: a key without its certificate.
        let (_h2, dir) = made_ca();
        std::fs::remove_file(dir.join("ca.pem")).unwrap();
        replaced(&dir, "ca.key without ca.pem").await;

        // A key that does not match the certificate (another CA's key).
        let (_h3, dir) = made_ca();
        let (_h4, other) = made_ca();
        std::fs::copy(other.join("ca.key"), dir.join("ca.key")).unwrap();
        replaced(&dir, "ca.key does not match ca.pem").await;
    })
    .await;
}

#[tokio::test]
async fn an_expired_ca_is_replaced() {
    bounded(WAIT * 2, async {
        let home = tempfile::tempdir().unwrap();
        let dir = home.path().join("dev-ca");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let mut params = wssify_like_params(true);
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        place_ca(&dir, &params);
        replaced(&dir, "it expired on 2021-01-01").await;
    })
    .await;
}

// ---------------------------------------------------------------------------
// --dev-ca show, remove, install, uninstall
// ---------------------------------------------------------------------------

/// Base64 of SHA-256 of the CA certificate's SubjectPublicKeyInfo,
/// computed here with x509-parser and aws-lc-rs.
fn spki_sha256(ca: &CertificateDer<'_>) -> String {
    let (_, parsed) = x509_parser::parse_x509_certificate(ca).unwrap();
    let digest = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        parsed.tbs_certificate.subject_pki.raw,
    );
    base64(digest.as_ref())
}

#[tokio::test]
async fn dev_ca_show_prints_where_and_how_and_remove_deletes_it() {
    bounded(WAIT * 2, async {
        let home = tempfile::tempdir().unwrap();
        let dir = home.path().join("dev-ca");
        let show = ["--dev-ca", "show", "--dev-ca-dir", p(&dir)];

        // Made on first use, so it can be trusted before the first start.
        let (code, stderr, stdout) = run_to_exit_split(&show, &[]);
        assert_eq!(code, 0, "{stderr}{stdout}");
        assert!(stderr.is_empty(), "{stderr}");
        assert!(stdout.starts_with("Made a new development CA."), "{stdout}");
        let ca = ca_cert(&dir);
        let ca_path = format!("{}/ca.pem", dir.display());
        let spki = spki_sha256(&ca);
        for needle in [
            format!("certificate   {ca_path}"),
            format!("private key   {}/ca.key", dir.display()),
            "signs only    localhost, *.localhost, 127.0.0.0/8, ::1 (X.509 name constraints)"
                .to_string(),
            format!("SHA-256       {}", fingerprint(&ca)),
            format!("SPKI SHA-256  {spki} (base64)"),
            format!("curl --cacert {ca_path} https://localhost:9300/"),
            format!("NODE_EXTRA_CA_CERTS={ca_path} node app.js"),
            format!("SSL_CERT_FILE={ca_path} python3 app.py"),
            format!("ssl.create_default_context(cafile=\"{ca_path}\")"),
            format!("REQUESTS_CA_BUNDLE={ca_path}"),
            "certutil -d sql:\"$HOME\"/.pki/nssdb -A -t C,, -n 'wssify development CA ".to_string(),
            format!("--user-data-dir=\"$HOME\"/.config/wssify-chrome --ignore-certificate-errors-spki-list={spki} https://localhost:9300/"),
            "-d sql:\"$db\" -A -t C,,".to_string(),
            "security.enterprise_roots.enabled".to_string(),
            format!("\"Certificates\": {{\"Install\": [\"{ca_path}\"]}}"),
            format!("sudo cp {ca_path} /usr/local/share/ca-certificates/wssify-dev-ca.crt && sudo update-ca-certificates"),
            format!("sudo cp {ca_path} /etc/pki/ca-trust/source/anchors/wssify-dev-ca.pem && sudo update-ca-trust"),
            format!("sudo security add-trusted-cert -d -r trustRoot -k /Library/Keychains/System.keychain {ca_path}"),
            format!("--dev-ca install --dev-ca-dir {}", dir.display()),
            format!("openssl s_client -connect localhost:9300 -CAfile {ca_path} -verify_hostname localhost"),
            format!("--dev-ca remove --dev-ca-dir {}", dir.display()),
        ] {
            assert!(stdout.contains(&needle), "{needle:?} in:\n{stdout}");
        }

        // Chrome's SPKI flag matches keys the server sends: the CA is sent.
        let backend = echo_backend().await.to_string();
        let w = Wssify::start(&["--to", &backend, "--dev-ca-dir", p(&dir)]).await;
        let chain = verify_with(&w, &ca).await;
        assert_eq!(spki_sha256(&chain[1]), spki, "the SPKI printed is the one sent");
        drop(w);

        // Shown again: the same CA, nothing made.
        let (code, again) = run_to_exit(&show);
        assert_eq!(code, 0, "{again}");
        assert!(again.starts_with("wssify development CA"), "{again}");
        assert_eq!(ca_cert(&dir), ca);

        // Removed: the files and the directory; then nothing to remove.
        let remove = ["--dev-ca", "remove", "--dev-ca-dir", p(&dir)];
        let (code, out) = run_to_exit(&remove);
        assert_eq!(code, 0, "{out}");
        assert!(out.starts_with(&format!("removed the development CA in {}", dir.display())), "{out}");
        assert!(out.contains(&fingerprint(&ca)), "{out}");
        assert!(out.contains("certutil -d sql:\"$HOME\"/.pki/nssdb -D -n 'wssify development CA "), "{out}");
        assert!(out.contains("--dev-ca uninstall"), "{out}");
        // The lock file stays (a start waiting on it must lock the file
        // the next one locks), so the directory holds only it.
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, [".lock"], "only the lock file is left");
        assert!(
            out.contains("Clients that trusted it still trust it until it is removed from each of them"),
            "{out}"
        );
        let (code, out) = run_to_exit(&remove);
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("nothing to remove"), "{out}");
    })
    .await;
}

#[test]
fn dev_ca_flag_mistakes_are_usage_errors() {
    for (args, needle) in [
        (
            &["--dev-ca", "trust"][..],
            "--dev-ca 'trust': expected show, remove, install or uninstall",
        ),
        (
            &["--dev-ca", "show", "--listen", "9300"][..],
            "--dev-ca show acts on the development CA and exits, so --listen has no use with it",
        ),
        (
            &[
                "-l",
                "1",
                "-t",
                "h:1",
                "--self-signed",
                "--dev-ca-dir",
                "/tmp/x",
            ][..],
            "--self-signed and --dev-ca-dir contradict each other",
        ),
    ] {
        let (code, out) = run_to_exit(args);
        assert_eq!(code, 2, "{args:?}: {out}");
        assert!(one_error_line(&out).contains(needle), "{needle:?} in {out}");
    }
    // Without HOME and XDG_DATA_HOME there is no default place to show.
    let (code, out) = run_to_exit_env(
        &["--dev-ca", "show"],
        &[("HOME", None), ("XDG_DATA_HOME", None)],
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        one_error_line(&out).contains("give --dev-ca-dir DIR"),
        "{out}"
    );
}

#[test]
fn check_describes_the_development_ca_without_making_it() {
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join("dev-ca");
    let (listener, to) = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let to = l.local_addr().unwrap().to_string();
        (l, to)
    };
    let check = |dir: &Path| {
        run_to_exit(&[
            "--check",
            "--listen",
            "9300",
            "--to",
            &to,
            "--dev-ca-dir",
            p(dir),
        ])
    };
    let (code, out) = check(&dir);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("which the first start makes"), "{out}");
    assert!(!dir.exists(), "--check makes nothing");
    let (_home, made) = made_ca();
    let (code, out) = check(&made);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "signed by the development CA in {}",
            made.display()
        )),
        "{out}"
    );
    assert!(out.contains(&fingerprint(&ca_cert(&made))), "{out}");
    drop(listener);
}

/// Puts back whatever was at the system store's path before the test, and
/// rebuilds the store, even if the test fails half-way.
struct RestoreSystemStore {
    file: PathBuf,
    before: Option<Vec<u8>>,
}

impl Drop for RestoreSystemStore {
    fn drop(&mut self) {
        match &self.before {
            Some(bytes) => {
                let _ = std::fs::write(&self.file, bytes);
            }
            None => {
                let _ = std::fs::remove_file(&self.file);
            }
        }
        let _ = std::process::Command::new("update-ca-certificates")
            .arg("--fresh")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

#[test]
fn install_puts_the_ca_into_the_system_store_and_uninstall_takes_it_out() {
    const STORE: &str = "/usr/local/share/ca-certificates";
    const FILE: &str = "/usr/local/share/ca-certificates/wssify-dev-ca.crt";
    const BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
    let (_home, dir) = made_ca();
    let install = ["--dev-ca", "install", "--dev-ca-dir", p(&dir)];
    let debian =
        Path::new(STORE).is_dir() && Path::new("/usr/sbin/update-ca-certificates").exists();
    let can_write = debian && tempfile::tempfile_in(STORE).is_ok();
    if !debian {
        // Not Debian/Ubuntu: either another known store or a clear no.
        let (code, out) = run_to_exit(&install);
        assert!(
            code == 0 || out.contains("no system store wssify knows") || out.contains("needs root"),
            "{out}"
        );
        return;
    }
    if !can_write {
        let (code, out) = run_to_exit(&install);
        assert_eq!(code, 1, "{out}");
        let error = one_error_line(&out);
        assert!(
            error.contains("changing the system store needs root"),
            "{error}"
        );
        assert!(
            error.contains("run sudo /"),
            "the program's full path: {error}"
        );
        assert!(
            error.contains(&format!("--dev-ca install --dev-ca-dir {}", dir.display())),
            "{error}"
        );
        return;
    }
    // Root on Debian/Ubuntu: for real, and put back afterwards.
    let _restore = RestoreSystemStore {
        file: PathBuf::from(FILE),
        before: std::fs::read(FILE).ok(),
    };
    let body: String = std::fs::read_to_string(dir.join("ca.pem"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let in_bundle = || {
        std::fs::read_to_string(BUNDLE)
            .unwrap_or_default()
            .lines()
            .collect::<String>()
            .contains(&body)
    };
    let (code, out) = run_to_exit(&install);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "installed the development CA into the Debian/Ubuntu system store: {FILE}"
        )),
        "{out}"
    );
    assert!(in_bundle(), "the CA is in {BUNDLE}");
    assert_eq!(
        std::fs::read(FILE).unwrap(),
        std::fs::read(dir.join("ca.pem")).unwrap()
    );
    let (_, shown) = run_to_exit(&["--dev-ca", "show", "--dev-ca-dir", p(&dir)]);
    assert!(
        shown.contains(&format!("It is in the system store: {FILE}")),
        "{shown}"
    );

    let (code, out) = run_to_exit(&["--dev-ca", "uninstall"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("removed the development CA from the Debian/Ubuntu system store"),
        "{out}"
    );
    assert!(!in_bundle(), "the CA is gone from {BUNDLE}");
    assert!(
        std::fs::symlink_metadata("/etc/ssl/certs/wssify-dev-ca.pem").is_err(),
        "no link left behind in /etc/ssl/certs"
    );
    let (code, out) = run_to_exit(&["--dev-ca", "uninstall"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("nothing to do"), "{out}");
}

/// The user nobody, to own files this test's user does not (the tests run
/// as root in CI; as another user chown fails and the case is skipped
/// with a message).
const NOBODY: u32 = 65534;

fn chown_to_nobody(path: &Path) -> bool {
    match std::os::unix::fs::lchown(path, Some(NOBODY), Some(NOBODY)) {
        Ok(()) => true,
        Err(e) => {
            eprintln!(
                "cannot chown {} to nobody ({e}): case skipped",
                path.display()
            );
            false
        }
    }
}

#[test]
fn ca_files_owned_by_others_links_and_huge_files_are_refused() {
    // A key, a certificate, a directory another user owns.
    for owned in ["ca.key", "ca.pem", ""] {
        let (_home, dir) = made_ca();
        let path = if owned.is_empty() {
            dir.clone()
        } else {
            dir.join(owned)
        };
        if chown_to_nobody(&path) {
            refused_everywhere(
                &dir,
                &format!("{} belongs to another user (uid {NOBODY}", path.display()),
            );
        }
    }

    // The key as a link (to a private file of the user's): not followed.
    let (h4, dir) = made_ca();
    let elsewhere = h4.path().join("elsewhere.key");
    std::fs::rename(dir.join("ca.key"), &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, dir.join("ca.key")).unwrap();
    let (code, out) = check_in(&dir);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("it is a symbolic link"), "{out}");
    let (code, out) = run_to_exit(&["--dev-ca", "show", "--dev-ca-dir", p(&dir)]);
    assert_eq!(code, 1, "{out}");
    assert!(
        one_error_line(&out).contains("it is a symbolic link"),
        "{out}"
    );
    assert!(
        std::fs::symlink_metadata(dir.join("ca.key"))
            .unwrap()
            .file_type()
            .is_symlink()
    );

    // The certificate as a link: not a CA wssify made.
    let (h5, dir) = made_ca();
    let elsewhere = h5.path().join("elsewhere.pem");
    std::fs::rename(dir.join("ca.pem"), &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, dir.join("ca.pem")).unwrap();
    refused_everywhere(
        &dir,
        "is not a wssify development CA (it is a symbolic link",
    );

    // A certificate file over 64 KiB is not read.
    let (_h6, dir) = made_ca();
    let mut pem = std::fs::read(dir.join("ca.pem")).unwrap();
    pem.extend(std::iter::repeat_n(b'\n', 70 * 1024));
    std::fs::write(dir.join("ca.pem"), pem).unwrap();
    refused_everywhere(
        &dir,
        "is not a wssify development CA (it is larger than 64 KiB)",
    );
}

#[test]
fn a_lone_ca_key_others_can_read_is_refused_not_set_aside() {
    let (_home, dir) = made_ca();
    std::fs::remove_file(dir.join("ca.pem")).unwrap();
    let key = dir.join("ca.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    refused_everywhere(
        &dir,
        &format!(
            "{} (a private key without ca.pem) can be read or changed by others (mode 0644)",
            key.display()
        ),
    );
}

#[tokio::test]
async fn a_newline_or_escape_code_in_a_path_or_the_ca_subject_cannot_forge_lines() {
    bounded(WAIT * 2, async {
        let home = tempfile::tempdir().unwrap();
        let data = home.path().join("data\nFORGED line\x1b[2J");
        std::fs::create_dir_all(&data).unwrap();
        let env = [
            ("XDG_DATA_HOME", Some(p(&data))),
            ("USER", Some("eve\x1b]0;owned\x07\nFORGED")),
        ];
        let (code, stderr, stdout) = run_to_exit_split(&["--dev-ca", "show"], &env);
        assert_eq!(code, 0, "{stderr}{stdout}");
        let (_, checked) = run_to_exit_env(
            &["--listen", "127.0.0.1:0", "--to", "127.0.0.1:9", "--check"],
            &env,
        );
        let (code, removed) = run_to_exit_env(&["--dev-ca", "remove"], &env);
        assert_eq!(code, 0, "{removed}");
        for out in [stderr + &stdout, checked, removed] {
            assert!(
                !out.contains('\x1b') && !out.contains('\x07'),
                "no raw control codes:\n{out:?}"
            );
            assert!(
                !out.lines().any(|l| l.starts_with("FORGED")),
                "no line starts with what the path or subject holds:\n{out}"
            );
            assert!(out.contains("FORGED"), "the text is shown, escaped:\n{out}");
        }
    })
    .await;
}
