//! Which way a connection goes, decided from the server name in its
//! ClientHello before TLS starts: terminated here and forwarded to `--to`
//! or to a `--route`'s backends, or passed through untouched to a
//! `--passthrough`'s TLS server, or refused (no route for the name).
//!
//! Names match as certificates do (`sni`): an exact name wins over a
//! wildcard, and `*.example.com` covers one label (`a.example.com`, not
//! `example.com` or `a.b.example.com`). What no name matches, clients
//! without SNI included, goes to `--to`, else to `--passthrough '*=...'`,
//! else is refused with `unrecognized_name`, as `--strict-sni` refuses.
//! Routes come from flags, so they are built once and only read.

use std::collections::HashMap;
use std::sync::Arc;

use crate::backend::Pool;
use crate::settings::{Settings, Way};

/// Where the connections of one route (or `--to`) go.
pub struct Target {
    /// Terminated here, or passed through.
    pub way: Way,
    /// Its backends, with their balancing and failover state.
    pub pool: Arc<Pool>,
    /// What the user named: `ws.example.com`, `*.example.com`, `*`, or
    /// `--to` for the default backends.
    pub name: String,
}

impl Target {
    /// Whether these are the default backends (`--to`), not a route's.
    pub fn is_default(&self) -> bool {
        self.name == "--to"
    }

    /// The flag that made it, for lines about its backends: `--to`, or
    /// `--route NAME` / `--passthrough NAME`.
    pub fn origin(&self) -> String {
        match self.is_default() {
            true => "--to".to_string(),
            false => format!("{} {}", self.way.flag(), self.name),
        }
    }
}

/// Every route, indexed by name.
pub struct Routes {
    targets: Vec<Target>,
    exact: HashMap<String, usize>,
    /// `*.example.com` is kept as `example.com`.
    wildcard: HashMap<String, usize>,
    /// What matches no name: `--to`, or `--passthrough '*=...'`.
    fallback: Option<usize>,
}

impl Routes {
    /// `--to` (when given) and every `--route` and `--passthrough`, each
    /// with a backend pool of its own.
    pub fn new(settings: &Settings) -> Routes {
        let mut routes = Routes {
            targets: Vec::new(),
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            fallback: None,
        };
        if !settings.backends.is_empty() {
            routes.fallback = Some(0);
            routes.targets.push(Target {
                way: Way::Terminate,
                pool: Arc::new(Pool::new(settings, &settings.backends)),
                name: "--to".to_string(),
            });
        }
        for route in &settings.routes {
            let i = routes.targets.len();
            routes.targets.push(Target {
                way: route.way,
                pool: Arc::new(Pool::new(settings, &route.backends)),
                name: route.name.clone(),
            });
            if route.name == "*" {
                routes.fallback = Some(i);
            } else if let Some(parent) = route.name.strip_prefix("*.") {
                routes.wildcard.insert(parent.to_string(), i);
            } else {
                routes.exact.insert(route.name.clone(), i);
            }
        }
        routes
    }

    /// The route for a ClientHello's server name (lower case, no trailing
    /// dot, as `wire::client_hello` gives it), by its place in
    /// [`Self::targets`]; `None`: no route takes it.
    pub fn choose(&self, sni: Option<&str>) -> Option<usize> {
        let named = sni.and_then(|sni| {
            self.exact.get(sni).copied().or_else(|| {
                let (_, parent) = sni.split_once('.')?;
                self.wildcard.get(parent).copied()
            })
        });
        named.or(self.fallback)
    }

    /// The route [`Self::choose`] gave, or the first (`choose` gives only
    /// places that exist, and there is always one route).
    pub fn target(&self, place: usize) -> &Target {
        match self.targets.get(place) {
            Some(target) => target,
            None => &self.targets[0],
        }
    }

    /// Whether only `--to` is there: every client goes the same way,
    /// whatever its name.
    pub fn only_default(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty() && self.targets.len() <= 1
    }

    /// Every route's target, `--to` first when given.
    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// The default backends (`--to`), if given.
    pub fn default_backends(&self) -> Option<&Target> {
        self.targets.first().filter(|t| t.is_default())
    }

    /// Whether any connection is terminated here (so certificates are
    /// needed).
    pub fn terminates(&self) -> bool {
        self.targets.iter().any(|t| t.way == Way::Terminate)
    }
}

/// Warns of each `--route` name no certificate covers: its clients would
/// get the default certificate, which browsers refuse for that name.
/// `served`: every certificate with where it came from.
pub fn warn_uncovered(settings: &Settings, served: &[(&str, &crate::certs::CertSummary)]) {
    let acme = settings
        .certs
        .acme
        .as_ref()
        .map_or(&[][..], |a| &a.names[..]);
    for route in settings.routes.iter().filter(|r| r.way == Way::Terminate) {
        // An --acme name is covered once its certificate arrives.
        if acme.iter().any(|name| covers(name, &route.name)) {
            continue;
        }
        let covered = served
            .iter()
            .any(|(_, cert)| cert.dns_names.iter().any(|name| covers(name, &route.name)));
        if !covered {
            let default = served.first().map_or("none".to_string(), |(origin, cert)| {
                format!("{origin}, for {}", cert.dns_names.join(", "))
            });
            log::warn!(
                "--route {}: no certificate served covers this name, so its clients get the default one ({default}), which browsers refuse for it; add --cert/--key (or a --cert-dir file) for {}",
                route.name,
                route.name
            );
        }
    }
}

/// Whether a certificate name (`example.com`, `*.example.com`) covers a
/// route's name (exact or `*.example.com`), as `sni` matches them.
pub fn covers(cert_name: &str, route: &str) -> bool {
    let cert_name = cert_name.trim_end_matches('.').to_ascii_lowercase();
    if cert_name == route {
        return true;
    }
    match (cert_name.strip_prefix("*."), route.split_once('.')) {
        (Some(parent), Some((first, rest))) => first != "*" && parent == rest,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::{Backend, ListenAddr, Route};

    fn settings(to: bool, routes: &[(&str, Way)]) -> Settings {
        let backend = |port| Backend::Tcp {
            host: "127.0.0.1".to_string(),
            port,
        };
        let listen = vec![ListenAddr::AllInterfaces(9300)];
        let mut s = Settings::serving(listen, if to { vec![backend(1)] } else { vec![] });
        s.routes = routes
            .iter()
            .enumerate()
            .map(|(i, (name, way))| Route {
                name: name.to_string(),
                way: *way,
                backends: vec![backend(10 + i as u16)],
            })
            .collect();
        s
    }

    fn chosen(routes: &Routes, sni: Option<&str>) -> Option<String> {
        routes.choose(sni).map(|i| routes.target(i).name.clone())
    }

    #[test]
    fn exact_names_win_over_wildcards_which_cover_one_label() {
        let routes = Routes::new(&settings(
            true,
            &[
                ("ws.example.com", Way::Terminate),
                ("*.example.com", Way::Passthrough),
            ],
        ));
        let name = |sni| chosen(&routes, sni);
        assert_eq!(
            name(Some("ws.example.com")).as_deref(),
            Some("ws.example.com")
        );
        assert_eq!(
            name(Some("api.example.com")).as_deref(),
            Some("*.example.com")
        );
        assert_eq!(name(Some("example.com")).as_deref(), Some("--to"));
        assert_eq!(name(Some("a.b.example.com")).as_deref(), Some("--to"));
        assert_eq!(name(None).as_deref(), Some("--to"));
        assert!(!routes.only_default());
    }

    #[test]
    fn without_to_the_star_takes_the_rest_and_without_it_nothing_does() {
        let star = Routes::new(&settings(
            false,
            &[("ws.localhost", Way::Terminate), ("*", Way::Passthrough)],
        ));
        assert_eq!(chosen(&star, Some("site.localhost")).as_deref(), Some("*"));
        assert_eq!(chosen(&star, None).as_deref(), Some("*"));
        assert!(star.default_backends().is_none());
        let strict = Routes::new(&settings(false, &[("ws.localhost", Way::Terminate)]));
        assert_eq!(chosen(&strict, Some("other.localhost")), None);
        assert_eq!(chosen(&strict, None), None);
        let pass_only = Routes::new(&settings(false, &[("*", Way::Passthrough)]));
        assert!(!pass_only.terminates());
    }

    #[test]
    fn certificate_names_cover_routes_as_sni_matches_them() {
        assert!(covers("ws.example.com", "ws.example.com"));
        assert!(covers("WS.example.com.", "ws.example.com"));
        assert!(covers("*.example.com", "ws.example.com"));
        assert!(covers("*.example.com", "*.example.com"));
        assert!(!covers("*.example.com", "example.com"));
        assert!(!covers("*.example.com", "a.b.example.com"));
        assert!(!covers("ws.example.com", "*.example.com"));
    }

    #[test]
    fn only_to_is_the_plain_case() {
        let routes = Routes::new(&settings(true, &[]));
        assert!(routes.only_default());
        assert_eq!(chosen(&routes, Some("anything")).as_deref(), Some("--to"));
    }
}
