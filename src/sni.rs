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

use crate::certs::CertAlgs;

/// The certificates being served, indexed by name. Built whole at start and
/// at every reload, then only read.
#[derive(Debug)]
pub struct SniTable {
    certs: Vec<Arc<CertifiedKey>>,
    /// Each certificate's algorithms, in the order of `certs`, for the
    /// PROXY protocol (recorded with the choice, see [`Seen`]).
    algs: Vec<Arc<CertAlgs>>,
    exact: HashMap<String, usize>,
    /// `*.example.com` is stored as `example.com`.
    wildcard: HashMap<String, usize>,
    strict: bool,
}

impl SniTable {
    /// Indexes `certs` (each with the DNS names it is valid for) in order;
    /// the first is the default. Each certificate's algorithms are read
    /// from it here; [`SniTable::with_algs`] takes those worked out at load.
    pub fn new(certs: Vec<(Arc<CertifiedKey>, Vec<String>)>, strict: bool) -> SniTable {
        let certs = certs
            .into_iter()
            .map(|(cert, names)| {
                let algs = crate::certs::summarize(&cert.cert).algs;
                (cert, names, algs)
            })
            .collect();
        SniTable::with_algs(certs, strict)
    }

    /// As [`SniTable::new`], with each certificate's algorithms as loaded
    /// (`CertSummary::algs`): shared, not worked out again.
    pub fn with_algs(
        certs: Vec<(Arc<CertifiedKey>, Vec<String>, Arc<CertAlgs>)>,
        strict: bool,
    ) -> SniTable {
        let mut table = SniTable {
            certs: Vec::with_capacity(certs.len()),
            algs: Vec::with_capacity(certs.len()),
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            strict,
        };
        for (i, (cert, names, algs)) in certs.into_iter().enumerate() {
            table.certs.push(cert);
            table.algs.push(algs);
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
        self.index(sni).and_then(|i| self.certs.get(i))
    }

    /// The certificate for `sni` (see [`Self::choose`]) with its algorithms.
    fn chosen(&self, sni: Option<&str>) -> Option<(&Arc<CertifiedKey>, &Arc<CertAlgs>)> {
        let i = self.index(sni)?;
        Some((self.certs.get(i)?, self.algs.get(i)?))
    }

    /// Where in the table the certificate for `sni` is (see [`Self::choose`]).
    fn index(&self, sni: Option<&str>) -> Option<usize> {
        let found = sni.and_then(|sni| {
            let sni = normalize(sni);
            self.exact.get(&sni).copied().or_else(|| {
                let (_, parent) = sni.split_once('.')?;
                self.wildcard.get(parent).copied()
            })
        });
        match found {
            Some(i) => Some(i),
            None if self.strict || self.certs.is_empty() => None,
            None => Some(0),
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
/// whether no certificate was chosen (`--strict-sni` refusing), and the
/// algorithms of the one that was (for the PROXY protocol).
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
    /// The chosen certificate's algorithms (one reference count, taken
    /// from the table: nothing is worked out per handshake).
    pub served: Option<Arc<CertAlgs>>,
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

/// Wraps the certificate table of every configuration wssify builds, so
/// each handshake records what rustls resolved (see [`Seen`]).
#[derive(Debug)]
pub struct Recording(
    /// The table that chooses the certificate.
    pub Arc<SniTable>,
);

impl ResolvesServerCert for Recording {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = client_hello.server_name();
        let chosen = self.0.chosen(name);
        let seen = Seen {
            name: name.map(str::to_string),
            refused: chosen.is_none(),
            served: chosen.map(|(_, algs)| algs.clone()),
        };
        SEEN.with(|slot| *slot.borrow_mut() = Some(seen));
        chosen.map(|(cert, _)| cert.clone())
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

    /// What the resolver records for the PROXY protocol is the chosen
    /// certificate's own algorithms, shared from the table.
    #[test]
    fn the_choice_carries_its_certificates_algorithms() {
        let (k0, k1) = (certs(1).remove(0), certs(1).remove(0));
        let names = |sig_alg, key_alg: &str| {
            Arc::new(CertAlgs {
                sig_alg: Some(sig_alg),
                key_alg: Some(key_alg.to_string()),
            })
        };
        let (rsa, ec) = (
            names("RSA-SHA256", "RSA2048"),
            names("ecdsa-with-SHA384", "EC384"),
        );
        let t = SniTable::with_algs(
            vec![
                (k0.clone(), vec!["rsa.test".to_string()], rsa.clone()),
                (k1.clone(), vec!["ec.test".to_string()], ec.clone()),
            ],
            false,
        );
        let (cert, algs) = t.chosen(Some("ec.test")).unwrap();
        assert!(Arc::ptr_eq(cert, &k1) && Arc::ptr_eq(algs, &ec));
        let (cert, algs) = t.chosen(None).unwrap();
        assert!(Arc::ptr_eq(cert, &k0) && Arc::ptr_eq(algs, &rsa));
        // `new` reads them from the certificate (rcgen's default: P-256).
        let t = SniTable::new(vec![(k1, vec!["ec.test".to_string()])], true);
        let (_, algs) = t.chosen(Some("ec.test")).unwrap();
        assert_eq!(algs.sig_alg, Some("ecdsa-with-SHA256"));
        assert_eq!(algs.key_alg.as_deref(), Some("EC256"));
        assert!(t.chosen(Some("other.test")).is_none());
    }
}
