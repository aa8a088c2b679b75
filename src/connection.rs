//! One connection's life, start to finish: first-bytes sniff, TLS handshake,
//! backend connect, proxying, and the one log line that says how it went.
//!
//! Every failure here ends this connection only; it becomes the `end=`
//! reason in the log line, never an error for the process.

use std::io;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use arc_swap::ArcSwap;
use log::{debug, info, warn};
use rustls::ServerConfig;
use socket2::{SockRef, TcpKeepalive};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, watch};
use tokio::time::{Instant, timeout, timeout_at};

use crate::acme;
use crate::backend::{self, Lease, Pool};
use crate::budget::Budget;
use crate::certs::CertAlgs;
use crate::conn_id::{Peer, Who};
use crate::listener::Held;
use crate::logsafe;
use crate::observe::metrics::{self, Ended, Failure};
use crate::priority::{Lane, Placement, Ran};
use crate::proxy::{self, End, Timeouts};
use crate::ratelog::{Kind, info_limited};
use crate::route::Routes;
use crate::settings::Way;
use crate::settings::{TlsMin, format_duration};
use crate::shutdown::{Phase, reached};
use crate::sniff::{self, FirstBytes};
use crate::socket::Socket;
use crate::tls;
use crate::tls_stream::{Negotiated, Refused, TlsStream};
use crate::wire::client_hello::{self, AlertDescription};
use crate::wire::proxy_header::{self, TlsFacts, Version as ProxyVersion};

/// How long a closing connection may spend saying goodbye (close_notify).
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(1);

/// What every connection shares, read-only.
pub struct Shared {
    /// The TLS configuration (certificates, versions, ALPN, tickets), as
    /// the last reload left it; each handshake takes the current one.
    pub tls: Arc<ArcSwap<ServerConfig>>,
    /// Where each client goes, by the server name in its ClientHello:
    /// `--to`, a `--route`'s backends, or a `--passthrough`'s.
    pub routes: Routes,
    /// The oldest TLS version served, for telling clients what they lack.
    pub tls_min: TlsMin,
    /// Limit on sniffing plus the handshake.
    pub handshake_timeout: Duration,
    /// The low-priority threads sniffs and handshakes may run on (see
    /// `priority`), or `None`: always on the caller's.
    pub handshakes: Option<crate::priority::Lane>,
    /// Limit on each attempt to connect to a backend.
    pub connect_timeout: Duration,
    /// The PROXY protocol header written to the backend first, if any.
    pub proxy_protocol: Option<ProxyVersion>,
    /// `None`: never close for idleness.
    pub idle_timeout: Option<Duration>,
    /// `None`: never close a connection whose peer stopped taking bytes.
    pub stall_timeout: Option<Duration>,
    /// The memory every connection's buffers draw from (`--max-memory`).
    pub budget: Arc<Budget>,
    /// `--acme`: the challenges being validated and the names still
    /// waiting for a certificate.
    pub acme: Option<Arc<acme::Status>>,
}

/// The most a connection's task (the future [`serve`] returns) may take in
/// a debug build, checked at each spawn there. Release builds lay it out in
/// 1016 bytes, which tokio's task header brings to 1152, the largest size
/// that keeps an idle connection under its measured 6 KiB (the next step is
/// 1280: tokio aligns tasks to 128 bytes). Measured with
/// `cargo +nightly rustc --release --lib -- -Zprint-type-sizes`.
pub const MAX_TASK_BYTES: usize = 1024;

/// What is known about a connection for its log line.
#[derive(Default)]
///
/// Kept for the connection's whole life: what can be is kept as rustls'
/// small codes and named only when the line is written.
struct Facts {
    sni: Option<String>,
    version: &'static str,
    cipher: Option<rustls::CipherSuite>,
    alpn: Option<Vec<u8>>,
    group: Option<rustls::NamedGroup>,
    client_cert: Option<String>,
}

/// A client that finished its handshake, and its connected backend.
struct Session {
    client: TlsStream,
    /// TCP or a UNIX socket, the size of the larger.
    backend: backend::Stream,
    /// Counts this connection as open on its backend (least-conn), and
    /// names that backend in the log line.
    lease: Lease,
    facts: Facts,
    started: Instant,
}

/// A client passed through untouched, and its connected backend (TLS is
/// between them).
struct Passed {
    client: Socket,
    backend: backend::Stream,
    lease: Lease,
    /// The server name its ClientHello asked for, as read (not verified:
    /// TLS is not ended here).
    sni: Option<String>,
    /// The bytes read before the route was chosen, sent to the backend
    /// before the pipe began: counted in the log line's `to_backend`.
    hello_len: u64,
    started: Instant,
}

/// What a connection became once bytes can flow.
enum Opened {
    /// TLS ended here.
    Tls(Box<Session>),
    /// Passed through.
    Passed(Box<Passed>),
}

/// What a connection is once its ClientHello has been read and its route
/// chosen, before the backend connect.
#[allow(
    clippy::large_enum_variant,
    reason = "moved once, from the handshake to the connect, inside the boxed opening; boxing it would cost an allocation per connection"
)]
enum Admitted {
    /// The handshake is done; `route` is its place in `Shared::routes`.
    Tls { client: TlsStream, route: usize },
    /// To be passed through: the socket and every byte read from it.
    Raw {
        tcp: Socket,
        hello: Vec<u8>,
        sni: Option<String>,
        route: usize,
    },
}

/// Serves one accepted client until it is done. `held` is kept for the
/// connection's whole life: dropping it frees its places under
/// `--max-conns` and `--max-conns-per-ip` and tells the drain this
/// connection has ended. `slots` are the `--max-handshakes` slots: one is
/// held from a whole first ClientHello record to the handshake's end, so
/// handshakes under way are what it limits, never open connections or
/// clients that have not sent a hello.
///
/// The returned future is the connection's task for its whole life, so its
/// size is paid by every idle connection: it is an `async` block rather
/// than an `async fn`, whose parameters would be stored twice (as passed,
/// and as the body's locals).
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn stores its parameters twice"
)]
pub fn serve(
    tcp: Socket,
    who: Who,
    shared: Arc<Shared>,
    phase: watch::Receiver<Phase>,
    held: Held,
    slots: Arc<Semaphore>,
) -> impl Future<Output = ()> + Send {
    async move {
        let connection = shared.budget.connection();
        // Opening is boxed, and is one future: its steps (sniff, handshake,
        // connect) and what they hand each other (the TLS stream, 1.3 KiB)
        // are freed once it is done instead of sizing the task for the
        // connection's whole life (a local moved on to the next step still
        // keeps its place in a future's layout: 1.4 KiB per idle
        // connection, measured). With -Zprint-type-sizes: the task went
        // from 2968 bytes.
        let opened = Box::pin(opening(tcp, who, &shared, slots, phase.clone())).await;
        // The session is boxed too: moved by value into `relay`, the
        // layout would otherwise hold it twice (1.3 KiB each).
        match opened {
            Some(Opened::Tls(session)) => relay(session, &who, &shared, phase).await,
            Some(Opened::Passed(passed)) => relay_passed(passed, &who, &shared, phase).await,
            None => {}
        }
        // Only now: this frees the connection's places and tells the drain
        // it has ended (moved out where it was captured, not kept twice).
        drop((held, connection));
    }
}

/// Everything before bytes flow: the handshake (on the low-priority
/// threads when `priority` places it there), then the backend connect.
/// `None`: it failed, or a second shutdown request cut it, and that was
/// logged. `phase` is a view
/// of its own, so that the task keeps none while the connection is open.
async fn opening(
    tcp: Socket,
    who: Who,
    shared: &Arc<Shared>,
    slots: Arc<Semaphore>,
    mut phase: watch::Receiver<Phase>,
) -> Option<Opened> {
    let started = Instant::now();
    let steps = async {
        let lane = shared.handshakes.as_ref();
        let placement = lane.map_or(Placement::Normal, Lane::place);
        let admitted = match lane {
            // Counted there: the lane may give it back.
            Some(lane) if placement == Placement::Low => {
                handshake_on(lane, tcp, who, shared, slots, started).await
            }
            _ => {
                metrics::handshake_placed(placement);
                handshake_here(tcp, who, shared, slots, started).await
            }
        }?;
        match admitted {
            Admitted::Tls { client, route } => open(client, route, who, shared, started)
                .await
                .map(Opened::Tls),
            Admitted::Raw {
                tcp,
                hello,
                sni,
                route,
            } => open_passed(tcp, hello, sni, route, who, shared, started)
                .await
                .map(Opened::Passed),
        }
    };
    // Raced against a second shutdown request, cheaply: the wait for the
    // cut is polled once (which registers this task to be woken by any
    // change of phase) and again only once the phase has changed (an
    // atomic read), not at every wake-up of the handshake, since polling
    // it takes the phase channel's lock.
    let changed = phase.clone();
    let mut steps = std::pin::pin!(steps);
    let mut cut = std::pin::pin!(reached(&mut phase, Phase::Cut));
    let mut registered = false;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(session) = steps.as_mut().poll(cx) {
            return Poll::Ready(session);
        }
        if !registered || changed.has_changed().unwrap_or(true) {
            registered = true;
            if cut.as_mut().poll(cx).is_ready() {
                metrics::ended(Ended::Cut);
                // Rate-limited like any other line about a handshake: a
                // client can hold thousands of them open (the count left
                // over is logged before the process exits).
                info_limited!(
                    Kind::HandshakeFailed,
                    "{who} duration={} end=\"{}\"",
                    elapsed(started),
                    End::Cut
                );
                return Poll::Ready(None);
            }
        }
        Poll::Pending
    })
    .await
}

/// Runs [`handshake_here`] on the low-priority threads, then brings the
/// stream back to this runtime; or here, if those threads are found
/// starved before they start it. The socket moves as a plain descriptor:
/// each runtime's event queue watches only the sockets it registered.
async fn handshake_on(
    lane: &Lane,
    tcp: Socket,
    who: Who,
    shared: &Arc<Shared>,
    slots: Arc<Semaphore>,
    started: Instant,
) -> Option<Admitted> {
    let moved = match tcp.into_std() {
        Ok(moved) => moved,
        Err(e) => {
            debug!("{who} end=\"cannot hand the socket to the handshake threads: {e}\"");
            metrics::handshake_failed(Failure::Other);
            return None;
        }
    };
    let theirs = (shared.clone(), slots.clone());
    let ran = lane.run(moved, move |moved| async move {
        let (shared, slots) = theirs;
        let tcp = match Socket::from_std(moved) {
            Ok(tcp) => tcp,
            Err(e) => {
                debug!("{who} end=\"cannot watch the socket on the handshake threads: {e}\"");
                metrics::handshake_failed(Failure::Other);
                return None;
            }
        };
        Box::pin(handshake_here(tcp, who, &shared, slots, started)).await
    });
    let mut admitted = match ran.await {
        Ran::Lane(admitted) => {
            metrics::handshake_placed(Placement::Low);
            admitted?
        }
        Ran::TakenBack(moved) => {
            // The lane starved before it started: here after all.
            metrics::handshake_placed(Placement::Starved);
            let tcp = match Socket::from_std(moved) {
                Ok(tcp) => tcp,
                Err(e) => {
                    debug!(
                        "{who} end=\"cannot take the socket back from the handshake threads: {e}\""
                    );
                    metrics::handshake_failed(Failure::Other);
                    return None;
                }
            };
            // Boxed: inline, its state would size every opening that
            // went to the lane, not only the few taken back.
            return Box::pin(handshake_here(tcp, who, shared, slots, started)).await;
        }
        Ran::Failed(e) => {
            debug!("{who} end=\"the handshake task ended without a result: {e}\"");
            metrics::handshake_failed(Failure::Other);
            return None;
        }
    };
    let rebound = match &mut admitted {
        Admitted::Tls { client, .. } => client.rebind(),
        Admitted::Raw { tcp, .. } => tcp.duplicate().map(|moved| *tcp = moved),
    };
    if let Err(e) = rebound {
        debug!("{who} end=\"cannot take the socket back from the handshake threads: {e}\"");
        metrics::handshake_failed(Failure::Other);
        return None;
    }
    Some(admitted)
}

/// The first-bytes sniff and the TLS handshake, on the runtime it is
/// polled on; every way it can fail is logged here (`None`). The
/// handshake permit is given back as soon as it ends.
async fn handshake_here(
    mut tcp: Socket,
    who: Who,
    shared: &Shared,
    slots: Arc<Semaphore>,
    started: Instant,
) -> Option<Admitted> {
    // The accept loop waited for room under --max-handshakes, so that
    // clients queue in the kernel while that many are under way. A slot is
    // held only from the moment the ClientHello's first record is whole:
    // clients that send nothing, trickle or stall before that cost only
    // their bytes (and --handshake-timeout ends them), so a flood of them
    // cannot keep real clients from their handshakes.
    if let Some(tcp) = tcp.tcp() {
        tune(tcp, who);
    }
    let deadline = started + shared.handshake_timeout;

    // `Some`: neither TLS nor HTTP; rustls is given the bytes read so far
    // and answers them with its own alert.
    let not_tls = match sniff::classify(&mut tcp, deadline).await {
        Ok(Some(FirstBytes::Tls)) => None,
        Ok(Some(FirstBytes::NotTls(head))) => Some(head),
        Ok(Some(FirstBytes::Nothing)) => {
            metrics::handshake_failed(Failure::ClosedBeforeHello);
            info_limited!(Kind::Probe, "{who} end=\"closed before sending anything\"");
            return None;
        }
        Ok(Some(FirstBytes::PlainHttp)) => {
            let answered = sniff::answer_plain_http(&mut tcp).await;
            metrics::handshake_failed(Failure::PlainHttp);
            info_limited!(
                Kind::PlainHttp,
                "{who} duration={} end=\"plain HTTP on the TLS port: {}\"",
                elapsed(started),
                match answered {
                    Ok(()) => "answered 400, use wss:// or https://".to_string(),
                    Err(e) => format!("could not answer 400: {e}"),
                }
            );
            return None;
        }
        Ok(None) => {
            metrics::handshake_failed(Failure::Timeout);
            info_limited!(
                Kind::HandshakeFailed,
                "{who} duration={} end=\"handshake failed: no bytes within {}\"",
                elapsed(started),
                format_duration(shared.handshake_timeout)
            );
            return None;
        }
        Err(e) => {
            metrics::handshake_failed(Failure::of(&e));
            info_limited!(
                Kind::HandshakeFailed,
                "{who} duration={} end=\"client error: {e}\"",
                elapsed(started)
            );
            return None;
        }
    };
    // How a failed handshake is reported: as a handshake, or as bytes that
    // were not TLS to begin with.
    let failed = |why: String| match &not_tls {
        Some(head) => format!("not TLS (first byte 0x{:02x}): {why}", head.first()),
        None => format!("handshake failed: {why}"),
    };

    // Bytes that were never TLS are a probe, like a port scan.
    let kind = match &not_tls {
        Some(_) => Kind::Probe,
        None => Kind::HandshakeFailed,
    };
    let prefix = not_tls.as_ref().map_or(&[][..], |head| head.bytes());
    let stream = TlsStream::start(tcp, shared.tls.load_full(), prefix, shared.budget.clone());
    let accept = async {
        let mut stream = stream.map_err(Stop::Refused)?;
        stream.set_id(who.id);
        // Bytes that were never TLS go to rustls as they are: it answers
        // them with its own alert, on the default route's configuration.
        let mut route = shared.routes.choose(None);
        let mut asked = None;
        let mut answer_here = not_tls.is_some();
        if not_tls.is_none() {
            match stream.client_hello().await {
                Err(error) => return Err(Stop::Refused(stream.refused(error))),
                Ok(Ok(hello)) => {
                    // --acme: the CA's validation gets the challenge; a
                    // name still without its certificate is refused (no
                    // certificate could be the right one), saying why.
                    match shared.acme.as_ref().map(|acme| acme.verdict(&hello)) {
                        Some(acme::Verdict::Validation) => {
                            return Err(Stop::Validation(Box::new(stream)));
                        }
                        Some(acme::Verdict::Waiting(why)) => {
                            let tcp = stream.into_raw().0;
                            return Err(Stop::Alert(tcp, AlertDescription::InternalError, why));
                        }
                        Some(acme::Verdict::Serve) | None => {}
                    }
                    route = shared.routes.choose(hello.server_name.as_deref());
                    asked = hello.server_name;
                }
                // Not a ClientHello (another handshake message first):
                // rustls answers it with the alert it picks, whatever the
                // routes say (nothing is passed through that did not start
                // as TLS).
                Ok(Err(client_hello::Error::NotClientHello)) => answer_here = true,
                // Too large or malformed: the alert the reader names for it.
                Ok(Err(error)) => {
                    let why = match error {
                        client_hello::Error::TooLarge => format!(
                            "a ClientHello over {} KiB, or in a record over 16 KiB",
                            client_hello::MAX_HELLO / 1024
                        ),
                        other => other.to_string(),
                    };
                    let alert = error.alert().unwrap_or(AlertDescription::DecodeError);
                    return Err(Stop::Alert(stream.into_raw().0, alert, why));
                }
            }
        }
        let route = match route {
            Some(route) => route,
            // rustls refuses these before any route matters.
            None if answer_here => 0,
            None => {
                let why = match &asked {
                    Some(name) => format!("no route for SNI {name} and no --to for other names"),
                    None => "no SNI, and no --to for clients without one".to_string(),
                };
                let alert = AlertDescription::UnrecognizedName;
                return Err(Stop::Alert(stream.into_raw().0, alert, why));
            }
        };
        if !answer_here && shared.routes.target(route).way == Way::Passthrough {
            return Ok(Admit::Pass(stream, asked, route));
        }
        let slot = match slots.acquire_owned().await {
            Ok(slot) => slot,
            Err(closed) => return Err(Stop::Refused(stream.refused(io::Error::other(closed)))),
        };
        let done = stream.handshake().await;
        drop(slot);
        let mut client = done.map_err(Stop::Refused)?;
        if answer_here {
            // Unreachable: rustls completes no handshake without a
            // ClientHello. Were it to, no route was chosen for it.
            let error = io::Error::new(io::ErrorKind::InvalidData, "no ClientHello was read");
            let _ = timeout(GOODBYE_TIMEOUT, client.shutdown()).await;
            return Err(Stop::Refused(client.refused(error)));
        }
        // The route was chosen on the name this reader saw; rustls chose
        // the certificate on the name it validated. They are the same bytes,
        // so they agree; a client that makes them differ is refused.
        if !shared.routes.only_default() && client.sni() != asked.as_deref() {
            let why = format!(
                "the server name rustls accepted ({}) is not the one routed on ({})",
                client.sni().unwrap_or("none"),
                asked.as_deref().unwrap_or("none")
            );
            return Err(Stop::Refused(
                client.refused(io::Error::new(io::ErrorKind::InvalidData, why)),
            ));
        }
        Ok(Admit::Done(client, route))
    };
    match timeout_at(deadline, accept).await {
        Ok(Ok(Admit::Done(client, route))) => {
            metrics::handshake_done(started.elapsed());
            Some(Admitted::Tls { client, route })
        }
        Ok(Ok(Admit::Pass(stream, sni, route))) => {
            metrics::passed_through();
            let (tcp, hello) = stream.into_raw();
            Some(Admitted::Raw {
                tcp,
                hello,
                sni,
                route,
            })
        }
        Ok(Err(Stop::Validation(stream))) => {
            let done = match &shared.acme {
                Some(acme) => acme::challenge::answer(*stream, acme, deadline).await,
                None => "ACME is off".to_string(),
            };
            debug!(
                "{who} duration={} end=\"ACME TLS-ALPN-01 validation answered: {}\"",
                elapsed(started),
                logsafe::quoted(done.as_bytes())
            );
            None
        }
        Ok(Err(Stop::Alert(mut tcp, alert, why))) => {
            metrics::handshake_failed(match alert {
                _ if not_tls.is_some() => Failure::NotTls,
                AlertDescription::UnrecognizedName => Failure::Unrouted,
                _ => Failure::Malformed,
            });
            // No TLS state to speak from: the one alert record, then close.
            let _ = timeout(
                GOODBYE_TIMEOUT,
                tcp.write_all(&client_hello::fatal_alert(alert)),
            )
            .await;
            info_limited!(
                kind,
                "{who} duration={} end=\"{}\"",
                elapsed(started),
                // It may quote the client's SNI.
                logsafe::quoted(failed(why).as_bytes())
            );
            sniff::linger(&mut tcp).await;
            None
        }
        Ok(Err(Stop::Refused(Refused { error, mut tcp }))) => {
            metrics::handshake_failed(match &not_tls {
                Some(_) => Failure::NotTls,
                None => Failure::of(&error),
            });
            info_limited!(
                kind,
                "{who} duration={} end=\"{}\"",
                elapsed(started),
                // It may quote the client's SNI (--strict-sni).
                logsafe::quoted(
                    failed(tls::describe_handshake_error(&error, shared.tls_min)).as_bytes()
                )
            );
            if not_tls.is_some() {
                // Let rustls' alert reach the client before the close
                // (unread bytes would turn it into a reset).
                sniff::linger(&mut tcp).await;
            }
            None
        }
        Err(_) => {
            metrics::handshake_failed(Failure::Timeout);
            info_limited!(
                kind,
                "{who} duration={} end=\"{}\"",
                elapsed(started),
                failed(format!(
                    "not finished within {}",
                    format_duration(shared.handshake_timeout)
                ))
            );
            None
        }
    }
}

/// A client admitted by its ClientHello, with its route's place.
enum Admit {
    /// Terminated: the handshake is done.
    Done(TlsStream, usize),
    /// To be passed through, with the server name it asked for.
    Pass(TlsStream, Option<String>, usize),
}

/// A client turned away before its backend connect.
enum Stop {
    /// By rustls, or the client left; rustls' alert (if any) is sent.
    Refused(Refused),
    /// By the ClientHello reader: the socket, the alert to send on it,
    /// and why, for the log.
    Alert(Socket, AlertDescription, String),
    /// An ACME CA's TLS-ALPN-01 validation: answered with the challenge
    /// certificate and closed, never sent to a backend. Boxed: it is rare,
    /// and the stream would make every refusal as large.
    Validation(Box<TlsStream>),
}

/// What follows the handshake before bytes flow: the backend connect.
/// Every way this can fail is logged here; `None` means it did.
async fn open(
    mut client: TlsStream,
    route: usize,
    who: Who,
    shared: &Shared,
    started: Instant,
) -> Option<Box<Session>> {
    let mut negotiated = client.negotiated();
    // Only the PROXY header needs it: not kept in `facts` for the session.
    let served = negotiated.served.take();
    let facts = facts_of(negotiated);
    let pool = &shared.routes.target(route).pool;
    let (mut backend, lease) = match backend::connect(pool, who.peer.ip()).await {
        Ok(connected) => connected,
        Err(e) => {
            // Every backend and why: this client gets a prompt close.
            warn!(
                "{who} {} duration={} end=\"{e}\"",
                facts.describe(),
                elapsed(started)
            );
            let _ = timeout(GOODBYE_TIMEOUT, client.shutdown()).await;
            metrics::ended(Ended::BackendFailed);
            return None;
        }
    };
    if let Some(tcp) = backend.tcp() {
        tune(tcp, who);
    }
    if let Some(version) = shared.proxy_protocol
        && let Err(e) = {
            let cn = match version {
                ProxyVersion::V2 => client.peer_leaf().and_then(crate::certs::common_name_of),
                ProxyVersion::V1 => None,
            };
            let tls = tls_facts(&facts, cn.as_deref(), served.as_deref());
            send_proxy_header(&mut backend, version, who.peer, client.tcp(), &tls, shared).await
        }
    {
        warn!(
            "{who} {} duration={} end=\"backend {}: cannot send the PROXY protocol header: {e}\"",
            facts.describe(),
            elapsed(started),
            lease.addr()
        );
        let _ = timeout(GOODBYE_TIMEOUT, client.shutdown()).await;
        metrics::ended(Ended::BackendFailed);
        return None;
    }
    Some(Box::new(Session {
        client,
        backend,
        lease,
        facts,
        started,
    }))
}

/// The backend connect for a client passed through: the PROXY header
/// (addresses, and for v2 the name asked for), then every byte the client
/// has sent so far, its ClientHello first, as it sent them. `None`: it
/// failed, and that was logged.
async fn open_passed(
    mut client: Socket,
    hello: Vec<u8>,
    sni: Option<String>,
    route: usize,
    who: Who,
    shared: &Shared,
    started: Instant,
) -> Option<Box<Passed>> {
    let pool = &shared.routes.target(route).pool;
    let described = || {
        format!(
            "mode=passthrough sni={}",
            sni.as_deref()
                .map_or(logsafe::bare(b"-"), |s| logsafe::bare(s.as_bytes()))
        )
    };
    let (mut backend, lease) = match backend::connect(pool, who.peer.ip()).await {
        Ok(connected) => connected,
        Err(e) => {
            warn!(
                "{who} {} duration={} end=\"{e}\"",
                described(),
                elapsed(started)
            );
            // No TLS here to close: a FIN, as the server would have had.
            let _ = timeout(GOODBYE_TIMEOUT, client.shutdown()).await;
            metrics::ended(Ended::BackendFailed);
            return None;
        }
    };
    if let Some(tcp) = backend.tcp() {
        tune(tcp, who);
    }
    let facts = TlsFacts {
        sni: sni.as_deref(),
        passed_through: true,
        ..TlsFacts::default()
    };
    let sent = async {
        if let Some(version) = shared.proxy_protocol {
            send_proxy_header(
                &mut backend,
                version,
                who.peer,
                client.tcp(),
                &facts,
                shared,
            )
            .await
            .map_err(|e| format!("cannot send the PROXY protocol header: {e}"))?;
        }
        match timeout(shared.connect_timeout, backend.write_all(&hello)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("cannot send the ClientHello: {e}")),
            Err(_) => Err(format!(
                "cannot send the ClientHello: not taken within {}",
                format_duration(shared.connect_timeout)
            )),
        }
    };
    if let Err(why) = sent.await {
        warn!(
            "{who} {} duration={} end=\"backend {}: {why}\"",
            described(),
            elapsed(started),
            lease.addr()
        );
        metrics::ended(Ended::BackendFailed);
        return None;
    }
    Some(Box::new(Passed {
        client,
        backend,
        lease,
        sni,
        hello_len: hello.len() as u64,
        started,
    }))
}

/// Moves bytes until the session ends, then logs how it went.
///
/// An `async` block, as for [`serve`]: it lives as long as the connection.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn stores its parameters twice"
)]
fn relay<'a>(
    mut session: Box<Session>,
    who: &'a Who,
    shared: &'a Shared,
    mut phase: watch::Receiver<Phase>,
) -> impl Future<Output = ()> + Send + 'a {
    async move {
        let Session {
            client, backend, ..
        } = &mut *session;
        let timeouts = Timeouts {
            idle: shared.idle_timeout,
            stall: shared.stall_timeout,
        };
        let mut outcome = {
            // Pinned here and lent to `pipe`, so the future is stored only once.
            let mut stop = std::pin::pin!(reached(&mut phase, Phase::Closing));
            proxy::pipe(client, backend, timeouts, &shared.budget, stop.as_mut()).await
        };
        if matches!(outcome.end, End::Drained) && *phase.borrow() == Phase::Cut {
            outcome.end = End::Cut;
        }
        if matches!(outcome.end, End::IdleTimeout(_) | End::Drained) {
            // Say goodbye properly: close_notify to the client, FIN to the backend.
            let _ = timeout(GOODBYE_TIMEOUT, client.shutdown()).await;
            let _ = timeout(GOODBYE_TIMEOUT, backend.shutdown()).await;
        }
        // A backend error ends in close_notify to the client: its TLS
        // stream is whole, and the log says what broke.
        reset_where_lost(&outcome.end, client.tcp(), backend.tcp(), false, who);
        // A client that ended first by closing TCP without close_notify (many
        // browsers do) is said so: the stream ended cleanly at a record
        // boundary, but nothing proves the client meant to stop there. (Once
        // the backend has ended first, a client closing that way is the norm.)
        let to_client = client.plaintext_sent();
        let end = if left_in_silence(&outcome.end, outcome.to_backend, to_client) {
            SILENT_CLOSE.to_string()
        } else if matches!(outcome.end, End::ClientClosed) && client.closed_without_notify() {
            format!("{} (no close_notify)", outcome.end)
        } else {
            outcome.end.to_string()
        };
        metrics::session_ended(
            &outcome.end,
            outcome.to_backend,
            to_client,
            session.started.elapsed(),
        );
        info!(
            "{who} {} backend={} to_backend={}B to_client={}B duration={} end=\"{end}\"",
            session.facts.describe(),
            session.lease.addr().field(),
            outcome.to_backend,
            // What went out on the socket, not what was queued for it.
            to_client,
            elapsed(session.started),
        );
    }
}

/// Moves bytes for a client passed through until the session ends, then
/// logs how it went: the same timeouts, drain and budget as a terminated
/// one; the counts are the bytes as they went, ClientHello included.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn stores its parameters twice"
)]
fn relay_passed<'a>(
    mut passed: Box<Passed>,
    who: &'a Who,
    shared: &'a Shared,
    mut phase: watch::Receiver<Phase>,
) -> impl Future<Output = ()> + Send + 'a {
    async move {
        let Passed {
            client, backend, ..
        } = &mut *passed;
        let timeouts = Timeouts {
            idle: shared.idle_timeout,
            stall: shared.stall_timeout,
        };
        let mut outcome = {
            let mut stop = std::pin::pin!(reached(&mut phase, Phase::Closing));
            proxy::pipe(client, backend, timeouts, &shared.budget, stop.as_mut()).await
        };
        if matches!(outcome.end, End::Drained) && *phase.borrow() == Phase::Cut {
            outcome.end = End::Cut;
        }
        if matches!(outcome.end, End::IdleTimeout(_) | End::Drained) {
            // No TLS of ours to close: a FIN each way, which the TLS peers
            // at either end see as the other closing.
            let _ = timeout(GOODBYE_TIMEOUT, client.shutdown()).await;
            let _ = timeout(GOODBYE_TIMEOUT, backend.shutdown()).await;
        }
        // No TLS of ours to close on a backend error: the client's TLS
        // peer must see the loss too, so it gets a reset.
        reset_where_lost(&outcome.end, client.tcp(), backend.tcp(), true, who);
        metrics::session_ended(
            &outcome.end,
            outcome.to_backend + passed.hello_len,
            outcome.to_client,
            passed.started.elapsed(),
        );
        info!(
            "{who} mode=passthrough sni={} backend={} to_backend={}B to_client={}B duration={} end=\"{}\"",
            passed
                .sni
                .as_deref()
                .map_or(logsafe::bare(b"-"), |s| logsafe::bare(s.as_bytes())),
            passed.lease.addr().field(),
            outcome.to_backend + passed.hello_len,
            outcome.to_client,
            elapsed(passed.started),
            outcome.end
        );
    }
}

/// Marks the sockets to be reset when dropped where bytes were lost on the
/// way, so that the other side does not take the end for a complete
/// exchange: the client's stream broke (a truncated or forged record, a
/// reset), a peer stopped taking bytes, or a second shutdown request cut
/// the connection (and, with `backend_error_resets_client`, the backend
/// failed). A UNIX socket cannot be reset: dropping it is its close.
fn reset_where_lost(
    end: &End,
    client: Option<&TcpStream>,
    backend: Option<&TcpStream>,
    backend_error_resets_client: bool,
    who: &Who,
) {
    let reset: [Option<&TcpStream>; 2] = match end {
        End::ClientError(_) => [backend, None],
        End::BackendError(_) if backend_error_resets_client => [client, None],
        End::ClientStalled(_) | End::BackendStalled(_) | End::Cut => [backend, client],
        _ => [None, None],
    };
    for socket in reset.into_iter().flatten() {
        if let Err(e) = SockRef::from(socket).set_linger(Some(Duration::ZERO)) {
            debug!("{who}: cannot set SO_LINGER to reset a connection: {e}");
        }
    }
}

/// The end of a client that completed the handshake and then left without
/// a byte either way. Some clients check our certificate only once the
/// handshake is done, and then close without an alert.
const SILENT_CLOSE: &str = "client closed after the handshake without sending anything: a TLS health check, or a client that checks our certificate only after the handshake and does not trust it (curl for a name the certificate lacks, Node.js over TLS 1.2)";

/// Whether the client ended a session (closed or reset it) before a byte
/// moved either way: no WebSocket client does, since it speaks first.
fn left_in_silence(end: &End, to_backend: u64, to_client: u64) -> bool {
    use io::ErrorKind as Kind;
    let client_left = match end {
        End::ClientClosed => true,
        End::ClientError(e) => matches!(
            e.kind(),
            Kind::ConnectionReset | Kind::ConnectionAborted | Kind::BrokenPipe
        ),
        _ => false,
    };
    client_left && to_backend == 0 && to_client == 0
}

impl Facts {
    /// The fields of the log line. What the client chose (SNI, ALPN, its
    /// certificate's subject) is escaped, so it can neither end the line
    /// nor add a field.
    fn describe(&self) -> String {
        let mut line = format!(
            "sni={} tls={} cipher={} kx={} alpn={}",
            self.sni
                .as_deref()
                .map_or(logsafe::bare(b"-"), |s| logsafe::bare(s.as_bytes())),
            self.version,
            named(self.cipher),
            named(self.group),
            self.alpn
                .as_deref()
                .map_or(logsafe::bare(b"-"), logsafe::bare),
        );
        if let Some(subject) = &self.client_cert {
            line.push_str(&format!(
                " client_cert=\"{}\"",
                logsafe::quoted(subject.as_bytes())
            ));
        }
        line
    }
}

/// A rustls code by its name, or `-`.
fn named(code: Option<impl std::fmt::Debug>) -> String {
    code.map_or("-".to_string(), |c| format!("{c:?}"))
}

fn facts_of(negotiated: Negotiated) -> Facts {
    Facts {
        sni: negotiated.sni,
        version: tls::version_name(negotiated.version),
        cipher: negotiated.suite.map(|s| s.suite()),
        alpn: negotiated.alpn,
        group: negotiated.group,
        client_cert: negotiated.client_cert,
    }
}

/// What the handshake settled, for the PROXY protocol v2 TLVs (v1 carries
/// none of it). `cn`: the client certificate's common name (mTLS);
/// `served`: the algorithms of the certificate served.
fn tls_facts<'a>(
    facts: &'a Facts,
    cn: Option<&'a str>,
    served: Option<&'a CertAlgs>,
) -> TlsFacts<'a> {
    TlsFacts {
        sni: facts.sni.as_deref(),
        alpn: facts.alpn.as_deref(),
        version: Some(facts.version).filter(|v| v.starts_with("TLS")),
        cipher: facts.cipher.and_then(tls::openssl_cipher_name),
        sig_alg: served.and_then(|s| s.sig_alg),
        key_alg: served.and_then(|s| s.key_alg.as_deref()),
        client_cert: facts.client_cert.is_some(),
        cn,
        passed_through: false,
    }
}

/// Writes the PROXY protocol header, the backend's first bytes: the
/// client's address and the one it connected to (`client`'s local end),
/// and for v2 `tls`. Built here and dropped once written: nothing of it
/// stays with the connection.
async fn send_proxy_header(
    backend: &mut backend::Stream,
    version: ProxyVersion,
    peer: Peer,
    client: Option<&TcpStream>,
    tls: &TlsFacts<'_>,
    shared: &Shared,
) -> io::Result<()> {
    // The peer is known from the accept; only the local end is asked for.
    // A UNIX client has no addresses: v1 says UNKNOWN, v2 LOCAL (see
    // `proxy_header::encode`).
    let addrs = peer
        .addr()
        .zip(client.and_then(|tcp| tcp.local_addr().ok()));
    let header = proxy_header::encode(version, addrs, tls);
    match timeout(shared.connect_timeout, backend.write_all(&header)).await {
        Ok(written) => written,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "not taken within {}",
                format_duration(shared.connect_timeout)
            ),
        )),
    }
}

/// Tries one connection to each backend address at start, in the
/// background, and warns of each that fails: a backend that is down (or a
/// wrong `--to`) is then seen at once instead of at the first client.
/// wssify serves on, since a backend may come up later; the check marks
/// nothing down. Each backend sees a connection that closes without a
/// byte, like a TCP health check.
///
/// Every connect is begun here, before any client is accepted, so this is
/// the first connection each backend accepts.
pub fn check_backend_at_start(routes: &Routes, limit: Duration) {
    for target in routes.targets() {
        check_pool_at_start(&target.pool, target.origin(), limit);
    }
}

/// [`check_backend_at_start`] for one route's backends (`flag`: `--to`, or
/// the route's flag and name, for the warning).
fn check_pool_at_start(pool: &Arc<Pool>, flag: String, limit: Duration) {
    for peer in &pool.selection().peers {
        let (pool, peer) = (pool.clone(), peer.clone());
        let addr = peer.addr.clone();
        let begun = match &addr {
            backend::Addr::Tcp(tcp) => Some(begin_connect(*tcp)),
            // A UNIX socket has no handshake to start early: its connect is
            // made in the task, under the same limit.
            backend::Addr::Unix(_) => None,
        };
        let flag = flag.clone();
        tokio::spawn(async move {
            let attempt = async {
                let Some(begun) = begun else {
                    return addr.connect().await.map(drop);
                };
                let stream = begun?;
                stream.writable().await?;
                match stream.take_error()? {
                    Some(e) => Err(e),
                    None => Ok(()),
                }
            };
            let why = match timeout(limit, attempt).await {
                Ok(Ok(())) => {
                    debug!("backend {addr} accepts connections");
                    // Up for /readyz from now on.
                    pool.succeeded(&peer);
                    return;
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {}", format_duration(limit)),
            };
            warn!(
                "cannot connect to backend {addr} ({flag}) at start: {why}; wssify keeps running and connects to it for each client, so it may come up later"
            );
        });
    }
}

/// Starts a non-blocking connect (the SYN leaves now) for a tokio stream
/// that becomes writable once it is done.
fn begin_connect(addr: std::net::SocketAddr) -> io::Result<TcpStream> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_nonblocking(true)?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    TcpStream::from_std(socket.into())
}

/// TCP_NODELAY (small WebSocket frames must not wait) and keepalive (dead
/// peers of idle connections are found) on a socket; failures only cost
/// those optimisations, so they are logged at debug.
fn tune(stream: &TcpStream, who: Who) {
    if let Err(e) = stream.set_nodelay(true) {
        debug!("{who}: cannot set TCP_NODELAY: {e}");
    }
    let keepalive = TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10))
        .with_retries(6);
    if let Err(e) = SockRef::from(stream).set_tcp_keepalive(&keepalive) {
        debug!("{who}: cannot set TCP keepalive: {e}");
    }
}

fn elapsed(started: Instant) -> String {
    format!("{:.3}s", started.elapsed().as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The session is boxed for the connection's whole life: 1480 bytes in
    /// a release build (1496 in a debug one), 1088 of them rustls'
    /// connection state, 8 the connection's id and 8 its backend's lease
    /// (least-conn's count, and the `backend=` of the log line). A field
    /// that grows it grows every idle connection
    /// (the task's own size is checked at each spawn, see
    /// [`MAX_TASK_BYTES`]).
    #[test]
    fn a_session_stays_small() {
        let size = std::mem::size_of::<Session>();
        let most = if cfg!(debug_assertions) { 1496 } else { 1480 };
        assert!(size <= most, "a session grew to {size} bytes");
    }
}
