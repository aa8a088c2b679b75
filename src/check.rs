//! `wssify --check`: everything a real start would load or bind, validated
//! and summarised without serving, like `nginx -t`, for CI pipelines and
//! for operators before a deploy.
//!
//! Unlike a start, which stops at the first problem, a check reports every
//! problem it finds, and it also judges what a start tolerates: an expired
//! certificate, a chain out of order, a backend that is down.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::net::TcpStream;

use crate::certs::{self, LoadedCert};
use crate::client_auth::{self, Crls};
use crate::dev_ca::{self, Peek};
use crate::listener::{self, Bound};
use crate::loader;
use crate::reload::{Expiry, expiry_note};
use crate::route;
use crate::settings::Way;
use crate::settings::{Backend, DevCert, Settings, format_duration};

/// What a check found, ready to print.
#[derive(Default)]
pub struct Findings {
    lines: Vec<String>,
    problems: usize,
}

impl Findings {
    /// Whether everything is fine (warnings allowed).
    pub fn ok(&self) -> bool {
        self.problems == 0
    }

    /// The whole summary, last line `wssify --check: OK` or `FAILED (N problems)`.
    pub fn render(&self) -> String {
        let mut out = self.lines.join("\n");
        out.push('\n');
        if self.ok() {
            out.push_str("wssify --check: OK\n");
        } else {
            let s = if self.problems == 1 { "" } else { "s" };
            out.push_str(&format!(
                "wssify --check: FAILED ({} problem{s})\n",
                self.problems
            ));
        }
        out
    }

    fn info(&mut self, line: String) {
        self.lines.push(line);
    }

    fn warn(&mut self, line: String) {
        self.lines.push(format!("warning: {line}"));
    }

    fn error(&mut self, line: String) {
        self.problems += 1;
        self.lines.push(format!("error: {line}"));
    }
}

/// Checks every input the settings name, and the backend.
pub async fn check(settings: &Settings) -> Findings {
    let mut found = Findings::default();
    let provider = crate::tls::provider();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let certs = &settings.certs;
    let mut names: HashMap<String, String> = HashMap::new();

    // All held while each is bound, as a start holds every listener, so
    // two values that overlap fail as they would at a start; then closed
    // at once: a check must not leave the ports accepting (and resetting)
    // clients while it goes on to the files and the backends.
    drop(check_listen(&mut found, settings));

    if !settings.terminates() {
        found.info(
            "every client is passed through (--passthrough): no certificate is served".to_string(),
        );
    } else if certs.development() {
        check_development(&mut found, &certs.dev);
    }
    for pair in &certs.pairs {
        let origin = format!("--cert {}", pair.cert.display());
        let loaded = loader::load_pair(pair, &provider).map(|served| served.loaded);
        judge(&mut found, &origin, loaded, now, &mut names);
    }
    for dir in &certs.dirs {
        let entries = match loader::scan_dir(dir) {
            Ok(entries) => entries,
            Err(why) => {
                found.error(why);
                continue;
            }
        };
        // A file without its other half is ignored by a start as by a
        // reload (a cert-manager secret's ca.crt): a warning here too.
        let mut pairs = 0;
        for (name, files) in &entries {
            if let Some(why) = files.unpaired_note(dir, name, false) {
                found.warn(why);
                continue;
            }
            pairs += 1;
            let origin = format!("--cert-dir {}: {name}", dir.display());
            let loaded =
                loader::load_dir_entry(dir, name, files, &provider).map(|served| served.loaded);
            judge(&mut found, &origin, loaded, now, &mut names);
        }
        if pairs == 0 {
            found.error(format!(
                "--cert-dir {}: holds no certificate (NAME.crt with NAME.key, or NAME.pem with both)",
                dir.display()
            ));
        }
    }
    if let Some(acme) = &certs.acme {
        let (_, files) = crate::acme::served_files(acme);
        for (name, path) in files {
            let origin = format!("--acme {name}");
            if !path.exists() {
                found.info(format!(
                    "{origin}: no certificate kept yet ({}); a start orders one from {} with the TLS-ALPN-01 challenge, so the CA must reach this --listen port as port 443 of {name}",
                    path.display(),
                    acme.directory
                ));
                names.insert(name, origin);
                continue;
            }
            let label = format!("{origin}: {}", path.display());
            let loaded = certs::read(&label, &path, "a PEM file with the chain and its key")
                .and_then(|bytes| certs::from_pem(&label, &bytes, &label, &bytes, &provider));
            judge(&mut found, &origin, loaded, now, &mut names);
        }
    }
    for route in settings.routes.iter().filter(|r| r.way == Way::Terminate) {
        if !certs.development() && !names.keys().any(|name| route::covers(name, &route.name)) {
            found.warn(format!(
                "--route {}: no certificate covers this name, so its clients would get the default one, which browsers refuse for it; add --cert/--key for it",
                route.name
            ));
        }
    }
    if let Some(path) = &certs.ticket_keys {
        let label = format!("--ticket-keys {}", path.display());
        let read = crate::tickets::read_file(path).map(|file| file.keys);
        match read {
            Ok(keys) if keys.len() < 3 => found.warn(format!(
                "{label}: {} keys; keep three (previous, current, next) so that a rotation never seals with a key another replica lacks",
                keys.len()
            )),
            Ok(keys) => found.info(format!(
                "{label}: {} keys, sealing with key {}",
                keys.len(),
                crate::tickets::sealing_line(keys.len())
            )),
            Err(why) => found.error(why),
        }
    }
    if let Some(version) = settings.proxy_protocol {
        found.info(format!(
            "--proxy-protocol {version}: each connection to the backend starts with a PROXY protocol {version} header; the backend must expect it"
        ));
    }
    if certs.strict_sni {
        found.info(
            "--strict-sni: clients asking for no name or an unknown one are refused".to_string(),
        );
    }

    if let Some(ca_path) = &certs.client_ca {
        let label = format!("--client-ca {}", ca_path.display());
        let ca = certs::read(&label, ca_path, client_auth::CA_WHAT)
            .and_then(|bytes| client_auth::parse_ca(&label, &bytes));
        let mut crls: Vec<Crls> = Vec::new();
        for path in &certs.crls {
            let label = format!("--crl {}", path.display());
            match certs::read(&label, path, client_auth::CRL_WHAT)
                .and_then(|bytes| client_auth::parse_crl(&label, &bytes))
            {
                Ok(list) => {
                    found.info(format!("{label}: {} revoked certificates", list.revoked));
                    crls.push(list);
                }
                Err(why) => found.error(why),
            }
        }
        match ca {
            Err(why) => found.error(why),
            Ok(ca) => {
                let lists: Vec<&Crls> = crls.iter().collect();
                match client_auth::verifier(&ca, &lists, certs.client_ca_optional, provider.clone())
                {
                    Ok(_) => found.info(format!(
                        "{label}: {} CA certificates; client certificates {}",
                        ca.count,
                        if certs.client_ca_optional {
                            "optional (bad ones refused)"
                        } else {
                            "required"
                        }
                    )),
                    Err(why) => found.error(why),
                }
            }
        }
    }

    check_backends(&mut found, settings).await;
    found
}

/// Binds each `--listen` value as a start would (without accepting
/// anything) and reports what a start would stop at, in a start's words:
/// a port in use, a privileged port without the privilege, an address
/// not on this host. A port held by another wssify is a warning: most
/// likely the one these flags are about to replace, which frees it first.
fn check_listen(found: &mut Findings, settings: &Settings) -> Vec<Bound> {
    let mut bound = Vec::new();
    for addr in &settings.listen {
        if let crate::settings::ListenAddr::Systemd(_) = addr {
            found.info(format!(
                "--listen {addr}: the sockets systemd passes are taken at start; check the socket unit with systemd-analyze verify"
            ));
            continue;
        }
        match listener::try_bind(addr, false) {
            Ok(b) => {
                found.info(format!(
                    "--listen {addr}: free; a start listens on {}{}",
                    b.local_addr, b.scope
                ));
                bound.push(b);
            }
            Err(e) if e.held_by_wssify => found.warn(format!(
                "{}; if that is the wssify these flags replace, a start succeeds once it has stopped",
                e.message
            )),
            Err(e) => found.error(e.message.to_string()),
        }
    }
    bound
}

/// What a start would serve without --cert, looking at the development CA
/// without making or changing anything.
fn check_development(found: &mut Findings, dev: &DevCert) {
    const PRODUCTION: &str = "give --cert/--key or --cert-dir in production";
    let (dir, given) = match dev {
        DevCert::InMemory => {
            return found.info(format!(
                "certificate: none given, --self-signed: a self-signed development certificate made in memory would be served; {PRODUCTION}"
            ));
        }
        DevCert::Ca(Some(dir)) => (dir.clone(), true),
        DevCert::Ca(None) => match dev_ca::default_dir() {
            Ok(dir) => (dir, false),
            Err(why) => {
                return found.warn(format!(
                    "certificate: none given, and no development CA ({why}), so a self-signed development certificate made in memory would be served; {PRODUCTION}"
                ));
            }
        },
    };
    let at = format!("the development CA in {}", crate::logsafe::path(&dir));
    match dev_ca::store::peek(&dir) {
        Peek::Good(ca) => found.info(format!(
            "certificate: none given, so a development certificate would be served, signed by {at} ({}, expires {}, sha256 {}); {PRODUCTION}",
            ca.info.subject, ca.info.expires, ca.info.fingerprint
        )),
        Peek::Missing => found.info(format!(
            "certificate: none given, so a development certificate would be served, signed by {at}, which the first start makes{}; {PRODUCTION}",
            if given {
                ""
            } else {
                " (or, where it cannot be written, a self-signed one made in memory)"
            }
        )),
        Peek::Replaceable(why) => found.warn(format!(
            "certificate: none given; {at} cannot be used ({why}): a start would make a new one, which clients must trust again"
        )),
        Peek::Refused(why) => found.error(why),
    }
}

/// Adds what is known about one certificate (or why it could not load).
fn judge(
    found: &mut Findings,
    origin: &str,
    loaded: Result<LoadedCert, String>,
    now: i64,
    names: &mut HashMap<String, String>,
) {
    let loaded = match loaded {
        Ok(loaded) => loaded,
        Err(why) => return found.error(why),
    };
    let s = &loaded.summary;
    let days = s.not_after.saturating_sub(now) / 86_400;
    let chain = &loaded.certified_key.cert;
    let order = certs::chain_order_problem(chain);
    found.info(format!(
        "certificate {origin}: {}; names {}; expires {} ({days} days); chain of {}{}; sha256 {}",
        s.subject,
        if s.names.is_empty() {
            "none".to_string()
        } else {
            s.names.join(", ")
        },
        s.expires,
        s.chain_len,
        if order.is_none() && s.chain_len > 1 {
            ", in order"
        } else {
            ""
        },
        s.fingerprint
    ));
    if let Some(why) = order {
        found.error(format!("{origin}: {why}"));
    }
    if let Some(why) = &s.chain_warning {
        found.warn(format!("{origin}: {why}"));
    }
    match expiry_note(s, origin, now) {
        Some(Expiry::Expired(_)) => found.error(format!(
            "{origin}: certificate {} expired on {}; renew it",
            s.subject, s.expires
        )),
        Some(Expiry::Soon(line)) => found.warn(line),
        None => {}
    }
    if s.dns_names.is_empty() && s.names.is_empty() {
        found.error(format!(
            "{origin}: certificate {} names no host (no subjectAltName, no common name); clients will refuse it",
            s.subject
        ));
    }
    for name in &s.dns_names {
        if let Some(first) = names.get(name) {
            found.warn(format!(
                "{origin}: the name {name} is also in {first}, which comes first and is served for it"
            ));
        } else {
            names.insert(name.clone(), origin.to_string());
        }
    }
}

/// Every backend must resolve and accept a TCP connection (or a UNIX
/// socket's) within the connect timeout, as it would for a client.
async fn check_backends(found: &mut Findings, settings: &Settings) {
    for backend in &settings.backends {
        check_backend(found, settings, backend, "--to").await;
    }
    for route in &settings.routes {
        let flag = format!("{} {}", route.way.flag(), route.name);
        for backend in &route.backends {
            check_backend(found, settings, backend, &flag).await;
        }
    }
}

/// One `--to`: it must resolve and one of its addresses accept.
async fn check_backend(found: &mut Findings, settings: &Settings, backend: &Backend, flag: &str) {
    let limit = settings.connect_timeout;
    let (host, port) = match backend {
        Backend::Tcp { host, port } => (host.as_str(), *port),
        Backend::Unix(path) => return check_unix_backend(found, limit, backend, path, flag).await,
    };
    let lookup = tokio::net::lookup_host((host, port));
    let addrs: Vec<_> = match tokio::time::timeout(limit, lookup).await {
        Ok(Ok(addrs)) => addrs.collect(),
        Ok(Err(e)) => {
            return found.error(format!(
                "backend {backend} ({flag}) does not resolve ({e}); fix the name or start its container"
            ));
        }
        Err(_) => {
            return found.error(format!(
                "backend {backend} ({flag}) did not resolve within {}",
                format_duration(limit)
            ));
        }
    };
    let mut failures = Vec::new();
    for addr in &addrs {
        match tokio::time::timeout(limit, TcpStream::connect(addr)).await {
            Ok(Ok(_)) => {
                return found.info(format!("backend {backend}: {addr} accepts TCP connections"));
            }
            Ok(Err(e)) => failures.push(format!("{addr} refused ({e})")),
            Err(_) => failures.push(format!(
                "{addr} gave no answer within {}",
                format_duration(limit)
            )),
        }
    }
    if failures.is_empty() {
        failures.push("the name resolved to no address".to_string());
    }
    found.error(format!(
        "backend {backend} ({flag}) is unreachable: {}; start it, or fix {flag}",
        failures.join(", ")
    ));
}

/// One `--to unix:/path`: something must listen on it, and wssify may
/// connect to it; the error names the path and what to do.
async fn check_unix_backend(
    found: &mut Findings,
    limit: std::time::Duration,
    backend: &Backend,
    path: &std::path::Path,
    flag: &str,
) {
    let addr = crate::backend::Addr::Unix(path.to_path_buf());
    match tokio::time::timeout(limit, addr.connect()).await {
        Ok(Ok(_)) => found.info(format!("backend {backend} accepts connections")),
        Ok(Err(e)) => found.error(format!("backend {backend} ({flag}) is unreachable: {e}")),
        Err(_) => found.error(format!(
            "backend {backend} ({flag}) gave no answer within {}; is its backlog full?",
            format_duration(limit)
        )),
    }
}
