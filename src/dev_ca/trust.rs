//! What each client needs to trust the development CA, as commands to copy:
//! one line at start, the whole list from `wssify --dev-ca show`.
//!
//! Browsers on Linux do not read the system store: Chrome and Chromium
//! read the user's NSS database (`~/.pki/nssdb`), Firefox one NSS database
//! per profile. Node has its own roots (`NODE_EXTRA_CA_CERTS` adds to
//! them). curl, Python's `ssl`, Go and most else read the system store or
//! `SSL_CERT_FILE`. So the list names each.

use std::fmt::Write;
use std::path::Path;

use super::store::{CERT_FILE, CaInfo, KEY_FILE};
use super::system;

/// The one start-up line: the commands most developers need, and where to
/// find the rest.
pub fn short(dir: &Path, info: &CaInfo, port: Option<u16>, dir_given: bool) -> String {
    let ca = sh(&dir.join(CERT_FILE));
    let url = url(port);
    format!(
        "trust the development CA once: curl --cacert {ca} {url} | NODE_EXTRA_CA_CERTS={ca} node app.js | SSL_CERT_FILE={ca} python3 app.py | Chrome/Chromium on Linux: {} (then restart it) | Firefox, the system store, macOS: {}",
        nss_add("sql:\"$HOME\"/.pki/nssdb", &ca, info),
        show_command(dir, dir_given)
    )
}

/// `wssify --dev-ca show`'s whole text.
pub fn full(dir: &Path, info: &CaInfo, port: Option<u16>, dir_given: bool) -> String {
    let ca = sh(&dir.join(CERT_FILE));
    let url = url(port);
    let hostport = url.trim_start_matches("https://").trim_end_matches('/');
    let nick = nickname(info);
    let mut o = String::new();
    let _ = writeln!(o, "wssify development CA");
    let _ = writeln!(
        o,
        "  certificate   {}",
        crate::logsafe::path(&dir.join(CERT_FILE))
    );
    let _ = writeln!(
        o,
        "  private key   {} (readable only by you; never share it)",
        crate::logsafe::path(&dir.join(KEY_FILE))
    );
    let _ = writeln!(o, "  subject       {}", info.subject);
    let _ = writeln!(
        o,
        "  made          {}, valid until {}",
        info.made, info.expires
    );
    let _ = writeln!(
        o,
        "  signs only    {}",
        info.constraints
            .as_deref()
            .map_or("any name (it has no name constraints)".to_string(), |c| {
                format!("{c} (X.509 name constraints)")
            })
    );
    let _ = writeln!(o, "  SHA-256       {}", info.fingerprint);
    let _ = writeln!(o, "  SPKI SHA-256  {} (base64)", info.spki_sha256);
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "wssify signs a new certificate for localhost, 127.0.0.1 and ::1 with this CA at every start\n(without --cert). Trust the CA once, in each client below you use, and every start is trusted.\n{}",
        if port.is_none() {
            "The examples use port 9300: put your --listen port.\n"
        } else {
            ""
        }
    );
    let _ = writeln!(o, "curl");
    let _ = writeln!(o, "  curl --cacert {ca} {url}");
    let _ = writeln!(o);
    let _ = writeln!(o, "Node.js (read at start; adds to Node's own roots)");
    let _ = writeln!(o, "  NODE_EXTRA_CA_CERTS={ca} node app.js");
    let _ = writeln!(
        o,
        "  NODE_EXTRA_CA_CERTS={ca} npx wscat -c wss://{hostport}/"
    );
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "Python (ssl, websockets, aiohttp; requests has its own variable)"
    );
    let _ = writeln!(
        o,
        "  SSL_CERT_FILE={ca} python3 app.py        (this CA only, for that process)"
    );
    let _ = writeln!(
        o,
        "  in code: ssl.create_default_context(cafile={})",
        py_str(&dir.join(CERT_FILE))
    );
    let _ = writeln!(o, "  REQUESTS_CA_BUNDLE={ca} python3 app.py   (requests)");
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "Chromium and Google Chrome on Linux (they read the NSS database, not the system store;\nrestart the browser afterwards; certutil is in libnss3-tools on Debian/Ubuntu, nss-tools on Fedora)"
    );
    let _ = writeln!(o, "  {}", nss_add("sql:\"$HOME\"/.pki/nssdb", &ca, info));
    let _ = writeln!(
        o,
        "  (no such database yet: mkdir -p \"$HOME\"/.pki/nssdb && certutil -d sql:\"$HOME\"/.pki/nssdb -N --empty-password;\n   Chromium from snap: -d sql:\"$HOME\"/snap/chromium/current/.pki/nssdb)"
    );
    let _ = writeln!(
        o,
        "  or, touching no store, a separate Chrome profile that accepts what this CA's key signs\n  (Chrome honours the flag only with --user-data-dir; wssify sends the CA with its certificate):"
    );
    let _ = writeln!(
        o,
        "  google-chrome --user-data-dir=\"$HOME\"/.config/wssify-chrome --ignore-certificate-errors-spki-list={} {url}",
        info.spki_sha256
    );
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "Firefox (one NSS database per profile; close Firefox first)"
    );
    let _ = writeln!(
        o,
        "  for db in \"$HOME\"/.mozilla/firefox/*.default* \"$HOME\"/.config/mozilla/firefox/*.default* \"$HOME\"/snap/firefox/common/.mozilla/firefox/*.default*; do [ -d \"$db\" ] || continue; {}; done",
        nss_add("sql:\"$db\"", &ca, info)
    );
    let _ = writeln!(
        o,
        "  or: Settings > Privacy & Security > Certificates > View Certificates > Authorities > Import {ca},\n      and tick \"Trust this CA to identify websites\""
    );
    let _ = writeln!(
        o,
        "  or, for every profile (as root), in /etc/firefox/policies/policies.json:\n      {{\"policies\": {{\"Certificates\": {{\"Install\": [{}]}}}}}}",
        json_str(&dir.join(CERT_FILE))
    );
    let _ = writeln!(
        o,
        "  on macOS and Windows: add it to the system store (below) and set security.enterprise_roots.enabled\n  to true in about:config"
    );
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "System store (curl, wget, git, Go, Python's ssl and most programs; not Chrome, Firefox or Node on Linux)"
    );
    let _ = writeln!(
        o,
        "  Debian/Ubuntu  sudo cp {ca} {} && sudo update-ca-certificates",
        system::DEBIAN.file
    );
    let _ = writeln!(
        o,
        "  Fedora/RHEL    sudo cp {ca} {} && sudo update-ca-trust",
        system::FEDORA.file
    );
    let _ = writeln!(o, "  Arch           sudo trust anchor --store {ca}");
    let _ = writeln!(
        o,
        "  macOS          sudo security add-trusted-cert -d -r trustRoot -k /Library/Keychains/System.keychain {ca}"
    );
    let _ = writeln!(
        o,
        "  or let wssify do it (Debian/Ubuntu, Fedora/RHEL): {}",
        sudo_command("install", Some(dir))
    );
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "Anything else: SSL_CERT_FILE={ca} works for OpenSSL-based programs, Go and Rust's rustls-native-certs."
    );
    let _ = writeln!(o);
    let _ = writeln!(o, "Check what a client sees");
    let _ = writeln!(
        o,
        "  openssl s_client -connect {hostport} -CAfile {ca} -verify_hostname localhost -verify_return_error </dev/null 2>&1 | grep 'Verify return code'"
    );
    let _ = writeln!(o);
    let _ = writeln!(o, "Stop trusting it");
    let _ = writeln!(
        o,
        "  certutil -d sql:\"$HOME\"/.pki/nssdb -D -n {nick}   (and with each Firefox profile's -d)"
    );
    let _ = writeln!(
        o,
        "  {}   (or delete the file you copied and rerun update-ca-certificates / update-ca-trust)",
        sudo_command("uninstall", None)
    );
    let _ = writeln!(
        o,
        "  {}   deletes the CA itself; the next start makes a new one",
        action_command("remove", dir, dir_given)
    );
    o
}

/// The lines `--dev-ca remove` prints after removing a CA: where it may
/// still be trusted.
pub fn after_removal(info: Option<&CaInfo>) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "Clients that trusted it still trust it until it is removed from each of them (anyone holding a copy of its key could still sign for localhost there); to remove it:"
    );
    if let Some(info) = info {
        let _ = writeln!(
            o,
            "  certutil -d sql:\"$HOME\"/.pki/nssdb -D -n {}   (and with each Firefox profile's -d)",
            nickname(info)
        );
    }
    let _ = writeln!(o, "  {}", sudo_command("uninstall", None));
    let _ = writeln!(
        o,
        "The next start without --cert makes a new CA, to be trusted again."
    );
    o
}

/// `certutil` adding the CA to the NSS database `db` as a CA trusted for
/// TLS servers (`C,,`).
fn nss_add(db: &str, ca: &str, info: &CaInfo) -> String {
    format!("certutil -d {db} -A -t C,, -n {} -i {ca}", nickname(info))
}

/// The CA's nickname in NSS databases, shell-quoted: unique per CA, so that
/// a new CA does not collide with an old one still listed.
fn nickname(info: &CaInfo) -> String {
    let id: String = info.fingerprint.replace(':', "").chars().take(8).collect();
    format!("'wssify development CA {id}'")
}

/// The command that prints the full list for this directory.
fn show_command(dir: &Path, dir_given: bool) -> String {
    action_command("show", dir, dir_given)
}

fn action_command(action: &str, dir: &Path, dir_given: bool) -> String {
    let program = program(false);
    if dir_given {
        format!("{program} --dev-ca {action} --dev-ca-dir {}", sh(dir))
    } else {
        format!("{program} --dev-ca {action}")
    }
}

/// The command to run as root. sudo's PATH rarely holds `~/.cargo/bin`, so
/// the program is named by its full path; and HOME may be root's there, so
/// the directory is named too (`dir: None` for `uninstall`, which needs none).
pub fn sudo_command(action: &str, dir: Option<&Path>) -> String {
    let mut command = format!("sudo {} --dev-ca {action}", program(true));
    if let Some(dir) = dir {
        command.push_str(&format!(" --dev-ca-dir {}", sh(dir)));
    }
    command
}

/// How to run this wssify again: `wssify` when that name on PATH is this
/// very program (and `full` is not asked for), else its full path (e.g.
/// `target/release/wssify` under `cargo run`).
fn program(full: bool) -> String {
    let Ok(exe) = std::env::current_exe() else {
        return "wssify".to_string();
    };
    let Some(name) = exe.file_name() else {
        return "wssify".to_string();
    };
    let real = std::fs::canonicalize(&exe).unwrap_or_else(|_| exe.clone());
    let on_path = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
            .and_then(|found| std::fs::canonicalize(found).ok())
            .is_some_and(|found| found == real)
    });
    if on_path && !full {
        name.to_string_lossy().into_owned()
    } else {
        sh(&exe)
    }
}

fn url(port: Option<u16>) -> String {
    format!("https://localhost:{}/", port.unwrap_or(9300))
}

/// A path as a POSIX shell word: as is when it holds only safe characters,
/// else single-quoted.
pub fn sh(path: &Path) -> String {
    let text = path.to_string_lossy();
    let safe = |c: char| c.is_ascii_alphanumeric() || "/._-+:=@,%".contains(c);
    if !text.is_empty() && text.chars().all(safe) {
        text.into_owned()
    } else if text.chars().any(char::is_control) {
        // ANSI-C quoting (bash, zsh, ksh; POSIX since 2024): a newline or
        // escape code in the path stays on this line, visibly.
        let mut out = String::from("$'");
        for c in text.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\'' => out.push_str("\\'"),
                c if c.is_control() => {
                    let mut buf = [0u8; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        let _ = write!(out, "\\x{b:02x}");
                    }
                }
                c => out.push(c),
            }
        }
        out.push('\'');
        out
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// A path as a Python string literal.
fn py_str(path: &Path) -> String {
    json_str(path)
}

/// A path as a JSON (and Python) string literal.
fn json_str(path: &Path) -> String {
    let mut out = String::from("\"");
    for c in path.to_string_lossy().chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_quoted_for_the_shell_only_when_needed() {
        assert_eq!(
            sh(Path::new("/home/a/.local/share/ca.pem")),
            "/home/a/.local/share/ca.pem"
        );
        assert_eq!(sh(Path::new("/home/a b/ca.pem")), "'/home/a b/ca.pem'");
        assert_eq!(sh(Path::new("/x/it's")), r"'/x/it'\''s'");
        assert_eq!(json_str(Path::new("/a\"b")), r#""/a\"b""#);
    }
}
