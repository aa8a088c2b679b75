//! Every metric wssify exposes, by name, in one place, and the Prometheus
//! text exposition that `/metrics` serves.
//!
//! Counting costs a connection a handful of relaxed atomic additions on
//! process-wide statics: no map lookup, no lock, nothing per byte or per
//! record (bytes are added once, when a connection ends, from the same
//! counts its log line prints). Figures that already live elsewhere (open
//! connections per backend, the memory budget, certificates) are read when
//! Prometheus scrapes, not counted twice.
//!
//! Label sets are bounded: per listener, per route and backend, per
//! certificate, and closed sets of reasons; never per client.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::priority::Placement;
use crate::proxy::End;

/// The one content type Prometheus takes for this text format (Prometheus
/// 3 fails a scrape whose content type is missing or unknown).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Why a handshake (or the sniff before it) failed: a closed set, the
/// label `reason` of `wssify_handshake_failures_total`. Each matches a
/// family of the log line's `end=` wordings (see `tls::describe_handshake_error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Failure {
    /// `--handshake-timeout` passed (no bytes, or no whole handshake).
    Timeout,
    /// The client closed before sending a byte (TCP health checks, scanners).
    ClosedBeforeHello,
    /// The client closed or reset during the handshake without an alert.
    ClientClosed,
    /// A plain HTTP request on the TLS port (answered 400).
    PlainHttp,
    /// Bytes that are neither TLS nor HTTP.
    NotTls,
    /// The client's TLS is too old (or too new) for `--tls-min`.
    ProtocolVersion,
    /// No cipher suite in common.
    NoSharedCipher,
    /// No key exchange group or signature scheme in common, or another
    /// incompatibility.
    Incompatible,
    /// The client refused our certificate (unknown_ca, bad_certificate, ...).
    UntrustedCertificate,
    /// The client sent another alert.
    ClientAlert,
    /// Malformed TLS, or a ClientHello the reader refused.
    Malformed,
    /// `--client-ca` required a certificate and none came.
    ClientCertMissing,
    /// The client's certificate is not issued under `--client-ca`.
    ClientCertUnknownCa,
    /// The client's certificate is expired or not yet valid.
    ClientCertExpired,
    /// The client's certificate is listed in `--crl`.
    ClientCertRevoked,
    /// The client's certificate is refused for another reason.
    ClientCertInvalid,
    /// `--strict-sni` refused the name asked for.
    StrictSni,
    /// No route for the name asked for, and no `--to`.
    Unrouted,
    /// A second shutdown request cut it.
    Cut,
    /// Anything else (a socket error, ...).
    Other,
}

impl Failure {
    const ALL: [Failure; 20] = [
        Failure::Timeout,
        Failure::ClosedBeforeHello,
        Failure::ClientClosed,
        Failure::PlainHttp,
        Failure::NotTls,
        Failure::ProtocolVersion,
        Failure::NoSharedCipher,
        Failure::Incompatible,
        Failure::UntrustedCertificate,
        Failure::ClientAlert,
        Failure::Malformed,
        Failure::ClientCertMissing,
        Failure::ClientCertUnknownCa,
        Failure::ClientCertExpired,
        Failure::ClientCertRevoked,
        Failure::ClientCertInvalid,
        Failure::StrictSni,
        Failure::Unrouted,
        Failure::Cut,
        Failure::Other,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Failure::Timeout => "timeout",
            Failure::ClosedBeforeHello => "closed_before_hello",
            Failure::ClientClosed => "client_closed",
            Failure::PlainHttp => "plain_http",
            Failure::NotTls => "not_tls",
            Failure::ProtocolVersion => "protocol_version",
            Failure::NoSharedCipher => "no_shared_cipher",
            Failure::Incompatible => "incompatible",
            Failure::UntrustedCertificate => "untrusted_certificate",
            Failure::ClientAlert => "client_alert",
            Failure::Malformed => "malformed",
            Failure::ClientCertMissing => "client_cert_missing",
            Failure::ClientCertUnknownCa => "client_cert_unknown_ca",
            Failure::ClientCertExpired => "client_cert_expired",
            Failure::ClientCertRevoked => "client_cert_revoked",
            Failure::ClientCertInvalid => "client_cert_invalid",
            Failure::StrictSni => "strict_sni",
            Failure::Unrouted => "unrouted",
            Failure::Cut => "cut",
            Failure::Other => "other",
        }
    }

    /// The reason for a handshake error, read the way
    /// `tls::describe_handshake_error` words it.
    pub fn of(error: &std::io::Error) -> Failure {
        use rustls::AlertDescription as Alert;
        use rustls::PeerIncompatible as Incompatible;
        let inner = error.get_ref();
        if inner.is_some_and(|e| e.is::<crate::tls_stream::ClientLeft>())
            || error.kind() == std::io::ErrorKind::UnexpectedEof
        {
            return Failure::ClientClosed;
        }
        if inner.is_some_and(|e| e.is::<crate::tls_stream::UnknownName>()) {
            return Failure::StrictSni;
        }
        if inner.is_some_and(|e| e.is::<crate::tls_stream::TooOld>()) {
            return Failure::ProtocolVersion;
        }
        let Some(tls) = inner.and_then(|e| e.downcast_ref::<rustls::Error>()) else {
            return match error.kind() {
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => {
                    Failure::ClientClosed
                }
                _ => Failure::Other,
            };
        };
        match tls {
            rustls::Error::AlertReceived(alert) => match alert {
                Alert::UnknownCA
                | Alert::BadCertificate
                | Alert::CertificateUnknown
                | Alert::CertificateExpired
                | Alert::CertificateRevoked
                | Alert::UnsupportedCertificate => Failure::UntrustedCertificate,
                Alert::ProtocolVersion => Failure::ProtocolVersion,
                _ => Failure::ClientAlert,
            },
            rustls::Error::PeerIncompatible(why) => match why {
                Incompatible::Tls12NotOffered
                | Incompatible::Tls12NotOfferedOrEnabled
                | Incompatible::SupportedVersionsExtensionRequired => Failure::ProtocolVersion,
                Incompatible::NoCipherSuitesInCommon => Failure::NoSharedCipher,
                _ => Failure::Incompatible,
            },
            rustls::Error::InvalidMessage(_) => Failure::Malformed,
            rustls::Error::NoCertificatesPresented => Failure::ClientCertMissing,
            rustls::Error::InvalidCertificate(why) => {
                use rustls::CertificateError as Why;
                match why {
                    Why::UnknownIssuer => Failure::ClientCertUnknownCa,
                    Why::Expired
                    | Why::ExpiredContext { .. }
                    | Why::NotValidYet
                    | Why::NotValidYetContext { .. } => Failure::ClientCertExpired,
                    Why::Revoked => Failure::ClientCertRevoked,
                    _ => Failure::ClientCertInvalid,
                }
            }
            _ => Failure::Other,
        }
    }
}

/// How a connection ended: the label `reason` of
/// `wssify_connections_ended_total`. Every connection counted in
/// `wssify_connections_total` ends in exactly one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Ended {
    /// Its handshake (or sniff) failed: see the handshake failures.
    HandshakeFailed,
    /// No backend took it (or the PROXY header or ClientHello could not be sent).
    BackendFailed,
    /// The client finished first.
    ClientClosed,
    /// The backend finished first.
    BackendClosed,
    /// `--idle-timeout`.
    IdleTimeout,
    /// The client took no bytes for `--stall-timeout`.
    ClientStalled,
    /// The backend took no bytes for `--stall-timeout`.
    BackendStalled,
    /// Reading from or writing to the client failed.
    ClientError,
    /// Reading from or writing to the backend failed.
    BackendError,
    /// Closed when the drain timeout ran out.
    Drained,
    /// Cut by a second shutdown request.
    Cut,
}

impl Ended {
    const ALL: [Ended; 11] = [
        Ended::HandshakeFailed,
        Ended::BackendFailed,
        Ended::ClientClosed,
        Ended::BackendClosed,
        Ended::IdleTimeout,
        Ended::ClientStalled,
        Ended::BackendStalled,
        Ended::ClientError,
        Ended::BackendError,
        Ended::Drained,
        Ended::Cut,
    ];

    fn label(self) -> &'static str {
        match self {
            Ended::HandshakeFailed => "handshake_failed",
            Ended::BackendFailed => "backend_failed",
            Ended::ClientClosed => "client_closed",
            Ended::BackendClosed => "backend_closed",
            Ended::IdleTimeout => "idle_timeout",
            Ended::ClientStalled => "client_stalled",
            Ended::BackendStalled => "backend_stalled",
            Ended::ClientError => "client_error",
            Ended::BackendError => "backend_error",
            Ended::Drained => "drained",
            Ended::Cut => "cut",
        }
    }
}

impl From<&End> for Ended {
    fn from(end: &End) -> Ended {
        match end {
            End::ClientClosed => Ended::ClientClosed,
            End::BackendClosed => Ended::BackendClosed,
            End::IdleTimeout(_) => Ended::IdleTimeout,
            End::ClientStalled(_) => Ended::ClientStalled,
            End::BackendStalled(_) => Ended::BackendStalled,
            End::ClientError(_) => Ended::ClientError,
            End::BackendError(_) => Ended::BackendError,
            End::Drained => Ended::Drained,
            End::Cut => Ended::Cut,
        }
    }
}

/// Which limit turned a client away or made it wait: the label `limit`
/// of `wssify_limit_hits_total`.
#[derive(Debug, Clone, Copy)]
#[repr(usize)]
pub enum Limit {
    /// `--max-conns`: the accept loop waited for a connection to end.
    MaxConns,
    /// `--max-handshakes`: the accept loop waited for a handshake to end.
    Handshakes,
    /// `--max-conns-per-ip`: a connection was refused.
    PerIp,
}

impl Limit {
    const ALL: [Limit; 3] = [Limit::MaxConns, Limit::Handshakes, Limit::PerIp];

    fn label(self) -> &'static str {
        match self {
            Limit::MaxConns => "max_conns",
            Limit::Handshakes => "max_handshakes",
            Limit::PerIp => "max_conns_per_ip",
        }
    }
}

/// A histogram over fixed buckets, in atomics: one bucket add, one sum
/// add, per observation.
pub struct Histogram {
    /// Upper bounds in microseconds, ascending; `+Inf` is implicit.
    bounds: &'static [u64],
    /// Observations per bucket (not cumulative), the last for `+Inf`.
    counts: [AtomicU64; 16],
    /// Sum of the observations in microseconds.
    sum_micros: AtomicU64,
}

impl Histogram {
    const fn new(bounds: &'static [u64]) -> Histogram {
        assert!(bounds.len() < 16);
        Histogram {
            bounds,
            counts: [const { AtomicU64::new(0) }; 16],
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Counts one observation.
    pub fn observe(&self, d: Duration) {
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = self
            .bounds
            .iter()
            .position(|&b| micros <= b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(micros, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        header(out, name, help, "histogram");
        let mut cumulative = 0;
        for (i, bound) in self.bounds.iter().enumerate() {
            cumulative += self.counts[i].load(Relaxed);
            let le = *bound as f64 / 1e6;
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        cumulative += self.counts[self.bounds.len()].load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_micros.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

/// Handshake buckets: 1 ms to 10 s.
const HANDSHAKE_BOUNDS: &[u64] = &[
    1_000, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    10_000_000,
];
/// Connection buckets: 100 ms to a day.
const CONNECTION_BOUNDS: &[u64] = &[
    100_000,
    1_000_000,
    10_000_000,
    60_000_000,
    300_000_000,
    1_800_000_000,
    3_600_000_000,
    21_600_000_000,
    86_400_000_000,
];

/// The process-wide counters connections add to.
pub struct Metrics {
    handshakes_ok: AtomicU64,
    handshake_failures: [AtomicU64; Failure::ALL.len()],
    /// Where handshakes ran, by `priority::Placement`.
    placed: [AtomicU64; Placement::ALL.len()],
    /// From accept to the end of the handshake (sniff included), for the
    /// handshakes that succeeded.
    pub handshake_seconds: Histogram,
    /// From accept to the end, for connections that reached their backend.
    pub connection_seconds: Histogram,
    passed_through: AtomicU64,
    ended: [AtomicU64; Ended::ALL.len()],
    bytes_to_backend: AtomicU64,
    bytes_to_client: AtomicU64,
    limit_hits: [AtomicU64; Limit::ALL.len()],
    reloads_taken: AtomicU64,
    reloads_refused: AtomicU64,
}

/// The counters every connection adds to.
pub static METRICS: Metrics = Metrics {
    handshakes_ok: AtomicU64::new(0),
    handshake_failures: [const { AtomicU64::new(0) }; Failure::ALL.len()],
    placed: [const { AtomicU64::new(0) }; Placement::ALL.len()],
    handshake_seconds: Histogram::new(HANDSHAKE_BOUNDS),
    connection_seconds: Histogram::new(CONNECTION_BOUNDS),
    passed_through: AtomicU64::new(0),
    ended: [const { AtomicU64::new(0) }; Ended::ALL.len()],
    bytes_to_backend: AtomicU64::new(0),
    bytes_to_client: AtomicU64::new(0),
    limit_hits: [const { AtomicU64::new(0) }; Limit::ALL.len()],
    reloads_taken: AtomicU64::new(0),
    reloads_refused: AtomicU64::new(0),
};

/// A handshake finished `took` after the accept.
pub fn handshake_done(took: Duration) {
    METRICS.handshakes_ok.fetch_add(1, Relaxed);
    METRICS.handshake_seconds.observe(took);
}

/// A connection's sniff and handshake run where `placement` says.
pub fn handshake_placed(placement: Placement) {
    METRICS.placed[placement as usize].fetch_add(1, Relaxed);
}

/// A connection failed before or during its handshake; it has ended.
pub fn handshake_failed(why: Failure) {
    METRICS.handshake_failures[why as usize].fetch_add(1, Relaxed);
    ended(Ended::HandshakeFailed);
}

/// A client is passed through (no handshake here).
pub fn passed_through() {
    METRICS.passed_through.fetch_add(1, Relaxed);
}

/// A connection ended this way.
pub fn ended(how: Ended) {
    METRICS.ended[how as usize].fetch_add(1, Relaxed);
}

/// A connection that reached its backend ended: its bytes, how long it
/// lasted from the accept, and how it ended.
pub fn session_ended(end: &End, to_backend: u64, to_client: u64, lasted: Duration) {
    METRICS.bytes_to_backend.fetch_add(to_backend, Relaxed);
    METRICS.bytes_to_client.fetch_add(to_client, Relaxed);
    METRICS.connection_seconds.observe(lasted);
    ended(Ended::from(end));
}

/// A limit was hit.
pub fn limit_hit(limit: Limit) {
    METRICS.limit_hits[limit as usize].fetch_add(1, Relaxed);
}

/// A certificate reload was taken (`true`) or refused.
pub fn reload(taken: bool) {
    let counter = match taken {
        true => &METRICS.reloads_taken,
        false => &METRICS.reloads_refused,
    };
    counter.fetch_add(1, Relaxed);
}

/// Listeners counted apart; past this many, the last index counts the
/// rest together.
const MAX_LISTENERS: usize = 256;
/// Connections accepted and open now, by listener index.
static ACCEPTED: [AtomicU64; MAX_LISTENERS] = [const { AtomicU64::new(0) }; MAX_LISTENERS];
static OPEN: [AtomicI64; MAX_LISTENERS] = [const { AtomicI64::new(0) }; MAX_LISTENERS];
/// Listener names by index, as the startup line names them.
static LISTENERS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Registers a listener by the name its startup line gives it
/// (`127.0.0.1:9300`, `unix:/path`); its index is what each of its
/// connections keeps (two bytes, see `listener::IpSlot`).
pub fn register_listener(name: String) -> u16 {
    let mut names = LISTENERS.lock().unwrap_or_else(PoisonError::into_inner);
    if names.len() < MAX_LISTENERS {
        names.push(name);
    }
    (names.len() - 1) as u16
}

/// A connection was accepted on this listener and is open.
pub fn listener_opened(index: u16) {
    let i = usize::from(index).min(MAX_LISTENERS - 1);
    ACCEPTED[i].fetch_add(1, Relaxed);
    OPEN[i].fetch_add(1, Relaxed);
}

/// A connection of this listener ended.
pub fn listener_closed(index: u16) {
    OPEN[usize::from(index).min(MAX_LISTENERS - 1)].fetch_sub(1, Relaxed);
}

/// What a scrape reads beyond the counters: live state owned elsewhere.
pub struct Sources {
    /// Every route's name (`--to` for the default backends) and pool.
    pub pools: Vec<(String, Arc<crate::backend::Pool>)>,
    /// The memory budget.
    pub budget: Arc<crate::budget::Budget>,
    /// The certificates served: subject, SHA-256, not-after (Unix seconds).
    pub certs: Box<dyn Fn() -> Vec<(String, String, i64)> + Send + Sync>,
    /// Whether /readyz says ready now.
    pub ready: Box<dyn Fn() -> bool + Send + Sync>,
}

/// `# HELP` and `# TYPE` lines.
fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// One sample of a metric without labels.
fn single(out: &mut String, name: &str, help: &str, kind: &str, value: impl std::fmt::Display) {
    header(out, name, help, kind);
    let _ = writeln!(out, "{name} {value}");
}

/// A label value as the text format writes it: `\`, `"` and newlines escaped.
pub fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// The rustls version this build links, from Cargo.lock (read at compile
/// time, parsed once).
fn rustls_version() -> &'static str {
    static VERSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    VERSION.get_or_init(|| {
        let lock = include_str!("../../Cargo.lock");
        lock.split("[[package]]")
            .find(|p| p.contains("\nname = \"rustls\"\n"))
            .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = \"")))
            .map(|v| v.trim_end_matches('"').to_string())
            .unwrap_or_else(|| "unknown".to_string())
    })
}

/// The whole exposition, as `/metrics` serves it.
pub fn render(sources: &Sources) -> String {
    let m = &METRICS;
    let mut out = String::with_capacity(8 * 1024);
    header(
        &mut out,
        "wssify_build_info",
        "The wssify build: version, rustls version and crypto provider; always 1.",
        "gauge",
    );
    let _ = writeln!(
        out,
        "wssify_build_info{{version=\"{}\",rustls_version=\"{}\",provider=\"aws-lc-rs\"}} 1",
        env!("CARGO_PKG_VERSION"),
        escape(rustls_version())
    );
    single(
        &mut out,
        "wssify_ready",
        "1 when /readyz answers 200.",
        "gauge",
        u8::from((sources.ready)()),
    );

    let listeners = LISTENERS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    header(
        &mut out,
        "wssify_connections_total",
        "Connections accepted and served, per listener.",
        "counter",
    );
    for (i, name) in listeners.iter().enumerate() {
        let _ = writeln!(
            out,
            "wssify_connections_total{{listener=\"{}\"}} {}",
            escape(name),
            ACCEPTED[i].load(Relaxed)
        );
    }
    header(
        &mut out,
        "wssify_connections_open",
        "Connections open now (handshakes included), per listener.",
        "gauge",
    );
    for (i, name) in listeners.iter().enumerate() {
        let _ = writeln!(
            out,
            "wssify_connections_open{{listener=\"{}\"}} {}",
            escape(name),
            OPEN[i].load(Relaxed).max(0)
        );
    }
    header(
        &mut out,
        "wssify_connections_ended_total",
        "Connections ended, by how they ended.",
        "counter",
    );
    for how in Ended::ALL {
        let _ = writeln!(
            out,
            "wssify_connections_ended_total{{reason=\"{}\"}} {}",
            how.label(),
            m.ended[how as usize].load(Relaxed)
        );
    }
    single(
        &mut out,
        "wssify_passthrough_connections_total",
        "Clients passed through untouched by a --passthrough route.",
        "counter",
        m.passed_through.load(Relaxed),
    );
    header(
        &mut out,
        "wssify_handshakes_total",
        "TLS handshakes ended here, by outcome.",
        "counter",
    );
    let failed: u64 = m.handshake_failures.iter().map(|c| c.load(Relaxed)).sum();
    let _ = writeln!(
        out,
        "wssify_handshakes_total{{outcome=\"ok\"}} {}",
        m.handshakes_ok.load(Relaxed)
    );
    let _ = writeln!(
        out,
        "wssify_handshakes_total{{outcome=\"failed\"}} {failed}"
    );
    header(
        &mut out,
        "wssify_handshake_failures_total",
        "Failed handshakes (and sniffs before them), by reason.",
        "counter",
    );
    for why in Failure::ALL {
        let _ = writeln!(
            out,
            "wssify_handshake_failures_total{{reason=\"{}\"}} {}",
            why.label(),
            m.handshake_failures[why as usize].load(Relaxed)
        );
    }
    header(
        &mut out,
        "wssify_handshake_priority_total",
        "Where handshakes ran: low (the low-priority threads), normal (the connections' own: no connection open a second or more moved bytes lately, or --handshake-priority normal), starved (the connections' own, because the low-priority threads got no CPU).",
        "counter",
    );
    for placement in Placement::ALL {
        let _ = writeln!(
            out,
            "wssify_handshake_priority_total{{priority=\"{}\"}} {}",
            placement.label(),
            m.placed[placement as usize].load(Relaxed)
        );
    }
    header(
        &mut out,
        "wssify_connections_settled",
        "Open connections that have been open for a second or more (a flood of handshakes gives way to them).",
        "gauge",
    );
    let _ = writeln!(
        out,
        "wssify_connections_settled {}",
        crate::priority::settled()
    );
    m.handshake_seconds.render(
        &mut out,
        "wssify_handshake_duration_seconds",
        "Time from accept to a finished handshake.",
    );
    m.connection_seconds.render(
        &mut out,
        "wssify_connection_duration_seconds",
        "Time from accept to the end, for connections that reached a backend.",
    );
    header(
        &mut out,
        "wssify_bytes_total",
        "Plaintext bytes moved, by direction, counted when a connection ends.",
        "counter",
    );
    let _ = writeln!(
        out,
        "wssify_bytes_total{{direction=\"to_backend\"}} {}",
        m.bytes_to_backend.load(Relaxed)
    );
    let _ = writeln!(
        out,
        "wssify_bytes_total{{direction=\"to_client\"}} {}",
        m.bytes_to_client.load(Relaxed)
    );

    backends(&mut out, &sources.pools);

    header(
        &mut out,
        "wssify_limit_hits_total",
        "Times a limit made the accept loop wait, or refused a client.",
        "counter",
    );
    for limit in Limit::ALL {
        let _ = writeln!(
            out,
            "wssify_limit_hits_total{{limit=\"{}\"}} {}",
            limit.label(),
            m.limit_hits[limit as usize].load(Relaxed)
        );
    }
    let _ = writeln!(
        out,
        "wssify_limit_hits_total{{limit=\"max_memory\"}} {}",
        sources.budget.refusals()
    );
    single(
        &mut out,
        "wssify_buffer_memory_bytes",
        "Bytes the connections' copy buffers hold now.",
        "gauge",
        sources.budget.used(),
    );
    single(
        &mut out,
        "wssify_buffer_memory_limit_bytes",
        "The buffer memory budget (--max-memory).",
        "gauge",
        sources.budget.limit(),
    );

    header(
        &mut out,
        "wssify_certificate_not_after_seconds",
        "When each served certificate expires, in Unix seconds.",
        "gauge",
    );
    for (subject, sha256, not_after) in (sources.certs)() {
        let _ = writeln!(
            out,
            "wssify_certificate_not_after_seconds{{subject=\"{}\",sha256=\"{}\"}} {not_after}",
            escape(&subject),
            escape(&sha256)
        );
    }
    header(
        &mut out,
        "wssify_certificate_reloads_total",
        "Certificate reloads, taken or refused (the old certificate serves on).",
        "counter",
    );
    let _ = writeln!(
        out,
        "wssify_certificate_reloads_total{{result=\"taken\"}} {}",
        m.reloads_taken.load(Relaxed)
    );
    let _ = writeln!(
        out,
        "wssify_certificate_reloads_total{{result=\"refused\"}} {}",
        m.reloads_refused.load(Relaxed)
    );
    acme(&mut out);
    single(
        &mut out,
        "wssify_start_time_seconds",
        "When the process started, in Unix seconds.",
        "gauge",
        start_time(),
    );
    out
}

/// ACME orders that obtained a certificate, and that failed.
static ACME_ORDERS: [AtomicU64; 2] = [const { AtomicU64::new(0) }; 2];
/// Per `--acme` name: when its next order (first, renewal or retry) is
/// planned, in Unix seconds. Written by the ACME tasks only, never on a
/// connection's path, so a lock is fine.
static ACME_NEXT: Mutex<std::collections::BTreeMap<String, u64>> =
    Mutex::new(std::collections::BTreeMap::new());

/// An ACME order for a name ended: a certificate (`true`) or a failure.
pub fn acme_order(obtained: bool) {
    ACME_ORDERS[usize::from(!obtained)].fetch_add(1, Relaxed);
}

/// The next order for `name` is planned for `at`.
pub fn acme_next(name: &str, at: std::time::SystemTime) {
    let secs = at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    ACME_NEXT
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(name.to_string(), secs);
}

/// The ACME families: order outcomes, and each name's next order.
fn acme(out: &mut String) {
    header(
        out,
        "wssify_acme_orders_total",
        "ACME orders that obtained a certificate, and that failed (the reason is logged).",
        "counter",
    );
    for (i, result) in ["obtained", "failed"].iter().enumerate() {
        let _ = writeln!(
            out,
            "wssify_acme_orders_total{{result=\"{result}\"}} {}",
            ACME_ORDERS[i].load(Relaxed)
        );
    }
    let next = ACME_NEXT
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    if next.is_empty() {
        return;
    }
    header(
        out,
        "wssify_acme_next_order_seconds",
        "When the next ACME order for the name (first, renewal or retry) is planned, in Unix seconds.",
        "gauge",
    );
    for (name, at) in next {
        let _ = writeln!(
            out,
            "wssify_acme_next_order_seconds{{name=\"{}\"}} {at}",
            escape(&name)
        );
    }
}

/// Per backend: state, open connections, connect attempts and failures.
fn backends(out: &mut String, pools: &[(String, Arc<crate::backend::Pool>)]) {
    let all: Vec<_> = pools
        .iter()
        .flat_map(|(route, pool)| {
            pool.selection()
                .peers
                .iter()
                .map(|peer| (escape(route), escape(&peer.addr.to_string()), peer.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    type Read = fn(&crate::backend::pool::Peer) -> u64;
    let families: [(&str, &str, &str, Read); 4] = [
        (
            "wssify_backend_up",
            "1 when the backend took its last connect (or the start check's), 0 when it is down.",
            "gauge",
            |p| u64::from(p.up()),
        ),
        (
            "wssify_backend_connections_open",
            "Connections open to the backend now, connects under way included.",
            "gauge",
            |p| p.open() as u64,
        ),
        (
            "wssify_backend_connect_attempts_total",
            "Connect attempts to the backend for clients.",
            "counter",
            |p| p.attempts(),
        ),
        (
            "wssify_backend_connect_failures_total",
            "Connect attempts to the backend that failed or timed out.",
            "counter",
            |p| p.connect_failures(),
        ),
    ];
    for (name, help, kind, read) in families {
        header(out, name, help, kind);
        for (route, addr, peer) in &all {
            let _ = writeln!(
                out,
                "{name}{{route=\"{route}\",backend=\"{addr}\"}} {}",
                read(peer)
            );
        }
    }
}

/// The process's start, in Unix seconds (taken at the first call, which
/// `Server::bind` makes).
pub fn start_time() -> u64 {
    static START: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *START.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_is_cumulative_and_sums_in_seconds() {
        static H: Histogram = Histogram::new(&[1_000, 10_000]);
        H.observe(Duration::from_micros(500));
        H.observe(Duration::from_millis(5));
        H.observe(Duration::from_secs(1));
        let mut out = String::new();
        H.render(&mut out, "h_seconds", "help");
        assert!(out.contains("h_seconds_bucket{le=\"0.001\"} 1\n"), "{out}");
        assert!(out.contains("h_seconds_bucket{le=\"0.01\"} 2\n"), "{out}");
        assert!(out.contains("h_seconds_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("h_seconds_sum 1.0055\n"), "{out}");
        assert!(out.contains("h_seconds_count 3\n"), "{out}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn the_rustls_version_is_read_from_the_lock_file() {
        let v = rustls_version();
        assert!(v.starts_with("0.23."), "{v}");
    }
}
