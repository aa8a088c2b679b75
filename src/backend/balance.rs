//! The four `--balance` policies, each as a ranking of the selection for
//! one client: the connection tries the backends in that order, skipping
//! those that are down, so failover is the same loop for every policy.
//!
//! ip-hash is rendezvous (highest random weight) hashing: each backend
//! scores `hash(client address, backend address)` and the highest wins.
//! Adding a backend moves exactly the clients for which it now scores
//! highest (its share), removing one moves only its own clients, and a
//! client whose backend is down goes to its second choice, the same one
//! each time. No ring to build or swap.

use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::backend::pool::{Peer, Pool};
use crate::backend::stream::Addr;
use crate::settings::Balance;

/// The order in which a client's connection tries the selection's peers
/// (indices into `peers`).
pub fn rank(pool: &Pool, peers: &[Arc<Peer>], client: IpAddr) -> Vec<usize> {
    let n = peers.len();
    if n == 0 {
        return Vec::new();
    }
    let rotation = |start: usize| (0..n).map(move |i| (start + i) % n);
    match pool.balance {
        Balance::RoundRobin => rotation(pool.turn.fetch_add(1, Ordering::Relaxed) % n).collect(),
        Balance::Random => rotation(random() as usize % n).collect(),
        Balance::LeastConn => {
            // Ties go round-robin, so idle backends share the first clients.
            let start = pool.turn.fetch_add(1, Ordering::Relaxed) % n;
            let mut order: Vec<usize> = rotation(start).collect();
            // Each count read once: other connections change them while
            // this sorts, and a key that changes between comparisons is not
            // an order (std's sort may panic on one).
            order.sort_by_cached_key(|&i| peers[i].open.load(Ordering::Relaxed));
            order
        }
        Balance::IpHash => {
            let mut order: Vec<usize> = (0..n).collect();
            // Each score computed once, not at every comparison.
            order.sort_by_cached_key(|&i| std::cmp::Reverse(score(client, &peers[i].addr)));
            order
        }
    }
}

/// Rendezvous hashing's weight of `backend` for `client`: stable across
/// restarts and processes (FNV-1a over both addresses, then a 64-bit mix).
pub fn score(client: IpAddr, backend: &Addr) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    match client {
        IpAddr::V4(ip) => eat(&ip.octets()),
        IpAddr::V6(ip) => eat(&ip.octets()),
    }
    eat(&[0xff]);
    match backend {
        Addr::Tcp(addr) => {
            match addr.ip() {
                IpAddr::V4(ip) => eat(&ip.octets()),
                IpAddr::V6(ip) => eat(&ip.octets()),
            }
            eat(&addr.port().to_be_bytes());
        }
        // Its display form: no TCP address can look like it.
        Addr::Unix(_) => eat(backend.to_string().as_bytes()),
    }
    // splitmix64's finaliser: FNV alone leaves close inputs close.
    let mut z = h;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A random number from std's per-process random hash keys (no crate
/// needed for `--balance random` and back-off jitter).
pub fn random() -> u64 {
    use std::sync::atomic::AtomicU64;
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn backends(n: u8) -> Vec<Addr> {
        (1..=n)
            .map(|i| Addr::Tcp(SocketAddr::from(([10, 0, 0, i], 9200))))
            .collect()
    }

    fn winner(client: IpAddr, among: &[Addr]) -> Addr {
        among
            .iter()
            .max_by_key(|b| score(client, b))
            .expect("backends")
            .clone()
    }

    #[test]
    fn rendezvous_spreads_evenly_and_a_fourth_backend_takes_only_its_share() {
        let three = backends(3);
        let four = backends(4);
        let clients: Vec<IpAddr> = (0..4000u32)
            .map(|i| IpAddr::from([100, 64, (i >> 8) as u8, i as u8]))
            .collect();
        let mut counts = [0usize; 3];
        let mut moved = 0;
        for c in &clients {
            let before = winner(*c, &three);
            counts[three.iter().position(|b| *b == before).unwrap()] += 1;
            let after = winner(*c, &four);
            if after != before {
                assert_eq!(after, four[3], "a client moved between old backends");
                moved += 1;
            }
        }
        for n in counts {
            assert!((1100..1600).contains(&n), "uneven: {counts:?}");
        }
        assert!((800..1200).contains(&moved), "moved {moved} of 4000");
    }
}
