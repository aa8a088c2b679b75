//! Choosing the certificate for a handshake from the client's SNI, so one
//! port can serve many names.
//!
//! Exact names win over wildcards, a wildcard covers exactly one label
//! (`*.example.com` covers `a.example.com`, not `example.com` or
//! `a.b.example.com`, as browsers do), and where two certificates claim a
//! name the one listed first wins. No SNI or no match gets the first
//! certificate, unless `--strict-sni` asks for a refusal.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// The certificates being served, indexed by name. Built whole at start and
/// at every reload, then only read.
#[derive(Debug)]
pub struct SniTable {
    certs: Vec<Arc<CertifiedKey>>,
    exact: HashMap<String, usize>,
    /// `*.example.com` is stored as `example.com`.
    wildcard: HashMap<String, usize>,
    strict: bool,
}

impl SniTable {
    /// Indexes `certs` (each with the DNS names it is valid for) in order;
    /// the first is the default.
    pub fn new(certs: Vec<(Arc<CertifiedKey>, Vec<String>)>, strict: bool) -> SniTable {
        let mut table = SniTable {
            certs: Vec::with_capacity(certs.len()),
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            strict,
        };
        for (i, (cert, names)) in certs.into_iter().enumerate() {
            table.certs.push(cert);
            for name in names {
                let name = normalize(&name);
                match name.strip_prefix("*.") {
                    Some(parent) => table.wildcard.entry(parent.to_string()).or_insert(i),
                    None => table.exact.entry(name).or_insert(i),
                };
            }
        }
        table
    }

    /// The certificate for a requested server name: `None` only under
    /// `--strict-sni` when no certificate matches (or with no certificates).
    pub fn choose(&self, sni: Option<&str>) -> Option<&Arc<CertifiedKey>> {
        let found = sni.and_then(|sni| {
            let sni = normalize(sni);
            self.exact.get(&sni).copied().or_else(|| {
                let (_, parent) = sni.split_once('.')?;
                self.wildcard.get(parent).copied()
            })
        });
        match found {
            Some(i) => self.certs.get(i),
            None if self.strict => None,
            None => self.certs.first(),
        }
    }
}

impl ResolvesServerCert for SniTable {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.choose(client_hello.server_name()).cloned()
    }
}

/// What the certificate resolver saw in the last ClientHello rustls
/// accepted on this thread: the server name rustls validated (lower case),
/// and whether no certificate was chosen (`--strict-sni` refusing).
///
/// rustls' unbuffered server connection does not expose the name it
/// accepted, and re-reading the client's bytes would trust whatever record
/// comes next (rustls skips undecryptable records after a rejected 0-RTT
/// flight), so the log takes it from here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen {
    /// The SNI, as rustls validated it (a DNS name, lower case).
    pub name: Option<String>,
    /// The resolver chose no certificate: the handshake is refused.
    pub refused: bool,
}

thread_local! {
    /// Written by [`Recording::resolve`], which rustls calls synchronously
    /// inside `process_tls_records`; read right after that call returns.
    static SEEN: RefCell<Option<Seen>> = const { RefCell::new(None) };
}

/// Forgets what the resolver saw on this thread (call before handing a
/// ClientHello to rustls).
pub fn forget_seen() {
    SEEN.with(|seen| seen.borrow_mut().take());
}

/// What the resolver saw on this thread since [`forget_seen`], if it ran.
pub fn take_seen() -> Option<Seen> {
    SEEN.with(|seen| seen.borrow_mut().take())
}

/// Wraps the certificate resolver of every configuration wssify builds, so
/// each handshake records what rustls resolved (see [`Seen`]).
#[derive(Debug)]
pub struct Recording(
    /// The resolver that chooses the certificate (an `SniTable`).
    pub Arc<dyn ResolvesServerCert>,
);

impl ResolvesServerCert for Recording {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = client_hello.server_name().map(str::to_string);
        let chosen = self.0.resolve(client_hello);
        let refused = chosen.is_none();
        SEEN.with(|seen| *seen.borrow_mut() = Some(Seen { name, refused }));
        chosen
    }

    fn only_raw_public_keys(&self) -> bool {
        self.0.only_raw_public_keys()
    }
}

/// Lower case, without the trailing dot of a fully qualified name.
fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certs(n: usize) -> Vec<Arc<CertifiedKey>> {
        let provider = crate::tls::provider();
        (0..n)
            .map(|_| crate::certs::self_signed(&provider).unwrap().certified_key)
            .collect()
    }

    fn table(names: &[&[&str]], strict: bool) -> (SniTable, Vec<Arc<CertifiedKey>>) {
        let keys = certs(names.len());
        let entries = keys
            .iter()
            .zip(names)
            .map(|(k, n)| (k.clone(), n.iter().map(|s| s.to_string()).collect()))
            .collect();
        (SniTable::new(entries, strict), keys)
    }

    fn chosen(t: &SniTable, keys: &[Arc<CertifiedKey>], sni: Option<&str>) -> Option<usize> {
        let got = t.choose(sni)?;
        keys.iter().position(|k| Arc::ptr_eq(k, got))
    }

    #[test]
    fn exact_beats_wildcard_and_unknown_gets_the_first() {
        let (t, k) = table(
            &[&["a.test"], &["*.w.test"], &["exact.w.test"], &["B.Test"]],
            false,
        );
        assert_eq!(chosen(&t, &k, Some("a.test")), Some(0));
        assert_eq!(chosen(&t, &k, Some("x.w.test")), Some(1));
        assert_eq!(chosen(&t, &k, Some("exact.w.test")), Some(2));
        assert_eq!(chosen(&t, &k, Some("b.test.")), Some(3));
        assert_eq!(chosen(&t, &k, Some("A.TEST")), Some(0));
        // A wildcard covers one label only.
        assert_eq!(chosen(&t, &k, Some("w.test")), Some(0));
        assert_eq!(chosen(&t, &k, Some("a.b.w.test")), Some(0));
        assert_eq!(chosen(&t, &k, Some("unknown.test")), Some(0));
        assert_eq!(chosen(&t, &k, None), Some(0));
    }

    #[test]
    fn strict_refuses_what_it_does_not_know() {
        let (t, k) = table(&[&["a.test"], &["*.w.test"]], true);
        assert_eq!(chosen(&t, &k, Some("a.test")), Some(0));
        assert_eq!(chosen(&t, &k, Some("x.w.test")), Some(1));
        assert!(t.choose(Some("unknown.test")).is_none());
        assert!(t.choose(None).is_none());
    }

    #[test]
    fn first_listed_wins_a_shared_name() {
        let (t, k) = table(&[&["a.test"], &["a.test", "b.test"]], false);
        assert_eq!(chosen(&t, &k, Some("a.test")), Some(0));
        assert_eq!(chosen(&t, &k, Some("b.test")), Some(1));
    }
}
