//! wssify: accept TLS on its own port and pipe the raw bytes to a plain
//! backend, the one-command replacement for an nginx `stream` block that
//! puts `wss://` in front of a `ws://` server.
//!
//! The whole program is this library, so tests and embedders can drive it;
//! `main.rs` only parses flags, sets up logging and maps errors to exit
//! codes. Data flows one way: [`cli`] → [`settings`] → ([`loader`] →
//! [`tls`], [`listener`]) → [`connection`] → [`proxy`]; [`reload`] swaps
//! what [`loader`] built while connections run.

pub mod acme;
pub mod backend;
pub mod budget;
pub mod certs;
pub mod check;
pub mod cli;
pub mod client_auth;
pub mod conn_id;
pub mod connection;
pub mod dev_ca;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod limits;
pub mod listener;
pub mod loader;
pub mod logsafe;
pub mod observe;
pub mod port_holder;
pub mod priority;
pub mod proxy;
pub mod ratelog;
pub mod reload;
pub mod route;
pub mod runtime;
pub mod settings;
pub mod shutdown;
pub mod sni;
pub mod sniff;
pub mod socket;
pub mod systemd;
pub mod tickets;
pub mod tls;
pub mod tls_stream;
pub mod unix_listen;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;

use log::{info, warn};
use tokio::sync::{Semaphore, mpsc};

pub use error::StartupError;
pub use settings::Settings;
pub use shutdown::Exit;

use connection::Shared;
use listener::Bound;
use settings::format_duration;
use shutdown::Coordinator;

/// A wssify that has loaded its certificate and bound its ports, ready to
/// serve. Binding before serving lets callers learn the real ports.
pub struct Server {
    bound: Vec<Bound>,
    shared: Arc<Shared>,
    max_conns: usize,
    max_handshakes: usize,
    max_conns_per_ip: Option<usize>,
    drain_timeout: std::time::Duration,
    /// The `--admin` server's state: readiness ends when the drain starts.
    admin: Option<Arc<observe::admin::Admin>>,
}

impl Server {
    /// Loads the certificates, builds TLS, starts watching for certificate
    /// changes, binds every `--listen` address and logs one startup line per
    /// listener. Must run inside a tokio runtime.
    /// `handshakes`: the low-priority threads sniffs and TLS handshakes
    /// may run on (see [`priority`]); `None` runs them on the caller's.
    pub fn bind(
        settings: &Settings,
        fd_limit: Option<u64>,
        handshakes: Option<priority::Lane>,
    ) -> Result<Server, StartupError> {
        observe::metrics::start_time();
        let admin = observe::start(settings.admin)?;
        let options = tls::TlsOptions {
            provider: tls::provider(),
            tls_min: settings.tls_min,
            alpn: settings.alpn.clone(),
        };
        // Where every connection is passed through, no certificate is
        // served: rustls only answers bytes that are not TLS, and an
        // in-memory certificate does for that, made without a word.
        let terminates = settings.terminates();
        let mut certs = settings.certs.clone();
        if !terminates && certs.development() {
            certs.dev = settings::DevCert::InMemory;
        }
        // The ACME directory is made (and checked) before the loader reads
        // what it holds and the reloader watches it.
        let acme = match &settings.certs.acme {
            Some(acme) => {
                Some(acme::prepare(acme, options.provider.clone()).map_err(StartupError::new)?)
            }
            None => None,
        };
        let (mut loader, config) = loader::Loader::start(&certs, options)?;
        if let Some(status) = &acme {
            loader.report_acme_to(status.clone());
        }
        if let Some(admin) = &admin {
            admin.ready.certificates_loaded();
        }
        // Logged once the ports are bound, so the example commands name one.
        let development = loader
            .development()
            .filter(|_| terminates)
            .map(dev_ca::Development::report);
        reload::log_chains(&loader.served());
        reload::log_expiry(&loader.served());
        route::warn_uncovered(settings, &loader.served());
        let reloader = Arc::new(reload::Reloader::new(loader, config));
        // Before the startup line: from then on, SIGHUP and file changes
        // are expected to work.
        reload::spawn(
            reloader.clone(),
            reload::hangups()?,
            settings.certs.reload_interval,
        );
        let certificate = if terminates {
            reloader.describe()
        } else {
            "none needed (every client is passed through)".to_string()
        };

        let (max_memory, memory_origin) = match settings.max_memory {
            Some(bytes) => (bytes, "--max-memory".to_string()),
            None => limits::default_max_memory(),
        };
        let by_fds = limits::max_conns_for(fd_limit.unwrap_or(1024));
        let by_memory = limits::max_conns_for_memory(max_memory);
        let max_conns = match settings.max_conns {
            Some(n) => {
                if n > by_memory {
                    warn!(
                        "--max-conns {n} is more than --max-memory {} can give each connection room to move data ({by_memory} connections); when all are busy they will take turns",
                        settings::format_size(max_memory)
                    );
                }
                n
            }
            None => by_fds.min(by_memory),
        }
        .min(Semaphore::MAX_PERMITS);
        let max_handshakes = settings.max_handshakes.clamp(1, Semaphore::MAX_PERMITS);
        let bound = settings
            .listen
            .iter()
            .map(|addr| listener::bind_all(addr, settings.reuse_port))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .flatten()
            .collect::<Vec<_>>();
        // Once the port the CA validates on is bound.
        if let (Some(status), Some(acme)) = (&acme, &settings.certs.acme) {
            acme::spawn(acme, status.clone(), reloader.clone());
        }
        if let Some(admin) = &admin {
            admin.ready.listeners_bound();
        }
        if let Some(development) = development {
            let port = bound
                .iter()
                .find_map(|b| b.local_addr.tcp())
                .map(|addr| addr.port());
            for (level, line) in development.lines(port) {
                log::log!(level, "{line}");
            }
        }

        let alpn = if settings.alpn.is_empty() {
            "none".to_string()
        } else {
            settings
                .alpn
                .iter()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect::<Vec<_>>()
                .join(",")
        };
        let routes = route::Routes::new(settings);
        // Before the listening line: from then on /readyz judges the
        // backends, never "not set up yet".
        if let Some(admin) = &admin {
            admin.ready.set_pools(pools_of(&routes));
        }
        let several = |pool: &backend::Pool| {
            if pool.given() > 1 {
                format!(
                    "{pool} ({}, each attempt {})",
                    settings.balance,
                    format_duration(settings.connect_timeout)
                )
            } else {
                pool.to_string()
            }
        };
        let backends = match routes.default_backends() {
            Some(to) => several(&to.pool),
            None if settings.routes.iter().any(|r| r.name == "*") => {
                "none (names not routed are passed through: --passthrough '*')".to_string()
            }
            None => "none (names not routed are refused)".to_string(),
        };
        let proxy_protocol = match settings.proxy_protocol {
            Some(version) => format!("; PROXY protocol {version} to the backend"),
            None => String::new(),
        };
        // `--to` is the listening line's.
        for target in routes.targets().iter().filter(|t| !t.is_default()) {
            let way = match target.way {
                settings::Way::Terminate => "terminated here",
                settings::Way::Passthrough => "passed through untouched",
            };
            info!(
                "route: SNI {} -> {} ({way})",
                target.name,
                several(&target.pool)
            );
        }
        for b in &bound {
            info!(
                "listening on {}{} -> backend {}; certificate: {}; {}; ALPN: {}{proxy_protocol}",
                b.local_addr, b.scope, backends, certificate, settings.tls_min, alpn
            );
        }
        if settings.alpn.iter().any(|p| p == b"h2") {
            warn!(
                "--alpn h2: wssify passes the bytes through as they are, so the backend {} must speak HTTP/2 itself (cleartext, with prior knowledge); a browser that negotiates h2 sends HTTP/2 frames, and WebSocket over HTTP/2 needs RFC 8441 in the backend. Leave h2 out unless the backend does (browsers then use http/1.1)",
                backends
            );
        }
        info!(
            "limits: at most {max_conns} connections ({}), {} handshakes at once (priority {}), {} per IP; buffer memory {} ({memory_origin}); idle timeout {}, stall {}, handshake {}, connect {}, drain {}",
            match settings.max_conns {
                Some(_) => "--max-conns",
                None if by_memory < by_fds => "what --max-memory carries",
                None => "what the open-file limit carries",
            },
            max_handshakes,
            settings.handshake_priority.name(),
            settings
                .max_conns_per_ip
                .map_or("no limit".to_string(), |n| n.to_string()),
            settings::format_size(max_memory),
            settings
                .idle_timeout
                .map_or("never".to_string(), format_duration),
            settings
                .stall_timeout
                .map_or("never".to_string(), format_duration),
            format_duration(settings.handshake_timeout),
            format_duration(settings.connect_timeout),
            format_duration(settings.drain_timeout),
        );

        let shared = Arc::new(Shared {
            tls: reloader.live(),
            routes,
            tls_min: settings.tls_min,
            handshake_timeout: settings.handshake_timeout,
            handshakes,
            connect_timeout: settings.connect_timeout,
            proxy_protocol: settings.proxy_protocol,
            idle_timeout: settings.idle_timeout,
            stall_timeout: settings.stall_timeout,
            budget: Arc::new(budget::Budget::new(max_memory)),
            acme,
        });
        if let Some(admin) = &admin {
            let pools = pools_of(&shared.routes);
            let ready = admin.ready.clone();
            let _ = admin.sources.set(observe::metrics::Sources {
                pools,
                budget: shared.budget.clone(),
                certs: Box::new(move || match terminates {
                    true => reloader.certificates(),
                    false => Vec::new(),
                }),
                ready: Box::new(move || ready.check().is_ok()),
            });
        }
        Ok(Server {
            bound,
            shared,
            max_conns,
            max_handshakes,
            max_conns_per_ip: settings.max_conns_per_ip,
            drain_timeout: settings.drain_timeout,
            admin,
        })
    }

    /// The TCP addresses actually bound, in `--listen` order (UNIX
    /// sockets are where `--listen unix:` said).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.bound
            .iter()
            .filter_map(|b| b.local_addr.tcp())
            .collect()
    }

    /// Serves until the first message on `shutdown`, then drains; a second
    /// message during the drain ends it at once.
    pub async fn serve(self, mut shutdown: mpsc::Receiver<()>) -> Exit {
        let coordinator = Arc::new(Coordinator::new());
        let limit = Arc::new(Semaphore::new(self.max_conns));
        let gates = listener::Gates {
            conns: limit.clone(),
            max_conns: self.max_conns,
            // Shared by every listener: the limit is on the work, not per port.
            handshakes: Arc::new(Semaphore::new(self.max_handshakes)),
            max_handshakes: self.max_handshakes,
            per_ip: self.max_conns_per_ip.map(listener::PerIp::new),
        };
        // Names are looked up before the first client; later lookups run
        // in the background and no connection waits on one.
        let mut resolvers = Vec::new();
        for target in self.shared.routes.targets() {
            backend::resolve::refresh(&target.pool).await;
            resolvers.push(tokio::spawn(backend::resolve::run(target.pool.clone())));
        }
        // Before the first accept, so each backend sees this check first.
        connection::check_backend_at_start(&self.shared.routes, self.shared.connect_timeout);
        // Reports the count of rate-limited lines when a flood stops.
        let summaries = tokio::spawn(ratelog::report_held_back());
        // Counts connections open a second or more (see `priority`).
        let settling = tokio::spawn(async {
            let mut ticks = tokio::time::interval(priority::TICK);
            loop {
                ticks.tick().await;
                priority::tick();
            }
        });
        let mut loops = Vec::new();
        for bound in self.bound {
            loops.push(tokio::spawn(listener::accept_loop(
                bound,
                self.shared.clone(),
                gates.clone(),
                coordinator.clone(),
            )));
        }
        // Every listener accepts: a Type=notify unit is started.
        systemd::ready();
        let watchdog = systemd::watchdog_interval().map(|every| {
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval(every);
                loop {
                    ticks.tick().await;
                    systemd::watchdog();
                }
            })
        });
        // Without a sender (closed channel) there is nothing to wait for.
        let _ = shutdown.recv().await;
        systemd::stopping();
        // Not ready from this moment: a Service stops sending new clients.
        if let Some(admin) = &self.admin {
            admin.ready.draining();
        }
        // Listeners close as their loops end, refusing new clients at once.
        coordinator.stop_accepting();
        let drain = async {
            for task in loops {
                let _ = task.await;
            }
            // Every loop has given back the permit it held for its next client.
            let open = self.max_conns - limit.available_permits();
            // Someone at a terminal may not know a second Ctrl-C ends the
            // wait; a process manager sends its second signal on its own.
            let hint = if open > 0 && from_terminal() {
                "; press Ctrl-C again to exit at once"
            } else {
                ""
            };
            info!(
                "stopped accepting; waiting up to {} for {} to finish{hint}",
                format_duration(self.drain_timeout),
                open_connections(open)
            );
            match Arc::try_unwrap(coordinator) {
                Ok(coordinator) => coordinator.drain(self.drain_timeout, &mut shutdown).await,
                // Unreachable: every loop holding a clone has ended.
                Err(_) => Exit::Drained,
            }
        };
        let exit = drain.await;
        summaries.abort();
        settling.abort();
        ratelog::flush();
        for resolver in resolvers {
            resolver.abort();
        }
        if let Some(watchdog) = watchdog {
            watchdog.abort();
        }
        exit
    }
}

/// Every route's name and backend pool, for readiness and the metrics.
fn pools_of(routes: &route::Routes) -> Vec<(String, Arc<backend::Pool>)> {
    routes
        .targets()
        .iter()
        .map(|t| (t.name.clone(), t.pool.clone()))
        .collect()
}

/// "1 open connection", "2 open connections".
fn open_connections(n: usize) -> String {
    match n {
        1 => "1 open connection".to_string(),
        n => format!("{n} open connections"),
    }
}

/// Whether wssify runs in a terminal (its input or its log is one), where
/// Ctrl-C is what stops it.
fn from_terminal() -> bool {
    use std::io::IsTerminal;
    std::io::stdin().is_terminal() || std::io::stderr().is_terminal()
}

/// Runs wssify until SIGTERM/SIGINT and the drain that follows.
/// `handshakes` as for [`Server::bind`].
pub async fn run(
    settings: Settings,
    fd_limit: Option<u64>,
    handshakes: Option<priority::Lane>,
) -> Result<Exit, StartupError> {
    let signals = shutdown::signals()?;
    let server = Server::bind(&settings, fd_limit, handshakes)?;
    let exit = server.serve(signals).await;
    info!("stopped");
    Ok(exit)
}
