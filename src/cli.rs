//! The command line: flags as the user types them, turned into [`Settings`].
//!
//! Every mistake a user can make on the command line is caught here and
//! reported as one line that names the flag and says what was expected.

use std::path::PathBuf;

use argh::FromArgs;

use crate::dev_ca;
use crate::error::StartupError;
use crate::settings::{
    Backend, Balance, CertPair, CertSettings, DevCert, ListenAddr, LogFormat, MAX_BUSY_POLL,
    MAX_CONNS, MAX_MAX_MEMORY, MAX_THREADS, MIN_MAX_MEMORY, Route, Settings, TlsMin, ValueError,
    Way, default_threads, format_duration, format_size, listen_overlap, parse_admin, parse_backend,
    parse_duration, parse_listen, parse_route, parse_size,
};
use crate::wire::proxy_header::Version as ProxyVersion;

/// Accept TLS (wss://, https://, any TCP) on its own port and pipe the raw
/// bytes to a plain backend (ws://). No HTTP is parsed.
#[derive(FromArgs, Debug)]
#[argh(
    help_triggers("-h", "--help", "help"),
    example = "Put wss://localhost:9300 in front of a ws:// server on port 9200, with a\ndevelopment certificate signed by a local CA made once (trust it once):\n  $ {command_name} --listen 9300 --to 127.0.0.1:9200\n  $ {command_name} --dev-ca show      (where that CA is, and how to trust it in each client)",
    example = "Serve a real certificate on 443 to a backend found by name:\n  $ {command_name} --listen 443 --to ws-server:9200 --cert fullchain.pem --key privkey.pem --idle-timeout 1d",
    example = "Share port 443 with the site's https server (moved to 8443): wss:// for one\nname ends here, every other name passes through to the site untouched:\n  $ {command_name} --listen 443 --route ws.example.com=127.0.0.1:9200 --cert ws.pem --key ws.key --passthrough '*=127.0.0.1:8443'",
    example = "A trusted certificate obtained and renewed by itself (Let's Encrypt, port 443):\n  $ {command_name} --listen 443 --to 127.0.0.1:9200 --acme ws.example.com --acme-email ops@example.com",
    example = "Check certificates, keys, ports and the backend before a deploy, serving nothing:\n  $ {command_name} --check --listen 443 --to ws-server:9200 --cert fullchain.pem --key privkey.pem",
    note = "Durations read like 90s, 5m, 1h30m, 1d, 250ms or plain seconds, at most 365d.\nSizes read like 64MiB or 1GiB. Counts go up to 10000000, --threads to 1024.\nRUST_LOG=debug shows more.\nCertificate files are re-read when they change, with no restart and no open\nconnection touched; SIGHUP re-reads them too. SIGTERM or SIGINT drains open\nconnections for --drain-timeout; a second signal exits at once."
)]
pub struct Args {
    /// where to accept TLS: a port (all interfaces, IPv4 and IPv6), IP:PORT,
    /// [IPv6]:PORT, unix:/path (a local socket, made at start, removed at
    /// exit) or systemd[:NAME] (the sockets a systemd socket unit passed);
    /// repeatable; required unless started by a socket unit
    #[argh(option, short = 'l', arg_name = "ADDR")]
    pub listen: Vec<String>,

    /// permissions of each --listen unix: socket, in octal as for chmod;
    /// connecting takes write permission (default: 660, owner and group)
    #[argh(option, arg_name = "MODE")]
    pub unix_mode: Option<String>,

    /// the plain backend, HOST:PORT (a bare PORT means 127.0.0.1:PORT) or
    /// unix:/path/to.sock; repeatable: several backends share the clients (--balance), and a
    /// name counts each address it resolves to; required unless --route and
    /// --passthrough serve every client
    #[argh(option, short = 't', arg_name = "HOST:PORT")]
    pub to: Vec<String>,

    /// terminate clients whose SNI is NAME (exact, or *.example.com) with
    /// the certificate for NAME and forward them to BACKEND (as for --to)
    /// instead; repeatable, and a name given again gets several backends
    #[argh(option, arg_name = "NAME=HOST:PORT")]
    pub route: Vec<String>,

    /// pass clients whose SNI is NAME through untouched to the TLS server
    /// at HOST:PORT (TLS is not ended here); '*' for every name nothing
    /// else serves; repeatable
    #[argh(option, arg_name = "NAME=HOST:PORT")]
    pub passthrough: Vec<String>,

    /// how clients are spread over the backends: round-robin, least-conn
    /// (fewest open connections), random, or ip-hash (one client address
    /// sticks to one backend) (default: round-robin)
    #[argh(option, arg_name = "POLICY")]
    pub balance: Option<String>,

    /// most backends a client's connection tries before it is closed
    /// (default: every backend once)
    #[argh(option, arg_name = "N")]
    pub connect_retries: Option<String>,

    /// how often backend names are resolved again, in the background
    /// (default: 30s)
    #[argh(option, arg_name = "DURATION")]
    pub resolve_interval: Option<String>,

    /// PEM certificate chain, leaf first; repeatable, each with its --key,
    /// chosen by the client's SNI, the first is the default (default: a
    /// certificate for localhost signed at each start by the local
    /// development CA; see --dev-ca)
    #[argh(option, arg_name = "FILE")]
    pub cert: Vec<PathBuf>,

    /// PEM private key for the --cert in the same position (PKCS#8, PKCS#1
    /// RSA or SEC1 EC)
    #[argh(option, arg_name = "FILE")]
    pub key: Vec<PathBuf>,

    /// a directory of NAME.crt + NAME.key (or combined NAME.pem) pairs, all
    /// served by SNI; a file without its pair (a CA's ca.crt) is ignored
    /// with a warning; additions and removals are followed; repeatable
    #[argh(option, arg_name = "DIR")]
    pub cert_dir: Vec<PathBuf>,

    /// without --cert: keep the development CA in DIR (default:
    /// $XDG_DATA_HOME/wssify/dev-ca or ~/.local/share/wssify/dev-ca; where
    /// that cannot be written, an in-memory certificate is served instead)
    #[argh(option, arg_name = "DIR")]
    pub dev_ca_dir: Option<PathBuf>,

    /// without --cert: serve a self-signed certificate made in memory at
    /// each start instead (nothing is written; clients must trust it again
    /// after every restart)
    #[argh(switch)]
    pub self_signed: bool,

    /// act on the development CA and exit: show (where it is, how to trust
    /// it in browsers, curl, Node, Python and the system store; made if
    /// missing), remove, install or uninstall (the system store; needs
    /// root)
    #[argh(option, arg_name = "ACTION")]
    pub dev_ca: Option<String>,

    /// refuse clients whose SNI matches no certificate (unrecognized_name
    /// alert) instead of serving the first certificate
    #[argh(switch)]
    pub strict_sni: bool,

    /// require client certificates that chain to this PEM CA bundle (mTLS)
    #[argh(option, arg_name = "FILE")]
    pub client_ca: Option<PathBuf>,

    /// with --client-ca: admit clients without a certificate (bad ones are
    /// still refused)
    #[argh(switch)]
    pub client_ca_optional: bool,

    /// certificate revocation list (PEM or DER) for client certificates;
    /// repeatable; needs --client-ca
    #[argh(option, arg_name = "FILE")]
    pub crl: Vec<PathBuf>,

    /// seal TLS session tickets with the keys in FILE, which every replica
    /// shares, so clients resume on any of them: one key per line, 80 random
    /// bytes in base64 (openssl rand 80 | openssl base64 -A), the second to
    /// last seals (HAProxy's tls-ticket-keys layout); re-read like certificates
    #[argh(option, arg_name = "FILE")]
    pub ticket_keys: Option<PathBuf>,

    /// certificate files are re-read on change (directories are watched),
    /// on SIGHUP, and at this interval; 0 = only on SIGHUP (default: 30s)
    #[argh(option, arg_name = "DURATION")]
    pub reload_interval: Option<String>,

    /// obtain and renew a trusted certificate for NAME from an ACME CA
    /// (Let's Encrypt by default), proving control of it with TLS-ALPN-01 on
    /// the listening port (which must be reachable as port 443); one
    /// certificate per name; repeatable
    #[argh(option, arg_name = "NAME")]
    pub acme: Vec<String>,

    /// with --acme: the contact the CA writes to about the account
    #[argh(option, arg_name = "EMAIL")]
    pub acme_email: Option<String>,

    /// with --acme: the ACME server's directory URL (default: Let's
    /// Encrypt, https://acme-v02.api.letsencrypt.org/directory)
    #[argh(option, arg_name = "URL")]
    pub acme_ca: Option<String>,

    /// with --acme: use Let's Encrypt's staging CA (untrusted certificates,
    /// generous rate limits) to try a setup out
    #[argh(switch)]
    pub acme_staging: bool,

    /// with --acme: trust this PEM certificate for the ACME server's HTTPS
    /// instead of the system's roots (Pebble, step-ca, a company CA)
    #[argh(option, arg_name = "FILE")]
    pub acme_ca_root: Option<PathBuf>,

    /// with --acme: keep the account, keys and certificates in DIR
    /// (default: $STATE_DIRECTORY/acme under systemd, else
    /// $XDG_STATE_HOME/wssify/acme or ~/.local/state/wssify/acme)
    #[argh(option, arg_name = "DIR")]
    pub acme_dir: Option<PathBuf>,

    /// with --acme: renew once less than this is left, whatever the CA
    /// suggests (default: the CA's renewal window, else at two thirds of
    /// the lifetime)
    #[argh(option, arg_name = "DURATION")]
    pub acme_renew_before: Option<String>,

    /// load and validate every file, key and chain, bind each --listen for
    /// a moment, and connect to the backend once; print a summary and exit
    /// 0 if all is well, 1 if not; serves nothing
    #[argh(switch)]
    pub check: bool,

    /// close a connection after this long with no byte moving either way;
    /// 0 = never (default: 1h)
    #[argh(option, arg_name = "DURATION")]
    pub idle_timeout: Option<String>,

    /// close a connection when the client or backend has taken none of the
    /// bytes waiting for it for this long; 0 = never (default: 5m)
    #[argh(option, arg_name = "DURATION")]
    pub stall_timeout: Option<String>,

    /// limit on a client's TLS handshake (default: 10s)
    #[argh(option, arg_name = "DURATION")]
    pub handshake_timeout: Option<String>,

    /// limit on each attempt to connect to a backend; one that does not
    /// answer in time is skipped for the next (default: 5s)
    #[argh(option, arg_name = "DURATION")]
    pub connect_timeout: Option<String>,

    /// on SIGTERM/SIGINT, how long open connections may finish (default: 30s)
    #[argh(option, arg_name = "DURATION")]
    pub drain_timeout: Option<String>,

    /// most connections at once; more wait to be accepted (default: what
    /// both the open-file limit and --max-memory can carry)
    #[argh(option, arg_name = "N")]
    pub max_conns: Option<String>,

    /// connections open at once from one client IP address; over it a new
    /// connection is closed at once (default: no limit, as mobile carriers
    /// put many users behind one address)
    #[argh(option, arg_name = "N")]
    pub max_conns_per_ip: Option<String>,

    /// TLS handshakes in progress at once; more clients wait to be accepted
    /// (default: 256 per core)
    #[argh(option, arg_name = "N")]
    pub max_handshakes: Option<String>,

    /// memory all connections' buffers may hold together, e.g. 64MiB; when
    /// reached, connections stop reading until buffers drain (default: half
    /// the container's memory limit, else a quarter of physical memory)
    #[argh(option, arg_name = "SIZE")]
    pub max_memory: Option<String>,

    /// oldest TLS version to accept: 1.2 or 1.3 (default: 1.2)
    #[argh(option, arg_name = "VERSION")]
    pub tls_min: Option<String>,

    /// ALPN protocol to offer, e.g. http/1.1; repeatable, in order of
    /// preference (default: none, so browsers use http/1.1 as WebSocket needs)
    #[argh(option, arg_name = "PROTO")]
    pub alpn: Vec<String>,

    /// send the backend a PROXY protocol header before any client byte, v1
    /// (a text line) or v2 (binary, with the SNI, ALPN and TLS facts), so
    /// that it sees the client's address (default: off)
    #[argh(option, arg_name = "VERSION")]
    pub proxy_protocol: Option<String>,

    /// worker threads (default: the cores available)
    #[argh(option, arg_name = "N")]
    pub threads: Option<String>,

    /// before an idle worker sleeps, keep checking for I/O this long, e.g.
    /// 200us: lower latency (most on VMs) for more CPU; at most 10ms
    /// (default: 0, off)
    #[argh(option, arg_name = "DURATION")]
    pub busy_poll: Option<String>,

    /// where TLS handshakes run: auto (on threads of the lowest CPU
    /// priority while connections open a second or more carry messages, so
    /// a flood of handshakes cannot delay them; on the connections' own
    /// threads while those get no CPU), low (always there: for cores wssify
    /// has to itself), normal (never) (default: auto)
    #[argh(option, arg_name = "MODE")]
    pub handshake_priority: Option<String>,

    /// let a newer wssify started with this flag bind the same TCP port
    /// while this one runs: new clients go to the newer one at once, and
    /// this one, sent SIGTERM, drains; an upgrade refuses no client
    #[argh(switch)]
    pub reuse_port: bool,

    /// serve plain-HTTP /metrics (Prometheus), /healthz and /readyz on this
    /// address; a bare port means 127.0.0.1 (default: off)
    #[argh(option, arg_name = "ADDR")]
    pub admin: Option<String>,

    /// log lines as text or json, one object per line (default: text)
    #[argh(option, arg_name = "FORMAT")]
    pub log_format: Option<String>,

    /// print the version and exit
    #[argh(switch, short = 'V')]
    pub version: bool,
}

/// The flags that take a value, each with what its value is: the forms
/// argh does not take (`--listen=9300`) are rewritten only for these, so
/// that an `=` inside a value stays where it is. A unit test holds this
/// list to [`Args`].
const VALUE_FLAGS: [(&str, &str); 40] = [
    ("--listen", "ADDR"),
    ("--unix-mode", "MODE"),
    ("--to", "HOST:PORT"),
    ("--route", "NAME=HOST:PORT"),
    ("--passthrough", "NAME=HOST:PORT"),
    ("--balance", "POLICY"),
    ("--connect-retries", "N"),
    ("--resolve-interval", "DURATION"),
    ("--cert", "FILE"),
    ("--key", "FILE"),
    ("--cert-dir", "DIR"),
    ("--dev-ca-dir", "DIR"),
    ("--dev-ca", "ACTION"),
    ("--client-ca", "FILE"),
    ("--crl", "FILE"),
    ("--ticket-keys", "FILE"),
    ("--reload-interval", "DURATION"),
    ("--acme", "NAME"),
    ("--acme-email", "EMAIL"),
    ("--acme-ca", "URL"),
    ("--acme-ca-root", "FILE"),
    ("--acme-dir", "DIR"),
    ("--acme-renew-before", "DURATION"),
    ("--idle-timeout", "DURATION"),
    ("--stall-timeout", "DURATION"),
    ("--handshake-timeout", "DURATION"),
    ("--connect-timeout", "DURATION"),
    ("--drain-timeout", "DURATION"),
    ("--max-conns", "N"),
    ("--max-conns-per-ip", "N"),
    ("--max-handshakes", "N"),
    ("--max-memory", "SIZE"),
    ("--tls-min", "VERSION"),
    ("--alpn", "PROTO"),
    ("--proxy-protocol", "VERSION"),
    ("--threads", "N"),
    ("--busy-poll", "DURATION"),
    ("--admin", "ADDR"),
    ("--log-format", "FORMAT"),
    ("--handshake-priority", "MODE"),
];
/// The short names of flags that take a value.
const SHORT_VALUE_FLAGS: [&str; 2] = ["-l", "-t"];
/// The flags that take no value.
const SWITCHES: [&str; 8] = [
    "--self-signed",
    "--reuse-port",
    "--acme-staging",
    "--strict-sni",
    "--client-ca-optional",
    "--check",
    "--version",
    "-V",
];
/// What asks for the help, wherever a flag may stand.
const HELP: [&str; 3] = ["-h", "--help", "help"];

/// The command line, rewritten into what argh takes.
#[derive(Debug, PartialEq, Eq)]
pub enum CommandLine {
    /// `-h`, `--help` or `help` stood where a flag may: print the help.
    Help,
    /// The arguments for [`Args`].
    Args(Vec<String>),
}

/// Rewrites the forms people type that argh does not take, before argh
/// parses: `--flag=value` (as Kubernetes `args:` and many scripts write
/// it) becomes `--flag value`, split at the first `=` and only for a
/// known flag that takes a value, so the value itself may hold `=` or
/// start with `-` and is still a value; `-h` and `--help` anywhere a flag
/// may stand ask for the help, even with other flags before or after.
/// What follows a flag that takes a value is its value, whatever it looks
/// like, as argh reads it; everything after `--` is left alone.
pub fn prepare(args: &[String]) -> Result<CommandLine, StartupError> {
    let takes_value = |name: &str| {
        VALUE_FLAGS.iter().any(|(flag, _)| *flag == name) || SHORT_VALUE_FLAGS.contains(&name)
    };
    let mut out = Vec::with_capacity(args.len() + 1);
    let mut help = false;
    let mut mistake = None;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        if arg == "--" {
            out.push(arg.clone());
            out.extend(rest.cloned());
            break;
        }
        if HELP.contains(&arg.as_str()) {
            help = true;
            continue;
        }
        if takes_value(arg) {
            out.push(arg.clone());
            out.extend(rest.next().cloned());
            continue;
        }
        if arg.starts_with("--")
            && let Some((name, value)) = arg.split_once('=')
        {
            if let Some((_, what)) = VALUE_FLAGS.iter().find(|(flag, _)| *flag == name) {
                if value.is_empty() {
                    mistake.get_or_insert_with(|| {
                        StartupError::new(format!(
                            "{name}= has no value after the '='; write {name}={what} or {name} {what}"
                        ))
                    });
                }
                out.push(name.to_string());
                out.push(value.to_string());
                continue;
            }
            if SWITCHES.contains(&name) {
                mistake.get_or_insert_with(|| {
                    StartupError::new(format!("{name} takes no value; write {name} alone"))
                });
                continue;
            }
        }
        out.push(arg.clone());
    }
    match mistake {
        _ if help => Ok(CommandLine::Help),
        Some(mistake) => Err(mistake),
        None => Ok(CommandLine::Args(out)),
    }
}

impl Args {
    /// `--dev-ca ACTION`, checked: `None` when not given. It acts and
    /// exits, so it takes no flag but `--dev-ca-dir`.
    pub fn dev_ca_action(&self) -> Result<Option<dev_ca::Action>, StartupError> {
        let Some(text) = &self.dev_ca else {
            return Ok(None);
        };
        let action = dev_ca::Action::parse(text).ok_or_else(|| {
            flag_error(
                "--dev-ca",
                text,
                "expected show, remove, install or uninstall",
            )
        })?;
        let serving = [
            (!self.listen.is_empty(), "--listen"),
            (!self.to.is_empty(), "--to"),
            (!self.cert.is_empty(), "--cert"),
            (!self.key.is_empty(), "--key"),
            (!self.cert_dir.is_empty(), "--cert-dir"),
            (self.self_signed, "--self-signed"),
            (self.check, "--check"),
        ];
        if let Some((_, flag)) = serving.iter().find(|(given, _)| *given) {
            return Err(StartupError::new(format!(
                "--dev-ca {text} acts on the development CA and exits, so {flag} has no use with it: run them separately"
            )));
        }
        Ok(Some(action))
    }

    /// Checks every flag and builds the settings, or says which flag is wrong.
    pub fn into_settings(self) -> Result<Settings, StartupError> {
        // Started by a socket unit without --listen: its sockets are where.
        let activated = ["systemd".to_string()];
        let listen_flags: &[String] = if self.listen.is_empty() && crate::systemd::has_passed() {
            &activated
        } else {
            &self.listen
        };
        if listen_flags.is_empty() {
            return Err(StartupError::new(
                "--listen is required: give the port to accept TLS on, e.g. --listen 9300",
            ));
        }
        let mut listen = listen_flags
            .iter()
            .map(|text| parse_listen(text).map_err(|why| flag_error("--listen", text, &why)))
            .collect::<Result<Vec<ListenAddr>, _>>()?;
        if let Some(text) = &self.unix_mode {
            let mode =
                parse_unix_mode(text).map_err(|why| flag_error("--unix-mode", text, &why))?;
            let mut unix = listen.iter_mut().filter_map(|addr| match addr {
                ListenAddr::Unix { mode, .. } => Some(mode),
                _ => None,
            });
            let mut any = false;
            for each in &mut unix {
                *each = mode;
                any = true;
            }
            if !any {
                return Err(flag_error(
                    "--unix-mode",
                    text,
                    "it sets the mode of --listen unix: sockets, and none is given",
                ));
            }
        }
        if let Some(why) = listen_overlap(&listen) {
            return Err(StartupError::new(why));
        }

        let routes = self.routes()?;
        if self.to.is_empty() && routes.is_empty() {
            return Err(StartupError::new(
                "--to is required: give the plain backend to forward to, e.g. --to 127.0.0.1:9200 (or route names with --route NAME=HOST:PORT, --passthrough NAME=HOST:PORT)",
            ));
        }
        if !self.to.is_empty()
            && let Some(all) = routes.iter().find(|r| r.name == "*")
        {
            return Err(StartupError::new(format!(
                "--to and --passthrough '*={}' both claim every name no route serves: keep --to to terminate them here, or '*' to pass them through",
                all.backends[0]
            )));
        }
        let mut backends: Vec<Backend> = Vec::new();
        for to in &self.to {
            let backend = parse_backend(to).map_err(|why| flag_error("--to", to, &why))?;
            if matches!(backend, Backend::Tcp { port: 0, .. }) {
                return Err(flag_error("--to", to, "port 0 cannot be connected to"));
            }
            if backends.contains(&backend) {
                return Err(flag_error(
                    "--to",
                    to,
                    "given twice; give each backend once",
                ));
            }
            backends.push(backend);
        }
        let mut settings = Settings::serving(listen, backends);
        settings.routes = routes;
        if let Some(text) = &self.balance {
            settings.balance =
                Balance::parse(text).map_err(|why| flag_error("--balance", text, &why))?;
        }
        if let Some(text) = &self.connect_retries {
            settings.connect_retries = Some(count_flag(
                "--connect-retries",
                text,
                1000,
                "each attempt goes to another backend",
            )?);
        }
        if let Some(text) = &self.resolve_interval {
            settings.resolve_interval = positive_duration_flag("--resolve-interval", text)?;
        }

        settings.certs = self.cert_settings()?;
        settings.certs.dev_names = settings
            .routes
            .iter()
            .filter(|r| r.way == Way::Terminate && r.name.ends_with(".localhost"))
            .map(|r| r.name.clone())
            .collect();

        if let Some(text) = &self.idle_timeout {
            settings.idle_timeout =
                optional_duration_flag("--idle-timeout", text, "0 means never")?;
        }
        if let Some(text) = &self.handshake_timeout {
            settings.handshake_timeout = positive_duration_flag("--handshake-timeout", text)?;
        }
        if let Some(text) = &self.connect_timeout {
            settings.connect_timeout = positive_duration_flag("--connect-timeout", text)?;
        }
        if let Some(text) = &self.drain_timeout {
            settings.drain_timeout = duration_flag("--drain-timeout", text)?;
        }
        if let Some(text) = &self.max_conns {
            settings.max_conns = Some(count_flag(
                "--max-conns",
                text,
                MAX_CONNS,
                "each connection holds two open files and about 6KiB even when idle, so no host carries more",
            )?);
        }
        if let Some(text) = &self.max_memory {
            settings.max_memory = Some(memory_flag("--max-memory", text)?);
        }
        if let Some(text) = &self.stall_timeout {
            settings.stall_timeout =
                optional_duration_flag("--stall-timeout", text, "0 means never")?;
        }
        if let Some(text) = &self.max_handshakes {
            settings.max_handshakes = count_flag(
                "--max-handshakes",
                text,
                MAX_CONNS,
                "the most connections wssify takes (the default is 256 per core)",
            )?;
        }
        if let Some(text) = &self.max_conns_per_ip {
            settings.max_conns_per_ip = Some(count_flag(
                "--max-conns-per-ip",
                text,
                MAX_CONNS,
                "the most connections wssify takes; leave the flag out for no limit",
            )?);
        }
        if let Some(text) = &self.threads {
            let why = format!(
                "more workers than cores only take turns; the default is one per core ({} here)",
                default_threads()
            );
            settings.threads = count_flag("--threads", text, MAX_THREADS, &why)?;
        }
        if let Some(text) = &self.handshake_priority {
            use crate::priority::HandshakePriority;
            settings.handshake_priority = match text.trim() {
                "auto" => HandshakePriority::Auto,
                "low" => HandshakePriority::Low,
                "normal" => HandshakePriority::Normal,
                _ => {
                    return Err(flag_error(
                        "--handshake-priority",
                        text,
                        "expected auto, low or normal",
                    ));
                }
            };
        }
        settings.reuse_port = self.reuse_port;
        if let Some(text) = &self.admin {
            settings.admin =
                Some(parse_admin(text).map_err(|why| flag_error("--admin", text, &why))?);
        }
        if let Some(text) = &self.log_format {
            settings.log_format = match text.trim() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                _ => return Err(flag_error("--log-format", text, "expected text or json")),
            };
        }
        if let Some(text) = &self.busy_poll {
            let too_long = || {
                let why = format!(
                    "at most {}: a longer spin costs more CPU than the wake-up it saves; try 200us",
                    format_duration(MAX_BUSY_POLL)
                );
                flag_error("--busy-poll", text, &why)
            };
            let window = match parse_duration(text) {
                Ok(window) if window <= MAX_BUSY_POLL => window,
                Ok(_) | Err(ValueError::TooLarge(_)) => return Err(too_long()),
                Err(why) => return Err(flag_error("--busy-poll", text, &why.to_string())),
            };
            settings.busy_poll = (!window.is_zero()).then_some(window);
        }
        if let Some(text) = &self.tls_min {
            settings.tls_min = match text.trim() {
                "1.2" => TlsMin::V1_2,
                "1.3" => TlsMin::V1_3,
                _ => return Err(flag_error("--tls-min", text, "expected 1.2 or 1.3")),
            };
        }
        if let Some(text) = &self.proxy_protocol {
            settings.proxy_protocol = match text.trim() {
                "v1" | "1" => Some(ProxyVersion::V1),
                "v2" | "2" => Some(ProxyVersion::V2),
                _ => {
                    return Err(flag_error(
                        "--proxy-protocol",
                        text,
                        "expected v1 or v2 (the backend must expect the same)",
                    ));
                }
            };
        }
        for proto in &self.alpn {
            if proto.is_empty() || proto.len() > 255 {
                return Err(flag_error(
                    "--alpn",
                    proto,
                    "a protocol name is 1 to 255 bytes, e.g. http/1.1",
                ));
            }
            settings.alpn.push(proto.as_bytes().to_vec());
        }
        Ok(settings)
    }
}

impl Args {
    /// `--route` and `--passthrough`, one [`Route`] per name with its
    /// backends in order. A name is routed one way only.
    fn routes(&self) -> Result<Vec<Route>, StartupError> {
        let mut routes: Vec<Route> = Vec::new();
        let given = self
            .route
            .iter()
            .map(|text| (Way::Terminate, text))
            .chain(self.passthrough.iter().map(|text| (Way::Passthrough, text)));
        for (way, text) in given {
            let (name, backend) =
                parse_route(text, way).map_err(|why| flag_error(way.flag(), text, &why))?;
            match routes.iter_mut().find(|r| r.name == name) {
                Some(route) if route.way != way => {
                    return Err(flag_error(
                        way.flag(),
                        text,
                        &format!(
                            "'{name}' is given to both --route and --passthrough; a name is either terminated here or passed through"
                        ),
                    ));
                }
                Some(route) if route.backends.contains(&backend) => {
                    return Err(flag_error(
                        way.flag(),
                        text,
                        "given twice; give each backend of a name once",
                    ));
                }
                Some(route) => route.backends.push(backend),
                None => routes.push(Route {
                    name,
                    way,
                    backends: vec![backend],
                }),
            }
        }
        Ok(routes)
    }

    fn cert_settings(&self) -> Result<CertSettings, StartupError> {
        let mut certs = CertSettings::default();
        match (self.cert.len(), self.key.len()) {
            (c, k) if c == k => {}
            (_, 0) => {
                return Err(StartupError::new(
                    "--cert was given without --key: give both (the private key of that certificate), or neither for a self-signed development certificate",
                ));
            }
            (0, _) => {
                return Err(StartupError::new(
                    "--key was given without --cert: give both (the certificate chain for that key), or neither for a self-signed development certificate",
                ));
            }
            (c, k) => {
                return Err(StartupError::new(format!(
                    "--cert was given {c} times and --key {k} times: give one --key per --cert, in the same order"
                )));
            }
        }
        certs.pairs = self
            .cert
            .iter()
            .zip(&self.key)
            .map(|(cert, key)| CertPair {
                cert: cert.clone(),
                key: key.clone(),
            })
            .collect();
        certs.dirs = self.cert_dir.clone();
        certs.acme = self.acme_settings()?;
        if !certs.development() {
            let dev_flag = if self.self_signed {
                Some("--self-signed")
            } else if self.dev_ca_dir.is_some() {
                Some("--dev-ca-dir")
            } else {
                None
            };
            if let Some(flag) = dev_flag {
                let given = if !certs.pairs.is_empty() {
                    "--cert"
                } else if !certs.dirs.is_empty() {
                    "--cert-dir"
                } else {
                    "--acme"
                };
                return Err(StartupError::new(format!(
                    "{flag} is for the development certificate, served only without --cert and --cert-dir: drop {flag} or {given}"
                )));
            }
        }
        certs.dev = match (&self.dev_ca_dir, self.self_signed) {
            (Some(_), true) => {
                return Err(StartupError::new(
                    "--self-signed and --dev-ca-dir contradict each other: --self-signed uses no CA; keep one",
                ));
            }
            (_, true) => DevCert::InMemory,
            (Some(dir), false) if dir.as_os_str().is_empty() => {
                return Err(StartupError::new(
                    "--dev-ca-dir '': give the directory to keep the development CA in",
                ));
            }
            (dir, false) => DevCert::Ca(dir.clone()),
        };
        certs.strict_sni = self.strict_sni;
        if self.strict_sni && certs.development() {
            return Err(StartupError::new(
                "--strict-sni needs certificates to match names against: give --cert/--key or --cert-dir",
            ));
        }
        certs.client_ca = self.client_ca.clone();
        certs.client_ca_optional = self.client_ca_optional;
        certs.crls = self.crl.clone();
        certs.ticket_keys = self.ticket_keys.clone();
        if certs.client_ca.is_none() {
            if self.client_ca_optional {
                return Err(StartupError::new(
                    "--client-ca-optional needs --client-ca: give the CA bundle client certificates must chain to",
                ));
            }
            if !certs.crls.is_empty() {
                return Err(StartupError::new(
                    "--crl needs --client-ca: revocation lists apply to client certificates",
                ));
            }
        }
        if let Some(text) = &self.reload_interval {
            certs.reload_interval =
                optional_duration_flag("--reload-interval", text, "0 means on SIGHUP only")?;
        }
        Ok(certs)
    }
}

impl Args {
    /// `--acme` and its flags, checked; `None` without `--acme`.
    fn acme_settings(&self) -> Result<Option<crate::acme::AcmeSettings>, StartupError> {
        if self.acme.is_empty() {
            let given = [
                (self.acme_email.is_some(), "--acme-email"),
                (self.acme_ca.is_some(), "--acme-ca"),
                (self.acme_staging, "--acme-staging"),
                (self.acme_ca_root.is_some(), "--acme-ca-root"),
                (self.acme_dir.is_some(), "--acme-dir"),
                (self.acme_renew_before.is_some(), "--acme-renew-before"),
            ];
            if let Some((_, flag)) = given.iter().find(|(given, _)| *given) {
                return Err(StartupError::new(format!(
                    "{flag} needs --acme NAME: give the name to obtain a certificate for"
                )));
            }
            return Ok(None);
        }
        let mut names: Vec<String> = Vec::new();
        for name in &self.acme {
            let name = acme_name(name)?;
            if !names.contains(&name) {
                names.push(name);
            }
        }
        let directory = match (&self.acme_ca, self.acme_staging) {
            (Some(_), true) => {
                return Err(StartupError::new(
                    "--acme-staging and --acme-ca both name the ACME server: keep one",
                ));
            }
            (Some(url), false) => {
                if !url.starts_with("https://") || url.len() <= "https://".len() {
                    return Err(flag_error(
                        "--acme-ca",
                        url,
                        "expected the ACME directory's https:// URL, e.g. https://acme-v02.api.letsencrypt.org/directory",
                    ));
                }
                url.clone()
            }
            (None, true) => crate::acme::LETS_ENCRYPT_STAGING.to_string(),
            (None, false) => crate::acme::LETS_ENCRYPT.to_string(),
        };
        if let Some(email) = &self.acme_email
            && (!email.contains('@') || email.contains(char::is_whitespace) || email.contains(','))
        {
            return Err(flag_error(
                "--acme-email",
                email,
                "expected one e-mail address, e.g. ops@example.com",
            ));
        }
        if let Some(root) = &self.acme_ca_root
            && !root.is_file()
        {
            return Err(StartupError::new(format!(
                "--acme-ca-root {}: no such file; give the PEM certificate the ACME server's HTTPS chains to",
                crate::logsafe::path(root)
            )));
        }
        let dir = match &self.acme_dir {
            Some(dir) if dir.as_os_str().is_empty() => {
                return Err(StartupError::new(
                    "--acme-dir '': give the directory to keep the ACME account and certificates in",
                ));
            }
            Some(dir) => std::path::absolute(dir).unwrap_or_else(|_| dir.clone()),
            None => crate::acme::default_dir().map_err(|why| {
                StartupError::new(format!(
                    "no place for the ACME account and certificates: {why}; give --acme-dir DIR"
                ))
            })?,
        };
        let renew_before = match &self.acme_renew_before {
            Some(text) => Some(positive_duration_flag("--acme-renew-before", text)?),
            None => None,
        };
        Ok(Some(crate::acme::AcmeSettings {
            names,
            email: self.acme_email.clone(),
            directory,
            ca_root: self.acme_ca_root.clone(),
            dir,
            renew_before,
        }))
    }
}

/// An `--acme` name, checked and in lower case: a DNS name (TLS-ALPN-01
/// cannot prove a wildcard or an IP address here).
fn acme_name(text: &str) -> Result<String, StartupError> {
    let name = text.trim_end_matches('.').to_ascii_lowercase();
    if name.starts_with("*.") {
        return Err(flag_error(
            "--acme",
            text,
            "a wildcard can only be proven with the DNS-01 challenge, which wssify does not do; give each name (--acme a.example.com --acme b.example.com)",
        ));
    }
    if name.parse::<std::net::IpAddr>().is_ok() {
        return Err(flag_error(
            "--acme",
            text,
            "an IP address; give the DNS name clients connect to",
        ));
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(flag_error(
            "--acme",
            text,
            "not a DNS name (letters, digits, '-' and '.'; internationalized names in their xn-- form)",
        ));
    }
    Ok(name)
}

fn flag_error(flag: &str, value: &str, why: &str) -> StartupError {
    StartupError::new(format!("{flag} '{value}': {why}"))
}

/// A duration flag, at most [`crate::settings::MAX_DURATION`].
fn duration_flag(flag: &str, text: &str) -> Result<std::time::Duration, StartupError> {
    parse_duration(text).map_err(|why| flag_error(flag, text, &why.to_string()))
}

/// A duration flag whose limit 0 switches off (`None`); `off` says so when
/// the value is too long, as that is what a huge value was meant to do.
fn optional_duration_flag(
    flag: &str,
    text: &str,
    off: &str,
) -> Result<Option<std::time::Duration>, StartupError> {
    match parse_duration(text) {
        Ok(duration) => Ok((!duration.is_zero()).then_some(duration)),
        Err(ValueError::TooLarge(why)) => Err(flag_error(flag, text, &format!("{why}; {off}"))),
        Err(why) => Err(flag_error(flag, text, &why.to_string())),
    }
}

/// A duration flag that must not be 0.
fn positive_duration_flag(flag: &str, text: &str) -> Result<std::time::Duration, StartupError> {
    let duration = duration_flag(flag, text)?;
    if duration.is_zero() {
        return Err(flag_error(flag, text, "must be more than 0, e.g. 10s"));
    }
    Ok(duration)
}

/// A count from 1 to `max`; `why` says why not more. Any run of digits is
/// read, however long, so a huge count is told it is too big rather than
/// not a number.
fn count_flag(flag: &str, text: &str, max: usize, why: &str) -> Result<usize, StartupError> {
    let trimmed = text.trim();
    let digits = trimmed.strip_prefix('+').unwrap_or(trimmed);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        let expected = format!("expected a whole number from 1 to {max}");
        return Err(flag_error(flag, text, &expected));
    }
    match digits.parse::<usize>() {
        Ok(0) => Err(flag_error(flag, text, &format!("must be 1 to {max}"))),
        Ok(n) if n <= max => Ok(n),
        _ => Err(flag_error(flag, text, &format!("at most {max}: {why}"))),
    }
}

/// `--max-memory`: a size from [`MIN_MAX_MEMORY`] to [`MAX_MAX_MEMORY`].
fn memory_flag(flag: &str, text: &str) -> Result<usize, StartupError> {
    let too_large = || {
        let why = format!(
            "at most {} (half the 128TiB a process can address on x86-64)",
            format_size(MAX_MAX_MEMORY)
        );
        flag_error(flag, text, &why)
    };
    let size = match parse_size(text) {
        Ok(size) if size > MAX_MAX_MEMORY => return Err(too_large()),
        Ok(size) => size,
        Err(ValueError::TooLarge(_)) => return Err(too_large()),
        Err(why) => return Err(flag_error(flag, text, &why.to_string())),
    };
    if size < MIN_MAX_MEMORY {
        let why = format!(
            "at least {}: a connection moving data needs a few buffers of 16KiB",
            format_size(MIN_MAX_MEMORY)
        );
        return Err(flag_error(flag, text, &why));
    }
    Ok(size)
}

/// The version line printed by `--version`.
pub fn version_line() -> String {
    format!("wssify {}", env!("CARGO_PKG_VERSION"))
}

/// A `--unix-mode` value: octal permission bits as chmod takes them
/// (`660`, `0660`, `666`); no setuid, setgid or sticky bits.
fn parse_unix_mode(text: &str) -> Result<u32, String> {
    const EXPECTED: &str = "expected octal permissions as for chmod, e.g. 660 (owner and group may connect) or 666 (everyone)";
    let text = text.trim();
    let digits = text.strip_prefix("0o").unwrap_or(text);
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if !digits.is_empty() && mode <= 0o777 => Ok(mode),
        _ => Err(EXPECTED.to_string()),
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Settings, StartupError> {
        let args = Args::from_args(&["wssify"], args).map_err(|e| StartupError::new(e.output))?;
        args.into_settings()
    }

    fn prepared(args: &[&str]) -> Result<CommandLine, String> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        prepare(&args).map_err(|e| e.to_string())
    }

    fn rewritten(args: &[&str]) -> Vec<String> {
        match prepared(args) {
            Ok(CommandLine::Args(args)) => args,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    #[test]
    fn flag_equals_value_is_split_at_the_first_equals_for_flags_that_take_a_value() {
        assert_eq!(
            rewritten(&["--listen=9300", "--to=127.0.0.1:9200", "--check"]),
            ["--listen", "9300", "--to", "127.0.0.1:9200", "--check"]
        );
        // The value keeps its own '=' and may start with '-'.
        assert_eq!(rewritten(&["--alpn=a=b"]), ["--alpn", "a=b"]);
        assert_eq!(rewritten(&["--to=-x"]), ["--to", "-x"]);
        assert_eq!(rewritten(&["--to=--listen"]), ["--to", "--listen"]);
        // A flag's value is never rewritten, nor anything after "--".
        assert_eq!(rewritten(&["--alpn", "--x=y"]), ["--alpn", "--x=y"]);
        assert_eq!(rewritten(&["-t", "-h"]), ["-t", "-h"]);
        assert_eq!(rewritten(&["--", "--listen=1"]), ["--", "--listen=1"]);
        // Unknown flags and short ones are left for argh to report.
        assert_eq!(rewritten(&["--bogus=1"]), ["--bogus=1"]);
        assert_eq!(rewritten(&["-l=1"]), ["-l=1"]);
    }

    #[test]
    fn flag_equals_nothing_and_switch_equals_something_are_mistakes() {
        assert_eq!(
            prepared(&["--listen="]),
            Err(
                "--listen= has no value after the '='; write --listen=ADDR or --listen ADDR".into()
            )
        );
        assert_eq!(
            prepared(&["--listen", "1", "--check=true"]),
            Err("--check takes no value; write --check alone".into())
        );
    }

    #[test]
    fn help_anywhere_a_flag_may_stand() {
        for args in [
            &["-h"][..],
            &["--help"],
            &["help"],
            &["--listen", "9300", "-h"],
            &["--help", "--listen", "9300"],
            &["-h", "--listen="],
            &["--listen=9300", "--help", "--to", "x"],
        ] {
            assert_eq!(prepared(args), Ok(CommandLine::Help), "{args:?}");
        }
        // As a flag's value it is that value.
        assert_eq!(rewritten(&["--alpn", "-h"]), ["--alpn", "-h"]);
    }

    #[test]
    fn the_flag_lists_match_argh() {
        for (flag, _) in VALUE_FLAGS {
            let out = Args::from_args(&["wssify"], &[flag]).unwrap_err().output;
            assert!(out.contains("No value provided"), "{flag}: {out}");
        }
        for flag in SHORT_VALUE_FLAGS {
            let out = Args::from_args(&["wssify"], &[flag]).unwrap_err().output;
            assert!(out.contains("No value provided"), "{flag}: {out}");
        }
        for flag in SWITCHES {
            assert!(Args::from_args(&["wssify"], &[flag]).is_ok(), "{flag}");
        }
        // Every flag the help lists is in one of the lists.
        let help = Args::from_args(&["wssify"], &["--help"])
            .unwrap_err()
            .output;
        let options = help.split("Options:").nth(1).unwrap();
        let options = options.split("Examples:").next().unwrap();
        let mut seen = 0;
        for line in options
            .lines()
            .filter(|l| l.starts_with("  -") || l.starts_with("  help"))
        {
            // The names lead the line; a long one may touch its text.
            for name in line.split_whitespace() {
                let name = name.trim_end_matches(',');
                if !name.starts_with('-') && name != "help" {
                    break;
                }
                let known = VALUE_FLAGS.iter().any(|(flag, _)| *flag == name)
                    || SHORT_VALUE_FLAGS.contains(&name)
                    || SWITCHES.contains(&name)
                    || HELP.contains(&name);
                assert!(known, "{name} from the help is in no list");
                seen += 1;
            }
        }
        assert_eq!(
            seen,
            VALUE_FLAGS.len() + SHORT_VALUE_FLAGS.len() + SWITCHES.len() + HELP.len(),
            "{options}"
        );
    }

    #[test]
    fn the_one_liner_works() {
        let s = parse(&["--listen", "9300", "--to", "127.0.0.1:9200"]).unwrap();
        assert_eq!(s.listen, vec![ListenAddr::AllInterfaces(9300)]);
        assert_eq!(s.backends[0].to_string(), "127.0.0.1:9200");
        assert!(s.certs.development());
        assert_eq!(s.idle_timeout, Some(crate::settings::DEFAULT_IDLE_TIMEOUT));
        assert_eq!(s.busy_poll, None);
    }

    #[test]
    fn several_backends_and_their_flags() {
        let s = parse(&[
            "-l",
            "1",
            "--to",
            "a:1",
            "-t",
            "b:2",
            "--balance",
            "Least-Conn",
            "--connect-retries",
            "2",
            "--resolve-interval",
            "5s",
        ])
        .unwrap();
        let names: Vec<String> = s.backends.iter().map(|b| b.to_string()).collect();
        assert_eq!(names, ["a:1", "b:2"]);
        assert_eq!(s.balance, Balance::LeastConn);
        assert_eq!(s.connect_retries, Some(2));
        assert_eq!(s.resolve_interval, std::time::Duration::from_secs(5));
        let s = parse(&["-l", "1", "-t", "a:1"]).unwrap();
        assert_eq!(s.balance, Balance::RoundRobin);
        assert_eq!(s.connect_retries, None);

        let err = |args: &[&str]| parse(args).unwrap_err().to_string();
        assert!(err(&["-l", "1", "-t", "a:1", "-t", "a:1"]).contains("given twice"));
        let e = err(&["-l", "1", "-t", "a:1", "--balance", "sticky"]);
        assert!(e.contains("--balance") && e.contains("ip-hash"), "{e}");
        let e = err(&["-l", "1", "-t", "a:1", "--connect-retries", "0"]);
        assert!(e.contains("--connect-retries"), "{e}");
        let e = err(&["-l", "1", "-t", "a:1", "--resolve-interval", "0"]);
        assert!(e.contains("--resolve-interval"), "{e}");
    }

    #[test]
    fn development_certificate_flags() {
        let s = parse(&["-l", "1", "-t", "h:1"]).unwrap();
        assert_eq!(s.certs.dev, DevCert::Ca(None));
        let s = parse(&["-l", "1", "-t", "h:1", "--dev-ca-dir", "/d"]).unwrap();
        assert_eq!(s.certs.dev, DevCert::Ca(Some(PathBuf::from("/d"))));
        let s = parse(&["-l", "1", "-t", "h:1", "--self-signed"]).unwrap();
        assert_eq!(s.certs.dev, DevCert::InMemory);
    }

    #[test]
    fn dev_ca_actions() {
        let action = |args: &[&str]| {
            Args::from_args(&["wssify"], args)
                .unwrap()
                .dev_ca_action()
                .map_err(|e| e.to_string())
        };
        assert_eq!(action(&[]), Ok(None));
        assert_eq!(
            action(&["--dev-ca", "show"]),
            Ok(Some(dev_ca::Action::Show))
        );
        assert_eq!(
            action(&["--dev-ca", "remove", "--dev-ca-dir", "/d"]),
            Ok(Some(dev_ca::Action::Remove))
        );
        let err = action(&["--dev-ca", "trust"]).unwrap_err();
        assert!(
            err.contains("--dev-ca 'trust': expected show, remove, install or uninstall"),
            "{err}"
        );
        let err = action(&["--dev-ca", "show", "-l", "9300"]).unwrap_err();
        assert!(err.contains("so --listen has no use with it"), "{err}");
    }

    #[test]
    fn busy_poll_window() {
        let s = parse(&["-l", "1", "-t", "h:1", "--busy-poll", "200us"]).unwrap();
        assert_eq!(s.busy_poll, Some(std::time::Duration::from_micros(200)));
        let s = parse(&["-l", "1", "-t", "h:1", "--busy-poll", "0"]).unwrap();
        assert_eq!(s.busy_poll, None);
    }

    #[test]
    fn admin_address_and_log_format() {
        let s = parse(&["-l", "1", "-t", "h:1"]).unwrap();
        assert_eq!((s.admin, s.log_format), (None, LogFormat::Text));
        let s = parse(&["-l", "1", "-t", "h:1", "--admin", "9100"]).unwrap();
        assert_eq!(s.admin, Some("127.0.0.1:9100".parse().unwrap()));
        let s = parse(&["-l", "1", "-t", "h:1", "--admin", "[::]:9100"]).unwrap();
        assert_eq!(s.admin, Some("[::]:9100".parse().unwrap()));
        let s = parse(&["-l", "1", "-t", "h:1", "--log-format", "json"]).unwrap();
        assert_eq!(s.log_format, LogFormat::Json);
        for (flag, value) in [
            ("--admin", "localhost:9100"),
            ("--admin", "70000"),
            ("--log-format", "yaml"),
        ] {
            let err = parse(&["-l", "1", "-t", "h:1", flag, value])
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(flag), "{err}");
        }
    }

    #[test]
    fn handshake_priority_modes() {
        use crate::priority::HandshakePriority;
        let s = parse(&["-l", "1", "-t", "h:1"]).unwrap();
        assert_eq!(s.handshake_priority, HandshakePriority::Auto);
        for mode in [
            HandshakePriority::Auto,
            HandshakePriority::Low,
            HandshakePriority::Normal,
        ] {
            let s = parse(&["-l", "1", "-t", "h:1", "--handshake-priority", mode.name()]).unwrap();
            assert_eq!(s.handshake_priority, mode);
        }
        let err = parse(&["-l", "1", "-t", "h:1", "--handshake-priority", "high"])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("--handshake-priority"), "{err}");
        assert!(err.contains("auto, low or normal"), "{err}");
    }

    #[test]
    fn the_largest_values_are_taken() {
        let s = parse(&[
            "-l",
            "1",
            "-t",
            "h:1",
            "--idle-timeout",
            "365d",
            "--stall-timeout",
            "365d",
            "--handshake-timeout",
            "365d",
            "--connect-timeout",
            "365d",
            "--drain-timeout",
            "365d",
            "--reload-interval",
            "365d",
            "--busy-poll",
            "10ms",
            "--max-conns",
            "10000000",
            "--max-handshakes",
            "10000000",
            "--max-conns-per-ip",
            "10000000",
            "--threads",
            "1024",
            "--max-memory",
            "64TiB",
        ])
        .unwrap();
        let year = crate::settings::MAX_DURATION;
        assert_eq!(s.idle_timeout, Some(year));
        assert_eq!(s.stall_timeout, Some(year));
        assert_eq!(s.handshake_timeout, year);
        assert_eq!(s.connect_timeout, year);
        assert_eq!(s.drain_timeout, year);
        assert_eq!(s.certs.reload_interval, Some(year));
        assert_eq!(s.busy_poll, Some(MAX_BUSY_POLL));
        assert_eq!(s.max_conns, Some(MAX_CONNS));
        assert_eq!(s.max_handshakes, MAX_CONNS);
        assert_eq!(s.max_conns_per_ip, Some(MAX_CONNS));
        assert_eq!(s.threads, MAX_THREADS);
        assert_eq!(s.max_memory, Some(MAX_MAX_MEMORY));
    }

    #[test]
    fn idle_zero_means_never() {
        let s = parse(&["-l", "1", "-t", "h:1", "--idle-timeout", "0"]).unwrap();
        assert_eq!(s.idle_timeout, None);
    }

    #[test]
    fn mistakes_name_their_flag() {
        let cases: &[(&[&str], &str)] = &[
            (&["--to", "h:1"], "--listen is required"),
            (&["-l", "1"], "--to is required"),
            (&["-l", "x", "-t", "h:1"], "--listen 'x'"),
            (&["-l", "1", "-t", "h"], "--to 'h'"),
            (
                &["-l", "1", "-t", "h:1", "--cert", "c"],
                "--cert was given without --key",
            ),
            (
                &["-l", "1", "-t", "h:1", "--key", "k"],
                "--key was given without --cert",
            ),
            (
                &[
                    "-l", "1", "-t", "h:1", "--cert", "a", "--key", "b", "--cert", "c",
                ],
                "--cert was given 2 times and --key 1 times",
            ),
            (
                &["-l", "1", "-t", "h:1", "--crl", "c"],
                "--crl needs --client-ca",
            ),
            (
                &["-l", "1", "-t", "h:1", "--client-ca-optional"],
                "--client-ca-optional needs --client-ca",
            ),
            (
                &["-l", "1", "-t", "h:1", "--strict-sni"],
                "--strict-sni needs",
            ),
            (
                &["-l", "1", "-t", "h:1", "--self-signed", "--dev-ca-dir", "d"],
                "--self-signed and --dev-ca-dir contradict",
            ),
            (
                &[
                    "-l",
                    "1",
                    "-t",
                    "h:1",
                    "--cert",
                    "c",
                    "--key",
                    "k",
                    "--self-signed",
                ],
                "--self-signed is for the development certificate, served only without --cert and --cert-dir: drop --self-signed or --cert",
            ),
            (
                &[
                    "-l",
                    "1",
                    "-t",
                    "h:1",
                    "--cert-dir",
                    "d",
                    "--dev-ca-dir",
                    "x",
                ],
                "drop --dev-ca-dir or --cert-dir",
            ),
            (
                &["-l", "1", "-t", "h:1", "--busy-poll", "fast"],
                "--busy-poll 'fast'",
            ),
            (
                &["-l", "1", "-t", "h:1", "--busy-poll", "1"],
                "--busy-poll '1': at most 10ms",
            ),
            (
                &["-l", "1", "-t", "h:1", "--reload-interval", "often"],
                "--reload-interval 'often'",
            ),
            (
                &["-l", "1", "-t", "h:1", "--idle-timeout", "x"],
                "--idle-timeout 'x'",
            ),
            (
                &["-l", "1", "-t", "h:1", "--handshake-timeout", "0"],
                "--handshake-timeout '0'",
            ),
            (
                &["-l", "1", "-t", "h:1", "--max-conns", "-3"],
                "--max-conns '-3'",
            ),
            (
                &["-l", "1", "-t", "h:1", "--tls-min", "1.1"],
                "--tls-min '1.1'",
            ),
            (
                &["-l", "1", "-t", "h:1", "--max-conns", "9999999999999999999"],
                "--max-conns '9999999999999999999': at most 10000000",
            ),
            (
                &["-l", "1", "-t", "h:1", "--max-conns", "0"],
                "--max-conns '0': must be 1 to 10000000",
            ),
            (
                &["-l", "1", "-t", "h:1", "--max-handshakes", "10000001"],
                "--max-handshakes '10000001': at most 10000000",
            ),
            (
                &["-l", "1", "-t", "h:1", "--max-conns-per-ip", "1e9"],
                "--max-conns-per-ip '1e9': expected a whole number from 1 to 10000000",
            ),
            (
                &["-l", "1", "-t", "h:1", "--threads", "99999999999"],
                "--threads '99999999999': at most 1024",
            ),
            (
                &[
                    "-l",
                    "1",
                    "-t",
                    "h:1",
                    "--handshake-timeout",
                    "200000000000000d",
                ],
                "--handshake-timeout '200000000000000d': '200000000000000d' is longer than 365d",
            ),
            (
                &["-l", "1", "-t", "h:1", "--idle-timeout", "366d"],
                "is longer than 365d, the longest duration wssify takes; 0 means never",
            ),
            (
                &["-l", "1", "-t", "h:1", "--reload-interval", "9999999999d"],
                "; 0 means on SIGHUP only",
            ),
            (
                &["-l", "1", "-t", "h:1", "--busy-poll", "200000000000000d"],
                "--busy-poll '200000000000000d': at most 10ms",
            ),
            (
                &["-l", "1", "-t", "h:1", "--max-memory", "65TiB"],
                "--max-memory '65TiB': at most 64TiB",
            ),
            (
                &[
                    "-l",
                    "1",
                    "-t",
                    "h:1",
                    "--max-memory",
                    "99999999999999999999T",
                ],
                "--max-memory '99999999999999999999T': at most 64TiB",
            ),
            (
                &["-l", "1", "-t", "h:1", "--max-memory", "1000"],
                "--max-memory '1000': at least 1MiB",
            ),
        ];
        for (args, expected) in cases {
            let err = parse(args).unwrap_err().to_string();
            assert!(err.contains(expected), "{args:?}: {err}");
        }
    }
}
