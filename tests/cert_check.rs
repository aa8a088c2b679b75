//! `wssify --check`: validates every input, each `--listen` address and
//! the backend without serving, prints a summary, and exits 0 only when
//! all is well.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};

use common::ca::{Ca, Leaf, days_from_today};
use common::*;

/// A backend that accepts TCP connections (the kernel completes them).
fn backend() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    (listener, addr)
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn check(args: &[String]) -> (i32, String) {
    let mut all = vec!["--check".to_string()];
    all.extend(args.iter().cloned());
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    run_to_exit(&all)
}

/// A server chain (leaf then its CA) and key in `dir`, as `NAME.crt`/`NAME.key`.
fn chain(dir: &Path, ca: &Ca, leaf: &Leaf, name: &str) -> (PathBuf, PathBuf) {
    let (cert, key) = leaf.write(dir, name);
    std::fs::write(&cert, format!("{}{}", leaf.cert_pem, ca.cert_pem())).unwrap();
    (cert, key)
}

#[test]
fn a_good_set_passes() {
    let ca = Ca::new("check CA");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = chain(dir.path(), &ca, &ca.server(&["example.test"]), "site");
    let clients = Ca::new("clients");
    let bundle = dir.path().join("clients.pem");
    std::fs::write(&bundle, clients.cert_pem()).unwrap();
    let crl = dir.path().join("clients.crl");
    std::fs::write(&crl, clients.crl(&[5, 6])).unwrap();
    let (_backend, to) = backend();

    let (code, out) = check(&[
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--to".into(),
        to.clone(),
        "--cert".into(),
        s(&cert),
        "--key".into(),
        s(&key),
        "--client-ca".into(),
        s(&bundle),
        "--crl".into(),
        s(&crl),
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "certificate --cert {}: example.test; names example.test; expires 2049-01-01",
            cert.display()
        )),
        "{out}"
    );
    assert!(out.contains("chain of 2, in order"), "{out}");
    assert!(!out.contains("only the leaf"), "{out}");
    assert!(
        out.contains("--listen 127.0.0.1:0: free; a start listens on 127.0.0.1:"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "--client-ca {}: 1 CA certificates; client certificates required",
            bundle.display()
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("--crl {}: 2 revoked certificates", crl.display())),
        "{out}"
    );
    assert!(
        out.contains(&format!("backend {to}: {to} accepts TCP connections")),
        "{out}"
    );
    assert!(out.trim_end().ends_with("wssify --check: OK"), "{out}");
}

#[test]
fn each_broken_input_fails_the_check_naming_its_file() {
    let ca = Ca::new("check CA");
    let other = Ca::new("another CA");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (good_cert, good_key) = chain(d, &ca, &ca.server(&["good.test"]), "good");
    let (_, other_key) = ca.server(&["other.test"]).write(d, "other");
    let garbage = d.join("garbage.pem");
    std::fs::write(&garbage, "not PEM at all\n").unwrap();
    // The leaf followed by a CA that did not issue it.
    let wrong = ca.server(&["wrong.test"]);
    let (wrong_cert, wrong_key) = wrong.write(d, "wrong");
    std::fs::write(
        &wrong_cert,
        format!("{}{}", wrong.cert_pem, other.cert_pem()),
    )
    .unwrap();
    let expired_on = days_from_today(-2);
    let (expired_cert, expired_key) = ca
        .server_until(&["old.test"], expired_on)
        .write(d, "expired");
    let empty_dir = d.join("empty");
    std::fs::create_dir(&empty_dir).unwrap();
    let missing = d.join("missing.pem");
    let (_backend, to) = backend();

    let pair = |c: &Path, k: &Path| vec!["--cert".to_string(), s(c), "--key".to_string(), s(k)];
    let with_ca = |extra: Vec<String>| {
        let mut v = pair(&good_cert, &good_key);
        v.extend(extra);
        v
    };
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            pair(&missing, &good_key),
            format!("--cert {}: no such file", missing.display()),
        ),
        (
            pair(&garbage, &good_key),
            format!("--cert {} has no PEM certificate", garbage.display()),
        ),
        (
            pair(&good_cert, &garbage),
            format!("--key {} has no private key", garbage.display()),
        ),
        (
            pair(&good_cert, &other_key),
            format!(
                "--key {} does not match the certificate in --cert {}",
                other_key.display(),
                good_cert.display()
            ),
        ),
        (
            pair(&wrong_cert, &wrong_key),
            format!("--cert {}: chain out of order", wrong_cert.display()),
        ),
        (
            pair(&expired_cert, &expired_key),
            format!(
                "certificate old.test expired on {}",
                common::ca::ymd_text(expired_on)
            ),
        ),
        (
            vec!["--cert-dir".into(), s(&empty_dir)],
            format!("--cert-dir {}: holds no certificate", empty_dir.display()),
        ),
        (
            with_ca(vec!["--client-ca".into(), s(&garbage)]),
            format!("--client-ca {} has no PEM certificate", garbage.display()),
        ),
        (
            with_ca(vec![
                "--client-ca".into(),
                s(&good_cert),
                "--crl".into(),
                s(&garbage),
            ]),
            format!("--crl {} has no CRL", garbage.display()),
        ),
    ];
    for (args, expected) in cases {
        let mut all = vec![
            "--listen".to_string(),
            "127.0.0.1:0".into(),
            "--to".into(),
            to.clone(),
        ];
        all.extend(args.iter().cloned());
        let (code, out) = check(&all);
        assert_eq!(code, 1, "{args:?} must fail:\n{out}");
        assert!(
            out.contains(&format!("error: {expected}")) || out.contains(&expected),
            "{args:?}: expected {expected:?} in:\n{out}"
        );
        assert!(
            out.contains("wssify --check: FAILED (1 problem)"),
            "{args:?}:\n{out}"
        );
    }
}

#[test]
fn an_unreachable_backend_fails_the_check() {
    let (listener, to) = backend();
    drop(listener);
    let (code, out) = check(&[
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--to".into(),
        to.clone(),
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("error: backend {to} (--to) is unreachable")),
        "{out}"
    );
    assert!(out.contains("refused"), "{out}");
    assert!(out.contains("wssify --check: FAILED (1 problem)"), "{out}");
    // The development certificate is fine for a check, but said so.
    assert!(
        out.contains("certificate: none given, so a development certificate would be served"),
        "{out}"
    );
}

#[test]
fn every_backend_is_checked() {
    let (up, up_to) = backend();
    let (down, down_to) = backend();
    drop(down);
    let (code, out) = check(&[
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--to".into(),
        up_to.clone(),
        "--to".into(),
        down_to.clone(),
    ]);
    drop(up);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("backend {up_to}: {up_to} accepts TCP connections")),
        "{out}"
    );
    assert!(
        out.contains(&format!("error: backend {down_to} (--to) is unreachable")),
        "{out}"
    );
    assert!(out.contains("wssify --check: FAILED (1 problem)"), "{out}");
}

#[test]
fn a_certificate_expiring_soon_is_a_warning_not_a_failure() {
    let ca = Ca::new("check CA");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = ca
        .server_until(&["soon.test"], days_from_today(5))
        .write(dir.path(), "soon");
    let (_backend, to) = backend();
    let (code, out) = check(&[
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--to".into(),
        to,
        "--cert".into(),
        s(&cert),
        "--key".into(),
        s(&key),
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("warning: certificate soon.test"), "{out}");
    assert!(out.contains("wssify --check: OK"), "{out}");
}

#[test]
fn flag_mistakes_are_usage_errors_as_in_a_real_run() {
    let (code, out) = check(&[
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--to".into(),
        "127.0.0.1:1".into(),
        "--crl".into(),
        "x.crl".into(),
    ]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("--crl needs --client-ca"), "{out}");
}

/// Without --check, the same mistakes stop the start with one line naming
/// the file, and exit code 1.
#[test]
fn a_real_start_stops_at_a_bad_input_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not PEM\n").unwrap();
    let (_backend, to) = backend();
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            vec!["--cert-dir".into(), s(&empty)],
            format!(
                "wssify: --cert-dir {}: holds no certificate",
                empty.display()
            ),
        ),
        (
            vec!["--client-ca".into(), s(&garbage)],
            format!(
                "wssify: --client-ca {} has no PEM certificate",
                garbage.display()
            ),
        ),
    ];
    for (extra, expected) in cases {
        let mut args = vec![
            "--listen".to_string(),
            "127.0.0.1:0".into(),
            "--to".into(),
            to.clone(),
        ];
        args.extend(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, out) = run_to_exit(&args);
        assert_eq!(code, 1, "{args:?}:\n{out}");
        let errors: Vec<&str> = out.lines().filter(|l| l.starts_with("wssify: ")).collect();
        assert_eq!(errors.len(), 1, "{out}");
        assert!(errors[0].starts_with(&expected), "{out}");
        assert!(!out.contains("panicked"), "{out}");
    }
}

/// A cert-manager secret (`tls.crt`, `tls.key`, and the CA's `ca.crt`
/// without a key) passes: `ca.crt` is a warning, as it is when serving.
#[test]
fn a_cert_manager_secret_passes_with_a_warning_about_ca_crt() {
    let ca = Ca::new("cert-manager CA");
    let dir = tempfile::tempdir().unwrap();
    ca.server(&["example.test"]).write(dir.path(), "tls");
    std::fs::write(dir.path().join("ca.crt"), ca.cert_pem()).unwrap();
    let (_backend, to) = backend();
    let (code, out) = check(&[
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--to".into(),
        to,
        "--cert-dir".into(),
        s(dir.path()),
    ]);
    assert_eq!(code, 0, "{out}");
    let named: Vec<&str> = out.lines().filter(|l| l.contains("ca.crt")).collect();
    assert_eq!(named.len(), 1, "{out}");
    assert!(
        named[0].starts_with(&format!(
            "warning: --cert-dir {}: ca.crt has no ca.key beside it: ignored",
            dir.path().display()
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "certificate --cert-dir {}: tls:",
            dir.path().display()
        )),
        "{out}"
    );
    assert!(out.contains("wssify --check: OK"), "{out}");
}

/// A directory whose only file is a CA bundle has nothing to serve: the
/// check fails and a start stops, each saying so and naming the file.
#[test]
fn a_cert_dir_with_only_a_ca_bundle_neither_passes_nor_starts() {
    let ca = Ca::new("cert-manager CA");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.crt"), ca.cert_pem()).unwrap();
    let (_backend, to) = backend();
    let mut args = vec![
        "--listen".to_string(),
        "127.0.0.1:0".into(),
        "--to".into(),
        to,
        "--cert-dir".into(),
        s(dir.path()),
    ];
    let (code, out) = check(&args);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!(
            "error: --cert-dir {}: holds no certificate",
            dir.path().display()
        )),
        "{out}"
    );
    assert!(out.contains("wssify --check: FAILED (1 problem)"), "{out}");

    args.retain(|a| a != "--check");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out) = run_to_exit(&args);
    assert_eq!(code, 1, "{out}");
    let errors: Vec<&str> = out.lines().filter(|l| l.starts_with("wssify: ")).collect();
    assert_eq!(errors.len(), 1, "one error line:\n{out}");
    assert!(
        errors[0].starts_with(&format!(
            "wssify: --cert-dir {}: holds no certificate",
            dir.path().display()
        )) && errors[0].contains("ca.crt has no ca.key"),
        "{out}"
    );
    assert!(!out.contains("WARN"), "no warning before the error: {out}");
    assert!(!out.contains("listening on"), "{out}");
}

/// `cert.pem` instead of `fullchain.pem`: a leaf issued by an intermediate,
/// alone. The check passes (a leaf straight from a private root needs
/// nothing more) but warns, naming the file; the full chain has no warning.
#[test]
fn a_leaf_without_its_intermediate_is_a_warning_naming_the_file() {
    let root = Ca::new("check root");
    let intermediate = root.intermediate("check intermediate");
    let leaf = intermediate.server(&["example.test"]);
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = leaf.write(dir.path(), "cert");
    let (_backend, to) = backend();
    let args = |cert: &Path| {
        vec![
            "--listen".to_string(),
            "127.0.0.1:0".into(),
            "--to".into(),
            to.clone(),
            "--cert".into(),
            s(cert),
            "--key".into(),
            s(&key),
        ]
    };
    let (code, out) = check(&args(&cert));
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "warning: --cert {}: the chain has only the leaf; use the full chain (e.g. fullchain.pem, not cert.pem)",
            cert.display()
        )),
        "{out}"
    );
    assert!(out.contains("(check intermediate)"), "{out}");
    assert!(out.contains("wssify --check: OK"), "{out}");

    let full = dir.path().join("fullchain.pem");
    std::fs::write(
        &full,
        format!("{}{}", leaf.cert_pem, intermediate.cert_pem()),
    )
    .unwrap();
    let (code, out) = check(&args(&full));
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("only the leaf"), "{out}");
    assert!(out.contains("chain of 2, in order"), "{out}");
}

/// The chain upside down (intermediate first, then the leaf): the check
/// and a real start both say the leaf must come first, not that the key
/// does not match.
#[test]
fn a_chain_with_the_leaf_last_says_the_leaf_must_come_first() {
    let root = Ca::new("check root");
    let intermediate = root.intermediate("check intermediate");
    let leaf = intermediate.server(&["example.test"]);
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = leaf.write(dir.path(), "site");
    std::fs::write(
        &cert,
        format!("{}{}", intermediate.cert_pem(), leaf.cert_pem),
    )
    .unwrap();
    let (_backend, to) = backend();
    let mut args = vec![
        "--listen".to_string(),
        "127.0.0.1:0".into(),
        "--to".into(),
        to,
        "--cert".into(),
        s(&cert),
        "--key".into(),
        s(&key),
    ];
    let expected = format!(
        "--cert {}: the leaf must come first: certificate 2 (example.test) is the one --key {} belongs to",
        cert.display(),
        key.display()
    );
    let (code, out) = check(&args);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("error: {expected}")), "{out}");
    assert!(!out.contains("does not match"), "{out}");

    args.retain(|a| a != "--check");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out) = run_to_exit(&args);
    assert_eq!(code, 1, "{out}");
    let errors: Vec<&str> = out.lines().filter(|l| l.starts_with("wssify: ")).collect();
    assert_eq!(errors.len(), 1, "{out}");
    assert!(
        errors[0].starts_with(&format!("wssify: {expected}")),
        "{out}"
    );
}

/// An IPv4 address that is not on this host (from the documentation
/// ranges; the first one this host does not have).
fn foreign_ip() -> String {
    for ip in ["203.0.113.1", "198.51.100.1", "192.0.2.1"] {
        match TcpListener::bind((ip, 0)) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => return ip.to_string(),
            _ => continue,
        }
    }
    panic!("this host has every documentation address; no address to show EADDRNOTAVAIL with");
}

/// The check binds each `--listen` as a start would (a port in use, an
/// address not on this host) and says what a start would say.
#[test]
fn check_binds_each_listen_and_reports_what_a_start_would_refuse() {
    let (_backend, to) = backend();
    let (_taken, in_use) = backend();
    let port = in_use.rsplit(':').next().unwrap().to_string();
    let foreign = format!("{}:9300", foreign_ip());
    let (code, out) = check(&[
        "--listen".into(),
        in_use.clone(),
        "--listen".into(),
        foreign.clone(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--to".into(),
        to.clone(),
    ]);
    assert_eq!(code, 1, "{out}");
    let in_use_line = format!("--listen {in_use}: port {port} is already in use by ");
    let error = out
        .lines()
        .find(|l| l.starts_with(&format!("error: {in_use_line}")))
        .unwrap_or_else(|| panic!("no port-in-use error:\n{out}"));
    assert!(
        error.contains(&format!(
            "(pid {}); stop it or choose another port",
            std::process::id()
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "error: --listen {foreign}: {} is not an address of this host; use a bare port to listen everywhere",
            foreign.rsplit_once(':').unwrap().0
        )),
        "{out}"
    );
    assert!(
        out.contains("--listen 127.0.0.1:0: free; a start listens on 127.0.0.1:"),
        "{out}"
    );
    assert!(out.contains("wssify --check: FAILED (2 problems)"), "{out}");

    // A real start stops at the same port with the same words.
    let (code, started) = run_to_exit(&["--listen", &in_use, "--to", &to]);
    assert_eq!(code, 1, "{started}");
    let start_error = started
        .lines()
        .find(|l| l.starts_with("wssify: "))
        .unwrap_or_else(|| panic!("{started}"));
    assert_eq!(
        start_error.strip_prefix("wssify: "),
        error.strip_prefix("error: "),
        "{started}\n{out}"
    );
}

/// A port below 1024 without the privilege: the check says how to grant
/// it. As root the binary runs as nobody through `setpriv`; where that is
/// impossible, the reason is printed and the case skipped.
#[test]
fn check_reports_a_privileged_port_and_how_to_grant_it() {
    let mut command = match unprivileged_wssify() {
        Ok(command) => command,
        Err(why) => {
            eprintln!("skipping the privileged-port check: {why}");
            return;
        }
    };
    let (_backend, to) = backend();
    command.args(["--check", "--listen", "127.0.0.1:80", "--to", &to]);
    let (code, out) = run_command_to_exit(command);
    assert_eq!(code, 1, "{out}");
    let error = out
        .lines()
        .find(|l| l.starts_with("error: --listen 127.0.0.1:80: permission denied for port 80"))
        .unwrap_or_else(|| panic!("no permission error:\n{out}"));
    for how in [
        "setcap cap_net_bind_service=+ep",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "net.ipv4.ip_unprivileged_port_start",
    ] {
        assert!(error.contains(how), "{how:?} not in: {error}");
    }
    assert!(out.contains("wssify --check: FAILED (1 problem)"), "{out}");
}
