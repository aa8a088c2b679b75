//! Several backends (`--to` repeated): the `--balance` policies, failover
//! with back-off, a blackholed address, every backend down, and a name
//! that resolves to two addresses. The real binary, real sockets; each
//! backend says which it is with one byte as a client connects.

mod common;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;

/// A backend that writes `tag` to each connection, then echoes it.
fn tagged(listener: TcpListener, tag: u8) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                if s.write_all(&[tag]).await.is_ok() {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
            });
        }
    })
}

/// Three tagged backends (b'A', b'B', ...), their addresses and tasks.
async fn backends(n: u8) -> (Vec<SocketAddr>, Vec<JoinHandle<()>>) {
    let mut addrs = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..n {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        addrs.push(listener.local_addr().unwrap());
        tasks.push(tagged(listener, b'A' + i));
    }
    (addrs, tasks)
}

fn to_flags(addrs: &[SocketAddr], extra: &[&str]) -> Vec<String> {
    let mut args = Vec::new();
    for a in addrs {
        args.push("--to".to_string());
        args.push(a.to_string());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// A client (from `from`, or 127.0.0.1) through wssify: the backend's tag
/// and the open stream.
async fn client_from(
    w: &mut Wssify,
    from: Ipv4Addr,
) -> (u8, tokio_rustls::client::TlsStream<tokio::net::TcpStream>) {
    let fp = w.fingerprint().await;
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((from, 0))).unwrap();
    let tcp = socket.connect(w.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(pinned_client(&fp))
        .connect(name, tcp)
        .await
        .expect("TLS handshake");
    let mut tag = [0u8; 1];
    tls.read_exact(&mut tag)
        .await
        .unwrap_or_else(|e| panic!("no backend answered: {e}; log:\n{}", w.log()));
    (tag[0], tls)
}

async fn client(w: &mut Wssify) -> (u8, tokio_rustls::client::TlsStream<tokio::net::TcpStream>) {
    client_from(w, Ipv4Addr::LOCALHOST).await
}

#[tokio::test]
async fn round_robin_spreads_clients_evenly() {
    bounded(WAIT, async {
        let (addrs, _tasks) = backends(3).await;
        let mut w = Wssify::start_owned(&to_flags(&addrs, &[])).await;
        let line = w.wait_for_log("listening on").await;
        assert!(line.contains("round-robin"), "{line}");
        let mut counts: HashMap<u8, usize> = HashMap::new();
        for _ in 0..30 {
            let (tag, _tls) = client(&mut w).await;
            *counts.entry(tag).or_default() += 1;
        }
        assert_eq!(counts.len(), 3, "{counts:?}");
        assert!(counts.values().all(|n| *n == 10), "{counts:?}");
    })
    .await;
}

#[tokio::test]
async fn each_connections_line_names_the_backend_it_reached() {
    bounded(WAIT, async {
        let (addrs, _tasks) = backends(3).await;
        let mut w = Wssify::start_owned(&to_flags(&addrs, &[])).await;
        // Each client's port (its `peer=`) and the backend that answered it.
        let mut reached = Vec::new();
        for _ in 0..6 {
            let (tag, mut tls) = client(&mut w).await;
            let port = tls.get_ref().0.local_addr().unwrap().port();
            reached.push((port, addrs[usize::from(tag - b'A')]));
            tls.shutdown().await.unwrap();
        }
        let lines = w.wait_for_lines("to_backend=", reached.len()).await;
        for (port, backend) in &reached {
            let peer = format!(" peer=127.0.0.1:{port} ");
            let line = lines
                .iter()
                .find(|l| l.contains(&peer))
                .unwrap_or_else(|| panic!("no line for{peer}in {lines:#?}"));
            assert!(
                line.contains(&format!(" backend={backend} to_backend=")),
                "{line}"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn random_uses_every_backend() {
    bounded(WAIT, async {
        let (addrs, _tasks) = backends(3).await;
        let mut w = Wssify::start_owned(&to_flags(&addrs, &["--balance", "random"])).await;
        let mut counts: HashMap<u8, usize> = HashMap::new();
        // Each backend is missed by 30 random picks with odds of 1 in 57,000.
        for _ in 0..30 {
            let (tag, _tls) = client(&mut w).await;
            *counts.entry(tag).or_default() += 1;
        }
        assert_eq!(counts.len(), 3, "{counts:?}");
    })
    .await;
}

#[tokio::test]
async fn least_conn_sends_new_clients_to_the_idle_backend() {
    bounded(WAIT, async {
        let (addrs, _tasks) = backends(3).await;
        let mut w = Wssify::start_owned(&to_flags(&addrs, &["--balance", "least-conn"])).await;
        // Nine clients held open: three on each backend.
        let mut held = Vec::new();
        for _ in 0..9 {
            held.push(client(&mut w).await);
        }
        let mut counts: HashMap<u8, usize> = HashMap::new();
        for (tag, _) in &held {
            *counts.entry(*tag).or_default() += 1;
        }
        assert!(counts.values().all(|n| *n == 3), "{counts:?}");
        // The three on 'B' leave: it is the idle one.
        let (leaving, staying): (Vec<_>, Vec<_>) = held.into_iter().partition(|(t, _)| *t == b'B');
        drop(leaving);
        w.wait_for_lines("to_backend=", 3).await;
        let mut fresh = Vec::new();
        for _ in 0..3 {
            let (tag, tls) = client(&mut w).await;
            assert_eq!(tag, b'B', "a new client went to a busy backend");
            fresh.push(tls);
        }
        drop(staying);
    })
    .await;
}

/// The backend each of `clients` gets, asked twice (it must not change).
async fn ip_hash_map(w: &mut Wssify, clients: &[Ipv4Addr]) -> HashMap<Ipv4Addr, u8> {
    let mut map = HashMap::new();
    for c in clients {
        let (first, _a) = client_from(w, *c).await;
        let (again, _b) = client_from(w, *c).await;
        assert_eq!(first, again, "client {c} moved between two connections");
        map.insert(*c, first);
    }
    map
}

#[tokio::test]
async fn ip_hash_keeps_a_client_on_one_backend_and_a_fourth_takes_only_its_share() {
    bounded(Duration::from_secs(60), async {
        let (addrs, _tasks) = backends(4).await;
        let clients: Vec<Ipv4Addr> = (10..70).map(|i| Ipv4Addr::new(127, 0, 1, i)).collect();
        let three = {
            let mut w =
                Wssify::start_owned(&to_flags(&addrs[..3], &["--balance", "ip-hash"])).await;
            ip_hash_map(&mut w, &clients).await
        };
        let used: std::collections::HashSet<u8> = three.values().copied().collect();
        assert_eq!(used.len(), 3, "not every backend is used: {three:?}");
        let four = {
            let mut w = Wssify::start_owned(&to_flags(&addrs, &["--balance", "ip-hash"])).await;
            ip_hash_map(&mut w, &clients).await
        };
        let mut moved = 0;
        for c in &clients {
            if three[c] != four[c] {
                assert_eq!(four[c], b'D', "{c} moved between two old backends");
                moved += 1;
            }
        }
        // About a quarter of 60.
        assert!((5..=27).contains(&moved), "{moved} of 60 moved");
    })
    .await;
}

#[tokio::test]
async fn a_killed_backend_loses_no_client_and_is_used_again_after_its_back_off() {
    bounded(WAIT, async {
        let (addrs, mut tasks) = backends(3).await;
        let mut w = Wssify::start_owned(&to_flags(&addrs, &[])).await;
        for _ in 0..3 {
            client(&mut w).await;
        }
        // 'B' goes away: its port refuses.
        tasks.remove(1).abort();
        let _ = tasks;
        let mut counts: HashMap<u8, usize> = HashMap::new();
        for _ in 0..12 {
            let (tag, _tls) = client(&mut w).await;
            *counts.entry(tag).or_default() += 1;
        }
        assert_eq!(counts.get(&b'B'), None, "{counts:?}");
        assert_eq!(counts.values().sum::<usize>(), 12);
        let line = w
            .wait_for_log(&format!("backend {} down: ", addrs[1]))
            .await;
        assert!(
            line.contains("refused") && line.contains("retry in"),
            "{line}"
        );
        assert_eq!(
            w.lines_with(" down: ").len(),
            1,
            "one line per change of state"
        );

        // 'B' comes back on its port: after its back-off, clients reach it.
        let listener = TcpListener::bind(addrs[1]).await.unwrap();
        let _back = tagged(listener, b'B');
        let mut seen = false;
        for _ in 0..200 {
            let (tag, _tls) = client(&mut w).await;
            if tag == b'B' {
                seen = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(seen, "the backend was not used again; log:\n{}", w.log());
        w.wait_for_log(&format!("backend {} up again after ", addrs[1]))
            .await;
    })
    .await;
}

#[tokio::test]
async fn a_blackholed_backend_delays_a_client_by_at_most_one_connect_timeout() {
    bounded(WAIT, async {
        let (hole, _fillers) = black_hole();
        let hole = hole.local_addr().unwrap().as_socket().unwrap();
        let (good, _tasks) = backends(1).await;
        let addrs = [hole, good[0]];
        let mut w = Wssify::start_owned(&to_flags(&addrs, &["--connect-timeout", "1s"])).await;
        for _ in 0..4 {
            let began = Instant::now();
            let (tag, _tls) = client(&mut w).await;
            assert_eq!(tag, b'A');
            let took = began.elapsed();
            assert!(
                took < Duration::from_millis(2500),
                "a client waited {took:?}"
            );
        }
        w.wait_for_log(&format!("backend {hole} down: no answer within 1s"))
            .await;
    })
    .await;
}

#[tokio::test]
async fn with_every_backend_down_clients_are_closed_promptly_and_wssify_stays_up() {
    bounded(WAIT, async {
        let ports: Vec<SocketAddr> = (0..2)
            .map(|_| {
                std::net::TcpListener::bind("127.0.0.1:0")
                    .unwrap()
                    .local_addr()
                    .unwrap()
            })
            .collect();
        let mut w = Wssify::start_owned(&to_flags(&ports, &[])).await;
        for round in 0..3 {
            let mut tls = dev_connect(&mut w).await;
            let began = Instant::now();
            let got = read_to_end(&mut tls).await.unwrap_or_default();
            assert!(got.is_empty());
            assert!(
                began.elapsed() < Duration::from_secs(2),
                "round {round}: closed after {:?}",
                began.elapsed()
            );
        }
        let lines = w.wait_for_lines("no backend reachable: ", 3).await;
        for line in &lines {
            assert!(line.contains(" WARN "), "{line}");
            for p in &ports {
                assert!(line.contains(&format!("backend {p} ")), "{line}");
            }
        }
        // Still serving: a backend comes up, and once its back-off (about
        // a second) has ended a client gets it.
        let listener = TcpListener::bind(ports[0]).await.unwrap();
        let _up = tagged(listener, b'A');
        let mut served = false;
        for _ in 0..100 {
            let mut tls = dev_connect(&mut w).await;
            let mut tag = [0u8; 1];
            if tls.read_exact(&mut tag).await.is_ok() {
                assert_eq!(tag[0], b'A');
                served = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(served, "no client served after the backend came up");
    })
    .await;
}

/// `unshare -m` with a bind-mounted hosts file of the test's own: the only
/// way to make a name resolve to addresses the test picks. Needs root (or
/// user namespaces); without, the reason is printed and the test skipped.
fn private_hosts() -> Result<(), String> {
    let out = std::process::Command::new("unshare")
        .args(["-m", "sh", "-c", "mount --bind /etc/hostname /etc/hosts"])
        .output()
        .map_err(|e| format!("cannot run unshare: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

#[tokio::test]
async fn a_name_with_two_addresses_is_two_backends_and_a_new_answer_is_followed() {
    if let Err(why) = private_hosts() {
        eprintln!("skipping the DNS test: a private /etc/hosts needs unshare -m (root): {why}");
        return;
    }
    bounded(WAIT, async {
        let one = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = one.local_addr().unwrap().port();
        let two = TcpListener::bind(("127.0.0.2", port)).await.unwrap();
        let three = TcpListener::bind(("127.0.0.3", port)).await.unwrap();
        let _tasks = [tagged(one, b'A'), tagged(two, b'B'), tagged(three, b'C')];
        let dir = tempfile::tempdir().unwrap();
        let hosts = dir.path().join("hosts");
        std::fs::write(&hosts, "127.0.0.1 backends.test\n127.0.0.2 backends.test\n").unwrap();
        let script = format!(
            "mount --bind {} /etc/hosts && exec \"$0\" \"$@\"",
            hosts.display()
        );
        let to = format!("backends.test:{port}");
        let mut w = Wssify::start_raw_command(
            "unshare",
            &[
                "-m",
                "sh",
                "-c",
                &script,
                env!("CARGO_BIN_EXE_wssify"),
                "--listen",
                "127.0.0.1:0",
                "--to",
                &to,
                "--resolve-interval",
                "1s",
                "--connect-timeout",
                "2s",
            ],
        )
        .await;
        w.wait_for_log(&format!(
            "backend {to} resolves to 127.0.0.1:{port}, 127.0.0.2:{port}"
        ))
        .await;
        let mut counts: HashMap<u8, usize> = HashMap::new();
        for _ in 0..6 {
            let (tag, _tls) = client(&mut w).await;
            *counts.entry(tag).or_default() += 1;
        }
        assert_eq!(counts.get(&b'A'), Some(&3), "{counts:?}");
        assert_eq!(counts.get(&b'B'), Some(&3), "{counts:?}");

        // The answer changes (written in place: the mount holds the inode).
        let held = client(&mut w).await;
        std::fs::write(&hosts, "127.0.0.3 backends.test\n").unwrap();
        w.wait_for_log(&format!("backend {to} now resolves to 127.0.0.3:{port}"))
            .await;
        for _ in 0..4 {
            let (tag, _tls) = client(&mut w).await;
            assert_eq!(tag, b'C', "a new client went to the old answer");
        }
        // The open connection was left alone.
        let (_, mut tls) = held;
        tls.write_all(b"still here").await.unwrap();
        let mut back = [0u8; 10];
        tls.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"still here");

        // The name stops resolving: its last addresses are kept, with a warning.
        std::fs::write(&hosts, "127.0.0.9 other.test\n").unwrap();
        let line = w
            .wait_for_log(&format!("keeping its last addresses 127.0.0.3:{port}"))
            .await;
        assert!(line.contains(" WARN ") && line.contains(&to), "{line}");
        let (tag, _tls) = client(&mut w).await;
        assert_eq!(tag, b'C');
    })
    .await;
}
