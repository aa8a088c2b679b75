//! The command line against the real binary: help, version, and every way
//! starting can go wrong, each ending in one line that names the flag or
//! file and says what to do, with the documented exit code.

mod common;
use common::*;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;

use rcgen::KeyPair;
use tempfile::TempDir;

/// Exit code for a mistake in the flags.
const FLAG_ERROR: i32 = 2;
/// Exit code for a failure to start (files, ports).
const START_ERROR: i32 = 1;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A directory with a valid self-signed `cert.pem`/`key.pem` pair and a
/// place for broken files.
struct Files {
    dir: TempDir,
    cert: PathBuf,
    key: PathBuf,
    cert_der: Vec<u8>,
    key_der: Vec<u8>,
}

impl Files {
    fn new() -> Files {
        let dir = tempfile::tempdir().unwrap();
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, generated.cert.pem()).unwrap();
        std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
        Files {
            cert_der: generated.cert.der().to_vec(),
            key_der: generated.signing_key.serialize_der(),
            dir,
            cert,
            key,
        }
    }

    /// Writes `contents` to `name` in the directory and returns its path.
    fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Runs wssify on a free port with this certificate and key; it must fail.
fn run_with_files(cert: &Path, key: &Path) -> (i32, String) {
    run_to_exit(&[
        "--listen",
        "127.0.0.1:0",
        "--to",
        "127.0.0.1:9",
        "--cert",
        p(cert),
        "--key",
        p(key),
    ])
}

/// Checks a failed start: the exit code, no panic or backtrace, exactly one
/// `wssify: ` error line (anything else is a `[...]` log line), and that the
/// error line contains every needle. Returns the error line.
fn assert_one_line_error(result: (i32, String), code: i32, needles: &[&str]) -> String {
    let (actual, out) = result;
    assert_eq!(actual, code, "exit code; output:\n{out}");
    let lower = out.to_lowercase();
    for forbidden in ["panicked", "backtrace", "thread 'main'"] {
        assert!(
            !lower.contains(forbidden),
            "{forbidden:?} in output:\n{out}"
        );
    }
    let errors: Vec<&str> = out.lines().filter(|l| l.starts_with("wssify: ")).collect();
    assert_eq!(errors.len(), 1, "exactly one error line; output:\n{out}");
    for line in out.lines() {
        assert!(
            line.starts_with("wssify: ") || line.starts_with('['),
            "a stray line (the error must be one line): {line:?}\noutput:\n{out}"
        );
    }
    let error = errors[0];
    for needle in needles {
        assert!(error.contains(needle), "{needle:?} not in: {error}");
    }
    assert!(!out.contains("listening on"), "it must not serve: {out}");
    error.to_string()
}

/// Flags around a given listen address that are otherwise valid.
fn listen_args(listen: &str) -> Vec<String> {
    ["--listen", listen, "--to", "127.0.0.1:9"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn run(args: &[String]) -> (i32, String) {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_to_exit(&args)
}

// ---------------------------------------------------------------------------
// --help and --version
// ---------------------------------------------------------------------------

#[test]
fn help_lists_every_flag_its_defaults_and_the_examples() {
    let (code, out) = run_to_exit(&["--help"]);
    assert_eq!(code, 0, "{out}");
    // Whitespace-insensitive, so help text wrapping does not matter.
    let flat = out.split_whitespace().collect::<Vec<_>>().join(" ");
    for flag in [
        "--listen",
        "--to",
        "--cert",
        "--key",
        "--cert-dir",
        "--strict-sni",
        "--client-ca",
        "--client-ca-optional",
        "--crl",
        "--reload-interval",
        "--check",
        "--idle-timeout",
        "--handshake-timeout",
        "--connect-timeout",
        "--drain-timeout",
        "--max-conns",
        "--max-memory",
        "--stall-timeout",
        "--max-handshakes",
        "--max-conns-per-ip",
        "--tls-min",
        "--alpn",
        "--proxy-protocol",
        "--threads",
        "--busy-poll",
        "--version",
        "--dev-ca",
        "--dev-ca-dir",
        "--self-signed",
    ] {
        assert!(
            flat.contains(&format!("{flag} ")) || flat.contains(&format!("{flag}]")),
            "--help does not mention {flag}:\n{out}"
        );
    }
    for default in [
        "(default: 1h)",
        "(default: 10s)",
        "(default: 5s)",
        "(default: 30s)",
        "(default: 5m)",
        "(default: 256 per core)",
        "(default: no limit,",
        "at most 10ms",
        "at most 365d",
        "up to 10000000, --threads to 1024",
        "(a CA's ca.crt) is ignored with a warning",
    ] {
        assert!(flat.contains(default), "--help lacks {default}:\n{out}");
    }
    // Readable in an 80-column terminal: every option is described in
    // wrapped lines, and so is every note.
    let options = out
        .split("Options:")
        .nth(1)
        .and_then(|rest| rest.split("Examples:").next())
        .unwrap_or_default();
    let notes = out.split("Notes:").nth(1).unwrap_or_default();
    for line in options.lines().chain(notes.lines()) {
        assert!(
            line.chars().count() <= 80,
            "a --help line wider than 80 columns: {line:?}"
        );
    }
    // Timeouts are listed together, then the limits.
    let at = |flag: &str| {
        options
            .lines()
            .position(|l| l.split_whitespace().next() == Some(flag))
            .unwrap_or_else(|| panic!("{flag} is not described:\n{out}"))
    };
    assert!(at("--stall-timeout") < at("--handshake-timeout"), "{out}");
    assert!(at("--max-conns-per-ip") < at("--max-memory"), "{out}");
    assert!(out.contains("Examples:"), "{out}");
    let examples = out
        .lines()
        .filter(|l| l.trim_start().starts_with("$ wssify "))
        .count();
    assert_eq!(examples, 6, "six example commands:\n{out}");
    assert!(
        flat.contains("$ wssify --listen 9300 --to 127.0.0.1:9200"),
        "{out}"
    );
    assert!(
        flat.contains("--cert fullchain.pem --key privkey.pem"),
        "{out}"
    );
    assert!(flat.contains("$ wssify --check "), "{out}");
    assert!(flat.contains("$ wssify --dev-ca show "), "{out}");
    assert!(flat.contains("SIGHUP re-reads them"), "{out}");
}

#[test]
fn version_prints_name_and_version() {
    for flag in ["--version", "-V"] {
        let (code, out) = run_to_exit(&[flag]);
        assert_eq!(code, 0, "{out}");
        assert_eq!(
            out.trim(),
            format!("wssify {}", env!("CARGO_PKG_VERSION")),
            "{flag}"
        );
    }
    assert_eq!(env!("CARGO_PKG_VERSION"), "0.1.0");
}

// ---------------------------------------------------------------------------
// Flags as people type them
// ---------------------------------------------------------------------------

#[tokio::test]
async fn flag_equals_value_and_compound_durations_start() {
    // The form Kubernetes `args:` and many scripts use, with a duration
    // of two parts.
    bounded(WAIT, async {
        let backend = echo_backend().await;
        let mut w = Wssify::start_raw(&[
            "--listen=127.0.0.1:0",
            &format!("--to={backend}"),
            "--idle-timeout=1h30m",
            "--stall-timeout",
            "2m30s",
            "--alpn=http/1.1",
        ])
        .await;
        let limits = w.wait_for_log("limits: ").await;
        assert!(limits.contains("idle timeout 90m, stall 150s"), "{limits}");
        let listening = w.wait_for_log("listening on ").await;
        assert!(listening.contains("ALPN: http/1.1"), "{listening}");
    })
    .await;
}

#[test]
fn dash_h_and_help_anywhere_print_the_help() {
    for args in [
        &["-h"][..],
        &["--listen", "9300", "-h"],
        &["--help", "--listen", "9300", "--to", "127.0.0.1:9200"],
        &["-l", "9300", "--help", "--to=127.0.0.1:9200"],
    ] {
        let (code, out) = run_to_exit(args);
        assert_eq!(code, 0, "{args:?}: {out}");
        assert!(out.starts_with("Usage: wssify "), "{args:?}: {out}");
        assert!(out.contains("-h, --help"), "{args:?}: {out}");
    }
}

#[test]
fn flag_equals_mistakes_are_one_line_usage_errors() {
    let cases: [(&[&str], &[&str]); 4] = [
        (
            &["--listen=", "--to", "127.0.0.1:9"],
            &["--listen= has no value after the '='", "--listen=ADDR"],
        ),
        (
            &["--listen=127.0.0.1:0", "--to=-x"],
            &["--to '-x': no port in '-x'"],
        ),
        (
            &["--listen=127.0.0.1:0", "--to=127.0.0.1:9", "--check=yes"],
            &["--check takes no value"],
        ),
        (
            &[
                "--listen=127.0.0.1:0",
                "--to=127.0.0.1:9",
                "--idle-timeout=30m1h",
            ],
            &["--idle-timeout '30m1h'", "largest first", "e.g. 1h30m"],
        ),
    ];
    for (args, needles) in cases {
        assert_one_line_error(run_to_exit(args), FLAG_ERROR, needles);
    }
}

#[test]
fn a_url_as_to_is_told_to_drop_the_scheme() {
    let cases: [(&str, &[&str]); 4] = [
        (
            "ws://127.0.0.1:9200",
            &["--to 'ws://127.0.0.1:9200': drop the scheme: --to 127.0.0.1:9200"],
        ),
        (
            "http://ws-server:9200/chat",
            &[
                "drop the scheme: --to ws-server:9200",
                "the path is not needed",
            ],
        ),
        (
            "wss://ws-server:9443",
            &[
                "drop the scheme: --to ws-server:9443",
                "plain TCP to the backend",
            ],
        ),
        ("tcp://[::1]:9200", &["drop the scheme: --to [::1]:9200"]),
    ];
    for (to, needles) in cases {
        assert_one_line_error(
            run_to_exit(&["--listen", "127.0.0.1:0", "--to", to]),
            FLAG_ERROR,
            needles,
        );
    }
}

#[test]
fn a_listen_address_given_twice_or_overlapping_is_a_usage_error() {
    // Without the check, the second bind fails with "already in use by
    // another program" (exit 1): the other program is this one.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    drop(taken);
    let here = format!("127.0.0.1:{port}");
    let all = format!("0.0.0.0:{port}");
    let bare = port.to_string();
    let cases: [(&[&str], &[&str]); 3] = [
        (
            &[&here, &here],
            &[
                &format!("--listen {here} is given twice"),
                "give each address once",
            ],
        ),
        (
            &[&bare, &all],
            &[
                &format!("--listen {bare} and --listen {all} overlap"),
                "a bare port already listens on every address, IPv4 and IPv6",
            ],
        ),
        (&[&here, &format!(":{port}")], &["overlap"]),
    ];
    for (listens, needles) in cases {
        let mut args = Vec::new();
        for listen in listens {
            args.extend(["--listen".to_string(), listen.to_string()]);
        }
        args.extend(["--to".to_string(), "127.0.0.1:9".to_string()]);
        let error = assert_one_line_error(run(&args), FLAG_ERROR, needles);
        assert!(!error.contains("another program"), "{error}");
    }
}

// ---------------------------------------------------------------------------
// Certificate and key files
// ---------------------------------------------------------------------------

#[tokio::test]
async fn valid_files_are_the_baseline() {
    // The fixture itself must start, or every failure below proves nothing.
    let f = Files::new();
    bounded(WAIT, async {
        let w = Wssify::start(&[
            "--to",
            "127.0.0.1:9",
            "--cert",
            p(&f.cert),
            "--key",
            p(&f.key),
        ])
        .await;
        assert_eq!(w.lines_with("listening on").len(), 1, "{}", w.log());
    })
    .await;
}

#[test]
fn missing_cert_file() {
    let f = Files::new();
    let missing = f.dir.path().join("no-such-cert.pem");
    assert_one_line_error(
        run_with_files(&missing, &f.key),
        START_ERROR,
        &[
            &format!("--cert {}", p(&missing)),
            "no such file",
            "give the path of your PEM certificate chain",
        ],
    );
}

#[test]
fn missing_key_file() {
    let f = Files::new();
    let missing = f.dir.path().join("no-such-key.pem");
    assert_one_line_error(
        run_with_files(&f.cert, &missing),
        START_ERROR,
        &[
            &format!("--key {}", p(&missing)),
            "no such file",
            "give the path of the PEM private key",
        ],
    );
}

#[test]
fn cert_that_is_a_directory() {
    let f = Files::new();
    let dir = f.dir.path().join("certs.d");
    std::fs::create_dir(&dir).unwrap();
    assert_one_line_error(
        run_with_files(&dir, &f.key),
        START_ERROR,
        &[
            &format!("--cert {}", p(&dir)),
            "this is a directory",
            "give the path of your PEM certificate chain",
        ],
    );
}

#[test]
fn unreadable_cert_file() {
    use std::os::unix::fs::PermissionsExt;
    let f = Files::new();
    std::fs::set_permissions(&f.cert, std::fs::Permissions::from_mode(0o000)).unwrap();
    if std::fs::read(&f.cert).is_ok() {
        eprintln!(
            "skipping the permission-denied check: this test runs with the privilege to read a mode 000 file (root or CAP_DAC_OVERRIDE); cert_that_is_a_directory covers an unreadable --cert"
        );
        return;
    }
    assert_one_line_error(
        run_with_files(&f.cert, &f.key),
        START_ERROR,
        &[
            &format!("--cert {}", p(&f.cert)),
            "permission denied",
            "make it readable",
        ],
    );
}

#[test]
fn cert_file_without_a_pem_certificate() {
    let f = Files::new();
    // A DER certificate: a real certificate, but not PEM.
    let der = f.write("cert.der", &f.cert_der);
    assert_one_line_error(
        run_with_files(&der, &f.key),
        START_ERROR,
        &[
            &format!("--cert {}", p(&der)),
            "has no PEM certificate",
            "openssl x509 -inform der",
        ],
    );
    // Plain text.
    let text = f.write("notes.txt", "this is not a certificate\n");
    assert_one_line_error(
        run_with_files(&text, &f.key),
        START_ERROR,
        &[&format!("--cert {}", p(&text)), "has no PEM certificate"],
    );
}

#[test]
fn an_empty_cert_or_key_file_says_empty() {
    let f = Files::new();
    let empty = f.write("empty.pem", "");
    let error = assert_one_line_error(
        run_with_files(&empty, &f.key),
        START_ERROR,
        &[
            &format!("--cert {} is empty", p(&empty)),
            "it should hold your PEM certificate chain",
        ],
    );
    assert!(!error.contains("DER"), "{error}");
    // Only blank lines (a secret that was never filled in) is empty too.
    let blank = f.write("blank.key", "\n \n");
    let error = assert_one_line_error(
        run_with_files(&f.cert, &blank),
        START_ERROR,
        &[
            &format!("--key {} is empty", p(&blank)),
            "it should hold the PEM private key",
        ],
    );
    assert!(!error.contains("DER"), "{error}");
}

#[test]
fn a_der_key_gets_the_command_that_converts_it() {
    let f = Files::new();
    let der = f.write("key.der", &f.key_der);
    assert_one_line_error(
        run_with_files(&f.cert, &der),
        START_ERROR,
        &[
            &format!("--key {} is a DER (binary) private key, not PEM", p(&der)),
            "openssl pkey -inform der -in KEY -out key.pem",
        ],
    );
}

#[test]
fn key_file_without_a_private_key() {
    let f = Files::new();
    let text = f.write("empty-key.pem", "nothing to see here\n");
    assert_one_line_error(
        run_with_files(&f.cert, &text),
        START_ERROR,
        &[
            &format!("--key {}", p(&text)),
            "has no private key",
            "give the key in PEM form",
        ],
    );
}

#[test]
fn swapped_cert_and_key_say_swap() {
    let f = Files::new();
    assert_one_line_error(
        run_with_files(&f.key, &f.cert),
        START_ERROR,
        &[
            &format!("--cert {}", p(&f.key)),
            "holds a private key but no certificate",
            "did you swap --cert and --key?",
        ],
    );
    // A key file that holds only a certificate, with a good --cert.
    let cert_as_key = f.write("cert-as-key.pem", std::fs::read(&f.cert).unwrap());
    assert_one_line_error(
        run_with_files(&f.cert, &cert_as_key),
        START_ERROR,
        &[
            &format!("--key {}", p(&cert_as_key)),
            "holds a certificate but no private key",
            "swap",
        ],
    );
}

#[test]
fn encrypted_key_says_decrypt_it() {
    let f = Files::new();
    let body: Vec<u8> = (0u8..=200).collect();
    let encrypted = f.write("encrypted.pem", pem("ENCRYPTED PRIVATE KEY", &body));
    assert_one_line_error(
        run_with_files(&f.cert, &encrypted),
        START_ERROR,
        &[
            &format!("--key {}", p(&encrypted)),
            "encrypted with a passphrase",
            "openssl pkey -in",
        ],
    );
    // The traditional OpenSSL form says so in a header.
    let legacy = f.write(
        "legacy-encrypted.pem",
        format!(
            "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00112233445566778899AABBCCDDEEFF\n\n{}\n-----END RSA PRIVATE KEY-----\n",
            base64(&body)
        ),
    );
    assert_one_line_error(
        run_with_files(&f.cert, &legacy),
        START_ERROR,
        &[
            &format!("--key {}", p(&legacy)),
            "encrypted with a passphrase",
        ],
    );
}

#[test]
fn key_that_does_not_match_the_certificate() {
    let f = Files::new();
    let other = f.write(
        "other-key.pem",
        KeyPair::generate().unwrap().serialize_pem(),
    );
    assert_one_line_error(
        run_with_files(&f.cert, &other),
        START_ERROR,
        &[
            &format!(
                "--key {} does not match the certificate in --cert {}",
                p(&other),
                p(&f.cert)
            ),
            "give the key that was made with that certificate",
        ],
    );
}

#[test]
fn only_cert_or_only_key_asks_for_both() {
    let f = Files::new();
    let mut args = listen_args("127.0.0.1:0");
    args.extend(["--cert".to_string(), p(&f.cert).to_string()]);
    assert_one_line_error(
        run(&args),
        FLAG_ERROR,
        &["--cert was given without --key", "give both"],
    );

    let mut args = listen_args("127.0.0.1:0");
    args.extend(["--key".to_string(), p(&f.key).to_string()]);
    assert_one_line_error(
        run(&args),
        FLAG_ERROR,
        &["--key was given without --cert", "give both"],
    );
}

// ---------------------------------------------------------------------------
// Ports
// ---------------------------------------------------------------------------

#[test]
fn port_in_use() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let port = addr.port();
    assert_one_line_error(
        run(&listen_args(&addr.to_string())),
        START_ERROR,
        &[
            &format!("--listen {addr}"),
            &format!("port {port} is already in use by "),
            // The holder is this test process, and it is named.
            &format!("(pid {})", std::process::id()),
            "choose another port",
        ],
    );
    drop(taken);
}

#[test]
fn overlapping_listens_the_flags_cannot_tell_are_named_at_bind() {
    // [::] and 0.0.0.0 on one port overlap only where IPv6 sockets take
    // IPv4 too (net.ipv6.bindv6only=0, Linux's default), so the flags let
    // them through; the second bind then names this wssify, not "another
    // program".
    let v6only = std::fs::read_to_string("/proc/sys/net/ipv6/bindv6only").unwrap_or_default();
    if v6only.trim() != "0" || std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!(
            "skipping: this host has no IPv6 or sets net.ipv6.bindv6only={}, so [::] and 0.0.0.0 do not overlap",
            v6only.trim()
        );
        return;
    }
    let probe = std::net::TcpListener::bind("[::]:0").unwrap();
    let port = probe.local_addr().unwrap().port();
    drop(probe);
    let v6 = format!("[::]:{port}");
    let v4 = format!("0.0.0.0:{port}");
    let error = assert_one_line_error(
        run_to_exit(&["--listen", &v6, "--listen", &v4, "--to", "127.0.0.1:9"]),
        START_ERROR,
        &[
            &format!(
                "--listen {v4}: port {port} is already taken by another --listen of this wssify"
            ),
            "give each address once",
        ],
    );
    assert!(!error.contains("another program"), "{error}");
}

/// What a started binary did: began serving, or exited by itself.
enum Outcome {
    Listening(String),
    Exited(i32, String),
}

/// Starts the binary and waits (bounded by [`WAIT`]) until it logs
/// "listening on" (then stops it) or exits.
fn run_until_listening_or_exit(args: &[&str]) -> Outcome {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wssify"));
    let _data_home = isolated(&mut command, &[]);
    let mut child = command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(Some(line)).is_err() {
                return;
            }
        }
        let _ = tx.send(None);
    });
    let deadline = std::time::Instant::now() + WAIT;
    let mut log = String::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(Some(line)) => {
                log.push_str(&line);
                log.push('\n');
                if line.contains("listening on ") {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Outcome::Listening(log);
                }
            }
            Ok(None) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.wait().unwrap();
                return Outcome::Exited(status.code().unwrap_or(-1), log);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("wssify {args:?} neither listened nor exited within {WAIT:?}:\n{log}");
            }
        }
    }
}

#[test]
fn low_port_without_privilege_is_permission_denied() {
    let args = ["--listen", "127.0.0.1:80", "--to", "127.0.0.1:9"];
    match unprivileged_wssify() {
        Ok(mut command) => {
            command.args(args);
            assert_one_line_error(
                run_command_to_exit(command),
                START_ERROR,
                &[
                    "--listen 127.0.0.1:80",
                    "permission denied for port 80: ports below",
                    "setcap cap_net_bind_service=+ep",
                    "AmbientCapabilities=CAP_NET_BIND_SERVICE",
                    "net.ipv4.ip_unprivileged_port_start",
                ],
            );
        }
        Err(why) => {
            eprintln!(
                "skipping the permission-denied assertion: {why}; checking only that binding port 80 succeeds or fails cleanly"
            );
            match run_until_listening_or_exit(&args) {
                Outcome::Listening(log) => {
                    assert!(log.contains("listening on 127.0.0.1:80 "), "{log}");
                }
                Outcome::Exited(code, log) => {
                    // E.g. something else already has port 80.
                    assert_one_line_error((code, log), START_ERROR, &["--listen 127.0.0.1:80"]);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Malformed flag values
// ---------------------------------------------------------------------------

#[test]
fn malformed_listen() {
    let cases = [
        ("example.com:9300", "'example.com' is not an IP address"),
        ("99999", "'99999' is not a port"),
        ("127.0.0.1:http", "'http' is not a port"),
        ("nonsense", "expected a port (9300), IP:PORT"),
        (
            "127.0.0.1",
            "no port in '127.0.0.1'; e.g. --listen 127.0.0.1:9300",
        ),
        (
            "::1",
            "no port, and an IPv6 address goes in brackets: --listen [::1]:9300",
        ),
    ];
    for (value, why) in cases {
        assert_one_line_error(
            run(&listen_args(value)),
            FLAG_ERROR,
            &[&format!("--listen '{value}'"), why],
        );
    }
}

#[test]
fn malformed_to() {
    let cases = [
        ("ws-server", "no port in 'ws-server'"),
        (
            "bad host:9200",
            "'bad host' is not a host name or IP address",
        ),
        ("127.0.0.1:70000", "'70000' is not a port"),
        ("127.0.0.1:0", "port 0 cannot be connected to"),
        (
            "::1:9200",
            "an IPv6 address goes in brackets before its port: --to [::1]:9200",
        ),
        ("[::1]", "no port in '[::1]'; e.g. --to [::1]:9200"),
    ];
    for (value, why) in cases {
        assert_one_line_error(
            run_to_exit(&["--listen", "127.0.0.1:0", "--to", value]),
            FLAG_ERROR,
            &[&format!("--to '{value}'"), why],
        );
    }
}

#[test]
fn malformed_durations() {
    let cases = [
        (
            "--idle-timeout",
            "soon",
            "'soon' is not a duration",
            "expected a duration like 90s",
        ),
        (
            "--handshake-timeout",
            "5y",
            "unknown unit 'y'",
            "expected a duration like 90s",
        ),
        ("--connect-timeout", "0", "must be more than 0", "e.g. 10s"),
        (
            "--drain-timeout",
            "-1s",
            "'-1s' is not a duration",
            "expected a duration like 90s",
        ),
    ];
    for (flag, value, why, fix) in cases {
        let mut args = listen_args("127.0.0.1:0");
        args.extend([flag.to_string(), value.to_string()]);
        assert_one_line_error(
            run(&args),
            FLAG_ERROR,
            &[&format!("{flag} '{value}'"), why, fix],
        );
    }
}

#[test]
fn missing_listen_or_to() {
    assert_one_line_error(
        run_to_exit(&["--to", "127.0.0.1:9"]),
        FLAG_ERROR,
        &["--listen is required", "e.g. --listen 9300"],
    );
    assert_one_line_error(
        run_to_exit(&["--listen", "127.0.0.1:0"]),
        FLAG_ERROR,
        &["--to is required", "e.g. --to 127.0.0.1:9200"],
    );
}

#[test]
fn unknown_flag_is_a_usage_error_with_exit_2() {
    let (code, out) = run_to_exit(&["--listen", "1", "--to", "h:1", "--bogus"]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("wssify: Unrecognized argument: --bogus"),
        "{out}"
    );
    assert!(out.contains("--help"), "{out}");
    assert!(!out.contains("panicked"), "{out}");
}

// ---------------------------------------------------------------------------
// Bounds: every value is either served or refused, never a panic
// ---------------------------------------------------------------------------

/// Values far past any sane bound, with what the refusal must say. Each
/// once panicked (a semaphore past its permits, `Instant + Duration`
/// overflowing at the first connection or reload), aborted the process (a
/// failed allocation for the threads), or started as if it meant something.
const EXTREMES: &[(&str, &str, &str)] = &[
    ("--max-conns", "9999999999999999999", "at most 10000000"),
    ("--max-conns", "99999999999999999999999", "at most 10000000"),
    (
        "--max-handshakes",
        "9999999999999999999",
        "at most 10000000",
    ),
    (
        "--max-conns-per-ip",
        "9999999999999999999",
        "at most 10000000",
    ),
    ("--threads", "99999999999", "at most 1024"),
    (
        "--handshake-timeout",
        "200000000000000d",
        "longer than 365d",
    ),
    ("--connect-timeout", "200000000000000d", "longer than 365d"),
    ("--idle-timeout", "200000000000000d", "0 means never"),
    ("--stall-timeout", "200000000000000d", "0 means never"),
    ("--drain-timeout", "200000000000000d", "longer than 365d"),
    (
        "--reload-interval",
        "200000000000000d",
        "0 means on SIGHUP only",
    ),
    ("--busy-poll", "200000000000000d", "at most 10ms"),
    ("--max-memory", "16000000T", "at most 64TiB"),
    ("--max-memory", "99999999999999999999999T", "at most 64TiB"),
];

#[test]
fn extreme_values_are_refused_in_one_line_naming_the_flag_and_its_bound() {
    for (flag, value, bound) in EXTREMES {
        let mut args = listen_args("127.0.0.1:0");
        args.extend([flag.to_string(), value.to_string()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        match run_until_listening_or_exit(&args) {
            Outcome::Listening(log) => {
                panic!("{flag} {value} started instead of being refused:\n{log}")
            }
            Outcome::Exited(code, log) => {
                assert_one_line_error(
                    (code, log),
                    FLAG_ERROR,
                    &[&format!("{flag} '{value}': "), bound],
                );
            }
        }
    }
}

/// The bound a refusal names ("at most 1024: ...", "longer than 365d, ..."),
/// asked of the binary itself, so the value tried next is the one it
/// promises to take.
fn bound_named_for(flag: &str, too_big: &str) -> String {
    let mut args = listen_args("127.0.0.1:0");
    args.extend([flag.to_string(), too_big.to_string()]);
    let error = assert_one_line_error(run(&args), FLAG_ERROR, &[flag]);
    ["at most ", "longer than "]
        .iter()
        .find_map(|lead| error.split(lead).nth(1))
        .and_then(|rest| rest.split([' ', ',', ':', ';']).next())
        .unwrap_or_else(|| panic!("no bound named in: {error}"))
        .to_string()
}

#[tokio::test]
async fn the_largest_value_each_refusal_names_starts_serves_and_stops() {
    let f = Files::new();
    let backend = echo_backend().await;
    let mut args = vec![
        "--to".to_string(),
        backend.to_string(),
        "--cert".to_string(),
        p(&f.cert).to_string(),
        "--key".to_string(),
        p(&f.key).to_string(),
    ];
    for flag in [
        "--handshake-timeout",
        "--connect-timeout",
        "--idle-timeout",
        "--stall-timeout",
        "--drain-timeout",
        "--reload-interval",
        "--max-conns",
        "--max-handshakes",
        "--max-conns-per-ip",
        "--threads",
        "--max-memory",
    ] {
        let too_big = if flag.starts_with("--max-memory") {
            "99999999999999999999999T"
        } else if flag.starts_with("--max") || flag == "--threads" {
            "99999999999999999999999"
        } else {
            "200000000000000d"
        };
        args.extend([flag.to_string(), bound_named_for(flag, too_big)]);
    }
    bounded(WAIT * 2, async {
        let mut w = Wssify::start_owned(&args).await;
        let limits = w.wait_for_log("limits: ").await;
        assert!(limits.contains("at most 10000000 connections"), "{limits}");
        assert!(limits.contains("idle timeout 365d"), "{limits}");

        // A handshake deadline is set at accept: a plain HTTP request is
        // answered only after it, on the same path as a TLS client.
        let mut plain = tokio::net::TcpStream::connect(w.addr).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut plain, b"GET / HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let answer = read_to_end(&mut plain).await.unwrap();
        assert!(answer.starts_with(b"HTTP/1.1 400"), "{answer:?}");

        // A proxied connection arms the idle timer.
        let mut tls = tls_connect(
            w.addr,
            pinned_client(&fingerprint(&f.cert_der)),
            "localhost",
        )
        .await
        .unwrap_or_else(|e| panic!("handshake failed: {e}\n{}", w.log()));
        tokio::io::AsyncWriteExt::write_all(&mut tls, b"ping")
            .await
            .unwrap();
        let mut back = [0u8; 4];
        tokio::io::AsyncReadExt::read_exact(&mut tls, &mut back)
            .await
            .unwrap();
        assert_eq!(&back, b"ping");
        tokio::io::AsyncWriteExt::shutdown(&mut tls).await.unwrap();
        read_to_end(&mut tls).await.unwrap();
        w.wait_for_lines("end=", 2).await;

        // Draining with nothing open ends at once, a year's timer or not.
        w.signal("TERM");
        assert_eq!(w.wait_exit(WAIT).await, Some(0), "{}", w.log());
        let log = w.log();
        assert!(!log.contains("panicked"), "{log}");
    })
    .await;
}
